//! Errors inside the library: a positive errno plus a human-readable message.
//!
//! The C boundary (`ffi`) turns an [`Error`] into `-errno` and keeps the
//! message for `dm_io_last_error()`.

use std::fmt;

/// A failed call: `errno` is the positive errno value, `msg` says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub errno: i32,
    pub msg: String,
}

impl Error {
    pub fn new(errno: i32, msg: impl Into<String>) -> Self {
        Error {
            errno,
            msg: msg.into(),
        }
    }

    /// Builds an error from the calling thread's `errno` after a failed libc call.
    pub fn last_os(what: &str) -> Self {
        let e = std::io::Error::last_os_error();
        Error::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("{what}: {e}"),
        )
    }

    pub fn from_io(what: &str, e: &std::io::Error) -> Self {
        Error::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("{what}: {e}"),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.msg, self.errno)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// `einval!("fmt", args)`: an `EINVAL` error with a formatted message.
#[macro_export]
macro_rules! einval {
    ($($arg:tt)*) => { $crate::error::Error::new(libc::EINVAL, format!($($arg)*)) };
}
