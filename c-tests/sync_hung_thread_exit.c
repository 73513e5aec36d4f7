/* A SYNC read stuck in the kernel (loop device over the hangfs FUSE
 * daemon, fixtures/hungdev.h; needs root, else skips), cancelled from
 * another thread: dm_io returns -ECANCELED at once in the caller's thread,
 * which then exits while its IO is still stuck. A client destroy does not
 * wait for that IO or that thread; once the IO is released the private
 * memory it held returns (private memory in use back to 0), and the device
 * detaches cleanly (nothing keeps it open). */
#include "helpers.h"
#include "hungdev.h"

#include <errno.h>
#include <string.h>

enum { DEV_BYTES = 16 << 20, LEN = 4096, SEED = 91 };
#define OFF (1ULL << 20)
#define HOLD "hold 1048576-1052671"

static struct block_device *dev;

struct victim {
	struct dm_io_client *cl;
	pthread_t th;
	atomic_int done;
	int rc;
	double ms;
	unsigned char buf[LEN];
};

static int sync_rw(struct dm_io_client *cl, int rw, void *buf)
{
	struct dm_io_region r = { dev, OFF / 512, LEN / 512 };
	struct dm_io_control c = {
		.memory = { .type = DM_IO_VM, .ptr.vma = buf },
		.rw = rw | DM_IO_SYNC,
		.client = cl,
		.timeout = 0,
	};
	return dm_io(&c, 1, &r, NULL);
}

static void *victim_main(void *arg)
{
	struct victim *v = arg;
	double t0 = now_ms();
	v->rc = sync_rw(v->cl, DM_IO_READ, v->buf);
	v->ms = now_ms() - t0;
	atomic_store(&v->done, 1);
	return NULL; /* the thread exits with its read still stuck */
}

static uint64_t in_use(struct dm_io_client *cl)
{
	struct dm_io_stats st;
	CHECK(dm_io_client_stats(cl, &st, sizeof st) == 0, "stats");
	return st.private_bytes_in_use;
}

/* Starts a victim on cl, waits until `held` requests are held, cancels
 * its request from this thread and checks that dm_io returned at once. */
static void stuck_and_cancelled(struct hungdev *h, struct victim *v, int held)
{
	char status[1024];
	memset(v->buf, 0xAB, LEN);
	CHECK(pthread_create(&v->th, NULL, victim_main, v) == 0, "pthread_create");
	CHECK(hungdev_wait_held_min(h, held, 3000), "the SYNC read never reached FUSE: %s",
	      hungdev_status(h, status, sizeof(status)));
	sleep_ms(50);
	CHECK(!atomic_load(&v->done), "SYNC read returned (%d) with its IO held", v->rc);
	double t0 = now_ms();
	int n = dm_io_cancel_by_device(v->cl, dev);
	CHECK(n == 1, "cancel_by_device returned %d", n);
	while (!atomic_load(&v->done) && now_ms() - t0 < 3000)
		sleep_ms(1);
	CHECK(atomic_load(&v->done), "SYNC read not ended 3 s after its cancel");
	CHECK(v->rc == -ECANCELED, "SYNC read returned %d, expected -ECANCELED", v->rc);
	CHECK(now_ms() - t0 < 1000, "cancel took %.0f ms", now_ms() - t0);
	CHECK(in_use(v->cl) > 0, "no private memory in use while the read is stuck");
}

int main(void)
{
	static unsigned char pattern[LEN], back[LEN];
	static struct victim a, b;
	char status[1024];

	struct hungdev *h = hungdev_up(DEV_BYTES);
	if (!h)
		skip(hungdev_skip_reason());
	const char *path = hungdev_path(h);
	CHECK_OK(dm_io_client_create(1, 4, 64 * 1024, &a.cl));
	CHECK_OK(dm_io_client_create(1, 4, 64 * 1024, &b.cl));
	CHECK_OK(dm_io_bdev_open(path, 0, &dev));

	fill_pattern(pattern, LEN, SEED);
	CHECK_OK(sync_rw(a.cl, DM_IO_WRITE, pattern));
	CHECK_OK(sync_rw(b.cl, DM_IO_READ, back));
	CHECK(check_pattern(back, LEN, SEED), "healthy read-back differs");

	CHECK_OK(hungdev_ctl(h, HOLD));
	stuck_and_cancelled(h, &a, 1);
	stuck_and_cancelled(h, &b, 2);

	/* Client a goes while its read is stuck and its thread is gone. */
	double t0 = now_ms();
	dm_io_client_destroy(a.cl);
	double el = now_ms() - t0;
	CHECK(el < 2000, "dm_io_client_destroy took %.0f ms with the IO stuck", el);
	CHECK(hungdev_held(h) >= 2, "held IO completed before the release");

	CHECK_OK(hungdev_ctl(h, "release"));
	CHECK(hungdev_wait_held(h, 0, 5000), "held IO not released: %s",
	      hungdev_status(h, status, sizeof(status)));
	pthread_join(a.th, NULL);
	pthread_join(b.th, NULL);
	t0 = now_ms();
	while (in_use(b.cl) != 0 && now_ms() - t0 < 5000)
		sleep_ms(5);
	CHECK(in_use(b.cl) == 0, "%llu bytes of private memory still in use after the release",
	      (unsigned long long)in_use(b.cl));
	CHECK(hungdev_inflight(h) == 0, "%d IO in flight after release", hungdev_inflight(h));
	for (int i = 0; i < LEN; i++)
		CHECK(a.buf[i] == 0xAB && b.buf[i] == 0xAB, "a cancelled read wrote its buffer");

	/* The device and client b still work. */
	memset(back, 0, LEN);
	CHECK_OK(sync_rw(b.cl, DM_IO_READ, back));
	CHECK(check_pattern(back, LEN, SEED), "read after release differs");

	dm_io_client_destroy(b.cl);
	dm_io_bdev_close(dev);
	/* Nothing (no ring left holding an op) keeps the device open. */
	sleep_ms(50);
	CHECK(hungdev_down_detached(h), "the loop device is still attached after hungdev_down");
	return 0;
}
