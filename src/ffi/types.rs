//! The C types of `dm_io.h`, laid out as in the dm-io proposal.
#![allow(non_camel_case_types)]

use std::os::raw::{c_int, c_uint, c_void};

// Defined with the request's notification (notify.rs), which calls the C
// function; part of the C ABI all the same.
pub use crate::notify::{dm_io_handle, dm_io_notify_fn, dm_io_region_state, dm_io_state};

/// A disk address or length in 512-byte sectors.
pub type sector_t = u64;

/// Opaque: a client created by `dm_io_client_create`.
pub struct dm_io_client {
    _private: [u8; 0],
}

/// Opaque: an open block device or regular file (`dm_io_bdev_open`).
pub struct block_device {
    _private: [u8; 0],
}

/// Opaque: one page of `DM_IO_PAGE_SIZE` bytes from `dm_io_page_alloc`.
/// Its address is `dm_io_page_address(page)`.
pub struct page {
    _private: [u8; 0],
}

/// Version of this header and library: major.
pub const DM_IO_VERSION_MAJOR: c_int = 0;
/// Version: minor.
pub const DM_IO_VERSION_MINOR: c_int = 1;
/// Version: patch.
pub const DM_IO_VERSION_PATCH: c_int = 0;

/// Size in bytes of a `struct page`.
pub const DM_IO_PAGE_SIZE: c_uint = 4096;
/// Bytes per sector (`sector_t` unit).
pub const DM_IO_SECTOR_SIZE: c_uint = 512;

/// `rw`: read from the one region into memory.
pub const DM_IO_READ: c_int = 0;
/// `rw`: write memory to every region (mirror).
pub const DM_IO_WRITE: c_int = 1;
/// `rw` flag: `dm_io` returns only when every region is final.
pub const DM_IO_SYNC: c_int = 0x10;
/// `rw` flag (writes): flush the device's volatile cache before writing
/// (like REQ_PREFLUSH). With `count == 0` a region is an empty flush.
pub const DM_IO_FLUSH: c_int = 0x20;
/// `rw` flag (writes): the write is on stable media when it completes (RWF_DSYNC).
pub const DM_IO_FUA: c_int = 0x40;

/// `rw` flag (reads): the regions hold the same data (mirror legs); read
/// the first region, start the next one after the client's hedge delay
/// (`dm_io_client_set_hedge`) or at once when one ends in ERROR, deliver
/// the first OK into memory and cancel the rest. Each region must fit in
/// the client's `max_size`, and all must have the same `count`.
pub const DM_IO_READ_ANY: c_int = 0x80;

/// `flags`: at the deadline, unfinished regions end CANCELLED instead of TIMEOUT.
pub const DM_IO_CANCEL_ON_TIMEOUT: c_uint = 1;

/// `flags`: zero-copy. The IO reads into and writes from `memory` itself,
/// with no private memory and no copy. The price: a cancel cannot abandon
/// IO the kernel runs in that memory, so a cancelled region (cancel call,
/// `DM_IO_CANCEL_ON_TIMEOUT`, destroy) ends CANCELLED only when its IO
/// ends, and `memory` stays lent until then; do not use it on a device
/// that may hang. TIMEOUT works as usual. Each `max_size` piece of a region
/// must lie in one contiguous buffer (`DM_IO_VM` memory always does),
/// aligned as O_DIRECT needs on the device; not with `DM_IO_READ_ANY`.
pub const DM_IO_ZERO_COPY: c_uint = 2;

/// `flags`, with `DM_IO_SYNC` on a write: `dm_io` returns as soon as every
/// region has had its first notification: its final state, or
/// `DM_IO_TIMEOUT` at the deadline. A region that timed out goes on as in
/// an asynchronous request: its final notification comes later from the
/// client's completion thread, so `notify` and `context` must stay valid
/// until then; `memory` is read during the call only (the data is in
/// private memory before any IO starts). Not with `DM_IO_ZERO_COPY`.
pub const DM_IO_RETURN_ON_TIMEOUT: c_uint = 4;

/// `dm_io_bdev_open` flag: open read-only (writes fail with -EBADF).
pub const DM_IO_BDEV_RDONLY: c_uint = 1;
/// `dm_io_bdev_open` flag: use the page cache instead of O_DIRECT.
pub const DM_IO_BDEV_BUFFERED: c_uint = 2;

/// Values of `dm_io_memory.type`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dm_io_mem_type {
    /// `ptr.pl`: a list of whole pages; `offset` skips bytes of the first.
    DM_IO_PAGE_LIST = 0,
    /// `ptr.bv`: an array of bio_vecs, ended early by an entry whose
    /// `bv_page` is NULL; `offset` skips bytes of the array's data.
    DM_IO_BVEC = 1,
    /// `ptr.vma`: contiguous memory starting `offset` bytes after `vma`.
    DM_IO_VM = 2,
}

/// One target or source: `count` sectors at `sector` of `bdev`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dm_io_region {
    pub bdev: *mut block_device,
    pub sector: sector_t,
    pub count: sector_t,
}

/// A page list: `page` then `next`, NULL-terminated.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dm_io_page_list {
    pub next: *mut dm_io_page_list,
    pub page: *mut page,
}

/// A piece of a page: `bv_len` bytes at `bv_offset` in `bv_page`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bio_vec {
    pub bv_page: *mut page,
    pub bv_len: c_uint,
    pub bv_offset: c_uint,
}

/// The memory pointer of a `dm_io_memory`, by `type`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union dm_io_memory_ptr {
    pub vma: *mut c_void,
    pub bv: *mut bio_vec,
    pub pl: *mut dm_io_page_list,
}

/// The caller's memory of a request.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct dm_io_memory {
    /// One of `enum dm_io_mem_type`.
    pub r#type: c_int,
    pub ptr: dm_io_memory_ptr,
    /// Bytes to skip at the start of the memory.
    pub offset: c_uint,
}

/// One request's parameters.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct dm_io_control {
    pub memory: dm_io_memory,
    /// `DM_IO_READ` or `DM_IO_WRITE`, or'ed with `DM_IO_SYNC`, `DM_IO_FLUSH`, `DM_IO_FUA`.
    pub rw: c_int,
    /// May be NULL only with `DM_IO_SYNC`.
    pub notify: dm_io_notify_fn,
    /// Passed to notify unchanged.
    pub context: *mut c_void,
    pub client: *mut dm_io_client,
    /// Deadline in milliseconds from submission; 0 = none. TIMEOUT never
    /// comes before it, and up to 50 us after it plus the time for the
    /// completion thread to be scheduled. A notify callback that runs past
    /// a deadline delays that TIMEOUT until it returns; with the io_uring
    /// engine a region cancelled meanwhile ends CANCELLED with no TIMEOUT
    /// before it.
    pub timeout: std::os::raw::c_ulong,
    /// `DM_IO_CANCEL_ON_TIMEOUT`, `DM_IO_ZERO_COPY`, or'ed, or 0.
    pub flags: c_uint,
}

/// The ABI pinned: the same numbers are `_Static_assert`ed in
/// `c-tests/abi_layout.c` against the header (64-bit Linux).
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<sector_t>() == 8);
    assert!(size_of::<dm_io_region>() == 24);
    assert!(offset_of!(dm_io_region, sector) == 8);
    assert!(offset_of!(dm_io_region, count) == 16);
    assert!(size_of::<dm_io_region_state>() == 24);
    assert!(offset_of!(dm_io_region_state, state) == 4);
    assert!(offset_of!(dm_io_region_state, error_code) == 8);
    assert!(offset_of!(dm_io_region_state, hdl) == 16);
    assert!(size_of::<dm_io_page_list>() == 16);
    assert!(offset_of!(dm_io_page_list, page) == 8);
    assert!(size_of::<bio_vec>() == 16);
    assert!(offset_of!(bio_vec, bv_len) == 8);
    assert!(offset_of!(bio_vec, bv_offset) == 12);
    assert!(size_of::<dm_io_memory>() == 24);
    assert!(offset_of!(dm_io_memory, ptr) == 8);
    assert!(offset_of!(dm_io_memory, offset) == 16);
    assert!(size_of::<dm_io_control>() == 72);
    assert!(offset_of!(dm_io_control, rw) == 24);
    assert!(offset_of!(dm_io_control, notify) == 32);
    assert!(offset_of!(dm_io_control, context) == 40);
    assert!(offset_of!(dm_io_control, client) == 48);
    assert!(offset_of!(dm_io_control, timeout) == 56);
    assert!(offset_of!(dm_io_control, flags) == 64);
    assert!(size_of::<dm_io_state>() == 4);
    assert!(size_of::<dm_io_stats>() == 112);
    assert!(offset_of!(dm_io_stats, engine) == 96);
    assert!(offset_of!(dm_io_stats, hedges) == 104);
};

/// `dm_io_stats.engine`: the io_uring reactor.
pub const DM_IO_ENGINE_URING: c_uint = 1;
/// `dm_io_stats.engine`: the thread-pool engine (io_uring and Linux AIO
/// refused, or `DMIO_ENGINE=threads`).
pub const DM_IO_ENGINE_THREADS: c_uint = 2;
/// `dm_io_stats.engine`: the Linux native AIO engine (io_uring refused,
/// as by the default seccomp profiles of Docker and Kubernetes, or
/// `DMIO_ENGINE=aio`).
pub const DM_IO_ENGINE_AIO: c_uint = 3;

/// A client's counters, filled by `dm_io_client_stats`. New fields are only
/// ever added at the end.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct dm_io_stats {
    /// `dm_io` calls accepted.
    pub requests: u64,
    /// Regions of those requests.
    pub regions: u64,
    /// Regions not yet final.
    pub regions_in_flight: u64,
    /// Regions that ended OK.
    pub ok: u64,
    /// TIMEOUT notifications.
    pub timeouts: u64,
    /// Regions that ended CANCELLED (by a cancel call, CANCEL_ON_TIMEOUT or destroy).
    pub cancelled: u64,
    /// Regions that ended ERROR.
    pub errors: u64,
    /// Final states (OK or ERROR) that came after a TIMEOUT.
    pub late_completions: u64,
    /// Private memory in use now, in bytes (includes memory held by
    /// cancelled IO still running in the kernel).
    pub private_bytes_in_use: u64,
    /// Most private memory ever in use, in bytes.
    pub private_bytes_high_water: u64,
    /// The private memory bound: `devices × min_ios × max_size` (rounded to pages).
    pub private_bytes_bound: u64,
    /// How many times `dm_io` had to wait for private memory.
    pub memory_waits: u64,
    /// The engine running this client's IO: `DM_IO_ENGINE_URING`,
    /// `DM_IO_ENGINE_AIO` or `DM_IO_ENGINE_THREADS`.
    pub engine: c_uint,
    pub reserved: c_uint,
    /// Regions of `DM_IO_READ_ANY` reads started after the first (hedges
    /// and retries after ERROR).
    pub hedges: u64,
}
