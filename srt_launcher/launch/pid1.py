"""PID 1 of the sandbox and the worker it forks: the inside half of the process tree.

PID 1 (in the sandbox's PID namespace, when it has one) builds the sandbox's
mount namespace and root, then forks the worker and reaps until it exits —
or, without a reaper (bubblewrap's --as-pid-1, or no PID namespace), becomes
the worker itself. The worker execs the command. Neither prints anything:
errors go to the stub as records (launch/report.py), since after pivot_root
nothing may need an import and the stub's front end words the message.
"""

import errno
import posix
import time

import _signal

from srt_launcher import kernel, oslite, privileges, sandbox
from srt_launcher.errors import EXEC_NOT_EXECUTABLE, EXEC_NOT_FOUND, SETUP_FAILED, LauncherError
from srt_launcher.launch import namespaces, report, signals
from srt_launcher.mount import ops, root

# Python itself sets these to SIG_IGN at startup, and ignored signals survive
# exec: the workload must get the default back (as subprocess does).
_IGNORED_BY_PYTHON = (_signal.SIGPIPE, _signal.SIGXFSZ)
TIMEOUT_STATUS = 124
# The kernel SIGKILLs a process at its hard RLIMIT_CPU as counted by timer
# ticks, while rusage reports the scheduler's exact runtime split by those
# ticks: on a busy or virtual machine the ticks run ahead of the runtime. A
# SIGKILL is put down to the limit when the process used this share of it.
_CPU_SHARE = 0.5


class Plan:
    """What the stub prepared for PID 1: everything read or resolved before
    any namespace existed, so PID 1 and the worker only apply it."""

    __slots__ = ("box", "steps", "programs", "env", "cwd", "tty", "caller_mask", "alive", "channel", "status", "senders", "host_root", "command_pipe", "fd_floor")

    def __init__(self, box: sandbox.Sandbox, steps: list, programs: list[kernel.SeccompProgram], env: dict, cwd: str | None, tty: str | None, caller_mask: set) -> None:
        self.box = box
        self.steps = steps
        self.programs = programs
        self.env = env
        self.cwd = cwd
        self.tty = tty
        self.caller_mask = caller_mask
        self.alive: int = -1  # read end of the stub's pipe: EOF once the stub is gone
        self.channel = -1  # the children's end of the record channel (launch/report.py)
        self.status = box.json_status_fd is not None  # the stub wants the N, W and X records
        # The stub needs the records' senders: PID 1's and the worker's pids, as it numbers them.
        self.senders = self.status or box.info_fd is not None
        # Whether the workload may be the host's uid 0: a root caller (its
        # uid is mapped onto itself), or a user namespace of the caller's.
        self.host_root = posix.getuid() == 0 or box.userns_fd is not None
        self.command_pipe: int | None = None  # a prepared worker reads its command here (from PID 1)
        self.fd_floor = above_caller_fds(box)  # where the launcher's own lasting descriptors go


def above_caller_fds(box: sandbox.Sandbox) -> int:
    """The lowest number above every descriptor the caller named.

    A number the caller names need not be open: then the launcher's own
    descriptors could be given that number, and PID 1 would read its own
    record channel for --file or --block-fd (a launch hanging for ever),
    or the stub write the status records into it. Descriptors that last
    while the caller's are used are renumbered from here (kernel.keep_above), so a
    number the caller named stays what the caller made it, open or not.
    """
    return max(box.fds(), default=2) + 1


def main(plan: Plan) -> None:
    """PID 1: never returns."""
    code = SETUP_FAILED
    try:
        code = _pid1(plan)
    except LauncherError as err:
        report.send_error(plan.channel, err)
        code = err.exit_code
    except BaseException as err:  # never unwind into the stub's code
        report.send_error(plan.channel, LauncherError("internal error", None, repr(err)))
    finally:
        posix._exit(code)


def _pid1(plan: Plan) -> int:
    box = plan.box
    if box.pidns_fd is not None and box.pid:
        _enter_nested_pid_namespace(plan)
    if box.die_with_parent:
        privileges.set_parent_death_signal(_signal.SIGKILL)  # PDEATHSIG is cleared by fork
        if _stub_is_gone(plan.alive, wait=False):
            return SETUP_FAILED
    if box.new_session:
        posix.setsid()  # no controlling terminal (TIOCSTI itself: the tty filter, launch/stub.py)
    # Only the stub writes the status fds: a copy held here would keep their
    # reader from seeing the end of the info document, and a caller that
    # reads it to the end before writing our uid map (--userns-block-fd)
    # would wait forever.
    _close_status_fds(box)
    _unshare_mount_namespace(plan)
    if box.userns_block_fd is not None and _stub_is_gone(plan.alive, wait=True):
        return SETUP_FAILED  # the stub waited for the caller's uid maps, then died
    posix.close(plan.alive)
    caller_umask = posix.umask(0)  # mount points are created with exact modes
    if box.hostname is not None:
        _set_hostname(box.hostname)
    _import_what_the_sandbox_needs(box, plan.status)
    proc_fd = posix.open("/proc", posix.O_PATH | posix.O_DIRECTORY | posix.O_CLOEXEC)
    try:
        # A PID namespace joined (--pidns) gets its own procfs too, as in bubblewrap.
        root.build(plan.steps, plan.tty, box.pid or box.pidns_fd is not None, plan.host_root)
        _switch_user_namespace(box, proc_fd)
    finally:
        posix.close(proc_fd)
    _close_operation_fds(box)
    locks = _take_locks(box.lock_files, plan.fd_floor)
    _set_capabilities_for_the_worker(box)
    if box.block_fd is not None:
        wait_for_byte(box.block_fd)
    env = plan.env
    env["PWD"] = _enter_working_dir(box.chdir, plan.cwd, env.get("HOME"))
    if not box.reaper:
        if box.command_fd is not None:
            box.command, box.timeout = _read_command(box.command_fd)
        _worker(plan, caller_umask)  # never returns
    worker = _fork_worker(plan, caller_umask)
    started = time.monotonic()
    if box.caps:
        # PID 1 never execs: emptying its own sets is enough (and its
        # bounding set may be out of reach, CAP_SETPCAP not being kept).
        kernel.clear_ambient_capabilities()
        kernel.capset_clear()
    kernel.close_fds_except([plan.channel, *locks, *([box.sync_fd] if box.sync_fd is not None else [])])
    return _supervise(plan, worker, started)


def _close_status_fds(box: sandbox.Sandbox) -> None:
    for fd in (box.info_fd, box.json_status_fd):
        if fd is not None:
            try:
                posix.close(fd)
            except OSError:
                pass


def _enter_nested_pid_namespace(plan: Plan) -> None:
    """A new PID namespace below the joined one (bubblewrap's --pidns with
    --unshare-pid); returns in its PID 1.

    unshare(CLONE_NEWPID) makes the namespace below the caller's own, not
    below the one setns() chose for its children: only a process already in
    the joined namespace (this one) can make it, and its first child is
    its PID 1. This process stays as that child's parent and exits as it
    does: the kernel would not re-parent the child to the stub, in another
    PID namespace, and the stub waits for its own child.
    """
    try:
        kernel.unshare(kernel.CLONE_NEWPID)
        child = posix.fork()
    except OSError as err:
        raise LauncherError.from_os("unshare", "pid", err) from None
    if child == 0:
        return
    if plan.box.die_with_parent:
        privileges.set_parent_death_signal(_signal.SIGKILL)
    posix.close(plan.channel)
    kernel.close_fds_from(3)  # nothing of the caller's is held here
    while True:
        try:
            _, status = posix.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if posix.WIFSIGNALED(status):
        signum = posix.WTERMSIG(status)
        _signal.signal(signum, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, (signum,))
        posix.kill(posix.getpid(), signum)
    posix._exit(posix.waitstatus_to_exitcode(status) & 0xFF)


def _import_what_the_sandbox_needs(box: sandbox.Sandbox, status: bool) -> None:
    """Import now what PID 1 and the worker use later: after the pivot the
    host's Python library may not be there to import from."""
    if box.lock_files:
        import fcntl  # noqa: F401
    if status:
        import _socket  # noqa: F401 (the worker's record, launch/report.py send_worker_started)


def _stub_is_gone(alive: int, wait: bool) -> bool:
    """EOF on the pipe the stub holds: it died (before PDEATHSIG was armed,
    or while PID 1 waited for it)."""
    posix.set_blocking(alive, wait)
    try:
        return posix.read(alive, 1) == b""
    except BlockingIOError:
        return False


def _unshare_mount_namespace(plan: Plan) -> None:
    # Here and not in the stub: pivot_root moves the root of every process
    # of the mount namespace, and the stub must stay in the host's.
    try:
        kernel.unshare(kernel.CLONE_NEWNS)
    except OSError as err:
        raise LauncherError.from_os("unshare", "mount", err) from None
    if plan.status or plan.box.info_fd is not None:
        report.send(plan.channel, report.MOUNT_NAMESPACE, report.namespaces_of_pid1())


def _set_hostname(name: str) -> None:
    import _socket

    try:
        _socket.sethostname(name)
    except OSError as err:
        raise LauncherError.from_os("hostname", name, err) from None


def _switch_user_namespace(box: sandbox.Sandbox, proc_fd: int) -> None:
    """bubblewrap's user namespace steps after the pivot: --userns2, --disable-userns, --assert-userns-disabled."""
    if box.userns2_fd is not None:
        try:
            kernel.setns(box.userns2_fd, kernel.CLONE_NEWUSER)
        except OSError as err:
            raise LauncherError.from_os("setns", "userns2", err) from None
    if box.disable_userns:
        _disable_user_namespaces(box, proc_fd)
    if box.disable_userns or box.assert_userns_disabled:
        try:
            kernel.unshare(kernel.CLONE_NEWUSER)
        except OSError:
            return
        raise LauncherError("disable-userns", None, "creation of new user namespaces was not disabled as requested")


def _disable_user_namespaces(box: sandbox.Sandbox, proc_fd: int) -> None:
    # The limit is per user namespace: set in ours, then a nested one is
    # entered, whose workload cannot raise its parent's limit again. Our ids
    # are read first: in the new namespace, unmapped, they read as 65534.
    uid, gid = posix.getuid(), posix.getgid()
    try:
        fd = posix.open("sys/user/max_user_namespaces", posix.O_WRONLY | posix.O_CLOEXEC, dir_fd=proc_fd)
        try:
            posix.write(fd, b"1")
        finally:
            posix.close(fd)
        kernel.unshare(kernel.CLONE_NEWUSER)
    except OSError as err:
        raise LauncherError.from_os("disable-userns", "user.max_user_namespaces = 1", err) from None
    # A non-dumpable process's /proc/self files belong to the root of the
    # namespace it was exec'd in, which is unmapped here: the maps could
    # not be opened. Dumpable for the two writes only (the worker does not
    # exist yet; bubblewrap's set-up process is dumpable throughout).
    privileges.set_dumpable()
    try:
        namespaces.map_ids(uid, uid, gid, gid, "self", proc_fd)
    finally:
        privileges.set_undumpable()


def _close_operation_fds(box: sandbox.Sandbox) -> None:
    # Descriptors the caller gave for one operation (--file, --bind-fd...)
    # are spent: the workload does not get them.
    for mount in box.mounts:
        if mount.fd is not None:
            try:
                posix.close(mount.fd)
            except OSError:
                pass


def _take_locks(paths: list[str], floor: int) -> list[int]:
    """bubblewrap's --lock-file: a read lock on each, held by PID 1 for the
    sandbox's life (numbered from ``floor``: a --block-fd the caller never
    opened must not read, then close, one of them)."""
    if not paths:
        return []
    import fcntl  # imported before the pivot (_import_what_the_sandbox_needs)

    held = []
    for path in paths:
        try:
            fd = kernel.keep_above(posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC), floor)
        except OSError as err:
            raise LauncherError.from_os("lock-file", path, err) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            raise LauncherError.from_os("lock-file", path, err) from None
        held.append(fd)
    return held


def _set_capabilities_for_the_worker(box: sandbox.Sandbox) -> None:
    # The mounts were the last thing that needed a capability. Setting the
    # worker's set before the fork leaves the worker nothing to do (it
    # inherits them); PID 1 then drops its own.
    if box.caps:
        privileges.keep_only_capabilities(box.caps)
    else:
        privileges.drop_all_capabilities()


def wait_for_byte(fd: int) -> None:
    """Block until the caller writes a byte to ``fd`` (or closes it), then
    close it (--block-fd, --userns-block-fd). As bubblewrap: a descriptor
    that cannot be read (not open, a pipe's write end) holds nothing up."""
    try:
        posix.read(fd, 1)
    except OSError:
        pass
    try:
        posix.close(fd)  # closed even when unreadable: it must not reach the workload
    except OSError:
        pass


def _fork_worker(plan: Plan, caller_umask: int) -> int:
    """Fork the worker; with a deferred command (box.command_fd), hand it the command.

    A sandbox prepared ahead (srt_launcher/api/launcher.py) forks its worker
    before the command exists: the worker sets itself up and waits on a pipe
    from PID 1, which reads the command from the launcher and passes it on.
    A launch then costs the worker's exec, not a fork of PID 1 and the
    copy-on-write faults of a Python child (≈1 ms, measured).
    """
    box = plan.box
    pipe = posix.pipe2(posix.O_CLOEXEC) if box.command_fd is not None else None
    worker = posix.fork()
    if worker == 0:
        if pipe is not None:
            posix.close(pipe[1])
            posix.close(box.command_fd)  # type: ignore[arg-type]
            plan.command_pipe = pipe[0]
        _worker(plan, caller_umask)
    if pipe is not None:
        posix.close(pipe[0])
        try:
            data = _read_to_eof(box.command_fd, "command fd")  # type: ignore[arg-type]
            box.command, box.timeout = _decode_command(data, box.command_fd)  # type: ignore[arg-type]
            _write_all(pipe[1], data)
        finally:
            posix.close(box.command_fd)  # type: ignore[arg-type]
            posix.close(pipe[1])
            box.command_fd = None
    return worker


def _read_command(fd: int) -> tuple[list[str], float | None]:
    """The deferred command (sandbox.encode_command) on ``fd``, read to EOF; ``fd`` is closed."""
    try:
        return _decode_command(_read_to_eof(fd, "command fd"), fd)
    finally:
        posix.close(fd)


def _decode_command(data: bytes, fd: int) -> tuple[list[str], float | None]:
    decoded = sandbox.decode_command(data)
    if decoded is None:
        raise LauncherError("command fd", str(fd), "closed without a command")
    return decoded


def _read_to_eof(fd: int, step: str) -> bytes:
    try:
        return kernel.read_to_eof(fd)
    except OSError as err:
        raise LauncherError.from_os(step, str(fd), err) from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[posix.write(fd, view) :]
    except OSError as err:  # the worker is gone: its status tells
        if err.errno != errno.EPIPE:
            raise LauncherError.from_os("command fd", "worker", err) from None


def _enter_working_dir(chdir: str | None, cwd: str | None, home: str | None) -> str:
    if chdir is not None:
        try:
            posix.chdir(chdir)
        except OSError as err:
            raise LauncherError.from_os("chdir", chdir, err) from None
        return chdir
    for candidate in (cwd, home, "/"):
        if candidate:
            try:
                posix.chdir(candidate)
                return candidate
            except OSError:
                continue
    return "/"


# ---------------------------------------------------------------- reaping and the end record


def _supervise(plan: Plan, worker: int, started: float) -> int:
    box = plan.box
    wait = _Wait4() if plan.status else posix.waitpid
    supervisor = signals.Supervisor(worker, forward=box.forward_signals, wait=wait)
    deadline = None if box.timeout is None else started + box.timeout
    status = supervisor.run(deadline, time.monotonic)
    ended = time.monotonic()
    if status == signals.TIMED_OUT:
        _kill_everything()
        code, end = TIMEOUT_STATUS, ("timeout", 0, "")
    else:
        code = signals.exit_status(status)
        signum = posix.WTERMSIG(status) if posix.WIFSIGNALED(status) else 0
        end = ("signaled" if signum else "exited", signum, "")
        if box.linger:
            # bubblewrap's PID 1: the launch ends now, the sandbox when the
            # last process it adopted does.
            report.send(plan.channel, report.COMMAND_EXITED, b"%d" % code)
            _reap_until_none_is_left()
            return code
    if plan.status:
        _kill_everything()  # so that the resource usage counts every process of the sandbox
        limit = _limit_that_killed(box, end[1], wait.usage.get(worker)) if isinstance(wait, _Wait4) else ""
        _send_end(plan, end[0], end[1], limit, ended - started, code)
    return code


def _reap_until_none_is_left() -> None:
    while True:
        try:
            posix.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


class _Wait4:
    """waitpid that keeps each child's resource usage (for the rlimit attribution)."""

    def __init__(self) -> None:
        self.usage: dict = {}

    def __call__(self, pid: int, options: int) -> tuple[int, int]:
        child, status, usage = kernel.wait4(pid, options)  # ECHILD: ChildProcessError, as posix.waitpid
        if child:
            self.usage[child] = usage
        return child, status


def _kill_everything() -> None:
    # kill(-1) from PID 1 of a PID namespace reaches every other process in
    # it (and only those); then each is reaped, so none outlives the launch.
    # Anywhere else (no PID namespace of our own: bubblewrap's reaper for
    # --sync-fd or --lock-file) it would reach every process of the
    # caller's uid on the host: then only our own children are reaped.
    if posix.getpid() == 1:
        try:
            posix.kill(-1, _signal.SIGKILL)
        except OSError:
            pass
    _reap_until_none_is_left()


def _limit_that_killed(box: sandbox.Sandbox, signum: int, usage) -> str:  # type: ignore[no-untyped-def]
    # The workload can send itself any signal: SIGXCPU or SIGXFSZ names a
    # limit only when that limit is set (and, for the CPU, was nearly
    # used), or `kill -XCPU $$` would pass for the cpu limit killing it.
    cpu = box.rlimits.get(sandbox.RLIMITS["cpu"])
    used = None if usage is None else usage.user + usage.system
    if signum == _signal.SIGXFSZ:
        fsize = box.rlimits.get(sandbox.RLIMITS["fsize"])
        return "fsize" if fsize is not None and fsize[0] != sandbox.RLIM_INFINITY else ""
    if cpu is None or used is None:
        return ""
    if signum == _signal.SIGXCPU and cpu[0] != sandbox.RLIM_INFINITY and used >= cpu[0] * _CPU_SHARE:
        return "cpu"
    if signum == _signal.SIGKILL and cpu[1] != sandbox.RLIM_INFINITY and used >= cpu[1] * _CPU_SHARE:
        return "cpu"
    return ""



def _send_end(plan: Plan, cause: str, signum: int, limit: str, wall: float, code: int) -> None:
    usage = kernel.getrusage_children()
    end = report.End(cause, signum, limit, wall, usage.user, usage.system, usage.max_rss_kb, code)
    report.send(plan.channel, report.END, end.encode())


# ---------------------------------------------------------------- the worker


def _worker(plan: Plan, caller_umask: int) -> None:
    """Set up the command's process and exec it; never returns."""
    code = SETUP_FAILED
    box = plan.box
    try:
        if box.die_with_parent and box.reaper:
            privileges.set_parent_death_signal(_signal.SIGKILL)  # a reaper outside a PID namespace may die alone
        if plan.status and box.reaper:
            report.send_worker_started(plan.channel)
        _restore_default_signals()
        _close_launcher_fds(plan)
        posix.umask(caller_umask)
        _set_rlimits(box.rlimits)
        if plan.command_pipe is not None:
            # Before the filters: a caller's filter may refuse read().
            box.command, _ = _read_command(plan.command_pipe)
        for program in plan.programs:
            _install_seccomp(program)
        # From here a held signal (sent before the worker existed) kills us.
        _signal.pthread_sigmask(_signal.SIG_SETMASK, plan.caller_mask)
        exec_command(box.command, plan.env, box.argv0)
    except LauncherError as err:
        report.send_error(plan.channel, err)
        code = err.exit_code
    except BaseException as err:
        report.send_error(plan.channel, LauncherError("internal error", None, repr(err)))
    finally:
        posix._exit(code)


def _restore_default_signals() -> None:
    """Undo what the interpreter did to signal dispositions, and only that.

    Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec; it
    also catches SIGINT (KeyboardInterrupt), which would fire here, before
    exec, when the held signals are unblocked. A signal the caller itself
    ignored (nohup, a background job's SIGINT) stays ignored.
    """
    for signum in _IGNORED_BY_PYTHON:
        _signal.signal(signum, _signal.SIG_DFL)
    for signum in signals.FORWARDED:
        if callable(_signal.getsignal(signum)):
            _signal.signal(signum, _signal.SIG_DFL)


def _close_launcher_fds(plan: Plan) -> None:
    """Nothing of the launcher's (pipes, the /proc handle) reaches the workload;
    the caller's own descriptors only where the front end passes them on."""
    box = plan.box
    keep = [plan.channel]  # close-on-exec: here until exec succeeds, for an error record
    if plan.command_pipe is not None:
        keep.append(plan.command_pipe)
    if box.inherit_fds:
        spent = [box.info_fd, box.json_status_fd, box.block_fd, box.userns_block_fd, box.userns_fd, box.userns2_fd, box.pidns_fd]
        if box.reaper:
            spent.append(box.sync_fd)  # PID 1 holds it; bubblewrap leaks it only with --as-pid-1
        for fd in spent:
            if fd is not None:
                try:
                    posix.close(fd)
                except OSError:
                    pass
        return
    kernel.close_fds_except(keep)


def _set_rlimits(rlimits: dict[int, tuple[int, int]]) -> None:
    for which, (soft, hard) in rlimits.items():
        name = sandbox.RLIMIT_NAMES.get(which, str(which))
        if hard != sandbox.RLIM_INFINITY and (soft == sandbox.RLIM_INFINITY or soft > hard):
            raise LauncherError("rlimit", name, "the soft limit is above the hard limit")
        try:
            kernel.setrlimit(which, soft, hard)
        except OSError as err:
            if err.errno == errno.EPERM:
                reason = "raising a hard limit needs a privilege the workload does not have"
                raise LauncherError("rlimit", name, reason, errno=err.errno) from None
            raise LauncherError.from_os("rlimit", name, err) from None


def _install_seccomp(program: kernel.SeccompProgram) -> None:
    try:
        kernel.seccomp_set_filter(program)
    except OSError as err:
        raise LauncherError.from_os("seccomp", "install filter", err) from None


def exec_command(argv: list[str], env: dict[str, str], argv0: str | None = None) -> None:
    """execvp semantics: search $PATH of the workload's environment; EACCES is
    remembered and the search goes on, and a file without a #! line (ENOEXEC)
    is run by /bin/sh, as glibc's execvp does."""
    name = argv[0]
    if not name:
        raise LauncherError("exec ''", None, "No such file or directory", EXEC_NOT_FOUND, errno=errno.ENOENT)
    args = list(argv)
    if argv0 is not None:
        args[0] = argv0
    if "/" in name:
        candidates = [name]
    else:
        path = env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        candidates = [oslite.join(directory or ".", name) for directory in path.split(":")]
    denied: OSError | None = None
    last: OSError | None = None
    for candidate in candidates:
        try:
            posix.execve(candidate, args, env)
        except OSError as err:
            if err.errno == errno.ENOEXEC:
                _exec_as_shell_script(candidate, args, env)
            last = err
            if err.errno == errno.EACCES:
                denied = err
            elif err.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.ESTALE, errno.ENODEV, errno.ETIMEDOUT):
                break
    failure = denied if denied is not None and (last is None or last.errno in (errno.ENOENT, errno.ENOTDIR)) else last
    assert failure is not None
    code = EXEC_NOT_FOUND if failure.errno in (errno.ENOENT, errno.ENOTDIR) else EXEC_NOT_EXECUTABLE
    raise LauncherError.from_os(f"exec {name}", None, failure, code)


def _exec_as_shell_script(path: str, args: list[str], env: dict[str, str]) -> None:
    try:
        posix.execve("/bin/sh", ["/bin/sh", path, *args[1:]], env)
    except OSError:
        pass  # no shell inside: the original ENOEXEC is reported
