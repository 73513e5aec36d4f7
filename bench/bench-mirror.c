/* bench-mirror.c - mode mirror: 2-leg timed mirror writes with one leg hung
 * ("hang writes"): ack latency (good leg OK + hung leg TIMEOUT), where it
 * comes from, or waiting for all legs (--wait-all). */
#include "dmio-bench.h"

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

int mode_mirror(void)
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
