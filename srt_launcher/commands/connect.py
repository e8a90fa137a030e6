"""``srt-launcher connect``: ssh ProxyCommand through an HTTP CONNECT proxy (SPEC §3.3).

HOST comes from a repository URL, i.e. from whoever wrote the repository
config: it is validated before any connection is made, so no byte of a
hostile value (CR/LF to inject headers, spaces to forge a request line)
ever reaches the proxy.
"""

from __future__ import annotations

import signal
import socket

import click

from srt_launcher.commands.relay import parse_ipv4_endpoint, parse_port
from srt_launcher.errors import SETUP_FAILED, LauncherError, printable
from srt_launcher.relay.pump import pump

CONNECT_USAGE = "usage: srt-launcher connect HOST PORT --proxy IPV4:PORT  (see srt-launcher connect --help)"
HOST_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:[]-")
MAX_HOST_BYTES = 255
MAX_RESPONSE_HEAD = 8192
_HEAD_END = b"\r\n\r\n"

HELP = f"""Open a tunnel to HOST:PORT through the HTTP CONNECT proxy at --proxy, then
copy stdin to the tunnel and the tunnel to stdout until both directions end.
Meant for ssh: -o 'ProxyCommand=srt-launcher connect %h %p --proxy 127.0.0.1:3128'.

\b
HOST: 1-{MAX_HOST_BYTES} characters of A-Z a-z 0-9 . _ : [ ] - (checked before
any connection is made). PORT: 1-65535. The proxy must answer 2xx with a
response head of at most {MAX_RESPONSE_HEAD} bytes; bytes after the head belong to the tunnel.

\b
Exit status: 0 when both directions ended; 2 usage error (bad HOST, PORT or
--proxy; nothing was sent); {SETUP_FAILED} the proxy could not be reached, refused
the tunnel (its status line is printed) or sent an invalid response.
"""


def validate_host(host: str) -> str:
    # Per character, on the decoded str: undecodable argv bytes become
    # surrogates, which are outside the set too.
    if not 1 <= len(host) <= MAX_HOST_BYTES or not all(char in HOST_CHARACTERS for char in host):
        raise LauncherError.usage_error(
            f"connect: HOST must be 1-{MAX_HOST_BYTES} characters of A-Z a-z 0-9 . _ : [ ] -", host, CONNECT_USAGE
        )
    return host


@click.command("connect", help=HELP, short_help="Tunnel stdin/stdout through an HTTP CONNECT proxy.")
@click.argument("host", metavar="HOST")
@click.argument("port", metavar="PORT")
@click.option("--proxy", "proxy", required=True, metavar="IPV4:PORT", help="The HTTP proxy (literal IPv4 address).")
def connect(host: str, port: str, proxy: str) -> None:
    target = f"{validate_host(host)}:{parse_port(port, 'connect: PORT', CONNECT_USAGE)}"
    proxy_address = parse_ipv4_endpoint(proxy, "connect: --proxy", CONNECT_USAGE)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    tunnel = _open_tunnel(proxy_address, target)
    pump(0, 1, tunnel.fileno(), tunnel.fileno())
    raise SystemExit(0)


def _open_tunnel(proxy: tuple[str, int], target: str) -> socket.socket:
    proxy_text = f"{proxy[0]}:{proxy[1]}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # interactive ssh keystrokes
    try:
        sock.connect(proxy)
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode("ascii"))
        head = read_response_head(sock)
    except OSError as err:
        sock.close()
        raise LauncherError.from_os("connect: proxy", proxy_text, err) from None
    except LauncherError:
        sock.close()
        raise
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    if not _is_success(status_line):
        sock.close()
        raise LauncherError("connect: proxy refused the tunnel to " + target, proxy_text, printable(status_line))
    return sock


def read_response_head(sock: socket.socket) -> bytes:
    """Consume exactly the response head, up to and including the blank line.

    The proxy may send tunnel bytes in the same segment as its head (the ssh
    server's banner, typically); they must stay in the socket for the pump.
    MSG_PEEK finds the end of the head, then only the head is consumed.
    """
    head = b""
    while True:
        peeked = sock.recv(MAX_RESPONSE_HEAD - len(head) + len(_HEAD_END), socket.MSG_PEEK)
        if not peeked:
            raise LauncherError("connect: proxy", None, "connection closed before the end of the response head")
        # The terminator may straddle what was consumed before and this peek.
        seen = head + peeked
        end = seen.find(_HEAD_END, max(0, len(head) - len(_HEAD_END) + 1))
        if end >= 0:
            length = end + len(_HEAD_END)
            if length > MAX_RESPONSE_HEAD:
                break
            head += _recv_exactly(sock, length - len(head))
            return head
        if len(seen) > MAX_RESPONSE_HEAD:
            break
        head += _recv_exactly(sock, len(peeked))
    raise LauncherError("connect: proxy", None, f"response head longer than {MAX_RESPONSE_HEAD} bytes")


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = sock.recv(count, socket.MSG_WAITALL)
    if len(data) != count:
        raise LauncherError("connect: proxy", None, "connection closed in the middle of the response head")
    return data


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

