//! Opaque C handles that can be checked before use.
//!
//! Every object C holds by pointer (client, block device, request handle) is
//! stored in a [`Registry`]. The "pointer" C sees is a token: slot index and
//! generation packed into one machine word, never dereferenced. A stale,
//! double-freed or made-up pointer therefore fails the lookup with `None`
//! (the FFI layer turns that into `-EINVAL`) instead of touching freed memory.

use std::sync::Mutex;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("libdmio packs handle tokens into 64-bit pointers");

struct Entry<T> {
    gen: u32,
    val: Option<T>,
}

struct Slots<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
}

/// A table of live objects addressed by packed `(generation, index)` tokens.
pub struct Registry<T> {
    slots: Mutex<Slots<T>>,
}

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

impl<T> Registry<T> {
    pub const fn new() -> Self {
        Registry {
            slots: Mutex::new(Slots {
                entries: Vec::new(),
                free: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots<T>> {
        // A panic while holding the lock cannot leave a slot half-written
        // (every update is a single assignment), so a poisoned lock is safe to reuse.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `val` and returns its token (never 0).
    pub fn insert(&self, val: T) -> usize {
        let mut s = self.lock();
        if let Some(idx) = s.free.pop() {
            let e = &mut s.entries[idx as usize];
            e.val = Some(val);
            return pack(idx, e.gen);
        }
        let idx = s.entries.len() as u32;
        s.entries.push(Entry {
            gen: 1,
            val: Some(val),
        });
        pack(idx, 1)
    }

    /// Runs `f` on the live object named by `token`, or returns `None`.
    pub fn with<R>(&self, token: usize, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let (idx, gen) = unpack(token)?;
        let mut s = self.lock();
        let e = s.entries.get_mut(idx)?;
        if e.gen != gen {
            return None;
        }
        e.val.as_mut().map(f)
    }

    /// Like [`Registry::with`], and removes the object when `f` returns `true`
    /// in the first element.
    pub fn update<R>(&self, token: usize, f: impl FnOnce(&mut T) -> (bool, R)) -> Option<R> {
        let (idx, gen) = unpack(token)?;
        let mut s = self.lock();
        let e = s.entries.get_mut(idx)?;
        if e.gen != gen || e.val.is_none() {
            return None;
        }
        let (remove, r) = f(e.val.as_mut()?);
        if remove {
            e.val = None;
            e.gen = e.gen.wrapping_add(1).max(1);
            s.free.push(idx as u32);
        }
        Some(r)
    }

    /// Removes and returns the object named by `token`.
    pub fn remove(&self, token: usize) -> Option<T> {
        let (idx, gen) = unpack(token)?;
        let mut s = self.lock();
        let e = s.entries.get_mut(idx)?;
        if e.gen != gen {
            return None;
        }
        let v = e.val.take()?;
        e.gen = e.gen.wrapping_add(1).max(1);
        s.free.push(idx as u32);
        Some(v)
    }

    /// Calls `f` on every live object (under the table's lock: keep it short).
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        let s = self.lock();
        s.entries
            .iter()
            .filter_map(|e| e.val.as_ref())
            .for_each(&mut f);
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut seen = Vec::new();
        r.for_each(|v| seen.push(*v));
        assert_eq!(seen, [2]);
    }
}
