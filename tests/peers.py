"""Real peers on the host for the relay, socat, connect and proxy tests:
threaded TCP and Unix servers, and a real tinyproxy.

Not a test module, and nothing a sandbox runs: the tests import it and run
these peers in their own process (as root), on 127.0.0.1 or at a Unix
socket path the launcher's caller may connect to.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

Handler = Callable[[socket.socket], None]


class Server:
    """A listening socket; ``handler(conn)`` runs in a thread per connection,
    and the connection is closed when it returns (an OSError from it, such as
    a client gone or the test closing the server under it, ends it quietly)."""

    def __init__(self, listener: socket.socket, handler: Handler, backlog: int, listen: bool = True) -> None:
        self.listener = listener
        self.handler = handler
        self.backlog = backlog
        tcp = listener.family == socket.AF_INET
        self.port = listener.getsockname()[1] if tcp else 0
        self.address = f"127.0.0.1:{self.port}" if tcp else listener.getsockname()
        self.connections: list[socket.socket] = []
        self.peers: list = []
        if listen:
            self.listen()

    def listen(self) -> None:
        self.listener.listen(self.backlog)
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            self.peers.append(peer)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        # shutdown wakes the thread blocked in accept(), which close alone
        # does not; a blocked accept() also holds a descriptor number
        # reserved, which makes dup2() onto it fail (EBUSY) in later tests.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for conn in self.connections:
            conn.close()


def tcp_server(handler: Handler, backlog: int) -> Server:
    """A server on 127.0.0.1 at a free port (``.port``, ``.address``)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    return Server(listener, handler, backlog)


def unix_server(path: Path, handler: Handler, uid: int, backlog: int, listen: bool = True) -> Server:
    """A server at ``path``, owned by ``uid`` (the launcher's caller must be
    allowed to connect); with ``listen=False`` bound only, until ``listen()``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chown(path, uid, -1)
    return Server(listener, handler, backlog, listen)


def read_head(conn: socket.socket) -> bytes:
    """An HTTP request or response head, byte by byte up to and with its blank
    line (nothing of what follows is consumed); shorter if the peer closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def tcp_options(sock: socket.socket) -> dict[str, int | bool]:
    """TCP_NODELAY, SO_KEEPALIVE and the keepalive timing of ``sock``, as the kernel reports them."""
    return {
        "nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
        "keepidle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "keepintvl": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "keepcnt": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, what: str, timeout: float = 10.0) -> None:
    """Returns once 127.0.0.1:PORT accepts a connection; fails if ``process`` exits first or it takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} is not listening on 127.0.0.1:{port}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if that did not end it within 10 s; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Tinyproxy:
    """A real tinyproxy in the foreground on 127.0.0.1 (``.port``), allowing
    CONNECT to ``connect_ports`` only, and with ``basic_auth`` ("USER
    PASSWORD") only to a client giving those credentials. Its configuration
    and log live in a directory of its own, removed by ``stop()``."""

    def __init__(self, connect_ports: tuple[int, ...], basic_auth: str | None = None, timeout: int = 30) -> None:
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        if not os.path.exists(binary):
            pytest.fail("tinyproxy is not installed (make test installs it)")
        self.directory = Path(tempfile.mkdtemp(prefix="srt-launcher-tinyproxy-", dir="/tmp"))
        self.directory.chmod(0o755)
        self.port = free_port()
        self.log_path = self.directory / "tinyproxy.log"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", f"Timeout {timeout}", "Allow 127.0.0.1"]
        lines += [f"BasicAuth {basic_auth}"] if basic_auth else []
        lines += [f"ConnectPort {port}" for port in connect_ports]
        lines += ["MaxClients 20", "LogLevel Info"]
        config = self.directory / "tinyproxy.conf"
        config.write_text("\n".join(lines) + "\n")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [binary, "-d", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.directory
            )
        try:
            wait_listening(self.port, self.process, "tinyproxy")
        except AssertionError:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


def make_video(path: Path, size: str = "320x240", seconds: int = 1, audio: bool = False) -> Path:
    """An H.264 test pattern made by ffmpeg (with a sine tone if ``audio``),
    readable by every uid: the real upload ffprobe and the examples read."""
    argv = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=duration={seconds}:size={size}:rate=10"]
    if audio:
        argv += ["-f", "lavfi", "-i", "sine", "-shortest"]
    subprocess.run([*argv, "-pix_fmt", "yuv420p", str(path)], check=True, timeout=120)
    path.chmod(0o644)
    return path
