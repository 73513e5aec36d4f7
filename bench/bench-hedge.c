/* bench-hedge.c - mode hedge: reads with an occasional injected delay on
 * the first leg, plain or DM_IO_READ_ANY with a hedge delay. */
#include "dmio-bench.h"

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

int mode_hedge(void)
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
