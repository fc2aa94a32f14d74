// SPDX-License-Identifier: GPL-2.0
/* LIBBPF_PIN_BY_NAME: libbpf pins the map at /sys/fs/bpf/oracle_pinned when it
 * creates it, and reuses the pinned map on the next load.  Kept apart from
 * maps.bpf.c because `bpftool prog loadall ... pinmaps DIR` refuses such a map
 * (libbpf 1.1: "already has pin path ... different from ..."). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} oracle_pinned SEC(".maps");

SEC("socket")
int pinned_count(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&oracle_pinned, &key);

	if (!v)
		return 0;
	*v += skb->len;
	return *v;
}

char LICENSE[] SEC("license") = "GPL";
