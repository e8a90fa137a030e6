"""srt_launcher/oslite.py gives what os.py would, for the strings and files
the launch path meets: compared with os and posixpath themselves."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pytest

from srt_launcher import oslite

PATHS = [
    "", "/", "//", "///", "////x", "//x/y", "a", "a/", "a//b", "/a/b/", "/a/./b", "./a", ".", "..", "../..",
    "/..", "/../a", "a/..", "a/../..", "a/b/../../..", "../a/../b", "/a/b/../../../c", "a/./b/.", "x/..y/..",
    "/tmp/with space/é", "/tmp/\udcff-undecodable", "...", "a/.../b", "/a//b//", "a/b/c/../",
]  # fmt: skip


@pytest.mark.parametrize("path", PATHS)
def test_path_strings_as_posixpath(path):
    assert oslite.normpath(path) == posixpath.normpath(path)
    assert oslite.dirname(path) == posixpath.dirname(path)
    assert oslite.basename(path) == posixpath.basename(path)
    assert oslite.abspath(path) == posixpath.abspath(path)
    for tail in ("", "b", "/b", "b/", "../b"):
        assert oslite.join(path, tail) == posixpath.join(path, tail)
        assert oslite.join(path, tail, "c") == posixpath.join(path, tail, "c")


def test_environment_and_names_as_os(monkeypatch):
    monkeypatch.setenv("SRT_OSLITE_TEST", "vàlue")
    os.environb[b"SRT_OSLITE_RAW"] = b"\xff\xfe"
    try:
        assert oslite.environ() == dict(os.environ)
        assert oslite.fsencode("/tmp/\udcff") == os.fsencode("/tmp/\udcff") == b"/tmp/\xff"
        assert oslite.fsdecode(b"\xff") == os.fsdecode(b"\xff")
    finally:
        del os.environb[b"SRT_OSLITE_RAW"]


def test_unsetenv_removes_the_variable_for_children_too(monkeypatch):
    import posix
    import subprocess
    import sys

    monkeypatch.setenv("SRT_OSLITE_GONE", "1")
    posix.environ[b"SRT_OSLITE_GONE"] = b"1"
    oslite.unsetenv("SRT_OSLITE_GONE")
    assert b"SRT_OSLITE_GONE" not in posix.environ
    # The C environment too: a child started without an explicit one does not see it.
    code = "import posix; print(b'SRT_OSLITE_GONE' in posix.environ)"
    assert subprocess.run([sys.executable, "-c", code], env=None, capture_output=True, text=True).stdout == "False\n"


def test_files_as_os_path(tmp_path: Path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link-to-dir").symlink_to("dir")
    (tmp_path / "dangling").symlink_to("nowhere")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dir" / "up").symlink_to("../file")
    names = ["dir", "file", "link-to-dir", "dangling", "loop", "dir/up", "link-to-dir/up", "missing", "file/", "dir/", "link-to-dir/../file"]
    for name in names:
        path = str(tmp_path / name)
        assert oslite.exists(path) == os.path.exists(path), name
        assert oslite.lexists(path) == os.path.lexists(path), name
        try:
            expected = os.path.realpath(path, strict=True)
        except OSError as err:
            with pytest.raises(OSError) as raised:
                oslite.realpath(path)
            assert raised.value.errno == err.errno, name
        else:
            assert oslite.realpath(path) == expected, name
    assert oslite.exists("a\0b") is False and oslite.lexists("a\0b") is False


def test_a_file_in_another_mount_namespace_is_not_taken_for_the_host_file_of_its_name(tmp_path: Path):
    # /proc/PID/root of a process in another mount namespace: the kernel
    # follows that namespace's own symlink (over -> f, on its tmpfs), and the
    # link of the file opened reads "<tmp_path>/over/f", its path in *that*
    # namespace. From here, the name is the host's file hidden under that
    # tmpfs: a realpath that returned it would name a file the namespace chose.
    import subprocess

    (tmp_path / "over").mkdir()
    (tmp_path / "over" / "f").write_text("the host's own\n")
    over = tmp_path / "over"
    script = f"mount -t tmpfs foreign {over} && echo foreign > {over}/f && ln -s f {over}/link && echo ready && exec sleep 600"
    holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        through = f"/proc/{holder.pid}/root{over}/link"
        assert open(through).read() == "foreign\n"  # the kernel's own view: the other namespace's file
        with pytest.raises(FileNotFoundError):
            os.path.realpath(through, strict=True)  # "/proc/PID/root" reads as "/": <tmp_path>/over/link, none here
        with pytest.raises(FileNotFoundError):
            oslite.realpath(through)
    finally:
        holder.kill()
        holder.wait()
