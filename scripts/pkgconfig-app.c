/*
 * pkgconfig-app: a tiny program built by scripts/test-install.sh against an
 * installed libdmio, found through pkg-config only (shared and -static).
 * It does a DM_IO_SYNC write then a DM_IO_SYNC read of 64 KiB on the file
 * given as argv[1] (at least 1 MiB), checks the data read back through
 * dm_io and with pread(2), and prints the library version.
 */
#define _POSIX_C_SOURCE 200809L
#include <dm_io.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BYTES (64 * 1024)

static int fail(const char *what, int rc)
{
	fprintf(stderr, "pkgconfig-app: %s failed: %d (%s)\n", what, rc, dm_io_last_error());
	return 1;
}

int main(int argc, char **argv)
{
	static unsigned char data[BYTES], back[BYTES], file[BYTES];
	struct dm_io_client *cl = NULL;
	struct block_device *bdev = NULL;
	struct dm_io_region reg;
	struct dm_io_control c;
	int rc, fd, i;

	if (argc != 2) {
		fprintf(stderr, "usage: %s FILE\n", argv[0]);
		return 2;
	}
	for (i = 0; i < BYTES; i++)
		data[i] = (unsigned char)(i * 31 + 7);

	rc = dm_io_client_create(1, 1, BYTES, &cl);
	if (rc)
		return fail("dm_io_client_create", rc);
	rc = dm_io_bdev_open(argv[1], 0, &bdev);
	if (rc)
		return fail("dm_io_bdev_open", rc);

	reg.bdev = bdev;
	reg.sector = 8;
	reg.count = BYTES / DM_IO_SECTOR_SIZE;

	memset(&c, 0, sizeof(c));
	c.memory.type = DM_IO_VM;
	c.memory.ptr.vma = data;
	c.rw = DM_IO_WRITE | DM_IO_SYNC;
	c.client = cl;
	rc = dm_io(&c, 1, &reg, NULL);
	if (rc)
		return fail("sync write", rc);

	c.memory.ptr.vma = back;
	c.rw = DM_IO_READ | DM_IO_SYNC;
	rc = dm_io(&c, 1, &reg, NULL);
	if (rc)
		return fail("sync read", rc);
	if (memcmp(back, data, BYTES) != 0) {
		fprintf(stderr, "pkgconfig-app: data read through dm_io differs\n");
		return 1;
	}

	fd = open(argv[1], O_RDONLY);
	if (fd < 0 || pread(fd, file, BYTES, 8 * DM_IO_SECTOR_SIZE) != BYTES) {
		perror("pkgconfig-app: pread");
		return 1;
	}
	close(fd);
	if (memcmp(file, data, BYTES) != 0) {
		fprintf(stderr, "pkgconfig-app: data in the file differs\n");
		return 1;
	}

	dm_io_bdev_close(bdev);
	dm_io_client_destroy(cl);
	printf("libdmio %s: sync write+read of %d bytes OK\n", dm_io_version(), BYTES);
	return 0;
}
