//! Sockets driven by a ring: a protocol client (the NBD device) attaches
//! its connection to the io_uring ring of a completion thread, which keeps
//! a RECV outstanding on it and SENDs what the client has to send, in the
//! same submissions as its other IO. The engine knows nothing of the
//! protocol: it sees a [`RingSocket`].
//!
//! Rules the ring keeps ([`super::uring::Core`]): a RECV always in flight
//! while the socket is open (into the buffer the socket owns), at most one
//! SEND in flight (of bytes the socket keeps unchanged until
//! [`RingSocket::on_sent`]); a socket whose RECV ended for good (the
//! client shut the connection down, or it broke) leaves the ring once no
//! entry of it is in flight. Until then the ring holds an `Arc` of it,
//! which keeps its buffers and its descriptor.
//!
//! Other threads with new output [`SocketHome::kick`] the ring; attaching
//! goes through the same queue ([`SocketHome::attach`]). The ring's thread
//! is woken only when it sleeps (a kick from its own thread costs no
//! system call).

use super::local;
use super::Timer;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// A connection a ring drives. Every method is called on the ring's
/// thread, never two at once for one socket.
pub trait RingSocket: Send + Sync {
    fn fd(&self) -> RawFd;
    /// Where RECVs land: start and length. Valid, and touched by no one
    /// but the kernel while a RECV is in flight, for as long as the socket
    /// lives (the ring holds it until its last entry is reaped).
    fn recv_buf(&self) -> (*mut u8, usize);
    /// A RECV ended with `res` (bytes received into [`Self::recv_buf`],
    /// or a negative errno). `true`: post another; `false`: the
    /// connection is over (its socket was shut down).
    fn on_recv(&self, res: i32) -> bool;
    /// Bytes to send now (unchanged and valid until [`Self::on_sent`]),
    /// if any. Only asked while no SEND is in flight.
    fn take_send(&self) -> Option<Outgoing>;
    /// The SEND of [`Self::take_send`]'s bytes ended with `res`.
    fn on_sent(&self, res: i32);
    /// The ring is going away (its client is destroyed): end the
    /// connection, so that the RECV ends.
    fn detach(&self);
}

/// What a [`RingSocket`] sends next.
pub struct Outgoing {
    /// Start of the bytes.
    pub ptr: *const u8,
    pub len: usize,
    /// The bytes carry the one request the peer has to answer (nothing
    /// else is outstanding on the connection), so the socket's send
    /// buffer is all but empty and the SEND completes at once; what the
    /// connection waits for next is the reply. The ring then submits the
    /// SEND and waits for the reply in one `io_uring_enter`.
    pub lone: bool,
}

/// Sockets waiting for the ring's attention.
pub(super) struct Kicks {
    pub(super) pending: AtomicBool,
    q: Mutex<KickQ>,
}

struct KickQ {
    /// (socket, attach): attach it, or it has new output.
    list: Vec<(Arc<dyn RingSocket>, bool)>,
    /// The ring closed: no more attaching.
    closed: bool,
}

impl Kicks {
    pub(super) fn new() -> Arc<Kicks> {
        Arc::new(Kicks {
            pending: AtomicBool::new(false),
            q: Mutex::new(KickQ {
                list: Vec::new(),
                closed: false,
            }),
        })
    }

    fn push(&self, s: Arc<dyn RingSocket>, attach: bool) -> bool {
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        if q.closed && attach {
            return false;
        }
        q.list.push((s, attach));
        self.pending.store(true, Ordering::SeqCst);
        true
    }

    /// Takes what waits (on the ring's thread); `true` when the ring is
    /// closed (sockets attached before are to be detached at once).
    pub(super) fn take(&self, into: &mut Vec<(Arc<dyn RingSocket>, bool)>) -> bool {
        if self.pending.swap(false, Ordering::SeqCst) {
            let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
            into.append(&mut q.list);
            return q.closed;
        }
        false
    }

    pub(super) fn close(&self) {
        self.q.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
    }
}

/// A ring sockets can be attached to: a completion thread's ring of an
/// io_uring engine.
#[derive(Clone)]
pub struct SocketHome(pub(super) Arc<local::Remote>);

impl SocketHome {
    /// Hands `s` to the ring, which starts receiving on it; `false` when
    /// the ring is closed.
    pub fn attach(&self, s: Arc<dyn RingSocket>) -> bool {
        let ok = self.0.kicks.push(s, true);
        if ok {
            self.0.wake();
        }
        ok
    }

    /// `s` (attached) has new output.
    pub fn kick(&self, s: Arc<dyn RingSocket>) {
        if self.0.kicks.push(s, false) {
            self.0.wake();
        }
    }

    /// Runs `timer` at `at` on the ring's thread; `false` when the ring is
    /// closed.
    pub fn arm(&self, at: Instant, timer: Weak<dyn Timer>) -> bool {
        self.0.arm(at, timer)
    }

    /// Whether two homes are the same ring.
    pub fn same(&self, o: &SocketHome) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }
}

/// The ring a socket first used on this thread should live on: the
/// calling thread's own completion ring, or, on an io_uring reactor
/// thread, its engine's completion ring. `None` elsewhere (thread-pool
/// engine, no second ring), or with `DMIO_NBD_DRIVER=thread`.
pub fn home() -> Option<SocketHome> {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *OFF.get_or_init(|| std::env::var("DMIO_NBD_DRIVER").is_ok_and(|v| v == "thread")) {
        return None;
    }
    local::home().map(SocketHome)
}
