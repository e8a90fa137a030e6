"""The click command line: help for every subcommand, and the non-launch subcommands.

``run`` is executed by :mod:`srt_launcher.commands.run` without click (SPEC §4);
it is declared here so that ``srt-launcher --help`` and ``srt-launcher run --help``
describe it.
"""

from __future__ import annotations

import click

from srt_launcher.commands import relay as relay_command
from srt_launcher.commands.check import check
from srt_launcher.commands.connect import connect

RUN_HELP = """Run COMMAND in a sandbox: its own user, PID, mount (and network) namespaces.

\b
Options are applied in argv order (mount order is semantic) and may repeat:
  --unshare-net               new network namespace with only lo, up
  --unshare-user              take the user-namespace path even as root
  --seccomp-unix-block        block AF_UNIX socket creation and io_uring (seccomp)
  --bind SRC DST              recursive bind, read-write, nosuid, nodev
  --ro-bind SRC DST           recursive bind, read-only (every submount too), nosuid, nodev
  --tmpfs DST                 fresh tmpfs, mode 0755, nosuid, nodev
  --dev DST                   minimal /dev: null zero full random urandom tty, pts, shm
  --proc DST                  procfs of the sandbox's PID namespace, with covers
  --host-proc DST             recursive bind of the host /proc instead
  --relay PORT UNIX_PATH      127.0.0.1:PORT inside -> host Unix socket (needs --unshare-net)
  --setenv KEY VALUE          set KEY=VALUE in the command's environment
  --                          end of options; COMMAND must follow

\b
Exit status: the command's own; 128+N if it was killed by signal N;
2 usage error; 125 launcher setup failed; 126 not executable; 127 not found.
"""


class _Group(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # SPEC §1: a missing subcommand is a usage error (exit 2), not help on stdout.
        if not args:
            raise click.UsageError("missing subcommand (one of: " + ", ".join(sorted(self.commands)) + ")", ctx)
        return super().parse_args(ctx, args)


@click.group(cls=_Group, no_args_is_help=False)
def cli() -> None:
    """srt-launcher: a Linux sandbox launcher (bubblewrap + socat + seccomp helper in one command)."""


@cli.command(
    "run",
    help=RUN_HELP,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "allow_interspersed_args": False},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="-- COMMAND [ARGS]...")
@click.pass_context
def run_command(ctx: click.Context, args: tuple[str, ...]) -> None:
    from srt_launcher.__main__ import wants_help
    from srt_launcher.commands import run

    # click stops reading options at the first word it does not know, so a
    # --help after `--ro-bind / /` reaches us here.
    if wants_help(list(args)):
        click.echo(ctx.get_help())
        ctx.exit(0)
    raise SystemExit(run.main(list(args)))


@cli.command("relay", help=relay_command.HELP, short_help="Host Unix socket -> TCP HOST:PORT relay.")
@click.option(
    "--ready-fd",
    type=click.IntRange(min=0),
    metavar="N",
    help="Once listening, write one byte to fd N and close it (readiness handshake).",
)
@click.argument("unix_socket", metavar="UNIX_SOCKET")
@click.argument("upstream", metavar="HOST:PORT")
def relay(ready_fd: int | None, unix_socket: str, upstream: str) -> None:
    relay_command.start_relay(ready_fd, unix_socket, upstream)


cli.add_command(connect)
cli.add_command(check)
