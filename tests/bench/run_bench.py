#!/usr/bin/env python3
"""`make bench`: srt-launcher against the bwrap + socat chain it replaces (SPEC §4).

Sections (all in one run, so the ratios compare like with like on a shared,
noisy machine):

  launch       latency of the full sandbox-runtime style launch against the
               bwrap + bash + 2 socat chain, the plain launch against plain
               bwrap, and the bare interpreter as the floor. Warm-up, then
               alternating pairs; the quoted figure is the median of the
               per-pair ratios.
  relay        every SPEC §4 relay budget, for each role a relay plays in
               sandbox-runtime's chain (`run --relay`, `relay`, and the socat
               front end as the host bridge and inside the sandbox), against
               socat doing the same job: throughput, short-connection rate
               (sequential, 8 clients), the rate while a bulk download
               streams, PSS with 1,000 connections open (see relays.py);
               a direct client -> server run is the reference line.
  memory       PSS of the launcher's own processes (stub, PID 1, relays)
               while the workload sleeps, against bwrap x2 + bash + 2 socat.
  concurrency  32 full launches at once: failures, median and p99 latency.
  imports      `python -X importtime` of the run path; fails loudly if it
               imports click, pyroute2 or pyseccomp.
  api          the Python API's launch against subprocess.run([bwrap]) from
               the same process: 20 MB and 1 GB callers, 8 threads (api_bench.py).

Usage: run_bench.py [--quick] [--venv DIR] [--output FILE] [--sections a,b]
                    [--relay-roles a,b] [--relay-kinds a,b] [--strict]
The venv defaults to $SRT_BENCH_VENV, else the repository's .venv. Prints a
table and the budget lines (PASS/FAIL), writes JSON; exit status 1 if any
budget fails or a section could not be measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import relays
from harness import (
    BenchError,
    Resources,
    build_benchtool,
    comm,
    eprint,
    fmt,
    median,
    parse_pair,
    percentile,
    process_tree,
    smaps_rollup,
    terminate_on_signals,
    tool_version,
    wait_for_socket,
)

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("launch", "relay", "memory", "concurrency", "imports", "api")
FORBIDDEN_IMPORTS = ("click", "pyroute2", "pyseccomp")
MB = 1_000_000  # decimal megabytes everywhere (throughput and memory)
SANDBOX_PORT = 3128

ROLES = ("run --relay", "relay", "socat host", "socat inside")
# SPEC §4.
BUDGETS = {
    "launch_full_ratio_max": 1.5,
    "launcher_pss_ratio_max": 1.5,
    "concurrent_failures_max": 0,
}


class Settings:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.launch_warmup = 3 if quick else 10
        self.launch_rounds = 15 if quick else 300
        self.push_bytes = (64 if quick else 512) << 20
        self.rate_conns = 300 if quick else 2000
        self.fair_conns = 300 if quick else 1000
        self.relay_pairs = 2 if quick else 5
        self.memory_pairs = 1 if quick else 3
        self.roles = list(ROLES)
        self.kinds = list(relays.BUDGETS)
        self.memory_samples = 1 if quick else 3
        self.concurrent = 32
        self.concurrent_rounds = 1 if quick else 5
        self.import_runs = 3 if quick else 7

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}


class Bench:
    def __init__(self, args: argparse.Namespace, res: Resources) -> None:
        self.res = res
        self.settings = Settings(args.quick)
        self.venv = Path(args.venv).resolve()
        self.srt = str(self.venv / "bin" / "srt-launcher")
        self.vpy = str(self.venv / "bin" / "python")
        self.bwrap = _which("bwrap")
        self.socat = _which("socat")
        self.bash = "/bin/bash"
        self.true = "/bin/true"
        self.sleep = _which("sleep")
        self.floor_python = "/usr/bin/python3"
        self.dir = str(res.tmpdir)
        self.tool = ""
        self.results: dict = {}
        self.budgets: list[dict] = []
        self.errors: dict[str, str] = {}
        # Exited processes re-parented to the harness (a subreaper) during a
        # section: descendants the launcher (or bwrap/socat) left orphaned.
        self.orphans = 0
        self.orphans_by_section: dict[str, int] = {}

    # ------------------------------------------------------------ command lines

    def srt_full(self, sock: str, command: list[str]) -> list[str]:
        return [
            self.srt, "run", "--unshare-net",
            "--relay", "3128", sock, "--relay", "1080", sock,
            "--seccomp-unix-block", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
            "--", *command,
        ]  # fmt: skip

    def chain(self, sock: str, tail: str) -> list[str]:
        script = (
            f"{self.socat} TCP-LISTEN:3128,fork,reuseaddr UNIX-CONNECT:{sock} & "
            f"{self.socat} TCP-LISTEN:1080,fork,reuseaddr UNIX-CONNECT:{sock} & {tail}"
        )
        return self.bwrap_net([self.bash, "-c", script])

    def bwrap_net(self, command: list[str]) -> list[str]:
        return [
            self.bwrap, "--new-session", "--die-with-parent", "--unshare-net", "--unshare-pid",
            "--ro-bind", "/", "/", "--bind", self.dir, self.dir, "--proc", "/proc", "--dev", "/dev",
            *command,
        ]  # fmt: skip

    def srt_plain(self) -> list[str]:
        return [self.srt, "run", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", self.true]

    def bwrap_plain(self) -> list[str]:
        return [self.bwrap, "--unshare-pid", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", self.true]

    def srt_one_relay(self, sock: str, command: list[str]) -> list[str]:
        # No seccomp here: the filter would tax every send() of the client,
        # and this measures the relay, not the workload.
        return [
            self.srt, "run", "--unshare-net", "--relay", str(SANDBOX_PORT), sock,
            "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", *command,
        ]  # fmt: skip

    def socat_one_relay(self, sock: str, command: list[str]) -> list[str]:
        script = f"{self.socat} TCP-LISTEN:{SANDBOX_PORT},fork,reuseaddr UNIX-CONNECT:{sock} & exec " + " ".join(command)
        return self.bwrap_net([self.bash, "-c", script])

    # ------------------------------------------------------------ launches

    def time_launch(self, argv: list[str]) -> float:
        """One launch, stdio on /dev/null: milliseconds from posix_spawn to reaped."""
        offset = self.res.errlog_size()
        start = time.perf_counter_ns()
        pid = self.res.spawn(argv)
        _, status = self.res.reap(pid)
        elapsed = time.perf_counter_ns() - start
        if status != 0:
            raise BenchError(
                f"exit {os.waitstatus_to_exitcode(status)}: {' '.join(argv)}: {self.res.errlog_since(offset) or 'no stderr'}"
            )
        return elapsed / 1e6

    def bench_launch(self) -> None:
        s = self.settings
        sock = self.res.listening_unix_socket("launch.sock")
        variants = {
            "srt_full": self.srt_full(sock, [self.true]),
            "chain": self.chain(sock, self.true),
            "srt_plain": self.srt_plain(),
            "bwrap_plain": self.bwrap_plain(),
            "python_floor": [self.floor_python, "-I", "-c", "pass"],
            # -P: the current directory (maybe the checkout) must not shadow the installed package.
            "venv_python_site": [self.vpy, "-P", "-c", "pass"],
            "venv_python_run_imports": [self.vpy, "-P", "-c", "import srt_launcher.__main__, srt_launcher.commands.run"],
        }
        pairs = [("srt_full", "chain"), ("srt_plain", "bwrap_plain")]
        # The floor, then the floor plus site (the console script's interpreter),
        # then plus the run path's imports: the rest of srt_plain is forks, mounts, exec, exit.
        floors = ["python_floor", "venv_python_site", "venv_python_run_imports"]
        broken: dict[str, str] = {}
        for name, argv in variants.items():
            try:
                for _ in range(s.launch_warmup):
                    self.time_launch(argv)
            except BenchError as err:
                broken[name] = str(err)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        ratios: dict[str, list[float]] = {f"{a}/{b}": [] for a, b in pairs}
        failures: dict[str, int] = {name: 0 for name in variants}
        for i in range(s.launch_rounds):
            for a, b in pairs:
                if a in broken or b in broken:
                    continue
                order = (a, b) if i % 2 == 0 else (b, a)
                got = {}
                for name in order:
                    try:
                        got[name] = self.time_launch(variants[name])
                    except BenchError as err:
                        failures[name] += 1
                        if failures[name] > 5:
                            broken[name] = f"more than 5 failures; last: {err}"
                if len(got) == 2:
                    samples[a].append(got[a])
                    samples[b].append(got[b])
                    ratios[f"{a}/{b}"].append(got[a] / got[b])
            for name in floors:
                if name not in broken:
                    try:
                        samples[name].append(self.time_launch(variants[name]))
                    except BenchError:
                        failures[name] += 1
        out = {
            "commands": {name: argv for name, argv in variants.items()},
            "median_ms": {n: median(v) for n, v in samples.items() if v},
            "p10_ms": {n: percentile(v, 10) for n, v in samples.items() if v},
            "p90_ms": {n: percentile(v, 90) for n, v in samples.items() if v},
            "median_ratio": {n: median(v) for n, v in ratios.items() if v},
            "pairs": {n: len(v) for n, v in ratios.items()},
            "failures": failures,
            "broken": broken,
            "samples_ms": samples,
        }
        self.results["launch"] = out
        rows = []
        for a, b in pairs:
            for name in (a, b):
                rows.append(_launch_row(name, out))
            key = f"{a}/{b}"
            rows.append((f"  ratio {key}", fmt(out["median_ratio"].get(key), "x"), f"median of {len(ratios[key])} pairs"))
        for name in floors:
            rows.append(_launch_row(name, out))
        _table("launch latency (ms, spawn to reaped)", ("command", "median", "p10 / p90"), rows)
        for name, why in broken.items():
            eprint(f"launch: {name} broken: {why}")
        ratio = out["median_ratio"].get("srt_full/chain")
        self.budget("launch full-style srt/chain", ratio, "<=", BUDGETS["launch_full_ratio_max"], "x")
        failed = sum(failures.values())
        if failed:
            eprint(f"launch: {failed} failed launches: {failures}")

    # ------------------------------------------------------------ relays

    def client(self, argv: list[str], timeout: float = 300) -> tuple[int, int]:
        result = self.res.run(argv, timeout=timeout)
        self.orphans += self.res.reap_orphans()
        if result.returncode != 0:
            raise BenchError(
                f"exit {result.returncode}: {' '.join(argv)}: {result.stderr.decode(errors='replace').strip()[-1500:]}"
            )
        return parse_pair(result.stdout, argv, result.stderr)

    def bench_relay(self) -> None:
        """See relays.py: every role, every SPEC §4 relay budget."""
        s = self.settings
        tool = self.tool
        res = self.res
        # Host-side servers, shared by every measurement.
        sink_unix = f"{self.dir}/sink.sock"
        echo_unix = f"{self.dir}/echo.sock"
        servers = [
            res.start_server([tool, "sink", f"unix:{sink_unix}"])[0],
            res.start_server([tool, "echo", f"unix:{echo_unix}"])[0],
        ]
        sink_tcp_proc, line = res.start_server([tool, "sink", "tcp:127.0.0.1:0"])
        sink_port = int(line.split()[1])
        echo_tcp_proc, line = res.start_server([tool, "echo", "tcp:127.0.0.1:0"])
        echo_port = int(line.split()[1])
        servers += [sink_tcp_proc, echo_tcp_proc]
        section = relays.RelaySection(self)
        try:
            self._direct_reference(section, sink_unix, echo_unix, sink_port, echo_port)
            tcp = {"sink": f"127.0.0.1:{sink_port}", "echo": f"127.0.0.1:{echo_port}"}
            unix = {"sink": sink_unix, "echo": echo_unix}
            for role in self.relay_roles(tcp, unix):
                if role.name in s.roles:
                    section.run_role(role, s.kinds)
        finally:
            for proc in servers:
                res.stop_server(proc)
        self.results["relay"] = {
            "push_bytes": s.push_bytes, "rate_conns": s.rate_conns, "pairs": s.relay_pairs, **section.out,
        }  # fmt: skip
        _table(
            f"relays ({s.push_bytes >> 20} MiB pushes, {s.rate_conns}-connection rate runs, {s.relay_pairs} pairs; "
            f"memory: {s.memory_pairs} pairs)",
            ("measurement", "median", "spread"),
            section.rows,
        )

    def relay_roles(self, tcp: dict[str, str], unix: dict[str, str]) -> list:
        srt, socat = self.srt, self.socat
        # sandbox-runtime's own command lines for its socat relays.
        bridge = lambda path, up: [  # noqa: E731
            f"UNIX-LISTEN:{path},fork,reuseaddr",
            f"TCP:localhost:{up.rsplit(':', 1)[1]},keepalive,keepidle=10,keepintvl=5,keepcnt=3",
        ]
        inside = f"TCP6-LISTEN:{SANDBOX_PORT},ipv6only=0,fork,reuseaddr,backlog=4096"
        return [
            relays.InsideRole(self, unix, self.srt_one_relay, self.socat_one_relay).named("run --relay"),
            relays.HostRole(
                self, tcp,
                lambda path, up: [srt, "relay", path, up],
                lambda path, up: [socat, f"UNIX-LISTEN:{path},fork", f"TCP:{up}"],
            ).named("relay"),
            relays.HostRole(
                self, tcp, lambda path, up: [srt, "socat", *bridge(path, up)], lambda path, up: [socat, *bridge(path, up)],
            ).named("socat host"),
            relays.InsideRole(
                self, unix,
                lambda sock, command: self.socat_in_bwrap([srt, "socat"], inside, sock, command),
                lambda sock, command: self.socat_in_bwrap([socat], inside, sock, command),
                marker="TCP6-LISTEN",
            ).named("socat inside"),
        ]  # fmt: skip

    def socat_in_bwrap(self, socat: list[str], listen: str, sock: str, command: list[str]) -> list[str]:
        """sandbox-runtime's in-sandbox relay: socat started in the sandbox, then the command."""
        script = f"{' '.join(socat)} {listen} UNIX-CONNECT:{sock} & exec " + " ".join(command)
        return self.bwrap_net([self.bash, "-c", script])

    def _direct_reference(self, section, sink_unix: str, echo_unix: str, sink_port: int, echo_port: int) -> None:  # type: ignore[no-untyped-def]
        s = self.settings
        tool = self.tool
        nbytes, nconns = str(s.push_bytes), str(s.rate_conns)
        ref: dict = {}
        for label, argv in (
            ("unix_throughput_MBps", [tool, "push", f"unix:{sink_unix}", nbytes]),
            ("tcp_throughput_MBps", [tool, "push", f"tcp:127.0.0.1:{sink_port}", nbytes]),
            ("unix_rate_per_s", [tool, "rate", f"unix:{echo_unix}", nconns]),
            ("tcp_rate_per_s", [tool, "rate", f"tcp:127.0.0.1:{echo_port}", nconns]),
            ("tcp_rate8_per_s", [tool, "rate", f"tcp:127.0.0.1:{echo_port}", str(2 * s.rate_conns), "8"]),
        ):
            ref[label] = median([_metric(label, *parse_pair(section.run_client(argv), argv)) for _ in range(2)])
        fair = []
        for _ in range(2):
            out = section.run_client([tool, "fair", f"tcp:127.0.0.1:{echo_port}", str(s.fair_conns)])
            _, without, with_bulk = (int(x) for x in out.split()[:3])
            fair.append(without / with_bulk)
        ref["tcp_rate_during_bulk_ratio"] = median(fair)
        self.results["relay_direct_reference"] = ref
        section.rows += [
            ("direct unix client->sink", fmt(ref["unix_throughput_MBps"], " MB/s"), "reference, no relay"),
            ("direct tcp client->sink", fmt(ref["tcp_throughput_MBps"], " MB/s"), "reference, no relay"),
            ("direct unix client->echo", fmt(ref["unix_rate_per_s"], " conn/s"), "reference, no relay"),
            ("direct tcp client->echo", fmt(ref["tcp_rate_per_s"], " conn/s"), "reference, no relay"),
            ("direct tcp client->echo x8", fmt(ref["tcp_rate8_per_s"], " conn/s"), "reference, 8 client processes"),
            ("direct tcp rate during bulk / without", fmt(ref["tcp_rate_during_bulk_ratio"], "x"),
             "reference: what the machine leaves a short connection while a download streams"),
        ]  # fmt: skip

    # ------------------------------------------------------------ memory

    def sample_tree(self, argv: list[str], workload_comm: str, expect_extra: dict[str, int]) -> dict:
        """Start argv, wait until the workload and helpers are up, sum PSS of all but the workload."""
        offset = self.res.errlog_size()
        pid = self.res.spawn(argv)
        try:
            deadline = time.monotonic() + 10
            while True:
                if self.res.reap(pid, os.WNOHANG)[0]:
                    raise BenchError(f"exited early: {' '.join(argv)}: {self.res.errlog_since(offset) or 'no stderr'}")
                tree = process_tree(pid)
                names = [comm(p) for p in tree]
                if names.count(workload_comm) and all(names.count(n) >= c for n, c in expect_extra.items()):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"tree never complete: {names}: {' '.join(argv)}")
                time.sleep(0.01)
            time.sleep(0.3)  # let the relays settle (imports after fork, first page faults)
            tree = process_tree(pid)
            procs = []
            for p in tree:
                name = comm(p)
                if name == workload_comm:
                    continue
                try:
                    roll = smaps_rollup(p)
                except OSError:
                    continue
                procs.append({"pid": p, "comm": name, **{k: roll.get(k, 0) for k in ("Rss", "Pss", "Private_Clean", "Private_Dirty")}})
            # End it the normal way (workload exits), so every process is reaped by its own parent.
            for p in tree:
                if comm(p) == workload_comm:
                    os.kill(p, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while not self.res.reap(pid, os.WNOHANG)[0] and time.monotonic() < deadline:
                time.sleep(0.01)
            return {
                "processes": procs,
                "pss_mb": sum(p["Pss"] for p in procs) * 1024 / MB,
                "rss_mb": sum(p["Rss"] for p in procs) * 1024 / MB,
                "uss_mb": sum(p["Private_Clean"] + p["Private_Dirty"] for p in procs) * 1024 / MB,
            }
        finally:
            if pid in self.res.pids:
                self.res.kill_launch(pid)
                self.res.reap(pid)

    def bench_memory(self) -> None:
        sock = self.res.listening_unix_socket("memory.sock")
        sleep_comm = "sleep"
        srt_argv = self.srt_full(sock, [self.sleep, "60"])
        chain_argv = self.chain(sock, f"{self.sleep} 60")
        samples: dict[str, list[dict]] = {"srt": [], "chain": []}
        for i in range(self.settings.memory_samples):
            order = ("srt", "chain") if i % 2 == 0 else ("chain", "srt")
            for who in order:
                if who == "srt":
                    samples[who].append(self.sample_tree(srt_argv, sleep_comm, {}))
                else:
                    samples[who].append(self.sample_tree(chain_argv, sleep_comm, {"socat": 2}))
        out = {}
        rows = []
        for who, runs in samples.items():
            pss = median([r["pss_mb"] for r in runs])
            out[who] = {
                "pss_mb": pss,
                "rss_mb": median([r["rss_mb"] for r in runs]),
                "uss_mb": median([r["uss_mb"] for r in runs]),
                "runs": runs,
            }
            per = ", ".join(f"{p['comm']} {p['Pss'] / 1000:.1f}" for p in runs[-1]["processes"])
            rows.append((f"{who} PSS", fmt(pss, " MB"), f"RSS {out[who]['rss_mb']:.1f}, USS {out[who]['uss_mb']:.1f}; {per}"))
        self.results["memory"] = out
        _table("memory while the workload sleeps (MB = 10^6 bytes; workload excluded)", ("tree", "PSS", "detail (per-process PSS MB)"), rows)
        ratio = out["srt"]["pss_mb"] / out["chain"]["pss_mb"] if out["srt"]["pss_mb"] and out["chain"]["pss_mb"] else None
        self.budget("per-sandbox PSS srt (stub + PID 1 + relay) / chain", ratio, "<=", BUDGETS["launcher_pss_ratio_max"], "x")

    # ------------------------------------------------------------ concurrency

    def burst(self, argv: list[str], count: int) -> tuple[list[float], list[str]]:
        offset = self.res.errlog_size()
        starts = {}
        for _ in range(count):
            t0 = time.perf_counter_ns()
            pid = self.res.spawn(argv)
            starts[pid] = t0
        latencies, failures = [], []
        while starts:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            name = comm(info.si_pid)  # still readable: a zombie until reaped below
            pid, status = os.waitpid(info.si_pid, 0)
            end = time.perf_counter_ns()
            self.res.pids.discard(pid)
            if pid not in starts:
                self.orphans += 1
                self.res.orphan_names[name] = self.res.orphan_names.get(name, 0) + 1
                continue
            t0 = starts.pop(pid)
            if status != 0:
                failures.append(f"exit {os.waitstatus_to_exitcode(status)}")
            else:
                latencies.append((end - t0) / 1e6)
        if failures:
            failures.append(self.res.errlog_since(offset))
        return latencies, failures

    def bench_concurrency(self) -> None:
        sock = self.res.listening_unix_socket("burst.sock")
        s = self.settings
        out = {}
        rows = []
        for who, argv in (("srt", self.srt_full(sock, [self.true])), ("chain", self.chain(sock, self.true))):
            lat, fails = [], []
            for _ in range(s.concurrent_rounds):
                l, f = self.burst(argv, s.concurrent)
                lat += l
                fails += f
                time.sleep(0.2)
            nfail = sum(1 for f in fails if f.startswith("exit "))
            out[who] = {
                "launches": s.concurrent * s.concurrent_rounds,
                "failures": nfail,
                "failure_details": fails[:20],
                "median_ms": median(lat),
                "p99_ms": percentile(lat, 99),
                "samples_ms": lat,
            }
            rows.append((who, f"{median(lat):.1f} / {percentile(lat, 99):.1f}", f"{nfail} failed of {s.concurrent * s.concurrent_rounds}"))
        self.results["concurrency"] = out
        _table(
            f"{s.concurrent} launches at once x {s.concurrent_rounds} (ms)", ("full-style launch", "median / p99", "failures"), rows
        )
        if out["srt"]["failures"]:
            eprint("concurrency failures:", out["srt"]["failure_details"])
        self.budget(
            f"{s.concurrent} concurrent launches: failures", out["srt"]["failures"], "<=", BUDGETS["concurrent_failures_max"], ""
        )

    # ------------------------------------------------------------ imports

    def importtime(self, argv: list[str]) -> list[tuple[int, str, int, int]]:
        result = self.res.run(argv, timeout=60)
        if result.returncode != 0:
            raise BenchError(f"exit {result.returncode}: {' '.join(argv)}: {result.stderr.decode(errors='replace')[-1500:]}")
        rows = []
        for line in result.stderr.decode(errors="replace").splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            parts = line[len("import time:") :].split("|")
            if len(parts) != 3:
                continue
            name = parts[2][1:]
            level = (len(name) - len(name.lstrip(" "))) // 2
            rows.append((level, name.strip(), int(parts[0]), int(parts[1])))
        return rows

    def bench_imports(self) -> None:
        sock = self.res.listening_unix_socket("imports.sock")
        # -I -S as the installed command starts (srt-launcher-boot refuses
        # an interpreter without them), for the baseline too.
        base_argv = [self.vpy, "-I", "-S", "-X", "importtime", "-c", "pass"]
        # Without the launch path's image (srt_launcher/_preload.py), so that
        # every module of the path shows, with what the import system costs.
        run_argv = [self.vpy, "-I", "-S", "-X", "importtime", "-X", "srt-launcher-no-image", *self.srt_full(sock, [self.true])]
        runs = [self.importtime(run_argv) for _ in range(self.settings.import_runs)]
        base = {name for _, name, _, _ in self.importtime(base_argv)}
        every = {name for run in runs for _, name, _, _ in run}
        forbidden = sorted(n for n in every if n.split(".")[0] in FORBIDDEN_IMPORTS)
        totals, own_self, per_module = [], [], {}
        for run in runs:
            totals.append(sum(cum for level, _, _, cum in run if level == 0) / 1000)
            own_self.append(sum(us for _, name, us, _ in run if name not in base) / 1000)
            for level, name, _, cum in run:
                if level == 0 and name not in base:
                    per_module.setdefault(name, []).append(cum / 1000)
        top = sorted(((median(v), n) for n, v in per_module.items()), reverse=True)
        out = {
            "command": run_argv,
            "total_top_level_ms": median(totals),
            "launcher_own_self_ms": median(own_self),
            "top_level_launcher_modules_ms": {n: v for v, n in top},
            "modules_not_in_bare_interpreter": sorted(every - base),
            "forbidden_imported": forbidden,
        }
        self.results["imports"] = out
        rows = [
            ("all top-level imports (cumulative)", fmt(out["total_top_level_ms"], " ms"), "stub + relays + PID 1 + worker, -I -S"),
            ("launcher's own (not in `python -c pass`)", fmt(out["launcher_own_self_ms"], " ms"), "sum of self times"),
        ]
        rows += [(f"  {n}", fmt(v, " ms"), "top-level, cumulative") for v, n in top[:10]]
        rows.append(("click / pyroute2 / pyseccomp", "NONE" if not forbidden else "IMPORTED", ", ".join(forbidden)))
        _table("python -X importtime of the full-style run path (median)", ("module", "time", "note"), rows)
        if forbidden:
            eprint("!" * 72)
            eprint(f"!!! the run path imports {', '.join(forbidden)} (SPEC §4 forbids click, pyroute2, pyseccomp)")
            eprint("!" * 72)
        self.budget("run path imports click/pyroute2/pyseccomp: count", len(forbidden), "<=", 0, "")

    # ------------------------------------------------------------ api

    def bench_api(self) -> None:
        from api_bench import bench_api

        bench_api(self)

    # ------------------------------------------------------------ budgets

    def budget(self, what: str, value: float | None, op: str, limit: float, unit: str) -> None:
        ok = value is not None and value == value and (value <= limit if op == "<=" else value >= limit)
        shown = "n/a" if value is None or value != value else (f"{value:.2f}{unit}" if isinstance(value, float) else f"{value}{unit}")
        line = f"BUDGET {'PASS' if ok else 'FAIL'}  {what}: {shown} (budget {op} {limit}{unit})"
        self.budgets.append({"what": what, "value": value, "op": op, "limit": limit, "pass": ok, "line": line})

    def print_budgets(self, start: int = 0) -> None:
        for entry in self.budgets[start:]:
            print(entry["line"], flush=True)


# ---------------------------------------------------------------- formatting


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BenchError(f"{name} not found (make bench installs bubblewrap, socat, procps)")
    return path


def _metric(label: str, count: int, ns: int) -> float:
    if "MBps" in label:
        return count / MB / (ns / 1e9)
    return count / (ns / 1e9)


def _launch_row(name: str, out: dict) -> tuple[str, str, str]:
    med = out["median_ms"].get(name)
    if med is None:
        return (name, "n/a", out["broken"].get(name, "")[:80])
    return (name, f"{med:.2f}", f"{out['p10_ms'][name]:.2f} / {out['p90_ms'][name]:.2f}")


def _table(title: str, header: tuple[str, str, str], rows: list[tuple[str, str, str]]) -> None:
    w0 = max(len(header[0]), *(len(r[0]) for r in rows))
    w1 = max(len(header[1]), *(len(r[1]) for r in rows))
    print(f"\n== {title}")
    print(f"{header[0]:<{w0}}  {header[1]:>{w1}}  {header[2]}")
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]}")
    print(flush=True)


def _machine(bench: Bench) -> dict:
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "python_floor": tool_version([bench.floor_python, "--version"]),
        "venv": str(bench.venv),
        "bwrap": tool_version([bench.bwrap, "--version"]),
        "socat": _socat_version(bench.socat),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _socat_version(socat: str) -> str:
    import subprocess

    out = subprocess.run([socat, "-V"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "socat version" in line:
            return line.strip()
    return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations, smaller transfers (development)")
    parser.add_argument(
        "--venv", default=os.environ.get("SRT_BENCH_VENV") or str(REPO / ".venv"), help="venv with srt-launcher installed"
    )
    parser.add_argument("--output", "-o", default=str(REPO / "bench-results.json"), help="JSON results file")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--relay-roles", default=",".join(ROLES), help=f"relay section: comma-separated subset of {','.join(ROLES)}")
    parser.add_argument(
        "--relay-kinds", default=",".join(relays.BUDGETS), help=f"relay section: comma-separated subset of {','.join(relays.BUDGETS)}"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a budget is missed (by default only a section that could not be measured fails the run)",
    )
    args = parser.parse_args()
    sections = [x for x in args.sections.split(",") if x]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    srt = Path(args.venv) / "bin" / "srt-launcher"
    if not os.access(srt, os.X_OK):
        parser.error(f"{srt} not found: run `make setup` (or pass --venv / SRT_BENCH_VENV)")
    if os.geteuid() != 0:
        eprint("warning: not root; the launcher and bwrap will take the user-namespace path")

    terminate_on_signals()
    res = Resources()
    status = 0
    started = time.monotonic()
    try:
        bench = Bench(args, res)
        bench.settings.roles = [x for x in args.relay_roles.split(",") if x]
        bench.settings.kinds = [x for x in args.relay_kinds.split(",") if x]
        for name, known in (("roles", ROLES), ("kinds", tuple(relays.BUDGETS))):
            unknown_items = set(getattr(bench.settings, name)) - set(known)
            if unknown_items:
                parser.error(f"unknown relay {name}: {', '.join(sorted(unknown_items))}")
        machine = _machine(bench)
        print(
            f"srt-launcher bench{' (--quick)' if args.quick else ''}: {machine['cpus']} CPUs, kernel {machine['kernel']}, "
            f"load {machine['loadavg_start'][0]:.2f}, venv {bench.venv}",
            flush=True,
        )
        if "relay" in sections:
            bench.tool = build_benchtool(res.tmpdir)
        for name in sections:
            printed = len(bench.budgets)
            bench.orphans = res.reap_orphans()
            try:
                getattr(bench, f"bench_{name}")()
                bench.print_budgets(printed)
            except BenchError as err:
                eprint(f"\n{name}: could not measure: {err}")
                bench.errors[name] = str(err)
            except KeyboardInterrupt:
                raise
            except Exception:  # a harness bug must not skip the cleanup nor the other sections
                bench.errors[name] = traceback.format_exc()
                eprint(f"\n{name}: harness error:\n{bench.errors[name]}")
            time.sleep(0.2)
            bench.orphans_by_section[name] = bench.orphans + res.reap_orphans()
        if any(bench.orphans_by_section.values()):
            print(
                f"note: orphaned processes re-parented to the harness and reaped: {bench.orphans_by_section} "
                f"(by name: {res.orphan_names})"
            )
        machine["loadavg_end"] = os.getloadavg()
        machine["elapsed_s"] = round(time.monotonic() - started, 1)
        failed = [b for b in bench.budgets if not b["pass"]]
        print("\n== budgets")
        bench.print_budgets()
        for name in bench.errors:
            print(f"ERROR  {name}: could not be measured (see above)")
        report = {
            "machine": machine,
            "settings": bench.settings.as_dict(),
            "sections": sections,
            "results": bench.results,
            "budgets": bench.budgets,
            "errors": bench.errors,
            "orphans_reaped_by_harness": bench.orphans_by_section,
            "orphans_by_name": res.orphan_names,
            "pass": not failed and not bench.errors,
        }
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nsummary: {len(bench.budgets) - len(failed)}/{len(bench.budgets)} budgets pass", end="")
        print(f", {len(bench.errors)} section errors" if bench.errors else "", end="")
        print(f"; {machine['elapsed_s']} s; results written to {args.output}")
        status = 1 if bench.errors or (args.strict and failed) else 0
    except BenchError as err:
        eprint(f"bench: {err}")
        status = 1
    except KeyboardInterrupt:
        eprint("\ninterrupted: cleaning up")
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second ^C must not cut the cleanup short
        res.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
