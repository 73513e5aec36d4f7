//! Engine-independent timing: request deadlines, and ops delayed or held by
//! fault rules. Engines own one [`Sched`] on their reactor thread.

use super::{IoOp, Timer};
use crate::device::faults::Decision;
use crate::device::Device;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often held ops are looked at again for a changed fault spec.
const HOLD_POLL: Duration = Duration::from_millis(2);

/// After a turn that fired deadlines, the next timer wake-up for deadlines
/// comes no sooner than this: deadlines falling due meanwhile are fired
/// together, so a burst costs one wake-up per grain instead of one per
/// deadline. A lone deadline is not delayed. 50 us is the kernel's default
/// timer slack for a sleeping thread.
pub(crate) const DEADLINE_GRAIN: Duration = Duration::from_micros(50);

struct Timed<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Timed<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<T> Eq for Timed<T> {}
impl<T> PartialOrd for Timed<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Timed<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// An op that may start now: an NBD device's goes to its connection
/// ([`crate::device::nbd`]), any other back to the engine, for the kernel.
pub(crate) fn to_kernel(op: IoOp) -> Option<IoOp> {
    if op.dev.remote().is_none() {
        return Some(op);
    }
    let dev = Arc::clone(&op.dev);
    dev.remote().expect("checked").start(op);
    None
}

/// Deadlines plus delayed and held operations.
pub struct Sched {
    seq: u64,
    purge_at: usize,
    deadlines: BinaryHeap<Reverse<Timed<Weak<dyn Timer>>>>,
    /// When deadlines last fired (see [`DEADLINE_GRAIN`]).
    last_fired: Option<Instant>,
    delayed: BinaryHeap<Reverse<Timed<IoOp>>>,
    held: Vec<(u64, IoOp)>,
    /// The devices of the held ops, with the fault generation they were
    /// held under: looking at these (usually one or two) tells whether any
    /// held op may start, without walking thousands of held ops each turn.
    held_devs: Vec<(Arc<Device>, u64)>,
}

impl Default for Sched {
    fn default() -> Self {
        Sched {
            seq: 0,
            purge_at: 1024,
            deadlines: BinaryHeap::new(),
            last_fired: None,
            delayed: BinaryHeap::new(),
            held: Vec::new(),
            held_devs: Vec::new(),
        }
    }
}

impl Sched {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Arms a deadline. Entries of requests already freed are dropped in
    /// bulk whenever the heap doubles, so long timeouts on many short
    /// requests cannot grow it without bound.
    pub fn arm(&mut self, at: Instant, timer: Weak<dyn Timer>) {
        let seq = self.next_seq();
        self.deadlines.push(Reverse(Timed {
            at,
            seq,
            item: timer,
        }));
        if self.deadlines.len() >= self.purge_at {
            self.deadlines.retain(|t| t.0.item.strong_count() > 0);
            self.purge_at = (self.deadlines.len() * 2).max(1024);
        }
    }

    /// Parks `op`, held under fault generation `gen` of its device.
    fn hold(&mut self, gen: u64, op: IoOp) {
        let known = self
            .held_devs
            .iter()
            .any(|(d, g)| Arc::ptr_eq(d, &op.dev) && *g == gen);
        if !known {
            self.held_devs.push((Arc::clone(&op.dev), gen));
        }
        self.held.push((gen, op));
    }

    /// Applies the device's fault rules to a new op: returns it when it
    /// may start now; otherwise parks it or completes it here.
    pub fn admit(&mut self, op: IoOp) -> Option<IoOp> {
        let faults = &op.dev.faults;
        if !faults.is_active() {
            return to_kernel(op);
        }
        let gen = faults.generation();
        let (sector, count) = op.sectors();
        match faults.decide(op.is_write(), sector, count) {
            Decision::Pass => to_kernel(op),
            Decision::Delay(d) => {
                let seq = self.next_seq();
                self.delayed.push(Reverse(Timed {
                    at: Instant::now() + d,
                    seq,
                    item: op,
                }));
                None
            }
            Decision::Hold => {
                self.hold(gen, op);
                None
            }
            Decision::Fail(e) => {
                op.complete(-e);
                None
            }
            Decision::Drop => {
                let len = op.len as i32;
                op.complete(len);
                None
            }
        }
    }

    /// Fires due deadlines and moves ops that may start now into `ready`.
    pub fn expire(&mut self, now: Instant, ready: &mut Vec<IoOp>) {
        while self.deadlines.peek().is_some_and(|t| t.0.at <= now) {
            self.last_fired = Some(now);
            let t = self.deadlines.pop().expect("peeked").0;
            if let Some(timer) = t.item.upgrade() {
                timer.on_timer(now);
            }
        }
        while self.delayed.peek().is_some_and(|t| t.0.at <= now) {
            if let Some(op) = to_kernel(self.delayed.pop().expect("peeked").0.item) {
                ready.push(op);
            }
        }
        if self
            .held_devs
            .iter()
            .any(|(d, g)| d.faults.generation() != *g)
        {
            self.held_devs.clear();
            for (g, op) in std::mem::take(&mut self.held) {
                if op.dev.faults.generation() == g {
                    self.hold(g, op);
                } else if let Some(op) = self.admit(op) {
                    ready.push(op);
                }
            }
        }
    }

    /// Until when a thread that owns this Sched may sleep: its next timer,
    /// or `max` from now if sooner (`None`: no limit). The clock is read
    /// (unless `now` gives it) only when a timer or `max` needs it.
    pub fn sleep_until(&self, now: Option<Instant>, max: Option<Duration>) -> Option<Instant> {
        if !self.needs_clock() && max.is_none() {
            return None;
        }
        let now = now.unwrap_or_else(Instant::now);
        let at = self.next_wakeup(now);
        match max {
            Some(m) => {
                let limit = now + m;
                Some(at.map_or(limit, |a| a.min(limit)))
            }
            None => at,
        }
    }

    /// When the engine must look again, if ever. Deadlines are looked at
    /// no sooner than [`DEADLINE_GRAIN`] after they last fired.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        let mut t = self.deadlines.peek().map(|d| match self.last_fired {
            Some(l) => d.0.at.max(l + DEADLINE_GRAIN),
            None => d.0.at,
        });
        if let Some(d) = self.delayed.peek() {
            t = Some(t.map_or(d.0.at, |x| x.min(d.0.at)));
        }
        if !self.held.is_empty() {
            let p = now + HOLD_POLL;
            t = Some(t.map_or(p, |x| x.min(p)));
        }
        t
    }

    /// Whether [`Sched::expire`] and [`Sched::next_wakeup`] have anything
    /// to look at (else the caller need not read the clock for them).
    pub fn needs_clock(&self) -> bool {
        !self.deadlines.is_empty() || !self.delayed.is_empty() || !self.held.is_empty()
    }

    /// Whether [`Sched::expire`] has parked ops to look at (delayed or
    /// held by fault rules), leaving deadlines aside.
    pub fn ops_need_clock(&self) -> bool {
        !self.delayed.is_empty() || !self.held.is_empty()
    }

    /// Ops parked here (delayed or held): they still own private memory.
    pub fn parked(&self) -> usize {
        self.delayed.len() + self.held.len()
    }

    /// Takes every op parked here (delayed or held) out, to end them
    /// without starting them (their requests are final).
    pub fn take_parked(&mut self) -> Vec<IoOp> {
        self.held_devs.clear();
        let mut ops: Vec<IoOp> = self.held.drain(..).map(|(_, op)| op).collect();
        ops.extend(self.delayed.drain().map(|t| t.0.item));
        ops
    }

    /// Takes out the parked ops for which `keep` is false (to end them
    /// unstarted); the others stay parked, on their schedule.
    pub fn take_parked_unless(&mut self, keep: impl Fn(&IoOp) -> bool) -> Vec<IoOp> {
        if self.parked() == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        let held = std::mem::take(&mut self.held);
        self.held_devs.clear();
        for (g, op) in held {
            if keep(&op) {
                self.hold(g, op);
            } else {
                out.push(op);
            }
        }
        let delayed = std::mem::take(&mut self.delayed);
        for t in delayed.into_vec() {
            if keep(&t.0.item) {
                self.delayed.push(t);
            } else {
                out.push(t.0.item);
            }
        }
        out
    }

    /// Forgets deadlines (at shutdown every request is final).
    pub fn clear_deadlines(&mut self) {
        self.deadlines.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Never;
    impl Timer for Never {
        fn on_timer(self: Arc<Self>, _now: Instant) {}
    }

    /// A timer whose request is gone.
    fn gone() -> Weak<dyn Timer> {
        Weak::<Never>::new()
    }

    #[test]
    fn a_lone_deadline_wakes_on_time() {
        let mut s = Sched::default();
        let t0 = Instant::now();
        s.arm(t0 + Duration::from_millis(5), gone());
        assert_eq!(s.next_wakeup(t0), Some(t0 + Duration::from_millis(5)));
        // Long after a firing, the grain no longer applies.
        s.expire(t0, &mut Vec::new());
        s.arm(t0 + Duration::from_millis(1), gone());
        let mut ready = Vec::new();
        s.expire(t0 + Duration::from_millis(1), &mut ready);
        assert_eq!(s.next_wakeup(t0), Some(t0 + Duration::from_millis(5)));
    }

    #[test]
    fn a_burst_of_deadlines_fires_once_per_grain_and_never_early() {
        let mut s = Sched::default();
        let t0 = Instant::now();
        let us = Duration::from_micros(1);
        for i in 0..200u32 {
            s.arm(t0 + us * i, gone());
        }
        let (mut now, mut wakeups) = (t0, 0);
        while let Some(at) = s.next_wakeup(now) {
            now = at;
            wakeups += 1;
            let left = s.deadlines.len();
            s.expire(now, &mut Vec::new());
            // Everything due fired; nothing not yet due did.
            assert!(s.deadlines.iter().all(|d| d.0.at > now));
            assert!(s.deadlines.len() < left);
            if let Some(next) = s.next_wakeup(now) {
                assert!(next >= now + DEADLINE_GRAIN, "woke again within the grain");
            }
        }
        // 200 us of deadlines: one wake-up per 50 us (plus the first), not 200.
        assert!(wakeups <= 6, "{wakeups} wake-ups");
        assert!(now - t0 <= us * 199 + DEADLINE_GRAIN, "the last fired late");
    }
}
