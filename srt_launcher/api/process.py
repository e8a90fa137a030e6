"""``Sandbox.popen``'s handle: a sandboxed program running on its own, ``subprocess.Popen``-like.

The handle reads the sandbox's status records (SPEC §6) — never its output,
which goes wherever the caller pointed it — and kills through a pidfd of the
sandbox's stub, so ``kill()`` takes the whole sandbox down (PID 1 dies of
its parent-death signal, and every process in its PID namespace with it)
and can never hit another process. Safe to use from several threads.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time

from srt_launcher.api import session
from srt_launcher.api.result import Cause, Result


class SandboxProcess:
    """A running sandbox (see ``Sandbox.popen``)."""

    def __init__(self, argv: tuple[str, ...], started: session.Started | None, files: list, began: float, deadline: float | None) -> None:
        self.args = argv
        self.stdin, self.stdout, self.stderr = files
        self._started = started
        self._status = session.StatusReader(started.status) if started is not None else None
        if started is not None:
            os.set_blocking(started.status, False)
        self._began = began
        self._deadline = deadline
        self._killed: Cause | None = None
        self._result: Result | None = None
        self._lock = threading.Lock()
        self.pid: int | None = None
        if started is not None:
            self._read(until_start=True, timeout=None)
            if self._status.start is not None:  # type: ignore[union-attr]
                self.pid = self._status.start["child-pid"]  # type: ignore[union-attr]

    @classmethod
    def failed(cls, argv: tuple[str, ...], result: Result) -> "SandboxProcess":
        process = cls(argv, None, [None, None, None], time.monotonic(), None)
        process._result = result
        return process

    def __repr__(self) -> str:
        return f"<SandboxProcess {self.args[0]!r} pid={self.pid} returncode={self.returncode}>"

    # ------------------------------------------------------------ waiting

    def _read(self, until_start: bool, timeout: float | None) -> bool:
        """Read status records until the start record (or the end), or EOF; False when ``timeout`` passed first."""
        status = self._status
        assert status is not None
        limit = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        while status.fd is not None and not (until_start and (status.start or status.end)):
            now = time.monotonic()
            if self._deadline is not None and now >= self._deadline:
                if self._killed is None:
                    self._kill(Cause.TIMEOUT)  # the launch never got as far as its own timeout
                    self._deadline = now + session.KILL_GRACE
                    continue
                status.close()  # killed, and still no EOF: stop waiting (never hang)
                break
            ends = [end for end in (limit, self._deadline) if end is not None]
            wait = None if not ends else max(0.0, min(ends) - now)
            poller.register(status.fd, select.POLLIN)
            ready = poller.poll(None if wait is None else int(wait * 1000) + (1 if wait > 0 else 0))
            poller.unregister(status.fd)
            if ready:
                status.read()
            elif limit is not None and time.monotonic() >= limit:
                return False
        return True

    def poll(self) -> int | None:
        """The return code if the sandbox has ended, else None."""
        with self._lock:
            if self._result is None and self._read(until_start=False, timeout=0):
                self._finish()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the sandbox to end; its return code. ``subprocess.TimeoutExpired`` after ``timeout``."""
        with self._lock:
            if self._result is None:
                if not self._read(until_start=False, timeout=timeout):
                    raise subprocess.TimeoutExpired(list(self.args), timeout)  # type: ignore[arg-type]
                self._finish()
        return self.returncode  # type: ignore[return-value]

    def result(self, timeout: float | None = None) -> Result:
        """Wait, then the full :class:`Result` (``stdout``/``stderr`` empty: the caller has the streams)."""
        self.wait(timeout)
        return self._result  # type: ignore[return-value]

    def _finish(self) -> None:
        assert self._status is not None and self._started is not None
        self._status.close()
        wall = time.monotonic() - self._began
        self._result = session.outcome(self.args, self._status, self._killed, wall)
        if self._started.pidfd >= 0:
            os.close(self._started.pidfd)
            self._started.pidfd = -1

    @property
    def returncode(self) -> int | None:
        """None while running; the exit code; ``-N`` if killed by signal N (a timeout: -9);
        125 if the sandbox could not be made, 126/127 if the program could not be executed."""
        result = self._result
        if result is None:
            return None
        if result.cause is Cause.EXITED:
            return result.exit_code
        if result.cause is Cause.SIGNALED:
            return -int(result.signal)  # type: ignore[arg-type]
        if result.cause in (Cause.TIMEOUT, Cause.OUTPUT_LIMIT):
            return -signal.SIGKILL
        return 127 if result.cause is Cause.EXEC_FAILED else 125

    # ------------------------------------------------------------ signals

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the sandbox's stub, which passes SIGTERM, SIGINT, SIGHUP,
        SIGQUIT, SIGUSR1 and SIGUSR2 on to the program (SPEC §2.8); SIGKILL ends the sandbox."""
        started = self._started
        if started is None or started.pidfd < 0 or self._result is not None:
            return
        if signum == signal.SIGKILL and self._killed is None:
            self._killed = Cause.SIGNALED
        try:
            signal.pidfd_send_signal(started.pidfd, signum)
        except ProcessLookupError:
            pass

    def _kill(self, why: Cause) -> None:
        self._killed = why
        session.kill_stub(self._started.pidfd)  # type: ignore[union-attr]

    def terminate(self) -> None:
        """SIGTERM to the program."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the whole sandbox at once (the program and everything it started)."""
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> "SandboxProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.wait()

    def __del__(self) -> None:
        started = getattr(self, "_started", None)
        if started is not None and started.pidfd >= 0:
            os.close(started.pidfd)
            started.pidfd = -1
        status = getattr(self, "_status", None)
        if status is not None:
            status.close()
