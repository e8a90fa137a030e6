"""The mount operations of ``run`` (SPEC §2.4), applied by PID 1 in argv order.

Between the two pivot_roots the host root is at ``/oldroot`` and the sandbox
root being built at ``/newroot``: every operation reads its source under the
first and writes its target under the second. The bind + remount sequence
follows bubblewrap's ``bind_mount()`` in bind-mount.c.
"""

import errno
import os
import stat

from srt_launcher import kernel
from srt_launcher.errors import LauncherError
from srt_launcher.mount import mountinfo

OLDROOT = "/oldroot"
NEWROOT = "/newroot"

# What each kind of bind adds on top of the flags a mount already has.
BIND_READ_WRITE = kernel.MS_NOSUID | kernel.MS_NODEV
BIND_READ_ONLY = kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV
BIND_DEVICES = kernel.MS_NOSUID

# Remounting a submount may fail harmlessly: EACCES, the mount point is not
# reachable by us (so not by the workload either); EINVAL, the path is no
# longer a mount point (shadowed by a later mount); ENOENT, it vanished.
_TOLERATED_SUBMOUNT_ERRORS = (errno.EACCES, errno.EINVAL, errno.ENOENT)

DEVICE_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_SYMLINKS = (
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("fd", "/proc/self/fd"),
    ("core", "/proc/kcore"),
    ("ptmx", "pts/ptmx"),
)
# Weird old corners of /proc that a process with write access could use to
# hurt the host (sysrq-trigger can reboot it; /proc/sys/kernel/hostname
# renames it): made read-only wherever they exist.
PROC_COVERS = ("sys", "sysrq-trigger", "irq", "bus")


class MountOp:
    """One mount option of the command line: ``kind`` is the option name without dashes."""

    __slots__ = ("kind", "dest", "source", "source_is_dir")

    def __init__(self, kind: str, dest: str, source: str | None = None) -> None:
        self.kind = kind
        self.dest = dest
        self.source = source
        self.source_is_dir = True

    def __repr__(self) -> str:
        return f"MountOp({self.kind!r}, {self.dest!r}, {self.source!r})"


class MountContext:
    """What the operations need from before the pivot."""

    __slots__ = ("proc_fd", "tty_path")

    def __init__(self, proc_fd: int, tty_path: str | None) -> None:
        self.proc_fd = proc_fd
        self.tty_path = tty_path


def host_path(path: str) -> str:
    return OLDROOT if path == "/" else OLDROOT + path


_MAX_SYMLINKS = 40  # as the kernel's path walk


def sandbox_path(dest: str, step: str) -> str:
    """Where ``dest`` is under /newroot, resolved as the sandbox will see it.

    Like openat2(RESOLVE_IN_ROOT), which Python cannot call: an absolute
    symlink restarts at the new root and ".." stops there. A plain path walk
    would follow a symlink the workload of an earlier launch planted in a
    writable bind (``cfg -> /oldroot/etc``) out to the host's real root,
    where the launcher would create mount points with its privileges.
    """
    pending = [part for part in dest.split("/") if part]
    resolved: list[str] = []
    links = 0
    missing = False
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        path = NEWROOT + "/" + "/".join(resolved + [name])
        if not missing:
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                missing = True  # nothing below exists either: the rest is created
            except OSError as err:
                raise LauncherError.from_os(step, dest, err) from None
            else:
                if stat.S_ISLNK(mode):
                    links += 1
                    if links > _MAX_SYMLINKS:
                        raise LauncherError(step, dest, os.strerror(errno.ELOOP))
                    target = os.readlink(path)
                    if target.startswith("/"):
                        resolved = []
                    pending[:0] = [part for part in target.split("/") if part]
                    continue
        resolved.append(name)
    return NEWROOT + "".join("/" + part for part in resolved)


def apply(op: MountOp, ctx: MountContext) -> None:
    target = sandbox_path(op.dest, op.kind)
    if op.kind == "bind":
        ensure_target(target, op.source_is_dir, op.kind, op.dest)
        bind_mount(ctx, host_path(op.source), target, BIND_READ_WRITE, op.kind, op.dest, recursive=op.source_is_dir)
    elif op.kind == "ro-bind":
        ensure_target(target, op.source_is_dir, op.kind, op.dest)
        # Nothing can be mounted below a file, so a file bind has no submounts.
        bind_mount(ctx, host_path(op.source), target, BIND_READ_ONLY, op.kind, op.dest, recursive=op.source_is_dir)
    elif op.kind == "tmpfs":
        ensure_target(target, True, op.kind, op.dest)
        mount_tmpfs(target, op.kind, op.dest)
    elif op.kind == "proc":
        ensure_target(target, True, op.kind, op.dest)
        _mount(
            "proc", target, "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC, None, op.kind, op.dest
        )
        cover_proc(ctx, target, op.kind, op.dest, recursive=False)  # a fresh procfs has no submounts
    elif op.kind == "host-proc":
        ensure_target(target, True, op.kind, op.dest)
        # Read-only: a uid-0 workload without capabilities still owns the
        # /proc/PID files of the host's root processes (oom_score_adj...).
        bind_mount(ctx, host_path("/proc"), target, BIND_READ_ONLY | kernel.MS_NOEXEC, op.kind, op.dest)
        cover_proc(ctx, target, op.kind, op.dest, recursive=True)
    elif op.kind == "dev":
        mount_dev(ctx, target, op.dest)
    else:
        raise AssertionError(f"unknown mount op {op.kind}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None, step: str, shown: str) -> None:
    try:
        kernel.mount(source, target, fstype, flags, data)
    except OSError as err:
        raise LauncherError.from_os(step, shown, err) from None


def ensure_target(target: str, is_dir: bool, step: str, shown: str) -> None:
    """Create a missing mount point matching the source's kind; never touch an existing one.

    ``target`` comes from :func:`sandbox_path`. Creation walks it from
    /newroot one directory at a time without following symlinks, so a
    component swapped for a symlink meanwhile (another sandbox sharing a
    writable bind) fails the launch instead of redirecting the mkdir.
    """
    if os.path.lexists(target):
        return
    names = target[len(NEWROOT) :].strip("/").split("/")
    directory = os.open(NEWROOT, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names[:-1]:
            try:
                os.mkdir(name, 0o755, dir_fd=directory)
            except FileExistsError:
                pass
            below = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
            os.close(directory)
            directory = below
        if is_dir:
            os.mkdir(names[-1], 0o755, dir_fd=directory)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(names[-1], flags, 0o444, dir_fd=directory))
    except OSError as err:
        raise LauncherError.from_os(step, shown, err) from None
    finally:
        os.close(directory)


def mount_tmpfs(target: str, step: str, shown: str) -> None:
    _mount("tmpfs", target, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, "mode=0755", step, shown)


def bind_mount(ctx: MountContext, source: str, target: str, add_flags: int, step: str, shown: str, recursive: bool = True) -> None:
    """Bind ``source`` on ``target``, then remount it and every submount with ``add_flags``.

    MS_BIND silently ignores MS_RDONLY/MS_NOSUID/MS_NODEV, and a recursive bind
    copies submounts with their own flags, so a read-only bind of / would
    leave e.g. a host tmpfs under it writable. Each mount is remounted with
    the flags it already had plus ``add_flags``: a ro submount stays ro even
    under a read-write bind.
    """
    _mount(source, target, None, kernel.MS_BIND | (kernel.MS_REC if recursive else 0), None, step, shown)
    if not recursive:
        # A single mount with no submounts: statvfs reads its flags directly,
        # which saves reading and parsing mountinfo (six times for --dev).
        try:
            _remount(target, _flags_of_mount_at(target), add_flags)
        except OSError as err:
            raise LauncherError.from_os(f"{step}: remount", shown, err) from None
        return
    # The kernel adds the flags to the whole tree in one call, keeping what
    # each mount has (attr_clr = 0): no mountinfo to read, no remount per
    # submount (measured: ≈0.4 ms less for --ro-bind / / on this host), and
    # no path lookups, so covered submounts are made read-only as well.
    try:
        kernel.mount_setattr_add_recursive(target, add_flags)
        return
    except OSError as err:
        # ENOSYS: a kernel before 5.12; EPERM: a container's seccomp policy
        # that does not know the syscall. The per-mount remount below does
        # the same with mount(2) (and fails on a real EPERM, naming it).
        if err.errno not in (errno.ENOSYS, errno.EPERM):
            raise LauncherError.from_os(f"{step}: remount", shown, err) from None
    remount_tree_by_mountinfo(ctx, target, add_flags, step, shown)


def remount_tree_by_mountinfo(ctx: MountContext, target: str, add_flags: int, step: str, shown: str) -> None:
    """Remount the bind at ``target`` and each reachable submount with its own
    flags plus ``add_flags`` (bubblewrap's bind_mount(), for kernels without
    mount_setattr)."""
    try:
        path = mountinfo.kernel_path(target, ctx.proc_fd)
        mounts = mountinfo.bind_and_submounts(mountinfo.read(ctx.proc_fd), path)
    except OSError as err:
        raise LauncherError.from_os(f"{step}: mountinfo", shown, err) from None
    if not mounts:
        raise LauncherError(f"{step}: mountinfo", shown, "the new bind mount is not in mountinfo")
    bind, submounts = mounts[0], mounts[1:]
    try:
        _remount(path, bind.flags, add_flags)
    except OSError as err:
        raise LauncherError.from_os(f"{step}: remount", shown, err) from None
    for sub in submounts:
        try:
            _remount(sub.mount_point, sub.flags, add_flags)
        except OSError as err:
            if err.errno not in _TOLERATED_SUBMOUNT_ERRORS:
                raise LauncherError.from_os(f"{step}: remount submount", _outside_newroot(sub.mount_point), err) from None


_ST_NOSYMFOLLOW = 0x2000
_STATVFS_AS_MOUNT_FLAGS = kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC


def _flags_of_mount_at(path: str) -> int:
    """The remount flags of the mount ``path`` is on.

    ST_RDONLY/NOSUID/NODEV/NOEXEC share their values with the MS_* flags.
    ST_RDONLY is also set for a read-only superblock under a rw mount; making
    such a mount ro changes nothing a process can do.
    """
    flags = os.statvfs(path).f_flag
    return (flags & _STATVFS_AS_MOUNT_FLAGS) | (kernel.MS_NOSYMFOLLOW if flags & _ST_NOSYMFOLLOW else 0)


def _remount(path: str, current: int, add_flags: int) -> None:
    wanted = current | add_flags
    if wanted != current:
        kernel.mount("none", path, None, kernel.MS_SILENT | kernel.MS_BIND | kernel.MS_REMOUNT | wanted, None)


def _outside_newroot(path: str) -> str:
    return path[len(NEWROOT) :] or "/" if path.startswith(NEWROOT) else path


def cover_proc(ctx: MountContext, proc_target: str, step: str, shown: str, recursive: bool) -> None:
    for name in PROC_COVERS:
        path = f"{proc_target}/{name}"
        # No access(W_OK) shortcut as in bubblewrap: procfs refuses write
        # access to the /proc/sys directory itself, yet the sysctl files in it
        # are writable by uid 0 without any capability (the root workload).
        if not os.path.lexists(path):
            continue
        bind_mount(ctx, path, path, BIND_READ_ONLY, f"{step}: cover", f"{shown}/{name}", recursive)


def mount_dev(ctx: MountContext, target: str, shown: str) -> None:
    ensure_target(target, True, "dev", shown)
    mount_tmpfs(target, "dev", shown)
    for name in DEVICE_NODES:
        source = host_path("/dev/" + name)
        if not os.path.exists(source):
            continue
        node = f"{target}/{name}"
        ensure_target(node, False, "dev", f"{shown}/{name}")
        bind_mount(ctx, source, node, BIND_DEVICES, "dev", f"{shown}/{name}", recursive=False)
    try:
        for name, link in DEV_SYMLINKS:
            os.symlink(link, f"{target}/{name}")
        os.mkdir(f"{target}/shm", 0o755)
        os.mkdir(f"{target}/pts", 0o755)
    except OSError as err:
        raise LauncherError.from_os("dev", shown, err) from None
    _mount(
        "devpts",
        f"{target}/pts",
        "devpts",
        kernel.MS_NOSUID | kernel.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=620",
        "dev: devpts",
        f"{shown}/pts",
    )
    if ctx.tty_path:
        console = f"{target}/console"
        ensure_target(console, False, "dev", f"{shown}/console")
        bind_mount(ctx, host_path(ctx.tty_path), console, BIND_DEVICES, "dev: console", ctx.tty_path, recursive=False)
