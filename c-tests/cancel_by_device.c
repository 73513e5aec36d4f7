/* dm_io_cancel_by_device cancels only the regions on that device, of every
 * request of the client, and returns how many: with one device hung, a
 * 2-region write (one leg per device) and a read on the hung device lose
 * exactly those 2 regions (CANCELLED, -ECANCELED) while the other leg and a
 * request on the healthy device end OK. A second call returns 0. It also
 * frees a SYNC dm_io blocked on the hung device in another thread, which
 * then returns -ECANCELED. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { BYTES = 16 * 1024, S = BYTES / 512 };
static unsigned char data[BYTES], rbuf[BYTES], sbuf[BYTES];
static struct dm_io_client *cl;
static struct block_device *hung;

static int sync_read_hung(void *arg)
{
	(void)arg;
	return sync_io(cl, DM_IO_READ, hung, 8, S, sbuf, 0);
}

int main(void)
{
	const char *pg;
	cl = make_client(2, 4, 64 * 1024);
	hung = make_faulty_dev("hung", 1 << 20, "hang", NULL);
	struct block_device *good = make_faulty_dev("good", 1 << 20, "", &pg);
	struct tracker tw, tr, tg;
	int n;

	fill_pattern(data, BYTES, 11);
	tracker_init(&tw, 2);
	struct dm_io_region w[2] = { { hung, 8, S }, { good, 8, S } };
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &tw);
	CHECK_OK(dm_io(&c, 2, w, NULL));
	tracker_init(&tr, 1);
	struct dm_io_region r = { hung, 64, S };
	c = make_ctrl(cl, DM_IO_READ, vm_mem(rbuf, 0), tracker_notify, &tr);
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	tracker_init(&tg, 1);
	struct dm_io_region g = { good, 64, S };
	c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &tg);
	CHECK_OK(dm_io(&c, 1, &g, NULL));

	CHECK(tracker_wait(&tg, 5000), "request on the healthy device did not finish");
	for (int i = 0; i < 500 && tracker_finals(&tw) < 1; i++)
		sleep_ms(10);
	CHECK(tracker_finals(&tw) == 1 && tw.final_state[1] == DM_IO_OK,
	      "healthy leg of the write did not finish OK");
	CHECK(tracker_finals(&tr) == 0, "read on the hung device finished");

	n = dm_io_cancel_by_device(cl, hung);
	CHECK(n == 2, "cancel_by_device returned %d, expected 2", n);
	CHECK(tracker_wait(&tw, 2000) && tracker_wait(&tr, 2000), "CANCELLED not notified");
	tracker_check(&tw);
	tracker_check(&tr);
	tracker_check(&tg);
	CHECK(tw.final_state[0] == DM_IO_CANCELLED && tw.final_error[0] == -ECANCELED,
	      "write leg on the hung device: state %d error %d", tw.final_state[0], tw.final_error[0]);
	CHECK(tw.final_state[1] == DM_IO_OK, "healthy leg: state %d", tw.final_state[1]);
	CHECK(tr.final_state[0] == DM_IO_CANCELLED && tr.final_error[0] == -ECANCELED,
	      "read on the hung device: state %d error %d", tr.final_state[0], tr.final_error[0]);
	CHECK(tg.final_state[0] == DM_IO_OK, "request on the healthy device: state %d",
	      tg.final_state[0]);
	read_file(pg, 8 * 512, rbuf, BYTES);
	CHECK(memcmp(rbuf, data, BYTES) == 0, "healthy leg data differs");
	CHECK(dm_io_cancel_by_device(cl, hung) == 0, "second cancel_by_device is not 0");
	CHECK(dm_io_cancel_by_device(cl, good) == 0, "cancel_by_device on an idle device is not 0");

	/* A SYNC caller blocked on the hung device, freed from this thread. */
	struct bg bgr;
	bg_start(&bgr, sync_read_hung, NULL);
	CHECK(!bg_wait(&bgr, 100), "SYNC read on a hung device returned %d", bgr.rc);
	n = dm_io_cancel_by_device(cl, hung);
	CHECK(n == 1, "cancel_by_device returned %d for the SYNC read, expected 1", n);
	CHECK(bg_wait(&bgr, 2000), "SYNC dm_io still blocked 2 s after cancel_by_device");
	CHECK(bgr.rc == -ECANCELED, "SYNC dm_io returned %d, expected -ECANCELED", bgr.rc);

	CHECK_OK(dm_io_bdev_set_faults(hung, ""));
	sleep_ms(50);
	dm_io_client_destroy(cl);
	dm_io_bdev_close(hung);
	dm_io_bdev_close(good);
	return 0;
}
