"""Build the guest's initramfs for one unpacked Debian kernel.

    python3 tests/kernels/initramfs.py KERNEL_DIR OUT.cpio

The archive holds busybox (static, from the host), the modules needed to mount
the host's root over virtio-9p (with their dependencies, decompressed so that
busybox's insmod can load them) and an /init that mounts it and hands over to
tests/kernels/guest.  No kmod on the host: dependencies come from each
module's own .modinfo "depends=" field.
"""

import lzma
import os
import subprocess
import sys

# What the guest needs beyond what Debian builds in: the PCI virtio transport
# (built in from 6.12 on), the 9p transport and the 9p filesystem.
WANT = ("virtio_pci", "9pnet_virtio", "9p")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "init: insmod $m failed"; done
mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=262144,ro hostroot /newroot \
    || { echo "init: cannot mount the host's root"; poweroff -f; }
for d in tmp run var/tmp; do mount -t tmpfs -o mode=1777 tmpfs /newroot/$d; done
mkdir -p /newroot/tmp/hermes-out
mount -t 9p -o trans=virtio,version=9p2000.L hermesout /newroot/tmp/hermes-out \
    || { echo "init: cannot mount the output share"; poweroff -f; }
ip link set lo up
for d in proc sys dev; do mount --move /$d /newroot/$d; done
exec switch_root /newroot /bin/sh /tmp/hermes-out/guest
"""


def modinfo(data):
    """The key=value strings of a module's .modinfo section (found by scanning:
    the fields are NUL-separated and the ones we read are unambiguous)."""
    out = {}
    for field in (b"depends=", b"name="):
        i = data.find(b"\0" + field)
        if i >= 0:
            end = data.index(b"\0", i + 1)
            out[field[:-1].decode()] = data[i + 1 + len(field):end].decode()
    return out


def read_module(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout
    return data


def module_index(moddir):
    """name (with '-' as '_') -> path, for every module of this kernel."""
    index = {}
    for top, _, files in os.walk(moddir):
        for f in files:
            base = f.split(".ko")[0]
            if ".ko" in f:
                index[base.replace("-", "_")] = os.path.join(top, f)
    return index


def resolve(index, names):
    """Modules in load order (dependencies first); built-in ones are absent."""
    order, seen = [], set()

    def visit(name):
        name = name.replace("-", "_")
        if name in seen or name not in index:
            return
        seen.add(name)
        deps = modinfo(read_module(index[name])).get("depends", "")
        for d in filter(None, deps.split(",")):
            visit(d)
        order.append(name)

    for n in names:
        visit(n)
    return order


def cpio_newc(entries):
    """entries: (path, mode, data) -> a newc archive (what the kernel unpacks)."""
    out = bytearray()
    for ino, (path, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        name = path.encode() + b"\0"
        hdr = "070701" + "".join("%08X" % v for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name), 0))
        out += hdr.encode() + name
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build(kdir, out):
    release = open(os.path.join(kdir, "release")).read().strip()
    moddir = os.path.join(kdir, "root/lib/modules", release)
    index = module_index(moddir)
    order = resolve(index, WANT)
    DIR, FILE = 0o040755, 0o100755
    entries = [(d, DIR, b"") for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules")]
    with open("/bin/busybox", "rb") as f:
        entries.append(("bin/busybox", FILE, f.read()))
    entries.append(("init", FILE, INIT.encode()))
    for name in order:
        entries.append(("lib/modules/%s.ko" % name, 0o100644, read_module(index[name])))
    entries.append(("modules.order", 0o100644, "".join(n + ".ko\n" for n in order).encode()))
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(cpio_newc(entries))
    os.replace(tmp, out)
    return order


if __name__ == "__main__":
    print(" ".join(build(sys.argv[1], sys.argv[2])))
