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

Missing components are created one directory descriptor at a time
(mkdirat, and O_CREAT|O_EXCL|O_NOFOLLOW for a file), so creation cannot be
redirected either.
"""

import errno
import os
import stat

# As the kernel's own path walk: a loop of symlinks fails with ELOOP.
_MAX_SYMLINKS = 40
_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

CREATE_DIR = "dir"
CREATE_FILE = "file"


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]


def open_in_root(
    root: str,
    dest: str,
    create: str | None = None,
    mode: int = 0o755,
    parent_mode: int = 0o755,
    follow: bool = True,
) -> int:
    """An O_PATH descriptor of ``dest`` resolved inside the tree at ``root``.

    ``create``: CREATE_DIR or CREATE_FILE makes a missing last component of
    that kind with ``mode`` (missing parents get ``parent_mode``); None
    leaves ENOENT to the caller. ``follow``: whether a symlink as the last
    component is resolved (False for operations on the link itself).
    Raises OSError with the kernel's errno.
    """
    pending = _parts(dest)
    pending.reverse()
    stack = [os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
    budget = _MAX_SYMLINKS
    try:
        while pending:
            name = pending.pop()
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not pending
            try:
                fd = os.open(name, _O_PATH, dir_fd=stack[-1])
            except FileNotFoundError:
                if create is None:
                    raise
                _create(stack[-1], name, CREATE_DIR if not last else create, mode if last else parent_mode)
                budget = _spend(budget)
                pending.append(name)  # open what is there now (ours, or a racer's: resolved like any other)
                continue
            kind = stat.S_IFMT(os.fstat(fd).st_mode)
            if kind == stat.S_IFLNK and (follow or not last):
                os.close(fd)
                budget = _spend(budget)
                target = _read_link(stack[-1], name)
                if target is None:
                    pending.append(name)  # replaced since it was opened: look again
                    continue
                if target.startswith("/"):
                    del stack[1:]  # an absolute link restarts at the new root, not the host's
                pending.extend(reversed(_parts(target)))
                continue
            if last:
                return fd
            if kind != stat.S_IFDIR:
                os.close(fd)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), dest)
            stack.append(fd)
        return os.dup(stack[-1])  # dest was "/", or ended in ".."
    finally:
        for fd in stack:
            os.close(fd)


def open_parent_in_root(root: str, dest: str, parent_mode: int = 0o755) -> tuple[int, str]:
    """The directory that will hold ``dest``'s last component (created if
    missing, resolved inside the root), and that component's name."""
    parts = _parts(dest)
    if not parts or parts[-1] == "..":
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), dest)
    parent = open_in_root(root, "/".join(parts[:-1]), CREATE_DIR, parent_mode, parent_mode)
    if not stat.S_ISDIR(os.fstat(parent).st_mode):
        os.close(parent)
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), dest)
    return parent, parts[-1]


def _spend(budget: int) -> int:
    if budget <= 0:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
    return budget - 1


def _create(directory: int, name: str, kind: str, mode: int) -> None:
    try:
        if kind == CREATE_DIR:
            os.mkdir(name, mode, dir_fd=directory)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(name, flags, mode, dir_fd=directory))
    except FileExistsError:
        pass  # made meanwhile: the caller opens and checks what is there


def _read_link(directory: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=directory)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.EINVAL):  # gone, or no longer a symlink
            return None
        raise
