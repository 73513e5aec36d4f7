//! `struct dm_io_client`: private memory, an engine and a completion
//! thread. Its live requests (for cancel by device and destroy) are found
//! through the handle table, which holds every request until it is final.
//!
//! [`Client::submit`] is `dm_io` without the C: it checks the request
//! against the devices, splits regions into slot-sized operations, copies
//! write data into private memory and hands the operations to the engine.

use crate::completion::CompletionThread;
use crate::device::Device;
use crate::engine::{Engine, EngineKind, IoOp, OpKind, Timer};
use crate::error::{Error, Result};
use crate::handle;
use crate::memory::caller::CallerMemory;
use crate::memory::pool::{Pool, SlotRef, WaitBy};
use crate::memory::{lib_pages, pieces, PAGE_SIZE};
use crate::request::{CancelReason, Event, Mode, Notify, RegionSpec, Request, RequestOwner, State};
use crate::small::Small;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most devices (regions per request) a client may declare.
pub(crate) const MAX_DEVICES: u32 = 1024;
/// Largest `max_size` accepted (1 GiB).
pub(crate) const MAX_SIZE_LIMIT: u32 = 1 << 30;

static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The vector [`Client::start`] and `start_zero_copy` build their ops in,
    /// kept between calls.
    static BATCH: std::cell::RefCell<Vec<IoOp>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's op vector from the previous call (empty). Its capacity
/// survives only an engine that drains it: the completion thread's own
/// ring and the test engine do, so a callback that resubmits allocates no
/// vector; the reactor and the thread pool take the vector itself over
/// their channel, so a submission from any other thread allocates one. A
/// nested call (from a notify run inside `submit`) gets a new one.
fn take_batch() -> Vec<IoOp> {
    BATCH
        .with(|b| b.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)))
        .unwrap_or_default()
}

/// Keeps `batch` (emptied by the engine's `submit`, with its capacity
/// unless the engine took it) for the next call.
fn keep_batch(batch: Vec<IoOp>) {
    BATCH.with(|b| {
        if let Ok(mut b) = b.try_borrow_mut() {
            *b = batch;
        }
    });
}

/// Per-client counters (cheap atomics).
#[derive(Default, Debug)]
pub struct Counters {
    pub requests: AtomicU64,
    pub regions: AtomicU64,
    pub ok: AtomicU64,
    pub timeouts: AtomicU64,
    pub cancelled: AtomicU64,
    pub errors: AtomicU64,
    /// Final states (OK or ERROR) that came after a TIMEOUT.
    pub late: AtomicU64,
    /// Regions of hedged reads started after the first.
    pub hedges: AtomicU64,
}

/// A snapshot of a client's counters and memory use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub regions: u64,
    pub regions_in_flight: u64,
    pub ok: u64,
    pub timeouts: u64,
    pub cancelled: u64,
    pub errors: u64,
    pub late: u64,
    pub private_in_use: u64,
    pub private_high_water: u64,
    pub private_bound: u64,
    pub memory_waits: u64,
    pub engine: EngineKind,
    pub hedges: u64,
}

/// Shared state of one client.
pub struct Client {
    id: u64,
    devices: u32,
    min_ios: u32,
    max_size: u32,
    pool: Arc<Pool>,
    engine: Arc<dyn Engine>,
    /// Set by destroy; a `dm_io` that sees it after registering its
    /// request refuses it (see [`Client::submit`]).
    closed: AtomicBool,
    completion: CompletionThread,
    /// Hedged reads: ms before the next region starts; 0 = only on ERROR.
    hedge_ms: std::sync::atomic::AtomicU32,
    /// Reads into library pages cancelled while running: their ops still
    /// in the kernel ([`RequestOwner::detached_ops`]).
    detached: std::sync::atomic::AtomicI64,
    pub counters: Counters,
}

/// One `dm_io` call, decoded.
pub struct Submit {
    pub mode: Mode,
    pub flush: bool,
    pub fua: bool,
    pub timeout: Option<Duration>,
    pub regions: Small<RegionSpec>,
    pub mem: CallerMemory,
    pub notify: Option<Notify>,
    pub want_handle: bool,
}

/// What `dm_io` returns: the handle (if asked) and, for SYNC, the summary.
pub struct Submitted {
    pub handle: Option<usize>,
    pub result: i32,
}

/// Operation `kind` on region `i` of `req`: `len` bytes at byte `off` of
/// the region and of the caller's memory, with no buffer yet.
fn region_op(
    req: &Arc<Request>,
    i: usize,
    kind: OpKind,
    off: u64,
    len: u64,
    flush: bool,
    fua: bool,
) -> IoOp {
    let spec = req.spec(i);
    let write = kind == OpKind::Write;
    IoOp {
        kind,
        offset: spec.sector * 512 + off,
        len: len as u32,
        pre_flush: flush && write,
        fua: fua && write,
        sync: req.mode.sync,
        dev: Arc::clone(&spec.dev),
        sink: Arc::clone(req) as Arc<dyn crate::engine::OpSink>,
        region: i as u32,
        mem_off: off,
        slot: None,
        direct: 0,
        lib_chunk: None,
    }
}

fn total_ram() -> u64 {
    // SAFETY: sysinfo fills the zeroed struct; result checked.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return u64::MAX;
    }
    (si.totalram as u64).saturating_mul(si.mem_unit as u64)
}

/// Checks the proposal's arguments; returns (slots, slot size).
pub fn geometry(devices: u32, min_ios: u32, max_size: u32) -> Result<(u32, usize)> {
    if devices == 0 || devices > MAX_DEVICES {
        return Err(crate::einval!(
            "devices must be 1..={MAX_DEVICES}, got {devices}"
        ));
    }
    if min_ios == 0 {
        return Err(crate::einval!("min_ios must be at least 1"));
    }
    if max_size == 0 || max_size > MAX_SIZE_LIMIT {
        return Err(crate::einval!(
            "max_size must be 1..={MAX_SIZE_LIMIT} bytes, got {max_size}"
        ));
    }
    let slots = devices
        .checked_mul(min_ios)
        .ok_or_else(|| Error::new(libc::ENOMEM, "devices x min_ios overflows"))?;
    let slot_size = (max_size as usize).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let bytes = (slots as u64).saturating_mul(slot_size as u64);
    if bytes > total_ram() {
        return Err(Error::new(
            libc::ENOMEM,
            format!("private memory of {bytes} bytes exceeds this machine's RAM"),
        ));
    }
    Ok((slots, slot_size))
}

impl Client {
    /// `dm_io_client_create`: the io_uring reactor, or the thread pool
    /// where io_uring is refused (see [`crate::engine::choose`]).
    pub fn create(devices: u32, min_ios: u32, max_size: u32) -> Result<Arc<Client>> {
        let (slots, _) = geometry(devices, min_ios, max_size)?;
        let entries = (slots.saturating_mul(2))
            .clamp(64, 4096)
            .next_power_of_two();
        // One worker per slot (started on demand): every operation holds a slot,
        // so IO stuck in the kernel can never keep a worker from other IO.
        let engine = crate::engine::choose(entries, (slots as usize).min(4096))?;
        Client::with_engine(devices, min_ios, max_size, engine)
    }

    /// A client on the given engine (tests drive a manual one).
    pub fn with_engine(
        devices: u32,
        min_ios: u32,
        max_size: u32,
        engine: Arc<dyn Engine>,
    ) -> Result<Arc<Client>> {
        let (slots, slot_size) = geometry(devices, min_ios, max_size)?;
        let pool = Pool::new(slots, slot_size)?;
        engine.register_memory(pool.region());
        let completion = CompletionThread::start("dmio-notify", Arc::clone(&engine))
            .map_err(|e| Error::from_io("spawn completion thread", &e))?;
        Ok(Arc::new(Client {
            id: NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
            devices,
            min_ios,
            max_size,
            pool,
            engine,
            closed: AtomicBool::new(false),
            completion,
            hedge_ms: std::sync::atomic::AtomicU32::new(0),
            detached: std::sync::atomic::AtomicI64::new(0),
            counters: Counters::default(),
        }))
    }

    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn devices(&self) -> u32 {
        self.devices
    }
    pub fn min_ios(&self) -> u32 {
        self.min_ios
    }
    pub fn max_size(&self) -> u32 {
        self.max_size
    }
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
    pub fn engine_kind(&self) -> EngineKind {
        self.engine.kind()
    }
    /// Counters and memory use now. Each counter is read atomically, the
    /// set is not one instant's (cheap, lock-free apart from the pool's).
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let regions = ld(&c.regions);
        let finals = ld(&c.ok) + ld(&c.cancelled) + ld(&c.errors);
        let slot = self.pool.slot_size() as u64;
        Stats {
            requests: ld(&c.requests),
            regions,
            regions_in_flight: regions.saturating_sub(finals),
            ok: ld(&c.ok),
            timeouts: ld(&c.timeouts),
            cancelled: ld(&c.cancelled),
            errors: ld(&c.errors),
            late: ld(&c.late),
            private_in_use: self.pool.in_use() as u64 * slot,
            private_high_water: self.pool.high_water() * slot,
            private_bound: self.pool.bound(),
            memory_waits: self.pool.waits(),
            engine: self.engine.kind(),
            hedges: ld(&c.hedges),
        }
    }

    /// Sets the hedge delay of `DM_IO_READ_ANY` reads (0 = off: the next
    /// region starts only when the running one ends in ERROR).
    pub fn set_hedge(&self, ms: u32) {
        self.hedge_ms.store(ms, Ordering::Relaxed);
    }

    fn check(&self, s: &Submit) -> Result<()> {
        let n = s.regions.len();
        if n == 0 {
            return Err(crate::einval!("num_regions is 0"));
        }
        if n > self.devices as usize {
            return Err(crate::einval!(
                "{n} regions, but the client was created for {} devices",
                self.devices
            ));
        }
        if s.mode.read_any && s.mode.write {
            return Err(crate::einval!("DM_IO_READ_ANY applies to reads only"));
        }
        if s.mode.read_any {
            let c0 = s.regions[0].count;
            if s.regions.iter().any(|r| r.count != c0) {
                return Err(crate::einval!(
                    "DM_IO_READ_ANY regions must all have the same count"
                ));
            }
            if c0 * 512 > self.pool.slot_size() as u64 {
                return Err(crate::einval!(
                    "DM_IO_READ_ANY regions must fit in max_size ({} bytes)",
                    self.pool.slot_size()
                ));
            }
        }
        if !s.mode.write {
            if n != 1 && !s.mode.read_any {
                return Err(crate::einval!(
                    "a read names exactly one region (or uses DM_IO_READ_ANY), got {n}"
                ));
            }
            if s.flush || s.fua {
                return Err(crate::einval!(
                    "DM_IO_FLUSH and DM_IO_FUA apply to writes only"
                ));
            }
        }
        if !s.mode.sync && s.notify.is_none() {
            return Err(crate::einval!(
                "an asynchronous request needs a notify function"
            ));
        }
        let mut need = 0u64;
        for (i, r) in s.regions.iter().enumerate() {
            if s.mode.write && r.dev.read_only() {
                return Err(Error::new(
                    libc::EBADF,
                    format!("region {i}: device opened read-only"),
                ));
            }
            if r.count == 0 {
                if s.mode.write && s.flush {
                    continue;
                }
                return Err(crate::einval!(
                    "region {i}: count is 0 (allowed only for a DM_IO_FLUSH write)"
                ));
            }
            let end = r.sector.checked_add(r.count);
            if end.is_none_or(|e| e > r.dev.sectors()) {
                return Err(crate::einval!(
                    "region {i}: sectors {}+{} beyond the device end ({} sectors)",
                    r.sector,
                    r.count,
                    r.dev.sectors()
                ));
            }
            let lbs_sectors = (r.dev.logical_block_size() / 512) as u64;
            if r.sector % lbs_sectors != 0 || r.count % lbs_sectors != 0 {
                return Err(crate::einval!(
                    "region {i}: sector {} / count {} not aligned to the device's {}-byte blocks",
                    r.sector,
                    r.count,
                    r.dev.logical_block_size()
                ));
            }
            need = need.max(r.count * 512);
        }
        if (s.mem.len() as u64) < need {
            return Err(crate::einval!(
                "memory covers {} bytes, regions need {need}",
                s.mem.len()
            ));
        }
        if s.mode.zero_copy {
            self.check_zero_copy(s)?;
        }
        Ok(())
    }

    /// `DM_IO_ZERO_COPY`: every op (a `max_size` piece of a region) must
    /// find its bytes in one segment of the caller's memory, aligned as
    /// O_DIRECT needs on its device.
    fn check_zero_copy(&self, s: &Submit) -> Result<()> {
        if s.mode.read_any {
            return Err(crate::einval!(
                "DM_IO_ZERO_COPY cannot be combined with DM_IO_READ_ANY"
            ));
        }
        let slot = self.pool.slot_size() as u64;
        for (i, r) in s.regions.iter().enumerate() {
            let align = if r.dev.direct() {
                r.dev.logical_block_size() as usize
            } else {
                1
            };
            for (off, len) in pieces(r.count * 512, slot) {
                match s.mem.span_addr(off as usize, len as usize) {
                    Some(a) if a % align == 0 => {}
                    Some(a) => {
                        return Err(crate::einval!(
                            "DM_IO_ZERO_COPY: region {i}: memory at {a:#x} is not aligned \
                             to the device's {align} bytes (O_DIRECT)"
                        ))
                    }
                    None => {
                        return Err(crate::einval!(
                            "DM_IO_ZERO_COPY: region {i}: bytes {off}..{} of the memory \
                             are not contiguous (each max_size piece must be)",
                            off + len
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `s` is a read whose every op (a `max_size` piece) lands in
    /// whole library pages of one arena chunk, on the io_uring engine: it
    /// then runs in those pages, with no private memory and no copy, and a
    /// cancel detaches the pages instead of waiting ([`Mode::lib_pages`], [`lib_pages`]).
    fn in_library_pages(&self, s: &Submit) -> bool {
        // Cheap looks first: most reads are not into library pages.
        if s.mode.write
            || s.mode.read_any
            || s.mode.zero_copy
            || s.regions.len() != 1
            || !lib_pages::starts_in_arena(&s.mem)
            || self.engine.kind() != EngineKind::Uring
        {
            return false;
        }
        lib_pages::eligible(
            &s.mem,
            s.regions[0].count * 512,
            self.pool.slot_size() as u64,
            self.detached.load(Ordering::Relaxed),
            self.pool.bound(),
        )
    }

    /// `dm_io`: validates and starts the request. Waits for private memory
    /// while all of it is in use; for SYNC requests waits for the end.
    pub fn submit(self: &Arc<Self>, mut s: Submit) -> Result<Submitted> {
        self.check(&s)?;
        s.mode.lib_pages = self.in_library_pages(&s);
        let slot = self.pool.slot_size() as u64;
        let nreg = s.regions.len();
        let owner: Arc<dyn RequestOwner> = Arc::clone(self) as Arc<dyn RequestOwner>;
        let req = Request::new(
            self.id,
            s.mode,
            s.regions,
            |r| (r.count * 512).div_ceil(slot).max(1) as u32,
            s.mem,
            s.notify,
            owner,
        );
        // The handle table is also the live set ([`handle::live_of`]).
        // Registered first, then `closed` checked: a destroy that sets
        // `closed` and then scans the table either finds this request or
        // is seen here (both SeqCst, ordered by the table's lock).
        let token = handle::register(Arc::clone(&req), s.want_handle as u32);
        req.set_handle(token);
        if self.closed.load(Ordering::SeqCst) {
            handle::discard(token);
            return Err(Error::new(libc::ESHUTDOWN, "client is being destroyed"));
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .regions
            .fetch_add(nreg as u64, Ordering::Relaxed);
        if let Some(t) = s.timeout {
            if let Some(at) = Instant::now().checked_add(t) {
                req.arm_deadline(at);
            }
        }
        self.start(&req, s.flush, s.fua);
        let result = if s.mode.sync {
            // Called from a notify callback, our ops may wait for a wake-up
            // deferred to the end of the callback batch: not while we block.
            crate::engine::wake::flush_deferred_wakes();
            req.wait_sync()
        } else {
            0
        };
        Ok(Submitted {
            handle: s.want_handle.then_some(token),
            result,
        })
    }

    /// Takes a slot, handing queued ops to the engine before waiting so
    /// they can run (and free memory) meanwhile. `Ok(None)`: every region
    /// of `req` became final while waiting (cancel, deadline), so nothing
    /// is left to start; `Err`: the client is being destroyed.
    #[inline]
    fn slot(&self, req: &Request, batch: &mut Vec<IoOp>) -> Result<Option<SlotRef>> {
        match self.pool.try_acquire() {
            Some(s) => Ok(Some(s)),
            None => self.wait_for_slot(req, batch),
        }
    }

    /// [`Client::slot`] when all private memory is in use.
    #[cold]
    #[inline(never)]
    fn wait_for_slot(&self, req: &Request, batch: &mut Vec<IoOp>) -> Result<Option<SlotRef>> {
        self.engine.submit(batch);
        crate::engine::wake::flush_deferred_wakes();
        // On the completion thread, the ops holding the memory may be in
        // its own ring: keep reaping that while waiting.
        let ring = crate::completion::ring_running_io();
        let mut drive = || ring.iter().for_each(|r| r.drive_briefly());
        let by = if ring.is_some() {
            WaitBy::Poll(&mut drive)
        } else {
            WaitBy::Sleep
        };
        self.pool.acquire_unless(&|| req.all_final(), by)
    }

    fn start(&self, req: &Arc<Request>, flush: bool, fua: bool) {
        let slot_size = self.pool.slot_size() as u64;
        if req.mode.read_any {
            return self.start_any(req);
        }
        if req.mode.zero_copy || req.mode.lib_pages {
            return self.start_zero_copy(req, flush, fua);
        }
        let n = req.num_regions();
        let bytes = |i: usize| req.spec(i).count * 512;
        let mut batch = take_batch();
        let op = |kind, i: usize, off: u64, len: u64, slot: Option<SlotRef>| IoOp {
            slot,
            ..region_op(req, i, kind, off, len, flush, fua)
        };
        for i in 0..n {
            if bytes(i) == 0 {
                batch.push(op(OpKind::Flush, i, 0, 0, None));
            }
        }
        let total = (0..n).map(bytes).max().unwrap_or(0);
        let mut off = 0;
        let mut aborted = false;
        while off < total {
            let chunk = slot_size.min(total - off);
            let slot = match self.slot(req, &mut batch) {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(_) => {
                    aborted = true;
                    break;
                }
            };
            if req.mode.write {
                let users = req.fill_write_chunk(off, chunk as usize, &slot);
                if users.is_empty() && req.live_regions() == 0 {
                    break;
                }
                for i in users {
                    let len = slot_size.min(bytes(i as usize) - off);
                    batch.push(op(OpKind::Write, i as usize, off, len, Some(slot.clone())));
                }
            } else {
                // A read names one region: is it still live?
                if req.all_final() {
                    break;
                }
                batch.push(op(OpKind::Read, 0, off, chunk, Some(slot)));
            }
            off += chunk;
        }
        self.engine.submit(&mut batch);
        keep_batch(batch);
        if aborted {
            req.cancel_where(CancelReason::Shutdown, |_| true);
        }
    }

    /// Zero-copy and library pages: every op names the caller's memory
    /// directly (checked at submission); no private memory, so nothing
    /// waits and every op the request counted is started.
    fn start_zero_copy(&self, req: &Arc<Request>, flush: bool, fua: bool) {
        let piece = self.pool.slot_size() as u64;
        let kind = if req.mode.write {
            OpKind::Write
        } else {
            OpKind::Read
        };
        let mut batch = take_batch();
        for i in 0..req.num_regions() {
            let bytes = req.spec(i).count * 512;
            if bytes == 0 {
                batch.push(region_op(req, i, OpKind::Flush, 0, 0, flush, fua));
            }
            for (off, len) in pieces(bytes, piece) {
                let direct = req.direct_addr(off, len);
                batch.push(IoOp {
                    direct,
                    lib_chunk: req.mode.lib_pages.then(|| lib_pages::chunk_index(direct)),
                    ..region_op(req, i, kind, off, len, flush, fua)
                });
            }
        }
        self.engine.submit(&mut batch);
        keep_batch(batch);
    }

    /// Hedged read: one slot per region, taken now (so starting a hedge
    /// never waits for memory), then the request starts them in turn
    /// ([`RequestOwner::start_regions`]).
    fn start_any(&self, req: &Arc<Request>) {
        let n = req.num_regions();
        let mut regions = Vec::with_capacity(n);
        for i in 0..n {
            let slot = match self.slot(req, &mut Vec::new()) {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(_) => {
                    req.cancel_where(CancelReason::Shutdown, |_| true);
                    return;
                }
            };
            regions.push((i as u32, slot));
        }
        let rest = regions.split_off(1);
        let first = regions.pop().expect("at least one region");
        let ms = self.hedge_ms.load(Ordering::Relaxed);
        let every = (ms > 0).then(|| Duration::from_millis(ms as u64));
        req.start_any(first, rest, every);
    }

    /// `dm_io_cancel_by_handle`: cancels the request's live regions.
    pub fn cancel_request(&self, req: &Arc<Request>) -> Result<usize> {
        if req.client_id != self.id {
            return Err(crate::einval!("handle belongs to another client"));
        }
        Ok(req.cancel_where(CancelReason::User, |_| true))
    }

    /// `dm_io_cancel_by_device`: cancels every live region on `dev`.
    pub fn cancel_device(&self, dev: &Device) -> usize {
        let reqs = handle::live_of(self.id);
        let id = dev.id();
        reqs.iter()
            .map(|r| r.cancel_where(CancelReason::User, |d| d.id() == id))
            .sum()
    }

    /// `dm_io_client_destroy`: cancels everything, delivers the CANCELLED
    /// notifications, stops the threads. Kernel IO still running keeps its
    /// private memory; the reactor frees it when the IO ends.
    pub fn destroy(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let reqs = handle::live_of(self.id);
        self.pool.close();
        for r in &reqs {
            r.cancel_where(CancelReason::Shutdown, |_| true);
        }
        // Zero-copy IO runs in the caller's memory: its regions end
        // CANCELLED only when the kernel ends it, and those notifications
        // too are delivered before destroy returns. On the completion
        // thread the IO may be in its own ring, which must keep turning.
        let ring = crate::completion::ring_running_io();
        for r in reqs.iter().filter(|r| r.cancels_pending()) {
            r.wait_final(&mut || match &ring {
                Some(ring) => ring.drive_briefly(),
                None => std::thread::sleep(Duration::from_millis(1)),
            });
        }
        self.engine.shutdown();
        self.completion.stop();
    }

    /// Whether the caller runs inside one of this client's notify calls.
    pub fn in_notify(&self) -> bool {
        self.completion.is_current()
    }
}

impl RequestOwner for Client {
    fn observe(&self, state: State, late: bool) {
        let c = &self.counters;
        match state {
            State::Ok => c.ok.fetch_add(1, Ordering::Relaxed),
            State::Timeout => c.timeouts.fetch_add(1, Ordering::Relaxed),
            State::Cancelled => c.cancelled.fetch_add(1, Ordering::Relaxed),
            State::Error => c.errors.fetch_add(1, Ordering::Relaxed),
        };
        if late {
            c.late.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn deliver_async(&self, ev: Event) {
        self.completion.push(ev);
    }

    fn request_final(&self, _req: &Request) {
        // A dm_io of this request may be waiting for memory it no longer needs.
        self.pool.kick();
    }

    fn request_delivered(&self, req: &Request) {
        handle::release_lib(req.handle());
    }

    fn start_regions(&self, req: &Arc<Request>, regions: Vec<(u32, SlotRef)>, hedge: bool) {
        if hedge {
            let n = regions.len() as u64;
            self.counters.hedges.fetch_add(n, Ordering::Relaxed);
        }
        let mut ops: Vec<IoOp> = regions
            .into_iter()
            .map(|(i, slot)| {
                let bytes = req.spec(i as usize).count * 512;
                IoOp {
                    slot: Some(slot),
                    ..region_op(req, i as usize, OpKind::Read, 0, bytes, false, false)
                }
            })
            .collect();
        self.engine.submit(&mut ops);
    }

    fn arm_timer(&self, at: Instant, req: &Arc<Request>) {
        let timer: std::sync::Weak<dyn Timer> = Arc::downgrade(req) as std::sync::Weak<Request>;
        self.engine.arm_timer(at, timer, req.mode.sync);
    }

    fn detached_ops(&self, n: i64) {
        self.detached.fetch_add(n, Ordering::Relaxed);
    }
}
