"""The real consumer, end to end (SPEC §7, issue 12): the published sandbox-runtime on srt-bwrap and srt-socat.

``@anthropic-ai/sandbox-runtime@0.0.83`` from the npm registry, its `srt` CLI,
with ``bwrapPath``/``socatPath`` in its settings pointing at our front ends —
and Debian's bubblewrap and socat absent: each run happens in a private
mount namespace where /usr/bin/bwrap and /usr/bin/socat are /dev/null (not
executable), and PATH leads `socat` (ssh's ProxyCommand inside the sandbox
runs it by name) to srt-socat. Its filesystem rules, its network allow-list
through its own proxy, git over ssh through GIT_SSH_COMMAND, and its probes
of bwrap must all give what they give on bubblewrap and socat.

Run as root and as uid 65534.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import UNPRIVILEGED_GID, UNPRIVILEGED_UID
from test_e2e_proxy import (  # noqa: F401  (fixtures)
    git_repo,
    http_site,
    privilege_separation_dir,
    ssh_keys,
    sshd,
    world_readable_dir,
)

PACKAGE = "@anthropic-ai/sandbox-runtime@0.0.83"
NPM_CACHE = Path("/var/tmp/srt-launcher-test-sandbox-runtime-0.0.83")
TIMEOUT = 180


@pytest.fixture
def launcher(host_launcher):  # type: ignore[no-untyped-def]
    """srt runs on the host as root or as uid 65534 (the fixtures borrowed from
    test_e2e_proxy ask for `launcher`: the same caller)."""
    return host_launcher


@pytest.fixture(scope="session")
def srt_cli() -> Path:
    """The package's CLI, installed once into a world-readable directory (kept between sessions)."""
    cli = NPM_CACHE / "node_modules" / "@anthropic-ai" / "sandbox-runtime" / "dist" / "cli.js"
    if not cli.exists():
        npm = shutil.which("npm")
        assert npm, "npm is missing: make test installs nodejs and npm"
        staging = Path(tempfile.mkdtemp(prefix="srt-npm-", dir="/var/tmp"))
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(staging), PACKAGE],
            capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, f"npm install {PACKAGE} failed: {result.stderr}"
        shutil.rmtree(NPM_CACHE, ignore_errors=True)
        staging.rename(NPM_CACHE)
    subprocess.run(["chmod", "-R", "a+rX", str(NPM_CACHE)], check=True)
    for binary in ("node", "rg"):
        assert shutil.which(binary), f"{binary} is missing: make test installs it"
    return cli


class Srt:
    """`srt` as one kind of caller runs it, with our front ends and without Debian's tools."""

    def __init__(self, launcher, cli: Path, home: Path) -> None:  # type: ignore[no-untyped-def]
        self.launcher = launcher
        self.cli = cli
        self.home = home
        bin_dir = Path(launcher.argv_prefix[0]).parent
        self.bwrap = str(bin_dir / "srt-bwrap")
        self.socat = str(bin_dir / "srt-socat")
        # `socat` by name inside the sandbox (GIT_SSH_COMMAND's ProxyCommand).
        self.path_dir = home / "bin"
        self.path_dir.mkdir()
        (self.path_dir / "socat").symlink_to(self.socat)
        self.path_dir.chmod(0o755)

    def settings(self, allow_write: list[str], deny_read: list[str], allowed_domains: list[str]) -> Path:
        settings = {
            "network": {"allowedDomains": allowed_domains, "deniedDomains": []},
            "filesystem": {"denyRead": deny_read, "allowWrite": allow_write, "denyWrite": []},
            "bwrapPath": self.bwrap,
            "socatPath": self.socat,
        }
        path = self.home / "settings.json"
        path.write_text(json.dumps(settings))
        path.chmod(0o644)
        return path

    def run(self, settings: Path, command: str, cwd: Path) -> subprocess.CompletedProcess:
        env_path = f"{self.path_dir}:/usr/local/bin:/usr/bin:/bin"
        inner = ["env", "-i", f"PATH={env_path}", f"HOME={self.home}", "node", str(self.cli), "-s", str(settings), "-c", command]
        if self.launcher.unprivileged:
            inner = ["setpriv", f"--reuid={UNPRIVILEGED_UID}", f"--regid={UNPRIVILEGED_GID}", "--clear-groups", *inner]
        # Debian's tools made absent for this run only (a private mount namespace).
        hide = "mount --bind /dev/null /usr/bin/bwrap && mount --bind /dev/null /usr/bin/socat && cd \"$1\" && shift && exec \"$@\""
        argv = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", hide, "sh", str(cwd), *inner]
        return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture
def srt(host_launcher, srt_cli, world_readable_dir):  # type: ignore[no-untyped-def]
    home = world_readable_dir("srt-e2e-home-")
    os.chown(home, host_launcher.uid, host_launcher.gid)
    return Srt(host_launcher, srt_cli, home)


@pytest.fixture
def project(host_launcher, world_readable_dir):  # type: ignore[no-untyped-def]
    """A working directory the caller owns, and a secret file beside it."""
    base = world_readable_dir("srt-e2e-project-")
    work = base / "work"
    work.mkdir()
    secret = base / "secret.txt"
    secret.write_text("the secret\n")
    for path in (work, secret):
        os.chown(path, host_launcher.uid, host_launcher.gid)
    return base


def test_debians_tools_are_really_out_of_reach(srt, project) -> None:
    """Control: in the runs' mount namespace neither bwrap nor socat of Debian's can run."""
    result = srt.run(srt.settings([], [], []), "true", project)
    assert result.returncode == 0, result.stderr
    hide = "mount --bind /dev/null /usr/bin/bwrap && mount --bind /dev/null /usr/bin/socat && /usr/bin/socat -V; /usr/bin/bwrap --version"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", hide], capture_output=True, text=True, timeout=60)
    assert probe.stderr.count("Permission denied") == 2, probe.stderr


def test_filesystem_rules_hold(srt, project) -> None:
    work, secret = project / "work", project / "secret.txt"
    settings = srt.settings([str(work)], [str(secret)], [])
    script = (
        f"echo inside > {work}/written.txt && echo write-ok; "
        f"echo outside > {project}/outside.txt 2>/dev/null && echo outside-ok || echo outside-refused; "
        f"cat {secret} 2>/dev/null || echo read-refused"
    )
    result = srt.run(settings, script, work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["write-ok", "outside-refused", "read-refused"], (result.stdout, result.stderr)
    assert (work / "written.txt").read_text() == "inside\n"
    assert not (project / "outside.txt").exists()


def test_http_through_its_proxy_allowed_and_refused(srt, project, http_site) -> None:
    url, content = http_site
    settings = srt.settings([str(project / "work")], [], ["127.0.0.1"])
    # srt puts loopback in NO_PROXY: unset it so the request goes through its proxy.
    script = (
        f"unset NO_PROXY no_proxy; curl -sS --fail --max-time 30 {shlex.quote(url)}; echo \"allowed=$?\"; "
        "curl -sS --max-time 30 -o /dev/null -w '%{http_code}' http://not-on-the-list.example/ 2>/dev/null; echo \" refused=$?\"; "
        f"curl -sS --max-time 5 --noproxy '*' {shlex.quote(url)} >/dev/null 2>&1; echo \"direct=$?\""
    )
    result = srt.run(settings, script, project / "work")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] + "\n" == content and lines[1] == "allowed=0", (result.stdout, result.stderr)
    assert lines[2].startswith("403 refused="), (result.stdout, result.stderr)
    assert lines[3] == "direct=7"  # no network of its own: only through the proxy


def test_git_clone_over_ssh_through_its_proxy(srt, project, sshd, ssh_keys, git_repo) -> None:
    bare, name, content = git_repo
    # ssh reads ~/.ssh/config from the passwd entry, not $HOME, and srt's
    # GIT_SSH_COMMAND takes no option of ours: an `ssh` first on PATH adds them.
    config = srt.home / "ssh_config"
    config.write_text(
        f"Host 127.0.0.1\n  IdentityFile {ssh_keys}\n  IdentitiesOnly yes\n  BatchMode yes\n"
        "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  LogLevel ERROR\n"
    )
    config.chmod(0o644)
    wrapper = srt.path_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {config} "$@"\n')
    wrapper.chmod(0o755)
    work = project / "work"
    settings = srt.settings([str(work)], [], ["127.0.0.1"])
    result = srt.run(settings, f"git clone -q ssh://root@127.0.0.1:{sshd}{bare} clone && echo cloned", work)
    assert result.returncode == 0 and "cloned" in result.stdout, (result.stdout, result.stderr)
    assert (work / "clone" / name).read_text() == content


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["--unshare-user", "--dev-bind", "/", "/", "true"], ["--help"]],
    ids=["version", "userns-probe", "help"],
)
def test_its_probes_get_bubblewraps_answers(srt, argv) -> None:
    """The three probes srt makes of bwrap: the same status, and output it parses the same way."""
    kwargs = srt.launcher.process_kwargs(capture_output=True, text=True, timeout=60)
    ours = subprocess.run([srt.bwrap, *argv], **kwargs)
    theirs = subprocess.run(["/usr/bin/bwrap", *argv], **kwargs)
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    if argv == ["--version"]:
        assert ours.stdout.startswith("bubblewrap 0.11.1 (srt-launcher ")
    elif argv == ["--help"]:
        assert ours.stdout.startswith("usage: ") and "--disable-userns" in ours.stdout
