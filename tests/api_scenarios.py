"""Scenarios of the Python API, each run by a fresh caller process.

tests/test_api.py runs this file's source with the venv's interpreter as
``python -I -c SOURCE NAME`` with its arguments as JSON on stdin, as root or as uid 65534 (-I: the
installed package, not the checkout); the scenario's JSON answer is the
last line of its output. Every scenario takes and returns plain JSON data.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import srt_launcher
from srt_launcher import Dev, Limits, Proc, Relay, RoBind, Sandbox, Symlink, Tmpfs
from srt_launcher.api import client

SCENARIOS = {}


def scenario(function):  # type: ignore[no-untyped-def]
    SCENARIOS[function.__name__] = function
    return function


# ---------------------------------------------------------------- building blocks


def mounts_of(spec: object) -> list:
    """``"system"`` (the host read-only, /proc, /dev, a private /tmp) or [[Class, args...], ...]."""
    if spec == "system":
        return [RoBind("/"), Proc(), Dev(), Tmpfs("/tmp")]
    mounts = []
    for kind, *args in spec:  # type: ignore[union-attr]
        if kind == "File":  # JSON has no bytes: the data travels as latin-1 text
            args[0] = args[0].encode("latin-1")
        mounts.append(getattr(srt_launcher, kind)(*args))
    return mounts


def sandbox_of(spec: dict) -> Sandbox:
    kwargs = dict(spec)
    kwargs["mounts"] = mounts_of(kwargs.get("mounts", "system"))
    if "limits" in kwargs:
        kwargs["limits"] = Limits(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs["limits"].items()})
    if isinstance(kwargs.get("network"), list):
        kwargs["network"] = [Relay(*relay) for relay in kwargs["network"]]
    if kwargs.get("seccomp") == "no-mkdir":
        kwargs["seccomp"] = _no_mkdir()
    return Sandbox(**kwargs)


def _no_mkdir():  # type: ignore[no-untyped-def]
    import errno

    import pyseccomp

    rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    rules.add_rule(pyseccomp.ERRNO(errno.EPERM), "mkdir")
    rules.add_rule(pyseccomp.ERRNO(errno.EPERM), "mkdirat")
    return rules


def as_dict(result: srt_launcher.Result, keep: int = 65536) -> dict:
    return {
        "ok": result.ok,
        "cause": result.cause.value,
        "exit_code": result.exit_code,
        "signal": None if result.signal is None else int(result.signal),
        "limit": result.limit,
        "stdout": result.stdout[:keep].decode("latin-1"),
        "stderr": result.stderr[:keep].decode("latin-1"),
        "stdout_len": len(result.stdout),
        "stderr_len": len(result.stderr),
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "wall_time": result.wall_time,
        "cpu_time": result.cpu_time,
        "max_rss": result.max_rss,
        "error": None if result.error is None else {"step": result.error.step, "value": result.error.value, "message": result.error.message},
        "describe": result.describe(),
    }


def wait_for_process(marker: str, timeout: float = 30) -> int:
    """Host pid of the process whose argv[0] is sleep and argv[1] is ``marker``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as handle:
                        argv = handle.read().split(b"\0")
                except OSError:
                    continue
                if len(argv) > 1 and os.path.basename(argv[0]) == b"sleep" and argv[1] == marker.encode():
                    return int(entry)
        time.sleep(0.02)
    raise AssertionError(f"sleep {marker} never started")


# ---------------------------------------------------------------- scenarios


@scenario
def run(spec: dict, argv: list, input: str | None = None, max_output: int | None = None, timeout: float | None = None, keep: int = 65536) -> dict:
    kwargs: dict = {}
    if input is not None:
        kwargs["input"] = input.encode("latin-1")
    if max_output is not None:
        kwargs["max_output"] = max_output
    if timeout is not None:
        kwargs["timeout"] = timeout
    started = time.monotonic()
    result = sandbox_of(spec).run(argv, **kwargs)
    answer = as_dict(result, keep)
    answer["elapsed"] = time.monotonic() - started
    answer["caller_max_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return answer


@scenario
def run_checked(spec: dict, argv: list) -> dict:
    try:
        result = sandbox_of(spec).run(argv, check=True)
    except srt_launcher.SandboxError as err:
        return {"raised": True, "message": str(err), "cause": err.result.cause.value}
    return {"raised": False, "cause": result.cause.value}


@scenario
def threads(spec: dict, threads: int, runs: int) -> dict:
    box = sandbox_of(spec)
    results: dict = {}
    lock = threading.Lock()
    counter = iter(range(runs))

    def worker() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            result = box.run(["/bin/sh", "-c", f"echo run {index}; echo err {index} >&2; exit $(({index} % 7))"])
            results[index] = as_dict(result)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return {"results": {str(k): v for k, v in results.items()}, "launcher": client.launcher_pid()}


@scenario
def asyncio_runs(spec: dict, runs: int) -> dict:
    box = sandbox_of(spec)

    async def main() -> list:
        return await asyncio.gather(*(box.run_async(["/bin/sh", "-c", f"echo run {i}; exit $(({i} % 5))"], input=b"x") for i in range(runs)))

    results = asyncio.run(main())
    return {"results": [as_dict(result) for result in results]}


@scenario
def asyncio_cancel(spec: dict, marker: str) -> dict:
    box = sandbox_of(spec)

    async def main() -> str:
        task = asyncio.create_task(box.run_async(["/bin/sleep", marker]))
        await asyncio.sleep(0.5)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    return {"outcome": asyncio.run(main())}


@scenario
def popen_pipes(spec: dict) -> dict:
    box = sandbox_of(spec)
    process = box.popen(
        ["/bin/sh", "-c", "read line; echo got $line; echo oops >&2; exit 5"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    cmdline = ""
    deadline = time.monotonic() + 10
    while cmdline != "/bin/sh" and time.monotonic() < deadline:  # popen returns once the worker exists, maybe before its exec
        with open(f"/proc/{process.pid}/cmdline", "rb") as handle:
            cmdline = handle.read().split(b"\0")[0].decode()
        time.sleep(0.01)
    first_poll = process.poll()
    process.stdin.write(b"hello\n")
    process.stdin.close()
    out, err = process.stdout.read(), process.stderr.read()
    code = process.wait()
    return {"pid_cmdline": cmdline, "first_poll": first_poll, "stdout": out.decode(), "stderr": err.decode(), "returncode": code,
            "result": as_dict(process.result())}  # fmt: skip


@scenario
def popen_control(spec: dict, marker: str, path: str) -> dict:
    box = sandbox_of(spec)
    answer: dict = {}
    process = box.popen(["/bin/sleep", marker])
    try:
        process.wait(timeout=0.3)
        answer["timeout_raised"] = False
    except subprocess.TimeoutExpired:
        answer["timeout_raised"] = True
    answer["poll_running"] = process.poll()
    process.kill()
    answer["killed_returncode"] = process.wait(timeout=10)
    answer["killed"] = as_dict(process.result())
    script = "trap 'echo terminated; exit 7' TERM; echo ready; sleep 30 & wait"
    process = box.popen(["/bin/sh", "-c", script], stdout=subprocess.PIPE)
    answer["ready"] = process.stdout.readline().decode()
    process.terminate()
    answer["terminated_output"] = process.stdout.read().decode()
    answer["terminated_returncode"] = process.wait(timeout=10)
    with open(path, "wb") as handle:  # the caller's own file as stdout, stderr merged into it
        process = box.popen(["/bin/sh", "-c", "echo to-file; echo err-too >&2"], stdout=handle, stderr=subprocess.STDOUT)
        answer["file_returncode"] = process.wait(timeout=10)
    with open(path, "rb") as handle:
        answer["file_content"] = handle.read().decode()
    failed = Sandbox(mounts=[RoBind("/nonexistent-source")]).popen(["/bin/true"])
    answer["failed_pid"] = failed.pid
    answer["failed_returncode"] = failed.wait()
    answer["failed"] = as_dict(failed.result())
    return answer


@scenario
def thread_exits_after_launch(spec: dict, marker: str) -> dict:
    """The launcher is first started from a thread that ends right after the launch."""
    box = sandbox_of(spec)
    holder: dict = {}

    def launch() -> None:
        holder["process"] = box.popen(["/bin/sleep", marker])
        holder["launcher"] = client.launcher_pid()

    thread = threading.Thread(target=launch)
    thread.start()
    thread.join()
    time.sleep(1.0)  # PDEATHSIG, were it tied to that thread, would have fired
    process = holder["process"]
    alive = process.poll() is None
    later = box.run(["/bin/echo", "still served"])
    process.kill()
    process.wait(timeout=10)
    return {"alive_after_thread_exit": alive, "same_launcher": client.launcher_pid() == holder["launcher"], "later": as_dict(later)}


@scenario
def caller_to_be_killed(spec: dict, marker: str) -> dict:
    """Start a sandbox and wait forever: the test SIGKILLs this process."""
    box = sandbox_of(spec)
    box.popen(["/bin/sleep", marker])
    sandboxed = wait_for_process(marker)
    print(json.dumps({"launcher": client.launcher_pid(), "sandboxed": sandboxed}), flush=True)
    time.sleep(3600)
    return {}


@scenario
def kill_launcher_while_running(spec: dict, marker: str) -> dict:
    box = sandbox_of(spec)
    box.run(["/bin/true"])  # the launcher is up
    launcher = client.launcher_pid()
    holder: dict = {}
    thread = threading.Thread(target=lambda: holder.update(result=box.run(["/bin/sleep", marker], timeout=120)))
    started = time.monotonic()
    thread.start()
    wait_for_process(marker)
    os.kill(launcher, signal.SIGKILL)
    thread.join(30)
    elapsed = time.monotonic() - started
    after = box.run(["/bin/echo", "next launch"])
    return {"returned": not thread.is_alive(), "elapsed": elapsed, "result": as_dict(holder["result"]) if "result" in holder else None,
            "after": as_dict(after), "new_launcher": client.launcher_pid() not in (None, launcher)}  # fmt: skip


@scenario
def kill_launcher_before_answer(spec: dict) -> dict:
    box = sandbox_of(spec)
    box.run(["/bin/true"])
    launcher = client.launcher_pid()
    os.kill(launcher, signal.SIGSTOP)  # the request will wait in its socket, unanswered
    holder: dict = {}
    thread = threading.Thread(target=lambda: holder.update(result=box.run(["/bin/echo", "never"])))
    started = time.monotonic()
    thread.start()
    time.sleep(0.3)
    queued = thread.is_alive()
    os.kill(launcher, signal.SIGKILL)
    thread.join(30)
    elapsed = time.monotonic() - started
    after = box.run(["/bin/echo", "next launch"])
    return {"queued": queued, "returned": not thread.is_alive(), "elapsed": elapsed,
            "result": as_dict(holder["result"]) if "result" in holder else None, "after": as_dict(after)}  # fmt: skip


@scenario
def after_fork(spec: dict) -> dict:
    box = sandbox_of(spec)
    box.run(["/bin/true"])
    parent_launcher = client.launcher_pid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            result = box.run(["/bin/echo", "from the child"])
            os.write(write_end, json.dumps({"stdout": result.stdout.decode(), "launcher": client.launcher_pid()}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child = json.loads(os.fdopen(read_end).read())
    os.waitpid(pid, 0)
    parent = box.run(["/bin/echo", "from the parent"])
    return {"child": child, "parent_launcher": parent_launcher, "parent_stdout": parent.stdout.decode(),
            "parent_launcher_after": client.launcher_pid()}  # fmt: skip


@scenario
def probe() -> dict:
    result = srt_launcher.probe()
    return {"usable": bool(result), "features": {name: {"ok": f.ok, "reason": f.reason} for name, f in result.items()}}


@scenario
def relay(spec: dict, socket_path: str, port: int) -> dict:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    server.listen()
    received: list = []

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            received.append(connection.recv(100))
            connection.sendall(b"pong")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    code = (
        "import socket; s = socket.create_connection(('127.0.0.1', %d), timeout=10); "
        "s.sendall(b'ping'); print(s.recv(100).decode())" % port
    )
    spec = dict(spec, network=[[port, socket_path]])
    result = sandbox_of(spec).run(["/usr/bin/python3", "-I", "-c", code])
    thread.join(10)
    server.close()
    return {"result": as_dict(result), "received": [item.decode() for item in received]}


@scenario
def for_executable(binary: str, inputs: list, argv: list, lister: str | None = None, listing_argv: list | None = None) -> dict:
    box = Sandbox.for_executable(binary, inputs=inputs)
    answer = {"result": as_dict(box.run(argv))}
    if lister:
        # The same sandbox plus a lister's own files, to look at it from inside.
        extra = [mount for mount in Sandbox.for_executable(lister).mounts if isinstance(mount, (RoBind, Symlink))]
        seen = Sandbox.for_executable(binary, inputs=inputs, mounts=extra)
        answer["listing"] = as_dict(seen.run(listing_argv), keep=1 << 20)
        answer["layouts"] = {
            "binary": [mount.dest for mount in box.mounts if isinstance(mount, (RoBind, Symlink))],
            "lister": [mount.dest for mount in extra],
        }
    return answer


@scenario
def prepared_sees_host_changes(directory: str) -> dict:
    """A sandbox prepared ahead must still be the one a launch would make now."""
    path = os.path.join(directory, "input")
    with open(path, "w") as handle:
        handle.write("one\n")
    box = Sandbox(mounts=[RoBind("/usr"), Symlink("usr/bin", "/bin"), Symlink("usr/lib", "/lib"), Symlink("usr/lib64", "/lib64"),
                          RoBind(path, "/data/input"), RoBind(directory, "/dir")])  # fmt: skip
    # Launched twice, a description is kept prepared: the next launch takes a sandbox made before the change.
    seen = [box.run(["/bin/cat", "/data/input"]).stdout.decode() for _ in range(2)]
    time.sleep(0.3)
    replacement = path + ".new"
    with open(replacement, "w") as handle:
        handle.write("two\n")
    os.rename(replacement, path)  # a new inode at the same path
    seen.append(box.run(["/bin/cat", "/data/input"]).stdout.decode())
    time.sleep(0.3)
    with open(os.path.join(directory, "later"), "w") as handle:
        handle.write("x")
    listing = box.run(["/bin/ls", "/dir"]).stdout.decode().split()
    os.remove(path)
    missing = box.run(["/bin/cat", "/data/input"])
    return {"seen": seen, "listing": listing, "missing": as_dict(missing)}


@scenario
def prepared_source_swapped_while_prepared(directory: str, secret: str) -> dict:
    """A bind source swapped for a symlink while a sandbox is being prepared, then back.

    Run under strace delaying every mount (tests/test_api.py): PID 1 mounts
    the source long after the launcher checked what it is. A prepared
    sandbox holding the file the symlink led to must never be handed out
    once the path names the right file again.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    tool, link = os.path.join(directory, "tool"), os.path.join(directory, "link")
    with open(tool, "w") as handle:
        handle.write("benign\n")
    os.symlink(os.path.relpath(secret, directory), link)

    def exchange() -> None:
        assert libc.renameat2(-100, tool.encode(), -100, link.encode(), 2) == 0, ctypes.get_errno()

    box = Sandbox(mounts=[RoBind("/usr"), Symlink("usr/bin", "/bin"), Symlink("usr/lib", "/lib"), Symlink("usr/lib64", "/lib64"),
                          RoBind(tool, "/tool")])  # fmt: skip
    seen = [box.run(["/bin/cat", "/tool"]).stdout.decode() for _ in range(2)]  # the second makes the launcher prepare
    time.sleep(0.3)  # the prepared sandboxes are forked, checked, and their PID 1 is in its first delayed mounts
    exchange()
    time.sleep(3.0)  # every mount is done, the source's with the symlink in place
    exchange()
    seen += [box.run(["/bin/cat", "/tool"]).stdout.decode() for _ in range(3)]
    return {"seen": seen}


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(item) for item in handle.read().split()]


@scenario
def prepared_only_when_repeated(spec: dict) -> dict:
    """A description launched once (a sandbox per upload) is not prepared; one launched again is."""
    box = sandbox_of(spec)
    box.run(["/bin/true"])
    launcher = client.launcher_pid()
    time.sleep(0.5)
    after_one = len(children_of(launcher))
    box.run(["/bin/true"])
    deadline = time.monotonic() + 10
    while len(children_of(launcher)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    children = children_of(launcher)
    # What each child is (state, command line): the evidence when the count is off.
    return {"after_one": after_one, "after_two": len(children), "children": [_process_state(pid) for pid in children]}


def _process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return f"{pid} gone"
    return f"{pid} {state} {cmdline}"


@scenario
def description_errors() -> dict:
    """Invalid descriptions and arguments raise ValueError at once, in any caller."""
    cases = {
        "relative bind": lambda: Sandbox(mounts=[RoBind("usr")]),
        "unknown seccomp": lambda: Sandbox(seccomp="nope"),
        "bad limit": lambda: Limits(cpu_seconds=-1),
        "positional": lambda: Sandbox([RoBind("/")]),  # type: ignore[misc]
        "string argv": lambda: Sandbox().run("/bin/true"),  # type: ignore[arg-type]
    }
    raised = {}
    for name, make in cases.items():
        try:
            make()
            raised[name] = None
        except (ValueError, TypeError) as err:
            raised[name] = type(err).__name__
    return raised


if __name__ == "__main__":
    name = sys.argv[1]
    kwargs = json.loads(sys.stdin.read() or "{}")
    print("\n" + json.dumps(SCENARIOS[name](**kwargs)))
