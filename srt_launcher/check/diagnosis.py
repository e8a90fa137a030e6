"""Cause and fix of a failed probe: which mechanism refused, with the errno, and what to change.

Pure functions of the probe's outcome (the step that failed, its errno, the
facts the failing process collected right after the refusal) and of the
host's files (:class:`~srt_launcher.check.host.Host`, a fake tree in tests).
"""

from __future__ import annotations

import errno as E
import os
import sys

from srt_launcher.check.host import Host
from srt_launcher.check.probes import Outcome

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_SETFCAP = 31


class Context:
    """What a diagnosis needs beyond the outcome."""

    def __init__(self, host: Host, route: str = "plain", interpreter: str | None = None) -> None:
        self.host = host
        self.route = route  # "plain" or "user-namespace"
        self.interpreter = interpreter or os.path.realpath(sys.executable)


def errno_name(code: int | None) -> str | None:
    return E.errorcode.get(code) if code else None


def refused(outcome: Outcome) -> str:
    """'<step> failed: <strerror> (<ERRNO>)' — the mechanism's answer, as the kernel gave it."""
    if outcome.errno:
        return f"{outcome.step} failed: {os.strerror(outcome.errno)} ({errno_name(outcome.errno)})"
    return outcome.detail or f"{outcome.step} failed"


def diagnose(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    # Probes outside the chain (isolation, the RUN_OPTIONS checks) know
    # their cause and fix when they fail, and carry them.
    if "cause" in outcome.facts:
        return str(outcome.facts["cause"]), str(outcome.facts["fix"])
    handler = _HANDLERS.get(outcome.name, _generic)
    return handler(outcome, ctx)


def _generic(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    return refused(outcome), "No known cause matches this error; the step and errno above are the kernel's answer."


def _has_cap(outcome: Outcome, cap: int, fact: str = "cap_eff") -> bool:
    try:
        return bool(int(str(outcome.facts.get(fact) or "0"), 16) >> cap & 1)
    except ValueError:
        return False


def _filters(outcome: Outcome) -> str:
    mode = outcome.facts.get("seccomp_mode", "?")
    return f"Seccomp: {mode}, {outcome.facts.get('seccomp_filters', '?')} filter(s) on this process"


# ---------------------------------------------------------------- shared causes


def _seccomp_refuses_unshare(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    cause = (
        f"{refused(outcome)}: a seccomp filter around this process refuses unshare(2) — unshare(0), which the "
        f"kernel always allows, is refused too ({_filters(outcome)}). Docker's and Podman's default profiles do "
        "this in a container without CAP_SYS_ADMIN."
    )
    fix = (
        "Run the container with `--security-opt seccomp=unconfined` (docker, podman), or with a seccomp profile "
        "that also allows unshare, clone with namespace flags, mount, umount2, pivot_root and setns; Kubernetes: "
        "`securityContext.seccompProfile.type: Unconfined`. (`--privileged` lifts it too, but also gives the "
        "container every capability and device.)"
    )
    return cause, fix


def _apparmor_profile(ctx: Context) -> str:
    interpreter = ctx.interpreter
    return (
        "Give the launcher's interpreter an AppArmor profile that allows user namespaces, "
        "/etc/apparmor.d/srt-launcher:\n"
        "  abi <abi/4.0>,\n"
        "  include <tunables/global>\n"
        f"  profile srt-launcher {interpreter} flags=(unconfined) {{\n"
        "    userns,\n"
        "  }\n"
        "then load it: `apparmor_parser -r /etc/apparmor.d/srt-launcher`.\n"
        f"The launcher is a Python script, so the profile attaches to the interpreter binary {interpreter}: every "
        "program that interpreter runs, for every user, then gets user namespaces — for the system's python3, all "
        "Python code on the host. Prefer a dedicated copy (`python3 -m venv --copies DIR`, install the launcher "
        "there, name DIR/bin/python3 in the profile) that only the users who launch sandboxes may execute (a group, "
        "mode 0750).\n"
        "Or lift the restriction for every program: `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` "
        "(and in /etc/sysctl.d/ to keep it)."
    )


def _apparmor(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    if ctx.host.apparmor_restricts_userns():
        cause = (
            f"{refused(outcome)}: AppArmor's restriction of unprivileged user namespaces is on "
            "(kernel.apparmor_restrict_unprivileged_userns = 1, Ubuntu 23.10 and later): it lets "
            "unshare(CLONE_NEWUSER) succeed, then takes every capability inside the new namespace from a "
            "program whose AppArmor profile does not allow `userns`."
        )
    else:
        cause = (
            f"{refused(outcome)}: AppArmor is active and the profile confining this program withholds what a "
            "user namespace needs."
        )
    return cause, _apparmor_profile(ctx)


def _lsm_or_unknown(outcome: Outcome, ctx: Context, what: str) -> tuple[str, str]:
    if ctx.host.apparmor():
        return _apparmor(outcome, ctx)
    cause = f"{refused(outcome)}: {what}"
    fix = (
        "Look for a denial of this process in the kernel and audit logs (`dmesg`, `journalctl -k`, "
        "/var/log/audit/audit.log): a Linux security module (SELinux, AppArmor) refuses it."
    )
    return cause, fix


def _namespace_limit(outcome: Outcome, kind: str) -> tuple[str, str]:
    sysctl = f"user.max_{kind}_namespaces"
    limit = str(outcome.facts.get("limit", "")) or "?"
    where = " (in the user namespace this process runs in)" if outcome.facts.get("in_user_namespace") else ""
    if limit == "0":
        cause = f"{refused(outcome)}: {kind} namespaces are disabled: {sysctl} = 0{where}."
        fix = (
            f"As root: `sysctl -w {sysctl}=15000`, and put `{sysctl} = 15000` in /etc/sysctl.d/ to keep it. "
            "Inside a container whose own user namespace sets 0, its root can raise it there; some distributions "
            "(RHEL/CentOS 7) ship it as 0."
        )
    else:
        cause = (
            f"{refused(outcome)}: the limit on {kind} namespaces is reached: {sysctl} = {limit}{where}, counted "
            "per user in this namespace and in each one that encloses it."
        )
        fix = (
            "End the processes that hold such namespaces (other sandboxes, containers), or raise the limit as "
            f"root: `sysctl -w {sysctl}=<more than {limit}>`."
        )
    return cause, fix


def _unshare_refused(outcome: Outcome, ctx: Context, kind: str) -> tuple[str, str]:
    """unshare(CLONE_NEW<kind>) refused: the causes every namespace shares."""
    code = outcome.errno
    if ctx.host.wsl() == 1:
        cause = f"{refused(outcome)}: this is WSL 1, which translates Linux system calls and has no namespaces at all."
        fix = "Convert the distribution to WSL 2 (a real Linux kernel), from Windows: `wsl --set-version <distribution> 2`."
        return cause, fix
    if code == E.EPERM and outcome.facts.get("unshare0_errno") == E.EPERM:
        return _seccomp_refuses_unshare(outcome, ctx)
    if code == E.ENOSPC:
        return _namespace_limit(outcome, kind)
    if code == E.EINVAL:
        cause = f"{refused(outcome)}: the kernel was built without {kind} namespaces (CONFIG_{kind.upper()}_NS)."
        return cause, f"Use a kernel built with CONFIG_{kind.upper()}_NS=y."
    if code == E.ENOSYS:
        return f"{refused(outcome)}: the kernel has no unshare(2).", "Use a Linux kernel from this century (3.8 or later)."
    if code == E.EPERM and kind != "user":
        return _lsm_or_unknown(outcome, ctx, "the capability this needs (CAP_SYS_ADMIN in the namespace's owner) is missing.")
    return _generic(outcome, ctx)


# ---------------------------------------------------------------- per probe


def _user_namespace(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    if outcome.step == "unshare(CLONE_NEWUSER)":
        if outcome.errno == E.EPERM and outcome.facts.get("unshare0_errno") != E.EPERM and ctx.host.wsl() != 1:
            return _user_namespace_forbidden(outcome, ctx)
        if outcome.errno == E.EUSERS:
            cause = f"{refused(outcome)}: user namespaces nest at most 32 deep, and this process is already that deep."
            return cause, "Run the launcher from a less deeply nested namespace (the kernel's limit cannot be raised)."
        return _unshare_refused(outcome, ctx, "user")
    return _id_maps(outcome, ctx)


def _user_namespace_forbidden(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    if str(outcome.facts.get("unprivileged_userns_clone", "")) == "0":
        cause = (
            f"{refused(outcome)}: the kernel forbids user namespaces to unprivileged users: "
            "kernel.unprivileged_userns_clone = 0."
        )
        fix = (
            "As root: `sysctl -w kernel.unprivileged_userns_clone=1`, and put `kernel.unprivileged_userns_clone = 1` "
            "in /etc/sysctl.d/ to keep it. (Or run the launcher as root with CAP_SYS_ADMIN: it then needs no user namespace.)"
        )
        return cause, fix
    return _lsm_or_unknown(
        outcome,
        ctx,
        "neither a seccomp filter (unshare(0) works) nor kernel.unprivileged_userns_clone explains it; the kernel also "
        "refuses a user namespace to a chrooted process.",
    )


def _id_maps(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    """Writing setgroups, uid_map or gid_map of the new namespace was refused."""
    if outcome.errno == E.EACCES and outcome.facts.get("dumpable") == 0:
        suid_dumpable = outcome.facts.get("suid_dumpable") or "?"
        cause = (
            f"{refused(outcome)}: this process is not dumpable (PR_GET_DUMPABLE = 0), so its /proc/self files "
            "belong to root and it may not write its own setgroups, uid_map and gid_map. A process becomes so "
            f"when it changes uid or gid without exec'ing since (fs.suid_dumpable = {suid_dumpable}): a service "
            "started as root that called setuid(), or a setuid/setgid program."
        )
        fix = (
            "Start the launcher, or the code that calls srt_launcher, as a new program after the change of "
            "identity (subprocess with user= and group=, setpriv, su, systemd's User=) instead of in the process "
            "that called setuid(); or call prctl(PR_SET_DUMPABLE, 1) there once it holds nothing secret."
        )
        return cause, fix
    if outcome.errno == E.EPERM and outcome.facts.get("uid") == 0 and not _has_cap(outcome, CAP_SETFCAP, "cap_eff_before"):
        cause = (
            f"{refused(outcome)}: this process is uid 0 without CAP_SETFCAP, and since Linux 5.12 only a process "
            "holding CAP_SETFCAP may map uid 0 into a user namespace (file capabilities written inside would "
            "count outside). A root without capabilities: inside another sandbox, or a container that dropped them."
        )
        fix = (
            "Run the launcher as a non-root user (its uid is then mapped, not 0), or give the caller CAP_SETFCAP "
            "(docker, podman: `--cap-add SETFCAP`; it is in Docker's default set)."
        )
        return cause, fix
    if outcome.errno == E.EPERM and ctx.host.apparmor():
        return _apparmor(outcome, ctx)
    if outcome.errno == E.EROFS:
        fix = "Mount /proc read-write (a container runtime option), or run as root with CAP_SYS_ADMIN."
        return f"{refused(outcome)}: /proc is mounted read-only here.", fix
    return _lsm_or_unknown(
        outcome,
        ctx,
        "an unprivileged process may map only its own uid, and its own gid after setgroups=deny; real and "
        "effective ids must be equal.",
    )


def _userns_capabilities(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    if outcome.errno == E.EPERM:
        return _lsm_or_unknown(outcome, ctx, "the new user namespace holds no capability: a security module took them.")
    return _generic(outcome, ctx)


def _net_namespace(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    if (outcome.step or "").startswith("unshare"):
        return _unshare_refused(outcome, ctx, "net")
    if outcome.errno == E.EPERM and ctx.route == "plain" and not _has_cap(outcome, CAP_NET_ADMIN):
        cause = (
            f"{refused(outcome)}: this process holds CAP_SYS_ADMIN, so it could create the network namespace, but "
            "not CAP_NET_ADMIN, which configuring its interfaces needs: the namespace belongs to the caller's user "
            "namespace, where that capability is missing (a container started without it, or a capability "
            "bounding set without it)."
        )
        fix = (
            "Give the caller CAP_NET_ADMIN (docker, podman: `--cap-add NET_ADMIN`), or add `--unshare-user` to the "
            "run options: the network namespace then belongs to a new user namespace, in which the launcher holds "
            "every capability."
        )
        return cause, fix
    if outcome.errno == E.EPERM:
        return _lsm_or_unknown(outcome, ctx, "the network namespace's owner grants no CAP_NET_ADMIN to this process.")
    return _generic(outcome, ctx)


def _pid_namespace(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    if (outcome.step or "").startswith("unshare"):
        return _unshare_refused(outcome, ctx, "pid")
    return _generic(outcome, ctx)


def _mount_namespace(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    if (outcome.step or "").startswith("unshare"):
        return _unshare_refused(outcome, ctx, "mnt")
    if outcome.errno == E.EINVAL:
        cause = f"{refused(outcome)}: the root of this process is not a mount point — it runs in a chroot."
        fix = "Run the launcher outside the chroot, or bind-mount the chroot's directory onto itself before chroot'ing into it."
        return cause, fix
    return _generic(outcome, ctx)


def _pivot_root(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    if outcome.errno == E.EINVAL and outcome.facts.get("root") == "rootfs":
        cause = (
            f"{refused(outcome)}: the system runs from its initramfs: / is the kernel's rootfs, which pivot_root(2) "
            "can never move."
        )
        fix = (
            "Boot into a real root filesystem, or have the initramfs's init copy itself onto a tmpfs and "
            "`switch_root` into it before starting anything (the usual fix on diskless systems and minimal VMs)."
        )
        return cause, fix
    if outcome.errno == E.EPERM:
        why = (
            "mounting is refused here (Docker's default seccomp profile refuses mount and pivot_root to a "
            "container without CAP_SYS_ADMIN)."
        )
        return _lsm_or_unknown(outcome, ctx, why)
    return _generic(outcome, ctx)


def _procfs(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    fix = (
        "Use `--host-proc /proc` instead of `--proc /proc`: a read-only bind of the /proc this process has, with "
        "the same covers."
    )
    covered = outcome.facts.get("covered") or []
    if outcome.errno == E.EPERM and outcome.facts.get("in_user_namespace") and covered:
        cause = (
            f"{refused(outcome)}: in a user namespace the kernel mounts a new procfs only if a procfs is already "
            "fully visible there, and every procfs this process sees has something mounted over part of it, as "
            "container runtimes do to hide /proc/kcore, /proc/sys…. Mounted over the procfs at "
            + "; over the procfs at ".join(covered) + "."
        )
        fix += (
            " Or give the container an unmasked /proc: docker, podman `--security-opt systempaths=unconfined` "
            "(podman also `--security-opt unmask=ALL`); or launch as root with CAP_SYS_ADMIN and without "
            "--unshare-user, a mount this rule does not apply to."
        )
        return cause, fix
    if outcome.errno == E.EPERM and outcome.facts.get("in_user_namespace"):
        cause = (
            f"{refused(outcome)}: in a user namespace the kernel mounts a new procfs only if a procfs is already "
            "fully visible there, and none is."
        )
        return cause, fix
    cause, _ = _generic(outcome, ctx)
    return cause, fix


def _seccomp(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    code = outcome.errno
    without = (
        " Every launch needs it: the launcher refuses TIOCSTI and TIOCLINUX to every workload with a seccomp"
        " filter, and fails closed rather than launch without it."
    )
    if outcome.step == "load the filter":
        fix = "Reinstall the launcher (`make setup`): its filter blobs ship inside the package."
        return f"the launcher's seccomp filter cannot be loaded: {outcome.detail}", fix
    if code is None:
        return refused(outcome), "Reinstall the launcher (`make setup`): the installed filter blob does not do what it should."
    if code == outcome.facts.get("get_action_avail_errno"):
        cause = (
            f"{refused(outcome)}: a seccomp filter around this process refuses the seccomp system call itself "
            f"(seccomp(SECCOMP_GET_ACTION_AVAIL) is refused too; {_filters(outcome)})."
        )
        fix = (
            "Let the process install filters of its own: docker, podman `--security-opt seccomp=unconfined`, or "
            "a profile that allows seccomp and prctl(PR_SET_SECCOMP)." + without
        )
        return cause, fix
    if code == E.EINVAL and not outcome.facts.get("actions_avail"):
        cause = f"{refused(outcome)}: the kernel was built without seccomp filters (CONFIG_SECCOMP_FILTER)."
        return cause, "Use a kernel built with CONFIG_SECCOMP_FILTER=y." + without
    if code == E.ENOSYS:
        cause = f"{refused(outcome)}: the kernel has no seccomp(2) (CONFIG_SECCOMP)."
        return cause, "Use a kernel built with CONFIG_SECCOMP=y and CONFIG_SECCOMP_FILTER=y." + without
    cause, _ = _generic(outcome, ctx)
    return cause, "Look for a denial of this process in the kernel and audit logs." + without


def _landlock(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    unused = " srt-launcher does not use Landlock today: its launches need nothing here."
    if outcome.errno == E.EOPNOTSUPP:
        cause = f"{refused(outcome)}: Landlock is built into the kernel but not enabled at boot."
        fix = "Add landlock to the `lsm=` kernel parameter (e.g. `lsm=landlock,lockdown,yama,integrity,apparmor`)."
        return cause, fix + unused
    if outcome.errno == E.ENOSYS:
        cause = f"{refused(outcome)}: the kernel has no Landlock (CONFIG_SECURITY_LANDLOCK)."
        return cause, "Use a kernel of 5.13 or later built with CONFIG_SECURITY_LANDLOCK=y." + unused
    cause, fix = _generic(outcome, ctx)
    return cause, fix + unused


def _cgroup_delegation(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    unused = " srt-launcher does not use cgroups today: its launches need nothing here."
    if not outcome.facts.get("v2"):
        return outcome.detail, "Boot with cgroup v2 (`systemd.unified_cgroup_hierarchy=1`)." + unused
    if outcome.errno == E.EROFS:
        cause = f"{outcome.detail}: cgroups cannot be created from here."
        return cause, "Mount the cgroup2 filesystem read-write where the launcher runs (a container: `--cgroupns=private` with cgroup v2)." + unused
    if outcome.errno == E.EACCES:
        cause = f"{outcome.detail}: no cgroup subtree is delegated to this user."
        fix = (
            "Run under a delegated scope: `systemd-run --user --scope -p Delegate=yes srt-launcher …`; or have root "
            f"create a cgroup below {outcome.facts.get('directory')} and chown it, with its cgroup.procs and "
            "cgroup.subtree_control, to the user." + unused
        )
        return cause, fix
    return outcome.detail, "Check how cgroup2 is mounted here (`findmnt -t cgroup2`)." + unused


def _mount_setattr(outcome: Outcome, ctx: Context) -> tuple[str, str]:
    if outcome.errno == E.ENOSYS:
        return (
            f"{refused(outcome)}: the kernel is older than 5.12, which added mount_setattr(2).",
            "Nothing to do: the launcher falls back to one remount per submount, read from mountinfo (a little "
            "slower, the same result).",
        )
    return _generic(outcome, ctx)


_HANDLERS = {
    "user-namespace": _user_namespace,
    "userns-capabilities": _userns_capabilities,
    "net-namespace": _net_namespace,
    "pid-namespace": _pid_namespace,
    "mount-namespace": _mount_namespace,
    "pivot-root": _pivot_root,
    "procfs": _procfs,
    "seccomp": _seccomp,
    "landlock": _landlock,
    "cgroup-delegation": _cgroup_delegation,
    "mount-setattr": _mount_setattr,
}
