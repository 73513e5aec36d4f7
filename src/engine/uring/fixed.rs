//! Fixed buffers: the private memory of the clients a ring serves (buffer
//! 0, then [`POOL_BASE`]..) and the arena chunks of library pages (buffer
//! 1 + c) registered with a ring, and which buffer an op runs in. The
//! library-page side (generations, refusals, detach) is
//! [`crate::memory::lib_pages`].
//!
//! A ring shared by many clients registers each client's pool in a buffer
//! of its own, taken from a free list when the client attaches and given
//! back (the entry emptied) at its destroy. When the table is full, or the
//! kernel refuses (`RLIMIT_MEMLOCK`), that client's IO runs as plain reads
//! and writes: slower, same results.

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

/// Buffers for clients' private memory beyond buffer 0: the sparse table
/// has `POOL_BASE + POOLS` entries.
pub(super) const POOLS: u32 = 1023;
/// First pool buffer after the chunks' (buffer 0 is a pool's too).
pub(super) const POOL_BASE: u32 = 1 + crate::memory::pages::MAX_CHUNKS as u32;

/// The size of a ring's sparse buffer table.
pub(super) const TABLE: u32 = POOL_BASE + POOLS;

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

/// The free pool buffers of a ring with a sparse table, taken from the end.
pub(super) fn pool_indexes() -> Vec<u16> {
    (POOL_BASE..TABLE)
        .rev()
        .chain([0])
        .map(|i| i as u16)
        .collect()
}

impl Core {
    /// Registers a client's private memory (see [`REGISTER_MAX`]) in a
    /// free buffer of its own; on any refusal, or with the table full, its
    /// ops keep using plain reads and writes.
    pub(in crate::engine) fn register(&mut self, (start, len): (usize, usize)) {
        if len == 0 || len > REGISTER_MAX || self.fixed.iter().any(|f| f.0 == start) {
            return;
        }
        let iov = libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: len,
        };
        let sparse = !self.chunks.is_empty();
        let idx = if sparse {
            match self.pool_free.pop() {
                Some(i) => i,
                None => return,
            }
        } else if self.fixed.is_empty() {
            0
        } else {
            // No sparse table (before 5.19): one pool per ring.
            return;
        };
        let sub = self.ring.submitter();
        // SAFETY: the region is the pool's mapping, which stays mapped while
        // any op can name it (ops hold the pool through their slots); once it
        // is unmapped no op refers to it (its entry here is removed by
        // `unregister` first), and the pages the kernel pinned stay its own
        // until the entry is emptied or the ring is dropped.
        let done = unsafe {
            if sparse {
                sub.register_buffers_update(idx as u32, &[iov], None)
            } else {
                sub.register_buffers(&[iov])
            }
        };
        if done.is_ok() {
            let at = self.fixed.partition_point(|f| f.0 < start);
            self.fixed.insert(at, (start, start + len, idx));
            self.last_fixed = None;
        } else if sparse {
            self.pool_free.push(idx);
        }
    }

    /// A client is gone: its private memory leaves the table, so that no
    /// later op names it (the pool may be unmapped, and its addresses used
    /// by another client's pool). Ops already issued keep the pages they
    /// resolved (the kernel holds them until they complete); the entry is
    /// emptied only with an empty submission queue, so no queued entry
    /// names it. If that or the kernel fails, the buffer is not reused.
    pub(in crate::engine) fn unregister(&mut self, (start, _len): (usize, usize)) {
        let Some(at) = self.fixed.iter().position(|f| f.0 == start) else {
            return;
        };
        let (_, _, idx) = self.fixed.remove(at);
        self.last_fixed = None;
        let _ = self.ring.submit();
        if !self.ring.submission().is_empty() {
            return;
        }
        let sub = self.ring.submitter();
        if self.chunks.is_empty() {
            let _ = sub.unregister_buffers();
            return;
        }
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: an empty entry carries no memory; ops issued earlier hold
        // their own reference to the old pages.
        if unsafe { sub.register_buffers_update(idx as u32, &[empty], None) }.is_ok() {
            self.pool_free.push(idx);
        }
    }

    /// The buffer `op` runs in on this ring: its client's private memory's
    /// when its slot lies in a registered pool, its arena chunk's for a
    /// read into library pages (`None` then when the chunk's registration
    /// is out of date: see [`Core::register_chunk`]), else plain.
    #[inline]
    pub(super) fn buf_of(chunks: &[u64], fixed: &[(usize, usize, u16)], op: &IoOp) -> Option<Buf> {
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
        let at = fixed.partition_point(|f| f.0 <= b);
        Some(match at.checked_sub(1).map(|i| fixed[i]) {
            Some((lo, hi, n)) if b >= lo && b + op.len as usize <= hi => Buf::Fixed(n),
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
