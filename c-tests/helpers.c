#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char dir[256];
static char paths[64][320];
static int npaths;

void skip(const char *why)
{
	printf("SKIP: %s\n", why);
	exit(77);
}

static void cleanup(void)
{
	for (int i = 0; i < npaths; i++)
		unlink(paths[i]);
	if (dir[0])
		rmdir(dir);
}

const char *test_dir(void)
{
	if (!dir[0]) {
		const char *base = getenv("DMIO_TEST_DIR");
		snprintf(dir, sizeof(dir), "%s/dmio-test-XXXXXX", base ? base : "/var/tmp");
		if (!mkdtemp(dir)) {
			perror("mkdtemp");
			exit(1);
		}
		atexit(cleanup);
	}
	return dir;
}

const char *make_file(const char *name, size_t bytes)
{
	CHECK(npaths < 64, "too many files");
	char *p = paths[npaths++];
	snprintf(p, sizeof(paths[0]), "%s/%s", test_dir(), name);
	int fd = open(p, O_CREAT | O_TRUNC | O_RDWR, 0600);
	CHECK(fd >= 0, "open %s: %s", p, strerror(errno));
	CHECK(ftruncate(fd, (off_t)bytes) == 0, "ftruncate: %s", strerror(errno));
	close(fd);
	return p;
}

struct block_device *make_dev(const char *name, size_t bytes)
{
	struct block_device *b = NULL;
	CHECK_OK(dm_io_bdev_open(make_file(name, bytes), 0, &b));
	return b;
}

static uint32_t mix(uint32_t x)
{
	x ^= x >> 16;
	x *= 0x7feb352dU;
	x ^= x >> 15;
	x *= 0x846ca68bU;
	x ^= x >> 16;
	return x;
}

void fill_pattern(void *buf, size_t len, unsigned seed)
{
	unsigned char *b = buf;
	for (size_t i = 0; i < len; i++)
		b[i] = (unsigned char)mix((uint32_t)(i / 4) * 2654435761U + seed) >> ((i % 4) * 8);
}

int check_pattern(const void *buf, size_t len, unsigned seed)
{
	const unsigned char *b = buf;
	for (size_t i = 0; i < len; i++)
		if (b[i] != (unsigned char)(mix((uint32_t)(i / 4) * 2654435761U + seed) >> ((i % 4) * 8)))
			return 0;
	return 1;
}

void read_file(const char *path, uint64_t off, void *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
	CHECK(pread(fd, buf, len, (off_t)off) == (ssize_t)len, "pread %s", path);
	close(fd);
}

void write_file(const char *path, uint64_t off, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY);
	CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
	CHECK(pwrite(fd, buf, len, (off_t)off) == (ssize_t)len, "pwrite %s", path);
	CHECK(fsync(fd) == 0, "fsync");
	close(fd);
}

void tracker_init(struct tracker *t, unsigned nregions)
{
	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	t->nregions = nregions;
	for (unsigned i = 0; i < MAX_TRACKED; i++)
		t->final_state[i] = -1;
}

void tracker_notify(struct dm_io_region_state *st, void *ctx)
{
	struct tracker *t = ctx;
	pthread_mutex_lock(&t->lock);
	unsigned i = st->index;
	if (i >= t->nregions) {
		t->bad_index++;
	} else if (t->final_state[i] != -1) {
		t->calls_after_final++;
	} else if (st->state == DM_IO_TIMEOUT) {
		t->timeouts[i]++;
		t->thread[i] = pthread_self();
	} else {
		t->final_state[i] = (int)st->state;
		t->final_error[i] = st->error_code;
		t->thread[i] = pthread_self();
		t->finals++;
	}
	t->hdl_seen = st->hdl;
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
}

static void deadline_in(struct timespec *ts, int ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

int tracker_wait(struct tracker *t, int ms)
{
	struct timespec ts;
	deadline_in(&ts, ms);
	pthread_mutex_lock(&t->lock);
	while (t->finals < t->nregions)
		if (pthread_cond_timedwait(&t->cond, &t->lock, &ts) == ETIMEDOUT)
			break;
	int done = t->finals == t->nregions;
	pthread_mutex_unlock(&t->lock);
	return done;
}

int tracker_wait_timeout(struct tracker *t, unsigned i, int ms)
{
	struct timespec ts;
	deadline_in(&ts, ms);
	pthread_mutex_lock(&t->lock);
	while (!t->timeouts[i])
		if (pthread_cond_timedwait(&t->cond, &t->lock, &ts) == ETIMEDOUT)
			break;
	int seen = t->timeouts[i] > 0;
	pthread_mutex_unlock(&t->lock);
	return seen;
}

void tracker_check(struct tracker *t)
{
	pthread_mutex_lock(&t->lock);
	CHECK(t->bad_index == 0, "%d notify calls with a bad index", t->bad_index);
	CHECK(t->calls_after_final == 0, "%d notify calls after a final state", t->calls_after_final);
	for (unsigned i = 0; i < t->nregions; i++)
		CHECK(t->timeouts[i] <= 1, "region %u got %d TIMEOUTs", i, t->timeouts[i]);
	pthread_mutex_unlock(&t->lock);
}

double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}
