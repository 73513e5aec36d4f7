/* hung_queue_full: many reads stuck in a REALLY hung kernel device (1200,
 * more than an AIO context of 1024 events held: before the AIO engine's
 * context was sized like the io_uring ring, the healthy read below waited
 * behind them forever) must not stall the engine: every stuck read gets
 * its TIMEOUT at its deadline, a read of a healthy device submitted after
 * them completes at once, and after the release every stuck read ends OK,
 * once. Under valgrind or a sanitizer (DMIO_TEST_INSTRUMENTED) 300, to
 * keep the run short. */
#include "helpers.h"
#include "hungdev.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#define N 1200
#define BS 4096u
#define TIMEOUT_MS 200

static atomic_int timeouts, finals, oks, others;
static unsigned char bufs[N][BS] __attribute__((aligned(4096)));

static void count(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state == DM_IO_TIMEOUT) {
		atomic_fetch_add(&timeouts, 1);
		return;
	}
	atomic_fetch_add(&finals, 1);
	atomic_fetch_add(st->state == DM_IO_OK ? &oks : &others, 1);
}

static int wait_count(atomic_int *c, int want, int ms)
{
	double end = now_ms() + ms;
	while (atomic_load(c) < want && now_ms() < end)
		sleep_ms(2);
	return atomic_load(c) >= want;
}

int main(void)
{
	struct hungdev *h = hungdev_up(8u << 20);
	if (!h)
		skip(hungdev_skip_reason());
	/* Under valgrind every thread start is slow (the thread pool starts
	 * one per stuck read): the bounds below only tell "not stuck". */
	int instrumented = getenv("DMIO_TEST_INSTRUMENTED") != NULL;
	int n = instrumented ? 300 : N;
	double bound = instrumented ? 30000 : 1000;
	struct dm_io_client *cl = make_client(2, N + 8, BS);
	struct block_device *stuck, *healthy = make_dev("healthy", 1 << 20);
	CHECK_OK(dm_io_bdev_open(hungdev_path(h), 0, &stuck));
	CHECK(dm_io_bdev_is_direct(stuck) == 1, "%s not opened with O_DIRECT", hungdev_path(h));
	CHECK_OK(hungdev_ctl(h, "hold read all"));

	double t0 = now_ms();
	for (int i = 0; i < n; i++) {
		struct dm_io_region r = { stuck, (uint64_t)i * (BS / 512), BS / 512 };
		struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(bufs[i], 0), count, NULL);
		c.timeout = TIMEOUT_MS;
		CHECK_OK(dm_io(&c, 1, &r, NULL));
	}
	double submitted = now_ms() - t0;
	CHECK(submitted < bound, "submitting %d reads took %.0f ms", n, submitted);

	/* The engine is not stuck behind the full queue: a healthy read now. */
	static unsigned char back[BS] __attribute__((aligned(4096)));
	double t1 = now_ms();
	CHECK_OK(sync_io(cl, DM_IO_READ, healthy, 8, BS / 512, back, 0));
	double healthy_ms = now_ms() - t1;
	CHECK(healthy_ms < bound, "a healthy read took %.0f ms behind %d stuck ones", healthy_ms, n);

	CHECK(wait_count(&timeouts, n, TIMEOUT_MS + 3 * (int)bound), "%d of %d stuck reads got TIMEOUT",
	      atomic_load(&timeouts), n);
	double all_timed_out = now_ms() - t0;
	CHECK(atomic_load(&finals) == 0, "%d stuck reads ended while held", atomic_load(&finals));
	fprintf(stderr, "%d stuck reads: submitted in %.0f ms, healthy read %.1f ms, all TIMEOUT by %.0f ms "
		"(held in FUSE: %d)\n", n, submitted, healthy_ms, all_timed_out, hungdev_held(h));

	CHECK_OK(hungdev_ctl(h, "release"));
	CHECK(wait_count(&finals, n, 20000), "%d of %d stuck reads ended after release",
	      atomic_load(&finals), n);
	sleep_ms(50);
	CHECK(atomic_load(&finals) == n && atomic_load(&oks) == n && atomic_load(&timeouts) == n,
	      "finals %d (OK %d, other %d), timeouts %d", atomic_load(&finals), atomic_load(&oks),
	      atomic_load(&others), atomic_load(&timeouts));
	dm_io_client_destroy(cl);
	dm_io_bdev_close(stuck);
	dm_io_bdev_close(healthy);
	hungdev_down(h);
	return 0;
}
