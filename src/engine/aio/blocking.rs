//! Ops that AIO would run synchronously inside `io_submit`, stalling the
//! reactor and every timer it keeps: IO on a device opened without
//! O_DIRECT (buffered IO is not asynchronous under AIO), and flushes on
//! kernels without `IOCB_CMD_FDSYNC`. They go to a thread-pool engine
//! started on first use, before fault rules see them (that engine applies
//! them), so each op is admitted once. Ops the kernel refused to start
//! without blocking (`RWF_NOWAIT`: a full device queue, a write that must
//! allocate) come here after the AIO core admitted them, and start at once
//! ([`Blocking::run_admitted`]). So do reads and writes of block devices too
//! large for `RWF_NOWAIT` ([`Blocking::wants`]): `io_submit` must never
//! wait for a tag of a device.

use crate::engine::threads::ThreadsEngine;
use crate::engine::{Engine, IoOp, OpKind};
use std::sync::{Arc, Mutex};

pub(super) struct Blocking {
    max_workers: usize,
    /// Whether flushes must come here ([`super::sys::has_fdsync`]).
    flushes: bool,
    pool: Mutex<Pool>,
}

enum Pool {
    NotStarted,
    Running(Arc<ThreadsEngine>),
    /// Starting it failed (errno), or the engine shut down before it was needed.
    Refused(i32),
}

impl Blocking {
    pub(super) fn new(max_workers: usize, flushes: bool) -> Blocking {
        Blocking {
            max_workers,
            flushes,
            pool: Mutex::new(Pool::NotStarted),
        }
    }

    /// Whether `op` must run here rather than through AIO. On a block
    /// device that includes reads and writes too large for `RWF_NOWAIT`
    /// (past [`super::ring::NOWAIT_MAX`]): without it `io_submit` waits for
    /// a free tag of the device, and on a hung device whose tags are all
    /// held it would wait for good, stalling the reactor and every other
    /// client's IO and timers with it. (Flushes need no such care: the
    /// kernel runs an AIO fdatasync on a workqueue, never in `io_submit`.)
    #[inline]
    pub(super) fn wants(&self, op: &IoOp) -> bool {
        !op.dev.direct()
            || (self.flushes && (op.kind == OpKind::Flush || op.pre_flush))
            || (op.dev.is_block_device()
                && op.kind != OpKind::Flush
                && op.len > super::ring::NOWAIT_MAX)
    }

    /// Moves the ops that must run here out of `ops` and starts them.
    pub(super) fn take(&self, ops: &mut Vec<IoOp>) {
        if !ops.iter().any(|op| self.wants(op)) {
            return;
        }
        let (mut mine, rest): (Vec<IoOp>, Vec<IoOp>) = std::mem::take(ops)
            .into_iter()
            .partition(|op| self.wants(op));
        *ops = rest;
        plain_for_threads(&mut mine);
        match self.pool() {
            Ok(t) => t.submit(&mut mine),
            Err(e) => mine.into_iter().for_each(|op| op.complete(-e)),
        }
    }

    /// Runs ops the AIO core already admitted (fault rules applied) and
    /// the kernel would not start without blocking (after
    /// [`plain_for_threads`]).
    pub(super) fn run_admitted(&self, ops: Vec<IoOp>) {
        match self.pool() {
            Ok(t) => t.start_admitted(ops),
            Err(e) => ops.into_iter().for_each(|op| op.complete(-e)),
        }
    }

    /// The pool, started on first use.
    fn pool(&self) -> std::result::Result<Arc<ThreadsEngine>, i32> {
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Pool::NotStarted = *p {
            *p = match ThreadsEngine::new(self.max_workers) {
                Ok(t) => Pool::Running(t),
                Err(e) => Pool::Refused(e.errno),
            };
        }
        match &*p {
            Pool::Running(t) => Ok(Arc::clone(t)),
            Pool::Refused(e) => Err(*e),
            Pool::NotStarted => Err(libc::EIO),
        }
    }

    /// Whether the pool ever started (tests).
    #[cfg(test)]
    pub(super) fn started(&self) -> bool {
        matches!(
            *self.pool.lock().unwrap_or_else(|e| e.into_inner()),
            Pool::Running(_)
        )
    }

    /// The engine shuts down: so does the pool, if it ever started (it
    /// finishes the ops it has first).
    pub(super) fn shutdown(&self) {
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        match &*p {
            Pool::Running(t) => t.shutdown(),
            _ => *p = Pool::Refused(libc::ESHUTDOWN),
        }
    }
}

/// Reads into library pages among `ops`, which threads are about to run:
/// a thread hands the read's address to the kernel only when it runs it,
/// after a cancel may have mapped fresh pages there, so these run as plain
/// reads, which a cancel waits for (`OpSink::demote`); one whose pages a
/// cancel detached already ends now, unstarted.
pub(super) fn plain_for_threads(ops: &mut Vec<IoOp>) {
    if ops.iter().all(|op| op.lib_chunk.is_none()) {
        return;
    }
    for op in std::mem::take(ops) {
        if op.lib_chunk.is_some() && (op.sink.detached() || !op.sink.demote(op.region)) {
            op.complete(-libc::ECANCELED);
        } else {
            ops.push(op);
        }
    }
}
