"""``srt-launcher check [--json] [-- RUN_OPTIONS...]`` (SPEC §10): will launches work here, and if not, why."""

from __future__ import annotations

import click

from srt_launcher.errors import LauncherError

HELP = """Probe this host for what a launch needs, for real, each probe in a throw-away child.

\b
Probes: user-namespace (create one, write its maps), userns-capabilities
(a privileged operation inside it), net-namespace (lo up, its addresses
through rtnetlink), pid-namespace, mount-namespace (/ made a slave),
pivot-root, procfs, seccomp (the launcher's filter), mount-setattr,
landlock, cgroup-delegation (read only), launcher-isolation (the installed
command ignores PYTHONPATH and user site-packages).

\b
One line per probe (ok / warn / FAIL / skip), then the cause of each
failure (which mechanism refused, with the errno) and its fix. Without
RUN_OPTIONS it checks sandbox-runtime's launch (--unshare-net
--seccomp-unix-block --ro-bind / / --proc /proc --dev /dev); with
`-- RUN_OPTIONS` (run's options; a command after a second `--` is
replaced by /bin/true) it checks that launch, its bind sources and relay
sockets, and runs it end to end.

\b
Exit status: 0 the launch would work, 1 it would not, 2 usage error.
"""


@click.command("check", help=HELP, short_help="Will launches work on this host? Causes and fixes.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON (a list of probe objects; see README).")
@click.argument("run_options", nargs=-1, type=click.UNPROCESSED, metavar="[-- RUN_OPTIONS...]")
@click.pass_context
def check(ctx: click.Context, as_json: bool, run_options: tuple[str, ...]) -> None:
    from srt_launcher.check import examine, report

    try:
        plan, route, findings = examine(list(run_options) if run_options else None)
    except LauncherError as err:
        if err.exit_code != 2:
            raise
        what = ": ".join(part for part in (err.step, err.value) if part)
        raise click.UsageError(f"RUN_OPTIONS: {what}", ctx) from None
    click.echo(report.render_json(findings) if as_json else report.render_text(findings, plan, route), nl=False)
    ctx.exit(report.exit_status(findings))
