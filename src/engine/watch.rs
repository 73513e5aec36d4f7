//! Watching for completions before sleeping: the adaptive policy that
//! engines share.
//!
//! At QD1 a completion thread that sleeps while its one IO runs leaves its
//! vCPU idle, and on a VM the wake-up of an idle vCPU costs a round trip
//! through the hypervisor on top, at every IO. A thread with IO of its own
//! in the kernel therefore watches for its completions (without a system
//! call, yielding the CPU now and then) for a while before it sleeps. How
//! long adapts as KVM's halt polling does ([`Watch::adapt`]): the watch
//! doubles while events end waits within [`WATCH_MAX`], halves when waits
//! last longer, and stops below [`WATCH_MIN_NS`], so a thread whose device
//! is slow (a disk, stuck IO) soon sleeps at once again, and one whose
//! events come fast keeps watching. The engines decide what to look at
//! (a ring's tail, a flag the kernel sets) and call [`watch`] with it.

use std::time::{Duration, Instant};

/// The longest watch before a sleep. At QD1 on a RAM-backed loop device on
/// this project's VM, a 4 KiB read ends 16 us (p50) after its `dm_io` when
/// the completion thread watches, and within 31-73 us at p99 (`bench/HISTORY.md`,
/// 2026-12-07 22:40).
pub(crate) const WATCH_MAX: Duration = Duration::from_micros(50);
/// Looks between two yields of the CPU while watching (about 2 us): a
/// thread the kernel wakes on this CPU waits no longer than that for it,
/// and the watch costs one `sched_yield` per this many looks.
pub(crate) const WATCH_LOOKS: u32 = 64;
/// A thread watches only while at most this many of its ops are in the
/// kernel. Deeper, completions come often enough that the thread seldom
/// sleeps, and a watch would cost CPU per IO for nothing: at QD32 on the
/// RAM loop device, watching before every wait cost 0.4-0.7 us of CPU per
/// IO and no IOPS (`bench/HISTORY.md`). A 2- or 3-leg mirror at QD1 still
/// watches.
pub(crate) const WATCH_DEPTH: usize = 4;
/// The shortest watch (ns); a shorter one stops until a wait shows that
/// events come within [`WATCH_MAX`] again.
pub(crate) const WATCH_MIN_NS: u32 = 4_000;

/// How long a thread watches before it sleeps, adapted to how soon its
/// events come.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    /// The current watch, in ns (0: the thread sleeps at once).
    ns: u32,
    /// The most `ns` grows to (0: the thread never watches).
    max: u32,
}

impl Watch {
    /// A thread that never watches.
    pub(crate) const fn off() -> Watch {
        Watch { ns: 0, max: 0 }
    }

    /// A thread that watches, starting at the longest watch.
    pub(crate) const fn on() -> Watch {
        let max = WATCH_MAX.as_nanos() as u32;
        Watch { ns: max, max }
    }

    /// [`Watch::on`], unless `DMIO_WATCH=0` is in the environment (read
    /// once per process): less CPU at low queue depths, for the IOPS of a
    /// thread that sleeps at once.
    pub(crate) fn wanted() -> Watch {
        static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *OFF.get_or_init(|| std::env::var("DMIO_WATCH").is_ok_and(|v| v == "0")) {
            Watch::off()
        } else {
            Watch::on()
        }
    }

    /// Whether the thread watches at all (even if not now: [`Watch::ns`]).
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.max > 0
    }

    /// How long the next wait watches first (ns; 0: not at all).
    #[cfg(test)]
    pub(crate) fn ns(&self) -> u32 {
        self.ns
    }

    /// Whether a thread with `inflight` ops of its own in the kernel may
    /// watch before this wait: it watches at all, and has between one and
    /// [`WATCH_DEPTH`] ops there.
    #[inline]
    pub(crate) fn wants(&self, inflight: usize) -> bool {
        self.enabled() && (1..=WATCH_DEPTH).contains(&inflight)
    }

    /// When a watch that starts at `t0` ends, no later than `at` (the
    /// wait's own end, if any); `None`: no watch now.
    #[inline]
    pub(crate) fn end(&self, t0: Instant, at: Option<Instant>) -> Option<Instant> {
        (self.ns > 0).then(|| {
            let end = t0 + Duration::from_nanos(self.ns as u64);
            at.map_or(end, |a| a.min(end))
        })
    }

    /// After a wait that began at `t0` with IO in the kernel: `hit`, a
    /// completion ended it. As KVM's halt polling does, the watch doubles
    /// (from [`WATCH_MIN_NS`] up to the longest) when a completion ended
    /// the wait within [`WATCH_MAX`], and halves (below `WATCH_MIN_NS`:
    /// off) when the wait lasted longer, whatever ended it. A shorter wait
    /// that something else ended (work from another thread, a timer)
    /// changes nothing; a longer one halves it too, so a thread that other
    /// threads keep waking while its own IO is stuck stops watching.
    pub(crate) fn adapt(&mut self, t0: Instant, hit: bool) {
        if self.max == 0 {
            return;
        }
        let within = t0.elapsed().as_nanos() <= self.max as u128;
        if hit && within {
            self.ns = (self.ns.saturating_mul(2)).clamp(WATCH_MIN_NS, self.max);
        } else if !within {
            self.ns /= 2;
            if self.ns < WATCH_MIN_NS {
                self.ns = 0;
            }
        }
    }
}

/// Looks at `ready()` until `end`, yielding the CPU every [`WATCH_LOOKS`]
/// looks; whether it said yes. It is asked at least once, and the clock is
/// read only at each yield.
pub(crate) fn watch(end: Instant, ready: &mut dyn FnMut() -> bool) -> bool {
    loop {
        for _ in 0..WATCH_LOOKS {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        std::thread::yield_now();
        if Instant::now() >= end {
            return ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_stops_when_waits_are_long_and_comes_back_when_events_are_prompt() {
        let mut w = Watch::on();
        let max = w.ns();
        assert_eq!(max, WATCH_MAX.as_nanos() as u32);
        let late = Instant::now() - Duration::from_millis(1);
        for _ in 0..16 {
            w.adapt(late, true);
        }
        assert_eq!(w.ns(), 0, "events later than the longest watch stop it");
        assert!(w.end(Instant::now(), None).is_none());
        assert!(w.enabled(), "stopped, not off: a prompt event restarts it");
        w.adapt(Instant::now(), true);
        assert_eq!(w.ns(), WATCH_MIN_NS, "a prompt event starts it again");
        for _ in 0..16 {
            w.adapt(Instant::now(), true);
        }
        assert_eq!(w.ns(), max, "it grows back to the longest, no further");
        w.adapt(Instant::now(), false);
        assert_eq!(
            w.ns(),
            max,
            "a short wait something else ended changes nothing"
        );
        w.adapt(late, false);
        assert_eq!(w.ns(), max / 2, "a long wait without an event halves it");
        w.adapt(late, true);
        assert_eq!(w.ns(), max / 4, "a long wait halves it whatever ended it");
    }

    #[test]
    fn a_watch_that_is_off_never_starts() {
        let mut w = Watch::off();
        assert!(!w.enabled());
        for _ in 0..4 {
            w.adapt(Instant::now(), true);
        }
        assert_eq!(w.ns(), 0);
        assert!(w.end(Instant::now(), None).is_none());
    }

    #[test]
    fn watching_ends_on_the_event_or_at_the_end() {
        let t0 = Instant::now();
        let mut n = 0;
        assert!(watch(t0 + Duration::from_secs(5), &mut || {
            n += 1;
            n == 100
        }));
        assert_eq!(n, 100, "it returns at the look that sees the event");
        assert!(t0.elapsed() < Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(!watch(t0 + Duration::from_micros(200), &mut || false));
        assert!(t0.elapsed() >= Duration::from_micros(200));
    }
}
