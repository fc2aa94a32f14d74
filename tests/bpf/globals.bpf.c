// SPDX-License-Identifier: GPL-2.0
/* Global data: .rodata (const volatile, settable before load), .data, .bss
 * and custom .data.* / .rodata.* sections, read and written through map value
 * ld_imm64 relocations with non-zero offsets.  The test-run return values
 * depend on every one of them, so a wrong relocation changes the answer. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* .rodata, non-zero defaults; tests --set them and recompute the answer. */
const volatile __u8 scale = 3;
const volatile __u32 bias = 1000;
const volatile __s16 offset = -7;
const volatile __u64 big = 0x500000000ULL;
const volatile bool enabled = true;

/* .data: an array so accesses carry offsets (&table[2] is .data + 8 + 16). */
__u32 counter = 5;
__u64 table[4] = { 10, 20, 30, 40 };
static __u32 static_data = 9;		/* static: relocated against the section symbol */

/* .bss */
__u32 hits;
__u64 last_len;
static __u64 static_bss;

/* Custom sections: their own array maps (libbpf >= 0.6). */
__u32 custom_val SEC(".data.custom") = 77;
const volatile __u32 custom_ro SEC(".rodata.custom") = 11;

/* Only .rodata: the answer a --set changes (the test recomputes it). */
SEC("socket")
int globals_ro(struct __sk_buff *skb)
{
	if (!enabled)
		return 1;
	return scale * 100000 + bias + offset + (__u32)(big >> 32) * 10 + custom_ro * 1000000;
}

/* Everything: reads and writes each section, index from the packet length. */
SEC("socket")
int globals_rw(struct __sk_buff *skb)
{
	__u32 idx = skb->len & 3;

	hits++;
	last_len = skb->len;
	table[idx] += skb->len;
	counter += bias;
	custom_val += scale;
	static_data += 2;
	static_bss += table[2];
	return (table[2] + counter + custom_val + static_data + static_bss + hits) & 0x7fffffff;
}

char LICENSE[] SEC("license") = "GPL";
