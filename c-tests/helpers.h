/* Shared helpers for the C tests: checks, temporary devices, and a notify
 * recorder that verifies every region's state sequence. */
#ifndef DMIO_TEST_HELPERS_H
#define DMIO_TEST_HELPERS_H

#include <dm_io.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_TRACKED 64

/* Fails the test with a message (file:line) when cond is false. */
#define CHECK(cond, ...)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, \
				__LINE__, #cond);                              \
			fprintf(stderr, __VA_ARGS__);                          \
			fprintf(stderr, " [last error: %s]\n",                 \
				dm_io_last_error());                           \
			exit(1);                                               \
		}                                                              \
	} while (0)

/* Checks that a call returned 0. */
#define CHECK_OK(expr)                                                         \
	do {                                                                   \
		int rc_ = (expr);                                              \
		CHECK(rc_ == 0, "%s returned %d", #expr, rc_);                 \
	} while (0)

/* Prints the reason and exits 77 (cannot run here). */
void skip(const char *why);

/* A temporary directory on a disk file system (O_DIRECT capable when
 * possible): $DMIO_TEST_DIR or /var/tmp. Removed at exit with its files. */
const char *test_dir(void);
/* Creates a file of `bytes` bytes (zeros) in test_dir(); returns its path
 * (static storage, one per call). */
const char *make_file(const char *name, size_t bytes);
/* Opens a new file of `bytes` as a block_device. */
struct block_device *make_dev(const char *name, size_t bytes);

/* Fills / checks a pattern derived from seed. */
void fill_pattern(void *buf, size_t len, unsigned seed);
int check_pattern(const void *buf, size_t len, unsigned seed);
/* pread of a file, bypassing libdmio. */
void read_file(const char *path, uint64_t off, void *buf, size_t len);
void write_file(const char *path, uint64_t off, const void *buf, size_t len);

/* Records notify calls per region and checks the state machine:
 * at most one TIMEOUT, then exactly one final state. */
struct tracker {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned nregions;
	unsigned finals;
	int timeouts[MAX_TRACKED];
	int final_state[MAX_TRACKED]; /* -1 until final */
	int final_error[MAX_TRACKED];
	int calls_after_final;
	int bad_index;
	pthread_t thread[MAX_TRACKED];
	struct dm_io_handle *hdl_seen;
};
void tracker_init(struct tracker *t, unsigned nregions);
/* The notify function to use with a tracker as context. */
void tracker_notify(struct dm_io_region_state *st, void *ctx);
/* Waits until every region is final or ms pass; returns 1 if all final. */
int tracker_wait(struct tracker *t, int ms);
/* Waits until region i saw a TIMEOUT or ms pass; returns 1 if it did. */
int tracker_wait_timeout(struct tracker *t, unsigned i, int ms);
/* Fails the test if any sequence was malformed. */
void tracker_check(struct tracker *t);

/* Milliseconds on a monotonic clock. */
double now_ms(void);
void sleep_ms(int ms);
/* Waits until *f is set; fails the test ("<what> did not happen within
 * 10 s") if it is not within 10 s. */
void wait_flag(atomic_int *f, const char *what);


/* ---- Additions used by the behaviour tests ---- */

/* Creates a client or fails the test. */
struct dm_io_client *make_client(unsigned devices, unsigned min_ios, unsigned max_size);
/* Like make_dev, but with fault injection (dm_io_bdev_open_faulty); the
 * file's path goes to *path when path is not NULL. */
struct block_device *make_faulty_dev(const char *name, size_t bytes, const char *spec,
				     const char **path);
/* A control block for memory `mem`, rw, notify/context on client cl. */
struct dm_io_control make_ctrl(struct dm_io_client *cl, int rw, struct dm_io_memory mem,
			       dm_io_notify_fn notify, void *context);
/* A DM_IO_VM memory descriptor. */
struct dm_io_memory vm_mem(void *p, unsigned offset);
/* One SYNC dm_io of `count` sectors at `sector` of dev, VM memory at
 * buf + offset, no notify; returns dm_io's result. */
int sync_io(struct dm_io_client *cl, int rw, struct block_device *dev, uint64_t sector,
	    uint64_t count, void *buf, unsigned offset);
/* An asynchronous request of one region over mem, waited for (10 s):
 * returns dm_io's error if it refused the request; otherwise checks the
 * notify sequence and that the region ended OK (failing the test if not)
 * and returns 0. */
int async_io_one(struct dm_io_client *cl, int rw, struct dm_io_memory mem, struct block_device *dev,
		 uint64_t sector, uint64_t count);
/* Fails the test unless the device's logical block size divides 4096
 * (the tests use regions in multiples of 8 sectors). */
void check_block_size(struct block_device *dev);

/* Number of regions of a tracker that ended with `state`. */
unsigned tracker_count(struct tracker *t, int state);
/* Snapshot of how many regions are final now. */
unsigned tracker_finals(struct tracker *t);

/* A function run in a background thread, waited for with a time limit. */
struct bg {
	pthread_t th;
	int (*fn)(void *);
	void *arg;
	int rc;
	int done;
	int joined;
	double end_ms; /* now_ms() when fn returned */
	pthread_mutex_t lock;
	pthread_cond_t cond;
};
void bg_start(struct bg *b, int (*fn)(void *), void *arg);
/* Waits up to ms for the function to return; 1 if it did (the thread is
 * then joined; calling again is fine). */
int bg_wait(struct bg *b, int ms);

#endif
