/* bench-stats.c - the latency histogram (log-bucketed, HdrHistogram-style:
 * 64 linear sub-buckets per power of two, < 1.6 % relative error; recording
 * is static inline in dmio-bench.h) and the sleep probes that measure the
 * machine's own timer floor during a run. */
#include "dmio-bench.h"

/* ------------------------------------------------------------ histogram */

void hist_init(struct hist *h)
{
	memset(h, 0, sizeof *h);
	h->min = UINT64_MAX;
}

/* Lowest value of a bucket. */
static uint64_t hist_value(unsigned idx)
{
	if (idx < H_LINEAR)
		return idx;
	unsigned k = idx - H_LINEAR;
	return ((uint64_t)(k % H_SUB) + H_SUB) << (k / H_SUB + 1);
}

/* Middle of a bucket (what percentiles report). */
uint64_t hist_mid(unsigned idx)
{
	if (idx < H_LINEAR)
		return idx;
	unsigned k = idx - H_LINEAR;
	uint64_t width = 1ull << (k / H_SUB + 1);
	return hist_value(idx) + width / 2;
}

uint64_t hist_pct(const struct hist *h, double p)
{
	if (h->n == 0)
		return 0;
	uint64_t want = (uint64_t)((p / 100.0) * (double)h->n + 0.999999);
	if (want == 0)
		want = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < H_BUCKETS; i++) {
		seen += h->count[i];
		if (seen >= want) {
			uint64_t v = hist_mid(i);
			return v > h->max ? h->max : v < h->min ? h->min : v;
		}
	}
	return h->max;
}

/* The machine's own timer floor during the run: one thread per CPU, pinned
 * there, sleeps 2 ms at a time and records how much longer each sleep took.
 * A TIMEOUT cannot come more punctually than this machine wakes a sleeping
 * thread on the CPU it runs on (on a VM, a CPU the host does not run for a
 * while delays every thread on it). Only the probes are pinned. */
#define MAX_PROBES 64
static struct {
	struct hist over[MAX_PROBES];
	pthread_t th[MAX_PROBES];
	int n;
	atomic_int stop;
} PROBE;

static void *sleep_probe(void *arg)
{
	struct hist *h = arg;
	while (!atomic_load(&PROBE.stop)) {
		uint64_t a = now_ns();
		sleep_ns(2000000);
		uint64_t d = now_ns() - a;
		hist_record(h, d > 2000000 ? d - 2000000 : 0);
	}
	return NULL;
}

void probes_start(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	PROBE.n = cpus < 1 ? 1 : cpus > MAX_PROBES ? MAX_PROBES : (int)cpus;
	for (int i = 0; i < PROBE.n; i++) {
		hist_init(&PROBE.over[i]);
		if (pthread_create(&PROBE.th[i], NULL, sleep_probe, &PROBE.over[i]) != 0)
			die("pthread_create");
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(i, &set);
		/* Best effort: an offline or forbidden CPU leaves the probe free. */
		(void)pthread_setaffinity_np(PROBE.th[i], sizeof set, &set);
	}
}

/* Stops the probes; their histograms merged into *all. */
void probes_stop(struct hist *all)
{
	atomic_store(&PROBE.stop, 1);
	hist_init(all);
	for (int i = 0; i < PROBE.n; i++) {
		pthread_join(PROBE.th[i], NULL);
		const struct hist *h = &PROBE.over[i];
		for (unsigned b = 0; b < H_BUCKETS; b++)
			all->count[b] += h->count[b];
		all->n += h->n;
		all->sum += h->sum;
		if (h->n && h->min < all->min)
			all->min = h->min;
		if (h->max > all->max)
			all->max = h->max;
	}
}
