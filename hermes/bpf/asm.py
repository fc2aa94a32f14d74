"""eBPF instruction encoding: the 8-byte struct bpf_insn, and a few builders.

Pure data, no syscalls.  Only little-endian targets are supported (x86-64,
arm64), where dst_reg is the low nibble of the register byte.
"""

import struct
from typing import NamedTuple

INSN_SIZE = 8
_INSN = struct.Struct("<BBhi")  # code, regs, off, imm (include/uapi/linux/bpf.h)

# Instruction classes (code & 0x07).
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_JMP32 = 0x06   # Linux 5.1
BPF_ALU64 = 0x07

# Load/store size (code & 0x18) and mode (code & 0xe0).
BPF_W = 0x00
BPF_H = 0x08
BPF_B = 0x10
BPF_DW = 0x18
BPF_IMM = 0x00
BPF_ABS = 0x20
BPF_IND = 0x40
BPF_MEM = 0x60
BPF_ATOMIC = 0xc0  # was BPF_XADD

# ALU operations (code & 0xf0) and operand source (code & 0x08).
BPF_ADD = 0x00
BPF_SUB = 0x10
BPF_MUL = 0x20
BPF_DIV = 0x30
BPF_OR = 0x40
BPF_AND = 0x50
BPF_LSH = 0x60
BPF_RSH = 0x70
BPF_NEG = 0x80
BPF_MOD = 0x90
BPF_XOR = 0xa0
BPF_MOV = 0xb0
BPF_ARSH = 0xc0
BPF_END = 0xd0
BPF_K = 0x00
BPF_X = 0x08

# Jump operations (code & 0xf0).
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40
BPF_JNE = 0x50
BPF_JSGT = 0x60
BPF_JSGE = 0x70
BPF_CALL = 0x80
BPF_EXIT = 0x90
BPF_JLT = 0xa0
BPF_JLE = 0xb0
BPF_JSLT = 0xc0
BPF_JSLE = 0xd0

# Whole opcodes the linker matches on.
LD_IMM64 = BPF_LD | BPF_IMM | BPF_DW   # 0x18, two slots
CALL = BPF_JMP | BPF_CALL              # 0x85
EXIT = BPF_JMP | BPF_EXIT              # 0x95

# src_reg of ld_imm64 says what imm means (Linux 4.4 .. 5.13).
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2       # Linux 5.2
BPF_PSEUDO_BTF_ID = 3          # Linux 5.10
BPF_PSEUDO_FUNC = 4            # Linux 5.13
BPF_PSEUDO_MAP_IDX = 5         # Linux 5.14
BPF_PSEUDO_MAP_IDX_VALUE = 6   # Linux 5.14
# src_reg of a call.
BPF_PSEUDO_CALL = 1            # bpf-to-bpf, Linux 4.16
BPF_PSEUDO_KFUNC_CALL = 2      # Linux 5.13


class Insn(NamedTuple):
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def pack(self):
        return _INSN.pack(self.code, (self.src << 4) | self.dst, self.off, self.imm)

    @classmethod
    def unpack(cls, data, offset=0):
        code, regs, off, imm = _INSN.unpack_from(data, offset)
        return cls(code, regs & 0x0f, regs >> 4, off, imm)

    @property
    def cls(self):
        return self.code & 0x07

    def is_ld_imm64(self):
        return self.code == LD_IMM64

    def is_call(self):
        return self.code == CALL


def unpack_all(data):
    """bytes -> list of Insn (ld_imm64 stays two slots)."""
    return [Insn.unpack(data, o) for o in range(0, len(data) - len(data) % INSN_SIZE, INSN_SIZE)]


def assemble(*insns):
    """Concatenate Insns, or sequences of them (ld_imm64 builders return two)."""
    out = []
    for i in insns:
        if isinstance(i, Insn):
            out.append(i.pack())
        else:
            out.extend(x.pack() for x in i)
    return b"".join(out)


def _s32(v):
    v &= 0xffffffff
    return v - (1 << 32) if v & 0x80000000 else v


def mov64_imm(dst, imm):
    return Insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, _s32(imm))


def mov64_reg(dst, src):
    return Insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src)


def alu64_imm(op, dst, imm):
    return Insn(BPF_ALU64 | op | BPF_K, dst, 0, 0, _s32(imm))


def alu64_reg(op, dst, src):
    return Insn(BPF_ALU64 | op | BPF_X, dst, src)


def ld_imm64(dst, imm, src=0):
    """The two-slot 64-bit immediate load; returns a pair of Insn."""
    imm &= (1 << 64) - 1
    return (Insn(LD_IMM64, dst, src, 0, _s32(imm)), Insn(0, 0, 0, 0, _s32(imm >> 32)))


def ld_map_fd(dst, fd):
    return ld_imm64(dst, fd, BPF_PSEUDO_MAP_FD)


def ld_map_value(dst, fd, off=0):
    """dst = &map[0] + off: fd in the first imm, offset in the second."""
    return (Insn(LD_IMM64, dst, BPF_PSEUDO_MAP_VALUE, 0, fd), Insn(0, 0, 0, 0, _s32(off)))


def ldx_mem(size, dst, src, off):
    return Insn(BPF_LDX | BPF_MEM | size, dst, src, off)


def stx_mem(size, dst, src, off):
    return Insn(BPF_STX | BPF_MEM | size, dst, src, off)


def st_mem(size, dst, off, imm):
    return Insn(BPF_ST | BPF_MEM | size, dst, 0, off, _s32(imm))


def jmp_imm(op, dst, imm, off):
    return Insn(BPF_JMP | op | BPF_K, dst, 0, off, _s32(imm))


def jmp_reg(op, dst, src, off):
    return Insn(BPF_JMP | op | BPF_X, dst, src, off)


def ja(off):
    return Insn(BPF_JMP | BPF_JA, 0, 0, off)


def call(helper_id):
    return Insn(CALL, 0, 0, 0, helper_id)


def exit_():
    return Insn(EXIT)


exit = exit_  # noqa: A001 -- reads naturally as asm.exit(); builtins.exit is not used here
