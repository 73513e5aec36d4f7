//! Splitting a request into ops and starting them: each region cut into
//! `max_size` pieces, one private-memory slot per piece (the legs of a
//! write share it; waiting when none is free), write data copied in, and
//! the ops handed to the engine in one batch; zero-copy and library-page
//! ops name the caller's memory instead; hedged reads take their slots up
//! front.

use super::Client;
use crate::engine::{IoOp, OpKind};
use crate::error::Result;
use crate::memory::lib_pages;
use crate::memory::pieces;
use crate::memory::pool::{SlotRef, WaitBy};
use crate::request::{CancelReason, Request};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

thread_local! {
    /// The vector [`Client::start`] and `start_zero_copy` build their ops in,
    /// kept between calls.
    static BATCH: std::cell::RefCell<Vec<IoOp>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's op vector from the previous call (empty). Its capacity
/// survives only an engine that drains it: the completion thread's own
/// ring and the test engine do, so a callback that resubmits allocates no
/// vector; the reactor and the thread pool take the vector itself over
/// their channel, so a submission from any other thread allocates one. A
/// nested call (from a notify run inside `submit`) gets a new one.
#[inline]
fn take_batch() -> Vec<IoOp> {
    BATCH
        .with(|b| b.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)))
        .unwrap_or_default()
}

/// Keeps `batch` (emptied by the engine's `submit`, with its capacity
/// unless the engine took it) for the next call.
fn keep_batch(batch: Vec<IoOp>) {
    BATCH.with(|b| {
        if let Ok(mut b) = b.try_borrow_mut() {
            *b = batch;
        }
    });
}

/// Operation `kind` on region `i` of `req`: `len` bytes at byte `off` of
/// the region and of the caller's memory, in private memory `slot` (or,
/// `None`, with no buffer yet). Inlined, so the op is built where it goes.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn region_op(
    req: &Arc<Request>,
    i: usize,
    kind: OpKind,
    off: u64,
    len: u64,
    flush: bool,
    fua: bool,
    slot: Option<SlotRef>,
) -> IoOp {
    spec_op(req, req.spec(i), i, kind, off, len, flush, fua, slot)
}

/// [`region_op`] with region `i`'s spec at hand.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn spec_op(
    req: &Arc<Request>,
    spec: &crate::request::RegionSpec,
    i: usize,
    kind: OpKind,
    off: u64,
    len: u64,
    flush: bool,
    fua: bool,
    slot: Option<SlotRef>,
) -> IoOp {
    let write = kind == OpKind::Write;
    IoOp {
        kind,
        offset: spec.sector * 512 + off,
        len: len as u32,
        pre_flush: flush && write,
        fua: fua && write,
        sync: req.mode.sync,
        dev: Arc::clone(&spec.dev),
        sink: Arc::clone(req) as Arc<dyn crate::engine::OpSink>,
        region: i as u32,
        mem_off: off,
        slot,
        direct: None,
        lib_chunk: None,
    }
}

impl Client {
    /// Takes a slot, handing queued ops to the engine before waiting so
    /// they can run (and free memory) meanwhile. `Ok(None)`: every region
    /// of `req` became final while waiting (cancel, deadline), so nothing
    /// is left to start; `Err`: the client is being destroyed.
    #[inline]
    fn slot(&self, req: &Request, batch: &mut Vec<IoOp>) -> Result<Option<SlotRef>> {
        match self.pool.try_acquire() {
            Some(s) => Ok(Some(s)),
            None => self.wait_for_slot(req, batch),
        }
    }

    /// [`Client::slot`] when all private memory is in use.
    #[cold]
    #[inline(never)]
    fn wait_for_slot(&self, req: &Request, batch: &mut Vec<IoOp>) -> Result<Option<SlotRef>> {
        self.engine.submit(batch);
        crate::engine::wake::flush_deferred_wakes();
        // On the completion thread, the ops holding the memory may be in
        // its own ring: keep reaping that while waiting.
        // Likewise in a SYNC call whose IO runs in the caller's own ring.
        let ring = crate::completion::ring_running_io();
        let own = crate::engine::uring::caller::runs_io();
        let mut drive = || {
            ring.iter().for_each(|r| r.drive_briefly());
            if own {
                crate::engine::uring::caller::drive_briefly();
            }
        };
        let by = if ring.is_some() || own {
            WaitBy::Poll(&mut drive)
        } else {
            WaitBy::Sleep
        };
        self.pool.acquire_unless(&|| req.all_final(), by)
    }

    pub(super) fn start(&self, req: &Arc<Request>, flush: bool, fua: bool) {
        let slot_size = self.pool.slot_size() as u64;
        if req.mode.read_any {
            return self.start_any(req);
        }
        if req.mode.zero_copy || req.mode.lib_pages {
            return self.start_zero_copy(req, flush, fua);
        }
        // The usual read: one region in one slot, one op, no vector.
        if let [spec] = req.specs() {
            let first = spec.count * 512;
            if !req.mode.write && first > 0 && first <= slot_size {
                return self.start_one_read(req, spec, first, flush, fua);
            }
        }
        let n = req.num_regions();
        let bytes = |i: usize| req.spec(i).count * 512;
        let op = |kind, i: usize, off: u64, len: u64, slot: Option<SlotRef>| {
            region_op(req, i, kind, off, len, flush, fua, slot)
        };
        let mut batch = take_batch();
        for i in 0..n {
            if bytes(i) == 0 {
                batch.push(op(OpKind::Flush, i, 0, 0, None));
            }
        }
        let total = (0..n).map(bytes).max().unwrap_or(0);
        let mut off = 0;
        let mut aborted = false;
        while off < total {
            let chunk = slot_size.min(total - off);
            let slot = match self.slot(req, &mut batch) {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(_) => {
                    aborted = true;
                    break;
                }
            };
            if req.mode.write {
                let users = req.fill_write_chunk(off, chunk as usize, &slot);
                if users.is_empty() && req.live_regions() == 0 {
                    break;
                }
                for i in users {
                    let len = slot_size.min(bytes(i as usize) - off);
                    batch.push(op(OpKind::Write, i as usize, off, len, Some(slot.clone())));
                }
            } else {
                // A read names one region: is it still live?
                if req.all_final() {
                    break;
                }
                batch.push(op(OpKind::Read, 0, off, chunk, Some(slot)));
            }
            off += chunk;
        }
        self.engine.submit(&mut batch);
        keep_batch(batch);
        if aborted {
            req.cancel_where(CancelReason::Shutdown, |_| true);
        }
    }

    /// [`Client::start`] of the usual read: one region (`spec`) of `len`
    /// bytes in one slot, one op, no vector.
    #[inline(always)]
    fn start_one_read(
        &self,
        req: &Arc<Request>,
        spec: &crate::request::RegionSpec,
        len: u64,
        flush: bool,
        fua: bool,
    ) {
        // No vector unless it must wait (an empty one still costs its drop).
        let got = match self.pool.try_acquire() {
            Some(s) => Ok(Some(s)),
            None => self.wait_for_slot(req, &mut Vec::new()),
        };
        let slot = match got {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                req.cancel_where(CancelReason::Shutdown, |_| true);
                return;
            }
        };
        // Is the region still live (a wait for memory may have seen it end)?
        if req.all_final() {
            return;
        }
        let mut one = Some(spec_op(
            req,
            spec,
            0,
            OpKind::Read,
            0,
            len,
            flush,
            fua,
            Some(slot),
        ));
        self.engine.submit_one(&mut one);
        if let Some(op) = one {
            let mut batch = take_batch();
            batch.push(op);
            self.engine.submit(&mut batch);
            keep_batch(batch);
        }
    }

    /// Zero-copy and library pages: every op names the caller's memory
    /// directly (checked at submission); no private memory, so nothing
    /// waits and every op the request counted is started.
    fn start_zero_copy(&self, req: &Arc<Request>, flush: bool, fua: bool) {
        let piece = self.pool.slot_size() as u64;
        let kind = if req.mode.write {
            OpKind::Write
        } else {
            OpKind::Read
        };
        let mut batch = take_batch();
        for i in 0..req.num_regions() {
            let bytes = req.spec(i).count * 512;
            if bytes == 0 {
                batch.push(region_op(req, i, OpKind::Flush, 0, 0, flush, fua, None));
            }
            for (off, len) in pieces(bytes, piece) {
                let direct = req.direct_addr(off, len);
                batch.push(IoOp {
                    direct: Some(direct),
                    lib_chunk: req
                        .mode
                        .lib_pages
                        .then(|| lib_pages::chunk_index(direct.addr())),
                    ..region_op(req, i, kind, off, len, flush, fua, None)
                });
            }
        }
        self.engine.submit(&mut batch);
        keep_batch(batch);
    }

    /// Hedged read: one slot per region, taken now (so starting a hedge
    /// never waits for memory), then the request starts them in turn
    /// ([`RequestOwner::start_regions`]).
    fn start_any(&self, req: &Arc<Request>) {
        let n = req.num_regions();
        let mut regions = Vec::with_capacity(n);
        for i in 0..n {
            let slot = match self.slot(req, &mut Vec::new()) {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(_) => {
                    req.cancel_where(CancelReason::Shutdown, |_| true);
                    return;
                }
            };
            regions.push((i as u32, slot));
        }
        let rest = regions.split_off(1);
        let first = regions.pop().expect("at least one region");
        let ms = self.hedge_ms.load(Ordering::Relaxed);
        let every = (ms > 0).then(|| Duration::from_millis(ms as u64));
        req.start_any(first, rest, every);
    }
}
