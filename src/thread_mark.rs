//! Finding one of the calling thread's own thread-local values without a
//! thread-local look-up.
//!
//! In a shared library every thread-local look-up is a call to
//! `__tls_get_addr` and a check of the value's state: about 25
//! instructions. Two per IO were left on the hot path of a notify that
//! submits the next request (issue 22): the completion thread's ring
//! (offering the op, `engine::local`) and its event queue (queueing the
//! event, `completion`). Both ask "is the calling thread the completion
//! thread, and if so where are its values", so each such thread publishes
//! its identity and a pointer to its value in a [`Mark`], and the hot paths
//! compare identities instead.
//!
//! The identity is the thread pointer (`fs:0` on x86_64, the first word of
//! the thread control block, which glibc and musl point at itself): one
//! instruction, unique among live threads. Where it is not read (other
//! architectures) [`current`] is 0, no mark matches, and the callers look
//! up their thread-locals as before ([`AVAILABLE`]).

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Whether [`current`] names threads on this target.
pub(crate) const AVAILABLE: bool = cfg!(all(target_arch = "x86_64", target_os = "linux"));

/// The calling thread's identity: its thread pointer, unique among live
/// threads (a thread that ended may have its identity reused). 0 where
/// not [`AVAILABLE`].
#[inline(always)]
pub(crate) fn current() -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let tp: usize;
        // SAFETY: reads the first word of the calling thread's control
        // block (`fs:0`, its own address on glibc and musl); nothing is
        // written and no flag changes.
        unsafe {
            std::arch::asm!(
                "mov {}, qword ptr fs:[0]",
                out(reg) tp,
                options(nostack, readonly, preserves_flags)
            )
        };
        tp
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        0
    }
}

/// One thread's pointer to a value of its own (a thread-local), found by
/// that thread alone ([`Mark::here`]); other threads find nothing.
pub(crate) struct Mark<T> {
    /// The identity of the thread that set it (0: none).
    thread: AtomicUsize,
    value: AtomicPtr<T>,
}

impl<T> Mark<T> {
    pub(crate) const fn new() -> Mark<T> {
        Mark {
            thread: AtomicUsize::new(0),
            value: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Publishes `value` for the calling thread (a no-op where identities
    /// are not [`AVAILABLE`]).
    ///
    /// # Safety
    /// `value` is a value of the calling thread that stays valid until this
    /// thread calls [`Mark::clear`], which it does before the value goes and
    /// before the thread ends (so that no later thread with the same
    /// identity finds it).
    pub(crate) unsafe fn set(&self, value: *const T) {
        let me = current();
        if me == 0 {
            return;
        }
        self.value.store(value as *mut T, Ordering::Relaxed);
        self.thread.store(me, Ordering::Relaxed);
    }

    /// Unpublishes the value (on the thread that set it).
    pub(crate) fn clear(&self) {
        if self.thread.load(Ordering::Relaxed) == current() {
            self.thread.store(0, Ordering::Relaxed);
        }
    }

    /// The value, when the calling thread is the one that set it (and has
    /// not cleared it since).
    #[inline(always)]
    pub(crate) fn here(&self) -> Option<&T> {
        let t = self.thread.load(Ordering::Relaxed);
        if t == 0 || t != current() {
            return None;
        }
        // SAFETY: only the thread that set the mark has this identity while
        // it lives, and it clears the mark before its value goes and before
        // it ends (`set`'s contract), so the value is this thread's own and
        // valid; both fields were stored by this thread, in this order.
        Some(unsafe { &*self.value.load(Ordering::Relaxed) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_found_by_its_thread_only() {
        static X: u32 = 7;
        let m = std::sync::Arc::new(Mark::<u32>::new());
        assert!(m.here().is_none());
        // SAFETY: a static lives for ever; cleared below.
        unsafe { m.set(&X) };
        assert_eq!(m.here().copied(), if AVAILABLE { Some(7) } else { None });
        let m2 = std::sync::Arc::clone(&m);
        std::thread::spawn(move || assert!(m2.here().is_none()))
            .join()
            .expect("other thread");
        m.clear();
        assert!(m.here().is_none());
        if AVAILABLE {
            assert_ne!(current(), 0);
            let other = std::thread::spawn(current).join().expect("other thread");
            assert_ne!(other, current());
        }
    }
}
