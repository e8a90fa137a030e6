"""The files the dynamic loader will open for one binary, found without running anything.

``Sandbox.for_executable`` (SPEC §9) gives a trusted binary a root holding the
binary, the shared libraries its ELF headers name, its loader, and nothing
else of the host. This module works out that list the way glibc's ``ld.so``
does it (2.36, as Debian 12 ships it), by reading files only: running the
binary, or ``ldd`` (which runs the loader on it, and some loaders run the
program), would execute code before it is confined.

What is followed, and where in glibc (``elf/``):

* ``_dl_map_object_deps`` (dl-deps.c): breadth first from the executable's
  ``DT_NEEDED`` entries; each object is loaded once, the loader of a
  dependency being the object whose ``DT_NEEDED`` first named it.
* ``_dl_map_object`` (dl-load.c): an object already loaded answers to the
  names it was asked by, the path it was opened at, and its ``DT_SONAME`` (so
  ``ld-linux-x86-64.so.2`` is the interpreter, never searched for); a name with
  a slash is a path (after ``$ORIGIN``/``$LIB``/``$PLATFORM`` expansion);
  otherwise the search order is the ``DT_RPATH`` of the requesting object and
  of its loaders up to the executable (only when the requesting object has no
  ``DT_RUNPATH``), ``LD_LIBRARY_PATH``, the requesting object's own
  ``DT_RUNPATH`` (not inherited), ``/etc/ld.so.cache`` (entries under the
  default directories skipped for a ``DF_1_NODEFLIB`` object), then the
  default directories (not at all for ``DF_1_NODEFLIB``).
* ``open_path``/``open_verify``: in each directory the ``glibc-hwcaps``
  subdirectories this CPU supports and the legacy hwcaps subdirectories are
  tried before the directory itself; a file of the other ELF class or another
  machine is skipped (the search goes on); a file that is not a usable ELF
  object at all stops the load with an error.
* ``_dl_map_object_from_fd``: a file already loaded under another name (same
  device and inode) is that object.
* dl-cache.c: the ``glibc-ld.so.cache1.1`` format (with the ``ld.so-1.7.0``
  prefix of the compatibility format), entries chosen by the flags of the
  binary's ABI and, among ``glibc-hwcaps`` entries, by this CPU's priority.

Resolved for a clean environment, as the sandbox runs the binary: no
``LD_LIBRARY_PATH``, ``LD_PRELOAD``, ``/etc/ld.so.preload`` (the sandbox has
none), ``GLIBC_TUNABLES`` or audit modules; not setuid. The default
directories are the ones compiled into the binary's own interpreter (read
from its file: glibc keeps them as a string table beside their lengths), so
Debian's multiarch list and an upstream ``/lib64`` build are both right.

Limits (what ld.so does that this does not): hwcaps subdirectories are
computed for x86-64 only (from ``/proc/cpuinfo``; other machines search the
directory itself, which the loader inside the sandbox falls back to when a
preferred subdirectory is not bound); relative search directories (an empty or
relative ``RPATH``/``RUNPATH`` element, a relative ``DT_NEEDED`` path) depend on
the working directory of the run and are not searched (listed in
``warnings``); ``DT_AUXILIARY``/``DT_FILTER`` objects are loaded but their
position in the order is not moved before their filter; the x86 ISA level
marker check (``GNU_PROPERTY_X86_ISA_1_NEEDED``) done after mapping is not
made; objects ``dlopen``ed at run time (plugins, NSS modules, iconv
gconv modules) are invisible to any static reading.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections import deque
from dataclasses import dataclass, field

LD_SO_CACHE = "/etc/ld.so.cache"

# ---------------------------------------------------------------- ELF reading

ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
EV_CURRENT = 1
ELFOSABI_SYSV, ELFOSABI_GNU = 0, 3
ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
DT_FLAGS_1 = 0x6FFFFFFB
DT_AUXILIARY, DT_FILTER = 0x7FFFFFFD, 0x7FFFFFFF
DF_1_NODEFLIB, DF_1_PIE = 0x800, 0x08000000
EM_386, EM_SPARC, EM_MIPS, EM_PPC, EM_PPC64, EM_S390 = 3, 2, 8, 20, 21, 22
EM_ARM, EM_SPARCV9, EM_IA_64, EM_X86_64, EM_AARCH64, EM_RISCV = 40, 43, 50, 62, 183, 243
# LIBC_ABI_MAX of glibc 2.36 (libc-abis: UNIQUE, IFUNC, ABSOLUTE): the highest
# EI_ABIVERSION an ELFOSABI_GNU object may carry, plus one.
_LIBC_ABI_MAX = 4
# open_verify reads at most this much before the program headers (struct filebuf).
_HEADER_READ = 832

_EHDR = {ELFCLASS32: "16sHHIIIIIHHHHHH", ELFCLASS64: "16sHHIQQQIHHHHHH"}
_PHDR = {ELFCLASS32: "IIIIIIII", ELFCLASS64: "IIQQQQQQ"}
_DYN = {ELFCLASS32: "iI", ELFCLASS64: "qQ"}


@dataclass(frozen=True)
class ElfFile:
    """What the loader reads of one ELF file: its identity and its dynamic section."""

    path: str
    elf_class: int  # ELFCLASS32 or ELFCLASS64
    data: int  # ELFDATA2LSB or ELFDATA2MSB
    ident_version: int
    osabi: int
    abiversion: int
    padding_zero: bool
    type: int
    machine: int
    version: int
    flags: int  # e_flags (the float ABI on ARM and RISC-V)
    phentsize: int
    has_load: bool
    has_dynamic: bool
    interpreter: str | None = None
    needed: tuple[str, ...] = ()
    # DT_AUXILIARY / DT_FILTER names, as (tag, name), in dynamic-section order.
    filters: tuple[tuple[int, str], ...] = ()
    soname: str | None = None
    rpath: str | None = None  # None when the object has a DT_RUNPATH (get-dynamic-info.h)
    runpath: str | None = None
    flags_1: int = 0

    @property
    def bits(self) -> int:
        return 64 if self.elf_class == ELFCLASS64 else 32


class ElfError(ValueError):
    """A file the loader would refuse to load (the message names the file and the reason)."""


def read_elf(path: str) -> ElfFile:
    """Read the ELF header, program headers and dynamic section of ``path``.

    Raises ``ElfError`` (a ``ValueError``) when the file is no ELF file or is
    cut short, and ``OSError`` when it cannot be read.
    """
    with open(path, "rb") as handle:
        return _parse_elf(path, handle)


def _parse_elf(path: str, handle) -> ElfFile:  # type: ignore[no-untyped-def]
    head = handle.read(_HEADER_READ)
    # open_verify checks the length (of its own class's header) before the magic.
    if len(head) < struct.calcsize(_EHDR[ELFCLASS32]):
        raise ElfError(f"{path}: file too short")
    if head[:4] != b"\x7fELF":
        raise ElfError(f"{path}: invalid ELF header")
    elf_class, data = head[4], head[5]
    if elf_class not in _EHDR or data not in (ELFDATA2LSB, ELFDATA2MSB):
        raise ElfError(f"{path}: unknown ELF class {elf_class} or data encoding {data}")
    order = "<" if data == ELFDATA2LSB else ">"
    ehdr_format = order + _EHDR[elf_class]
    if len(head) < struct.calcsize(ehdr_format):
        raise ElfError(f"{path}: file too short")
    (ident, e_type, machine, version, _entry, phoff, _shoff, flags, _ehsize, phentsize, phnum,
     *_rest) = struct.unpack_from(ehdr_format, head)
    base = dict(path=path, elf_class=elf_class, data=data, ident_version=ident[6], osabi=ident[7],
                abiversion=ident[8], padding_zero=not any(ident[9:16]), type=e_type, machine=machine,
                version=version, flags=flags, phentsize=phentsize)
    phdr_format = order + _PHDR[elf_class]
    if phentsize != struct.calcsize(phdr_format):
        return ElfFile(has_load=False, has_dynamic=False, **base)
    segments = _program_headers(path, handle, phdr_format, phoff, phnum, elf_class)
    loads = [seg for seg in segments if seg[0] == PT_LOAD]
    dynamic = next((seg for seg in segments if seg[0] == PT_DYNAMIC), None)
    interp = next((seg for seg in segments if seg[0] == PT_INTERP), None)
    details: dict = {}
    if interp is not None:
        details["interpreter"] = _read_at(path, handle, interp[1], interp[4]).split(b"\0", 1)[0].decode(
            "utf-8", "surrogateescape")
    if dynamic is not None:
        details.update(_dynamic_section(path, handle, order + _DYN[elf_class], dynamic, loads))
    return ElfFile(has_load=bool(loads), has_dynamic=dynamic is not None, **base, **details)


def _program_headers(path: str, handle, fmt: str, phoff: int, phnum: int, elf_class: int) -> list[tuple]:  # type: ignore[no-untyped-def]
    """(p_type, p_offset, p_vaddr, p_filesz) of each program header, in file order.

    The 32- and 64-bit layouts order the fields differently (p_flags moved).
    """
    size = struct.calcsize(fmt)
    table = _read_at(path, handle, phoff, size * phnum)
    headers = []
    for index in range(phnum):
        fields = struct.unpack_from(fmt, table, index * size)
        if elf_class == ELFCLASS64:
            p_type, _flags, offset, vaddr, _paddr, filesz, _memsz, _align = fields
        else:
            p_type, offset, vaddr, _paddr, filesz, _memsz, _flags, _align = fields
        headers.append((p_type, offset, vaddr, _paddr, filesz))
    return headers


def _read_at(path: str, handle, offset: int, size: int) -> bytes:  # type: ignore[no-untyped-def]
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise ElfError(f"{path}: cannot read file data (offset {offset}, {size} bytes, past the end)")
    return data


def _vaddr_to_offset(path: str, loads: list[tuple], vaddr: int) -> int:
    """File offset of a virtual address, through the PT_LOAD segment that maps it
    (DT_STRTAB is an address in the loaded image, not a file offset)."""
    for _type, offset, seg_vaddr, _paddr, filesz in loads:
        if seg_vaddr <= vaddr < seg_vaddr + filesz:
            return vaddr - seg_vaddr + offset
    raise ElfError(f"{path}: DT_STRTAB address {vaddr:#x} is in no loadable segment")


def _dynamic_section(path: str, handle, fmt: str, dynamic: tuple, loads: list[tuple]) -> dict:  # type: ignore[no-untyped-def]
    _type, offset, _vaddr, _paddr, filesz = dynamic
    size = struct.calcsize(fmt)
    raw = _read_at(path, handle, offset, filesz - filesz % size)
    entries = []
    for index in range(len(raw) // size):
        tag, value = struct.unpack_from(fmt, raw, index * size)
        if tag == DT_NULL:
            break
        entries.append((tag, value))
    strtab = next((value for tag, value in entries if tag == DT_STRTAB), None)
    strsz = next((value for tag, value in entries if tag == DT_STRSZ), None)
    names = {DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH, DT_AUXILIARY, DT_FILTER}
    if strtab is None:
        if any(tag in names for tag, _value in entries):
            raise ElfError(f"{path}: dynamic section names strings but has no DT_STRTAB")
        return {}
    table = _read_at(path, handle, _vaddr_to_offset(path, loads, strtab), strsz or 0) if strsz else None

    def string(index: int) -> str:
        if table is None or index >= len(table):
            raise ElfError(f"{path}: string index {index} is outside DT_STRTAB")
        return table[index:table.index(b"\0", index) if b"\0" in table[index:] else len(table)].decode(
            "utf-8", "surrogateescape")

    found: dict = {"needed": [], "filters": []}
    for tag, value in entries:
        if tag == DT_NEEDED:
            found["needed"].append(string(value))
        elif tag in (DT_AUXILIARY, DT_FILTER):
            found["filters"].append((tag, string(value)))
        elif tag == DT_SONAME:
            found["soname"] = string(value)
        elif tag == DT_RPATH:
            found["rpath"] = string(value)
        elif tag == DT_RUNPATH:
            found["runpath"] = string(value)
        elif tag == DT_FLAGS_1:
            found["flags_1"] = value
    if "runpath" in found:
        found.pop("rpath", None)  # "If both RUNPATH and RPATH are given, the latter is ignored."
    found["needed"] = tuple(found["needed"])
    found["filters"] = tuple(found["filters"])
    return found


# ------------------------------------------------------- what a loader accepts


@dataclass(frozen=True)
class Abi:
    """The ABI one loader serves: an object must match it to be loaded."""

    elf_class: int
    data: int
    machine: int
    flags: int

    @classmethod
    def of(cls, elf: ElfFile) -> "Abi":
        return cls(elf.elf_class, elf.data, elf.machine, elf.flags)


def loader_verdict(elf: ElfFile, abi: Abi) -> str | None:
    """What ``open_verify`` and ``_dl_map_object_from_fd`` make of a candidate file.

    ``None``: loadable. ``"skip"``: of the other class or another machine, so
    the loader goes on searching (a 32-bit library in a 64-bit search path).
    Anything else is the loader's error message: the load fails there.
    """
    if elf.elf_class != abi.elf_class:
        return "skip"
    if elf.data != abi.data:
        return "ELF file data encoding not " + ("little-endian" if abi.data == ELFDATA2LSB else "big-endian")
    if elf.ident_version != EV_CURRENT:
        return "ELF file version ident does not match current one"
    if elf.osabi not in (ELFOSABI_SYSV, ELFOSABI_GNU):
        return "ELF file OS ABI invalid"
    if not (elf.abiversion == 0 or (elf.osabi == ELFOSABI_GNU and elf.abiversion < _LIBC_ABI_MAX)):
        return "ELF file ABI version invalid"
    if not elf.padding_zero:
        return "nonzero padding in e_ident"
    if elf.version != EV_CURRENT:
        return "ELF file version does not match current one"
    if elf.machine != abi.machine:
        return "skip"
    if elf.type not in (ET_DYN, ET_EXEC):
        return "only ET_DYN and ET_EXEC can be loaded"
    if elf.phentsize != struct.calcsize(_PHDR[elf.elf_class]):
        return "ELF file's phentsize not the expected size"
    if not elf.has_load:
        return "object file has no loadable segments"
    if elf.type != ET_DYN:
        return "cannot dynamically load executable"
    if not elf.has_dynamic:
        return "object file has no dynamic section"
    if elf.flags_1 & DF_1_PIE:
        return "cannot dynamically load position-independent executable"
    return None


# Cache entry flags (sysdeps/generic/ldconfig.h): the low byte is the library
# type (3: ELF, libc6), the high byte the ABI the loader of each machine wants.
_FLAG_ELF, _FLAG_ELF_LIBC6 = 0x0001, 0x0003
_EF_ARM_ABI_FLOAT_SOFT, _EF_ARM_ABI_FLOAT_HARD = 0x200, 0x400
_EF_RISCV_FLOAT_ABI, _EF_RISCV_FLOAT_ABI_DOUBLE = 0x6, 0x4
_EF_MIPS_ABI2, _EF_MIPS_NAN2008 = 0x20, 0x400


def cache_flags(abi: Abi) -> frozenset[int]:
    """The ld.so.cache entry flags the loader of ``abi`` accepts (its
    ``_dl_cache_check_flags``, sysdeps/unix/sysv/linux/*/dl-cache.h)."""
    machine, bits = abi.machine, 64 if abi.elf_class == ELFCLASS64 else 32
    exact = {
        (EM_X86_64, 64): 0x0303, (EM_X86_64, 32): 0x0803, (EM_AARCH64, 64): 0x0A03,
        (EM_PPC64, 64): 0x0503, (EM_S390, 64): 0x0403, (EM_SPARCV9, 64): 0x0103, (EM_IA_64, 64): 0x0203,
    }
    if (machine, bits) in exact:
        return frozenset({exact[machine, bits]})
    if machine == EM_ARM:
        hard = abi.flags & _EF_ARM_ABI_FLOAT_HARD
        return frozenset({(0x0900 if hard else 0x0B00) | _FLAG_ELF_LIBC6, _FLAG_ELF_LIBC6})
    if machine == EM_RISCV:
        double = abi.flags & _EF_RISCV_FLOAT_ABI == _EF_RISCV_FLOAT_ABI_DOUBLE
        return frozenset({(0x1000 if double else 0x0F00) | _FLAG_ELF_LIBC6})
    if machine == EM_MIPS:
        nan2008 = bool(abi.flags & _EF_MIPS_NAN2008)
        if bits == 64:
            return frozenset({(0x0E00 if nan2008 else 0x0700) | _FLAG_ELF_LIBC6})
        if abi.flags & _EF_MIPS_ABI2:
            return frozenset({(0x0D00 if nan2008 else 0x0600) | _FLAG_ELF_LIBC6})
        if nan2008:
            return frozenset({0x0C00 | _FLAG_ELF_LIBC6})
    return frozenset({_FLAG_ELF, _FLAG_ELF_LIBC6})  # the generic check (i386, 32-bit others)


# ------------------------------------------------------------ CPU and hwcaps

# x86 glibc-hwcaps (sysdeps/x86/get-isa-level.h, as /proc/cpuinfo names the features).
_X86_BASELINE = ("cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2")
_X86_V2 = ("cx16", "lahf_lm", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2")
_X86_V3 = ("avx", "avx2", "f16c", "fma", "abm", "movbe")  # abm: LZCNT
_X86_V4 = ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
_X86_HASWELL = ("avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "popcnt")
# Cache hwcap bits (sysdeps/x86/dl-hwcap.h, dl-procinfo.h, dl-cache.h).
_HWCAP_X86_64, _HWCAP_X86_AVX512_1 = 1 << 1, 1 << 2
_X86_PLATFORMS = ("i586", "i686", "haswell", "xeon_phi")  # bit 48 + index
_X86_PLATFORM_MASK = 0xF << 48
_HWCAP_TLS = 1 << 63
_HWCAP_EXTENSION = 1 << 62
_ISA_LEVEL_MASK = (1 << 10) - 1


@dataclass(frozen=True)
class Hwcaps:
    """The subdirectories one loader tries in each search directory, and how
    it ranks hwcaps entries of ld.so.cache (elf/dl-hwcaps.c)."""

    glibc_hwcaps: tuple[str, ...] = ()  # supported glibc-hwcaps names, best first
    legacy: tuple[str, ...] = ()  # legacy names, in path order: "tls", platform, hwcap strings
    hwcap: int = 0  # the cache's legacy hwcap bits this CPU has (dl_hwcap & hwcap_mask)
    platform_bit: int = 0  # the cache's bit for the loader's platform (0: none)
    platform_mask: int = 0  # the cache's platform bits (_DL_HWCAP_PLATFORM; x86 only)
    isa_levels: int = 1  # GNU_PROPERTY_X86_ISA_1_* bits the CPU supports (bit 0: baseline)
    platform: str | None = None  # $PLATFORM

    def subdirectories(self) -> list[str]:
        """Every subdirectory prefix, in the order the loader tries them (the
        directory itself, "", last)."""
        prefixes = [f"glibc-hwcaps/{name}/" for name in self.glibc_hwcaps]
        count = len(self.legacy)
        for subset in range((1 << count) - 1, -1, -1):  # the power set, largest first
            chosen = [name for index, name in enumerate(self.legacy) if subset & (1 << (count - 1 - index))]
            prefixes.append("".join(name + "/" for name in chosen))
        return prefixes


def host_hwcaps(abi: Abi, cpuinfo: str | None = None) -> Hwcaps:
    """The hwcaps of this machine's loader for ``abi``.

    Exact for x86-64 objects on an x86-64 CPU (the features are read from
    /proc/cpuinfo, where glibc asks CPUID). For any other ABI only the
    directory itself and ``tls`` are searched.
    """
    if abi.machine != EM_X86_64 or abi.elf_class != ELFCLASS64 or os.uname().machine != "x86_64":
        return Hwcaps(legacy=("tls",), platform=os.uname().machine)
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read()
        except OSError:
            cpuinfo = ""
    return _x86_64_hwcaps(cpuinfo)


def _x86_64_hwcaps(cpuinfo: str) -> Hwcaps:
    flags: set[str] = set()
    vendor = ""
    for line in cpuinfo.splitlines():
        key, _sep, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "vendor_id" and not vendor:
            vendor = value.strip()
    levels = 0
    for bit, needs in enumerate((_X86_BASELINE, _X86_V2, _X86_V3, _X86_V4)):
        if not flags.issuperset(needs):
            break
        levels |= 1 << bit
    supported = [f"x86-64-v{level}" for level in (4, 3, 2) if levels & (1 << (level - 1))]
    hwcap, hwcap_names, platform = _HWCAP_X86_64, ["x86_64"], None
    if vendor == "GenuineIntel":  # cpu-features.c: only Intel CPUs get a platform name
        if "avx512cd" in flags:
            if "avx512er" in flags:
                if "avx512pf" in flags:
                    platform = "xeon_phi"
            elif flags.issuperset(("avx512bw", "avx512dq", "avx512vl")):
                hwcap |= _HWCAP_X86_AVX512_1
                hwcap_names.insert(0, "avx512_1")
        if platform is None and flags.issuperset(_X86_HASWELL):
            platform = "haswell"
    platform_bit = 1 << (48 + _X86_PLATFORMS.index(platform)) if platform else 0
    # Path order: tls, the platform (AT_PLATFORM, "x86_64", unless glibc named one), then
    # the hwcap strings from the highest bit down (dl-hwcaps.c builds them reversed).
    legacy = ("tls", platform or "x86_64", *hwcap_names)
    return Hwcaps(tuple(supported), legacy, hwcap, platform_bit, _X86_PLATFORM_MASK, levels, platform or "x86_64")


# --------------------------------------------------------------- ld.so.cache

_CACHEMAGIC = b"ld.so-1.7.0"
_CACHEMAGIC_NEW = b"glibc-ld.so.cache1.1"
_EXTENSION_MAGIC = 0xEAA42174  # (uint32_t) -358342284
_EXTENSION_TAG_GLIBC_HWCAPS = 1


@dataclass(frozen=True)
class CacheEntry:
    flags: int
    key: str
    value: str
    hwcap: int | None  # None in the old format (no hwcap field)


class LdSoCache:
    """A parsed /etc/ld.so.cache (glibc elf/dl-cache.c, sysdeps/generic/dl-cache.h).

    Entries keep their file order; lookups see the entries whose name compares
    equal under ``_dl_cache_libcmp`` (digit runs compared as numbers) in that
    order, which is what glibc's binary search walks.
    """

    def __init__(self, entries: list[CacheEntry], hwcaps_names: list[str]) -> None:
        self.entries = entries
        self.hwcaps_names = hwcaps_names
        self._by_key: dict[str, list[CacheEntry]] = {}
        for entry in entries:
            self._by_key.setdefault(_libcmp_key(entry.key), []).append(entry)

    @classmethod
    def load(cls, path: str = LD_SO_CACHE) -> "LdSoCache | None":
        """The cache at ``path``, or None when it is absent or unusable (the
        loader then goes on without one)."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            return None
        return cls.parse(data)

    @classmethod
    def parse(cls, data: bytes) -> "LdSoCache | None":
        if data.startswith(_CACHEMAGIC_NEW):
            return _parse_new(data, 0)
        if data.startswith(_CACHEMAGIC) and len(data) > 16:
            (nlibs,) = struct.unpack_from("=I", data, 12)
            if (len(data) - 16) // 12 < nlibs:
                return None
            offset = (16 + nlibs * 12 + 7) & ~7  # ALIGN_CACHE: the new header is 8-aligned
            if data[offset:offset + len(_CACHEMAGIC_NEW)] == _CACHEMAGIC_NEW:
                return _parse_new(data, offset)
            return _parse_old(data, nlibs)
        return None

    def lookup(self, name: str, accepted_flags: frozenset[int], hwcaps: Hwcaps) -> str | None:
        """The file the loader takes from the cache for ``name`` (``search_cache``)."""
        best: str | None = None
        best_priority = 0
        default_id = max(accepted_flags)
        hwcap_exclude = ~(hwcaps.hwcap | hwcaps.platform_mask | _HWCAP_TLS) & ((1 << 64) - 1)
        for entry in self._by_key.get(_libcmp_key(name), ()):
            if entry.flags not in accepted_flags:
                continue
            named = False
            if entry.hwcap is not None:
                named = (entry.hwcap >> 32) & ~_ISA_LEVEL_MASK == _HWCAP_EXTENSION >> 32
                if named and not _isa_level_ok(entry.hwcap, hwcaps.isa_levels):
                    continue
                if not named and best is not None:
                    break  # the glibc-hwcaps entries come first; one of them won
                if not named and entry.hwcap & hwcap_exclude:
                    continue
                platform = entry.hwcap & hwcaps.platform_mask
                if platform and platform != hwcaps.platform_bit:
                    continue
                if named:
                    priority = self._priority(entry.hwcap & 0xFFFFFFFF, hwcaps)
                    if priority == 0 or (best is not None and priority >= best_priority):
                        continue
                    best_priority = priority
            best = entry.value
            if not named and entry.flags == default_id:
                break
        return best

    def _priority(self, index: int, hwcaps: Hwcaps) -> int:
        """1 for the best supported glibc-hwcaps subdirectory, 0 for an unsupported one."""
        if index >= len(self.hwcaps_names) or self.hwcaps_names[index] not in hwcaps.glibc_hwcaps:
            return 0
        return hwcaps.glibc_hwcaps.index(self.hwcaps_names[index]) + 1


def _isa_level_ok(hwcap: int, cpu_levels: int) -> bool:
    level = 1 << ((hwcap >> 32) & _ISA_LEVEL_MASK)
    return level & cpu_levels == level


def _libcmp_key(name: str) -> str:
    """A key equal for two names exactly when ``_dl_cache_libcmp`` finds them equal."""
    return re.sub(r"[0-9]+", lambda match: str(int(match.group())), name)


def _cstring(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    return data[offset:end if end >= 0 else len(data)].decode("utf-8", "surrogateescape")


def _parse_new(data: bytes, base: int) -> LdSoCache | None:
    header = data[base:base + 48]
    if len(header) < 48:
        return None
    endian_flag = header[28] & 3
    if endian_flag == 1:  # cache_file_new_flags_endian_invalid
        return None
    host = "<" if struct.pack("=I", 1) == struct.pack("<I", 1) else ">"
    order = {0: host, 2: "<", 3: ">"}[endian_flag]
    if endian_flag and order != host:
        return None  # written for a loader of the other byte order: glibc ignores it
    nlibs, _strings = struct.unpack_from(order + "II", header, 20)
    (extension_offset,) = struct.unpack_from(order + "I", header, 32)
    size = len(data) - base
    if (size - 48) // 24 < nlibs:
        return None
    view = data[base:]
    entries = []
    for index in range(nlibs):
        flags, key, value, _osversion, hwcap = struct.unpack_from(order + "iIIIQ", view, 48 + index * 24)
        if key >= size or value >= size:
            continue  # _dl_cache_verify_ptr: a bogus index is never used
        entries.append(CacheEntry(flags, _cstring(view, key), _cstring(view, value), hwcap))
    return LdSoCache(entries, _hwcaps_section(view, order, extension_offset))


def _hwcaps_section(view: bytes, order: str, offset: int) -> list[str]:
    """The names of the cache_extension_tag_glibc_hwcaps section (cache_extension_load)."""
    if offset == 0 or offset % 4 or offset + 8 > len(view):
        return []
    magic, count = struct.unpack_from(order + "II", view, offset)
    if magic != _EXTENSION_MAGIC or offset + 8 + count * 16 > len(view):
        return []
    for index in range(count):
        tag, _flags, start, size = struct.unpack_from(order + "IIII", view, offset + 8 + index * 16)
        if tag != _EXTENSION_TAG_GLIBC_HWCAPS:
            continue
        if size == 0 or start % 4 or size % 4 or start + size > len(view):
            return []
        indices = struct.unpack_from(order + f"{size // 4}I", view, start)
        return [_cstring(view, item) if item < len(view) else "" for item in indices]
    return []


def _parse_old(data: bytes, nlibs: int) -> LdSoCache:
    strings = 16 + nlibs * 12
    table = data[strings:]
    entries = []
    for index in range(nlibs):
        flags, key, value = struct.unpack_from("=iII", data, 16 + index * 12)
        if key < len(table) and value < len(table):
            entries.append(CacheEntry(flags, _cstring(table, key), _cstring(table, value), None))
    return LdSoCache(entries, [])


# ------------------------------------------------------- the interpreter's dirs


def system_dirs(interpreter: str, abi: Abi) -> tuple[tuple[str, ...], str]:
    """The default directories compiled into ``interpreter`` and where they came from.

    glibc keeps them in ld.so (dl-load.c) as ``system_dirs``, one
    NUL-separated string of directories each ending in "/", and
    ``system_dirs_len``, an array of their lengths in the interpreter's word
    size, which the compiler places just before it. A string whose lengths
    array sits there is believed; failing that, one of two or more
    directories whose lengths array is anywhere in the file. Otherwise (not
    glibc, unreadable) the upstream defaults for the class are returned, with
    "fallback".
    """
    try:
        with open(interpreter, "rb") as handle:
            image = handle.read()
    except OSError:
        image = b""
    word = "Q" if abi.elf_class == ELFCLASS64 else "I"
    order = "<" if abi.data == ELFDATA2LSB else ">"
    weaker = None
    for match in re.finditer(rb"\0((?:/[\x21-\x7e]*/\0)+)", image):
        dirs = match.group(1).split(b"\0")[:-1]
        lengths = struct.pack(order + word * len(dirs), *(len(item) for item in dirs))
        if image[match.start(1) - len(lengths):match.start(1)] == lengths:
            return tuple(item.decode() for item in dirs), "interpreter"
        if weaker is None and len(dirs) > 1 and lengths in image:
            weaker = tuple(item.decode() for item in dirs)
    if weaker is not None:
        return weaker, "interpreter"
    if abi.elf_class == ELFCLASS64:
        return ("/lib64/", "/usr/lib64/"), "fallback"
    return ("/lib/", "/usr/lib/"), "fallback"


# ------------------------------------------------------------------- results


@dataclass(frozen=True)
class Library:
    """One shared object the loader maps, besides the executable and the interpreter."""

    name: str  # the DT_NEEDED (or filter) string that first asked for it, expanded
    path: str  # the path the loader opens, as it forms it
    needed_by: str  # the path of the object whose DT_NEEDED first named it
    found_in: str  # "path", "RPATH", "RUNPATH", "ld.so.cache", "default"
    soname: str | None


@dataclass(frozen=True)
class Missing:
    """A dependency the loader would not load: the run would fail with ``reason``."""

    name: str
    needed_by: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} (needed by {self.needed_by}): {self.reason}"


@dataclass(frozen=True)
class Resolution:
    """Everything the loader opens to start one executable, in load order."""

    executable: str  # absolute, as given (symlinks kept)
    interpreter: str | None  # PT_INTERP as written (None: statically linked)
    libraries: tuple[Library, ...]  # breadth-first, as ld.so maps them (interpreter excluded)
    missing: tuple[Missing, ...]
    default_dirs: tuple[str, ...]
    default_dirs_source: str  # "interpreter" (read from it) or "fallback"
    ld_so_cache: str
    warnings: tuple[str, ...] = ()
    # True when a library was found through ld.so.cache in a directory the loader
    # would not search without it: then the cache must be in the sandbox too.
    needs_ld_so_cache: bool = False

    @property
    def complete(self) -> bool:
        return not self.missing

    def raise_for_missing(self) -> None:
        """Raise ``ValueError`` naming every dependency the loader would not load."""
        if self.missing:
            listed = "; ".join(str(item) for item in self.missing)
            raise ValueError(f"{self.executable}: cannot resolve shared libraries: {listed}")

    def opened_paths(self) -> list[str]:
        """Every path the loader (and the kernel, for the executable and its
        interpreter) opens, as formed, in order."""
        paths = [self.executable]
        if self.interpreter:
            paths.append(self.interpreter)
        paths.extend(library.path for library in self.libraries)
        if self.needs_ld_so_cache:
            paths.append(self.ld_so_cache)
        return paths

    def paths_to_bind(self) -> list[str]:
        """Absolute paths to bind read-only, each onto itself, for the binary to start.

        Each opened path (normalised: a sandbox holding only binds has real
        directories where the host may have symlinks, so ``a/../b`` there is
        ``b``), then the file it finally resolves to on the host when that
        differs (the target of every symlink on the way), so that both the
        name the loader opens and the file behind it exist.
        """
        seen: dict[str, None] = {}
        for path in self.opened_paths():
            seen.setdefault(os.path.normpath(path), None)
            seen.setdefault(resolve_links(path).target, None)
        return list(seen)

    def layout(self) -> "Layout":
        """The same files as on the host, symlinks kept: each regular file to
        bind at its real path, and each symlink met on the way (directories
        included, ``/lib -> usr/lib``) with its target as written."""
        files: dict[str, None] = {}
        links: dict[str, str] = {}
        for path in self.opened_paths():
            walk = resolve_links(path)
            files.setdefault(walk.target, None)
            for link, target in walk.links:
                links.setdefault(link, target)
        return Layout(tuple(files), tuple(links.items()))


@dataclass(frozen=True)
class Layout:
    files: tuple[str, ...]  # real paths of regular files, to bind onto themselves
    symlinks: tuple[tuple[str, str], ...]  # (path of the link, its target as written)


@dataclass(frozen=True)
class LinkWalk:
    links: tuple[tuple[str, str], ...]
    target: str


def resolve_links(path: str) -> LinkWalk:
    """Resolve ``path`` the way the kernel does, recording each symlink met.

    A ``..`` applies to the directory reached so far (after the symlinks
    before it), not to the text, as in path lookup. Raises ``OSError`` for a
    missing component or a loop.
    """
    links: list[tuple[str, str]] = []
    pending = deque(part for part in path.split("/") if part)
    current = "/"
    while pending:
        part = pending.popleft()
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        if stat.S_ISLNK(os.lstat(candidate).st_mode):
            target = os.readlink(candidate)
            links.append((candidate, target))
            if len(links) > 40:
                raise OSError(40, "Too many levels of symbolic links", path)  # ELOOP
            if target.startswith("/"):
                current = "/"
            pending.extendleft(reversed([item for item in target.split("/") if item]))
        else:
            current = candidate
    return LinkWalk(tuple(links), current)


# ------------------------------------------------------------------- resolver


@dataclass
class _Object:
    """An object in the link map: the names it answers to, its search paths."""

    path: str
    elf: ElfFile
    loader: "_Object | None"
    origin: str | None
    names: set[str] = field(default_factory=set)
    rpath: list[str] | None = None  # expanded DT_RPATH directories (None: none)
    runpath: list[str] | None = None
    queued: bool = False  # already in (or through) the breadth-first queue


class _Resolver:
    def __init__(self, executable: str, cache_path: str, hwcaps: Hwcaps | None,
                 default_dirs: tuple[str, ...] | None) -> None:
        self.executable = os.path.abspath(executable)
        self.main_elf = read_elf(self.executable)
        self.abi = Abi.of(self.main_elf)
        self.cache_path = cache_path
        self.hwcaps = hwcaps if hwcaps is not None else host_hwcaps(self.abi)
        self.subdirs = self.hwcaps.subdirectories()
        self.accepted_flags = cache_flags(self.abi)
        interp = self.main_elf.interpreter
        if default_dirs is not None:
            self.default_dirs, self.dirs_source = tuple(_as_dir(item) for item in default_dirs), "given"
        elif interp:
            self.default_dirs, self.dirs_source = system_dirs(interp, self.abi)
        else:
            self.default_dirs, self.dirs_source = (), "static"
        # $LIB is DL_DST_LIB, slibdir without its leading '/': "lib64" upstream, and
        # on Debian (patched) "lib/x86_64-linux-gnu", the first default directory both times.
        self.lib_dst = self.default_dirs[0].strip("/") if self.default_dirs else "lib"
        self._cache: LdSoCache | None | bool = False  # False: not read yet (read on first use, as ld.so)
        self.loaded: list[_Object] = []
        self.by_file: dict[tuple[int, int], _Object] = {}
        self.libraries: list[Library] = []
        self.missing: list[Missing] = []
        self.warnings: list[str] = []
        self.cache_needed = False
        self._isdir: dict[str, bool] = {}
        self._other_class = False  # a candidate of the other ELF class was skipped

    # -- the link map

    def run(self) -> Resolution:
        # The main program's $ORIGIN comes from /proc/self/exe: symlinks resolved.
        main = _Object("", self.main_elf, None, os.path.dirname(os.path.realpath(self.executable)), queued=True)
        if self.main_elf.soname:
            main.names.add(self.main_elf.soname)
        self._init_paths(main, self.executable)
        self.loaded.append(main)
        interp = self.main_elf.interpreter
        if interp:
            self._add_interpreter(interp)
        queue = deque([main])
        while queue:
            obj = queue.popleft()
            for tag, name in self._dependencies(obj):
                dep = self._map_object(obj, name, optional=tag == DT_AUXILIARY)
                if dep is not None and not dep.queued:
                    dep.queued = True
                    queue.append(dep)
        return Resolution(
            executable=self.executable, interpreter=interp, libraries=tuple(self.libraries),
            missing=tuple(self.missing), default_dirs=self.default_dirs,
            default_dirs_source=self.dirs_source, ld_so_cache=self.cache_path,
            warnings=tuple(self.warnings), needs_ld_so_cache=self.cache_needed)

    def _dependencies(self, obj: _Object) -> list[tuple[int, str]]:
        where = obj.path or self.executable
        found = []
        for tag, name in [(DT_NEEDED, item) for item in obj.elf.needed] + list(obj.elf.filters):
            expanded = self._expand(name, obj)
            if not expanded:
                if tag != DT_AUXILIARY:
                    self.missing.append(Missing(name, where, "empty dynamic string token substitution"))
                continue
            found.append((tag, expanded))
        return found

    def _add_interpreter(self, interp: str) -> None:
        """The interpreter is in the link map before any dependency (rtld.c): a
        DT_NEEDED naming its soname is it, never searched for."""
        try:
            elf = read_elf(interp)
        except (OSError, ElfError) as err:
            self.missing.append(Missing(interp, self.executable, f"interpreter: {_reason(err)}"))
            return
        obj = _Object(interp, elf, None, None, {interp})
        if elf.soname:
            obj.names.add(elf.soname)
        obj.queued = True  # its own dependencies (none for glibc's) are not searched for
        self.loaded.append(obj)
        self._remember_file(interp, obj)

    def _remember_file(self, path: str, obj: _Object) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        self.by_file[(st.st_dev, st.st_ino)] = obj

    def _map_object(self, loader: _Object, name: str, optional: bool) -> _Object | None:
        for obj in self.loaded:
            if name in obj.names:
                return obj
        where = loader.path or self.executable
        self._other_class = False
        if "/" in name:
            if not name.startswith("/"):
                self.warnings.append(f"{where}: needs {name!r}, relative to the working directory: not searched")
                found, via, error = None, "", "relative path"
            else:
                found, error = self._try(name)
                via = "path"
        else:
            found, via, error = self._search(loader, name)
        if found is None:
            if not optional:
                self.missing.append(Missing(name, where, error or self._not_found()))
            return None
        path, elf = found
        st = os.stat(path)
        same = self.by_file.get((st.st_dev, st.st_ino))
        if same is not None:
            same.names.add(name)
            return same
        obj = _Object(path, elf, loader, os.path.dirname(path) or "/", {name, path})
        if elf.soname:
            obj.names.add(elf.soname)
        self._init_paths(obj, path)
        self.loaded.append(obj)
        self.by_file[(st.st_dev, st.st_ino)] = obj
        self.libraries.append(Library(name, path, where, via, elf.soname))
        return obj

    def _not_found(self) -> str:
        if self._other_class:  # the loader's own words (_dl_map_object)
            return "wrong ELF class: ELFCLASS" + ("32" if self.abi.elf_class == ELFCLASS64 else "64")
        return "cannot open shared object file: No such file or directory"

    # -- the search (_dl_map_object)

    def _search(self, loader: _Object, name: str) -> tuple[tuple[str, ElfFile] | None, str, str | None]:
        main = self.loaded[0]
        sources: list[tuple[str, list[str]]] = []
        if loader.runpath is None:
            chain: _Object | None = loader
            while chain is not None:
                if chain.rpath:
                    sources.append(("RPATH", chain.rpath))
                chain = chain.loader
            if main.rpath and not any(dirs is main.rpath for _what, dirs in sources):
                sources.append(("RPATH", main.rpath))
        # LD_LIBRARY_PATH would come here: the sandbox's environment is clean.
        if loader.runpath:
            sources.append(("RUNPATH", loader.runpath))
        for what, dirs in sources:
            found, error = self._open_path(name, dirs)
            if found or error:
                return found, what, error
        nodeflib = bool(loader.elf.flags_1 & DF_1_NODEFLIB)
        found, error = self._from_cache(name, nodeflib)
        if found or error:
            return found, "ld.so.cache", error
        if not nodeflib:
            found, error = self._open_path(name, list(self.default_dirs))
            if found or error:
                return found, "default", error
        return None, "", None

    def _from_cache(self, name: str, nodeflib: bool) -> tuple[tuple[str, ElfFile] | None, str | None]:
        if self._cache is False:
            self._cache = LdSoCache.load(self.cache_path)
        if self._cache is None:
            return None, None
        cached = self._cache.lookup(name, self.accepted_flags, self.hwcaps)  # type: ignore[union-attr]
        if cached is None:
            return None, None
        if nodeflib and any(cached.startswith(item) for item in self.default_dirs):
            return None, None
        found, error = self._try(cached)
        if found and os.path.dirname(cached) + "/" not in self.default_dirs:
            # Without the cache, the loader in the sandbox would not look there.
            self.cache_needed = True
        return found, error

    def _open_path(self, name: str, dirs: list[str]) -> tuple[tuple[str, ElfFile] | None, str | None]:
        """Each directory, each hwcaps subdirectory first (open_path)."""
        for directory in dirs:
            for prefix in self.subdirs:
                base = directory + prefix
                if not self._is_dir(base):
                    continue  # the loader marks it "nonexisting" and skips it
                found, error = self._try(base + name)
                if found or error:
                    return found, error
        return None, None

    def _is_dir(self, path: str) -> bool:
        if path not in self._isdir:
            self._isdir[path] = os.path.isdir(path)
        return self._isdir[path]

    def _try(self, path: str) -> tuple[tuple[str, ElfFile] | None, str | None]:
        """open_verify: (found, None), (None, None) to go on searching, or (None, error)."""
        try:
            elf = read_elf(path)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None, None
        except IsADirectoryError:
            return None, f"{path}: cannot read file data: Is a directory"
        except OSError as err:
            return None, f"{path}: {_reason(err)}"
        except ElfError as err:
            return None, str(err)
        verdict = loader_verdict(elf, self.abi)
        if verdict == "skip":
            self._other_class |= elf.elf_class != self.abi.elf_class
            return None, None
        if verdict is not None:
            return None, f"{path}: {verdict}"
        return (path, elf), None

    # -- RPATH / RUNPATH and dynamic string tokens

    def _init_paths(self, obj: _Object, where: str) -> None:
        if obj.elf.runpath is not None:
            obj.runpath = self._decompose(obj.elf.runpath, obj, where, "RUNPATH")
        elif obj.elf.rpath is not None:
            obj.rpath = self._decompose(obj.elf.rpath, obj, where, "RPATH")

    def _decompose(self, value: str, obj: _Object, where: str, what: str) -> list[str]:
        """fillin_rpath: split on ':', expand tokens, one trailing '/', each directory once."""
        dirs: list[str] = []
        for element in value.split(":"):
            expanded = self._expand(element, obj) if element else ""
            if element and not expanded:
                continue  # a token with no value: the element is dropped
            if not expanded.startswith("/"):
                self.warnings.append(f"{where}: {what} entry {element!r} is relative to the working directory:"
                                     " not searched")
                continue
            directory = _as_dir(expanded)
            if directory not in dirs:
                dirs.append(directory)
        return dirs

    def _expand(self, text: str, obj: _Object) -> str:
        """_dl_dst_substitute: $ORIGIN, $LIB, $PLATFORM (or ${...}); "" when a
        known token has no value."""
        values = {"ORIGIN": obj.origin, "LIB": self.lib_dst, "PLATFORM": self.hwcaps.platform}
        out = []
        index = 0
        while index < len(text):
            if text[index] != "$":
                out.append(text[index])
                index += 1
                continue
            token, length = _dst_at(text, index + 1)
            if token is None:
                out.append("$")
                index += 1
                continue
            if values[token] is None:
                return ""
            out.append(values[token])  # type: ignore[arg-type]
            index += 1 + length
        return "".join(out)


def _dst_at(text: str, start: int) -> tuple[str | None, int]:
    """is_dst: the token at ``start`` (after '$') and its length, braces included."""
    curly = text.startswith("{", start)
    body = start + 1 if curly else start
    for token in ("ORIGIN", "PLATFORM", "LIB"):
        if not text.startswith(token, body):
            continue
        after = body + len(token)
        if curly and not text.startswith("}", after):
            continue
        if not curly and after < len(text) and _is_identifier_char(text[after]):
            continue  # "$ORIGINAL" is no token
        return token, len(token) + (2 if curly else 0)
    return None, 0


def _is_identifier_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "_")


def _as_dir(path: str) -> str:
    stripped = path.rstrip("/")
    return (stripped or "") + "/"


def _reason(err: Exception) -> str:
    if isinstance(err, OSError) and err.errno:
        return os.strerror(err.errno)
    return str(err)


def resolve(
    executable: str,
    *,
    ld_so_cache: str = LD_SO_CACHE,
    hwcaps: Hwcaps | None = None,
    default_dirs: tuple[str, ...] | None = None,
) -> Resolution:
    """Resolve the shared libraries ``executable`` needs, as ld.so would, without running anything.

    ``ld_so_cache``, ``hwcaps`` and ``default_dirs`` default to this host's
    (the cache file, the CPU's hwcaps for the binary's ABI, the directories
    compiled into the binary's interpreter); tests pass their own.

    Raises ``ValueError`` when ``executable`` is not an ELF file the kernel
    could run and ``OSError`` when it cannot be read; libraries that cannot
    be found or loaded are reported in ``Resolution.missing`` (see
    ``raise_for_missing``).
    """
    resolver = _Resolver(executable, ld_so_cache, hwcaps, default_dirs)
    main = resolver.main_elf
    if main.type not in (ET_EXEC, ET_DYN):
        raise ValueError(f"{resolver.executable}: not an executable ELF file (e_type {main.type})")
    if main.interpreter is None and (main.needed or main.filters):
        # The kernel would start it without a loader: nothing would map its libraries.
        raise ValueError(f"{resolver.executable}: needs shared libraries but names no interpreter (PT_INTERP)")
    return resolver.run()
