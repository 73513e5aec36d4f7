//! The completion thread: the only thread that calls notify for
//! asynchronous requests, so a slow callback never stalls the reactor (it
//! only queues events here) and callbacks of one client never run
//! concurrently with each other.
//!
//! One thread serves many clients (those of one shard of the shared engine,
//! [`crate::client`]), or one client that asked for threads of its own. A
//! client's destroy waits until the thread has delivered that client's
//! events ([`CompletionThread::drain_client`]); only a thread of its own
//! ends ([`CompletionThread::stop`]).
//!
//! The thread sleeps in the [`CompletionRing`] its engine returned: with
//! the io_uring engine a ring of its own for the IO its callbacks start
//! (reaping, notify and the next submission on one thread), with the
//! others a parked sleep. Every engine's thread runs the same loop.

use crate::engine::{CompletionRing, Engine, Wake};
use crate::request::Event;
use crate::thread_mark::Mark;
use crossbeam_channel::{Receiver, Sender};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// A completion thread's per-IO state: one thread-local, so that each
/// step below looks it up once (in a shared library each look-up is a
/// call to `__tls_get_addr`).
struct Here {
    /// On a completion thread: its key (0 elsewhere).
    key: Cell<u64>,
    /// Events emitted on the completion thread itself (by IO its ring
    /// completed, by callbacks) while its channel was empty: no channel
    /// and no wake-up for them. Delivered before the channel, so the
    /// order in which events were emitted is kept (see [`CompletionThread::push`]).
    local: RefCell<VecDeque<Msg>>,
    /// On a completion thread: the clients whose notify runs now (a
    /// callback may call destroy, which may deliver another client's
    /// events from inside it).
    delivering: RefCell<Vec<u64>>,
}

thread_local! {
    static HERE: Here = const {
        Here {
            key: Cell::new(0),
            local: RefCell::new(VecDeque::new()),
            delivering: RefCell::new(Vec::new()),
        }
    };
    /// On a completion thread: its channel's receiver.
    static RX: RefCell<Option<Receiver<Msg>>> = const { RefCell::new(None) };
    /// On a completion thread: the ring it sleeps in.
    static RING: RefCell<Option<Rc<CompletionRing>>> = const { RefCell::new(None) };
}

/// Whether the calling thread is a completion thread (of any client).
pub fn on_completion_thread() -> bool {
    HERE.with(|h| h.key.get() != 0)
}

/// On a completion thread whose ring runs IO ([`CompletionRing::runs_io`]):
/// that ring, for a notify callback that must wait on IO which may be in it
/// (for private memory, or for zero-copy IO to end at destroy) and so keep
/// turning it. `None` elsewhere.
pub fn ring_running_io() -> Option<Rc<CompletionRing>> {
    RING.with(|r| {
        r.try_borrow()
            .ok()?
            .as_ref()
            .filter(|r| r.runs_io())
            .cloned()
    })
}

fn local_empty() -> bool {
    HERE.with(|h| h.local.try_borrow().map_or(true, |q| q.is_empty()))
}

/// Whether an event waits to be delivered (local queue or channel).
fn undelivered(rx: &Receiver<Msg>) -> bool {
    !local_empty() || !rx.is_empty()
}

enum Msg {
    Ev(Event),
    /// Every event of this client queued before this was delivered: tell
    /// the sender.
    Barrier(u64, Sender<()>),
    Stop,
}

pub struct CompletionThread {
    tx: Sender<Msg>,
    /// Names this thread in [`HERE`] (`Here::key`).
    key: u64,
    /// The thread's [`HERE`], found by the thread itself without a
    /// thread-local look-up ([`CompletionThread::push`]).
    here: Arc<Mark<Here>>,
    join: Mutex<Option<JoinHandle<()>>>,
    /// Wakes the thread from its ring (`None`: the thread died at start).
    waker: Option<Arc<dyn Wake>>,
    /// Says (once) that every event was delivered; `true` when the thread
    /// stays on to reap IO still in its local ring.
    delivered: Receiver<bool>,
}

impl CompletionThread {
    pub fn start(name: &str, engine: Arc<dyn Engine>) -> std::io::Result<CompletionThread> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let here = Arc::new(Mark::new());
        let mark = Arc::clone(&here);
        let h = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                /// Clears the mark when the thread's work ends (also by a
                /// panic), before its thread-locals go.
                struct Unmark(Arc<Mark<Here>>);
                impl Drop for Unmark {
                    fn drop(&mut self) {
                        self.0.clear();
                    }
                }
                HERE.with(|h| {
                    h.key.set(key);
                    // SAFETY: this thread's own `HERE`, which lives until
                    // the thread's thread-locals are destroyed, after
                    // `Unmark` (declared below, dropped when this closure
                    // ends) has cleared the mark.
                    unsafe { mark.set(h) };
                });
                let _unmark = Unmark(mark);
                let ring = Rc::new(engine.completion_ring());
                drop(engine);
                let _ = ready_tx.send(ring.waker());
                RING.with(|r| *r.borrow_mut() = Some(Rc::clone(&ring)));
                RX.with(|r| *r.borrow_mut() = Some(rx.clone()));
                run(rx, &ring, done_tx);
                RX.with(|r| r.borrow_mut().take());
                // The last reference: the ring goes (it is idle now).
                RING.with(|r| r.borrow_mut().take());
            })?;
        let waker = ready_rx.recv().ok();
        Ok(CompletionThread {
            tx,
            key,
            here,
            join: Mutex::new(Some(h)),
            waker,
            delivered: done_rx,
        })
    }

    /// Queues an event; never blocks.
    ///
    /// On the completion thread itself, while the channel is empty, the
    /// event goes to the thread's local queue (no channel, no wake-up: the
    /// thread delivers it before it next sleeps). Order is kept: the
    /// thread takes one message at a time from the channel and delivers it
    /// before the next, so an empty channel means every event emitted
    /// before this one was already delivered or is in the local queue, and
    /// the local queue is always drained before the channel. (A region's
    /// events are emitted under its request's lock, so "emitted before"
    /// is well defined across threads.)
    pub fn push(&self, ev: Event) {
        // Is this the thread, and its queue: no thread-local look-up where
        // the thread is found by its identity ([`Mark`]).
        let local = |h: &Here, ev: Event| {
            if !self.tx.is_empty() {
                return Some(ev);
            }
            match h.local.try_borrow_mut() {
                Ok(mut q) => {
                    q.push_back(Msg::Ev(ev));
                    None
                }
                Err(_) => Some(ev),
            }
        };
        let kept = match self.here.here() {
            Some(h) => local(h, ev),
            None if crate::thread_mark::AVAILABLE => Some(ev),
            None => HERE.with(|h| {
                if h.key.get() != self.key {
                    return Some(ev);
                }
                local(h, ev)
            }),
        };
        let Some(ev) = kept else { return };
        // After `stop` no request of the client can produce events (all are
        // final), so a failed send drops nothing that is owed.
        let _ = self.tx.send(Msg::Ev(ev));
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = &self.waker {
            crate::engine::wake::wake_or_defer(w);
        }
    }

    /// Whether the calling thread is this completion thread (inside notify).
    pub fn is_current(&self) -> bool {
        HERE.with(|h| h.key.get()) == self.key
    }

    /// Returns once every event of client `client` queued so far was
    /// delivered (what a shared thread's client waits for at destroy).
    ///
    /// Called on this thread, from a notify callback (of any client), it
    /// cannot wait for itself: it delivers that client's queued events
    /// right here, in their order, the others staying queued in theirs;
    /// unless that client's own notify is running (destroy from its own
    /// callback), whose events then follow after the callback, as with a
    /// thread of its own ([`Self::stop`]).
    pub fn drain_client(&self, client: u64) {
        if !self.is_current() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if self.tx.send(Msg::Barrier(client, tx)).is_ok() {
                self.wake();
                // Called from another thread's notify, our wake-up may be
                // deferred to the end of that batch: not while we wait.
                crate::engine::wake::flush_deferred_wakes();
                if HERE.with(|h| h.key.get()) == 0 {
                    let _ = rx.recv();
                    return;
                }
                // On another completion thread, inside a callback: that
                // thread may be waiting for this one just as well (a
                // callback there destroying a client of ours), so this
                // one delivers what it can meanwhile.
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(std::time::Duration::from_millis(1))
                {
                    serve_while_waiting();
                }
            }
            return;
        }
        if HERE.with(|h| h.delivering.borrow().contains(&client)) {
            return;
        }
        // Everything queued, in order, into the local queue (always
        // delivered before the channel), then this client's events out of it.
        HERE.with(|h| {
            if let Ok(mut q) = h.local.try_borrow_mut() {
                q.extend(rx_drain());
            }
        });
        loop {
            let ev = HERE.with(|h| {
                let mut q = h.local.try_borrow_mut().ok()?;
                let at = q
                    .iter()
                    .position(|m| matches!(m, Msg::Ev(e) if e.req.client_id == client))?;
                match q.remove(at) {
                    Some(Msg::Ev(e)) => Some(e),
                    _ => None,
                }
            });
            match ev {
                Some(ev) => deliver(ev),
                None => break,
            }
        }
    }

    /// Delivers everything queued, then ends the thread. Waits for that
    /// unless called from the completion thread itself (from notify), in
    /// which case the thread ends after the current callback returns.
    /// IO still stuck in the kernel on the local ring is not waited for:
    /// the thread stays on, detached, until the kernel completes it.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        self.wake();
        if self.is_current() {
            return;
        }
        // Called from another client's notify, our wake-up may be deferred
        // to the end of that batch: not while we wait for this thread.
        crate::engine::wake::flush_deferred_wakes();
        let stays = self.delivered.recv().unwrap_or(false);
        let h = self.join.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let (Some(h), false) = (h, stays) {
            let _ = h.join();
        }
    }
}

/// What the calling completion thread's channel holds now.
fn rx_drain() -> Vec<Msg> {
    RX.with(|r| {
        r.borrow()
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    })
}

/// On a completion thread whose callback waits for another completion
/// thread ([`CompletionThread::drain_client`]): delivers, in order, the
/// queued events of every client whose notify is not running here, and
/// answers those clients' barriers, so that the other thread, if it waits
/// for this one, goes on. The events and barriers of clients whose notify
/// is running here stay queued, in order (a destroy of one of them waits
/// for its callback to return, as always).
fn serve_while_waiting() {
    HERE.with(|h| {
        if let Ok(mut q) = h.local.try_borrow_mut() {
            q.extend(rx_drain());
        }
    });
    loop {
        let next = HERE.with(|h| {
            let mut q = h.local.try_borrow_mut().ok()?;
            let busy = h.delivering.borrow().clone();
            // The first event or barrier of a client whose notify is not
            // running (its earlier events were delivered before it); nothing
            // past a Stop (a thread of one client ending).
            let at = q.iter().position(|m| match m {
                Msg::Ev(e) => !busy.contains(&e.req.client_id),
                Msg::Barrier(c, _) => !busy.contains(c),
                Msg::Stop => true,
            })?;
            match q.get(at) {
                Some(Msg::Stop) => None,
                _ => q.remove(at),
            }
        });
        match next {
            Some(Msg::Ev(ev)) => deliver(ev),
            Some(Msg::Barrier(_, tx)) => {
                let _ = tx.send(());
            }
            _ => return,
        }
    }
}

fn deliver(ev: Event) {
    HERE.with(|h| deliver_in(h, ev));
}

/// [`deliver`] with this thread's [`Here`] at hand. The borrows of its
/// cells are not held across the callback, which may deliver from inside.
#[inline]
fn deliver_in(h: &Here, ev: Event) {
    h.delivering.borrow_mut().push(ev.req.client_id);
    let r = catch_unwind(AssertUnwindSafe(|| {
        ev.deliver();
        if ev.is_final() {
            ev.req.final_delivered();
        }
        ev.req.event_delivered();
    }));
    h.delivering.borrow_mut().pop();
    if r.is_err() {
        eprintln!("libdmio: internal error while delivering a notification");
    }
}

/// Delivers everything queued now, with the wake-ups its callbacks cause
/// deferred to the end; `true` once `Stop` was seen (everything queued
/// before it delivered). The thread-local is looked up once per batch.
fn deliver_queued(rx: &Receiver<Msg>, ring: &CompletionRing) -> bool {
    crate::engine::wake::with_deferred_wakes(|| HERE.with(|h| deliver_batch(h, rx, ring)))
}

fn deliver_batch(h: &Here, rx: &Receiver<Msg>, ring: &CompletionRing) -> bool {
    // The local queue first: see `CompletionThread::push`.
    let next = || {
        let local = h
            .local
            .try_borrow_mut()
            .ok()
            .and_then(|mut q| q.pop_front());
        local.or_else(|| rx.try_recv().ok())
    };
    let more = || h.local.try_borrow().is_ok_and(|q| !q.is_empty()) || !rx.is_empty();
    while let Some(m) = next() {
        match m {
            Msg::Ev(ev) => {
                deliver_in(h, ev);
                ring.after_callback(&more);
            }
            Msg::Barrier(_, tx) => {
                let _ = tx.send(());
            }
            Msg::Stop => {
                while let Some(m) = next() {
                    match m {
                        Msg::Ev(ev) => deliver_in(h, ev),
                        Msg::Barrier(_, tx) => {
                            let _ = tx.send(());
                        }
                        Msg::Stop => {}
                    }
                }
                return true;
            }
        }
    }
    false
}

/// The loop: deliver everything queued as one batch (starting the IO that
/// callbacks queued), sleep in the ring, complete what the ring's IO
/// finished (which queues more events), again. After `Stop`, stays until
/// the ring's IO is all reaped (the client's destroy does not wait for
/// that).
fn run(rx: Receiver<Msg>, ring: &CompletionRing, delivered: Sender<bool>) {
    while !deliver_queued(&rx, ring) {
        ring.turn(&|| undelivered(&rx), None);
    }
    ring.close();
    let _ = delivered.send(!ring.idle());
    while !ring.idle() {
        ring.turn(&|| false, None);
    }
}
