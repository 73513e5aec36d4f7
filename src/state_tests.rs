//! State-machine tests on the hand-driven engine: every interleaving that
//! real devices make hard to reproduce (destroy with IO in flight, late
//! completions, cancel racing a completion) is forced here step by step.

use crate::client::{Client, Submit};
use crate::device::Device;
use crate::engine::manual::ManualEngine;
use crate::memory::caller::{CallerMemory, CallerPtr, Segment};
use crate::request::{Mode, Notifier, Notify, RegionSpec, State};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Rec(Mutex<Vec<(u32, State, i32)>>);

struct RecRef(Arc<Rec>);
impl Notifier for RecRef {
    fn notify(&self, index: u32, state: State, error: i32, _handle: usize) {
        self.0 .0.lock().unwrap().push((index, state, error));
    }
}

impl Rec {
    fn events(&self) -> Vec<(u32, State, i32)> {
        self.0.lock().unwrap().clone()
    }
    fn wait_len(&self, n: usize) -> Vec<(u32, State, i32)> {
        for _ in 0..500 {
            let e = self.events();
            if e.len() >= n {
                return e;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("expected {n} events, got {:?}", self.events());
    }
}

struct Fixture {
    dir: std::path::PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dmio-sm-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Fixture { dir }
    }
    fn dev(&self, name: &str) -> Arc<Device> {
        let p = self.dir.join(name);
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        Arc::new(Device::open(p.to_str().unwrap(), crate::device::OPEN_BUFFERED).unwrap())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client(slots: u32, max_size: u32) -> (Arc<Client>, Arc<ManualEngine>) {
    let eng = Arc::new(ManualEngine::default());
    let c = Client::with_engine(slots, 1, max_size, eng.clone()).unwrap();
    (c, eng)
}

fn mem(buf: &mut [u8]) -> CallerMemory {
    CallerMemory::from_segments(vec![Segment {
        addr: CallerPtr::new(buf.as_mut_ptr()).expect("a buffer"),
        len: buf.len(),
    }])
}

fn submit(
    c: &Arc<Client>,
    mode: Mode,
    regions: Vec<RegionSpec>,
    buf: &mut [u8],
    rec: &Arc<Rec>,
    timeout: Option<Duration>,
) -> usize {
    c.submit(Submit {
        mode,
        flush: false,
        fua: false,
        timeout,
        regions: regions.into(),
        mem: mem(buf),
        notify: Some(Notify::Dyn(Box::new(RecRef(Arc::clone(rec))))),
        want_handle: true,
    })
    .unwrap()
    .handle
    .unwrap()
}

fn region(dev: &Arc<Device>, sector: u64, count: u64) -> RegionSpec {
    RegionSpec {
        dev: Arc::clone(dev),
        sector,
        count,
    }
}

const READ: Mode = Mode {
    write: false,
    sync: false,
    cancel_on_timeout: false,
    read_any: false,
    zero_copy: false,
    lib_pages: false,
    return_on_timeout: false,
};
const WRITE: Mode = Mode {
    write: true,
    sync: false,
    cancel_on_timeout: false,
    read_any: false,
    zero_copy: false,
    lib_pages: false,
    return_on_timeout: false,
};

#[test]
fn destroy_in_flight_keeps_memory_until_kernel_done() {
    let f = Fixture::new("destroy");
    let d = f.dev("a");
    let (c, eng) = client(2, 4096);
    let rec = Arc::new(Rec::default());
    let mut buf = vec![0xABu8; 4096];
    let h = submit(&c, READ, vec![region(&d, 0, 8)], &mut buf, &rec, None);
    assert_eq!(eng.pending(), 1);
    let pool = Arc::downgrade(c.pool());
    c.destroy();
    // Destroy delivered the CANCELLED notification before returning.
    assert_eq!(rec.events(), vec![(0, State::Cancelled, -libc::ESHUTDOWN)]);
    assert!(eng.shut.load(std::sync::atomic::Ordering::SeqCst));
    drop(c);
    // The kernel still owns the op: its private memory is alive and in use.
    let p = pool.upgrade().expect("pool alive while IO is in flight");
    assert_eq!(p.in_use(), 1);
    drop(p);
    // The "kernel" completes: nothing lands in the caller's memory, the
    // slot goes back, and with the last reference the memory is unmapped.
    eng.complete_all(0, 0xFF);
    assert!(
        buf.iter().all(|&b| b == 0xAB),
        "cancelled read wrote caller memory"
    );
    assert_eq!(rec.events().len(), 1, "no notification after the final one");
    assert!(crate::handle::put(h) == Some(false));
    assert!(
        pool.upgrade().is_none(),
        "private memory freed after the IO ended"
    );
}

#[test]
fn timeout_then_late_ok_then_nothing() {
    let f = Fixture::new("late");
    let d = f.dev("a");
    let (c, eng) = client(1, 4096);
    let rec = Arc::new(Rec::default());
    let mut buf = vec![0u8; 4096];
    let h = submit(
        &c,
        READ,
        vec![region(&d, 8, 8)],
        &mut buf,
        &rec,
        Some(Duration::from_millis(1)),
    );
    eng.fire_deadlines();
    assert_eq!(rec.wait_len(1), vec![(0, State::Timeout, -libc::ETIMEDOUT)]);
    eng.fire_deadlines();
    eng.complete_all(0, 0x5A);
    let ev = rec.wait_len(2);
    assert_eq!(ev[1], (0, State::Ok, 0));
    assert!(buf.iter().all(|&b| b == 0x5A), "late read data delivered");
    c.destroy();
    assert_eq!(rec.events().len(), 2);
    crate::handle::put(h);
}

#[test]
fn cancel_on_timeout_ends_cancelled_without_timeout() {
    let f = Fixture::new("cot");
    let d = f.dev("a");
    let (c, eng) = client(2, 4096);
    let rec = Arc::new(Rec::default());
    let mut buf = vec![1u8; 4096];
    let mode = Mode {
        cancel_on_timeout: true,
        ..WRITE
    };
    let h = submit(
        &c,
        mode,
        vec![region(&d, 0, 8), region(&d, 16, 8)],
        &mut buf,
        &rec,
        Some(Duration::from_millis(1)),
    );
    // One shared slot for both legs of the mirror write.
    assert_eq!(c.pool().in_use(), 1);
    assert_eq!(eng.pending(), 2);
    eng.fire_deadlines();
    let ev = rec.wait_len(2);
    assert!(
        ev.iter()
            .all(|e| e.1 == State::Cancelled && e.2 == -libc::ETIMEDOUT),
        "{ev:?}"
    );
    eng.complete_all(0, 0);
    assert_eq!(c.pool().in_use(), 0);
    c.destroy();
    assert_eq!(rec.events().len(), 2);
    crate::handle::put(h);
}

#[test]
fn cancel_racing_completion_is_final_once() {
    let f = Fixture::new("race");
    let d = f.dev("a");
    let (c, eng) = client(1, 4096);
    let rec = Arc::new(Rec::default());
    let mut buf = vec![0xCCu8; 4096];
    let h = submit(&c, READ, vec![region(&d, 0, 8)], &mut buf, &rec, None);
    let req = crate::handle::lookup(h).unwrap();
    assert_eq!(c.cancel_request(&req).unwrap(), 1);
    assert_eq!(c.cancel_request(&req).unwrap(), 0);
    eng.complete_all(0, 0x11);
    assert_eq!(
        rec.wait_len(1),
        vec![(0, State::Cancelled, -libc::ECANCELED)]
    );
    assert!(buf.iter().all(|&b| b == 0xCC));
    c.destroy();
    assert_eq!(rec.events().len(), 1);
    crate::handle::put(h);
}

#[test]
fn errors_keep_first_errno_and_split_regions_wait_for_memory() {
    let f = Fixture::new("split");
    let d = f.dev("a");
    // One slot of 4 KiB, a 12 KiB read: three ops, one at a time.
    let (c, eng) = client(1, 4096);
    let rec = Arc::new(Rec::default());
    let mut buf = vec![0u8; 12288];
    let bufp = buf.as_mut_ptr() as usize;
    let c2 = Arc::clone(&c);
    let rec2 = Arc::clone(&rec);
    let d2 = Arc::clone(&d);
    let t = std::thread::spawn(move || {
        // SAFETY: `buf` outlives the thread (joined below) and is not
        // touched by the test until then.
        let b = unsafe { std::slice::from_raw_parts_mut(bufp as *mut u8, 12288) };
        submit(&c2, READ, vec![region(&d2, 0, 24)], b, &rec2, None)
    });
    for fill in [1u8, 2, 3] {
        let mut spins = 0;
        while eng.pending() == 0 {
            spins += 1;
            assert!(spins < 5000, "submission did not progress");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(c.pool().in_use(), 1, "never more than the pool");
        eng.complete_all(0, fill);
    }
    let h = t.join().unwrap();
    assert_eq!(rec.wait_len(1), vec![(0, State::Ok, 0)]);
    assert!(buf[..4096].iter().all(|&b| b == 1));
    assert!(buf[8192..].iter().all(|&b| b == 3));
    assert!(c.pool().waits() >= 1);
    crate::handle::put(h);

    // An error on one op: final ERROR with that errno, after all ops end.
    let rec = Arc::new(Rec::default());
    let mut buf = vec![0u8; 4096];
    let d = f.dev("b");
    let h = submit(&c, READ, vec![region(&d, 0, 8)], &mut buf, &rec, None);
    eng.complete_all(-libc::EIO, 0);
    assert_eq!(rec.wait_len(1), vec![(0, State::Error, -libc::EIO)]);
    c.destroy();
    crate::handle::put(h);
}

#[test]
fn zero_copy_read_runs_in_caller_memory_without_private_memory() {
    let f = Fixture::new("zc");
    let d = f.dev("a");
    let (c, eng) = client(1, 4096);
    let rec = Arc::new(Rec::default());
    let mut buf = vec![0u8; 8192];
    let mode = Mode {
        zero_copy: true,
        ..READ
    };
    let h = submit(&c, mode, vec![region(&d, 0, 16)], &mut buf, &rec, None);
    // Two pieces of the caller's buffer, no slot taken.
    assert_eq!(c.pool().in_use(), 0);
    {
        let ops = eng.ops.lock().unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].buf() as usize, buf.as_ptr() as usize);
        assert_eq!(ops[1].buf() as usize, buf.as_ptr() as usize + 4096);
    }
    eng.complete_all(0, 0x5A);
    assert_eq!(rec.wait_len(1), vec![(0, State::Ok, 0)]);
    assert!(buf.iter().all(|&b| b == 0x5A));
    c.destroy();
    crate::handle::put(h);
}

#[test]
fn zero_copy_cancel_ends_when_the_io_does() {
    let f = Fixture::new("zccancel");
    let d = f.dev("a");
    let (c, eng) = client(1, 4096);
    let rec = Arc::new(Rec::default());
    let mut buf = vec![0u8; 4096];
    let mode = Mode {
        zero_copy: true,
        ..READ
    };
    let h = submit(
        &c,
        mode,
        vec![region(&d, 0, 8)],
        &mut buf,
        &rec,
        Some(Duration::from_millis(1)),
    );
    let req = crate::handle::lookup(h).unwrap();
    assert_eq!(c.cancel_request(&req).unwrap(), 1);
    // Counted once, and no TIMEOUT for a region already cancelled.
    assert_eq!(c.cancel_request(&req).unwrap(), 0);
    eng.fire_deadlines();
    std::thread::sleep(Duration::from_millis(20));
    assert!(rec.events().is_empty(), "{:?}", rec.events());
    assert!(!req.all_final());
    // The kernel ends the IO (successfully): the region ends CANCELLED.
    eng.complete_all(0, 0x11);
    assert_eq!(
        rec.wait_len(1),
        vec![(0, State::Cancelled, -libc::ECANCELED)]
    );
    c.destroy();
    assert_eq!(rec.events().len(), 1);
    crate::handle::put(h);
}

#[test]
fn hedged_read_starts_the_next_region_on_error_or_at_its_timer() {
    let f = Fixture::new("hedge");
    let (a, b, d) = (f.dev("a"), f.dev("b"), f.dev("c"));
    let legs = || vec![region(&a, 0, 8), region(&b, 0, 8), region(&d, 0, 8)];
    let any = Mode {
        read_any: true,
        ..READ
    };
    let (c, eng) = client(3, 4096);
    let rec = Arc::new(Rec::default());
    let mut buf = vec![0u8; 4096];
    let h = submit(&c, any, legs(), &mut buf, &rec, None);
    // One region runs; each region's private memory is taken up front.
    assert_eq!(eng.pending(), 1);
    assert_eq!(c.pool().in_use(), 3);
    eng.complete_all(-libc::EIO, 0);
    assert_eq!(eng.pending(), 1, "an ERROR starts the next region at once");
    eng.complete_all(0, 0x42);
    assert_eq!(
        rec.wait_len(3),
        vec![
            (0, State::Error, -libc::EIO),
            (1, State::Ok, 0),
            (2, State::Cancelled, -libc::ECANCELED)
        ]
    );
    assert!(buf.iter().all(|&x| x == 0x42));
    assert_eq!(c.pool().in_use(), 0, "the unstarted region's memory went");
    assert_eq!(c.stats().hedges, 1);
    crate::handle::put(h);

    // With a hedge delay, the timer starts the next region while the
    // first still runs; the first OK wins.
    c.set_hedge(5);
    let rec = Arc::new(Rec::default());
    let h = submit(&c, any, legs(), &mut buf, &rec, None);
    assert_eq!(eng.pending(), 1);
    eng.fire_deadlines();
    assert_eq!(eng.pending(), 2, "the hedge timer started region 1");
    eng.complete_all(0, 0x24);
    let ev = rec.wait_len(3);
    assert_eq!(ev.iter().filter(|e| e.1 == State::Ok).count(), 1, "{ev:?}");
    assert_eq!(c.stats().hedges, 2);
    c.destroy();
    crate::handle::put(h);
}
