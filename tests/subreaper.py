"""A caller that is a child subreaper, as sandbox-runtime's process manager
may be: it inherits whatever its descendants leave orphaned.

    python -I subreaper.py ARGV...

Runs ARGV with its output captured; once ARGV has ended, reaps for up to a
second whatever the kernel re-parents here. Prints one JSON object:
``{"returncode": ..., "stdout": ..., "stderr": ..., "inherited": [pids]}``.
"""

import json
import os
import subprocess
import sys
import time

import _prctl


def inherited_children(grace: float = 1.0) -> list[int]:
    inherited, deadline = [], time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # nothing left that could still be re-parented here
        if pid:
            inherited.append(pid)
        else:
            time.sleep(0.01)
    return inherited


def main(argv: list[str]) -> None:
    _prctl.prctl(_prctl.PR_SET_CHILD_SUBREAPER, 1)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    print(json.dumps({
        "returncode": result.returncode,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "inherited": inherited_children(),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
