#!/usr/bin/env python3
"""Probe an untrusted media upload with ffprobe, confined by srt-launcher.

    python examples/media_probe.py UPLOAD [UPLOAD...]

Prints one JSON verdict per file and exits 0 when every file is a usable
video, 1 otherwise::

    {"file": "/srv/up/a.mp4", "verdict": "ok", "video": {"codec": "h264", "width": 320, ...}}
    {"file": "/srv/up/b.mp4", "verdict": "error", "gate": "ffprobe", "reason": "moov atom not found"}

ffprobe parses hostile bytes with a large C code base, so it runs in the
minimal sandbox for its binary (``Sandbox.for_executable``: ffprobe, its
libraries and loader, /dev, /proc, a private /tmp, and the upload, read-only;
nothing else of the host), with no network, resource limits, a wall-clock
timeout and a cap on its output. A verdict is given only when every gate
passed, in this order, before a byte of its output is parsed:

    launch   the sandbox could not be made, or ffprobe could not be executed
    timeout  still running at the deadline (every process killed)
    output   more output than MAX_OUTPUT (killed; the output is cut, so not parsed)
    limit    killed by a resource limit (CPU time, file size), or by another signal
    ffprobe  ffprobe exited non-zero: it could not read the file
    parse    the output is not the JSON ffprobe writes
    video    no video stream in it
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import srt_launcher
from srt_launcher import Cause, Limits, Result, Sandbox

FFPROBE = "/usr/bin/ffprobe"
TIMEOUT = 30.0  # seconds of wall clock
MAX_OUTPUT = 1 << 20  # bytes of JSON; a real probe is a few kilobytes
LIMITS = Limits(
    cpu_seconds=10,
    address_space="2G",
    file_size=0,  # ffprobe writes no file
    core=0,
    open_files=64,
)


@dataclass
class Verdict:
    file: str
    ok: bool
    gate: str | None = None  # the gate that stopped it (None: all passed)
    reason: str = ""
    video: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        if self.ok:
            return {"file": self.file, "verdict": "ok", "video": self.video}
        return {"file": self.file, "verdict": "error", "gate": self.gate, "reason": self.reason}


def probe_media(path: str, *, timeout: float = TIMEOUT, max_output: int = MAX_OUTPUT, limits: Limits = LIMITS) -> Verdict:
    """Run ffprobe on ``path`` in its sandbox; the verdict."""
    path = os.path.abspath(path)
    try:
        sandbox = Sandbox.for_executable(FFPROBE, inputs=[path], limits=limits, timeout=timeout, seccomp="harden")
    except (OSError, ValueError) as err:  # ffprobe missing or unreadable: no sandbox to make
        return Verdict(path, False, "launch", str(err))
    # "file:" keeps a name with a colon from being read as another protocol.
    argv = [FFPROBE, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", "file:" + path]
    return verdict(path, sandbox.run(argv, max_output=max_output))


def verdict(path: str, result: Result) -> Verdict:
    """The gates, in order; the output is parsed only once every one has passed."""
    if result.cause in (Cause.SETUP_FAILED, Cause.EXEC_FAILED):
        return Verdict(path, False, "launch", str(result.error))
    if result.cause is Cause.TIMEOUT:
        return Verdict(path, False, "timeout", result.describe())
    if result.cause is Cause.OUTPUT_LIMIT:
        return Verdict(path, False, "output", result.describe())
    if result.cause is Cause.SIGNALED:
        return Verdict(path, False, "limit", result.describe())
    if result.exit_code != 0:
        return Verdict(path, False, "ffprobe", _last_line(result.stderr) or result.describe())
    try:
        probe = json.loads(result.stdout)
    except ValueError as err:
        return Verdict(path, False, "parse", f"ffprobe's output is not JSON: {err}")
    return _video(path, probe)


def _video(path: str, probe: object) -> Verdict:
    streams = probe.get("streams") if isinstance(probe, dict) else None
    if not isinstance(streams, list):
        return Verdict(path, False, "parse", "no stream list in ffprobe's output")
    for stream in streams:
        if isinstance(stream, dict) and stream.get("codec_type") == "video":
            fmt = probe.get("format") if isinstance(probe.get("format"), dict) else {}  # type: ignore[union-attr]
            info = {
                "codec": stream.get("codec_name"),
                "width": stream.get("width"),
                "height": stream.get("height"),
                "duration": _number(fmt.get("duration") or stream.get("duration")),
                "format": fmt.get("format_name"),
            }
            if not isinstance(info["width"], int) or not isinstance(info["height"], int):
                return Verdict(path, False, "video", "a video stream without dimensions")
            return Verdict(path, True, video=info)
    return Verdict(path, False, "video", "no video stream")


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _last_line(data: bytes) -> str:
    """ffprobe's last message, as printable text of bounded length (it is attacker-influenced)."""
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return "".join(char if char.isprintable() else "?" for char in text)[:300]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    if not srt_launcher.probe():
        print(json.dumps({"verdict": "error", "gate": "launch", "reason": "this host cannot make the sandbox (srt-launcher check)"}))
        return 1
    verdicts = [probe_media(path) for path in argv]
    for item in verdicts:
        print(json.dumps(item.as_dict()), flush=True)
    return 0 if all(item.ok for item in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
