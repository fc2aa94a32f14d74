"""Corrupted objects end in the loader's own error, never another exception.

Variants of real objects: truncations, bit flips, section headers pointing
outside the file, relocation symbol indexes out of range, BTF type ids and string
offsets out of range.  Each must parse cleanly or raise BPFError; with BPF
privilege, the ones that parse are loaded too and must load or raise BPFError.
"""

import glob
import os
import random
import signal
import struct

import pytest

from hermes.bpf import BPFError, elf, reader

VARIANTS = 2400          # acceptance asks for at least 2,000
PER_VARIANT_S = 5        # a hang is a failure, not a slow pass


def _objects():
    from conftest import BUILD, _built
    _built("hermes.bpf.o")
    for name in ("globals", "maps", "subprogs", "sections"):
        _built("tests/%s.bpf.o" % name)
    paths = sorted(glob.glob(os.path.join(BUILD, "*.bpf.o")) +
                   glob.glob(os.path.join(BUILD, "tests", "*.bpf.o")))
    return [(os.path.basename(p), open(p, "rb").read()) for p in paths
            if "bad_verifier" not in p]


class _Layout:
    """Where the interesting fields of one object live, from a clean parse."""

    def __init__(self, raw):
        f = elf.ELFFile(raw)
        self.shoff = struct.unpack_from("<Q", raw, 0x28)[0]
        self.nsec = len(f.sections)
        self.rels = [(s.offset, s.size) for s in f.sections if s.type == elf.SHT_REL]
        btf = f.section(".BTF")
        self.btf = None
        if btf is not None:
            hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
                "<IIIII", raw, btf.offset + 4)
            base = btf.offset + hdr_len
            self.btf = (btf.offset, base + type_off, type_len, str_len)
        ext = f.section(".BTF.ext")
        self.ext = (ext.offset, ext.size) if ext is not None else None


def _mutants(objs, n, rng):
    layouts = [(name, raw, _Layout(raw)) for name, raw in objs]
    kinds = ["truncate", "flip", "shdr", "rel", "btf_type", "btf_str", "btf_hdr", "ext"]
    for i in range(n):
        name, raw, lay = layouts[i % len(layouts)]
        kind = kinds[(i // len(layouts)) % len(kinds)]
        b = bytearray(raw)
        if kind == "truncate":
            b = b[:rng.randrange(len(b))]
        elif kind == "flip":
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == "shdr":
            at = lay.shoff + 64 * rng.randrange(lay.nsec)
            field = rng.choice([(0, "I"), (4, "I"), (0x18, "Q"), (0x20, "Q"), (0x28, "I"),
                                (0x2c, "I"), (0x38, "Q")])
            val = rng.choice([0, 1, 0xFFFFFFFF, len(raw), len(raw) + 8, rng.getrandbits(31)])
            struct.pack_into("<" + field[1], b, at + field[0], val)
        elif kind == "rel" and lay.rels:
            off, size = rng.choice(lay.rels)
            if size >= 16:
                at = off + 16 * rng.randrange(size // 16)
                sym = rng.choice([0, 0xFFFF, rng.getrandbits(16)])
                rtype = rng.choice([1, 2, 3, 10, 77])
                struct.pack_into("<QQ", b, at, rng.choice([0, 8, 7, 1 << 20]),
                                 (sym << 32) | rtype)
        elif kind in ("btf_type", "btf_str") and lay.btf:
            _, tstart, tlen, slen = lay.btf
            at = tstart + 4 * rng.randrange(max(1, tlen // 4))
            if kind == "btf_type":
                val = rng.choice([0, 1, 0xFFFF, 0x7FFFFFFF, rng.getrandbits(20)])
            else:
                val = rng.choice([slen, slen + 1, 0xFFFFFFF0, rng.getrandbits(16)])
            struct.pack_into("<I", b, at, val & 0xFFFFFFFF)
        elif kind == "btf_hdr" and lay.btf:
            start = lay.btf[0]
            at = start + rng.choice([0, 4, 8, 12, 16, 20])
            struct.pack_into("<I", b, at, rng.choice([0, 0xFFFFFFFF, rng.getrandbits(24)]))
        elif kind == "ext" and lay.ext:
            off, size = lay.ext
            at = off + 4 * rng.randrange(max(1, size // 4))
            struct.pack_into("<I", b, at, rng.choice([0, 3, 0xFFFFFFFF, rng.getrandbits(18)]))
        else:
            b[rng.randrange(len(b))] ^= 0xFF
        yield "%s/%s#%d" % (name, kind, i), bytes(b)


def _small_maps(raw):
    spec = reader.parse(raw, "mutant")
    maps = list(spec.maps.values()) + [m.inner for m in spec.maps.values() if m.inner]
    return all(m.max_entries * max(m.value_size + m.key_size, 8) <= 1 << 20
               and m.max_entries <= 1 << 16 for m in maps)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _classify(fn):
    """'ok' | 'error' (a BPFError); anything else propagates with context."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(PER_VARIANT_S)
    try:
        fn()
        return "ok"
    except BPFError:
        return "error"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _parse_all():
    rng = random.Random(20261128)
    results = {"ok": [], "error": []}
    for label, raw in _mutants(_objects(), VARIANTS, rng):
        try:
            results[_classify(lambda: reader.parse(raw, "mutant"))].append((label, raw))
        except _Timeout:
            pytest.fail("%s: parse did not finish in %d s" % (label, PER_VARIANT_S))
        except Exception as e:   # noqa: BLE001 -- this is what the test looks for
            pytest.fail("%s: %s: %s" % (label, type(e).__name__, e))
    return results


def test_mutants_parse_or_fail_cleanly():
    results = _parse_all()
    total = len(results["ok"]) + len(results["error"])
    assert total == VARIANTS >= 2000
    # The corruption must actually bite: most variants are rejected.
    assert len(results["error"]) > VARIANTS // 3, len(results["error"])


def test_mutants_that_parse_load_or_fail_cleanly(pin_dir):
    from hermes.bpf import load_collection
    results = _parse_all()
    # Mutants that only grow a map test the kernel's memory, not the loader (a flipped
    # max_entries bit can ask for gigabytes): keep those whose maps stay small.
    sample = [(label, raw) for label, raw in results["ok"] if _small_maps(raw)][:400]
    loaded = failed = 0
    for label, raw in sample:
        spec = reader.parse(raw, "mutant")

        def load():
            load_collection(spec, pin_root=pin_dir).close()
        try:
            if _classify(load) == "ok":
                loaded += 1
            else:
                failed += 1
        except _Timeout:
            pytest.fail("%s: load did not finish in %d s" % (label, PER_VARIANT_S))
        except Exception as e:   # noqa: BLE001
            pytest.fail("%s: %s: %s" % (label, type(e).__name__, e))
    assert loaded + failed == len(sample) > 50
