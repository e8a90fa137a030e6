"""Does the installed launcher run isolated from the caller's Python environment? (SPEC §11)

The launcher runs outside the sandbox, and a sandboxed command may write the
caller's home: a ``sitecustomize.py`` on a PYTHONPATH it sets, a ``.pth``
file in the user site-packages, a package named ``srt_launcher`` ahead of
the real one would all run code there. The probe plants exactly those, runs
the installed command for real (``srt-launcher run`` with nothing after it,
a usage error that imports nothing heavy) and looks whether any of them ran.
It tests the effect, not a mechanism: whatever the install does (``-I`` on
the #! line, a wrapper), planted code must not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from srt_launcher.check.probes import Outcome

NAME = "launcher-isolation"
_TIMEOUT = 30


def installed_launcher() -> str | None:
    """The command this check was started through, else the one beside the interpreter, else on PATH."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and os.path.basename(argv0) not in ("__main__.py", "-c") and os.path.isfile(argv0) and os.access(argv0, os.X_OK):
        return os.path.abspath(argv0)
    beside = os.path.join(os.path.dirname(sys.executable), "srt-launcher")
    if os.path.isfile(beside):
        return beside
    return shutil.which("srt-launcher")


def _plant(directory: str, marker: str) -> dict[str, str]:
    """Plant code that records its own name in ``marker`` when it runs; the environment that points at it."""

    def code(what: str) -> str:
        return f"open({marker!r}, 'a').write({what!r} + '\\n')\n"

    path = os.path.join(directory, "path")
    os.makedirs(os.path.join(path, "srt_launcher"))
    with open(os.path.join(path, "sitecustomize.py"), "w") as handle:
        handle.write(code("sitecustomize.py on PYTHONPATH"))
    with open(os.path.join(path, "srt_launcher", "__init__.py"), "w") as handle:
        handle.write(code("a package srt_launcher on PYTHONPATH"))
    userbase = os.path.join(directory, "userbase")
    site = os.path.join(userbase, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    os.makedirs(site)
    with open(os.path.join(site, "usercustomize.py"), "w") as handle:
        handle.write(code("usercustomize.py in the user site-packages"))
    with open(os.path.join(site, "srt-check.pth"), "w") as handle:
        handle.write("import os; " + code("a .pth file in the user site-packages"))
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(PYTHONPATH=path, PYTHONUSERBASE=userbase)
    return env


def _shebang(script: str) -> str:
    try:
        with open(script, "rb") as handle:
            return handle.readline(512).decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return "?"


def probe(script: str | None = None) -> Outcome:
    script = script or installed_launcher()
    if script is None:
        return Outcome(NAME, "skipped", "no installed srt-launcher command found: run check through the installed command")
    try:
        directory = tempfile.mkdtemp(prefix="srt-launcher-check-")
    except OSError as err:
        return Outcome(NAME, "skipped", f"no temporary directory to plant code in ({tempfile.gettempdir()}: {err.strerror})")
    try:
        marker = os.path.join(directory, "ran")
        env = _plant(directory, marker)
        try:
            result = subprocess.run(
                [script, "run"], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=_TIMEOUT, cwd="/"
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return _did_not_start(script, str(err))
        ran = _read_lines(marker)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if ran:
        return _not_isolated(script, ran)
    stderr = result.stderr.decode("utf-8", "replace").strip()
    if result.returncode != 2 or not stderr.startswith("srt-launcher:"):
        return _did_not_start(script, f"exit status {result.returncode}: {stderr.splitlines()[-1] if stderr else 'no message'}")
    return Outcome(NAME, "ok", f"{script}: planted PYTHONPATH and user site-packages code did not run")


def _read_lines(path: str) -> list[str]:
    try:
        with open(path) as handle:
            return [line for line in handle.read().splitlines() if line]
    except FileNotFoundError:
        return []


def _not_isolated(script: str, ran: list[str]) -> Outcome:
    shebang = _shebang(script)
    cause = (
        f"the installed launcher {script} ran code planted in the caller's environment ({'; '.join(dict.fromkeys(ran))}): "
        "its interpreter does not run isolated, so a PYTHONPATH or user site-packages that a sandboxed command can "
        f"write chooses code that runs outside the sandbox. Its #! line: `{shebang}`."
    )
    fix = (
        "Reinstall so that the command's interpreter runs with -I (`make setup` writes `#!…/python3 -IS`; "
        "`pip install` rewrites a #! line to the bare interpreter and drops its flags), or make the first line "
        f"of {script} end in ` -IS`."
    )
    return Outcome(NAME, "failed", f"{script} runs code from PYTHONPATH / user site-packages", "run the installed command", None,
                   {"cause": cause, "fix": fix, "ran": ran, "shebang": shebang})


def _did_not_start(script: str, why: str) -> Outcome:
    cause = (
        f"the installed launcher {script} did not run as expected (`{os.path.basename(script)} run` must be a "
        f"usage error): {why}"
    )
    fix = "Reinstall the launcher (`make setup`), and check that its #! interpreter exists and is executable by this user."
    facts = {"cause": cause, "fix": fix}
    return Outcome(NAME, "failed", f"{script} did not start: {why}", "run the installed command", None, facts)
