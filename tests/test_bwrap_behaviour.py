"""The bubblewrap front end (SPEC §1, §7): invocation, options added after 0.8, status fds, processes.

Behaviour Debian's bubblewrap (0.8) shares is compared with it directly
(here, and in tests/test_bwrap_compare.py); options it lacks (--argv0,
--level-prefix, the overlay family, symlinks over existing ones) are checked
against what bubblewrap 0.11.1's source and manual say. Every test runs as
root and as uid 65534 (``host_launcher``), through a symlink named ``bwrap``
unless it is about another way in.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Launcher, kill_leftovers, lingering, processes_with, scratch_dir, sleep_marker, wait_for_sleeper

TIMEOUT = 60
SANDBOX = ("--ro-bind", "/", "/", "--dev", "/dev")
# A PATH every caller can search (the suite's own may name directories under /root).
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


@pytest.fixture
def bw(host_launcher: Launcher, bwrap_links) -> "Bwrap":  # type: ignore[no-untyped-def]
    return Bwrap(host_launcher, bwrap_links(host_launcher.argv_prefix[0]))


class Bwrap:
    """The front end, as one caller runs it."""

    def __init__(self, launcher: Launcher, path: str) -> None:
        self.launcher = launcher
        self.path = path

    def run(self, *args: str, program: str | None = None, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", TIMEOUT)
        kwargs.setdefault("env", ENV)
        return subprocess.run([program or self.path, *args], **self.launcher.process_kwargs(**kwargs))

    def popen(self, *args: str, program: str | None = None, **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        kwargs.setdefault("env", ENV)
        return subprocess.Popen([program or self.path, *args], **self.launcher.process_kwargs(**kwargs))


@pytest.fixture
def scratch(host_launcher: Launcher):  # type: ignore[no-untyped-def]
    """A directory the caller owns, world-searchable."""
    with scratch_dir(host_launcher, "srt-bwrap-test-") as path:
        yield path


def read_all(fd: int, timeout: float = TIMEOUT) -> bytes:
    """Everything until end of file (then closed); fails rather than hangs
    when the end does not come."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise AssertionError(f"no end of file within {timeout} s; read {data!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                return data
            data += chunk
    finally:
        os.close(fd)


# ---------------------------------------------------------------- invocation (SPEC §1)


def test_version_is_one_line_naming_bubblewrap_0_11_1(bw):
    result = bw.run("--version")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("bubblewrap 0.11.1 (srt-launcher ") and result.stdout.endswith(")\n")
    assert result.stdout.count("\n") == 1


def test_help_has_every_line_of_debians_help_in_order(bw, debian_bwrap):
    ours = bw.run("--help")
    theirs = bw.run("--help", program=debian_bwrap)
    assert ours.returncode == 0 and ours.stderr == ""
    assert ours.stdout.splitlines()[0] == f"usage: {bw.path} [OPTIONS...] [--] COMMAND [ARGS...]"
    ours_lines = iter(ours.stdout.splitlines()[1:])
    for line in theirs.stdout.splitlines()[1:]:
        assert line in ours_lines, f"{line!r} missing or out of order"


def test_help_has_the_options_bubblewrap_added_after_0_8(bw):
    lines = bw.run("--help").stdout.splitlines()
    for added in (
        "    --argv0 VALUE                Set argv[0] to the value VALUE before running the program",
        "    --level-prefix               Prepend e.g. <3> to diagnostic messages",
        "    --overlay-src SRC            Read files from SRC in the following overlay",
        "    --tmp-overlay DEST           Mount overlayfs on DEST, with writes going to an invisible tmpfs",
        "    --ro-overlay DEST            Mount overlayfs read-only on DEST",
    ):
        assert added in lines


@pytest.mark.parametrize("argv", [[], ["--ro-bind", "/", "/"]], ids=["no arguments", "no command"])
def test_usage_goes_to_stderr_with_status_1(bw, debian_bwrap, argv):
    ours, theirs = bw.run(*argv), bw.run(*argv, program=debian_bwrap)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (1, "")
    assert ours.stderr.startswith(f"usage: {bw.path} [OPTIONS...] [--] COMMAND [ARGS...]\n")
    assert "--disable-userns" in ours.stderr


def test_srt_launcher_bwrap_is_the_same_front_end(host_launcher):
    result = subprocess.run(
        [*host_launcher.argv_prefix, "bwrap", "--ro-bind", "/", "/", "sh", "-c", "echo $0", "--argv0"],
        capture_output=True, text=True, timeout=TIMEOUT, **host_launcher.process_kwargs(),
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "--argv0\n", "")
    usage = subprocess.run(
        [*host_launcher.argv_prefix, "bwrap"], capture_output=True, text=True, timeout=TIMEOUT, **host_launcher.process_kwargs()
    )
    assert usage.returncode == 1 and usage.stderr.startswith(f"usage: {host_launcher.argv_prefix[0]} bwrap [OPTIONS...]")


def test_a_file_named_srt_bwrap_is_the_front_end(host_launcher, scratch):
    link = scratch / "srt-bwrap"
    link.symlink_to(host_launcher.argv_prefix[0])
    result = subprocess.run([str(link), "--version"], capture_output=True, text=True, timeout=TIMEOUT, **host_launcher.process_kwargs())
    assert result.stdout.startswith("bubblewrap 0.11.1 ")


def test_argv0_variable_selects_srt_launcher_even_through_a_bwrap_name(bw):
    # SPEC §1: ARGV0=srt-launcher means "dispatch on argv[1]", whatever the file is called.
    result = bw.run("--help", env={**ENV, "ARGV0": "srt-launcher"})
    assert result.returncode == 0
    assert "relay" in result.stdout and "--bind SRC DEST" not in result.stdout


def test_the_bwrap_path_imports_no_click_pyroute2_or_pyseccomp(host_launcher):
    code = (
        "import sys; sys.argv[0] = 'bwrap'; from srt_launcher.commands import bwrap; "
        "status = bwrap.main(['--ro-bind', '/', '/', 'true']); "
        "print(' '.join(sorted(sys.modules))); sys.exit(status)"
    )
    result = subprocess.run([host_launcher.python, "-I", "-c", code], capture_output=True, text=True, timeout=TIMEOUT, **host_launcher.process_kwargs())
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert "srt_launcher.launch.stub" in loaded
    assert not loaded & {"click", "pyroute2", "pyseccomp"}


# ---------------------------------------------------------------- options added after 0.8 (0.11.1 source and manual)


def test_argv0_sets_the_commands_argv0(bw):
    result = bw.run(*SANDBOX, "--argv0", "my-name", "sh", "-c", 'echo "$0"; tr "\\0" " " </proc/self/cmdline')
    assert result.stdout.splitlines() == ["my-name", "my-name -c " + 'echo "$0"; tr "\\0" " " </proc/self/cmdline '], result.stderr


def test_argv0_twice_is_refused(bw):
    result = bw.run("--argv0", "a", "--argv0", "b", "true")
    assert (result.returncode, result.stderr) == (1, "bwrap: --argv0 used multiple times\n")


def test_level_prefix_prefixes_errors_with_3(bw):
    result = bw.run("--level-prefix", "--ro-bind", "/nonexistent", "/x", "true")
    assert (result.returncode, result.stderr) == (1, "<3>bwrap: Can't find source path /nonexistent: No such file or directory\n")


def test_level_prefix_prefixes_warnings_with_4_from_where_it_is(bw):
    result = bw.run("--chdir", "/", "--chdir", "/", "--level-prefix", "--chdir", "/", *SANDBOX, "true")
    assert result.returncode == 0
    assert result.stderr == (
        "bwrap: Only the last --chdir option will take effect\n<4>bwrap: Only the last --chdir option will take effect\n"
    )


def test_level_prefix_on_an_engine_failure(bw):
    result = bw.run("--level-prefix", *SANDBOX, "no-such-command")
    assert (result.returncode, result.stderr) == (1, "<3>bwrap: execvp no-such-command: No such file or directory\n")


@pytest.fixture
def layers(scratch: Path, host_launcher: Launcher) -> Path:
    for name, files in (("lower1", {"a": "l1"}), ("lower2", {"a": "l2", "b": "l2b"}), ("upper", {}), ("work", {})):
        (scratch / name).mkdir()
        for file, text in files.items():
            (scratch / name / file).write_text(text)
    for path in [scratch, *scratch.rglob("*")]:
        os.chown(path, host_launcher.uid, host_launcher.gid)
    return scratch


def test_tmp_overlay_writes_go_nowhere_and_the_last_source_is_on_top(bw, layers):
    result = bw.run(
        *SANDBOX, "--tmpfs", "/tmp", "--overlay-src", f"{layers}/lower1", "--overlay-src", f"{layers}/lower2",
        "--tmp-overlay", "/tmp/o", "sh", "-c", "cat /tmp/o/a /tmp/o/b; echo new > /tmp/o/c; cat /tmp/o/c",
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "l2l2bnew\n", "")
    assert sorted(p.name for p in layers.rglob("*")) == ["a", "a", "b", "lower1", "lower2", "upper", "work"]


def test_ro_overlay_is_read_only(bw, layers):
    result = bw.run(
        *SANDBOX, "--tmpfs", "/tmp", "--overlay-src", f"{layers}/lower1", "--overlay-src", f"{layers}/lower2",
        "--ro-overlay", "/tmp/o", "sh", "-c", "cat /tmp/o/a; echo new > /tmp/o/c",
    )
    assert result.returncode == 2 and result.stdout == "l2"
    assert "Read-only file system" in result.stderr


def test_overlay_writes_go_to_the_upper_directory(bw, layers):
    result = bw.run(
        *SANDBOX, "--tmpfs", "/tmp", "--overlay-src", f"{layers}/lower1", "--overlay",
        f"{layers}/upper", f"{layers}/work", "/tmp/o", "sh", "-c", "cat /tmp/o/a; echo new > /tmp/o/c",
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "l1", "")
    assert (layers / "upper" / "c").read_text() == "new\n"


def test_overlapping_overlay_directories_are_named_with_the_options(bw, layers):
    result = bw.run(*SANDBOX, "--tmpfs", "/tmp", "--overlay-src", f"{layers}/lower1", "--overlay", f"{layers}/lower1", f"{layers}/work", "/tmp/o", "true")
    assert result.returncode == 1
    assert result.stderr == (
        f"bwrap: Can't make overlay mount on /newroot/tmp/o with options upperdir=/oldroot{layers}/lower1,"
        f"workdir=/oldroot{layers}/work,lowerdir=/oldroot{layers}/lower1,userxattr: Overlay directories may not overlap\n"
    )


def test_overlay_source_missing_is_named(bw, layers):
    result = bw.run(*SANDBOX, "--overlay-src", f"{layers}/nonexistent", "--tmp-overlay", "/tmp/o", "true")
    assert (result.returncode, result.stderr) == (1, f"bwrap: Can't find source path {layers}/nonexistent: No such file or directory\n")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--overlay-src", "/etc", "true"], "--overlay-src must be followed by another --overlay-src or one of --overlay, --tmp-overlay, or --ro-overlay"),
        (["--tmp-overlay", "/x", "true"], "--tmp-overlay requires at least one --overlay-src"),
        (["--overlay-src", "/etc", "--ro-overlay", "/x", "true"], "--ro-overlay requires at least two --overlay-src"),
        (["--overlay-src", "/etc", "--overlay", "/a", "/b"], "--overlay takes three arguments"),
    ],
)
def test_overlay_usage_errors(bw, argv, message):
    result = bw.run(*argv)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"bwrap: {message}\n")


def test_a_symlink_already_there_with_the_same_target_is_fine(bw):
    result = bw.run(*SANDBOX, "--tmpfs", "/tmp", "--symlink", "a", "/tmp/l", "--symlink", "a", "/tmp/l", "readlink", "/tmp/l")
    assert (result.returncode, result.stdout) == (0, "a\n"), result.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tmpfs", "/tmp", "--symlink", "a", "/tmp/l", "--symlink", "b", "/tmp/l"], "Can't make symlink at /tmp/l: existing destination is a"),
        (["--symlink", "a", "/etc/passwd"], "Can't make symlink at /etc/passwd: destination exists and is not a symlink"),
    ],
)
def test_a_symlink_over_something_else_is_refused(bw, argv, message):
    result = bw.run(*SANDBOX, *argv, "true")
    assert (result.returncode, result.stderr) == (1, f"bwrap: {message}\n")


# ---------------------------------------------------------------- links planted in a sticky directory

ANOTHER_USER = 65533  # neither caller: a local user who can write /tmp, as anyone can


@pytest.fixture
def planted(scratch: Path, host_launcher: Launcher):  # type: ignore[no-untyped-def]
    """A file only the caller may change (``victim``, 0600), and a sticky,
    world-writable directory (a /tmp) where another user has planted a
    symlink to it, absolute (``absolute``) and relative (``relative``)."""
    victim = scratch / "victim"
    victim.write_text("SECRET\n")
    victim.chmod(0o600)
    os.chown(victim, host_launcher.uid, host_launcher.gid)
    sticky = scratch / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    for name, target in (("absolute", str(victim)), ("relative", "../victim")):
        (sticky / name).symlink_to(target)
        os.lchown(sticky / name, ANOTHER_USER, ANOTHER_USER)
    return scratch


@pytest.mark.parametrize("link", ["absolute", "relative"])
@pytest.mark.parametrize("operation", ["--file", "--chmod"])
def test_a_link_another_user_planted_in_a_sticky_directory_is_not_followed(bw, planted, operation, link):
    """fs.protected_symlinks, whatever the host's sysctl says (the kernel's
    default on most distributions): PID 1 (with every capability for a root
    caller) must not write or chmod, through another user's symlink in a
    /tmp, a file the caller never named. bubblewrap 0.11.1 refuses both
    (an absolute link resolves in its staging root; a relative one meets the
    sysctl), so a caller loses nothing it had."""
    path = planted / "sticky" / link
    data = os.open(planted / "data", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(data, b"pwned\n")
        os.lseek(data, 0, os.SEEK_SET)
        argv = ("--file", str(data), str(path)) if operation == "--file" else ("--chmod", "0666", str(path))
        result = bw.run("--bind", "/", "/", *argv, "true", pass_fds=(data,))
    finally:
        os.close(data)
    victim = planted / "victim"
    assert (victim.read_text(), victim.stat().st_mode & 0o7777) == ("SECRET\n", 0o600)
    what = f"Can't create file {path}" if operation == "--file" else f"Can't chmod 0666 {path}"
    assert (result.returncode, result.stderr) == (1, f"bwrap: {what}: Permission denied\n")


def test_a_link_in_a_directory_only_the_caller_writes_is_followed(bw, planted):
    (planted / "mine").symlink_to("victim")
    os.lchown(planted / "mine", bw.launcher.uid, bw.launcher.gid)
    result = bw.run("--bind", "/", "/", "--chmod", "0640", str(planted / "mine"), "true")
    assert result.returncode == 0, result.stderr
    assert (planted / "victim").stat().st_mode & 0o7777 == 0o640


def test_after_the_callers_uid_map_a_link_the_caller_owns_in_a_sticky_directory_is_followed(bw, planted):
    """With --userns-block-fd the caller writes the maps after the fork:
    PID 1, not the stub, must learn who it is (mount/target.py Follower),
    or the caller's own link in a /tmp would read as a stranger's."""
    sticky = planted / "sticky"
    (sticky / "mine").symlink_to("../victim")
    os.lchown(sticky / "mine", bw.launcher.uid, bw.launcher.gid)
    code, _, err = launch_with_the_callers_maps(bw, "--bind", "/", "/", "--chmod", "0640", str(sticky / "mine"), "true")
    assert code == 0, err
    assert (planted / "victim").stat().st_mode & 0o7777 == 0o640


# A classic-BPF program refusing uname(2) with EPERM on the native ABI, allowing the rest.
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_UNAME = {"x86_64": 63, "aarch64": 160}


def uname_refusing_program() -> bytes:
    import struct

    machine = os.uname().machine
    if machine not in _AUDIT_ARCH:
        pytest.skip(f"no test program for {machine}")
    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    allow, eperm = 0x7FFF0000, 0x00050000 | 1
    code = [
        (ld, 0, 0, 4), (jeq, 0, 3, _AUDIT_ARCH[machine]),  # seccomp_data.arch: another ABI is allowed
        (ld, 0, 0, 0), (jeq, 0, 1, _UNAME[machine]),  # seccomp_data.nr
        (ret, 0, 0, eperm), (ret, 0, 0, allow),
    ]
    return b"".join(struct.pack("HBBI", *instruction) for instruction in code)


@pytest.mark.parametrize("option", ["--seccomp", "--add-seccomp-fd"])
def test_a_callers_seccomp_program_is_installed_before_exec(bw, debian_bwrap, scratch, option):
    program = scratch / "filter.bpf"
    program.write_bytes(uname_refusing_program())
    results = []
    for binary in (debian_bwrap, bw.path):
        script = f'exec "$0" --ro-bind / / {option} 3 sh -c \'uname -s; echo $?\' 3<{program}'
        result = subprocess.run(["/bin/sh", "-c", script, binary], capture_output=True, text=True, timeout=TIMEOUT, env=ENV, **bw.launcher.process_kwargs())
        results.append((result.returncode, result.stdout, result.stderr))
    assert results[1] == results[0]
    assert results[1][1] == "1\n" and "Operation not permitted" in results[1][2]


# ---------------------------------------------------------------- status fds


def launch_with_status(bw: Bwrap, *argv: str) -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
    """Run with --info-fd and --json-status-fd on pipes; (result, info, json records)."""
    info_r, info_w = os.pipe()
    json_r, json_w = os.pipe()
    process = bw.popen("--info-fd", str(info_w), "--json-status-fd", str(json_w), *argv, pass_fds=(info_w, json_w), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(info_w)
    os.close(json_w)
    info, records = read_all(info_r), read_all(json_r)
    out, err = process.communicate(timeout=TIMEOUT)
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return result, (json.loads(info) if info else {}), [json.loads(line) for line in records.decode().splitlines()]


def test_status_records_name_pid_1_and_its_namespaces(bw):
    result, info, records = launch_with_status(bw, *SANDBOX, "--unshare-pid", "--unshare-net", "--unshare-uts", "--proc", "/proc", "sh", "-c", "readlink /proc/self/ns/mnt /proc/self/ns/pid /proc/self/ns/net /proc/self/ns/uts; exit 3")
    assert result.returncode == 3, result.stderr
    assert list(info) == ["child-pid", "mnt-namespace", "net-namespace", "pid-namespace", "uts-namespace"]
    assert records[0] == info and records[1:] == [{"exit-code": 3}]
    inside = [line.split(":[")[1].rstrip("]") for line in result.stdout.split()]
    assert [str(info[key]) for key in ("mnt-namespace", "pid-namespace", "net-namespace", "uts-namespace")] == inside


def test_child_pid_is_the_sandbox_pid_1_on_the_host(bw, marker):
    info_r, info_w = os.pipe()
    process = bw.popen(*SANDBOX, "--unshare-pid", "--info-fd", str(info_w), "sleep", marker, pass_fds=(info_w,))
    os.close(info_w)
    try:
        info = json.loads(read_all(info_r))
        sleeper = wait_for_sleeper(marker)
        with open(f"/proc/{sleeper}/stat") as handle:
            parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        assert parent == info["child-pid"]  # PID 1 (the reaper) is the command's parent
    finally:
        process.kill()
        process.wait()


def test_child_pid_without_a_pid_namespace_is_the_command(bw, marker):
    info_r, info_w = os.pipe()
    process = bw.popen(*SANDBOX, "--info-fd", str(info_w), "sleep", marker, pass_fds=(info_w,))
    os.close(info_w)
    try:
        assert json.loads(read_all(info_r))["child-pid"] == wait_for_sleeper(marker)
    finally:
        kill_leftovers(marker)
        process.wait()


def test_no_end_record_when_the_command_never_ran(bw):
    result, info, records = launch_with_status(bw, *SANDBOX, "--unshare-pid", "no-such-command")
    assert result.returncode == 1 and result.stderr == "bwrap: execvp no-such-command: No such file or directory\n"
    assert records == [info] and "child-pid" in info


def test_a_setup_failure_before_any_process_writes_no_record(bw):
    # bubblewrap resolves sources in its child and so writes child-pid first;
    # here they are resolved before anything is forked (docs/bwrap.md).
    result, info, records = launch_with_status(bw, *SANDBOX, "--unshare-pid", "--ro-bind", "/nonexistent", "/x", "true")
    assert (result.returncode, result.stderr) == (1, "bwrap: Can't find source path /nonexistent: No such file or directory\n")
    assert (info, records) == ({}, [])


def launch_with_the_callers_maps(bw, *args: str, program: str | None = None) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    """An --unshare-user launch as uid 0 in it, whose maps the caller
    writes (0 -> its own uid) once the info document has ended, then lets
    it go on through --userns-block-fd: (status, stdout, stderr).

    An info fd still open in PID 1 would keep the document from ending: the caller would wait forever.
    """
    outer_uid = bw.launcher.uid
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    process = bw.popen(
        "--unshare-user", "--info-fd", str(info_w), "--userns-block-fd", str(block_r), "--uid", "0", "--gid", "0", *args,
        program=program, pass_fds=(info_w, block_r), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    os.close(info_w)
    os.close(block_r)
    try:
        pid = json.loads(read_all(info_r, timeout=10))["child-pid"]
        for name, text in (("uid_map", f"0 {outer_uid} 1\n"), ("setgroups", "deny\n"), ("gid_map", f"0 {outer_uid} 1\n")):
            with open(f"/proc/{pid}/{name}", "w") as handle:
                handle.write(text)
        os.write(block_w, b"x")
        out, err = process.communicate(timeout=TIMEOUT)
        return process.returncode, out, err
    finally:
        os.close(block_w)
        if process.poll() is None:
            process.kill()
            process.wait()


def test_userns_block_fd_waits_for_the_callers_uid_map(bw, debian_bwrap):
    """The caller reads the info document to its end, writes the maps, then lets the sandbox go on."""
    argv = ("--ro-bind", "/", "/", "sh", "-c", "id -u; id -g; cat /proc/self/uid_map")
    expected = f"0\n0\n         0 {bw.launcher.uid:10d}          1\n"
    assert launch_with_the_callers_maps(bw, *argv)[:2] == launch_with_the_callers_maps(bw, *argv, program=debian_bwrap)[:2] == (0, expected)


def test_sync_fd_ends_when_the_sandbox_does(bw, marker):
    sync_r, sync_w = os.pipe()
    process = bw.popen(*SANDBOX, "--unshare-pid", "--sync-fd", str(sync_w), "sh", "-c", f"sleep {marker} & sleep 0.5; kill $!", pass_fds=(sync_w,))
    os.close(sync_w)
    try:
        wait_for_sleeper(marker)
        os.set_blocking(sync_r, False)
        with pytest.raises(BlockingIOError):
            os.read(sync_r, 1)  # held open while the sandbox lives
        os.set_blocking(sync_r, True)
        assert os.read(sync_r, 1) == b""  # and closed when it ends
    finally:
        os.close(sync_r)
        process.wait(timeout=TIMEOUT)


def test_lock_file_is_held_while_the_sandbox_runs(bw, scratch, marker):
    lock = scratch / "lock"
    lock.write_text("")
    os.chown(lock, bw.launcher.uid, bw.launcher.gid)
    process = bw.popen(*SANDBOX, "--bind", str(scratch), str(scratch), "--lock-file", str(lock), "sleep", marker)
    try:
        sleeper = wait_for_sleeper(marker)
        with open(lock, "r+") as handle:
            with pytest.raises(BlockingIOError):
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # someone holds a read lock
        os.kill(sleeper, signal.SIGKILL)  # the command ends, and with it the sandbox
        process.wait(timeout=TIMEOUT)
    finally:
        kill_leftovers(marker)
    with open(lock, "r+") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the sandbox


def test_block_fd_holds_the_command_until_data_arrives(bw, scratch):
    block_r, block_w = os.pipe()
    flag = scratch / "ran"
    process = bw.popen(*SANDBOX, "--bind", str(scratch), str(scratch), "--block-fd", str(block_r), "touch", str(flag), pass_fds=(block_r,))
    os.close(block_r)
    time.sleep(0.5)
    assert not flag.exists() and process.poll() is None
    os.write(block_w, b"x")
    os.close(block_w)
    assert process.wait(timeout=TIMEOUT) == 0 and flag.exists()


# ---------------------------------------------------------------- signals and lifetime


@pytest.mark.parametrize("options", [(), ("--unshare-pid",), ("--unshare-pid", "--as-pid-1")], ids=["no pid namespace", "pid namespace", "as-pid-1"])
@pytest.mark.parametrize("die_with_parent", [False, True], ids=["", "die-with-parent"])
def test_sigterm_kills_the_front_end_not_the_sandbox_unless_die_with_parent(bw, debian_bwrap, options, die_with_parent):
    """As bubblewrap: no signal is passed on; --die-with-parent takes the sandbox down with it."""
    outcomes = []
    for program in (debian_bwrap, bw.path):
        marker = sleep_marker()
        extra = ("--die-with-parent",) if die_with_parent else ()
        process = bw.popen(*SANDBOX, *options, *extra, "sleep", marker, program=program, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_sleeper(marker)
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=TIMEOUT)
            survives = bool(lingering(marker, timeout=1.0 if not die_with_parent else 10.0))
            outcomes.append((status, survives))
        finally:
            kill_leftovers(marker)
    assert outcomes[1] == outcomes[0] == (-signal.SIGTERM, not die_with_parent)


@pytest.mark.parametrize("die_with_parent", [False, True], ids=["", "die-with-parent"])
def test_the_launch_ends_with_the_command_and_pid_1_stays_for_the_rest(bw, debian_bwrap, die_with_parent):
    """bubblewrap's PID 1 reports the command's exit at once and goes on
    reaping while anything it adopted lives; --die-with-parent ends it with
    the launch."""
    outcomes = []
    for program in (debian_bwrap, bw.path):
        marker = sleep_marker()
        sync_r, sync_w = os.pipe()
        extra = ("--die-with-parent",) if die_with_parent else ()
        try:
            result = bw.run(
                *SANDBOX, "--unshare-pid", "--sync-fd", str(sync_w), *extra, "sh", "-c", f"sleep {marker} >/dev/null 2>&1 & exit 3",
                program=program, pass_fds=(sync_w,), capture_output=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            os.close(sync_w)
            sleeping = bool(lingering(marker, timeout=0.5)) if not die_with_parent else bool(lingering(marker))
            os.set_blocking(sync_r, False)
            try:
                sync_open = os.read(sync_r, 1) != b""
            except BlockingIOError:
                sync_open = True  # PID 1 still holds the sync fd
            for pid in processes_with(marker):
                with open(f"/proc/{pid}/comm") as handle:
                    if handle.read().strip() == "sleep":
                        os.kill(pid, signal.SIGKILL)
            os.set_blocking(sync_r, True)
            assert os.read(sync_r, 1) == b""  # ...until the last process is gone
            outcomes.append((result.returncode, sleeping, sync_open))
        finally:
            os.close(sync_r)
            kill_leftovers(marker)
    assert outcomes[1] == outcomes[0] == (3, not die_with_parent, not die_with_parent)


def test_interrupt_kills_the_front_end_without_a_traceback(bw, scratch, marker):
    errors = scratch / "stderr"
    with open(errors, "w") as stderr:
        process = bw.popen(*SANDBOX, "sleep", marker, stderr=stderr)
    try:
        wait_for_sleeper(marker)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=TIMEOUT) == -signal.SIGINT
        assert errors.read_text() == ""
    finally:
        kill_leftovers(marker)


def test_the_command_gets_the_callers_signal_mask_and_dispositions(bw, debian_bwrap):
    # Python's own SIGINT handler, SIG_IGN of SIGPIPE and SIGXFSZ, the
    # launcher's blocked SIGCHLD: none of it reaches the command.
    for options in ((), ("--unshare-pid",)):
        argv = [*SANDBOX, *options, "grep", "-E", "^Sig(Blk|Ign|Cgt)", "/proc/self/status"]
        ours, theirs = bw.run(*argv), bw.run(*argv, program=debian_bwrap)
        assert ours.stdout == theirs.stdout and ours.returncode == 0, ours.stderr


# ---------------------------------------------------------------- errors leave nothing behind


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ro-bind", "/nonexistent", "/x"], "Can't find source path /nonexistent: No such file or directory"),
        (["--size", "1k", "--tmpfs", "/tmp"], "--size takes a non-zero number of bytes"),
        (["--perms", "0700", "--perms", "0700", "--tmpfs", "/tmp"], "--perms given twice for the same action"),
        (["--hostname", "h"], "Specifying --hostname requires --unshare-uts"),
        (["--bogus"], "Unknown option --bogus"),
        (["--args", "99"], "Can't read --args data: Bad file descriptor"),
        (["--args", "x"], "Invalid fd: x"),
        (["--unshare-pid", "--proc", "/proc", "--chdir", "/nonexistent"], "Can't chdir to /nonexistent: No such file or directory"),
        (["--unshare-pid", "--tmpfs", "/etc/passwd"], "Can't mkdir /etc/passwd: Not a directory"),
        (["--ro-bind", "/etc/passwd", "/usr"], "Can't create file at /usr: Is a directory"),
    ],
)
def test_bad_input_fails_with_bubblewraps_message_and_leaves_nothing(bw, scratch, argv, message):
    marker = sleep_marker()
    flag = scratch / "ran"
    result = bw.run(*SANDBOX, "--bind", str(scratch), str(scratch), *argv, "sh", "-c", f"touch {flag}; sleep {marker}")
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"bwrap: {message}\n")
    assert not flag.exists()
    assert not processes_with(marker)


# The numbers the launcher's own descriptors get in a caller with only 0, 1 and 2 open, and a few more.
UNOPENED = range(3, 9)


@pytest.mark.parametrize(
    "option, status, message",
    [
        ("--block-fd", 0, None),  # bubblewrap: the read fails, the launch goes on
        ("--file", 1, "Can't write data to file /tmp/x: Bad file descriptor"),
        ("--bind-data", 1, "Can't write data to file /tmp/x: Bad file descriptor"),
        ("--info-fd", 1, "Write to info_fd: Bad file descriptor"),
        ("--json-status-fd", 1, "Write to info_fd: Bad file descriptor"),
    ],
)
def test_a_descriptor_the_caller_never_opened_is_not_one_of_the_launchers(bw, option, status, message):
    """A number the caller names but has not open may be the one the
    launcher gives its own descriptors (PID 1's end of the record channel,
    the pipe that tells PID 1 the stub died): PID 1 then read its own
    channel for --block-fd or --file (a launch that hangs for ever), or the
    stub wrote the status records into it. The caller's number must stay
    closed: bad input, one line, or bubblewrap's carrying on."""
    for fd in UNOPENED:
        argv = [option, str(fd), "/tmp/x"] if option in ("--file", "--bind-data") else [option, str(fd)]
        proc = bw.popen(
            "--die-with-parent", "--unshare-pid", *SANDBOX, "--tmpfs", "/tmp", *argv, "echo", "ran",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"{option} {fd}: the launch hangs") from None
        if message is None:
            assert (proc.returncode, out, err) == (status, "ran\n", ""), (fd, err)
        else:
            assert (proc.returncode, err) == (status, f"bwrap: {message}\n"), (fd, out)


def test_an_unreadable_block_fd_holds_nothing_up_and_never_reaches_the_workload(bw, debian_bwrap):
    """--block-fd naming a pipe's write end: the read fails at once, the
    launch goes on (bubblewrap's behaviour), and the descriptor is closed
    all the same, not handed to the workload."""
    read_end, write_end = os.pipe()
    try:
        argv = ("--unshare-pid", *SANDBOX, "--proc", "/proc", "--block-fd", str(write_end), "sh", "-c", f"test -e /proc/self/fd/{write_end} && echo open || echo closed")
        ours = bw.run(*argv, pass_fds=(write_end,))
        theirs = bw.run(*argv, program=debian_bwrap, pass_fds=(write_end,))
    finally:
        os.close(read_end)
        os.close(write_end)
    assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr) == (0, "closed\n", "")


def test_a_reaper_outside_any_pid_namespace_kills_nothing_it_did_not_make(bw, debian_bwrap):
    """--sync-fd/--lock-file without --unshare-pid: a reaper that is not PID 1.

    kill(-1) from it would reach every process of the caller's uid: run in
    a PID namespace of its own (made by Debian's bubblewrap) so that a wrong
    kill(-1) could only hit the test's own processes, and look.
    """
    script = (
        f"sleep 1000 & S=$!; {bw.path} --ro-bind / / --lock-file /etc/passwd --json-status-fd 3 true 3>/dev/null; "
        "echo rc=$?; sleep 0.2; kill -0 $S && echo bystander-alive; kill $S"
    )
    result = bw.run(
        "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--die-with-parent", "bash", "-c", script,
        program=debian_bwrap,
    )
    assert result.stdout == "rc=0\nbystander-alive\n", result.stderr


# ---------------------------------------------------------------- namespaces joined: --userns, --pidns


@pytest.fixture
def namespace_holder(host_launcher: Launcher):  # type: ignore[no-untyped-def]
    """A process with its own user and PID namespaces (uid 0 inside), made by
    Debian's bubblewrap; yields its host pid, inside whose namespaces to launch."""
    marker = sleep_marker()
    process = subprocess.Popen(
        [shutil.which("unshare"), "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "sleep", marker],
        **host_launcher.process_kwargs(),
    )
    try:
        yield wait_for_sleeper(marker)
    finally:
        kill_leftovers(marker)
        process.wait(timeout=TIMEOUT)


def compare_in(bw: Bwrap, debian_bwrap: str, holder: int, options: list[str], command: str) -> subprocess.CompletedProcess:
    """The same launch inside the holder's namespaces (fd 3: its user
    namespace, fd 4: its PID namespace) through Debian's bubblewrap and ours."""
    results = []
    for program in (debian_bwrap, bw.path):
        script = f'exec "$0" {" ".join(options)} sh -c {command!r} 3</proc/{holder}/ns/user 4</proc/{holder}/ns/pid'
        result = subprocess.run(["/bin/sh", "-c", script, program], capture_output=True, text=True, timeout=TIMEOUT, env=ENV, **bw.launcher.process_kwargs())
        results.append((result.returncode, result.stdout, result.stderr.replace(program, "BWRAP"), result))
    (theirs, ours) = results
    assert ours[:3] == theirs[:3]
    return ours[3]


def test_userns_joins_a_user_namespace(bw, debian_bwrap, namespace_holder):
    result = compare_in(bw, debian_bwrap, namespace_holder, ["--userns", "3", "--ro-bind", "/", "/"], "id -u; cat /proc/self/uid_map")
    assert result.stdout.split()[:3] == ["0", "0", str(bw.launcher.uid)]


def test_userns_with_an_unmapped_uid_fails(bw, debian_bwrap, namespace_holder):
    result = compare_in(bw, debian_bwrap, namespace_holder, ["--userns", "3", "--uid", "5", "--ro-bind", "/", "/"], "id -u")
    assert result.stderr == "bwrap: unable to switch to uid 5: Invalid argument\n"


@pytest.fixture
def nested_user_namespaces(host_launcher: Launcher):  # type: ignore[no-untyped-def]
    """(a process in a user namespace of its own, one in a user namespace made inside that one)."""
    marker = sleep_marker()
    unshare = shutil.which("unshare")
    process = subprocess.Popen(
        [unshare, "--user", "--map-root-user", "/bin/sh", "-c", f"{unshare} --user --map-root-user sleep {marker} & wait"],
        **host_launcher.process_kwargs(),
    )
    try:
        yield process.pid, wait_for_sleeper(marker)
    finally:
        kill_leftovers(marker)
        process.wait(timeout=TIMEOUT)


def test_userns2_enters_a_namespace_inside_the_joined_one_after_the_setup(bw, debian_bwrap, nested_user_namespaces):
    outer, inner = nested_user_namespaces
    results = []
    for program in (debian_bwrap, bw.path):
        script = f'exec "$0" --userns 3 --userns2 4 --ro-bind / / sh -c "readlink /proc/self/ns/user; id -u" 3</proc/{outer}/ns/user 4</proc/{inner}/ns/user'
        result = subprocess.run(["/bin/sh", "-c", script, program], capture_output=True, text=True, timeout=TIMEOUT, env=ENV, **bw.launcher.process_kwargs())
        results.append((result.returncode, result.stdout, result.stderr))
    assert results[1] == results[0] == (0, os.readlink(f"/proc/{inner}/ns/user") + "\n0\n", "")


def test_pidns_joins_a_pid_namespace_with_its_own_proc(bw, debian_bwrap, namespace_holder):
    # The joined namespace's PID 1 is the holder's sleep; pids are handed out
    # in turn in it, so the two launches' own pids differ.
    result = compare_in(
        bw, debian_bwrap, namespace_holder, ["--userns", "3", "--pidns", "4", "--ro-bind", "/", "/", "--proc", "/proc"],
        'test $$ != 1 && cat /proc/1/cmdline | tr "\\0" " "',
    )
    assert result.stdout.startswith("sleep 99999.")


def test_pidns_with_unshare_pid_makes_a_namespace_inside_the_joined_one(bw, debian_bwrap, namespace_holder):
    result = compare_in(
        bw, debian_bwrap, namespace_holder,
        ["--userns", "3", "--pidns", "4", "--unshare-pid", "--ro-bind", "/", "/", "--proc", "/proc"],
        'echo $$; cat /proc/[0-9]*/cmdline | tr "\\0" " " | grep -c "slee[p] 99999" || true',
    )
    assert result.stdout == "2\n0\n"  # under a reaper, and the joined namespace's sleep out of sight


def test_pidns_with_unshare_pid_status_names_the_inner_pid_1(bw, namespace_holder):
    script = (
        f'exec "$0" --userns 3 --pidns 4 --unshare-pid --ro-bind / / --info-fd 5 '
        f'sh -c "readlink /proc/self/ns/pid; sleep 1" 3</proc/{namespace_holder}/ns/user 4</proc/{namespace_holder}/ns/pid 5>&2'
    )
    process = subprocess.Popen(["/bin/sh", "-c", script, bw.path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **bw.launcher.process_kwargs())
    info = json.loads(_read_json_document(process.stderr))
    inner_pid_ns = os.readlink(f"/proc/{info['child-pid']}/ns/pid")
    out, _ = process.communicate(timeout=TIMEOUT)
    assert out.strip() == inner_pid_ns == f"pid:[{info['pid-namespace']}]"
    assert inner_pid_ns != os.readlink(f"/proc/{namespace_holder}/ns/pid")


def _read_json_document(stream) -> str:  # type: ignore[no-untyped-def]
    lines = []
    for line in stream:
        lines.append(line)
        if line == "}\n":
            return "".join(lines)
    raise AssertionError(f"no info document: {lines!r}")
