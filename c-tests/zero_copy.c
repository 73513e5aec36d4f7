/* DM_IO_ZERO_COPY: IO runs in the caller's memory, with no private memory.
 * 1. Mirror writes and reads (regions split in several max_size pieces)
 *    move the right bytes and never take private memory.
 * 2. Refused with -EINVAL: memory not aligned for O_DIRECT, a piece that
 *    spans two buffers, DM_IO_READ_ANY.
 * 3. A cancel cannot abandon IO running in the caller's memory: on a hung
 *    device the cancel returns 1 at once, but CANCELLED (-ECANCELED) comes
 *    only after the IO really ends; TIMEOUT still comes at its deadline,
 *    and a DM_IO_CANCEL_ON_TIMEOUT deadline waits the same way.
 * 4. Destroy waits for zero-copy IO (and delivers its CANCELLED, -ESHUTDOWN)
 *    instead of returning while the kernel still writes the caller's memory;
 *    also when called from a notify callback of the same client. */
#include "helpers.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

enum { PIECE = 16 * 1024, BYTES = 4 * PIECE, S = BYTES / 512 };

static unsigned char *aligned(size_t len)
{
	void *p = NULL;
	CHECK(posix_memalign(&p, 4096, len) == 0, "posix_memalign");
	return p;
}

static struct dm_io_stats stats(struct dm_io_client *cl)
{
	struct dm_io_stats st;
	CHECK_OK(dm_io_client_stats(cl, &st, sizeof st));
	return st;
}

static struct dm_io_control zc_ctrl(struct dm_io_client *cl, int rw, void *p, struct tracker *t)
{
	struct dm_io_control c = make_ctrl(cl, rw, vm_mem(p, 0), tracker_notify, t);
	c.flags = DM_IO_ZERO_COPY;
	return c;
}

/* A zero-copy read of r on device a, held there by a "hang" fault. */
static void hold_read(struct dm_io_client *cl, struct block_device *a, struct dm_io_region *r,
		      void *buf, struct tracker *t)
{
	CHECK_OK(dm_io_bdev_set_faults(a, "hang"));
	tracker_init(t, 1);
	struct dm_io_control c = zc_ctrl(cl, DM_IO_READ, buf, t);
	CHECK_OK(dm_io(&c, 1, r, NULL));
	sleep_ms(20);
}

/* The one region of t ends (within 5 s) with state and error. */
static void expect_final(struct tracker *t, int state, int error, const char *what)
{
	CHECK(tracker_wait(t, 5000), "%s: no final state", what);
	tracker_check(t);
	CHECK(t->final_state[0] == state && t->final_error[0] == error, "%s ended %d (%d)", what,
	      t->final_state[0], t->final_error[0]);
}

static struct dm_io_client *destroy_me;
static int destroy_fn(void *arg)
{
	(void)arg;
	dm_io_client_destroy(destroy_me);
	return 0;
}

static struct dm_io_client *cl2;
static double destroyed_at; /* now_ms() when destroy returned in the callback */
static pthread_mutex_t dlock = PTHREAD_MUTEX_INITIALIZER;

static void destroy_from_notify(struct dm_io_region_state *st, void *ctx)
{
	tracker_notify(st, ctx);
	if (st->state == DM_IO_TIMEOUT)
		return;
	dm_io_client_destroy(cl2);
	pthread_mutex_lock(&dlock);
	destroyed_at = now_ms();
	pthread_mutex_unlock(&dlock);
}

static double destroyed(void)
{
	pthread_mutex_lock(&dlock);
	double d = destroyed_at;
	pthread_mutex_unlock(&dlock);
	return d;
}

int main(void)
{
	const char *pa, *pb;
	struct dm_io_client *cl = make_client(2, 2, PIECE);
	struct block_device *a = make_faulty_dev("a", 1 << 20, "", &pa);
	struct block_device *b = make_faulty_dev("b", 1 << 20, "", &pb);
	check_block_size(a);
	unsigned char *data = aligned(BYTES), *buf = aligned(BYTES), *file = aligned(BYTES);
	struct tracker t;
	struct dm_io_control c;

	/* 1. A 2-leg mirror write and a read back, 4 pieces each, no private memory. */
	fill_pattern(data, BYTES, 21);
	struct dm_io_region w[2] = { { a, 16, S }, { b, 16, S } };
	tracker_init(&t, 2);
	c = zc_ctrl(cl, DM_IO_WRITE, data, &t);
	CHECK_OK(dm_io(&c, 2, w, NULL));
	CHECK(tracker_wait(&t, 5000), "zero-copy write did not finish");
	tracker_check(&t);
	CHECK(tracker_count(&t, DM_IO_OK) == 2, "write legs not OK");
	read_file(pa, 16 * 512, file, BYTES);
	CHECK(memcmp(file, data, BYTES) == 0, "leg a differs");
	read_file(pb, 16 * 512, file, BYTES);
	CHECK(memcmp(file, data, BYTES) == 0, "leg b differs");
	memset(buf, 0, BYTES);
	tracker_init(&t, 1);
	c = zc_ctrl(cl, DM_IO_READ, buf, &t);
	CHECK_OK(dm_io(&c, 1, w, NULL));
	CHECK(tracker_wait(&t, 5000), "zero-copy read did not finish");
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_OK, "read ended %d (%d)", t.final_state[0], t.final_error[0]);
	CHECK(memcmp(buf, data, BYTES) == 0, "zero-copy read returned other bytes");
	c.rw = DM_IO_READ | DM_IO_SYNC; /* SYNC works too */
	memset(buf, 0, BYTES);
	tracker_init(&t, 1);
	CHECK_OK(dm_io(&c, 1, &w[1], NULL));
	CHECK(memcmp(buf, data, BYTES) == 0, "zero-copy SYNC read returned other bytes");
	struct dm_io_stats st = stats(cl);
	CHECK(st.private_bytes_high_water == 0, "zero-copy IO used %llu bytes of private memory",
	      (unsigned long long)st.private_bytes_high_water);

	/* 2. What zero-copy refuses. */
	c = zc_ctrl(cl, DM_IO_READ, buf, &t);
	c.rw = DM_IO_READ | DM_IO_READ_ANY;
	struct dm_io_region any[2] = { { a, 16, 8 }, { b, 16, 8 } };
	CHECK(dm_io(&c, 2, any, NULL) == -EINVAL, "ZERO_COPY with READ_ANY accepted");
	struct page *p0 = dm_io_page_alloc(), *p1 = dm_io_page_alloc();
	CHECK(p0 && p1, "dm_io_page_alloc");
	/* In reverse order: pages allocated one after the other may follow
	 * each other in memory, and adjacent pieces of memory are one buffer. */
	struct bio_vec two[3] = { { p1, 4096, 0 }, { p0, 4096, 0 }, { NULL, 0, 0 } };
	struct dm_io_memory bm = { .type = DM_IO_BVEC, .ptr.bv = two, .offset = 0 };
	c = make_ctrl(cl, DM_IO_READ, bm, tracker_notify, &t);
	c.flags = DM_IO_ZERO_COPY;
	struct dm_io_region r8k = { a, 16, 16 }; /* one 8 KiB piece over two pages */
	CHECK(dm_io(&c, 1, &r8k, NULL) == -EINVAL, "a piece over two buffers accepted");
	dm_io_page_free(p0);
	dm_io_page_free(p1);
	int probe = open(pa, O_RDONLY | O_DIRECT);
	if (probe >= 0) {
		close(probe);
		c = zc_ctrl(cl, DM_IO_READ, buf + 1, &t);
		struct dm_io_region r8 = { a, 16, 8 };
		CHECK(dm_io(&c, 1, &r8, NULL) == -EINVAL, "unaligned memory accepted on an O_DIRECT device");
	} else {
		printf("zero_copy: NOTE: %s cannot be opened O_DIRECT here; the unaligned-memory check "
		       "is not exercised (the device uses the page cache, where any alignment is valid)\n",
		       test_dir());
	}

	/* 3. Cancel on a hung device: counted at once, notified when the IO ends. */
	CHECK_OK(dm_io_bdev_set_faults(a, "hang"));
	struct dm_io_region r = { a, 16, S };
	struct dm_io_handle *hdl;
	tracker_init(&t, 1);
	c = zc_ctrl(cl, DM_IO_READ, buf, &t);
	c.timeout = 50;
	CHECK_OK(dm_io(&c, 1, &r, &hdl));
	CHECK(tracker_wait_timeout(&t, 0, 5000), "no TIMEOUT for a held zero-copy read");
	int n = dm_io_cancel_by_handle(cl, hdl);
	CHECK(n == 1, "cancel returned %d, expected 1", n);
	CHECK(dm_io_cancel_by_handle(cl, hdl) == 0, "a pending cancel was counted twice");
	sleep_ms(200);
	CHECK(tracker_finals(&t) == 0, "CANCELLED before the zero-copy IO ended");
	CHECK_OK(dm_io_bdev_set_faults(a, ""));
	expect_final(&t, DM_IO_CANCELLED, -ECANCELED, "cancelled zero-copy read");
	CHECK(dm_io_handle_put(hdl) == NULL, "put");

	/* CANCEL_ON_TIMEOUT: the deadline cancels, the notification waits for the IO. */
	CHECK_OK(dm_io_bdev_set_faults(a, "hang"));
	tracker_init(&t, 1);
	c = zc_ctrl(cl, DM_IO_READ, buf, &t);
	c.timeout = 30;
	c.flags |= DM_IO_CANCEL_ON_TIMEOUT;
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	sleep_ms(200);
	CHECK(tracker_finals(&t) == 0 && t.timeouts[0] == 0,
	      "a cancelled zero-copy read was notified while its IO ran");
	CHECK_OK(dm_io_bdev_set_faults(a, ""));
	expect_final(&t, DM_IO_CANCELLED, -ETIMEDOUT, "deadline-cancelled zero-copy read");

	/* 4. Destroy waits for the zero-copy IO and delivers its CANCELLED first. */
	hold_read(cl, a, &r, buf, &t);
	struct bg d;
	destroy_me = cl;
	bg_start(&d, destroy_fn, NULL);
	CHECK(!bg_wait(&d, 200), "destroy returned while zero-copy IO still ran");
	CHECK(tracker_finals(&t) == 0, "CANCELLED before the zero-copy IO ended");
	CHECK_OK(dm_io_bdev_set_faults(a, ""));
	CHECK(bg_wait(&d, 5000), "destroy did not return after the IO ended");
	CHECK(tracker_finals(&t) == 1, "destroy returned before delivering CANCELLED");
	expect_final(&t, DM_IO_CANCELLED, -ESHUTDOWN, "zero-copy read at destroy");

	/* The same, destroy called from a notify callback of that client. */
	cl2 = make_client(1, 2, PIECE);
	hold_read(cl2, a, &r, buf, &t);
	struct tracker t2;
	tracker_init(&t2, 1);
	struct dm_io_region rb = { b, 16, 8 };
	c = make_ctrl(cl2, DM_IO_READ, vm_mem(file, 0), destroy_from_notify, &t2);
	CHECK_OK(dm_io(&c, 1, &rb, NULL));
	sleep_ms(200);
	CHECK(destroyed() == 0, "destroy in notify returned while zero-copy IO still ran");
	CHECK(tracker_finals(&t) == 0, "CANCELLED before the zero-copy IO ended");
	CHECK_OK(dm_io_bdev_set_faults(a, ""));
	for (int i = 0; i < 500 && destroyed() == 0; i++)
		sleep_ms(10);
	CHECK(destroyed() != 0, "destroy in notify did not return after the IO ended");
	expect_final(&t, DM_IO_CANCELLED, -ESHUTDOWN, "zero-copy read at destroy in notify");

	dm_io_bdev_close(a);
	dm_io_bdev_close(b);
	free(data);
	free(buf);
	free(file);
	return 0;
}
