"""Shared fixtures: the real launcher, run three ways, in real namespaces.

Every behaviour is checked as root (the plain-unshare path), as an
unprivileged uid (the user-namespace path) and as root with
``--unshare-user`` (unprivileged containers). Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# make setup VENV=... with SRT_LAUNCHER_VENV=... tests another venv (one per developer).
VENV = Path(os.environ.get("SRT_LAUNCHER_VENV", ROOT / ".venv")).absolute()
UNPRIVILEGED_UID = 65534
UNPRIVILEGED_GID = 65534
MODES = ("root", "unprivileged", "root-userns")

# A whole-system read-only view with its own /proc and /dev: what most tests run in.
SYSTEM = ("--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev")


def _can_run_as_unprivileged(argv_prefix: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*argv_prefix, "run", "--ro-bind", "/", "/", "--", "/bin/true"],
        user=UNPRIVILEGED_UID,
        group=UNPRIVILEGED_GID,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="session")
def root_argv() -> list[str]:
    script = VENV / "bin" / "srt-launcher"
    if not script.exists():
        pytest.exit(f"{script} is missing: run the suite with `make test` (make setup builds .venv)", returncode=1)
    return [str(script)]


def helper_scripts() -> list[Path]:
    """The programs of tests/ that runs execute (tests/subreaper.py...): every
    module there that is neither a test module nor this file."""
    return sorted(path for path in TESTS.glob("*.py") if path.name != "conftest.py" and not path.name.startswith("test_"))


@pytest.fixture(scope="session")
def unprivileged_place():  # type: ignore[no-untyped-def]
    """A world-readable directory for everything an unprivileged run executes.

    CI clones where it likes (a `mktemp -d` is 0700, /root too), so uid 65534
    may reach nothing of the checkout: the helper scripts are copied here
    (``Launcher.helper``), and so is the venv when its own is out of reach
    (``unprivileged_argv``). Removed at the end of the session.
    """
    place = Path(tempfile.mkdtemp(prefix="srt-launcher-unprivileged-", dir="/var/tmp"))
    try:
        place.chmod(0o755)
        (place / "helpers").mkdir(mode=0o755)
        for script in helper_scripts():
            shutil.copyfile(script, place / "helpers" / script.name)
            (place / "helpers" / script.name).chmod(0o644)
        probe = subprocess.run(
            ["/bin/cat", *(str(place / "helpers" / script.name) for script in helper_scripts())],
            user=UNPRIVILEGED_UID, group=UNPRIVILEGED_GID, extra_groups=[], cwd="/",
            capture_output=True, text=True, timeout=60,
        )
        if probe.returncode != 0:
            pytest.exit(f"uid {UNPRIVILEGED_UID} cannot read the copies of tests/ helpers in {place}: {probe.stderr.strip()}", returncode=1)
        yield place
    finally:
        shutil.rmtree(place, ignore_errors=True)


def relocate_venv(venv: Path, copy: Path) -> None:
    """Copy ``venv`` to ``copy``, pointing its commands' #! lines (absolute
    paths, with the flags make setup gave them) at the copy's interpreter."""
    shutil.copytree(venv, copy, symlinks=True)
    old, new = f"#!{venv}/".encode(), f"#!{copy}/".encode()
    for command in (copy / "bin").iterdir():
        if command.is_symlink() or not command.is_file():
            continue
        content = command.read_bytes()
        if content.startswith(old):
            command.write_bytes(new + content[len(old):])


@pytest.fixture(scope="session")
def unprivileged_argv(root_argv: list[str], unprivileged_place: Path) -> list[str]:
    """A launcher uid 65534 can execute: the venv's own if uid 65534 reaches
    it, else a copy in the unprivileged place."""
    try:
        reachable = _can_run_as_unprivileged(root_argv).returncode == 0
    except PermissionError:  # the #! interpreter or the script itself is out of reach
        reachable = False
    if reachable:
        return root_argv
    copy = unprivileged_place / "venv"
    relocate_venv(VENV, copy)
    argv = [str(copy / "bin" / "srt-launcher")]
    probe = _can_run_as_unprivileged(argv)
    if probe.returncode != 0:
        pytest.exit(f"uid {UNPRIVILEGED_UID} cannot run the launcher even from {copy}: {probe.stderr.strip()}", returncode=1)
    return argv


class Launcher:
    """The launcher as one kind of caller runs it."""

    def __init__(self, mode: str, argv_prefix: list[str], helpers: Path = TESTS) -> None:
        self.mode = mode
        self.argv_prefix = argv_prefix
        self.helpers = helpers
        self.unprivileged = mode == "unprivileged"
        self.uid = UNPRIVILEGED_UID if self.unprivileged else 0
        self.gid = UNPRIVILEGED_GID if self.unprivileged else 0

    def __repr__(self) -> str:
        return f"Launcher({self.mode})"

    @property
    def python(self) -> str:
        """The venv interpreter beside the command this caller runs (reachable by it)."""
        return str(Path(self.argv_prefix[0]).parent / "python")

    def helper(self, name: str) -> str:
        """The path of tests/NAME (a helper script) that this caller can read."""
        path = self.helpers / name
        assert path.is_file(), f"{name} is not a helper of tests/ (see helper_scripts)"
        return str(path)

    def argv(self, subcommand: str, *args: str) -> list[str]:
        argv = [*self.argv_prefix, subcommand]
        if subcommand == "run" and self.mode == "root-userns":
            argv.append("--unshare-user")
        return argv + list(args)

    def process_kwargs(self, **kwargs):  # type: ignore[no-untyped-def]
        """subprocess keyword arguments that run as this caller."""
        if self.unprivileged:
            kwargs.setdefault("user", UNPRIVILEGED_UID)
            kwargs.setdefault("group", UNPRIVILEGED_GID)
            kwargs.setdefault("extra_groups", [])
        kwargs.setdefault("cwd", "/")
        return kwargs

    def run(self, *args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        """``srt-launcher run ARGS`` to completion, output captured as text."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv("run", *args), timeout=timeout, **self.process_kwargs(**kwargs))

    def under_subreaper(self, argv: list[str], timeout: float = 120) -> dict:
        """Run ``argv`` as this caller, below a child subreaper (tests/subreaper.py):
        its result, and the pids of the orphans the subreaper inherited."""
        result = subprocess.run(
            [self.python, "-I", self.helper("subreaper.py"), *argv],
            capture_output=True, text=True, timeout=timeout, **self.process_kwargs(),
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def sh(self, script: str, *options: str, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        """Run a shell script inside the usual system view (or ``options`` if given)."""
        return self.run(*(options or SYSTEM), "--", "/bin/sh", "-c", script, **kwargs)

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        return subprocess.Popen(self.argv("run", *args), **self.process_kwargs(**kwargs))

    def command(self, subcommand: str, *args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        """Any other subcommand (relay, connect, ...) as this caller."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(subcommand, *args), timeout=timeout, **self.process_kwargs(**kwargs))


def _launcher(request: pytest.FixtureRequest, mode: str, root_argv: list[str]) -> Launcher:
    if mode == "unprivileged":
        place = request.getfixturevalue("unprivileged_place")
        return Launcher(mode, request.getfixturevalue("unprivileged_argv"), place / "helpers")
    return Launcher(mode, root_argv)


@pytest.fixture(params=MODES)
def launcher(request: pytest.FixtureRequest, root_argv: list[str]) -> Launcher:
    return _launcher(request, request.param, root_argv)


@pytest.fixture(params=("root", "unprivileged"))
def host_launcher(request: pytest.FixtureRequest, root_argv: list[str]) -> Launcher:
    """For subcommands that run on the host without namespaces (relay, connect):
    the root-userns mode has nothing to add there."""
    return _launcher(request, request.param, root_argv)


@pytest.fixture
def caller(host_launcher: Launcher) -> Launcher:
    """A program using the Python API (SPEC §9), run as root and as uid 65534:
    the API's launcher process runs on the host, like relay and connect."""
    return host_launcher


def processes_with(marker: str) -> list[int]:
    """Host PIDs of live processes whose argv contains ``marker`` (zombies have an empty cmdline)."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if needle in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def lingering(marker: str, timeout: float = 10.0) -> list[int]:
    """The processes with ``marker`` still alive after waiting up to ``timeout``.

    SIGKILL and PDEATHSIG are asynchronous: a killer may return before its victims are gone.
    """
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def argv_of(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().split(b"\0")[:-1]
    except OSError:
        return []


def wait_for_sleeper(marker: str, timeout: float = 60.0) -> int:
    """Host PID of the ``sleep MARKER`` process, once exec'd (a shell that
    starts it may carry MARKER in its own argv)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in processes_with(marker):
            argv = argv_of(pid)
            if argv and os.path.basename(argv[0]) == b"sleep":
                return pid
        time.sleep(0.05)
    raise AssertionError(f"`sleep {marker}` never appeared on the host")


def sleep_marker() -> str:
    """A unique, valid ``sleep`` argument that identifies one test's processes."""
    return f"99999.{random.randrange(10**11, 10**12)}"


def kill_and_reap(processes: list[subprocess.Popen]) -> None:
    """SIGKILL whichever of ``processes`` still run, reap each, and close the pipes held to it."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream:
                stream.close()


def kill_leftovers(marker: str) -> None:
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def marker():  # type: ignore[no-untyped-def]
    value = sleep_marker()
    yield value
    kill_leftovers(value)  # a failing test must not leave sleepers for the next ones


def after_background_sleeper(marker: str, argv: list[str]) -> list[str]:
    """``argv`` exec'd by a shell that first started ``sleep MARKER`` in the
    background, as a wrapper script may: the sleeper is then a child of
    whatever ``argv`` runs, one it did not fork."""
    return ["/bin/sh", "-c", f'sleep {marker} >/dev/null 2>&1 </dev/null & exec "$@"', "sh", *argv]


def holding_many_fds(argv: list[str], highest: int = 1100) -> list[str]:
    """``argv`` exec'd with fds 3..HIGHEST open (on /dev/null), as in a busy
    service: every fd it opens is numbered above 1024, out of select()'s reach."""
    script = f'ulimit -n 2048 && for ((fd = 3; fd <= {highest}; fd++)); do eval "exec $fd</dev/null"; done && exec "$@"'
    return ["/bin/bash", "-c", script, "bash", *argv]


@contextlib.contextmanager
def scratch_dir(launcher: Launcher, prefix: str) -> Iterator[Path]:
    """A directory under /tmp the launcher's caller owns, readable by everyone
    (pytest's tmp_path is 0700 root), removed with all it holds at the end."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o755)
        os.chown(path, launcher.uid, launcher.gid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_dir(launcher: Launcher):  # type: ignore[no-untyped-def]
    """A scratch directory the launcher's caller owns (pytest's tmp_path is 0700 root)."""
    with scratch_dir(launcher, "srt-launcher-test-") as path:
        yield path


def _mount_table() -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        return handle.read().splitlines()


@pytest.fixture(scope="session", autouse=True)
def host_mount_table_unchanged():  # type: ignore[no-untyped-def]
    """SPEC §2.7: nothing the launcher mounts may be left on (or leak to) the host."""
    before = _mount_table()
    yield
    after = _mount_table()
    assert after == before, "the host mount table changed during the suite:\n" + "\n".join(
        sorted(set(after) ^ set(before))
    )


# ---------------------------------------------------------------- the bubblewrap front end

DEBIAN_BWRAP = "/usr/bin/bwrap"


@pytest.fixture(scope="session")
def debian_bwrap() -> str:
    """Debian's bubblewrap (0.8), the reference the bwrap front end is compared with."""
    if not os.access(DEBIAN_BWRAP, os.X_OK):
        pytest.fail(f"{DEBIAN_BWRAP} is missing: the reference bubblewrap; `make test` installs it (apt-get install bubblewrap)")
    return DEBIAN_BWRAP


@pytest.fixture(scope="session")
def bwrap_links(root_argv: list[str]):  # type: ignore[no-untyped-def]
    """Per launcher command, a world-readable directory holding a symlink
    named ``bwrap`` to it: the front end as a user who made that link runs it
    (argv[0]'s basename selects it, SPEC §1)."""
    made: dict[str, str] = {}

    def link(command: str) -> str:
        if command not in made:
            directory = Path(tempfile.mkdtemp(prefix="srt-bwrap-", dir="/tmp"))
            directory.chmod(0o755)
            (directory / "bwrap").symlink_to(command)
            made[command] = str(directory / "bwrap")
        return made[command]

    yield link
    for path in made.values():
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
