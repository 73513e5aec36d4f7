/* Regions much larger than the client's private memory: with max_size
 * 64 KiB and min_ios 2, a 4 MiB write (asynchronous) and a 4 MiB read
 * (SYNC and asynchronous) are split into 64 operations that wait for
 * private memory in turn, and end OK with every byte right (checked with
 * pread and by reading back). The same for a 2-leg mirrored 4 MiB write. */
#include "helpers.h"
#include <string.h>

enum { BIG = 4 << 20, S = BIG / 512, MAXSZ = 64 * 1024 };

static void async_io(struct dm_io_client *cl, int rw, void *buf, unsigned n,
		     struct dm_io_region *r, const char *what)
{
	struct tracker t;
	tracker_init(&t, n);
	struct dm_io_control c = make_ctrl(cl, rw, vm_mem(buf, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c, n, r, NULL));
	CHECK(tracker_wait(&t, 20000), "%s did not finish", what);
	tracker_check(&t);
	for (unsigned i = 0; i < n; i++)
		CHECK(t.final_state[i] == DM_IO_OK, "%s: region %u state %d error %d", what, i,
		      t.final_state[i], t.final_error[i]);
}

int main(void)
{
	unsigned char *data = malloc(BIG), *back = malloc(BIG);
	CHECK(data && back, "malloc");
	const char *p0 = make_file("big0", BIG + (1 << 20));
	const char *p1 = make_file("big1", BIG + (1 << 20));
	struct block_device *d0, *d1;
	CHECK_OK(dm_io_bdev_open(p0, 0, &d0));
	CHECK_OK(dm_io_bdev_open(p1, 0, &d1));
	check_block_size(d0);

	struct dm_io_client *cl = make_client(1, 2, MAXSZ);
	fill_pattern(data, BIG, 91);
	struct dm_io_region r = { d0, 1024, S };
	async_io(cl, DM_IO_WRITE, data, 1, &r, "4 MiB write");
	read_file(p0, 1024 * 512, back, BIG);
	CHECK(memcmp(back, data, BIG) == 0, "4 MiB write: file differs");

	memset(back, 0, BIG);
	CHECK_OK(sync_io(cl, DM_IO_READ, d0, 1024, S, back, 0));
	CHECK(memcmp(back, data, BIG) == 0, "4 MiB SYNC read differs");
	memset(back, 0, BIG);
	async_io(cl, DM_IO_READ, back, 1, &r, "4 MiB read");
	CHECK(memcmp(back, data, BIG) == 0, "4 MiB async read differs");
	dm_io_client_destroy(cl);

	cl = make_client(2, 2, MAXSZ);
	fill_pattern(data, BIG, 92);
	struct dm_io_region m[2] = { { d0, 0, S }, { d1, 2048, S } };
	async_io(cl, DM_IO_WRITE, data, 2, m, "4 MiB mirrored write");
	read_file(p0, 0, back, BIG);
	CHECK(memcmp(back, data, BIG) == 0, "mirrored write: leg 0 differs");
	read_file(p1, 2048 * 512, back, BIG);
	CHECK(memcmp(back, data, BIG) == 0, "mirrored write: leg 1 differs");
	memset(back, 0, BIG);
	CHECK_OK(sync_io(cl, DM_IO_READ, d1, 2048, S, back, 0));
	CHECK(memcmp(back, data, BIG) == 0, "mirrored write: dm_io read of leg 1 differs");
	dm_io_client_destroy(cl);

	dm_io_bdev_close(d0);
	dm_io_bdev_close(d1);
	free(data);
	free(back);
	return 0;
}
