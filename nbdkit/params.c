/* params.c - the plugin's parameters: parsing, the checks that run before
 * nbdkit forks (nothing is written when they fail), --help and --dump-plugin. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
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

struct mirror_config dmio_cfg;
char *dmio_status_path, *dmio_fault_path;
static char *leg_paths[MIRROR_MAX_LEGS];
static char *log_path;
static char *fault_specs[MIRROR_MAX_LEGS];

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
int dmio_parse_num(const char *key, const char *value, uint64_t min, uint64_t max, uint64_t *out)
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
	if (mirror_parent_dir_writable(path, dir, sizeof(dir)) != 0) {
		nbdkit_error("dmio: %s=%s: directory %s does not exist or is not writable", key, path, dir);
		return -1;
	}
	return 0;
}

void dmio_load(void)
{
	mirror_config_init(&dmio_cfg);
	dmio_cfg.block_size = BLOCK;
}

int dmio_config(const char *key, const char *value)
{
	uint64_t v;
	if (!strcmp(key, "leg")) {
		if (dmio_cfg.nlegs == MIRROR_MAX_LEGS) {
			nbdkit_error("dmio: leg=%s: at most %d legs", value, MIRROR_MAX_LEGS);
			return -1;
		}
		char *p = nbdkit_absolute_path(value);
		if (!p)
			return -1;
		leg_paths[dmio_cfg.nlegs] = p;
		dmio_cfg.legs[dmio_cfg.nlegs] = p;
		dmio_cfg.nlegs++;
	} else if (!strcmp(key, "timeout")) {
		if (dmio_parse_num(key, value, 1, UINT32_MAX, &v))
			return -1;
		dmio_cfg.write_timeout_ms = (unsigned)v;
	} else if (!strcmp(key, "read-timeout")) {
		if (dmio_parse_num(key, value, 1, UINT32_MAX, &v))
			return -1;
		dmio_cfg.read_timeout_ms = (unsigned)v;
	} else if (!strcmp(key, "quorum")) {
		if (dmio_parse_num(key, value, 1, MIRROR_MAX_LEGS, &v))
			return -1;
		dmio_cfg.quorum = (unsigned)v;
	} else if (!strcmp(key, "fail-after")) {
		if (dmio_parse_num(key, value, 1, UINT32_MAX, &v))
			return -1;
		dmio_cfg.fail_after_ms = (unsigned)v;
	} else if (!strcmp(key, "region-size")) {
		int64_t s = nbdkit_parse_size(value);
		if (s < 0)
			return -1;
		if (s < 4096 || s % 4096 || s > (1 << 30)) {
			emsg_num(key, value, "must be a multiple of 4096 from 4096 to 1G");
			return -1;
		}
		dmio_cfg.region_size = (unsigned)s;
	} else if (!strcmp(key, "resync-rate")) {
		if (dmio_parse_num(key, value, 0, UINT32_MAX, &v))
			return -1;
		dmio_cfg.resync_kbps = (unsigned)v;
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
		if (dmio_parse_num(key, num, 0, MIRROR_MAX_LEGS - 1, &leg))
			return -1;
		free(fault_specs[leg]);
		fault_specs[leg] = strdup(colon + 1);
		if (!fault_specs[leg])
			return -1;
	} else if (!strcmp(key, "fault-file")) {
		free(dmio_fault_path);
		dmio_fault_path = nbdkit_absolute_path(value);
		if (!dmio_fault_path)
			return -1;
	} else if (!strcmp(key, "status")) {
		free(dmio_status_path);
		dmio_status_path = nbdkit_absolute_path(value);
		if (!dmio_status_path)
			return -1;
	} else {
		nbdkit_error("dmio: unknown parameter '%s' (see nbdkit dmio --help)", key);
		return -1;
	}
	return 0;
}

/* Runs before nbdkit forks: everything that can be wrong is found here,
 * and nothing is written to any leg or log. */
int dmio_config_complete(void)
{
	if (dmio_cfg.nlegs == 0) {
		nbdkit_error("dmio: no leg: give leg=PATH (1 to %d times)", MIRROR_MAX_LEGS);
		return -1;
	}
	if (dmio_cfg.quorum > dmio_cfg.nlegs) {
		nbdkit_error("dmio: quorum=%u: there are only %u legs", dmio_cfg.quorum, dmio_cfg.nlegs);
		return -1;
	}
	for (unsigned L = dmio_cfg.nlegs; L < MIRROR_MAX_LEGS; L++)
		if (fault_specs[L]) {
			nbdkit_error("dmio: fault=%u:...: there are only %u legs", L, dmio_cfg.nlegs);
			return -1;
		}
	for (unsigned L = 0; L < dmio_cfg.nlegs; L++)
		dmio_cfg.faults[L] = fault_specs[L];
	dmio_cfg.log_path = log_path;
	if (log_path && dir_exists("log", log_path))
		return -1;
	if (dmio_status_path && dir_exists("status", dmio_status_path))
		return -1;
	/* With no log, or a new one, nothing says the legs are in sync: the
	 * first leg is copied to the others (in the background). */
	struct stat st;
	dmio_cfg.initial_sync = dmio_cfg.nlegs > 1 && (!log_path || stat(log_path, &st) != 0 || st.st_size == 0);
	if (mirror_validate(&dmio_cfg) != 0) {
		nbdkit_error("dmio: %s", mirror_last_error());
		return -1;
	}
	return 0;
}

void dmio_dump_plugin(void)
{
	printf("dmio_engine=libdmio\n");
	printf("dmio_max_legs=%d\n", MIRROR_MAX_LEGS);
	printf("dmio_parameters=leg,timeout,read-timeout,quorum,fail-after,log,region-size,resync-rate,status,"
	       "fault,fault-file\n");
	const char *h = dmio_params_help;
	while (*h) {
		const char *nl = strchr(h, '\n');
		size_t n = nl ? (size_t)(nl - h) : strlen(h);
		printf("dmio_help=%.*s\n", (int)n, h);
		h += n + (nl ? 1 : 0);
	}
}

const char dmio_params_help[] = PARAMS_HELP;

void dmio_params_free(void)
{
	for (unsigned L = 0; L < MIRROR_MAX_LEGS; L++) {
		free(leg_paths[L]);
		free(fault_specs[L]);
	}
	free(log_path);
	free(dmio_status_path);
	free(dmio_fault_path);
}
