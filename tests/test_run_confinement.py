"""Confinement for services on `run` (SPEC §6): limits, timeout, status fd, namespaces, more mounts.

Each limit is checked on a real hostile workload, in real namespaces, as
root, as uid 65534 and as root with --unshare-user (the `launcher` fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

import peers
from conftest import SYSTEM, lingering, processes_with, wait_for_sleeper
from test_run_usage import NothingLeftBehind, assert_usage_error, unique

def run_with_status(launcher, *args: str, timeout: float = 60, **kwargs):  # type: ignore[no-untyped-def]
    """``run --json-status-fd FD ARGS``: (result, [records])."""
    read_end, write_end = os.pipe()
    try:
        result = launcher.run("--json-status-fd", str(write_end), *args, pass_fds=(write_end,), timeout=timeout, **kwargs)
    finally:
        os.close(write_end)
    with os.fdopen(read_end) as handle:
        text = handle.read()
    return result, [json.loads(line) for line in text.splitlines()]


def python(code: str) -> list[str]:
    return ["/usr/bin/python3", "-c", code]


# ---------------------------------------------------------------- rlimits


def test_address_space_limit_makes_a_memory_hog_fail_to_allocate(launcher):
    hog = "b = bytearray(512 << 20)\nprint('allocated')"
    result = launcher.run(*SYSTEM, "--rlimit", "as", "256M", "--", *python(hog))
    assert result.returncode == 1, result.stderr
    assert "MemoryError" in result.stderr
    assert "allocated" not in result.stdout
    control = launcher.run(*SYSTEM, "--", *python(hog))
    assert control.returncode == 0, control.stderr


@pytest.mark.parametrize("value", ["1", "1:2"], ids=["soft=hard", "soft<hard"])
def test_cpu_limit_kills_a_busy_loop_and_the_status_says_cpu(launcher, value):
    result, records = run_with_status(launcher, *SYSTEM, "--rlimit", "cpu", value, "--", *python("while True: pass"))
    end = records[-1]
    # soft = hard: SIGKILL at the hard limit; soft < hard: SIGXCPU at the soft one.
    expected = 9 if value == "1" else 24
    assert result.returncode == 128 + expected, result.stderr
    assert end["cause"] == "signaled" and end["signal"] == expected
    assert end.get("limit") == "cpu", end
    assert end["user-time"] + end["system-time"] >= 0.5


def test_file_size_limit_stops_a_writer_and_the_status_says_fsize(launcher):
    killed, records = run_with_status(
        launcher, *SYSTEM, "--tmpfs", "/tmp", "--rlimit", "fsize", "64K", "--",
        "/bin/dd", "if=/dev/zero", "of=/tmp/big", "bs=1M", "count=1",
    )
    end = records[-1]
    assert killed.returncode == 128 + 25, killed.stderr
    assert end["signal"] == 25 and end["limit"] == "fsize"


def test_file_size_limit_fails_a_write_that_ignores_sigxfsz(launcher):
    # Python ignores SIGXFSZ (the launcher restores the default for the
    # workload, but python3 ignores it again): the write fails with EFBIG.
    result = launcher.run(
        *SYSTEM, "--tmpfs", "/tmp", "--rlimit", "fsize", "64K", "--",
        *python("open('/tmp/big', 'wb').write(b'x' * 1000000)"),
    )
    assert result.returncode == 1 and "File too large" in result.stderr, result.stderr


def test_nofile_limit_bounds_open_files(launcher):
    opener = "import os\nfds = []\ntry:\n    while True: fds.append(os.open('/dev/null', 0))\nexcept OSError as e: print(len(fds) + 3, e.errno)"
    result = launcher.run(*SYSTEM, "--rlimit", "nofile", "32", "--", *python(opener))
    assert result.returncode == 0, result.stderr
    count, errno = result.stdout.split()
    assert int(count) <= 32 and errno == "24"


def test_nproc_limit_bounds_a_fork_bomb(launcher, marker):
    """The kernel exempts uid 0 of the initial user namespace from
    RLIMIT_NPROC (also when it is mapped into a new user namespace): for
    a root caller the limit is set, not enforced."""
    bomb = (
        "import os\n"
        "for _ in range(200):\n"
        "    try:\n"
        f"        if os.fork() == 0: os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "    except OSError: pass\n"
        f"os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
    )
    proc = launcher.popen(
        *SYSTEM, "--rlimit", "nproc", "20", "--timeout", "20", "--", *python(bomb),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        sleeper = wait_for_sleeper(marker)
        assert _limit(sleeper, "Max processes") == ["20", "20"]
        time.sleep(1)
        started = len(processes_with(marker))
        if launcher.unprivileged:
            # Counted per user across the whole system: the caller's other
            # processes count too, so the bound is the limit.
            assert started <= 20
        else:
            assert started > 20
    finally:
        proc.kill()
        proc.wait()
    assert lingering(marker) == [], "the fork bomb outlived the sandbox"


def test_core_limit_zero_leaves_no_core_file(launcher, shared_dir):
    crash = "import os, resource\nprint(resource.getrlimit(resource.RLIMIT_CORE))\nos.chdir(os.environ['DIR'])\nos.abort()"
    result = launcher.run(
        *SYSTEM, "--bind", str(shared_dir), str(shared_dir), "--setenv", "DIR", str(shared_dir),
        "--rlimit", "core", "0", "--", *python(crash),
    )
    assert result.returncode == 128 + 6
    assert result.stdout.strip() == "(0, 0)"
    assert not [name for name in os.listdir(shared_dir) if name.startswith("core")]


def test_limits_apply_to_the_workload_only(launcher, marker):
    proc = launcher.popen(
        *SYSTEM, "--rlimit", "nofile", "64", "--rlimit", "cpu", "7", "--", "/bin/sleep", marker,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        worker = wait_for_sleeper(marker)
        pid1 = _ppid(worker)
        assert _limit(worker, "Max open files") == ["64", "64"]
        assert _limit(worker, "Max cpu time") == ["7", "7"]
        for launcher_process in (pid1, proc.pid):
            assert _limit(launcher_process, "Max cpu time") == ["unlimited", "unlimited"]
            assert _limit(launcher_process, "Max open files") != ["64", "64"]
    finally:
        proc.kill()
        proc.wait()


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return int(next(line for line in handle if line.startswith("PPid:")).split()[1])


def _limit(pid: int, name: str) -> list[str]:
    with open(f"/proc/{pid}/limits") as handle:
        line = next(line for line in handle if line.startswith(name))
    return line[len(name) :].split()[:2]


def test_repeated_rlimit_the_last_wins(launcher):
    result = launcher.run(*SYSTEM, "--rlimit", "nofile", "100", "--rlimit", "nofile", "50:60", "--", "/bin/sh", "-c", "ulimit -Sn; ulimit -Hn")
    assert result.stdout.split() == ["50", "60"]


def test_unlimited_and_byte_suffixes(launcher):
    script = "import resource as r; print(r.getrlimit(r.RLIMIT_DATA), r.getrlimit(r.RLIMIT_STACK))"
    result = launcher.run(*SYSTEM, "--rlimit", "data", "1G:unlimited", "--rlimit", "stack", "8M", "--", *python(script))
    assert result.stdout.strip() == f"({1 << 30}, -1) ({8 << 20}, {8 << 20})", result.stderr


def test_soft_above_hard_is_a_setup_failure_naming_the_resource(launcher, marker):
    result = NothingLeftBehind(launcher, marker).run(*SYSTEM, "--rlimit", "nofile", "100:50", "--", "/bin/true")
    assert result.returncode == 125
    assert result.stderr.startswith("srt-launcher: rlimit: nofile: "), result.stderr


def test_raising_a_hard_limit_without_privilege_is_a_setup_failure(launcher):
    # The caller's own hard limit is lowered first. The workload has no
    # capability (CAP_SYS_RESOURCE included), so not even a root caller's
    # may raise it back.
    command = ["prlimit", "--nofile=256:256", *launcher.argv("run", *SYSTEM, "--rlimit", "nofile", "512", "--", "/bin/true")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    assert result.returncode == 125, result.stderr
    assert result.stderr == "srt-launcher: rlimit: nofile: raising a hard limit needs a privilege the workload does not have\n"


@pytest.mark.parametrize(
    "args,named",
    [
        (["--rlimit", "bogus", "1"], "bogus"),
        (["--rlimit", "nofile", "1K"], "1K"),
        (["--rlimit", "as", "12X"], "12X"),
        (["--rlimit", "cpu", "-1"], "-1"),
        (["--rlimit", "cpu", "1:"], "1:"),
        (["--rlimit", "cpu", "9" * 30], "9" * 30),
        (["--rlimit", "fsize", "99999999999T"], "99999999999T"),
        (["--rlimit", "nofile"], "--rlimit"),
    ],
)
def test_bad_rlimit_is_a_usage_error_naming_it(launcher, args, named):
    assert_usage_error(launcher.run(*SYSTEM, *args, "--", "/bin/true"), named)


# ---------------------------------------------------------------- timeout


def test_timeout_kills_the_sandbox_and_exits_124(launcher, marker):
    started = time.monotonic()
    result, records = run_with_status(launcher, *SYSTEM, "--timeout", "0.5", "--", "/bin/sleep", marker)
    elapsed = time.monotonic() - started
    assert result.returncode == 124, result.stderr
    assert 0.5 <= elapsed < 5
    assert records[-1]["cause"] == "timeout" and records[-1]["exit-code"] == 124
    assert 0.5 <= records[-1]["wall-time"] < 1.5
    assert lingering(marker) == []


def test_timeout_kills_background_children_and_a_process_ignoring_sigterm(launcher, marker):
    script = f"trap '' TERM; sleep {marker} & (trap '' TERM; setsid sleep {marker}) & sleep {marker}"
    result = launcher.run(*SYSTEM, "--timeout", "0.3", "--", "/bin/sh", "-c", script)
    assert result.returncode == 124
    assert lingering(marker) == []


def test_a_workload_that_finishes_first_keeps_its_status(launcher):
    result, records = run_with_status(launcher, *SYSTEM, "--timeout", "30", "--", "/bin/sh", "-c", "exit 3")
    assert result.returncode == 3
    assert records[-1]["cause"] == "exited" and records[-1]["exit-code"] == 3


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1e3", "", "nan", "inf", "1.5.2", "99999999999"])
def test_bad_timeout_is_a_usage_error(launcher, value):
    assert_usage_error(launcher.run(*SYSTEM, "--timeout", value, "--", "/bin/true"), "--timeout")


# ---------------------------------------------------------------- status fd


def test_status_records_for_a_normal_exit(launcher):
    result, records = run_with_status(launcher, *SYSTEM, "--", "/bin/sh", "-c", "exit 7")
    assert result.returncode == 7
    start, end = records
    assert set(start) == {"child-pid", "mnt-namespace", "pid-namespace"}
    assert start["child-pid"] > 1
    assert end["exit-code"] == 7 and end["cause"] == "exited"
    assert "signal" not in end and "limit" not in end and "error" not in end
    for key in ("wall-time", "user-time", "system-time", "max-rss-kb"):
        assert end[key] >= 0


def test_status_child_pid_is_the_workload_in_the_callers_pid_namespace(launcher, marker):
    read_end, write_end = os.pipe()
    proc = launcher.popen(
        "--json-status-fd", str(write_end), *SYSTEM, "--", "/bin/sleep", marker,
        pass_fds=(write_end,), stdout=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end) as handle:
            start = json.loads(handle.readline())
            assert start["child-pid"] == wait_for_sleeper(marker)
            for name in ("mnt", "pid"):
                assert start[f"{name}-namespace"] == os.stat(f"/proc/{start['child-pid']}/ns/{name}").st_ino
            proc.terminate()
            end = json.loads(handle.readline())
        assert end["cause"] == "signaled" and end["signal"] == 15 and end["exit-code"] == 143
    finally:
        proc.kill()
        proc.wait()


def test_status_names_the_extra_namespaces(launcher):
    result, records = run_with_status(
        launcher, *SYSTEM, "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup", "--", "/bin/true"
    )
    assert result.returncode == 0, result.stderr
    assert {"cgroup-namespace", "ipc-namespace", "mnt-namespace", "net-namespace", "pid-namespace", "uts-namespace"} <= set(records[0])


def test_status_for_a_signal(launcher):
    result, records = run_with_status(launcher, *SYSTEM, "--", "/bin/sh", "-c", "kill -USR1 $$")
    assert result.returncode == 128 + 10
    assert records[-1]["cause"] == "signaled" and records[-1]["signal"] == 10


@pytest.mark.parametrize("command,status", [(["/nonexistent-command"], 127), (["/etc/passwd"], 126)])
def test_status_for_an_exec_failure_is_an_error_record(launcher, command, status):
    result, records = run_with_status(launcher, *SYSTEM, "--", *command)
    assert result.returncode == status
    end = records[-1]
    assert "exit-code" not in end
    assert end["error"]["status"] == status and end["error"]["step"] == f"exec {command[0]}"


def test_status_for_a_setup_failure_is_an_error_record_without_a_start(launcher):
    result, records = run_with_status(launcher, *SYSTEM, "--ro-bind", "/nonexistent-src", "/x", "--", "/bin/true")
    assert result.returncode == 125
    (end,) = records
    assert end["error"] == {"step": "ro-bind source", "value": "/nonexistent-src", "message": "No such file or directory", "status": 125}


@pytest.mark.parametrize("status", [125, 126, 127])
def test_a_workload_exiting_125_to_127_itself_is_not_a_launcher_failure(launcher, status):
    result, records = run_with_status(launcher, *SYSTEM, "--", "/bin/sh", "-c", f"exit {status}")
    assert result.returncode == status and result.stderr == ""
    assert records[-1]["exit-code"] == status and "error" not in records[-1]


def test_the_workload_does_not_have_the_status_fd(launcher):
    result, _ = run_with_status(launcher, *SYSTEM, "--", "/bin/ls", "/proc/self/fd")
    assert sorted(result.stdout.split()) == ["0", "1", "2", "3"]  # 3: ls's own directory


def test_max_rss_counts_a_memory_hog(launcher):
    result, records = run_with_status(launcher, *SYSTEM, "--", *python("b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"))
    assert result.returncode == 0, result.stderr
    assert records[-1]["max-rss-kb"] >= 200 * 1024


@pytest.mark.parametrize("value", ["0", "1", "2", "-1", "x", "99999999999", "1023"])
def test_bad_status_fd_is_a_usage_error(launcher, value):
    assert_usage_error(launcher.run(*SYSTEM, "--json-status-fd", value, "--", "/bin/true"), "--json-status-fd")


# ---------------------------------------------------------------- namespaces


def test_ipc_namespace_is_new(launcher):
    result = launcher.run(*SYSTEM, "--unshare-ipc", "--", "readlink", "/proc/self/ns/ipc")
    assert result.stdout.strip() != os.readlink("/proc/self/ns/ipc")


def test_uts_namespace_with_a_hostname(launcher):
    result = launcher.run(*SYSTEM, "--unshare-uts", "--hostname", "sandbox-box", "--", "/bin/hostname")
    assert result.stdout == "sandbox-box\n", result.stderr
    assert os.uname().nodename != "sandbox-box"


def test_cgroup_namespace_is_new(launcher):
    result = launcher.run(*SYSTEM, "--unshare-cgroup", "--", "/bin/sh", "-c", "readlink /proc/self/ns/cgroup; cat /proc/self/cgroup")
    link, *cgroups = result.stdout.splitlines()
    assert link != os.readlink("/proc/self/ns/cgroup")
    assert all(line.endswith(":/") for line in cgroups), cgroups


def test_hostname_without_unshare_uts_is_a_usage_error(launcher):
    assert_usage_error(launcher.run(*SYSTEM, "--hostname", "x", "--", "/bin/true"), "--hostname")


# ---------------------------------------------------------------- mounts and environment


def test_dev_bind_keeps_devices_usable_where_bind_does_not(launcher, shared_dir):
    result = launcher.sh("echo ok > /mnt/null && echo written", *SYSTEM, "--dev-bind", "/dev", "/mnt")
    assert result.stdout == "written\n", result.stderr
    result = launcher.sh("echo ok > /mnt/null", *SYSTEM, "--bind", "/dev", "/mnt")
    assert result.returncode != 0 and "Permission denied" in result.stderr


@pytest.mark.parametrize("option", ["--bind-try", "--ro-bind-try", "--dev-bind-try"])
def test_try_binds_skip_a_missing_source(launcher, option):
    result = launcher.sh("test -e /mnt/x && echo present || echo absent", *SYSTEM, "--tmpfs", "/mnt", option, f"/nonexistent-{unique()}", "/mnt/x")
    assert result.stdout == "absent\n", result.stderr
    result = launcher.sh("test -e /mnt/x/hostname && echo present", *SYSTEM, "--tmpfs", "/mnt", option, "/etc", "/mnt/x")
    assert result.stdout == "present\n", result.stderr


def test_try_binds_still_fail_on_other_errors(launcher, shared_dir):
    blocker = shared_dir / "file"
    blocker.write_text("")
    result = launcher.run(*SYSTEM, "--bind-try", "/etc", f"{blocker}/sub", "--", "/bin/true")
    assert result.returncode == 125 and "Not a directory" in result.stderr


def test_dir_symlink_and_chdir(launcher):
    result = launcher.sh(
        "pwd; stat -c %a /mnt/deep; readlink /mnt/link; echo $PWD",
        *SYSTEM, "--tmpfs", "/mnt", "--dir", "/mnt/deep", "--symlink", "/mnt/deep", "/mnt/link", "--chdir", "/mnt/deep",
    )
    assert result.stdout.split() == ["/mnt/deep", "755", "/mnt/deep", "/mnt/deep"], result.stderr


def test_chdir_to_a_missing_directory_fails_naming_it(launcher, marker):
    result = NothingLeftBehind(launcher, marker).run(*SYSTEM, "--chdir", "/nonexistent-dir", "--", "/bin/true")
    assert result.returncode == 125
    assert result.stderr == "srt-launcher: chdir: /nonexistent-dir: No such file or directory\n"


def test_remount_ro_makes_a_mount_read_only(launcher):
    result = launcher.sh("touch /mnt/x && echo written", *SYSTEM, "--tmpfs", "/mnt", "--remount-ro", "/mnt")
    assert "Read-only file system" in result.stderr and "written" not in result.stdout


def test_remount_ro_of_a_path_that_is_not_a_mount_fails(launcher):
    result = launcher.run(*SYSTEM, "--tmpfs", "/mnt", "--dir", "/mnt/sub", "--remount-ro", "/mnt/sub", "--", "/bin/true")
    assert result.returncode == 125 and "not a mount point" in result.stderr


def test_environment_operations_apply_in_order(launcher):
    os.environ["SRT_TEST_KEEP"] = "kept"
    try:
        result = launcher.sh("env | sort", *SYSTEM, "--setenv", "A", "1", "--unsetenv", "SRT_TEST_KEEP", "--setenv", "B", "2")
        assert "A=1" in result.stdout and "B=2" in result.stdout and "SRT_TEST_KEEP" not in result.stdout
        result = launcher.run(*SYSTEM, "--setenv", "A", "1", "--clearenv", "--setenv", "B", "2", "--", "/usr/bin/env")
        assert sorted(result.stdout.split()) == ["B=2", "PWD=/"], result.stdout
    finally:
        del os.environ["SRT_TEST_KEEP"]


@pytest.mark.parametrize(
    "args,named",
    [
        (["--dir", "relative"], "relative"),
        (["--symlink", "", "/x"], "--symlink"),
        (["--symlink", "/t", "rel"], "rel"),
        (["--chdir", "rel"], "rel"),
        (["--unsetenv", "A=B"], "A=B"),
        (["--hostname", ""], "--hostname"),
        (["--remount-ro"], "--remount-ro"),
        (["--dev-bind", "/dev"], "--dev-bind"),
    ],
)
def test_bad_values_of_the_new_options_are_usage_errors(launcher, args, named):
    assert_usage_error(launcher.run(*SYSTEM, *args, "--", "/bin/true"), named)


# ---------------------------------------------------------------- caller-compiled seccomp programs


def _program_denying_mkdir() -> bytes:
    import pyseccomp

    policy = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    policy.add_rule(pyseccomp.ERRNO(1), "mkdir")
    policy.add_rule(pyseccomp.ERRNO(1), "mkdirat")
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as handle:
        policy.export_bpf(handle)
    with os.fdopen(read_end, "rb") as handle:
        return handle.read()


def _fd_holding(data: bytes) -> int:
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return read_end


@pytest.mark.parametrize("option", ["--seccomp", "--add-seccomp-fd"])
def test_seccomp_fd_installs_a_caller_compiled_program(launcher, option):
    fd = _fd_holding(_program_denying_mkdir())
    try:
        result = launcher.sh("mkdir /tmp/x && echo made", *SYSTEM, "--tmpfs", "/tmp", option, str(fd), pass_fds=(fd,))
    finally:
        os.close(fd)
    assert "Operation not permitted" in result.stderr and "made" not in result.stdout


def test_seccomp_fd_with_a_truncated_program_fails(launcher):
    fd = _fd_holding(b"\0" * 12)
    try:
        result = launcher.run(*SYSTEM, "--seccomp", str(fd), "--", "/bin/true", pass_fds=(fd,))
    finally:
        os.close(fd)
    assert result.returncode == 125 and "multiple of 8" in result.stderr


# ---------------------------------------------------------------- the README's service-style launch


def test_the_readme_ffprobe_launch_works_and_its_status_gives_the_verdict(launcher, shared_dir):
    upload = peers.make_video(shared_dir / "upload.mp4", size="64x64", audio=True)
    options = [
        "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup", "--clearenv",
        "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin",
        "--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache", "--ro-bind", "/etc/alternatives", "/etc/alternatives",
        "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--ro-bind", str(upload), "/input.mp4",
        "--rlimit", "as", "1G", "--rlimit", "cpu", "10", "--rlimit", "fsize", "1M", "--rlimit", "nofile", "64",
        "--rlimit", "nproc", "16", "--rlimit", "core", "0", "--seccomp-harden", "--timeout", "20",
    ]
    result, records = run_with_status(launcher, *options, "--", "/usr/bin/ffprobe", "-v", "error", "-show_format", "-of", "json", "/input.mp4")
    assert records[-1]["cause"] == "exited" and records[-1]["exit-code"] == 0, (records, result.stderr)
    assert json.loads(result.stdout)["format"]["nb_streams"] == 2
    upload.write_bytes(upload.read_bytes()[:300])  # truncated: ffprobe itself fails, and the record says so
    result, records = run_with_status(launcher, *options, "--", "/usr/bin/ffprobe", "-v", "error", "-show_format", "-of", "json", "/input.mp4")
    assert records[-1]["cause"] == "exited" and records[-1]["exit-code"] != 0
