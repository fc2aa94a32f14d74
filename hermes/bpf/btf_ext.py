"""The .BTF.ext section: func_info, line_info and CO-RE relocation records.

Parsing only; records are grouped by the ELF section they describe.
"""

from typing import NamedTuple


class CoreRelo(NamedTuple):
    """One bpf_core_relo record (include/uapi/linux/bpf.h, Linux 5.17)."""
    insn_off: int    # byte offset of the instruction (section-relative when parsed)
    type_id: int     # local BTF type id of the root type
    access_str: str  # e.g. "0:1:0"
    kind: int        # enum bpf_core_relo_kind
