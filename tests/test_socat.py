"""The socat front end (SPEC §1, §8): ``srt-launcher socat``, and ``socat`` by name.

Where the behaviour is observable, the same command line runs through the
real socat (Debian's 1.7.4) too and must give the same result: exit
statuses, one connection without ``fork`` and every one with it, a bind
failure that lets ``A || B`` fall back, the socket file removed on SIGTERM.
Peers are real sockets in this process; the relays run as root and as uid
65534. sandbox-runtime's three command lines are run verbatim.
"""

from __future__ import annotations

import base64
import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

import peers
from conftest import SYSTEM, Launcher, kill_and_reap, scratch_dir

SOCAT = shutil.which("socat") or "/usr/bin/socat"
TIMEOUT = 30
BACKLOG = 64  # of the peers: enough for every test's connections at once


@pytest.fixture
def launcher(host_launcher: Launcher) -> Launcher:
    return host_launcher


class Socat:
    """One implementation of socat's command line, run as the launcher's caller."""

    def __init__(self, name: str, launcher: Launcher, workdir: Path) -> None:
        self.name = name
        self.launcher = launcher
        if name == "srt":
            self.prefix = launcher.argv("socat")
        elif name == "srt by name":
            # A symlink named socat to the installed command: the #! interpreter
            # gets the link's path, so sys.argv[0] ends in "socat".
            link = workdir / "socat"
            link.symlink_to(launcher.argv_prefix[0])
            self.prefix = [str(link)]
        else:
            self.prefix = [SOCAT]
        self.processes: list[subprocess.Popen] = []

    def __repr__(self) -> str:
        return f"Socat({self.name})"

    def run(self, *args: str, timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run([*self.prefix, *args], timeout=timeout, **self.launcher.process_kwargs(**kwargs))

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.PIPE)
        process = subprocess.Popen([*self.prefix, *args], **self.launcher.process_kwargs(**kwargs))
        self.processes.append(process)
        return process

    def stop(self) -> None:
        kill_and_reap(self.processes)


@pytest.fixture
def workdir(launcher: Launcher):  # type: ignore[no-untyped-def]
    with scratch_dir(launcher, "srt-socat-test-") as path:
        yield path


def _socat(request, launcher: Launcher, workdir: Path, name: str):  # type: ignore[no-untyped-def]
    implementation = Socat(name, launcher, workdir)
    request.addfinalizer(implementation.stop)
    return implementation


@pytest.fixture(params=("srt", "srt by name", "socat"))
def socat(request, launcher, workdir):  # type: ignore[no-untyped-def]
    """Each behaviour, through ours both ways it is invoked, and through the real socat."""
    return _socat(request, launcher, workdir, request.param)


@pytest.fixture
def srt_socat(request, launcher, workdir):  # type: ignore[no-untyped-def]
    return _socat(request, launcher, workdir, "srt")


@pytest.fixture
def real_socat(request, launcher, workdir):  # type: ignore[no-untyped-def]
    return _socat(request, launcher, workdir, "socat")


# ---------------------------------------------------------------- peers


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def greet_then_echo(conn: socket.socket) -> None:
    conn.sendall(b"banner\n")
    echo(conn)


def server(handler, path: Path | None = None, uid: int = 0) -> peers.Server:  # type: ignore[no-untyped-def]
    """A TCP server on 127.0.0.1, or a Unix one at ``path`` owned by ``uid``."""
    if path is None:
        return peers.tcp_server(handler, BACKLOG)
    return peers.unix_server(path, handler, uid, BACKLOG)


@pytest.fixture
def servers():  # type: ignore[no-untyped-def]
    started: list[peers.Server] = []

    def start(handler, path: Path | None = None, uid: int = 0) -> peers.Server:  # type: ignore[no-untyped-def]
        started.append(server(handler, path, uid))
        return started[-1]

    yield start
    for each in started:
        each.close()


def wait_connectable(connect, process: subprocess.Popen, timeout: float = 20) -> socket.socket:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect()
        except (ConnectionRefusedError, FileNotFoundError):
            if process.poll() is not None:
                raise AssertionError(f"exited {process.returncode}: {process.stderr.read()!r}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def unix_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(TIMEOUT)
    sock.connect(str(path))
    return sock


def tcp_client(port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    return sock


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    with sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = 438


def sockets_of(pid: int) -> list[socket.socket]:
    """Duplicates of every socket ``pid`` holds (pidfd_getfd; the test runs as root)."""
    found = []
    pidfd = os.pidfd_open(pid)
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            stolen = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if stolen >= 0:
                found.append(socket.socket(fileno=stolen))
    finally:
        os.close(pidfd)
    return found


# ---------------------------------------------------------------- invocation and the subset


def test_relays_one_connection_by_either_name(socat, workdir, servers) -> None:
    upstream = servers(echo)
    path = workdir / "in.sock"
    process = socat.popen(f"UNIX-LISTEN:{path}", f"TCP:127.0.0.1:{upstream.port}")
    client = wait_connectable(lambda: unix_client(path), process)
    assert exchange(client, b"through " + socat.name.encode()) == b"through " + socat.name.encode()
    assert process.wait(timeout=TIMEOUT) == 0, process.stderr.read()


@pytest.mark.parametrize(
    "argv, what",
    [
        (["UNIX-LISTEN:{path},mode=600", "TCP:127.0.0.1:9"], "option mode"),
        (["TCP-LISTEN:{port},fork,so-rcvbuf=4096", "STDIO"], "option so-rcvbuf"),
        (["OPENSSL-LISTEN:{port}", "STDIO"], "address OPENSSL-LISTEN"),
        (["EXEC:/bin/sh", "UNIX-LISTEN:{path}"], "address EXEC"),
        (["UNIX-LISTEN:{path},fork", "STDIO"], "this use of fork"),
        (["TCP:127.0.0.1:9,fork", "UNIX-LISTEN:{path}"], "option fork on TCP"),
        (["TCP:127.0.0.1:9", "UNIX-LISTEN:{path},fork"], "this use of fork"),
        (["-u", "UNIX-LISTEN:{path}", "TCP:127.0.0.1:9"], "option -u"),
        (["UNIX-LISTEN:{path},keepidle=5", "TCP:127.0.0.1:9"], "option keepidle on UNIX-LISTEN"),
    ],
)
def test_anything_outside_the_subset_exits_1_before_any_socket_exists(srt_socat, workdir, argv, what) -> None:
    path, port = workdir / "never.sock", peers.free_port()
    result = srt_socat.run(*(arg.format(path=path, port=port) for arg in argv))
    assert result.returncode == 1, result.stderr
    stderr = result.stderr.decode()
    assert stderr.startswith(f"socat: {what} not supported by srt-socat (supported: "), stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert not path.exists()
    with pytest.raises(ConnectionRefusedError):
        tcp_client(port)


@pytest.mark.parametrize(
    "argv",
    [["UNIX-LISTEN:{path}"], ["TCP:127.0.0.1:0", "STDIO"], ["TCP-LISTEN:99999", "STDIO"], ["-t", "soon", "-", "-"],
     ["PROXY:127.0.0.1:host:22,proxyauth=nocolon", "STDIO"], ["PROXY:127.0.0.1:bad\r\nhost:22", "STDIO"],
     # Host names the resolver's IDNA encoding refuses (an empty or 64-byte
     # label, a byte that is not UTF-8), on each address that resolves one.
     ["STDIO", "TCP:a..b:22"], ["STDIO", "TCP4:" + "a" * 64 + ":22"], ["STDIO", "PROXY:a..b:host:22"],
     ["STDIO", "TCP:127.0.0.1:22,bind=a..b"], ["UNIX-LISTEN:{path},fork", "TCP:a..b:22"],
     [b"STDIO", b"TCP:a\xff:22"],
     # A Unix socket path longer than sun_path (108 bytes), as socat refuses it:
     # to connect to, it was a TypeError in the loop and exit status 0.
     ["UNIX-LISTEN:{path}" + "x" * 100, "STDIO"], ["UNIX-LISTEN:{path}", "UNIX-CONNECT:/tmp/" + "x" * 110]],
)
def test_bad_values_exit_1_with_one_line(srt_socat, workdir, argv) -> None:
    path = workdir / "never.sock"
    result = srt_socat.run(*(arg.format(path=path) if isinstance(arg, str) else arg for arg in argv))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(b"socat: ") and result.stderr.count(b"\n") == 1, result.stderr
    assert not path.exists()


def test_help_is_printed_without_click(launcher) -> None:
    result = launcher.command("socat", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: socat [-d...] [-t SECONDS] ADDRESS1 ADDRESS2")
    assert "UNIX-LISTEN" in result.stdout and "proxyauth" in result.stdout


def test_the_socat_path_imports_no_click_pyroute2_or_pyseccomp(launcher) -> None:
    """SPEC §4: the socat front end is a launch path. The modules loaded by the
    time it exits (posix._exit, replaced here to list them first)."""
    probe = textwrap.dedent(
        """
        import posix, sys
        real_exit = posix._exit
        def listing_exit(status):
            sys.stdout.write(" ".join(sorted(sys.modules)))
            sys.stdout.flush()
            real_exit(status)
        posix._exit = listing_exit
        sys.argv = ["socat", "-t", "1", "UNIX-CONNECT:/nonexistent", "-"]
        from srt_launcher import __main__
        __main__.main()
        """
    )
    result = subprocess.run([launcher.python, "-I", "-c", probe], capture_output=True, text=True, timeout=TIMEOUT,
                            **launcher.process_kwargs())  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "/nonexistent: No such file or directory" in result.stderr
    loaded = set(result.stdout.split())
    assert "srt_launcher.commands.socat" in loaded
    assert not loaded & {"click", "pyroute2", "pyseccomp", "socket", "selectors"}, loaded


# ---------------------------------------------------------------- socat's semantics, against socat


def test_a_listener_that_cannot_bind_exits_1_at_once(socat, workdir, servers) -> None:
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen(1)
    existing = workdir / "exists.sock"
    existing.write_text("")
    try:
        port = taken.getsockname()[1]
        for argv, named in (
            ([f"TCP4-LISTEN:{port},reuseaddr", "STDIO"], b"Address already in use"),
            ([f"UNIX-LISTEN:{existing}", "STDIO"], str(existing).encode()),
        ):
            started = time.monotonic()
            result = socat.run(*argv)
            assert result.returncode == 1, (argv, result.stderr)
            assert time.monotonic() - started < 10
            assert named in result.stderr, result.stderr
    finally:
        taken.close()


def test_a_tcp6_listener_that_cannot_bind_falls_back_to_tcp4(socat, workdir, servers) -> None:
    """sandbox-runtime's in-sandbox relay: ``TCP6-LISTEN:… || TCP4-LISTEN:…``.
    An IPv6-only listener on [::]:PORT makes the dual-stack TCP6 bind fail."""
    upstream = servers(greet_then_echo, workdir / "up.sock", socat.launcher.uid)
    port = peers.free_port()
    v6only = socket.socket(socket.AF_INET6)
    v6only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6only.bind(("::", port))
    v6only.listen(1)
    try:
        line = f"{' '.join(socat.prefix)} TCP6-LISTEN:{port},ipv6only=0,fork,reuseaddr,backlog=4096 UNIX-CONNECT:{upstream.listener.getsockname()}"
        fallback = f"{' '.join(socat.prefix)} TCP4-LISTEN:{port},fork,reuseaddr UNIX-CONNECT:{upstream.listener.getsockname()}"
        shell = subprocess.Popen(
            ["/bin/sh", "-c", f"{line} 2>/dev/null || exec {fallback}"],
            **socat.launcher.process_kwargs(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
        )
        socat.processes.append(shell)
        client = wait_connectable(lambda: tcp_client(port), shell)
        assert client.recv(7) == b"banner\n"
        client.close()
    finally:
        v6only.close()


def test_without_fork_one_connection_then_the_listener_is_closed_and_it_exits_0(socat, workdir, servers) -> None:
    upstream = servers(echo)
    path = workdir / "single.sock"
    process = socat.popen(f"UNIX-LISTEN:{path}", f"TCP:127.0.0.1:{upstream.port}")
    client = wait_connectable(lambda: unix_client(path), process)
    client.sendall(b"one")
    assert client.recv(3) == b"one"
    with pytest.raises(ConnectionRefusedError):
        unix_client(path)  # the listener went with the first connection
    assert exchange(client, b" more") == b" more"
    assert process.wait(timeout=TIMEOUT) == 0, process.stderr.read()
    assert not path.exists(), "the socket file must be removed when it exits"


def test_with_fork_every_connection_is_served_until_sigterm_removes_the_socket(socat, workdir, servers) -> None:
    upstream = servers(echo)
    path = workdir / "forked.sock"
    process = socat.popen(f"UNIX-LISTEN:{path},fork,reuseaddr", f"TCP:127.0.0.1:{upstream.port}")
    first = wait_connectable(lambda: unix_client(path), process)
    held = [first] + [unix_client(path) for _ in range(4)]
    for index, client in enumerate(held):
        client.sendall(b"client %d" % index)
    for index, client in enumerate(held):
        assert client.recv(8) == b"client %d" % index
        client.close()
    for index in range(20):
        assert exchange(unix_client(path), b"again %d" % index) == b"again %d" % index
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM
    assert not path.exists()


@pytest.mark.parametrize("ending", ["exit", "SIGTERM"])
def test_two_unix_listeners_leave_neither_socket_file_behind(socat, workdir, ending) -> None:
    """Each UNIX-LISTEN socket file is removed, not only the last one made:
    a file left behind makes the next listener on that path fail to bind."""
    first, second = workdir / "first.sock", workdir / "second.sock"
    process = socat.popen(f"UNIX-LISTEN:{first}", f"UNIX-LISTEN:{second}")
    one = wait_connectable(lambda: unix_client(first), process)
    two = wait_connectable(lambda: unix_client(second), process)
    one.sendall(b"across")
    assert two.recv(6) == b"across"
    if ending == "exit":
        one.close()
        two.close()
        assert process.wait(timeout=TIMEOUT) == 0, process.stderr.read()
    else:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM
        one.close()
        two.close()
    assert not first.exists() and not second.exists()


def test_a_refused_connect_exits_1(socat, workdir) -> None:
    port = peers.free_port()
    result = socat.run("STDIO", f"TCP:127.0.0.1:{port}")
    assert result.returncode == 1
    assert b"Connection refused" in result.stderr
    path = workdir / "refused.sock"
    process = socat.popen(f"UNIX-LISTEN:{path}", f"TCP:127.0.0.1:{port}")
    client = wait_connectable(lambda: unix_client(path), process)
    assert client.recv(10) == b""
    client.close()
    assert process.wait(timeout=TIMEOUT) == 1


def _connect_once_and_see_it_closed(port: int, process) -> None:  # type: ignore[no-untyped-def]
    """Connect once it listens (unless it has ended: socat fails before it
    listens) and see the connection closed without a byte."""
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        try:
            client = tcp_client(port)
        except ConnectionRefusedError:
            time.sleep(0.02)
            continue
        with client:
            assert client.recv(10) == b""
        return


def test_without_fork_a_connection_that_cannot_be_set_up_exits_1(socat, servers) -> None:
    """A socket option the kernel refuses (TCP_KEEPIDLE above 32767) on the
    one connection: socat exits 1; srt-socat dropped the connection and
    exited 0, as if it had been relayed."""
    upstream = servers(echo)
    port = peers.free_port()
    process = socat.popen(f"TCP-LISTEN:{port},reuseaddr,keepidle=99999", f"TCP:127.0.0.1:{upstream.port}")
    _connect_once_and_see_it_closed(port, process)
    assert process.wait(timeout=TIMEOUT) == 1, process.stderr.read()


def test_stdio_and_a_listener_whose_socket_option_is_refused_exits_1_with_one_line(socat) -> None:
    """The same refused option on the stdio pump's accepted socket: exit 1
    and one line, where srt-socat printed a Python traceback."""
    port = peers.free_port()
    process = socat.popen("STDIO", f"TCP-LISTEN:{port},reuseaddr,keepidle=99999")
    _connect_once_and_see_it_closed(port, process)
    assert process.wait(timeout=TIMEOUT) == 1
    stderr = process.stderr.read()
    assert b"Traceback" not in stderr and stderr.count(b"\n") == 1, stderr


def test_stdio_to_a_connector_and_back(socat, servers) -> None:
    upstream = servers(greet_then_echo)
    result = socat.run("-", f"TCP:127.0.0.1:{upstream.port}", input=b"from stdin", stdin=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"banner\nfrom stdin"


def test_half_close_waits_for_the_reply_where_socat_cuts_it_after_half_a_second(socat, workdir, servers) -> None:
    """SPEC §8's one deliberate difference: a reply sent a second after the
    client's half-close still arrives through srt-socat; socat (-t 0.5 by
    default) has closed the connection by then."""

    def slow_reply(conn: socket.socket) -> None:
        received = b""
        while data := conn.recv(65536):
            received += data
        time.sleep(1.0)
        conn.sendall(b"late reply to " + received)

    upstream = servers(slow_reply)
    path = workdir / "half.sock"
    process = socat.popen(f"UNIX-LISTEN:{path}", f"TCP:127.0.0.1:{upstream.port}")
    reply = exchange(wait_connectable(lambda: unix_client(path), process), b"question")
    expected = b"" if socat.name == "socat" else b"late reply to question"
    assert reply == expected
    assert process.wait(timeout=TIMEOUT) == 0


def test_t_closes_the_other_direction_that_long_after_the_first_eof(socat, workdir, servers) -> None:
    def never_closes(conn: socket.socket) -> None:
        while conn.recv(65536):
            pass
        time.sleep(30)

    upstream = servers(never_closes)
    path = workdir / "linger.sock"
    process = socat.popen("-t", "0.3", f"UNIX-LISTEN:{path}", f"TCP:127.0.0.1:{upstream.port}")
    client = wait_connectable(lambda: unix_client(path), process)
    started = time.monotonic()
    assert exchange(client, b"bye") == b""
    assert 0.2 < time.monotonic() - started < 10
    assert process.wait(timeout=TIMEOUT) == 0


def test_verbosity_flags_are_accepted(socat, servers) -> None:
    upstream = servers(greet_then_echo)
    result = socat.run("-d", "-dd", "-", f"TCP4:127.0.0.1:{upstream.port}", input=b"x", stdin=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"banner\nx"


# ---------------------------------------------------------------- options


def test_listener_options_backlog_reuseaddr_and_bind(socat, workdir, servers) -> None:
    upstream = servers(echo)
    port = peers.free_port()
    process = socat.popen(f"TCP4-LISTEN:{port},fork,reuseaddr,backlog=77,bind=127.0.0.2", f"TCP:127.0.0.1:{upstream.port}")
    client = wait_connectable(lambda: tcp_client(port, "127.0.0.2"), process)
    assert exchange(client, b"bound") == b"bound"
    with pytest.raises(ConnectionRefusedError):
        tcp_client(port, "127.0.0.1")
    ss = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
    assert ss[2] == "77" and ss[3] == f"127.0.0.2:{port}", ss  # Send-Q of a listener is its backlog
    listeners = [s for s in sockets_of(process.pid) if s.getsockname() == ("127.0.0.2", port)]
    try:
        assert listeners and listeners[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    finally:
        for sock in listeners:
            sock.close()


def test_ipv6only_decides_whether_ipv4_clients_reach_a_tcp6_listener(socat, servers) -> None:
    upstream = servers(echo)
    for value, ipv4_reaches in (("0", True), ("1", False)):
        port = peers.free_port()
        process = socat.popen(f"TCP6-LISTEN:{port},fork,ipv6only={value}", f"TCP:127.0.0.1:{upstream.port}")
        client = wait_connectable(lambda: tcp_client(port, "::1"), process)
        assert exchange(client, b"v6") == b"v6"
        if ipv4_reaches:
            assert exchange(tcp_client(port), b"v4") == b"v4"
        else:
            with pytest.raises(ConnectionRefusedError):
                tcp_client(port)
        process.kill()
        process.wait()


def test_unlink_early_replaces_a_stale_socket_file(socat, workdir, servers) -> None:
    upstream = servers(echo)
    path = workdir / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a file left by a previous run
    stale.close()
    os.chown(path, socat.launcher.uid, socat.launcher.gid)
    process = socat.popen(f"UNIX-LISTEN:{path},unlink-early", f"TCP:127.0.0.1:{upstream.port}")
    assert exchange(wait_connectable(lambda: unix_client(path), process), b"fresh") == b"fresh"
    assert process.wait(timeout=TIMEOUT) == 0


def test_connector_options_keepalive_nodelay_and_bind(socat, workdir, servers) -> None:
    upstream = servers(echo)
    path = workdir / "opts.sock"
    process = socat.popen(
        f"UNIX-LISTEN:{path},fork",
        f"TCP:127.0.0.1:{upstream.port},keepalive,keepidle=11,keepintvl=6,keepcnt=4,nodelay,bind=127.0.0.3",
    )
    with wait_connectable(lambda: unix_client(path), process) as client:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
        assert upstream.peers[-1][0] == "127.0.0.3"
        sockets = sockets_of(process.pid)
        for child in _children(process.pid):  # socat serves the connection in a child
            sockets += sockets_of(child)
        try:
            (up,) = [s for s in sockets if s.family == socket.AF_INET and _peer(s) == ("127.0.0.1", upstream.port)]
            assert peers.tcp_options(up) == {"nodelay": True, "keepalive": True, "keepidle": 11, "keepintvl": 6, "keepcnt": 4}
        finally:
            for sock in sockets:
                sock.close()


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _peer(sock: socket.socket):  # type: ignore[no-untyped-def]
    try:
        return sock.getpeername()
    except OSError:
        return None


# ---------------------------------------------------------------- sandbox-runtime's command lines


def test_sandbox_runtime_host_bridge(socat, workdir, servers) -> None:
    """``socat UNIX-LISTEN:S,fork,reuseaddr TCP:localhost:P,keepalive,keepidle=10,keepintvl=5,keepcnt=3``."""
    upstream = servers(echo)
    path = workdir / "bridge.sock"
    process = socat.popen(
        f"UNIX-LISTEN:{path},fork,reuseaddr", f"TCP:localhost:{upstream.port},keepalive,keepidle=10,keepintvl=5,keepcnt=3"
    )
    wait_connectable(lambda: unix_client(path), process).close()
    for index in range(50):
        assert exchange(unix_client(path), b"request %d" % index) == b"request %d" % index
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM
    assert not path.exists()


def test_sandbox_runtime_relay_inside_a_sandbox(socat, launcher, workdir, servers) -> None:
    """``socat TCP6-LISTEN:P,ipv6only=0,fork,reuseaddr,backlog=4096 UNIX-CONNECT:S`` (falling back
    to TCP4-LISTEN), started by the workload of a launch with its own network namespace."""
    upstream_path = workdir / "proxy.sock"
    servers(greet_then_echo, upstream_path, launcher.uid)
    socat_line = " ".join(socat.prefix)
    script = textwrap.dedent(
        f"""
        {{ {socat_line} TCP6-LISTEN:3128,ipv6only=0,fork,reuseaddr,backlog=4096 UNIX-CONNECT:{upstream_path} ||
          {socat_line} TCP4-LISTEN:3128,fork,reuseaddr UNIX-CONNECT:{upstream_path}; }} </dev/null 2>/dev/null &
        exec /usr/bin/python3 -c '
        import socket, time
        deadline = time.monotonic() + 20
        for host in ("127.0.0.1", "::1", "127.0.0.1"):
            while True:
                try:
                    conn = socket.create_connection((host, 3128), timeout=10)
                    break
                except ConnectionRefusedError:
                    if time.monotonic() > deadline: raise
                    time.sleep(0.02)
            assert conn.recv(7) == b"banner\\n"
            conn.sendall(b"hi"); assert conn.recv(2) == b"hi"
            conn.close()
        print("ok")
        '
        """
    )
    result = subprocess.run(
        launcher.argv("run", "--unshare-net", *SYSTEM, "--bind", str(workdir), str(workdir), "--", "/bin/bash", "-c", script),
        capture_output=True, text=True, timeout=60, **launcher.process_kwargs(),
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


# ---------------------------------------------------------------- PROXY: (ssh's ProxyCommand)


class AuthProxy:
    """An HTTP CONNECT proxy that demands Basic credentials, then tunnels to 127.0.0.1."""

    def __init__(self, user: str, password: str) -> None:
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.requests: list[bytes] = []
        self.server = server(self._handle)
        self.port = self.server.port

    def _handle(self, conn: socket.socket) -> None:
        head = peers.read_head(conn)
        if not head.endswith(b"\r\n\r\n"):
            return  # the client went away mid-request
        self.requests.append(head)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
        if method != "CONNECT" or headers.get("proxy-authorization") != self.expected:
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection(("127.0.0.1", int(port)))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pipes = [threading.Thread(target=_copy, args=(upstream, conn)), threading.Thread(target=_copy, args=(conn, upstream))]
        for thread in pipes:
            thread.start()
        for thread in pipes:
            thread.join()
        upstream.close()

    def close(self) -> None:
        self.server.close()


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.fixture
def auth_proxy():  # type: ignore[no-untyped-def]
    proxy = AuthProxy("agent", "s3cr:et")
    yield proxy
    proxy.close()


def test_proxy_stdio_with_basic_credentials(socat, auth_proxy, servers) -> None:
    """sandbox-runtime's ssh ProxyCommand: ``socat - PROXY:localhost:%h:%p,proxyport=P,proxyauth=U:P``."""
    upstream = servers(greet_then_echo)
    result = socat.run(
        "-", f"PROXY:localhost:git.example:{upstream.port},proxyport={auth_proxy.port},proxyauth=agent:s3cr:et",
        input=b"client hello", stdin=None,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"banner\nclient hello"
    assert auth_proxy.requests[-1].startswith(f"CONNECT git.example:{upstream.port} HTTP/1.".encode())


def test_proxy_with_wrong_credentials_exits_1_showing_the_status(socat, auth_proxy, servers) -> None:
    upstream = servers(greet_then_echo)
    result = socat.run(
        "-", f"PROXY:localhost:git.example:{upstream.port},proxyport={auth_proxy.port},proxyauth=agent:wrong",
        input=b"client hello", stdin=None,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"Proxy Authentication Required" in result.stderr, result.stderr


def test_proxy_behind_a_forking_listener(srt_socat, workdir, auth_proxy, servers) -> None:
    """PROXY: served by the event loop: the CONNECT exchange per connection, tunnel bytes untouched."""
    upstream = servers(greet_then_echo)
    path = workdir / "via-proxy.sock"
    process = srt_socat.popen(
        f"UNIX-LISTEN:{path},fork", f"PROXY:127.0.0.1:git.example:{upstream.port},proxyport={auth_proxy.port},proxyauth=agent:s3cr:et"
    )
    wait_connectable(lambda: unix_client(path), process).close()
    for index in range(5):
        assert exchange(unix_client(path), b"tunnel %d" % index) == b"banner\ntunnel %d" % index


@pytest.fixture
def tinyproxy_with_basic_auth(servers):  # type: ignore[no-untyped-def]
    upstream = servers(greet_then_echo)
    proxy = peers.Tinyproxy((upstream.port,), basic_auth="agent s3cret")
    yield proxy.port, upstream.port
    proxy.stop()


def interactive(socat: Socat, *args: str) -> tuple[int, bytes, bytes]:
    """As ssh drives a ProxyCommand: send, read the answer, and only then close stdin."""
    process = socat.popen(*args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    got = b""
    try:
        process.stdin.write(b"client hello")
        process.stdin.flush()
        deadline = time.monotonic() + TIMEOUT
        while len(got) < len(b"banner\nclient hello") and time.monotonic() < deadline:
            if not select.select([process.stdout], [], [], 1)[0]:
                continue
            data = os.read(process.stdout.fileno(), 4096)
            if not data:
                break
            got += data
    finally:
        process.stdin.close()
    status = process.wait(timeout=TIMEOUT)
    return status, got + process.stdout.read(), process.stderr.read()


def test_proxy_through_tinyproxy_with_basic_auth(socat, tinyproxy_with_basic_auth) -> None:
    proxy_port, target_port = tinyproxy_with_basic_auth
    for credentials, expected in (("agent:s3cret", 0), ("agent:nope", 1)):
        status, stdout, stderr = interactive(
            socat, "-", f"PROXY:localhost:127.0.0.1:{target_port},proxyport={proxy_port},proxyauth={credentials}"
        )
        assert status == expected, stderr
        assert stdout == (b"banner\nclient hello" if expected == 0 else b"")
