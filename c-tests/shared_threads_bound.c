/* shared_threads_bound: 1,000 clients in one process share the engine: the
 * process has at most 2 + 2 x CPUs threads (read from /proc/self/task),
 * every client still does IO of its own, and once they are destroyed the
 * count goes back (the thread pool's workers end when idle). A client created with DMIO_ISOLATE=1 gets
 * threads of its own (the count grows) and works the same. */
#include "helpers.h"

#include <dirent.h>
#include <string.h>
#include <unistd.h>

enum { N = 1000, BLK = 4096 };

static int threads_now(void)
{
	DIR *d = opendir("/proc/self/task");
	CHECK(d != NULL, "cannot read /proc/self/task");
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static struct dm_io_client *cl[N];

int main(void)
{
	/* The default settings: one shard per two CPUs. */
	unsetenv("DMIO_THREADS");
	unsetenv("DMIO_ISOLATE");
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	CHECK(cpus > 0, "no CPU count");
	int limit = 2 + 2 * (int)cpus;
	struct block_device *dev = make_dev("bound.img", 1 << 20);
	check_block_size(dev);
	static unsigned char buf[BLK];

	int before = threads_now();
	for (int i = 0; i < N; i++)
		CHECK_OK(dm_io_client_create(1, 1, BLK, &cl[i]));
	int with = threads_now();
	CHECK(with <= limit, "%d threads with %d clients (%ld CPUs): more than %d", with, N, cpus,
	      limit);
	/* Each client works: one asynchronous and one SYNC read on a few. */
	for (int i = 0; i < N; i += 97) {
		CHECK_OK(async_io_one(cl[i], DM_IO_READ, vm_mem(buf, 0), dev, 0, BLK / 512));
		CHECK_OK(sync_io(cl[i], DM_IO_READ, dev, 8, BLK / 512, buf, 0));
	}
	for (int i = 0; i < N; i++)
		dm_io_client_destroy(cl[i]);
	/* The thread pool's workers end when idle for 5 s. */
	int after = threads_now();
	for (double end = now_ms() + 8000; after > with && now_ms() < end; after = threads_now())
		sleep_ms(50);
	CHECK(after <= with, "%d threads after destroy, %d with the clients", after, with);

	/* Isolation: threads of its own. */
	setenv("DMIO_ISOLATE", "1", 1);
	struct dm_io_client *own;
	CHECK_OK(dm_io_client_create(1, 1, BLK, &own));
	unsetenv("DMIO_ISOLATE");
	int isolated = threads_now();
	CHECK(isolated >= after + 2, "an isolated client added %d threads (from %d)", isolated - after,
	      after);
	CHECK_OK(async_io_one(own, DM_IO_READ, vm_mem(buf, 0), dev, 0, BLK / 512));
	dm_io_client_destroy(own);
	printf("threads: %d before, %d with %d clients (limit %d), %d after, %d with an isolated one\n",
	       before, with, N, limit, after, isolated);
	return 0;
}
