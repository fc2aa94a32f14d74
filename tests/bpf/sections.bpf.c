// SPDX-License-Identifier: GPL-2.0
/* One small program per section name the loader must map to a program type
 * and expected attach type (libbpf's names). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, 4);
	__uint(key_size, 4);
	__uint(value_size, 8);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

const volatile __u32 nsocks = 4;

static __always_inline void mark(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&seen, &i);

	if (v)
		*v += 1;
}

SEC("socket")
int sec_socket(struct __sk_buff *skb)
{
	mark(0);
	return skb->len;
}

SEC("sk_reuseport")
int sec_select(struct sk_reuseport_md *md)
{
	__u32 key = md->hash % nsocks;

	mark(1);
	bpf_sk_select_reuseport(md, &socks, &key, 0);
	return SK_PASS;
}

SEC("sk_reuseport/migrate")
int sec_migrate(struct sk_reuseport_md *md)
{
	__u32 key = 0;

	if (!md->migrating_sk)
		return SK_PASS;
	mark(2);
	bpf_sk_select_reuseport(md, &socks, &key, 0);
	return SK_PASS;
}

SEC("xdp")
int sec_xdp(struct xdp_md *ctx)
{
	mark(3);
	return XDP_PASS;
}

SEC("tc")
int sec_tc(struct __sk_buff *skb)
{
	mark(4);
	return skb->len + 1;
}

SEC("classifier")
int sec_classifier(struct __sk_buff *skb)
{
	mark(5);
	return skb->len + 2;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int sec_tracepoint(void *ctx)
{
	mark(6);
	return 0;
}

SEC("raw_tp/sys_enter")
int sec_raw_tp(void *ctx)
{
	mark(7);
	return 0;
}

SEC("cgroup_skb/ingress")
int sec_ingress(struct __sk_buff *skb)
{
	mark(0);
	return 1;
}

SEC("cgroup_skb/egress")
int sec_egress(struct __sk_buff *skb)
{
	mark(1);
	return skb->len > 1000 ? 0 : 1;
}

char LICENSE[] SEC("license") = "GPL";
