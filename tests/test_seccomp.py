"""SPEC §2.6: the seccomp filter of ``run --seccomp-unix-block``, end to end.

Every probe is a real launch (root, uid 65534, root+--unshare-user) whose
workload tries the call itself. A denied call must fail with EPERM, which
nothing but the filter returns for these calls; a call through a foreign ABI
must die of SIGSYS, which nothing but seccomp sends.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SYSTEM, VENV
from seccomp_probes import (  # noqa: F401 (abi_probe, ia32_abi: fixtures)
    AF_INET,
    AF_INET6,
    AF_UNIX,
    MACHINE,
    SOCK_CLOEXEC,
    SOCK_DGRAM,
    SOCK_RAW,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    SYSCALL_NUMBERS,
    abi_probe,
    ia32_abi,
)

SECCOMP = "--seccomp-unix-block"
KILLED_BY_SIGSYS = 128 + signal.SIGSYS

only_x86_64 = pytest.mark.skipif(MACHINE != "x86_64", reason="foreign-ABI probes are x86-64 machine code")


def _python(launcher, code: str, *, seccomp: bool = True) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    options = (SECCOMP,) if seccomp else ()
    return launcher.run(*options, *SYSTEM, "--", "/usr/bin/python3", "-c", code)


def _outcome(result: subprocess.CompletedProcess) -> str:
    """What the probe printed: ``created`` or the errno name of its failure."""
    assert result.returncode == 0, f"probe failed ({result.returncode}): {result.stderr}"
    return result.stdout.strip()


# Raw syscall(2), every argument a full 64-bit long: Python's socket module
# would add SOCK_CLOEXEC to the type, and a libc wrapper may truncate.
_SYSCALL = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fds = (ctypes.c_int * 2)()
io_uring_params = ctypes.create_string_buffer(120)
args = [{args}]
result = libc.syscall(*[a if isinstance(a, ctypes.Array) else ctypes.c_long(a) for a in args])
print("created" if result >= 0 else errno.errorcode[ctypes.get_errno()])
"""


def syscall_outcome(launcher, name: str, *args: object, seccomp: bool = True) -> str:  # type: ignore[no-untyped-def]
    """``created`` if the call succeeded inside the sandbox, else its errno name."""
    number = SYSCALL_NUMBERS[MACHINE][name]
    code = _SYSCALL.format(args=", ".join(str(a) for a in (number, *args)))
    return _outcome(_python(launcher, code, seccomp=seccomp))


def socket_outcome(launcher, domain: int, sock_type: int, *, seccomp: bool = True) -> str:  # type: ignore[no-untyped-def]
    return syscall_outcome(launcher, "socket", domain, sock_type, 0, seccomp=seccomp)


def socketpair_outcome(launcher, sock_type: int, *, seccomp: bool = True) -> str:  # type: ignore[no-untyped-def]
    return syscall_outcome(launcher, "socketpair", AF_UNIX, sock_type, 0, "fds", seccomp=seccomp)


# ---------------------------------------------------------------- socket / socketpair


@pytest.mark.parametrize("sock_type", [SOCK_STREAM, SOCK_DGRAM], ids=["stream", "dgram"])
def test_unix_socket_is_denied(launcher, sock_type: int) -> None:
    assert socket_outcome(launcher, AF_UNIX, sock_type) == "EPERM"


def test_unix_socket_with_upper_domain_bits_set_is_denied(launcher) -> None:
    # The kernel truncates the domain to an int: (1 << 32) | AF_UNIX is AF_UNIX.
    assert socket_outcome(launcher, (1 << 32) | AF_UNIX, SOCK_STREAM) == "EPERM"


@pytest.mark.parametrize(
    "sock_type",
    [SOCK_DGRAM, SOCK_DGRAM | SOCK_CLOEXEC, SOCK_RAW],
    ids=["dgram", "dgram-cloexec", "raw"],
)
def test_unix_datagram_socketpair_is_denied(launcher, sock_type: int) -> None:
    assert socketpair_outcome(launcher, sock_type) == "EPERM"


@pytest.mark.parametrize("sock_type", [SOCK_STREAM, SOCK_SEQPACKET], ids=["stream", "seqpacket"])
def test_unix_stream_and_seqpacket_socketpairs_are_allowed(launcher, sock_type: int) -> None:
    assert socketpair_outcome(launcher, sock_type) == "created"


@pytest.mark.parametrize("domain", [AF_INET, AF_INET6], ids=["inet", "inet6"])
def test_inet_sockets_are_allowed(launcher, domain: int) -> None:
    assert socket_outcome(launcher, domain, SOCK_STREAM) == "created"


def test_unix_sockets_work_without_the_flag(launcher) -> None:
    assert socket_outcome(launcher, AF_UNIX, SOCK_DGRAM, seccomp=False) == "created"
    assert socketpair_outcome(launcher, SOCK_DGRAM, seccomp=False) == "created"


def test_already_open_unix_socket_keeps_working(launcher) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        result = launcher.run(
            SECCOMP, *SYSTEM, "--", "/bin/echo", "through the socket",
            stdout=theirs.fileno(), stderr=subprocess.PIPE, capture_output=False,
        )
        theirs.close()
        assert result.returncode == 0, result.stderr
        assert ours.recv(100) == b"through the socket\n"


# ---------------------------------------------------------------- io_uring


def test_io_uring_setup_is_denied(launcher) -> None:
    assert syscall_outcome(launcher, "io_uring_setup", 1, "io_uring_params") == "EPERM"


def test_io_uring_enter_is_denied(launcher) -> None:
    # Unfiltered, fd -1 would give EBADF.
    assert syscall_outcome(launcher, "io_uring_enter", -1, 0, 0, 0, 0, 0) == "EPERM"


def test_io_uring_register_is_denied(launcher) -> None:
    assert syscall_outcome(launcher, "io_uring_register", -1, 0, 0, 0) == "EPERM"


# ---------------------------------------------------------------- foreign ABIs (x86-64)

def _escape(launcher, abi_probe: str, how: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    result = launcher.run(SECCOMP, *SYSTEM, "--", abi_probe, how)
    assert f"trying {how}" in result.stdout, f"the probe did not start: {result.returncode} {result.stderr}"
    return result


@only_x86_64
def test_socketcall_through_int80_gets_no_socket(launcher, abi_probe: str, ia32_abi: None) -> None:
    result = _escape(launcher, abi_probe, "socketcall")
    assert "created" not in result.stdout
    assert result.returncode == KILLED_BY_SIGSYS


@only_x86_64
def test_socket_through_int80_gets_no_socket(launcher, abi_probe: str, ia32_abi: None) -> None:
    result = _escape(launcher, abi_probe, "int80-socket")
    assert "created" not in result.stdout
    assert result.returncode == KILLED_BY_SIGSYS


@only_x86_64
def test_socket_through_int80_is_created_without_the_flag(launcher, abi_probe: str, ia32_abi: None) -> None:
    # The control for the two tests above: the probe really escapes an unfiltered sandbox.
    result = launcher.run(*SYSTEM, "--", abi_probe, "int80-socket")
    assert result.returncode == 0, result.stderr
    assert "created" in result.stdout


@only_x86_64
def test_socket_through_x32_abi_gets_no_socket(launcher, abi_probe: str) -> None:
    # Killed by the filter even where the kernel lacks x32 (it would say ENOSYS).
    result = _escape(launcher, abi_probe, "x32-socket")
    assert "created" not in result.stdout
    assert result.returncode == KILLED_BY_SIGSYS


@only_x86_64
def test_flag_is_refused_on_32bit_x86(launcher) -> None:
    # setarch i686 makes uname(2) say i686: the launcher must not pretend to filter.
    argv = ["setarch", "i686", *launcher.argv("run", SECCOMP, *SYSTEM, "--", "/bin/true")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    assert result.returncode == 125
    assert "socketcall" in result.stderr
    assert result.stderr.startswith("srt-launcher: seccomp: i686: ")


# ---------------------------------------------------------------- who is filtered


def _seccomp_mode(status_text: str) -> str:
    for line in status_text.splitlines():
        if line.startswith("Seccomp:"):
            return line.split()[1]
    raise AssertionError(f"no Seccomp: line in {status_text!r}")


def test_workload_runs_in_seccomp_filter_mode(launcher) -> None:
    result = launcher.run(SECCOMP, *SYSTEM, "--", "/bin/cat", "/proc/self/status")
    assert result.returncode == 0, result.stderr
    assert _seccomp_mode(result.stdout) == "2"


def test_pid1_runs_without_the_filter(launcher) -> None:
    result = launcher.run(SECCOMP, *SYSTEM, "--", "/bin/cat", "/proc/1/status")
    assert result.returncode == 0, result.stderr
    assert _seccomp_mode(result.stdout) == "0"


# ---------------------------------------------------------------- build and packaging


FILTERS = ("harden", "tty", "unix-block")
BLOBS = sorted(f"{name}.{machine}.bpf" for name in FILTERS for machine in ("aarch64", "x86_64"))


def test_committed_blobs_match_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "bpf" / "generate.py"), "--output-dir", str(tmp_path)],
        check=True, capture_output=True, timeout=120,
    )
    fresh = sorted(path.name for path in tmp_path.glob("*.bpf"))
    committed = sorted(path.name for path in (ROOT / "bpf").glob("*.bpf"))
    assert fresh == committed == BLOBS
    for name in fresh:
        assert (tmp_path / name).read_bytes() == (ROOT / "bpf" / name).read_bytes(), f"bpf/{name} is stale: run make bpf"


def test_show_lists_every_rule_of_every_filter_and_writes_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bpf" / "generate.py"), "--show", "--output-dir", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    assert list(tmp_path.iterdir()) == []
    for blob in BLOBS:
        assert f"==== {blob}: " in result.stdout
    for rule in (
        "ioctl              -> EPERM if arg1.lo32 == TIOCSTI (0x5412)",
        "ioctl              -> EPERM if arg1.lo32 == TIOCLINUX (0x541c)",
        "socket             -> EPERM if arg0.lo32 == AF_UNIX (0x1)",
        "socket             -> EPERM if arg0.lo32 == AF_VSOCK (0x28)",
        "clone              -> EPERM if arg0 & 0x10000000 == 0x10000000 (CLONE_NEWUSER set)",
        "clone3             -> ENOSYS",
        "open_by_handle_at  -> EPERM",
    ):
        assert rule in result.stdout


@pytest.mark.parametrize("name", FILTERS)
def test_installed_package_loads_the_blob_for_this_machine(name: str) -> None:
    # -I: no cwd, no PYTHONPATH; from / the checkout cannot shadow site-packages.
    code = (
        "import srt_launcher.seccomp as s, sys; print(s.__file__, flush=True); "
        f"sys.stdout.buffer.write(s.load_filter({name!r}))"
    )
    result = subprocess.run(
        [str(VENV / "bin" / "python"), "-I", "-c", code], cwd="/", capture_output=True, timeout=60, check=True
    )
    module_path, _, blob = result.stdout.partition(b"\n")
    assert b"/site-packages/srt_launcher/" in module_path
    assert blob == (ROOT / "bpf" / f"{name}.{MACHINE}.bpf").read_bytes()


@pytest.mark.parametrize("options", [(), (SECCOMP,), ("--seccomp-harden",), (SECCOMP, "--seccomp-harden")])
def test_launch_does_not_import_pyseccomp(launcher, options: tuple[str, ...]) -> None:
    # The caller's interpreter: the venv's, or the world-readable copy of it.
    run_args = launcher.argv("run", *options, *SYSTEM, "--", "/bin/true")[len(launcher.argv_prefix) :]
    argv = [launcher.python, "-X", "importtime", "-X", "srt-launcher-no-image", "-m", "srt_launcher", *run_args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    assert result.returncode == 0, result.stderr
    assert "srt_launcher.seccomp" in result.stderr  # the import log is really there
    assert "pyseccomp" not in result.stderr
