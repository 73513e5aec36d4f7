/* DM_IO_SYNC | DM_IO_RETURN_ON_TIMEOUT on writes: dm_io returns once every
 * region has had its first notification (its final state, or TIMEOUT at
 * the deadline), all of them delivered inside dm_io in the caller's thread;
 * a region that timed out is notified again (final) later, from another
 * thread, and the caller's buffer is not read after dm_io returned (the
 * data on the device is what the buffer held at the call). Covered: a slow
 * leg (delay), a hung leg released later, a cancel by handle after the
 * return, a caller thread that exits before the late completion, a destroy
 * with such a write still running, the bad combinations (-EINVAL), and
 * private memory back to 0 at the end. */
#include "helpers.h"

#include <errno.h>
#include <string.h>

/* The deadline leaves a healthy leg time to finish on a loaded machine. */
enum { LEN = 16 * 1024, S = LEN / 512, TMO = 200 };

static __thread int in_dm_io;
static double slack = 150; /* ms after the deadline dm_io may return (more when instrumented) */
static atomic_int inside, outside, outside_timeouts;

static void notify(struct dm_io_region_state *st, void *ctx)
{
	if (in_dm_io)
		atomic_fetch_add(&inside, 1);
	else {
		atomic_fetch_add(&outside, 1);
		if (st->state == DM_IO_TIMEOUT)
			atomic_fetch_add(&outside_timeouts, 1);
	}
	tracker_notify(st, ctx);
}

static int write_rot(struct dm_io_client *cl, unsigned n, struct dm_io_region *r, void *buf,
		     struct tracker *t, struct dm_io_handle **hdl, double *ms)
{
	tracker_init(t, n);
	atomic_store(&inside, 0);
	atomic_store(&outside, 0);
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE | DM_IO_SYNC, vm_mem(buf, 0), notify, t);
	c.timeout = TMO;
	c.flags = DM_IO_RETURN_ON_TIMEOUT;
	double t0 = now_ms();
	in_dm_io = 1;
	int rc = dm_io(&c, n, r, hdl);
	in_dm_io = 0;
	if (ms)
		*ms = now_ms() - t0;
	return rc;
}

static uint64_t in_use(struct dm_io_client *cl)
{
	struct dm_io_stats st;
	CHECK(dm_io_client_stats(cl, &st, sizeof st) == 0, "stats");
	return st.private_bytes_in_use;
}

static void check_file(const char *path, uint64_t sector, unsigned seed, const char *what)
{
	static unsigned char back[LEN];
	read_file(path, sector * 512, back, LEN);
	CHECK(check_pattern(back, LEN, seed), "%s: the data on the device is not the buffer's at the call",
	      what);
}

/* After dm_io returned with region 1 timed out: region 0 final OK and
 * region 1's TIMEOUT delivered inside dm_io, nothing outside yet. */
static void check_returned(struct tracker *t, int rc, double ms)
{
	CHECK(rc == -ETIMEDOUT, "dm_io returned %d, expected -ETIMEDOUT", rc);
	CHECK(ms >= TMO - 1 && ms < TMO + slack, "dm_io returned after %.1f ms (deadline %d ms)", ms, TMO);
	CHECK(t->final_state[0] == DM_IO_OK, "region 0: final state %d", t->final_state[0]);
	CHECK(t->timeouts[1] == 1 && t->final_state[1] == -1, "region 1: %d TIMEOUTs, final state %d",
	      t->timeouts[1], t->final_state[1]);
	CHECK(atomic_load(&inside) == 2, "%d notifications inside dm_io, expected 2", atomic_load(&inside));
}

/* The late final notification: from another thread, once. */
static void check_late(struct tracker *t, int state, pthread_t caller)
{
	CHECK(tracker_wait(t, 10000), "the region that timed out never ended");
	tracker_check(t);
	CHECK(t->final_state[1] == state, "region 1: final state %d error %d, expected %d", t->final_state[1],
	      t->final_error[1], state);
	CHECK(atomic_load(&outside) == 1, "%d notifications after dm_io returned, expected 1",
	      atomic_load(&outside));
	CHECK(atomic_load(&outside_timeouts) == 0, "a TIMEOUT after dm_io returned");
	CHECK(!pthread_equal(t->thread[1], caller), "late notification in the caller's thread");
}

struct exiter {
	struct dm_io_client *cl;
	struct dm_io_region r[2];
	unsigned char *buf;
	struct tracker *t;
	int rc;
	double ms;
};

static int exiter_main(void *arg)
{
	struct exiter *e = arg;
	e->rc = write_rot(e->cl, 2, e->r, e->buf, e->t, NULL, &e->ms);
	memset(e->buf, 0xEE, LEN);
	return 0; /* the thread exits with region 1 still held */
}

int main(void)
{
	static unsigned char buf[LEN];
	const char *pa, *pb;
	pthread_t me = pthread_self();
	if (getenv("DMIO_TEST_INSTRUMENTED"))
		slack = 3000;
	struct dm_io_client *cl = make_client(2, 4, 64 * 1024);
	struct block_device *a = make_faulty_dev("a", 1 << 20, "", &pa);
	struct block_device *b = make_faulty_dev("b", 1 << 20, "", &pb);
	struct tracker t;
	double ms;

	/* Healthy legs: an ordinary SYNC write (0, both final inside). */
	fill_pattern(buf, LEN, 1);
	struct dm_io_region r[2] = { { a, 0, S }, { b, 0, S } };
	CHECK_OK(write_rot(cl, 2, r, buf, &t, NULL, &ms));
	CHECK(tracker_finals(&t) == 2 && atomic_load(&inside) == 2, "healthy: %u final, %d inside",
	      tracker_finals(&t), atomic_load(&inside));
	tracker_check(&t);
	check_file(pa, 0, 1, "healthy a");
	check_file(pb, 0, 1, "healthy b");

	/* A slow leg: returns at the deadline; the delayed write lands later,
	 * on its schedule (not started again), with the data of the call. */
	CHECK_OK(dm_io_bdev_set_faults(b, "delay write=600ms"));
	fill_pattern(buf, LEN, 2);
	r[0].sector = r[1].sector = 64;
	double t0 = now_ms();
	int rc = write_rot(cl, 2, r, buf, &t, NULL, &ms);
	check_returned(&t, rc, ms);
	memset(buf, 0, LEN);
	check_late(&t, DM_IO_OK, me);
	double late = now_ms() - t0;
	CHECK(late >= 590 && late < 1400 + 10 * slack, "the delayed write ended %.0f ms after the call (delay 600 ms)", late);
	check_file(pb, 64, 2, "slow b");
	CHECK_OK(dm_io_bdev_set_faults(b, ""));

	/* A hung leg, released after the return. */
	CHECK_OK(dm_io_bdev_set_faults(b, "hang writes"));
	fill_pattern(buf, LEN, 3);
	r[0].sector = r[1].sector = 128;
	rc = write_rot(cl, 2, r, buf, &t, NULL, &ms);
	check_returned(&t, rc, ms);
	memset(buf, 0, LEN);
	sleep_ms(100);
	CHECK(tracker_finals(&t) == 1, "the hung region ended while held");
	CHECK_OK(dm_io_bdev_set_faults(b, ""));
	check_late(&t, DM_IO_OK, me);
	check_file(pa, 128, 3, "released a");
	check_file(pb, 128, 3, "released b");

	/* Cancelled by handle after the return. */
	CHECK_OK(dm_io_bdev_set_faults(b, "hang writes"));
	fill_pattern(buf, LEN, 4);
	struct dm_io_handle *h = NULL;
	rc = write_rot(cl, 2, r, buf, &t, &h, &ms);
	check_returned(&t, rc, ms);
	CHECK(h != NULL, "no handle");
	CHECK(dm_io_cancel_by_handle(cl, h) == 1, "cancel did not cancel the running region");
	check_late(&t, DM_IO_CANCELLED, me);
	CHECK(t.final_error[1] == -ECANCELED, "cancelled with %d", t.final_error[1]);
	dm_io_handle_put(h);
	CHECK_OK(dm_io_bdev_set_faults(b, ""));

	/* The caller's thread exits before the late completion. */
	CHECK_OK(dm_io_bdev_set_faults(b, "hang writes"));
	static unsigned char ebuf[LEN];
	fill_pattern(ebuf, LEN, 5);
	struct exiter e = { .cl = cl, .r = { { a, 256, S }, { b, 256, S } }, .buf = ebuf, .t = &t };
	struct bg g;
	bg_start(&g, exiter_main, &e);
	CHECK(bg_wait(&g, 10000), "the writer thread did not return");
	check_returned(&t, e.rc, e.ms);
	atomic_store(&inside, 0); /* inside counted the other thread's calls */
	sleep_ms(50);
	CHECK_OK(dm_io_bdev_set_faults(b, ""));
	CHECK(tracker_wait(&t, 10000), "the region of the exited thread never ended");
	tracker_check(&t);
	CHECK(t.final_state[1] == DM_IO_OK, "exited thread's region: state %d error %d", t.final_state[1],
	      t.final_error[1]);
	check_file(pb, 256, 5, "exited thread's b");

	/* A destroy with such a write still running: CANCELLED (-ESHUTDOWN)
	 * delivered before it returns. */
	struct dm_io_client *cl2 = make_client(2, 4, 64 * 1024);
	CHECK_OK(dm_io_bdev_set_faults(b, "hang writes"));
	fill_pattern(buf, LEN, 6);
	r[0].sector = r[1].sector = 384;
	rc = write_rot(cl2, 2, r, buf, &t, NULL, &ms);
	check_returned(&t, rc, ms);
	dm_io_client_destroy(cl2);
	CHECK(tracker_finals(&t) == 2, "destroy returned before the running region ended");
	CHECK(t.final_state[1] == DM_IO_CANCELLED && t.final_error[1] == -ESHUTDOWN,
	      "after destroy: state %d error %d", t.final_state[1], t.final_error[1]);
	CHECK_OK(dm_io_bdev_set_faults(b, ""));

	/* Only SYNC writes without zero-copy. */
	struct dm_io_region one = { a, 0, S };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ | DM_IO_SYNC, vm_mem(buf, 0), notify, &t);
	c.flags = DM_IO_RETURN_ON_TIMEOUT;
	CHECK(dm_io(&c, 1, &one, NULL) == -EINVAL, "accepted on a read");
	c.rw = DM_IO_WRITE;
	CHECK(dm_io(&c, 1, &one, NULL) == -EINVAL, "accepted without DM_IO_SYNC");
	c.rw = DM_IO_WRITE | DM_IO_SYNC;
	c.flags = DM_IO_RETURN_ON_TIMEOUT | DM_IO_ZERO_COPY;
	CHECK(dm_io(&c, 1, &one, NULL) == -EINVAL, "accepted with DM_IO_ZERO_COPY");

	t0 = now_ms();
	while (in_use(cl) != 0 && now_ms() - t0 < 5000)
		sleep_ms(5);
	CHECK(in_use(cl) == 0, "%llu bytes of private memory still in use", (unsigned long long)in_use(cl));
	dm_io_client_destroy(cl);
	dm_io_bdev_close(a);
	dm_io_bdev_close(b);
	printf("sync_return_on_timeout: ok\n");
	return 0;
}
