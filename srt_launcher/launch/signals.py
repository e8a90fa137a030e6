"""Signals of the launch: which are forwarded, and the race-free wait that forwards them.

The stub and PID 1 each supervise one child: signals sent to them are passed
on to it (when the sandbox asks for forwarding), and they return when it
exits. Both keep the signals they wait for blocked from the start and take
them with sigwaitinfo(2)/sigtimedwait(2), never with Python-level handlers. A
handler only runs between bytecodes: a signal that lands after the last
check and before a blocking waitpid enters the kernel would wait for a child
that never exits (a lost SIGTERM, a hung launch). A blocked signal cannot be
lost: it stays pending until taken.

``_signal``, not ``signal``: the latter builds enums at import, paid
on every launch (SPEC §4).
"""

import posix

import _signal

FORWARDED = (
    _signal.SIGTERM,
    _signal.SIGINT,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
)
LAUNCH_SIGNALS = FORWARDED + (_signal.SIGCHLD,)
# The stub learns of records on its report channel through SIGIO (O_ASYNC),
# so one sigwaitinfo waits for everything.
SIGIO = _signal.SIGIO

TIMED_OUT = -1
STOPPED = -2  # on_io() asked to stop waiting


def block_launch_signals() -> set[int]:
    """Block the forwarded signals and SIGCHLD; return the caller's mask, for the workload."""
    return _signal.pthread_sigmask(_signal.SIG_BLOCK, LAUNCH_SIGNALS)


def exit_status(wait_status: int) -> int:
    """The launcher's exit status for a child's wait status: N, or 128+S if killed by S."""
    code = posix.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Supervisor:
    """Wait for ``child``, forwarding signals and reaping every other child.

    ``forward``: pass the FORWARDED signals on to ``child`` (else they are
    not waited for: their own disposition applies). ``on_other_exit(pid)``:
    another child was reaped. ``on_io()``: SIGIO arrived; a true result ends
    the wait (STOPPED). ``wait``: a
    function (pid, options) -> (pid, status) — posix.waitpid, or a wait4 that
    keeps the child's resource usage.
    """

    __slots__ = ("child", "waited", "on_other_exit", "on_io", "wait")

    def __init__(self, child: int, forward: bool = True, on_other_exit=None, on_io=None, wait=posix.waitpid) -> None:  # type: ignore[no-untyped-def]
        self.child = child
        self.waited = (FORWARDED if forward else ()) + (_signal.SIGCHLD,) + ((SIGIO,) if on_io else ())
        self.on_other_exit = on_other_exit
        self.on_io = on_io
        self.wait = wait

    def run(self, deadline: float | None = None, clock=None) -> int:  # type: ignore[no-untyped-def]
        """The child's wait status, or TIMED_OUT once ``clock()`` passes ``deadline``.

        A signal is forwarded only while ``child`` is unreaped, so its PID cannot
        have been recycled. SIGCHLD is not queued per child: after each one,
        every exited child is reaped.
        """
        while True:
            if deadline is None:
                signum = _signal.sigwaitinfo(self.waited).si_signo
            else:
                remaining = deadline - clock()
                info = _signal.sigtimedwait(self.waited, remaining) if remaining > 0 else None
                if info is None:
                    return TIMED_OUT
                signum = info.si_signo
            if signum == SIGIO:
                if self.on_io():
                    return STOPPED
            elif signum != _signal.SIGCHLD:
                posix.kill(self.child, signum)
            else:
                status = self._reap()
                if status is not None:
                    return status

    def _reap(self) -> int | None:
        while True:
            try:
                pid, status = self.wait(-1, posix.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            if pid == self.child:
                return status
            if self.on_other_exit is not None:
                self.on_other_exit(pid)
