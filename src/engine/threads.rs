//! The thread-pool engine, for where io_uring is refused (seccomp profiles
//! of containers, `kernel.io_uring_disabled`, old kernels).
//!
//! A dispatcher thread owns the [`Sched`] (deadlines, delayed and held ops)
//! exactly as the io_uring reactor does; ready ops go to a bounded set of
//! worker threads doing blocking `pread`/`pwritev2`. A worker stuck in the
//! kernel keeps its op, and so the op's private memory, until the call
//! returns; after `shutdown` the dispatcher stays until every op is done.
//!
//! One engine may serve many clients (a shard of the shared engine): the
//! workers are theirs together. A worker is started whenever the ops
//! handed over and not yet done outnumber the workers, up to the engine's
//! bound, so an op never waits behind IO stuck in the kernel (another
//! client's hung device included) while the bound has room. A worker idle
//! for [`IDLE_EXIT`] ends.

use super::sched::Sched;
use super::{Engine, EngineKind, IoOp, OpKind, Timer};
use crate::error::{Error, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

enum Msg {
    Ops(Vec<IoOp>),
    Deadline(Instant, Weak<dyn Timer>),
    Done,
    /// A worker ended (idle).
    Exit,
    Shutdown,
}

/// A worker with nothing to do for this long ends.
const IDLE_EXIT: Duration = Duration::from_secs(5);

pub struct ThreadsEngine {
    tx: Sender<Msg>,
}

impl ThreadsEngine {
    /// Starts the dispatcher; workers (at most `max_workers`) start on demand.
    pub fn new(max_workers: usize) -> Result<Arc<ThreadsEngine>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (wtx, wrx) = crossbeam_channel::unbounded();
        let d = Dispatcher {
            rx,
            tx: tx.clone(),
            work: wtx,
            work_rx: wrx,
            workers: 0,
            max_workers: max_workers.max(1),
            inflight: 0,
            sched: Sched::default(),
            shutting: false,
        };
        std::thread::Builder::new()
            .name("dmio-dispatch".into())
            .spawn(move || d.run())
            .map_err(|e| Error::from_io("spawn dispatcher", &e))?;
        Ok(Arc::new(ThreadsEngine { tx }))
    }
}

impl Engine for ThreadsEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Threads
    }

    fn submit(&self, ops: &mut Vec<IoOp>) {
        if ops.is_empty() {
            return;
        }
        if let Err(e) = self.tx.send(Msg::Ops(std::mem::take(ops))) {
            if let Msg::Ops(ops) = e.into_inner() {
                for op in ops {
                    op.complete(-libc::ESHUTDOWN);
                }
            }
        }
    }

    fn arm_on_engine_thread(&self, at: Instant, timer: Weak<dyn Timer>) {
        let _ = self.tx.send(Msg::Deadline(at, timer));
    }

    fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
    }
}

struct Dispatcher {
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    work: Sender<IoOp>,
    work_rx: Receiver<IoOp>,
    workers: usize,
    max_workers: usize,
    inflight: usize,
    sched: Sched,
    shutting: bool,
}

impl Dispatcher {
    fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            let now = Instant::now();
            self.sched.expire(now, &mut ready);
            for op in ready.drain(..) {
                self.dispatch(op);
            }
            if self.shutting && self.inflight == 0 && self.sched.parked() == 0 {
                return;
            }
            let msg = match self.sched.next_wakeup(now) {
                Some(at) => match self
                    .rx
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match self.rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            self.take(msg);
            while let Ok(m) = self.rx.try_recv() {
                self.take(m);
            }
        }
    }

    fn take(&mut self, m: Msg) {
        match m {
            Msg::Ops(ops) => {
                for op in ops {
                    if let Some(op) = self.sched.admit(op) {
                        self.dispatch(op);
                    }
                }
            }
            Msg::Deadline(at, req) => self.sched.arm(at, req),
            Msg::Done => self.inflight -= 1,
            Msg::Exit => {
                self.workers -= 1;
                // An op handed over as that worker left waits for a worker.
                if self.inflight > self.workers {
                    self.spawn_worker();
                }
            }
            Msg::Shutdown => {
                self.shutting = true;
                self.sched.clear_deadlines();
            }
        }
    }

    /// Hands `op` to the workers, starting one more when the ops handed
    /// over and not yet done outnumber them: an op never waits in the
    /// queue behind one stuck in the kernel while the pool has room. (A
    /// count of idle workers cannot tell: a worker about to take an op
    /// already queued still counts as idle, so the next op would queue
    /// behind it.)
    fn dispatch(&mut self, op: IoOp) {
        self.inflight += 1;
        if self.inflight > self.workers {
            self.spawn_worker();
        }
        if let Err(e) = self.work.send(op) {
            self.inflight -= 1;
            e.into_inner().complete(-libc::EIO);
        }
    }
}

impl Dispatcher {
    fn spawn_worker(&mut self) {
        if self.workers >= self.max_workers {
            return;
        }
        let rx = self.work_rx.clone();
        let done = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("dmio-io".into())
            .spawn(move || worker(rx, done));
        if spawned.is_ok() {
            self.workers += 1;
        }
    }
}

fn worker(rx: Receiver<IoOp>, done: Sender<Msg>) {
    loop {
        let op = match rx.recv_timeout(IDLE_EXIT) {
            Ok(op) => op,
            Err(RecvTimeoutError::Timeout) => {
                let _ = done.send(Msg::Exit);
                return;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let res = perform(&op);
        op.complete(res);
        if done.send(Msg::Done).is_err() {
            return;
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn fdatasync(fd: i32) -> i32 {
    loop {
        // SAFETY: fdatasync on a descriptor kept open by the op's Arc<Device>.
        if unsafe { libc::fdatasync(fd) } == 0 {
            return 0;
        }
        let e = errno();
        if e != libc::EINTR {
            return -e;
        }
    }
}

/// Performs one op with blocking calls; returns bytes done or `-errno`.
fn perform(op: &IoOp) -> i32 {
    let fd = op.dev.fd();
    if op.kind == OpKind::Flush || op.pre_flush {
        let r = fdatasync(fd);
        if r < 0 || op.kind == OpKind::Flush {
            return r;
        }
    }
    let buf = op.buf();
    let len = op.len as usize;
    let mut done = 0usize;
    while done < len {
        let off = (op.offset + done as u64) as libc::off_t;
        // SAFETY: `buf..buf+len` lies in the op's private slot, owned by
        // the op (which this worker holds) until `complete`, or for a
        // zero-copy op in the caller's memory, lent until the region is
        // final, which is never before `complete`; the fd is kept open by
        // the op's Arc<Device>.
        let n = unsafe {
            let p = buf.add(done);
            if op.kind == OpKind::Read {
                libc::pread(fd, p as *mut libc::c_void, len - done, off)
            } else {
                let iov = libc::iovec {
                    iov_base: p as *mut libc::c_void,
                    iov_len: len - done,
                };
                let flags = if op.fua { libc::RWF_DSYNC } else { 0 };
                libc::pwritev2(fd, &iov, 1, off, flags)
            }
        };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return -e;
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    done as i32
}
