/* bench-timeouts.c - mode timeouts: N timed reads held by fault injection
 * ("hang"); the distribution of (TIMEOUT notify time - deadline), beside
 * the machine's timer floor measured by the sleep probes. */
#include "dmio-bench.h"

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

int mode_timeouts(void)
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
