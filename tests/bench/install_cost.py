"""Launch cost of each install form (README, "Installation"): as root, after make setup.

    .venv/bin/python tests/bench/install_cost.py [--rounds N]

Installs the wheels make setup keeps in .venv/wheels into a scratch
directory — pip into a fresh venv, --user (a scratch HOME), --prefix, and
system-wide (--root R, measured in a private mount namespace with
R/usr/local bind-mounted on /usr/local) — then times
``COMMAND run --ro-bind / / -- /bin/true`` for each form and for make
setup's .venv (the direct start), plus a user's ``bwrap`` symlink to the
venv's srt-bwrap wrapper and one to .venv's. Alternating rounds (every form
once per round, the order rotated), after a warm-up; prints per form the
median launch time and the median of its per-round difference to
make setup's .venv, wall clock and CPU (the launch's whole process tree).
Nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
SYSTEM_PYTHON = "/usr/bin/python3"
PIP = ["-m", "pip", "install", "-q", "--no-index", "--no-cache-dir", "--disable-pip-version-check"]
PIP += ["--root-user-action=ignore", "--no-warn-script-location", "--find-links", str(VENV / "wheels")]


def install(scratch: Path) -> dict[str, str]:
    """The forms' commands, by name, in the order they are reported."""

    def pip(python: str, *options: str, home: str = "nohome") -> None:
        # Each its own HOME: pip would skip a package it sees in a user site-packages.
        env = {"PATH": "/usr/bin:/bin", "HOME": str(scratch / home)}
        subprocess.run([python, *PIP, *options, "srt-launcher"], env=env, check=True)

    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(scratch / "venv")], check=True)
    pip(str(scratch / "venv" / "bin" / "python"))
    pip(SYSTEM_PYTHON, "--user", "--break-system-packages", home="home")
    pip(SYSTEM_PYTHON, "--prefix", str(scratch / "prefix"), "--break-system-packages")
    pip(SYSTEM_PYTHON, "--root", str(scratch / "root"), "--break-system-packages")
    (prefix_command,) = (scratch / "prefix").glob("**/bin/srt-launcher")
    links = scratch / "links"
    links.mkdir()
    (links / "bwrap-wrapper").symlink_to(scratch / "venv" / "bin" / "srt-bwrap")
    (links / "bwrap-direct").symlink_to(VENV / "bin" / "srt-bwrap")
    return {
        "make setup (.venv, direct start)": str(VENV / "bin" / "srt-launcher"),
        "pip, fresh venv (wrapper)": str(scratch / "venv" / "bin" / "srt-launcher"),
        "pip --user (wrapper)": str(scratch / "home" / ".local" / "bin" / "srt-launcher"),
        "pip --prefix (wrapper)": str(prefix_command),
        "system-wide, /usr/local (wrapper)": "/usr/local/bin/srt-launcher",
        "user symlink bwrap -> venv wrapper": str(links / "bwrap-wrapper"),
        "user symlink bwrap -> .venv direct": str(links / "bwrap-direct"),
    }


def launch(command: str, devnull: int) -> tuple[float, float]:
    """Wall and CPU milliseconds of one launch (CPU: the process and all it waited for)."""
    argv = [command, "run", "--ro-bind", "/", "/", "--", "/bin/true"]
    start = time.perf_counter_ns()
    pid = os.posix_spawn(command, argv, {"PATH": "/usr/bin:/bin"}, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1)])
    _, status, usage = os.wait4(pid, 0)
    wall = (time.perf_counter_ns() - start) / 1e6
    if status != 0:
        raise SystemExit(f"{command}: launch failed (wait status {status})")
    return wall, (usage.ru_utime + usage.ru_stime) * 1e3


def measure(forms: dict[str, str], rounds: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    names = list(forms)
    for _ in range(20):
        for name in names:
            launch(forms[name], devnull)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names):] + names[: index % len(names)]:
            w, c = launch(forms[name], devnull)
            wall[name].append(w)
            cpu[name].append(c)
    base = names[0]
    print(f"{rounds} alternating rounds, medians; difference = median of per-round differences to {base}")
    print(f"{'form':38} {'wall':>8} {'diff':>8} {'cpu':>8} {'diff':>8}")
    for name in names:
        dw = statistics.median(a - b for a, b in zip(wall[name], wall[base]))
        dc = statistics.median(a - b for a, b in zip(cpu[name], cpu[base]))
        print(f"{name:38} {statistics.median(wall[name]):6.2f}ms {dw:+6.2f}ms {statistics.median(cpu[name]):6.2f}ms {dc:+6.2f}ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--inside", help=argparse.SUPPRESS)  # the scratch dir, once in the mount namespace
    args = parser.parse_args()
    if args.inside:
        scratch = Path(args.inside)
        subprocess.run(["mount", "--bind", str(scratch / "root" / "usr" / "local"), "/usr/local"], check=True)
        forms = {name: command for name, command in (line.split("\t") for line in (scratch / "forms").read_text().splitlines())}
        measure(forms, args.rounds)
        return
    if os.geteuid() != 0:
        raise SystemExit("install_cost: run as root (it mounts the system-wide form in a private mount namespace)")
    if not any((VENV / "wheels").glob("srt_launcher-*.whl")):
        raise SystemExit(f"install_cost: {VENV}/wheels has no srt_launcher wheel: run make setup")
    scratch = Path(tempfile.mkdtemp(prefix="srt-install-cost-"))
    try:
        forms = install(scratch)
        (scratch / "forms").write_text("".join(f"{name}\t{command}\n" for name, command in forms.items()))
        unshare = ["unshare", "--mount", "--propagation", "private", "--"]
        subprocess.run([*unshare, sys.executable, __file__, "--rounds", str(args.rounds), "--inside", str(scratch)], check=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
