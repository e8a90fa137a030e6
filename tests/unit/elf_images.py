"""Byte-exact ELF objects and ld.so.cache files built for the tests, with struct only.

The ELF images are minimal but complete for a loader's reading: an ELF
header, program headers (one PT_LOAD mapping the whole file at an address
that differs from the file offset, PT_INTERP, PT_DYNAMIC), a string table
and a dynamic section. The caches follow sysdeps/generic/dl-cache.h.
"""

from __future__ import annotations

import struct

ET_EXEC, ET_DYN, ET_REL = 2, 3, 1
EM_386, EM_X86_64, EM_AARCH64 = 3, 62, 183
DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 1, 5, 10, 14, 15, 29
DT_FLAGS_1, DT_AUXILIARY, DT_FILTER = 0x6FFFFFFB, 0x7FFFFFFD, 0x7FFFFFFF
LOAD_BIAS = 0x400000  # vaddr = file offset + LOAD_BIAS: DT_STRTAB is not a file offset


def elf_image(
    *,
    bits: int = 64,
    little: bool = True,
    machine: int = EM_X86_64,
    e_type: int = ET_DYN,
    osabi: int = 0,
    interp: str | None = None,
    needed: tuple[str, ...] = (),
    soname: str | None = None,
    rpath: str | None = None,
    runpath: str | None = None,
    flags_1: int | None = None,
    filters: tuple[tuple[int, str], ...] = (),
    dynamic: bool = True,
) -> bytes:
    order = "<" if little else ">"
    ehdr_size, phdr_size, dyn_fmt = (64, 56, "qQ") if bits == 64 else (52, 32, "iI")
    strings = bytearray(b"\0")

    def add(text: str) -> int:
        strings.extend(text.encode() + b"\0")
        return len(strings) - len(text) - 1

    entries = [(DT_NEEDED, add(name)) for name in needed]
    entries += [(tag, add(name)) for tag, name in filters]
    for tag, value in ((DT_SONAME, soname), (DT_RPATH, rpath), (DT_RUNPATH, runpath)):
        if value is not None:
            entries.append((tag, add(value)))
    if flags_1 is not None:
        entries.append((DT_FLAGS_1, flags_1))
    nphdr = 1 + (interp is not None) + dynamic
    interp_off = ehdr_size + nphdr * phdr_size
    interp_bytes = interp.encode() + b"\0" if interp is not None else b""
    str_off = interp_off + len(interp_bytes)
    dyn_off = (str_off + len(strings) + 7) & ~7
    entries += [(DT_STRTAB, str_off + LOAD_BIAS), (DT_STRSZ, len(strings)), (0, 0)]
    dyn_bytes = b"".join(struct.pack(order + dyn_fmt, tag, value) for tag, value in entries)
    total = dyn_off + len(dyn_bytes)

    def phdr(p_type: int, offset: int, size: int) -> bytes:
        if bits == 64:
            return struct.pack(order + "IIQQQQQQ", p_type, 5, offset, offset + LOAD_BIAS, offset + LOAD_BIAS,
                               size, size, 8)
        return struct.pack(order + "IIIIIIII", p_type, offset, offset + LOAD_BIAS, offset + LOAD_BIAS, size,
                           size, 5, 8)

    phdrs = phdr(1, 0, total)
    if interp is not None:
        phdrs += phdr(3, interp_off, len(interp_bytes))
    if dynamic:
        phdrs += phdr(2, dyn_off, len(dyn_bytes))
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if little else 2, 1, osabi]) + bytes(8)
    if bits == 64:
        ehdr = struct.pack(order + "16sHHIQQQIHHHHHH", ident, e_type, machine, 1, 0, ehdr_size, 0, 0,
                           ehdr_size, phdr_size, nphdr, 64, 0, 0)
    else:
        ehdr = struct.pack(order + "16sHHIIIIIHHHHHH", ident, e_type, machine, 1, 0, ehdr_size, 0, 0,
                           ehdr_size, phdr_size, nphdr, 40, 0, 0)
    image = bytearray(ehdr + phdrs + interp_bytes + strings)
    image.extend(bytes(dyn_off - len(image)))
    image.extend(dyn_bytes)
    return bytes(image)


# ld.so.cache

HWCAP_EXTENSION = 1 << 62


def cache_image(
    entries: list[tuple[int, str, str, int]],
    *,
    hwcaps_names: tuple[str, ...] = (),
    old_prefix: bool = False,
    endian_flag: int = 2,
    little: bool = True,
) -> bytes:
    """A cache holding ``entries`` (flags, name, path, hwcap) in the given order.

    ``old_prefix``: the compatibility layout (an ``ld.so-1.7.0`` table first,
    its string table holding the new format, as ldconfig -c compat wrote).
    """
    order = "<" if little else ">"
    strings = bytearray()
    string_at: dict[str, int] = {}
    header_size, entry_size = 48, 24
    strings_base = header_size + entry_size * len(entries)

    def offset_of(text: str) -> int:
        if text not in string_at:
            string_at[text] = strings_base + len(strings)
            strings.extend(text.encode() + b"\0")
        return string_at[text]

    packed = [(flags, offset_of(name), offset_of(path), hwcap) for flags, name, path, hwcap in entries]
    hwcaps_offsets = [offset_of(name) for name in hwcaps_names]
    body = b"".join(struct.pack(order + "iIIIQ", flags, key, value, 0, hwcap) for flags, key, value, hwcap in packed)
    tail = bytes(strings)
    extension_offset = 0
    extension = b""
    if hwcaps_names:
        while (strings_base + len(tail)) % 4:
            tail += b"\0"
        extension_offset = strings_base + len(tail)
        section_offset = extension_offset + 8 + 16
        extension = struct.pack(order + "II", 0xEAA42174, 1)
        extension += struct.pack(order + "IIII", 1, 0, section_offset, 4 * len(hwcaps_offsets))
        extension += struct.pack(order + f"{len(hwcaps_offsets)}I", *hwcaps_offsets)
    header = b"glibc-ld.so.cache1.1" + struct.pack(order + "II", len(entries), len(tail))
    header += bytes([endian_flag, 0, 0, 0]) + struct.pack(order + "I", extension_offset) + bytes(12)
    new = header + body + tail + extension
    if not old_prefix:
        return new
    # The old table's entries are not used when a new table follows; their
    # indices point into the new table's strings (relative to its start).
    old_count = len(entries)
    old_entries = b"".join(struct.pack("<iII", flags & 0xFF, 0, 0) for flags, _n, _p, _h in entries)
    old = b"ld.so-1.7.0\0" + struct.pack("<I", old_count) + old_entries
    old += bytes((-len(old)) % 8)
    return old + new


def old_cache_image(entries: list[tuple[int, str, str]]) -> bytes:
    """The libc5/glibc 2.0 format alone: 12-byte entries, strings after them."""
    strings = bytearray()
    packed = []
    for flags, name, path in entries:
        key = len(strings)
        strings.extend(name.encode() + b"\0")
        value = len(strings)
        strings.extend(path.encode() + b"\0")
        packed.append(struct.pack("<iII", flags, key, value))
    return b"ld.so-1.7.0\0" + struct.pack("<I", len(entries)) + b"".join(packed) + bytes(strings)
