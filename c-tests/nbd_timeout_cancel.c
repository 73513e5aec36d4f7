/* An NBD export whose server is slow (nbdkit's delay filter: reads take
 * 600 ms): a read with a 100 ms deadline is notified TIMEOUT on time, then
 * OK with its data when the reply comes; a read cancelled while the server
 * holds it ends CANCELLED at once and its buffer is never written (its
 * reply is read and dropped, and the connection stays in sync: the next
 * read returns the right data); cancel by device does the same; destroy
 * with a read outstanding returns without waiting for the server. */
#include "helpers.h"
#include "nbdserver.h"
#include <errno.h>
#include <string.h>

enum { BYTES = 64 * 1024, S = BYTES / 512 };
static unsigned char data[BYTES], back[BYTES];

int main(void)
{
	const char *args[] = { "--filter=delay", "memory", "16M", "rdelay=600ms", NULL };
	struct nbdserver *srv = nbdserver_start(args);
	struct block_device *nbd;
	CHECK_OK(dm_io_bdev_open(nbdserver_uri(srv), 0, &nbd));
	struct dm_io_client *cl = make_client(1, 4, 64 * 1024);
	fill_pattern(data, BYTES, 5);
	CHECK_OK(sync_io(cl, DM_IO_WRITE, nbd, 64, S, data, 0));

	/* TIMEOUT at the deadline, then the late OK with the data. */
	struct tracker t;
	tracker_init(&t, 1);
	struct dm_io_region r = { nbd, 64, S };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(back, 0), tracker_notify, &t);
	c.timeout = 100;
	double t0 = now_ms();
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	CHECK(tracker_wait_timeout(&t, 0, 2000), "no TIMEOUT");
	double tt = now_ms() - t0;
	CHECK(tt >= 90 && tt < 100 + 500, "TIMEOUT after %.0f ms (deadline 100)", tt);
	CHECK(tracker_wait(&t, 5000), "no late final state");
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_OK, "late state %d error %d", t.final_state[0],
	      t.final_error[0]);
	CHECK(memcmp(back, data, BYTES) == 0, "late read: data differs");

	/* Cancel by handle while the server holds the read. */
	memset(back, 0xee, BYTES);
	tracker_init(&t, 1);
	c = make_ctrl(cl, DM_IO_READ, vm_mem(back, 0), tracker_notify, &t);
	struct dm_io_handle *h;
	CHECK_OK(dm_io(&c, 1, &r, &h));
	sleep_ms(50);
	t0 = now_ms();
	CHECK(dm_io_cancel_by_handle(cl, h) == 1, "cancel did not cancel one region");
	CHECK(tracker_wait(&t, 1000), "cancelled region not final");
	CHECK(now_ms() - t0 < 50, "CANCELLED %.0f ms after the cancel", now_ms() - t0);
	CHECK(t.final_state[0] == DM_IO_CANCELLED, "state %d", t.final_state[0]);
	dm_io_handle_put(h);
	sleep_ms(800); /* the reply arrives meanwhile */
	for (unsigned i = 0; i < BYTES; i++)
		CHECK(back[i] == 0xee, "cancelled read wrote byte %u", i);

	/* Cancel by device. */
	tracker_init(&t, 1);
	c = make_ctrl(cl, DM_IO_READ, vm_mem(back, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	sleep_ms(20);
	CHECK(dm_io_cancel_by_device(cl, nbd) == 1, "cancel by device");
	CHECK(tracker_wait(&t, 1000), "not final after cancel by device");
	CHECK(t.final_state[0] == DM_IO_CANCELLED, "state %d", t.final_state[0]);

	/* The stream is still in sync: a read returns the right bytes. */
	memset(back, 0, BYTES);
	CHECK_OK(sync_io(cl, DM_IO_READ, nbd, 64, S, back, 0));
	CHECK(memcmp(back, data, BYTES) == 0, "read after cancels differs");

	/* Destroy with a read outstanding does not wait for the server. */
	tracker_init(&t, 1);
	c = make_ctrl(cl, DM_IO_READ, vm_mem(back, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	t0 = now_ms();
	dm_io_client_destroy(cl);
	CHECK(now_ms() - t0 < 300, "destroy took %.0f ms", now_ms() - t0);
	CHECK(t.finals == 1 && t.final_state[0] == DM_IO_CANCELLED, "destroy: state %d",
	      t.final_state[0]);
	dm_io_bdev_close(nbd);
	nbdserver_stop(srv);
	return 0;
}
