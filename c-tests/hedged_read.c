/* hedged_read: DM_IO_READ_ANY over two mirror legs.
 *  - with a hedge delay, a slow first leg is overtaken: the second leg's
 *    data arrives well before the first leg's delay, the second region
 *    ends OK and the first CANCELLED; late data of the first leg never
 *    lands in the caller's buffer; stats count one hedge;
 *  - with hedging off, an ERROR on the first leg starts the second at once;
 *  - both legs failing gives two ERRORs and a SYNC result of -EIO;
 *  - READ_ANY with different counts, or bigger than max_size, is -EINVAL. */
#include "helpers.h"

#include <errno.h>
#include <string.h>

int main(void)
{
	enum { BYTES = 8192 };
	static unsigned char a[BYTES], b[BYTES], buf[BYTES];
	struct dm_io_client *cl;
	struct block_device *slow, *fast;
	const char *pa = make_file("legA", 1 << 20), *pb = make_file("legB", 1 << 20);

	fill_pattern(a, BYTES, 1);
	fill_pattern(b, BYTES, 2);
	write_file(pa, 0, a, BYTES);
	write_file(pb, 0, b, BYTES);
	CHECK_OK(dm_io_client_create(2, 4, 64 * 1024, &cl));
	CHECK_OK(dm_io_bdev_open_faulty(pa, "delay read=1500ms", &slow));
	CHECK_OK(dm_io_bdev_open(pb, 0, &fast));
	CHECK_OK(dm_io_client_set_hedge(cl, 20));

	struct dm_io_region legs[2] = { { slow, 0, BYTES / 512 }, { fast, 0, BYTES / 512 } };
	struct tracker t;
	tracker_init(&t, 2);
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ | DM_IO_READ_ANY, vm_mem(buf, 0),
						   tracker_notify, &t);
	double t0 = now_ms();
	CHECK_OK(dm_io(&c, 2, legs, NULL));
	CHECK(tracker_wait(&t, 5000), "hedged read did not finish");
	double took = now_ms() - t0;
	tracker_check(&t);
	CHECK(t.final_state[1] == DM_IO_OK, "leg B state %d", t.final_state[1]);
	CHECK(t.final_state[0] == DM_IO_CANCELLED, "leg A state %d", t.final_state[0]);
	CHECK(took < 1200, "hedged read took %.0f ms, the slow leg's delay is 1500 ms", took);
	CHECK(memcmp(buf, b, BYTES) == 0, "data is not leg B's");
	sleep_ms(1700); /* the slow leg's read completes into private memory */
	CHECK(memcmp(buf, b, BYTES) == 0, "late data of the cancelled leg reached the buffer");
	struct dm_io_stats st;
	CHECK_OK(dm_io_client_stats(cl, &st, sizeof st));
	CHECK(st.hedges == 1, "stats: %lu hedges", (unsigned long)st.hedges);
	CHECK(st.private_bytes_in_use == 0, "private memory still in use");

	/* Hedging off: the second leg starts only on ERROR. */
	CHECK_OK(dm_io_client_set_hedge(cl, 0));
	CHECK_OK(dm_io_bdev_set_faults(slow, "error reads errno=EIO"));
	tracker_init(&t, 2);
	memset(buf, 0, BYTES);
	CHECK_OK(dm_io(&c, 2, legs, NULL));
	CHECK(tracker_wait(&t, 5000), "failover read did not finish");
	CHECK(t.final_state[0] == DM_IO_ERROR && t.final_error[0] == -EIO, "leg A %d/%d", t.final_state[0],
	      t.final_error[0]);
	CHECK(t.final_state[1] == DM_IO_OK, "leg B state %d", t.final_state[1]);
	CHECK(memcmp(buf, b, BYTES) == 0, "failover data is not leg B's");

	/* SYNC without notify: 0 when one leg delivered the data, although
	 * the other ended ERROR. */
	struct dm_io_control s0 = c;
	s0.rw = DM_IO_READ | DM_IO_READ_ANY | DM_IO_SYNC;
	s0.notify = NULL;
	memset(buf, 0, BYTES);
	CHECK(dm_io(&s0, 2, legs, NULL) == 0, "successful SYNC hedged read did not return 0");
	CHECK(memcmp(buf, b, BYTES) == 0, "SYNC failover data is not leg B's");

	/* Both legs fail: SYNC without notify returns the error. */
	CHECK_OK(dm_io_bdev_set_faults(fast, "error reads errno=EIO"));
	struct dm_io_control s = c;
	s.rw = DM_IO_READ | DM_IO_READ_ANY | DM_IO_SYNC;
	s.notify = NULL;
	int rc = dm_io(&s, 2, legs, NULL);
	CHECK(rc == -EIO, "both legs failing returned %d", rc);

	/* Invalid shapes. */
	struct dm_io_region odd[2] = { { slow, 0, 8 }, { fast, 0, 16 } };
	CHECK(dm_io(&s, 2, odd, NULL) == -EINVAL, "different counts accepted");
	struct dm_io_region big[2] = { { slow, 0, 256 }, { fast, 0, 256 } };
	CHECK(dm_io(&s, 2, big, NULL) == -EINVAL, "regions above max_size accepted");
	s.rw = DM_IO_WRITE | DM_IO_READ_ANY | DM_IO_SYNC;
	CHECK(dm_io(&s, 2, legs, NULL) == -EINVAL, "READ_ANY write accepted");

	dm_io_client_destroy(cl);
	dm_io_bdev_close(slow);
	dm_io_bdev_close(fast);
	return 0;
}
