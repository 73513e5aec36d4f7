/* A held write times out (TIMEOUT, -ETIMEDOUT), then the device starts
 * failing ("error writes errno=EIO" replaces "hang", so the held IO is
 * decided again): the region ends ERROR with -EIO, after exactly one
 * TIMEOUT. The same with a custom errno (ENOSPC) on a read. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { BYTES = 16 * 1024, S = BYTES / 512 };
static unsigned char data[BYTES];

static void one(struct dm_io_client *cl, struct block_device *dev, int rw, const char *fail,
		int err)
{
	struct tracker t;
	tracker_init(&t, 1);
	CHECK_OK(dm_io_bdev_set_faults(dev, "hang"));
	struct dm_io_region r = { dev, 8, S };
	struct dm_io_control c = make_ctrl(cl, rw, vm_mem(data, 0), tracker_notify, &t);
	c.timeout = 50;
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	CHECK(tracker_wait_timeout(&t, 0, 50 + 2000), "no TIMEOUT within deadline + 2 s");
	CHECK(tracker_finals(&t) == 0, "final state before the device was changed");
	CHECK_OK(dm_io_bdev_set_faults(dev, fail));
	CHECK(tracker_wait(&t, 2000), "no final state after '%s'", fail);
	tracker_check(&t);
	CHECK(t.timeouts[0] == 1, "%d TIMEOUTs", t.timeouts[0]);
	CHECK(t.final_state[0] == DM_IO_ERROR && t.final_error[0] == err,
	      "after '%s': state %d error %d (expected ERROR %d)", fail, t.final_state[0],
	      t.final_error[0], err);
}

int main(void)
{
	struct dm_io_client *cl = make_client(1, 4, 64 * 1024);
	struct block_device *dev = make_faulty_dev("d", 1 << 20, "", NULL);
	fill_pattern(data, BYTES, 31);
	one(cl, dev, DM_IO_WRITE, "error writes errno=EIO", -EIO);
	one(cl, dev, DM_IO_READ, "error reads errno=ENOSPC", -ENOSPC);
	CHECK_OK(dm_io_bdev_set_faults(dev, ""));
	CHECK_OK(sync_io(cl, DM_IO_WRITE, dev, 8, S, data, 0));
	dm_io_client_destroy(cl);
	dm_io_bdev_close(dev);
	return 0;
}
