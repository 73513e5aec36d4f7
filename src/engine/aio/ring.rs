//! The AIO reactor's core: ops turned into iocbs and submitted in batches,
//! the slab of ops in the kernel keyed by `aio_data`, the backlog (ops
//! waiting for room in the context), the wait, and reaping completions.
//!
//! The thread waits in `io_getevents` on its context. Other threads wake
//! it through the eventfd of its [`Waker`], which an `IOCB_CMD_POLL` in the
//! same context watches, so a wake-up is an event too: at one IO in flight
//! a turn costs two system calls (`io_submit`, `io_getevents`), as fio's
//! `libaio` loop does. Kernels without `IOCB_CMD_POLL` (before 4.18) get
//! the former wait instead: every completion signals the eventfd
//! (`IOCB_FLAG_RESFD`), the thread sleeps in `ppoll` on it, then resets
//! it and reaps (four system calls per turn). The completion thread's core
//! watches the ring of events (without a system call) for a while before
//! it sleeps, as long as events keep coming within
//! [`crate::engine::watch::WATCH_MAX`]
//! ([`Core::with_watch`]).
//!
//! Each op in the kernel has one owner, its slab entry, from the moment its
//! iocb is built until `io_getevents` returns its event; an op the kernel
//! did not take goes back to the front of the backlog. A `DM_IO_FLUSH`
//! write runs in two steps (AIO has no links): an `IOCB_CMD_FDSYNC` first,
//! then, once that has succeeded, the write, in the same slab entry's op.

use super::blocking::Blocking;
use super::sys::{
    Context, IoEvent, Iocb, IOCB_CMD_FDSYNC, IOCB_CMD_POLL, IOCB_CMD_PREAD, IOCB_CMD_PWRITE,
    IOCB_FLAG_RESFD,
};
use crate::engine::gate::{self, Gate};
use crate::engine::reactor::ReactorCore;
use crate::engine::sched::Sched;
use crate::engine::uring::{ppoll_until, Waker};
use crate::engine::watch::{watch, Watch};
use crate::engine::{IoOp, OpKind};
use crate::memory::lib_pages;
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Iocbs per `io_submit` at most.
const BATCH: usize = 64;
/// Events taken per `io_getevents`.
const EVENTS: usize = 256;
/// How long to wait before trying again when the kernel refuses iocbs
/// (`EAGAIN`) with none of ours in flight, so no completion will come.
const RETRY: Duration = Duration::from_millis(1);
/// `aio_data` of the poll on the eventfd (slab indices never reach it).
const POLL_TOKEN: u64 = u64::MAX;
/// Reads and writes of block devices up to this size carry `RWF_NOWAIT`.
/// Larger ones need more than one bio, which the kernel always refuses
/// under `RWF_NOWAIT` (`__blkdev_direct_IO`), so they run on the thread
/// pool ([`super::blocking::Blocking::wants`]): without it `io_submit`
/// would wait for a free tag of the device.
pub(super) const NOWAIT_MAX: u32 = 1 << 20;

/// One AIO context and the ops in it, owned by the reactor thread.
pub(super) struct Core {
    /// Dropped before `waker`: `io_destroy` cancels the poll on its eventfd.
    ctx: Context,
    /// Wake-ups arrive on its eventfd (and completions too without
    /// `poll_wait`).
    pub(super) waker: Arc<Waker>,
    /// The thread waits in `io_getevents`, and an `IOCB_CMD_POLL` on the
    /// eventfd turns wake-ups into events (see the module's doc); decided
    /// once, when the core is made (its iocbs carry `IOCB_FLAG_RESFD` only
    /// without it).
    poll_wait: bool,
    /// The poll on the eventfd is in the kernel.
    poll_armed: bool,
    /// Events the last wait took, at the front of `events`, not yet
    /// completed.
    got: usize,
    /// Ops in the kernel, keyed by their iocb's `aio_data`.
    pub(super) slab: Vec<Option<IoOp>>,
    pub(super) free: Vec<usize>,
    pub(super) inflight: usize,
    cap: usize,
    backlog: VecDeque<IoOp>,
    /// Ops of block devices waiting for a kernel slot of their disk
    /// ([`crate::engine::gate`]); an op in the slab holds one.
    gate: Gate,
    /// The kernel refused iocbs (`EAGAIN`): none is submitted until a
    /// completion makes room (or [`RETRY`] passes with none in flight).
    full: bool,
    sched: Sched,
    ready: Vec<IoOp>,
    iocbs: Vec<Iocb>,
    /// The iocb of the poll on the eventfd ([`Core::arm_poll`]), kept
    /// while it is armed.
    poll_cb: Box<Iocb>,
    events: Vec<IoEvent>,
    /// Where ops go that the kernel would start only by blocking: with it,
    /// reads and writes of block devices carry `RWF_NOWAIT` ([`Core::nowait`]),
    /// so that a full device queue (a hung device) never stalls this thread
    /// inside `io_submit`.
    blocking: Option<Arc<Blocking>>,
    /// Tests: regular files too (ext4 refuses `RWF_NOWAIT` writes into a
    /// hole, which exercises the hand-over without a block device).
    #[cfg(test)]
    pub(super) nowait_files: bool,
    /// Ops for `blocking`, handed over after the batch that found them.
    punted: Vec<IoOp>,
    /// The reads into library pages of the `io_submit` under way
    /// ([`lib_pages::Submitting`]).
    submitting: Vec<lib_pages::Submitting>,
    /// How long the thread watches the kernel's ring before it sleeps
    /// ([`Core::with_watch`]).
    watch: Watch,
    /// When the watch that ended the last wait began (its events are
    /// counted by the reap that follows).
    watch_t0: Option<Instant>,
}

/// The iocb of `op`'s next step, with `aio_data` `idx`: an fdatasync for a
/// flush or before a `DM_IO_FLUSH` write, else the read or write (FUA as
/// `RWF_DSYNC`, and `RWF_NOWAIT` when `nowait`). Its completion is
/// signalled on `resfd` if there is one.
fn iocb(op: &IoOp, idx: usize, resfd: Option<u32>, nowait: bool) -> Iocb {
    let mut cb = Iocb {
        aio_data: idx as u64,
        aio_fildes: op.dev.fd() as u32,
        aio_flags: if resfd.is_some() { IOCB_FLAG_RESFD } else { 0 },
        aio_resfd: resfd.unwrap_or(0),
        ..Iocb::default()
    };
    if op.kind == OpKind::Flush || op.pre_flush {
        cb.aio_lio_opcode = IOCB_CMD_FDSYNC;
        return cb;
    }
    cb.aio_lio_opcode = if op.kind == OpKind::Read {
        IOCB_CMD_PREAD
    } else {
        IOCB_CMD_PWRITE
    };
    cb.aio_buf = op.buf() as u64;
    cb.aio_nbytes = op.len as u64;
    cb.aio_offset = op.offset as i64;
    if op.fua {
        cb.aio_rw_flags |= libc::RWF_DSYNC;
    }
    if nowait {
        cb.aio_rw_flags |= libc::RWF_NOWAIT;
    }
    cb
}

/// Whether `op`'s next step is a read or write (not an fdatasync).
fn is_data(op: &IoOp) -> bool {
    op.kind != OpKind::Flush && !op.pre_flush
}

impl Core {
    /// A core for `ctx`, signalled through `waker`'s eventfd (which must be
    /// non-blocking).
    pub(super) fn new(ctx: Context, waker: Arc<Waker>) -> Core {
        Core::build(ctx, waker, true)
    }

    /// Tests: a core with the wait of kernels without `IOCB_CMD_POLL`.
    #[cfg(test)]
    pub(super) fn without_poll(ctx: Context, waker: Arc<Waker>) -> Core {
        Core::build(ctx, waker, false)
    }

    /// A core; with `poll`, waiting in `io_getevents` if the kernel takes
    /// the poll on the eventfd.
    fn build(ctx: Context, waker: Arc<Waker>, poll: bool) -> Core {
        let cap = ctx.nr.max(1) as usize;
        let mut core = Core {
            ctx,
            waker,
            poll_wait: false,
            poll_armed: false,
            got: 0,
            slab: Vec::new(),
            free: Vec::new(),
            inflight: 0,
            cap,
            backlog: VecDeque::new(),
            gate: Gate::default(),
            full: false,
            sched: Sched::default(),
            ready: Vec::new(),
            iocbs: Vec::with_capacity(BATCH),
            poll_cb: Box::default(),
            events: vec![IoEvent::default(); EVENTS],
            blocking: None,
            punted: Vec::new(),
            submitting: Vec::new(),
            watch: Watch::off(),
            watch_t0: None,
            #[cfg(test)]
            nowait_files: false,
        };
        core.poll_wait = poll && core.arm_poll().is_ok();
        core
    }

    /// Tests: whether the thread waits in `io_getevents` (see the module's doc).
    #[cfg(test)]
    pub(super) fn polls_in_context(&self) -> bool {
        self.poll_wait
    }

    /// Puts the poll on the eventfd into the context (one shot: its event
    /// disarms it); the errno if the kernel refuses it.
    fn arm_poll(&mut self) -> std::result::Result<(), i32> {
        // In the core's own box, not on the stack: the event gives the
        // iocb's address back, and tools that read the iocb there when
        // the event comes (valgrind's `io_getevents`) must find it, not
        // whatever the stack holds by then.
        *self.poll_cb = Iocb {
            aio_data: POLL_TOKEN,
            aio_lio_opcode: IOCB_CMD_POLL,
            aio_fildes: self.waker.efd.as_raw_fd() as u32,
            aio_buf: libc::POLLIN as u64,
            ..Iocb::default()
        };
        let mut ptrs = [&mut *self.poll_cb as *mut Iocb];
        // SAFETY: one live iocb, copied by the kernel during the call; a
        // poll names no buffer, and its fd, our eventfd, stays open until
        // the context is destroyed (`ctx` is dropped before `waker`), which
        // cancels the poll.
        match unsafe { self.ctx.submit(&mut ptrs) } {
            Ok(1) => {
                self.poll_armed = true;
                Ok(())
            }
            Ok(_) => Err(libc::EAGAIN),
            Err(e) => Err(e),
        }
    }

    /// The thread watches the kernel's ring before it sleeps
    /// ([`crate::engine::watch`]): for the completion thread, whose
    /// callbacks keep a queue depth. Only when the wait is in
    /// `io_getevents` and the ring can be read without a system call.
    pub(super) fn with_watch(mut self) -> Core {
        if self.poll_wait && self.ctx.ring_mapped() {
            self.watch = Watch::wanted();
        }
        self
    }

    /// Tests: how long the next wait watches the ring first (ns).
    #[cfg(test)]
    pub(super) fn watch_ns(&self) -> u32 {
        self.watch.ns()
    }

    /// Reads and writes then carry `RWF_NOWAIT`, and those the kernel will
    /// not start without blocking run on `blocking`'s threads instead.
    pub(super) fn with_blocking(mut self, blocking: Arc<Blocking>) -> Core {
        self.blocking = Some(blocking);
        self
    }

    /// Whether `op`'s next step is submitted with `RWF_NOWAIT` (decided the
    /// same way when its event comes back). Only on block devices: there
    /// the kernel refuses only when the device's queue is full, while a
    /// file system refuses far more (every write into a hole of an ext4
    /// file), and each refusal costs a hand-over to a thread.
    fn nowait(&self, op: &IoOp) -> bool {
        #[cfg(test)]
        let files = self.nowait_files;
        #[cfg(not(test))]
        let files = false;
        self.blocking.is_some()
            && is_data(op)
            && op.len <= NOWAIT_MAX
            && (files || op.dev.is_block_device())
    }

    /// Hands the ops the kernel would not start without blocking to the
    /// thread pool.
    fn punt(&mut self) {
        if self.punted.is_empty() {
            return;
        }
        let mut ops = std::mem::take(&mut self.punted);
        // Run by a thread, they leave the count of ops the ring has in
        // the kernel.
        ops.iter().for_each(gate::give_back);
        super::blocking::plain_for_threads(&mut ops);
        match &self.blocking {
            Some(b) => b.run_admitted(ops),
            None => ops.into_iter().for_each(|op| op.complete(-libc::EAGAIN)),
        }
    }

    /// [`Core::pump`], reading the clock only when a timer, delayed or
    /// held op needs it.
    pub(super) fn pump_lazy(&mut self) {
        if self.sched.needs_clock() {
            self.pump(Instant::now());
        } else {
            self.submit_backlog();
        }
    }

    /// Ops in the kernel, and ops queued not yet submitted.
    pub(super) fn depth(&self) -> (usize, usize) {
        (self.inflight, self.backlog.len())
    }

    fn runnable(&self) -> bool {
        !self.backlog.is_empty() && self.inflight < self.cap && !self.full
    }

    /// Puts `op` in a free slab entry (its owner until its event is
    /// reaped or the kernel refuses it) and returns the entry.
    fn own(&mut self, op: IoOp) -> usize {
        let idx = self.free.pop().unwrap_or_else(|| {
            self.slab.push(None);
            self.slab.len() - 1
        });
        self.slab[idx] = Some(op);
        self.inflight += 1;
        idx
    }

    /// Takes the op of entry `idx` out of the slab.
    fn disown(&mut self, idx: usize) -> Option<IoOp> {
        let op = self.slab.get_mut(idx)?.take()?;
        self.free.push(idx);
        self.inflight -= 1;
        Some(op)
    }

    /// Submits the backlog in batches of up to [`BATCH`] iocbs, as far as
    /// the context has room.
    pub(super) fn submit_backlog(&mut self) {
        let resfd = (!self.poll_wait).then(|| self.waker.efd.as_raw_fd() as u32);
        self.gate.release(&mut self.backlog);
        while self.runnable() {
            let mut iocbs = std::mem::take(&mut self.iocbs);
            iocbs.clear();
            while iocbs.len() < BATCH && self.inflight < self.cap {
                let Some(op) = self.backlog.pop_front() else {
                    break;
                };
                let held = self.gate.popped();
                // Library pages: `io_submit` pins the pages mapped at the
                // read's address before it returns, so a read that starts
                // before a cancel detaches them finishes into them, unseen
                // (the detach waits for this call, `lib_pages::Submitting`);
                // one that a cancel detached already must not start.
                if let Some(c) = op.lib_chunk {
                    let submitting = lib_pages::Submitting::start(c);
                    if op.sink.detached() {
                        drop(submitting);
                        if held {
                            gate::give_back(&op);
                        }
                        op.complete(-libc::ECANCELED);
                        continue;
                    }
                    self.submitting.push(submitting);
                }
                // A kernel slot of the op's disk, unless it holds one.
                let op = if held {
                    op
                } else {
                    match self.gate.pass(op) {
                        Some(op) => op,
                        None => continue,
                    }
                };
                let nowait = self.nowait(&op);
                let idx = self.own(op);
                let op = self.slab[idx].as_ref().expect("just owned");
                iocbs.push(iocb(op, idx, resfd, nowait));
            }
            let n = iocbs.len();
            let mut ptrs = [std::ptr::null_mut::<Iocb>(); BATCH];
            for (p, cb) in ptrs.iter_mut().zip(iocbs.iter_mut()) {
                *p = cb;
            }
            let mut done = 0;
            while done < n {
                // SAFETY: `ptrs[done..n]` point into `iocbs`, alive across
                // the call. Each iocb's `aio_buf` points into the private
                // slot of an op that its slab entry owns until the event for
                // that `aio_data` is reaped in `reap` (or taken back below if
                // the kernel refuses the iocb), or for a zero-copy op into
                // the caller's memory, lent until the region is final, which
                // is never before that op completes; each fd is kept open by
                // its op's `Arc<Device>`.
                let r = unsafe { self.ctx.submit(&mut ptrs[done..n]) };
                match r {
                    Ok(0) | Err(libc::EAGAIN) => {
                        self.full = true;
                        break;
                    }
                    Ok(k) => done += k,
                    // The first iocb left is refused: its op ends with the
                    // errno (or, when the file cannot do `RWF_NOWAIT`, runs
                    // on the thread pool), the rest go on.
                    Err(e) => {
                        if let Some(op) = self.disown(iocbs[done].aio_data as usize) {
                            if e == libc::EOPNOTSUPP && self.nowait(&op) {
                                self.punted.push(op);
                            } else {
                                gate::give_back(&op);
                                op.complete(-e);
                            }
                        }
                        done += 1;
                    }
                }
            }
            // The reads into library pages are pinned, refused or back
            // in the backlog (where they look at the mark again).
            self.submitting.clear();
            // What the kernel did not take goes back, in order, with the
            // slots the ops hold.
            for cb in iocbs[done..n].iter().rev() {
                if let Some(op) = self.disown(cb.aio_data as usize) {
                    self.backlog.push_front(op);
                    self.gate.put_back(1);
                }
            }
            self.iocbs = iocbs;
        }
        self.punt();
    }

    /// Resets the eventfd; whether anything was signalled since the last
    /// reset (a completion or a wake-up).
    fn take_signal(&mut self) -> bool {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into our own u64 from our non-blocking eventfd.
        let r = unsafe {
            libc::read(
                self.waker.efd.as_raw_fd(),
                &mut count as *mut u64 as *mut libc::c_void,
                8,
            )
        };
        r == 8
    }

    /// Whether events may be waiting to be reaped: the kernel's ring is not
    /// empty; without `poll_wait`, the eventfd was signalled since the last
    /// reset (which this resets: the kernel posts an event before it
    /// signals it, so an event not reaped now signals again and ends the
    /// next wait at once).
    fn may_have_events(&mut self) -> bool {
        if self.poll_wait {
            self.ctx.has_events()
        } else {
            self.take_signal() && self.inflight > 0
        }
    }
}

impl ReactorCore for Core {
    fn sched_and_backlog(&mut self) -> (&mut Sched, &mut VecDeque<IoOp>) {
        (&mut self.sched, &mut self.backlog)
    }

    /// No op in the kernel, queued or parked.
    fn idle(&self) -> bool {
        self.inflight == 0
            && self.backlog.is_empty()
            && self.gate.is_empty()
            && self.sched.parked() == 0
    }

    /// Fires due timers and submits ready ops.
    fn pump(&mut self, now: Instant) {
        if self.sched.needs_clock() {
            self.sched.expire(now, &mut self.ready);
            if !self.ready.is_empty() {
                self.backlog.extend(self.ready.drain(..));
            }
        }
        self.submit_backlog();
    }

    /// Unless there is work already (`pending()`, checked after announcing
    /// the sleep so a waker cannot be missed), sleeps until a completion or
    /// a wake-up is signalled on the eventfd, the next timer, or `max`.
    fn wait(&mut self, now: Option<Instant>, pending: &dyn Fn() -> bool, max: Option<Duration>) {
        if self.runnable() || pending() || self.got > 0 {
            return;
        }
        let mut max = max;
        if self.full && self.inflight == 0 {
            // Refused with nothing of ours in the kernel: no completion will
            // make room, so look again soon.
            self.full = false;
            max = Some(max.map_or(RETRY, |m| m.min(RETRY)));
        }
        if self.poll_wait && !self.poll_armed && self.arm_poll().is_err() {
            // No room for the poll now: a wake-up would not end the wait,
            // so look again soon.
            max = Some(max.map_or(RETRY, |m| m.min(RETRY)));
        }
        let at = self.sched.sleep_until(now, max);
        // Watch the ring first (the completion thread, with ops in the
        // kernel): an event that comes meanwhile costs no sleep, and no
        // wake-up of this thread's idle CPU.
        let watched = self.watch.wants(self.inflight).then(Instant::now);
        if let Some(t0) = watched {
            let ctx = &self.ctx;
            if let Some(end) = self.watch.end(t0, at) {
                if watch(end, &mut || ctx.has_events() || pending()) {
                    // The reap that follows counts the events for the watch.
                    self.watch_t0 = Some(t0);
                    return;
                }
            }
        }
        if !self
            .waker
            .announce_sleep(at, &|| pending() || self.gate.slot_freed(&self.waker))
        {
            return;
        }
        let r = if self.poll_wait {
            match self.ctx.wait(&mut self.events, at) {
                Ok(n) => {
                    self.got = n;
                    Ok(())
                }
                Err(e) => Err(std::io::Error::from_raw_os_error(e)),
            }
        } else {
            ppoll_until(self.waker.efd.as_raw_fd(), at)
        };
        self.waker.sleeping.store(false, Ordering::SeqCst);
        if let Some(t0) = watched {
            let events = self.events[..self.got]
                .iter()
                .filter(|e| e.data != POLL_TOKEN);
            self.watch.adapt(t0, events.count());
        }
        if let Err(e) = r {
            eprintln!("libdmio: waiting for AIO completions failed: {e}");
            std::thread::sleep(RETRY);
        }
    }

    /// Completes the ops whose events have arrived: those the wait took,
    /// then what `io_getevents` gives while the ring has more.
    fn reap(&mut self) {
        let mut n = std::mem::take(&mut self.got);
        let watched = self.watch_t0.take();
        if n == 0 && !self.may_have_events() {
            if let Some(t0) = watched {
                self.watch.adapt(t0, 0);
            }
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        let mut completed = 0;
        loop {
            if n == 0 {
                n = self.ctx.reap(&mut events);
                if n == 0 {
                    break;
                }
            }
            for ev in &events[..n] {
                if ev.data == POLL_TOKEN {
                    // A wake-up: reset the eventfd; the poll is armed again
                    // before the next sleep.
                    self.poll_armed = false;
                    self.take_signal();
                    continue;
                }
                let Some(mut op) = self.disown(ev.data as usize) else {
                    continue;
                };
                completed += 1;
                self.full = false;
                let res = ev.res.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
                if res == -libc::EAGAIN && self.nowait(&op) {
                    // It would have blocked (a full device queue, a write
                    // that must allocate): a thread does it.
                    self.punted.push(op);
                } else if op.kind == OpKind::Write && op.pre_flush && res >= 0 {
                    // The fdatasync before a `DM_IO_FLUSH` write is done:
                    // now the write (with the slot the op holds).
                    op.pre_flush = false;
                    self.backlog.push_front(op);
                    self.gate.put_back(1);
                } else {
                    gate::give_back(&op);
                    op.complete(res);
                }
            }
            let more = n == events.len() || (self.poll_wait && self.ctx.has_events());
            n = 0;
            if !more {
                break;
            }
        }
        self.events = events;
        if let Some(t0) = watched {
            self.watch.adapt(t0, completed);
        }
        self.punt();
    }
}
