//! A test engine whose completions and deadlines the test releases by hand,
//! to drive the state machine through exact interleavings.

use super::{Engine, EngineKind, IoOp, Timer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Instant;

#[derive(Default)]
pub struct ManualEngine {
    pub ops: Mutex<Vec<IoOp>>,
    /// Armed timers, with the time each was armed for.
    timers: Mutex<Vec<(Instant, Weak<dyn Timer>)>>,
    pub shut: AtomicBool,
}

impl ManualEngine {
    /// Ops submitted and not yet completed.
    pub fn pending(&self) -> usize {
        self.ops.lock().unwrap().len()
    }

    /// Completes every pending op with its full length (reads fill their
    /// buffer with `fill`), or with `err` when negative.
    pub fn complete_all(&self, err: i32, fill: u8) {
        let ops: Vec<IoOp> = std::mem::take(&mut *self.ops.lock().unwrap());
        for op in ops {
            if err < 0 {
                op.complete(err);
                continue;
            }
            let buf = op.buf();
            if op.kind == super::OpKind::Read && !buf.is_null() {
                // SAFETY: a read's buffer (private memory, or the test's own
                // memory for zero-copy) belongs to this op until it
                // completes, just below, and holds `len` bytes.
                unsafe { std::ptr::write_bytes(buf, fill, op.len as usize) };
            }
            let n = op.len as i32;
            op.complete(n);
        }
    }

    /// Fires every armed timer now, as if its time had come.
    pub fn fire_deadlines(&self) {
        let ts = std::mem::take(&mut *self.timers.lock().unwrap());
        for (at, t) in ts {
            if let Some(t) = t.upgrade() {
                t.on_timer(at);
            }
        }
    }
}

impl Engine for ManualEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Manual
    }
    fn submit(&self, ops: &mut Vec<IoOp>) {
        self.ops.lock().unwrap().append(ops);
    }
    fn arm_timer(&self, at: Instant, timer: Weak<dyn Timer>, _sync: bool) {
        self.timers.lock().unwrap().push((at, timer));
    }
    fn shutdown(&self) {
        self.shut.store(true, Ordering::SeqCst);
    }
}
