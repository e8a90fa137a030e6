"""Entry point of the multicall command (SPEC §1).

``run`` takes a fast path that never imports click, pyroute2 or pyseccomp
(SPEC §4): its argv is parsed from a table because mount order is semantic.
So do the socat front end, run as ``socat``/``srt-socat`` (argv[0]'s
basename) or ``srt-launcher socat``, and the bubblewrap front end, run as
``bwrap``/``srt-bwrap`` or ``srt-launcher bwrap``. Every other subcommand,
and help for them, goes through the click group.
"""

import gc
import posix
import sys

from srt_launcher import _preload, _site

SOCAT_NAMES = ("socat", "srt-socat")
BWRAP_NAMES = ("bwrap", "srt-bwrap")


def main(argv: list[str] | None = None) -> int:
    parent = posix.getppid()  # first: the later this is read, the longer a dead parent goes unnoticed
    _site.find_dependencies()
    if "srt-launcher-write-image" in sys._xoptions:
        # scripts/direct-start: the launch path's image (srt_launcher/_preload.py),
        # written by the interpreter and the package this process runs.
        from srt_launcher import _preload_writer

        _preload_writer.write()
        return 0
    args = list(sys.argv[1:] if argv is None else argv)
    program = sys.argv[0] if sys.argv and sys.argv[0] else "srt-launcher"
    # Multicall: the variable selected this program; the workload must not see it.
    by_variable = posix.environ.get(b"ARGV0") == b"srt-launcher"
    if by_variable:
        from srt_launcher import oslite

        oslite.unsetenv("ARGV0")
    # The socat front end: by the name it was run under, or as a subcommand.
    if argv is None and sys.argv[0].rpartition("/")[2] in SOCAT_NAMES:
        _socat(args)
    if args and args[0] == "socat":
        _socat(args[1:])
    # The bubblewrap front end likewise (unless ARGV0 chose srt-launcher).
    if argv is None and not by_variable and program.rpartition("/")[2] in BWRAP_NAMES:
        posix._exit(_bwrap(args, program))
    if args and args[0] == "bwrap":
        posix._exit(_bwrap(args[1:], program + " bwrap"))
    if args and args[0] == "run":
        _preload.load(("signals",))
        from srt_launcher.launch import signals

        # Blocked before the imports below: a SIGTERM or ^C that lands while
        # they run is held for the workload, not lost and not a
        # KeyboardInterrupt traceback.
        caller_mask = signals.block_launch_signals()
        _preload.load(("engine", "run"))
        from srt_launcher.commands import run
        from srt_launcher.launch import stub  # noqa: F401 (the engine run.main launches with)

        collect_from_here()
        code = run.main(args[1:], caller_mask, parent)
        # Skip interpreter teardown (paid on every launch): the
        # launcher writes only through posix.write, so nothing is left to flush.
        posix._exit(code)
    if args and args[0] == "relay":
        die_with_parent(parent)
    import click

    from srt_launcher.cli import cli
    from srt_launcher.errors import LauncherError, report

    collect_from_here()

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
    except OSError as err:  # out of descriptors, processes, memory: one line, still 125
        return report(LauncherError.from_os(args[0] if args else "srt-launcher", None, err))
    except Exception as err:  # noqa: BLE001 - the last resort: one line, never a traceback
        return report(LauncherError("internal error", None, repr(err)))


def _socat(args: list[str]) -> None:
    """socat's command line, without click (a launch path, SPEC §4)."""
    from srt_launcher.commands import socat

    collect_from_here()
    # posix._exit: a pump thread may still be blocked after -t ended the
    # transfer, and everything was written with posix.write.
    posix._exit(socat.main(args))


def collect_from_here() -> None:
    """The cyclic collector back on (srt-launcher-boot starts without it),
    for what is allocated from now on: everything imported so far is frozen
    out of its way, so no collection walks it, and no collection in a forked
    PID 1 or relay writes to (copies) the pages it lives in."""
    gc.freeze()
    gc.enable()


def die_with_parent(parent: int) -> None:
    """Arm PDEATHSIG now, before the click import, which is slow: ``relay`` serves until
    killed, so a parent that dies during its start-up must take it along.

    If the parent died before this process could read its pid (while the
    interpreter started), ``parent`` already names the reaper: then nothing
    here can tell, but a ``--ready-fd`` pipe whose only reader was the parent
    fails the readiness write (EPIPE), and the relay exits.
    """
    import _prctl

    _prctl.prctl(_prctl.PR_SET_PDEATHSIG, 9)  # SIGKILL; the signal module is not loaded yet
    _prctl.prctl(_prctl.PR_SET_NO_NEW_PRIVS, 1)
    if posix.getppid() != parent:
        posix._exit(0)  # the parent died before PDEATHSIG was armed: nobody would ever end us


def _bwrap(args: list[str], program: str) -> int:
    # No signal is blocked here, unlike run: bubblewrap's process dies of a
    # SIGTERM (nothing is passed on to the sandbox), and so does this one.
    _preload.load(("signals", "engine", "bwrap"))
    from srt_launcher.commands import bwrap
    from srt_launcher.launch import stub  # noqa: F401 (the engine bwrap.main launches with)

    collect_from_here()
    return bwrap.main(args, program)


if __name__ == "__main__":
    sys.exit(main())
