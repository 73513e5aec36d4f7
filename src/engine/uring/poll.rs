//! `DMIO_URING_WAIT=poll`: waiting for completions in ppoll(2) instead of
//! inside `io_uring_enter` (see [`poll_wait`]).

use io_uring::IoUring;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// `DMIO_URING_WAIT=poll`: threads wait in poll(2) on an eventfd that the
/// ring signals for each completion, never inside `io_uring_enter`. Slower
/// (completions interrupt the thread), but tools that cannot run a thread
/// blocked in `io_uring_enter`, such as valgrind 3.19 (it holds its global
/// lock across that call, so every other thread stops), can run the
/// io_uring engine this way.
pub(super) fn poll_wait() -> bool {
    static POLL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *POLL.get_or_init(|| std::env::var("DMIO_URING_WAIT").is_ok_and(|v| v == "poll"))
}

/// [`poll_wait`]: submits, then sleeps in ppoll(2) until the ring signals a
/// completion on `efd` (a wake-up arrives as the completion of the poll on
/// the waker's eventfd) or `at` passes.
pub(super) fn poll_for_completion(
    ring: &mut IoUring,
    efd: &OwnedFd,
    at: Option<Instant>,
) -> std::io::Result<()> {
    let mut count: u64 = 0;
    // SAFETY: reads 8 bytes into our own u64 from our non-blocking eventfd
    // (resetting it before the CQ is looked at, so no signal is lost).
    unsafe { libc::read(efd.as_raw_fd(), &mut count as *mut u64 as *mut _, 8) };
    ring.submit()?;
    if !ring.completion().is_empty() {
        return Ok(());
    }
    ppoll_until(efd.as_raw_fd(), at)
}

/// The time from now until `at` (zero once it has passed), as a relative
/// timeout for a system call.
pub(in crate::engine) fn timespec_until(at: Instant) -> libc::timespec {
    let d = at.saturating_duration_since(Instant::now());
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

/// Sleeps in ppoll(2) until `fd` is readable or `at` passes (`None`: no
/// limit). An interrupted sleep (EINTR) is not an error: the caller looks
/// at its work and comes back.
pub(in crate::engine) fn ppoll_until(fd: RawFd, at: Option<Instant>) -> std::io::Result<()> {
    let ts = at.map(timespec_until);
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: one valid pollfd, an optional valid timespec, no signal mask.
    let r = unsafe { libc::ppoll(&mut pfd, 1, tsp, std::ptr::null()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(())
}
