"""Reading /proc/self/mountinfo: what bubblewrap's bind-mount.c does before a remount.

``MS_BIND`` ignores ro/nosuid/nodev, so after every bind the launcher remounts
the bind and each submount under it. To do that it must know, for each of
those mounts, the flags it already carries (so they are kept, e.g. a ro
submount stays ro under ``--bind``) and whether it is reachable at all.
"""

import os

from srt_launcher import kernel

# Per-mount options (mountinfo field 6) that are also MS_* remount flags.
# Atime flags are left out on purpose: a bind remount that names none of them
# preserves them, which is the only safe choice where they are locked.
_OPTION_FLAGS = {
    "ro": kernel.MS_RDONLY,
    "nosuid": kernel.MS_NOSUID,
    "nodev": kernel.MS_NODEV,
    "noexec": kernel.MS_NOEXEC,
    "nosymfollow": kernel.MS_NOSYMFOLLOW,
}


class MountEntry:
    __slots__ = ("mount_id", "parent_id", "mount_point", "flags")

    def __init__(self, mount_id: int, parent_id: int, mount_point: str, flags: int) -> None:
        self.mount_id = mount_id
        self.parent_id = parent_id
        self.mount_point = mount_point
        self.flags = flags

    def __repr__(self) -> str:
        return f"MountEntry({self.mount_id}, {self.parent_id}, {self.mount_point!r}, {self.flags:#x})"


def unescape(field: str) -> str:
    """Undo the kernel's octal escaping (``\\040`` space, ``\\011`` tab, ``\\012`` newline, ``\\134`` backslash)."""
    if "\\" not in field:
        return field
    raw = field.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        octal = raw[i + 1 : i + 4]
        if raw[i] == 0x5C and len(octal) == 3 and all(0x30 <= c <= 0x37 for c in octal):
            out.append(int(octal, 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def option_flags(options: str) -> int:
    flags = 0
    for option in options.split(","):
        flags |= _OPTION_FLAGS.get(option, 0)
    return flags


def parse(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 6:
            continue
        entries.append(MountEntry(int(fields[0]), int(fields[1]), unescape(fields[4]), option_flags(fields[5])))
    return entries


def read(proc_fd: int) -> list[MountEntry]:
    """mountinfo of the calling process, through a /proc handle opened before the pivot."""
    fd = os.open("self/mountinfo", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return parse(b"".join(chunks).decode("utf-8", "surrogateescape"))


def kernel_path(path: str, proc_fd: int) -> str:
    """The path as mountinfo spells it.

    mount(2) resolves symlinks in its target, so the entry is found under the
    resolved path; and on case-insensitive filesystems the dcache may spell it
    differently from what we asked, so the kernel's own spelling is read back
    from an O_PATH descriptor (as bubblewrap does).
    """
    resolved = os.path.realpath(path)
    fd = os.open(resolved, os.O_PATH | os.O_CLOEXEC)
    try:
        return os.readlink(f"self/fd/{fd}", dir_fd=proc_fd)
    finally:
        os.close(fd)


def _is_under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _is_ancestor(candidate: MountEntry, entry: MountEntry, by_id: dict[int, MountEntry]) -> bool:
    seen = set()
    current = by_id.get(entry.parent_id)
    while current is not None and current.mount_id not in seen:
        if current.mount_id == candidate.mount_id:
            return True
        seen.add(current.mount_id)
        current = by_id.get(current.parent_id)
    return False


def bind_and_submounts(entries: list[MountEntry], mount_point: str) -> list[MountEntry]:
    """The mount at ``mount_point`` (the topmost one) followed by its reachable submounts.

    Submounts are found through parent ids, not path prefixes: a prefix match
    would pick up unrelated mounts of another tree. A submount covered by a
    later mount at the same place or above it (not one of its ancestors) is
    unreachable by path; remounting "its" path would change the covering
    mount with the wrong flags, so it is left out.
    """
    top = None
    for entry in entries:
        if entry.mount_point == mount_point:
            top = entry
    if top is None:
        return []
    by_id = {entry.mount_id: entry for entry in entries}
    children: dict[int, list[MountEntry]] = {}
    for entry in entries:
        if entry.mount_id != entry.parent_id:
            children.setdefault(entry.parent_id, []).append(entry)
    order = {entry.mount_id: index for index, entry in enumerate(entries)}
    found = []
    stack = list(children.get(top.mount_id, ()))
    while stack:
        entry = stack.pop()
        found.append(entry)
        stack.extend(children.get(entry.mount_id, ()))
    found.sort(key=lambda entry: order[entry.mount_id])
    reachable = [
        entry
        for index, entry in enumerate(found)
        if not any(
            _is_under(entry.mount_point, later.mount_point) and not _is_ancestor(later, entry, by_id)
            for later in found[index + 1 :]
        )
    ]
    return [top] + reachable


def _mount_id_of_fd(fd: int, proc_fd: int) -> int:
    info = os.open(f"self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    try:
        text = os.read(info, 4096).decode("ascii", "replace")
    finally:
        os.close(info)
    for line in text.splitlines():
        if line.startswith("mnt_id:"):
            return int(line.split()[1])
    raise OSError(2, "no mnt_id in fdinfo")


def is_mount_root(fd: int, proc_fd: int) -> bool:
    """Whether the object ``fd`` refers to is the root of the mount it is on.

    fdinfo names the fd's mount; mountinfo says where that mount is mounted.
    """
    mount_id = _mount_id_of_fd(fd, proc_fd)
    path = os.readlink(f"self/fd/{fd}", dir_fd=proc_fd)
    for entry in read(proc_fd):
        if entry.mount_id == mount_id:
            return entry.mount_point == path
    return False
