/* engine_fallback: where io_uring is refused for real (a seccomp filter,
 * as container runtimes install, makes io_uring_setup fail with EPERM),
 * dm_io_client_create falls back to the thread-pool engine (reported by
 * dm_io_client_stats) and IO works with the same semantics (a mirrored
 * write, a read-back, a TIMEOUT then late OK); DMIO_ENGINE=uring fails
 * loudly with -EPERM instead of falling back; DMIO_ENGINE=bogus is -EINVAL.
 * Before the filter, the default engine is io_uring. */
#include "helpers.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void refuse_io_uring(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { (unsigned short)(sizeof f / sizeof f[0]), f };
	CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs: %s", strerror(errno));
	CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0, "seccomp: %s", strerror(errno));
	CHECK(syscall(__NR_io_uring_setup, 8, NULL) == -1 && errno == EPERM, "filter not active");
}

static unsigned engine_of(struct dm_io_client *cl)
{
	struct dm_io_stats st;
	CHECK_OK(dm_io_client_stats(cl, &st, sizeof st));
	return st.engine;
}

int main(void)
{
	struct dm_io_client *cl;
	/* The thread-engine runs of the suite (including the one under
	 * valgrind, which cannot run the io_uring reactor) set
	 * DMIO_ENGINE=threads: the io_uring default is checked by the others. */
	const char *forced = getenv("DMIO_ENGINE");
	if (!forced || strcmp(forced, "threads") != 0) {
		unsetenv("DMIO_ENGINE");
		CHECK_OK(dm_io_client_create(1, 1, 4096, &cl));
		CHECK(engine_of(cl) == DM_IO_ENGINE_URING, "default engine is %u, expected io_uring",
		      engine_of(cl));
		dm_io_client_destroy(cl);
	}

	refuse_io_uring();

	setenv("DMIO_ENGINE", "uring", 1);
	cl = NULL;
	int rc = dm_io_client_create(1, 1, 4096, &cl);
	CHECK(rc == -EPERM && cl == NULL, "DMIO_ENGINE=uring under seccomp returned %d", rc);
	CHECK(strstr(dm_io_last_error(), "io_uring") != NULL, "message: %s", dm_io_last_error());
	setenv("DMIO_ENGINE", "bogus", 1);
	CHECK(dm_io_client_create(1, 1, 4096, &cl) == -EINVAL, "DMIO_ENGINE=bogus accepted");

	unsetenv("DMIO_ENGINE");
	CHECK_OK(dm_io_client_create(2, 2, 64 * 1024, &cl));
	CHECK(engine_of(cl) == DM_IO_ENGINE_THREADS, "fallback engine is %u", engine_of(cl));

	enum { BYTES = 64 * 1024 };
	static unsigned char data[BYTES], back[BYTES];
	const char *pa = make_file("a", 1 << 20), *pb = make_file("b", 1 << 20);
	struct block_device *a, *b;
	CHECK_OK(dm_io_bdev_open(pa, 0, &a));
	CHECK_OK(dm_io_bdev_open_faulty(pb, "delay write=300ms", &b));
	fill_pattern(data, BYTES, 9);
	struct dm_io_region r[2] = { { a, 16, BYTES / 512 }, { b, 16, BYTES / 512 } };
	struct tracker t;
	tracker_init(&t, 2);
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	c.timeout = 50;
	CHECK_OK(dm_io(&c, 2, r, NULL));
	CHECK(tracker_wait(&t, 5000), "write did not finish");
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_OK && t.timeouts[0] == 0, "fast leg %d", t.final_state[0]);
	CHECK(t.final_state[1] == DM_IO_OK && t.timeouts[1] == 1, "slow leg %d, %d timeouts", t.final_state[1],
	      t.timeouts[1]);
	for (int i = 0; i < 2; i++) {
		memset(back, 0, BYTES);
		read_file(i ? pb : pa, 16 * 512, back, BYTES);
		CHECK(memcmp(back, data, BYTES) == 0, "leg %d content", i);
	}
	struct dm_io_control rd = {
		.memory = { .type = DM_IO_VM, .ptr.vma = back },
		.rw = DM_IO_READ | DM_IO_SYNC,
		.client = cl,
	};
	memset(back, 0, BYTES);
	CHECK_OK(dm_io(&rd, 1, &r[0], NULL));
	CHECK(memcmp(back, data, BYTES) == 0, "read-back differs");
	dm_io_client_destroy(cl);
	dm_io_bdev_close(a);
	dm_io_bdev_close(b);
	return 0;
}
