// SPDX-License-Identifier: GPL-2.0
/* The Hermes dispatcher: pick a listening socket for each new connection from the
 * eligibility bitmap that the workers' schedulers write (paper Algorithm 2), with
 * two guards the paper lacks: the chosen worker's own slot is re-checked for a hang,
 * and a bitmap no scheduler has refreshed lately is ignored.  Every failure path
 * returns SK_PASS without selecting, so the kernel's reuseport hash decides: the
 * dispatcher never drops a connection.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "hermes_layout.h"

/* Layout constants, exported through .rodata so that userspace reads them from
 * this object instead of restating them (C macros do not reach BTF). */
const volatile __u64 hermes_layout = HERMES_LAYOUT;
const volatile __u64 hermes_group_size = HERMES_GROUP_SIZE;
const volatile __u64 hermes_max_groups = HERMES_MAX_GROUPS;
const volatile __u64 hermes_max_rechecks = HERMES_MAX_RECHECKS;
/* Not read here: they carry the enums' definitions into BTF for userspace. */
const volatile enum hermes_stat hermes_abi_stat = HERMES_STAT_MAX;
const volatile enum hermes_slot_flag hermes_abi_slot_flag = HERMES_SLOT_DRAINING;
const volatile enum hermes_group_mode hermes_abi_group_mode = HERMES_GROUP_BY_HASH;

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, HERMES_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u64);
} hermes_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, HERMES_MAX_WORKERS);
	__type(key, __u32);
	__type(value, struct hermes_slot);
} hermes_wst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hermes_sched);
} hermes_sched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HERMES_STATS_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
} hermes_stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&hermes_stats, &idx);

	if (v)
		*v += 1;   /* per-CPU: no atomics needed */
}

static __always_inline int fallback(enum hermes_stat why)
{
	count(HERMES_MAX_WORKERS + why);
	return SK_PASS;
}

#define L8 0x0101010101010101ULL      /* 1 in every byte */
#define H8 0x8080808080808080ULL      /* every byte's high bit */

/* Bit counts of m, running by byte: byte k holds popcount(m & (2^(8(k+1)) - 1)),
 * so the top byte is popcount(m).  No byte overflows: counts are <= 64. */
static __always_inline __u64 byte_counts(__u64 m)
{
	m = m - ((m >> 1) & 0x5555555555555555ULL);
	m = (m & 0x3333333333333333ULL) + ((m >> 2) & 0x3333333333333333ULL);
	m = (m + (m >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return m * L8;
}

/* popcount of a nibble: sixteen 4-bit counts packed in one constant. */
static __always_inline __u32 popcount4(__u64 x)
{
	return (0x4332322132212110ULL >> (x << 2)) & 0xf;
}

/* Position of the n-th (0-based) set bit of m, n < popcount(m), given
 * c = byte_counts(m): the byte in one word-wide compare, then the bit in it
 * (a binary search of popcounts cost twice as many instructions). */
static __always_inline __u32 nth_set_bit(__u64 m, __u64 c, __u32 n)
{
	/* Per byte, (0x80 | c_k) - (n + 1) keeps its high bit iff c_k > n, with no
	 * borrow between bytes (both are <= 64): the clear ones precede n's byte. */
	__u64 before = ~((c | H8) - (n + 1) * L8) & H8;
	__u32 pos = (((before >> 7) * L8) >> 56) * 8, k;
	__u64 v;

	n -= ((c << 8) >> pos) & 0xff;        /* set bits in the bytes before */
	v = (m >> pos) & 0xff;
	k = popcount4(v & 0xf);
	if (n >= k) {
		n -= k;
		v >>= 4;
		pos += 4;
	}
	k = popcount4(v & 0x3);
	if (n >= k) {
		n -= k;
		v >>= 2;
		pos += 2;
	}
	if (n >= (v & 1))
		pos += 1;
	return pos;
}

/* The clock of the hang and stale checks.  CLOCK_MONOTONIC as of the last tick
 * (bpf_ktime_get_coarse_ns, Linux 5.11) is a memory read; the exact clock reads
 * the TSC, which under a hypervisor was a third of a decision's cost.  Late by up
 * to a tick, against limits of hundreds of milliseconds. */
#define HERMES_CLOCK_SLACK_NS 10000000ULL     /* a tick at HZ=100 */

static __always_inline __u64 clock_ns(void)
{
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_ktime_get_coarse_ns))
		return bpf_ktime_get_coarse_ns();
	return bpf_ktime_get_ns();
}

/* The kernel's reciprocal_scale(): map a 32-bit hash onto [0, n). */
static __always_inline __u32 scale(__u32 hash, __u32 n)
{
	return ((__u64)hash * n) >> 32;
}

static __always_inline __u32 mix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	h *= 0x846ca68b;
	h ^= h >> 16;
	return h;
}

/* Destination address and port of the SYN, for cache-locality grouping. */
static __always_inline __u32 locality_hash(struct sk_reuseport_md *md)
{
	__u32 h = 0;
	__u16 dport = 0;
	__u8 ver = 0;

	if (bpf_skb_load_bytes_relative(md, 0, &ver, 1, BPF_HDR_START_NET))
		return md->hash;
	if ((ver >> 4) == 4) {
		__u32 daddr = 0;
		__u32 ihl = (ver & 0xf) * 4;

		bpf_skb_load_bytes_relative(md, 16, &daddr, 4, BPF_HDR_START_NET);
		if (ihl >= 20 && ihl <= 60)
			bpf_skb_load_bytes_relative(md, ihl + 2, &dport, 2, BPF_HDR_START_NET);
		h = daddr;
	} else {
		__u32 daddr[4] = {};

		bpf_skb_load_bytes_relative(md, 24, daddr, 16, BPF_HDR_START_NET);
		bpf_skb_load_bytes_relative(md, 40 + 2, &dport, 2, BPF_HDR_START_NET);
		h = daddr[0] ^ daddr[1] ^ daddr[2] ^ daddr[3];
	}
	return mix(h ^ ((__u32)dport << 16));
}

static __always_inline int dispatch(struct sk_reuseport_md *md, int migrating)
{
	__u32 zero = 0, n, worker, i;
	__u64 g;	/* 64-bit: the register checked below is the one indexing */
	struct hermes_sched *s;
	struct hermes_slot *slot;
	__u64 bitmap, now, stamp, ngroups;
	enum hermes_stat why = HERMES_STAT_FEW;

	s = bpf_map_lookup_elem(&hermes_sched, &zero);
	if (!s || s->policy.layout != hermes_layout)
		return fallback(HERMES_STAT_NO_STATE);
	ngroups = s->policy.nr_groups;
	if (ngroups == 0 || ngroups > HERMES_MAX_GROUPS)
		return fallback(HERMES_STAT_NO_STATE);

	g = 0;
	if (ngroups > 1) {
		__u32 h = s->policy.group_mode == HERMES_GROUP_BY_LOCALITY ?
			  locality_hash(md) : mix(md->hash);
		g = scale(h, ngroups);
	}
	/* Opaque to the compiler, so this check stays: Linux 5.10's verifier
	 * cannot bound g through scale()'s multiply-shift by itself. */
	asm volatile("" : "+r"(g));
	if (g >= HERMES_MAX_GROUPS)
		return fallback(HERMES_STAT_NO_STATE);

	now = clock_ns();
	bitmap = s->group[g].bitmap;
	stamp = s->group[g].stamp_ns;
	/* A stamp a little ahead is the coarse clock lagging; far ahead, garbage. */
	if (stamp > now ? stamp - now > HERMES_CLOCK_SLACK_NS :
			  now - stamp > s->policy.stale_limit_ns) {
		/* No scheduler turned lately (all idle, or none instrumented): ignore the
		 * bitmap and take the whole group, still re-checking each pick below. */
		__u64 first = (__u64)g * HERMES_GROUP_SIZE, in_group;

		count(HERMES_MAX_WORKERS + HERMES_STAT_STALE);
		if (s->policy.nr_workers <= first)
			return fallback(HERMES_STAT_NO_STATE);
		in_group = s->policy.nr_workers - first;
		bitmap = in_group >= 64 ? ~0ULL : (1ULL << in_group) - 1;
	}
	bitmap &= ~(s->group[g].drain_mask | s->group[g].stuck_mask);

	for (i = 0; i < HERMES_MAX_RECHECKS; i++) {
		__u64 counts = byte_counts(bitmap);
		__u32 bit;

		n = counts >> 56;
		if (n < 2)
			return fallback(why);
		bit = nth_set_bit(bitmap, counts, scale(md->hash, n));
		worker = g * HERMES_GROUP_SIZE + bit;
		slot = bpf_map_lookup_elem(&hermes_wst, &worker);
		if (slot) {
			__u64 busy = slot->busy_since_ns;

			/* The kernel's own hang check: no need to wait for a scheduler turn. */
			if (busy && now > busy && now - busy > s->policy.hang_threshold_ns) {
				count(HERMES_MAX_WORKERS + HERMES_STAT_RECHECK);
				why = HERMES_STAT_HUNG;
				bitmap &= ~(1ULL << bit);
				continue;
			}
		}
		if (bpf_sk_select_reuseport(md, &hermes_socks, &worker, 0)) {
			/* No socket there (closing listener, empty slot): try another. */
			why = HERMES_STAT_NO_SOCKET;
			bitmap &= ~(1ULL << bit);
			continue;
		}
		count(worker);
		count(HERMES_MAX_WORKERS + (migrating ? HERMES_STAT_MIGRATED : HERMES_STAT_SELECTED));
		return SK_PASS;
	}
	return fallback(why);
}

SEC("sk_reuseport")
int hermes_select(struct sk_reuseport_md *md)
{
	return dispatch(md, 0);
}

/* Linux 5.14: also called with md->migrating_sk set when a listener closes
 * (net.ipv4.tcp_migrate_req=1), to move its queued requests to a live one. */
SEC("sk_reuseport/migrate")
int hermes_migrate(struct sk_reuseport_md *md)
{
	return dispatch(md, md->migrating_sk != 0);
}

char LICENSE[] SEC("license") = "GPL";
