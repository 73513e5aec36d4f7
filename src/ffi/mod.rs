//! The C ABI: every exported function checks its arguments, calls safe
//! Rust, and maps the result, inside [`guard::boundary`] (`catch_unwind`,
//! so no panic reaches C, and `-errno`). The pointers C passes in are read
//! and written here and in [`memory`] only (docs/unsafe.md lists the other
//! places where raw memory is touched).
//!
//! Which exports are `unsafe`: exactly those with a precondition the library
//! cannot check, named in their `# Safety` section (which cbindgen copies
//! into `dm_io.h` with the rest of the doc comment). They read or write
//! through a pointer the caller passes (`dm_io_client_create`, `dm_io`,
//! `dm_io_client_stats`, the `dm_io_bdev_open*` calls,
//! `dm_io_bdev_set_faults`), or take back memory the caller must have
//! stopped using (`dm_io_page_free`). The opaque pointers (`dm_io_client`,
//! `block_device`, `dm_io_handle`, `page`) are never dereferenced: they are
//! looked up in the library's own tables and refused with `-EINVAL` when
//! unknown, so a function that takes only those is safe for any value,
//! NULL, stale or made up, and is a plain `extern "C" fn`. Clippy's
//! `not_unsafe_ptr_arg_deref` and `missing_safety_doc` hold the rule.
//!
//! Why this file is long (over 600 lines): it holds every export, in the
//! order `dm_io.h` declares them, and most of it is their doc comments,
//! which cbindgen copies into the header. cbindgen emits functions in the
//! order it reads them, a module's own items before its submodules', so
//! splitting the exports by theme would reorder the checked-in header. The
//! helpers they share live beside it: `guard.rs` (the boundary, pointer
//! checks), `memory.rs` (the memory descriptor), `types.rs` (the C types).

pub mod guard;
pub mod memory;
pub mod types;

use crate::client::{Client, Submit};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::handle;
use crate::notify::{CNotify, Notify};
use crate::registry::Registry;
use crate::request::{Mode, RegionSpec};
use crate::small::Small;
use std::os::raw::{c_char, c_int, c_uint, c_void};
use std::sync::Arc;
use std::time::Duration;
use types::*;

static CLIENTS: Registry<Arc<Client>> = Registry::new();
static DEVICES: Registry<Arc<Device>> = Registry::new();

#[inline(always)]
fn client_of(p: *mut dm_io_client) -> Result<Arc<Client>> {
    CLIENTS
        .get(p as usize)
        .ok_or_else(|| crate::einval!("not a live dm_io_client"))
}

#[inline(always)]
fn device_of(p: *const block_device) -> Result<Arc<Device>> {
    DEVICES
        .get(p as usize)
        .ok_or_else(|| crate::einval!("not an open block_device"))
}

/// C string argument to `&str`, or `EINVAL`.
///
/// # Safety
/// A non-NULL `p` must be a NUL-terminated string.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(crate::einval!("{what} is NULL"));
    }
    // SAFETY: non-null, NUL-terminated per contract.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| crate::einval!("{what} is not UTF-8"))
}

/// Creates a client: private memory for `devices × min_ios` operations of
/// up to `max_size` bytes each (rounded up to `DM_IO_PAGE_SIZE`), attached
/// to the engine the process's clients share: a few io_uring reactor
/// threads (or thread pools) and completion threads, one of each per two
/// CPUs by default (rounded up), at most 8 (`DMIO_THREADS=N` sets how
/// many), started with
/// the first client and kept for the life of the process. The client joins
/// the pair with the fewest clients. Its notify calls run on that
/// completion thread, one at a time, between those of the other clients
/// there: a callback that blocks delays theirs too. With `DMIO_ISOLATE=1`
/// in the environment at this call, the client gets a reactor (or pool)
/// and completion thread of its own instead, ended by its destroy.
///
/// - `devices`: most regions per request (1..1024).
/// - `min_ios`: requests (per device) that can run at once without waiting
///   for private memory.
/// - `max_size`: bytes per operation; larger regions are split.
/// - `cl`: receives the client; the caller owns it and frees it with
///   `dm_io_client_destroy`. Written only on success.
///
/// Private memory of up to 64 MiB is faulted in here (it is resident from
/// create to destroy, and IO never takes a page fault on it); a larger
/// pool is faulted in as IO first uses it.
///
/// Returns 0, or `-EINVAL` (a zero or out-of-range argument, `cl` NULL),
/// `-ENOMEM` (private memory larger than RAM, not mappable, or not there
/// to fault in), or, only when `DMIO_ENGINE` forces one engine, the errno
/// with which the kernel refuses it: `io_uring_setup`'s for
/// `DMIO_ENGINE=uring`, `io_setup`'s for `DMIO_ENGINE=aio` (`-EPERM`,
/// `-ENOSYS`, `-ENOMEM`, `-EAGAIN` past `fs.aio-max-nr`). By default the
/// client uses io_uring, else Linux native AIO, else a thread pool.
///
/// # Safety
/// `cl`, if not NULL, points to writable memory for a `struct dm_io_client *`.
#[no_mangle]
pub unsafe extern "C" fn dm_io_client_create(
    devices: c_uint,
    min_ios: c_uint,
    max_size: c_uint,
    cl: *mut *mut dm_io_client,
) -> c_int {
    guard::boundary("dm_io_client_create", || {
        guard::out(cl, "cl")?;
        let c = Client::create(devices, min_ios, max_size)?;
        let token = CLIENTS.insert(c);
        // SAFETY: `cl` passed `guard::out`; writable per this function's contract.
        unsafe { guard::write(cl, token as *mut dm_io_client) };
        Ok(0)
    })
}

/// Destroys a client. Every region not yet final ends CANCELLED (with
/// `error_code` `-ESHUTDOWN`) and those notifications are delivered before
/// this returns; it does not wait for kernel IO that is stuck: the library
/// keeps that IO's private memory until the kernel completes it, then frees
/// it. `DM_IO_ZERO_COPY` IO is the exception: it runs in the caller's
/// memory, so destroy waits until the kernel ends it (and its CANCELLED
/// notification is delivered). It never waits for another client's IO,
/// stuck or not; it waits for its completion thread to deliver this
/// client's notifications, so a blocking notify callback of another client
/// sharing that thread delays it. Called from a notify callback of another
/// client on the same completion thread, it delivers this client's
/// notifications right there, before it returns. Called from one of this
/// client's own notify callbacks, it returns at once and the client's
/// remaining notifications follow after that callback (its own completion
/// thread, with `DMIO_ISOLATE=1`, then ends). A NULL or already destroyed
/// client is ignored (see `dm_io_last_error`).
#[no_mangle]
pub extern "C" fn dm_io_client_destroy(cl: *mut dm_io_client) {
    guard::boundary("dm_io_client_destroy", || {
        let c = CLIENTS
            .remove(cl as usize)
            .ok_or_else(|| crate::einval!("not a live dm_io_client"))?;
        c.destroy();
        Ok(())
    })
}

const RW_KNOWN: c_int = DM_IO_WRITE | DM_IO_SYNC | DM_IO_FLUSH | DM_IO_FUA | DM_IO_READ_ANY;

/// Submits one request over `num_regions` regions.
///
/// A write sends the same memory to every region; a read names exactly one
/// region (or several holding the same data, with `DM_IO_READ_ANY`).
/// Regions larger than the client's `max_size` are split.
///
/// Memory: after a region is final, in particular after DM_IO_CANCELLED,
/// the library never reads or writes its memory again, even while its
/// kernel IO still runs (until then the memory must stay valid: see
/// Safety); a cancelled write's data on disk and a cancelled read's memory
/// are undefined. By default the memory may have any alignment: IO runs on
/// the client's private memory, and `dm_io` waits while all of it is in
/// use (bounded memory, never growth). With the io_uring engine, and with
/// the AIO engine on a device opened with O_DIRECT, a read into whole
/// pages from `dm_io_page_alloc` (each `max_size` piece within one
/// allocation chunk of 64 pages) runs in the pages, with no copy and the
/// same guarantee, except a read already going into pages the kernel
/// refused to register (`RLIMIT_MEMLOCK`, io_uring) or that AIO hands to
/// its thread pool: cancelled, it ends CANCELLED only when its IO ends.
///
/// With `DM_IO_ZERO_COPY` in `ctrl->flags` the IO runs in `ctrl->memory`
/// itself (no private memory, no copy, no wait for memory), which must be
/// aligned as O_DIRECT needs, one contiguous buffer per `max_size` piece
/// (adjacent pages or bio_vec entries count as one). A region cancelled
/// while its IO runs ends CANCELLED only when the kernel ends that IO.
///
/// Notify (`ctrl->notify`) is called once per region with a final state
/// (OK, CANCELLED or ERROR), preceded by at most one DM_IO_TIMEOUT when
/// `ctrl->timeout` ms pass while the region still runs (with
/// `DM_IO_CANCEL_ON_TIMEOUT` the region ends CANCELLED instead). For an
/// asynchronous request it is called from the client's completion thread,
/// never from inside `dm_io`; for `DM_IO_SYNC` it is called from inside
/// `dm_io`, in the calling thread. A notify callback may call any dm_io
/// function, a SYNC `dm_io` or one that waits for private memory included.
///
/// `hdl`, if not NULL, receives a referenced handle (written only on
/// success) that the caller releases with `dm_io_handle_put`.
///
/// A SYNC write with `DM_IO_RETURN_ON_TIMEOUT` in `ctrl->flags` returns
/// once every region has had its first notification (final, or TIMEOUT at
/// the deadline); the final notification of a region that timed out comes
/// later from the completion thread, as for an asynchronous request.
///
/// Returns 0 when an asynchronous request was started. A SYNC request
/// returns 0 when every region ended OK (for `DM_IO_READ_ANY`, when one
/// region ended OK and delivered the data); otherwise the `error_code` of the
/// first region that ended ERROR, else of the first CANCELLED region
/// (`-ETIMEDOUT` for its deadline, which without notify cancels
/// automatically, `-ECANCELED` for a cancel call, `-ESHUTDOWN` for destroy),
/// else (`DM_IO_RETURN_ON_TIMEOUT`, a region still running after its
/// TIMEOUT) `-ETIMEDOUT`.
/// Errors before anything starts: `-EINVAL` (NULL `ctrl`/`regions`, unknown
/// client or device, `num_regions` 0 or above the client's `devices`, a
/// read with more than one region without `DM_IO_READ_ANY`; a region with
/// `count` 0 (allowed only for a `DM_IO_FLUSH` write), past the device end,
/// overflowing, or not aligned to the device's logical block size; unknown
/// bits in `rw` or `flags`, `DM_IO_FLUSH`/`DM_IO_FUA` on a read,
/// `DM_IO_READ_ANY` on a write or with regions of different `count` or
/// above `max_size`; an unknown memory type, memory that is NULL or shorter
/// than the largest region, a page that is not from `dm_io_page_alloc`; no
/// notify without `DM_IO_SYNC`; `DM_IO_ZERO_COPY` memory not contiguous per
/// piece or not aligned, or with `DM_IO_READ_ANY`; `DM_IO_RETURN_ON_TIMEOUT`
/// without `DM_IO_SYNC`, on a read or with `DM_IO_ZERO_COPY`), `-EBADF` (write to a
/// device opened read-only), `-ESHUTDOWN` (client being destroyed).
///
/// How the library does this (threads, rings, private memory, library
/// pages and their detach on cancel) is in docs/design.md.
///
/// # Safety
/// `ctrl` (if not NULL) and `regions` (if not NULL, `num_regions` entries)
/// are readable; both are read during the call only. `ctrl->memory` holds
/// what it describes (at least `offset` plus the largest region's bytes at
/// `ptr.vma`, or a readable bio_vec array or page list that far) and stays
/// valid, neither freed nor reused, until each region's final notification
/// (for `DM_IO_SYNC`, until `dm_io` returns). `ctrl->notify`, if not NULL,
/// may be called with `ctrl->context` on the threads named above (with
/// `DM_IO_RETURN_ON_TIMEOUT`, after `dm_io` returned too, until each
/// region's final notification). `hdl`,
/// if not NULL, points to writable memory for a `struct dm_io_handle *`.
#[no_mangle]
pub unsafe extern "C" fn dm_io(
    ctrl: *mut dm_io_control,
    num_regions: c_uint,
    regions: *mut dm_io_region,
    hdl: *mut *mut dm_io_handle,
) -> c_int {
    guard::boundary("dm_io", || {
        // SAFETY: a non-NULL `ctrl` is the caller's valid control block.
        let ctrl = unsafe { guard::borrow(ctrl, "ctrl") }?;
        let client = client_of(ctrl.client)?;
        if !hdl.is_null() {
            guard::out(hdl, "hdl")?;
        }
        if num_regions == 0 {
            return Err(crate::einval!("num_regions is 0"));
        }
        if num_regions > client.devices() {
            return Err(crate::einval!(
                "{num_regions} regions, but the client was created for {} devices",
                client.devices()
            ));
        }
        // SAFETY: the caller lends `num_regions` regions (bounded above by
        // the client's device count).
        let regs = unsafe { guard::slice(regions, num_regions as usize, "regions") }?;
        if ctrl.rw & !RW_KNOWN != 0 {
            return Err(crate::einval!(
                "unknown bits {:#x} in rw",
                ctrl.rw & !RW_KNOWN
            ));
        }
        const FLAGS_KNOWN: c_uint =
            DM_IO_CANCEL_ON_TIMEOUT | DM_IO_ZERO_COPY | DM_IO_RETURN_ON_TIMEOUT;
        if ctrl.flags & !FLAGS_KNOWN != 0 {
            return Err(crate::einval!(
                "unknown bits {:#x} in flags",
                ctrl.flags & !FLAGS_KNOWN
            ));
        }
        #[inline(always)]
        fn spec(i: usize, r: &dm_io_region) -> Result<(RegionSpec, u64)> {
            let dev = device_of(r.bdev).map_err(|e| crate::einval!("region {i}: {}", e.msg))?;
            let bytes = r
                .count
                .checked_mul(512)
                .ok_or_else(|| crate::einval!("region {i}: count overflows"))?;
            let spec = RegionSpec {
                dev,
                sector: r.sector,
                count: r.count,
            };
            Ok((spec, bytes))
        }
        // One region (most requests): built in place, no loop.
        let (specs, need) = if let [r] = regs {
            let (s, bytes) = spec(0, r)?;
            (Small::One(s), bytes)
        } else {
            let mut need = 0u64;
            let mut specs = Vec::with_capacity(regs.len());
            for (i, r) in regs.iter().enumerate() {
                let (s, bytes) = spec(i, r)?;
                need = need.max(bytes);
                specs.push(s);
            }
            (Small::Many(specs), need)
        };
        // SAFETY: the memory descriptor is the caller's, lent for this request.
        let mem = unsafe { memory::resolve(&ctrl.memory, need) }?;
        let notify = ctrl.notify.map(|f| {
            Notify::C(CNotify {
                f,
                ctx: ctrl.context,
            })
        });
        let sub = Submit {
            mode: Mode {
                write: ctrl.rw & DM_IO_WRITE != 0,
                sync: ctrl.rw & DM_IO_SYNC != 0,
                cancel_on_timeout: ctrl.flags & DM_IO_CANCEL_ON_TIMEOUT != 0,
                read_any: ctrl.rw & DM_IO_READ_ANY != 0,
                zero_copy: ctrl.flags & DM_IO_ZERO_COPY != 0,
                return_on_timeout: ctrl.flags & DM_IO_RETURN_ON_TIMEOUT != 0,
                // Decided by the client from the memory.
                lib_pages: false,
            },
            flush: ctrl.rw & DM_IO_FLUSH != 0,
            fua: ctrl.rw & DM_IO_FUA != 0,
            timeout: (ctrl.timeout != 0).then(|| Duration::from_millis(ctrl.timeout as u64)),
            regions: specs,
            mem,
            notify,
            want_handle: !hdl.is_null(),
        };
        let done = client.submit(sub)?;
        if let Some(h) = done.handle {
            // SAFETY: `hdl` passed `guard::out` above; writable per this
            // function's contract.
            unsafe { guard::write(hdl, h as *mut dm_io_handle) };
        }
        Ok(done.result)
    })
}

/// Takes another reference to a request handle (for example to keep
/// `state->hdl` beyond a notify call). Returns `io`, or NULL when `io` is
/// not a live handle. Thread-safe.
#[no_mangle]
pub extern "C" fn dm_io_handle_get(io: *mut dm_io_handle) -> *mut dm_io_handle {
    guard::boundary("dm_io_handle_get", || {
        handle::get(io as usize).ok_or_else(|| crate::einval!("not a live dm_io_handle"))?;
        Ok(io)
    })
}

/// Releases one reference taken by `dm_io` or `dm_io_handle_get`. Returns
/// NULL when the caller's last reference is gone (the handle must not be
/// used again), else `io`. Putting a handle the caller holds no reference
/// to (a double put, or an unknown pointer) does nothing and returns NULL
/// (see `dm_io_last_error`). Releasing the handle does not cancel the IO.
#[no_mangle]
pub extern "C" fn dm_io_handle_put(io: *mut dm_io_handle) -> *mut dm_io_handle {
    guard::boundary("dm_io_handle_put", || match handle::put(io as usize) {
        Some(true) => Ok(io),
        Some(false) => Ok(std::ptr::null_mut()),
        None => Err(crate::einval!("no reference held on this dm_io_handle")),
    })
}

/// Cancels every region not yet final, of any request of client `cl`, that
/// is on `bdev`: each ends DM_IO_CANCELLED (`error_code` `-ECANCELED`),
/// notified as usual. When this returns the library no longer touches those
/// regions' memory, except `DM_IO_ZERO_COPY` regions whose IO still runs:
/// they end CANCELLED when the kernel ends that IO (the memory stays lent
/// until that notification). Returns the number of regions cancelled (0 if
/// none), or `-EINVAL` for an unknown client or device.
#[no_mangle]
pub extern "C" fn dm_io_cancel_by_device(cl: *mut dm_io_client, bdev: *mut block_device) -> c_int {
    guard::boundary("dm_io_cancel_by_device", || {
        let c = client_of(cl)?;
        let d = device_of(bdev)?;
        Ok(c.cancel_device(&d) as c_int)
    })
}

/// Cancels every region of request `hdl` that is not yet final (see
/// `dm_io_cancel_by_device`). Returns the number of regions cancelled (0
/// when the request is already done), or `-EINVAL` for an unknown client,
/// a dead handle, or a handle of another client.
#[no_mangle]
pub extern "C" fn dm_io_cancel_by_handle(cl: *mut dm_io_client, hdl: *mut dm_io_handle) -> c_int {
    guard::boundary("dm_io_cancel_by_handle", || {
        let c = client_of(cl)?;
        let req = handle::lookup(hdl as usize)
            .ok_or_else(|| crate::einval!("not a live dm_io_handle"))?;
        Ok(c.cancel_request(&req)? as c_int)
    })
}

/// Registers an opened device (with its faults) and writes it to `out`.
///
/// # Safety
/// `out` passed `guard::out` and points to writable memory.
unsafe fn open_with(
    dev: Result<Device>,
    spec: Option<&str>,
    out: *mut *mut block_device,
) -> Result<c_int> {
    let d = dev?;
    if let Some(s) = spec {
        d.faults.set(s)?;
    }
    let token = DEVICES.insert(Arc::new(d));
    // SAFETY: `out` passed `guard::out`, writable per this function's contract.
    unsafe { guard::write(out, token as *mut block_device) };
    Ok(0)
}

/// Copies the client's counters into `st`, writing at most `size` bytes
/// (pass `sizeof(struct dm_io_stats)`; a program built against an older,
/// shorter struct gets the fields it knows; bytes beyond the library's
/// struct are zeroed). Cheap: atomic counters, safe to call from notify.
/// Returns 0, or `-EINVAL` (unknown client, NULL `st`, `size` < 8).
///
/// # Safety
/// `st`, if not NULL, points to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dm_io_client_stats(
    cl: *mut dm_io_client,
    st: *mut dm_io_stats,
    size: usize,
) -> c_int {
    guard::boundary("dm_io_client_stats", || {
        let c = client_of(cl)?;
        if st.is_null() || size < 8 {
            return Err(crate::einval!("st is NULL or size below 8"));
        }
        let s = c.stats();
        let out = dm_io_stats {
            requests: s.requests,
            regions: s.regions,
            regions_in_flight: s.regions_in_flight,
            ok: s.ok,
            timeouts: s.timeouts,
            cancelled: s.cancelled,
            errors: s.errors,
            late_completions: s.late,
            private_bytes_in_use: s.private_in_use,
            private_bytes_high_water: s.private_high_water,
            private_bytes_bound: s.private_bound,
            memory_waits: s.memory_waits,
            engine: match s.engine {
                crate::engine::EngineKind::Uring => DM_IO_ENGINE_URING,
                crate::engine::EngineKind::Aio => DM_IO_ENGINE_AIO,
                crate::engine::EngineKind::Threads => DM_IO_ENGINE_THREADS,
                crate::engine::EngineKind::Manual => 0,
            },
            reserved: 0,
            hedges: s.hedges,
        };
        let ours = std::mem::size_of::<dm_io_stats>();
        let n = size.min(ours);
        // SAFETY: `st` is non-NULL and the caller promises `size` writable
        // bytes there; we write `n <= size` bytes from a local struct, then
        // zero any bytes between `ours` and `size`. Byte copies need no alignment.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &out as *const dm_io_stats as *const u8,
                st as *mut u8,
                n,
            );
            if size > ours {
                std::ptr::write_bytes((st as *mut u8).add(ours), 0, size - ours);
            }
        }
        Ok(0)
    })
}

/// Sets the hedge delay of the client's `DM_IO_READ_ANY` reads: when a
/// region has not completed `delay_ms` after it started, the next region
/// starts too (a backup request, as in "The Tail at Scale"). 0, the
/// default, turns hedging off: the next region starts only when the
/// running one ends in ERROR. Applies to reads submitted afterwards.
/// Returns 0 or `-EINVAL` (unknown client).
#[no_mangle]
pub extern "C" fn dm_io_client_set_hedge(cl: *mut dm_io_client, delay_ms: c_uint) -> c_int {
    guard::boundary("dm_io_client_set_hedge", || {
        client_of(cl)?.set_hedge(delay_ms);
        Ok(0)
    })
}

/// Opens a block device or regular file for dm_io. Uses O_DIRECT unless
/// `DM_IO_BDEV_BUFFERED` is given or the file system refuses it (tmpfs),
/// in which case IO goes through the page cache. Writes `*bdev` on success;
/// the caller closes it with `dm_io_bdev_close`.
///
/// Returns 0, `-EINVAL` (NULL argument, unknown flag), `-ENOTBLK` (neither
/// a block device nor a regular file), `-EOPNOTSUPP` (logical block size
/// above `DM_IO_PAGE_SIZE`), or the errno of open(2).
///
/// `path` may also name an NBD export, in the URI forms of the NBD
/// project's `doc/uri.md`: `nbd://HOST[:PORT]/EXPORT` (TCP, port 10809 by
/// default) or `nbd+unix:///EXPORT?socket=PATH`, with optional query
/// parameters `connect-timeout=MS` (5000: covers connect and handshake),
/// `silence=MS` (30000: a server that sends nothing for that long while
/// requests are outstanding is disconnected, and those regions end ERROR
/// `-ETIMEDOUT`) and `connections=N` (1, at most 16: IO is spread over N
/// connections when the server advertises multi-conn, else one is used).
/// The device's size and block size
/// come from the server; `DM_IO_BDEV_BUFFERED` is ignored. Opening then
/// also returns `-EPROTONOSUPPORT` (`nbds://` and the other TLS schemes,
/// vsock), `-EINVAL` (malformed URI, no host or socket, unknown parameter),
/// `-ETIMEDOUT` (no handshake within `connect-timeout`), `-ENOENT` (no such
/// export, or no such socket), `-ECONNREFUSED`, `-EPROTO` (the server broke
/// the protocol) and the errno of the connection. Regions on an NBD device
/// behave as on a local one (deadlines, TIMEOUT then a late final state,
/// cancel, destroy never waiting for the server), and also end ERROR with
/// `-ECONNRESET` (the connection broke), `-EPROTO` (the server broke the
/// protocol), `-ETIMEDOUT` (silence), `-ENOTCONN` (at once, while the
/// device reconnects in the background), `-EROFS` (a write to an export
/// the server marks read-only) or `-EOPNOTSUPP` (`DM_IO_FLUSH`/`DM_IO_FUA`
/// the server does not offer). Every byte the server sends is received
/// into library memory; a cancelled read's reply is read and dropped.
/// With the io_uring engine the connections are driven by io_uring socket
/// operations on the rings of the completion threads (no thread per
/// connection; a short-lived one reconnects after an outage); with the
/// thread-pool engine, or `DMIO_NBD_DRIVER=thread`, each connection has
/// an IO thread.
///
/// # Safety
/// `path`, if not NULL, is a NUL-terminated string; `bdev`, if not NULL,
/// points to writable memory for a `struct block_device *`.
#[no_mangle]
pub unsafe extern "C" fn dm_io_bdev_open(
    path: *const c_char,
    flags: c_uint,
    bdev: *mut *mut block_device,
) -> c_int {
    guard::boundary("dm_io_bdev_open", || {
        guard::out(bdev, "bdev")?;
        // SAFETY: a non-NULL `path` is a C string.
        let p = unsafe { str_arg(path, "path") }?;
        // SAFETY: `bdev` passed `guard::out`; writable per this function's contract.
        unsafe { open_with(Device::open(p, flags), None, bdev) }
    })
}

/// Like `dm_io_bdev_open` for an already open descriptor, which is
/// duplicated (the caller keeps and closes `fd`). O_DIRECT is used if `fd`
/// has it. Returns 0, `-EINVAL`, `-EBADF`, `-ENOTBLK` or `-EOPNOTSUPP`.
///
/// # Safety
/// `bdev`, if not NULL, points to writable memory for a `struct block_device *`.
#[no_mangle]
pub unsafe extern "C" fn dm_io_bdev_open_fd(
    fd: c_int,
    flags: c_uint,
    bdev: *mut *mut block_device,
) -> c_int {
    guard::boundary("dm_io_bdev_open_fd", || {
        guard::out(bdev, "bdev")?;
        // SAFETY: `bdev` passed `guard::out`; writable per this function's contract.
        unsafe { open_with(Device::from_fd(fd, flags), None, bdev) }
    })
}

/// Like `dm_io_bdev_open` (read-write, O_DIRECT where possible) with fault
/// injection set to `spec` (see `dm_io_bdev_set_faults`). Returns 0,
/// `-EINVAL` for a bad spec (message in `dm_io_last_error`), or the errors
/// of `dm_io_bdev_open`.
///
/// # Safety
/// `path` and `spec`, if not NULL, are NUL-terminated strings; `bdev`, if
/// not NULL, points to writable memory for a `struct block_device *`.
#[no_mangle]
pub unsafe extern "C" fn dm_io_bdev_open_faulty(
    path: *const c_char,
    spec: *const c_char,
    bdev: *mut *mut block_device,
) -> c_int {
    guard::boundary("dm_io_bdev_open_faulty", || {
        guard::out(bdev, "bdev")?;
        // SAFETY: non-NULL arguments are C strings.
        let (p, s) = unsafe { (str_arg(path, "path")?, str_arg(spec, "spec")?) };
        // SAFETY: `bdev` passed `guard::out`; writable per this function's contract.
        unsafe { open_with(Device::open(p, 0), Some(s), bdev) }
    })
}

/// Replaces the device's injected faults, effective for IO started from now
/// on; IO held by `hang` is looked at again within milliseconds. Rules are
/// separated by `;` or newlines:
///
/// - `delay 50ms` or `delay read=50ms write=200ms`: wait before starting IO;
/// - `error [reads|writes] [sectors=A-B] [errno=EIO]`: fail matching IO;
/// - `hang [reads|writes] [sectors=A-B]`: hold IO until the spec changes
///   (its private memory stays in use, exactly like stuck kernel IO);
/// - `flakey up=5s down=1s [drop_writes]`: alternately healthy and failing
///   (or, with `drop_writes`, losing writes while reporting success);
/// - an empty spec or `none` clears all faults.
///
/// `sectors=A-B` is inclusive, in 512-byte sectors. Durations take `us`,
/// `ms` or `s`. Returns 0 or `-EINVAL` (bad spec, unknown device).
///
/// # Safety
/// `spec`, if not NULL, is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dm_io_bdev_set_faults(
    bdev: *mut block_device,
    spec: *const c_char,
) -> c_int {
    guard::boundary("dm_io_bdev_set_faults", || {
        let d = device_of(bdev)?;
        // SAFETY: a non-NULL `spec` is a C string.
        let s = unsafe { str_arg(spec, "spec") }?;
        d.faults.set(s)?;
        Ok(0)
    })
}

/// Closes a device handle. IO still running on it keeps the underlying file
/// open until it completes; cancel it first if the caller must not wait.
/// A NULL or already closed handle is ignored.
#[no_mangle]
pub extern "C" fn dm_io_bdev_close(bdev: *mut block_device) {
    guard::boundary("dm_io_bdev_close", || {
        let dev = DEVICES
            .remove(bdev as usize)
            .ok_or_else(|| crate::einval!("not an open block_device"))?;
        // Finished requests kept for reuse may name it: dropped, so the
        // file closes when its last IO ends, as before they were kept.
        dev.mark_closed();
        crate::client::device_closed();
        let mut kept = Vec::new();
        CLIENTS.for_each(|c| kept.push(c.take_spares()));
        drop(kept); // may close the file: not inside the table's lookup
        Ok(())
    })
}

/// Size of the device in 512-byte sectors (0 for an unknown handle).
#[no_mangle]
pub extern "C" fn dm_io_bdev_sectors(bdev: *const block_device) -> sector_t {
    guard::boundary("dm_io_bdev_sectors", || Ok(device_of(bdev)?.sectors()))
}

/// Logical block size in bytes: region sectors and counts must be
/// multiples of it (0 for an unknown handle).
#[no_mangle]
pub extern "C" fn dm_io_bdev_block_size(bdev: *const block_device) -> c_uint {
    guard::boundary("dm_io_bdev_block_size", || {
        Ok(device_of(bdev)?.logical_block_size())
    })
}

/// 1 if the device does O_DIRECT IO, 0 if it goes through the page cache,
/// `-EINVAL` for an unknown handle.
#[no_mangle]
pub extern "C" fn dm_io_bdev_is_direct(bdev: *const block_device) -> c_int {
    guard::boundary("dm_io_bdev_is_direct", || {
        Ok(device_of(bdev)?.direct() as c_int)
    })
}

/// Allocates one zeroed, `DM_IO_PAGE_SIZE`-aligned page; NULL when out of
/// memory. Free it with `dm_io_page_free`. Pages come from chunks of 64
/// (the first 256 MiB of pages in use; beyond that, single allocations)
/// that stay mapped for the life of the process: a freed page is kept for
/// the next allocation. Reads into whole pages need no private memory
/// (see `dm_io`).
#[no_mangle]
pub extern "C" fn dm_io_page_alloc() -> *mut page {
    guard::boundary("dm_io_page_alloc", || {
        crate::memory::pages::alloc()
            .map(|a| a as *mut page)
            .ok_or_else(|| Error::new(libc::ENOMEM, "out of memory"))
    })
}

/// Frees a page from `dm_io_page_alloc`. NULL, a pointer that is not such a
/// page, or a page already freed is ignored (see `dm_io_last_error`).
///
/// # Safety
/// The page is not in the memory of a request that is not final (the
/// library may still write it, and the next `dm_io_page_alloc` hands it
/// out again), and the caller does not use its memory after this call.
#[no_mangle]
pub unsafe extern "C" fn dm_io_page_free(p: *mut page) {
    guard::boundary("dm_io_page_free", || {
        if p.is_null() {
            return Ok(());
        }
        if crate::memory::pages::free(p as usize) {
            Ok(())
        } else {
            Err(crate::einval!(
                "not a page from dm_io_page_alloc (or freed twice)"
            ))
        }
    })
}

/// The address of the page's `DM_IO_PAGE_SIZE` bytes (NULL for NULL).
#[no_mangle]
pub extern "C" fn dm_io_page_address(p: *const page) -> *mut c_void {
    guard::boundary("dm_io_page_address", || Ok(p as *mut c_void))
}

/// The message of this thread's last failed dm_io call (never NULL; empty
/// when none failed). Valid until this thread's next failing call.
#[no_mangle]
pub extern "C" fn dm_io_last_error() -> *const c_char {
    guard::boundary("dm_io_last_error", || Ok(guard::last_error_ptr()))
}

/// The library's version string, "MAJOR.MINOR.PATCH".
#[no_mangle]
pub extern "C" fn dm_io_version() -> *const c_char {
    static V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    guard::boundary("dm_io_version", || Ok(V.as_ptr() as *const c_char))
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_version_matches_cargo() {
        let v: Vec<i32> = env!("CARGO_PKG_VERSION")
            .split('.')
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(
            v,
            [
                super::DM_IO_VERSION_MAJOR,
                super::DM_IO_VERSION_MINOR,
                super::DM_IO_VERSION_PATCH
            ]
        );
    }
}
