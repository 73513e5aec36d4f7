//! Helpers every exported function uses: panic catching, errno mapping,
//! pointer checks, and the thread-local last error message.

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::ffi::CString;
use std::os::raw::{c_char, c_int};
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

fn record(name: &str, e: &Error) -> c_int {
    set_last_error(&format!("{name}: {}", e.msg));
    -e.errno
}

const PANIC_ERRNO: c_int = libc::ENOTRECOVERABLE;

/// Runs `f`; maps `Err` to `-errno` and a panic to `-ENOTRECOVERABLE`.
pub fn int(name: &str, f: impl FnOnce() -> Result<c_int>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => record(name, &e),
        Err(_) => record(
            name,
            &Error::new(PANIC_ERRNO, "internal error (panic caught)"),
        ),
    }
}

/// Runs `f` for a function returning a pointer: NULL on error or panic.
pub fn ptr<T>(name: &str, f: impl FnOnce() -> Result<*mut T>) -> *mut T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            record(name, &e);
            std::ptr::null_mut()
        }
        Err(_) => {
            record(
                name,
                &Error::new(PANIC_ERRNO, "internal error (panic caught)"),
            );
            std::ptr::null_mut()
        }
    }
}

/// Runs `f` for a function with no result; errors go to the last error.
pub fn void(name: &str, f: impl FnOnce() -> Result<()>) {
    let _ = int(name, || f().map(|()| 0));
}

/// Runs `f` for a function returning a plain value, `dflt` on panic.
pub fn value<T>(name: &str, dflt: T, f: impl FnOnce() -> Result<T>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            record(name, &e);
            dflt
        }
        Err(_) => {
            record(
                name,
                &Error::new(PANIC_ERRNO, "internal error (panic caught)"),
            );
            dflt
        }
    }
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
