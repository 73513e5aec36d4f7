/* DM_IO_SYNC from many threads at once (with the io_uring engine each runs
 * its IO on a ring of its own, see README "Threads"):
 *
 * 1. SYNC IO starts no thread: the process's thread count (not counting
 *    io_uring's kernel workers) after a client's
 *    create and one async request equals the count after many SYNC reads
 *    and writes from the main thread.
 * 2. 8 threads each write then read back their own slice with SYNC
 *    requests with deadlines (5 s); every result is OK and the data right;
 *    notify runs on the caller's thread, inside dm_io.
 * 3. 8 threads each do SYNC reads with a notify on a device delaying
 *    reads by 30 ms, while another thread cancels them by device: every
 *    request returns 0 or -ECANCELED (cancelled ones promptly, well before
 *    the delay would have ended), each region gets exactly one final state,
 *    and private memory in use returns to 0.
 * 4. SYNC reads with a 20 ms deadline on a 300 ms slow device from 8
 *    threads: TIMEOUT at ~20 ms inside dm_io, then the late OK. */
#include "helpers.h"
#include <dirent.h>
#include <errno.h>
#include <string.h>

enum { NT = 8, SLICE = 64 << 10, ROUNDS = 40 };

static struct dm_io_client *cl;
static struct block_device *dev, *slow, *slower;
static atomic_int stop, bad;

static int threads_now(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;
	CHECK(d != NULL, "opendir /proc/self/task");
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		/* io_uring's kernel workers (iou-wrk-N, iou-sqp-N) belong to the
		 * kernel, which starts them for any ring (the reactor's too). */
		char path[300], comm[64] = "";
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (f) {
			if (!fgets(comm, sizeof(comm), f))
				comm[0] = 0;
			fclose(f);
		}
		if (strncmp(comm, "iou-", 4) != 0)
			n++;
	}
	closedir(d);
	return n;
}

struct cb {
	pthread_t self;
	int calls, other_thread, timeouts, finals, final_state;
	double t_timeout;
};

static void cb_notify(struct dm_io_region_state *st, void *ctx)
{
	struct cb *c = ctx;
	c->calls++;
	if (!pthread_equal(pthread_self(), c->self))
		c->other_thread++;
	if (st->state == DM_IO_TIMEOUT) {
		c->timeouts++;
		c->t_timeout = now_ms();
	} else {
		c->finals++;
		c->final_state = st->state;
	}
}

static int sync_cb(struct block_device *d, int rw, void *buf, uint64_t sector, unsigned len,
		   unsigned long timeout, struct cb *c)
{
	memset(c, 0, sizeof(*c));
	c->self = pthread_self();
	struct dm_io_region r = { d, sector, len / 512 };
	struct dm_io_control ctl = make_ctrl(cl, rw | DM_IO_SYNC, vm_mem(buf, 0), cb_notify, c);
	ctl.timeout = timeout;
	return dm_io(&ctl, 1, &r, NULL);
}

static void *rw_thread(void *arg)
{
	long i = (long)arg;
	static __thread unsigned char buf[SLICE], back[SLICE];
	struct cb c;
	for (int k = 0; k < ROUNDS; k++) {
		unsigned seed = (unsigned)(i * 1000 + k);
		fill_pattern(buf, SLICE, seed);
		int rc = sync_cb(dev, DM_IO_WRITE, buf, (uint64_t)i * SLICE / 512, SLICE, 5000, &c);
		if (rc != 0 || c.finals != 1 || c.other_thread || c.final_state != DM_IO_OK) {
			fprintf(stderr, "thread %ld write %d: rc %d finals %d other %d\n", i, k, rc,
				c.finals, c.other_thread);
			atomic_fetch_add(&bad, 1);
		}
		memset(back, 0, SLICE);
		rc = sync_cb(dev, DM_IO_READ, back, (uint64_t)i * SLICE / 512, SLICE, 5000, &c);
		if (rc != 0 || c.finals != 1 || c.other_thread || !check_pattern(back, SLICE, seed)) {
			fprintf(stderr, "thread %ld read %d: rc %d finals %d other %d\n", i, k, rc,
				c.finals, c.other_thread);
			atomic_fetch_add(&bad, 1);
		}
	}
	return NULL;
}

static atomic_int cancelled, completed;

static void *cancel_victim(void *arg)
{
	long i = (long)arg;
	unsigned char *buf = malloc(4096);
	struct cb c;
	for (int k = 0; k < 10; k++) {
		double t0 = now_ms();
		int rc = sync_cb(slow, DM_IO_READ, buf, (uint64_t)i * 8, 4096, 10000, &c);
		double el = now_ms() - t0;
		if (rc == -ECANCELED) {
			atomic_fetch_add(&cancelled, 1);
		} else if (rc == 0) {
			atomic_fetch_add(&completed, 1);
		} else {
			fprintf(stderr, "victim %ld: rc %d\n", i, rc);
			atomic_fetch_add(&bad, 1);
		}
		if (c.finals != 1 || c.other_thread || c.calls != 1 || el > 5000) {
			fprintf(stderr, "victim %ld: finals %d calls %d other %d after %.0f ms\n", i,
				c.finals, c.calls, c.other_thread, el);
			atomic_fetch_add(&bad, 1);
		}
	}
	free(buf);
	return NULL;
}

static void *canceller(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop)) {
		sleep_ms(7);
		dm_io_cancel_by_device(cl, slow);
	}
	return NULL;
}

static void *timeout_thread(void *arg)
{
	long i = (long)arg;
	unsigned char *buf = malloc(4096);
	struct cb c;
	double t0 = now_ms();
	int rc = sync_cb(slower, DM_IO_READ, buf, (uint64_t)i * 8, 4096, 20, &c);
	double el = now_ms() - t0;
	double to = c.t_timeout - t0;
	if (rc != 0 || c.timeouts != 1 || c.finals != 1 || c.final_state != DM_IO_OK ||
	    c.other_thread || to < 15 || to > 250 || el < 250) {
		fprintf(stderr, "timeout thread %ld: rc %d timeouts %d finals %d state %d other %d "
			"TIMEOUT at %.0f ms, returned at %.0f ms\n", i, rc, c.timeouts, c.finals,
			c.final_state, c.other_thread, to, el);
		atomic_fetch_add(&bad, 1);
	}
	free(buf);
	return NULL;
}

static void run_threads(void *(*fn)(void *))
{
	pthread_t th[NT];
	for (long i = 0; i < NT; i++)
		CHECK(pthread_create(&th[i], NULL, fn, (void *)i) == 0, "pthread_create");
	for (int i = 0; i < NT; i++)
		pthread_join(th[i], NULL);
}

static uint64_t private_in_use(void)
{
	struct dm_io_stats st;
	CHECK(dm_io_client_stats(cl, &st, sizeof st) == 0, "stats");
	return st.private_bytes_in_use;
}

int main(void)
{
	static unsigned char buf[SLICE];
	cl = make_client(4, 16, 64 * 1024);
	dev = make_dev("dev", NT * SLICE);
	check_block_size(dev);
	slow = make_faulty_dev("slow", 1 << 20, "delay read=30ms", NULL);
	slower = make_faulty_dev("slower", 1 << 20, "delay read=300ms", NULL);

	/* 1. No thread started by SYNC IO. */
	CHECK_OK(async_io_one(cl, DM_IO_READ, vm_mem(buf, 0), dev, 0, 8));
	int before = threads_now();
	for (int k = 0; k < 200; k++) {
		CHECK_OK(sync_io(cl, DM_IO_WRITE, dev, (uint64_t)(k % 16) * 8, 8, buf, 0));
		CHECK_OK(sync_io(cl, DM_IO_READ, dev, (uint64_t)(k % 16) * 8, 8, buf, 0));
	}
	int after = threads_now();
	CHECK(after == before, "%d threads before SYNC IO, %d after", before, after);

	/* 2. 8 threads of SYNC writes and reads. */
	run_threads(rw_thread);
	CHECK(atomic_load(&bad) == 0, "%d bad SYNC results from threads", atomic_load(&bad));

	/* 3. SYNC reads cancelled from another thread. */
	pthread_t ct;
	CHECK(pthread_create(&ct, NULL, canceller, NULL) == 0, "pthread_create");
	run_threads(cancel_victim);
	atomic_store(&stop, 1);
	pthread_join(ct, NULL);
	CHECK(atomic_load(&bad) == 0, "%d bad results with cancels", atomic_load(&bad));
	CHECK(atomic_load(&cancelled) > 0, "no request was cancelled (%d completed)",
	      atomic_load(&completed));
	fprintf(stderr, "case 3: %d cancelled, %d completed\n", atomic_load(&cancelled),
		atomic_load(&completed));
	double t0 = now_ms();
	while (private_in_use() != 0 && now_ms() - t0 < 5000)
		sleep_ms(5);
	CHECK(private_in_use() == 0, "%llu bytes of private memory still in use",
	      (unsigned long long)private_in_use());

	/* 4. TIMEOUT on time on the caller's thread, then the late OK. */
	run_threads(timeout_thread);
	CHECK(atomic_load(&bad) == 0, "%d bad TIMEOUT sequences", atomic_load(&bad));

	dm_io_client_destroy(cl);
	dm_io_bdev_close(dev);
	dm_io_bdev_close(slow);
	dm_io_bdev_close(slower);
	return 0;
}
