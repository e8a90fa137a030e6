"""``srt-launcher relay`` (SPEC §3.2): real relays, real sockets, as root and as uid 65534.

The upstream servers run in this test process on 127.0.0.1; the relay runs
as the launcher's caller. Nothing is mocked.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import Launcher, after_background_sleeper, holding_many_fds, processes_with, wait_for_sleeper

READY_TIMEOUT = 20.0


@pytest.fixture
def launcher(host_launcher: Launcher) -> Launcher:
    return host_launcher


class Relays:
    """Started relays, killed at teardown (their connection children die with them: PDEATHSIG)."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.processes: list[subprocess.Popen] = []

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        return self.popen_argv(self.launcher.argv("relay", *args), **kwargs)

    def popen_argv(self, argv: list[str], **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        process = subprocess.Popen(argv, **self.launcher.process_kwargs(**kwargs))
        self.processes.append(process)
        return process

    def start(self, path: Path, upstream: str, wrap=lambda argv: argv) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        """A relay that has announced readiness (one byte on its stdout);
        ``wrap`` puts its argv behind a caller's wrapper (which execs it)."""
        process = self.popen_argv(wrap(self.launcher.argv("relay", "--ready-fd", "1", str(path), upstream)))
        ready = read_until_eof(process.stdout, READY_TIMEOUT)
        assert ready == b"\n", (ready, process.poll(), process.stderr.read() if process.poll() is not None else b"")
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
            for stream in (process.stdout, process.stderr):
                if stream:
                    stream.close()


@pytest.fixture
def relays(launcher: Launcher):  # type: ignore[no-untyped-def]
    started = Relays(launcher)
    yield started
    started.stop()


def read_until_eof(stream, timeout: float) -> bytes:  # type: ignore[no-untyped-def]
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
            raise AssertionError(f"no EOF within {timeout}s; read so far: {data!r}")
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            return data
        data += chunk


class Upstream:
    """A TCP server on 127.0.0.1; ``handler(conn)`` runs in a thread per connection."""

    def __init__(self, handler) -> None:  # type: ignore[no-untyped-def]
        self.handler = handler
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self.handler, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for conn in self.connections:
            conn.close()


def echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)


def reply_after_eof(conn: socket.socket) -> None:
    """Answer only once the client has finished sending: needs the half-close to arrive."""
    received = b""
    while data := conn.recv(1 << 16):
        received += data
    conn.sendall(b"got %d bytes;" % len(received) + received[::-1] * 4)
    conn.close()


@pytest.fixture
def echo_upstream():  # type: ignore[no-untyped-def]
    server = Upstream(echo)
    yield server
    server.close()


def connect_unix(path: Path, timeout: float = 20) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    client.connect(str(path))
    return client


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def round_trip(path: Path, payload: bytes = b"ping") -> bytes:
    with connect_unix(path) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        return recv_all(client)


# --- /proc helpers ------------------------------------------------------------


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def is_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")  # dead; a zombie awaits its reaper


def descendants(pid: int) -> set[int]:
    parents = {int(entry): parent_of(int(entry)) for entry in os.listdir("/proc") if entry.isdigit()}
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = 438  # the same number on x86-64 and aarch64


def steal_fd(pid: int, fd: int) -> int:
    """A duplicate of another process's fd (pidfd_getfd; the test runs as root)."""
    pidfd = os.pidfd_open(pid)
    try:
        result = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return result
    finally:
        os.close(pidfd)


def upstream_sockets_of(pids: set[int], upstream_port: int) -> list[socket.socket]:
    """Every socket of ``pids`` connected to 127.0.0.1:upstream_port."""
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
                sock = socket.socket(fileno=steal_fd(pid, int(fd)))
            except OSError:
                continue
            try:
                peer = sock.getpeername() if sock.family == socket.AF_INET else None
            except OSError:
                peer = None
            if peer == ("127.0.0.1", upstream_port):
                found.append(sock)
            else:
                sock.close()
    return found


# --- readiness and setup failures -----------------------------------------------


def test_relay_writes_exactly_one_readiness_byte_once_listening(launcher, relays, shared_dir, echo_upstream):
    path = shared_dir / "proxy.sock"
    process = relays.popen("--ready-fd", "1", str(path), echo_upstream.address)
    assert read_until_eof(process.stdout, READY_TIMEOUT) == b"\n"
    assert process.poll() is None, "the relay must keep running after the handshake"


def test_relay_accepts_a_connection_made_right_after_the_readiness_byte(launcher, relays, shared_dir, echo_upstream):
    path = shared_dir / "proxy.sock"
    relays.start(path, echo_upstream.address)
    assert round_trip(path, b"first") == b"first"


def test_relay_readiness_fd_other_than_stdout_gets_the_byte_and_is_closed(launcher, relays, shared_dir, echo_upstream):
    path = shared_dir / "proxy.sock"
    read_end, write_end = os.pipe()
    try:
        process = relays.popen("--ready-fd", str(write_end), str(path), echo_upstream.address, pass_fds=[write_end])
        os.close(write_end)
        with os.fdopen(read_end, "rb", buffering=0) as ready:
            assert read_until_eof(ready, READY_TIMEOUT) == b"\n"
        assert process.poll() is None
    finally:
        for fd in (write_end,):
            try:
                os.close(fd)
            except OSError:
                pass


def test_second_relay_on_the_same_path_exits_125_without_readiness_byte(launcher, relays, shared_dir, echo_upstream):
    path = shared_dir / "proxy.sock"
    relays.start(path, echo_upstream.address)
    second = launcher.command("relay", "--ready-fd", "1", str(path), echo_upstream.address, text=False)
    assert second.returncode == 125, second.stderr
    assert second.stdout == b""
    assert str(path).encode() in second.stderr
    assert second.stderr.count(b"\n") == 1 and b"Traceback" not in second.stderr
    assert round_trip(path, b"still served") == b"still served", "the failed relay must not disturb the first"


def test_relay_in_a_missing_directory_exits_125_naming_the_path(launcher, shared_dir, echo_upstream):
    path = shared_dir / "missing" / "proxy.sock"
    result = launcher.command("relay", "--ready-fd", "1", str(path), echo_upstream.address, text=False)
    assert result.returncode == 125, result.stderr
    assert result.stdout == b""
    assert result.stderr.startswith(b"srt-launcher: ") and str(path).encode() in result.stderr


@pytest.mark.parametrize(
    "upstream",
    ["localhost:3128", "::1:3128", "[::1]:3128", "127.1:3128", "127.0.0.01:3128", "127.0.0.1", "127.0.0.1:0",
     "127.0.0.1:65536", "127.0.0.1:http", "127.0.0.1: 80", ":3128"],
)
def test_relay_rejects_an_upstream_that_is_not_ipv4_and_port_with_usage_error(launcher, shared_dir, upstream):
    path = shared_dir / "proxy.sock"
    result = launcher.command("relay", "--ready-fd", "1", str(path), upstream)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr and result.stderr.startswith("srt-launcher: ")
    assert not path.exists(), "a usage error must not create the socket"


def test_relay_help_is_click_help(launcher):
    result = launcher.command("relay", "--help")
    assert result.returncode == 0
    assert "Usage: srt-launcher relay [OPTIONS] UNIX_SOCKET HOST:PORT" in result.stdout
    assert "--ready-fd" in result.stdout


# --- forwarding -------------------------------------------------------------------


def test_relay_round_trips_data_in_both_directions_at_once(launcher, relays, shared_dir, echo_upstream):
    path = shared_dir / "proxy.sock"
    relays.start(path, echo_upstream.address)
    payload = os.urandom(8 << 20)  # well above every socket and pipe buffer
    with connect_unix(path, timeout=60) as client:
        # Send while receiving: a pump that blocked on one direction would deadlock here.
        sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)))
        sender.start()
        echoed = recv_all(client)
        sender.join()
    assert echoed == payload


def test_relay_propagates_half_close_so_the_client_gets_the_full_reply(launcher, relays, shared_dir):
    server = Upstream(reply_after_eof)
    try:
        path = shared_dir / "proxy.sock"
        relays.start(path, server.address)
        request = os.urandom(300_000)
        reply = round_trip(path, request)
    finally:
        server.close()
    assert reply == b"got %d bytes;" % len(request) + request[::-1] * 4


def test_relay_serves_concurrent_connections_independently(launcher, relays, shared_dir, echo_upstream):
    path = shared_dir / "proxy.sock"
    relays.start(path, echo_upstream.address)
    clients = [connect_unix(path) for _ in range(8)]
    try:
        for index, client in enumerate(reversed(clients)):
            client.sendall(b"client %d" % index)
            assert client.recv(100) == b"client %d" % index
    finally:
        for client in clients:
            client.close()


def test_relay_keeps_serving_after_an_upstream_refuses_a_connection(launcher, relays, shared_dir):
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    try:
        port = upstream.getsockname()[1]
        path = shared_dir / "proxy.sock"
        relay = relays.start(path, f"127.0.0.1:{port}")
        with connect_unix(path) as refused:
            assert refused.recv(10) == b"", "a refused upstream must close the client's connection"
        assert relay.poll() is None
        upstream.listen(8)
        result: list[bytes] = []
        server = threading.Thread(target=lambda: echo(upstream.accept()[0]))
        server.start()
        result.append(round_trip(path, b"second"))
        server.join(timeout=10)
    finally:
        upstream.close()
    assert result == [b"second"]


def test_relay_sets_nodelay_and_keepalive_on_the_upstream_socket(launcher, relays, shared_dir, echo_upstream):
    path = shared_dir / "proxy.sock"
    relay = relays.start(path, echo_upstream.address)
    with connect_unix(path) as client:
        client.sendall(b"x")
        assert client.recv(1) == b"x"  # the upstream connection exists and carries data
        sockets = upstream_sockets_of(descendants(relay.pid) | {relay.pid}, echo_upstream.port)
        try:
            assert len(sockets) == 1, "exactly one upstream socket, in the connection's child"
            upstream = sockets[0]
            assert upstream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert upstream.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
            assert upstream.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert upstream.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
            assert upstream.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        finally:
            for sock in sockets:
                sock.close()


# --- lifetime -----------------------------------------------------------------------


def test_killing_the_relays_parent_kills_the_relay_and_its_connection_children(launcher, shared_dir, echo_upstream):
    path = shared_dir / "proxy.sock"
    # An intermediate parent that outlives nothing: sh waits for the relay.
    parent = subprocess.Popen(
        ["/bin/sh", "-c", '"$@" & wait', "sh", *launcher.argv("relay", "--ready-fd", "1", str(path), echo_upstream.address)],
        **launcher.process_kwargs(stdout=subprocess.PIPE, stderr=subprocess.PIPE),
    )
    client = None
    try:
        assert select.select([parent.stdout], [], [], READY_TIMEOUT)[0], "no readiness byte"
        assert os.read(parent.stdout.fileno(), 1) == b"\n"
        client = connect_unix(path)
        client.sendall(b"x")
        assert client.recv(1) == b"x"  # a connection child is serving it
        family = descendants(parent.pid)
        assert len(family) >= 3, f"relay, connection child and spare acceptor expected, found {family}"
        parent.kill()
        parent.wait(timeout=10)
        wait_for(lambda: all(is_gone(pid) for pid in family), what=f"relay processes {family} to die")
        assert client.recv(10) == b"", "the connection must be gone with its child"
    finally:
        if client:
            client.close()
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in descendants(parent.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        parent.stdout.close()
        parent.stderr.close()


def test_sigterm_ends_a_relay_that_has_just_served_connections(launcher, relays, shared_dir, echo_upstream):
    """While it forks replacements for the children that took connections,
    the relay is between blocking calls: a SIGTERM landing just before it
    blocks again must still end it (a Python handler alone would wait for
    the next connection). Repeated, since the window is narrow."""
    for attempt in range(15):
        path = shared_dir / f"proxy-{attempt}.sock"
        relay = relays.start(path, echo_upstream.address)
        for _ in range(5):
            assert round_trip(path) == b"ping"
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=10) == -signal.SIGTERM, f"attempt {attempt}"
        assert not path.exists()


_SIGTERM_AFTER_ONE_CONNECTION = textwrap.dedent(
    """
    import json, signal, socket, subprocess, sys
    argv, path = json.loads(sys.argv[1]), sys.argv[2]
    relay = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert relay.stdout.read(1) == b"\\n"
    held = socket.socket(socket.AF_UNIX)
    held.connect(path)
    held.sendall(b"ping")
    assert held.recv(4) == b"ping"  # served: a connection child holds it, more wait in accept()
    relay.send_signal(signal.SIGTERM)
    print(relay.wait(timeout=10))
    """
)


def test_sigterm_leaves_no_connection_child_to_the_callers_reaper(launcher, shared_dir, echo_upstream):
    path = shared_dir / "proxy.sock"
    argv = launcher.argv("relay", "--ready-fd", "1", str(path), echo_upstream.address)
    outcome = launcher.under_subreaper(
        [launcher.python, "-I", "-c", _SIGTERM_AFTER_ONE_CONNECTION, json.dumps(argv), str(path)]
    )
    assert outcome["returncode"] == 0, outcome["stderr"]
    assert outcome["stdout"] == f"{-signal.SIGTERM}\n"
    assert outcome["inherited"] == [], "connection children were left to the caller's reaper"
    assert not path.exists()


def test_sigterm_spares_a_child_the_relay_did_not_fork(launcher, relays, shared_dir, echo_upstream, marker):
    path = shared_dir / "proxy.sock"
    relay = relays.start(path, echo_upstream.address, wrap=lambda argv: after_background_sleeper(marker, argv))
    (sleeper,) = processes_with(marker)
    with connect_unix(path) as held:
        held.sendall(b"ping")
        assert held.recv(4) == b"ping"  # a connection child is serving it
        connection_children = descendants(relay.pid) - {sleeper}
        assert connection_children
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=10) == -signal.SIGTERM
    assert not is_gone(sleeper), "SIGTERM killed a process the relay did not fork"
    wait_for(lambda: all(is_gone(pid) for pid in connection_children), what="the connection children to end")


# Exec'd by a caller that is a child subreaper: PR_SET_CHILD_SUBREAPER survives
# exec, so orphans would be re-parented to ARGV's process.
_EXEC_AS_SUBREAPER = """
import os, subprocess, sys, _prctl
_prctl.prctl(_prctl.PR_SET_CHILD_SUBREAPER, 1)
subprocess.Popen(["/bin/sh", "-c", sys.argv[1]], stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.execv(sys.argv[2], sys.argv[2:])
"""


def exec_as_subreaper_leaving_an_orphan(python: str, marker: str, release: Path, argv: list[str]) -> list[str]:
    """``argv`` exec'd by a child subreaper that first started a shell running
    ``sleep MARKER`` in the background; the shell exits once RELEASE exists,
    which orphans the sleeper while ``argv`` runs."""
    shell = f"sleep {marker} & while [ ! -e {release} ]; do sleep 0.02; done"
    return [python, "-I", "-c", _EXEC_AS_SUBREAPER, shell, *argv]


def test_sigterm_spares_an_orphan_of_a_child_it_did_not_fork_under_a_subreaper_caller(
    launcher, relays, shared_dir, echo_upstream, marker
):
    path = shared_dir / "proxy.sock"
    release = shared_dir / "release"
    relay = relays.start(
        path, echo_upstream.address,
        wrap=lambda argv: exec_as_subreaper_leaving_an_orphan(launcher.python, marker, release, argv),
    )
    assert round_trip(path) == b"ping"  # serving: what it had before is noted by now
    orphan = wait_for_sleeper(marker)
    shell = parent_of(orphan)
    release.touch()
    wait_for(lambda: is_gone(shell), what="the shell to exit, orphaning its sleeper")
    assert parent_of(orphan) != relay.pid, "the relay adopted an orphan it never forked"
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == -signal.SIGTERM
    assert not is_gone(orphan), "SIGTERM killed an orphan the relay did not fork"


def test_sigterm_under_the_proc_of_an_outer_pid_namespace_kills_nothing_it_did_not_fork(
    launcher, shared_dir, echo_upstream
):
    # /proc numbers processes as the outer namespace does: the relay must not
    # read its children's numbers there (tests/foreign_proc.py lines them up).
    path = shared_dir / "proxy.sock"
    relay_argv = launcher.argv("relay", "--ready-fd", "1", str(path), echo_upstream.address)
    argv = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount", "--mount-proc"]
    argv += [launcher.python, "-I", launcher.helper("foreign_proc.py"), str(path), *relay_argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["relay"] == -signal.SIGTERM, result.stderr
    assert outcome["victim"] is None, "SIGTERM killed a process the relay did not fork"


def test_relay_serves_when_the_caller_holds_more_than_1024_fds(launcher, relays, shared_dir, echo_upstream):
    path = shared_dir / "proxy.sock"
    relays.start(path, echo_upstream.address, wrap=holding_many_fds)
    for _ in range(3):  # several connections: each is a child forked by the serving loop
        assert round_trip(path) == b"ping"


def test_relay_removes_its_socket_file_on_sigterm(launcher, relays, shared_dir, echo_upstream):
    path = shared_dir / "proxy.sock"
    relay = relays.start(path, echo_upstream.address)
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == -signal.SIGTERM
    assert not path.exists()
