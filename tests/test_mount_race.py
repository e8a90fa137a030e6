"""Mount targets cannot be swapped between their check and the mount (issue 11, finding 2; SPEC §2.4).

A concurrent process that can write a directory a sandbox binds (another
sandbox sharing it) exchanges ``W/x`` with a symlink to ``/oldroot/...``
while a launch of ``--ro-bind / / --bind W W --tmpfs W/x`` sets up. If the
mount follows the symlink, the tmpfs lands in the detached old root and
``W/x`` — meant to be hidden — stays readable. The launcher resolves each
target inside the new root to a descriptor and mounts onto that descriptor.

The window is forced open deterministically: strace delays every mount
system call, while the attacker swaps the two names as fast as it can; and
the same again on the fallback path of kernels without move_mount.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import time

import pytest

from conftest import SYSTEM

RENAME_EXCHANGE = 2
LAUNCHES = 5
_libc = ctypes.CDLL(None, use_errno=True)


def _exchange(directory: int, a: bytes, b: bytes) -> None:
    _libc.renameat2(directory, a, directory, b, RENAME_EXCHANGE)


class Swapper:
    """Exchange W/x and W/decoy (a symlink into the old root) until stopped, then put them back."""

    def __init__(self, shared: str) -> None:
        self.shared = shared
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Swapper":
        self.thread.start()
        return self

    def _run(self) -> None:
        fd = os.open(self.shared, os.O_RDONLY | os.O_DIRECTORY)
        try:
            while not self.stopped.is_set():
                _exchange(fd, b"x", b"decoy")
        finally:
            os.close(fd)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        if os.path.islink(os.path.join(self.shared, "x")):
            _exchange_paths(self.shared)

    def __exit__(self, *exc: object) -> None:
        if not self.stopped.is_set():
            self.stop()


def _exchange_paths(shared: str) -> None:
    fd = os.open(shared, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _exchange(fd, b"x", b"decoy")
    finally:
        os.close(fd)


# The workload waits until the test has put W/x back in place, then says
# what it sees there: the tmpfs (empty), or the secret it was meant to hide.
_WORKLOAD = 'while [ ! -e "$0/go" ]; do sleep 0.01; done; ls -A "$0/x"; echo end'


def _race(launcher, shared, prefix: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    outcomes = []
    for _ in range(LAUNCHES):
        (shared / "go").unlink(missing_ok=True)
        command = [
            *prefix,
            *launcher.argv("run", *SYSTEM, "--bind", str(shared), str(shared), "--tmpfs", f"{shared}/x",
                           "--", "/bin/sh", "-c", _WORKLOAD, str(shared)),
        ]
        with Swapper(str(shared)) as swapper:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **launcher.process_kwargs())
            _wait_for_workload_or_exit(proc)
            swapper.stop()
        (shared / "go").touch()
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            outcomes.append("hidden" if out == "end\n" else f"ESCAPED: {out!r}")
        else:
            outcomes.append(f"refused ({proc.returncode}): {err.strip()}")
    return outcomes


def _wait_for_workload_or_exit(proc: subprocess.Popen) -> None:
    # The workload exists once sh polls for the go file; a launch that
    # failed closed has exited.
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if any(_is_waiting_sh(pid) for pid in _descendants(proc.pid)):
            return
        time.sleep(0.02)


def _descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        try:
            with open(f"/proc/{current}/task/{current}/children") as handle:
                children = [int(child) for child in handle.read().split()]
        except OSError:
            continue
        found += children
        queue += children
    return found


def _is_waiting_sh(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().startswith(b"/bin/sh\0-c\0while")
    except OSError:
        return False


@pytest.fixture
def arena(shared_dir, launcher):  # type: ignore[no-untyped-def]
    """W with W/x/secret (to be hidden by a tmpfs) and W/decoy -> /oldroot/var/tmp."""
    (shared_dir / "x").mkdir()
    (shared_dir / "x" / "secret").write_text("must be hidden\n")
    (shared_dir / "decoy").symlink_to("/oldroot/var/tmp")
    for path in (shared_dir / "x", shared_dir / "x" / "secret"):
        os.chown(path, launcher.uid, launcher.gid, follow_symlinks=False)
    return shared_dir


def _strace_delaying_mounts() -> list[str]:
    strace = shutil.which("strace")
    assert strace, "strace is missing: make test installs it"
    return [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=mount,move_mount",
            "-e", "inject=mount,move_mount:delay_enter=40000"]


def test_a_swapped_target_never_receives_the_mount_elsewhere(launcher, arena):
    outcomes = _race(launcher, arena, _strace_delaying_mounts())
    assert not [outcome for outcome in outcomes if outcome.startswith("ESCAPED")], outcomes
    assert "hidden" in outcomes, outcomes  # the race did not just make every launch fail


def test_a_swapped_target_never_receives_the_mount_elsewhere_without_move_mount(launcher, arena):
    wrapper = [launcher.python, "-I", launcher.helper("without_mount_api.py"), "--"]
    outcomes = _race(launcher, arena, [*_strace_delaying_mounts(), *wrapper])
    assert not [outcome for outcome in outcomes if outcome.startswith("ESCAPED")], outcomes
    assert "hidden" in outcomes, outcomes


# ---------------------------------------------------------------- the fallback path, working


FALLBACK_CASES = {
    "ro-bind root": (["--ro-bind", "/", "/"], "touch /etc/x 2>&1 | grep -c Read-only"),
    "writable bind": (["--ro-bind", "/", "/", "--bind", "{shared}", "{shared}"], "touch {shared}/f && echo written"),
    "tmpfs over a bind": (["--ro-bind", "/", "/", "--tmpfs", "/etc"], "ls -A /etc | wc -l"),
    "file bind": (["--ro-bind", "/", "/", "--tmpfs", "/mnt", "--ro-bind", "/etc/passwd", "/mnt/p"], "head -c 5 /mnt/p"),
    "dev and proc": (["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"], "echo x > /dev/null && ls /proc/1/ns | wc -l"),
    "symlink in a target": (["--ro-bind", "/", "/", "--tmpfs", "/mnt", "--symlink", "/mnt/real", "/mnt/link", "--dir", "/mnt/real",
                             "--tmpfs", "/mnt/link/t"], "ls -d /mnt/real/t && touch /mnt/real/t/f && echo ok"),
    "remount-ro": (["--ro-bind", "/", "/", "--tmpfs", "/mnt", "--remount-ro", "/mnt"], "touch /mnt/f 2>&1 | grep -c Read-only"),
}


@pytest.mark.parametrize("case", FALLBACK_CASES)
def test_the_fallback_without_the_new_mount_api_builds_the_same_sandbox(launcher, shared_dir, case):
    options, script = FALLBACK_CASES[case]
    options = [option.format(shared=shared_dir) for option in options]
    script = script.format(shared=shared_dir)
    normal = launcher.run(*options, "--", "/bin/sh", "-c", script)
    wrapper = [launcher.python, "-I", launcher.helper("without_mount_api.py"), "--", *launcher.argv("run", *options, "--", "/bin/sh", "-c", script)]
    fallback = subprocess.run(wrapper, capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    assert normal.returncode == 0, normal.stderr
    assert (fallback.returncode, fallback.stdout, fallback.stderr) == (normal.returncode, normal.stdout, normal.stderr)


def test_the_wrapper_really_hides_move_mount(launcher):
    """Control: under the wrapper, move_mount answers ENOSYS."""
    code = "import ctypes; r = ctypes.CDLL(None, use_errno=True).syscall(429, -100, b'/x', -100, b'/y', 0); print(ctypes.get_errno())"
    wrapper = [launcher.python, "-I", launcher.helper("without_mount_api.py"), "--", launcher.python, "-I", "-c", code]
    result = subprocess.run(wrapper, capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    assert result.stdout.strip() == "38", result.stderr
