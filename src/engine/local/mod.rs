//! The completion thread's own ring.
//!
//! The recommended way to keep a queue depth is to submit the next request
//! from inside notify. With one reactor thread that costs two thread hops
//! per IO (reactor → completion thread → reactor), each a sleep and a
//! wake-up. So the io_uring engine gives the completion thread a second
//! ring ([`super::uring::Core`], created on that thread): asynchronous ops
//! submitted *on the completion thread* of the same client (from notify
//! callbacks, or from hedge timers that fire here) go to it, and the
//! completion thread waits in that ring for completions, timers and new
//! events alike. Reaping a CQE, calling notify and starting the next IO
//! then happen on one thread, as in fio's loop. With IO of its own in the
//! kernel, the thread watches the ring for a while before it sleeps
//! ([`crate::engine::watch`]): at QD1 the next completion then needs no
//! wake-up of the thread, nor of its idle CPU.
//!
//! What stays on the reactor: IO submitted by every other thread, and all
//! `DM_IO_SYNC` requests with their deadlines (a SYNC `dm_io` from notify
//! blocks this thread, so its IO and deadline must not depend on it). The
//! timers of asynchronous requests submitted elsewhere come here too
//! ([`Remote`]): this thread delivers their TIMEOUTs, so firing them here
//! saves a wake-up.
//!
//! The completion thread sees this ring only through the
//! [`super::CompletionRing`] the engine returned to it (`LocalRing`); the
//! functions here serve that object and the engine's submit and timer
//! paths, which find the calling thread's ring in a thread-local.
//!
//! Ownership is the reactor's: every op in this ring owns its private memory
//! until its CQE is reaped here; after the client is destroyed the thread
//! stays until they are all reaped. Callbacks run while the ring is not
//! borrowed, so the ops and timers they offer go straight into it; those
//! offered from inside the ring's own work (a reap, a timer firing) wait in
//! an inbox until the next turn.

use super::reactor::ReactorCore;
use super::uring::{Core, Waker};
use super::{IoOp, Timer, Wake};
use crate::thread_mark::Mark;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

type Timers = Vec<(Instant, Weak<dyn Timer>)>;

/// Timers other threads arm on this ring: the deadlines (and hedge timers)
/// of asynchronous requests submitted outside the completion thread. The
/// thread that fires a deadline is the one that delivers its TIMEOUT, so a
/// burst of deadlines costs one wake-up (this thread's timer) instead of
/// two in a row (the reactor's timer, then this thread's eventfd), each
/// on a CPU that may be halted.
pub(super) struct Remote {
    /// `None` once the ring is closed (timers then stay on the reactor).
    timers: Mutex<Option<Timers>>,
    /// Clients' private memory to register (`true`) or unregister with
    /// the ring, in order (a shared engine's clients come and go).
    memory: Mutex<Vec<((usize, usize), bool)>>,
    /// Timers or memory wait in `timers`, `memory` (read without the lock).
    queued: AtomicBool,
    waker: Arc<Waker>,
    /// Sockets attached to the ring or kicked ([`super::socket`]).
    pub(super) kicks: Arc<super::socket::Kicks>,
}

/// A thread handing over timers wakes the ring's thread at least once per
/// this many, even when none is due before it wakes anyway, so that arming
/// a long run of them is spread out instead of delaying the first deadline.
const REMOTE_BATCH: usize = 256;

impl Remote {
    /// Hands a timer to the ring's thread, waking it when it would sleep
    /// past `at` (or [`REMOTE_BATCH`] timers wait); `false` when the ring
    /// is closed.
    pub(super) fn arm(&self, at: Instant, timer: Weak<dyn Timer>) -> bool {
        let mut g = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(timers) = g.as_mut() else {
            return false;
        };
        timers.push((at, timer));
        let many = timers.len() % REMOTE_BATCH == 0;
        self.queued.store(true, Ordering::SeqCst);
        drop(g);
        if many || self.waker.sleeps_past(at) {
            let wake: Arc<dyn Wake> = self.waker.clone();
            super::wake::wake_or_defer(&wake);
        }
        true
    }

    /// Hands a client's private memory to the ring's thread, which
    /// registers it (`add`) or takes it out of its table at its next turn.
    pub(super) fn memory(&self, region: (usize, usize), add: bool) {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((region, add));
        self.queued.store(true, Ordering::SeqCst);
        let wake: Arc<dyn Wake> = self.waker.clone();
        super::wake::wake_or_defer(&wake);
    }

    /// Wakes the ring's thread if it sleeps (now, or at the end of the
    /// current batch of deferred wake-ups).
    pub(super) fn wake(&self) {
        let wake: Arc<dyn Wake> = self.waker.clone();
        super::wake::wake_or_defer(&wake);
    }

    fn queued(&self) -> bool {
        self.queued.load(Ordering::SeqCst)
    }

    /// Moves the queued timers into `into`, and the memory changes into `mem`.
    fn take(&self, into: &mut Timers, mem: &mut Vec<((usize, usize), bool)>) {
        if self.queued.swap(false, Ordering::SeqCst) {
            let mut g = self.timers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = g.as_mut() {
                into.append(t);
            }
            drop(g);
            mem.append(&mut self.memory.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    fn close(&self) {
        self.kicks.close();
        *self.timers.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.queued.store(false, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Inbox {
    ops: Vec<IoOp>,
    timers: Timers,
}

impl Inbox {
    const fn new() -> Inbox {
        Inbox {
            ops: Vec::new(),
            timers: Vec::new(),
        }
    }
}

/// This thread's ring and what waits for it: one thread-local, so that
/// each step below looks it up once (a look-up in a shared library is a
/// call to `__tls_get_addr`).
pub(super) struct Local {
    /// The engine whose completion thread this is (0: none).
    owner: Cell<u64>,
    ring: RefCell<Option<Core>>,
    /// Ops and timers offered while the ring was busy.
    inbox: RefCell<Inbox>,
    /// Ops were offered (or a timer went to the inbox) since the last
    /// [`submit_queued`].
    offered: Cell<bool>,
    /// The inbox's previous buffers, swapped in by `flush_inbox` so that
    /// queueing ops allocates nothing in the steady state.
    spare: RefCell<Inbox>,
    /// Timers from other threads.
    remote: RefCell<Option<Arc<Remote>>>,
    /// The engine's mark naming this value ([`offer_one`]): cleared when
    /// the ring goes (`LocalRing`'s drop) and, should that not have
    /// happened, when this value goes.
    mark: RefCell<Option<Arc<Mark<Local>>>>,
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(m) = self.mark.get_mut().take() {
            m.clear();
        }
    }
}

thread_local! {
    static HERE: Local = const {
        Local {
            owner: Cell::new(0),
            ring: RefCell::new(None),
            inbox: RefCell::new(Inbox::new()),
            offered: Cell::new(false),
            spare: RefCell::new(Inbox::new()),
            remote: RefCell::new(None),
            mark: RefCell::new(None),
        }
    };
}

impl Local {
    fn inbox_empty(&self) -> bool {
        self.inbox
            .try_borrow()
            .map_or(true, |i| i.ops.is_empty() && i.timers.is_empty())
    }

    /// Timers from other threads wait to be armed.
    fn remote_queued(&self) -> bool {
        self.remote
            .try_borrow()
            .is_ok_and(|r| r.as_ref().is_some_and(|r| r.queued()))
    }

    /// Moves the timers other threads armed into the inbox, and applies
    /// the memory (un)registrations they asked for.
    fn take_remote(&self) {
        let mut mem = Vec::new();
        {
            let (Ok(r), Ok(mut inbox)) = (self.remote.try_borrow(), self.inbox.try_borrow_mut())
            else {
                return;
            };
            if let Some(r) = r.as_ref() {
                r.take(&mut inbox.timers, &mut mem);
            }
        }
        if !mem.is_empty() {
            let ran = self.with_core(|c| {
                for (region, add) in mem.drain(..) {
                    if add {
                        c.register(region);
                    } else {
                        c.unregister(region);
                    }
                }
            });
            if !ran {
                // Not now (never expected): back into the queue, nothing lost.
                if let Ok(r) = self.remote.try_borrow() {
                    if let Some(r) = r.as_ref() {
                        for (region, add) in mem {
                            r.memory(region, add);
                        }
                    }
                }
            }
        }
    }

    /// Runs `f` on the ring unless it is busy (this thread is inside its
    /// reap or timers) or gone; `false` then. The loop's own steps are
    /// never re-entered (callbacks run outside), and skipping one would be
    /// harmless: the caller's loop comes back.
    fn with_core(&self, f: impl FnOnce(&mut Core)) -> bool {
        match self.ring.try_borrow_mut() {
            Ok(mut g) => g.as_mut().map(f).is_some(),
            Err(_) => false,
        }
    }

    /// Moves what the inbox holds into the ring, fires due timers and
    /// fills the submission queue.
    fn flush(&self) {
        if self.remote_queued() {
            self.take_remote();
        }
        if !self.inbox_empty() {
            self.flush_inbox();
        }
        self.with_core(|c| c.pump_lazy());
    }

    fn flush_inbox(&self) {
        let Ok(mut spare) = self
            .spare
            .try_borrow_mut()
            .map(|mut s| std::mem::take(&mut *s))
        else {
            return;
        };
        let Ok(mut inbox) = self.inbox.try_borrow_mut() else {
            return;
        };
        std::mem::swap(&mut *inbox, &mut spare);
        drop(inbox);
        let ran = self.with_core(|c| {
            for (at, timer) in spare.timers.drain(..) {
                c.arm(at, timer);
            }
            c.admit(spare.ops.drain(..));
        });
        if !ran {
            // Not now (never expected): back into the inbox, nothing lost.
            if let Ok(mut i) = self.inbox.try_borrow_mut() {
                i.ops.append(&mut spare.ops);
                i.timers.append(&mut spare.timers);
            }
        }
        if let Ok(mut s) = self.spare.try_borrow_mut() {
            std::mem::swap(&mut *s, &mut spare);
        }
    }
}

/// The calling thread's ring, as its [`super::CompletionRing`] holds it:
/// removes the ring when dropped (after [`idle`]). Not `Send`: the ring
/// lives in this thread's thread-local.
pub(super) struct LocalRing {
    waker: Arc<dyn Wake>,
    /// Where the engine's submissions on this thread find [`HERE`]
    /// ([`offer_one`]); cleared when the ring goes.
    mark: Arc<Mark<Local>>,
    /// This thread's [`HERE`], so that the step after each callback
    /// ([`LocalRing::submit_queued`]) needs no thread-local look-up. It
    /// also makes the type neither `Send` nor `Sync`.
    here: *const Local,
}

impl LocalRing {
    pub(super) fn waker(&self) -> Arc<dyn Wake> {
        Arc::clone(&self.waker)
    }

    /// [`submit_queued`] on this ring's thread.
    #[inline]
    pub(super) fn submit_queued(&self, more: &dyn Fn() -> bool) {
        // SAFETY: `here` is the thread-local of the thread that made this
        // ring, and the ring never leaves that thread (not `Send`); it is
        // dropped before that thread's thread-locals are (its `Drop` uses
        // `HERE` itself), so the pointer is valid whenever `self` is.
        submit_queued_in(unsafe { &*self.here }, more)
    }
}

impl Drop for LocalRing {
    fn drop(&mut self) {
        self.mark.clear();
        remove();
    }
}

/// Creates the ring on the calling thread for engine `engine`, with the
/// private memory of its clients so far registered (later ones come
/// through [`Remote::memory`]). Returns the ring and how other
/// threads hand it timers; `None` if the kernel refuses a second ring (the
/// thread then works without one).
pub(super) fn install(
    engine: u64,
    entries: u32,
    memory: &[(usize, usize)],
    mark: &Arc<Mark<Local>>,
) -> Option<(LocalRing, Arc<Remote>)> {
    let waker = Waker::new().ok()?;
    let mut core = Core::new(entries, Arc::clone(&waker)).ok()?;
    // Its callbacks keep a queue depth: it watches for completions before
    // it sleeps (`Core::with_watch`).
    core.with_watch();
    for &m in memory {
        core.register(m);
    }
    let wake: Arc<dyn Wake> = waker.clone();
    let remote = Arc::new(Remote {
        timers: Mutex::new(Some(Vec::new())),
        memory: Mutex::new(Vec::new()),
        queued: AtomicBool::new(false),
        waker,
        kicks: core.kicks(),
    });
    let here = HERE.with(|l| {
        *l.ring.borrow_mut() = Some(core);
        *l.remote.borrow_mut() = Some(Arc::clone(&remote));
        l.owner.set(engine);
        *l.mark.borrow_mut() = Some(Arc::clone(mark));
        l as *const Local
    });
    // SAFETY: `here` is this thread's `HERE`, valid until its
    // thread-locals go; the mark is cleared when the ring is dropped or,
    // at the latest, when `HERE` itself goes (`Local`'s drop), so before
    // the value goes and before the thread ends.
    unsafe { mark.set(here) };
    let ring = LocalRing {
        waker: wake,
        mark: Arc::clone(mark),
        here,
    };
    Some((ring, remote))
}

/// Takes the asynchronous ops out of `ops` when the calling thread's ring
/// belongs to `engine`; leaves the others (for the reactor). They go
/// straight into the ring's submission queue (not submitted yet, see
/// [`submit_queued`]), or to the inbox when the ring is busy (an op
/// offered while the ring itself completes or fires something).
pub(super) fn offer(engine: u64, ops: &mut Vec<IoOp>) {
    HERE.with(|l| {
        if l.owner.get() != engine {
            return;
        }
        let mut not_sync;
        let mine = if ops.iter().any(|o| o.sync) {
            let (sync, not): (Vec<IoOp>, Vec<IoOp>) = ops.drain(..).partition(|o| o.sync);
            *ops = sync;
            not_sync = not;
            &mut not_sync
        } else {
            ops
        };
        if mine.is_empty() {
            return;
        }
        l.offered.set(true);
        let direct = l.with_core(|c| {
            c.admit(mine.drain(..));
            c.push_backlog();
        });
        if !direct {
            l.inbox.borrow_mut().ops.append(mine);
        }
    })
}

/// [`offer`] of one op: takes it out of `op` when it is an asynchronous
/// op on the completion thread of `engine` (whose ring state `mark` finds
/// on that thread without a thread-local look-up), else leaves it.
pub(super) fn offer_one(mark: &Mark<Local>, engine: u64, op: &mut Option<IoOp>) {
    if op.as_ref().is_none_or(|o| o.sync) {
        return;
    }
    fn offer(l: &Local, engine: u64, op: &mut Option<IoOp>) {
        if l.owner.get() != engine {
            return;
        }
        l.offered.set(true);
        // As `with_core`.
        match l.ring.try_borrow_mut() {
            Ok(mut g) if g.is_some() => g.as_mut().expect("checked").admit_one(op),
            _ => l.inbox.borrow_mut().ops.extend(op.take()),
        }
    }
    match mark.here() {
        Some(l) => offer(l, engine, op),
        // Another thread (the mark names the ring's own).
        None if crate::thread_mark::AVAILABLE => {}
        None => HERE.with(|l| offer(l, engine, op)),
    }
}

/// Keeps the timer of an asynchronous request when the calling thread's
/// ring belongs to `engine`; `false`: someone else keeps it.
pub(super) fn offer_timer(engine: u64, at: Instant, timer: &Weak<dyn Timer>) -> bool {
    HERE.with(|l| {
        if l.owner.get() != engine {
            return false;
        }
        if !l.with_core(|c| c.arm(at, timer.clone())) {
            l.inbox.borrow_mut().timers.push((at, timer.clone()));
            l.offered.set(true);
        }
        true
    })
}

thread_local! {
    /// On a reactor thread: its engine's completion ring, once that exists.
    static REACTOR_HOME: RefCell<Option<Arc<std::sync::OnceLock<Arc<Remote>>>>> =
        const { RefCell::new(None) };
}

/// Called by a reactor thread at its start: where the sockets of the ops it
/// admits go ([`home`]).
pub(super) fn set_reactor_home(r: Arc<std::sync::OnceLock<Arc<Remote>>>) {
    REACTOR_HOME.with(|h| *h.borrow_mut() = Some(r));
}

/// The ring a socket first used on this thread is attached to
/// ([`super::socket::home`]): this thread's own ring, else the completion
/// ring of the reactor this thread is.
pub(super) fn home() -> Option<Arc<Remote>> {
    let mine = HERE.with(|l| {
        if l.owner.get() == 0 {
            return None;
        }
        l.remote.try_borrow().ok().and_then(|r| r.clone())
    });
    mine.or_else(|| {
        REACTOR_HOME.with(|h| {
            h.try_borrow()
                .ok()
                .and_then(|h| h.as_ref().and_then(|o| o.get().cloned()))
        })
    })
}

/// Whether the calling thread has a local ring (not closed).
pub(super) fn active() -> bool {
    HERE.with(|l| l.owner.get() != 0)
}

/// While fewer ops than this are in the kernel, IO a callback submits
/// starts at once, so the device does not idle while later callbacks of
/// the batch run; 64 covers a 2-leg mirror at QD32.
const EAGER_BELOW: usize = 64;
/// Deeper than that, entries go to the kernel in groups of this many (one
/// syscall each), and the rest when the batch ends: at high queue depths
/// a syscall per IO costs more CPU than the device gains.
const GROUP: usize = 8;

/// After one notify callback: starts the IO queued so far at once when
/// more callbacks are waiting (`more()`, asked only when the callback
/// started IO; see [`EAGER_BELOW`]). Otherwise the thread's next wait
/// submits it in the same system call.
#[cfg(test)]
pub(super) fn submit_queued(more: &dyn Fn() -> bool) {
    HERE.with(|l| submit_queued_in(l, more))
}

/// [`submit_queued`] with the thread's [`Local`] at hand.
fn submit_queued_in(l: &Local, more: &dyn Fn() -> bool) {
    // Most callbacks of a burst (TIMEOUTs, say) start no IO: one check.
    if !l.offered.replace(false) {
        return;
    }
    if !l.inbox_empty() {
        l.flush();
    }
    if !more() {
        return;
    }
    l.with_core(|c| {
        let (in_kernel, queued) = c.depth();
        if queued > 0 && (in_kernel < EAGER_BELOW || queued >= GROUP) {
            c.submit_now();
        }
    });
}

/// No op queued, in the kernel or parked by a fault rule.
pub(super) fn idle() -> bool {
    HERE.with(|l| {
        let mut idle = true;
        l.with_core(|c| idle = c.idle());
        idle && l.inbox_empty()
    })
}

/// The client is gone: new ops go elsewhere, deadlines are forgotten (every
/// request is final); ops still running stay until [`idle`].
pub(super) fn close() {
    HERE.with(|l| {
        if let Some(r) = l.remote.borrow_mut().take() {
            r.close();
        }
        l.flush();
        l.owner.set(0);
        l.with_core(|c| {
            c.clear_deadlines();
            c.detach_sockets();
        });
    })
}

/// Drops the ring (only when [`idle`]).
fn remove() {
    HERE.with(|l| *l.ring.borrow_mut() = None);
}

/// One turn of the ring: starts what callbacks queued, sleeps until
/// `pending()`, a completion, a timer or `max`, then completes what the
/// kernel finished (their events go to the queue).
pub(super) fn turn(pending: &dyn Fn() -> bool, max: Option<Duration>) {
    HERE.with(|l| {
        l.flush();
        l.with_core(|c| {
            c.wait(
                None,
                &|| pending() || !l.inbox_empty() || l.remote_queued(),
                max,
            );
            c.reap();
        });
    })
}

#[cfg(test)]
mod tests;
