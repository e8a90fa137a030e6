#!/usr/bin/env python3
"""Generate the seccomp filters of SPEC §2.6, one classic-BPF blob per architecture.

Run by ``make bpf``; the blobs are committed and shipped in the wheel as
``srt_launcher/_bpf/*.bpf``. The launcher only reads them (srt_launcher/seccomp.py):
importing pyseccomp costs ~30 ms, which the launch path cannot afford (SPEC §4).

    bpf/generate.py [--output-dir DIR] [--show]

The filter allows everything except, with EPERM:

* ``socket(AF_UNIX, ...)``. The kernel reads the domain as an ``int``, so only
  its low 32 bits are compared: an EQ on the whole 64-bit register would let
  ``socket((1 << 32) | AF_UNIX, ...)`` through.
* ``socketpair(AF_UNIX, SOCK_DGRAM or SOCK_RAW, ...)``. The kernel masks the
  type with SOCK_TYPE_MASK (0xf) and takes SOCK_CLOEXEC/SOCK_NONBLOCK from the
  rest, so only the low 4 bits are compared; otherwise OR-ing in a flag would
  dodge the rule. Stream and seqpacket pairs stay allowed: language runtimes
  and shells need them. (AF_UNIX maps SOCK_RAW onto SOCK_DGRAM, hence both.)
* ``io_uring_setup``, ``io_uring_enter``, ``io_uring_register``: io_uring
  (IORING_OP_SOCKET) creates sockets without ever calling socket(2).

Foreign ABIs are killed (SECCOMP_RET_KILL_PROCESS), not filtered. Each blob
names exactly one architecture, so:

* a 32-bit call on x86-64 (``int 0x80``, AUDIT_ARCH_I386) fails the arch
  check. Giving the i386 ABI the same rules would not be enough: there,
  socket(2) is also reachable through the socketcall(2) multiplexer, whose
  arguments sit in user memory that BPF cannot read, so a domain rule on
  socketcall can never match. Killing the ABI leaves nothing to reason about.
* x32 calls carry AUDIT_ARCH_X86_64 too, but with __X32_SYSCALL_BIT
  (0x40000000) set in the number; libseccomp, given an x86_64-only filter,
  sends any such number to the bad-arch action, i.e. the same kill.
* on aarch64, AArch32 compat tasks (AUDIT_ARCH_ARM) fail the arch check.

Killing rather than returning EPERM: a 64-bit program switching ABI is doing
something no supported workload does, and an EPERM for *every* foreign call
(exit included) would leave it running in an undefined state. 32-bit
workloads therefore cannot run under --seccomp-unix-block. On a 32-bit x86
host there is no native ABI without socketcall, so there is no blob at all
and the launcher refuses the option (SPEC §2.6).

The output depends only on the rules and on the libseccomp version (2.5.4
for the committed blobs), not on the host: each filter is built for its
target architecture whatever the machine running this script, and the
syscall numbers are translated by name inside libseccomp.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import struct
import sys
import tempfile

import pyseccomp as seccomp

HERE = os.path.dirname(os.path.abspath(__file__))

# os.uname().machine -> libseccomp architecture token. Blob name: MACHINE.bpf.
ARCHITECTURES = {
    "x86_64": seccomp.Arch.X86_64,
    "aarch64": seccomp.Arch.AARCH64,
}

SOCK_TYPE_MASK = 0xF
LOW_32_BITS = 0xFFFFFFFF
DENY = seccomp.ERRNO(errno.EPERM)


def _domain_is_unix() -> seccomp.Arg:
    return seccomp.Arg(0, seccomp.MASKED_EQ, LOW_32_BITS, socket.AF_UNIX)


def _type_is(sock_type: int) -> seccomp.Arg:
    return seccomp.Arg(1, seccomp.MASKED_EQ, SOCK_TYPE_MASK, sock_type)


# (syscall, argument conditions); every rule's action is DENY.
RULES: tuple[tuple[str, tuple[seccomp.Arg, ...]], ...] = (
    ("socket", (_domain_is_unix(),)),
    ("socketpair", (_domain_is_unix(), _type_is(socket.SOCK_DGRAM))),
    ("socketpair", (_domain_is_unix(), _type_is(socket.SOCK_RAW))),
    ("io_uring_setup", ()),
    ("io_uring_enter", ()),
    ("io_uring_register", ()),
)


def build(arch: int) -> seccomp.SyscallFilter:
    filt = seccomp.SyscallFilter(seccomp.ALLOW)
    filt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    # A new filter holds the build machine's architecture: swap it for the
    # target so the blob does not depend on where it was generated.
    if not filt.exist_arch(arch):
        filt.add_arch(arch)
    native = seccomp.system_arch()
    if native != arch:
        filt.remove_arch(native)
    for name, conditions in RULES:
        # Rules take build-machine numbers; libseccomp maps them to the target by name.
        number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
        if number < 0:
            raise SystemExit(f"generate.py: libseccomp does not know {name}; upgrade libseccomp")
        filt.add_rule(DENY, number, *conditions)
    return filt


def export(filt: seccomp.SyscallFilter) -> bytes:
    # libseccomp writes to a file descriptor only.
    with tempfile.TemporaryFile() as handle:
        filt.export_bpf(handle)
        handle.seek(0)
        return handle.read()


def write_atomically(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


_OPCODES = {
    0x00: "ld #k", 0x20: "ld [k]", 0x54: "and #k", 0x06: "ret #k",
    0x05: "ja k", 0x15: "jeq #k", 0x25: "jgt #k", 0x35: "jge #k", 0x45: "jset #k",
}


def disassemble(program: bytes) -> str:
    """One line per sock_filter; enough to audit what the kernel will run."""
    lines = []
    for index in range(0, len(program), 8):
        code, jt, jf, k = struct.unpack("<HBBI", program[index : index + 8])
        op = _OPCODES.get(code, f"op {code:#06x}")
        jumps = f"  jt {index // 8 + 1 + jt:3d} jf {index // 8 + 1 + jf:3d}" if op.startswith("j") and op != "ja k" else ""
        lines.append(f"{index // 8:4d}: {op:8s} {k:#010x}{jumps}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=HERE, help="where to write MACHINE.bpf (default: bpf/)")
    parser.add_argument("--show", action="store_true", help="print each filter's rules and disassembly")
    args = parser.parse_args(argv)
    if sys.byteorder != "little":
        # libseccomp writes host-order sock_filters; both targets are little-endian.
        raise SystemExit("generate.py: run on a little-endian machine")
    os.makedirs(args.output_dir, exist_ok=True)
    for machine, arch in ARCHITECTURES.items():
        filt = build(arch)
        program = export(filt)
        write_atomically(os.path.join(args.output_dir, f"{machine}.bpf"), program)
        if args.show:
            print(f"==== {machine}.bpf: {len(program) // 8} instructions", flush=True)
            filt.export_pfc(sys.stdout)
            print(disassemble(program), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
