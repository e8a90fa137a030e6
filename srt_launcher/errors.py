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

# Steps of a `run` launch that `srt-launcher check` probes for real (SPEC
# §10): a launch that fails at one of them ends its one-line error with
# CHECK_HINT, since check names the host's cause and its fix. The names are
# the `step` of the LauncherError each launch step raises. Bind sources and
# relay sockets are left out: their message already names the missing path.
CHECK_HINT = "(srt-launcher check explains)"
PROBED_STEPS = frozenset(
    {
        "unshare",  # any namespace: user, net, pid (stub), mount (PID 1)
        "user namespace",  # setgroups, uid_map, gid_map
        "bring up loopback",
        "make / a slave",
        "staging tmpfs",
        "staging",
        "pivot_root",
        "detach old root",
        "switch root",
        "proc",  # the procfs mount of --proc
        "proc: cover",  # its read-only covers
        "seccomp",  # loading and installing the filter
    }
)

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
        # The kernel's errno when the failure came from a system call: the
        # host probes (srt_launcher.check) diagnose from it.
        self.errno: int | None = None

    @classmethod
    def from_os(cls, step: str, value: str | None, err: OSError, exit_code: int = SETUP_FAILED) -> "LauncherError":
        reason = os.strerror(err.errno) if err.errno else str(err)
        error = cls(step, value, reason, exit_code)
        error.errno = err.errno
        return error

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
