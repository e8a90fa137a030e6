"""The `api` section of `make bench` (SPEC §4): the Python API's launch against
``subprocess.run([bwrap, ...])`` from the same calling process.

Launch: ``--unshare-net --ro-bind / / --proc /proc --dev /dev -- /bin/true``
(``Sandbox(mounts=[RoBind("/"), Proc(), Dev()])``) against ``bwrap
--unshare-net --unshare-pid --ro-bind / / --proc /proc --dev /dev /bin/true``.
Callers (tests/bench/api_caller.py, one process each): 20 MB and 1 GB of
resident memory with one thread, and 20 MB with 8 threads launching at once.
Each is measured two ways, in alternating rounds: ``idle`` (a pause before
each launch: a service that is not saturated; the budget of SPEC §4) and
``loop`` (back to back: a saturated caller, all background work charged to
it). The figure is the median of the per-round ratios.
"""

from __future__ import annotations

import json

from harness import BenchError, median

BUDGET = 1.0
CALLERS = (("20 MB", 20, 1), ("1 GB", 1000, 1), ("8 threads", 20, 8))


def bench_api(bench) -> None:  # type: ignore[no-untyped-def]
    quick = bench.settings.quick
    out: dict = {}
    rows = []
    for label, rss_mb, threads in CALLERS:
        for mode in ("idle", "loop"):
            rounds = (10 if quick else 60) if threads == 1 else (6 if quick else 30)
            got = _caller(bench, rss_mb, threads, mode, rounds)
            api, bwrap = got["samples_ms"]["api"], got["samples_ms"]["bwrap"]
            ratios = [a / b for a, b in zip(api, bwrap)]
            key = f"{label} {mode}"
            out[key] = {"rss_kb": got["rss_kb"], "api_ms": api, "bwrap_ms": bwrap, "median_ratio": median(ratios),
                        "median_api_ms": median(api), "median_bwrap_ms": median(bwrap)}  # fmt: skip
            rows.append((f"{key}: api / bwrap", f"{median(api):.2f} / {median(bwrap):.2f}", f"ratio {median(ratios):.2f}x, {len(ratios)} rounds, caller RSS {got['rss_kb'] // 1024} MB"))
            bench.budget(f"api launch, {label} caller, {mode}: api/bwrap", median(ratios), "<=", BUDGET, "x")
    bench.results["api"] = out
    from run_bench import _table

    _table("Python API launch vs subprocess.run([bwrap]) from the same process (ms per launch)", ("caller", "api / bwrap", "detail"), rows)


def _caller(bench, rss_mb: int, threads: int, mode: str, rounds: int) -> dict:  # type: ignore[no-untyped-def]
    from pathlib import Path

    script = str(Path(__file__).with_name("api_caller.py"))
    argv = [bench.vpy, "-I", script, "--rss-mb", str(rss_mb), "--threads", str(threads), "--rounds", str(rounds), "--mode", mode]
    result = bench.res.run(argv, timeout=1800)
    bench.orphans += bench.res.reap_orphans()
    if result.returncode != 0:
        raise BenchError(f"exit {result.returncode}: {' '.join(argv)}: {result.stderr.decode(errors='replace')[-1500:]}")
    return json.loads(result.stdout)
