/*
 * mirror.c - a reference N-way mirror over libdmio. See mirror.h for the
 * interface, mirror_int.h for the state, its rules and which file holds what.
 *
 * This file: mirror_open and mirror_close, the thread's last error message,
 * events, and the dirty bits and leg failure every part of the mirror uses.
 */
#include "mirror_int.h"

#include <stdarg.h>
#include <stdio.h>

static __thread char last_error[256];

void mirror_set_error(const char *fmt, ...)
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

void mirror_clear_error(void)
{
	last_error[0] = 0;
}

void mirror_event(struct mirror *m, const char *fmt, ...)
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

/* ---- dirty bits (m->lock held) ------------------------------------------ */

/* Marks (leg, r) dirty; returns the log seq that records it. */
uint64_t mirror_set_dirty(struct mirror *m, unsigned leg, uint64_t r)
{
	size_t i = lr(m, leg, r);
	if (!m->dirty[i]) {
		m->dirty[i] = 1;
		m->legs[leg].ndirty++;
		m->dseq[i] = ++m->seq;
	}
	return m->dseq[i];
}

void mirror_clear_dirty(struct mirror *m, unsigned leg, uint64_t r)
{
	size_t i = lr(m, leg, r);
	m->held[i] = m->gen[r]; /* clean: the leg has every write to r */
	if (m->dirty[i]) {
		m->dirty[i] = 0;
		m->legs[leg].ndirty--;
		m->seq++; /* committed lazily */
		if (m->legs[leg].ndirty == 0 && !m->legs[leg].failed)
			mirror_event(m, "%s: no dirty region left", m->legs[leg].name);
	}
}

void mirror_fail_leg(struct mirror *m, unsigned leg, const char *why)
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
	mirror_event(m, "%s FAILED: %s; writes skip it (its regions are marked dirty)", l->name, why);
}

/* ---- open, close ---------------------------------------------------------------- */

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
	free(m->held);
	free(m->dseq);
	free(m->disk_img);
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
	while (m->free_chunks) {
		struct chunk *c = m->free_chunks;
		m->free_chunks = c->next;
		free(c);
	}
	free_arrays(m);
	pthread_mutex_destroy(&m->lock);
	pthread_mutex_destroy(&m->log_lock);
	pthread_cond_destroy(&m->cond);
	pthread_cond_destroy(&m->dcond);
	free(m);
}

int mirror_open(const struct mirror_config *cfg, struct mirror **out)
{
	int rc;
	mirror_clear_error();
	if (!out)
		return -EINVAL;
	rc = mirror_check_config(cfg);
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
		mirror_set_error("dm_io_client_create: %s (%s)", strerror(-rc), dm_io_last_error());
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
			mirror_set_error("%s: %s (%s)", l->path, strerror(-rc), dm_io_last_error());
			l->bdev = NULL;
			goto fail;
		}
		if (m->block_size % dm_io_bdev_block_size(l->bdev)) {
			mirror_set_error("%s: logical block size %u does not divide the block size %u", l->path,
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
		mirror_set_error("the smallest leg is smaller than one block");
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
	m->held = calloc(nl, sizeof(*m->held));
	m->dseq = calloc(nl, sizeof(*m->dseq));
	m->wep = calloc(nl, sizeof(*m->wep));
	if (m->wep)
		memset(m->wep, 0xff, nl * sizeof(*m->wep));
	if (!m->wep || !m->gen || !m->busy || !m->active || !m->inflight || !m->last_write || !m->aseq || !m->dirty ||
	    !m->lio || !m->held || !m->dseq) {
		rc = -ENOMEM;
		mirror_set_error("out of memory");
		goto fail;
	}

	int loaded = 0;
	if (cfg->log_path) {
		m->bitmap_bytes = (size_t)(m->nlegs + 1) * ((n + 7) / 8);
		m->slot_bytes = 4096 + (m->bitmap_bytes + 4095) / 4096 * 4096;
		m->logbuf = malloc(m->slot_bytes);
		m->disk_img = calloc(1, m->slot_bytes);
		rc = m->logbuf && m->disk_img ? mirror_log_prepare_file(cfg->log_path, 2 * m->slot_bytes) : -ENOMEM;
		if (rc) {
			mirror_set_error("log %s: %s", cfg->log_path, strerror(-rc));
			goto fail;
		}
		rc = dm_io_bdev_open_faulty(cfg->log_path, cfg->log_faults ? cfg->log_faults : "", &m->logdev);
		if (rc) {
			mirror_set_error("log %s: %s (%s)", cfg->log_path, strerror(-rc), dm_io_last_error());
			m->logdev = NULL;
			goto fail;
		}
		if (dm_io_bdev_sectors(m->logdev) * 512 < 2 * m->slot_bytes) {
			mirror_set_error("log %s: needs %zu bytes", cfg->log_path, 2 * m->slot_bytes);
			rc = -ENOSPC;
			goto fail;
		}
		loaded = mirror_log_load(m);
		if (loaded < 0) {
			rc = loaded;
			goto fail;
		}
	}
	if (!loaded && cfg->initial_sync)
		for (unsigned L = 1; L < m->nlegs; L++)
			for (uint64_t r = 0; r < m->nregions; r++)
				mirror_set_dirty(m, L, r);
	/* Generation 0 everywhere: a clean leg holds it, a dirty one is unknown. */
	for (size_t i = 0; i < nl; i++)
		m->held[i] = m->dirty[i] ? HELD_NONE : 0;
	if (m->logdev) {
		/* Persist what was loaded and converted (regions that were
		 * being written are now dirty on all legs but one), or create
		 * the log, before serving anything. */
		m->seq = (m->seq > m->committed ? m->seq : m->committed) + 1;
		rc = mirror_log_commit(m, m->seq);
		if (rc) {
			mirror_set_error("log %s: first write failed: %s", cfg->log_path, strerror(-rc));
			goto fail;
		}
	}
	rc = pthread_create(&m->daemon, NULL, mirror_daemon_main, m);
	if (rc) {
		rc = -rc;
		mirror_set_error("pthread_create: %s", strerror(-rc));
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
		mirror_log_commit(m, m->seq);
	}
	teardown(m);
}
