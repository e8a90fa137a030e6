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
``__pycache__``, one file per section, so that a launch reads and decodes
only the sections it runs (a plain launch not the relays, ``run`` not the
bubblewrap parser). An install without it imports as usual, one of the ways
``load`` falls back without a word. A section is used only when every
module's source still has the size and modification time it had when the
image was written, under the interpreter (bytecode magic) that wrote it: any
other section is ignored as a whole, before a single module of it has run,
and the launch imports what it needs the usual way.

The code is compiled as ``-OO`` would (no docstrings, no asserts): nothing
on the launch path reads a docstring or relies on an assert, and a smaller
image is less to read, decode and keep in memory across the forks.

The start is a section too: srt-launcher-boot runs this module itself from
the loader's image (its compiled code, and the size and modification time
of its source, checked by the boot), then ``start`` runs the package and
``srt_launcher.__main__`` from the ``start`` section. None of the three goes
through the import system, which costs more for them than the rest of the
launch path's imports together.

``-X srt-launcher-no-image`` makes every launch import as usual: the
modules then show in ``-X importtime``, which is how the tests check what
the launch path imports.
"""

import _imp
import marshal
import posix
import sys

# The sections: the signals and the engine (what every launch runs), the relays (loaded by
# the stub for a launch with a network namespace), then each front end's
# parser. Each is the closure of its entry modules, minus what an earlier
# section holds.
SECTIONS = {
    # First, alone: run blocks the signals it holds for the workload before
    # it loads the rest.
    "signals": ("srt_launcher.launch.signals",),
    "engine": (
        "srt_launcher.launch.stub",
        "srt_launcher.seccomp",
    ),
    "relays": (
        "srt_launcher.launch.network",
        "srt_launcher.relay.inside",
    ),
    "run": ("srt_launcher.commands.run",),
    "bwrap": ("srt_launcher.commands.bwrap",),
}
# The start section: what srt_launcher.__main__ needs, in order (the loader,
# this module, is run by srt-launcher-boot itself).
_START = ("srt_launcher", "srt_launcher._site", "srt_launcher.__main__")
# What the front ends' parsers share with nothing else: each is recorded on
# top of the engine and the relays, and forgotten before the next.
_FRONT_ENDS = ("run", "bwrap")

_PACKAGE = __file__.rpartition("/")[0]
# The image names each module's source relative to the directory the
# package is in: a copied or moved installation validates against, and
# runs, its own sources, never those of the place it was copied from.
_SITE = _PACKAGE.rpartition("/")[0]
_IMAGE = f"{_PACKAGE}/__pycache__/launch-path.{sys.implementation.cache_tag}.{{}}.image"
_EXTENSION_SUFFIXES = tuple(_imp.extension_suffixes())
_Module = type(sys)
_Code = type((lambda: None).__code__)
_bootstrap = sys.modules["_frozen_importlib"]
_external = sys.modules["_frozen_importlib_external"]


def load(sections: tuple[str, ...], image: str = _IMAGE) -> bool:
    """Run the modules of ``sections`` from the image into ``sys.modules``
    (those not imported yet), section by section; False if a section's
    image is missing, unreadable, out of date or of any other shape (its
    modules, and those of the sections after it, are then imported as usual
    when the launch needs them)."""
    if "srt-launcher-no-image" in sys._xoptions:
        return False
    for section in sections:
        try:
            modules = _read(image.format(section))
        except Exception:  # noqa: BLE001 - any bytes: a damaged image, another layout of it
            return False
        if modules is None:
            return False
        for name, package, path, code in modules:
            if name in sys.modules:  # a module of an import cycle, run by its partner's import
                continue
            if package is None:
                if not _load_extension(name, path):
                    return False  # the rest is imported as usual
            else:
                _run(name, package, path, code)
    return True


def _read(image: str) -> list[tuple[str, bool, str, object]] | None:
    """Every module of one section's image not imported yet, its code
    decoded, or None if the image is missing or out of date. All of it is
    read and checked before ``load`` runs any: an image that matches the
    magic but holds anything else (damaged, or written in another layout by
    another version of the package) raises here, so that nothing of it has
    run."""
    try:
        magic, held = marshal.loads(_read_file(image))
    except OSError:
        return None
    if magic != _external.MAGIC_NUMBER:
        return None
    modules = []
    for name, package, source, mtime, size, code in held:
        if name in sys.modules:
            continue
        path = source if source.startswith("/") else f"{_SITE}/{source}"
        if not _unchanged(path, mtime, size):
            return None
        if package is None and code == b"":
            if not (type(name) is str and path.endswith(_EXTENSION_SUFFIXES)):
                raise TypeError(f"not an extension module: {name!r}")
            modules.append((name, None, path, None))  # a C extension module, loaded from where it was found
            continue
        compiled = marshal.loads(code)
        if not (type(name) is str and type(package) is bool and type(compiled) is _Code):
            raise TypeError(f"not an image entry: {name!r}")
        _imp._fix_co_filename(compiled, path)  # as for a pyc: the copy's path, not the writer's
        modules.append((name, package, path, compiled))
    return modules


def _read_file(path: str) -> bytes:
    """The whole file at ``path``, through posix alone (no buffered file
    object to build for a file read in one go)."""
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        chunks = []
        while chunk := posix.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        posix.close(fd)


def _unchanged(path: str, mtime: int, size: int) -> bool:
    try:
        found = posix.stat(path)
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
        module.__path__ = spec.submodule_search_locations = [path.rpartition("/")[0]]
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    if parent:
        setattr(sys.modules[parent], child, module)


def _load_extension(name: str, path: str) -> bool:
    """What the import system would do for the C extension module at ``path``,
    minus the search through every directory of ``sys.path`` before it;
    False if it cannot be loaded."""
    spec = _bootstrap.ModuleSpec(name, _external.ExtensionFileLoader(name, path), origin=path)
    spec.has_location = True
    try:
        _bootstrap._load(spec)
    except ImportError:
        return False
    return True


def start(this: object) -> bool:
    """Run the package, ``_site`` and ``__main__`` from the ``start``
    section, with ``this`` (this very module, which srt-launcher-boot ran
    from the loader's image) as ``srt_launcher._preload``; False, having
    run none, if the section is missing or out of date."""
    if "srt-launcher-no-image" in sys._xoptions:
        return False
    try:
        modules = _read(_IMAGE.format("start"))
    except Exception:  # noqa: BLE001 - any bytes, as in load
        return False
    if modules is None or tuple(module[0] for module in modules) != _START:
        return False
    package, site, main = modules
    _run(*package)
    path = f"{_PACKAGE}/_preload.py"
    this.__spec__ = _bootstrap.ModuleSpec(__name__, _external.SourceFileLoader(__name__, path), origin=path)
    this.__spec__.has_location = True
    this.__loader__ = this.__spec__.loader
    this.__package__ = "srt_launcher"
    sys.modules[__name__] = this
    sys.modules["srt_launcher"]._preload = this
    _run(*site)
    _run(*main)
    return True
