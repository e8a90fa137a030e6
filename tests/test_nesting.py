"""A sandbox inside a sandbox (SPEC §7: nesting works).

An unprivileged caller nests freely, /proc included: the covers of /proc
are only made where the workload may be the host's uid 0, since a covered
procfs keeps the kernel from mounting a new one in a user namespace.
A root caller's workload is uid 0 without capabilities, and since Linux
5.12 mapping uid 0 into a new user namespace needs CAP_SETFCAP: the inner
launch fails, naming the uid map, and check explains it.
"""

from __future__ import annotations

from conftest import SYSTEM


def test_an_unprivileged_sandbox_nests_with_its_own_proc(launcher):
    inner = [*launcher.argv("run", *SYSTEM, "--unshare-net"), "--", "/bin/sh", "-c", "echo inner; ls /proc | grep -c '^[0-9]'"]
    result = launcher.run(*SYSTEM, "--", *inner)
    if launcher.unprivileged:
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["inner", "4"]  # PID 1, the shell, ls, grep: the inner PID namespace
    else:
        assert result.returncode == 125
        assert result.stderr == (
            "srt-launcher: user namespace: /proc/self/uid_map <- 0 0 1: Operation not permitted (srt-launcher check explains)\n"
        )


def test_proc_is_still_covered_where_the_workload_is_the_hosts_root(launcher):
    result = launcher.sh("grep -c ' /proc/sys ' /proc/self/mountinfo; echo 1 > /proc/sys/kernel/ns_last_pid")
    if launcher.unprivileged:
        assert result.stdout.split()[0] == "0"  # not covered: not writable by this uid anyway
        assert result.returncode != 0 and "Read-only" not in result.stderr
    else:
        assert result.stdout.split()[0] == "1"
        assert "Read-only file system" in result.stderr
