"""The API's description, limits, wire format and verdicts: pure logic, no sandbox."""

from __future__ import annotations

import signal

import pytest

from srt_launcher import sandbox as engine
from srt_launcher.api import session, wire
from srt_launcher.api.limits import Limits
from srt_launcher.api.mounts import Bind, Dev, DevBind, Dir, File, Proc, RoBind, Symlink, Tmpfs
from srt_launcher.api.result import Cause, Result, SandboxError
from srt_launcher.api.sandbox import Relay, Sandbox
from srt_launcher.commands import run

# ---------------------------------------------------------------- one engine


def test_a_sandbox_and_the_equivalent_run_command_line_make_the_same_description():
    box = Sandbox(
        mounts=[RoBind("/"), Bind("/srv/data", "/data"), DevBind("/dev/dri"), Tmpfs("/tmp"), Proc(), Dev(), Dir("/work"), Symlink("usr/lib", "/lib")],
        network=[Relay(3128, "/run/proxy.sock")],
        env={"A": "1"},
        cwd="/work",
        limits=Limits(cpu_seconds=2, address_space="1G", open_files=(64, 128)),
        seccomp=["unix-block", "harden"],
        hostname="box",
        namespaces={"ipc", "cgroup"},
    ).to_engine()
    argv = [
        "--ro-bind", "/", "/", "--bind", "/srv/data", "/data", "--dev-bind", "/dev/dri", "/dev/dri", "--tmpfs", "/tmp",
        "--proc", "/proc", "--dev", "/dev", "--dir", "/work", "--symlink", "usr/lib", "/lib",
        "--unshare-net", "--relay", "3128", "/run/proxy.sock", "--clearenv", "--setenv", "A", "1",
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--chdir", "/work",
        "--rlimit", "cpu", "2", "--rlimit", "as", "1G", "--rlimit", "nofile", "64:128",
        "--seccomp-unix-block", "--seccomp-harden", "--hostname", "box", "--unshare-uts", "--unshare-ipc", "--unshare-cgroup",
        "--", "/bin/true",
    ]  # fmt: skip
    parsed = run.parse(argv)
    parsed.command = []
    assert box == parsed


def test_defaults_are_a_network_namespace_and_a_clean_environment():
    box = Sandbox().to_engine()
    assert box.net and box.pid and box.relays == []
    assert box.mounts == [engine.Mount(engine.REMOUNT_RO, "/")], "the empty root is read-only once built"
    assert Sandbox(mounts=[Bind("/srv", "/")]).to_engine().mounts == [engine.Mount(engine.BIND, "/", "/srv")]
    assert box.env == [(engine.CLEARENV,), (engine.SETENV, "PATH", "/usr/local/bin:/usr/bin:/bin")]
    assert box.user == engine.USERNS_IF_NEEDED and not (box.ipc or box.uts or box.cgroup)
    assert Sandbox(network=True).to_engine().net is False
    assert Sandbox(namespaces={"user"}).to_engine().user == engine.USERNS_YES
    assert Sandbox(env={"PATH": "/opt/bin"}).to_engine().env[-1] == (engine.SETENV, "PATH", "/opt/bin")


def test_a_file_is_a_read_only_data_bind():
    mount = File(b"data", "/etc/x").to_engine()
    assert (mount.kind, mount.dest, mount.data, mount.perms) == (engine.RO_BIND_DATA, "/etc/x", b"data", 0o444)


# ---------------------------------------------------------------- checked at construction


@pytest.mark.parametrize(
    "make",
    [
        lambda: RoBind("relative"),
        lambda: Bind("/a", "b"),
        lambda: Tmpfs("/tmp\0x"),
        lambda: Symlink("", "/x"),
        lambda: File("text", "/x"),
        lambda: Relay(0, "/s"),
        lambda: Relay(80, "s"),
        lambda: Sandbox(mounts=RoBind("/")),
        lambda: Sandbox(mounts=["/usr"]),
        lambda: Sandbox(network="yes"),
        lambda: Sandbox(network=[]),
        lambda: Sandbox(network=[Relay(1, "/a"), Relay(1, "/b")]),
        lambda: Sandbox(env={"A=B": "x"}),
        lambda: Sandbox(env={"A": 1}),
        lambda: Sandbox(env=["A"]),
        lambda: Sandbox(cwd="tmp"),
        lambda: Sandbox(limits={"cpu_seconds": 1}),
        lambda: Sandbox(timeout=0),
        lambda: Sandbox(timeout=float("nan")),
        lambda: Sandbox(timeout=True),
        lambda: Sandbox(seccomp="tty"),
        lambda: Sandbox(seccomp=b"1234567"),
        lambda: Sandbox(seccomp=object()),
        lambda: Sandbox(hostname="x" * 65),
        lambda: Sandbox(namespaces={"pid"}),
        lambda: Sandbox(namespaces="ipc"),
        lambda: Limits(cpu_seconds=-1),
        lambda: Limits(cpu_seconds=True),
        lambda: Limits(cpu_seconds=1.5),
        lambda: Limits(address_space="1X"),
        lambda: Limits(open_files=(10, 5)),
        lambda: Limits(open_files=("unlimited", 5)),
        lambda: Limits(open_files=(1, 2, 3)),
        lambda: Limits(processes="10K"),
    ],
)
def test_an_invalid_description_raises_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_keyword_arguments_only_and_immutable():
    with pytest.raises(TypeError):
        Sandbox([RoBind("/")])  # type: ignore[misc]
    box = Sandbox(env={"A": "1"})
    with pytest.raises(AttributeError):
        box.timeout = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        box.env["B"] = "2"  # type: ignore[index]


def test_paths_are_normalised_and_dest_defaults_to_src():
    assert RoBind("/usr/../opt//x/") == RoBind("/opt/x", "/opt/x")
    assert Bind("//srv").dest == "/srv"


def test_limits_take_readable_values():
    limits = Limits(address_space="512M", cpu_seconds=(1, 2), open_files="unlimited", core=0, stack=("8M", "unlimited"))
    assert limits.to_engine() == {
        engine.RLIMITS["as"]: (512 << 20, 512 << 20),
        engine.RLIMITS["cpu"]: (1, 2),
        engine.RLIMITS["nofile"]: (engine.RLIM_INFINITY, engine.RLIM_INFINITY),
        engine.RLIMITS["core"]: (0, 0),
        engine.RLIMITS["stack"]: (8 << 20, engine.RLIM_INFINITY),
    }


def test_a_pyseccomp_filter_is_exported_in_the_calling_process():
    import pyseccomp

    rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    rules.add_rule(pyseccomp.ERRNO(1), "mkdir")
    (program,) = Sandbox(seccomp=rules).seccomp
    assert isinstance(program, bytes) and len(program) % 8 == 0 and len(program) > 8


# ---------------------------------------------------------------- the wire


def test_equal_sandboxes_encode_to_equal_bytes_and_decode_back():
    def make() -> Sandbox:
        return Sandbox(mounts=[RoBind("/"), File(b"x" * 100, "/f")], limits=Limits(cpu_seconds=1, core=0), env={"B": "2", "A": "1"}, seccomp="harden")

    first, second = make(), make()
    assert first == second and hash(first) == hash(second)
    assert wire.encode(first.to_engine()) == wire.encode(second.to_engine())
    decoded = wire.decode(wire.encode(first.to_engine()))
    assert decoded == first.to_engine()
    assert wire.encode(Sandbox(timeout=5).to_engine()) == wire.encode(Sandbox().to_engine()), "the timeout travels with each launch"


@pytest.mark.parametrize("data", [b"", b"\x00garbage", wire.encode(engine.Sandbox())[:-3]])
def test_a_malformed_description_is_refused(data):
    with pytest.raises(ValueError):
        wire.decode(data)


# ---------------------------------------------------------------- verdicts


def _status(*records: dict) -> session.StatusReader:
    reader = session.StatusReader.__new__(session.StatusReader)
    reader.fd, reader.buffer, reader.start, reader.end, reader.malformed = None, bytearray(), None, None, ""
    for record in records:
        reader._record(__import__("json").dumps(record).encode())
    return reader


END = {"exit-code": 0, "cause": "exited", "wall-time": 0.5, "user-time": 0.25, "system-time": 0.125, "max-rss-kb": 100}


@pytest.mark.parametrize(
    "records,killed,expected",
    [
        ([{"child-pid": 5}, END], None, (Cause.EXITED, 0, None, None)),
        ([{"child-pid": 5}, dict(END, **{"exit-code": 125})], None, (Cause.EXITED, 125, None, None)),
        ([{"child-pid": 5}, dict(END, cause="signaled", signal=9, limit="cpu", **{"exit-code": 137})], None, (Cause.SIGNALED, None, 9, "cpu_seconds")),
        ([{"child-pid": 5}, dict(END, cause="signaled", signal=25, limit="fsize", **{"exit-code": 153})], None, (Cause.SIGNALED, None, 25, "file_size")),
        ([{"child-pid": 5}, dict(END, cause="timeout", **{"exit-code": 124})], None, (Cause.TIMEOUT, None, None, None)),
        ([{"error": {"step": "exec /x", "value": None, "message": "No such file or directory", "status": 127}}], None, (Cause.EXEC_FAILED, None, None, None)),
        ([{"error": {"step": "ro-bind source", "value": "/x", "message": "No such file or directory", "status": 125}}], None, (Cause.SETUP_FAILED, None, None, None)),
        ([{"child-pid": 5}], None, (Cause.SETUP_FAILED, None, None, None)),  # the stub died without an end record
        ([{"child-pid": 5}], Cause.OUTPUT_LIMIT, (Cause.OUTPUT_LIMIT, None, None, None)),
        ([{"child-pid": 5}, END], Cause.OUTPUT_LIMIT, (Cause.OUTPUT_LIMIT, None, None, None)),
        ([{"child-pid": 5}], Cause.TIMEOUT, (Cause.TIMEOUT, None, None, None)),
        ([{"child-pid": 5}, END], Cause.TIMEOUT, (Cause.EXITED, 0, None, None)),  # it ended on its own first
        ([{"child-pid": 5}], Cause.SIGNALED, (Cause.SIGNALED, None, 9, None)),  # popen().kill()
    ],
)
def test_the_verdict_of_the_status_records(records, killed, expected):
    result = session.outcome(("/bin/x",), _status(*records), killed, 1.0)
    assert (result.cause, result.exit_code, None if result.signal is None else int(result.signal), result.limit) == expected
    if result.cause is Cause.EXITED:
        assert (result.wall_time, result.cpu_time, result.max_rss) == (0.5, 0.375, 100 * 1024)
    if result.cause in (Cause.SETUP_FAILED, Cause.EXEC_FAILED):
        assert result.error is not None and result.error.step


def test_result_ok_describe_and_check():
    ok = Result(("/bin/x",), Cause.EXITED, exit_code=0)
    assert ok.ok and ok.check() is ok
    failed = Result(("/bin/x",), Cause.SIGNALED, signal=signal.SIGKILL, limit="cpu_seconds")
    assert not failed.ok and failed.describe() == "/bin/x was killed by SIGKILL (cpu_seconds limit)"
    with pytest.raises(SandboxError) as raised:
        failed.check()
    assert raised.value.result is failed
