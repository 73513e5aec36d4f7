/*
 * mirror_log.c - the persisted dirty-region log: two slots written
 * alternately with DM_IO_FLUSH | DM_IO_FUA, each a header with a sequence
 * number and a checksum and one bitmap per leg (dirty) plus one (active).
 * Group commit (mirror_log_commit), creation of a log file, and loading the
 * newest valid slot at open (crash recovery).
 */
#include "mirror_int.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the log ------------------------------------------------------------- */

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
unsigned char *mirror_log_bitmap(struct mirror *m, unsigned char *slot, unsigned k)
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
int mirror_log_commit(struct mirror *m, uint64_t need)
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
		unsigned char *b = mirror_log_bitmap(m, s, k);
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
		memcpy(m->disk_img, s, m->slot_bytes);
		if (seq > m->committed)
			m->committed = seq;
		m->log_commits++;
		m->slot ^= 1; /* only after success: the other slot stays intact */
	} else {
		m->log_errors++;
		mirror_event(m, "log write failed: %s", strerror(-rc));
	}
	pthread_mutex_unlock(&m->lock);
	pthread_mutex_unlock(&m->log_lock);
	return rc;
}

/* Creates or extends a regular log file to `bytes`. */
int mirror_log_prepare_file(const char *path, size_t bytes)
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
int mirror_log_load(struct mirror *m)
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
			mirror_set_error("log %s was made for another geometry (%u legs, %llu regions of %llu bytes)",
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
			unsigned char *b = mirror_log_bitmap(m, s[best], leg);
			for (uint64_t r = 0; r < m->nregions; r++)
				if (b[r / 8] & (1u << (r % 8)))
					mirror_set_dirty(m, leg, r);
		}
		unsigned char *a = mirror_log_bitmap(m, s[best], m->nlegs);
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
					mirror_set_dirty(m, leg, r);
		}
		if (best_seq > m->seq)
			m->seq = best_seq;
		m->committed = best_seq;
		m->slot = (unsigned)best ^ 1;
		mirror_event(m, "log: loaded (seq %llu), %llu region(s) were being written", (unsigned long long)best_seq,
		   (unsigned long long)nactive);
	}
	free(s[0]);
	free(s[1]);
	return best >= 0;
}
