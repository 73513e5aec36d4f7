/* A notify callback of one client destroys another client that has IO in
 * flight (held by a fault rule). The destroy must return promptly with the
 * other client's regions ended CANCELLED/-ESHUTDOWN, although the calling
 * thread is in the middle of a batch of notifications (whose wake-ups of
 * other threads are deferred to the batch's end). */
#include "helpers.h"
#include <errno.h>
#include <string.h>

enum { N = 8, BLK = 4096 };

static struct dm_io_client *a, *b;
static struct tracker tb[N];
static double destroy_ms = -1;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void a_notify(struct dm_io_region_state *st, void *ctx)
{
	(void)ctx;
	CHECK(st->state == DM_IO_OK, "client A's read state %d", st->state);
	double t0 = now_ms();
	dm_io_client_destroy(b);
	pthread_mutex_lock(&lock);
	destroy_ms = now_ms() - t0;
	pthread_mutex_unlock(&lock);
}

int main(void)
{
	static unsigned char abuf[BLK], bbuf[N][BLK];
	struct block_device *good = make_dev("other-good.img", 1 << 20);
	struct block_device *held = make_faulty_dev("other-held.img", 1 << 20, "hang", NULL);
	check_block_size(good);
	CHECK_OK(dm_io_client_create(1, 2, BLK, &a));
	CHECK_OK(dm_io_client_create(1, N, BLK, &b));

	for (int i = 0; i < N; i++) {
		tracker_init(&tb[i], 1);
		struct dm_io_region r = { held, (uint64_t)i * (BLK / 512), BLK / 512 };
		struct dm_io_control c = make_ctrl(b, DM_IO_READ, vm_mem(bbuf[i], 0), tracker_notify, &tb[i]);
		CHECK_OK(dm_io(&c, 1, &r, NULL));
	}
	struct dm_io_region r = { good, 0, BLK / 512 };
	struct dm_io_control c = make_ctrl(a, DM_IO_READ, vm_mem(abuf, 0), a_notify, NULL);
	CHECK_OK(dm_io(&c, 1, &r, NULL));

	double end = now_ms() + 10000;
	for (;;) {
		pthread_mutex_lock(&lock);
		double ms = destroy_ms;
		pthread_mutex_unlock(&lock);
		if (ms >= 0)
			break;
		CHECK(now_ms() < end, "destroy of client B from A's notify did not return in 10 s");
		sleep_ms(5);
	}
	CHECK(destroy_ms < 5000, "destroy took %.0f ms", destroy_ms);
	for (int i = 0; i < N; i++) {
		tracker_check(&tb[i]);
		CHECK(tb[i].finals == 1 && tb[i].final_state[0] == DM_IO_CANCELLED &&
			      tb[i].final_error[0] == -ESHUTDOWN,
		      "B's region %d: finals %u state %d error %d", i, tb[i].finals, tb[i].final_state[0],
		      tb[i].final_error[0]);
	}
	fprintf(stderr, "destroy of B from A's notify returned in %.1f ms, %d regions CANCELLED\n",
		destroy_ms, N);
	dm_io_client_destroy(a);
	dm_io_bdev_close(good);
	dm_io_bdev_close(held);
	return 0;
}
