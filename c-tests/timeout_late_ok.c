/* A timeout shorter than the device's delay: the region is notified
 * TIMEOUT (-ETIMEDOUT, not final) around the deadline, then later exactly
 * one final OK (the late completion), with exactly one TIMEOUT; the data
 * is on disk. In a 2-region write with one healthy leg, only the slow leg
 * gets a TIMEOUT. A read's data arrives with its late OK. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { BYTES = 16 * 1024, S = BYTES / 512 };
static unsigned char data[BYTES], back[BYTES];

static double timeout_at[2], final_at[2];

static void timed_notify(struct dm_io_region_state *st, void *ctx)
{
	if (st->index < 2) {
		if (st->state == DM_IO_TIMEOUT) {
			timeout_at[st->index] = now_ms();
			CHECK(st->error_code == -ETIMEDOUT, "TIMEOUT with error_code %d", st->error_code);
		} else {
			final_at[st->index] = now_ms();
		}
	}
	tracker_notify(st, ctx);
}

int main(void)
{
	const char *ps, *pg;
	struct dm_io_client *cl = make_client(2, 4, 64 * 1024);
	struct block_device *slow = make_faulty_dev("slow", 1 << 20, "delay 800ms", &ps);
	struct block_device *good = make_faulty_dev("good", 1 << 20, "", &pg);
	struct tracker t;

	fill_pattern(data, BYTES, 21);
	tracker_init(&t, 2);
	struct dm_io_region w[2] = { { slow, 8, S }, { good, 8, S } };
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), timed_notify, &t);
	/* The healthy leg must beat the deadline even under valgrind on a
	 * loaded machine (a 50 ms deadline did not, once), so 200 ms. */
	c.timeout = 200;
	double t0 = now_ms();
	CHECK_OK(dm_io(&c, 2, w, NULL));
	CHECK(tracker_wait_timeout(&t, 0, 200 + 2000), "no TIMEOUT within deadline + 2 s");
	CHECK(tracker_wait(&t, 5000), "no final state after the TIMEOUT");
	tracker_check(&t);
	CHECK(t.timeouts[0] == 1, "slow leg: %d TIMEOUTs", t.timeouts[0]);
	CHECK(t.final_state[0] == DM_IO_OK && t.final_error[0] == 0,
	      "slow leg: final state %d error %d (expected a late OK)", t.final_state[0],
	      t.final_error[0]);
	CHECK(timeout_at[0] < final_at[0], "TIMEOUT was not before the final state");
	CHECK(timeout_at[0] - t0 < 200 + 2000, "TIMEOUT came %.0f ms after submission",
	      timeout_at[0] - t0);
	CHECK(t.timeouts[1] == 0 && t.final_state[1] == DM_IO_OK,
	      "healthy leg: %d TIMEOUTs, state %d", t.timeouts[1], t.final_state[1]);
	read_file(ps, 8 * 512, back, BYTES);
	CHECK(memcmp(back, data, BYTES) == 0, "slow device: data not on disk after the late OK");
	read_file(pg, 8 * 512, back, BYTES);
	CHECK(memcmp(back, data, BYTES) == 0, "healthy device differs");

	/* A late read: TIMEOUT, then OK with the data. */
	memset(back, 0, BYTES);
	tracker_init(&t, 1);
	c = make_ctrl(cl, DM_IO_READ, vm_mem(back, 0), timed_notify, &t);
	c.timeout = 50;
	CHECK_OK(dm_io(&c, 1, w, NULL));
	CHECK(tracker_wait(&t, 5000), "read did not finish");
	tracker_check(&t);
	CHECK(t.timeouts[0] == 1 && t.final_state[0] == DM_IO_OK,
	      "late read: %d TIMEOUTs, final state %d error %d", t.timeouts[0], t.final_state[0],
	      t.final_error[0]);
	CHECK(memcmp(back, data, BYTES) == 0, "late read: data differs");

	dm_io_client_destroy(cl);
	dm_io_bdev_close(slow);
	dm_io_bdev_close(good);
	return 0;
}
