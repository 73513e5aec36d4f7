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
//! The thread's loop and channel are the io_uring reactor's
//! (`../reactor.rs`).
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

use super::reactor::{Mailbox, Msg, Reactor};
use super::uring::{new_eventfd, Waker};
use super::{CompletionRing, Engine, EngineKind, IoOp, Timer};
use crate::error::{Error, Result};
use blocking::Blocking;
pub(super) use local::LocalAio;
use ring::Core;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// Most iocbs in the kernel per context. Each context counts against the
/// system-wide `fs.aio-max-nr` (65536 by default).
const MAX_EVENTS: u32 = 4096;

/// Handle to a client's AIO reactor thread.
pub struct AioEngine {
    mailbox: Mailbox,
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
        let (mailbox, rx) = Mailbox::new(Arc::clone(&waker) as Arc<dyn super::Wake>);
        let blocking = Arc::new(Blocking::new(workers, !sys::has_fdsync()));
        let core = Core::new(ctx, Arc::clone(&waker)).with_blocking(Arc::clone(&blocking));
        std::thread::Builder::new()
            .name("dmio-aio".into())
            .spawn(move || Reactor::new(core, rx).run())
            .map_err(|e| Error::from_io("spawn AIO reactor", &e))?;
        Ok(Arc::new(AioEngine {
            mailbox,
            blocking,
            id: NEXT_ENGINE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            nr,
        }))
    }
}

impl Engine for AioEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Aio
    }

    fn submit(&self, ops: &mut Vec<IoOp>) {
        self.blocking.take(ops);
        local::offer(self.id, ops);
        self.mailbox.send_ops(ops);
    }

    fn arm_on_engine_thread(&self, at: Instant, timer: Weak<dyn Timer>) {
        self.mailbox.send(Msg::Deadline(at, timer));
    }

    fn completion_ring(&self) -> CompletionRing {
        match local::install(self.id, self.nr, Arc::clone(&self.blocking)) {
            Some(ring) => CompletionRing::aio(ring),
            None => CompletionRing::parked(),
        }
    }

    fn shutdown(&self) {
        self.blocking.shutdown();
        self.mailbox.send(Msg::Shutdown);
    }
}
