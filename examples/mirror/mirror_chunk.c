/*
 * mirror_chunk.c - a chunk: one region's write to its legs (a user write's
 * piece, or a resync copy to one leg). Its place on m->live, its release,
 * its submission, and write_notify, which turns each leg's TIMEOUT, late
 * OK, ERROR or CANCELLED into dirty bits, resync progress and leg failure.
 */
#include "mirror_int.h"

#include <stdio.h>

/* A zeroed chunk, from the cache of released ones when it has one
 * (m->lock held; a write does this once per region piece), or NULL. */
struct chunk *mirror_chunk_new(struct mirror *m)
{
	struct chunk *c = m->free_chunks;
	if (!c)
		return calloc(1, sizeof(*c));
	m->free_chunks = c->next;
	m->nfree--;
	memset(c, 0, sizeof(*c));
	return c;
}

void mirror_chunk_link(struct mirror *m, struct chunk *c)
{
	c->next = &m->live;
	c->prev = m->live.prev;
	m->live.prev->next = c;
	m->live.prev = c;
}

void mirror_chunk_put(struct mirror *m, struct chunk *c)
{
	/* m->lock held; frees once final everywhere and released by its owner. */
	if (c->owner || c->nfinal < c->nio)
		return;
	c->prev->next = c->next;
	c->next->prev = c->prev;
	free(c->data);
	c->data = NULL;
	if (m->nfree < CHUNK_CACHE) {
		c->next = m->free_chunks;
		m->free_chunks = c;
		m->nfree++;
	} else {
		free(c);
	}
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

static void leg_write_end(struct chunk *c, unsigned i, const struct dm_io_region_state *st);

/* Notify of the legs issued together (user writes and resync copies). */
static void write_notify(struct dm_io_region_state *st, void *ctx)
{
	struct chunk *c = ctx;
	if (st->index < c->nissue)
		leg_write_end(c, st->index, st);
}

/* Notify of a write that was queued on one leg and issued alone. */
static void queued_notify(struct dm_io_region_state *st, void *ctx)
{
	const struct queued_ctx *q = ctx;
	leg_write_end(q->c, q->i, st);
}

/* Ends queued write i of c without issuing it (m->lock held): the mirror
 * is closing, or its leg failed. The leg stays dirty. */
static void queued_drop(struct mirror *m, struct chunk *c, unsigned i)
{
	struct leg *l = &m->legs[c->leg_of[i]];
	c->queued[i] = Q_ISSUED;
	c->st[i] = IO_DONE;
	c->final_state[i] = DM_IO_CANCELLED;
	c->nfinal++;
	l->late--;
	m->held[lr(m, c->leg_of[i], c->region)] = HELD_NONE; /* it misses the write */
	m->lio[lr(m, c->leg_of[i], c->region)]--;
	m->inflight[c->region]--;
	mirror_event(m, "%s: write to region %llu queued behind earlier IO dropped (%s) -> region stays dirty",
		     l->name, (unsigned long long)c->region, m->stop ? "closing" : "leg failed");
	if (c->wake)
		pthread_cond_signal(c->wake);
	mirror_chunk_put(m, c);
}

/* The queued write on (leg, r) of the lowest generation: its chunk, and
 * its leg's index in *i; NULL if none (m->lock held). */
static struct chunk *first_queued(struct mirror *m, unsigned leg, uint64_t r, unsigned *i)
{
	struct chunk *best = NULL;
	for (struct chunk *c = m->live.next; c != &m->live; c = c->next) {
		if (c->resync || c->region != r || (best && c->gen > best->gen))
			continue;
		for (unsigned k = c->nissue; k < c->nio; k++)
			if (c->leg_of[k] == leg && c->queued[k] == Q_WAITING) {
				best = c;
				*i = k;
			}
	}
	return best;
}

/* The IO running on (leg, r) ended (m->lock held): lio drops, and the
 * queued write of the lowest generation takes its place. It is returned in
 * *next (next->c NULL if none) for the caller to issue with
 * mirror_issue_queued once it has let go of m->lock. When the mirror is
 * closing or the leg is failed, the queued writes are dropped instead. */
void mirror_leg_io_end(struct mirror *m, unsigned leg, uint64_t r, struct queued_ctx *next)
{
	size_t k = lr(m, leg, r);
	next->c = NULL;
	m->lio[k]--;
	while (m->lio[k]) {
		unsigned i = 0;
		struct chunk *c = first_queued(m, leg, r, &i);
		if (!c) {
			m->lio[k] = 0; /* not reached: lio counts the queued writes */
			return;
		}
		if (m->stop || m->legs[leg].failed) {
			queued_drop(m, c, i);
			continue;
		}
		c->queued[i] = Q_ISSUED; /* lio now counts it as the running IO */
		*next = c->qctx[i];
		return;
	}
}

static int chunk_dm_io(struct mirror *m, struct chunk *c, void *data, struct dm_io_region *regs, unsigned n,
		       int sync, dm_io_notify_fn notify, void *ctx);

/* Issues the queued write q->c leg q->i, reserved by mirror_leg_io_end
 * (m->lock not held). The chunk stays alive until that leg is final. */
void mirror_issue_queued(struct mirror *m, struct queued_ctx *q)
{
	struct chunk *c = q->c;
	if (!c)
		return;
	unsigned i = q->i;
	struct dm_io_region reg = { m->legs[c->leg_of[i]].bdev, c->off / 512, c->len / 512 };
	int rc = chunk_dm_io(m, c, c->data, &reg, 1, 0, queued_notify, &c->qctx[i]);
	if (rc) {
		/* Refused (the client is going away, or out of memory): the
		 * leg missed the write, as if it had been cancelled. */
		struct dm_io_region_state st = { .index = 0, .state = DM_IO_CANCELLED, .error_code = rc };
		leg_write_end(c, i, &st);
	}
}

/* The end (or the TIMEOUT) of leg i's write of chunk c: user writes and
 * resync copies, issued at once or queued. */
static void leg_write_end(struct chunk *c, unsigned i, const struct dm_io_region_state *st)
{
	struct mirror *m = c->m;
	if (i >= c->nio)
		return;
	unsigned L = c->leg_of[i];
	struct leg *l = &m->legs[L];
	uint64_t r = c->region;
	size_t k = lr(m, L, r);
	struct queued_ctx next = { NULL, 0 };

	pthread_mutex_lock(&m->lock);
	/* The time, for messages only: not read for the usual on-time OK. */
	double t = st->state == DM_IO_OK && c->st[i] == IO_RUNNING && !c->resync ? 0 : now_ms();
	pthread_cond_t *wake = c->wake; /* NULL once the owner let go (c may be freed below) */
	if (st->state == DM_IO_TIMEOUT) {
		if (c->st[i] == IO_RUNNING) {
			c->st[i] = IO_LATE;
			c->undecided--;
			l->late++;
			l->timeouts++;
			m->timeouts++;
			uint64_t s = mirror_set_dirty(m, L, r);
			if (s > c->need_seq)
				c->need_seq = s;
			if (c->resync)
				mirror_event(m, "%s: resync copy of region %llu timed out after %.0f ms", l->name,
				   (unsigned long long)r, t - c->submit_ms);
			else
				mirror_event(m, "%s: write to region %llu TIMED OUT after %.0f ms -> region dirty on %s", l->name,
				   (unsigned long long)r, t - c->submit_ms, l->name);
		}
		goto out;
	}
	if (c->st[i] == IO_DONE)
		goto out;
	int was_late = c->st[i] == IO_LATE;
	int queued = c->queued[i] != Q_NO; /* late by nature, not after a TIMEOUT */
	if (was_late) {
		l->late--;
		m->late_completions += !queued;
	} else {
		c->undecided--;
	}
	c->st[i] = IO_DONE;
	c->final_state[i] = st->state;
	c->nfinal++;
	m->inflight[r]--;

	if (st->state == DM_IO_OK) {
		int current = m->gen[r] == c->gen;
		m->wep[k] = m->fepoch; /* on L, not durable before the next flush */
		if (!c->resync && m->held[k] == c->gen - 1)
			m->held[k] = c->gen; /* L had every earlier write: now this one too */
		if (!was_late)
			c->ok++;
		else if (c->owner)
			c->ok_late++; /* the writer may still be waiting for its quorum */
		if (c->resync) {
			/* The copy holds generation c->gen (do_resync read it while
			 * no write was issued to the region). */
			m->held[k] = c->gen;
			if (current) {
				mirror_clear_dirty(m, L, r);
				l->resynced++;
				m->resynced++;
				mirror_event(m, "resync: region %llu copied %s -> %s%s (%llu dirty left on %s)",
				   (unsigned long long)r, m->legs[c->src].name, l->name, was_late ? " (late)" : "",
				   (unsigned long long)l->ndirty, l->name);
				if (l->failed) {
					l->failed = 0;
					l->fail_reason[0] = 0;
					mirror_event(m, "%s is BACK: writes go to it again; resync continues", l->name);
				}
			} else {
				mirror_event(m, "resync: region %llu on %s superseded by a newer write; again later",
				   (unsigned long long)r, l->name);
			}
		} else {
			int whole = m->held[k] == m->gen[r];
			if (was_late && !queued)
				l->late_ok++;
			if (whole && m->dirty[k] && !l->failed) {
				mirror_clear_dirty(m, L, r);
				mirror_event(m, "%s: %s OK for region %llu after %.0f ms; the leg has every write to it: "
				   "region clean again", l->name, queued ? "queued write" : was_late ? "late" : "on-time",
				   (unsigned long long)r, t - c->submit_ms);
			} else if (was_late && !queued) {
				l->late_kept++;
				mirror_event(m, "%s: late OK for region %llu after %.0f ms; %s: region stays dirty", l->name,
				   (unsigned long long)r, t - c->submit_ms,
				   l->failed ? "the leg is failed" :
				   !current ? "a newer write was issued meanwhile" : "it was already stale");
			}
		}
	} else {
		/* ERROR, or CANCELLED (client destroyed): the region's content on
		 * this leg is unknown. */
		m->held[k] = HELD_NONE;
		uint64_t s = mirror_set_dirty(m, L, r);
		if (s > c->need_seq)
			c->need_seq = s;
		if (was_late)
			l->late_err++;
		if (st->state == DM_IO_ERROR) {
			l->errors++;
			char why[96];
			snprintf(why, sizeof(why), "%s error %s on region %llu", c->resync ? "resync" : "write",
				 strerror(-st->error_code), (unsigned long long)r);
			mirror_fail_leg(m, L, why);
		} else {
			mirror_event(m, "%s: write to region %llu %s", l->name, (unsigned long long)r, state_word(st->state));
		}
	}
	/* After the leg's state is settled: a write queued on a leg this
	 * ERROR just failed is dropped, not issued. */
	mirror_leg_io_end(m, L, r, &next);
	mirror_chunk_put(m, c);
out:
	if (wake)
		pthread_cond_signal(wake);
	mwake(m);
	pthread_mutex_unlock(&m->lock);
	mirror_issue_queued(m, &next);
}

/* One timed write of `data` to `n` leg regions for chunk `c`, notified to
 * notify(ctx); dm_io's result. `sync`: DM_IO_SYNC with
 * DM_IO_RETURN_ON_TIMEOUT, returning when every leg is final or timed out
 * (see chunk_submit in mirror_write.c). */
static int chunk_dm_io(struct mirror *m, struct chunk *c, void *data, struct dm_io_region *regs, unsigned n,
		       int sync, dm_io_notify_fn notify, void *ctx)
{
	struct dm_io_control ctrl = {
		.memory = { .type = DM_IO_VM, .ptr.vma = data },
		.rw = DM_IO_WRITE | (c->fua ? DM_IO_FUA : 0) | (sync ? DM_IO_SYNC : 0),
		.notify = notify,
		.context = ctx,
		.client = m->cl,
		.timeout = m->cfg.write_timeout_ms,
		.flags = sync ? DM_IO_RETURN_ON_TIMEOUT : 0,
	};
	return dm_io(&ctrl, n, regs, NULL);
}

/* The legs of chunk c issued together (user writes and resync copies
 * alike), notified to write_notify. */
int mirror_submit_write(struct mirror *m, struct chunk *c, void *data, struct dm_io_region *regs,
			unsigned n, int sync)
{
	return chunk_dm_io(m, c, data, regs, n, sync, write_notify, c);
}
