/* The opaque pointers C holds (clients, devices, request handles) are looked
 * up without a lock: lookups of live, stale and made-up pointers race with
 * the removes and reuses of the same table slots, from several threads.
 * A live pointer works; a stale or made-up one fails with -EINVAL (NULL for
 * the handle calls, 0 sectors for a device) and never reads freed memory
 * (ASan and valgrind run this test too).
 *
 * Threads, for DMIO_THREADS_SECONDS (default 2) seconds:
 *   - a submitter: async reads with a handle each, at depth 8, publishing
 *     each handle in a shared array, putting it (still published) when it
 *     reuses the array slot;
 *   - two handle pokers: get/put and cancel_by_handle on whatever the array
 *     holds (live or stale by then), and on made-up handles;
 *   - a device churner: opens and closes devices (closed while still
 *     published), publishing each; and a
 *     device reader: dm_io_bdev_sectors on published (maybe closed) devices;
 *   - a client churner: creates and destroys clients, publishing each; and
 *     a client reader: dm_io_client_stats on published (maybe destroyed)
 *     clients. */
#include "helpers.h"
#include <errno.h>
#include <sched.h>
#include <semaphore.h>
#include <string.h>

enum { BLK = 4096, NBLK = 64, Q = 8, SLOTS = 32 };

static struct dm_io_client *cl;
static struct block_device *dev;
static const char *path;
static atomic_int stop;
static _Atomic(struct dm_io_handle *) handles[SLOTS];
static _Atomic(struct block_device *) devs[4];
static _Atomic(struct dm_io_client *) clients[4];
static sem_t slots_free;
static atomic_long ends, gets_ok, gets_stale, cancels, dev_ok, dev_stale, cl_ok, cl_stale;
static atomic_int bad;
static unsigned char bufs[Q][BLK] __attribute__((aligned(4096)));
static atomic_int buf_busy[Q];

static void notify(struct dm_io_region_state *st, void *ctx)
{
	(void)st;
	atomic_store(&buf_busy[(long)ctx], 0);
	atomic_fetch_add(&ends, 1);
	sem_post(&slots_free);
}

static unsigned long rnd(unsigned long *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static void *submitter(void *arg)
{
	(void)arg;
	unsigned long x = 1, n = 0;
	while (!atomic_load(&stop)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 10;
		if (sem_timedwait(&slots_free, &ts) != 0) {
			fprintf(stderr, "no read ended within 10 s\n");
			atomic_store(&bad, 1);
			break;
		}
		long b = -1;
		for (int i = 0; i < Q && b < 0; i++) {
			int z = 0;
			if (atomic_compare_exchange_strong(&buf_busy[i], &z, 1))
				b = i;
		}
		if (b < 0) { /* the notify posts before its buffer is seen free: retry */
			sem_post(&slots_free);
			continue;
		}
		struct dm_io_region r = { dev, (rnd(&x) % NBLK) * (BLK / 512), BLK / 512 };
		struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(bufs[b], 0), notify, (void *)b);
		struct dm_io_handle *h = NULL;
		int rc = dm_io(&c, 1, &r, &h);
		if (rc != 0) {
			fprintf(stderr, "dm_io: %d\n", rc);
			atomic_store(&bad, 1);
			break;
		}
		/* Put the handle it replaces while still published (the pokers
		 * then see it stale once its read has ended), then publish. */
		unsigned i = n++ % SLOTS;
		struct dm_io_handle *old = atomic_load(&handles[i]);
		if (old)
			dm_io_handle_put(old);
		atomic_store(&handles[i], h);
	}
	return NULL;
}

static void *handle_poker(void *arg)
{
	unsigned long x = 7 + (long)arg;
	while (!atomic_load(&stop)) {
		struct dm_io_handle *h = atomic_load(&handles[rnd(&x) % SLOTS]);
		if (!h)
			continue;
		/* The slot's owner may put it meanwhile: then this is stale. */
		struct dm_io_handle *g = dm_io_handle_get(h);
		if (g) {
			if (g != h)
				atomic_store(&bad, 1);
			atomic_fetch_add(&gets_ok, 1);
			if (rnd(&x) % 4 == 0 && dm_io_cancel_by_handle(cl, g) >= 0)
				atomic_fetch_add(&cancels, 1);
			dm_io_handle_put(g);
		} else {
			atomic_fetch_add(&gets_stale, 1);
			int rc = dm_io_cancel_by_handle(cl, h);
			if (rc < 0 && rc != -EINVAL)
				atomic_store(&bad, 1);
		}
		/* Made up: an index never handed out, and a random word. */
		struct dm_io_handle *fake = (struct dm_io_handle *)(rnd(&x) | 0x80000000ul);
		if (dm_io_handle_get(fake) || dm_io_handle_put(fake) ||
		    dm_io_cancel_by_handle(cl, fake) != -EINVAL) {
			fprintf(stderr, "a made-up handle was accepted\n");
			atomic_store(&bad, 1);
		}
		sched_yield(); /* valgrind runs one thread at a time: let the others run */
	}
	return NULL;
}

static void *dev_churner(void *arg)
{
	(void)arg;
	unsigned n = 0;
	while (!atomic_load(&stop)) {
		struct block_device *d;
		if (dm_io_bdev_open(path, 0, &d) != 0) {
			atomic_store(&bad, 1);
			break;
		}
		/* Closed while still published: the reader sees it stale. */
		unsigned i = n++ % 4;
		struct block_device *old = atomic_load(&devs[i]);
		if (old)
			dm_io_bdev_close(old);
		atomic_store(&devs[i], d);
	}
	return NULL;
}

static void *dev_reader(void *arg)
{
	unsigned long x = 99 + (long)arg;
	while (!atomic_load(&stop)) {
		struct block_device *d = atomic_load(&devs[rnd(&x) % 4]);
		if (!d)
			continue;
		sector_t s = dm_io_bdev_sectors(d);
		if (s == (sector_t)NBLK * (BLK / 512))
			atomic_fetch_add(&dev_ok, 1);
		else if (s == 0)
			atomic_fetch_add(&dev_stale, 1);
		else
			atomic_store(&bad, 1);
		sched_yield();
	}
	return NULL;
}

static void *client_churner(void *arg)
{
	(void)arg;
	unsigned n = 0;
	while (!atomic_load(&stop)) {
		struct dm_io_client *c;
		if (dm_io_client_create(1, 1, BLK, &c) != 0) {
			atomic_store(&bad, 1);
			break;
		}
		unsigned i = n++ % 4;
		struct dm_io_client *old = atomic_load(&clients[i]);
		if (old)
			dm_io_client_destroy(old);
		atomic_store(&clients[i], c);
	}
	return NULL;
}

static void *client_reader(void *arg)
{
	unsigned long x = 1234 + (long)arg;
	while (!atomic_load(&stop)) {
		struct dm_io_client *c = atomic_load(&clients[rnd(&x) % 4]);
		if (!c)
			continue;
		struct dm_io_stats st;
		int rc = dm_io_client_stats(c, &st, sizeof st);
		if (rc == 0 && st.private_bytes_bound == BLK)
			atomic_fetch_add(&cl_ok, 1);
		else if (rc == -EINVAL)
			atomic_fetch_add(&cl_stale, 1);
		else
			atomic_store(&bad, 1);
		sched_yield();
	}
	return NULL;
}

int main(void)
{
	const char *e = getenv("DMIO_THREADS_SECONDS");
	int secs = e && atoi(e) > 0 ? atoi(e) : 2;
	path = make_file("registry", (size_t)NBLK * BLK);
	CHECK_OK(dm_io_bdev_open(path, 0, &dev));
	check_block_size(dev);
	cl = make_client(1, Q, BLK);
	sem_init(&slots_free, 0, Q);

	void *(*fns[])(void *) = { submitter, handle_poker, handle_poker, dev_churner,
				   dev_reader, client_churner, client_reader };
	enum { N = sizeof fns / sizeof fns[0] };
	pthread_t th[N];
	for (long i = 0; i < N; i++)
		CHECK(pthread_create(&th[i], NULL, fns[i], (void *)i) == 0, "pthread_create");
	/* secs, and then (under valgrind, which runs one thread at a time) up
	 * to 60 s more until every thread has made progress. */
	double end = now_ms() + secs * 1000.0, limit = end + 60000.0;
	while (!atomic_load(&bad) && now_ms() < limit &&
	       (now_ms() < end || !(atomic_load(&ends) > 0 && atomic_load(&gets_ok) > 0 &&
				    atomic_load(&dev_ok) > 0 && atomic_load(&cl_ok) > 0)))
		sleep_ms(50);
	atomic_store(&stop, 1);
	for (int i = 0; i < N; i++)
		pthread_join(th[i], NULL);

	/* Whatever the timing above, every pointer is stale once released. */
	for (int i = 0; i < SLOTS; i++)
		if (handles[i])
			dm_io_handle_put(handles[i]);
	for (int i = 0; i < 4; i++) {
		if (devs[i])
			dm_io_bdev_close(devs[i]);
		if (clients[i])
			dm_io_client_destroy(clients[i]);
	}
	dm_io_client_destroy(cl); /* every read has ended and been delivered */
	for (int i = 0; i < SLOTS; i++)
		if (handles[i]) {
			CHECK(dm_io_handle_get(handles[i]) == NULL, "a released handle is live");
			CHECK(dm_io_handle_put(handles[i]) == NULL, "a released handle is live");
		}
	struct dm_io_stats st;
	for (int i = 0; i < 4; i++) {
		CHECK(!devs[i] || dm_io_bdev_sectors(devs[i]) == 0, "a closed device is open");
		CHECK(!clients[i] || dm_io_client_stats(clients[i], &st, sizeof st) == -EINVAL,
		      "a destroyed client is live");
	}
	CHECK(dm_io_client_stats(cl, &st, sizeof st) == -EINVAL, "a destroyed client is live");
	dm_io_bdev_close(dev);
	CHECK(dm_io_bdev_sectors(dev) == 0, "a closed device is open");
	printf("%ld reads ended; handle gets %ld live / %ld stale, %ld cancels; devices %ld live / "
	       "%ld stale; clients %ld live / %ld stale\n",
	       atomic_load(&ends), atomic_load(&gets_ok), atomic_load(&gets_stale),
	       atomic_load(&cancels), atomic_load(&dev_ok), atomic_load(&dev_stale),
	       atomic_load(&cl_ok), atomic_load(&cl_stale));
	CHECK(!atomic_load(&bad), "a lookup gave a wrong answer (see above)");
	/* How many lookups found a stale pointer depends on timing (few under
	 * valgrind); the checks after the run make sure of that case. */
	CHECK(atomic_load(&ends) > 0 && atomic_load(&gets_ok) > 0 && atomic_load(&dev_ok) > 0 &&
		      atomic_load(&cl_ok) > 0,
	      "some thread made no progress");
	return 0;
}
