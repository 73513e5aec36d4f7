//! `struct dm_io_handle`: references to a request, counted.
//!
//! The library holds one reference from submission until every final
//! notification has been delivered (so `state->hdl` is valid during notify);
//! the caller holds one per `dm_io(.., &hdl)` / `dm_io_handle_get`. The entry
//! disappears when both are gone; a handle used after that is refused.

use crate::registry::Registry;
use crate::request::Request;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

struct Entry {
    req: Arc<Request>,
    /// The caller's references << 1 | the library's (bit 0). The one who
    /// brings it to 0 removes the entry; at 0 no reference can be added.
    refs: AtomicU64,
}

/// Lock-free for lookups, inserts and removes ([`Registry`]).
static HANDLES: Registry<Entry> = Registry::new();

const LIB: u64 = 1;
const USER: u64 = 2;

/// Registers a new request with the library's reference and `user_refs`,
/// in the table slot its previous use left it, if any ([`release_lib`]).
pub fn register(req: Arc<Request>, user_refs: u32) -> usize {
    let kept = req.take_handle_slot();
    let e = Entry {
        req,
        refs: AtomicU64::new((user_refs as u64 * USER) | LIB),
    };
    // SAFETY: a slot a request holds came from `release_lib`'s
    // `release_held_keep` and was taken out of the request just now
    // (`take_handle_slot` swaps it out): used once.
    unsafe { HANDLES.insert_kept(kept, e) }
}

/// Frees a table slot a request held from its previous use and will not
/// use again (the request goes, see [`Request::take_handle_slot`]).
pub fn free_slot(kept: u32) {
    // SAFETY: as in `register`: the request gave it up, so it is freed once.
    unsafe { HANDLES.free_kept(kept) }
}

/// The request behind a live handle.
pub fn lookup(token: usize) -> Option<Arc<Request>> {
    HANDLES.with(token, |e| Arc::clone(&e.req))
}

/// The requests of client `client_id` that are not final yet (for cancel
/// by device and destroy): every request is here from submission until its
/// last final notification was delivered, so this is the client's live set
/// without a second table to keep per IO.
pub fn live_of(client_id: u64) -> Vec<Arc<Request>> {
    let mut out = Vec::new();
    HANDLES.for_each(|e| {
        if e.req.client_id == client_id && !e.req.all_final() {
            out.push(Arc::clone(&e.req));
        }
    });
    out
}

/// Applies `f` to the entry's reference word (compare-and-swap; `f`
/// returns `None` to leave it) and returns the new value.
fn change(e: &Entry, f: impl Fn(u64) -> Option<u64>) -> Option<u64> {
    e.refs
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, &f)
        .ok()
        .and_then(f)
}

/// Adds a caller reference. `None` for a dead or unknown handle.
pub fn get(token: usize) -> Option<()> {
    HANDLES
        .with(token, |e| change(e, |r| (r != 0).then_some(r + USER)))
        .flatten()
        .map(|_| ())
}

/// Drops a caller reference: `Some(true)` while the caller holds more,
/// `Some(false)` when that was its last one, `None` when the caller held
/// none (unknown handle, or more puts than gets).
pub fn put(token: usize) -> Option<bool> {
    let left = HANDLES
        .with(token, |e| change(e, |r| (r >= USER).then(|| r - USER)))
        .flatten()?;
    if left == 0 {
        HANDLES.remove(token);
    }
    Some(left >= USER)
}

/// Drops the library's reference (after the last final notification).
/// The reference itself keeps the entry in the table until it goes, so it
/// is read without a reader reference: one atomic update, and the remove
/// when that was the last reference. Returns the entry's request when the
/// entry went (the caller held no reference), so that the caller may keep
/// it without another reference count update; the entry's table slot then
/// stays with the request, for its next use ([`register`]) or its drop
/// ([`free_slot`]), instead of going back to the table's free stack.
pub fn release_lib(token: usize) -> Option<Arc<Request>> {
    // SAFETY: the entry is removed only by whoever takes its reference word
    // to 0 (`put`, this function) or by `discard` before the token left
    // the library; the library's reference, dropped only here, keeps it
    // above 0 until the `fetch_and` below.
    let (e, kept) = unsafe {
        HANDLES.release_held_keep(token, |e| e.refs.fetch_and(!LIB, Ordering::AcqRel) == LIB)
    }?;
    e.req.keep_handle_slot(kept);
    Some(e.req)
}

/// Drops a handle that never reached the caller (submission refused).
pub fn discard(token: usize) {
    HANDLES.remove(token);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::manual::kit::TempDev;
    use crate::memory::caller::CallerMemory;
    use crate::memory::pool::SlotRef;
    use crate::request::{CancelReason, Event, Mode, RegionSpec, RequestOwner, State};
    use std::time::Instant;

    struct NoOwner;
    impl RequestOwner for NoOwner {
        fn observe(&self, _: State, _: bool) {}
        fn deliver_async(&self, _: Event) {}
        fn request_final(&self, _: &Request) {}
        fn request_delivered(&self, _: &Arc<Request>) {}
        fn start_regions(&self, _: &Arc<Request>, _: Vec<(u32, SlotRef)>, _: bool) {}
        fn arm_timer(&self, _: Instant, _: &Arc<Request>) {}
    }

    /// A request of client `client` with one region on `dev` (none: a
    /// request already final).
    fn request(client: u64, dev: Option<&TempDev>) -> Arc<Request> {
        let specs: Vec<RegionSpec> = dev
            .map(|d| RegionSpec {
                dev: Arc::clone(&d.dev),
                sector: 0,
                count: 8,
            })
            .into_iter()
            .collect();
        Request::new(
            client,
            Mode::default(),
            specs.into(),
            |_| 1,
            CallerMemory::from_segments(Vec::new()),
            None,
            Arc::new(NoOwner),
        )
    }

    #[test]
    fn the_entry_goes_with_the_last_reference_the_library_last() {
        let t = register(request(1, None), 1);
        assert!(lookup(t).is_some());
        assert_eq!(get(t), Some(()));
        assert_eq!(put(t), Some(true), "one caller reference left");
        assert_eq!(put(t), Some(false), "the caller's last");
        // The library's reference keeps the entry (notify may still see it).
        assert!(lookup(t).is_some());
        assert_eq!(put(t), None, "more puts than gets");
        release_lib(t);
        assert!(lookup(t).is_none());
        assert_eq!(get(t), None);
        assert_eq!(put(t), None);
    }

    #[test]
    fn the_entry_goes_with_the_last_reference_the_caller_last() {
        let t = register(request(1, None), 1);
        release_lib(t);
        assert!(lookup(t).is_some(), "the caller still holds it");
        assert_eq!(put(t), Some(false));
        assert!(lookup(t).is_none());
    }

    #[test]
    fn without_a_caller_reference_the_library_holds_it_alone() {
        let t = register(request(1, None), 0);
        assert_eq!(put(t), None);
        assert!(lookup(t).is_some());
        release_lib(t);
        assert!(lookup(t).is_none());
    }

    #[test]
    fn a_discarded_handle_is_refused() {
        let t = register(request(1, None), 1);
        discard(t);
        assert!(lookup(t).is_none());
        assert_eq!(get(t), None);
        assert_eq!(put(t), None);
    }

    #[test]
    fn live_of_lists_a_clients_requests_until_final() {
        let dev = TempDev::new("handles");
        // Client ids no client of another test has.
        let (a, b) = (u64::MAX - 11, u64::MAX - 12);
        let live = request(a, Some(&dev));
        let ta = register(Arc::clone(&live), 0);
        let tb = register(request(b, Some(&dev)), 0);
        let tf = register(request(a, None), 0);
        let ids = |c| -> Vec<*const Request> { live_of(c).iter().map(Arc::as_ptr).collect() };
        assert_eq!(ids(a), vec![Arc::as_ptr(&live)]);
        assert_eq!(ids(b).len(), 1);
        assert_eq!(live.cancel_where(CancelReason::User, |_| true), 1);
        assert!(ids(a).is_empty(), "a final request is not live");
        for t in [ta, tb, tf] {
            release_lib(t);
        }
        assert!(ids(b).is_empty());
    }
}
