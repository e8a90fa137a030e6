"""``srt-bwrap``: bubblewrap 0.11.1's command line on the launch engine (SPEC §7, docs/bwrap.md).

A program written for bubblewrap runs unchanged: the same options, parsed by
bubblewrap's rules (``parse_args_recurse`` and ``main`` in bubblewrap.c),
the same defaults, the same messages on stderr and exit statuses. One table
of options feeds the parser and ``--help``; parsing makes a
:class:`~srt_launcher.sandbox.Sandbox` with bubblewrap's semantics spelled
out in its fields, and :mod:`srt_launcher.launch.stub` launches it.

bubblewrap's parsing rules, which this module keeps:

- left to right; ``--`` or the first word that does not start with ``-``
  ends the options; a word starting with ``-`` that is no option is fatal;
- no ``--opt=value``: an option's values are the next words, whatever they
  look like;
- ``--args FD`` splices the NUL-separated words read from FD in place (not
  from inside such a file; at most 9000 words in all); a command inside the
  file ends that file's options and is dropped, as bubblewrap drops it;
- ``--perms`` and ``--size`` modify the next option, which must use them;
  ``--overlay-src`` words must be followed by an overlay;
- a repeated single-value option keeps the last, with bubblewrap's warning;
- environment operations apply in argv order to the caller's environment.

Every failure of bubblewrap's own is exit status 1 with one ``bwrap: ``
line (``<3>`` in front with ``--level-prefix``); the engine's failures are
worded as bubblewrap words the same failure, in :func:`wording`.
"""

import posix

import _signal

from srt_launcher import kernel, oslite, sandbox
from srt_launcher.errors import LauncherError, write_stderr
from srt_launcher.sandbox import Mount, Sandbox

VERSION = "bubblewrap 0.11.1"
FAILURE = 1  # bubblewrap's exit status for every failure of its own
MAX_ARGS = 9000  # bubblewrap's cap on argv plus --args words
MAX_TMPFS_BYTES = (1 << 63) - 1  # SIZE_MAX >> 1 on a 64-bit machine
LOG_ERR = 3
LOG_WARNING = 4

_LONG_MAX = (1 << 63) - 1
_ULONG_MAX = (1 << 64) - 1
_C_SPACE = " \t\n\v\f\r"

# libcap's names (cap_from_name), by number: what --cap-add/--cap-drop accept.
CAPABILITIES = (
    "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable "
    "net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio sys_chroot "
    "sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time sys_tty_config mknod lease "
    "audit_write audit_control setfcap mac_override mac_admin syslog wake_alarm block_suspend audit_read "
    "perfmon bpf checkpoint_restore"
).split()
_CAPABILITY_NUMBERS = {"cap_" + name: number for number, name in enumerate(CAPABILITIES)}
_CAP_MAX_BITS = 64  # libcap's __CAP_MAXBITS: a number below it is a capability


class Die(LauncherError):
    """A failure already in bubblewrap's words (parsing, validation): printed as is, exit 1."""

    def __init__(self, text: str) -> None:
        super().__init__(text, None, None, FAILURE)


class _Parse:
    """Parsing state beyond the description: bubblewrap's opt_* globals that
    only decide things once every option has been read."""

    __slots__ = (
        "box",
        "program",
        "level_prefix",
        "words",
        "unshare_user",
        "unshare_user_try",
        "unshare_cgroup",
        "unshare_cgroup_try",
        "as_pid_1",
        "requested_caps",
        "next_perms",
        "next_size",
        "overlay_sources",
        "seccomp_fd",
        "added_seccomp",
        "in_file",
        "done",
    )

    def __init__(self, program: str, caller_caps: int = 0) -> None:
        box = Sandbox()
        # bubblewrap's defaults, not run's: only the namespaces asked for, no
        # new session, nothing dies with the parent, signals are not passed
        # on, the caller's descriptors reach the command.
        box.user = sandbox.USERNS_NO
        box.pid = False
        box.new_session = False
        box.die_with_parent = False
        box.forward_signals = False
        box.inherit_fds = True
        box.status_child = sandbox.CHILD_IS_PID1
        self.box = box
        self.program = program
        self.level_prefix = False
        self.words = 0  # words parsed, argv's and --args files' (MAX_ARGS)
        self.unshare_user = False
        self.unshare_user_try = False
        self.unshare_cgroup = False
        self.unshare_cgroup_try = False
        self.as_pid_1 = False
        # A uid-0 caller keeps its capabilities unless --cap-drop (bubblewrap's
        # acquire_privs: read before the options); anyone else has only --cap-add's.
        self.requested_caps = caller_caps
        self.next_perms: int | None = None
        self.next_size: int | None = None
        self.overlay_sources: list[str] = []
        self.seccomp_fd: int | None = None  # --seccomp, read at the end
        self.added_seccomp: list[bytes] = []
        self.in_file = False  # parsing the words of an --args file
        self.done: int | None = None  # an exit status: --help or --version was handled

    def warn(self, text: str) -> None:
        write_stderr(_line(LOG_WARNING, text, self.level_prefix))

    def warn_if_repeated(self, option: str, already: bool) -> None:
        if already:
            self.warn(f"Only the last {option} option will take effect")


def _line(severity: int, text: str, level_prefix: bool) -> str:
    return (f"<{severity}>" if level_prefix else "") + "bwrap: " + text + "\n"


# ---------------------------------------------------------------- C number parsing


def _strto(text: str, base: int, unsigned: bool) -> tuple[int | None, str, bool]:
    """glibc's strtol/strtoul: (value, what is left, out of range); value None when no digit.

    Leading white space and a sign are accepted; base 0 reads 0x as hex and a
    leading 0 as octal; out of range clamps (ERANGE), an unsigned negative wraps.
    """
    rest = text.lstrip(_C_SPACE)
    negative = rest[:1] == "-"
    if rest[:1] in ("+", "-"):
        rest = rest[1:]
    if base in (0, 16) and rest[:2] in ("0x", "0X") and rest[2:3] and rest[2:3] in "0123456789abcdefABCDEF":
        rest, base = rest[2:], 16
    elif base == 0:
        base = 8 if rest[:1] == "0" else 10
    digits = value = 0
    for char in rest:
        digit = int(char, 36) if char.isascii() and char.isalnum() else base
        if digit >= base:
            break
        value = value * base + digit
        digits += 1
    if not digits:
        return None, text, False
    rest = rest[digits:]
    if unsigned:
        if value > _ULONG_MAX:
            return _ULONG_MAX, rest, True
        return ((-value) & _ULONG_MAX if negative else value), rest, False
    value = -value if negative else value
    clamped = max(-_LONG_MAX - 1, min(value, _LONG_MAX))
    return clamped, rest, clamped != value


def _c_int(text: str) -> int | None:
    """bubblewrap's fd/uid/gid check: strtol into an int, the whole word, not negative."""
    value, rest, _ = _strto(text, 10, unsigned=False)
    if not text or value is None or rest:
        return None
    value &= 0xFFFFFFFF  # long to int, as the C conversion truncates
    return None if value >= 1 << 31 else value


def _octal(text: str) -> int | None:
    """--perms and --chmod: strtoul(text, 8), the whole word, at most 07777."""
    value, rest, _ = _strto(text, 8, unsigned=True)
    if not text or value is None or rest or value > 0o7777:
        return None
    return value


def capability(name: str) -> int | None:
    """libcap's cap_from_name: a name (any case; what follows the letters and
    underscores is ignored) or a number below 64 (0x hex, 0 octal)."""
    if name[:1].isdigit():
        value, _, _ = _strto(name, 0, unsigned=True)
        return value if value is not None and value < _CAP_MAX_BITS else None
    end = 0
    while end < len(name) and (name[end] == "_" or (name[end].isascii() and name[end].isalpha())):
        end += 1
    return _CAPABILITY_NUMBERS.get(name[:end].lower())


# ---------------------------------------------------------------- what each option does


def _flag(attribute: str, value: object = True):  # type: ignore[no-untyped-def]
    """An option that sets a field of the description."""

    def apply(state: _Parse, option: str, args: list[str]) -> None:
        setattr(state.box, attribute, value)

    return apply


def _parse_flag(attribute: str):  # type: ignore[no-untyped-def]
    """An option that sets parsing state, decided on once all options are read."""

    def apply(state: _Parse, option: str, args: list[str]) -> None:
        setattr(state, attribute, True)

    return apply


def _unshare_all(state: _Parse, option: str, args: list[str]) -> None:
    # The --try variants of user and cgroup: kernels without them still work.
    state.unshare_user_try = state.unshare_cgroup_try = True
    state.box.ipc = state.box.pid = state.box.uts = state.box.net = True


def _dest(path: str) -> str:
    # bubblewrap strips leading slashes and puts the rest under the new root:
    # a relative destination is relative to the sandbox's root.
    return "/" + path.lstrip("/")


def _fd(option: str, text: str) -> int:
    fd = _c_int(text)
    if fd is None:
        raise Die(f"Invalid fd: {text}")
    return fd


def _single_fd(attribute: str):  # type: ignore[no-untyped-def]
    def apply(state: _Parse, option: str, args: list[str]) -> None:
        state.warn_if_repeated(option, getattr(state.box, attribute) is not None)
        setattr(state.box, attribute, _fd(option, args[0]))

    return apply


def _bind(kind: str, optional: bool):  # type: ignore[no-untyped-def]
    def apply(state: _Parse, option: str, args: list[str]) -> None:
        source, dest = args
        state.box.mounts.append(Mount(kind, _dest(dest), source, optional=optional))

    return apply


def _bind_fd(kind: str):  # type: ignore[no-untyped-def]
    def apply(state: _Parse, option: str, args: list[str]) -> None:
        fd = _fd(option, args[0])
        state.box.mounts.append(Mount(kind, _dest(args[1]), f"/proc/self/fd/{fd}", fd=fd))

    return apply


def _at(kind: str):  # type: ignore[no-untyped-def]
    def apply(state: _Parse, option: str, args: list[str]) -> None:
        state.box.mounts.append(Mount(kind, _dest(args[0])))

    return apply


def _with_perms(kind: str, default: int | None, takes_fd: bool):  # type: ignore[no-untyped-def]
    """--dir, --file, --bind-data, --ro-bind-data: what --perms set, else
    bubblewrap's historical mode — the engine's own default (None) where it
    is the same (0755 for a directory, 0666 for a file). --bind-data's 0600
    is explicit: as in bubblewrap, it also keeps the parents it creates
    closed to others (0700)."""

    def apply(state: _Parse, option: str, args: list[str]) -> None:
        fd = _fd(option, args[0]) if takes_fd else None
        perms = default if state.next_perms is None else state.next_perms
        state.next_perms = None
        state.box.mounts.append(Mount(kind, _dest(args[-1]), fd=fd, perms=perms))

    return apply


def _tmpfs(state: _Parse, option: str, args: list[str]) -> None:
    # Without --perms: the engine's tmpfs mode, bubblewrap's historical 0755.
    state.box.mounts.append(Mount(sandbox.TMPFS, _dest(args[0]), perms=state.next_perms, size=state.next_size))
    state.next_perms = state.next_size = None


def _symlink(state: _Parse, option: str, args: list[str]) -> None:
    target, dest = args
    state.box.mounts.append(Mount(sandbox.SYMLINK, _dest(dest), target))


def _chmod(state: _Parse, option: str, args: list[str]) -> None:
    perms = _octal(args[0])
    if perms is None:
        raise Die("--chmod takes an octal argument <= 07777")
    state.box.mounts.append(Mount(sandbox.CHMOD, _dest(args[1]), perms=perms))


def _perms(state: _Parse, option: str, args: list[str]) -> None:
    if state.next_perms is not None:
        raise Die("--perms given twice for the same action")
    perms = _octal(args[0])
    if perms is None:
        raise Die("--perms takes an octal argument <= 07777")
    state.next_perms = perms


def _size(state: _Parse, option: str, args: list[str]) -> None:
    if state.next_size is not None:
        raise Die("--size given twice for the same action")
    text = args[0]
    size, rest, out_of_range = _strto(text, 0, unsigned=True)
    # isdigit() of the first character rules out signs and spaces.
    if not ("0" <= text[:1] <= "9") or size is None or rest or out_of_range or size == 0:
        raise Die("--size takes a non-zero number of bytes")
    if size > MAX_TMPFS_BYTES:
        raise Die(f"--size (for tmpfs) is limited to {MAX_TMPFS_BYTES}")
    state.next_size = size


def _overlay_src(state: _Parse, option: str, args: list[str]) -> None:
    state.overlay_sources.append(args[0])


def _overlay(kind: str, minimum: int):  # type: ignore[no-untyped-def]
    def apply(state: _Parse, option: str, args: list[str]) -> None:
        if len(state.overlay_sources) < minimum:
            what = "at least one --overlay-src" if minimum == 1 else "at least two --overlay-src"
            raise Die(f"{option} requires {what}")
        # The last --overlay-src given is the top layer: overlayfs wants them top first.
        lower = tuple(reversed(state.overlay_sources))
        state.overlay_sources = []
        if kind == sandbox.OVERLAY:
            upper, work, dest = args
            state.box.mounts.append(Mount(kind, _dest(dest), upper, lower=lower, work=work))
        else:
            state.box.mounts.append(Mount(kind, _dest(args[0]), lower=lower))

    return apply


def _chdir(state: _Parse, option: str, args: list[str]) -> None:
    state.warn_if_repeated(option, state.box.chdir is not None)
    state.box.chdir = args[0]


def _argv0(state: _Parse, option: str, args: list[str]) -> None:
    if state.box.argv0 is not None:
        raise Die("--argv0 used multiple times")
    state.box.argv0 = args[0]


def _hostname(state: _Parse, option: str, args: list[str]) -> None:
    state.warn_if_repeated(option, state.box.hostname is not None)
    state.box.hostname = args[0]


def _identity(attribute: str, what: str):  # type: ignore[no-untyped-def]
    def apply(state: _Parse, option: str, args: list[str]) -> None:
        state.warn_if_repeated(option, getattr(state.box, attribute) is not None)
        value = _c_int(args[0])
        if value is None:
            raise Die(f"Invalid {what}: {args[0]}")
        setattr(state.box, attribute, value)

    return apply


def _setenv(state: _Parse, option: str, args: list[str]) -> None:
    if not args[0] or "=" in args[0]:  # what setenv(3) refuses
        raise Die("setenv failed")
    state.box.env.append((sandbox.SETENV, args[0], args[1]))


def _unsetenv(state: _Parse, option: str, args: list[str]) -> None:
    if not args[0] or "=" in args[0]:
        raise Die("unsetenv failed")
    state.box.env.append((sandbox.UNSETENV, args[0]))


def _clearenv(state: _Parse, option: str, args: list[str]) -> None:
    state.box.env.append((sandbox.CLEARENV,))


def _lock_file(state: _Parse, option: str, args: list[str]) -> None:
    state.box.lock_files.append(args[0])


def _seccomp(state: _Parse, option: str, args: list[str]) -> None:
    if state.added_seccomp:
        raise Die("--seccomp cannot be combined with --add-seccomp-fd")
    state.warn_if_repeated(option, state.seccomp_fd is not None)
    state.seccomp_fd = _fd(option, args[0])


def _add_seccomp_fd(state: _Parse, option: str, args: list[str]) -> None:
    if state.seccomp_fd is not None:
        raise Die("--add-seccomp-fd cannot be combined with --seccomp")
    state.added_seccomp.append(read_seccomp_program(_fd(option, args[0])))


def read_seccomp_program(fd: int) -> bytes:
    """A caller-compiled classic BPF program (struct sock_filter[]), read to EOF, fd closed."""
    program = _read_all(fd, "Can't read seccomp data")
    if len(program) % 8:
        raise Die("Invalid seccomp data, must be multiple of 8")
    return program


def _capability(adding: bool):  # type: ignore[no-untyped-def]
    def apply(state: _Parse, option: str, args: list[str]) -> None:
        if args[0].lower() == "all":
            state.requested_caps = _ULONG_MAX if adding else 0
            return
        number = capability(args[0])
        if number is None:
            raise Die(f"unknown cap: {args[0]}")
        if adding:
            state.requested_caps |= 1 << number
        else:
            state.requested_caps &= ~(1 << number)

    return apply


def _label(state: _Parse, option: str, args: list[str]) -> None:
    # As bubblewrap built without SELinux support (die_unless_label_valid):
    # an exec or file label it cannot apply is refused, never ignored.
    raise Die("labeling not supported on this system")


def _level_prefix(state: _Parse, option: str, args: list[str]) -> None:
    state.level_prefix = True


def _help(state: _Parse, option: str, args: list[str]) -> None:
    _write(1, usage(state.program))
    state.done = 0


def _version(state: _Parse, option: str, args: list[str]) -> None:
    _write(1, version_line())
    state.done = 0


def _splice(state: _Parse, option: str, args: list[str]) -> None:
    """--args FD: the NUL-separated words read from FD, parsed in place."""
    if state.in_file:
        raise Die("--args not supported in arguments file")
    if not args:
        raise Die("--args takes an argument")
    fd = _c_int(args[0])
    if fd is None:
        raise Die(f"Invalid fd: {args[0]}")
    data = _read_all(fd, "Can't read --args data")
    words = data.split(b"\0")
    if words[-1] == b"":
        words.pop()  # the NUL ending the last word
    if state.words + len(words) > MAX_ARGS:
        raise Die(f"Exceeded maximum number of arguments {MAX_ARGS}")
    state.words += len(words)
    # What follows the file's options (its own command) is dropped, as
    # bubblewrap drops it: only argv's command runs.
    state.in_file = True
    try:
        _parse_words(state, [oslite.fsdecode(word) for word in words])
    finally:
        state.in_file = False


def _read_all(fd: int, what: str) -> bytes:
    """Everything ``fd`` holds, read to EOF, fd closed; a read error dies as ``WHAT: strerror``."""
    try:
        data = kernel.read_to_eof(fd)
    except OSError as err:
        raise Die(f"{what}: {posix.strerror(err.errno)}") from None
    try:
        posix.close(fd)
    except OSError:
        pass
    return data


# name: (values, what it does, help line) — in bubblewrap 0.11.1's --help order.
OPTIONS = {
    "--help": ((), _help, "Print this help"),
    "--version": ((), _version, "Print version"),
    "--args": (("FD",), _splice, "Parse NUL-separated args from FD"),
    "--argv0": (("VALUE",), _argv0, "Set argv[0] to the value VALUE before running the program"),
    "--level-prefix": ((), _level_prefix, "Prepend e.g. <3> to diagnostic messages"),
    "--unshare-all": ((), _unshare_all, "Unshare every namespace we support by default"),
    "--share-net": ((), _flag("net", False), "Retain the network namespace (can only combine with --unshare-all)"),
    "--unshare-user": ((), _parse_flag("unshare_user"), "Create new user namespace (may be automatically implied if not setuid)"),
    "--unshare-user-try": ((), _parse_flag("unshare_user_try"), "Create new user namespace if possible else continue by skipping it"),
    "--unshare-ipc": ((), _flag("ipc"), "Create new ipc namespace"),
    "--unshare-pid": ((), _flag("pid"), "Create new pid namespace"),
    "--unshare-net": ((), _flag("net"), "Create new network namespace"),
    "--unshare-uts": ((), _flag("uts"), "Create new uts namespace"),
    "--unshare-cgroup": ((), _parse_flag("unshare_cgroup"), "Create new cgroup namespace"),
    "--unshare-cgroup-try": ((), _parse_flag("unshare_cgroup_try"), "Create new cgroup namespace if possible else continue by skipping it"),
    "--userns": (("FD",), _single_fd("userns_fd"), "Use this user namespace (cannot combine with --unshare-user)"),
    "--userns2": (("FD",), _single_fd("userns2_fd"), "After setup switch to this user namespace, only useful with --userns"),
    "--disable-userns": ((), _flag("disable_userns"), "Disable further use of user namespaces inside sandbox"),
    "--assert-userns-disabled": ((), _flag("assert_userns_disabled"), "Fail unless further use of user namespace inside sandbox is disabled"),
    "--pidns": (("FD",), _single_fd("pidns_fd"), "Use this pid namespace (as parent namespace if using --unshare-pid)"),
    "--uid": (("UID",), _identity("uid", "uid"), "Custom uid in the sandbox (requires --unshare-user or --userns)"),
    "--gid": (("GID",), _identity("gid", "gid"), "Custom gid in the sandbox (requires --unshare-user or --userns)"),
    "--hostname": (("NAME",), _hostname, "Custom hostname in the sandbox (requires --unshare-uts)"),
    "--chdir": (("DIR",), _chdir, "Change directory to DIR"),
    "--clearenv": ((), _clearenv, "Unset all environment variables"),
    "--setenv": (("VAR", "VALUE"), _setenv, "Set an environment variable"),
    "--unsetenv": (("VAR",), _unsetenv, "Unset an environment variable"),
    "--lock-file": (("DEST",), _lock_file, "Take a lock on DEST while sandbox is running"),
    "--sync-fd": (("FD",), _single_fd("sync_fd"), "Keep this fd open while sandbox is running"),
    "--bind": (("SRC", "DEST"), _bind(sandbox.BIND, False), "Bind mount the host path SRC on DEST"),
    "--bind-try": (("SRC", "DEST"), _bind(sandbox.BIND, True), "Equal to --bind but ignores non-existent SRC"),
    "--dev-bind": (("SRC", "DEST"), _bind(sandbox.DEV_BIND, False), "Bind mount the host path SRC on DEST, allowing device access"),
    "--dev-bind-try": (("SRC", "DEST"), _bind(sandbox.DEV_BIND, True), "Equal to --dev-bind but ignores non-existent SRC"),
    "--ro-bind": (("SRC", "DEST"), _bind(sandbox.RO_BIND, False), "Bind mount the host path SRC readonly on DEST"),
    "--ro-bind-try": (("SRC", "DEST"), _bind(sandbox.RO_BIND, True), "Equal to --ro-bind but ignores non-existent SRC"),
    "--bind-fd": (("FD", "DEST"), _bind_fd(sandbox.BIND), "Bind open directory or path fd on DEST"),
    "--ro-bind-fd": (("FD", "DEST"), _bind_fd(sandbox.RO_BIND), "Bind open directory or path fd read-only on DEST"),
    "--remount-ro": (("DEST",), _at(sandbox.REMOUNT_RO), "Remount DEST as readonly; does not recursively remount"),
    "--overlay-src": (("SRC",), _overlay_src, "Read files from SRC in the following overlay"),
    "--overlay": (
        ("RWSRC", "WORKDIR", "DEST"),
        _overlay(sandbox.OVERLAY, 1),
        "Mount overlayfs on DEST, with RWSRC as the host path for writes and\n"
        + " " * 33
        + "WORKDIR an empty directory on the same filesystem as RWSRC",
    ),
    "--tmp-overlay": (("DEST",), _overlay(sandbox.TMP_OVERLAY, 1), "Mount overlayfs on DEST, with writes going to an invisible tmpfs"),
    "--ro-overlay": (("DEST",), _overlay(sandbox.RO_OVERLAY, 2), "Mount overlayfs read-only on DEST"),
    "--exec-label": (("LABEL",), _label, "Exec label for the sandbox"),
    "--file-label": (("LABEL",), _label, "File label for temporary sandbox content"),
    "--proc": (("DEST",), _at(sandbox.PROC), "Mount new procfs on DEST"),
    "--dev": (("DEST",), _at(sandbox.DEV), "Mount new dev on DEST"),
    "--tmpfs": (("DEST",), _tmpfs, "Mount new tmpfs on DEST"),
    "--mqueue": (("DEST",), _at(sandbox.MQUEUE), "Mount new mqueue on DEST"),
    "--dir": (("DEST",), _with_perms(sandbox.DIR, None, False), "Create dir at DEST"),
    "--file": (("FD", "DEST"), _with_perms(sandbox.FILE, None, True), "Copy from FD to destination DEST"),
    "--bind-data": (("FD", "DEST"), _with_perms(sandbox.BIND_DATA, 0o600, True), "Copy from FD to file which is bind-mounted on DEST"),
    "--ro-bind-data": (
        ("FD", "DEST"),
        _with_perms(sandbox.RO_BIND_DATA, 0o600, True),
        "Copy from FD to file which is readonly bind-mounted on DEST",
    ),
    "--symlink": (("SRC", "DEST"), _symlink, "Create symlink at DEST with target SRC"),
    "--seccomp": (("FD",), _seccomp, "Load and use seccomp rules from FD (not repeatable)"),
    "--add-seccomp-fd": (("FD",), _add_seccomp_fd, "Load and use seccomp rules from FD (repeatable)"),
    "--block-fd": (("FD",), _single_fd("block_fd"), "Block on FD until some data to read is available"),
    "--userns-block-fd": (("FD",), _single_fd("userns_block_fd"), "Block on FD until the user namespace is ready"),
    "--info-fd": (("FD",), _single_fd("info_fd"), "Write information about the running container to FD"),
    "--json-status-fd": (("FD",), _single_fd("json_status_fd"), "Write container status to FD as multiple JSON documents"),
    "--new-session": ((), _flag("new_session"), "Create a new terminal session"),
    "--die-with-parent": ((), _flag("die_with_parent"), "Kills with SIGKILL child process (COMMAND) when bwrap or bwrap's parent dies."),
    "--as-pid-1": ((), _parse_flag("as_pid_1"), "Do not install a reaper process with PID=1"),
    "--cap-add": (("CAP",), _capability(True), "Add cap CAP when running as privileged user"),
    "--cap-drop": (("CAP",), _capability(False), "Drop cap CAP when running as privileged user"),
    "--perms": (("OCTAL",), _perms, "Set permissions of next argument (--bind-data, --file, etc.)"),
    "--size": (("BYTES",), _size, "Set size of next argument (only for --tmpfs)"),
    "--chmod": (("OCTAL", "PATH"), _chmod, "Change permissions of PATH (must already exist)"),
}

# bubblewrap's message when an option's values are missing, where it is not
# "OPTION takes an argument / two arguments / three arguments".
_TAKES_ONE = frozenset(("--argv0", "--chdir", "--remount-ro"))
_MISSING_NAMED_AS = {"--ro-bind-fd": "--bind-fd"}
_COUNTS = {1: "an argument", 2: "two arguments", 3: "three arguments"}
_MODIFIERS = frozenset(("--perms", "--size"))


def _missing(option: str, count: int) -> str:
    what = "one argument" if option in _TAKES_ONE else _COUNTS[count]
    return f"{_MISSING_NAMED_AS.get(option, option)} takes {what}"


def usage(program: str) -> str:
    lines = [f"usage: {program} [OPTIONS...] [--] COMMAND [ARGS...]", ""]
    for name, (values, _, text) in OPTIONS.items():
        lines.append(f"    {' '.join((name, *values)):<28} {text}")
    return "\n".join(lines) + "\n"


def version_line() -> str:
    from importlib import metadata

    try:
        ours = metadata.version("srt-launcher")
    except metadata.PackageNotFoundError:
        ours = "unknown"
    return f"{VERSION} (srt-launcher {ours})\n"


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", "surrogateescape")
    try:
        while data:
            data = data[posix.write(fd, data) :]
    except OSError:
        pass


# ---------------------------------------------------------------- the parser


def _parse_words(state: _Parse, words: list[str]) -> list[str]:
    """bubblewrap's parse_args_recurse: apply the options at the front of
    ``words``; return what follows them (the command, in argv)."""
    if state.words > MAX_ARGS:
        raise Die(f"Exceeded maximum number of arguments {MAX_ARGS}")
    i = 0
    while i < len(words):
        option = words[i]
        if option == "--":
            return words[i + 1 :]
        entry = OPTIONS.get(option)
        if entry is None:
            if option.startswith("-"):
                raise Die(f"Unknown option {option}")
            return words[i:]
        values, apply, _ = entry
        args = words[i + 1 : i + 1 + len(values)]
        if len(args) < len(values) and option != "--args":  # --args words its own (_splice)
            raise Die(_missing(option, len(values)))
        apply(state, option, args)
        if state.done is not None:
            return []
        _check_modifiers(state, option)
        i += 1 + len(values)
    return []


def _check_modifiers(state: _Parse, option: str) -> None:
    # An option that did not consume --perms/--size cannot take them.
    if option not in _MODIFIERS and state.next_perms is not None:
        raise Die("--perms must be followed by an option that creates a file")
    if option not in _MODIFIERS and state.next_size is not None:
        raise Die("--size must be followed by --tmpfs")
    if option != "--overlay-src" and state.overlay_sources:
        raise Die(_OVERLAY_SRC_ALONE)


_OVERLAY_SRC_ALONE = "--overlay-src must be followed by another --overlay-src or one of --overlay, --tmp-overlay, or --ro-overlay"


def parse(argv: list[str], program: str = "bwrap") -> "Sandbox | int":
    """The Sandbox ``argv`` describes, or the exit status when there is
    nothing to launch (--help, --version, usage printed). Raises Die."""
    return _parse_state(_new_state(program), argv)


def _new_state(program: str) -> _Parse:
    # bubblewrap's acquire_privs, before the options: a uid-0 caller's
    # effective set is where --cap-add/--cap-drop start; anyone else starts
    # from nothing, and must have nothing (no file capabilities).
    caps = kernel.capget_effective()
    if posix.getuid() != 0 and caps:
        raise Die("Unexpected capabilities but not setuid, old file caps config?")
    return _Parse(program, caps if posix.getuid() == 0 else 0)


def _parse_state(state: _Parse, argv: list[str]) -> "Sandbox | int":
    if not argv:
        _write(2, usage(state.program))
        return FAILURE
    state.words = len(argv)
    command = _parse_words(state, argv)
    if state.done is not None:
        return state.done
    if state.overlay_sources:
        raise Die(_OVERLAY_SRC_ALONE)
    _validate(state)
    if not command:
        _write(2, usage(state.program))
        return FAILURE
    return _finish(state, command)


def _validate(state: _Parse) -> None:
    """bubblewrap's checks in main(), in its order (some see only the
    options given, before a user namespace is implied)."""
    box = state.box
    if box.userns_block_fd is not None and not state.unshare_user:
        raise Die("--userns-block-fd requires --unshare-user")
    if box.userns_block_fd is not None and box.info_fd is None:
        raise Die("--userns-block-fd requires --info-fd")
    if box.userns_fd is not None and state.unshare_user:
        raise Die("--userns not compatible --unshare-user")
    if box.userns_fd is not None and state.unshare_user_try:
        raise Die("--userns not compatible --unshare-user-try")
    if box.disable_userns and not state.unshare_user:
        raise Die("--disable-userns requires --unshare-user")
    if box.disable_userns and box.userns_block_fd is not None:
        raise Die("--disable-userns is not compatible with  --userns-block-fd")
    # Not setuid and not root: a user namespace is the only way in.
    if posix.getuid() != 0 and box.userns_fd is None:
        state.unshare_user = True
    if state.unshare_user_try and not state.unshare_user:
        from srt_launcher.launch import namespaces

        state.unshare_user = namespaces.user_namespaces_available()
    joined = box.userns_fd is not None
    if not state.unshare_user and not joined and box.uid is not None and box.uid != posix.getuid():
        raise Die("Specifying --uid requires --unshare-user or --userns")
    if not state.unshare_user and not joined and box.gid is not None and box.gid != posix.getgid():
        raise Die("Specifying --gid requires --unshare-user or --userns")
    if box.hostname is not None and not box.uts:
        raise Die("Specifying --hostname requires --unshare-uts")
    if state.as_pid_1 and not box.pid:
        raise Die("Specifying --as-pid-1 requires --unshare-pid")
    if state.as_pid_1 and box.lock_files:
        raise Die("Specifying --as-pid-1 and --lock-file is not permitted")
    if state.unshare_cgroup and not oslite.exists("/proc/self/ns/cgroup"):
        raise Die("Cannot create new cgroup namespace because the kernel does not support it")


def _finish(state: _Parse, command: list[str]) -> Sandbox:
    box = state.box
    box.command = command
    box.user = sandbox.USERNS_YES if state.unshare_user else sandbox.USERNS_NO
    box.cgroup = True if state.unshare_cgroup else ("try" if state.unshare_cgroup_try else False)
    # bubblewrap's PID 1 reaps in a new PID namespace, and holds the lock
    # files and the sync fd; otherwise (and with --as-pid-1) the process that
    # set the sandbox up execs the command.
    box.reaper = not state.as_pid_1 and (box.pid or bool(box.lock_files) or box.sync_fd is not None)
    # ...and stays while anything it adopted lives, after the command's exit
    # ended the launch (the sandbox dies with the launch only with --die-with-parent).
    box.linger = box.reaper and box.pid
    if state.seccomp_fd is not None:
        box.seccomp = [read_seccomp_program(state.seccomp_fd)]
    else:
        box.seccomp = list(state.added_seccomp)
    box.caps = _capabilities(state.requested_caps)
    return box


def _capabilities(requested: int) -> frozenset[int]:
    """The requested set, masked to the capabilities this kernel has (as capset(2) masks them)."""
    last = _cap_last_cap()
    return frozenset(bit for bit in range(min(last, _CAP_MAX_BITS - 1) + 1) if requested >> bit & 1)


def _cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return len(CAPABILITIES) - 1


# ---------------------------------------------------------------- messages


def wording(err: LauncherError, box: Sandbox | None) -> str:
    """The engine's failure as bubblewrap words the same failure (without the ``bwrap: ``)."""
    if isinstance(err, Die):
        return err.step
    step, value, reason = err.step, err.value or "", _reason(err)
    kind, _, detail = step.partition(": ")
    if step.endswith(" source"):
        return f"Can't find source path {value}: {reason}"
    if step.startswith("exec "):
        return f"execvp {step[5:]}: {reason}"
    words = _ENGINE_STEPS.get(step)
    if words is not None:
        return words(err, value, reason)
    if kind in sandbox.KINDS:
        return _mount_wording(err, kind, detail, value, reason, box)
    return ": ".join(part for part in (step, value, reason) if part)


def _reason(err: LauncherError) -> str:
    if err.errno == 28:  # ENOSPC: mount(2) uses it for "limit exceeded", not a full disk
        return "Limit exceeded (ENOSPC). (Hint: Check that /proc/sys/fs/mount-max is sufficient, typically 100000)"
    return err.reason or ""


def _unshare_wording(err: LauncherError, value: str, reason: str) -> str:
    if "user" in value.split("+") and err.errno == 22:
        return "Creating new namespace failed, likely because the kernel does not support user namespaces.  bwrap must be installed setuid on such systems."
    if "user" in value.split("+") and err.errno == 1:
        return (
            "No permissions to create a new namespace, likely because the kernel does not allow non-privileged "
            "user namespaces. On e.g. debian this can be enabled with 'sysctl kernel.unprivileged_userns_clone=1'."
        )
    if err.errno == 28:
        return "Creating new namespace failed: nesting depth or /proc/sys/user/max_*_namespaces exceeded (ENOSPC)"
    return f"Creating new namespace failed: {reason}"


def _setns_wording(err: LauncherError, value: str, reason: str) -> str:
    if value == "userns" and err.errno == 22:
        return "Joining the specified user namespace failed, it might not be a descendant of the current user namespace."
    if value == "userns":
        return f"Joining specified user namespace failed: {reason}"
    return f"Setting {value} failed: {reason}"


def _user_namespace_wording(err: LauncherError, value: str, reason: str) -> str:
    name = value.split(" ")[0].rsplit("/", 1)[-1]
    what = {"uid_map": "setting up uid map", "gid_map": "setting up gid map", "setgroups": "error writing to setgroups"}
    return f"{what.get(name, 'setting up ' + name)}: {reason}"


def _lock_wording(err: LauncherError, value: str, reason: str) -> str:
    return f"Unable to lock file {value}: {reason}" if err.errno in (11, 13) else f"Unable to open lock file {value}: {reason}"


def _seccomp_wording(err: LauncherError, value: str, reason: str) -> str:
    if err.errno == 22 or value.endswith(" bytes"):  # the kernel's EINVAL, or a size the engine refused first
        return (
            "Unable to set up system call filtering as requested: prctl(PR_SET_SECCOMP) reported EINVAL. "
            "(Hint: this requires a kernel configured with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER.)"
        )
    return f"prctl(PR_SET_SECCOMP): {reason}"


def _disable_userns_wording(err: LauncherError, value: str, reason: str) -> str:
    return f"{value}: {reason}" if value else reason


_ENGINE_STEPS = {
    "unshare": _unshare_wording,
    "setns": _setns_wording,
    "user namespace": _user_namespace_wording,
    "hostname": lambda err, value, reason: f"Can't set hostname to {value}: {reason}",
    "chdir": lambda err, value, reason: f"Can't chdir to {value}: {reason}",
    "switch uid": lambda err, value, reason: f"unable to switch to uid {value}: {reason}",
    "switch gid": lambda err, value, reason: f"unable to switch to gid {value}: {reason}",
    "lock-file": _lock_wording,
    "seccomp": _seccomp_wording,
    "disable-userns": _disable_userns_wording,
    "status fd": lambda err, value, reason: f"Write to info_fd: {reason}",
    "make / a slave": lambda err, value, reason: f"Failed to make / slave: {reason}",
    "staging tmpfs": lambda err, value, reason: f"Failed to mount tmpfs: {reason}",
    "pivot_root": lambda err, value, reason: f"pivot_root: {reason}",
    "refusing to run setuid/setgid": lambda err, value, reason: "Unexpected setuid user, bwrap must not be installed setuid",
    "bring up loopback": lambda err, value, reason: f"loopback: Failed RTM_NEWADDR: {reason}",
}

# The filesystem type bubblewrap names in "Can't mount TYPE on DEST".
_FILESYSTEMS = {sandbox.TMPFS: "tmpfs", sandbox.PROC: "proc", sandbox.MQUEUE: "mqueue", sandbox.DEV: "tmpfs"}


def _mount_wording(err: LauncherError, kind: str, detail: str, value: str, reason: str, box: Sandbox | None) -> str:
    newroot = "/newroot" + value
    if detail == "devpts":
        return f"Can't mount devpts on {newroot}: {reason}"
    if detail in ("remount", "remount submount", "mountinfo", "cover"):
        return f"Can't bind mount on {newroot}: Unable to remount destination \"{newroot}\" with correct flags: {reason}"
    if kind == sandbox.SYMLINK:
        return f"Can't make symlink at {value}: {reason}"
    if kind == sandbox.CHMOD:
        perms = _perms_of(box, kind, value)
        return f"Can't chmod {perms} {value}: {reason}"
    if kind == sandbox.REMOUNT_RO and err.errno is None:
        return f"Can't remount readonly on {newroot}: Unable to find \"{newroot}\" in mount table"
    if kind == sandbox.REMOUNT_RO:
        return f"Can't remount readonly on {newroot}: {reason}"
    if kind in sandbox.OVERLAY_KINDS:
        options = f" with options {err.source}" if err.source else ""
        return f"Can't make overlay mount on {newroot}{options}: {reason}"
    if err.source is not None and kind in sandbox.BIND_KINDS | {sandbox.BIND_DATA, sandbox.RO_BIND_DATA, "bind-fd"}:
        return f"Can't bind mount {err.source} on {newroot}: Unable to mount source on destination: {reason}"
    if err.source is not None and kind in _FILESYSTEMS:
        return f"Can't mount {_FILESYSTEMS[kind]} on {newroot}: {reason}"
    if kind == sandbox.FILE:
        return f"Can't write data to file {value}: {reason}" if err.errno == 9 else f"Can't create file {value}: {reason}"
    if kind in (sandbox.BIND_DATA, sandbox.RO_BIND_DATA):
        return f"Can't write data to file {value}: {reason}" if err.errno == 9 else f"Can't create file at {value}: {reason}"
    if err.errno == 21:  # EISDIR: a file's mount point is a directory
        return f"Can't create file at {value}: {reason}"
    return f"Can't mkdir {value}: {reason}"


def _perms_of(box: Sandbox | None, kind: str, dest: str) -> str:
    for mount in box.mounts if box is not None else ():
        if mount.kind == kind and mount.dest == dest and mount.perms is not None:
            return f"0{mount.perms:o}" if mount.perms else "0"  # C's %#o
    return "?"


def message(err: LauncherError, level_prefix: bool, box: Sandbox | None = None) -> str:
    """The one stderr line for a failure: ``[<3>]bwrap: <bubblewrap's words>``.

    Whole, however long (tools match these lines), but on one line: a
    control character in a path is escaped rather than printed.
    """
    text = wording(err, box)
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return _line(LOG_ERR, text, level_prefix)


# ---------------------------------------------------------------- entry point


def main(argv: list[str], program: str = "bwrap") -> int:
    """Parse and launch as bubblewrap would; return the exit status."""
    # bubblewrap blocks SIGCHLD only (the monitor's signalfd); every other
    # signal keeps its disposition: SIGTERM or ^C kill this process as they
    # kill bwrap, and nothing is passed on to the sandbox. Python's own
    # SIGINT handler (KeyboardInterrupt) is not a disposition bwrap has.
    caller_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, (_signal.SIGCHLD,))
    if callable(_signal.getsignal(_signal.SIGINT)):
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    if argv == ["--version"]:
        _write(1, version_line())  # before anything else, as bubblewrap (build environments run it)
        return 0
    state: _Parse | None = None
    box = None
    try:
        state = _new_state(program)
        result = _parse_state(state, argv)
        if isinstance(result, int):
            return result
        box = result
        from srt_launcher.launch import stub

        return stub.launch(box, caller_mask, posix.getppid())
    except LauncherError as err:
        write_stderr(message(err, state is not None and state.level_prefix, box))
        return FAILURE
    except OSError as err:  # out of descriptors, processes, memory: still one line
        write_stderr(message(LauncherError.from_os("launch", None, err), state is not None and state.level_prefix))
        return FAILURE
