//! Memory: the caller's pages and buffers, walking them, and the client's
//! private (bounce) memory.
//!
//! - [`pages`]: `struct page` equivalents handed out to C.
//! - [`caller`]: a request's memory as a list of validated segments, and the
//!   copies between it and private memory.
//! - [`pool`]: the bounded pool of private memory all cancellable IO runs on.
//! - [`copy`]: the bounce copy itself.

pub mod caller;
pub mod copy;
pub mod pages;
pub mod pool;

/// Size of one page, in bytes (`DM_IO_PAGE_SIZE`).
pub(crate) const PAGE_SIZE: usize = 4096;
