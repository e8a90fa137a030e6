"""`srt-launcher run`, the process side (issue 2): SPEC §2.2, §2.3, §2.7, §2.8.

The real launcher in real namespaces, nothing mocked: every test goes
through the ``launcher`` fixture and so runs as root (plain unshare), as
uid 65534 (user namespace) and as root with ``--unshare-user``.

Processes are found on the host by a unique marker carried in an argument
(``sleep 99999.<digits>``): the stub and PID 1 carry it in their argv too,
so "no process with the marker" means no stub, no PID 1 and no workload.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import select
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest

from conftest import SYSTEM, after_background_sleeper, argv_of, kill_leftovers, processes_with, sleep_marker, wait_for_sleeper

PYTHON_INSIDE = "/usr/bin/python3"  # world-runnable, present in the SYSTEM view
TIMEOUT = 60  # generous: 2 cores, other suites running in parallel
GONE_WITHIN = 10  # seconds a dying sandbox may take to disappear from the host

FORWARDED = ("TERM", "INT", "HUP", "QUIT", "USR1", "USR2")


# ---------------------------------------------------------------- helpers


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def survivors(marker: str, timeout: float = GONE_WITHIN) -> list[tuple[int, list[bytes]]]:
    """Processes carrying ``marker`` still alive after a bounded poll (empty list: all gone)."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with(marker)
        if not left or time.monotonic() >= deadline:
            return [(pid, argv_of(pid)) for pid in left]
        time.sleep(0.05)


def read_until(fd: int, token: bytes, timeout: float = TIMEOUT) -> bytes:
    """Read from ``fd`` until ``token`` was seen (or EOF); fail after ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    while token not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {token!r}; got {data!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    return data


def status_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def inside_python(launcher, code: str, *options: str, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return launcher.run(*(options or SYSTEM), "--", PYTHON_INSIDE, "-c", code, **kwargs)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}, stderr: {result.stderr!r}"
    return result.stdout


# ---------------------------------------------------------------- the installed command


@pytest.mark.parametrize("variable", ["PYTHONPATH", "PYTHONHOME"])
def test_installed_command_ignores_the_callers_python_environment(launcher, shared_dir, variable):
    """The command runs its interpreter isolated (-I): the caller's PYTHON*
    variables cannot change which code the launcher is. A fake package on
    PYTHONPATH would otherwise shadow the installed one."""
    fake = shared_dir / "srt_launcher"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise SystemExit('the caller\'s PYTHONPATH was imported')\n")
    (fake / "__main__.py").write_text("raise SystemExit('the caller\'s PYTHONPATH was imported')\n")
    env = dict(os.environ, **{variable: str(shared_dir)})
    result = launcher.run(*SYSTEM, "--", "/bin/sh", "-c", "echo inside", env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "inside\n", "")


def test_launch_ignores_site_customisation_of_the_caller(launcher, shared_dir):
    """No site module on the launch path (-S): a usercustomize/sitecustomize
    reachable by the caller is not run."""
    (shared_dir / "sitecustomize.py").write_text("raise SystemExit('sitecustomize ran')\n")
    (shared_dir / "usercustomize.py").write_text("raise SystemExit('usercustomize ran')\n")
    env = dict(os.environ, PYTHONPATH=str(shared_dir), PYTHONUSERBASE=str(shared_dir))
    result = launcher.run(*SYSTEM, "--", "/bin/true", env=env)
    assert (result.returncode, result.stderr) == (0, "")


# ---------------------------------------------------------------- exit status (§2.7)


@pytest.mark.parametrize("code", [0, 1, 3, 42, 125, 255])
def test_workload_exit_status_is_the_launchers(launcher, code):
    result = launcher.sh(f"exit {code}")
    assert result.returncode == code, result.stderr


@pytest.mark.parametrize("name", ["KILL", "TERM", "SEGV", "ABRT"])
def test_workload_killed_by_signal_exits_128_plus_signal(launcher, name):
    signum = getattr(signal, f"SIG{name}")
    result = launcher.sh(f"ulimit -c 0; kill -{name} $$; exit 0")
    assert result.returncode == 128 + signum, result.stderr
    assert "Traceback" not in result.stderr


def test_workload_exit_status_is_kept_when_it_leaves_background_children(launcher, marker):
    result = launcher.sh(f"sleep {marker} >/dev/null 2>&1 </dev/null & exit 7")
    assert result.returncode == 7, result.stderr


def test_launch_neither_waits_for_nor_kills_a_child_the_caller_had_before_exec(launcher, marker):
    # The sleeper becomes the stub's child when the shell execs the launcher;
    # a launch that reaped "every child" would last as long as it does.
    argv = after_background_sleeper(marker, launcher.argv("run", *SYSTEM, "--", "/bin/true"))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, **launcher.process_kwargs())
    assert result.returncode == 0, result.stderr
    assert processes_with(marker), "the launch killed a process it did not start"


def test_inherited_ignored_sigchld_does_not_lose_the_exit_status(launcher):
    # SPEC §2.2 step 3: SIG_IGN for SIGCHLD would auto-reap the worker.
    def ignore_sigchld() -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    result = launcher.sh("exit 9", preexec_fn=ignore_sigchld)
    assert result.returncode == 9, result.stderr


# ---------------------------------------------------------------- PID namespace (§2.2)


def test_proc_inside_shows_only_the_sandbox_pids(launcher):
    # The glob is expanded by the worker shell itself (no fork): the only
    # processes that exist at that moment are PID 1 and the worker.
    proc = launcher.popen(
        *SYSTEM, "--", "/bin/sh", "-c", "echo $$; cd /proc && echo [0-9]*",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    worker, listing = out.splitlines()
    pids = set(listing.split())
    assert pids == {"1", worker}, f"/proc inside lists {sorted(pids)}; the stub's host PID is {proc.pid}"
    assert str(proc.pid) not in pids


def test_workload_children_are_visible_inside(launcher, marker):
    script = f"sleep {marker} & echo $$ $!; cd /proc && echo [0-9]*; kill $!"
    out = ok(launcher.sh(script))
    first, listing = out.splitlines()
    worker, child = first.split()
    assert set(listing.split()) == {"1", worker, child}


def test_workload_is_a_child_of_sandbox_pid_1(launcher):
    out = ok(launcher.sh("read pid comm state ppid rest < /proc/$$/stat; echo $ppid"))
    assert out.strip() == "1"


def test_host_pids_are_not_visible_inside(launcher):
    # The test process, the host's init and the stub's parent are all outside.
    me = os.getpid()
    out = ok(launcher.sh(f"[ -e /proc/{me}/status ] && echo visible || echo hidden"))
    assert me > 64, "test process PID too small to be told apart from sandbox PIDs"
    assert out.strip() == "hidden"


def test_workload_is_in_new_pid_and_mount_namespaces(launcher):
    out = ok(launcher.sh("readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt"))
    pid_ns, mnt_ns = out.split()
    assert pid_ns != os.readlink("/proc/self/ns/pid")
    assert mnt_ns != os.readlink("/proc/self/ns/mnt")


# ---------------------------------------------------------------- identity (§2.3)


def test_workload_uid_is_the_callers(launcher):
    assert ok(launcher.sh("id -u")).strip() == str(launcher.uid)


def test_workload_gid_is_the_callers(launcher):
    assert ok(launcher.sh("id -g")).strip() == str(launcher.gid)


def test_uid_map_maps_the_caller_onto_itself(launcher):
    words = ok(launcher.sh("cat /proc/self/uid_map")).split()
    if launcher.mode == "root":
        assert words == ["0", "0", "4294967295"]  # plain unshare: no user namespace
    else:
        assert words == [str(launcher.uid), str(launcher.uid), "1"]  # root-userns: 0 -> 0


def test_gid_map_maps_the_callers_group_onto_itself(launcher):
    words = ok(launcher.sh("cat /proc/self/gid_map")).split()
    if launcher.mode == "root":
        assert words == ["0", "0", "4294967295"]
    else:
        assert words == [str(launcher.gid), str(launcher.gid), "1"]


def test_user_namespace_exists_only_on_the_user_namespace_path(launcher):
    inside = ok(launcher.sh("readlink /proc/self/ns/user")).strip()
    host = os.readlink("/proc/self/ns/user")
    if launcher.mode == "root":
        assert inside == host  # SPEC §2.3: root with CAP_SYS_ADMIN takes the plain unshare
    else:
        assert inside != host


def test_setgroups_is_denied_in_the_user_namespace(launcher):
    if launcher.mode == "root":
        pytest.skip("no user namespace on the plain-unshare path")
    assert ok(launcher.sh("cat /proc/self/setgroups")).strip() == "deny"


# ---------------------------------------------------------------- privileges (§2.2 step 9)

CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def test_workload_process_has_no_capabilities(launcher):
    # The shell's builtin `read` reads the worker's own status, no exec in between.
    out = ok(launcher.sh("while IFS= read -r line; do echo \"$line\"; done < /proc/$$/status"))
    fields = status_fields(out)
    for cap in CAP_FIELDS:
        assert int(fields[cap], 16) == 0, f"{cap} = {fields[cap]}"


def test_programs_the_workload_executes_have_no_capabilities(launcher):
    # uid 0 executing a program gets the bounding set back unless it is empty.
    fields = status_fields(ok(launcher.sh("cat /proc/self/status")))
    for cap in CAP_FIELDS:
        assert int(fields[cap], 16) == 0, f"{cap} = {fields[cap]}"


def test_workload_has_no_new_privs(launcher):
    fields = status_fields(ok(launcher.sh("cat /proc/self/status")))
    assert fields["NoNewPrivs"] == "1"


def test_workload_inherits_no_blocked_signals(launcher):
    # The launcher blocks the forwarded signals while it sets up.
    fields = status_fields(ok(launcher.sh("cat /proc/self/status")))
    assert int(fields["SigBlk"], 16) == 0


def test_workload_inherits_no_ignored_signals_from_python(launcher):
    # Python ignores SIGPIPE and SIGXFSZ at startup; the workload must not.
    # What the caller itself ignores passes through (GNU make, for one,
    # ignores signals 32 and 33 in everything it runs). subprocess restores
    # SIGPIPE and SIGXFSZ in the launcher it starts, so those are clear in
    # the caller's set, and must be clear in the workload's.
    python_only = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
    with open("/proc/self/status") as handle:
        callers = int(status_fields(handle.read())["SigIgn"], 16) & ~python_only
    fields = status_fields(ok(launcher.sh("cat /proc/self/status")))
    assert int(fields["SigIgn"], 16) == callers, fields["SigIgn"]


def test_launcher_fds_above_2_are_closed_in_the_workload(launcher):
    read_end, write_end = os.pipe()
    fd = 57
    os.dup2(read_end, fd)
    try:
        probe = '[ -e /proc/self/fd/57 ] && echo open || echo closed'
        control = subprocess.run(["/bin/sh", "-c", probe], pass_fds=(fd,), capture_output=True, text=True, timeout=TIMEOUT)
        assert control.stdout.strip() == "open", "control: fd 57 was not passed at all"
        out = ok(launcher.sh(probe, pass_fds=(fd,)))
        assert out.strip() == "closed"
    finally:
        for each in (read_end, write_end, fd):
            os.close(each)


# ---------------------------------------------------------------- PID 1 is out of reach

PTRACE_CODE = """
import ctypes, errno, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
request = int(sys.argv[1])
# Control: ptrace works on the workload's own child, so a denial on PID 1 means something.
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
control = libc.ptrace(0x4206, child, None, None)  # PTRACE_SEIZE
control_errno = ctypes.get_errno()
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
result = libc.ptrace(request, 1, None, None)
result_errno = ctypes.get_errno()
if result == 0:  # a failing launcher: let PID 1 go again
    libc.ptrace(17, 1, None, None)  # PTRACE_DETACH
    os.kill(1, signal.SIGCONT)
print(control, errno.errorcode.get(control_errno, control_errno) if control else "-",
      result, errno.errorcode.get(result_errno, result_errno) if result else "-")
"""


@pytest.mark.parametrize("request_name,ptrace_request", [("PTRACE_ATTACH", 16), ("PTRACE_SEIZE", 0x4206)])
def test_workload_cannot_ptrace_pid_1(launcher, request_name, ptrace_request):
    result = launcher.run(*SYSTEM, "--", PYTHON_INSIDE, "-c", PTRACE_CODE, str(ptrace_request))
    control, control_errno, outcome, outcome_errno = ok(result).split()
    assert control == "0", f"control: PTRACE_SEIZE of the workload's own child failed with {control_errno}"
    assert (outcome, outcome_errno) == ("-1", "EPERM"), f"{request_name} on PID 1 returned {outcome}"


def _open_pid1_file(name: str) -> str:
    return (
        "import errno\n"
        "try:\n"
        f"    open('/proc/1/{name}', 'rb').read(1)\n"
        "    print('readable')\n"
        "except OSError as err:\n"
        "    print(errno.errorcode[err.errno])\n"
    )


def test_workload_cannot_open_pid_1_mem(launcher):
    assert ok(inside_python(launcher, _open_pid1_file("mem"))).strip() in ("EACCES", "EPERM")


def test_workload_cannot_read_pid_1_environ(launcher):
    assert ok(inside_python(launcher, _open_pid1_file("environ"))).strip() in ("EACCES", "EPERM")


# ---------------------------------------------------------------- session and tty (§2.3, TIOCSTI)


def test_workload_runs_in_a_new_session(launcher, marker):
    proc = launcher.popen(*SYSTEM, "--", "sleep", marker, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        worker = wait_for_sleeper(marker)
        sid = os.getsid(worker)
        assert sid != os.getsid(0), "the workload shares the caller's session"
        assert sid != os.getsid(proc.pid), "the workload shares the launcher's session"
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT)


def test_workload_session_is_led_inside_the_sandbox(launcher):
    # Inside, a session leader outside the PID namespace would show as sid 0.
    out = ok(launcher.sh("read pid comm state ppid pgrp sid rest < /proc/self/stat; echo $sid"))
    sid = int(out)
    assert sid != 0, "the session leader is outside the sandbox"
    assert sid != os.getsid(0)


def _run_on_controlling_pty(argv: list[str], kwargs: dict) -> tuple[int, str]:
    """Run ``argv`` with a fresh pty as stdin/stdout/stderr and as its controlling tty."""
    master, slave = os.openpty()

    def take_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=take_tty, **kwargs
        )
    finally:
        os.close(slave)
    output = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError as err:  # EIO: every slave fd is closed
                if err.errno == errno.EIO:
                    break
                raise
            if not chunk:
                break
            output += chunk
        code = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, output.decode(errors="replace").replace("\r\n", "\n")


TTY_PROBE = """
import errno, os
stat = open('/proc/self/stat').read()
tty_nr = stat.rsplit(')', 1)[1].split()[4]
try:
    os.close(os.open('/dev/tty', os.O_RDWR))
    opened = 'opened'
except OSError as err:
    opened = errno.errorcode[err.errno]
print('probe', tty_nr, opened)
"""


def _probe_line(output: str) -> list[str]:
    # An injected character (TIOCSTI) may be echoed in front of the line.
    lines = [line[line.index("probe ") :] for line in output.splitlines() if "probe " in line]
    assert lines, f"no probe output in {output!r}"
    return lines[-1].split()[1:]


def test_workload_has_no_controlling_tty_when_launcher_has_one(launcher):
    kwargs = launcher.process_kwargs()
    code, output = _run_on_controlling_pty([PYTHON_INSIDE, "-c", TTY_PROBE], kwargs)
    tty_nr, opened = _probe_line(output)
    assert code == 0 and tty_nr != "0" and opened == "opened", f"control run has no controlling tty: {output!r}"

    argv = launcher.argv("run", *SYSTEM, "--", PYTHON_INSIDE, "-c", TTY_PROBE)
    code, output = _run_on_controlling_pty(argv, launcher.process_kwargs())
    assert code == 0, output
    tty_nr, opened = _probe_line(output)
    assert tty_nr == "0", "the workload has a controlling tty"
    assert opened == "ENXIO", f"open('/dev/tty') inside: {opened}"


TIOCSTI_PROBE = """
import errno, fcntl, termios
try:
    fcntl.ioctl(0, termios.TIOCSTI, b'#')
    print('probe injected')
except OSError as err:
    print('probe', errno.errorcode[err.errno])
"""


def test_workload_cannot_inject_input_into_the_launchers_terminal(launcher):
    code, output = _run_on_controlling_pty([PYTHON_INSIDE, "-c", TIOCSTI_PROBE], launcher.process_kwargs())
    if _probe_line(output) != ["injected"]:
        pytest.skip(f"TIOCSTI is refused outside the sandbox too ({output.strip()!r}): nothing to defend")
    argv = launcher.argv("run", *SYSTEM, "--", PYTHON_INSIDE, "-c", TIOCSTI_PROBE)
    code, output = _run_on_controlling_pty(argv, launcher.process_kwargs())
    assert code == 0, output
    assert _probe_line(output) == ["EPERM"]


# ---------------------------------------------------------------- working directory (§2.2 step 8)

CWD_PROBE = "import os; print(os.getcwd()); print(os.environ.get('PWD'))"


def _cwd_and_pwd(launcher, *options: str, **kwargs) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    cwd, pwd = ok(inside_python(launcher, CWD_PROBE, *options, **kwargs)).splitlines()
    return cwd, pwd


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def test_spawn_cwd_is_restored_when_it_exists_inside(launcher, shared_dir):
    cwd, _ = _cwd_and_pwd(launcher, cwd=shared_dir)
    assert cwd == str(shared_dir)


def test_pwd_is_exported_to_match_the_restored_cwd(launcher, shared_dir):
    # A stale PWD from the caller must not reach the workload (read without a shell,
    # since a shell would repair PWD on its own).
    _, pwd = _cwd_and_pwd(launcher, cwd=shared_dir, env=_env(PWD="/stale/pwd"))
    assert pwd == str(shared_dir)


def _hidden_cwd_view(shared_dir: Path) -> tuple[Path, tuple[str, ...]]:
    hidden = shared_dir / "hidden"
    (hidden / "work").mkdir(parents=True)
    os.chown(hidden, shared_dir.stat().st_uid, shared_dir.stat().st_gid)
    os.chown(hidden / "work", shared_dir.stat().st_uid, shared_dir.stat().st_gid)
    return hidden / "work", (*SYSTEM, "--tmpfs", str(hidden))


def test_cwd_missing_inside_falls_back_to_home(launcher, shared_dir):
    work, view = _hidden_cwd_view(shared_dir)
    home = shared_dir / "home"
    home.mkdir()
    cwd, pwd = _cwd_and_pwd(launcher, *view, cwd=work, env=_env(HOME=str(home), PWD=str(work)))
    assert (cwd, pwd) == (str(home), str(home))


def test_cwd_and_home_missing_inside_falls_back_to_root(launcher, shared_dir):
    work, view = _hidden_cwd_view(shared_dir)
    home = work.parent / "home"  # also under the tmpfs: missing inside
    home.mkdir()
    cwd, pwd = _cwd_and_pwd(launcher, *view, cwd=work, env=_env(HOME=str(home), PWD=str(work)))
    assert (cwd, pwd) == ("/", "/")


def test_cwd_missing_inside_and_home_unset_falls_back_to_root(launcher, shared_dir):
    work, view = _hidden_cwd_view(shared_dir)
    cwd, pwd = _cwd_and_pwd(launcher, *view, cwd=work, env=_env(HOME=None, PWD=str(work)))
    assert (cwd, pwd) == ("/", "/")


def test_cwd_outside_a_minimal_view_falls_back_to_root(launcher, shared_dir):
    view: list[str] = []
    for path in ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.exists(path):
            view += ["--ro-bind", path, path]
    cwd, pwd = _cwd_and_pwd(launcher, *view, cwd=shared_dir, env=_env(HOME=None, PWD=str(shared_dir)))
    assert (cwd, pwd) == ("/", "/")


def test_deleted_cwd_falls_back_to_home(launcher, shared_dir):
    doomed = shared_dir / "doomed"
    doomed.mkdir()
    os.chown(doomed, launcher.uid, launcher.gid)
    argv = launcher.argv("run", *SYSTEM, "--", PYTHON_INSIDE, "-c", CWD_PROBE)
    result = subprocess.run(
        ["/bin/sh", "-c", 'cd "$1" && rmdir "$1" && shift && exec "$@"', "sh", str(doomed), *argv],
        capture_output=True, text=True, timeout=TIMEOUT,
        **launcher.process_kwargs(env=_env(HOME=str(shared_dir), PWD=str(doomed))),
    )
    assert ok(result).splitlines() == [str(shared_dir), str(shared_dir)]


# ---------------------------------------------------------------- environment (§1, §2.1)

ENV_VALUE = "import os, sys; sys.stdout.write(repr(os.environ.get(sys.argv[1])))"


def test_setenv_sets_a_variable(launcher):
    result = launcher.run(*SYSTEM, "--setenv", "SRT_TEST_VAR", "hello", "--", PYTHON_INSIDE, "-c", ENV_VALUE, "SRT_TEST_VAR")
    assert ok(result) == repr("hello")


def test_setenv_overrides_an_inherited_variable(launcher):
    result = launcher.run(
        *SYSTEM, "--setenv", "SRT_TEST_VAR", "from-setenv", "--", PYTHON_INSIDE, "-c", ENV_VALUE, "SRT_TEST_VAR",
        env=_env(SRT_TEST_VAR="inherited"),
    )
    assert ok(result) == repr("from-setenv")


@pytest.mark.parametrize(
    "value",
    ["two words", "line one\nline two\n", "a=b=c", "", "  leading and trailing  ", "ünïcödé ✓", "$HOME `id` ;|&"],
)
def test_setenv_value_is_passed_intact(launcher, value):
    result = launcher.run(*SYSTEM, "--setenv", "SRT_TEST_VAR", value, "--", PYTHON_INSIDE, "-c", ENV_VALUE, "SRT_TEST_VAR")
    assert ok(result) == repr(value)


def test_repeated_setenv_last_one_wins(launcher):
    result = launcher.run(
        *SYSTEM, "--setenv", "SRT_TEST_VAR", "first", "--setenv", "SRT_TEST_VAR", "second",
        "--", PYTHON_INSIDE, "-c", ENV_VALUE, "SRT_TEST_VAR",
    )
    assert ok(result) == repr("second")


def test_multicall_argv0_variable_is_removed_from_the_workload_environment(launcher):
    out = ok(launcher.run(*SYSTEM, "--", "/usr/bin/env", env=_env(ARGV0="srt-launcher")))
    assert not [line for line in out.splitlines() if line.startswith("ARGV0=")]


def test_other_environment_variables_pass_through(launcher):
    out = ok(launcher.run(*SYSTEM, "--", "/usr/bin/env", env=_env(ARGV0="srt-launcher", SRT_TEST_PASS="through it")))
    assert "SRT_TEST_PASS=through it" in out.splitlines()


def test_path_search_uses_the_workloads_path(launcher, shared_dir):
    tool = shared_dir / "srt-test-tool"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    result = launcher.run(*SYSTEM, "--setenv", "PATH", f"{shared_dir}:/usr/bin:/bin", "--", "srt-test-tool")
    assert ok(result) == "tool ran\n"


# ---------------------------------------------------------------- no orphan outlives the launch (§2.8)


def test_background_child_dies_with_the_workload(launcher, marker):
    result = launcher.sh(f"sleep {marker} >/dev/null 2>&1 </dev/null & echo $!; exit 0")
    assert result.returncode == 0, result.stderr
    assert survivors(marker) == []


def test_double_forked_daemon_dies_with_the_workload(launcher, marker):
    script = f"(setsid -f sleep {marker} >/dev/null 2>&1 </dev/null); sleep 0.2; exit 0"
    result = launcher.sh(script)
    assert result.returncode == 0, result.stderr
    assert survivors(marker) == []


# ---------------------------------------------------------------- signals (§2.8)


def _trap_script(name: str, marker: str) -> str:
    return (
        f"trap 'echo trapped {name}; exit 0' {name}\n"
        "echo ready\n"
        f"sleep {marker} >/dev/null 2>&1 </dev/null & wait\n"
        "echo wait-returned-without-the-trap; exit 3\n"
    )


@pytest.mark.parametrize("name", FORWARDED)
def test_signal_to_launcher_reaches_a_trapping_workload(launcher, marker, name):
    proc = launcher.popen(*SYSTEM, "--", "/bin/sh", "-c", _trap_script(name, marker), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = read_until(proc.stdout.fileno(), b"ready\n")
        proc.send_signal(getattr(signal, f"SIG{name}"))
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert f"trapped {name}\n".encode() in seen + out, (seen + out, err)
    assert proc.returncode == 0, err


@pytest.mark.parametrize("name", FORWARDED)
def test_signal_to_launcher_kills_an_untrapping_workload_with_128_plus_signal(launcher, marker, name):
    signum = getattr(signal, f"SIG{name}")
    script = f"ulimit -c 0; echo ready; exec sleep {marker}"
    proc = launcher.popen(*SYSTEM, "--", "/bin/sh", "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(proc.stdout.fileno(), b"ready\n")
        wait_for_sleeper(marker)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum, err
    assert survivors(marker) == []


@pytest.mark.parametrize("name", FORWARDED)
def test_signal_right_after_spawn_ends_the_launch_with_128_plus_signal(launcher, name):
    """Before the worker exists the signal is held, then ends the launch.

    A signal that lands before the interpreter could block it kills the
    launcher process itself, which a shell reports as 128+S too: the
    subprocess module shows that as -S.
    """
    signum = getattr(signal, f"SIG{name}")
    for _ in range(5):
        marker = sleep_marker()
        proc = launcher.popen(*SYSTEM, "--", "sleep", marker, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.send_signal(signum)
        try:
            _, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            leftovers = survivors(marker)
            kill_leftovers(marker)
        assert proc.returncode in (128 + signum, -signum), (proc.returncode, err)
        assert b"Traceback" not in err, err.decode(errors="replace")
        assert leftovers == []


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(word) for word in handle.read().split()]
    except OSError:
        return []


def _launch_phase(stub: int, signum: int) -> str:
    """Where a launch is, seen from the host: startup, stub-blocked, pid1-setup or worker."""
    kids = _children(stub)
    if kids:
        return "pid1-setup" if not _children(kids[0]) else "worker"
    try:
        with open(f"/proc/{stub}/status") as handle:
            blocked = int(status_fields(handle.read())["SigBlk"], 16)
    except (OSError, KeyError):
        return "startup"
    return "stub-blocked" if blocked & (1 << (signum - 1)) else "startup"


@pytest.mark.parametrize("phase", ["stub-blocked", "pid1-setup"])
@pytest.mark.parametrize("name", FORWARDED)
def test_signal_before_the_worker_exists_ends_the_launch_with_128_plus_signal(launcher, name, phase):
    """The signal lands while the stub holds it blocked (before PID 1 exists), or
    while PID 1 builds the sandbox (before the worker exists): it must be held
    and end the launch with 128+S (the workload would otherwise sleep forever).

    Aiming signals at the moment the stub and PID 1 switch from "blocked" to
    "forwarding" also probes the gap between a Python-level handler being
    tripped and the blocking waitid() that follows: a signal lost there shows
    up as a launch that never ends (TimeoutExpired)."""
    signum = getattr(signal, f"SIG{name}")
    hits = 0
    for _ in range(30):
        marker = sleep_marker()
        proc = launcher.popen(*SYSTEM, "--", "sleep", marker, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + TIMEOUT
            seen = "startup"
            while proc.poll() is None and time.monotonic() < deadline:
                seen = _launch_phase(proc.pid, signum)
                if seen in (phase, "worker"):
                    break
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            leftovers = survivors(marker)
            kill_leftovers(marker)
        assert proc.returncode == 128 + signum, (seen, proc.returncode, err)
        assert b"Traceback" not in err, err.decode(errors="replace")
        assert leftovers == []
        hits += seen == phase
        if hits >= 3:
            break
    if hits == 0:
        pytest.skip(f"never caught a launch in phase {phase} (all signals landed later)")


def test_killing_the_launchers_parent_kills_the_whole_sandbox(launcher, marker):
    argv = launcher.argv("run", *SYSTEM, "--", "sleep", marker)
    parent = subprocess.Popen(
        ["/bin/sh", "-c", '"$@" & wait', "sh", *argv],
        **launcher.process_kwargs(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    )
    try:
        wait_for_sleeper(marker)
        stub = [pid for pid in processes_with(marker) if ppid_of(pid) == parent.pid]
        assert stub, "the launcher is not the parent shell's child"
    finally:
        parent.kill()
        parent.wait(timeout=TIMEOUT)
    assert survivors(marker) == [], "the launcher or its sandbox outlived the launcher's parent"


def test_killing_the_stub_kills_the_whole_sandbox(launcher, marker):
    proc = launcher.popen(*SYSTEM, "--", "sleep", marker, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_sleeper(marker)
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    assert survivors(marker) == [], "PID 1 or the workload outlived the stub"


def test_killed_sandbox_pid_1_ends_the_launch_with_137(launcher, marker):
    proc = launcher.popen(*SYSTEM, "--", "sleep", marker, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        worker = wait_for_sleeper(marker)
        pid1 = ppid_of(worker)
        assert pid1 is not None and ppid_of(pid1) == proc.pid, "the workload's parent is not the stub's child"
        os.kill(pid1, signal.SIGKILL)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert survivors(marker) == []


# ---------------------------------------------------------------- exec failures (§2.2 step 9, §2.7)


CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"  # no directory the caller cannot search (EACCES → 126, as execvp)


def _not_executable(shared_dir: Path, name: str = "not-executable") -> Path:
    script = shared_dir / name
    script.write_text("#!/bin/sh\necho it ran\n")
    script.chmod(0o644)
    return script


@pytest.mark.parametrize("name", ["/nonexistent/srt-test-command", "srt-test-no-such-command"])
def test_missing_command_exits_127(launcher, name):
    result = launcher.run(*SYSTEM, "--", name, env=_env(PATH=CLEAN_PATH))
    assert result.returncode == 127, result.stderr
    assert result.stderr.startswith("srt-launcher: ") and name in result.stderr, result.stderr
    assert result.stderr.endswith(": No such file or directory\n"), result.stderr


def test_non_executable_file_exits_126(launcher, shared_dir):
    script = _not_executable(shared_dir)
    result = launcher.run(*SYSTEM, "--ro-bind", str(shared_dir), str(shared_dir), "--", str(script))
    assert result.returncode == 126, result.stderr
    assert result.stderr.endswith(": Permission denied\n"), result.stderr
    assert "it ran" not in result.stdout


def test_directory_as_command_exits_126(launcher, shared_dir):
    result = launcher.run(*SYSTEM, "--", str(shared_dir))
    assert result.returncode == 126, result.stderr
    assert result.stderr.startswith("srt-launcher: ") and str(shared_dir) in result.stderr, result.stderr


def test_command_found_only_as_non_executable_on_path_exits_126(launcher, shared_dir):
    _not_executable(shared_dir, "srt-test-tool")
    result = launcher.run(*SYSTEM, "--setenv", "PATH", f"{shared_dir}:{CLEAN_PATH}", "--", "srt-test-tool")
    assert result.returncode == 126, result.stderr
    assert result.stderr.endswith(": Permission denied\n"), result.stderr


@pytest.mark.parametrize("failure", ["not-found", "not-executable"])
def test_exec_failure_message_is_exec_command_reason(launcher, shared_dir, failure):
    # SPEC §2.7: `srt-launcher: exec <cmd>: <strerror>`, one line.
    if failure == "not-found":
        command, reason = "srt-test-no-such-command", "No such file or directory"
    else:
        command, reason = str(_not_executable(shared_dir)), "Permission denied"
    result = launcher.run(*SYSTEM, "--", command, env=_env(PATH=CLEAN_PATH))
    assert result.stderr == f"srt-launcher: exec {command}: {reason}\n"


def test_exec_failure_message_for_a_hostile_command_name_stays_one_line(launcher):
    # The command name comes from the caller's (possibly hostile) input: it must
    # not be able to forge a second `srt-launcher: ...` line (errors.printable).
    command = "/nonexistent\nsrt-launcher: forged line"
    result = launcher.run(*SYSTEM, "--", command, env=_env(PATH=CLEAN_PATH))
    assert result.returncode == 127, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("srt-launcher: exec /nonexistent")


# ---------------------------------------------------------------- standard streams


def test_stdin_reaches_the_workload(launcher):
    data = b"first line\n\x00binary\xff\xfe bytes\nno newline at the end"
    result = launcher.run(*SYSTEM, "--", "cat", input=data, text=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


def test_large_stdin_and_stdout_are_complete(launcher):
    data = random.randbytes(8 * 1024 * 1024)
    result = launcher.run(*SYSTEM, "--", "cat", input=data, text=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == len(data)
    assert result.stdout == data


def test_large_output_is_complete(launcher):
    result = launcher.run(*SYSTEM, "--", "seq", "1", "300000", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f"{n}\n" for n in range(1, 300001))


def test_stderr_reaches_the_caller(launcher):
    result = launcher.sh("echo to-stderr >&2; echo to-stdout")
    assert (result.returncode, result.stdout, result.stderr) == (0, "to-stdout\n", "to-stderr\n")


# ---------------------------------------------------------------- python -m (§1)


def _python_m_argv(launcher) -> list[str]:  # type: ignore[no-untyped-def]
    return [launcher.python, "-m", "srt_launcher"]


def test_python_dash_m_runs_like_the_console_script(launcher):
    argv = _python_m_argv(launcher) + launcher.argv("run", *SYSTEM, "--", "/bin/sh", "-c", "id -u; echo $$; exit 7")[len(launcher.argv_prefix):]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, **launcher.process_kwargs())
    assert result.returncode == 7, result.stderr
    uid, pid = result.stdout.split()
    assert uid == str(launcher.uid)
    reference = launcher.sh("id -u; echo $$; exit 7")
    assert (reference.returncode, reference.stdout) == (result.returncode, result.stdout)
