"""The filesystem of a sandbox, as the Python API spells it (SPEC §9).

A sandbox starts from an empty root; ``Sandbox(mounts=[...])`` adds these in
order, exactly like the ``run`` options of the same names (SPEC §2.4, §6),
then the root is made read-only (only a Tmpfs or a Bind is writable)::

    RoBind("/usr")                    # the host's /usr, read-only
    Bind("/srv/out", "/out")          # read-write
    DevBind("/dev/dri")               # device nodes usable
    Tmpfs("/tmp"), Dev(), Proc()      # a fresh tmpfs, a minimal /dev, the sandbox's /proc
    Dir("/work"), Symlink("usr/lib", "/lib"), File(b"data", "/etc/app.conf")

Each class is an immutable value checked when made: paths are absolute
strings without NUL bytes (normalised, so ``/a/../b`` is ``/b``); a bad
value raises ``ValueError`` naming the class and the value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from srt_launcher import sandbox


def absolute_path(value: object, what: str) -> str:
    """``value`` (str or os.PathLike) as a normalised absolute path, else ValueError."""
    try:
        path = os.fspath(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what}: expected a path, got {value!r}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if "\0" in path:
        raise ValueError(f"{what}: path contains a NUL byte: {path!r}")
    if not path.startswith("/"):
        raise ValueError(f"{what}: path must be absolute: {path!r}")
    normalised = os.path.normpath(path)
    # POSIX keeps a leading "//" (implementation-defined); the kernel does not.
    return "/" + normalised.lstrip("/")


class Mount:
    """Base of the mount classes: one operation, applied in order."""

    __slots__ = ()

    def to_engine(self) -> sandbox.Mount:  # pragma: no cover - every subclass has one
        raise NotImplementedError


@dataclass(frozen=True)
class _BindBase(Mount):
    src: str
    dest: str | None = None

    _KIND = sandbox.BIND

    def __post_init__(self) -> None:
        name = type(self).__name__
        src = absolute_path(self.src, f"{name} src")
        object.__setattr__(self, "src", src)
        object.__setattr__(self, "dest", src if self.dest is None else absolute_path(self.dest, f"{name} dest"))

    def to_engine(self) -> sandbox.Mount:
        return sandbox.Mount(self._KIND, self.dest, self.src)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Bind(_BindBase):
    """The host's ``src`` at ``dest`` (default: the same path), read-write, nosuid, nodev.

    The source must exist when the sandbox is launched (else the launch
    fails with ``Cause.SETUP_FAILED``, the step naming the path).
    """

    _KIND = sandbox.BIND


@dataclass(frozen=True)
class RoBind(_BindBase):
    """The host's ``src`` at ``dest``, read-only (every mount below it too), nosuid, nodev."""

    _KIND = sandbox.RO_BIND


@dataclass(frozen=True)
class DevBind(_BindBase):
    """Like :class:`Bind`, but device nodes under it work (GPUs: ``/dev/dri``)."""

    _KIND = sandbox.DEV_BIND


@dataclass(frozen=True)
class _AtBase(Mount):
    dest: str

    _KIND = sandbox.TMPFS

    def __post_init__(self) -> None:
        object.__setattr__(self, "dest", absolute_path(self.dest, type(self).__name__))

    def to_engine(self) -> sandbox.Mount:
        return sandbox.Mount(self._KIND, self.dest)


@dataclass(frozen=True)
class Tmpfs(_AtBase):
    """A fresh, empty tmpfs at ``dest`` (mode 0755, nosuid, nodev), gone with the sandbox."""

    _KIND = sandbox.TMPFS


@dataclass(frozen=True)
class Dir(_AtBase):
    """An empty directory at ``dest`` (0755), in whatever holds it (read-only in the root)."""

    _KIND = sandbox.DIR


@dataclass(frozen=True)
class Dev(_AtBase):
    """A minimal /dev: null zero full random urandom tty, pts, shm, the fd links."""

    dest: str = "/dev"
    _KIND = sandbox.DEV


@dataclass(frozen=True)
class Proc(_AtBase):
    """The procfs of the sandbox's own PID namespace (it sees only its processes)."""

    dest: str = "/proc"
    _KIND = sandbox.PROC


@dataclass(frozen=True)
class Symlink(Mount):
    """A symbolic link at ``dest`` pointing to ``target`` (relative or absolute, as written)."""

    target: str
    dest: str

    def __post_init__(self) -> None:
        target = os.fspath(self.target)
        if not isinstance(target, str) or not target or "\0" in target:
            raise ValueError(f"Symlink target: expected a non-empty path without NUL bytes, got {self.target!r}")
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "dest", absolute_path(self.dest, "Symlink dest"))

    def to_engine(self) -> sandbox.Mount:
        return sandbox.Mount(sandbox.SYMLINK, self.dest, self.target)


@dataclass(frozen=True)
class File(Mount):
    """A read-only file at ``dest`` holding ``data`` (a configuration, a script to run)."""

    data: bytes
    dest: str

    def __post_init__(self) -> None:
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise ValueError(f"File data: expected bytes, got {type(self.data).__name__}")
        object.__setattr__(self, "data", bytes(self.data))
        object.__setattr__(self, "dest", absolute_path(self.dest, "File dest"))

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 40 else self.data[:40] + b"..."
        return f"File({shown!r} ({len(self.data)} bytes), {self.dest!r})"

    def to_engine(self) -> sandbox.Mount:
        # Readable by the workload whatever its uid, and bound read-only.
        return sandbox.Mount(sandbox.RO_BIND_DATA, self.dest, data=self.data, perms=0o444)
