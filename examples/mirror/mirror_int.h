/*
 * mirror_int.h - the reference mirror's private header: its state (struct
 * mirror, struct leg, struct chunk), the rules that state follows, the small
 * helpers every part uses (static inline) and the internal functions one
 * mirror_*.c file offers the others. Not installed, not part of mirror.h.
 *
 * Where things are:
 *   mirror.c         open, close, the last error, events, dirty bits, leg failure
 *   mirror_config.c  mirror_config_init, the configuration checks, mirror_validate
 *   mirror_log.c     the persisted dirty-region log (two slots, group commit)
 *   mirror_chunk.c   a chunk's leg writes and their notify (user writes and resync copies)
 *   mirror_write.c   mirror_write: back-pressure, issue, quorum, ack
 *   mirror_flush.c   mirror_flush
 *   mirror_read.c    mirror_read: hedged reads from clean legs
 *   mirror_resync.c  the background thread: late-leg failure, lazy log commits, resync
 *   mirror_status.c  status, waits, faults, accessors
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
 *                   lio          IOs on (L, r) not yet final: the one running (one at
 *                                most) and the writes queued behind it
 *                   held         the generation of r whose data L holds: L has
 *                                every write to r up to it (HELD_NONE: unknown)
 *
 * Ordering. A write to r is issued to leg L only when lio(L, r) == 0. If an
 * earlier write (or a resync copy) is still running on (L, r), typically one
 * that timed out, the write is queued on L behind it (it holds its own copy
 * of the data, counts as late IO of L and may still bring the write to its
 * quorum); when the running IO ends, the queued write of the lowest
 * generation is issued. If L has too much late IO (queued writes included),
 * L is skipped for this write and marked dirty. So on every leg, writes
 * to a region are never concurrent and land in issue order: a late write
 * cannot overwrite newer data. Writes to one region are also serialized
 * against each other (busy[r]): the next one is issued after the previous
 * one was acknowledged.
 *
 * Dirty tracking. L becomes dirty for r when its IO on r ends in TIMEOUT (at
 * the deadline, before the acknowledgement), ERROR or CANCELLED, or when L is
 * queued or skipped. An OK of the write of generation g on L advances
 * held(L, r) from g - 1 to g; when held reaches gen[r] (L got every write,
 * late ones included) and L is not failed, L is clean again. ERROR and
 * CANCELLED make held unknown, and so does a skipped write (L can no longer
 * catch up without a resync); a resync copy sets it to the generation it
 * copied. L *follows* r while held(L, r) is known: every write to r was
 * issued or queued to L, so L will hold them all once they land.
 *
 * Following. L follows r while held(L, r) is known: every write to r was
 * issued or queued to L, so L will hold them all once they land. A leg with
 * too much late IO (late_cap) is skipped, except when no following leg below
 * its cap would take the write: then the following legs take it anyway (up
 * to LATE_CAP_KEEP times the cap). Skipping them too could split the
 * acknowledged data of r over legs none of which holds it all, and a resync
 * from any of them would lose some.
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
#ifndef DMIO_MIRROR_INT_H
#define DMIO_MIRROR_INT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "mirror.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LOG_MAGIC "DMIOMLG1"
#define LOG_VERSION 1u
#define ACTIVE_LINGER_MS 500.0
#define LAZY_COMMIT_MS 200.0
#define READ_SLOW_MS 2000.0
#define LOG_TIMEOUT_MS 5000
#define MAX_WRITE_REGIONS 64 /* regions one mirror_write may span */
#define CLOSE_DRAIN_MS 5000.0 /* close waits this long for cancelled IO to be notified */
#define CHUNK_CACHE 64       /* released chunks kept for reuse (m->free_chunks) */
/* A leg over late_cap still takes writes it must follow, up to this times
 * the cap: queue_depth late IOs, the leg's own share of libdmio's private
 * memory (devices x min_ios), so a hung leg cannot make other legs' IO wait
 * for memory. */
#define LATE_CAP_KEEP 2

enum { IO_RUNNING = 0, IO_LATE = 1, IO_DONE = 2 };

#define HELD_NONE UINT64_MAX      /* held: what the leg holds of the region is unknown */
enum { Q_NO = 0, Q_WAITING = 1, Q_ISSUED = 2 }; /* chunk->queued[i] */

struct chunk;

/* The notify context of a write queued on one leg (it is issued alone, so
 * its region index is always 0): which chunk, which of its legs. */
struct queued_ctx {
	struct chunk *c;
	unsigned i;
};

struct chunk {
	struct chunk *prev, *next; /* m->live */
	struct mirror *m;
	int owner;                 /* the submitter still looks at it */
	int resync;                /* a resync copy (one leg) */
	uint64_t region, gen;
	unsigned nio, nfinal, undecided, ok;
	unsigned nissue;           /* legs issued at once: leg_of[0..nissue); queued ones follow */
	unsigned ok_late;          /* legs OK after their TIMEOUT, before the ack */
	unsigned leg_of[MIRROR_MAX_LEGS];
	unsigned char was_clean[MIRROR_MAX_LEGS];
	unsigned char st[MIRROR_MAX_LEGS];
	unsigned char queued[MIRROR_MAX_LEGS]; /* Q_WAITING behind an earlier IO, then Q_ISSUED */
	struct queued_ctx qctx[MIRROR_MAX_LEGS];
	int final_state[MIRROR_MAX_LEGS];
	uint64_t off;              /* the piece [off, off + len) */
	size_t len;
	double submit_ms;
	uint64_t need_seq;         /* log seq that must be committed before the ack */
	unsigned src;              /* resync: source leg */
	int fua;                   /* written with DM_IO_FUA */
	void *data;                /* our copy (asynchronous writes, resync), freed with the chunk */
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
	uint64_t timeouts, late_ok, late_kept, late_err, errors, skipped, queued, resynced, read_errors,
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
	uint64_t *held;
	uint64_t *dseq;
	unsigned char *disk_img;   /* the last log image written successfully (slot_bytes) */
	int img_inflight;          /* a log write of m->logbuf is under way */
	struct chunk live;
	struct chunk *free_chunks; /* released chunks, reused by mirror_chunk_new (at most CHUNK_CACHE) */
	unsigned nfree;
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

/* The header of a log slot (mirror_log.c; mirror_validate reads it too). */
struct log_hdr {
	char magic[8];
	uint32_t version, nlegs;
	uint64_t region_size, nregions, seq;
	uint32_t bitmap_bytes, csum;
};

/* ---- small helpers ------------------------------------------------------- */

static inline double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Waits on cv (a CLOCK_MONOTONIC condition variable) for at most ms. */
static inline void cv_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, double ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	long long ns = (long long)ts.tv_nsec + (long long)(ms * 1e6);
	ts.tv_sec += (time_t)(ns / 1000000000LL);
	ts.tv_nsec = (long)(ns % 1000000000LL);
	pthread_cond_timedwait(cv, mu, &ts);
}

/* A write or flush waiting past its deadline (for its quorum, or for late
 * IO to drain) waits at most fail_after_ms after t0, in slices of 50 ms so
 * the caller rechecks what it waits for: how long to wait now, or 0 when
 * the time is over. */
static inline double fail_after_slice(const struct mirror *m, double t0)
{
	double left = m->cfg.fail_after_ms - (now_ms() - t0);
	return left <= 0 ? 0 : left < 50 ? left : 50;
}

static inline void cv_init(pthread_cond_t *cv)
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
static inline void cond_wait_ms(struct mirror *m, double ms)
{
	m->nwait++;
	cv_wait_ms(&m->cond, &m->lock, ms);
	m->nwait--;
}

static inline void cond_wait(struct mirror *m)
{
	m->nwait++;
	pthread_cond_wait(&m->cond, &m->lock);
	m->nwait--;
}

/* Wakes the threads waiting on m->cond, if any (m->lock held). */
static inline void mwake(struct mirror *m)
{
	if (m->nwait)
		pthread_cond_broadcast(&m->cond);
}

static inline size_t lr(const struct mirror *m, unsigned leg, uint64_t r)
{
	return (size_t)leg * m->nregions + r;
}

/* Bytes of region r: region_size, less for a partial last region. */
static inline uint64_t region_len(const struct mirror *m, uint64_t r)
{
	uint64_t off = r * (uint64_t)m->region_size;
	return m->size - off < m->region_size ? m->size - off : m->region_size;
}

/* Whether [off, off + len) is a valid range of whole blocks of the mirror. */
static inline int check_range(struct mirror *m, uint64_t off, size_t len)
{
	if (!m || len == 0 || off % m->block_size || len % m->block_size || off > m->size ||
	    len > m->size - off)
		return -EINVAL;
	return 0;
}

/* ---- internal functions, one file's to the others ------------------------- */

/* mirror.c */
void mirror_set_error(const char *fmt, ...);
void mirror_clear_error(void);
void mirror_event(struct mirror *m, const char *fmt, ...);
uint64_t mirror_set_dirty(struct mirror *m, unsigned leg, uint64_t r);
void mirror_clear_dirty(struct mirror *m, unsigned leg, uint64_t r);
void mirror_fail_leg(struct mirror *m, unsigned leg, const char *why);

/* mirror_config.c */
int mirror_check_config(const struct mirror_config *cfg);

/* mirror_log.c */
unsigned char *mirror_log_bitmap(struct mirror *m, unsigned char *slot, unsigned k);
int mirror_log_commit(struct mirror *m, uint64_t need);
int mirror_log_prepare_file(const char *path, size_t bytes);
int mirror_log_load(struct mirror *m);

/* mirror_chunk.c */
struct chunk *mirror_chunk_new(struct mirror *m);
void mirror_chunk_link(struct mirror *m, struct chunk *c);
void mirror_chunk_put(struct mirror *m, struct chunk *c);
int mirror_submit_write(struct mirror *m, struct chunk *c, void *data, struct dm_io_region *regs,
			unsigned n, int sync);
void mirror_leg_io_end(struct mirror *m, unsigned leg, uint64_t r, struct queued_ctx *next);
void mirror_issue_queued(struct mirror *m, struct queued_ctx *q);

/* mirror_resync.c */
void *mirror_daemon_main(void *arg);

#endif
