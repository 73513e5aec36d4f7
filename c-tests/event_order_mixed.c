/* event_order_mixed: a region's TIMEOUT comes before its final state even
 * when the two are emitted by different threads. The completion thread
 * keeps a local queue for events it emits itself (cancels from a callback,
 * IO and timers of its own ring); this checks the rule that keeps the order
 * when other threads' events are queued too.
 *
 * Part 1: a callback blocks the completion thread; the main thread then
 * submits requests whose deadline passes while it is blocked, and the
 * callback, released, cancels them. With the thread-pool engine a timer
 * thread fires the deadlines, so their TIMEOUTs wait in the queue: each
 * must see TIMEOUT, then CANCELLED, and nothing after. With io_uring the
 * completion thread keeps the deadlines of asynchronous requests itself
 * (header: `timeout`), so none fires while it is blocked: each must end
 * CANCELLED with no TIMEOUT.
 * Part 2: requests submitted from a callback (deadlines on the completion
 * thread's own ring, both engines alike): TIMEOUT, then CANCELLED from a
 * later callback. */
#include "helpers.h"

#include <errno.h>
#include <stdatomic.h>

#define N 16

static struct dm_io_client *cl;
static struct block_device *fast, *held;
static struct tracker held_t[N], second_t[N], trig_t, trig2_t;
static struct dm_io_handle *hdl[N], *hdl2[N];
static char bufs[N][4096], fbuf[4096];
static atomic_int cancelled1, cancelled2, submitted2;
static int cancel_rc[N], cancel2_rc[N];
static atomic_int blocked1, release1;

#define DEADLINE_MS 20

/* N held reads with a DEADLINE_MS deadline, one per tracker, handles kept. */
static void submit_held(struct tracker *t, struct dm_io_handle **h)
{
	for (int i = 0; i < N; i++) {
		struct dm_io_region r = { held, (uint64_t)i * 8, 8 };
		struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(bufs[i], 0),
						   tracker_notify, &t[i]);
		c.timeout = DEADLINE_MS;
		CHECK_OK(dm_io(&c, 1, &r, &h[i]));
	}
}

/* Blocks the completion thread until the main thread has submitted the
 * held reads and their deadlines have passed, then cancels them. */
static void block_then_cancel(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state != DM_IO_OK)
		return;
	atomic_store(&blocked1, 1);
	wait_flag(&release1, "part 1: the main thread's release of the blocking callback");
	for (int i = 0; i < N; i++)
		cancel_rc[i] = dm_io_cancel_by_handle(cl, hdl[i]);
	atomic_store(&cancelled1, 1);
}

/* Submits N held reads with a deadline from the completion thread. */
static void submit_from_notify(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state != DM_IO_OK)
		return;
	submit_held(second_t, hdl2);
	atomic_store(&submitted2, 1);
}

static void cancel_second(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state != DM_IO_OK)
		return;
	for (int i = 0; i < N; i++)
		cancel2_rc[i] = dm_io_cancel_by_handle(cl, hdl2[i]);
	atomic_store(&cancelled2, 1);
}

static void fast_read(dm_io_notify_fn fn, struct tracker *t)
{
	struct dm_io_region r = { fast, 0, 8 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(fbuf, 0), fn, t);
	CHECK_OK(dm_io(&c, 1, &r, NULL));
}

static void check_cancelled(struct tracker *t, const char *part, int i, int want_timeouts)
{
	CHECK(tracker_wait(t, 10000), "%s: request %d has no final state", part, i);
	tracker_check(t); /* nothing after the final state, at most one TIMEOUT */
	CHECK(t->timeouts[0] == want_timeouts,
	      "%s: request %d: %d TIMEOUTs before its final state (want %d)", part, i,
	      t->timeouts[0], want_timeouts);
	CHECK(t->final_state[0] == DM_IO_CANCELLED, "%s: request %d ended %d, not CANCELLED", part,
	      i, t->final_state[0]);
	CHECK(t->final_error[0] == -ECANCELED, "%s: request %d error %d", part, i,
	      t->final_error[0]);
}

int main(void)
{
	CHECK_OK(dm_io_client_create(1, 2 * N + 2, 4096, &cl));
	fast = make_dev("fast", 1 << 20);
	held = make_faulty_dev("held", 1 << 20, "hang reads", 0);

	/* Part 1: deadlines of requests submitted here, cancel from a blocked
	 * callback. */
	struct dm_io_stats st;
	CHECK_OK(dm_io_client_stats(cl, &st, sizeof st));
	int uring = st.engine == DM_IO_ENGINE_URING;
	for (int i = 0; i < N; i++)
		tracker_init(&held_t[i], 1);
	tracker_init(&trig_t, 1);
	fast_read(block_then_cancel, &trig_t);
	wait_flag(&blocked1, "part 1 blocking callback");
	submit_held(held_t, hdl);
	sleep_ms(10 * DEADLINE_MS); /* the deadlines pass while the callback blocks */
	atomic_store(&release1, 1);
	wait_flag(&cancelled1, "part 1 cancel");
	for (int i = 0; i < N; i++) {
		CHECK(cancel_rc[i] == 1, "part 1: cancel_by_handle(%d) = %d, want 1", i, cancel_rc[i]);
		check_cancelled(&held_t[i], uring ? "part 1 (io_uring)" : "part 1 (threads)", i,
				uring ? 0 : 1);
		dm_io_handle_put(hdl[i]);
	}

	/* Part 2: deadlines on the completion thread's own ring. */
	for (int i = 0; i < N; i++)
		tracker_init(&second_t[i], 1);
	fast_read(submit_from_notify, &trig_t);
	wait_flag(&submitted2, "part 2 submission");
	for (int i = 0; i < N; i++)
		CHECK(tracker_wait_timeout(&second_t[i], 0, 10000),
		      "part 2: request %d got no TIMEOUT", i);
	fast_read(cancel_second, &trig2_t);
	wait_flag(&cancelled2, "part 2 cancel");
	for (int i = 0; i < N; i++) {
		CHECK(cancel2_rc[i] == 1, "part 2: cancel_by_handle(%d) = %d, want 1", i,
		      cancel2_rc[i]);
		check_cancelled(&second_t[i], "part 2", i, 1);
		dm_io_handle_put(hdl2[i]);
	}

	dm_io_client_destroy(cl);
	dm_io_bdev_close(fast);
	dm_io_bdev_close(held);
	printf("event_order_mixed: OK\n");
	return 0;
}
