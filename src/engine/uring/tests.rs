//! Unit tests of the ring core: slab and `user_data` pairing, linked
//! flushes, wake-ups, and library-page chunks registered, re-registered
//! after a detach, and refused.

use super::fixed::REFUSED;
use super::ring::Cqes;
use super::*;
use crate::engine::manual::kit::{op, Recorder, TempDev};
use crate::engine::reactor::ReactorCore;
use crate::engine::OpKind;
use crate::memory::caller::CallerPtr;
use crate::memory::pool::Pool;
use crate::memory::PAGE_SIZE;
use crate::memory::{lib_pages, pages};
use std::time::Duration;

/// A ring on this thread, or `None` (said) where the kernel refuses
/// io_uring.
fn core() -> Option<Core> {
    match Core::new(64, Waker::new().unwrap()) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("skipped: io_uring refused here ({e})");
            None
        }
    }
}

/// Turns the ring until `sink` has seen `n` ops end (bounded).
fn run(core: &mut Core, sink: &Recorder, n: usize) {
    for _ in 0..1000 {
        core.pump(Instant::now());
        if sink.count() >= n {
            return;
        }
        core.wait(None, &|| false, Some(Duration::from_millis(10)));
        core.reap();
    }
    panic!("{} of {n} ops ended", sink.count());
}

#[test]
fn cqes_pair_a_linked_flush_with_its_write() {
    assert_eq!(Cqes::new(false).record(false, 4096), Some(4096));
    // Either order; the data entry's result when the fsync succeeded.
    let mut c = Cqes::new(true);
    assert_eq!(c.record(true, 0), None);
    assert_eq!(c.record(false, 4096), Some(4096));
    let mut c = Cqes::new(true);
    assert_eq!(c.record(false, 4096), None);
    assert_eq!(c.record(true, 0), Some(4096));
    // A failed fsync wins over the write's result (cancelled by the link).
    let mut c = Cqes::new(true);
    assert_eq!(c.record(true, -libc::EIO), None);
    assert_eq!(c.record(false, -libc::ECANCELED), Some(-libc::EIO));
    let mut c = Cqes::new(true);
    assert_eq!(c.record(false, 4096), None);
    assert_eq!(c.record(true, -libc::EIO), Some(-libc::EIO));
}

#[test]
fn each_completion_finds_its_op_and_slab_entries_are_reused() {
    let Some(mut core) = core() else { return };
    let dev = TempDev::new("slab");
    let pool = Pool::new(8, 4096).unwrap();
    core.register(pool.region());
    let sink = Arc::new(Recorder::default());
    let ops = |round: u32| -> Vec<IoOp> {
        (0..8u32)
            .map(|i| {
                let slot = pool.try_acquire().expect("a free slot");
                // Sector 16 i (+1 on the second round), a different length each.
                let off = (16 * i as u64 + round as u64) * 512;
                op(OpKind::Read, &dev, &sink, i, off, 512 * (i + 1), Some(slot))
            })
            .collect()
    };
    core.admit(ops(0));
    run(&mut core, &sink, 8);
    let want: Vec<(u32, i32)> = (0..8).map(|i| (i, 512 * (i as i32 + 1))).collect();
    assert_eq!(sink.results(), want);
    for &(region, _, first) in sink.done.lock().unwrap().iter() {
        assert_eq!(first, Some((16 * region) as u8), "region {region}'s data");
    }
    assert!(core.idle());
    assert_eq!(core.inflight, 0);
    let used = core.slab.len();
    assert!(used <= 8 && core.free.len() == used);
    assert!(core.slab.iter().all(|s| s.is_none()));
    // A second round reuses the entries: the slab does not grow.
    sink.done.lock().unwrap().clear();
    core.admit(ops(1));
    run(&mut core, &sink, 8);
    assert_eq!(sink.results(), want);
    assert_eq!(core.slab.len(), used);
    assert_eq!(pool.in_use(), 0, "every slot went back");
}

#[test]
fn a_flush_write_completes_once_after_both_cqes() {
    let Some(mut core) = core() else { return };
    let dev = TempDev::new("flush");
    let pool = Pool::new(2, 4096).unwrap();
    let sink = Arc::new(Recorder::default());
    let slot = pool.try_acquire().unwrap();
    slot.bytes_mut(4096).fill(0x77);
    let w = IoOp {
        pre_flush: true,
        ..op(OpKind::Write, &dev, &sink, 0, 0, 4096, Some(slot))
    };
    let f = op(OpKind::Flush, &dev, &sink, 1, 0, 0, None);
    core.admit([w, f]);
    run(&mut core, &sink, 2);
    // One more turn: nothing else completes.
    core.wait(None, &|| false, Some(Duration::from_millis(1)));
    core.reap();
    assert_eq!(sink.results(), vec![(0, 4096), (1, 0)]);
    assert!(core.idle());
    let mut b = [0u8; 512];
    // SAFETY: reads into our own 512-byte array from an open fd.
    let n = unsafe { libc::pread(dev.dev.fd(), b.as_mut_ptr() as *mut _, 512, 0) };
    assert_eq!(n, 512);
    assert!(b.iter().all(|&x| x == 0x77), "the write landed");
}

#[test]
fn a_wake_up_ends_a_wait_and_the_poll_is_armed_again() {
    let Some(mut core) = core() else { return };
    for _ in 0..2 {
        core.wake_buf = 0;
        // As if the ring's thread had announced its sleep.
        core.waker.sleeping.store(true, Ordering::SeqCst);
        core.waker.wake();
        assert!(!core.waker.sleeping.load(Ordering::SeqCst));
        // Bounded: a lost wake-up shows as the counter not read.
        core.wait(None, &|| false, Some(Duration::from_secs(5)));
        core.reap();
        assert_eq!(core.wake_buf, 1, "the wake-up's CQE was reaped");
    }
    assert!(core.idle());
}

#[test]
fn library_page_reads_register_their_chunk_and_again_after_a_detach() {
    let _one = lib_pages::DETACH_TESTS
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let Some(mut core) = core() else { return };
    if core.chunks.is_empty() {
        eprintln!("skipped: no sparse buffer table (kernel before 5.19)");
        return;
    }
    let dev = TempDev::new("chunk");
    let p = pages::alloc().unwrap();
    let Some(c) = pages::LivePages::lock().arena_span(p, PAGE_SIZE) else {
        eprintln!("skipped: no page arena");
        assert!(pages::free(p));
        return;
    };
    let read = |sink: &Arc<Recorder>, sector: u64| IoOp {
        direct: CallerPtr::from_addr(p),
        lib_chunk: Some(c),
        ..op(OpKind::Read, &dev, sink, 0, sector * 512, 4096, None)
    };
    // SAFETY: `p` is a live page of ours; no IO runs into it now.
    let first_byte = || unsafe { *(p as *const u8) };

    let sink = Arc::new(Recorder::default());
    let g0 = lib_pages::generation(c);
    core.admit([read(&sink, 24)]);
    run(&mut core, &sink, 1);
    assert_eq!(sink.results(), vec![(0, 4096)]);
    assert_eq!(core.chunks[c as usize], g0 as u64 + 1, "registered");
    assert_eq!(first_byte(), 24);
    assert_eq!(sink.demotes.load(Ordering::SeqCst), 0, "ran fixed");

    // A detach maps fresh pages at `p`: the ring registers the chunk
    // again before its next read there, which lands in the new pages.
    assert!(lib_pages::detach(p, PAGE_SIZE));
    assert_eq!(first_byte(), 0);
    let g1 = lib_pages::generation(c);
    let sink = Arc::new(Recorder::default());
    core.admit([read(&sink, 40)]);
    run(&mut core, &sink, 1);
    assert_eq!(sink.results(), vec![(0, 4096)]);
    assert_eq!(core.chunks[c as usize], g1 as u64 + 1, "registered again");
    assert_eq!(first_byte(), 40, "the read landed in the pages now at p");

    // A request whose pages a cancel detached: its op never starts.
    let sink = Arc::new(Recorder::default());
    sink.detached.store(true, Ordering::SeqCst);
    core.admit([read(&sink, 56)]);
    run(&mut core, &sink, 1);
    assert_eq!(sink.results(), vec![(0, -libc::ECANCELED)]);
    assert_eq!(first_byte(), 40);
    assert!(pages::free(p));
}

#[test]
fn a_refused_chunk_runs_plain_reads_only_for_requests_that_will_wait() {
    let Some(mut core) = core() else { return };
    let dev = TempDev::new("refused");
    // The last chunk: no test allocates pages in it (refusing it is for
    // good), and its memory is reserved but not mapped, so the kernel
    // refuses to register it. A plain read needs no chunk memory, so
    // the op reads into ours.
    let c = (pages::MAX_CHUNKS - 1) as u16;
    // Reserves the arena (if no test did yet).
    pages::free(pages::alloc().unwrap());
    let kernel_refuses = !cfg!(debug_assertions); // chunk_range asserts c is mapped
    let mut buf = vec![0u8; 4096];
    let read = |sink: &Arc<Recorder>, buf: &mut Vec<u8>| IoOp {
        direct: CallerPtr::new(buf.as_mut_ptr()),
        lib_chunk: Some(c),
        ..op(OpKind::Read, &dev, sink, 0, 8 * 512, 4096, None)
    };
    for table in [true, false] {
        if table {
            if core.chunks.is_empty() {
                continue;
            }
            if !kernel_refuses {
                // As after register_chunk's refusal.
                core.chunks[c as usize] = REFUSED;
            }
        } else {
            // A ring without a buffer table registers no chunk.
            core.chunks.clear();
        }
        let sink = Arc::new(Recorder::default());
        buf.fill(0);
        core.admit([read(&sink, &mut buf)]);
        run(&mut core, &sink, 1);
        if table {
            assert_eq!(core.chunks[c as usize], REFUSED, "register_chunk refused");
        }
        assert_eq!(sink.results(), vec![(0, 4096)]);
        assert_eq!(sink.demotes.load(Ordering::SeqCst), 1, "demoted");
        let sectors_8_to_15 = buf
            .chunks(512)
            .enumerate()
            .all(|(k, s)| s.iter().all(|&b| b == 8 + k as u8));
        assert!(sectors_8_to_15, "the plain read landed");
        // A request that cannot wait for a plain read (demote says no).
        let sink = Arc::new(Recorder::default());
        sink.refuse_demote.store(true, Ordering::SeqCst);
        buf.fill(0);
        core.admit([read(&sink, &mut buf)]);
        run(&mut core, &sink, 1);
        assert_eq!(sink.results(), vec![(0, -libc::ECANCELED)]);
        assert!(buf.iter().all(|&b| b == 0), "never started");
    }
}

#[test]
fn pools_of_many_clients_each_get_a_buffer_and_give_it_back() {
    let Some(mut core) = core() else { return };
    if core.chunks.is_empty() {
        eprintln!("skipped: no sparse buffer table (kernel before 5.19)");
        return;
    }
    let dev = TempDev::new("pools");
    let sink = Arc::new(Recorder::default());
    let pools: Vec<Arc<Pool>> = (0..3).map(|_| Pool::new(2, 4096).unwrap()).collect();
    for p in &pools {
        core.register(p.region());
    }
    // Memlock may refuse some; those that are in have distinct buffers.
    let bufs: Vec<u16> = core.fixed.iter().map(|f| f.2).collect();
    let mut distinct = bufs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), bufs.len());
    // An op finds its own pool's buffer (or runs plain where none is).
    for (i, p) in pools.iter().enumerate() {
        let slot = p.try_acquire().expect("a free slot");
        let o = op(OpKind::Read, &dev, &sink, i as u32, 0, 4096, Some(slot));
        let want = core
            .fixed
            .iter()
            .find(|f| f.0 == p.region().0)
            .map_or(super::fixed::Buf::Plain, |f| super::fixed::Buf::Fixed(f.2));
        assert!(Core::buf_of(&core.chunks, &core.fixed, &o) == Some(want));
        core.admit([o]);
    }
    run(&mut core, &sink, 3);
    assert!(sink.results().iter().all(|&(_, r)| r == 4096));
    // Destroyed clients leave the table; their buffers are used again.
    let free = core.pool_free.len();
    for p in &pools {
        core.unregister(p.region());
    }
    assert!(core.fixed.is_empty());
    assert_eq!(core.pool_free.len(), free + bufs.len());
    let slot = pools[0].try_acquire().expect("a free slot");
    let o = op(OpKind::Read, &dev, &sink, 9, 0, 4096, Some(slot));
    assert!(Core::buf_of(&core.chunks, &core.fixed, &o) == Some(super::fixed::Buf::Plain));
    core.register(pools[1].region());
    if let Some(f) = core.fixed.first() {
        assert!(
            bufs.contains(&f.2) || f.2 == 0,
            "a buffer given back is taken again"
        );
    }
}

/// The ring's owner thread may run an io-wq worker per op in flight, not
/// the kernel's default min(SQ entries, 4 x CPUs): ops handed to io-wq on a
/// full device queue never wait behind workers stuck on a hung device
/// (c-tests `shared_hung_tags` shows the stall itself).
#[test]
fn the_owner_threads_io_wq_may_run_a_worker_per_op_in_flight() {
    let Some(mut core) = core() else { return };
    // One op, so that this thread has its io_uring context and io-wq.
    let dev = TempDev::new("iowq");
    let pool = Pool::new(1, 4096).unwrap();
    core.register(pool.region());
    let sink = Arc::new(Recorder::default());
    let slot = pool.try_acquire().expect("a free slot");
    core.admit(vec![op(OpKind::Read, &dev, &sink, 0, 0, 512, Some(slot))]);
    run(&mut core, &sink, 1);
    // [0, 0] changes nothing and reads the limits back.
    let mut max = [0u32; 2];
    if let Err(e) = core.ring.submitter().register_iowq_max_workers(&mut max) {
        eprintln!("skipped: IORING_REGISTER_IOWQ_MAX_WORKERS refused here ({e})");
        return;
    }
    let mut nproc = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut nproc) };
    assert_eq!(rc, 0);
    let want = (core.cap as u64).min(nproc.rlim_cur) as u32;
    assert_eq!(
        max[0], want,
        "bounded io-wq workers (ring cap {})",
        core.cap
    );
}

/// The calling thread's voluntary context switches so far (each sleep is one).
fn sleeps_of_this_thread() -> i64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut ru), 0);
        ru.ru_nvcsw
    }
}

/// Queues a timeout of `us` microseconds (a completion the kernel posts as
/// deferred task work, as it does a read's) with user data `ud`, counted
/// as an op in the kernel.
fn push_timer(core: &mut Core, us: u32, ud: u64) {
    let ts = types::Timespec::new().nsec(us * 1000);
    let e = io_uring::opcode::Timeout::new(&ts).build().user_data(ud);
    // SAFETY: a timeout entry's timespec is read when it is submitted,
    // which `submit_now` does before `ts` goes.
    unsafe { core.ring.submission().push(&e) }.expect("room");
    core.submit_now();
    core.inflight += 1;
}

use io_uring::types;

#[test]
fn with_defer_taskrun_a_completion_shows_in_the_sq_flags_not_in_the_cq_tail() {
    let Some(mut core) = core() else { return };
    if !core.taskrun_flag {
        eprintln!("skipped: no DEFER_TASKRUN ring here");
        return;
    }
    push_timer(&mut core, 100, 1 << 20);
    let t0 = Instant::now();
    while !core.ring.submission().taskrun() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "IORING_SQ_TASKRUN never set"
        );
        std::hint::spin_loop();
    }
    // The completion waits for the thread to enter the kernel: the CQ's
    // tail alone never shows it.
    std::thread::sleep(Duration::from_millis(2));
    assert!(core.ring.completion().is_empty());
    assert!(Core::completions_seen(&mut core.ring, true));
    // A non-blocking enter runs it (GETEVENTS, min_complete 0).
    // SAFETY: no submission entries, no argument.
    unsafe {
        core.ring
            .submitter()
            .enter::<libc::sigset_t>(0, 0, 1 /* IORING_ENTER_GETEVENTS */, None)
    }
    .unwrap();
    assert_eq!(
        core.ring
            .completion()
            .map(|c| c.user_data())
            .collect::<Vec<_>>(),
        vec![1 << 20]
    );
    assert!(!core.ring.submission().taskrun(), "the flag goes once run");
    core.inflight = 0;
}

#[test]
fn a_watching_core_ends_its_wait_on_a_completion_without_sleeping() {
    let Some(mut core) = core() else { return };
    core.with_watch();
    let max = core.watch_ns();
    assert!(max > 0);
    // A completion 10 us away, well within the watch: the wait returns with
    // it and the thread never slept. A few tries: on a loaded machine the
    // thread may lose its CPU past the watch's end once in a while.
    let mut quiet = 0;
    for i in 0..20u64 {
        push_timer(&mut core, 10, (1 << 20) + i);
        let before = sleeps_of_this_thread();
        let t0 = Instant::now();
        core.wait(None, &|| false, Some(Duration::from_secs(5)));
        let took = t0.elapsed();
        let slept = sleeps_of_this_thread() - before;
        let mut seen = Vec::new();
        seen.extend(core.ring.completion().map(|c| c.user_data()));
        assert_eq!(
            seen,
            vec![(1 << 20) + i],
            "the wait returns with the completion"
        );
        core.inflight -= 1;
        if slept == 0 && took < Duration::from_micros(50) {
            quiet += 1;
        }
    }
    assert!(quiet >= 10, "only {quiet} of 20 waits ended in the watch");
    // Completions later than the longest watch stop it: the thread then
    // sleeps at once.
    for i in 0..16u64 {
        push_timer(&mut core, 2_000, (1 << 21) + i);
        core.wait(None, &|| false, Some(Duration::from_secs(5)));
        core.reap();
        core.inflight = 0;
    }
    assert_eq!(core.watch_ns(), 0, "late completions stopped the watch");
    // And prompt ones bring it back (15 us: the timer must not have
    // fired before the wait, as a read has not).
    for i in 0..16u64 {
        push_timer(&mut core, 15, (1 << 22) + i);
        core.wait(None, &|| false, Some(Duration::from_secs(5)));
        core.reap();
        core.inflight = 0;
    }
    assert!(core.watch_ns() > 0, "prompt completions restarted it");
}

#[test]
fn the_reactor_does_not_watch() {
    let Some(mut core) = core() else { return };
    assert_eq!(core.watch_ns(), 0);
    push_timer(&mut core, 100, 1 << 20);
    let before = sleeps_of_this_thread();
    core.wait(None, &|| false, Some(Duration::from_secs(5)));
    assert!(sleeps_of_this_thread() > before, "it sleeps at once");
    core.reap();
    core.inflight = 0;
}
