//! Hedged reads (`DM_IO_READ_ANY`): the regions hold the same data; the
//! first starts now, the others wait as (region, slot) and start one by
//! one, every hedge delay or at once when the running one ends in ERROR;
//! the first OK wins and the rest end CANCELLED.

use super::{CancelReason, Request, State};
use crate::memory::pool::SlotRef;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Hedged reads: the regions not started yet, in order, each with the
/// private memory taken for it. No deque at all for other requests, so
/// dropping a request costs nothing here.
pub(super) struct Standby(pub(super) Option<VecDeque<(u32, SlotRef)>>);

impl Standby {
    pub(super) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.is_empty())
    }
    pub(super) fn extend(&mut self, regions: Vec<(u32, SlotRef)>) {
        if !regions.is_empty() {
            self.0.get_or_insert_with(VecDeque::new).extend(regions);
        }
    }
    pub(super) fn pop_front(&mut self) -> Option<(u32, SlotRef)> {
        self.0.as_mut()?.pop_front()
    }
    pub(super) fn retain(&mut self, keep: impl FnMut(&(u32, SlotRef)) -> bool) {
        if let Some(q) = self.0.as_mut() {
            q.retain(keep);
        }
    }
    pub(super) fn take_all(&mut self) -> Vec<(u32, SlotRef)> {
        self.0.take().map(Vec::from).unwrap_or_default()
    }
}

impl Request {
    /// Hedged read: starts region `first`, keeps `rest` (further regions,
    /// each with its own private memory) to start one by one, every
    /// `every` (if set) or at once when the running one ends in ERROR.
    pub fn start_any(
        self: &Arc<Self>,
        first: (u32, SlotRef),
        rest: Vec<(u32, SlotRef)>,
        every: Option<Duration>,
    ) {
        let at = {
            let mut g = self.lock();
            g.standby.extend(rest);
            g.hedge_every = every;
            let at = every
                .filter(|_| !g.standby.is_empty())
                .and_then(|d| Instant::now().checked_add(d));
            g.hedge_at = at;
            at
        };
        if let Some(at) = at {
            self.owner.arm_timer(at, self);
        }
        self.owner.start_regions(self, vec![first], false);
    }

    /// The hedge delay passed with no region done: start the next region.
    pub(super) fn hedge(self: &Arc<Self>, now: Instant) {
        let mut g = self.lock();
        g.hedge_at = None;
        if g.winner.is_some() {
            return;
        }
        let Some(next_region) = g.standby.pop_front() else {
            return;
        };
        let next = g
            .hedge_every
            .filter(|_| !g.standby.is_empty())
            .and_then(|d| now.checked_add(d));
        g.hedge_at = next;
        drop(g);
        if let Some(at) = next {
            self.owner.arm_timer(at, self);
        }
        self.owner.start_regions(self, vec![next_region], true);
    }

    /// Completion of a hedged read's region `i`: the first OK is copied to
    /// the caller and wins, the other regions end CANCELLED; an ERROR
    /// starts the next region at once.
    pub(super) fn any_done(
        self: &Arc<Self>,
        i: usize,
        slot: Option<SlotRef>,
        expected: u32,
        res: i32,
    ) {
        let mut g = self.lock();
        let mut next = None;
        if g.regions[i].fin.is_none() {
            if res >= 0 && res as u32 == expected && g.winner.is_none() {
                if let Some(s) = &slot {
                    // SAFETY: the region is live, so the caller's memory is
                    // still lent to us; its length was checked at submission.
                    unsafe { self.mem.copy_in(0, s.bytes(expected as usize)) };
                }
                drop(slot);
                g.winner = Some(i);
                self.finalize(&mut g, i, State::Ok, 0);
                for k in 0..g.regions.len() {
                    if g.regions[k].fin.is_none() {
                        self.finalize(&mut g, k, State::Cancelled, CancelReason::User.errno());
                    }
                }
            } else {
                drop(slot);
                let err = if res < 0 { res } else { -libc::EIO };
                self.finalize(&mut g, i, State::Error, err);
                if g.winner.is_none() {
                    next = g.standby.pop_front();
                }
            }
        }
        drop(g);
        if let Some(region) = next {
            self.owner.start_regions(self, vec![region], true);
        }
    }
}
