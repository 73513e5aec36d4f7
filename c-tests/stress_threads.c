/* stress_threads: 8 threads share one client for a bounded time
 * (DMIO_THREADS_SECONDS, default 8), each submitting reads and mirrored
 * writes with and without timeouts, and cancelling requests of its own and
 * of other threads (by handle, and now and then by device) while faults
 * change underneath. Every region's state sequence is checked: at most
 * one TIMEOUT, exactly one final state, nothing after it; cancel calls
 * return counts within the request's region count. */
#include "helpers.h"

#include <stdatomic.h>
#include <string.h>

#define THREADS 8
#define PER_THREAD 16
#define NDEV 3
#define BLK 4096

struct req {
	_Atomic(struct dm_io_handle *) hdl; /* published for other threads' cancels */
	int nreg;
	atomic_int timeouts[2], finals[2], extra;
	atomic_int done;
	unsigned char buf[2 * BLK];
};

static struct dm_io_client *cl;
static struct block_device *dev[NDEV];
static struct req reqs[THREADS][PER_THREAD];
static atomic_int stop;
static atomic_long regions_done, cancelled_by_call;

static void notify(struct dm_io_region_state *st, void *ctx)
{
	struct req *r = ctx;
	unsigned i = st->index;
	if (i >= (unsigned)r->nreg || atomic_load(&r->finals[i])) {
		atomic_fetch_add(&r->extra, 1);
		return;
	}
	if (st->state == DM_IO_TIMEOUT) {
		atomic_fetch_add(&r->timeouts[i], 1);
		return;
	}
	atomic_fetch_add(&r->finals[i], 1);
	int all = 1;
	for (int k = 0; k < r->nreg; k++)
		all &= atomic_load(&r->finals[k]) == 1;
	if (all)
		atomic_store(&r->done, 1);
}

static void check_done(struct req *r)
{
	CHECK(atomic_load(&r->extra) == 0, "notify after final / bad index");
	for (int i = 0; i < r->nreg; i++) {
		CHECK(atomic_load(&r->finals[i]) == 1, "final %d times", atomic_load(&r->finals[i]));
		CHECK(atomic_load(&r->timeouts[i]) <= 1, "%d TIMEOUTs", atomic_load(&r->timeouts[i]));
	}
	atomic_fetch_add(&regions_done, r->nreg);
	/* Another thread may hold a reference for a cancel right now, so the
	 * put may or may not be the last one. */
	struct dm_io_handle *h = atomic_exchange(&r->hdl, NULL);
	struct dm_io_handle *left = dm_io_handle_put(h);
	CHECK(left == NULL || left == h, "put returned %p", (void *)left);
}

static void *worker(void *arg)
{
	long id = (long)arg;
	uint64_t s = 0x12345678u + (uint64_t)id * 7919u;
	int active[PER_THREAD] = { 0 };
	while (!atomic_load(&stop)) {
		for (int k = 0; k < PER_THREAD; k++) {
			struct req *r = &reqs[id][k];
			if (active[k]) {
				if (!atomic_load(&r->done))
					continue;
				check_done(r);
				active[k] = 0;
			}
			s ^= s << 13, s ^= s >> 7, s ^= s << 17;
			int write = (int)(s & 1);
			r->nreg = write ? 2 : 1;
			for (int i = 0; i < 2; i++) {
				atomic_store(&r->finals[i], 0);
				atomic_store(&r->timeouts[i], 0);
			}
			atomic_store(&r->extra, 0);
			atomic_store(&r->done, 0);
			uint64_t sector = ((s >> 8) % 2000) * 8;
			int d0 = (int)((s >> 20) % NDEV);
			struct dm_io_region reg[2] = {
				{ dev[d0], sector, 8 },
				{ dev[(d0 + 1) % NDEV], sector, 8 },
			};
			int rw = write ? DM_IO_WRITE : DM_IO_READ;
			struct dm_io_control c = make_ctrl(cl, rw, vm_mem(r->buf, 0), notify, r);
			c.timeout = (s >> 30) % 3 == 0 ? 1 + (s >> 33) % 20 : 0;
			c.flags = (s >> 40) % 4 == 0 ? DM_IO_CANCEL_ON_TIMEOUT : 0;
			struct dm_io_handle *h = NULL;
			CHECK_OK(dm_io(&c, (unsigned)r->nreg, reg, &h));
			atomic_store(&r->hdl, h);
			active[k] = 1;
		}
		/* Cancel a random request of a random thread (maybe our own). */
		s ^= s << 13, s ^= s >> 7, s ^= s << 17;
		struct req *victim = &reqs[s % THREADS][(s >> 8) % PER_THREAD];
		struct dm_io_handle *vh = atomic_load(&victim->hdl);
		if (vh && dm_io_handle_get(vh) == vh) {
			int rc = dm_io_cancel_by_handle(cl, vh);
			CHECK(rc >= 0 && rc <= 2, "cancel_by_handle returned %d", rc);
			atomic_fetch_add(&cancelled_by_call, rc);
			dm_io_handle_put(vh);
		}
		if ((s >> 20) % 500 == 0) {
			int rc = dm_io_cancel_by_device(cl, dev[(s >> 30) % NDEV]);
			CHECK(rc >= 0, "cancel_by_device returned %d", rc);
		}
		sleep_ms(0);
	}
	/* Drain: every request must become final once faults are cleared. */
	double t0 = now_ms();
	for (int k = 0; k < PER_THREAD; k++) {
		while (active[k] && !atomic_load(&reqs[id][k].done)) {
			CHECK(now_ms() - t0 < 20000, "thread %ld request %d never final", id, k);
			sleep_ms(2);
		}
		if (active[k])
			check_done(&reqs[id][k]);
	}
	return NULL;
}

int main(void)
{
	const char *e = getenv("DMIO_THREADS_SECONDS");
	int secs = e ? atoi(e) : 8;
	CHECK_OK(dm_io_client_create(2, THREADS * PER_THREAD, BLK, &cl));
	for (int d = 0; d < NDEV; d++) {
		char name[16];
		snprintf(name, sizeof name, "thr%d", d);
		CHECK_OK(dm_io_bdev_open(make_file(name, 16 << 20), DM_IO_BDEV_BUFFERED, &dev[d]));
	}
	pthread_t t[THREADS];
	for (long i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	static const char *specs[] = { "", "delay 2ms", "hang", "error reads errno=EIO sectors=0-4000", "" };
	double t0 = now_ms();
	for (int k = 0; now_ms() - t0 < secs * 1000.0; k++) {
		CHECK_OK(dm_io_bdev_set_faults(dev[k % NDEV], specs[k % 5]));
		sleep_ms(15);
	}
	for (int d = 0; d < NDEV; d++)
		CHECK_OK(dm_io_bdev_set_faults(dev[d], ""));
	atomic_store(&stop, 1);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	struct dm_io_stats st;
	CHECK_OK(dm_io_client_stats(cl, &st, sizeof st));
	CHECK(st.regions_in_flight == 0, "%lu regions still in flight", (unsigned long)st.regions_in_flight);
	CHECK((long)st.regions == atomic_load(&regions_done), "stats regions %lu, threads saw %ld",
	      (unsigned long)st.regions, atomic_load(&regions_done));
	printf("threads: %ld regions by %d threads in %d s, %ld cancelled by handle, %lu timeouts, %lu late\n",
	       atomic_load(&regions_done), THREADS, secs, atomic_load(&cancelled_by_call),
	       (unsigned long)st.timeouts, (unsigned long)st.late_completions);
	dm_io_client_destroy(cl);
	for (int d = 0; d < NDEV; d++)
		dm_io_bdev_close(dev[d]);
	return 0;
}
