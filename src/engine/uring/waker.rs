//! Waking a ring's thread: an eventfd that a poll entry in the ring
//! watches, written only when the thread has announced that it is about
//! to sleep (and until when), so a burst of submissions costs no syscall.

use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A close-on-exec eventfd with `flags` added.
pub(in crate::engine) fn new_eventfd(flags: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: plain eventfd creation; result checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | flags) };
    if fd < 0 {
        return Err(Error::last_os("eventfd"));
    }
    // SAFETY: `fd` is a fresh descriptor owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wakes the reactor when (and only when) it is about to sleep.
pub(in crate::engine) struct Waker {
    pub(in crate::engine) efd: OwnedFd,
    pub(in crate::engine) sleeping: AtomicBool,
    /// Until when the thread sleeps when nothing wakes it ([`instant_key`];
    /// `u64::MAX`: no timer), published before `sleeping`.
    pub(in crate::engine) until: AtomicU64,
}

/// `at` as nanoseconds since a fixed instant of this process, to be
/// compared through an atomic.
fn instant_key(at: Instant) -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX - 1)
}

impl Waker {
    pub(in crate::engine) fn new() -> Result<Arc<Waker>> {
        Ok(Arc::new(Waker {
            efd: new_eventfd(0)?,
            sleeping: AtomicBool::new(false),
            until: AtomicU64::new(u64::MAX),
        }))
    }

    /// Announces that the owning thread is about to sleep until `at`
    /// (`None`: until woken): the wake-up time, then the flag, then one
    /// more look at `pending()`. A thread that publishes work and then
    /// reads these either sees the sleeper (and until when), or the sleeper
    /// sees its work. `false` (and the flag taken back) when there is work.
    pub(in crate::engine) fn announce_sleep(
        &self,
        at: Option<Instant>,
        pending: &dyn Fn() -> bool,
    ) -> bool {
        self.until
            .store(at.map_or(u64::MAX, instant_key), Ordering::SeqCst);
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if pending() {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Whether the thread, were it to sleep now, would sleep past `at`
    /// (called after publishing the work due at `at`; see [`super::Core::wait`]).
    pub(in crate::engine) fn sleeps_past(&self, at: Instant) -> bool {
        fence(Ordering::SeqCst);
        instant_key(at) < self.until.load(Ordering::SeqCst)
    }

    pub(super) fn wake(&self) {
        fence(Ordering::SeqCst);
        // A plain load first: while the thread is awake (the common case in
        // a burst) this keeps the flag's cache line shared, not bouncing.
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            unsafe { libc::write(self.efd.as_raw_fd(), &one as *const u64 as *const _, 8) };
        }
    }
}

impl crate::engine::Wake for Waker {
    fn wake(&self) {
        Waker::wake(self);
    }
}
