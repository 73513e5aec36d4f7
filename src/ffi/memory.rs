//! Walks a C `dm_io_memory` descriptor into validated segments.

use super::types::{bio_vec, dm_io_mem_type, dm_io_memory, dm_io_page_list};
use crate::error::Result;
use crate::memory::caller::{CallerMemory, CallerPtr, Segment};
use crate::memory::pages::LivePages;
use crate::memory::PAGE_SIZE;
use crate::small::Small;

/// Resolves `need` bytes of `mem` (after `mem.offset`).
///
/// # Safety
/// The pointers in `mem` must be what the C caller lent for this request:
/// a readable bio_vec array / page list, and for `DM_IO_VM` at least
/// `offset + need` bytes at `vma`.
// Inlined into `dm_io` for `DM_IO_VM` (a few checks); page lists and
// bio_vec arrays are walked out of line, in `resolve_pages`.
#[inline(always)]
pub unsafe fn resolve(mem: &dm_io_memory, need: u64) -> Result<CallerMemory> {
    if need == 0 {
        return Ok(CallerMemory::default());
    }
    let need = usize::try_from(need).map_err(|_| crate::einval!("request too large"))?;
    let offset = mem.offset as usize;
    let t = mem.r#type;
    if t == dm_io_mem_type::DM_IO_VM as i32 {
        // SAFETY: reading the union member the type names.
        let vma = unsafe { mem.ptr.vma } as usize;
        if vma == 0 {
            return Err(crate::einval!("memory.ptr.vma is NULL"));
        }
        let start = vma
            .checked_add(offset)
            .filter(|s| s.checked_add(need).is_some())
            .ok_or_else(|| crate::einval!("memory.ptr.vma + offset + length overflows"))?;
        let addr = CallerPtr::from_addr(start)
            .ok_or_else(|| crate::einval!("memory.ptr.vma + offset is NULL"))?;
        return Ok(CallerMemory::contiguous(Segment { addr, len: need }));
    }
    // SAFETY: the caller's promise, passed on.
    unsafe { resolve_pages(mem, need, offset, t) }
}

/// [`resolve`] of a page list or a bio_vec array (`t`), `need` bytes
/// (not 0) after `offset`.
///
/// # Safety
/// As for [`resolve`].
#[inline(never)]
unsafe fn resolve_pages(
    mem: &dm_io_memory,
    need: usize,
    offset: usize,
    t: i32,
) -> Result<CallerMemory> {
    let live = LivePages::lock();
    let mut w = Walk {
        skip: offset,
        have: 0,
        need,
        segs: Small::default(),
    };
    if t == dm_io_mem_type::DM_IO_BVEC as i32 {
        // SAFETY: reading the union member the type names.
        let mut bv = unsafe { mem.ptr.bv };
        if bv.is_null() || !bv.is_aligned() {
            return Err(crate::einval!("memory.ptr.bv is NULL or misaligned"));
        }
        let mut i = 0usize;
        while w.have < w.need {
            // SAFETY: the caller lent an array of bio_vecs that lasts at
            // least until an entry with a NULL page or the needed length.
            let v: bio_vec = unsafe { bv.read() };
            if v.bv_page.is_null() || v.bv_len == 0 {
                return Err(crate::einval!(
                    "bio_vec array ends at entry {i} with {} of {need} bytes",
                    w.have
                ));
            }
            let page = v.bv_page as usize;
            if !live.contains(page) {
                return Err(crate::einval!(
                    "bio_vec {i}: bv_page is not from dm_io_page_alloc"
                ));
            }
            let (o, l) = (v.bv_offset as usize, v.bv_len as usize);
            if o.checked_add(l).is_none_or(|e| e > PAGE_SIZE) {
                return Err(crate::einval!(
                    "bio_vec {i}: offset {o} + len {l} exceeds the page"
                ));
            }
            w.add(page + o, l);
            // SAFETY: stays within the caller's array (see above).
            bv = unsafe { bv.add(1) };
            i += 1;
        }
    } else if t == dm_io_mem_type::DM_IO_PAGE_LIST as i32 {
        // SAFETY: reading the union member the type names.
        let mut pl = unsafe { mem.ptr.pl };
        let mut i = 0usize;
        while w.have < w.need {
            if pl.is_null() || !pl.is_aligned() {
                return Err(crate::einval!(
                    "page list ends at entry {i} with {} of {need} bytes",
                    w.have
                ));
            }
            // SAFETY: non-null, aligned node of the caller's list.
            let node: dm_io_page_list = unsafe { pl.read() };
            let page = node.page as usize;
            if !live.contains(page) {
                return Err(crate::einval!(
                    "page list entry {i}: page is not from dm_io_page_alloc"
                ));
            }
            w.add(page, PAGE_SIZE);
            pl = node.next;
            i += 1;
        }
    } else {
        return Err(crate::einval!("unknown memory.type {t}"));
    }
    Ok(CallerMemory::from_segments(w.segs))
}

/// Collects `need` bytes of segments after skipping `skip` bytes, joining
/// ranges that are adjacent in memory.
struct Walk {
    skip: usize,
    have: usize,
    need: usize,
    /// One segment (the usual case: contiguous pages) stays inline.
    segs: Small<Segment>,
}

impl Walk {
    fn add(&mut self, addr: usize, len: usize) {
        if self.skip >= len {
            self.skip -= len;
            return;
        }
        let n = (len - self.skip).min(self.need - self.have);
        let start = addr + self.skip;
        // Pages that follow each other in memory make one segment (so a
        // piece over them can run in place: zero-copy, library pages).
        match self.segs.last_mut() {
            Some(last) if last.addr.addr() + last.len == start => last.len += n,
            _ => self.segs.push(Segment {
                // A live page's address plus an offset: never 0.
                addr: CallerPtr::from_addr(start).expect("a page address"),
                len: n,
            }),
        }
        self.have += n;
        self.skip = 0;
    }
}
