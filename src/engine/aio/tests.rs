//! Unit tests of the AIO core: the slab and `aio_data`, flushes (alone and
//! before a write), FUA, wake-ups on the shared eventfd (the wait in
//! `io_getevents` with a poll on it, and the older `ppoll` wait), fault-delayed ops
//! and deadlines, the backlog past the context's room, and the engine
//! routing buffered devices to its thread pool.

use super::ring::Core;
use super::*;
use crate::engine::manual::kit::{op, Fired, Recorder, TempDev};
use crate::engine::reactor::ReactorCore;
use crate::engine::{OpKind, Wake};
use crate::memory::pool::Pool;
use std::time::Duration;

/// A core with room for `nr` ops on this thread, or `None` (said) where
/// the kernel refuses AIO.
fn core(nr: u32) -> Option<Core> {
    match sys::Context::new(nr) {
        Ok(ctx) => Some(Core::new(ctx, waker().unwrap())),
        Err(e) => {
            eprintln!("skipped: Linux AIO refused here ({e})");
            None
        }
    }
}

/// Three cores with room for `nr` ops: one waiting in `io_getevents` with a
/// poll on its eventfd (what this kernel gives), the same watching the
/// ring of events before it sleeps (the completion thread's), and one with
/// the wait older kernels get (`ppoll` on the eventfd every completion
/// signals).
fn cores(nr: u32) -> Vec<Core> {
    let Some(first) = core(nr) else {
        return Vec::new();
    };
    let watching = Core::new(sys::Context::new(nr).unwrap(), waker().unwrap()).with_watch();
    let ctx = sys::Context::new(nr).unwrap();
    vec![first, watching, Core::without_poll(ctx, waker().unwrap())]
}

/// Turns the core until `sink` has seen `n` ops end (bounded).
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

fn read_back(dev: &TempDev, off: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    // SAFETY: reads into our own 512-byte array from an open fd.
    let n = unsafe { libc::pread(dev.dev.fd(), b.as_mut_ptr() as *mut _, 512, off as i64) };
    assert_eq!(n, 512);
    b
}

#[test]
fn the_core_waits_in_io_getevents_where_the_kernel_polls_in_aio() {
    let Some(core) = core(8) else { return };
    // IOCB_CMD_POLL came with IOCB_CMD_FDSYNC, in Linux 4.18.
    assert_eq!(core.polls_in_context(), sys::has_fdsync());
}

#[test]
fn the_completion_threads_core_watches_with_the_shared_policy() {
    // How the watch adapts is tested in engine/watch.rs; here: the
    // completion thread's core starts at the longest watch, and the
    // reactor's never watches.
    let Some(core) = core(8) else { return };
    assert_eq!(core.watch_ns(), 0, "the reactor's core does not watch");
    let core = core.with_watch();
    if core.watch_ns() == 0 {
        return; // no ring to read without a system call, or DMIO_WATCH=0
    }
    assert_eq!(
        core.watch_ns() as u128,
        crate::engine::watch::WATCH_MAX.as_nanos()
    );
}

#[test]
fn kernel_versions_compare() {
    assert!(sys::kernel_at_least("6.18.44-fc-v1300", (4, 18)));
    assert!(sys::kernel_at_least("4.18.0", (4, 18)));
    assert!(!sys::kernel_at_least("4.17.9", (4, 18)));
    assert!(!sys::kernel_at_least("3.10.0-1160.el7", (4, 18)));
    assert!(!sys::kernel_at_least("", (4, 18)));
}

#[test]
fn each_completion_finds_its_op_and_slab_entries_are_reused() {
    for mut core in cores(64) {
        let dev = TempDev::new("aio-slab");
        let pool = Pool::new(8, 4096).unwrap();
        let sink = Arc::new(Recorder::default());
        let ops = |round: u32| -> Vec<IoOp> {
            (0..8u32)
                .map(|i| {
                    let slot = pool.try_acquire().expect("a free slot");
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
        let used = core.slab.len();
        assert!(used <= 8 && core.free.len() == used);
        sink.done.lock().unwrap().clear();
        core.admit(ops(1));
        run(&mut core, &sink, 8);
        assert_eq!(sink.results(), want);
        assert_eq!(core.slab.len(), used, "the slab did not grow");
        assert_eq!(pool.in_use(), 0, "every slot went back");
    }
}

#[test]
fn a_flush_write_runs_its_fdatasync_first_then_the_write_once() {
    for mut core in cores(64) {
        let dev = TempDev::new("aio-flush");
        let pool = Pool::new(2, 4096).unwrap();
        let sink = Arc::new(Recorder::default());
        let slot = pool.try_acquire().unwrap();
        slot.bytes_mut(4096).fill(0x77);
        let w = IoOp {
            pre_flush: true,
            ..op(OpKind::Write, &dev, &sink, 0, 0, 4096, Some(slot))
        };
        let slot = pool.try_acquire().unwrap();
        slot.bytes_mut(4096).fill(0x66);
        let fua = IoOp {
            fua: true,
            ..op(OpKind::Write, &dev, &sink, 2, 8192, 4096, Some(slot))
        };
        let f = op(OpKind::Flush, &dev, &sink, 1, 0, 0, None);
        core.admit([w, f, fua]);
        run(&mut core, &sink, 3);
        core.wait(None, &|| false, Some(Duration::from_millis(1)));
        core.reap();
        assert_eq!(sink.results(), vec![(0, 4096), (1, 0), (2, 4096)]);
        assert!(core.idle());
        assert!(
            read_back(&dev, 0).iter().all(|&b| b == 0x77),
            "the write ran"
        );
        assert!(
            read_back(&dev, 8192).iter().all(|&b| b == 0x66),
            "the FUA write ran"
        );
    }
}

#[test]
fn a_bad_iocb_fails_its_op_alone() {
    let Some(mut core) = core(64) else { return };
    let dev = TempDev::new("aio-bad");
    let pool = Pool::new(2, 4096).unwrap();
    let sink = Arc::new(Recorder::default());
    let good = op(OpKind::Read, &dev, &sink, 0, 0, 512, pool.try_acquire());
    // No buffer at all: the kernel refuses it (EFAULT) in io_submit or
    // completes it with -EFAULT; either way that op alone fails.
    let bad = op(OpKind::Read, &dev, &sink, 1, 0, 512, None);
    let good2 = op(OpKind::Read, &dev, &sink, 2, 512, 512, pool.try_acquire());
    core.admit([good, bad, good2]);
    run(&mut core, &sink, 3);
    assert_eq!(sink.results(), vec![(0, 512), (1, -libc::EFAULT), (2, 512)]);
    assert!(core.idle());
}

#[test]
fn more_ops_than_the_context_holds_wait_in_the_backlog() {
    // The kernel rounds a context up (to at least 4 per CPU, doubled), so
    // the core's own cap decides: 32 here, 100 ops.
    for mut core in cores(32) {
        let dev = TempDev::new("aio-backlog");
        let sink = Arc::new(Recorder::default());
        let pool = Pool::new(100, 4096).unwrap();
        let ops: Vec<IoOp> = (0..100u32)
            .map(|i| {
                op(
                    OpKind::Read,
                    &dev,
                    &sink,
                    i,
                    (i as u64 % 512) * 512,
                    512,
                    pool.try_acquire(),
                )
            })
            .collect();
        core.admit(ops);
        core.pump(Instant::now());
        assert!(core.inflight <= 32, "{} in flight", core.inflight);
        run(&mut core, &sink, 100);
        assert_eq!(sink.count(), 100);
        assert!(sink.results().iter().all(|r| r.1 == 512));
        assert!(core.idle());
    }
}

#[test]
fn a_wake_up_ends_the_wait_and_a_deadline_fires_on_time() {
    for mut core in cores(32) {
        // A wake-up written while the core sleeps ends the wait at once.
        let w = Arc::clone(&core.waker);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            Wake::wake(&*w);
        });
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) && !t.is_finished() {
            core.wait(None, &|| false, Some(Duration::from_secs(10)));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "woken, not timed out"
        );
        t.join().unwrap();
        core.reap();
        // A deadline: the wait ends for it, and it fires no earlier.
        let fired = Arc::new(Fired::default());
        let at = Instant::now() + Duration::from_millis(15);
        core.arm(at, Arc::downgrade(&fired) as Weak<Fired>);
        while fired.times() == 0 {
            core.wait(None, &|| false, None);
            core.reap();
            core.pump(Instant::now());
        }
        assert!(Instant::now() >= at);
        assert!(at.elapsed() < Duration::from_secs(2));
    }
}

#[test]
fn a_delayed_op_waits_in_the_sched_then_runs() {
    let Some(mut core) = core(32) else { return };
    let dev = TempDev::new("aio-delay");
    dev.dev.faults.set("delay read=30ms").unwrap();
    let pool = Pool::new(1, 4096).unwrap();
    let sink = Arc::new(Recorder::default());
    let t0 = Instant::now();
    core.admit([op(
        OpKind::Read,
        &dev,
        &sink,
        0,
        512,
        512,
        pool.try_acquire(),
    )]);
    assert!(!core.idle(), "parked ops count");
    run(&mut core, &sink, 1);
    assert!(t0.elapsed() >= Duration::from_millis(30));
    assert_eq!(sink.results(), vec![(0, 512)]);
    assert!(core.idle());
}

#[test]
fn the_engine_runs_direct_and_buffered_devices_and_shuts_down() {
    let e = match AioEngine::new(64, 4) {
        Ok(e) => e,
        Err(err) => {
            eprintln!("skipped: Linux AIO refused here ({err})");
            return;
        }
    };
    assert_eq!(e.kind(), EngineKind::Aio);
    // A buffered TempDev goes to the thread pool; the same file opened
    // with O_DIRECT (where the file system allows it) goes through AIO.
    let dev = TempDev::new("aio-engine");
    let pool = Pool::new(4, 4096).unwrap();
    let sink = Arc::new(Recorder::default());
    let mut ops = vec![op(
        OpKind::Read,
        &dev,
        &sink,
        0,
        4096,
        4096,
        pool.try_acquire(),
    )];
    let dir = std::env::var("DMIO_TEST_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let path = format!("{dir}/dmio-aio-unit-{}", std::process::id());
    let data: Vec<u8> = (0..64u32).flat_map(|s| [s as u8; 512]).collect();
    std::fs::write(&path, data).unwrap();
    let direct = crate::device::Device::open(&path, 0).unwrap();
    let is_direct = direct.direct();
    let direct = TempDevOf(Arc::new(direct));
    ops.push(IoOp {
        dev: Arc::clone(&direct.0),
        ..op(OpKind::Read, &dev, &sink, 1, 8192, 4096, pool.try_acquire())
    });
    e.submit(&mut ops);
    assert!(ops.is_empty());
    let t0 = Instant::now();
    while sink.count() < 2 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        sink.results(),
        vec![(0, 4096), (1, 4096)],
        "direct: {is_direct}"
    );
    let firsts: Vec<Option<u8>> = {
        let mut d = sink.done.lock().unwrap().clone();
        d.sort();
        d.iter().map(|x| x.2).collect()
    };
    assert_eq!(firsts, vec![Some(8), Some(16)]);
    e.shutdown();
}

/// A device opened for a test, outside the kit's buffered `TempDev`.
struct TempDevOf(Arc<crate::device::Device>);

#[test]
fn the_completion_threads_context_takes_its_engines_async_ops_only() {
    // A thread of its own, as a completion thread (the context lives in
    // that thread's thread-local).
    std::thread::spawn(|| {
        const E: u64 = u64::MAX - 7;
        let Some(ring) = local::install(E, 32, Arc::new(blocking::Blocking::new(2, false))) else {
            eprintln!("skipped: a second AIO context refused here");
            return;
        };
        let dev = TempDev::new("aio-local");
        let pool = Pool::new(4, 4096).unwrap();
        let sink = Arc::new(Recorder::default());
        let mut ops = vec![
            op(OpKind::Read, &dev, &sink, 0, 0, 4096, pool.try_acquire()),
            IoOp {
                sync: true,
                ..op(OpKind::Read, &dev, &sink, 1, 4096, 4096, pool.try_acquire())
            },
        ];
        local::offer(E + 1, &mut ops);
        assert_eq!(ops.len(), 2, "another engine's context takes nothing");
        local::offer(E, &mut ops);
        assert_eq!(ops.len(), 1, "the SYNC op stays for the reactor");
        assert!(ops[0].sync);
        assert!(local::active() && !local::idle());
        for _ in 0..1000 {
            if sink.count() == 1 {
                break;
            }
            local::turn(&|| false, Some(Duration::from_millis(10)));
        }
        assert_eq!(sink.results(), vec![(0, 4096)]);
        assert_eq!(sink.done.lock().unwrap()[0].2, Some(0), "sector 0's data");
        // A wake-up from another thread ends a turn.
        let w = ring.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake();
        });
        let t0 = Instant::now();
        local::turn(&|| false, Some(Duration::from_secs(10)));
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "woken, not timed out"
        );
        t.join().unwrap();
        // Closed: new ops go elsewhere.
        local::close();
        assert!(!local::active() && local::idle());
        ops.push(op(
            OpKind::Read,
            &dev,
            &sink,
            2,
            0,
            4096,
            pool.try_acquire(),
        ));
        local::offer(E, &mut ops);
        assert_eq!(ops.len(), 2, "a closed context takes nothing");
        drop(ops);
        drop(ring);
    })
    .join()
    .unwrap();
}

#[test]
fn a_write_the_kernel_would_block_on_runs_on_the_thread_pool() {
    // A sparse O_DIRECT file on the test directory's file system, with
    // RWF_NOWAIT on files too (the engine uses it on block devices only): a
    // write into its hole must allocate, which ext4 refuses under
    // RWF_NOWAIT (-EAGAIN); the op then runs on the pool and still ends
    // once, OK.
    let dir = std::env::var("DMIO_TEST_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let path = format!("{dir}/dmio-aio-nowait-{}", std::process::id());
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    let dev = crate::device::Device::open(&path, 0).unwrap();
    let direct = dev.direct();
    let dev = Arc::new(dev);
    let Some(core) = core(32) else {
        let _ = std::fs::remove_file(&path);
        return;
    };
    let blocking = Arc::new(blocking::Blocking::new(2, false));
    let mut core = core.with_blocking(Arc::clone(&blocking));
    core.nowait_files = true;
    let kit = TempDev::new("aio-nowait-kit");
    let pool = Pool::new(2, 4096).unwrap();
    let sink = Arc::new(Recorder::default());
    let slot = pool.try_acquire().unwrap();
    slot.bytes_mut(4096).fill(0x5a);
    let w = IoOp {
        dev: Arc::clone(&dev),
        ..op(OpKind::Write, &kit, &sink, 0, 65536, 4096, Some(slot))
    };
    core.admit([w]);
    let t0 = Instant::now();
    while sink.count() < 1 && t0.elapsed() < Duration::from_secs(5) {
        core.pump(Instant::now());
        core.wait(None, &|| false, Some(Duration::from_millis(5)));
        core.reap();
    }
    let mut b = [0u8; 512];
    // SAFETY: reads into our own 512-byte array from an open fd.
    let n = unsafe { libc::pread(dev.fd(), b.as_mut_ptr() as *mut _, 512, 65536) };
    let fs_magic = {
        // SAFETY: statfs fills our zeroed local struct from a live fd.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::fstatfs(dev.fd(), &mut st) };
        st.f_type
    };
    let _ = std::fs::remove_file(&path);
    assert_eq!(sink.results(), vec![(0, 4096)]);
    assert_eq!(n, 512);
    assert!(b.iter().all(|&x| x == 0x5a), "the write landed");
    assert!(core.idle());
    if direct && fs_magic == 0xEF53 {
        assert!(
            blocking.started(),
            "ext4 refused the NOWAIT write: the pool ran it"
        );
    }
}

#[test]
fn library_page_reads_run_in_their_pages_and_go_to_threads_as_plain_reads() {
    use crate::memory::caller::CallerPtr;
    use crate::memory::{lib_pages, pages, PAGE_SIZE};
    use std::sync::atomic::Ordering;
    let _one = lib_pages::DETACH_TESTS
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let Some(mut core) = core(8) else { return };
    let dev = TempDev::new("aio-pages");
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

    // In place: the data lands in the page, no demotion.
    let sink = Arc::new(Recorder::default());
    core.admit([read(&sink, 24)]);
    run(&mut core, &sink, 1);
    assert_eq!(sink.results(), vec![(0, 4096)]);
    assert_eq!(first_byte(), 24);
    assert_eq!(sink.demotes.load(Ordering::SeqCst), 0, "ran in place");

    // A request whose pages a cancel detached: its op never starts.
    let sink = Arc::new(Recorder::default());
    sink.detached.store(true, Ordering::SeqCst);
    core.admit([read(&sink, 40)]);
    run(&mut core, &sink, 1);
    assert_eq!(sink.results(), vec![(0, -libc::ECANCELED)]);
    assert_eq!(first_byte(), 24);

    // Headed for a thread: a plain read (a cancel waits for it), or, if
    // the pages are detached or the request will not wait, not at all.
    let (plain, gone, refused) = (
        Arc::new(Recorder::default()),
        Arc::new(Recorder::default()),
        Arc::new(Recorder::default()),
    );
    gone.detached.store(true, Ordering::SeqCst);
    refused.refuse_demote.store(true, Ordering::SeqCst);
    let mut ops = vec![read(&plain, 8), read(&gone, 8), read(&refused, 8)];
    blocking::plain_for_threads(&mut ops);
    assert_eq!(ops.len(), 1);
    assert_eq!(plain.demotes.load(Ordering::SeqCst), 1);
    assert_eq!(gone.results(), vec![(0, -libc::ECANCELED)]);
    assert_eq!(refused.results(), vec![(0, -libc::ECANCELED)]);
    drop(ops);
    assert!(pages::free(p));
}
