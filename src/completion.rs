//! The completion thread: the only thread that calls notify for
//! asynchronous requests, so a slow callback never stalls IO (the reactor
//! only queues events here) and callbacks of one client never run
//! concurrently with each other.

use crate::request::Event;
use crossbeam_channel::{Receiver, Sender};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::thread::{JoinHandle, ThreadId};

enum Msg {
    Ev(Event),
    Stop,
}

pub struct CompletionThread {
    tx: Sender<Msg>,
    thread: ThreadId,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl CompletionThread {
    pub fn start(name: &str) -> std::io::Result<CompletionThread> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let h = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(rx))?;
        Ok(CompletionThread {
            tx,
            thread: h.thread().id(),
            join: Mutex::new(Some(h)),
        })
    }

    /// Queues an event; never blocks.
    pub fn push(&self, ev: Event) {
        // After `stop` no request of the client can produce events (all are
        // final), so a failed send drops nothing that is owed.
        let _ = self.tx.send(Msg::Ev(ev));
    }

    /// Whether the calling thread is this completion thread (inside notify).
    pub fn is_current(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    /// Delivers everything queued, then ends the thread. Waits for that
    /// unless called from the completion thread itself (from notify), in
    /// which case the thread ends after the current callback returns.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        if self.is_current() {
            return;
        }
        let h = self.join.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }
}

fn deliver(ev: Event) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        ev.deliver();
        if ev.is_final() {
            ev.req.final_delivered();
        }
    }));
    if r.is_err() {
        eprintln!("libdmio: internal error while delivering a notification");
    }
}

/// Delivers events as they come; everything already queued is delivered
/// as one batch, with the IO that its callbacks submit started together.
fn run(rx: Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let stop = crate::engine::uring::with_deferred_wakes(|| {
            let mut m = first;
            loop {
                match m {
                    Msg::Ev(ev) => deliver(ev),
                    Msg::Stop => {
                        while let Ok(Msg::Ev(ev)) = rx.try_recv() {
                            deliver(ev);
                        }
                        return true;
                    }
                }
                match rx.try_recv() {
                    Ok(next) => m = next,
                    Err(_) => return false,
                }
            }
        });
        if stop {
            return;
        }
    }
}
