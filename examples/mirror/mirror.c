/*
 * mirror.c - a reference N-way mirror over libdmio. See mirror.h.
 *
 * State (all under m->lock):
 *
 *   per region r:   gen[r]       generation: +1 for every write issued to r
 *                   busy[r]      a mirror_write covering r is not yet acknowledged
 *                   inflight[r]  leg IOs on r not yet final (any leg)
 *                   active[r]    persisted before a write to r is issued; legs may
 *                                differ in r until it is cleared (crash recovery)
 *   per leg L and region r:
 *                   dirty        L misses data of r: reads avoid it, resync copies r
 *                   lio          IOs on (L, r) not yet final: 0 or 1, never more
 *
 * Ordering. A write to r is issued to leg L only when lio(L, r) == 0; if an
 * earlier write (or a resync copy) is still running on (L, r), typically one
 * that timed out, L is skipped for this write and marked dirty. So on every
 * leg, writes to a region are never concurrent and land in issue order: a
 * late write cannot overwrite newer data. Writes to one region are also
 * serialized against each other (busy[r]): the next one is issued after the
 * previous one was acknowledged.
 *
 * Dirty tracking. L becomes dirty for r when its IO on r ends in TIMEOUT (at
 * the deadline, before the acknowledgement), ERROR or CANCELLED, or when L is
 * skipped. A late OK clears it only when the write's generation is still
 * gen[r] (no newer write was issued meanwhile) and r was clean on L when the
 * write was issued (a partial write does not repair an already stale region).
 *
 * Resync of (L, r) starts only when nothing is in flight on r and no write
 * covering r is waiting for its acknowledgement; it reserves lio(L, r) first
 * (so new writes skip L), reads r from a clean leg, and clears the dirty bit
 * when its write to L is OK and gen[r] did not change meanwhile.
 *
 * The persisted log is written with DM_IO_FLUSH | DM_IO_FUA. Active bits
 * are on the log before the write is issued, and are cleared (lazily) only
 * by a commit that also carries every dirty bit set meanwhile. After a
 * crash an active region is copied from the first leg not dirty in the log.
 * So a dirty bit needs a commit before the acknowledgement only when that
 * leg (in the image on disk, or in the one being written) does not hold the
 * write (ack_needs_commit). Bits that are cleared are written lazily. Two
 * slots with a sequence number and a checksum, written alternately, so a
 * torn log write leaves the previous state readable. A clean close cancels
 * what still runs and clears every active bit: the dirty bits are exact.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "mirror.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOG_MAGIC "DMIOMLG1"
#define LOG_VERSION 1u
#define ACTIVE_LINGER_MS 500.0
#define LAZY_COMMIT_MS 200.0
#define READ_SLOW_MS 2000.0
#define LOG_TIMEOUT_MS 5000
#define MAX_WRITE_REGIONS 64 /* regions one mirror_write may span */
#define CLOSE_DRAIN_MS 5000.0 /* close waits this long for cancelled IO to be notified */

enum { IO_RUNNING = 0, IO_LATE = 1, IO_DONE = 2 };

struct chunk {
	struct chunk *prev, *next; /* m->live */
	struct mirror *m;
	int owner;                 /* the submitter still looks at it */
	int resync;                /* a resync copy (one leg) */
	uint64_t region, gen;
	unsigned nio, nfinal, undecided, ok;
	unsigned ok_late;          /* legs OK after their TIMEOUT, before the ack */
	unsigned leg_of[MIRROR_MAX_LEGS];
	unsigned char was_clean[MIRROR_MAX_LEGS];
	unsigned char st[MIRROR_MAX_LEGS];
	int final_state[MIRROR_MAX_LEGS];
	double submit_ms;
	uint64_t need_seq;         /* log seq that must be committed before the ack */
	unsigned src;              /* resync: source leg */
	int fua;                   /* written with DM_IO_FUA */
	void *data;
	pthread_cond_t *wake;      /* the owner's condition variable, signalled on each notify */
};

struct leg {
	struct block_device *bdev;
	char path[512];
	char name[64];
	int failed;
	char fail_reason[96];
	double next_probe, read_slow_until;
	uint64_t ndirty, late, cursor;
	uint64_t timeouts, late_ok, late_kept, late_err, errors, skipped, resynced, read_errors,
		read_slow, failures;
};

struct mirror {
	struct mirror_config cfg;
	pthread_mutex_t lock;
	pthread_cond_t cond;       /* rare waits (busy region, back-pressure, wait_*); see mwake */
	unsigned nwait;            /* threads waiting on cond */
	pthread_cond_t dcond;      /* the resync thread's sleeps and its resync copies */
	struct dm_io_client *cl;
	unsigned nlegs, block_size, region_size, max_io;
	uint64_t size, nregions, late_cap;
	struct leg legs[MIRROR_MAX_LEGS];
	/* per region */
	uint64_t *gen;
	unsigned char *busy, *active;
	unsigned *inflight;
	double *last_write;
	uint64_t *aseq;
	/* flushes: fepoch counts the flushes issued; wep[leg x region] is
	 * fepoch when the last write to the region completed on the leg
	 * (UINT64_MAX: none since open);
	 * good_ep[leg] is the epoch of the leg's last successful flush */
	uint64_t fepoch, good_ep[MIRROR_MAX_LEGS];
	uint64_t *wep;
	uint64_t flushes, flush_errors;
	/* per leg x region */
	unsigned char *dirty;
	unsigned char *lio;
	uint64_t *dseq;
	unsigned char *ddirty;     /* dirty bits of the last committed log image */
	int img_inflight;          /* a log write of m->logbuf is under way */
	struct chunk live;
	/* log */
	struct block_device *logdev;
	pthread_mutex_t log_lock;
	uint64_t seq, committed;
	unsigned slot;             /* next slot to write */
	size_t slot_bytes, bitmap_bytes;
	unsigned char *logbuf;
	double last_commit;
	/* daemon */
	pthread_t daemon;
	int stop, paused, daemon_running;
	unsigned read_rr;
	/* stats */
	uint64_t writes, writes_degraded, write_errors, reads, read_errors, timeouts, late_completions,
		resynced, log_commits, log_errors;
	double max_ack_ms;
};

static __thread char last_error[256];

static void set_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
}

const char *mirror_last_error(void)
{
	return last_error;
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Waits on cv (a CLOCK_MONOTONIC condition variable) for at most ms. */
static void cv_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, double ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	long long ns = (long long)ts.tv_nsec + (long long)(ms * 1e6);
	ts.tv_sec += (time_t)(ns / 1000000000LL);
	ts.tv_nsec = (long)(ns % 1000000000LL);
	pthread_cond_timedwait(cv, mu, &ts);
}

static void cv_init(pthread_cond_t *cv)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
}

/* Waits on m->cond for at most ms (m->lock held). A writer waiting for its
 * own IO waits on its own condition variable instead (chunk->wake), so a
 * completion wakes one thread, not every writer. */
static void cond_wait_ms(struct mirror *m, double ms)
{
	m->nwait++;
	cv_wait_ms(&m->cond, &m->lock, ms);
	m->nwait--;
}

static void cond_wait(struct mirror *m)
{
	m->nwait++;
	pthread_cond_wait(&m->cond, &m->lock);
	m->nwait--;
}

/* Wakes the threads waiting on m->cond, if any (m->lock held). */
static void mwake(struct mirror *m)
{
	if (m->nwait)
		pthread_cond_broadcast(&m->cond);
}

static void ev(struct mirror *m, const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	if (!m->cfg.event)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	m->cfg.event(m->cfg.event_ctx, buf);
}

void mirror_config_init(struct mirror_config *c)
{
	memset(c, 0, sizeof(*c));
	c->block_size = 4096;
	c->region_size = 64 * 1024;
	c->write_timeout_ms = 100;
	c->read_timeout_ms = 100;
	c->quorum = 1;
	c->fail_after_ms = 5000;
	c->resync_kbps = 16384;
	c->probe_ms = 1000;
	c->queue_depth = 64;
}

const char *mirror_leg_state_name(enum mirror_leg_state s)
{
	switch (s) {
	case MIRROR_LEG_IN_SYNC: return "in-sync";
	case MIRROR_LEG_DIRTY: return "dirty";
	case MIRROR_LEG_FAILED: return "failed";
	}
	return "?";
}

/* ---- dirty bits (m->lock held) ------------------------------------------ */

static size_t lr(const struct mirror *m, unsigned leg, uint64_t r)
{
	return (size_t)leg * m->nregions + r;
}

/* Bytes of region r: region_size, less for a partial last region. */
static uint64_t region_len(const struct mirror *m, uint64_t r)
{
	uint64_t off = r * (uint64_t)m->region_size;
	return m->size - off < m->region_size ? m->size - off : m->region_size;
}

/* Marks (leg, r) dirty; returns the log seq that records it. */
static uint64_t set_dirty(struct mirror *m, unsigned leg, uint64_t r)
{
	size_t i = lr(m, leg, r);
	if (!m->dirty[i]) {
		m->dirty[i] = 1;
		m->legs[leg].ndirty++;
		m->dseq[i] = ++m->seq;
	}
	return m->dseq[i];
}

static void clear_dirty(struct mirror *m, unsigned leg, uint64_t r)
{
	size_t i = lr(m, leg, r);
	if (m->dirty[i]) {
		m->dirty[i] = 0;
		m->legs[leg].ndirty--;
		m->seq++; /* committed lazily */
		if (m->legs[leg].ndirty == 0 && !m->legs[leg].failed)
			ev(m, "%s: no dirty region left", m->legs[leg].name);
	}
}

static void fail_leg(struct mirror *m, unsigned leg, const char *why)
{
	struct leg *l = &m->legs[leg];
	if (l->failed) {
		l->next_probe = now_ms() + m->cfg.probe_ms;
		return;
	}
	l->failed = 1;
	l->failures++;
	snprintf(l->fail_reason, sizeof(l->fail_reason), "%s", why);
	l->next_probe = now_ms() + m->cfg.probe_ms;
	ev(m, "%s FAILED: %s; writes skip it (its regions are marked dirty)", l->name, why);
}

/* ---- the log ------------------------------------------------------------- */

struct log_hdr {
	char magic[8];
	uint32_t version, nlegs;
	uint64_t region_size, nregions, seq;
	uint32_t bitmap_bytes, csum;
};

static uint32_t fnv1a(const unsigned char *p, size_t n, uint32_t h)
{
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 16777619u;
	}
	return h;
}

static uint32_t log_csum(const unsigned char *slot, size_t bitmap_bytes)
{
	struct log_hdr h;
	memcpy(&h, slot, sizeof(h));
	h.csum = 0;
	uint32_t c = fnv1a((const unsigned char *)&h, sizeof(h), 2166136261u);
	return fnv1a(slot + 4096, bitmap_bytes, c);
}

/* Bitmap k (0..nlegs-1: dirty of leg k; nlegs: active) of a slot image. */
static unsigned char *bitmap(struct mirror *m, unsigned char *slot, unsigned k)
{
	return slot + 4096 + (size_t)k * ((m->nregions + 7) / 8);
}

static int log_io(struct mirror *m, int rw, unsigned slot, void *buf)
{
	struct dm_io_region reg = { m->logdev, (uint64_t)slot * (m->slot_bytes / 512), m->slot_bytes / 512 };
	struct dm_io_control c = {
		.memory = { .type = DM_IO_VM, .ptr.vma = buf },
		.rw = rw | DM_IO_SYNC | (rw == DM_IO_WRITE ? DM_IO_FLUSH | DM_IO_FUA : 0),
		.client = m->cl,
		.timeout = LOG_TIMEOUT_MS,
	};
	return dm_io(&c, 1, &reg, NULL);
}

/* Makes the log on disk at least as new as seq `need`. Group commit: one
 * write covers every change made before its snapshot. */
static int log_commit(struct mirror *m, uint64_t need)
{
	int rc = 0;
	if (!m->logdev)
		return 0;
	pthread_mutex_lock(&m->log_lock);
	pthread_mutex_lock(&m->lock);
	if (m->committed >= need) {
		pthread_mutex_unlock(&m->lock);
		pthread_mutex_unlock(&m->log_lock);
		return 0;
	}
	unsigned char *s = m->logbuf;
	memset(s, 0, m->slot_bytes);
	for (unsigned k = 0; k <= m->nlegs; k++) {
		unsigned char *b = bitmap(m, s, k);
		for (uint64_t r = 0; r < m->nregions; r++)
			if (k < m->nlegs ? m->dirty[lr(m, k, r)] : m->active[r])
				b[r / 8] |= (unsigned char)(1u << (r % 8));
	}
	uint64_t seq = m->seq;
	m->img_inflight = 1;
	pthread_mutex_unlock(&m->lock);

	struct log_hdr h = { .version = LOG_VERSION, .nlegs = m->nlegs, .region_size = m->region_size,
			     .nregions = m->nregions, .seq = seq, .bitmap_bytes = (uint32_t)m->bitmap_bytes };
	memcpy(h.magic, LOG_MAGIC, 8);
	memcpy(s, &h, sizeof(h));
	h.csum = log_csum(s, m->bitmap_bytes);
	memcpy(s, &h, sizeof(h));
	rc = log_io(m, DM_IO_WRITE, m->slot, s);

	pthread_mutex_lock(&m->lock);
	m->last_commit = now_ms();
	m->img_inflight = 0;
	if (rc == 0) {
		for (unsigned k = 0; k < m->nlegs; k++) {
			const unsigned char *b = bitmap(m, s, k);
			for (uint64_t r = 0; r < m->nregions; r++)
				m->ddirty[lr(m, k, r)] = (b[r / 8] >> (r % 8)) & 1;
		}
		if (seq > m->committed)
			m->committed = seq;
		m->log_commits++;
		m->slot ^= 1; /* only after success: the other slot stays intact */
	} else {
		m->log_errors++;
		ev(m, "log write failed: %s", strerror(-rc));
	}
	pthread_mutex_unlock(&m->lock);
	pthread_mutex_unlock(&m->log_lock);
	return rc;
}

/* Creates or extends a regular log file to `bytes`. */
static int prepare_log_file(const char *path, size_t bytes)
{
	struct stat st;
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
		return 0; /* a block device: used as it is */
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	int rc = 0;
	if (fstat(fd, &st) == 0 && (size_t)st.st_size < bytes && ftruncate(fd, (off_t)bytes) != 0)
		rc = -errno;
	close(fd);
	return rc;
}

/* Loads the newest valid slot. Returns 1 if found, 0 for a new log. */
static int log_load(struct mirror *m)
{
	unsigned char *s[2] = { malloc(m->slot_bytes), malloc(m->slot_bytes) };
	int best = -1;
	uint64_t best_seq = 0;
	for (unsigned k = 0; k < 2; k++) {
		struct log_hdr h;
		if (!s[k] || log_io(m, DM_IO_READ, k, s[k]) != 0)
			continue;
		memcpy(&h, s[k], sizeof(h));
		if (memcmp(h.magic, LOG_MAGIC, 8) || h.version != LOG_VERSION)
			continue;
		if (h.nlegs != m->nlegs || h.region_size != m->region_size || h.nregions != m->nregions ||
		    h.bitmap_bytes != m->bitmap_bytes) {
			free(s[0]);
			free(s[1]);
			set_error("log %s was made for another geometry (%u legs, %llu regions of %llu bytes)",
				  m->cfg.log_path, h.nlegs, (unsigned long long)h.nregions,
				  (unsigned long long)h.region_size);
			return -EINVAL;
		}
		if (h.csum != log_csum(s[k], m->bitmap_bytes))
			continue; /* torn write: the other slot has the previous state */
		if (best < 0 || h.seq > best_seq)
			best = (int)k, best_seq = h.seq;
	}
	if (best >= 0) {
		for (unsigned leg = 0; leg < m->nlegs; leg++) {
			unsigned char *b = bitmap(m, s[best], leg);
			for (uint64_t r = 0; r < m->nregions; r++)
				if (b[r / 8] & (1u << (r % 8)))
					set_dirty(m, leg, r);
		}
		unsigned char *a = bitmap(m, s[best], m->nlegs);
		uint64_t nactive = 0;
		for (uint64_t r = 0; r < m->nregions; r++) {
			if (!(a[r / 8] & (1u << (r % 8))))
				continue;
			/* Legs may differ in r: keep the first clean leg, resync the others. */
			nactive++;
			int src = -1;
			for (unsigned leg = 0; leg < m->nlegs && src < 0; leg++)
				if (!m->dirty[lr(m, leg, r)])
					src = (int)leg;
			for (unsigned leg = 0; leg < m->nlegs; leg++)
				if ((int)leg != src)
					set_dirty(m, leg, r);
		}
		if (best_seq > m->seq)
			m->seq = best_seq;
		m->committed = best_seq;
		m->slot = (unsigned)best ^ 1;
		ev(m, "log: loaded (seq %llu), %llu region(s) were being written", (unsigned long long)best_seq,
		   (unsigned long long)nactive);
	}
	free(s[0]);
	free(s[1]);
	return best >= 0;
}

/* ---- writes ---------------------------------------------------------------- */

static void chunk_link(struct mirror *m, struct chunk *c)
{
	c->next = &m->live;
	c->prev = m->live.prev;
	m->live.prev->next = c;
	m->live.prev = c;
}

static void chunk_put(struct mirror *m, struct chunk *c)
{
	/* m->lock held; frees once final everywhere and released by its owner. */
	if (c->owner || c->nfinal < c->nio)
		return;
	c->prev->next = c->next;
	c->next->prev = c->prev;
	free(c->data);
	free(c);
	(void)m;
}

static const char *state_word(int s)
{
	switch (s) {
	case DM_IO_OK: return "OK";
	case DM_IO_TIMEOUT: return "TIMEOUT";
	case DM_IO_CANCELLED: return "CANCELLED";
	case DM_IO_ERROR: return "ERROR";
	}
	return "?";
}

/* Notify of every leg write (user writes and resync copies). */
static void write_notify(struct dm_io_region_state *st, void *ctx)
{
	struct chunk *c = ctx;
	struct mirror *m = c->m;
	unsigned i = st->index;
	if (i >= c->nio)
		return;
	unsigned L = c->leg_of[i];
	struct leg *l = &m->legs[L];
	uint64_t r = c->region;
	double t = now_ms();

	pthread_mutex_lock(&m->lock);
	pthread_cond_t *wake = c->wake; /* NULL once the owner let go (c may be freed below) */
	if (st->state == DM_IO_TIMEOUT) {
		if (c->st[i] == IO_RUNNING) {
			c->st[i] = IO_LATE;
			c->undecided--;
			l->late++;
			l->timeouts++;
			m->timeouts++;
			uint64_t s = set_dirty(m, L, r);
			if (s > c->need_seq)
				c->need_seq = s;
			if (c->resync)
				ev(m, "%s: resync copy of region %llu timed out after %.0f ms", l->name,
				   (unsigned long long)r, t - c->submit_ms);
			else
				ev(m, "%s: write to region %llu TIMED OUT after %.0f ms -> region dirty on %s", l->name,
				   (unsigned long long)r, t - c->submit_ms, l->name);
		}
		goto out;
	}
	if (c->st[i] == IO_DONE)
		goto out;
	int was_late = c->st[i] == IO_LATE;
	if (was_late) {
		l->late--;
		m->late_completions++;
	} else {
		c->undecided--;
	}
	c->st[i] = IO_DONE;
	c->final_state[i] = st->state;
	c->nfinal++;
	m->lio[lr(m, L, r)]--;
	m->inflight[r]--;

	if (st->state == DM_IO_OK) {
		int current = m->gen[r] == c->gen;
		m->wep[lr(m, L, r)] = m->fepoch; /* on L, not durable before the next flush */
		if (!was_late)
			c->ok++;
		else if (c->owner)
			c->ok_late++; /* the writer may still be waiting for its quorum */
		if (c->resync) {
			if (current) {
				clear_dirty(m, L, r);
				l->resynced++;
				m->resynced++;
				ev(m, "resync: region %llu copied %s -> %s%s (%llu dirty left on %s)",
				   (unsigned long long)r, m->legs[c->src].name, l->name, was_late ? " (late)" : "",
				   (unsigned long long)l->ndirty, l->name);
				if (l->failed) {
					l->failed = 0;
					l->fail_reason[0] = 0;
					ev(m, "%s is BACK: writes go to it again; resync continues", l->name);
				}
			} else {
				ev(m, "resync: region %llu on %s superseded by a newer write; again later",
				   (unsigned long long)r, l->name);
			}
		} else if (was_late) {
			l->late_ok++;
			if (current && c->was_clean[i] && !l->failed) {
				clear_dirty(m, L, r);
				ev(m, "%s: late OK for region %llu after %.0f ms; no newer write: region clean again",
				   l->name, (unsigned long long)r, t - c->submit_ms);
			} else {
				l->late_kept++;
				ev(m, "%s: late OK for region %llu after %.0f ms; %s: region stays dirty", l->name,
				   (unsigned long long)r, t - c->submit_ms,
				   !current ? "a newer write was issued meanwhile" :
				   l->failed ? "the leg is failed" : "it was already stale");
			}
		}
	} else {
		/* ERROR, or CANCELLED (client destroyed): the region's content on
		 * this leg is unknown. */
		uint64_t s = set_dirty(m, L, r);
		if (s > c->need_seq)
			c->need_seq = s;
		if (was_late)
			l->late_err++;
		if (st->state == DM_IO_ERROR) {
			l->errors++;
			char why[96];
			snprintf(why, sizeof(why), "%s error %s on region %llu", c->resync ? "resync" : "write",
				 strerror(-st->error_code), (unsigned long long)r);
			fail_leg(m, L, why);
		} else {
			ev(m, "%s: write to region %llu %s", l->name, (unsigned long long)r, state_word(st->state));
		}
	}
	chunk_put(m, c);
out:
	if (wake)
		pthread_cond_signal(wake);
	mwake(m);
	pthread_mutex_unlock(&m->lock);
}

/* One timed write of `data` to `n` leg regions for chunk `c` (user writes
 * and resync copies alike); dm_io's result. */
static int submit_write(struct mirror *m, struct chunk *c, void *data, struct dm_io_region *regs,
			unsigned n)
{
	struct dm_io_control ctrl = {
		.memory = { .type = DM_IO_VM, .ptr.vma = data },
		.rw = DM_IO_WRITE | (c->fua ? DM_IO_FUA : 0),
		.notify = write_notify,
		.context = c,
		.client = m->cl,
		.timeout = m->cfg.write_timeout_ms,
	};
	return dm_io(&ctrl, n, regs, NULL);
}

/* Builds and issues the write of one region piece to every eligible leg.
 * Returns the chunk (owned by the caller until chunk released) or NULL. */
static struct chunk *issue_chunk(struct mirror *m, uint64_t r, uint64_t off, const void *buf, size_t len,
				 int fua, double t0, pthread_cond_t *wake)
{
	struct chunk *c = calloc(1, sizeof(*c));
	void *data = malloc(len);
	if (!c || !data) {
		free(c);
		free(data);
		return NULL;
	}
	/* Our own copy: dm_io needs the memory until each region is final,
	 * and a late region outlives the caller's buffer. */
	memcpy(data, buf, len);
	c->m = m;
	c->owner = 1;
	c->region = r;
	c->data = data;
	c->fua = fua;
	c->wake = wake;
	struct dm_io_region regs[MIRROR_MAX_LEGS];

	pthread_mutex_lock(&m->lock);
	/* A leg still busy on r, or with too much late IO, is skipped. When
	 * that would leave fewer than `quorum` legs, wait for late IO to
	 * drain instead (back-pressure: a slow but working leg must not turn
	 * into an EIO), until the legs not failed are too few anyway or
	 * fail_after_ms after the write began. */
	for (;;) {
		unsigned eligible = 0, alive = 0;
		for (unsigned L = 0; L < m->nlegs; L++) {
			const struct leg *l = &m->legs[L];
			alive += !l->failed;
			eligible += !l->failed && !m->lio[lr(m, L, r)] && l->late < m->late_cap;
		}
		double waited = now_ms() - t0;
		if (eligible >= m->cfg.quorum || alive < m->cfg.quorum || waited >= m->cfg.fail_after_ms)
			break;
		cond_wait_ms(m, m->cfg.fail_after_ms - waited < 50 ? m->cfg.fail_after_ms - waited : 50);
	}
	c->gen = ++m->gen[r];
	c->submit_ms = now_ms();
	m->last_write[r] = c->submit_ms;
	for (unsigned L = 0; L < m->nlegs; L++) {
		struct leg *l = &m->legs[L];
		size_t i = lr(m, L, r);
		const char *why = l->failed ? NULL : m->lio[i] ? "earlier IO on this region still running" :
				  l->late >= m->late_cap ? "too much late IO on the leg" : "";
		if (!why || *why) {
			uint64_t s = set_dirty(m, L, r);
			if (s > c->need_seq)
				c->need_seq = s;
			l->skipped++;
			if (why)
				ev(m, "%s: write to region %llu not sent (%s) -> region dirty", l->name,
				   (unsigned long long)r, why);
			continue;
		}
		c->leg_of[c->nio] = L;
		c->was_clean[c->nio] = !m->dirty[i];
		regs[c->nio] = (struct dm_io_region){ l->bdev, off / 512, len / 512 };
		c->nio++;
		m->lio[i]++;
		m->inflight[r]++;
	}
	c->undecided = c->nio;
	chunk_link(m, c);
	pthread_mutex_unlock(&m->lock);
	if (!c->nio)
		return c;

	int rc = submit_write(m, c, data, regs, c->nio);
	if (rc) {
		/* Nothing started: the legs missed this write. */
		pthread_mutex_lock(&m->lock);
		for (unsigned i = 0; i < c->nio; i++) {
			unsigned L = c->leg_of[i];
			m->lio[lr(m, L, r)]--;
			m->inflight[r]--;
			uint64_t s = set_dirty(m, L, r);
			if (s > c->need_seq)
				c->need_seq = s;
			c->st[i] = IO_DONE;
			c->final_state[i] = DM_IO_ERROR;
		}
		c->nfinal = c->nio;
		c->undecided = 0;
		ev(m, "dm_io refused a write: %s (%s)", strerror(-rc), dm_io_last_error());
		pthread_mutex_unlock(&m->lock);
	}
	return c;
}

/* Legs of c whose IO is late (timed out, still running): they may still
 * bring the write to its quorum (m->lock held). */
static unsigned chunk_running(const struct chunk *c)
{
	unsigned n = 0;
	for (unsigned i = 0; i < c->nio; i++)
		n += c->st[i] == IO_LATE;
	return n;
}

/* The leg crash recovery would copy an active region r from, reading log
 * image `img` (the first leg not dirty there), or -1 (m->lock held). */
static int image_source(struct mirror *m, const unsigned char *ddirty, unsigned char *img, uint64_t r)
{
	for (unsigned L = 0; L < m->nlegs; L++) {
		int dirty = img ? (bitmap(m, img, L)[r / 8] >> (r % 8)) & 1 : ddirty[lr(m, L, r)];
		if (!dirty)
			return (int)L;
	}
	return -1;
}

/* Whether the ack of chunk c must wait for a log commit (m->lock held).
 * Its region was marked active on the log before the write was issued, and
 * stays so until a commit that also carries the dirty bits this write set.
 * After a crash an active region is copied from the first leg that is not
 * dirty in the log. If, in the image on disk (and in the one being written,
 * if any), that leg was clean and is OK for this write, it holds every
 * acknowledged write to the region, and the crash is covered without
 * another commit. */
static int ack_needs_commit(struct mirror *m, const struct chunk *c)
{
	if (!m->logdev)
		return 0;
	for (int k = 0; k < 2; k++) {
		if (k == 1 && !m->img_inflight)
			break;
		int src = image_source(m, m->ddirty, k ? m->logbuf : NULL, c->region);
		int good = 0;
		for (unsigned i = 0; i < c->nio; i++)
			if ((int)c->leg_of[i] == src)
				good = c->was_clean[i] && c->st[i] == IO_DONE && c->final_state[i] == DM_IO_OK;
		if (!good)
			return 1;
	}
	return 0;
}

static int check_range(struct mirror *m, uint64_t off, size_t len)
{
	if (!m || len == 0 || off % m->block_size || len % m->block_size || off > m->size ||
	    len > m->size - off)
		return -EINVAL;
	return 0;
}

int mirror_write(struct mirror *m, uint64_t off, const void *buf, size_t len)
{
	return mirror_write_flags(m, off, buf, len, 0);
}

int mirror_write_flags(struct mirror *m, uint64_t off, const void *buf, size_t len, unsigned flags)
{
	if (check_range(m, off, len) || !buf || (flags & ~MIRROR_FUA))
		return -EINVAL;
	double t0 = now_ms();
	uint64_t r0 = off / m->region_size, r1 = (off + len - 1) / m->region_size;
	uint64_t need = 0;
	int rc = 0;
	if (r1 - r0 >= MAX_WRITE_REGIONS)
		return -EINVAL;
	pthread_cond_t wcv; /* this writer's: its chunks' notifications signal it */
	cv_init(&wcv);

	pthread_mutex_lock(&m->lock);
	for (;;) {
		int busy = 0;
		for (uint64_t r = r0; r <= r1 && !busy; r++)
			busy = m->busy[r];
		if (!busy)
			break;
		cond_wait(m);
	}
	for (uint64_t r = r0; r <= r1; r++) {
		m->busy[r] = 1;
		if (m->logdev) {
			if (!m->active[r]) {
				m->active[r] = 1;
				m->aseq[r] = ++m->seq;
			}
			if (m->aseq[r] > need)
				need = m->aseq[r];
			/* A failed leg will miss this write: record it in the
			 * same commit, so the ack needs no second one. */
			for (unsigned L = 0; L < m->nlegs; L++)
				if (m->legs[L].failed) {
					uint64_t s = set_dirty(m, L, r);
					if (s > need && m->committed < s)
						need = s;
				}
		}
	}
	pthread_mutex_unlock(&m->lock);

	/* The regions are marked "being written" on the log before any leg
	 * sees the write (legs may differ in them after a crash). */
	if (need && log_commit(m, need) != 0) {
		rc = -EIO;
		goto out;
	}

	struct chunk *cs[MAX_WRITE_REGIONS];
	unsigned n = 0;
	const unsigned char *p = buf;
	uint64_t pos = off, end = off + len;
	while (pos < end) {
		uint64_t r = pos / m->region_size;
		uint64_t rend = (r + 1) * (uint64_t)m->region_size;
		size_t piece = (size_t)((rend < end ? rend : end) - pos);
		struct chunk *c = issue_chunk(m, r, pos, p + (pos - off), piece, flags & MIRROR_FUA, t0, &wcv);
		if (!c) {
			rc = -ENOMEM;
			break;
		}
		cs[n++] = c;
		pos += piece;
	}

	/* Wait until every leg of every piece is final or timed out (the
	 * deadline); then, while fewer than `quorum` legs of a piece are OK,
	 * keep waiting for late completions: the write fails only when its
	 * quorum can no longer be reached, or after fail_after_ms. */
	pthread_mutex_lock(&m->lock);
	for (unsigned k = 0; k < n; k++)
		while (cs[k]->undecided)
			pthread_cond_wait(&wcv, &m->lock);
	for (;;) {
		int reached = 1, lost = 0;
		for (unsigned k = 0; k < n; k++) {
			unsigned ok = cs[k]->ok + cs[k]->ok_late;
			if (ok < m->cfg.quorum) {
				reached = 0;
				lost |= ok + chunk_running(cs[k]) < m->cfg.quorum;
			}
		}
		double waited = now_ms() - t0;
		if (reached || lost || rc || waited >= m->cfg.fail_after_ms)
			break;
		cv_wait_ms(&wcv, &m->lock, m->cfg.fail_after_ms - waited < 50 ? m->cfg.fail_after_ms - waited : 50);
	}
	int degraded = 0;
	need = 0;
	for (unsigned k = 0; k < n; k++) {
		struct chunk *c = cs[k];
		if (c->ok + c->ok_late < m->cfg.quorum)
			rc = rc ? rc : -EIO;
		if (c->ok + c->ok_late < m->nlegs)
			degraded = 1;
		if (c->need_seq > need && ack_needs_commit(m, c))
			need = c->need_seq;
		c->owner = 0;
		c->wake = NULL;
		chunk_put(m, c);
	}
	pthread_mutex_unlock(&m->lock);

	/* Legs that missed the write are dirty on the log before the ack,
	 * unless the log already leads crash recovery to a leg that has it. */
	if (need && log_commit(m, need) != 0 && rc == 0)
		rc = -EIO;
out:
	pthread_mutex_lock(&m->lock);
	for (uint64_t r = r0; r <= r1; r++)
		m->busy[r] = 0;
	double took = now_ms() - t0;
	if (rc == 0) {
		m->writes++;
		m->writes_degraded += degraded;
		if (took > m->max_ack_ms)
			m->max_ack_ms = took;
	} else {
		m->write_errors++;
	}
	mwake(m);
	pthread_mutex_unlock(&m->lock);
	pthread_cond_destroy(&wcv);
	return rc;
}

/* ---- flush ------------------------------------------------------------------ */

struct flushop {
	struct mirror *m;
	int owner;
	pthread_cond_t *wake;      /* the owner's condition variable */
	uint64_t epoch;
	unsigned nio, nfinal, undecided, ok;
	unsigned leg_of[MIRROR_MAX_LEGS];
	unsigned char st[MIRROR_MAX_LEGS];
	int final_state[MIRROR_MAX_LEGS];
};

/* A leg missed a flush (m->lock held): every region written to it since its
 * last good flush may not be durable there. Returns the log seq to commit. */
static uint64_t flush_missed(struct mirror *m, unsigned L, const char *why)
{
	uint64_t need = 0, n = 0;
	for (uint64_t r = 0; r < m->nregions; r++)
		if (m->wep[lr(m, L, r)] >= m->good_ep[L] && m->wep[lr(m, L, r)] != UINT64_MAX) {
			uint64_t s = set_dirty(m, L, r);
			need = s > need ? s : need;
			n++;
		}
	ev(m, "%s: flush %s: %llu region(s) written since its last good flush marked dirty", m->legs[L].name, why,
	   (unsigned long long)n);
	return need;
}

static void flush_put(struct flushop *f)
{
	if (!f->owner && f->nfinal == f->nio)
		free(f);
}

static void flush_notify(struct dm_io_region_state *st, void *ctx)
{
	struct flushop *f = ctx;
	struct mirror *m = f->m;
	unsigned i = st->index;
	if (i >= f->nio)
		return;
	unsigned L = f->leg_of[i];
	pthread_mutex_lock(&m->lock);
	pthread_cond_t *wake = f->wake; /* NULL once the owner let go (f may be freed below) */
	if (st->state == DM_IO_TIMEOUT) {
		if (f->st[i] == IO_RUNNING) {
			f->st[i] = IO_LATE;
			f->undecided--;
		}
	} else if (f->st[i] != IO_DONE) {
		if (f->st[i] == IO_RUNNING)
			f->undecided--;
		f->st[i] = IO_DONE;
		f->final_state[i] = st->state;
		f->nfinal++;
		if (st->state == DM_IO_OK) {
			if (f->owner)
				f->ok++;
			if (f->epoch > m->good_ep[L])
				m->good_ep[L] = f->epoch;
		} else if (st->state == DM_IO_ERROR) {
			char why[96];
			snprintf(why, sizeof(why), "flush error %s", strerror(-st->error_code));
			fail_leg(m, L, why);
		}
		flush_put(f);
	}
	if (wake)
		pthread_cond_signal(wake);
	pthread_mutex_unlock(&m->lock);
}

int mirror_flush(struct mirror *m)
{
	if (!m)
		return -EINVAL;
	double t0 = now_ms();
	struct flushop *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	struct dm_io_region regs[MIRROR_MAX_LEGS];
	pthread_cond_t fcv;
	cv_init(&fcv);
	f->m = m;
	f->owner = 1;
	f->wake = &fcv;
	pthread_mutex_lock(&m->lock);
	f->epoch = ++m->fepoch;
	for (unsigned L = 0; L < m->nlegs; L++) {
		if (m->legs[L].failed)
			continue; /* every region written to it is dirty already */
		f->leg_of[f->nio] = L;
		regs[f->nio++] = (struct dm_io_region){ m->legs[L].bdev, 0, 0 };
	}
	f->undecided = f->nio;
	pthread_mutex_unlock(&m->lock);
	int rc = 0;
	if (f->nio) {
		struct dm_io_control ctrl = {
			.memory = { .type = DM_IO_VM, .ptr.vma = NULL },
			.rw = DM_IO_WRITE | DM_IO_FLUSH,
			.notify = flush_notify,
			.context = f,
			.client = m->cl,
			.timeout = m->cfg.write_timeout_ms,
		};
		rc = dm_io(&ctrl, f->nio, regs, NULL);
	}
	pthread_mutex_lock(&m->lock);
	if (rc) {
		f->nfinal = f->nio;
		f->undecided = 0;
	}
	/* The write rule: at the deadline `quorum` legs OK, else wait for late
	 * ones until the quorum is reached, lost, or fail_after_ms passed. */
	while (f->undecided)
		pthread_cond_wait(&fcv, &m->lock);
	for (;;) {
		unsigned late = 0;
		for (unsigned i = 0; i < f->nio; i++)
			late += f->st[i] == IO_LATE;
		double waited = now_ms() - t0;
		if (rc || f->ok >= m->cfg.quorum || f->ok + late < m->cfg.quorum || waited >= m->cfg.fail_after_ms)
			break;
		cv_wait_ms(&fcv, &m->lock, m->cfg.fail_after_ms - waited < 50 ? m->cfg.fail_after_ms - waited : 50);
	}
	uint64_t need = 0;
	for (unsigned i = 0; i < f->nio; i++)
		if (f->st[i] != IO_DONE || f->final_state[i] != DM_IO_OK) {
			uint64_t s = flush_missed(m, f->leg_of[i], f->st[i] == IO_DONE ? "failed" : "late");
			need = s > need ? s : need;
		}
	if (!rc && f->ok < m->cfg.quorum)
		rc = -EIO;
	m->flushes++;
	m->flush_errors += rc != 0;
	f->owner = 0;
	f->wake = NULL;
	flush_put(f);
	pthread_mutex_unlock(&m->lock);
	pthread_cond_destroy(&fcv);
	/* A leg that missed the flush is dirty on the log before the ack. */
	if (need && log_commit(m, need) != 0 && rc == 0)
		rc = -EIO;
	return rc;
}

/* ---- reads ----------------------------------------------------------------- */

struct read_ctx {
	int state[MIRROR_MAX_LEGS];
	int err[MIRROR_MAX_LEGS];
};

static void read_notify(struct dm_io_region_state *st, void *ctx)
{
	struct read_ctx *rc = ctx;
	if (st->index < MIRROR_MAX_LEGS && st->state != DM_IO_TIMEOUT) {
		rc->state[st->index] = st->state;
		rc->err[st->index] = st->error_code;
	}
}

int mirror_read(struct mirror *m, uint64_t off, void *buf, size_t len)
{
	if (check_range(m, off, len) || !buf)
		return -EINVAL;
	unsigned char *p = buf;
	uint64_t pos = off, end = off + len;
	while (pos < end) {
		uint64_t r = pos / m->region_size;
		uint64_t rend = (r + 1) * (uint64_t)m->region_size;
		uint64_t lim = rend < end ? rend : end;
		if (lim - pos > m->max_io)
			lim = pos + m->max_io;
		size_t piece = (size_t)(lim - pos);
		unsigned order[MIRROR_MAX_LEGS], n = 0, nslow = 0, slow[MIRROR_MAX_LEGS];
		struct dm_io_region regs[MIRROR_MAX_LEGS];
		double t = now_ms();

		pthread_mutex_lock(&m->lock);
		unsigned start = m->read_rr++;
		for (unsigned k = 0; k < m->nlegs; k++) {
			unsigned L = (start + k) % m->nlegs;
			struct leg *l = &m->legs[L];
			if (l->failed || m->dirty[lr(m, L, r)])
				continue;
			if (l->late || t < l->read_slow_until)
				slow[nslow++] = L; /* tried last */
			else
				order[n++] = L;
		}
		for (unsigned k = 0; k < nslow; k++)
			order[n++] = slow[k];
		if (pos == off)
			m->reads++;
		pthread_mutex_unlock(&m->lock);
		if (n == 0) {
			pthread_mutex_lock(&m->lock);
			m->read_errors++;
			pthread_mutex_unlock(&m->lock);
			return -EIO;
		}
		for (unsigned k = 0; k < n; k++)
			regs[k] = (struct dm_io_region){ m->legs[order[k]].bdev, pos / 512, piece / 512 };
		struct read_ctx rctx;
		for (unsigned k = 0; k < MIRROR_MAX_LEGS; k++)
			rctx.state[k] = -1, rctx.err[k] = 0;
		/* The next leg starts after the hedge delay (read_timeout_ms);
		 * the last one is slow, not gone: it is waited for up to
		 * fail_after_ms, as a write waits for its quorum. An error for
		 * a read a loaded leg serves in 300 ms turns a filesystem on
		 * the volume read-only, or corrupts it. */
		unsigned long tmo = (unsigned long)m->cfg.read_timeout_ms * (n + 1);
		if (tmo && m->cfg.fail_after_ms > tmo)
			tmo = m->cfg.fail_after_ms;
		struct dm_io_control c = {
			.memory = { .type = DM_IO_VM, .ptr.vma = p + (pos - off) },
			.rw = DM_IO_READ | DM_IO_SYNC | (n > 1 ? DM_IO_READ_ANY : 0),
			.notify = read_notify,
			.context = &rctx,
			.client = m->cl,
			.timeout = tmo,
			.flags = DM_IO_CANCEL_ON_TIMEOUT,
		};
		int rc = dm_io(&c, n, regs, NULL);

		pthread_mutex_lock(&m->lock);
		int winner = -1;
		for (unsigned k = 0; k < n; k++)
			if (rctx.state[k] == DM_IO_OK && winner < 0)
				winner = (int)k;
		for (unsigned k = 0; k < n; k++) {
			struct leg *l = &m->legs[order[k]];
			if (rctx.state[k] == DM_IO_ERROR) {
				l->read_errors++;
				char why[96];
				snprintf(why, sizeof(why), "read error %s on region %llu", strerror(-rctx.err[k]),
					 (unsigned long long)r);
				fail_leg(m, order[k], why);
			} else if (rctx.state[k] == DM_IO_CANCELLED && (winner < 0 || (int)k < winner)) {
				/* Overtaken by the next leg (or the deadline): slow. */
				l->read_slow++;
				l->read_slow_until = now_ms() + READ_SLOW_MS;
				ev(m, "%s: read of region %llu too slow, served by %s", l->name, (unsigned long long)r,
				   winner >= 0 ? m->legs[order[winner]].name : "no leg");
			}
		}
		/* Success is "some leg delivered OK" (the legs not needed end
		 * CANCELLED; libdmio before c86213a returned their -ECANCELED
		 * from a successful SYNC DM_IO_READ_ANY). */
		if (winner >= 0)
			rc = 0;
		else if (!rc)
			rc = -EIO;
		if (rc)
			m->read_errors++;
		pthread_mutex_unlock(&m->lock);
		if (rc)
			return rc;
		pos = lim;
	}
	return 0;
}

/* ---- resync and the background thread -------------------------------------- */

/* Picks a (leg, region, source) to copy; m->lock held. Returns 1 if found. */
static int pick_resync(struct mirror *m, double t, unsigned *leg, uint64_t *region, unsigned *src)
{
	for (unsigned k = 0; k < m->nlegs; k++) {
		unsigned L = k;
		struct leg *l = &m->legs[L];
		if (l->late)
			continue; /* still has timed-out IO running: wait for it */
		if (l->failed && t < l->next_probe)
			continue;
		if (l->failed && l->ndirty == 0) {
			/* Nothing to copy, but a failed leg comes back only
			 * through a successful copy: use region 0 as the probe. */
			set_dirty(m, L, 0);
		}
		if (l->ndirty == 0)
			continue;
		for (uint64_t j = 0; j < m->nregions; j++) {
			uint64_t r = (l->cursor + j) % m->nregions;
			if (!m->dirty[lr(m, L, r)] || m->busy[r] || m->inflight[r])
				continue;
			int s = -1;
			for (unsigned S = 0; S < m->nlegs && s < 0; S++)
				if (S != L && !m->legs[S].failed && !m->dirty[lr(m, S, r)] && !m->legs[S].late)
					s = (int)S;
			for (unsigned S = 0; S < m->nlegs && s < 0; S++)
				if (S != L && !m->legs[S].failed && !m->dirty[lr(m, S, r)])
					s = (int)S;
			if (s < 0) {
				/* No clean copy anywhere (every leg missed a write, or
				 * a crash left all dirty): elect the first healthy
				 * leg as the reference for this region. */
				int e = -1;
				for (unsigned S = 0; S < m->nlegs && e < 0; S++)
					if (!m->legs[S].failed && !m->legs[S].late)
						e = (int)S;
				if (e < 0)
					continue;
				clear_dirty(m, (unsigned)e, r);
				ev(m, "region %llu: no clean leg, %s taken as the reference", (unsigned long long)r,
				   m->legs[e].name);
				if ((unsigned)e == L)
					continue;
				s = e;
			}
			l->cursor = r + 1;
			*leg = L;
			*region = r;
			*src = (unsigned)s;
			return 1;
		}
	}
	return 0;
}

/* Copies one region; m->lock held on entry and exit (dropped for the IO). */
static void do_resync(struct mirror *m, unsigned L, uint64_t r, unsigned S)
{
	struct leg *l = &m->legs[L];
	struct chunk *c = calloc(1, sizeof(*c));
	void *data = malloc(m->region_size);
	if (!c || !data) {
		free(c);
		free(data);
		return;
	}
	c->m = m;
	c->owner = 1;
	c->resync = 1;
	c->region = r;
	c->gen = m->gen[r];
	c->src = S;
	c->data = data;
	c->fua = 1; /* the copy clears the dirty bit: make it durable first */
	c->wake = &m->dcond;
	c->nio = 1;
	c->undecided = 1;
	c->leg_of[0] = L;
	c->was_clean[0] = 0;
	/* Reserve (L, r) now: a write issued while we read skips L. */
	m->lio[lr(m, L, r)]++;
	m->inflight[r]++;
	chunk_link(m, c);
	uint64_t off = r * (uint64_t)m->region_size;
	uint64_t len = region_len(m, r);
	pthread_mutex_unlock(&m->lock);

	struct dm_io_region src = { m->legs[S].bdev, off / 512, len / 512 };
	struct dm_io_control rd = {
		.memory = { .type = DM_IO_VM, .ptr.vma = data },
		.rw = DM_IO_READ | DM_IO_SYNC,
		.client = m->cl,
		.timeout = m->cfg.read_timeout_ms * 4,
	};
	int rc = dm_io(&rd, 1, &src, NULL);

	pthread_mutex_lock(&m->lock);
	if (rc || m->gen[r] != c->gen) {
		if (rc) {
			ev(m, "resync: reading region %llu from %s failed: %s", (unsigned long long)r,
			   m->legs[S].name, strerror(-rc));
			if (rc != -ETIMEDOUT) {
				m->legs[S].read_errors++;
				fail_leg(m, S, "read error during resync");
			} else {
				m->legs[S].read_slow_until = now_ms() + READ_SLOW_MS;
			}
		}
		m->lio[lr(m, L, r)]--;
		m->inflight[r]--;
		c->nfinal = 1;
		c->owner = 0;
		c->wake = NULL;
		chunk_put(m, c);
		mwake(m);
		return;
	}
	c->submit_ms = now_ms();
	pthread_mutex_unlock(&m->lock);

	struct dm_io_region dst = { l->bdev, off / 512, len / 512 };
	rc = submit_write(m, c, data, &dst, 1);

	pthread_mutex_lock(&m->lock);
	if (rc) {
		m->lio[lr(m, L, r)]--;
		m->inflight[r]--;
		c->nfinal = 1;
		c->undecided = 0;
	}
	while (c->undecided)
		pthread_cond_wait(&m->dcond, &m->lock);
	if (c->st[0] != IO_DONE || c->final_state[0] != DM_IO_OK) {
		/* Late or failed: a failed leg is probed again later. */
		if (l->failed)
			l->next_probe = now_ms() + m->cfg.probe_ms;
	}
	c->owner = 0;
	c->wake = NULL;
	chunk_put(m, c);
}

static void *daemon_main(void *arg)
{
	struct mirror *m = arg;
	pthread_mutex_lock(&m->lock);
	while (!m->stop) {
		double t = now_ms();
		/* A leg whose IO has been late for too long is failed. */
		for (struct chunk *c = m->live.next; c != &m->live; c = c->next)
			for (unsigned i = 0; i < c->nio; i++)
				if (c->st[i] == IO_LATE && t - c->submit_ms > m->cfg.fail_after_ms &&
				    !m->legs[c->leg_of[i]].failed) {
					char why[96];
					snprintf(why, sizeof(why), "IO late for more than %u ms", m->cfg.fail_after_ms);
					fail_leg(m, c->leg_of[i], why);
				}
		/* Regions quiet for a while are no longer "being written". */
		if (m->logdev)
			for (uint64_t r = 0; r < m->nregions; r++)
				if (m->active[r] && !m->busy[r] && !m->inflight[r] &&
				    t - m->last_write[r] > ACTIVE_LINGER_MS) {
					m->active[r] = 0;
					m->seq++;
				}
		if (m->logdev && m->committed < m->seq && t - m->last_commit > LAZY_COMMIT_MS) {
			uint64_t s = m->seq;
			pthread_mutex_unlock(&m->lock);
			log_commit(m, s);
			pthread_mutex_lock(&m->lock);
		}
		unsigned L, S;
		uint64_t r;
		if (!m->paused && pick_resync(m, t, &L, &r, &S)) {
			double t0 = now_ms();
			do_resync(m, L, r, S);
			if (m->cfg.resync_kbps) {
				double ms = (double)m->region_size / 1024.0 / m->cfg.resync_kbps * 1000.0;
				double until = t0 + ms;
				while (!m->stop && now_ms() < until)
					cv_wait_ms(&m->dcond, &m->lock, until - now_ms());
			}
			continue;
		}
		cv_wait_ms(&m->dcond, &m->lock, 50);
	}
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

/* ---- open, close, status ------------------------------------------------------ */

static void free_arrays(struct mirror *m)
{
	free(m->gen);
	free(m->busy);
	free(m->active);
	free(m->inflight);
	free(m->last_write);
	free(m->aseq);
	free(m->dirty);
	free(m->lio);
	free(m->dseq);
	free(m->ddirty);
	free(m->wep);
	free(m->logbuf);
}

static void teardown(struct mirror *m)
{
	if (m->cl)
		dm_io_client_destroy(m->cl);
	for (unsigned L = 0; L < m->nlegs; L++)
		if (m->legs[L].bdev)
			dm_io_bdev_close(m->legs[L].bdev);
	if (m->logdev)
		dm_io_bdev_close(m->logdev);
	/* Chunks still linked were cancelled by the destroy and are final. */
	while (m->live.next != &m->live) {
		struct chunk *c = m->live.next;
		c->prev->next = c->next;
		c->next->prev = c->prev;
		free(c->data);
		free(c);
	}
	free_arrays(m);
	pthread_mutex_destroy(&m->lock);
	pthread_mutex_destroy(&m->log_lock);
	pthread_cond_destroy(&m->cond);
	pthread_cond_destroy(&m->dcond);
	free(m);
}

/* The checks of the configuration's numbers, shared by open and validate. */
static int check_config(const struct mirror_config *cfg)
{
	if (!cfg || cfg->nlegs < 1 || cfg->nlegs > MIRROR_MAX_LEGS) {
		set_error("need 1..%d legs", MIRROR_MAX_LEGS);
		return -EINVAL;
	}
	if (!cfg->block_size || cfg->block_size % 512 || !cfg->region_size ||
	    cfg->region_size % cfg->block_size || cfg->region_size % 4096) {
		set_error("block size must be a multiple of 512, region size a multiple of it and of 4096");
		return -EINVAL;
	}
	if (cfg->quorum < 1 || cfg->quorum > cfg->nlegs) {
		set_error("quorum must be 1..%u", cfg->nlegs);
		return -EINVAL;
	}
	return 0;
}

int mirror_validate(const struct mirror_config *cfg)
{
	last_error[0] = 0;
	int rc = check_config(cfg);
	if (rc)
		return rc;
	uint64_t size = UINT64_MAX;
	for (unsigned L = 0; L < cfg->nlegs; L++) {
		const char *path = cfg->legs[L] ? cfg->legs[L] : "";
		struct block_device *b;
		rc = dm_io_bdev_open(path, 0, &b);
		if (rc) {
			set_error("%s: %s (%s)", path, strerror(-rc), dm_io_last_error());
			return rc;
		}
		unsigned lbs = dm_io_bdev_block_size(b);
		uint64_t bytes = dm_io_bdev_sectors(b) * 512;
		int ro = access(path, W_OK) != 0;
		dm_io_bdev_close(b);
		if (ro) {
			set_error("%s: not writable (%s)", path, strerror(errno));
			return -EACCES;
		}
		if (cfg->block_size % lbs) {
			set_error("%s: logical block size %u does not divide the block size %u", path, lbs,
				  cfg->block_size);
			return -EINVAL;
		}
		size = bytes < size ? bytes : size;
	}
	if (size < cfg->block_size) {
		set_error("the smallest leg is smaller than one block");
		return -EINVAL;
	}
	if (!cfg->log_path)
		return 0;
	struct stat st;
	if (stat(cfg->log_path, &st) != 0) {
		if (errno != ENOENT) {
			set_error("log %s: %s", cfg->log_path, strerror(errno));
			return -errno;
		}
		/* A new log: its directory must exist and be writable. */
		char dir[512];
		snprintf(dir, sizeof(dir), "%s", cfg->log_path);
		char *slash = strrchr(dir, '/');
		if (!slash)
			snprintf(dir, sizeof(dir), ".");
		else if (slash == dir)
			dir[1] = 0;
		else
			*slash = 0;
		if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, W_OK) != 0) {
			set_error("log %s: directory %s does not exist or is not writable", cfg->log_path, dir);
			return -ENOENT;
		}
		return 0;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		set_error("log %s: neither a regular file nor a block device", cfg->log_path);
		return -EINVAL;
	}
	if (access(cfg->log_path, R_OK | W_OK) != 0) {
		set_error("log %s: %s", cfg->log_path, strerror(errno));
		return -EACCES;
	}
	/* An existing log must have this mirror's geometry. */
	uint64_t msize = size / cfg->block_size * cfg->block_size;
	uint64_t nregions = (msize + cfg->region_size - 1) / cfg->region_size;
	size_t bitmap_bytes = (size_t)(cfg->nlegs + 1) * ((nregions + 7) / 8);
	size_t slot_bytes = 4096 + (bitmap_bytes + 4095) / 4096 * 4096;
	int fd = open(cfg->log_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		set_error("log %s: %s", cfg->log_path, strerror(errno));
		return -errno;
	}
	rc = 0;
	for (unsigned k = 0; k < 2 && !rc; k++) {
		struct log_hdr h;
		if (pread(fd, &h, sizeof(h), (off_t)(k * slot_bytes)) != (ssize_t)sizeof(h))
			continue;
		if (memcmp(h.magic, LOG_MAGIC, 8) || h.version != LOG_VERSION)
			continue;
		if (h.nlegs != cfg->nlegs || h.region_size != cfg->region_size || h.nregions != nregions) {
			set_error("log %s was made for another geometry (%u legs, %llu regions of %llu bytes)",
				  cfg->log_path, h.nlegs, (unsigned long long)h.nregions,
				  (unsigned long long)h.region_size);
			rc = -EINVAL;
		}
	}
	close(fd);
	return rc;
}

int mirror_open(const struct mirror_config *cfg, struct mirror **out)
{
	int rc;
	last_error[0] = 0;
	if (!out)
		return -EINVAL;
	rc = check_config(cfg);
	if (rc)
		return rc;
	struct mirror *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->cfg = *cfg;
	if (!m->cfg.queue_depth)
		m->cfg.queue_depth = 64;
	m->nlegs = cfg->nlegs;
	m->paused = cfg->resync_paused;
	m->block_size = cfg->block_size;
	m->region_size = cfg->region_size;
	m->max_io = cfg->region_size < 256 * 1024 ? cfg->region_size : 256 * 1024;
	m->live.next = m->live.prev = &m->live;
	cv_init(&m->cond);
	cv_init(&m->dcond);
	pthread_mutex_init(&m->lock, NULL);
	pthread_mutex_init(&m->log_lock, NULL);

	rc = dm_io_client_create(m->nlegs, m->cfg.queue_depth, m->max_io, &m->cl);
	if (rc) {
		set_error("dm_io_client_create: %s (%s)", strerror(-rc), dm_io_last_error());
		m->cl = NULL;
		goto fail;
	}
	/* A failed leg must not stall reads: the next leg starts after
	 * read_timeout_ms (or at once on ERROR). */
	dm_io_client_set_hedge(m->cl, m->cfg.read_timeout_ms);
	uint64_t size = UINT64_MAX;
	for (unsigned L = 0; L < m->nlegs; L++) {
		struct leg *l = &m->legs[L];
		snprintf(l->path, sizeof(l->path), "%s", cfg->legs[L] ? cfg->legs[L] : "");
		if (cfg->names[L])
			snprintf(l->name, sizeof(l->name), "%s", cfg->names[L]);
		else
			snprintf(l->name, sizeof(l->name), "leg%u", L);
		rc = dm_io_bdev_open_faulty(l->path, cfg->faults[L] ? cfg->faults[L] : "", &l->bdev);
		if (rc) {
			set_error("%s: %s (%s)", l->path, strerror(-rc), dm_io_last_error());
			l->bdev = NULL;
			goto fail;
		}
		if (m->block_size % dm_io_bdev_block_size(l->bdev)) {
			set_error("%s: logical block size %u does not divide the block size %u", l->path,
				  dm_io_bdev_block_size(l->bdev), m->block_size);
			rc = -EINVAL;
			goto fail;
		}
		uint64_t b = dm_io_bdev_sectors(l->bdev) * 512;
		if (b < size)
			size = b;
	}
	m->size = size / m->block_size * m->block_size;
	m->nregions = (m->size + m->region_size - 1) / m->region_size; /* the last one may be partial */
	if (!m->nregions) {
		set_error("the smallest leg is smaller than one block");
		rc = -EINVAL;
		goto fail;
	}
	uint64_t ops = (m->region_size + m->max_io - 1) / m->max_io;
	m->late_cap = m->cfg.queue_depth / 2 / ops;
	if (!m->late_cap)
		m->late_cap = 1;
	size_t n = (size_t)m->nregions, nl = n * m->nlegs;
	m->gen = calloc(n, sizeof(*m->gen));
	m->busy = calloc(n, 1);
	m->active = calloc(n, 1);
	m->inflight = calloc(n, sizeof(*m->inflight));
	m->last_write = calloc(n, sizeof(*m->last_write));
	m->aseq = calloc(n, sizeof(*m->aseq));
	m->dirty = calloc(nl, 1);
	m->lio = calloc(nl, 1);
	m->dseq = calloc(nl, sizeof(*m->dseq));
	m->ddirty = calloc(nl, 1);
	m->wep = calloc(nl, sizeof(*m->wep));
	if (m->wep)
		memset(m->wep, 0xff, nl * sizeof(*m->wep));
	if (!m->wep || !m->ddirty || !m->gen || !m->busy || !m->active || !m->inflight || !m->last_write || !m->aseq || !m->dirty ||
	    !m->lio || !m->dseq) {
		rc = -ENOMEM;
		set_error("out of memory");
		goto fail;
	}

	int loaded = 0;
	if (cfg->log_path) {
		m->bitmap_bytes = (size_t)(m->nlegs + 1) * ((n + 7) / 8);
		m->slot_bytes = 4096 + (m->bitmap_bytes + 4095) / 4096 * 4096;
		m->logbuf = malloc(m->slot_bytes);
		rc = m->logbuf ? prepare_log_file(cfg->log_path, 2 * m->slot_bytes) : -ENOMEM;
		if (rc) {
			set_error("log %s: %s", cfg->log_path, strerror(-rc));
			goto fail;
		}
		rc = dm_io_bdev_open_faulty(cfg->log_path, cfg->log_faults ? cfg->log_faults : "", &m->logdev);
		if (rc) {
			set_error("log %s: %s (%s)", cfg->log_path, strerror(-rc), dm_io_last_error());
			m->logdev = NULL;
			goto fail;
		}
		if (dm_io_bdev_sectors(m->logdev) * 512 < 2 * m->slot_bytes) {
			set_error("log %s: needs %zu bytes", cfg->log_path, 2 * m->slot_bytes);
			rc = -ENOSPC;
			goto fail;
		}
		loaded = log_load(m);
		if (loaded < 0) {
			rc = loaded;
			goto fail;
		}
	}
	if (!loaded && cfg->initial_sync)
		for (unsigned L = 1; L < m->nlegs; L++)
			for (uint64_t r = 0; r < m->nregions; r++)
				set_dirty(m, L, r);
	if (m->logdev) {
		/* Persist what was loaded and converted (regions that were
		 * being written are now dirty on all legs but one), or create
		 * the log, before serving anything. */
		m->seq = (m->seq > m->committed ? m->seq : m->committed) + 1;
		rc = log_commit(m, m->seq);
		if (rc) {
			set_error("log %s: first write failed: %s", cfg->log_path, strerror(-rc));
			goto fail;
		}
	}
	rc = pthread_create(&m->daemon, NULL, daemon_main, m);
	if (rc) {
		rc = -rc;
		set_error("pthread_create: %s", strerror(-rc));
		goto fail;
	}
	m->daemon_running = 1;
	*out = m;
	return 0;
fail:
	teardown(m);
	return rc;
}

void mirror_close(struct mirror *m)
{
	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->stop = 1;
	pthread_cond_broadcast(&m->dcond);
	pthread_mutex_unlock(&m->lock);
	if (m->daemon_running)
		pthread_join(m->daemon, NULL);
	if (m->logdev) {
		/* IO still running (late on a slow or hung leg) is cancelled:
		 * its region stays dirty on that leg. Once every leg IO is
		 * final the dirty bits are exact, so no region needs to stay
		 * "being written": the next open resyncs only dirty regions. */
		for (unsigned L = 0; L < m->nlegs; L++)
			dm_io_cancel_by_device(m->cl, m->legs[L].bdev);
		pthread_mutex_lock(&m->lock);
		double until = now_ms() + CLOSE_DRAIN_MS;
		while (m->live.next != &m->live && now_ms() < until)
			cond_wait_ms(m, 50);
		for (uint64_t r = 0; r < m->nregions; r++)
			if (m->active[r] && !m->inflight[r]) {
				m->active[r] = 0;
				m->seq++;
			}
		pthread_mutex_unlock(&m->lock);
		log_commit(m, m->seq);
	}
	teardown(m);
}

int mirror_set_faults(struct mirror *m, unsigned leg, const char *spec)
{
	if (!m || leg >= m->nlegs)
		return -EINVAL;
	return dm_io_bdev_set_faults(m->legs[leg].bdev, spec ? spec : "");
}

void mirror_resync_pause(struct mirror *m, int paused)
{
	pthread_mutex_lock(&m->lock);
	m->paused = paused;
	pthread_cond_broadcast(&m->dcond);
	pthread_mutex_unlock(&m->lock);
}

static int all_in_sync(struct mirror *m)
{
	for (unsigned L = 0; L < m->nlegs; L++)
		if (m->legs[L].failed || m->legs[L].ndirty || m->legs[L].late)
			return 0;
	return 1;
}

static int no_late(struct mirror *m)
{
	for (unsigned L = 0; L < m->nlegs; L++)
		if (m->legs[L].late)
			return 0;
	return 1;
}

static int wait_for(struct mirror *m, int (*pred)(struct mirror *), int ms)
{
	double until = now_ms() + ms;
	pthread_mutex_lock(&m->lock);
	int ok;
	while (!(ok = pred(m)) && now_ms() < until)
		cond_wait_ms(m, until - now_ms() < 50 ? until - now_ms() : 50);
	pthread_mutex_unlock(&m->lock);
	return ok;
}

int mirror_wait_in_sync(struct mirror *m, int ms)
{
	return wait_for(m, all_in_sync, ms);
}

int mirror_wait_no_late_io(struct mirror *m, int ms)
{
	return wait_for(m, no_late, ms);
}

void mirror_status(struct mirror *m, struct mirror_status *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&m->lock);
	st->nlegs = m->nlegs;
	st->size = m->size;
	st->nregions = m->nregions;
	st->region_size = m->region_size;
	st->writes = m->writes;
	st->writes_degraded = m->writes_degraded;
	st->write_errors = m->write_errors;
	st->max_ack_ms = m->max_ack_ms;
	st->reads = m->reads;
	st->read_errors = m->read_errors;
	st->timeouts = m->timeouts;
	st->late_completions = m->late_completions;
	st->resynced = m->resynced;
	st->resync_paused = m->paused;
	st->log_commits = m->log_commits;
	st->flushes = m->flushes;
	st->flush_errors = m->flush_errors;
	st->log_errors = m->log_errors;
	st->log = m->logdev != NULL;
	for (unsigned L = 0; L < m->nlegs; L++) {
		struct leg *l = &m->legs[L];
		struct mirror_leg_status *s = &st->legs[L];
		s->path = l->path;
		s->name = l->name;
		s->state = l->failed ? MIRROR_LEG_FAILED :
			   (l->ndirty || l->late) ? MIRROR_LEG_DIRTY : MIRROR_LEG_IN_SYNC;
		s->fail_reason = l->failed ? l->fail_reason : "";
		s->dirty_regions = l->ndirty;
		s->late_io = l->late;
		s->timeouts = l->timeouts;
		s->late_ok = l->late_ok;
		s->late_kept_dirty = l->late_kept;
		s->late_errors = l->late_err;
		s->errors = l->errors;
		s->skipped = l->skipped;
		s->resynced = l->resynced;
		s->read_errors = l->read_errors;
		s->read_slow = l->read_slow;
		s->failures = l->failures;
		st->resync_pending += l->ndirty;
	}
	pthread_mutex_unlock(&m->lock);
}

void mirror_status_print(struct mirror *m, FILE *f)
{
	struct mirror_status st;
	mirror_status(m, &st);
	fprintf(f, "mirror: %u legs, %llu bytes, %llu regions of %u KiB, log %s\n", st.nlegs,
		(unsigned long long)st.size, (unsigned long long)st.nregions, st.region_size / 1024,
		st.log ? "persisted" : "in memory");
	fprintf(f, "  writes %llu acked (%llu degraded), %llu failed, slowest ack %.1f ms; reads %llu, %llu failed\n",
		(unsigned long long)st.writes, (unsigned long long)st.writes_degraded,
		(unsigned long long)st.write_errors, st.max_ack_ms, (unsigned long long)st.reads,
		(unsigned long long)st.read_errors);
	fprintf(f, "  timeouts %llu, late completions %llu, regions resynced %llu, resync pending %llu%s\n",
		(unsigned long long)st.timeouts, (unsigned long long)st.late_completions,
		(unsigned long long)st.resynced, (unsigned long long)st.resync_pending,
		st.resync_paused ? " (paused)" : "");
	for (unsigned L = 0; L < st.nlegs; L++) {
		struct mirror_leg_status *s = &st.legs[L];
		fprintf(f, "  %s %s: %s%s%s, %llu dirty regions, %llu late IO; timeouts %llu, late OK %llu "
			   "(%llu kept dirty), errors %llu, skipped %llu, resynced %llu, read errors %llu, slow reads %llu\n",
			s->name, s->path, mirror_leg_state_name(s->state), *s->fail_reason ? " - " : "",
			s->fail_reason, (unsigned long long)s->dirty_regions, (unsigned long long)s->late_io,
			(unsigned long long)s->timeouts, (unsigned long long)s->late_ok,
			(unsigned long long)s->late_kept_dirty, (unsigned long long)s->errors,
			(unsigned long long)s->skipped, (unsigned long long)s->resynced,
			(unsigned long long)s->read_errors, (unsigned long long)s->read_slow);
	}
}

struct dm_io_client *mirror_client(struct mirror *m)
{
	return m->cl;
}

uint64_t mirror_size(const struct mirror *m)
{
	return m->size;
}

unsigned mirror_block_size(const struct mirror *m)
{
	return m->block_size;
}

unsigned mirror_region_size(const struct mirror *m)
{
	return m->region_size;
}
