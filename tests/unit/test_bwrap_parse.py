"""The bubblewrap front end's parser (SPEC §7): bubblewrap 0.11.1's rules, no namespaces.

Each expectation is bubblewrap's behaviour as its source states it
(``parse_args_recurse`` and ``main`` in bubblewrap.c, 0.11.1); the end-to-end
tests (tests/test_bwrap*.py) compare the running front end with Debian's
bubblewrap. Nothing here needs root or launches anything.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from srt_launcher import kernel, sandbox
from srt_launcher.commands import bwrap
from srt_launcher.commands import run as run_command
from srt_launcher.sandbox import Mount

# SPEC §7's list: every option of bubblewrap 0.11.1's --help.
SPEC_OPTIONS = """--help --version --args --argv0 --level-prefix --unshare-all --unshare-user --unshare-user-try
--unshare-ipc --unshare-pid --unshare-net --unshare-uts --unshare-cgroup --unshare-cgroup-try --share-net
--userns --userns2 --pidns --disable-userns --assert-userns-disabled --uid --gid --hostname --chdir --clearenv
--setenv --unsetenv --lock-file --sync-fd --bind --bind-try --dev-bind --dev-bind-try --ro-bind --ro-bind-try
--bind-fd --ro-bind-fd --remount-ro --overlay-src --overlay --tmp-overlay --ro-overlay --exec-label
--file-label --proc --dev --tmpfs --mqueue --dir --file --bind-data --ro-bind-data --symlink --seccomp
--add-seccomp-fd --block-fd --userns-block-fd --info-fd --json-status-fd --new-session --die-with-parent
--as-pid-1 --cap-add --cap-drop --perms --size --chmod""".split()

ROOT = os.getuid() == 0


def parse(*argv: str) -> sandbox.Sandbox:
    result = bwrap.parse(list(argv))
    assert isinstance(result, sandbox.Sandbox), result
    return result


def fails(*argv: str) -> str:
    with pytest.raises(bwrap.Die) as raised:
        bwrap.parse(list(argv))
    assert raised.value.exit_code == 1
    return raised.value.step


# ---------------------------------------------------------------- the option table


def test_the_table_has_exactly_the_options_of_bubblewrap_0_11_1():
    assert sorted(bwrap.OPTIONS) == sorted(SPEC_OPTIONS)


def test_help_lists_every_option_in_bubblewrap_layout():
    text = bwrap.usage("/usr/bin/bwrap")
    lines = text.splitlines()
    assert lines[0] == "usage: /usr/bin/bwrap [OPTIONS...] [--] COMMAND [ARGS...]"
    assert lines[1] == ""
    assert "    --bind SRC DEST              Bind mount the host path SRC on DEST" in lines
    assert "    --overlay RWSRC WORKDIR DEST Mount overlayfs on DEST, with RWSRC as the host path for writes and" in lines
    assert " " * 33 + "WORKDIR an empty directory on the same filesystem as RWSRC" in lines
    assert lines[-1] == "    --chmod OCTAL PATH           Change permissions of PATH (must already exist)"
    named = [line.split()[0] for line in lines[2:] if line.startswith("    --")]
    assert named == list(bwrap.OPTIONS)


def test_version_names_bubblewrap_and_the_launcher_on_one_line():
    line = bwrap.version_line()
    assert line.startswith("bubblewrap 0.11.1 (srt-launcher ") and line.endswith(")\n")
    assert line.count("\n") == 1


# ---------------------------------------------------------------- bubblewrap's defaults


def test_defaults_are_bubblewraps_not_runs():
    box = parse("--ro-bind", "/", "/", "true")
    assert box.command == ["true"]
    assert box.pid is False and box.net is False and box.ipc is False and box.uts is False and box.cgroup is False
    assert box.user == (sandbox.USERNS_NO if ROOT else sandbox.USERNS_YES)  # implied for a non-root caller
    assert box.new_session is False and box.die_with_parent is False and box.forward_signals is False
    assert box.reaper is False  # no PID namespace, no lock file, no sync fd: the set-up process execs
    assert box.inherit_fds is True and box.status_child == sandbox.CHILD_IS_PID1


def test_a_root_caller_keeps_its_capabilities_and_others_get_only_cap_add():
    box = parse("--ro-bind", "/", "/", "true")
    effective = kernel.capget_effective()
    assert box.caps == (frozenset(bit for bit in range(64) if effective >> bit & 1) if ROOT else frozenset())


def test_cap_drop_all_then_cap_add_keeps_only_that_one():
    assert parse("--cap-drop", "ALL", "--cap-add", "CAP_NET_RAW", "true").caps == {13}


def test_cap_add_all_is_masked_to_the_kernels_last_capability():
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    assert parse("--cap-add", "ALL", "true").caps == frozenset(range(last + 1))


@pytest.mark.parametrize(
    "name, number",
    [("CAP_CHOWN", 0), ("cap_chown", 0), ("Cap_Kill", 5), ("CAP_CHOWN,junk", 0), ("cap_sys_admin1", 21),
     ("0x15", 21), ("010", 8), ("21", 21), ("63", 63), ("cap_checkpoint_restore", 40)],
)
def test_capability_names_are_read_as_libcap_reads_them(name, number):
    assert bwrap.capability(name) == number


@pytest.mark.parametrize("name", ["cap_bogus", "64", "", " cap_chown", "chown", "cap_chown_x", "-1"])
def test_unknown_capabilities_are_refused(name):
    assert bwrap.capability(name) is None
    assert fails("--cap-add", name, "true") == f"unknown cap: {name}"


def test_unshare_all_asks_for_every_namespace_with_the_try_variants():
    box = parse("--unshare-all", "true")
    assert (box.pid, box.net, box.ipc, box.uts, box.cgroup) == (True, True, True, True, "try")
    assert parse("--unshare-all", "--share-net", "true").net is False


def test_a_pid_namespace_gets_a_reaper_unless_as_pid_1():
    assert parse("--unshare-pid", "true").reaper is True
    assert parse("--unshare-pid", "--as-pid-1", "true").reaper is False
    assert parse("--lock-file", "/x", "true").reaper is True
    assert parse("--sync-fd", "1", "true").reaper is True


def test_relative_destinations_are_relative_to_the_sandbox_root():
    box = parse("--tmpfs", "tmp", "--dir", "//a/b", "--ro-bind", "src", "usr", "true")
    assert [mount.dest for mount in box.mounts] == ["/tmp", "/a/b", "/usr"]
    assert box.mounts[2].source == "src"  # a source stays relative to the caller's directory


# ---------------------------------------------------------------- parsing rules


def test_the_first_word_that_is_not_an_option_starts_the_command():
    assert parse("--ro-bind", "/", "/", "sh", "--ro-bind", "x").command == ["sh", "--ro-bind", "x"]


def test_double_dash_ends_the_options():
    assert parse("--", "--ro-bind").command == ["--ro-bind"]


def test_an_option_value_is_a_value_whatever_it_looks_like():
    box = parse("--setenv", "A", "--help", "--chdir", "--", "true")
    assert box.env == [(sandbox.SETENV, "A", "--help")] and box.chdir == "--"


def test_no_opt_equals_value_form():
    assert fails("--chdir=/tmp", "true") == "Unknown option --chdir=/tmp"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bind", "/"], "--bind takes two arguments"),
        (["--bind-try", "/"], "--bind-try takes two arguments"),
        (["--ro-bind-fd", "3"], "--bind-fd takes two arguments"),
        (["--chdir"], "--chdir takes one argument"),
        (["--argv0"], "--argv0 takes one argument"),
        (["--remount-ro"], "--remount-ro takes one argument"),
        (["--proc"], "--proc takes an argument"),
        (["--overlay", "a", "b"], "--overlay takes three arguments"),
        (["--args"], "--args takes an argument"),
    ],
)
def test_missing_values_are_worded_as_bubblewrap_words_them(argv, message):
    assert fails(*argv) == message


def test_repeated_single_value_options_keep_the_last_with_a_warning(capfd):
    box = parse("--chdir", "/a", "--chdir", "/b", "--hostname", "x", "--hostname", "y", "--unshare-uts", "true")
    assert box.chdir == "/b" and box.hostname == "y"
    assert capfd.readouterr().err == (
        "bwrap: Only the last --chdir option will take effect\nbwrap: Only the last --hostname option will take effect\n"
    )


def test_level_prefix_marks_warnings_and_errors_after_it(capfd):
    parse("--chdir", "/a", "--level-prefix", "--chdir", "/b", "true")
    assert capfd.readouterr().err == "<4>bwrap: Only the last --chdir option will take effect\n"
    err = bwrap.Die("x")
    assert bwrap.message(err, True) == "<3>bwrap: x\n" and bwrap.message(err, False) == "bwrap: x\n"


def test_argv0_may_be_given_once():
    assert parse("--argv0", "name", "true").argv0 == "name"
    assert fails("--argv0", "a", "--argv0", "b", "true") == "--argv0 used multiple times"


@pytest.mark.parametrize("text, value", [("3", 3), (" 3", 3), ("+3", 3), ("-0", 0), ("4294967299", 3), ("0003", 3)])
def test_fd_numbers_are_read_as_strtol_reads_them(text, value):
    assert parse("--sync-fd", text, "true").sync_fd == value


@pytest.mark.parametrize("text", ["", "x", "3x", "3 ", "-1", "0x3", "2147483648", "99999999999999999999"])
def test_bad_fd_numbers_are_refused(text):
    assert fails("--sync-fd", text, "true") == f"Invalid fd: {text}"


def test_bad_uid_and_gid_are_refused():
    assert fails("--uid", "x", "true") == "Invalid uid: x"
    assert fails("--gid", "-2", "true") == "Invalid gid: -2"


# ---------------------------------------------------------------- --perms, --size, --chmod


def test_perms_apply_to_the_next_option_only():
    box = parse("--perms", "0700", "--tmpfs", "/a", "--tmpfs", "/b", "--perms", "640", "--file", "5", "/c", "true")
    assert [(m.dest, m.perms) for m in box.mounts] == [("/a", 0o700), ("/b", None), ("/c", 0o640)]


def test_historical_default_modes():
    # None: the engine's default, which is bubblewrap's (0755 directories and tmpfs, 0666 files).
    box = parse("--dir", "/d", "--file", "5", "/f", "--bind-data", "6", "/b", "--ro-bind-data", "7", "/r", "--tmpfs", "/t", "true")
    assert [m.perms for m in box.mounts] == [None, None, 0o600, 0o600, None]
    assert [m.fd for m in box.mounts] == [None, 5, 6, 7, None]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--perms", "0700", "--perms", "0700", "--dir", "/x"], "--perms given twice for the same action"),
        (["--perms", "8", "--dir", "/x"], "--perms takes an octal argument <= 07777"),
        (["--perms", "010000", "--dir", "/x"], "--perms takes an octal argument <= 07777"),
        (["--perms", "", "--dir", "/x"], "--perms takes an octal argument <= 07777"),
        (["--perms", "0700", "--ro-bind", "/", "/"], "--perms must be followed by an option that creates a file"),
        (["--size", "0", "--tmpfs", "/x"], "--size takes a non-zero number of bytes"),
        (["--size", "1k", "--tmpfs", "/x"], "--size takes a non-zero number of bytes"),
        (["--size", " 1", "--tmpfs", "/x"], "--size takes a non-zero number of bytes"),
        (["--size", "99999999999999999999", "--tmpfs", "/x"], "--size takes a non-zero number of bytes"),
        (["--size", "9223372036854775808", "--tmpfs", "/x"], "--size (for tmpfs) is limited to 9223372036854775807"),
        (["--size", "1", "--size", "1", "--tmpfs", "/x"], "--size given twice for the same action"),
        (["--size", "100", "--dir", "/x"], "--size must be followed by --tmpfs"),
        (["--chmod", "9", "/x"], "--chmod takes an octal argument <= 07777"),
    ],
)
def test_modifier_errors(argv, message):
    assert fails(*argv, "true") == message


def test_perms_then_size_both_reach_tmpfs_and_size_reads_hex_and_octal():
    box = parse("--perms", "01777", "--size", "0x100000", "--tmpfs", "/t", "--size", "010", "--tmpfs", "/u", "true")
    assert [(m.perms, m.size) for m in box.mounts] == [(0o1777, 1 << 20), (None, 8)]


def test_perms_before_the_end_of_options_is_dropped_silently():
    # bubblewrap checks the modifiers after each option, not when -- or the command ends them.
    assert parse("--perms", "0700", "--", "true").mounts == []


def test_chmod_is_an_operation_in_order():
    box = parse("--tmpfs", "/t", "--chmod", "1777", "/t", "true")
    assert box.mounts[1] == Mount(sandbox.CHMOD, "/t", perms=0o1777)


# ---------------------------------------------------------------- overlays


def test_overlay_sources_are_passed_top_first():
    box = parse("--overlay-src", "/low", "--overlay-src", "/high", "--tmp-overlay", "/o", "true")
    assert box.mounts == [Mount(sandbox.TMP_OVERLAY, "/o", lower=("/high", "/low"))]


def test_overlay_takes_upper_and_work_dirs():
    box = parse("--overlay-src", "/low", "--overlay", "/up", "/work", "/o", "true")
    assert box.mounts == [Mount(sandbox.OVERLAY, "/o", "/up", lower=("/low",), work="/work")]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--overlay", "/u", "/w", "/o"], "--overlay requires at least one --overlay-src"),
        (["--tmp-overlay", "/o"], "--tmp-overlay requires at least one --overlay-src"),
        (["--overlay-src", "/a", "--ro-overlay", "/o"], "--ro-overlay requires at least two --overlay-src"),
        (["--overlay-src", "/a", "--dir", "/o"], bwrap._OVERLAY_SRC_ALONE),
        (["--overlay-src", "/a", "--", "x"], bwrap._OVERLAY_SRC_ALONE),
    ],
)
def test_overlay_sequencing(argv, message):
    assert fails(*argv, "true") == message


# ---------------------------------------------------------------- --args


def args_fd(*words: str, terminated: bool = True) -> int:
    """A descriptor to read the words from (a file: a pipe would not hold them all)."""
    data = b"\0".join(word.encode() for word in words) + (b"\0" if terminated else b"")
    fd = os.open(tempfile.gettempdir(), os.O_RDWR | os.O_TMPFILE, 0o600)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def test_args_splices_nul_separated_words():
    fd = args_fd("--setenv", "A", "1", "--chdir", "/x")
    box = parse("--args", str(fd), "--unsetenv", "B", "true")
    assert box.env == [(sandbox.SETENV, "A", "1"), (sandbox.UNSETENV, "B")] and box.chdir == "/x"


def test_args_last_word_needs_no_nul():
    assert parse("--args", str(args_fd("--chdir", "/x", terminated=False)), "true").chdir == "/x"


def test_a_command_inside_an_args_file_is_dropped():
    box = parse("--args", str(args_fd("--chdir", "/x", "false", "--chdir", "/y")), "true")
    assert box.chdir == "/x" and box.command == ["true"]


def test_args_inside_an_args_file_is_refused():
    assert fails("--args", str(args_fd("--args", "4")), "true") == "--args not supported in arguments file"


def test_args_with_a_bad_fd():
    assert fails("--args", "x", "true") == "Invalid fd: x"
    assert fails("--args", "987654", "true") == "Can't read --args data: Bad file descriptor"


def test_at_most_9000_words():
    assert fails(*(["--clearenv"] * 9001), "true") == "Exceeded maximum number of arguments 9000"
    parse(*(["--clearenv"] * 8999), "true")
    # argv's own words count too: 4 here.
    parse("--args", str(args_fd(*(["--clearenv"] * 8996))), "--clearenv", "true")
    fd = args_fd(*(["--clearenv"] * 8997))
    assert fails("--args", str(fd), "--clearenv", "true") == "Exceeded maximum number of arguments 9000"


# ---------------------------------------------------------------- main()'s checks


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--userns-block-fd", "5"], "--userns-block-fd requires --unshare-user"),
        (["--unshare-user", "--userns-block-fd", "5"], "--userns-block-fd requires --info-fd"),
        (["--userns", "5", "--unshare-user"], "--userns not compatible --unshare-user"),
        (["--userns", "5", "--unshare-user-try"], "--userns not compatible --unshare-user-try"),
        (["--disable-userns"], "--disable-userns requires --unshare-user"),
        (["--unshare-user", "--disable-userns", "--info-fd", "4", "--userns-block-fd", "5"],
         "--disable-userns is not compatible with  --userns-block-fd"),
        (["--hostname", "h"], "Specifying --hostname requires --unshare-uts"),
        (["--as-pid-1"], "Specifying --as-pid-1 requires --unshare-pid"),
        (["--unshare-pid", "--as-pid-1", "--lock-file", "/x"], "Specifying --as-pid-1 and --lock-file is not permitted"),
        (["--exec-label", "x"], "labeling not supported on this system"),
        (["--file-label", "x"], "labeling not supported on this system"),
        (["--setenv", "A=B", "c"], "setenv failed"),
        (["--unsetenv", ""], "unsetenv failed"),
        (["--bogus"], "Unknown option --bogus"),
    ],
)
def test_main_checks(argv, message):
    assert fails(*argv, "true") == message


@pytest.mark.skipif(not ROOT, reason="a non-root caller always gets a user namespace, so --uid is always allowed")
def test_uid_needs_a_user_namespace_for_root():
    assert fails("--uid", "5", "true") == "Specifying --uid requires --unshare-user or --userns"
    assert fails("--gid", "5", "true") == "Specifying --gid requires --unshare-user or --userns"
    assert parse("--uid", "0", "true").uid == 0  # the caller's own uid needs nothing
    assert parse("--unshare-user", "--uid", "5", "true").uid == 5
    assert parse("--userns", "9", "--uid", "5", "true").uid == 5


def test_no_command_prints_usage_and_fails(capfd):
    assert bwrap.parse(["--ro-bind", "/", "/"]) == 1
    assert bwrap.parse([]) == 1
    err = capfd.readouterr().err
    assert err.startswith("usage: bwrap [OPTIONS...] [--] COMMAND [ARGS...]\n")


def test_help_and_version_win_wherever_they_are(capfd):
    assert bwrap.parse(["--ro-bind", "/", "/", "--help", "--bogus"]) == 0
    assert capfd.readouterr().out == bwrap.usage("bwrap")
    assert bwrap.parse(["--chdir", "/", "--version", "--bogus"]) == 0
    assert capfd.readouterr().out == bwrap.version_line()


def test_seccomp_programs_are_read_at_parse_time():
    def program(data: bytes) -> int:
        read, write = os.pipe()
        os.write(write, data)
        os.close(write)
        return read

    one, two = b"\x06\x00\x00\x00\x00\x00\xff\x7f", b"\x06\x00\x00\x00\x00\x00\xff\x7f" * 2
    assert parse("--add-seccomp-fd", str(program(one)), "--add-seccomp-fd", str(program(two)), "true").seccomp == [one, two]
    assert parse("--seccomp", str(program(one)), "true").seccomp == [one]
    assert fails("--add-seccomp-fd", str(program(b"1234")), "true") == "Invalid seccomp data, must be multiple of 8"
    assert fails("--seccomp", "5", "--add-seccomp-fd", "6", "true") == "--add-seccomp-fd cannot be combined with --seccomp"
    assert fails("--add-seccomp-fd", str(program(one)), "--seccomp", "6", "true") == "--seccomp cannot be combined with --add-seccomp-fd"


# ---------------------------------------------------------------- one description for two command lines


# Fields where the two front ends differ by design, whatever the options:
# bubblewrap's PID 1 passes no signal on and outlives the command while
# others live; the caller's descriptors reach the command; its status
# records name PID 1; a root caller keeps its capabilities; a user
# namespace only where bubblewrap makes one.
BY_DESIGN = ("forward_signals", "inherit_fds", "status_child", "caps", "user", "linger")


@pytest.mark.parametrize(
    "run_argv, bwrap_argv",
    [
        (
            ["--unshare-net", "--ro-bind", "/", "/", "--proc", "/proc", "--", "true"],
            ["--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--proc", "/proc", "true"],
        ),
        (
            ["--ro-bind", "/", "/", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", "/srv", "/srv", "--dir", "/tmp/d",
             "--symlink", "usr/bin", "/bin2", "--remount-ro", "/srv", "--setenv", "A", "1", "--unsetenv", "B",
             "--clearenv", "--chdir", "/tmp", "--", "sh", "-c", "x"],
            ["--unshare-pid", "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev", "/dev",
             "--tmpfs", "/tmp", "--bind", "/srv", "/srv", "--dir", "/tmp/d", "--symlink", "usr/bin", "/bin2",
             "--remount-ro", "/srv", "--setenv", "A", "1", "--unsetenv", "B", "--clearenv", "--chdir", "/tmp",
             "sh", "-c", "x"],
        ),
        (
            ["--unshare-ipc", "--unshare-uts", "--unshare-cgroup", "--hostname", "box", "--dev-bind-try", "/dev/dri",
             "/dev/dri", "--ro-bind-try", "/opt", "/opt", "--bind-try", "/w", "/w", "--", "true"],
            ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup", "--hostname", "box",
             "--die-with-parent", "--new-session", "--dev-bind-try", "/dev/dri", "/dev/dri", "--ro-bind-try", "/opt",
             "/opt", "--bind-try", "/w", "/w", "true"],
        ),
    ],
)
def test_equivalent_run_and_bwrap_command_lines_give_equal_descriptions(run_argv, bwrap_argv):
    ours, theirs = run_command.parse(run_argv), parse(*bwrap_argv)
    differing = {name for name in sandbox.Sandbox.__slots__ if getattr(ours, name) != getattr(theirs, name)}
    assert differing <= set(BY_DESIGN), differing
    for name in BY_DESIGN:
        setattr(theirs, name, getattr(ours, name))
    assert theirs == ours
