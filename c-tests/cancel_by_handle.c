/* dm_io_cancel_by_handle on requests held by a hung device: it returns the
 * number of regions it cancelled (2 for a 2-region write, only the live
 * one when the other leg already finished, a region that already got
 * TIMEOUT counts too), each is notified CANCELLED with -ECANCELED; a second
 * cancel returns 0. A cancelled read never writes the caller's buffer,
 * even when the device is released afterwards and the held IO completes. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { BYTES = 16 * 1024, S = BYTES / 512 };
static unsigned char data[BYTES], buf[BYTES];

int main(void)
{
	const char *pa;
	struct dm_io_client *cl = make_client(2, 4, 64 * 1024);
	struct block_device *a = make_faulty_dev("a", 1 << 20, "hang", &pa);
	struct block_device *b = make_faulty_dev("b", 1 << 20, "hang", NULL);
	struct dm_io_region w[2] = { { a, 8, S }, { b, 8, S } };
	struct dm_io_handle *hdl;
	struct tracker t;
	int n;

	/* Both legs held: 2 regions cancelled. */
	fill_pattern(data, BYTES, 9);
	tracker_init(&t, 2);
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c, 2, w, &hdl));
	sleep_ms(50);
	CHECK(tracker_finals(&t) == 0, "held write finished");
	n = dm_io_cancel_by_handle(cl, hdl);
	CHECK(n == 2, "cancel returned %d, expected 2", n);
	CHECK(tracker_wait(&t, 2000), "CANCELLED not notified");
	tracker_check(&t);
	for (int i = 0; i < 2; i++)
		CHECK(t.final_state[i] == DM_IO_CANCELLED && t.final_error[i] == -ECANCELED,
		      "region %d: state %d error %d", i, t.final_state[i], t.final_error[i]);
	n = dm_io_cancel_by_handle(cl, hdl);
	CHECK(n == 0, "second cancel returned %d, expected 0", n);
	CHECK(dm_io_handle_put(hdl) == NULL, "put");

	/* One leg healthy: it ends OK, the cancel takes only the held one. */
	CHECK_OK(dm_io_bdev_set_faults(b, ""));
	tracker_init(&t, 2);
	c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c, 2, w, &hdl));
	for (int i = 0; i < 200 && tracker_finals(&t) < 1; i++)
		sleep_ms(10);
	CHECK(tracker_finals(&t) == 1 && t.final_state[1] == DM_IO_OK, "healthy leg did not finish OK");
	n = dm_io_cancel_by_handle(cl, hdl);
	CHECK(n == 1, "cancel returned %d, expected 1", n);
	CHECK(tracker_wait(&t, 2000), "CANCELLED not notified");
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_CANCELLED && t.final_error[0] == -ECANCELED,
	      "held leg: state %d error %d", t.final_state[0], t.final_error[0]);
	CHECK(t.final_state[1] == DM_IO_OK, "healthy leg changed to %d", t.final_state[1]);
	CHECK(dm_io_handle_put(hdl) == NULL, "put");

	/* A region that got TIMEOUT is still live and can be cancelled. */
	tracker_init(&t, 1);
	c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	c.timeout = 50;
	CHECK_OK(dm_io(&c, 1, w, &hdl));
	CHECK(tracker_wait_timeout(&t, 0, 2050), "no TIMEOUT");
	n = dm_io_cancel_by_handle(cl, hdl);
	CHECK(n == 1, "cancel after TIMEOUT returned %d, expected 1", n);
	CHECK(tracker_wait(&t, 2000), "CANCELLED not notified");
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_CANCELLED && t.final_error[0] == -ECANCELED,
	      "timed-out region: state %d error %d", t.final_state[0], t.final_error[0]);
	CHECK(dm_io_handle_put(hdl) == NULL, "put");

	/* A cancelled read leaves the caller's buffer alone for good. */
	fill_pattern(data, BYTES, 10);
	write_file(pa, 64 * 512, data, BYTES);
	memset(buf, 0xAB, BYTES);
	tracker_init(&t, 1);
	struct dm_io_region r = { a, 64, S };
	c = make_ctrl(cl, DM_IO_READ, vm_mem(buf, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c, 1, &r, &hdl));
	sleep_ms(20);
	n = dm_io_cancel_by_handle(cl, hdl);
	CHECK(n == 1, "cancel of the read returned %d, expected 1", n);
	CHECK(tracker_wait(&t, 2000), "CANCELLED not notified");
	CHECK(t.final_state[0] == DM_IO_CANCELLED && t.final_error[0] == -ECANCELED,
	      "read: state %d error %d", t.final_state[0], t.final_error[0]);
	CHECK_OK(dm_io_bdev_set_faults(a, "")); /* the held read now runs */
	sleep_ms(200);
	for (int i = 0; i < BYTES; i++)
		CHECK(buf[i] == 0xAB, "byte %d of the cancelled read's buffer changed to %#x", i, buf[i]);
	tracker_check(&t);
	CHECK(dm_io_cancel_by_handle(cl, hdl) == 0, "cancel of a cancelled read is not 0");
	CHECK(dm_io_handle_put(hdl) == NULL, "put");

	/* The device works after all this. */
	CHECK_OK(sync_io(cl, DM_IO_READ, a, 64, S, buf, 0));
	CHECK(memcmp(buf, data, BYTES) == 0, "read after release differs");

	dm_io_client_destroy(cl);
	dm_io_bdev_close(a);
	dm_io_bdev_close(b);
	return 0;
}
