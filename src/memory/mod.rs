//! Memory: the caller's pages and buffers, walking them, and the client's
//! private (bounce) memory.
//!
//! - [`pages`]: `struct page` equivalents handed out to C.
//! - [`lib_pages`]: reads run in library pages, and their detach on
//!   cancel.
//! - [`caller`]: a request's memory as a list of validated segments, and the
//!   copies between it and private memory.
//! - [`pool`]: the bounded pool of private memory all cancellable IO runs on.
//! - [`copy`]: the bounce copy itself.

pub mod caller;
pub mod copy;
pub mod lib_pages;
pub mod pages;
pub mod pool;

/// Size of one page, in bytes (`DM_IO_PAGE_SIZE`).
pub(crate) const PAGE_SIZE: usize = 4096;

/// `bytes` cut into `(offset, length)` pieces of at most `piece` bytes
/// (the ops of a region, one `max_size` slot each).
pub(crate) fn pieces(bytes: u64, piece: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..bytes.div_ceil(piece)).map(move |k| (k * piece, piece.min(bytes - k * piece)))
}
