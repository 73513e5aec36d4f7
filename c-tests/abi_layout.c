/* The C ABI is pinned: struct sizes and field offsets of dm_io.h are the
 * numbers src/ffi/types.rs asserts at compile time on the Rust side (64-bit
 * Linux: x86_64, aarch64), and dm_io_version() is the header's
 * DM_IO_VERSION_MAJOR.MINOR.PATCH. */
#include "helpers.h"
#include <string.h>

_Static_assert(sizeof(void *) == 8 && sizeof(long) == 8, "these numbers are for LP64 (64-bit Linux)");

_Static_assert(sizeof(sector_t) == 8, "sizeof(sector_t)");

_Static_assert(sizeof(struct dm_io_region) == 24, "sizeof(struct dm_io_region)");
_Static_assert(offsetof(struct dm_io_region, bdev) == 0, "dm_io_region.bdev");
_Static_assert(offsetof(struct dm_io_region, sector) == 8, "dm_io_region.sector");
_Static_assert(offsetof(struct dm_io_region, count) == 16, "dm_io_region.count");

_Static_assert(sizeof(struct dm_io_region_state) == 24, "sizeof(struct dm_io_region_state)");
_Static_assert(offsetof(struct dm_io_region_state, index) == 0, "dm_io_region_state.index");
_Static_assert(offsetof(struct dm_io_region_state, state) == 4, "dm_io_region_state.state");
_Static_assert(offsetof(struct dm_io_region_state, error_code) == 8, "dm_io_region_state.error_code");
_Static_assert(offsetof(struct dm_io_region_state, hdl) == 16, "dm_io_region_state.hdl");

_Static_assert(sizeof(struct dm_io_page_list) == 16, "sizeof(struct dm_io_page_list)");
_Static_assert(offsetof(struct dm_io_page_list, next) == 0, "dm_io_page_list.next");
_Static_assert(offsetof(struct dm_io_page_list, page) == 8, "dm_io_page_list.page");

_Static_assert(sizeof(struct bio_vec) == 16, "sizeof(struct bio_vec)");
_Static_assert(offsetof(struct bio_vec, bv_page) == 0, "bio_vec.bv_page");
_Static_assert(offsetof(struct bio_vec, bv_len) == 8, "bio_vec.bv_len");
_Static_assert(offsetof(struct bio_vec, bv_offset) == 12, "bio_vec.bv_offset");

_Static_assert(sizeof(struct dm_io_memory) == 24, "sizeof(struct dm_io_memory)");
_Static_assert(offsetof(struct dm_io_memory, type) == 0, "dm_io_memory.type");
_Static_assert(offsetof(struct dm_io_memory, ptr) == 8, "dm_io_memory.ptr");
_Static_assert(offsetof(struct dm_io_memory, offset) == 16, "dm_io_memory.offset");

_Static_assert(sizeof(struct dm_io_control) == 72, "sizeof(struct dm_io_control)");
_Static_assert(offsetof(struct dm_io_control, memory) == 0, "dm_io_control.memory");
_Static_assert(offsetof(struct dm_io_control, rw) == 24, "dm_io_control.rw");
_Static_assert(offsetof(struct dm_io_control, notify) == 32, "dm_io_control.notify");
_Static_assert(offsetof(struct dm_io_control, context) == 40, "dm_io_control.context");
_Static_assert(offsetof(struct dm_io_control, client) == 48, "dm_io_control.client");
_Static_assert(offsetof(struct dm_io_control, timeout) == 56, "dm_io_control.timeout");
_Static_assert(offsetof(struct dm_io_control, flags) == 64, "dm_io_control.flags");

_Static_assert(sizeof(enum dm_io_state) == 4, "sizeof(enum dm_io_state)");

int main(void)
{
	char want[64];
	const char *got = dm_io_version();

	snprintf(want, sizeof(want), "%d.%d.%d", (int)DM_IO_VERSION_MAJOR, (int)DM_IO_VERSION_MINOR,
		 (int)DM_IO_VERSION_PATCH);
	CHECK(got != NULL, "dm_io_version() returned NULL");
	CHECK(strcmp(got, want) == 0, "dm_io_version() is \"%s\", the header says \"%s\"", got, want);
	return 0;
}
