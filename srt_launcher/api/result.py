"""What a sandboxed run came to: :class:`Result`, its :class:`Cause`, :class:`SandboxError`.

A launcher failure and the workload's own failure never look alike: the
launcher reports how the sandbox ended on a status channel of its own (SPEC
§6), so a program exiting 125, 126 or 127 by itself is ``Cause.EXITED`` with
that code, while a launch that could not be made is ``SETUP_FAILED`` or
``EXEC_FAILED`` with the step that failed in ``error``.
"""

from __future__ import annotations

import enum
import signal as _signal
from dataclasses import dataclass


class Cause(enum.Enum):
    """Why a sandboxed run ended."""

    EXITED = "exited"  # the program exited by itself (exit_code, 0 or not)
    SIGNALED = "signaled"  # killed by a signal (signal; limit when an rlimit sent it)
    TIMEOUT = "timeout"  # the wall-clock limit: every process of the sandbox SIGKILLed
    OUTPUT_LIMIT = "output-limit"  # stdout or stderr passed max_output: the sandbox was killed
    SETUP_FAILED = "setup-failed"  # the sandbox could not be made (error says where); nothing ran
    EXEC_FAILED = "exec-failed"  # the sandbox was made, the program could not be executed


@dataclass(frozen=True)
class LaunchError:
    """Where a launch failed: the step, the path or value, the reason."""

    step: str
    value: str | None
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.step, self.value, self.message) if part)


@dataclass(frozen=True)
class Result:
    """The outcome of :meth:`Sandbox.run` (or of a :class:`SandboxProcess`).

    ``exit_code`` is set only when the program exited (``Cause.EXITED``);
    ``signal`` only when it was killed by a signal; ``limit`` names the
    :class:`Limits` field whose kernel signal killed it (``"cpu_seconds"``,
    ``"file_size"``), when the kernel says so. ``stdout``/``stderr`` hold at
    most ``max_output`` bytes each; past that the sandbox is killed and the
    stream is marked truncated. ``wall_time`` and ``cpu_time`` are seconds,
    ``max_rss`` bytes (the largest resident set of any process of the
    sandbox); they are None when the sandbox was killed from outside
    (output limit, a kill) before it could report them.
    """

    argv: tuple[str, ...]
    cause: Cause
    exit_code: int | None = None
    signal: _signal.Signals | int | None = None
    limit: str | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_time: float | None = None
    cpu_time: float | None = None
    max_rss: int | None = None
    error: LaunchError | None = None

    @property
    def ok(self) -> bool:
        """True only when the program ran and exited 0."""
        return self.cause is Cause.EXITED and self.exit_code == 0

    def describe(self) -> str:
        """One line: what happened to the run."""
        program = self.argv[0] if self.argv else "?"
        if self.cause is Cause.EXITED:
            return f"{program} exited with {self.exit_code}"
        if self.cause is Cause.SIGNALED:
            name = self.signal.name if isinstance(self.signal, _signal.Signals) else f"signal {self.signal}"
            return f"{program} was killed by {name}" + (f" ({self.limit} limit)" if self.limit else "")
        if self.cause is Cause.TIMEOUT:
            return f"{program} timed out" + (f" after {self.wall_time:.1f} s" if self.wall_time else "")
        if self.cause is Cause.OUTPUT_LIMIT:
            streams = [name for name, cut in (("stdout", self.stdout_truncated), ("stderr", self.stderr_truncated)) if cut]
            return f"{program}: {' and '.join(streams)} passed the output limit; the sandbox was killed"
        what = "launch failed" if self.cause is Cause.SETUP_FAILED else "could not execute"
        return f"{program}: {what}: {self.error}"

    def check(self) -> "Result":
        """Return self if ok, else raise :class:`SandboxError`."""
        if not self.ok:
            raise SandboxError(self)
        return self


class SandboxError(Exception):
    """A run that did not succeed (``run(..., check=True)``); ``.result`` has everything."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.describe())
        self.result = result


def signal_of(number: int) -> _signal.Signals | int:
    try:
        return _signal.Signals(number)
    except ValueError:
        return number
