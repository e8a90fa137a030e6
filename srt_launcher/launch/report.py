"""What the launch tells: the channel from PID 1 and the worker to the stub, and the status records.

The channel is a SOCK_SEQPACKET pair made by the stub before any fork (one
message per record, written with one call): PID 1 and the worker send
records, the stub reads them. Both ends are bare descriptors, written and
read with posix; the ``_socket`` module (whose import costs a launch more
than everything else here) is loaded only by a launch that needs the
records' senders, for its status or info fd. As in CPython's subprocess, a failure in a
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

import posix
import sys

from srt_launcher import kernel
from srt_launcher.errors import LauncherError

MOUNT_NAMESPACE = b"N"
COMMAND_EXITED = b"C"
WORKER = b"W"
ERROR = b"E"
END = b"X"

# struct ucred: pid (int), uid, gid (unsigned int), native byte order.
_UCRED_SIZE = 12
_MAX_RECORD = 65536


def channel(floor: int = 3, senders: bool = False) -> tuple[int, int]:
    """(stub end, children's end), numbered from ``floor`` (launch/pid1.py,
    above_caller_fds), the stub's end non-blocking; with ``senders``, the
    stub's end accepts credentials (see ``receive``)."""
    ours, theirs = (kernel.keep_above(end, floor) for end in kernel.socketpair_seqpacket())
    if senders:
        import _socket

        end = _socket.socket(fileno=ours)
        try:
            end.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
        finally:
            end.detach()
    posix.set_blocking(ours, False)
    return ours, theirs


def send(fd: int, kind: bytes, payload: bytes = b"") -> None:
    """Send one record (one write: one message); a stub that is gone cannot be told anything."""
    try:
        posix.write(fd, kind + payload)
    except OSError:
        pass


def send_error(fd: int, err: LauncherError) -> None:
    send(fd, ERROR, err.encode())


def send_worker_started(fd: int) -> None:
    import _socket

    credentials = b"".join(value.to_bytes(4, sys.byteorder) for value in (posix.getpid(), posix.getuid(), posix.getgid()))
    end = _socket.socket(fileno=fd)
    try:
        end.sendmsg([WORKER], [(_socket.SOL_SOCKET, _socket.SCM_CREDENTIALS, credentials)])
    except OSError:
        pass
    finally:
        end.detach()


def receive(fd: int, block: bool = False, senders: bool = False) -> list[tuple[bytes, bytes, int | None]]:
    """Every record waiting: (kind, payload, sender pid or None); with
    ``block``, the next record (on a blocking end), or none at EOF.

    With ``senders`` (a channel made with them), each record comes with its
    sender's pid, numbered in the stub's PID namespace: the kernel attaches
    it to every message, whether the sender sent credentials or not.
    """
    if senders:
        return _receive_with_senders(fd, block)
    records: list[tuple[bytes, bytes, int | None]] = []
    while not (block and records):
        try:
            data = posix.read(fd, _MAX_RECORD)
        except (BlockingIOError, InterruptedError):
            return records
        if not data:
            return records
        records.append((data[:1], data[1:], None))
    return records


def _receive_with_senders(fd: int, block: bool) -> list[tuple[bytes, bytes, int | None]]:
    import _socket

    end = _socket.socket(fileno=fd)
    records: list[tuple[bytes, bytes, int | None]] = []
    try:
        while not (block and records):
            try:
                data, ancillary, _, _ = end.recvmsg(_MAX_RECORD, _socket.CMSG_SPACE(_UCRED_SIZE))
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
    finally:
        end.detach()


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
    return b"%d %d" % (posix.stat("/proc/self/ns/mnt").st_ino, posix.stat("/proc/self/ns/pid").st_ino)


def parse_namespaces_of_pid1(payload: bytes) -> tuple[int | None, int | None]:
    parts = payload.split()
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None, None
    return int(parts[0]), int(parts[1])


