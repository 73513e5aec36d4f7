/* A write to three regions puts the same bytes on every device; each
 * region is notified once with OK, from a thread other than the caller's. */
#include "helpers.h"
#include <string.h>

int main(void)
{
	enum { N = 3, BYTES = 256 * 1024 };
	struct dm_io_client *cl;
	struct block_device *dev[N];
	struct dm_io_region reg[N];
	const char *path[N];
	char name[16];
	static char data[BYTES], back[BYTES];

	CHECK_OK(dm_io_client_create(N, 2, 64 * 1024, &cl));
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "leg%d", i);
		path[i] = make_file(name, 4 << 20);
		CHECK_OK(dm_io_bdev_open(path[i], 0, &dev[i]));
		reg[i] = (struct dm_io_region){ dev[i], 8 * (uint64_t)(i + 1), BYTES / 512 };
	}
	fill_pattern(data, BYTES, 42);
	struct tracker t;
	tracker_init(&t, N);
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c, N, reg, NULL));
	CHECK(tracker_wait(&t, 10000), "regions did not finish");
	tracker_check(&t);
	for (int i = 0; i < N; i++) {
		CHECK(t.final_state[i] == DM_IO_OK, "region %d state %d err %d", i, t.final_state[i], t.final_error[i]);
		CHECK(!pthread_equal(t.thread[i], pthread_self()), "notify ran in the caller's thread");
		memset(back, 0, BYTES);
		read_file(path[i], reg[i].sector * 512, back, BYTES);
		CHECK(memcmp(back, data, BYTES) == 0, "device %d content differs", i);
	}
	dm_io_client_destroy(cl);
	for (int i = 0; i < N; i++)
		dm_io_bdev_close(dev[i]);
	return 0;
}
