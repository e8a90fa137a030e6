"""Isolation however installed (SPEC §11), and the commands an install gives (SPEC §1).

The launcher runs outside the sandbox, so nothing a sandboxed command could
have planted may run in it. Every install form is started in a hostile
environment: a ``.pth`` file and a ``usercustomize.py`` in the user
site-packages of its HOME, a ``sitecustomize.py`` and a package named
``srt_launcher`` on PYTHONPATH and in the current directory, a PYTHONHOME
whose ``encodings`` runs code. Each planted file would create a mark; no mark
may appear, and the launch must work.

The forms, each installed from the wheels `make setup` keeps in
``.venv/wheels`` (the very wheel it installed), by root, run as root and as
uid 65534:

- ``make-setup``: the suite's own venv (commands hard-linked to
  srt-launcher-boot, started with ``-IS`` by the kernel);
- ``venv``: ``python3 -m venv`` then its own ``pip install`` (/bin/sh wrappers);
- ``user``: ``pip install --user`` with a throwaway HOME, by root and by
  uid 65534 each for itself: the package shares the user site-packages
  with the planted ``.pth``;
- ``prefix``: ``pip install --prefix`` into a temporary directory (Debian's
  pip puts it under PREFIX/local/bin and PREFIX/local/lib/python3.11/dist-packages);
- ``system``: a system-wide install without touching the system: ``pip
  install --root R`` writes R/usr/local/{bin,lib/python3.11/dist-packages},
  and each run happens in a private mount namespace where R/usr/local is
  bind-mounted on /usr/local. The launcher then sits where ``sudo pip
  install`` puts it, at the same paths and on the interpreter's default
  search path — which a ``--prefix`` directory is not — and the host's
  /usr/local never changes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, UNPRIVILEGED_GID, UNPRIVILEGED_UID, VENV, scratch_dir

CALLERS = ("root", "unprivileged")
FORMS = ("make-setup", "venv", "user", "prefix", "system")
COMMANDS = ("srt-launcher", "srt-bwrap", "srt-socat")
DEPENDENCIES = ("click", "python-prctl", "pyseccomp", "pyroute2")
SYSTEM_PYTHON = "/usr/bin/python3"
VERSION = f"python{sys.version_info[0]}.{sys.version_info[1]}"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT = 300


def uid_of(caller: str) -> int:
    return UNPRIVILEGED_UID if caller == "unprivileged" else 0


def as_caller(caller: str) -> list[str]:
    """The argv prefix that drops to ``caller`` (after any namespace is entered)."""
    if caller == "root":
        return []
    return ["setpriv", f"--reuid={UNPRIVILEGED_UID}", f"--regid={UNPRIVILEGED_GID}", "--clear-groups", "--"]


def world_readable_dir(parent: Path, name: str, owner: int = 0) -> Path:
    path = parent / name
    path.mkdir(mode=0o755)
    os.chown(path, owner, owner)
    return path


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    kwargs.setdefault("env", {"PATH": PATH})
    kwargs.setdefault("cwd", "/")
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


def on_usr_local(root: Path) -> list[str]:
    """The argv prefix of a run in a private mount namespace where a
    ``pip install --root ROOT`` is on /usr/local (the host's is untouched)."""
    enter = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c"]
    return enter + ['mount --bind "$0" /usr/local && exec "$@"', str(root / "usr" / "local")]


class Install:
    """One installed launcher: where its commands are, and how to run them."""

    def __init__(self, form: str, bindir: Path, home: Path | None = None, enter: list[str] | None = None) -> None:
        self.form = form
        self.bindir = bindir
        self.home = home  # the HOME it was installed for (--user), else None
        self.enter = enter or []  # argv prefix that enters the world it is installed in

    def argv(self, caller: str, command: str, *args: str) -> list[str]:
        return [*self.enter, *as_caller(caller), str(self.bindir / command), *args]


class Installs:
    """Each form installed once per module, on first use, in a world-readable
    scratch area that also holds a copy of make setup's wheels."""

    def __init__(self, area: Path, unprivileged_argv: list[str]) -> None:
        self.area = area
        self.wheels = area / "wheels"
        self.unprivileged_argv = unprivileged_argv
        self.made: dict[tuple[str, str], Install] = {}

    def pip_install(self, caller: str, python: str, *options: str, home: Path | None = None, what: tuple[str, ...] = ("srt-launcher",)) -> None:
        """``python -m pip install OPTIONS WHAT`` from the wheels, offline, as ``caller``."""
        argv = [*as_caller(caller), python, "-m", "pip", "install", "--no-index", "--no-cache-dir"]
        argv += ["--disable-pip-version-check", "--root-user-action=ignore", "--find-links", str(self.wheels)]
        argv += [*options, *what]
        result = run(argv, env={"PATH": PATH, "HOME": str(home or self.scratch())})
        assert result.returncode == 0, f"{' '.join(argv)}\n{result.stdout}\n{result.stderr}"

    def scratch(self) -> Path:
        path = Path(tempfile.mkdtemp(dir=self.area))
        path.chmod(0o755)
        return path

    def get(self, form: str, caller: str) -> Install:
        # --user installs belong to their user; every other form is made once, by root.
        key = (form, caller if form in ("make-setup", "user") else "any")
        if key not in self.made:
            make = {"make-setup": self._make_setup, "venv": self._venv, "user": self._user, "prefix": self._prefix, "system": self._system}
            self.made[key] = make[form](caller)
        return self.made[key]

    def _make_setup(self, caller: str) -> Install:
        command = Path(self.unprivileged_argv[0]) if caller == "unprivileged" else VENV / "bin" / "srt-launcher"
        return Install("make-setup", command.parent)

    def _venv(self, caller: str) -> Install:
        venv = self.area / "venv"
        result = run([SYSTEM_PYTHON, "-m", "venv", str(venv)])
        assert result.returncode == 0, result.stderr
        self.pip_install("root", str(venv / "bin" / "python"))
        return Install("venv", venv / "bin")

    def _user(self, caller: str) -> Install:
        home = world_readable_dir(self.area, f"home-{caller}", uid_of(caller))
        self.pip_install(caller, SYSTEM_PYTHON, "--user", "--break-system-packages", home=home)
        return Install("user", home / ".local" / "bin", home=home)

    def _prefix(self, caller: str) -> Install:
        prefix = self.area / "prefix"
        self.pip_install("root", SYSTEM_PYTHON, "--prefix", str(prefix), "--break-system-packages")
        (command,) = prefix.glob("**/bin/srt-launcher")
        return Install("prefix", command.parent)

    def _system(self, caller: str) -> Install:
        root = self.area / "root"
        self.pip_install("root", SYSTEM_PYTHON, "--root", str(root), "--break-system-packages")
        assert (root / "usr" / "local" / "bin" / "srt-launcher").is_file()
        return Install("system", Path("/usr/local/bin"), enter=on_usr_local(root))


@pytest.fixture(scope="module")
def installs(unprivileged_argv: list[str]):  # type: ignore[no-untyped-def]
    wheels = VENV / "wheels"
    if not any(wheels.glob("srt_launcher-*.whl")):
        pytest.fail(f"{wheels} has no srt_launcher wheel: run the suite with `make test` (make setup builds it)")
    area = Path(tempfile.mkdtemp(prefix="srt-launcher-install-", dir="/var/tmp"))
    try:
        area.chmod(0o755)
        shutil.copytree(wheels, area / "wheels")
        for path in (area / "wheels").iterdir():
            path.chmod(0o644)
        (area / "wheels").chmod(0o755)
        yield Installs(area, unprivileged_argv)
    finally:
        shutil.rmtree(area, ignore_errors=True)


# ---------------------------------------------------------------- the hostile environment


def _mark_code(mark: Path) -> str:
    # posix, not open(): the PYTHONHOME plant runs before io exists.
    return f"import posix; posix.close(posix.open({str(mark)!r}, posix.O_WRONLY | posix.O_CREAT, 0o666))"


class Hostile:
    """Code planted where a non-isolated interpreter would run it; each piece leaves a mark."""

    def __init__(self, directory: Path, home: Path) -> None:
        self.marks = directory / "marks"
        self.marks.mkdir()
        self.marks.chmod(0o777)
        self.path = directory / "pythonpath"  # also the working directory
        self.plant(self.path / "sitecustomize.py", "sitecustomize")
        self.plant(self.path / "srt_launcher" / "__init__.py", "pythonpath-package")
        self.plant(self.path / "srt_launcher" / "__main__.py", "pythonpath-package-main", "\ndef main(argv=None):\n    return 99\n")
        self.python_home = directory / "pythonhome"
        self.plant(self.python_home / "lib" / VERSION / "encodings" / "__init__.py", "pythonhome")
        user_site = home / ".local" / "lib" / VERSION / "site-packages"
        self.plant(user_site / "zz-planted.pth", "user-site-pth")
        self.plant(user_site / "usercustomize.py", "usercustomize")
        self.home = home
        for path in [directory, *directory.rglob("*")]:
            if path != self.marks:
                path.chmod(0o755 if path.is_dir() else 0o644)

    def plant(self, path: Path, name: str, extra: str = "") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_mark_code(self.marks / name) + "\n" + extra)

    @property
    def environments(self) -> list[dict[str, str]]:
        """Two runs: with PYTHONHOME set, a non-isolated interpreter would run
        its planted `encodings` and die before any other plant had a chance."""
        base = {"PATH": PATH, "HOME": str(self.home)}
        return [{**base, "PYTHONPATH": str(self.path)}, {**base, "PYTHONHOME": str(self.python_home)}]

    def left(self) -> list[str]:
        return sorted(os.listdir(self.marks))


@pytest.fixture
def hostile(installs: Installs):  # type: ignore[no-untyped-def]
    """hostile(form, caller): the install, and a hostile environment for it
    (whose user site-packages is the install's own for --user)."""
    made: list[tuple[Path, Install]] = []

    def make(form: str, caller: str) -> tuple[Install, Hostile]:
        install = installs.get(form, caller)
        directory = installs.scratch()
        made.append((directory, install))
        home = install.home or world_readable_dir(directory, "home", uid_of(caller))
        return install, Hostile(directory, home)

    yield make
    for directory, install in made:
        shutil.rmtree(directory, ignore_errors=True)
        if install.home is not None:  # what was planted in the install's own user site
            for name in ("zz-planted.pth", "usercustomize.py"):
                (install.home / ".local" / "lib" / VERSION / "site-packages" / name).unlink(missing_ok=True)


# ---------------------------------------------------------------- isolation (SPEC §11)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("form", FORMS)
def test_planted_code_never_runs_in_a_launch(hostile, form, caller):
    install, hostile_env = hostile(form, caller)
    argv = install.argv(caller, "srt-launcher", "run", "--ro-bind", "/", "/", "--", "/bin/sh", "-c", "exit 7")
    for env in hostile_env.environments:
        result = run(argv, env=env, cwd=hostile_env.path)
        assert hostile_env.left() == []
        assert (result.returncode, result.stderr) == (7, "")


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("form", FORMS)
def test_planted_code_never_runs_in_any_command(hostile, form, caller):
    # --help goes through click: the dependencies are found without site too.
    install, hostile_env = hostile(form, caller)
    for env in hostile_env.environments:
        for command in COMMANDS:
            result = run(install.argv(caller, command, "--help"), env=env, cwd=hostile_env.path)
            assert hostile_env.left() == []
            assert "Traceback" not in result.stderr, (command, result.stderr)
            if command == "srt-launcher":
                assert (result.returncode, result.stderr) == (0, "")
                assert "run" in result.stdout


def test_make_setup_commands_start_without_a_shell():
    """make setup's fast start: each command is srt-launcher-boot itself,
    whose #! line starts the venv's interpreter with -IS."""
    boot = VENV / "bin" / "srt-launcher-boot"
    first = boot.read_text().splitlines()[0]
    assert re.fullmatch(rf"#!{re.escape(str(VENV))}/bin/python[0-9.]* -IS", first), first
    for command in COMMANDS:
        assert (VENV / "bin" / command).stat().st_ino == boot.stat().st_ino, command


@pytest.mark.parametrize(
    ("command", "launch"),
    [
        ("srt-launcher", ["run", "--ro-bind", "/", "/", "--", "/bin/true"]),
        ("srt-launcher", ["run", "--unshare-net", "--relay", "3128", "PROXY", "--ro-bind", "/", "/", "--", "/bin/true"]),
        ("srt-bwrap", ["--ro-bind", "/", "/", "/bin/true"]),
        ("srt-bwrap", ["--unshare-net", "--ro-bind", "/", "/", "/bin/true"]),
    ],
    ids=["run", "run-relay", "bwrap", "bwrap-net"],
)
def test_make_setup_launches_run_the_launch_path_from_its_image(command, launch, host_launcher):
    """make setup's fast start also writes the launch path's image
    (srt_launcher/_preload.py): a launch through either front end runs all
    of it from there, from the package's own start on (srt-launcher-boot
    runs the image's loader), and the import system loads none of those
    modules, nor the C extension modules the engine needs. For uid 65534
    in a checkout it cannot enter, the venv is a copy elsewhere
    (conftest.relocate_venv): the image holds paths relative to the
    package, so the copy runs its own code from its own image."""
    imported = _imports_of_a_launch(host_launcher, command, launch, [])
    assert "encodings" in imported  # importtime saw the interpreter's own imports
    assert not [name for name in imported if name.startswith("srt_launcher")], imported
    assert not {"_ctypes", "_prctl", "os"} & set(imported), imported


@pytest.mark.parametrize(
    ("command", "launch", "socket"),
    [
        ("srt-launcher", ["run", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", "/bin/true"], False),
        ("srt-launcher", ["run", "--unshare-net", "--relay", "3128", "PROXY", "--seccomp-unix-block", "--ro-bind", "/", "/", "--", "/bin/true"], True),
        ("srt-bwrap", ["--unshare-pid", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"], False),
        ("srt-bwrap", ["--unshare-all", "--ro-bind", "/", "/", "--info-fd", "1", "/bin/true"], True),
    ],
    ids=["run", "run-relay", "bwrap", "bwrap-status"],
)
def test_a_launch_never_imports_os(command, launch, socket, host_launcher):
    """The launch path calls posix, not os (srt_launcher/oslite.py): os.py's
    import costs every launch about a millisecond. Nor does a launch that
    needs no socket (no network namespace, no record senders) import
    _socket. Without the image, so that importtime sees every import."""
    imported = _imports_of_a_launch(host_launcher, command, launch, ["-X", "srt-launcher-no-image"])
    assert "srt_launcher.launch.stub" in imported  # importtime saw the launch path
    assert not {"os", "posixpath", "_collections_abc"} & set(imported), imported
    assert ("_socket" in imported) == socket, imported


def _imports_of_a_launch(launcher, command: str, launch: list[str], options: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """The modules the import system loaded for one launch (-X importtime),
    started as make setup's commands start; PROXY in ``launch`` is a
    listening Unix socket."""
    bindir = Path(launcher.argv_prefix[0]).parent
    with scratch_dir(launcher, "imports-") as scratch, socket.socket(socket.AF_UNIX) as proxy:
        proxy.bind(str(scratch / "proxy.sock"))
        proxy.listen()
        os.chmod(scratch / "proxy.sock", 0o777)
        launch = [str(scratch / "proxy.sock") if word == "PROXY" else word for word in launch]
        argv = [str(bindir / "python3"), "-I", "-S", "-X", "importtime", *options, "-X", f"srt-launcher-argv0={bindir / command}", str(bindir / "srt-launcher-boot"), *launch]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **launcher.process_kwargs())
    assert result.returncode == 0, result.stderr
    return re.findall(r"\| +([\w.]+)$", result.stderr, re.MULTILINE)


@pytest.fixture(scope="module")
def system_dependencies(installs: Installs):  # type: ignore[no-untyped-def]
    """The dependencies alone, installed system-wide (pip --root, used on
    /usr/local in a private mount namespace), and a venv made with
    --system-site-packages that has srt-launcher without them: as with a
    Debian python3-click, pip found them in the system and skipped them."""
    root = installs.area / "system-dependencies"
    installs.pip_install("root", SYSTEM_PYTHON, "--root", str(root), "--break-system-packages", what=DEPENDENCIES)
    venv = installs.area / "shared-venv"
    result = run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    assert result.returncode == 0, result.stderr
    # Debian's pip, seen through the system site-packages, installing for the venv's interpreter.
    installs.pip_install("root", str(venv / "bin" / "python"), "--no-deps", "--ignore-installed")
    return root, venv / "bin"


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("form", ("shared-venv", "user"))
def test_dependencies_installed_for_the_system_are_found(installs, system_dependencies, form, caller):
    root, venv_bin = system_dependencies
    if form == "user":
        home = world_readable_dir(installs.scratch(), "home", uid_of(caller))
        installs.pip_install(caller, SYSTEM_PYTHON, "--user", "--no-deps", "--break-system-packages", home=home)
        bindir = home / ".local" / "bin"
    else:
        bindir = venv_bin
    launch = [str(bindir / "srt-launcher"), "run", "--ro-bind", "/", "/", "--", "/bin/sh", "-c", "exit 7"]
    help_ = [str(bindir / "srt-launcher"), "--help"]
    # Without them on /usr/local the launcher cannot start: the test is not vacuous.
    missing = run([*as_caller(caller), *launch])
    assert missing.returncode != 7 and "No module named" in missing.stderr
    for argv, code in ((launch, 7), (help_, 0)):
        result = run([*on_usr_local(root), *as_caller(caller), *argv])
        assert (result.returncode, result.stderr) == (code, "")


# ---------------------------------------------------------------- the invoked name (SPEC §1)


PROBE_MAIN = '''import json, os, sys


def main(argv=None):
    flags = [sys.flags.isolated, sys.flags.no_site, sys.flags.ignore_environment]
    os.write(1, json.dumps({"argv": sys.argv, "flags": flags, "path": sys.path}).encode())
    return 0
'''


@pytest.fixture(scope="module")
def probe(installs: Installs):  # type: ignore[no-untyped-def]
    """A --prefix install whose srt_launcher.__main__ reports what it was
    given, started both ways: as pip wrote it (/bin/sh wrappers) and after
    scripts/direct-start (make setup's fast start) on a copy of its bin
    directory. Each way also through user symlinks `bwrap` and `socat` in
    another directory. Returns {way: commands to invoke}, and the package's
    site directory."""
    prefix = installs.area / "probe"
    installs.pip_install("root", SYSTEM_PYTHON, "--prefix", str(prefix), "--break-system-packages")
    (command,) = prefix.glob("**/bin/srt-launcher")
    (main,) = prefix.glob("**/srt_launcher/__main__.py")
    main.write_text(PROBE_MAIN)
    wrappers = command.parent
    direct = wrappers.parent / "bin-direct"
    shutil.copytree(wrappers, direct)
    result = run([str(ROOT / "scripts" / "direct-start"), str(direct)])
    assert result.returncode == 0, result.stderr
    ways = {}
    for way, bindir in (("wrappers", wrappers), ("direct", direct)):
        links = world_readable_dir(installs.area, f"links-{way}")
        (links / "bwrap").symlink_to(bindir / "srt-bwrap")
        (links / "socat").symlink_to(bindir / "srt-socat")
        ways[way] = [bindir / name for name in COMMANDS] + [links / "bwrap", links / "socat"]
    return ways, main.parent.parent


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("way", ("wrappers", "direct"))
def test_each_command_gives_main_its_invoked_name_and_arguments(probe, way, caller):
    # The name selects the front end (SPEC §1): it must reach
    # srt_launcher.__main__ as sys.argv[0], the arguments untouched.
    ways, site = probe
    arguments = ["run", "two words", "", "-X", "srt-launcher-argv0=forged", "--"]
    for invoked in ways[way]:
        result = run([*as_caller(caller), str(invoked), *arguments])
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen["argv"] == [str(invoked), *arguments]
        assert seen["flags"] == [1, 1, 1]  # -I (so -E) and -S
        assert str(site) in seen["path"]


def test_direct_start_makes_each_command_the_boot_with_isolating_flags(probe):
    ways, _ = probe
    boot = ways["direct"][0].parent / "srt-launcher-boot"
    assert boot.read_text().splitlines()[0] == f"#!{SYSTEM_PYTHON} -IS"
    for command in ways["direct"][: len(COMMANDS)]:
        assert command.stat().st_ino == boot.stat().st_ino


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("form", ("make-setup", "venv"))
def test_a_symlinked_bin_directory_runs_the_installed_package(installs, form, caller):
    # A caller who reaches the commands through a symlink to their directory
    # (PATH=/tmp/srt:..., with /tmp/srt -> /opt/srt/bin) must get the package
    # installed beside the real directory. The lexical parent of the link is
    # someone else's to write (/tmp): a package planted under it, with the
    # dependencies' names beside it, must never run in the launcher.
    install = installs.get(form, caller)
    other = installs.scratch()
    try:
        other.chmod(0o777)
        (other / "bin").symlink_to(install.bindir)
        marks = other / "marks"
        marks.mkdir(mode=0o777)
        marks.chmod(0o777)
        site = other / "lib" / VERSION / "site-packages"
        for name in ("srt_launcher/__init__.py", "srt_launcher/__main__.py", "click/__init__.py", "pyroute2/__init__.py", "prctl.py", "pyseccomp.py"):
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            (site / name).write_text(_mark_code(marks / name.replace("/", "-")) + "\ndef main(argv=None):\n    return 99\n")
        for path in other.rglob("*"):
            if path != marks and not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        result = run([*as_caller(caller), str(other / "bin" / "srt-launcher"), "run", "--ro-bind", "/", "/", "--", "/bin/sh", "-c", "exit 7"])
        assert os.listdir(marks) == []
        assert (result.returncode, result.stderr) == (7, "")
    finally:
        shutil.rmtree(other)


# ---------------------------------------------------------------- failures that must be clear


@pytest.mark.parametrize("caller", CALLERS)
def test_boot_refuses_an_interpreter_without_isolation(installs, caller):
    install = installs.get("venv", caller)
    boot = install.bindir / "srt-launcher-boot"
    for argv in ([str(boot), "run", "--", "/bin/true"], [str(install.bindir / "python"), str(boot), "--help"]):
        result = run([*as_caller(caller), *argv])
        assert result.returncode == 125
        assert result.stderr == "srt-launcher: start: srt-launcher-boot runs as srt-launcher, srt-bwrap or srt-socat (-I -S)\n"


@pytest.mark.parametrize("caller", CALLERS)
def test_a_copied_wrapper_names_what_it_misses(installs, caller):
    install = installs.get("venv", caller)
    elsewhere = installs.scratch()
    try:
        shutil.copy(install.bindir / "srt-bwrap", elsewhere / "bwrap")
        result = run([*as_caller(caller), str(elsewhere / "bwrap"), "--help"])
        assert result.returncode == 125
        assert result.stderr == f"srt-launcher: start: {elsewhere}/srt-launcher-boot: cannot read its #! line\n"
    finally:
        shutil.rmtree(elsewhere)


@pytest.mark.parametrize("caller", CALLERS)
def test_boot_without_its_package_names_where_it_looked(installs, caller):
    install = installs.get("venv", caller)
    elsewhere = installs.scratch()
    try:
        (elsewhere / "bin").mkdir(mode=0o755)
        for name in ("srt-launcher", "srt-launcher-boot"):
            shutil.copy(install.bindir / name, elsewhere / "bin" / name)
        result = run([*as_caller(caller), str(elsewhere / "bin" / "srt-launcher"), "--help"])
        assert result.returncode == 125
        assert result.stderr == f"srt-launcher: start: no srt_launcher package for {VERSION} under {elsewhere}\n"
    finally:
        shutil.rmtree(elsewhere)
