"""The shared-state layout, read from the dispatcher object's BTF.

bpf/hermes_layout.h is the one definition; clang writes its structs into the
object's BTF and its constants into .rodata, and this module reads both, so C,
BPF and Python cannot drift apart.  Offsets are in 8-byte words: every field is a
naturally aligned __u64 (DESIGN.md §5).
"""

import os

from .bpf import ParseError, btf as _btf, load_spec

OBJECT_NAME = "hermes.bpf.o"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Where the object is looked for: $HERMES_OBJ, the source tree's build/, the package.
SEARCH_PATH = (os.path.join(os.path.dirname(_PACKAGE_DIR), "build", OBJECT_NAME),
               os.path.join("/usr/lib/hermes", OBJECT_NAME))


class LayoutError(Exception):
    """The shared state and this code disagree on its layout, or it is missing."""


def find_object(path=None):
    """Path of the dispatcher object: `path`, $HERMES_OBJ, or a default location."""
    for p in (path, os.environ.get("HERMES_OBJ")) + SEARCH_PATH:
        if p and os.path.exists(p):
            return p
    raise LayoutError("cannot find %s (set HERMES_OBJ, or run make)" % OBJECT_NAME)


def _words(btf, name, expect_size=None):
    """{field: word offset} of struct `name`, checking every field is a u64 slot."""
    ids = btf.find(name, _btf.KIND_STRUCT)
    if not ids:
        raise LayoutError("struct %s is not in the object's BTF" % name)
    t = btf.types[ids[0]]
    out = {}
    for m in t.members:
        if m.offset % 64 or m.bitfield_size:
            raise LayoutError("%s.%s is not 8-byte aligned" % (name, m.name))
        out[m.name] = m.offset // 64
    return out, t.size // 8


def _enum(btf, name, prefix):
    """{lower-case suffix: value} of enum `name`."""
    for tid in btf.find(name, _btf.KIND_ENUM):
        return {n[len(prefix):].lower(): v for n, v in btf.types[tid].values}
    raise LayoutError("enum %s is not in the object's BTF" % name)


class Layout:
    """Word offsets and constants of the shared state.

    slot[f], policy[f], group[f]: word offset of field f within its struct;
    slot_words / group_words: stride; policy_base / group_base: where the policy
    and the group array start inside the sched map's single value.
    """

    def __init__(self, spec, path=None):
        self.path = path
        self.spec = spec
        btf = spec.btf
        if btf is None:
            raise LayoutError("the dispatcher object has no BTF")
        try:
            self.slot, self.slot_words = _words(btf, "hermes_slot")
            self.policy, _ = _words(btf, "hermes_policy")
            self.group, self.group_words = _words(btf, "hermes_group")
            sched, self.sched_words = _words(btf, "hermes_sched")
            self.policy_base = sched["policy"]
            self.group_base = sched["group"]
            self.value = spec.variable_value("hermes_layout")
            self.group_size = spec.variable_value("hermes_group_size")
            self.max_groups = spec.variable_value("hermes_max_groups")
            self.max_workers = spec.maps["hermes_wst"].max_entries
            stat = _enum(btf, "hermes_stat", "HERMES_STAT_")
            self.flags = _enum(btf, "hermes_slot_flag", "HERMES_SLOT_")
            self.group_modes = _enum(btf, "hermes_group_mode", "HERMES_GROUP_BY_")
        except (KeyError, ParseError) as e:
            raise LayoutError("the dispatcher object lacks %s" % e) from None
        self.version = self.value & 0xFFFFFFFF
        self.nr_stats = stat.pop("max")
        self.stats = sorted(stat, key=stat.get)     # reason names, by index
        self.DRAINING = self.flags["draining"]
        self.OBSERVED = self.flags["observed"]

    @classmethod
    def load(cls, path=None):
        path = find_object(path)
        return cls(load_spec(path), path)

    def policy_word(self, field):
        return self.policy_base + self.policy[field]

    def group_word(self, g, field):
        return self.group_base + g * self.group_words + self.group[field]

    def slot_word(self, i, field):
        return i * self.slot_words + self.slot[field]

