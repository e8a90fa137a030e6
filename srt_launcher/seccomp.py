"""The seccomp filter of SPEC §2.6: pick the pre-built blob, install it.

The blobs are generated at build time by ``bpf/generate.py`` (which explains
the rules). This module is on the launch path: it never imports pyseccomp
(≈30 ms, SPEC §4), and nothing beyond os, sys and modules run.py has already
loaded.
"""

import os
import sys

from srt_launcher import kernel
from srt_launcher.errors import LauncherError

STEP = "seccomp"

_BLOBS = {"x86_64": "x86_64.bpf", "aarch64": "aarch64.bpf"}

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# An installed wheel has the blobs as package data (pyproject maps bpf/ to
# srt_launcher/_bpf); a source checkout has them in bpf/ beside the package.
_BLOB_DIRS = (os.path.join(_PACKAGE, "_bpf"), os.path.join(os.path.dirname(_PACKAGE), "bpf"))


def _unsupported(machine: str) -> LauncherError:
    if machine in ("i386", "i486", "i586", "i686", "x86"):
        why = (
            "32-bit x86 can create sockets through socketcall(2), whose arguments a seccomp "
            "filter cannot read; refusing to install a filter that is known to be bypassable"
        )
    else:
        why = f"no seccomp filter for this architecture (supported: {', '.join(_BLOBS)})"
    return LauncherError(STEP, machine, why)


def load_filter(name: str = "unix-block") -> bytes:
    """The filter ``name`` for the running architecture, as struct sock_filter[] bytes.

    Called in the stub before any namespace or process exists, so an
    unsupported host fails the launch cleanly (exit 125).
    """
    if name != "unix-block":
        raise LauncherError(STEP, name, "no such built-in filter")
    machine = kernel.MACHINE
    name = _BLOBS.get(machine)
    if name is None:
        raise _unsupported(machine)
    if sys.maxsize < 2**32:
        # A 32-bit interpreter on a 64-bit kernel makes its syscalls through the
        # compat ABI, which the filter kills on sight.
        raise LauncherError(STEP, machine, "a 32-bit Python cannot run under the 64-bit seccomp filter")
    for directory in _BLOB_DIRS:
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as handle:
                program = handle.read()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise LauncherError.from_os(STEP, path, err) from None
        if not program or len(program) % 8:
            raise LauncherError(STEP, path, "not a seccomp BPF program (size is not a multiple of 8 bytes)")
        return program
    raise LauncherError(STEP, os.path.join(_BLOB_DIRS[0], name), "filter missing from the installation")


def install(program: bytes) -> None:
    """Install ``program`` on the calling thread; the caller execs right after.

    NO_NEW_PRIVS is already set (by the stub, inherited), as the kernel requires
    of a process without CAP_SYS_ADMIN.
    """
    try:
        kernel.seccomp_set_filter(program)
    except OSError as err:
        raise LauncherError.from_os(STEP, "install filter", err) from None
