"""SPEC §2.4: the sandbox's filesystem, built from mount ops in argv order."""

from __future__ import annotations

import os
import pty
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import SYSTEM


def python_inside(launcher, code: str, *options: str, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return launcher.run(*(options or SYSTEM), "--", "/usr/bin/python3", "-c", code, **kwargs)


def mount_options_inside(launcher, path: str, *options: str) -> str:  # type: ignore[no-untyped-def]
    """Per-mount options of the topmost mount at ``path`` as the sandbox sees it."""
    code = (
        "import sys\n"
        "opts = [l.split()[5] for l in open('/proc/self/mountinfo') if l.split()[4] == sys.argv[1]]\n"
        "print(opts[-1] if opts else 'NOT-A-MOUNT')\n"
    )
    result = launcher.run(*(options or SYSTEM), "--", "/usr/bin/python3", "-c", code, path)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def host_mount():  # type: ignore[no-untyped-def]
    """Mount a filesystem on the host for the duration of a test, then remove it."""
    mounted: list[str] = []

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True)
        mounted.append(args[-1])

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", path], check=False)


# ---------------------------------------------------------------- read-only and writable binds


def test_ro_bind_root_is_read_only(launcher):
    result = launcher.sh("touch /etc/srt-launcher-probe")
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr
    assert not os.path.exists("/etc/srt-launcher-probe")


def test_ro_bind_makes_every_submount_read_only(launcher, host_mount):
    submount = tempfile.mkdtemp(prefix="srt-launcher-submount-", dir="/tmp")
    try:
        host_mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", submount)
        result = launcher.sh(f"touch {submount}/probe")
        assert result.returncode != 0
        assert "Read-only file system" in result.stderr
        assert not os.path.exists(f"{submount}/probe")
    finally:
        subprocess.run(["umount", "-l", submount], check=False)
        os.rmdir(submount)


def test_bind_is_writable_and_writes_reach_the_host(launcher, shared_dir):
    result = launcher.sh(f"echo written > {shared_dir}/file", *SYSTEM, "--bind", str(shared_dir), str(shared_dir))
    assert result.returncode == 0, result.stderr
    assert (shared_dir / "file").read_text() == "written\n"


def test_read_only_submount_stays_read_only_under_a_writable_bind(launcher, shared_dir, host_mount):
    sub = shared_dir / "sub"
    sub.mkdir(mode=0o777)
    host_mount("-t", "tmpfs", "-o", "ro,mode=1777", "tmpfs", str(sub))
    options = (*SYSTEM, "--bind", str(shared_dir), str(shared_dir))
    assert launcher.sh(f"touch {shared_dir}/writable", *options).returncode == 0
    result = launcher.sh(f"touch {sub}/probe", *options)
    assert "Read-only file system" in result.stderr


def test_later_bind_layers_a_writable_directory_over_a_read_only_root(launcher, shared_dir):
    options = (*SYSTEM, "--bind", str(shared_dir), str(shared_dir))
    result = launcher.sh(f"touch {shared_dir}/ok && touch /etc/srt-launcher-probe", *options)
    assert (shared_dir / "ok").exists()
    assert "Read-only file system" in result.stderr


def test_later_ro_bind_makes_part_of_a_writable_bind_read_only(launcher, shared_dir):
    (shared_dir / "locked").mkdir()
    options = (
        *SYSTEM,
        "--bind", str(shared_dir), str(shared_dir),
        "--ro-bind", str(shared_dir / "locked"), str(shared_dir / "locked"),
    )
    result = launcher.sh(f"touch {shared_dir}/open && touch {shared_dir}/locked/probe", *options)
    assert (shared_dir / "open").exists()
    assert "Read-only file system" in result.stderr
    assert not (shared_dir / "locked" / "probe").exists()


def test_ro_bind_of_a_single_file(launcher, shared_dir):
    source = shared_dir / "config"
    source.write_text("value\n")
    source.chmod(0o666)
    result = launcher.sh(
        "cat /mnt/config; echo x >> /mnt/config", *SYSTEM, "--tmpfs", "/mnt", "--ro-bind", str(source), "/mnt/config"
    )
    assert result.stdout == "value\n"
    assert "Read-only file system" in result.stderr
    assert source.read_text() == "value\n"


def test_bind_source_symlinks_are_resolved_on_the_host(launcher, shared_dir):
    (shared_dir / "real").mkdir()
    (shared_dir / "real" / "inside").write_text("through the link\n")
    (shared_dir / "link").symlink_to(shared_dir / "real")
    result = launcher.sh("cat /mnt/srt-link/inside", *SYSTEM, "--tmpfs", "/mnt", "--ro-bind", str(shared_dir / "link"), "/mnt/srt-link")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "through the link\n"


def test_paths_the_kernel_escapes_in_mountinfo_are_remounted(launcher, shared_dir):
    odd = shared_dir / "a b\tc\\d"
    odd.mkdir()
    (odd / "f").write_text("odd\n")
    result = launcher.sh(
        "cat '/mnt/x y/f' && touch '/mnt/x y/g'", *SYSTEM, "--tmpfs", "/mnt", "--ro-bind", str(odd), "/mnt/x y"
    )
    assert result.stdout == "odd\n", result.stderr
    assert "Read-only file system" in result.stderr


# ---------------------------------------------------------------- nosuid / nodev


def test_binds_are_nosuid_and_nodev(launcher, shared_dir):
    options = (*SYSTEM, "--bind", str(shared_dir), str(shared_dir))
    flags = mount_options_inside(launcher, str(shared_dir), *options).split(",")
    assert "nosuid" in flags and "nodev" in flags and "rw" in flags


def test_ro_bind_submounts_are_nosuid_and_nodev(launcher):
    # /sys is a separate mount under the host's root, copied by --ro-bind / /.
    flags = mount_options_inside(launcher, "/sys", "--ro-bind", "/", "/").split(",")
    assert {"ro", "nosuid", "nodev"} <= set(flags)


def test_device_node_on_a_bind_cannot_be_opened(launcher, shared_dir):
    node = shared_dir / "null-node"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    options = (*SYSTEM, "--bind", str(shared_dir), str(shared_dir))
    result = launcher.sh(f"echo x > {node}", *options)
    assert result.returncode != 0
    assert "Permission denied" in result.stderr


# ---------------------------------------------------------------- tmpfs and layering


def test_tmpfs_is_fresh_writable_and_mode_0755(launcher):
    result = launcher.sh("stat -c %a /tmp && ls -A /tmp && touch /tmp/new && echo ok", *SYSTEM, "--tmpfs", "/tmp")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["755", "ok"]


def test_tmpfs_hides_what_an_earlier_op_put_there(launcher, shared_dir):
    (shared_dir / "secret").write_text("hidden\n")
    result = launcher.sh(f"ls -A {shared_dir}", *SYSTEM, "--tmpfs", str(shared_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_tmpfs_writes_do_not_reach_the_host(launcher, shared_dir):
    result = launcher.sh(f"echo x > {shared_dir}/scratch", *SYSTEM, "--tmpfs", str(shared_dir))
    assert result.returncode == 0, result.stderr
    assert not (shared_dir / "scratch").exists()


def test_tmpfs_is_nosuid_and_nodev(launcher):
    flags = mount_options_inside(launcher, "/tmp", *SYSTEM, "--tmpfs", "/tmp").split(",")
    assert "nosuid" in flags and "nodev" in flags


# ---------------------------------------------------------------- mount points


def test_missing_directory_target_is_created_with_its_parents(launcher, shared_dir):
    (shared_dir / "data").write_text("x")
    result = launcher.sh("ls /mnt/a/b/c", *SYSTEM, "--tmpfs", "/mnt", "--ro-bind", str(shared_dir), "/mnt/a/b/c")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["data"]


def test_missing_file_target_is_created_as_a_file(launcher, shared_dir):
    (shared_dir / "one").write_text("content\n")
    result = launcher.sh(
        "test -f /mnt/deep/one && cat /mnt/deep/one", *SYSTEM, "--tmpfs", "/mnt", "--ro-bind", str(shared_dir / "one"), "/mnt/deep/one"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "content\n"


def test_existing_target_is_left_untouched_on_the_host(launcher, shared_dir):
    target = shared_dir / "existing"
    target.write_text("original\n")
    target.chmod(0o640)
    os.chown(target, launcher.uid, launcher.gid)
    (shared_dir / "other").write_text("other\n")
    options = (*SYSTEM, "--bind", str(shared_dir), str(shared_dir), "--ro-bind", str(shared_dir / "other"), str(target))
    result = launcher.sh(f"cat {target}", *options)
    assert result.stdout == "other\n", result.stderr
    assert target.read_text() == "original\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_no_op_leaves_an_empty_root(launcher):
    result = launcher.run("--", "/bin/true")
    assert result.returncode == 127
    assert result.stderr == "srt-launcher: exec /bin/true: No such file or directory\n"


def test_staging_directories_are_gone_after_the_pivot(launcher):
    result = launcher.sh("cat /proc/self/mountinfo; ls -A /")
    assert result.returncode == 0, result.stderr
    assert "oldroot" not in result.stdout and "newroot" not in result.stdout


def test_mounts_inside_do_not_propagate_to_the_host(launcher, shared_dir):
    with open("/proc/self/mountinfo") as handle:
        before = handle.read()
    ready = shared_dir / "ready"
    proc = launcher.popen(
        *SYSTEM, "--bind", str(shared_dir), str(shared_dir), "--tmpfs", "/mnt",
        "--", "/bin/sh", "-c", f"touch {ready}; sleep 30",
    )
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"])
        assert ready.exists()
        with open("/proc/self/mountinfo") as handle:
            assert handle.read() == before
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- /dev


def test_dev_holds_only_the_minimal_set(launcher):
    result = launcher.sh("ls -A /dev")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(
        ["null", "zero", "full", "random", "urandom", "tty", "stdin", "stdout", "stderr", "fd", "core", "ptmx", "pts", "shm"]
    )


def test_dev_nodes_are_usable(launcher):
    result = launcher.sh("echo discard > /dev/null && head -c 5 /dev/zero | wc -c && head -c 3 /dev/urandom | wc -c")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["5", "3"]


def test_dev_full_reports_a_full_device(launcher):
    result = python_inside(launcher, "import os; os.write(os.open('/dev/full', os.O_WRONLY), b'x')")
    assert "No space left on device" in result.stderr


def test_dev_symlinks_point_into_proc_self(launcher):
    result = launcher.sh("for l in stdin stdout stderr fd core ptmx; do readlink /dev/$l; done")
    assert result.stdout.split() == [
        "/proc/self/fd/0", "/proc/self/fd/1", "/proc/self/fd/2", "/proc/self/fd", "/proc/kcore", "pts/ptmx",
    ]


def test_dev_pts_is_a_new_devpts_instance(launcher):
    result = launcher.sh("ls -A /dev/pts; grep ' /dev/pts ' /proc/self/mountinfo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ptmx"  # none of the host's ptys
    assert "devpts" in lines[-1] and "ptmxmode=666" in lines[-1]


def test_dev_pts_can_allocate_a_pty(launcher):
    result = python_inside(launcher, "import os; m, s = os.openpty(); print(os.ttyname(s))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("/dev/pts/")


def test_dev_shm_is_an_empty_directory(launcher):
    result = launcher.sh("test -d /dev/shm && ls -A /dev/shm")
    assert result.returncode == 0 and result.stdout == ""


def test_dev_console_is_the_callers_tty(launcher):
    master, slave = pty.openpty()
    tty = os.ttyname(slave)
    os.chown(tty, launcher.uid, -1)
    expected = f"{os.major(os.stat(tty).st_rdev):x}:{os.minor(os.stat(tty).st_rdev):x}"
    try:
        result = launcher.run(
            *SYSTEM, "--", "/bin/sh", "-c", "stat -Lc %t:%T /dev/console >&2", capture_output=False, stdout=slave, stderr=subprocess.PIPE
        )
    finally:
        os.close(slave)
        os.close(master)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == expected


def test_dev_console_is_absent_without_a_tty(launcher):
    result = launcher.sh("test -e /dev/console || echo absent")
    assert result.stdout == "absent\n"


# ---------------------------------------------------------------- /proc


def test_proc_is_nosuid_nodev_noexec(launcher):
    flags = mount_options_inside(launcher, "/proc").split(",")
    assert {"nosuid", "nodev", "noexec"} <= set(flags)


def assert_not_writable(result: subprocess.CompletedProcess, path: str) -> None:
    assert result.returncode != 0
    refusals = ["Read-only file system", "Permission denied"]
    if not os.path.exists(path):
        refusals.append("No such file or directory")  # this host's kernel lacks it
    assert any(refusal in result.stderr for refusal in refusals), result.stderr


def test_proc_sysrq_trigger_is_not_writable(launcher):
    result = python_inside(launcher, "open('/proc/sysrq-trigger', 'w')")
    assert_not_writable(result, "/proc/sysrq-trigger")


def test_proc_sys_is_read_only(launcher):
    hostname = Path("/proc/sys/kernel/hostname").read_text().strip()
    result = launcher.sh(f"echo {hostname} > /proc/sys/kernel/hostname")
    assert_not_writable(result, "/proc/sys/kernel/hostname")


def test_proc_belongs_to_the_sandbox_pid_namespace(launcher):
    result = launcher.sh("ls /proc | grep -E '^[0-9]+$' | sort -n | head -1; test -e /proc/%d || echo host-pid-hidden" % os.getpid())
    assert result.stdout.split() == ["1", "host-pid-hidden"]


def test_host_proc_shows_the_host_processes(launcher):
    result = launcher.sh(f"test -d /proc/{os.getpid()} && echo visible", "--ro-bind", "/", "/", "--host-proc", "/proc", "--dev", "/dev")
    assert result.stdout == "visible\n", result.stderr


def test_host_proc_keeps_sysrq_trigger_unwritable(launcher):
    result = launcher.run(
        "--ro-bind", "/", "/", "--host-proc", "/proc", "--dev", "/dev",
        "--", "/usr/bin/python3", "-c", "open('/proc/sysrq-trigger', 'w')",
    )
    assert_not_writable(result, "/proc/sysrq-trigger")


def test_host_proc_sys_is_read_only(launcher):
    hostname = Path("/proc/sys/kernel/hostname").read_text().strip()
    result = launcher.sh(f"echo {hostname} > /proc/sys/kernel/hostname", "--ro-bind", "/", "/", "--host-proc", "/proc")
    assert_not_writable(result, "/proc/sys/kernel/hostname")


# ---------------------------------------------------------------- failures


def test_missing_bind_source_fails_naming_the_path(launcher):
    result = launcher.run("--ro-bind", "/nonexistent/srt-source", "/x", "--", "/bin/true")
    assert result.returncode == 125
    assert result.stderr.splitlines()[0] == "srt-launcher: ro-bind source: /nonexistent/srt-source: No such file or directory"


def test_a_source_in_another_mount_namespace_never_binds_the_host_file_it_names(launcher, shared_dir):
    # A process in a mount namespace of its own (a container, a sandbox) has
    # a tmpfs over <shared>/over, and there a symlink over/link -> f. Bound
    # through /proc/PID/root, the kernel reaches that namespace's f, whose
    # /proc/self/fd link reads "<shared>/over/f": its path in *that*
    # namespace. Taken as a host path, it is the host's file under the
    # tmpfs: whoever owns the namespace would pick, by a symlink, which host
    # file the caller's sandbox gets. Resolved on the host root (SPEC §2.4),
    # "/proc/PID/root" is "/", and <shared>/over/link does not exist there.
    over = shared_dir / "over"
    over.mkdir()
    (over / "f").write_text("the host's own\n")
    os.chown(over, launcher.uid, launcher.gid)
    script = f"mount -t tmpfs foreign {over} && echo foreign > {over}/f && ln -s f {over}/link && echo ready && exec sleep 600"
    holder = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        stdout=subprocess.PIPE, text=True, **launcher.process_kwargs(),
    )
    try:
        assert holder.stdout.readline() == "ready\n"
        source = f"/proc/{holder.pid}/root{over}/link"
        result = launcher.run(*SYSTEM, "--tmpfs", "/mnt", "--ro-bind", source, "/mnt/x", "--", "/bin/cat", "/mnt/x")
    finally:
        holder.kill()
        holder.wait()
    assert "the host's own" not in result.stdout
    assert result.returncode == 125, result.stderr
    assert result.stderr.splitlines() == [f"srt-launcher: ro-bind source: {source}: No such file or directory"]


def test_uncreatable_target_fails_with_125_and_no_traceback(launcher):
    result = launcher.sh("true", *SYSTEM, "--tmpfs", "/mnt", "--ro-bind", "/usr", "/etc/srt-launcher-new/x")
    assert result.returncode == 125
    assert result.stderr.startswith("srt-launcher: ro-bind: /etc/srt-launcher-new/x: ")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


# ---------------------------------------------------------------- symlinks in mount targets


@pytest.fixture
def host_victim_dir():  # type: ignore[no-untyped-def]
    """A host directory outside everything a test binds, writable by anyone."""
    path = Path(tempfile.mkdtemp(prefix="srt-launcher-victim-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.mark.parametrize("link_kind", ["absolute", "relative"])
def test_planted_symlink_cannot_make_a_later_launch_create_files_on_the_host(launcher, shared_dir, host_victim_dir, link_kind):
    # Launch N: the workload, with a writable bind, plants a link aimed at the
    # host's real root as PID 1 sees it while building the next sandbox.
    escape = f"/oldroot{host_victim_dir}" if link_kind == "absolute" else "../" * 12 + f"oldroot{host_victim_dir}"
    writable = (*SYSTEM, "--bind", str(shared_dir), str(shared_dir))
    planted = launcher.run(*writable, "--", "ln", "-s", escape, f"{shared_dir}/cfg")
    assert planted.returncode == 0, planted.stderr
    # Launch N+1: mount targets that pass through the link.
    launcher.run(
        *writable, "--tmpfs", f"{shared_dir}/cfg/cache/sub", "--ro-bind", "/etc/hostname", f"{shared_dir}/cfg/deny",
        "--", "/bin/true",
    )
    assert list(host_victim_dir.iterdir()) == []


def test_absolute_symlink_in_a_target_resolves_inside_the_sandbox(launcher, shared_dir):
    # /tmp is the sandbox's own tmpfs: the link is followed as the workload sees it.
    (shared_dir / "scratch").symlink_to("/tmp")
    options = (*SYSTEM, "--tmpfs", "/tmp", "--bind", str(shared_dir), str(shared_dir), "--tmpfs", f"{shared_dir}/scratch/sub")
    result = launcher.sh("grep ' /tmp/sub ' /proc/self/mountinfo | cut -d' ' -f5", *options)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "/tmp/sub\n"


def test_host_proc_is_read_only(launcher):
    result = launcher.sh("echo 0 > /proc/self/oom_score_adj", "--ro-bind", "/", "/", "--host-proc", "/proc")
    assert "Read-only file system" in result.stderr
