//! The SYNC wait: `dm_io` with `DM_IO_SYNC` waits in the caller's thread,
//! calls notify there for each event, and returns the summary.

use super::{Request, State};
use std::sync::Arc;

impl Request {
    /// This SYNC request's IO runs in the caller's own ring, woken by `w`
    /// ([`crate::engine::uring::caller`]); set before it starts.
    pub fn wait_in_ring(&self, w: Arc<dyn crate::engine::Wake>) {
        let _ = self.ring_wake.set(w);
    }

    /// Waits until every region is final, calling `step` (which sleeps a
    /// little, or drives the caller's own ring) between looks (zero-copy
    /// destroy).
    pub fn wait_final(&self, step: &mut dyn FnMut()) {
        while !self.all_final() {
            step();
        }
    }

    /// Waits (in the `dm_io` caller's thread) until every region is final,
    /// calling notify for each event here, and returns the summary: 0 when
    /// every region is OK, else the first ERROR's code, else `-ETIMEDOUT`,
    /// `-ECANCELED` or `-ESHUTDOWN` for the first cancelled region. With
    /// `DM_IO_RETURN_ON_TIMEOUT` it returns once every region is final or
    /// has delivered its TIMEOUT (`-ETIMEDOUT` when one still runs and no
    /// region failed); the request's later events go to the completion
    /// thread, like an asynchronous request's.
    pub fn wait_sync(self: &Arc<Self>) -> i32 {
        // On a completion thread whose ring runs IO (a notify callback
        // calling `dm_io` with `DM_IO_SYNC`), the request's IO may depend on
        // that ring: the NBD connections it drives receive only while it
        // turns. So wait by turning it, woken by the request's events.
        let ring = crate::completion::ring_running_io();
        // Elsewhere, the request's IO may run in the caller's own ring
        // (the default with io_uring): wait there.
        let own = self.ring_wake.get().is_some();
        let early = self.mode.return_on_timeout;
        // Every region final, or (`early`) each one final or timed out
        // with its TIMEOUT delivered (the queue is empty).
        let done = |g: &super::Inner| {
            g.live == 0
                || (early
                    && g.queue.is_empty()
                    && g.regions.iter().all(|r| r.fin.is_some() || r.timed_out))
        };
        let mut delivered = 0;
        let mut g = self.lock();
        if let Some(r) = &ring {
            g.waiter = Some(r.waker());
        }
        loop {
            if let Some(ev) = g.queue.pop_front() {
                drop(g);
                ev.deliver();
                delivered += usize::from(ev.is_final());
                g = self.lock();
                continue;
            }
            if done(&g) {
                break;
            }
            let ready = || {
                let g = self.lock();
                done(&g) || !g.queue.is_empty()
            };
            match &ring {
                Some(r) => {
                    drop(g);
                    r.turn(&ready, None);
                    g = self.lock();
                }
                None if own => {
                    drop(g);
                    crate::engine::uring::caller::turn(&ready, None);
                    g = self.lock();
                }
                None => g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
            }
        }
        g.waiter = None;
        let running = g.live;
        // One region: inline, no allocation.
        let finals: crate::small::Small<(State, i32)> =
            g.regions.iter().filter_map(|r| r.fin).collect();
        if running > 0 {
            // The rest is asynchronous: later events go to the completion
            // thread, which counts the final ones it delivers; the library's
            // handle reference goes with the last.
            g.returned = true;
            drop(g);
            for _ in 0..delivered {
                self.final_delivered();
            }
            let s = summarize(&finals);
            return if s == 0 { -libc::ETIMEDOUT } else { s };
        }
        drop(g);
        self.owner.request_delivered(self);
        if self.mode.read_any && finals.iter().any(|(s, _)| *s == State::Ok) {
            // A hedged read succeeds when one region delivered the data.
            return 0;
        }
        summarize(&finals)
    }
}

/// 0 if every state is OK; else the first ERROR's code; else the first
/// CANCELLED region's code.
pub fn summarize(finals: &[(State, i32)]) -> i32 {
    if let Some((_, e)) = finals.iter().find(|(s, _)| *s == State::Error) {
        return *e;
    }
    finals
        .iter()
        .find(|(s, _)| *s != State::Ok)
        .map(|(_, e)| *e)
        .unwrap_or(0)
}
