"""Serving a relay's listener: one child process per connection.

Shared by the in-sandbox relay (SPEC §3.1) and ``srt-launcher relay`` (§3.2).
The relay accepts; each connection gets a forked child (PDEATHSIG re-armed,
auto-reaped: the relay ignores SIGCHLD) that connects upstream, pumps and
exits. Whatever happens to one connection, the relay keeps serving.

Forking only once a connection is there keeps a relay that is never used
at one process, and keeps the fork off the launch: the relays start while
PID 1 builds the sandbox, and on two cores they compete. (A child forked
ahead, waiting in accept(), was measured: no gain in connection rate, the
rate being bound by the copy-on-write faults of forking Python, and a
slower launch.)
"""

import errno
import gc
import os
import time

import _signal
import _socket

from srt_launcher import privileges
from srt_launcher.errors import LauncherError, report
from srt_launcher.relay.pump import pump

# accept() errors that concern one queued connection (reset before it was
# taken, refused by a security module): the relay must outlive them.
_TRANSIENT_ACCEPT_ERRORS = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR)
# A shortage passes once other connections end: wait a little, retry.
_SHORTAGE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def serve_forever(listener: _socket.socket, upstream) -> None:  # type: ignore[no-untyped-def]
    """Serve ``listener`` until it breaks; then raise LauncherError.

    ``upstream`` says where connections go: ``upstream.socket()`` makes a
    fresh socket, ``upstream.connect(sock)`` connects it (OSError if
    refused), and ``str(upstream)`` names it in messages.
    """
    # Python ignores SIGPIPE at startup, but say so: EPIPE must end a
    # direction of one connection, not the relay.
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)  # the kernel reaps connection children
    relay_pid = os.getpid()
    # Objects that exist now are never collected: the cyclic GC of a child
    # then never writes to them, which would copy their pages.
    gc.freeze()
    while True:
        try:
            connection = _accept(listener)
        except OSError as err:
            raise LauncherError.from_os("relay: accept", str(upstream), err) from None
        try:
            child = os.fork()
        except OSError as err:
            child = -1  # out of processes: closing the connection tells the client at once
            report(LauncherError.from_os("relay: fork", str(upstream), err))
        if child == 0:
            _connection_child(connection, listener, upstream, relay_pid)
        os.close(connection)


def _connection_child(connection: int, listener: _socket.socket, upstream, relay_pid: int) -> None:  # type: ignore[no-untyped-def]
    """Serve one connection and exit; never returns into the relay's loop."""
    status = 0
    try:
        privileges.set_parent_death_signal(_signal.SIGKILL)  # cleared by fork
        if os.getppid() != relay_pid:
            return  # the relay died before PDEATHSIG was armed
        listener.close()
        upstream_socket = upstream.socket()
        try:
            upstream.connect(upstream_socket)
        except OSError as err:
            # Refused or gone: closing tells the client; the relay serves on.
            status = report(LauncherError.from_os("relay: connect", str(upstream), err))
            return
        pump(connection, connection, upstream_socket.fileno(), upstream_socket.fileno())
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
