/* Where asynchronous notify runs: never in the thread that submitted the
 * request, never inside a dm_io call (a thread-local flag is set around
 * every dm_io, including ones made from notify itself), always on the
 * same (completion) thread of the client, and never two callbacks of one
 * client at the same time. Exercised with 4 submitting threads and events
 * from every path: IO completion, errors from fault injection, deadlines
 * (TIMEOUT then late OK), cancel_by_handle from the submitter, and
 * requests submitted from inside notify. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { THREADS = 4, PER_THREAD = 40, MAXREQ = THREADS * PER_THREAD * 2, BYTES = 4096 };

struct req {
	pthread_t submitter;
	int nested;
	int regions;
	unsigned char buf[BYTES];
};

static struct dm_io_client *cl;
static struct block_device *good, *bad, *slow;
static unsigned char data[BYTES];
static struct req reqs[MAXREQ];
static int nreq;
static _Thread_local int in_dm_io;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int expected_finals, finals;
static int active, overlaps, inside, on_submitter, other_thread, calls, bad_states;
static int have_first;
static pthread_t first;

static void notify(struct dm_io_region_state *st, void *ctx);

static struct req *new_req(int nested, int regions)
{
	int i = __atomic_fetch_add(&nreq, 1, __ATOMIC_SEQ_CST);
	CHECK(i < MAXREQ, "too many requests");
	struct req *r = &reqs[i];
	r->submitter = pthread_self();
	r->nested = nested;
	r->regions = regions;
	pthread_mutex_lock(&lock);
	expected_finals += regions;
	pthread_mutex_unlock(&lock);
	return r;
}

static int submit(struct req *r, int rw, unsigned n, struct dm_io_region *reg, unsigned long timeout,
		  struct dm_io_handle **h)
{
	struct dm_io_control c = make_ctrl(cl, rw, vm_mem(rw == DM_IO_READ ? r->buf : data, 0),
					   notify, r);
	c.timeout = timeout;
	in_dm_io = 1;
	int rc = dm_io(&c, n, reg, h);
	in_dm_io = 0;
	return rc;
}

static void notify(struct dm_io_region_state *st, void *ctx)
{
	struct req *r = ctx;
	if (__atomic_add_fetch(&active, 1, __ATOMIC_SEQ_CST) != 1)
		__atomic_add_fetch(&overlaps, 1, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&calls, 1, __ATOMIC_SEQ_CST);
	if (in_dm_io)
		__atomic_add_fetch(&inside, 1, __ATOMIC_SEQ_CST);
	if (!r->nested && pthread_equal(pthread_self(), r->submitter))
		__atomic_add_fetch(&on_submitter, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&lock);
	if (!have_first) {
		have_first = 1;
		first = pthread_self();
	} else if (!pthread_equal(first, pthread_self())) {
		other_thread++;
	}
	pthread_mutex_unlock(&lock);
	if (st->state > DM_IO_ERROR)
		__atomic_add_fetch(&bad_states, 1, __ATOMIC_SEQ_CST);

	struct timespec ts = { 0, 100000 }; /* widen the window for overlaps */
	nanosleep(&ts, NULL);

	/* Submit a nested request from inside notify now and then. */
	if (!r->nested && st->state != DM_IO_TIMEOUT && st->index == 0 && (r - reqs) % 5 == 0) {
		struct req *n = new_req(1, 1);
		struct dm_io_region g = { good, 64, BYTES / 512 };
		int rc = submit(n, DM_IO_READ, 1, &g, 0, NULL);
		if (rc) {
			fprintf(stderr, "nested dm_io returned %d\n", rc);
			exit(1);
		}
	}

	__atomic_sub_fetch(&active, 1, __ATOMIC_SEQ_CST);
	if (st->state != DM_IO_TIMEOUT) {
		pthread_mutex_lock(&lock);
		finals++;
		pthread_cond_broadcast(&cond);
		pthread_mutex_unlock(&lock);
	}
}

static void *submitter(void *arg)
{
	long id = (long)arg;
	for (int i = 0; i < PER_THREAD; i++) {
		uint64_t sector = 8 * (uint64_t)(id * PER_THREAD + i);
		struct dm_io_region two_slow[2] = { { good, sector, 8 }, { slow, sector, 8 } };
		struct dm_io_region two_bad[2] = { { good, sector, 8 }, { bad, sector, 8 } };
		struct dm_io_region one = { good, sector, 8 };
		struct dm_io_region s1 = { slow, sector, 8 };
		struct dm_io_handle *h = NULL;
		int rc;
		switch (i % 4) {
		case 0: /* TIMEOUT from the deadline, then late OK */
			rc = submit(new_req(0, 2), DM_IO_WRITE, 2, two_slow, 5, NULL);
			break;
		case 1:
			rc = submit(new_req(0, 1), DM_IO_READ, 1, &one, 0, NULL);
			break;
		case 2: /* ERROR from fault injection */
			rc = submit(new_req(0, 2), DM_IO_WRITE, 2, two_bad, 0, NULL);
			break;
		default: /* CANCELLED from this thread */
			rc = submit(new_req(0, 1), DM_IO_WRITE, 1, &s1, 0, &h);
			if (rc == 0) {
				int n = dm_io_cancel_by_handle(cl, h);
				if (n < 0)
					rc = n;
				dm_io_handle_put(h);
			}
			break;
		}
		if (rc) {
			fprintf(stderr, "thread %ld request %d: dm_io returned %d (%s)\n", id, i, rc,
				dm_io_last_error());
			exit(1);
		}
	}
	return NULL;
}

int main(void)
{
	pthread_t th[THREADS];
	cl = make_client(2, 16, 4096);
	good = make_faulty_dev("good", 1 << 20, "", NULL);
	bad = make_faulty_dev("bad", 1 << 20, "error writes errno=EIO", NULL);
	slow = make_faulty_dev("slow", 1 << 20, "delay 20ms", NULL);
	fill_pattern(data, BYTES, 81);

	for (long i = 0; i < THREADS; i++)
		CHECK(pthread_create(&th[i], NULL, submitter, (void *)i) == 0, "pthread_create");
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);

	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 20;
	pthread_mutex_lock(&lock);
	while (finals < expected_finals)
		if (pthread_cond_timedwait(&cond, &lock, &ts) == ETIMEDOUT)
			break;
	int f = finals, e = expected_finals;
	pthread_mutex_unlock(&lock);
	CHECK(f == e, "%d of %d final notifications", f, e);
	sleep_ms(50);

	printf("%d notify calls for %d requests\n", calls, nreq);
	CHECK(overlaps == 0, "%d notify calls overlapped another of the same client", overlaps);
	CHECK(inside == 0, "%d notify calls ran inside a dm_io call", inside);
	CHECK(on_submitter == 0, "%d notify calls ran in the submitting thread", on_submitter);
	CHECK(other_thread == 0, "%d notify calls ran on a thread other than the first one's",
	      other_thread);
	CHECK(bad_states == 0, "%d notify calls with an unknown state", bad_states);

	dm_io_client_destroy(cl);
	dm_io_bdev_close(good);
	dm_io_bdev_close(bad);
	dm_io_bdev_close(slow);
	return 0;
}
