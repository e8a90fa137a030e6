"""The interpreter's own site-packages for an isolated start (SPEC §11).

srt-launcher-boot starts the launcher with ``-I -S`` and puts the directory
the package was installed in on ``sys.path``. The dependencies are there too,
unless the installer found them already installed elsewhere for this
interpreter: in the system's site-packages (a Debian ``python3-click``, say,
for a ``--user`` or system-wide install), or in a venv's own when the
package went to a ``--prefix``. This adds those directories as ``site``
would, but never the user site-packages and without reading a single
``.pth`` file: nothing a sandboxed command could plant in a home may run in
the launcher. ``srt_launcher.__main__`` calls ``find_dependencies`` first:
it costs a launch a few stat calls, and only an install whose dependencies
are elsewhere pays for the rest (reading pyvenv.cfg, perhaps importing
``site``, which imports ``os``).
"""

import posix
import sys

# The dependencies of pyproject.toml, each by a module it installs (a file
# or a directory): pip puts them beside the package unless it found them
# installed elsewhere for this interpreter.
DEPENDENCIES = ("click", "prctl.py", "pyseccomp.py", "pyroute2")


def find_dependencies() -> None:
    """Make the dependencies importable: if one is not beside the package,
    add the interpreter's own site-packages (never the user's)."""
    beside = __file__.rpartition("/")[0].rpartition("/")[0]
    for dependency in DEPENDENCIES:
        try:
            posix.stat(f"{beside}/{dependency}")
        except OSError:
            add_interpreter_site_packages()
            return


def add_interpreter_site_packages() -> None:
    """Append the interpreter's site-packages directories to ``sys.path``
    (after the standard library and the package's own directory)."""
    for path in _interpreter_site_packages():
        if path not in sys.path:
            sys.path.append(path)


def _interpreter_site_packages() -> list[str]:
    import os

    # A venv is recognised as site.venv() does: a pyvenv.cfg in the
    # interpreter's directory or the one above. Under -S, sys.prefix is still
    # the base installation's, so a venv's own directory is computed here.
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    venv = os.path.dirname(bindir)
    config = _read_first((os.path.join(bindir, "pyvenv.cfg"), os.path.join(venv, "pyvenv.cfg")))
    if config is None:
        import site

        return site.getsitepackages([sys.prefix])
    own = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    if not _includes_system_site_packages(config):
        return [own]
    import site

    return [own, *site.getsitepackages([sys.base_prefix])]


def _read_first(paths: tuple[str, ...]) -> bytes | None:
    for path in paths:
        try:
            with open(path, "rb") as config:
                return config.read()
        except FileNotFoundError:
            continue
    return None


def _includes_system_site_packages(config: bytes) -> bool:
    """pyvenv.cfg's include-system-site-packages, read as site.venv() reads it:
    true when the key is absent, else only when its value is "true"."""
    value = b"true"
    for line in config.splitlines():
        if b"=" in line:
            key, _, rest = line.partition(b"=")
            if key.strip().lower() == b"include-system-site-packages":
                value = rest.strip().lower()
    return value == b"true"
