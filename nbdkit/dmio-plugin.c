/*
 * nbdkit-dmio-plugin: serves a libdmio mirror (examples/mirror) as an NBD
 * export. Byte N of the export is byte N of every leg. Writes are
 * acknowledged when every leg has them, or at the deadline when `quorum`
 * legs do; a late leg is marked dirty and resynced in the background.
 *
 *   nbdkit dmio leg=A leg=B [timeout=MS] [quorum=N] [log=PATH] [status=PATH] ...
 *
 * Thread model PARALLEL: the mirror is thread-safe; a write holds the
 * mirror's regions it covers until it is acknowledged, so a read-modify-write
 * of a partial block never races with another write to it (mirror_pwrite).
 * See nbdkit/README.md.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include "plugin.h"

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

#include "status.h"

#define STATUS_PERIOD_MS 1000
#define TICK_MS 100                 /* how often the fault file is looked at */

static struct mirror *mir;
static struct timespec fault_mtime;
static pthread_t status_thread;
static int status_running;
static pthread_mutex_t status_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t status_cond = PTHREAD_COND_INITIALIZER;
static int status_stop;

/* ---- lifetime ---------------------------------------------------------------- */

static void on_event(void *ctx, const char *msg)
{
	(void)ctx;
	nbdkit_debug("dmio: %s", msg);
}

static void write_status(void)
{
	if (!dmio_status_path)
		return;
	int rc = status_write_json(mir, dmio_status_path);
	if (rc)
		nbdkit_debug("dmio: status=%s: %s", dmio_status_path, strerror(-rc));
}

/* Applies the fault file when it changed (see fault-file= in the help). */
static void apply_fault_file(void)
{
	struct stat st;
	if (!dmio_fault_path || stat(dmio_fault_path, &st) != 0)
		return;
	if (st.st_mtim.tv_sec == fault_mtime.tv_sec && st.st_mtim.tv_nsec == fault_mtime.tv_nsec)
		return;
	FILE *f = fopen(dmio_fault_path, "r");
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
		if (dmio_parse_num("fault-file", line, 0, dmio_cfg.nlegs - 1, &leg) == 0) {
			free(spec[leg]);
			spec[leg] = strdup(colon + 1);
		}
	}
	fclose(f);
	for (unsigned L = 0; L < dmio_cfg.nlegs; L++) {
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
	dmio_cfg.event = on_event; /* nbdkit_debug: shown with nbdkit --verbose */
	int rc = mirror_open(&dmio_cfg, &mir);
	if (rc) {
		nbdkit_error("dmio: %s", mirror_last_error());
		return -1;
	}
	if (dmio_io_init(mir) != 0) {
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
		dmio_io_fini();
		mirror_close(mir);
		mir = NULL;
	}
}

static void dmio_unload(void)
{
	dmio_cleanup();
	dmio_params_free();
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

static struct nbdkit_plugin plugin = {
	.name = "dmio",
	.longname = "libdmio mirror",
	.version = "1.0",
	.description = "An N-way mirror over libdmio: writes acknowledged at a deadline while a leg hangs",
	.load = dmio_load,
	.unload = dmio_unload,
	.config = dmio_config,
	.config_complete = dmio_config_complete,
	.config_help = dmio_params_help,
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
