/* Opening NBD URIs that cannot work fails with a negative errno and a
 * message, in bounded time: schemes not supported (TLS, vsock) with
 * -EPROTONOSUPPORT, malformed URIs and unknown parameters with -EINVAL,
 * nothing listening with -ECONNREFUSED or -ENOENT, a server that accepts
 * but never greets (unix socket and TCP) with -ETIMEDOUT within
 * connect-timeout, a missing
 * export with -ENOENT. */
#include "helpers.h"
#include "nbdserver.h"
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

static void refused(const char *uri, int want)
{
	struct block_device *b = NULL;
	double t0 = now_ms();
	int rc = dm_io_bdev_open(uri, 0, &b);
	CHECK(rc == want, "%s: %d, expected %d", uri, rc, want);
	CHECK(strlen(dm_io_last_error()) > 0, "%s: no message", uri);
	CHECK(now_ms() - t0 < 5000, "%s: took %.0f ms", uri, now_ms() - t0);
}

int main(void)
{
	refused("nbds://localhost/x", -EPROTONOSUPPORT);
	refused("nbd+vsock://1/x", -EPROTONOSUPPORT);
	refused("nbd://", -EINVAL);
	refused("nbd+unix:///x", -EINVAL);
	refused("nbd://127.0.0.1/x?colour=blue", -EINVAL);
	refused("nbd://127.0.0.1/x?connect-timeout=abc", -EINVAL);

	char path[300];
	snprintf(path, sizeof path, "nbd+unix:///x?socket=%s/none.sock", test_dir());
	refused(path, -ENOENT);

	/* A listener that never accepts nor greets. */
	char sock[256];
	snprintf(sock, sizeof sock, "%s/mute.sock", test_dir());
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	CHECK(strlen(sock) < sizeof a.sun_path, "socket path too long");
	memcpy(a.sun_path, sock, strlen(sock) + 1);
	CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 4) == 0, "listen");
	snprintf(path, sizeof path, "nbd+unix:///?socket=%s&connect-timeout=300", sock);
	double t0 = now_ms();
	refused(path, -ETIMEDOUT);
	double took = now_ms() - t0;
	CHECK(took >= 250 && took < 2000, "mute server: failed after %.0f ms (limit 300)", took);
	close(fd);

	/* TCP: a closed port on 127.0.0.1, and a listener that never greets. */
	int tfd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t inlen = sizeof in;
	CHECK(bind(tfd, (struct sockaddr *)&in, sizeof in) == 0 && getsockname(tfd, (struct sockaddr *)&in, &inlen) == 0,
	      "bind 127.0.0.1");
	snprintf(path, sizeof path, "nbd://127.0.0.1:%u/x", ntohs(in.sin_port));
	refused(path, -ECONNREFUSED); /* bound, not listening */
	CHECK(listen(tfd, 4) == 0, "listen");
	snprintf(path, sizeof path, "nbd://127.0.0.1:%u/x?connect-timeout=300", ntohs(in.sin_port));
	t0 = now_ms();
	refused(path, -ETIMEDOUT);
	took = now_ms() - t0;
	CHECK(took >= 250 && took < 2000, "mute TCP server: failed after %.0f ms (limit 300)", took);
	close(tfd);

	/* A real server, an export it does not have. */
	const char *args2[] = { "--filter=exportname", "memory", "1M", "exportname=only",
				"exportname-strict=true", NULL };
	struct nbdserver *named = nbdserver_start(args2);
	snprintf(path, sizeof path, "nbd+unix:///other?socket=%s", nbdserver_socket(named));
	refused(path, -ENOENT);
	/* Its real name opens. */
	snprintf(path, sizeof path, "nbd+unix:///only?socket=%s", nbdserver_socket(named));
	struct block_device *b;
	CHECK_OK(dm_io_bdev_open(path, 0, &b));
	dm_io_bdev_close(b);
	return 0;
}
