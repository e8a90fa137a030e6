"""The one bidirectional byte pump: host relay, in-sandbox relay and ``connect``.

Two engines behind one call, both moving bytes with ``splice(2)`` through a
private pipe per direction (socket → pipe → socket, no copy through user
space; the pipe grown to 1 MiB so one splice moves what a socket buffer
holds, in the socket engine only once a transfer fills the default pipe):

- Socket to socket (both relays, :func:`pump_sockets`): one thread, both
  sockets non-blocking, a poll loop that waits for input only when a
  direction's pipe is empty and for output only when it is not, and runs
  only the directions poll found ready. Never blocking on a write means one
  direction stuck on a slow reader never stalls the other (no write/write
  deadlock), and a connection costs no thread: measured, a thread per
  connection (stack, malloc arena, GIL hand-offs) was the largest part of
  a short connection's cost.
- Anything else (``connect``: stdin/stdout against the proxy socket): one
  blocking thread per direction. stdin/stdout's file descriptions are
  shared with the caller, so they must not be switched to O_NONBLOCK (a tty
  left non-blocking breaks the user's shell); blocking threads need no poll
  either. Where splice is refused (EINVAL: a tty, an O_APPEND file...) a
  direction falls back to ``readv`` into one preallocated 256 KiB buffer.

Half-close: EOF (or a reset) on one input ends only that direction; its
output is shut down for writing if it is a socket, or replaced by /dev/null
(which closes the pipe/file, so its reader sees EOF) otherwise. A failed
write (EPIPE, ECONNRESET) ends the direction too, and its input is shut
down for reading so the sender learns nobody is listening.

Imports are C modules only: the in-sandbox relay is on the launch path
(SPEC §4), and ``socket``/``threading``/``signal`` build enums or classes at import.
Callers must ignore SIGPIPE (Python does at startup); EPIPE ends a direction.
"""

import _socket
import _thread
import errno
import fcntl
import os
import select
import stat

PIPE_SIZE = 1 << 20
BUFFER_SIZE = 256 << 10
_SPLICE_FLAGS = os.SPLICE_F_MOVE
_NONBLOCKING_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# Chunks one direction may move before the other gets its turn.
_FAIR_SHARE = 16
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_POLLHUP = select.POLLHUP
_POLLERR = select.POLLERR
# What a new pipe holds (16 pages): the socket engine's first reads.
_DEFAULT_PIPE_SIZE = 16 * os.sysconf("SC_PAGE_SIZE")


class _WriteFailed(Exception):
    """The output refused bytes: the reader is gone, nothing more can be delivered."""


def pump(left_in: int, left_out: int, right_in: int, right_out: int) -> None:
    """Copy left_in→right_out and right_in→left_out until both directions end.

    For a socket, pass its fd as both in and out (``pump(c, c, u, u)``);
    ``connect`` passes stdin and stdout as the left side (``pump(0, 1, s, s)``).
    The caller keeps ownership of the fds (sockets handed in as both in and
    out are left non-blocking); only a non-socket output is closed (by dup2
    of /dev/null over it) when its direction ends.
    """
    if left_in == left_out and right_in == right_out and _is_socket(left_in) and _is_socket(right_in):
        pump_sockets(left_in, right_in)
    else:
        _pump_threads(left_in, left_out, right_in, right_out)


def _pump_threads(left_in: int, left_out: int, right_in: int, right_out: int) -> None:
    done = _thread.allocate_lock()
    done.acquire()

    def right_to_left() -> None:
        try:
            _direction(right_in, left_out)
        finally:
            done.release()

    _thread.start_new_thread(right_to_left, ())
    _direction(left_in, right_out)
    done.acquire()


class _Flow:
    """One direction of the socket engine: src → pipe → dst.

    Built for short connections as much as long ones: the pipe keeps the
    kernel's default size until a read fills it (a connection that moves a
    few bytes never pays for a 1 MiB pipe), and a read that returns less than
    the pipe holds means src is drained for now, so the flow goes back to
    poll rather than retrying into EAGAIN (an exception, with its errno
    message formatted, per attempt).
    """

    __slots__ = ("src", "dst", "pipe_r", "pipe_w", "chunk", "grown", "pending", "open")

    def __init__(self, src: int, dst: int) -> None:
        self.src = src
        self.dst = dst
        self.pipe_r, self.pipe_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.chunk = _DEFAULT_PIPE_SIZE  # a smaller pipe (over quota) just returns less
        self.grown = False
        self.pending = 0  # bytes in the pipe, not yet written to dst
        self.open = True

    def run(self) -> None:
        """Move bytes until src has none or dst takes no more (or this direction ends)."""
        more = True  # whether src may hold more than what was last read
        for _ in range(_FAIR_SHARE):
            if not self.pending:
                try:
                    count = os.splice(self.src, self.pipe_w, self.chunk, flags=_NONBLOCKING_SPLICE_FLAGS)
                except BlockingIOError:
                    return
                except OSError:
                    count = 0  # a reset: for the other side, the same as EOF
                if count == 0:
                    self.finish(write_failed=False)
                    return
                self.pending = count
                more = count >= self.chunk
            try:
                self.pending -= os.splice(self.pipe_r, self.dst, self.pending, flags=_NONBLOCKING_SPLICE_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                self.finish(write_failed=True)
                return
            if self.pending or not more:
                return  # dst is full (wait for POLLOUT) or src drained (wait for POLLIN)
            if not self.grown:
                self.grow()

    def grow(self) -> None:
        """A read filled the pipe: this is a bulk transfer, move up to 1 MiB per splice."""
        self.grown = True
        try:
            self.chunk = fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # above pipe-max-size or the user's pipe quota: keep the default

    def finish(self, write_failed: bool) -> None:
        self.open = False
        if write_failed:
            _shutdown_socket(self.src, _socket.SHUT_RD)
        _shutdown_socket(self.dst, _socket.SHUT_WR)
        os.close(self.pipe_r)
        os.close(self.pipe_w)

    def wanted(self) -> tuple[int, int]:
        """The fd and poll event this direction waits for."""
        return (self.dst, _POLLOUT) if self.pending else (self.src, _POLLIN)


def pump_sockets(left: int, right: int) -> None:
    """Copy between two connected stream sockets until both directions end.

    What the relays use: ``pump(c, c, u, u)`` without the checks of what the
    fds are. Both sockets are left non-blocking.
    """
    os.set_blocking(left, False)
    os.set_blocking(right, False)
    flows = [_Flow(left, right), _Flow(right, left)]
    poller = select.poll()
    registered: dict[int, int] = {}
    ready: dict[int, int] = {}  # first round: nothing has been polled yet, wait
    while True:
        for flow in flows:
            fd, event = flow.wanted()
            # Only a flow whose fd is ready runs: running the others would
            # end in EAGAIN. HUP and ERR count as ready (EOF or a failed write).
            if ready.get(fd, 0) & (event | _POLLHUP | _POLLERR):
                flow.run()
        flows = [flow for flow in flows if flow.open]
        if not flows:
            return
        masks = {left: 0, right: 0}
        for flow in flows:
            fd, event = flow.wanted()
            masks[fd] |= event
        for fd, mask in masks.items():
            if registered.get(fd, 0) == mask:
                continue
            # POLLHUP/POLLERR are reported even for an empty mask: an fd nobody
            # waits on must leave the set (a client that closed would make poll
            # spin while the other direction waits for the upstream).
            if not mask:
                poller.unregister(fd)
                del registered[fd]
            elif fd in registered:
                poller.modify(fd, mask)
                registered[fd] = mask
            else:
                poller.register(fd, mask)
                registered[fd] = mask
        ready = dict(poller.poll())


def _direction(src: int, dst: int) -> None:
    try:
        _copy(src, dst)
    except _WriteFailed:
        _shutdown(src, _socket.SHUT_RD)
    except OSError:
        pass  # a reset or error reading src: for the peer, the same as EOF
    _end_output(dst)


def _copy(src: int, dst: int) -> None:
    try:
        pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
    except OSError:
        _copy_buffered(src, dst)  # out of fds or pipe quota: copy through user space
        return
    try:
        _splice_loop(src, dst, pipe_r, pipe_w)
    finally:
        os.close(pipe_r)
        os.close(pipe_w)


def _splice_loop(src: int, dst: int, pipe_r: int, pipe_w: int) -> None:
    try:
        fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # above pipe-max-size or the user's pipe quota: the default 64 KiB still works
    chunk = fcntl.fcntl(pipe_w, fcntl.F_GETPIPE_SZ)
    while True:
        try:
            count = _splice(src, pipe_w, chunk, src, _POLLIN)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            _copy_buffered(src, dst)  # src cannot splice; the pipe is empty
            return
        if count == 0:
            return
        while count:
            try:
                count -= _splice(pipe_r, dst, count, dst, _POLLOUT)
            except OSError as err:
                if err.errno == errno.EINVAL:  # dst cannot splice: empty the pipe by hand
                    _write_all(dst, _read_exactly(pipe_r, count))
                    _copy_buffered(src, dst)
                    return
                raise _WriteFailed() from err


def _splice(src: int, dst: int, count: int, wait_fd: int, wait_event: int) -> int:
    while True:
        try:
            return os.splice(src, dst, count, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            _wait(wait_fd, wait_event)


def _copy_buffered(src: int, dst: int) -> None:
    buffer = bytearray(BUFFER_SIZE)
    view = memoryview(buffer)
    while True:
        try:
            count = os.readv(src, (buffer,))
        except BlockingIOError:
            _wait(src, _POLLIN)
            continue
        if count == 0:
            return
        _write_all(dst, view[:count])


def _write_all(dst: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(dst, view) :]
        except BlockingIOError:
            _wait(dst, _POLLOUT)
        except OSError as err:
            raise _WriteFailed() from err


def _read_exactly(fd: int, count: int) -> bytes:
    parts = []
    while count:
        data = os.read(fd, count)
        parts.append(data)
        count -= len(data)
    return b"".join(parts)


def _wait(fd: int, event: int) -> None:
    """Threads engine: block until an fd the caller left non-blocking is ready."""
    poller = select.poll()
    poller.register(fd, event)
    poller.poll()


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _shutdown(fd: int, how: int) -> None:
    if _is_socket(fd):
        _shutdown_socket(fd, how)


def _shutdown_socket(fd: int, how: int) -> None:
    # Family and type given, so _socket does not probe the fd; shutdown ignores them.
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
    try:
        sock.shutdown(how)
    except OSError:
        pass  # already disconnected: nothing to tell the peer
    finally:
        sock.detach()


def _end_output(dst: int) -> None:
    """Tell dst's reader this direction is over, keeping the other direction alive."""
    if _is_socket(dst):
        _shutdown(dst, _socket.SHUT_WR)
        return
    # dup2 rather than close: the fd number stays taken, so no socket or pipe
    # opened later in this process can land on it (fd 1 of `connect`).
    try:
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        _close_quietly(dst)
        return
    try:
        os.dup2(null, dst, inheritable=False)
    except OSError:
        _close_quietly(dst)
    finally:
        os.close(null)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
