//! The io_uring reactor: one thread owns the ring.
//!
//! Callers hand ops over a channel and wake the thread through an eventfd
//! (only when it sleeps). The thread pushes submission entries in batches,
//! waits in `io_uring_enter` until a completion or the next deadline, and
//! completes ops from their CQEs. In-flight ops live in a slab keyed by the
//! entry's `user_data`; the slab entry owns the op's private memory until
//! the kernel posts its completion. After `shutdown` the thread keeps
//! running until every op in the kernel has completed ("graveyard"), then
//! drops the ring and the memory. The thread's loop and the channel are
//! the AIO engine's too (`../reactor.rs`); `ring.rs` is this engine's
//! [`ReactorCore`](super::reactor::ReactorCore).
//!
//! The files: `ring.rs` (the ring core: entries, slab, backlog, wait,
//! reap), `fixed.rs` (fixed buffers: private memory and library-page
//! chunks), `waker.rs` (the eventfd wake-up), `poll.rs` (waiting in ppoll(2)
//! for tools that cannot wait inside `io_uring_enter`), `caller.rs` (the
//! ring of a thread that runs its own `DM_IO_SYNC` IO).

pub mod caller;
mod fixed;
mod poll;
mod ring;
mod sock;
#[cfg(test)]
mod tests;
mod waker;

pub(super) use poll::{ppoll_until, timespec_until};
pub(super) use waker::{new_eventfd, Waker};

use super::reactor::{Mailbox, Msg, Reactor};
use super::sched::Sched;
use super::{CompletionRing, Engine, EngineKind, IoOp, Timer};
use crate::error::{Error, Result};
use io_uring::IoUring;
use ring::Cqes;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

/// Handle to a client's reactor thread.
pub struct UringEngine {
    mailbox: Mailbox,
    /// Names this engine to the completion thread's local ring.
    id: u64,
    entries: u32,
    /// The private memory of the clients on this engine, until the
    /// completion thread's ring exists (then handed to it through `remote`).
    memory: std::sync::Mutex<Vec<(usize, usize)>>,
    /// The completion thread's ring, for the timers of asynchronous
    /// requests ([`super::local::Remote`]).
    /// Shared with the reactor thread, which attaches the sockets of the
    /// ops it admits there ([`super::socket`]).
    remote: Arc<std::sync::OnceLock<Arc<super::local::Remote>>>,
    /// The completion thread's ring state, found by that thread without a
    /// thread-local look-up ([`super::local::offer_one`]).
    local: Arc<crate::thread_mark::Mark<super::local::Local>>,
}

static NEXT_ENGINE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl UringEngine {
    /// Creates the ring (so io_uring refusals surface here, as `-EPERM`,
    /// `-ENOSYS`, ...) and starts the reactor thread.
    pub fn new(entries: u32) -> Result<Arc<UringEngine>> {
        let waker = Waker::new()?;
        let (mailbox, rx) = Mailbox::new(Arc::clone(&waker) as Arc<dyn super::Wake>);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let w = Arc::clone(&waker);
        let remote = Arc::new(std::sync::OnceLock::new());
        let home = Arc::clone(&remote);
        // The ring is created on the reactor thread itself: with
        // IORING_SETUP_SINGLE_ISSUER the creating task is the only one
        // allowed to submit.
        std::thread::Builder::new()
            .name("dmio-reactor".into())
            .spawn(move || {
                let core = match Core::new(entries, w) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                super::local::set_reactor_home(home);
                Reactor::new(core, rx).run()
            })
            .map_err(|e| Error::from_io("spawn reactor", &e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Arc::new(UringEngine {
                mailbox,
                id: NEXT_ENGINE.fetch_add(1, Ordering::Relaxed),
                entries,
                memory: std::sync::Mutex::new(Vec::new()),
                remote,
                local: Arc::new(crate::thread_mark::Mark::new()),
            })),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::new(libc::EIO, "reactor thread died at start")),
        }
    }
}

impl Engine for UringEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Uring
    }

    fn submit(&self, ops: &mut Vec<IoOp>) {
        caller::offer(ops);
        if ops.is_empty() {
            return;
        }
        super::local::offer(self.id, ops);
        self.mailbox.send_ops(ops);
    }

    /// One op with no vector: the caller's ring (SYNC), the completion
    /// thread's ring (asynchronous, on that thread), or the reactor.
    fn submit_one(&self, op: &mut Option<IoOp>) {
        if op.as_ref().is_some_and(|o| o.sync) {
            caller::offer_one(op);
        }
        super::local::offer_one(&self.local, self.id, op);
        if let Some(op) = op.take() {
            self.mailbox.send(Msg::One(op));
        }
    }

    fn ring_id(&self) -> Option<u64> {
        Some(self.id)
    }

    fn sync_on_caller_ring(&self) -> Option<(caller::Guard, Arc<dyn super::Wake>)> {
        caller::enter()
    }

    fn arm_on_caller_ring(&self, at: Instant, timer: &Weak<dyn Timer>) -> bool {
        caller::offer_timer(at, timer)
    }

    fn hand_to_completion_ring(&self, at: Instant, timer: &Weak<dyn Timer>) -> bool {
        self.remote.get().is_some_and(|r| r.arm(at, timer.clone()))
    }

    fn arm_on_engine_thread(&self, at: Instant, timer: Weak<dyn Timer>) {
        self.mailbox.send(Msg::Deadline(at, timer));
    }

    fn register_memory(&self, region: (usize, usize)) {
        self.mailbox.send(Msg::Register(region));
        let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        match self.remote.get() {
            Some(r) => r.memory(region, true),
            None => m.push(region),
        }
    }

    fn unregister_memory(&self, region: (usize, usize)) {
        self.mailbox.send(Msg::Unregister(region));
        let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        match self.remote.get() {
            Some(r) => r.memory(region, false),
            None => m.retain(|r| r.0 != region.0),
        }
    }

    fn completion_ring(&self) -> CompletionRing {
        // Under the lock: memory registered meanwhile goes to one or the other.
        let m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        match super::local::install(self.id, self.entries, &m, &self.local) {
            Some((ring, remote)) => {
                let _ = self.remote.set(remote);
                CompletionRing::uring(ring)
            }
            None => CompletionRing::parked(),
        }
    }

    fn shutdown(&self) {
        self.mailbox.send(Msg::Shutdown);
    }
}

struct Slot {
    op: IoOp,
    cqes: Cqes,
}

/// One ring and the ops in it: what the reactor thread runs, and what the
/// completion thread runs as its local ring ([`super::local`]). Each is
/// owned by the one thread that created it (SINGLE_ISSUER).
pub(super) struct Core {
    ring: IoUring,
    waker: Arc<Waker>,
    slab: Vec<Option<Slot>>,
    free: Vec<usize>,
    inflight: usize,
    cap: usize,
    backlog: VecDeque<IoOp>,
    /// Ops of block devices waiting for a kernel slot of their disk
    /// ([`super::gate`]).
    gate: super::gate::Gate,
    sched: Sched,
    wake_buf: u64,
    cqes: Vec<(u64, i32)>,
    ready: Vec<IoOp>,
    /// Clients' private memory registered as fixed buffers (start, end,
    /// buffer), sorted by start ([`fixed`]).
    fixed: Vec<(usize, usize, u16)>,
    /// The entry of `fixed` the last op found (`Core::admit_one`), until
    /// `fixed` changes.
    last_fixed: Option<(usize, usize, u16)>,
    /// Pool buffers not in use (empty without a sparse table).
    pool_free: Vec<u16>,
    /// Per arena chunk: the generation registered as its fixed buffer,
    /// plus one (0: not registered, [`fixed::REFUSED`]: the kernel refused it).
    /// Empty when the ring has no sparse buffer table (then no chunk).
    chunks: Vec<u64>,
    /// With [`poll::poll_wait`]: the eventfd the ring signals on completions.
    cq_efd: Option<OwnedFd>,
    /// Sockets other threads attach or kick ([`super::socket`]).
    kicks: Arc<super::socket::Kicks>,
    /// The attached sockets, by index (their entries' `user_data`, [`sock`]).
    socks: Vec<Option<sock::SockSlot>>,
    /// Scratch for taking kicks.
    kicked: Vec<(Arc<dyn super::socket::RingSocket>, bool)>,
    /// A SYNC caller's ring ([`caller`]): ops on memory file systems run
    /// as system calls on this thread instead (`Core::run_inline`).
    inline_mem: bool,
    /// SENDs of lone requests ([`super::socket::Outgoing::lone`]) pushed
    /// since the last wait: the wait that submits them also waits for
    /// one more completion each ([`Core::wait`]).
    lone_sends: u32,
    /// The kernel takes a minimum wait time (`IORING_FEAT_MIN_TIMEOUT`,
    /// Linux 6.12).
    min_wait: bool,
    /// The kernel flags deferred completions in the SQ ring's flags
    /// (`IORING_SQ_TASKRUN`): a DEFER_TASKRUN ring set up with
    /// `IORING_SETUP_TASKRUN_FLAG`, whose completions the CQ's tail shows
    /// only once the thread enters the kernel ([`Core::wait`]).
    taskrun_flag: bool,
    /// How long the thread watches for completions before it sleeps
    /// ([`Core::with_watch`]; off on the reactor).
    watch: super::watch::Watch,
    /// When the wait that the next reap follows began, if it counts for
    /// the watch's adaptation ([`super::watch::Watch::adapt`]).
    watch_t0: Option<Instant>,
}
