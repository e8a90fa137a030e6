"""The in-sandbox relay (SPEC §3.1): 127.0.0.1:PORT in the sandbox → a host Unix socket.

The stub calls :func:`start_relays` in phase 1, after unsharing the network
namespace and before the PID and mount namespaces: the relay process lives
in the sandbox's network namespace (it can listen on the sandbox loopback)
but in the host's PID and mount namespaces (the workload can neither see nor
signal it, and the Unix path is resolved on the host's filesystem). One
process serves every --relay port, from one event loop: a second process
would cost the launch a fork of the stub and its start-up, for nothing an
event loop does not already do. If it dies, every port refuses: none is
left accepting connections that nobody serves.

Everything that can fail is done before the first fork — bind every
listener, pin every Unix socket — so a bad ``--relay`` aborts the launch with
nothing left running. Listening before the workload exists means a workload
that connects as its first action never races the relay.

Imports are C modules only (``_socket``, ``_signal``): this is the launch
path of every sandboxed command (SPEC §4). The event loop that serves the
connections (relay/loop.py) is imported by the relay process once a first
connection is pending, off the stub's critical path.
"""

import errno
import fcntl
import posix
import select

import _signal
import _socket
import _stat

from srt_launcher import kernel, privileges
from srt_launcher.errors import LauncherError, report

_LOOPBACK = "127.0.0.1"


class _Relay:
    __slots__ = ("port", "path", "listener", "target")

    def __init__(self, port: int, path: str, listener: int, target: int) -> None:
        self.port = port
        self.path = path
        self.listener = listener  # listening TCP socket fd
        self.target = target  # O_PATH fd of the Unix socket inode


def start_relays(relays: list[tuple[int, str]]) -> list[int]:
    """Bind and pin every relay, then fork the relay process; return its PID (in a list).

    Raises LauncherError (125) naming the port or path if any bind or pin
    fails; then no relay has been forked and no fd is left open. On return
    the stub holds none of the listeners or pinned sockets.
    """
    prepared: list[_Relay] = []
    try:
        for port, path in relays:
            prepared.append(_prepare(port, path))
        return _fork_all(prepared)
    finally:
        for relay in prepared:
            posix.close(relay.listener)
            posix.close(relay.target)


def _prepare(port: int, path: str) -> _Relay:
    listener = _above_stdio(_listen(port))
    try:
        target = _above_stdio(_pin(path))
    except BaseException:
        posix.close(listener)
        raise
    return _Relay(port, path, listener, target)


def _above_stdio(fd: int) -> int:
    # A stub started with stdin or stdout closed gets sockets numbered 0 or 1,
    # which the relay process turns into /dev/null.
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        posix.close(fd)


def _listen(port: int) -> int:
    address = f"{_LOOPBACK}:{port}"
    try:
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    except OSError as err:
        raise LauncherError.from_os("relay listen", address, err) from None
    try:
        # The relay may be restarted on a port whose old connections linger in
        # TIME_WAIT (a previous sandbox's namespace is gone, but not this one's).
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind((_LOOPBACK, port))
        sock.listen(_socket.SOMAXCONN)
    except OSError as err:
        sock.close()
        raise LauncherError.from_os("relay listen", address, err) from None
    return sock.detach()


def _pin(path: str) -> int:
    """Open the socket inode itself: the relay connects to this inode forever,
    whatever the workload later does to the path (rename, unlink, symlink swap).

    The path is resolved by :func:`_resolve_trusted`, not by the kernel, so a
    symlink an earlier sandbox planted cannot choose the inode; and the inode
    must be a socket with one name (see :func:`_socket_problem`).
    """
    try:
        fd = _resolve_trusted(path)
    except _Untrusted as err:
        raise LauncherError("relay socket", path, str(err)) from None
    except OSError as err:
        raise LauncherError.from_os("relay socket", path, err) from None
    try:
        problem = _socket_problem(posix.fstat(fd))
    except OSError as err:
        posix.close(fd)
        raise LauncherError.from_os("relay socket", path, err) from None
    if problem:
        posix.close(fd)
        raise LauncherError("relay socket", path, problem)
    return fd


# The kernel's own limit on symlinks followed in one lookup (MAXSYMLINKS).
_MAX_SYMLINKS = 40
_WALK_FLAGS = posix.O_PATH | posix.O_NOFOLLOW | posix.O_CLOEXEC


class _Untrusted(Exception):
    """A symlink on the path that a sandbox could have planted."""


def _resolve_trusted(path: str) -> int:
    """An O_PATH fd of ``path``, resolved one component at a time.

    The rule (SPEC §3.1; the attack of issue 11 finding 1): a symlink is
    followed only if it sits in a directory that no sandbox of this caller
    could have written (:func:`_sandbox_could_write`). A workload runs with
    the caller's uid and no capabilities, so any directory the caller can
    write may have been bound read-write into an earlier sandbox, which could
    rename the socket (or a directory above it) and put a symlink to another
    socket — say a root-only one, or one the seccomp filter keeps it from
    reaching — in its place. Symlinks in directories only others can write
    (``/var/run`` → ``/run`` for an unprivileged caller) are followed, and
    their targets are walked by the same rule. A directory that is not a
    symlink needs no such check: each step opens the next name relative to
    the fd of the directory already reached (O_NOFOLLOW), so nothing renamed
    meanwhile can divert the walk. For a root caller every root-owned
    directory is writable by its (root) workloads, so in practice every
    symlink is refused: give the real path.
    """
    pending = path.split("/")
    dir_fd = posix.open("/" if path.startswith("/") else ".", posix.O_PATH | posix.O_DIRECTORY | posix.O_CLOEXEC)
    walked = "/" if path.startswith("/") else ""
    links = 0
    try:
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            fd = posix.open(name, _WALK_FLAGS, dir_fd=dir_fd)
            where = walked + name
            if not _stat.S_ISLNK(posix.fstat(fd).st_mode):
                posix.close(dir_fd)
                dir_fd, walked = fd, where + "/"
                continue
            try:
                if _sandbox_could_write(dir_fd):
                    raise _Untrusted(f"refusing the symlink {where}: a sandbox could have planted it (give the path it leads to)")
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, posix.strerror(errno.ELOOP))
                target = posix.readlink("", dir_fd=fd)  # readlinkat(fd, ""): this very symlink, not the name again
            finally:
                posix.close(fd)
            pending[:0] = target.split("/")
            if target.startswith("/"):
                posix.close(dir_fd)
                dir_fd = posix.open("/", posix.O_PATH | posix.O_DIRECTORY | posix.O_CLOEXEC)
                walked = "/"
        fd, dir_fd = dir_fd, -1
        return fd
    finally:
        if dir_fd >= 0:
            posix.close(dir_fd)


def _sandbox_could_write(dir_fd: int) -> bool:
    """Could a workload of this caller have written the directory ``dir_fd``?

    access(2) answers as the stub, which is either root (or root of a user
    namespace of its own, with --unshare-user) or, unprivileged, root of the
    user namespace it just made. Its CAP_DAC_OVERRIDE then covers exactly
    the inodes whose owner is mapped — every directory of root, whose
    workloads are root too, or only the caller's own — and any other
    directory is judged by its mode bits, group/other write and ACLs
    included. Without that capability, access() says no for a directory the
    caller owns but has made read-only: its owner (hence a workload) can
    chmod it back, so ownership counts as write access.
    """
    if posix.access(".", posix.W_OK, dir_fd=dir_fd):
        return True
    return posix.fstat(dir_fd).st_uid == posix.geteuid() and not _has_effective_capability(_CAP_DAC_OVERRIDE)


_CAP_DAC_OVERRIDE = 1


def _has_effective_capability(cap: int) -> bool:
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def _socket_problem(found: posix.stat_result) -> str | None:
    """Why the pinned inode cannot be relayed to, if it cannot: it must be a
    socket with exactly one name.

    A second name is a hard link: a workload that can write the socket's
    directory (on a mount that also holds another socket it may read and
    write) could link that other socket in under the expected name, and
    reach through the relay a socket the seccomp filter keeps it from
    connecting to. A socket made by bind(2) has one name.
    """
    if not _stat.S_ISSOCK(found.st_mode):
        return "not a Unix socket"
    if found.st_nlink != 1:
        return f"a socket with {found.st_nlink} names (a hard link is refused)"
    return None


def _fork_all(prepared: list[_Relay]) -> list[int]:
    stub = posix.getpid()
    try:
        pid = posix.fork()
    except OSError as err:
        raise LauncherError.from_os("relay fork", ", ".join(f"{_LOOPBACK}:{relay.port}" for relay in prepared), err) from None
    if pid == 0:
        _relay_process(prepared, stub)
    # Set from both sides: the stub's killpg must find the group even if it
    # runs before the child's own setpgid.
    try:
        posix.setpgid(pid, pid)
    except OSError:
        pass  # the child already did it, or already died (it is reaped later)
    return [pid]


# ---------------------------------------------------------------- the relay process


def _relay_process(prepared: list[_Relay], stub: int) -> None:
    code = 125
    try:
        # PDEATHSIG first: from here the relay cannot outlive the stub.
        privileges.set_parent_death_signal(_signal.SIGKILL)
        if posix.getppid() != stub:
            posix._exit(0)  # the stub died before PDEATHSIG was armed: nobody would kill us
        _keep_only_fds(prepared)
        # Undumpable already: the stub was when it forked us (stub._loopback_and_relays).
        # Everything else waits for a first pending connection: the relay starts
        # while PID 1 builds the sandbox, and on two cores they compete (the
        # capability drop and the event loop's imports are CPU most launches
        # never use). No connection is accepted before _become_relay
        # returns, so no input ever meets a relay that still has capabilities.
        _wait_readable([relay.listener for relay in prepared])
        _become_relay()
        from srt_launcher.relay import loop

        loop.raise_open_files_limit()
        relays = iter(prepared)
        first = next(relays)
        server = loop.Loop(_socket.socket(fileno=first.listener), _upstream(loop, first))
        for relay in relays:
            server.add_listener(_socket.socket(fileno=relay.listener), _upstream(loop, relay))
        code = server.run()
    except LauncherError as err:
        code = report(err)
    except BaseException as err:  # the relay must never return into the stub's code
        code = report(LauncherError("relay", ", ".join(f"{_LOOPBACK}:{relay.port}" for relay in prepared), repr(err)))
    finally:
        posix._exit(code)


def _upstream(loop, relay: _Relay):  # type: ignore[no-untyped-def]
    # The magic link, not the path: the kernel resolves it to the inode
    # opened before the workload existed, whatever is at the path now.
    return loop.Upstream(_socket.AF_UNIX, f"/proc/self/fd/{relay.target}", f"{_LOOPBACK}:{relay.port} -> {relay.path}")


def _wait_readable(fds: list[int]) -> None:
    # poll, not select: the listeners keep the numbers they got in the stub,
    # which are above 1023 when the caller holds many fds.
    waiter = select.poll()
    for fd in fds:
        waiter.register(fd, select.POLLIN)
    waiter.poll()


def _become_relay() -> None:
    # Own process group: the stub's killpg reaches the relay, and a
    # terminal's ^C (sent to the foreground group) does not. (The stub also
    # sets it, right after the fork.)
    posix.setpgid(0, 0)
    privileges.drop_all_capabilities()
    # EPIPE is handled where it happens; SIGPIPE would kill the relay mid-write.
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
    # The stub blocks the signals it forwards; a relay should die of SIGTERM
    # like any daemon (the stub itself uses SIGKILL).
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())


def _keep_only_fds(prepared: list[_Relay]) -> None:
    """Close everything but stderr, the listeners and the pinned sockets.

    The stub's and the caller's fds (pipes, terminals) would keep a reader
    waiting for EOF. stdin and stdout become /dev/null rather than closed,
    so no socket can be numbered 0 or 1.
    """
    null = posix.open("/dev/null", posix.O_RDWR | posix.O_CLOEXEC)
    posix.dup2(null, 0)
    posix.dup2(null, 1)
    kernel.close_fds_except([fd for relay in prepared for fd in (relay.listener, relay.target)])
