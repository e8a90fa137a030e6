"""`srt-launcher check` (issue 16, SPEC §10): every way a launch fails on a host, made for real.

Each failure is created for real around the check process by
tests/check_env.py (a user namespace whose user.max_user_namespaces is 0, a
seccomp filter like Docker's, a covered /proc, a process that changed uid
without exec, a capability bounding set without CAP_NET_ADMIN, an install
whose #! line lost -IS), then `check --json` must report that probe as FAIL
with the errno, name the cause and give the fix, and exit 1. The healthy
host: all ok, exit 0, as root and as uid 65534. AppArmor and WSL 1 cannot be
created here: their detection is tested on fake trees in
tests/unit/test_check_diagnosis.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import UNPRIVILEGED_GID, UNPRIVILEGED_UID, Launcher, lingering, sleep_marker

CHECK_ENV = Path(__file__).with_name("check_env.py")
TIMEOUT = 120
ALWAYS_NEEDED = ("pid-namespace", "mount-namespace", "pivot-root", "launcher-isolation")
NEVER_NEEDED = ("mount-setattr", "landlock", "cgroup-delegation")
JSON_KEYS = ["name", "status", "needed", "detail", "step", "errno", "cause", "fix"]
# A launch that needs every probe except the user namespace's (given for root: as sandbox-runtime's).
FULL_LAUNCH = ("--unshare-net", "--seccomp-unix-block", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev")


def run_check(launcher: Launcher, *args: str, env: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``srt-launcher check ARGS`` as this caller; with ``env``, inside the failure check_env.py makes
    (as root, then it becomes the caller's uid and execs check)."""
    if not env:
        return launcher.command("check", *args, timeout=TIMEOUT)
    argv = [launcher.python, "-I", str(CHECK_ENV), *env, "--uid", str(launcher.uid), "--", *launcher.argv("check", *args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd="/")


def findings(result: subprocess.CompletedProcess) -> dict[str, dict]:
    assert result.stderr == "", result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, list)
    for finding in data:
        assert list(finding) == JSON_KEYS
        assert finding["status"] in ("ok", "warn", "fail", "skip")
    return {finding["name"]: finding for finding in data}


def assert_fails(result: subprocess.CompletedProcess, name: str, errno: str | None, cause: list[str], fix: list[str]) -> dict:
    """Exit 1, ``name`` FAIL with ``errno``, its cause and fix naming what they must."""
    found = findings(result)
    finding = found[name]
    assert result.returncode == 1, result.stdout
    assert finding["status"] == "fail", finding
    assert finding["errno"] == errno, finding
    for words in cause:
        assert words in finding["cause"], (words, finding["cause"])
    for words in fix:
        assert words in finding["fix"], (words, finding["fix"])
    return found


def assert_healthy(result: subprocess.CompletedProcess) -> dict[str, dict]:
    found = findings(result)
    assert result.returncode == 0, result.stdout
    for name, finding in found.items():
        if finding["status"] != "ok":
            assert finding["status"] == "warn" and name in NEVER_NEEDED, finding
            assert finding["cause"] and finding["fix"]
    return found


def leftovers() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("srt-launcher-check-")}


# ---------------------------------------------------------------- the healthy host


def test_healthy_host_all_ok(host_launcher: Launcher) -> None:
    before = leftovers()
    found = assert_healthy(run_check(host_launcher, "--json"))
    for name in ALWAYS_NEEDED + ("user-namespace", "userns-capabilities", "net-namespace", "procfs", "seccomp"):
        assert found[name]["status"] == "ok", found[name]
    assert found["user-namespace"]["needed"] is host_launcher.unprivileged  # root takes the plain route
    assert "127.0.0.1/8" in found["net-namespace"]["detail"]  # read back through rtnetlink
    assert leftovers() == before  # the planted isolation files are gone


def test_healthy_host_text_report(host_launcher: Launcher) -> None:
    result = run_check(host_launcher)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"srt-launcher check: uid {host_launcher.uid},")
    assert any(line.split()[:2] == ["ok", "pivot-root"] for line in lines)
    assert not any(line.startswith("FAIL") for line in lines)
    assert lines[-1] == "This launch would work here."


def test_healthy_host_as_root_through_a_user_namespace(root_argv: list[str]) -> None:
    result = run_check(Launcher("root", root_argv), "--json", "--", "--unshare-user", *FULL_LAUNCH)
    found = assert_healthy(result)
    assert found["user-namespace"]["needed"] is True
    assert found["launch"]["status"] == "ok"


def test_run_options_launch_runs_end_to_end(host_launcher: Launcher) -> None:
    directory = Path(tempfile.mkdtemp(prefix="srt-check-test-"))
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(directory / "proxy.sock"))
            server.listen()
            os.chown(directory, host_launcher.uid, host_launcher.gid)
            os.chmod(directory / "proxy.sock", 0o777)
            options = ("--relay", "3128", str(directory / "proxy.sock"), *FULL_LAUNCH, "--bind", str(directory), "/work")
            found = assert_healthy(run_check(host_launcher, "--json", "--", *options, "--", "/bin/sh", "-c", "exit 7"))
        assert found["bind-sources"]["status"] == "ok"
        assert found["relay-sockets"]["status"] == "ok"
        assert found["launch"]["status"] == "ok"
        assert "/bin/true" in found["launch"]["detail"]  # the given command is not run
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_check_leaves_no_process_behind(host_launcher: Launcher) -> None:
    marker = sleep_marker()  # in check's argv, so in every probe process's, and in the launch's
    result = run_check(host_launcher, "--json", "--", *FULL_LAUNCH, "--setenv", "SRT_CHECK_TEST", marker)
    assert_healthy(result)
    assert lingering(marker) == []


# ---------------------------------------------------------------- user namespaces


def test_user_namespaces_disabled(host_launcher: Launcher) -> None:
    """user.max_user_namespaces = 0 in the caller's user namespace: unshare(CLONE_NEWUSER) gets ENOSPC."""
    cause = ["ENOSPC", "user namespaces are disabled", "user.max_user_namespaces = 0"]
    fix = ["sysctl -w user.max_user_namespaces=15000", "/etc/sysctl.d/"]
    if host_launcher.unprivileged:
        found = assert_fails(run_check(host_launcher, "--json", env=("userns-limit", "0")), "user-namespace", "ENOSPC", cause, fix)
        assert found["net-namespace"]["status"] == "skip"
        return
    # Root of that namespace takes the plain route: the user namespace is not needed...
    result = run_check(host_launcher, "--json", env=("userns-limit", "0"))
    found = findings(result)
    assert result.returncode == 0 and found["user-namespace"]["status"] == "warn", found["user-namespace"]
    # ...unless --unshare-user asks for it; then the launch itself fails too.
    result = run_check(host_launcher, "--json", "--", "--unshare-user", "--ro-bind", "/", "/", env=("userns-limit", "0"))
    found = assert_fails(result, "user-namespace", "ENOSPC", cause, fix)
    assert found["launch"]["status"] == "fail"
    assert "unshare: user" in found["launch"]["cause"] and "See user-namespace above" in found["launch"]["fix"]


def test_user_namespace_limit_reached(host_launcher: Launcher) -> None:
    """user.max_user_namespaces = 1 and one user namespace of this uid already exists."""
    options = () if host_launcher.unprivileged else ("--", "--unshare-user", "--ro-bind", "/", "/")
    result = run_check(host_launcher, "--json", *options, env=("userns-limit", "1", "--hold"))
    assert_fails(
        result,
        "user-namespace",
        "ENOSPC",
        ["limit on user namespaces is reached", "user.max_user_namespaces = 1"],
        ["End the processes that hold such namespaces", "sysctl -w user.max_user_namespaces=<more than 1>"],
    )


def test_seccomp_filter_denying_unshare(host_launcher: Launcher) -> None:
    """Docker's default profile, for a container without CAP_SYS_ADMIN: EPERM for unshare."""
    result = run_check(host_launcher, "--json", env=("seccomp-deny-unshare",))
    found = assert_fails(
        result,
        "user-namespace",
        "EPERM",
        ["a seccomp filter around this process refuses unshare(2)", "unshare(0)", "Seccomp: 2"],
        ["--security-opt seccomp=unconfined", "seccompProfile"],
    )
    assert found["user-namespace"]["step"] == "unshare(CLONE_NEWUSER)"
    assert found["seccomp"]["status"] == "ok"  # seccomp itself still works under that filter


def test_caller_without_the_right_to_write_uid_map(unprivileged_argv: list[str]) -> None:
    """A process that dropped root with setuid() and did not exec since is not dumpable: its
    /proc/self files belong to root, and it cannot write its own maps."""
    launcher = Launcher("unprivileged", unprivileged_argv)
    argv = [launcher.python, "-I", str(CHECK_ENV), "setuid-in-process", str(UNPRIVILEGED_UID), "--", *launcher.argv("check", "--json")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
    found = assert_fails(
        result,
        "user-namespace",
        "EACCES",
        ["not dumpable", "PR_GET_DUMPABLE = 0", "uid_map", "setuid()"],
        ["as a new program after the change of identity", "PR_SET_DUMPABLE"],
    )
    assert found["user-namespace"]["step"] == "open /proc/self/setgroups"


def test_root_without_capabilities_cannot_map_uid_0(root_argv: list[str]) -> None:
    """Root inside a sandbox (no capability left, as in a container that dropped them): a user
    namespace can be made, but mapping uid 0 into it needs CAP_SETFCAP (Linux 5.12)."""
    launcher = Launcher("root", root_argv)
    scratch = tempfile.mkdtemp(prefix="srt-check-test-")  # a writable TMPDIR inside (the checkout may be under /tmp)
    try:
        view = ("--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--bind", scratch, scratch, "--setenv", "TMPDIR", scratch)
        result = launcher.run(*view, "--", *launcher.argv("check", "--json"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    found = assert_fails(
        result,
        "user-namespace",
        "EPERM",
        ["uid 0 without CAP_SETFCAP", "Linux 5.12"],
        ["as a non-root user", "--cap-add SETFCAP"],
    )
    assert found["user-namespace"]["step"] == "write /proc/self/uid_map"


# ---------------------------------------------------------------- procfs, network, seccomp


def test_procfs_unmountable_under_a_covered_proc(host_launcher: Launcher) -> None:
    """A PID namespace whose /proc has covered submounts, as in containers: no new procfs in a user namespace."""
    cause = ["EPERM", "fully visible", "/proc/timer_list", "/proc/sys"]
    fix = ["--host-proc /proc", "systempaths=unconfined"]
    if host_launcher.unprivileged:
        found = assert_fails(run_check(host_launcher, "--json", env=("covered-proc",)), "procfs", "EPERM", cause, fix)
        assert found["pivot-root"]["status"] == "ok"
        # The fix works: the same launch with --host-proc.
        options = ("--", "--unshare-net", "--ro-bind", "/", "/", "--host-proc", "/proc", "--dev", "/dev")
        result = run_check(host_launcher, "--json", *options, env=("covered-proc",))
        found = findings(result)
        assert result.returncode == 0 and found["procfs"]["status"] == "warn" and found["launch"]["status"] == "ok"
        return
    # Root mounts procfs without a user namespace: that rule does not apply...
    assert_healthy(run_check(host_launcher, "--json", env=("covered-proc",)))
    # ...with --unshare-user it does, and the launch fails at the same step.
    result = run_check(host_launcher, "--json", "--", "--unshare-user", *FULL_LAUNCH, env=("covered-proc",))
    found = assert_fails(result, "procfs", "EPERM", cause, fix)
    assert found["launch"]["status"] == "fail" and "proc: /proc: Operation not permitted" in found["launch"]["detail"]
    assert "See procfs above" in found["launch"]["fix"]


def test_lo_cannot_be_configured_without_cap_net_admin(root_argv: list[str]) -> None:
    """Root whose bounding set lacks CAP_NET_ADMIN (docker --cap-add SYS_ADMIN only): the network
    namespace can be made, lo cannot be brought up."""
    launcher = Launcher("root", root_argv)
    argv = ["setpriv", "--bounding-set", "-net_admin", "--", *launcher.argv("check", "--json")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
    assert_fails(
        result,
        "net-namespace",
        "EPERM",
        ["CAP_SYS_ADMIN", "not CAP_NET_ADMIN"],
        ["--cap-add NET_ADMIN", "--unshare-user"],
    )
    # The second fix works: the network namespace then belongs to a user namespace of the launcher's.
    result = subprocess.run(
        [*argv, "--", "--unshare-user", *FULL_LAUNCH], capture_output=True, text=True, timeout=TIMEOUT, cwd="/"
    )
    assert_healthy(result)


def test_seccomp_unavailable(host_launcher: Launcher) -> None:
    """A filter around the caller that refuses seccomp(2) and prctl(PR_SET_SECCOMP)."""
    result = run_check(host_launcher, "--json", env=("seccomp-deny-seccomp",))
    assert_fails(
        result,
        "seccomp",
        "EPERM",
        ["refuses the seccomp system call itself", "SECCOMP_GET_ACTION_AVAIL"],
        ["--security-opt seccomp=unconfined", "Every launch needs it"],
    )
    # Not even a launch without --seccomp-unix-block: every one installs the tty filter.
    result = run_check(host_launcher, "--json", "--", "--ro-bind", "/", "/", env=("seccomp-deny-seccomp",))
    found = findings(result)
    assert result.returncode == 1 and found["seccomp"]["status"] == "fail" and found["launch"]["status"] == "fail"


# ---------------------------------------------------------------- the installed launcher


def test_launcher_without_isolation(host_launcher: Launcher) -> None:
    """A launcher command of the kind pip used to write (a bare #! line, the
    entry point imported at once) runs planted code: check names it."""
    directory = Path(tempfile.mkdtemp(prefix="srt-check-test-"))
    try:
        directory.chmod(0o755)
        interpreter = Path(host_launcher.argv_prefix[0]).parent / "python3"
        first_line = f"#!{interpreter}"
        copy = directory / "srt-launcher"
        copy.write_text(f"{first_line}\nimport sys\nfrom srt_launcher.__main__ import main\nsys.exit(main())\n")
        copy.chmod(0o755)
        result = subprocess.run(
            [str(copy), "check", "--json"], capture_output=True, text=True, timeout=TIMEOUT, **host_launcher.process_kwargs()
        )
        found = assert_fails(
            result,
            "launcher-isolation",
            None,
            [str(copy), "sitecustomize.py on PYTHONPATH", "a package srt_launcher on PYTHONPATH", first_line],
            ["-IS", "pip install"],
        )
        assert found["pid-namespace"]["status"] == "ok"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------- RUN_OPTIONS


def test_run_options_missing_bind_source_and_dead_relay_sockets(host_launcher: Launcher) -> None:
    directory = Path(tempfile.mkdtemp(prefix="srt-check-test-"))
    try:
        directory.chmod(0o755)
        stale = directory / "stale.sock"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(stale))
        listener.close()  # the file stays: a relay that died
        os.chmod(stale, 0o777)
        options = ("--unshare-net", "--ro-bind", "/", "/", "--ro-bind", str(directory / "absent"), "/data",
                   "--relay", "3128", str(stale), "--relay", "1080", str(directory / "none.sock"))
        found = findings(result := run_check(host_launcher, "--json", "--", *options))
        assert result.returncode == 1
        assert found["bind-sources"]["status"] == "fail" and str(directory / "absent") in found["bind-sources"]["cause"]
        relays = found["relay-sockets"]
        assert relays["status"] == "fail" and relays["errno"] == "ECONNREFUSED"
        assert f"--relay 3128 {stale}: connect: Connection refused" in relays["cause"]
        assert f"--relay 1080 {directory / 'none.sock'}: connect: No such file or directory" in relays["cause"]
        assert "srt-launcher relay" in relays["fix"]
        assert found["launch"]["status"] == "fail" and "ro-bind source" in found["launch"]["detail"]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_run_options_naming_caller_descriptors_are_left_out_of_the_launch(host_launcher: Launcher) -> None:
    """--json-status-fd and --seccomp FD name descriptors of the caller's: the launch check runs is made
    without them (their records and programs are the caller's business); an optional bind may be missing."""
    options = ("--json-status-fd", "7", "--ro-bind", "/", "/", "--ro-bind-try", "/nonexistent-srt-check", "/x", "--seccomp", "9")
    found = assert_healthy(run_check(host_launcher, "--json", "--", *options))
    assert found["launch"]["status"] == "ok"
    assert "left out: --json-status-fd, --seccomp" in found["launch"]["detail"]
    assert found["bind-sources"]["status"] == "ok"  # --ro-bind-try: a missing source is skipped
    assert found["seccomp"]["needed"] is True  # a --seccomp program needs filters to install


@pytest.mark.parametrize(
    "args, message",
    [
        (("--", "--relay", "99999", "/x"), "RUN_OPTIONS: --relay: port must be a number from 1 to 65535: 99999"),
        (("--", "--relay", "80", "/x"), "RUN_OPTIONS: --relay needs --unshare-net"),
        (("--", "--bind", "relative", "/x"), "RUN_OPTIONS: --bind: path must be absolute: relative"),
        (("--", "--frobnicate"), "RUN_OPTIONS: unknown option: --frobnicate"),
        (("--bogus",), "No such option"),
        (("foo",), "RUN_OPTIONS: expected an option or --: foo"),
        (("--", "--ro-bind", "/", "/", "--help"), "RUN_OPTIONS: --help is not a launch"),
    ],
)
def test_usage_errors_exit_2(host_launcher: Launcher, args: tuple[str, ...], message: str) -> None:
    before = leftovers()
    result = host_launcher.command("check", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("srt-launcher: ") and message in result.stderr.splitlines()[0]
    assert "Usage: srt-launcher check" in result.stderr
    assert leftovers() == before


def test_help(host_launcher: Launcher) -> None:
    result = host_launcher.command("check", "--help")
    assert result.returncode == 0
    assert "Usage: srt-launcher check [OPTIONS] [-- RUN_OPTIONS...]" in result.stdout
    assert "--json" in result.stdout and "Exit status: 0" in result.stdout


# ---------------------------------------------------------------- probe() for the Python API


PROBE_SCRIPT = """
import json, sys, time
from srt_launcher.check import probe
start = time.monotonic()
result = probe()
elapsed = time.monotonic() - start
print(json.dumps({
    "truthy": bool(result),
    "features": {name: [entry.ok, entry.reason, entry.needed] for name, entry in result.items()},
    "heavy": sorted(m for m in ("pyroute2", "click", "pyseccomp") if m in sys.modules),
    "seconds": elapsed,
}))
"""


def run_probe(launcher: Launcher, env: tuple[str, ...] = ()) -> dict:
    command = [launcher.python, "-I", "-c", PROBE_SCRIPT]
    if env:
        argv = [launcher.python, "-I", str(CHECK_ENV), *env, "--uid", str(launcher.uid), "--", *command]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
    else:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, **launcher.process_kwargs())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_probe_api_on_the_healthy_host(host_launcher: Launcher) -> None:
    answer = run_probe(host_launcher)
    assert answer["truthy"] is True
    for name in ("user-namespace", "mount-namespace", "pid-namespace", "net-namespace", "seccomp", "procfs", "pivot-root"):
        assert answer["features"][name][0] is True, (name, answer["features"][name])
    assert answer["heavy"] == []  # neither pyroute2 nor click nor pyseccomp
    assert "launcher-isolation" not in answer["features"]  # the installed command is not run


def test_probe_api_is_falsy_when_no_sandbox_can_be_made(host_launcher: Launcher) -> None:
    answer = run_probe(host_launcher, env=("seccomp-deny-unshare",))
    assert answer["truthy"] is False
    ok, reason, needed = answer["features"]["user-namespace"]
    assert ok is False and needed is True and "seccomp filter" in reason
    assert answer["features"]["pid-namespace"][0] is False  # not tried


def test_probe_api_stays_truthy_when_only_optional_features_fail(unprivileged_argv: list[str]) -> None:
    # uid 65534 may not create a cgroup here (root may): an optional feature fails for it.
    answer = run_probe(Launcher("unprivileged", unprivileged_argv))
    assert answer["features"]["cgroup-delegation"][0] is False and answer["truthy"] is True


def test_check_runs_as_the_caller_not_as_root(unprivileged_argv: list[str]) -> None:
    found = findings(run_check(Launcher("unprivileged", unprivileged_argv), "--json"))
    assert f"uid {UNPRIVILEGED_UID} and gid {UNPRIVILEGED_GID}" in found["user-namespace"]["detail"]


# ---------------------------------------------------------------- run's errors point at check


def test_a_run_failure_at_a_probed_step_points_at_check(host_launcher: Launcher) -> None:
    """A step `check` probes (here unshare, refused as Docker's profile does) ends
    with the hint; a failure check has nothing to add to (a missing bind source) does not."""
    argv = [
        host_launcher.python, "-I", str(CHECK_ENV), "seccomp-deny-unshare", "--uid", str(host_launcher.uid), "--",
        *host_launcher.argv("run", "--ro-bind", "/", "/", "--", "/bin/true"),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
    assert result.returncode == 125
    assert result.stderr.startswith("srt-launcher: unshare: ") and result.stderr.endswith(": Operation not permitted (srt-launcher check explains)\n"), result.stderr
    result = host_launcher.command("run", "--ro-bind", "/nonexistent-source", "/x", "--", "/bin/true")
    assert result.returncode == 125
    assert result.stderr == "srt-launcher: ro-bind source: /nonexistent-source: No such file or directory\n"
