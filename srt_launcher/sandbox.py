"""The description of a sandbox: what every front end produces and the engine launches.

``run``'s parser, the bubblewrap and socat front ends and the Python API each
turn their own grammar into a :class:`Sandbox`; :func:`srt_launcher.launch.launch`
makes it real. Nothing below this description knows which grammar made it, so
two equivalent command lines compare equal here (tests/unit/test_equivalence.py).

Plain ``__slots__`` data and validation only: this module is on the launch
path and imports nothing but :mod:`srt_launcher.errors`.
"""

from srt_launcher.errors import LauncherError

# Mount operation kinds, in the words of the command lines.
BIND = "bind"  # read-write, nosuid, nodev
RO_BIND = "ro-bind"  # read-only, nosuid, nodev, every submount too
DEV_BIND = "dev-bind"  # read-write, nosuid, devices usable
REMOUNT_RO = "remount-ro"  # the mount at dest, read-only, not recursive
TMPFS = "tmpfs"
PROC = "proc"
HOST_PROC = "host-proc"
DEV = "dev"
MQUEUE = "mqueue"
DIR = "dir"
FILE = "file"  # a new file with data
BIND_DATA = "bind-data"  # a file with data, bound read-write
RO_BIND_DATA = "ro-bind-data"  # the same, read-only
SYMLINK = "symlink"
CHMOD = "chmod"
OVERLAY = "overlay"  # writes go to a host directory (upper, work)
TMP_OVERLAY = "tmp-overlay"  # writes go to an invisible tmpfs
RO_OVERLAY = "ro-overlay"

BIND_KINDS = frozenset((BIND, RO_BIND, DEV_BIND))
DATA_KINDS = frozenset((FILE, BIND_DATA, RO_BIND_DATA))
OVERLAY_KINDS = frozenset((OVERLAY, TMP_OVERLAY, RO_OVERLAY))
KINDS = BIND_KINDS | DATA_KINDS | OVERLAY_KINDS | frozenset(
    (REMOUNT_RO, TMPFS, PROC, HOST_PROC, DEV, MQUEUE, DIR, SYMLINK, CHMOD)
)


class Mount:
    """One filesystem operation; a sandbox applies them in order.

    ``source``: a host path (binds, overlay upper dir), or the target of a
    symlink. ``fd``: a descriptor of the caller's to bind (``--bind-fd``) or
    to read the data from (``--file``, ``--bind-data``), when ``data`` is
    not given as bytes. ``optional``: a missing source skips the operation.
    ``perms``/``size``: mode and byte size where the kind has them.
    ``lower``: an overlay's lower directories, top first; ``work``: its work dir.
    """

    __slots__ = ("kind", "dest", "source", "fd", "data", "optional", "perms", "size", "lower", "work")

    def __init__(
        self,
        kind: str,
        dest: str,
        source: str | None = None,
        *,
        fd: int | None = None,
        data: bytes | None = None,
        optional: bool = False,
        perms: int | None = None,
        size: int | None = None,
        lower: tuple[str, ...] = (),
        work: str | None = None,
    ) -> None:
        self.kind = kind
        self.dest = dest
        self.source = source
        self.fd = fd
        self.data = data
        self.optional = optional
        self.perms = perms
        self.size = size
        self.lower = lower
        self.work = work

    def _key(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mount) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__[2:] if getattr(self, name))
        return f"Mount({self.kind!r}, {self.dest!r}{', ' + fields if fields else ''})"


# Environment operations, applied in order to the caller's environment.
SETENV = "set"
UNSETENV = "unset"
CLEARENV = "clear"

# Resource limits by name (SPEC §6), and which take a byte size.
RLIMITS = {
    "as": 9,
    "core": 4,
    "cpu": 0,
    "data": 2,
    "fsize": 1,
    "locks": 10,
    "memlock": 8,
    "msgqueue": 12,
    "nice": 13,
    "nofile": 7,
    "nproc": 6,
    "rss": 5,
    "rtprio": 14,
    "rttime": 15,
    "sigpending": 11,
    "stack": 3,
}
RLIMIT_NAMES = {number: name for name, number in RLIMITS.items()}
BYTE_RLIMITS = frozenset(("as", "core", "data", "fsize", "memlock", "msgqueue", "rss", "stack"))
RLIM_INFINITY = -1  # as the resource module spells it
RLIM_MAX = (1 << 63) - 1  # the largest finite value setrlimit takes from Python

# Built-in seccomp filters (bpf/): a program is one of these names, or the
# bytes of a caller-compiled classic BPF program.
SECCOMP_UNIX_BLOCK = "unix-block"
SECCOMP_HARDEN = "harden"

# How a user namespace is used: never; always; when the plain unshare is
# refused (EPERM: no CAP_SYS_ADMIN), as `run` does; if the kernel allows.
USERNS_NO = "no"
USERNS_YES = "yes"
USERNS_IF_NEEDED = "if-needed"
USERNS_TRY = "try"

# Which process the status records call the child: the command's process
# once it exists (`run`, the API), or PID 1 as soon as it is forked
# (bubblewrap's --info-fd/--json-status-fd, which callers read before the
# sandbox is set up: --userns-block-fd waits on them).
CHILD_IS_WORKER = "worker"
CHILD_IS_PID1 = "pid1"


class Sandbox:
    """Everything a launch needs, in plain data.

    Namespaces: ``user`` (one of the USERNS_* values), ``pid``, ``net``,
    ``ipc``, ``uts``, ``cgroup`` (True, False or "try"); the mount namespace
    is always new. ``userns_fd``/``userns2_fd``/``pidns_fd``: namespaces of
    the caller's to join (bubblewrap's --userns, --userns2, --pidns).
    Identity: ``uid``/``gid`` inside (None: the caller's).

    Process: ``command`` (argv; ``argv0`` replaces argv[0] at exec),
    ``reaper`` (a PID 1 that reaps and forwards; False: the set-up process
    execs the command itself), ``new_session``, ``die_with_parent``,
    ``forward_signals``, ``caps`` (capabilities the command keeps; empty:
    none), ``seccomp`` (programs installed before exec, in order),
    ``rlimits`` ({RLIMIT_*: (soft, hard)}), ``timeout`` (seconds),
    ``inherit_fds`` (the caller's descriptors above 2 reach the command, as
    with bubblewrap; else every one is closed), ``linger`` (bubblewrap's
    PID 1: the command's exit is the launch's at once, while PID 1 stays,
    reaping, as long as a process it adopted lives; else the sandbox ends
    with the command).

    Status: ``info_fd``/``json_status_fd`` get bubblewrap's records (and
    SPEC §6's end record), naming ``status_child`` as the child;
    ``sync_fd``, ``block_fd``, ``userns_block_fd``, ``lock_files`` behave
    as bubblewrap's options of those names.

    Deferred command: with ``command_fd``, ``command`` and ``timeout`` are
    read from that descriptor by PID 1 once the root is built, just before
    the worker is forked (:func:`encode_command`). The Python API's launcher
    process prepares sandboxes ahead this way (srt_launcher/api/launcher.py),
    giving ``source_ids``: what each bind source (as given) was, (device,
    inode), when it decided to prepare; a source that resolves to anything
    else fails the launch.
    """

    __slots__ = (
        "command",
        "argv0",
        "user",
        "pid",
        "net",
        "ipc",
        "uts",
        "cgroup",
        "userns_fd",
        "userns2_fd",
        "pidns_fd",
        "disable_userns",
        "assert_userns_disabled",
        "uid",
        "gid",
        "hostname",
        "mounts",
        "env",
        "chdir",
        "reaper",
        "new_session",
        "die_with_parent",
        "forward_signals",
        "caps",
        "seccomp",
        "rlimits",
        "timeout",
        "relays",
        "info_fd",
        "json_status_fd",
        "status_child",
        "sync_fd",
        "block_fd",
        "userns_block_fd",
        "lock_files",
        "inherit_fds",
        "command_fd",
        "linger",
        "source_ids",
    )

    def __init__(self) -> None:
        self.command: list[str] = []
        self.argv0: str | None = None
        self.user = USERNS_IF_NEEDED
        self.pid = True
        self.net = False
        self.ipc = False
        self.uts = False
        self.cgroup: bool | str = False
        self.userns_fd: int | None = None
        self.userns2_fd: int | None = None
        self.pidns_fd: int | None = None
        self.disable_userns = False
        self.assert_userns_disabled = False
        self.uid: int | None = None
        self.gid: int | None = None
        self.hostname: str | None = None
        self.mounts: list[Mount] = []
        self.env: list[tuple] = []
        self.chdir: str | None = None
        self.reaper = True
        self.new_session = True
        self.die_with_parent = True
        self.forward_signals = True
        self.caps: frozenset[int] = frozenset()
        self.seccomp: list[str | bytes] = []
        self.rlimits: dict[int, tuple[int, int]] = {}
        self.timeout: float | None = None
        self.relays: list[tuple[int, str]] = []
        self.info_fd: int | None = None
        self.json_status_fd: int | None = None
        self.status_child = CHILD_IS_WORKER
        self.sync_fd: int | None = None
        self.block_fd: int | None = None
        self.userns_block_fd: int | None = None
        self.lock_files: list[str] = []
        self.inherit_fds = False
        self.command_fd: int | None = None
        self.linger = False
        self.source_ids: dict[str, tuple[int, int]] | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sandbox) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__
        )

    def __repr__(self) -> str:
        default = Sandbox()
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self.__slots__ if getattr(self, name) != getattr(default, name)
        )
        return f"Sandbox({fields})"

    def fds(self) -> list[int]:
        """The caller's descriptors this description names (kept open until used)."""
        named = [
            self.userns_fd,
            self.userns2_fd,
            self.pidns_fd,
            self.info_fd,
            self.json_status_fd,
            self.sync_fd,
            self.block_fd,
            self.userns_block_fd,
            self.command_fd,
        ]
        named += [mount.fd for mount in self.mounts]
        return [fd for fd in named if fd is not None]


def check(sandbox: Sandbox) -> None:
    """Refuse a description the engine cannot launch as asked (LauncherError, exit 2).

    Front ends check their own grammar first and word their own messages;
    this is the engine's last line, so that no description, whoever made it,
    is launched with silently less isolation than it says.
    """
    if not sandbox.command and sandbox.command_fd is None:
        raise LauncherError.usage_error("no command to run")
    if sandbox.relays and not sandbox.net:
        raise LauncherError.usage_error("relays need a new network namespace")
    if sandbox.hostname is not None and not sandbox.uts:
        raise LauncherError.usage_error("a hostname needs a new UTS namespace")
    if sandbox.timeout is not None and not (sandbox.pid and sandbox.reaper):
        raise LauncherError.usage_error("a timeout needs a PID namespace with a reaper")
    for mount in sandbox.mounts:
        if mount.kind not in KINDS:
            raise LauncherError.usage_error("unknown mount kind", mount.kind)
        if not mount.dest.startswith("/"):
            raise LauncherError.usage_error(f"{mount.kind}: path must be absolute", mount.dest)


def encode_command(command: list[str], timeout: float | None) -> bytes:
    """What a ``command_fd`` carries: ``TIMEOUT\\0ARG0\\0ARG1...`` (TIMEOUT
    empty for none). NUL cannot occur in an argument exec accepts."""
    fields = [b"" if timeout is None else repr(float(timeout)).encode()]
    fields += [arg.encode("utf-8", "surrogateescape") for arg in command]
    return b"\0".join(fields)


def decode_command(data: bytes) -> tuple[list[str], float | None] | None:
    """The (command, timeout) of :func:`encode_command`, or None if ``data`` is not one."""
    fields = data.split(b"\0")
    if len(fields) < 2:
        return None
    timeout = None
    if fields[0]:
        try:
            timeout = float(fields[0])
        except ValueError:
            return None
        if not 0 < timeout < float("inf"):
            return None
    return [field.decode("utf-8", "surrogateescape") for field in fields[1:]], timeout
