//! Userspace `struct page`: a 4096-byte, 4096-aligned block of memory.
//!
//! The C pointer to a page *is* its address, so `dm_io_page_address` is
//! free. Every live page is remembered so that the library can reject a
//! pointer that is not one of its pages (in `dm_io_page_free` and in page
//! lists / bio_vecs given to `dm_io`) instead of reading through it.

use super::PAGE_SIZE;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

static LIVE: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

fn layout() -> Layout {
    // PAGE_SIZE is a non-zero power of two, so this cannot fail.
    Layout::from_size_align(PAGE_SIZE, PAGE_SIZE).expect("page layout")
}

/// The set of live pages, locked; used to validate many pages under one lock.
pub struct LivePages(MutexGuard<'static, Option<HashSet<usize>>>);

impl LivePages {
    pub fn lock() -> Self {
        LivePages(LIVE.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn contains(&self, addr: usize) -> bool {
        self.0.as_ref().is_some_and(|s| s.contains(&addr))
    }
}

/// Allocates one zeroed page; `None` when out of memory.
pub fn alloc() -> Option<usize> {
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc_zeroed(layout()) };
    if p.is_null() {
        return None;
    }
    let mut live = LivePages::lock();
    live.0.get_or_insert_with(HashSet::new).insert(p as usize);
    Some(p as usize)
}

/// Frees a page from [`alloc`]; returns `false` (and frees nothing) for any
/// other address, including a page already freed.
pub fn free(addr: usize) -> bool {
    let mut live = LivePages::lock();
    let known = live.0.as_mut().is_some_and(|s| s.remove(&addr));
    drop(live);
    if known {
        // SAFETY: `addr` was returned by `alloc_zeroed(layout())` in `alloc`
        // and was still in the live set, so it has not been freed yet; it is
        // now out of the set, so it cannot be freed twice.
        unsafe { dealloc(addr as *mut u8, layout()) };
    }
    known
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
