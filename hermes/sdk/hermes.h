/* hermes.h: the Hermes worker SDK for C event loops (header-only, C11).
 *
 * The same shared state, hooks and scheduler as the Python SDK (hermes/sdk):
 *
 *     static struct hermes_worker hw;
 *     if (hermes_attach_env(&hw) < 0)           // 1 attached, 0 not under Hermes
 *             errx(1, "%s", hw.error);           // -1 refused: layout, slot, fds
 *     for (;;) {
 *             hermes_before_poll(&hw);           // schedule, then idle
 *             n = epoll_wait(ep, evs, max, -1);
 *             hermes_after_poll(&hw, n);         // busy from now on
 *             ...                                // hermes_event_done(), hermes_conn_opened(),
 *     }                                          // hermes_conn_closed()
 *
 * Outside Hermes every hook is a no-op, so a server runs unchanged.  Every shared
 * word is written with one relaxed 8-byte atomic store and read with a relaxed
 * load; nothing is read-modify-written (DESIGN.md §5).  No allocation.
 *
 * Needs POSIX (mmap, clock_gettime): build with -std=gnu11, or define
 * _POSIX_C_SOURCE 200809L before any include; -I bpf for hermes_layout.h.
 */
#ifndef HERMES_H
#define HERMES_H

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "hermes_layout.h"

/* The environment a launcher hands a worker (hermes/state.py). */
#define HERMES_ENV_SLOT     "HERMES_SLOT"
#define HERMES_ENV_WST_FD   "HERMES_WST_FD"
#define HERMES_ENV_SCHED_FD "HERMES_SCHED_FD"

struct hermes_worker {
	struct hermes_slot *self;   /* our slot; NULL when not attached (hooks do nothing) */
	struct hermes_slot *first;  /* our group's first slot */
	__u64 first_id;             /* and its number */
	struct hermes_group *group; /* our group's bitmap, stamp and launcher's masks */
	struct hermes_sched *sched;
	struct hermes_slot *wst;
	size_t wst_len, sched_len;
	int slot;                   /* -1 when not attached */
	__u64 pending, conns;       /* our own counts: we are their one writer */
	char error[256];            /* why hermes_attach*() returned -1 */
};

static inline __u64 hermes_load(const __u64 *p)
{
	return atomic_load_explicit((const _Atomic __u64 *)p, memory_order_relaxed);
}

static inline void hermes_store(__u64 *p, __u64 v)
{
	atomic_store_explicit((_Atomic __u64 *)p, v, memory_order_relaxed);
}

/* CLOCK_MONOTONIC: the clock of bpf_ktime_get_ns(). */
static inline __u64 hermes_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (__u64)ts.tv_sec * 1000000000ULL + (__u64)ts.tv_nsec;
}

static inline void hermes_unmap(struct hermes_worker *w)
{
	if (w->wst)
		munmap(w->wst, w->wst_len);
	if (w->sched)
		munmap(w->sched, w->sched_len);
	w->wst = NULL;
	w->sched = NULL;
	w->self = w->first = NULL;
	w->group = NULL;
	w->slot = -1;
}

static inline int hermes_fail(struct hermes_worker *w, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(w->error, sizeof(w->error), fmt, ap);
	va_end(ap);
	hermes_unmap(w);
	return -1;
}

/* A BPF array's mmap length: value size times entries, rounded up to pages. */
static inline size_t hermes_map_len(size_t bytes)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);

	return (bytes + page - 1) / page * page;
}

/* Take slot `slot` of the pool whose WST and sched maps are `wst_fd` and `sched_fd`.
 * 1 on success; -1 with w->error set (nothing of the slot written) on refusal. */
static inline int hermes_attach(struct hermes_worker *w, int slot, int wst_fd, int sched_fd)
{
	__u64 have, nr, now, first;
	struct hermes_slot *s;
	void *p;

	memset(w, 0, sizeof(*w));
	w->slot = -1;
	w->sched_len = hermes_map_len(sizeof(struct hermes_sched));
	p = mmap(NULL, w->sched_len, PROT_READ | PROT_WRITE, MAP_SHARED, sched_fd, 0);
	if (p == MAP_FAILED)
		return hermes_fail(w, "cannot map the Hermes sched map (fd %d): %s",
				   sched_fd, strerror(errno));
	w->sched = p;
	/* Check the policy before touching the WST: a refused worker writes nothing. */
	have = hermes_load(&w->sched->policy.layout);
	if (have != HERMES_LAYOUT)
		return hermes_fail(w, "shared state layout %#llx (version %llu) does not match "
				   "this worker's %#llx (version %llu): rebuild the worker against "
				   "the running Hermes", (unsigned long long)have,
				   (unsigned long long)(have & 0xFFFFFFFF),
				   (unsigned long long)HERMES_LAYOUT,
				   (unsigned long long)(HERMES_LAYOUT & 0xFFFFFFFF));
	nr = hermes_load(&w->sched->policy.nr_workers);
	if (slot < 0 || (__u64)slot >= nr)
		return hermes_fail(w, "slot %d is outside the pool of %llu workers",
				   slot, (unsigned long long)nr);
	w->wst_len = hermes_map_len(sizeof(struct hermes_slot) * HERMES_MAX_WORKERS);
	p = mmap(NULL, w->wst_len, PROT_READ | PROT_WRITE, MAP_SHARED, wst_fd, 0);
	if (p == MAP_FAILED)
		return hermes_fail(w, "cannot map the Hermes worker table (fd %d): %s",
				   wst_fd, strerror(errno));
	w->wst = p;

	first = (__u64)slot / HERMES_GROUP_SIZE * HERMES_GROUP_SIZE;
	w->slot = slot;
	w->first = &w->wst[first];
	w->first_id = first;
	w->group = &w->sched->group[first / HERMES_GROUP_SIZE];
	w->self = s = &w->wst[slot];

	now = hermes_now();
	hermes_store(&s->layout, 0);            /* not eligible while half-written */
	hermes_store(&s->busy_since_ns, 0);
	hermes_store(&s->heartbeat_ns, now);
	hermes_store(&s->pending, 0);
	hermes_store(&s->conns, 0);
	hermes_store(&s->pid, (__u64)getpid());
	hermes_store(&s->generation, hermes_load(&s->generation) + 1);  /* our slot, one writer */
	hermes_store(&s->flags, 0);
	/* Release: whoever sees the layout word sees the fields above. */
	atomic_store_explicit((_Atomic __u64 *)&s->layout, HERMES_LAYOUT, memory_order_release);
	return 1;
}

static inline int hermes_env_int(const char *name, int *out)
{
	const char *s = getenv(name);
	char *end;
	long v;

	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || v > 0x7fffffff)
		return -1;
	*out = (int)v;
	return 0;
}

/* Attach as the launcher set this process up: 1 attached, 0 not under Hermes
 * (no HERMES_WST_FD: the hooks do nothing), -1 refused (w->error says why). */
static inline int hermes_attach_env(struct hermes_worker *w)
{
	int slot, wst_fd, sched_fd;

	memset(w, 0, sizeof(*w));
	w->slot = -1;
	if (!getenv(HERMES_ENV_WST_FD))
		return 0;
	if (hermes_env_int(HERMES_ENV_SLOT, &slot) || hermes_env_int(HERMES_ENV_WST_FD, &wst_fd) ||
	    hermes_env_int(HERMES_ENV_SCHED_FD, &sched_fd))
		return hermes_fail(w, "bad Hermes environment: %s, %s and %s must be numbers",
				   HERMES_ENV_SLOT, HERMES_ENV_WST_FD, HERMES_ENV_SCHED_FD);
	return hermes_attach(w, slot, wst_fd, sched_fd);
}

/* --- the scheduler: the cascade of hermes/sdk/scheduler.py, same integer arithmetic -- */

/* Products of a sum and (1000 + θ‰) need more than 64 bits for hostile counts;
 * Python's integers never overflow, so neither may ours. */
#ifdef __SIZEOF_INT128__
__extension__ typedef unsigned __int128 hermes_wide;
#else
typedef __u64 hermes_wide;
#endif

/* The members of `alive` (`n` of them) whose v[i] <= avg * (1 + θ), that is
 * v * n * 1000 <= sum * k; unless that would leave fewer than two, as the
 * dispatcher needs two to spread over (then the filter is skipped). */
static inline __u64 hermes_filter(__u64 alive, unsigned int *n, const __u64 *v,
				  unsigned int size, __u64 k)
{
	hermes_wide sum = 0, n1000 = (hermes_wide)*n * 1000;
	__u64 keep = 0;
	unsigned int i, kept = 0;

	if (*n < 3)
		return alive;
	for (i = 0; i < size; i++)
		if (alive >> i & 1)
			sum += v[i];
	for (i = 0; i < size; i++)
		if ((alive >> i & 1) && (hermes_wide)v[i] * n1000 <= sum * k) {
			keep |= 1ULL << i;
			kept++;
		}
	if (kept < 2)
		return alive;
	*n = kept;
	return keep;
}

/* The group's bitmap for its current state (publishes nothing). */
static inline __u64 hermes_compute(const struct hermes_worker *w, __u64 now)
{
	__u64 nr = hermes_load(&w->sched->policy.nr_workers);   /* the pool can be resized */
	__u64 thresh = hermes_load(&w->sched->policy.hang_threshold_ns);
	__u64 out = hermes_load(&w->group->drain_mask) | hermes_load(&w->group->stuck_mask);
	__u64 conns[HERMES_GROUP_SIZE], pending[HERMES_GROUP_SIZE];
	__u64 alive = 0, busy, k;
	unsigned int i, n = 0, size = 0;

	if (nr > w->first_id)
		size = nr - w->first_id < HERMES_GROUP_SIZE ? nr - w->first_id : HERMES_GROUP_SIZE;
	for (i = 0; i < size; i++) {
		const struct hermes_slot *s = &w->first[i];

		if (hermes_load(&s->layout) != HERMES_LAYOUT ||
		    hermes_load(&s->flags) & HERMES_SLOT_DRAINING || out >> i & 1)
			continue;
		busy = hermes_load(&s->busy_since_ns);
		/* Busy past the threshold is hung; a stamp from the future is not. */
		if (busy && now > busy && now - busy >= thresh)
			continue;
		alive |= 1ULL << i;
		n++;
		conns[i] = hermes_load(&s->conns);
		pending[i] = hermes_load(&s->pending);
	}
	k = 1000 + hermes_load(&w->sched->policy.theta_permille);
	alive = hermes_filter(alive, &n, conns, size, k);
	return hermes_filter(alive, &n, pending, size, k);
}

/* Compute and publish: the bitmap, then its freshness stamp. */
static inline __u64 hermes_schedule(struct hermes_worker *w, __u64 now)
{
	__u64 bitmap = hermes_compute(w, now);

	hermes_store(&w->group->bitmap, bitmap);
	hermes_store(&w->group->stamp_ns, now);
	return bitmap;
}

/* --- loop hooks: a few word stores each; no-ops when not attached ------------------ */

/* End of a loop iteration, about to block: mark idle, then schedule.  Idle first:
 * a worker back from a long iteration is no longer hung, and must not take itself
 * out of the bitmap it is about to write. */
static inline void hermes_before_poll(struct hermes_worker *w)
{
	__u64 now;

	if (!w->self)
		return;
	now = hermes_now();
	hermes_store(&w->self->busy_since_ns, 0);
	hermes_store(&w->self->heartbeat_ns, now);
	hermes_schedule(w, now);
}

/* Poll returned: busy from now on, with `nevents` more to handle. */
static inline void hermes_after_poll(struct hermes_worker *w, int nevents)
{
	if (!w->self)
		return;
	hermes_store(&w->self->busy_since_ns, hermes_now());
	if (nevents > 0) {
		w->pending += (__u64)nevents;
		hermes_store(&w->self->pending, w->pending);
	}
}

static inline void hermes_event_done(struct hermes_worker *w)
{
	if (!w->self)
		return;
	if (w->pending)
		w->pending--;
	hermes_store(&w->self->pending, w->pending);
}

static inline void hermes_set_pending(struct hermes_worker *w, __u64 n)
{
	if (!w->self)
		return;
	w->pending = n;
	hermes_store(&w->self->pending, n);
}

static inline void hermes_conn_opened(struct hermes_worker *w)
{
	if (!w->self)
		return;
	hermes_store(&w->self->conns, ++w->conns);
}

static inline void hermes_conn_closed(struct hermes_worker *w)
{
	if (!w->self)
		return;
	if (w->conns)
		w->conns--;
	hermes_store(&w->self->conns, w->conns);
}

static inline void hermes_set_draining(struct hermes_worker *w, int draining)
{
	if (!w->self)
		return;
	hermes_store(&w->self->flags, draining ? HERMES_SLOT_DRAINING : 0);
}

/* Leave the pool and unmap the state; later hooks do nothing.  A replacement may
 * already own the slot (graceful reload): then the slot is left alone. */
static inline void hermes_detach(struct hermes_worker *w)
{
	if (!w->self)
		return;
	if (hermes_load(&w->self->pid) == (__u64)getpid()) {
		/* Out of the pool first, then claim no load: the slot is handed over. */
		hermes_store(&w->self->layout, 0);
		hermes_store(&w->self->busy_since_ns, 0);
		hermes_store(&w->self->pending, 0);
		hermes_store(&w->self->conns, 0);
	}
	hermes_unmap(w);
}

#endif /* HERMES_H */
