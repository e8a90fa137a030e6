"""What works on this host, and why not: the probes of SPEC §10.

Shared by ``srt-launcher check`` (commands/check.py) and the Python API's
:func:`probe` (SPEC §9). Modules:

- ``probes``     the real operations, as one chain in a throw-away child
- ``isolation``  does the installed command ignore the caller's Python environment (§11)
- ``launch``     ``check -- RUN_OPTIONS``: the launch's needs, its binds, relays, and the launch itself
- ``host``       what the host's files say (AppArmor, WSL, sysctls), under a root directory
- ``diagnosis``  cause (mechanism, errno) and fix of each failure
- ``report``     ok / warn / FAIL / skip, the text and the JSON renderings

Importing this package costs nothing: the modules load when called.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping


class Feature:
    """One probe's answer: ``ok``, and ``reason`` (what was done, or why it failed)."""

    __slots__ = ("ok", "reason", "fix", "needed")

    def __init__(self, ok: bool, reason: str, fix: str | None, needed: bool) -> None:
        self.ok = ok
        self.reason = reason
        self.fix = fix  # what to change on the host, when not ok
        self.needed = needed  # whether a default sandbox needs it

    def __repr__(self) -> str:
        return f"Feature(ok={self.ok!r}, reason={self.reason!r})"


class ProbeResult(Mapping[str, Feature]):
    """Feature name → :class:`Feature`; truthy only when a default sandbox can be made here."""

    def __init__(self, features: dict[str, Feature]) -> None:
        self._features = features

    def __getitem__(self, name: str) -> Feature:
        return self._features[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._features)

    def __len__(self) -> int:
        return len(self._features)

    def __bool__(self) -> bool:
        return all(feature.ok for feature in self._features.values() if feature.needed)

    def __repr__(self) -> str:
        return f"ProbeResult({'usable' if self else 'unusable'}, {self._features!r})"


def examine(  # type: ignore[no-untyped-def]
    run_options: list[str] | None = None, *, rtnetlink: bool = True, isolation: bool = True, chain=None
):
    """Run every probe for the launch of ``run_options`` (None: sandbox-runtime's launch).

    Returns (plan, route, findings). A usage error in ``run_options`` raises
    the run parser's LauncherError (exit status 2). ``chain``: the namespace
    probes' result when already run elsewhere (the API's launcher process).
    """
    from srt_launcher.check import diagnosis, host, launch, probes, report

    if isolation or run_options is not None:
        from srt_launcher.check import isolation as isolation_probe

    plan = launch.plan_of(run_options)
    if chain is None:
        chain = probes.run_chain(force_user=plan.force_user, rtnetlink=rtnetlink)
    outcomes = dict(chain.outcomes)
    script = isolation_probe.installed_launcher() if isolation or plan.given else None
    if isolation:
        outcomes["launcher-isolation"] = isolation_probe.probe(script)
    if plan.given:
        if plan.binds:
            outcomes["bind-sources"] = launch.bind_sources(plan)
        if plan.relays:
            outcomes["relay-sockets"] = launch.relay_sockets(plan)
        outcomes["launch"] = launch.run_launch(plan, script)
    ctx = diagnosis.Context(host.Host("/"), chain.route)
    return plan, chain.route, report.evaluate(outcomes, plan, ctx)


def probe(chain=None) -> ProbeResult:  # type: ignore[no-untyped-def]
    """What works on this host, for a service's start-up check (SPEC §9).

    The probes of sandbox-runtime's launch (namespaces, procfs, pivot_root,
    lo, the seccomp filter; Landlock, cgroups and mount_setattr as
    information), run for real in one forked child — of this process, or,
    through ``srt_launcher.probe()``, of the API's launcher process, which
    passes its ``chain`` here. No pyroute2, and the installed command is
    not run. ``bool(probe())`` is True only when a default sandbox can be
    made here.
    """
    _, _, findings = examine(None, rtnetlink=False, isolation=False, chain=chain)
    features = {}
    for finding in findings:
        if finding.status == "ok":
            reason = finding.detail
        else:
            reason = finding.cause or finding.detail
        features[finding.name] = Feature(finding.status == "ok", reason, finding.fix, finding.needed)
    return ProbeResult(features)


__all__ = ["Feature", "ProbeResult", "examine", "probe"]
