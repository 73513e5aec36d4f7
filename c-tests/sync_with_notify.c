/* DM_IO_SYNC with a notify function: notify is called from inside dm_io,
 * in the caller's thread; every region is final when dm_io returns; dm_io
 * returns 0 when all are OK. With a timeout on a slow device the TIMEOUT
 * and the later final OK are both delivered inside dm_io (a SYNC request
 * with notify is not cancelled at its deadline), and with a failing leg
 * dm_io returns the ERROR's code after notifying it. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

static pthread_t caller;
static volatile int in_dm_io;
static int calls, calls_outside, calls_other_thread;

static void notify(struct dm_io_region_state *st, void *ctx)
{
	calls++;
	if (!in_dm_io)
		calls_outside++;
	if (!pthread_equal(pthread_self(), caller))
		calls_other_thread++;
	tracker_notify(st, ctx);
}

static int run(struct dm_io_client *cl, int rw, void *buf, unsigned n, struct dm_io_region *r,
	       unsigned long timeout, struct tracker *t)
{
	tracker_init(t, n);
	calls = calls_outside = calls_other_thread = 0;
	struct dm_io_control c = make_ctrl(cl, rw | DM_IO_SYNC, vm_mem(buf, 0), notify, t);
	c.timeout = timeout;
	in_dm_io = 1;
	int rc = dm_io(&c, n, r, NULL);
	in_dm_io = 0;
	/* Checked at once, without waiting: everything happened inside dm_io. */
	CHECK(tracker_finals(t) == n, "only %u of %u regions final when SYNC dm_io returned",
	      tracker_finals(t), n);
	CHECK(calls_outside == 0, "%d notify calls outside dm_io", calls_outside);
	CHECK(calls_other_thread == 0, "%d notify calls in another thread", calls_other_thread);
	tracker_check(t);
	return rc;
}

int main(void)
{
	enum { BYTES = 64 * 1024, S = BYTES / 512 };
	static unsigned char data[BYTES], back[BYTES];
	const char *pa, *pb, *ps;
	caller = pthread_self();
	struct dm_io_client *cl = make_client(2, 2, 16 * 1024);
	struct block_device *a = make_faulty_dev("a", 1 << 20, "", &pa);
	struct block_device *b = make_faulty_dev("b", 1 << 20, "", &pb);
	struct block_device *slow = make_faulty_dev("slow", 1 << 20, "delay 300ms", &ps);
	struct tracker t;

	/* Two-region write. */
	fill_pattern(data, BYTES, 1);
	struct dm_io_region w[2] = { { a, 8, S }, { b, 64, S } };
	CHECK_OK(run(cl, DM_IO_WRITE, data, 2, w, 0, &t));
	CHECK(calls == 2, "%d notify calls for 2 regions", calls);
	CHECK(tracker_count(&t, DM_IO_OK) == 2, "not every region OK");
	read_file(pa, 8 * 512, back, BYTES);
	CHECK(memcmp(back, data, BYTES) == 0, "device a differs");
	read_file(pb, 64 * 512, back, BYTES);
	CHECK(memcmp(back, data, BYTES) == 0, "device b differs");

	/* Read. */
	memset(back, 0, BYTES);
	struct dm_io_region r = { b, 64, S };
	CHECK_OK(run(cl, DM_IO_READ, back, 1, &r, 0, &t));
	CHECK(calls == 1 && t.final_state[0] == DM_IO_OK, "read: %d calls, state %d", calls,
	      t.final_state[0]);
	CHECK(memcmp(back, data, BYTES) == 0, "read data differs");

	/* Timeout on a slow device: TIMEOUT, then OK, both inside dm_io. */
	fill_pattern(data, BYTES, 2);
	struct dm_io_region sr = { slow, 16, S };
	CHECK_OK(run(cl, DM_IO_WRITE, data, 1, &sr, 50, &t));
	CHECK(t.timeouts[0] == 1, "slow region: %d TIMEOUTs (expected 1)", t.timeouts[0]);
	CHECK(t.final_state[0] == DM_IO_OK, "slow region: final state %d error %d", t.final_state[0],
	      t.final_error[0]);
	CHECK(calls == 2, "slow region: %d notify calls (expected TIMEOUT + OK)", calls);
	read_file(ps, 16 * 512, back, BYTES);
	CHECK(memcmp(back, data, BYTES) == 0, "slow device differs");

	/* One failing leg: ERROR notified inside dm_io, its code returned. */
	CHECK_OK(dm_io_bdev_set_faults(b, "error writes errno=ENOSPC"));
	int rc = run(cl, DM_IO_WRITE, data, 2, w, 0, &t);
	CHECK(rc == -ENOSPC, "dm_io returned %d, expected -ENOSPC", rc);
	CHECK(t.final_state[0] == DM_IO_OK, "healthy leg state %d", t.final_state[0]);
	CHECK(t.final_state[1] == DM_IO_ERROR && t.final_error[1] == -ENOSPC,
	      "failing leg: state %d error %d", t.final_state[1], t.final_error[1]);

	dm_io_client_destroy(cl);
	dm_io_bdev_close(a);
	dm_io_bdev_close(b);
	dm_io_bdev_close(slow);
	return 0;
}
