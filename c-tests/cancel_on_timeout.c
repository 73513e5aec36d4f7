/* DM_IO_CANCEL_ON_TIMEOUT: at the deadline a region held by a hung device
 * ends CANCELLED with -ETIMEDOUT and no TIMEOUT notification before it; in
 * a 2-region write with one healthy leg the healthy one ends OK. The held
 * IO later completing (device released) is not notified again, and the
 * cancelled read's buffer is never written. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { BYTES = 16 * 1024, S = BYTES / 512 };
static unsigned char data[BYTES], buf[BYTES];

int main(void)
{
	const char *pg;
	struct dm_io_client *cl = make_client(2, 4, 64 * 1024);
	struct block_device *hung = make_faulty_dev("hung", 1 << 20, "hang", NULL);
	struct block_device *good = make_faulty_dev("good", 1 << 20, "", &pg);
	struct tracker t, tr;

	fill_pattern(data, BYTES, 41);
	tracker_init(&t, 2);
	struct dm_io_region w[2] = { { hung, 8, S }, { good, 8, S } };
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	c.timeout = 300;
	c.flags = DM_IO_CANCEL_ON_TIMEOUT;
	double t0 = now_ms();
	CHECK_OK(dm_io(&c, 2, w, NULL));
	CHECK(tracker_wait(&t, 300 + 2000), "regions not final within deadline + 2 s");
	double took = now_ms() - t0;
	CHECK(took < 300 + 2000, "took %.0f ms", took);
	tracker_check(&t);
	CHECK(t.timeouts[0] == 0, "hung leg got %d TIMEOUT notifications", t.timeouts[0]);
	CHECK(t.final_state[0] == DM_IO_CANCELLED && t.final_error[0] == -ETIMEDOUT,
	      "hung leg: state %d error %d (expected CANCELLED -ETIMEDOUT)", t.final_state[0],
	      t.final_error[0]);
	CHECK(t.timeouts[1] == 0 && t.final_state[1] == DM_IO_OK, "healthy leg: %d TIMEOUTs, state %d",
	      t.timeouts[1], t.final_state[1]);
	read_file(pg, 8 * 512, buf, BYTES);
	CHECK(memcmp(buf, data, BYTES) == 0, "healthy leg data differs");

	/* A read: cancelled at its deadline; buffer never written. */
	memset(buf, 0xAB, BYTES);
	tracker_init(&tr, 1);
	c = make_ctrl(cl, DM_IO_READ, vm_mem(buf, 0), tracker_notify, &tr);
	c.timeout = 50;
	c.flags = DM_IO_CANCEL_ON_TIMEOUT;
	CHECK_OK(dm_io(&c, 1, w, NULL));
	CHECK(tracker_wait(&tr, 50 + 2000), "read not final within deadline + 2 s");
	CHECK(tr.timeouts[0] == 0 && tr.final_state[0] == DM_IO_CANCELLED &&
		      tr.final_error[0] == -ETIMEDOUT,
	      "read: %d TIMEOUTs, state %d error %d", tr.timeouts[0], tr.final_state[0],
	      tr.final_error[0]);

	CHECK_OK(dm_io_bdev_set_faults(hung, ""));
	sleep_ms(200);
	tracker_check(&t);
	tracker_check(&tr);
	for (int i = 0; i < BYTES; i++)
		CHECK(buf[i] == 0xAB, "cancelled read's buffer byte %d changed", i);
	dm_io_client_destroy(cl);
	dm_io_bdev_close(hung);
	dm_io_bdev_close(good);
	return 0;
}
