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

pub mod local;
pub mod sched;
pub mod threads;
pub mod uring;
pub mod wake;

pub use wake::Wake;

#[cfg(test)]
pub mod manual;

use crate::device::Device;
use crate::memory::pool::SlotRef;
use std::sync::{Arc, Weak};
use std::time::Instant;

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
    /// Zero-copy (no slot): the address in the caller's memory the op
    /// reads into or writes from, 0 if none. The caller lends it until the
    /// region is final, which for a zero-copy region is never before this
    /// op completes.
    pub direct: usize,
    /// A read straight into library pages (`direct`), which lie in this
    /// arena chunk ([`crate::memory::pages`]): the engine reads as a fixed
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
            None => self.direct as *mut u8,
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
    Threads,
    Manual,
}

/// Picks the engine from `DMIO_ENGINE`: unset or `auto` tries io_uring
/// and falls back to threads when the kernel refuses it; `uring` fails
/// instead of falling back; `threads` forces the thread pool.
pub fn choose(ring_entries: u32, workers: usize) -> crate::error::Result<Arc<dyn Engine>> {
    let want = std::env::var("DMIO_ENGINE").unwrap_or_default();
    match want.as_str() {
        "" | "auto" => match uring::UringEngine::new(ring_entries) {
            Ok(e) => Ok(e),
            Err(_) => Ok(threads::ThreadsEngine::new(workers)?),
        },
        "uring" => Ok(uring::UringEngine::new(ring_entries)?),
        "threads" => Ok(threads::ThreadsEngine::new(workers)?),
        other => Err(crate::einval!(
            "DMIO_ENGINE={other}: use auto, uring or threads"
        )),
    }
}

/// An IO engine: the io_uring reactor, the thread pool, or (for tests) a
/// hand-driven one.
pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;
    /// Starts the ops; never waits for IO. Ops that cannot be started end
    /// through `complete` with a negative errno.
    /// Takes every op out of `ops` (which the caller may reuse).
    fn submit(&self, ops: &mut Vec<IoOp>);
    /// Calls [`Timer::on_timer`] at `at` if the timer's request is still
    /// alive (its deadline, or the next region of a hedged read); `sync`:
    /// the request is `DM_IO_SYNC`.
    fn arm_timer(&self, at: Instant, timer: Weak<dyn Timer>, sync: bool);
    /// The client's private memory (start, bytes), mapped for as long as
    /// any op can name it; engines may register it with the kernel.
    fn register_memory(&self, _region: (usize, usize)) {}
    /// Called on a client's completion thread when it starts: gives that
    /// thread a ring of its own ([`local`]) for the asynchronous IO its
    /// notify callbacks start, so that resubmitting from notify never
    /// crosses threads. Returns how other threads wake it, or `None` when
    /// the engine has no such ring (the thread then sleeps on its queue).
    fn start_local(&self) -> Option<Arc<dyn Wake>> {
        None
    }
    /// Accepts no more work; finishes (without waiting for it here) every op
    /// still in the kernel, then releases its resources.
    fn shutdown(&self);
}
