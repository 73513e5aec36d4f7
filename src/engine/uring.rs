//! The io_uring reactor: one thread owns the ring.
//!
//! Callers hand ops over a channel and wake the thread through an eventfd
//! (only when it sleeps). The thread pushes submission entries in batches,
//! waits in `io_uring_enter` until a completion or the next deadline, and
//! completes ops from their CQEs. In-flight ops live in a slab keyed by the
//! entry's `user_data`; the slab entry owns the op's private memory until
//! the kernel posts its completion. After `shutdown` the thread keeps
//! running until every op in the kernel has completed ("graveyard"), then
//! drops the ring and the memory.

use super::sched::Sched;
use super::{CompletionRing, Engine, EngineKind, IoOp, OpKind, Timer};
use crate::error::{Error, Result};
use crate::memory::{lib_pages, pages};
use crossbeam_channel::{Receiver, Sender};
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

enum Msg {
    Ops(Vec<IoOp>),
    Register((usize, usize)),
    Deadline(Instant, Weak<dyn Timer>),
    Shutdown,
}

/// A close-on-exec eventfd with `flags` added.
fn new_eventfd(flags: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: plain eventfd creation; result checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | flags) };
    if fd < 0 {
        return Err(Error::last_os("eventfd"));
    }
    // SAFETY: `fd` is a fresh descriptor owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wakes the reactor when (and only when) it is about to sleep.
pub(super) struct Waker {
    efd: OwnedFd,
    sleeping: AtomicBool,
    /// Until when the thread sleeps when nothing wakes it ([`instant_key`];
    /// `u64::MAX`: no timer), published before `sleeping`.
    until: AtomicU64,
}

/// `at` as nanoseconds since a fixed instant of this process, to be
/// compared through an atomic.
fn instant_key(at: Instant) -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX - 1)
}

impl Waker {
    pub(super) fn new() -> Result<Arc<Waker>> {
        Ok(Arc::new(Waker {
            efd: new_eventfd(0)?,
            sleeping: AtomicBool::new(false),
            until: AtomicU64::new(u64::MAX),
        }))
    }

    /// Whether the thread, were it to sleep now, would sleep past `at`
    /// (called after publishing the work due at `at`; see [`Core::wait`]).
    pub(super) fn sleeps_past(&self, at: Instant) -> bool {
        fence(Ordering::SeqCst);
        instant_key(at) < self.until.load(Ordering::SeqCst)
    }

    fn wake(&self) {
        fence(Ordering::SeqCst);
        // A plain load first: while the thread is awake (the common case in
        // a burst) this keeps the flag's cache line shared, not bouncing.
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            unsafe { libc::write(self.efd.as_raw_fd(), &one as *const u64 as *const _, 8) };
        }
    }
}

impl super::Wake for Waker {
    fn wake(&self) {
        Waker::wake(self);
    }
}

/// Handle to a client's reactor thread.
pub struct UringEngine {
    tx: Sender<Msg>,
    /// The reactor's waker, as deferrable ([`super::wake`]).
    waker: Arc<dyn super::Wake>,
    /// Names this engine to the completion thread's local ring.
    id: u64,
    entries: u32,
    memory: std::sync::OnceLock<(usize, usize)>,
    /// The completion thread's ring, for the timers of asynchronous
    /// requests ([`super::local::Remote`]).
    remote: std::sync::OnceLock<Arc<super::local::Remote>>,
}

/// Private memory up to this size is registered with each ring
/// (`IORING_REGISTER_BUFFERS`: pinned once, so reads and writes skip the
/// per-IO page pinning). Registering pins every page at once (and a
/// kernel worker unpins them all after the ring closes), so larger pools,
/// which are for many slow IOs rather than many fast ones, and pools
/// beyond `RLIMIT_MEMLOCK` (8 MiB by default for users without
/// CAP_IPC_LOCK; the kernel refuses) keep plain reads and writes and fault
/// their memory in as used.
const REGISTER_MAX: usize = 16 << 20;

static NEXT_ENGINE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// [`Core::chunks`]: the kernel refused to register the chunk.
const REFUSED: u64 = u64::MAX;

const WAKE: u64 = u64::MAX;
const FLUSH_BIT: u64 = 1 << 63;

impl UringEngine {
    /// Creates the ring (so io_uring refusals surface here, as `-EPERM`,
    /// `-ENOSYS`, ...) and starts the reactor thread.
    pub fn new(entries: u32) -> Result<Arc<UringEngine>> {
        let waker = Waker::new()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let w = Arc::clone(&waker);
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
                Reactor {
                    core,
                    rx,
                    shutting: false,
                }
                .run()
            })
            .map_err(|e| Error::from_io("spawn reactor", &e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Arc::new(UringEngine {
                tx,
                waker: waker as Arc<dyn super::Wake>,
                id: NEXT_ENGINE.fetch_add(1, Ordering::Relaxed),
                entries,
                memory: std::sync::OnceLock::new(),
                remote: std::sync::OnceLock::new(),
            })),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::new(libc::EIO, "reactor thread died at start")),
        }
    }

    fn send(&self, m: Msg) {
        match self.tx.send(m) {
            Ok(()) => super::wake::wake_or_defer(&self.waker),
            // The reactor is gone (it only stops after shutdown or a bug):
            // nothing can start the ops, so they fail here.
            Err(e) => {
                if let Msg::Ops(ops) = e.into_inner() {
                    for op in ops {
                        op.complete(-libc::ESHUTDOWN);
                    }
                }
            }
        }
    }
}

/// `DMIO_URING_WAIT=poll`: threads wait in poll(2) on an eventfd that the
/// ring signals for each completion, never inside `io_uring_enter`. Slower
/// (completions interrupt the thread), but tools that cannot run a thread
/// blocked in `io_uring_enter`, such as valgrind 3.19 (it holds its global
/// lock across that call, so every other thread stops), can run the
/// io_uring engine this way.
fn poll_wait() -> bool {
    static POLL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *POLL.get_or_init(|| std::env::var("DMIO_URING_WAIT").is_ok_and(|v| v == "poll"))
}

/// Which registered buffer an op's memory is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Buf {
    /// Not registered: a plain read or write.
    Plain,
    /// Registered buffer `n` (0: the private memory; 1 + c: arena chunk c).
    Fixed(u16),
}

/// Fixed buffer index of arena chunk `c` (after the private memory's 0).
fn chunk_buf(c: u16) -> u16 {
    c + 1
}

/// The submission entries of `op` with user data `ud`: a linked fsync
/// before a `DM_IO_FLUSH` write, and the op itself (a fixed read or write
/// from registered buffer `reg`).
fn entries(op: &IoOp, ud: u64, reg: Buf) -> (Option<squeue::Entry>, squeue::Entry) {
    let fd = types::Fd(op.dev.fd());
    let buf = op.buf();
    let rw_flags = if op.fua { libc::RWF_DSYNC } else { 0 };
    let data = match (op.kind, reg) {
        (OpKind::Read, Buf::Fixed(n)) => opcode::ReadFixed::new(fd, buf, op.len, n)
            .offset(op.offset)
            .build(),
        (OpKind::Read, Buf::Plain) => opcode::Read::new(fd, buf, op.len).offset(op.offset).build(),
        (OpKind::Write, Buf::Fixed(n)) => opcode::WriteFixed::new(fd, buf, op.len, n)
            .offset(op.offset)
            .rw_flags(rw_flags)
            .build(),
        (OpKind::Write, Buf::Plain) => opcode::Write::new(fd, buf, op.len)
            .offset(op.offset)
            .rw_flags(rw_flags)
            .build(),
        (OpKind::Flush, _) => opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
    }
    .user_data(ud);
    let flush = (op.pre_flush && op.kind == OpKind::Write).then(|| {
        opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(ud | FLUSH_BIT)
    });
    (flush, data)
}

/// A ring for one reactor thread: completions are processed only when the
/// reactor asks for them (DEFER_TASKRUN, no interruptions while it works),
/// on kernels that have it (6.1+); a plain ring elsewhere.
fn build_ring(entries: u32) -> Result<IoUring> {
    if poll_wait() {
        // Completions must be posted while the thread sleeps in poll(2):
        // task work that interrupts it (no COOP_TASKRUN, no DEFER_TASKRUN).
        return IoUring::builder()
            .build(entries)
            .map_err(|e| Error::from_io("io_uring_setup", &e));
    }
    IoUring::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .or_else(|_| IoUring::builder().build(entries))
        .map_err(|e| Error::from_io("io_uring_setup", &e))
}

impl Engine for UringEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Uring
    }

    fn submit(&self, ops: &mut Vec<IoOp>) {
        super::local::offer(self.id, ops);
        if !ops.is_empty() {
            self.send(Msg::Ops(std::mem::take(ops)));
        }
    }

    fn ring_id(&self) -> Option<u64> {
        Some(self.id)
    }

    fn hand_to_completion_ring(&self, at: Instant, timer: &Weak<dyn Timer>) -> bool {
        self.remote.get().is_some_and(|r| r.arm(at, timer.clone()))
    }

    fn arm_on_engine_thread(&self, at: Instant, timer: Weak<dyn Timer>) {
        self.send(Msg::Deadline(at, timer));
    }

    fn register_memory(&self, region: (usize, usize)) {
        if self.memory.set(region).is_ok() {
            self.send(Msg::Register(region));
        }
    }

    fn completion_ring(&self) -> CompletionRing {
        match super::local::install(self.id, self.entries, self.memory.get().copied()) {
            Some((ring, remote)) => {
                let _ = self.remote.set(remote);
                CompletionRing::uring(ring)
            }
            None => CompletionRing::parked(),
        }
    }

    fn shutdown(&self) {
        self.send(Msg::Shutdown);
    }
}

struct Slot {
    op: IoOp,
    cqes: Cqes,
}

/// The CQEs an op in the slab still waits for, and what came so far.
struct Cqes {
    /// Still to come (2 when a flush is linked before the op).
    left: u8,
    flush_err: i32,
    data_res: i32,
}

impl Cqes {
    fn new(linked_flush: bool) -> Cqes {
        Cqes {
            left: if linked_flush { 2 } else { 1 },
            flush_err: 0,
            data_res: 0,
        }
    }

    /// One CQE of the op (`flush`: its linked fsync's). Once the last has
    /// come, the op's result: the fsync's error if it failed (the write
    /// then never ran, or ran unordered), else the data entry's result.
    #[inline]
    fn record(&mut self, flush: bool, res: i32) -> Option<i32> {
        self.left -= 1;
        if !flush {
            self.data_res = res;
        } else if res < 0 {
            self.flush_err = res;
        }
        if self.left > 0 {
            return None;
        }
        Some(if self.flush_err < 0 {
            self.flush_err
        } else {
            self.data_res
        })
    }
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
    sched: Sched,
    wake_buf: u64,
    cqes: Vec<(u64, i32)>,
    ready: Vec<IoOp>,
    /// Private memory registered as fixed buffer 0 (start, end).
    fixed: Option<(usize, usize)>,
    /// Per arena chunk: the generation registered as its fixed buffer,
    /// plus one (0: not registered, [`REFUSED`]: the kernel refused it).
    /// Empty when the ring has no sparse buffer table (then no chunk).
    chunks: Vec<u64>,
    /// With [`poll_wait`]: the eventfd the ring signals on completions.
    cq_efd: Option<OwnedFd>,
}

impl Core {
    /// A ring on the calling thread, woken through `waker`.
    pub(super) fn new(entries: u32, waker: Arc<Waker>) -> Result<Core> {
        let ring = build_ring(entries)?;
        let cap = (ring.params().cq_entries() / 2).saturating_sub(1).max(1) as usize;
        let mut core = Core {
            ring,
            waker,
            slab: Vec::new(),
            free: Vec::new(),
            inflight: 0,
            cap,
            backlog: VecDeque::new(),
            sched: Sched::default(),
            wake_buf: 0,
            cqes: Vec::with_capacity(256),
            ready: Vec::new(),
            fixed: None,
            chunks: Vec::new(),
            cq_efd: None,
        };
        // A table with room for the private memory and every arena chunk,
        // filled as they are used. Without it (kernels before 5.19) the
        // private memory is registered alone and chunks are not.
        let slots = 1 + pages::MAX_CHUNKS as u32;
        if core.ring.submitter().register_buffers_sparse(slots).is_ok() {
            core.chunks = vec![0; pages::MAX_CHUNKS];
        }
        if poll_wait() {
            let fd = new_eventfd(libc::EFD_NONBLOCK)?;
            core.ring
                .submitter()
                .register_eventfd(fd.as_raw_fd())
                .map_err(|e| Error::from_io("IORING_REGISTER_EVENTFD", &e))?;
            core.cq_efd = Some(fd);
        }
        core.arm_wake();
        Ok(core)
    }

    /// Takes new ops: fault rules first, then the backlog.
    pub(super) fn admit(&mut self, ops: impl IntoIterator<Item = IoOp>) {
        for op in ops {
            if let Some(op) = self.sched.admit(op) {
                self.backlog.push_back(op);
            }
        }
    }

    /// Registers the client's private memory (see [`REGISTER_MAX`]); on
    /// any refusal ops keep using plain reads and writes.
    pub(super) fn register(&mut self, (start, len): (usize, usize)) {
        if self.fixed.is_some() || len == 0 || len > REGISTER_MAX {
            return;
        }
        let iov = libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: len,
        };
        let sub = self.ring.submitter();
        // SAFETY: the region is the pool's mapping, which stays mapped while
        // any op can name it (ops hold the pool through their slots); once it
        // is unmapped no op refers to it, and the pages the kernel pinned
        // stay its own until the ring is dropped.
        let done = unsafe {
            if self.chunks.is_empty() {
                sub.register_buffers(&[iov])
            } else {
                sub.register_buffers_update(0, &[iov], None)
            }
        };
        if done.is_ok() {
            self.fixed = Some((start, start + len));
        }
    }

    /// The buffer `op` runs in on this ring: the private memory's when its
    /// slot lies in it, its arena chunk's for a read into library pages
    /// (`None` then when the chunk's registration is out of date: see
    /// [`Core::register_chunk`]), else plain.
    fn buf_of(chunks: &[u64], fixed: Option<(usize, usize)>, op: &IoOp) -> Option<Buf> {
        if let Some(c) = op.lib_chunk {
            return match chunks.get(c as usize) {
                Some(&r) if r == REFUSED => Some(Buf::Plain),
                Some(&r) if r == lib_pages::generation(c) as u64 + 1 => {
                    Some(Buf::Fixed(chunk_buf(c)))
                }
                Some(_) => None,
                None => Some(Buf::Plain),
            };
        }
        let b = op.buf() as usize;
        Some(match fixed {
            Some((lo, hi)) if b >= lo && b + op.len as usize <= hi => Buf::Fixed(0),
            _ => Buf::Plain,
        })
    }

    /// Registers arena chunk `c` (again: a detach replaced pages in it).
    /// Only with an empty submission queue: every op queued before was
    /// started with the registration it was checked against (the kernel
    /// resolves a fixed buffer when it first issues the op, inside the
    /// `io_uring_enter` that submits it). A refusal, or a queue that will
    /// not drain, marks the chunk [`REFUSED`]: its ops then run as plain
    /// reads ([`super::OpSink::demote`]) and `push_backlog` tells the arena.
    fn register_chunk(&mut self, c: u16) {
        let _ = self.ring.submit();
        // Read before registering: pages detached after this are seen as a
        // newer generation and registered again.
        let g = lib_pages::generation(c);
        let (start, len) = lib_pages::chunk_range(c);
        let iov = libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: len,
        };
        let registered = self.ring.submission().is_empty()
            // SAFETY: the chunk is arena memory, mapped for the life of the
            // process; the kernel pins the pages mapped there now and keeps
            // them while an op or this table refers to them.
            && unsafe {
                self.ring
                    .submitter()
                    .register_buffers_update(chunk_buf(c) as u32, &[iov], None)
            }
            .is_ok();
        self.chunks[c as usize] = if registered { g as u64 + 1 } else { REFUSED };
    }

    pub(super) fn arm(&mut self, at: Instant, timer: Weak<dyn Timer>) {
        self.sched.arm(at, timer);
    }

    pub(super) fn clear_deadlines(&mut self) {
        self.sched.clear_deadlines();
    }

    /// Fires due timers and puts ready ops into the submission queue.
    pub(super) fn pump(&mut self, now: Instant) {
        self.sched.expire(now, &mut self.ready);
        if !self.ready.is_empty() {
            self.backlog.extend(self.ready.drain(..));
        }
        self.push_backlog();
    }

    /// [`Core::pump`], reading the clock only when a timer, delayed or
    /// held op needs it.
    pub(super) fn pump_lazy(&mut self) {
        if self.sched.needs_clock() {
            self.pump(Instant::now());
        } else {
            self.push_backlog();
        }
    }

    /// Starts what is in the submission queue now.
    pub(super) fn submit_now(&mut self) {
        let _ = self.ring.submit();
    }

    /// Ops submitted to the kernel (about: the queue also holds linked
    /// flushes and the wake-up poll), and entries queued not yet submitted.
    pub(super) fn depth(&mut self) -> (usize, usize) {
        let q = self.ring.submission().len();
        (self.inflight.saturating_sub(q), q)
    }

    /// No op in the kernel, queued or parked.
    pub(super) fn idle(&self) -> bool {
        self.inflight == 0 && self.backlog.is_empty() && self.sched.parked() == 0
    }

    fn arm_wake(&mut self) {
        let e = opcode::PollAdd::new(types::Fd(self.waker.efd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(WAKE);
        // SAFETY: a poll entry carries no buffer; the eventfd lives as long
        // as the core (which holds the waker).
        while unsafe { self.ring.submission().push(&e) }.is_err() {
            let _ = self.ring.submit();
        }
    }

    pub(super) fn push_backlog(&mut self) {
        while self.inflight < self.cap && !self.backlog.is_empty() {
            // One view of the submission queue for the whole batch (each
            // view reads the kernel's head and publishes our tail).
            let mut sq = self.ring.submission();
            let mut room = sq.capacity() - sq.len();
            let mut stale = None;
            while self.inflight < self.cap {
                let Some(front) = self.backlog.front() else {
                    break;
                };
                let Some(reg) = Core::buf_of(&self.chunks, self.fixed, front) else {
                    stale = front.lib_chunk;
                    break;
                };
                let linked = front.pre_flush && front.kind == OpKind::Write;
                if room < 1 + linked as usize {
                    break;
                }
                let op = self.backlog.pop_front().expect("checked front");
                // Library pages: not once a cancel detached them (checked
                // after the registration was made current, see
                // `OpSink::detached`); on a plain read, only if the request
                // will wait for it.
                if let Some(c) = op.lib_chunk {
                    if reg == Buf::Plain {
                        // The chunk is REFUSED on this ring, or the ring
                        // has no table: later requests there use private
                        // memory.
                        lib_pages::refuse(c);
                    }
                    if op.sink.detached() || (reg == Buf::Plain && !op.sink.demote(op.region)) {
                        op.complete(-libc::ECANCELED);
                        continue;
                    }
                }
                let idx = self.free.pop().unwrap_or_else(|| {
                    self.slab.push(None);
                    self.slab.len() - 1
                });
                let (flush, data) = entries(&op, idx as u64, reg);
                if let Some(f) = flush {
                    // SAFETY: an fsync entry carries no buffer; the fd stays
                    // open because the op (in the slab below) holds `Arc<Device>`.
                    unsafe { sq.push(&f) }.expect("room checked above");
                }
                // SAFETY: `data`'s buffer points into the op's private slot,
                // which the slab entry created below owns until this entry's
                // CQE is reaped in `reap` (for a fixed op, inside registered
                // buffer 0, checked in `buf_of`), or for a zero-copy op into
                // the caller's memory, lent until the region is final, which
                // is never before that CQE is reaped, or for a read into
                // library pages into the arena chunk registered as its
                // fixed buffer (mapped for good; a detach leaves the pages
                // this registration pinned to the kernel); the fd is kept
                // open by the op's `Arc<Device>`.
                unsafe { sq.push(&data) }.expect("room checked above");
                room -= 1 + linked as usize;
                self.slab[idx] = Some(Slot {
                    op,
                    cqes: Cqes::new(linked),
                });
                self.inflight += 1;
            }
            drop(sq);
            if let Some(c) = stale {
                self.register_chunk(c);
                continue;
            }
            if self.inflight >= self.cap || self.backlog.is_empty() {
                break;
            }
            // The queue is full: hand it to the kernel and go on.
            if self.ring.submit().is_err() {
                break;
            }
        }
    }

    /// Submits what is queued and, unless `pending()` says there is work
    /// already (checked after announcing the sleep, so a waker cannot be
    /// missed), sleeps until a completion, a wake-up, the next timer, or
    /// `max` (when given).
    pub(super) fn wait(
        &mut self,
        now: Option<Instant>,
        pending: &dyn Fn() -> bool,
        max: Option<std::time::Duration>,
    ) {
        let runnable = !self.backlog.is_empty() && self.inflight < self.cap;
        if runnable || pending() {
            let _ = self.ring.submit();
            return;
        }
        // `now`: the caller's clock reading, or read here if a timer needs it.
        let mut at = None;
        if self.sched.needs_clock() || max.is_some() {
            let now = now.unwrap_or_else(Instant::now);
            at = self.sched.next_wakeup(now);
            if let Some(m) = max {
                let limit = now + m;
                at = Some(at.map_or(limit, |a| a.min(limit)));
            }
        }
        // The wake-up time, then the flag, then one more look: a thread
        // that publishes work and then reads these either sees us asleep
        // (and until when), or we see its work.
        self.waker
            .until
            .store(at.map_or(u64::MAX, instant_key), Ordering::SeqCst);
        self.waker.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if pending() {
            self.waker.sleeping.store(false, Ordering::SeqCst);
            let _ = self.ring.submit();
            return;
        }
        if let Some(efd) = &self.cq_efd {
            let r = poll_for_completion(&mut self.ring, efd, at);
            self.waker.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = r {
                eprintln!("libdmio: waiting for completions failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            return;
        }
        let r = match at {
            Some(at) => {
                let d = at.saturating_duration_since(Instant::now());
                let ts = types::Timespec::new()
                    .sec(d.as_secs())
                    .nsec(d.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        self.waker.sleeping.store(false, Ordering::SeqCst);
        if let Err(e) = r {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => {
                    eprintln!("libdmio: io_uring_enter failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }

    /// Completes the ops whose CQEs have arrived.
    pub(super) fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in cqes.iter() {
            if ud == WAKE {
                // SAFETY: reads 8 bytes into our own u64 from our eventfd,
                // which POLLIN says is readable.
                unsafe {
                    libc::read(
                        self.waker.efd.as_raw_fd(),
                        &mut self.wake_buf as *mut u64 as *mut _,
                        8,
                    )
                };
                self.arm_wake();
                continue;
            }
            let idx = (ud & !FLUSH_BIT) as usize;
            let Some(slot) = self.slab.get_mut(idx).and_then(|s| s.as_mut()) else {
                continue;
            };
            let Some(res) = slot.cqes.record(ud & FLUSH_BIT != 0, res) else {
                continue;
            };
            let slot = self.slab[idx].take().expect("present");
            self.free.push(idx);
            self.inflight -= 1;
            slot.op.complete(res);
        }
        self.cqes = cqes;
    }
}

/// [`poll_wait`]: submits, then sleeps in ppoll(2) until the ring signals a
/// completion on `efd` (a wake-up arrives as the completion of the poll on
/// the waker's eventfd) or `at` passes.
fn poll_for_completion(
    ring: &mut IoUring,
    efd: &OwnedFd,
    at: Option<Instant>,
) -> std::io::Result<()> {
    let mut count: u64 = 0;
    // SAFETY: reads 8 bytes into our own u64 from our non-blocking eventfd
    // (resetting it before the CQ is looked at, so no signal is lost).
    unsafe { libc::read(efd.as_raw_fd(), &mut count as *mut u64 as *mut _, 8) };
    ring.submit()?;
    if !ring.completion().is_empty() {
        return Ok(());
    }
    let ts = at.map(|at| {
        let d = at.saturating_duration_since(Instant::now());
        libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        }
    });
    let mut pfd = libc::pollfd {
        fd: efd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: one valid pollfd, an optional valid timespec, no signal mask.
    let r = unsafe { libc::ppoll(&mut pfd, 1, tsp, std::ptr::null()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(())
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
    }

    fn take(&mut self, m: Msg) {
        match m {
            Msg::Ops(ops) => self.core.admit(ops),
            Msg::Register(region) => self.core.register(region),
            Msg::Deadline(at, req) => self.core.arm(at, req),
            Msg::Shutdown => {
                self.shutting = true;
                self.core.clear_deadlines();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::manual::kit::{op, Recorder, TempDev};
    use crate::memory::pool::Pool;
    use crate::memory::PAGE_SIZE;
    use std::time::Duration;

    /// A ring on this thread, or `None` (said) where the kernel refuses
    /// io_uring.
    fn core() -> Option<Core> {
        match Core::new(64, Waker::new().unwrap()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("skipped: io_uring refused here ({e})");
                None
            }
        }
    }

    /// Turns the ring until `sink` has seen `n` ops end (bounded).
    fn run(core: &mut Core, sink: &Recorder, n: usize) {
        for _ in 0..1000 {
            core.pump(Instant::now());
            if sink.count() >= n {
                return;
            }
            core.wait(None, &|| false, Some(Duration::from_millis(10)));
            core.reap();
        }
        panic!("{} of {n} ops ended", sink.count());
    }

    #[test]
    fn cqes_pair_a_linked_flush_with_its_write() {
        assert_eq!(Cqes::new(false).record(false, 4096), Some(4096));
        // Either order; the data entry's result when the fsync succeeded.
        let mut c = Cqes::new(true);
        assert_eq!(c.record(true, 0), None);
        assert_eq!(c.record(false, 4096), Some(4096));
        let mut c = Cqes::new(true);
        assert_eq!(c.record(false, 4096), None);
        assert_eq!(c.record(true, 0), Some(4096));
        // A failed fsync wins over the write's result (cancelled by the link).
        let mut c = Cqes::new(true);
        assert_eq!(c.record(true, -libc::EIO), None);
        assert_eq!(c.record(false, -libc::ECANCELED), Some(-libc::EIO));
        let mut c = Cqes::new(true);
        assert_eq!(c.record(false, 4096), None);
        assert_eq!(c.record(true, -libc::EIO), Some(-libc::EIO));
    }

    #[test]
    fn each_completion_finds_its_op_and_slab_entries_are_reused() {
        let Some(mut core) = core() else { return };
        let dev = TempDev::new("slab");
        let pool = Pool::new(8, 4096).unwrap();
        core.register(pool.region());
        let sink = Arc::new(Recorder::default());
        let ops = |round: u32| -> Vec<IoOp> {
            (0..8u32)
                .map(|i| {
                    let slot = pool.try_acquire().expect("a free slot");
                    // Sector 16 i (+1 on the second round), a different length each.
                    let off = (16 * i as u64 + round as u64) * 512;
                    op(OpKind::Read, &dev, &sink, i, off, 512 * (i + 1), Some(slot))
                })
                .collect()
        };
        core.admit(ops(0));
        run(&mut core, &sink, 8);
        let want: Vec<(u32, i32)> = (0..8).map(|i| (i, 512 * (i as i32 + 1))).collect();
        assert_eq!(sink.results(), want);
        for &(region, _, first) in sink.done.lock().unwrap().iter() {
            assert_eq!(first, Some((16 * region) as u8), "region {region}'s data");
        }
        assert!(core.idle());
        assert_eq!(core.inflight, 0);
        let used = core.slab.len();
        assert!(used <= 8 && core.free.len() == used);
        assert!(core.slab.iter().all(|s| s.is_none()));
        // A second round reuses the entries: the slab does not grow.
        sink.done.lock().unwrap().clear();
        core.admit(ops(1));
        run(&mut core, &sink, 8);
        assert_eq!(sink.results(), want);
        assert_eq!(core.slab.len(), used);
        assert_eq!(pool.in_use(), 0, "every slot went back");
    }

    #[test]
    fn a_flush_write_completes_once_after_both_cqes() {
        let Some(mut core) = core() else { return };
        let dev = TempDev::new("flush");
        let pool = Pool::new(2, 4096).unwrap();
        let sink = Arc::new(Recorder::default());
        let slot = pool.try_acquire().unwrap();
        slot.bytes_mut(4096).fill(0x77);
        let w = IoOp {
            pre_flush: true,
            ..op(OpKind::Write, &dev, &sink, 0, 0, 4096, Some(slot))
        };
        let f = op(OpKind::Flush, &dev, &sink, 1, 0, 0, None);
        core.admit([w, f]);
        run(&mut core, &sink, 2);
        // One more turn: nothing else completes.
        core.wait(None, &|| false, Some(Duration::from_millis(1)));
        core.reap();
        assert_eq!(sink.results(), vec![(0, 4096), (1, 0)]);
        assert!(core.idle());
        let mut b = [0u8; 512];
        // SAFETY: reads into our own 512-byte array from an open fd.
        let n = unsafe { libc::pread(dev.dev.fd(), b.as_mut_ptr() as *mut _, 512, 0) };
        assert_eq!(n, 512);
        assert!(b.iter().all(|&x| x == 0x77), "the write landed");
    }

    #[test]
    fn a_wake_up_ends_a_wait_and_the_poll_is_armed_again() {
        let Some(mut core) = core() else { return };
        for _ in 0..2 {
            core.wake_buf = 0;
            // As if the ring's thread had announced its sleep.
            core.waker.sleeping.store(true, Ordering::SeqCst);
            core.waker.wake();
            assert!(!core.waker.sleeping.load(Ordering::SeqCst));
            // Bounded: a lost wake-up shows as the counter not read.
            core.wait(None, &|| false, Some(Duration::from_secs(5)));
            core.reap();
            assert_eq!(core.wake_buf, 1, "the wake-up's CQE was reaped");
        }
        assert!(core.idle());
    }

    #[test]
    fn library_page_reads_register_their_chunk_and_again_after_a_detach() {
        let _one = lib_pages::DETACH_TESTS
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(mut core) = core() else { return };
        if core.chunks.is_empty() {
            eprintln!("skipped: no sparse buffer table (kernel before 5.19)");
            return;
        }
        let dev = TempDev::new("chunk");
        let p = pages::alloc().unwrap();
        let Some(c) = pages::LivePages::lock().arena_span(p, PAGE_SIZE) else {
            eprintln!("skipped: no page arena");
            assert!(pages::free(p));
            return;
        };
        let read = |sink: &Arc<Recorder>, sector: u64| IoOp {
            direct: p,
            lib_chunk: Some(c),
            ..op(OpKind::Read, &dev, sink, 0, sector * 512, 4096, None)
        };
        // SAFETY: `p` is a live page of ours; no IO runs into it now.
        let first_byte = || unsafe { *(p as *const u8) };

        let sink = Arc::new(Recorder::default());
        let g0 = lib_pages::generation(c);
        core.admit([read(&sink, 24)]);
        run(&mut core, &sink, 1);
        assert_eq!(sink.results(), vec![(0, 4096)]);
        assert_eq!(core.chunks[c as usize], g0 as u64 + 1, "registered");
        assert_eq!(first_byte(), 24);
        assert_eq!(sink.demotes.load(Ordering::SeqCst), 0, "ran fixed");

        // A detach maps fresh pages at `p`: the ring registers the chunk
        // again before its next read there, which lands in the new pages.
        assert!(lib_pages::detach(p, PAGE_SIZE));
        assert_eq!(first_byte(), 0);
        let g1 = lib_pages::generation(c);
        let sink = Arc::new(Recorder::default());
        core.admit([read(&sink, 40)]);
        run(&mut core, &sink, 1);
        assert_eq!(sink.results(), vec![(0, 4096)]);
        assert_eq!(core.chunks[c as usize], g1 as u64 + 1, "registered again");
        assert_eq!(first_byte(), 40, "the read landed in the pages now at p");

        // A request whose pages a cancel detached: its op never starts.
        let sink = Arc::new(Recorder::default());
        sink.detached.store(true, Ordering::SeqCst);
        core.admit([read(&sink, 56)]);
        run(&mut core, &sink, 1);
        assert_eq!(sink.results(), vec![(0, -libc::ECANCELED)]);
        assert_eq!(first_byte(), 40);
        assert!(pages::free(p));
    }

    #[test]
    fn a_refused_chunk_runs_plain_reads_only_for_requests_that_will_wait() {
        let Some(mut core) = core() else { return };
        let dev = TempDev::new("refused");
        // The last chunk: no test allocates pages in it (refusing it is for
        // good), and its memory is reserved but not mapped, so the kernel
        // refuses to register it. A plain read needs no chunk memory, so
        // the op reads into ours.
        let c = (pages::MAX_CHUNKS - 1) as u16;
        // Reserves the arena (if no test did yet).
        pages::free(pages::alloc().unwrap());
        let kernel_refuses = !cfg!(debug_assertions); // chunk_range asserts c is mapped
        let mut buf = vec![0u8; 4096];
        let read = |sink: &Arc<Recorder>, buf: &mut Vec<u8>| IoOp {
            direct: buf.as_mut_ptr() as usize,
            lib_chunk: Some(c),
            ..op(OpKind::Read, &dev, sink, 0, 8 * 512, 4096, None)
        };
        for table in [true, false] {
            if table {
                if core.chunks.is_empty() {
                    continue;
                }
                if !kernel_refuses {
                    // As after register_chunk's refusal.
                    core.chunks[c as usize] = REFUSED;
                }
            } else {
                // A ring without a buffer table registers no chunk.
                core.chunks.clear();
            }
            let sink = Arc::new(Recorder::default());
            buf.fill(0);
            core.admit([read(&sink, &mut buf)]);
            run(&mut core, &sink, 1);
            if table {
                assert_eq!(core.chunks[c as usize], REFUSED, "register_chunk refused");
            }
            assert_eq!(sink.results(), vec![(0, 4096)]);
            assert_eq!(sink.demotes.load(Ordering::SeqCst), 1, "demoted");
            let sectors_8_to_15 = buf
                .chunks(512)
                .enumerate()
                .all(|(k, s)| s.iter().all(|&b| b == 8 + k as u8));
            assert!(sectors_8_to_15, "the plain read landed");
            // A request that cannot wait for a plain read (demote says no).
            let sink = Arc::new(Recorder::default());
            sink.refuse_demote.store(true, Ordering::SeqCst);
            buf.fill(0);
            core.admit([read(&sink, &mut buf)]);
            run(&mut core, &sink, 1);
            assert_eq!(sink.results(), vec![(0, -libc::ECANCELED)]);
            assert!(buf.iter().all(|&b| b == 0), "never started");
        }
    }
}
