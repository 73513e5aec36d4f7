//! Helpers every exported function uses: the one panic boundary (with
//! errno mapping), pointer checks, and the thread-local last error message.

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_uint};
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

/// Pointer to this thread's last error message (valid until the thread's
/// next failing call).
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

/// Keeps `e` for `dm_io_last_error`; returns its (positive) errno.
fn record(name: &str, e: &Error) -> c_int {
    set_last_error(&format!("{name}: {}", e.msg));
    e.errno
}

const PANIC_ERRNO: c_int = libc::ENOTRECOVERABLE;

/// What an exported function returns when it fails: `-errno` for an `int`
/// result, NULL for a pointer, 0 for a size or count, nothing for `void`.
/// (rustls-ffi's `PanicOrDefault` plays the same part.)
pub trait Failed {
    /// The value for a failure with (positive) `errno`.
    fn failed(errno: c_int) -> Self;
}

impl Failed for c_int {
    fn failed(errno: c_int) -> Self {
        -errno
    }
}

impl<T> Failed for *mut T {
    fn failed(_: c_int) -> Self {
        std::ptr::null_mut()
    }
}

impl<T> Failed for *const T {
    fn failed(_: c_int) -> Self {
        std::ptr::null()
    }
}

impl Failed for () {
    fn failed(_: c_int) -> Self {}
}

/// Sizes (`sector_t`, `unsigned int`): 0, documented as the answer for an
/// unknown device.
impl Failed for u64 {
    fn failed(_: c_int) -> Self {
        0
    }
}

impl Failed for c_uint {
    fn failed(_: c_int) -> Self {
        0
    }
}

/// The boundary every exported function runs its body in: `f` runs under
/// `catch_unwind`, so no panic unwinds into C. `Ok(v)` returns `v`; an
/// `Err` is recorded for `dm_io_last_error` (prefixed with `name`) and
/// returns `T::failed(errno)`; a panic does the same with
/// `ENOTRECOVERABLE`.
pub fn boundary<T: Failed>(name: &str, f: impl FnOnce() -> Result<T>) -> T {
    let e = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e,
        Err(_) => Error::new(PANIC_ERRNO, "internal error (panic caught)"),
    };
    T::failed(record(name, &e))
}

/// Borrows `*const T` or fails with `EINVAL` (NULL or misaligned).
///
/// # Safety
/// A non-NULL, aligned `p` must point to a valid `T` for the borrow.
pub unsafe fn borrow<'a, T>(p: *const T, what: &str) -> Result<&'a T> {
    if p.is_null() {
        return Err(crate::einval!("{what} is NULL"));
    }
    if !p.is_aligned() {
        return Err(crate::einval!("{what} is misaligned"));
    }
    // SAFETY: non-null and aligned; validity is the caller's promise.
    Ok(unsafe { &*p })
}

/// Borrows `n` elements at `p` or fails with `EINVAL`.
///
/// # Safety
/// A non-NULL, aligned `p` must point to `n` valid `T`s.
pub unsafe fn slice<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T]> {
    if p.is_null() {
        return Err(crate::einval!("{what} is NULL"));
    }
    if !p.is_aligned() {
        return Err(crate::einval!("{what} is misaligned"));
    }
    // SAFETY: non-null and aligned; validity of n elements is the caller's promise.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Checks an out-parameter (non-NULL, aligned) before any work is done.
pub fn out<T>(p: *mut T, what: &str) -> Result<()> {
    if p.is_null() {
        return Err(crate::einval!("{what} is NULL"));
    }
    if !p.is_aligned() {
        return Err(crate::einval!("{what} is misaligned"));
    }
    Ok(())
}

/// Writes an out-parameter checked by [`out`].
///
/// # Safety
/// `p` must have passed [`out`] and point to writable memory for a `T`.
pub unsafe fn write<T>(p: *mut T, v: T) {
    // SAFETY: checked non-null and aligned by `out`; writable per contract.
    unsafe { p.write(v) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: this thread's message, valid until its next failing call.
        unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn boundary_maps_each_return_type() {
        assert_eq!(boundary::<c_int>("f", || Ok(3)), 3);
        assert_eq!(
            boundary::<c_int>("f", || Err(crate::einval!("bad"))),
            -libc::EINVAL
        );
        assert_eq!(last(), "f: bad");
        let p: *mut u8 = boundary("g", || Err(Error::new(libc::ENOMEM, "none")));
        assert!(p.is_null());
        assert_eq!(last(), "g: none");
        assert_eq!(boundary::<u64>("h", || Err(crate::einval!("x"))), 0);
        assert_eq!(boundary::<c_uint>("h", || Err(crate::einval!("x"))), 0);
        boundary::<()>("v", || Err(crate::einval!("ignored")));
        assert_eq!(last(), "v: ignored");
    }

    #[test]
    fn boundary_catches_a_panic() {
        let r = boundary::<c_int>("p", || panic!("boom"));
        assert_eq!(r, -libc::ENOTRECOVERABLE);
        assert_eq!(last(), "p: internal error (panic caught)");
        let p: *const u8 = boundary("q", || panic!("boom"));
        assert!(p.is_null());
    }
}
