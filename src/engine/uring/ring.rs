//! The ring core: building a ring, turning ops into submission entries,
//! the slab of ops in the kernel keyed by `user_data` (with a linked
//! flush's pairing), the backlog, the wait, and reaping completions.

use super::fixed::Buf;
use super::poll::{poll_for_completion, poll_wait};
use super::waker::{new_eventfd, Waker};
use super::{Core, Slot};
use crate::engine::gate;
use crate::engine::reactor::ReactorCore;
use crate::engine::sched::Sched;
use crate::engine::{IoOp, OpKind};
use crate::error::{Error, Result};
use crate::memory::{lib_pages, pages};
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub(super) const WAKE: u64 = u64::MAX;
pub(super) const FLUSH_BIT: u64 = 1 << 63;
/// How long a wait that submitted lone SENDs waits for more than one
/// event ([`Core::wait`]). Longer than a tick (4 ms at HZ=250): with
/// 1 ms, QD1 NBD reads over TCP lost 10-25 % with client and server on
/// one CPU of a 2-CPU guest (bench/HISTORY.md, 2026-12-07), where 10 ms
/// and 100 ms did not. Only a lone SEND that found no room in an
/// all but empty socket buffer ever waits it out.
const SEND_MIN_WAIT_US: u32 = 10_000;

/// The submission entries of `op` with user data `ud`: a linked fsync
/// before a `DM_IO_FLUSH` write, and the op itself (a fixed read or write
/// from registered buffer `reg`).
// Always inlined into its one caller, the per-IO loop of `push_backlog`:
// out of line, the two entries it builds go back through memory.
#[inline(always)]
fn entries(op: &IoOp, ud: u64, reg: Buf) -> (Option<squeue::Entry>, squeue::Entry) {
    let fd = types::Fd(op.dev.fd());
    let buf = op.buf();
    let rw_flags = if op.fua { libc::RWF_DSYNC } else { 0 };
    let data = match (op.kind, reg) {
        (OpKind::Read, Buf::Fixed(n)) => opcode::ReadFixed::new(fd, buf, op.len, n)
            .offset(op.offset)
            .build(),
        (OpKind::Read, Buf::Plain) => opcode::Read::new(fd, buf, op.len).offset(op.offset).build(),
        (OpKind::Write, Buf::Fixed(n)) => opcode::WriteFixed::new(fd, buf, op.len, n)
            .offset(op.offset)
            .rw_flags(rw_flags)
            .build(),
        (OpKind::Write, Buf::Plain) => opcode::Write::new(fd, buf, op.len)
            .offset(op.offset)
            .rw_flags(rw_flags)
            .build(),
        (OpKind::Flush, _) => opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
    }
    .user_data(ud);
    let flush = (op.pre_flush && op.kind == OpKind::Write).then(|| {
        opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(ud | FLUSH_BIT)
    });
    (flush, data)
}

/// Runs `op` (on a memory file system) as system calls on this thread:
/// its result as a CQE would carry it (a failed linked flush's error wins).
fn run_op_inline(op: &IoOp) -> i32 {
    fn ret(r: isize) -> i32 {
        if r < 0 {
            -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            r as i32
        }
    }
    let fd = op.dev.fd();
    let datasync = || {
        // SAFETY: fdatasync on a descriptor kept open by the op's Arc<Device>.
        ret(unsafe { libc::fdatasync(fd) } as isize)
    };
    if op.kind == OpKind::Flush {
        return datasync();
    }
    if op.pre_flush && op.kind == OpKind::Write {
        let r = datasync();
        if r < 0 {
            return r;
        }
    }
    let iov = libc::iovec {
        iov_base: op.buf().cast(),
        iov_len: op.len as usize,
    };
    loop {
        let r = if op.kind == OpKind::Write {
            let flags = if op.fua { libc::RWF_DSYNC } else { 0 };
            // SAFETY: `iov` names `op.len` bytes of the op's buffer (its
            // private slot, which the op owns, or caller memory lent until
            // the region is final, which is not before this op completes);
            // the fd stays open because the op holds `Arc<Device>`.
            unsafe { libc::pwritev2(fd, &iov, 1, op.offset as i64, flags) }
        } else {
            // SAFETY: as for the write; the buffer is writable memory the
            // op owns (or lent, as above) for `op.len` bytes.
            unsafe { libc::preadv2(fd, &iov, 1, op.offset as i64, 0) }
        };
        let r = ret(r);
        if r != -libc::EINTR {
            return r;
        }
    }
}

/// With at most this many ops in the ring, a thread about to sleep submits
/// its new entries in one `io_uring_enter` and waits in a second, as fio
/// does, instead of submitting and waiting in one call. At QD1 on a
/// RAM-backed loop device on an Intel VM, 4 KiB reads ran at 47k-48k IOPS
/// that way against 30k-32k in one call (`bench/HISTORY.md`, 2026-12-08
/// 01:25): the thread returns to user space while the loop device's worker
/// starts the read, instead of sleeping under it. Deeper, the extra call
/// costs more than it saves (QD32: 5-10 % fewer IOPS).
const SUBMIT_APART_DEPTH: usize = 4;
// A watch ([`Core::watch_first`]) relies on that submission.
const _: () = assert!(crate::engine::watch::WATCH_DEPTH <= SUBMIT_APART_DEPTH);

/// A ring for one reactor thread: completions are processed only when the
/// reactor asks for them (DEFER_TASKRUN, no interruptions while it works),
/// on kernels that have it (6.1+); a plain ring elsewhere. With
/// DEFER_TASKRUN the kernel also flags pending completions in the SQ
/// ring's flags (`IORING_SETUP_TASKRUN_FLAG`, the `bool`): the CQ's tail
/// shows them only once the thread enters the kernel to run them, so a
/// thread that watches for them ([`Core::wait`]) looks at that flag.
fn build_ring(entries: u32) -> Result<(IoUring, bool)> {
    if poll_wait() {
        // Completions must be posted while the thread sleeps in poll(2):
        // task work that interrupts it (no COOP_TASKRUN, no DEFER_TASKRUN).
        return IoUring::builder()
            .build(entries)
            .map(|r| (r, false))
            .map_err(|e| Error::from_io("io_uring_setup", &e));
    }
    IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .map(|r| (r, true))
        .or_else(|_| IoUring::builder().build(entries).map(|r| (r, false)))
        .map_err(|e| Error::from_io("io_uring_setup", &e))
}

/// Lets the calling thread's io-wq run as many bounded workers as the ring
/// has ops in flight (`cap`), so that no punted op ever waits for a worker.
///
/// io_uring issues block IO without blocking; when the device has no free
/// tag (all its `nr_requests` in use), the op gets `EAGAIN` and is handed to
/// io-wq, whose worker then blocks in `blk_mq_get_tag` until a tag frees
/// up. By default a thread's io-wq runs at most min(SQ entries, 4 x CPUs)
/// bounded workers for all its rings' files: once that many wait for the
/// tags of a hung device, every other device's punted ops queue behind them
/// for good (bench case 8 with the hung loop+FUSE device, c-tests
/// `shared_hung_tags`). With the limit at `cap`, each punted op gets a
/// worker of its own: a stuck op costs a kernel thread (an `iou-wrk-*`
/// thread of this process, as a thread-pool worker would), never another
/// op's progress. The kernel caps the number at `RLIMIT_NPROC`; before
/// Linux 5.15 (no `IORING_REGISTER_IOWQ_MAX_WORKERS`) the default stays.
/// The limit belongs to the thread (it applies to the io-wq of the thread
/// that submits), set here by the ring's owner thread.
fn raise_iowq_workers(ring: &IoUring, cap: usize) {
    let bounded = u32::try_from(cap).unwrap_or(u32::MAX);
    // [bounded, unbounded]; a 0 reads the current limit without changing
    // it. Never lower it: on a SYNC caller's thread the application may
    // have raised it for rings of its own.
    let mut now = [0, 0];
    // A kernel without it keeps its default: nothing else to do.
    if ring
        .submitter()
        .register_iowq_max_workers(&mut now)
        .is_err()
        || now[0] >= bounded
    {
        return;
    }
    let mut max = [bounded, 0];
    let _ = ring.submitter().register_iowq_max_workers(&mut max);
}

/// The CQEs an op in the slab still waits for, and what came so far.
pub(super) struct Cqes {
    /// Still to come (2 when a flush is linked before the op).
    left: u8,
    flush_err: i32,
    data_res: i32,
}

impl Cqes {
    pub(in crate::engine) fn new(linked_flush: bool) -> Cqes {
        Cqes {
            left: if linked_flush { 2 } else { 1 },
            flush_err: 0,
            data_res: 0,
        }
    }

    /// One CQE of the op (`flush`: its linked fsync's). Once the last has
    /// come, the op's result: the fsync's error if it failed (the write
    /// then never ran, or ran unordered), else the data entry's result.
    #[inline]
    pub(in crate::engine) fn record(&mut self, flush: bool, res: i32) -> Option<i32> {
        self.left -= 1;
        if !flush {
            self.data_res = res;
        } else if res < 0 {
            self.flush_err = res;
        }
        if self.left > 0 {
            return None;
        }
        Some(if self.flush_err < 0 {
            self.flush_err
        } else {
            self.data_res
        })
    }
}

impl Core {
    /// A ring on the calling thread, woken through `waker`.
    pub(in crate::engine) fn new(entries: u32, waker: Arc<Waker>) -> Result<Core> {
        let (ring, taskrun_flag) = build_ring(entries)?;
        let mut core = Core::with_ring(ring, waker)?;
        core.taskrun_flag = taskrun_flag;
        Ok(core)
    }

    /// The thread watches for its completions before it sleeps
    /// ([`Core::wait`]): for the threads whose own callbacks or caller
    /// wait for the ring's IO (the completion thread, a SYNC caller), not
    /// the reactor. Not with [`poll_wait`] (tools that run the engine
    /// slowly, such as valgrind: watching would only burn their time).
    pub(in crate::engine) fn with_watch(&mut self) {
        if self.cq_efd.is_none() {
            self.watch = crate::engine::watch::Watch::wanted();
        }
    }

    /// Tests: how long the next wait watches first (ns).
    #[cfg(test)]
    pub(super) fn watch_ns(&self) -> u32 {
        self.watch.ns()
    }

    /// Whether completions are ready to be reaped, or to be run by the
    /// kernel when the thread enters it (`IORING_SQ_TASKRUN`, see
    /// [`build_ring`]); read without a system call.
    pub(super) fn completions_seen(ring: &mut IoUring, taskrun_flag: bool) -> bool {
        !ring.completion().is_empty() || (taskrun_flag && ring.submission().taskrun())
    }

    /// A core around `ring` (built by the caller), woken through `waker`.
    pub(super) fn with_ring(ring: IoUring, waker: Arc<Waker>) -> Result<Core> {
        let cap = (ring.params().cq_entries() / 2).saturating_sub(1).max(1) as usize;
        let min_wait = ring.params().is_feature_min_timeout();
        raise_iowq_workers(&ring, cap);
        let mut core = Core {
            ring,
            waker,
            slab: Vec::new(),
            free: Vec::new(),
            inflight: 0,
            cap,
            backlog: VecDeque::new(),
            gate: Default::default(),
            sched: Sched::default(),
            wake_buf: 0,
            cqes: Vec::with_capacity(256),
            ready: Vec::new(),
            fixed: Vec::new(),
            last_fixed: None,
            pool_free: Vec::new(),
            chunks: Vec::new(),
            cq_efd: None,
            kicks: crate::engine::socket::Kicks::new(),
            socks: Vec::new(),
            kicked: Vec::new(),
            inline_mem: false,
            lone_sends: 0,
            min_wait,
            taskrun_flag: false,
            watch: crate::engine::watch::Watch::off(),
            watch_t0: None,
        };
        // A table with room for the private memory and every arena chunk,
        // filled as they are used. Without it (kernels before 5.19) the
        // private memory is registered alone and chunks are not.
        if core
            .ring
            .submitter()
            .register_buffers_sparse(super::fixed::TABLE)
            .is_ok()
        {
            core.chunks = vec![0; pages::MAX_CHUNKS];
            core.pool_free = super::fixed::pool_indexes();
        }
        if poll_wait() {
            let fd = new_eventfd(libc::EFD_NONBLOCK)?;
            core.ring
                .submitter()
                .register_eventfd(fd.as_raw_fd())
                .map_err(|e| Error::from_io("IORING_REGISTER_EVENTFD", &e))?;
            core.cq_efd = Some(fd);
        }
        core.arm_wake();
        Ok(core)
    }

    /// One new op (taken out of `op`), then [`Core::push_backlog`]. The
    /// usual op (nothing queued or waiting for a kernel slot before it, no
    /// fault rule, no remote device, no library pages, no linked flush,
    /// room in the ring, a free slot of its disk's queue) goes straight
    /// into the submission queue and the slab, as `push_backlog` would put
    /// it there, without passing through the backlog; it moves once, from
    /// `op` into its slab entry.
    pub(in crate::engine) fn admit_one(&mut self, op: &mut Option<IoOp>) {
        let Some(o) = op.as_ref() else { return };
        if self.backlog.is_empty()
            && self.gate.is_empty()
            && !self.inline_mem
            && self.inflight < self.cap
            && o.lib_chunk.is_none()
            && !(o.pre_flush && o.kind == OpKind::Write)
            && !o.dev.faults.is_active()
            && o.dev.remote().is_none()
        {
            // The registered buffer: the one the last op was in, or looked up.
            let b = o.buf() as usize;
            let reg = match self.last_fixed {
                Some((lo, hi, n)) if b >= lo && b + o.len as usize <= hi => Some(Buf::Fixed(n)),
                _ => {
                    let reg = Core::buf_of(&self.chunks, &self.fixed, o);
                    if let Some(Buf::Fixed(n)) = reg {
                        self.last_fixed = self.fixed.iter().copied().find(|f| f.2 == n);
                    }
                    reg
                }
            };
            if let Some(reg) = reg {
                let mut sq = self.ring.submission();
                // Its disk's kernel slot last: one taken is one used.
                if !sq.is_full() && o.dev.kernel_slots().is_none_or(|s| s.take()) {
                    let idx = self.free.pop().unwrap_or_else(|| {
                        self.slab.push(None);
                        self.slab.len() - 1
                    });
                    let (_, data) = entries(o, idx as u64, reg);
                    // SAFETY: as in `push_backlog`: the buffer is the op's
                    // private slot or caller memory lent until the region
                    // is final, owned by the slab entry below until this
                    // entry's CQE is reaped; the fd is kept open by the
                    // op's `Arc<Device>`.
                    unsafe { sq.push(&data) }.expect("room checked above");
                    drop(sq);
                    self.slab[idx] = op.take().map(|op| Slot {
                        op,
                        cqes: Cqes::new(false),
                    });
                    self.inflight += 1;
                    self.take_kicks();
                    return;
                }
            }
        }
        self.admit(op.take());
        self.push_backlog();
    }

    /// [`Core::pump`], reading the clock only when a timer, delayed or
    /// held op needs it.
    pub(in crate::engine) fn pump_lazy(&mut self) {
        if self.sched.needs_clock() {
            self.pump(Instant::now());
        } else {
            self.push_backlog();
        }
    }

    /// [`Core::pump_lazy`] for the parked ops only: deadlines are left
    /// for the next pump, so the clock is read only when a delayed or held
    /// op needs it (a SYNC caller's turn fires its deadlines before it
    /// waits, see [`super::caller::turn`]).
    pub(in crate::engine) fn pump_ops_lazy(&mut self) {
        if self.sched.ops_need_clock() {
            self.pump(Instant::now());
        } else {
            self.push_backlog();
        }
    }

    /// Starts what is in the submission queue now.
    pub(in crate::engine) fn submit_now(&mut self) {
        let _ = self.ring.submit();
    }

    /// Ops submitted to the kernel (about: the queue also holds linked
    /// flushes and the wake-up poll), and entries queued not yet submitted.
    pub(in crate::engine) fn depth(&mut self) -> (usize, usize) {
        let q = self.ring.submission().len();
        (self.inflight.saturating_sub(q), q)
    }

    /// Ops that wait for a kernel slot of their disk.
    pub(in crate::engine) fn waiting_for_slots(&self) -> bool {
        !self.gate.is_empty()
    }

    /// Takes the ops waiting for a kernel slot that `keep` does not keep
    /// (see [`super::caller`]).
    pub(in crate::engine) fn take_waiting_unless(
        &mut self,
        keep: impl Fn(&IoOp) -> bool,
    ) -> Vec<IoOp> {
        self.gate.take_unless(keep)
    }

    fn arm_wake(&mut self) {
        let e = opcode::PollAdd::new(types::Fd(self.waker.efd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(WAKE);
        // SAFETY: a poll entry carries no buffer; the eventfd lives as long
        // as the core (which holds the waker).
        while unsafe { self.ring.submission().push(&e) }.is_err() {
            let _ = self.ring.submit();
        }
    }

    /// A SYNC caller's ring: the ops of buffered files on memory file
    /// systems ([`crate::device::Device::in_memory`]) run here, as system
    /// calls, after their fault rules (they were admitted), instead of
    /// going through the ring to an io-wq thread: the caller waits for
    /// them anyway, and the thread hand-off costs more than the copy.
    /// Their order relative to each other is kept.
    fn run_inline(&mut self) {
        let inline = |op: &IoOp| op.dev.in_memory() && op.lib_chunk.is_none();
        if !self.backlog.iter().any(inline) {
            return;
        }
        for _ in 0..self.backlog.len() {
            let op = self.backlog.pop_front().expect("counted");
            if inline(&op) {
                let res = run_op_inline(&op);
                op.complete(res);
            } else {
                self.backlog.push_back(op);
            }
        }
    }

    pub(in crate::engine) fn push_backlog(&mut self) {
        if self.inline_mem {
            self.run_inline();
        }
        self.take_kicks();
        self.gate.release(&mut self.backlog);
        while self.inflight < self.cap && !self.backlog.is_empty() {
            // One view of the submission queue for the whole batch (each
            // view reads the kernel's head and publishes our tail).
            let mut sq = self.ring.submission();
            let mut room = sq.capacity() - sq.len();
            let mut stale = None;
            while self.inflight < self.cap {
                let Some(front) = self.backlog.front() else {
                    break;
                };
                let Some(reg) = Core::buf_of(&self.chunks, &self.fixed, front) else {
                    stale = front.lib_chunk;
                    break;
                };
                let linked = front.pre_flush && front.kind == OpKind::Write;
                if room < 1 + linked as usize {
                    break;
                }
                let op = self.backlog.pop_front().expect("checked front");
                let held = self.gate.popped();
                // Library pages: not once a cancel detached them (checked
                // after the registration was made current, see
                // `OpSink::detached`); on a plain read, only if the request
                // will wait for it.
                if let Some(c) = op.lib_chunk {
                    if reg == Buf::Plain {
                        // The chunk is REFUSED on this ring, or the ring
                        // has no table: later requests there use private
                        // memory.
                        lib_pages::refuse(c);
                    }
                    if op.sink.detached() || (reg == Buf::Plain && !op.sink.demote(op.region)) {
                        if held {
                            gate::give_back(&op);
                        }
                        op.complete(-libc::ECANCELED);
                        continue;
                    }
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
                let idx = self.free.pop().unwrap_or_else(|| {
                    self.slab.push(None);
                    self.slab.len() - 1
                });
                let (flush, data) = entries(&op, idx as u64, reg);
                if let Some(f) = flush {
                    // SAFETY: an fsync entry carries no buffer; the fd stays
                    // open because the op (in the slab below) holds `Arc<Device>`.
                    unsafe { sq.push(&f) }.expect("room checked above");
                }
                // SAFETY: `data`'s buffer points into the op's private slot,
                // which the slab entry created below owns until this entry's
                // CQE is reaped in `reap` (for a fixed op, inside its
                // client's registered buffer, checked in `buf_of`), or for
                // a zero-copy op into the caller's memory, lent until the region is final, which
                // is never before that CQE is reaped, or for a read into
                // library pages into the arena chunk registered as its
                // fixed buffer (mapped for good; a detach leaves the pages
                // this registration pinned to the kernel); the fd is kept
                // open by the op's `Arc<Device>`.
                unsafe { sq.push(&data) }.expect("room checked above");
                room -= 1 + linked as usize;
                self.slab[idx] = Some(Slot {
                    op,
                    cqes: Cqes::new(linked),
                });
                self.inflight += 1;
            }
            drop(sq);
            if let Some(c) = stale {
                self.register_chunk(c);
                continue;
            }
            if self.inflight >= self.cap || self.backlog.is_empty() {
                break;
            }
            // The queue is full: hand it to the kernel and go on.
            if self.ring.submit().is_err() {
                break;
            }
        }
    }

    /// Before the thread announces its sleep ([`Core::wait`]), once what
    /// was queued is in the kernel: with IO of its own there and nothing to
    /// reap yet, a thread that watches ([`Core::with_watch`]) watches for a
    /// completion, `pending()` or the sockets' kicks until the watch ends
    /// or `at`, yielding the CPU now and then ([`crate::engine::watch`]).
    /// At QD1 the completion then needs no wake-up of the thread nor of
    /// its idle vCPU. It only returns: the wait goes on as it would have,
    /// and returns at once when something came (the kernel runs the
    /// deferred completions it flagged in that same `io_uring_enter`).
    /// With more than [`crate::engine::watch::WATCH_DEPTH`] ops in the
    /// kernel, or completions already there, it does not watch (a
    /// comparison or two loads).
    #[inline]
    fn watch_first(&mut self, at: Option<Instant>, sends: u32, pending: &dyn Fn() -> bool) {
        if !self.watch.wants(self.inflight)
            || sends > 0
            || !self.gate.is_empty()
            || Core::completions_seen(&mut self.ring, self.taskrun_flag)
        {
            return;
        }
        let t0 = Instant::now();
        self.watch_t0 = Some(t0);
        let Some(end) = self.watch.end(t0, at) else {
            return;
        };
        let (ring, kicks, flag) = (&mut self.ring, &self.kicks, self.taskrun_flag);
        crate::engine::watch::watch(end, &mut || {
            Core::completions_seen(ring, flag) || pending() || kicks.pending.load(Ordering::SeqCst)
        });
    }
}

impl ReactorCore for Core {
    fn register(&mut self, region: (usize, usize)) {
        Core::register(self, region);
    }

    fn unregister(&mut self, region: (usize, usize)) {
        Core::unregister(self, region);
    }

    fn sched_and_backlog(&mut self) -> (&mut Sched, &mut VecDeque<IoOp>) {
        (&mut self.sched, &mut self.backlog)
    }

    /// No op in the kernel, queued or parked.
    fn idle(&self) -> bool {
        self.inflight == 0
            && self.backlog.is_empty()
            && self.gate.is_empty()
            && self.sched.parked() == 0
            && self.no_sockets()
    }

    /// Fires due timers and puts ready ops into the submission queue.
    fn pump(&mut self, now: Instant) {
        self.sched.expire(now, &mut self.ready);
        if !self.ready.is_empty() {
            self.backlog.extend(self.ready.drain(..));
        }
        self.push_backlog();
    }

    /// Submits what is queued and, unless `pending()` says there is work
    /// already (checked after announcing the sleep, so a waker cannot be
    /// missed), sleeps until a completion, a wake-up, the next timer, or
    /// `max` (when given).
    fn wait(
        &mut self,
        now: Option<Instant>,
        pending: &dyn Fn() -> bool,
        max: Option<std::time::Duration>,
    ) {
        let runnable = (!self.backlog.is_empty() && self.inflight < self.cap) || self.kicked();
        let sends = std::mem::take(&mut self.lone_sends);
        if runnable || pending() {
            // No system call when nothing is queued (a SYNC caller whose
            // op ran inline, `Core::run_inline`, finds its request done).
            if !self.ring.submission().is_empty() {
                let _ = self.ring.submit();
            }
            return;
        }
        // `now`: the caller's clock reading, or read here if a timer needs it.
        let at = self.sched.sleep_until(now, max);
        if self.inflight <= SUBMIT_APART_DEPTH && !self.ring.submission().is_empty() {
            // Few ops: start them in a call of their own, then wait (or
            // watch: the IO must be in the kernel before its completion is
            // watched for, and a watch needs at most WATCH_DEPTH ops).
            let _ = self.ring.submit();
        }
        self.watch_first(at, sends, pending);
        if !self.waker.announce_sleep(at, &|| {
            pending() || self.kicked() || self.gate.slot_freed(&self.waker)
        }) {
            let _ = self.ring.submit();
            return;
        }
        if let Some(efd) = &self.cq_efd {
            let r = poll_for_completion(&mut self.ring, efd, at);
            self.waker.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = r {
                eprintln!("libdmio: waiting for completions failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            return;
        }
        // The SEND of a lone request ([`super::socket::Outgoing::lone`])
        // submitted here completes inside this call: its CQE alone must
        // not end the wait, or each request-reply round trip takes a
        // second call to wait for the reply. Wait for one event more per
        // such SEND, but after `SEND_MIN_WAIT_US` for any one event (a
        // SEND that found no room after all, with a wake-up meanwhile).
        // Kernels before 6.12 (no minimum wait time) make the two calls.
        let want = if sends > 0 && self.min_wait {
            1 + sends as usize
        } else {
            1
        };
        let ts;
        let mut args = types::SubmitArgs::new();
        if want > 1 {
            args = args.min_wait_usec(SEND_MIN_WAIT_US);
        }
        let r = match at {
            Some(at) => {
                let d = at.saturating_duration_since(Instant::now());
                ts = types::Timespec::new()
                    .sec(d.as_secs())
                    .nsec(d.subsec_nanos());
                self.ring
                    .submitter()
                    .submit_with_args(want, &args.timespec(&ts))
            }
            None if want > 1 => self.ring.submitter().submit_with_args(want, &args),
            None => self.ring.submit_and_wait(1),
        };
        self.waker.sleeping.store(false, Ordering::SeqCst);
        if let Err(e) = r {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => {
                    eprintln!("libdmio: io_uring_enter failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }

    /// Completes the ops whose CQEs have arrived.
    fn reap(&mut self) {
        // The SENDs pushed before are submitted and reaped here, or not
        // yet submitted (then the next wait waits for one event less than
        // it could: a second call, never a late one).
        self.lone_sends = 0;
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        if let Some(t0) = self.watch_t0.take() {
            // A completion of the ring's IO ended the wait, or something
            // else did (a wake-up, a timer).
            let events = cqes.iter().filter(|&&(ud, _)| ud != WAKE).count();
            self.watch.adapt(t0, events);
        }
        for &(ud, res) in cqes.iter() {
            if ud == WAKE {
                // SAFETY: reads 8 bytes into our own u64 from our eventfd,
                // which POLLIN says is readable.
                unsafe {
                    libc::read(
                        self.waker.efd.as_raw_fd(),
                        &mut self.wake_buf as *mut u64 as *mut _,
                        8,
                    )
                };
                self.arm_wake();
                continue;
            }
            if ud & (super::sock::SOCK_BIT | FLUSH_BIT) == super::sock::SOCK_BIT {
                self.sock_cqe(ud, res);
                continue;
            }
            let idx = (ud & !FLUSH_BIT) as usize;
            let Some(slot) = self.slab.get_mut(idx).and_then(|s| s.as_mut()) else {
                continue;
            };
            let Some(res) = slot.cqes.record(ud & FLUSH_BIT != 0, res) else {
                continue;
            };
            let slot = self.slab[idx].take().expect("present");
            self.free.push(idx);
            self.inflight -= 1;
            gate::give_back(&slot.op);
            slot.op.complete(res);
        }
        self.cqes = cqes;
    }
}
