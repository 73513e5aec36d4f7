/* io.c - the plugin's IO: reads, writes, zero, trim and flush on the mirror.
 * Any offset and length: the mirror reads, merges and writes whole a partial
 * first or last block while the write holds its regions (mirror_pwrite). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "plugin.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static struct mirror *mir;
static uint64_t chunk_bytes;  /* bytes one mirror_write call covers at most */
static unsigned char *zeroes; /* chunk_bytes of zeroes, for zero requests */

int dmio_io_init(struct mirror *m)
{
	mir = m;
	chunk_bytes = (uint64_t)mirror_region_size(mir) * 32;
	if (chunk_bytes > (4u << 20))
		chunk_bytes = (uint64_t)mirror_region_size(mir) * ((4u << 20) / mirror_region_size(mir));
	if (chunk_bytes < mirror_region_size(mir))
		chunk_bytes = mirror_region_size(mir);
	zeroes = calloc(1, chunk_bytes);
	return zeroes ? 0 : -ENOMEM;
}

void dmio_io_fini(void)
{
	free(zeroes);
	zeroes = NULL;
	mir = NULL;
}

/* ---- IO ------------------------------------------------------------------------ */

static int fail(int rc, const char *what, uint64_t off, uint64_t len)
{
	nbdkit_error("dmio: %s of %" PRIu64 " bytes at %" PRIu64 ": %s", what, len, off, strerror(-rc));
	nbdkit_set_error(rc == -ETIMEDOUT ? EIO : -rc); /* NBD has no ETIMEDOUT: it would go out as EINVAL */
	return -1;
}

int dmio_pread(void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
	(void)h;
	(void)flags;
	uint64_t a0 = offset / BLOCK * BLOCK, a1 = (offset + count + BLOCK - 1) / BLOCK * BLOCK;
	if (a0 == offset && a1 == offset + count) {
		int rc = mirror_read(mir, offset, buf, count);
		return rc ? fail(rc, "read", offset, count) : 0;
	}
	/* Unaligned: read the covering blocks, copy the part asked for. */
	unsigned char *tmp = malloc(a1 - a0);
	if (!tmp)
		return fail(-ENOMEM, "read", offset, count);
	int rc = mirror_read(mir, a0, tmp, a1 - a0);
	if (!rc)
		memcpy(buf, tmp + (offset - a0), count);
	free(tmp);
	return rc ? fail(rc, "read", offset, count) : 0;
}

/* Writes [off, off + count) from src (NULL: zeroes), in pieces of at most
 * chunk_bytes that start on a region boundary after the first. The mirror
 * serves a partial first or last block by read-modify-write while the
 * piece holds its regions against every other write (mirror_pwrite), so
 * concurrent writes into one block never tear or lose each other. */
static int write_range(uint64_t off, uint64_t count, const unsigned char *src, unsigned mflags)
{
	uint64_t rs = mirror_region_size(mir), end = off + count;
	while (off < end) {
		uint64_t lim = off / rs * rs + chunk_bytes;
		if (lim > end)
			lim = end;
		int rc = mirror_pwrite(mir, off, src ? src : zeroes, lim - off, mflags);
		if (rc)
			return rc;
		if (src)
			src += lim - off;
		off = lim;
	}
	return 0;
}

int dmio_pwrite(void *h, const void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
	(void)h;
	int rc = write_range(offset, count, buf, flags & NBDKIT_FLAG_FUA ? MIRROR_FUA : 0);
	return rc ? fail(rc, "write", offset, count) : 0;
}

int dmio_zero(void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
	(void)h;
	if (flags & NBDKIT_FLAG_FAST_ZERO) {
		nbdkit_set_error(ENOTSUP); /* zeroes are written, never fast */
		return -1;
	}
	int rc = write_range(offset, count, NULL, flags & NBDKIT_FLAG_FUA ? MIRROR_FUA : 0);
	return rc ? fail(rc, "zero", offset, count) : 0;
}

/* Trim is advisory in NBD: the plugin keeps the data (a documented no-op),
 * so the legs stay identical and reads return what was there. */
int dmio_trim(void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
	(void)h;
	(void)count;
	(void)offset;
	(void)flags;
	return 0;
}

int dmio_flush(void *h, uint32_t flags)
{
	(void)h;
	(void)flags;
	int rc = mirror_flush(mir);
	return rc ? fail(rc, "flush", 0, 0) : 0;
}
