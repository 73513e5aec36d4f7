//! Userspace `struct page`: a 4096-byte, 4096-aligned block of memory.
//!
//! The C pointer to a page *is* its address, so `dm_io_page_address` is
//! free. Every live page is remembered so that the library can reject a
//! pointer that is not one of its pages (in `dm_io_page_free` and in page
//! lists / bio_vecs given to `dm_io`) instead of reading through it: an
//! arena page by one bit of its chunk's atomic bitmap (a chunk is 64 pages,
//! one `AtomicU64`), so checking the pages of a read takes no lock; a page
//! beyond the arena in a locked set.
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Live pages beyond the arena (plain allocations).
    plain: HashSet<usize>,
    /// Arena pages not in use.
    free: Vec<usize>,
    /// The reservation failed: every page is a plain allocation.
    no_arena: bool,
}

static LIVE: Mutex<Option<Arena>> = Mutex::new(None);

// One chunk's pages are one word's bits.
const _: () = assert!(CHUNK_PAGES == 64);

/// Per arena chunk, bit k set: page k of the chunk is live (allocated and
/// not freed). Set and cleared with atomic read-modify-writes, so a page
/// is freed at most once even by racing calls.
static LIVE_BITS: [AtomicU64; MAX_CHUNKS] = [const { AtomicU64::new(0) }; MAX_CHUNKS];

/// The chunk and bit of an arena page address (page-aligned), if it is one.
fn bit_of(addr: usize) -> Option<(usize, u64)> {
    if addr % PAGE_SIZE != 0 {
        return None;
    }
    let c = chunk_of(addr)?;
    let base = BASE.load(Ordering::Acquire);
    let k = (addr - base - c * CHUNK_BYTES) / PAGE_SIZE;
    Some((c, 1u64 << k))
}

fn lock_arena() -> MutexGuard<'static, Option<Arena>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// Looks up live pages. Arena pages need no lock; a page beyond the arena
/// is looked up in the locked set of plain allocations.
pub struct LivePages(());

impl LivePages {
    /// A lookup handle (no lock is taken here).
    pub fn lock() -> Self {
        LivePages(())
    }

    pub fn contains(&self, addr: usize) -> bool {
        match bit_of(addr) {
            Some((c, bit)) => LIVE_BITS[c].load(Ordering::Acquire) & bit != 0,
            None if chunk_of(addr).is_some() => false,
            None => lock_arena()
                .as_ref()
                .is_some_and(|a| a.plain.contains(&addr)),
        }
    }

    /// The chunk of `[addr, addr + len)` when those bytes are whole live
    /// arena pages, all in one chunk that no ring has refused to register:
    /// one load of the chunk's bitmap.
    pub fn arena_span(&self, addr: usize, len: usize) -> Option<u16> {
        if len == 0 || addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return None;
        }
        let (c, first) = bit_of(addr)?;
        if chunk_of(addr + len - 1) != Some(c) || super::lib_pages::refused(c) {
            return None;
        }
        let n = len / PAGE_SIZE;
        // `first` is 1 << k with k + n <= 64 (the span is in one chunk).
        let mask = if n == CHUNK_PAGES {
            u64::MAX
        } else {
            ((1u64 << n) - 1) * first
        };
        (LIVE_BITS[c].load(Ordering::Acquire) & mask == mask).then_some(c as u16)
    }
}

impl Arena {
    /// A page from the arena (mapping a new chunk when none is free).
    fn arena_page(&mut self) -> Option<usize> {
        let a = self;
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
    let mut guard = lock_arena();
    let a = guard.get_or_insert_with(Arena::default);
    match a.arena_page() {
        Some(p) => {
            drop(guard);
            // SAFETY: `p` is a mapped arena page that no one owns (it was
            // free, and its live bit is clear); it is zeroed before it is
            // handed out.
            unsafe { std::ptr::write_bytes(p as *mut u8, 0, PAGE_SIZE) };
            let (c, bit) = bit_of(p).expect("an arena page");
            LIVE_BITS[c].fetch_or(bit, Ordering::Release);
            Some(p)
        }
        None => {
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { alloc_zeroed(layout()) };
            if p.is_null() {
                return None;
            }
            a.plain.insert(p as usize);
            Some(p as usize)
        }
    }
}

/// Frees a page from [`alloc`]; returns `false` (and frees nothing) for any
/// other address, including a page already freed.
pub fn free(addr: usize) -> bool {
    if chunk_of(addr).is_some() {
        let Some((c, bit)) = bit_of(addr) else {
            return false;
        };
        // Only the call that clears the bit frees the page.
        if LIVE_BITS[c].fetch_and(!bit, Ordering::AcqRel) & bit == 0 {
            return false;
        }
        // Arena pages stay mapped (rings may hold them registered).
        lock_arena()
            .get_or_insert_with(Arena::default)
            .free
            .push(addr);
        return true;
    }
    let mut guard = lock_arena();
    let Some(a) = guard.as_mut() else {
        return false;
    };
    if !a.plain.remove(&addr) {
        return false;
    }
    drop(guard);
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

    #[test]
    fn spans_follow_the_live_bits() {
        use super::{LivePages, CHUNK_BYTES, PAGE_SIZE};
        let pages: Vec<usize> = (0..200).map(|_| super::alloc().unwrap()).collect();
        let live = LivePages::lock();
        // Four pages in a row within one chunk, if the arena gave us some.
        let run = pages.windows(4).find(|w| {
            w[3] == w[0] + 3 * PAGE_SIZE
                && w[0] / CHUNK_BYTES == w[3] / CHUNK_BYTES
                && live.arena_span(w[0], PAGE_SIZE).is_some()
        });
        if let Some(w) = run {
            assert!(live.arena_span(w[0], 4 * PAGE_SIZE).is_some());
            assert!(super::free(w[2]));
            assert!(
                live.arena_span(w[0], 4 * PAGE_SIZE).is_none(),
                "a freed page breaks the span"
            );
            assert!(live.arena_span(w[0], 2 * PAGE_SIZE).is_some());
            assert!(!live.contains(w[2]) && live.contains(w[1]));
            assert!(!live.contains(w[1] + 8), "not page-aligned");
        }
        // Racing frees of one page: exactly one succeeds.
        let p = pages[0];
        let wins: usize = std::thread::scope(|s| {
            let h: Vec<_> = (0..4)
                .map(|_| s.spawn(move || super::free(p) as usize))
                .collect();
            h.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
        for &q in &pages[1..] {
            if live.contains(q) {
                assert!(super::free(q));
            }
        }
    }
}
