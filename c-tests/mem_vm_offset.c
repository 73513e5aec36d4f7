/* DM_IO_VM memory with a non-zero (and unaligned) offset: a write takes
 * exactly the bytes at vma + offset (checked with pread of the file and by
 * reading back through dm_io), a read fills exactly vma + offset ..
 * + length and leaves the bytes around it untouched. Regions are larger
 * than max_size, so the offset also crosses the split points. */
#include "helpers.h"
#include <string.h>

enum { LEN = 5 * 4096, SECTORS = LEN / 512, GUARD = 64 };

static void check_canary(const unsigned char *b, size_t from, size_t to, unsigned char v,
			 const char *what)
{
	for (size_t i = from; i < to; i++)
		CHECK(b[i] == v, "%s: byte %zu changed to %#x (expected canary %#x)", what, i, b[i], v);
}

int main(void)
{
	static const unsigned offsets[] = { 1, 3, 511, 4096, 5001 };
	const char *path = make_file("vm", 1 << 20);
	struct block_device *dev;
	CHECK_OK(dm_io_bdev_open(path, 0, &dev));
	check_block_size(dev);
	struct dm_io_client *cl = make_client(1, 2, 8192);
	unsigned char *buf = malloc(8192 + LEN + GUARD);
	unsigned char *back = malloc(LEN);
	CHECK(buf && back, "malloc");

	for (unsigned k = 0; k < sizeof(offsets) / sizeof(offsets[0]); k++) {
		unsigned off = offsets[k];
		uint64_t sector = 8 + 128 * (uint64_t)k;
		size_t total = off + LEN + GUARD;

		/* Write (asynchronous), from buf + off. */
		memset(buf, 0xCD, total);
		fill_pattern(buf + off, LEN, 100 + k);
		struct tracker t;
		tracker_init(&t, 1);
		struct dm_io_region r = { dev, sector, SECTORS };
		struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(buf, off), tracker_notify, &t);
		CHECK_OK(dm_io(&c, 1, &r, NULL));
		CHECK(tracker_wait(&t, 10000), "write did not finish");
		tracker_check(&t);
		CHECK(t.final_state[0] == DM_IO_OK, "write: state %d error %d", t.final_state[0],
		      t.final_error[0]);
		check_canary(buf, 0, off, 0xCD, "write: caller memory before offset");
		CHECK(check_pattern(buf + off, LEN, 100 + k), "write modified the caller's data");
		read_file(path, sector * 512, back, LEN);
		CHECK(check_pattern(back, LEN, 100 + k), "offset %u: file content differs after write", off);

		/* The same sectors read back through dm_io, at another offset. */
		unsigned off2 = off + 7;
		memset(buf, 0xEE, off2 + LEN + GUARD);
		CHECK_OK(sync_io(cl, DM_IO_READ, dev, sector, SECTORS, buf, off2));
		check_canary(buf, 0, off2, 0xEE, "read-back: before offset");
		CHECK(check_pattern(buf + off2, LEN, 100 + k), "offset %u: dm_io read-back differs", off2);
		check_canary(buf, off2 + LEN, off2 + LEN + GUARD, 0xEE, "read-back: after the data");

		/* Read (SYNC) of data written with pwrite, into buf + off. */
		fill_pattern(back, LEN, 200 + k);
		write_file(path, (sector + 64) * 512, back, LEN);
		memset(buf, 0xAB, total);
		CHECK_OK(sync_io(cl, DM_IO_READ, dev, sector + 64, SECTORS, buf, off));
		check_canary(buf, 0, off, 0xAB, "read: before offset");
		CHECK(check_pattern(buf + off, LEN, 200 + k), "offset %u: read data differs", off);
		check_canary(buf, off + LEN, total, 0xAB, "read: after the data");
	}
	dm_io_client_destroy(cl);
	dm_io_bdev_close(dev);
	free(buf);
	free(back);
	return 0;
}
