// SPDX-License-Identifier: GPL-2.0
/* Rejected by the verifier on purpose: reads 8 bytes past an 8-byte map value. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} one SEC(".maps");

SEC("socket")
int out_of_bounds(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&one, &key);

	if (!v)
		return 0;
	return v[1];
}

char LICENSE[] SEC("license") = "GPL";
