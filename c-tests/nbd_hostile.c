/* A hostile NBD server (in this test, on a unix socket) answers the first
 * read after each change of mode wrongly: a reply to a cookie never sent, a second
 * reply to a cookie already answered (also while the client is idle), a
 * bad reply magic, garbage, structured-reply chunks outside the request or
 * overlapping, a reply that does not cover the read, and an oversized
 * option reply in the handshake. Each must end the request's region ERROR
 * -EPROTO (or fail the open), crash nothing, and leave the device working
 * again after its reconnect; meanwhile a good device (nbdkit) on the same
 * client keeps verifying its data. */
#include "helpers.h"
#include "nbdserver.h"
#include <endian.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { SIZE = 1 << 20, BYTES = 4096, S = BYTES / 512 };

enum mode {
	M_UNKNOWN_COOKIE,
	M_SECOND_REPLY,
	M_SECOND_REPLY_IDLE,
	M_BAD_MAGIC,
	M_GARBAGE,
	M_CHUNK_OUTSIDE,
	M_CHUNK_OVERLAP,
	M_CHUNK_SHORT,
	M_BIG_OPTION_REPLY,
	M_COUNT
};
static const char *names[M_COUNT] = {
	"unknown cookie", "second reply",	  "second reply while idle",
	"bad magic",	  "garbage",		  "chunk outside the request",
	"overlapping chunks", "reply short of the request", "oversized option reply",
};

static int lfd;
static _Atomic int mode;
static _Atomic int stop;
/* Set when the current mode has misbehaved once: later reads are answered well. */
static _Atomic int misbehaved;
static unsigned char disk[SIZE];

static int rd(int fd, void *p, size_t n)
{
	unsigned char *b = p;
	while (n) {
		ssize_t r = read(fd, b, n);
		if (r <= 0)
			return -1;
		b += r, n -= (size_t)r;
	}
	return 0;
}

static void wr(int fd, const void *p, size_t n)
{
	if (send(fd, p, n, MSG_NOSIGNAL) != (ssize_t)n)
		return;
}

static void put16(unsigned char *b, uint16_t v) { v = htobe16(v); memcpy(b, &v, 2); }
static void put32(unsigned char *b, uint32_t v) { v = htobe32(v); memcpy(b, &v, 4); }
static void put64(unsigned char *b, uint64_t v) { v = htobe64(v); memcpy(b, &v, 8); }
static uint32_t get32(const unsigned char *b) { uint32_t v; memcpy(&v, b, 4); return be32toh(v); }
static uint64_t get64(const unsigned char *b) { uint64_t v; memcpy(&v, b, 8); return be64toh(v); }
static uint16_t get16(const unsigned char *b) { uint16_t v; memcpy(&v, b, 2); return be16toh(v); }

static void opt_reply(int fd, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
	unsigned char h[20];
	put64(h, 0x3e889045565a9ULL);
	put32(h + 8, opt);
	put32(h + 12, type);
	put32(h + 16, len);
	wr(fd, h, 20);
	if (len)
		wr(fd, data, len);
}

static void simple(int fd, uint32_t magic, uint32_t err, uint64_t cookie, const void *d, size_t n)
{
	unsigned char h[16];
	put32(h, magic);
	put32(h + 4, err);
	put64(h + 8, cookie);
	wr(fd, h, 16);
	if (n)
		wr(fd, d, n);
}

/* An OFFSET_DATA chunk (`off` is an offset in the export). */
static void chunk(int fd, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t off,
		  const void *d, uint32_t n)
{
	unsigned char h[28];
	put32(h, 0x668e33ef);
	put16(h + 4, flags);
	put16(h + 6, type);
	put64(h + 8, cookie);
	put32(h + 16, n + 8);
	put64(h + 20, off);
	wr(fd, h, 28);
	wr(fd, d, n);
}

/* One connection: handshake, then requests until the peer goes. */
static void serve(int fd)
{
	int m = mode, structured = 0;
	unsigned char g[18];
	put64(g, 0x4e42444d41474943ULL);
	put64(g + 8, 0x49484156454f5054ULL);
	put16(g + 16, 3);
	wr(fd, g, 18);
	unsigned char cf[4];
	if (rd(fd, cf, 4))
		return;
	for (;;) {
		unsigned char oh[16];
		if (rd(fd, oh, 16))
			return;
		uint32_t opt = get32(oh + 8), len = get32(oh + 12);
		unsigned char data[4096 + 64];
		if (len > sizeof data || rd(fd, data, len))
			return;
		if (opt == 8) { /* STRUCTURED_REPLY */
			if (m == M_BIG_OPTION_REPLY) {
				opt_reply(fd, opt, 1, NULL, 0); /* header claims nothing */
				unsigned char h[20];
				put64(h, 0x3e889045565a9ULL);
				put32(h + 8, opt);
				put32(h + 12, 3);
				put32(h + 16, 1u << 30);
				wr(fd, h, 20);
				return;
			}
			int want = m >= M_CHUNK_OUTSIDE && m <= M_CHUNK_SHORT;
			opt_reply(fd, opt, want ? 1 : 0x80000001u, NULL, 0);
			structured = want;
		} else if (opt == 7) { /* GO */
			unsigned char info[12];
			put16(info, 0);
			put64(info + 2, SIZE);
			put16(info + 10, 1 | 4); /* HAS_FLAGS | SEND_FLUSH */
			opt_reply(fd, opt, 3, info, 12);
			opt_reply(fd, opt, 1, NULL, 0);
			break;
		} else {
			opt_reply(fd, opt, 0x80000001u, NULL, 0);
		}
	}
	for (;;) {
		unsigned char q[28];
		if (rd(fd, q, 28))
			return;
		uint16_t type = get16(q + 6);
		uint64_t cookie = get64(q + 8), off = get64(q + 16);
		uint32_t len = get32(q + 24);
		if (off + len > SIZE || len > SIZE)
			return;
		if (type == 1) {
			if (rd(fd, disk + off, len))
				return;
			simple(fd, 0x67446698, 0, cookie, NULL, 0);
			continue;
		}
		if (type != 0) {
			simple(fd, 0x67446698, 0, cookie, NULL, 0);
			continue;
		}
		if (misbehaved || m == M_BIG_OPTION_REPLY) {
			if (structured)
				chunk(fd, 1, 1, cookie, off, disk + off, len);
			else
				simple(fd, 0x67446698, 0, cookie, disk + off, len);
			continue;
		}
		misbehaved = 1;
		switch (m) {
		case M_UNKNOWN_COOKIE:
			simple(fd, 0x67446698, 0, cookie ^ 0x5a5a, disk + off, len);
			break;
		case M_SECOND_REPLY: {
			/* Both replies in one write: they arrive together, so the
			 * client sees the duplicate before the first reply's
			 * region can end (an io_uring RECV completes with the
			 * first bytes that arrive, unlike a poll(2) loop that
			 * happened to read later). */
			size_t one = 16 + len;
			unsigned char *two = malloc(2 * one);
			for (int k = 0; k < 2; k++) {
				put32(two + k * one, 0x67446698);
				put32(two + k * one + 4, 0);
				put64(two + k * one + 8, cookie);
				memcpy(two + k * one + 16, disk + off, len);
			}
			wr(fd, two, 2 * one);
			free(two);
			break;
		}
		case M_SECOND_REPLY_IDLE:
			simple(fd, 0x67446698, 0, cookie, disk + off, len);
			usleep(100 * 1000);
			simple(fd, 0x67446698, 0, cookie, NULL, 0);
			break;
		case M_BAD_MAGIC:
			simple(fd, 0x12345678, 0, cookie, disk + off, len);
			break;
		case M_GARBAGE: {
			unsigned char junk[512];
			for (unsigned i = 0; i < sizeof junk; i++)
				junk[i] = (unsigned char)(i * 37 + 11);
			wr(fd, junk, sizeof junk);
			break;
		}
		case M_CHUNK_OUTSIDE:
			chunk(fd, 1, 1, cookie, off + len, disk + off, len);
			break;
		case M_CHUNK_OVERLAP:
			chunk(fd, 0, 1, cookie, off, disk + off, len);
			chunk(fd, 1, 1, cookie, off + 512, disk + off, len - 512);
			break;
		case M_CHUNK_SHORT:
			chunk(fd, 1, 1, cookie, off, disk + off, len / 2);
			break;
		}
	}
}

static void *server(void *arg)
{
	(void)arg;
	while (!stop) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			continue;
		serve(fd);
		close(fd);
	}
	return NULL;
}

int main(void)
{
	char sock[256], uri[400];
	snprintf(sock, sizeof sock, "%s/hostile.sock", test_dir());
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	CHECK(strlen(sock) < sizeof a.sun_path, "path");
	memcpy(a.sun_path, sock, strlen(sock) + 1);
	CHECK(bind(lfd, (struct sockaddr *)&a, sizeof a) == 0 && listen(lfd, 16) == 0, "listen");
	pthread_t th;
	pthread_create(&th, NULL, server, NULL);
	snprintf(uri, sizeof uri, "nbd+unix:///?socket=%s&connect-timeout=2000", sock);

	const char *args[] = { "memory", "4M", NULL };
	struct nbdserver *good_srv = nbdserver_start(args);
	struct block_device *good;
	CHECK_OK(dm_io_bdev_open(nbdserver_uri(good_srv), 0, &good));
	struct dm_io_client *cl = make_client(2, 8, 64 * 1024);
	static unsigned char gdata[BYTES], gback[BYTES], back[BYTES];

	for (int m = 0; m < M_COUNT; m++) {
		mode = m;
		misbehaved = 0;
		struct block_device *bad;
		int rc = dm_io_bdev_open(uri, 0, &bad);
		if (m == M_BIG_OPTION_REPLY) {
			CHECK(rc == -EPROTO, "%s: open returned %d", names[m], rc);
			continue;
		}
		CHECK_OK(rc);
		/* The bad read and a good write+read at the same time. */
		struct tracker t;
		tracker_init(&t, 1);
		struct dm_io_region r = { bad, 8, S };
		struct dm_io_control c = make_ctrl(cl, DM_IO_READ, vm_mem(back, 0), tracker_notify, &t);
		c.timeout = 5000;
		CHECK_OK(dm_io(&c, 1, &r, NULL));
		fill_pattern(gdata, BYTES, (unsigned)m);
		CHECK_OK(sync_io(cl, DM_IO_WRITE, good, (uint64_t)m * 8, S, gdata, 0));
		CHECK(tracker_wait(&t, 5000), "%s: read not final", names[m]);
		tracker_check(&t);
		if (m == M_SECOND_REPLY_IDLE) {
			CHECK(t.final_state[0] == DM_IO_OK, "%s: first reply: state %d error %d",
			      names[m], t.final_state[0], t.final_error[0]);
		} else {
			CHECK(t.final_state[0] == DM_IO_ERROR && t.final_error[0] == -EPROTO,
			      "%s: state %d error %d", names[m], t.final_state[0], t.final_error[0]);
		}
		CHECK_OK(sync_io(cl, DM_IO_READ, good, (uint64_t)m * 8, S, gback, 0));
		CHECK(memcmp(gback, gdata, BYTES) == 0, "%s: good device's data differs", names[m]);
		/* The bad device works again after its reconnect. */
		int ok = 0;
		for (int i = 0; i < 100 && !ok; i++) {
			ok = sync_io(cl, DM_IO_READ, bad, 8, S, back, 0) == 0;
			if (!ok)
				sleep_ms(50);
		}
		CHECK(ok, "%s: device did not work again within 5 s", names[m]);
		printf("ok: %s\n", names[m]);
		dm_io_bdev_close(bad);
	}
	stop = 1;
	shutdown(lfd, SHUT_RDWR);
	close(lfd);
	pthread_join(th, NULL);
	dm_io_client_destroy(cl);
	dm_io_bdev_close(good);
	nbdserver_stop(good_srv);
	return 0;
}
