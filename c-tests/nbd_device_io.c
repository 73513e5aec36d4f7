/* An NBD export (nbdkit's memory plugin over a unix socket) as a device:
 * its size and block size, writes (plain, FUA, after a flush) and reads
 * longer than the server's maximum block (split into several requests),
 * a two-leg write to a local file and the export, an empty flush, and
 * connections=4. */
#include "helpers.h"
#include "nbdserver.h"
#include <errno.h>
#include <string.h>

enum { BYTES = 256 * 1024, S = BYTES / 512 };
static unsigned char data[BYTES], back[BYTES];

int main(void)
{
	/* maxblock 64K: a 256K region needs four requests per op. */
	const char *args[] = { "--filter=blocksize-policy", "memory", "16M",
			       "blocksize-maximum=64K", "blocksize-preferred=4096", NULL };
	struct nbdserver *srv = nbdserver_start(args);
	struct block_device *nbd;
	CHECK_OK(dm_io_bdev_open(nbdserver_uri(srv), 0, &nbd));
	CHECK(dm_io_bdev_sectors(nbd) == (16u << 20) / 512, "sectors %llu",
	      (unsigned long long)dm_io_bdev_sectors(nbd));
	CHECK(dm_io_bdev_block_size(nbd) == 512, "block size %u", dm_io_bdev_block_size(nbd));

	struct dm_io_client *cl = make_client(2, 4, 128 * 1024);
	const char *lpath;
	struct block_device *local = make_faulty_dev("local", 1 << 20, "", &lpath);

	/* SYNC write then read back. */
	fill_pattern(data, BYTES, 1);
	CHECK_OK(sync_io(cl, DM_IO_WRITE, nbd, 8, S, data, 0));
	memset(back, 0, BYTES);
	CHECK_OK(sync_io(cl, DM_IO_READ, nbd, 8, S, back, 0));
	CHECK(memcmp(back, data, BYTES) == 0, "read back differs");

	/* Asynchronous FUA write after a flush, to the file and the export. */
	fill_pattern(data, BYTES, 2);
	struct tracker t;
	tracker_init(&t, 2);
	struct dm_io_region legs[2] = { { local, 0, S }, { nbd, 1000, S } };
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE | DM_IO_FLUSH | DM_IO_FUA,
					   vm_mem(data, 0), tracker_notify, &t);
	c.timeout = 5000;
	CHECK_OK(dm_io(&c, 2, legs, NULL));
	CHECK(tracker_wait(&t, 10000), "two-leg write did not finish");
	tracker_check(&t);
	CHECK(tracker_count(&t, DM_IO_OK) == 2, "legs: %d/%d, %d/%d", t.final_state[0],
	      t.final_error[0], t.final_state[1], t.final_error[1]);
	read_file(lpath, 0, back, BYTES);
	CHECK(memcmp(back, data, BYTES) == 0, "local leg differs");
	memset(back, 0, BYTES);
	CHECK(async_io_one(cl, DM_IO_READ, vm_mem(back, 0), nbd, 1000, S) == 0, "async read");
	CHECK(memcmp(back, data, BYTES) == 0, "async read differs");
	memset(back, 0, BYTES);
	CHECK_OK(sync_io(cl, DM_IO_READ, nbd, 1000, S, back, 0));
	CHECK(memcmp(back, data, BYTES) == 0, "NBD leg differs");

	/* An empty flush (count 0 with DM_IO_FLUSH). */
	struct dm_io_region fl = { nbd, 0, 0 };
	c = make_ctrl(cl, DM_IO_WRITE | DM_IO_FLUSH | DM_IO_SYNC, vm_mem(data, 0), NULL, NULL);
	CHECK_OK(dm_io(&c, 1, &fl, NULL));

	/* Past the end is refused like on a local device. */
	struct dm_io_region end = { nbd, dm_io_bdev_sectors(nbd) - 8, 16 };
	c = make_ctrl(cl, DM_IO_READ | DM_IO_SYNC, vm_mem(back, 0), NULL, NULL);
	CHECK(dm_io(&c, 1, &end, NULL) == -EINVAL, "read past the end accepted");

	/* connections=4 (nbdkit's memory plugin advertises multi-conn): ops
	 * are spread over four connections; a read sees every write. */
	char uri[400];
	snprintf(uri, sizeof uri, "%s&connections=4", nbdserver_uri(srv));
	struct block_device *multi;
	CHECK_OK(dm_io_bdev_open(uri, 0, &multi));
	for (unsigned i = 0; i < 8; i++) {
		fill_pattern(data, BYTES, 100 + i);
		CHECK_OK(sync_io(cl, DM_IO_WRITE, multi, 4096 + i * S, S, data, 0));
	}
	for (unsigned i = 0; i < 8; i++) {
		fill_pattern(data, BYTES, 100 + i);
		CHECK_OK(sync_io(cl, DM_IO_READ, nbd, 4096 + i * S, S, back, 0));
		CHECK(memcmp(back, data, BYTES) == 0, "connections=4: block %u differs", i);
	}
	dm_io_bdev_close(multi);

	dm_io_client_destroy(cl);
	dm_io_bdev_close(local);
	dm_io_bdev_close(nbd);
	nbdserver_stop(srv);
	return 0;
}
