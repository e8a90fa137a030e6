"""A binary runs in a root holding only what srt_launcher.api.elf resolved for it.

The minimal sandbox of SPEC §9 (``Sandbox.for_executable``) built by hand
through ``srt-launcher run``: with no ``--ro-bind / /`` the root starts empty,
so each path of ``Resolution.paths_to_bind()`` is bound read-only onto
itself, plus ``--dev /dev --proc /proc --tmpfs /tmp`` and the input. Run as
root, as uid 65534 and as root with ``--unshare-user`` (the launcher fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import peers

from srt_launcher.api import elf

INPUT = "/input/video.mp4"


@pytest.fixture(scope="module")
def video() -> str:
    """One second of 64x64 test pattern and a sine tone, made by ffmpeg, readable by every uid."""
    directory = Path(tempfile.mkdtemp(prefix="srt-launcher-elf-", dir="/tmp"))
    directory.chmod(0o755)
    out = peers.make_video(directory / "video.mp4", size="64x64", audio=True)
    yield str(out)
    shutil.rmtree(directory, ignore_errors=True)


def minimal_root(*resolutions: elf.Resolution, inputs: dict[str, str] | None = None) -> list[str]:
    """``run`` options for a root holding the resolved files and nothing else of the host."""
    # The private /tmp first: a binary or library that lives under the host's /tmp
    # is then bound on top of it, not hidden by it.
    options = ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in dict.fromkeys(path for resolution in resolutions for path in resolution.paths_to_bind()):
        options += ["--ro-bind", path, path]
    for source, dest in (inputs or {}).items():
        options += ["--ro-bind", source, dest]
    return options


def test_ffprobe_reads_a_video_in_a_root_of_its_resolved_libraries(launcher, video: str) -> None:  # type: ignore[no-untyped-def]
    resolution = elf.resolve("/usr/bin/ffprobe")
    resolution.raise_for_missing()
    result = launcher.run(*minimal_root(resolution, inputs={video: INPUT}), "--",
                          "/usr/bin/ffprobe", "-v", "error", "-show_entries", "stream=codec_type,width,height",
                          "-of", "json", INPUT)
    assert result.returncode == 0, result.stderr
    streams = json.loads(result.stdout)["streams"]
    assert {"codec_type": "video", "width": 64, "height": 64} in streams
    assert {"codec_type": "audio"} in streams


def test_the_root_holds_nothing_of_the_host_but_binaries_libraries_and_input(launcher, video: str) -> None:  # type: ignore[no-untyped-def]
    ffprobe, find = elf.resolve("/usr/bin/ffprobe"), elf.resolve("/usr/bin/find")
    result = launcher.run(*minimal_root(ffprobe, find, inputs={video: INPUT}), "--",
                          "/usr/bin/find", "/", "-path", "/proc", "-prune", "-o", "-path", "/dev", "-prune", "-o",
                          "-print")
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.splitlines())
    expected = {"/", "/tmp"}
    for path in [*ffprobe.paths_to_bind(), *find.paths_to_bind(), INPUT]:
        while path != "/":
            expected.add(path)
            path = os.path.dirname(path)
    assert listed == expected, f"unexpected: {sorted(listed - expected)}; absent: {sorted(expected - listed)}"
    opened = "/lib/x86_64-linux-gnu/libavcodec.so.59"  # and the file it links to, under /usr/lib
    assert opened in listed and os.path.realpath(opened) in listed and "/etc" not in listed


def test_without_one_resolved_library_the_loader_fails_inside(launcher, video: str) -> None:  # type: ignore[no-untyped-def]
    """The root really is only what was bound: leave libavutil out and ffprobe cannot start."""
    resolution = elf.resolve("/usr/bin/ffprobe")
    options = minimal_root(resolution, inputs={video: INPUT})
    kept = options[:6]  # --dev, --proc, --tmpfs
    for index in range(6, len(options), 3):
        if "libavutil.so" not in options[index + 1]:
            kept += options[index:index + 3]
    result = launcher.run(*kept, "--", "/usr/bin/ffprobe", "-v", "error", INPUT)
    assert result.returncode == 127
    assert "error while loading shared libraries: libavutil.so.57" in result.stderr


def test_an_origin_relative_rpath_resolves_inside_as_outside(launcher) -> None:  # type: ignore[no-untyped-def]
    """$ORIGIN/../lib, with the library reached through a directory symlink:
    the '..' paths the loader forms exist inside (paths_to_bind normalises them)."""
    root = Path(tempfile.mkdtemp(prefix="srt-launcher-elf-", dir="/tmp"))
    try:
        root.chmod(0o755)
        (root / "src.c").write_text("int answer(void) { return 42; }\n")
        (root / "main.c").write_text("int answer(void);\nint main(void) { return answer() - 42 + 7; }\n")
        (root / "store").mkdir()
        (root / "app" / "bin").mkdir(parents=True)
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(root / "store" / "libanswer.so.1"), str(root / "src.c"),
                        "-Wl,-soname,libanswer.so.1"], check=True)
        (root / "app" / "lib").symlink_to("../store")
        subprocess.run(["gcc", "-o", str(root / "app" / "bin" / "prog"), str(root / "main.c"),
                        str(root / "store" / "libanswer.so.1"), "-Wl,--enable-new-dtags",
                        "-Wl,-rpath,$ORIGIN/../lib"], check=True)
        for path in root.rglob("*"):
            if not path.is_symlink():
                path.chmod(0o755)
        resolution = elf.resolve(str(root / "app" / "bin" / "prog"))
        assert [lib.path for lib in resolution.libraries][0] == f"{root}/app/bin/../lib/libanswer.so.1"
        result = launcher.run(*minimal_root(resolution), "--", str(root / "app" / "bin" / "prog"))
        assert result.returncode == 7, result.stderr  # 7: answer() came from the library
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_glibc_hwcaps_cache_entry_is_the_one_the_loader_picks(launcher, root_argv) -> None:  # type: ignore[no-untyped-def]
    """A cache that ldconfig wrote for a library in glibc-hwcaps/x86-64-v{2,3,4}
    and in its directory: ours picks the entry the real loader picks when that
    cache is /etc/ld.so.cache (inside a sandbox, the host's left alone)."""
    root = Path(tempfile.mkdtemp(prefix="srt-launcher-elf-", dir="/tmp"))
    try:
        root.chmod(0o755)
        (root / "l.c").write_text("int hw(void) { return 1; }\n")
        (root / "m.c").write_text("int main(void) { return 0; }\n")
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(root / "libhwdep.so"), str(root / "l.c"),
                        "-Wl,-soname,libhwdep.so"], check=True)
        for level in ("x86-64-v2", "x86-64-v3", "x86-64-v4"):
            (root / "glibc-hwcaps" / level).mkdir(parents=True)
            shutil.copy(root / "libhwdep.so", root / "glibc-hwcaps" / level / "libhwdep.so")
        subprocess.run(["gcc", "-o", str(root / "prog"), str(root / "m.c"), "-Wl,--no-as-needed",
                        f"-L{root}", "-lhwdep"], check=True)
        (root / "ld.so.conf").write_text(f"{root}\n")
        # ldconfig rewrites /var/cache/ldconfig/aux-cache even with -C: give it a scratch one.
        made = subprocess.run([*root_argv, "run", "--ro-bind", "/", "/", "--tmpfs", "/var/cache/ldconfig",
                               "--bind", str(root), str(root), "--", "/sbin/ldconfig", "-X",
                               "-C", str(root / "ld.so.cache"), "-f", str(root / "ld.so.conf")],
                              capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        for path in root.rglob("*"):
            path.chmod(0o755)
        resolution = elf.resolve(str(root / "prog"), ld_so_cache=str(root / "ld.so.cache"))
        ours = resolution.libraries[0]
        cpu_has_levels = bool(elf.host_hwcaps(elf.Abi.of(elf.read_elf(str(root / "prog")))).glibc_hwcaps)
        assert ours.found_in == "ld.so.cache" and resolution.needs_ld_so_cache
        assert ("/glibc-hwcaps/" in ours.path) == cpu_has_levels, ours.path
        traced = launcher.run("--ro-bind", "/", "/", "--ro-bind", str(root / "ld.so.cache"), "/etc/ld.so.cache",
                              "--setenv", "LD_TRACE_LOADED_OBJECTS", "1", "--", str(root / "prog"))
        assert traced.returncode == 0, traced.stderr
        assert f"libhwdep.so => {ours.path} (" in traced.stdout, traced.stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)
