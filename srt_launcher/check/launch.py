"""``check -- RUN_OPTIONS``: what a given launch needs, and that launch tried end to end.

:func:`plan_of` is the one place that reads ``run``'s command line; the
rest of check sees a :class:`LaunchPlan`. The end-to-end probes: every bind
source exists, every relay's Unix socket accepts a connection, and the
launch itself, run for real with ``/bin/true`` as its command.
"""

from __future__ import annotations

import os
import sys

from srt_launcher.check.probes import Outcome
from srt_launcher.errors import LauncherError

# What sandbox-runtime runs for every command: the launch check asks about
# when no RUN_OPTIONS are given.
DEFAULT_OPTIONS = ("--unshare-net", "--seccomp-unix-block", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev")
_TIMEOUT = 60


class LaunchPlan:
    """What one launch needs from the host."""

    __slots__ = ("options", "given", "dropped", "force_user", "net", "seccomp", "procfs", "binds", "relays")

    def __init__(self, options: list[str], given: bool) -> None:
        self.options = options  # the run options, without `--` and the command
        self.given = given  # False: the default launch above
        self.dropped: list[str] = []  # options left out of the launch (they name the caller's descriptors)
        self.force_user = False
        self.net = False
        self.seccomp = False
        self.procfs = False
        self.binds: list[tuple[str, str]] = []  # (option, source)
        self.relays: list[tuple[int, str]] = []  # (port, Unix socket path)


def plan_of(run_options: list[str] | None) -> LaunchPlan:
    """Parse RUN_OPTIONS with `run`'s own parser (a usage error raises its LauncherError, exit 2).

    The only place check depends on `run`'s command line and its Sandbox.
    """
    from srt_launcher import sandbox
    from srt_launcher.commands import run

    given = run_options is not None
    words = list(run_options if given else DEFAULT_OPTIONS)
    options, dropped = _without_caller_fds(words[: words.index("--")] if "--" in words else words)
    box = run.parse([*options, "--", "/bin/true"])
    assert box is not None  # --help was refused above
    plan = LaunchPlan(options, given)
    plan.dropped = dropped
    plan.force_user = box.user == sandbox.USERNS_YES
    plan.net = bool(box.net)
    plan.seccomp = bool(box.seccomp) or any(option != "--json-status-fd" for option in dropped)
    plan.procfs = any(mount.kind == sandbox.PROC for mount in box.mounts)
    plan.binds = [
        (mount.kind, mount.source) for mount in box.mounts if mount.kind in sandbox.BIND_KINDS and not mount.optional
    ]
    plan.relays = list(box.relays)
    return plan


# Options that name a descriptor of the caller's: the launch check runs
# cannot have it (and --seccomp would consume it), so they are left out of
# it; what they need from the host is probed all the same (seccomp).
_CALLER_FD_OPTIONS = ("--seccomp", "--add-seccomp-fd", "--json-status-fd")


def _without_caller_fds(options: list[str]) -> tuple[list[str], list[str]]:
    from srt_launcher.commands import run

    kept: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(options):
        entry = run.OPTIONS.get(options[i])
        width = 1 + (len(entry[0]) if entry else 0)
        if options[i] in ("--help", "-h"):
            raise LauncherError.usage_error("--help is not a launch")
        if options[i] in _CALLER_FD_OPTIONS:
            dropped.append(options[i])
        else:
            kept.extend(options[i : i + width])
        i += width
    return kept, dropped


def bind_sources(plan: LaunchPlan) -> Outcome:
    missing = []
    for option, source in plan.binds:
        try:
            os.path.realpath(source, strict=True)
        except OSError as err:
            missing.append(f"--{option} {source}: {os.strerror(err.errno) if err.errno else err}")
    if not missing:
        return Outcome("bind-sources", "ok", f"{len(plan.binds)} bind source(s) exist")
    cause = "bind sources the launch cannot resolve on this host: " + "; ".join(missing)
    fix = "Create them, or remove those options: a missing source fails the launch before anything starts."
    return Outcome("bind-sources", "failed", "; ".join(missing), "resolve bind source", None, {"cause": cause, "fix": fix})


def relay_sockets(plan: LaunchPlan) -> Outcome:
    import socket

    refused = []
    for port, path in plan.relays:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(5)
        try:
            sock.connect(path)
        except OSError as err:
            refused.append((port, path, err))
        finally:
            sock.close()
    if not refused:
        return Outcome("relay-sockets", "ok", f"{len(plan.relays)} relay socket(s) accept connections")
    parts = [f"--relay {port} {path}: connect: {os.strerror(err.errno) if err.errno else err}" for port, path, err in refused]
    cause = "relay sockets that do not accept a connection: " + "; ".join(parts)
    fix = (
        "Start what serves each socket before the launch (`srt-launcher relay SOCKET HOST:PORT` for an HTTP or SOCKS "
        "proxy). Connection refused on an existing path: a socket file left by a relay that is gone (remove it and "
        "restart the relay). Permission denied: this user may not write the socket or search its directory."
    )
    code = refused[0][2].errno
    return Outcome("relay-sockets", "failed", "; ".join(parts), "connect", code, {"cause": cause, "fix": fix})


def launcher_argv(script: str | None) -> list[str]:
    return [script] if script else [sys.executable, "-m", "srt_launcher"]


def run_launch(plan: LaunchPlan, script: str | None) -> Outcome:
    """The launch itself, for real, with /bin/true in place of the command."""
    import subprocess

    argv = [*launcher_argv(script), "run", *plan.options, "--", "/bin/true"]
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        return _launch_failed(argv, f"no exit within {_TIMEOUT} s", None)
    except OSError as err:
        return _launch_failed(argv, f"{argv[0]}: {os.strerror(err.errno) if err.errno else err}", None)
    lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
    if result.returncode == 0:
        left_out = f" (left out: {', '.join(plan.dropped)}, which name the caller's descriptors)" if plan.dropped else ""
        return Outcome("launch", "ok", "`run " + " ".join(plan.options) + " -- /bin/true` exited 0" + left_out)
    if result.returncode in (126, 127) and any("exec /bin/true" in line for line in lines):
        return Outcome("launch", "ok", "the sandbox was built; /bin/true is not in its view, so nothing ran in it")
    return _launch_failed(argv, lines[-1] if lines else f"exit status {result.returncode}", result.returncode)


# The probe that covers each step of a launch (srt_launcher.errors.PROBED_STEPS).
_PROBE_OF_STEP = {
    "user namespace": "user-namespace",
    "bring up loopback": "net-namespace",
    "make / a slave": "mount-namespace",
    "staging tmpfs": "pivot-root",
    "staging": "pivot-root",
    "pivot_root": "pivot-root",
    "detach old root": "pivot-root",
    "switch root": "pivot-root",
    "proc": "procfs",
    "proc: cover": "procfs",
    "seccomp": "seccomp",
}
_PROBE_OF_NAMESPACE = {"user": "user-namespace", "net": "net-namespace", "pid": "pid-namespace", "mount": "mount-namespace"}


def probe_of_error(line: str) -> str | None:
    """The probe that explains a launch's one-line error ``srt-launcher: <step>: <value>: <reason>``."""
    parts = line.removeprefix("srt-launcher: ").split(": ")
    step = parts[0]
    if step == "proc" and len(parts) > 1 and parts[1] == "cover":
        step = "proc: cover"
    if step == "unshare" and len(parts) > 1:
        # "user+net": the first namespace named is the one that refused.
        return _PROBE_OF_NAMESPACE.get(parts[1].split("+")[0])
    return _PROBE_OF_STEP.get(step)


def _launch_failed(argv: list[str], error: str, status: int | None) -> Outcome:
    cause = f"the launch failed (exit status {status}): {error}" if status is not None else f"the launch failed: {error}"
    probe = probe_of_error(error)
    if probe:
        fix = f"See {probe} above: it is the step this launch failed at, tried on its own."
    else:
        fix = "The message names the option and the path or value to change."
    return Outcome("launch", "failed", error, "run", None, {"cause": cause, "fix": fix, "status": status, "argv": argv})
