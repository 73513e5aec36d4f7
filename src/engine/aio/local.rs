//! The completion thread's own AIO context: what the io_uring engine's
//! `engine/local/` is for io_uring, for the same reason.
//!
//! Keeping a queue depth means submitting the next request from notify;
//! through the reactor that costs two thread hops per IO (reactor →
//! completion thread → reactor). So the AIO engine gives the completion
//! thread a [`Core`] of its own (a second AIO context with its own
//! eventfd): asynchronous ops submitted *on the completion thread* of the
//! same client go into it, and that thread sleeps in `io_getevents` on it,
//! woken by its completions and by other threads, which write the eventfd
//! (polled in the context) when they queue events for it. Reaping an event, calling notify
//! and submitting the next IO then happen on one thread, as in fio's loop.
//! Before it sleeps, with IO of its own in the kernel, the thread watches
//! the ring of events for a while ([`Core::with_watch`]): at QD1 the next
//! event then needs no wake-up of the thread, nor of its idle CPU.
//!
//! What stays on the reactor: IO submitted by every other thread, all
//! `DM_IO_SYNC` requests (a SYNC `dm_io` from notify blocks this thread),
//! and every timer (so a deadline never depends on this thread, which a
//! slow callback may hold).
//!
//! Every op in this context is owned by the core's slab until its event is
//! reaped here; after the client is destroyed the thread stays until they
//! are all reaped. Callbacks run while the core is not borrowed, so the
//! ops they submit go straight into it; ops submitted from inside the
//! core's own work (an op that ends and starts a hedged read's next
//! region) wait in an inbox until the next turn.

use super::blocking::Blocking;
use super::ring::Core;
use super::sys::Context;
use crate::engine::reactor::ReactorCore;
use crate::engine::{IoOp, Wake};
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

struct Local {
    /// The engine whose completion thread this is (0: none, or closed).
    owner: Cell<u64>,
    core: RefCell<Option<Core>>,
    /// Ops offered while the core was busy.
    inbox: RefCell<Vec<IoOp>>,
    /// Ops were offered since the last [`submit_queued`].
    offered: Cell<bool>,
}

thread_local! {
    static HERE: Local = const {
        Local {
            owner: Cell::new(0),
            core: RefCell::new(None),
            inbox: RefCell::new(Vec::new()),
            offered: Cell::new(false),
        }
    };
}

impl Local {
    fn inbox_empty(&self) -> bool {
        self.inbox.try_borrow().map_or(true, |i| i.is_empty())
    }

    /// Runs `f` on the core unless it is busy (this thread is inside its
    /// reap) or gone; `false` then.
    fn with_core(&self, f: impl FnOnce(&mut Core)) -> bool {
        match self.core.try_borrow_mut() {
            Ok(mut g) => g.as_mut().map(f).is_some(),
            Err(_) => false,
        }
    }

    /// Moves the inbox into the core and submits what is queued.
    fn flush(&self) {
        if !self.inbox_empty() {
            let ops = std::mem::take(&mut *self.inbox.borrow_mut());
            let mut ops = Some(ops);
            let ran = self.with_core(|c| c.admit(ops.take().into_iter().flatten()));
            if !ran {
                if let Some(mut o) = ops {
                    self.inbox.borrow_mut().append(&mut o);
                }
            }
        }
        self.with_core(|c| c.pump_lazy());
    }
}

/// The calling thread's core, as its [`crate::engine::CompletionRing`]
/// holds it: removes the core when dropped (after [`idle`]). Not `Send`:
/// the core lives in this thread's thread-local.
pub(in crate::engine) struct LocalAio {
    waker: Arc<dyn Wake>,
    _here: std::marker::PhantomData<*const ()>,
}

impl LocalAio {
    pub(in crate::engine) fn waker(&self) -> Arc<dyn Wake> {
        Arc::clone(&self.waker)
    }
}

impl Drop for LocalAio {
    fn drop(&mut self) {
        HERE.with(|l| *l.core.borrow_mut() = None);
    }
}

/// Creates the core on the calling thread for engine `engine`, with room
/// for `nr` ops in the kernel (ops that would block go to `blocking`); `None` if the kernel refuses a second
/// context (`fs.aio-max-nr`): the thread then parks, and its callbacks'
/// IO goes to the reactor.
pub(super) fn install(engine: u64, nr: u32, blocking: Arc<Blocking>) -> Option<LocalAio> {
    let ctx = Context::new(nr).ok()?;
    let waker = super::waker().ok()?;
    let core = Core::new(ctx, Arc::clone(&waker))
        .with_blocking(blocking)
        .with_watch();
    HERE.with(|l| {
        *l.core.borrow_mut() = Some(core);
        l.owner.set(engine);
    });
    Some(LocalAio {
        waker,
        _here: std::marker::PhantomData,
    })
}

/// Takes the asynchronous ops out of `ops` when the calling thread's core
/// belongs to `engine`; leaves the others (for the reactor). They are
/// queued in the core (submitted at [`submit_queued`] or the next
/// [`turn`]), or in the inbox when the core is busy.
pub(super) fn offer(engine: u64, ops: &mut Vec<IoOp>) {
    HERE.with(|l| {
        if l.owner.get() != engine || engine == 0 {
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
        if !l.with_core(|c| c.admit(mine.drain(..))) {
            l.inbox.borrow_mut().append(mine);
        }
    })
}

/// Whether the calling thread has a core (not closed).
pub(in crate::engine) fn active() -> bool {
    HERE.with(|l| l.owner.get() != 0)
}

/// While fewer ops than this are in the kernel, IO a callback submits
/// starts at once, so the device does not idle while later callbacks of
/// the batch run (as `engine/local/`'s `EAGER_BELOW`).
const EAGER_BELOW: usize = 64;
/// Deeper than that, ops go to the kernel in groups of this many (one
/// `io_submit` each), and the rest when the batch ends.
const GROUP: usize = 8;

/// After one notify callback: submits the IO queued so far at once when
/// more callbacks are waiting (`more()`, asked only when the callback
/// started IO). Otherwise the thread's next turn submits it.
pub(in crate::engine) fn submit_queued(more: &dyn Fn() -> bool) {
    HERE.with(|l| {
        if !l.offered.replace(false) || !more() {
            return;
        }
        if !l.inbox_empty() {
            l.flush();
            return;
        }
        l.with_core(|c| {
            let (in_kernel, queued) = c.depth();
            if queued > 0 && (in_kernel < EAGER_BELOW || queued >= GROUP) {
                c.pump_lazy();
            }
        });
    })
}

/// No op queued, in the kernel or parked by a fault rule.
pub(in crate::engine) fn idle() -> bool {
    HERE.with(|l| {
        let mut idle = true;
        l.with_core(|c| idle = c.idle());
        idle && l.inbox_empty()
    })
}

/// The client is gone: new ops go to the reactor; ops still running stay
/// until [`idle`].
pub(in crate::engine) fn close() {
    HERE.with(|l| {
        l.flush();
        l.owner.set(0);
    })
}

/// One turn: submits what callbacks queued, sleeps until `pending()`, a
/// completion, a wake-up or `max`, then completes what the kernel
/// finished (their events go to the completion thread's queue).
pub(in crate::engine) fn turn(pending: &dyn Fn() -> bool, max: Option<Duration>) {
    HERE.with(|l| {
        l.flush();
        l.with_core(|c| {
            c.wait(None, &|| pending() || !l.inbox_empty(), max);
            c.reap();
        });
    })
}
