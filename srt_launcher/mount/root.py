"""The sandbox root: staging tmpfs, the two pivot_roots, detaching the old root.

The sequence is bubblewrap's ``setup_newroot`` framing in bubblewrap.c. It
runs in PID 1, in a fresh mount namespace, before the worker exists:

1. ``/`` becomes MS_SLAVE|MS_REC: host mount events still flow in, nothing
   we mount flows out to the host.
2. A tmpfs on ``/tmp`` (of this namespace only) is the staging root; in it
   ``newroot`` (bound onto itself, so it is a mount point pivot_root accepts),
   ``oldroot``, and the scratch points where mounts are built before they
   are moved into place. ``pivot_root(/tmp, oldroot)`` puts the host root at
   ``/oldroot``.
3. Every mount op reads under ``/oldroot`` and writes under ``/newroot``
   (mount/ops.py).
4. ``/oldroot`` is made rprivate (else the detach would propagate unmount
   events to the host) and lazily detached.
5. ``pivot_root(".", ".")`` inside ``/newroot`` stacks the old staging root
   under the new one; a lazy unmount of ``.`` from the old root's fd removes
   it. No chroot: a chroot can be escaped with a second chroot, a pivot cannot.
"""

import posix

from srt_launcher import kernel, sandbox
from srt_launcher.errors import LauncherError
from srt_launcher.mount import ops
from srt_launcher.mount.target import Follower

STAGING = "/tmp"


def build(steps: list[ops.Step], tty_path: str | None, pid_namespace: bool, host_root: bool) -> None:
    _step("make / a slave", "/", kernel.mount, None, "/", None, kernel.MS_SILENT | kernel.MS_SLAVE | kernel.MS_REC)
    # The host procfs, kept open across the pivot: every bind needs mountinfo,
    # and the sandbox may have no /proc of its own yet (or ever).
    proc_fd = _step("open /proc", "/proc", posix.open, "/proc", posix.O_PATH | posix.O_DIRECTORY | posix.O_CLOEXEC)
    if any(step.mount.kind == sandbox.REMOUNT_RO for step in steps) or not kernel.has_mount_setattr():
        # Read only by --remount-ro and the remount fallback, and there is
        # nothing to import from once the host root has been pivoted away.
        from srt_launcher.mount import mountinfo  # noqa: F401
    try:
        follower = _step("user namespace", "/proc/self/uid_map", Follower.of_this_process, proc_fd)
        _enter_staging()
        ctx = ops.MountContext(proc_fd, tty_path, pid_namespace, host_root, follower)
        for step in steps:
            ops.apply(step, ctx)
        _detach_old_root()
        _switch_to_new_root()
    finally:
        posix.close(proc_fd)


def _step(step: str, shown: str, call, *args):  # type: ignore[no-untyped-def]
    try:
        return call(*args)
    except OSError as err:
        raise LauncherError.from_os(step, shown, err) from None


def _enter_staging() -> None:
    _step("staging tmpfs", STAGING, kernel.mount, "tmpfs", STAGING, "tmpfs", kernel.MS_NODEV | kernel.MS_NOSUID, "mode=0755")
    _step("staging", STAGING, posix.chdir, STAGING)
    _step("staging", "newroot", posix.mkdir, "newroot", 0o755)
    _step("staging", "newroot", kernel.mount, "newroot", "newroot", None, kernel.MS_SILENT | kernel.MS_BIND | kernel.MS_REC)
    _step("staging", "oldroot", posix.mkdir, "oldroot", 0o755)
    _step("staging", "scratch", posix.mkdir, ops.SCRATCH_DIR.lstrip("/"), 0o755)
    _step("staging", "scratch", _make_file, ops.SCRATCH_FILE.lstrip("/"))
    _step("pivot_root", STAGING, kernel.pivot_root, STAGING, "oldroot")
    _step("staging", "/", posix.chdir, "/")


def _make_file(path: str) -> None:
    posix.close(posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_CLOEXEC, 0o444))


def _detach_old_root() -> None:
    _step("detach old root", ops.OLDROOT, kernel.mount, "oldroot", "oldroot", None, kernel.MS_SILENT | kernel.MS_REC | kernel.MS_PRIVATE)
    _step("detach old root", ops.OLDROOT, kernel.umount2, "oldroot", kernel.MNT_DETACH)


def _switch_to_new_root() -> None:
    # pivot_root(".", ".") is legal: the kernel only checks that put_old is
    # reachable from new_root. runc and LXC switch roots the same way.
    old_root = _step("switch root", "/", posix.open, "/", posix.O_DIRECTORY | posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        _step("switch root", ops.NEWROOT, posix.chdir, ops.NEWROOT)
        _step("pivot_root", ops.NEWROOT, kernel.pivot_root, ".", ".")
        _step("switch root", "/", posix.fchdir, old_root)
        _step("switch root", "staging root", kernel.umount2, ".", kernel.MNT_DETACH)
        _step("switch root", "/", posix.chdir, "/")
    finally:
        posix.close(old_root)
