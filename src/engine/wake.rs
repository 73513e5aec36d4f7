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
