//! Unit tests of the completion thread's ring: ops of its own engine
//! only, eager submission while callbacks wait, the inbox while it reaps,
//! timers armed here or handed over.

use super::*;
use crate::engine::manual::kit::{op, Fired, Recorder, TempDev};
use crate::engine::OpKind;
use crate::memory::pool::Pool;

/// An engine id no real engine has (each test runs on its own thread,
/// so its ring is its own).
const E: u64 = u64::MAX - 3;

/// A ring on this thread for engine `E`, or `None` (said) where the
/// kernel refuses io_uring.
fn ring() -> Option<(LocalRing, Arc<Remote>)> {
    let r = install(E, 64, &[], &Arc::new(crate::thread_mark::Mark::new()));
    if r.is_none() {
        eprintln!("skipped: io_uring refused here");
    }
    r
}

/// Turns the ring until `done()` (bounded).
fn turn_until(done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        turn(&|| false, Some(Duration::from_millis(10)));
    }
    panic!("the ring never got there");
}

fn queued() -> usize {
    let mut q = 0;
    HERE.with(|l| l.with_core(|c| q = c.depth().1));
    q
}

fn weak(t: &Arc<Fired>) -> Weak<dyn Timer> {
    Arc::downgrade(t) as Weak<Fired>
}

#[test]
fn a_ring_takes_the_async_ops_of_its_own_engine_only() {
    let Some(_ring) = ring() else { return };
    let dev = TempDev::new("offer");
    let pool = Pool::new(2, 4096).unwrap();
    let sink = Arc::new(Recorder::default());
    let mut ops = vec![
        op(OpKind::Read, &dev, &sink, 0, 0, 4096, pool.try_acquire()),
        IoOp {
            sync: true,
            ..op(OpKind::Read, &dev, &sink, 1, 0, 4096, pool.try_acquire())
        },
    ];
    offer(E + 1, &mut ops);
    assert_eq!(ops.len(), 2, "another engine's ring takes nothing");
    offer(E, &mut ops);
    assert_eq!(ops.len(), 1);
    assert!(ops[0].sync, "SYNC IO stays with the reactor");
    assert!(!idle());
    turn_until(idle);
    assert_eq!(sink.results(), vec![(0, 4096)]);
    close();
}

#[test]
fn io_a_callback_queued_starts_at_once_only_while_more_callbacks_wait() {
    let Some(_ring) = ring() else { return };
    let dev = TempDev::new("eager");
    let pool = Pool::new(2, 4096).unwrap();
    let sink = Arc::new(Recorder::default());
    // No IO offered: `more` is not even asked.
    submit_queued(&|| panic!("asked with nothing offered"));
    let mut ops = vec![op(
        OpKind::Read,
        &dev,
        &sink,
        0,
        0,
        4096,
        pool.try_acquire(),
    )];
    offer(E, &mut ops);
    submit_queued(&|| false);
    assert!(queued() > 0, "left for the thread's next wait");
    let mut ops = vec![op(
        OpKind::Read,
        &dev,
        &sink,
        1,
        0,
        4096,
        pool.try_acquire(),
    )];
    offer(E, &mut ops);
    submit_queued(&|| true);
    assert_eq!(queued(), 0, "started at once");
    turn_until(idle);
    assert_eq!(sink.results(), vec![(0, 4096), (1, 4096)]);
    close();
}

#[test]
fn an_op_offered_while_the_ring_reaps_waits_in_the_inbox() {
    let Some(_ring) = ring() else { return };
    let dev = TempDev::new("inbox");
    let pool = Pool::new(2, 4096).unwrap();
    let sink = Arc::new(Recorder::default());
    // The first op's end (inside the ring's reap) offers the second.
    let mut next = Some(op(
        OpKind::Read,
        &dev,
        &sink,
        1,
        0,
        4096,
        pool.try_acquire(),
    ));
    *sink.on_done.lock().unwrap() = Some(Box::new(move |region| {
        if let (0, Some(o)) = (region, next.take()) {
            let mut v = vec![o];
            offer(E, &mut v);
            assert!(v.is_empty(), "taken, into the inbox");
        }
    }));
    let mut ops = vec![op(
        OpKind::Read,
        &dev,
        &sink,
        0,
        0,
        4096,
        pool.try_acquire(),
    )];
    offer(E, &mut ops);
    turn_until(|| sink.count() == 1);
    assert!(HERE.with(|l| !l.inbox_empty()), "waiting in the inbox");
    assert!(!idle());
    turn_until(idle);
    assert_eq!(sink.results(), vec![(0, 4096), (1, 4096)]);
    *sink.on_done.lock().unwrap() = None;
    close();
}

#[test]
fn timers_armed_here_or_handed_over_fire_on_the_ring() {
    let Some((_ring, remote)) = ring() else {
        return;
    };
    let (here, far) = (Arc::new(Fired::default()), Arc::new(Fired::default()));
    let due = Instant::now();
    assert!(
        !offer_timer(E + 1, due, &weak(&here)),
        "not this ring's engine"
    );
    assert!(offer_timer(E, due, &weak(&here)));
    let (r, f) = (Arc::clone(&remote), Arc::clone(&far));
    std::thread::spawn(move || assert!(r.arm(due, weak(&f))))
        .join()
        .unwrap();
    turn_until(|| here.times() == 1 && far.times() == 1);
    // Closed: the ring takes no more timers from anyone.
    close();
    assert!(!remote.arm(due, weak(&far)));
    assert!(!offer_timer(E, due, &weak(&here)));
    assert!(idle());
}

/// A socket for the ring: records what it receives, sends `out` once.
struct Echo {
    fd: std::os::fd::OwnedFd,
    buf: std::cell::UnsafeCell<[u8; 64]>,
    got: Mutex<Vec<u8>>,
    out: Mutex<Option<Vec<u8>>>,
    sending: Mutex<Vec<u8>>,
    sent: std::sync::atomic::AtomicUsize,
    ended: AtomicBool,
}

// SAFETY: `buf` is written by the kernel while the one RECV is in flight
// and read by `on_recv` after its completion, both on the test's thread.
unsafe impl Sync for Echo {}

impl crate::engine::socket::RingSocket for Echo {
    fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }
    fn recv_buf(&self) -> (*mut u8, usize) {
        (self.buf.get() as *mut u8, 64)
    }
    fn on_recv(&self, res: i32) -> bool {
        if res <= 0 {
            self.ended.store(true, Ordering::SeqCst);
            return false;
        }
        // SAFETY: the kernel filled `res` bytes (at most 64) and is done.
        let b = unsafe { std::slice::from_raw_parts(self.buf.get() as *const u8, res as usize) };
        self.got.lock().unwrap().extend_from_slice(b);
        true
    }
    fn take_send(&self) -> Option<crate::engine::socket::Outgoing> {
        let mut s = self.sending.lock().unwrap();
        *s = self.out.lock().unwrap().take()?;
        Some(crate::engine::socket::Outgoing {
            ptr: s.as_ptr(),
            len: s.len(),
            lone: true,
        })
    }
    fn on_sent(&self, res: i32) {
        self.sent.fetch_add(res.max(0) as usize, Ordering::SeqCst);
    }
    fn detach(&self) {
        // SAFETY: shutdown on our own socket.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_RDWR) };
    }
}

#[test]
fn an_attached_socket_receives_sends_when_kicked_and_leaves_after_its_end() {
    use crate::engine::socket::{RingSocket, SocketHome};
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    let Some((_ring, remote)) = ring() else {
        return;
    };
    let (mine, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let echo = Arc::new(Echo {
        fd: OwnedFd::from(mine),
        buf: std::cell::UnsafeCell::new([0; 64]),
        got: Mutex::new(Vec::new()),
        out: Mutex::new(None),
        sending: Mutex::new(Vec::new()),
        sent: Default::default(),
        ended: AtomicBool::new(false),
    });
    let home = SocketHome(Arc::clone(&remote));
    assert!(home.attach(echo.clone() as Arc<dyn RingSocket>));
    peer.write_all(b"ping").unwrap();
    turn_until(|| echo.got.lock().unwrap().as_slice() == b"ping");
    assert!(!idle(), "an attached socket keeps the ring busy");
    // New output, from another thread: the kick wakes the ring.
    *echo.out.lock().unwrap() = Some(b"pong".to_vec());
    let (h, e) = (home.clone(), echo.clone());
    std::thread::spawn(move || h.kick(e as Arc<dyn RingSocket>))
        .join()
        .unwrap();
    turn_until(|| echo.sent.load(Ordering::SeqCst) == 4);
    let mut b = [0u8; 4];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");
    // The connection ends: the RECV ends, the socket leaves the ring.
    echo.detach();
    turn_until(|| echo.ended.load(Ordering::SeqCst) && idle());
    assert_eq!(Arc::strong_count(&echo), 1, "the ring let the socket go");
}
