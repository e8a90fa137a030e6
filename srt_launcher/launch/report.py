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

The status records themselves are launch/status.py's, loaded only when a
status fd is given.
"""

import os
import sys

import _socket

from srt_launcher.errors import LauncherError

MOUNT_NAMESPACE = b"N"
COMMAND_EXITED = b"C"
WORKER = b"W"
ERROR = b"E"
END = b"X"

# struct ucred: pid (int), uid, gid (unsigned int), native byte order.
_UCRED_SIZE = 12
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
    credentials = b"".join(value.to_bytes(4, sys.byteorder) for value in (os.getpid(), os.getuid(), os.getgid()))
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
            data, ancillary, _, _ = sock.recvmsg(_MAX_RECORD, _socket.CMSG_SPACE(_UCRED_SIZE))
        except (BlockingIOError, InterruptedError):
            return records
        if not data:
            return records
        sender = None
        for level, kind, value in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_CREDENTIALS and len(value) >= _UCRED_SIZE:
                sender = int.from_bytes(value[:4], sys.byteorder, signed=True)
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


def namespaces_of_pid1() -> bytes:
    """The payload of PID 1's MOUNT_NAMESPACE record: its mount and PID namespaces."""
    return b"%d %d" % (os.stat("/proc/self/ns/mnt").st_ino, os.stat("/proc/self/ns/pid").st_ino)


def parse_namespaces_of_pid1(payload: bytes) -> tuple[int | None, int | None]:
    parts = payload.split()
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None, None
    return int(parts[0]), int(parts[1])


