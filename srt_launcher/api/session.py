"""One launch, from the service's side: the request, the streams, the verdict.

The launcher process answers a launch with descriptors (api/wire.py): the
sandbox's status pipe, where the stub writes SPEC §6's start and end
records; a pidfd of the stub; and, for captured runs, the workload's stdin,
stdout and stderr pipes. :class:`Session` feeds stdin, reads stdout and
stderr up to ``max_output`` bytes each, reads the status records, and turns
them into a :class:`~srt_launcher.api.result.Result`:

* past ``max_output`` on either stream, or past the deadline, the stub is
  SIGKILLed through its pidfd (race-free: a pidfd never names another
  process); PID 1 dies of its parent-death signal and the kernel kills the
  rest of the sandbox's PID namespace, so every stream then reaches EOF;
* a status pipe that closes without an end record means the stub died
  without saying why: the launcher process died (SPEC §9: SETUP_FAILED), or
  we killed it;
* nothing is buffered beyond ``max_output`` per stream and a few kilobytes
  of status: a workload writing 10 GB costs the caller at most the cap.

The same :class:`Session` is driven by a poll loop in the calling thread
(:func:`drive`) or by an asyncio event loop (:func:`drive_async`).
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import time

from srt_launcher.api import client
from srt_launcher.api.limits import FIELD_OF_RLIMIT
from srt_launcher.api.result import Cause, LaunchError, Result, signal_of

REPLY_TIMEOUT = 30.0  # the launcher answers in milliseconds; this only bounds a wedged one
GUARD = 2.0  # beyond the sandbox's own timeout (counted from the worker's fork), the client kills
KILL_GRACE = 5.0  # after a kill, how long the streams may take to close before we stop waiting
_CHUNK = 65536
_STATUS_MAX = 65536


class Started:
    """What the launcher handed back for one launch."""

    __slots__ = ("stub_pid", "pidfd", "status", "stdin", "stdout", "stderr")

    def __init__(self, stub_pid: int, fds: list[int], pipes: bool) -> None:
        self.stub_pid = stub_pid
        self.status, self.pidfd = fds[0], fds[1]
        self.stdin, self.stdout, self.stderr = fds[2:5] if pipes else (None, None, None)

    @classmethod
    def from_reply(cls, answer: tuple, fds: list[int], pipes: bool) -> "Started":
        expected = 5 if pipes else 2
        if answer and answer[0] is True and len(answer) == 2 and len(fds) == expected:
            return cls(answer[1], fds, pipes)
        for fd in fds:
            os.close(fd)
        if answer and answer[0] is False and len(answer) == 4:
            raise client.LaunchFailed(answer[1], answer[2], answer[3])
        raise client.LaunchFailed("launcher process", None, f"unexpected answer {answer!r}")


def kill_stub(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone: its streams are closing by themselves


# ---------------------------------------------------------------- the streams


class _Capture:
    """One output stream, kept up to ``limit`` bytes."""

    __slots__ = ("fd", "limit", "data", "truncated")

    def __init__(self, fd: int, limit: int) -> None:
        self.fd: int | None = fd
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def read(self) -> bool:
        """Read what is there; True when this passed the limit (the stream is then closed)."""
        assert self.fd is not None
        try:
            chunk = os.read(self.fd, min(_CHUNK, self.limit - len(self.data) + 1))
        except BlockingIOError:
            return False
        if not chunk:
            self.close()
            return False
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[self.limit :]
            self.truncated = True
            self.close()
            return True
        return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Feed:
    """The workload's stdin: ``data``, then EOF."""

    __slots__ = ("fd", "view")

    def __init__(self, fd: int, data: bytes) -> None:
        self.fd: int | None = fd
        self.view = memoryview(data)
        if not data:
            self.close()

    def write(self) -> None:
        assert self.fd is not None
        try:
            written = _write_ignoring_sigpipe(self.fd, self.view[: 16 * _CHUNK])
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno not in (errno.EPIPE, errno.EBADF):
                raise
            self.close()  # the workload closed its stdin or exited: the rest is not wanted
            return
        self.view = self.view[written:]
        if not self.view:
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _write_ignoring_sigpipe(fd: int, data: memoryview) -> int:
    """os.write that never raises SIGPIPE in the caller, whatever its disposition.

    Python ignores SIGPIPE, but a service may have restored the default; then
    SIGPIPE is held blocked in this thread for the write and, if the write
    raised it, taken before the mask is restored.
    """
    if signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN:
        return os.write(fd, data)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
    try:
        return os.write(fd, data)
    finally:
        if signal.SIGPIPE not in old:
            while signal.sigtimedwait({signal.SIGPIPE}, 0) is not None:
                pass
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


class StatusReader:
    """The SPEC §6 records of one launch, as they arrive."""

    __slots__ = ("fd", "buffer", "start", "end", "malformed")

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        self.buffer = bytearray()
        self.start: dict | None = None
        self.end: dict | None = None
        self.malformed = ""

    def read(self) -> None:
        assert self.fd is not None
        try:
            chunk = os.read(self.fd, _CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            self.close()
            return
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, _, rest = bytes(self.buffer).partition(b"\n")
            self.buffer = bytearray(rest)
            self._record(line)
        if len(self.buffer) > _STATUS_MAX:
            self.malformed = "status record too long"
            self.close()

    def _record(self, line: bytes) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            self.malformed = f"malformed status record {line[:200]!r}"
            return
        if "child-pid" in record and self.start is None:
            self.start = record
        elif "exit-code" in record or "error" in record:
            self.end = record

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------- one captured run


class Session:
    """A launched sandbox whose streams this client captures (``Sandbox.run``)."""

    def __init__(self, argv: tuple[str, ...], started: Started, data: bytes, max_output: int, deadline: float | None, began: float) -> None:
        self.argv = argv
        self.started = started
        self.began = began
        self.deadline = deadline
        for fd in (started.stdin, started.stdout, started.stderr, started.status):
            os.set_blocking(fd, False)  # type: ignore[arg-type]
        self.stdin = _Feed(started.stdin, data)  # type: ignore[arg-type]
        self.stdout = _Capture(started.stdout, max_output)  # type: ignore[arg-type]
        self.stderr = _Capture(started.stderr, max_output)  # type: ignore[arg-type]
        self.status = StatusReader(started.status)
        self.killed: Cause | None = None
        self.kill_deadline: float | None = None
        self.ended: float | None = None

    # The driver asks which descriptors to watch, reports readiness, and
    # calls tick() when its timeout passes.

    def interest(self) -> list[tuple[int, bool]]:
        """(fd, for writing) of each stream still open."""
        watched = [(self.stdin.fd, True)] if self.stdin.fd is not None else []
        for stream in (self.stdout, self.stderr, self.status):
            if stream.fd is not None:
                watched.append((stream.fd, False))
        return watched

    def ready(self, fd: int) -> None:
        if fd == self.stdin.fd:
            self.stdin.write()
        elif fd == self.status.fd:
            self.status.read()
            if self.status.fd is None and self.status.end is not None:
                self._drain()
        else:
            stream = self.stdout if fd == self.stdout.fd else self.stderr
            if stream.read():
                self.kill(Cause.OUTPUT_LIMIT)
        self._check_done()

    def _drain(self) -> None:
        """The end record is in: every process of the sandbox is dead and reaped,
        so all it wrote is in the pipes. Read it now rather than wait for the
        stub (which holds the write ends too) to exit."""
        for stream in (self.stdout, self.stderr):
            while stream.fd is not None:
                before = len(stream.data)
                if stream.read():
                    self.kill(Cause.OUTPUT_LIMIT)
                elif stream.fd is not None and len(stream.data) == before:
                    stream.close()  # nothing more: EAGAIN

    def next_timeout(self, now: float) -> float | None:
        """Seconds until the next deadline (None: none)."""
        deadline = self.kill_deadline if self.kill_deadline is not None else self.deadline
        return None if deadline is None else max(0.0, deadline - now)

    def tick(self, now: float) -> None:
        if self.kill_deadline is not None and now >= self.kill_deadline:
            self.close()  # killed, yet a stream stayed open: stop waiting (never hang)
        elif self.killed is None and self.deadline is not None and now >= self.deadline:
            self.kill(Cause.TIMEOUT)
        self._check_done()

    def kill(self, why: Cause) -> None:
        if self.killed is None:
            self.killed = why
            kill_stub(self.started.pidfd)
            self.kill_deadline = time.monotonic() + KILL_GRACE
        self.stdin.close()

    @property
    def done(self) -> bool:
        return self.ended is not None

    def _check_done(self) -> None:
        # Done when stdout, stderr and the status pipe are closed: every
        # process of the sandbox is gone. An unread stdin does not keep it open.
        if self.ended is None and not any(stream.fd is not None for stream in (self.stdout, self.stderr, self.status)):
            self.stdin.close()
            self.ended = time.monotonic()

    def close(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr, self.status):
            stream.close()
        if self.started.pidfd >= 0:
            os.close(self.started.pidfd)
            self.started.pidfd = -1
        if self.ended is None:
            self.ended = time.monotonic()

    def result(self) -> Result:
        return outcome(
            self.argv, self.status, self.killed, (self.ended or time.monotonic()) - self.began,
            stdout=bytes(self.stdout.data), stderr=bytes(self.stderr.data),
            stdout_truncated=self.stdout.truncated, stderr_truncated=self.stderr.truncated,
        )  # fmt: skip


def outcome(argv: tuple[str, ...], status: StatusReader, killed: Cause | None, wall: float, **streams) -> Result:  # type: ignore[no-untyped-def]
    """The Result of a launch from its status records and what the client did to it."""
    end = status.end or {}
    if "error" in end:
        error = end["error"]
        cause = Cause.EXEC_FAILED if error.get("status") in (126, 127) else Cause.SETUP_FAILED
        return Result(argv, cause, error=LaunchError(error.get("step") or "?", error.get("value"), error.get("message") or ""), **streams)
    if killed is Cause.OUTPUT_LIMIT or (killed is Cause.TIMEOUT and not end):
        return Result(argv, killed, wall_time=wall, **streams)
    if killed is Cause.SIGNALED and not end:  # popen().kill()
        return Result(argv, Cause.SIGNALED, signal=signal.SIGKILL, wall_time=wall, **streams)
    if not end:
        why = status.malformed or "the sandbox ended without a status record: " + _death_reason()
        return Result(argv, Cause.SETUP_FAILED, error=LaunchError("launcher process", None, why), wall_time=wall, **streams)
    usage = {
        "wall_time": end.get("wall-time", wall),
        "cpu_time": end["user-time"] + end["system-time"] if "user-time" in end else None,
        "max_rss": end["max-rss-kb"] * 1024 if "max-rss-kb" in end else None,
    }
    cause = end.get("cause")
    if cause == "timeout":
        return Result(argv, Cause.TIMEOUT, **usage, **streams)
    if cause == "signaled":
        limit = FIELD_OF_RLIMIT.get(end.get("limit", ""))
        return Result(argv, Cause.SIGNALED, signal=signal_of(end["signal"]), limit=limit, **usage, **streams)
    return Result(argv, Cause.EXITED, exit_code=end["exit-code"], **usage, **streams)


def _death_reason() -> str:
    reason = client.death_reason()
    conn_pid = client.launcher_pid()
    if conn_pid is not None:
        try:
            os.kill(conn_pid, 0)
        except ProcessLookupError:
            return "the launcher process died"
    return reason or "the launcher process or the sandbox's stub died"


def failed(argv: tuple[str, ...], err: client.LaunchFailed) -> Result:
    return Result(argv, Cause.SETUP_FAILED, error=LaunchError(err.step, err.value, err.message))


# ---------------------------------------------------------------- drivers


def drive(session: Session) -> None:
    """Run ``session`` to its end with poll(2) in the calling thread."""
    poller = select.poll()
    registered: dict[int, int] = {}
    try:
        while not session.done:
            wanted = {fd: select.POLLOUT if write else select.POLLIN for fd, write in session.interest()}
            for fd in set(registered) - set(wanted):
                poller.unregister(fd)
                del registered[fd]
            for fd, mask in wanted.items():
                if registered.get(fd) != mask:
                    poller.register(fd, mask)
                    registered[fd] = mask
            timeout = session.next_timeout(time.monotonic())
            events = poller.poll(None if timeout is None else max(1, int(timeout * 1000 + 1)))
            for fd, _ in events:
                if fd in registered and not session.done:
                    session.ready(fd)
            session.tick(time.monotonic())
    except BaseException:
        # ^C, a bug, anything: the sandbox must not outlive the call.
        if not session.done:
            session.kill(Cause.SIGNALED)
        raise
    finally:
        session.close()


async def drive_async(session: Session) -> None:
    """Run ``session`` to its end on the running asyncio loop (no thread)."""
    import asyncio

    driver = _LoopDriver(session, asyncio.get_running_loop())
    try:
        driver.update()
        await driver.finished
    except BaseException:
        if not session.done:
            session.kill(Cause.SIGNALED)  # cancelled: the sandbox must not outlive the task
        raise
    finally:
        driver.stop()
        session.close()


class _LoopDriver:
    """Keeps the loop's readers, writers and timer in step with what the session waits for."""

    def __init__(self, session: Session, loop) -> None:  # type: ignore[no-untyped-def]
        self.session = session
        self.loop = loop
        self.finished = loop.create_future()
        self.watched: dict[int, bool] = {}  # fd → for writing
        self.timer = None

    def update(self) -> None:
        session = self.session
        if session.done and not self.finished.done():
            self.finished.set_result(None)
        wanted = {} if session.done else dict(session.interest())
        for fd, write in list(self.watched.items()):
            if wanted.get(fd) is not write:
                self._unwatch(fd, write)
        for fd, write in wanted.items():
            if fd not in self.watched:
                (self.loop.add_writer if write else self.loop.add_reader)(fd, self.on_ready, fd)
                self.watched[fd] = write
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        timeout = None if session.done else session.next_timeout(time.monotonic())
        if timeout is not None:
            self.timer = self.loop.call_later(timeout, self.on_tick)

    def on_ready(self, fd: int) -> None:
        if fd in self.watched and not self.session.done:
            self.session.ready(fd)
        self.update()

    def on_tick(self) -> None:
        self.session.tick(time.monotonic())
        self.update()

    def _unwatch(self, fd: int, write: bool) -> None:
        (self.loop.remove_writer if write else self.loop.remove_reader)(fd)
        del self.watched[fd]

    def stop(self) -> None:
        for fd, write in list(self.watched.items()):
            self._unwatch(fd, write)
        if self.timer is not None:
            self.timer.cancel()
