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
		b[i] = (unsigned char)(mix((uint32_t)(i / 4) * 2654435761U + seed) >> ((i % 4) * 8));
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

void wait_flag(atomic_int *f, const char *what)
{
	double t0 = now_ms();
	while (!atomic_load(f)) {
		CHECK(now_ms() - t0 < 10000, "%s did not happen within 10 s", what);
		sleep_ms(1);
	}
}

/* ---- Additions used by the behaviour tests ---- */

struct dm_io_client *make_client(unsigned devices, unsigned min_ios, unsigned max_size)
{
	struct dm_io_client *cl = NULL;
	int rc = dm_io_client_create(devices, min_ios, max_size, &cl);
	/* No skip for a kernel that refuses io_uring or AIO: by default the
	 * client falls back to AIO or the thread pool, and with
	 * DMIO_ENGINE=uring or aio (make test-c, test-c-aio) the refusal is
	 * meant to fail the suite. */
	CHECK(rc == 0 && cl, "dm_io_client_create(%u, %u, %u) returned %d", devices, min_ios,
	      max_size, rc);
	return cl;
}

struct block_device *make_faulty_dev(const char *name, size_t bytes, const char *spec,
				     const char **path)
{
	struct block_device *b = NULL;
	const char *p = make_file(name, bytes);
	CHECK_OK(dm_io_bdev_open_faulty(p, spec, &b));
	if (path)
		*path = p;
	check_block_size(b);
	return b;
}

struct dm_io_memory vm_mem(void *p, unsigned offset)
{
	struct dm_io_memory m;
	memset(&m, 0, sizeof(m));
	m.type = DM_IO_VM;
	m.ptr.vma = p;
	m.offset = offset;
	return m;
}

struct dm_io_control make_ctrl(struct dm_io_client *cl, int rw, struct dm_io_memory mem,
			       dm_io_notify_fn notify, void *context)
{
	struct dm_io_control c;
	memset(&c, 0, sizeof(c));
	c.memory = mem;
	c.rw = rw;
	c.notify = notify;
	c.context = context;
	c.client = cl;
	return c;
}

int sync_io(struct dm_io_client *cl, int rw, struct block_device *dev, uint64_t sector,
	    uint64_t count, void *buf, unsigned offset)
{
	struct dm_io_region r = { dev, sector, count };
	struct dm_io_control c = make_ctrl(cl, rw | DM_IO_SYNC, vm_mem(buf, offset), NULL, NULL);
	return dm_io(&c, 1, &r, NULL);
}

int async_io_one(struct dm_io_client *cl, int rw, struct dm_io_memory mem, struct block_device *dev,
		 uint64_t sector, uint64_t count)
{
	struct dm_io_region r = { dev, sector, count };
	struct tracker t;
	tracker_init(&t, 1);
	struct dm_io_control c = make_ctrl(cl, rw, mem, tracker_notify, &t);
	int rc = dm_io(&c, 1, &r, NULL);
	if (rc)
		return rc;
	CHECK(tracker_wait(&t, 10000), "IO did not finish");
	tracker_check(&t);
	CHECK(t.final_state[0] == DM_IO_OK, "state %d error %d", t.final_state[0], t.final_error[0]);
	return 0;
}

void check_block_size(struct block_device *dev)
{
	unsigned bs = dm_io_bdev_block_size(dev);
	CHECK(bs >= 512 && 4096 % bs == 0, "unexpected logical block size %u", bs);
}

unsigned tracker_count(struct tracker *t, int state)
{
	unsigned n = 0;
	pthread_mutex_lock(&t->lock);
	for (unsigned i = 0; i < t->nregions; i++)
		n += t->final_state[i] == state;
	pthread_mutex_unlock(&t->lock);
	return n;
}

unsigned tracker_finals(struct tracker *t)
{
	pthread_mutex_lock(&t->lock);
	unsigned n = t->finals;
	pthread_mutex_unlock(&t->lock);
	return n;
}

static void *bg_main(void *arg)
{
	struct bg *b = arg;
	int rc = b->fn(b->arg);
	pthread_mutex_lock(&b->lock);
	b->rc = rc;
	b->done = 1;
	b->end_ms = now_ms();
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	return NULL;
}

void bg_start(struct bg *b, int (*fn)(void *), void *arg)
{
	memset(b, 0, sizeof(*b));
	b->fn = fn;
	b->arg = arg;
	pthread_mutex_init(&b->lock, NULL);
	pthread_cond_init(&b->cond, NULL);
	CHECK(pthread_create(&b->th, NULL, bg_main, b) == 0, "pthread_create");
}

int bg_wait(struct bg *b, int ms)
{
	struct timespec ts;
	deadline_in(&ts, ms);
	pthread_mutex_lock(&b->lock);
	while (!b->done)
		if (pthread_cond_timedwait(&b->cond, &b->lock, &ts) == ETIMEDOUT)
			break;
	int done = b->done;
	pthread_mutex_unlock(&b->lock);
	if (done && !b->joined) {
		pthread_join(b->th, NULL);
		b->joined = 1;
	}
	return done;
}
