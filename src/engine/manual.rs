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
    fn arm_on_engine_thread(&self, at: Instant, timer: Weak<dyn Timer>) {
        self.timers.lock().unwrap().push((at, timer));
    }
    fn shutdown(&self) {
        self.shut.store(true, Ordering::SeqCst);
    }
}

/// Doubles for engine tests: a request stand-in that records what an
/// engine tells it, a timer that counts its firings, and ops on a
/// temporary file whose every 512-byte sector holds its own number.
pub mod kit {
    use crate::device::Device;
    use crate::engine::{IoOp, OpKind, OpSink, Timer};
    use crate::memory::pool::SlotRef;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// Called with the region of each op that ends (after it is recorded).
    type Hook = Box<dyn FnMut(u32) + Send>;

    /// Stands in for a request: records each op's end.
    #[derive(Default)]
    pub struct Recorder {
        /// (region, result, first byte of the op's private memory).
        pub done: Mutex<Vec<(u32, i32, Option<u8>)>>,
        pub detached: AtomicBool,
        pub demotes: AtomicU32,
        /// `demote` answers no (the pages are gone).
        pub refuse_demote: AtomicBool,
        pub on_done: Mutex<Option<Hook>>,
    }

    impl Recorder {
        pub fn count(&self) -> usize {
            self.done.lock().unwrap().len()
        }
        /// (region, result) of each op that ended, in region order.
        pub fn results(&self) -> Vec<(u32, i32)> {
            let mut v: Vec<(u32, i32)> = self
                .done
                .lock()
                .unwrap()
                .iter()
                .map(|d| (d.0, d.1))
                .collect();
            v.sort();
            v
        }
    }

    impl OpSink for Recorder {
        fn op_done(
            self: Arc<Self>,
            region: u32,
            _mem_off: u64,
            slot: Option<SlotRef>,
            len: u32,
            res: i32,
        ) {
            let first = slot.filter(|_| len > 0).map(|s| s.bytes(1)[0]);
            self.done.lock().unwrap().push((region, res, first));
            if let Some(h) = self.on_done.lock().unwrap().as_mut() {
                h(region);
            }
        }
        fn detached(&self) -> bool {
            self.detached.load(Ordering::SeqCst)
        }
        fn demote(&self, _region: u32) -> bool {
            self.demotes.fetch_add(1, Ordering::SeqCst);
            !self.refuse_demote.load(Ordering::SeqCst)
        }
    }

    /// A timer that counts how often it fired.
    #[derive(Default)]
    pub struct Fired(pub AtomicU32);

    impl Timer for Fired {
        fn on_timer(self: Arc<Self>, _now: Instant) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Fired {
        pub fn times(&self) -> u32 {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A temporary 256 KiB file (removed on drop) whose sector `n` is
    /// filled with the byte `n`.
    pub struct TempDev {
        path: std::path::PathBuf,
        pub dev: Arc<Device>,
    }

    impl TempDev {
        pub fn new(tag: &str) -> TempDev {
            let path = std::env::temp_dir().join(format!(
                "dmio-kit-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let data: Vec<u8> = (0..512u32).flat_map(|s| [s as u8; 512]).collect();
            std::fs::write(&path, data).unwrap();
            let dev = Device::open(path.to_str().unwrap(), crate::device::OPEN_BUFFERED).unwrap();
            TempDev {
                path,
                dev: Arc::new(dev),
            }
        }
    }

    impl Drop for TempDev {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// An op of region `region` on `dev`: `len` bytes at byte `offset`.
    pub fn op(
        kind: OpKind,
        dev: &TempDev,
        sink: &Arc<Recorder>,
        region: u32,
        offset: u64,
        len: u32,
        slot: Option<SlotRef>,
    ) -> IoOp {
        IoOp {
            kind,
            offset,
            len,
            pre_flush: false,
            fua: false,
            sync: false,
            dev: Arc::clone(&dev.dev),
            sink: Arc::clone(sink) as Arc<dyn OpSink>,
            region,
            mem_off: 0,
            slot,
            direct: None,
            lib_chunk: None,
        }
    }
}
