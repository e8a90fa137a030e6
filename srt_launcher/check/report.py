"""From outcomes to findings (ok / warn / FAIL / skip), and their two renderings.

A probe's failure is FAIL when the launch needs what it probes, warn when
not (cgroups, Landlock and mount_setattr never fail a launch; a user
namespace is not needed by a caller with CAP_SYS_ADMIN unless
``--unshare-user``). A probe not tried because an earlier one failed is
skip. ``check`` exits 0 when no finding is FAIL.

The JSON rendering is a stable interface (documented in the README): a
list, in probe order, of objects with exactly the keys of
:data:`JSON_KEYS`.
"""

from __future__ import annotations

import os

from srt_launcher.check.diagnosis import Context, diagnose, errno_name
from srt_launcher.check.launch import LaunchPlan
from srt_launcher.check.probes import Outcome

ORDER = (
    "user-namespace",
    "userns-capabilities",
    "net-namespace",
    "pid-namespace",
    "mount-namespace",
    "pivot-root",
    "procfs",
    "seccomp",
    "mount-setattr",
    "landlock",
    "cgroup-delegation",
    "launcher-isolation",
    "bind-sources",
    "relay-sockets",
    "launch",
    "internal",  # a probe process that failed in an unexpected way
)
NEVER_NEEDED = {"mount-setattr", "landlock", "cgroup-delegation"}
JSON_KEYS = ("name", "status", "needed", "detail", "step", "errno", "cause", "fix")


class Finding:
    __slots__ = ("name", "status", "needed", "detail", "step", "errno", "cause", "fix")

    def __init__(self, outcome: Outcome, needed: bool, cause: str | None, fix: str | None) -> None:
        self.name = outcome.name
        self.needed = needed
        if outcome.state == "ok":
            self.status = "ok"
        elif outcome.state == "skipped":
            self.status = "skip"
        else:
            self.status = "fail" if needed else "warn"
        self.detail = outcome.detail
        self.step = outcome.step
        self.errno = errno_name(outcome.errno)
        self.cause = cause
        self.fix = fix

    def as_json(self) -> dict:
        return {key: getattr(self, key) for key in JSON_KEYS}


def needed(name: str, plan: LaunchPlan, route: str) -> bool:
    """Whether the launch of ``plan`` fails when probe ``name`` fails."""
    if name in NEVER_NEEDED:
        return False
    if name in ("user-namespace", "userns-capabilities"):
        return route == "user-namespace"
    if name == "net-namespace":
        return plan.net
    if name == "seccomp":
        return True  # every launch installs the tty filter (TIOCSTI, TIOCLINUX)
    if name == "procfs":
        return plan.procfs
    return True


def evaluate(outcomes: dict[str, Outcome], plan: LaunchPlan, ctx: Context) -> list[Finding]:
    findings = []
    for name in ORDER:
        outcome = outcomes.get(name)
        if outcome is None:
            continue
        cause = fix = None
        if outcome.state == "failed":
            cause, fix = diagnose(outcome, ctx)
        findings.append(Finding(outcome, needed(name, plan, ctx.route), cause, fix))
    return findings


def exit_status(findings: list[Finding]) -> int:
    return 1 if any(finding.status == "fail" for finding in findings) else 0


def render_json(findings: list[Finding]) -> str:
    import json

    return json.dumps([finding.as_json() for finding in findings], indent=2) + "\n"


_LABEL = {"ok": "ok", "warn": "warn", "fail": "FAIL", "skip": "skip"}
_WIDTH = 100


def render_text(findings: list[Finding], plan: LaunchPlan, route: str) -> str:
    lines = [_header(plan, route), ""]
    for finding in findings:
        lines.append(f"{_LABEL[finding.status]:<5} {finding.name:<20} {finding.detail}")
    for finding in findings:
        if finding.status in ("fail", "warn") and finding.cause:
            lines.append("")
            needed_note = "" if finding.needed else " (this launch does not need it)"
            lines.append(f"{_LABEL[finding.status]} {finding.name}{needed_note}")
            lines.extend(_paragraphs("cause: ", finding.cause))
            lines.extend(_paragraphs("fix:   ", finding.fix or ""))
    failed = [finding.name for finding in findings if finding.status == "fail"]
    lines.append("")
    if failed:
        lines.append(f"This launch would NOT work here: {', '.join(failed)} failed.")
    else:
        lines.append("This launch would work here.")
    return "\n".join(lines) + "\n"


def _header(plan: LaunchPlan, route: str) -> str:
    what = "run " + " ".join(plan.options) + " -- /bin/true"
    if plan.given:
        what += " (the given options, with /bin/true as the command)"
    else:
        what += " (sandbox-runtime's launch; pass `-- RUN_OPTIONS` to check another)"
    if route == "plain":
        how = "plain unshare (this caller has CAP_SYS_ADMIN)"
    elif plan.force_user:
        how = "a user namespace (--unshare-user)"
    else:
        how = "a user namespace (this caller has no CAP_SYS_ADMIN)"
    uname = os.uname()
    return (
        f"srt-launcher check: uid {os.getuid()}, Linux {uname.release} {uname.machine}; namespaces through {how}\n"
        f"checking: {what}"
    )


def _paragraphs(label: str, text: str) -> list[str]:
    """Wrap prose; keep lines that start with two spaces (a file's content) as they are."""
    import textwrap

    out = []
    indent = " " * (2 + len(label))
    first = True
    for line in text.split("\n"):
        prefix = "  " + label if first else indent
        if line.startswith("  "):
            out.append(indent + line)
        else:
            wrapped = textwrap.wrap(line, _WIDTH, initial_indent=prefix, subsequent_indent=indent, break_on_hyphens=False)
            out.extend(wrapped or [prefix])
        first = False
    return out
