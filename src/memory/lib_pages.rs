//! Reads into library pages: a read whose memory is whole pages from
//! `dm_io_page_alloc` runs in those pages, with no private memory and no
//! copy, and a cancel abandons it at once by detaching the pages.
//!
//! The whole behaviour, step by step (docs/design.md, "Library pages and
//! the arena"):
//!
//! - **Which reads** ([`eligible`], asked by `Client::in_library_pages`
//!   for single-region reads that are not hedged or zero-copy, on the
//!   io_uring engine, or the AIO engine on an O_DIRECT device): each `max_size` piece is whole live arena pages of
//!   one chunk no ring refused ([`super::pages::LivePages::arena_span`]),
//!   and the reads stuck in detached pages are within the private-memory
//!   bound. The request's `Mode::lib_pages` says so; each op names its
//!   chunk (`IoOp::lib_chunk`, from [`chunk_index`]).
//! - **The read in place** (the ring: `engine/uring/fixed.rs`): a
//!   `READ_FIXED` from the chunk's fixed buffer, registered again
//!   (`Core::register_chunk`) when the chunk's [`generation`] is newer
//!   than the ring's registration; a chunk the kernel will not register
//!   is [`refuse`]d, and a read already headed there runs as a plain read
//!   (`OpSink::demote`) or not at all. AIO has no fixed buffers: its
//!   `io_submit` pins the pages at the read's address before it returns,
//!   and a [`detach`] waits for an `io_submit` under way in the chunk
//!   ([`Submitting`]), so the kernel pins the old pages or the engine sees
//!   the detached mark.
//! - **Detach on cancel** (`Request::detach`, then [`detach_memory`] and
//!   [`detach`]): the request is marked detached, fresh zeroed pages are
//!   mapped over the caller's addresses and the chunks' generations
//!   bumped; the kernel finishes into the old pages, which it holds
//!   through the registration, and the region ends CANCELLED at once.
//!   Engines drop an op of a detached request that has not started
//!   (`OpSink::detached`). Each op still running counts as a whole chunk
//!   against the client's private-memory bound
//!   (`RequestOwner::detached_ops`).

use super::caller::CallerMemory;
use super::pages::{chunk_of, map_fresh, LivePages, BASE, CHUNKS, CHUNK_BYTES, MAX_CHUNKS};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Per chunk: bumped by every [`detach`] in it.
static GEN: [AtomicU32; MAX_CHUNKS] = [const { AtomicU32::new(0) }; MAX_CHUNKS];

/// Per chunk: a ring could not register it; its pages use private memory.
static REFUSED: [AtomicBool; MAX_CHUNKS] = [const { AtomicBool::new(false) }; MAX_CHUNKS];

/// Per chunk: reads into its pages being handed to the kernel at their
/// address ([`Submitting`]); a [`detach`] there waits for none to be.
static SUBMITTING: [AtomicU32; MAX_CHUNKS] = [const { AtomicU32::new(0) }; MAX_CHUNKS];

/// The longest a [`detach`] waits for the reads of [`Submitting`].
const SUBMIT_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// A read into library pages of one chunk being handed to the kernel by
/// address (the AIO engine's `io_submit`, which pins the pages mapped at
/// that address before it returns), from before the engine looks at the
/// request's detached mark until that system call returned. A [`detach`]
/// in the chunk maps fresh pages only when no such read is being handed
/// over: so either the engine sees the mark and drops the read, or the
/// kernel pins the old pages and finishes the read there, unseen.
/// (A detach waits for at most [`SUBMIT_WAIT`]; past it, it replaces
/// nothing and the region waits for its IO, as when the kernel refuses
/// the new mapping.)
pub struct Submitting(u16);

impl Submitting {
    /// Starts handing a read in chunk `c` to the kernel: look at the
    /// request's detached mark after this, drop the guard after the
    /// system call.
    pub fn start(c: u16) -> Submitting {
        SUBMITTING[c as usize].fetch_add(1, Ordering::SeqCst);
        Submitting(c)
    }
}

impl Drop for Submitting {
    fn drop(&mut self) {
        SUBMITTING[self.0 as usize].fetch_sub(1, Ordering::SeqCst);
    }
}

/// The arena chunk of `addr`, an address [`LivePages::arena_span`]
/// accepted.
pub fn chunk_index(addr: usize) -> u16 {
    chunk_of(addr).expect("an arena address") as u16
}

/// Chunk `c`'s address range (start, bytes) for registration.
pub fn chunk_range(c: u16) -> (usize, usize) {
    let c = c as usize;
    debug_assert!(c < CHUNKS.load(Ordering::Acquire));
    (BASE.load(Ordering::Acquire) + c * CHUNK_BYTES, CHUNK_BYTES)
}

/// Chunk `c`'s generation: a ring whose registration of `c` is older
/// registers it again before its next fixed IO there.
pub fn generation(c: u16) -> u32 {
    GEN[c as usize].load(Ordering::SeqCst)
}

/// A ring could not register chunk `c`: later requests with pages there
/// use private memory.
pub fn refuse(c: u16) {
    REFUSED[c as usize].store(true, Ordering::Relaxed);
}

/// Maps fresh zeroed pages over `[addr, addr + len)` (whole live arena
/// pages, see [`LivePages::arena_span`]), then bumps the generation of
/// every chunk it touches: IO still running into the old pages finishes
/// there, unseen. `false` if the kernel refused the mapping (the range may
/// then be partly replaced; the caller must wait for the IO instead).
pub fn detach(addr: usize, len: usize) -> bool {
    let (Some(first), Some(last)) = (chunk_of(addr), chunk_of(addr + len.max(1) - 1)) else {
        return false;
    };
    // The request is marked detached (SeqCst, before this): a read of it
    // being handed to the kernel by address now either saw the mark, or
    // is pinning the old pages; wait for that system call to return. An
    // `io_submit` that blocks (a file system reading its metadata from a
    // hung disk) is not waited for: nothing is replaced, and the region
    // waits for its IO instead.
    let until = std::time::Instant::now() + SUBMIT_WAIT;
    for n in &SUBMITTING[first..=last] {
        while n.load(Ordering::SeqCst) != 0 {
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::yield_now();
        }
    }
    // SAFETY: `[addr, addr + len)` is whole pages of mapped arena chunks
    // (checked at submission; chunks are never unmapped); replacing them
    // with fresh private pages only changes what the caller's addresses
    // show. The old pages stay alive while a ring holds them registered.
    if !unsafe { map_fresh(addr, len) } {
        return false;
    }
    // After the new mapping: a ring that sees the new generation registers
    // the new pages.
    for g in &GEN[first..=last] {
        g.fetch_add(1, Ordering::SeqCst);
    }
    true
}

/// Tests that detach pages and then look at a chunk's generation run one
/// at a time (another test's detach in the same chunk would bump it).
#[cfg(test)]
pub(crate) static DETACH_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether the `bytes` of a single-region read in `mem` can run in place:
/// every `piece` (`max_size` piece, one op) lands in whole live library
/// pages of one arena chunk, and the ops still running into detached pages
/// (`stuck_ops`) leave room under the private-memory `bound`. The client
/// asks first whether the request may use library pages at all.
pub fn eligible(mem: &CallerMemory, bytes: u64, piece: u64, stuck_ops: i64, bound: u64) -> bool {
    // The pages a cancel detached stay pinned until the kernel ends
    // their IO (with the rest of their chunk's old registration, in
    // the worst case): counted against the private-memory bound, so
    // reads stuck in the kernel hold bounded memory, as on private
    // memory (past the bound, reads take private memory and wait).
    let stuck = stuck_ops.max(0) as u64;
    if stuck.saturating_mul(CHUNK_BYTES as u64) >= bound {
        return false;
    }
    if bytes == 0 {
        return false;
    }
    let live = LivePages::lock();
    super::pieces(bytes, piece).all(|(off, len)| {
        mem.span_addr(off as usize, len as usize)
            .is_some_and(|a| live.arena_span(a.addr(), len as usize).is_some())
    })
}

/// Whether `mem` starts in the arena: the cheap first look of
/// [`eligible`] (no lock; most reads are not into library pages).
#[inline]
pub fn starts_in_arena(mem: &CallerMemory) -> bool {
    mem.first_addr().is_some_and(super::pages::in_arena)
}

/// Whether a ring refused to register chunk `c` ([`refuse`]).
pub(super) fn refused(c: usize) -> bool {
    REFUSED[c].load(Ordering::Relaxed)
}

/// [`detach`] over the caller's bytes `[0, len)` of `mem`, span by span;
/// `false` when the kernel refused a mapping.
pub fn detach_memory(mem: &CallerMemory, len: usize) -> bool {
    let mut ok = true;
    mem.spans(0, len, |addr, len| {
        ok &= detach(addr, len);
    });
    ok
}

#[cfg(test)]
mod tests {
    use super::super::pages::{alloc, free, CHUNK_PAGES};
    use super::super::PAGE_SIZE;
    use super::*;

    #[test]
    fn arena_pages_are_zeroed_spans_and_detach() {
        let _one = DETACH_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let p = alloc().unwrap();
        let c = LivePages::lock()
            .arena_span(p, PAGE_SIZE)
            .expect("arena page");
        let (start, len) = chunk_range(c);
        assert!(p >= start && p + PAGE_SIZE <= start + len);
        // Not whole pages, or not live: no span.
        assert_eq!(LivePages::lock().arena_span(p + 512, 512), None);
        assert_eq!(LivePages::lock().arena_span(p, 100), None);
        // SAFETY: `p` is a live page of ours.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0xab, PAGE_SIZE) };
        let g = generation(c);
        assert!(detach(p, PAGE_SIZE));
        assert_eq!(generation(c), g.wrapping_add(1));
        // SAFETY: as above; the page is still mapped (freshly).
        let v = unsafe { std::slice::from_raw_parts(p as *const u8, PAGE_SIZE) };
        assert!(v.iter().all(|&b| b == 0), "a detached page reads as zeros");
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0xcd, PAGE_SIZE) };
        assert!(free(p));
        assert_eq!(LivePages::lock().arena_span(p, PAGE_SIZE), None);
        // A page handed out again is zeroed.
        let mut again = Vec::new();
        loop {
            let q = alloc().unwrap();
            again.push(q);
            if q == p {
                break;
            }
            assert!(again.len() <= CHUNK_PAGES * 4, "freed page never came back");
        }
        // SAFETY: `p` is live again.
        let v = unsafe { std::slice::from_raw_parts(p as *const u8, PAGE_SIZE) };
        assert!(v.iter().all(|&b| b == 0));
        for q in again {
            assert!(free(q));
        }
    }

    #[test]
    fn a_detach_waits_while_a_read_in_its_chunk_is_being_submitted() {
        use std::sync::Arc;
        let _one = DETACH_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let p = alloc().unwrap();
        let c = chunk_index(p);
        // A submission under way for a few ms: the detach maps fresh
        // pages only after it returned (or, past its wait, not at all).
        let submitting = Submitting::start(c);
        let returned = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&returned);
        let t = std::thread::spawn(move || {
            let ok = detach(p, PAGE_SIZE);
            assert!(
                !ok || r.load(Ordering::SeqCst),
                "the detach mapped fresh pages while a read there was being submitted"
            );
        });
        std::thread::sleep(std::time::Duration::from_millis(2));
        returned.store(true, Ordering::SeqCst);
        drop(submitting);
        t.join().unwrap();
        // A submission that does not return: the detach gives up,
        // replacing nothing (the region then waits for its IO).
        let stuck = Submitting::start(c);
        // SAFETY: `p` is a live page of ours; no IO runs into it.
        unsafe { *(p as *mut u8) = 7 };
        assert!(!detach(p, PAGE_SIZE));
        // SAFETY: as above.
        assert_eq!(unsafe { *(p as *const u8) }, 7, "nothing was replaced");
        drop(stuck);
        // Another chunk's submission does not hold it up.
        let other = Submitting::start(c.wrapping_add(1) % MAX_CHUNKS as u16);
        assert!(detach(p, PAGE_SIZE));
        drop(other);
        assert!(free(p));
    }
}
