"""The .BTF.ext section: func_info, line_info and CO-RE relocation records.

Parsing only (Documentation/bpf/btf.rst, ".BTF.ext section").  Records are grouped
by the ELF section they describe; offsets stay in bytes, section-relative, as
clang wrote them: the linker rebases them per program.
"""

import struct
from typing import NamedTuple

from .errors import ParseError

MAGIC = 0xEB9F
_HDR = struct.Struct("<HBBIIIII")      # up to line_info_len: 24 bytes
_HDR_CORE = struct.Struct("<II")      # core_relo_off/len, present when hdr_len >= 32
_SEC = struct.Struct("<II")           # sec_name_off, num_info

FUNC_INFO_SIZE = 8    # struct bpf_func_info
LINE_INFO_SIZE = 16   # struct bpf_line_info
CORE_RELO_SIZE = 16   # struct bpf_core_relo


class CoreRelo(NamedTuple):
    """One bpf_core_relo record (include/uapi/linux/bpf.h, Linux 5.17)."""
    insn_off: int    # byte offset of the instruction
    type_id: int     # local BTF type id of the root type
    access_str: str  # e.g. "0:1:0"
    kind: int        # enum bpf_core_relo_kind


class ExtInfo:
    """Per-section record lists.

    func_info[sec] and line_info[sec] hold raw records (bytes) whose first u32 is the
    byte offset of the instruction; core_relos[sec] holds CoreRelo.
    """

    def __init__(self):
        self.func_info = {}
        self.line_info = {}
        self.core_relos = {}
        self.func_info_rec_size = FUNC_INFO_SIZE
        self.line_info_rec_size = LINE_INFO_SIZE


def parse(data, string_at):
    """Parse .BTF.ext bytes; string_at(off) -> str reads the .BTF string table."""
    ext = ExtInfo()
    if len(data) < _HDR.size:
        raise ParseError(".BTF.ext: truncated header")
    magic, _version, _flags, hdr_len, fi_off, fi_len, li_off, li_len = _HDR.unpack_from(data)
    if magic != MAGIC:
        raise ParseError(".BTF.ext: bad magic %#x" % magic)
    if hdr_len < _HDR.size or hdr_len > len(data):
        raise ParseError(".BTF.ext: bad header length %d" % hdr_len)
    body = data[hdr_len:]
    ext.func_info, ext.func_info_rec_size = _records(body, fi_off, fi_len, FUNC_INFO_SIZE,
                                                     string_at, "func_info")
    ext.line_info, ext.line_info_rec_size = _records(body, li_off, li_len, LINE_INFO_SIZE,
                                                     string_at, "line_info")
    if hdr_len >= _HDR.size + _HDR_CORE.size:
        cr_off, cr_len = _HDR_CORE.unpack_from(data, _HDR.size)
        raw, _ = _records(body, cr_off, cr_len, CORE_RELO_SIZE, string_at, "core_relo")
        for sec, recs in raw.items():
            out = ext.core_relos[sec] = []
            for r in recs:
                off, type_id, access_off, kind = struct.unpack_from("<IIII", r)
                out.append(CoreRelo(off, type_id, string_at(access_off), kind))
    return ext


def _records(body, off, length, min_size, string_at, what):
    """Split one info subsection into {section name: [record bytes, ...]}."""
    out = {}
    if length == 0:
        return out, min_size
    if off + length > len(body) or length < 4:
        raise ParseError(".BTF.ext %s: out of bounds" % what)
    blob = body[off:off + length]
    rec_size = struct.unpack_from("<I", blob)[0]
    if rec_size < min_size or rec_size % 4:
        raise ParseError(".BTF.ext %s: bad record size %d" % (what, rec_size))
    pos = 4
    while pos < len(blob):
        if pos + _SEC.size > len(blob):
            raise ParseError(".BTF.ext %s: truncated section header" % what)
        name_off, n = _SEC.unpack_from(blob, pos)
        pos += _SEC.size
        end = pos + n * rec_size
        if n == 0 or end > len(blob):
            raise ParseError(".BTF.ext %s: bad record count %d" % (what, n))
        sec = string_at(name_off)
        out.setdefault(sec, []).extend(blob[p:p + rec_size] for p in range(pos, end, rec_size))
        pos = end
    return out, rec_size
