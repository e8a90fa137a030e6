"""Plumbing for run_bench.py: cleanup, spawning, servers, process trees, statistics.

Not a test module (pytest collects test_*.py / *_test.py only); nothing here
runs under `make test`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class BenchError(Exception):
    """A measurement could not be made (a command failed, a server did not start)."""


# ---------------------------------------------------------------- statistics


def median(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 32 samples is the maximum)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def fmt(value: float | None, unit: str) -> str:
    """A result for the report: thousands grouped from 100 up, two decimals below; n/a for none or NaN."""
    if value is None or value != value:
        return "n/a"
    return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.2f}{unit}"


def spread(values: list[float]) -> str:
    """The smallest and largest of a series of results, at the precision ``fmt`` gives them."""
    if not values:
        return ""
    if max(values) < 100:
        return f"min {min(values):.2f}, max {max(values):.2f}"
    return f"min {min(values):,.0f}, max {max(values):,.0f}"


# ---------------------------------------------------------------- resources and cleanup


class Resources:
    """Everything the benchmark starts, so that it can all be stopped on any exit path.

    Launches (posix_spawn'd pids) are SIGKILLed: srt-launcher's relays and
    PID 1 die by PDEATHSIG, bwrap by --die-with-parent. Servers run in their
    own session and are killed by process group (socat's and the relays'
    connection children included).
    """

    def __init__(self) -> None:
        # Subreaper: anything orphaned below us (a relay's connection children,
        # an inner bwrap whose parent was killed) is re-parented to us, not to
        # the machine's init, so close() can find, kill and reap it.
        _set_child_subreaper()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="srt-bench-"))
        os.chmod(self.tmpdir, 0o755)
        self.pids: set[int] = set()
        self.orphan_names: dict[str, int] = {}
        self.servers: list[subprocess.Popen] = []
        self.sockets: list[socket.socket] = []
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.errlog = os.open(self.tmpdir / "launch-stderr.log", os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    # -- launches

    def spawn(self, argv: list[str], stdout: int | None = None) -> int:
        """posix_spawn with stdin/stdout on /dev/null and stderr to the error log."""
        actions = [
            (os.POSIX_SPAWN_DUP2, self.devnull, 0),
            (os.POSIX_SPAWN_DUP2, self.devnull if stdout is None else stdout, 1),
            (os.POSIX_SPAWN_DUP2, self.errlog, 2),
        ]
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
        self.pids.add(pid)
        return pid

    def reap(self, pid: int, flags: int = 0) -> tuple[int, int]:
        got, status = os.waitpid(pid, flags)
        if got:
            self.pids.discard(got)
        return got, status

    def errlog_size(self) -> int:
        return os.fstat(self.errlog).st_size

    def errlog_since(self, offset: int, limit: int = 2000) -> str:
        data = os.pread(self.errlog, limit, offset)
        return data.decode(errors="replace").strip()

    def kill_launch(self, pid: int, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    # -- servers

    def start_server(self, argv: list[str], ready: str = "line") -> tuple[subprocess.Popen, str]:
        """Start a long-lived server in its own session.

        ready: "line" waits for a first stdout line (benchtool's "ready PORT"),
        "byte" for one byte (srt-launcher relay --ready-fd 1), "none" for nothing.
        stderr goes to a log file in the temp dir (a pipe nobody reads could fill up).
        """
        log = open(self.tmpdir / f"server-{len(self.servers)}-{Path(argv[0]).name}.log", "wb")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if ready == "none" else subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.servers.append(proc)
        text = ""
        if ready != "none":
            assert proc.stdout is not None
            text = (proc.stdout.readline() if ready == "line" else proc.stdout.read(1)).decode()
            if not text:
                proc.poll()
                self.stop_server(proc)
                err = Path(log.name).read_text(errors="replace").strip()
                raise BenchError(f"server did not start: {' '.join(argv)}: {err or 'no output'}")
        return proc, text.strip()

    def check_server(self, proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            err = Path(proc.log_path).read_text(errors="replace").strip()  # type: ignore[attr-defined]
            raise BenchError(f"server died (status {proc.returncode}): {' '.join(map(str, proc.args))}: {err[-1000:]}")

    def stop_server(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if proc.stdout:
            proc.stdout.close()
        if proc in self.servers:
            self.servers.remove(proc)

    def listening_unix_socket(self, name: str) -> str:
        path = str(self.tmpdir / name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(128)
        self.sockets.append(sock)
        return path

    # -- one-shot commands with captured output

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pids.add(proc.pid)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(argv)}") from None
        finally:
            if proc.returncode is not None:
                self.pids.discard(proc.pid)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def reap_orphans(self) -> int:
        """Reap exited children we did not start ourselves (re-parented orphans); return how many."""
        ours = self.pids | {proc.pid for proc in self.servers}
        count = 0
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return count
            if info is None or info.si_pid in ours:
                return count  # nothing exited, or one of ours: its owner reaps it
            name = comm(info.si_pid)
            self.orphan_names[name] = self.orphan_names.get(name, 0) + 1
            os.waitpid(info.si_pid, 0)
            count += 1

    def kill_descendants(self) -> None:
        """SIGKILL every process still below us, then reap until none is left (5 s at most)."""
        deadline = time.monotonic() + 5
        me = os.getpid()
        while time.monotonic() < deadline:
            left = [pid for pid in process_tree(me) if pid != me]
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                if not left:
                    return
            if not left:
                return
            time.sleep(0.02)

    def close(self) -> None:
        for pid in list(self.pids):
            self.kill_launch(pid)
        for pid in list(self.pids):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids.clear()
        for proc in list(self.servers):
            self.stop_server(proc)
        self.kill_descendants()
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        os.close(self.devnull)
        os.close(self.errlog)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _set_child_subreaper() -> None:
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        eprint(f"warning: PR_SET_CHILD_SUBREAPER: {os.strerror(ctypes.get_errno())}")


def terminate_on_signals() -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every `finally` cleanup runs."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def wait_for_socket(path: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise BenchError(f"no socket appeared at {path}")


# ---------------------------------------------------------------- the C client/servers


def build_benchtool(outdir: Path) -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BenchError("gcc not found (make setup installs it)")
    binary = outdir / "benchtool"
    result = subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(binary), str(HERE / "benchtool.c")], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise BenchError(f"gcc failed:\n{result.stderr}")
    binary.chmod(0o755)
    return str(binary)


def parse_pair(stdout: bytes, argv: list[str], stderr: bytes = b"") -> tuple[int, int]:
    try:
        count, ns = stdout.split()[:2]
        return int(count), int(ns)
    except ValueError:
        raise BenchError(
            f"unexpected client output {stdout[:200]!r} from {' '.join(argv)}: {stderr.decode(errors='replace').strip()}"
        ) from None


# ---------------------------------------------------------------- process trees and memory


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: fields resume after the last ')'.
        ppid = int(data[data.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(root: int) -> list[int]:
    tree = children_map()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def smaps_rollup(pid: int) -> dict[str, int]:
    """kB values of /proc/PID/smaps_rollup (Rss, Pss, Private_*, ...)."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1])
    return values


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def eprint(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)
