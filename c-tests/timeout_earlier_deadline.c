/* timeout_earlier_deadline: a deadline armed by another thread that falls
 * before every deadline the completion thread sleeps for wakes it. With
 * io_uring the completion thread keeps the deadlines of asynchronous
 * requests (header: `timeout`); threads that submit hand them over and
 * wake it only when it would otherwise sleep past the new one.
 *
 * The main thread submits held reads: a first one with a 10 s deadline
 * (the completion thread then sleeps for it), then several with shorter
 * ones, each shorter than the last. Each short one must get its TIMEOUT
 * at its deadline (never before, and not seconds late), and the long one
 * none until it is cancelled. Last, a deadline handed over while the
 * completion thread is busy in a callback (it sleeps for nothing then)
 * must fire too. */
#include "helpers.h"

#include <errno.h>
#include <stdatomic.h>

enum { SHORT = 4 };
static const int short_ms[SHORT] = { 800, 400, 200, 100 };

static struct dm_io_client *cl;
static struct block_device *held;
static char buf[SHORT + 2][4096];
static double t_timeout[SHORT + 2], t_sub[SHORT + 2];
static struct tracker tr[SHORT + 2];
static atomic_int in_callback, release_callback;

static void timed(struct dm_io_region_state *st, void *ctx)
{
	struct tracker *t = ctx;
	if (st->state == DM_IO_TIMEOUT)
		t_timeout[t - tr] = now_ms();
	tracker_notify(st, ctx);
}

static struct dm_io_handle *submit(int i, unsigned long ms)
{
	struct dm_io_region r = { held, (uint64_t)i * 8, 8 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(buf[i], 0), timed, &tr[i]);
	struct dm_io_handle *h;
	c.timeout = ms;
	tracker_init(&tr[i], 1);
	t_sub[i] = now_ms();
	CHECK_OK(dm_io(&c, 1, &r, &h));
	return h;
}

/* Keeps the completion thread busy until the main thread says so. */
static void busy(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state != DM_IO_OK)
		return;
	atomic_store(&in_callback, 1);
	wait_flag(&release_callback, "the main thread's release of the busy callback");
}

int main(void)
{
	cl = make_client(1, SHORT + 4, 4096);
	held = make_faulty_dev("held", 1 << 20, "hang reads", 0);
	struct block_device *fast = make_dev("fast", 1 << 20);

	struct dm_io_handle *hl = submit(SHORT, 10000);
	sleep_ms(20); /* the completion thread now sleeps until the 10 s deadline */
	struct dm_io_handle *hs[SHORT];
	for (int i = 0; i < SHORT; i++)
		hs[i] = submit(i, (unsigned long)short_ms[i]);
	for (int i = 0; i < SHORT; i++) {
		CHECK(tracker_wait_timeout(&tr[i], 0, short_ms[i] + 3000),
		      "deadline %d ms: no TIMEOUT within 3 s of it (the completion thread slept on)",
		      short_ms[i]);
		double late = t_timeout[i] - t_sub[i] - short_ms[i];
		CHECK(late >= -1.0, "deadline %d ms: TIMEOUT %.1f ms early", short_ms[i], -late);
		CHECK(late < 1000, "deadline %d ms: TIMEOUT %.0f ms late", short_ms[i], late);
	}
	CHECK(tr[SHORT].timeouts[0] == 0, "the 10 s request timed out early");

	/* A deadline handed over while the completion thread runs a callback. */
	struct tracker ft;
	tracker_init(&ft, 1);
	struct dm_io_region fr = { fast, 0, 8 };
	struct dm_io_control fc = make_ctrl(cl, DM_IO_READ, vm_mem(buf[SHORT + 1], 0), busy, &ft);
	CHECK_OK(dm_io(&fc, 1, &fr, NULL));
	wait_flag(&in_callback, "the fast read's callback");
	struct dm_io_handle *hb = submit(SHORT + 1, 50);
	sleep_ms(10);
	atomic_store(&release_callback, 1);
	CHECK(tracker_wait_timeout(&tr[SHORT + 1], 0, 50 + 3000),
	      "deadline handed over during a callback: no TIMEOUT within 3 s of it");

	for (int i = 0; i < SHORT; i++) {
		CHECK(dm_io_cancel_by_handle(cl, hs[i]) == 1, "cancel of request %d", i);
		dm_io_handle_put(hs[i]);
	}
	CHECK(dm_io_cancel_by_handle(cl, hb) == 1, "cancel of the last request");
	dm_io_handle_put(hb);
	CHECK(dm_io_cancel_by_handle(cl, hl) == 1, "cancel of the 10 s request");
	dm_io_handle_put(hl);
	for (int i = 0; i < SHORT + 2; i++) {
		CHECK(tracker_wait(&tr[i], 5000), "request %d has no final state", i);
		tracker_check(&tr[i]);
		CHECK(tr[i].final_state[0] == DM_IO_CANCELLED && tr[i].final_error[0] == -ECANCELED,
		      "request %d ended %d (%d)", i, tr[i].final_state[0], tr[i].final_error[0]);
		CHECK(tr[i].timeouts[0] == (i == SHORT ? 0 : 1), "request %d: %d TIMEOUTs", i,
		      tr[i].timeouts[0]);
	}
	dm_io_client_destroy(cl);
	dm_io_bdev_close(held);
	dm_io_bdev_close(fast);
	printf("timeout_earlier_deadline: OK\n");
	return 0;
}
