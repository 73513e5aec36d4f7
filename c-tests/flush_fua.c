/* DM_IO_FLUSH and DM_IO_FUA: WRITE|FLUSH, WRITE|FUA and WRITE|FLUSH|FUA
 * are accepted (SYNC and asynchronous) and end OK with the data on disk;
 * an empty flush (count 0 with DM_IO_FLUSH) on two devices, and one mixed
 * with a data region, end OK; READ|FLUSH and READ|FUA are -EINVAL. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { BYTES = 32 * 1024, S = BYTES / 512 };
static unsigned char data[BYTES], back[BYTES];

static void async_ok(struct dm_io_client *cl, int rw, unsigned n, struct dm_io_region *r,
		     const char *what)
{
	struct tracker t;
	tracker_init(&t, n);
	struct dm_io_control c = make_ctrl(cl, rw, vm_mem(data, 0), tracker_notify, &t);
	int rc = dm_io(&c, n, r, NULL);
	CHECK(rc == 0, "%s: dm_io returned %d", what, rc);
	CHECK(tracker_wait(&t, 10000), "%s: did not finish", what);
	tracker_check(&t);
	for (unsigned i = 0; i < n; i++)
		CHECK(t.final_state[i] == DM_IO_OK, "%s: region %u state %d error %d", what, i,
		      t.final_state[i], t.final_error[i]);
}

static int sync_rw(struct dm_io_client *cl, int rw, unsigned n, struct dm_io_region *r)
{
	struct dm_io_control c = make_ctrl(cl, rw | DM_IO_SYNC, vm_mem(data, 0), NULL, NULL);
	return dm_io(&c, n, r, NULL);
}

static void on_disk(const char *path, uint64_t sector, unsigned seed, const char *what)
{
	read_file(path, sector * 512, back, BYTES);
	CHECK(memcmp(back, data, BYTES) == 0, "%s: data not on disk (seed %u)", what, seed);
}

int main(void)
{
	const char *pa, *pb;
	struct dm_io_client *cl = make_client(2, 2, 16 * 1024);
	struct block_device *a = make_faulty_dev("a", 1 << 20, "", &pa);
	struct block_device *b = make_faulty_dev("b", 1 << 20, "", &pb);
	struct dm_io_region one = { a, 8, S };
	struct dm_io_region two[2] = { { a, 128, S }, { b, 128, S } };
	static const struct {
		int rw;
		const char *name;
	} kinds[] = {
		{ DM_IO_WRITE | DM_IO_FLUSH, "WRITE|FLUSH" },
		{ DM_IO_WRITE | DM_IO_FUA, "WRITE|FUA" },
		{ DM_IO_WRITE | DM_IO_FLUSH | DM_IO_FUA, "WRITE|FLUSH|FUA" },
	};
	unsigned seed = 60;

	for (unsigned k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		fill_pattern(data, BYTES, ++seed);
		int rc = sync_rw(cl, kinds[k].rw, 1, &one);
		CHECK(rc == 0, "SYNC %s returned %d", kinds[k].name, rc);
		on_disk(pa, 8, seed, kinds[k].name);
		fill_pattern(data, BYTES, ++seed);
		async_ok(cl, kinds[k].rw, 2, two, kinds[k].name);
		on_disk(pa, 128, seed, kinds[k].name);
		on_disk(pb, 128, seed, kinds[k].name);
	}

	/* Empty flushes. */
	struct dm_io_region empty[2] = { { a, 0, 0 }, { b, 0, 0 } };
	int rc = sync_rw(cl, DM_IO_WRITE | DM_IO_FLUSH, 2, empty);
	CHECK(rc == 0, "SYNC empty flush returned %d", rc);
	rc = sync_rw(cl, DM_IO_WRITE | DM_IO_FLUSH, 1, empty);
	CHECK(rc == 0, "SYNC empty flush of one device returned %d", rc);
	async_ok(cl, DM_IO_WRITE | DM_IO_FLUSH, 2, empty, "async empty flush");
	fill_pattern(data, BYTES, ++seed);
	struct dm_io_region mixed[2] = { { a, 0, 0 }, { b, 256, S } };
	async_ok(cl, DM_IO_WRITE | DM_IO_FLUSH, 2, mixed, "empty flush + data region");
	on_disk(pb, 256, seed, "empty flush + data region");

	/* Flags that only apply to writes. */
	rc = sync_rw(cl, DM_IO_READ | DM_IO_FLUSH, 1, &one);
	CHECK(rc == -EINVAL, "READ|FLUSH returned %d, expected -EINVAL", rc);
	rc = sync_rw(cl, DM_IO_READ | DM_IO_FUA, 1, &one);
	CHECK(rc == -EINVAL, "READ|FUA returned %d, expected -EINVAL", rc);
	rc = sync_rw(cl, DM_IO_READ | DM_IO_FLUSH, 1, empty);
	CHECK(rc == -EINVAL, "empty READ|FLUSH returned %d, expected -EINVAL", rc);

	dm_io_client_destroy(cl);
	dm_io_bdev_close(a);
	dm_io_bdev_close(b);
	return 0;
}
