//! libdmio: timed, cancellable, multi-region block IO behind the dm-io C ABI
//! proposed on dm-devel in 2006.
//!
//! Flow: [`ffi`] (the C boundary) → [`client`] / [`request`] (region state
//! machine) → [`engine`] (io_uring reactor) → [`completion`] (the thread that
//! calls notify). [`memory`] (pages, caller memory, bounce pool) and
//! [`device`] (open, sizes, fault injection) stand alone.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod client;
pub mod completion;
pub mod device;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod handle;
pub mod memory;
pub mod nbd;
pub mod notify;
pub mod registry;
pub mod request;
pub mod small;
pub(crate) mod tagged_stack;
pub(crate) mod thread_mark;

#[cfg(test)]
mod state_tests;
