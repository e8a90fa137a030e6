"""Resource limits of a sandboxed program, under readable names (SPEC §6, §9).

``Limits(cpu_seconds=2, address_space="512M", processes=32)``: each field is
one rlimit of ``run --rlimit``, set in the workload just before exec (the
launcher's own processes are not limited). A value is

* an ``int`` (soft = hard), bytes for the byte-valued limits;
* a string as ``run --rlimit`` takes it: ``"512M"`` (K, M, G, T ×1024 for
  byte-valued limits), ``"1:2"`` (SOFT:HARD), ``"unlimited"``;
* a ``(soft, hard)`` pair of those;
* ``None`` (the default): not set, the launcher's own limit is inherited.

What the kernel does at each limit: ``cpu_seconds`` SIGXCPU at the soft
limit, SIGKILL at the hard one (``Result.limit == "cpu_seconds"``);
``file_size`` SIGXFSZ, or EFBIG for a program that ignores it
(``Result.limit == "file_size"`` when it killed); ``address_space`` and
``data`` make allocations fail (the program decides what happens:
``MemoryError``, a crash, an error exit); ``processes`` makes fork fail with
EAGAIN, counted per user across the whole host — and not enforced at all
for uid 0 of the host (the kernel exempts root); ``open_files`` makes open
fail with EMFILE.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from srt_launcher import sandbox
from srt_launcher.commands import values

UNLIMITED = "unlimited"

# Field name → the rlimit's name in SPEC §6 (``run --rlimit NAME``).
RLIMIT_OF_FIELD = {
    "address_space": "as",
    "core": "core",
    "cpu_seconds": "cpu",
    "data": "data",
    "file_size": "fsize",
    "locks": "locks",
    "memlock": "memlock",
    "msgqueue": "msgqueue",
    "nice": "nice",
    "open_files": "nofile",
    "processes": "nproc",
    "rss": "rss",
    "rtprio": "rtprio",
    "rttime": "rttime",
    "sigpending": "sigpending",
    "stack": "stack",
}
FIELD_OF_RLIMIT = {rlimit: field for field, rlimit in RLIMIT_OF_FIELD.items()}

Value = "int | str | tuple[int | str, int | str] | None"


@dataclass(frozen=True)
class Limits:
    """The rlimits of the workload; see the module documentation for the values.

    After construction every field set holds a ``(soft, hard)`` pair of
    ints, ``-1`` standing for unlimited.
    """

    address_space: Value = None  # RLIMIT_AS, bytes
    core: Value = None  # RLIMIT_CORE, bytes (0: no core files)
    cpu_seconds: Value = None  # RLIMIT_CPU, seconds of CPU time
    data: Value = None  # RLIMIT_DATA, bytes
    file_size: Value = None  # RLIMIT_FSIZE, bytes
    locks: Value = None  # RLIMIT_LOCKS
    memlock: Value = None  # RLIMIT_MEMLOCK, bytes
    msgqueue: Value = None  # RLIMIT_MSGQUEUE, bytes
    nice: Value = None  # RLIMIT_NICE
    open_files: Value = None  # RLIMIT_NOFILE
    processes: Value = None  # RLIMIT_NPROC (threads count; per user, host-wide)
    rss: Value = None  # RLIMIT_RSS (ignored by Linux)
    rtprio: Value = None  # RLIMIT_RTPRIO
    rttime: Value = None  # RLIMIT_RTTIME, microseconds
    sigpending: Value = None  # RLIMIT_SIGPENDING
    stack: Value = None  # RLIMIT_STACK, bytes

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                object.__setattr__(self, item.name, _pair(item.name, value))

    def to_engine(self) -> dict[int, tuple[int, int]]:
        """{RLIMIT_*: (soft, hard)} for the engine's description."""
        limits = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                limits[sandbox.RLIMITS[RLIMIT_OF_FIELD[item.name]]] = value
        return limits


def _pair(field: str, value: object) -> tuple[int, int]:
    name = RLIMIT_OF_FIELD[field]
    if isinstance(value, str):
        parsed = values.rlimit(name, value)
        if parsed is None:
            raise ValueError(f"Limits({field}=...): {value!r} is not N, SOFT:HARD or 'unlimited'{_suffixes(name)}")
        soft, hard = parsed
    elif isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"Limits({field}=...): expected (soft, hard), got {value!r}")
        soft, hard = (_one(field, name, item) for item in value)
    else:
        soft = hard = _one(field, name, value)
    if hard != sandbox.RLIM_INFINITY and (soft == sandbox.RLIM_INFINITY or soft > hard):
        raise ValueError(f"Limits({field}=...): the soft limit is above the hard one: {value!r}")
    return soft, hard


def _one(field: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"Limits({field}=...): expected an int, a string or a (soft, hard) pair, got {value!r}")
    if isinstance(value, str):
        parsed = values.rlimit(name, value)
        if parsed is None or parsed[0] != parsed[1]:
            raise ValueError(f"Limits({field}=...): {value!r} is not N or 'unlimited'{_suffixes(name)}")
        return parsed[0]
    if not 0 <= value <= sandbox.RLIM_MAX:
        raise ValueError(f"Limits({field}=...): {value} is out of range (0 to 2**63-1)")
    return value


def _suffixes(name: str) -> str:
    return " (K, M, G, T suffixes allowed)" if name in sandbox.BYTE_RLIMITS else ""
