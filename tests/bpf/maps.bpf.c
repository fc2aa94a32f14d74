// SPDX-License-Identifier: GPL-2.0
/* BTF-defined maps of every kind the loader creates, written by one program
 * so that the map contents after a test run show each map was wired right. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct pair {
	__u32 len;
	__u32 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} arr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct pair);
} hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32);
	__type(key, __u64);
	__type(value, __u32);
} lru SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} shared SEC(".maps");

/* Sizes only, no BTF key/value types. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__uint(key_size, 4);
	__uint(value_size, 12);
} sized SEC(".maps");

/* Map-in-map: two named inner maps put in the outer array's slots at load
 * time, and a hash of maps whose inner template is anonymous. */
struct inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} inner_a SEC(".maps"), inner_b SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct inner);
} outer SEC(".maps") = {
	.values = { &inner_a, &inner_b },
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 4);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_HASH);
		__uint(max_entries, 8);
		__type(key, __u32);
		__type(value, __u32);
	});
} outer_hash SEC(".maps");

static __always_inline __u64 *slot(void *map, __u32 key)
{
	return bpf_map_lookup_elem(map, &key);
}

SEC("xdp")
int maps_xdp(struct xdp_md *ctx)
{
	__u32 len = ctx->data_end - ctx->data;
	__u32 zero = 0, one = 1, *iv;
	__u64 key64 = len * 3ULL, *v;
	struct pair p = { len, 1 }, *pp;
	__u8 blob[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
	void *inner;

	if ((v = slot(&arr, len & 7)))
		*v += len;
	pp = bpf_map_lookup_elem(&hash, &len);
	if (pp)
		pp->count++;
	else
		bpf_map_update_elem(&hash, &len, &p, BPF_NOEXIST);
	bpf_map_update_elem(&lru, &key64, &len, BPF_ANY);
	if ((v = slot(&percpu, 1)))
		*v += 1;
	bpf_ringbuf_output(&events, &len, sizeof(len), 0);
	if ((v = slot(&shared, 1)))
		*v += 3;
	blob[0] = len;
	bpf_map_update_elem(&sized, &len, blob, BPF_ANY);

	/* Each inner map gets a distinct write: the slots must hold the right maps. */
	inner = bpf_map_lookup_elem(&outer, &zero);
	if (inner && (iv = bpf_map_lookup_elem(inner, &one)))
		*iv += 100;
	inner = bpf_map_lookup_elem(&outer, &one);
	if (inner && (iv = bpf_map_lookup_elem(inner, &one)))
		*iv += 200;
	inner = bpf_map_lookup_elem(&outer_hash, &zero);
	if (inner && (iv = bpf_map_lookup_elem(inner, &zero)))
		*iv += 1;
	return XDP_PASS;
}

/* Reads back what maps_xdp wrote: the answer depends on the inner slots. */
SEC("tc")
int maps_tc(struct __sk_buff *skb)
{
	__u32 zero = 0, one = 1, *iv, ret = 0;
	void *inner;
	__u64 *v;

	inner = bpf_map_lookup_elem(&outer, &zero);
	if (inner && (iv = bpf_map_lookup_elem(inner, &one)))
		ret += *iv;
	inner = bpf_map_lookup_elem(&outer, &one);
	if (inner && (iv = bpf_map_lookup_elem(inner, &one)))
		ret += *iv * 2;
	if ((v = slot(&shared, 1)))
		ret += *v * 10000;
	if ((v = slot(&arr, skb->len & 7)))
		ret += *v * 1000000;
	return ret;
}

char LICENSE[] SEC("license") = "GPL";
