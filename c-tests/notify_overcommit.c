/* Submitting more from inside notify than private memory holds: every
 * completion submits two new reads (the queue grows past the pool) on a
 * client with min_ios=2. A notify callback then waits for memory held by
 * IO that it started itself (that IO runs on the completion thread's own
 * ring), while the main thread does SYNC reads on the same client and
 * competes for the same memory. Nothing may deadlock or fail: all 3000
 * async reads and 200 SYNC reads end OK with the right data, and the
 * memory waits show in the stats. */
#include "helpers.h"
#include <string.h>

enum { BLK = 4096, NBLK = 64, TOTAL = 3000, SYNCS = 200, MAXQ = 64 };

struct rq {
	int used;
	uint64_t blk;
	unsigned char buf[BLK];
};

static struct dm_io_client *cl;
static struct block_device *dev;
static struct rq rqs[MAXQ];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int submitted, completed, bad, submit_errors, busy_max;

static void notify(struct dm_io_region_state *st, void *ctx);

/* Called with `lock` held. */
static struct rq *take(void)
{
	for (int i = 0; i < MAXQ; i++)
		if (!rqs[i].used) {
			rqs[i].used = 1;
			return &rqs[i];
		}
	return NULL;
}

/* Starts one async read unless TOTAL were started or no buffer is free. */
static void submit_one(void)
{
	pthread_mutex_lock(&lock);
	struct rq *r = submitted < TOTAL ? take() : NULL;
	if (r) {
		r->blk = (uint64_t)submitted * 13 % NBLK;
		submitted++;
		int busy = 0;
		for (int i = 0; i < MAXQ; i++)
			busy += rqs[i].used;
		if (busy > busy_max)
			busy_max = busy;
	}
	pthread_mutex_unlock(&lock);
	if (!r)
		return;
	memset(r->buf, 0, BLK);
	struct dm_io_region reg = { dev, r->blk * (BLK / 512), BLK / 512 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(r->buf, 0), notify, r);
	int rc = dm_io(&c, 1, &reg, NULL);
	if (rc) {
		pthread_mutex_lock(&lock);
		submit_errors++;
		r->used = 0;
		pthread_mutex_unlock(&lock);
	}
}

static void notify(struct dm_io_region_state *st, void *ctx)
{
	struct rq *r = ctx;
	int ok = st->state == DM_IO_OK && check_pattern(r->buf, BLK, (unsigned)r->blk);
	pthread_mutex_lock(&lock);
	if (!ok)
		bad++;
	completed++;
	r->used = 0;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	/* Two for one: more IO than the pool's two slots. */
	submit_one();
	submit_one();
}

int main(void)
{
	static unsigned char block[BLK];
	const char *path = make_file("overcommit.img", NBLK * BLK);
	for (int b = 0; b < NBLK; b++) {
		fill_pattern(block, BLK, (unsigned)b);
		write_file(path, (uint64_t)b * BLK, block, BLK);
	}
	CHECK_OK(dm_io_client_create(1, 2, BLK, &cl));
	CHECK_OK(dm_io_bdev_open(path, 0, &dev));
	check_block_size(dev);

	submit_one();
	submit_one();
	int sync_bad = 0;
	for (int i = 0; i < SYNCS; i++) {
		unsigned b = (unsigned)(i * 7 % NBLK);
		memset(block, 0, BLK);
		int rc = sync_io(cl, DM_IO_READ, dev, (uint64_t)b * (BLK / 512), BLK / 512, block, 0);
		if (rc || !check_pattern(block, BLK, b))
			sync_bad++;
	}

	double end = now_ms() + 60000;
	pthread_mutex_lock(&lock);
	while (completed + submit_errors < TOTAL && now_ms() < end) {
		pthread_mutex_unlock(&lock);
		sleep_ms(10);
		pthread_mutex_lock(&lock);
	}
	int done = completed, errs = submit_errors, wrong = bad, peak = busy_max;
	pthread_mutex_unlock(&lock);

	struct dm_io_stats s;
	CHECK_OK(dm_io_client_stats(cl, &s, sizeof(s)));
	fprintf(stderr, "%d async reads done, up to %d queued at once, %llu memory waits, %d SYNC reads\n",
		done, peak, (unsigned long long)s.memory_waits, SYNCS);
	CHECK(done == TOTAL, "only %d of %d reads completed within 60 s (deadlock?)", done, TOTAL);
	CHECK(errs == 0, "%d dm_io calls failed", errs);
	CHECK(wrong == 0, "%d reads not OK or with wrong data", wrong);
	CHECK(sync_bad == 0, "%d SYNC reads failed", sync_bad);
	CHECK(peak > 2, "the queue never outgrew the pool (peak %d)", peak);
	CHECK(s.memory_waits > 0, "no dm_io waited for memory");
	CHECK(s.private_bytes_high_water <= s.private_bytes_bound, "memory above its bound");
	dm_io_client_destroy(cl);
	dm_io_bdev_close(dev);
	return 0;
}
