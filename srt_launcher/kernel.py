"""The raw syscalls Python 3.11 lacks, through ctypes, and nothing else.

Each wrapper raises ``OSError`` with the kernel's errno; callers turn that into
a :class:`~srt_launcher.errors.LauncherError` naming the step and the path.
prctl options go through python-prctl (see :mod:`srt_launcher.privileges`).

This is ctypes' C core, ``_ctypes``, used directly: ``import ctypes`` builds
some sixty classes this module never needs, on every launch (SPEC §4;
docs/performance.md). The handful of C types below are declared exactly as
``ctypes`` declares them.
"""

import posix
import sys

import _ctypes

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOSYMFOLLOW = 0x100
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000

MNT_DETACH = 0x2

PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# Syscalls glibc has no wrapper for (pivot_root, close_range, seccomp,
# mount_setattr) or whose wrapper needs libcap's structs (capset). Numbers
# differ per architecture.
_SYSCALLS = {
    "x86_64": {
        "pivot_root": 155,
        "capget": 125,
        "capset": 126,
        "seccomp": 317,
        "move_mount": 429,
        "close_range": 436,
        "mount_setattr": 442,
    },
    "aarch64": {
        "pivot_root": 41,
        "capget": 90,
        "capset": 91,
        "seccomp": 277,
        "move_mount": 429,
        "close_range": 436,
        "mount_setattr": 442,
    },
}

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_T_EMPTY_PATH = 0x00000040
# mount_setattr(2) attributes, and the MS_* flags they stand for.
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
_MOUNT_ATTR_OF_MS = {
    MS_RDONLY: MOUNT_ATTR_RDONLY,
    MS_NOSUID: MOUNT_ATTR_NOSUID,
    MS_NODEV: MOUNT_ATTR_NODEV,
    MS_NOEXEC: MOUNT_ATTR_NOEXEC,
}


class _Int(_ctypes._SimpleCData):
    _type_ = "i"


class _UInt(_ctypes._SimpleCData):
    _type_ = "I"


class _Long(_ctypes._SimpleCData):
    _type_ = "l"


class _ULong(_ctypes._SimpleCData):
    _type_ = "L"


class _Address(_ctypes._SimpleCData):
    _type_ = "P"  # void *


class _CString(_ctypes._SimpleCData):
    _type_ = "z"  # char *: bytes, or None for NULL


class _Program:
    """The running program and its libraries (dlopen(NULL)): where libc's symbols are."""

    _handle = _ctypes.dlopen(None, posix.RTLD_LOCAL)


class _Function(_ctypes.CFuncPtr):
    # C calling convention, and errno saved right after the call (get_errno()).
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Int


def _libc_function(name: str, restype: type, argtypes: tuple[type, ...] | None = None) -> _ctypes.CFuncPtr:
    function = _Function((name, _Program))
    function.restype = restype
    if argtypes is not None:
        function.argtypes = argtypes
    return function


# syscall(2) is variadic: its arguments are converted one by one (bytes and
# None as pointers, ints as int, or an explicit C type) and it returns a long.
_syscall = _libc_function("syscall", _Long)
_mount = _libc_function("mount", _Int, (_CString, _CString, _CString, _ULong, _CString))
_umount2 = _libc_function("umount2", _Int, (_CString, _Int))
_unshare = _libc_function("unshare", _Int, (_Int,))
_setrlimit = _libc_function("setrlimit", _Int, (_Int, _CString))
_getrusage = _libc_function("getrusage", _Int, (_Int, _Address))
_wait4 = _libc_function("wait4", _Int, (_Int, _Address, _Int, _Address))
_setns = _libc_function("setns", _Int, (_Int, _Int))
_socketpair = _libc_function("socketpair", _Int, (_Int, _Int, _Int, _Address))
_prctl = _libc_function("prctl", _Int, (_Int, _ULong, _ULong, _ULong, _ULong))

MACHINE = posix.uname().machine
# os.fsencode's encoding: a str path as the kernel sees it.
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
MACHINE_BYTEORDER = "little" if MACHINE in ("x86_64", "aarch64") else "big"


def _syscall_number(name: str) -> int:
    try:
        return _SYSCALLS[MACHINE][name]
    except KeyError:
        raise OSError(38, f"{name} is not supported on {MACHINE}") from None


def _check(result: int, *what: str) -> int:
    if result < 0:
        errno = _ctypes.get_errno()
        raise OSError(errno, posix.strerror(errno), *what)
    return result


def _path(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return value.encode(_FS_ENCODING, _FS_ERRORS)


def unshare(flags: int) -> None:
    _check(_unshare(flags))


# struct rusage (64-bit): ru_utime and ru_stime (struct timeval: two longs
# each), then ru_maxrss and thirteen more longs. The resource module would
# do the same, but it is a shared object to load on the launch path.
_RUSAGE_SIZE = 144
RUSAGE_CHILDREN = -1
_RLIM_INFINITY = (1 << 64) - 1
_WORD = 8


def _long(data: bytes, index: int) -> int:
    return int.from_bytes(data[index * _WORD : (index + 1) * _WORD], MACHINE_BYTEORDER, signed=True)


class Usage:
    """What getrusage/wait4 report that the launcher uses: CPU seconds and peak RSS (KiB)."""

    __slots__ = ("user", "system", "max_rss_kb")

    def __init__(self, data: bytes) -> None:
        self.user = _long(data, 0) + _long(data, 1) / 1e6
        self.system = _long(data, 2) + _long(data, 3) / 1e6
        self.max_rss_kb = _long(data, 4)


def setrlimit(resource: int, soft: int, hard: int) -> None:
    """setrlimit(2); -1 stands for RLIM_INFINITY."""
    limits = b"".join((_RLIM_INFINITY if value < 0 else value).to_bytes(_WORD, MACHINE_BYTEORDER) for value in (soft, hard))
    _check(_setrlimit(resource, limits))


class _Char(_ctypes._SimpleCData):
    _type_ = "c"


_RusageBuffer = _Char * _RUSAGE_SIZE
_StatusBuffer = _Int * 1


def getrusage_children() -> Usage:
    buffer = _RusageBuffer()
    _check(_getrusage(RUSAGE_CHILDREN, _ctypes.addressof(buffer)))
    return Usage(buffer.raw)


def wait4(pid: int, options: int) -> tuple[int, int, Usage | None]:
    """wait4(2): (pid, wait status, the child's usage); (0, 0, None) when WNOHANG finds none."""
    status, buffer = _StatusBuffer(), _RusageBuffer()
    child = _check(_wait4(pid, _ctypes.addressof(status), options, _ctypes.addressof(buffer)))
    if child == 0:
        return 0, 0, None
    return child, status[0], Usage(buffer.raw)


def setns(fd: int, nstype: int) -> None:
    _check(_setns(fd, nstype))


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_mount(_path(source), _path(target), _path(fstype), flags, _path(data)), target)


def umount2(target: str, flags: int) -> None:
    _check(_umount2(_path(target), flags), target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(_syscall_number("pivot_root"), _path(new_root), _path(put_old)), new_root)


def move_mount_onto_fd(source: str, target_fd: int) -> None:
    """Move the mount at path ``source`` onto the object ``target_fd`` refers to.

    move_mount(2), Linux 5.2: the target is the very inode that fd pins, with
    no path lookup between the check and the mount (ENOSYS before that).
    """
    number = _syscall_number("move_mount")
    _check(_syscall(number, AT_FDCWD, _path(source), target_fd, b"", MOVE_MOUNT_T_EMPTY_PATH), source)


def _mount_attr(attr_set: int) -> bytes:
    """struct mount_attr: attr_set, attr_clr, propagation, userns_fd (__u64 each).

    The kernel's structs are built as bytes, here and below, rather than
    declared as ctypes Structures: the first Structure a process declares
    costs more than the syscalls it serves, on every launch.
    """
    return b"".join(value.to_bytes(8, MACHINE_BYTEORDER) for value in (attr_set, 0, 0, 0))


def mount_setattr_add_recursive(target: str, ms_flags: int) -> None:
    """Add ``ms_flags`` (MS_RDONLY/NOSUID/NODEV/NOEXEC) to the mount at
    ``target`` and to every mount below it, keeping the flags each already has.

    mount_setattr(2), Linux 5.12: ENOSYS before that.
    """
    attr_set = 0
    for ms_flag, attr in _MOUNT_ATTR_OF_MS.items():
        if ms_flags & ms_flag:
            attr_set |= attr
    if ms_flags & ~(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC):
        raise OSError(22, "only ro, nosuid, nodev and noexec can be added this way", target)
    attr = _mount_attr(attr_set)
    number = _syscall_number("mount_setattr")
    _check(_syscall(number, AT_FDCWD, _path(target), AT_RECURSIVE, attr, len(attr)), target)


def has_mount_setattr() -> bool:
    """Whether mount_setattr(2) can be called here: an empty call on no fd
    fails with EBADF where it exists, ENOSYS (old kernel) or EPERM (a
    container policy that does not know it) where it cannot be used."""
    attr = _mount_attr(0)
    number = _syscall_number("mount_setattr")
    if _syscall(number, -1, b"", AT_EMPTY_PATH, attr, len(attr)) >= 0:
        return True
    return _ctypes.get_errno() not in (38, 1)  # ENOSYS, EPERM


_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# struct __user_cap_header_struct: version (__u32), pid (int) 0 for this thread.
_CAP_HEADER = _LINUX_CAPABILITY_VERSION_3.to_bytes(4, MACHINE_BYTEORDER) + bytes(4)
# struct __user_cap_data_struct[2]: effective, permitted, inheritable (__u32
# each), the low 32 capabilities' words, then the high ones'.
_CAP_DATA_SIZE = 2 * 3 * 4


def _u32(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, MACHINE_BYTEORDER)


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (64-bit masks, the v3 ABI's two words each)."""
    data = b"".join(_u32(mask >> shift) for shift in (0, 32) for mask in (effective, permitted, inheritable))
    _check(_syscall(_syscall_number("capset"), _CAP_HEADER, data))


def capget_effective() -> int:
    """This thread's effective capability set, as a 64-bit mask."""
    data = _RusageBuffer()  # any buffer of at least _CAP_DATA_SIZE bytes
    # The header goes in a buffer of its own: capget writes the version it
    # prefers back into it when it does not know the one given.
    header = _RusageBuffer.from_buffer_copy(_CAP_HEADER.ljust(_RUSAGE_SIZE, b"\0"))
    _check(_syscall(_syscall_number("capget"), header, data))  # arrays: passed as pointers
    raw = data.raw[:_CAP_DATA_SIZE]
    return int.from_bytes(raw[0:4], MACHINE_BYTEORDER) | (int.from_bytes(raw[12:16], MACHINE_BYTEORDER) << 32)


def capset_clear() -> None:
    """Empty the effective, permitted and inheritable sets of this thread."""
    capset(0, 0, 0)


def raise_ambient_capability(cap: int) -> None:
    _check(_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0))


def clear_ambient_capabilities() -> None:
    # python-prctl 1.8 has no PR_CAP_AMBIENT.
    _check(_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))


def prctl_capbset_drop(cap: int) -> None:
    # For capabilities newer than python-prctl's headers, which it refuses.
    _check(_prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))


AF_UNIX = 1
SOCK_SEQPACKET = 5
SOCK_CLOEXEC = posix.O_CLOEXEC


def socketpair_seqpacket() -> tuple[int, int]:
    """socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC): two connected
    descriptors, each write() on one a single record read() gets whole on
    the other. As bare descriptors: the ``_socket`` module costs a launch
    more than the call (launch/report.py loads it when a launch needs its
    records' senders)."""
    fds = _RusageBuffer()  # int[2], in a buffer large enough
    _check(_socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, _ctypes.addressof(fds)))
    raw = fds.raw
    return int.from_bytes(raw[0:4], MACHINE_BYTEORDER, signed=True), int.from_bytes(raw[4:8], MACHINE_BYTEORDER, signed=True)


def close_fds_except(keep: list[int]) -> None:
    """Close every descriptor above 2 but those in ``keep``."""
    start = 3
    for fd in sorted(set(fd for fd in keep if fd >= 3)):
        if fd > start:
            posix.closerange(start, fd)
        start = fd + 1
    close_fds_from(start)


def read_to_eof(fd: int) -> bytes:
    """Everything ``fd`` gives until end of file (the fd stays open); OSError as read(2) fails."""
    chunks = []
    while chunk := posix.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_file(path: str, dir_fd: int | None = None) -> bytes:
    """The whole file at ``path`` (relative to ``dir_fd`` if given), read with posix alone."""
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return read_to_eof(fd)
    finally:
        posix.close(fd)


def keep_above(fd: int, floor: int) -> int:
    """``fd``, renumbered at or above ``floor`` if below it (close-on-exec)."""
    if fd >= floor:
        return fd
    import fcntl  # only when the caller named descriptors: not on run's usual path

    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    finally:
        posix.close(fd)


def close_fds_from(first: int) -> None:
    """close_range(first, ~0U, 0); posix.closerange is the fallback for kernels before 5.9."""
    try:
        _check(_syscall(_syscall_number("close_range"), _UInt(first), _UInt(0xFFFFFFFF), 0))
    except OSError:
        posix.closerange(first, posix.sysconf("SC_OPEN_MAX"))


SECCOMP_SET_MODE_FILTER = 1


class SeccompProgram:
    """A classic-BPF seccomp program (struct sock_filter[] as raw bytes, 8
    bytes each) in the form seccomp(2) takes.

    Built before fork, so that the process installing it only makes the
    call: building the struct in a freshly forked worker would cost more in
    copy-on-write faults and first-use work than the call itself, and the
    tty filter is installed on every launch.
    """

    __slots__ = ("_filter", "_fprog")

    def __init__(self, program: bytes) -> None:
        if not program or len(program) % 8 or len(program) // 8 > 0xFFFF:
            raise OSError(22, "a seccomp program is 1 to 65535 sock_filter entries of 8 bytes")
        # struct sock_fprog: len (unsigned short), then, aligned as a pointer,
        # filter: the address of the program's own bytes (the kernel copies
        # them in), which self._filter keeps alive.
        self._filter = _CString(bytes(program))
        address = _Address.from_address(_ctypes.addressof(self._filter)).value
        self._fprog = (len(program) // 8).to_bytes(2, MACHINE_BYTEORDER).ljust(_WORD, b"\0") + address.to_bytes(_WORD, MACHINE_BYTEORDER)


def seccomp_set_filter(program: SeccompProgram) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, 0, program): stacked on any filter already installed."""
    _check(_syscall(_syscall_number("seccomp"), SECCOMP_SET_MODE_FILTER, 0, program._fprog))
