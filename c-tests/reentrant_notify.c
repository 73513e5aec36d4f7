/* reentrant_notify: every dm_io call works from inside a notify callback
 * on the completion thread: cancel_by_handle of another (held) request,
 * handle_put of a handle the caller holds, a new asynchronous dm_io, a
 * SYNC dm_io (it runs its own notify inline and returns 0; no deadlock),
 * dm_io_client_stats, and finally dm_io_client_destroy of the client itself
 * (returns at once; the completion thread ends after the callback). */
#include "helpers.h"

#include <errno.h>
#include <string.h>

static struct dm_io_client *cl;
static struct block_device *fast, *held;
static struct dm_io_handle *held_hdl;
static struct tracker held_t, chained_t;
static int cancel_rc = -1000, sync_rc = -1000, stats_rc = -1000, sync_notified;
static struct dm_io_handle *put_rc = (struct dm_io_handle *)1;
static char buf_a[4096], buf_b[4096], buf_c[4096], buf_d[4096];
static volatile int step_done, destroyed;

static void sync_notify(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state == DM_IO_OK)
		sync_notified++;
}

static void first_notify(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state != DM_IO_OK)
		return;
	cancel_rc = dm_io_cancel_by_handle(cl, held_hdl);
	put_rc = dm_io_handle_put(held_hdl);

	struct dm_io_region r = { fast, 64, 8 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(buf_c, 0),
						   tracker_notify, &chained_t);
	CHECK_OK(dm_io(&c, 1, &r, NULL));

	struct dm_io_control s = {
		.memory = { .type = DM_IO_VM, .ptr.vma = buf_d },
		.rw = DM_IO_READ | DM_IO_SYNC,
		.notify = sync_notify,
		.client = cl,
		.timeout = 5000,
	};
	sync_rc = dm_io(&s, 1, &r, NULL);
	struct dm_io_stats st2;
	stats_rc = dm_io_client_stats(cl, &st2, sizeof st2);
	step_done = 1;
}

static void destroy_notify(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state == DM_IO_OK) {
		dm_io_client_destroy(cl);
		destroyed = 1;
	}
}

int main(void)
{
	CHECK_OK(dm_io_client_create(2, 4, 4096, &cl));
	fast = make_dev("fast", 1 << 20);
	CHECK_OK(dm_io_bdev_open_faulty(make_file("held", 1 << 20), "hang", &held));

	tracker_init(&held_t, 1);
	tracker_init(&chained_t, 1);
	memset(buf_b, 0xAB, sizeof buf_b);
	struct dm_io_region hr = { held, 0, 8 };
	struct dm_io_control hc = make_ctrl(cl, DM_IO_READ, vm_mem(buf_b, 0),
						   tracker_notify, &held_t);
	CHECK_OK(dm_io(&hc, 1, &hr, &held_hdl));

	struct dm_io_region fr = { fast, 0, 8 };
	struct dm_io_control fc = {
		.memory = { .type = DM_IO_VM, .ptr.vma = buf_a },
		.rw = DM_IO_WRITE,
		.notify = first_notify,
		.client = cl,
	};
	CHECK_OK(dm_io(&fc, 1, &fr, NULL));

	double t0 = now_ms();
	while (!step_done) {
		CHECK(now_ms() - t0 < 10000, "notify chain stuck (deadlock?)");
		sleep_ms(1);
	}
	CHECK(cancel_rc == 1, "cancel_by_handle from notify returned %d", cancel_rc);
	CHECK(put_rc == NULL, "handle_put from notify returned %p", (void *)put_rc);
	CHECK(sync_rc == 0, "SYNC dm_io from notify returned %d", sync_rc);
	CHECK(sync_notified == 1, "SYNC notify ran %d times", sync_notified);
	CHECK(stats_rc == 0, "stats from notify returned %d", stats_rc);
	CHECK(tracker_wait(&chained_t, 5000), "request submitted from notify never finished");
	CHECK(chained_t.final_state[0] == DM_IO_OK, "chained state %d", chained_t.final_state[0]);
	CHECK(tracker_wait(&held_t, 5000), "held request not final after cancel");
	CHECK(held_t.final_state[0] == DM_IO_CANCELLED, "held state %d", held_t.final_state[0]);
	CHECK_OK(dm_io_bdev_set_faults(held, ""));
	sleep_ms(50);
	for (size_t i = 0; i < sizeof buf_b; i++)
		CHECK((unsigned char)buf_b[i] == 0xAB, "cancelled read wrote byte %zu", i);
	tracker_check(&held_t);
	tracker_check(&chained_t);

	/* Destroying the client from its own notify callback. */
	struct dm_io_control dc = {
		.memory = { .type = DM_IO_VM, .ptr.vma = buf_a },
		.rw = DM_IO_WRITE,
		.notify = destroy_notify,
		.client = cl,
	};
	CHECK_OK(dm_io(&dc, 1, &fr, NULL));
	t0 = now_ms();
	while (!destroyed) {
		CHECK(now_ms() - t0 < 10000, "destroy from notify did not return");
		sleep_ms(1);
	}
	struct dm_io_stats st;
	CHECK(dm_io_client_stats(cl, &st, sizeof st) == -EINVAL, "destroyed client still usable");
	dm_io_bdev_close(fast);
	dm_io_bdev_close(held);
	return 0;
}
