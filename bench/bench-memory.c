/* bench-memory.c - mode memory: RSS before and after many requests with
 * faults, against the private-memory bound; and mode memcpy: the cost of
 * one block's copy (for the bounce-copy share of case 3). */
#include "dmio-bench.h"

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

int mode_memory(void)
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

int mode_memcpy(void)
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
