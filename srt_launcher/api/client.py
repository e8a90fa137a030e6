"""The service's side of the launcher process (SPEC §9, last bullet).

Launches never fork the calling process: it may be large (fork copies its
page tables: tens of milliseconds for a gigabyte) and multi-threaded (a
forked child of a threaded process may only call async-signal-safe
functions, and PDEATHSIG would follow the forking thread, not the process).
Instead, the first launch starts one small launcher process per calling
process (srt_launcher/api/launcher.py), which makes every sandbox:

* started with ``posix_spawn`` (no fork of the caller) of ``sys.executable
  -I -S``: no PYTHON* variable, no user site-packages, no site module, no
  ``.pth`` file runs in it (SPEC §11); its ``sys.path`` is the standard
  library, then the directory this package was imported from, then the
  interpreter's own site-packages (for python-prctl) — never PYTHONPATH or
  the current directory;
* in a session of its own (a ^C on the caller's terminal does not reach it or
  the sandboxes: the caller decides what to stop), all signals at their
  defaults, an empty signal mask;
* dying with the calling process — not with the thread that started it: it
  watches a pidfd of the caller, which becomes readable when the whole
  process has exited (PDEATHSIG would fire when the starting thread exits);
  it also exits when its end of the socket closes: the caller exec'd, or is
  exiting (an atexit hook closes it and reaps the launcher);
* replaced transparently: when a request cannot be sent (the launcher died),
  a new one is started and the request sent again; a launch already sent
  sees its reply or status channel close and reports ``SETUP_FAILED``.

Thread safety: a request is one ``sendmsg`` on a SOCK_SEQPACKET socket (the
kernel keeps each message whole, whichever thread sends it); only starting
or replacing the launcher takes a lock. After ``os.fork()`` the child
forgets its parent's launcher and starts its own on first use.
"""

from __future__ import annotations

import array
import atexit
import errno
import marshal
import os
import signal
import socket
import sys
import threading
import time

from srt_launcher.api import wire

# The launcher's sys.path: the standard library (python -I -S), the
# directory this package was imported from, then the interpreter's own
# site-packages (for python-prctl), found as the installed command finds
# them (srt_launcher/_site.py): never the user's, never a .pth file.
_BOOTSTRAP = """\
import sys
sys.path.append(sys.argv[2])
from srt_launcher._site import add_interpreter_site_packages
add_interpreter_site_packages()
from srt_launcher.api.launcher import main
main(int(sys.argv[1]))
"""
# Where this package was imported from: the launcher imports the same code.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ANCILLARY = socket.CMSG_SPACE(wire.MAX_FDS * array.array("i").itemsize)
_DEAD_SOCKET = (errno.EPIPE, errno.ECONNRESET, errno.ECONNREFUSED, errno.ENOTCONN, errno.EBADF)


class LaunchFailed(Exception):
    """A request could not reach the launcher, or got no answer: (step, value, message)."""

    def __init__(self, step: str, value: str | None, message: str) -> None:
        super().__init__(step, value, message)
        self.step = step
        self.value = value
        self.message = message


class _Connection:
    """One running launcher process and our end of its socket."""

    __slots__ = ("pid", "control", "reaped_status")

    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self.control = control
        self.reaped_status: int | None = None

    def reap(self, block: bool) -> int | None:
        """The launcher's wait status once it has exited (reaping it), else None."""
        if self.reaped_status is None:
            try:
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (a waitpid(-1) of the caller)
                self.reaped_status = -1
                return self.reaped_status
            if pid:
                self.reaped_status = status
        return self.reaped_status

    def describe_death(self) -> str:
        status = self.reap(block=False)
        if status is None or status == -1:
            return "the launcher process closed its socket"
        if os.WIFSIGNALED(status):
            return f"the launcher process was killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return f"the launcher process exited with status {os.WEXITSTATUS(status)}"


_lock = threading.Lock()
_current: _Connection | None = None
_last_death = ""


def _start() -> _Connection:
    if not sys.executable:
        raise LaunchFailed("launcher process", None, "no Python interpreter to start (sys.executable is empty)")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # dup2 in the child clears close-on-exec on the target only: our copy of
    # `theirs` stays close-on-exec, so no other child of the caller gets it.
    target = 3 if theirs.fileno() != 3 else 4
    argv = [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, str(target), _PACKAGE_PARENT]
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    actions = [
        (os.POSIX_SPAWN_DUP2, null, 0),
        (os.POSIX_SPAWN_DUP2, null, 1),
        (os.POSIX_SPAWN_DUP2, theirs.fileno(), target),
    ]
    resettable = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
    try:
        # LD_BIND_NOW: every symbol bound once, here, rather than on first use
        # in each forked stub (a write to a page it shares, so a copy).
        pid = os.posix_spawn(
            sys.executable, argv, {"LD_BIND_NOW": "1"},
            file_actions=actions, setsid=True, setsigmask=(), setsigdef=resettable,
        )  # fmt: skip
    except OSError as err:
        ours.close()
        raise LaunchFailed("launcher process", sys.executable, os.strerror(err.errno) if err.errno else str(err)) from None
    finally:
        os.close(null)
        theirs.close()
    return _Connection(pid, ours)


def _connection() -> _Connection:
    global _current
    conn = _current
    if conn is not None:
        return conn
    with _lock:
        if _current is None:
            _current = _start()
        return _current


def _discard(conn: _Connection) -> None:
    """Forget a launcher that stopped answering (and reap it, once dead)."""
    global _current, _last_death
    with _lock:
        if _current is conn:
            _current = None
            _last_death = conn.describe_death()
            conn.control.close()
    if conn.reap(block=False) is None:
        # Its socket is closed, so it is exiting or exec'd something else:
        # make sure, then reap it so that no zombie stays with the caller.
        try:
            os.kill(conn.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        conn.reap(block=True)


def launcher_pid() -> int | None:
    """The pid of this process's launcher process, if one is running (for tests and diagnostics)."""
    conn = _current
    return None if conn is None else conn.pid


def death_reason() -> str:
    """Why the last launcher process went away, if one did."""
    return _last_death


def _after_fork_in_child() -> None:
    # The child must not share its parent's launcher: the launcher watches
    # the parent's pidfd and would take the child's requests for the parent's.
    global _current, _lock
    _lock = threading.Lock()
    conn, _current = _current, None
    if conn is not None:
        conn.control.close()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _shutdown() -> None:
    """At interpreter exit: close our end, so the launcher ends every sandbox
    and exits now, and reap it (rather than leave its exit to the pidfd, and
    the orphan to whoever reaps for us)."""
    global _current
    conn, _current = _current, None
    if conn is None:
        return
    conn.control.close()
    deadline = time.monotonic() + 2.0
    while conn.reap(block=False) is None and time.monotonic() < deadline:
        time.sleep(0.005)


atexit.register(_shutdown)


# ---------------------------------------------------------------- requests


def _message(request: tuple, fds: list[int]) -> tuple[bytes, list[int], int | None]:
    """(bytes, fds, memfd to close) — a large request goes in a memfd."""
    data = marshal.dumps((wire.PROTOCOL, *request), wire.MARSHAL_VERSION)
    if len(data) <= wire.LARGE:
        return data, fds, None
    memfd = os.memfd_create("srt-launcher-request", os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(memfd, view) :]
    os.lseek(memfd, 0, os.SEEK_SET)
    return marshal.dumps((wire.PROTOCOL, "large"), wire.MARSHAL_VERSION), [*fds, memfd], memfd


def send(request: tuple, fds: list[int] = (), *, blocking: bool = True) -> socket.socket:  # type: ignore[assignment]
    """Send ``request`` with a fresh reply socket (and ``fds``); return our end of it.

    A launcher found dead is replaced once. ``blocking=False``: raise
    BlockingIOError instead of waiting when the launcher's queue is full
    (asyncio callers wait for writability and retry).
    """
    reply, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    data, all_fds, memfd = _message(request, [theirs.fileno(), *fds])
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", all_fds))]
    flags = socket.MSG_NOSIGNAL | (0 if blocking else socket.MSG_DONTWAIT)
    try:
        for attempt in range(2):
            conn = _connection()
            try:
                conn.control.sendmsg([data], ancillary, flags)
                return reply
            except OSError as err:
                if err.errno not in _DEAD_SOCKET:
                    raise
                _discard(conn)
        raise LaunchFailed("launcher process", None, f"no launcher could be reached ({death_reason()})")
    except BaseException:
        reply.close()
        raise
    finally:
        theirs.close()
        if memfd is not None:
            os.close(memfd)


def read_reply(reply: socket.socket) -> tuple[tuple, list[int]]:
    """The launcher's one answer on ``reply`` (non-blocking read: call when readable).

    Raises LaunchFailed when the launcher died before answering (EOF).
    Descriptors arrive close-on-exec.
    """
    fds = array.array("i")
    data, ancillary, flags, _ = reply.recvmsg(65536, _ANCILLARY, socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    received = list(fds)
    if not data:
        for fd in received:
            os.close(fd)
        conn = _current
        if conn is not None:
            conn.reap(block=False)
        raise LaunchFailed("launcher process", None, "the launcher process died before answering" + _why())
    if flags & socket.MSG_CTRUNC:
        for fd in received:
            os.close(fd)
        raise LaunchFailed("launcher process", None, "descriptors lost in transit (out of file descriptors?)")
    try:
        answer = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        for fd in received:
            os.close(fd)
        raise LaunchFailed("launcher process", None, "malformed answer") from None
    return answer, received


def _why() -> str:
    conn = _current
    if conn is not None and conn.reap(block=False) is not None:
        return f" ({conn.describe_death()})"
    return ""


def wait_reply(reply: socket.socket, timeout: float) -> tuple[tuple, list[int]]:
    """Block until the launcher answers on ``reply`` (or dies, or ``timeout`` passes)."""
    import select

    poller = select.poll()
    poller.register(reply, select.POLLIN)
    if not poller.poll(int(timeout * 1000)):
        raise LaunchFailed("launcher process", None, f"no answer in {timeout:g} s")
    return read_reply(reply)

