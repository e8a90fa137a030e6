"""Diagnosis and rendering of `srt-launcher check`, on fake host trees (no root needed).

AppArmor's restriction of user namespaces and WSL 1 cannot be created on the
test machine; what the diagnosis reads of them is the files they leave, so
these tests build those files under a temporary root and give it to
:class:`~srt_launcher.check.host.Host`. The failures that can be made for real
are in tests/test_check.py.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from srt_launcher.check import ProbeResult, Feature
from srt_launcher.check.diagnosis import Context, diagnose
from srt_launcher.check.host import Host
from srt_launcher.check.launch import DEFAULT_OPTIONS, plan_of, probe_of_error
from srt_launcher.check.probes import Outcome
from srt_launcher.check.report import JSON_KEYS, evaluate, exit_status, render_json, render_text
from srt_launcher.errors import PROBED_STEPS

INTERPRETER = "/opt/srt/venv/bin/python3.12"


def fake_host(tmp_path: Path, files: dict[str, str], directories: tuple[str, ...] = ()) -> Host:
    for relative, content in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content + "\n")
    for relative in directories:
        (tmp_path / relative).mkdir(parents=True, exist_ok=True)
    return Host(str(tmp_path))


def ubuntu_2404(tmp_path: Path) -> Host:
    return fake_host(
        tmp_path,
        {
            "proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1",
            "proc/version": "Linux version 6.8.0-31-generic (buildd@lcy02-amd64-080) #31-Ubuntu SMP PREEMPT_DYNAMIC",
        },
        ("sys/kernel/security/apparmor",),
    )


def failed(name: str, step: str, code: int | None, **facts: object) -> Outcome:
    return Outcome(name, "failed", f"{step}: failed", step, code, facts)


# ---------------------------------------------------------------- AppArmor (Ubuntu 23.10+)


def test_apparmor_restriction_takes_the_capabilities(tmp_path: Path) -> None:
    ctx = Context(ubuntu_2404(tmp_path), "user-namespace", INTERPRETER)
    cause, fix = diagnose(failed("userns-capabilities", "unshare(CLONE_NEWUTS)", errno.EPERM), ctx)
    assert "EPERM" in cause and "kernel.apparmor_restrict_unprivileged_userns = 1" in cause
    assert "lets unshare(CLONE_NEWUSER) succeed" in cause
    # The profile, attached to the interpreter, and what that grants.
    assert f"profile srt-launcher {INTERPRETER} flags=(unconfined)" in fix and "userns," in fix
    assert "apparmor_parser -r /etc/apparmor.d/srt-launcher" in fix
    assert f"attaches to the interpreter binary {INTERPRETER}" in fix and "all Python code on the host" in fix
    assert "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0" in fix


@pytest.mark.parametrize(
    "outcome",
    [
        failed("user-namespace", "write /proc/self/uid_map", errno.EPERM, dumpable=1),
        failed("net-namespace", "RTM_NEWADDR 127.0.0.1/8 on lo", errno.EPERM, cap_eff="000001ffffffffff"),
    ],
    ids=["uid_map", "RTM_NEWADDR"],
)
def test_apparmor_restriction_symptoms_are_named(tmp_path: Path, outcome: Outcome) -> None:
    """Ubuntu's two messages: "setting up uid map: Permission denied", "Failed RTM_NEWADDR"."""
    cause, fix = diagnose(outcome, Context(ubuntu_2404(tmp_path), "user-namespace", INTERPRETER))
    assert "apparmor_restrict_unprivileged_userns = 1" in cause
    assert "userns," in fix


def test_apparmor_profile_without_the_restriction(tmp_path: Path) -> None:
    host = fake_host(tmp_path, {"sys/module/apparmor/parameters/enabled": "Y"})
    cause, fix = diagnose(failed("userns-capabilities", "sethostname", errno.EPERM), Context(host, "user-namespace", INTERPRETER))
    assert "AppArmor is active" in cause and "userns," in fix


def test_no_apparmor_no_apparmor_advice(tmp_path: Path) -> None:
    host = fake_host(tmp_path, {"proc/sys/kernel/apparmor_restrict_unprivileged_userns": "0"})
    cause, fix = diagnose(failed("userns-capabilities", "sethostname", errno.EPERM), Context(host, "user-namespace", INTERPRETER))
    assert "userns," not in fix and "apparmor_restrict" not in cause and "audit" in fix


# ---------------------------------------------------------------- WSL


def test_wsl1_has_no_namespaces(tmp_path: Path) -> None:
    host = fake_host(tmp_path, {"proc/version": "Linux version 4.4.0-19041-Microsoft (Microsoft@Microsoft.com) (gcc version 5.4.0 (GCC) ) #1237-Microsoft Sat Sep 11 14:32:00 PST 2021"})
    assert host.wsl() == 1
    cause, fix = diagnose(failed("user-namespace", "unshare(CLONE_NEWUSER)", errno.EINVAL), Context(host))
    assert "WSL 1" in cause and "no namespaces" in cause
    assert "wsl --set-version <distribution> 2" in fix


@pytest.mark.parametrize(
    "version",
    [
        "Linux version 5.15.153.1-microsoft-standard-WSL2 (root@941d701f84f1) (gcc (GCC) 12.2.0)",
        "Linux version 4.19.104-microsoft-standard (oe-user@oe-host) (gcc version 8.2.0 (GCC))",
    ],
)
def test_wsl2_is_a_real_kernel(tmp_path: Path, version: str) -> None:
    host = fake_host(tmp_path, {"proc/version": version})
    assert host.wsl() == 2
    cause, _ = diagnose(failed("user-namespace", "unshare(CLONE_NEWUSER)", errno.EINVAL), Context(host))
    assert "WSL" not in cause and "CONFIG_USER_NS" in cause


def test_plain_linux_is_not_wsl(tmp_path: Path) -> None:
    assert fake_host(tmp_path, {"proc/version": "Linux version 6.18.44 (builder@sandboxing)"}).wsl() is None


# ---------------------------------------------------------------- sysctls and kernels


def test_debian_unprivileged_userns_clone(tmp_path: Path) -> None:
    outcome = failed("user-namespace", "unshare(CLONE_NEWUSER)", errno.EPERM, unshare0_errno=0, unprivileged_userns_clone="0")
    cause, fix = diagnose(outcome, Context(fake_host(tmp_path, {})))
    assert "kernel.unprivileged_userns_clone = 0" in cause
    assert "sysctl -w kernel.unprivileged_userns_clone=1" in fix


def test_nesting_depth(tmp_path: Path) -> None:
    cause, fix = diagnose(failed("user-namespace", "unshare(CLONE_NEWUSER)", errno.EUSERS), Context(fake_host(tmp_path, {})))
    assert "32" in cause and "EUSERS" in cause


def test_initramfs_root_cannot_be_pivoted(tmp_path: Path) -> None:
    cause, fix = diagnose(failed("pivot-root", "pivot_root", errno.EINVAL, root="rootfs"), Context(fake_host(tmp_path, {})))
    assert "initramfs" in cause and "rootfs" in cause and "EINVAL" in cause
    assert "switch_root" in fix


def test_pid_namespace_limit(tmp_path: Path) -> None:
    outcome = failed("pid-namespace", "unshare(CLONE_NEWPID)", errno.ENOSPC, limit="0", unshare0_errno=0)
    cause, fix = diagnose(outcome, Context(fake_host(tmp_path, {})))
    assert "user.max_pid_namespaces = 0" in cause and "sysctl -w user.max_pid_namespaces=" in fix


@pytest.mark.parametrize(
    "name, step, code, cause_words, fix_words",
    [
        ("mount-setattr", "mount_setattr(AT_RECURSIVE)", errno.ENOSYS, "older than 5.12", "falls back"),
        ("landlock", "landlock_create_ruleset", errno.EOPNOTSUPP, "not enabled at boot", "lsm="),
        ("landlock", "landlock_create_ruleset", errno.ENOSYS, "CONFIG_SECURITY_LANDLOCK", "does not use Landlock"),
        ("seccomp", "seccomp(SECCOMP_SET_MODE_FILTER)", errno.EINVAL, "CONFIG_SECCOMP_FILTER", "Every launch needs it"),
        ("mount-namespace", "make / a slave (MS_SLAVE|MS_REC)", errno.EINVAL, "chroot", "outside the chroot"),
    ],
)
def test_kernel_without_a_feature(tmp_path: Path, name: str, step: str, code: int, cause_words: str, fix_words: str) -> None:
    outcome = failed(name, step, code, get_action_avail_errno=0, actions_avail="")
    cause, fix = diagnose(outcome, Context(fake_host(tmp_path, {})))
    assert cause_words in cause and fix_words in fix


# ---------------------------------------------------------------- report


def outcomes_of(states: dict[str, str]) -> dict[str, Outcome]:
    return {
        name: Outcome(name, state, f"{name} detail", None if state != "failed" else "step", None if state != "failed" else errno.EPERM)
        for name, state in states.items()
    }


def test_needed_failures_are_fail_others_warn(tmp_path: Path) -> None:
    plan = plan_of(["--ro-bind", "/", "/"])  # no --unshare-net, --proc, --seccomp-unix-block
    states = {"net-namespace": "failed", "procfs": "failed", "landlock": "failed", "pivot-root": "ok"}
    found = {f.name: f for f in evaluate(outcomes_of(states), plan, Context(fake_host(tmp_path, {})))}
    assert {name: f.status for name, f in found.items()} == {
        "net-namespace": "warn", "procfs": "warn", "landlock": "warn", "pivot-root": "ok"
    }
    assert exit_status(list(found.values())) == 0
    # Every launch needs seccomp (the tty filter), whatever its options.
    states["seccomp"] = "failed"
    found = {f.name: f for f in evaluate(outcomes_of(states), plan, Context(fake_host(tmp_path, {})))}
    assert found["seccomp"].status == "fail" and exit_status(list(found.values())) == 1
    plan = plan_of(None)  # sandbox-runtime's launch needs them
    found = {f.name: f for f in evaluate(outcomes_of(states), plan, Context(fake_host(tmp_path, {})))}
    assert [found[n].status for n in ("net-namespace", "procfs", "seccomp", "landlock")] == ["fail", "fail", "fail", "warn"]
    assert exit_status(list(found.values())) == 1


def test_user_namespace_needed_only_on_its_route(tmp_path: Path) -> None:
    states = {"user-namespace": "failed"}
    for route, status in (("plain", "warn"), ("user-namespace", "fail")):
        (finding,) = evaluate(outcomes_of(states), plan_of(None), Context(fake_host(tmp_path, {}), route))
        assert finding.status == status


def test_json_is_a_list_of_probe_objects(tmp_path: Path) -> None:
    states = {"seccomp": "failed", "pid-namespace": "ok", "procfs": "skipped"}
    findings = evaluate(outcomes_of(states), plan_of(None), Context(fake_host(tmp_path, {})))
    data = json.loads(render_json(findings))
    assert [item["name"] for item in data] == ["pid-namespace", "procfs", "seccomp"]  # probe order
    assert all(list(item) == list(JSON_KEYS) for item in data)
    assert data[2]["status"] == "fail" and data[2]["errno"] == "EPERM" and data[2]["cause"] and data[2]["fix"]
    assert data[1]["status"] == "skip" and data[1]["cause"] is None
    assert data[0] == {"name": "pid-namespace", "status": "ok", "needed": True, "detail": "pid-namespace detail",
                       "step": None, "errno": None, "cause": None, "fix": None}


def test_text_report(tmp_path: Path) -> None:
    states = {"seccomp": "failed", "pid-namespace": "ok", "procfs": "skipped", "landlock": "failed"}
    plan = plan_of(None)
    text = render_text(evaluate(outcomes_of(states), plan, Context(fake_host(tmp_path, {}))), plan, "plain")
    lines = text.splitlines()
    assert "checking: run " + " ".join(DEFAULT_OPTIONS) + " -- /bin/true" in lines[1]
    assert lines[3].split()[:2] == ["ok", "pid-namespace"]
    assert lines[4].split()[:2] == ["skip", "procfs"]
    assert lines[5].split()[:2] == ["FAIL", "seccomp"]
    assert lines[6].split()[:2] == ["warn", "landlock"]
    assert "FAIL seccomp" in lines and "warn landlock (this launch does not need it)" in lines
    assert any(line.startswith("  cause: step failed: Operation not permitted (EPERM)") for line in lines)
    assert lines[-1] == "This launch would NOT work here: seccomp failed."


def test_probe_result_is_truthy_only_when_what_is_needed_works() -> None:
    assert ProbeResult({"pid-namespace": Feature(True, "", None, True), "landlock": Feature(False, "", None, False)})
    assert not ProbeResult({"pid-namespace": Feature(False, "", None, True)})
    assert len(ProbeResult({"a": Feature(False, "", None, False)})) == 1  # a mapping, yet truthy


# ---------------------------------------------------------------- the hint on run errors


@pytest.mark.parametrize(
    "line, probe",
    [
        ("srt-launcher: unshare: user+net: No space left on device", "user-namespace"),
        ("srt-launcher: unshare: pid: Operation not permitted", "pid-namespace"),
        ("srt-launcher: unshare: mount: Operation not permitted", "mount-namespace"),
        ("srt-launcher: user namespace: /proc/self/uid_map <- 1000 1000 1: Operation not permitted", "user-namespace"),
        ("srt-launcher: bring up loopback: lo: Operation not permitted", "net-namespace"),
        ("srt-launcher: make / a slave: /: Invalid argument", "mount-namespace"),
        ("srt-launcher: pivot_root: /tmp: Invalid argument", "pivot-root"),
        ("srt-launcher: proc: /proc: Operation not permitted", "procfs"),
        ("srt-launcher: proc: cover: /proc/sys: Operation not permitted", "procfs"),
        ("srt-launcher: seccomp: install filter: Operation not permitted", "seccomp"),
        ("srt-launcher: ro-bind source: /nope: No such file or directory", None),
    ],
)
def test_launch_errors_point_at_their_probe(line: str, probe: str | None) -> None:
    assert probe_of_error(line) == probe


def test_every_probed_step_has_its_probe() -> None:
    for step in PROBED_STEPS:
        assert probe_of_error(f"srt-launcher: {step}: x: y") is not None or step == "unshare", step
    assert probe_of_error("srt-launcher: unshare: net: y") == "net-namespace"
