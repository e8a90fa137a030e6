"""``srt-launcher connect``: ssh ProxyCommand through an HTTP CONNECT proxy (SPEC §3.3).

HOST comes from a repository URL, i.e. from whoever wrote the repository
config: it is validated before any connection is made (relay/tunnel.py, the
CONNECT exchange shared with the socat front end's ``PROXY:`` address).
"""

from __future__ import annotations

import signal
import socket

import click

from srt_launcher.commands.relay import parse_ipv4_endpoint, parse_port
from srt_launcher.errors import SETUP_FAILED, LauncherError
from srt_launcher.relay import tunnel
from srt_launcher.relay.pump import pump

CONNECT_USAGE = "usage: srt-launcher connect HOST PORT --proxy IPV4:PORT  (see srt-launcher connect --help)"
MAX_HOST_BYTES = tunnel.MAX_HOST_BYTES
MAX_RESPONSE_HEAD = tunnel.MAX_RESPONSE_HEAD

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
    problem = tunnel.host_problem(host)
    if problem:
        raise LauncherError.usage_error(f"connect: {problem}", host, CONNECT_USAGE)
    return host


@click.command("connect", help=HELP, short_help="Tunnel stdin/stdout through an HTTP CONNECT proxy.")
@click.argument("host", metavar="HOST")
@click.argument("port", metavar="PORT")
@click.option("--proxy", "proxy", required=True, metavar="IPV4:PORT", help="The HTTP proxy (literal IPv4 address).")
def connect(host: str, port: str, proxy: str) -> None:
    target = f"{validate_host(host)}:{parse_port(port, 'connect: PORT', CONNECT_USAGE)}"
    proxy_address = parse_ipv4_endpoint(proxy, "connect: --proxy", CONNECT_USAGE)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    sock = _open_tunnel(proxy_address, target)
    pump(0, 1, sock.fileno(), sock.fileno())
    raise SystemExit(0)


def _open_tunnel(proxy: tuple[str, int], target: str) -> socket.socket:
    proxy_text = f"{proxy[0]}:{proxy[1]}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # interactive ssh keystrokes
    try:
        sock.connect(proxy)
    except OSError as err:
        sock.close()
        raise LauncherError.from_os("connect: proxy", proxy_text, err) from None
    try:
        tunnel.open_tunnel(sock, target, "connect: proxy", proxy_text)
    except LauncherError:
        sock.close()
        raise
    return sock
