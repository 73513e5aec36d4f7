//! Private (bounce) memory of one client.
//!
//! One anonymous mapping of `slots × slot_size` bytes, page-aligned (so it
//! suits O_DIRECT), cut into equal slots. Every IO that the library may have
//! to abandon runs on a slot: reads land in it and are copied out while the
//! region is live; writes are copied in before submission. A slot is held by
//! a [`SlotRef`]; the in-flight operation that names the slot keeps it until
//! the kernel has completed that operation, and the slot returns to the pool
//! when its last reference drops. The mapping itself is unmapped only when
//! the pool *and* every slot reference are gone, which is why a destroyed
//! client's memory outlives it while stuck kernel IO still points into it.
//!
//! Acquiring waits when every slot is in use: memory is bounded, never grown.

use crate::error::{Error, Result};
use crate::tagged_stack::TaggedStack;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Pools up to this size are faulted in when the client is created
/// (`MADV_POPULATE_WRITE`), so IO never takes a first-touch page fault on
/// private memory, and memory that is not there fails `create` with ENOMEM
/// instead of failing later. Larger pools are faulted in as they are used.
pub(crate) const PREFAULT_MAX: usize = 64 << 20;
/// `MADV_POPULATE_WRITE` (Linux 5.14), not in every libc crate version.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// How a thread waits for a free slot.
pub enum WaitBy<'a> {
    /// Sleeps on the pool until a slot is released.
    Sleep,
    /// Must keep working while it waits (the completion thread, whose own
    /// ring may hold the memory): calls this, which returns within a short
    /// time, between attempts.
    Poll(&'a mut dyn FnMut()),
}

/// A fixed set of equal, page-aligned slots of private memory.
///
/// Taking and freeing a slot is lock-free: freed slots are on a Treiber
/// stack (`free`, `next`), and slots never used yet are taken from `fresh`
/// only when that stack is empty, so `fresh` is also the most slots ever
/// in use at once (the high-water mark; a slot freed while another thread
/// found the stack empty may count once more). The lock and condition variable
/// serve only threads that sleep for a slot (`sleepers`, read without the
/// lock by whoever frees a slot or kicks).
pub struct Pool {
    base: *mut u8,
    map_len: usize,
    slot_size: usize,
    nslots: u32,
    /// Free stack of slots used before.
    free: TaggedStack,
    /// Per slot: the next index + 1 on the free stack (0: none).
    next: Box<[AtomicU32]>,
    /// Slots taken at least once (`0..fresh`); never decreases.
    fresh: AtomicU32,
    closed: AtomicBool,
    /// Threads sleeping for a slot in `acquire_unless` (read without the
    /// lock by whoever frees a slot or kicks).
    sleepers: AtomicUsize,
    /// Only for sleepers: the free stack takes no lock.
    state: Mutex<()>,
    cv: Condvar,
    waits: AtomicU64,
    /// References to each slot in use (a write's legs share one); 0 for
    /// a free slot.
    refs: Box<[AtomicU32]>,
}

// SAFETY: `base` is a private mapping owned by the pool; slots are handed
// out exclusively through `SlotRef` (one slot to one holder at a time): a
// slot is popped from the free stack, or taken fresh, by one thread only.
unsafe impl Send for Pool {}
// SAFETY: as above: shared access only reads immutable fields or goes
// through the atomics (and the sleepers' mutex).
unsafe impl Sync for Pool {}

impl Pool {
    /// Maps `nslots × slot_size` bytes. `slot_size` must be a multiple of 4096.
    pub fn new(nslots: u32, slot_size: usize) -> Result<Arc<Pool>> {
        let map_len = (nslots as usize)
            .checked_mul(slot_size)
            .ok_or_else(|| Error::new(libc::ENOMEM, "private memory size overflows"))?;
        if nslots == 0 || slot_size == 0 || slot_size % super::PAGE_SIZE != 0 {
            return Err(crate::einval!("bad pool geometry {nslots} x {slot_size}"));
        }
        // SAFETY: anonymous private mapping, no fd, no fixed address; the
        // result is checked against MAP_FAILED below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::new(
                libc::ENOMEM,
                format!("cannot map {map_len} bytes of private memory"),
            ));
        }
        if map_len <= PREFAULT_MAX {
            // SAFETY: `base..base+map_len` is the mapping made above, owned here.
            let r = unsafe { libc::madvise(base, map_len, MADV_POPULATE_WRITE) };
            if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOMEM) {
                // SAFETY: unmaps the mapping made above; nothing refers to it yet.
                unsafe { libc::munmap(base, map_len) };
                return Err(Error::new(
                    libc::ENOMEM,
                    format!("cannot populate {map_len} bytes of private memory"),
                ));
            }
            // Other failures (EINVAL: a kernel before 5.14) leave the pages
            // to be faulted in by the first IO that uses them.
        }
        Ok(Arc::new(Pool {
            base: base as *mut u8,
            map_len,
            slot_size,
            nslots,
            free: TaggedStack::new(),
            next: (0..nslots).map(|_| AtomicU32::new(0)).collect(),
            fresh: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            state: Mutex::new(()),
            cv: Condvar::new(),
            waits: AtomicU64::new(0),
            refs: (0..nslots).map(|_| AtomicU32::new(0)).collect(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The whole mapping (start, bytes), to register with io_uring.
    pub fn region(&self) -> (usize, usize) {
        (self.base as usize, self.map_len)
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    pub fn slots(&self) -> u32 {
        self.nslots
    }

    /// Bytes of private memory in the pool (its bound).
    pub fn bound(&self) -> u64 {
        self.map_len as u64
    }

    /// Slots in use now (each read atomically; not one instant's count
    /// while slots are taken and freed meanwhile).
    pub fn in_use(&self) -> u32 {
        let n = self.fresh.load(Ordering::Acquire) as usize;
        self.refs[..n]
            .iter()
            .filter(|r| r.load(Ordering::Relaxed) != 0)
            .count() as u32
    }

    /// The most slots in use at once so far (see [`Pool`]).
    pub fn high_water(&self) -> u64 {
        self.fresh.load(Ordering::Relaxed) as u64
    }

    /// How many acquisitions had to wait for a free slot.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Pops a slot from the free stack, or takes one never used.
    fn pop(&self) -> Option<u32> {
        if let Some((idx, _)) = self.free.pop(|i| self.next.get(i as usize), |l| l) {
            return Some(idx);
        }
        // Nothing freed to reuse: a slot never used, if any is left.
        let mut n = self.fresh.load(Ordering::Relaxed);
        while n < self.nslots {
            match self
                .fresh
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(n),
                Err(x) => n = x,
            }
        }
        None
    }

    /// Pushes slot `idx` on the free stack.
    fn push(&self, idx: u32) {
        self.free.push(idx, &self.next[idx as usize]);
    }

    fn take(self: &Arc<Self>) -> Option<SlotRef> {
        let idx = self.pop()?;
        self.refs[idx as usize].store(1, Ordering::Relaxed);
        Some(SlotRef {
            pool: Arc::clone(self),
            idx,
        })
    }

    /// Takes a free slot without waiting (lock-free).
    pub fn try_acquire(self: &Arc<Self>) -> Option<SlotRef> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        self.take()
    }

    /// Takes a free slot, waiting for one while all are in use.
    /// Fails with `ESHUTDOWN` once the pool is closed.
    pub fn acquire(self: &Arc<Self>) -> Result<SlotRef> {
        self.acquire_unless(&|| false, WaitBy::Sleep)
            .map(|s| s.expect("never abandoned"))
    }

    /// Like [`Pool::acquire`], but gives up (`Ok(None)`) as soon as
    /// `abandon()` holds; whoever makes it hold calls [`Pool::kick`].
    /// `abandon` runs under the pool's lock and must not take other locks.
    /// `by` says how the thread waits meanwhile.
    pub fn acquire_unless(
        self: &Arc<Self>,
        abandon: &dyn Fn() -> bool,
        mut by: WaitBy<'_>,
    ) -> Result<Option<SlotRef>> {
        let mut st = self.lock();
        let mut waited = false;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::new(libc::ESHUTDOWN, "client is being destroyed"));
            }
            if let Some(s) = self.take() {
                return Ok(Some(s));
            }
            if abandon() {
                return Ok(None);
            }
            if !waited {
                waited = true;
                self.waits.fetch_add(1, Ordering::Relaxed);
            }
            match &mut by {
                WaitBy::Sleep => {
                    // Announced, then looked again (under the lock, which
                    // a waker takes before it notifies): a slot freed, a
                    // kick or a close after the look above wakes us, or is
                    // seen by the look here (SeqCst fences on both sides).
                    self.sleepers.fetch_add(1, Ordering::SeqCst);
                    fence(Ordering::SeqCst);
                    let ready = self.closed.load(Ordering::SeqCst)
                        || !self.free.is_empty(Ordering::SeqCst)
                        || self.fresh.load(Ordering::SeqCst) < self.nslots
                        || abandon();
                    if !ready {
                        st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                    self.sleepers.fetch_sub(1, Ordering::SeqCst);
                }
                WaitBy::Poll(poll) => {
                    drop(st);
                    poll();
                    st = self.lock();
                }
            }
        }
    }

    /// Wakes the sleepers (`all`, or one) if there are any: after the
    /// change they wait for (a slot freed, a request final, the pool
    /// closed), which the SeqCst fence orders before the look at the
    /// count. Takes the lock so that a sleeper between its last look and
    /// its sleep cannot miss the wake-up.
    #[inline]
    fn wake_sleepers(&self, all: bool) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            self.notify_sleepers(all);
        }
    }

    #[cold]
    #[inline(never)]
    fn notify_sleepers(&self, all: bool) {
        let _g = self.lock();
        if all {
            self.cv.notify_all();
        } else {
            self.cv.notify_one();
        }
    }

    /// Wakes every waiter to look at its `abandon` condition again
    /// (lock-free when none sleeps).
    #[inline]
    pub fn kick(&self) {
        self.wake_sleepers(true);
    }

    /// Wakes every waiter and refuses further acquisitions.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _g = self.lock();
        self.cv.notify_all();
    }

    fn release(&self, idx: u32) {
        self.push(idx);
        self.wake_sleepers(false);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` are the mapping made in `new`; the pool is
        // dropped only after every `SlotRef` (each holds an `Arc<Pool>`) is gone,
        // so no IO and no copy can still use the memory.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.map_len) };
    }
}

/// A reference to a slot: a write to N regions shares one slot among its
/// N operations; the slot is free again when the last reference is
/// dropped. Counted in the pool (no allocation per slot); each reference
/// also holds the pool, so the mapping outlives every slot in use.
pub struct SlotRef {
    pool: Arc<Pool>,
    idx: u32,
}

impl Clone for SlotRef {
    fn clone(&self) -> Self {
        self.pool.refs[self.idx as usize].fetch_add(1, Ordering::Relaxed);
        SlotRef {
            pool: Arc::clone(&self.pool),
            idx: self.idx,
        }
    }
}

impl Drop for SlotRef {
    fn drop(&mut self) {
        if self.pool.refs[self.idx as usize].fetch_sub(1, Ordering::Release) == 1 {
            // Every other holder's use of the slot happens before its reuse.
            fence(Ordering::Acquire);
            self.pool.release(self.idx);
        }
    }
}

impl SlotRef {
    /// Address of the slot's first byte (page-aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: idx < nslots, so the offset stays inside the mapping.
        unsafe { self.pool.base.add(self.idx as usize * self.pool.slot_size) }
    }

    pub fn len(&self) -> usize {
        self.pool.slot_size
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The slot's bytes, for copying. Only call while no kernel IO writes
    /// into the slot (before submission of a write, after completion of a read).
    pub fn bytes(&self, len: usize) -> &[u8] {
        assert!(len <= self.len());
        // SAFETY: the range is inside this slot, which belongs to this
        // reference's holders alone; the caller only reads it when no IO is
        // writing into it (documented above).
        unsafe { std::slice::from_raw_parts(self.as_ptr(), len) }
    }

    /// The slot's bytes, mutable, for filling before a write is submitted.
    #[allow(clippy::mut_from_ref)]
    pub fn bytes_mut(&self, len: usize) -> &mut [u8] {
        assert!(len <= self.len());
        // SAFETY: the slot is exclusively ours and not yet handed to the
        // kernel when this is called (only before submission).
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), len) }
    }

    /// Whether the pool behind this slot is the given one (tests).
    pub fn pool_ptr(&self) -> *const Pool {
        Arc::as_ptr(&self.pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_reusable() {
        let p = Pool::new(2, 4096).unwrap();
        let a = p.acquire().unwrap();
        let b = a.clone();
        let c = p.try_acquire().unwrap();
        assert!(p.try_acquire().is_none());
        assert_eq!(a.as_ptr() as usize % 4096, 0);
        drop(a);
        assert!(p.try_acquire().is_none(), "a shared slot stays held");
        drop(b);
        assert!(p.try_acquire().is_some());
        drop(c);
        assert_eq!(p.in_use(), 0);
        assert_eq!(p.high_water(), 2);
    }

    /// Pages of `p`'s mapping resident now (mincore).
    fn resident(p: &Pool) -> usize {
        let (start, len) = p.region();
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: the pool's own mapping; `vec` has one byte per page.
        let r = unsafe { libc::mincore(start as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        vec.iter().filter(|b| *b & 1 != 0).count()
    }

    #[test]
    fn small_pools_are_faulted_in_at_create() {
        let p = Pool::new(64, 8192).unwrap();
        let (_, len) = p.region();
        // MADV_POPULATE_WRITE needs Linux 5.14; say so rather than pass quietly.
        assert_eq!(
            resident(&p),
            len / 4096,
            "a pool within PREFAULT_MAX must be resident after create (kernel >= 5.14)"
        );
        let big = Pool::new(((PREFAULT_MAX / 4096) + 1) as u32, 4096).unwrap();
        assert!(
            resident(&big) < big.region().1 / 4096,
            "pools beyond PREFAULT_MAX are faulted in as used"
        );
    }

    #[test]
    fn close_wakes_waiters() {
        let p = Pool::new(1, 4096).unwrap();
        let held = p.acquire().unwrap();
        let p2 = Arc::clone(&p);
        let t = std::thread::spawn(move || p2.acquire().map(|_| ()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        p.close();
        assert_eq!(t.join().unwrap().unwrap_err().errno, libc::ESHUTDOWN);
        drop(held);
    }

    /// More threads than slots, taking (sleeping when none is free) and
    /// freeing: a slot is never held twice at once, no wake-up is lost
    /// (the run ends), and every slot is free at the end.
    #[test]
    fn lock_free_slots_under_contention() {
        use std::sync::atomic::AtomicBool;
        let p = Pool::new(3, 4096).unwrap();
        let held: Arc<Vec<AtomicBool>> = Arc::new((0..3).map(|_| AtomicBool::new(false)).collect());
        let threads: Vec<_> = (0..6u8)
            .map(|t| {
                let (p, held) = (Arc::clone(&p), Arc::clone(&held));
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let s = if i % 2 == 0 {
                            p.acquire().unwrap()
                        } else {
                            match p.try_acquire() {
                                Some(s) => s,
                                None => continue,
                            }
                        };
                        let idx = (s.as_ptr() as usize - p.region().0) / 4096;
                        assert!(
                            !held[idx].swap(true, Ordering::SeqCst),
                            "slot {idx} held twice"
                        );
                        s.bytes_mut(1)[0] = t;
                        assert_eq!(s.bytes(1)[0], t);
                        held[idx].store(false, Ordering::SeqCst);
                        drop(s);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(p.in_use(), 0);
        assert!((1..=3).contains(&p.high_water()));
        let all: Vec<_> = (0..3).map(|_| p.try_acquire().unwrap()).collect();
        assert!(p.try_acquire().is_none(), "three slots, no more");
        assert_eq!(p.high_water(), 3);
        drop(all);
    }

    #[test]
    fn memory_outlives_pool_handle() {
        let p = Pool::new(1, 4096).unwrap();
        let s = p.acquire().unwrap();
        let weak = Arc::downgrade(&p);
        drop(p);
        assert!(weak.upgrade().is_some(), "slot keeps the mapping alive");
        s.bytes_mut(4096)[4095] = 7;
        drop(s);
        assert!(weak.upgrade().is_none());
    }
}
