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
import time
from pathlib import Path

import pytest

import peers
import relay_clients
from conftest import SYSTEM, after_background_sleeper, holding_many_fds, lingering, processes_with

PORT = "3128"
GREETING = b"greeting from "
BACKLOG = 16  # of the host servers: small on purpose (test_relay_echoes_200_concurrent_connections)


# ---------------------------------------------------------------- host-side peers


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
    started: list[peers.Server] = []

    def start(path: Path, handler, listen: bool = True) -> peers.Server:  # type: ignore[no-untyped-def]
        server = peers.unix_server(path, handler, launcher.uid, BACKLOG, listen)
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


def _dead(pid: int) -> bool:
    try:
        return _state(pid) in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while read
        return True


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


def _python_inside(launcher, sock: Path, source: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """``python3 -c SOURCE ARGS`` in a sandbox without a network, whose port PORT the relay serves from ``sock``."""
    return launcher.run(
        "--unshare-net", "--relay", PORT, str(sock), *SYSTEM, "--", "/usr/bin/python3", "-c", source, *args, timeout=timeout
    )


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
    result = _python_inside(launcher, sock, HALF_CLOSE_CLIENT, PORT, str(3 << 20))
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
    # The workload keeps a relayed connection open: the relay is serving when the launch ends.
    script = f"exec 3<>/dev/tcp/127.0.0.1/{PORT} || exit 9; IFS= read -r line <&3; echo \"$line\"; exec sleep 60"
    proc = launcher.popen(
        "--unshare-net", "--relay", PORT, str(sock), *SYSTEM, "--", "/bin/bash", "-c", script,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline() == "held\n"
        relays, pid1 = launcher_tree(proc.pid, 1)
        assert len(relays) == 1 and pid1
        assert not _children(relays[0]), "the relay forked for a connection"
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
    """The workload exits with a relayed connection open: the relay dies with
    the launch, and the launcher reaps it; a caller that is a child
    subreaper inherits nothing. Repeated, since the order in which the
    launch's processes end varies."""
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
    # Three finished connections first: nothing of them may linger.
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
        assert _children(relay) == [], "the relay forked for a connection"
        status = _status(relay)
        assert _pgid(relay) == relay != _pgid(proc.pid)
        assert status["NoNewPrivs"] == "1"
        for field in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
            assert int(status[field], 16) == 0, field
        assert not _readable_without_caps(relay, launcher.uid, launcher.gid), "the relay is dumpable"
        assert _readable_without_caps(worker, launcher.uid, launcher.gid), "control: the workload should be"
        # Left: the listener, the pinned socket, the epoll instance and the
        # upstream socket kept ready for the next connection; not the pipe
        # the launcher inherited, nor anything of the three finished
        # connections (the last one may take a moment to close).
        expected = sorted(["socket", str(sock), "anon_inode", "socket"])
        deadline = time.monotonic() + 5
        while True:
            fds = {fd: os.readlink(f"/proc/{relay}/fd/{fd}") for fd in os.listdir(f"/proc/{relay}/fd")}
            assert fds.pop("0") == fds.pop("1") == "/dev/null"
            fds.pop("2")
            kinds = sorted(link.split(":")[0] for link in fds.values())
            if kinds == expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert os.readlink(f"/proc/self/fd/{inherited_write}") not in fds.values(), fds
        assert kinds == expected, fds
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


# ---------------------------------------------------------------- what an earlier sandbox may have planted
# Issue 11 finding 1: a workload that can write the socket's directory prepares
# the path for the next launch. The relay must refuse (125, naming the path)
# rather than pin whatever the path now leads to.


def _root_owned_dir(path: Path) -> Path:
    path.mkdir()
    os.chown(path, 0, 0)
    path.chmod(0o755)
    return path


def _original_and_decoy(launcher, shared_dir: Path, servers) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
    """The caller's directory ``work`` with the relay's socket ``proxy.sock``
    (greeting "original"), and a decoy socket (greeting "decoy") in a
    root-owned directory beside it; the decoy is owned by the caller, so
    protected_hardlinks lets a sandbox of the caller link it."""
    work = shared_dir / "work"
    work.mkdir()
    os.chown(work, launcher.uid, launcher.gid)
    sock = work / "proxy.sock"
    servers(sock, greeter("original"))
    decoy = _root_owned_dir(shared_dir / "elsewhere") / "decoy.sock"
    servers(decoy, greeter("decoy"))
    return work, sock, decoy


def _plant_then_relaunch(launcher, relay_path: Path, bind: Path, plant: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """Launch 1 runs ``plant`` with BIND writable; launch 2, the same argv, only
    touches a marker and reads the relay: it must not run."""
    argv = ("--unshare-net", "--relay", PORT, str(relay_path), *SYSTEM, "--bind", str(bind), str(bind))
    first = launcher.run(*argv, "--", "/bin/sh", "-c", "set -e; " + plant)
    assert first.returncode == 0, first.stderr
    ran = bind / "second-launch-ran"
    second = launcher.run(*argv, "--", "/bin/bash", "-c", f"touch {ran}; " + READ_GREETING)
    assert not ran.exists(), f"the second launch ran its workload: {second.stdout!r}"
    assert "Traceback" not in second.stderr
    return second


def test_a_socket_swapped_for_a_symlink_by_an_earlier_sandbox_is_refused(launcher, shared_dir, servers) -> None:
    work, sock, decoy = _original_and_decoy(launcher, shared_dir, servers)
    second = _plant_then_relaunch(launcher, sock, work, f"mv {sock} {work}/moved.sock; ln -s {decoy} {sock}")
    assert second.returncode == 125, second.stdout + second.stderr
    assert second.stderr.startswith(f"srt-launcher: relay socket: {sock}: refusing the symlink {sock}:"), second.stderr
    assert_none_left(str(sock))


def test_a_directory_swapped_for_a_symlink_by_an_earlier_sandbox_is_refused(launcher, shared_dir, servers) -> None:
    work = shared_dir / "work"
    (work / "sockets").mkdir(parents=True)
    for path in (work, work / "sockets"):
        os.chown(path, launcher.uid, launcher.gid)
    sock = work / "sockets" / "proxy.sock"
    servers(sock, greeter("original"))
    decoys = _root_owned_dir(shared_dir / "decoys")
    servers(decoys / "proxy.sock", greeter("decoy"))
    second = _plant_then_relaunch(launcher, sock, work, f"mv {work}/sockets {work}/moved; ln -s {decoys} {work}/sockets")
    assert second.returncode == 125, second.stdout + second.stderr
    assert f"relay socket: {sock}: refusing the symlink {work}/sockets:" in second.stderr, second.stderr


def test_a_socket_hard_linked_in_by_an_earlier_sandbox_is_refused(launcher, shared_dir, servers) -> None:
    # The other socket must sit on the same mount as the socket's directory
    # (link(2) does not cross mounts): the sandbox binds their common parent.
    work, sock, decoy = _original_and_decoy(launcher, shared_dir, servers)
    second = _plant_then_relaunch(launcher, sock, shared_dir, f"mv {sock} {work}/moved.sock; ln {decoy} {sock}")
    assert second.returncode == 125, second.stdout + second.stderr
    assert f"relay socket: {sock}: a socket with 2 names" in second.stderr, second.stderr


def test_a_symlink_only_others_could_have_written_is_followed_by_an_unprivileged_caller(launcher, shared_dir, servers) -> None:
    """A symlink in a directory the caller cannot write (``/var/run`` → ``/run``
    for a user) is no sandbox's doing: followed. A root caller's sandboxes run
    as root and can write every root-owned directory: refused."""
    work = shared_dir / "work"
    work.mkdir()
    os.chown(work, launcher.uid, launcher.gid)
    servers(work / "proxy.sock", greeter("through a trusted link"))
    links = _root_owned_dir(shared_dir / "links")
    (links / "work").symlink_to(work)
    result = launcher.run(
        "--unshare-net", "--relay", PORT, str(links / "work" / "proxy.sock"), *SYSTEM, "--", "/bin/bash", "-c", READ_GREETING,
    )
    if launcher.unprivileged:
        assert (result.returncode, result.stdout) == (0, "greeting from through a trusted link\n"), result.stderr
    else:
        assert result.returncode == 125, result.stdout + result.stderr
        assert f"refusing the symlink {links}/work:" in result.stderr, result.stderr


def test_a_relay_path_through_symlinks_to_a_file_or_in_a_loop_fails_cleanly(launcher, shared_dir) -> None:
    links = _root_owned_dir(shared_dir / "links")
    (links / "loop").symlink_to(links / "loop")
    (links / "file").symlink_to("/etc/hostname")
    for path, reason in ((links / "loop", "Too many levels of symbolic links"), (links / "file", "not a Unix socket")):
        result = launcher.run("--unshare-net", "--relay", PORT, str(path), *SYSTEM, "--", "/bin/true")
        assert result.returncode == 125, result.stderr
        assert result.stderr.startswith(f"srt-launcher: relay socket: {path}: "), result.stderr
        if launcher.unprivileged:  # root callers are refused at the first symlink
            assert reason in result.stderr, result.stderr


# ---------------------------------------------------------------- a port either serves or refuses


def test_a_dead_relay_leaves_every_port_refusing(launcher, shared_dir, servers) -> None:
    """Issue 11 finding 5: a port either serves or refuses. One process
    serves every --relay port and holds their listeners alone (the stub,
    PID 1 and the workload have none of them): once it is dead, no port
    accepts a connection that nobody would serve."""
    first, second = shared_dir / "first.sock", shared_dir / "second.sock"
    servers(first, greeter("first"))
    servers(second, greeter("second"))
    client = textwrap.dedent(
        """
        import socket, sys
        for port in (3128, 8080):
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            print(port, conn.recv(100).decode().strip(), flush=True)
        print("ready", flush=True)
        sys.stdin.readline()
        for port in (3128, 8080):
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                conn.settimeout(5)
                print(port, conn.recv(100).decode().strip() or "closed", flush=True)
            except ConnectionRefusedError:
                print(port, "refused", flush=True)
            except OSError as err:
                print(port, type(err).__name__, flush=True)
        """
    )
    proc = launcher.popen(
        "--unshare-net", "--relay", "3128", str(first), "--relay", "8080", str(second), *SYSTEM,
        "--", "/usr/bin/python3", "-c", client,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        served = [proc.stdout.readline() for _ in range(3)]
        assert served == ["3128 greeting from first\n", "8080 greeting from second\n", "ready\n"], proc.stderr.read()
        (relay,), _ = launcher_tree(proc.pid, 1)
        os.kill(relay, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not _dead(relay) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == "3128 refused\n8080 refused\n", err


# ---------------------------------------------------------------- one event loop serves every connection (issue 14)

CLIENTS = Path(relay_clients.__file__).read_text()  # run inside with python3 -c: uid 65534 may not reach the checkout
_MAIN_GUARD = 'if __name__ == "__main__":\n    main()\n'
assert _MAIN_GUARD in CLIENTS
CLIENT_LIBRARY = CLIENTS.replace(_MAIN_GUARD, "")  # the functions, for a script of one test's own


def echoer(conn: socket.socket) -> None:
    try:
        while data := conn.recv(1 << 16):
            conn.sendall(data)
    except ConnectionError:
        pass


@pytest.fixture
def echo_socket(shared_dir, servers) -> Path:  # type: ignore[no-untyped-def]
    """``proxy.sock`` in the shared directory, served by an echoing host server."""
    sock = shared_dir / "proxy.sock"
    servers(sock, echoer)
    return sock


def with_client_library(script: str) -> str:
    """A script of one test's own, after relay_clients' functions (sequential, concurrent...)."""
    return CLIENT_LIBRARY + textwrap.dedent(script)


def _clients_inside(launcher, sock: Path, *client_args: str, timeout: float = 120) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    address = f"tcp:127.0.0.1:{PORT}"
    return _python_inside(launcher, sock, CLIENTS, client_args[0], address, *client_args[1:], timeout=timeout)


def test_relay_echoes_2000_sequential_connections(launcher, echo_socket) -> None:
    result = _clients_inside(launcher, echo_socket, "sequential", "2000")
    assert (result.returncode, result.stdout) == (0, "ok 2000\n"), result.stderr


def test_relay_echoes_200_concurrent_connections(launcher, echo_socket) -> None:
    # The host server's backlog (BACKLOG, 16) is far below 200: the relay's Unix
    # connects meet a full backlog (EAGAIN) and must retry, not fail.
    result = _clients_inside(launcher, echo_socket, "concurrent", "200", "100000")
    assert (result.returncode, result.stdout) == (0, "ok 200\n"), result.stderr


def test_an_upstream_vanishing_mid_transfer_closes_that_connection_only(launcher, shared_dir, servers) -> None:
    def echo_or_vanish(conn: socket.socket) -> None:
        first = conn.recv(1 << 16)
        if first.startswith(b"vanish"):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # a reset, mid-transfer
            return
        conn.sendall(first)
        echoer(conn)

    sock = shared_dir / "proxy.sock"
    servers(sock, echo_or_vanish)
    client = textwrap.dedent(
        f"""
        import os, socket
        steady = socket.create_connection(("127.0.0.1", {PORT}), timeout=10)
        steady.sendall(b"steady"); assert steady.recv(6) == b"steady"
        doomed = socket.create_connection(("127.0.0.1", {PORT}), timeout=10)
        doomed.sendall(b"vanish" + os.urandom(100000))
        try:
            ended = doomed.recv(10) == b""
        except ConnectionResetError:
            ended = True
        for _ in range(3):
            steady.sendall(b"still here"); assert steady.recv(10) == b"still here"
        fresh = socket.create_connection(("127.0.0.1", {PORT}), timeout=10)
        fresh.sendall(b"fresh"); assert fresh.recv(5) == b"fresh"
        print("ended" if ended else "doomed connection still open")
        """
    )
    result = _python_inside(launcher, sock, client)
    assert (result.returncode, result.stdout) == (0, "ended\n"), result.stderr


def test_a_client_that_stops_reading_does_not_stall_the_others(launcher, echo_socket) -> None:
    client = with_client_library(
        f"""
        stalled = socket.create_connection(("127.0.0.1", {PORT}))
        stalled.setblocking(False)
        sent, idle = 0, 0
        while idle < 50:  # until the echo has filled every buffer on the way back
            try:
                sent += stalled.send(b"x" * 65536)
                idle = 0
            except BlockingIOError:
                idle += 1
                import time; time.sleep(0.01)
        print("stalled after", "over 4 MiB" if sent > 4 << 20 else sent, flush=True)
        address = "tcp:127.0.0.1:{PORT}"
        print(sequential(address, 200), concurrent(address, 20, 100000), flush=True)
        """
    )
    result = _python_inside(launcher, echo_socket, client)
    assert (result.returncode, result.stdout) == (0, "stalled after over 4 MiB\nok 200 ok 20\n"), result.stderr


def test_with_few_descriptors_connections_wait_their_turn_and_every_port_serves(launcher, shared_dir, servers) -> None:
    """Issue 11 finding 5's other case: under a tiny ``ulimit -n`` (10: what a
    launch with two relays needs) a relay has room for a connection or two;
    the next ones to the same port wait until earlier ones close (neither
    refused nor accepted and dropped), and the other port serves too."""
    sock = shared_dir / "proxy.sock"
    servers(sock, holder)
    client = textwrap.dedent(
        """
        import select, socket
        conns = [socket.create_connection(("127.0.0.1", 3128), timeout=10) for _ in range(4)]
        served = [c for c in conns if select.select([c], [], [], 1.0)[0]]
        waiting = [c for c in conns if c not in served]
        print(len(served) >= 1, len(waiting) >= 1, flush=True)
        for c in served:
            assert c.recv(5) == b"held\\n"
            c.close()
        for c in waiting:  # each is served once an earlier one has closed
            assert c.recv(5) == b"held\\n"
            c.close()
        other = socket.create_connection(("127.0.0.1", 8080), timeout=10)
        print(other.recv(5) == b"held\\n", flush=True)
        """
    )
    run = launcher.argv(
        "run", "--unshare-net", "--relay", "3128", str(sock), "--relay", "8080", str(sock), *SYSTEM,
        "--", "/usr/bin/python3", "-c", client,
    )
    result = subprocess.run(
        ["/bin/bash", "-c", 'ulimit -n 10 && exec "$@"', "bash", *run],
        capture_output=True, text=True, timeout=60, **launcher.process_kwargs(),
    )
    assert (result.returncode, result.stdout) == (0, "True True\nTrue\n"), result.stderr


def test_relay_memory_does_not_grow_with_closed_connections(launcher, echo_socket) -> None:
    client = with_client_library(
        f"""
        address = "tcp:127.0.0.1:{PORT}"
        for count in (1000, 10000):
            print(sequential(address, count), flush=True)
            sys.stdin.readline()
        """
    )
    proc = launcher.popen(
        "--unshare-net", "--relay", PORT, str(echo_socket), *SYSTEM, "--", "/usr/bin/python3", "-c", client,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline() == "ok 1000\n"  # warm: every code path, every pool
        (relay,), _ = launcher_tree(proc.pid, 1)
        before = int(_status(relay)["VmRSS"].split()[0])
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "ok 10000\n"
        after = int(_status(relay)["VmRSS"].split()[0])
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert after - before < 1024, f"RSS grew by {after - before} kB over 10,000 connections"
