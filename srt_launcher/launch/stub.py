"""The stub: the launcher's own process, outside the sandbox (SPEC §2.2).

It checks and prepares everything that can fail before any namespace exists,
enters the network namespace (relays are forked there), then the PID and the
other namespaces, forks PID 1, and waits for it while passing signals on.
"""

import posix

import _signal
import _stat

from srt_launcher import _preload, kernel, oslite, privileges, sandbox
from srt_launcher.errors import SETUP_FAILED, LauncherError
from srt_launcher.launch import namespaces, pid1, report, signals
from srt_launcher.mount import ops


def launch(box: sandbox.Sandbox, caller_mask: set[int], parent: int) -> int:
    """Launch ``box``; return the launch's exit status (SPEC §2.7).

    Raises LauncherError when the workload never ran (setup or exec
    failure), after the status fd has said so.
    """
    stub = _Stub(box, caller_mask, parent)
    try:
        code = stub.run()
    except LauncherError as err:
        stub.write_end(err.exit_code, None, err)
        raise
    return code


class _Stub:
    __slots__ = ("box", "caller_mask", "parent", "relays", "live_relays", "channel", "records", "started", "ended", "mount_ns", "pid_ns", "pid1", "command_status", "senders", "_alive")

    def __init__(self, box: sandbox.Sandbox, caller_mask: set[int], parent: int) -> None:
        self.box = box
        self.caller_mask = caller_mask
        self.parent = parent
        self.relays: list[int] = []
        self.live_relays: set[int] = set()
        self.channel = -1  # the stub's end of the record channel (launch/report.py)
        self.senders = False  # the channel passes the records' senders
        self.records: list = []
        self.started = False  # the first status record is written
        self.ended = False  # the last one is
        self.mount_ns: int | None = None
        self.pid_ns: int | None = None
        self.pid1: int | None = None  # PID 1 as the caller's PID namespace numbers it, from its first record
        self.command_status: int | None = None  # a lingering PID 1 reported the command's exit
        self._alive = -1  # write end of the pipe PID 1 watches: closed when the stub dies

    # ------------------------------------------------------------ the sequence

    def run(self) -> int:
        box = self.box
        _refuse_setid()
        plan = pid1.Plan(box, [], [], {}, _current_dir(), _stdout_tty(), self.caller_mask)
        # An inherited SIG_IGN for SIGCHLD would make the kernel auto-reap our
        # children: waitpid would then never report PID 1's status.
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        privileges.set_no_new_privs()
        if box.die_with_parent:
            privileges.set_parent_death_signal(_signal.SIGKILL)
            if posix.getppid() != self.parent:
                # The caller died before PDEATHSIG was armed, so it will never fire:
                # end as if it had.
                return 128 + _signal.SIGKILL
        plan.steps = plan_mounts(box.mounts, box.source_ids)
        plan.programs = _seccomp_programs(box.seccomp)
        plan.env = environment(box.env)
        self.channel, plan.channel = report.channel(plan.fd_floor, plan.senders)
        self.senders = plan.senders
        try:
            pid = self._enter_namespaces_and_fork(plan)
        except BaseException:
            self._kill_relays()
            raise
        return self._supervise(pid, plan)

    def _enter_namespaces_and_fork(self, plan: pid1.Plan) -> int:
        box = self.box
        identity = namespaces.Identity(box)
        mode = box.user
        if mode == sandbox.USERNS_TRY:
            mode = sandbox.USERNS_YES if namespaces.user_namespaces_available() else sandbox.USERNS_NO
        if box.userns_fd is not None:
            _join(box.userns_fd, kernel.CLONE_NEWUSER, "userns")
            namespaces.switch_ids(identity)
            mode = sandbox.USERNS_NO
        in_user_ns = False
        if box.net or mode == sandbox.USERNS_YES:
            in_user_ns = namespaces.unshare(kernel.CLONE_NEWNET if box.net else 0, mode, identity)
            if box.net:
                self._loopback_and_relays()
        if in_user_ns:
            mode = sandbox.USERNS_NO
        if box.pidns_fd is not None:
            _join(box.pidns_fd, kernel.CLONE_NEWPID, "pidns")
        namespaces.unshare(_phase_two_flags(box), mode, identity)
        # Non-dumpable: /proc/PID of PID 1 (and the relays) belongs to root and
        # cannot be ptraced by a workload of the same uid (SPEC §2.2).
        privileges.set_undumpable()
        alive_read, alive_write = (kernel.keep_above(fd, plan.fd_floor) for fd in posix.pipe2(posix.O_CLOEXEC))
        pid = posix.fork()
        if pid == 0:
            posix.close(alive_write)
            posix.close(self.channel)
            plan.alive = alive_read
            pid1.main(plan)
        posix.close(alive_read)
        posix.close(plan.channel)
        self._alive = alive_write
        return pid

    def _loopback_and_relays(self) -> None:
        _preload.load(("relays",))  # only a launch with a network namespace reads them
        from srt_launcher.launch import network

        network.bring_up_loopback()
        if not self.box.relays:
            return
        from srt_launcher.relay import inside

        # Before the fork, not in each relay: the flag is inherited, so no relay
        # is ever dumpable, however late the scheduler runs it. setgroups and the
        # uid/gid maps (the stub's only writes to /proc/self) are done by now.
        privileges.set_undumpable()
        self.relays = inside.start_relays(self.box.relays)
        self.live_relays = set(self.relays)

    def _supervise(self, pid: int, plan: pid1.Plan) -> int:
        box = self.box
        wants_worker = box.json_status_fd is not None and box.status_child == sandbox.CHILD_IS_WORKER and box.reaper
        if box.info_fd is not None or (box.json_status_fd is not None and not wants_worker):
            self._wait_for_record(report.MOUNT_NAMESPACE)
            self.write_start(self.pid1 or pid)
        if box.userns_block_fd is not None:
            pid1.wait_for_byte(box.userns_block_fd)
            posix.write(self._alive, b"\0")  # the caller has written the maps: PID 1 goes on
        if wants_worker or box.linger:
            _notify_on_records(self.channel)
            self._on_records()
        _close_caller_fds(box, [self.channel, self._alive, *_optional(box.json_status_fd)])
        privileges.drop_all_capabilities()
        supervisor = signals.Supervisor(
            pid, forward=box.forward_signals, on_other_exit=self.live_relays.discard,
            on_io=self._on_records if wants_worker or box.linger else None,
        )
        waited = supervisor.run() if self.command_status is None else signals.STOPPED
        # A lingering PID 1 told how the command ended: that is the launch's end.
        status = self.command_status if waited == signals.STOPPED else signals.exit_status(waited)
        self._kill_relays()
        posix.close(self._alive)
        return self._outcome(status, pid)

    def _outcome(self, status: int, pid: int) -> int:
        self._on_records()
        error = end = None
        for kind, payload, _ in self.records:
            if kind == report.ERROR and error is None:
                error = LauncherError.decode(payload)
            elif kind == report.END:
                end = report.End.decode(payload)
        if error is not None:
            raise error
        self.write_end(status, end, None)
        return status

    # ------------------------------------------------------------ records and status

    def _on_records(self) -> bool:
        """Take the records waiting; True once the command's exit was reported."""
        for record in report.receive(self.channel, senders=self.senders):
            kind, payload, sender = record
            if kind == report.COMMAND_EXITED:
                self.command_status = int(payload) if payload.isdigit() else None
            elif kind == report.MOUNT_NAMESPACE:
                self.mount_ns, self.pid_ns = report.parse_namespaces_of_pid1(payload)
            elif kind == report.WORKER:
                if not self.started:
                    self.write_start(sender)
            else:
                self.records.append(record)
                if kind == report.END:
                    self._end_early(payload)
        return self.command_status is not None

    def _end_early(self, payload: bytes) -> None:
        """Write the end record as soon as PID 1 sends how the sandbox ended.

        By then PID 1 has killed and reaped every other process of the
        sandbox and measured them; what is left is its own exit, whose
        teardown of the namespaces costs the caller ≈1 ms more (measured)
        if the record waits for it. A worker's error record (exec failed)
        is sent before the worker exits, so before this one: then the end
        is the error, written by _outcome.
        """
        if self.ended or any(kind == report.ERROR for kind, _, _ in self.records):
            return
        end = report.End.decode(payload)
        if end is not None:
            self.write_end(end.code, end, None)

    def _wait_for_record(self, kind: bytes) -> None:
        """Block until PID 1 sends ``kind`` (or dies): the signals stay held meanwhile.

        The record's sender is PID 1 as the kernel numbers it for us (the
        channel passes credentials): with --pidns and --unshare-pid it is
        not the process we forked.
        """
        posix.set_blocking(self.channel, True)
        try:
            while self.mount_ns is None:
                received = report.receive(self.channel, block=True, senders=self.senders)
                if not received:
                    return
                for record in received:
                    if record[0] == kind:
                        self.mount_ns, self.pid_ns = report.parse_namespaces_of_pid1(record[1])
                        self.pid1 = record[2]
                    else:
                        self.records.append(record)
                if self.mount_ns is not None:
                    return
        finally:
            posix.set_blocking(self.channel, False)

    def write_start(self, child: int | None) -> None:
        box = self.box
        self.started = True
        if child is None:
            return
        fields: dict = {"child-pid": child}
        from srt_launcher.launch import status

        fields.update(status.namespace_ids(_unshared(box), self.mount_ns, self.pid_ns))
        if box.info_fd is not None:
            _write_status(box.info_fd, status.info_document(fields), close=True)
        if box.json_status_fd is not None:
            _write_status(box.json_status_fd, status.json_line(fields), close=False)

    def write_end(self, code: int, end: "report.End | None", error: LauncherError | None) -> None:
        fd = self.box.json_status_fd
        if fd is None or self.ended:
            return
        self.ended = True  # the descriptor is closed below: never written again
        from srt_launcher.launch import status

        if self.box.status_child == sandbox.CHILD_IS_PID1:
            # bubblewrap's records: the exit code of a command that ran, and
            # nothing at all when it never ran.
            fields = None if error is not None else {"exit-code": code}
        else:
            fields = status.end_fields(code, end, error)
        if fields is not None:
            _write_status(fd, status.json_line(fields), close=True)

    # ------------------------------------------------------------ relays

    def _kill_relays(self) -> None:
        """SIGKILL the relay's process group and reap it.

        Only an unreaped relay is killed: a reaped relay's pid, and so its
        group id, may belong to someone else by now. The wait is for that
        group, never waitpid(-1): children the caller's program had before
        it exec'd the launcher are ours too, and a launch must not wait for
        them.
        """
        for pid in self.live_relays:
            try:
                posix.killpg(pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
        for group in self.relays:
            try:
                while True:
                    posix.waitpid(-group, 0)
            except ChildProcessError:
                pass
        self.live_relays.clear()
        self.relays = []


# ---------------------------------------------------------------- preparation


def _refuse_setid() -> None:
    ruid, euid, _ = posix.getresuid()
    rgid, egid, _ = posix.getresgid()
    if ruid != euid or rgid != egid:
        raise LauncherError(
            "refusing to run setuid/setgid", f"uid {ruid}/{euid} gid {rgid}/{egid}", "install it as a plain executable"
        )


def _stdout_tty() -> str | None:
    try:
        return posix.ttyname(1) if posix.isatty(1) else None
    except OSError:
        return None


def _current_dir() -> str | None:
    try:
        return posix.getcwd()
    except OSError:
        return None  # deleted or unreachable: PID 1 falls back to $HOME, then /


def plan_mounts(mounts: list[sandbox.Mount], expected: dict | None = None) -> list[ops.Step]:
    """Resolve every host source on the host root, before any namespace exists.

    A missing source fails the launch here (an optional one is skipped),
    before any process is forked. Each bind's step keeps what its source
    is, (device, inode): PID 1 mounts by path, and fails the launch if what
    it mounted is anything else (ops._bind) — so is a source that is not
    what ``expected`` (Sandbox.source_ids) says.
    """
    steps = []
    for mount in mounts:
        if mount.kind in sandbox.BIND_KINDS:
            source = f"/proc/self/fd/{mount.fd}" if mount.fd is not None else mount.source
            resolved = _resolve(mount, source)
            if resolved is None:
                continue
            step = ops.Step(mount, resolved[0], resolved[1])
            step.identity = _identity(mount, resolved[0])
            if expected is not None and step.identity is not None and expected.get(mount.source, step.identity) != step.identity:
                raise LauncherError(f"{mount.kind} source", mount.source, "changed while the sandbox was being prepared")
            steps.append(step)
        elif mount.kind in sandbox.OVERLAY_KINDS:
            lower = tuple(_resolve(mount, path, optional=False)[0] for path in mount.lower)
            step = ops.Step(mount, None, True, lower)
            if mount.kind == sandbox.OVERLAY:
                step.source = _resolve(mount, mount.source, optional=False)[0]
                step.work = _resolve(mount, mount.work, optional=False)[0]
            steps.append(step)
        else:
            steps.append(ops.Step(mount))
    return steps


def _identity(mount: sandbox.Mount, resolved: str) -> tuple[int, int] | None:
    if mount.fd is None and (resolved == "/proc" or resolved.startswith("/proc/")):
        # procfs numbers an inode afresh each time it forgets it: nothing to
        # compare (and no directory there a workload could swap things in).
        return None
    # --bind-fd: the descriptor's own file, whatever its path holds by now.
    try:
        found = posix.fstat(mount.fd) if mount.fd is not None else posix.stat(resolved)
    except OSError as err:
        raise LauncherError.from_os(f"{mount.kind} source", mount.source, err) from None
    return found.st_dev, found.st_ino


def _resolve(mount: sandbox.Mount, path: str, optional: bool | None = None) -> tuple[str, bool] | None:
    try:
        resolved = oslite.realpath(path)
        return resolved, _stat.S_ISDIR(posix.stat(resolved).st_mode)
    except OSError as err:
        if (mount.optional if optional is None else optional) and err.errno == 2:
            return None
        raise LauncherError.from_os(f"{mount.kind} source", path, err) from None


def _seccomp_programs(programs: list) -> list[kernel.SeccompProgram]:
    """The programs the worker stacks, ready to install: the description's,
    then the tty filter, on every launch whatever the front end (issue 11:
    a workload handed a terminal that is nobody's controlling tty takes it
    with setsid + TIOCSCTTY, so PID 1's setsid is no defence against TIOCSTI).
    Prepared here, before any fork: built in the worker, the same structs
    would cost copy-on-write faults on every launch."""
    from srt_launcher import seccomp

    loaded = [seccomp.load_filter(program) if isinstance(program, str) else program for program in programs]
    return [seccomp.prepare(program) for program in (*loaded, seccomp.load_filter(seccomp.TTY))]


def environment(operations: list[tuple]) -> dict[str, str]:
    """The caller's environment with the sandbox's operations applied in order."""
    env = oslite.environ()
    for operation in operations:
        if operation[0] == sandbox.SETENV:
            env[operation[1]] = operation[2]
        elif operation[0] == sandbox.UNSETENV:
            env.pop(operation[1], None)
        else:
            env.clear()
    return env


def _join(fd: int, kind: int, name: str) -> None:
    try:
        kernel.setns(fd, kind)
    except OSError as err:
        raise LauncherError.from_os("setns", name, err) from None


def _phase_two_flags(box: sandbox.Sandbox) -> int:
    flags = kernel.CLONE_NEWPID if box.pid and box.pidns_fd is None else 0
    if box.ipc:
        flags |= kernel.CLONE_NEWIPC
    if box.uts:
        flags |= kernel.CLONE_NEWUTS
    if box.cgroup is True or (box.cgroup == "try" and oslite.exists("/proc/self/ns/cgroup")):
        flags |= kernel.CLONE_NEWCGROUP
    return flags


def _unshared(box: sandbox.Sandbox) -> list[str]:
    names = ["mnt"]
    for name, wanted in (("cgroup", box.cgroup), ("ipc", box.ipc), ("net", box.net), ("pid", box.pid), ("uts", box.uts)):
        if wanted:
            names.append(name)
    return names


def _notify_on_records(channel: int) -> None:
    # Signal-driven I/O: the kernel sends SIGIO when a record arrives, so
    # the one sigwaitinfo of the supervisor also waits for records.
    # SIGIO is blocked first: its default action would kill the stub. A
    # record sent before O_ASYNC raised no signal; the caller reads once after.
    import fcntl

    _signal.pthread_sigmask(_signal.SIG_BLOCK, (signals.SIGIO,))
    fcntl.fcntl(channel, fcntl.F_SETOWN, posix.getpid())
    fcntl.fcntl(channel, fcntl.F_SETFL, fcntl.fcntl(channel, fcntl.F_GETFL) | posix.O_ASYNC)


def _close_caller_fds(box: sandbox.Sandbox, keep: list[int]) -> None:
    # PID 1 and the worker have their copies; the stub needs none of them,
    # and holding a pipe would keep its reader from seeing EOF.
    kernel.close_fds_except(keep)


def _optional(fd: int | None) -> list[int]:
    return [] if fd is None else [fd]


def _write_status(fd: int, data: bytes, close: bool) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view) :]
    except OSError as err:
        raise LauncherError.from_os("status fd", str(fd), err) from None
    finally:
        if close:
            try:
                posix.close(fd)
            except OSError:
                pass
