"""The few raw calls the probes need beyond :mod:`srt_launcher.kernel`.

Through ctypes, like ``kernel``; only ``check`` and ``probe()`` import this
module, never the launch path. Each call raises ``OSError`` with the kernel's
errno.
"""

from __future__ import annotations

import ctypes
import errno
import os

_PR_GET_DUMPABLE = 3
_SECCOMP_GET_ACTION_AVAIL = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_LANDLOCK_CREATE_RULESET_VERSION = 1 << 0

_NUMBERS = {
    "x86_64": {"seccomp": 317, "landlock_create_ruleset": 444},
    "aarch64": {"seccomp": 277, "landlock_create_ruleset": 444},
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


def _check(result: int) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _syscall(name: str, *args: object) -> int:
    number = _NUMBERS.get(os.uname().machine, {}).get(name)
    if number is None:
        raise OSError(errno.ENOSYS, f"{name}: unknown system call number on {os.uname().machine}")
    return _check(_libc.syscall(ctypes.c_long(number), *args))


def dumpable() -> int:
    """PR_GET_DUMPABLE: 0 once a process changed identity without exec (fs.suid_dumpable 0)."""
    return _check(_libc.prctl(_PR_GET_DUMPABLE, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)))


def seccomp_get_action_avail() -> None:
    """seccomp(SECCOMP_GET_ACTION_AVAIL, 0, &SECCOMP_RET_ALLOW): succeeds on any kernel with
    seccomp filters, so a failure means the seccomp system call itself is refused."""
    action = ctypes.c_uint32(_SECCOMP_RET_ALLOW)
    _syscall("seccomp", ctypes.c_long(_SECCOMP_GET_ACTION_AVAIL), ctypes.c_long(0), ctypes.byref(action))


def landlock_abi() -> int:
    """landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION): the ABI version."""
    return _syscall("landlock_create_ruleset", None, ctypes.c_long(0), ctypes.c_long(_LANDLOCK_CREATE_RULESET_VERSION))
