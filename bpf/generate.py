#!/usr/bin/env python3
"""Generate the launcher's seccomp filters, one classic-BPF blob per filter and architecture.

Run by ``make bpf``; the blobs are committed and shipped in the wheel as
``srt_launcher/_bpf/FILTER.MACHINE.bpf``. The launcher only reads them
(srt_launcher/seccomp.py): importing pyseccomp costs ~30 ms, which the launch
path cannot afford (SPEC §4).

    bpf/generate.py [--output-dir DIR]     write every blob
    bpf/generate.py --show                 print each filter's rules, as
                                           libseccomp and the kernel see them

Three filters, each "allow everything except" a short list:

``tty`` (installed on every launch). EPERM for ``ioctl(fd, TIOCSTI)`` and
``ioctl(fd, TIOCLINUX)``: a workload handed a terminal that is no session's
controlling tty can ``setsid()``, make it its own with TIOCSCTTY, and then
TIOCSTI types commands into whatever reads that terminal after the sandbox
ends (the caller's shell). TIOCLINUX's selection paste does the same on a
virtual console (CVE-2023-28100; flatpak refuses both). The kernel's ioctl
takes the request as an ``unsigned int``, so only its low 32 bits are
compared: ``TIOCSTI | 1 << 32`` is TIOCSTI. Unlike the other two, this filter
covers every ABI the kernel runs (x86-64, x32 and i386; AArch64 and AArch32)
with the same rules instead of killing foreign ones: ioctl has no multiplexer
to hide behind, and killing 32-bit calls on every launch would stop 32-bit
programs from running in any sandbox.

``unix-block`` (``--seccomp-unix-block``, SPEC §2.6). EPERM for:

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

``harden`` (``--seccomp-harden``, SPEC §6). EPERM for:

* ``socket``/``socketpair`` of AF_NETLINK, AF_PACKET, AF_BLUETOOTH, AF_VSOCK
  (family on its low 32 bits, as above);
* io_uring, as above (its opcodes reach most of the kernel without a syscall
  this filter could see);
* the kernel interfaces an unprivileged workload does not need and that carry
  most local privilege escalations: bpf, perf_event_open, userfaultfd, the key
  calls, kexec, module loading, open_by_handle_at;
* creating a user namespace, where a workload gets every capability over new
  namespaces and so reaches the kernel code only root could: ``unshare`` and
  ``clone`` with CLONE_NEWUSER in the flags. ``clone``'s flags are its first
  argument on x86-64 and on aarch64 (CLONE_BACKWARDS only swaps ``tls`` and
  ``child_tid``); s390 has them second, hence the per-architecture table.
  ``clone3`` passes its flags in a struct in user memory, which BPF cannot
  read, so it is refused whole with ENOSYS: glibc (2.34+) takes that for an
  old kernel and falls back to ``clone``, whose flags are in a register.

Foreign ABIs, for ``unix-block`` and ``harden``, are killed
(SECCOMP_RET_KILL_PROCESS), not filtered. Each of these blobs names exactly
one architecture, so:

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
workloads therefore cannot run under --seccomp-unix-block or
--seccomp-harden. On a 32-bit x86 host there is no native ABI without
socketcall, so there is no blob at all and the launcher refuses those
options (SPEC §2.6).

Stacking: the kernel runs every installed filter on each syscall and keeps
the most severe answer (kill before errno before allow), so the filters
combine as the union of their denials. A filter whose answer for a syscall
number does not depend on the arguments is cached by the kernel (5.11+:
the action bitmap), so the always-on ``tty`` filter runs for ``ioctl`` only.

The output depends only on the rules and on the libseccomp version (2.5.4
for the committed blobs), not on the host: each filter is built for its
target architectures whatever the machine running this script, and the
syscall numbers are translated by name inside libseccomp.
"""

from __future__ import annotations

import argparse
import errno
import os
import struct
import sys
import tempfile
from typing import NamedTuple

import pyseccomp as seccomp

HERE = os.path.dirname(os.path.abspath(__file__))

# os.uname().machine of the host -> blob name suffix: FILTER.MACHINE.bpf.
MACHINES = ("x86_64", "aarch64")

# Every ABI each machine's kernel runs (the first is the native one).
ABIS = {
    "x86_64": (seccomp.Arch.X86_64, seccomp.Arch.X32, seccomp.Arch.X86),
    "aarch64": (seccomp.Arch.AARCH64, seccomp.Arch.ARM),
}

LOW_32_BITS = 0xFFFFFFFF
SOCK_TYPE_MASK = 0xF

# Address families (include/linux/socket.h; the same on every architecture).
AF_UNIX = 1
AF_NETLINK = 16
AF_PACKET = 17
AF_BLUETOOTH = 31
AF_VSOCK = 40
SOCK_DGRAM = 2
SOCK_RAW = 3

CLONE_NEWUSER = 0x10000000
# Which argument of clone(2) holds the flags (kernel/fork.c, CONFIG_CLONE_BACKWARDS*).
CLONE_FLAGS_ARGUMENT = {"x86_64": 0, "aarch64": 0}

# Terminal ioctls: asm-generic/ioctls.h values, which x86 (all three ABIs)
# and arm/arm64 use unchanged. (powerpc, mips, sparc and alpha differ.)
TIOCSTI = 0x5412
TIOCLINUX = 0x541C


class Condition(NamedTuple):
    """``args[argument] & mask == value``; ``what`` names the value in listings."""

    argument: int
    mask: int
    value: int
    what: str

    def describe(self) -> str:
        mask = ".lo32" if self.mask == LOW_32_BITS else f" & {self.mask:#x}"
        return f"arg{self.argument}{mask} == {self.what}"


class Rule(NamedTuple):
    syscall: str
    errno: int
    conditions: tuple[Condition, ...] = ()


class Filter(NamedTuple):
    name: str
    option: str
    all_abis: bool  # True: every ABI of the machine gets the rules; False: foreign ABIs are killed
    rules: tuple[Rule, ...]


def _low32(argument: int, value: int, what: str) -> Condition:
    return Condition(argument, LOW_32_BITS, value, f"{what} ({value:#x})")


def _newuser(argument: int) -> Condition:
    return Condition(argument, CLONE_NEWUSER, CLONE_NEWUSER, f"{CLONE_NEWUSER:#x} (CLONE_NEWUSER set)")


def _sock_type(sock_type: int, what: str) -> Condition:
    # The kernel masks the type with SOCK_TYPE_MASK: SOCK_CLOEXEC/NONBLOCK cannot dodge it.
    return Condition(1, SOCK_TYPE_MASK, sock_type, f"{what} ({sock_type})")


def _family_rules(syscall: str, families: dict[str, int]) -> tuple[Rule, ...]:
    return tuple(Rule(syscall, errno.EPERM, (_low32(0, number, name),)) for name, number in families.items())


_IO_URING = tuple(Rule(name, errno.EPERM) for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"))

_HARDEN_FAMILIES = {"AF_NETLINK": AF_NETLINK, "AF_PACKET": AF_PACKET, "AF_BLUETOOTH": AF_BLUETOOTH, "AF_VSOCK": AF_VSOCK}

_PRIVILEGED_INTERFACES = (
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at",
)  # fmt: skip


def filters(machine: str) -> tuple[Filter, ...]:
    """The three filters' rules for one target machine."""
    unix = _low32(0, AF_UNIX, "AF_UNIX")
    return (
        Filter("tty", "every launch", True, (
            Rule("ioctl", errno.EPERM, (_low32(1, TIOCSTI, "TIOCSTI"),)),
            Rule("ioctl", errno.EPERM, (_low32(1, TIOCLINUX, "TIOCLINUX"),)),
        )),
        Filter("unix-block", "--seccomp-unix-block", False, (
            Rule("socket", errno.EPERM, (unix,)),
            Rule("socketpair", errno.EPERM, (unix, _sock_type(SOCK_DGRAM, "SOCK_DGRAM"))),
            Rule("socketpair", errno.EPERM, (unix, _sock_type(SOCK_RAW, "SOCK_RAW"))),
            *_IO_URING,
        )),
        Filter("harden", "--seccomp-harden", False, (
            *_family_rules("socket", _HARDEN_FAMILIES),
            *_family_rules("socketpair", _HARDEN_FAMILIES),
            *_IO_URING,
            *(Rule(name, errno.EPERM) for name in _PRIVILEGED_INTERFACES),
            Rule("unshare", errno.EPERM, (_newuser(0),)),
            Rule("clone", errno.EPERM, (_newuser(CLONE_FLAGS_ARGUMENT[machine]),)),
            Rule("clone3", errno.ENOSYS),
        )),
    )  # fmt: skip


def build(filt: Filter, machine: str) -> seccomp.SyscallFilter:
    abis = ABIS[machine] if filt.all_abis else ABIS[machine][:1]
    program = seccomp.SyscallFilter(seccomp.ALLOW)
    # For the tty filter no ABI of the target kernel is "bad"; kill anything
    # else all the same rather than let an unknown ABI through.
    program.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    # A new filter holds the build machine's architecture: swap it for the
    # targets so the blob does not depend on where it was generated.
    for arch in abis:
        if not program.exist_arch(arch):
            program.add_arch(arch)
    native = seccomp.system_arch()
    if native not in abis:
        program.remove_arch(native)
    for rule in filt.rules:
        # Rules take build-machine numbers; libseccomp maps them to each target by name.
        number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, rule.syscall)
        if number < 0:
            raise SystemExit(f"generate.py: libseccomp does not know {rule.syscall}; upgrade libseccomp")
        args = [seccomp.Arg(c.argument, seccomp.MASKED_EQ, c.mask, c.value) for c in rule.conditions]
        program.add_rule(seccomp.ERRNO(rule.errno), number, *args)
    return program


def export(program: seccomp.SyscallFilter) -> bytes:
    # libseccomp writes to a file descriptor only.
    with tempfile.TemporaryFile() as handle:
        program.export_bpf(handle)
        handle.seek(0)
        return handle.read()


def blob_name(filt: Filter, machine: str) -> str:
    return f"{filt.name}.{machine}.bpf"


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


def listing(filt: Filter, machine: str) -> str:
    """The rules in words, one line each (what ``--show`` prints first)."""
    abis = ", ".join(_ARCH_NAMES[arch] for arch in (ABIS[machine] if filt.all_abis else ABIS[machine][:1]))
    others = "none (every ABI of this kernel is filtered)" if filt.all_abis else "killed (SECCOMP_RET_KILL_PROCESS)"
    lines = [f"{filt.name} ({filt.option}) on {machine}: allow everything except", f"  ABIs filtered: {abis}; other ABIs: {others}"]
    for rule in filt.rules:
        when = " if " + " and ".join(c.describe() for c in rule.conditions) if rule.conditions else ""
        lines.append(f"  {rule.syscall:18s} -> {errno.errorcode[rule.errno]}{when}")
    return "\n".join(lines)


_ARCH_NAMES = {
    seccomp.Arch.X86_64: "x86_64", seccomp.Arch.X32: "x32", seccomp.Arch.X86: "i386",
    seccomp.Arch.AARCH64: "aarch64", seccomp.Arch.ARM: "arm",
}  # fmt: skip

_OPCODES = {
    0x00: "ld #k", 0x20: "ld [k]", 0x54: "and #k", 0x06: "ret #k",
    0x05: "ja k", 0x15: "jeq #k", 0x25: "jgt #k", 0x35: "jge #k", 0x45: "jset #k",
}  # fmt: skip


def disassemble(program: bytes) -> str:
    """One line per sock_filter; enough to audit what the kernel will run."""
    lines = []
    for index in range(0, len(program), 8):
        code, jt, jf, k = struct.unpack("<HBBI", program[index : index + 8])
        op = _OPCODES.get(code, f"op {code:#06x}")
        jumps = f"  jt {index // 8 + 1 + jt:3d} jf {index // 8 + 1 + jf:3d}" if op.startswith("j") and op != "ja k" else ""
        lines.append(f"{index // 8:4d}: {op:8s} {k:#010x}{jumps}")
    return "\n".join(lines)


def show(filt: Filter, machine: str, program: seccomp.SyscallFilter, blob: bytes) -> None:
    print(f"==== {blob_name(filt, machine)}: {len(blob) // 8} instructions", flush=True)
    print(listing(filt, machine), flush=True)
    print("---- as libseccomp compiled it (PFC)", flush=True)
    program.export_pfc(sys.stdout)
    print("---- as the kernel runs it", flush=True)
    print(disassemble(blob), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=HERE, help="where to write FILTER.MACHINE.bpf (default: bpf/)")
    parser.add_argument("--show", action="store_true", help="print each filter's rules and disassembly; write nothing")
    args = parser.parse_args(argv)
    if sys.byteorder != "little":
        # libseccomp writes host-order sock_filters; both targets are little-endian.
        raise SystemExit("generate.py: run on a little-endian machine")
    if not args.show:
        os.makedirs(args.output_dir, exist_ok=True)
    for machine in MACHINES:
        for filt in filters(machine):
            program = build(filt, machine)
            blob = export(program)
            if args.show:
                show(filt, machine, program, blob)
            else:
                write_atomically(os.path.join(args.output_dir, blob_name(filt, machine)), blob)
    return 0


if __name__ == "__main__":
    sys.exit(main())
