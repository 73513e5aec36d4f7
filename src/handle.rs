//! `struct dm_io_handle`: references to a request, counted.
//!
//! The library holds one reference from submission until every final
//! notification has been delivered (so `state->hdl` is valid during notify);
//! the caller holds one per `dm_io(.., &hdl)` / `dm_io_handle_get`. The entry
//! disappears when both are gone; a handle used after that is refused.

use crate::registry::Registry;
use crate::request::Request;
use std::sync::Arc;

struct Entry {
    req: Arc<Request>,
    user_refs: u32,
    lib_ref: bool,
}

static HANDLES: Registry<Entry> = Registry::new();

/// Registers a new request with the library's reference and `user_refs`.
pub fn register(req: Arc<Request>, user_refs: u32) -> usize {
    HANDLES.insert(Entry {
        req,
        user_refs,
        lib_ref: true,
    })
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

/// Adds a caller reference. `None` for a dead or unknown handle.
pub fn get(token: usize) -> Option<()> {
    HANDLES.with(token, |e| e.user_refs += 1)
}

/// Drops a caller reference: `Some(true)` while the caller holds more,
/// `Some(false)` when that was its last one, `None` when the caller held
/// none (unknown handle, or more puts than gets).
pub fn put(token: usize) -> Option<bool> {
    HANDLES
        .update(token, |e| {
            if e.user_refs == 0 {
                return (false, None);
            }
            e.user_refs -= 1;
            (e.user_refs == 0 && !e.lib_ref, Some(e.user_refs > 0))
        })
        .flatten()
}

/// Drops the library's reference (after the last final notification).
pub fn release_lib(token: usize) {
    HANDLES.update(token, |e| {
        e.lib_ref = false;
        (e.user_refs == 0, ())
    });
}

/// Drops a handle that never reached the caller (submission refused).
pub fn discard(token: usize) {
    HANDLES.remove(token);
}
