"""Issue 11, finding 6: no TIOCSTI (nor TIOCLINUX) for the workload, on every launch.

The attack: a caller hands the sandbox a terminal that is no session's
controlling tty (here a pty the test opens; its slave is the workload's
stdin and stdout). PID 1's setsid() does not help, because the workload
can take the terminal for itself: setsid(), then TIOCSCTTY (allowed for a
session leader on a terminal nobody controls), then TIOCSTI pushes bytes
into the terminal's input, to be read by whatever reads it after the
sandbox ends (the caller's shell). The kernel allows that here
(dev.tty.legacy_tiocsti = 1) and, for a process with CAP_SYS_ADMIN, always.

What was injected is read back two ways: the slave's input queue (what the
caller's shell would read), and the master side, where the terminal echoes
typed input; a sentinel written afterwards marks the end of that echo.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import SYSTEM, VENV
from seccomp_probes import ABI_CALLS_C, MACHINE, abi_probe, compile_c, ia32_abi  # noqa: F401 (fixtures)

INJECTED = b"echo INJECTED-BY-THE-SANDBOX\n"

_TTY_PROBE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
""" + (ABI_CALLS_C if MACHINE == "x86_64" else "") + r"""

static char *memory; /* the ioctl argument: below 4 GiB on x86-64, for int 0x80 and x32 */

static long terminal_ioctl(const char *how, unsigned long request) {
    long ret;
    if (!strcmp(how, "libc")) {
        ret = ioctl(0, request, memory);
    } else if (!strcmp(how, "upper-bits")) {
        /* the kernel takes the request as an unsigned int: these bits vanish */
        ret = syscall(SYS_ioctl, 0, (1UL << 32) | request, memory);
#ifdef __x86_64__
    } else if (!strcmp(how, "int80")) {
        return int80(54, 0, request, (long)memory);    /* i386 ioctl */
    } else if (!strcmp(how, "x32")) {
        return x32(514, 0, request, (long)memory);     /* x32 ioctl */
#endif
    } else {
        fprintf(stderr, "unknown way %s\n", how);
        _exit(2);
    }
    return ret < 0 ? -errno : ret;
}

static const char *outcome(long ret) {
    return ret >= 0 ? "ok" : strerrorname_np(-ret);
}

/* Become a session leader and make fd 0 our controlling terminal. */
static void take_terminal(void) {
    if (setsid() < 0) { fprintf(stderr, "setsid %s\n", strerrorname_np(errno)); _exit(3); }
    if (ioctl(0, TIOCSCTTY, 0) < 0) { fprintf(stderr, "TIOCSCTTY %s\n", strerrorname_np(errno)); _exit(3); }
    fprintf(stderr, "terminal taken\n");
}

int main(int argc, char **argv) {
    static char buffer[4096];
#ifdef __x86_64__
    memory = low_page();
    if (!memory) return 4;
#else
    memory = buffer;
#endif
    if (argc == 4 && !strcmp(argv[1], "inject")) {
        take_terminal();
        for (const char *c = argv[3]; *c; c++) {
            long ret;
            memory[0] = *c;
            ret = terminal_ioctl(argv[2], TIOCSTI);
            if (ret < 0) { fprintf(stderr, "TIOCSTI %s\n", outcome(ret)); return 0; }
        }
        fprintf(stderr, "TIOCSTI ok\n");
    } else if (argc == 3 && !strcmp(argv[1], "tioclinux")) {
        take_terminal();
        memory[0] = 3; /* TIOCL_PASTESEL: paste the console selection as input */
        fprintf(stderr, "TIOCLINUX %s\n", outcome(terminal_ioctl(argv[2], TIOCLINUX)));
    } else if (argc == 2 && !strcmp(argv[1], "ordinary")) {
        struct termios modes;
        struct winsize size = {.ws_row = 33, .ws_col = 99};
        pid_t group;
        take_terminal();
        fprintf(stderr, "TCGETS %s\n", tcgetattr(0, &modes) ? strerrorname_np(errno) : "ok");
        fprintf(stderr, "TCSETS %s\n", tcsetattr(0, TCSANOW, &modes) ? strerrorname_np(errno) : "ok");
        fprintf(stderr, "TIOCSWINSZ %s\n", ioctl(0, TIOCSWINSZ, &size) ? strerrorname_np(errno) : "ok");
        size.ws_row = size.ws_col = 0;
        fprintf(stderr, "TIOCGWINSZ %s", ioctl(0, TIOCGWINSZ, &size) ? strerrorname_np(errno) : "ok");
        fprintf(stderr, " %dx%d\n", size.ws_row, size.ws_col);
        fprintf(stderr, "TIOCGPGRP %s\n", ioctl(0, TIOCGPGRP, &group) ? strerrorname_np(errno) : "ok");
        fprintf(stderr, "foreground group %s\n", group == getpid() ? "is ours" : "is another");
    } else {
        return 2;
    }
    (void)buffer;
    return 0;
}
"""


@pytest.fixture(scope="session")
def tty_probe():  # type: ignore[no-untyped-def]
    binary, directory = compile_c(_TTY_PROBE, "tty-probe")
    yield binary
    shutil.rmtree(directory, ignore_errors=True)


class TerminalResult:
    def __init__(self, returncode: int, stderr: str, typed: bytes, echoed: bytes) -> None:
        self.returncode = returncode
        self.stderr = stderr
        self.typed = typed  # what is waiting in the terminal's input
        self.echoed = echoed  # what the terminal showed on the master side


def _drain_input(slave: int) -> bytes:
    os.set_blocking(slave, False)
    try:
        return os.read(slave, 4096)
    except BlockingIOError:
        return b""


def _read_until_sentinel(master: int, slave: int) -> bytes:
    sentinel = b"SENTINEL-%d" % os.getpid()
    os.write(slave, sentinel + b"\n")
    seen = b""
    deadline = time.monotonic() + 10
    while sentinel not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([master], [], [], left)[0]:
            raise AssertionError(f"the sentinel never reached the master side: {seen!r}")
        seen += os.read(master, 4096)
    return seen[: seen.index(sentinel)]


def on_fresh_terminal(argv: list[str], **kwargs) -> TerminalResult:  # type: ignore[no-untyped-def]
    """Run ``argv`` with a new pty's slave (nobody's controlling tty) as stdin
    and stdout; stderr captured."""
    master, slave = os.openpty()
    try:
        result = subprocess.run(argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE, text=True, timeout=60, **kwargs)
        typed = _drain_input(slave)
        echoed = _read_until_sentinel(master, slave)
    finally:
        os.close(master)
        os.close(slave)
    return TerminalResult(result.returncode, result.stderr, typed, echoed)


def in_sandbox(launcher, probe: str, *args: str, options: tuple[str, ...] = ()) -> TerminalResult:  # type: ignore[no-untyped-def]
    argv = launcher.argv("run", *options, *SYSTEM, "--", probe, *args)
    return on_fresh_terminal(argv, **launcher.process_kwargs())


def on_host(probe: str, *args: str) -> TerminalResult:
    """The control: the same probe as host root, with no filter at all."""
    return on_fresh_terminal([probe, *args], cwd="/")


WAYS = [
    "libc",
    "upper-bits",
    pytest.param("int80", marks=pytest.mark.skipif(MACHINE != "x86_64", reason="x86-64 machine code")),
    pytest.param("x32", marks=pytest.mark.skipif(MACHINE != "x86_64", reason="x86-64 machine code")),
]


@pytest.fixture
def way_is_available(request: pytest.FixtureRequest, way: str) -> None:
    if way == "int80":
        request.getfixturevalue("ia32_abi")  # skips where the kernel runs no i386 code


# ---------------------------------------------------------------- TIOCSTI


@pytest.mark.parametrize("way", WAYS)
def test_tiocsti_on_a_terminal_the_workload_took_is_refused(launcher, tty_probe: str, way: str, way_is_available: None) -> None:
    result = in_sandbox(launcher, tty_probe, "inject", way, INJECTED.decode())
    assert result.returncode == 0, result.stderr
    assert "terminal taken" in result.stderr  # setsid + TIOCSCTTY really worked
    assert "TIOCSTI EPERM" in result.stderr
    assert result.typed == b""
    assert INJECTED.strip() not in result.echoed


@pytest.mark.parametrize("way", ["libc", "upper-bits"])
def test_tiocsti_injects_where_nothing_filters_it(tty_probe: str, way: str) -> None:
    # The control for the test above: the probe's injection is real. (Host
    # root has CAP_SYS_ADMIN, so this holds whatever dev.tty.legacy_tiocsti says.)
    result = on_host(tty_probe, "inject", way, INJECTED.decode())
    assert "TIOCSTI ok" in result.stderr
    assert result.typed == INJECTED
    assert INJECTED.strip() in result.echoed


def test_tiocsti_through_int80_injects_where_nothing_filters_it(tty_probe: str, ia32_abi: None) -> None:  # noqa: F811
    result = on_host(tty_probe, "inject", "int80", INJECTED.decode())
    assert "TIOCSTI ok" in result.stderr
    assert result.typed == INJECTED


def test_tiocsti_is_refused_under_the_other_filters_too(launcher, tty_probe: str) -> None:
    options = ("--seccomp-unix-block", "--seccomp-harden")
    result = in_sandbox(launcher, tty_probe, "inject", "libc", INJECTED.decode(), options=options)
    assert "TIOCSTI EPERM" in result.stderr, result.stderr
    assert result.typed == b""


# ---------------------------------------------------------------- TIOCLINUX


@pytest.mark.parametrize("way", WAYS)
def test_tioclinux_is_refused(launcher, tty_probe: str, way: str, way_is_available: None) -> None:
    # A pty is no virtual console: the kernel itself would say ENOTTY (see
    # the control below); the selection paste matters on /dev/ttyN.
    result = in_sandbox(launcher, tty_probe, "tioclinux", way)
    assert "terminal taken" in result.stderr
    assert "TIOCLINUX EPERM" in result.stderr


def test_tioclinux_is_answered_by_the_kernel_where_nothing_filters_it(tty_probe: str) -> None:
    result = on_host(tty_probe, "tioclinux", "libc")
    assert "TIOCLINUX " in result.stderr
    assert "TIOCLINUX EPERM" not in result.stderr


# ---------------------------------------------------------------- what still works


def test_ordinary_terminal_ioctls_still_work(launcher, tty_probe: str) -> None:
    result = in_sandbox(launcher, tty_probe, "ordinary")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "terminal taken", "TCGETS ok", "TCSETS ok", "TIOCSWINSZ ok", "TIOCGWINSZ ok 33x99", "TIOCGPGRP ok",
        "foreground group is ours",
    ]  # fmt: skip


def test_shell_reads_from_the_terminal(launcher) -> None:
    # A workload still reads what the caller types: the filter touches no read.
    master, slave = os.openpty()
    try:
        os.write(master, b"typed by the caller\n")
        result = launcher.run(*SYSTEM, "--", "/bin/sh", "-c", "read line && echo \"got: $line\" >&2",
                              stdin=slave, stdout=slave, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(master)
        os.close(slave)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "got: typed by the caller\n"


# ---------------------------------------------------------------- fail closed


@pytest.fixture(scope="module")
def package_without_tty_filter():  # type: ignore[no-untyped-def]
    """A copy of the installed package with the tty blobs removed, where uid 65534 can read it."""
    where = subprocess.run(
        [str(VENV / "bin" / "python"), "-I", "-c", "import srt_launcher; print(srt_launcher.__file__)"],
        cwd="/", capture_output=True, text=True, timeout=60, check=True,
    )
    installed = Path(where.stdout.strip()).parent
    assert (installed / "_bpf" / f"tty.{MACHINE}.bpf").exists()
    directory = Path(tempfile.mkdtemp(prefix="srt-launcher-no-tty-", dir="/tmp"))
    directory.chmod(0o755)
    shutil.copytree(installed, directory / "srt_launcher", ignore=shutil.ignore_patterns("tty.*.bpf", "__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(directory)], check=True)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_missing_tty_filter_fails_every_launch(launcher, package_without_tty_filter: Path) -> None:
    # Fail closed: a broken installation must not run workloads unfiltered.
    entry = f"import sys; sys.path.insert(0, {str(package_without_tty_filter)!r}); from srt_launcher.__main__ import main; main()"
    argv = [launcher.python, "-I", "-c", entry, *launcher.argv("run", *SYSTEM, "--", "/bin/echo", "ran")[len(launcher.argv_prefix):]]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    blob = package_without_tty_filter / "srt_launcher" / "_bpf" / f"tty.{MACHINE}.bpf"
    assert result.returncode == 125
    assert result.stdout == ""
    assert result.stderr == f"srt-launcher: seccomp: {blob}: filter missing from the installation (srt-launcher check explains)\n"
