//! Opaque C handles that can be checked before use.
//!
//! Every object C holds by pointer (client, block device, request handle) is
//! stored in a [`Registry`]. The "pointer" C sees is a token: slot index and
//! generation packed into one machine word, never dereferenced. A stale,
//! double-freed or made-up pointer therefore fails the lookup with `None`
//! (the FFI layer turns that into `-EINVAL`) instead of touching freed memory.
//!
//! No lock on any path that runs per IO (issue 22). The slots live in
//! chunks that are never freed while the registry lives (chunk `k` holds
//! `BASE << k` slots, made on first use), so any index below the count of
//! slots handed out names memory that stays valid. Each slot has one
//! atomic state word: its generation, a live bit and a count of readers.
//! - A lookup takes a reader reference by compare-and-swap only while the
//!   generation matches and the slot is live, uses the value, and drops
//!   the reference. A made-up index beyond the slots handed out, or in a
//!   chunk not made, fails before touching a slot.
//! - A remove clears the live bit (one remover wins; later lookups fail),
//!   waits for the readers inside their short lookups to leave, takes the
//!   value out, bumps the generation and pushes the slot on a free stack.
//!   With no reader inside (the usual case) the live bit and the
//!   generation change in one compare-and-swap.
//! - [`Registry::release_held_keep`] reads a value with no atomic write
//!   (and removes it if asked), for a caller whose own reference keeps the
//!   object from being removed; it keeps the freed slot (next generation,
//!   not live) for its caller's next [`Registry::insert_kept`] instead of
//!   pushing it on the free stack, so that an object removed and inserted
//!   again per use (a request's handle) skips the free stack's pop and
//!   push.
//! - An insert pops a free slot (or takes a fresh index), writes the value
//!   and only then publishes the live bit with the slot's generation.
//!
//! The free stack is a [`crate::tagged_stack::TaggedStack`] of indices
//! (its head carries a tag bumped on every change: no ABA). Taking a fresh
//! index (the table grows: no slot is free) is the one place with a lock.

use crate::tagged_stack::TaggedStack;
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("libdmio packs handle tokens into 64-bit pointers");

/// Slots in chunk 0; chunk `k` has `BASE << k`.
const BASE: usize = 64;
/// Chunks: up to `BASE × (2^CHUNKS − 1)` (about 268 million) live objects.
const CHUNKS: usize = 22;
const LIVE: u64 = 1 << 31;
const READERS: u64 = LIVE - 1;

struct Slot<T> {
    /// generation << 32 | LIVE | readers
    state: AtomicU64,
    /// Next index + 1 on the free stack (0: none); meaningful while free.
    next: AtomicU32,
    val: UnsafeCell<MaybeUninit<T>>,
}

/// A table of live objects addressed by packed `(generation, index)` tokens.
pub struct Registry<T> {
    chunks: [AtomicPtr<Slot<T>>; CHUNKS],
    /// Indices handed out so far (fresh ones are taken from here).
    len: AtomicU32,
    /// Free stack of slots (their `next` links).
    free: TaggedStack,
    /// Held only while making a chunk.
    grow: Mutex<()>,
}

// SAFETY: values are moved in by `insert` and out by `remove` (T: Send), and
// shared between threads by `with` / `for_each` as `&T` (T: Sync); the
// atomic state word orders every access to a slot's value (see the module
// comment).
unsafe impl<T: Send + Sync> Sync for Registry<T> {}
// SAFETY: as above; the registry owns its values.
unsafe impl<T: Send> Send for Registry<T> {}

fn pack(idx: u32, gen: u32) -> usize {
    ((gen as usize) << 32) | (idx as usize + 1)
}

fn unpack(token: usize) -> Option<(usize, u32)> {
    let low = token & 0xffff_ffff;
    if low == 0 {
        return None;
    }
    Some((low - 1, (token >> 32) as u32))
}

/// Chunk and offset of slot `idx`.
fn locate(idx: usize) -> (usize, usize) {
    let j = idx / BASE + 1;
    let k = (usize::BITS - 1 - j.leading_zeros()) as usize;
    (k, idx - BASE * ((1 << k) - 1))
}

fn chunk_len(k: usize) -> usize {
    BASE << k
}

/// The slot's state after a remove: next generation (never 0), free.
fn next_gen(state: u64) -> u64 {
    let gen = ((state >> 32) as u32).wrapping_add(1).max(1);
    (gen as u64) << 32
}

impl<T> Registry<T> {
    pub const fn new() -> Self {
        Registry {
            chunks: [const { AtomicPtr::new(std::ptr::null_mut()) }; CHUNKS],
            len: AtomicU32::new(0),
            free: TaggedStack::new(),
            grow: Mutex::new(()),
        }
    }

    /// The slot at `idx` if it was ever handed out.
    fn slot(&self, idx: usize) -> Option<&Slot<T>> {
        if idx >= self.len.load(Ordering::Acquire) as usize {
            return None;
        }
        let (k, off) = locate(idx);
        let p = self.chunks.get(k)?.load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: chunk `k` has `chunk_len(k)` initialised slots (`locate`
        // keeps `off` below that) and is freed only by `drop`, which has
        // `&mut self`.
        Some(unsafe { &*p.add(off) })
    }

    /// A fresh index, its chunk made (the only lock: taken when the free
    /// stack is empty, that is while the table grows).
    #[cold]
    fn fresh(&self) -> u32 {
        let _g = self.grow.lock().unwrap_or_else(|p| p.into_inner());
        let idx = self.len.load(Ordering::Relaxed);
        let (k, _) = locate(idx as usize);
        assert!(k < CHUNKS, "registry full");
        if self.chunks[k].load(Ordering::Acquire).is_null() {
            let slots: Box<[Slot<T>]> = (0..chunk_len(k))
                .map(|_| Slot {
                    state: AtomicU64::new(1 << 32),
                    next: AtomicU32::new(0),
                    val: UnsafeCell::new(MaybeUninit::uninit()),
                })
                .collect();
            self.chunks[k].store(Box::into_raw(slots) as *mut Slot<T>, Ordering::Release);
        }
        // The chunk is there before `len` says the index exists.
        self.len.store(idx + 1, Ordering::Release);
        idx
    }

    /// Pushes slot `idx` (`slot`) on the free stack.
    fn push_free(&self, idx: u32, slot: &Slot<T>) {
        self.free.push(idx, &slot.next);
    }

    /// Pops a free slot: its index and the slot.
    fn pop_free(&self) -> Option<(u32, &Slot<T>)> {
        self.free.pop(|i| self.slot(i as usize), |s| &s.next)
    }

    /// Stores `val` and returns its token (never 0).
    pub fn insert(&self, val: T) -> usize {
        let (idx, slot) = self.pop_free().unwrap_or_else(|| {
            let idx = self.fresh();
            (
                idx,
                self.slot(idx as usize).expect("a slot just made exists"),
            )
        });
        Self::fill(idx, slot, val)
    }

    /// [`Registry::insert`] into the slot `kept` names, when it names one
    /// (else a slot as `insert` finds one): a slot that
    /// [`Registry::release_held_keep`] took out of the table without putting
    /// it back on the free stack, so that the next insert of its holder
    /// needs neither the pop nor the push.
    ///
    /// # Safety
    /// `kept` is 0 or came from `release_held_keep` of this registry and has
    /// been neither inserted into nor freed ([`Registry::free_kept`]) since.
    pub unsafe fn insert_kept(&self, kept: u32, val: T) -> usize {
        match kept
            .checked_sub(1)
            .and_then(|i| Some((i, self.slot(i as usize)?)))
        {
            Some((idx, slot)) => Self::fill(idx, slot, val),
            None => self.insert(val),
        }
    }

    /// Puts a slot kept by [`Registry::release_held_keep`] back on the free
    /// stack.
    ///
    /// # Safety
    /// As for [`Registry::insert_kept`]; `kept` is not used again.
    pub unsafe fn free_kept(&self, kept: u32) {
        if let Some(idx) = kept.checked_sub(1) {
            if let Some(slot) = self.slot(idx as usize) {
                self.push_free(idx, slot);
            }
        }
    }

    /// Writes `val` into slot `idx`, which the caller has to itself (free,
    /// not on the free stack, not live), and makes it live.
    fn fill(idx: u32, slot: &Slot<T>, val: T) -> usize {
        // SAFETY: the slot is ours alone: popped from the free stack, a
        // fresh index, or kept by its last remover for this insert, and not
        // live, so no lookup reads its value.
        unsafe { (*slot.val.get()).write(val) };
        let gen = slot.state.load(Ordering::Relaxed) >> 32;
        slot.state.store((gen << 32) | LIVE, Ordering::Release);
        pack(idx, gen as u32)
    }

    /// Takes a reader reference on the live slot named by `token`.
    fn enter(&self, token: usize) -> Option<&Slot<T>> {
        let (idx, gen) = unpack(token)?;
        let slot = self.slot(idx)?;
        let mut s = slot.state.load(Ordering::Acquire);
        loop {
            if (s >> 32) as u32 != gen || s & LIVE == 0 {
                return None;
            }
            if s & READERS == READERS {
                std::hint::spin_loop();
                s = slot.state.load(Ordering::Acquire);
                continue;
            }
            match slot
                .state
                .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return Some(slot),
                Err(x) => s = x,
            }
        }
    }

    /// Runs `f` on the live object named by `token`, or returns `None`.
    /// Lock-free; other threads may run `f` on the same object at once.
    pub fn with<R>(&self, token: usize, f: impl FnOnce(&T) -> R) -> Option<R> {
        let slot = self.enter(token)?;
        struct Leave<'a>(&'a AtomicU64);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Release);
            }
        }
        let _leave = Leave(&slot.state);
        // SAFETY: our reader reference keeps the value in place: a remove
        // waits for the readers to leave before it moves the value out.
        Some(f(unsafe { (*slot.val.get()).assume_init_ref() }))
    }

    /// Runs `f` on the live object named by `token` without taking a
    /// reader reference (no atomic write), and removes the object when `f`
    /// returns `true` (one slot lookup for both): for a caller that holds
    /// a reference of its own which keeps the object in the table until it
    /// lets go (a request handle's library reference, [`crate::handle`]),
    /// and whose `f` says whether that was the last reference. The slot of
    /// a removed object does not go back on the free stack: it comes back
    /// with the object (its index plus one), for one later
    /// [`Registry::insert_kept`] (or [`Registry::free_kept`]). Returns
    /// `None` when the object stays, or when the token names no live
    /// object (a broken promise; nothing is read then).
    ///
    /// # Safety
    /// Nothing may remove the object named by `token` while `f` runs.
    pub unsafe fn release_held_keep(
        &self,
        token: usize,
        f: impl FnOnce(&T) -> bool,
    ) -> Option<(T, u32)> {
        let (idx, gen) = unpack(token)?;
        let slot = self.slot(idx)?;
        let s = slot.state.load(Ordering::Acquire);
        if (s >> 32) as u32 != gen || s & LIVE == 0 {
            return None;
        }
        // SAFETY: live with our generation (the Acquire load pairs with the
        // insert's Release store), and not removed while `f` runs (the
        // caller's promise).
        if f(unsafe { (*slot.val.get()).assume_init_ref() }) {
            return self
                .remove_slot_then(idx, gen, slot, false)
                .map(|v| (v, idx as u32 + 1));
        }
        None
    }

    /// Removes and returns the object named by `token`. Waits only for
    /// lookups of that object already running (each a few instructions).
    pub fn remove(&self, token: usize) -> Option<T> {
        let (idx, gen) = unpack(token)?;
        let slot = self.slot(idx)?;
        self.remove_slot(idx, gen, slot)
    }

    /// [`Registry::remove`] of slot `idx` (`slot`), generation `gen`.
    fn remove_slot(&self, idx: usize, gen: u32, slot: &Slot<T>) -> Option<T> {
        self.remove_slot_then(idx, gen, slot, true)
    }

    /// [`Registry::remove_slot`]; the freed slot goes on the free stack
    /// when `free`, else it stays with the caller (for `insert_kept`).
    #[inline(always)]
    fn remove_slot_then(&self, idx: usize, gen: u32, slot: &Slot<T>, free: bool) -> Option<T> {
        let mut s = slot.state.load(Ordering::Acquire);
        loop {
            if (s >> 32) as u32 != gen || s & LIVE == 0 {
                return None;
            }
            if s & READERS == 0 {
                // No lookup inside: the slot goes from live to free (next
                // generation) in one exchange; no reader can enter after it.
                match slot.state.compare_exchange_weak(
                    s,
                    next_gen(s),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        // SAFETY: we took the slot from live to free with
                        // no reader inside (Acquire pairs with the readers'
                        // Release): the value is ours to move out, once.
                        let v = unsafe { (*slot.val.get()).assume_init_read() };
                        if free {
                            self.push_free(idx as u32, slot);
                        }
                        return Some(v);
                    }
                    Err(x) => {
                        s = x;
                        continue;
                    }
                }
            }
            match slot.state.compare_exchange_weak(
                s,
                s & !LIVE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(x) => s = x,
            }
        }
        let mut spins = 0u32;
        while slot.state.load(Ordering::Acquire) & READERS != 0 {
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: we cleared the live bit (no new reader) and the readers
        // are gone (Acquire above pairs with their Release): the value is
        // ours to move out, once.
        let v = unsafe { (*slot.val.get()).assume_init_read() };
        slot.state.store(next_gen(s), Ordering::Release);
        if free {
            self.push_free(idx as u32, slot);
        }
        Some(v)
    }

    /// Calls `f` on every live object (lock-free; an object inserted or
    /// removed meanwhile may or may not be seen).
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        let n = self.len.load(Ordering::Acquire) as usize;
        for idx in 0..n {
            let Some(slot) = self.slot(idx) else { continue };
            let s = slot.state.load(Ordering::Acquire);
            if s & LIVE == 0 {
                continue;
            }
            let gen = (s >> 32) as u32;
            self.with(pack(idx as u32, gen), &mut f);
        }
    }
}

impl<T: Clone> Registry<T> {
    pub fn get(&self, token: usize) -> Option<T> {
        self.with(token, |v| v.clone())
    }
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for Registry<T> {
    fn drop(&mut self) {
        for k in 0..CHUNKS {
            let p = *self.chunks[k].get_mut();
            if p.is_null() {
                continue;
            }
            let len = chunk_len(k);
            // SAFETY: made by `fresh` from a boxed slice of `len`
            // slots; `&mut self`: no other access.
            let mut slots = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, len)) };
            for slot in slots.iter_mut() {
                if *slot.state.get_mut() & LIVE != 0 {
                    // SAFETY: a live slot holds an initialised value.
                    unsafe { slot.val.get_mut().assume_init_drop() };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn stale_tokens_fail() {
        let r = Registry::new();
        let a = r.insert(1u32);
        assert_eq!(r.get(a), Some(1));
        assert_eq!(r.remove(a), Some(1));
        assert_eq!(r.get(a), None);
        assert_eq!(r.remove(a), None);
        let b = r.insert(2u32);
        assert_ne!(a, b, "a reused slot gets a new generation");
        assert_eq!(r.get(a), None);
        assert_eq!(r.get(b), Some(2));
        assert_eq!(r.get(0), None);
        assert_eq!(r.get(usize::MAX), None);
        assert_eq!(r.get(pack(1_000_000, 1)), None, "an index never handed out");
        let mut seen = Vec::new();
        r.for_each(|v| seen.push(*v));
        assert_eq!(seen, [2]);
    }

    #[test]
    fn kept_slots_are_reused_with_a_new_generation() {
        let r = Registry::new();
        let a = r.insert(1u32);
        // SAFETY: nothing else removes `a`.
        assert!(unsafe { r.release_held_keep(a, |_| false) }.is_none());
        assert_eq!(r.get(a), Some(1), "not removed when f says no");
        // SAFETY: as above.
        let (v, kept) = unsafe { r.release_held_keep(a, |_| true) }.expect("removed");
        assert_eq!(v, 1);
        assert_eq!(r.get(a), None, "a removed value is gone");
        let other = r.insert(2u32);
        assert_ne!(
            unpack(other).map(|t| t.0),
            unpack(a).map(|t| t.0),
            "kept off the free stack"
        );
        // SAFETY: `kept` came from `release_held_keep` and is used once.
        let b = unsafe { r.insert_kept(kept, 3) };
        assert_eq!(
            unpack(b).map(|t| t.0),
            unpack(a).map(|t| t.0),
            "the same slot"
        );
        assert_ne!(a, b, "a new generation");
        assert_eq!(r.get(a), None);
        assert_eq!(r.get(b), Some(3));
        // SAFETY: as above.
        let (_, kept) = unsafe { r.release_held_keep(b, |_| true) }.expect("removed");
        // SAFETY: `kept` is freed once and not used again.
        unsafe { r.free_kept(kept) };
        let c = r.insert(4u32);
        assert_eq!(
            unpack(c).map(|t| t.0),
            unpack(a).map(|t| t.0),
            "freed: reused"
        );
        assert_eq!(r.get(b), None);
        // SAFETY: 0 names no slot.
        let d = unsafe { r.insert_kept(0, 5) };
        assert_eq!(r.get(d), Some(5));
        let mut n = 0;
        r.for_each(|_| n += 1);
        assert_eq!(n, 3);
    }

    #[test]
    fn locate_covers_every_index_once() {
        let mut expect = (0, 0);
        for idx in 0..BASE * 15 {
            assert_eq!(locate(idx), expect, "index {idx}");
            expect.1 += 1;
            if expect.1 == chunk_len(expect.0) {
                expect = (expect.0 + 1, 0);
            }
        }
    }

    #[test]
    fn grows_across_chunks_and_reuses_slots() {
        let r = Registry::new();
        let toks: Vec<usize> = (0..1000u32).map(|i| r.insert(i)).collect();
        for (i, t) in toks.iter().enumerate() {
            assert_eq!(r.get(*t), Some(i as u32));
        }
        for t in &toks[..500] {
            assert!(r.remove(*t).is_some());
        }
        let again: Vec<usize> = (0..500u32).map(|i| r.insert(i + 5000)).collect();
        assert_eq!(
            r.len.load(Ordering::Relaxed),
            1000,
            "freed slots are reused"
        );
        for t in &toks[..500] {
            assert_eq!(r.get(*t), None);
        }
        let mut n = 0;
        r.for_each(|_| n += 1);
        assert_eq!(n, 1000);
        drop(again);
    }

    /// Values that must never be read after they were dropped: a lookup
    /// that reads a dropped one panics (and ASan/valgrind would see it).
    struct Canary {
        alive: Arc<AtomicBool>,
        id: u64,
    }
    impl Drop for Canary {
        fn drop(&mut self) {
            assert!(self.alive.swap(false, Ordering::SeqCst), "dropped twice");
        }
    }

    /// Lookups of live, stale and made-up tokens against inserts and
    /// removes on other threads: a lookup sees its own value or nothing,
    /// never a removed value, and every value is dropped exactly once.
    #[test]
    fn concurrent_lookup_vs_remove() {
        let r: Arc<Registry<Canary>> = Arc::new(Registry::new());
        let stop = Arc::new(AtomicBool::new(false));
        let tokens: Arc<Vec<AtomicU64>> = Arc::new((0..64).map(|_| AtomicU64::new(0)).collect());
        let mut th = Vec::new();
        for w in 0..2u64 {
            let (r, stop, tokens) = (Arc::clone(&r), Arc::clone(&stop), Arc::clone(&tokens));
            th.push(std::thread::spawn(move || {
                let mut id = w << 40;
                let mut ops = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for i in (w as usize..tokens.len()).step_by(2) {
                        let old = tokens[i].swap(0, Ordering::SeqCst);
                        if old != 0 {
                            let c = r.remove(old as usize).expect("own token is live");
                            assert!(c.alive.load(Ordering::SeqCst));
                            assert_eq!(r.remove(old as usize).map(|c| c.id), None);
                        }
                        id += 1;
                        let c = Canary {
                            alive: Arc::new(AtomicBool::new(true)),
                            id,
                        };
                        let t = r.insert(c);
                        assert_eq!(r.with(t, |c| c.id), Some(id));
                        tokens[i].store(t as u64, Ordering::SeqCst);
                        ops += 1;
                    }
                }
                ops
            }));
        }
        let mut readers = Vec::new();
        for k in 0..2u64 {
            let (r, stop, tokens) = (Arc::clone(&r), Arc::clone(&stop), Arc::clone(&tokens));
            readers.push(std::thread::spawn(move || {
                let mut seen = 0u64;
                let mut stale = Vec::new();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ k;
                while !stop.load(Ordering::Relaxed) {
                    for t in tokens.iter() {
                        let t = t.load(Ordering::SeqCst) as usize;
                        if t == 0 {
                            continue;
                        }
                        if let Some(ok) = r.with(t, |c| c.alive.load(Ordering::SeqCst)) {
                            assert!(ok, "a lookup reached a dropped value");
                            seen += 1;
                        }
                        if stale.len() < 256 {
                            stale.push(t);
                        }
                    }
                    // Stale tokens of removed values, and made-up ones.
                    for t in &stale {
                        if let Some(ok) = r.with(*t, |c| c.alive.load(Ordering::SeqCst)) {
                            assert!(ok);
                        }
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // A made-up token: an index never handed out.
                    assert!(r.with(x as usize | 0x8000_0000, |_| ()).is_none());
                    r.for_each(|c| assert!(c.alive.load(Ordering::SeqCst)));
                }
                seen
            }));
        }
        std::thread::sleep(std::time::Duration::from_millis(1500));
        stop.store(true, Ordering::SeqCst);
        let writes: u64 = th.into_iter().map(|t| t.join().expect("writer")).sum();
        let reads: u64 = readers.into_iter().map(|t| t.join().expect("reader")).sum();
        assert!(
            writes > 1000 && reads > 1000,
            "{writes} writes, {reads} reads"
        );
        for t in tokens.iter() {
            let t = t.load(Ordering::SeqCst) as usize;
            if t != 0 {
                assert!(r.remove(t).is_some());
            }
        }
        let mut left = 0;
        r.for_each(|_| left += 1);
        assert_eq!(left, 0);
    }
}
