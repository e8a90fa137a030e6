"""What the launch tells: the channel from PID 1 and the worker to the stub, and the status records.

The channel is a SOCK_SEQPACKET pair made by the stub before any fork (one
message per record, written with one call): PID 1 and the worker send
records, the stub reads them. As in CPython's subprocess, a failure in a
child comes back as data, so an exec failure is never confused with the
program's own exit status, and only the stub formats messages.

Records: ``N<inode>`` PID 1's new mount namespace; ``W`` the worker exists
(sent with SCM_CREDENTIALS, so the kernel gives the stub the worker's pid as
the caller's PID namespace numbers it); ``C<status>`` the command
ended with this exit status (a lingering PID 1 goes on reaping);
``E<error>`` a LauncherError;
``X<fields>`` how the sandbox ended, with its resource usage.

The status records (SPEC §6, bubblewrap's --info-fd and --json-status-fd)
are written by the stub, one JSON object per line on the status fd. No json
module: it would import re on the launch path.
"""

import os
import struct

import _socket

from srt_launcher.errors import LauncherError

MOUNT_NAMESPACE = b"N"
COMMAND_EXITED = b"C"
WORKER = b"W"
ERROR = b"E"
END = b"X"

# bubblewrap's keys, in its order; "mnt" comes from PID 1 (the stub stays in
# the host mount namespace), the others from the stub's own namespaces.
NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "uts")

_UCRED = struct.Struct("iII")
_MAX_RECORD = 65536


def channel(floor: int = 3) -> tuple[_socket.socket, _socket.socket]:
    """(stub end, children's end), numbered from ``floor`` (launch/pid1.py,
    above_caller_fds); the stub's end accepts credentials."""
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    if min(ours.fileno(), theirs.fileno()) < floor:
        from srt_launcher import kernel

        ours, theirs = (_socket.socket(fileno=kernel.keep_above(end.detach(), floor)) for end in (ours, theirs))
    ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
    ours.setblocking(False)
    return ours, theirs


def send(sock: _socket.socket, kind: bytes, payload: bytes = b"") -> None:
    """Send one record; a stub that is gone cannot be told anything."""
    try:
        sock.send(kind + payload)
    except OSError:
        pass


def send_error(sock: _socket.socket, err: LauncherError) -> None:
    send(sock, ERROR, err.encode())


def send_worker_started(sock: _socket.socket) -> None:
    credentials = _UCRED.pack(os.getpid(), os.getuid(), os.getgid())
    try:
        sock.sendmsg([WORKER], [(_socket.SOL_SOCKET, _socket.SCM_CREDENTIALS, credentials)])
    except OSError:
        pass


def receive(sock: _socket.socket, block: bool = False) -> list[tuple[bytes, bytes, int | None]]:
    """Every record waiting: (kind, payload, sender pid or None); with
    ``block``, the next record (a blocking socket), or none at EOF.

    The stub's end has SO_PASSCRED: the kernel attaches every sender's
    pid, numbered in the stub's PID namespace, whether it sent them or not.
    """
    records: list[tuple[bytes, bytes, int | None]] = []
    while not (block and records):
        try:
            data, ancillary, _, _ = sock.recvmsg(_MAX_RECORD, _socket.CMSG_SPACE(_UCRED.size))
        except (BlockingIOError, InterruptedError):
            return records
        if not data:
            return records
        sender = None
        for level, kind, value in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_CREDENTIALS and len(value) >= _UCRED.size:
                sender = _UCRED.unpack(value[: _UCRED.size])[0]
        records.append((data[:1], data[1:], sender))
    return records


class End:
    """How the sandbox ended, as PID 1 saw it (SPEC §6), with PID 1's exit status ``code``."""

    __slots__ = ("cause", "signal", "limit", "wall", "user", "system", "max_rss_kb", "code")

    def __init__(self, cause: str, signal: int, limit: str, wall: float, user: float, system: float, max_rss_kb: int, code: int) -> None:
        self.cause = cause
        self.signal = signal
        self.limit = limit
        self.wall = wall
        self.user = user
        self.system = system
        self.max_rss_kb = max_rss_kb
        self.code = code

    def encode(self) -> bytes:
        fields = (self.cause, self.signal, self.limit or "-", f"{self.wall:.6f}", f"{self.user:.6f}", f"{self.system:.6f}", self.max_rss_kb, self.code)
        return " ".join(str(field) for field in fields).encode()

    @classmethod
    def decode(cls, data: bytes) -> "End | None":
        parts = data.decode("ascii", "replace").split()
        if len(parts) != 8:
            return None
        try:
            limit = "" if parts[2] == "-" else parts[2]
            return cls(parts[0], int(parts[1]), limit, float(parts[3]), float(parts[4]), float(parts[5]), int(parts[6]), int(parts[7]))
        except ValueError:
            return None


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


def namespaces_of_pid1() -> bytes:
    """The payload of PID 1's MOUNT_NAMESPACE record: its mount and PID namespaces."""
    return b"%d %d" % (os.stat("/proc/self/ns/mnt").st_ino, os.stat("/proc/self/ns/pid").st_ino)


def parse_namespaces_of_pid1(payload: bytes) -> tuple[int | None, int | None]:
    parts = payload.split()
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None, None
    return int(parts[0]), int(parts[1])


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
            ids[f"{name}-namespace"] = os.stat(path).st_ino
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
        view = view[os.write(fd, view) :]
