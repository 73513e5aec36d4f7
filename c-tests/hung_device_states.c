/* hung_device_states: the rest of the promises on a REALLY hung kernel
 * device (loop device with direct IO over a FUSE file whose handler holds
 * the IO; see fixtures/hungdev.h):
 *  1. a write stuck in the kernel gets TIMEOUT at its deadline, and after
 *     the device is released the same region is notified once more with
 *     its final state (OK), nothing after that; the data is on the device;
 *  2. with DM_IO_CANCEL_ON_TIMEOUT the stuck region ends CANCELLED
 *     (-ETIMEDOUT) with no TIMEOUT before it, while the healthy leg of the
 *     same mirror write is OK;
 *  3. dm_io_cancel_by_device frees a SYNC caller blocked on the device
 *     (it returns -ECANCELED while the kernel IO is still stuck);
 *  4. EIO from the device arrives as ERROR with error_code -EIO. */
#include "helpers.h"
#include "hungdev.h"

#include <errno.h>
#include <string.h>

#define DEV_BYTES (8u << 20)
#define BYTES 4096u
#define OFF (1u << 20)

static struct dm_io_client *cl;
static struct block_device *stuck, *healthy;
static unsigned char data[BYTES], back[BYTES];

static int sync_read(void *arg)
{
	(void)arg;
	struct dm_io_region r = { stuck, OFF / 512, BYTES / 512 };
	struct dm_io_control c = {
		.memory = { .type = DM_IO_VM, .ptr.vma = back },
		.rw = DM_IO_READ | DM_IO_SYNC,
		.client = cl,
	};
	return dm_io(&c, 1, &r, NULL);
}

int main(void)
{
	struct hungdev *h = hungdev_up(DEV_BYTES);
	if (!h)
		skip(hungdev_skip_reason());
	char st[512];
	CHECK_OK(dm_io_client_create(2, 4, 64 * 1024, &cl));
	CHECK_OK(dm_io_bdev_open(hungdev_path(h), 0, &stuck));
	healthy = make_dev("healthy", DEV_BYTES);
	fill_pattern(data, BYTES, 77);

	/* 1. TIMEOUT, then the real end after release. */
	CHECK_OK(hungdev_ctl(h, "hold write all"));
	struct dm_io_region w = { stuck, OFF / 512, BYTES / 512 };
	struct tracker t;
	tracker_init(&t, 1);
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	/* 300 ms: the healthy leg of part 2 must beat it under valgrind on a
	 * loaded machine. */
	c.timeout = 300;
	double t0 = now_ms();
	CHECK_OK(dm_io(&c, 1, &w, NULL));
	CHECK(tracker_wait_timeout(&t, 0, 3000), "no TIMEOUT for a write stuck in the kernel");
	double at = now_ms() - t0;
	CHECK(at >= 290 && at < 3000, "TIMEOUT after %.0f ms (deadline 300 ms)", at);
	CHECK(hungdev_wait_held(h, 1, 3000), "write not held in FUSE: %s", hungdev_status(h, st, sizeof st));
	CHECK(t.finals == 0, "final state before release");
	sleep_ms(200);
	CHECK(t.finals == 0, "final state while the kernel IO is stuck");
	CHECK_OK(hungdev_ctl(h, "release"));
	CHECK(tracker_wait(&t, 5000), "no final state after release");
	tracker_check(&t);
	CHECK(t.timeouts[0] == 1 && t.final_state[0] == DM_IO_OK, "timeouts %d final %d", t.timeouts[0],
	      t.final_state[0]);
	sleep_ms(100);
	tracker_check(&t);
	struct dm_io_control rd = {
		.memory = { .type = DM_IO_VM, .ptr.vma = back },
		.rw = DM_IO_READ | DM_IO_SYNC,
		.client = cl,
	};
	CHECK_OK(dm_io(&rd, 1, &w, NULL));
	CHECK(memcmp(back, data, BYTES) == 0, "late write not on the device");

	/* 2. CANCEL_ON_TIMEOUT on a mirror with one stuck leg. */
	CHECK_OK(hungdev_ctl(h, "hold write all"));
	struct dm_io_region m[2] = { { healthy, OFF / 512, BYTES / 512 }, { stuck, OFF / 512, BYTES / 512 } };
	tracker_init(&t, 2);
	c.flags = DM_IO_CANCEL_ON_TIMEOUT;
	CHECK_OK(dm_io(&c, 2, m, NULL));
	CHECK(tracker_wait(&t, 3000), "mirror write not final after its deadline");
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_OK && t.timeouts[0] == 0, "healthy leg %d", t.final_state[0]);
	CHECK(t.final_state[1] == DM_IO_CANCELLED && t.final_error[1] == -ETIMEDOUT && t.timeouts[1] == 0,
	      "stuck leg %d/%d with %d TIMEOUTs", t.final_state[1], t.final_error[1], t.timeouts[1]);
	CHECK(hungdev_held(h) >= 1, "the cancelled write is not stuck any more: %s",
	      hungdev_status(h, st, sizeof st));
	CHECK_OK(hungdev_ctl(h, "release"));
	CHECK(hungdev_wait_held(h, 0, 5000), "not released: %s", hungdev_status(h, st, sizeof st));
	sleep_ms(50);
	tracker_check(&t);

	/* 3. cancel_by_device frees a SYNC caller. */
	CHECK_OK(hungdev_ctl(h, "hold read all"));
	memset(back, 0xAB, BYTES);
	struct bg b;
	bg_start(&b, sync_read, NULL);
	CHECK(hungdev_wait_held(h, 1, 3000), "SYNC read not held: %s", hungdev_status(h, st, sizeof st));
	sleep_ms(50);
	int n = dm_io_cancel_by_device(cl, stuck);
	CHECK(n == 1, "cancel_by_device returned %d", n);
	CHECK(bg_wait(&b, 2000), "SYNC caller still blocked after cancel_by_device");
	CHECK(b.rc == -ECANCELED, "SYNC read returned %d", b.rc);
	CHECK(hungdev_held(h) == 1, "kernel IO should still be stuck");
	CHECK_OK(hungdev_ctl(h, "release"));
	CHECK(hungdev_wait_held(h, 0, 5000), "not released");
	sleep_ms(100);
	for (unsigned i = 0; i < BYTES; i++)
		CHECK(back[i] == 0xAB, "cancelled SYNC read wrote byte %u", i);

	/* 4. EIO from the device. */
	CHECK_OK(hungdev_ctl(h, "fail read all"));
	tracker_init(&t, 1);
	struct dm_io_control e = make_ctrl(cl, DM_IO_READ, vm_mem(back, 0), tracker_notify, &t);
	e.timeout = 2000;
	CHECK_OK(dm_io(&e, 1, &w, NULL));
	CHECK(tracker_wait(&t, 5000), "failing read not final");
	CHECK(t.final_state[0] == DM_IO_ERROR && t.final_error[0] == -EIO, "state %d error %d",
	      t.final_state[0], t.final_error[0]);
	CHECK_OK(hungdev_ctl(h, "clear"));

	dm_io_client_destroy(cl);
	dm_io_bdev_close(stuck);
	dm_io_bdev_close(healthy);
	hungdev_down(h);
	return 0;
}
