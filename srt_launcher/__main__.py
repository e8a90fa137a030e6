"""Entry point of the multicall command (SPEC §1).

``run`` takes a fast path that never imports click, pyroute2 or pyseccomp
(SPEC §4): its argv is parsed from a table because mount order is semantic.
Every other subcommand, and help for them, goes through the click group.
"""

import os
import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # Multicall: the variable selected this program; the workload must not see it.
    if os.environ.get("ARGV0") == "srt-launcher":
        del os.environ["ARGV0"]
    if args and args[0] == "run":
        parent = os.getppid()
        from srt_launcher.launch import signals

        # Blocked before the imports below: a SIGTERM or ^C that lands while
        # they run is held for the workload, not lost and not a
        # KeyboardInterrupt traceback.
        caller_mask = signals.block_launch_signals()
        from srt_launcher.commands import run

        code = run.main(args[1:], caller_mask, parent)
        # Skip interpreter teardown (1-2 ms measured, on every launch): the
        # launcher writes only through os.write, so nothing is left to flush.
        os._exit(code)
    import click

    from srt_launcher.cli import cli
    from srt_launcher.errors import LauncherError, report

    try:
        return cli.main(args=args, prog_name="srt-launcher", standalone_mode=False) or 0
    except click.UsageError as err:
        # SPEC §2.7: usage errors read like every other launcher error.
        usage = err.ctx.get_usage() if err.ctx is not None else None
        return report(LauncherError.usage_error(err.format_message(), None, usage))
    except click.ClickException as err:
        return report(LauncherError(err.format_message(), None, None, err.exit_code))
    except click.Abort:
        return 130
    except LauncherError as err:
        return report(err)


if __name__ == "__main__":
    sys.exit(main())
