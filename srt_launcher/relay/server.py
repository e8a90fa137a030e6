"""Serving a relay's listener: one child process per connection, forked ahead.

Shared by the in-sandbox relay (SPEC §3.1) and ``srt-launcher relay`` (§3.2).

The relay keeps one forked child blocked in accept(); as soon as that child
takes a connection it says so through a pipe, and the relay forks the next
one. fork(2) of a Python process is the dominant per-connection cost (its
copy-on-write faults); forking ahead overlaps it with the previous
connection instead of putting it on the new one's path (measured: ≈15%
more connections per second than forking after accept). Each child
(PDEATHSIG re-armed, auto-reaped: the relay ignores SIGCHLD) serves exactly
one connection: connect upstream, pump, exit. Whatever happens to one
connection, the relay keeps serving.
"""

import errno
import gc
import os
import time

import _signal
import _socket

from srt_launcher import privileges
from srt_launcher.errors import LauncherError, report
from srt_launcher.relay.pump import pump_sockets

# accept() errors that concern one queued connection (reset before it was
# taken, refused by a security module): the relay must outlive them.
_TRANSIENT_ACCEPT_ERRORS = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR)
# A shortage passes once other connections end: wait a little, retry.
_SHORTAGE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# What an acceptor child tells the relay through its pipe.
_ACCEPTED = b"."
_LISTENER_BROKEN = b"!"


def serve_forever(listener: _socket.socket, upstream) -> None:  # type: ignore[no-untyped-def]
    """Serve ``listener`` until it breaks; then raise LauncherError.

    ``upstream`` says where connections go: ``upstream.socket()`` makes a
    fresh socket (called before accept, off the connection's path),
    ``upstream.connect(sock)`` connects it (OSError if refused), and
    ``str(upstream)`` names it in messages.
    """
    # Python ignores SIGPIPE at startup, but say so: EPIPE must end a
    # direction of one connection, not the relay.
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)  # the kernel reaps connection children
    relay_pid = os.getpid()
    # Objects that exist now are never collected: the cyclic GC of a child
    # then never writes to them, which would copy their pages.
    gc.freeze()
    while _fork_acceptor(listener, upstream, relay_pid) != _LISTENER_BROKEN:
        pass
    raise LauncherError("relay: accept", str(upstream), "the listening socket is broken")


def _fork_acceptor(listener: _socket.socket, upstream, relay_pid: int) -> bytes:  # type: ignore[no-untyped-def]
    """Fork one child that accepts and serves one connection; return once it has one (or died)."""
    accepted_r, accepted_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as err:
        os.close(accepted_r)
        os.close(accepted_w)
        report(LauncherError.from_os("relay: fork", str(upstream), err))
        time.sleep(0.05)  # out of processes or memory: retry rather than stop serving
        return b""
    if pid == 0:
        os.close(accepted_r)
        _connection_child(listener, accepted_w, upstream, relay_pid)
    os.close(accepted_w)
    try:
        return os.read(accepted_r, 1)
    except OSError:
        return b""
    finally:
        os.close(accepted_r)


def _connection_child(listener: _socket.socket, accepted_w: int, upstream, relay_pid: int) -> None:  # type: ignore[no-untyped-def]
    """Accept one connection, tell the relay, serve it and exit; never returns into the relay's loop."""
    status = 0
    try:
        privileges.set_parent_death_signal(_signal.SIGKILL)  # cleared by fork
        if os.getppid() != relay_pid:
            return  # the relay died before PDEATHSIG was armed
        upstream_socket = upstream.socket()
        try:
            connection = _accept(listener)
        except OSError as err:
            os.write(accepted_w, _LISTENER_BROKEN)  # forking more acceptors would only spin
            status = report(LauncherError.from_os("relay: accept", str(upstream), err))
            return
        listener.close()
        os.write(accepted_w, _ACCEPTED)
        os.close(accepted_w)
        try:
            upstream.connect(upstream_socket)
        except OSError as err:
            # Refused or gone: closing tells the client; the relay serves on.
            status = report(LauncherError.from_os("relay: connect", str(upstream), err))
            return
        pump_sockets(connection, upstream_socket.fileno())
    except BaseException as err:  # a child must never unwind into the relay's loop
        status = report(LauncherError("relay", str(upstream), repr(err)))
    finally:
        os._exit(status)


def _accept(listener: _socket.socket) -> int:
    while True:
        try:
            fd, _ = listener._accept()
            return fd
        except OSError as err:
            if err.errno in _TRANSIENT_ACCEPT_ERRORS:
                continue
            if err.errno in _SHORTAGE_ERRORS:
                time.sleep(0.05)
                continue
            raise
