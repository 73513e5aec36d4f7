//! The reactor thread both kernel engines run (io_uring and AIO): a core
//! (a ring or an AIO context, with its [`Sched`](super::sched::Sched)) fed
//! through a channel by the threads that submit, and woken through the
//! core's eventfd only when it sleeps.
//!
//! An engine owns a [`Mailbox`] (the sending side) and spawns
//! [`Reactor::run`] over its core; the loop, the messages and what happens
//! to ops sent after the reactor is gone are written once, here. A core
//! says what it can do through [`ReactorCore`].

use super::sched::Sched;
use super::{IoOp, Timer, Wake};
use crossbeam_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// What submitting threads send a reactor.
pub(super) enum Msg {
    /// One op, the usual case: sent by value, so the caller's op vector
    /// keeps its capacity (no allocation per IO).
    One(IoOp),
    Ops(Vec<IoOp>),
    /// A client's private memory to register with the kernel (start, bytes).
    Register((usize, usize)),
    /// A destroyed client's private memory, to forget.
    Unregister((usize, usize)),
    Deadline(Instant, Weak<dyn Timer>),
    Shutdown,
}

/// A reactor's core: one ring or AIO context and the ops in it, owned by
/// the reactor thread.
pub(super) trait ReactorCore {
    /// The core's scheduler (deadlines, fault rules' delayed and held ops)
    /// and its backlog (ops waiting for room in the kernel).
    fn sched_and_backlog(&mut self) -> (&mut Sched, &mut VecDeque<IoOp>);
    /// Takes new ops: fault rules first, then the backlog.
    fn admit(&mut self, ops: impl IntoIterator<Item = IoOp>) {
        let (sched, backlog) = self.sched_and_backlog();
        for op in ops {
            if let Some(op) = sched.admit(op) {
                backlog.push_back(op);
            }
        }
    }
    fn arm(&mut self, at: Instant, timer: Weak<dyn Timer>) {
        self.sched_and_backlog().0.arm(at, timer);
    }
    /// At shutdown: no deadline fires any more.
    fn clear_deadlines(&mut self) {
        self.sched_and_backlog().0.clear_deadlines();
    }
    /// Fires due timers and starts ready ops.
    fn pump(&mut self, now: Instant);
    /// No op in the kernel, queued or parked.
    fn idle(&self) -> bool;
    /// Unless `pending()` says there is work already (checked after the
    /// sleep is announced, so a waker cannot be missed), sleeps until a
    /// completion, a wake-up, the next timer, or `max`.
    fn wait(&mut self, now: Option<Instant>, pending: &dyn Fn() -> bool, max: Option<Duration>);
    /// Completes what the kernel has finished.
    fn reap(&mut self);
    /// Registers a client's private memory with the kernel (engines that
    /// have fixed buffers).
    fn register(&mut self, _region: (usize, usize)) {}
    fn unregister(&mut self, _region: (usize, usize)) {}
}

/// The submitting side of a reactor's channel.
pub(super) struct Mailbox {
    tx: Sender<Msg>,
    /// The reactor's waker, as deferrable ([`super::wake`]).
    waker: Arc<dyn Wake>,
}

impl Mailbox {
    /// A mailbox and the receiver its reactor runs on.
    pub(super) fn new(waker: Arc<dyn Wake>) -> (Mailbox, Receiver<Msg>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Mailbox { tx, waker }, rx)
    }

    /// Sends `m` and wakes the reactor if it sleeps (or defers the wake-up
    /// to the end of the caller's batch).
    pub(super) fn send(&self, m: Msg) {
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

    /// Sends every op left in `ops` (one by value, without its vector,
    /// when there is one).
    pub(super) fn send_ops(&self, ops: &mut Vec<IoOp>) {
        if !ops.is_empty() {
            self.send(match ops.len() {
                1 => Msg::One(ops.pop().expect("one op")),
                _ => Msg::Ops(std::mem::take(ops)),
            });
        }
    }
}

/// The reactor thread: a core fed through its engine's [`Mailbox`].
pub(super) struct Reactor<C: ReactorCore> {
    core: C,
    rx: Receiver<Msg>,
    shutting: bool,
}

impl<C: ReactorCore> Reactor<C> {
    pub(super) fn new(core: C, rx: Receiver<Msg>) -> Reactor<C> {
        Reactor {
            core,
            rx,
            shutting: false,
        }
    }

    /// Runs until shutdown and every op has completed; dropping the core
    /// then releases the ring or context.
    pub(super) fn run(mut self) {
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
            Msg::One(op) => self.core.admit(std::iter::once(op)),
            Msg::Ops(ops) => self.core.admit(ops),
            Msg::Register(region) => self.core.register(region),
            Msg::Unregister(region) => self.core.unregister(region),
            Msg::Deadline(at, req) => self.core.arm(at, req),
            Msg::Shutdown => {
                self.shutting = true;
                self.core.clear_deadlines();
            }
        }
    }
}
