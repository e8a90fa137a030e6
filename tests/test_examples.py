"""The examples of the README, run as a service would run them, against hostile inputs.

examples/media_probe.py and examples/validate_task.py run as scripts (their
source given to the venv's interpreter with -c, so that uid 65534 needs no
access to the checkout), as root and as uid 65534; their verdicts, the
SQLite rows and the files moved are checked, and the host is checked for
what a hostile input tried to do to it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

import peers
from conftest import UNPRIVILEGED_GID, UNPRIVILEGED_UID, Launcher, lingering, scratch_dir, sleep_marker

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def workdir(caller: Launcher):  # type: ignore[no-untyped-def]
    with scratch_dir(caller, "srt-example-") as path:
        yield path


def run_example(caller: Launcher, name: str, *args: str) -> subprocess.CompletedProcess:
    source = (EXAMPLES / name).read_text()
    return subprocess.run(
        [caller.python, "-I", "-c", source, *args], capture_output=True, text=True, timeout=300, **caller.process_kwargs()
    )


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def give(caller: Launcher, *paths: Path) -> None:
    for path in paths:
        if caller.unprivileged:
            os.chown(path, UNPRIVILEGED_UID, UNPRIVILEGED_GID)


# ---------------------------------------------------------------- media_probe.py


@pytest.fixture(scope="module")
def uploads() -> dict:
    directory = Path(tempfile.mkdtemp(prefix="srt-example-media-", dir="/tmp"))
    directory.chmod(0o755)
    good = peers.make_video(directory / "good.mp4", seconds=2)
    (directory / "truncated.mp4").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    (directory / "notes.txt").write_text("this is not a video\n")
    (directory / "a:b.mp4").write_bytes(good.read_bytes())  # a colon must not select a protocol
    for path in directory.iterdir():
        path.chmod(0o644)
    yield {path.name: str(path) for path in directory.iterdir()}
    shutil.rmtree(directory, ignore_errors=True)


def test_media_probe_gives_a_verdict_for_each_upload(caller, uploads):
    names = ["good.mp4", "truncated.mp4", "notes.txt", "a:b.mp4"]
    result = run_example(caller, "media_probe.py", *(uploads[name] for name in names), "/nonexistent/upload.mp4")
    verdicts = {os.path.basename(v["file"]): v for v in json_lines(result.stdout)}
    assert result.returncode == 1, result.stderr
    for name in ("good.mp4", "a:b.mp4"):
        assert verdicts[name]["verdict"] == "ok"
        assert verdicts[name]["video"] == {"codec": "h264", "width": 320, "height": 240, "duration": 2.0, "format": "mov,mp4,m4a,3gp,3g2,mj2"}
    for name in ("truncated.mp4", "notes.txt"):
        assert verdicts[name]["verdict"] == "error" and verdicts[name]["gate"] == "ffprobe"
        assert "Invalid data found when processing input" in verdicts[name]["reason"]
    missing = verdicts["upload.mp4"]
    assert missing["gate"] == "launch" and "ro-bind source: /nonexistent/upload.mp4" in missing["reason"]


# Each gate from a real sandbox whose output is a perfectly good ffprobe
# answer, followed by the misbehaviour: the verdict must be the gate's error.
GATES = r'''
import json, sys, types
module = sys.modules["media_probe"] = types.ModuleType("media_probe")
exec(compile(SOURCE, "media_probe.py", "exec"), module.__dict__)
from srt_launcher import Limits, Sandbox, RoBind, Proc, Dev, Tmpfs
good = json.dumps({"streams": [{"codec_type": "video", "codec_name": "h264", "width": 1, "height": 1}], "format": {}})
box = Sandbox(mounts=[RoBind("/"), Proc(), Dev(), Tmpfs("/tmp")])
cases = {
    "clean": (box, ["/bin/sh", "-c", f"echo '{good}'"], {}),
    "launch": (Sandbox(mounts=[RoBind("/nonexistent")]), ["/bin/true"], {}),
    "timeout": (box, ["/bin/sh", "-c", f"echo '{good}'; sleep 30"], {"timeout": 0.5}),
    "output": (box, ["/bin/sh", "-c", f"echo '{good}'; yes"], {"max_output": 4096}),
    "limit": (Sandbox(mounts=[RoBind("/"), Proc(), Dev()], limits=Limits(cpu_seconds=1)),
              ["/bin/sh", "-c", f"echo '{good}'; while :; do :; done"], {}),
    "ffprobe": (box, ["/bin/sh", "-c", f"echo '{good}'; exit 1"], {}),
    "parse": (box, ["/bin/echo", "not json"], {}),
    "video": (box, ["/bin/echo", '{"streams": [{"codec_type": "audio"}]}'], {}),
}
verdicts = {}
for name, (sandbox, argv, kwargs) in cases.items():
    verdict = module.verdict("/upload", sandbox.run(argv, **kwargs))
    verdicts[name] = verdict.as_dict()
print(json.dumps(verdicts))
'''


def test_media_probe_parses_nothing_before_every_gate_passed(caller):
    source = (EXAMPLES / "media_probe.py").read_text()
    code = f"SOURCE = {source!r}\n" + GATES
    result = subprocess.run([caller.python, "-I", "-c", code], capture_output=True, text=True, timeout=120, **caller.process_kwargs())
    assert result.returncode == 0, result.stderr
    verdicts = json.loads(result.stdout)
    assert verdicts.pop("clean")["verdict"] == "ok"
    for gate, verdict in verdicts.items():
        assert verdict["verdict"] == "error" and verdict["gate"] == gate, (gate, verdict)
    assert "cpu_seconds limit" in verdicts["limit"]["reason"]


# ---------------------------------------------------------------- validate_task.py

TASKS = {
    "good.py": "async def handler(payload: dict):\n    return {'items': len(payload['items'])}\n",
    "loop.py": "async def handler(payload):\n    while True:\n        pass\n",
    "forkbomb.py": "import os\nasync def handler(payload):\n    while True:\n        os.fork()\n",
    "subprocess_bomb.py": "import subprocess\nasync def handler(payload):\n    subprocess.run(['/bin/sh', '-c', 'sleep MARKER'])\n",
    "hog.py": "async def handler(payload):\n    hoard = []\n    while True:\n        hoard.append(bytearray(64 << 20))\n",
    "network.py": "import socket\nasync def handler(payload):\n    socket.create_connection(('127.0.0.1', PORT), timeout=3).sendall(b'stolen')\n",
    "internet.py": "import socket\nasync def handler(payload):\n    socket.create_connection(('1.1.1.1', 80), timeout=3)\n",
    "write_outside.py": "async def handler(payload):\n    open('OUTSIDE', 'w').write('pwned')\n",
    "rewrite_itself.py": "async def handler(payload):\n    open(__file__, 'w').write('async def handler(payload):\\n    return 1\\n')\n",
    "secret.py": "async def handler(payload):\n    return open('SECRET').read()\n",
    "no_handler.py": "def handle(payload):\n    return 1\n",
    "not_async.py": "def handler(payload):\n    return 1\n",
    "syntax.py": "async def handler(payload)\n    return 1\n",
    "raises.py": "async def handler(payload):\n    raise ValueError('refused item ' + repr(payload['id']))\n",
}

EXPECTED = {
    "good.py": ("pass", "handler ran on the test payload"),
    "loop.py": ("fail", "cpu_seconds limit"),
    "forkbomb.py": ("fail", "handler raised PermissionError"),
    "subprocess_bomb.py": ("fail", "handler raised PermissionError"),
    "hog.py": ("fail", "handler raised MemoryError"),
    "network.py": ("fail", "handler raised ConnectionRefusedError"),
    "internet.py": ("fail", "Network is unreachable"),
    "write_outside.py": ("fail", "handler raised FileNotFoundError"),
    "rewrite_itself.py": ("fail", "Read-only file system"),
    "secret.py": ("fail", "handler raised FileNotFoundError"),
    "no_handler.py": ("fail", "no handler defined"),
    "not_async.py": ("fail", "handler is not an async def"),
    "syntax.py": ("fail", "SyntaxError: expected ':' (line 1)"),
    "raises.py": ("fail", "handler raised ValueError: refused item 42"),
}


def test_validate_task_against_hostile_uploads(caller, workdir):
    marker = sleep_marker()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    connections: list = []

    def accept() -> None:
        try:
            connections.append(listener.accept())
        except OSError:
            pass  # closed at the end of the test: nothing ever connected

    threading.Thread(target=accept, daemon=True).start()
    secret_dir = Path(tempfile.mkdtemp(prefix="srt-example-secret-", dir="/tmp"))
    secret_dir.chmod(0o755)
    secret = secret_dir / "secret.txt"
    secret.write_text("the-host-secret-4711\n")
    secret.chmod(0o644)  # readable by the caller: only the sandbox keeps it out
    outside = workdir / "tasks" / "OUTSIDE"
    uploads = workdir / "uploads"
    uploads.mkdir()
    give(caller, uploads)
    for name, text in TASKS.items():
        text = text.replace("MARKER", marker).replace("PORT", str(port)).replace("'SECRET'", repr(str(secret)))
        (uploads / name).write_text(text.replace("'OUTSIDE'", repr(str(outside))))
        give(caller, uploads / name)
    try:
        result = run_example(
            caller, "validate_task.py", "--db", str(workdir / "validations.db"), "--tasks", str(workdir / "tasks"),
            "--quarantine", str(workdir / "quarantine"), "--staging", str(workdir), *(str(uploads / name) for name in TASKS),
        )  # fmt: skip
    finally:
        listener.close()
        shutil.rmtree(secret_dir, ignore_errors=True)
    assert result.returncode == 1, result.stderr
    verdicts = {row["task"]: row for row in json_lines(result.stdout)}
    assert set(verdicts) == set(TASKS)
    for name, (verdict, reason) in EXPECTED.items():
        assert verdicts[name]["verdict"] == verdict and reason in verdicts[name]["reason"], (name, verdicts[name])
    # Promoted or quarantined, nothing left staged.
    assert sorted(os.listdir(workdir / "tasks")) == ["good.py"]
    quarantined = os.listdir(workdir / "quarantine")
    assert sorted(name.split("-", 1)[1] for name in quarantined) == sorted(set(TASKS) - {"good.py"})
    assert not [name for name in os.listdir(workdir) if name.startswith("task-")]
    # The host saw nothing of what the tasks tried.
    assert connections == [], "a task reached a host port"
    assert not outside.exists()
    rewritten = [name for name in quarantined if name.endswith("rewrite_itself.py")]
    assert (workdir / "quarantine" / rewritten[0]).read_text() == TASKS["rewrite_itself.py"]
    assert "the-host-secret-4711" not in result.stdout + result.stderr
    assert lingering(marker) == []
    # The record of each, in SQLite.
    with sqlite3.connect(workdir / "validations.db") as db:
        rows = {row[0]: row[1:] for row in db.execute("SELECT task, verdict, reason, cause, location FROM validations")}
    assert set(rows) == set(TASKS)
    assert rows["good.py"][0] == "pass" and rows["good.py"][2] == "exited" and rows["good.py"][3] == str(workdir / "tasks" / "good.py")
    assert rows["loop.py"][0] == "fail" and rows["loop.py"][2] == "signaled"
    assert all("the-host-secret-4711" not in (row[1] or "") for row in rows.values())
