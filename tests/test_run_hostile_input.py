"""Hostile and malformed input to `run` (issue 11, findings 3 and 7): SPEC §2.1, §2.4, §2.7.

Each case once gave a traceback, silence, the wrong status or a hole; each
must now give one line naming the step and the value, the documented exit
status, and leave nothing behind.
"""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from conftest import SYSTEM
from test_run_usage import NothingLeftBehind, assert_usage_error, unique


def test_a_port_of_5000_digits_is_a_usage_error(launcher, shared_dir):
    port = "9" * 5000
    result = launcher.run("--unshare-net", "--relay", port, str(shared_dir / "s"), *SYSTEM, "--", "/bin/true")
    assert_usage_error(result, "--relay")
    assert len(result.stderr) < 500, "the message buries itself under the value"


@pytest.mark.parametrize("port", ["000000080", "0080", "080"])
def test_ports_with_leading_zeros_beyond_five_digits_are_refused_as_relay_does(launcher, shared_dir, port):
    result = launcher.run("--unshare-net", "--relay", port, str(shared_dir / "s"), *SYSTEM, "--", "/bin/true")
    if len(port) > 5:
        assert_usage_error(result, port)
    else:
        # Up to five digits, as the relay subcommand reads them.
        assert result.returncode == 125 and "relay socket" in result.stderr


def test_a_failing_path_with_a_newline_is_reported_on_one_line(launcher):
    """The target fails in PID 1, after pivot_root: the message is formatted by the stub."""
    marker = unique()
    path = f"/nonexistent-{marker}\nforged line/y"
    result = NothingLeftBehind(launcher, marker).run(*SYSTEM, "--tmpfs", path, "--", "/bin/true")
    assert result.returncode == 125
    assert result.stderr == f"srt-launcher: tmpfs: /nonexistent-{marker}\\nforged line/y: Read-only file system\n"


def test_exec_of_a_name_with_a_tab_in_an_empty_root_is_127_with_a_message(launcher):
    result = launcher.run("--", "a\tb")
    assert result.returncode == 127
    assert result.stderr == "srt-launcher: exec a\\tb: No such file or directory\n"


@pytest.mark.parametrize("value", ["-h", "--help", "--", "--bind"])
def test_an_option_value_that_looks_like_an_option_is_a_value(launcher, value):
    result = launcher.run(*SYSTEM, "--setenv", "GREETING", value, "--", "/bin/sh", "-c", 'printf %s "$GREETING"')
    if value == "--":
        assert_usage_error(result, "--setenv")  # `--` ends the options, wherever it is
        return
    assert result.returncode == 0, result.stderr
    assert result.stdout == value


def test_help_as_a_mount_path_is_a_path(launcher):
    assert_usage_error(launcher.run(*SYSTEM, "--tmpfs", "--help", "--", "/bin/true"), "--help")


def test_an_executable_script_without_a_shebang_runs_with_sh(launcher, shared_dir):
    script = shared_dir / "script"
    script.write_text("echo from the script\nexit 3\n")
    script.chmod(0o755)
    result = launcher.run(*SYSTEM, "--", str(script), "arg")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "from the script\n"


def test_the_stub_out_of_descriptors_is_one_line_and_125(launcher):
    command = ["/bin/sh", "-c", 'ulimit -n 4 && exec "$@"', "sh", *launcher.argv("run", *SYSTEM, "--", "/bin/true")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    assert result.returncode == 125, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("srt-launcher: "), result.stderr


# ---------------------------------------------------------------- --dev and the host's device inodes (finding 3)


@pytest.fixture
def host_dev_full():  # type: ignore[no-untyped-def]
    """/dev/full as it is, put back after the test even if the launcher let a change through."""
    before = os.stat("/dev/full")
    yield before
    os.chmod("/dev/full", stat.S_IMODE(before.st_mode))
    os.chown("/dev/full", before.st_uid, before.st_gid)
    os.utime("/dev/full", ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("change", ["chmod 644 /dev/full", "chown 1:1 /dev/full", "touch -d 2001-01-01 /dev/full"])
def test_dev_nodes_are_usable_but_their_host_inodes_cannot_be_changed(launcher, host_dev_full, change):
    result = launcher.sh(f"echo data > /dev/null && head -c 4 /dev/zero | wc -c && {change}")
    after = os.stat("/dev/full")
    assert result.stdout == "4\n", result.stderr
    assert result.returncode != 0
    if not launcher.unprivileged:
        assert "Read-only file system" in result.stderr, result.stderr
    before = host_dev_full
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid, after.st_mtime) == (
        stat.S_IMODE(before.st_mode), before.st_uid, before.st_gid, before.st_mtime,
    )


def test_dev_console_is_usable_but_read_only(launcher):
    import pty
    import select

    master, slave = pty.openpty()
    os.fchown(slave, launcher.uid, launcher.gid)
    try:
        result = launcher.run(
            *SYSTEM, "--", "/bin/sh", "-c", "echo hi > /dev/console; chmod 000 /dev/console",
            stdin=slave, stdout=slave, capture_output=False, stderr=subprocess.PIPE,
        )
        readable, _, _ = select.select([master], [], [], 10)
        assert readable and os.read(master, 100).startswith(b"hi"), result.stderr
        assert result.returncode != 0
        assert stat.S_IMODE(os.fstat(slave).st_mode) != 0
    finally:
        os.close(master)
        os.close(slave)
