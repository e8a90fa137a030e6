"""SPEC §2.6: the seccomp filter of ``run --seccomp-unix-block``, end to end.

Every probe is a real launch (root, uid 65534, root+--unshare-user) whose
workload tries the call itself. A denied call must fail with EPERM, which
nothing but the filter returns for these calls; a call through a foreign ABI
must die of SIGSYS, which nothing but seccomp sends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, SYSTEM, VENV

MACHINE = os.uname().machine
SECCOMP = "--seccomp-unix-block"
KILLED_BY_SIGSYS = 128 + signal.SIGSYS

SYSCALL_NUMBERS = {
    "x86_64": {"socket": 41, "socketpair": 53, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427},
    "aarch64": {"socket": 198, "socketpair": 199, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427},
}
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET = 1, 2, 3, 5
SOCK_CLOEXEC = 0o2000000

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

_ABI_PROBE = r"""
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

/* The 32-bit compat ABI: i386 numbers, arguments in ebx/ecx/edx. */
static long int80(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c)
                     : "r8", "r9", "r10", "r11", "memory");
    return ret;
}

/* The x32 ABI: the 64-bit entry with __X32_SYSCALL_BIT in the number. */
static long x32(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr | 0x40000000L), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return ret;
}

int main(int argc, char **argv) {
    struct rlimit none = {0, 0};
    long ret = -1;
    setrlimit(RLIMIT_CORE, &none); /* a SIGSYS death must not drop a core file */
    if (argc != 2) return 2;
    printf("trying %s\n", argv[1]);
    fflush(stdout);
    if (!strcmp(argv[1], "socketcall")) {
        /* socketcall(SYS_SOCKET, {AF_UNIX, SOCK_STREAM, 0}): args below 4 GiB for int 0x80. */
        unsigned int *args = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
        if (args == MAP_FAILED) return 3;
        args[0] = 1; args[1] = 1; args[2] = 0;
        ret = int80(102, 1, (long)args, 0);
    } else if (!strcmp(argv[1], "int80-socket")) {
        ret = int80(359, 1, 1, 0);            /* i386 socket(AF_UNIX, SOCK_STREAM, 0) */
    } else if (!strcmp(argv[1], "x32-socket")) {
        ret = x32(41, 1, 1, 0);               /* x32 socket(AF_UNIX, SOCK_STREAM, 0) */
    } else {
        return 2;
    }
    printf("%s %ld\n", ret >= 0 ? "created" : "failed", ret);
    return 0;
}
"""


@pytest.fixture(scope="session")
def abi_probe():  # type: ignore[no-untyped-def]
    """The probe binary, in a directory uid 65534 can reach (tmp_path is 0700)."""
    if MACHINE != "x86_64":
        pytest.skip("foreign-ABI probes are x86-64 machine code")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is missing (make setup installs it)")
    directory = Path(tempfile.mkdtemp(prefix="srt-launcher-abi-probe-", dir="/tmp"))
    directory.chmod(0o755)
    binary = directory / "abi-probe"
    source = directory / "abi-probe.c"
    source.write_text(_ABI_PROBE)
    subprocess.run([gcc, "-O1", "-o", str(binary), str(source)], check=True, capture_output=True, timeout=120)
    binary.chmod(0o755)
    yield str(binary)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def ia32_abi(abi_probe: str) -> None:
    """The int 0x80 probes mean something only where the kernel runs 32-bit calls."""
    unfiltered = subprocess.run([abi_probe, "int80-socket"], capture_output=True, text=True, timeout=30)
    if "created" not in unfiltered.stdout:
        pytest.skip(f"this kernel has no usable i386 ABI: {unfiltered.returncode} {unfiltered.stdout!r}")


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


def test_committed_blobs_match_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "bpf" / "generate.py"), "--output-dir", str(tmp_path)],
        check=True, capture_output=True, timeout=120,
    )
    fresh = sorted(path.name for path in tmp_path.glob("*.bpf"))
    committed = sorted(path.name for path in (ROOT / "bpf").glob("*.bpf"))
    assert fresh == committed == ["aarch64.bpf", "x86_64.bpf"]
    for name in fresh:
        assert (tmp_path / name).read_bytes() == (ROOT / "bpf" / name).read_bytes(), f"bpf/{name} is stale: run make bpf"


def test_installed_package_loads_the_blob_for_this_machine() -> None:
    # -I: no cwd, no PYTHONPATH; from / the checkout cannot shadow site-packages.
    code = "import srt_launcher.seccomp as s, sys; print(s.__file__, flush=True); sys.stdout.buffer.write(s.load_filter())"
    result = subprocess.run(
        [str(VENV / "bin" / "python"), "-I", "-c", code], cwd="/", capture_output=True, timeout=60, check=True
    )
    module_path, _, blob = result.stdout.partition(b"\n")
    assert b"/site-packages/srt_launcher/" in module_path
    assert blob == (ROOT / "bpf" / f"{MACHINE}.bpf").read_bytes()


def test_launch_with_the_flag_does_not_import_pyseccomp(launcher) -> None:
    # The caller's interpreter: the venv's, or the world-readable copy of it.
    run_args = launcher.argv("run", SECCOMP, *SYSTEM, "--", "/bin/true")[len(launcher.argv_prefix) :]
    argv = [launcher.python, "-X", "importtime", "-m", "srt_launcher", *run_args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    assert result.returncode == 0, result.stderr
    assert "srt_launcher.seccomp" in result.stderr  # the import log is really there
    assert "pyseccomp" not in result.stderr
