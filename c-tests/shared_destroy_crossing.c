/* shared_destroy_crossing: two shards (DMIO_THREADS=2), each client joins
 * the one with fewer clients: P and X on one, Q and Y on the other. At the
 * same moment P's notify destroys Y and Q's notify destroys X, whose reads
 * are held by a fault rule: each destroy waits for the other shard's
 * completion thread, which is inside a callback itself. Neither may wait
 * for the other forever: a completion thread that waits delivers the other
 * clients' notifications meanwhile. Both destroys return with every region
 * of X and Y CANCELLED -ESHUTDOWN, nothing of them after. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { N = 4, BLK = 4096 };

static struct dm_io_client *p, *q, *x, *y;
static struct tracker tx[N], ty[N];
static pthread_barrier_t both;
static atomic_int done_p, done_q, after;
static atomic_int gone_x, gone_y;

static void held_notify(struct dm_io_region_state *st, void *ctx)
{
	struct tracker *t = ctx;
	if ((t >= tx && t < tx + N && atomic_load(&gone_x)) ||
	    (t >= ty && t < ty + N && atomic_load(&gone_y)))
		atomic_fetch_add(&after, 1);
	tracker_notify(st, ctx);
}

static void p_notify(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	CHECK(st->state == DM_IO_OK, "P's read state %d", st->state);
	pthread_barrier_wait(&both);
	dm_io_client_destroy(y);
	atomic_store(&gone_y, 1);
	atomic_store(&done_p, 1);
}

static void q_notify(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	CHECK(st->state == DM_IO_OK, "Q's read state %d", st->state);
	pthread_barrier_wait(&both);
	dm_io_client_destroy(x);
	atomic_store(&gone_x, 1);
	atomic_store(&done_q, 1);
}

static void held_reads(struct dm_io_client *cl, struct block_device *dev, struct tracker *t,
		       unsigned char (*buf)[BLK])
{
	for (int i = 0; i < N; i++) {
		tracker_init(&t[i], 1);
		struct dm_io_region r = { dev, (uint64_t)i * (BLK / 512), BLK / 512 };
		struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(buf[i], 0), held_notify, &t[i]);
		CHECK_OK(dm_io(&c, 1, &r, NULL));
	}
}

int main(void)
{
	setenv("DMIO_THREADS", "2", 1);
	static unsigned char pb[BLK], qb[BLK], xb[N][BLK], yb[N][BLK];
	struct block_device *good = make_dev("crossing-good.img", 1 << 20);
	struct block_device *held = make_faulty_dev("crossing-held.img", 1 << 20, "hang", NULL);
	check_block_size(good);
	CHECK(pthread_barrier_init(&both, NULL, 2) == 0, "barrier");
	/* Shard 0, shard 1, then the one with fewer clients: 0, then 1. */
	CHECK_OK(dm_io_client_create(1, 1, BLK, &p));
	CHECK_OK(dm_io_client_create(1, 1, BLK, &q));
	CHECK_OK(dm_io_client_create(1, N, BLK, &x));
	CHECK_OK(dm_io_client_create(1, N, BLK, &y));
	held_reads(x, held, tx, xb);
	held_reads(y, held, ty, yb);

	struct dm_io_region r = { good, 0, BLK / 512 };
	struct dm_io_control c = make_ctrl(p, DM_IO_READ, vm_mem(pb, 0), p_notify, NULL);
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	c = make_ctrl(q, DM_IO_READ, vm_mem(qb, 0), q_notify, NULL);
	CHECK_OK(dm_io(&c, 1, &r, NULL));

	double end = now_ms() + 10000;
	while (!(atomic_load(&done_p) && atomic_load(&done_q)) && now_ms() < end)
		sleep_ms(2);
	CHECK(atomic_load(&done_p) && atomic_load(&done_q),
	      "crossing destroys did not return in 10 s (P %d, Q %d)", atomic_load(&done_p),
	      atomic_load(&done_q));
	for (int i = 0; i < N; i++) {
		tracker_check(&tx[i]);
		tracker_check(&ty[i]);
		CHECK(tx[i].finals == 1 && tx[i].final_state[0] == DM_IO_CANCELLED &&
			      tx[i].final_error[0] == -ESHUTDOWN,
		      "X's region %d: state %d error %d", i, tx[i].final_state[0], tx[i].final_error[0]);
		CHECK(ty[i].finals == 1 && ty[i].final_state[0] == DM_IO_CANCELLED &&
			      ty[i].final_error[0] == -ESHUTDOWN,
		      "Y's region %d: state %d error %d", i, ty[i].final_state[0], ty[i].final_error[0]);
	}
	CHECK(atomic_load(&after) == 0, "%d notifications after a destroy returned",
	      atomic_load(&after));
	dm_io_client_destroy(p);
	dm_io_client_destroy(q);
	CHECK_OK(dm_io_bdev_set_faults(held, ""));
	dm_io_bdev_close(good);
	dm_io_bdev_close(held);
	return 0;
}
