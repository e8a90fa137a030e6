"""Mount targets, resolved inside the new root and held as file descriptors.

A target path names a place in the sandbox being built, and that tree may
hold directories a workload can write: an earlier launch's (``--bind W W``
then ``W/cfg -> /oldroot/etc``), or a concurrent sandbox sharing the bind,
which can swap a component for a symlink at any moment. Two rules close
both attacks:

- Resolution happens inside the new root, as openat2(RESOLVE_IN_ROOT) would
  (which Python cannot call): each component is opened relative to its
  parent's descriptor with O_NOFOLLOW; a symlink is read and resolved by this
  code, an absolute one restarting at the new root, ``..`` stopping there.
  Nothing is ever resolved through ``/oldroot``.
- The result is an O_PATH descriptor, and the mount goes onto that
  descriptor (move_mount, or the /proc magic link), never onto a path looked
  up again: a swap after the walk changes nothing about where the mount lands.

Because this code follows the links, not the kernel, the kernel's own guard
for them is applied here: fs.protected_symlinks (may_follow_link in
fs/namei.c), whatever the host's sysctl says. In a sticky, world-writable
directory (a /tmp) a link is followed only if its owner is the follower or
the directory's owner. Without it, any local user's link in a /tmp that a
root caller binds would steer PID 1, which holds every capability, into
writing (``--file``) or chmod-ing (``--chmod``) any file of the host, where
bubblewrap's path walk meets that guard (and resolves an absolute link in
its staging root, where nothing is).

Missing components are created one directory descriptor at a time
(mkdirat, and O_CREAT|O_EXCL|O_NOFOLLOW for a file), so creation cannot be
redirected either.
"""

import errno
import posix

import _stat

from srt_launcher import kernel

# As the kernel's own path walk: a loop of symlinks fails with ELOOP.
_MAX_SYMLINKS = 40
_O_PATH = posix.O_PATH | posix.O_NOFOLLOW | posix.O_CLOEXEC

CREATE_DIR = "dir"
CREATE_FILE = "file"


class Follower:
    """Who follows the links: the inputs of the kernel's may_follow_link.

    ``uid``: the follower's (PID 1's) uid. ``unknown``: in a user namespace
    that does not map every uid, the overflow uid an unmapped owner reads as
    in stat(2); such an owner matches nobody, as it may be anyone (the
    kernel compares the real ids).
    """

    __slots__ = ("uid", "unknown")

    def __init__(self, uid: int, unknown: int | None = None) -> None:
        self.uid = uid
        self.unknown = unknown

    @classmethod
    def of_this_process(cls, proc_fd: int) -> "Follower":
        """This process as follower; ``proc_fd`` is a procfs where ``self`` is it."""
        if kernel.read_file("self/uid_map", proc_fd).split() == [b"0", b"0", b"4294967295"]:
            return cls(posix.geteuid())
        return cls(posix.geteuid(), int(kernel.read_file("sys/kernel/overflowuid", proc_fd)))

    def may_follow(self, directory: int, link: posix.stat_result) -> bool:
        parent = posix.fstat(directory)
        if not (parent.st_mode & _stat.S_ISVTX and parent.st_mode & _stat.S_IWOTH):
            return True
        if link.st_uid == self.unknown:
            return False
        return link.st_uid == self.uid or (parent.st_uid != self.unknown and parent.st_uid == link.st_uid)


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]


def open_in_root(
    root: str,
    dest: str,
    create: str | None = None,
    mode: int = 0o755,
    parent_mode: int = 0o755,
    follow: bool = True,
    follower: Follower | None = None,
) -> int:
    """An O_PATH descriptor of ``dest`` resolved inside the tree at ``root``.

    ``create``: CREATE_DIR or CREATE_FILE makes a missing last component of
    that kind with ``mode`` (missing parents get ``parent_mode``); None
    leaves ENOENT to the caller. ``follow``: whether a symlink as the last
    component is resolved (False for operations on the link itself).
    ``follower``: whose links may be followed in a sticky, world-writable
    directory (module docstring); None: the calling process.
    Raises OSError with the kernel's errno (EACCES for a link refused so).
    """
    if follower is None:
        follower = Follower(posix.geteuid())
    pending = _parts(dest)
    pending.reverse()
    stack = [posix.open(root, posix.O_PATH | posix.O_DIRECTORY | posix.O_CLOEXEC)]
    budget = _MAX_SYMLINKS
    try:
        while pending:
            name = pending.pop()
            if name == "..":
                if len(stack) > 1:
                    posix.close(stack.pop())
                continue
            last = not pending
            try:
                fd = posix.open(name, _O_PATH, dir_fd=stack[-1])
            except FileNotFoundError:
                if create is None:
                    raise
                _create(stack[-1], name, CREATE_DIR if not last else create, mode if last else parent_mode)
                budget = _spend(budget)
                pending.append(name)  # open what is there now (ours, or a racer's: resolved like any other)
                continue
            found = posix.fstat(fd)
            kind = _stat.S_IFMT(found.st_mode)
            if kind == _stat.S_IFLNK and (follow or not last):
                budget = _spend(budget)
                target = _read_link(stack[-1], name, fd, found, follower, dest)
                if target is None:
                    pending.append(name)  # replaced since it was opened: look again
                    continue
                if target.startswith("/"):
                    del stack[1:]  # an absolute link restarts at the new root, not the host's
                pending.extend(reversed(_parts(target)))
                continue
            if last:
                return fd
            if kind != _stat.S_IFDIR:
                posix.close(fd)
                raise OSError(errno.ENOTDIR, posix.strerror(errno.ENOTDIR), dest)
            stack.append(fd)
        return posix.dup(stack[-1])  # dest was "/", or ended in ".."
    finally:
        for fd in stack:
            posix.close(fd)


def open_parent_in_root(root: str, dest: str, parent_mode: int = 0o755, follower: Follower | None = None) -> tuple[int, str]:
    """The directory that will hold ``dest``'s last component (created if
    missing, resolved inside the root), and that component's name."""
    parts = _parts(dest)
    if not parts or parts[-1] == "..":
        raise OSError(errno.EINVAL, posix.strerror(errno.EINVAL), dest)
    parent = open_in_root(root, "/".join(parts[:-1]), CREATE_DIR, parent_mode, parent_mode, follower=follower)
    if not _stat.S_ISDIR(posix.fstat(parent).st_mode):
        posix.close(parent)
        raise OSError(errno.ENOTDIR, posix.strerror(errno.ENOTDIR), dest)
    return parent, parts[-1]


def _read_link(directory: int, name: str, fd: int, found: posix.stat_result, follower: Follower, dest: str) -> str | None:
    """The target of the symlink ``fd`` (closed here), None if ``name`` no
    longer holds it; EACCES if ``follower`` may not follow it."""
    try:
        if not _still_there(directory, name, found):
            return None
        if not follower.may_follow(directory, found):
            raise OSError(errno.EACCES, posix.strerror(errno.EACCES), dest)
        # The link whose owner was checked, not what the name holds now.
        return posix.readlink("", dir_fd=fd)
    finally:
        posix.close(fd)


def _still_there(directory: int, name: str, found: posix.stat_result) -> bool:
    try:
        now = posix.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (found.st_dev, found.st_ino)


def _spend(budget: int) -> int:
    if budget <= 0:
        raise OSError(errno.ELOOP, posix.strerror(errno.ELOOP))
    return budget - 1


def _create(directory: int, name: str, kind: str, mode: int) -> None:
    try:
        if kind == CREATE_DIR:
            posix.mkdir(name, mode, dir_fd=directory)
        else:
            flags = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC
            posix.close(posix.open(name, flags, mode, dir_fd=directory))
    except FileExistsError:
        pass  # made meanwhile: the caller opens and checks what is there
