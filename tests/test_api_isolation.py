"""The launcher process runs isolated from the caller's Python environment (SPEC §9, §11),
and ``import srt_launcher`` costs the launch path nothing (SPEC §4).

The launcher runs outside every sandbox; a sandboxed program may write the
caller's home, so a PYTHONPATH, a user site-packages (usercustomize, .pth
files) or the working directory must not choose code that runs in it. The
planted code is checked to run in a plain interpreter with the same
environment (the control), so the test cannot pass for a planting mistake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import UNPRIVILEGED_GID, UNPRIVILEGED_UID, Launcher

CALLER = r'''
import json, sys
from srt_launcher import Sandbox, RoBind, Proc, Dev
from srt_launcher.api import client
result = Sandbox(mounts=[RoBind("/"), Proc(), Dev()]).run(["/bin/echo", "ran"])
print(json.dumps({"stdout": result.stdout.decode(), "launcher": client.launcher_pid()}))
'''


@pytest.fixture
def planted(caller: Launcher):  # type: ignore[no-untyped-def]
    """A directory of code that records its name in ``ran`` if it ever runs."""
    root = Path(tempfile.mkdtemp(prefix="srt-api-planted-", dir="/tmp"))
    marker = root / "ran"

    def code(what: str) -> str:
        return f"open({str(marker)!r}, 'a').write({what!r} + '\\n')\n"

    path = root / "path"
    (path / "srt_launcher" / "api").mkdir(parents=True)
    (path / "sitecustomize.py").write_text(code("sitecustomize.py on PYTHONPATH"))
    (path / "srt_launcher" / "__init__.py").write_text(code("a package srt_launcher on PYTHONPATH"))
    (path / "srt_launcher" / "api" / "__init__.py").write_text("")
    (path / "srt_launcher" / "api" / "launcher.py").write_text(code("srt_launcher.api.launcher on PYTHONPATH"))
    (path / "_prctl.py").write_text(code("_prctl on PYTHONPATH"))
    site = root / "userbase" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    site.mkdir(parents=True)
    (site / "usercustomize.py").write_text(code("usercustomize.py in the user site-packages"))
    (site / "planted.pth").write_text("import os; " + code("a .pth file in the user site-packages"))
    cwd = root / "cwd"
    (cwd / "srt_launcher").mkdir(parents=True)
    (cwd / "site.py").write_text(code("site.py in the working directory"))
    (cwd / "srt_launcher" / "__init__.py").write_text(code("a package srt_launcher in the working directory"))
    for item in [root, *root.rglob("*")]:
        os.chmod(item, 0o777 if item.is_dir() else 0o666)
        if caller.unprivileged:
            os.chown(item, UNPRIVILEGED_UID, UNPRIVILEGED_GID)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(PYTHONPATH=str(path), PYTHONUSERBASE=str(root / "userbase"), PYTHONSTARTUP=str(path / "sitecustomize.py"))
    yield {"env": env, "cwd": str(cwd), "marker": marker}
    shutil.rmtree(root, ignore_errors=True)


def test_planted_code_never_runs_in_the_launcher_process(caller, planted):
    # Control: a plain interpreter with this environment runs the planted code.
    control = subprocess.run([caller.python, "-c", "pass"], env=planted["env"], timeout=60, **caller.process_kwargs(cwd=planted["cwd"]))
    assert control.returncode == 0
    assert "sitecustomize.py on PYTHONPATH" in planted["marker"].read_text()
    planted["marker"].unlink()
    # The service runs isolated itself (-I) but keeps the variables in its
    # environment, where an unisolated launcher would pick them up.
    result = subprocess.run(
        [caller.python, "-I", "-c", CALLER], env=planted["env"], capture_output=True, text=True, timeout=60,
        **caller.process_kwargs(cwd=planted["cwd"]),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stdout"] == "ran\n"
    assert not planted["marker"].exists(), planted["marker"].read_text()


def test_importing_the_package_loads_no_api_module(root_argv):
    python = str(Path(root_argv[0]).parent / "python")
    code = "import srt_launcher, sys; print(sorted(m for m in sys.modules if m.startswith('srt_launcher')))"
    result = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout.replace("'", '"')) == ["srt_launcher"]
    lazy = subprocess.run([python, "-I", "-c", "import srt_launcher; print(srt_launcher.Sandbox.__module__, sorted(srt_launcher.__all__)[:3])"],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert lazy.stdout.split()[0] == "srt_launcher.api.sandbox"


def test_the_run_path_and_the_launcher_process_import_nothing_heavy(root_argv):
    """`run` imports no api module; the launcher process no click, pyroute2, pyseccomp (SPEC §4)."""
    python = str(Path(root_argv[0]).parent / "python")
    run = subprocess.run([python, "-I", "-S", "-X", "importtime", "-X", "srt-launcher-no-image", root_argv[0], "run", "--ro-bind", "/", "/", "--", "/bin/true"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    run_modules = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "srt_launcher.launch.stub" in run_modules
    assert not {m for m in run_modules if m.startswith("srt_launcher.api")}
    launcher = subprocess.run([python, "-I", "-S", "-X", "importtime", "-c", _LAUNCHER_IMPORTS], capture_output=True, text=True, timeout=60)
    assert launcher.returncode == 0, launcher.stderr
    modules = {line.split("|")[-1].strip() for line in launcher.stderr.splitlines() if line.startswith("import time:")}
    assert "srt_launcher.api.launcher" in modules and "srt_launcher.launch.pid1" in modules
    heavy = {m for m in modules if m.split(".")[0] in ("click", "pyroute2", "pyseccomp", "json", "dataclasses", "asyncio")}
    assert heavy == set()


# What the launcher process's bootstrap does (api/client.py), then its imports.
_LAUNCHER_IMPORTS = r'''
import os, sys
prefix = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
sys.path.append(os.path.join(prefix, "lib", "python%d.%d" % sys.version_info[:2], "site-packages"))
from srt_launcher._site import add_interpreter_site_packages
add_interpreter_site_packages()
import srt_launcher.api.launcher
'''
