/*
 * dmio-mirror: command line front end of the reference mirror (mirror.h).
 *
 *   dmio-mirror [OPTIONS] COMMAND LEG...
 *
 * See usage() for the commands and options.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "block.h"
#include "dmio-mirror.h"
#include "mirror.h"

#include <errno.h>
#include <fcntl.h>
#include <ctype.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


static double t_start;
static int verbose;

double cli_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void cli_sleep_ms(double ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)((ms - (double)(time_t)(ms / 1000) * 1000) * 1e6) };
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static void on_event(void *ctx, const char *msg)
{
	(void)ctx;
	fprintf(stderr, "[%8.1f ms] %s\n", cli_now_ms() - t_start, msg);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dmio-mirror [OPTIONS] COMMAND LEG...\n"
		"\n"
		"An N-way mirror over the legs (block devices or files) with libdmio: every write\n"
		"goes to all legs with a deadline, is acknowledged when all legs are OK or, at the\n"
		"deadline, when a quorum is; late legs are marked dirty and resynced.\n"
		"\n"
		"Commands:\n"
		"  status     open the mirror (loading the log), print its status\n"
		"  resync     copy dirty regions until every leg is in sync, printing progress;\n"
		"             exits 0 when in sync, 1 after --seconds (default 600)\n"
		"  workload   random block writes for --seconds (each block holds a sequence\n"
		"             number); acked writes go to --ack-log as \"SEQ OFFSET\" lines\n"
		"  check      every leg holds, for each offset of --ack-log, the last acked\n"
		"             write or a newer one (intact); exits 1 otherwise\n"
		"  shell      commands from stdin, one per line (see below); exits 1 if any\n"
		"             command failed, 0 otherwise\n"
		"\n"
		"Options (numbers are whole decimal numbers, no units or suffixes):\n"
		"  -b, --block-size BYTES    IO unit (4096)\n"
		"  -r, --region-size BYTES   dirty-tracking unit (65536)\n"
		"  -t, --timeout MS|none     write deadline, > 0 (100); 'none': writes wait\n"
		"                            for every leg, a hung leg stalls the mirror\n"
		"  -R, --read-timeout MS|none  per leg before a read moves on, > 0 (100)\n"
		"  -q, --quorum N            legs OK needed to acknowledge a write (1)\n"
		"  -f, --fail-after MS       fail a leg whose IO is late this long, > 0 (5000);\n"
		"                            also how long a write waits past its deadline\n"
		"                            for its quorum before it fails with EIO\n"
		"  -s, --resync-rate KIB/S   resync throttle, 0 = none (16384)\n"
		"  -l, --log PATH            persisted dirty-region log (created if missing)\n"
		"      --sync                with a new log: copy leg 0 to the others first\n"
		"  -F, --fault LEG:SPEC      inject faults on leg LEG (0-based), e.g.\n"
		"                            '1:delay write=200ms', '1:hang writes'\n"
		"      --seconds S           duration of workload / limit of resync\n"
		"      --span BYTES          workload: write within the first BYTES only\n"
		"      --seed N              workload: random seed (1)\n"
		"      --ack-log FILE        workload / check: the acked writes\n"
		"  -v, --verbose             print the mirror's events on stderr\n"
		"  -h, --help\n"
		"\n"
		"A write is acknowledged when every leg is OK, or at the deadline when at\n"
		"least QUORUM legs are OK (the others are marked dirty and resynced). With\n"
		"fewer, it waits for late completions and is acknowledged as soon as QUORUM\n"
		"legs are OK; it fails with EIO only when the quorum can no longer be\n"
		"reached (legs failed) or after --fail-after.\n"
		"\n"
		"Shell commands (OFF and LEN in bytes, multiples of the block size; MS in\n"
		"milliseconds; one reply line each, except status):\n"
		"  write OFF LEN SEED   writes a pattern made from SEED -> 'write OFF LEN: acked (T ms)'\n"
		"                       or 'write OFF LEN: ERROR <strerror> (T ms)'\n"
		"  read OFF LEN [SEED]  reads; with SEED compares with the pattern -> 'read OFF LEN:\n"
		"                       OK|matches seed (T ms)', or 'ERROR DIFFERS from seed' / 'ERROR <strerror>'\n"
		"  fault LEG SPEC       replaces leg LEG's injected faults ('' clears) -> 'fault LEG 'SPEC': set'\n"
		"  status               the status lines, then a line 'end status'\n"
		"  wait-sync MS         waits up to MS for every leg in sync -> 'wait-sync: in sync (T ms)'\n"
		"                       or 'wait-sync: ERROR NOT in sync (T ms)'\n"
		"  pause | resume       pauses / resumes the resync -> 'resync paused' / 'resync resumed'\n"
		"  sleep MS             sleeps -> 'slept MS ms'\n"
		"  quit                 closes the mirror and exits (as does end of input)\n"
		"Lines starting with # and empty lines are ignored. A failed command's reply\n"
		"contains 'ERROR'; an unknown or malformed one gets 'ERROR unknown command: ...'.\n");
}

/* ---- strict numbers ---- */

/* Parses a whole decimal number in [min, max]; no sign, suffix or spaces. */
int cli_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	if (!s || !isdigit((unsigned char)s[0]))
		return -1;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* Option values: prints what is wrong with the option and exits 2. */
static uint64_t opt_u64(const char *name, const char *s, uint64_t min, uint64_t max, const char *unit)
{
	uint64_t v;
	if (cli_parse_u64(s, min, max, &v)) {
		fprintf(stderr, "dmio-mirror: %s: '%s' is not a whole number of %s from %llu to %llu\n", name, s,
			unit, (unsigned long long)min, (unsigned long long)max);
		exit(2);
	}
	return v;
}

/* A timeout: MS > 0, or the word 'none' (returned as 0: no deadline). */
static unsigned opt_timeout(const char *name, const char *s)
{
	if (!strcmp(s, "none"))
		return 0;
	uint64_t v;
	if (cli_parse_u64(s, 1, UINT32_MAX, &v)) {
		fprintf(stderr,
			"dmio-mirror: %s: '%s' is not a timeout: give whole milliseconds > 0 (no unit), "
			"or 'none' for no deadline\n",
			name, s);
		exit(2);
	}
	return (unsigned)v;
}

void cli_fill_seeded(unsigned char *b, size_t len, uint64_t seed, uint64_t off)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = mix64(seed * 0x9e3779b97f4a7c15ULL + off + i);
		memcpy(b + i, &v, len - i < 8 ? len - i : 8);
	}
}

/* ---- commands ---- */

static int cmd_resync(struct mirror *m, double seconds)
{
	struct mirror_status st;
	mirror_status(m, &st);
	uint64_t total = st.resync_pending, last = UINT64_MAX;
	double t0 = cli_now_ms();
	printf("resync: %" PRIu64 " dirty (leg, region) pairs to copy\n", total);
	for (;;) {
		int done = mirror_wait_in_sync(m, 200);
		mirror_status(m, &st);
		if (st.resync_pending != last || done) {
			printf("resync: %" PRIu64 " copied, %" PRIu64 " left (%.0f ms)\n", st.resynced,
			       st.resync_pending, cli_now_ms() - t0);
			fflush(stdout);
			last = st.resync_pending;
		}
		if (done) {
			printf("resync: all legs in sync, %" PRIu64 " region(s) copied\n", st.resynced);
			return 0;
		}
		if (cli_now_ms() - t0 > seconds * 1000) {
			printf("resync: not in sync after %.0f s\n", seconds);
			mirror_status_print(m, stdout);
			return 1;
		}
	}
}

static int cmd_workload(struct mirror *m, double seconds, uint64_t span, uint64_t seed, const char *acklog)
{
	unsigned bs = mirror_block_size(m);
	uint64_t nblocks = (span && span < mirror_size(m) ? span : mirror_size(m)) / bs;
	unsigned char *b = malloc(bs);
	FILE *ack = acklog ? fopen(acklog, "a") : NULL;
	if (!b || (acklog && !ack)) {
		perror(acklog ? acklog : "malloc");
		return 1;
	}
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	uint64_t base = (uint64_t)rt.tv_sec * 1000000ULL + (uint64_t)rt.tv_nsec / 1000;
	uint64_t rng = seed ? seed : 1, n = 0, fails = 0;
	double t0 = cli_now_ms(), worst = 0;
	while (cli_now_ms() - t0 < seconds * 1000) {
		rng = mix64(rng + 0x9e3779b97f4a7c15ULL);
		uint64_t off = (rng % nblocks) * bs, seq = base + n;
		fill_block(b, bs, seq, off);
		double t = cli_now_ms();
		int rc = mirror_write(m, off, b, bs);
		double took = cli_now_ms() - t;
		if (took > worst)
			worst = took;
		n++;
		if (rc) {
			fails++;
			fprintf(stderr, "workload: write at %" PRIu64 " failed: %s\n", off, strerror(-rc));
			continue;
		}
		if (ack) {
			fprintf(ack, "%" PRIu64 " %" PRIu64 "\n", seq, off);
			fflush(ack);
		}
	}
	if (ack)
		fclose(ack);
	free(b);
	printf("workload: %" PRIu64 " writes, %" PRIu64 " failed, slowest ack %.1f ms\n", n, fails, worst);
	mirror_status_print(m, stdout);
	return fails ? 1 : 0;
}

/* One block of a leg, read with a SYNC request (legs may be NBD URIs). */
static int leg_read(struct dm_io_client *cl, struct block_device *b, uint64_t off, void *buf,
		    unsigned bs)
{
	struct dm_io_region r = { b, off / 512, bs / 512 };
	struct dm_io_control c = { .memory = { .type = DM_IO_VM, .ptr.vma = buf },
				   .rw = DM_IO_READ | DM_IO_SYNC,
				   .client = cl };
	return dm_io(&c, 1, &r, NULL);
}

/* Reads the legs (files, devices or NBD exports) read-only; the mirror is
 * not opened (no resync runs). */
static int cmd_check(unsigned bs, unsigned nlegs, char **legs, const char *acklog)
{
	uint64_t size = UINT64_MAX;
	struct block_device *bd[MIRROR_MAX_LEGS] = { 0 };
	struct dm_io_client *cl = NULL;
	int rc = dm_io_client_create(1, 1, bs, &cl);
	if (rc) {
		fprintf(stderr, "check: dm_io_client_create: %s\n", strerror(-rc));
		return 1;
	}
	for (unsigned L = 0; L < nlegs; L++) {
		rc = dm_io_bdev_open(legs[L], DM_IO_BDEV_RDONLY, &bd[L]);
		if (rc) {
			fprintf(stderr, "%s: %s (%s)\n", legs[L], strerror(-rc), dm_io_last_error());
			return 1;
		}
		uint64_t end = dm_io_bdev_sectors(bd[L]) * 512;
		if (end < size)
			size = end;
	}
	uint64_t nblocks = size / bs;
	uint64_t *last = calloc(nblocks ? nblocks : 1, sizeof(*last));
	unsigned char *b = malloc(bs);
	FILE *f = acklog ? fopen(acklog, "r") : NULL;
	if (!last || !b || !f) {
		fprintf(stderr, "check: needs --ack-log (%s)\n", acklog ? strerror(errno) : "missing");
		return 1;
	}
	uint64_t seq, off, acks = 0, blocks = 0, bad = 0;
	while (fscanf(f, "%" SCNu64 " %" SCNu64, &seq, &off) == 2)
		if (off / bs < nblocks && off % bs == 0) {
			last[off / bs] = seq; /* later lines are later acks */
			acks++;
		}
	fclose(f);
	for (unsigned L = 0; L < nlegs; L++) {
		for (uint64_t k = 0; k < nblocks; k++) {
			if (!last[k])
				continue;
			if (L == 0)
				blocks++;
			rc = leg_read(cl, bd[L], k * bs, b, bs);
			if (rc) {
				if (bad < 10)
					printf("check: %s offset %" PRIu64 ": read failed: %s\n", legs[L],
					       k * bs, strerror(-rc));
				bad++;
				continue;
			}
			uint64_t s = block_seq(b, bs, k * bs);
			if (s < last[k]) {
				if (bad < 10)
					printf("check: %s offset %" PRIu64 ": %s (last acked seq %" PRIu64 ")\n",
					       legs[L], k * bs, s ? "older data" : "not an intact block", last[k]);
				bad++;
			}
		}
	}
	printf("check: %" PRIu64 " acked writes, %" PRIu64 " blocks x %u legs: %" PRIu64 " bad\n", acks, blocks,
	       nlegs, bad);
	dm_io_client_destroy(cl);
	for (unsigned L = 0; L < nlegs; L++)
		dm_io_bdev_close(bd[L]);
	free(last);
	free(b);
	return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	struct mirror_config cfg;
	const char *acklog = NULL;
	double seconds = -1;
	uint64_t span = 0, seed = 1;
	char *faults[MIRROR_MAX_LEGS] = { 0 };
	enum { O_SYNC_ = 1000, O_SECONDS, O_SPAN, O_SEED, O_ACKLOG };
	static const struct option opts[] = {
		{ "block-size", required_argument, 0, 'b' },   { "region-size", required_argument, 0, 'r' },
		{ "timeout", required_argument, 0, 't' },      { "read-timeout", required_argument, 0, 'R' },
		{ "quorum", required_argument, 0, 'q' },       { "fail-after", required_argument, 0, 'f' },
		{ "resync-rate", required_argument, 0, 's' },  { "log", required_argument, 0, 'l' },
		{ "fault", required_argument, 0, 'F' },        { "sync", no_argument, 0, O_SYNC_ },
		{ "seconds", required_argument, 0, O_SECONDS }, { "span", required_argument, 0, O_SPAN },
		{ "seed", required_argument, 0, O_SEED },      { "ack-log", required_argument, 0, O_ACKLOG },
		{ "verbose", no_argument, 0, 'v' },            { "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	t_start = cli_now_ms();
	mirror_config_init(&cfg);
	int o;
	while ((o = getopt_long(argc, argv, "b:r:t:R:q:f:s:l:F:vh", opts, NULL)) != -1) {
		switch (o) {
		case 'b': cfg.block_size = (unsigned)opt_u64("--block-size", optarg, 512, 1u << 30, "bytes"); break;
		case 'r': cfg.region_size = (unsigned)opt_u64("--region-size", optarg, 4096, 1u << 30, "bytes"); break;
		case 't': cfg.write_timeout_ms = opt_timeout("--timeout", optarg); break;
		case 'R': cfg.read_timeout_ms = opt_timeout("--read-timeout", optarg); break;
		case 'q': cfg.quorum = (unsigned)opt_u64("--quorum", optarg, 1, MIRROR_MAX_LEGS, "legs"); break;
		case 'f': cfg.fail_after_ms = (unsigned)opt_u64("--fail-after", optarg, 1, UINT32_MAX, "ms"); break;
		case 's': cfg.resync_kbps = (unsigned)opt_u64("--resync-rate", optarg, 0, UINT32_MAX, "KiB/s"); break;
		case 'l': cfg.log_path = optarg; break;
		case 'F': {
			char *colon = strchr(optarg, ':');
			uint64_t leg = 0;
			if (colon)
				*colon = 0;
			if (!colon || cli_parse_u64(optarg, 0, MIRROR_MAX_LEGS - 1, &leg)) {
				fprintf(stderr, "dmio-mirror: --fault wants LEG:SPEC with LEG from 0 to %d\n",
					MIRROR_MAX_LEGS - 1);
				return 2;
			}
			faults[leg] = colon + 1;
			break;
		}
		case O_SYNC_: cfg.initial_sync = 1; break;
		case O_SECONDS: seconds = (double)opt_u64("--seconds", optarg, 1, 86400 * 365, "seconds"); break;
		case O_SPAN: span = opt_u64("--span", optarg, 1, UINT64_MAX, "bytes"); break;
		case O_SEED: seed = opt_u64("--seed", optarg, 0, UINT64_MAX, "(any)"); break;
		case O_ACKLOG: acklog = optarg; break;
		case 'v': verbose = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (argc - optind < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[optind++];
	cfg.nlegs = (unsigned)(argc - optind);
	if (cfg.nlegs > MIRROR_MAX_LEGS) {
		fprintf(stderr, "dmio-mirror: at most %d legs\n", MIRROR_MAX_LEGS);
		return 2;
	}
	for (unsigned L = cfg.nlegs; L < MIRROR_MAX_LEGS; L++)
		if (faults[L]) {
			fprintf(stderr, "dmio-mirror: --fault %u: there are only %u legs\n", L, cfg.nlegs);
			return 2;
		}
	if (cfg.quorum > cfg.nlegs) {
		fprintf(stderr, "dmio-mirror: --quorum %u: there are only %u legs\n", cfg.quorum, cfg.nlegs);
		return 2;
	}
	for (unsigned L = 0; L < cfg.nlegs; L++) {
		cfg.legs[L] = argv[optind + (int)L];
		cfg.faults[L] = faults[L];
	}
	if (verbose) {
		cfg.event = on_event;
		cfg.event_ctx = NULL;
	}
	if (strcmp(cmd, "status") && strcmp(cmd, "resync") && strcmp(cmd, "workload") && strcmp(cmd, "check") &&
	    strcmp(cmd, "shell")) {
		fprintf(stderr, "dmio-mirror: unknown command '%s'\n", cmd);
		usage(stderr);
		return 2;
	}
	/* Output may go to a pipe read by a test while we run. */
	setvbuf(stdout, NULL, _IOLBF, 0);

	/* status only looks: no resync while it runs. */
	cfg.resync_paused = !strcmp(cmd, "status");
	if (!strcmp(cmd, "check"))
		return cmd_check(cfg.block_size, cfg.nlegs, argv + optind, acklog);

	struct mirror *m;
	int rc = mirror_open(&cfg, &m);
	if (rc) {
		fprintf(stderr, "dmio-mirror: %s\n", mirror_last_error());
		return 1;
	}
	int ret = 0;
	if (!strcmp(cmd, "status"))
		mirror_status_print(m, stdout);
	else if (!strcmp(cmd, "resync"))
		ret = cmd_resync(m, seconds > 0 ? seconds : 600);
	else if (!strcmp(cmd, "workload"))
		ret = cmd_workload(m, seconds > 0 ? seconds : 5, span, seed, acklog);
	else
		ret = cli_shell(m);
	mirror_close(m);
	return ret;
}
