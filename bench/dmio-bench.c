/* dmio-bench: the libdmio side of `make bench` (bench/README.md).
 *
 * One measurement per invocation; the result is one JSON object on stdout,
 * live progress goes to stderr when it is a terminal. Built against the
 * *installed* header and library (make install DESTDIR=build/stage), so it
 * measures what users get. bench/bench.py runs it side by side with fio.
 *
 * Modes (see usage()):
 *   rand      random reads (one region) or mirror writes (N regions) at a
 *             constant queue depth, resubmitting from notify; for a time
 *             (--secs) or a fixed number of requests (--count)
 *   timeouts  N timed requests held by fault injection ("hang"): the
 *             distribution of (TIMEOUT notify time - deadline)
 *   mirror    2-leg timed mirror writes with one leg hung: ack latency
 *             (good leg OK + hung leg TIMEOUT), or waiting for all legs
 *   hedge     reads with an occasional injected delay: plain vs DM_IO_READ_ANY
 *   memory    RSS before/after many requests with faults, vs the private bound
 *   memcpy    memcpy cost of one block (for the bounce-copy share)
 *
 * Latencies go into a log-bucketed histogram (HdrHistogram-style: 64
 * linear sub-buckets per power of two, < 1.6 % relative error), recorded
 * only by the client's completion thread (one writer, no locks).
 */
#define _GNU_SOURCE
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

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "dmio-bench: ");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " [libdmio: %s]\n", dm_io_last_error());
	exit(2);
}

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

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static double cpu_seconds(double *user, double *sys)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	*user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
	*sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	return *user + *sys;
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

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

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

static void hist_init(struct hist *h)
{
	memset(h, 0, sizeof *h);
	h->min = UINT64_MAX;
}

static unsigned hist_index(uint64_t v)
{
	if (v < H_LINEAR)
		return (unsigned)v;
	unsigned msb = 63u - (unsigned)__builtin_clzll(v);
	unsigned shift = msb - H_SUB_BITS;
	unsigned idx = H_LINEAR + (shift - 1) * H_SUB + (unsigned)((v >> shift) - H_SUB);
	return idx < H_BUCKETS ? idx : H_BUCKETS - 1;
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
static uint64_t hist_mid(unsigned idx)
{
	if (idx < H_LINEAR)
		return idx;
	unsigned k = idx - H_LINEAR;
	uint64_t width = 1ull << (k / H_SUB + 1);
	return hist_value(idx) + width / 2;
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

static uint64_t hist_pct(const struct hist *h, double p)
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

/* ----------------------------------------------------------------- JSON */

static int json_first = 1;

static void jkey(const char *k)
{
	printf("%s\"%s\": ", json_first ? "" : ", ", k);
	json_first = 0;
}

static void jnum(const char *k, double v)
{
	jkey(k);
	printf("%.6g", v);
}

static void jint(const char *k, uint64_t v)
{
	jkey(k);
	printf("%" PRIu64, v);
}

static void jstr(const char *k, const char *v)
{
	jkey(k);
	putchar('"');
	for (; *v; v++) {
		if (*v == '"' || *v == '\\')
			putchar('\\');
		if ((unsigned char)*v >= 0x20)
			putchar(*v);
	}
	putchar('"');
}

static void jopen(const char *k)
{
	if (k)
		jkey(k);
	printf("{");
	json_first = 1;
}

static void jclose(void)
{
	printf("}");
	json_first = 0;
}

/* Latency summary (ns) and the histogram's non-empty buckets (for CDFs). */
static void jhist(const char *k, const struct hist *h)
{
	jopen(k);
	jint("n", h->n);
	jint("min", h->n ? h->min : 0);
	jnum("mean", h->n ? (double)(h->sum / h->n) : 0);
	jint("p50", hist_pct(h, 50));
	jint("p90", hist_pct(h, 90));
	jint("p99", hist_pct(h, 99));
	jint("p999", hist_pct(h, 99.9));
	jint("p9999", hist_pct(h, 99.99));
	jint("max", h->max);
	jkey("buckets");
	printf("[");
	int first = 1;
	for (unsigned i = 0; i < H_BUCKETS; i++)
		if (h->count[i]) {
			printf("%s[%" PRIu64 ", %" PRIu64 "]", first ? "" : ", ", hist_mid(i), h->count[i]);
			first = 0;
		}
	printf("]");
	jclose();
}

static void jstats(struct dm_io_client *cl)
{
	struct dm_io_stats st;
	CHECK_RC(dm_io_client_stats(cl, &st, sizeof st));
	jopen("stats");
	jint("requests", st.requests);
	jint("regions", st.regions);
	jint("regions_in_flight", st.regions_in_flight);
	jint("ok", st.ok);
	jint("timeouts", st.timeouts);
	jint("cancelled", st.cancelled);
	jint("errors", st.errors);
	jint("late_completions", st.late_completions);
	jint("private_bytes_in_use", st.private_bytes_in_use);
	jint("private_bytes_high_water", st.private_bytes_high_water);
	jint("private_bytes_bound", st.private_bytes_bound);
	jint("memory_waits", st.memory_waits);
	jint("hedges", st.hedges);
	jstr("engine", st.engine == DM_IO_ENGINE_URING     ? "io_uring"
		       : st.engine == DM_IO_ENGINE_THREADS ? "threads"
							   : "unknown");
	jclose();
}

/* -------------------------------------------------------------- options */

static struct {
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
	const char *faults;
	int wait_all, healthy, plain, zero_copy, pages;
	const char *label;
	uint64_t seed;
} opt = {
	.rw = "read",
	.bs = 4096,
	.qd = 32,
	.secs = 3,
	.warmup = 0.5,
	.n = 10000,
	.timeout_ms = 10,
	.hedge_ms = 2,
	.label = "",
	.seed = 0x9E3779B97F4A7C15ull,
};

static void usage(void)
{
	fprintf(stderr,
		"usage: dmio-bench MODE [options]\n"
		"  rand     --dev P [--dev P..] --rw read|write --bs B --qd Q (--secs S [--warmup W] | --count N) [--span B]\n"
		"           [--zero-copy]   (DM_IO_ZERO_COPY: IO in the request's own buffer, no private memory)\n"
		"           [--pages]       (buffers are page lists of dm_io_page_alloc pages)\n"
		"  timeouts --dev P --n N --timeout MS [--spread MS]\n"
		"  mirror   --dev GOOD --dev HUNG --qd Q --n N --timeout MS [--wait-all --secs S] [--healthy]\n"
		"  hedge    --dev A --dev B --qd Q --secs S --faults SPEC [--hedge MS | --plain] [--span B]\n"
		"  memory   --dev A --dev B --qd Q --n N [--span B]\n"
		"  memcpy   --bs B\n");
	exit(2);
}

static void parse(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "dev", required_argument, 0, 'd' },	{ "rw", required_argument, 0, 'r' },
		{ "bs", required_argument, 0, 'b' },	{ "qd", required_argument, 0, 'q' },
		{ "secs", required_argument, 0, 's' },	{ "warmup", required_argument, 0, 'w' },
		{ "count", required_argument, 0, 'c' }, { "span", required_argument, 0, 'S' },
		{ "n", required_argument, 0, 'n' },	{ "timeout", required_argument, 0, 't' },
		{ "spread", required_argument, 0, 'p' }, { "hedge", required_argument, 0, 'h' },
		{ "faults", required_argument, 0, 'f' }, { "wait-all", no_argument, 0, 'W' },
		{ "healthy", no_argument, 0, 'H' },	{ "plain", no_argument, 0, 'P' },
		{ "label", required_argument, 0, 'l' }, { "seed", required_argument, 0, 'e' },
		{ "zero-copy", no_argument, 0, 'Z' },	{ "pages", no_argument, 0, 'G' },
		{ 0, 0, 0, 0 },
	};
	if (argc < 2)
		usage();
	opt.mode = argv[1];
	optind = 2;
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'd':
			if (opt.ndev == MAX_LEGS)
				die("at most %d devices", MAX_LEGS);
			opt.dev[opt.ndev++] = optarg;
			break;
		case 'r': opt.rw = optarg; break;
		case 'b': opt.bs = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'q': opt.qd = (unsigned)strtoul(optarg, NULL, 0); break;
		case 's': opt.secs = strtod(optarg, NULL); break;
		case 'w': opt.warmup = strtod(optarg, NULL); break;
		case 'c': opt.count = strtoull(optarg, NULL, 0); break;
		case 'S': opt.span = strtoull(optarg, NULL, 0); break;
		case 'n': opt.n = strtoull(optarg, NULL, 0); break;
		case 't': opt.timeout_ms = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'p': opt.spread_ms = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'h': opt.hedge_ms = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'f': opt.faults = optarg; break;
		case 'W': opt.wait_all = 1; break;
		case 'H': opt.healthy = 1; break;
		case 'P': opt.plain = 1; break;
		case 'Z': opt.zero_copy = 1; break;
		case 'G': opt.pages = 1; break;
		case 'l': opt.label = optarg; break;
		case 'e': opt.seed = strtoull(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (opt.bs == 0 || opt.bs % 512 || opt.qd == 0)
		die("--bs must be a multiple of 512, --qd at least 1");
}

/* Blocks (of opt.bs) of the smallest device, limited by --span. */
static uint64_t nblocks(struct block_device **dev, int n)
{
	uint64_t bytes = UINT64_MAX;
	for (int i = 0; i < n; i++) {
		uint64_t b = dm_io_bdev_sectors(dev[i]) * 512;
		if (b < bytes)
			bytes = b;
	}
	if (opt.span && opt.span < bytes)
		bytes = opt.span;
	if (bytes < opt.bs)
		die("devices are smaller than one block");
	return bytes / opt.bs;
}

static void *xalloc(size_t bytes)
{
	void *p = NULL;
	if (posix_memalign(&p, 4096, bytes ? bytes : 1))
		die("out of memory");
	memset(p, 0, bytes);
	return p;
}

/* --pages: bytes of dm_io_page_alloc pages as a page list (*pl); returns
 * the first page's address (the pages are contiguous only when the
 * library handed them out in order, which the driver does not need). */
static unsigned char *page_buffer(size_t bytes, struct dm_io_page_list **pl)
{
	size_t n = (bytes + DM_IO_PAGE_SIZE - 1) / DM_IO_PAGE_SIZE;
	struct dm_io_page_list *l = calloc(n, sizeof *l);
	if (!l)
		die("out of memory");
	for (size_t i = 0; i < n; i++) {
		if (!(l[i].page = dm_io_page_alloc()))
			die("dm_io_page_alloc failed");
		l[i].next = i + 1 < n ? &l[i + 1] : NULL;
	}
	*pl = l;
	return dm_io_page_address(l[0].page);
}

static int tty;
static void progress(const char *fmt, ...)
{
	if (!tty)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "\r\033[K  %s: ", opt.label[0] ? opt.label : opt.mode);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
}

static void progress_end(void)
{
	if (tty)
		fprintf(stderr, "\r\033[K");
}

static void jheader(void)
{
	jopen(NULL);
	jstr("tool", "libdmio");
	jstr("version", dm_io_version());
	jstr("mode", opt.mode);
	jstr("label", opt.label);
	jkey("devices");
	printf("[");
	for (int i = 0; i < opt.ndev; i++)
		printf("%s\"%s\"", i ? ", " : "", opt.dev[i]);
	printf("]");
	json_first = 0;
}

static void jdirect(struct block_device **dev, int n)
{
	jkey("o_direct");
	printf("[");
	for (int i = 0; i < n; i++)
		printf("%s%d", i ? ", " : "", dm_io_bdev_is_direct(dev[i]));
	printf("]");
}

/* ------------------------------------------------- rand: constant depth */

struct rslot {
	uint64_t t0, rng;
	unsigned legs_left;
	unsigned char *buf;
	struct dm_io_page_list *pl; /* --pages: the buffer as a page list */
};

static struct {
	struct dm_io_client *cl;
	struct block_device *dev[MAX_LEGS];
	int legs, writing;
	uint64_t blocks;
	struct rslot *slots;
	struct hist h;
	atomic_int measuring, stop;
	atomic_uint_fast64_t completed, submitted, errors, submit_errors;
	atomic_int inflight;
	uint64_t limit; /* --count */
} R;

static void rand_notify(struct dm_io_region_state *st, void *ctx);

static int rand_submit(struct rslot *s)
{
	uint64_t blk = rnd(&s->rng) % R.blocks;
	struct dm_io_region reg[MAX_LEGS];
	int n = R.writing ? R.legs : 1;
	for (int i = 0; i < n; i++)
		reg[i] = (struct dm_io_region){ R.dev[i], blk * (opt.bs / 512), opt.bs / 512 };
	struct dm_io_control c = {
		.memory = { .type = DM_IO_VM, .ptr.vma = s->buf },
		.rw = R.writing ? DM_IO_WRITE : DM_IO_READ,
		.notify = rand_notify,
		.context = s,
		.client = R.cl,
		.flags = opt.zero_copy ? DM_IO_ZERO_COPY : 0,
	};
	if (s->pl) {
		c.memory.type = DM_IO_PAGE_LIST;
		c.memory.ptr.pl = s->pl;
	}
	s->legs_left = (unsigned)n;
	s->t0 = now_ns();
	return dm_io(&c, (unsigned)n, reg, NULL);
}

/* Completion thread only. */
static void rand_notify(struct dm_io_region_state *st, void *ctx)
{
	struct rslot *s = ctx;
	if (st->state == DM_IO_TIMEOUT)
		return;
	if (st->state != DM_IO_OK)
		atomic_fetch_add_explicit(&R.errors, 1, memory_order_relaxed);
	if (--s->legs_left)
		return;
	uint64_t t = now_ns();
	if (atomic_load_explicit(&R.measuring, memory_order_relaxed))
		hist_record(&R.h, t - s->t0);
	atomic_fetch_add_explicit(&R.completed, 1, memory_order_relaxed);
	int again = !atomic_load_explicit(&R.stop, memory_order_relaxed);
	if (again && R.limit) {
		uint64_t k = atomic_fetch_add_explicit(&R.submitted, 1, memory_order_relaxed);
		again = k < R.limit;
	}
	if (again && rand_submit(s) == 0)
		return;
	if (again)
		atomic_fetch_add_explicit(&R.submit_errors, 1, memory_order_relaxed);
	atomic_fetch_sub_explicit(&R.inflight, 1, memory_order_release);
}

static int mode_rand(void)
{
	R.writing = strcmp(opt.rw, "write") == 0;
	if (!R.writing && strcmp(opt.rw, "read") != 0)
		die("--rw read|write");
	if (opt.ndev < 1 || (!R.writing && opt.ndev != 1))
		die("rand: reads take one --dev, writes one per mirror leg");
	if (opt.pages && R.writing)
		die("--pages is for reads");
	R.legs = opt.ndev;
	for (int i = 0; i < opt.ndev; i++)
		CHECK_RC(dm_io_bdev_open(opt.dev[i], 0, &R.dev[i]));
	R.blocks = nblocks(R.dev, R.legs);
	/* Private memory sized exactly for the queue depth. */
	CHECK_RC(dm_io_client_create((unsigned)R.legs, opt.qd, opt.bs, &R.cl));
	R.slots = xalloc(sizeof *R.slots * opt.qd);
	hist_init(&R.h);
	R.limit = opt.count;
	for (unsigned i = 0; i < opt.qd; i++) {
		if (opt.pages)
			R.slots[i].buf = page_buffer(opt.bs, &R.slots[i].pl);
		else
			R.slots[i].buf = xalloc(opt.bs);
		R.slots[i].rng = opt.seed + 0x1000193ull * (i + 1);
		if (R.writing)
			memset(R.slots[i].buf, 0xA5 ^ (int)i, opt.bs);
	}
	double u0 = 0, s0 = 0, u1 = 0, s1 = 0;
	uint64_t t_start = now_ns(), t0 = 0, t1 = 0, c0 = 0, c1 = 0;
	if (R.limit) {
		/* Fixed work (for instruction counts): measure everything. */
		atomic_store(&R.measuring, 1);
		t0 = t_start;
		c0 = 0;
		cpu_seconds(&u0, &s0);
	}
	unsigned first = opt.qd;
	if (R.limit && R.limit < first)
		first = (unsigned)R.limit;
	atomic_store(&R.submitted, first);
	atomic_store(&R.inflight, (int)first);
	for (unsigned i = 0; i < first; i++)
		CHECK_RC(rand_submit(&R.slots[i]));
	if (!R.limit) {
		while (now_ns() - t_start < (uint64_t)(opt.warmup * 1e9))
			sleep_ns(10000000);
		t0 = now_ns();
		c0 = atomic_load(&R.completed);
		cpu_seconds(&u0, &s0);
		atomic_store(&R.measuring, 1);
		uint64_t end = t0 + (uint64_t)(opt.secs * 1e9), last = t0, lastc = c0;
		for (;;) {
			uint64_t t = now_ns();
			if (t >= end)
				break;
			sleep_ns(end - t < 250000000ull ? end - t : 250000000ull);
			uint64_t tt = now_ns(), cc = atomic_load(&R.completed);
			progress("%4.1f/%.1f s  %7.1fk IOPS", (double)(tt - t0) / 1e9, opt.secs,
				 (double)(cc - lastc) / ((double)(tt - last) / 1e9) / 1e3);
			last = tt;
			lastc = cc;
		}
		t1 = now_ns();
		c1 = atomic_load(&R.completed);
		cpu_seconds(&u1, &s1);
		atomic_store(&R.measuring, 0);
		atomic_store(&R.stop, 1);
	}
	while (atomic_load_explicit(&R.inflight, memory_order_acquire) > 0) {
		/* Rarely: under callgrind every wake-up here counts too. */
		sleep_ns(R.limit ? 20000000 : 1000000);
		if (R.limit)
			progress("%" PRIu64 "/%" PRIu64 " requests", (uint64_t)atomic_load(&R.completed),
				 R.limit);
	}
	if (R.limit) {
		t1 = now_ns();
		c1 = atomic_load(&R.completed);
		cpu_seconds(&u1, &s1);
	}
	progress_end();
	double secs = (double)(t1 - t0) / 1e9;
	double ios = (double)(c1 - c0);
	jheader();
	jstr("rw", opt.rw);
	jint("bs", opt.bs);
	jint("qd", opt.qd);
	jint("legs", (uint64_t)R.legs);
	jint("span_bytes", R.blocks * opt.bs);
	jdirect(R.dev, R.legs);
	jnum("secs", secs);
	jint("requests", (uint64_t)ios);
	jint("zero_copy", (uint64_t)opt.zero_copy);
	jint("pages", (uint64_t)opt.pages);
	jnum("iops", ios / secs);
	jnum("regions_per_s", ios * (R.writing ? R.legs : 1) / secs);
	jnum("mib_per_s", ios * (R.writing ? R.legs : 1) * opt.bs / secs / 1048576.0);
	jopen("cpu");
	jnum("user_s", u1 - u0);
	jnum("sys_s", s1 - s0);
	jnum("us_per_request", ios > 0 ? (u1 - u0 + s1 - s0) / ios * 1e6 : 0);
	jnum("cores", (u1 - u0 + s1 - s0) / secs);
	jclose();
	jint("errors", atomic_load(&R.errors));
	jint("submit_errors", atomic_load(&R.submit_errors));
	jstats(R.cl);
	jhist("lat_ns", &R.h);
	jclose();
	printf("\n");
	dm_io_client_destroy(R.cl);
	for (int i = 0; i < R.legs; i++)
		dm_io_bdev_close(R.dev[i]);
	return atomic_load(&R.errors) || atomic_load(&R.submit_errors) ? 1 : 0;
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

static void probes_start(void)
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
static void probes_stop(struct hist *all)
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

/* ------------------------------------------- timeouts: timer precision */

struct treq {
	uint64_t deadline;
	unsigned char *buf;
};

static struct {
	struct treq *req;
	struct hist late;
	uint64_t early, early_max;
	atomic_uint_fast64_t timeouts, finals, bad;
} T;

static void timeout_notify(struct dm_io_region_state *st, void *ctx)
{
	struct treq *r = ctx;
	if (st->state == DM_IO_TIMEOUT) {
		uint64_t t = now_ns();
		if (t >= r->deadline) {
			hist_record(&T.late, t - r->deadline);
		} else {
			/* Before our (earliest possible) deadline: never expected. */
			T.early++;
			if (r->deadline - t > T.early_max)
				T.early_max = r->deadline - t;
		}
		atomic_fetch_add(&T.timeouts, 1);
		return;
	}
	if (st->state != DM_IO_OK)
		atomic_fetch_add(&T.bad, 1);
	atomic_fetch_add(&T.finals, 1);
}

static int mode_timeouts(void)
{
	struct block_device *dev;
	struct dm_io_client *cl;
	if (opt.ndev != 1)
		die("timeouts: one --dev");
	CHECK_RC(dm_io_bdev_open_faulty(opt.dev[0], "hang", &dev));
	uint64_t blocks = nblocks(&dev, 1);
	/* Every request holds its private memory while hung: room for all. */
	CHECK_RC(dm_io_client_create(1, (unsigned)opt.n, opt.bs, &cl));
	T.req = xalloc(sizeof *T.req * opt.n);
	unsigned char *bufs = xalloc((size_t)opt.bs * opt.n);
	hist_init(&T.late);
	uint64_t rng = opt.seed;
	probes_start();
	uint64_t t_sub0 = now_ns();
	for (uint64_t i = 0; i < opt.n; i++) {
		struct treq *r = &T.req[i];
		r->buf = bufs + i * opt.bs;
		unsigned ms = opt.timeout_ms + (opt.spread_ms ? (unsigned)(rnd(&rng) % opt.spread_ms) : 0);
		uint64_t blk = rnd(&rng) % blocks;
		struct dm_io_region reg = { dev, blk * (opt.bs / 512), opt.bs / 512 };
		struct dm_io_control c = {
			.memory = { .type = DM_IO_VM, .ptr.vma = r->buf },
			.rw = DM_IO_READ,
			.notify = timeout_notify,
			.context = r,
			.client = cl,
			.timeout = ms,
		};
		/* The library takes its clock inside dm_io, after this one: this
		 * deadline is the earliest it can have, so lateness is an upper bound. */
		r->deadline = now_ns() + (uint64_t)ms * 1000000ull;
		CHECK_RC(dm_io(&c, 1, &reg, NULL));
	}
	uint64_t t_sub1 = now_ns();
	struct dm_io_stats st;
	CHECK_RC(dm_io_client_stats(cl, &st, sizeof st));
	uint64_t in_flight_after_submit = st.regions_in_flight;
	uint64_t limit = t_sub1 + (uint64_t)(opt.timeout_ms + opt.spread_ms + 10000) * 1000000ull;
	while (atomic_load(&T.timeouts) < opt.n && now_ns() < limit) {
		sleep_ns(50000000);
		progress("%" PRIu64 "/%" PRIu64 " TIMEOUT notifications", (uint64_t)atomic_load(&T.timeouts),
			 opt.n);
	}
	struct hist probe_over;
	probes_stop(&probe_over);
	/* Release the held IO: every region then ends OK (a late completion). */
	CHECK_RC(dm_io_bdev_set_faults(dev, ""));
	limit = now_ns() + 30000000000ull;
	while (atomic_load(&T.finals) < opt.n && now_ns() < limit)
		sleep_ns(10000000);
	progress_end();
	jheader();
	jint("requests", opt.n);
	jint("timeout_ms", opt.timeout_ms);
	jint("spread_ms", opt.spread_ms);
	jnum("submit_secs", (double)(t_sub1 - t_sub0) / 1e9);
	jint("in_flight_after_submit", in_flight_after_submit);
	jint("timeout_notifications", atomic_load(&T.timeouts));
	jint("early", T.early);
	jint("early_max_ns", T.early_max);
	jint("finals", atomic_load(&T.finals));
	jint("finals_not_ok", atomic_load(&T.bad));
	jstats(cl);
	jhist("lateness_ns", &T.late);
	jhist("sleep_probe_oversleep_ns", &probe_over);
	jclose();
	printf("\n");
	dm_io_client_destroy(cl);
	dm_io_bdev_close(dev);
	free(bufs);
	return atomic_load(&T.timeouts) == opt.n ? 0 : 1;
}

/* ---------------------------------- mirror: one leg hung, timed writes */

struct mreq {
	uint64_t t0;
	unsigned settled; /* legs OK/ERROR/CANCELLED, or TIMEOUT (timed mode) */
	unsigned finals;
	unsigned char acked;
	unsigned char seen_timeout[2];
};

static struct {
	struct dm_io_client *cl;
	struct block_device *dev[2];
	struct mreq *req;
	unsigned char *buf;
	uint64_t n, blocks, rng;
	struct hist h;
	/* Where an ack's time goes: the good leg's own latency, and how late
	 * the hung leg's TIMEOUT came after its deadline. */
	struct hist good, tlate;
	atomic_uint_fast64_t next, acked, finals, not_ok, late_ok;
	atomic_int stop;
} M;

static void mirror_notify(struct dm_io_region_state *st, void *ctx);

static int mirror_submit(void)
{
	uint64_t i = atomic_fetch_add(&M.next, 1);
	if (i >= M.n)
		return 1;
	struct mreq *r = &M.req[i];
	uint64_t h = M.rng ^ (i * 0x9E3779B97F4A7C15ull);
	uint64_t blk = rnd(&h) % M.blocks;
	struct dm_io_region reg[2] = {
		{ M.dev[0], blk * (opt.bs / 512), opt.bs / 512 },
		{ M.dev[1], blk * (opt.bs / 512), opt.bs / 512 },
	};
	struct dm_io_control c = {
		.memory = { .type = DM_IO_VM, .ptr.vma = M.buf },
		.rw = DM_IO_WRITE,
		.notify = mirror_notify,
		.context = r,
		.client = M.cl,
		.timeout = opt.wait_all ? 0 : opt.timeout_ms,
	};
	r->t0 = now_ns();
	CHECK_RC(dm_io(&c, 2, reg, NULL));
	return 0;
}

static void mirror_notify(struct dm_io_region_state *st, void *ctx)
{
	struct mreq *r = ctx;
	uint64_t dt = now_ns() - r->t0;
	if (st->state == DM_IO_TIMEOUT) {
		uint64_t deadline = (uint64_t)opt.timeout_ms * 1000000ull;
		hist_record(&M.tlate, dt > deadline ? dt - deadline : 0);
		r->seen_timeout[st->index & 1] = 1;
		if (!opt.wait_all)
			r->settled++;
	} else {
		if (st->index == 0 && !atomic_load(&M.stop))
			hist_record(&M.good, dt);
		r->finals++;
		atomic_fetch_add(&M.finals, 1);
		if (st->state != DM_IO_OK)
			atomic_fetch_add(&M.not_ok, 1);
		else if (r->seen_timeout[st->index & 1])
			atomic_fetch_add(&M.late_ok, 1);
		if (!r->seen_timeout[st->index & 1])
			r->settled++;
	}
	if (r->acked || r->settled < 2)
		return;
	/* The mirror write is acknowledged: every leg is done or timed out. */
	r->acked = 1;
	hist_record(&M.h, now_ns() - r->t0);
	atomic_fetch_add(&M.acked, 1);
	if (!atomic_load(&M.stop))
		mirror_submit();
}

static int mode_mirror(void)
{
	if (opt.ndev != 2)
		die("mirror: --dev GOOD --dev HUNG");
	CHECK_RC(dm_io_bdev_open(opt.dev[0], 0, &M.dev[0]));
	CHECK_RC(dm_io_bdev_open_faulty(opt.dev[1], opt.healthy ? "" : "hang writes", &M.dev[1]));
	M.blocks = nblocks(M.dev, 2);
	M.n = opt.wait_all ? opt.qd : opt.n;
	/* The hung leg keeps each request's private memory (a write shares one
	 * slot among its legs) until it is released: room for all requests. */
	unsigned min_ios = (unsigned)((M.n + opt.qd + 1) / 2);
	CHECK_RC(dm_io_client_create(2, min_ios, opt.bs, &M.cl));
	M.req = xalloc(sizeof *M.req * M.n);
	M.buf = xalloc(opt.bs);
	memset(M.buf, 0x5A, opt.bs);
	M.rng = opt.seed;
	hist_init(&M.h);
	hist_init(&M.good);
	hist_init(&M.tlate);
	probes_start();
	uint64_t t0 = now_ns();
	for (unsigned i = 0; i < opt.qd && i < M.n; i++)
		mirror_submit();
	uint64_t limit = opt.wait_all ? t0 + (uint64_t)(opt.secs * 1e9)
				      : t0 + 60000000000ull + M.n * (uint64_t)opt.timeout_ms * 1000000ull;
	while (atomic_load(&M.acked) < M.n && now_ns() < limit) {
		sleep_ns(opt.wait_all ? 100000000 : 50000000);
		progress("%" PRIu64 "/%" PRIu64 " mirror writes acknowledged, %.1f s",
			 (uint64_t)atomic_load(&M.acked), M.n, (double)(now_ns() - t0) / 1e9);
	}
	uint64_t t1 = now_ns();
	atomic_store(&M.stop, 1);
	struct hist probe_over;
	probes_stop(&probe_over);
	uint64_t acked_in_run = atomic_load(&M.acked);
	struct dm_io_stats during;
	CHECK_RC(dm_io_client_stats(M.cl, &during, sizeof during));
	/* Release the hung leg; its writes complete late. */
	CHECK_RC(dm_io_bdev_set_faults(M.dev[1], ""));
	uint64_t t_rel = now_ns(), want = atomic_load(&M.next) < M.n ? atomic_load(&M.next) : M.n;
	limit = t_rel + 30000000000ull;
	/* Acks are counted after they are recorded: once all are in, the
	 * histogram is complete and no callback writes it any more. */
	while ((atomic_load(&M.finals) < 2 * want || atomic_load(&M.acked) < want) && now_ns() < limit)
		sleep_ns(5000000);
	progress_end();
	jheader();
	jstr("variant", opt.healthy ? "healthy" : opt.wait_all ? "wait-all" : "timed");
	jint("bs", opt.bs);
	jint("qd", opt.qd);
	jint("timeout_ms", opt.wait_all ? 0 : opt.timeout_ms);
	jdirect(M.dev, 2);
	jint("requests_submitted", want);
	jint("acked_in_run", acked_in_run);
	jnum("run_secs", (double)(t1 - t0) / 1e9);
	jnum("acks_per_s", (double)acked_in_run / ((double)(t1 - t0) / 1e9));
	jint("private_bytes_in_use_during_run", during.private_bytes_in_use);
	jint("memory_waits_during_run", during.memory_waits);
	jint("timeouts_during_run", during.timeouts);
	jint("finals_after_release", atomic_load(&M.finals));
	jint("late_ok", atomic_load(&M.late_ok));
	jint("not_ok", atomic_load(&M.not_ok));
	jnum("release_to_all_final_secs", (double)(now_ns() - t_rel) / 1e9);
	jstats(M.cl);
	jhist("lat_ns", &M.h);
	jhist("good_leg_ns", &M.good);
	jhist("timeout_late_ns", &M.tlate);
	jhist("sleep_probe_oversleep_ns", &probe_over);
	jclose();
	printf("\n");
	dm_io_client_destroy(M.cl);
	dm_io_bdev_close(M.dev[0]);
	dm_io_bdev_close(M.dev[1]);
	return 0;
}

/* ---------------------------------------------- hedge: hedged reads */

static struct {
	struct dm_io_client *cl;
	struct block_device *dev[2];
	struct rslot *slots;
	uint64_t blocks;
	struct hist h;
	atomic_int measuring, stop, inflight;
	atomic_uint_fast64_t completed, errors;
} HG;

static void hedge_notify(struct dm_io_region_state *st, void *ctx);

static int hedge_submit(struct rslot *s)
{
	uint64_t blk = rnd(&s->rng) % HG.blocks;
	struct dm_io_region reg[2] = {
		{ HG.dev[0], blk * (opt.bs / 512), opt.bs / 512 },
		{ HG.dev[1], blk * (opt.bs / 512), opt.bs / 512 },
	};
	struct dm_io_control c = {
		.memory = { .type = DM_IO_VM, .ptr.vma = s->buf },
		.rw = opt.plain ? DM_IO_READ : DM_IO_READ | DM_IO_READ_ANY,
		.notify = hedge_notify,
		.context = s,
		.client = HG.cl,
	};
	s->legs_left = opt.plain ? 1 : 2;
	s->t0 = now_ns();
	return dm_io(&c, opt.plain ? 1 : 2, reg, NULL);
}

static void hedge_notify(struct dm_io_region_state *st, void *ctx)
{
	struct rslot *s = ctx;
	if (st->state == DM_IO_TIMEOUT)
		return;
	/* READ_ANY: one region OK, the other CANCELLED (or never started). */
	if (st->state == DM_IO_ERROR)
		atomic_fetch_add(&HG.errors, 1);
	if (--s->legs_left)
		return;
	if (atomic_load_explicit(&HG.measuring, memory_order_relaxed))
		hist_record(&HG.h, now_ns() - s->t0);
	atomic_fetch_add(&HG.completed, 1);
	if (!atomic_load(&HG.stop) && hedge_submit(s) == 0)
		return;
	atomic_fetch_sub(&HG.inflight, 1);
}

static int mode_hedge(void)
{
	if (opt.ndev != 2 || !opt.faults)
		die("hedge: --dev A --dev B --faults SPEC (applied to A)");
	CHECK_RC(dm_io_bdev_open_faulty(opt.dev[0], opt.faults, &HG.dev[0]));
	CHECK_RC(dm_io_bdev_open(opt.dev[1], 0, &HG.dev[1]));
	HG.blocks = nblocks(HG.dev, 2);
	/* A hedged read takes one slot per region up front, and a cancelled
	 * slow leg keeps its slot until its delayed IO ends: room for those. */
	CHECK_RC(dm_io_client_create(2, 2 * opt.qd + 32, opt.bs, &HG.cl));
	if (!opt.plain)
		CHECK_RC(dm_io_client_set_hedge(HG.cl, opt.hedge_ms));
	HG.slots = xalloc(sizeof *HG.slots * opt.qd);
	hist_init(&HG.h);
	for (unsigned i = 0; i < opt.qd; i++) {
		HG.slots[i].buf = xalloc(opt.bs);
		HG.slots[i].rng = opt.seed + 7919ull * (i + 1);
	}
	atomic_store(&HG.inflight, (int)opt.qd);
	uint64_t t_start = now_ns();
	for (unsigned i = 0; i < opt.qd; i++)
		CHECK_RC(hedge_submit(&HG.slots[i]));
	while (now_ns() - t_start < (uint64_t)(opt.warmup * 1e9))
		sleep_ns(10000000);
	uint64_t t0 = now_ns(), c0 = atomic_load(&HG.completed);
	atomic_store(&HG.measuring, 1);
	while (now_ns() - t0 < (uint64_t)(opt.secs * 1e9)) {
		sleep_ns(100000000);
		progress("%4.1f/%.1f s", (double)(now_ns() - t0) / 1e9, opt.secs);
	}
	uint64_t t1 = now_ns(), c1 = atomic_load(&HG.completed);
	atomic_store(&HG.measuring, 0);
	atomic_store(&HG.stop, 1);
	while (atomic_load(&HG.inflight) > 0)
		sleep_ns(1000000);
	progress_end();
	jheader();
	jstr("variant", opt.plain ? "plain" : "hedged");
	jstr("faults_on_first_leg", opt.faults);
	jint("hedge_ms", opt.plain ? 0 : opt.hedge_ms);
	jint("bs", opt.bs);
	jint("qd", opt.qd);
	jdirect(HG.dev, 2);
	jnum("secs", (double)(t1 - t0) / 1e9);
	jnum("iops", (double)(c1 - c0) / ((double)(t1 - t0) / 1e9));
	jint("errors", atomic_load(&HG.errors));
	jstats(HG.cl);
	jhist("lat_ns", &HG.h);
	jclose();
	printf("\n");
	dm_io_client_destroy(HG.cl);
	dm_io_bdev_close(HG.dev[0]);
	dm_io_bdev_close(HG.dev[1]);
	return 0;
}

/* ------------------------------------- memory: RSS over many requests */

/* A mix that exercises every path: mirror writes whose second leg fails
 * on part of the device, reads with a 1 ms deadline from a part of the
 * second device that is delayed 3 ms (TIMEOUT, then a late OK), hedged
 * reads, and reads cancelled right after submission. */
struct xslot {
	uint64_t rng;
	unsigned left;
	unsigned char *buf;
};

static struct {
	struct dm_io_client *cl;
	struct block_device *dev[2];
	uint64_t blocks, n;
	atomic_uint_fast64_t submitted, completed, kinds[4];
	atomic_int inflight;
} X;

static void mem_notify(struct dm_io_region_state *st, void *ctx);

static int mem_submit(struct xslot *s)
{
	uint64_t k = atomic_load(&X.submitted);
	do {
		if (k >= X.n)
			return 1;
	} while (!atomic_compare_exchange_weak(&X.submitted, &k, k + 1));
	uint64_t r = rnd(&s->rng);
	uint64_t blk = (r >> 8) % X.blocks;
	unsigned kind = (unsigned)(r % 10) < 5 ? 0 : (unsigned)(r % 10) < 8 ? 1 : (r % 10) < 9 ? 2 : 3;
	struct dm_io_region reg[2] = {
		{ X.dev[0], blk * (opt.bs / 512), opt.bs / 512 },
		{ X.dev[1], blk * (opt.bs / 512), opt.bs / 512 },
	};
	struct dm_io_control c = {
		.memory = { .type = DM_IO_VM, .ptr.vma = s->buf },
		.notify = mem_notify,
		.context = s,
		.client = X.cl,
	};
	unsigned n = 1;
	struct dm_io_handle *h = NULL;
	switch (kind) {
	case 0: /* mirror write; leg 1 fails on its first 1/8 */
		c.rw = DM_IO_WRITE;
		n = 2;
		break;
	case 1: /* timed read on leg 1 (delayed on its second 1/8) */
		c.rw = DM_IO_READ;
		c.timeout = 1;
		reg[0] = reg[1];
		break;
	case 2: /* hedged read, the delayed device first */
		c.rw = DM_IO_READ | DM_IO_READ_ANY;
		n = 2;
		reg[0] = reg[1];
		reg[1].bdev = X.dev[0];
		break;
	default: /* read, cancelled at once */
		c.rw = DM_IO_READ;
		break;
	}
	atomic_fetch_add(&X.kinds[kind], 1);
	s->left = n;
	int rc = dm_io(&c, n, reg, kind == 3 ? &h : NULL);
	if (rc)
		die("memory: dm_io returned %d", rc);
	if (h) {
		dm_io_cancel_by_handle(X.cl, h);
		dm_io_handle_put(h);
	}
	return 0;
}

static void mem_notify(struct dm_io_region_state *st, void *ctx)
{
	struct xslot *s = ctx;
	if (st->state == DM_IO_TIMEOUT || --s->left)
		return;
	atomic_fetch_add(&X.completed, 1);
	if (mem_submit(s) != 0)
		atomic_fetch_sub(&X.inflight, 1);
}

static int mode_memory(void)
{
	if (opt.ndev != 2)
		die("memory: --dev A --dev B");
	long rss_start = rss_kib();
	CHECK_RC(dm_io_bdev_open(opt.dev[0], 0, &X.dev[0]));
	CHECK_RC(dm_io_bdev_open(opt.dev[1], 0, &X.dev[1]));
	X.blocks = nblocks(X.dev, 2);
	uint64_t eighth = X.blocks / 8 * (opt.bs / 512);
	char spec[256];
	snprintf(spec, sizeof spec,
		 "error writes sectors=0-%" PRIu64 " errno=EIO; delay read=3ms sectors=%" PRIu64 "-%" PRIu64,
		 eighth - 1, eighth, 2 * eighth - 1);
	CHECK_RC(dm_io_bdev_set_faults(X.dev[1], spec));
	CHECK_RC(dm_io_client_create(2, opt.qd, opt.bs, &X.cl));
	CHECK_RC(dm_io_client_set_hedge(X.cl, 1));
	struct xslot *slots = xalloc(sizeof *slots * opt.qd);
	for (unsigned i = 0; i < opt.qd; i++) {
		slots[i].buf = xalloc(opt.bs);
		slots[i].rng = opt.seed * (i + 3);
	}
	long rss_client = rss_kib();
	/* Warm-up: 1 % of the requests (first touches of the private memory,
	 * allocator pools, ring), then the RSS baseline. */
	uint64_t warm = opt.n / 100 > 1000 ? opt.n / 100 : 1000;
	long rss_warm = 0;
	uint64_t t0 = now_ns();
	for (int phase = 0; phase < 2; phase++) {
		X.n = phase == 0 ? warm : warm + opt.n;
		atomic_store(&X.inflight, (int)opt.qd);
		for (unsigned i = 0; i < opt.qd; i++)
			if (mem_submit(&slots[i]) != 0)
				atomic_fetch_sub(&X.inflight, 1);
		uint64_t last = 0;
		while (atomic_load(&X.inflight) > 0) {
			sleep_ns(20000000);
			uint64_t t = now_ns();
			if (t - last > 250000000ull) {
				progress("%" PRIu64 "/%" PRIu64 " requests, RSS %ld KiB",
					 (uint64_t)atomic_load(&X.completed), warm + opt.n, rss_kib());
				last = t;
			}
		}
		if (phase == 0)
			rss_warm = rss_kib();
	}
	uint64_t t1 = now_ns();
	long rss_end = rss_kib();
	progress_end();
	jheader();
	jint("requests", opt.n);
	jint("warmup_requests", warm);
	jint("qd", opt.qd);
	jstr("faults_on_second_device", spec);
	jdirect(X.dev, 2);
	jnum("secs", (double)(t1 - t0) / 1e9);
	jopen("mix");
	jint("mirror_writes", atomic_load(&X.kinds[0]));
	jint("timed_reads", atomic_load(&X.kinds[1]));
	jint("hedged_reads", atomic_load(&X.kinds[2]));
	jint("cancelled_reads", atomic_load(&X.kinds[3]));
	jclose();
	jstats(X.cl);
	dm_io_client_destroy(X.cl);
	long rss_destroyed = rss_kib();
	jopen("rss_kib");
	jint("start", (uint64_t)rss_start);
	jint("client_created", (uint64_t)rss_client);
	jint("after_warmup", (uint64_t)rss_warm);
	jint("after_requests", (uint64_t)rss_end);
	jint("after_destroy", (uint64_t)rss_destroyed);
	jclose();
	jclose();
	printf("\n");
	dm_io_bdev_close(X.dev[0]);
	dm_io_bdev_close(X.dev[1]);
	return 0;
}

/* ------------------------------------------- memcpy: the bounce copy */

static int mode_memcpy(void)
{
	/* Like the library's copy-out: from one of qd page-aligned slots to a
	 * caller buffer, both warm in cache as after a read completes. */
	unsigned nslot = opt.qd;
	unsigned char *src = xalloc((size_t)opt.bs * nslot), *dst = xalloc((size_t)opt.bs * nslot);
	memset(src, 1, (size_t)opt.bs * nslot);
	uint64_t reps = (1ull << 31) / opt.bs; /* 2 GiB copied */
	uint64_t t0 = now_ns();
	for (uint64_t i = 0; i < reps; i++) {
		size_t k = (size_t)(i % nslot) * opt.bs;
		memcpy(dst + k, src + k, opt.bs);
		__asm__ volatile("" ::"r"(dst) : "memory");
	}
	uint64_t t1 = now_ns();
	double ns = (double)(t1 - t0) / (double)reps;
	jheader();
	jint("bs", opt.bs);
	jint("slots", nslot);
	jnum("ns_per_copy", ns);
	jnum("gib_per_s", (double)opt.bs / ns * 1e9 / 1073741824.0);
	jclose();
	printf("\n");
	free(src);
	free(dst);
	return 0;
}

int main(int argc, char **argv)
{
	tty = isatty(2);
	parse(argc, argv);
	if (!strcmp(opt.mode, "rand"))
		return mode_rand();
	if (!strcmp(opt.mode, "timeouts"))
		return mode_timeouts();
	if (!strcmp(opt.mode, "mirror"))
		return mode_mirror();
	if (!strcmp(opt.mode, "hedge"))
		return mode_hedge();
	if (!strcmp(opt.mode, "memory"))
		return mode_memory();
	if (!strcmp(opt.mode, "memcpy"))
		return mode_memcpy();
	usage();
	return 2;
}
