//! The caller's own ring: `DM_IO_SYNC` IO on the `dm_io` caller's thread.
//!
//! A SYNC `dm_io` blocks its caller until every region is final. Handing
//! its ops to the reactor costs two thread hand-offs per request (caller →
//! reactor, reactor → caller). So with the io_uring engine a thread that
//! is not a completion thread gets a small ring of its own ([`Core`],
//! created lazily on its first SYNC request, DEFER_TASKRUN and
//! SINGLE_ISSUER like the others): the request's ops and timers (its
//! deadline, hedge timers) go into it, and the caller waits in it
//! (`io_uring_enter` until a completion, the next timer or a wake-up), then
//! reaps, completes and delivers notify itself. With a few ops in the
//! kernel it watches the ring for their completions before it sleeps
//! ([`crate::engine::watch`]), as the completion thread does. Another thread that ends
//! the request (a cancel, a destroy, an NBD reply) wakes the ring through
//! its eventfd ([`Waker`]), which the request holds while it waits.
//!
//! The ring runs plain READ/WRITE (no registered private memory): a
//! client's pool may be unmapped after its destroy and its address reused,
//! and this ring never hears of destroys. Library-page chunks (mapped for
//! good) are registered as on every ring. It is a plain ring (not
//! SINGLE_ISSUER, not DEFER_TASKRUN): the kernel posts its completions
//! without the thread entering it, and another thread may reap it (below).
//!
//! Ownership: every op in this ring owns its private memory until its CQE
//! is reaped. When the thread's SYNC call returns, the ops left belong to
//! final regions, or to regions that timed out and still run (a write with
//! `DM_IO_RETURN_ON_TIMEOUT`, which returns at its deadline). Those parked
//! by a fault rule (never started) for a final region complete at once as
//! cancelled; if some are still in the kernel (a cancelled or abandoned
//! region's IO on a stuck device, a write that timed out), or parked for a
//! region that still runs, the thread gives the whole ring away to the
//! orphan reaper ([`orphan`]: a thread started
//! only then, which reaps such rings until they are idle, frees their
//! private memory and closes them, then ends) and makes a new ring at its
//! next SYNC call. So a thread that never calls again, or exits, loses
//! nothing, and a client destroy waits for none of it.
//!
//! Not used: on a completion thread (its SYNC calls block a ring that has
//! other work; they keep the reactor), with `DMIO_SYNC_RING=0`, when the
//! kernel refuses another ring, and in a forked child's inherited ring.

use super::{Core, Waker};
use crate::engine::reactor::ReactorCore;
use crate::engine::{IoOp, Timer, Wake};
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Entries of a caller's ring: a SYNC request of a few regions.
const ENTRIES: u32 = 64;

type Timers = Vec<(Instant, Weak<dyn Timer>)>;

struct Here {
    ring: RefCell<Option<Core>>,
    waker: RefCell<Option<Arc<Waker>>>,
    /// The process the ring was made in (a forked child makes its own).
    pid: Cell<u32>,
    /// The kernel refused a ring: never try again on this thread.
    refused: Cell<bool>,
    /// SYNC calls of this thread using the ring, nested (from notify).
    depth: Cell<u32>,
    /// Ops and timers offered while the ring was busy (inside its reap
    /// or timers).
    inbox_ops: RefCell<Vec<IoOp>>,
    inbox_timers: RefCell<Timers>,
}

impl Drop for Here {
    /// Thread exit: ops still in the kernel go with the ring to the reaper.
    fn drop(&mut self) {
        let Some(mut core) = self.ring.get_mut().take() else {
            return;
        };
        if self.pid.get() != pid() {
            // A forked child's copy of its parent's ring: not ours.
            std::mem::forget(core);
            return;
        }
        for op in take_unneeded(&mut core) {
            op.complete(-libc::ECANCELED);
        }
        core.clear_deadlines();
        if !core.idle() {
            orphan(core);
        }
    }
}

/// The ops parked by fault rules or waiting for a kernel slot that may end
/// unstarted: their regions are final. Those of a region still running
/// after its SYNC call returned (`DM_IO_RETURN_ON_TIMEOUT`) stay, on their
/// schedule.
fn take_unneeded(core: &mut Core) -> Vec<IoOp> {
    let keep = |op: &IoOp| op.sink.keep_parked(op.region);
    let mut ops = core.sched.take_parked_unless(keep);
    ops.extend(core.take_waiting_unless(keep));
    ops
}

/// Rings given away with ops still in the kernel, and whether the reaper
/// thread runs.
static ORPHANS: std::sync::Mutex<(Vec<Orphan>, bool)> = std::sync::Mutex::new((Vec::new(), false));

/// A caller's ring handed to the reaper thread.
struct Orphan(Core);

// SAFETY: a caller's ring is a plain ring (no SINGLE_ISSUER), so any thread
// may submit to and reap it; its ops, timers and waker are `Send` (they
// cross to the reactor through its channel too). Once orphaned, only the
// reaper touches it (under `ORPHANS`' lock or after taking it out).
unsafe impl Send for Orphan {}

/// Hands `core` (not idle) to the reaper thread, started if none runs.
/// If no thread can be started, the ring is kept for good (its private
/// memory stays in use rather than be freed under the kernel's IO).
fn orphan(mut core: Core) {
    core.submit_now();
    let mut g = ORPHANS.lock().unwrap_or_else(|p| p.into_inner());
    g.0.push(Orphan(core));
    if g.1 {
        return;
    }
    let started = std::thread::Builder::new()
        .name("dmio-sync-reaper".into())
        .spawn(reap_orphans)
        .is_ok();
    g.1 = started;
}

/// The reaper: reaps the orphaned rings every millisecond (their CQEs
/// are posted without anyone entering them), closes them once idle, and
/// ends when none is left.
fn reap_orphans() {
    loop {
        let mut rings = {
            let mut g = ORPHANS.lock().unwrap_or_else(|p| p.into_inner());
            if g.0.is_empty() {
                g.1 = false;
                return;
            }
            std::mem::take(&mut g.0)
        };
        for Orphan(c) in rings.iter_mut() {
            c.reap();
            c.pump_lazy();
            // Enter the ring only when there is something to start (ops
            // parked by fault rules and released): a ring that only
            // waits for the kernel costs no system call per turn.
            if c.depth().1 > 0 {
                c.submit_now();
            }
        }
        rings.retain(|o| !o.0.idle());
        let mut g = ORPHANS.lock().unwrap_or_else(|p| p.into_inner());
        g.0.append(&mut rings);
        drop(g);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A plain ring (see the module comment).
fn build_plain(entries: u32) -> Option<io_uring::IoUring> {
    io_uring::IoUring::builder().build(entries).ok()
}

thread_local! {
    static HERE: Here = const {
        Here {
            ring: RefCell::new(None),
            waker: RefCell::new(None),
            pid: Cell::new(0),
            refused: Cell::new(false),
            depth: Cell::new(0),
            inbox_ops: RefCell::new(Vec::new()),
            inbox_timers: RefCell::new(Vec::new()),
        }
    };
}

/// The caller's ring is on by default; `DMIO_SYNC_RING=0` turns it off
/// (SYNC IO then goes to the reactor, as with the other engines).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("DMIO_SYNC_RING").map_or(true, |v| v != "0"))
}

/// The process id, read once and again in a forked child, not with a
/// system call per SYNC call (glibc does not cache `getpid`).
fn pid() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static PID: AtomicU32 = AtomicU32::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    extern "C" fn forked() {
        // In the child: the next call reads the child's id.
        PID.store(0, Ordering::Relaxed);
    }
    HOOK.call_once(|| {
        // SAFETY: registers a child handler that only stores to an atomic
        // (async-signal-safe); it is never unregistered, and the library
        // is never unloaded (`-z nodelete`).
        unsafe { libc::pthread_atfork(None, None, Some(forked)) };
    });
    match PID.load(Ordering::Relaxed) {
        0 => {
            let p = std::process::id();
            PID.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

/// While alive, the calling thread's SYNC ops and timers go to its ring.
pub struct Guard {
    _here: std::marker::PhantomData<*const ()>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = HERE.try_with(|h| {
            let d = h.depth.get() - 1;
            h.depth.set(d);
            if d == 0 {
                h.settle();
            }
        });
    }
}

impl Here {
    /// The ring, made on first use; `None` if the kernel refuses it.
    fn ensure(&self) -> Option<Arc<Waker>> {
        let pid = pid();
        if self.pid.get() != pid {
            if let Some(old) = self.ring.borrow_mut().take() {
                // Inherited across fork: the parent's ring, not ours.
                std::mem::forget(old);
            }
            *self.waker.borrow_mut() = None;
            self.refused.set(false);
        }
        if self.refused.get() {
            return None;
        }
        if let Some(w) = self.waker.borrow().as_ref() {
            return Some(Arc::clone(w));
        }
        let made = Waker::new().ok().and_then(|w| {
            let ring = build_plain(ENTRIES)?;
            Core::with_ring(ring, Arc::clone(&w)).ok().map(|mut c| {
                // The caller waits for its IO: memory file systems' ops
                // run here, not on an io-wq thread (`Core::run_inline`),
                // and it watches for completions before it sleeps
                // (`Core::with_watch`; a plain ring's CQ tail shows them).
                c.inline_mem = true;
                c.with_watch();
                (w, c)
            })
        });
        let Some((waker, core)) = made else {
            self.refused.set(true);
            return None;
        };
        *self.ring.borrow_mut() = Some(core);
        *self.waker.borrow_mut() = Some(Arc::clone(&waker));
        self.pid.set(pid);
        Some(waker)
    }

    /// Every SYNC call of the thread returned: ops parked by fault rules
    /// belong to final requests; they never started and end now, so their
    /// private memory does not wait for the thread's next call.
    fn settle(&self) {
        // Its deadlines are cleared below (every SYNC call of the thread
        // returned: their requests are final or timed out): no clock read
        // to fire them first.
        self.flush(false);
        let Ok(mut g) = self.ring.try_borrow_mut() else {
            return;
        };
        let Some(c) = g.as_mut() else { return };
        c.clear_deadlines();
        let parked = take_unneeded(c);
        let gone = if !c.idle() && (c.inflight > 0 || c.sched.parked() > 0 || c.waiting_for_slots())
        {
            // IO still in the kernel or waiting for a kernel slot of its
            // disk (`crate::device::slots`), or ops of a region still running
            // (`DM_IO_RETURN_ON_TIMEOUT`) parked by fault rules: the ring
            // goes to the reaper, which runs them on; the thread makes a
            // new one at its next SYNC call.
            *self.waker.borrow_mut() = None;
            g.take()
        } else {
            None
        };
        drop(g);
        for op in parked {
            op.complete(-libc::ECANCELED);
        }
        if let Some(c) = gone {
            orphan(c);
        }
    }

    fn inbox_empty(&self) -> bool {
        self.inbox_ops.try_borrow().map_or(true, |i| i.is_empty())
            && self
                .inbox_timers
                .try_borrow()
                .map_or(true, |i| i.is_empty())
    }

    /// Moves the inbox into the ring and fires due timers (which may fill
    /// the inbox again: a few rounds). `deadlines`: fire due deadlines too
    /// (reading the clock); else only the parked ops' timers are looked at.
    fn flush(&self, deadlines: bool) {
        for _ in 0..4 {
            let ops = std::mem::take(&mut *self.inbox_ops.borrow_mut());
            let timers = std::mem::take(&mut *self.inbox_timers.borrow_mut());
            let Ok(mut g) = self.ring.try_borrow_mut() else {
                return;
            };
            let Some(c) = g.as_mut() else { return };
            for (at, t) in timers {
                c.arm(at, t);
            }
            c.admit(ops);
            if deadlines {
                c.pump_lazy();
            } else {
                c.pump_ops_lazy();
            }
            drop(g);
            if self.inbox_empty() {
                return;
            }
        }
    }
}

/// Makes the calling thread's SYNC IO run in its own ring, if it can have
/// one: returns the guard to hold while the SYNC call lasts, and the
/// ring's waker (for threads that end the request). `None`: the SYNC
/// request keeps the reactor.
pub fn enter() -> Option<(Guard, Arc<dyn Wake>)> {
    if !enabled() || crate::completion::on_completion_thread() {
        return None;
    }
    HERE.try_with(|h| {
        let w = h.ensure()?;
        h.depth.set(h.depth.get() + 1);
        let w: Arc<dyn Wake> = w;
        Some((
            Guard {
                _here: std::marker::PhantomData,
            },
            w,
        ))
    })
    .ok()
    .flatten()
}

fn active(h: &Here) -> bool {
    h.depth.get() > 0
}

/// Takes the SYNC ops out of `ops` while the calling thread is in a SYNC
/// call on its ring.
pub(super) fn offer(ops: &mut Vec<IoOp>) {
    // Asynchronous ops (most) never go here: no thread-local look-up.
    if !ops.iter().all(|o| o.sync) {
        return;
    }
    let _ = HERE.try_with(|h| {
        if !active(h) {
            return;
        }
        match h.ring.try_borrow_mut() {
            Ok(mut g) if g.is_some() => g.as_mut().expect("checked").admit(ops.drain(..)),
            _ => h.inbox_ops.borrow_mut().append(ops),
        }
    });
}

/// [`offer`] of one op: takes it out of `op` when taken.
pub(super) fn offer_one(op: &mut Option<IoOp>) {
    let _ = HERE.try_with(|h| {
        if !active(h) || !op.as_ref().is_some_and(|o| o.sync) {
            return;
        }
        let o = op.take().expect("checked");
        match h.ring.try_borrow_mut() {
            Ok(mut g) if g.is_some() => g.as_mut().expect("checked").admit(std::iter::once(o)),
            _ => h.inbox_ops.borrow_mut().push(o),
        }
    });
}

/// Keeps a SYNC request's timer in the calling thread's ring while it is
/// in a SYNC call there; `false`: someone else keeps it.
pub(super) fn offer_timer(at: Instant, timer: &Weak<dyn Timer>) -> bool {
    HERE.try_with(|h| {
        if !active(h) {
            return false;
        }
        match h.ring.try_borrow_mut() {
            Ok(mut g) if g.is_some() => g.as_mut().expect("checked").arm(at, timer.clone()),
            _ => h.inbox_timers.borrow_mut().push((at, timer.clone())),
        }
        true
    })
    .unwrap_or(false)
}

/// One turn for a SYNC caller: fires due timers, starts what is queued,
/// sleeps until `ready()`, a completion, a timer, a wake-up or `max`, then
/// completes what the kernel finished and starts what that queued. A
/// deadline that came due during the sleep fires at the start of the
/// caller's next turn (which finds it due before it sleeps again), not
/// after the reap: one clock read per turn instead of two (the SYNC
/// caller's loop turns again until its request is done, and a request
/// that is done needs its deadline no more).
pub fn turn(ready: &dyn Fn() -> bool, max: Option<Duration>) {
    let _ = HERE.try_with(|h| {
        h.flush(true);
        if let Ok(mut g) = h.ring.try_borrow_mut() {
            if let Some(c) = g.as_mut() {
                c.wait(None, &|| ready() || !h.inbox_empty(), max);
                c.reap();
            }
        }
        h.flush(false);
    });
}

/// Whether the calling thread is in a SYNC call whose IO runs in its ring:
/// a wait of that thread (for private memory, for zero-copy IO to end)
/// must keep turning the ring ([`drive_briefly`]).
pub fn runs_io() -> bool {
    HERE.try_with(active).unwrap_or(false)
}

/// A wait step for a thread that [`runs_io`]: drives its ring for at most
/// a millisecond.
pub fn drive_briefly() {
    turn(&|| false, Some(Duration::from_millis(1)));
}
