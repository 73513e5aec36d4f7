/* Reads from a block device whose IO is really stuck in the kernel: a loop
 * device (direct IO) over the hangfs FUSE daemon holding the requests (see
 * fixtures/hungdev.h). Needs root and /dev/fuse, else skips.
 *
 * 1. An async 4 KiB read with a 100 ms timeout gets TIMEOUT while the
 *    request sits in FUSE; dm_io_cancel_by_handle ends it CANCELLED at once
 *    although the kernel IO is still stuck; when the IO is released and
 *    completes, the library does not write the caller's buffer.
 * 2. A SYNC read without notify returns -ETIMEDOUT promptly with the IO
 *    stuck; dm_io_client_destroy returns promptly too; after the release
 *    the buffer is untouched and everything tears down and exits cleanly.
 */
#include "helpers.h"
#include "hungdev.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>

enum { DEV_BYTES = 16 << 20, LEN = 4096, CANARY = 0xAB, SEED = 77 };
#define OFF (1ULL << 20) /* bytes; the held range is [OFF, OFF + LEN) */
#define HOLD "hold 1048576-1052671"

static int all_canary(const unsigned char *b, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (b[i] != CANARY)
			return 0;
	return 1;
}

/* For the log: this process's threads in D state and where they wait
 * (the thread-pool engine blocks one in submit_bio_wait; io_uring blocks
 * none, its bio is in flight without a task). */
static void print_d_threads(const char *when)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	char path[300], buf[512], wchan[64];
	int n = 0;
	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/stat", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		size_t len = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[len] = 0;
		char *rp = strrchr(buf, ')');
		if (!rp || rp[1] != ' ' || rp[2] != 'D')
			continue;
		wchan[0] = 0;
		snprintf(path, sizeof(path), "/proc/self/task/%s/wchan", e->d_name);
		if ((f = fopen(path, "r"))) {
			len = fread(wchan, 1, sizeof(wchan) - 1, f);
			wchan[len] = 0;
			fclose(f);
		}
		fprintf(stderr, "%s: thread %s in D state, waiting in %s\n", when, e->d_name, wchan);
		n++;
	}
	closedir(d);
	if (!n)
		fprintf(stderr, "%s: no thread of this process in D state\n", when);
}

/* SYNC read or write of LEN bytes at OFF, no notify. */
static int sync_rw(struct dm_io_client *cl, struct block_device *dev, int rw, void *buf,
		   unsigned long timeout)
{
	struct dm_io_region r = { dev, OFF / 512, LEN / 512 };
	struct dm_io_control c = {
		.memory = { .type = DM_IO_VM, .ptr.vma = buf },
		.rw = rw | DM_IO_SYNC,
		.client = cl,
		.timeout = timeout,
	};
	return dm_io(&c, 1, &r, NULL);
}

int main(void)
{
	static unsigned char pattern[LEN], buf[LEN], back[LEN];
	char status[1024];
	struct dm_io_client *cl;
	struct block_device *dev;
	struct dm_io_handle *hdl = NULL;
	struct tracker t;
	double t0, el;
	int n;

	struct hungdev *h = hungdev_up(DEV_BYTES);
	if (!h)
		skip(hungdev_skip_reason());
	const char *path = hungdev_path(h);

	CHECK_OK(dm_io_client_create(1, 4, 64 * 1024, &cl));
	CHECK_OK(dm_io_bdev_open(path, 0, &dev));
	CHECK(dm_io_bdev_is_direct(dev) == 1, "%s not opened with O_DIRECT", path);
	CHECK(dm_io_bdev_sectors(dev) == DEV_BYTES / 512, "device has %llu sectors",
	      (unsigned long long)dm_io_bdev_sectors(dev));

	/* Healthy first: what we read later would be this pattern. */
	fill_pattern(pattern, LEN, SEED);
	CHECK_OK(sync_rw(cl, dev, DM_IO_WRITE, pattern, 5000));
	memset(back, 0, LEN);
	CHECK_OK(sync_rw(cl, dev, DM_IO_READ, back, 5000));
	CHECK(check_pattern(back, LEN, SEED), "healthy read-back differs");
	CHECK(hungdev_held(h) == 0, "requests held before any hold: %d", hungdev_held(h));

	/* ---- 1. async read, TIMEOUT, cancel by handle while stuck ---- */
	CHECK_OK(hungdev_ctl(h, HOLD));
	memset(buf, CANARY, LEN);
	tracker_init(&t, 1);
	struct dm_io_region r = { dev, OFF / 512, LEN / 512 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(buf, 0), tracker_notify, &t);
	c.timeout = 100;
	t0 = now_ms();
	CHECK_OK(dm_io(&c, 1, &r, &hdl));
	CHECK(tracker_wait_timeout(&t, 0, 3000), "no TIMEOUT within 3 s (%s)",
	      hungdev_status(h, status, sizeof(status)));
	el = now_ms() - t0;
	CHECK(el >= 90 && el < 3000, "TIMEOUT after %.0f ms, expected ~100", el);
	CHECK(t.finals == 0, "region final (state %d) while its IO is held", t.final_state[0]);
	CHECK(hungdev_wait_held_min(h, 1, 2000), "the read never reached FUSE: %s",
	      hungdev_status(h, status, sizeof(status)));
	/* ... and is a bio in flight in the loop device's block layer. */
	CHECK(hungdev_inflight(h) >= 1, "no IO in flight on %s (%d)", path, hungdev_inflight(h));
	print_d_threads("case 1");
	fprintf(stderr, "case 1: TIMEOUT after %.0f ms, %d request(s) held in hangfs, %d in flight on %s\n",
		el, hungdev_held(h), hungdev_inflight(h), path);

	t0 = now_ms();
	n = dm_io_cancel_by_handle(cl, hdl);
	CHECK(n == 1, "cancel_by_handle returned %d, expected 1", n);
	CHECK(tracker_wait(&t, 2000), "CANCELLED not notified");
	el = now_ms() - t0;
	CHECK(el < 2000, "cancel took %.0f ms with the IO stuck", el);
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_CANCELLED && t.final_error[0] == -ECANCELED,
	      "state %d error %d, expected CANCELLED/-ECANCELED", t.final_state[0], t.final_error[0]);
	CHECK(t.timeouts[0] == 1, "%d TIMEOUT notifications", t.timeouts[0]);
	/* The cancel did not need the kernel: the IO is still stuck. */
	CHECK(hungdev_held(h) >= 1, "held IO completed before the release (held %d)", hungdev_held(h));
	CHECK(hungdev_inflight(h) >= 1, "IO no longer in flight before the release");
	CHECK(dm_io_handle_put(hdl) == NULL, "handle put");

	CHECK_OK(hungdev_ctl(h, "release"));
	CHECK(hungdev_wait_held(h, 0, 5000), "held IO not released: %s",
	      hungdev_status(h, status, sizeof(status)));
	sleep_ms(300); /* the kernel completes the read into private memory */
	CHECK(hungdev_inflight(h) == 0, "%d IO still in flight after release", hungdev_inflight(h));
	CHECK(all_canary(buf, LEN), "the cancelled read wrote the caller's buffer");
	tracker_check(&t);
	CHECK(t.finals == 1, "notify after CANCELLED");

	/* The device and the client still work after the stuck IO. */
	memset(back, 0, LEN);
	CHECK_OK(sync_rw(cl, dev, DM_IO_READ, back, 5000));
	CHECK(check_pattern(back, LEN, SEED), "read after release differs");

	/* ---- 2. SYNC read times out promptly; destroy does not wait ---- */
	struct dm_io_client *cl2;
	CHECK_OK(dm_io_client_create(1, 4, 64 * 1024, &cl2));
	CHECK_OK(hungdev_ctl(h, HOLD));
	memset(buf, CANARY, LEN);
	t0 = now_ms();
	n = sync_rw(cl2, dev, DM_IO_READ, buf, 100);
	el = now_ms() - t0;
	CHECK(n == -ETIMEDOUT, "SYNC read returned %d, expected -ETIMEDOUT", n);
	CHECK(el >= 90 && el < 2000, "SYNC read returned after %.0f ms, expected ~100", el);
	CHECK(hungdev_wait_held_min(h, 1, 2000), "the SYNC read never reached FUSE: %s",
	      hungdev_status(h, status, sizeof(status)));
	CHECK(all_canary(buf, LEN), "timed-out SYNC read wrote the buffer");
	fprintf(stderr, "case 2: SYNC read -ETIMEDOUT after %.0f ms, %d request(s) held\n", el,
		hungdev_held(h));

	t0 = now_ms();
	dm_io_client_destroy(cl2);
	el = now_ms() - t0;
	CHECK(el < 2000, "dm_io_client_destroy took %.0f ms with IO stuck", el);
	CHECK(hungdev_held(h) >= 1, "held IO completed before the release");
	CHECK(hungdev_inflight(h) >= 1, "IO no longer in flight on %s", path);
	fprintf(stderr, "case 2: destroy returned after %.0f ms with IO stuck\n", el);
	print_d_threads("case 2 after destroy");

	CHECK_OK(hungdev_ctl(h, "release"));
	CHECK(hungdev_wait_held(h, 0, 5000), "held IO not released: %s",
	      hungdev_status(h, status, sizeof(status)));
	sleep_ms(300);
	CHECK(all_canary(buf, LEN), "the timed-out SYNC read wrote the buffer after release");
	CHECK(hungdev_inflight(h) == 0, "%d IO still in flight after release", hungdev_inflight(h));

	/* Teardown: our descriptors first, then the device. */
	dm_io_client_destroy(cl);
	dm_io_bdev_close(dev);
	CHECK(hungdev_down_detached(h), "the loop device is still attached after hungdev_down");
	return 0;
}
