/* shared_clients_mixed: many clients on the shared engine (DMIO_THREADS=2,
 * so several clients share each reactor and completion thread), started
 * from several threads. Healthy clients keep 4 reads in flight each,
 * resubmitting from notify, while submitter threads also run SYNC reads on
 * them; some clients' devices hang (a fault rule, and the really hung
 * loop+FUSE device when it can be set up here) and are destroyed while
 * their IO is held; some healthy clients are destroyed mid-IO. Checks:
 *  - notify calls of one client never overlap, and none comes after that
 *    client's destroy returned;
 *  - every request gets exactly one final state (and at most one TIMEOUT
 *    before it);
 *  - a hung client's reads get their TIMEOUT, and its destroy returns
 *    (not waiting for the held IO) with every region CANCELLED -ESHUTDOWN;
 *  - the healthy clients finish all their IO meanwhile. */
#include "helpers.h"
#include "hungdev.h"

#include <errno.h>
#include <string.h>

enum { NCL = 24, QD = 4, BLK = 4096, K = 200, MAXREQ = K + 2 * QD, NTH = 4 };
enum { HEALTHY, HUNG, DOOMED, REAL_HUNG };

struct cl;
struct req {
	struct cl *cl;
	int slot;
	atomic_int finals, timeouts, state, error, refused;
};
struct cl {
	struct dm_io_client *c;
	struct block_device *dev;
	int kind;
	atomic_int in_cb, started, finals, timeouts, destroyed;
	struct req reqs[MAXREQ];
	unsigned char buf[QD][BLK];
	unsigned char sbuf[BLK];
};

static struct cl cls[NCL];
static struct block_device *good, *held;
static struct hungdev *h;

static int submit(struct cl *c, int slot);

static void cb(struct dm_io_region_state *st, void *ctx)
{
	struct req *r = ctx;
	struct cl *c = r->cl;
	CHECK(atomic_exchange(&c->in_cb, 1) == 0, "two notify calls of client %d at once",
	      (int)(c - cls));
	CHECK(!atomic_load(&c->destroyed), "notify of client %d after its destroy returned",
	      (int)(c - cls));
	if (st->state == DM_IO_TIMEOUT) {
		CHECK(atomic_load(&r->finals) == 0, "TIMEOUT after the final state");
		CHECK(atomic_fetch_add(&r->timeouts, 1) == 0, "two TIMEOUTs");
		atomic_fetch_add(&c->timeouts, 1);
	} else {
		CHECK(atomic_fetch_add(&r->finals, 1) == 0, "two final states for one region");
		atomic_store(&r->state, st->state);
		atomic_store(&r->error, st->error_code);
		atomic_fetch_add(&c->finals, 1);
		if (st->state == DM_IO_OK && c->kind != HUNG && c->kind != REAL_HUNG)
			submit(c, r->slot);
	}
	atomic_store(&c->in_cb, 0);
}

/* One asynchronous read into slot `slot` (none once K were started). */
static int submit(struct cl *c, int slot)
{
	int i = atomic_fetch_add(&c->started, 1);
	if (i >= K && (c->kind == HEALTHY || c->kind == DOOMED)) {
		atomic_fetch_sub(&c->started, 1);
		return -1;
	}
	CHECK(i < MAXREQ, "too many requests");
	struct req *r = &c->reqs[i];
	r->cl = c;
	r->slot = slot;
	struct dm_io_region reg = { c->dev, (uint64_t)slot * (BLK / 512), BLK / 512 };
	struct dm_io_control ctrl = make_ctrl(c->c, DM_IO_READ, vm_mem(c->buf[slot], 0), cb, r);
	if (c->kind == HUNG || c->kind == REAL_HUNG)
		ctrl.timeout = 100;
	int rc = dm_io(&ctrl, 1, &reg, NULL);
	if (rc != 0) {
		/* Refused (the client is being destroyed): no notification owed. */
		CHECK(c->kind == DOOMED && (rc == -ESHUTDOWN || rc == -EINVAL),
		      "dm_io on client %d returned %d", (int)(c - cls), rc);
		atomic_store(&r->refused, 1);
	}
	return rc;
}

static void destroy(struct cl *c)
{
	double t0 = now_ms();
	dm_io_client_destroy(c->c);
	atomic_store(&c->destroyed, 1);
	double ms = now_ms() - t0;
	CHECK(ms < 10000, "destroy of client %d took %.0f ms", (int)(c - cls), ms);
}

static void *submitter(void *arg)
{
	int t = (int)(intptr_t)arg;
	for (int i = t; i < NCL; i += NTH)
		for (int s = 0; s < QD; s++)
			submit(&cls[i], s);
	/* SYNC reads on the healthy clients, from this thread, meanwhile. */
	for (int round = 0; round < 5; round++)
		for (int i = t; i < NCL; i += NTH)
			if (cls[i].kind == HEALTHY)
				CHECK_OK(sync_io(cls[i].c, DM_IO_READ, good, 64, BLK / 512, cls[i].sbuf, 0));
	for (int i = t; i < NCL; i += NTH) {
		struct cl *c = &cls[i];
		if (c->kind == DOOMED) {
			double end = now_ms() + 10000;
			while (atomic_load(&c->finals) < 20 && now_ms() < end)
				sleep_ms(1);
			destroy(c);
		} else if (c->kind == HUNG || c->kind == REAL_HUNG) {
			double end = now_ms() + 10000;
			while (atomic_load(&c->timeouts) < QD && now_ms() < end)
				sleep_ms(1);
			CHECK(atomic_load(&c->timeouts) == QD, "client %d: %d TIMEOUTs of %d", i,
			      atomic_load(&c->timeouts), QD);
			destroy(c);
			for (int q = 0; q < QD; q++) {
				struct req *r = &c->reqs[q];
				CHECK(atomic_load(&r->finals) == 1, "held read not final after destroy");
				CHECK(atomic_load(&r->state) == DM_IO_CANCELLED &&
					      atomic_load(&r->error) == -ESHUTDOWN,
				      "held read ended %d (%d)", atomic_load(&r->state),
				      atomic_load(&r->error));
			}
		}
	}
	return NULL;
}

int main(void)
{
	setenv("DMIO_THREADS", "2", 1);
	good = make_dev("shared-good.img", 1 << 20);
	check_block_size(good);
	held = make_faulty_dev("shared-held.img", 1 << 20, "hang", NULL);
	h = getenv("DMIO_TEST_INSTRUMENTED") ? NULL : hungdev_up(8 << 20);
	struct block_device *real = NULL;
	if (h) {
		CHECK_OK(hungdev_ctl(h, "hold read all"));
		CHECK_OK(dm_io_bdev_open(hungdev_path(h), 0, &real));
	}
	for (int i = 0; i < NCL; i++) {
		struct cl *c = &cls[i];
		c->kind = i % 6 == 0 ? HUNG : i % 6 == 3 ? DOOMED : HEALTHY;
		if (i == 6 && real)
			c->kind = REAL_HUNG;
		c->dev = c->kind == HUNG ? held : c->kind == REAL_HUNG ? real : good;
		CHECK_OK(dm_io_client_create(1, QD + 1, BLK, &c->c));
	}
	pthread_t th[NTH];
	for (int t = 0; t < NTH; t++)
		CHECK(pthread_create(&th[t], NULL, submitter, (void *)(intptr_t)t) == 0, "thread");
	for (int t = 0; t < NTH; t++)
		pthread_join(th[t], NULL);

	/* The healthy clients finish all their reads (none waited for the
	 * hung ones). */
	double end = now_ms() + 30000;
	for (int i = 0; i < NCL; i++) {
		struct cl *c = &cls[i];
		if (c->kind != HEALTHY)
			continue;
		while (atomic_load(&c->finals) < K && now_ms() < end)
			sleep_ms(1);
		CHECK(atomic_load(&c->finals) == K, "client %d: %d of %d reads final", i,
		      atomic_load(&c->finals), K);
		destroy(c);
	}
	for (int i = 0; i < NCL; i++) {
		struct cl *c = &cls[i];
		int n = atomic_load(&c->started);
		for (int q = 0; q < n; q++) {
			struct req *r = &c->reqs[q];
			if (atomic_load(&r->refused))
				continue;
			CHECK(atomic_load(&r->finals) == 1, "client %d request %d: %d final states", i, q,
			      atomic_load(&r->finals));
			if (c->kind == HEALTHY)
				CHECK(atomic_load(&r->state) == DM_IO_OK, "client %d request %d ended %d", i, q,
				      atomic_load(&r->state));
		}
	}
	/* Let the held IO end, so nothing is left running at exit. */
	CHECK_OK(dm_io_bdev_set_faults(held, ""));
	if (h)
		CHECK_OK(hungdev_ctl(h, "release"));
	sleep_ms(50);
	printf("%d clients, %d threads: ok\n", NCL, NTH);
	return 0;
}
