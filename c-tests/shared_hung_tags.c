/* shared_hung_tags: reads stuck on a REALLY hung block device whose tags
 * are all held must not stall another client's reads of a healthy block
 * device on the same engine threads (issue 19; bench case 8 with the hung
 * loop+FUSE device saw 31 of 63 other clients stall for good).
 *
 * One shard (DMIO_THREADS=1), two clients. Client A reads the hung loop
 * device (hangfs holding every read) with more reads than its queue depth
 * (nr_requests lowered to 4): with io_uring the reads past the 4 tags got
 * EAGAIN from the non-blocking issue and were handed to the ring's io-wq,
 * whose bounded workers (4 x CPUs) then all blocked waiting for a tag.
 * Client B then reads a healthy loop device (direct IO over a /dev/shm
 * file, nr_requests 4 too, so its reads past 4 also get EAGAIN): they were
 * queued behind those workers and never ran. Every one of B's reads must
 * end OK within 5 s (30 s instrumented); A's reads get their TIMEOUT, and
 * after the release all of them end OK, once. Runs on every engine (the
 * thread pool and AIO have their own ways to starve: workers or a
 * submitter blocked on the hung device: a third client also reads 2 MiB of
 * it at once, which AIO cannot submit with RWF_NOWAIT and whose io_submit
 * then waited for a tag, stalling the AIO reactor). The reads are every
 * other block,
 * so that the block layer cannot merge them into fewer requests.
 *
 * With io_uring the library keeps each disk's ops in the kernel within its
 * queue depth (the rest wait in the library, src/device/slots.rs), so the
 * stuck reads past the 4 tags never reach io-wq: the process must not
 * have an `iou-wrk` thread per stuck read (45 before the cap). */
#include "helpers.h"
#include "hungdev.h"
#include "loopdev.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NHUNG 48
#define NSTUCK (NHUNG + 1) /* and one BIG read */
#define NOK 64
#define BS 4096u
#define TIMEOUT_MS 200
#define DEPTH "4"
#define BIG (2u << 20) /* past the 1 MiB the AIO engine submits with RWF_NOWAIT */

static atomic_int hung_timeouts, hung_finals, hung_oks, ok_finals, ok_oks;
static unsigned char hbufs[NHUNG][BS] __attribute__((aligned(4096)));
static unsigned char obufs[NOK][BS] __attribute__((aligned(4096)));
static unsigned char bigbuf[BIG] __attribute__((aligned(4096)));

static void hung_notify(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state == DM_IO_TIMEOUT) {
		atomic_fetch_add(&hung_timeouts, 1);
		return;
	}
	atomic_fetch_add(&hung_finals, 1);
	if (st->state == DM_IO_OK)
		atomic_fetch_add(&hung_oks, 1);
}

static void ok_notify(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state == DM_IO_TIMEOUT)
		return;
	atomic_fetch_add(&ok_finals, 1);
	if (st->state == DM_IO_OK)
		atomic_fetch_add(&ok_oks, 1);
}

/* Threads of this process named iou-wrk-* (io_uring's io-wq workers). */
static int iou_workers(void)
{
	DIR *d = opendir("/proc/self/task");
	CHECK(d, "opendir /proc/self/task: %s", strerror(errno));
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char p[320], comm[32] = "";
		snprintf(p, sizeof p, "/proc/self/task/%s/comm", e->d_name);
		FILE *f = fopen(p, "r");
		if (!f)
			continue; /* the thread ended meanwhile */
		if (fgets(comm, sizeof comm, f) && strncmp(comm, "iou-wrk", 7) == 0)
			n++;
		fclose(f);
	}
	closedir(d);
	return n;
}

static int wait_count(atomic_int *c, int want, int ms)
{
	double end = now_ms() + ms;
	while (atomic_load(c) < want && now_ms() < end)
		sleep_ms(2);
	return atomic_load(c) >= want;
}

static struct hungdev *hung;

/* Puts the old depths back, after releasing the held reads (a depth
 * change waits until the device's queue is idle). */
static void restore_depths(void)
{
	if (hung) {
		hungdev_ctl(hung, "release");
		double end = now_ms() + 10000;
		while (hungdev_inflight(hung) > 0 && now_ms() < end)
			sleep_ms(5);
	}
	loopdev_restore_depths();
}

static void restore_depths_at_exit(void)
{
	restore_depths();
}

int main(void)
{
	/* One shard: both clients on the same reactor and completion thread. */
	setenv("DMIO_THREADS", "1", 1);
	struct hungdev *h = hungdev_up(8u << 20);
	if (!h)
		skip(hungdev_skip_reason());
	const char *healthy_loop = loopdev_up(4 << 20);
	if (!healthy_loop)
		skip(loopdev_skip_reason());
	hung = h;
	atexit(restore_depths_at_exit);
	CHECK(loopdev_set_depth(hungdev_path(h), DEPTH) == 0, "cannot set nr_requests of %s",
	      hungdev_path(h));
	CHECK(loopdev_set_depth(healthy_loop, DEPTH) == 0, "cannot set nr_requests of %s", healthy_loop);
	int instrumented = getenv("DMIO_TEST_INSTRUMENTED") != NULL;
	int bound = instrumented ? 30000 : 5000;

	struct dm_io_client *a = make_client(1, NHUNG, BS);
	struct dm_io_client *b = make_client(1, NOK, BS);
	struct dm_io_client *c3 = make_client(1, 1, BIG);
	struct block_device *stuck, *healthy;
	CHECK_OK(dm_io_bdev_open(hungdev_path(h), 0, &stuck));
	CHECK_OK(dm_io_bdev_open(healthy_loop, 0, &healthy));
	CHECK_OK(hungdev_ctl(h, "hold read all"));

	for (int i = 0; i < NHUNG; i++) {
		struct dm_io_region r = { stuck, (uint64_t)i * 2 * (BS / 512), BS / 512 };
		struct dm_io_control c = make_ctrl(a, DM_IO_READ, vm_mem(hbufs[i], 0), hung_notify, NULL);
		c.timeout = TIMEOUT_MS;
		CHECK_OK(dm_io(&c, 1, &r, NULL));
	}
	{
		struct dm_io_region r = { stuck, (4u << 20) / 512, BIG / 512 };
		struct dm_io_control c = make_ctrl(c3, DM_IO_READ, vm_mem(bigbuf, 0), hung_notify, NULL);
		c.timeout = TIMEOUT_MS;
		CHECK_OK(dm_io(&c, 1, &r, NULL));
	}
	/* The hung device's tags are all held, and whatever waits for one
	 * (io-wq workers, pool workers, an AIO submitter) has had time to. */
	CHECK(hungdev_wait_held_min(h, 1, bound), "no read reached hangfs");
	sleep_ms(300);
	int held = hungdev_held(h);
	struct dm_io_stats st;
	CHECK_OK(dm_io_client_stats(a, &st, sizeof st));
	int workers = iou_workers();
	fprintf(stderr, "hung device: %d reads held in FUSE, %d iou-wrk threads\n", held, workers);
	/* The 2 MiB read may take several requests, and io_uring may hand
	 * it to a worker: a few, never one per stuck read. */
	if (st.engine == DM_IO_ENGINE_URING)
		CHECK(workers <= 4, "%d iou-wrk threads for %d reads stuck past a queue depth of "
		      DEPTH, workers, NSTUCK);

	double t0 = now_ms();
	for (int i = 0; i < NOK; i++) {
		struct dm_io_region r = { healthy, (uint64_t)i * 2 * (BS / 512), BS / 512 };
		struct dm_io_control c = make_ctrl(b, DM_IO_READ, vm_mem(obufs[i], 0), ok_notify, NULL);
		CHECK_OK(dm_io(&c, 1, &r, NULL));
	}
	int all = wait_count(&ok_finals, NOK, bound);
	double took = now_ms() - t0;
	fprintf(stderr, "healthy reads: %d of %d ended in %.0f ms (hung device: %d held in FUSE, "
		"%d in flight)\n", atomic_load(&ok_finals), NOK, took, held, hungdev_inflight(h));
	CHECK(all, "only %d of %d reads of the healthy device ended within %d ms, behind %d reads "
	      "stuck on the hung device", atomic_load(&ok_finals), NOK, bound, NSTUCK);
	CHECK(atomic_load(&ok_oks) == NOK, "%d of %d healthy reads ended OK", atomic_load(&ok_oks), NOK);

	CHECK(wait_count(&hung_timeouts, NSTUCK, bound), "%d of %d stuck reads got TIMEOUT",
	      atomic_load(&hung_timeouts), NSTUCK);
	CHECK(atomic_load(&hung_finals) == 0, "%d stuck reads ended while held", atomic_load(&hung_finals));
	CHECK_OK(hungdev_ctl(h, "release"));
	CHECK(wait_count(&hung_finals, NSTUCK, 20000), "%d of %d stuck reads ended after release",
	      atomic_load(&hung_finals), NSTUCK);
	sleep_ms(50);
	CHECK(atomic_load(&hung_finals) == NSTUCK && atomic_load(&hung_oks) == NSTUCK &&
		      atomic_load(&hung_timeouts) == NSTUCK,
	      "stuck reads: finals %d (OK %d), timeouts %d", atomic_load(&hung_finals),
	      atomic_load(&hung_oks), atomic_load(&hung_timeouts));
	CHECK(atomic_load(&ok_finals) == NOK, "healthy finals %d", atomic_load(&ok_finals));

	dm_io_client_destroy(a);
	dm_io_client_destroy(b);
	dm_io_client_destroy(c3);
	dm_io_bdev_close(stuck);
	dm_io_bdev_close(healthy);
	restore_depths();
	hung = NULL;
	hungdev_down(h);
	loopdev_down(healthy_loop);
	return 0;
}
