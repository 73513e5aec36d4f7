/* shared_after_fork: the shared engine threads are not in a forked child
 * (fork copies only the calling thread). A client created in the child gets
 * shards of the child's own and works; the parent's clients keep working.
 * The forking thread made a SYNC call before the fork (so it has a ring of
 * its own for SYNC IO): in the child, its SYNC calls make a new ring. */
#include "helpers.h"

#include <sys/wait.h>
#include <unistd.h>

enum { BLK = 4096 };

int main(void)
{
	static unsigned char buf[BLK];
	struct block_device *dev = make_dev("fork.img", 1 << 20);
	check_block_size(dev);
	struct dm_io_client *a;
	CHECK_OK(dm_io_client_create(1, 2, BLK, &a));
	CHECK_OK(async_io_one(a, DM_IO_READ, vm_mem(buf, 0), dev, 0, BLK / 512));
	CHECK_OK(sync_io(a, DM_IO_READ, dev, 32, BLK / 512, buf, 0));

	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0) {
		struct dm_io_client *b;
		CHECK_OK(dm_io_client_create(1, 2, BLK, &b));
		CHECK_OK(async_io_one(b, DM_IO_READ, vm_mem(buf, 0), dev, 8, BLK / 512));
		CHECK_OK(sync_io(b, DM_IO_READ, dev, 16, BLK / 512, buf, 0));
		CHECK_OK(sync_io(b, DM_IO_READ, dev, 40, BLK / 512, buf, 0));
		dm_io_client_destroy(b);
		/* Not exit(): the parent's threads are not here, so what only
		 * their stacks pointed to would look leaked to a leak checker
		 * (valgrind checks the child at its exit). exec ends it cleanly. */
		fflush(NULL);
		execl("/bin/true", "true", (char *)NULL);
		_exit(0);
	}
	int st = 0;
	CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child failed (status %d)", st);
	CHECK_OK(async_io_one(a, DM_IO_READ, vm_mem(buf, 0), dev, 24, BLK / 512));
	CHECK_OK(sync_io(a, DM_IO_READ, dev, 48, BLK / 512, buf, 0));
	dm_io_client_destroy(a);
	return 0;
}
