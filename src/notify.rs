//! What a request tells its caller: each region's [`State`], delivered to
//! a [`Notify`]: the C notify function with its context ([`CNotify`]), or a
//! Rust [`Notifier`] (tests). The C types notify is called with
//! (`struct dm_io_region_state`, `dm_io_notify_fn`, `enum dm_io_state`,
//! `struct dm_io_handle`) are defined here, under their C names, so that
//! the request code and the C boundary (`src/ffi`, which re-exports them)
//! both import this module and neither imports the other; cbindgen emits
//! them into `dm_io.h` as before.
#![allow(non_camel_case_types)]

use std::os::raw::{c_int, c_uint, c_void};

/// A region's state as reported to notify (values of `DM_IO_OK` ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum State {
    Ok = 0,
    Timeout = 1,
    Cancelled = 2,
    Error = 3,
}

/// Opaque: a request, referenced with `dm_io_handle_get` / `dm_io_handle_put`.
pub struct dm_io_handle {
    _private: [u8; 0],
}

/// The state of a region, as given to notify.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dm_io_state {
    /// The region's IO completed successfully (final).
    DM_IO_OK = 0,
    /// The deadline passed; the IO is still running and will be notified
    /// again with its final state (not final).
    DM_IO_TIMEOUT = 1,
    /// Cancelled; the library will not touch the caller's memory for this
    /// region again (final).
    DM_IO_CANCELLED = 2,
    /// The IO failed; `error_code` is a negative errno (final).
    DM_IO_ERROR = 3,
}

/// What notify is told about one region. Its contents do not change during
/// the call; `hdl` is valid only during the call unless `dm_io_handle_get`
/// takes a reference.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dm_io_region_state {
    /// Index of the region in the `regions` array given to `dm_io`.
    pub index: c_uint,
    pub state: dm_io_state,
    /// 0 for OK; `-ETIMEDOUT` for TIMEOUT; a negative errno for ERROR; for
    /// CANCELLED, why: `-ECANCELED` (cancel call), `-ETIMEDOUT` (deadline),
    /// `-ESHUTDOWN` (client destroyed).
    pub error_code: c_int,
    pub hdl: *mut dm_io_handle,
}

/// Called per region: at most once with DM_IO_TIMEOUT, then once with a
/// final state.
pub type dm_io_notify_fn =
    Option<unsafe extern "C" fn(state: *mut dm_io_region_state, context: *mut c_void)>;

/// The C notify function as `dm_io` receives it (`dm_io_notify_fn`, not
/// NULL).
pub type CNotifyFn = unsafe extern "C" fn(state: *mut dm_io_region_state, context: *mut c_void);

/// The C caller's notify function and its context, kept inline in the
/// request (no allocation per request).
#[derive(Clone, Copy)]
pub struct CNotify {
    pub f: CNotifyFn,
    pub ctx: *mut c_void,
}

// SAFETY: the context is the C caller's and is only ever handed back to its
// own notify function, never dereferenced here; `dm_io`'s contract (dm_io.h)
// says notify is called on the client's completion thread (or, for SYNC, in
// the caller's thread), so the caller lends both for use from any thread.
unsafe impl Send for CNotify {}
// SAFETY: as for `Send`: shared access only copies the two pointers.
unsafe impl Sync for CNotify {}

impl CNotify {
    /// Calls the C function with one region's state.
    fn call(&self, index: u32, state: State, error: i32, handle: usize) {
        let state = match state {
            State::Ok => dm_io_state::DM_IO_OK,
            State::Timeout => dm_io_state::DM_IO_TIMEOUT,
            State::Cancelled => dm_io_state::DM_IO_CANCELLED,
            State::Error => dm_io_state::DM_IO_ERROR,
        };
        let mut st = dm_io_region_state {
            index,
            state,
            error_code: error,
            hdl: handle as *mut dm_io_handle,
        };
        // SAFETY: the caller gave this function and context for this request;
        // `st` is valid for the call.
        unsafe { (self.f)(&mut st, self.ctx) }
    }
}

/// Receives a request's notifications (a Rust notifier, for tests).
pub trait Notifier: Send + Sync {
    fn notify(&self, index: u32, state: State, error: i32, handle: usize);
}

/// How a request's notifications are delivered.
pub enum Notify {
    C(CNotify),
    Dyn(Box<dyn Notifier>),
}

impl Notify {
    pub fn notify(&self, index: u32, state: State, error: i32, handle: usize) {
        match self {
            Notify::C(c) => c.call(index, state, error, handle),
            Notify::Dyn(n) => n.notify(index, state, error, handle),
        }
    }
}
