/* engine_fallback: the chain io_uring -> Linux AIO -> thread pool, with
 * each link refused for real by a seccomp filter, as container runtimes
 * install (io_uring_setup, then io_setup, fail with EPERM):
 * - before any filter, the default engine is io_uring;
 * - io_uring refused: dm_io_client_create falls back to the AIO engine
 *   (reported by dm_io_client_stats), DMIO_ENGINE=uring fails loudly with
 *   -EPERM, DMIO_ENGINE=aio still runs AIO;
 * - AIO refused too: the default falls back to the thread-pool engine,
 *   DMIO_ENGINE=aio fails loudly with -EPERM;
 * - DMIO_ENGINE=bogus is -EINVAL.
 * On each engine reached by falling back, IO works with the same
 * semantics (a mirrored write, a read-back, a TIMEOUT then late OK).
 * The clients have threads of their own (DMIO_ISOLATE=1), so each chooses
 * its engine at create. */
#include "helpers.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Installs a seccomp filter that makes system call `nr` fail with EPERM
 * (filters stack: each call refuses one more). */
static void refuse(long nr)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { (unsigned short)(sizeof f / sizeof f[0]), f };
	CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs: %s", strerror(errno));
	CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0, "seccomp: %s", strerror(errno));
}

static void refuse_io_uring(void)
{
	refuse(__NR_io_uring_setup);
	CHECK(syscall(__NR_io_uring_setup, 8, NULL) == -1 && errno == EPERM, "filter not active");
}

static void refuse_aio(void)
{
	refuse(__NR_io_setup);
	unsigned long ctx = 0;
	CHECK(syscall(__NR_io_setup, 8, &ctx) == -1 && errno == EPERM, "AIO filter not active");
}

static unsigned engine_of(struct dm_io_client *cl)
{
	struct dm_io_stats st;
	CHECK_OK(dm_io_client_stats(cl, &st, sizeof st));
	return st.engine;
}

/* DMIO_ENGINE=`forced` (NULL: unset) must fail with -EPERM, saying `what`. */
static void forced_fails(const char *forced, const char *what)
{
	struct dm_io_client *cl = NULL;
	setenv("DMIO_ENGINE", forced, 1);
	int rc = dm_io_client_create(1, 1, 4096, &cl);
	CHECK(rc == -EPERM && cl == NULL, "DMIO_ENGINE=%s refused returned %d", forced, rc);
	CHECK(strstr(dm_io_last_error(), what) != NULL, "message: %s", dm_io_last_error());
}

/* A client created with DMIO_ENGINE=`forced` (NULL: unset) runs `want`. */
static struct dm_io_client *client_on(const char *forced, unsigned want)
{
	struct dm_io_client *cl = NULL;
	if (forced)
		setenv("DMIO_ENGINE", forced, 1);
	else
		unsetenv("DMIO_ENGINE");
	CHECK_OK(dm_io_client_create(2, 2, 64 * 1024, &cl));
	CHECK(engine_of(cl) == want, "DMIO_ENGINE=%s: engine %u, expected %u", forced ? forced : "(unset)",
	      engine_of(cl), want);
	return cl;
}

/* IO on `cl` with the same semantics on every engine: a mirrored write
 * with one slow leg (TIMEOUT, then a late OK), the content of both legs,
 * and a SYNC read-back. */
static void check_io(struct dm_io_client *cl, unsigned seed)
{
	enum { BYTES = 64 * 1024 };
	static unsigned char data[BYTES], back[BYTES];
	char na[16], nb[16];
	snprintf(na, sizeof na, "a%u", seed);
	snprintf(nb, sizeof nb, "b%u", seed);
	const char *pa = make_file(na, 1 << 20), *pb = make_file(nb, 1 << 20);
	struct block_device *a, *b;
	CHECK_OK(dm_io_bdev_open(pa, 0, &a));
	CHECK_OK(dm_io_bdev_open_faulty(pb, "delay write=1000ms", &b));
	fill_pattern(data, BYTES, seed);
	struct dm_io_region r[2] = { { a, 16, BYTES / 512 }, { b, 16, BYTES / 512 } };
	struct tracker t;
	tracker_init(&t, 2);
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	/* Long enough for the fast leg under valgrind on a loaded machine. */
	c.timeout = 300;
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
	dm_io_bdev_close(a);
	dm_io_bdev_close(b);
}

int main(void)
{
	struct dm_io_client *cl;
	/* Shared engine threads are created once per process, with the engine
	 * the kernel allowed then: a filter installed later does not change
	 * them. A client with threads of its own chooses at its create, which
	 * is what this test follows through the chain. */
	setenv("DMIO_ISOLATE", "1", 1);
	/* The thread-engine runs of the suite (including the one under
	 * valgrind, which cannot run the io_uring reactor) set
	 * DMIO_ENGINE=threads: the io_uring default is checked by the others. */
	const char *forced = getenv("DMIO_ENGINE");
	if (!forced || strcmp(forced, "threads") != 0) {
		cl = client_on(NULL, DM_IO_ENGINE_URING);
		dm_io_client_destroy(cl);
	}

	refuse_io_uring();

	forced_fails("uring", "io_uring");
	setenv("DMIO_ENGINE", "bogus", 1);
	CHECK(dm_io_client_create(1, 1, 4096, &cl) == -EINVAL, "DMIO_ENGINE=bogus accepted");

	cl = client_on("aio", DM_IO_ENGINE_AIO);
	dm_io_client_destroy(cl);
	cl = client_on(NULL, DM_IO_ENGINE_AIO);
	check_io(cl, 9);
	dm_io_client_destroy(cl);

	refuse_aio();

	forced_fails("aio", "io_setup");
	forced_fails("uring", "io_uring");
	cl = client_on("threads", DM_IO_ENGINE_THREADS);
	dm_io_client_destroy(cl);
	cl = client_on(NULL, DM_IO_ENGINE_THREADS);
	check_io(cl, 10);
	dm_io_client_destroy(cl);
	return 0;
}
