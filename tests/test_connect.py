"""``srt-launcher connect`` (SPEC §3.3): hostile-input checks, the CONNECT exchange, the tunnel.

Fake proxies are sockets in this test process on 127.0.0.1; the refusal
and the end-to-end tunnel go through a real tinyproxy. Nothing is mocked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest

import peers
from conftest import Launcher

REFUSED_EXIT = 125


@pytest.fixture
def launcher(host_launcher: Launcher) -> Launcher:
    return host_launcher


def connect(launcher: Launcher, *args: str, stdin: bytes = b"", timeout: float = 30) -> subprocess.CompletedProcess:
    return launcher.command("connect", *args, input=stdin, text=False, timeout=timeout)


class FakeProxy:
    """A listening socket on 127.0.0.1; ``script(conn)`` plays the proxy for one connection."""

    def __init__(self, script=None) -> None:  # type: ignore[no-untyped-def]
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.request = b""
        self.thread = None
        if script:
            self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
            self.thread.start()

    def _serve(self, script) -> None:  # type: ignore[no-untyped-def]
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(20)
            self.request = peers.read_head(conn)
            script(conn)

    def nobody_connected(self) -> bool:
        """True when no connection was ever made (a completed handshake would wait in the backlog)."""
        self.listener.setblocking(False)
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return True
        conn.close()
        return False

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes a thread still in accept()
        except OSError:
            pass
        self.listener.close()
        if self.thread:
            self.thread.join(timeout=10)


def echo_rest(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


@pytest.fixture
def idle_proxy():  # type: ignore[no-untyped-def]
    proxy = FakeProxy()
    yield proxy
    proxy.close()


# --- hostile input: refused before a single byte leaves ----------------------------


@pytest.mark.parametrize(
    "host",
    [
        "github.com\r\nX-Injected: 1",
        "github.com\n",
        "git hub.com",
        "",
        "a" * 256,
        "github.com/evil",
        "user@github.com",
        "github.com%0d%0a",
        "gïthub.com",
        "github.com\t",
        "-oProxyCommand=x",
    ],
)
def test_connect_rejects_a_hostile_host_before_connecting(launcher, idle_proxy, host):
    result = connect(launcher, "--proxy", idle_proxy.address, "--", host, "22")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(b"srt-launcher: connect: HOST") and b"Traceback" not in result.stderr
    assert idle_proxy.nobody_connected()


@pytest.mark.parametrize("port", ["0", "65536", "-1", "22a", "", " 22", "+22", "99999999999"])
def test_connect_rejects_a_port_outside_1_to_65535_before_connecting(launcher, idle_proxy, port):
    result = connect(launcher, "--proxy", idle_proxy.address, "--", "github.com", port)
    assert result.returncode == 2, result.stderr
    assert b"port must be a number from 1 to 65535" in result.stderr
    assert idle_proxy.nobody_connected()


@pytest.mark.parametrize("proxy", ["localhost:3128", "127.0.0.1", "127.0.0.1:0", "[::1]:3128"])
def test_connect_rejects_a_proxy_that_is_not_ipv4_and_port(launcher, proxy):
    result = connect(launcher, "github.com", "22", "--proxy", proxy)
    assert result.returncode == 2, result.stderr
    assert b"--proxy" in result.stderr


def test_connect_requires_the_proxy_option(launcher):
    result = connect(launcher, "github.com", "22")
    assert result.returncode == 2
    assert b"--proxy" in result.stderr


def test_connect_help_documents_the_exit_statuses(launcher):
    result = launcher.command("connect", "--help")
    assert result.returncode == 0
    assert "Usage: srt-launcher connect [OPTIONS] HOST PORT" in result.stdout
    assert "125" in result.stdout and "--proxy IPV4:PORT" in result.stdout


# --- the CONNECT exchange -------------------------------------------------------------


def test_connect_sends_a_connect_request_with_a_host_header(launcher):
    proxy = FakeProxy(lambda conn: conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n"))
    try:
        host = "[2001:db8::1]"
        result = connect(launcher, host, "2222", "--proxy", proxy.address)
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert proxy.request == b"CONNECT [2001:db8::1]:2222 HTTP/1.1\r\nHost: [2001:db8::1]:2222\r\n\r\n"


def test_connect_accepts_a_host_of_exactly_255_characters(launcher):
    proxy = FakeProxy(lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n"))
    try:
        result = connect(launcher, "h" * 255, "22", "--proxy", proxy.address)
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert proxy.request.startswith(b"CONNECT " + b"h" * 255 + b":22 HTTP/1.1\r\n")


def test_connect_delivers_tunnel_bytes_that_arrive_with_the_response_head(launcher):
    banner = b"SSH-2.0-OpenSSH_9.2 fake\r\n"

    def proxy_script(conn: socket.socket) -> None:
        # One segment: head, blank line and the server's first bytes together.
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" + banner)
        echo_rest(conn)

    proxy = FakeProxy(proxy_script)
    try:
        result = connect(launcher, "github.com", "22", "--proxy", proxy.address, stdin=b"client hello")
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == banner + b"client hello"


def test_connect_pumps_megabytes_both_ways_and_exits_zero_when_both_end(launcher):
    payload = os.urandom(4 << 20)

    def proxy_script(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\nProxy-Agent: test\r\n\r\n")
        echo_rest(conn)

    proxy = FakeProxy(proxy_script)
    try:
        result = connect(launcher, "example.org", "443", "--proxy", proxy.address, stdin=payload, timeout=60)
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


def test_connect_accepts_a_response_head_of_exactly_8192_bytes(launcher):
    status = b"HTTP/1.1 200 OK\r\n"
    padding = b"X-Pad: " + b"a" * (8192 - len(status) - len(b"X-Pad: ") - 4) + b"\r\n"
    head = status + padding + b"\r\n"
    assert len(head) == 8192
    proxy = FakeProxy(lambda conn: conn.sendall(head + b"tunnel"))
    try:
        result = connect(launcher, "github.com", "22", "--proxy", proxy.address)
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"tunnel"


def test_connect_fails_on_a_response_head_over_8192_bytes(launcher):
    head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 8192 + b"\r\n\r\n"
    proxy = FakeProxy(lambda conn: conn.sendall(head + b"tunnel"))
    try:
        result = connect(launcher, "github.com", "22", "--proxy", proxy.address)
    finally:
        proxy.close()
    assert result.returncode == REFUSED_EXIT
    assert result.stdout == b""
    assert b"8192" in result.stderr and b"Traceback" not in result.stderr


def test_connect_fails_when_the_proxy_closes_before_the_end_of_the_head(launcher):
    proxy = FakeProxy(lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\n"))
    try:
        result = connect(launcher, "github.com", "22", "--proxy", proxy.address)
    finally:
        proxy.close()
    assert result.returncode == REFUSED_EXIT
    assert result.stdout == b""


def test_connect_to_an_unreachable_proxy_exits_125_naming_it(launcher):
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))  # bound, never listening: refused
    address = "127.0.0.1:%d" % unused.getsockname()[1]
    try:
        result = connect(launcher, "github.com", "22", "--proxy", address)
    finally:
        unused.close()
    assert result.returncode == REFUSED_EXIT
    assert address.encode() in result.stderr and b"Connection refused" in result.stderr


def test_connect_refused_by_a_fake_proxy_prints_its_status_line_escaped(launcher):
    proxy = FakeProxy(lambda conn: conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\x1b[2J\r\n\r\n"))
    try:
        result = connect(launcher, "github.com", "22", "--proxy", proxy.address)
    finally:
        proxy.close()
    assert result.returncode == REFUSED_EXIT
    assert b"HTTP/1.1 407 Proxy Authentication Required" in result.stderr
    assert b"\x1b" not in result.stderr, "a proxy must not be able to send terminal escapes through us"


# --- a real proxy ------------------------------------------------------------------------


def greet_then_echo(conn: socket.socket) -> None:
    conn.sendall(b"banner\n")
    echo_rest(conn)


@pytest.fixture
def echo_server():  # type: ignore[no-untyped-def]
    server = peers.tcp_server(greet_then_echo, backlog=8)
    yield server.port
    server.close()


@pytest.fixture
def tinyproxy_allowing_443():  # type: ignore[no-untyped-def]
    proxy = peers.Tinyproxy((443,))
    yield f"127.0.0.1:{proxy.port}"
    proxy.stop()


@pytest.fixture
def tinyproxy_allowing_echo(echo_server):  # type: ignore[no-untyped-def]
    proxy = peers.Tinyproxy((echo_server,))
    yield f"127.0.0.1:{proxy.port}", echo_server
    proxy.stop()


def test_connect_refused_by_tinyproxy_exits_nonzero_showing_the_status_line(launcher, tinyproxy_allowing_443, echo_server):
    result = connect(launcher, "127.0.0.1", str(echo_server), "--proxy", tinyproxy_allowing_443, stdin=b"hello")
    assert result.returncode == REFUSED_EXIT
    assert result.stdout == b""
    assert b"403" in result.stderr and b"HTTP/1.1 403 Access violation" in result.stderr
    assert result.stderr.count(b"\n") == 1


def test_connect_through_tinyproxy_reaches_the_target(launcher, tinyproxy_allowing_echo):
    proxy, target_port = tinyproxy_allowing_echo
    expected = b"banner\nthrough a real proxy"
    process = subprocess.Popen(
        launcher.argv("connect", "127.0.0.1", str(target_port), "--proxy", proxy),
        **launcher.process_kwargs(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
    )
    try:
        process.stdin.write(b"through a real proxy")
        process.stdin.flush()
        # stdin stays open until the echo is back: tinyproxy ends the whole
        # tunnel on a half-close, so an early EOF would race the reply.
        received = b""
        while len(received) < len(expected):
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            received += chunk
        process.stdin.close()
        assert process.wait(timeout=20) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert received == expected
