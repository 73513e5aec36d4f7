/* stress_soak: at least 1,000,000 region IOs (DMIO_SOAK_REGIONS) on four
 * fault-injecting devices whose faults change every few milliseconds
 * (delays, EIO/ENOSPC on sector ranges, hangs), with timeouts, CANCEL_ON_TIMEOUT
 * and random cancels by handle and by device. Proves:
 *  - every region gets exactly one final state, at most one TIMEOUT before it,
 *    and nothing after it;
 *  - completed reads carry the right data (checksummed against a shadow of
 *    what each block must hold; blocks that ever had a cancelled write are
 *    excluded, as their content is undefined by contract);
 *  - the client's counters add up, private memory returns to 0 in use, and
 *    RSS stays within the private-memory bound plus a small constant.
 * The last device is an NBD export (nbdkit's file plugin on a unix socket)
 * whose server is killed (kill -9) and restarted every 2 s: its regions
 * also end ERROR with -ECONNRESET or -ENOTCONN, and the same rules hold.
 * Runs until the region target or DMIO_SOAK_SECONDS (default 400) pass;
 * reaching the time first fails the test. */
#include "helpers.h"
#include "nbdserver.h"

#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#define NDEV 4
#define DEV_BYTES (32u << 20)
#define BLK 4096u
#define NBLK (DEV_BYTES / BLK)
#define QD 64
#define MAXBLK 4
#define UNKNOWN 0xFFFFFFFFu
#define POISON 0xFFFFFFFEu

struct req {
	int nreg, write, dev[2], cancel_on_timeout;
	uint32_t blk, nblk, version;
	struct dm_io_handle *hdl;
	int timeouts[2], finals[2], state[2], err[2], extra;
	unsigned char buf[MAXBLK * BLK];
};

static struct dm_io_client *cl;
static struct block_device *dev[NDEV];
static struct req reqs[QD];
static int busy[QD];
static uint32_t known[NDEV][NBLK];
static uint8_t locked[NDEV][NBLK];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int doneq[QD], ndone;
static atomic_int stop_faults;
static uint64_t rng = 88172645463325252ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void pattern(unsigned char *b, uint32_t version, uint32_t blk)
{
	if (version == 0)
		memset(b, 0, BLK);
	else
		fill_pattern(b, BLK, version * 1000003u + blk);
}

static void notify(struct dm_io_region_state *st, void *ctx)
{
	struct req *r = ctx;
	int slot = (int)(r - reqs);
	pthread_mutex_lock(&lock);
	unsigned i = st->index;
	if (i >= (unsigned)r->nreg || r->finals[i]) {
		r->extra++;
	} else if (st->state == DM_IO_TIMEOUT) {
		r->timeouts[i]++;
	} else {
		r->finals[i]++;
		r->state[i] = st->state;
		r->err[i] = st->error_code;
		int all = 1;
		for (int k = 0; k < r->nreg; k++)
			all &= r->finals[k] == 1;
		if (all) {
			doneq[ndone++] = slot;
			pthread_cond_signal(&cond);
		}
	}
	pthread_mutex_unlock(&lock);
}

static void *fault_thread(void *arg)
{
	(void)arg;
	uint64_t s = 0x9E3779B97F4A7C15ull;
	char spec[128];
	while (!atomic_load(&stop_faults)) {
		s ^= s << 13, s ^= s >> 7, s ^= s << 17;
		int d = (int)(s % NDEV);
		unsigned kind = (unsigned)((s >> 8) % 10);
		uint64_t a = ((s >> 16) % (NBLK - 64)) * 8;
		switch (kind) {
		case 0: case 1: case 2: case 3:
			spec[0] = 0;
			break;
		case 4: case 5:
			snprintf(spec, sizeof spec, "delay %ums", (unsigned)((s >> 40) % 3 + 1));
			break;
		case 6:
			snprintf(spec, sizeof spec, "error reads errno=EIO sectors=%lu-%lu",
				 (unsigned long)a, (unsigned long)(a + 4095));
			break;
		case 7:
			snprintf(spec, sizeof spec, "error writes errno=ENOSPC sectors=%lu-%lu",
				 (unsigned long)a, (unsigned long)(a + 4095));
			break;
		default:
			snprintf(spec, sizeof spec, "hang");
			break;
		}
		CHECK_OK(dm_io_bdev_set_faults(dev[d], spec));
		sleep_ms(5 + (int)((s >> 32) % 40));
		if (kind >= 8)
			CHECK_OK(dm_io_bdev_set_faults(dev[d], ""));
	}
	return NULL;
}

static long rss_bytes(void)
{
	long pages = 0, res = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	CHECK(f && fscanf(f, "%ld %ld", &pages, &res) == 2, "statm");
	fclose(f);
	return res * sysconf(_SC_PAGESIZE);
}

static int try_lock(int d, uint32_t b, uint32_t n)
{
	for (uint32_t k = 0; k < n; k++)
		if (locked[d][b + k])
			return 0;
	return 1;
}

static void set_lock(int d, uint32_t b, uint32_t n, uint8_t v)
{
	for (uint32_t k = 0; k < n; k++)
		locked[d][b + k] = v;
}

static uint32_t next_version = 1;

/* Starts a new request in free slot s; returns regions submitted (0 if the
 * random blocks were busy). */
static int submit(int s)
{
	struct req *r = &reqs[s];
	memset(r, 0, offsetof(struct req, buf));
	r->write = rnd() % 2;
	r->nreg = r->write ? 2 : 1;
	r->nblk = 1 + (uint32_t)(rnd() % MAXBLK);
	r->blk = (uint32_t)(rnd() % (NBLK - MAXBLK));
	r->dev[0] = (int)(rnd() % NDEV);
	r->dev[1] = (r->dev[0] + 1 + (int)(rnd() % (NDEV - 1))) % NDEV;
	for (int i = 0; i < r->nreg; i++)
		if (!try_lock(r->dev[i], r->blk, r->nblk))
			return 0;
	for (int i = 0; i < r->nreg; i++)
		set_lock(r->dev[i], r->blk, r->nblk, 1);
	if (r->write) {
		r->version = next_version++;
		for (uint32_t k = 0; k < r->nblk; k++)
			pattern(r->buf + k * BLK, r->version, r->blk + k);
	} else {
		memset(r->buf, 0x5C, sizeof r->buf);
	}
	struct dm_io_region reg[2];
	for (int i = 0; i < r->nreg; i++)
		reg[i] = (struct dm_io_region){ dev[r->dev[i]], (uint64_t)r->blk * 8, r->nblk * 8 };
	unsigned t = (unsigned)(rnd() % 10);
	struct dm_io_control c = {
		.memory = { .type = DM_IO_VM, .ptr.vma = r->buf },
		.rw = r->write ? DM_IO_WRITE : DM_IO_READ,
		.notify = notify,
		.context = r,
		.client = cl,
		.timeout = t < 3 ? 5 + rnd() % 40 : 0,
		.flags = t == 0 ? DM_IO_CANCEL_ON_TIMEOUT : 0,
	};
	r->cancel_on_timeout = c.flags != 0;
	busy[s] = 1;
	int rc = dm_io(&c, (unsigned)r->nreg, reg, &r->hdl);
	CHECK(rc == 0, "dm_io: %d", rc);
	return r->nreg;
}

static long verified_blocks, poisoned_reads, region_states[4], timeouts_seen;
/* On the NBD device: blocks verified, regions ended ERROR. */
static long nbd_verified, nbd_errors;

static void finish(int s)
{
	struct req *r = &reqs[s];
	CHECK(r->extra == 0, "request %d: %d notify calls after final or bad index", s, r->extra);
	for (int i = 0; i < r->nreg; i++) {
		int d = r->dev[i];
		CHECK(r->finals[i] == 1, "region final %d times", r->finals[i]);
		CHECK(r->timeouts[i] <= 1, "region got %d TIMEOUTs", r->timeouts[i]);
		CHECK(!(r->cancel_on_timeout && r->timeouts[i]), "TIMEOUT with CANCEL_ON_TIMEOUT");
		CHECK(r->state[i] != DM_IO_TIMEOUT, "final state TIMEOUT");
		region_states[r->state[i]]++;
		nbd_errors += d == NDEV - 1 && r->state[i] == DM_IO_ERROR;
		timeouts_seen += r->timeouts[i];
		for (uint32_t k = 0; k < r->nblk; k++) {
			uint32_t *kn = &known[d][r->blk + k];
			if (r->write) {
				if (*kn == POISON)
					continue;
				if (r->state[i] == DM_IO_OK)
					*kn = r->version;
				else if (r->state[i] == DM_IO_ERROR)
					*kn = UNKNOWN;
				else /* CANCELLED: the write may still land later */
					*kn = POISON;
			} else if (r->state[i] == DM_IO_OK) {
				if (*kn == UNKNOWN || *kn == POISON) {
					poisoned_reads++;
					continue;
				}
				unsigned char want[BLK];
				pattern(want, *kn, r->blk + k);
				CHECK(memcmp(want, r->buf + k * BLK, BLK) == 0,
				      "dev %d block %u: read data differs from version %u", d, r->blk + k, *kn);
				verified_blocks++;
				nbd_verified += d == NDEV - 1;
			}
		}
		set_lock(d, r->blk, r->nblk, 0);
	}
	CHECK(dm_io_handle_put(r->hdl) == NULL, "handle still referenced");
	busy[s] = 0;
}

/* Finishes the requests whose regions are all final, waiting up to
 * wait_ms for one when there are none; returns their region count. */
static long take_done(int wait_ms)
{
	int local[QD], n;
	long regions = 0;
	pthread_mutex_lock(&lock);
	if (ndone == 0 && wait_ms > 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += wait_ms * 1000000L;
		if (ts.tv_nsec >= 1000000000L)
			ts.tv_sec++, ts.tv_nsec -= 1000000000L;
		pthread_cond_timedwait(&cond, &lock, &ts);
	}
	n = ndone;
	memcpy(local, doneq, sizeof(int) * (size_t)n);
	ndone = 0;
	pthread_mutex_unlock(&lock);
	for (int k = 0; k < n; k++) {
		regions += reqs[local[k]].nreg;
		finish(local[k]);
	}
	return regions;
}

int main(void)
{
	const char *e = getenv("DMIO_SOAK_REGIONS");
	long target = e ? atol(e) : 1000000;
	e = getenv("DMIO_SOAK_SECONDS");
	double limit_ms = (e ? atof(e) : 400) * 1000;

	CHECK_OK(dm_io_client_create(2, QD / 2, MAXBLK * BLK, &cl));
	for (int d = 0; d < NDEV - 1; d++) {
		char name[16];
		snprintf(name, sizeof name, "soak%d", d);
		CHECK_OK(dm_io_bdev_open(make_file(name, DEV_BYTES), DM_IO_BDEV_BUFFERED, &dev[d]));
	}
	const char *nargs[] = { "file", make_file("soak-nbd", DEV_BYTES), NULL };
	struct nbdserver *srv = nbdserver_start(nargs);
	CHECK_OK(dm_io_bdev_open(nbdserver_uri(srv), 0, &dev[NDEV - 1]));
	double last_restart = now_ms();
	long restarts = 0;
	struct dm_io_stats st;
	CHECK_OK(dm_io_client_stats(cl, &st, sizeof st));
	long bound = (long)st.private_bytes_bound;
	long rss0 = rss_bytes(), rss_max = rss0;

	pthread_t ft;
	pthread_create(&ft, NULL, fault_thread, NULL);
	double t0 = now_ms(), last_report = t0;
	long submitted = 0, completed = 0, cancels = 0, dev_cancels = 0;
	while (completed < target) {
		CHECK(now_ms() - t0 < limit_ms, "only %ld of %ld regions in %.0f s", completed, target,
		      limit_ms / 1000);
		for (int s = 0; s < QD && submitted < target; s++)
			if (!busy[s])
				submitted += submit(s);
		completed += take_done(20);
		if (now_ms() - last_restart > 2000) {
			nbdserver_restart(srv);
			restarts++;
			last_restart = now_ms();
		}
		/* Random cancels of requests in flight. */
		for (int s = 0; s < QD; s++) {
			if (busy[s] && rnd() % 400 == 0) {
				int rc = dm_io_cancel_by_handle(cl, reqs[s].hdl);
				CHECK(rc >= 0 && rc <= reqs[s].nreg, "cancel_by_handle: %d", rc);
				cancels += rc;
			}
		}
		if (rnd() % 2000 == 0) {
			int rc = dm_io_cancel_by_device(cl, dev[rnd() % NDEV]);
			CHECK(rc >= 0, "cancel_by_device: %d", rc);
			dev_cancels += rc;
		}
		if (completed % 4096 < 64) {
			long r = rss_bytes();
			if (r > rss_max)
				rss_max = r;
		}
		if (now_ms() - last_report > 10000) {
			last_report = now_ms();
			printf("soak: %ld regions in %.0f s\n", completed, (last_report - t0) / 1000);
			fflush(stdout);
		}
	}
	atomic_store(&stop_faults, 1);
	pthread_join(ft, NULL);
	for (int d = 0; d < NDEV; d++)
		CHECK_OK(dm_io_bdev_set_faults(dev[d], ""));
	double drain = now_ms();
	for (;;) {
		int left = 0;
		for (int s = 0; s < QD; s++)
			left += busy[s];
		if (!left)
			break;
		CHECK(now_ms() - drain < 20000, "%d requests never became final", left);
		completed += take_done(0);
		sleep_ms(5);
	}
	/* Cancelled IO still held or in the kernel gives its memory back soon. */
	for (int i = 0; i < 400; i++) {
		CHECK_OK(dm_io_client_stats(cl, &st, sizeof st));
		if (st.private_bytes_in_use == 0)
			break;
		sleep_ms(10);
	}
	CHECK(st.private_bytes_in_use == 0, "%lu bytes of private memory still in use",
	      (unsigned long)st.private_bytes_in_use);
	CHECK(st.regions_in_flight == 0, "stats: %lu regions in flight", (unsigned long)st.regions_in_flight);
	CHECK((long)st.regions == completed, "stats: %lu regions, test saw %ld", (unsigned long)st.regions,
	      completed);
	CHECK((long)(st.ok + st.errors + st.cancelled) == completed, "stats: finals do not add up");
	CHECK(st.private_bytes_high_water <= st.private_bytes_bound, "high water above bound");
	long growth = rss_max - rss0;
	printf("soak: %ld regions (%ld OK, %ld CANCELLED, %ld ERROR, %ld TIMEOUT notices, %lu late) in %.1f s\n",
	       completed, region_states[DM_IO_OK], region_states[DM_IO_CANCELLED], region_states[DM_IO_ERROR],
	       timeouts_seen, (unsigned long)st.late_completions, (now_ms() - t0) / 1000);
	printf("soak: %ld blocks verified, %ld reads of undefined blocks not verified, %ld+%ld cancelled by call\n",
	       verified_blocks, poisoned_reads, cancels, dev_cancels);
	printf("soak: RSS growth %ld KiB, private-memory bound %ld KiB, high water %lu KiB\n", growth / 1024,
	       bound / 1024, (unsigned long)st.private_bytes_high_water / 1024);
	if (getenv("DMIO_TEST_INSTRUMENTED"))
		printf("soak: RSS bound not checked under valgrind/ASan (they keep memory of their own)\n");
	else
		CHECK(growth <= bound + (16l << 20), "RSS grew %ld bytes, bound %ld + 16 MiB", growth, bound);
	CHECK(verified_blocks > 10000, "too few verified reads (%ld)", verified_blocks);
	printf("soak: NBD device: %ld blocks verified, %ld regions ERROR, server killed and restarted %ld times\n",
	       nbd_verified, nbd_errors, restarts);
	CHECK(nbd_verified > 100, "too few verified reads on the NBD device (%ld)", nbd_verified);
	dm_io_client_destroy(cl);
	for (int d = 0; d < NDEV; d++)
		dm_io_bdev_close(dev[d]);
	nbdserver_stop(srv);
	return 0;
}
