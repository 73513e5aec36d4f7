/* dmio-bench.h - what the parts of the benchmark driver (dmio-bench.c, its
 * modes in bench-*.c) share: the options, the clock and random numbers,
 * the latency histogram, JSON output, the sleep probes and the small
 * helpers. Hot-path helpers (clock, random numbers, recording into a
 * histogram) are static inline, as they were in the single file. */
#ifndef DMIO_BENCH_H
#define DMIO_BENCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dm_io.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MAX_LEGS 8

/* ---------------------------------------------------------------- utils */

#define CHECK_RC(expr)                                                         \
	do {                                                                   \
		int rc_ = (expr);                                              \
		if (rc_ != 0)                                                  \
			die("%s returned %d (%s)", #expr, rc_, strerror(-rc_)); \
	} while (0)

static inline uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: one state per submitting context. */
static inline uint64_t rnd(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

void die(const char *fmt, ...);
void sleep_ns(uint64_t ns);
double cpu_seconds(double *user, double *sys);
long rss_kib(void);

/* ------------------------------------------------------------ histogram */

#define H_SUB_BITS 6
#define H_SUB (1u << H_SUB_BITS)      /* 64 sub-buckets per power of two */
#define H_LINEAR (2u * H_SUB)         /* values below 128 are exact */
#define H_BUCKETS (H_LINEAR + 40u * H_SUB)

struct hist {
	uint64_t count[H_BUCKETS];
	uint64_t n, min, max;
	long double sum;
};

static inline unsigned hist_index(uint64_t v)
{
	if (v < H_LINEAR)
		return (unsigned)v;
	unsigned msb = 63u - (unsigned)__builtin_clzll(v);
	unsigned shift = msb - H_SUB_BITS;
	unsigned idx = H_LINEAR + (shift - 1) * H_SUB + (unsigned)((v >> shift) - H_SUB);
	return idx < H_BUCKETS ? idx : H_BUCKETS - 1;
}

static inline void hist_record(struct hist *h, uint64_t v)
{
	h->count[hist_index(v)]++;
	h->n++;
	h->sum += v;
	if (v < h->min)
		h->min = v;
	if (v > h->max)
		h->max = v;
}

void hist_init(struct hist *h);
uint64_t hist_mid(unsigned idx);
uint64_t hist_pct(const struct hist *h, double p);

/* The machine's timer floor during a run (bench-stats.c). */
void probes_start(void);
void probes_stop(struct hist *all);

/* ----------------------------------------------------------------- JSON */

void jnum(const char *k, double v);
void jint(const char *k, uint64_t v);
void jstr(const char *k, const char *v);
void jopen(const char *k);
void jclose(void);
void jhist(const char *k, const struct hist *h);
void jstats(struct dm_io_client *cl);
void jheader(void);
void jdirect(struct block_device **dev, int n);

/* -------------------------------------------------------------- options */

struct bench_opt {
	const char *mode;
	const char *dev[MAX_LEGS];
	int ndev;
	const char *rw;
	unsigned bs, qd;
	double secs, warmup;
	uint64_t count; /* rand: fixed request count instead of --secs */
	uint64_t span;  /* bytes of each device used (0 = all) */
	uint64_t n;     /* timeouts/mirror/memory: requests */
	unsigned timeout_ms, spread_ms, hedge_ms;
	unsigned hung; /* multi: clients whose reads are held */
	int hung_fuse; /* multi: ... by a really hung loop+FUSE device, not a fault rule */
	unsigned phase_ms; /* alt: length of one phase */
	const char *faults;
	int wait_all, healthy, plain, zero_copy, pages;
	int refuse_uring; /* --refuse-uring: io_uring_setup fails (seccomp), as in containers */
	const char *label;
	uint64_t seed;
};

extern struct bench_opt opt;
extern int tty; /* stderr is a terminal: live progress */

void usage(void);
void parse(int argc, char **argv);
void refuse_io_uring(void);
uint64_t nblocks(struct block_device **dev, int n);
void *xalloc(size_t bytes);
unsigned char *page_buffer(size_t bytes, struct dm_io_page_list **pl);
void progress(const char *fmt, ...);
void progress_end(void);

/* ---------------------------------------------------------------- modes */

/* A constant-depth slot: rand and hedge resubmit from it in notify. */
struct rslot {
	uint64_t t0, rng;
	unsigned legs_left;
	unsigned char *buf;
	struct dm_io_page_list *pl; /* --pages: the buffer as a page list */
};

int mode_rand(void);     /* bench-rand.c */
int mode_timeouts(void); /* bench-timeouts.c */
int mode_mirror(void);   /* bench-mirror.c */
int mode_hedge(void);    /* bench-hedge.c */
int mode_memory(void);   /* bench-memory.c */
int mode_memcpy(void);   /* bench-memory.c */
int mode_clients(void);  /* bench-clients.c */
int mode_multi(void);    /* bench-clients.c */
int mode_alt(void);      /* bench-clients.c */

#endif
