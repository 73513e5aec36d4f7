//! The caller's memory of one request, as validated segments.
//!
//! The FFI layer walks the C descriptor (`DM_IO_VM`, `DM_IO_BVEC`,
//! `DM_IO_PAGE_LIST`) once, at submission, into a [`CallerMemory`]: the byte
//! ranges that make up the logical buffer, `offset` already skipped. The
//! library copies between these ranges and private memory only while the
//! region that needs them is not final, under the request's lock, so after
//! `DM_IO_CANCELLED` the caller's memory is never touched again.

use crate::small::Small;
use std::ptr::NonNull;

/// An address in memory the C caller lent for a request: its data buffer,
/// which the library copies to and from (here) and the kernel reads or
/// writes for zero-copy and library-page IO (the engines, through
/// `IoOp::direct`). A plain address, never dereferenced on its own: every
/// access goes through an `unsafe` block that says why the memory is still
/// lent (its region is not final).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallerPtr(NonNull<u8>);

// SAFETY: a `CallerPtr` is an address the caller lent for the life of a
// request, not an owner of the memory: `dm_io`'s contract lets the library
// use it from any of its threads until the region's final notification,
// and every read or write through it is an `unsafe` block of its own that
// checks that condition (copies under the request's lock while the region
// is live; kernel IO owned by a region that cannot be final before it).
unsafe impl Send for CallerPtr {}
// SAFETY: as for `Send`: shared access only copies the address.
unsafe impl Sync for CallerPtr {}

impl CallerPtr {
    /// The caller's address `p` (`None` for NULL).
    pub fn new(p: *mut u8) -> Option<CallerPtr> {
        NonNull::new(p).map(CallerPtr)
    }

    /// The caller's address `addr` (`None` for 0).
    pub fn from_addr(addr: usize) -> Option<CallerPtr> {
        CallerPtr::new(addr as *mut u8)
    }

    /// The address as a number (alignment, arena look-ups).
    #[inline]
    pub fn addr(self) -> usize {
        self.0.as_ptr() as usize
    }

    /// The address as a pointer, for an access whose `unsafe` block says
    /// why the memory is still lent.
    #[inline]
    pub fn as_ptr(self) -> *mut u8 {
        self.0.as_ptr()
    }

    /// `off` bytes further (`None` only if that wrapped to 0, which a range
    /// checked at submission never does).
    #[inline]
    fn byte_add(self, off: usize) -> Option<CallerPtr> {
        CallerPtr::new(self.0.as_ptr().wrapping_add(off))
    }
}

/// One contiguous piece of caller memory.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub addr: CallerPtr,
    pub len: usize,
}

/// The logical buffer of a request: `len()` bytes spread over segments.
/// `DM_IO_VM` memory is one inline segment (no allocation).
#[derive(Debug, Default)]
pub struct CallerMemory {
    segs: Small<Segment>,
    total: usize,
}

impl CallerMemory {
    /// Builds the buffer from segments. The caller (the FFI layer) promises
    /// that every segment is memory the C caller lent us for this request.
    /// One segment costs no allocation.
    pub fn from_segments(segs: impl Into<Small<Segment>>) -> Self {
        let segs = segs.into();
        let total = segs.iter().map(|s| s.len).sum();
        CallerMemory { segs, total }
    }

    /// One contiguous range (no allocation).
    pub fn contiguous(seg: Segment) -> Self {
        CallerMemory {
            segs: Small::One(seg),
            total: seg.len,
        }
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Visits the pieces of caller memory covering `[off, off + len)`,
    /// calling `f(segment_address, position_in_range, piece_len)`.
    fn walk(&self, mut off: usize, len: usize, mut f: impl FnMut(*mut u8, usize, usize)) {
        assert!(off + len <= self.total, "copy beyond the caller's memory");
        let mut done = 0;
        for s in self.segs.iter() {
            if done == len {
                break;
            }
            if off >= s.len {
                off -= s.len;
                continue;
            }
            let n = (s.len - off).min(len - done);
            f(s.addr.as_ptr().wrapping_add(off), done, n);
            done += n;
            off = 0;
        }
    }

    /// The address of the first byte (`None` when empty).
    pub fn first_addr(&self) -> Option<usize> {
        self.segs.iter().next().map(|s| s.addr.addr())
    }

    /// Calls `f(address, length)` for each contiguous piece of logical
    /// bytes `[off, off + len)`.
    pub fn spans(&self, off: usize, len: usize, mut f: impl FnMut(usize, usize)) {
        self.walk(off, len, |addr, _, n| f(addr as usize, n));
    }

    /// The address of logical bytes `[off, off + len)` when they lie in one
    /// segment (zero-copy IO needs one contiguous buffer per op).
    pub fn span_addr(&self, off: usize, len: usize) -> Option<CallerPtr> {
        let mut start = 0;
        for s in self.segs.iter() {
            if off < start + s.len {
                return (off + len <= start + s.len)
                    .then(|| s.addr.byte_add(off - start))
                    .flatten();
            }
            start += s.len;
        }
        None
    }

    /// Copies `dst.len()` bytes starting at logical offset `off` out of the
    /// caller's memory.
    ///
    /// # Safety
    /// The caller's memory must still be valid (the request's region that
    /// needs it is not final).
    pub unsafe fn copy_out(&self, off: usize, dst: &mut [u8]) {
        // One segment (most requests): no walk.
        if let Small::One(s) = &self.segs {
            if off.checked_add(dst.len()).is_some_and(|e| e <= s.len) {
                // SAFETY: as below, for the one segment, which holds
                // `off..off + dst.len()`.
                unsafe {
                    super::copy::copy(
                        dst.as_mut_ptr(),
                        s.addr.as_ptr().wrapping_add(off),
                        dst.len(),
                    )
                };
                return;
            }
        }
        self.walk(off, dst.len(), |addr, pos, n| {
            // SAFETY: `addr..addr+n` lies in a segment the C caller lent us
            // and keeps valid until the region is final (function contract);
            // `pos..pos+n` lies within `dst`; the two cannot overlap because
            // `dst` is library-private memory.
            unsafe { super::copy::copy(dst.as_mut_ptr().add(pos), addr, n) }
        });
    }

    /// Copies `src` into the caller's memory at logical offset `off`.
    ///
    /// # Safety
    /// As for [`CallerMemory::copy_out`].
    pub unsafe fn copy_in(&self, off: usize, src: &[u8]) {
        // One segment (most requests): no walk.
        if let Small::One(s) = &self.segs {
            if off.checked_add(src.len()).is_some_and(|e| e <= s.len) {
                // SAFETY: as below, for the one segment, which holds
                // `off..off + src.len()`.
                unsafe {
                    super::copy::copy(s.addr.as_ptr().wrapping_add(off), src.as_ptr(), src.len())
                };
                return;
            }
        }
        self.walk(off, src.len(), |addr, pos, n| {
            // SAFETY: as in `copy_out`, with the direction reversed.
            unsafe { super::copy::copy(addr, src.as_ptr().add(pos), n) }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_across_segments() {
        let mut a = [0u8; 5];
        let mut b = [0u8; 7];
        let m = CallerMemory::from_segments(vec![
            Segment {
                addr: CallerPtr::new(a.as_mut_ptr()).unwrap(),
                len: a.len(),
            },
            Segment {
                addr: CallerPtr::new(b.as_mut_ptr()).unwrap(),
                len: b.len(),
            },
        ]);
        assert_eq!(m.len(), 12);
        let src: Vec<u8> = (1..=8).collect();
        // SAFETY: a and b are alive for the whole test.
        unsafe { m.copy_in(3, &src) };
        assert_eq!(a, [0, 0, 0, 1, 2]);
        assert_eq!(b, [3, 4, 5, 6, 7, 8, 0]);
        let mut out = [0u8; 4];
        // SAFETY: as above.
        unsafe { m.copy_out(4, &mut out) };
        assert_eq!(out, [2, 3, 4, 5]);
        // Contiguous ranges: inside one segment only.
        assert_eq!(
            m.span_addr(0, 5).map(CallerPtr::addr),
            Some(a.as_ptr() as usize)
        );
        assert_eq!(
            m.span_addr(6, 4).map(CallerPtr::addr),
            Some(b.as_ptr() as usize + 1)
        );
        assert_eq!(m.span_addr(3, 4), None);
        assert_eq!(m.span_addr(10, 3), None);
    }
}
