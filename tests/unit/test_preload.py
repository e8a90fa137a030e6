"""The launch path's image (srt_launcher/_preload.py, written by
_preload_writer.py), without root: what each section holds, that a launch
loaded from it imports nothing more, and that any section it cannot trust is
ignored as a whole. tests/test_install.py checks that the installed commands
use the one make setup wrote, from the start."""

from __future__ import annotations

import json
import re
import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The dependencies (python-prctl's _prctl), after the copy on sys.path.
DEPENDENCIES = os.path.dirname(__import__("_prctl").__file__)

# Runs in an interpreter that sees nothing but the package copy (-I -S):
# records every srt_launcher module (and C extension module of the image)
# the import system is asked for after the load, as srt_launcher.__main__
# would have it.
LOAD_THEN_IMPORT = """
import json, sys
sys.path[:0] = sys.argv[1].split(":")
from srt_launcher import _preload
before = sorted(name for name in sys.modules if name.startswith("srt_launcher"))
searched = []
EXTENSIONS = ("_ctypes", "_prctl")
class Recorder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.startswith("srt_launcher") or name in EXTENSIONS:
            searched.append(name)
        return None
sys.meta_path.insert(0, Recorder)
loaded = _preload.load(tuple(sys.argv[2].split(",")))
for name in sys.argv[3].split(","):
    __import__(name)
print(json.dumps({
    "loaded": loaded,
    "before": before,
    "searched": searched,
    "files": {name: module.__file__ for name, module in sys.modules.items() if name.startswith("srt_launcher") or name in EXTENSIONS},
}))
"""


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the package (sources only) with its image written, as
    scripts/direct-start writes it; returns the directory above it."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "srt_launcher", site / "srt_launcher", ignore=shutil.ignore_patterns("__pycache__"))
    write = "import sys; sys.path[:0] = sys.argv[1].split(':'); from srt_launcher import _preload_writer; _preload_writer.write()"
    result = subprocess.run([sys.executable, "-I", "-S", "-c", write, f"{site}:{DEPENDENCIES}"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    return site


SECTIONS = ("signals", "engine", "relays", "run", "bwrap", "start")


def _image(site: Path, section: str) -> Path:
    (image,) = (site / "srt_launcher" / "__pycache__").glob(f"launch-path.*.{section}.image")
    return image


def _section(site: Path, section: str) -> list[str]:
    magic, entries = marshal.loads(_image(site, section).read_bytes())
    return [entry[0] for entry in entries]


def _load_then_import(site: Path, sections: str, imports: str) -> dict:
    argv = [sys.executable, "-I", "-S", "-c", LOAD_THEN_IMPORT, f"{site}:{DEPENDENCIES}", sections, imports]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    return json.loads(result.stdout)


def test_each_section_holds_its_modules_after_what_they_import(package):
    images = sorted(path.name.split(".")[-2] for path in (package / "srt_launcher" / "__pycache__").glob("launch-path.*.image"))
    assert images == sorted((*SECTIONS, "loader"))
    assert _section(package, "signals") == ["srt_launcher.launch", "srt_launcher.launch.signals"]
    engine = _section(package, "engine")
    for module, imported in (
        ("srt_launcher.launch.stub", "srt_launcher.launch.pid1"),
        ("srt_launcher.launch.pid1", "srt_launcher.mount.root"),
        ("srt_launcher.mount.ops", "srt_launcher.mount.target"),
        ("srt_launcher.mount.target", "srt_launcher.mount"),
        ("srt_launcher.kernel", "_ctypes"),  # a C extension module, loaded from where it was found
        ("srt_launcher.privileges", "_prctl"),
    ):
        assert engine.index(imported) < engine.index(module), (module, imported)
    assert engine[0] == "_ctypes", "the first import done, the first listed"
    assert not any(name.startswith("srt_launcher.commands") for name in engine), "the engine imports no front end"
    assert not any(name.startswith(("srt_launcher.relay", "srt_launcher.launch.network")) for name in engine), "a plain launch reads no relay"
    assert _section(package, "relays") == ["srt_launcher.launch.network", "srt_launcher.relay", "srt_launcher.relay.inside"]
    # What the launch path must never load (SPEC §4, STYLE.md): the image would hide it from -X importtime.
    held_names = [name for section in SECTIONS for name in _section(package, section)]
    assert not [name for name in held_names if name.startswith(("srt_launcher.api", "srt_launcher.check", "srt_launcher.cli"))]
    assert not {"os", "_socket", "click", "pyseccomp", "pyroute2", "ctypes"} & set(held_names)
    # Each front end's section stands alone beside the engine.
    assert _section(package, "run") == ["srt_launcher.commands", "srt_launcher.commands.values", "srt_launcher.commands.run"]
    assert _section(package, "bwrap") == ["srt_launcher.commands", "srt_launcher.commands.bwrap"]
    assert _section(package, "start") == ["srt_launcher", "srt_launcher._site", "srt_launcher.__main__"]


@pytest.mark.parametrize(
    ("sections", "imports"),
    [
        ("signals,engine,run", "srt_launcher.commands.run,srt_launcher.launch.stub,srt_launcher.seccomp,_ctypes,_prctl"),
        ("signals,engine,relays,run", "srt_launcher.commands.run,srt_launcher.launch.stub,srt_launcher.seccomp,srt_launcher.relay.inside"),
        ("signals,engine,bwrap", "srt_launcher.commands.bwrap,srt_launcher.launch.stub"),
        ("signals,engine,relays,bwrap", "srt_launcher.commands.bwrap,srt_launcher.launch.stub,srt_launcher.launch.network"),
    ],
)
def test_a_front_end_loaded_from_the_image_imports_nothing_more(package, sections, imports):
    seen = _load_then_import(package, sections, imports)
    assert seen["loaded"] is True
    assert seen["searched"] == []
    assert all(path.startswith(f"{package}/") for name, path in seen["files"].items() if name.startswith("srt_launcher"))
    assert set(imports.split(",")) <= set(seen["files"])


def test_modules_from_the_image_are_what_an_import_makes(package):
    check = """
import sys
sys.path[:0] = sys.argv[1].split(":")
from srt_launcher import _preload
assert _preload.load(("signals", "engine", "run"))
import _ctypes
assert _ctypes.__spec__.origin == _ctypes.__file__ and _ctypes.__spec__.loader.__class__.__name__ == "ExtensionFileLoader"
import srt_launcher.launch, srt_launcher.launch.stub as stub, srt_launcher.commands.run as run
assert srt_launcher.launch.stub is stub and sys.modules["srt_launcher.launch.stub"] is stub
assert stub.__spec__.name == stub.__name__ == "srt_launcher.launch.stub" and stub.__package__ == "srt_launcher.launch"
assert stub.__file__.endswith("/srt_launcher/launch/stub.py") and stub.__spec__.origin == stub.__file__
assert srt_launcher.launch.__path__ == [stub.__file__.rpartition("/")[0]]
assert srt_launcher.launch.__spec__.submodule_search_locations == srt_launcher.launch.__path__
assert stub.__loader__.get_source("srt_launcher.launch.stub").startswith('\"\"\"')
assert run.parse(["--ro-bind", "/", "/", "--", "/bin/true"]).command == ["/bin/true"]
import srt_launcher.launch.status  # not in the image: imported as usual, beside the others
print("ok")
"""
    result = subprocess.run([sys.executable, "-I", "-S", "-c", check, f"{package}:{DEPENDENCIES}"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "ok\n")


def test_a_copied_installation_runs_its_own_sources(package, tmp_path):
    copy = tmp_path / "elsewhere" / "site"
    shutil.copytree(package, copy)  # times kept, as cp -a and relocated venvs keep them
    seen = _load_then_import(copy, "signals,engine,run", "srt_launcher.commands.run,srt_launcher.launch.stub")
    assert seen["loaded"] is True and seen["searched"] == []
    assert all(path.startswith(f"{copy}/") for name, path in seen["files"].items() if name.startswith("srt_launcher"))
    check = "import sys; sys.path[:0] = sys.argv[1].split(':'); from srt_launcher import _preload; assert _preload.load(('signals', 'engine')); from srt_launcher.launch import stub; print(stub.launch.__code__.co_filename)"
    result = subprocess.run([sys.executable, "-I", "-S", "-c", check, f"{copy}:{DEPENDENCIES}"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", f"{copy}/srt_launcher/launch/stub.py\n")
    # A change to the copy's sources makes the copy's image unused, whatever the original's state.
    stub = copy / "srt_launcher" / "launch" / "stub.py"
    stub.write_text(stub.read_text() + "\n")
    _unused(copy, "engine")
    assert _load_then_import(package, "signals,engine,run", "srt_launcher.commands.run")["loaded"] is True


def _unused(site: Path, section: str) -> None:
    """``section`` of the image (and those after it) is not used; the sections before it are."""
    loaded = ("signals", "engine", "run")
    trusted = {name for earlier in loaded[: loaded.index(section)] for name in _section(site, earlier)}
    seen = _load_then_import(site, ",".join(loaded), "srt_launcher.commands.run")
    assert seen["loaded"] is False
    assert "srt_launcher.commands.run" in seen["searched"]
    assert "srt_launcher.kernel" not in seen["before"]
    # Nothing ran from it: every module not from a trusted section came through the import system.
    assert set(seen["files"]) - set(seen["before"]) - trusted <= set(seen["searched"])
    assert trusted <= set(seen["files"]) and not trusted & set(seen["searched"])


def test_an_image_whose_source_changed_is_not_used(package):
    ops = package / "srt_launcher" / "mount" / "ops.py"
    found = ops.stat()
    os.utime(ops, ns=(found.st_atime_ns, found.st_mtime_ns + 1))
    _unused(package, "engine")


def test_an_image_whose_source_is_gone_is_not_used(package):
    (package / "srt_launcher" / "launch" / "pid1.py").rename(package / "pid1.py")
    _unused(package, "engine")


def _respoil(data: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    magic, held = marshal.loads(data)
    return marshal.dumps((magic, change(held)))


@pytest.mark.parametrize(
    "spoil",
    [
        lambda data: data[: len(data) // 2],  # cut short
        lambda data: b"",
        lambda data: marshal.dumps((b"\0\0\r\n", marshal.loads(data)[1])),  # another interpreter's
        lambda data: marshal.dumps(("not", "an image")),
        lambda data: b"\xff" * 64,
        # The right magic around anything else (another layout of the image,
        # a damaged one): ignored as a whole too, never a traceback, and
        # nothing run from it (the spoiled entry is the last one needed).
        lambda data: _respoil(data, lambda held: 5),
        lambda data: _respoil(data, lambda held: [entry[:5] for entry in held]),
        lambda data: _respoil(data, lambda held: [7]),
        lambda data: _respoil(data, lambda held: [[["unhashable"], *entry[1:]] for entry in held]),
        lambda data: _respoil(data, lambda held: [(*entry[:2], "srt_launcher/\0.py", *entry[3:]) for entry in held]),
        lambda data: _respoil(data, lambda held: [*held[:-1], (*held[-1][:5], b"\xff")]),
        lambda data: _respoil(data, lambda held: [*held[:-1], (*held[-1][:5], marshal.dumps("print(1)"))]),
        lambda data: _respoil(data, lambda held: {"run": held}),
        # An entry that claims to be a C extension module: a file that is
        # not the one recorded is never loaded.
        lambda data: _respoil(data, lambda held: [*held[:-1], (held[-1][0], None, *held[-1][2:5], b"")]),
    ],
    ids=["truncated", "empty", "other-magic", "other-shape", "garbage", "entries-not-a-list", "entry-too-short", "entry-not-a-tuple", "unhashable-name", "nul-in-path", "code-not-marshal", "code-not-code", "a-dict", "not-an-extension"],
)
def test_an_image_that_cannot_be_read_is_not_used(package, spoil):
    image = _image(package, "run")
    image.write_bytes(spoil(image.read_bytes()))
    _unused(package, "run")


def test_the_no_image_option_makes_a_launch_import_as_usual(package):
    argv = [sys.executable, "-I", "-S", "-X", "srt-launcher-no-image", "-c", LOAD_THEN_IMPORT, f"{package}:{DEPENDENCIES}", "signals,engine,run", "srt_launcher.commands.run"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    seen = json.loads(result.stdout)
    assert seen["loaded"] is False and "srt_launcher.commands.run" in seen["searched"]


def test_no_image_no_difference(package):
    for image in (package / "srt_launcher" / "__pycache__").glob("launch-path.*.image"):
        image.unlink()
    _unused(package, "signals")


# Writes the image the way scripts/direct-start does, under umask 0, and
# notes the mode of the temporary file whenever it is chmod-ed or renamed:
# the moments after its content was written and before it became the image.
WRITE_UNDER_UMASK_0 = """
import glob, os, stat, sys
sys.path[:0] = sys.argv[1].split(":")
from srt_launcher import _preload, _preload_writer
directory = os.path.dirname(_preload._IMAGE)
seen = []
def hook(event, args):
    if event in ("os.chmod", "os.rename"):
        for temporary in glob.glob(f"{directory}/launch-path.*.image.{os.getpid()}"):
            seen.append(stat.S_IMODE(os.lstat(temporary).st_mode))
sys.addaudithook(hook)
os.umask(0)
_preload_writer.write()
images = glob.glob(f"{directory}/launch-path.*.image")
print(len(images), " ".join(oct(mode) for mode in seen), " ".join(sorted({oct(stat.S_IMODE(os.stat(image).st_mode)) for image in images})), oct(stat.S_IMODE(os.stat(directory).st_mode)))
"""


def test_the_image_is_never_writable_by_others_even_under_umask_0(package):
    # Attack: direct-start (make setup) run by root under umask 0 (or 002 with
    # a hostile group). Another user who opens the temporary file for writing
    # before it is renamed keeps that descriptor: through it, they rewrite the
    # image every later launch runs, root's included. Nor may the __pycache__
    # it creates be open to them.
    shutil.rmtree(package / "srt_launcher" / "__pycache__")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", WRITE_UNDER_UMASK_0, f"{package}:{DEPENDENCIES}"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    images, *during, final, directory = result.stdout.split()
    assert int(images) == 7, "six sections and the loader"
    assert len(during) >= 7, "the hook saw each temporary file"
    assert all(int(mode, 8) & 0o022 == 0 for mode in during), during
    assert (final, directory) == ("0o644", "0o755")


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The package copied into a prefix as pip lays it out (bin/ beside
    lib/pythonX.Y/site-packages), its boot's #! line unused (the interpreter
    is started here with -I -S), the image written the way direct-start does."""
    prefix = tmp_path / "prefix"
    site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    shutil.copytree(ROOT / "srt_launcher", site / "srt_launcher", ignore=shutil.ignore_patterns("__pycache__"))
    (prefix / "bin").mkdir()
    shutil.copy(ROOT / "scripts" / "srt-launcher-boot", prefix / "bin" / "srt-launcher-boot")
    result = subprocess.run([sys.executable, "-I", "-S", "-X", "srt-launcher-write-image", str(prefix / "bin" / "srt-launcher-boot")], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    return prefix


def _boot_imports(prefix: Path) -> list[str]:
    """What the import system loaded for `srt-launcher run --help`, started as the installed command."""
    argv = [sys.executable, "-I", "-S", "-X", "importtime", str(prefix / "bin" / "srt-launcher-boot"), "run", "--help"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: srt-launcher run"), result.stdout
    return re.findall(r"\| +([\w.]+)$", result.stderr, re.MULTILINE)


def test_the_boot_starts_the_package_from_the_image(installed):
    imported = _boot_imports(installed)
    assert "encodings" in imported
    assert not [name for name in imported if name.startswith("srt_launcher")], imported


@pytest.mark.parametrize(
    "spoil",
    [
        lambda image, loader: loader.write_text(loader.read_text() + "\n"),  # the loader's source changed
        lambda image, loader: image.write_bytes(image.read_bytes()[:100]),
        lambda image, loader: image.write_bytes(marshal.dumps((b"\0\0\r\n", 0, 0, b""))),
        lambda image, loader: image.write_bytes(marshal.dumps((*marshal.loads(image.read_bytes())[:3], marshal.dumps("raise SystemExit(3)")))),
        lambda image, loader: image.unlink(),
    ],
    ids=["source-changed", "truncated", "other-magic", "not-code", "missing"],
)
def test_a_boot_that_cannot_trust_the_loader_imports_as_usual(installed, spoil):
    (image,) = installed.glob("lib/*/site-packages/srt_launcher/__pycache__/launch-path.*.loader.image")
    spoil(image, image.parent.parent / "_preload.py")
    imported = _boot_imports(installed)
    assert {"srt_launcher", "srt_launcher._preload", "srt_launcher.__main__"} <= set(imported), imported


def test_a_boot_run_from_another_mount_namespace_finds_no_package_by_its_name_there(installed, tmp_path):
    # A process in a mount namespace of its own has a tmpfs over <h>, with a
    # copy of the boot in <h>/bin and a symlink <h>/go -> bin/srt-launcher-boot.
    # Run through /proc/PID/root, the boot's /proc/self/fd link reads
    # "<h>/bin/srt-launcher-boot", its path in *that* namespace: taken as a
    # path here, <h> is the prefix, and the package someone put under the
    # host's <h> (hidden there by the tmpfs) would run. Resolved here as the
    # path's own text, the prefix is the one the caller named.
    host = tmp_path / "h"
    planted = host / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / "srt_launcher"
    planted.mkdir(parents=True)
    mark = tmp_path / "planted-ran"
    (planted / "__init__.py").write_text("")
    (planted / "__main__.py").write_text(f"open({str(mark)!r}, 'w').close()\ndef main():\n    return 0\n")
    boot = installed / "bin" / "srt-launcher-boot"
    script = f"mount -t tmpfs foreign {host} && mkdir {host}/bin && cp {boot} {host}/bin/ && ln -s bin/srt-launcher-boot {host}/go && echo ready && exec sleep 600"
    holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        result = subprocess.run([sys.executable, "-I", "-S", f"/proc/{holder.pid}/root{host}/go", "--version"], capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert not mark.exists()
    assert result.returncode == 125
    assert result.stderr.startswith("srt-launcher: start: no srt_launcher package for python"), result.stderr
