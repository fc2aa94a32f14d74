/* Hermes shared-state layout: the one definition.
 *
 * Included by the dispatcher (bpf/hermes.bpf.c) and the C SDK; the Python SDK reads
 * the same structs from the compiled object's BTF.  Every field is a naturally
 * aligned __u64 so each userspace store is one instruction (DESIGN.md §5).
 * Bump HERMES_LAYOUT_VERSION on any change: workers built against another layout
 * are refused.
 */
#ifndef HERMES_LAYOUT_H
#define HERMES_LAYOUT_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define HERMES_MAGIC          0x48524d53ULL            /* "HRMS" */
#ifndef HERMES_LAYOUT_VERSION                         /* -D only to test refusal */
#define HERMES_LAYOUT_VERSION 1ULL
#endif
#define HERMES_LAYOUT         ((HERMES_MAGIC << 32) | HERMES_LAYOUT_VERSION)

#define HERMES_GROUP_SIZE     64                       /* one bitmap word */
#define HERMES_MAX_GROUPS     32
#define HERMES_MAX_WORKERS    (HERMES_GROUP_SIZE * HERMES_MAX_GROUPS)
#define HERMES_MAX_RECHECKS   4

/* One worker's column of the Worker Status Table; one cache line, one writer. */
struct hermes_slot {
	__u64 busy_since_ns;   /* CLOCK_MONOTONIC when the loop woke; 0 = blocked in poll (idle) */
	__u64 heartbeat_ns;    /* end of the last loop iteration */
	__u64 pending;         /* events returned by poll and not yet handled */
	__u64 conns;           /* open connections */
	__u64 pid;
	__u64 generation;      /* bumped each time a worker attaches to the slot */
	__u64 flags;           /* HERMES_SLOT_* */
	__u64 layout;          /* HERMES_LAYOUT, written when the worker attaches */
};

/* Enums rather than macros from here on: enums reach the object's BTF, where the
 * Python side reads them. */
enum hermes_slot_flag {
	HERMES_SLOT_DRAINING = 1,   /* take no new connections */
	HERMES_SLOT_OBSERVED = 2,   /* published by the launcher for an unmodified worker */
};

/* Run-time policy; written by the launcher and hermesctl, read by everyone. */
struct hermes_policy {
	__u64 layout;             /* HERMES_LAYOUT once initialised */
	__u64 nr_workers;
	__u64 nr_groups;
	__u64 hang_threshold_ns;  /* busy longer than this = hung */
	__u64 stale_limit_ns;     /* bitmap older than this is ignored */
	__u64 theta_permille;     /* θ as a fraction of the average, x1000 */
	__u64 group_mode;         /* HERMES_GROUP_BY_* */
	__u64 reserved;
};

enum hermes_group_mode {
	HERMES_GROUP_BY_HASH = 0,      /* 4-tuple hash */
	HERMES_GROUP_BY_LOCALITY = 1,  /* destination address and port */
};

/* One group's eligibility bitmap and when a scheduler last wrote it (any worker
 * of the group); then two masks the launcher alone writes. */
struct hermes_group {
	__u64 bitmap;
	__u64 stamp_ns;
	__u64 drain_mask;         /* workers taken out by `hermesctl drain` */
	__u64 stuck_mask;         /* idle in poll yet not taking queued connections (stopped) */
	__u64 pad[4];             /* own cache line: groups are written by different workers */
};

struct hermes_sched {
	struct hermes_policy policy;
	struct hermes_group group[HERMES_MAX_GROUPS];
};

/* Kernel-side counters (per-CPU array): dispatched per worker, then by reason. */
enum hermes_stat {
	HERMES_STAT_SELECTED = 0,   /* a worker was chosen from the bitmap */
	HERMES_STAT_NO_STATE,       /* no policy/layout yet: kernel hash */
	HERMES_STAT_STALE,          /* bitmap too old: whole group, re-checked */
	HERMES_STAT_FEW,            /* fewer than two eligible: kernel hash */
	HERMES_STAT_HUNG,           /* rechecks exhausted: kernel hash */
	HERMES_STAT_NO_SOCKET,      /* chosen slot had no socket: kernel hash */
	HERMES_STAT_RECHECK,        /* a pick was skipped because its worker was busy too long */
	HERMES_STAT_MIGRATED,       /* a request moved off a closing listener */
	HERMES_STAT_MAX,
};
#define HERMES_STATS_ENTRIES (HERMES_MAX_WORKERS + HERMES_STAT_MAX)

#endif /* HERMES_LAYOUT_H */
