"""The engine's deferred command (Sandbox.command_fd): PID 1 builds the root and
forks the worker, which waits; PID 1 reads the command and its timeout and
passes the command on; the worker execs it.

The Python API's launcher process prepares sandboxes ahead this way
(srt_launcher/api/launcher.py); this checks the engine feature on its own,
as root, as uid 65534 and as root through a user namespace.
"""

from __future__ import annotations

import json
import subprocess


# Run by the venv's interpreter as the caller under test: forks a stub that
# launches the description with a command fd, writes the command (or closes
# the fd) once PID 1 has had time to build the root, prints the status records.
DRIVER = r'''
import json, os, sys, time
from srt_launcher import sandbox
from srt_launcher.errors import LauncherError
from srt_launcher.launch import signals, stub
from srt_launcher.sandbox import Mount

mode, action = sys.argv[1], sys.argv[2]
box = sandbox.Sandbox()
box.user = sandbox.USERNS_YES if mode == "root-userns" else sandbox.USERNS_IF_NEEDED
box.net = True
box.mounts = [Mount("ro-bind", "/", "/"), Mount("proc", "/proc"), Mount("dev", "/dev"), Mount("tmpfs", "/tmp")]
box.env = [("clear",), ("set", "PATH", "/usr/bin:/bin")]
status_r, status_w = os.pipe()
command_r, command_w = os.pipe()
out_r, out_w = os.pipe()
box.json_status_fd, box.command_fd = status_w, command_r
pid = os.fork()
if pid == 0:
    os.dup2(out_w, 1)
    for fd in (status_r, command_w, out_r, out_w):  # else PID 1 holds the writer it waits on
        os.close(fd)
    try:
        code = stub.launch(box, signals.block_launch_signals(), os.getppid())
    except LauncherError as err:
        code = err.exit_code
    os._exit(code)
for fd in (status_w, command_r, out_w):
    os.close(fd)
time.sleep(0.3)  # PID 1 is waiting for the command by now (not required: a pipe holds it)
if action == "run":
    os.write(command_w, sandbox.encode_command(["/bin/sh", "-c", "echo ran $$ in $(cat /proc/self/ns/../../1/comm 2>/dev/null || echo ?); exit 3"], None))
elif action == "timeout":
    os.write(command_w, sandbox.encode_command(["/bin/sleep", "30"], 0.3))
os.close(command_w)
records = [json.loads(line) for line in os.fdopen(status_r).read().splitlines()]
output = os.fdopen(out_r).read()
_, status = os.waitpid(pid, 0)
print(json.dumps({"records": records, "output": output, "status": os.waitstatus_to_exitcode(status)}))
'''


def drive(launcher, action: str) -> dict:
    result = subprocess.run(
        [launcher.python, "-I", "-c", DRIVER, launcher.mode, action],
        capture_output=True, text=True, timeout=60, **launcher.process_kwargs(),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_command_sent_after_the_root_is_built_runs(launcher):
    got = drive(launcher, "run")
    start, end = got["records"]
    assert start["child-pid"] > 0
    assert end["exit-code"] == 3 and end["cause"] == "exited"
    assert got["output"].startswith("ran 2 in ")  # the worker is PID 2 of the sandbox
    assert got["status"] == 3


def test_the_timeout_sent_with_the_command_applies_from_the_command(launcher):
    # The worker was forked 0.3 s before the command came: the clock starts with the command.
    got = drive(launcher, "timeout")
    end = got["records"][-1]
    assert end["cause"] == "timeout" and end["exit-code"] == 124
    assert 0.3 <= end["wall-time"] < 5


def test_a_command_fd_closed_without_a_command_is_a_setup_failure(launcher):
    got = drive(launcher, "close")
    end = got["records"][-1]
    assert "exit-code" not in end and end["error"]["step"] == "command fd"
    assert end["error"]["status"] == 125
    assert got["status"] == 125
