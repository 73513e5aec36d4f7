/*
 * nbdkit-dmio-plugin: serves a libdmio mirror (examples/mirror) as an NBD
 * export. Byte N of the export is byte N of every leg. Writes are
 * acknowledged when every leg has them, or at the deadline when `quorum`
 * legs do; a late leg is marked dirty and resynced in the background.
 *
 *   nbdkit dmio leg=A leg=B [timeout=MS] [quorum=N] [log=PATH] [status=PATH] ...
 *
 * Thread model PARALLEL: the mirror is thread-safe; writes lock the blocks
 * they cover (rangelock.h), so a read-modify-write of a partial block never
 * races with another write to it. See nbdkit/README.md.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mirror.h"
#include "rangelock.h"
#include "status.h"

#define BLOCK 4096u                 /* IO unit and advertised preferred size */
#define MAX_REQUEST (32u << 20)     /* advertised maximum request */
#define STATUS_PERIOD_MS 1000
#define TICK_MS 100                 /* how often the fault file is looked at */

static struct mirror_config cfg;
static char *leg_paths[MIRROR_MAX_LEGS];
static char *log_path, *status_path, *fault_path;
static char *fault_specs[MIRROR_MAX_LEGS];
static struct timespec fault_mtime;
static int quorum_set;

static struct mirror *mir;
static uint64_t chunk_bytes;        /* bytes one mirror_write call covers at most */
static unsigned char *zeroes;       /* chunk_bytes of zeroes, for zero requests */
static struct rangelock locks = RANGELOCK_INIT;

static pthread_t status_thread;
static int status_running;
static pthread_mutex_t status_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t status_cond = PTHREAD_COND_INITIALIZER;
static int status_stop;

/* ---- parameters ------------------------------------------------------------ */

#define PARAMS_HELP                                                                                   \
	"leg=PATH              a leg: file or block device (repeat, 1 to 8; bare PATHs are legs too)\n" \
	"timeout=MS            write deadline in ms, a positive integer (default 100)\n"                  \
	"read-timeout=MS       per leg before a read moves to another leg (default 100)\n"              \
	"quorum=N              legs that must have a write to acknowledge it (default 1)\n"            \
	"fail-after=MS         a leg late this long is failed; a write short of its quorum\n"          \
	"                      fails with EIO after this long (default 5000)\n"                         \
	"log=PATH              persistent dirty-region log (created if missing; a new log\n"          \
	"                      means a full initial sync from the first leg)\n"                          \
	"region-size=BYTES     dirty-tracking unit, a multiple of 4096 (default 64K)\n"                \
	"resync-rate=KIB/S     resync throttle, 0 = unthrottled (default 16384)\n"                    \
	"status=PATH           JSON status file, rewritten each second\n"                                \
	"fault=LEG:SPEC        (testing) inject faults on leg LEG (0-based), libdmio's fault\n"        \
	"                      spec, e.g. fault=1:hang writes, fault=0:delay write=200ms\n"           \
	"fault-file=PATH       (testing) lines LEG:SPEC; re-read when it changes: each leg\n"         \
	"                      gets its line's spec, or none"

static void emsg_num(const char *key, const char *value, const char *what)
{
	nbdkit_error("dmio: %s=%s: %s", key, value, what);
}

/* A whole decimal number in [min, max]: digits only, no sign, unit or space. */
static int parse_num(const char *key, const char *value, uint64_t min, uint64_t max, uint64_t *out)
{
	const char *p = value;
	uint64_t v = 0;
	if (!*p) {
		emsg_num(key, value, "empty value");
		return -1;
	}
	for (; *p; p++) {
		if (*p < '0' || *p > '9') {
			char what[160];
			snprintf(what, sizeof(what), "not a whole number (digits only, no unit), from %" PRIu64
				 " to %" PRIu64, min, max);
			emsg_num(key, value, what);
			return -1;
		}
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10) {
			emsg_num(key, value, "too large");
			return -1;
		}
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v < min || v > max) {
		char what[160];
		snprintf(what, sizeof(what), "out of range: from %" PRIu64 " to %" PRIu64, min, max);
		emsg_num(key, value, what);
		return -1;
	}
	*out = v;
	return 0;
}

/* The directory of `path` exists (for files the plugin creates). */
static int dir_exists(const char *key, const char *path)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == dir)
		dir[1] = 0;
	else
		*slash = 0;
	struct stat st;
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, W_OK) != 0) {
		nbdkit_error("dmio: %s=%s: directory %s does not exist or is not writable", key, path, dir);
		return -1;
	}
	return 0;
}

static void dmio_load(void)
{
	mirror_config_init(&cfg);
	cfg.block_size = BLOCK;
}

static int dmio_config(const char *key, const char *value)
{
	uint64_t v;
	if (!strcmp(key, "leg")) {
		if (cfg.nlegs == MIRROR_MAX_LEGS) {
			nbdkit_error("dmio: leg=%s: at most %d legs", value, MIRROR_MAX_LEGS);
			return -1;
		}
		char *p = nbdkit_absolute_path(value);
		if (!p)
			return -1;
		leg_paths[cfg.nlegs] = p;
		cfg.legs[cfg.nlegs] = p;
		cfg.nlegs++;
	} else if (!strcmp(key, "timeout")) {
		if (parse_num(key, value, 1, UINT32_MAX, &v))
			return -1;
		cfg.write_timeout_ms = (unsigned)v;
	} else if (!strcmp(key, "read-timeout")) {
		if (parse_num(key, value, 1, UINT32_MAX, &v))
			return -1;
		cfg.read_timeout_ms = (unsigned)v;
	} else if (!strcmp(key, "quorum")) {
		if (parse_num(key, value, 1, MIRROR_MAX_LEGS, &v))
			return -1;
		cfg.quorum = (unsigned)v;
		quorum_set = 1;
	} else if (!strcmp(key, "fail-after")) {
		if (parse_num(key, value, 1, UINT32_MAX, &v))
			return -1;
		cfg.fail_after_ms = (unsigned)v;
	} else if (!strcmp(key, "region-size")) {
		int64_t s = nbdkit_parse_size(value);
		if (s < 0)
			return -1;
		if (s < 4096 || s % 4096 || s > (1 << 30)) {
			emsg_num(key, value, "must be a multiple of 4096 from 4096 to 1G");
			return -1;
		}
		cfg.region_size = (unsigned)s;
	} else if (!strcmp(key, "resync-rate")) {
		if (parse_num(key, value, 0, UINT32_MAX, &v))
			return -1;
		cfg.resync_kbps = (unsigned)v;
	} else if (!strcmp(key, "log")) {
		free(log_path);
		log_path = nbdkit_absolute_path(value);
		if (!log_path)
			return -1;
	} else if (!strcmp(key, "fault")) {
		const char *colon = strchr(value, ':');
		uint64_t leg;
		char num[16];
		size_t n = colon ? (size_t)(colon - value) : 0;
		if (!colon || n == 0 || n >= sizeof(num)) {
			emsg_num(key, value, "wants LEG:SPEC");
			return -1;
		}
		memcpy(num, value, n);
		num[n] = 0;
		if (parse_num(key, num, 0, MIRROR_MAX_LEGS - 1, &leg))
			return -1;
		free(fault_specs[leg]);
		fault_specs[leg] = strdup(colon + 1);
		if (!fault_specs[leg])
			return -1;
	} else if (!strcmp(key, "fault-file")) {
		free(fault_path);
		fault_path = nbdkit_absolute_path(value);
		if (!fault_path)
			return -1;
	} else if (!strcmp(key, "status")) {
		free(status_path);
		status_path = nbdkit_absolute_path(value);
		if (!status_path)
			return -1;
	} else {
		nbdkit_error("dmio: unknown parameter '%s' (see nbdkit dmio --help)", key);
		return -1;
	}
	return 0;
}

/* Runs before nbdkit forks: everything that can be wrong is found here,
 * and nothing is written to any leg or log. */
static int dmio_config_complete(void)
{
	if (cfg.nlegs == 0) {
		nbdkit_error("dmio: no leg: give leg=PATH (1 to %d times)", MIRROR_MAX_LEGS);
		return -1;
	}
	if (cfg.quorum > cfg.nlegs) {
		nbdkit_error("dmio: quorum=%u: there are only %u legs", cfg.quorum, cfg.nlegs);
		return -1;
	}
	(void)quorum_set;
	for (unsigned L = cfg.nlegs; L < MIRROR_MAX_LEGS; L++)
		if (fault_specs[L]) {
			nbdkit_error("dmio: fault=%u:...: there are only %u legs", L, cfg.nlegs);
			return -1;
		}
	for (unsigned L = 0; L < cfg.nlegs; L++)
		cfg.faults[L] = fault_specs[L];
	cfg.log_path = log_path;
	if (log_path && dir_exists("log", log_path))
		return -1;
	if (status_path && dir_exists("status", status_path))
		return -1;
	/* With no log, or a new one, nothing says the legs are in sync: the
	 * first leg is copied to the others (in the background). */
	struct stat st;
	cfg.initial_sync = cfg.nlegs > 1 && (!log_path || stat(log_path, &st) != 0 || st.st_size == 0);
	if (mirror_validate(&cfg) != 0) {
		nbdkit_error("dmio: %s", mirror_last_error());
		return -1;
	}
	return 0;
}

static void dmio_dump_plugin(void)
{
	printf("dmio_engine=libdmio\n");
	printf("dmio_max_legs=%d\n", MIRROR_MAX_LEGS);
	printf("dmio_parameters=leg,timeout,read-timeout,quorum,fail-after,log,region-size,resync-rate,status,"
	       "fault,fault-file\n");
	const char *h = PARAMS_HELP;
	while (*h) {
		const char *nl = strchr(h, '\n');
		size_t n = nl ? (size_t)(nl - h) : strlen(h);
		printf("dmio_help=%.*s\n", (int)n, h);
		h += n + (nl ? 1 : 0);
	}
}

/* ---- lifetime ---------------------------------------------------------------- */

static void on_event(void *ctx, const char *msg)
{
	(void)ctx;
	nbdkit_debug("dmio: %s", msg);
}

static void write_status(void)
{
	if (!status_path)
		return;
	int rc = status_write_json(mir, status_path);
	if (rc)
		nbdkit_debug("dmio: status=%s: %s", status_path, strerror(-rc));
}

/* Applies the fault file when it changed (see fault-file= in the help). */
static void apply_fault_file(void)
{
	struct stat st;
	if (!fault_path || stat(fault_path, &st) != 0)
		return;
	if (st.st_mtim.tv_sec == fault_mtime.tv_sec && st.st_mtim.tv_nsec == fault_mtime.tv_nsec)
		return;
	FILE *f = fopen(fault_path, "r");
	if (!f)
		return;
	fault_mtime = st.st_mtim;
	char *spec[MIRROR_MAX_LEGS] = { 0 };
	char line[512];
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = 0;
		char *colon = strchr(line, ':');
		if (!colon || line[0] == '#')
			continue;
		*colon = 0;
		uint64_t leg;
		if (parse_num("fault-file", line, 0, cfg.nlegs - 1, &leg) == 0) {
			free(spec[leg]);
			spec[leg] = strdup(colon + 1);
		}
	}
	fclose(f);
	for (unsigned L = 0; L < cfg.nlegs; L++) {
		int rc = mirror_set_faults(mir, L, spec[L] ? spec[L] : "");
		nbdkit_debug("dmio: fault-file: leg %u faults '%s'%s", L, spec[L] ? spec[L] : "",
			     rc ? " REFUSED" : "");
		free(spec[L]);
	}
}

static void *status_main(void *arg)
{
	(void)arg;
	double next_status = 0;
	pthread_mutex_lock(&status_lock);
	while (!status_stop) {
		pthread_mutex_unlock(&status_lock);
		apply_fault_file();
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		double t = (double)now.tv_sec * 1e3 + (double)now.tv_nsec / 1e6;
		if (t >= next_status) {
			next_status = t + STATUS_PERIOD_MS;
			char line[1024];
			status_summary(mir, line, sizeof(line));
			nbdkit_debug("%s", line);
			write_status();
		}
		pthread_mutex_lock(&status_lock);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		long long ns = ts.tv_nsec + TICK_MS * 1000000LL;
		ts.tv_sec += (time_t)(ns / 1000000000LL);
		ts.tv_nsec = (long)(ns % 1000000000LL);
		while (!status_stop && pthread_cond_timedwait(&status_cond, &status_lock, &ts) == 0)
			;
	}
	pthread_mutex_unlock(&status_lock);
	return NULL;
}

/* Threads exist only after the fork: the mirror is opened here. */
static int dmio_after_fork(void)
{
	cfg.event = on_event; /* nbdkit_debug: shown with nbdkit --verbose */
	int rc = mirror_open(&cfg, &mir);
	if (rc) {
		nbdkit_error("dmio: %s", mirror_last_error());
		return -1;
	}
	chunk_bytes = (uint64_t)mirror_region_size(mir) * 32;
	if (chunk_bytes > (4u << 20))
		chunk_bytes = (uint64_t)mirror_region_size(mir) * ((4u << 20) / mirror_region_size(mir));
	if (chunk_bytes < mirror_region_size(mir))
		chunk_bytes = mirror_region_size(mir);
	zeroes = calloc(1, chunk_bytes);
	if (!zeroes) {
		nbdkit_error("dmio: out of memory");
		return -1;
	}
	rc = pthread_create(&status_thread, NULL, status_main, NULL);
	if (rc) {
		nbdkit_error("dmio: pthread_create: %s", strerror(rc));
		return -1;
	}
	status_running = 1;
	return 0;
}

static void dmio_cleanup(void)
{
	if (status_running) {
		pthread_mutex_lock(&status_lock);
		status_stop = 1;
		pthread_cond_broadcast(&status_cond);
		pthread_mutex_unlock(&status_lock);
		pthread_join(status_thread, NULL);
		status_running = 0;
	}
	if (mir) {
		write_status(); /* the last state, for whoever reads the file after the exit */
		mirror_close(mir);
		mir = NULL;
	}
}

static void dmio_unload(void)
{
	dmio_cleanup();
	for (unsigned L = 0; L < MIRROR_MAX_LEGS; L++)
		free(leg_paths[L]);
	for (unsigned L = 0; L < MIRROR_MAX_LEGS; L++)
		free(fault_specs[L]);
	free(log_path);
	free(status_path);
	free(fault_path);
	free(zeroes);
}

static void *dmio_open(int readonly)
{
	(void)readonly;
	return &mir; /* one volume for every connection */
}

static int64_t dmio_get_size(void *h)
{
	(void)h;
	return (int64_t)mirror_size(mir);
}

static int dmio_block_size(void *h, uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
	(void)h;
	/* Minimum 1, not BLOCK: any byte range is served (read-modify-write
	 * below). libnbd clients (nbdfuse, nbdcopy) refuse requests that are
	 * not multiples of an advertised minimum with EINVAL before sending
	 * them, so a minimum of 4096 fails the 512-byte and 1 KiB direct IO a
	 * loop device over nbdfuse passes on (mkfs.ext4, mount). */
	*minimum = 1;
	*preferred = BLOCK;
	*maximum = MAX_REQUEST;
	return 0;
}

static int one(void *h)
{
	(void)h;
	return 1;
}

static int zero_(void *h)
{
	(void)h;
	return 0;
}

static int dmio_can_fua(void *h)
{
	(void)h;
	return NBDKIT_FUA_NATIVE;
}

/* ---- IO ------------------------------------------------------------------------ */

static int fail(int rc, const char *what, uint64_t off, uint64_t len)
{
	nbdkit_error("dmio: %s of %" PRIu64 " bytes at %" PRIu64 ": %s", what, len, off, strerror(-rc));
	nbdkit_set_error(rc == -ETIMEDOUT ? EIO : -rc); /* NBD has no ETIMEDOUT: it would go out as EINVAL */
	return -1;
}

static int dmio_pread(void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
	(void)h;
	(void)flags;
	uint64_t a0 = offset / BLOCK * BLOCK, a1 = (offset + count + BLOCK - 1) / BLOCK * BLOCK;
	if (a0 == offset && a1 == offset + count) {
		int rc = mirror_read(mir, offset, buf, count);
		return rc ? fail(rc, "read", offset, count) : 0;
	}
	/* Unaligned: read the covering blocks, copy the part asked for. */
	unsigned char *tmp = malloc(a1 - a0);
	if (!tmp)
		return fail(-ENOMEM, "read", offset, count);
	int rc = mirror_read(mir, a0, tmp, a1 - a0);
	if (!rc)
		memcpy(buf, tmp + (offset - a0), count);
	free(tmp);
	return rc ? fail(rc, "read", offset, count) : 0;
}

/* Writes whole blocks [a0, a0 + len) from data, in calls of at most
 * chunk_bytes that do not cross more regions than mirror_write takes. */
static int write_blocks(uint64_t a0, const unsigned char *data, uint64_t len, unsigned mflags)
{
	uint64_t rs = mirror_region_size(mir);
	while (len) {
		uint64_t end = (a0 / rs) * rs + chunk_bytes; /* region-aligned piece end */
		uint64_t n = end - a0 < len ? end - a0 : len;
		int rc = mirror_write_flags(mir, a0, data, n, mflags);
		if (rc)
			return rc;
		a0 += n;
		data += n;
		len -= n;
	}
	return 0;
}

/* Writes [off, off + count) from src (NULL: zeroes). Each piece of at most
 * chunk_bytes locks the blocks it covers; a partial first or last block is
 * read, merged and written whole (read-modify-write) under that lock. */
static int write_range(uint64_t off, uint64_t count, const unsigned char *src, unsigned mflags)
{
	uint64_t end = off + count;
	while (off < end) {
		uint64_t a0 = off / BLOCK * BLOCK;
		uint64_t lim = a0 + chunk_bytes < end ? a0 + chunk_bytes : end;
		uint64_t a1 = (lim + BLOCK - 1) / BLOCK * BLOCK;
		struct rangelock_entry e;
		int rc = 0;
		rangelock_lock(&locks, &e, a0, a1);
		if (off == a0 && lim == a1) {
			rc = write_blocks(a0, src ? src : zeroes, a1 - a0, mflags);
		} else {
			unsigned char *tmp = malloc(a1 - a0);
			if (!tmp)
				rc = -ENOMEM;
			if (!rc && off != a0)
				rc = mirror_read(mir, a0, tmp, BLOCK);
			if (!rc && lim != a1 && (a1 - BLOCK != a0 || off == a0))
				rc = mirror_read(mir, a1 - BLOCK, tmp + (a1 - BLOCK - a0), BLOCK);
			if (!rc) {
				if (src)
					memcpy(tmp + (off - a0), src, lim - off);
				else
					memset(tmp + (off - a0), 0, lim - off);
				rc = write_blocks(a0, tmp, a1 - a0, mflags);
			}
			free(tmp);
		}
		rangelock_unlock(&locks, &e);
		if (rc)
			return rc;
		if (src)
			src += lim - off;
		off = lim;
	}
	return 0;
}

static int dmio_pwrite(void *h, const void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
	(void)h;
	int rc = write_range(offset, count, buf, flags & NBDKIT_FLAG_FUA ? MIRROR_FUA : 0);
	return rc ? fail(rc, "write", offset, count) : 0;
}

static int dmio_zero(void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
	(void)h;
	if (flags & NBDKIT_FLAG_FAST_ZERO) {
		nbdkit_set_error(ENOTSUP); /* zeroes are written, never fast */
		return -1;
	}
	int rc = write_range(offset, count, NULL, flags & NBDKIT_FLAG_FUA ? MIRROR_FUA : 0);
	return rc ? fail(rc, "zero", offset, count) : 0;
}

/* Trim is advisory in NBD: the plugin keeps the data (a documented no-op),
 * so the legs stay identical and reads return what was there. */
static int dmio_trim(void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
	(void)h;
	(void)count;
	(void)offset;
	(void)flags;
	return 0;
}

static int dmio_flush(void *h, uint32_t flags)
{
	(void)h;
	(void)flags;
	int rc = mirror_flush(mir);
	return rc ? fail(rc, "flush", 0, 0) : 0;
}

static struct nbdkit_plugin plugin = {
	.name = "dmio",
	.longname = "libdmio mirror",
	.version = "1.0",
	.description = "An N-way mirror over libdmio: writes acknowledged at a deadline while a leg hangs",
	.load = dmio_load,
	.unload = dmio_unload,
	.config = dmio_config,
	.config_complete = dmio_config_complete,
	.config_help = PARAMS_HELP,
	.magic_config_key = "leg",
	.dump_plugin = dmio_dump_plugin,
	.after_fork = dmio_after_fork,
	.cleanup = dmio_cleanup,
	.open = dmio_open,
	.get_size = dmio_get_size,
	.block_size = dmio_block_size,
	.can_write = one,
	.can_flush = one,
	.can_trim = one,
	.can_zero = one,
	.can_fast_zero = zero_,
	.can_fua = dmio_can_fua,
	.can_multi_conn = one,
	.is_rotational = zero_,
	.pread = dmio_pread,
	.pwrite = dmio_pwrite,
	.zero = dmio_zero,
	.trim = dmio_trim,
	.flush = dmio_flush,
	.errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN(plugin)
