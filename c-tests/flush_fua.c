/* DM_IO_FLUSH and DM_IO_FUA: WRITE|FLUSH, WRITE|FUA and WRITE|FLUSH|FUA
 * are accepted (SYNC and asynchronous) and end OK with the data on disk;
 * an empty flush (count 0 with DM_IO_FLUSH) on two devices, and one mixed
 * with a data region, end OK; READ|FLUSH and READ|FUA are -EINVAL.
 *
 * Then what the device sees, on a loop device over the hangfs fixture
 * (which logs the writes and syncs of its backing file in order; a flush of
 * the loop device reaches it as a sync): a DM_IO_FLUSH write brings a sync
 * before its first write, a DM_IO_FUA write a sync after its last one, both
 * flags both, an empty flush only syncs, and a plain write no sync at all.
 * Data read back through the page cache cannot tell these apart; without
 * the hung device (not root, no FUSE) the test skips, which fails under CI. */
#include "helpers.h"
#include "hungdev.h"
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

/* ---- What the device sees ---------------------------------------------- */

enum { LOG_MAX = 64 };

static int is_sync(char ev)
{
	return ev == 'F' || ev == 'D';
}

/* The writes and syncs the device saw since event number `since`. */
static void events_since(struct hungdev *h, uint64_t since, char *log, const char *what)
{
	int64_t n = hungdev_events(h, since, log, LOG_MAX);
	CHECK(n >= 0, "%s: hungdev_events returned %lld", what, (long long)n);
}

/* One write of `rw` to region r of the hung device (SYNC or asynchronous),
 * then checks the order of writes and syncs the device saw for it, and the
 * data (read back through libdmio, O_DIRECT). */
static void device_sees(struct dm_io_client *cl, struct hungdev *h, struct dm_io_region *r, int rw,
			int async, unsigned seed)
{
	char what[64], log[LOG_MAX];
	snprintf(what, sizeof(what), "%s%s%s%s", async ? "async " : "SYNC ",
		 rw & DM_IO_FLUSH ? "WRITE|FLUSH" : "WRITE", rw & DM_IO_FUA ? "|FUA" : "",
		 r->count ? "" : " (empty)");
	fill_pattern(data, BYTES, seed);
	int64_t before = hungdev_events(h, 0, NULL, 0);
	CHECK(before >= 0, "%s: hungdev_events returned %lld", what, (long long)before);
	if (async) {
		async_ok(cl, rw, 1, r, what);
	} else {
		int rc = sync_rw(cl, rw, 1, r);
		CHECK(rc == 0, "%s returned %d", what, rc);
	}
	events_since(h, (uint64_t)before, log, what);
	size_t n = strlen(log), writes = 0, syncs = 0;
	for (size_t i = 0; i < n; i++) {
		writes += log[i] == 'W';
		syncs += is_sync(log[i]);
	}
	printf("%-28s device saw %s\n", what, log);
	CHECK(writes + syncs == n, "%s: unexpected events '%s'", what, log);
	if (!r->count) {
		CHECK(writes == 0 && syncs > 0, "%s: the device saw '%s', expected syncs only", what,
		      log);
		return;
	}
	CHECK(writes > 0, "%s: the device saw no write ('%s')", what, log);
	if (rw & DM_IO_FLUSH)
		CHECK(is_sync(log[0]), "%s: the device saw '%s': no sync before the first write", what,
		      log);
	if (rw & DM_IO_FUA)
		CHECK(is_sync(log[n - 1]), "%s: the device saw '%s': no sync after the last write",
		      what, log);
	if (!(rw & (DM_IO_FLUSH | DM_IO_FUA)))
		CHECK(syncs == 0, "%s: the device saw '%s': a sync for a plain write", what, log);
	memset(back, 0, BYTES);
	CHECK_OK(sync_io(cl, DM_IO_READ, r->bdev, r->sector, r->count, back, 0));
	CHECK(memcmp(back, data, BYTES) == 0, "%s: data not on the device (seed %u)", what, seed);
}

static void observed(struct dm_io_client *cl)
{
	struct hungdev *h = hungdev_up(1 << 20);
	if (!h)
		skip(hungdev_skip_reason());
	struct block_device *dev;
	CHECK_OK(dm_io_bdev_open(hungdev_path(h), 0, &dev));
	check_block_size(dev);
	struct dm_io_region r = { dev, 64, S }, empty = { dev, 0, 0 };
	static const int kinds[] = {
		DM_IO_WRITE,
		DM_IO_WRITE | DM_IO_FLUSH,
		DM_IO_WRITE | DM_IO_FUA,
		DM_IO_WRITE | DM_IO_FLUSH | DM_IO_FUA,
	};
	unsigned seed = 90;
	for (int async = 0; async < 2; async++) {
		for (unsigned k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
			device_sees(cl, h, &r, kinds[k], async, ++seed);
		device_sees(cl, h, &empty, DM_IO_WRITE | DM_IO_FLUSH, async, ++seed);
	}
	dm_io_bdev_close(dev);
	hungdev_down(h);
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

	observed(cl);

	dm_io_client_destroy(cl);
	dm_io_bdev_close(a);
	dm_io_bdev_close(b);
	return 0;
}
