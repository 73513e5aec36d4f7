/* With DM_IO_PROPOSAL_NAMES defined before including dm_io.h, code
 * written against the 2006 dm-devel proposal (bare OK / TIMEOUT /
 * CANCELLED / ERROR, IO_VM / IO_BVEC / IO_PAGE_LIST, struct dm_io_control,
 * struct dm_io_region_state, ...) compiles unchanged and runs a SYNC write
 * and reads (through IO_VM, IO_PAGE_LIST and IO_BVEC). */
#define DM_IO_PROPOSAL_NAMES
#include "helpers.h"
#include <string.h>

_Static_assert(OK == DM_IO_OK && TIMEOUT == DM_IO_TIMEOUT && CANCELLED == DM_IO_CANCELLED &&
		       ERROR == DM_IO_ERROR,
	       "state names");
_Static_assert(IO_PAGE_LIST == DM_IO_PAGE_LIST && IO_BVEC == DM_IO_BVEC && IO_VM == DM_IO_VM,
	       "memory type names");

struct io_result {
	int ok, timeout, cancelled, error;
};

/* A notify function in the proposal's style. */
static void io_done(struct dm_io_region_state *state, void *context)
{
	struct io_result *res = context;
	switch (state->state) {
	case OK:
		res->ok++;
		break;
	case TIMEOUT:
		res->timeout++;
		break;
	case CANCELLED:
		res->cancelled++;
		break;
	case ERROR:
		res->error++;
		break;
	}
}

static int do_io(struct dm_io_client *client, int rw, struct dm_io_memory *mem,
		 struct dm_io_region *where, struct io_result *res)
{
	struct dm_io_control io_req;

	memset(res, 0, sizeof(*res));
	io_req.memory = *mem;
	io_req.rw = rw | DM_IO_SYNC;
	io_req.notify = io_done;
	io_req.context = res;
	io_req.client = client;
	io_req.timeout = 1000;
	io_req.flags = 0;
	return dm_io(&io_req, 1, where, NULL);
}

int main(void)
{
	enum { BYTES = 2 * 4096 };
	static char buf[BYTES], back[BYTES];
	struct dm_io_client *client;
	struct block_device *bdev;
	struct dm_io_region where;
	struct dm_io_memory mem;
	struct io_result res;
	struct page *p[2];
	struct dm_io_page_list pl[2];
	struct bio_vec bv[3];

	CHECK_OK(dm_io_client_create(1, 2, 4096, &client));
	bdev = make_dev("proposal", 1 << 20);
	check_block_size(bdev);
	where.bdev = bdev;
	where.sector = 16;
	where.count = BYTES / 512;

	fill_pattern(buf, BYTES, 71);
	mem.type = IO_VM;
	mem.ptr.vma = buf;
	mem.offset = 0;
	CHECK_OK(do_io(client, DM_IO_WRITE, &mem, &where, &res));
	CHECK(res.ok == 1 && res.timeout + res.cancelled + res.error == 0, "write: ok %d", res.ok);

	mem.ptr.vma = back;
	CHECK_OK(do_io(client, DM_IO_READ, &mem, &where, &res));
	CHECK(res.ok == 1 && memcmp(back, buf, BYTES) == 0, "IO_VM read differs");

	p[0] = dm_io_page_alloc();
	p[1] = dm_io_page_alloc();
	CHECK(p[0] && p[1], "dm_io_page_alloc");
	pl[0].next = &pl[1];
	pl[0].page = p[0];
	pl[1].next = NULL;
	pl[1].page = p[1];
	mem.type = IO_PAGE_LIST;
	mem.ptr.pl = pl;
	mem.offset = 0;
	CHECK_OK(do_io(client, DM_IO_READ, &mem, &where, &res));
	CHECK(res.ok == 1, "IO_PAGE_LIST read not OK");
	CHECK(memcmp(dm_io_page_address(p[0]), buf, 4096) == 0 &&
		      memcmp(dm_io_page_address(p[1]), buf + 4096, 4096) == 0,
	      "IO_PAGE_LIST read differs");

	memset(dm_io_page_address(p[0]), 0, 4096);
	memset(dm_io_page_address(p[1]), 0, 4096);
	bv[0].bv_page = p[1];
	bv[0].bv_len = 4096;
	bv[0].bv_offset = 0;
	bv[1].bv_page = p[0];
	bv[1].bv_len = 4096;
	bv[1].bv_offset = 0;
	bv[2].bv_page = NULL;
	bv[2].bv_len = 0;
	bv[2].bv_offset = 0;
	mem.type = IO_BVEC;
	mem.ptr.bv = bv;
	CHECK_OK(do_io(client, DM_IO_READ, &mem, &where, &res));
	CHECK(res.ok == 1, "IO_BVEC read not OK");
	CHECK(memcmp(dm_io_page_address(p[1]), buf, 4096) == 0 &&
		      memcmp(dm_io_page_address(p[0]), buf + 4096, 4096) == 0,
	      "IO_BVEC read differs");

	dm_io_client_destroy(client);
	dm_io_bdev_close(bdev);
	dm_io_page_free(p[0]);
	dm_io_page_free(p[1]);
	return 0;
}
