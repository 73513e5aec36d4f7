/* Private memory is registered with the kernel (IORING_REGISTER_BUFFERS),
 * so reads and writes use READ_FIXED/WRITE_FIXED without pinning pages
 * per IO: a client's rings (the reactor's and the completion thread's) show
 * one registered buffer in /proc/self/fdinfo. A pool above 16 MiB is not
 * registered (pinning it all at once would defeat MAP_NORESERVE). IO is
 * right either way: data written and read back through both clients, from
 * the main thread and from notify. With the thread-pool engine there are
 * no rings and nothing is registered. */
#include "helpers.h"
#include <dirent.h>
#include <string.h>
#include <unistd.h>

enum { BLK = 4096 };

/* Counts this process's io_uring instances by whether buffer 0 (the
 * private memory) is registered: rings[0] without, rings[1] with. A ring
 * shows its table size as UserBufs, then one line per entry ("<none>"
 * for an empty one: the rest of the table is for library pages). */
static void count_rings(int rings[2])
{
	char path[300], line[256];
	rings[0] = rings[1] = 0;
	DIR *d = opendir("/proc/self/fdinfo");
	CHECK(d != NULL, "cannot open /proc/self/fdinfo");
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fdinfo/%s", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		while (fgets(line, sizeof(line), f)) {
			unsigned n;
			if (sscanf(line, "UserBufs: %u", &n) == 1) {
				int reg = n > 0 && fgets(line, sizeof(line), f) &&
					  !strstr(line, "<none>");
				rings[reg]++;
				break;
			}
		}
		fclose(f);
	}
	closedir(d);
}

static struct tracker tr;

/* A write then a read-back of one block through cl (async read). */
static void round_trip(struct dm_io_client *cl, struct block_device *dev, unsigned seed)
{
	static unsigned char w[BLK], r[BLK];
	fill_pattern(w, BLK, seed);
	CHECK_OK(sync_io(cl, DM_IO_WRITE, dev, 8, BLK / 512, w, 0));
	memset(r, 0, BLK);
	CHECK_OK(async_io_one(cl, DM_IO_READ, vm_mem(r, 0), dev, 8, BLK / 512));
	CHECK(check_pattern(r, BLK, seed), "read-back differs (seed %u)", seed);
}

/* Notify of a first read: reads again from here (the completion thread's
 * ring) into the same buffer. */
static unsigned char nbuf[BLK];
static struct block_device *ndev;
static void again_notify(struct dm_io_region_state *st, void *ctx)
{
	struct dm_io_client *cl = ctx;
	CHECK(st->state == DM_IO_OK, "first read state %d", st->state);
	memset(nbuf, 0, BLK);
	struct dm_io_region reg = { ndev, 8, BLK / 512 };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(nbuf, 0), tracker_notify, &tr);
	CHECK_OK(dm_io(&c, 1, &reg, NULL));
}

int main(void)
{
	int before[2], with_small[2], with_big[2];
	struct dm_io_client *small, *big;
	struct dm_io_stats st;
	struct block_device *dev = make_dev("regmem.img", 1 << 20);
	check_block_size(dev);

	/* Two shards: each client starts one of its own, whose two rings
	 * show that client's memory alone. */
	setenv("DMIO_THREADS", "2", 1);
	count_rings(before);
	CHECK_OK(dm_io_client_create(1, 4, 64 * 1024, &small)); /* 256 KiB */
	usleep(100 * 1000); /* the reactor registers asynchronously */
	count_rings(with_small);
	CHECK_OK(dm_io_client_create(1, 2, 40 << 20, &big)); /* 80 MiB */
	usleep(100 * 1000);
	count_rings(with_big);
	CHECK_OK(dm_io_client_stats(small, &st, sizeof(st)));

	int reg_small = with_small[1] - before[1], plain_small = with_small[0] - before[0];
	int reg_big = with_big[1] - with_small[1], plain_big = with_big[0] - with_small[0];
	fprintf(stderr, "engine %u: small pool: %d ring(s) registered, %d not; 80 MiB pool: %d, %d\n",
		st.engine, reg_small, plain_small, reg_big, plain_big);
	if (st.engine == DM_IO_ENGINE_URING) {
		CHECK(reg_small == 2 && plain_small == 0,
		      "small pool: expected 2 rings with registered memory, got %d (+%d without)",
		      reg_small, plain_small);
		CHECK(reg_big == 0 && plain_big == 2,
		      "80 MiB pool: expected 2 rings without registered memory, got %d (+%d with)",
		      plain_big, reg_big);
	} else {
		fprintf(stderr, "thread-pool engine: no rings, so nothing is registered\n");
		CHECK(reg_small + plain_small + reg_big + plain_big == 0, "rings with the thread engine");
	}

	round_trip(small, dev, 1);
	round_trip(big, dev, 2);
	round_trip(small, dev, 3);

	/* From notify: the completion thread's ring, registered memory too. */
	static unsigned char first[BLK];
	ndev = dev;
	tracker_init(&tr, 1);
	struct dm_io_region reg = { dev, 8, BLK / 512 };
	struct dm_io_control c = make_ctrl(small, DM_IO_READ, vm_mem(first, 0), again_notify, small);
	CHECK_OK(dm_io(&c, 1, &reg, NULL));
	CHECK(tracker_wait(&tr, 10000), "read from notify did not finish");
	tracker_check(&tr);
	CHECK(tr.final_state[0] == DM_IO_OK, "read from notify: state %d", tr.final_state[0]);
	CHECK(check_pattern(nbuf, BLK, 3), "read from notify: wrong data");

	dm_io_client_destroy(small);
	dm_io_client_destroy(big);
	dm_io_bdev_close(dev);
	return 0;
}
