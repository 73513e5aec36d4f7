//! The gate in front of the kernel: ops of a block device wait here, in
//! their ring, while their disk's request queue has no free slot
//! ([`crate::device::slots`]), and go on as slots come back. Shared by
//! the io_uring and AIO cores.
//!
//! A ring pops ops from the front of its backlog. An op of a capped disk
//! takes a slot on its way to the kernel ([`Gate::pass`]) or stays here;
//! [`Gate::release`] moves waiting ops back to the front of the backlog
//! once they have their slots, and counts them, so that the ring knows
//! which ops it pops already hold one ([`Gate::popped`]). The ring gives
//! the slot back when the op leaves the kernel ([`give_back`]).

use super::{IoOp, Wake};
use crate::device::slots::{Listed, NOT_LISTED};
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;

/// The ops of one disk waiting for a slot, in arrival order (never empty),
/// and where the ring stands on that disk's list of rings to wake.
struct Waiting {
    ops: VecDeque<IoOp>,
    listed: Cell<Listed>,
}

#[derive(Default)]
pub(super) struct Gate {
    /// Ops waiting for a slot, one queue per disk.
    waiting: Vec<Waiting>,
    /// How many ops at the front of the ring's backlog hold their slot.
    held: usize,
}

/// The disk's slots of `op`, as an address to compare.
fn disk(op: &IoOp) -> Option<*const crate::device::slots::KernelSlots> {
    op.dev.kernel_slots().map(std::ptr::from_ref)
}

/// Gives back the slot `op` holds (it left the kernel, or ends without
/// reaching it); nothing for a device without a cap.
#[inline]
pub(super) fn give_back(op: &IoOp) {
    if let Some(s) = op.dev.kernel_slots() {
        s.give_back();
    }
}

impl Gate {
    /// The ring popped the front of its backlog: whether that op already
    /// holds its slot (it came back through [`Gate::release`] or
    /// [`Gate::put_back`]).
    #[inline]
    pub(super) fn popped(&mut self) -> bool {
        let held = self.held > 0;
        self.held -= held as usize;
        held
    }

    /// The ring put `n` ops that hold their slots back at the front of its
    /// backlog.
    pub(super) fn put_back(&mut self, n: usize) {
        self.held += n;
    }

    /// `op` (holding no slot) on its way to the kernel: `Some(op)` once it
    /// holds its disk's slot (or its device has no cap); `None` when it
    /// waits here: ops of its disk wait already (first come, first
    /// served) or no slot is free.
    #[inline]
    pub(super) fn pass(&mut self, op: IoOp) -> Option<IoOp> {
        let Some(slots) = op.dev.kernel_slots() else {
            return Some(op);
        };
        let me = disk(&op);
        if let Some(q) = self.waiting.iter_mut().find(|q| disk(&q.ops[0]) == me) {
            q.ops.push_back(op);
            return None;
        }
        if slots.take() {
            return Some(op);
        }
        self.waiting.push(Waiting {
            ops: VecDeque::from([op]),
            listed: Cell::new(NOT_LISTED),
        });
        None
    }

    /// Moves the waiting ops whose disks have free slots now to the front
    /// of `backlog`, each holding its slot. An awake ring looks here at
    /// every turn; only a ring about to sleep asks to be woken
    /// ([`Gate::slot_freed`]), so a busy ring never takes the list's lock.
    pub(super) fn release(&mut self, backlog: &mut VecDeque<IoOp>) {
        if self.waiting.is_empty() {
            return;
        }
        for q in self.waiting.iter_mut() {
            let slots = q.ops[0].dev.kernel_slots().expect("a waiting op has a cap");
            let mut n = 0;
            while n < q.ops.len() && slots.take() {
                n += 1;
            }
            for op in q.ops.drain(..n).rev() {
                backlog.push_front(op);
            }
            self.held += n;
        }
        self.waiting.retain(|q| !q.ops.is_empty());
    }

    /// Ops wait here.
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// A ring's last look before it sleeps (after announcing the sleep):
    /// whether a waiting op's disk has a free slot; for each that has none,
    /// `waker` is registered, so a slot given back after this look wakes
    /// the ring.
    pub(super) fn slot_freed<W: Wake + 'static>(&self, waker: &Arc<W>) -> bool {
        if self.waiting.is_empty() {
            return false;
        }
        let w: Arc<dyn Wake> = Arc::clone(waker) as _;
        self.waiting.iter().any(|q| {
            let mut listed = q.listed.get();
            let free = q.ops[0]
                .dev
                .kernel_slots()
                .is_some_and(|s| s.free_or_wait(&w, &mut listed));
            q.listed.set(listed);
            free
        })
    }

    /// Takes every waiting op out (to end them unstarted: their requests
    /// are final), or only those `keep` does not keep.
    pub(super) fn take_unless(&mut self, keep: impl Fn(&IoOp) -> bool) -> Vec<IoOp> {
        let mut out = Vec::new();
        for q in self.waiting.iter_mut() {
            let (gone, stay): (Vec<IoOp>, Vec<IoOp>) = q.ops.drain(..).partition(|op| !keep(op));
            out.extend(gone);
            q.ops.extend(stay);
        }
        self.waiting.retain(|q| !q.ops.is_empty());
        out
    }
}
