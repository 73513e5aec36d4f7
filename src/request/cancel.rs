//! Deadlines and cancellation: a deadline gives running regions TIMEOUT
//! (or cancels them with `DM_IO_CANCEL_ON_TIMEOUT`); a cancel ends a live
//! region CANCELLED at once, detaches the pages of a read into library
//! pages, or, for IO running in the caller's memory, waits for it.

use super::{CancelReason, Inner, Request, State};
use crate::device::Device;
use crate::memory::pool::SlotRef;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

impl Request {
    /// The deadline passed: running regions get TIMEOUT (once), or end
    /// CANCELLED with `DM_IO_CANCEL_ON_TIMEOUT` (and for SYNC requests
    /// without notify, as the proposal says).
    pub fn on_deadline(self: &Arc<Self>) {
        let cancel = self.mode.cancel_on_timeout || (self.mode.sync && self.notify.is_none());
        let mut g = self.lock();
        g.deadline_fired = true;
        // Hedged regions not started yet start now (or are cancelled below).
        let start: Vec<(u32, SlotRef)> = if cancel {
            Vec::new()
        } else {
            g.standby.take_all()
        };
        for i in 0..g.regions.len() {
            let r = &mut g.regions[i];
            // A cancelled zero-copy region waits for its IO, not for TIMEOUT.
            if r.fin.is_some() || r.timed_out || r.cancel_pending != 0 {
                continue;
            }
            r.timed_out = true;
            if cancel {
                self.cancel_region(&mut g, i, CancelReason::Deadline);
            } else {
                self.emit(&mut g, i as u32, State::Timeout, -libc::ETIMEDOUT);
            }
        }
        drop(g);
        if !start.is_empty() {
            self.owner.start_regions(self, start, true);
        }
    }

    /// Sets the deadline and asks the engine for a timer.
    pub fn arm_deadline(self: &Arc<Self>, at: Instant) {
        self.lock().deadline = Some(at);
        self.owner.arm_timer(at, self);
    }

    /// A timer armed by this request went off (`now`: when the engine
    /// looked at its clock): deadline and/or hedge.
    pub(super) fn timer_fired(self: &Arc<Self>, now: Instant) {
        let (deadline, hedge) = {
            let g = self.lock();
            (
                !g.deadline_fired && g.deadline.is_some_and(|d| d <= now),
                g.hedge_at.is_some_and(|h| h <= now),
            )
        };
        if deadline {
            self.on_deadline();
        }
        if hedge {
            self.hedge(now);
        }
    }

    /// Cancels every live region for which `pick(device)` holds; returns
    /// how many were cancelled.
    pub fn cancel_where(
        self: &Arc<Self>,
        reason: CancelReason,
        pick: impl Fn(&Device) -> bool,
    ) -> usize {
        let mut g = self.lock();
        let mut n = 0;
        for i in 0..g.regions.len() {
            let r = &g.regions[i];
            if r.fin.is_none() && r.cancel_pending == 0 && pick(&self.specs[i].dev) {
                self.cancel_region(&mut g, i, reason);
                n += 1;
            }
        }
        n
    }

    /// Region `i` (live) is cancelled: it ends CANCELLED now, or, for a
    /// zero-copy region whose IO still runs in the caller's memory, when
    /// that IO ends.
    fn cancel_region(self: &Arc<Self>, g: &mut Inner, i: usize, reason: CancelReason) {
        let r = &mut g.regions[i];
        let running = r.outstanding;
        let lent = running > 0
            && (self.mode.zero_copy || (self.mode.lib_pages && (r.plain || !self.detach(i))));
        if lent {
            g.regions[i].cancel_pending = reason.errno();
        } else {
            if self.mode.lib_pages && running > 0 {
                g.detached_ops = running;
                self.owner.detached_ops(running as i64);
            }
            self.finalize(g, i, State::Cancelled, reason.errno());
        }
    }

    /// Library pages: replaces region `i`'s pages under the caller's
    /// addresses with fresh ones ([`crate::memory::lib_pages::detach`]), so the
    /// IO still running finishes into pages the caller no longer sees.
    /// `detached` is set first: an engine that reads it as false after
    /// making its registration current started the op before the pages
    /// were replaced, so into the old pages. `false` when the kernel
    /// refused a mapping (the region must then wait for its IO).
    fn detach(&self, i: usize) -> bool {
        self.detached.store(true, Ordering::SeqCst);
        crate::memory::lib_pages::detach_memory(&self.mem, self.specs[i].count as usize * 512)
    }

    /// Regions cancelled but still running in the caller's memory (their
    /// CANCELLED comes when the kernel ends their IO).
    pub fn cancels_pending(&self) -> bool {
        (self.mode.zero_copy || self.mode.lib_pages)
            && self
                .lock()
                .regions
                .iter()
                .any(|r| r.fin.is_none() && r.cancel_pending != 0)
    }
}
