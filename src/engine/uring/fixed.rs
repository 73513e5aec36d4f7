//! Fixed buffers: the client's private memory (buffer 0) and the arena
//! chunks of library pages (buffer 1 + c) registered with a ring, and
//! which buffer an op runs in. The library-page side (generations,
//! refusals, detach) is [`crate::memory::lib_pages`].

use super::Core;
use crate::engine::IoOp;
use crate::memory::lib_pages;

/// Private memory up to this size is registered with each ring
/// (`IORING_REGISTER_BUFFERS`: pinned once, so reads and writes skip the
/// per-IO page pinning). Registering pins every page at once (and a
/// kernel worker unpins them all after the ring closes), so larger pools,
/// which are for many slow IOs rather than many fast ones, and pools
/// beyond `RLIMIT_MEMLOCK` (8 MiB by default for users without
/// CAP_IPC_LOCK; the kernel refuses) keep plain reads and writes and fault
/// their memory in as used.
pub(super) const REGISTER_MAX: usize = 16 << 20;

/// [`Core::chunks`]: the kernel refused to register the chunk.
pub(super) const REFUSED: u64 = u64::MAX;

/// Which registered buffer an op's memory is in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Buf {
    /// Not registered: a plain read or write.
    Plain,
    /// Registered buffer `n` (0: the private memory; 1 + c: arena chunk c).
    Fixed(u16),
}

/// Fixed buffer index of arena chunk `c` (after the private memory's 0).
pub(super) fn chunk_buf(c: u16) -> u16 {
    c + 1
}

impl Core {
    /// Registers the client's private memory (see [`REGISTER_MAX`]); on
    /// any refusal ops keep using plain reads and writes.
    pub(in crate::engine) fn register(&mut self, (start, len): (usize, usize)) {
        if self.fixed.is_some() || len == 0 || len > REGISTER_MAX {
            return;
        }
        let iov = libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: len,
        };
        let sub = self.ring.submitter();
        // SAFETY: the region is the pool's mapping, which stays mapped while
        // any op can name it (ops hold the pool through their slots); once it
        // is unmapped no op refers to it, and the pages the kernel pinned
        // stay its own until the ring is dropped.
        let done = unsafe {
            if self.chunks.is_empty() {
                sub.register_buffers(&[iov])
            } else {
                sub.register_buffers_update(0, &[iov], None)
            }
        };
        if done.is_ok() {
            self.fixed = Some((start, start + len));
        }
    }

    /// The buffer `op` runs in on this ring: the private memory's when its
    /// slot lies in it, its arena chunk's for a read into library pages
    /// (`None` then when the chunk's registration is out of date: see
    /// [`Core::register_chunk`]), else plain.
    pub(super) fn buf_of(chunks: &[u64], fixed: Option<(usize, usize)>, op: &IoOp) -> Option<Buf> {
        if let Some(c) = op.lib_chunk {
            return match chunks.get(c as usize) {
                Some(&r) if r == REFUSED => Some(Buf::Plain),
                Some(&r) if r == lib_pages::generation(c) as u64 + 1 => {
                    Some(Buf::Fixed(chunk_buf(c)))
                }
                Some(_) => None,
                None => Some(Buf::Plain),
            };
        }
        let b = op.buf() as usize;
        Some(match fixed {
            Some((lo, hi)) if b >= lo && b + op.len as usize <= hi => Buf::Fixed(0),
            _ => Buf::Plain,
        })
    }

    /// Registers arena chunk `c` (again: a detach replaced pages in it).
    /// Only with an empty submission queue: every op queued before was
    /// started with the registration it was checked against (the kernel
    /// resolves a fixed buffer when it first issues the op, inside the
    /// `io_uring_enter` that submits it). A refusal, or a queue that will
    /// not drain, marks the chunk [`REFUSED`]: its ops then run as plain
    /// reads ([`crate::engine::OpSink::demote`]) and `push_backlog` tells the arena.
    pub(super) fn register_chunk(&mut self, c: u16) {
        let _ = self.ring.submit();
        // Read before registering: pages detached after this are seen as a
        // newer generation and registered again.
        let g = lib_pages::generation(c);
        let (start, len) = lib_pages::chunk_range(c);
        let iov = libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: len,
        };
        let registered = self.ring.submission().is_empty()
            // SAFETY: the chunk is arena memory, mapped for the life of the
            // process; the kernel pins the pages mapped there now and keeps
            // them while an op or this table refers to them.
            && unsafe {
                self.ring
                    .submitter()
                    .register_buffers_update(chunk_buf(c) as u32, &[iov], None)
            }
            .is_ok();
        self.chunks[c as usize] = if registered { g as u64 + 1 } else { REFUSED };
    }
}
