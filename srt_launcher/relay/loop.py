"""The relay engine: one epoll loop per relay process serves every connection (SPEC §3.1).

Shared by the in-sandbox relay (§3.1), ``srt-launcher relay`` (§3.2) and the
socat front end (§8). A connection is two sockets and two directions
(:class:`_Flow`); nothing blocks and nothing forks:

- Fairness: a direction moves a bounded amount each time the loop comes
  round to it (level-triggered epoll comes back while more is waiting), so
  a bulk transfer takes one turn per round like any other connection. In a
  round, connections that are not bulk go first, and while any of them is
  active a bulk turn is small (:data:`BULK_TURN_SHARED`): a short
  connection's next step never waits long, and short connections keep
  their rate while a long one streams.
- No blocking call: every socket is non-blocking, the upstream connect too
  (EINPROGRESS, then EPOLLOUT and SO_ERROR); a connect that has not
  completed within ``connect_timeout`` fails that connection.
- One connection's error (refused, reset, a bug in its handling) closes that
  connection only; the listener and every other connection go on.
- Descriptors: the soft RLIMIT_NOFILE is raised to the hard limit at start.
  A connection needs its upstream socket before its client is accepted (a
  spare is kept ready), so a shortage leaves the client queued in the
  backlog rather than accepted and dropped: the listener leaves the epoll
  set (no busy loop on a readable listener it cannot serve) and comes back
  when a connection closes, or after :data:`BACK_OFF` seconds for a shortage
  of the whole system. Out of descriptors with no connection open, the
  relay can never serve one: it stops, so the port refuses instead of
  queueing connections forever.
- Copy for short exchanges, splice for bulk: a direction starts with a plain
  read into one buffer shared by the whole loop and a write; once a read
  fills the buffer it is bulk and, from a TCP socket, moves through a pipe
  of its own with splice(2) (no copy through user space). From a Unix
  socket a bulk direction copies through a larger buffer instead, which
  measured cheaper than splice there (see :class:`_Flow`); without a pipe
  (out of descriptors or pipe quota) a direction keeps copying too.
- Half-close: EOF (or a reset) on one side ends that direction only, once
  what was read is delivered, with shutdown(SHUT_WR) of the other side; the
  other direction goes on. A failed write ends the direction too, and its
  source is shut down for reading. The connection closes when both
  directions have ended.

Imports are C modules only: the in-sandbox relay is on the launch path (SPEC §4).
"""

import errno
import fcntl
import os
import select
import time

import _heapq
import _socket

from srt_launcher.errors import LauncherError, message, write_stderr

# Bytes a direction moves by copy per turn: the buffer shared by the loop.
# A read that fills it makes the direction bulk.
COPY_TURN = 1 << 16
# Bytes a bulk direction moves per turn (one splice into its pipe, one out):
# little while other connections are active, so that a round of the loop —
# hence each step of a short connection — stays short; more when only bulk
# transfers are moving, so each costs fewer rounds (the pipe is grown to match).
BULK_TURN_SHARED = 1 << 14
BULK_TURN_ALONE = 1 << 18
# Seconds after an event of a connection that is not bulk during which bulk
# turns stay small: its next step comes a few tens of microseconds later.
SHARED_WINDOW = 0.02
# Seconds an upstream connect may take.
CONNECT_TIMEOUT = 30.0
# Seconds before the listener retries after a shortage no connection of ours will end.
BACK_OFF = 0.25
# Connections accepted per turn of the listener.
ACCEPT_BATCH = 16
# A Unix socket whose backlog is full refuses a non-blocking connect with
# EAGAIN (there is no "in progress" for Unix sockets): retry after this long,
# doubling up to the timeout.
_UNIX_RETRY = 0.002

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR_HUP = select.EPOLLERR | select.EPOLLHUP
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# accept() errors that concern one queued connection (reset before it was
# taken, refused by a security module): the listener goes on.
_TRANSIENT_ACCEPT_ERRORS = frozenset((errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR))
# Out of something other connections give back when they close.
_SHORTAGE_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


class Upstream:
    """Where connections go: a socket family, an address, options set before connect.

    Subclasses override :meth:`prepare` (socket options) and may set
    ``handshake`` (a callable returning a :class:`Handshake`) for an
    upstream that must speak first, such as an HTTP CONNECT proxy.
    """

    handshake = None

    def __init__(self, family: int, address: object, name: str) -> None:
        self.family = family
        self.address = address
        self.name = name

    def __str__(self) -> str:
        return self.name

    def prepare(self, sock: _socket.socket) -> None:
        """Set options on a fresh upstream socket, before connect."""


class Handshake:
    """What an upstream must exchange before the tunnel opens (see relay/tunnel.py).

    ``request`` is sent once connected; then ``feed(peeked)`` is called with
    the bytes waiting in the socket (not consumed) and returns how many of
    them belong to the handshake; ``done`` then tells whether it is over, and
    ``error`` (a LauncherError) whether it failed.
    """

    request = b""
    done = False
    error: LauncherError | None = None

    def feed(self, peeked: bytes) -> int:
        raise NotImplementedError


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: each connection holds two to six descriptors."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass  # the soft limit stays; shortages are handled anyway


class _Listener:
    """A listening socket and where its connections go.

    The spare is that upstream's next socket, made before a client is
    accepted (see :meth:`Loop._accept`).
    """

    __slots__ = ("sock", "fd", "upstream", "spare", "listening", "splice_from_client", "splice_from_upstream")

    def __init__(self, sock: _socket.socket, upstream: Upstream) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.upstream = upstream
        self.spare: _socket.socket | None = None
        self.listening = False
        # Splice from TCP sockets only (see _Flow).
        self.splice_from_client = sock.family != _socket.AF_UNIX
        self.splice_from_upstream = upstream.family != _socket.AF_UNIX


class Loop:
    """Listeners, their upstreams, and every connection between them.

    One listener is given here; :meth:`add_listener` adds more (the
    in-sandbox relay serves every --relay port from one process).

    ``once``: take one connection, close the listener (``on_listener_closed``
    is called then), and return when that connection has ended — socat
    without ``fork``. ``linger``: after one direction has ended, close the
    connection once this many seconds have passed even if the other has not
    (socat's ``-t``). ``wake_fd``: a signal wakeup fd to drain, so a signal
    landing just before epoll_wait blocks still runs its handler at once.
    ``prepare_client``: called with each accepted socket (socket options).
    ``program``: the name error messages start with.
    """

    def __init__(
        self,
        listener: _socket.socket,
        upstream: Upstream,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        once: bool = False,
        linger: float | None = None,
        wake_fd: int | None = None,
        on_listener_closed=None,  # type: ignore[no-untyped-def]
        prepare_client=None,  # type: ignore[no-untyped-def]
        program: str = "srt-launcher",
    ) -> None:
        self.listeners = {listener.fileno(): _Listener(listener, upstream)}
        self.listening = 0  # listeners in the epoll set
        self.connect_timeout = connect_timeout
        self.once = once
        self.linger = linger
        self.wake_fd = wake_fd
        self.on_listener_closed = on_listener_closed
        self.prepare_client = prepare_client
        self.program = program
        self.epoll = select.epoll(flags=select.EPOLL_CLOEXEC)
        self.connections: dict[int, _Connection] = {}  # by fd, both of each connection's sockets
        self.open = 0  # connections open
        self.timers: list[list] = []  # heap of [deadline, sequence, callback or None]
        self.sequence = 0
        self.cancelled = 0  # entries of self.timers whose callback is None
        self.backing_off = False
        self.bulk_turn = BULK_TURN_SHARED  # what a bulk direction moves in this round
        self.view = memoryview(bytearray(COPY_TURN))  # every copy of a short exchange goes through it
        self.bulk_view: memoryview | None = None  # the same for bulk turns, made when first needed
        self.status = 0  # what run() returns in once mode: 1 if the connection could not be made

    def add_listener(self, listener: _socket.socket, upstream: Upstream) -> None:
        """Serve ``listener`` too, its connections going to ``upstream`` (before :meth:`run`)."""
        self.listeners[listener.fileno()] = _Listener(listener, upstream)

    # ------------------------------------------------------------ running

    def run(self) -> int:
        """Serve until a listener breaks (raises LauncherError) or, in once mode, until done."""
        if self.wake_fd is not None:
            self.epoll.register(self.wake_fd, _IN)
        for listener in self.listeners.values():
            listener.sock.setblocking(False)
            self._listen(listener, True)
        poll = self.epoll.poll
        connections = self.connections
        listeners = self.listeners
        shared_until = 0.0
        while self.listening or self.open or self.backing_off:
            later = []
            others = False  # did anything but a bulk transfer move this round?
            for fd, events in poll(self._timeout()):
                connection = connections.get(fd)
                if connection is not None:
                    if connection.bulk:
                        later.append((connection, fd, events))
                        continue
                    connection.ready(fd, events)
                elif fd in listeners:
                    self._accept(listeners[fd])
                elif fd == self.wake_fd:
                    _drain(fd)
                others = True
            if later:
                # Bulk transfers last, and in small turns while others are active.
                now = time.monotonic()
                if others:
                    shared_until = now + SHARED_WINDOW
                self.bulk_turn = BULK_TURN_SHARED if now < shared_until else BULK_TURN_ALONE
                for connection, fd, events in later:
                    if connections.get(fd) is connection:  # not closed earlier in this round
                        connection.ready(fd, events)
            if self.timers:
                self._run_timers()
        return self.status

    def _timeout(self) -> float:
        if not self.timers:
            return -1
        return max(0.0, self.timers[0][0] - time.monotonic())

    def call_later(self, delay: float, callback) -> list:  # type: ignore[no-untyped-def]
        """Run ``callback()`` in ``delay`` seconds; the entry returned is what :meth:`cancel` takes."""
        self.sequence += 1
        entry = [time.monotonic() + delay, self.sequence, callback]
        _heapq.heappush(self.timers, entry)
        return entry

    def cancel(self, entry: list) -> None:
        """Forget a timer. Most connect timers are cancelled long before they
        are due: once they outnumber the live ones, the heap is rebuilt
        without them, so memory follows the connections open, not the
        connections made in the last ``connect_timeout`` seconds."""
        if entry[2] is None:
            return
        entry[2] = None
        self.cancelled += 1
        if self.cancelled > 64 and 2 * self.cancelled > len(self.timers):
            self.timers = [live for live in self.timers if live[2] is not None]
            _heapq.heapify(self.timers)
            self.cancelled = 0

    def _run_timers(self) -> None:
        now = time.monotonic()
        # self.timers, not a local: a callback may cancel, and cancel may rebuild the heap.
        while self.timers and self.timers[0][0] <= now:
            callback = _heapq.heappop(self.timers)[2]
            if callback is None:
                self.cancelled -= 1
                continue
            try:
                callback()
            except Exception as err:  # noqa: BLE001 - a connection's timer: that connection's bug only
                owner = getattr(callback, "__self__", None)
                if not isinstance(owner, _Connection):
                    raise
                owner.crashed(err)

    # ------------------------------------------------------------ the listener

    def _listen(self, listener: _Listener, on: bool) -> None:
        if on and not listener.listening:
            self.epoll.register(listener.fd, _IN)
            self.listening += 1
        elif not on and listener.listening:
            self.epoll.unregister(listener.fd)
            self.listening -= 1
        listener.listening = on

    def _accept(self, listener: _Listener) -> None:
        for _ in range(ACCEPT_BATCH):
            if listener.spare is None:
                try:
                    listener.spare = _socket.socket(
                        listener.upstream.family, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC
                    )
                except OSError as err:
                    self._shortage(err, listener)
                    return
            try:
                fd = listener.sock._accept()[0]
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in _TRANSIENT_ACCEPT_ERRORS:
                    continue
                if err.errno in _SHORTAGE_ERRORS:
                    self._shortage(err, listener)
                    return
                raise LauncherError.from_os("relay: accept", str(listener.upstream), err) from None
            upstream, listener.spare = listener.spare, None
            if self.once:
                self._close_listener(listener)
            connection = _Connection(self, fd, upstream, listener)
            try:
                if self.prepare_client is not None:
                    self.prepare_client(connection.client)
                connection.connect()
            except Exception as err:  # noqa: BLE001 - one connection's bug must not end the others
                connection.crashed(err)
            if self.once:
                return

    def _shortage(self, err: OSError, listener: _Listener) -> None:
        """Out of descriptors (or memory): wait for a connection to close, or a while.

        A shortage is the process's, so every listener waits.
        """
        if err.errno not in _SHORTAGE_ERRORS:
            raise LauncherError.from_os("relay: socket", str(listener.upstream), err) from None
        if err.errno == errno.EMFILE and not self.open:
            # Every descriptor of ours is one we keep for good: none will be freed.
            raise LauncherError.from_os("relay: no descriptor left for a connection", str(listener.upstream), err)
        for each in self.listeners.values():
            self._listen(each, False)
        if not self.backing_off:
            self.backing_off = True
            self.call_later(BACK_OFF, self._resume)

    def _resume(self) -> None:
        if self.backing_off:
            self.backing_off = False
            for listener in self.listeners.values():
                self._listen(listener, True)

    def _close_listener(self, listener: _Listener) -> None:
        self._listen(listener, False)
        del self.listeners[listener.fd]
        listener.sock.close()
        if self.on_listener_closed is not None:
            self.on_listener_closed()

    def report(self, err: LauncherError) -> None:
        write_stderr(message(err, self.program))

    def closed(self) -> None:
        """A connection ended: its descriptors are free, the listener may take another."""
        self.open -= 1
        if self.backing_off:
            self._resume()


class _Connection:
    """A client and its upstream; connecting, then two flows."""

    __slots__ = ("loop", "via", "client", "client_fd", "upstream", "upstream_fd", "flows", "masks", "timer", "handshake",
                 "retry", "bulk")  # fmt: skip

    def __init__(self, loop: Loop, client_fd: int, upstream: _socket.socket, via: _Listener) -> None:
        self.loop = loop
        self.via = via  # the listener it came through: where it goes
        self.client_fd = client_fd
        # An accepted socket's flags are O_RDWR alone: one fcntl, not set_blocking's two.
        fcntl.fcntl(client_fd, fcntl.F_SETFL, os.O_RDWR | os.O_NONBLOCK)
        # Family and type given, so _socket does not query the fd: shutdown ignores them.
        self.client = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, client_fd)
        self.upstream = upstream
        self.upstream_fd = upstream.fileno()
        self.flows: tuple[_Flow, ...] = ()
        self.masks = {client_fd: 0, self.upstream_fd: 0}  # what each fd is registered for
        self.timer: list | None = None
        self.handshake: Handshake | None = None
        self.retry = _UNIX_RETRY
        self.bulk = False
        loop.open += 1
        loop.connections[client_fd] = self
        loop.connections[self.upstream_fd] = self

    # ------------------------------------------------------------ connecting

    def connect(self) -> None:
        loop = self.loop
        try:
            self.via.upstream.prepare(self.upstream)
            code = self.upstream.connect_ex(self.via.upstream.address)
        except OSError as err:
            code = err.errno
        except Exception as err:  # noqa: BLE001 - a bad address must not end the relay
            self.fail(LauncherError("relay: connect", str(self.via.upstream), repr(err)))
            return
        if code == 0:
            self._connected()
        elif code == errno.EINPROGRESS:
            self._watch(self.upstream_fd, _OUT)
            if self.timer is None:
                self.timer = loop.call_later(loop.connect_timeout, self._timed_out)
        elif code == errno.EAGAIN and self.upstream.family == _socket.AF_UNIX:
            # The Unix listener's backlog is full: try again shortly.
            if self.timer is None:
                self.timer = loop.call_later(loop.connect_timeout, self._timed_out)
            loop.call_later(self.retry, self._retry)
            self.retry = min(self.retry * 2, 0.1)
        else:
            self._failed_connect(code)

    def _retry(self) -> None:
        if self.timer is not None and not self.flows and self.loop.connections.get(self.upstream_fd) is self:
            self.connect()

    def _timed_out(self) -> None:
        self.timer = None
        if not self.flows and self.loop.connections.get(self.upstream_fd) is self:
            self._failed_connect(errno.ETIMEDOUT)

    def _failed_connect(self, code: int) -> None:
        self.fail(LauncherError("relay: connect", str(self.via.upstream), os.strerror(code)))

    def fail(self, err: LauncherError) -> None:
        """The upstream could not be reached: closing tells the client; the loop goes on."""
        self.loop.report(err)
        self.loop.status = 1
        self.close()

    def _connected(self) -> None:
        if self.timer is not None:
            self.loop.cancel(self.timer)
            self.timer = None
        make = self.via.upstream.handshake
        if make is not None and self.handshake is None:
            self.handshake = make()
            self._start_handshake()
            return
        loop = self.loop
        self.flows = (
            _Flow(self, self.client, self.upstream, self.via.splice_from_client),
            _Flow(self, self.upstream, self.client, self.via.splice_from_upstream),
        )
        # Clients usually send at once: what is already there goes now, a round early.
        self.flows[0].step()
        if self.flows[0].open or self.flows[1].open:
            self._update()
        else:
            self.close()

    # ------------------------------------------------------------ events

    def ready(self, fd: int, events: int) -> None:
        try:
            if self.flows:
                for flow in self.flows:
                    if flow.open and flow.wait_fd == fd and events & (flow.wait_event | _ERR_HUP):
                        flow.step()
                if self.flows[0].open or self.flows[1].open:
                    self._update()
                else:
                    self.close()
            elif self.handshake is not None:
                self._continue_handshake()
            else:
                self._connect_finished()
        except Exception as err:  # noqa: BLE001 - one connection's bug must not end the others
            self.crashed(err)

    def crashed(self, err: Exception) -> None:
        self.loop.report(LauncherError("relay", str(self.via.upstream), repr(err)))
        # As fail(): without fork a connection dropped this way (a socket
        # option the kernel refuses, a bug) must not end in exit status 0.
        self.loop.status = 1
        self.close()

    def _connect_finished(self) -> None:
        # connect() again rather than SO_ERROR: an event meant for an earlier
        # socket with the same number (closed in this round) must not pass
        # for the end of a connect still in progress.
        code = self.upstream.connect_ex(self.via.upstream.address)
        if code in (0, errno.EISCONN):  # 0 the first time after it completed, EISCONN after that
            self._connected()
        elif code not in (errno.EALREADY, errno.EINPROGRESS):
            self._failed_connect(code)

    # ------------------------------------------------------------ an upstream that speaks first

    def _start_handshake(self) -> None:
        request = self.handshake.request
        try:
            sent = self.upstream.send(request)
        except OSError as err:
            self.fail(LauncherError.from_os("relay: proxy", str(self.via.upstream), err))
            return
        if sent != len(request):  # a few hundred bytes into an empty socket buffer
            self.fail(LauncherError("relay: proxy", str(self.via.upstream), "could not send the request"))
            return
        self._watch(self.upstream_fd, _IN)
        self.timer = self.loop.call_later(self.loop.connect_timeout, self._timed_out)

    def _continue_handshake(self) -> None:
        handshake = self.handshake
        try:
            peeked = self.upstream.recv(COPY_TURN, _socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError as err:
            self.fail(LauncherError.from_os("relay: proxy", str(self.via.upstream), err))
            return
        used = handshake.feed(peeked)
        if used:
            self.upstream.recv(used)  # exactly the handshake's bytes; the tunnel's stay queued
        if handshake.error is not None:
            self.fail(handshake.error)
        elif handshake.done:
            self._connected()

    # ------------------------------------------------------------ registration

    def _watch(self, fd: int, mask: int) -> None:
        old = self.masks[fd]
        if mask == old:
            return
        epoll = self.loop.epoll
        # An fd nobody waits on must leave the set: EPOLLHUP and EPOLLERR are
        # reported whatever the mask, and would make the loop spin.
        if not mask:
            epoll.unregister(fd)
        elif old:
            epoll.modify(fd, mask)
        else:
            epoll.register(fd, mask)
        self.masks[fd] = mask

    def _update(self) -> None:
        client = upstream = 0
        for flow in self.flows:
            if flow.open:
                if flow.wait_fd == self.client_fd:
                    client |= flow.wait_event
                else:
                    upstream |= flow.wait_event
        self._watch(self.client_fd, client)
        self._watch(self.upstream_fd, upstream)

    def half_closed(self) -> None:
        """One direction ended: with ``linger``, the other gets that long to end."""
        loop = self.loop
        if loop.linger is not None and self.timer is None:
            self.timer = loop.call_later(loop.linger, self.close)

    def close(self) -> None:
        loop = self.loop
        if loop.connections.get(self.client_fd) is not self:
            return  # already closed
        if self.timer is not None:
            loop.cancel(self.timer)
            self.timer = None
        for fd in (self.client_fd, self.upstream_fd):
            if self.masks[fd]:
                loop.epoll.unregister(fd)
            del loop.connections[fd]
        for flow in self.flows:
            flow.release()
        self.client.close()
        self.upstream.close()
        self.flows = ()
        loop.closed()


class _Flow:
    """One direction, src → dst: a plain copy until a read fills the buffer, then bulk.

    A bulk direction from a TCP socket moves through a pipe of its own by
    splice(2): the pages TCP received go out without a copy through user
    space. From a Unix socket it keeps copying, through a buffer as large
    as a bulk turn, which costs the relay less CPU than splicing from a Unix
    socket does (the other way, TCP → Unix, splice is the cheaper one;
    figures in docs/performance.md).
    """

    __slots__ = ("connection", "src", "dst", "src_fd", "dst_fd", "leftover", "in_pipe", "pipe_r", "pipe_w", "open",
                 "wait_fd", "wait_event", "bulk", "splices")  # fmt: skip

    def __init__(self, connection: _Connection, src: _socket.socket, dst: _socket.socket, splices: bool) -> None:
        self.connection = connection
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.leftover = b""  # copied, not yet written
        self.in_pipe = 0  # spliced in, not yet spliced out
        self.pipe_r = self.pipe_w = -1
        self.open = True
        self.wait_fd = self.src_fd
        self.wait_event = _IN
        self.bulk = False
        self.splices = splices  # whether a bulk turn from src is a splice (src is a TCP socket)

    def step(self) -> None:
        """One turn: move a bounded amount, then note what to wait for."""
        if self.leftover:
            self._write(self.leftover)
        elif self.pipe_w >= 0:
            self._splice()
        else:
            self._copy()

    def _copy(self) -> None:
        loop = self.connection.loop
        view = loop.bulk_view[: loop.bulk_turn] if self.bulk else loop.view
        try:
            count = os.readv(self.src_fd, (view,))
        except BlockingIOError:
            return
        except OSError:
            count = 0  # a reset: for the other side, the same as EOF
        if not count:
            self.finish(write_failed=False)
            return
        if count == COPY_TURN and not self.bulk:
            self._become_bulk()
        self._write(view[:count])

    def _write(self, data) -> None:  # type: ignore[no-untyped-def]
        try:
            written = os.write(self.dst_fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            self.finish(write_failed=True)
            return
        if written == len(data):
            self.leftover = b""
            self.wait_fd, self.wait_event = self.src_fd, _IN
        else:
            self.leftover = bytes(data[written:])
            self.wait_fd, self.wait_event = self.dst_fd, _OUT

    def _become_bulk(self) -> None:
        self.bulk = True
        self.connection.bulk = True
        loop = self.connection.loop
        if not self.splices:
            if loop.bulk_view is None:
                loop.bulk_view = memoryview(bytearray(BULK_TURN_ALONE))
            return
        try:
            self.pipe_r, self.pipe_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            self.bulk = False  # out of descriptors or pipe quota: keep copying in short turns
            return
        try:
            fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, BULK_TURN_ALONE)
        except OSError:
            pass  # above pipe-max-size or the user's pipe quota: turns are as large as the pipe

    def _splice(self) -> None:
        if not self.in_pipe:
            try:
                count = os.splice(self.src_fd, self.pipe_w, self.connection.loop.bulk_turn, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                count = 0
            if not count:
                self.finish(write_failed=False)
                return
            self.in_pipe = count
        try:
            self.in_pipe -= os.splice(self.pipe_r, self.dst_fd, self.in_pipe, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            pass
        except OSError:
            self.finish(write_failed=True)
            return
        if self.in_pipe:
            self.wait_fd, self.wait_event = self.dst_fd, _OUT
        else:
            self.wait_fd, self.wait_event = self.src_fd, _IN

    def finish(self, write_failed: bool) -> None:
        self.open = False
        if write_failed:
            _shutdown(self.src, _socket.SHUT_RD)  # nobody reads what it sends: tell the sender
        _shutdown(self.dst, _socket.SHUT_WR)
        self.release()
        self.connection.half_closed()

    def release(self) -> None:
        if self.pipe_w >= 0:
            os.close(self.pipe_r)
            os.close(self.pipe_w)
            self.pipe_r = self.pipe_w = -1


def _shutdown(sock: _socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass  # already disconnected: nothing to tell the peer


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except OSError:
        pass
