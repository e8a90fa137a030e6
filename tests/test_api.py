"""The Python API (SPEC §9) on real sandboxes, as root and as uid 65534.

Scenarios live in tests/api_scenarios.py and run in a caller process of
their own, as root or as uid 65534, with the venv's interpreter in
isolated mode, so that the installed package is what is tested (the
checkout is on this process's sys.path). Processes left behind are looked
for on the host, by a unique marker in their argv.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import api_scenarios
import peers
from conftest import Launcher, lingering, processes_with, scratch_dir

SCENARIO_SOURCE = Path(api_scenarios.__file__).read_text()
SYSTEM: dict = {}  # default mounts "system": the host read-only, /proc, /dev, a private /tmp (api_scenarios.mounts_of)


class Api:
    """The API as one kind of caller uses it."""

    def __init__(self, launcher: Launcher) -> None:
        self.mode = launcher.mode
        self.launcher = launcher
        self.unprivileged = launcher.unprivileged

    def __repr__(self) -> str:
        return f"Api({self.mode})"

    def call(self, name: str, **kwargs) -> dict:
        """Run a scenario in a new caller process; its JSON answer."""
        try:
            result = subprocess.run(
                self.argv(name), input=json.dumps(kwargs), capture_output=True, text=True, timeout=180, **self.launcher.process_kwargs()
            )
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"scenario {name} {kwargs} hung: {err.stderr!r}") from None
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.splitlines()[-1])

    def argv(self, name: str) -> list[str]:
        """The caller's command line; the scenario's arguments go to its stdin, as JSON."""
        return [self.launcher.python, "-I", "-c", SCENARIO_SOURCE, name]

    def run(self, argv: list[str], spec: dict = SYSTEM, **kwargs) -> dict:
        return self.call("run", spec=spec, argv=argv, **kwargs)


@pytest.fixture
def api(caller: Launcher) -> Api:
    return Api(caller)


@pytest.fixture
def scratch(caller: Launcher):  # type: ignore[no-untyped-def]
    """A directory the caller owns, readable by everyone (pytest's tmp_path is 0700 root)."""
    with scratch_dir(caller, "srt-api-test-") as path:
        yield path


def python(code: str) -> list[str]:
    return ["/usr/bin/python3", "-I", "-c", code]


# ---------------------------------------------------------------- every Cause from a real workload


def test_exit_0_is_ok_with_the_output_captured(api):
    got = api.run(["/bin/sh", "-c", "echo out; echo err >&2"])
    assert got["ok"] and got["cause"] == "exited" and got["exit_code"] == 0
    assert (got["stdout"], got["stderr"]) == ("out\n", "err\n")
    assert got["signal"] is None and got["limit"] is None and got["error"] is None
    assert got["wall_time"] > 0 and got["cpu_time"] >= 0 and got["max_rss"] > 0


def test_exit_3_is_exited_not_ok(api):
    got = api.run(["/bin/sh", "-c", "exit 3"])
    assert not got["ok"] and got["cause"] == "exited" and got["exit_code"] == 3 and got["error"] is None


def test_a_signal_is_signaled_with_its_number(api):
    got = api.run(["/bin/sh", "-c", "kill -USR1 $$"])
    assert got["cause"] == "signaled" and got["signal"] == signal.SIGUSR1 and got["exit_code"] is None


def test_timeout_kills_the_sandbox_with_its_children(api, marker):
    script = f"trap '' TERM; sleep {marker} & (setsid sleep {marker} &); sleep {marker}"
    got = api.run(["/bin/sh", "-c", script], timeout=0.5)
    assert got["cause"] == "timeout" and got["exit_code"] is None
    assert 0.5 <= got["elapsed"] < 5
    assert lingering(marker) == []


def test_the_sandboxs_own_timeout_applies_and_run_overrides_it(api, marker):
    got = api.run(["/bin/sleep", marker], spec={"timeout": 0.3})
    assert got["cause"] == "timeout" and got["elapsed"] < 5
    got = api.run(["/bin/sh", "-c", "sleep 0.5; echo done"], spec={"timeout": 0.1}, timeout=30)
    assert got["ok"] and got["stdout"] == "done\n"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_over_the_cap_kills_the_sandbox(api, marker, stream):
    # 10 GB offered; the caller keeps the cap and the sandbox dies at once.
    redirect = "" if stream == "stdout" else " >&2"
    script = f"sleep {marker} & head -c 10000000000 /dev/zero{redirect}"
    got = api.call("run", spec=SYSTEM, argv=["/bin/sh", "-c", script], max_output=1 << 20, keep=16)
    assert got["cause"] == "output-limit" and not got["ok"]
    assert got[f"{stream}_len"] == 1 << 20 and got[f"{stream}_truncated"]
    other = "stderr" if stream == "stdout" else "stdout"
    assert not got[f"{other}_truncated"]
    assert got["elapsed"] < 10
    assert got["caller_max_rss_kb"] < 80 * 1024, "the caller buffered more than the cap"
    assert lingering(marker) == []


def test_output_at_the_cap_exactly_is_not_cut(api):
    got = api.run(["/bin/sh", "-c", "head -c 1000 /dev/zero"], max_output=1000)
    assert got["ok"] and got["stdout_len"] == 1000 and not got["stdout_truncated"]


@pytest.mark.parametrize("value", [1, [1, 2]], ids=["soft=hard", "soft<hard"])
def test_cpu_limit_kills_and_is_named(api, value):
    got = api.run(python("while True: pass"), spec={"limits": {"cpu_seconds": value}})
    expected = signal.SIGKILL if value == 1 else signal.SIGXCPU
    assert got["cause"] == "signaled" and got["signal"] == expected
    assert got["limit"] == "cpu_seconds"
    assert got["cpu_time"] >= 0.5


def test_file_size_limit_kills_a_writer_and_is_named(api):
    got = api.run(["/bin/dd", "if=/dev/zero", "of=/tmp/big", "bs=1M", "count=4"], spec={"limits": {"file_size": "64K"}})
    assert got["cause"] == "signaled" and got["signal"] == signal.SIGXFSZ and got["limit"] == "file_size"


@pytest.mark.parametrize(
    "signum, spec",
    [(signal.SIGXCPU, {}), (signal.SIGXFSZ, {}), (signal.SIGXCPU, {"limits": {"cpu_seconds": 100}})],
    ids=["SIGXCPU, no limit", "SIGXFSZ, no limit", "SIGXCPU, cpu limit far off"],
)
def test_a_workload_that_sends_itself_sigxcpu_or_sigxfsz_is_not_put_down_to_a_limit(api, signum, spec):
    """The workload chooses its own death signal: SIGXCPU or SIGXFSZ alone
    must not make the Result name a limit that did not kill it. (Under a
    file_size limit a SIGXFSZ it sent itself cannot be told from the
    kernel's: the parent sees the signal, not who sent it.)"""
    got = api.run(["/bin/sh", "-c", f"kill -{signum} $$"], spec=spec)
    assert got["cause"] == "signaled" and got["signal"] == signum
    assert got["limit"] is None, got["describe"]


def test_address_space_limit_makes_allocation_fail(api):
    """The kernel does not kill at RLIMIT_AS: the allocation fails and the
    program decides (here MemoryError, exit 1). No signal names the limit,
    so ``limit`` stays None rather than guessed."""
    hog = "b = bytearray(768 << 20); print('allocated')"
    got = api.run(python(hog), spec={"limits": {"address_space": "256M"}})
    assert got["cause"] == "exited" and got["exit_code"] == 1 and "MemoryError" in got["stderr"]
    assert got["limit"] is None and "allocated" not in got["stdout"]
    control = api.run(python(hog))
    assert control["ok"], control["stderr"]


def test_processes_limit_bounds_a_fork_bomb(api, marker):
    """RLIMIT_NPROC makes fork fail (EAGAIN), counted per user on the whole
    host; the kernel exempts root, for whom the limit is set, not enforced."""
    bomb = (
        "import os, sys\n"
        "made = 0\n"
        "for _ in range(60):\n"
        "    try:\n"
        f"        if os.fork() == 0: os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "        made += 1\n"
        "    except OSError as err: print('refused', err.errno); break\n"
        "print('made', made)\n"
        "print(open('/proc/self/limits').read())\n"
    )
    got = api.run(python(bomb), spec={"limits": {"processes": 20}, "timeout": 30})
    assert got["cause"] == "exited", got
    assert "Max processes             20                   20" in got["stdout"]
    made = int(got["stdout"].split("made ")[1].split()[0])
    if api.unprivileged:
        assert made < 20 and "refused 11" in got["stdout"]  # EAGAIN
    else:
        assert made == 60
    assert lingering(marker) == [], "the sandbox's processes outlived it"


def test_a_missing_bind_source_is_setup_failed_with_the_step(api):
    got = api.run(["/bin/true"], spec={"mounts": [["RoBind", "/nonexistent-source"]]})
    assert got["cause"] == "setup-failed" and got["exit_code"] is None
    assert got["error"] == {"step": "ro-bind source", "value": "/nonexistent-source", "message": "No such file or directory"}


@pytest.mark.parametrize("program,message", [("/nonexistent-program", "No such file or directory"), ("/etc/passwd", "Permission denied")])
def test_a_program_that_cannot_run_is_exec_failed(api, program, message):
    got = api.run([program])
    assert got["cause"] == "exec-failed" and got["exit_code"] is None
    assert got["error"]["step"] == f"exec {program}" and got["error"]["message"] == message


@pytest.mark.parametrize("status", [124, 125, 126, 127])
def test_a_workload_exiting_124_to_127_itself_is_exited(api, status):
    got = api.run(["/bin/sh", "-c", f"exit {status}"])
    assert got["cause"] == "exited" and got["exit_code"] == status and got["error"] is None


def test_check_true_raises_sandbox_error_with_the_result(api):
    got = api.call("run_checked", spec=SYSTEM, argv=["/bin/sh", "-c", "exit 9"])
    assert got == {"raised": True, "message": "/bin/sh exited with 9", "cause": "exited"}
    assert api.call("run_checked", spec=SYSTEM, argv=["/bin/true"]) == {"raised": False, "cause": "exited"}


def test_invalid_descriptions_raise_at_construction(api):
    assert api.call("description_errors") == {
        "relative bind": "ValueError",
        "unknown seccomp": "ValueError",
        "bad limit": "ValueError",
        "positional": "TypeError",
        "string argv": "ValueError",
    }


# ---------------------------------------------------------------- the description


def test_input_reaches_stdin_and_a_megabyte_comes_back(api):
    data = "".join(chr(i % 256) for i in range(1 << 20))
    got = api.run(["/bin/cat"], input=data, keep=1 << 21)
    assert got["ok"] and got["stdout"] == data


def test_environment_is_only_what_is_given_plus_path(api):
    got = api.run(["/usr/bin/env"], spec={"env": {"GREETING": "hi there", "EMPTY": ""}})
    assert sorted(got["stdout"].splitlines()) == ["EMPTY=", "GREETING=hi there", "PATH=/usr/local/bin:/usr/bin:/bin", "PWD=/"]


def test_cwd_hostname_and_more_namespaces(api):
    script = "pwd; hostname; readlink /proc/self/ns/ipc /proc/self/ns/uts /proc/self/ns/cgroup"
    spec = {"cwd": "/tmp", "hostname": "sandbox-1", "namespaces": ["ipc", "cgroup"]}
    got = api.run(["/bin/sh", "-c", script], spec=spec)
    lines = got["stdout"].splitlines()
    assert lines[:2] == ["/tmp", "sandbox-1"]
    for line, name in zip(lines[2:], ("ipc", "uts", "cgroup")):
        assert line != os.readlink(f"/proc/self/ns/{name}"), name


def test_network_is_a_namespace_with_lo_only(api):
    got = api.run(["/bin/sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1"])
    assert got["stdout"].split() == ["lo"]
    host = api.run(["/bin/sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1"], spec={"network": True})
    assert set(host["stdout"].split()) > {"lo"}


def test_a_relay_reaches_a_host_unix_socket(api, scratch):
    got = api.call("relay", spec=SYSTEM, socket_path=str(scratch / "upstream.sock"), port=8123)
    assert got["result"]["stdout"] == "pong\n", got["result"]
    assert got["received"] == ["ping"]


def test_files_dirs_and_symlinks_in_an_empty_root(api):
    spec = {
        "mounts": [
            ["RoBind", "/usr"], ["Symlink", "usr/bin", "/bin"], ["Symlink", "usr/lib", "/lib"], ["Symlink", "usr/lib64", "/lib64"],
            ["Dir", "/work"], ["File", "key = 1\n", "/etc/app.conf"],
        ]
    }
    script = "ls /; cat /etc/app.conf; echo x > /etc/app.conf; touch /new /work/new"
    got = api.call("run", spec=spec, argv=["/bin/sh", "-c", script])
    assert got["stdout"].split()[:-3] == ["bin", "etc", "lib", "lib64", "usr", "work"]
    assert "key = 1" in got["stdout"]
    # The file is read-only, and so is the root around the mounts (a Dir included).
    assert got["stderr"].count("Read-only file system") == 3, got["stderr"]


def test_seccomp_built_in_filters_and_a_pyseccomp_program(api):
    unix = python("import socket; socket.socket(socket.AF_UNIX)")
    netlink = python("import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)")
    assert "PermissionError" in api.run(unix, spec={"seccomp": "unix-block"})["stderr"]
    assert api.run(unix)["ok"]
    assert "PermissionError" in api.run(netlink, spec={"seccomp": "harden"})["stderr"]
    got = api.run(["/bin/mkdir", "/tmp/d"], spec={"seccomp": "no-mkdir"})
    assert got["exit_code"] == 1 and "Operation not permitted" in got["stderr"]


def test_a_megabyte_file_travels_out_of_band(api):
    spec = {"mounts": [["RoBind", "/usr"], ["Symlink", "usr/bin", "/bin"], ["Symlink", "usr/lib", "/lib"],
                       ["Symlink", "usr/lib64", "/lib64"], ["File", "z" * (1 << 20), "/big"]]}  # fmt: skip
    got = api.run(["/usr/bin/wc", "-c", "/big"], spec=spec)
    assert got["stdout"].split()[0] == str(1 << 20)


def test_a_prepared_sandbox_still_sees_the_host_as_it_is_now(api, scratch):
    got = api.call("prepared_sees_host_changes", directory=str(scratch))
    assert got["seen"] == ["one\n", "one\n", "two\n"]
    assert "later" in got["listing"]
    assert got["missing"]["cause"] == "setup-failed" and got["missing"]["error"]["step"] == "ro-bind source"


def test_a_prepared_sandbox_never_holds_what_a_swapped_source_led_to(api, scratch):
    """The launcher checks a prepared sandbox's sources (device, inode) by
    path before handing it out; PID 1 mounted them by path too, later. A
    workload that can write a directory on a source's path swaps in a
    symlink between the two, and back: the sandbox would hold the file the
    symlink led to while the path names the right one again (found by
    review). strace delays the mounts to hold the window open."""
    secret = scratch / "secret"
    secret.write_text("SECRET\n")
    secret.chmod(0o644)
    argv = [*_strace_delaying_mounts(), *api.argv("prepared_source_swapped_while_prepared")]
    result = subprocess.run(argv, input=json.dumps({"directory": str(scratch), "secret": str(secret)}),
                            capture_output=True, text=True, timeout=300, **api.launcher.process_kwargs())  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1])["seen"] == ["benign\n"] * 5


def _strace_delaying_mounts() -> list[str]:
    strace = shutil.which("strace")
    assert strace, "strace is missing: make test installs it"
    return [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=mount", "-e", "inject=mount:delay_enter=100000"]


def test_only_a_description_launched_again_is_prepared_ahead(api):
    got = api.call("prepared_only_when_repeated", spec=SYSTEM)
    assert (got["after_one"], got["after_two"]) == (0, 2), got["children"]


# ---------------------------------------------------------------- popen


def test_popen_with_pipes(api):
    got = api.call("popen_pipes", spec=SYSTEM)
    assert got["pid_cmdline"] == "/bin/sh", "pid is the program's, in the caller's PID namespace"
    assert got["first_poll"] is None
    assert (got["stdout"], got["stderr"], got["returncode"]) == ("got hello\n", "oops\n", 5)
    assert got["result"]["cause"] == "exited" and got["result"]["exit_code"] == 5


def test_popen_wait_kill_terminate_and_caller_files(api, marker, scratch):
    got = api.call("popen_control", spec=SYSTEM, marker=marker, path=str(scratch / "out.txt"))
    assert got["timeout_raised"] and got["poll_running"] is None
    assert got["killed_returncode"] == -9 and got["killed"]["cause"] == "signaled" and got["killed"]["signal"] == 9
    assert got["ready"] == "ready\n" and got["terminated_output"] == "terminated\n" and got["terminated_returncode"] == 7
    assert got["file_returncode"] == 0 and sorted(got["file_content"].split()) == ["err-too", "to-file"]
    assert got["failed_pid"] is None and got["failed_returncode"] == 125
    assert got["failed"]["cause"] == "setup-failed" and got["failed"]["error"]["value"] == "/nonexistent-source"
    assert lingering(marker) == []


# ---------------------------------------------------------------- for_executable


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    """A real video made with ffmpeg, a truncated copy and a text file, readable by everyone."""
    directory = Path(tempfile.mkdtemp(prefix="srt-api-media-", dir="/tmp"))
    directory.chmod(0o755)
    good = peers.make_video(directory / "good.mp4")
    truncated = directory / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[:3000])
    text = directory / "notes.txt"
    text.write_text("not a video at all\n")
    for path in (good, truncated, text):
        path.chmod(0o644)
    yield {"good": str(good), "truncated": str(truncated), "text": str(text), "dir": str(directory)}
    shutil.rmtree(directory, ignore_errors=True)


def test_for_executable_runs_ffprobe_on_a_real_video_and_holds_nothing_else(api, media):
    ffprobe = "/usr/bin/ffprobe"
    argv = [ffprobe, "-v", "error", "-print_format", "json", "-show_streams", "file:" + media["good"]]
    listing = ["/usr/bin/find", "/", "-path", "/proc", "-prune", "-o", "-path", "/dev", "-prune", "-o", "-print"]
    got = api.call("for_executable", binary=ffprobe, inputs=[media["good"]], argv=argv, lister="/usr/bin/find", listing_argv=listing)
    assert got["result"]["ok"], got["result"]
    streams = json.loads(got["result"]["stdout"])["streams"]
    assert [(s["codec_type"], s["width"], s["height"]) for s in streams] == [("video", 320, 240)]
    seen = set(got["listing"]["stdout"].split())
    allowed = set(got["layouts"]["binary"]) | set(got["layouts"]["lister"]) | {media["good"], "/", "/proc", "/dev", "/tmp"}
    allowed |= {parent for path in allowed for parent in _parents(path)}
    assert seen - allowed == set(), "host files in the sandbox"
    assert {ffprobe, media["good"], "/usr/lib/x86_64-linux-gnu/libavformat.so.59"} <= seen
    for absent in ("/etc/passwd", "/home", "/root", "/usr/bin/python3", media["truncated"], "/bin/sh"):
        assert absent not in seen


def _parents(path: str) -> list[str]:
    parents = []
    while path not in ("/", ""):
        path = os.path.dirname(path)
        parents.append(path)
    return parents


# ---------------------------------------------------------------- concurrency and lifetime


def test_32_runs_from_8_threads(api):
    got = api.call("threads", spec=SYSTEM, threads=8, runs=32)
    assert sorted(int(key) for key in got["results"]) == list(range(32))
    for key, result in got["results"].items():
        index = int(key)
        assert (result["stdout"], result["stderr"], result["exit_code"]) == (f"run {index}\n", f"err {index}\n", index % 7), result


def test_32_run_async_in_one_loop(api):
    got = api.call("asyncio_runs", spec=SYSTEM, runs=32)
    assert [(r["stdout"], r["exit_code"]) for r in got["results"]] == [(f"run {i}\n", i % 5) for i in range(32)]


def test_cancelling_run_async_kills_the_sandbox(api, marker):
    assert api.call("asyncio_cancel", spec=SYSTEM, marker=marker) == {"outcome": "cancelled"}
    assert lingering(marker) == []


def test_a_thread_that_exits_after_launching_does_not_kill_the_sandbox(api, marker):
    got = api.call("thread_exits_after_launch", spec=SYSTEM, marker=marker)
    assert got["alive_after_thread_exit"], "the sandbox died with the thread that launched it"
    assert got["same_launcher"] and got["later"]["stdout"] == "still served\n"
    assert lingering(marker) == []


def test_killing_the_caller_leaves_no_sandbox_process(api, marker):
    proc = subprocess.Popen(
        api.argv("caller_to_be_killed"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **api.launcher.process_kwargs()
    )
    try:
        proc.stdin.write(json.dumps({"spec": SYSTEM, "marker": marker}))
        proc.stdin.close()
        started = json.loads(proc.stdout.readline())
        assert started["sandboxed"] in processes_with(marker)
        proc.kill()
        proc.wait(timeout=10)
        assert lingering(marker) == []
        assert _gone(started["launcher"]), "the launcher process outlived its caller"
    finally:
        proc.kill()
        proc.wait()


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (FileNotFoundError, ProcessLookupError):  # gone, or going while read
            return True
        time.sleep(0.05)
    return False


def test_killing_the_launcher_while_a_sandbox_runs_is_setup_failed_not_a_hang(api, marker):
    got = api.call("kill_launcher_while_running", spec=SYSTEM, marker=marker)
    assert got["returned"] and got["elapsed"] < 10
    assert got["result"]["cause"] == "setup-failed" and "launcher" in got["result"]["error"]["message"]
    assert got["after"]["ok"] and got["after"]["stdout"] == "next launch\n" and got["new_launcher"]
    assert lingering(marker) == []


def test_killing_the_launcher_before_it_answers_is_setup_failed(api):
    got = api.call("kill_launcher_before_answer", spec=SYSTEM)
    assert got["queued"] and got["returned"] and got["elapsed"] < 10
    assert got["result"]["cause"] == "setup-failed" and got["result"]["error"]["step"] == "launcher process"
    assert got["after"]["ok"]


def test_a_forked_caller_gets_its_own_launcher(api):
    got = api.call("after_fork", spec=SYSTEM)
    assert got["child"]["stdout"] == "from the child\n"
    assert got["child"]["launcher"] not in (None, got["parent_launcher"])
    assert got["parent_stdout"] == "from the parent\n" and got["parent_launcher_after"] == got["parent_launcher"]


def test_probe_says_this_host_can_sandbox(api):
    got = api.call("probe")
    assert got["usable"]
    for name in ("user-namespace", "pid-namespace", "mount-namespace", "net-namespace", "seccomp", "procfs", "launcher-process"):
        assert got["features"][name]["ok"], (name, got["features"][name])
        assert got["features"][name]["reason"]
