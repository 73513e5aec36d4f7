//! Wake-ups, and deferring them to the end of a batch.
//!
//! A thread that produces work for another (IO for a reactor, events for a
//! completion thread) wakes it through a [`Wake`]. Inside
//! [`with_deferred_wakes`] those wake-ups are collected and made once each
//! at the end: the completion thread delivers a batch of notifications
//! whose callbacks submit new IO, or the reactor fires a burst of
//! deadlines, and the other thread is woken once for all of it instead of
//! once per item.

use std::cell::RefCell;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Wakes a thread that sleeps waiting for work.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// Whom to wake at the end of the current batch; `active` outside a
/// batch is false. The vector keeps its capacity from batch to batch, so a
/// batch allocates nothing once the thread has seen its usual number of
/// distinct wakers.
struct Deferred {
    active: bool,
    list: Vec<Arc<dyn Wake>>,
}

thread_local! {
    /// Inside [`with_deferred_wakes`]: whom to wake when it ends.
    static DEFERRED: RefCell<Deferred> = const {
        RefCell::new(Deferred {
            active: false,
            list: Vec::new(),
        })
    };
}

fn same(a: &Arc<dyn Wake>, b: &Arc<dyn Wake>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// A thread that sleeps parked (no ring of its own): woken by unparking,
/// only when it announced its sleep.
pub struct Parker {
    thread: std::thread::Thread,
    sleeping: AtomicBool,
    /// How long [`Parker::park`] watches `pending()` before it sleeps.
    spin: Duration,
}

impl Parker {
    /// A parker for the calling thread.
    pub fn here() -> Arc<Parker> {
        Parker::spinning(Duration::ZERO)
    }

    /// A parker for the calling thread that watches for work for `spin`
    /// before each sleep ([`spin_until`]): work that comes meanwhile costs
    /// its producer no wake-up and this thread no context switch.
    pub fn spinning(spin: Duration) -> Arc<Parker> {
        Arc::new(Parker {
            thread: std::thread::current(),
            sleeping: AtomicBool::new(false),
            spin,
        })
    }

    /// On the parker's thread: sleeps until woken or `max` passes, unless
    /// `pending()` says there is work (checked after announcing the sleep,
    /// so a wake-up cannot be missed). May return early.
    pub fn park(&self, pending: &dyn Fn() -> bool, max: Option<Duration>) {
        if !self.spin.is_zero() && spin_until(pending, self.spin.min(max.unwrap_or(self.spin))) {
            return;
        }
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !pending() {
            // A wake-up between the look and here is kept by the thread's
            // park token: the park returns at once.
            match max {
                Some(d) => std::thread::park_timeout(d),
                None => std::thread::park(),
            }
        }
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

/// Watches `pending()` for at most `d`, yielding the CPU between looks
/// (so that it takes only a CPU no other thread wants); `true` when it
/// said there is work.
pub fn spin_until(pending: &dyn Fn() -> bool, d: Duration) -> bool {
    let start = std::time::Instant::now();
    loop {
        if pending() {
            return true;
        }
        std::thread::yield_now();
        if start.elapsed() >= d {
            return false;
        }
    }
}

impl Wake for Parker {
    fn wake(&self) {
        fence(Ordering::SeqCst);
        // A plain load first: while the thread is awake this costs no write.
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.thread.unpark();
        }
    }
}

/// Wakes `w` now, or at the end of the current [`with_deferred_wakes`].
pub fn wake_or_defer(w: &Arc<dyn Wake>) {
    let deferred = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if !d.active {
            return false;
        }
        if !d.list.iter().any(|x| same(x, w)) {
            d.list.push(Arc::clone(w));
        }
        true
    });
    if !deferred {
        w.wake();
    }
}

/// Makes the wake-ups deferred so far in this batch; the batch goes on.
/// Call before blocking on anything another thread must do.
pub fn flush_deferred_wakes() {
    // Taken out while waking (a wake may defer again), put back after for
    // its capacity unless a nested batch made a new one meanwhile.
    let mut list = DEFERRED.with(|d| std::mem::take(&mut d.borrow_mut().list));
    if list.capacity() == 0 {
        return;
    }
    for w in list.drain(..) {
        w.wake();
    }
    DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.list.capacity() == 0 {
            d.list = list;
        }
    });
}

/// Runs `f` with wake-ups deferred to its end (nested calls join the
/// outer batch).
pub fn with_deferred_wakes<R>(f: impl FnOnce() -> R) -> R {
    let outer = DEFERRED.with(|d| std::mem::replace(&mut d.borrow_mut().active, true));
    let r = f();
    if !outer {
        flush_deferred_wakes();
        DEFERRED.with(|d| d.borrow_mut().active = false);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Count(AtomicU32);
    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn pair() -> (Arc<Count>, Arc<dyn Wake>) {
        let c = Arc::new(Count::default());
        let w: Arc<dyn Wake> = c.clone();
        (c, w)
    }

    fn n(c: &Count) -> u32 {
        c.0.load(Ordering::SeqCst)
    }

    #[test]
    fn outside_a_batch_a_wake_up_is_made_at_once() {
        let (c, w) = pair();
        wake_or_defer(&w);
        wake_or_defer(&w);
        assert_eq!(n(&c), 2);
        // Nothing deferred: a flush outside a batch does nothing.
        flush_deferred_wakes();
        assert_eq!(n(&c), 2);
    }

    #[test]
    fn a_batch_wakes_each_thread_once_at_its_end() {
        let (a, wa) = pair();
        let (b, wb) = pair();
        let r = with_deferred_wakes(|| {
            for _ in 0..3 {
                wake_or_defer(&wa);
            }
            wake_or_defer(&wb);
            assert_eq!((n(&a), n(&b)), (0, 0), "deferred");
            7
        });
        assert_eq!(r, 7);
        assert_eq!((n(&a), n(&b)), (1, 1), "once each");
        // The batch is over: wake-ups are immediate again.
        wake_or_defer(&wa);
        assert_eq!(n(&a), 2);
    }

    #[test]
    fn a_nested_batch_joins_the_outer_one() {
        let (a, wa) = pair();
        with_deferred_wakes(|| {
            with_deferred_wakes(|| wake_or_defer(&wa));
            assert_eq!(n(&a), 0, "the inner batch's end is not the outer's");
            wake_or_defer(&wa);
        });
        assert_eq!(n(&a), 1);
    }

    #[test]
    fn a_flush_inside_a_batch_wakes_now_and_the_batch_goes_on() {
        let (a, wa) = pair();
        with_deferred_wakes(|| {
            wake_or_defer(&wa);
            flush_deferred_wakes();
            assert_eq!(n(&a), 1, "made before blocking");
            wake_or_defer(&wa);
            assert_eq!(n(&a), 1, "still deferring");
        });
        assert_eq!(n(&a), 2);
    }
}

#[cfg(test)]
mod parker_tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn work_seen_before_sleeping_means_no_sleep() {
        let p = Parker::here();
        let t0 = Instant::now();
        p.park(&|| true, Some(Duration::from_secs(10)));
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(!p.sleeping.load(Ordering::SeqCst));
    }

    #[test]
    fn a_wake_up_between_the_look_and_the_park_is_kept() {
        let p = Parker::here();
        // As if a producer saw the sleep announced just before the park.
        p.sleeping.store(true, Ordering::SeqCst);
        p.wake();
        assert!(!p.sleeping.load(Ordering::SeqCst), "the wake-up was taken");
        let t0 = Instant::now();
        p.park(&|| false, Some(Duration::from_secs(10)));
        assert!(t0.elapsed() < Duration::from_secs(5), "the park kept it");
    }

    #[test]
    fn a_wake_up_from_another_thread_ends_the_sleep() {
        let p = Parker::here();
        let flag = Arc::new(AtomicBool::new(false));
        let (p2, f2) = (Arc::clone(&p), Arc::clone(&flag));
        let t = std::thread::spawn(move || {
            f2.store(true, Ordering::SeqCst);
            p2.wake();
        });
        let t0 = Instant::now();
        while !flag.load(Ordering::SeqCst) {
            p.park(
                &|| flag.load(Ordering::SeqCst),
                Some(Duration::from_secs(10)),
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "woken, not timed out"
        );
        t.join().unwrap();
    }

    #[test]
    fn a_spinning_parker_sees_work_that_comes_while_it_watches() {
        let p = Parker::spinning(Duration::from_secs(5));
        let flag = Arc::new(AtomicBool::new(false));
        let f2 = Arc::clone(&flag);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            // No wake(): the watching parker must see it by itself.
            f2.store(true, Ordering::SeqCst);
        });
        let t0 = Instant::now();
        p.park(
            &|| flag.load(Ordering::SeqCst),
            Some(Duration::from_secs(10)),
        );
        assert!(flag.load(Ordering::SeqCst), "returned before the work came");
        assert!(t0.elapsed() < Duration::from_secs(4), "seen while watching");
        assert!(
            !p.sleeping.load(Ordering::SeqCst),
            "it never announced a sleep"
        );
        t.join().unwrap();
    }
}
