"""The launcher's seccomp filters: pick the pre-built blob, install it.

Three filters, generated at build time by ``bpf/generate.py`` (which explains
each rule) into ``FILTER.MACHINE.bpf``:

* ``tty`` — on every launch: TIOCSTI and TIOCLINUX refused (issue 11, finding 6);
* ``unix-block`` — ``--seccomp-unix-block`` (SPEC §2.6);
* ``harden`` — ``--seccomp-harden`` (SPEC §6).

They are loaded and prepared in the stub (an unsupported host or a broken
installation fails the launch before any process exists) and installed,
stacked, by the worker just before exec. This module is on the launch path: it never imports
pyseccomp (SPEC §4), and nothing beyond os, sys and modules run.py
has already loaded.
"""

import sys

from srt_launcher import kernel, oslite
from srt_launcher.errors import LauncherError

STEP = "seccomp"

TTY = "tty"
UNIX_BLOCK = "unix-block"
HARDEN = "harden"

_MACHINES = ("x86_64", "aarch64")
# These two kill every foreign ABI: a 32-bit process could not run under them.
_KILLS_FOREIGN_ABIS = (UNIX_BLOCK, HARDEN)

_PACKAGE = oslite.dirname(oslite.abspath(__file__))
# An installed wheel has the blobs as package data (pyproject maps bpf/ to
# srt_launcher/_bpf); a source checkout has them in bpf/ beside the package.
_BLOB_DIRS = (oslite.join(_PACKAGE, "_bpf"), oslite.join(oslite.dirname(_PACKAGE), "bpf"))


def _unsupported(name: str, machine: str) -> LauncherError:
    if machine in ("i386", "i486", "i586", "i686", "x86") and name != TTY:
        why = (
            "32-bit x86 can create sockets through socketcall(2), whose arguments a seccomp "
            "filter cannot read; refusing to install a filter that is known to be bypassable"
        )
    else:
        why = f"no seccomp filter for this architecture (supported: {', '.join(_MACHINES)})"
    return LauncherError(STEP, machine, why)


def load_filter(name: str) -> bytes:
    """The filter ``name`` (TTY, UNIX_BLOCK, HARDEN) for the running
    architecture, as struct sock_filter[] bytes.

    Called in the stub before any namespace or process exists, so an
    unsupported host fails the launch cleanly (exit 125).
    """
    if name not in (TTY, UNIX_BLOCK, HARDEN):
        raise LauncherError(STEP, name, "no such built-in filter")
    machine = kernel.MACHINE
    if machine not in _MACHINES:
        raise _unsupported(name, machine)
    if name in _KILLS_FOREIGN_ABIS and sys.maxsize < 2**32:
        # A 32-bit interpreter on a 64-bit kernel makes its syscalls through the
        # compat ABI, which the filter kills on sight.
        raise LauncherError(STEP, machine, "a 32-bit Python cannot run under the 64-bit seccomp filter")
    blob = f"{name}.{machine}.bpf"
    for directory in _BLOB_DIRS:
        path = oslite.join(directory, blob)
        try:
            program = kernel.read_file(path)
        except FileNotFoundError:
            continue
        except OSError as err:
            raise LauncherError.from_os(STEP, path, err) from None
        if not program or len(program) % 8:
            raise LauncherError(STEP, path, "not a seccomp BPF program (size is not a multiple of 8 bytes)")
        return program
    raise LauncherError(STEP, oslite.join(_BLOB_DIRS[0], blob), "filter missing from the installation")


def prepare(program: bytes) -> kernel.SeccompProgram:
    """``program`` ready to install; done in the stub, before any fork."""
    try:
        return kernel.SeccompProgram(program)
    except OSError as err:
        raise LauncherError(STEP, f"{len(program)} bytes", str(err.strerror)) from None


def install(program: kernel.SeccompProgram) -> None:
    """Install ``program`` on the calling thread, on top of any filter already
    there (the kernel runs them all and keeps the most severe answer); the
    caller execs right after.

    NO_NEW_PRIVS is already set (by the stub, inherited), as the kernel requires
    of a process without CAP_SYS_ADMIN.
    """
    try:
        kernel.seccomp_set_filter(program)
    except OSError as err:
        raise LauncherError.from_os(STEP, "install filter", err) from None
