"""The deferred command's wire format (sandbox.encode_command / decode_command)."""

import pytest

from srt_launcher import sandbox


@pytest.mark.parametrize(
    "command,timeout",
    [(["/bin/true"], None), (["/bin/echo", "", "a b", "é", "\udcff"], 2.5), ([""], 1e-3)],
)
def test_round_trip(command, timeout):
    assert sandbox.decode_command(sandbox.encode_command(command, timeout)) == (command, timeout)


@pytest.mark.parametrize("data", [b"", b"1.0", b"x\0/bin/true", b"-1\0/bin/true", b"0\0/bin/true", b"inf\0/bin/true", b"nan\0/bin/true"])
def test_malformed_is_refused(data):
    assert sandbox.decode_command(data) is None
