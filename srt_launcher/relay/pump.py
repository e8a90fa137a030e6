"""The stdio pump: ``connect``, and the socat front end's ``-``/``STDIO`` address.

Copies stdin to a socket and the socket to stdout, one blocking thread per
direction, moving bytes with ``splice(2)`` through a private pipe (no copy
through user space; the pipe grown to 1 MiB). stdin/stdout's file
descriptions are shared with the caller, so they must not be switched to
O_NONBLOCK (a tty left non-blocking breaks the user's shell); blocking
threads need no poll either. Where splice is refused (EINVAL: a tty, an
O_APPEND file...) a direction falls back to ``readv`` into one
preallocated 256 KiB buffer. Socket to socket, the relays use the event
loop of relay/loop.py instead.

Half-close: EOF (or a reset) on one input ends only that direction; its
output is shut down for writing if it is a socket, or replaced by /dev/null
(which closes the pipe/file, so its reader sees EOF) otherwise. A failed
write (EPIPE, ECONNRESET) ends the direction too, and its input is shut
down for reading so the sender learns nobody is listening.

Imports are C modules only (the socat front end is on the launch path,
SPEC §4). Callers must ignore SIGPIPE (Python does at startup); EPIPE ends
a direction.
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
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT


class _WriteFailed(Exception):
    """The output refused bytes: the reader is gone, nothing more can be delivered."""


def pump(left_in: int, left_out: int, right_in: int, right_out: int, linger: float | None = None) -> None:
    """Copy left_in→right_out and right_in→left_out until both directions end.

    ``connect`` passes stdin and stdout as the left side and its socket as
    both right ends (``pump(0, 1, s, s)``). The caller keeps ownership of
    the fds; only a non-socket output is closed (by dup2 of /dev/null over
    it) when its direction ends. ``linger``: once one direction has ended,
    return after at most this many seconds even if the other has not (the
    other thread is left blocked; the caller exits).
    """
    done = _thread.allocate_lock()
    done.acquire()

    def right_to_left() -> None:
        try:
            _direction(right_in, left_out)
        finally:
            done.release()

    _thread.start_new_thread(right_to_left, ())
    _direction(left_in, right_out)
    if linger is None:
        done.acquire()
    else:
        done.acquire(timeout=linger)


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
