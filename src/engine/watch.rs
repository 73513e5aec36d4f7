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
//!
//! Whether watching pays depends on the machine: on one VM (AMD) it made
//! QD1 reads 1.2-1.5x faster, on another (Intel) it made them about 0.6x
//! as fast as sleeping at once. So the thread tries both, in turns, and
//! keeps the faster ([`Watch::adapt`]): [`TRIAL`] watching, as long
//! sleeping at once, each counting completions per second after its first
//! [`TRIAL_SETTLE`]; then it keeps the faster for [`KEEP`], and tries again.

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

/// How long each way of waiting is tried. The kernel's view of a thread
/// (its load, where it wakes the IO's work) follows what the thread does
/// with a delay of tens of milliseconds, so each try first lets
/// [`TRIAL_SETTLE`] pass and counts only the rest.
pub(crate) const TRIAL: Duration = Duration::from_millis(120);
/// The start of each try that is not counted.
pub(crate) const TRIAL_SETTLE: Duration = Duration::from_millis(40);
/// How long the way a trial found faster is kept before the next trial.
pub(crate) const KEEP: Duration = Duration::from_secs(2);
/// A pause between two waits longer than this (the thread had no IO of
/// its own) starts the current try again: it measured nothing.
const TRIAL_GAP: Duration = Duration::from_millis(10);

/// Where a thread is in trying watching against sleeping at once.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Watching, to measure it.
    TryWatch,
    /// Sleeping at once, to measure it; the completions per second
    /// counted watching.
    TrySleep(f64),
    /// Keeping what the trial found faster (`true`: sleeping at once).
    Keep(bool),
}

/// How long a thread watches before it sleeps, adapted to how soon its
/// events come.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    /// The current watch, in ns (0: the thread sleeps at once).
    ns: u32,
    /// The most `ns` grows to (0: the thread never watches).
    max: u32,
    phase: Phase,
    /// When this phase began (`None`: at the next wait).
    since: Option<Instant>,
    /// When the last wait counted ended.
    last: Option<Instant>,
    /// The completions counted in this phase, after its settling time.
    hits: u32,
}

impl Watch {
    /// A thread that never watches.
    pub(crate) const fn off() -> Watch {
        Watch::with_max(0)
    }

    /// A thread that watches, starting at the longest watch (and with a
    /// trial of watching against sleeping at once).
    pub(crate) const fn on() -> Watch {
        Watch::with_max(WATCH_MAX.as_nanos() as u32)
    }

    const fn with_max(max: u32) -> Watch {
        Watch {
            ns: max,
            max,
            phase: Phase::TryWatch,
            since: None,
            last: None,
            hits: 0,
        }
    }

    /// Whether the thread sleeps at once now: the trial of sleeping at
    /// once, or what a trial found faster.
    #[inline]
    fn sleeps_at_once(&self) -> bool {
        matches!(self.phase, Phase::TrySleep(_) | Phase::Keep(true))
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
        (self.ns > 0 && !self.sleeps_at_once()).then(|| {
            let end = t0 + Duration::from_nanos(self.ns as u64);
            at.map_or(end, |a| a.min(end))
        })
    }

    /// After a wait that began at `t0` with IO in the kernel: `events`,
    /// the completions that ended it (0: something else did). As KVM's
    /// halt polling does, the watch doubles (from [`WATCH_MIN_NS`] up to
    /// the longest) when a completion ended
    /// the wait within [`WATCH_MAX`], and halves (below `WATCH_MIN_NS`:
    /// off) when the wait lasted longer, whatever ended it. A shorter wait
    /// that something else ended (work from another thread, a timer)
    /// changes nothing; a longer one halves it too, so a thread that other
    /// threads keep waking while its own IO is stuck stops watching.
    ///
    /// It also counts the completions for the trial (see the module's text).
    pub(crate) fn adapt(&mut self, t0: Instant, events: usize) {
        if self.max == 0 {
            return;
        }
        let hit = events > 0;
        let now = Instant::now();
        let took = now.saturating_duration_since(t0).as_nanos();
        self.count(now, events as u32);
        if self.sleeps_at_once() {
            return;
        }
        let within = took <= self.max as u128;
        if hit && within {
            self.ns = (self.ns.saturating_mul(2)).clamp(WATCH_MIN_NS, self.max);
        } else if !within {
            self.ns /= 2;
            if self.ns < WATCH_MIN_NS {
                self.ns = 0;
            }
        }
    }

    /// Counts a wait that ended at `now` with `events` completions, and
    /// moves the trial on: each try lasts [`TRIAL`] and counts the
    /// completions per second after its first [`TRIAL_SETTLE`]; the faster
    /// way is kept for [`KEEP`], watching only if it was faster by more
    /// than 5 % (sleeping at once costs less CPU).
    fn count(&mut self, now: Instant, events: u32) {
        let gap = self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) > TRIAL_GAP);
        self.last = Some(now);
        let since = match self.since {
            // A pause restarts a try (a kept way runs its time regardless).
            Some(t) if !gap || matches!(self.phase, Phase::Keep(_)) => t,
            _ => {
                self.since = Some(now);
                self.hits = 0;
                return;
            }
        };
        let age = now.saturating_duration_since(since);
        self.phase = match self.phase {
            Phase::Keep(_) => {
                if age < KEEP {
                    return;
                }
                // A new trial starts from the longest watch, as at first.
                self.ns = self.max;
                Phase::TryWatch
            }
            _ => {
                if age >= TRIAL_SETTLE {
                    self.hits = self.hits.saturating_add(events);
                }
                if age < TRIAL {
                    return;
                }
                let rate = self.hits as f64 / (age - TRIAL_SETTLE).as_secs_f64();
                match self.phase {
                    Phase::TrySleep(watching) => Phase::Keep(watching <= rate * 1.05),
                    _ => Phase::TrySleep(rate),
                }
            }
        };
        self.since = Some(now);
        self.hits = 0;
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
            w.adapt(late, 1);
        }
        assert_eq!(w.ns(), 0, "events later than the longest watch stop it");
        assert!(w.end(Instant::now(), None).is_none());
        assert!(w.enabled(), "stopped, not off: a prompt event restarts it");
        w.adapt(Instant::now(), 1);
        assert_eq!(w.ns(), WATCH_MIN_NS, "a prompt event starts it again");
        for _ in 0..16 {
            w.adapt(Instant::now(), 1);
        }
        assert_eq!(w.ns(), max, "it grows back to the longest, no further");
        w.adapt(Instant::now(), 0);
        assert_eq!(
            w.ns(),
            max,
            "a short wait something else ended changes nothing"
        );
        w.adapt(late, 0);
        assert_eq!(w.ns(), max / 2, "a long wait without an event halves it");
        w.adapt(late, 1);
        assert_eq!(w.ns(), max / 4, "a long wait halves it whatever ended it");
    }

    /// Feeds waits an event ended, one every `every_us` microseconds of
    /// the thread's clock `t`, for `d`.
    fn waits(w: &mut Watch, t: &mut Instant, d: Duration, every_us: u64) {
        let end = *t + d;
        while *t < end {
            *t += Duration::from_micros(every_us);
            w.count(*t, 1);
        }
    }

    #[test]
    fn the_trial_keeps_whichever_way_of_waiting_completes_more() {
        let mut t = Instant::now();
        let ms = Duration::from_millis;
        // Sleeping at once is faster here (as on the Intel VM).
        let mut w = Watch::on();
        assert!(w.end(t, None).is_some(), "it starts watching");
        waits(&mut w, &mut t, TRIAL + ms(1), 40);
        assert!(w.end(t, None).is_none(), "then tries sleeping");
        waits(&mut w, &mut t, TRIAL + ms(1), 20);
        assert!(w.end(t, None).is_none(), "and keeps sleeping, the faster");
        waits(&mut w, &mut t, KEEP - ms(5), 20);
        assert!(w.end(t, None).is_none());
        waits(&mut w, &mut t, ms(10), 20);
        assert!(
            w.end(t, None).is_some(),
            "until the next trial, which watches first again"
        );
        // Watching is faster now (as on the AMD VM).
        waits(&mut w, &mut t, TRIAL + ms(1), 15);
        assert!(w.end(t, None).is_none());
        waits(&mut w, &mut t, TRIAL + ms(1), 30);
        assert!(w.end(t, None).is_some(), "it keeps watching, the faster");
        // Within 5 %, sleeping at once wins (it costs less CPU).
        let mut w = Watch::on();
        waits(&mut w, &mut t, TRIAL + ms(1), 40);
        waits(&mut w, &mut t, TRIAL + ms(1), 41);
        assert!(w.end(t, None).is_none());
        // A pause (no IO) restarts the try: it measured nothing.
        let mut w = Watch::on();
        waits(&mut w, &mut t, TRIAL - ms(20), 40);
        t += ms(50);
        waits(&mut w, &mut t, TRIAL - ms(20), 40);
        assert!(w.end(t, None).is_some(), "still trying watching");
    }

    #[test]
    fn a_watch_that_is_off_never_starts() {
        let mut w = Watch::off();
        assert!(!w.enabled());
        for _ in 0..4 {
            w.adapt(Instant::now(), 1);
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
