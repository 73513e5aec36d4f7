/* DM_IO_SYNC without notify: dm_io returns 0 when every region is OK; a
 * negative errno (-EIO) when one leg of a two-region write fails; and with
 * a timeout on a hung device, -ETIMEDOUT soon after the deadline (the
 * regions are cancelled automatically) instead of waiting for the device,
 * for a write and for a read. An ERROR takes precedence over a region
 * cancelled at its deadline. The device is then released and still works. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { BYTES = 32 * 1024, S = BYTES / 512 };
static unsigned char data[BYTES], back[BYTES];

static int sync_write(struct dm_io_client *cl, unsigned n, struct dm_io_region *r,
		      unsigned long timeout)
{
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE | DM_IO_SYNC, vm_mem(data, 0), NULL, NULL);
	c.timeout = timeout;
	return dm_io(&c, n, r, NULL);
}

int main(void)
{
	const char *pa, *pb;
	struct dm_io_client *cl = make_client(2, 4, 64 * 1024);
	struct block_device *a = make_faulty_dev("a", 1 << 20, "", &pa);
	struct block_device *b = make_faulty_dev("b", 1 << 20, "", &pb);
	struct dm_io_region w[2] = { { a, 8, S }, { b, 8, S } };

	fill_pattern(data, BYTES, 5);
	CHECK_OK(sync_write(cl, 2, w, 0));
	read_file(pb, 8 * 512, back, BYTES);
	CHECK(memcmp(back, data, BYTES) == 0, "device b differs");
	CHECK_OK(sync_io(cl, DM_IO_READ, a, 8, S, back, 0));
	CHECK(memcmp(back, data, BYTES) == 0, "read differs");

	/* One failing leg. */
	CHECK_OK(dm_io_bdev_set_faults(b, "error writes errno=EIO"));
	int rc = sync_write(cl, 2, w, 0);
	CHECK(rc == -EIO, "write with a failing leg returned %d, expected -EIO", rc);
	rc = sync_write(cl, 1, &w[0], 0);
	CHECK(rc == 0, "write to the healthy leg alone returned %d", rc);

	/* Hung device with a timeout: -ETIMEDOUT near the deadline. */
	CHECK_OK(dm_io_bdev_set_faults(b, "hang"));
	double t0 = now_ms();
	rc = sync_write(cl, 2, w, 100);
	double took = now_ms() - t0;
	CHECK(rc == -ETIMEDOUT, "write on a hung leg returned %d, expected -ETIMEDOUT", rc);
	CHECK(took < 100 + 2000, "write took %.0f ms for a 100 ms timeout", took);

	struct dm_io_region rr = { b, 8, S };
	struct dm_io_control rc_ = make_ctrl(cl, DM_IO_READ | DM_IO_SYNC, vm_mem(back, 0), NULL, NULL);
	rc_.timeout = 100;
	t0 = now_ms();
	rc = dm_io(&rc_, 1, &rr, NULL);
	took = now_ms() - t0;
	CHECK(rc == -ETIMEDOUT, "read on a hung device returned %d, expected -ETIMEDOUT", rc);
	CHECK(took < 100 + 2000, "read took %.0f ms for a 100 ms timeout", took);

	/* ERROR on one leg beats the other leg's cancellation at the deadline. */
	CHECK_OK(dm_io_bdev_set_faults(a, "error writes errno=EIO"));
	rc = sync_write(cl, 2, w, 100);
	CHECK(rc == -EIO, "ERROR + timed-out leg returned %d, expected -EIO", rc);

	/* Release: the held IO ends, the devices work again. */
	CHECK_OK(dm_io_bdev_set_faults(a, ""));
	CHECK_OK(dm_io_bdev_set_faults(b, ""));
	sleep_ms(100);
	fill_pattern(data, BYTES, 6);
	CHECK_OK(sync_write(cl, 2, w, 1000));
	read_file(pa, 8 * 512, back, BYTES);
	CHECK(memcmp(back, data, BYTES) == 0, "device a differs after release");
	read_file(pb, 8 * 512, back, BYTES);
	CHECK(memcmp(back, data, BYTES) == 0, "device b differs after release");

	dm_io_client_destroy(cl);
	dm_io_bdev_close(a);
	dm_io_bdev_close(b);
	return 0;
}
