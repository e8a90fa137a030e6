"""Make a host failure for real, then exec a command inside it (tests of `srt-launcher check`).

Run as root with the venv's interpreter; it becomes uid N (--uid) before the exec:

    check_env.py MODE [OPTIONS] -- COMMAND [ARGS...]

Modes:
  userns-limit MAX [--hold] [--uid N]
      a new user namespace (ids 0 and 65534 mapped) whose user.max_user_namespaces is
      MAX; with --hold, one user namespace of uid N already exists in it (made by a
      sleeping child); COMMAND runs there as uid N (0: root of that namespace, with
      every capability in it)
  seccomp-deny-unshare [--uid N]
      as uid N, the namespace rules of Docker's default seccomp profile (for a container without
      CAP_SYS_ADMIN): EPERM for unshare, clone with a namespace flag, mount, umount2,
      pivot_root, setns; ENOSYS for clone3
  seccomp-deny-seccomp [--uid N]
      as uid N, EPERM for seccomp(2) and prctl(PR_SET_SECCOMP): no filter can be installed
  covered-proc [--uid N]
      a new mount and PID namespace whose /proc is covered as container runtimes do
      (/dev/null over /proc/timer_list, /proc/sys bound read-only onto itself);
      COMMAND is its PID 1, as uid N
  setuid-in-process N
      become uid N with setresuid() and, without exec, run srt-launcher's main with
      COMMAND[1:] in this process (as a service that dropped root would): the process
      is no longer dumpable

Nothing it mounts reaches the host: every mount is made in a new mount namespace
whose / is a slave.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_SLAVE = 0x20, 0x1000, 0x4000, 0x80000
PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22

libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def unshare(flags: int) -> None:
    check(libc.unshare(flags), f"unshare {flags:#x}")


def mount(source, target, fstype, flags) -> None:  # type: ignore[no-untyped-def]
    enc = lambda value: None if value is None else value.encode()  # noqa: E731
    check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), None), f"mount {target}")


def become(uid: int) -> None:
    if uid == 0:
        return
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def wait_and_exit(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) % 256)


def userns_limit(limit: str, hold: bool, uid: int, command: list[str]) -> None:
    ready_read, ready_write = os.pipe()
    mapped_read, mapped_write = os.pipe()
    child = os.fork()
    if child == 0:
        unshare(CLONE_NEWUSER)
        os.write(ready_write, b"x")
        os.read(mapped_read, 1)
        with open("/proc/sys/user/max_user_namespaces", "w") as handle:
            handle.write(limit)
        if hold:
            hold_user_namespace(uid)
        become(uid)
        os.execv(command[0], command)
    # A map of more than the writer's own id must be written from the parent
    # namespace, by a process with CAP_SETUID there.
    os.read(ready_read, 1)
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{child}/{name}", "w") as handle:
            handle.write("0 0 1\n65534 65534 1\n")
    os.write(mapped_write, b"x")
    wait_and_exit(child)


def hold_user_namespace(uid: int) -> None:
    """A child of ``uid`` that sits in a user namespace of its own until its parent dies."""
    ready_read, ready_write = os.pipe()
    parent = os.getpid()
    if os.fork() == 0:
        become(uid)
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")  # after the uid change, which clears it
        if os.getppid() != parent:
            os._exit(0)
        unshare(CLONE_NEWUSER)
        os.write(ready_write, b"x")
        while True:
            signal.pause()
    os.close(ready_write)
    if os.read(ready_read, 1) != b"x":
        raise SystemExit("the holder of a user namespace could not make one")


def seccomp_deny(kind: str, uid: int, command: list[str]) -> None:
    import pyseccomp

    become(uid)
    rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    eperm = pyseccomp.ERRNO(errno.EPERM)
    if kind == "unshare":
        rules.add_rule(eperm, "unshare")
        for flag in NAMESPACE_FLAGS:
            rules.add_rule(eperm, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
        rules.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
        for name in ("mount", "umount2", "pivot_root", "setns"):
            rules.add_rule(eperm, name)
    else:
        rules.add_rule(eperm, "seccomp")
        rules.add_rule(eperm, "prctl", pyseccomp.Arg(0, pyseccomp.EQ, PR_SET_SECCOMP))
    rules.load()
    os.execv(command[0], command)


def covered_proc(uid: int, command: list[str]) -> None:
    unshare(CLONE_NEWNS | CLONE_NEWPID)
    mount(None, "/", None, MS_SLAVE | MS_REC)
    child = os.fork()
    if child == 0:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mount("/dev/null", "/proc/timer_list", None, MS_BIND)
        mount("/proc/sys", "/proc/sys", None, MS_BIND | MS_REC)
        mount(None, "/proc/sys", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        become(uid)
        os.execv(command[0], command)
    wait_and_exit(child)


def setuid_in_process(uid: int, command: list[str]) -> None:
    become(uid)
    sys.argv = command
    from srt_launcher.__main__ import main

    code = main(command[1:])
    sys.stdout.flush()
    os._exit(code)


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    mode, options, command = args[0], args[1:split], args[split + 1 :]
    uid = int(options[options.index("--uid") + 1]) if "--uid" in options else 0
    if mode == "userns-limit":
        userns_limit(options[0], "--hold" in options, uid, command)
    elif mode == "seccomp-deny-unshare":
        seccomp_deny("unshare", uid, command)
    elif mode == "seccomp-deny-seccomp":
        seccomp_deny("seccomp", uid, command)
    elif mode == "covered-proc":
        covered_proc(uid, command)
    elif mode == "setuid-in-process":
        setuid_in_process(int(options[0]), command)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
