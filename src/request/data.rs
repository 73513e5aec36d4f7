//! The data path of a request: the caller's memory for zero-copy and
//! library-page ops, write data copied into private memory, and each op's
//! result (a read's data copied to the caller, the region's end). Copies
//! happen under the request's lock and only while the region is live.

use super::{Request, State};
use crate::memory::caller::CallerPtr;
use crate::memory::pool::SlotRef;
use std::sync::Arc;

impl Request {
    /// Zero-copy: the address of the caller's bytes `[off, off + len)`,
    /// which the submit checks made sure lie in one segment.
    pub fn direct_addr(&self, off: u64, len: u64) -> CallerPtr {
        self.mem
            .span_addr(off as usize, len as usize)
            .expect("checked at submission")
    }

    /// Write path: copies the caller's bytes `[off, off + len)` into `slot`
    /// if any live region still needs them, and returns the indices of the
    /// live regions whose data reaches `off`. Copying under the lock means a
    /// region cancelled meanwhile never has its memory read again.
    pub fn fill_write_chunk(&self, off: u64, len: usize, slot: &SlotRef) -> Vec<u32> {
        let g = self.lock();
        let users: Vec<u32> = g
            .regions
            .iter()
            .enumerate()
            .filter(|(i, r)| r.fin.is_none() && self.specs[*i].count * 512 > off)
            .map(|(i, _)| i as u32)
            .collect();
        if !users.is_empty() {
            // SAFETY: the regions in `users` are live, so the caller's memory
            // is still lent to us; `off + len` is within it (checked at submit).
            unsafe { self.mem.copy_out(off as usize, slot.bytes_mut(len)) };
        }
        users
    }

    /// Result of one operation of region `region`. For reads, `slot` holds
    /// the data for caller bytes `[mem_off, mem_off + expected)`. The slot
    /// is released here, before the region's final notification is queued.
    pub(super) fn op_ended(
        self: &Arc<Self>,
        region: u32,
        mem_off: u64,
        slot: Option<SlotRef>,
        expected: u32,
        res: i32,
    ) {
        if self.mode.read_any {
            return self.any_done(region as usize, slot, expected, res);
        }
        let mut g = self.lock();
        if g.detached_ops > 0 {
            g.detached_ops -= 1;
            self.owner.detached_ops(-1);
        }
        let i = region as usize;
        let r = &mut g.regions[i];
        if r.fin.is_none() {
            if res < 0 {
                if r.error == 0 {
                    r.error = res;
                }
            } else if res as u32 != expected {
                if r.error == 0 {
                    r.error = -libc::EIO;
                }
            } else if !self.mode.write && r.error == 0 {
                if let Some(s) = &slot {
                    // SAFETY: the region is live, so the caller's memory is
                    // still lent to us; bounds were checked at submission.
                    unsafe {
                        self.mem
                            .copy_in(mem_off as usize, s.bytes(expected as usize))
                    };
                }
            }
        }
        drop(slot);
        let r = &mut g.regions[i];
        if r.fin.is_some() {
            return;
        }
        r.outstanding = r.outstanding.saturating_sub(1);
        if r.outstanding == 0 {
            let (state, err) = if r.cancel_pending != 0 {
                (State::Cancelled, r.cancel_pending)
            } else if r.error == 0 {
                (State::Ok, 0)
            } else {
                (State::Error, r.error)
            };
            self.finalize(&mut g, i, state, err);
        }
    }
}
