/* bench-clients.c - modes clients and multi: many clients in one process
 * (issue 19, the shared engine).
 *
 *   clients  --n N --qd Q --bs B: creates N clients (1 device, Q ops of B
 *            bytes each), then destroys them: threads of the process
 *            (/proc/self/task) and RSS before, with the clients and after,
 *            the sum of their private-memory pools, create and destroy time.
 *   multi    --dev P --n N --qd Q --bs B --secs S [--hung K --timeout MS]:
 *            N clients each keeping Q random reads in flight on P,
 *            resubmitting from notify. With --hung K, the first K clients
 *            read through a fault rule that holds every read ("hang"), with
 *            a deadline of MS: their reads get TIMEOUT and are resubmitted
 *            (the held ones keep their memory, so those clients get a pool
 *            for 4096 reads); the result says how late the TIMEOUTs came
 *            and the IOPS of the other N - K. With --hung-fuse they read
 *            a really hung device instead: a loop device over the hangfs
 *            FUSE daemon holding every read (c-tests/fixtures/hungdev.h),
 *            so the reads are stuck inside the kernel. At the end the hold
 *            is released and the device torn down; if the driver dies
 *            first, hungdev's atexit handler (exit, die) or its watcher
 *            process (a signal) does that, so the held IO ends and the
 *            exit, which waits for the process's io_uring IO, returns.
 *            After the run the other clients' reads are given 2 s to end:
 *            any still in flight then are stalled (stalled_reads,
 *            stalled_clients; destroy cancels them). */
#include "dmio-bench.h"
#include "hungdev.h"

#include <dirent.h>

static int threads_now(void)
{
	DIR *d = opendir("/proc/self/task");
	if (!d)
		die("cannot read /proc/self/task");
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

int mode_clients(void)
{
	uint64_t n = opt.n ? opt.n : 1000;
	struct dm_io_client **cl = xalloc(sizeof *cl * n);
	int th0 = threads_now();
	long rss0 = rss_kib();
	uint64_t t0 = now_ns();
	for (uint64_t i = 0; i < n; i++)
		CHECK_RC(dm_io_client_create(1, opt.qd, opt.bs, &cl[i]));
	uint64_t t1 = now_ns();
	int th1 = threads_now();
	long rss1 = rss_kib();
	struct dm_io_stats st;
	CHECK_RC(dm_io_client_stats(cl[0], &st, sizeof st));
	uint64_t pools = st.private_bytes_bound * n;
	uint64_t t2 = now_ns();
	for (uint64_t i = 0; i < n; i++)
		dm_io_client_destroy(cl[i]);
	uint64_t t3 = now_ns();
	int th2 = threads_now();
	long rss2 = rss_kib();
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	jheader();
	jint("clients", n);
	jint("qd", opt.qd);
	jint("bs", opt.bs);
	jint("cpus", (uint64_t)cpus);
	jint("threads_before", (uint64_t)th0);
	jint("threads_with", (uint64_t)th1);
	jint("threads_after", (uint64_t)th2);
	jint("rss_before_kib", (uint64_t)rss0);
	jint("rss_with_kib", (uint64_t)rss1);
	jint("rss_after_kib", (uint64_t)rss2);
	jint("pools_kib", pools / 1024);
	jnum("create_s", (double)(t1 - t0) / 1e9);
	jnum("destroy_s", (double)(t3 - t2) / 1e9);
	jint("engine", st.engine);
	jclose();
	printf("\n");
	free(cl);
	return 0;
}

/* One cache line (or more) each: clients of different engine threads update
 * their own `rng` and `done` on every read, and must not share a line. */
struct mclient {
	_Alignas(64) struct dm_io_client *cl;
	struct block_device *dev;
	uint64_t blocks; /* of dev, in opt.bs */
	int hung;
	atomic_int chains; /* reads in flight (a healthy client's) */
	atomic_uint_fast64_t done;
	uint64_t rng;
	pthread_mutex_t lock; /* the hung clients' timeout histogram */
};

struct mslot {
	struct mclient *c;
	unsigned char *buf;
	uint64_t deadline;
};

static struct {
	uint64_t blocks;
	atomic_int measuring, stop, destroying;
	atomic_int inflight;
	atomic_uint_fast64_t errors, submit_errors, timeouts, early, stalled_cancelled;
	struct hist late;
	pthread_mutex_t late_lock;
} M;

static void multi_notify(struct dm_io_region_state *st, void *ctx);

static int multi_submit(struct mslot *s)
{
	struct mclient *c = s->c;
	uint64_t blk = rnd(&c->rng) % c->blocks;
	struct dm_io_region reg = { c->dev, blk * (opt.bs / 512), opt.bs / 512 };
	struct dm_io_control ctl = {
		.memory = { .type = DM_IO_VM, .ptr.vma = s->buf },
		.rw = DM_IO_READ,
		.notify = multi_notify,
		.context = s,
		.client = c->cl,
		.timeout = c->hung ? opt.timeout_ms : 0,
	};
	s->deadline = now_ns() + (uint64_t)opt.timeout_ms * 1000000ull;
	return dm_io(&ctl, 1, &reg, NULL);
}

static void multi_notify(struct dm_io_region_state *st, void *ctx)
{
	struct mslot *s = ctx;
	struct mclient *c = s->c;
	if (c->hung) {
		if (st->state != DM_IO_TIMEOUT)
			return; /* the held read ends after the run, at destroy */
		uint64_t t = now_ns();
		if (atomic_load_explicit(&M.measuring, memory_order_relaxed)) {
			atomic_fetch_add(&M.timeouts, 1);
			if (t < s->deadline) {
				atomic_fetch_add(&M.early, 1);
			} else {
				pthread_mutex_lock(&M.late_lock);
				hist_record(&M.late, t - s->deadline);
				pthread_mutex_unlock(&M.late_lock);
			}
		}
	} else {
		/* A read that never ended (stalled behind the hung device's IO
		 * in the kernel) is cancelled at destroy: counted apart. */
		if (st->state == DM_IO_CANCELLED && atomic_load(&M.destroying))
			atomic_fetch_add_explicit(&M.stalled_cancelled, 1, memory_order_relaxed);
		else if (st->state != DM_IO_OK)
			atomic_fetch_add_explicit(&M.errors, 1, memory_order_relaxed);
		if (atomic_load_explicit(&M.measuring, memory_order_relaxed))
			atomic_fetch_add_explicit(&c->done, 1, memory_order_relaxed);
	}
	if (!atomic_load_explicit(&M.stop, memory_order_relaxed)) {
		/* A hung client's slot is still held by its read: a new buffer. */
		struct mslot *n = s;
		if (c->hung) {
			n = xalloc(sizeof *n);
			n->c = c;
			n->buf = xalloc(opt.bs);
		}
		if (multi_submit(n) == 0)
			return;
		atomic_fetch_add_explicit(&M.submit_errors, 1, memory_order_relaxed);
	}
	/* A healthy client's chain of reads ends (a hung one's is not waited for). */
	if (!c->hung) {
		atomic_fetch_sub_explicit(&c->chains, 1, memory_order_relaxed);
		atomic_fetch_sub_explicit(&M.inflight, 1, memory_order_release);
	}
}

int mode_multi(void)
{
	uint64_t n = opt.n ? opt.n : 64;
	unsigned hung = opt.hung;
	if (opt.ndev != 1)
		die("multi: one --dev");
	if (hung && !opt.timeout_ms)
		die("multi: --hung needs --timeout");
	if (hung > n)
		die("multi: --hung %u of %" PRIu64 " clients", hung, n);
	if (opt.hung_fuse && !hung)
		die("multi: --hung-fuse needs --hung");
	struct block_device *good, *held = NULL;
	struct hungdev *fuse = NULL;
	CHECK_RC(dm_io_bdev_open(opt.dev[0], 0, &good));
	M.blocks = nblocks(&good, 1);
	uint64_t held_blocks = M.blocks;
	if (opt.hung_fuse) {
		/* 8 MiB of hangfs memory; every read of it is held. */
		fuse = hungdev_up(8 << 20);
		if (!fuse)
			die("multi --hung-fuse: no hung loop+FUSE device: %s", hungdev_skip_reason());
		int rc = hungdev_ctl(fuse, "hold read all");
		if (rc)
			die("multi --hung-fuse: hangfs refused 'hold read all': %s", strerror(-rc));
		CHECK_RC(dm_io_bdev_open(hungdev_path(fuse), 0, &held));
		held_blocks = dm_io_bdev_sectors(held) * 512 / opt.bs;
	} else if (hung) {
		CHECK_RC(dm_io_bdev_open_faulty(opt.dev[0], "hang", &held));
	}
	hist_init(&M.late);
	pthread_mutex_init(&M.late_lock, NULL);
	struct mclient *cs = xalloc(sizeof *cs * n);
	memset(cs, 0, sizeof *cs * n);
	uint64_t tc = now_ns();
	for (uint64_t i = 0; i < n; i++) {
		cs[i].hung = i < hung;
		cs[i].dev = cs[i].hung ? held : good;
		cs[i].blocks = cs[i].hung ? held_blocks : M.blocks;
		cs[i].rng = opt.seed + 0x9E3779B97F4A7C15ull * (i + 1);
		CHECK_RC(dm_io_client_create(1, cs[i].hung ? 4096 : opt.qd, opt.bs, &cs[i].cl));
	}
	double create_s = (double)(now_ns() - tc) / 1e9;
	int threads;
	atomic_store(&M.inflight, (int)((n - hung) * opt.qd));
	for (uint64_t i = 0; i < n; i++)
		for (unsigned q = 0; q < opt.qd; q++) {
			struct mslot *s = xalloc(sizeof *s);
			s->c = &cs[i];
			s->buf = xalloc(opt.bs);
			if (!cs[i].hung)
				atomic_fetch_add(&cs[i].chains, 1);
			CHECK_RC(multi_submit(s));
		}
	sleep_ns((uint64_t)(opt.warmup * 1e9));
	double u0, s0, u1, s1;
	cpu_seconds(&u0, &s0);
	uint64_t t0 = now_ns();
	atomic_store(&M.measuring, 1);
	sleep_ns((uint64_t)(opt.secs * 1e9));
	atomic_store(&M.measuring, 0);
	uint64_t t1 = now_ns();
	cpu_seconds(&u1, &s1);
	threads = threads_now();
	/* How much of the hung clients' IO is stuck in the kernel now: held
	 * in the FUSE daemon, and in flight in the loop device's queue. */
	int fuse_held = fuse ? hungdev_held(fuse) : 0;
	int loop_inflight = fuse ? hungdev_inflight(fuse) : 0;
	atomic_store(&M.stop, 1);
	/* The healthy clients' reads end by themselves, within milliseconds;
	 * the held ones end at destroy. A healthy read still in flight after
	 * 2 s is stalled (behind the hung device's IO in the kernel): it and
	 * its client are counted, and destroy cancels it. */
	uint64_t wait_end = now_ns() + 2000000000ull;
	while (atomic_load(&M.inflight) > 0 && now_ns() < wait_end)
		sleep_ns(1000000);
	int stalled_reads = atomic_load(&M.inflight), stalled_clients = 0;
	for (uint64_t i = hung; i < n; i++)
		stalled_clients += atomic_load(&cs[i].chains) > 0;
	if (stalled_reads)
		fprintf(stderr, "dmio-bench: multi: %d reads of %d other clients did not end in 2 s after the run\n",
			stalled_reads, stalled_clients);
	atomic_store(&M.destroying, 1);
	double secs = (double)(t1 - t0) / 1e9;
	uint64_t total = 0, lo = UINT64_MAX, hi = 0;
	for (uint64_t i = hung; i < n; i++) {
		uint64_t d = atomic_load(&cs[i].done);
		total += d;
		lo = d < lo ? d : lo;
		hi = d > hi ? d : hi;
	}
	uint64_t td = now_ns();
	for (uint64_t i = 0; i < n; i++)
		dm_io_client_destroy(cs[i].cl);
	double destroy_s = (double)(now_ns() - td) / 1e9;
	/* The hold ends: the kernel completes the stuck reads (into the
	 * library's private memory, which destroy left to them); bounded. */
	double drain_s = 0;
	int drained = 1;
	if (fuse) {
		uint64_t tr = now_ns();
		int rc = hungdev_ctl(fuse, "release");
		if (rc)
			fprintf(stderr, "dmio-bench: hangfs refused 'release': %s\n", strerror(-rc));
		while (hungdev_inflight(fuse) > 0 && now_ns() - tr < 10000000000ull)
			sleep_ns(1000000);
		drained = hungdev_inflight(fuse) == 0;
		drain_s = (double)(now_ns() - tr) / 1e9;
		if (!drained)
			fprintf(stderr, "dmio-bench: %d reads still in flight on %s 10 s after the release\n",
				hungdev_inflight(fuse), hungdev_path(fuse));
	}
	jheader();
	jint("clients", n);
	jint("hung", hung);
	jstr("hung_device", !hung ? "none" : fuse ? "loop+FUSE" : "fault rule");
	if (fuse) {
		jstr("hung_path", hungdev_path(fuse));
		jint("fuse_held", (uint64_t)(fuse_held > 0 ? fuse_held : 0));
		jint("loop_inflight", (uint64_t)(loop_inflight > 0 ? loop_inflight : 0));
		jnum("release_drain_s", drain_s);
		jint("drained", (uint64_t)drained);
	}
	jint("qd", opt.qd);
	jint("bs", opt.bs);
	jnum("secs", secs);
	jnum("iops", (double)total / secs);
	jnum("iops_per_client_min", n > hung ? (double)lo / secs : 0);
	jnum("iops_per_client_max", n > hung ? (double)hi / secs : 0);
	jint("threads", (uint64_t)threads);
	jnum("create_s", create_s);
	jnum("destroy_s", destroy_s);
	jopen("cpu");
	jnum("user_s", u1 - u0);
	jnum("sys_s", s1 - s0);
	jnum("us_per_request", total ? (u1 - u0 + s1 - s0) / (double)total * 1e6 : 0);
	jclose();
	jint("errors", atomic_load(&M.errors));
	jint("stalled_reads", (uint64_t)stalled_reads);
	jint("stalled_clients", (uint64_t)stalled_clients);
	jint("stalled_cancelled", atomic_load(&M.stalled_cancelled));
	jint("submit_errors", atomic_load(&M.submit_errors));
	jint("timeouts", atomic_load(&M.timeouts));
	jint("early_timeouts", atomic_load(&M.early));
	jhist("timeout_late_ns", &M.late);
	jclose();
	printf("\n");
	int bad = atomic_load(&M.errors) || atomic_load(&M.early);
	if (bad)
		fprintf(stderr, "dmio-bench: multi: %" PRIuFAST64 " reads of the other clients failed, %" PRIuFAST64
			" TIMEOUTs came before their deadline\n", atomic_load(&M.errors), atomic_load(&M.early));
	if (fuse) {
		/* Nothing stuck in the kernel would not be the case measured. */
		if (loop_inflight <= 0) {
			fprintf(stderr, "dmio-bench: no read was stuck on %s (held %d, in flight %d)\n",
				hungdev_path(fuse), fuse_held, loop_inflight);
			bad = 1;
		}
		dm_io_bdev_close(held);
		hungdev_down(fuse);
	} else if (held) {
		dm_io_bdev_set_faults(held, "");
	}
	return bad ? 1 : 0;
}

/* ------------------------------------------------------------------ alt */

/* One phase of one side: its slots' chains start, run `ramp_s`, are
 * measured for `phase_s`, then stop and drain. Returns the measured
 * seconds; *cpu gets the process's CPU seconds meanwhile. */
static double alt_phase(struct mslot **slots, unsigned n, double ramp_s, double phase_s, double *cpu)
{
	atomic_store(&M.stop, 0);
	atomic_store(&M.inflight, (int)n);
	for (unsigned i = 0; i < n; i++) {
		atomic_fetch_add(&slots[i]->c->chains, 1);
		CHECK_RC(multi_submit(slots[i]));
	}
	sleep_ns((uint64_t)(ramp_s * 1e9));
	double u0, s0, u1, s1;
	cpu_seconds(&u0, &s0);
	uint64_t t0 = now_ns();
	atomic_store(&M.measuring, 1);
	sleep_ns((uint64_t)(phase_s * 1e9));
	atomic_store(&M.measuring, 0);
	uint64_t t1 = now_ns();
	cpu_seconds(&u1, &s1);
	atomic_store(&M.stop, 1);
	uint64_t end = now_ns() + 2000000000ull;
	while (atomic_load(&M.inflight) > 0)
		if (now_ns() > end)
			die("alt: %d reads did not end within 2 s of a phase", atomic_load(&M.inflight));
		else
			sleep_ns(100000);
	*cpu = u1 - u0 + s1 - s0;
	return (double)(t1 - t0) / 1e9;
}

/* Reads done so far by side s: the n clients (0) or the one after them (1). */
static uint64_t alt_done(struct mclient *cs, uint64_t n, int s)
{
	uint64_t d = 0;
	for (uint64_t i = s ? n : 0; i < (s ? n + 1 : n); i++)
		d += atomic_load(&cs[i].done);
	return d;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* N clients at QD Q each against one client at QD N x Q, in one process,
 * alternating in short phases (A B B A ...), each phase's chains started
 * afresh and drained at its end. Two separate processes measured seconds
 * apart compare the machine's speed as much as the two set-ups (this VM's
 * CPU speed drifts by +-20 % within seconds); phases of 0.2 s, alternated
 * many times, compare the set-ups. */
int mode_alt(void)
{
	uint64_t n = opt.n ? opt.n : 64;
	unsigned qd = opt.qd, total = (unsigned)(n * qd);
	double phase_s = (opt.phase_ms ? opt.phase_ms : 200) / 1e3, ramp_s = 0.02;
	if (opt.ndev != 1)
		die("alt: one --dev");
	struct block_device *dev;
	CHECK_RC(dm_io_bdev_open(opt.dev[0], 0, &dev));
	M.blocks = nblocks(&dev, 1);
	struct mclient *cs = xalloc(sizeof *cs * (n + 1)), *one = &cs[n];
	memset(cs, 0, sizeof *cs * (n + 1));
	for (uint64_t i = 0; i <= n; i++) {
		cs[i].dev = dev;
		cs[i].blocks = M.blocks;
		cs[i].rng = opt.seed + 0x9E3779B97F4A7C15ull * (i + 1);
		CHECK_RC(dm_io_client_create(1, i < n ? qd : total, opt.bs, &cs[i].cl));
	}
	struct mslot **side[2];
	for (int s = 0; s < 2; s++) {
		side[s] = xalloc(sizeof(struct mslot *) * total);
		for (unsigned k = 0; k < total; k++) {
			struct mslot *m = xalloc(sizeof *m);
			m->c = s == 0 ? &cs[k / qd] : one;
			m->buf = xalloc(opt.bs);
			side[s][k] = m;
		}
	}
	double cpu;
	/* Warm-up: each side for half of --warmup, not measured. */
	for (int s = 0; s < 2; s++)
		alt_phase(side[s], total, opt.warmup / 2, 0, &cpu);
	for (uint64_t i = 0; i <= n; i++)
		atomic_store(&cs[i].done, 0);
	unsigned pairs = (unsigned)(opt.secs / phase_s + 0.5);
	if (pairs < 1)
		pairs = 1;
	double secs[2] = { 0, 0 }, cpus[2] = { 0, 0 };
	uint64_t done[2] = { 0, 0 };
	double *ratio = xalloc(sizeof(double) * pairs);
	for (unsigned p = 0; p < pairs; p++) {
		double iops[2];
		for (int k = 0; k < 2; k++) {
			int s = (p % 2 == 0) ? k : 1 - k; /* A B, then B A */
			uint64_t d0 = alt_done(cs, n, s);
			double t = alt_phase(side[s], total, ramp_s, phase_s, &cpu);
			uint64_t d = alt_done(cs, n, s) - d0;
			secs[s] += t;
			cpus[s] += cpu;
			done[s] += d;
			iops[s] = (double)d / t;
		}
		ratio[p] = iops[0] / iops[1];
		progress("%u of %u phase pairs", p + 1, pairs);
	}
	progress_end();
	qsort(ratio, pairs, sizeof(double), cmp_double);
	for (uint64_t i = 0; i <= n; i++)
		dm_io_client_destroy(cs[i].cl);
	dm_io_bdev_close(dev);
	double a = (double)done[0] / secs[0], b = (double)done[1] / secs[1];
	jheader();
	jint("clients", n);
	jint("qd", qd);
	jint("one_qd", total);
	jint("bs", opt.bs);
	jnum("phase_s", phase_s);
	jint("pairs", pairs);
	jnum("secs", secs[0]);
	jnum("one_secs", secs[1]);
	jnum("iops", a);
	jnum("one_iops", b);
	jnum("ratio", a / b);
	jnum("pair_ratio_min", ratio[0]);
	jnum("pair_ratio_median", ratio[pairs / 2]);
	jnum("pair_ratio_max", ratio[pairs - 1]);
	jnum("us_per_request", done[0] ? cpus[0] / (double)done[0] * 1e6 : 0);
	jnum("one_us_per_request", done[1] ? cpus[1] / (double)done[1] * 1e6 : 0);
	jint("errors", atomic_load(&M.errors));
	jint("submit_errors", atomic_load(&M.submit_errors));
	jclose();
	printf("\n");
	return atomic_load(&M.errors) || atomic_load(&M.submit_errors) ? 1 : 0;
}
