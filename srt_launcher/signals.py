"""Signals of the launch: which are forwarded, and the race-free wait that forwards them.

The stub and PID 1 each supervise one child: signals sent to them are passed
on to it, and they exit when it exits. Both keep the forwarded signals and
SIGCHLD blocked from the start and take them with sigwaitinfo(2), never with
Python-level handlers. A handler only runs between bytecodes: a signal that
lands after the last check and before a blocking waitpid enters the kernel
would wait for a child that never exits (a lost SIGTERM, a hung launch).
A blocked signal cannot be lost: it stays pending until taken.

``_signal``, not ``signal``: the latter builds enums at import (≈5 ms), paid
on every launch (SPEC §4).
"""

import os

import _signal

FORWARDED = (
    _signal.SIGTERM,
    _signal.SIGINT,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
)
_WAKE = FORWARDED + (_signal.SIGCHLD,)


def block_launch_signals() -> set[int]:
    """Block the forwarded signals and SIGCHLD; return the caller's mask, for the workload."""
    return _signal.pthread_sigmask(_signal.SIG_BLOCK, _WAKE)


def exit_status(wait_status: int) -> int:
    """The launcher's exit status for a child's wait status: N, or 128+S if killed by S."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def supervise(child: int, on_other_exit=None) -> int:  # type: ignore[no-untyped-def]
    """Forward signals to ``child`` and reap every child until ``child`` exits; return its status.

    A signal is forwarded only while ``child`` is unreaped, so its PID cannot
    have been recycled. SIGCHLD is not queued per child: after each one,
    every exited child is reaped.
    """
    while True:
        signum = _signal.sigwaitinfo(_WAKE).si_signo
        if signum != _signal.SIGCHLD:
            os.kill(child, signum)
            continue
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid == child:
                return exit_status(status)
            if on_other_exit is not None:
                on_other_exit(pid)
