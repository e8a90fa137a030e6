"""Namespace entry (SPEC §2.3): plain unshare first, else through a user namespace.

With CAP_SYS_ADMIN (root) the plain ``unshare`` works and no user namespace
is made. On EPERM, or when the sandbox asks for one, a user namespace is
created together with the requested ones and the sandbox's uid and gid
(the caller's by default) are mapped onto the caller's, so ``id`` inside
prints the caller, not root.
"""

import errno
import posix

from srt_launcher import kernel, oslite, sandbox
from srt_launcher.errors import LauncherError

_NAMES = (
    (kernel.CLONE_NEWUSER, "user"),
    (kernel.CLONE_NEWNET, "net"),
    (kernel.CLONE_NEWNS, "mount"),
    (kernel.CLONE_NEWPID, "pid"),
    (kernel.CLONE_NEWIPC, "ipc"),
    (kernel.CLONE_NEWUTS, "uts"),
    (kernel.CLONE_NEWCGROUP, "cgroup"),
)


def describe(flags: int) -> str:
    return "+".join(name for bit, name in _NAMES if flags & bit)


class Identity:
    """Who the sandbox runs as: ids inside, the caller's ids outside, and
    whether the maps are written by us (not when the caller writes them,
    bubblewrap's --userns-block-fd)."""

    __slots__ = ("uid", "gid", "outer_uid", "outer_gid", "write_maps")

    def __init__(self, box: sandbox.Sandbox) -> None:
        self.outer_uid, self.outer_gid = posix.getuid(), posix.getgid()
        self.uid = self.outer_uid if box.uid is None else box.uid
        self.gid = self.outer_gid if box.gid is None else box.gid
        self.write_maps = box.userns_block_fd is None


def unshare(flags: int, mode: str, identity: Identity) -> bool:
    """Unshare ``flags``; returns True if a user namespace was created.

    ``mode`` is one of sandbox.USERNS_*: never, always, or only when the
    plain unshare is refused.
    """
    if mode == sandbox.USERNS_NO or (mode == sandbox.USERNS_IF_NEEDED and flags):
        try:
            kernel.unshare(flags)
            return False
        except OSError as err:
            if mode == sandbox.USERNS_NO or err.errno != errno.EPERM:
                raise LauncherError.from_os("unshare", describe(flags), err) from None
    elif mode == sandbox.USERNS_IF_NEEDED:
        return False  # nothing to unshare, and nothing refused
    try:
        kernel.unshare(kernel.CLONE_NEWUSER | flags)
    except OSError as err:
        raise LauncherError.from_os("unshare", describe(kernel.CLONE_NEWUSER | flags), err) from None
    if identity.write_maps:
        map_ids(identity.uid, identity.outer_uid, identity.gid, identity.outer_gid)
    return True


def switch_ids(identity: Identity) -> None:
    """In a user namespace joined (not made), become the sandbox's uid and gid
    where they differ from the caller's, as bubblewrap does for --userns
    (uid first: a non-zero uid has no CAP_SETGID left, as in bubblewrap)."""
    for name, wanted, caller, call in (
        ("uid", identity.uid, identity.outer_uid, posix.setuid),
        ("gid", identity.gid, identity.outer_gid, posix.setgid),
    ):
        if wanted != caller:
            try:
                call(wanted)
            except OSError as err:
                raise LauncherError.from_os("switch " + name, str(wanted), err) from None


def user_namespaces_available() -> bool:
    """bubblewrap's --unshare-user-try test: the kernel has them and they are not disabled."""
    if not oslite.exists("/proc/self/ns/user"):
        return False
    if _read("/sys/module/user_namespace/parameters/enable").startswith(b"N"):  # RHEL 7's switch
        return False
    return _read("/proc/sys/user/max_user_namespaces") != b"0\n"


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def map_ids(uid: int, outer_uid: int, gid: int, outer_gid: int, proc: str = "/proc/self", proc_fd: int | None = None) -> None:
    # setgroups must be denied before an unprivileged process may write
    # gid_map; otherwise it could drop supplementary groups that guard
    # files with negative permissions (CVE-2014-8989).
    _write_proc(f"{proc}/setgroups", "deny", proc_fd, missing_ok=True)
    _write_proc(f"{proc}/uid_map", f"{uid} {outer_uid} 1\n", proc_fd)
    _write_proc(f"{proc}/gid_map", f"{gid} {outer_gid} 1\n", proc_fd)


def _write_proc(path: str, text: str, proc_fd: int | None, missing_ok: bool = False) -> None:
    try:
        fd = posix.open(path, posix.O_WRONLY | posix.O_CLOEXEC, dir_fd=proc_fd)
    except FileNotFoundError:
        if missing_ok:
            return
        raise LauncherError("user namespace", path, "No such file or directory") from None
    except OSError as err:
        raise LauncherError.from_os("user namespace", path, err) from None
    try:
        posix.write(fd, text.encode())
    except OSError as err:
        raise LauncherError.from_os("user namespace", f"{path} <- {text.strip()}", err) from None
    finally:
        posix.close(fd)
