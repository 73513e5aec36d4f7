//! `struct dm_io_client`: private memory, an engine and a completion
//! thread, shared with other clients (`shared.rs`) unless it asked for its
//! own (`DMIO_ISOLATE=1`). Its live requests (for cancel by device and destroy) are found
//! through the handle table, which holds every request until it is final.
//!
//! [`Client::submit`] is `dm_io` without the C: it checks the request
//! against the devices, splits regions into slot-sized operations, copies
//! write data into private memory and hands the operations to the engine.
//! The argument checks are in `check.rs`, the split into ops and their
//! start in `split.rs`.

mod check;
pub mod shared;
mod split;

pub use check::geometry;
use split::region_op;

use crate::completion::CompletionThread;
use crate::device::Device;
use crate::engine::{Engine, EngineKind, IoOp, OpKind, Timer};
use crate::error::{Error, Result};
use crate::handle;
use crate::memory::caller::CallerMemory;
use crate::memory::pool::{Pool, SlotRef};
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

/// Devices closed so far ([`device_closed`]): a request kept while one
/// closes may name it ([`Client::keep`]).
static DEVICE_CLOSES: AtomicU64 = AtomicU64::new(0);

/// A device handle was closed (after [`Device::mark_closed`], before the
/// clients' [`Client::take_spares`]).
pub fn device_closed() {
    DEVICE_CLOSES.fetch_add(1, Ordering::SeqCst);
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
    completion: Arc<CompletionThread>,
    /// The shared shard whose engine and completion thread these are;
    /// `None` when they are the client's own.
    shard: Option<Arc<shared::Shard>>,
    /// Hedged reads: ms before the next region starts; 0 = only on ERROR.
    hedge_ms: std::sync::atomic::AtomicU32,
    /// Events queued for the completion thread and not yet delivered
    /// (their notify call not returned): destroy waits for that thread
    /// only while some are.
    queued: AtomicU64,
    /// Reads into library pages cancelled while running: their ops still
    /// in the kernel ([`RequestOwner::detached_ops`]).
    detached: std::sync::atomic::AtomicI64,
    pub counters: Counters,
    /// Finished requests kept for reuse ([`Request::renew`]), so `dm_io`
    /// allocates nothing per IO once they cycle. Per client (its lock is
    /// no other client's), at most [`SPARE_MAX`] (and one more in
    /// `last_kept`), emptied at destroy.
    spare: std::sync::Mutex<Spare>,
    /// The last request kept, in front of `spare` (from `Arc::into_raw`;
    /// null when empty): a notify chain keeps one request and takes it back
    /// in the next callback without the lock. Taken by swapping it out, so
    /// exactly one holder ever turns it back into an `Arc`.
    last_kept: std::sync::atomic::AtomicPtr<Request>,
}

/// Finished requests kept per client: enough for a notify chain or a few
/// application threads to find one that is free, few enough to cost
/// nothing worth counting (their memory stays with the client).
const SPARE_MAX: usize = 16;

struct Spare {
    list: std::collections::VecDeque<Arc<Request>>,
    /// Set at destroy: nothing is kept any more (a kept request holds the
    /// client: the list is a reference cycle until emptied).
    closed: bool,
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

impl Client {
    /// `dm_io_client_create`: the io_uring reactor, or the thread pool
    /// where io_uring is refused (see [`crate::engine::choose`]), shared
    /// with the process's other clients ([`shared`]), or the client's own
    /// with `DMIO_ISOLATE=1`.
    pub fn create(devices: u32, min_ios: u32, max_size: u32) -> Result<Arc<Client>> {
        let (slots, slot_size) = geometry(devices, min_ios, max_size)?;
        if !shared::isolate_wanted() {
            let pool = Pool::new(slots, slot_size)?;
            let shard = shared::attach()?;
            shard.engine.register_memory(pool.region());
            return Ok(Client::assemble(
                devices,
                min_ios,
                max_size,
                pool,
                Arc::clone(&shard.engine),
                Arc::clone(&shard.completion),
                Some(shard),
            ));
        }
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
        Ok(Client::assemble(
            devices,
            min_ios,
            max_size,
            pool,
            engine,
            Arc::new(completion),
            None,
        ))
    }

    fn assemble(
        devices: u32,
        min_ios: u32,
        max_size: u32,
        pool: Arc<Pool>,
        engine: Arc<dyn Engine>,
        completion: Arc<CompletionThread>,
        shard: Option<Arc<shared::Shard>>,
    ) -> Arc<Client> {
        Arc::new(Client {
            id: NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
            devices,
            min_ios,
            max_size,
            pool,
            engine,
            closed: AtomicBool::new(false),
            completion,
            shard,
            queued: AtomicU64::new(0),
            hedge_ms: std::sync::atomic::AtomicU32::new(0),
            detached: std::sync::atomic::AtomicI64::new(0),
            counters: Counters::default(),
            last_kept: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            spare: std::sync::Mutex::new(Spare {
                list: std::collections::VecDeque::with_capacity(SPARE_MAX),
                closed: false,
            }),
        })
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

    /// `dm_io`: validates and starts the request. Waits for private memory
    /// while all of it is in use; for SYNC requests waits for the end.
    pub fn submit(self: &Arc<Self>, mut s: Submit) -> Result<Submitted> {
        self.check(&s)?;
        s.mode.lib_pages = self.in_library_pages(&s);
        let slot = self.pool.slot_size() as u64;
        let nreg = s.regions.len();
        let req = Request::renew(
            self.spare(),
            self.id,
            s.mode,
            s.regions,
            |r| (r.count * 512).div_ceil(slot).max(1) as u32,
            s.mem,
            s.notify,
            || Arc::clone(self) as Arc<dyn RequestOwner>,
        );
        // The handle table is also the live set ([`handle::live_of`]).
        // Registered first, then `closed` checked: a destroy that sets
        // `closed` and then scans the table either finds this request or
        // is seen here (the table is lock-free: a SeqCst fence on each
        // side orders the store before the load).
        let token = handle::register(Arc::clone(&req), s.want_handle as u32);
        req.set_handle(token);
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            handle::discard(token);
            return Err(Error::new(libc::ESHUTDOWN, "client is being destroyed"));
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .regions
            .fetch_add(nreg as u64, Ordering::Relaxed);
        // SYNC: its ops and timers may run in the caller's own ring while
        // `_ring` lives (set up before the deadline is armed).
        let _ring = if s.mode.sync {
            self.engine.sync_on_caller_ring().map(|(g, w)| {
                req.wait_in_ring(w);
                g
            })
        } else {
            None
        };
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

    fn spare_lock(&self) -> std::sync::MutexGuard<'_, Spare> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the request in [`Client::last_kept`] out (`None`: empty).
    fn take_last_kept(&self) -> Option<Arc<Request>> {
        let p = self.last_kept.swap(std::ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: a non-null pointer there came from `Arc::into_raw` in
        // `keep`, and the swap took it out: this is its only holder.
        (!p.is_null()).then(|| unsafe { Arc::from_raw(p) })
    }

    /// A kept request if nothing references it any more: the last one
    /// kept (no lock), else the oldest on the list (else it goes to the
    /// back: a timer or a caller's handle still holds it).
    fn spare(&self) -> Option<Arc<Request>> {
        if let Some(mut r) = self.take_last_kept() {
            if Arc::get_mut(&mut r).is_some() {
                return Some(r);
            }
            self.keep_locked(r);
            return None;
        }
        let mut s = self.spare_lock();
        let mut r = s.list.pop_front()?;
        if Arc::get_mut(&mut r).is_some() {
            return Some(r);
        }
        s.list.push_back(r);
        None
    }

    /// Keeps a finished request for reuse (see [`Client::spare`]): in
    /// [`Client::last_kept`] when that is empty (no lock), else on the list.
    fn keep(&self, req: Arc<Request>) {
        let closes = DEVICE_CLOSES.load(Ordering::SeqCst);
        if !req.reusable() || self.closed.load(Ordering::SeqCst) {
            return;
        }
        let p = Arc::into_raw(req) as *mut Request;
        if self
            .last_kept
            .compare_exchange(std::ptr::null_mut(), p, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            // SAFETY: the exchange failed: `p` is still ours, from
            // `Arc::into_raw` above.
            return self.keep_locked(unsafe { Arc::from_raw(p) });
        }
        // Published: another thread may take it now, so it is not read
        // again here. A destroy (`closed`) or a device close (which counts
        // `DEVICE_CLOSES`) after the looks above empties `last_kept` after
        // this store, or is seen here (SeqCst on both sides): then whatever
        // `last_kept` holds goes (it is only a cache).
        if self.closed.load(Ordering::SeqCst) || DEVICE_CLOSES.load(Ordering::SeqCst) != closes {
            drop(self.take_last_kept());
        }
    }

    /// [`Client::keep`] on the list, under its lock.
    fn keep_locked(&self, req: Arc<Request>) {
        let mut s = self.spare_lock();
        // Under the lock: a device closed meanwhile is seen here, or its
        // close empties the list after this ([`Client::take_spares`]).
        if !s.closed && s.list.len() < SPARE_MAX && req.reusable() {
            s.list.push_back(req);
            return;
        }
        drop(s);
        // Not kept: dropped outside the lock.
        drop(req);
    }

    /// Takes the kept requests out (a device was closed: they may name
    /// it); the caller drops them, outside any lock or table lookup.
    pub fn take_spares(&self) -> std::collections::VecDeque<Arc<Request>> {
        let mut all = std::mem::take(&mut self.spare_lock().list);
        all.extend(self.take_last_kept());
        all
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
    /// notifications, stops the client's own threads or leaves its shard.
    /// Kernel IO still running keeps its private memory; the reactor frees
    /// it when the IO ends. Waits for no other client's IO: only for the
    /// completion thread to deliver this client's events (which a
    /// blocking callback of another client on that thread delays).
    pub fn destroy(&self) {
        self.closed.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        let reqs = handle::live_of(self.id);
        self.pool.close();
        for r in &reqs {
            r.cancel_where(CancelReason::Shutdown, |_| true);
        }
        // Zero-copy IO runs in the caller's memory: its regions end
        // CANCELLED only when the kernel ends it, and those notifications
        // too are delivered before destroy returns. On the completion
        // thread the IO may be in its own ring, which must keep turning.
        // Likewise a destroy from the notify of a SYNC request whose IO
        // runs in this thread's own ring.
        let ring = crate::completion::ring_running_io();
        let own = crate::engine::uring::caller::runs_io();
        for r in reqs.iter().filter(|r| r.cancels_pending()) {
            r.wait_final(&mut || match &ring {
                Some(ring) => ring.drive_briefly(),
                None if own => crate::engine::uring::caller::drive_briefly(),
                None => std::thread::sleep(Duration::from_millis(1)),
            });
        }
        // Kept requests hold the client: the cycle ends here, and no
        // request is kept after this.
        let kept = {
            let mut s = self.spare_lock();
            s.closed = true;
            std::mem::take(&mut s.list)
        };
        drop(kept);
        // `closed` was set first (SeqCst): a `keep` that stores after
        // this swap sees it and takes its request back out.
        drop(self.take_last_kept());
        match &self.shard {
            Some(shard) => {
                self.engine.unregister_memory(self.pool.region());
                // Every region is final: no event is queued after this load.
                if self.queued.load(Ordering::SeqCst) != 0 {
                    self.completion.drain_client(self.id);
                }
                shard.detach();
            }
            None => {
                self.engine.shutdown();
                self.completion.stop();
            }
        }
    }

    /// Whether the caller runs inside one of this client's notify calls.
    pub fn in_notify(&self) -> bool {
        self.completion.is_current()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A kept request holds its client, so one is never left here once
        // the client goes (destroy empties it); this only makes sure.
        drop(self.take_last_kept());
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
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.completion.push(ev);
    }

    fn event_delivered(&self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }

    fn request_final(&self, _req: &Request) {
        // A dm_io of this request may be waiting for memory it no longer needs.
        self.pool.kick();
    }

    fn request_delivered(&self, req: &Arc<Request>) {
        // The handle entry's reference, when the entry went, is the one
        // kept (no count update); else another is taken.
        let own = handle::release_lib(req.handle()).unwrap_or_else(|| Arc::clone(req));
        self.keep(own);
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
                region_op(
                    req,
                    i as usize,
                    OpKind::Read,
                    0,
                    bytes,
                    false,
                    false,
                    Some(slot),
                )
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
