//! The request / region state machine.
//!
//! One request names N regions. Each region moves
//!
//! ```text
//!   running ──deadline──▶ timed out ──kernel IO ends──▶ OK | ERROR
//!      │                     │
//!      ├──kernel IO ends─────┼──────────────────────────▶ OK | ERROR
//!      └──cancel / deadline with CANCEL_ON_TIMEOUT / destroy──▶ CANCELLED
//! ```
//!
//! and produces exactly one final event, preceded by at most one TIMEOUT
//! event. All transitions happen under the request's lock, which is also
//! held while caller memory is copied, so once a region is final the caller's
//! memory is never touched again. This module knows nothing about how IO is
//! performed: engines report each operation's result through
//! [`OpSink::op_done`] and timers through [`Timer::on_timer`], the two
//! traits through which they see a request. The data path is in `data.rs`,
//! deadlines and cancellation in `cancel.rs`, hedged reads in `hedge.rs`,
//! the SYNC wait in `sync.rs`.

mod cancel;
mod data;
mod hedge;
mod sync;

pub use sync::summarize;

pub use crate::notify::{Notifier, Notify, State};

use crate::device::Device;
use crate::engine::{OpSink, Timer};
use crate::memory::caller::CallerMemory;
use crate::memory::pool::SlotRef;
use crate::small::Small;
use hedge::Standby;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a region was cancelled; its `error_code` tells the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// `dm_io_cancel_by_handle` / `dm_io_cancel_by_device`: `-ECANCELED`.
    User,
    /// The deadline passed with `DM_IO_CANCEL_ON_TIMEOUT`: `-ETIMEDOUT`.
    Deadline,
    /// `dm_io_client_destroy`: `-ESHUTDOWN`.
    Shutdown,
}

impl CancelReason {
    pub fn errno(self) -> i32 {
        match self {
            CancelReason::User => -libc::ECANCELED,
            CancelReason::Deadline => -libc::ETIMEDOUT,
            CancelReason::Shutdown => -libc::ESHUTDOWN,
        }
    }
}

/// One notification.
pub struct Event {
    pub req: Arc<Request>,
    pub index: u32,
    pub state: State,
    pub error: i32,
}

impl Event {
    pub fn is_final(&self) -> bool {
        self.state != State::Timeout
    }

    /// Calls the request's notify function with this event.
    pub fn deliver(&self) {
        if let Some(n) = &self.req.notify {
            n.notify(self.index, self.state, self.error, self.req.handle());
        }
    }
}

/// What a request needs from its client, without knowing the client.
pub trait RequestOwner: Send + Sync {
    /// Counts an event (`late`: a final state after TIMEOUT).
    fn observe(&self, state: State, late: bool);
    /// Queue an event of an asynchronous request for the completion thread.
    fn deliver_async(&self, ev: Event);
    /// Every region is final: the request leaves the client's live set.
    fn request_final(&self, req: &Request);
    /// Every final event has been delivered: the library's handle reference goes.
    fn request_delivered(&self, req: &Arc<Request>);
    /// An event given to [`RequestOwner::deliver_async`] was delivered
    /// (its notify call returned).
    fn event_delivered(&self) {}
    /// Hedged reads: starts the reads of whole `regions` of `req`, each
    /// into the private memory taken for it at submission; `hedge` says
    /// they are extra regions beyond the first.
    fn start_regions(&self, req: &Arc<Request>, regions: Vec<(u32, SlotRef)>, hedge: bool);
    /// Calls the request's [`Timer::on_timer`] at `at` while it lives.
    fn arm_timer(&self, at: Instant, req: &Arc<Request>);
    /// Library pages: `n` more (or, negative, fewer) ops still run in the
    /// kernel into pages a cancel detached.
    fn detached_ops(&self, _n: i64) {}
}

/// One region of a request.
pub struct RegionSpec {
    pub dev: Arc<Device>,
    pub sector: u64,
    pub count: u64,
}

struct Region {
    /// Operations not yet completed (including ones not yet submitted).
    outstanding: u32,
    /// First error seen (negative errno), 0 if none.
    error: i32,
    timed_out: bool,
    /// Zero-copy: cancelled (this errno) while its IO still runs in the
    /// caller's memory; ends CANCELLED when the last op completes.
    cancel_pending: i32,
    /// Library pages: an op of this region runs as a plain read (its chunk
    /// could not be registered), so its pages cannot be detached.
    plain: bool,
    fin: Option<(State, i32)>,
}

impl Region {
    /// A running region of `outstanding` operations.
    fn new(outstanding: u32) -> Region {
        Region {
            outstanding,
            error: 0,
            timed_out: false,
            cancel_pending: 0,
            plain: false,
            fin: None,
        }
    }
}

struct Inner {
    regions: Small<Region>,
    live: usize,
    queue: VecDeque<Event>,
    /// A SYNC wait on a completion thread that turns its ring meanwhile
    /// ([`Request::wait_sync`]): woken with the condition variable.
    waiter: Option<Arc<dyn crate::engine::Wake>>,
    deadline: Option<Instant>,
    deadline_fired: bool,
    /// Hedged reads: regions not started yet, in order, each with the
    /// private memory taken for it.
    standby: Standby,
    hedge_at: Option<Instant>,
    hedge_every: Option<Duration>,
    winner: Option<usize>,
    /// Library pages: ops that were running when a cancel detached the
    /// pages and have not completed yet (told to the owner).
    detached_ops: u32,
    /// `DM_IO_RETURN_ON_TIMEOUT`: the SYNC call returned with regions
    /// still running; their events go to the completion thread.
    returned: bool,
}

/// How the request behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    pub write: bool,
    pub sync: bool,
    pub cancel_on_timeout: bool,
    /// `DM_IO_READ_ANY`: the regions hold the same data; the first OK wins.
    pub read_any: bool,
    /// `DM_IO_ZERO_COPY`: the IO runs in the caller's memory, so a cancel
    /// cannot abandon it: a cancelled region ends when its IO does.
    pub zero_copy: bool,
    /// A read into whole library pages, run in those pages (no private
    /// memory): a cancel detaches the pages from the caller
    /// ([`crate::memory::lib_pages::detach`]) and the region ends at once.
    pub lib_pages: bool,
    /// `DM_IO_RETURN_ON_TIMEOUT` (SYNC writes): the SYNC wait ends once
    /// every region is final or timed out; the rest is asynchronous.
    pub return_on_timeout: bool,
}

/// One `dm_io` call.
pub struct Request {
    pub client_id: u64,
    pub mode: Mode,
    /// The regions as submitted (never change).
    specs: Small<RegionSpec>,
    handle: AtomicUsize,
    notify: Option<Notify>,
    mem: CallerMemory,
    owner: Arc<dyn RequestOwner>,
    inner: Mutex<Inner>,
    cv: Condvar,
    /// A SYNC request whose IO runs in the caller's own ring: wakes that
    /// ring when another thread ends a region or queues an event.
    ring_wake: std::sync::OnceLock<Arc<dyn crate::engine::Wake>>,
    /// Regions not yet final, readable without the lock.
    live_now: AtomicUsize,
    /// Final events not yet delivered by the completion thread.
    undelivered: AtomicUsize,
    /// Library pages: the pages were detached by a cancel (set before
    /// they are), so no op of this request may start in them any more.
    detached: AtomicBool,
    /// The handle-table slot of this request's previous use, kept for its
    /// next one (index + 1; 0: none): [`crate::handle::release_lib`] puts
    /// it here, [`crate::handle::register`] takes it, a drop frees it.
    handle_slot: AtomicU32,
}

impl Drop for Request {
    fn drop(&mut self) {
        let kept = *self.handle_slot.get_mut();
        if kept != 0 {
            crate::handle::free_slot(kept);
        }
    }
}

impl Request {
    /// `ops[i]` is how many operations region `i` will be split into.
    pub fn new(
        client_id: u64,
        mode: Mode,
        specs: Small<RegionSpec>,
        ops: impl Fn(&RegionSpec) -> u32,
        mem: CallerMemory,
        notify: Option<Notify>,
        owner: Arc<dyn RequestOwner>,
    ) -> Arc<Request> {
        Arc::new(Request::build(
            client_id, mode, specs, ops, mem, notify, owner,
        ))
    }

    /// [`Request::new`] into `spare`, a finished request of the same
    /// client that nothing else references any more (its allocation is
    /// reused: no allocation per IO), or a new one. A spare is reset in
    /// place: only the fields that change are written (its owner, client
    /// and condition variable stay), with no atomic operation; `owner` is
    /// called only for a new request.
    // Inlined into its one caller (`Client::submit`): out of line, its
    // arguments (the decoded `dm_io`) go through memory once more.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn renew(
        spare: Option<Arc<Request>>,
        client_id: u64,
        mode: Mode,
        specs: Small<RegionSpec>,
        ops: impl Fn(&RegionSpec) -> u32,
        mem: CallerMemory,
        notify: Option<Notify>,
        owner: impl FnOnce() -> Arc<dyn RequestOwner>,
    ) -> Arc<Request> {
        if let Some(mut r) = spare {
            if let Some(slot) = Arc::get_mut(&mut r) {
                if slot.client_id == client_id {
                    slot.reset(mode, specs, ops, mem, notify);
                    return r;
                }
            }
        }
        Arc::new(Request::build(
            client_id,
            mode,
            specs,
            ops,
            mem,
            notify,
            owner(),
        ))
    }

    /// Makes a finished request, referenced by nothing else, what
    /// [`Request::build`] would build for the same client.
    #[inline(always)]
    fn reset(
        &mut self,
        mode: Mode,
        specs: Small<RegionSpec>,
        ops: impl Fn(&RegionSpec) -> u32,
        mem: CallerMemory,
        notify: Option<Notify>,
    ) {
        let g = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        let n = match (&specs, &mut g.regions) {
            // One region (most requests): rewritten in place.
            (Small::One(spec), Small::One(r)) => {
                *r = Region::new(ops(spec));
                1
            }
            (Small::One(spec), regions) => {
                *regions = Small::One(Region::new(ops(spec)));
                1
            }
            (Small::Many(v), regions) => {
                *regions = v.iter().map(|spec| Region::new(ops(spec))).collect();
                v.len()
            }
        };
        g.live = n;
        if !g.queue.is_empty() {
            g.queue.clear();
        }
        g.waiter = None;
        g.deadline = None;
        g.deadline_fired = false;
        g.standby = Standby(None);
        g.hedge_at = None;
        g.hedge_every = None;
        g.winner = None;
        g.detached_ops = 0;
        g.returned = false;
        self.mode = mode;
        self.specs = specs;
        *self.handle.get_mut() = 0;
        self.notify = notify;
        self.mem = mem;
        self.ring_wake.take();
        *self.live_now.get_mut() = n;
        *self.undelivered.get_mut() = n;
        *self.detached.get_mut() = false;
    }

    /// Whether a finished request may be kept for [`Request::renew`]: it
    /// holds nothing that must go when its last user lets go (a closed
    /// device's file, the waker of a caller's own ring, a hedged read's
    /// private memory).
    pub fn reusable(&self) -> bool {
        !self.mode.read_any
            && self.ring_wake.get().is_none()
            && !self.specs.iter().any(|s| s.dev.is_closed())
    }

    fn build(
        client_id: u64,
        mode: Mode,
        specs: Small<RegionSpec>,
        ops: impl Fn(&RegionSpec) -> u32,
        mem: CallerMemory,
        notify: Option<Notify>,
        owner: Arc<dyn RequestOwner>,
    ) -> Request {
        let n = specs.len();
        let region = |spec: &RegionSpec| Region::new(ops(spec));
        // One region (most requests): built in place, no iterator.
        let regions = match &specs {
            Small::One(spec) => Small::One(region(spec)),
            Small::Many(v) => v.iter().map(region).collect(),
        };
        Request {
            client_id,
            mode,
            specs,
            handle: AtomicUsize::new(0),
            notify,
            mem,
            owner,
            inner: Mutex::new(Inner {
                regions,
                live: n,
                queue: VecDeque::new(),
                waiter: None,
                deadline: None,
                deadline_fired: false,
                standby: Standby(None),
                hedge_at: None,
                hedge_every: None,
                winner: None,
                detached_ops: 0,
                returned: false,
            }),
            cv: Condvar::new(),
            ring_wake: std::sync::OnceLock::new(),
            live_now: AtomicUsize::new(n),
            undelivered: AtomicUsize::new(n),
            detached: AtomicBool::new(false),
            handle_slot: AtomicU32::new(0),
        }
    }

    /// Whether every region is final (lock-free; for memory waiters).
    pub fn all_final(&self) -> bool {
        self.live_now.load(Ordering::Acquire) == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The C handle token of this request (0 until assigned).
    pub fn handle(&self) -> usize {
        self.handle.load(Ordering::Acquire)
    }

    pub fn set_handle(&self, h: usize) {
        self.handle.store(h, Ordering::Release);
    }

    /// Takes the handle-table slot kept from the previous use (0: none).
    pub fn take_handle_slot(&self) -> u32 {
        self.handle_slot.swap(0, Ordering::AcqRel)
    }

    /// Keeps handle-table slot `kept` (index + 1) for the next use; one
    /// kept before (never expected) is freed.
    pub fn keep_handle_slot(&self, kept: u32) {
        let old = self.handle_slot.swap(kept, Ordering::AcqRel);
        if old != 0 {
            crate::handle::free_slot(old);
        }
    }

    pub fn num_regions(&self) -> usize {
        self.specs.len()
    }

    /// Region `i` as submitted.
    pub fn spec(&self, i: usize) -> &RegionSpec {
        &self.specs[i]
    }

    /// The regions as submitted.
    pub fn specs(&self) -> &[RegionSpec] {
        &self.specs
    }

    /// Number of regions not yet final.
    pub fn live_regions(&self) -> usize {
        self.lock().live
    }

    /// Final state of region `i`, if it has one.
    pub fn region_final(&self, i: usize) -> Option<(State, i32)> {
        self.lock().regions[i].fin
    }

    #[inline]
    fn emit(self: &Arc<Self>, g: &mut Inner, index: u32, state: State, error: i32) {
        let late = matches!(state, State::Ok | State::Error) && g.regions[index as usize].timed_out;
        self.owner.observe(state, late);
        let ev = Event {
            req: Arc::clone(self),
            index,
            state,
            error,
        };
        if self.mode.sync && !g.returned {
            if self.notify.is_some() {
                g.queue.push_back(ev);
            }
            // The waiter sleeps on the condition variable only when it
            // turns no ring (`wait_sync`); std's notify is a system call
            // even with no one waiting, so only then.
            match (&g.waiter, self.ring_wake.get()) {
                (None, None) => self.cv.notify_all(),
                (waiter, own) => {
                    if let Some(w) = waiter {
                        w.wake();
                    }
                    if let Some(w) = own {
                        w.wake();
                    }
                }
            }
        } else {
            self.owner.deliver_async(ev);
        }
    }

    #[inline]
    fn finalize(self: &Arc<Self>, g: &mut Inner, i: usize, state: State, error: i32) {
        debug_assert!(g.regions[i].fin.is_none());
        // A hedged region that never started: its private memory goes now.
        if !g.standby.is_empty() {
            g.standby.retain(|(r, _)| *r as usize != i);
        }
        g.regions[i].fin = Some((state, error));
        g.live -= 1;
        self.live_now.fetch_sub(1, Ordering::AcqRel);
        self.emit(g, i as u32, state, error);
        if g.live == 0 {
            self.owner.request_final(self);
        }
    }

    /// The completion thread delivered an event of this request (any).
    pub fn event_delivered(&self) {
        self.owner.event_delivered();
    }

    /// The completion thread delivered a final event of this request.
    pub fn final_delivered(self: &Arc<Self>) {
        if self.undelivered.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.owner.request_delivered(self);
        }
    }
}

impl OpSink for Request {
    fn op_done(
        self: Arc<Self>,
        region: u32,
        mem_off: u64,
        slot: Option<SlotRef>,
        len: u32,
        res: i32,
    ) {
        self.op_ended(region, mem_off, slot, len, res);
    }

    /// Library pages: whether a cancel detached the pages (set before the
    /// pages are replaced, see `Request::detach`).
    fn detached(&self) -> bool {
        self.detached.load(Ordering::SeqCst)
    }

    /// Library pages: returns `false` when the pages are already detached
    /// or the region is final (the op must not start); otherwise a cancel
    /// of the region now waits for its IO.
    /// `DM_IO_RETURN_ON_TIMEOUT`: an op of a region still running after
    /// its SYNC call returned keeps its schedule (fault rules) where it is.
    fn keep_parked(&self, region: u32) -> bool {
        self.mode.return_on_timeout && self.lock().regions[region as usize].fin.is_none()
    }

    fn demote(&self, region: u32) -> bool {
        let i = region as usize;
        let mut g = self.lock();
        if self.detached() || g.regions[i].fin.is_some() {
            return false;
        }
        g.regions[i].plain = true;
        true
    }
}

impl Timer for Request {
    fn on_timer(self: Arc<Self>, now: Instant) {
        self.timer_fired(now);
    }
}
