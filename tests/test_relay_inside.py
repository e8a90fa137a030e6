"""SPEC §3.1 and §2.5: the in-sandbox relay, ``run --unshare-net --relay PORT UNIX_PATH``.

Real peers only: Unix servers on the host (threads of this test process),
clients inside the sandbox (bash's /dev/tcp, or Debian's python3), the real
launcher in all three modes. Leftover processes are found by scanning /proc
for a unique socket path, which every launcher process carries in its argv.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import SYSTEM, after_background_sleeper, holding_many_fds, lingering, processes_with
from srt_launcher.relay.server import WAITING_ACCEPTORS

PORT = "3128"
GREETING = b"greeting from "


# ---------------------------------------------------------------- host-side peers


class UnixServer:
    """A Unix stream server on the host: one thread per connection running ``handler``."""

    def __init__(self, path: Path, handler, uid: int, listen: bool = True) -> None:  # type: ignore[no-untyped-def]
        self.path = path
        self.handler = handler
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chown(path, uid, -1)  # the launcher's caller must be allowed to connect
        self.connections: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        if listen:
            self.listen()

    def listen(self) -> None:
        self.sock.listen(16)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.connections:
            conn.close()


def greeter(tag: str):  # type: ignore[no-untyped-def]
    """Greets at once (so a client that only reads learns who answered), then echoes."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(GREETING + tag.encode() + b"\n")
        while data := conn.recv(65536):
            conn.sendall(data)

    return handle


def digest_then_echo(conn: socket.socket) -> None:
    """Reads to EOF, then replies: only a relay that propagates half-close gets an answer."""
    received = bytearray()
    while data := conn.recv(1 << 20):
        received += data
    conn.sendall(hashlib.sha256(received).hexdigest().encode() + b"\n" + bytes(received))


def holder(conn: socket.socket) -> None:
    conn.sendall(b"held\n")
    while conn.recv(65536):
        pass


@pytest.fixture
def servers(launcher):  # type: ignore[no-untyped-def]
    started: list[UnixServer] = []

    def start(path: Path, handler, listen: bool = True) -> UnixServer:  # type: ignore[no-untyped-def]
        server = UnixServer(path, handler, launcher.uid, listen)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


# ---------------------------------------------------------------- processes on the host


def assert_none_left(marker: str, timeout: float = 5.0) -> None:
    left = lingering(marker, timeout)
    assert not left, f"processes left behind: {[_describe(pid) for pid in left]}"


def _describe(pid: int) -> str:
    try:
        return f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return str(pid)


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[0]


def _pgid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[2])


def launcher_tree(stub: int, relay_count: int, timeout: float = 10.0) -> tuple[list[int], int]:
    """(relay PIDs, PID 1's host PID) among the stub's children.

    PID 1 is the child with two NSpid entries (it is 1 in its own PID
    namespace); relays live in the host's PID namespace only.
    """
    deadline = time.monotonic() + timeout
    while True:
        relays, pid1 = [], 0
        for child in _children(stub):
            nspids = _status(child)["NSpid"].split()
            if len(nspids) == 1:
                relays.append(child)
            elif nspids[-1] == "1":
                pid1 = child
        if (len(relays) == relay_count and pid1) or time.monotonic() > deadline:
            return relays, pid1
        time.sleep(0.02)


def _with_bind(directory: Path) -> tuple[str, ...]:
    return (*SYSTEM, "--bind", str(directory), str(directory))


# ---------------------------------------------------------------- clients inside the sandbox

# bash connects through /dev/tcp while it parses its first line: the earliest
# a workload can possibly connect.
READ_GREETING = f"exec 3<>/dev/tcp/127.0.0.1/{PORT} || exit 9; IFS= read -r line <&3; echo \"$line\""

HALF_CLOSE_CLIENT = textwrap.dedent(
    """
    import hashlib, os, socket, sys
    payload = os.urandom(int(sys.argv[2]))
    conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)
    reply = bytearray()
    while data := conn.recv(1 << 20):
        reply += data
    digest, _, echoed = bytes(reply).partition(b"\\n")
    ok = digest.decode() == hashlib.sha256(payload).hexdigest() and echoed == payload
    print("ok" if ok else f"bad reply: {len(echoed)} of {len(payload)} bytes")
    """
)


# ---------------------------------------------------------------- tests


def test_first_action_of_the_workload_reaches_the_relay(launcher, shared_dir, servers) -> None:
    sock = shared_dir / "proxy.sock"
    servers(sock, greeter("original"))
    for _ in range(5):  # a listener bound late would lose this race at least once
        result = launcher.run("--unshare-net", "--relay", PORT, str(sock), *SYSTEM, "--", "/bin/bash", "-c", READ_GREETING)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "greeting from original\n"
    assert_none_left(str(sock))


def test_two_relays_reach_their_own_sockets(launcher, shared_dir, servers) -> None:
    first, second = shared_dir / "first.sock", shared_dir / "second.sock"
    servers(first, greeter("first"))
    servers(second, greeter("second"))
    script = (
        "exec 3<>/dev/tcp/127.0.0.1/3128 4<>/dev/tcp/127.0.0.1/8080 || exit 9; "
        "IFS= read -r a <&3; IFS= read -r b <&4; echo \"$a|$b\""
    )
    result = launcher.run(
        "--unshare-net", "--relay", "3128", str(first), "--relay", "8080", str(second), *SYSTEM,
        "--", "/bin/bash", "-c", script,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "greeting from first|greeting from second\n"


def test_half_close_still_delivers_the_whole_reply(launcher, shared_dir, servers) -> None:
    sock = shared_dir / "proxy.sock"
    servers(sock, digest_then_echo)
    result = launcher.run(
        "--unshare-net", "--relay", PORT, str(sock), *SYSTEM,
        "--", "/usr/bin/python3", "-c", HALF_CLOSE_CLIENT, PORT, str(3 << 20),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_kill_all_inside_leaves_the_relay_serving_and_unseen(launcher, shared_dir, servers) -> None:
    sock = shared_dir / "proxy.sock"
    servers(sock, greeter("original"))
    # kill -1 reaches every process the workload may signal, except PID 1 and
    # itself; then the workload lists every process it can see.
    script = textwrap.dedent(
        f"""
        kill -9 -1
        for cmdline in /proc/[0-9]*/cmdline; do
            if grep -qF -- "$MARKER" "$cmdline" 2>/dev/null; then echo "sees ${{cmdline#/proc/}}"; fi
        done
        {READ_GREETING}
        """
    )
    result = launcher.run(
        "--unshare-net", "--relay", PORT, str(sock), *SYSTEM, "--setenv", "MARKER", str(sock),
        "--", "/bin/bash", "-c", script,
    )
    assert result.returncode == 0, result.stderr
    # Only PID 1 (a fork of the launcher, so its argv names the socket) is visible.
    assert result.stdout == "sees 1/cmdline\ngreeting from original\n"


def test_symlink_swap_cannot_redirect_the_relay(launcher, shared_dir, servers) -> None:
    sockets = shared_dir / "sockets"
    sockets.mkdir()
    os.chown(sockets, launcher.uid, launcher.gid)
    original, decoy = sockets / "proxy.sock", shared_dir / "decoy.sock"
    servers(original, greeter("original"))
    servers(decoy, greeter("decoy"))
    swap = f"rm {original} && ln -s {decoy} {original} || exit 8; "
    result = launcher.run(
        "--unshare-net", "--relay", PORT, str(original), *_with_bind(shared_dir),
        "--", "/bin/bash", "-c", swap + READ_GREETING + "; " + READ_GREETING,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "greeting from original\n" * 2
    # The swap did happen: the path now leads to the decoy.
    assert os.readlink(original) == str(decoy)
    with socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(original))
        assert probe.recv(100) == GREETING + b"decoy\n"


def test_refused_upstream_connection_does_not_stop_the_relay(launcher, shared_dir, servers) -> None:
    """A Unix socket bound but not yet listening refuses connect (ECONNREFUSED);
    once it listens, the same inode accepts: the relay must still be there."""
    sock = shared_dir / "proxy.sock"
    server = servers(sock, greeter("late"), listen=False)
    client = textwrap.dedent(
        """
        import socket, sys
        def exchange():
            conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
            try:
                return conn.recv(100).decode().strip() or "closed"
            except ConnectionResetError:
                return "closed"
        print("first:", exchange(), flush=True)
        sys.stdin.readline()
        print("second:", exchange(), flush=True)
        """
    )
    proc = launcher.popen(
        "--unshare-net", "--relay", PORT, str(sock), *SYSTEM, "--", "/usr/bin/python3", "-c", client, PORT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline() == "first: closed\n"
        server.listen()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "second: greeting from late\n"
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()


@pytest.mark.parametrize(
    "problem",
    ["missing socket", "not a socket", "port used twice", "second relay missing"],
)
def test_bad_relay_fails_before_the_workload(launcher, shared_dir, servers, problem: str) -> None:
    good, bad = shared_dir / "good.sock", shared_dir / "bad.sock"
    servers(good, greeter("good"))
    relays = {
        "missing socket": ("--relay", PORT, str(bad)),
        "not a socket": ("--relay", PORT, str(bad)),
        "port used twice": ("--relay", PORT, str(good), "--relay", PORT, str(good)),
        "second relay missing": ("--relay", PORT, str(good), "--relay", "8080", str(bad)),
    }[problem]
    if problem == "not a socket":
        bad.write_text("")
    marker = shared_dir / "workload-ran"
    result = launcher.run(
        "--unshare-net", *relays, *_with_bind(shared_dir), "--", "/bin/sh", "-c", f"touch {marker}",
    )
    assert result.returncode == 125, result.stderr
    expected = f"127.0.0.1:{PORT}: Address already in use" if problem == "port used twice" else str(bad)
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists(), "the workload ran"
    assert_none_left(str(shared_dir))


@pytest.mark.parametrize("how", ["SIGKILL PID 1", "SIGTERM the launcher", "SIGKILL the launcher"])
def test_no_relay_survives_the_launch(launcher, shared_dir, servers, how: str) -> None:
    sock = shared_dir / "proxy.sock"
    servers(sock, holder)
    # The workload keeps a relayed connection open, so a connection child exists too.
    script = f"exec 3<>/dev/tcp/127.0.0.1/{PORT} || exit 9; IFS= read -r line <&3; echo \"$line\"; exec sleep 60"
    proc = launcher.popen(
        "--unshare-net", "--relay", PORT, str(sock), *SYSTEM, "--", "/bin/bash", "-c", script,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline() == "held\n"
        relays, pid1 = launcher_tree(proc.pid, 1)
        assert len(relays) == 1 and pid1
        assert _children(relays[0]), "no connection child under the relay"
        target, signum = {
            "SIGKILL PID 1": (pid1, signal.SIGKILL),
            "SIGTERM the launcher": (proc.pid, signal.SIGTERM),
            "SIGKILL the launcher": (proc.pid, signal.SIGKILL),
        }[how]
        os.kill(target, signum)
        status = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    expected = {"SIGKILL PID 1": 128 + 9, "SIGTERM the launcher": 128 + 15, "SIGKILL the launcher": -9}[how]
    assert status == expected, proc.stderr.read()
    assert_none_left(str(sock))


def test_no_relay_or_connection_child_is_left_to_the_callers_reaper(launcher, shared_dir, servers) -> None:
    """The workload exits with a relayed connection open: the relay, the
    connection child and the children waiting in accept() all die with the
    launch, and the launcher reaps them all; a caller that is a child
    subreaper inherits nothing. Repeated, since which of a killed process
    group exits first varies."""
    sock = shared_dir / "proxy.sock"
    servers(sock, holder)
    argv = launcher.argv("run", "--unshare-net", "--relay", PORT, str(sock), *SYSTEM, "--", "/bin/bash", "-c", READ_GREETING)
    for attempt in range(10):
        outcome = launcher.under_subreaper(argv)
        assert (outcome["returncode"], outcome["stdout"]) == (0, "held\n"), outcome["stderr"]
        assert outcome["inherited"] == [], f"launch {attempt}: processes were left to the caller's reaper"


def test_launch_with_relays_neither_waits_for_nor_kills_a_child_the_caller_had_before_exec(
    launcher, shared_dir, servers, marker
) -> None:
    sock = shared_dir / "proxy.sock"
    servers(sock, holder)
    run = launcher.argv("run", "--unshare-net", "--relay", PORT, str(sock), *SYSTEM, "--", "/bin/bash", "-c", READ_GREETING)
    result = subprocess.run(
        after_background_sleeper(marker, run), capture_output=True, text=True, timeout=60, **launcher.process_kwargs()
    )
    assert (result.returncode, result.stdout) == (0, "held\n"), result.stderr
    assert processes_with(marker), "the launch killed a process it did not start"


def test_relay_serves_when_the_caller_holds_more_than_1024_fds(launcher, shared_dir, servers) -> None:
    sock = shared_dir / "proxy.sock"
    servers(sock, holder)
    run = launcher.argv("run", "--unshare-net", "--relay", PORT, str(sock), *SYSTEM, "--", "/bin/bash", "-c", READ_GREETING)
    result = subprocess.run(holding_many_fds(run), capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    assert (result.returncode, result.stdout) == (0, "held\n"), result.stderr


def test_relay_process_is_isolated_and_unprivileged(launcher, shared_dir, servers) -> None:
    sock = shared_dir / "proxy.sock"
    servers(sock, holder)
    inherited_read, inherited_write = os.pipe()
    # Three finished connections first: their children must not linger as zombies.
    script = (
        f"for i in 1 2 3; do exec 3<>/dev/tcp/127.0.0.1/{PORT} || exit 9; IFS= read -r line <&3; exec 3<&-; done; "
        "echo ready; cat >/dev/null"
    )
    proc = launcher.popen(
        "--unshare-net", "--relay", PORT, str(sock), *SYSTEM, "--", "/bin/bash", "-c", script,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=(inherited_write,),
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        (relay,), pid1 = launcher_tree(proc.pid, 1)
        (worker,) = _children(pid1)
        # WAITING_ACCEPTORS children wait in accept() for the next
        # connections; the served ones must be gone, not left as zombies.
        deadline = time.monotonic() + 5
        while len(_children(relay)) > WAITING_ACCEPTORS and time.monotonic() < deadline:
            time.sleep(0.05)
        children = _children(relay)
        assert len(children) <= WAITING_ACCEPTORS, "connection children were not reaped"
        assert all(_state(child) != "Z" for child in children)
        status = _status(relay)
        assert _pgid(relay) == relay != _pgid(proc.pid)
        assert status["NoNewPrivs"] == "1"
        for field in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
            assert int(status[field], 16) == 0, field
        assert not _readable_without_caps(relay, launcher.uid, launcher.gid), "the relay is dumpable"
        assert _readable_without_caps(worker, launcher.uid, launcher.gid), "control: the workload should be"
        fds = {fd: os.readlink(f"/proc/{relay}/fd/{fd}") for fd in os.listdir(f"/proc/{relay}/fd")}
        assert fds.pop("0") == fds.pop("1") == "/dev/null"
        fds.pop("2")
        # Left: the listener, the pinned socket, the pipes from the children
        # waiting in accept() and the signal wakeup pipe; not the pipe the
        # launcher inherited.
        assert os.readlink(f"/proc/self/fd/{inherited_write}") not in fds.values(), fds
        expected = ["socket", str(sock)] + ["pipe"] * (WAITING_ACCEPTORS + 2)
        assert sorted(link.split(":")[0] for link in fds.values()) == sorted(expected), fds
        stub_fds = [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")]
        # The stub holds its report channel (a socket pair), but neither the
        # relay's listener nor its pinned socket.
        listener = next(link for link in fds.values() if link.startswith("socket:"))
        assert str(sock) not in stub_fds and listener not in stub_fds
    finally:
        os.close(inherited_read)
        os.close(inherited_write)
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def test_relay_is_undumpable_before_its_first_connection(launcher, shared_dir, servers) -> None:
    """The kernel gives /proc/PID of an undumpable process to root, that of a
    dumpable one to its uid: observable for a caller that is not root."""
    if not launcher.unprivileged:
        pytest.skip("/proc/PID belongs to root whether or not a root caller's relay is dumpable")
    sock = shared_dir / "proxy.sock"
    servers(sock, holder)
    proc = launcher.popen(
        "--unshare-net", "--relay", PORT, str(sock), *SYSTEM, "--", "/bin/sh", "-c", "echo ready; cat >/dev/null",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        (relay,), pid1 = launcher_tree(proc.pid, 1)
        (worker,) = _children(pid1)
        assert os.stat(f"/proc/{worker}/environ").st_uid == launcher.uid, "control: the workload is dumpable"
        assert os.stat(f"/proc/{relay}/environ").st_uid == 0, "the relay is dumpable while it waits"
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def _readable_without_caps(pid: int, uid: int, gid: int) -> bool:
    """Can the process's own uid, holding no capability, read /proc/PID/environ?

    That is exactly what PR_SET_DUMPABLE=0 forbids (the ptrace access check).
    """
    result = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
         "--bounding-set=-all", "cat", f"/proc/{pid}/environ"],
        capture_output=True,
    )
    return result.returncode == 0
