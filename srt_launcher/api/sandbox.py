"""``srt_launcher.Sandbox``: a sandbox description for services, and the ways to run it (SPEC §9).

::

    box = Sandbox(mounts=[RoBind("/usr"), Symlink("usr/lib", "/lib"), Symlink("usr/lib64", "/lib64"),
                          Symlink("usr/bin", "/bin"), Dev(), Proc(), Tmpfs("/tmp")],
                  limits=Limits(cpu_seconds=5, address_space="1G"), timeout=10)
    result = box.run(["/bin/sh", "-c", "echo hi"])
    if result.ok: print(result.stdout)

A :class:`Sandbox` is an immutable description: it is checked when made
(``ValueError`` names what is wrong) and can be run any number of times,
from any number of threads and asyncio tasks at once. It converts to the
engine's description (:mod:`srt_launcher.sandbox`) — the same one the
``run`` command line makes — and is launched by this process's launcher
process (api/client.py), never by forking the caller.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from srt_launcher import sandbox as engine
from srt_launcher.api import client, session, wire
from srt_launcher.api.limits import Limits
from srt_launcher.api.mounts import Dev, Mount, Proc, RoBind, Symlink, Tmpfs, absolute_path
from srt_launcher.api.process import SandboxProcess
from srt_launcher.api.result import Result

DEFAULT_MAX_OUTPUT = 8 * 1024 * 1024  # bytes kept of stdout, and of stderr
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
NAMESPACES = frozenset(("ipc", "uts", "cgroup", "user"))
SECCOMP_FILTERS = (engine.SECCOMP_UNIX_BLOCK, engine.SECCOMP_HARDEN)
_MAX_TIMEOUT = 366 * 86400.0


@dataclass(frozen=True)
class Relay:
    """TCP ``127.0.0.1:port`` inside the sandbox, forwarded to the host's Unix socket ``socket`` (SPEC §3.1)."""

    port: int
    socket: str

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"Relay port: expected 1 to 65535, got {self.port!r}")
        object.__setattr__(self, "socket", absolute_path(self.socket, "Relay socket"))


@dataclass(frozen=True, kw_only=True)
class Sandbox:
    """An immutable sandbox description; keyword arguments only.

    ``mounts``: the filesystem, built in order from an empty root (see
    :mod:`srt_launcher.api.mounts`), which is then made read-only (unless a
    mount is at ``/``): only a ``Tmpfs`` or a ``Bind`` is writable. ``network``: ``False`` (the default) a
    network namespace of its own with only ``lo``; a sequence of
    :class:`Relay` the same plus those relays; ``True`` the host's network,
    unconfined. ``env``: the whole environment (nothing is inherited from
    the caller), plus ``PATH`` (``/usr/local/bin:/usr/bin:/bin``) unless
    given. ``cwd``: the working directory inside (default ``/``; it must
    exist there). ``limits``: :class:`Limits`. ``timeout``: seconds of wall
    clock from the program's start, after which every process of the
    sandbox is killed (``Cause.TIMEOUT``); ``run(timeout=...)`` overrides it.
    ``seccomp``: ``"unix-block"`` (no new AF_UNIX sockets, no io_uring),
    ``"harden"`` (no netlink/packet/vsock sockets, bpf, perf, keyrings,
    modules, user namespaces, io_uring), a filter compiled with pyseccomp in
    the calling process (a ``pyseccomp.SyscallFilter``) or its BPF bytes,
    or a sequence of these, stacked. ``hostname``: the hostname inside (a
    UTS namespace of its own). ``namespaces``: more namespaces of its own,
    from ``"ipc"``, ``"uts"``, ``"cgroup"``, and ``"user"`` (a user namespace
    even when the caller is root). The PID and mount namespaces are always
    the sandbox's own; TIOCSTI is always refused.
    """

    mounts: Sequence[Mount] = ()
    network: bool | Sequence[Relay] = False
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    limits: Limits | None = None
    timeout: float | None = None
    seccomp: object = None
    hostname: str | None = None
    namespaces: Iterable[str] = ()
    _description: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "mounts", _mounts(self.mounts))
        set_(self, "network", _network(self.network))
        set_(self, "env", MappingProxyType(_env(self.env)))
        set_(self, "cwd", None if self.cwd is None else absolute_path(self.cwd, "cwd"))
        if self.limits is not None and not isinstance(self.limits, Limits):
            raise ValueError(f"limits: expected srt_launcher.Limits, got {type(self.limits).__name__}")
        set_(self, "timeout", _timeout(self.timeout, "timeout"))
        set_(self, "seccomp", _seccomp(self.seccomp))
        set_(self, "hostname", _hostname(self.hostname))
        set_(self, "namespaces", _namespaces(self.namespaces))
        set_(self, "_description", wire.encode(self.to_engine()))

    def __hash__(self) -> int:
        return hash(self._description)

    def to_engine(self) -> engine.Sandbox:
        """The engine's description of this sandbox (no command yet)."""
        box = engine.Sandbox()
        box.user = engine.USERNS_YES if "user" in self.namespaces else engine.USERNS_IF_NEEDED  # type: ignore[operator]
        box.net = self.network is not True
        box.relays = [] if isinstance(self.network, bool) else [(relay.port, relay.socket) for relay in self.network]
        box.ipc = "ipc" in self.namespaces  # type: ignore[operator]
        box.uts = "uts" in self.namespaces or self.hostname is not None  # type: ignore[operator]
        box.cgroup = "cgroup" in self.namespaces  # type: ignore[operator]
        box.hostname = self.hostname
        box.mounts = [mount.to_engine() for mount in self.mounts]
        if not any(mount.dest == "/" for mount in box.mounts):
            # The root is an empty tmpfs holding the mount points: read-only
            # once built, so that writing goes only where a Tmpfs or a Bind
            # says (a read-only view by default).
            box.mounts.append(engine.Mount(engine.REMOUNT_RO, "/"))
        env = dict(self.env)  # type: ignore[arg-type]
        env.setdefault("PATH", DEFAULT_PATH)
        box.env = [(engine.CLEARENV,), *((engine.SETENV, key, value) for key, value in env.items())]
        box.chdir = self.cwd
        box.rlimits = {} if self.limits is None else self.limits.to_engine()
        box.seccomp = list(self.seccomp)  # type: ignore[call-overload]
        return box

    @classmethod
    def for_executable(cls, path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), mounts: Sequence[Mount] = (), **kwargs) -> "Sandbox":  # type: ignore[no-untyped-def]
        """The minimal sandbox for one trusted binary.

        Holds the binary, the shared libraries its ELF headers name —
        resolved as the dynamic loader would (RPATH, RUNPATH, ld.so.cache,
        the loader's default directories), by reading files, never by
        running anything — and the loader, each at its host path with the
        host's symlinks; a minimal ``/dev``, the sandbox's ``/proc``, a
        private ``/tmp``; each of ``inputs`` read-only at its own path; then
        ``mounts``. Nothing else of the host. Other keyword arguments are
        :class:`Sandbox`'s. Raises ``ValueError`` when the binary is not a
        runnable ELF file or a library cannot be found, ``OSError`` when it
        cannot be read. Libraries loaded at run time with ``dlopen`` (plugins)
        are not seen: add them with ``mounts``.
        """
        layout = _layout(absolute_path(path, "for_executable"))
        base: list[Mount] = [RoBind(file) for file in layout.files]
        base += [Symlink(target, link) for link, target in layout.symlinks]
        base += [Dev(), Proc(), Tmpfs("/tmp")]
        base += [RoBind(absolute_path(item, "for_executable inputs")) for item in inputs]
        return cls(mounts=[*base, *mounts], **kwargs)

    # ------------------------------------------------------------ running

    def run(
        self,
        argv: Sequence[str | os.PathLike],
        *,
        input: bytes | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        timeout: float | None = None,
        check: bool = False,
    ) -> Result:
        """Run ``argv`` in this sandbox to its end; stdout and stderr captured.

        ``input``: bytes for stdin (default: none, stdin at EOF).
        ``max_output``: bytes kept of stdout and of stderr each; past it
        the sandbox is killed (``Cause.OUTPUT_LIMIT``). ``timeout``: seconds,
        overriding the sandbox's. Never raises for a failing workload or a
        failed launch — see :class:`Result` — unless ``check=True``, which
        raises :class:`SandboxError` for any result that is not ``ok``.
        ``ValueError`` for bad arguments. Thread-safe.
        """
        args, data, cap, seconds = _run_arguments(argv, input, max_output, timeout, self.timeout)
        began = time.monotonic()
        try:
            started = _launch(self._request(args, seconds, "pipes"), [], pipes=True)
        except client.LaunchFailed as err:
            result = session.failed(args, err)
        else:
            run = session.Session(args, started, data, cap, _deadline(began, seconds), began)
            session.drive(run)
            result = run.result()
        return result.check() if check else result

    async def run_async(
        self,
        argv: Sequence[str | os.PathLike],
        *,
        input: bytes | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        timeout: float | None = None,
        check: bool = False,
    ) -> Result:
        """:meth:`run` for asyncio: waits on the running loop, no thread.

        Cancelling the task kills the sandbox.
        """
        args, data, cap, seconds = _run_arguments(argv, input, max_output, timeout, self.timeout)
        began = time.monotonic()
        try:
            started = await _launch_async(self._request(args, seconds, "pipes"))
        except client.LaunchFailed as err:
            result = session.failed(args, err)
        else:
            run = session.Session(args, started, data, cap, _deadline(began, seconds), began)
            await session.drive_async(run)
            result = run.result()
        return result.check() if check else result

    def popen(
        self,
        argv: Sequence[str | os.PathLike],
        *,
        stdin: int | object | None = None,
        stdout: int | object | None = None,
        stderr: int | object | None = None,
        timeout: float | None = None,
    ) -> SandboxProcess:
        """Start ``argv`` in this sandbox and return at once with a handle.

        ``stdin``/``stdout``/``stderr`` as for ``subprocess.Popen``: None
        (the caller's own), ``subprocess.PIPE``, ``subprocess.DEVNULL``
        (``subprocess.STDOUT`` for stderr), a file descriptor or a file
        object. The handle has ``pid`` (the program's, in the caller's PID
        namespace; None if the launch failed), ``stdin``/``stdout``/``stderr``
        (binary file objects, for PIPE), ``poll()``, ``wait(timeout)``,
        ``send_signal()``, ``terminate()``, ``kill()`` (the whole sandbox),
        ``returncode`` and ``result()``. Returns once the program has started
        (or the launch failed: ``result()`` says why).
        """
        args = _argv(argv)
        seconds = _timeout(timeout, "timeout") if timeout is not None else self.timeout
        streams = _Streams(stdin, stdout, stderr)
        began = time.monotonic()
        try:
            request = self._request(args, seconds, "pipes" if streams.all_pipes else "fds")
            started = _launch(request, streams.child_fds(), pipes=streams.all_pipes)
        except client.LaunchFailed as err:
            streams.close_ours()
            return SandboxProcess.failed(args, session.failed(args, err))
        finally:
            streams.close_childs()
        return SandboxProcess(args, started, streams.files(started), began, _deadline(began, seconds))

    def _request(self, args: Sequence[str], seconds: float | None, stdio: str) -> tuple:
        """The launcher process's "launch" request (api/wire.py) for ``args`` in this sandbox."""
        return ("launch", self._description, list(args), seconds, stdio)


# ---------------------------------------------------------------- launching


def _launch(request: tuple, fds: list[int], pipes: bool) -> session.Started:
    reply = client.send(request, fds)
    try:
        answer, received = client.wait_reply(reply, session.REPLY_TIMEOUT)
    finally:
        reply.close()
    return session.Started.from_reply(answer, received, pipes)


async def _launch_async(request: tuple) -> session.Started:
    import asyncio

    loop = asyncio.get_running_loop()
    while True:
        try:
            reply = client.send(request, [], blocking=False)
            break
        except BlockingIOError:  # the launcher's queue is full: it is draining it
            await asyncio.sleep(0.001)
    try:
        readable = loop.create_future()
        loop.add_reader(reply.fileno(), lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, session.REPLY_TIMEOUT)
        except asyncio.TimeoutError:
            raise client.LaunchFailed("launcher process", None, f"no answer in {session.REPLY_TIMEOUT:g} s") from None
        finally:
            loop.remove_reader(reply.fileno())
        answer, received = client.read_reply(reply)
    finally:
        reply.close()
    return session.Started.from_reply(answer, received, pipes=True)


def _deadline(began: float, seconds: float | None) -> float | None:
    # The sandbox kills itself at `seconds` from the program's start; this
    # client-side deadline only catches a launch that never got that far.
    return None if seconds is None else began + seconds + session.GUARD


class _Streams:
    """popen's stdin/stdout/stderr: what the workload gets, what the caller keeps."""

    def __init__(self, stdin: object, stdout: object, stderr: object) -> None:
        self.all_pipes = stdin is subprocess.PIPE and stdout is subprocess.PIPE and stderr is subprocess.PIPE
        self.ours: list[int | None] = [None, None, None]
        self.childs: list[int] = []
        self.close_after: list[int] = []
        if self.all_pipes:
            return
        for index, spec in enumerate((stdin, stdout, stderr)):
            self.childs.append(self._child_fd(index, spec))

    def _child_fd(self, index: int, spec: object) -> int:
        if spec is None:
            return index
        if spec is subprocess.PIPE:
            read_end, write_end = os.pipe()
            ours, theirs = (write_end, read_end) if index == 0 else (read_end, write_end)
            self.ours[index] = ours
            self.close_after.append(theirs)
            return theirs
        if spec is subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            self.close_after.append(fd)
            return fd
        if spec is subprocess.STDOUT and index == 2:
            return self.childs[1]
        if isinstance(spec, int) and not isinstance(spec, bool) and spec >= 0:
            return spec
        if hasattr(spec, "fileno"):
            return spec.fileno()  # type: ignore[no-any-return, attr-defined]
        raise ValueError(f"popen: {('stdin', 'stdout', 'stderr')[index]}: expected None, PIPE, DEVNULL, a descriptor or a file, got {spec!r}")

    def child_fds(self) -> list[int]:
        return self.childs

    def close_childs(self) -> None:
        for fd in self.close_after:
            os.close(fd)
        self.close_after = []

    def close_ours(self) -> None:
        for fd in self.ours:
            if fd is not None:
                os.close(fd)
        self.ours = [None, None, None]

    def files(self, started: session.Started) -> list:
        fds = [started.stdin, started.stdout, started.stderr] if self.all_pipes else self.ours
        return [None if fd is None else open(fd, "wb" if index == 0 else "rb") for index, fd in enumerate(fds)]


# ---------------------------------------------------------------- checking arguments


def _mounts(value: object) -> tuple[Mount, ...]:
    if isinstance(value, (str, bytes, Mount)) or not isinstance(value, Iterable):
        raise ValueError(f"mounts: expected a sequence of mounts, got {value!r}")
    mounts = tuple(value)
    for mount in mounts:
        if not isinstance(mount, Mount):
            raise ValueError(f"mounts: {mount!r} is not a mount (Bind, RoBind, DevBind, Tmpfs, Dev, Proc, Dir, Symlink, File)")
    return mounts


def _network(value: object) -> bool | tuple[Relay, ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, Relay):
        value = (value,)
    if not isinstance(value, Iterable) or isinstance(value, (str, bytes)):
        raise ValueError(f"network: expected False, True or a sequence of Relay, got {value!r}")
    relays = tuple(value)
    if not relays or not all(isinstance(relay, Relay) for relay in relays):
        raise ValueError(f"network: expected False, True or a non-empty sequence of Relay, got {value!r}")
    ports = [relay.port for relay in relays]
    if len(set(ports)) != len(ports):
        raise ValueError(f"network: two relays on one port: {sorted(ports)}")
    return relays


def _env(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"env: expected a mapping of str to str, got {type(value).__name__}")
    env = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ValueError(f"env: invalid variable name {key!r}")
        if not isinstance(item, str) or "\0" in item:
            raise ValueError(f"env: {key}: expected a str without NUL bytes, got {item!r}")
        env[key] = item
    return env


def _timeout(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= _MAX_TIMEOUT or math.isnan(value):
        raise ValueError(f"{what}: expected a positive number of seconds (at most a year), got {value!r}")
    return float(value)


def _seccomp(value: object) -> tuple[str | bytes, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    programs: list[str | bytes] = []
    for item in items:
        if isinstance(item, str):
            if item not in SECCOMP_FILTERS:
                raise ValueError(f"seccomp: unknown filter {item!r} (built in: {', '.join(SECCOMP_FILTERS)})")
            programs.append(item)
        elif isinstance(item, (bytes, bytearray, memoryview)):
            programs.append(_bpf(bytes(item)))
        elif hasattr(item, "export_bpf"):
            programs.append(_bpf(_export(item)))
        else:
            raise ValueError(f"seccomp: expected 'unix-block', 'harden', a pyseccomp filter or BPF bytes, got {item!r}")
    return tuple(programs)


def _export(seccomp_filter: object) -> bytes:
    """The classic BPF program of a pyseccomp filter, exported in the calling process."""
    import tempfile

    with tempfile.TemporaryFile() as handle:
        seccomp_filter.export_bpf(handle)  # type: ignore[attr-defined]
        handle.seek(0)
        return handle.read()


def _bpf(program: bytes) -> bytes:
    # struct sock_filter is 8 bytes; the kernel takes at most 4096 instructions.
    if not program or len(program) % 8 or len(program) > 4096 * 8:
        raise ValueError(f"seccomp: not a classic BPF program ({len(program)} bytes)")
    return program


def _hostname(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value.encode()) <= 64 or "\0" in value:
        raise ValueError(f"hostname: expected 1 to 64 bytes, got {value!r}")
    return value


def _namespaces(value: object) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"namespaces: expected a collection of names, got {value!r}")
    names = frozenset(value)
    unknown = names - NAMESPACES
    if unknown:
        raise ValueError(f"namespaces: unknown {sorted(unknown)} (known: {', '.join(sorted(NAMESPACES))})")
    return names


def _argv(value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"argv: expected a sequence of strings (the program, then its arguments), got {value!r}")
    args = []
    for item in value:
        try:
            arg = os.fspath(item)
        except TypeError:
            raise ValueError(f"argv: {item!r} is not a string") from None
        arg = os.fsdecode(arg) if isinstance(arg, bytes) else arg
        if "\0" in arg:
            raise ValueError(f"argv: {arg!r} contains a NUL byte")
        args.append(arg)
    if not args:
        raise ValueError("argv: empty (no program to run)")
    return tuple(args)


def _run_arguments(argv: object, data: object, max_output: object, timeout: object, default: float | None) -> tuple:
    args = _argv(argv)
    if data is None:
        data = b""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"input: expected bytes, got {type(data).__name__}")
    if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 0:
        raise ValueError(f"max_output: expected a number of bytes, got {max_output!r}")
    seconds = _timeout(timeout, "timeout") if timeout is not None else default
    return args, bytes(data), max_output, seconds


# ---------------------------------------------------------------- for_executable


_layouts: dict = {}


def _layout(path: str):  # type: ignore[no-untyped-def]
    """The files and symlinks the loader opens for ``path``, cached per version of the binary and of ld.so.cache."""
    from srt_launcher.api import elf

    def version(name: str) -> tuple:
        try:
            info = os.stat(name)
        except OSError:
            return (name,)
        return (name, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)

    key = (version(path), version(elf.LD_SO_CACHE))
    layout = _layouts.get(key)
    if layout is None:
        resolution = elf.resolve(path)
        resolution.raise_for_missing()
        layout = resolution.layout()
        if len(_layouts) >= 64:
            _layouts.clear()
        _layouts[key] = layout
    return layout
