"""SPEC §2.5: with --unshare-net the sandbox has only ``lo``, UP, with
127.0.0.1/8 and ::1, and nothing of the host's network is reachable.

The namespace is inspected from the host with pyroute2 (netlink, not the
sandbox's own view), by a helper that setns()es into the stub's network
namespace: the stub unshares NET itself, so /proc/<stub>/ns/net is the
sandbox's, which the test checks against what the workload reports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import SYSTEM

_INSPECT = textwrap.dedent(
    """
    import ctypes, json, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(sys.argv[1], os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns")
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        links = {link["index"]: (link.get_attr("IFLA_IFNAME"), link["flags"]) for link in ipr.get_links()}
        addrs = [(links[a["index"]][0], a["family"], a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr()]
    print(json.dumps({"links": list(links.values()), "addrs": addrs}))
    """
)

IFF_UP = 0x1


def _inspect_netns(ns_path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _INSPECT, ns_path], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_only_loopback_up_with_both_addresses(launcher) -> None:
    proc = launcher.popen(
        "--unshare-net",
        *SYSTEM,
        "--",
        "/bin/sh",
        "-c",
        "readlink /proc/self/ns/net; cat >/dev/null",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        workload_ns = proc.stdout.readline().strip()
        ns_path = f"/proc/{proc.pid}/ns/net"
        assert workload_ns == os.readlink(ns_path), "the workload is not in the stub's network namespace"
        assert workload_ns != os.readlink("/proc/self/ns/net"), "the workload shares the host's network namespace"
        seen = _inspect_netns(ns_path)
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    assert [name for name, _ in seen["links"]] == ["lo"]
    assert seen["links"][0][1] & IFF_UP
    assert sorted((family, address, prefix) for _, family, address, prefix in seen["addrs"]) == sorted(
        [(socket.AF_INET, "127.0.0.1", 8), (socket.AF_INET6, "::1", 128)]
    )


_PROBE = textwrap.dedent(
    """
    import errno, socket, sys
    def attempt(host, port):
        try:
            socket.create_connection((host, port), timeout=5).close()
            return "connected"
        except OSError as err:
            return errno.errorcode.get(err.errno, str(err))
    print(attempt("127.0.0.1", int(sys.argv[1])), attempt("192.0.2.1", 80))
    """
)


def test_host_loopback_service_is_unreachable(launcher) -> None:
    with socket.socket() as host_service:
        host_service.bind(("127.0.0.1", 0))
        host_service.listen()
        host_service.setblocking(False)
        port = host_service.getsockname()[1]
        result = launcher.run("--unshare-net", *SYSTEM, "--", "/usr/bin/python3", "-c", _PROBE, str(port))
        assert result.returncode == 0, result.stderr
        # Nothing listens on the sandbox's own loopback; no route leads anywhere else.
        assert result.stdout.split() == ["ECONNREFUSED", "ENETUNREACH"]
        with pytest.raises(BlockingIOError):
            host_service.accept()


def test_without_unshare_net_the_host_network_is_shared(launcher) -> None:
    result = launcher.sh("readlink /proc/self/ns/net")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == os.readlink("/proc/self/ns/net")


def test_relay_without_unshare_net_is_a_usage_error(launcher, shared_dir) -> None:
    marker = shared_dir / "ran"
    result = launcher.run(
        "--relay", "3128", str(shared_dir / "proxy.sock"), *SYSTEM, "--bind", str(shared_dir), str(shared_dir),
        "--", "/bin/sh", "-c", f"touch {marker}",
    )
    assert result.returncode == 2
    assert "--relay needs --unshare-net" in result.stderr
    assert not marker.exists()


def test_network_and_relay_modules_are_cheap_to_import() -> None:
    """SPEC §4: the launch path must not pull in pyroute2, click or the socket module."""
    script = (
        "import sys; from srt_launcher.commands import run; from srt_launcher.launch import network, stub; "
        "from srt_launcher.relay import inside; print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split())
    assert not loaded & {"socket", "pyroute2", "click", "pyseccomp", "selectors", "threading"}
