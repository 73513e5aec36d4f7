/*
 * mirror_flush.c - mirror_flush: a FLUSH to every leg not failed, under the
 * write rule (quorum at the deadline, else wait for late legs). A leg that
 * misses it gets every region written since its last good flush dirty.
 */
#include "mirror_int.h"

#include <stdio.h>

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
			uint64_t s = mirror_set_dirty(m, L, r);
			need = s > need ? s : need;
			n++;
		}
	mirror_event(m, "%s: flush %s: %llu region(s) written since its last good flush marked dirty", m->legs[L].name, why,
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
			mirror_fail_leg(m, L, why);
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
		/* In this thread (SYNC), returning when every leg is final or
		 * timed out; a late leg is notified later from the completion
		 * thread (DM_IO_RETURN_ON_TIMEOUT). */
		struct dm_io_control ctrl = {
			.memory = { .type = DM_IO_VM, .ptr.vma = NULL },
			.rw = DM_IO_WRITE | DM_IO_FLUSH | DM_IO_SYNC,
			.notify = flush_notify,
			.context = f,
			.client = m->cl,
			.timeout = m->cfg.write_timeout_ms,
			.flags = DM_IO_RETURN_ON_TIMEOUT,
		};
		rc = dm_io(&ctrl, f->nio, regs, NULL);
	}
	pthread_mutex_lock(&m->lock);
	/* Started, every leg was notified before dm_io returned (its result
	 * then says how they ended; the write rule below decides). */
	if (rc && f->undecided < f->nio)
		rc = 0;
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
		double slice = fail_after_slice(m, t0);
		if (rc || f->ok >= m->cfg.quorum || f->ok + late < m->cfg.quorum || slice == 0)
			break;
		cv_wait_ms(&fcv, &m->lock, slice);
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
	if (need && mirror_log_commit(m, need) != 0 && rc == 0)
		rc = -EIO;
	return rc;
}
