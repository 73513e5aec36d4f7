/* A write to 4 regions (4 files, a different sector on each, regions
 * larger than max_size so each is split into several operations) puts the
 * same bytes on every device: every region OK, and each device, read with
 * pread and through dm_io, holds the data at its sector and nothing
 * outside it. A region shorter than the others gets the first count
 * sectors of the memory. */
#include "helpers.h"
#include <string.h>

enum { N = 4, BYTES = 200 * 1024, DEVBYTES = 2 << 20, MAXSZ = 16 * 1024 };

int main(void)
{
	static const uint64_t sectors[N] = { 0, 8, 1024, 3000 };
	/* Region 3 is shorter: 72 KiB. */
	static const uint64_t counts[N] = { BYTES / 512, BYTES / 512, BYTES / 512, 144 };
	static unsigned char data[BYTES], back[DEVBYTES];
	struct block_device *dev[N];
	struct dm_io_region reg[N];
	const char *path[N];
	char name[16];

	struct dm_io_client *cl = make_client(N, 2, MAXSZ);
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "m%d", i);
		path[i] = make_file(name, DEVBYTES);
		CHECK_OK(dm_io_bdev_open(path[i], 0, &dev[i]));
		check_block_size(dev[i]);
		reg[i] = (struct dm_io_region){ dev[i], sectors[i], counts[i] };
	}
	fill_pattern(data, BYTES, 77);
	struct tracker t;
	tracker_init(&t, N);
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c, N, reg, NULL));
	CHECK(tracker_wait(&t, 10000), "regions did not finish");
	tracker_check(&t);
	for (int i = 0; i < N; i++) {
		CHECK(t.final_state[i] == DM_IO_OK, "region %d state %d err %d", i, t.final_state[i],
		      t.final_error[i]);
		CHECK(t.timeouts[i] == 0, "region %d got a TIMEOUT without a timeout", i);
	}
	CHECK(check_pattern(data, BYTES, 77), "the write modified the caller's memory");

	for (int i = 0; i < N; i++) {
		size_t at = sectors[i] * 512, len = counts[i] * 512;
		read_file(path[i], 0, back, DEVBYTES);
		CHECK(memcmp(back + at, data, len) == 0, "device %d: data differs (pread)", i);
		for (size_t j = 0; j < DEVBYTES; j++)
			if (j < at || j >= at + len)
				CHECK(back[j] == 0, "device %d: byte %zu outside the region written", i, j);
		memset(back, 0, len);
		CHECK_OK(sync_io(cl, DM_IO_READ, dev[i], sectors[i], counts[i], back, 0));
		CHECK(memcmp(back, data, len) == 0, "device %d: data differs (dm_io read)", i);
	}
	dm_io_client_destroy(cl);
	for (int i = 0; i < N; i++)
		dm_io_bdev_close(dev[i]);
	return 0;
}
