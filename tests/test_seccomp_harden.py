"""SPEC §6: ``run --seccomp-harden``, end to end, and stacked with ``--seccomp-unix-block``.

Every probe is a real program making the call itself in a real launch (root,
uid 65534, root+--unshare-user). Each refused call is also made without the
flag, with arguments chosen so that the kernel answers something other than
the filter's EPERM (an invalid socket type, a bad fd, a NULL pointer): the
EPERM is then the filter's, not a missing capability's. Five calls check a
capability before reading any argument (kexec, modules); on a kernel built
with them a capability-less workload gets EPERM either way, so the filter's
own answer to them is also checked in a privileged process on the host
(test_privileged_calls_are_refused_by_the_filter_itself).
"""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import threading

import pytest

from conftest import SYSTEM, VENV
from seccomp_probes import (
    AF_BLUETOOTH,
    AF_INET,
    AF_INET6,
    AF_NETLINK,
    AF_PACKET,
    AF_UNIX,
    AF_VSOCK,
    CLONE_NEWUSER,
    MACHINE,
    SIGCHLD,
    SOCK_CLOEXEC,
    SOCK_DGRAM,
    SOCK_RAW,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    SYSCALL_NUMBERS,
    Call,
    abi_probe,  # noqa: F401 (fixture)
    ia32_abi,  # noqa: F401 (fixture)
    outcomes,
    seccomp_filter_count,
)

HARDEN = "--seccomp-harden"
UNIX_BLOCK = "--seccomp-unix-block"
KILLED_BY_SIGSYS = 128 + signal.SIGSYS
CLONE_NEWNS = 0x00020000
UFFD_USER_MODE_ONLY = 1
BAD_SOCK_TYPE = 15  # ≥ SOCK_MAX: the kernel says EINVAL before any family or capability check

_FAMILIES = {"netlink": AF_NETLINK, "packet": AF_PACKET, "bluetooth": AF_BLUETOOTH, "vsock": AF_VSOCK}


def _family_calls() -> dict[str, Call]:
    calls = {
        # What a program would really do (packet sockets need CAP_NET_RAW, so
        # the bad-type calls below are the ones that tell for AF_PACKET).
        "socket-netlink": Call("socket", (AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0)),
        "socket-vsock": Call("socket", (AF_VSOCK, SOCK_STREAM, 0)),
        "socket-bluetooth": Call("socket", (AF_BLUETOOTH, SOCK_SEQPACKET, 0)),
    }
    for name, family in _FAMILIES.items():
        calls[f"socket-{name}-bad-type"] = Call("socket", (family, BAD_SOCK_TYPE, 0))
        # The kernel reads the family as an int: (1 << 32) | AF_X is AF_X.
        calls[f"socket-{name}-upper-bits"] = Call("socket", ((1 << 32) | family, BAD_SOCK_TYPE, 0))
        calls[f"socketpair-{name}"] = Call("socketpair", (family, BAD_SOCK_TYPE, 0, "fds"))
    return calls


# label -> (the call, what the filter answers)
DENIED: dict[str, tuple[Call, str]] = {
    **{label: (call, "EPERM") for label, call in _family_calls().items()},
    "io_uring_setup": (Call("io_uring_setup", (1, "zeros")), "EPERM"),
    "io_uring_enter": (Call("io_uring_enter", (-1, 0, 0, 0, 0, 0)), "EPERM"),
    "io_uring_register": (Call("io_uring_register", (-1, 0, 0, 0)), "EPERM"),
    "bpf": (Call("bpf", (5, 0, 0x10000)), "EPERM"),  # BPF_PROG_LOAD, attr size > a page: E2BIG
    "perf_event_open": (Call("perf_event_open", (0, 0, -1, -1, -1)), "EPERM"),
    "userfaultfd": (Call("userfaultfd", (UFFD_USER_MODE_ONLY | SOCK_CLOEXEC,)), "EPERM"),
    "keyctl": (Call("keyctl", (9999, 0, 0, 0, 0)), "EPERM"),
    "add_key": (Call("add_key", (0, 0, 0, 0, 0)), "EPERM"),
    "request_key": (Call("request_key", (0, 0, 0, 0)), "EPERM"),
    "kexec_load": (Call("kexec_load", (0, 0, 0, 0)), "EPERM"),
    "kexec_file_load": (Call("kexec_file_load", (-1, -1, 0, 0, 0)), "EPERM"),
    "init_module": (Call("init_module", (0, 0, 0)), "EPERM"),
    "finit_module": (Call("finit_module", (-1, 0, 0)), "EPERM"),
    "delete_module": (Call("delete_module", (0, 0)), "EPERM"),
    "open_by_handle_at": (Call("open_by_handle_at", (-1, 0, 0)), "EPERM"),
    "unshare-newuser": (Call("unshare", (CLONE_NEWUSER,)), "EPERM"),
    "unshare-newuser-newns": (Call("unshare", (CLONE_NEWUSER | CLONE_NEWNS,)), "EPERM"),
    "unshare-newuser-upper-bits": (Call("unshare", ((1 << 32) | CLONE_NEWUSER,)), "EPERM"),
    "clone-newuser": (Call("clone", (CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0), forks=True), "EPERM"),
    # clone3's flags are in user memory, out of BPF's reach: ENOSYS, so libc falls back to clone.
    "clone3": (Call("clone3", (0, 0)), "ENOSYS"),
}

# Checked for CAP_SYS_BOOT / CAP_SYS_MODULE before any argument: without
# the filter a capability-less workload gets EPERM from a kernel that has
# them, ENOSYS from one built without them (as the team's VMs are).
CAPABILITY_FIRST = {"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module"}

ALLOWED: dict[str, Call] = {
    "socket-inet": Call("socket", (AF_INET, SOCK_STREAM, 0)),
    "socket-inet-dgram": Call("socket", (AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)),
    "socket-inet6": Call("socket", (AF_INET6, SOCK_STREAM, 0)),
    "socket-unix": Call("socket", (AF_UNIX, SOCK_STREAM, 0)),  # --seccomp-unix-block's business, not this filter's
    "socketpair-unix": Call("socketpair", (AF_UNIX, SOCK_STREAM, 0, "fds")),
    "clone-fork": Call("clone", (SIGCHLD, 0, 0, 0, 0), forks=True),
    "unshare-nothing": Call("unshare", (0,)),
}

_CACHE: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}


def answers(launcher, *options: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Every probe's outcome in one launch per (caller, options), shared by the tests below."""
    key = (launcher.mode, options)
    if key not in _CACHE:
        calls = {label: call for label, (call, _) in DENIED.items()} | ALLOWED
        _CACHE[key] = outcomes(launcher, options, calls)
    return _CACHE[key]


# ---------------------------------------------------------------- what is refused


@pytest.mark.parametrize("label", sorted(DENIED))
def test_denied_call_is_refused(launcher, label: str) -> None:
    expected = DENIED[label][1]
    assert answers(launcher, HARDEN)[label] == expected


@pytest.mark.parametrize("label", sorted(DENIED))
def test_without_the_flag_the_kernel_answers_the_same_call_otherwise(launcher, label: str) -> None:
    # The control: the refusal above is the filter's.
    unfiltered = answers(launcher)[label]
    if label in CAPABILITY_FIRST:
        assert unfiltered in ("ENOSYS", "EPERM")
    else:
        assert unfiltered != DENIED[label][1]


@pytest.mark.parametrize("label", sorted(ALLOWED))
def test_everything_else_still_works(launcher, label: str) -> None:
    assert answers(launcher, HARDEN)[label] == "created"


def test_unshare_command_cannot_create_a_user_namespace(launcher) -> None:
    script = "unshare -U true && echo created"
    refused = launcher.sh(script, HARDEN, *SYSTEM)
    assert refused.returncode != 0 and "created" not in refused.stdout
    assert "Operation not permitted" in refused.stderr
    allowed = launcher.sh(script)
    assert allowed.returncode == 0 and allowed.stdout == "created\n", allowed.stderr


def test_privileged_calls_are_refused_by_the_filter_itself() -> None:
    """Host root, every capability: without the filter the kernel answers
    these harmless calls with EINVAL/ENOEXEC/EBADF/ENOENT (or ENOSYS where
    not built in) — never EPERM; with the harden blob installed, EPERM."""
    numbers = SYSCALL_NUMBERS[MACHINE]
    calls = {
        "kexec_load": (numbers["kexec_load"], 0, 0, 0, 0xFFFF0000),  # no such KEXEC_ARCH: EINVAL
        "kexec_file_load": (numbers["kexec_file_load"], -1, -1, 0, 0, 0xFFFFFFFF),  # unknown flags: EINVAL
        "init_module": (numbers["init_module"], 0, 0, 0),  # an image of 0 bytes: ENOEXEC
        "finit_module": (numbers["finit_module"], -1, 0, 0),  # EBADF
        "delete_module": (numbers["delete_module"], "srt-launcher-no-such-module", 0o4000),  # ENOENT
        "bpf": (numbers["bpf"], 5, 0, 0x10000),
        "open_by_handle_at": (numbers["open_by_handle_at"], -1, 0, 0),
    }
    code = f"""
import ctypes, errno, json, sys
from srt_launcher import seccomp
if sys.argv[1] == "filtered":
    seccomp.install(seccomp.prepare(seccomp.load_filter(seccomp.HARDEN)))
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def arg(a):
    return ctypes.c_char_p(a.encode()) if isinstance(a, str) else ctypes.c_long(a)
out = {{}}
for label, (number, *args) in {calls!r}.items():
    result = libc.syscall(ctypes.c_long(number), *[arg(a) for a in args])
    out[label] = "succeeded" if result >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(out))
"""
    def run(mode: str) -> dict[str, str]:
        result = subprocess.run(
            [str(VENV / "bin" / "python"), "-I", "-c", code, mode], cwd="/", capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    unfiltered, filtered = run("unfiltered"), run("filtered")
    assert "EPERM" not in unfiltered.values() and "succeeded" not in unfiltered.values(), unfiltered
    assert filtered == {label: "EPERM" for label in calls}


# ---------------------------------------------------------------- ordinary programs


_THREADS_C = r"""
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/wait.h>
extern char **environ;

static void *worker(void *arg) { *(int *)arg = 42; return NULL; }

int main(void) {
    pthread_t thread;
    int value = 0, status = 0;
    pid_t child;
    char *argv[] = {"/bin/true", NULL};
    if (pthread_create(&thread, NULL, worker, &value) != 0) { perror("pthread_create"); return 1; }
    pthread_join(thread, NULL);
    /* posix_spawn: glibc's clone3-then-clone with CLONE_VM|CLONE_VFORK */
    if (posix_spawn(&child, argv[0], NULL, NULL, argv, environ) != 0) { perror("posix_spawn"); return 1; }
    waitpid(child, &status, 0);
    printf("thread %d spawn %d\n", value, status);
    return 0;
}
"""


def test_threads_and_compiler_still_work(launcher, shared_dir) -> None:
    # gcc itself spawns cc1, as and ld; the program it builds creates a thread
    # (pthread_create: clone3 refused, then clone without CLONE_NEWUSER).
    (shared_dir / "threads.c").write_text(_THREADS_C)
    script = "cd /work && gcc -O1 -pthread -o threads threads.c && ./threads"
    result = launcher.run(HARDEN, *SYSTEM, "--tmpfs", "/tmp", "--bind", str(shared_dir), "/work", "--", "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "thread 42 spawn 0\n"


def test_python_git_and_shell_still_work(launcher) -> None:
    script = """
set -e
python3 -c 'import threading, subprocess; t = threading.Thread(target=print, args=("thread",)); t.start(); t.join(); subprocess.run(["true"], check=True)'
cd /tmp && git init -q repo && cd repo
git -c user.name=t -c user.email=t@example.com commit -q --allow-empty -m first
git log --format=%s
echo one two | wc -w
"""
    result = launcher.run(HARDEN, *SYSTEM, "--tmpfs", "/tmp", "--setenv", "HOME", "/tmp", "--", "/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["thread", "first", "2"]


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"hello from the host\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_curl_still_fetches_over_inet(launcher) -> None:
    # "localhost" goes through getaddrinfo, whose AI_ADDRCONFIG check opens a
    # netlink socket: refused, glibc assumes both families and carries on.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://localhost:{server.server_address[1]}/"
        result = launcher.run(HARDEN, *SYSTEM, "--", "curl", "-sS", "--noproxy", "*", "--max-time", "20", url)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the host\n"


# ---------------------------------------------------------------- foreign ABIs (x86-64)


def _escape(launcher, abi_probe: str, how: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    result = launcher.run(HARDEN, *SYSTEM, "--", abi_probe, how)
    assert f"trying {how}" in result.stdout, f"the probe did not start: {result.returncode} {result.stderr}"
    return result


@pytest.mark.skipif(MACHINE != "x86_64", reason="foreign-ABI probes are x86-64 machine code")
def test_netlink_through_int80_is_killed(launcher, abi_probe: str, ia32_abi: None) -> None:  # noqa: F811
    result = _escape(launcher, abi_probe, "int80-netlink")
    assert "created" not in result.stdout
    assert result.returncode == KILLED_BY_SIGSYS


@pytest.mark.skipif(MACHINE != "x86_64", reason="foreign-ABI probes are x86-64 machine code")
def test_netlink_through_int80_is_created_without_the_flag(launcher, abi_probe: str, ia32_abi: None) -> None:  # noqa: F811
    result = launcher.run(*SYSTEM, "--", abi_probe, "int80-netlink")
    assert result.returncode == 0, result.stderr
    assert "created" in result.stdout


@pytest.mark.skipif(MACHINE != "x86_64", reason="foreign-ABI probes are x86-64 machine code")
def test_netlink_through_x32_is_killed(launcher, abi_probe: str) -> None:  # noqa: F811
    # Killed even where the kernel lacks x32 (it would say ENOSYS).
    result = _escape(launcher, abi_probe, "x32-netlink")
    assert "created" not in result.stdout
    assert result.returncode == KILLED_BY_SIGSYS


# ---------------------------------------------------------------- stacking


def test_both_filters_stacked_refuse_both_sets(launcher) -> None:
    both = answers(launcher, UNIX_BLOCK, HARDEN)
    assert both["socket-unix"] == "EPERM"  # unix-block's
    assert both["socket-netlink"] == "EPERM"  # harden's
    assert both["clone3"] == "ENOSYS"
    assert both["io_uring_setup"] == "EPERM"
    assert both["socket-inet"] == both["socket-inet6"] == both["socketpair-unix"] == "created"


def test_unix_block_alone_leaves_what_harden_refuses(launcher) -> None:
    alone = answers(launcher, UNIX_BLOCK)
    assert alone["socket-unix"] == "EPERM"
    assert alone["socket-netlink"] == "created"
    assert alone["unshare-newuser"] == "created"
    assert alone["clone3"] == "EINVAL"


@pytest.mark.parametrize(
    "options, filters",
    [((), 1), ((HARDEN,), 2), ((UNIX_BLOCK,), 2), ((UNIX_BLOCK, HARDEN), 3), ((HARDEN, UNIX_BLOCK), 3)],
    ids=["tty-only", "harden", "unix-block", "both", "both-reversed"],
)
def test_workload_runs_under_one_filter_per_option_plus_the_tty_one(launcher, options: tuple[str, ...], filters: int) -> None:
    assert seccomp_filter_count(launcher, *options) == filters


def test_pid1_runs_without_any_filter(launcher) -> None:
    result = launcher.run(HARDEN, UNIX_BLOCK, *SYSTEM, "--", "/bin/cat", "/proc/1/status")
    assert result.returncode == 0, result.stderr
    assert "\nSeccomp:\t0\n" in result.stdout


def test_flag_is_refused_on_32bit_x86(launcher) -> None:
    if MACHINE != "x86_64":
        pytest.skip("setarch i686 needs an x86-64 host")
    argv = ["setarch", "i686", *launcher.argv("run", HARDEN, *SYSTEM, "--", "/bin/true")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    assert result.returncode == 125
    assert result.stderr.startswith("srt-launcher: seccomp: i686: ")
    assert "socketcall" in result.stderr
