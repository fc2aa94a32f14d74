// SPDX-License-Identifier: GPL-2.0
/* bpf-to-bpf calls: static (noinline) and global subprograms shared by two
 * programs, so each program gets its own appended copy; callbacks passed as
 * ld_imm64 PSEUDO_FUNC to bpf_loop and bpf_for_each_map_elem; a map and a
 * global variable referenced only from subprograms. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

const volatile __u32 loops = 10;
__u64 calls;				/* .bss, touched only by a subprogram */

struct loop_ctx {
	__u64 sum;
	__u32 mul;
};

/* Map-fd relocation inside a static subprogram. */
static __noinline __u64 bump(__u32 idx, __u64 by)
{
	__u64 *v = bpf_map_lookup_elem(&counts, &idx);

	if (!v)
		return 0;
	*v += by;
	calls++;
	return *v;
}

/* Global functions: verified on their own, need func_info. */
__noinline int mix(int a, int b)
{
	return a * 31 + b;
}

__noinline int pkt_len(struct __sk_buff *skb)
{
	return skb ? skb->len : 0;
}

static int loop_cb(__u32 i, void *data)
{
	struct loop_ctx *c = data;

	c->sum += i * c->mul;
	return 0;
}

static long sum_cb(struct bpf_map *map, __u32 *key, __u64 *val, void *data)
{
	*(__u64 *)data += *val * (*key + 1);
	return 0;
}

static __noinline int common(struct __sk_buff *skb, __u32 idx, __u32 mul)
{
	struct loop_ctx c = { .sum = 0, .mul = mul };
	__u64 acc = 0;

	bpf_loop(loops, loop_cb, &c, 0);
	bump(idx, pkt_len(skb));
	bpf_for_each_map_elem(&counts, sum_cb, &acc, 0);
	return mix(c.sum, acc);
}

SEC("socket")
int sub_socket(struct __sk_buff *skb)
{
	return common(skb, 0, 3);
}

SEC("tc")
int sub_tc(struct __sk_buff *skb)
{
	return common(skb, 2, 5) + mix(1, 2);
}

char LICENSE[] SEC("license") = "GPL";
