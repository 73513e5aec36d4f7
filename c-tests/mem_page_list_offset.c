/* DM_IO_PAGE_LIST memory: a linked list of pages (not in allocation
 * order), with memory.offset inside the first page, exactly one page, and
 * past two whole pages (offset > 4096). A write takes exactly the bytes
 * from offset on (checked with pread and with a dm_io read back into the
 * list); a read fills exactly them and leaves the skipped pages and the
 * bytes after the data untouched. */
#include "helpers.h"
#include <string.h>

enum { NPAGES = 6, LEN = 3 * 4096, SECTORS = LEN / 512 };

static struct page *pages[NPAGES];
static struct dm_io_page_list pl[NPAGES];

static unsigned char *pl_byte(size_t pos)
{
	struct dm_io_page_list *e = pl;
	while (pos >= DM_IO_PAGE_SIZE) {
		e = e->next;
		CHECK(e, "logical byte beyond the page list");
		pos -= DM_IO_PAGE_SIZE;
	}
	return (unsigned char *)dm_io_page_address(e->page) + pos;
}

static void fill_pages(unsigned char v)
{
	for (int i = 0; i < NPAGES; i++)
		memset(dm_io_page_address(pages[i]), v, DM_IO_PAGE_SIZE);
}

/* Logical bytes outside [off, off + len) of the whole list still equal v. */
static void check_untouched(unsigned off, size_t len, unsigned char v, const char *what)
{
	for (size_t i = 0; i < (size_t)NPAGES * DM_IO_PAGE_SIZE; i++) {
		if (i >= off && i < off + len)
			continue;
		unsigned char b = *pl_byte(i);
		CHECK(b == v, "%s: logical byte %zu changed to %#x", what, i, b);
	}
}

static int pl_io(struct dm_io_client *cl, int rw, struct block_device *dev, uint64_t sector,
		 unsigned off)
{
	struct dm_io_memory m;
	memset(&m, 0, sizeof(m));
	m.type = DM_IO_PAGE_LIST;
	m.ptr.pl = pl;
	m.offset = off;
	return async_io_one(cl, rw, m, dev, sector, SECTORS);
}

int main(void)
{
	static const unsigned offsets[] = { 100, 4096, 2 * 4096 + 50 };
	static const int order[NPAGES] = { 4, 1, 5, 0, 3, 2 };
	const char *path = make_file("plist", 1 << 20);
	struct block_device *dev;
	CHECK_OK(dm_io_bdev_open(path, 0, &dev));
	check_block_size(dev);
	struct dm_io_client *cl = make_client(1, 2, 8192);
	for (int i = 0; i < NPAGES; i++)
		CHECK((pages[i] = dm_io_page_alloc()) != NULL, "dm_io_page_alloc");
	for (int i = 0; i < NPAGES; i++) {
		pl[i].page = pages[order[i]];
		pl[i].next = i + 1 < NPAGES ? &pl[i + 1] : NULL;
	}
	static unsigned char data[LEN], back[LEN];

	for (unsigned k = 0; k < sizeof(offsets) / sizeof(offsets[0]); k++) {
		unsigned off = offsets[k];
		uint64_t sector = 8 + 128 * (uint64_t)k;

		fill_pages(0xCD);
		fill_pattern(data, LEN, 500 + k);
		for (size_t i = 0; i < LEN; i++)
			*pl_byte(off + i) = data[i];
		CHECK_OK(pl_io(cl, DM_IO_WRITE, dev, sector, off));
		read_file(path, sector * 512, back, LEN);
		CHECK(memcmp(back, data, LEN) == 0, "offset %u: file differs after page-list write", off);
		check_untouched(off, LEN, 0xCD, "write");

		fill_pages(0x5A);
		CHECK_OK(pl_io(cl, DM_IO_READ, dev, sector, off));
		for (size_t i = 0; i < LEN; i++)
			back[i] = *pl_byte(off + i);
		CHECK(memcmp(back, data, LEN) == 0, "offset %u: dm_io read-back differs", off);
		check_untouched(off, LEN, 0x5A, "read-back");

		fill_pattern(data, LEN, 600 + k);
		write_file(path, (sector + 64) * 512, data, LEN);
		fill_pages(0xAB);
		CHECK_OK(pl_io(cl, DM_IO_READ, dev, sector + 64, off));
		for (size_t i = 0; i < LEN; i++)
			back[i] = *pl_byte(off + i);
		CHECK(memcmp(back, data, LEN) == 0, "offset %u: page-list read differs", off);
		check_untouched(off, LEN, 0xAB, "read");
	}
	dm_io_client_destroy(cl);
	dm_io_bdev_close(dev);
	for (int i = 0; i < NPAGES; i++)
		dm_io_page_free(pages[i]);
	return 0;
}
