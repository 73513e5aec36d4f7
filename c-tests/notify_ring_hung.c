/* IO started from inside notify runs on the completion thread's own ring
 * (io_uring engine). On a really hung device (fixtures/hungdev.h) it must
 * behave exactly like IO started from any other thread:
 *
 * 1. A read submitted from notify, with a 100 ms timeout, into a held
 *    range gets TIMEOUT on time; cancel by handle (from the main thread)
 *    ends it CANCELLED at once while the kernel IO stays stuck.
 * 2. A read submitted from notify with DM_IO_CANCEL_ON_TIMEOUT ends
 *    CANCELLED/-ETIMEDOUT at its deadline.
 * 3. dm_io_client_destroy returns promptly with both still stuck in the
 *    kernel; after the release the kernel completes them into private
 *    memory: the callers' buffers are never written, nothing crashes.
 */
#include "helpers.h"
#include "hungdev.h"

#include <errno.h>
#include <string.h>

enum { DEV_BYTES = 16 << 20, LEN = 4096, CANARY = 0xCD };
#define OFF (1ULL << 20)
#define HOLD "hold read 1048576-1052671"

static struct dm_io_client *cl;
static struct block_device *dev;
static unsigned char first_buf[LEN], buf[2][LEN];
static struct tracker t[2];
static struct dm_io_handle *hdl[2];
static int submit_rc[2] = { 1, 1 };
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* Notify of a healthy read: starts the held read `which` from here. */
static void first_notify(struct dm_io_region_state *st, void *ctx)
{
	int which = (int)(intptr_t)ctx;
	if (st->state != DM_IO_OK)
		return;
	struct dm_io_region r = { dev, OFF / 512, LEN / 512 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(buf[which], 0), tracker_notify,
					   &t[which]);
	c.timeout = 100;
	c.flags = which == 1 ? DM_IO_CANCEL_ON_TIMEOUT : 0;
	struct dm_io_handle *h = NULL;
	int rc = dm_io(&c, 1, &r, &h);
	pthread_mutex_lock(&lock);
	submit_rc[which] = rc;
	hdl[which] = h;
	pthread_mutex_unlock(&lock);
}

static int all_canary(const unsigned char *b)
{
	for (size_t i = 0; i < LEN; i++)
		if (b[i] != CANARY)
			return 0;
	return 1;
}

/* A healthy read elsewhere whose notify starts held read `which`. */
static double start_from_notify(int which)
{
	struct dm_io_region r = { dev, 0, LEN / 512 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(first_buf, 0), first_notify,
					   (void *)(intptr_t)which);
	double t0 = now_ms();
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	for (int i = 0; i < 300; i++) {
		pthread_mutex_lock(&lock);
		int rc = submit_rc[which];
		pthread_mutex_unlock(&lock);
		if (rc != 1) {
			CHECK(rc == 0, "dm_io from notify returned %d", rc);
			return t0;
		}
		sleep_ms(10);
	}
	CHECK(0, "notify never ran");
	return t0;
}

int main(void)
{
	char status[1024];
	struct hungdev *h = hungdev_up(DEV_BYTES);
	if (!h)
		skip(hungdev_skip_reason());
	CHECK_OK(dm_io_client_create(1, 8, 64 * 1024, &cl));
	CHECK_OK(dm_io_bdev_open(hungdev_path(h), 0, &dev));
	CHECK_OK(hungdev_ctl(h, HOLD));
	memset(buf, CANARY, sizeof(buf));
	tracker_init(&t[0], 1);
	tracker_init(&t[1], 1);

	/* 1. TIMEOUT, then cancel by handle while stuck. */
	double t0 = start_from_notify(0);
	CHECK(tracker_wait_timeout(&t[0], 0, 3000), "no TIMEOUT within 3 s (%s)",
	      hungdev_status(h, status, sizeof(status)));
	double el = now_ms() - t0;
	CHECK(el >= 90 && el < 3000, "TIMEOUT after %.0f ms, expected ~100", el);
	CHECK(hungdev_wait_held(h, 1, 2000), "read not held in FUSE: %s",
	      hungdev_status(h, status, sizeof(status)));
	CHECK(tracker_finals(&t[0]) == 0, "final while the IO is held");
	CHECK(dm_io_cancel_by_handle(cl, hdl[0]) == 1, "cancel_by_handle did not cancel one region");
	CHECK(tracker_wait(&t[0], 2000), "CANCELLED not notified");
	tracker_check(&t[0]);
	CHECK(t[0].final_state[0] == DM_IO_CANCELLED && t[0].final_error[0] == -ECANCELED,
	      "state %d error %d", t[0].final_state[0], t[0].final_error[0]);
	CHECK(hungdev_held(h) >= 1, "held IO completed before the release");
	CHECK(dm_io_handle_put(hdl[0]) == NULL, "handle put");
	fprintf(stderr, "case 1: TIMEOUT after %.0f ms, cancelled with the IO stuck\n", el);

	/* 2. CANCEL_ON_TIMEOUT from notify. */
	t0 = start_from_notify(1);
	CHECK(tracker_wait(&t[1], 3000), "no final state within 3 s");
	el = now_ms() - t0;
	tracker_check(&t[1]);
	CHECK(t[1].final_state[0] == DM_IO_CANCELLED && t[1].final_error[0] == -ETIMEDOUT,
	      "state %d error %d, expected CANCELLED/-ETIMEDOUT", t[1].final_state[0],
	      t[1].final_error[0]);
	CHECK(el >= 90 && el < 3000, "cancelled after %.0f ms, expected ~100", el);
	CHECK(hungdev_wait_held(h, 2, 2000), "expected 2 reads held: %s",
	      hungdev_status(h, status, sizeof(status)));
	CHECK(dm_io_handle_put(hdl[1]) == NULL, "handle put");
	fprintf(stderr, "case 2: CANCELLED/-ETIMEDOUT after %.0f ms\n", el);

	/* 3. destroy does not wait for the stuck IO of the notify ring. */
	t0 = now_ms();
	dm_io_client_destroy(cl);
	el = now_ms() - t0;
	CHECK(el < 2000, "destroy took %.0f ms with IO stuck", el);
	CHECK(hungdev_held(h) == 2, "held IO completed early: %s",
	      hungdev_status(h, status, sizeof(status)));
	CHECK_OK(hungdev_ctl(h, "release"));
	CHECK(hungdev_wait_held(h, 0, 5000), "held IO not released: %s",
	      hungdev_status(h, status, sizeof(status)));
	for (int i = 0; i < 100 && hungdev_inflight(h) > 0; i++)
		sleep_ms(10);
	CHECK(hungdev_inflight(h) == 0, "IO still in flight after release");
	sleep_ms(100);
	CHECK(all_canary(buf[0]) && all_canary(buf[1]), "a cancelled read wrote the caller's buffer");
	CHECK(t[0].finals == 1 && t[1].finals == 1 && t[0].calls_after_final == 0 &&
		      t[1].calls_after_final == 0,
	      "notify after the final state");
	fprintf(stderr, "case 3: destroy took %.0f ms; released IO completed into private memory\n",
		el);
	dm_io_bdev_close(dev);
	hungdev_down(h);
	return 0;
}
