/* A SYNC request larger than the client's private memory, on a hung
 * device, still honours its deadline and cancellation: with max_size 64 KiB
 * and min_ios 2, a 1 MiB SYNC write (no notify, timeout 100 ms) whose
 * first operations hold all the private memory returns -ETIMEDOUT within
 * deadline + 2 s, and the same write without a timeout returns -ECANCELED
 * soon after dm_io_cancel_by_device from another thread. (Every region is
 * final by then; waiting for memory that only the hung device can release
 * would block the caller for as long as the device hangs.) */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { BIG = 1 << 20 };
static unsigned char data[BIG];
static struct dm_io_client *cl;
static struct block_device *dev;
static unsigned long timeout_ms;

static int big_sync_write(void *arg)
{
	(void)arg;
	struct dm_io_region r = { dev, 0, BIG / 512 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE | DM_IO_SYNC, vm_mem(data, 0), NULL, NULL);
	c.timeout = timeout_ms;
	return dm_io(&c, 1, &r, NULL);
}

/* Releases the device so a stuck dm_io can finish (the test then fails). */
static void release_stuck(struct bg *b, const char *what)
{
	dm_io_bdev_set_faults(dev, "");
	int done = bg_wait(b, 5000);
	fprintf(stderr, "%s: after releasing the device dm_io %s (rc %d)\n", what,
		done ? "returned" : "is still blocked", done ? b->rc : 0);
	CHECK(done, "dm_io still blocked after the device was released");
}

int main(void)
{
	struct bg b;
	int failed = 0;
	cl = make_client(1, 2, 64 * 1024);
	dev = make_faulty_dev("hung", 2 << 20, "hang", NULL);
	fill_pattern(data, BIG, 95);

	/* Deadline. */
	timeout_ms = 100;
	bg_start(&b, big_sync_write, NULL);
	if (!bg_wait(&b, 100 + 2000)) {
		fprintf(stderr, "FAIL: 1 MiB SYNC write with timeout 100 ms on a hung device has not "
				"returned after 2.1 s (expected -ETIMEDOUT)\n");
		release_stuck(&b, "deadline");
		failed = 1;
	} else if (b.rc != -ETIMEDOUT) {
		fprintf(stderr, "FAIL: deadline: returned %d, expected -ETIMEDOUT\n", b.rc);
		failed = 1;
	}
	CHECK_OK(dm_io_bdev_set_faults(dev, ""));
	sleep_ms(100);
	CHECK_OK(dm_io_bdev_set_faults(dev, "hang"));

	/* cancel_by_device from this thread. */
	timeout_ms = 0;
	bg_start(&b, big_sync_write, NULL);
	CHECK(!bg_wait(&b, 100), "SYNC write on a hung device returned %d", b.rc);
	int n = dm_io_cancel_by_device(cl, dev);
	CHECK(n == 1, "cancel_by_device returned %d, expected 1", n);
	if (!bg_wait(&b, 1500)) {
		fprintf(stderr, "FAIL: 1 MiB SYNC write still blocked 1.5 s after cancel_by_device "
				"(expected -ECANCELED)\n");
		release_stuck(&b, "cancel");
		failed = 1;
	} else if (b.rc != -ECANCELED) {
		fprintf(stderr, "FAIL: cancel: returned %d, expected -ECANCELED\n", b.rc);
		failed = 1;
	}
	CHECK_OK(dm_io_bdev_set_faults(dev, ""));
	sleep_ms(100);
	dm_io_client_destroy(cl);
	dm_io_bdev_close(dev);
	return failed;
}
