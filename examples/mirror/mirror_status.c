/*
 * mirror_status.c - what the mirror tells and the knobs it offers while it
 * runs: status and its printout, the waits for in-sync and no late IO,
 * fault injection on a leg, pausing resync, and the accessors.
 */
#include "mirror_int.h"

const char *mirror_leg_state_name(enum mirror_leg_state s)
{
	switch (s) {
	case MIRROR_LEG_IN_SYNC: return "in-sync";
	case MIRROR_LEG_DIRTY: return "dirty";
	case MIRROR_LEG_FAILED: return "failed";
	}
	return "?";
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
		s->queued = l->queued;
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
			   "(%llu kept dirty), errors %llu, skipped %llu, queued %llu, resynced %llu, read errors %llu, slow reads %llu\n",
			s->name, s->path, mirror_leg_state_name(s->state), *s->fail_reason ? " - " : "",
			s->fail_reason, (unsigned long long)s->dirty_regions, (unsigned long long)s->late_io,
			(unsigned long long)s->timeouts, (unsigned long long)s->late_ok,
			(unsigned long long)s->late_kept_dirty, (unsigned long long)s->errors,
			(unsigned long long)s->skipped, (unsigned long long)s->queued, (unsigned long long)s->resynced,
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
