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
    short_help="Run COMMAND in a sandbox (see srt-launcher run --help).",
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "allow_interspersed_args": False},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[OPTIONS] -- COMMAND [ARGS]...")
def run_command(args: tuple[str, ...]) -> None:
    """Run COMMAND in a sandbox (its own table of options: srt-launcher run --help)."""
    from srt_launcher.commands import run

    # Reached only when options precede the subcommand; `srt-launcher run`
    # itself is parsed without click (__main__).
    raise SystemExit(run.main(list(args)))


@cli.command("relay", help=relay_command.HELP, short_help="Host Unix socket -> TCP HOST:PORT relay.")
@click.option(
    "--ready-fd",
    type=click.IntRange(min=0, max=(1 << 31) - 1),  # a descriptor number is a C int
    metavar="N",
    help="Once listening, write one byte to fd N and close it (readiness handshake).",
)
@click.argument("unix_socket", metavar="UNIX_SOCKET")
@click.argument("upstream", metavar="HOST:PORT")
def relay(ready_fd: int | None, unix_socket: str, upstream: str) -> None:
    relay_command.start_relay(ready_fd, unix_socket, upstream)


cli.add_command(connect)
cli.add_command(check)


@cli.command(
    "socat",
    short_help="The socat subset sandbox tools use (srt-launcher socat --help).",
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "allow_interspersed_args": False},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[-d...] [-t SECONDS] ADDRESS1 ADDRESS2")
def socat_command(args: tuple[str, ...]) -> None:
    """socat's command line (its own help: srt-launcher socat --help)."""
    from srt_launcher.commands import socat

    # Reached only when options precede the subcommand; `srt-launcher socat`
    # itself is parsed without click (__main__).
    raise SystemExit(socat.main(list(args)))
