// SPDX-License-Identifier: GPL-2.0
/* CO-RE against the running kernel: a socket filter that reads the real
 * struct sk_buff behind its context through a *local* layout that differs
 * from the kernel's, so only correct relocation gives the right answers.
 *
 * out[] (in .bss) receives the relocated constants; the return value is
 * skb->len as read through the local layout.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* Fewer fields, different order and offsets than the kernel's sk_buff. */
struct sk_buff___local {
	__u32 data_len;
	__u8 pkt_type: 3;
	__u32 len;
	__u16 mac_len;
} __attribute__((preserve_access_index));

/* A field no kernel has. */
struct sk_buff___missing {
	int hermes_no_such_field;
} __attribute__((preserve_access_index));

/* A type no kernel has. */
struct hermes_no_such_type {
	int x;
} __attribute__((preserve_access_index));

enum bpf_map_type___local {
	BPF_MAP_TYPE_REUSEPORT_SOCKARRAY___local = 1,
	HERMES_NO_SUCH_MAP_TYPE___local = 2,
};

/* Set to 1 (before load) to make the unguarded missing-field read reachable:
 * the load must then fail on the poisoned instruction. */
const volatile int use_missing = 0;

__u64 out[16];

SEC("socket")
int core_basic(struct __sk_buff *ctx)
{
	/* The context of a socket filter is the kernel's sk_buff. */
	struct sk_buff___local *skb = (void *)ctx;
	struct sk_buff___missing *miss = (void *)ctx;
	__u32 len = BPF_CORE_READ(skb, len);

	out[0] = bpf_core_field_offset(struct sk_buff___local, len);
	out[1] = bpf_core_field_size(struct sk_buff___local, mac_len);
	out[2] = bpf_core_field_exists(struct sk_buff___local, data_len);
	out[3] = bpf_core_field_exists(struct sk_buff___missing, hermes_no_such_field);
	out[4] = bpf_core_type_exists(struct sk_buff___local);
	out[5] = bpf_core_type_exists(struct hermes_no_such_type);
	out[6] = bpf_core_type_size(struct sk_buff___local);
	out[7] = bpf_core_enum_value(enum bpf_map_type___local,
				     BPF_MAP_TYPE_REUSEPORT_SOCKARRAY___local);
	out[8] = bpf_core_enum_value_exists(enum bpf_map_type___local,
					    HERMES_NO_SUCH_MAP_TYPE___local);
	out[9] = BPF_CORE_READ_BITFIELD_PROBED(skb, pkt_type);
	out[10] = BPF_CORE_READ(skb, data_len);
	out[11] = bpf_core_field_offset(struct sk_buff___local, mac_len);
	if (use_missing)
		out[12] = BPF_CORE_READ(miss, hermes_no_such_field);
	return len;
}

char LICENSE[] SEC("license") = "GPL";
