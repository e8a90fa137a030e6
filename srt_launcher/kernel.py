"""The raw syscalls Python 3.11 lacks, through ctypes, and nothing else.

Each wrapper raises ``OSError`` with the kernel's errno; callers turn that into
a :class:`~srt_launcher.errors.LauncherError` naming the step and the path.
prctl options go through python-prctl (see :mod:`srt_launcher.privileges`).
"""

import ctypes
import os

CLONE_NEWNS = 0x00020000
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
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000

MNT_DETACH = 0x2

PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# Syscalls glibc has no wrapper for (pivot_root, close_range, seccomp) or whose
# wrapper needs libcap's structs (capset). Numbers differ per architecture.
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capset": 126, "seccomp": 317, "close_range": 436},
    "aarch64": {"pivot_root": 41, "capset": 91, "seccomp": 277, "close_range": 436},
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)

MACHINE = os.uname().machine


def _syscall_number(name: str) -> int:
    try:
        return _SYSCALLS[MACHINE][name]
    except KeyError:
        raise OSError(38, f"{name} is not supported on {MACHINE}") from None


def _check(result: int, *what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), *what)
    return result


def _path(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_path(source), _path(target), _path(fstype), flags, _path(data)), target)


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_path(target), flags), target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_syscall_number("pivot_root"), _path(new_root), _path(put_old)), new_root)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset_clear() -> None:
    """Empty the effective, permitted and inheritable sets of this thread (64-bit v3 ABI)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(_syscall_number("capset"), ctypes.byref(header), ctypes.byref(data)))


def clear_ambient_capabilities() -> None:
    # python-prctl 1.8 has no PR_CAP_AMBIENT.
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))


def prctl_capbset_drop(cap: int) -> None:
    # For capabilities newer than python-prctl's headers, which it refuses.
    _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))


def close_fds_from(first: int) -> None:
    """close_range(first, ~0U, 0); os.closerange is the fallback for kernels before 5.9."""
    try:
        _check(_libc.syscall(_syscall_number("close_range"), ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF), 0))
    except OSError:
        os.closerange(first, os.sysconf("SC_OPEN_MAX"))


SECCOMP_SET_MODE_FILTER = 1


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(program: bytes) -> None:
    """Install a classic-BPF seccomp program (struct sock_filter[] as raw bytes, 8 bytes each)."""
    if not program or len(program) % 8:
        raise OSError(22, "seccomp program is not a whole number of sock_filter entries")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_libc.syscall(_syscall_number("seccomp"), SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(fprog)))
