"""Serving a relay's listener: one child process per connection, forked ahead.

Shared by the in-sandbox relay (SPEC §3.1) and ``srt-launcher relay`` (§3.2).

The relay keeps two forked children blocked in accept(); as soon as one
takes a connection it says so through its pipe, and the relay forks a
replacement. fork(2) of a Python process, its copy-on-write faults and its
exit are the dominant per-connection cost (≈0.4 ms of CPU even for a child
that does nothing); forking ahead takes that off the new connection's path,
and two waiting children let the replacement be forked on one core while a
connection is served on the other (measured, short connections per second:
forking after accept 1, one child ahead ≈1.15, two ahead ≈1.3, three no
better). Each child (PDEATHSIG re-armed, auto-reaped: the relay ignores
SIGCHLD) serves exactly one connection: connect upstream, pump, exit.
Whatever happens to one connection, the relay keeps serving.
"""

import errno
import gc
import os
import select
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
# Children kept blocked in accept(), ready for the next connections.
WAITING_ACCEPTORS = 2
# Enough for every function of the connection path to be quickened (after
# 8 calls in 3.11) and specialized; measured: 10 rounds gain as much as 100.
_WARM_UP_ROUNDS = 16
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
    # A signal that lands after the interpreter's last check and before
    # poll() blocks would run its Python handler (the host relay's SIGTERM
    # cleanup) only once a connection arrives: the C-level handler also
    # writes to this pipe, which poll() watches.
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    _signal.set_wakeup_fd(wake_w)
    _warm_up_connection_path(upstream)
    gc.freeze()
    # poll, not select: fd numbers above 1023 (a caller holding many fds)
    # are fine.
    watched = select.poll()
    watched.register(wake_r, select.POLLIN)
    waiting = 0  # children waiting in accept(), each watched through its pipe's read end
    while True:
        while waiting < WAITING_ACCEPTORS:
            accepted_r = _fork_acceptor(listener, upstream, relay_pid)
            if accepted_r is not None:
                watched.register(accepted_r, select.POLLIN)
                waiting += 1
        for fd, _ in watched.poll():
            if fd == wake_r:
                _drain(wake_r)  # the handlers themselves run as soon as this frame goes on
                continue
            # "." (took a connection) or EOF (died before taking one): fork
            # a replacement. "!": the listener itself is broken.
            accepted_r = fd
            watched.unregister(accepted_r)
            waiting -= 1
            try:
                said = os.read(accepted_r, 1)
            except OSError:
                said = b""
            os.close(accepted_r)
            if said == _LISTENER_BROKEN:
                raise LauncherError("relay: accept", str(upstream), "the listening socket is broken")


def _warm_up_connection_path(upstream) -> None:  # type: ignore[no-untyped-def]
    """Run what a connection child runs, in the relay, before the first fork.

    CPython 3.11 rewrites a function's bytecode in place as it warms up
    (quickened after a few calls, then specialized), and the dynamic linker
    resolves a libc function on its first call. Done in every child, both
    write to pages the child shares with the relay, and each written page is
    copied: measured, ≈70 µs of a connection child's CPU (of ≈600), ≈8%
    more short connections per second. Done here, children inherit the
    result. Socket pairs stand in for the client and the upstream; a failure
    only means colder children.
    """
    try:
        for _ in range(_WARM_UP_ROUNDS):
            upstream.socket().close()
            client, accepted = _socket.socketpair()
            connected, server = _socket.socketpair()
            try:
                for sock in (client, server):
                    sock.send(b"warm-up")
                    sock.shutdown(_socket.SHUT_WR)
                pump_sockets(accepted.fileno(), connected.fileno())
            finally:
                for sock in (client, accepted, connected, server):
                    sock.close()
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _fork_acceptor(listener: _socket.socket, upstream, relay_pid: int) -> int | None:  # type: ignore[no-untyped-def]
    """Fork one child that accepts and serves one connection; return the read
    end of the pipe it reports through (None if the fork failed)."""
    accepted_r, accepted_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as err:
        os.close(accepted_r)
        os.close(accepted_w)
        report(LauncherError.from_os("relay: fork", str(upstream), err))
        time.sleep(0.05)  # out of processes or memory: retry rather than stop serving
        return None
    if pid == 0:
        os.close(accepted_r)
        _connection_child(listener, accepted_w, upstream, relay_pid)
    os.close(accepted_w)
    return accepted_r


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
