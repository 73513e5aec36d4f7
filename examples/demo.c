/*
 * demo: one dm_io request writes the same 64 KiB to three temporary files
 * (a three-way mirror), then each file is read back and compared.
 * Every notify call is printed with the thread and the region's state.
 */
#define _GNU_SOURCE
#include <dm_io.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LEGS 3
#define BYTES (64 * 1024)

struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int pending;
};

static const char *state_name(enum dm_io_state s)
{
	switch (s) {
	case DM_IO_OK: return "OK";
	case DM_IO_TIMEOUT: return "TIMEOUT";
	case DM_IO_CANCELLED: return "CANCELLED";
	case DM_IO_ERROR: return "ERROR";
	}
	return "?";
}

static void on_region(struct dm_io_region_state *st, void *ctx)
{
	struct waiter *w = ctx;
	printf("  notify: region %u -> %s (error_code %d)\n", st->index,
	       state_name(st->state), st->error_code);
	if (st->state == DM_IO_TIMEOUT)
		return;
	pthread_mutex_lock(&w->lock);
	if (--w->pending == 0)
		pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

int main(void)
{
	char dir[] = "/tmp/dmio-demo-XXXXXX";
	char path[LEGS][64];
	struct block_device *bdev[LEGS];
	struct dm_io_client *cl;
	struct dm_io_region regions[LEGS];
	char *data, *back;
	int i, rc, failed = 0;

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	printf("libdmio %s demo: a %d-way mirrored write of %d KiB in %s\n",
	       dm_io_version(), LEGS, BYTES / 1024, dir);

	rc = dm_io_client_create(LEGS, 4, 64 * 1024, &cl);
	if (rc) {
		fprintf(stderr, "dm_io_client_create: %s (%s)\n", strerror(-rc), dm_io_last_error());
		return 1;
	}
	for (i = 0; i < LEGS; i++) {
		FILE *f;
		snprintf(path[i], sizeof(path[i]), "%s/leg%d.img", dir, i);
		f = fopen(path[i], "w");
		if (!f || ftruncate(fileno(f), 1 << 20) || fclose(f)) {
			perror(path[i]);
			return 1;
		}
		rc = dm_io_bdev_open(path[i], 0, &bdev[i]);
		if (rc) {
			fprintf(stderr, "open %s: %s\n", path[i], dm_io_last_error());
			return 1;
		}
		regions[i].bdev = bdev[i];
		regions[i].sector = 128;
		regions[i].count = BYTES / 512;
		printf("  leg %d: %s (%s IO, %u-byte blocks)\n", i, path[i],
		       dm_io_bdev_is_direct(bdev[i]) ? "O_DIRECT" : "buffered",
		       dm_io_bdev_block_size(bdev[i]));
	}

	data = malloc(BYTES);
	back = malloc(BYTES);
	for (i = 0; i < BYTES; i++)
		data[i] = (char)(i * 7 + 3);

	/* Asynchronous mirrored write: notify runs on the completion thread. */
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, LEGS };
	struct dm_io_control ctrl = {
		.memory = { .type = DM_IO_VM, .ptr.vma = data, .offset = 0 },
		.rw = DM_IO_WRITE | DM_IO_FUA,
		.notify = on_region,
		.context = &w,
		.client = cl,
		.timeout = 5000,
		.flags = 0,
	};
	printf("write to %d regions, timeout %lu ms:\n", LEGS, ctrl.timeout);
	rc = dm_io(&ctrl, LEGS, regions, NULL);
	if (rc) {
		fprintf(stderr, "dm_io: %s (%s)\n", strerror(-rc), dm_io_last_error());
		return 1;
	}
	pthread_mutex_lock(&w.lock);
	while (w.pending)
		pthread_cond_wait(&w.cond, &w.lock);
	pthread_mutex_unlock(&w.lock);

	/* Synchronous reads, one region each; notify runs inside dm_io. */
	for (i = 0; i < LEGS; i++) {
		struct waiter w1 = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 1 };
		struct dm_io_control rd = {
			.memory = { .type = DM_IO_VM, .ptr.vma = back },
			.rw = DM_IO_READ | DM_IO_SYNC,
			.notify = on_region,
			.context = &w1,
			.client = cl,
		};
		memset(back, 0, BYTES);
		printf("read back leg %d (SYNC):\n", i);
		rc = dm_io(&rd, 1, &regions[i], NULL);
		if (rc || memcmp(back, data, BYTES)) {
			printf("  leg %d: %s\n", i, rc ? strerror(-rc) : "DATA MISMATCH");
			failed = 1;
		} else {
			printf("  leg %d: %d bytes match\n", i, BYTES);
		}
	}

	dm_io_client_destroy(cl);
	for (i = 0; i < LEGS; i++) {
		dm_io_bdev_close(bdev[i]);
		unlink(path[i]);
	}
	rmdir(dir);
	free(data);
	free(back);
	printf(failed ? "demo FAILED\n" : "demo passed: all legs identical\n");
	return failed;
}
