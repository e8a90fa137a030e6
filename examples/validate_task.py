#!/usr/bin/env python3
"""Validate user-uploaded Python task files in a sandbox before trusting them.

    python examples/validate_task.py --db tasks.db --tasks DIR --quarantine DIR UPLOAD.py [UPLOAD.py...]

A task file must define ``async def handler(payload: dict)``. Each upload is
copied into a fresh staging directory, then validated by Debian's
``/usr/bin/python3`` in a sandbox that holds only that interpreter (its
libraries and standard library), a small checker and the staged file,
read-only; no network; limits on CPU time, memory, processes, files and
wall-clock time; the ``harden`` seccomp filter, plus a filter compiled here
with pyseccomp that refuses to create processes at all (fork, vfork, clone
without CLONE_THREAD: threads stay possible) — RLIMIT_NPROC alone does not
hold a fork bomb back when the service runs as root, whom the kernel exempts.

The checker compiles the file, runs it, checks the handler and awaits it on
a test payload. The verdict, with its reason, goes to SQLite (table
``validations``); the file is promoted to the tasks directory when it
passes, quarantined when it fails, and left staged when the sandbox itself
could not run (verdict ``error``: not the task's fault). One JSON line per
upload on stdout; exit status 0 when every upload passed.

The checker runs in the same process as the task, so a hostile task could
print a forged "pass" line and exit; what the sandbox guarantees is that
whatever it does stays inside (no host file, no network, bounded
resources). Validation catches broken and misbehaving tasks early; tasks
still run sandboxed when they are used.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile

from srt_launcher import Cause, File, Limits, Result, RoBind, Sandbox

PYTHON = "/usr/bin/python3"
TEST_PAYLOAD = {"id": 42, "items": ["a", "b", "c"], "dry_run": True}
TIMEOUT = 10.0
MAX_OUTPUT = 64 * 1024
LIMITS = Limits(
    cpu_seconds=2,  # SIGKILL after 2 s of CPU
    address_space="512M",
    processes=32,  # threads count too; the seccomp filter refuses new processes anyway
    file_size="1M",
    open_files=64,
    core=0,
)

# Runs inside the sandbox: python3 -I -S -B /validator/check.py TASK < payload.
CHECKER = r'''
import asyncio, inspect, json, sys

def verdict(ok, reason, **extra):
    sys.stdout.write("\n" + json.dumps({"ok": ok, "reason": reason, **extra}) + "\n")
    sys.stdout.flush()
    raise SystemExit(0 if ok else 1)

def describe(err):
    return f"{type(err).__name__}: {err}"[:300]

payload = json.loads(sys.stdin.read())
path = sys.argv[1]
try:
    with open(path, "rb") as handle:
        code = compile(handle.read(), "task.py", "exec")
except SyntaxError as err:
    verdict(False, f"SyntaxError: {err.msg} (line {err.lineno})")
except (ValueError, OSError) as err:
    verdict(False, "cannot compile: " + describe(err))
module = {"__name__": "task", "__file__": path}
try:
    exec(code, module)
except BaseException as err:
    verdict(False, "importing the task raised " + describe(err))
handler = module.get("handler")
if handler is None:
    verdict(False, "no handler defined")
if not inspect.iscoroutinefunction(handler):
    verdict(False, "handler is not an async def")
try:
    inspect.signature(handler).bind(payload)
except (TypeError, ValueError):
    verdict(False, "handler does not take one argument (payload)")
try:
    value = asyncio.run(handler(payload))
except BaseException as err:
    verdict(False, "handler raised " + describe(err))
try:
    json.dumps(value)
except (TypeError, ValueError):
    verdict(False, "handler returned a value that is not JSON")
verdict(True, "handler ran on the test payload", returned=value)
'''

SCHEMA = """
CREATE TABLE IF NOT EXISTS validations (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('pass', 'fail', 'error')),
    reason TEXT NOT NULL,
    cause TEXT,
    exit_code INTEGER,
    wall_time REAL,
    cpu_time REAL,
    location TEXT,
    validated_at TEXT NOT NULL
)
"""


def no_new_processes() -> object:
    """A seccomp filter, compiled here with pyseccomp: fork, vfork and clone
    without CLONE_THREAD fail with EPERM; everything else is allowed."""
    import errno

    import pyseccomp

    clone_thread = 0x00010000
    rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in ("fork", "vfork"):
        rules.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
    rules.add_rule(pyseccomp.ERRNO(errno.EPERM), "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, clone_thread, 0))
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes
    # libc fall back to clone, which the rule above sees.
    rules.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    return rules


def standard_library() -> str:
    """/usr/lib/python3.N of PYTHON (named by the binary its link points to)."""
    name = os.path.basename(os.path.realpath(PYTHON))  # python3.11
    path = os.path.join("/usr/lib", name)
    if not os.path.isdir(path):
        raise OSError(f"no standard library for {PYTHON} at {path}")
    return path


def make_sandbox(task_path: str, seccomp: object) -> Sandbox:
    return Sandbox.for_executable(
        PYTHON,
        inputs=[task_path],
        mounts=[RoBind(standard_library()), File(CHECKER.encode(), "/validator/check.py")],
        env={"HOME": "/tmp", "LANG": "C.UTF-8"},
        cwd="/tmp",
        limits=LIMITS,
        timeout=TIMEOUT,
        seccomp=["harden", seccomp],
    )


def judge(result: Result) -> tuple[str, str]:
    """(verdict, reason) from a run of the checker: every gate before its output is believed."""
    if result.cause in (Cause.SETUP_FAILED, Cause.EXEC_FAILED):
        return "error", f"the sandbox could not run: {result.error}"
    if result.cause is Cause.TIMEOUT:
        return "fail", f"timed out after {TIMEOUT:g} s"
    if result.cause is Cause.OUTPUT_LIMIT:
        return "fail", f"wrote more than {MAX_OUTPUT} bytes"
    if result.cause is Cause.SIGNALED:
        return "fail", result.describe().split(" ", 1)[1]  # "was killed by SIGKILL (cpu_seconds limit)"
    report = _last_json_line(result.stdout)
    if result.exit_code == 0 and report is not None and report.get("ok") is True:
        return "pass", str(report.get("reason"))
    if report is not None and report.get("ok") is False:
        return "fail", str(report.get("reason"))
    tail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return "fail", f"checker exited {result.exit_code}: {tail[0][:300]}"


def _last_json_line(data: bytes) -> dict | None:
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


class Validator:
    def __init__(self, db: str, tasks: str, quarantine: str, staging: str | None = None) -> None:
        self.db = sqlite3.connect(db)
        self.db.execute(SCHEMA)
        self.tasks = os.path.abspath(tasks)
        self.quarantine = os.path.abspath(quarantine)
        self.staging = os.path.abspath(staging) if staging else None
        self.seccomp = no_new_processes()
        for directory in (self.tasks, self.quarantine):
            os.makedirs(directory, exist_ok=True)

    def validate(self, upload: str) -> dict:
        name = os.path.basename(upload)
        if not name.endswith(".py") or name.startswith("."):
            return self._record(name, "", "fail", "not a .py file name", None, None)
        stage = tempfile.mkdtemp(prefix="task-", dir=self.staging)
        os.chmod(stage, 0o755)  # the sandbox runs as this process's user: it must read it
        staged = os.path.join(stage, "task.py")
        shutil.copyfile(upload, staged)
        os.chmod(staged, 0o444)
        with open(staged, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        try:
            sandbox = make_sandbox(staged, self.seccomp)
        except (OSError, ValueError) as err:
            return self._record(name, digest, "error", f"the sandbox could not be described: {err}", None, staged)
        result = sandbox.run([PYTHON, "-I", "-S", "-B", "/validator/check.py", staged],
                             input=json.dumps(TEST_PAYLOAD).encode(), max_output=MAX_OUTPUT)  # fmt: skip
        verdict, reason = judge(result)
        if verdict == "error":
            return self._record(name, digest, verdict, reason, result, staged)  # left staged, for a retry
        target_dir = self.tasks if verdict == "pass" else self.quarantine
        target = os.path.join(target_dir, name if verdict == "pass" else f"{digest[:16]}-{name}")
        shutil.move(staged, target)
        os.rmdir(stage)
        return self._record(name, digest, verdict, reason, result, target)

    def _record(self, name: str, digest: str, verdict: str, reason: str, result: Result | None, location: str | None) -> dict:
        row = {
            "task": name,
            "sha256": digest,
            "verdict": verdict,
            "reason": reason,
            "cause": result.cause.value if result else None,
            "exit_code": result.exit_code if result else None,
            "wall_time": result.wall_time if result else None,
            "cpu_time": result.cpu_time if result else None,
            "location": location,
            "validated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        with self.db:
            self.db.execute(
                "INSERT INTO validations (task, sha256, verdict, reason, cause, exit_code, wall_time, cpu_time, location, validated_at)"
                " VALUES (:task, :sha256, :verdict, :reason, :cause, :exit_code, :wall_time, :cpu_time, :location, :validated_at)",
                row,
            )
        return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="SQLite database (created if missing)")
    parser.add_argument("--tasks", required=True, help="where tasks that pass are moved")
    parser.add_argument("--quarantine", required=True, help="where tasks that fail are moved")
    parser.add_argument("--staging", help="where uploads are staged (default: the system's temporary directory)")
    parser.add_argument("uploads", nargs="+")
    args = parser.parse_args(argv)
    validator = Validator(args.db, args.tasks, args.quarantine, args.staging)
    verdicts = [validator.validate(upload) for upload in args.uploads]
    for row in verdicts:
        print(json.dumps({key: row[key] for key in ("task", "verdict", "reason", "location")}), flush=True)
    return 0 if all(row["verdict"] == "pass" for row in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
