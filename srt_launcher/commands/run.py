"""``srt-launcher run [OPTIONS] -- COMMAND [ARGS...]``: the sandbox-runtime command line (SPEC §2, §6).

One table of options feeds the parser and ``--help``. Parsing makes a
:class:`~srt_launcher.sandbox.Sandbox`; :mod:`srt_launcher.launch.stub`
launches it. Options apply in argv order (mount and environment order is
semantic) and may repeat; an option's value is a value, whatever it looks
like (``--setenv GREETING -h``).
"""

import posix

from srt_launcher import kernel, oslite, sandbox
from srt_launcher.commands import values
from srt_launcher.errors import SETUP_FAILED, LauncherError, report, write_stderr
from srt_launcher.sandbox import Mount, Sandbox


def _usage(what: str, value: str | None = None) -> LauncherError:
    return LauncherError.usage_error(what, value)


class _Parse:
    """Parsing state beyond the description: what applies after all options."""

    __slots__ = ("box", "builtin_filters", "caller_filters", "seccomp_fd_used")

    def __init__(self) -> None:
        self.box = Sandbox()
        self.builtin_filters: list[str] = []
        self.caller_filters: list[bytes] = []
        self.seccomp_fd_used = ""


def _absolute(option: str, path: str) -> str:
    if not path.startswith("/"):
        raise _usage(f"{option}: path must be absolute", path)
    return oslite.normpath(path) if path != "/" else "/"


def _flag(name: str, value: object):  # type: ignore[no-untyped-def]
    def apply(state: _Parse, option: str, args: list[str]) -> None:
        setattr(state.box, name, value)

    return apply


def _filter(name: str):  # type: ignore[no-untyped-def]
    def apply(state: _Parse, option: str, args: list[str]) -> None:
        if name not in state.builtin_filters:
            state.builtin_filters.append(name)

    return apply


def _bind(kind: str, optional: bool):  # type: ignore[no-untyped-def]
    def apply(state: _Parse, option: str, args: list[str]) -> None:
        source, dest = args
        state.box.mounts.append(Mount(kind, _absolute(option, dest), _absolute(option, source), optional=optional))

    return apply


def _at(kind: str):  # type: ignore[no-untyped-def]
    def apply(state: _Parse, option: str, args: list[str]) -> None:
        state.box.mounts.append(Mount(kind, _absolute(option, args[0])))

    return apply


def _symlink(state: _Parse, option: str, args: list[str]) -> None:
    target, dest = args
    if not target:
        raise _usage(f"{option}: empty link target")
    state.box.mounts.append(Mount(sandbox.SYMLINK, _absolute(option, dest), target))


def _relay(state: _Parse, option: str, args: list[str]) -> None:
    port_text, path = args
    port = values.port(port_text)
    if port is None:
        raise _usage("--relay: port must be a number from 1 to 65535", port_text)
    if not path:
        raise _usage("--relay: empty Unix socket path")
    state.box.relays.append((port, path))


def _setenv(state: _Parse, option: str, args: list[str]) -> None:
    key, value = args
    if not values.env_name(key):
        raise _usage(f"{option}: invalid variable name", key)
    state.box.env.append((sandbox.SETENV, key, value))


def _unsetenv(state: _Parse, option: str, args: list[str]) -> None:
    if not values.env_name(args[0]):
        raise _usage(f"{option}: invalid variable name", args[0])
    state.box.env.append((sandbox.UNSETENV, args[0]))


def _clearenv(state: _Parse, option: str, args: list[str]) -> None:
    state.box.env.append((sandbox.CLEARENV,))


def _hostname(state: _Parse, option: str, args: list[str]) -> None:
    if not args[0] or len(args[0].encode()) > 64:
        raise _usage("--hostname: must be 1 to 64 bytes", args[0])
    state.box.hostname = args[0]


def _chdir(state: _Parse, option: str, args: list[str]) -> None:
    state.box.chdir = _absolute(option, args[0])


def _rlimit(state: _Parse, option: str, args: list[str]) -> None:
    name, text = args
    if name not in sandbox.RLIMITS:
        raise _usage(f"--rlimit: unknown resource (one of {', '.join(sandbox.RLIMITS)})", name)
    limit = values.rlimit(name, text)
    if limit is None:
        suffixes = ", with a K, M, G or T suffix" if name in sandbox.BYTE_RLIMITS else ""
        raise _usage(f"--rlimit {name}: expected N or SOFT:HARD (numbers{suffixes}, or unlimited)", text)
    state.box.rlimits[sandbox.RLIMITS[name]] = limit


def _timeout(state: _Parse, option: str, args: list[str]) -> None:
    seconds = values.seconds(args[0])
    if seconds is None:
        raise _usage("--timeout: expected a positive number of seconds", args[0])
    state.box.timeout = seconds


def _status_fd(state: _Parse, option: str, args: list[str]) -> None:
    state.box.json_status_fd = _caller_fd(option, args[0])


def _seccomp_fd(state: _Parse, option: str, args: list[str]) -> None:
    # As bubblewrap: one --seccomp (the last one given), or any number of
    # --add-seccomp-fd, never both.
    other = "--add-seccomp-fd" if option == "--seccomp" else "--seccomp"
    if state.seccomp_fd_used == other:
        raise _usage("--seccomp cannot be combined with --add-seccomp-fd")
    state.seccomp_fd_used = option
    program = read_seccomp_program(_caller_fd(option, args[0]), option)
    if option == "--seccomp":
        state.caller_filters = [program]
    else:
        state.caller_filters.append(program)


def _caller_fd(option: str, text: str) -> int:
    fd = values.fd(text)
    if fd is None or fd < 3:
        raise _usage(f"{option}: expected a file descriptor number of 3 or more", text)
    try:
        posix.fstat(fd)
    except OSError:
        raise _usage(f"{option}: not an open file descriptor", text) from None
    return fd


def read_seccomp_program(fd: int, option: str) -> bytes:
    """A caller-compiled classic BPF program (struct sock_filter[]), read to EOF."""
    try:
        program = kernel.read_to_eof(fd)
        posix.close(fd)
    except OSError as err:
        raise LauncherError.from_os(option, f"fd {fd}", err) from None
    if not program or len(program) % 8:
        raise LauncherError(option, f"fd {fd}", "not a seccomp BPF program (size is not a multiple of 8 bytes)", SETUP_FAILED)
    return program


# name: (values, what it does to the description, help line)
OPTIONS = {
    "--unshare-net": ((), _flag("net", True), "new network namespace: only lo, up, with 127.0.0.1/8 and ::1"),
    "--unshare-user": ((), _flag("user", sandbox.USERNS_YES), "take the user-namespace path even when EUID is 0"),
    "--unshare-ipc": ((), _flag("ipc", True), "new IPC namespace (System V IPC, POSIX message queues)"),
    "--unshare-uts": ((), _flag("uts", True), "new UTS namespace (hostname)"),
    "--unshare-cgroup": ((), _flag("cgroup", True), "new cgroup namespace"),
    "--hostname": (("NAME",), _hostname, "hostname inside (needs --unshare-uts)"),
    "--seccomp-unix-block": ((), _filter(sandbox.SECCOMP_UNIX_BLOCK), "refuse AF_UNIX socket creation and io_uring (seccomp)"),
    "--seccomp-harden": ((), _filter(sandbox.SECCOMP_HARDEN), "refuse netlink/packet/bluetooth/vsock sockets, bpf, perf, keyrings, modules, user namespaces..."),
    "--seccomp": (("FD",), _seccomp_fd, "install the classic BPF program read from FD (after the built-in filters)"),
    "--add-seccomp-fd": (("FD",), _seccomp_fd, "the same, repeatable"),
    "--bind": (("SRC", "DST"), _bind(sandbox.BIND, False), "recursive bind, read-write, nosuid, nodev"),
    "--bind-try": (("SRC", "DST"), _bind(sandbox.BIND, True), "as --bind; a missing SRC is skipped"),
    "--ro-bind": (("SRC", "DST"), _bind(sandbox.RO_BIND, False), "recursive bind, read-only (every submount too), nosuid, nodev"),
    "--ro-bind-try": (("SRC", "DST"), _bind(sandbox.RO_BIND, True), "as --ro-bind; a missing SRC is skipped"),
    "--dev-bind": (("SRC", "DST"), _bind(sandbox.DEV_BIND, False), "recursive bind, read-write, device nodes usable (GPUs)"),
    "--dev-bind-try": (("SRC", "DST"), _bind(sandbox.DEV_BIND, True), "as --dev-bind; a missing SRC is skipped"),
    "--tmpfs": (("DST",), _at(sandbox.TMPFS), "fresh tmpfs, mode 0755, nosuid, nodev"),
    "--dev": (("DST",), _at(sandbox.DEV), "minimal /dev: null zero full random urandom tty (read-only inodes), pts, shm"),
    "--proc": (("DST",), _at(sandbox.PROC), "procfs of the sandbox's PID namespace, with covers"),
    "--host-proc": (("DST",), _at(sandbox.HOST_PROC), "read-only recursive bind of the host /proc instead (shows the host's processes)"),
    "--dir": (("DST",), _at(sandbox.DIR), "make a directory (0755)"),
    "--symlink": (("TARGET", "DST"), _symlink, "make a symlink DST -> TARGET"),
    "--remount-ro": (("DST",), _at(sandbox.REMOUNT_RO), "remount the mount at DST read-only (not recursive)"),
    "--chdir": (("DIR",), _chdir, "working directory inside (must exist there)"),
    "--setenv": (("KEY", "VALUE"), _setenv, "set KEY=VALUE in the command's environment"),
    "--unsetenv": (("KEY",), _unsetenv, "remove KEY from the command's environment"),
    "--clearenv": ((), _clearenv, "start from an empty environment (later --setenv still apply)"),
    "--rlimit": (("NAME", "VALUE"), _rlimit, "resource limit of the command: N or SOFT:HARD, K/M/G/T for bytes, unlimited"),
    "--timeout": (("SECONDS",), _timeout, "SIGKILL the whole sandbox after SECONDS; the launch exits 124"),
    "--json-status-fd": (("FD",), _status_fd, "write start and end records (JSON lines) to FD"),
    "--relay": (("PORT", "UNIX_PATH"), _relay, "127.0.0.1:PORT inside -> host Unix socket (needs --unshare-net)"),
}

RLIMIT_HELP = (
    "--rlimit NAME: " + " ".join(sandbox.RLIMITS) + ". RLIMIT_NPROC does not bind a caller that is\n"
    "uid 0 of the initial user namespace (the kernel exempts it): as root it is set, not enforced."
)


def help_text() -> str:
    lines = [
        "Usage: srt-launcher run [OPTIONS] -- COMMAND [ARGS]...",
        "",
        "  Run COMMAND in a sandbox: its own user, PID, mount (and network) namespaces.",
        "",
        "  Options are applied in argv order (mount order is semantic) and may repeat:",
    ]
    for name, (arity, _, text) in OPTIONS.items():
        lines.append(f"    {(name + ' ' + ' '.join(arity)).strip():<28}{text}")
    lines += [
        f"    {'--':<28}end of options; COMMAND must follow",
        "",
        "  " + RLIMIT_HELP.replace("\n", "\n  "),
        "",
        "  TIOCSTI and TIOCLINUX are refused to COMMAND on every launch (seccomp).",
        "",
        "  Exit status: the command's own; 128+N if it was killed by signal N;",
        "  124 --timeout expired; 2 usage error; 125 launcher setup failed;",
        "  126 not executable; 127 not found.",
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str]) -> Sandbox | None:
    """The Sandbox ``argv`` describes, or None when it asked for --help (printed)."""
    for arg in argv:
        if "\0" in arg:
            raise _usage("argument contains a NUL byte", arg.replace("\0", "\\0"))
    state = _Parse()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            state.box.command = argv[i + 1 :]
            if not state.box.command:
                raise _usage("no command after --")
            break
        if arg in ("--help", "-h"):
            write_stdout(help_text())
            return None
        entry = OPTIONS.get(arg)
        if entry is None:
            raise _usage("unknown option" if arg.startswith("-") else "expected an option or --", arg)
        arity, apply, _ = entry
        args = argv[i + 1 : i + 1 + len(arity)]
        if len(args) < len(arity) or "--" in args:
            count = len(arity)
            raise _usage(f"{arg}: needs {count} value{'s' if count > 1 else ''}")
        apply(state, arg, args)
        i += 1 + len(arity)
    else:
        raise _usage("missing -- and a command")
    return _finish(state)


def _finish(state: _Parse) -> Sandbox:
    box = state.box
    if box.relays and not box.net:
        raise _usage("--relay needs --unshare-net")
    if box.hostname is not None and not box.uts:
        raise _usage("--hostname needs --unshare-uts")
    box.seccomp = [*state.builtin_filters, *state.caller_filters]
    return box


def write_stdout(text: str) -> None:
    data = text.encode()
    while data:
        data = data[posix.write(1, data) :]


def main(argv: list[str], caller_mask: set[int] | None = None, parent: int | None = None) -> int:
    """Parse and launch; ``caller_mask`` is the signal mask from before the
    entry point blocked the launch signals (None: block them here), ``parent``
    the parent PID the entry point saw (None: read it here)."""
    from srt_launcher.launch import signals

    if caller_mask is None:
        caller_mask = signals.block_launch_signals()
    if parent is None:
        parent = posix.getppid()
    try:
        box = parse(argv)
        if box is None:
            return 0
        from srt_launcher.launch import stub

        return stub.launch(box, caller_mask, parent)
    except LauncherError as err:
        return report(err, hint=True)
    except OSError as err:  # out of descriptors, processes, memory: still one line, still 125
        return report(LauncherError.from_os("launch", None, err))
    except Exception as err:  # noqa: BLE001 - the last resort: one line, never a traceback
        write_stderr(f"srt-launcher: internal error: {err!r}\n")
        return SETUP_FAILED
