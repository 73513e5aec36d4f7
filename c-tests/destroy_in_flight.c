/* dm_io_client_destroy with IO held by hung devices (a 2-region write, a
 * read that already got TIMEOUT, and a large write whose dm_io is blocked
 * in another thread waiting for private memory): destroy returns promptly
 * (< 2 s), every region has been notified CANCELLED with -ESHUTDOWN before
 * it returns, the blocked dm_io returns, and no notify runs afterwards, even
 * when the devices are released and the held IO completes. The destroyed
 * client is then refused: dm_io and the cancel calls return -EINVAL; a
 * second destroy is ignored; the caller's handle can still be put. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { BYTES = 16 * 1024, S = BYTES / 512, BIG = 1 << 20 };
static unsigned char data[BYTES], rbuf[BYTES];
static unsigned char *big;
static volatile int destroyed;
static int calls_after_destroy;
static struct dm_io_client *cl;
static struct block_device *a, *b;
static struct tracker tbig;

static void notify(struct dm_io_region_state *st, void *ctx)
{
	if (destroyed)
		__atomic_add_fetch(&calls_after_destroy, 1, __ATOMIC_SEQ_CST);
	tracker_notify(st, ctx);
}

static int big_write(void *arg)
{
	(void)arg;
	struct dm_io_region r = { a, 512, BIG / 512 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(big, 0), notify, &tbig);
	return dm_io(&c, 1, &r, NULL);
}

static void check_shutdown(struct tracker *t, const char *what)
{
	for (unsigned i = 0; i < t->nregions; i++)
		CHECK(t->final_state[i] == DM_IO_CANCELLED && t->final_error[i] == -ESHUTDOWN,
		      "%s region %u: state %d error %d (expected CANCELLED -ESHUTDOWN)", what, i,
		      t->final_state[i], t->final_error[i]);
}

int main(void)
{
	cl = make_client(2, 2, 64 * 1024); /* 4 slots of private memory */
	a = make_faulty_dev("a", 2 << 20, "hang", NULL);
	b = make_faulty_dev("b", 2 << 20, "hang", NULL);
	big = calloc(1, BIG); /* written to disk: must be initialised (valgrind) */
	CHECK(big, "calloc");
	struct tracker tw, tr;
	struct dm_io_handle *hdl;

	tracker_init(&tw, 2);
	struct dm_io_region w[2] = { { a, 8, S }, { b, 8, S } };
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), notify, &tw);
	CHECK_OK(dm_io(&c, 2, w, &hdl));

	tracker_init(&tr, 1);
	c = make_ctrl(cl, DM_IO_READ, vm_mem(rbuf, 0), notify, &tr);
	c.timeout = 50;
	CHECK_OK(dm_io(&c, 1, w, NULL));
	CHECK(tracker_wait_timeout(&tr, 0, 2050), "read got no TIMEOUT");

	/* 2 slots are left; the 1 MiB write needs 16: its dm_io blocks. */
	tracker_init(&tbig, 1);
	struct bg bgw;
	bg_start(&bgw, big_write, NULL);
	CHECK(!bg_wait(&bgw, 100), "the large write's dm_io returned (%d) with memory held",
	      bgw.rc);

	double t0 = now_ms();
	dm_io_client_destroy(cl);
	double took = now_ms() - t0;
	destroyed = 1;
	CHECK(took < 2000, "dm_io_client_destroy took %.0f ms", took);
	CHECK(tracker_finals(&tw) == 2, "write: %u of 2 regions notified before destroy returned",
	      tracker_finals(&tw));
	CHECK(tracker_finals(&tr) == 1, "read not notified before destroy returned");
	CHECK(tracker_finals(&tbig) == 1, "large write not notified before destroy returned");
	check_shutdown(&tw, "write");
	check_shutdown(&tr, "read");
	check_shutdown(&tbig, "large write");
	CHECK(bg_wait(&bgw, 2000), "dm_io blocked on private memory did not return after destroy");
	CHECK(bgw.rc == 0 || bgw.rc == -ESHUTDOWN, "blocked dm_io returned %d", bgw.rc);

	/* Release the held IO: it completes into the destroyed client. */
	memset(rbuf, 0xAB, BYTES);
	CHECK_OK(dm_io_bdev_set_faults(a, ""));
	CHECK_OK(dm_io_bdev_set_faults(b, ""));
	sleep_ms(300);
	CHECK(calls_after_destroy == 0, "%d notify calls after destroy returned", calls_after_destroy);
	tracker_check(&tw);
	tracker_check(&tr);
	tracker_check(&tbig);
	for (int i = 0; i < BYTES; i++)
		CHECK(rbuf[i] == 0xAB, "the cancelled read wrote byte %d", i);

	/* The client pointer is dead now. */
	c = make_ctrl(cl, DM_IO_WRITE | DM_IO_SYNC, vm_mem(data, 0), NULL, NULL);
	int rc = dm_io(&c, 1, w, NULL);
	CHECK(rc == -EINVAL, "dm_io with a destroyed client returned %d", rc);
	CHECK(dm_io_last_error()[0], "no message");
	rc = dm_io_cancel_by_device(cl, a);
	CHECK(rc == -EINVAL, "cancel_by_device with a destroyed client returned %d", rc);
	rc = dm_io_cancel_by_handle(cl, hdl);
	CHECK(rc == -EINVAL, "cancel_by_handle with a destroyed client returned %d", rc);
	dm_io_client_destroy(cl); /* ignored */
	CHECK(dm_io_handle_put(hdl) == NULL, "put of the handle did not return NULL");

	/* The devices still work with a new client. */
	cl = make_client(1, 1, 4096);
	fill_pattern(data, BYTES, 51);
	CHECK_OK(sync_io(cl, DM_IO_WRITE, a, 8, S, data, 0));
	CHECK_OK(sync_io(cl, DM_IO_READ, a, 8, S, rbuf, 0));
	CHECK(memcmp(rbuf, data, BYTES) == 0, "data differs with a new client");
	dm_io_client_destroy(cl);
	dm_io_bdev_close(a);
	dm_io_bdev_close(b);
	free(big);
	return 0;
}
