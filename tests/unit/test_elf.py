"""srt_launcher.api.elf: reading ELF files and ld.so.cache, and resolving as ld.so does.

No root, no namespaces. The reference is the real loader: ``ldd`` (allowed
here, never in the code) on programs built by gcc for each search rule, and
on the real binaries of this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from elf_images import (
    DT_AUXILIARY, DT_FILTER, EM_386, EM_AARCH64, EM_X86_64, ET_EXEC, ET_REL, HWCAP_EXTENSION,
    cache_image, elf_image, old_cache_image,
)
from srt_launcher.api import elf

INTERP = "/lib64/ld-linux-x86-64.so.2"
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}  # ldd as the sandbox runs a binary: no LD_LIBRARY_PATH


def write(path: Path, data: bytes, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def ldd(path: str, *, exec_trace: bool = False) -> list[tuple[str, str]]:
    """(name, path or "not found") per object ldd lists, vdso and interpreter excluded.

    ``exec_trace``: exec the program itself with LD_TRACE_LOADED_OBJECTS=1
    instead (what ldd did before it ran ld.so on the file): the kernel loads
    it, so its $ORIGIN comes from /proc/self/exe as in a real run. ldd runs
    ``ld.so FILE``, which takes $ORIGIN from the path given, symlinks kept.
    """
    argv, env = (["ldd", path], CLEAN_ENV) if not exec_trace else ([path], {**CLEAN_ENV, "LD_TRACE_LOADED_OBJECTS": "1"})
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60).stdout
    listed = []
    for line in out.splitlines():
        named = re.match(r"\s*(\S+) => (.*?)(?: \(0x[0-9a-f]+\))?$", line)
        by_path = re.match(r"\s*(/\S+) \(0x[0-9a-f]+\)$", line)  # a DT_NEEDED that is a path
        if named:
            listed.append((named.group(1), named.group(2)))
        elif by_path and os.path.basename(by_path.group(1)) != os.path.basename(INTERP):
            listed.append((by_path.group(1), by_path.group(1)))
    return listed


def resolved(resolution: elf.Resolution) -> list[tuple[str, str]]:
    """The same listing from a Resolution, in load order (missing ones after,
    as ldd lists them where they were asked for: compared as a set)."""
    return [(lib.name, lib.path) for lib in resolution.libraries] + [
        (item.name, "not found") for item in resolution.missing]


def assert_matches_ldd(path: str, *, exec_trace: bool = False) -> elf.Resolution:
    resolution = elf.resolve(path)
    ours, theirs = resolved(resolution), ldd(path, exec_trace=exec_trace)
    assert sorted(ours) == sorted(theirs), f"{path}: ours {ours}\nldd  {theirs}"
    if not resolution.missing:  # ldd lists a missing library where it was asked for
        assert ours == theirs, f"{path}: same set, other order"
    return resolution


# ------------------------------------------------------------------ ELF reader


def test_reads_a_64bit_little_endian_object(tmp_path: Path) -> None:
    path = write(tmp_path / "a.so", elf_image(interp=INTERP, needed=("libb.so.1", "libc.so.6"), soname="liba.so.1",
                                                runpath="$ORIGIN/../lib", flags_1=0x800))
    info = elf.read_elf(str(path))
    assert (info.elf_class, info.data, info.machine, info.bits) == (elf.ELFCLASS64, elf.ELFDATA2LSB, EM_X86_64, 64)
    assert info.interpreter == INTERP
    assert info.needed == ("libb.so.1", "libc.so.6")
    assert info.soname == "liba.so.1"
    assert info.runpath == "$ORIGIN/../lib" and info.rpath is None
    assert info.flags_1 & elf.DF_1_NODEFLIB


def test_reads_a_32bit_big_endian_object(tmp_path: Path) -> None:
    path = write(tmp_path / "b.so", elf_image(bits=32, little=False, machine=20, needed=("libx.so",), rpath="/opt/x"))
    info = elf.read_elf(str(path))
    assert (info.elf_class, info.data, info.machine, info.bits) == (elf.ELFCLASS32, elf.ELFDATA2MSB, 20, 32)
    assert info.needed == ("libx.so",) and info.rpath == "/opt/x" and info.interpreter is None


def test_strtab_is_found_through_the_load_segment_not_as_a_file_offset(tmp_path: Path) -> None:
    # DT_STRTAB holds LOAD_BIAS + offset: read as an offset it lies past the end of the file.
    path = write(tmp_path / "c.so", elf_image(needed=("libreal.so",)))
    assert elf.read_elf(str(path)).needed == ("libreal.so",)


def test_rpath_is_ignored_when_runpath_is_present(tmp_path: Path) -> None:
    path = write(tmp_path / "d.so", elf_image(rpath="/old", runpath="/new"))
    info = elf.read_elf(str(path))
    assert info.rpath is None and info.runpath == "/new"


def test_filters_and_auxiliaries_are_read_in_order(tmp_path: Path) -> None:
    path = write(tmp_path / "f.so", elf_image(filters=((DT_FILTER, "libf.so"), (DT_AUXILIARY, "liba.so"))))
    assert elf.read_elf(str(path)).filters == ((DT_FILTER, "libf.so"), (DT_AUXILIARY, "liba.so"))


@pytest.mark.parametrize("data, message", [
    (b"#!/bin/sh\n# a script is run by its interpreter; the loader never reads it\necho hello\n", "invalid ELF header"),
    (b"\x7fELF\x02", "file too short"),
    (b"", "file too short"),
])
def test_a_file_that_is_not_elf_is_a_value_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path / "x", data)
    with pytest.raises(ValueError, match=message):
        elf.read_elf(str(path))


def test_a_truncated_object_is_a_value_error(tmp_path: Path) -> None:
    image = elf_image(needed=("liby.so",))
    path = write(tmp_path / "cut.so", image[:len(image) - 20])  # the dynamic section cut short
    with pytest.raises(ValueError, match="cannot read file data"):
        elf.read_elf(str(path))


def test_reader_agrees_with_readelf_on_real_binaries() -> None:
    for binary in ("/usr/bin/ffprobe", "/usr/bin/git", "/usr/lib/x86_64-linux-gnu/libpulse.so.0"):
        out = subprocess.run(["readelf", "-d", "-l", "-W", binary], capture_output=True, text=True, check=True).stdout
        info = elf.read_elf(binary)
        assert list(info.needed) == re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", out)
        assert [info.runpath] == (re.findall(r"\(RUNPATH\)\s+Library runpath: \[(.*)\]", out) or [None])
        assert [info.soname] == (re.findall(r"\(SONAME\)\s+Library soname: \[(.*)\]", out) or [None])
        assert [info.interpreter] == (re.findall(r"Requesting program interpreter: (.*)\]", out) or [None])


# ---------------------------------------------------------- loader's verdicts


def verdict(tmp_path: Path, **kwargs) -> str | None:  # type: ignore[no-untyped-def]
    candidate = elf.read_elf(str(write(tmp_path / "cand.so", elf_image(**kwargs))))
    return elf.loader_verdict(candidate, elf.Abi(elf.ELFCLASS64, elf.ELFDATA2LSB, EM_X86_64, 0))


def test_loader_skips_other_class_and_other_machine(tmp_path: Path) -> None:
    assert verdict(tmp_path) is None
    assert verdict(tmp_path, bits=32, machine=EM_386) == "skip"
    assert verdict(tmp_path, machine=EM_AARCH64) == "skip"


def test_loader_refuses_what_it_cannot_load(tmp_path: Path) -> None:
    assert verdict(tmp_path, little=False) == "ELF file data encoding not little-endian"
    assert verdict(tmp_path, osabi=9) == "ELF file OS ABI invalid"
    assert verdict(tmp_path, e_type=ET_EXEC) == "cannot dynamically load executable"
    assert verdict(tmp_path, e_type=ET_REL) == "only ET_DYN and ET_EXEC can be loaded"
    assert verdict(tmp_path, dynamic=False) == "object file has no dynamic section"
    assert verdict(tmp_path, flags_1=0x08000000) == "cannot dynamically load position-independent executable"


# ------------------------------------------------------------------ ld.so.cache

X8664, I386 = 0x0303, 0x0003
HW = elf.Hwcaps(glibc_hwcaps=("x86-64-v3", "x86-64-v2"), isa_levels=0b0111)
X8664_FLAGS = elf.cache_flags(elf.Abi(elf.ELFCLASS64, elf.ELFDATA2LSB, EM_X86_64, 0))
I386_FLAGS = elf.cache_flags(elf.Abi(elf.ELFCLASS32, elf.ELFDATA2LSB, EM_386, 0))


def test_real_cache_lists_what_ldconfig_lists() -> None:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    listed = re.findall(r"^\t(\S+) \((.*?)\) => (\S+)$", out, re.M)
    cache = elf.LdSoCache.load()
    assert cache is not None
    assert [(entry.key, entry.value) for entry in cache.entries] == [(name, path) for name, _kind, path in listed]
    assert all(entry.flags == X8664 for entry, (_n, kind, _p) in zip(cache.entries, listed) if kind == "libc6,x86-64")


def test_real_cache_lookup_is_what_the_loader_found() -> None:
    cache = elf.LdSoCache.load()
    hwcaps = elf.host_hwcaps(elf.Abi.of(elf.read_elf("/bin/ls")))
    resolution = elf.resolve("/usr/bin/ffprobe")
    by_name = {lib.name: lib for lib in resolution.libraries}
    ways = {"ld.so.cache": 0, "default": 0, "RUNPATH": 0}
    for name, path in ldd("/usr/bin/ffprobe"):
        ways[by_name[name].found_in] += 1
        hit = cache.lookup(name, X8664_FLAGS, hwcaps)  # type: ignore[union-attr]
        if by_name[name].found_in == "ld.so.cache":
            assert hit == path, name
        elif by_name[name].found_in == "default":  # a name ldconfig left out (no SONAME link)
            assert hit is None and os.path.dirname(path) + "/" in resolution.default_dirs, name
    assert ways["ld.so.cache"] > 150 and ways["RUNPATH"] >= 1, ways


def test_cache_entries_are_chosen_by_the_binarys_abi() -> None:
    cache = elf.LdSoCache.parse(cache_image([(I386, "libz.so.1", "/lib32/libz.so.1", 0),
                                             (X8664, "libz.so.1", "/lib64/libz.so.1", 0)]))
    assert cache is not None
    assert cache.lookup("libz.so.1", X8664_FLAGS, HW) == "/lib64/libz.so.1"
    assert cache.lookup("libz.so.1", I386_FLAGS, HW) == "/lib32/libz.so.1"
    assert cache.lookup("libz.so.2", X8664_FLAGS, HW) is None


def test_cache_names_compare_digit_runs_as_numbers() -> None:
    cache = elf.LdSoCache.parse(cache_image([(X8664, "libfoo.so.1", "/lib/libfoo.so.1", 0)]))
    assert cache.lookup("libfoo.so.01", X8664_FLAGS, HW) == "/lib/libfoo.so.1"  # _dl_cache_libcmp
    assert cache.lookup("libfoo.so.10", X8664_FLAGS, HW) is None


def test_cache_prefers_the_best_supported_glibc_hwcaps_entry() -> None:
    names = ("x86-64-v2", "x86-64-v3", "x86-64-v4")  # sorted, as ldconfig writes them
    # The ISA level field is the index of the highest GNU_PROPERTY_X86_ISA_1_NEEDED
    # bit (elf-read-prop.h): 1 for v2, 2 for v3, 3 for v4.
    entries = [(X8664, "libm.so.6", f"/lib/glibc-hwcaps/{name}/libm.so.6", HWCAP_EXTENSION | level << 32 | index)
               for index, (level, name) in enumerate(zip((1, 2, 3), names))]
    entries.append((X8664, "libm.so.6", "/lib/libm.so.6", 0))
    cache = elf.LdSoCache.parse(cache_image(entries, hwcaps_names=names))
    assert cache is not None and cache.hwcaps_names == list(names)
    assert cache.lookup("libm.so.6", X8664_FLAGS, HW) == "/lib/glibc-hwcaps/x86-64-v3/libm.so.6"
    only_v2 = elf.Hwcaps(glibc_hwcaps=("x86-64-v2",), isa_levels=0b0011)
    assert cache.lookup("libm.so.6", X8664_FLAGS, only_v2) == "/lib/glibc-hwcaps/x86-64-v2/libm.so.6"
    assert cache.lookup("libm.so.6", X8664_FLAGS, elf.Hwcaps()) == "/lib/libm.so.6"


def test_cache_in_the_compatibility_layout_is_read_from_its_new_table() -> None:
    data = cache_image([(X8664, "libq.so.2", "/usr/lib/libq.so.2", 0)], old_prefix=True)
    assert data.startswith(b"ld.so-1.7.0")
    cache = elf.LdSoCache.parse(data)
    assert cache is not None and cache.lookup("libq.so.2", X8664_FLAGS, HW) == "/usr/lib/libq.so.2"


def test_cache_in_the_old_format_alone() -> None:
    cache = elf.LdSoCache.parse(old_cache_image([(I386, "libold.so.5", "/lib/libold.so.5")]))
    assert cache is not None and cache.lookup("libold.so.5", I386_FLAGS, HW) == "/lib/libold.so.5"
    assert cache.lookup("libold.so.5", X8664_FLAGS, HW) is None


@pytest.mark.parametrize("data", [
    cache_image([(X8664, "liba.so", "/a", 0)], endian_flag=3),  # written for a big-endian loader
    cache_image([(X8664, "liba.so", "/a", 0)], endian_flag=1),  # marked invalid
    cache_image([(X8664, "liba.so", "/a", 0)])[:60],  # fewer entries than it claims
    b"not a cache at all",
])
def test_an_unusable_cache_is_ignored(data: bytes) -> None:
    assert elf.LdSoCache.parse(data) is None


# ------------------------------------------------- the loader's configuration


def ld_so_help() -> str:
    return subprocess.run([INTERP, "--help"], capture_output=True, text=True, check=True).stdout


def test_default_dirs_are_those_compiled_into_the_interpreter() -> None:
    expected = re.findall(r"^  (\S+) \(system search path\)$", ld_so_help(), re.M)
    dirs, source = elf.system_dirs(INTERP, elf.Abi.of(elf.read_elf("/bin/ls")))
    assert source == "interpreter"
    assert [item.rstrip("/") for item in dirs] == expected


def test_hwcaps_subdirectories_are_the_loaders(tmp_path: Path) -> None:
    """The subdirectory order ld.so prints for an RPATH search (LD_DEBUG=libs)."""
    write(tmp_path / "main.c", b"int main(void) { return 0; }\n", 0o644)
    program = tmp_path / "prog"
    subprocess.run(["gcc", str(tmp_path / "main.c"), "-o", str(program), "-Wl,--disable-new-dtags",
                    f"-Wl,-rpath,{tmp_path}/rp"], check=True)
    (tmp_path / "rp").mkdir()
    log = subprocess.run([str(program)], capture_output=True, text=True, env={**CLEAN_ENV, "LD_DEBUG": "libs"}).stderr
    search = re.search(r"search path=(\S+)\s+\(RPATH", log).group(1)  # type: ignore[union-attr]
    expected = [item[len(f"{tmp_path}/rp/"):] for item in search.split(":")]
    ours = elf.host_hwcaps(elf.Abi.of(elf.read_elf(str(program)))).subdirectories()
    assert [item.rstrip("/") for item in ours] == expected


# --------------------------------------- resolution against the real loader


EMPTY_C = b"int nothing(void) { return 0; }\n"
MAIN_C = b"int main(void) { return 0; }\n"


class Tree:
    """Programs and libraries built with gcc under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        write(root / "empty.c", EMPTY_C, 0o644)
        write(root / "main.c", MAIN_C, 0o644)

    def lib(self, rel: str, soname: str | None, *link: str) -> Path:
        out = self.root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        args = ["gcc", "-shared", "-fPIC", "-o", str(out), str(self.root / "empty.c"), "-Wl,--no-as-needed", *link]
        if soname:
            args.append(f"-Wl,-soname,{soname}")
        subprocess.run(args, check=True)
        return out

    def program(self, rel: str, *link: str) -> str:
        out = self.root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-o", str(out), str(self.root / "main.c"), "-Wl,--no-as-needed", *link], check=True)
        return str(out)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    t = Tree(tmp_path_factory.mktemp("elf-tree"))
    t.lib("dep/libdep.so", "libdep.so")
    t.lib("mid/libmid.so", "libmid.so", f"-L{t.root}/dep", "-ldep")
    return t


def links_mid(t: Tree) -> list[str]:
    return [f"-L{t.root}/mid", "-lmid", f"-Wl,-rpath-link,{t.root}/dep"]


def test_rpath_of_the_loaders_is_inherited(tree: Tree) -> None:
    # libmid has no search path: libdep is found through the program's RPATH.
    program = tree.program("bin/rpath", *links_mid(tree), "-Wl,--disable-new-dtags",
                           f"-Wl,-rpath,{tree.root}/mid:{tree.root}/dep")
    resolution = assert_matches_ldd(program)
    by_name = {lib.name: lib for lib in resolution.libraries}
    assert by_name["libmid.so"].found_in == by_name["libdep.so"].found_in == "RPATH"
    assert by_name["libdep.so"].needed_by == f"{tree.root}/mid/libmid.so"


def test_runpath_is_not_inherited(tree: Tree) -> None:
    program = tree.program("bin/runpath", *links_mid(tree), "-Wl,--enable-new-dtags",
                           f"-Wl,-rpath,{tree.root}/mid:{tree.root}/dep")
    resolution = assert_matches_ldd(program)
    assert [(item.name, item.needed_by) for item in resolution.missing] == [("libdep.so", f"{tree.root}/mid/libmid.so")]
    with pytest.raises(ValueError, match="libdep.so .needed by .*libmid.so.: cannot open shared object file"):
        resolution.raise_for_missing()


def test_origin_of_the_program_is_its_real_directory(tree: Tree) -> None:
    program = tree.program("app/bin/origin", *links_mid(tree), "-Wl,--disable-new-dtags",
                           "-Wl,-rpath,$ORIGIN/../../mid:${ORIGIN}/../../dep")
    assert_matches_ldd(program)
    link = tree.root / "elsewhere" / "origin"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(program)
    # Run through the link, $ORIGIN is the target's directory (/proc/self/exe); ldd,
    # which runs ld.so on the link's path, would say libmid.so is not found.
    resolution = assert_matches_ldd(str(link), exec_trace=True)
    assert resolution.complete


def test_origin_of_a_library_is_the_directory_it_was_opened_in(tree: Tree) -> None:
    tree.lib("olib/lib/libo.so", "libo.so", f"-L{tree.root}/dep", "-ldep", "-Wl,--disable-new-dtags",
             "-Wl,-rpath,$ORIGIN/../../dep")
    program = tree.program("bin/olib", f"-L{tree.root}/olib/lib", "-lo", "-Wl,--enable-new-dtags",
                           f"-Wl,-rpath,{tree.root}/olib/lib", f"-Wl,-rpath-link,{tree.root}/dep")
    resolution = assert_matches_ldd(program)
    dep = next(lib for lib in resolution.libraries if lib.name == "libdep.so")
    assert dep.found_in == "RPATH" and dep.path == f"{tree.root}/olib/lib/../../dep/libdep.so"


def test_a_missing_library_is_reported_with_who_needs_it(tree: Tree) -> None:
    gone = tree.lib("gone/libgone.so", "libgone.so")
    program = tree.program("bin/missing", f"-L{tree.root}/gone", "-lgone")
    gone.unlink()
    resolution = assert_matches_ldd(program)
    assert resolution.missing == (elf.Missing("libgone.so", program,
                                              "cannot open shared object file: No such file or directory"),)
    assert not resolution.complete


def test_a_library_of_the_other_class_is_skipped(tree: Tree) -> None:
    write(tree.root / "wrong" / "libdep.so", elf_image(bits=32, machine=EM_386, soname="libdep.so"))
    program = tree.program("bin/wrongclass", f"-L{tree.root}/dep", "-ldep", "-Wl,--disable-new-dtags",
                           f"-Wl,-rpath,{tree.root}/wrong:{tree.root}/dep")
    resolution = assert_matches_ldd(program)
    assert resolution.libraries[0].path == f"{tree.root}/dep/libdep.so"
    only_wrong = tree.program("bin/onlywrong", f"-L{tree.root}/dep", "-ldep", "-Wl,--disable-new-dtags",
                              f"-Wl,-rpath,{tree.root}/wrong")
    resolution = assert_matches_ldd(only_wrong)
    assert resolution.missing[0].reason == "wrong ELF class: ELFCLASS32"


def test_glibc_hwcaps_and_legacy_subdirectories_come_first(tree: Tree) -> None:
    hwcaps = elf.host_hwcaps(elf.Abi(elf.ELFCLASS64, elf.ELFDATA2LSB, EM_X86_64, 0))
    for rel in ("hw/libdep.so", "hw/tls/libdep.so", *(f"hw/glibc-hwcaps/{name}/libdep.so" for name in hwcaps.glibc_hwcaps[1:])):
        write(tree.root / rel, (tree.root / "dep" / "libdep.so").read_bytes())
    program = tree.program("bin/hwcaps", f"-L{tree.root}/dep", "-ldep", "-Wl,--disable-new-dtags",
                           f"-Wl,-rpath,{tree.root}/hw")
    resolution = assert_matches_ldd(program)
    best = f"glibc-hwcaps/{hwcaps.glibc_hwcaps[1]}/" if len(hwcaps.glibc_hwcaps) > 1 else "tls/"
    assert resolution.libraries[0].path == f"{tree.root}/hw/{best}libdep.so"
    shutil.rmtree(tree.root / "hw" / "glibc-hwcaps", ignore_errors=True)
    assert assert_matches_ldd(program).libraries[0].path == f"{tree.root}/hw/tls/libdep.so"


def test_lib_and_platform_tokens(tree: Tree) -> None:
    program = tree.program("bin/tokens", f"-L{tree.root}/dep", "-ldep", "-Wl,--disable-new-dtags",
                           f"-Wl,-rpath,{tree.root}/bylib/$LIB:{tree.root}/byplat/${{PLATFORM}}")
    hwcaps = elf.host_hwcaps(elf.Abi.of(elf.read_elf(program)))
    lib_dir = elf.system_dirs(INTERP, elf.Abi.of(elf.read_elf(program)))[0][0].strip("/")  # Debian: lib/x86_64-linux-gnu
    write(tree.root / "byplat" / str(hwcaps.platform) / "libdep.so", (tree.root / "dep" / "libdep.so").read_bytes())
    assert assert_matches_ldd(program).libraries[0].path == f"{tree.root}/byplat/{hwcaps.platform}/libdep.so"
    write(tree.root / "bylib" / lib_dir / "libdep.so", (tree.root / "dep" / "libdep.so").read_bytes())
    assert assert_matches_ldd(program).libraries[0].path == f"{tree.root}/bylib/{lib_dir}/libdep.so"


def test_nodefaultlib_skips_the_system_directories(tree: Tree) -> None:
    program = tree.program("bin/nodeflib", f"-L{tree.root}/dep", "-ldep", "-Wl,-z,nodefaultlib",
                           "-Wl,--disable-new-dtags", f"-Wl,-rpath,{tree.root}/dep")
    resolution = assert_matches_ldd(program)
    assert [item.name for item in resolution.missing] == ["libc.so.6"]


def test_a_needed_path_with_a_slash_is_opened_as_is(tree: Tree) -> None:
    tree.lib("noso/libnoso.so", None)
    program = tree.program("bin/slash", f"{tree.root}/noso/libnoso.so")
    resolution = assert_matches_ldd(program)
    assert (resolution.libraries[0].name, resolution.libraries[0].found_in) == (f"{tree.root}/noso/libnoso.so", "path")


def test_a_file_loaded_under_two_names_is_loaded_once(tree: Tree) -> None:
    alias = tree.lib("alias/libalias.so", "libalias.so")
    program = tree.program("bin/alias", f"-L{tree.root}/dep", "-ldep", f"-L{tree.root}/alias", "-lalias",
                           "-Wl,--disable-new-dtags", f"-Wl,-rpath,{tree.root}/dep:{tree.root}/alias")
    alias.unlink()
    alias.symlink_to(tree.root / "dep" / "libdep.so")
    resolution = assert_matches_ldd(program)
    assert [lib.name for lib in resolution.libraries if "dep" in lib.path] == ["libdep.so"]


def test_a_relative_search_directory_is_not_searched_and_says_so(tree: Tree) -> None:
    program = tree.program("bin/relative", f"-L{tree.root}/dep", "-ldep", "-Wl,--disable-new-dtags",
                           f"-Wl,-rpath,lib:{tree.root}/dep")
    resolution = assert_matches_ldd(program)
    assert any("RPATH entry 'lib'" in warning for warning in resolution.warnings)


@pytest.mark.parametrize("binary", ["/usr/bin/ffprobe", "/bin/ls", "/usr/bin/python3", "/usr/bin/git"])
def test_real_binaries_resolve_as_ldd_lists_them(binary: str) -> None:
    resolution = assert_matches_ldd(binary)
    assert resolution.interpreter == INTERP and resolution.complete


def test_every_program_in_usr_bin_resolves_as_ldd_lists_it() -> None:
    checked = 0
    for entry in sorted(os.scandir("/usr/bin"), key=lambda item: item.name):
        if not entry.is_file(follow_symlinks=False):
            continue
        with open(entry.path, "rb") as handle:
            if handle.read(4) != b"\x7fELF":
                continue
        if elf.read_elf(entry.path).interpreter is None:
            continue
        assert_matches_ldd(entry.path)
        checked += 1
    assert checked > 100


# ------------------------------------------- crafted objects, crafted caches


def crafted(tmp_path: Path, cache: bytes | None = None, **main) -> elf.Resolution:  # type: ignore[no-untyped-def]
    """Resolve a crafted program whose interpreter is a crafted ld.so, with a
    crafted cache and no hwcaps: nothing of the host takes part."""
    interp = write(tmp_path / "rtld" / "ld-test.so.2", elf_image(soname="ld-test.so.2"))
    program = write(tmp_path / "bin" / "prog", elf_image(e_type=ET_EXEC, interp=str(interp), **main))
    cache_path = write(tmp_path / "ld.so.cache", cache or b"", 0o644)
    return elf.resolve(str(program), ld_so_cache=str(cache_path), hwcaps=elf.Hwcaps(),
                       default_dirs=(str(tmp_path / "sys"),))


def test_interpreter_answers_to_its_soname(tmp_path: Path) -> None:
    write(tmp_path / "sys" / "libc.so.6", elf_image(soname="libc.so.6", needed=("ld-test.so.2",)))
    resolution = crafted(tmp_path, needed=("libc.so.6",))
    assert [(lib.name, lib.found_in) for lib in resolution.libraries] == [("libc.so.6", "default")]
    assert resolution.complete and resolution.interpreter == str(tmp_path / "rtld" / "ld-test.so.2")


def test_a_32bit_program_takes_32bit_cache_entries(tmp_path: Path) -> None:
    write(tmp_path / "l32" / "libz.so.1", elf_image(bits=32, machine=EM_386))
    write(tmp_path / "l64" / "libz.so.1", elf_image())
    cache = cache_image([(X8664, "libz.so.1", str(tmp_path / "l64" / "libz.so.1"), 0),
                         (I386, "libz.so.1", str(tmp_path / "l32" / "libz.so.1"), 0)])
    assert crafted(tmp_path, cache, needed=("libz.so.1",)).libraries[0].path == str(tmp_path / "l64" / "libz.so.1")
    interp = write(tmp_path / "rtld" / "ld-32.so.2", elf_image(bits=32, machine=EM_386, soname="ld-32.so.2"))
    program = write(tmp_path / "bin" / "prog32", elf_image(bits=32, machine=EM_386, e_type=ET_EXEC,
                                                           interp=str(interp), needed=("libz.so.1",)))
    resolution = elf.resolve(str(program), ld_so_cache=str(tmp_path / "ld.so.cache"), hwcaps=elf.Hwcaps(),
                             default_dirs=())
    assert resolution.libraries[0].path == str(tmp_path / "l32" / "libz.so.1")


def test_a_cache_hit_outside_the_default_dirs_needs_the_cache_in_the_sandbox(tmp_path: Path) -> None:
    write(tmp_path / "opt" / "libo.so", elf_image())
    write(tmp_path / "sys" / "libs.so", elf_image())
    cache = cache_image([(X8664, "libo.so", str(tmp_path / "opt" / "libo.so"), 0),
                         (X8664, "libs.so", str(tmp_path / "sys" / "libs.so"), 0)])
    only_sys = crafted(tmp_path, cache, needed=("libs.so",))
    assert only_sys.libraries[0].found_in == "ld.so.cache" and not only_sys.needs_ld_so_cache
    assert str(tmp_path / "ld.so.cache") not in only_sys.paths_to_bind()
    with_opt = crafted(tmp_path, cache, needed=("libs.so", "libo.so"))
    assert with_opt.needs_ld_so_cache
    assert str(tmp_path / "ld.so.cache") in with_opt.paths_to_bind()


def test_a_filter_must_load_and_an_auxiliary_may_not(tmp_path: Path) -> None:
    write(tmp_path / "sys" / "libf.so", elf_image())
    resolution = crafted(tmp_path, filters=((DT_AUXILIARY, "libnope.so"), (DT_FILTER, "libf.so")))
    assert [lib.name for lib in resolution.libraries] == ["libf.so"] and resolution.complete
    resolution = crafted(tmp_path, filters=((DT_FILTER, "libnope.so"),))
    assert [item.name for item in resolution.missing] == ["libnope.so"]


def test_a_broken_candidate_stops_the_search_with_the_loaders_error(tmp_path: Path) -> None:
    # A linker script where a library should be (as /usr/lib/x86_64-linux-gnu/libc.so is).
    write(tmp_path / "early" / "libb.so", b"/* GNU ld script */\nOUTPUT_FORMAT(elf64-x86-64)\nGROUP ( libb.so.1 )\n")
    write(tmp_path / "sys" / "libb.so", elf_image())
    resolution = crafted(tmp_path, needed=("libb.so",), rpath=str(tmp_path / "early"))
    assert resolution.missing == (elf.Missing("libb.so", str(tmp_path / "bin" / "prog"),
                                              f"{tmp_path}/early/libb.so: invalid ELF header"),)


def test_a_library_without_interpreter_cannot_be_started(tmp_path: Path) -> None:
    path = write(tmp_path / "lib.so", elf_image(needed=("libc.so.6",)))
    with pytest.raises(ValueError, match="names no interpreter"):
        elf.resolve(str(path))


def test_a_missing_interpreter_is_missing(tmp_path: Path) -> None:
    program = write(tmp_path / "prog", elf_image(e_type=ET_EXEC, interp=str(tmp_path / "no-ld.so")))
    resolution = elf.resolve(str(program), default_dirs=())
    assert resolution.missing[0].name == str(tmp_path / "no-ld.so")
    assert "interpreter: No such file or directory" in resolution.missing[0].reason


# ------------------------------------------------------------- what to bind


def test_paths_to_bind_hold_each_opened_path_and_its_real_file(tmp_path: Path) -> None:
    real = write(tmp_path / "store" / "libr.so.1.2", elf_image(soname="libr.so.1"))
    (tmp_path / "store" / "libr.so.1").symlink_to("libr.so.1.2")
    (tmp_path / "dirlink").symlink_to("store")
    resolution = crafted(tmp_path, needed=("libr.so.1",), runpath=f"{tmp_path}/dirlink/../dirlink")
    assert resolution.libraries[0].path == f"{tmp_path}/dirlink/../dirlink/libr.so.1"
    paths = resolution.paths_to_bind()
    assert f"{tmp_path}/dirlink/libr.so.1" in paths and str(real) in paths
    layout = resolution.layout()
    assert str(real) in layout.files
    assert (str(tmp_path / "dirlink"), "store") in layout.symlinks
    assert (str(tmp_path / "store" / "libr.so.1"), "libr.so.1.2") in layout.symlinks


def test_resolve_links_applies_dotdot_after_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    (tmp_path / "l").symlink_to("a/b")
    walk = elf.resolve_links(f"{tmp_path}/l/../b/f")  # ../ of a/b is a, not tmp_path
    assert walk.target == f"{tmp_path}/a/b/f"
    assert walk.links == ((f"{tmp_path}/l", "a/b"),)
