"""The one exception type of the launcher, and the one place it becomes a message.

Every expected failure is raised as :class:`LauncherError` carrying the step
that failed, the path or value involved, the reason and the exit status of
SPEC §2.7 (plus the errno and a source path, so that a front end such as the
bubblewrap one can word it its own way). :func:`message` turns it into the
single stderr line ``srt-launcher: <step>: <value>: <reason>``.

Errors of PID 1 and the worker travel to the stub as data (:meth:`encode`),
and only the stub formats them: after pivot_root nothing may need an import
(a codec, a module), and the caller's front end decides the wording.
"""

import posix

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

_FIELD_SEPARATOR = b"\0"


class LauncherError(Exception):
    """An expected failure: what step, on what path or value, why, and the exit status."""

    def __init__(
        self,
        step: str,
        value: str | None = None,
        reason: str | None = None,
        exit_code: int = SETUP_FAILED,
        usage: str | None = None,
        errno: int | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(step, value, reason)
        self.step = step
        self.value = value
        self.reason = reason
        self.exit_code = exit_code
        self.usage = usage
        self.errno = errno
        self.source = source

    @classmethod
    def from_os(
        cls, step: str, value: str | None, err: OSError, exit_code: int = SETUP_FAILED, source: str | None = None
    ) -> "LauncherError":
        reason = posix.strerror(err.errno) if err.errno else str(err)
        return cls(step, value, reason, exit_code, errno=err.errno, source=source)

    @classmethod
    def usage_error(cls, what: str, value: str | None = None, usage: str = RUN_USAGE) -> "LauncherError":
        return cls(what, value, None, USAGE, usage)

    def encode(self) -> bytes:
        """The error as bytes, for the report channel (no formatting, no import)."""
        fields = (self.step, self.value, self.reason, self.source)
        encoded = [b"" if field is None else b"=" + field.encode("utf-8", "surrogateescape") for field in fields]
        encoded += [str(self.exit_code).encode(), b"" if self.errno is None else str(self.errno).encode()]
        return _FIELD_SEPARATOR.join(part.replace(_FIELD_SEPARATOR, b"?") for part in encoded)

    @classmethod
    def decode(cls, data: bytes) -> "LauncherError":
        parts = data.split(_FIELD_SEPARATOR)
        if len(parts) != 6:
            return cls("internal error", None, "malformed error report")
        step, value, reason, source = (
            part[1:].decode("utf-8", "surrogateescape") if part else None for part in parts[:4]
        )
        return cls(
            step or "internal error",
            value,
            reason,
            int(parts[4]) if parts[4].isdigit() else SETUP_FAILED,
            errno=int(parts[5]) if parts[5].isdigit() else None,
            source=source,
        )


def message(err: LauncherError, program: str = "srt-launcher", hint: bool = False) -> str:
    """The one line of ``err``; with ``hint``, a step `check` probes points there."""
    parts = [err.step]
    if err.value is not None:
        parts.append(err.value)
    if err.reason:
        parts.append(err.reason)
    text = f"{program}: " + ": ".join(printable(part) for part in parts)
    if hint and err.step in PROBED_STEPS:
        text += " " + CHECK_HINT
    text += "\n"
    if err.usage:
        text += err.usage + "\n"
    return text


_LONGEST_SHOWN = 200


def printable(value: str) -> str:
    """Hostile values (a repository URL, a path) must not forge extra stderr
    lines, nor bury the message under megabytes of themselves."""
    if len(value) > _LONGEST_SHOWN:
        value = f"{value[:_LONGEST_SHOWN // 2]}...({len(value)} characters)"
    return value.encode("unicode_escape", "backslashreplace").decode("ascii") if not value.isprintable() else value


def write_stderr(text: str) -> None:
    """One write(2): forked children share stderr and must not interleave."""
    try:
        posix.write(2, text.encode("utf-8", "surrogateescape"))
    except OSError:
        pass


def report(err: LauncherError, hint: bool = False) -> int:
    write_stderr(message(err, hint=hint))
    return err.exit_code
