/* shared_destroy_other_inline: with one shard (DMIO_THREADS=1) clients A
 * and B share one completion thread. A notify callback of A destroys B,
 * whose reads are held by a fault rule: the destroy cannot wait for that
 * thread (it is the caller), so it delivers B's notifications right there.
 * When it returns, every region of B has ended CANCELLED -ESHUTDOWN and
 * nothing of B comes after; A's other notifications still come, one at a
 * time, on the same thread. */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { N = 8, BLK = 4096 };

static struct dm_io_client *a, *b;
static struct tracker tb[N];
static atomic_int destroyed, a_calls, a_finals_at_destroy = -1, b_after;
static pthread_t a_thread;
static atomic_int in_a;

static void b_notify(struct dm_io_region_state *st, void *ctx)
{
	if (atomic_load(&destroyed))
		atomic_fetch_add(&b_after, 1);
	tracker_notify(st, ctx);
}

static void a_notify(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	CHECK(st->state == DM_IO_OK, "client A's read state %d", st->state);
	CHECK(atomic_exchange(&in_a, 1) == 0, "A's notify calls overlap");
	if (atomic_fetch_add(&a_calls, 1) == 0) {
		a_thread = pthread_self();
		dm_io_client_destroy(b);
		unsigned finals = 0;
		for (int i = 0; i < N; i++)
			finals += tracker_finals(&tb[i]);
		atomic_store(&a_finals_at_destroy, (int)finals);
		atomic_store(&destroyed, 1);
	} else {
		CHECK(pthread_equal(a_thread, pthread_self()), "A's notify on two threads");
	}
	atomic_store(&in_a, 0);
}

int main(void)
{
	setenv("DMIO_THREADS", "1", 1);
	static unsigned char abuf[4][BLK], bbuf[N][BLK];
	struct block_device *good = make_dev("inline-good.img", 1 << 20);
	struct block_device *held = make_faulty_dev("inline-held.img", 1 << 20, "hang", NULL);
	check_block_size(good);
	CHECK_OK(dm_io_client_create(1, 4, BLK, &a));
	CHECK_OK(dm_io_client_create(1, N, BLK, &b));

	for (int i = 0; i < N; i++) {
		tracker_init(&tb[i], 1);
		struct dm_io_region r = { held, (uint64_t)i * (BLK / 512), BLK / 512 };
		struct dm_io_control c = make_ctrl(b, DM_IO_READ, vm_mem(bbuf[i], 0), b_notify, &tb[i]);
		CHECK_OK(dm_io(&c, 1, &r, NULL));
	}
	for (int i = 0; i < 4; i++) {
		struct dm_io_region r = { good, (uint64_t)i * (BLK / 512), BLK / 512 };
		struct dm_io_control c = make_ctrl(a, DM_IO_READ, vm_mem(abuf[i], 0), a_notify, NULL);
		CHECK_OK(dm_io(&c, 1, &r, NULL));
	}
	double end = now_ms() + 10000;
	while ((atomic_load(&a_calls) < 4 || !atomic_load(&destroyed)) && now_ms() < end)
		sleep_ms(2);
	CHECK(atomic_load(&destroyed), "destroy of B from A's notify did not return in 10 s");
	CHECK(atomic_load(&a_calls) == 4, "A got %d of 4 notifications", atomic_load(&a_calls));
	CHECK(atomic_load(&a_finals_at_destroy) == N, "%d of B's %d regions final when destroy returned",
	      atomic_load(&a_finals_at_destroy), N);
	for (int i = 0; i < N; i++) {
		tracker_check(&tb[i]);
		CHECK(tb[i].final_state[0] == DM_IO_CANCELLED && tb[i].final_error[0] == -ESHUTDOWN,
		      "B's region %d: state %d error %d", i, tb[i].final_state[0], tb[i].final_error[0]);
	}
	CHECK(atomic_load(&b_after) == 0, "%d notifications of B after its destroy",
	      atomic_load(&b_after));
	dm_io_client_destroy(a);
	CHECK_OK(dm_io_bdev_set_faults(held, ""));
	dm_io_bdev_close(good);
	dm_io_bdev_close(held);
	return 0;
}
