"""The launch path's modules from one image, bypassing the import machinery.

A launch imports some twenty small modules (the layout keeps one idea per
module, STYLE.md), and the import system costs each of them more than its
own code does: the finder's path search, the source's stat, the pyc's open
and read, the spec, the module lock, the attributes, all in Python. The
image holds their compiled code in one file, in the order their imports
complete, so that ``load`` can run them into ``sys.modules`` one after the
other: by the time ``srt_launcher.commands.run`` imports ``launch.stub``,
it finds it there. docs/performance.md has the figures.

The image is an installation's cache, like a ``.pyc``: ``scripts/direct-start``
(the fast start, run by ``make setup``) writes it into the package's
``__pycache__``; an install without it imports as usual, one of the ways
``load`` falls back without a word. It is used only when every module's
source still has the size and modification time it had when the image was
written, under the interpreter (bytecode magic) that wrote it: any other
image is ignored as a whole, before a single module has run, and the launch
imports what it needs the usual way.

``-X srt-launcher-no-image`` makes every launch import as usual: the
modules then show in ``-X importtime``, which is how the tests check what
the launch path imports.
"""

import _imp
import marshal
import os
import sys

# The sections a front end loads: the engine (what any launch may need,
# relays included), then its parser. Each is the closure of its entry
# modules, minus what an earlier section holds.
SECTIONS = {
    "engine": (
        "srt_launcher.launch.signals",
        "srt_launcher.launch.stub",
        "srt_launcher.seccomp",
        "srt_launcher.launch.network",
        "srt_launcher.relay.inside",
    ),
    "run": ("srt_launcher.commands.run",),
    "bwrap": ("srt_launcher.commands.bwrap",),
}

_PACKAGE = os.path.dirname(__file__)
# The image names each module's source relative to the directory the
# package is in: a copied or moved installation validates against, and
# runs, its own sources, never those of the place it was copied from.
_SITE = os.path.dirname(_PACKAGE)
_IMAGE = os.path.join(_PACKAGE, "__pycache__", f"launch-path.{sys.implementation.cache_tag}.image")
_Module = type(sys)
_Code = type((lambda: None).__code__)
_bootstrap = sys.modules["_frozen_importlib"]
_external = sys.modules["_frozen_importlib_external"]


def load(sections: tuple[str, ...], image: str = _IMAGE) -> bool:
    """Run the modules of ``sections`` from the image into ``sys.modules``
    (those not imported yet); False, having run none, if the image is
    missing, unreadable, out of date or of any other shape."""
    if "srt-launcher-no-image" in sys._xoptions:
        return False
    try:
        modules = _read(image, sections)
    except Exception:  # noqa: BLE001 - any bytes: a damaged image, another layout of it
        return False
    if modules is None:
        return False
    for name, package, path, code in modules:
        if name not in sys.modules:  # a module of an import cycle, run by its partner's import
            _run(name, package, path, code)
    return True


def _read(image: str, sections: tuple[str, ...]) -> list[tuple[str, bool, str, object]] | None:
    """Every module of ``sections`` not imported yet, its code decoded, or
    None if the image is missing or out of date. All of it is read and
    checked before ``load`` runs any: an image that matches the magic but
    holds anything else (damaged, or written in another layout by another
    version of the package) raises here, so that nothing of it has run."""
    try:
        with open(image, "rb") as handle:
            magic, held = marshal.loads(handle.read())
    except OSError:
        return None
    if magic != _external.MAGIC_NUMBER:
        return None
    modules = []
    for section in sections:
        for name, package, source, mtime, size, code in held.get(section, ()):
            if name in sys.modules:
                continue
            path = f"{_SITE}/{source}"
            if not _unchanged(path, mtime, size):
                return None
            compiled = marshal.loads(code)
            if not (type(name) is str and type(package) is bool and type(compiled) is _Code):
                raise TypeError(f"not an image entry: {name!r}")
            _imp._fix_co_filename(compiled, path)  # as for a pyc: the copy's path, not the writer's
            modules.append((name, package, path, compiled))
    return modules


def _unchanged(path: str, mtime: int, size: int) -> bool:
    try:
        found = os.stat(path)
    except OSError:
        return False
    return (found.st_mtime_ns, found.st_size) == (mtime, size)


def _run(name: str, package: bool, path: str, code: object) -> None:
    """What the import system would do for ``name``, minus the search: the
    module with its spec and attributes, its entry in ``sys.modules``, its
    code, then its name on its parent package."""
    parent, _, child = name.rpartition(".")
    spec = _bootstrap.ModuleSpec(name, _external.SourceFileLoader(name, path), origin=path, is_package=package)
    spec.has_location = True
    module = _Module(name)
    module.__spec__ = spec
    module.__loader__ = spec.loader
    module.__file__ = path
    module.__package__ = name if package else parent
    if package:
        module.__path__ = spec.submodule_search_locations = [os.path.dirname(path)]
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    setattr(sys.modules[parent], child, module)


# ---------------------------------------------------------------- writing the image


def write(image: str = _IMAGE) -> list[str]:
    """Import every section's modules here, recording the order in which
    their imports complete, and write the image; the names, in order.

    Run in a fresh interpreter that has imported nothing of the package but
    itself (srt-launcher-boot, ``-X srt-launcher-write-image``), so that each
    section records everything it needs.
    """
    held: dict[str, list] = {}
    for section, entries in SECTIONS.items():
        done: list[str] = []
        sys.meta_path.insert(0, _Recorder(done))
        try:
            for entry in entries:
                __import__(entry)
        finally:
            sys.meta_path.pop(0)
        held[section] = [_entry(name) for name in done]
        if section != "engine":
            _forget(done)  # the next front end's section holds what it shares with this one
    data = marshal.dumps((_external.MAGIC_NUMBER, held))
    temporary = f"{image}.{os.getpid()}"
    # Whatever the umask (make setup under umask 0 or 002): another user who
    # could open the temporary file for writing before the rename would keep
    # that descriptor, and rewrite through it the image that every launch,
    # root's included, runs. So the directory is never open to others, and
    # the file is created exclusively (nothing planted at its name is
    # followed), private, and made readable only once written.
    os.makedirs(os.path.dirname(image), mode=0o755, exist_ok=True)
    try:
        os.unlink(temporary)  # left by a writer that died with this pid
    except FileNotFoundError:
        pass
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fchmod(handle.fileno(), 0o644)  # every caller reads it (uid 65534 too)
    os.replace(temporary, image)
    return [entry[0] for section in held.values() for entry in section]


def _forget(names: list[str]) -> None:
    for name in reversed(names):
        del sys.modules[name]
        parent, _, child = name.rpartition(".")
        if hasattr(sys.modules.get(parent), child):
            delattr(sys.modules[parent], child)


def _entry(name: str) -> tuple[str, bool, str, int, int, bytes]:
    module = sys.modules[name]
    path = module.__spec__.origin
    relative = os.path.relpath(path, _SITE)
    if relative.startswith(".."):
        raise ValueError(f"{name} is not under {_SITE}")
    with open(path, "rb") as handle:
        source = handle.read()
    found = os.stat(path)
    code = compile(source, path, "exec", dont_inherit=True)
    return name, hasattr(module, "__path__"), relative, found.st_mtime_ns, found.st_size, marshal.dumps(code)


class _Recorder:
    """A meta path finder that finds nothing: it wraps the package's modules'
    loaders to note each module once its code has run (post-order: a module
    after everything it imports)."""

    def __init__(self, done: list[str]) -> None:
        self.done = done

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if not name.startswith("srt_launcher."):
            return None
        spec = _external.PathFinder.find_spec(name, path, target)
        if spec is not None:
            spec.loader = _RecordingLoader(spec.loader, self.done)
        return spec


class _RecordingLoader:
    def __init__(self, loader: object, done: list[str]) -> None:
        self.loader = loader
        self.done = done

    def create_module(self, spec: object) -> object:
        return self.loader.create_module(spec)  # type: ignore[attr-defined]

    def exec_module(self, module: object) -> None:
        self.loader.exec_module(module)  # type: ignore[attr-defined]
        self.done.append(module.__name__)  # type: ignore[attr-defined]
