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
use std::sync::Arc;

/// Wakes a thread that sleeps waiting for work.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

thread_local! {
    /// Inside [`with_deferred_wakes`]: whom to wake when it ends.
    static DEFERRED: RefCell<Option<Vec<Arc<dyn Wake>>>> = const { RefCell::new(None) };
}

fn same(a: &Arc<dyn Wake>, b: &Arc<dyn Wake>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// Wakes `w` now, or at the end of the current [`with_deferred_wakes`].
pub fn wake_or_defer(w: &Arc<dyn Wake>) {
    let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(list) => {
            if !list.iter().any(|x| same(x, w)) {
                list.push(Arc::clone(w));
            }
            true
        }
        None => false,
    });
    if !deferred {
        w.wake();
    }
}

/// Makes the wake-ups deferred so far in this batch; the batch goes on.
/// Call before blocking on anything another thread must do.
pub fn flush_deferred_wakes() {
    let list = DEFERRED.with(|d| d.borrow_mut().as_mut().map(std::mem::take));
    for w in list.into_iter().flatten() {
        w.wake();
    }
}

/// Runs `f` with wake-ups deferred to its end (nested calls join the
/// outer batch).
pub fn with_deferred_wakes<R>(f: impl FnOnce() -> R) -> R {
    let outer = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        let outer = d.is_some();
        if !outer {
            *d = Some(Vec::new());
        }
        outer
    });
    let r = f();
    if !outer {
        flush_deferred_wakes();
        DEFERRED.with(|d| *d.borrow_mut() = None);
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
