"""End to end, the way sandbox-runtime wires it (SPEC §0, §3): real curl, git,
ssh, tinyproxy and sshd; nothing replaced by a stand-in.

::

    sandbox (no network)                       host
    curl / ssh ── 127.0.0.1:3128 ── run --relay ══ SOCK ── srt-launcher relay ── tinyproxy ── HTTP server / sshd
                  (ssh's ProxyCommand is `srt-launcher connect %h %p --proxy 127.0.0.1:3128`)

Servers the unprivileged caller must reach live under /tmp directories made
world-readable; pytest's tmp_path is 0700 root.
"""

import http.server
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

import peers
from conftest import SYSTEM

PROXY_PORT = "3128"


@pytest.fixture
def world_readable_dir():  # type: ignore[no-untyped-def]
    made: list[Path] = []

    def make(prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        path.chmod(0o755)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tinyproxy():  # type: ignore[no-untyped-def]
    """Starts a tinyproxy allowing CONNECT to the given ports (``.port``, ``.log()``)."""
    started: list[peers.Tinyproxy] = []

    def start(*connect_ports: int) -> peers.Tinyproxy:
        started.append(peers.Tinyproxy(connect_ports, timeout=60))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def host_relay(launcher, shared_dir):  # type: ignore[no-untyped-def]
    """``srt-launcher relay SOCK 127.0.0.1:PORT`` as the launcher's caller; yields SOCK once ready."""
    started: list[subprocess.Popen] = []

    def start(port: int) -> Path:
        sock = shared_dir / "proxy.sock"
        process = subprocess.Popen(
            launcher.argv("relay", "--ready-fd", "1", str(sock), f"127.0.0.1:{port}"),
            **launcher.process_kwargs(stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        )
        started.append(process)
        ready = process.stdout.read(1)
        assert ready, f"the host relay did not become ready: {process.stderr.read()!r}"
        return sock

    yield start
    for process in started:
        peers.stop(process)


@pytest.fixture
def http_site(world_readable_dir):  # type: ignore[no-untyped-def]
    """A page served by python's http.server on a free host loopback port: (url, content)."""
    root = world_readable_dir("srt-e2e-site-")
    content = f"served from the host, {os.urandom(8).hex()}\n"
    (root / "page.txt").write_text(content)
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/page.txt", content
    server.shutdown()
    server.server_close()


def test_curl_through_relays_and_tinyproxy(launcher, tinyproxy, host_relay, http_site) -> None:
    url, content = http_site
    proxy_server = tinyproxy()
    sock = host_relay(proxy_server.port)
    proxy = f"http://127.0.0.1:{PROXY_PORT}"
    # curl reads only the lower-case http_proxy (upper case is ignored since httpoxy);
    # sandbox-runtime sets both.
    env = ("--setenv", "HTTP_PROXY", proxy, "--setenv", "http_proxy", proxy, "--setenv", "no_proxy", "", "--setenv", "NO_PROXY", "")
    script = f"curl -sS --fail --max-time 20 {shlex.quote(url)}; echo \"rc=$?\"; curl -sS --max-time 5 --noproxy '*' {shlex.quote(url)} >/dev/null 2>&1; echo \"direct=$?\""
    result = launcher.run(
        "--unshare-net", "--relay", PROXY_PORT, str(sock), *SYSTEM, *env, "--", "/bin/sh", "-c", script, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # The page came through the proxy; the same URL without the proxy is unreachable (curl 7: cannot connect).
    assert result.stdout == content + "rc=0\ndirect=7\n", result.stderr
    assert f"GET {url} HTTP/1.1" in proxy_server.log()


# ---------------------------------------------------------------- git over ssh


@pytest.fixture
def privilege_separation_dir():  # type: ignore[no-untyped-def]
    # Debian's sshd refuses to start without it; the service unit normally creates it.
    path = Path("/run/sshd")
    created = not path.exists()
    if created:
        path.mkdir(mode=0o755)
    yield
    if created:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ssh_keys(launcher, world_readable_dir):  # type: ignore[no-untyped-def]
    """A client key pair the sandboxed caller can read (private key 0600, its own)."""
    keys = world_readable_dir("srt-e2e-keys-")
    key = keys / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "srt-e2e", "-f", str(key)], check=True)
    os.chown(key, launcher.uid, launcher.gid)
    key.chmod(0o600)
    return key


@pytest.fixture
def git_repo(world_readable_dir):  # type: ignore[no-untyped-def]
    """A bare repository with one commit: (path, file name, file content)."""
    base = world_readable_dir("srt-e2e-git-")
    work, bare = base / "work", base / "repo.git"
    content = f"cloned through the proxy, {os.urandom(8).hex()}\n"
    git = ["git", "-c", "user.name=srt", "-c", "user.email=srt@example.invalid", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    (work / "README.txt").write_text(content)
    subprocess.run([*git, "-C", str(work), "add", "README.txt"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "first"], check=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare, "README.txt", content


@pytest.fixture
def sshd(ssh_keys, world_readable_dir, privilege_separation_dir):  # type: ignore[no-untyped-def]
    """A real sshd on a free loopback port, root logging in with the client key only; yields the port."""
    conf_dir = world_readable_dir("srt-e2e-sshd-")
    host_key = conf_dir / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    authorized = conf_dir / "authorized_keys"
    authorized.write_text(ssh_keys.with_name("id_ed25519.pub").read_text())
    authorized.chmod(0o600)
    port = peers.free_port()
    conf = conf_dir / "sshd_config"
    conf.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                "StrictModes no",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PidFile none",
            ]
        )
        + "\n"
    )
    with open(conf_dir / "sshd.log", "w") as log:  # a file: a pipe nobody reads would fill and stall sshd
        process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        peers.wait_listening(port, process, "sshd")
        yield port
    finally:
        peers.stop(process)


def test_git_clone_over_ssh_through_connect_relays_and_tinyproxy(
    launcher, shared_dir, tinyproxy, host_relay, sshd, ssh_keys, git_repo
) -> None:
    bare, name, content = git_repo
    proxy_server = tinyproxy(sshd)
    sock = host_relay(proxy_server.port)
    connect = shlex.join([*launcher.argv_prefix, "connect"]) + f" %h %p --proxy 127.0.0.1:{PROXY_PORT}"
    ssh = shlex.join(
        [
            "ssh", "-i", str(ssh_keys), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no", "-o", f"ProxyCommand={connect}",
        ]
    )
    clone = shared_dir / "clone"
    result = launcher.run(
        "--unshare-net", "--relay", PROXY_PORT, str(sock), *SYSTEM, "--bind", str(shared_dir), str(shared_dir),
        # git reads $HOME/.gitconfig and dies on EACCES: the caller's HOME may be /root.
        "--setenv", "HOME", str(shared_dir), "--setenv", "GIT_SSH_COMMAND", ssh,
        "--", "git", "clone", "-q", f"ssh://root@127.0.0.1:{sshd}{bare}", str(clone),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (clone / name).read_text() == content
    assert f"CONNECT 127.0.0.1:{sshd} HTTP/1.1" in proxy_server.log()
