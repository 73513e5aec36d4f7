/* An NBD export under nbdkit's own fault filters: with the error filter,
 * IO fails with EIO while its trigger file exists and works again once it
 * is removed (the connection stays up); with the pause filter, a write is
 * notified TIMEOUT at its deadline while the server holds it, then its
 * late OK once the server resumes, and the data is there. */
#include "helpers.h"
#include "nbdserver.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { BYTES = 16 * 1024, S = BYTES / 512 };
static unsigned char data[BYTES], back[BYTES];

/* Sends a command to the pause filter's control socket; waits for its echo. */
static void pause_ctl(const char *sock, char cmd)
{
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	CHECK(strlen(sock) < sizeof a.sun_path, "path");
	memcpy(a.sun_path, sock, strlen(sock) + 1);
	CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect %s", sock);
	CHECK(write(fd, &cmd, 1) == 1, "write");
	char echo = 0;
	CHECK(read(fd, &echo, 1) == 1 && echo == cmd - 32, "pause filter echoed %c", echo);
	close(fd);
}

int main(void)
{
	struct dm_io_client *cl = make_client(1, 4, 64 * 1024);

	/* Error filter with a trigger file. */
	char trigger[300], efile[320];
	snprintf(trigger, sizeof trigger, "%s/error-now", test_dir());
	snprintf(efile, sizeof efile, "error-file=%s", trigger);
	const char *eargs[] = { "--filter=error", "memory", "16M", "error=EIO", "error-rate=100%",
				efile, NULL };
	struct nbdserver *es = nbdserver_start(eargs);
	struct block_device *ed;
	CHECK_OK(dm_io_bdev_open(nbdserver_uri(es), 0, &ed));
	fill_pattern(data, BYTES, 3);
	CHECK_OK(sync_io(cl, DM_IO_WRITE, ed, 0, S, data, 0));
	int fd = open(trigger, O_CREAT | O_WRONLY, 0600);
	CHECK(fd >= 0, "trigger file");
	close(fd);
	CHECK(sync_io(cl, DM_IO_READ, ed, 0, S, back, 0) == -EIO, "read while the trigger exists");
	CHECK(sync_io(cl, DM_IO_WRITE, ed, 0, S, data, 0) == -EIO, "write while the trigger exists");
	unlink(trigger);
	memset(back, 0, BYTES);
	CHECK_OK(sync_io(cl, DM_IO_READ, ed, 0, S, back, 0));
	CHECK(memcmp(back, data, BYTES) == 0, "data after the errors");
	dm_io_bdev_close(ed);
	nbdserver_stop(es);

	/* Pause filter. */
	char ctl[300], carg[320];
	snprintf(ctl, sizeof ctl, "%s/pause.ctl", test_dir());
	snprintf(carg, sizeof carg, "pause-control=%s", ctl);
	const char *pargs[] = { "--filter=pause", "memory", "16M", carg, NULL };
	struct nbdserver *ps = nbdserver_start(pargs);
	struct block_device *pd;
	CHECK_OK(dm_io_bdev_open(nbdserver_uri(ps), 0, &pd));
	pause_ctl(ctl, 'p');
	struct tracker t;
	tracker_init(&t, 1);
	fill_pattern(data, BYTES, 4);
	struct dm_io_region r = { pd, 64, S };
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE, vm_mem(data, 0), tracker_notify, &t);
	c.timeout = 100;
	double t0 = now_ms();
	CHECK_OK(dm_io(&c, 1, &r, NULL));
	CHECK(tracker_wait_timeout(&t, 0, 3000), "no TIMEOUT while paused");
	double tt = now_ms() - t0;
	CHECK(tt >= 90 && tt < 600, "TIMEOUT after %.0f ms (deadline 100)", tt);
	sleep_ms(200);
	CHECK(tracker_finals(&t) == 0, "final while the server is paused");
	pause_ctl(ctl, 'r');
	CHECK(tracker_wait(&t, 5000), "no late final state after resume");
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_OK, "late state %d error %d", t.final_state[0], t.final_error[0]);
	memset(back, 0, BYTES);
	CHECK_OK(sync_io(cl, DM_IO_READ, pd, 64, S, back, 0));
	CHECK(memcmp(back, data, BYTES) == 0, "paused write's data");
	dm_io_bdev_close(pd);
	nbdserver_stop(ps);
	dm_io_client_destroy(cl);
	return 0;
}
