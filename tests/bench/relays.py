"""The relay section of `make bench`: srt-launcher's relays against socat doing the same job.

A *role* is one job a relay does in sandbox-runtime's chain, done once by
srt-launcher and once by socat:

  run --relay      127.0.0.1:PORT in the sandbox -> host Unix socket:
                   `srt-launcher run --unshare-net --relay` against socat
                   `TCP-LISTEN:PORT,fork,reuseaddr UNIX-CONNECT:S` in bwrap
  relay            host Unix socket -> TCP: `srt-launcher relay` against
                   `socat UNIX-LISTEN:S,fork TCP:127.0.0.1:P`
  socat host       `srt-launcher socat` against socat with sandbox-runtime's
                   host-bridge command line (UNIX-LISTEN:S,fork,reuseaddr
                   TCP:localhost:P,keepalive,keepidle=10,keepintvl=5,keepcnt=3)
  socat inside     `srt-launcher socat` against socat with sandbox-runtime's
                   in-sandbox command line (TCP6-LISTEN:P,ipv6only=0,fork,
                   reuseaddr,backlog=4096 UNIX-CONNECT:S), both in bwrap
                   --unshare-net as sandbox-runtime runs them

For each role, in alternating srt/socat pairs (the figure is the median of
the per-pair ratios): throughput (one push of --push bytes into a sink),
short-connection rate (echo connections one after another, and from 8
client processes at once), the short-connection rate while one bulk
download streams through the same relay (as a fraction of the rate without,
for each of srt and socat), and memory (PSS of every relay process) with
1,000 connections open. Servers and clients are benchtool.c (C, not the
bottleneck); a direct client -> server run is the reference line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from harness import BenchError, comm, eprint, fmt, median, parse_pair, process_tree, smaps_rollup, spread, wait_for_socket

SANDBOX_PORT = 3128
MB = 1_000_000
HOLD_CONNECTIONS = 1000
CONCURRENT_CLIENTS = 8

# SPEC §4, relays (both) and the socat front end against socat doing the same job.
BUDGETS = {
    "rate": (">=", 2.0),
    "rate8": (">=", 3.0),
    "throughput": (">=", 1.5),
    "fair": (">=", 0.5),
    "memory": ("<=", 0.2),
}
WHAT = {
    "throughput": "throughput srt/socat",
    "rate": "short-connection rate srt/socat, sequential",
    "rate8": f"short-connection rate srt/socat, {CONCURRENT_CLIENTS} clients",
    "fair": "srt short-connection rate during a bulk transfer / without",
    "memory": f"PSS with {HOLD_CONNECTIONS:,} connections srt/socat",
}


class Role:
    """One relay job; ``client(who, target, args)`` is the argv that runs
    ``benchtool ARGS`` (ADDR in ARGS replaced) against ``who``'s relay."""

    name = ""
    inside = False

    def __init__(self, bench, servers: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
        self.bench = bench
        self.servers = servers  # "sink"/"echo" -> the upstream address this role relays to

    def named(self, name: str) -> "Role":
        self.name = name
        return self

    def start(self) -> None:
        """Start long-lived relays (host roles)."""

    def client(self, who: str, target: str, args: list[str]) -> list[str]:
        raise NotImplementedError

    def relay_processes(self, who: str, launch: int | None) -> list[int]:
        raise NotImplementedError


class HostRole(Role):
    """Long-lived relays on the host, listening on Unix sockets."""

    def __init__(self, bench, servers: dict[str, str], srt_argv, socat_argv) -> None:  # type: ignore[no-untyped-def]
        super().__init__(bench, servers)
        self.srt_argv = srt_argv  # (path, "127.0.0.1:PORT") -> argv
        self.socat_argv = socat_argv
        self.paths: dict[tuple[str, str], str] = {}
        self.procs: dict[tuple[str, str], subprocess.Popen] = {}

    def start(self) -> None:
        res = self.bench.res
        for target, upstream in self.servers.items():
            for who in ("srt", "socat"):
                path = f"{self.bench.dir}/{self.name.replace(' ', '-')}-{who}-{target}.sock"
                argv = (self.srt_argv if who == "srt" else self.socat_argv)(path, upstream)
                proc, _ = res.start_server(argv, ready="none")
                wait_for_socket(path)
                self.paths[(who, target)] = path
                self.procs[(who, target)] = proc

    def client(self, who: str, target: str, args: list[str]) -> list[str]:
        res = self.bench.res
        for proc in self.procs.values():
            res.check_server(proc)
        address = f"unix:{self.paths[(who, target)]}"
        return [self.bench.tool, *(address if a == "ADDR" else a for a in args)]

    def relay_processes(self, who: str, launch: int | None) -> list[int]:
        return process_tree(self.procs[(who, "echo")].pid)


class InsideRole(Role):
    """Relays started with each sandbox, the client inside it. ``marker``: a
    word of the relays' own argv (else srt's relays are the stub's children)."""

    inside = True

    def __init__(self, bench, servers: dict[str, str], srt_launch, socat_launch, marker: str = "") -> None:  # type: ignore[no-untyped-def]
        super().__init__(bench, servers)
        self.srt_launch = srt_launch  # (unix socket, command) -> argv
        self.socat_launch = socat_launch
        self.marker = marker.encode()

    def client(self, who: str, target: str, args: list[str]) -> list[str]:
        address = f"tcp:127.0.0.1:{SANDBOX_PORT}"
        command = [self.bench.tool, *(address if a == "ADDR" else a for a in args)]
        return (self.srt_launch if who == "srt" else self.socat_launch)(self.servers[target], command)

    def relay_processes(self, who: str, launch: int | None) -> list[int]:
        tree = process_tree(launch) if launch else []
        if self.marker:
            return [pid for pid in tree if self.marker in _cmdline(pid)]
        if who == "socat":
            return [pid for pid in tree if comm(pid) == "socat"]
        # srt: the stub's children that live in the host PID namespace only
        # (PID 1 has two NSpid entries), and whatever they forked.
        relays = [pid for pid in tree if pid != launch and _parent(pid) == launch and _nspid_depth(pid) == 1]
        return [pid for relay in relays for pid in process_tree(relay)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def _nspid_depth(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return len(line.split()) - 1
    except OSError:
        pass
    return 0


class RelaySection:
    def __init__(self, bench) -> None:  # type: ignore[no-untyped-def]
        self.bench = bench
        self.res = bench.res
        self.settings = bench.settings
        self.tool = bench.tool
        self.out: dict = {}
        self.rows: list[tuple[str, str, str]] = []

    # ------------------------------------------------------------ running clients

    def run_client(self, argv: list[str], timeout: float = 300) -> bytes:
        result = self.res.run(argv, timeout=timeout)
        self.bench.orphans += self.res.reap_orphans()
        if result.returncode != 0:
            raise BenchError(
                f"exit {result.returncode}: {' '.join(argv)}: {result.stderr.decode(errors='replace').strip()[-1500:]}"
            )
        return result.stdout

    def measure(self, role: Role, who: str, kind: str) -> float:
        s = self.settings
        if kind == "throughput":
            argv = role.client(who, "sink", ["push", "ADDR", str(s.push_bytes)])
            count, ns = parse_pair(self.run_client(argv), argv)
            return count / MB / (ns / 1e9)
        if kind in ("rate", "rate8"):
            extra = [str(CONCURRENT_CLIENTS)] if kind == "rate8" else []
            conns = s.rate_conns * (2 if kind == "rate8" else 1)
            argv = role.client(who, "echo", ["rate", "ADDR", str(conns), *extra])
            count, ns = parse_pair(self.run_client(argv), argv)
            return count / (ns / 1e9)
        if kind == "fair":
            argv = role.client(who, "echo", ["fair", "ADDR", str(s.fair_conns)])
            out = self.run_client(argv)
            try:
                _, without, with_bulk = (int(x) for x in out.split()[:3])
            except ValueError:
                raise BenchError(f"unexpected output {out[:200]!r} from {' '.join(argv)}") from None
            return without / with_bulk  # rate with / rate without
        if kind == "memory":
            return self.held_memory(role, who)
        raise AssertionError(kind)

    def held_memory(self, role: Role, who: str) -> float:
        """MB of PSS summed over ``who``'s relay processes while HOLD_CONNECTIONS connections are open."""
        argv = role.client(who, "echo", ["hold", "ADDR", str(HOLD_CONNECTIONS)])
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.res.pids.add(proc.pid)
        try:
            line = proc.stdout.readline()
            if not line.startswith(b"held"):
                proc.kill()
                raise BenchError(f"{' '.join(argv)}: {line!r} {proc.stderr.read().decode(errors='replace')[-800:]}")
            time.sleep(0.3)  # settle: the last connections' pages
            pids = role.relay_processes(who, proc.pid)
            if not pids:
                raise BenchError(f"no relay process found for {who} in {role.name}")
            total_kb = 0
            for pid in pids:
                try:
                    total_kb += smaps_rollup(pid).get("Pss", 0)
                except OSError:
                    pass
            return total_kb * 1024 / MB
        finally:
            try:
                proc.stdin.close()
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.res.pids.discard(proc.pid)
            proc.stdout.close()
            proc.stderr.close()
            self.bench.orphans += self.res.reap_orphans()

    # ------------------------------------------------------------ one role

    def run_role(self, role: Role, kinds: list[str]) -> None:
        s = self.settings
        results: dict = {}
        try:
            role.start()
        except BenchError as err:
            self.bench.errors[f"relay {role.name}"] = f"relays did not start: {err}"
            eprint(f"relay {role.name}: relays did not start: {err}")
            return
        for kind in kinds:
            pairs = s.memory_pairs if kind == "memory" else s.relay_pairs
            values: dict[str, list[float]] = {"srt": [], "socat": []}
            ratios: list[float] = []
            error = None
            for i in range(pairs):
                order = ("srt", "socat") if i % 2 == 0 else ("socat", "srt")
                got = {}
                for who in order:
                    try:
                        got[who] = self.measure(role, who, kind)
                    except BenchError as err:
                        error = f"{who}: {err}"
                        break
                if error:
                    break
                values["srt"].append(got["srt"])
                values["socat"].append(got["socat"])
                if kind != "fair":
                    ratios.append(got["srt"] / got["socat"])
            value = median(values["srt"]) if kind == "fair" else median(ratios)
            results[kind] = {
                "srt": values["srt"],
                "socat": values["socat"],
                "median_srt": median(values["srt"]),
                "median_socat": median(values["socat"]),
                "median_ratio": value,
                "ratios": ratios,
                "error": error,
            }
            self._rows(role, kind, results[kind])
            if error:
                eprint(f"relay {role.name} {kind}: {error}")
                self.bench.errors[f"relay {role.name} {kind}"] = error
            op, limit = BUDGETS[kind]
            self.bench.budget(f"{role.name}: {WHAT[kind]}", value if values["srt"] else None, op, limit, "x")
        self.out[role.name] = results

    def _rows(self, role: Role, kind: str, result: dict) -> None:
        unit = {"throughput": " MB/s", "rate": " conn/s", "rate8": " conn/s", "fair": "x", "memory": " MB"}[kind]
        label = {"throughput": "throughput", "rate": "rate", "rate8": f"rate x{CONCURRENT_CLIENTS}",
                 "fair": "rate during bulk / without", "memory": f"PSS, {HOLD_CONNECTIONS} open"}[kind]  # fmt: skip
        self.rows.append((f"{role.name}: {label} srt", fmt(result["median_srt"], unit), spread(result["srt"])))
        self.rows.append((f"{role.name}: {label} socat", fmt(result["median_socat"], unit), spread(result["socat"])))
        if kind != "fair":
            self.rows.append(("  ratio srt/socat", fmt(result["median_ratio"], "x"), f"median of {len(result['ratios'])} pairs"))
