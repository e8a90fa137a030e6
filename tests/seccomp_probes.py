"""Probes shared by the seccomp tests: raw system calls made by a real
program inside the sandbox, and small C programs compiled by the tests.

Not a test module. Syscall numbers are the kernel's own tables
(arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h),
written out here rather than asked of libseccomp: the probes must not share
a mistake with the generator they check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import SYSTEM

MACHINE = os.uname().machine

SYSCALL_NUMBERS = {
    "x86_64": {
        "ioctl": 16, "socket": 41, "socketpair": 53, "clone": 56, "init_module": 175, "delete_module": 176,
        "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
        "perf_event_open": 298, "open_by_handle_at": 304, "finit_module": 313, "kexec_file_load": 320,
        "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "clone3": 435,
    },
    "aarch64": {
        "ioctl": 29, "socket": 198, "socketpair": 199, "clone": 220, "init_module": 105, "delete_module": 106,
        "kexec_load": 104, "add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97,
        "perf_event_open": 241, "open_by_handle_at": 265, "finit_module": 273, "kexec_file_load": 294,
        "bpf": 280, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "clone3": 435,
    },
}  # fmt: skip

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
AF_NETLINK, AF_PACKET, AF_BLUETOOTH, AF_VSOCK = 16, 17, 31, 40
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET = 1, 2, 3, 5
SOCK_CLOEXEC = 0o2000000
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17


class Call(NamedTuple):
    """One raw syscall(2). Arguments: ints (passed as full 64-bit longs, so
    upper bits reach the kernel), ``"fds"`` (an int[2]), ``"zeros"`` (4 KiB of
    zeroed memory). ``forks``: the call creates a process (clone) that must
    leave at once."""

    name: str
    args: tuple[object, ...] = ()
    forks: bool = False


# Run inside the sandbox by /usr/bin/python3: each call in a child of its
# own (an unshare or a clone must not change the next probe), its outcome
# "created" or the errno name, or how the child died.
_BATCH = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def argument(value):
    if value == "fds":
        return (ctypes.c_int * 2)()
    if value == "zeros":
        return ctypes.create_string_buffer(4096)
    return ctypes.c_long(value)

def outcome(number, args, forks):
    result = libc.syscall(ctypes.c_long(number), *[argument(a) for a in args])
    if forks and result == 0:
        os._exit(0)  # the clone child: fork-like, on a copy of the stack
    if forks and result > 0:
        os.waitpid(result, 0)
    return "created" if result >= 0 else errno.errorcode[ctypes.get_errno()]

results = {}
for label, number, args, forks in json.loads(sys.argv[1]):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, outcome(number, args, forks).encode())
        os._exit(0)
    os.close(write_end)
    said = os.read(read_end, 100).decode()
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    results[label] = said or f"died: wait status {status:#x}"
print(json.dumps(results))
"""


def outcomes(launcher, options: tuple[str, ...], calls: dict[str, Call]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Make every call in one sandbox launched with ``options``: label -> outcome."""
    numbers = SYSCALL_NUMBERS[MACHINE]
    batch = [[label, numbers[call.name], list(call.args), call.forks] for label, call in calls.items()]
    result = launcher.run(*options, *SYSTEM, "--", "/usr/bin/python3", "-c", _BATCH, json.dumps(batch))
    assert result.returncode == 0, f"probe failed ({result.returncode}): {result.stderr}"
    return json.loads(result.stdout)


def seccomp_filter_count(launcher, *options: str) -> int:  # type: ignore[no-untyped-def]
    """How many seccomp filters the workload runs under (/proc/self/status, Linux 5.9+)."""
    result = launcher.run(*options, *SYSTEM, "--", "/bin/cat", "/proc/self/status")
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        if line.startswith("Seccomp_filters:"):
            return int(line.split()[1])
    raise AssertionError(f"no Seccomp_filters: line in {result.stdout!r}")


# ---------------------------------------------------------------- C probes


def compile_c(source: str, name: str, *flags: str) -> tuple[str, Path]:
    """Compile ``source`` into a directory uid 65534 can reach (tmp_path is
    0700): (binary, directory to remove)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is missing (make setup installs it)")
    directory = Path(tempfile.mkdtemp(prefix=f"srt-launcher-{name}-", dir="/tmp"))
    directory.chmod(0o755)
    binary = directory / name
    (directory / f"{name}.c").write_text(source)
    built = subprocess.run(
        [gcc, "-O1", *flags, "-o", str(binary), str(directory / f"{name}.c")], capture_output=True, text=True, timeout=120
    )
    if built.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.fail(f"gcc could not build {name}:\n{built.stderr}")
    binary.chmod(0o755)
    return str(binary), directory


# Foreign ABIs on x86-64: int 0x80 (i386 compat) and x32 (__X32_SYSCALL_BIT).
ABI_CALLS_C = r"""
#include <stddef.h>
#include <sys/mman.h>

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

/* A page below 4 GiB: the only memory int 0x80's 32-bit pointers can name. */
static void *low_page(void) {
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    return page == MAP_FAILED ? 0 : page;
}
"""

_ABI_PROBE = ABI_CALLS_C + r"""
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

int main(int argc, char **argv) {
    struct rlimit none = {0, 0};
    long ret = -1;
    setrlimit(RLIMIT_CORE, &none); /* a SIGSYS death must not drop a core file */
    if (argc != 2) return 2;
    printf("trying %s\n", argv[1]);
    fflush(stdout);
    if (!strcmp(argv[1], "socketcall")) {
        /* socketcall(SYS_SOCKET, {AF_UNIX, SOCK_STREAM, 0}). */
        unsigned int *args = low_page();
        if (!args) return 3;
        args[0] = 1; args[1] = 1; args[2] = 0;
        ret = int80(102, 1, (long)args, 0);
    } else if (!strcmp(argv[1], "int80-socket")) {
        ret = int80(359, 1, 1, 0);            /* i386 socket(AF_UNIX, SOCK_STREAM, 0) */
    } else if (!strcmp(argv[1], "int80-netlink")) {
        ret = int80(359, 16, 3, 0);           /* i386 socket(AF_NETLINK, SOCK_RAW, 0) */
    } else if (!strcmp(argv[1], "x32-socket")) {
        ret = x32(41, 1, 1, 0);               /* x32 socket(AF_UNIX, SOCK_STREAM, 0) */
    } else if (!strcmp(argv[1], "x32-netlink")) {
        ret = x32(41, 16, 3, 0);              /* x32 socket(AF_NETLINK, SOCK_RAW, 0) */
    } else {
        return 2;
    }
    printf("%s %ld\n", ret >= 0 ? "created" : "failed", ret);
    return 0;
}
"""


@pytest.fixture(scope="session")
def abi_probe():  # type: ignore[no-untyped-def]
    """``abi-probe HOW``: one socket() through a foreign ABI; prints ``trying HOW``
    first, then ``created`` or ``failed -ERRNO`` (if it was not killed)."""
    if MACHINE != "x86_64":
        pytest.skip("foreign-ABI probes are x86-64 machine code")
    binary, directory = compile_c(_ABI_PROBE, "abi-probe")
    yield binary
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def ia32_abi(abi_probe: str) -> None:
    """The int 0x80 probes mean something only where the kernel runs 32-bit calls."""
    unfiltered = subprocess.run([abi_probe, "int80-socket"], capture_output=True, text=True, timeout=30)
    if "created" not in unfiltered.stdout:
        pytest.skip(f"this kernel has no usable i386 ABI: {unfiltered.returncode} {unfiltered.stdout!r}")
