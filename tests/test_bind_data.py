"""The engine's data binds (bind-data, ro-bind-data): a file holding given
bytes, bound at a path of the sandbox — the Python API's ``File`` mount.

Regression: the staged file was unlinked before its mount was moved into
place, and the kernel refuses to move a mount whose root is unlinked, so
every data bind failed with ENOENT. Run as root, as uid 65534 and as root
through a user namespace.
"""

from __future__ import annotations

import json
import subprocess

DRIVER = r'''
import json, os, sys
from srt_launcher import sandbox
from srt_launcher.errors import LauncherError
from srt_launcher.launch import signals, stub
from srt_launcher.sandbox import Mount

box = sandbox.Sandbox()
box.user = sandbox.USERNS_YES if sys.argv[1] == "root-userns" else sandbox.USERNS_IF_NEEDED
box.mounts = [
    Mount("ro-bind", "/usr", "/usr"),
    Mount("symlink", "/bin", "usr/bin"), Mount("symlink", "/lib", "usr/lib"), Mount("symlink", "/lib64", "usr/lib64"),
    Mount("ro-bind-data", "/etc/one", data=b"first\n", perms=0o644),
    Mount("ro-bind-data", "/etc/deeper/two", data=b"second\n", perms=0o444),
    Mount("bind-data", "/three", data=b"third\n", perms=0o644),
]
box.command = ["/bin/sh", "-c", "cat /etc/one /etc/deeper/two /three; "
               "echo x >> /etc/one && echo ro-writable; echo changed > /three && cat /three"]
box.env = [("clear",), ("set", "PATH", "/usr/bin:/bin")]
out_r, out_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(out_r)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    try:
        code = stub.launch(box, signals.block_launch_signals(), os.getppid())
    except LauncherError as err:
        os.write(2, f"{err.step}: {err.value}: {err.reason}\n".encode())
        code = err.exit_code
    os._exit(code)
os.close(out_w)
output = os.fdopen(out_r).read()
_, status = os.waitpid(pid, 0)
print(json.dumps({"output": output, "status": os.waitstatus_to_exitcode(status)}))
'''


def test_data_binds_hold_their_bytes_read_only_or_not(launcher):
    result = subprocess.run(
        [launcher.python, "-I", "-c", DRIVER, launcher.mode],
        capture_output=True, text=True, timeout=60, **launcher.process_kwargs(),
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    lines = got["output"].splitlines()
    assert lines[:3] == ["first", "second", "third"], got
    assert "ro-writable" not in lines
    assert any("Read-only file system" in line for line in lines), got
    assert lines[-1] == "changed"
    assert got["status"] == 0
