/* Keeping a constant queue depth by submitting the next request from
 * inside notify works with private memory sized exactly for that depth:
 * a client with devices=1, min_ios=Q runs 2000 reads at depth Q, and a
 * client with devices=2, min_ios=Q runs 2000 two-leg mirror writes at depth
 * Q, without deadlock or failure (every region OK, data right). A SYNC
 * dm_io called from inside notify (with and without its own notify, while
 * the pool is busy) works and returns 0. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { Q = 8, TOTAL = 2000, BLK = 4096, NBLK = 256, FILEBYTES = NBLK * BLK };

struct slot {
	int idx;
	int regions_left;
	uint64_t blk;
	unsigned char buf[BLK];
};

static struct dm_io_client *cl;
static struct block_device *dev[2];
static int legs;
static int writing;
static struct slot slots[Q];
static unsigned char blocks[NBLK][BLK]; /* expected content of each block */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int submitted, completed, failed_regions, bad_data, submit_errors;
static int sync_calls, sync_failures;
static int in_flight, max_in_flight;

static void notify(struct dm_io_region_state *st, void *ctx);

static int submit(struct slot *s)
{
	s->blk = (uint64_t)(submitted * 37) % NBLK;
	s->regions_left = writing ? legs : 1;
	submitted++;
	struct dm_io_region r[2];
	for (int i = 0; i < (writing ? legs : 1); i++)
		r[i] = (struct dm_io_region){ dev[i], s->blk * (BLK / 512), BLK / 512 };
	struct dm_io_control c = make_ctrl(cl, writing ? DM_IO_WRITE : DM_IO_READ,
					   vm_mem(writing ? blocks[s->blk] : s->buf, 0), notify, s);
	in_flight++;
	if (in_flight > max_in_flight)
		max_in_flight = in_flight;
	return dm_io(&c, writing ? legs : 1, r, NULL);
}

static void sync_notify(struct dm_io_region_state *st, void *ctx)
{
	int *ok = ctx;
	if (st->state == DM_IO_OK)
		(*ok)++;
}

/* A SYNC read of block 5 from inside notify. */
static void sync_from_notify(int with_notify)
{
	static unsigned char b[BLK];
	int ok = 0;
	memset(b, 0, BLK);
	struct dm_io_region r = { dev[0], 5 * (BLK / 512), BLK / 512 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ | DM_IO_SYNC, vm_mem(b, 0),
					   with_notify ? sync_notify : NULL, &ok);
	int rc = dm_io(&c, 1, &r, NULL);
	sync_calls++;
	if (rc != 0 || (with_notify && ok != 1) || memcmp(b, blocks[5], BLK) != 0) {
		fprintf(stderr, "SYNC dm_io from notify: rc %d, ok %d\n", rc, ok);
		sync_failures++;
	}
}

static void notify(struct dm_io_region_state *st, void *ctx)
{
	struct slot *s = ctx;
	if (st->state == DM_IO_TIMEOUT)
		return;
	/* Everything under the lock: main submits the first Q holding it. */
	pthread_mutex_lock(&lock);
	if (st->state != DM_IO_OK)
		failed_regions++;
	if (--s->regions_left > 0) {
		pthread_mutex_unlock(&lock);
		return;
	}
	in_flight--;
	if (!writing && memcmp(s->buf, blocks[s->blk], BLK) != 0)
		bad_data++;
	completed++;
	pthread_cond_broadcast(&cond);
	if (completed % 250 == 0)
		sync_from_notify(completed % 500 == 0);
	if (submitted < TOTAL) {
		int rc = submit(s);
		if (rc) {
			fprintf(stderr, "dm_io from notify returned %d (%s)\n", rc, dm_io_last_error());
			submit_errors++;
			completed = TOTAL; /* stop waiting */
		}
	}
	pthread_mutex_unlock(&lock);
}

static void run(const char *what)
{
	submitted = completed = failed_regions = bad_data = submit_errors = 0;
	sync_calls = sync_failures = in_flight = max_in_flight = 0;
	pthread_mutex_lock(&lock);
	for (int i = 0; i < Q; i++) {
		slots[i].idx = i;
		CHECK_OK(submit(&slots[i]));
	}
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 30;
	while (completed < TOTAL)
		if (pthread_cond_timedwait(&cond, &lock, &ts) == ETIMEDOUT)
			break;
	int done = completed;
	pthread_mutex_unlock(&lock);
	CHECK(done == TOTAL, "%s: only %d of %d requests completed in 30 s (deadlock?)", what, done,
	      TOTAL);
	pthread_mutex_lock(&lock); /* the last callback is done */
	pthread_mutex_unlock(&lock);
	CHECK(submit_errors == 0, "%s: %d dm_io calls from notify failed", what, submit_errors);
	CHECK(failed_regions == 0, "%s: %d regions not OK", what, failed_regions);
	CHECK(bad_data == 0, "%s: %d reads returned wrong data", what, bad_data);
	CHECK(sync_calls >= 4 && sync_failures == 0, "%s: %d of %d SYNC calls from notify failed",
	      what, sync_failures, sync_calls);
	CHECK(max_in_flight == Q, "%s: depth reached %d, expected %d", what, max_in_flight, Q);
}

int main(void)
{
	const char *path[2];
	path[0] = make_file("r0", FILEBYTES);
	path[1] = make_file("r1", FILEBYTES);
	for (int b = 0; b < NBLK; b++)
		fill_pattern(blocks[b], BLK, 1000 + b);
	write_file(path[0], 0, blocks, FILEBYTES);
	for (int i = 0; i < 2; i++) {
		CHECK_OK(dm_io_bdev_open(path[i], 0, &dev[i]));
		check_block_size(dev[i]);
	}

	/* Reads, devices=1, min_ios=Q. */
	cl = make_client(1, Q, BLK);
	legs = 1;
	writing = 0;
	run("reads");
	dm_io_client_destroy(cl);

	/* Two-leg mirror writes, devices=2, min_ios=Q. New content first. */
	for (int b = 0; b < NBLK; b++)
		fill_pattern(blocks[b], BLK, 2000 + b);
	cl = make_client(2, Q, BLK);
	legs = 2;
	writing = 1;
	/* Block 5 must hold blocks[5] for the SYNC reads: write it first. */
	CHECK_OK(sync_io(cl, DM_IO_WRITE, dev[0], 5 * (BLK / 512), BLK / 512, blocks[5], 0));
	run("mirror writes");
	dm_io_client_destroy(cl);

	static unsigned char back[FILEBYTES];
	for (int i = 0; i < 2; i++) {
		read_file(path[i], 0, back, FILEBYTES);
		for (int b = 0; b < NBLK; b++) {
			int written = 0;
			for (int k = 0; k < TOTAL && !written; k++)
				written = (k * 37) % NBLK == b;
			if (written || (i == 0 && b == 5))
				CHECK(memcmp(back + (size_t)b * BLK, blocks[b], BLK) == 0,
				      "leg %d block %d differs", i, b);
		}
	}
	dm_io_bdev_close(dev[0]);
	dm_io_bdev_close(dev[1]);
	return 0;
}
