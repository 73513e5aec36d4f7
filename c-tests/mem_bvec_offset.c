/* DM_IO_BVEC memory: bio_vecs over pages from dm_io_page_alloc with
 * varying bv_offset / bv_len, ended by a bv_page == NULL entry, and a
 * non-zero memory.offset (inside the first bio_vec, and past the first
 * bio_vecs). A write takes exactly the described bytes (checked with pread
 * and with a dm_io read back into bio_vecs); a read fills exactly them and
 * leaves every other byte of the pages untouched. */
#include "helpers.h"
#include <string.h>

enum { NPAGES = 7, LEN = 3 * 4096, SECTORS = LEN / 512 };

static struct page *pages[NPAGES];
/* Entries: page, len, offset. Total data = 1000+4096+100+2000+4089+4096+3000 = 18381. */
static struct bio_vec bv[NPAGES + 1];

static void setup_bvec(void)
{
	static const unsigned lens[NPAGES] = { 1000, 4096, 100, 2000, 4089, 4096, 3000 };
	static const unsigned offs[NPAGES] = { 96, 0, 3000, 1, 7, 0, 1000 };
	/* Not in allocation order, so the library must follow the array. */
	static const int order[NPAGES] = { 3, 0, 6, 1, 5, 2, 4 };
	for (int i = 0; i < NPAGES; i++)
		bv[i] = (struct bio_vec){ pages[order[i]], lens[i], offs[i] };
	bv[NPAGES] = (struct bio_vec){ NULL, 0, 0 };
}

/* Address of logical byte `pos` of the bio_vec array's data. */
static unsigned char *bv_byte(size_t pos)
{
	for (int i = 0; bv[i].bv_page; i++) {
		if (pos < bv[i].bv_len)
			return (unsigned char *)dm_io_page_address(bv[i].bv_page) + bv[i].bv_offset + pos;
		pos -= bv[i].bv_len;
	}
	CHECK(0, "logical byte beyond the bio_vec data");
	return NULL;
}

static void fill_pages(unsigned char v)
{
	for (int i = 0; i < NPAGES; i++)
		memset(dm_io_page_address(pages[i]), v, DM_IO_PAGE_SIZE);
}

static void scatter(unsigned off, const unsigned char *src, size_t len)
{
	for (size_t i = 0; i < len; i++)
		*bv_byte(off + i) = src[i];
}

static void gather(unsigned off, unsigned char *dst, size_t len)
{
	for (size_t i = 0; i < len; i++)
		dst[i] = *bv_byte(off + i);
}

/* Every page byte outside logical [off, off + len) still equals v. */
static void check_untouched(unsigned off, size_t len, unsigned char v, const char *what)
{
	static unsigned char mark[NPAGES][DM_IO_PAGE_SIZE];
	memset(mark, 0, sizeof(mark));
	for (size_t i = 0; i < len; i++) {
		unsigned char *p = bv_byte(off + i);
		for (int k = 0; k < NPAGES; k++) {
			unsigned char *a = dm_io_page_address(pages[k]);
			if (p >= a && p < a + DM_IO_PAGE_SIZE)
				mark[k][p - a] = 1;
		}
	}
	for (int k = 0; k < NPAGES; k++) {
		unsigned char *a = dm_io_page_address(pages[k]);
		for (int j = 0; j < DM_IO_PAGE_SIZE; j++)
			CHECK(mark[k][j] || a[j] == v, "%s: page %d byte %d changed to %#x", what, k, j, a[j]);
	}
}

static struct dm_io_memory bvec_mem(unsigned off)
{
	struct dm_io_memory m;
	memset(&m, 0, sizeof(m));
	m.type = DM_IO_BVEC;
	m.ptr.bv = bv;
	m.offset = off;
	return m;
}

static int bvec_io(struct dm_io_client *cl, int rw, struct block_device *dev, uint64_t sector,
		   unsigned off)
{
	return async_io_one(cl, rw, bvec_mem(off), dev, sector, SECTORS);
}

int main(void)
{
	/* 333: inside the first bio_vec; 1500: inside the second; 5196 + 10:
	 * past the first three bio_vecs (1000 + 4096 + 100 = 5196). */
	static const unsigned offsets[] = { 333, 1500, 5206 };
	const char *path = make_file("bvec", 1 << 20);
	struct block_device *dev;
	CHECK_OK(dm_io_bdev_open(path, 0, &dev));
	check_block_size(dev);
	struct dm_io_client *cl = make_client(1, 2, 8192);
	for (int i = 0; i < NPAGES; i++)
		CHECK((pages[i] = dm_io_page_alloc()) != NULL, "dm_io_page_alloc");
	setup_bvec();
	static unsigned char data[LEN], back[LEN];

	for (unsigned k = 0; k < sizeof(offsets) / sizeof(offsets[0]); k++) {
		unsigned off = offsets[k];
		uint64_t sector = 16 + 128 * (uint64_t)k;

		/* Write from the bio_vecs. */
		fill_pages(0xCD);
		fill_pattern(data, LEN, 300 + k);
		scatter(off, data, LEN);
		CHECK_OK(bvec_io(cl, DM_IO_WRITE, dev, sector, off));
		read_file(path, sector * 512, back, LEN);
		CHECK(memcmp(back, data, LEN) == 0, "offset %u: file differs after bvec write", off);
		check_untouched(off, LEN, 0xCD, "write");

		/* Read the same sectors back into the bio_vecs through dm_io. */
		fill_pages(0x5A);
		CHECK_OK(bvec_io(cl, DM_IO_READ, dev, sector, off));
		gather(off, back, LEN);
		CHECK(memcmp(back, data, LEN) == 0, "offset %u: dm_io read-back differs", off);
		check_untouched(off, LEN, 0x5A, "read-back");

		/* Read data written with pwrite. */
		fill_pattern(data, LEN, 400 + k);
		write_file(path, (sector + 64) * 512, data, LEN);
		fill_pages(0xAB);
		CHECK_OK(bvec_io(cl, DM_IO_READ, dev, sector + 64, off));
		gather(off, back, LEN);
		CHECK(memcmp(back, data, LEN) == 0, "offset %u: bvec read differs", off);
		check_untouched(off, LEN, 0xAB, "read");
	}
	dm_io_client_destroy(cl);
	dm_io_bdev_close(dev);
	for (int i = 0; i < NPAGES; i++)
		dm_io_page_free(pages[i]);
	return 0;
}
