//! The thread-pool engine, for where io_uring and Linux AIO are refused
//! (gVisor, seccomp profiles that refuse both, `DMIO_ENGINE=threads`), and
//! for the AIO engine's buffered devices.
//!
//! Workers doing blocking `pread`/`pwritev2` take ops from one shared
//! queue. An op on a device without fault rules goes there straight from
//! the submitting thread: caller → worker is the only hand-off before the
//! IO. A dispatcher thread owns the [`Sched`] (deadlines, and the ops that
//! fault rules delay or hold) exactly as the io_uring reactor does; ops of
//! a device with fault rules go through it to be admitted. A worker stuck
//! in the kernel keeps its op, and so the op's private memory, until the
//! call returns.
//!
//! One engine may serve many clients (a shard of the shared engine): the
//! workers are theirs together. A worker is started whenever the ops
//! handed over and not yet done outnumber the workers, up to the engine's
//! bound, so an op never waits behind IO stuck in the kernel (another
//! client's hung device included) while the bound has room. A worker idle
//! for [`IDLE_EXIT`] ends.

use super::sched::Sched;
use super::{Engine, EngineKind, IoOp, OpKind, Timer};
use crate::error::{Error, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

enum Msg {
    Ops(Vec<IoOp>),
    Deadline(Instant, Weak<dyn Timer>),
    Shutdown,
}

pub struct ThreadsEngine {
    tx: Sender<Msg>,
    pool: Arc<Workers>,
}

/// The workers and their queue.
struct Workers {
    queue: Arc<Queue>,
    max_workers: usize,
}

/// A worker with nothing to do for this long ends (an engine shared by many
/// clients keeps no idle threads for long after a burst).
const IDLE_EXIT: Duration = Duration::from_secs(5);

/// A worker that finds the queue empty right after an op watches it this
/// long before it sleeps, and so does the completion thread before it
/// parks ([`ThreadsEngine::completion_ring`]): at a steady queue depth the
/// next completion, and the op its notify submits, come within that, and
/// then cost no futex wake-up and no context switch. Watching yields the
/// CPU at each look (`sched_yield`), so it takes only a CPU nothing else
/// wants: with dozens of workers on a few CPUs, a busy spin would take
/// the CPU the IO needs (measured: 30 % fewer IOPS with a 50 us busy spin,
/// 13 % more with this; `bench/HISTORY.md`).
pub(crate) const SPIN: Duration = Duration::from_micros(20);

/// At most this many workers watch the queue at once: half the CPUs, at
/// least one.
fn max_spinners() -> usize {
    (crate::client::shared::cpu_count() / 2).max(1)
}

/// The ops waiting for a worker: a lock and a condition variable, and in
/// front of them up to [`max_spinners`] workers that just finished an op
/// and watch the queue for [`SPIN`] before they sleep. An op that a
/// watching worker will take wakes nobody. For the others, sleeping
/// workers are woken one at a time, each woken one waking the next as it
/// takes an op while ops remain ([`Queue::pass`]): a submitter wakes at
/// most one worker per batch, and ops that workers ending their IO take
/// first cost no wake-up.
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    /// `state.ops.len()`, for watching workers (written under the lock).
    queued: AtomicUsize,
    /// Ops handed to the workers and not yet done.
    inflight: AtomicUsize,
    /// Worker threads running; one that ends idle takes itself off under
    /// the state lock, after seeing no op queued.
    workers: AtomicUsize,
    max_spinners: usize,
}

struct QueueState {
    ops: VecDeque<IoOp>,
    /// `false` after shutdown: the workers end once `ops` is empty.
    open: bool,
    /// Workers watching the queue now.
    spinners: usize,
    /// Of those, how many no queued op counts on yet: an op queued while
    /// this is above 0 takes one and wakes nobody. Never more than the
    /// watching workers that will still look at the queue, so an op
    /// counted on a watcher is taken: a watcher leaves only after a look
    /// under the lock, taking an op if one is queued. Lowered by one
    /// whenever a watcher leaves (whether or not the op it took was the
    /// one counted on it), so it errs low: an op then wakes a sleeper it
    /// did not need to, never the other way round.
    spin_free: usize,
    /// Workers waiting on `ready` now.
    sleepers: usize,
    /// Of those, how many were woken and have not looked at the queue yet:
    /// the baton ([`Queue::pass`]). At most one is woken at a time; the one
    /// that takes an op wakes the next while ops remain.
    woken: usize,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.lock().open = false;
        self.ready.notify_all();
    }

    /// Under the lock: the next op, keeping `queued` current; passes the
    /// baton on when ops remain.
    fn pop(&self, st: &mut QueueState) -> Option<IoOp> {
        let op = st.ops.pop_front();
        if op.is_some() {
            self.queued.store(st.ops.len(), Ordering::Relaxed);
            self.pass(st);
        }
        op
    }

    /// Under the lock, with ops queued: wakes one sleeping worker unless
    /// one was woken already and has not looked at the queue yet. Wake-ups
    /// are chained, one at a time, instead of one per op: whoever takes an
    /// op next (the woken worker, a watching one, or one that just ended
    /// its IO) wakes the next sleeper while ops remain, so no queued op
    /// ever waits without an awake worker on its way to it (a worker
    /// stuck in the kernel is never counted on), and ops that a worker
    /// ending its IO takes meanwhile cost no wake-up at all.
    fn pass(&self, st: &mut QueueState) {
        if !st.ops.is_empty() && st.woken == 0 && st.sleepers > 0 {
            st.woken = 1;
            self.ready.notify_one();
        }
    }
}

impl Workers {
    /// Hands `ops` to the workers, starting one more whenever the ops
    /// handed over and not yet done outnumber them: an op never waits in
    /// the queue behind one stuck in the kernel while the pool has room.
    /// (A count of idle workers cannot tell: a worker about to take an op
    /// already queued still counts as idle, so the next op would queue
    /// behind it.)
    fn dispatch(&self, ops: impl IntoIterator<Item = IoOp>) {
        let q = &self.queue;
        let mut st = q.lock();
        if !st.open {
            drop(st);
            // Ending an op may submit more (a hedged read): not under the lock.
            for op in ops {
                op.complete(-libc::ESHUTDOWN);
            }
            return;
        }
        let before = st.ops.len();
        st.ops.extend(ops);
        let n = st.ops.len() - before;
        self.queue.queued.store(st.ops.len(), Ordering::Relaxed);
        // Ops a watching worker will take wake nobody; for the others one
        // sleeper is woken (unless one is already on its way), which wakes
        // the next as it takes an op (`Queue::pass`).
        let watched = n.min(st.spin_free);
        st.spin_free -= watched;
        // Counted before any worker can take them (under the lock): a
        // worker that takes one, performs it and counts it done before
        // this count went up would wrap `inflight` below zero, and `grow`
        // would then start workers up to the bound.
        q.inflight.fetch_add(n, Ordering::SeqCst);
        if watched < n {
            q.pass(&mut st);
        }
        drop(st);
        self.grow();
    }

    /// Starts workers while the ops handed over and not yet done outnumber
    /// them (up to the most allowed); threads racing here each take one
    /// step of the count.
    fn grow(&self) {
        loop {
            let w = self.queue.workers.load(Ordering::SeqCst);
            if self.queue.inflight.load(Ordering::SeqCst) <= w || w >= self.max_workers {
                return;
            }
            if self
                .queue
                .workers
                .compare_exchange(w, w + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            let q = Arc::clone(&self.queue);
            let spawned = std::thread::Builder::new()
                .name("dmio-io".into())
                .spawn(move || worker(&q));
            if spawned.is_err() {
                self.queue.workers.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

impl ThreadsEngine {
    /// Starts the dispatcher; workers (at most `max_workers`) start on demand.
    pub fn new(max_workers: usize) -> Result<Arc<ThreadsEngine>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let pool = Arc::new(Workers {
            queue: Arc::new(Queue {
                state: Mutex::new(QueueState {
                    ops: VecDeque::new(),
                    open: true,
                    spinners: 0,
                    spin_free: 0,
                    sleepers: 0,
                    woken: 0,
                }),
                ready: Condvar::new(),
                queued: AtomicUsize::new(0),
                inflight: AtomicUsize::new(0),
                workers: AtomicUsize::new(0),
                max_spinners: max_spinners(),
            }),
            max_workers: max_workers.max(1),
        });
        let d = Dispatcher {
            rx,
            pool: Arc::clone(&pool),
            sched: Sched::default(),
            shutting: false,
        };
        std::thread::Builder::new()
            .name("dmio-dispatch".into())
            .spawn(move || d.run())
            .map_err(|e| Error::from_io("spawn dispatcher", &e))?;
        Ok(Arc::new(ThreadsEngine { tx, pool }))
    }
}

impl ThreadsEngine {
    /// Starts ops that fault rules already admitted elsewhere (the AIO
    /// engine's ops that would block in the kernel): straight to the
    /// workers, never admitted twice.
    pub(crate) fn start_admitted(&self, ops: Vec<IoOp>) {
        self.pool.dispatch(ops);
    }
}

impl Engine for ThreadsEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Threads
    }

    fn submit(&self, ops: &mut Vec<IoOp>) {
        if ops.is_empty() {
            return;
        }
        // An NBD device's op without fault rules goes to its connection
        // from here (as `Sched` would send it).
        if ops
            .iter()
            .any(|op| op.dev.remote().is_some() && !op.dev.faults.is_active())
        {
            let all = std::mem::take(ops);
            ops.extend(all.into_iter().filter_map(|op| {
                if op.dev.faults.is_active() {
                    Some(op)
                } else {
                    super::sched::to_kernel(op)
                }
            }));
            if ops.is_empty() {
                return;
            }
        }
        // Fault rules are the dispatcher's (its Sched may delay or hold
        // the op); everything else goes to the workers from here.
        if ops.iter().any(|op| op.dev.faults.is_active()) {
            let (faulty, plain): (Vec<IoOp>, Vec<IoOp>) = std::mem::take(ops)
                .into_iter()
                .partition(|op| op.dev.faults.is_active());
            self.pool.dispatch(plain);
            if let Err(e) = self.tx.send(Msg::Ops(faulty)) {
                if let Msg::Ops(ops) = e.into_inner() {
                    for op in ops {
                        op.complete(-libc::ESHUTDOWN);
                    }
                }
            }
            return;
        }
        self.pool.dispatch(ops.drain(..));
    }

    fn arm_on_engine_thread(&self, at: Instant, timer: Weak<dyn Timer>) {
        let _ = self.tx.send(Msg::Deadline(at, timer));
    }

    /// The completion thread watches for events for [`SPIN`] before it
    /// parks: at a steady queue depth the next completion comes within
    /// that, and the worker that queues it then wakes nobody.
    fn completion_ring(&self) -> super::CompletionRing {
        super::CompletionRing::parked_spinning(SPIN)
    }

    fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
    }
}

struct Dispatcher {
    rx: Receiver<Msg>,
    pool: Arc<Workers>,
    sched: Sched,
    shutting: bool,
}

impl Dispatcher {
    fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            let now = Instant::now();
            self.sched.expire(now, &mut ready);
            if !ready.is_empty() {
                self.pool.dispatch(ready.drain(..));
            }
            if self.shutting && self.sched.parked() == 0 {
                // Every op is with the workers: they end when the queue
                // is closed and empty.
                self.pool.queue.close();
                return;
            }
            let msg = match self.sched.next_wakeup(now) {
                Some(at) => match self
                    .rx
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match self.rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            self.take(msg);
            while let Ok(m) = self.rx.try_recv() {
                self.take(m);
            }
        }
    }

    fn take(&mut self, m: Msg) {
        match m {
            Msg::Ops(ops) => {
                for op in ops {
                    if let Some(op) = self.sched.admit(op) {
                        self.pool.dispatch([op]);
                    }
                }
            }
            Msg::Deadline(at, req) => self.sched.arm(at, req),
            Msg::Shutdown => {
                self.shutting = true;
                self.sched.clear_deadlines();
            }
        }
    }
}

fn worker(q: &Queue) {
    // Whether the last look found the queue empty right after an op: then
    // the worker watches it for a while before sleeping.
    let mut after_op = false;
    loop {
        let op = {
            let mut st = q.lock();
            loop {
                if let Some(op) = q.pop(&mut st) {
                    break op;
                }
                if !st.open {
                    q.workers.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                if std::mem::take(&mut after_op) && st.spinners < q.max_spinners {
                    st.spinners += 1;
                    st.spin_free += 1;
                    drop(st);
                    spin(q);
                    st = q.lock();
                    st.spinners -= 1;
                    st.spin_free = st.spin_free.saturating_sub(1).min(st.spinners);
                    continue;
                }
                st.sleepers += 1;
                let (g, t) = q
                    .ready
                    .wait_timeout(st, IDLE_EXIT)
                    .unwrap_or_else(|e| e.into_inner());
                st = g;
                st.sleepers -= 1;
                // Woken (or not: a spurious or timed-out return counts
                // too, erring towards more wake-ups), this worker now
                // looks at the queue: the baton is taken.
                st.woken = st.woken.saturating_sub(1);
                if t.timed_out() && st.ops.is_empty() {
                    // Under the lock: an op queued from now on sees one
                    // worker less and starts another if it must.
                    q.workers.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            }
        };
        let res = perform(&op);
        // Done before it is completed: a caller woken by the completion
        // (a SYNC request) that submits again must not count this op as
        // still waiting and start a worker for nothing.
        q.inflight.fetch_sub(1, Ordering::SeqCst);
        op.complete(res);
        after_op = true;
    }
}

/// A worker watching the queue ([`SPIN`]), yielding the CPU at each look:
/// returns when an op is queued or the time is up. The caller then looks
/// under the lock.
fn spin(q: &Queue) {
    let start = Instant::now();
    loop {
        if q.queued.load(Ordering::Relaxed) != 0 {
            return;
        }
        std::thread::yield_now();
        if start.elapsed() >= SPIN {
            return;
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn fdatasync(fd: i32) -> i32 {
    loop {
        // SAFETY: fdatasync on a descriptor kept open by the op's Arc<Device>.
        if unsafe { libc::fdatasync(fd) } == 0 {
            return 0;
        }
        let e = errno();
        if e != libc::EINTR {
            return -e;
        }
    }
}

/// Performs one op with blocking calls; returns bytes done or `-errno`.
fn perform(op: &IoOp) -> i32 {
    let fd = op.dev.fd();
    if op.kind == OpKind::Flush || op.pre_flush {
        let r = fdatasync(fd);
        if r < 0 || op.kind == OpKind::Flush {
            return r;
        }
    }
    let buf = op.buf();
    let len = op.len as usize;
    let mut done = 0usize;
    while done < len {
        let off = (op.offset + done as u64) as libc::off_t;
        // SAFETY: `buf..buf+len` lies in the op's private slot, owned by
        // the op (which this worker holds) until `complete`, or for a
        // zero-copy op in the caller's memory, lent until the region is
        // final, which is never before `complete`; the fd is kept open by
        // the op's Arc<Device>.
        let n = unsafe {
            let p = buf.add(done);
            if op.kind == OpKind::Read {
                libc::pread(fd, p as *mut libc::c_void, len - done, off)
            } else {
                let iov = libc::iovec {
                    iov_base: p as *mut libc::c_void,
                    iov_len: len - done,
                };
                let flags = if op.fua { libc::RWF_DSYNC } else { 0 };
                libc::pwritev2(fd, &iov, 1, off, flags)
            }
        };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return -e;
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    done as i32
}
