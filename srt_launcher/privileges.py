"""Process attributes set through prctl (python-prctl) and capability dropping.

``_prctl`` is python-prctl's C interface. The friendly ``prctl`` module builds
classes for every capability at import time, which the launch
path cannot afford (SPEC §4); the C interface it wraps is what we need.
"""

import errno

import _prctl

from srt_launcher import kernel


def set_no_new_privs() -> None:
    # No setuid binary or file capability can raise privileges after this, and
    # it lets an unprivileged worker install a seccomp filter.
    _prctl.prctl(_prctl.PR_SET_NO_NEW_PRIVS, 1)


def set_parent_death_signal(signum: int) -> None:
    _prctl.prctl(_prctl.PR_SET_PDEATHSIG, signum)


def set_child_subreaper() -> None:
    # Descendants orphaned by a dying child are re-parented to us rather than
    # to the caller's reaper (or init), so we can reap them before exiting.
    _prctl.prctl(_prctl.PR_SET_CHILD_SUBREAPER, 1)


def clear_child_subreaper() -> None:
    _prctl.prctl(_prctl.PR_SET_CHILD_SUBREAPER, 0)


def set_undumpable() -> None:
    # Non-dumpable: /proc/PID/{mem,environ,fd} of launcher processes are
    # owned by root and ptrace needs CAP_SYS_PTRACE, so an uncapable workload
    # of the same uid cannot read or drive PID 1 or a relay.
    _prctl.prctl(_prctl.PR_SET_DUMPABLE, 0)


def set_dumpable() -> None:
    _prctl.prctl(_prctl.PR_SET_DUMPABLE, 1)


def _drop_bounding(cap: int) -> None:
    if cap <= _prctl.CAP_LAST_CAP:
        _prctl.prctl(_prctl.PR_CAPBSET_DROP, cap)
    else:
        # python-prctl only knows the capabilities of the headers it was
        # built against; a newer kernel's extra ones are dropped directly.
        kernel.prctl_capbset_drop(cap)


def _drop_bounding_except(kept: frozenset[int]) -> None:
    """Drop every capability but ``kept`` from the bounding set, up to the kernel's last one."""
    cap = 0
    while True:
        try:
            if cap not in kept:
                _drop_bounding(cap)
        except OSError as err:
            if err.errno == errno.EINVAL:
                return  # past the kernel's last capability
            raise
        cap += 1


def drop_all_capabilities() -> None:
    """Empty the bounding, ambient, inheritable, permitted and effective sets.

    The bounding set goes first: dropping from it needs CAP_SETPCAP, which
    the final capset removes. Without the bounding drop, a later execve of a
    file with capabilities (or uid 0 executing anything) could regain them.
    """
    _drop_bounding_except(frozenset())
    kernel.clear_ambient_capabilities()
    kernel.capset_clear()


def keep_only_capabilities(caps: frozenset[int]) -> None:
    """Keep ``caps`` (and nothing else) across exec, as bubblewrap does for --cap-add.

    The bounding set loses everything else first (that needs CAP_SETPCAP,
    which the capset below may remove); the kept ones are made effective,
    permitted, inheritable and ambient, so that they survive exec of a
    program without file capabilities, as a non-root user's.
    """
    _drop_bounding_except(caps)
    mask = 0
    for kept in caps:
        mask |= 1 << kept
    kernel.clear_ambient_capabilities()
    kernel.capset(mask, mask, mask)
    for kept in sorted(caps):
        try:
            kernel.raise_ambient_capability(kept)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.EPERM):  # as bubblewrap: not ours to have
                raise
