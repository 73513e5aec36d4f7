/*
 * mirror_read.c - mirror_read: each piece is read from the legs clean for
 * its region, healthy legs first, hedged (DM_IO_READ_ANY); a leg that errs
 * is failed, one that was overtaken is avoided for a while; a leg dirty only
 * while its write to the region is late is waited for (read_piece).
 */
#include "mirror_int.h"

#include <stdio.h>

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

/* The legs to read region r from (m->lock held), into order[]: the legs
 * clean for r from a rotating start, those that were slow lately last.
 * Returns their number. *waiting: the legs left out only for now, being
 * dirty for r while IO to r on them still runs (a late write that comes
 * back OK, or a resync copy, may make them clean again). */
static unsigned read_order(struct mirror *m, uint64_t r, unsigned *order, unsigned *waiting)
{
	unsigned n = 0, nslow = 0, slow[MIRROR_MAX_LEGS];
	double t = now_ms();
	unsigned start = m->read_rr++;
	*waiting = 0;
	for (unsigned k = 0; k < m->nlegs; k++) {
		unsigned L = (start + k) % m->nlegs;
		struct leg *l = &m->legs[L];
		if (l->failed)
			continue;
		if (m->dirty[lr(m, L, r)]) {
			if (m->lio[lr(m, L, r)])
				*waiting |= 1u << L;
			continue;
		}
		if (l->late || t < l->read_slow_until)
			slow[nslow++] = L; /* tried last */
		else
			order[n++] = L;
	}
	for (unsigned k = 0; k < nslow; k++)
		order[n++] = slow[k];
	return n;
}

/* One hedged read of [pos, pos + piece) of region r into dst from the n
 * legs of order[] with deadline tmo (0: none); notes which legs erred
 * (failed) or were overtaken (slow). 0 when one delivered, else <0. */
static int read_attempt(struct mirror *m, uint64_t r, uint64_t pos, size_t piece, void *dst, const unsigned *order,
			unsigned n, unsigned long tmo)
{
	struct dm_io_region regs[MIRROR_MAX_LEGS];
	for (unsigned k = 0; k < n; k++)
		regs[k] = (struct dm_io_region){ m->legs[order[k]].bdev, pos / 512, piece / 512 };
	struct read_ctx rctx;
	for (unsigned k = 0; k < MIRROR_MAX_LEGS; k++)
		rctx.state[k] = -1, rctx.err[k] = 0;
	struct dm_io_control c = {
		.memory = { .type = DM_IO_VM, .ptr.vma = dst },
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
			mirror_fail_leg(m, order[k], why);
		} else if (rctx.state[k] == DM_IO_CANCELLED && (winner < 0 || (int)k < winner)) {
			/* Overtaken by the next leg (or the deadline): slow. */
			l->read_slow++;
			l->read_slow_until = now_ms() + READ_SLOW_MS;
			mirror_event(m, "%s: read of region %llu too slow, served by %s", l->name, (unsigned long long)r,
			   winner >= 0 ? m->legs[order[winner]].name : "no leg");
		}
	}
	pthread_mutex_unlock(&m->lock);
	/* Success is "some leg delivered OK" (the legs not needed end
	 * CANCELLED; libdmio before c86213a returned their -ECANCELED
	 * from a successful SYNC DM_IO_READ_ANY). */
	if (winner >= 0)
		return 0;
	return rc ? rc : -EIO;
}

/* Reads one piece (within region r): from the clean legs, hedged, the last
 * one waited for up to fail_after_ms after t0. A leg that is dirty only
 * while a write to r on it is late still holds what the reader may see
 * (the data of every acknowledged write, the block being written old or
 * new), and comes back clean when that write does: while such legs exist,
 * a read with no clean leg waits for them instead of failing, and a read
 * from the clean legs gives up at its hedge deadline to look again (once
 * per leg set: a hung leg gets at most one abandoned read per try).
 * Without that a 100 ms stall of the good leg while the other hangs ended
 * reads of acknowledged data in EIO. */
static int read_piece(struct mirror *m, uint64_t r, uint64_t pos, size_t piece, void *dst, int first)
{
	double t0 = now_ms();
	unsigned tried = 0; /* legs of a shortened try that delivered nothing */
	for (;;) {
		unsigned order[MIRROR_MAX_LEGS], n, waiting, fresh;
		pthread_mutex_lock(&m->lock);
		m->reads += first;
		first = 0;
		for (;;) {
			n = read_order(m, r, order, &waiting);
			fresh = 0;
			for (unsigned k = 0; k < n; k++)
				fresh |= ~tried & (1u << order[k]);
			if (!waiting || (n && fresh) || fail_after_slice(m, t0) == 0)
				break;
			cond_wait_ms(m, fail_after_slice(m, t0));
		}
		if (n == 0)
			m->read_errors++;
		pthread_mutex_unlock(&m->lock);
		if (n == 0)
			return -EIO;
		/* The next leg starts after the hedge delay (read_timeout_ms);
		 * the last one is slow, not gone: it is waited for up to
		 * fail_after_ms, as a write waits for its quorum. An error for
		 * a read a loaded leg serves in 300 ms turns a filesystem on
		 * the volume read-only, or corrupts it. */
		unsigned long tmo = (unsigned long)m->cfg.read_timeout_ms * (n + 1);
		double left = m->cfg.fail_after_ms - (now_ms() - t0);
		int shortened = tmo && waiting && fresh && left > tmo;
		if (tmo && !shortened && left > tmo)
			tmo = (unsigned long)left;
		int rc = read_attempt(m, r, pos, piece, dst, order, n, tmo);
		if (rc == 0)
			return 0;
		if (!shortened || rc != -ETIMEDOUT) {
			pthread_mutex_lock(&m->lock);
			m->read_errors++;
			pthread_mutex_unlock(&m->lock);
			return rc;
		}
		for (unsigned k = 0; k < n; k++)
			tried |= 1u << order[k];
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
		int rc = read_piece(m, r, pos, (size_t)(lim - pos), p + (pos - off), pos == off);
		if (rc)
			return rc;
		pos = lim;
	}
	return 0;
}
