"""``srt_launcher.probe()``: can this host make the sandboxes a service needs? (SPEC §9)

The probes are `check`'s (SPEC §10: real namespaces, procfs, pivot_root,
``lo``, the seccomp filter, and Landlock, cgroups and mount_setattr as
information), run by this process's launcher process — the process that
will make the sandboxes, started the way it always is — so the caller is
never forked. The result adds ``launcher-process``: whether that process
could be started and answered.
"""

from __future__ import annotations

from srt_launcher.api import client
from srt_launcher.check import Feature, ProbeResult, probes

_TIMEOUT = 60.0


def probe() -> ProbeResult:
    """Feature name → ``Feature(ok, reason)``; truthy only when a default sandbox can be made here.

    For a service's start-up check: refuse to serve (fail closed) when
    ``not srt_launcher.probe()``. Never raises for a host that cannot
    sandbox: that is what the answer says.
    """
    from srt_launcher import check

    try:
        chain = _chain_from_launcher()
    except client.LaunchFailed as err:
        reason = ": ".join(part for part in (err.step, err.value, err.message) if part)
        return ProbeResult({"launcher-process": Feature(False, reason, "see the reason; `srt-launcher check` explains the host", True)})
    result = check.probe(chain=chain)
    features = dict(result.items())
    features["launcher-process"] = Feature(True, "started isolated (-I -S) and answered", None, True)
    return ProbeResult(features)


def _chain_from_launcher() -> probes.ChainResult:
    reply = client.send(("probe",))
    try:
        answer, fds = client.wait_reply(reply, _TIMEOUT)
    finally:
        reply.close()
    for fd in fds:
        import os

        os.close(fd)
    if answer and answer[0] is True and len(answer) == 3:
        outcomes = {fields[0]: probes.Outcome(*fields) for fields in answer[1]}
        return probes.ChainResult(outcomes, answer[2])
    if answer and answer[0] is False and len(answer) == 4:
        raise client.LaunchFailed(answer[1], answer[2], answer[3])
    raise client.LaunchFailed("launcher process", None, f"unexpected answer {answer!r}")
