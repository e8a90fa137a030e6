"""The bubblewrap front end against Debian's bubblewrap (SPEC §7): same command line, same result.

Each case is a shell script that runs ``$B`` (the bwrap under test) the way
a caller would, file descriptors and all; it runs once with Debian's
bubblewrap (0.8) and once with ours, invoked through a symlink named
``bwrap``, as root and as uid 65534, and the exit status, stdout and stderr
must be the same (the program's path is the only thing replaced). The
options bubblewrap gained after 0.8 are checked against the 0.11.1 source
and manual in tests/test_bwrap_behaviour.py.

What differs by design (docs/bwrap.md) is left out of the scripts: the
nodes of --dev are read-only binds here, a uid-0 command's inheritable and
ambient capability sets.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Launcher, scratch_dir

TIMEOUT = 60
SANDBOX = "--ro-bind / / --dev /dev"
# The caller's namespaces, passed in: the namespaces the sandbox has and they do not are new.
OUTSIDE = 'N=$(for n in net ipc uts cgroup; do readlink /proc/self/ns/$n; done);'
NEW = 'for n in net ipc uts cgroup; do readlink /proc/self/ns/$n; done | grep -vxF "$0" | cut -d: -f1'

# (id, script). $B is the bwrap under test; $D a scratch directory the caller owns.
CASES = [
    # ---- exit statuses and exec
    ("true", "$B --ro-bind / / true"),
    ("exit status", "$B --ro-bind / / sh -c 'exit 7'"),
    ("killed by a signal", "$B --ro-bind / / sh -c 'kill -9 $$'"),
    ("command not found", "$B --ro-bind / / no-such-command"),
    ("command not executable", "$B --ro-bind / / /etc/passwd"),
    ("command searched in the sandbox's PATH", "$B --ro-bind / / --setenv PATH /nowhere true"),
    ("args as given", "$B --ro-bind / / printf '[%s]' a 'b c' '' --ro-bind"),
    # ---- parsing
    ("unknown option", "$B --bogus true"),
    ("unknown short option", "$B -x true"),
    ("option=value", "$B --chdir=/ true"),
    ("missing values", "$B --ro-bind /"),
    ("missing values of bind-fd", "$B --ro-bind-fd 3"),
    ("double dash", "$B --ro-bind / / -- sh -c 'echo ok'"),
    ("bad fd", "$B --ro-bind / / --sync-fd 3x true"),
    ("negative fd", "$B --ro-bind / / --sync-fd -1 true"),
    ("fd with spaces", "$B --ro-bind / / --sync-fd ' 1' true"),
    ("bad uid", "$B --ro-bind / / --unshare-user --uid x true"),
    ("repeated chdir", "$B --ro-bind / / --chdir /tmp --chdir /etc pwd"),
    ("repeated hostname", "$B --ro-bind / / --unshare-uts --hostname a --hostname b hostname"),
    ("perms twice", "$B --ro-bind / / --perms 0700 --perms 0700 --tmpfs /tmp true"),
    ("perms not followed by a file", "$B --ro-bind / / --perms 0700 --ro-bind / / true"),
    ("perms not octal", "$B --ro-bind / / --perms 8 --dir /x true"),
    ("perms too large", "$B --ro-bind / / --perms 010000 --dir /x true"),
    ("perms before the command", "$B --ro-bind / / --perms 0700 -- true"),
    ("size zero", "$B --ro-bind / / --size 0 --tmpfs /x true"),
    ("size with a suffix", "$B --ro-bind / / --size 1k --tmpfs /x true"),
    ("size twice", "$B --ro-bind / / --size 100 --size 100 --tmpfs /x true"),
    ("size not followed by tmpfs", "$B --ro-bind / / --size 100 --dir /x true"),
    ("chmod not octal", "$B --ro-bind / / --chmod 9 /tmp true"),
    ("unknown capability", "$B --ro-bind / / --cap-add bogus true"),
    ("setenv name with =", "$B --ro-bind / / --setenv A=B c true"),
    ("exec label", "$B --ro-bind / / --exec-label system_u:system_r:x:s0 true"),
    ("file label", "$B --ro-bind / / --file-label system_u:object_r:x:s0 true"),
    ("args from a bad fd", "$B --ro-bind / / --args 99 true"),
    ("args not a number", "$B --ro-bind / / --args x true"),
    ("args", "printf -- '--ro-bind\\0/\\0/\\0--setenv\\0X\\0from args\\0' >$D/a; $B --args 3 sh -c 'echo $X' 3<$D/a"),
    ("args without a final NUL", "printf -- '--ro-bind\\0/\\0/\\0--chdir\\0/etc' >$D/a; $B --args 3 pwd 3<$D/a"),
    ("args value continues in argv", "printf -- '--ro-bind\\0/\\0/\\0--chdir' >$D/a; $B --args 3 /etc pwd 3<$D/a"),
    ("args command is dropped", "printf -- '--ro-bind\\0/\\0/\\0false\\0' >$D/a; $B --args 3 echo argv 3<$D/a"),
    ("args double dash then argv", "printf -- '--ro-bind\\0/\\0/\\0--\\0false\\0' >$D/a; $B --args 3 echo argv 3<$D/a"),
    ("args in args", "printf -- '--ro-bind\\0/\\0/\\0--args\\0004\\0' >$D/a; $B --args 3 true 3<$D/a"),
    ("9000 words", "$B $(for i in $(seq 8997); do printf -- '--clearenv '; done) --ro-bind / / true"),
    ("9001 words", "$B $(for i in $(seq 8998); do printf -- '--clearenv '; done) --ro-bind / / true"),
    # ---- main()'s checks
    ("hostname without uts", "$B --ro-bind / / --hostname h true"),
    ("uid without a user namespace", "$B --ro-bind / / --uid 12345 true"),
    ("gid without a user namespace", "$B --ro-bind / / --gid 12345 true"),
    ("as-pid-1 without a pid namespace", "$B --ro-bind / / --as-pid-1 true"),
    ("as-pid-1 with a lock file", "$B --ro-bind / / --unshare-pid --as-pid-1 --lock-file /etc/passwd true"),
    ("userns-block-fd without unshare-user", "$B --ro-bind / / --userns-block-fd 5 true"),
    ("userns-block-fd without info-fd", "$B --ro-bind / / --unshare-user --userns-block-fd 5 true"),
    ("userns with unshare-user", "$B --ro-bind / / --userns 5 --unshare-user true"),
    ("disable-userns without unshare-user", "$B --ro-bind / / --disable-userns true"),
    ("seccomp with add-seccomp-fd", "$B --ro-bind / / --seccomp 5 --add-seccomp-fd 6 true"),
    # ---- filesystem
    ("missing source", "$B --ro-bind /nonexistent /x true"),
    ("missing source of bind-try", "$B --bind-try /nonexistent /x --ro-bind / / true"),
    ("relative source and destination", "cd /usr && $B --ro-bind / / --tmpfs tmp --ro-bind share tmp/s ls -d /tmp/s/doc"),
    ("ro-bind is read-only", "$B --ro-bind / / touch /etc/x"),
    ("bind is writable", f"$B {SANDBOX} --bind $D $D sh -c 'echo x > $D/f && cat $D/f'"),
    ("ro-bind over bind", f"$B {SANDBOX} --bind $D $D --ro-bind $D $D touch $D/g"),
    ("bind is nodev", "$B --ro-bind / / --bind /dev /dev sh -c 'echo x > /dev/null'"),
    ("dev-bind allows devices", "$B --ro-bind / / --dev-bind /dev /dev sh -c 'echo x > /dev/null && echo ok'"),
    ("tmpfs", f"$B {SANDBOX} --tmpfs /tmp sh -c 'stat -c \"%a %U %G\" /tmp; ls -A /tmp; grep \" /tmp \" /proc/self/mounts | cut -d\" \" -f3,4'"),
    ("tmpfs perms and size", f"$B {SANDBOX} --perms 01777 --size 1048576 --tmpfs /tmp sh -c 'stat -c %a /tmp; grep \" /tmp \" /proc/self/mounts | cut -d\" \" -f4'"),
    ("dir", f"$B {SANDBOX} --tmpfs /tmp --dir /tmp/a/b --perms 0700 --dir /tmp/c/d stat -c '%n %a' /tmp/a /tmp/a/b /tmp/c /tmp/c/d"),
    ("dir under a read-only bind", "$B --ro-bind / / --dir /etc/nope true"),
    ("file", f"$B {SANDBOX} --tmpfs /tmp --file 3 /tmp/f --perms 0640 --file 4 /tmp/g/h sh -c 'stat -c \"%n %a %s\" /tmp/f /tmp/g /tmp/g/h; cat /tmp/f' 3<<<hello 4</dev/null"),
    ("file from a bad fd", f"$B {SANDBOX} --tmpfs /tmp --file 9 /tmp/f true"),
    ("bind-data", f"$B {SANDBOX} --bind-data 3 /etc/hostname sh -c 'stat -c \"%a %s\" /etc/hostname; cat /etc/hostname; echo x >> /etc/hostname && echo appended' 3<<<hello"),
    ("ro-bind-data", f"$B {SANDBOX} --perms 0644 --ro-bind-data 3 /etc/hostname --ro-bind-data 4 /etc/motd sh -c 'stat -c %a /etc/hostname /etc/motd; cat /etc/hostname /etc/motd; echo x > /etc/hostname' 3<<<hello 4<<<world"),
    ("bind-data parents", f"$B {SANDBOX} --tmpfs /tmp --bind-data 3 /tmp/a/b/f stat -c '%n %a' /tmp/a /tmp/a/b 3</dev/null"),
    ("bind-fd", f"$B {SANDBOX} --tmpfs /tmp --bind-fd 3 /tmp/x ls /tmp/x/passwd 3</etc"),
    ("ro-bind-fd", f"$B {SANDBOX} --tmpfs /tmp --ro-bind-fd 3 /tmp/x sh -c 'grep \" /tmp/x \" /proc/self/mounts | cut -d\" \" -f4 | cut -d, -f1' 3</usr"),
    ("bind-fd of a bad fd", "$B --ro-bind / / --bind-fd 9 /tmp/x true"),
    ("symlink", f"$B {SANDBOX} --tmpfs /tmp --symlink /target /tmp/l --symlink rel /tmp/m sh -c 'readlink /tmp/l /tmp/m'"),
    ("chmod", f"$B {SANDBOX} --tmpfs /tmp --chmod 1777 /tmp stat -c %a /tmp"),
    ("chmod read-only", "$B --ro-bind / / --chmod 0700 /tmp true"),
    ("chmod missing", "$B --ro-bind / / --chmod 0700 /nonexistent true"),
    ("remount-ro", f"$B {SANDBOX} --tmpfs /tmp --remount-ro /tmp touch /tmp/x"),
    ("remount-ro of no mount", "$B --ro-bind / / --remount-ro /etc true"),
    ("proc of a new pid namespace", f"$B {SANDBOX} --unshare-pid --proc /proc sh -c 'echo $$; ls -d /proc/[12]; test -e /proc/$0 || echo caller hidden' $$"),
    ("proc is nosuid nodev noexec", f"$B {SANDBOX} --unshare-pid --proc /proc sh -c 'grep \"^proc /proc \" /proc/self/mounts | cut -d\" \" -f4'"),
    ("proc without a pid namespace is the host's", f"$B {SANDBOX} --proc /proc test -d /proc/$$"),
    ("proc sysrq-trigger", f"$B {SANDBOX} --unshare-pid --proc /proc sh -c 'echo h > /proc/sysrq-trigger' 2>&1 | sed 's/^.*: //'"),
    ("dev", f"$B --ro-bind / / --dev /dev sh -c 'ls -A /dev; readlink /dev/fd /dev/stdin /dev/ptmx /dev/core; echo x > /dev/null; head -c 4 /dev/zero | wc -c; stat -c %a /dev/shm /dev/pts'"),
    ("dev pts", f"$B --ro-bind / / --dev /dev sh -c 'grep \" /dev/pts \" /proc/self/mounts | tail -1 | cut -d\" \" -f4'"),
    ("mqueue", f"$B {SANDBOX} --unshare-ipc --mqueue /dev/mqueue sh -c 'grep mqueue /proc/self/mounts | cut -d\" \" -f1-3'"),
    ("mount order", f"$B {SANDBOX} --tmpfs /tmp --dir /tmp/a --tmpfs /tmp ls -A /tmp"),
    # ---- namespaces and identity
    ("no namespaces asked for", f"$B {SANDBOX} sh -c 'for n in net ipc uts cgroup pid; do [ $(readlink /proc/self/ns/$n) = $(readlink /proc/$PPID/ns/$n) ] && echo shared $n; done; true'"),
    ("namespaces asked for", f"{OUTSIDE} $B {SANDBOX} --unshare-net --unshare-ipc --unshare-uts --unshare-cgroup-try sh -c '{NEW}' sh \"$N\""),
    ("unshare-all", f"$B {SANDBOX} --unshare-all --proc /proc sh -c 'echo $$; ls /sys/class/net'"),
    ("unshare-all share-net", f"$B {SANDBOX} --unshare-all --share-net sh -c 'ls /sys/class/net | grep -c .'"),
    ("unshare-net", f"$B {SANDBOX} --unshare-net cat /proc/net/dev"),
    ("unshare-uts hostname", f"$B {SANDBOX} --unshare-uts --hostname sandbox-name hostname"),
    # Without --dev: bubblewrap then maps the caller's ids directly, as we always do (docs/bwrap.md).
    ("unshare-user id", "$B --ro-bind / / --unshare-user sh -c 'id; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups'"),
    ("uid and gid", f"$B {SANDBOX} --unshare-user --uid 1234 --gid 5678 id"),
    ("uid 0 capabilities", f"$B {SANDBOX} --unshare-user --uid 0 sh -c 'id -u; grep -E \"^Cap(Prm|Eff|Bnd)\" /proc/self/status'"),
    ("unshare-user-try", f"$B {SANDBOX} --unshare-user-try id -u"),
    ("unshare-cgroup", f"$B {SANDBOX} --unshare-cgroup cat /proc/self/cgroup"),
    ("unshare-cgroup-try", f"{OUTSIDE} $B {SANDBOX} --unshare-cgroup-try sh -c '{NEW}' sh \"$N\""),
    ("disable-userns", f"$B {SANDBOX} --unshare-user --disable-userns sh -c 'cat /proc/sys/user/max_user_namespaces; unshare -U true 2>&1; echo $?'"),
    ("assert-userns-disabled", f"$B {SANDBOX} --unshare-user --assert-userns-disabled true"),
    ("as-pid-1", f"$B {SANDBOX} --unshare-pid --as-pid-1 sh -c 'echo $$'"),
    ("pid 1 reaps", f"$B {SANDBOX} --unshare-pid sh -c 'echo $$; echo $PPID'"),
    # ---- capabilities
    # The bounding set of a root caller without a user namespace is left out
    # (bubblewrap leaves it full, we limit it to what is kept: docs/bwrap.md).
    ("capabilities", f"$B {SANDBOX} grep -E '^Cap(Prm|Eff|Bnd)' /proc/self/status"),
    ("cap-drop", f"$B {SANDBOX} --cap-drop CAP_NET_RAW --cap-drop cap_sys_admin grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status"),
    ("cap-drop all, cap-add one", f"$B {SANDBOX} --cap-drop ALL --cap-add CAP_CHOWN grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status"),
    ("cap-add in a user namespace", f"$B {SANDBOX} --unshare-user --cap-add CAP_SYS_ADMIN --cap-add cap_net_admin grep ^Cap /proc/self/status"),
    ("cap-add all", f"$B {SANDBOX} --unshare-user --cap-add ALL grep ^Cap /proc/self/status"),
    ("cap names as libcap reads them", f"$B {SANDBOX} --cap-drop all --cap-add Cap_Kill,x --cap-add 0x15 grep ^CapEff /proc/self/status"),
    # ---- environment and directory
    ("setenv unsetenv", f"$B {SANDBOX} --setenv A 1 --unsetenv HOME --setenv B 'two words' sh -c 'echo \"$A $B ${{HOME-unset}}\"'"),
    ("clearenv", f"$B {SANDBOX} --setenv A 1 --clearenv --setenv B 2 env"),
    ("chdir", f"$B {SANDBOX} --chdir /etc sh -c 'pwd; echo $PWD'"),
    ("chdir missing", f"$B {SANDBOX} --chdir /nonexistent true"),
    ("cwd kept when visible", f"cd /usr/share && $B {SANDBOX} sh -c 'pwd; echo $PWD'"),
    ("cwd not visible: HOME", f"cd $D && $B {SANDBOX} --setenv HOME /etc --tmpfs $D sh -c 'pwd'"),
    ("cwd and HOME not visible: /", f"cd $D && $B {SANDBOX} --setenv HOME $D --tmpfs /tmp --tmpfs $D/.. pwd"),
    # ---- descriptors
    ("caller's fds reach the command", f"$B {SANDBOX} sh -c 'cat <&3' 3<<<inherited"),
    ("sync-fd kept by pid 1, not the command", f"$B {SANDBOX} --sync-fd 3 sh -c 'ls /proc/self/fd | sort -n | tr \"\\n\" \" \"' 3</dev/null"),
    ("sync-fd with as-pid-1 reaches the command", f"$B {SANDBOX} --unshare-pid --as-pid-1 --sync-fd 3 sh -c 'ls /proc/self/fd | sort -n | tr \"\\n\" \" \"' 3</dev/null"),
    ("info-fd not given to the command", f"$B {SANDBOX} --info-fd 3 sh -c 'ls /proc/self/fd | sort -n | tr \"\\n\" \" \"' 3>/dev/null"),
    ("json-status-fd not given to the command", f"$B {SANDBOX} --json-status-fd 3 sh -c 'ls /proc/self/fd | sort -n | tr \"\\n\" \" \"' 3>/dev/null"),
    ("block-fd not given to the command", f"$B {SANDBOX} --block-fd 3 sh -c 'ls /proc/self/fd | sort -n | tr \"\\n\" \" \"' 3</dev/null"),
    ("block-fd waits for data", f"(sleep 0.3; echo go) | $B {SANDBOX} --block-fd 0 sh -c 'cat; echo ran'"),
    ("lock-file", f"$B {SANDBOX} --lock-file /etc/passwd --lock-file /etc/group sh -c 'grep -c \"POSIX  ADVISORY  READ\" /proc/locks'"),
    ("lock-file missing", f"$B {SANDBOX} --lock-file /nonexistent true"),
    ("file fd not given to the command", f"$B {SANDBOX} --tmpfs /tmp --file 3 /tmp/f sh -c 'ls /proc/self/fd | sort -n | tr \"\\n\" \" \"' 3</dev/null"),
    # ---- status records (numbers replaced)
    ("json-status", f"$B {SANDBOX} --unshare-pid --json-status-fd 3 sh -c 'exit 3' 3>&1 | sed 's/[0-9]\\{{3,\\}}/N/g'"),
    ("json-status without a pid namespace", f"$B {SANDBOX} --json-status-fd 3 false 3>&1 | sed 's/[0-9]\\{{3,\\}}/N/g'"),
    ("json-status of a failed exec", f"$B {SANDBOX} --json-status-fd 3 no-such-command 3>&1 | sed 's/[0-9]\\{{3,\\}}/N/g'"),
    ("json-status unshare-all", f"$B {SANDBOX} --unshare-all --json-status-fd 3 true 3>&1 | sed 's/[0-9]\\{{3,\\}}/N/g'"),
    ("info-fd", f"$B {SANDBOX} --unshare-pid --unshare-net --unshare-ipc --info-fd 3 true 3>&1 | sed 's/[0-9]\\{{3,\\}}/N/g'"),
    # ---- sessions
    ("no new session", f"$B {SANDBOX} --unshare-pid python3 -c 'import os; print(os.getsid(0))'"),
    ("new session", f"$B {SANDBOX} --unshare-pid --new-session python3 -c 'import os; print(os.getsid(0) == os.getpid())'"),
    # ---- nesting
    ("nested", "$B --unshare-user --dev-bind / / $B --unshare-user --ro-bind / / id -u"),
    ("nested with proc", "$B --unshare-user --unshare-pid --dev-bind / / --proc /proc $B --unshare-user --unshare-pid --ro-bind / / --proc /proc --dev /dev sh -c 'echo $$; id -u'"),
    ("nested with net", "$B --unshare-user --unshare-net --dev-bind / / $B --unshare-net --ro-bind / / --dev /dev ls /sys/class/net"),
    ("nested under disable-userns", "$B --unshare-user --disable-userns --dev-bind / / $B --unshare-user --ro-bind / / true"),
    ("nested under disable-userns, no user namespace", "$B --unshare-user --disable-userns --dev-bind / / $B --ro-bind / / id -u"),
    ("nested uid", "$B --unshare-user --uid 0 --dev-bind / / $B --unshare-user --uid 1000 --ro-bind / / id -u"),
]


@pytest.fixture
def scratch(host_launcher: Launcher):  # type: ignore[no-untyped-def]
    """A directory the caller owns, world-searchable."""
    with scratch_dir(host_launcher, "srt-bwrap-test-") as path:
        yield path


def run_script(launcher: Launcher, bwrap: str, script: str, scratch: Path) -> tuple[int, str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root" if not launcher.unprivileged else "/nonexistent", "B": bwrap, "D": str(scratch)}
    result = subprocess.run(
        ["/bin/bash", "-c", script], capture_output=True, text=True, timeout=TIMEOUT, env=env, **launcher.process_kwargs()
    )
    return result.returncode, result.stdout.replace(bwrap, "BWRAP"), result.stderr.replace(bwrap, "BWRAP")


@pytest.mark.parametrize("script", [script for _, script in CASES], ids=[name for name, _ in CASES])
def test_same_result_as_debians_bubblewrap(host_launcher, debian_bwrap, bwrap_links, scratch, script):
    ours = bwrap_links(host_launcher.argv_prefix[0])
    expected = run_script(host_launcher, debian_bwrap, script, scratch)
    for entry in scratch.iterdir():
        entry.unlink() if not entry.is_dir() or entry.is_symlink() else shutil.rmtree(entry)
    got = run_script(host_launcher, ours, script, scratch)
    assert got == expected
