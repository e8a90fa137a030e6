"""`srt-launcher run`: the command line and its failures (issue 2): SPEC §1, §2.1, §2.7.

Usage errors exit 2 with one ``srt-launcher: ...`` line and a usage line,
and start nothing; setup failures exit 125 with
``srt-launcher: <step>: <path>: <reason>``, no traceback, and leave no
process and no mount behind. Every test runs through the ``launcher``
fixture: as root, as uid 65534 and as root with ``--unshare-user``.

"Nothing started" is checked with a workload that would leave a file in a
directory it can write: the file must not appear.
"""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import pytest

from conftest import SYSTEM, lingering

TIMEOUT = 60

RUN_OPTIONS = (
    "--unshare-net",
    "--unshare-user",
    "--seccomp-unix-block",
    "--seccomp-harden",
    "--bind",
    "--ro-bind",
    "--tmpfs",
    "--dev",
    "--proc",
    "--host-proc",
    "--relay",
    "--setenv",
)


# ---------------------------------------------------------------- helpers


def unique() -> str:
    return f"srt-test-{random.randrange(10**11, 10**12)}"


def toplevel(launcher, *args: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """``srt-launcher ARGS`` exactly as given (no --unshare-user inserted)."""
    return subprocess.run(
        [*launcher.argv_prefix, *args], capture_output=True, text=True, timeout=TIMEOUT, **launcher.process_kwargs()
    )


def touch_workload(directory: Path) -> list[str]:
    return ["/bin/sh", "-c", 'touch "$0/ran"', str(directory)]


def writable(directory: Path) -> list[str]:
    return [*SYSTEM, "--bind", str(directory), str(directory)]


def assert_usage_error(result: subprocess.CompletedProcess, *named: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, f"expected a message line and a usage line, got {result.stderr!r}"
    message, usage = lines
    assert message.startswith("srt-launcher: "), message
    assert usage.lower().startswith("usage:") and "srt-launcher run" in usage, usage
    for word in named:
        assert word in message, f"{word!r} not named in {message!r}"


def mount_table() -> set[str]:
    with open("/proc/self/mountinfo") as handle:
        return set(handle.read().splitlines())


# ---------------------------------------------------------------- usage errors (§2.1)


@pytest.mark.parametrize("option", ["--bogus-option", "-x", "--bind=/tmp", "--ro-bind-try", "--die-with-parent"])
def test_unknown_option_is_a_usage_error_naming_it(launcher, shared_dir, option):
    result = launcher.run(*writable(shared_dir), option, "--", *touch_workload(shared_dir))
    assert_usage_error(result, option)
    assert not (shared_dir / "ran").exists()


def test_unknown_option_after_a_valid_one_is_still_rejected(launcher, shared_dir):
    result = launcher.run("--unshare-net", "--bogus-option", *writable(shared_dir), "--", *touch_workload(shared_dir))
    assert_usage_error(result, "--bogus-option")
    assert not (shared_dir / "ran").exists()


@pytest.mark.parametrize(
    "args,option",
    [
        (["--bind", "/tmp"], "--bind"),
        (["--ro-bind", "/tmp"], "--ro-bind"),
        (["--ro-bind"], "--ro-bind"),
        (["--tmpfs"], "--tmpfs"),
        (["--dev"], "--dev"),
        (["--proc"], "--proc"),
        (["--host-proc"], "--host-proc"),
        (["--setenv", "SRT_TEST_VAR"], "--setenv"),
        (["--unshare-net", "--relay", "8080"], "--relay"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_missing_value_is_a_usage_error_naming_the_option(launcher, args, option):
    assert_usage_error(launcher.run(*SYSTEM, *args), option)


def test_missing_value_before_double_dash_starts_nothing(launcher, shared_dir):
    result = launcher.run(*writable(shared_dir), "--bind", "/tmp", "--", *touch_workload(shared_dir))
    assert_usage_error(result, "--bind")
    assert not (shared_dir / "ran").exists()


def test_command_without_double_dash_is_a_usage_error(launcher, shared_dir):
    result = launcher.run(*writable(shared_dir), *touch_workload(shared_dir))
    assert_usage_error(result)
    assert not (shared_dir / "ran").exists()


def test_missing_double_dash_and_command_is_a_usage_error(launcher):
    assert_usage_error(launcher.run(*SYSTEM))


def test_nothing_after_double_dash_is_a_usage_error(launcher):
    assert_usage_error(launcher.run(*SYSTEM, "--"))


def test_run_without_arguments_is_a_usage_error(launcher):
    result = subprocess.run(
        [*launcher.argv_prefix, "run"], capture_output=True, text=True, timeout=TIMEOUT, **launcher.process_kwargs()
    )
    assert_usage_error(result)


@pytest.mark.parametrize(
    "args,bad",
    [
        (["--bind", "relative/src", "/mnt"], "relative/src"),
        (["--bind", "/tmp", "relative/dst"], "relative/dst"),
        (["--ro-bind", "usr", "/usr"], "usr"),
        (["--ro-bind", "/usr", "./usr"], "./usr"),
        (["--tmpfs", "tmp"], "tmp"),
        (["--dev", "dev"], "dev"),
        (["--proc", "proc"], "proc"),
        (["--host-proc", "proc"], "proc"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_relative_mount_path_is_a_usage_error_naming_it(launcher, shared_dir, args, bad):
    result = launcher.run(*writable(shared_dir), *args, "--", *touch_workload(shared_dir))
    assert_usage_error(result, args[0], bad)
    assert not (shared_dir / "ran").exists()


def test_empty_mount_path_is_a_usage_error(launcher, shared_dir):
    result = launcher.run(*writable(shared_dir), "--tmpfs", "", "--", *touch_workload(shared_dir))
    assert_usage_error(result, "--tmpfs")
    assert not (shared_dir / "ran").exists()


@pytest.mark.parametrize("port", ["http", "0", "65536", "-1", "99999999999999999999", "80x", "+80", "0x50", "\u0663"])
def test_bad_relay_port_is_a_usage_error_naming_it(launcher, shared_dir, port):
    result = launcher.run(
        "--unshare-net", "--relay", port, str(shared_dir / "proxy.sock"), *writable(shared_dir),
        "--", *touch_workload(shared_dir),
    )
    assert_usage_error(result, "--relay", port)
    assert not (shared_dir / "ran").exists()


@pytest.mark.parametrize("port", ["", " 80"])
def test_blank_relay_port_is_a_usage_error(launcher, shared_dir, port):
    result = launcher.run(
        "--unshare-net", "--relay", port, str(shared_dir / "proxy.sock"), *writable(shared_dir),
        "--", *touch_workload(shared_dir),
    )
    assert_usage_error(result, "--relay")
    assert not (shared_dir / "ran").exists()


def test_relay_without_unshare_net_is_a_usage_error(launcher, shared_dir):
    result = launcher.run(
        "--relay", "8080", str(shared_dir / "proxy.sock"), *writable(shared_dir), "--", *touch_workload(shared_dir)
    )
    assert_usage_error(result, "--relay", "--unshare-net")
    assert not (shared_dir / "ran").exists()


@pytest.mark.parametrize("key", ["A=B", "=", ""])
def test_setenv_key_that_is_not_a_name_is_a_usage_error(launcher, shared_dir, key):
    result = launcher.run(*writable(shared_dir), "--setenv", key, "value", "--", *touch_workload(shared_dir))
    assert_usage_error(result, "--setenv", key)
    assert not (shared_dir / "ran").exists()


# ---------------------------------------------------------------- the command and its help (§1)


def test_no_subcommand_prints_usage_on_stderr_and_exits_2(launcher):
    result = toplevel(launcher)
    assert result.returncode == 2, result.stderr
    assert "usage" in result.stderr.lower()
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_unknown_subcommand_prints_usage_on_stderr_and_exits_2(launcher):
    result = toplevel(launcher, "frobnicate")
    assert result.returncode == 2, result.stderr
    assert "usage" in result.stderr.lower()
    assert "frobnicate" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_command_help_lists_the_subcommands(launcher):
    result = toplevel(launcher, "--help")
    assert result.returncode == 0, result.stderr
    for subcommand in ("run", "relay", "connect"):
        assert re.search(rf"^\s+{subcommand}\b", result.stdout, re.M), f"{subcommand} missing from:\n{result.stdout}"


def test_run_help_lists_every_run_option(launcher):
    result = toplevel(launcher, "run", "--help")
    assert result.returncode == 0, result.stderr
    missing = [option for option in RUN_OPTIONS if not re.search(rf"{option}\b(?!-)", result.stdout)]
    assert missing == [], f"run --help does not describe {missing}:\n{result.stdout}"
    assert "--" in result.stdout and "COMMAND" in result.stdout


def test_run_help_describes_the_exit_statuses(launcher):
    result = toplevel(launcher, "run", "--help")
    assert result.returncode == 0, result.stderr
    for status in ("125", "126", "127", "128"):
        assert status in result.stdout, f"exit status {status} not described"


def test_help_among_run_options_prints_help(launcher):
    # --help anywhere before `--` asks for help (as bubblewrap does).
    result = toplevel(launcher, "run", "--ro-bind", "/", "/", "--help")
    assert result.returncode == 0, result.stderr
    assert "--ro-bind" in result.stdout and "--setenv" in result.stdout


def test_help_after_double_dash_belongs_to_the_workload(launcher):
    result = launcher.run(*SYSTEM, "--", "/bin/sh", "-c", 'echo "$1"', "sh", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "--help\n"


@pytest.mark.parametrize("subcommand", ["relay", "connect"])
def test_other_subcommands_have_help(launcher, subcommand):
    result = toplevel(launcher, subcommand, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:") and subcommand in result.stdout.splitlines()[0]


# ---------------------------------------------------------------- setup failures (§2.7)

SETUP_LINE = re.compile(r"^srt-launcher: (?P<step>[^:\n]+): (?P<path>[^\n]+): (?P<reason>[^:\n]+)\n$")


class NothingLeftBehind:
    """Run one failing launch and check it left no process and no mount on the host."""

    def __init__(self, launcher, marker: str) -> None:  # type: ignore[no-untyped-def]
        self.launcher = launcher
        self.marker = marker

    def run(self, *args: str) -> subprocess.CompletedProcess:
        before = mount_table()
        result = self.launcher.run(*args)
        assert lingering(self.marker) == [], "a launcher process outlived the failed launch"
        added = mount_table() - before
        assert not added, "the failed launch left mounts on the host:\n" + "\n".join(sorted(added))
        return result


def assert_setup_failure(result: subprocess.CompletedProcess, path: str, reason: str) -> re.Match:
    assert result.returncode == 125, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    match = SETUP_LINE.match(result.stderr)
    assert match, f"not one `srt-launcher: <step>: <path>: <reason>` line: {result.stderr!r}"
    assert path in match["path"], f"{path} not named in {result.stderr!r}"
    assert match["reason"] == reason, result.stderr
    return match


@pytest.mark.parametrize("option", ["--bind", "--ro-bind"])
def test_missing_bind_source_fails_setup_naming_it(launcher, shared_dir, option):
    marker = unique()
    source = f"/nonexistent-{marker}/src"
    result = NothingLeftBehind(launcher, marker).run(
        *writable(shared_dir), option, source, "/mnt", "--", *touch_workload(shared_dir)
    )
    match = assert_setup_failure(result, source, "No such file or directory")
    assert match["path"] == source
    assert not (shared_dir / "ran").exists()


def test_dangling_symlink_as_bind_source_fails_setup(launcher, shared_dir):
    marker = unique()
    link = shared_dir / f"dangling-{marker}"
    link.symlink_to(f"/nonexistent-{marker}")
    result = NothingLeftBehind(launcher, marker).run(
        *writable(shared_dir), "--ro-bind", str(link), "/mnt", "--", *touch_workload(shared_dir)
    )
    assert_setup_failure(result, f"dangling-{marker}", "No such file or directory")
    assert not (shared_dir / "ran").exists()


def test_bind_target_under_a_read_only_bind_fails_setup(launcher, shared_dir):
    marker = unique()
    target = f"/srt-test-missing-{marker}/sub"
    result = NothingLeftBehind(launcher, marker).run(
        *writable(shared_dir), "--bind", str(shared_dir), target, "--", *touch_workload(shared_dir)
    )
    assert_setup_failure(result, f"/srt-test-missing-{marker}", "Read-only file system")
    assert not (shared_dir / "ran").exists()


def test_tmpfs_target_under_a_read_only_bind_fails_setup(launcher, shared_dir):
    marker = unique()
    target = f"/srt-test-missing-{marker}"
    result = NothingLeftBehind(launcher, marker).run(
        *writable(shared_dir), "--tmpfs", target, "--", *touch_workload(shared_dir)
    )
    assert_setup_failure(result, target, "Read-only file system")
    assert not (shared_dir / "ran").exists()


def test_bind_target_below_a_regular_file_fails_setup(launcher, shared_dir):
    marker = unique()
    blocker = shared_dir / f"file-{marker}"
    blocker.write_text("")
    target = f"{blocker}/sub"
    result = NothingLeftBehind(launcher, marker).run(
        *writable(shared_dir), "--bind", "/tmp", target, "--", *touch_workload(shared_dir)
    )
    assert_setup_failure(result, f"file-{marker}", "Not a directory")
    assert not (shared_dir / "ran").exists()
