"""``srt-launcher run``: the process tree of SPEC §2.2, in one place.

::

    srt-launcher run (stub)   host PID ns, host mount ns, sandbox net ns
     ├─ relay :PORT           host PID + mount ns, sandbox net ns; forked in phase 1,
     │                        so the workload can neither see, signal nor trace it
     └─ PID 1 (reaper)        sandbox PID ns + mount ns; does the mounts and pivot_root
         └─ worker            caps dropped, fds closed, env set, seccomp, execvp(COMMAND)

Stub:   refuse setuid/setgid → record stdout's tty and the cwd → SIGCHLD to
        default → NO_NEW_PRIVS, PDEATHSIG → resolve bind sources → phase 1
        (only with --unshare-net/--unshare-user: NET [+USER], lo up, relays)
        → phase 2 (PID [+USER]) → DUMPABLE=0 → fork PID 1 → forward signals,
        drop capabilities, wait, SIGKILL the relays' groups, exit with PID 1's status.
PID 1:  PDEATHSIG again → setsid (no controlling tty) → new mount ns
        → build the root (mount/root.py) → drop every capability → restore cwd
        → fork the worker → forward signals, reap everything, exit with the
        worker's status.
Worker: (no capabilities, inherited) → close fds > 2 → --setenv → seccomp
        filters (the tty one always, stacked on those asked for) → exec.

The mount namespace is unshared by PID 1 rather than the stub, so that the
stub stays in the host mount namespace as the tree above says: a stub inside
the sandbox's mount namespace would have its root moved by pivot_root.

Three processes is the floor: entering a PID namespace needs a fork, and a
workload that is PID 1 would ignore SIGTERM.

Signals to forward (and SIGCHLD) are blocked from the entry point on and
taken with sigwaitinfo (signals.py), so a signal that arrives early is held,
not lost: the stub passes it to PID 1, PID 1 to the worker, which restores
the caller's mask just before exec and dies of it: the launch ends with
128+signal.
"""

import errno
import os
import stat

# _signal, not signal: the signal module builds enums at import (≈5 ms
# measured), and the launch path pays only for what it uses (SPEC §4).
import _signal

from srt_launcher import kernel, namespaces, privileges, seccomp, signals
from srt_launcher.errors import (
    EXEC_NOT_EXECUTABLE,
    EXEC_NOT_FOUND,
    SETUP_FAILED,
    LauncherError,
    report,
)
# Imported by the stub although only PID 1 uses it: an import after fork()
# copies every page the import machinery touches (measured ≈0.6 ms in PID 1,
# ≈0.1 ms here).
from srt_launcher.mount import root
from srt_launcher.mount.ops import MountOp

# Python itself sets these to SIG_IGN at startup, and ignored signals survive
# exec: the workload must get the default back (as subprocess does).
_IGNORED_BY_PYTHON = (_signal.SIGPIPE, _signal.SIGXFSZ)

_FLAG_OPTIONS = ("--unshare-net", "--unshare-user", "--seccomp-unix-block", "--seccomp-harden")
_TWO_PATH_MOUNTS = {"--bind": "bind", "--ro-bind": "ro-bind"}
_ONE_PATH_MOUNTS = {"--tmpfs": "tmpfs", "--dev": "dev", "--proc": "proc", "--host-proc": "host-proc"}


class RunConfig:
    """The parsed command line; mount ops keep their argv order."""

    __slots__ = (
        "unshare_net", "unshare_user", "seccomp_unix_block", "seccomp_harden", "ops", "relays", "setenv", "command",
    )

    def __init__(self) -> None:
        self.unshare_net = False
        self.unshare_user = False
        self.seccomp_unix_block = False
        self.seccomp_harden = False
        self.ops: list[MountOp] = []
        self.relays: list[tuple[int, str]] = []
        self.setenv: list[tuple[str, str]] = []
        self.command: list[str] = []


def main(argv: list[str], caller_mask: set[int] | None = None, parent: int | None = None) -> int:
    """Run the launch; ``caller_mask`` is the signal mask from before the
    entry point blocked the launch signals (None: block them here), ``parent``
    the parent PID the entry point saw (None: read it here)."""
    if caller_mask is None:
        caller_mask = signals.block_launch_signals()
    if parent is None:
        parent = os.getppid()
    try:
        return launch(parse_args(argv), caller_mask, parent)
    except LauncherError as err:
        return report(err)


# ---------------------------------------------------------------- parsing


def _usage(what: str, value: str | None = None) -> LauncherError:
    return LauncherError.usage_error(what, value)


def _values(argv: list[str], index: int, count: int) -> list[str]:
    values = argv[index + 1 : index + 1 + count]
    if len(values) < count or "--" in values:
        raise _usage(f"{argv[index]}: needs {count} value{'s' if count > 1 else ''}")
    return values


def _absolute(option: str, path: str) -> str:
    if not path.startswith("/"):
        raise _usage(f"{option}: path must be absolute", path)
    return os.path.normpath(path) if path != "/" else "/"


def _port(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 65535:
        raise _usage("--relay: port must be a number from 1 to 65535", value)
    return int(value)


def parse_args(argv: list[str]) -> RunConfig:
    config = RunConfig()
    for arg in argv:
        if "\0" in arg:
            raise _usage("argument contains a NUL byte", arg.replace("\0", "\\0"))
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            config.command = argv[i + 1 :]
            if not config.command:
                raise _usage("no command after --")
            break
        if arg in _FLAG_OPTIONS:
            setattr(config, arg[2:].replace("-", "_"), True)
            i += 1
        elif arg in _TWO_PATH_MOUNTS:
            source, dest = _values(argv, i, 2)
            config.ops.append(MountOp(_TWO_PATH_MOUNTS[arg], _absolute(arg, dest), _absolute(arg, source)))
            i += 3
        elif arg in _ONE_PATH_MOUNTS:
            (dest,) = _values(argv, i, 1)
            config.ops.append(MountOp(_ONE_PATH_MOUNTS[arg], _absolute(arg, dest)))
            i += 2
        elif arg == "--relay":
            port, path = _values(argv, i, 2)
            if not path:
                raise _usage("--relay: empty Unix socket path")
            config.relays.append((_port(port), path))
            i += 3
        elif arg == "--setenv":
            key, value = _values(argv, i, 2)
            if not key or "=" in key:
                raise _usage("--setenv: invalid variable name", key)
            config.setenv.append((key, value))
            i += 3
        else:
            raise _usage("unknown option" if arg.startswith("-") else "expected an option or --", arg)
    else:
        raise _usage("missing -- and a command")
    if config.relays and not config.unshare_net:
        raise _usage("--relay needs --unshare-net")
    return config


# ---------------------------------------------------------------- the stub


def launch(config: RunConfig, caller_mask: set[int], parent: int) -> int:
    _refuse_setid()
    tty_path = _stdout_tty()
    cwd = _current_dir()
    # An inherited SIG_IGN for SIGCHLD would make the kernel auto-reap our
    # children: waitpid would then never report the worker's status.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    privileges.set_no_new_privs()
    privileges.set_parent_death_signal(_signal.SIGKILL)
    # A relay's connection children outlive it by a moment when its process
    # group is killed; as a subreaper the stub inherits and reaps them, so
    # no process of the launch is left to the caller's reaper (SPEC §2.8).
    privileges.set_child_subreaper()
    if os.getppid() != parent:
        # The caller died before PDEATHSIG was armed, so it will never fire:
        # end as if it had.
        return 128 + _signal.SIGKILL
    _resolve_sources(config.ops)
    seccomp_programs = _load_seccomp(config)
    env = dict(os.environ)
    relays: list[int] = []
    try:
        in_user_ns = False
        if config.unshare_net or config.unshare_user:
            relays, in_user_ns = _phase_one(config)
        namespaces.unshare(kernel.CLONE_NEWPID, with_user=config.unshare_user and not in_user_ns)
        privileges.set_undumpable()
        # PID 1 learns through this pipe whether the stub died before PID 1
        # could arm its own PDEATHSIG (EOF: every write end is closed).
        alive_read, alive_write = os.pipe2(os.O_CLOEXEC)
        pid1 = os.fork()
    except BaseException:
        _kill_relays(relays, set(relays))
        raise
    if pid1 == 0:
        os.close(alive_write)
        _pid1(config, env, cwd, tty_path, seccomp_programs, caller_mask, alive_read)
    os.close(alive_read)
    privileges.drop_all_capabilities()
    live_relays = set(relays)
    status = signals.supervise(pid1, live_relays.discard)
    _kill_relays(relays, live_relays)
    os.close(alive_write)
    return status


def _refuse_setid() -> None:
    ruid, euid, _ = os.getresuid()
    rgid, egid, _ = os.getresgid()
    if ruid != euid or rgid != egid:
        raise LauncherError(
            "refusing to run setuid/setgid", f"uid {ruid}/{euid} gid {rgid}/{egid}", "install it as a plain executable"
        )


def _stdout_tty() -> str | None:
    try:
        return os.ttyname(1) if os.isatty(1) else None
    except OSError:
        return None


def _current_dir() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None  # deleted or unreachable: PID 1 falls back to $HOME, then /


def _resolve_sources(ops: list[MountOp]) -> None:
    """Resolve bind sources on the host root, before any namespace exists.

    A missing source fails the launch here, before any process is forked.
    """
    for op in ops:
        if op.source is None:
            continue
        try:
            resolved = os.path.realpath(op.source, strict=True)
            op.source_is_dir = stat.S_ISDIR(os.stat(resolved).st_mode)
        except OSError as err:
            raise LauncherError.from_os(f"{op.kind} source", op.source, err) from None
        op.source = resolved


def _load_seccomp(config: RunConfig) -> list[kernel.SeccompProgram]:
    """The filters to stack in the worker. The tty filter is on every launch:
    PID 1's setsid() is no defence against a workload handed a terminal that
    is nobody's controlling tty (it takes it with setsid + TIOCSCTTY). The
    filters asked for come first, so that their refusal of an unsupported
    host is the message a caller sees."""
    names = [seccomp.UNIX_BLOCK] if config.seccomp_unix_block else []
    if config.seccomp_harden:
        names.append(seccomp.HARDEN)
    names.append(seccomp.TTY)
    return [seccomp.prepare(seccomp.load_filter(name)) for name in names]


def _phase_one(config: RunConfig) -> tuple[list[int], bool]:
    """NET (and USER if needed) first, so relays bound here live in the sandbox's
    network namespace while staying in the host's PID and mount namespaces."""
    in_user_ns = namespaces.unshare(kernel.CLONE_NEWNET if config.unshare_net else 0, with_user=config.unshare_user)
    if not config.unshare_net:
        return [], in_user_ns
    from srt_launcher import network

    network.bring_up_loopback()
    if not config.relays:
        return [], in_user_ns
    from srt_launcher.relay import inside

    # Before the fork, not in each relay: the flag is inherited, so no relay
    # is ever dumpable, however late the scheduler runs it. setgroups and the
    # uid/gid maps (the stub's only writes to /proc/self) are done by now.
    privileges.set_undumpable()
    return inside.start_relays(config.relays), in_user_ns


def _kill_relays(relays: list[int], unreaped: set[int]) -> None:
    """SIGKILL each relay's process group, then reap what was in it: the
    relay, and its connection children, re-parented to the stub (a child
    subreaper) when the relay died before them.

    Only unreaped relays are killed: a reaped relay's pid, and so its group
    id once its children are gone, may belong to someone else by now. The
    wait is per group, never waitpid(-1): children the caller's program had
    before it exec'd the launcher are ours too, and a launch must not wait
    for them. Everything waited for is SIGKILLed (or dying of PDEATHSIG),
    so this does not block for long.
    """
    for pid in unreaped:
        try:
            os.killpg(pid, _signal.SIGKILL)  # the relay and its per-connection children
        except ProcessLookupError:
            pass
    for group in relays:
        try:
            while True:
                os.waitpid(-group, 0)
        except ChildProcessError:
            pass


# ---------------------------------------------------------------- PID 1


def _pid1(
    config: RunConfig,
    env: dict[str, str],
    cwd: str | None,
    tty_path: str | None,
    seccomp_programs: list[kernel.SeccompProgram],
    caller_mask: set[int],
    alive_read: int,
) -> None:
    code = SETUP_FAILED
    try:
        privileges.set_parent_death_signal(_signal.SIGKILL)  # PDEATHSIG is cleared by fork
        if _stub_is_gone(alive_read):
            return
        os.setsid()
        try:
            kernel.unshare(kernel.CLONE_NEWNS)
        except OSError as err:
            raise LauncherError.from_os("unshare", "mount", err) from None
        caller_umask = os.umask(0)  # mount points are created with exact modes
        root.build(config.ops, tty_path)
        # The mounts were the last thing that needed a capability. Dropping
        # them before the fork empties PID 1's sets and the worker's at once
        # (it inherits them), with one pass instead of two on the launch path;
        # the cwd is then entered with the workload's own rights.
        privileges.drop_all_capabilities()
        env["PWD"] = _enter_working_dir(cwd, env.get("HOME"))
        worker = os.fork()
        if worker == 0:
            _worker(config, env, seccomp_programs, caller_mask, caller_umask)
        # Orphans re-parented to PID 1 are reaped and forgotten.
        code = signals.supervise(worker)
    except LauncherError as err:
        code = report(err)
    except BaseException:
        code = _internal_error()
    finally:
        os._exit(code)


def _stub_is_gone(alive_read: int) -> bool:
    os.set_blocking(alive_read, False)
    try:
        gone = os.read(alive_read, 1) == b""
    except BlockingIOError:
        gone = False
    os.close(alive_read)
    return gone


def _enter_working_dir(cwd: str | None, home: str | None) -> str:
    for candidate in (cwd, home, "/"):
        if candidate:
            try:
                os.chdir(candidate)
                return candidate
            except OSError:
                continue
    return "/"


def _internal_error() -> int:
    import traceback

    traceback.print_exc()
    return SETUP_FAILED


# ---------------------------------------------------------------- worker


def _worker(
    config: RunConfig,
    env: dict[str, str],
    seccomp_programs: list[kernel.SeccompProgram],
    caller_mask: set[int],
    caller_umask: int,
) -> None:
    code = SETUP_FAILED
    try:
        _restore_default_signals()
        # No capability to drop: PID 1 emptied every set (bounding and
        # ambient included) before forking us.
        # Nothing of the launcher's (pipes, the /proc handle) may leak to the workload.
        kernel.close_fds_from(3)
        os.umask(caller_umask)
        for key, value in config.setenv:
            env[key] = value
        for program in seccomp_programs:
            seccomp.install(program)
        # From here a held SIGTERM (sent before the worker existed) kills us.
        _signal.pthread_sigmask(_signal.SIG_SETMASK, caller_mask)
        exec_command(config.command, env)
    except LauncherError as err:
        code = report(err)
    except BaseException:
        code = _internal_error()
    finally:
        os._exit(code)


def _restore_default_signals() -> None:
    """Undo what the interpreter did to signal dispositions, and only that.

    Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec; it
    also catches SIGINT (KeyboardInterrupt), which would fire here, before
    exec, when the held signals are unblocked. A signal the caller itself
    ignored (nohup, a background job's SIGINT) stays ignored.
    """
    for signum in _IGNORED_BY_PYTHON:
        _signal.signal(signum, _signal.SIG_DFL)
    for signum in signals.FORWARDED:
        if callable(_signal.getsignal(signum)):
            _signal.signal(signum, _signal.SIG_DFL)


def exec_command(argv: list[str], env: dict[str, str]) -> None:
    """execvp semantics: search $PATH of the workload's environment; EACCES is
    remembered and the search goes on, as glibc's execvp does."""
    name = argv[0]
    if not name:
        raise LauncherError("exec ''", None, "No such file or directory", EXEC_NOT_FOUND)
    if "/" in name:
        candidates = [name]
    else:
        path = env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        candidates = [os.path.join(directory or ".", name) for directory in path.split(":")]
    denied: OSError | None = None
    last: OSError | None = None
    for candidate in candidates:
        try:
            os.execve(candidate, argv, env)
        except OSError as err:
            last = err
            if err.errno == errno.EACCES:
                denied = err
            elif err.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.ESTALE, errno.ENODEV, errno.ETIMEDOUT):
                break
    failure = denied if denied is not None and (last is None or last.errno in (errno.ENOENT, errno.ENOTDIR)) else last
    assert failure is not None
    code = EXEC_NOT_FOUND if failure.errno in (errno.ENOENT, errno.ENOTDIR) else EXEC_NOT_EXECUTABLE
    raise LauncherError.from_os(f"exec {name}", None, failure, code)

