"""The launch path's image (srt_launcher/_preload.py), without root: what it
holds, that a launch loaded from it imports nothing more, and that any image
it cannot trust is ignored as a whole. tests/test_install.py checks that the
installed commands use the one make setup wrote."""

from __future__ import annotations

import json
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
# records every srt_launcher module the import system is asked for after
# the load, as srt_launcher.__main__ would have it.
LOAD_THEN_IMPORT = """
import json, sys
sys.path[:0] = sys.argv[1].split(":")
from srt_launcher import _preload
before = sorted(name for name in sys.modules if name.startswith("srt_launcher"))
searched = []
class Recorder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.startswith("srt_launcher"):
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
    "files": {name: module.__file__ for name, module in sys.modules.items() if name.startswith("srt_launcher")},
}))
"""


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the package (sources only) with its image written, as
    scripts/direct-start writes it; returns the directory above it."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "srt_launcher", site / "srt_launcher", ignore=shutil.ignore_patterns("__pycache__"))
    write = "import sys; sys.path[:0] = sys.argv[1].split(':'); from srt_launcher import _preload; _preload.write()"
    result = subprocess.run([sys.executable, "-I", "-S", "-c", write, f"{site}:{DEPENDENCIES}"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    return site


def _image(site: Path) -> Path:
    (image,) = (site / "srt_launcher" / "__pycache__").glob("launch-path.*.image")
    return image


def _load_then_import(site: Path, sections: str, imports: str) -> dict:
    argv = [sys.executable, "-I", "-S", "-c", LOAD_THEN_IMPORT, f"{site}:{DEPENDENCIES}", sections, imports]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    return json.loads(result.stdout)


def test_each_section_holds_its_modules_after_what_they_import(package):
    magic, held = marshal.loads(_image(package).read_bytes())
    assert set(held) == {"engine", "run", "bwrap"}
    engine = [entry[0] for entry in held["engine"]]
    for module, imported in (
        ("srt_launcher.launch.stub", "srt_launcher.launch.pid1"),
        ("srt_launcher.launch.pid1", "srt_launcher.mount.root"),
        ("srt_launcher.mount.ops", "srt_launcher.mount.target"),
        ("srt_launcher.mount.target", "srt_launcher.mount"),
        ("srt_launcher.kernel", "srt_launcher.launch.signals"),  # the first import done, the first listed
    ):
        assert engine.index(imported) < engine.index(module), (module, imported)
    assert not any(name.startswith("srt_launcher.commands") for name in engine), "the engine imports no front end"
    # What the launch path must never load (SPEC §4, STYLE.md): the image would hide it from -X importtime.
    held_names = [entry[0] for section in held.values() for entry in section]
    assert not [name for name in held_names if name.startswith(("srt_launcher.api", "srt_launcher.check", "srt_launcher.cli"))]
    # Each front end's section stands alone beside the engine.
    assert [entry[0] for entry in held["run"]] == ["srt_launcher.commands", "srt_launcher.commands.values", "srt_launcher.commands.run"]
    assert [entry[0] for entry in held["bwrap"]][0] == "srt_launcher.commands"
    assert [entry[0] for entry in held["bwrap"]][-1] == "srt_launcher.commands.bwrap"


@pytest.mark.parametrize(
    ("sections", "imports"),
    [
        ("engine,run", "srt_launcher.commands.run,srt_launcher.launch.stub,srt_launcher.seccomp,srt_launcher.relay.inside"),
        ("engine,bwrap", "srt_launcher.commands.bwrap,srt_launcher.launch.stub,srt_launcher.launch.network"),
    ],
)
def test_a_front_end_loaded_from_the_image_imports_nothing_more(package, sections, imports):
    seen = _load_then_import(package, sections, imports)
    assert seen["loaded"] is True
    assert seen["searched"] == []
    assert all(path.startswith(str(package)) for path in seen["files"].values())
    assert set(imports.split(",")) <= set(seen["files"])


def test_modules_from_the_image_are_what_an_import_makes(package):
    check = """
import sys
sys.path[:0] = sys.argv[1].split(":")
from srt_launcher import _preload
assert _preload.load(("engine", "run"))
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
    seen = _load_then_import(copy, "engine,run", "srt_launcher.commands.run,srt_launcher.launch.stub")
    assert seen["loaded"] is True and seen["searched"] == []
    assert all(path.startswith(f"{copy}/") for path in seen["files"].values())
    check = "import sys; sys.path[:0] = sys.argv[1].split(':'); from srt_launcher import _preload; assert _preload.load(('engine',)); from srt_launcher.launch import stub; print(stub.launch.__code__.co_filename)"
    result = subprocess.run([sys.executable, "-I", "-S", "-c", check, f"{copy}:{DEPENDENCIES}"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", f"{copy}/srt_launcher/launch/stub.py\n")
    # A change to the copy's sources makes the copy's image unused, whatever the original's state.
    stub = copy / "srt_launcher" / "launch" / "stub.py"
    stub.write_text(stub.read_text() + "\n")
    _unused(copy)
    assert _load_then_import(package, "engine,run", "srt_launcher.commands.run")["loaded"] is True


def _unused(site: Path) -> None:
    seen = _load_then_import(site, "engine,run", "srt_launcher.commands.run")
    assert seen["loaded"] is False
    # Nothing ran from it: every module came through the import system.
    assert "srt_launcher.launch.stub" not in seen["searched"]  # not imported at all by run's module
    assert "srt_launcher.commands.run" in seen["searched"]
    assert "srt_launcher.kernel" not in seen["before"]
    assert set(seen["files"]) - set(seen["before"]) <= set(seen["searched"])


def test_an_image_whose_source_changed_is_not_used(package):
    ops = package / "srt_launcher" / "mount" / "ops.py"
    found = ops.stat()
    os.utime(ops, ns=(found.st_atime_ns, found.st_mtime_ns + 1))
    _unused(package)


def test_an_image_whose_source_is_gone_is_not_used(package):
    (package / "srt_launcher" / "launch" / "pid1.py").rename(package / "pid1.py")
    _unused(package)


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
        lambda data: _respoil(data, lambda held: {"engine": 5}),
        lambda data: _respoil(data, lambda held: {**held, "run": [entry[:5] for entry in held["run"]]}),
        lambda data: _respoil(data, lambda held: {**held, "run": [7]}),
        lambda data: _respoil(data, lambda held: {**held, "run": [[["unhashable"], *entry[1:]] for entry in held["run"]]}),
        lambda data: _respoil(data, lambda held: {**held, "run": [(*entry[:2], "srt_launcher/\0.py", *entry[3:]) for entry in held["run"]]}),
        lambda data: _respoil(data, lambda held: {**held, "run": [*held["run"][:-1], (*held["run"][-1][:5], b"\xff")]}),
        lambda data: _respoil(data, lambda held: {**held, "run": [*held["run"][:-1], (*held["run"][-1][:5], marshal.dumps("print(1)"))]}),
        lambda data: _respoil(data, lambda held: ["engine", "run"]),
    ],
    ids=["truncated", "empty", "other-magic", "other-shape", "garbage", "section-not-a-list", "entry-too-short", "entry-not-a-tuple", "unhashable-name", "nul-in-path", "code-not-marshal", "code-not-code", "held-not-a-dict"],
)
def test_an_image_that_cannot_be_read_is_not_used(package, spoil):
    image = _image(package)
    image.write_bytes(spoil(image.read_bytes()))
    _unused(package)


def test_the_no_image_option_makes_a_launch_import_as_usual(package):
    argv = [sys.executable, "-I", "-S", "-X", "srt-launcher-no-image", "-c", LOAD_THEN_IMPORT, f"{package}:{DEPENDENCIES}", "engine,run", "srt_launcher.commands.run"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    seen = json.loads(result.stdout)
    assert seen["loaded"] is False and "srt_launcher.commands.run" in seen["searched"]


def test_no_image_no_difference(package):
    _image(package).unlink()
    _unused(package)


# Writes the image the way scripts/direct-start does, under umask 0, and
# notes the mode of the temporary file whenever it is chmod-ed or renamed:
# the moments after its content was written and before it became the image.
WRITE_UNDER_UMASK_0 = """
import os, stat, sys
sys.path[:0] = sys.argv[1].split(":")
from srt_launcher import _preload
temporary = f"{_preload._IMAGE}.{os.getpid()}"
seen = []
def hook(event, args):
    if event in ("os.chmod", "os.rename") and os.path.lexists(temporary):
        seen.append(stat.S_IMODE(os.lstat(temporary).st_mode))
sys.addaudithook(hook)
os.umask(0)
_preload.write()
print(" ".join(oct(mode) for mode in seen), oct(stat.S_IMODE(os.stat(_preload._IMAGE).st_mode)), oct(stat.S_IMODE(os.stat(os.path.dirname(_preload._IMAGE)).st_mode)))
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
    *during, final, directory = result.stdout.split()
    assert during, "the hook saw the temporary file"
    assert all(int(mode, 8) & 0o022 == 0 for mode in during), during
    assert (final, directory) == ("0o644", "0o755")
