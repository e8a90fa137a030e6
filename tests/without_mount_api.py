"""Run a command as if on a kernel without the new mount API (tests of the fallbacks).

    without_mount_api.py -- COMMAND [ARGS...]

Installs a seccomp filter answering ENOSYS to move_mount, open_tree,
mount_setattr, fsopen, fsconfig, fsmount and fspick — what a kernel before
5.2 (or a container profile that does not know them, with ENOSYS as its
default) says — then execs COMMAND, which inherits the filter.
"""

import os
import sys

import pyseccomp

CALLS = ("move_mount", "open_tree", "mount_setattr", "fsopen", "fsconfig", "fsmount", "fspick")


def main() -> None:
    argv = sys.argv[sys.argv.index("--") + 1 :]
    policy = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in CALLS:
        policy.add_rule(pyseccomp.ERRNO(38), name)  # ENOSYS
    policy.load()  # libseccomp sets NO_NEW_PRIVS first
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
