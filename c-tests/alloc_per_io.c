/* Heap allocations per 4 KiB read, counted at the C ABI, for the three ways
 * an application issues IO (issue 22, "per-IO work"):
 *   (a) asynchronous dm_io from an application thread (QD1: the thread waits
 *       for the notify before it submits the next read),
 *   (b) asynchronous dm_io from inside notify (each notify submits the next),
 *   (c) DM_IO_SYNC dm_io from an application thread.
 * Reads of 4 KiB into the caller's buffer (DM_IO_VM, private memory), and (a)
 * and (b) again into library pages (DM_IO_PAGE_LIST of one dm_io_page_alloc
 * page).
 *
 * How: this program defines malloc, calloc, realloc, free, posix_memalign,
 * aligned_alloc, memalign and valloc itself, forwarding to glibc's __libc_*
 * entry points. The executable comes first in symbol lookup, so every
 * allocation of libdmio (Rust's System allocator calls these) and of every
 * thread it starts goes through the counters here. Each case runs a warm-up,
 * then counts from one marker to the next over N reads: allocations (every
 * call that returns new memory, realloc included) and frees, all threads.
 *
 * Fails when a case allocates more per IO than its bound (max_ring,
 * max_threads below). Counts, not
 * timing: the result does not depend on the machine's speed.
 *
 * Under AddressSanitizer the interposer is left out (ASan owns malloc), and
 * under valgrind its own malloc replaces ours: the program detects that the
 * counters do not move, still runs every IO path, and says counts are not
 * available instead of checking them.
 *
 * ALLOC_PER_IO_N=<reads> sets N (default 4000). */
#include "helpers.h"
#include <errno.h>
#include <malloc.h>
#include <semaphore.h>
#include <execinfo.h>
#include <string.h>
#include <unistd.h>

/* Most allocations per IO, each case. Issue 22's targets are at most 1 from
 * an application thread and none from notify; today a request reuses a
 * finished one of its client, so what is left is the channels' blocks (one
 * allocation per 31 messages: an op to the reactor, an event to the
 * completion thread), 0.03 to 0.07 per IO. 0.1 leaves room for that and
 * fails if one allocation per IO comes back. A one-off allowance covers a
 * buffer growing once. */
#define ALLOWANCE 16
enum { CASES = 7 };
/* io_uring and Linux AIO engines, and the thread pool. */
static const double max_ring[CASES] = {
	0.1, /* (a) app thread, VM */
	0.1, /* (b) notify, VM */
	/* SYNC on the caller's own ring (DMIO_SYNC_RING=1; the default on main
	 * since this test was written) holds the ring's waker, and such a
	 * request is not kept for reuse: 1 per IO there, 0.03 otherwise. */
	1.1, /* (c) SYNC, VM */
	0.1, /* (a) app thread, pages */
	0.1, /* (b) notify, pages */
	/* With a deadline (5 s, never reached), the request is kept alive by its
	 * timer until the deadline passes, so it cannot be reused at once: one
	 * allocation per IO (the request), as before requests were reused; the
	 * AIO engine sends the deadline over a third channel (0.1 of blocks). */
	1.2, /* (a) app thread, VM, deadline */
	1.2, /* (b) notify, VM, deadline */
};
static const double max_threads[CASES] = { 0.1, 0.1, 1.1, 0.1, 0.1, 1.2, 1.2 };

static atomic_long n_alloc, n_free;
static atomic_int counting;
/* ALLOC_PER_IO_TRACE=k: the stacks of the first k counted allocations of
 * each case go to stderr (addresses: addr2line -f -i -C -e libdmio.so). */
static atomic_int trace_left;

#ifndef __SANITIZE_ADDRESS__
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
static _Thread_local int in_trace;


static inline void count_alloc(void)
{
	if (!atomic_load_explicit(&counting, memory_order_relaxed))
		return;
	atomic_fetch_add_explicit(&n_alloc, 1, memory_order_relaxed);
	if (atomic_load_explicit(&trace_left, memory_order_relaxed) > 0 && !in_trace &&
	    atomic_fetch_sub(&trace_left, 1) > 0) {
		void *pcs[24];
		in_trace = 1;
		int n = backtrace(pcs, 24);
		static const char sep[] = "-- allocation\n";
		if (write(2, sep, sizeof sep - 1) < 0)
			(void)0;
		backtrace_symbols_fd(pcs, n, 2);
		in_trace = 0;
	}
}

void *malloc(size_t n)
{
	count_alloc();
	return __libc_malloc(n);
}

void *calloc(size_t a, size_t b)
{
	count_alloc();
	return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
	count_alloc();
	return __libc_realloc(p, n);
}

void free(void *p)
{
	if (p && atomic_load_explicit(&counting, memory_order_relaxed))
		atomic_fetch_add_explicit(&n_free, 1, memory_order_relaxed);
	__libc_free(p);
}

int posix_memalign(void **out, size_t align, size_t n)
{
	count_alloc();
	void *p = __libc_memalign(align, n);
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}

void *aligned_alloc(size_t align, size_t n)
{
	count_alloc();
	return __libc_memalign(align, n);
}

void *memalign(size_t align, size_t n)
{
	count_alloc();
	return __libc_memalign(align, n);
}

void *valloc(size_t n)
{
	count_alloc();
	return __libc_memalign(4096, n);
}
#endif

enum { BLK = 4096, NBLK = 256 };

static struct dm_io_client *cl;
static struct block_device *dev;
static long n_ios = 4000;
static unsigned char *buf;
static struct page *lib_page;
static int use_pages;
static sem_t done_sem;
static atomic_long remaining; /* (b): reads still to submit from notify */
static atomic_int failures;
static unsigned long next_blk;
static unsigned timeout_ms; /* the reads' deadline (0: none) */

static struct dm_io_memory memory(void)
{
	if (!use_pages)
		return vm_mem(buf, 0);
	struct dm_io_memory m = { 0 };
	m.type = DM_IO_PAGE_LIST;
	static struct dm_io_page_list pl;
	pl.next = NULL;
	pl.page = lib_page;
	m.ptr.pl = &pl;
	return m;
}

static void notify(struct dm_io_region_state *st, void *ctx);

static int submit(int sync, dm_io_notify_fn fn)
{
	struct dm_io_region r = { dev, (next_blk++ * 37 % NBLK) * (BLK / 512), BLK / 512 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ | (sync ? DM_IO_SYNC : 0), memory(), fn, NULL);
	c.timeout = timeout_ms;
	return dm_io(&c, 1, &r, NULL);
}

static void notify(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state == DM_IO_TIMEOUT)
		return;
	if (st->state != DM_IO_OK)
		atomic_fetch_add(&failures, 1);
	if (atomic_fetch_sub(&remaining, 1) > 1) {
		if (submit(0, notify) != 0) {
			atomic_fetch_add(&failures, 1);
			sem_post(&done_sem);
		}
		return;
	}
	sem_post(&done_sem);
}

/* One notify per read: the application thread waits for it. */
static void notify_post(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	if (st->state == DM_IO_TIMEOUT)
		return;
	if (st->state != DM_IO_OK)
		atomic_fetch_add(&failures, 1);
	sem_post(&done_sem);
}

static void wait_done(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 30;
	int rc;
	while ((rc = sem_timedwait(&done_sem, &ts)) != 0 && errno == EINTR)
		;
	CHECK(rc == 0, "a read did not complete within 30 s");
}

enum kind { APP, NOTIFY, SYNC };

static void run_reads(enum kind k, long n)
{
	switch (k) {
	case APP:
		for (long i = 0; i < n; i++) {
			CHECK_OK(submit(0, notify_post));
			wait_done();
		}
		break;
	case NOTIFY:
		atomic_store(&remaining, n);
		CHECK_OK(submit(0, notify));
		wait_done();
		break;
	case SYNC:
		for (long i = 0; i < n; i++)
			CHECK_OK(submit(1, NULL));
		break;
	}
}

/* Whether the counters see this program's allocations at all. */
static int counting_works(void)
{
	void *(*volatile m)(size_t) = malloc;
	atomic_store(&n_alloc, 0);
	atomic_store(&counting, 1);
	void *p = m(64);
	atomic_store(&counting, 0);
	free(p);
	return atomic_load(&n_alloc) == 1;
}

struct result {
	const char *name;
	double allocs, frees;
	double bound;
	int over;
};

static struct result measure(const char *name, enum kind k, double bound)
{
	run_reads(k, 200); /* warm-up: threads, rings, per-thread state */
	/* The last notify posted the semaphore from inside the callback; let
	 * the completion thread finish that batch before the marker. */
	sleep_ms(20);
	atomic_store(&n_alloc, 0);
	atomic_store(&n_free, 0);
	const char *t = getenv("ALLOC_PER_IO_TRACE");
	atomic_store(&trace_left, t ? atoi(t) : 0);
	atomic_store(&counting, 1);
	run_reads(k, n_ios);
	sleep_ms(20);
	atomic_store(&counting, 0);
	struct result r = { name, (double)atomic_load(&n_alloc) / n_ios,
			    (double)atomic_load(&n_free) / n_ios, bound, 0 };
	double limit = bound * n_ios + ALLOWANCE;
	printf("%-55s %6.3f allocations, %6.3f frees per IO (%ld reads; bound %.2f)\n", name,
	       r.allocs, r.frees, n_ios, bound);
	r.over = atomic_load(&n_alloc) > limit;
	return r;
}

int main(void)
{
	const char *e = getenv("ALLOC_PER_IO_N");
	if (e && atoi(e) > 0)
		n_ios = atoi(e);
	const char *path = make_file("allocs", (size_t)NBLK * BLK);
	CHECK_OK(dm_io_bdev_open(path, 0, &dev));
	check_block_size(dev);
	buf = aligned_alloc(4096, BLK);
	CHECK(buf != NULL, "aligned_alloc");
	lib_page = dm_io_page_alloc();
	CHECK(lib_page != NULL, "dm_io_page_alloc");
	sem_init(&done_sem, 0, 0);
	cl = make_client(1, 4, BLK);

	{
		void *pcs[4];
		backtrace(pcs, 4); /* loads libgcc_s now, not while counting */
	}
	int works = counting_works();
	if (!works)
		printf("allocation counting is not available here (valgrind or a sanitizer owns "
		       "malloc): running the IO paths without checking counts\n");
	struct dm_io_stats st;
	CHECK_OK(dm_io_client_stats(cl, &st, sizeof st));
	const double *max = st.engine == DM_IO_ENGINE_THREADS ? max_threads : max_ring;
	printf("engine %s\n", st.engine == DM_IO_ENGINE_URING ? "io_uring" :
			      st.engine == DM_IO_ENGINE_AIO ? "aio" : "threads");
	struct result res[CASES];
	int n = 0;
	use_pages = 0;
	res[n] = measure("(a) async from an application thread, VM", APP, max[n]), n++;
	res[n] = measure("(b) async from notify, VM", NOTIFY, max[n]), n++;
	res[n] = measure("(c) SYNC from an application thread, VM", SYNC, max[n]), n++;
	use_pages = 1;
	res[n] = measure("(a) async from an application thread, pages", APP, max[n]), n++;
	res[n] = measure("(b) async from notify, pages", NOTIFY, max[n]), n++;
	use_pages = 0;
	timeout_ms = 5000;
	res[n] = measure("(a) async from an application thread, VM, 5 s deadline", APP, max[n]), n++;
	res[n] = measure("(b) async from notify, VM, 5 s deadline", NOTIFY, max[n]), n++;
	CHECK(atomic_load(&failures) == 0, "%d reads did not end OK", atomic_load(&failures));

	dm_io_client_destroy(cl);
	dm_io_page_free(lib_page);
	dm_io_bdev_close(dev);
	free(buf);
	if (!works)
		return 0;
	int bad = 0;
	for (int i = 0; i < n; i++)
		if (res[i].over) {
			fprintf(stderr, "%s: more allocations per IO than its bound\n", res[i].name);
			bad = 1;
		}
	return bad;
}
