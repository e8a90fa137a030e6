"""PID 1's end record to the stub carries the launch's exit status, so the
stub can write SPEC §6's end record as soon as it arrives (launch/stub.py)."""

import pytest

from srt_launcher.launch import report, status


@pytest.mark.parametrize("cause,signal,limit,code", [("exited", 0, "", 3), ("signaled", 9, "cpu", 137), ("timeout", 0, "", 124)])
def test_end_round_trip_with_the_exit_status(cause, signal, limit, code):
    end = report.End(cause, signal, limit, 1.5, 0.25, 0.125, 4096, code)
    back = report.End.decode(end.encode())
    assert (back.cause, back.signal, back.limit, back.code, back.max_rss_kb) == (cause, signal, limit, code, 4096)
    fields = status.end_fields(back.code, back, None)
    assert fields["exit-code"] == code and fields["cause"] == cause


@pytest.mark.parametrize("data", [b"", b"exited 0 - 1.0 0.1 0.1 10", b"exited x - 1.0 0.1 0.1 10 0"])
def test_a_malformed_end_is_refused(data):
    assert report.End.decode(data) is None
