/* queue_depth_shared: many rings share one disk's queue depth without
 * losing a wake-up (issue 19; src/device/slots.rs).
 *
 * Each ring keeps a block device's ops in the kernel within its disk's
 * nr_requests, counted across every ring of the process; an op past it
 * waits in its ring until another ring's completion gives a slot back and
 * wakes it. Here the depth is 2 and three kinds of rings compete for it
 * at once: asynchronous reads of one client (the reactor, and the
 * completion thread's ring, since each notify submits the next read),
 * three threads of SYNC reads and one of SYNC writes of 8 regions each
 * (each thread's own ring). Every IO must end OK, once, with the right
 * data, within a generous bound; a lost wake-up leaves IO waiting for
 * good. */
#include "helpers.h"
#include "loopdev.h"

#include <string.h>

#define BS 4096u
#define BLOCKS 256 /* 1 MiB of patterns */
#define ASYNC_QD 8
#define ASYNC_READS 10000
#define SYNC_CALLS 600
#define SYNC_REGIONS 8

static struct block_device *dev;
static struct dm_io_client *acl;
static int bound;

/* ---- the asynchronous reader: each notify submits the next read ---- */
static unsigned char abufs[ASYNC_QD][BS] __attribute__((aligned(4096)));
static unsigned ablock[ASYNC_QD]; /* the block each slot reads now */
static atomic_int issued, ended, bad;

static void submit_async(int slot);

static void async_notify(struct dm_io_region_state *st, void *ctx)
{
	int slot = (int)(intptr_t)ctx;
	if (st->state == DM_IO_TIMEOUT)
		return;
	unsigned block = ablock[slot];
	if (st->state != DM_IO_OK || !check_pattern(abufs[slot], BS, block))
		atomic_fetch_add(&bad, 1);
	atomic_fetch_add(&ended, 1);
	submit_async(slot);
}

static void submit_async(int slot)
{
	int n = atomic_fetch_add(&issued, 1);
	if (n >= ASYNC_READS)
		return;
	unsigned block = (unsigned)(n * 7 + slot) % BLOCKS;
	ablock[slot] = block;
	struct dm_io_region r = { dev, (uint64_t)block * (BS / 512), BS / 512 };
	struct dm_io_control c =
		make_ctrl(acl, DM_IO_READ, vm_mem(abufs[slot], 0), async_notify, (void *)(intptr_t)slot);
	int rc = dm_io(&c, 1, &r, NULL);
	if (rc != 0) {
		fprintf(stderr, "dm_io from notify: %d\n", rc);
		atomic_fetch_add(&bad, 1);
		atomic_fetch_add(&ended, 1);
	}
}

/* ---- SYNC threads, each on its own ring: readers of one region per
 * call, and a writer of 8 regions per call (a mirror-like write: 8 ops of
 * one ring, past the depth) into the second half of the device ---- */
struct syncer {
	struct dm_io_client *cl;
	unsigned seed;
	unsigned char buf[BS] __attribute__((aligned(4096)));
};

static int sync_reader(void *arg)
{
	struct syncer *s = arg;
	for (int call = 0; call < SYNC_CALLS; call++) {
		unsigned block = (s->seed + (unsigned)call * 11) % BLOCKS;
		int rc = sync_io(s->cl, DM_IO_READ, dev, (uint64_t)block * (BS / 512), BS / 512, s->buf, 0);
		if (rc != 0) {
			fprintf(stderr, "SYNC read: %d (%s)\n", rc, dm_io_last_error());
			return 1;
		}
		if (!check_pattern(s->buf, BS, block)) {
			fprintf(stderr, "SYNC read of block %u: wrong data\n", block);
			return 1;
		}
	}
	return 0;
}

/* The write area's block that region i of write call `call` writes. */
static unsigned write_block(int call, int i)
{
	return BLOCKS + (unsigned)(call * SYNC_REGIONS + i) % BLOCKS;
}

static int sync_writer(void *arg)
{
	struct syncer *s = arg;
	for (int call = 0; call < SYNC_CALLS; call++) {
		struct dm_io_region r[SYNC_REGIONS];
		for (int i = 0; i < SYNC_REGIONS; i++)
			r[i] = (struct dm_io_region){ dev, (uint64_t)write_block(call, i) * (BS / 512),
						      BS / 512 };
		fill_pattern(s->buf, BS, 100000u + (unsigned)call);
		struct dm_io_control c =
			make_ctrl(s->cl, DM_IO_WRITE | DM_IO_SYNC, vm_mem(s->buf, 0), NULL, NULL);
		int rc = dm_io(&c, SYNC_REGIONS, r, NULL);
		if (rc != 0) {
			fprintf(stderr, "SYNC write: %d (%s)\n", rc, dm_io_last_error());
			return 1;
		}
	}
	return 0;
}

int main(void)
{
	const char *loop = loopdev_up(2 * BLOCKS * BS);
	if (!loop)
		skip(loopdev_skip_reason());
	atexit(loopdev_restore_depths);
	CHECK(loopdev_set_depth(loop, "2") == 0, "cannot set nr_requests of %s", loop);
	bound = getenv("DMIO_TEST_INSTRUMENTED") ? 120000 : 20000;

	CHECK_OK(dm_io_bdev_open(loop, 0, &dev));
	check_block_size(dev);
	acl = make_client(1, ASYNC_QD, BS);
	struct dm_io_client *wcl = make_client(1, 16, BS);

	/* The patterns, written through the library (at depth 2 already). */
	static unsigned char wbuf[BS] __attribute__((aligned(4096)));
	for (unsigned b = 0; b < BLOCKS; b++) {
		fill_pattern(wbuf, BS, b);
		CHECK_OK(sync_io(wcl, DM_IO_WRITE, dev, (uint64_t)b * (BS / 512), BS / 512, wbuf, 0));
	}

	static struct syncer rd[3], wr;
	struct bg brd[3], bwr;
	for (int i = 0; i < 3; i++) {
		rd[i].cl = make_client(1, 1, BS);
		rd[i].seed = 3 + 97u * (unsigned)i;
	}
	wr.cl = make_client(SYNC_REGIONS, 1, BS);
	double t0 = now_ms();
	for (int i = 0; i < ASYNC_QD; i++)
		submit_async(i);
	for (int i = 0; i < 3; i++)
		bg_start(&brd[i], sync_reader, &rd[i]);
	bg_start(&bwr, sync_writer, &wr);

	for (int i = 0; i < 3; i++) {
		CHECK(bg_wait(&brd[i], bound), "SYNC reader %d did not finish within %d ms", i, bound);
		CHECK(brd[i].rc == 0, "SYNC reader %d failed", i);
	}
	CHECK(bg_wait(&bwr, bound), "SYNC writer did not finish within %d ms", bound);
	CHECK(bwr.rc == 0, "SYNC writer failed");
	double end = now_ms() + bound;
	while (atomic_load(&ended) < ASYNC_READS && now_ms() < end)
		sleep_ms(2);
	fprintf(stderr, "%d async reads, %d SYNC reads and %d SYNC writes at depth 2 in %.0f ms\n",
		atomic_load(&ended), 3 * SYNC_CALLS, SYNC_CALLS * SYNC_REGIONS, now_ms() - t0);
	CHECK(atomic_load(&ended) == ASYNC_READS, "only %d of %d async reads ended within %d ms",
	      atomic_load(&ended), ASYNC_READS, bound);
	CHECK(atomic_load(&bad) == 0, "%d async reads failed or read wrong data", atomic_load(&bad));
	sleep_ms(20);
	CHECK(atomic_load(&ended) == ASYNC_READS, "%d async reads ended (exactly once: %d)",
	      atomic_load(&ended), ASYNC_READS);

	/* The write area holds what the last call writing each block wrote. */
	for (unsigned k = 0; k < BLOCKS; k++) {
		int last = -1;
		for (int call = 0; call < SYNC_CALLS; call++)
			for (int i = 0; i < SYNC_REGIONS; i++)
				if (write_block(call, i) == BLOCKS + k)
					last = call;
		if (last < 0)
			continue;
		CHECK_OK(sync_io(wcl, DM_IO_READ, dev, (uint64_t)(BLOCKS + k) * (BS / 512), BS / 512, wbuf, 0));
		CHECK(check_pattern(wbuf, BS, 100000u + (unsigned)last), "block %u of the write area", BLOCKS + k);
	}

	dm_io_client_destroy(acl);
	dm_io_client_destroy(wcl);
	for (int i = 0; i < 3; i++)
		dm_io_client_destroy(rd[i].cl);
	dm_io_client_destroy(wr.cl);
	dm_io_bdev_close(dev);
	loopdev_restore_depths();
	loopdev_down(loop);
	return 0;
}
