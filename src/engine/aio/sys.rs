//! Linux native AIO at the system-call level (`linux/aio_abi.h`), with no
//! libaio: the `iocb` and `io_event` layouts, and `io_setup`,
//! `io_submit`, `io_getevents` and `io_destroy` through `libc::syscall`.
//! Results are converted here, once: `Ok` or the kernel's errno.

use crate::engine::uring::timespec_until;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

pub(super) const IOCB_CMD_PREAD: u16 = 0;
pub(super) const IOCB_CMD_PWRITE: u16 = 1;
pub(super) const IOCB_CMD_FDSYNC: u16 = 3;
/// Completes when the fd is ready for the events in `aio_buf` (one shot;
/// Linux 4.18 and later), with the ready events as `res`.
pub(super) const IOCB_CMD_POLL: u16 = 5;
/// `aio_resfd` is valid: the kernel adds 1 to that eventfd per completion.
pub(super) const IOCB_FLAG_RESFD: u32 = 1;

/// `struct iocb`. The kernel copies it during `io_submit`; what must stay
/// valid until the completion is the buffer `aio_buf` names.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct Iocb {
    pub aio_data: u64,
    #[cfg(target_endian = "little")]
    pub aio_key: u32,
    #[cfg(target_endian = "little")]
    pub aio_rw_flags: i32,
    #[cfg(target_endian = "big")]
    pub aio_rw_flags: i32,
    #[cfg(target_endian = "big")]
    pub aio_key: u32,
    pub aio_lio_opcode: u16,
    pub aio_reqprio: i16,
    pub aio_fildes: u32,
    pub aio_buf: u64,
    pub aio_nbytes: u64,
    pub aio_offset: i64,
    pub aio_reserved2: u64,
    pub aio_flags: u32,
    pub aio_resfd: u32,
}

/// `struct io_event`: `data` is the iocb's `aio_data`, `res` the byte
/// count or a negative errno.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct IoEvent {
    pub data: u64,
    pub obj: u64,
    pub res: i64,
    pub res2: i64,
}

const _: () = {
    assert!(std::mem::size_of::<Iocb>() == 64);
    assert!(std::mem::size_of::<IoEvent>() == 32);
};

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `struct aio_ring`'s `magic` (`fs/aio.c`): the context's id is the
/// address of the ring of events the kernel maps for it, which starts
/// with this header.
const AIO_RING_MAGIC: u32 = 0xa10a10a1;

/// An AIO context (`aio_context_t`), destroyed on drop. Its owner drops it
/// only when no iocb is in the kernel any more: `io_destroy` waits for
/// every outstanding one (and cancels a poll).
pub(super) struct Context {
    id: libc::c_ulong,
    /// Events it was set up for (the most iocbs in the kernel at once).
    pub nr: u32,
    /// The kernel's ring of events is mapped at `id` with the header
    /// Linux gives it (checked once), so [`Context::has_events`] can look
    /// at it without a system call.
    ring: bool,
}

impl Context {
    /// `io_setup(nr)`: fails with the kernel's errno (`ENOSYS` where AIO is
    /// compiled out or refused by seccomp, `EAGAIN` past `fs.aio-max-nr`).
    pub fn new(nr: u32) -> Result<Context> {
        let mut id: libc::c_ulong = 0;
        // SAFETY: io_setup writes one aio_context_t to `id`, a live local
        // that starts at 0 as the call requires.
        let r = unsafe { libc::syscall(libc::SYS_io_setup, nr as libc::c_long, &mut id) };
        if r < 0 {
            let e = errno();
            return Err(Error::new(
                e,
                format!(
                    "io_setup({nr}): {} (Linux AIO refused)",
                    std::io::Error::from_raw_os_error(e)
                ),
            ));
        }
        // SAFETY: on Linux the id io_setup returns is the address of the
        // context's event ring, mapped readable until io_destroy (libaio
        // reads its magic the same way); the header's fifth u32 is `magic`
        // and its eighth `header_length` (32).
        let ring = unsafe {
            let h = id as *const u32;
            id != 0
                && std::ptr::read_volatile(h.add(4)) == AIO_RING_MAGIC
                && std::ptr::read_volatile(h.add(7)) == 32
        };
        Ok(Context { id, nr, ring })
    }

    /// Whether [`Context::has_events`] reads the kernel's ring (without it,
    /// it always says yes).
    pub fn ring_mapped(&self) -> bool {
        self.ring
    }

    /// Whether the kernel's ring holds events not reaped yet (its head is
    /// not its tail), read without a system call; `true` when the ring
    /// cannot be read (then only `io_getevents` tells).
    pub fn has_events(&self) -> bool {
        if !self.ring {
            return true;
        }
        let h = self.id as *const AtomicU32;
        // SAFETY: `ring` says the context's ring is mapped at `id` (see
        // `new`), for as long as this context lives; `head` and `tail` are
        // its third and fourth u32s, which the kernel updates, and which we
        // only read.
        unsafe { (*h.add(2)).load(Ordering::Acquire) != (*h.add(3)).load(Ordering::Acquire) }
    }

    /// `io_getevents` waiting for at least one event until `at` (`None`:
    /// no limit): fills the front of `events` and says how many (0 at the
    /// limit, or when a signal interrupts the wait), or the kernel's errno.
    pub fn wait(
        &self,
        events: &mut [IoEvent],
        at: Option<Instant>,
    ) -> std::result::Result<usize, i32> {
        let mut ts = at.map(timespec_until);
        match self.getevents(1, events, ts.as_mut()) {
            Err(libc::EINTR) => Ok(0),
            r => r,
        }
    }

    /// `io_getevents(min_nr)` with timeout `ts` (`None`: none).
    fn getevents(
        &self,
        min_nr: libc::c_long,
        events: &mut [IoEvent],
        ts: Option<&mut libc::timespec>,
    ) -> std::result::Result<usize, i32> {
        let tsp = ts.map_or(std::ptr::null_mut(), |t| t as *mut libc::timespec);
        // SAFETY: the kernel writes at most `len` io_events into `events`,
        // which has room for them; `tsp` is null or a live timespec.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.id,
                min_nr,
                events.len() as libc::c_long,
                events.as_mut_ptr(),
                tsp,
            )
        };
        if r >= 0 {
            Ok(r as usize)
        } else {
            Err(errno())
        }
    }

    /// `io_submit`: how many of `iocbs` the kernel took (from the front),
    /// or the errno that refused the first of them (`EAGAIN`: no room in
    /// the context now; any other: that iocb is bad).
    ///
    /// # Safety
    /// Each pointer in `iocbs` points to a live `Iocb` (the kernel copies
    /// it during the call). For each iocb the kernel takes, the buffer its
    /// `aio_buf` names (`aio_nbytes` bytes) stays valid, and is not used
    /// otherwise, until `io_getevents` returns its event; its fd stays open
    /// as long.
    pub unsafe fn submit(&self, iocbs: &mut [*mut Iocb]) -> std::result::Result<usize, i32> {
        loop {
            // SAFETY: `iocbs` holds `len` pointers to live `Iocb`s, and their
            // buffers outlive the IO: this function's contract.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_submit,
                    self.id,
                    iocbs.len() as libc::c_long,
                    iocbs.as_mut_ptr(),
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = errno();
            if e != libc::EINTR {
                return Err(e);
            }
        }
    }

    /// `io_getevents` without waiting: fills the front of `events` with
    /// completions that have arrived and says how many.
    pub fn reap(&self, events: &mut [IoEvent]) -> usize {
        let mut zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            match self.getevents(0, events, Some(&mut zero)) {
                Ok(n) => return n,
                Err(libc::EINTR) => continue,
                Err(_) => return 0,
            }
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: our own context, destroyed once; its owner drops it only
        // when no iocb is in the kernel.
        unsafe { libc::syscall(libc::SYS_io_destroy, self.id) };
    }
}

/// Whether the kernel runs `IOCB_CMD_FDSYNC` (Linux 4.18 and later); older
/// kernels refuse it, and flushes then go to the thread pool.
pub(super) fn has_fdsync() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // SAFETY: uname fills our zeroed local struct.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a live utsname.
        if unsafe { libc::uname(&mut u) } != 0 {
            return false;
        }
        let release: String = u
            .release
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        kernel_at_least(&release, (4, 18))
    })
}

/// Whether a kernel release string ("6.18.44-fc") is at least `want`.
pub(super) fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= want
}
