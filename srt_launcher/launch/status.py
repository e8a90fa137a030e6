"""The status records (SPEC §6; bubblewrap's --info-fd and --json-status-fd).

Written by the stub, one JSON object per line on the status fd (the info fd
gets bubblewrap's indented layout). No json module: it would import re on
the launch path; and this module itself is loaded only when a status fd is
given.
"""

import posix

from srt_launcher.errors import LauncherError
from srt_launcher.launch.report import End

# bubblewrap's keys, in its order; "mnt" comes from PID 1 (the stub stays in
# the host mount namespace), the others from the stub's own namespaces.
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "uts")


def json_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or 0xD800 <= ord(char) < 0xE000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _json_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json_string(key)}: {_json_value(item)}" for key, item in value.items()) + " }"
    return "null" if value is None else json_string(str(value))


def json_line(fields: dict) -> bytes:
    return (_json_value(fields) + "\n").encode("utf-8", "surrogateescape")


def info_document(fields: dict) -> bytes:
    """bubblewrap's --info-fd layout: one key per line, four spaces of indent."""
    lines = ",\n".join(f"    {json_string(key)}: {_json_value(value)}" for key, value in fields.items())
    return ("{\n" + lines + "\n}\n").encode()


def namespace_ids(names: list[str], mount_namespace: int | None, pid_namespace: int | None = None) -> dict[str, int]:
    """Inode numbers of the sandbox's namespaces, read from the stub's own
    (it is in each of them but the mount one; its pid_for_children is the
    sandbox's PID namespace), but for those PID 1 reported: its mount
    namespace, and its PID namespace (one made inside a joined one, --pidns,
    is not the stub's pid_for_children)."""
    ids = {}
    for name in NAMESPACES:
        if name not in names:
            continue
        if name == "mnt":
            if mount_namespace:
                ids["mnt-namespace"] = mount_namespace
            continue
        if name == "pid" and pid_namespace:
            ids["pid-namespace"] = pid_namespace
            continue
        path = "/proc/self/ns/" + ("pid_for_children" if name == "pid" else name)
        try:
            ids[f"{name}-namespace"] = posix.stat(path).st_ino
        except OSError:
            continue  # as bubblewrap: what cannot be read is not written
    return ids


def end_fields(code: int, end: "End | None", error: LauncherError | None) -> dict:
    if error is not None:
        message = error.reason or ""
        return {
            "error": {"step": error.step, "value": error.value, "message": message, "status": error.exit_code}
        }
    fields: dict = {"exit-code": code}
    if end is None:
        return fields
    fields["cause"] = end.cause
    if end.signal:
        fields["signal"] = end.signal
    if end.limit:
        fields["limit"] = end.limit
    fields.update(
        {"wall-time": round(end.wall, 6), "user-time": round(end.user, 6), "system-time": round(end.system, 6), "max-rss-kb": end.max_rss_kb}
    )
    return fields


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view) :]
