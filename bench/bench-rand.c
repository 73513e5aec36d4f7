/* bench-rand.c - mode rand: random reads (one region) or mirror writes (N
 * regions) at a constant queue depth, resubmitting from notify, for a time
 * (--secs) or a fixed number of requests (--count, for callgrind). */
#include "dmio-bench.h"

/* ------------------------------------------------- rand: constant depth */

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

int mode_rand(void)
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
