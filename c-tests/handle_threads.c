/* Request handles across threads: dm_io(.., &hdl) gives a referenced
 * handle; dm_io_handle_get works from another thread; gets and puts race
 * safely from several threads; dm_io_handle_put returns the handle while
 * references remain and NULL for the last one; a further (double) put
 * returns NULL without crashing; releasing the handle does not cancel the
 * IO; notify's state->hdl is the handle dm_io returned; and a reference
 * taken with dm_io_handle_get(state->hdl) inside notify keeps the handle
 * valid after the request has ended, until it is put. */
#include "helpers.h"
#include <string.h>

enum { BYTES = 8192, S = BYTES / 512, NTHREADS = 4, ROUNDS = 1000 };
static unsigned char data[BYTES];
static struct dm_io_handle *shared;

static void *getter(void *arg)
{
	(void)arg;
	return dm_io_handle_get(shared);
}

static pthread_barrier_t barrier;

static void *churn(void *arg)
{
	long bad = 0;
	(void)arg;
	pthread_barrier_wait(&barrier);
	for (int i = 0; i < ROUNDS; i++) {
		if (dm_io_handle_get(shared) != shared)
			bad++;
		if (dm_io_handle_put(shared) != shared)
			bad++;
	}
	return (void *)bad;
}

static void *putter(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&barrier);
	return dm_io_handle_put(shared);
}

static struct dm_io_handle *kept;
static int kept_gets_failed;

static void keep_notify(struct dm_io_region_state *st, void *ctx)
{
	if (st->state != DM_IO_TIMEOUT && st->index == 0) {
		kept = dm_io_handle_get(st->hdl);
		if (kept != st->hdl)
			kept_gets_failed++;
	}
	tracker_notify(st, ctx);
}

int main(void)
{
	struct dm_io_client *cl = make_client(2, 4, 64 * 1024);
	struct block_device *a = make_faulty_dev("a", 1 << 20, "hang", NULL);
	struct block_device *b = make_faulty_dev("b", 1 << 20, "hang", NULL);
	struct dm_io_region w[2] = { { a, 8, S }, { b, 8, S } };
	struct tracker t;
	pthread_t th[NTHREADS];
	void *res[NTHREADS];

	/* Part 1: a held two-region write with a handle. */
	tracker_init(&t, 2);
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	struct dm_io_handle *hdl = NULL;
	CHECK_OK(dm_io(&c, 2, w, &hdl));
	CHECK(hdl != NULL, "dm_io did not return a handle");
	shared = hdl;

	/* A get from another thread. */
	CHECK(pthread_create(&th[0], NULL, getter, NULL) == 0, "pthread_create");
	pthread_join(th[0], &res[0]);
	CHECK(res[0] == hdl, "dm_io_handle_get from another thread returned %p, not %p", res[0],
	      (void *)hdl);
	/* Concurrent get/put pairs (we hold 2 references meanwhile). */
	pthread_barrier_init(&barrier, NULL, NTHREADS);
	for (int i = 0; i < NTHREADS; i++)
		CHECK(pthread_create(&th[i], NULL, churn, NULL) == 0, "pthread_create");
	for (int i = 0; i < NTHREADS; i++) {
		pthread_join(th[i], &res[i]);
		CHECK(res[i] == NULL, "thread %d: %ld get/put calls did not return the handle", i,
		      (long)res[i]);
	}
	pthread_barrier_destroy(&barrier);
	CHECK(dm_io_handle_get(hdl) == hdl, "get"); /* 3 references now */
	CHECK(tracker_finals(&t) == 0, "the held write finished early");

	CHECK_OK(dm_io_bdev_set_faults(a, ""));
	CHECK_OK(dm_io_bdev_set_faults(b, ""));
	CHECK(tracker_wait(&t, 5000), "write did not finish after release");
	tracker_check(&t);
	CHECK(tracker_count(&t, DM_IO_OK) == 2, "regions not OK");
	CHECK(t.hdl_seen == hdl, "notify's state->hdl %p is not the returned handle %p",
	      (void *)t.hdl_seen, (void *)hdl);
	sleep_ms(100); /* let the library drop its own reference */

	/* Three puts from three threads: two see the handle, one NULL. */
	pthread_barrier_init(&barrier, NULL, 3);
	for (int i = 0; i < 3; i++)
		CHECK(pthread_create(&th[i], NULL, putter, NULL) == 0, "pthread_create");
	int nulls = 0, same = 0;
	for (int i = 0; i < 3; i++) {
		pthread_join(th[i], &res[i]);
		nulls += res[i] == NULL;
		same += res[i] == hdl;
	}
	pthread_barrier_destroy(&barrier);
	CHECK(nulls == 1 && same == 2, "3 puts of 3 references: %d NULL, %d handle (want 1, 2)",
	      nulls, same);
	CHECK(dm_io_handle_put(hdl) == NULL, "double put did not return NULL");
	CHECK(dm_io_last_error()[0] != '\0', "no message after a double put");
	CHECK(dm_io_handle_get(hdl) == NULL, "a handle with no references left is still live");

	/* Part 2: putting the last reference does not cancel the IO. */
	CHECK_OK(dm_io_bdev_set_faults(a, "hang"));
	tracker_init(&t, 1);
	c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	hdl = NULL;
	CHECK_OK(dm_io(&c, 1, w, &hdl));
	CHECK(dm_io_handle_put(hdl) == NULL, "put of the only reference did not return NULL");
	sleep_ms(50);
	CHECK(tracker_finals(&t) == 0, "putting the handle ended the request");
	CHECK_OK(dm_io_bdev_set_faults(a, ""));
	CHECK(tracker_wait(&t, 5000), "write did not finish after release");
	CHECK(t.final_state[0] == DM_IO_OK, "state %d error %d after the handle was put",
	      t.final_state[0], t.final_error[0]);
	CHECK(t.hdl_seen != NULL, "notify's state->hdl is NULL");

	/* Part 3: a reference taken inside notify outlives the request. */
	tracker_init(&t, 2);
	c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), keep_notify, &t);
	CHECK_OK(dm_io(&c, 2, w, NULL));
	CHECK(tracker_wait(&t, 5000), "write did not finish");
	CHECK(kept != NULL && kept_gets_failed == 0, "dm_io_handle_get(state->hdl) in notify failed");
	sleep_ms(100);
	CHECK(dm_io_handle_get(kept) == kept, "kept handle is not live after the request ended");
	CHECK(dm_io_cancel_by_handle(cl, kept) == 0, "cancel of a finished request did not return 0");
	CHECK(dm_io_handle_put(kept) == kept, "put with a reference left did not return the handle");
	CHECK(dm_io_handle_put(kept) == NULL, "last put did not return NULL");
	CHECK(dm_io_handle_put(kept) == NULL, "double put did not return NULL");
	CHECK(dm_io_handle_get(kept) == NULL, "handle still live after its last put");

	dm_io_client_destroy(cl);
	dm_io_bdev_close(a);
	dm_io_bdev_close(b);
	return 0;
}
