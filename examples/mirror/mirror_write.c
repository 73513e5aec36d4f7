/*
 * mirror_write.c - mirror_write: the regions are marked active on the log,
 * each region piece is issued to every eligible leg (with back-pressure when
 * too few are), and the write is acknowledged at its deadline once `quorum`
 * legs are OK, after a log commit when crash recovery needs one.
 */
#include "mirror_int.h"

#include <limits.h>

/* ---- writes ---------------------------------------------------------------- */

/* Whether no following leg of region r (see mirror_int.h) is below its
 * late IO cap: then the following legs take a write over their cap (m->lock
 * held). */
static int keep_following(const struct mirror *m, uint64_t r)
{
	for (unsigned L = 0; L < m->nlegs; L++) {
		const struct leg *l = &m->legs[L];
		if (!l->failed && l->late < m->late_cap && m->held[lr(m, L, r)] != HELD_NONE)
			return 0;
	}
	return 1;
}

/* Whether leg L takes a write to region r now (m->lock held): not failed,
 * and below its late IO cap, or a following leg up to LATE_CAP_KEEP times
 * the cap when `keep` (keep_following). */
static int leg_takes(const struct mirror *m, unsigned L, uint64_t r, int keep)
{
	const struct leg *l = &m->legs[L];
	if (l->failed)
		return 0;
	if (l->late < m->late_cap)
		return 1;
	return keep && m->held[lr(m, L, r)] != HELD_NONE && l->late < m->late_cap * LATE_CAP_KEEP;
}

/* Leg L misses chunk c's write (m->lock held): dirty, and no longer
 * following the region (only a resync can make it whole again). `why`:
 * for the event, none if NULL. */
static void chunk_skip(struct mirror *m, struct chunk *c, unsigned L, const char *why)
{
	uint64_t s = mirror_set_dirty(m, L, c->region);
	if (s > c->need_seq)
		c->need_seq = s;
	m->held[lr(m, L, c->region)] = HELD_NONE;
	m->legs[L].skipped++;
	if (why)
		mirror_event(m, "%s: write to region %llu not sent (%s) -> region dirty", m->legs[L].name,
			     (unsigned long long)c->region, why);
}

/* Queues chunk c's write on leg L behind the IO still running on (L, r)
 * (m->lock held): it is issued from c->data (copied from buf here if c has
 * no copy yet) the moment that IO ends. 0, or -ENOMEM (then L is skipped). */
static int chunk_queue(struct mirror *m, struct chunk *c, unsigned L, const void *buf)
{
	struct leg *l = &m->legs[L];
	uint64_t r = c->region;
	if (!c->data) {
		c->data = malloc(c->len);
		if (!c->data)
			return -ENOMEM;
		memcpy(c->data, buf, c->len);
	}
	unsigned i = c->nio++;
	c->leg_of[i] = L;
	c->was_clean[i] = 0;
	c->st[i] = IO_LATE; /* it cannot make the deadline: late from the start */
	c->queued[i] = Q_WAITING;
	c->qctx[i] = (struct queued_ctx){ c, i };
	m->lio[lr(m, L, r)]++;
	m->inflight[r]++;
	l->late++;
	l->queued++;
	uint64_t s = mirror_set_dirty(m, L, r);
	if (s > c->need_seq)
		c->need_seq = s;
	mirror_event(m, "%s: write to region %llu queued behind earlier IO still running -> region dirty until it lands",
		     l->name, (unsigned long long)r);
	return 0;
}

/* Prepares chunk c, the write of one region piece [off, off + len) of
 * region r (the data at buf), to every eligible leg: back-pressure, then
 * each eligible leg gets an IO (regs[0..c->nissue)); a leg still busy with
 * an earlier IO on r gets the write queued behind it (chunk_queue); the
 * others are marked dirty. Links c on m->live. m->lock held (the
 * back-pressure wait releases it for a while). `now`: the time the IO is
 * issued at (submit_ms). */
static void chunk_prepare(struct mirror *m, struct chunk *c, uint64_t r, uint64_t off, size_t len, int fua,
			  double t0, double now, pthread_cond_t *wake, struct dm_io_region *regs, const void *buf)
{
	c->m = m;
	c->owner = 1;
	c->region = r;
	c->off = off;
	c->len = len;
	c->fua = fua;
	c->wake = wake;
	/* A leg with too much late IO is skipped (see leg_takes). When that
	 * would leave fewer than `quorum` legs, wait for late IO to drain
	 * instead (back-pressure: a slow but working leg must not turn into an
	 * EIO), until the legs not failed are too few anyway or fail_after_ms
	 * after the write began. */
	int keep;
	for (;;) {
		unsigned eligible = 0, alive = 0;
		keep = keep_following(m, r);
		for (unsigned L = 0; L < m->nlegs; L++) {
			alive += !m->legs[L].failed;
			eligible += leg_takes(m, L, r, keep);
		}
		if (eligible >= m->cfg.quorum || alive < m->cfg.quorum)
			break;
		double slice = fail_after_slice(m, t0);
		if (slice == 0)
			break;
		cond_wait_ms(m, slice);
		now = now_ms();
	}
	c->gen = ++m->gen[r];
	c->submit_ms = now;
	m->last_write[r] = now;
	unsigned busy[MIRROR_MAX_LEGS], nbusy = 0;
	for (unsigned L = 0; L < m->nlegs; L++) {
		struct leg *l = &m->legs[L];
		size_t i = lr(m, L, r);
		const char *why = NULL; /* why L misses this write ("": failed, no event) */
		if (l->failed) {
			why = "";
		} else if (!leg_takes(m, L, r, keep)) {
			why = "too much late IO on the leg";
		} else if (m->lio[i] == UCHAR_MAX) {
			why = "too many writes queued on the region";
		} else if (m->lio[i]) {
			busy[nbusy++] = L; /* queued once the legs free now are set up */
			continue;
		}
		if (why) {
			chunk_skip(m, c, L, *why ? why : NULL);
			continue;
		}
		c->leg_of[c->nio] = L;
		c->was_clean[c->nio] = !m->dirty[i];
		regs[c->nio] = (struct dm_io_region){ l->bdev, off / 512, len / 512 };
		c->nio++;
		m->lio[i]++;
		m->inflight[r]++;
	}
	c->nissue = c->nio;
	c->undecided = c->nio;
	for (unsigned k = 0; k < nbusy; k++)
		if (chunk_queue(m, c, busy[k], buf) != 0)
			chunk_skip(m, c, busy[k], "no memory to queue it");
	mirror_chunk_link(m, c);
}

/* Issues prepared chunk c (m->lock not held).
 *
 * `sync` (a write of one piece): the calling thread does the IO itself, a
 * SYNC dm_io with DM_IO_RETURN_ON_TIMEOUT. It returns when every leg is
 * final or has timed out (the deadline), with every notification so far
 * delivered in this thread; a leg that timed out is notified again later
 * from the completion thread, as with an asynchronous write. The data is
 * in libdmio's private memory before any leg starts and dm_io never reads
 * `buf` after it returns, so no copy of ours is needed.
 * Otherwise (a piece of a write over several regions, issued together with
 * the others) an asynchronous dm_io from c->data, a copy of ours: dm_io
 * needs the memory until each region is final, and a late region outlives
 * the caller's buffer. */
static void chunk_submit(struct mirror *m, struct chunk *c, const void *buf, struct dm_io_region *regs, int sync)
{
	if (!c->nissue)
		return;
	int rc = mirror_submit_write(m, c, sync ? (void *)buf : c->data, regs, c->nissue, sync);
	if (rc && sync) {
		/* A SYNC dm_io that started notified every leg before it
		 * returned (its result then says how they ended; the quorum
		 * rule decides): nothing started only if none was notified. */
		pthread_mutex_lock(&m->lock);
		int started = c->undecided < c->nissue;
		pthread_mutex_unlock(&m->lock);
		if (started)
			rc = 0;
	}
	if (rc) {
		/* Nothing started: the legs missed this write. */
		struct queued_ctx next[MIRROR_MAX_LEGS];
		pthread_mutex_lock(&m->lock);
		uint64_t r = c->region;
		for (unsigned i = 0; i < c->nissue; i++) {
			unsigned L = c->leg_of[i];
			chunk_skip(m, c, L, NULL);
			mirror_leg_io_end(m, L, r, &next[i]);
			m->inflight[r]--;
			c->st[i] = IO_DONE;
			c->final_state[i] = DM_IO_ERROR;
		}
		c->nfinal = c->nissue;
		c->undecided = 0;
		mirror_event(m, "dm_io refused a write: %s (%s)", strerror(-rc), dm_io_last_error());
		pthread_mutex_unlock(&m->lock);
		for (unsigned i = 0; i < c->nissue; i++)
			mirror_issue_queued(m, &next[i]);
	}
}

/* Legs of c whose IO is late (timed out and still running, or queued):
 * they may still bring the write to its quorum (m->lock held). A write
 * still queued on a failed leg will be dropped, not issued. */
static unsigned chunk_running(const struct mirror *m, const struct chunk *c)
{
	unsigned n = 0;
	for (unsigned i = 0; i < c->nio; i++)
		n += c->st[i] == IO_LATE && !(c->queued[i] == Q_WAITING && m->legs[c->leg_of[i]].failed);
	return n;
}

/* The leg crash recovery would copy an active region r from, reading log
 * image `img` (the first leg not dirty there), or -1 (m->lock held). */
static int image_source(struct mirror *m, unsigned char *img, uint64_t r)
{
	for (unsigned L = 0; L < m->nlegs; L++)
		if (!((mirror_log_bitmap(m, img, L)[r / 8] >> (r % 8)) & 1))
			return (int)L;
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
		int src = image_source(m, k ? m->logbuf : m->disk_img, c->region);
		int good = 0;
		for (unsigned i = 0; i < c->nio; i++)
			if ((int)c->leg_of[i] == src)
				good = c->was_clean[i] && c->st[i] == IO_DONE && c->final_state[i] == DM_IO_OK;
		if (!good)
			return 1;
	}
	return 0;
}


int mirror_write(struct mirror *m, uint64_t off, const void *buf, size_t len)
{
	return mirror_write_flags(m, off, buf, len, 0);
}

/* This thread's condition variable, on which the notifications of its
 * writes' chunks signal it (chunk->wake): set up once per thread. glibc's
 * condition variables hold no resource, so it is never destroyed. */
static pthread_cond_t *writer_cv(void)
{
	static __thread pthread_cond_t cv;
	static __thread int ready;
	if (!ready) {
		cv_init(&cv);
		ready = 1;
	}
	return &cv;
}

/* The end of a write (m->lock held): its regions are free again, the
 * counters. */
static void write_done(struct mirror *m, uint64_t r0, uint64_t r1, int rc, int degraded, double t0)
{
	for (uint64_t r = r0; r <= r1; r++)
		m->busy[r] = 0;
	if (rc == 0) {
		double took = now_ms() - t0;
		m->writes++;
		m->writes_degraded += degraded;
		if (took > m->max_ack_ms)
			m->max_ack_ms = took;
	} else {
		m->write_errors++;
	}
	mwake(m);
}

/* Fills tmp (the blocks [a0, a0 + alen)) for a write of [off, off + len)
 * from buf: the partial first and last blocks are read from the mirror,
 * then buf is copied in. The caller holds busy[] on the regions, so no
 * other write changes those blocks meanwhile. */
static int merge_partial(struct mirror *m, unsigned char *tmp, uint64_t a0, uint64_t alen, uint64_t off,
			 const void *buf, size_t len)
{
	uint64_t bs = m->block_size, a1 = a0 + alen, end = off + len;
	int rc = 0;
	if (off != a0)
		rc = mirror_read(m, a0, tmp, bs);
	if (!rc && end != a1 && (a1 - bs != a0 || off == a0))
		rc = mirror_read(m, a1 - bs, tmp + (alen - bs), bs);
	if (!rc)
		memcpy(tmp + (off - a0), buf, len);
	return rc;
}

/* A write of [off, off + len): whole blocks, or (mirror_pwrite) any bytes,
 * whose partial first and last blocks are read, merged and written whole
 * while busy[] holds the regions against every other write. */
static int write_range(struct mirror *m, uint64_t off, const void *buf, size_t len, unsigned flags)
{
	double t0 = now_ms();
	uint64_t bs = m->block_size;
	uint64_t a0 = off / bs * bs, a1 = (off + len + bs - 1) / bs * bs;
	uint64_t r0 = a0 / m->region_size, r1 = (a1 - 1) / m->region_size;
	uint64_t need = 0;
	int rc = 0;
	int partial = a0 != off || a1 != off + len;
	unsigned char *tmp = NULL;
	if (r1 - r0 >= MAX_WRITE_REGIONS)
		return -EINVAL;
	pthread_cond_t *wcv = writer_cv();
	struct chunk *cs[MAX_WRITE_REGIONS];
	struct dm_io_region regs[MIRROR_MAX_LEGS];
	unsigned n = 0;
	int sync = r0 == r1; /* one piece: SYNC, in this thread (chunk_submit) */

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
					uint64_t s = mirror_set_dirty(m, L, r);
					if (s > need && m->committed < s)
						need = s;
				}
		}
	}
	if (sync && !need && !partial) {
		/* The usual write: one piece, nothing to commit first. It is
		 * prepared under this same hold of the lock. */
		struct chunk *c = mirror_chunk_new(m);
		if (!c) {
			rc = -ENOMEM;
			pthread_mutex_unlock(&m->lock);
			goto out;
		}
		chunk_prepare(m, c, r0, off, len, flags & MIRROR_FUA, t0, t0, wcv, regs, buf);
		pthread_mutex_unlock(&m->lock);
		cs[n++] = c;
		chunk_submit(m, c, buf, regs, 1);
		goto wait;
	}
	pthread_mutex_unlock(&m->lock);

	if (partial) {
		tmp = malloc(a1 - a0);
		rc = tmp ? merge_partial(m, tmp, a0, a1 - a0, off, buf, len) : -ENOMEM;
		if (rc)
			goto out;
		buf = tmp;
		off = a0;
		len = a1 - a0;
	}

	/* The regions are marked "being written" on the log before any leg
	 * sees the write (legs may differ in them after a crash). */
	if (need && mirror_log_commit(m, need) != 0) {
		rc = -EIO;
		goto out;
	}

	double now = need || partial ? now_ms() : t0;
	const unsigned char *p = buf;
	uint64_t pos = off, end = off + len;
	while (pos < end) {
		uint64_t r = pos / m->region_size;
		uint64_t rend = (r + 1) * (uint64_t)m->region_size;
		size_t piece = (size_t)((rend < end ? rend : end) - pos);
		void *data = NULL;
		if (!sync) {
			data = malloc(piece);
			if (!data) {
				rc = -ENOMEM;
				break;
			}
			memcpy(data, p + (pos - off), piece);
		}
		pthread_mutex_lock(&m->lock);
		struct chunk *c = mirror_chunk_new(m);
		if (c) {
			c->data = data;
			chunk_prepare(m, c, r, pos, piece, flags & MIRROR_FUA, t0, now, wcv, regs, p + (pos - off));
		}
		pthread_mutex_unlock(&m->lock);
		if (!c) {
			free(data);
			rc = -ENOMEM;
			break;
		}
		cs[n++] = c;
		chunk_submit(m, c, p + (pos - off), regs, sync);
		pos += piece;
	}

wait:
	/* Wait until every leg of every piece is final or timed out (the
	 * deadline); then, while fewer than `quorum` legs of a piece are OK,
	 * keep waiting for late completions: the write fails only when its
	 * quorum can no longer be reached, or after fail_after_ms. */
	pthread_mutex_lock(&m->lock);
	for (unsigned k = 0; k < n; k++)
		while (cs[k]->undecided)
			pthread_cond_wait(wcv, &m->lock);
	for (;;) {
		int reached = 1, lost = 0;
		for (unsigned k = 0; k < n; k++) {
			unsigned ok = cs[k]->ok + cs[k]->ok_late;
			if (ok < m->cfg.quorum) {
				reached = 0;
				lost |= ok + chunk_running(m, cs[k]) < m->cfg.quorum;
			}
		}
		if (reached || lost || rc)
			break;
		double slice = fail_after_slice(m, t0);
		if (slice == 0)
			break;
		cv_wait_ms(wcv, &m->lock, slice);
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
		mirror_chunk_put(m, c);
	}
	if (!need) {
		/* Nothing to commit before the ack: done under this hold. */
		write_done(m, r0, r1, rc, degraded, t0);
		pthread_mutex_unlock(&m->lock);
		free(tmp);
		return rc;
	}
	pthread_mutex_unlock(&m->lock);

	/* Legs that missed the write are dirty on the log before the ack,
	 * unless the log already leads crash recovery to a leg that has it. */
	if (mirror_log_commit(m, need) != 0 && rc == 0)
		rc = -EIO;
	pthread_mutex_lock(&m->lock);
	write_done(m, r0, r1, rc, degraded, t0);
	pthread_mutex_unlock(&m->lock);
	free(tmp);
	return rc;
out:
	pthread_mutex_lock(&m->lock);
	write_done(m, r0, r1, rc, 0, t0);
	pthread_mutex_unlock(&m->lock);
	free(tmp);
	return rc;
}

int mirror_write_flags(struct mirror *m, uint64_t off, const void *buf, size_t len, unsigned flags)
{
	if (check_range(m, off, len) || !buf || (flags & ~MIRROR_FUA))
		return -EINVAL;
	return write_range(m, off, buf, len, flags);
}

int mirror_pwrite(struct mirror *m, uint64_t off, const void *buf, size_t len, unsigned flags)
{
	if (!m || !buf || !len || (flags & ~MIRROR_FUA) || off > m->size || len > m->size - off)
		return -EINVAL;
	return write_range(m, off, buf, len, flags);
}
