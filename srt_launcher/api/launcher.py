"""The launcher process: makes every sandbox for one calling process (SPEC §9).

Started by api/client.py on a service's first launch, from a fresh
``python -I -S``; one thread; the launch path imported once, up front, so
that each sandbox's stub is a fork of a small process that has nothing left
to import. It serves the client's requests (api/wire.py) on one socket::

    caller (the service)          any number of threads and tasks
     └─ launcher process          this module: one poll loop
         ├─ stub ─ PID 1 ─ worker     a launch (launch/stub.py), one per sandbox
         ├─ stub ─ PID 1              prepared ahead: root built, waiting for a command
         └─ probe child               srt_launcher.probe()

**Prepared sandboxes.** A stub is forked with a *deferred command*
(``Sandbox.command_fd``): it enters the namespaces, PID 1 builds the root,
and then waits. When a launch asks for the same description, the launcher
writes the command to it and hands its streams to the client: the launch
costs the worker's exec and the exit, nothing else: PID 1 has even forked
the worker, which waits for the command. Once a description has been
launched twice, the launcher keeps sandboxes of it prepared: as many as
were ever running at once (at least 2, at most ``MAX_DEPTH``), for the
``MAX_KEYS`` descriptions used last; a description unused for
``IDLE_SECONDS`` is dropped, and one launched once (a sandbox per upload)
is never prepared. It refills while no sandbox runs (unless none is
left), so that preparing competes with no launch for the CPU. Only captured runs
(``run``, ``run_async``, ``popen`` with three pipes) use them: their stdio
are pipes the launcher makes, so nothing of the caller is needed ahead.

A prepared sandbox must be the sandbox the launch would make now: before
handing one out the launcher checks that every bind source (and relay
socket) still is the file it was (same device and inode, following
symlinks, as the stub resolved it), else it is dropped and a fresh one
made. Mounts the host adds
later under a bound tree reach it anyway (the binds are slaves of the
host's mounts, SPEC §2.3).

**Lifetime.** The launcher exits, killing every sandbox it made (each stub
also has PDEATHSIG; this process is single-threaded, so it fires when the
launcher dies), when the caller exits (a pidfd of it turns readable) or
closes its end of the socket (it exec'd). Each child is watched through a
pidfd, reaped as soon as it exits.
"""

import array
import marshal
import os
import select
import time

import _signal
import _socket

# The launch path, imported before the first fork (SPEC §9: "holding the
# launch path already imported"): the stub, PID 1 and the worker import
# these lazily otherwise, in every sandbox.
import fcntl  # noqa: F401
import resource  # noqa: F401

from srt_launcher import kernel, privileges, sandbox, seccomp  # noqa: F401
from srt_launcher.api import wire
from srt_launcher.errors import SETUP_FAILED, LauncherError
from srt_launcher.launch import network, pid1, report, signals, stub  # noqa: F401
from srt_launcher.relay import inside  # noqa: F401

MAX_DEPTH = 8  # prepared sandboxes of one description
MAX_KEYS = 4  # descriptions kept prepared
IDLE_SECONDS = 60.0  # a prepared sandbox unused this long is dropped
_SEEN = 256  # descriptions whose launches are counted
_ANCILLARY = _socket.CMSG_SPACE(wire.MAX_FDS * array.array("i").itemsize)


def main(control_fd: int) -> None:
    """Serve the caller on ``control_fd`` until it goes; never returns."""
    import gc

    code = 0
    try:
        launcher = Launcher(control_fd)
        # Everything imported so far stays out of the collector's way in the
        # forks (a collection would write to every object it scans).
        gc.freeze()
        try:
            launcher.serve()
        finally:
            launcher.shutdown()
    except BaseException:  # a bug: the client sees its launches fail and starts a new launcher
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)


class _Instance:
    """One sandbox forked by the launcher: prepared (waiting for a command) or launched."""

    __slots__ = ("key", "pid", "pidfd", "command", "client_fds", "sources", "launched")

    def __init__(self, key: bytes | None, pid: int, pidfd: int, command: int, client_fds: list[int], sources: list) -> None:
        self.key = key
        self.pid = pid
        self.pidfd = pidfd
        self.command = command  # write end of the command pipe, non-blocking; -1 once written
        self.client_fds = client_fds  # status (read end), then stdin, stdout, stderr for pipes
        self.sources = sources
        self.launched = False

    def close_client_fds(self) -> None:
        for fd in self.client_fds:
            os.close(fd)
        self.client_fds = []


class Launcher:
    def __init__(self, control_fd: int) -> None:
        os.chdir("/")  # the default working directory of every sandbox (SPEC §2.2 step 2)
        self.pid = os.getpid()
        parent = os.getppid()
        self.caller = os.pidfd_open(parent)
        if os.getppid() != parent:
            raise SystemExit(0)  # the caller died before we watched it: the pidfd may name another process
        self.control = _socket.socket(fileno=control_fd)
        self.control.setblocking(False)
        kernel.close_fds_except([self.caller, control_fd, 2])
        # A stub we kill leaves its PID 1 (dying of PDEATHSIG) and perhaps a
        # relay: as a subreaper we adopt and reap them, instead of leaving
        # zombies to the caller's reaper — a service that is PID 1 of its
        # container may reap nothing. SIGCHLD wakes the loop through a pipe.
        privileges.set_child_subreaper()
        self.wakeup, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        _signal.signal(_signal.SIGCHLD, _ignore)
        self.poller = select.poll()
        self.poller.register(self.caller, select.POLLIN)
        self.poller.register(control_fd, select.POLLIN)
        self.poller.register(self.wakeup, select.POLLIN)
        self.children: dict[int, _Instance | None] = {}  # pidfd → instance (None: a probe child)
        self.pidfds: dict[int, int] = {}  # pid → pidfd of each child not yet reaped
        self.pools: dict[bytes, list[_Instance]] = {}  # description → prepared, least recently used first
        self.boxes: dict[bytes, sandbox.Sandbox] = {}
        self.running: dict[bytes, int] = {}  # description → launched sandboxes still alive
        self.writes: dict[int, tuple[_Instance, memoryview]] = {}  # command pipe → what is left to write
        self.last_used: dict[bytes, float] = {}
        self.peak: dict[bytes, int] = {}  # description → most launches running at once (the depth to keep)
        self.seen: dict[int, int] = {}  # hash of a description → launches lately (bounded)

    # ------------------------------------------------------------ the loop

    def serve(self) -> None:
        while True:
            for fd, events in self.poller.poll(self._poll_timeout()):
                if fd == self.caller:
                    return
                if fd == self.control.fileno():
                    if not self._receive():
                        return
                elif fd == self.wakeup:
                    self._sweep()
                elif fd in self.children:
                    self._reap(fd)
                elif fd in self.writes:
                    self._write_command(fd)
            self._expire()
            self._replenish()

    def _poll_timeout(self) -> int:
        if self._wanted() is not None:
            return 0
        oldest = min(self.last_used.values(), default=None)
        if oldest is None:
            return -1
        return max(0, int((oldest + IDLE_SECONDS - time.monotonic()) * 1000) + 1)

    def _receive(self) -> bool:
        """Serve every queued request; False once the client's end is closed."""
        while True:
            fds = array.array("i")
            try:
                data, ancillary, flags, _ = self.control.recvmsg(65536, _ANCILLARY, _socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return True
            for level, kind, payload in ancillary:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            if not data and not fds:
                return False
            self._serve(data, list(fds), bool(flags & _socket.MSG_CTRUNC))

    def _serve(self, data: bytes, fds: list[int], truncated: bool) -> None:
        if not fds:
            return  # no reply socket: nobody to answer
        reply = _socket.socket(fileno=fds[0])
        fds = fds[1:]
        try:
            request = _load(data)
            if request[1] == "large" and fds:
                request = _read_large(fds.pop())
            if truncated:
                raise LauncherError("launcher process", None, "descriptors lost in transit (out of file descriptors?)")
            if request[1] == "launch":
                given, fds = fds, []
                self._launch(reply, request[2:], given)  # takes the descriptors, whatever happens
            elif request[1] == "probe":
                self._probe(reply)
            else:
                raise LauncherError("launcher process", str(request[1]), "unknown request")
        except LauncherError as err:
            _answer(reply, (False, err.step, err.value, err.reason or ""))
        except OSError as err:  # out of processes, descriptors, memory: this launch fails, we go on
            _answer(reply, (False, "launch", None, os.strerror(err.errno) if err.errno else str(err)))
        finally:
            reply.close()
            for fd in fds:
                os.close(fd)

    # ------------------------------------------------------------ launches

    def _launch(self, reply: _socket.socket, request: tuple, fds: list[int]) -> None:
        """Start one launch. ``fds`` (the caller's streams, if any) are ours to close."""
        try:
            key, argv, timeout, stdio = _launch_request(request)
            box = self.boxes.get(key) or _description(key)
            if stdio == "pipes" and not fds:
                instance = self._take(key) or self._prepare(key, box, None)
                self._remember(key, box)
            elif stdio == "fds" and len(fds) == 3:
                given, fds = fds, []
                instance = self._prepare(None, box, given)  # the caller's own streams: made now, not kept
            else:
                raise LauncherError("launcher process", str(stdio), "malformed request")
        finally:
            for fd in fds:
                os.close(fd)
        instance.launched = True
        if instance.key is not None:
            self.running[key] = self.running.get(key, 0) + 1
            if key in self.pools:
                self.peak[key] = max(self.peak.get(key, 0), self.running[key])
        self._start(instance, argv, timeout)
        # The client gets the status pipe, the stub's pidfd and its streams; we keep the pidfd.
        if not _answer(reply, (True, instance.pid), [instance.client_fds[0], instance.pidfd, *instance.client_fds[1:]]):
            _kill(instance)  # the client gave up waiting: nobody would read this sandbox
        instance.close_client_fds()

    def _start(self, instance: _Instance, argv: list[str], timeout: float | None) -> None:
        self.writes[instance.command] = (instance, memoryview(sandbox.encode_command(argv, timeout)))
        self._write_command(instance.command)
        if instance.command in self.writes:  # a command larger than the pipe: finish when it drains
            self.poller.register(instance.command, select.POLLOUT)

    def _write_command(self, fd: int) -> None:
        instance, view = self.writes[fd]
        try:
            while view:
                view = view[os.write(fd, view) :]
        except BlockingIOError:
            self.writes[fd] = (instance, view)
            return
        except OSError:
            pass  # PID 1 is gone: the status pipe tells the client
        del self.writes[fd]
        try:
            self.poller.unregister(fd)
        except KeyError:
            pass
        os.close(fd)
        instance.command = -1

    def _prepare(self, key: bytes | None, box: sandbox.Sandbox, stdio: list[int] | None) -> _Instance:
        """Fork a stub for ``box`` that waits for its command (``stdio``, if given, are closed here)."""
        ours: list[int] = []
        theirs = list(stdio or ())
        try:
            sources = _sources(box)
            status_r, status_w = _pipe(ours, theirs)
            command_r, command_w = _pipe(theirs, ours)
            if stdio is None:
                in_r, in_w = _pipe(theirs, ours)
                out_r, out_w = _pipe(ours, theirs)
                err_r, err_w = _pipe(ours, theirs)
                stdio, client = [in_r, out_w, err_w], [in_w, out_r, err_r]
            else:
                client = []
            pid = os.fork()
        except BaseException:
            for fd in ours + theirs:
                os.close(fd)
            raise
        if pid == 0:
            _stub_main(box, stdio, status_w, command_r, self.pid, sources)
        for fd in theirs:
            os.close(fd)
        os.set_blocking(command_w, False)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            # Out of descriptors: a child we cannot watch must not live on.
            os.kill(pid, _signal.SIGKILL)
            os.waitpid(pid, 0)
            for fd in ours:
                os.close(fd)
            raise
        instance = _Instance(key, pid, pidfd, command_w, [status_r, *client], sources)
        self._watch(pid, pidfd, instance)
        return instance

    def _watch(self, pid: int, pidfd: int, instance: "_Instance | None") -> None:
        self.children[pidfd] = instance
        self.pidfds[pid] = pidfd
        self.poller.register(pidfd, select.POLLIN)

    def _take(self, key: bytes) -> _Instance | None:
        """A prepared sandbox of ``key`` that is still what a launch would make."""
        pool = self.pools.get(key, [])
        while pool:
            instance = pool.pop(0)
            if _alive(instance) and instance.sources == _sources(self.boxes[key]):
                return instance
            _kill(instance)
        return None

    def _remember(self, key: bytes, box: sandbox.Sandbox) -> None:
        """``key`` was just launched. A description launched again is kept
        prepared from then on (most recent last, the oldest forgotten beyond
        MAX_KEYS); one launched once — a sandbox per upload — is never
        prepared for nothing."""
        digest = hash(key)
        self.seen[digest] = self.seen.pop(digest, 0) + 1
        while len(self.seen) > _SEEN:
            del self.seen[next(iter(self.seen))]
        if key not in self.pools and self.seen[digest] < 2:
            return
        self.boxes[key] = box
        self.pools[key] = self.pools.pop(key, [])
        self.last_used[key] = time.monotonic()
        self.peak[key] = max(self.peak.get(key, 0), self.running.get(key, 0))
        while len(self.pools) > MAX_KEYS:
            oldest = next(iter(self.pools))
            self._forget(oldest)

    def _forget(self, key: bytes) -> None:
        for instance in self.pools.pop(key, []):
            _kill(instance)
        self.boxes.pop(key, None)
        self.last_used.pop(key, None)
        self.peak.pop(key, None)

    def _wanted(self) -> bytes | None:
        """A description that has fewer prepared sandboxes than it should."""
        # While sandboxes run, only an empty pool is refilled: the forks of a
        # preparation would compete with them for the CPU (on 2 cores, +30%
        # launch latency measured); the rest waits for a quiet moment.
        busy = any(self.running.values())
        for key, pool in reversed(self.pools.items()):
            depth = min(MAX_DEPTH, max(2, self.peak.get(key, 0)))
            if len(pool) < depth and (not pool or not busy):
                return key
        return None

    def _replenish(self) -> None:
        # One fork per turn of the loop: a request waiting meanwhile is served first.
        key = self._wanted()
        if key is None:
            return
        try:
            self.pools[key].append(self._prepare(key, self.boxes[key], None))
        except OSError:
            self._forget(key)  # cannot fork now: launches make their sandboxes themselves

    def _expire(self) -> None:
        now = time.monotonic()
        for key in list(self.pools):
            if now - self.last_used[key] > IDLE_SECONDS:
                self._forget(key)

    def _sweep(self) -> None:
        """Reap every child that has exited: ours, and the orphans we adopted."""
        try:
            while os.read(self.wakeup, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            if pid in self.pidfds:
                self._reaped(self.pidfds[pid])

    def _reap(self, pidfd: int) -> None:
        try:
            if os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is None:
                return
        except ChildProcessError:
            pass  # reaped by _sweep already
        self._reaped(pidfd)

    def _reaped(self, pidfd: int) -> None:
        instance = self.children.pop(pidfd)
        self.pidfds = {pid: fd for pid, fd in self.pidfds.items() if fd != pidfd}
        self.poller.unregister(pidfd)
        os.close(pidfd)
        if instance is None:
            return
        if instance.command in self.writes:
            del self.writes[instance.command]
            self.poller.unregister(instance.command)
        if instance.command >= 0:
            os.close(instance.command)
            instance.command = -1
        instance.close_client_fds()
        if instance.launched:
            if instance.key is not None:
                self.running[instance.key] -= 1
                if not self.running[instance.key]:
                    del self.running[instance.key]
        elif instance in self.pools.get(instance.key, ()):  # type: ignore[arg-type]
            # A prepared sandbox died unused: this description cannot be
            # prepared (a bind source is missing...). Stop, rather than fork
            # in a loop; its next launch is made fresh and reports why.
            self._forget(instance.key)  # type: ignore[arg-type]

    # ------------------------------------------------------------ probe

    def _probe(self, reply: _socket.socket) -> None:
        """srt_launcher.probe(): the host probes of `check`, run from here, not from the caller."""
        pid = os.fork()
        if pid == 0:
            _probe_main(reply)
        self._watch(pid, os.pidfd_open(pid), None)

    # ------------------------------------------------------------ the end

    def shutdown(self) -> None:
        """Kill every sandbox, and reap them and what they leave (for at most a second)."""
        for pidfd in self.children:
            try:
                _signal.pidfd_send_signal(pidfd, _signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                if not os.waitpid(-1, os.WNOHANG)[0]:
                    time.sleep(0.002)
            except ChildProcessError:
                return


# ---------------------------------------------------------------- requests


def _load(data: bytes) -> tuple:
    try:
        request = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        raise LauncherError("launcher process", None, "malformed request") from None
    if not isinstance(request, tuple) or len(request) < 2:
        raise LauncherError("launcher process", None, "malformed request")
    if request[0] != wire.PROTOCOL:
        raise LauncherError("launcher process", str(request[0]), f"protocol mismatch (this launcher speaks {wire.PROTOCOL})")
    return request


def _read_large(memfd: int) -> tuple:
    try:
        data = kernel.read_to_eof(memfd)
    finally:
        os.close(memfd)
    return _load(data)


def _launch_request(request: tuple) -> tuple[bytes, list[str], float | None, str]:
    if len(request) != 4:
        raise LauncherError("launcher process", None, "malformed launch request")
    key, argv, timeout, stdio = request
    if not isinstance(key, bytes) or not isinstance(argv, list) or not argv or not all(isinstance(arg, str) for arg in argv):
        raise LauncherError("launcher process", None, "malformed launch request")
    if timeout is not None and not (isinstance(timeout, float) and 0 < timeout < float("inf")):
        raise LauncherError("launcher process", repr(timeout), "malformed timeout")
    return key, argv, timeout, stdio


def _description(key: bytes) -> sandbox.Sandbox:
    try:
        box = wire.decode(key)
    except ValueError as err:
        raise LauncherError("launcher process", None, str(err)) from None
    box.command_fd = -1  # the engine's last check, for a description whose command comes later
    sandbox.check(box)
    box.command_fd = None
    return box


def _answer(reply: _socket.socket, message: tuple, fds: list[int] = ()) -> bool:  # type: ignore[assignment]
    ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    try:
        reply.sendmsg([marshal.dumps(message, wire.MARSHAL_VERSION)], ancillary, _socket.MSG_DONTWAIT | _socket.MSG_NOSIGNAL)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- instances


def _pipe(reader: list[int], writer: list[int]) -> tuple[int, int]:
    """A pipe whose read end joins ``reader`` and write end ``writer`` (for cleanup)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    reader.append(read_end)
    writer.append(write_end)
    return read_end, write_end


def _sources(box: sandbox.Sandbox) -> list:
    """What each host path of the launch is now: (path, (device, inode)), or (path, errno)."""
    found = []
    for path in wire.host_paths(box):
        try:
            info = os.stat(path)
            found.append((path, (info.st_dev, info.st_ino)))
        except OSError as err:
            found.append((path, err.errno))
    return found


def _alive(instance: _Instance) -> bool:
    try:
        return os.waitid(os.P_PIDFD, instance.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def _kill(instance: _Instance) -> None:
    """Drop a sandbox: SIGKILL its stub (PID 1 follows by PDEATHSIG); reaped from the loop."""
    try:
        _signal.pidfd_send_signal(instance.pidfd, _signal.SIGKILL)
    except OSError:
        pass


def _ignore(signum: int, frame: object) -> None:
    """SIGCHLD's handler: the signal only wakes the loop (set_wakeup_fd)."""


def _leave_the_launcher() -> None:
    """First thing in a forked child: none of the launcher's signal plumbing
    (the wakeup descriptor is closed next; its number may be reused)."""
    _signal.set_wakeup_fd(-1)
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)


def _stub_main(box: sandbox.Sandbox, stdio: list[int], status: int, command: int, launcher: int, sources: list) -> None:
    """In the forked child: become the sandbox's stub; never returns.

    ``sources`` are what _take will compare with before handing this
    sandbox out: the sandbox must hold those very files, not whatever the
    paths named a moment later (a workload flipping a bind source between
    a symlink and a file while sandboxes are prepared), so the engine fails
    a bind whose source is anything else.
    """
    code = SETUP_FAILED
    try:
        _leave_the_launcher()
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        # Nothing of the launcher's (its socket, other sandboxes' streams)
        # may stay open here: PID 1 would hold it for the sandbox's life.
        kernel.close_fds_except([status, command])
        box.json_status_fd, box.command_fd = status, command
        box.source_ids = {path: found for path, found in sources if isinstance(found, tuple)}
        code = stub.launch(box, signals.block_launch_signals(), launcher)
    except LauncherError as err:
        code = err.exit_code  # the stub wrote the error record
    except BaseException as err:  # out of processes, descriptors...: say so on the status pipe
        reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else repr(err)
        try:
            from srt_launcher.launch import status as records

            records.write_all(status, records.json_line(records.end_fields(SETUP_FAILED, None, LauncherError("launch", None, reason))))
        except OSError:
            pass
    finally:
        os._exit(code)


def _probe_main(reply: _socket.socket) -> None:
    code = 0
    try:
        _leave_the_launcher()
        kernel.close_fds_except([reply.fileno(), 2])
        from srt_launcher.check import probes

        chain = probes.run_chain(force_user=False, rtnetlink=False)
        outcomes = [(o.name, o.state, o.detail, o.step, o.errno, o.facts) for o in chain.outcomes.values()]
        _answer(reply, (True, outcomes, chain.route))
    except BaseException as err:
        _answer(reply, (False, "probe", None, repr(err)))
        code = 1
    finally:
        os._exit(code)
