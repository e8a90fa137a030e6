"""What the launch path needs of ``os.py``, on ``posix`` alone.

``os`` is a Python module over the C module ``posix``: the functions the
launcher calls (open, fork, execve, mount's neighbours) are ``posix``'s own,
re-exported. Importing ``os`` itself costs a launch about a millisecond, more
than anything else the launcher imports: it builds ``os.environ`` on the
collections ABCs, and brings ``posixpath``, ``genericpath`` and
``_collections_abc`` along (docs/performance.md). The modules of the launch
path (the engine, the ``run`` and bubblewrap front ends, the in-sandbox
relays) therefore call ``posix`` directly, and take from here the few pieces
``os.py`` writes in Python: path strings, the caller's environment, and the
real path of a file. A test asserts that a launch never imports ``os``.

Path strings are handled as ``posixpath`` handles them (the same results for
the same strings); unit tests compare the two.
"""

import posix
import sys

_ENCODING = sys.getfilesystemencoding()
_ERRORS = sys.getfilesystemencodeerrors()


def fsencode(name: str | bytes) -> bytes:
    """``os.fsencode``: a str as the kernel sees it (undecodable bytes survive as surrogates)."""
    return name if isinstance(name, bytes) else name.encode(_ENCODING, _ERRORS)


def fsdecode(name: str | bytes) -> str:
    """``os.fsdecode``."""
    return name.decode(_ENCODING, _ERRORS) if isinstance(name, bytes) else name


def environ() -> dict[str, str]:
    """The process's environment as ``os.environ`` would hold it (a copy)."""
    return {fsdecode(key): fsdecode(value) for key, value in posix.environ.items()}


def unsetenv(name: str) -> None:
    """Remove ``name`` from the environment (``del os.environ[name]``)."""
    posix.environ.pop(fsencode(name), None)
    posix.unsetenv(name)


def join(head: str, *tails: str) -> str:
    """``os.path.join``."""
    path = head
    for tail in tails:
        if tail.startswith("/"):
            path = tail
        elif not path or path.endswith("/"):
            path += tail
        else:
            path += "/" + tail
    return path


def dirname(path: str) -> str:
    """``os.path.dirname``."""
    head = path[: path.rfind("/") + 1]
    if head and head != "/" * len(head):
        head = head.rstrip("/")
    return head


def basename(path: str) -> str:
    """``os.path.basename``."""
    return path[path.rfind("/") + 1 :]


def normpath(path: str) -> str:
    """``os.path.normpath``: no symlink is read, ``a/..`` is simply dropped."""
    if not path:
        return "."
    # POSIX leaves the meaning of exactly two leading slashes to the system:
    # posixpath keeps them, three or more become one.
    leading = 2 if path.startswith("//") and not path.startswith("///") else 1 if path.startswith("/") else 0
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part != ".." or (not leading and not parts) or (parts and parts[-1] == ".."):
            parts.append(part)
        elif parts:
            parts.pop()
    result = "/" * leading + "/".join(parts)
    return result or "."


def abspath(path: str) -> str:
    """``os.path.abspath``."""
    return normpath(path if path.startswith("/") else join(posix.getcwd(), path))


def exists(path: str) -> bool:
    """``os.path.exists``."""
    try:
        posix.stat(path)
    except (OSError, ValueError):
        return False
    return True


def lexists(path: str) -> bool:
    """``os.path.lexists``."""
    try:
        posix.lstat(path)
    except (OSError, ValueError):
        return False
    return True


def realpath(path: str) -> str:
    """``os.path.realpath(path, strict=True)``: the path of the file ``path``
    names, every symlink followed, as the kernel resolves it; OSError if
    there is no such file.

    The kernel's own answer (the file opened, its /proc/self/fd link read)
    costs a few syscalls where ``posixpath`` reads every component. That
    answer is a path only where it names, from this process's root, the
    file that was opened: the link's text is the file's path within its own
    mount namespace, so a file reached through /proc/PID/root of a process
    in another one (a container whose relative symlink picks any name it
    likes) reads as the host file of that name; a /proc that is not procfs
    can say anything. Otherwise, and without a usable /proc (a sandbox with
    none), ``os.path`` does it, as it always did.
    """
    fd = posix.open(path, posix.O_PATH | posix.O_CLOEXEC)
    try:
        try:
            resolved = posix.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            resolved = ""
        if resolved.startswith("/") and not resolved.endswith(" (deleted)") and _names(resolved, fd):
            return resolved
    finally:
        posix.close(fd)
    import os.path

    return os.path.realpath(path, strict=True)


def _names(path: str, fd: int) -> bool:
    """Whether ``path`` is, from this process's root, the file open at ``fd``."""
    try:
        found, opened = posix.stat(path), posix.fstat(fd)
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)
