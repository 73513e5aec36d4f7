/*
 * mirror_resync.c - the mirror's background thread: it fails legs whose IO
 * stays late, retires regions no longer being written and commits the log
 * lazily, and resyncs dirty regions from a clean leg, throttled.
 */
#include "mirror_int.h"

#include <stdio.h>

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
			mirror_set_dirty(m, L, 0);
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
				mirror_clear_dirty(m, (unsigned)e, r);
				mirror_event(m, "region %llu: no clean leg, %s taken as the reference", (unsigned long long)r,
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

/* Copy c's reservation of (L, r) ends with nothing written to L (m->lock
 * held on entry and exit): a write queued behind it is issued, with the
 * lock let go for that. */
static void resync_release(struct mirror *m, struct chunk *c, unsigned L, uint64_t r)
{
	struct queued_ctx next;
	mirror_leg_io_end(m, L, r, &next);
	m->inflight[r]--;
	c->nfinal = 1;
	if (next.c) {
		pthread_mutex_unlock(&m->lock);
		mirror_issue_queued(m, &next);
		pthread_mutex_lock(&m->lock);
	}
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
	c->nissue = 1;
	c->undecided = 1;
	c->leg_of[0] = L;
	c->was_clean[0] = 0;
	/* Reserve (L, r) now: a write issued while we read skips L. */
	m->lio[lr(m, L, r)]++;
	m->inflight[r]++;
	mirror_chunk_link(m, c);
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
			mirror_event(m, "resync: reading region %llu from %s failed: %s", (unsigned long long)r,
			   m->legs[S].name, strerror(-rc));
			if (rc != -ETIMEDOUT) {
				m->legs[S].read_errors++;
				mirror_fail_leg(m, S, "read error during resync");
			} else {
				m->legs[S].read_slow_until = now_ms() + READ_SLOW_MS;
			}
		}
		resync_release(m, c, L, r);
		c->owner = 0;
		c->wake = NULL;
		mirror_chunk_put(m, c);
		mwake(m);
		return;
	}
	c->submit_ms = now_ms();
	pthread_mutex_unlock(&m->lock);

	struct dm_io_region dst = { l->bdev, off / 512, len / 512 };
	rc = mirror_submit_write(m, c, data, &dst, 1, 0);

	pthread_mutex_lock(&m->lock);
	if (rc) {
		resync_release(m, c, L, r);
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
	mirror_chunk_put(m, c);
}

void *mirror_daemon_main(void *arg)
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
					mirror_fail_leg(m, c->leg_of[i], why);
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
			mirror_log_commit(m, s);
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
