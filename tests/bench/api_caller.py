"""One calling process of the API benchmark (SPEC §4): the API's launch against
``subprocess.run([bwrap, ...])`` from this same process.

Run by tests/bench/api_bench.py with the venv's interpreter::

    api_caller.py --rss-mb 20|1000 --threads 1|8 --rounds N --mode idle|loop

The process first grows to ``--rss-mb`` of resident memory (touched pages),
then, in alternating order each round:

* ``idle``: one launch per thread (all threads released together), with a
  pause before each so that neither variant is measured while the other's
  work (the launcher preparing its next sandbox, bwrap's teardown) still
  runs: launch latency of a service that is not saturated;
* ``loop``: every thread launches back to back ``--per-thread`` times: the
  throughput of a saturated caller, all background work included.

Prints one JSON object: per-round mean milliseconds per launch, per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

from srt_launcher import Dev, Proc, RoBind, Sandbox

PAUSE = 0.03  # before each idle-mode launch: the launcher's preparation takes ≈5 ms of CPU


def grow_to(megabytes: int) -> bytearray:
    """Ballast touched page by page, so that it is resident (fork would copy its page tables)."""
    current = resident_kb() // 1024
    ballast = bytearray(max(0, megabytes - current) << 20)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))
    return ballast


def resident_kb() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rss-mb", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--per-thread", type=int, default=8)
    parser.add_argument("--mode", choices=("idle", "loop"), default="idle")
    args = parser.parse_args()
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        print(json.dumps({"error": "bwrap not found"}))
        return 1
    sandbox = Sandbox(mounts=[RoBind("/"), Proc(), Dev()])  # network=False: --unshare-net
    bwrap_argv = [bwrap, "--unshare-net", "--unshare-pid", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"]

    def api() -> None:
        result = sandbox.run(["/bin/true"])
        if not result.ok:
            raise RuntimeError(f"API launch failed: {result.describe()}")

    def spawn_bwrap() -> None:
        subprocess.run(bwrap_argv, check=True, stdin=subprocess.DEVNULL)

    ballast = grow_to(args.rss_mb)  # noqa: F841 - kept alive until the end
    variants = {"api": api, "bwrap": spawn_bwrap}
    for _ in range(5):  # warm-up: the launcher started, a description prepared, caches warm
        api()
        spawn_bwrap()
    time.sleep(0.2)
    samples: dict[str, list[float]] = {"api": [], "bwrap": []}
    for index in range(args.rounds):
        order = ("api", "bwrap") if index % 2 == 0 else ("bwrap", "api")
        for name in order:
            samples[name].append(measure(variants[name], args))
    print(json.dumps({"rss_kb": resident_kb(), "threads": threading.active_count(), "samples_ms": samples}))
    return 0


def measure(launch, args: argparse.Namespace) -> float:  # type: ignore[no-untyped-def]
    """Mean milliseconds per launch of one round, over every thread."""
    per_thread = 1 if args.mode == "idle" else args.per_thread
    barrier = threading.Barrier(args.threads + 1)
    times: list[float] = []
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            for _ in range(per_thread):
                started = time.perf_counter()
                launch()
                times.append(time.perf_counter() - started)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    if args.mode == "idle":
        time.sleep(PAUSE)
    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(times) / len(times) * 1e3


if __name__ == "__main__":
    sys.exit(main())
