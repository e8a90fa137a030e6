"""Writing the launch path's image (srt_launcher/_preload.py, which reads it).

Run once per installation, by ``scripts/direct-start`` (srt-launcher-boot
with ``-X srt-launcher-write-image``), in a fresh interpreter that has
imported nothing of the package but the two image modules: every section then
records all it needs. Kept apart from the reader, which every launch runs.
"""

import marshal
import os
import sys

from srt_launcher._preload import _FRONT_ENDS, _IMAGE, _SITE, _START, SECTIONS, _external


def write(image: str = _IMAGE) -> list[str]:
    """Import every section's modules here, recording the order in which
    their imports complete, and write each section's image; the names, in
    order.

    Run in a fresh interpreter that has imported nothing of the package but
    the two image modules (srt-launcher-boot, ``-X srt-launcher-write-image``),
    so that each section records everything it needs.
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
        if section in _FRONT_ENDS:
            _forget(done)  # the next front end's section holds what it shares with this one
    # srt-launcher-boot runs the loader from an image of its own, then the
    # loader the start section (srt_launcher._preload.start).
    __import__("srt_launcher.__main__")
    held["start"] = [_entry(name) for name in _START]
    loader = _entry("srt_launcher._preload")
    # Whatever the umask (make setup under umask 0 or 002): another user who
    # could open a temporary file for writing before the rename would keep
    # that descriptor, and rewrite through it an image that every launch,
    # root's included, runs. So the directory is never open to others, and
    # each file is created exclusively (nothing planted at its name is
    # followed), private, and made readable only once written.
    os.makedirs(os.path.dirname(image), mode=0o755, exist_ok=True)
    try:
        os.unlink(image.replace(".{}.image", ".image"))  # the single image of earlier versions
    except FileNotFoundError:
        pass
    for section, entries in held.items():
        _write_file(image.format(section), marshal.dumps((_external.MAGIC_NUMBER, entries)))
    # What srt-launcher-boot reads: the magic, the loader's source's
    # modification time and size, and its code.
    _write_file(image.format("loader"), marshal.dumps((_external.MAGIC_NUMBER, loader[3], loader[4], loader[5])))
    return [entry[0] for section in held.values() for entry in section]


def _write_file(path: str, data: bytes) -> None:
    temporary = f"{path}.{os.getpid()}"
    try:
        os.unlink(temporary)  # left by a writer that died with this pid
    except FileNotFoundError:
        pass
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fchmod(handle.fileno(), 0o644)  # every caller reads it (uid 65534 too)
    os.replace(temporary, path)


def _forget(names: list[str]) -> None:
    for name in reversed(names):
        del sys.modules[name]
        parent, _, child = name.rpartition(".")
        if hasattr(sys.modules.get(parent), child):
            delattr(sys.modules[parent], child)


def _entry(name: str) -> tuple[str, bool | None, str, int, int, bytes]:
    """A module's entry: its name, whether it is a package (None for a C
    extension module), its file (relative to the package's directory, or
    absolute if outside it: the interpreter's own extension modules), the
    file's modification time and size, its compiled code (empty for an
    extension module)."""
    module = sys.modules[name]
    path = module.__spec__.origin
    found = os.stat(path)
    loader = module.__spec__.loader
    if isinstance(getattr(loader, "loader", loader), _external.ExtensionFileLoader):  # the recorder's wrapper, unwrapped
        relative = os.path.relpath(path, _SITE)
        return name, None, path if relative.startswith("..") else relative, found.st_mtime_ns, found.st_size, b""
    relative = os.path.relpath(path, _SITE)
    if relative.startswith(".."):
        raise ValueError(f"{name} is not under {_SITE}")
    with open(path, "rb") as handle:
        source = handle.read()
    code = compile(source, path, "exec", dont_inherit=True, optimize=2)
    return name, hasattr(module, "__path__"), relative, found.st_mtime_ns, found.st_size, marshal.dumps(code)


class _Recorder:
    """A meta path finder that finds nothing: it wraps the loaders of the
    package's modules and of C extension modules to note each module once
    its code has run (post-order: a module after everything it imports)."""

    def __init__(self, done: list[str]) -> None:
        self.done = done

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        spec = _external.PathFinder.find_spec(name, path, target)
        if spec is None:
            return None  # a built-in or frozen module: the import system finds those at once
        if name.startswith("srt_launcher.") or isinstance(spec.loader, _external.ExtensionFileLoader):
            spec.loader = _RecordingLoader(spec.loader, self.done)
            return spec
        return None


class _RecordingLoader:
    def __init__(self, loader: object, done: list[str]) -> None:
        self.loader = loader
        self.done = done

    def create_module(self, spec: object) -> object:
        return self.loader.create_module(spec)  # type: ignore[attr-defined]

    def exec_module(self, module: object) -> None:
        self.loader.exec_module(module)  # type: ignore[attr-defined]
        self.done.append(module.__name__)  # type: ignore[attr-defined]
