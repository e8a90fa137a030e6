"""The installed start-up files (SPEC §1, §11), without root: what the /bin/sh
wrapper execs, and what scripts/direct-start changes. tests/test_install.py
runs them for real in each install form."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
COMMANDS = ("srt-launcher", "srt-bwrap", "srt-socat")

# Stands in for the interpreter: prints the arguments it was given, one per line.
ECHO_ARGS = '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n'


def test_the_three_wrappers_are_one_file():
    wrapper = (SCRIPTS / "srt-launcher").read_bytes()
    assert wrapper.startswith(b"#!/bin/sh -p\n")
    for name in COMMANDS:
        assert (SCRIPTS / name).read_bytes() == wrapper, name
        assert os.access(SCRIPTS / name, os.X_OK), name


def test_the_boot_starts_with_the_line_wheel_installers_rewrite():
    # The wheel format: a script whose first line starts with exactly
    # b"#!python" gets the installing interpreter's path there.
    assert (SCRIPTS / "srt-launcher-boot").read_bytes().startswith(b"#!python\n")


def test_the_wheel_installs_the_wrappers_and_the_boot():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = project["tool"]["setuptools"]["script-files"]
    assert sorted(scripts) == sorted(f"scripts/{name}" for name in (*COMMANDS, "srt-launcher-boot"))
    assert "scripts" not in project["project"], "an entry point would start the interpreter without -I -S"


def test_the_start_knows_each_dependency_by_a_module_it_installs():
    # srt_launcher/_site.py adds the interpreter's site-packages only when one
    # of these is not beside the package: the list must follow pyproject.toml.
    import importlib.metadata
    import re

    from srt_launcher import _site

    names = set(_site.DEPENDENCIES)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [re.match(r"[A-Za-z0-9_.-]+", spec).group(0) for spec in project["dependencies"]]
    for requirement in requirements:
        top = {str(path).split("/")[0] for path in importlib.metadata.distribution(requirement).files or []}
        assert len(top & names) == 1, (requirement, sorted(top))
    assert len(names) == len(requirements)


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A bin directory as a wheel install leaves it, its interpreter a stand-in."""
    bindir = tmp_path / "prefix" / "bin"
    bindir.mkdir(parents=True)
    for name in COMMANDS:
        shutil.copy(SCRIPTS / name, bindir / name)
    interpreter = tmp_path / "interpreter"
    interpreter.write_text(ECHO_ARGS)
    interpreter.chmod(0o755)
    (bindir / "srt-launcher-boot").write_text(f"#!{interpreter}\n# rest of the boot\n")
    (bindir / "srt-launcher-boot").chmod(0o755)
    return bindir


def _exec_args(argv: list[str]) -> list[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert (result.returncode, result.stderr) == (0, "")
    return result.stdout.splitlines()


@pytest.mark.parametrize("name", COMMANDS)
def test_the_wrapper_runs_the_boot_isolated_with_the_invoked_name(installed, name):
    command = installed / name
    args = _exec_args([str(command), "run", "two words", "", "-X"])
    boot = installed / "srt-launcher-boot"
    assert args == ["-I", "-S", "-X", f"srt-launcher-argv0={command}", str(boot), "run", "two words", "", "-X"]


def test_through_a_symlink_elsewhere_the_boot_is_the_real_one(installed, tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    (links / "bwrap").symlink_to(installed / "srt-bwrap")
    args = _exec_args([str(links / "bwrap"), "--version"])
    assert args == ["-I", "-S", "-X", f"srt-launcher-argv0={links / 'bwrap'}", str(installed / "srt-launcher-boot"), "--version"]


def test_a_relative_interpreter_is_refused(installed):
    (installed / "srt-launcher-boot").write_text("#!python\n")
    result = subprocess.run([str(installed / "srt-socat"), "-V"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 125
    assert result.stderr == f"srt-launcher: start: {installed}/srt-launcher-boot: no absolute interpreter on its #! line\n"


def _direct_start(bindir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPTS / "direct-start"), str(bindir)], capture_output=True, text=True, timeout=30)


def test_direct_start_links_every_command_to_the_boot_with_dash_IS(installed):
    interpreter = (installed / "srt-launcher-boot").read_text().splitlines()[0]
    for _ in range(2):  # running it again changes nothing
        result = _direct_start(installed)
        assert (result.returncode, result.stderr) == (0, "")
        boot = installed / "srt-launcher-boot"
        assert boot.read_text() == f"{interpreter} -IS\n# rest of the boot\n"
        for name in COMMANDS:
            assert (installed / name).stat().st_ino == boot.stat().st_ino, name


def test_a_wrapper_still_works_after_direct_start_changed_the_boot(installed, tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    shutil.copy(installed / "srt-launcher", kept / "srt-launcher")
    assert _direct_start(installed).returncode == 0
    shutil.copy(installed / "srt-launcher-boot", kept / "srt-launcher-boot")
    args = _exec_args([str(kept / "srt-launcher"), "x"])
    assert args[:2] == ["-I", "-S"] and args[-1] == "x"


@pytest.mark.parametrize(
    ("first_line", "reason"),
    [
        ("#!/opt/my python/bin/python3", "the interpreter path has a blank: a #! line cannot carry it and -IS"),
        ("#!/" + "p" * 249, "the #! line would be too long for the kernel with -IS"),
        ("#!python", "no absolute interpreter on its #! line (not installed by a wheel installer?)"),
    ],
)
def test_direct_start_refuses_a_line_it_cannot_extend_and_changes_nothing(installed, first_line, reason):
    boot = installed / "srt-launcher-boot"
    boot.write_text(first_line + "\n")
    before = {path.name: path.read_bytes() for path in installed.iterdir()}
    result = _direct_start(installed)
    assert result.returncode == 1
    assert result.stderr == f"direct-start: {boot}: {reason}\n"
    assert {path.name: path.read_bytes() for path in installed.iterdir()} == before
    assert all(path.stat().st_nlink == 1 for path in installed.iterdir())


@pytest.mark.parametrize(
    ("config", "includes"),
    [
        (b"home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n", False),
        (b"home = /usr/bin\ninclude-system-site-packages = true\nversion = 3.11.2\n", True),
        (b"Include-System-Site-Packages=TRUE", True),  # site.venv() strips and lowercases
        (b"include-system-site-packages = true\ninclude-system-site-packages = false\n", False),  # the last one
        (b"home = /usr/bin\n", True),  # absent: site.venv() includes them
        (b"include-system-site-packages = yes\n", False),  # only "true" is true
        (b"include-system-site-packages\n", True),  # no "=": not a setting, so absent
    ],
)
def test_pyvenv_cfg_is_read_as_site_reads_it(config, includes):
    from srt_launcher import _site

    assert _site._includes_system_site_packages(config) is includes
