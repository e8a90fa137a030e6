"""``srt-launcher relay``: host Unix socket → TCP port of an external proxy (SPEC §3.2).

Startup (in the click process; PDEATHSIG and NO_NEW_PRIVS were armed by
``__main__`` before click was imported): validate, bind and listen, write
the readiness byte. Then the process re-executes itself as a lean
interpreter (``python -I -S``, no click) that inherits the listening socket
and serves it: a relay runs for as long as its caller, and the lean
interpreter holds a third of the memory. PDEATHSIG, NO_NEW_PRIVS, the pid
and the listening socket all survive the exec; connections made meanwhile
wait in the backlog. Should the exec fail, this process serves instead.

Serving is relay/loop.py, the event loop shared with the in-sandbox relay.

Nothing here imports click: the lean server imports this module too. The
click command that calls :func:`start_relay` is in cli.py.
"""

from __future__ import annotations

import os
import sys

import _signal
import _socket

from srt_launcher import privileges
from srt_launcher.errors import SETUP_FAILED, LauncherError, report
from srt_launcher.relay import loop

RELAY_USAGE = "usage: srt-launcher relay [--ready-fd N] UNIX_SOCKET HOST:PORT  (see srt-launcher relay --help)"
READY_BYTE = b"\n"
KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_PROBES = 3
LISTEN_BACKLOG = 4096
_TERMINATING_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP)

HELP = """Listen on the Unix socket UNIX_SOCKET and forward each connection to HOST:PORT.

\b
HOST is a literal IPv4 address (no DNS); PORT is 1-65535. One event loop
serves every connection; half-closes are propagated. Upstream
sockets get TCP_NODELAY and keepalive (idle 10 s, interval 5 s, 3 probes).
The relay dies with its parent (PDEATHSIG), and its connections with it;
on SIGTERM, SIGINT or SIGHUP it removes UNIX_SOCKET first.

\b
Exit status: 2 usage error; 125 setup failed (UNIX_SOCKET exists or its
directory is missing, --ready-fd not open); otherwise it runs until killed.
"""


def parse_ipv4_endpoint(text: str, what: str, usage: str) -> tuple[str, int]:
    """``A.B.C.D:PORT`` with a literal dotted-quad address and a port of 1-65535."""
    import ipaddress

    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise LauncherError.usage_error(f"{what}: expected IPV4:PORT", text, usage)
    try:
        # Strict: no DNS, no "127.1", no leading zeros, no IPv6.
        address = str(ipaddress.IPv4Address(host))
    except ValueError:
        raise LauncherError.usage_error(f"{what}: host must be a literal IPv4 address", text, usage) from None
    return address, parse_port(port_text, what, usage)


def parse_port(text: str, what: str, usage: str) -> int:
    # isdigit() would accept "²", and int() " 80" or "+80".
    if not text or len(text) > 5 or not all("0" <= char <= "9" for char in text) or not 1 <= int(text) <= 65535:
        raise LauncherError.usage_error(f"{what}: port must be a number from 1 to 65535", text, usage)
    return int(text)


def start_relay(ready_fd: int | None, unix_socket: str, upstream: str) -> None:
    """SPEC §3.2 startup; then serve until killed (never returns).

    ``__main__`` armed PDEATHSIG before importing click; armed again here
    (it costs nothing) for a caller that reaches this function another way.
    """
    parent = os.getppid()
    privileges.set_parent_death_signal(_signal.SIGKILL)
    privileges.set_no_new_privs()
    # The flag survives exec: a caller that is a subreaper and execs the relay
    # would make it adopt orphans it never forked, and leave them zombies (it
    # never waits for children).
    privileges.clear_child_subreaper()
    if os.getppid() != parent:
        raise SystemExit(0)  # the parent died before PDEATHSIG was armed: nobody to serve
    address = parse_ipv4_endpoint(upstream, "relay: HOST:PORT", RELAY_USAGE)
    if not unix_socket:
        raise LauncherError.usage_error("relay: empty UNIX_SOCKET path", None, RELAY_USAGE)
    if ready_fd is not None:
        _check_open(ready_fd)
    # Held pending from before the socket file exists until the serving process
    # has its handlers (the mask survives exec): a SIGTERM sent as soon as the
    # readiness byte arrives still removes the socket file.
    _signal.pthread_sigmask(_signal.SIG_BLOCK, _TERMINATING_SIGNALS)
    loop.raise_open_files_limit()  # before readiness: the relay is fully set up once it says so
    listener, socket_file = _listen(unix_socket)
    if ready_fd is not None:
        try:
            _signal_ready(ready_fd)
        except LauncherError:
            socket_file.remove()
            raise
    _exec_lean_server(listener, socket_file, address)
    _serve_forever(listener, socket_file, address)


def serve_inherited() -> None:
    """Entry point of the re-executed relay: argv is LISTENER_FD UNIX_SOCKET DEV INODE HOST PORT."""
    try:
        fd, path, dev, ino, host, port = sys.argv[1:7]
        listener = _socket.socket(fileno=int(fd))
        os.set_inheritable(listener.fileno(), False)
        _serve_forever(listener, _SocketFile(path, int(dev), int(ino)), (host, int(port)))
    except LauncherError as err:
        os._exit(report(err))
    except BaseException as err:  # noqa: BLE001 - no traceback, one line, like everywhere else
        os._exit(report(LauncherError("relay", None, repr(err), SETUP_FAILED)))


def _check_open(fd: int) -> None:
    # Before binding: a failed handshake must not leave a socket file behind.
    try:
        os.fstat(fd)
    except OSError as err:
        raise LauncherError.from_os("relay: --ready-fd", str(fd), err) from None


class _SocketFile:
    """The file bind() created, recorded so that only that file is ever removed."""

    def __init__(self, path: str, dev: int, ino: int) -> None:
        self.path = path
        self.dev = dev
        self.ino = ino

    def remove(self) -> None:
        # A path someone replaced since bind is not ours to delete.
        try:
            found = os.lstat(self.path)
            if (found.st_dev, found.st_ino) == (self.dev, self.ino):
                os.unlink(self.path)
        except OSError:
            pass


def _listen(path: str) -> tuple[_socket.socket, _SocketFile]:
    listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        listener.bind(path)
        bound = os.lstat(path)
    except OSError as err:
        listener.close()
        raise LauncherError.from_os("relay: bind", path, err) from None
    socket_file = _SocketFile(path, bound.st_dev, bound.st_ino)
    try:
        listener.listen(LISTEN_BACKLOG)
    except OSError as err:
        socket_file.remove()
        listener.close()
        raise LauncherError.from_os("relay: listen", path, err) from None
    return listener, socket_file


def _signal_ready(fd: int) -> None:
    try:
        os.write(fd, READY_BYTE)
    except OSError as err:
        raise LauncherError.from_os("relay: --ready-fd", str(fd), err) from None
    _release_fd(fd)


def _release_fd(fd: int) -> None:
    """Close fd so its reader sees EOF; 0-2 get /dev/null so no socket lands on them."""
    if fd > 2:
        os.close(fd)
        return
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, fd)
    os.close(null)


def _exec_lean_server(listener: _socket.socket, socket_file: _SocketFile, address: tuple[str, int]) -> None:
    """Replace this process with a click-free interpreter serving ``listener``; returns only on failure."""
    if not sys.executable:
        return
    # -I -S: no environment, user site or site.py; the exact sys.path of this
    # process is handed over instead, so whatever found this module finds it again.
    code = (
        f"import sys; sys.path[:0] = {sys.path!r}; "
        "from srt_launcher.commands.relay import serve_inherited; serve_inherited()"
    )
    fd = listener.fileno()
    try:
        os.set_inheritable(fd, True)
        argv = [sys.executable, "-I", "-S", "-c", code, str(fd), socket_file.path]
        argv += [str(socket_file.dev), str(socket_file.ino), address[0], str(address[1])]
        os.execv(sys.executable, argv)
    except (OSError, ValueError):
        os.set_inheritable(fd, False)  # serve from this process, with click's memory


def _serve_forever(listener: _socket.socket, socket_file: _SocketFile, address: tuple[str, int]) -> None:
    # A signal landing after the interpreter's last check and before
    # epoll_wait blocks would run its handler (removing the socket file) only
    # once some connection wakes the loop: the C-level handler also writes
    # to this pipe, which the loop watches.
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    _signal.set_wakeup_fd(wake_w)
    _remove_on_termination(socket_file)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _TERMINATING_SIGNALS)
    try:
        loop.Loop(listener, TcpUpstream(address), wake_fd=wake_r).run()
    finally:  # the listener broke: nobody will ever serve this socket file
        socket_file.remove()


def _remove_on_termination(socket_file: _SocketFile) -> None:
    """SIGTERM/SIGINT/SIGHUP: remove the socket file, then die of the same signal.

    Every connection is a pair of sockets of this process: they close with it.
    """

    def terminate(signum: int, _frame: object) -> None:
        try:
            socket_file.remove()
        finally:  # whatever failed above, the relay dies of the signal
            _signal.signal(signum, _signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for signum in _TERMINATING_SIGNALS:
        _signal.signal(signum, terminate)


class TcpUpstream(loop.Upstream):
    """HOST:PORT of the external proxy, reached with TCP_NODELAY and keepalive."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(_socket.AF_INET, address, f"{address[0]}:{address[1]}")

    def prepare(self, sock: _socket.socket) -> None:
        # Before connect, so they hold from the first segment.
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
