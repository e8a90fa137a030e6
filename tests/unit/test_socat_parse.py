"""socat's command line as srt-socat reads it (srt_launcher/commands/socat.py): pure parsing, no sockets."""

from __future__ import annotations

import pytest

from srt_launcher.commands import socat
from srt_launcher.errors import LauncherError


def parse(*argv: str) -> socat.Command:
    return socat.parse(list(argv))


def refused(*argv: str) -> str:
    with pytest.raises(LauncherError) as caught:
        socat.parse(list(argv))
    assert caught.value.exit_code == 1
    return caught.value.step


def test_sandbox_runtime_host_bridge_line() -> None:
    command = parse("UNIX-LISTEN:/tmp/s.sock,fork,reuseaddr", "TCP:localhost:3128,keepalive,keepidle=10,keepintvl=5,keepcnt=3")
    first, second = command.first, command.second
    assert (first.kind, first.params, first.options) == ("UNIX-LISTEN", ["/tmp/s.sock"], {"fork": True, "reuseaddr": True})
    assert (second.kind, second.params) == ("TCP", ["localhost", "3128"])
    assert second.options == {"keepalive": True, "keepidle": 10, "keepintvl": 5, "keepcnt": 3}
    assert command.linger is None


def test_sandbox_runtime_relay_line() -> None:
    command = parse("TCP6-LISTEN:3128,ipv6only=0,fork,reuseaddr,backlog=4096", "UNIX-CONNECT:/tmp/s.sock")
    assert command.first.options == {"ipv6only": False, "fork": True, "reuseaddr": True, "backlog": 4096}
    assert (command.second.kind, command.second.params) == ("UNIX-CONNECT", ["/tmp/s.sock"])


def test_sandbox_runtime_proxy_command_line() -> None:
    command = parse("-", "PROXY:localhost:github.com:22,proxyport=3128,proxyauth=user:pa:ss")
    assert command.first.stdio
    assert command.second.params == ["localhost", "github.com", "22"]
    assert command.second.options == {"proxyport": 3128, "proxyauth": "user:pa:ss"}


def test_flags_keywords_and_ipv6_literals() -> None:
    command = parse("-d", "-dd", "-t", "2.5", "stdio", "tcp6:[::1]:80,bind=[::1]:0")
    assert command.linger == 2.5
    assert command.first.kind == "STDIO"
    assert (command.second.kind, command.second.params, command.second.options) == ("TCP6", ["[::1]", "80"], {"bind": "[::1]:0"})
    assert parse("-t0", "-", "TCP4:127.0.0.1:1").linger == 0.0
    assert parse("--", "-", "UNIX-CONNECT:/x").first.stdio


@pytest.mark.parametrize(
    "argv, step",
    [
        (("-", "FOO:bar"), "address FOO not supported by srt-socat"),
        (("-", "UNIX-CONNECT:/x,mode=600"), "option mode not supported by srt-socat"),
        (("-", "UNIX-CONNECT:/x,nodelay"), "option nodelay on UNIX-CONNECT not supported by srt-socat"),
        (("-", "TCP:h:1,ipv6only=1"), "option ipv6only on TCP not supported by srt-socat"),
        (("-u", "-", "-"), "option -u not supported by srt-socat"),
        (("UNIX-LISTEN:/x,fork", "-"), "this use of fork not supported by srt-socat"),
        (("UNIX-CONNECT:/x", "UNIX-LISTEN:/y,fork"), "this use of fork not supported by srt-socat"),
        (("UNIX-LISTEN:/x,fork", "TCP-LISTEN:1"), "this use of fork not supported by srt-socat"),
        (("-", "STDIO"), "STDIO on both sides not supported by srt-socat"),
    ],
)
def test_outside_the_subset(argv, step) -> None:
    assert refused(*argv).startswith(step)
    assert "(supported: " in refused(*argv)


@pytest.mark.parametrize(
    "argv",
    [
        ("-",),
        ("-", "-", "-"),
        ("-", "TCP:host"),
        ("-", "TCP:host:0"),
        ("-", "TCP:host:65536"),
        ("-", "TCP:host:http"),
        ("-", "TCP-LISTEN:"),
        ("-", "UNIX-CONNECT:"),
        ("-", "PROXY:p:h"),
        ("-", "PROXY:p:h\r\nX: 1:22"),
        ("-", "PROXY:p:h:22,proxyport=0"),
        ("-", "PROXY:p:h:22,proxyauth=nocolon"),
        ("-", "TCP:h:1,keepidle=x"),
        ("-", "TCP:h:1,keepidle"),
        ("-", "TCP:h:1,nodelay=yes"),
        ("-", "TCP6:h:1,ipv6only=2"),
        ("-t", "-1", "-", "TCP:h:1"),
        ("-t", "nan", "-", "TCP:h:1"),
        ("-t",),
    ],
)
def test_bad_values(argv) -> None:
    refused(*argv)


def test_boolean_options_take_0_or_1() -> None:
    assert parse("UNIX-LISTEN:/x,fork=0", "TCP:h:1").first.options == {"fork": False}
    assert not parse("UNIX-LISTEN:/x,fork=0", "TCP:h:1").first.flag("fork")
