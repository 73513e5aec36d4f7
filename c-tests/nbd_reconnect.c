/* An NBD server that dies and comes back: a read in flight when the
 * server is killed ends ERROR (-ECONNRESET) within a second or two; IO
 * while it is down ends ERROR -ENOTCONN at once (the other region of the
 * same request, on a local file, ends OK); when the server is back on the
 * same socket, IO works again on the same struct block_device without
 * reopening, within a few seconds. A server that stops answering
 * (SIGSTOP) with requests outstanding is dropped after silence=MS with
 * -ETIMEDOUT, and the device reconnects once it answers again. */
#include "helpers.h"
#include "nbdserver.h"
#include <errno.h>
#include <signal.h>
#include <string.h>

enum { BYTES = 16 * 1024, S = BYTES / 512 };
static unsigned char data[BYTES], back[BYTES];

static struct tracker t;

static int one(struct dm_io_client *cl, struct block_device *d, int rw, int timeout)
{
	tracker_init(&t, 1);
	struct dm_io_region r = { d, 0, S };
	struct dm_io_control c = make_ctrl(cl, rw, vm_mem(rw == DM_IO_READ ? back : data, 0),
					   tracker_notify, &t);
	c.timeout = timeout;
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	CHECK(tracker_wait(&t, 10000), "no final state within 10 s");
	tracker_check(&t);
	return t.final_state[0] == DM_IO_OK ? 0 : t.final_error[0];
}

int main(void)
{
	const char *args[] = { "--filter=delay", "memory", "16M", "rdelay=3", NULL };
	struct nbdserver *srv = nbdserver_start(args);
	char uri[400];
	snprintf(uri, sizeof uri, "%s&silence=400&connect-timeout=500", nbdserver_uri(srv));
	struct block_device *nbd;
	CHECK_OK(dm_io_bdev_open(uri, 0, &nbd));
	struct dm_io_client *cl = make_client(2, 4, 64 * 1024);
	const char *lp;
	struct block_device *local = make_faulty_dev("local", 1 << 20, "", &lp);
	fill_pattern(data, BYTES, 9);
	CHECK(one(cl, nbd, DM_IO_WRITE, 0) == 0, "first write");

	/* Killed with a read in flight (the server holds reads 3 s). */
	tracker_init(&t, 1);
	struct dm_io_region r = { nbd, 0, S };
	struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(back, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	sleep_ms(100);
	double t0 = now_ms();
	nbdserver_stop(srv);
	CHECK(tracker_wait(&t, 2000), "in-flight read not final 2 s after the kill");
	CHECK(t.final_state[0] == DM_IO_ERROR && t.final_error[0] == -ECONNRESET,
	      "after the kill: state %d error %d", t.final_state[0], t.final_error[0]);
	printf("in-flight read ended %.0f ms after the kill\n", now_ms() - t0);

	/* Down: ENOTCONN at once, and the local leg of the same write is OK. */
	struct tracker t2;
	tracker_init(&t2, 2);
	struct dm_io_region legs[2] = { { local, 0, S }, { nbd, 0, S } };
	c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t2);
	c.timeout = 5000;
	t0 = now_ms();
	CHECK_OK(dm_io(&c, 2, legs, NULL));
	CHECK(tracker_wait(&t2, 5000), "write while down not final");
	tracker_check(&t2);
	CHECK(now_ms() - t0 < 1000, "write while down took %.0f ms", now_ms() - t0);
	CHECK(t2.final_state[0] == DM_IO_OK, "local leg: state %d", t2.final_state[0]);
	CHECK(t2.final_state[1] == DM_IO_ERROR && t2.final_error[1] == -ENOTCONN,
	      "NBD leg while down: state %d error %d", t2.final_state[1], t2.final_error[1]);

	/* Back on the same socket (a fresh, empty memory disk): IO works again. */
	const char *fast[] = { "memory", "16M", NULL };
	(void)fast;
	nbdserver_restart(srv);
	t0 = now_ms();
	int ok = 0;
	for (int i = 0; i < 100 && !ok; i++) {
		ok = one(cl, nbd, DM_IO_WRITE, 0) == 0;
		if (!ok)
			sleep_ms(100);
	}
	CHECK(ok, "IO did not work again within 10 s of the restart");
	printf("IO works again %.0f ms after the restart\n", now_ms() - t0);

	/* Silence: SIGSTOP with a read outstanding. */
	tracker_init(&t, 1);
	c = make_ctrl(cl, DM_IO_READ, vm_mem(back, 0), tracker_notify, &t);
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	sleep_ms(50);
	kill(nbdserver_pid(srv), SIGSTOP);
	t0 = now_ms();
	CHECK(tracker_wait(&t, 5000), "stopped server: read not final");
	double took = now_ms() - t0;
	CHECK(t.final_state[0] == DM_IO_ERROR && t.final_error[0] == -ETIMEDOUT,
	      "silence: state %d error %d", t.final_state[0], t.final_error[0]);
	CHECK(took < 400 + 1500, "silence limit 400 ms: ended after %.0f ms", took);
	kill(nbdserver_pid(srv), SIGCONT);
	ok = 0;
	for (int i = 0; i < 100 && !ok; i++) {
		ok = one(cl, nbd, DM_IO_WRITE, 0) == 0;
		if (!ok)
			sleep_ms(100);
	}
	CHECK(ok, "IO did not work again within 10 s of SIGCONT");

	dm_io_client_destroy(cl);
	dm_io_bdev_close(local);
	dm_io_bdev_close(nbd);
	nbdserver_stop(srv);
	return 0;
}
