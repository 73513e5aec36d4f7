//! Userspace `struct page`: a 4096-byte, 4096-aligned block of memory.
//!
//! The C pointer to a page *is* its address, so `dm_io_page_address` is
//! free. Every live page is remembered so that the library can reject a
//! pointer that is not one of its pages (in `dm_io_page_free` and in page
//! lists / bio_vecs given to `dm_io`) instead of reading through it.
//!
//! Pages come from an arena: chunks of [`CHUNK_PAGES`] pages carved out of
//! one reserved range of address space, so a page's chunk is found from
//! its address alone. The io_uring engine registers chunks with its rings
//! (fixed buffers), and reads into whole library pages then run in the
//! caller's page itself ([`super::lib_pages`]: which reads, the chunks'
//! generations, and the detach of a cancelled read's pages). Pages beyond
//! the arena (more than [`MAX_CHUNKS`] chunks in use) are plain
//! allocations and use private memory like any caller memory.

use super::PAGE_SIZE;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Pages per arena chunk (one registered buffer per chunk and ring).
pub(crate) const CHUNK_PAGES: usize = 64;
/// Bytes per arena chunk.
pub(crate) const CHUNK_BYTES: usize = CHUNK_PAGES * PAGE_SIZE;
/// Chunks in the arena (256 MiB of pages); its address range is reserved
/// once, without memory, and chunks are mapped as pages are needed.
pub(crate) const MAX_CHUNKS: usize = 1024;

/// Start of the reserved range (0 until the first page is allocated).
pub(super) static BASE: AtomicUsize = AtomicUsize::new(0);
/// Chunks mapped so far (they are never unmapped).
pub(super) static CHUNKS: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Arena {
    live: HashSet<usize>,
    /// Arena pages not in use.
    free: Vec<usize>,
    /// The reservation failed: every page is a plain allocation.
    no_arena: bool,
}

static LIVE: Mutex<Option<Arena>> = Mutex::new(None);

fn layout() -> Layout {
    // PAGE_SIZE is a non-zero power of two, so this cannot fail.
    Layout::from_size_align(PAGE_SIZE, PAGE_SIZE).expect("page layout")
}

/// The arena chunk holding `addr`, if it is one.
pub(super) fn chunk_of(addr: usize) -> Option<usize> {
    let base = BASE.load(Ordering::Acquire);
    if base == 0 || addr < base {
        return None;
    }
    let c = (addr - base) / CHUNK_BYTES;
    (c < CHUNKS.load(Ordering::Acquire)).then_some(c)
}

/// Whether `addr` lies in a mapped arena chunk (no lock; says nothing of
/// liveness).
pub fn in_arena(addr: usize) -> bool {
    chunk_of(addr).is_some()
}

/// The set of live pages, locked; used to validate many pages under one lock.
pub struct LivePages(MutexGuard<'static, Option<Arena>>);

impl LivePages {
    pub fn lock() -> Self {
        LivePages(LIVE.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn contains(&self, addr: usize) -> bool {
        self.0.as_ref().is_some_and(|a| a.live.contains(&addr))
    }

    /// The chunk of `[addr, addr + len)` when those bytes are whole live
    /// arena pages, all in one chunk that no ring has refused to register.
    pub fn arena_span(&self, addr: usize, len: usize) -> Option<u16> {
        if len == 0 || addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return None;
        }
        let c = chunk_of(addr)?;
        if chunk_of(addr + len - 1) != Some(c) || super::lib_pages::refused(c) {
            return None;
        }
        (addr..addr + len)
            .step_by(PAGE_SIZE)
            .all(|p| self.contains(p))
            .then_some(c as u16)
    }

    /// A page from the arena (mapping a new chunk when none is free).
    fn arena_page(&mut self) -> Option<usize> {
        let a = self.0.get_or_insert_with(Arena::default);
        if let Some(p) = a.free.pop() {
            return Some(p);
        }
        if a.no_arena {
            return None;
        }
        let mut base = BASE.load(Ordering::Acquire);
        if base == 0 {
            // SAFETY: a new private reservation at an address of the
            // kernel's choice, no access, no memory; result checked.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    MAX_CHUNKS * CHUNK_BYTES,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                a.no_arena = true;
                return None;
            }
            base = p as usize;
            BASE.store(base, Ordering::Release);
        }
        let c = CHUNKS.load(Ordering::Acquire);
        if c == MAX_CHUNKS {
            return None;
        }
        let start = base + c * CHUNK_BYTES;
        // SAFETY: chunk `c` of our own reservation, which nothing uses yet
        // (chunks are mapped once, in order, under the arena lock).
        if !unsafe { map_fresh(start, CHUNK_BYTES) } {
            return None;
        }
        CHUNKS.store(c + 1, Ordering::Release);
        a.free
            .extend((1..CHUNK_PAGES).rev().map(|k| start + k * PAGE_SIZE));
        Some(start)
    }
}

/// Maps fresh zeroed, readable and writable private memory at exactly
/// `[addr, addr + len)`, replacing what was there; `false` if the kernel
/// refused.
///
/// # Safety
/// The range must be page-aligned and inside the arena's reservation, and
/// nothing may rely on the memory it replaces.
pub(super) unsafe fn map_fresh(addr: usize, len: usize) -> bool {
    // SAFETY: MAP_FIXED over a range the caller vouches for; result checked.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    p != libc::MAP_FAILED
}

/// Allocates one zeroed page; `None` when out of memory.
pub fn alloc() -> Option<usize> {
    let mut live = LivePages::lock();
    let p = match live.arena_page() {
        Some(p) => {
            // SAFETY: `p` is a mapped arena page that no one owns (it was
            // free); it is zeroed before it is handed out.
            unsafe { std::ptr::write_bytes(p as *mut u8, 0, PAGE_SIZE) };
            p
        }
        None => {
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { alloc_zeroed(layout()) };
            if p.is_null() {
                return None;
            }
            p as usize
        }
    };
    live.0.get_or_insert_with(Arena::default).live.insert(p);
    Some(p)
}

/// Frees a page from [`alloc`]; returns `false` (and frees nothing) for any
/// other address, including a page already freed.
pub fn free(addr: usize) -> bool {
    let mut live = LivePages::lock();
    let Some(a) = live.0.as_mut() else {
        return false;
    };
    if !a.live.remove(&addr) {
        return false;
    }
    if chunk_of(addr).is_some() {
        // Arena pages stay mapped (rings may hold them registered).
        a.free.push(addr);
        return true;
    }
    drop(live);
    // SAFETY: `addr` was returned by `alloc_zeroed(layout())` in `alloc`
    // (it is not in the arena) and was still in the live set, so it has
    // not been freed yet; it is now out of the set, so it cannot be freed
    // twice.
    unsafe { dealloc(addr as *mut u8, layout()) };
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn alloc_free_once() {
        let p = super::alloc().unwrap();
        assert_eq!(p % super::PAGE_SIZE, 0);
        assert!(super::LivePages::lock().contains(p));
        assert!(super::free(p));
        assert!(!super::free(p), "double free is refused");
        assert!(!super::free(12345));
    }
}
