"""Namespace entry (SPEC §2.3): plain unshare first, else through a user namespace.

With CAP_SYS_ADMIN (root) the plain ``unshare`` works and no user namespace
is made. On EPERM, or when ``--unshare-user`` forces it, a user namespace is
created together with the requested ones and the caller's own uid and gid are
mapped onto themselves, so ``id`` inside prints the caller, not root.
"""

import errno
import os

from srt_launcher import kernel
from srt_launcher.errors import LauncherError

_NAMES = (
    (kernel.CLONE_NEWUSER, "user"),
    (kernel.CLONE_NEWNET, "net"),
    (kernel.CLONE_NEWNS, "mount"),
    (kernel.CLONE_NEWPID, "pid"),
)


def describe(flags: int) -> str:
    return "+".join(name for bit, name in _NAMES if flags & bit)


def unshare(flags: int, with_user: bool) -> bool:
    """Unshare ``flags``; returns True if a user namespace had to be (or was asked to be) created."""
    if not with_user:
        try:
            kernel.unshare(flags)
            return False
        except OSError as err:
            if err.errno != errno.EPERM:
                raise LauncherError.from_os("unshare", describe(flags), err) from None
    uid, gid = os.getuid(), os.getgid()
    try:
        kernel.unshare(kernel.CLONE_NEWUSER | flags)
    except OSError as err:
        raise LauncherError.from_os("unshare", describe(kernel.CLONE_NEWUSER | flags), err) from None
    _map_own_ids(uid, gid)
    return True


def _map_own_ids(uid: int, gid: int) -> None:
    # setgroups must be denied before an unprivileged process may write
    # gid_map; otherwise it could drop supplementary groups that guard
    # files with negative permissions (CVE-2014-8989).
    _write_proc("/proc/self/setgroups", "deny", missing_ok=True)
    _write_proc("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write_proc("/proc/self/gid_map", f"{gid} {gid} 1\n")


def _write_proc(path: str, text: str, missing_ok: bool = False) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if missing_ok:
            return
        raise LauncherError("user namespace", path, "No such file or directory") from None
    except OSError as err:
        raise LauncherError.from_os("user namespace", path, err) from None
    try:
        os.write(fd, text.encode())
    except OSError as err:
        raise LauncherError.from_os("user namespace", f"{path} <- {text.strip()}", err) from None
    finally:
        os.close(fd)
