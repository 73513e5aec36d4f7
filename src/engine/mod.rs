//! Engines perform operations; they know nothing of requests, regions or
//! notify.
//!
//! The client splits a request into [`IoOp`]s and hands them to an
//! [`Engine`]. The engine starts each one (after asking the device's fault
//! table), and when the kernel is done with it calls [`IoOp::complete`],
//! which gives the result to the op's [`OpSink`] (the request's state
//! machine, which engines see only through that trait). Engines also keep
//! the requests' timers, as [`Timer`]s. Every op owns its private memory
//! (`slot`) from submission until `complete`, so the memory outlives any
//! caller that cancelled or any client that was destroyed meanwhile.

pub mod aio;
mod gate;
pub mod local;
mod reactor;
pub mod sched;
pub mod socket;
pub mod threads;
pub mod uring;
pub mod wake;
mod watch;

pub use wake::Wake;

#[cfg(test)]
pub mod manual;

use crate::device::Device;
use crate::memory::caller::CallerPtr;
use crate::memory::pool::SlotRef;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
    /// fdatasync of the device (an empty flush).
    Flush,
}

/// Where an op's result goes: the request it belongs to, as engines see it.
pub trait OpSink: Send + Sync {
    /// The op of region `region` for caller bytes `[mem_off, mem_off + len)`
    /// ended with `res` (byte count or negative errno); `slot` holds a
    /// read's data and is released here.
    fn op_done(
        self: Arc<Self>,
        region: u32,
        mem_off: u64,
        slot: Option<SlotRef>,
        len: u32,
        res: i32,
    );
    /// Library pages: whether a cancel detached the pages; an engine checks
    /// it (after making its registration current) before starting an op,
    /// and drops the op if so.
    fn detached(&self) -> bool;
    /// Library pages: the engine runs an op of `region` as a plain read (it
    /// could not register the chunk). `false` when the op must not start.
    fn demote(&self, region: u32) -> bool;
    /// Whether an op of `region` parked by fault rules must stay parked
    /// when the SYNC call that submitted it returns (its region still
    /// runs: `DM_IO_RETURN_ON_TIMEOUT`); `false`: it may end unstarted.
    fn keep_parked(&self, _region: u32) -> bool {
        false
    }
}

/// A timer an engine keeps for a request (its deadline, or the next region
/// of a hedged read).
pub trait Timer: Send + Sync {
    /// The timer went off; `now` is when the engine looked at its clock.
    fn on_timer(self: Arc<Self>, now: Instant);
}

/// One kernel operation: up to one slot of one region.
pub struct IoOp {
    pub kind: OpKind,
    /// Byte offset on the device.
    pub offset: u64,
    /// Bytes to transfer (0 for a flush).
    pub len: u32,
    /// Flush the device before this write (`DM_IO_FLUSH`).
    pub pre_flush: bool,
    /// Write through to stable media (`DM_IO_FUA`, RWF_DSYNC).
    pub fua: bool,
    /// The request's `DM_IO_SYNC`: its IO never goes to the completion
    /// thread's ring.
    pub sync: bool,
    pub dev: Arc<Device>,
    /// Who is told when the op ends.
    pub sink: Arc<dyn OpSink>,
    pub region: u32,
    /// Offset of this op's data in the caller's memory.
    pub mem_off: u64,
    /// The private memory `buf()` points into; owned by this op until it completes.
    pub slot: Option<SlotRef>,
    /// Zero-copy or library pages (no slot): the address in the caller's
    /// memory the op reads into or writes from. The caller lends it until
    /// the region is final, which for such a region is never before this
    /// op completes.
    pub direct: Option<CallerPtr>,
    /// A read straight into library pages (`direct`), which lie in this
    /// arena chunk ([`crate::memory::lib_pages`]): the engine reads as a fixed
    /// buffer of that chunk, so that a cancel can detach the pages from
    /// the caller ([`OpSink::detached`]).
    pub lib_chunk: Option<u16>,
}

impl IoOp {
    /// Start of the op's buffer: its private memory, or the caller's
    /// memory for a zero-copy op (null for a flush).
    pub fn buf(&self) -> *mut u8 {
        match &self.slot {
            Some(s) => s.as_ptr(),
            None => self.direct.map_or(std::ptr::null_mut(), CallerPtr::as_ptr),
        }
    }

    pub fn is_write(&self) -> bool {
        self.kind != OpKind::Read
    }

    /// First sector and sector count, for fault rules.
    pub fn sectors(&self) -> (u64, u64) {
        (self.offset / 512, self.len as u64 / 512)
    }

    /// The kernel (or a fault rule) is done with this op: `res` is the byte
    /// count or a negative errno. Releases the private memory, then tells
    /// the request.
    pub fn complete(self, res: i32) {
        let IoOp {
            sink,
            region,
            mem_off,
            slot,
            len,
            ..
        } = self;
        sink.op_done(region, mem_off, slot, len, res);
    }
}

/// Which engine runs a client's IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    #[default]
    Uring,
    /// Linux native AIO, where io_uring is refused.
    Aio,
    Threads,
    Manual,
}

/// Picks the engine from `DMIO_ENGINE`: unset or `auto` tries io_uring,
/// then Linux native AIO, then the thread pool, each when the kernel
/// refuses the one before; `uring` and `aio` fail with the kernel's errno
/// instead of falling back; `threads` forces the thread pool.
pub fn choose(ring_entries: u32, workers: usize) -> crate::error::Result<Arc<dyn Engine>> {
    let want = std::env::var("DMIO_ENGINE").unwrap_or_default();
    match want.as_str() {
        "" | "auto" => {
            if let Ok(e) = uring::UringEngine::new(ring_entries) {
                return Ok(e);
            }
            if let Ok(e) = aio::AioEngine::new(ring_entries, workers) {
                return Ok(e);
            }
            Ok(threads::ThreadsEngine::new(workers)?)
        }
        "uring" => Ok(uring::UringEngine::new(ring_entries)?),
        "aio" => Ok(aio::AioEngine::new(ring_entries, workers)?),
        "threads" => Ok(threads::ThreadsEngine::new(workers)?),
        other => Err(crate::einval!(
            "DMIO_ENGINE={other}: use auto, uring, aio or threads"
        )),
    }
}

/// The completion thread's side of an engine ([`Engine::completion_ring`]):
/// how that thread sleeps between notifications and drives the IO its
/// callbacks start. Every engine's completion thread runs the same loop
/// on it. Lives on that thread only.
pub struct CompletionRing(Ring);

enum Ring {
    /// No ring: the thread parks, and its callbacks' IO goes to the engine.
    Parked(Arc<wake::Parker>),
    /// Its own io_uring ring ([`local`]).
    Uring(local::LocalRing),
    /// Its own AIO context ([`aio`]'s `local.rs`).
    Aio(aio::LocalAio),
}

impl CompletionRing {
    /// For an engine without a ring of its own, on the calling thread.
    pub fn parked() -> CompletionRing {
        CompletionRing(Ring::Parked(wake::Parker::here()))
    }

    /// Parked, watching for work for `spin` before each sleep
    /// ([`wake::Parker::spinning`]).
    pub fn parked_spinning(spin: Duration) -> CompletionRing {
        CompletionRing(Ring::Parked(wake::Parker::spinning(spin)))
    }

    fn uring(ring: local::LocalRing) -> CompletionRing {
        CompletionRing(Ring::Uring(ring))
    }

    fn aio(ring: aio::LocalAio) -> CompletionRing {
        CompletionRing(Ring::Aio(ring))
    }

    /// How other threads wake the thread when they queue work for it.
    pub fn waker(&self) -> Arc<dyn Wake> {
        match &self.0 {
            Ring::Parked(p) => p.clone(),
            Ring::Uring(r) => r.waker(),
            Ring::Aio(r) => r.waker(),
        }
    }

    /// After one notify callback: starts the IO it queued at once when
    /// `more()` callbacks wait (see `local::submit_queued`).
    #[inline]
    pub fn after_callback(&self, more: &dyn Fn() -> bool) {
        match &self.0 {
            Ring::Parked(_) => {}
            Ring::Uring(r) => r.submit_queued(more),
            Ring::Aio(_) => aio::local::submit_queued(more),
        }
    }

    /// Starts what callbacks queued, sleeps until `pending()`, a wake-up,
    /// an IO or timer of its own, or `max`, then completes what ended
    /// (their events go to the queue). May return early.
    pub fn turn(&self, pending: &dyn Fn() -> bool, max: Option<Duration>) {
        match &self.0 {
            Ring::Parked(p) => p.park(pending, max),
            Ring::Uring(_) => local::turn(pending, max),
            Ring::Aio(_) => aio::local::turn(pending, max),
        }
    }

    /// Whether IO runs in this ring: a thread that waits on it (for
    /// private memory, or for zero-copy IO to end) must keep turning it.
    pub fn runs_io(&self) -> bool {
        match self.0 {
            Ring::Parked(_) => false,
            Ring::Uring(_) => local::active(),
            Ring::Aio(_) => aio::local::active(),
        }
    }

    /// A wait step for a thread that [`Self::runs_io`]: drives the ring
    /// for at most a millisecond.
    pub fn drive_briefly(&self) {
        self.turn(&|| false, Some(Duration::from_millis(1)));
    }

    /// The client is gone: new ops go elsewhere, deadlines are forgotten
    /// (every request is final); ops still running stay until [`Self::idle`].
    pub fn close(&self) {
        match &self.0 {
            Ring::Parked(_) => {}
            Ring::Uring(_) => local::close(),
            Ring::Aio(_) => aio::local::close(),
        }
    }

    /// No op of its own queued, in the kernel or parked by a fault rule.
    pub fn idle(&self) -> bool {
        match &self.0 {
            Ring::Parked(_) => true,
            Ring::Uring(_) => local::idle(),
            Ring::Aio(_) => aio::local::idle(),
        }
    }
}

/// An IO engine: the io_uring reactor, the AIO reactor, the thread pool,
/// or (for tests) a hand-driven one.
pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;
    /// Starts the ops; never waits for IO. Ops that cannot be started end
    /// through `complete` with a negative errno.
    /// Takes every op out of `ops` (which the caller may reuse).
    fn submit(&self, ops: &mut Vec<IoOp>);
    /// Starts one op (the usual read: one region in one slot) when the
    /// engine has a path for it that needs no vector: takes it out of `op`
    /// then; otherwise leaves it there, for [`Engine::submit`]. The op is
    /// lent by reference so that it moves once, into wherever it waits for
    /// its completion, and not at each step on the way.
    fn submit_one(&self, _op: &mut Option<IoOp>) {}
    /// Calls [`Timer::on_timer`] at `at` if the timer's request is still
    /// alive (its deadline, or the next region of a hedged read); `sync`:
    /// the request is `DM_IO_SYNC`.
    ///
    /// The one place that decides where a timer runs, for every engine.
    /// An asynchronous request's timer runs on its client's completion
    /// thread's ring when there is one, since that thread delivers the
    /// TIMEOUT (one wake-up instead of two): armed on that thread (from a
    /// callback, or a hedge timer firing there) it goes straight into the
    /// ring; armed on any other thread it is handed over
    /// ([`Engine::hand_to_completion_ring`]). A SYNC request's timer (its
    /// notify runs in the `dm_io` caller, which may be that very thread,
    /// blocked) runs in the caller's own ring while the caller waits there
    /// ([`Engine::arm_on_caller_ring`]), else, like any timer when there is
    /// no such ring, on the engine's own thread ([`Engine::arm_on_engine_thread`]).
    fn arm_timer(&self, at: Instant, timer: Weak<dyn Timer>, sync: bool) {
        // A request already gone needs no timer.
        if timer.strong_count() == 0 {
            return;
        }
        if sync && self.arm_on_caller_ring(at, &timer) {
            return;
        }
        if !sync {
            if let Some(id) = self.ring_id() {
                if local::offer_timer(id, at, &timer) {
                    return;
                }
            }
            if self.hand_to_completion_ring(at, &timer) {
                return;
            }
        }
        self.arm_on_engine_thread(at, timer);
    }
    /// A SYNC request about to start on the calling thread: with the
    /// io_uring engine, outside completion threads, its IO and timers run
    /// in the caller's own ring ([`uring::caller`]) while the returned
    /// guard lives, and the waker wakes that ring. `None`: the reactor.
    fn sync_on_caller_ring(&self) -> Option<(uring::caller::Guard, Arc<dyn Wake>)> {
        None
    }
    /// Keeps a SYNC request's timer in the calling thread's ring while it
    /// waits there ([`Engine::sync_on_caller_ring`]); `false` otherwise.
    fn arm_on_caller_ring(&self, _at: Instant, _timer: &Weak<dyn Timer>) -> bool {
        false
    }
    /// Names this engine's completion ring ([`local`]), if it has one.
    fn ring_id(&self) -> Option<u64> {
        None
    }
    /// Hands a timer to the completion thread's ring from another thread;
    /// `false` when there is no such ring (or it closed).
    fn hand_to_completion_ring(&self, _at: Instant, _timer: &Weak<dyn Timer>) -> bool {
        false
    }
    /// Runs a timer on the engine's own thread (reactor, dispatcher).
    fn arm_on_engine_thread(&self, at: Instant, timer: Weak<dyn Timer>);
    /// A client's private memory (start, bytes), mapped for as long as
    /// any op can name it; engines may register it with the kernel. An
    /// engine shared by many clients gets one call per client.
    fn register_memory(&self, _region: (usize, usize)) {}
    /// The client of `region` is destroyed: the engine forgets the memory
    /// (it may be unmapped once the ops still naming it complete, and its
    /// addresses reused). Ops already started keep what they run in.
    fn unregister_memory(&self, _region: (usize, usize)) {}
    /// Called on a client's completion thread when it starts: what that
    /// thread sleeps in. The io_uring engine gives it a ring of its own
    /// ([`local`]) for the asynchronous IO its notify callbacks start, so
    /// that resubmitting from notify never crosses threads; other engines
    /// (and io_uring when the kernel refuses a second ring) a parked sleep.
    fn completion_ring(&self) -> CompletionRing {
        CompletionRing::parked()
    }
    /// Accepts no more work; finishes (without waiting for it here) every op
    /// still in the kernel, then releases its resources. Only for an
    /// engine of one client: a shared engine lives for the process.
    fn shutdown(&self);
}

#[cfg(test)]
mod tests;
