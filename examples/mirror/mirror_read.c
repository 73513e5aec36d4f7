/*
 * mirror_read.c - mirror_read: each piece is read from the legs clean for
 * its region, healthy legs first, hedged (DM_IO_READ_ANY); a leg that errs
 * is failed, one that was overtaken is avoided for a while.
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
				mirror_fail_leg(m, order[k], why);
			} else if (rctx.state[k] == DM_IO_CANCELLED && (winner < 0 || (int)k < winner)) {
				/* Overtaken by the next leg (or the deadline): slow. */
				l->read_slow++;
				l->read_slow_until = now_ms() + READ_SLOW_MS;
				mirror_event(m, "%s: read of region %llu too slow, served by %s", l->name, (unsigned long long)r,
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
