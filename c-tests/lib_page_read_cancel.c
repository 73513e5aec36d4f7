/* Reads into library pages (dm_io_page_alloc, whole pages) run in those
 * pages with the io_uring and AIO engines: no private memory, no copy
 * (io_uring reads them as a fixed buffer; AIO's io_submit pins them). They still
 * end CANCELLED at once while their IO is stuck in the kernel: the cancel
 * puts fresh pages under the caller's addresses and the stuck IO finishes
 * into the old ones, which the caller no longer sees. On a loop device
 * whose IO hangs in FUSE (fixtures/hungdev.h; needs root and /dev/fuse):
 * 1. A healthy read into a page list of two pages (two max_size pieces)
 *    delivers the data and takes no private memory (the thread-pool
 *    engine reads through private memory instead; the rest is the same).
 * 2. A held read, cancelled by handle, ends CANCELLED within 2 s while its
 *    IO is still held and in flight; the caller then writes a marker into
 *    the pages, and after the release the marker is intact.
 * 3. The same pages read again deliver the data (the ring registered the
 *    new pages).
 * 4. DM_IO_VM memory at a page's address is treated the same: a SYNC read
 *    with a 100 ms timeout and no notify returns -ETIMEDOUT promptly, and
 *    the marker written afterwards survives the release.
 * 5. Destroy with a held read into a page returns promptly, the region
 *    ends CANCELLED (-ESHUTDOWN), and the marker survives the release.
 * 6. A read held before the kernel (a "hang" fault rule) and cancelled is
 *    dropped when the rule is cleared: it never writes the page.
 * Held by the fault rule, a read into a page holds no private memory,
 * except while cancelled reads into pages are still stuck in the kernel
 * beyond the client's private-memory bound: reads then use private memory
 * (checked during case 2, and again once the stuck IO ended, in case 6). */
#include "helpers.h"
#include "hungdev.h"

#include <errno.h>
#include <string.h>

enum { DEV_BYTES = 16 << 20, PG = DM_IO_PAGE_SIZE, LEN = 2 * PG, SEED = 91, MARK = 0x5A };
#define OFF (1ULL << 20) /* bytes; the held range is [OFF, OFF + LEN) */
#define HOLD "hold 1048576-1056767"

static struct page *pg[2];
static struct dm_io_page_list pl[2];

static struct dm_io_memory pl_mem(void)
{
	struct dm_io_memory m;
	memset(&m, 0, sizeof(m));
	m.type = DM_IO_PAGE_LIST;
	m.ptr.pl = pl;
	return m;
}

/* Both pages (in list order) hold the pattern of seed. */
static int pages_hold(unsigned seed)
{
	static unsigned char both[LEN];
	memcpy(both, dm_io_page_address(pl[0].page), PG);
	memcpy(both + PG, dm_io_page_address(pl[1].page), PG);
	return check_pattern(both, LEN, seed);
}

static void mark(void *p, size_t len)
{
	memset(p, MARK, len);
}

static int marked(const void *p, size_t len)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < len; i++)
		if (b[i] != MARK)
			return 0;
	return 1;
}

static struct dm_io_stats stats(struct dm_io_client *cl)
{
	struct dm_io_stats st;
	CHECK_OK(dm_io_client_stats(cl, &st, sizeof st));
	return st;
}

/* Releases the held IO and waits until the kernel has completed it. */
static void release(struct hungdev *h, const char *what)
{
	char status[1024];
	CHECK_OK(hungdev_ctl(h, "release"));
	CHECK(hungdev_wait_held(h, 0, 5000), "%s: held IO not released: %s", what,
	      hungdev_status(h, status, sizeof(status)));
	for (int waited = 0; hungdev_inflight(h) != 0; waited += 10) {
		CHECK(waited < 5000, "%s: IO still in flight after the release", what);
		sleep_ms(10);
	}
	sleep_ms(100); /* the completion reaches the library */
}

/* Private memory in use while a read of one page into p, on fdev, is held
 * by a fault rule; the read is then let go and must deliver the data. */
static uint64_t held_private(struct dm_io_client *cl, struct block_device *fdev, void *p)
{
	struct tracker t;
	CHECK_OK(dm_io_bdev_set_faults(fdev, "hang"));
	tracker_init(&t, 1);
	struct dm_io_region r = { fdev, 8, PG / 512 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(p, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	sleep_ms(20);
	uint64_t used = stats(cl).private_bytes_in_use;
	CHECK_OK(dm_io_bdev_set_faults(fdev, "none"));
	CHECK(tracker_wait(&t, 5000), "held read not done after the rule was cleared");
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_OK, "held read ended %d (%d)", t.final_state[0], t.final_error[0]);
	CHECK(check_pattern(p, PG, SEED), "held read delivered other bytes");
	return used;
}

int main(void)
{
	static unsigned char data[LEN];
	char status[1024];
	struct tracker t;
	struct dm_io_handle *hdl = NULL;
	double t0, el;

	struct hungdev *h = hungdev_up(DEV_BYTES);
	if (!h)
		skip(hungdev_skip_reason());
	struct block_device *dev;
	CHECK_OK(dm_io_bdev_open(hungdev_path(h), 0, &dev));
	CHECK(dm_io_bdev_is_direct(dev) == 1, "%s not opened with O_DIRECT", hungdev_path(h));
	/* max_size one page: the two-page read is two pieces. */
	struct dm_io_client *cl = make_client(1, 4, PG);
	int engine = stats(cl).engine;
	int in_place = engine == DM_IO_ENGINE_URING || engine == DM_IO_ENGINE_AIO;

	fill_pattern(data, LEN, SEED);
	CHECK_OK(sync_io(cl, DM_IO_WRITE, dev, OFF / 512, LEN / 512, data, 0));
	uint64_t hw0 = stats(cl).private_bytes_high_water;

	/* Two pages, listed in the reverse of their allocation order. */
	for (int i = 0; i < 2; i++)
		CHECK((pg[i] = dm_io_page_alloc()) != NULL, "dm_io_page_alloc");
	pl[0].page = pg[1];
	pl[0].next = &pl[1];
	pl[1].page = pg[0];
	pl[1].next = NULL;
	struct dm_io_region r = { dev, OFF / 512, LEN / 512 };

	/* ---- 1. a healthy read runs in the pages ---- */
	CHECK_OK(async_io_one(cl, DM_IO_READ, pl_mem(), dev, OFF / 512, LEN / 512));
	CHECK(pages_hold(SEED), "read into library pages differs");
	struct dm_io_stats st = stats(cl);
	if (in_place)
		CHECK(st.private_bytes_high_water == hw0,
		      "a read into library pages took private memory (high water %llu -> %llu)",
		      (unsigned long long)hw0, (unsigned long long)st.private_bytes_high_water);
	fprintf(stderr, "case 1: %s engine, private memory high water %llu -> %llu bytes\n",
		engine == DM_IO_ENGINE_URING ? "io_uring" : in_place ? "AIO" : "thread-pool", (unsigned long long)hw0,
		(unsigned long long)st.private_bytes_high_water);

	/* A file device with fault injection, for reads held before the kernel. */
	const char *fpath;
	struct block_device *fdev = make_faulty_dev("libpages", 1 << 20, "", &fpath);
	CHECK_OK(sync_io(cl, DM_IO_WRITE, fdev, 8, PG / 512, data, 0));
	void *p0 = dm_io_page_address(pg[0]);

	/* ---- 2. held read, cancel by handle while stuck ---- */
	CHECK_OK(hungdev_ctl(h, HOLD));
	tracker_init(&t, 1);
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ, pl_mem(), tracker_notify, &t);
	CHECK_OK(dm_io(&c, 1, &r, &hdl));
	CHECK(hungdev_wait_held_min(h, 1, 3000), "the reads never reached FUSE: %s",
	      hungdev_status(h, status, sizeof(status)));
	t0 = now_ms();
	CHECK(dm_io_cancel_by_handle(cl, hdl) == 1, "cancel_by_handle");
	CHECK(tracker_wait(&t, 2000), "CANCELLED not notified within 2 s with the IO stuck");
	el = now_ms() - t0;
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_CANCELLED && t.final_error[0] == -ECANCELED,
	      "state %d error %d, expected CANCELLED/-ECANCELED", t.final_state[0], t.final_error[0]);
	CHECK(hungdev_held(h) >= 1 && hungdev_inflight(h) >= 1,
	      "the IO was not stuck any more when CANCELLED came (held %d, in flight %d)",
	      hungdev_held(h), hungdev_inflight(h));
	CHECK(dm_io_handle_put(hdl) == NULL, "handle put");
	/* The pages are the caller's again. */
	mark(dm_io_page_address(pg[0]), PG);
	mark(dm_io_page_address(pg[1]), PG);
	fprintf(stderr, "case 2: CANCELLED %.1f ms after the cancel, %d request(s) still held\n", el,
		hungdev_held(h));
	/* Meanwhile (the cancelled reads still stuck, beyond this client's
	 * 16 KiB bound) a read into a page goes through private memory (with
	 * the thread-pool engine, the two stuck reads hold theirs too). */
	uint64_t held = held_private(cl, fdev, p0);
	CHECK(held == (in_place ? 1 : 3) * PG, "with cancelled reads stuck, a held read into a page "
	      "leaves %llu bytes of private memory in use", (unsigned long long)held);
	mark(p0, PG);
	release(h, "case 2");
	CHECK(marked(dm_io_page_address(pg[0]), PG) && marked(dm_io_page_address(pg[1]), PG),
	      "the cancelled read wrote the caller's pages after CANCELLED");
	CHECK(t.finals == 1 && t.calls_after_final == 0, "notify after CANCELLED");

	/* ---- 3. the same pages read again ---- */
	CHECK_OK(async_io_one(cl, DM_IO_READ, pl_mem(), dev, OFF / 512, LEN / 512));
	CHECK(pages_hold(SEED), "read into the pages after the cancel differs");

	/* ---- 4. VM memory at a page: SYNC read times out ---- */
	CHECK_OK(hungdev_ctl(h, HOLD));
	struct dm_io_region r1 = { dev, OFF / 512, PG / 512 };
	struct dm_io_control cs = {
		.memory = vm_mem(p0, 0),
		.rw = DM_IO_READ | DM_IO_SYNC,
		.client = cl,
		.timeout = 100,
	};
	t0 = now_ms();
	int rc = dm_io(&cs, 1, &r1, NULL);
	el = now_ms() - t0;
	CHECK(rc == -ETIMEDOUT, "SYNC read returned %d, expected -ETIMEDOUT", rc);
	CHECK(el >= 90 && el < 2000, "SYNC read returned after %.0f ms, expected ~100", el);
	CHECK(hungdev_wait_held_min(h, 1, 2000), "the SYNC read never reached FUSE");
	mark(p0, PG);
	release(h, "case 4");
	CHECK(marked(p0, PG), "the timed-out SYNC read wrote the page after returning");
	fprintf(stderr, "case 4: SYNC read -ETIMEDOUT after %.0f ms\n", el);

	/* ---- 5. destroy with a held read into a page ---- */
	struct dm_io_client *cl2 = make_client(1, 4, PG);
	CHECK_OK(hungdev_ctl(h, HOLD));
	tracker_init(&t, 1);
	struct dm_io_control c2 = make_ctrl(cl2, DM_IO_READ, vm_mem(p0, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c2, 1, &r1, NULL));
	CHECK(hungdev_wait_held_min(h, 1, 3000), "the read never reached FUSE");
	t0 = now_ms();
	dm_io_client_destroy(cl2);
	el = now_ms() - t0;
	CHECK(el < 2000, "destroy took %.0f ms with the IO stuck", el);
	CHECK(tracker_wait(&t, 0), "destroy returned before CANCELLED was delivered");
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_CANCELLED && t.final_error[0] == -ESHUTDOWN,
	      "state %d error %d, expected CANCELLED/-ESHUTDOWN", t.final_state[0], t.final_error[0]);
	mark(p0, PG);
	release(h, "case 5");
	CHECK(marked(p0, PG), "the read cancelled by destroy wrote the page");
	fprintf(stderr, "case 5: destroy returned after %.0f ms with the IO stuck\n", el);

	/* ---- 6. a read held before the kernel, cancelled, then let go ---- */
	held = held_private(cl, fdev, p0);
	CHECK(held == (in_place ? 0 : PG), "a held read into a page holds %llu bytes of private memory",
	      (unsigned long long)held);
	CHECK_OK(dm_io_bdev_set_faults(fdev, "hang"));
	tracker_init(&t, 1);
	struct dm_io_region rf = { fdev, 8, PG / 512 };
	struct dm_io_control c3 = make_ctrl(cl, DM_IO_READ, vm_mem(p0, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c3, 1, &rf, &hdl));
	sleep_ms(20);
	CHECK(dm_io_cancel_by_handle(cl, hdl) == 1, "cancel_by_handle (fault hold)");
	CHECK(tracker_wait(&t, 2000), "CANCELLED not notified (fault hold)");
	CHECK(t.final_state[0] == DM_IO_CANCELLED, "state %d, expected CANCELLED", t.final_state[0]);
	CHECK(dm_io_handle_put(hdl) == NULL, "handle put");
	mark(p0, PG);
	CHECK_OK(dm_io_bdev_set_faults(fdev, "none"));
	sleep_ms(200);
	CHECK(marked(p0, PG), "the cancelled read held by a fault rule wrote the page");
	CHECK_OK(async_io_one(cl, DM_IO_READ, vm_mem(p0, 0), fdev, 8, PG / 512));
	CHECK(check_pattern(p0, PG, SEED), "read after the fault hold differs");

	dm_io_bdev_close(fdev);
	dm_io_client_destroy(cl);
	dm_io_bdev_close(dev);
	dm_io_page_free(pg[0]);
	dm_io_page_free(pg[1]);
	hungdev_down(h);
	return 0;
}
