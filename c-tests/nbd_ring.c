/* NBD connections driven by the io_uring engine's rings:
 *
 * 1. No thread per connection: 8 NBD devices with connections=2 (16
 *    sockets), IO running on all of them (submitted from this thread and
 *    resubmitted from notify), and the process has exactly the threads it
 *    had before the devices were opened (counted in /proc/self/task). With
 *    the thread-pool engine each connection has an IO thread: there the
 *    count may grow, by at most one per connection (and so it may with
 *    DMIO_NBD_DRIVER=thread, which keeps IO threads on io_uring too).
 * 2. kill -9 of the server while 64 reads are in flight on a 2-connection
 *    device: every read ends ERROR -ECONNRESET within 2 s, IO while the
 *    server is down ends -ENOTCONN at once, and after a restart on the same
 *    socket IO works again on the same device; the reconnecting threads
 *    are gone again afterwards.
 * 3. A notify callback that calls dm_io with DM_IO_SYNC on an NBD device
 *    whose connection that very completion thread drives: the callback's
 *    wait turns the thread's ring, so the reply arrives (no deadlock). */
#include "helpers.h"
#include "nbdserver.h"
#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

enum { DEVS = 8, CONNS = 2, BYTES = 4096, S = BYTES / 512, INFLIGHT = 64 };

static int tasks(void)
{
	DIR *d = opendir("/proc/self/task");
	CHECK(d != NULL, "cannot read /proc/self/task");
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static unsigned engine_of(struct dm_io_client *cl)
{
	struct dm_io_stats st;
	CHECK_OK(dm_io_client_stats(cl, &st, sizeof st));
	return st.engine;
}

/* A reader that resubmits from notify until told to stop. */
struct loop {
	struct dm_io_client *cl;
	struct block_device *dev;
	unsigned char buf[BYTES];
	atomic_int stop, done, errors;
	atomic_long ios;
};

static void start_read(struct loop *l);

static void loop_notify(struct dm_io_region_state *st, void *ctx)
{
	struct loop *l = ctx;
	if (st->state == DM_IO_ERROR || st->state == DM_IO_TIMEOUT)
		atomic_fetch_add(&l->errors, 1);
	if (st->state == DM_IO_TIMEOUT)
		return; /* the late final notification follows */
	atomic_fetch_add(&l->ios, 1);
	if (atomic_load(&l->stop)) {
		atomic_store(&l->done, 1);
		return;
	}
	start_read(l);
}

static void start_read(struct loop *l)
{
	struct dm_io_region r = { l->dev, (uint64_t)(atomic_load(&l->ios) % 64) * S, S };
	struct dm_io_control c = make_ctrl(l->cl, DM_IO_READ, vm_mem(l->buf, 0), loop_notify, l);
	c.timeout = 10000;
	if (dm_io(&c, 1, &r, NULL) != 0) {
		atomic_fetch_add(&l->errors, 1);
		atomic_store(&l->done, 1);
	}
}

static void no_thread_per_connection(void)
{
	const char *args[] = { "memory", "16M", NULL };
	struct nbdserver *srv = nbdserver_start(args);
	struct dm_io_client *cl = make_client(DEVS, 4 * DEVS, 64 * 1024);
	/* DMIO_NBD_DRIVER=thread: IO threads on io_uring too. */
	const char *drv = getenv("DMIO_NBD_DRIVER");
	int uring = engine_of(cl) == DM_IO_ENGINE_URING && !(drv && strcmp(drv, "thread") == 0);
	/* The client's threads exist once it has done IO. */
	struct block_device *warm = make_dev("warm", 1 << 20);
	static unsigned char b[BYTES];
	CHECK_OK(sync_io(cl, DM_IO_READ, warm, 0, S, b, 0));
	int before = tasks();

	char uri[400];
	snprintf(uri, sizeof uri, "%s&connections=%d", nbdserver_uri(srv), CONNS);
	struct block_device *devs[DEVS];
	static struct loop loops[DEVS][2];
	for (int i = 0; i < DEVS; i++) {
		CHECK_OK(dm_io_bdev_open(uri, 0, &devs[i]));
		/* Two readers per device: both connections get IO. */
		for (int k = 0; k < 2; k++) {
			struct loop *l = &loops[i][k];
			l->cl = cl;
			l->dev = devs[i];
			start_read(l);
		}
	}
	sleep_ms(300);
	/* And sync IO from this thread (through the reactor) meanwhile. */
	for (int i = 0; i < DEVS; i++)
		CHECK_OK(sync_io(cl, DM_IO_READ, devs[i], 0, S, b, 0));
	int during = tasks();
	long ios = 0;
	for (int i = 0; i < DEVS; i++)
		for (int k = 0; k < 2; k++) {
			atomic_store(&loops[i][k].stop, 1);
		}
	for (int i = 0; i < DEVS; i++)
		for (int k = 0; k < 2; k++) {
			struct loop *l = &loops[i][k];
			for (int w = 0; w < 500 && !atomic_load(&l->done); w++)
				sleep_ms(10);
			CHECK(atomic_load(&l->done), "device %d reader %d did not stop", i, k);
			CHECK(atomic_load(&l->errors) == 0, "device %d reader %d: %d errors", i, k,
			      atomic_load(&l->errors));
			ios += atomic_load(&l->ios);
		}
	printf("%s engine: %d threads before opening %d NBD devices x %d connections, %d while "
	       "IO ran on all of them (%ld reads)\n",
	       uring ? "io_uring" : "thread-pool", before, DEVS, CONNS, during, ios);
	if (uring)
		CHECK(during == before, "io_uring: %d threads with NBD IO running, %d before", during,
		      before);
	else
		CHECK(during <= before + DEVS * CONNS, "threads: %d, %d before", during, before);
	for (int i = 0; i < DEVS; i++)
		dm_io_bdev_close(devs[i]);
	dm_io_client_destroy(cl);
	dm_io_bdev_close(warm);
	nbdserver_stop(srv);
}

static void kill_with_reads_in_flight(void)
{
	/* Reads are held 2 s by the server: all of them are in flight. */
	const char *args[] = { "--filter=delay", "memory", "16M", "rdelay=2", NULL };
	struct nbdserver *srv = nbdserver_start(args);
	char uri[400];
	snprintf(uri, sizeof uri, "%s&connections=%d&connect-timeout=500", nbdserver_uri(srv),
		 CONNS);
	struct block_device *nbd;
	CHECK_OK(dm_io_bdev_open(uri, 0, &nbd));
	struct dm_io_client *cl = make_client(2, INFLIGHT, 64 * 1024);
	static unsigned char data[BYTES], back[INFLIGHT][BYTES];
	fill_pattern(data, BYTES, 3);
	CHECK_OK(sync_io(cl, DM_IO_WRITE, nbd, 0, S, data, 0));
	int before = tasks();

	static struct tracker t[INFLIGHT];
	for (int i = 0; i < INFLIGHT; i++) {
		tracker_init(&t[i], 1);
		struct dm_io_region r = { nbd, (uint64_t)i * S, S };
		struct dm_io_control c =
			make_ctrl(cl, DM_IO_READ, vm_mem(back[i], 0), tracker_notify, &t[i]);
		CHECK_OK(dm_io(&c, 1, &r, NULL));
	}
	sleep_ms(200);
	double t0 = now_ms();
	nbdserver_stop(srv);
	for (int i = 0; i < INFLIGHT; i++) {
		int left = 2000 - (int)(now_ms() - t0);
		CHECK(tracker_wait(&t[i], left > 0 ? left : 1), "read %d not final 2 s after the kill",
		      i);
		tracker_check(&t[i]);
		CHECK(t[i].final_state[0] == DM_IO_ERROR && t[i].final_error[0] == -ECONNRESET,
		      "read %d after the kill: state %d error %d", i, t[i].final_state[0],
		      t[i].final_error[0]);
	}
	printf("%d in-flight reads ended -ECONNRESET within %.0f ms of the kill\n", INFLIGHT,
	       now_ms() - t0);
	t0 = now_ms();
	int rc = sync_io(cl, DM_IO_READ, nbd, 0, S, back[0], 0);
	CHECK(rc == -ENOTCONN, "read while down: %d", rc);
	CHECK(now_ms() - t0 < 1000, "read while down took %.0f ms", now_ms() - t0);

	nbdserver_restart(srv);
	t0 = now_ms();
	int ok = 0;
	for (int i = 0; i < 100 && !ok; i++) {
		ok = 1;
		/* Both connections are back (ops alternate between them). */
		for (int k = 0; k < CONNS; k++)
			ok &= sync_io(cl, DM_IO_WRITE, nbd, (uint64_t)k * S, S, data, 0) == 0;
		if (!ok)
			sleep_ms(100);
	}
	CHECK(ok, "IO did not work again within 10 s of the restart");
	printf("IO works again %.0f ms after the restart\n", now_ms() - t0);
	CHECK_OK(sync_io(cl, DM_IO_READ, nbd, S, S, back[0], 0));
	CHECK(memcmp(back[0], data, BYTES) == 0, "data read back differs");
	/* The reconnecting threads are gone. */
	int after = tasks();
	for (int i = 0; i < 100 && after > before; i++) {
		sleep_ms(20);
		after = tasks();
	}
	if (engine_of(cl) == DM_IO_ENGINE_URING)
		CHECK(after == before, "threads: %d after the reconnect, %d before", after, before);
	dm_io_client_destroy(cl);
	dm_io_bdev_close(nbd);
	nbdserver_stop(srv);
}

struct sync_from_notify {
	struct dm_io_client *cl;
	struct block_device *nbd;
	unsigned char buf[BYTES];
	atomic_int rc, done;
};

static void sync_notify(struct dm_io_region_state *st, void *ctx)
{
	struct sync_from_notify *s = ctx;
	if (st->state == DM_IO_TIMEOUT)
		return;
	atomic_store(&s->rc, sync_io(s->cl, DM_IO_READ, s->nbd, 0, S, s->buf, 0));
	atomic_store(&s->done, 1);
}

static void sync_io_from_notify(void)
{
	const char *args[] = { "memory", "16M", NULL };
	struct nbdserver *srv = nbdserver_start(args);
	static struct sync_from_notify s;
	s.cl = make_client(2, 8, 64 * 1024);
	CHECK_OK(dm_io_bdev_open(nbdserver_uri(srv), 0, &s.nbd));
	static unsigned char data[BYTES];
	fill_pattern(data, BYTES, 5);
	/* Attaches the connection to the ring of the client's completion
	 * thread (the reactor's home), then the callback runs on that thread. */
	CHECK_OK(sync_io(s.cl, DM_IO_WRITE, s.nbd, 0, S, data, 0));
	for (int round = 0; round < 20; round++) {
		atomic_store(&s.done, 0);
		atomic_store(&s.rc, 1);
		memset(s.buf, 0, BYTES);
		struct dm_io_region r = { s.nbd, 0, S };
		struct dm_io_control c = make_ctrl(s.cl, DM_IO_READ, vm_mem(s.buf, 0), sync_notify, &s);
		CHECK_OK(dm_io(&c, 1, &r, NULL));
		for (int w = 0; w < 500 && !atomic_load(&s.done); w++)
			sleep_ms(10);
		CHECK(atomic_load(&s.done), "round %d: the SYNC read from notify did not return in 5 s",
		      round);
		CHECK(atomic_load(&s.rc) == 0, "round %d: SYNC read from notify: %d", round,
		      atomic_load(&s.rc));
		CHECK(memcmp(s.buf, data, BYTES) == 0, "round %d: data differs", round);
	}
	printf("SYNC reads from notify on an NBD device of the same ring: 20 rounds OK\n");
	dm_io_client_destroy(s.cl);
	dm_io_bdev_close(s.nbd);
	nbdserver_stop(srv);
}

int main(void)
{
	no_thread_per_connection();
	kill_with_reads_in_flight();
	sync_io_from_notify();
	return 0;
}
