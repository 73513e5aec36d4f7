//! The Linux native AIO engine, for where io_uring is refused but AIO is
//! not (the default seccomp profiles of Docker and Kubernetes).
//!
//! One reactor thread owns an AIO context and a [`Sched`](super::sched::Sched)
//! (deadlines, delayed and held ops), as the io_uring reactor does. Callers
//! hand ops over a channel and wake the thread through an eventfd (only
//! when it sleeps), which a poll in the context watches, so the thread
//! sleeps in `io_getevents` until a completion, a wake-up or its next
//! timer (`ring.rs` says how, and what older kernels get). Ops are submitted in
//! batches (`io_submit`) and reaped in batches (`io_getevents`); an op in
//! the kernel is owned by its slab entry until its event is reaped, and
//! after `shutdown` the thread stays until every op has completed. AIO has
//! no fixed buffers. The completion thread gets an AIO context of its own
//! for the IO its callbacks start (`local.rs`); timers stay here.
//!
//! Buffered devices (no O_DIRECT) would block inside `io_submit`; their
//! ops go to a thread pool instead (`blocking.rs`).
//!
//! The files: `sys.rs` (the kernel ABI and system calls), `ring.rs` (slab,
//! backlog, batched submission, wait, reaping: the core both AIO threads
//! run), `local.rs` (the completion thread's context), `blocking.rs` (the
//! thread pool for what AIO would block on).

mod blocking;
pub(super) mod local;
mod ring;
mod sys;
#[cfg(test)]
mod tests;

use super::uring::{new_eventfd, Waker};
use super::{CompletionRing, Engine, EngineKind, IoOp, Timer};
use crate::error::{Error, Result};
use blocking::Blocking;
use crossbeam_channel::{Receiver, Sender};
pub(super) use local::LocalAio;
use ring::Core;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// Most iocbs in the kernel per context. Each context counts against the
/// system-wide `fs.aio-max-nr` (65536 by default).
const MAX_EVENTS: u32 = 4096;

enum Msg {
    /// One op, the usual case: sent by value, so the caller's op vector
    /// keeps its capacity (no allocation per IO).
    One(IoOp),
    Ops(Vec<IoOp>),
    Deadline(Instant, Weak<dyn Timer>),
    Shutdown,
}

/// Handle to a client's AIO reactor thread.
pub struct AioEngine {
    tx: Sender<Msg>,
    /// The reactor's waker, as deferrable ([`super::wake`]).
    waker: Arc<dyn super::Wake>,
    blocking: Arc<Blocking>,
    /// Names this engine to its completion thread's context (`local.rs`).
    id: u64,
    /// Events per AIO context.
    nr: u32,
}

static NEXT_ENGINE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The reactor's eventfd, non-blocking (it is read after a wake-up), with
/// the sleep announcement wakers look at.
fn waker() -> Result<Arc<Waker>> {
    Ok(Arc::new(Waker {
        efd: new_eventfd(libc::EFD_NONBLOCK)?,
        sleeping: AtomicBool::new(false),
        until: AtomicU64::new(u64::MAX),
    }))
}

impl AioEngine {
    /// Sets up an AIO context for up to `entries` ops in the kernel (the
    /// client's ring size: twice its private-memory slots, 64 to 4096, so
    /// IO stuck in the kernel leaves room for the rest about as in the
    /// io_uring engine's ring), so refusals surface here with the kernel's
    /// errno (`ENOSYS`, `EPERM`, or `EAGAIN` past `fs.aio-max-nr`), and
    /// starts the reactor. `workers`: the most threads of the pool for
    /// buffered devices and ops that would block.
    pub fn new(entries: u32, workers: usize) -> Result<Arc<AioEngine>> {
        let nr = entries.clamp(32, MAX_EVENTS);
        let ctx = sys::Context::new(nr)?;
        let waker = waker()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let blocking = Arc::new(Blocking::new(workers, !sys::has_fdsync()));
        let core = Core::new(ctx, Arc::clone(&waker)).with_blocking(Arc::clone(&blocking));
        std::thread::Builder::new()
            .name("dmio-aio".into())
            .spawn(move || {
                Reactor {
                    core,
                    rx,
                    shutting: false,
                }
                .run()
            })
            .map_err(|e| Error::from_io("spawn AIO reactor", &e))?;
        Ok(Arc::new(AioEngine {
            tx,
            waker: waker as Arc<dyn super::Wake>,
            blocking,
            id: NEXT_ENGINE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            nr,
        }))
    }

    fn send(&self, m: Msg) {
        match self.tx.send(m) {
            Ok(()) => super::wake::wake_or_defer(&self.waker),
            // The reactor is gone (it only stops after shutdown or a bug):
            // nothing can start the ops, so they fail here.
            Err(e) => match e.into_inner() {
                Msg::One(op) => op.complete(-libc::ESHUTDOWN),
                Msg::Ops(ops) => {
                    for op in ops {
                        op.complete(-libc::ESHUTDOWN);
                    }
                }
                _ => {}
            },
        }
    }
}

impl Engine for AioEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Aio
    }

    fn submit(&self, ops: &mut Vec<IoOp>) {
        self.blocking.take(ops);
        local::offer(self.id, ops);
        if !ops.is_empty() {
            self.send(match ops.len() {
                1 => Msg::One(ops.pop().expect("one op")),
                _ => Msg::Ops(std::mem::take(ops)),
            });
        }
    }

    fn arm_on_engine_thread(&self, at: Instant, timer: Weak<dyn Timer>) {
        self.send(Msg::Deadline(at, timer));
    }

    fn completion_ring(&self) -> CompletionRing {
        match local::install(self.id, self.nr, Arc::clone(&self.blocking)) {
            Some(ring) => CompletionRing::aio(ring),
            None => CompletionRing::parked(),
        }
    }

    fn shutdown(&self) {
        self.blocking.shutdown();
        self.send(Msg::Shutdown);
    }
}

/// The reactor thread: a [`Core`] fed through the engine's channel.
struct Reactor {
    core: Core,
    rx: Receiver<Msg>,
    shutting: bool,
}

impl Reactor {
    fn run(mut self) {
        loop {
            let now = Instant::now();
            while let Ok(m) = self.rx.try_recv() {
                self.take(m);
            }
            // The completion thread is woken once per batch of events (a
            // burst of deadlines, a batch of completions), not per event.
            super::wake::with_deferred_wakes(|| self.core.pump(now));
            if self.shutting && self.core.idle() {
                break;
            }
            let rx = &self.rx;
            self.core.wait(Some(now), &|| !rx.is_empty(), None);
            super::wake::with_deferred_wakes(|| self.core.reap());
        }
        // Every op has completed: dropping the core destroys the context.
    }

    fn take(&mut self, m: Msg) {
        match m {
            Msg::One(op) => self.core.admit(std::iter::once(op)),
            Msg::Ops(ops) => self.core.admit(ops),
            Msg::Deadline(at, req) => self.core.arm(at, req),
            Msg::Shutdown => {
                self.shutting = true;
                self.core.clear_deadlines();
            }
        }
    }
}
