"""The filesystem operations of a sandbox (SPEC §2.4, §6, §7), applied by PID 1 in order.

Between the two pivot_roots the host root is at ``/oldroot``, the sandbox
being built at ``/newroot``, and the staging root itself (a tmpfs of this
mount namespace, reachable by no other process) holds two scratch mount
points. Every mount is made in three steps:

1. **Build** it at a scratch point, by path: nothing another process can
   reach is on that path, so nothing can race it. A recursive bind copies
   submounts with their own flags; ``/dev`` and ``/proc`` get their nodes
   and covers here, as submounts that move with them.
2. **Flag** it there: MS_BIND ignores ro/nosuid/nodev, so each bind (and
   every submount under it) gets them added, keeping what it already had
   (bubblewrap's bind_mount() in bind-mount.c; one mount_setattr where the
   kernel has it). The mount is never visible without its flags.
3. **Attach** it onto the target's descriptor (mount/target.py): move_mount
   onto the fd, or MS_MOVE onto its /proc magic link on kernels before 5.2.
   The target was resolved inside the new root, so a symlink swapped into
   a writable bind cannot send the mount into the old root.
"""

import errno
import posix

import _stat

from srt_launcher import kernel, oslite, sandbox
from srt_launcher.errors import LauncherError
from srt_launcher.mount.target import CREATE_DIR, CREATE_FILE, Follower, open_in_root, open_parent_in_root

OLDROOT = "/oldroot"
NEWROOT = "/newroot"
# Scratch mount points in the staging root (mount/root.py creates them).
SCRATCH_DIR = "/scratch"
SCRATCH_FILE = "/scratch-file"
# Where the host's /proc is while the old root is attached: magic links of
# PID 1's own descriptors, for mount(2) on kernels without move_mount.
_FD_LINKS = OLDROOT + "/proc/self/fd/"

# What each kind of bind adds on top of the flags a mount already has.
BIND_READ_WRITE = kernel.MS_NOSUID | kernel.MS_NODEV
BIND_READ_ONLY = kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV
BIND_DEVICES = kernel.MS_NOSUID
# The nodes of --dev: usable (a read-only mount does not stop I/O to a
# device), but a uid-0 workload cannot chmod, chown or touch the host's
# inodes through them (bubblewrap binds them read-write: chmod 000
# /dev/null inside would break the host).
BIND_DEVICE_NODE = kernel.MS_RDONLY | kernel.MS_NOSUID

_BIND_FLAGS = {sandbox.BIND: BIND_READ_WRITE, sandbox.RO_BIND: BIND_READ_ONLY, sandbox.DEV_BIND: BIND_DEVICES}

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

_CHUNK = 1 << 16


class Step:
    """One operation as PID 1 applies it: the description's Mount, with its
    host sources resolved by the stub before any namespace existed."""

    __slots__ = ("mount", "source", "is_dir", "lower", "work", "identity")

    def __init__(self, mount: sandbox.Mount, source: str | None = None, is_dir: bool = True, lower: tuple = ()) -> None:
        self.mount = mount
        self.source = source  # resolved host path of a bind or an overlay's upper dir
        self.is_dir = is_dir
        self.lower = lower  # resolved host paths of an overlay's lower dirs
        self.work: str | None = None  # resolved host path of an overlay's work dir
        self.identity: tuple[int, int] | None = None  # a bind source's (device, inode) as resolved

    def __repr__(self) -> str:
        return f"Step({self.mount!r}, {self.source!r})"


class MountContext:
    """What the operations need from before the pivot."""

    __slots__ = ("proc_fd", "tty_path", "pid_namespace", "host_root", "follower", "move_mount", "tmp_overlays")

    def __init__(self, proc_fd: int, tty_path: str | None, pid_namespace: bool = True, host_root: bool = True, follower: Follower | None = None) -> None:
        self.proc_fd = proc_fd
        self.tty_path = tty_path
        self.pid_namespace = pid_namespace
        self.host_root = host_root  # the workload may be the host's uid 0 (see _cover_proc)
        self.follower = follower  # whose links targets may cross in a /tmp (mount/target.py)
        self.move_mount = True  # until the kernel says it has none
        self.tmp_overlays = 0


def host_path(path: str) -> str:
    return OLDROOT if path == "/" else OLDROOT + path


def apply(step: Step, ctx: MountContext) -> None:
    _APPLY[step.mount.kind](step, ctx)


def _fail(step: str, shown: str, err: OSError, source: str | None = None) -> LauncherError:
    return LauncherError.from_os(step, shown, err, source=source)


# ---------------------------------------------------------------- targets and attaching


def _target(mount: sandbox.Mount, ctx: MountContext, create: str | None, mode: int = 0o755) -> int:
    try:
        fd = open_in_root(NEWROOT, mount.dest, create, mode, _parent_mode(mount.perms), follower=ctx.follower)
    except OSError as err:
        raise _fail(mount.kind, mount.dest, err) from None
    # An existing target of the wrong kind is named as bubblewrap's
    # ensure_dir/ensure_file name it, not by the mount's EINVAL later.
    wrong = {CREATE_DIR: (False, errno.ENOTDIR), CREATE_FILE: (True, errno.EISDIR)}.get(create)
    if wrong is not None and _stat.S_ISDIR(posix.fstat(fd).st_mode) == wrong[0]:
        posix.close(fd)
        raise LauncherError.from_os(mount.kind, mount.dest, OSError(wrong[1], posix.strerror(wrong[1])))
    return fd


def _parent_mode(perms: int | None) -> int:
    # As bubblewrap: parents of a file others may not read are not
    # listable by them either.
    mode = 0o755
    if perms is not None and not perms & 0o070:
        mode &= ~0o050
    if perms is not None and not perms & 0o007:
        mode &= ~0o005
    return mode


def attach(scratch: str, target_fd: int, ctx: MountContext, step: str, shown: str) -> None:
    """Move the mount built at ``scratch`` onto the object ``target_fd`` pins."""
    try:
        if ctx.move_mount:
            try:
                kernel.move_mount_onto_fd(scratch, target_fd)
                return
            except OSError as err:
                # ENOSYS: a kernel before 5.2; EPERM: a container's seccomp
                # policy that does not know the syscall. MS_MOVE onto the
                # magic link reaches the same inode (and fails on a real EPERM).
                if err.errno not in (errno.ENOSYS, errno.EPERM):
                    raise
                ctx.move_mount = False
        kernel.mount(scratch, _FD_LINKS + str(target_fd), None, kernel.MS_MOVE)
    except OSError as err:
        _detach_quietly(scratch)
        raise _fail(step, shown, err) from None
    finally:
        posix.close(target_fd)


def _detach_quietly(scratch: str) -> None:
    try:
        kernel.umount2(scratch, kernel.MNT_DETACH)
    except OSError:
        pass


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None, step: str, shown: str) -> None:
    try:
        kernel.mount(source, target, fstype, flags, data)
    except OSError as err:
        raise _fail(step, shown, err, source) from None


# ---------------------------------------------------------------- binds


def _bind(step: Step, ctx: MountContext) -> None:
    mount = step.mount
    target = _target(mount, ctx, CREATE_DIR if step.is_dir else CREATE_FILE, 0o755 if step.is_dir else 0o444)
    scratch = SCRATCH_DIR if step.is_dir else SCRATCH_FILE
    try:
        bind_mount(ctx, host_path(step.source), scratch, _BIND_FLAGS[mount.kind], mount.kind, mount.dest, step.is_dir)
    except BaseException:
        posix.close(target)
        raise
    if step.identity is not None:
        try:
            _check_same_inode(scratch, step)
        except BaseException:
            posix.close(target)
            raise
    attach(scratch, target, ctx, mount.kind, mount.dest)


def _check_same_inode(scratch: str, step: Step) -> None:
    """What was mounted is the source the stub resolved (and, --bind-fd,
    the caller's descriptor): the source is mounted by its path, and
    whatever that path led to since (a component swapped for a symlink by
    a process that can write a directory on it) is not what the launch
    was asked for, nor what a sandbox prepared ahead was checked against."""
    mount = step.mount
    try:
        mounted = posix.lstat(scratch)
    except OSError as err:
        _detach_quietly(scratch)
        raise _fail(mount.kind, mount.dest, err) from None
    if (mounted.st_dev, mounted.st_ino) != step.identity:
        _detach_quietly(scratch)
        if mount.fd is not None:
            raise LauncherError("bind-fd", mount.dest, "Race condition binding dirfd")
        raise LauncherError(f"{mount.kind} source", mount.source, "changed while the sandbox was being made")


def bind_mount(ctx: MountContext, source: str, target: str, add_flags: int, step: str, shown: str, recursive: bool = True) -> None:
    """Bind ``source`` on ``target``, then remount it and every submount with ``add_flags``.

    MS_BIND silently ignores MS_RDONLY/MS_NOSUID/MS_NODEV, and a recursive bind
    copies submounts with their own flags, so a read-only bind of / would
    leave e.g. a host tmpfs under it writable. Each mount is remounted with
    the flags it already had plus ``add_flags``: a ro submount stays ro even
    under a read-write bind.
    """
    _mount(source, target, None, kernel.MS_BIND | (kernel.MS_REC if recursive else 0), None, step, shown)
    try:
        add_mount_flags(ctx, target, add_flags, step, shown, recursive)
    except LauncherError:
        _detach_quietly(target)
        raise


def add_mount_flags(ctx: MountContext, target: str, add_flags: int, step: str, shown: str, recursive: bool) -> None:
    if not recursive:
        # A single mount with no submounts: statvfs reads its flags directly.
        try:
            _remount(target, _flags_of_mount_at(target), add_flags)
        except OSError as err:
            raise _fail(f"{step}: remount", shown, err) from None
        return
    # The kernel adds the flags to the whole tree in one call, keeping what
    # each mount has (attr_clr = 0), covered submounts included.
    try:
        kernel.mount_setattr_add_recursive(target, add_flags)
        return
    except OSError as err:
        # ENOSYS: a kernel before 5.12; EPERM: a container's seccomp policy
        # that does not know the syscall. The per-mount remount below does
        # the same with mount(2) (and fails on a real EPERM, naming it).
        if err.errno not in (errno.ENOSYS, errno.EPERM):
            raise _fail(f"{step}: remount", shown, err) from None
    remount_tree_by_mountinfo(ctx, target, add_flags, step, shown)


def remount_tree_by_mountinfo(ctx: MountContext, target: str, add_flags: int, step: str, shown: str) -> None:
    """Remount the bind at ``target`` and each reachable submount with its own
    flags plus ``add_flags`` (bubblewrap's bind_mount(), for kernels without
    mount_setattr)."""
    from srt_launcher.mount import mountinfo  # imported before the pivot (root.build)

    try:
        path = mountinfo.kernel_path(target, ctx.proc_fd)
        mounts = mountinfo.bind_and_submounts(mountinfo.read(ctx.proc_fd), path)
    except OSError as err:
        raise _fail(f"{step}: mountinfo", shown, err) from None
    if not mounts:
        raise LauncherError(f"{step}: mountinfo", shown, "the new bind mount is not in mountinfo")
    bind, submounts = mounts[0], mounts[1:]
    try:
        _remount(path, bind.flags, add_flags)
    except OSError as err:
        raise _fail(f"{step}: remount", shown, err) from None
    for sub in submounts:
        try:
            _remount(sub.mount_point, sub.flags, add_flags)
        except OSError as err:
            if err.errno not in _TOLERATED_SUBMOUNT_ERRORS:
                raise _fail(f"{step}: remount submount", sub.mount_point, err) from None


_ST_NOSYMFOLLOW = 0x2000
_STATVFS_AS_MOUNT_FLAGS = kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC


def _flags_of_mount_at(path: str) -> int:
    """The remount flags of the mount ``path`` is on.

    ST_RDONLY/NOSUID/NODEV/NOEXEC share their values with the MS_* flags.
    ST_RDONLY is also set for a read-only superblock under a rw mount; making
    such a mount ro changes nothing a process can do.
    """
    flags = posix.statvfs(path).f_flag
    return (flags & _STATVFS_AS_MOUNT_FLAGS) | (kernel.MS_NOSYMFOLLOW if flags & _ST_NOSYMFOLLOW else 0)


def _remount(path: str, current: int, add_flags: int) -> None:
    wanted = current | add_flags
    if wanted != current:
        kernel.mount("none", path, None, kernel.MS_SILENT | kernel.MS_BIND | kernel.MS_REMOUNT | wanted, None)


def _remount_ro(step: Step, ctx: MountContext) -> None:
    """bubblewrap's --remount-ro: the mount at dest, and only it, read-only."""
    mount = step.mount
    target = _target(mount, ctx, None)
    try:
        link = _FD_LINKS + str(target)
        from srt_launcher.mount import mountinfo  # imported before the pivot (root.build)

        if not mountinfo.is_mount_root(target, ctx.proc_fd):
            raise LauncherError(mount.kind, mount.dest, "not a mount point")
        _remount(link, _flags_of_mount_at(link), kernel.MS_RDONLY)
    except OSError as err:
        raise _fail(mount.kind, mount.dest, err) from None
    finally:
        posix.close(target)


# ---------------------------------------------------------------- file systems


def _tmpfs(step: Step, ctx: MountContext) -> None:
    mount = step.mount
    target = _target(mount, ctx, CREATE_DIR)
    options = f"mode={0o755 if mount.perms is None else mount.perms:04o}"
    if mount.size:
        options += f",size={mount.size}"
    _mount_new(ctx, "tmpfs", "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, options, target, mount)


def _mqueue(step: Step, ctx: MountContext) -> None:
    mount = step.mount
    _mount_new(ctx, "mqueue", "mqueue", 0, None, _target(mount, ctx, CREATE_DIR), mount)


def _mount_new(ctx: MountContext, source: str, fstype: str, flags: int, data: str | None, target: int, mount: sandbox.Mount) -> None:
    try:
        _mount(source, SCRATCH_DIR, fstype, flags, data, mount.kind, mount.dest)
    except BaseException:
        posix.close(target)
        raise
    attach(SCRATCH_DIR, target, ctx, mount.kind, mount.dest)


def _proc(step: Step, ctx: MountContext) -> None:
    mount = step.mount
    target = _target(mount, ctx, CREATE_DIR)
    try:
        if mount.kind == sandbox.PROC and ctx.pid_namespace:
            flags = kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC
            _mount("proc", SCRATCH_DIR, "proc", flags, None, mount.kind, mount.dest)
        else:
            # --host-proc, or --proc without a PID namespace of our own
            # (bubblewrap then binds the host's, which shows the same
            # processes). --host-proc is read-only: a uid-0 workload
            # without capabilities still owns the /proc/PID files of the
            # host's root processes (oom_score_adj...).
            flags = BIND_READ_ONLY | kernel.MS_NOEXEC if mount.kind == sandbox.HOST_PROC else BIND_READ_WRITE
            bind_mount(ctx, host_path("/proc"), SCRATCH_DIR, flags, mount.kind, mount.dest)
        _cover_proc(ctx, mount)
    except BaseException:
        _detach_quietly(SCRATCH_DIR)
        posix.close(target)
        raise
    attach(SCRATCH_DIR, target, ctx, mount.kind, mount.dest)


def _cover_proc(ctx: MountContext, mount: sandbox.Mount) -> None:
    """Bind the weird old corners of /proc read-only onto themselves.

    Only where the workload may be the host's uid 0: the files there belong
    to it, and only to it. For any other uid they are not writable anyway,
    and covering them would cost nesting: the kernel mounts a new procfs in
    a user namespace only where a procfs is fully visible, so a sandbox
    inside this one could not have a /proc of its own.
    """
    if not ctx.host_root:
        return
    for name in PROC_COVERS:
        path = f"{SCRATCH_DIR}/{name}"
        # No access(W_OK) shortcut as in bubblewrap: procfs refuses write
        # access to the /proc/sys directory itself, yet the sysctl files in it
        # are writable by uid 0 without any capability (the root workload).
        if not oslite.lexists(path):
            continue
        recursive = _stat.S_ISDIR(posix.lstat(path).st_mode)
        bind_mount(ctx, path, path, BIND_READ_ONLY, f"{mount.kind}: cover", f"{mount.dest}/{name}", recursive)


def _dev(step: Step, ctx: MountContext) -> None:
    mount = step.mount
    target = _target(mount, ctx, CREATE_DIR)
    try:
        _build_dev(ctx, mount.dest)
    except BaseException:
        _detach_quietly(SCRATCH_DIR)
        posix.close(target)
        raise
    attach(SCRATCH_DIR, target, ctx, mount.kind, mount.dest)


def _build_dev(ctx: MountContext, shown: str) -> None:
    _mount("tmpfs", SCRATCH_DIR, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, "mode=0755", "dev", shown)
    nodes = [(name, "/dev/" + name) for name in DEVICE_NODES]
    if ctx.tty_path:
        # stdout's terminal as /dev/console: no more access than the
        # workload already has through fd 1, and ttyname() works inside.
        nodes.append(("console", ctx.tty_path))
    try:
        for name, host in nodes:
            source = host_path(host)
            if not oslite.exists(source):
                continue
            node = f"{SCRATCH_DIR}/{name}"
            posix.close(posix.open(node, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_CLOEXEC, 0o444))
            bind_mount(ctx, source, node, BIND_DEVICE_NODE, "dev", f"{shown}/{name}", recursive=False)
        for name, link in DEV_SYMLINKS:
            posix.symlink(link, f"{SCRATCH_DIR}/{name}")
        posix.mkdir(f"{SCRATCH_DIR}/shm", 0o755)
        posix.mkdir(f"{SCRATCH_DIR}/pts", 0o755)
    except OSError as err:
        raise _fail("dev", shown, err) from None
    _mount(
        "devpts",
        f"{SCRATCH_DIR}/pts",
        "devpts",
        kernel.MS_NOSUID | kernel.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=620",
        "dev: devpts",
        f"{shown}/pts",
    )


def _overlay(step: Step, ctx: MountContext) -> None:
    mount = step.mount
    target = _target(mount, ctx, CREATE_DIR)
    options = []
    if mount.kind == sandbox.OVERLAY:
        options += ["upperdir=" + _escape(host_path(step.source)), "workdir=" + _escape(host_path(step.work))]
    elif mount.kind == sandbox.TMP_OVERLAY:
        upper, work = _tmp_overlay_dirs(ctx, mount)
        options += ["upperdir=" + upper, "workdir=" + work]
    options.append("lowerdir=" + ":".join(_escape(host_path(path)) for path in step.lower))
    options.append("userxattr")
    data = ",".join(options)
    try:
        kernel.mount("overlay", SCRATCH_DIR, "overlay", 0, data)
    except OSError as err:
        posix.close(target)
        if err.errno == errno.ELOOP:  # "Too many levels of symbolic links" says nothing useful here
            raise LauncherError(mount.kind, mount.dest, "Overlay directories may not overlap", source=data) from None
        raise _fail(mount.kind, mount.dest, err, data) from None
    attach(SCRATCH_DIR, target, ctx, mount.kind, mount.dest)


def _tmp_overlay_dirs(ctx: MountContext, mount: sandbox.Mount) -> tuple[str, str]:
    # In the staging tmpfs: the writes are invisible to everyone, and gone
    # with the sandbox's mount namespace.
    index = ctx.tmp_overlays
    ctx.tmp_overlays += 1
    upper, work = f"/tmp-overlay-upper-{index}", f"/tmp-overlay-work-{index}"
    try:
        posix.mkdir(upper, 0o755)
        posix.mkdir(work, 0o755)
    except OSError as err:
        raise _fail(mount.kind, mount.dest, err) from None
    return upper, work


def _escape(path: str) -> str:
    # Overlay options split on "," and lowerdir on ":"; a backslash escapes.
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


# ---------------------------------------------------------------- files, directories, links


def _dir(step: Step, ctx: MountContext) -> None:
    mount = step.mount
    posix.close(_target(mount, ctx, CREATE_DIR, 0o755 if mount.perms is None else mount.perms))


def _file(step: Step, ctx: MountContext) -> None:
    """--file: a new file holding the data (bubblewrap creat()s it, mode 0666 unless --perms)."""
    mount = step.mount
    perms = 0o666 if mount.perms is None else mount.perms
    target = _target(mount, ctx, CREATE_FILE, perms)
    try:
        fd = posix.open(_FD_LINKS + str(target), posix.O_WRONLY | posix.O_TRUNC | posix.O_CLOEXEC)
    except OSError as err:
        raise _fail(mount.kind, mount.dest, err) from None
    finally:
        posix.close(target)
    try:
        _write_data(fd, mount)
    finally:
        posix.close(fd)


def _bind_data(step: Step, ctx: MountContext) -> None:
    """--bind-data/--ro-bind-data: the data in a file of the staging tmpfs, bound on dest."""
    mount = step.mount
    perms = 0o600 if mount.perms is None else mount.perms
    staged = "/bind-data"
    try:
        fd = posix.open(staged, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_CLOEXEC, perms)
    except OSError as err:
        raise _fail(mount.kind, mount.dest, err) from None
    try:
        posix.fchmod(fd, perms)
        _write_data(fd, mount)
    except OSError as err:
        raise _fail(mount.kind, mount.dest, err) from None
    finally:
        posix.close(fd)
    try:
        target = _target(mount, ctx, CREATE_FILE, 0o444)
        flags = BIND_READ_ONLY if mount.kind == sandbox.RO_BIND_DATA else BIND_READ_WRITE
        try:
            bind_mount(ctx, staged, SCRATCH_FILE, flags, mount.kind, mount.dest, recursive=False)
        except BaseException:
            posix.close(target)
            raise
        attach(SCRATCH_FILE, target, ctx, mount.kind, mount.dest)  # closes target
    finally:
        # Only once the mount is in place: the kernel refuses to move a
        # mount whose root has been unlinked (move_mount and MS_MOVE: ENOENT).
        posix.unlink(staged)


def _write_data(fd: int, mount: sandbox.Mount) -> None:
    try:
        if mount.data is not None:
            view = memoryview(mount.data)
            while view:
                view = view[posix.write(fd, view) :]
            return
        while chunk := posix.read(mount.fd, _CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[posix.write(fd, view) :]
    except OSError as err:
        raise _fail(mount.kind, mount.dest, err) from None


def _symlink(step: Step, ctx: MountContext) -> None:
    mount = step.mount
    try:
        parent, name = open_parent_in_root(NEWROOT, mount.dest, follower=ctx.follower)
    except OSError as err:
        raise _fail(mount.kind, mount.dest, err) from None
    try:
        posix.symlink(mount.source, name, dir_fd=parent)
    except FileExistsError:
        _check_existing_symlink(parent, name, mount)
    except OSError as err:
        raise _fail(mount.kind, mount.dest, err) from None
    finally:
        posix.close(parent)


def _check_existing_symlink(parent: int, name: str, mount: sandbox.Mount) -> None:
    # As bubblewrap: the same link already there is fine, anything else is not.
    try:
        existing = posix.readlink(name, dir_fd=parent)
    except OSError as err:
        if err.errno == errno.EINVAL:
            raise LauncherError(mount.kind, mount.dest, "destination exists and is not a symlink") from None
        raise _fail(mount.kind, mount.dest, err) from None
    if existing != mount.source:
        raise LauncherError(mount.kind, mount.dest, f"existing destination is {existing}")


def _chmod(step: Step, ctx: MountContext) -> None:
    mount = step.mount
    target = _target(mount, ctx, None)
    try:
        posix.chmod(_FD_LINKS + str(target), mount.perms)
    except OSError as err:
        raise _fail(mount.kind, mount.dest, err) from None
    finally:
        posix.close(target)


_APPLY = {
    sandbox.BIND: _bind,
    sandbox.RO_BIND: _bind,
    sandbox.DEV_BIND: _bind,
    sandbox.REMOUNT_RO: _remount_ro,
    sandbox.TMPFS: _tmpfs,
    sandbox.PROC: _proc,
    sandbox.HOST_PROC: _proc,
    sandbox.DEV: _dev,
    sandbox.MQUEUE: _mqueue,
    sandbox.DIR: _dir,
    sandbox.FILE: _file,
    sandbox.BIND_DATA: _bind_data,
    sandbox.RO_BIND_DATA: _bind_data,
    sandbox.SYMLINK: _symlink,
    sandbox.CHMOD: _chmod,
    sandbox.OVERLAY: _overlay,
    sandbox.TMP_OVERLAY: _overlay,
    sandbox.RO_OVERLAY: _overlay,
}
