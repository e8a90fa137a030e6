"""The host probes of SPEC §10: the real operations, in a throw-away child.

Nothing here reads a sysctl and guesses. The namespace probes are one chain
run by one forked child, in the order a ``run`` launch takes the same steps,
with the launcher's own code where a step has a function of its own (lo up,
the seccomp filter) and the same system calls and flags elsewhere::

    child                   landlock, cgroup-delegation (read only)
      route                 plain unshare(CLONE_NEWNET), as the stub tries first;
                            EPERM (no CAP_SYS_ADMIN) → through a user namespace
      user-namespace        unshare(CLONE_NEWUSER), setgroups, uid_map, gid_map
      userns-capabilities   a privileged operation inside it (new UTS ns, sethostname)
                            (both in a grandchild when the plain route works: then
                            they only matter for --unshare-user)
      net-namespace         unshare(CLONE_NEWNET), lo up (the launcher's ioctl),
                            then lo's addresses through rtnetlink (check only)
      pid-namespace         unshare(CLONE_NEWPID), fork: the child is PID 1
        PID 1               mount-namespace (unshare, / MS_SLAVE|MS_REC),
                            pivot-root (staging tmpfs, pivot_root, detach, switch),
                            procfs (+ its read-only covers), mount-setattr
      seccomp               NO_NEW_PRIVS, the unix-block filter, then socket(AF_UNIX)
                            must be refused

A step that cannot be tried because an earlier one failed is reported as
skipped, naming what it needed. After a failure the failing process collects
facts (its seccomp mode, capabilities, dumpability, the sysctl of the
namespace it is in, the procfs mounts it sees) so that
:mod:`srt_launcher.check.diagnosis` can name the cause; those are read only
after the real operation was refused.

Every probe process has PDEATHSIG=SIGKILL and reports over one pipe (one
marshal'd dict per record, length-prefixed, each written with one write(2):
marshal is built in, where json's import would cost most of a probe());
the parent stops waiting after a deadline and kills the child.
"""

from __future__ import annotations

import _signal
import _socket
import errno
import marshal
import os
import select
import time

from srt_launcher import kernel, privileges, seccomp
from srt_launcher.check import syscalls
from srt_launcher.errors import LauncherError
from srt_launcher.launch import network
from srt_launcher.mount.mountinfo import unescape

NAMESPACE_PROBES = (
    "user-namespace",
    "userns-capabilities",
    "net-namespace",
    "pid-namespace",
    "mount-namespace",
    "pivot-root",
    "procfs",
    "mount-setattr",
)
CHAIN_PROBES = NAMESPACE_PROBES + ("seccomp", "landlock", "cgroup-delegation")
_IN_PID1 = ("mount-namespace", "pivot-root", "procfs", "mount-setattr")

STAGING = "/tmp"
_BIND_REC = kernel.MS_SILENT | kernel.MS_BIND | kernel.MS_REC
_PRIVATE_REC = kernel.MS_SILENT | kernel.MS_REC | kernel.MS_PRIVATE
_CHAIN_DEADLINE = 30.0


class Outcome:
    """What one probe found: ``state`` is "ok", "failed" or "skipped"."""

    __slots__ = ("name", "state", "detail", "step", "errno", "facts")

    def __init__(
        self,
        name: str,
        state: str,
        detail: str = "",
        step: str | None = None,
        errno: int | None = None,
        facts: dict | None = None,
    ) -> None:
        self.name = name
        self.state = state
        self.detail = detail
        self.step = step
        self.errno = errno
        self.facts = facts or {}

    def __repr__(self) -> str:
        return f"Outcome({self.name!r}, {self.state!r}, {self.step!r}, {self.errno!r})"

    @classmethod
    def from_record(cls, record: dict) -> "Outcome":
        get = record.get
        return cls(record["name"], record["state"], get("detail", ""), get("step"), get("errno"), get("facts"))


class ChainResult:
    """The outcomes of the chain, and the route its namespaces took."""

    def __init__(self, outcomes: dict[str, Outcome], route: str) -> None:
        self.outcomes = outcomes
        self.route = route  # "plain" (CAP_SYS_ADMIN) or "user-namespace"


# ---------------------------------------------------------------- the parent side


def run_chain(force_user: bool = False, rtnetlink: bool = False, deadline: float = _CHAIN_DEADLINE) -> ChainResult:
    """Fork the probe child, collect what it reports, reap it.

    ``force_user``: take the user-namespace route as ``run --unshare-user``
    does. ``rtnetlink``: also check lo's addresses through pyroute2 (check
    only: its import is slow, so it is imported here, before the fork).
    """
    ipr_class = _import_pyroute2() if rtnetlink else None
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child_main(_Reporter(write_end), force_user, ipr_class)
    os.close(write_end)
    try:
        text = _read_until_eof(read_end, pid, deadline)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return _collect(text)


def _import_pyroute2():  # type: ignore[no-untyped-def]
    from pyroute2 import IPRoute

    return IPRoute


def _read_until_eof(fd: int, pid: int, deadline: float) -> bytes:
    chunks = []
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            # A hung probe: its grandchildren die with it (PDEATHSIG).
            os.kill(pid, _signal.SIGKILL)
            chunks.append(_frame({"timeout": True}))
            return b"".join(chunks)
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _collect(text: bytes) -> ChainResult:
    outcomes: dict[str, Outcome] = {}
    route = "plain"
    timed_out = False
    for record in _records(text):
        if record.get("timeout"):
            timed_out = True
        elif "route" in record:
            route = record["route"]
        else:
            outcomes[record["name"]] = Outcome.from_record(record)
    for name in CHAIN_PROBES:
        if name not in outcomes:
            why = f"no answer within {_CHAIN_DEADLINE:.0f} s" if timed_out else "the probe process died before answering"
            outcomes[name] = Outcome(name, "failed", why, "probe", None)
    return ChainResult(outcomes, route)


def _frame(record: dict) -> bytes:
    data = marshal.dumps(record)
    return len(data).to_bytes(4, "little") + data


def _records(text: bytes) -> list[dict]:
    """The whole records in ``text`` (a child killed mid-write leaves a truncated last one)."""
    records = []
    offset = 0
    while offset + 4 <= len(text):
        size = int.from_bytes(text[offset : offset + 4], "little")
        if offset + 4 + size > len(text):
            break
        records.append(marshal.loads(text[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    return records


# ---------------------------------------------------------------- the child side


class _Reporter:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, record: dict) -> None:
        os.write(self.fd, _frame(record))

    def ok(self, name: str, detail: str, **facts: object) -> None:
        self.send({"name": name, "state": "ok", "detail": detail, "facts": facts})

    def fail(self, name: str, step: str, code: int | None, detail: str = "", **facts: object) -> None:
        if not detail:
            detail = f"{step}: {os.strerror(code)}" if code else step
        self.send({"name": name, "state": "failed", "detail": detail, "step": step, "errno": code, "facts": facts})

    def skip(self, names: tuple[str, ...], why: str) -> None:
        for name in names:
            self.send({"name": name, "state": "skipped", "detail": why})


def _child_main(out: _Reporter, force_user: bool, ipr_class) -> None:  # type: ignore[no-untyped-def]
    global _proc_fd
    code = 0
    try:
        privileges.set_parent_death_signal(_signal.SIGKILL)
        try:
            _proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            _proc_fd = None
        _chain(out, force_user, ipr_class)
    except BaseException as err:  # a bug here must still end as a report, not a traceback on the caller's terminal
        out.send({"name": "internal", "state": "failed", "detail": _describe(err)})
        code = 1
    finally:
        os._exit(code)


def _guarded(out: _Reporter, name: str, probe, *args):  # type: ignore[no-untyped-def]
    try:
        return probe(out, *args)
    except Exception as err:
        out.fail(name, "probe", None, "internal error: " + _describe(err))
        return False


def _describe(err: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception_only(err)).strip()


def _chain(out: _Reporter, force_user: bool, ipr_class) -> None:  # type: ignore[no-untyped-def]
    _guarded(out, "landlock", _landlock)
    _guarded(out, "cgroup-delegation", _cgroup_delegation)
    net_ready = False
    route = "user-namespace"
    if not force_user:
        try:
            kernel.unshare(kernel.CLONE_NEWNET)
            route, net_ready = "plain", True
        except OSError as err:
            if err.errno != errno.EPERM:
                # Not a question of privilege: the plain route stands, the
                # network namespace itself is refused.
                route = "plain"
                out.fail("net-namespace", "unshare(CLONE_NEWNET)", err.errno, **_namespace_facts("net"))
    out.send({"route": route})
    if route == "plain":
        _in_child(lambda: _guarded(out, "user-namespace", _user_namespace))
    elif not _guarded(out, "user-namespace", _user_namespace):
        out.skip(NAMESPACE_PROBES[2:], "not tried: the launch needs a working user namespace first")
        _guarded(out, "seccomp", _seccomp)
        return
    else:
        net_ready = _unshare(out, "net-namespace", kernel.CLONE_NEWNET, "net")
    if net_ready:
        _guarded(out, "net-namespace", _loopback, ipr_class)
    if _unshare(out, "pid-namespace", kernel.CLONE_NEWPID, "pid"):
        _in_child(lambda: _pid1(out))
    else:
        out.skip(_IN_PID1, "not tried: needs the PID namespace")
    _guarded(out, "seccomp", _seccomp)


def _in_child(body) -> int:  # type: ignore[no-untyped-def]
    """Run ``body`` in a forked child (PDEATHSIG armed); wait for it."""
    pid = os.fork()
    if pid == 0:
        try:
            privileges.set_parent_death_signal(_signal.SIGKILL)
            body()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


def _unshare(out: _Reporter, name: str, flag: int, what: str) -> bool:
    try:
        kernel.unshare(flag)
        return True
    except OSError as err:
        out.fail(name, f"unshare(CLONE_NEW{what.upper()})", err.errno, **_namespace_facts(what))
        return False


# ---------------------------------------------------------------- user namespace


def _user_namespace(out: _Reporter) -> bool:
    """As namespaces.unshare does on the user-namespace path: the caller's own ids mapped onto themselves."""
    uid, gid = os.getuid(), os.getgid()
    # Read before: inside the new namespace every capability is held.
    caps_before = _status_fields().get("CapEff", "")
    try:
        kernel.unshare(kernel.CLONE_NEWUSER)
    except OSError as err:
        out.fail("user-namespace", "unshare(CLONE_NEWUSER)", err.errno, **_user_namespace_facts())
        out.skip(("userns-capabilities",), "not tried: no user namespace")
        return False
    maps = (
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", f"{uid} {uid} 1\n"),
        ("/proc/self/gid_map", f"{gid} {gid} 1\n"),
    )
    for path, text in maps:
        step, err = _write(path, text)
        # Kernels before 3.19 have no setgroups file.
        if err is not None and not (path.endswith("setgroups") and err.errno == errno.ENOENT):
            detail = f"{step} ({text.strip()!r}): {os.strerror(err.errno)}"
            facts = _process_facts()
            facts.update(uid=uid, cap_eff_before=caps_before)  # the caller's, not the unmapped ones inside
            out.fail("user-namespace", step, err.errno, detail, **facts)
            _capabilities(out)  # reported too: AppArmor takes both
            return False
    out.ok("user-namespace", f"created; uid {uid} and gid {gid} mapped onto themselves")
    return _capabilities(out)


def _write(path: str, text: str) -> tuple[str, OSError | None]:
    """Write ``text`` to ``path``: the step that failed ("open …" or "write …") and its error, if any."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as err:
        return f"open {path}", err
    try:
        os.write(fd, text.encode())
        return f"write {path}", None
    except OSError as err:
        return f"write {path}", err
    finally:
        os.close(fd)


def _capabilities(out: _Reporter) -> bool:
    """A privileged operation inside the new user namespace.

    Ubuntu's AppArmor restriction lets unshare(CLONE_NEWUSER) succeed and
    then withholds every capability in it: only trying one tells.
    """
    for step, call in (
        ("unshare(CLONE_NEWUTS)", lambda: kernel.unshare(kernel.CLONE_NEWUTS)),
        ("sethostname", lambda: _socket.sethostname("srt-launcher-check")),
    ):
        try:
            call()
        except OSError as err:
            out.fail("userns-capabilities", step, err.errno, **_process_facts())
            return False
    out.ok("userns-capabilities", "CAP_SYS_ADMIN held inside: a new UTS namespace and sethostname worked")
    return True


# ---------------------------------------------------------------- network


def _loopback(out: _Reporter, ipr_class) -> bool:  # type: ignore[no-untyped-def]
    try:
        network.bring_up_loopback()  # the launcher's own SIOCSIFFLAGS
    except LauncherError as err:
        out.fail("net-namespace", "SIOCSIFFLAGS (lo up)", err.errno, **_process_facts())
        return False
    if ipr_class is None:
        out.ok("net-namespace", "new network namespace, lo up")
        return True
    return _loopback_rtnetlink(out, ipr_class)


def _loopback_rtnetlink(out: _Reporter, ipr_class) -> bool:  # type: ignore[no-untyped-def]
    """lo's addresses through rtnetlink, as bubblewrap sets them (RTM_NEWADDR)."""
    from pyroute2.netlink.exceptions import NetlinkError

    step = "rtnetlink"
    try:
        with ipr_class() as ipr:
            step = "RTM_GETLINK lo"
            (index,) = ipr.link_lookup(ifname="lo")
            step = "RTM_NEWADDR 127.0.0.1/8 on lo"
            ipr.addr("replace", index=index, address="127.0.0.1", prefixlen=8)
            step = "RTM_GETADDR lo"
            found = sorted(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index))
    except NetlinkError as err:
        out.fail("net-namespace", step, err.code, **_process_facts())
        return False
    except OSError as err:
        out.fail("net-namespace", step, err.errno, **_process_facts())
        return False
    if "127.0.0.1/8" not in found:
        detail = f"lo is up but has no 127.0.0.1/8 (addresses: {', '.join(found) or 'none'})"
        out.fail("net-namespace", "RTM_GETADDR lo", None, detail)
        return False
    out.ok("net-namespace", f"new network namespace, lo up with {', '.join(found)} (rtnetlink)")
    return True


# ---------------------------------------------------------------- PID 1: mounts


def _pid1(out: _Reporter) -> None:
    if os.getpid() != 1:
        out.fail("pid-namespace", "fork", None, f"the first child of the new PID namespace is PID {os.getpid()}, not 1")
    else:
        out.ok("pid-namespace", "new PID namespace; its first process is PID 1")
    if not _guarded(out, "mount-namespace", _mount_namespace):
        out.skip(_IN_PID1[1:], "not tried: without a mount namespace whose / is a slave, a mount here could reach the host")
        return
    if not _guarded(out, "pivot-root", _staging):
        out.skip(_IN_PID1[2:], "not tried: no staging tmpfs")
        return
    _guarded(out, "mount-setattr", _mount_setattr)
    pivoted = _guarded(out, "pivot-root", _pivot)
    _guarded(out, "procfs", _procfs, "/newroot/proc" if pivoted else STAGING + "/newroot/proc")
    if pivoted and _guarded(out, "pivot-root", _switch_root):
        out.ok("pivot-root", "pivot_root into a staging tmpfs, old root detached, pivot_root(\".\", \".\") into the new root")


def _mount_namespace(out: _Reporter) -> bool:
    try:
        kernel.unshare(kernel.CLONE_NEWNS)
    except OSError as err:
        out.fail("mount-namespace", "unshare(CLONE_NEWNS)", err.errno, **_namespace_facts("mnt"))
        return False
    try:
        kernel.mount(None, "/", None, kernel.MS_SILENT | kernel.MS_SLAVE | kernel.MS_REC)
    except OSError as err:
        out.fail("mount-namespace", "make / a slave (MS_SLAVE|MS_REC)", err.errno, root=_root_mount())
        return False
    out.ok("mount-namespace", "new mount namespace; / is a slave mount (nothing mounted here reaches the host)")
    return True


def _step(out: _Reporter, name: str, step: str, call, *args) -> bool:  # type: ignore[no-untyped-def]
    try:
        call(*args)
        return True
    except OSError as err:
        out.fail(name, step, err.errno, **({"root": _root_mount()} if name == "pivot-root" else {}))
        return False


def _staging(out: _Reporter) -> bool:
    """As mount/root.py: a tmpfs on /tmp, newroot bound onto itself, oldroot beside it."""
    flags = kernel.MS_NODEV | kernel.MS_NOSUID
    return (
        _step(out, "pivot-root", "mount staging tmpfs", kernel.mount, "tmpfs", STAGING, "tmpfs", flags, "mode=0755")
        and _step(out, "pivot-root", "staging", os.chdir, STAGING)
        and _step(out, "pivot-root", "staging", os.mkdir, "newroot", 0o755)
        and _step(out, "pivot-root", "bind newroot", kernel.mount, "newroot", "newroot", None, _BIND_REC)
        and _step(out, "pivot-root", "staging", os.mkdir, "oldroot", 0o755)
    )


def _pivot(out: _Reporter) -> bool:
    return _step(out, "pivot-root", "pivot_root", kernel.pivot_root, STAGING, "oldroot") and _step(
        out, "pivot-root", "staging", os.chdir, "/"
    )


def _switch_root(out: _Reporter) -> bool:
    if not (
        _step(out, "pivot-root", "detach old root", kernel.mount, "oldroot", "oldroot", None, _PRIVATE_REC)
        and _step(out, "pivot-root", "detach old root", kernel.umount2, "oldroot", kernel.MNT_DETACH)
    ):
        return False
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        return (
            _step(out, "pivot-root", "switch root", os.chdir, "/newroot")
            and _step(out, "pivot-root", "pivot_root(\".\", \".\")", kernel.pivot_root, ".", ".")
            and _step(out, "pivot-root", "switch root", os.fchdir, old_root)
            and _step(out, "pivot-root", "switch root", kernel.umount2, ".", kernel.MNT_DETACH)
            and _step(out, "pivot-root", "switch root", os.chdir, "/")
        )
    finally:
        os.close(old_root)


def _procfs(out: _Reporter, target: str) -> bool:
    """As --proc: a procfs of the new PID namespace, nosuid,nodev,noexec, then its covers read-only."""
    try:
        os.mkdir(target, 0o755)
        kernel.mount("proc", target, "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)
    except OSError as err:
        out.fail("procfs", "mount proc", err.errno, covered=_covered_procfs(), in_user_namespace=_in_user_namespace())
        return False
    if os.readlink(target + "/self") != "1":
        out.fail("procfs", "mount proc", None, "the new procfs is not the one of the new PID namespace (its self is not 1)")
        return False
    for name in ("sys", "sysrq-trigger", "irq", "bus"):
        path = f"{target}/{name}"
        if not os.path.lexists(path):
            continue
        try:
            kernel.mount(path, path, None, kernel.MS_SILENT | kernel.MS_BIND | kernel.MS_REC)
            flags = kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC
            kernel.mount("none", path, None, kernel.MS_SILENT | kernel.MS_BIND | kernel.MS_REMOUNT | flags)
        except OSError as err:
            out.fail("procfs", f"cover /proc/{name} read-only", err.errno)
            return False
    out.ok("procfs", "procfs of the new PID namespace mounted, with its read-only covers")
    return True


def _mount_setattr(out: _Reporter) -> bool:
    """mount_setattr(AT_RECURSIVE) adding ro,nosuid,nodev, as every bind does (Linux 5.12)."""
    path = STAGING + "/attr"
    if not (_step(out, "mount-setattr", "mkdir", os.mkdir, path, 0o755)
            and _step(out, "mount-setattr", "mount tmpfs", kernel.mount, "tmpfs", path, "tmpfs", 0, "mode=0755")):
        return False
    try:
        kernel.mount_setattr_add_recursive(path, kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV)
    except OSError as err:
        out.fail("mount-setattr", "mount_setattr(AT_RECURSIVE)", err.errno)
        return False
    if not os.statvfs(path).f_flag & os.ST_RDONLY:
        out.fail("mount-setattr", "mount_setattr(AT_RECURSIVE)", None, "it returned success, yet the mount is still writable")
        return False
    out.ok("mount-setattr", "mount_setattr(AT_RECURSIVE) made a mount ro,nosuid,nodev in one call")
    return True


# ---------------------------------------------------------------- seccomp, landlock, cgroups


def _seccomp(out: _Reporter) -> bool:
    """The launcher's own filter (--seccomp-unix-block), installed as the worker does, then tried."""
    try:
        program = seccomp.prepare(seccomp.load_filter("unix-block"))
    except LauncherError as err:
        out.fail("seccomp", "load the filter", err.errno, f"{err.value}: {err.reason}")
        return False
    privileges.set_no_new_privs()
    try:
        seccomp.install(program)
    except LauncherError as err:
        out.fail("seccomp", "seccomp(SECCOMP_SET_MODE_FILTER)", err.errno, **_seccomp_facts())
        return False
    try:
        _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM).close()
    except PermissionError:
        out.ok("seccomp", "filter installed; socket(AF_UNIX) refused as --seccomp-unix-block wants")
        return True
    out.fail("seccomp", "socket(AF_UNIX)", None, "the filter was installed but socket(AF_UNIX) still succeeds")
    return False


def _landlock(out: _Reporter) -> bool:
    try:
        abi = syscalls.landlock_abi()
    except OSError as err:
        out.fail("landlock", "landlock_create_ruleset(LANDLOCK_CREATE_RULESET_VERSION)", err.errno)
        return False
    out.ok("landlock", f"Landlock ABI {abi}", abi=abi)
    return True


def _cgroup_delegation(out: _Reporter) -> bool:
    """Whether this caller could create a child cgroup where it is (cgroup v2).

    Read-only: permissions are inspected, nothing is created, so the host's
    cgroups are never changed.
    """
    own = _own_cgroup2_path()
    mounts = [(point, root) for point, root, fstype, _ in _mountinfo() if fstype == "cgroup2"]
    if own is None or not mounts:
        out.fail("cgroup-delegation", "find cgroup v2", None, "cgroup v2 is not mounted (cgroup v1 only)", v2=False)
        return False
    directory = None
    for point, root in mounts:
        if own == root or own.startswith(root.rstrip("/") + "/"):
            candidate = os.path.normpath(point + "/" + own[len(root):])
            if os.path.isdir(candidate):
                directory = candidate
                break
    if directory is None:
        detail = f"this process's cgroup {own} is not visible under any cgroup2 mount"
        out.fail("cgroup-delegation", "find cgroup v2", None, detail, v2=True)
        return False
    controllers = _read_text(directory + "/cgroup.controllers").split()
    can_create = os.access(directory, os.W_OK | os.X_OK)
    can_move = os.access(directory + "/cgroup.procs", os.W_OK)
    if not (can_create and can_move):
        why = _why_not_writable(directory)
        detail = f"uid {os.getuid()} cannot create a child of {directory} ({why})"
        code = errno.EROFS if why.startswith("mounted read-only") else errno.EACCES
        out.fail("cgroup-delegation", "access", code, detail, v2=True, directory=directory, controllers=controllers)
        return False
    out.ok("cgroup-delegation", f"could create a child of {directory}; controllers: {' '.join(controllers) or 'none'}",
           directory=directory, controllers=controllers)
    return True


def _why_not_writable(directory: str) -> str:
    if os.statvfs(directory).f_flag & os.ST_RDONLY:
        return "mounted read-only here"
    owner = os.stat(directory).st_uid
    if str(owner) == _read_text("/proc/sys/kernel/overflowuid"):
        return "owned by an id that is not mapped in this user namespace"
    return f"owned by uid {owner}"


# ---------------------------------------------------------------- facts, read after a refusal


# /proc as the chain child found it: PID 1 reads its facts through it after
# pivot_root, when no /proc is left at that path.
_proc_fd: int | None = None


def _read_text(path: str) -> str:
    try:
        if _proc_fd is not None and path.startswith("/proc/"):
            fd = os.open(path[len("/proc/") :], os.O_RDONLY | os.O_CLOEXEC, dir_fd=_proc_fd)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _status_fields() -> dict[str, str]:
    fields = {}
    for line in _read_text("/proc/self/status").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _process_facts() -> dict[str, object]:
    status = _status_fields()
    try:
        dumpable = syscalls.dumpable()
    except OSError:
        dumpable = None
    return {
        "uid": os.getuid(),
        "cap_eff": status.get("CapEff", ""),
        "seccomp_mode": status.get("Seccomp", ""),
        "seccomp_filters": status.get("Seccomp_filters", ""),
        "no_new_privs": status.get("NoNewPrivs", ""),
        "dumpable": dumpable,
        "suid_dumpable": _read_text("/proc/sys/fs/suid_dumpable"),
        "in_user_namespace": _in_user_namespace(),
    }


def _namespace_facts(kind: str) -> dict[str, object]:
    facts = _process_facts()
    facts["limit"] = _read_text(f"/proc/sys/user/max_{kind}_namespaces")
    facts["unshare0_errno"] = _unshare_nothing()
    return facts


def _user_namespace_facts() -> dict[str, object]:
    facts = _namespace_facts("user")
    facts["unprivileged_userns_clone"] = _read_text("/proc/sys/kernel/unprivileged_userns_clone")
    return facts


def _seccomp_facts() -> dict[str, object]:
    facts = _process_facts()
    try:
        syscalls.seccomp_get_action_avail()
        facts["get_action_avail_errno"] = 0
    except OSError as err:
        facts["get_action_avail_errno"] = err.errno
    facts["actions_avail"] = _read_text("/proc/sys/kernel/seccomp/actions_avail")
    return facts


def _unshare_nothing() -> int:
    """unshare(0) changes nothing and the kernel always allows it: EPERM means a seccomp filter answers for unshare."""
    try:
        kernel.unshare(0)
        return 0
    except OSError as err:
        return err.errno or 0


def _in_user_namespace() -> bool:
    """True when this process is in a user namespace other than the initial one."""
    return _read_text("/proc/self/uid_map").split() != ["0", "0", "4294967295"]


def _mountinfo() -> list[tuple[str, str, str, list[int]]]:
    """(mount point, root, fstype, [id, parent id]) of every mount this process sees."""
    entries = []
    for line in _read_text("/proc/self/mountinfo").splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-")
            entries.append((unescape(fields[4]), unescape(fields[3]), fields[separator + 1], [int(fields[0]), int(fields[1])]))
        except (ValueError, IndexError):
            continue
    return entries


def _covered_procfs() -> list[str]:
    """Each procfs mount with something mounted over a non-empty path inside it:
    '<procfs mount point>: <covering mount point> (<its fstype>), …'.

    Read in PID 1 after pivot_root: the caller's mounts are then under
    /oldroot, shown here at their own paths.
    """

    def shown(point: str) -> str:
        return point[len("/oldroot") :] or "/" if point == "/oldroot" or point.startswith("/oldroot/") else point

    entries = _mountinfo()
    procfs = {ids[0]: point for point, _, fstype, ids in entries if fstype == "proc"}
    covers: dict[int, list[str]] = {}
    for point, _, fstype, ids in entries:
        if ids[1] not in procfs or ids[0] == ids[1]:
            continue
        if shown(point).startswith("/proc/sys/fs/binfmt_misc"):
            continue  # a permanently empty directory: covering it reveals nothing
        covers.setdefault(ids[1], []).append(f"{shown(point)} ({fstype})")
    return [f"{shown(procfs[parent])}: {', '.join(points[:6])}" for parent, points in covers.items()][:6]


def _root_mount() -> str:
    """fstype of the mount at / ('rootfs' when running from the initramfs)."""
    found = ""
    for point, _, fstype, _ in _mountinfo():
        if point == "/":
            found = fstype
    return found


def _own_cgroup2_path() -> str | None:
    for line in _read_text("/proc/self/cgroup").splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None

