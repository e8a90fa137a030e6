"""The one exception type of the launcher, and the one place it becomes a message.

Every expected failure is raised as :class:`LauncherError` carrying the step
that failed, the path or value involved, the reason and the exit status of
SPEC §2.7. :func:`report` turns it into the single stderr line
``srt-launcher: <step>: <value>: <reason>``; nothing else formats errors.
"""

import os

USAGE = 2
SETUP_FAILED = 125
EXEC_NOT_EXECUTABLE = 126
EXEC_NOT_FOUND = 127

RUN_USAGE = "usage: srt-launcher run [OPTIONS] -- COMMAND [ARGS...]  (see srt-launcher run --help)"


class LauncherError(Exception):
    """An expected failure: what step, on what path or value, why, and the exit status."""

    def __init__(
        self,
        step: str,
        value: str | None = None,
        reason: str | None = None,
        exit_code: int = SETUP_FAILED,
        usage: str | None = None,
    ) -> None:
        super().__init__(step, value, reason)
        self.step = step
        self.value = value
        self.reason = reason
        self.exit_code = exit_code
        self.usage = usage

    @classmethod
    def from_os(cls, step: str, value: str | None, err: OSError, exit_code: int = SETUP_FAILED) -> "LauncherError":
        reason = os.strerror(err.errno) if err.errno else str(err)
        return cls(step, value, reason, exit_code)

    @classmethod
    def usage_error(cls, what: str, value: str | None = None, usage: str = RUN_USAGE) -> "LauncherError":
        return cls(what, value, None, USAGE, usage)


def message(err: LauncherError) -> str:
    parts = [err.step]
    if err.value is not None:
        parts.append(err.value)
    if err.reason:
        parts.append(err.reason)
    text = "srt-launcher: " + ": ".join(printable(part) for part in parts) + "\n"
    if err.usage:
        text += err.usage + "\n"
    return text


def printable(value: str) -> str:
    """Hostile values (a repository URL, a path) must not forge extra stderr lines."""
    return value.encode("unicode_escape", "backslashreplace").decode("ascii") if not value.isprintable() else value


def report(err: LauncherError) -> int:
    """Write the message with one write(2): forked children share stderr and must not interleave."""
    try:
        os.write(2, message(err).encode("utf-8", "surrogateescape"))
    except OSError:
        pass
    return err.exit_code
