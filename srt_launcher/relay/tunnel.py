"""HTTP CONNECT through a proxy: ``srt-launcher connect`` (SPEC §3.3) and socat's ``PROXY:`` (§8).

One request, one parser of the response head, used two ways: blocking
(:func:`open_tunnel`, for ``connect`` and a socat ``PROXY:`` address opened
on its own) and inside the relay event loop (:class:`TunnelHandshake`, for
a listening socat address forwarding each connection through the proxy).

The target HOST comes from a repository URL or a command line someone else
wrote: it is checked (:func:`validate_host`) before any connection is made,
so no byte of a hostile value (CR/LF to inject headers, spaces to forge a
request line) ever reaches the proxy. The response head is read up to the
blank line and no further: bytes after it belong to the tunnel (the ssh
server's banner, typically, in the same segment) and stay in the socket.

Imports are C modules only: the socat front end is on the launch path (SPEC §4).
"""

import binascii

import _socket

from srt_launcher.errors import LauncherError, printable

HOST_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:[]-")
MAX_HOST_BYTES = 255
MAX_RESPONSE_HEAD = 8192
_HEAD_END = b"\r\n\r\n"


def host_problem(host: str) -> str | None:
    """Why HOST cannot be sent to a proxy, if it cannot."""
    # Per character, on the decoded str: undecodable argv bytes become
    # surrogates, which are outside the set too.
    if not 1 <= len(host) <= MAX_HOST_BYTES or not all(char in HOST_CHARACTERS for char in host):
        return f"HOST must be 1-{MAX_HOST_BYTES} characters of A-Z a-z 0-9 . _ : [ ] -"
    return None


def request(target: str, auth: str | None = None) -> bytes:
    """The CONNECT request for ``target`` (HOST:PORT, already checked), with Basic credentials if given."""
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if auth is not None:
        lines.append("Proxy-Authorization: Basic " + binascii.b2a_base64(auth.encode(), newline=False).decode("ascii"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class HeadParser:
    """Finds the end of the response head in what the socket holds, without consuming more.

    ``feed(peeked)`` takes every byte waiting in the socket (a MSG_PEEK) and
    returns how many to consume: all of them while the head goes on, up to
    the blank line once it is there (then ``done``). ``error`` is set if the
    head is too long, or once complete if the status is not 2xx; ``step``
    and ``value`` name the failure in messages.
    """

    def __init__(self, step: str, value: str, target: str) -> None:
        self.step = step
        self.value = value
        self.target = target
        self.head = b""
        self.done = False
        self.error: LauncherError | None = None

    def feed(self, peeked: bytes) -> int:
        if not peeked:
            self.error = LauncherError(self.step, self.value, "connection closed before the end of the response head")
            return 0
        # The terminator may straddle what was consumed before and this peek.
        seen = self.head + peeked
        end = seen.find(_HEAD_END, max(0, len(self.head) - len(_HEAD_END) + 1))
        if end >= 0 and end + len(_HEAD_END) <= MAX_RESPONSE_HEAD:
            used = end + len(_HEAD_END) - len(self.head)
            self.head = seen[: end + len(_HEAD_END)]
            self.done = True
            self._check_status()
            return used
        if len(seen) > MAX_RESPONSE_HEAD:
            self.error = LauncherError(self.step, self.value, f"response head longer than {MAX_RESPONSE_HEAD} bytes")
            return 0
        self.head = seen
        return len(peeked)

    def _check_status(self) -> None:
        status_line = self.head.split(b"\r\n", 1)[0].decode("latin-1")
        if not _is_success(status_line):
            self.error = LauncherError(f"{self.step} refused the tunnel to {self.target}", self.value, printable(status_line))


def _is_success(status_line: str) -> bool:
    parts = status_line.split(" ", 2)
    return (
        len(parts) >= 2
        and parts[0].startswith("HTTP/")
        and len(parts[1]) == 3
        and parts[1][0] == "2"
        and parts[1].isascii()
        and parts[1].isdigit()
    )


def open_tunnel(sock: _socket.socket, target: str, step: str, proxy_name: str, auth: str | None = None) -> None:
    """Blocking: send the CONNECT request on the connected ``sock`` and read
    the response head; raise LauncherError if the proxy refuses or fails."""
    parser = HeadParser(step, proxy_name, target)
    try:
        sock.sendall(request(target, auth))
        while not parser.done:
            used = parser.feed(sock.recv(MAX_RESPONSE_HEAD - len(parser.head) + len(_HEAD_END), _socket.MSG_PEEK))
            if parser.error is not None and not parser.done:
                break
            _consume(sock, used, parser)
    except OSError as err:
        raise LauncherError.from_os(step, proxy_name, err) from None
    if parser.error is not None:
        raise parser.error


def _consume(sock: _socket.socket, count: int, parser: HeadParser) -> None:
    data = sock.recv(count, _socket.MSG_WAITALL) if count else b""
    if len(data) != count:
        raise LauncherError(parser.step, parser.value, "connection closed in the middle of the response head")


class TunnelHandshake:
    """The same exchange inside the relay event loop (see loop.Handshake):
    ``request`` is sent once connected, ``feed`` gets peeked bytes."""

    def __init__(self, target: str, step: str, proxy_name: str, auth: str | None = None) -> None:
        self.request = request(target, auth)
        self.parser = HeadParser(step, proxy_name, target)

    @property
    def done(self) -> bool:
        return self.parser.done

    @property
    def error(self) -> LauncherError | None:
        return self.parser.error

    def feed(self, peeked: bytes) -> int:
        return self.parser.feed(peeked)
