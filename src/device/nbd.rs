//! NBD exports as devices: `dm_io_bdev_open("nbd://HOST[:PORT]/EXPORT")`
//! and `nbd+unix:///EXPORT?socket=PATH`.
//!
//! [`Remote`] owns the connection to one export. The protocol is the
//! sans-IO code of [`crate::nbd`] ([`Conn`] turns operations into requests
//! and replies into results); this file moves its bytes:
//!
//! - An operation the engine would start on a local device (after its
//!   fault rules, [`crate::engine::sched`]) is handed to [`Remote::start`]
//!   instead. Its request goes into the connection's output.
//! - Who moves the bytes (the connection's driver) is settled by its first
//!   operation. With the io_uring engine, the connection is attached to the
//!   ring of a completion thread ([`crate::engine::socket`]): the ring of
//!   the thread that starts the operation, or the completion ring of the
//!   reactor that admits it. That ring keeps a RECV outstanding on the
//!   socket and SENDs the output, batched with its other submissions: at
//!   queue depth 1, a reply's completion, its notify and the next request's
//!   SEND happen on that one thread. A request encoded on another thread
//!   kicks the ring. No thread per connection, except a short-lived one
//!   that reconnects after an outage.
//! - Otherwise (the thread-pool engine, no second ring, or
//!   `DMIO_NBD_DRIVER=thread`) the connection has an IO thread: the request
//!   is sent at once without blocking on the submitting thread, and what
//!   the socket does not take is sent by the IO thread, which also
//!   receives, sleeping in poll(2) while idle.
//! - Either way every byte the server sends is received into the
//!   connection's own buffer (library memory) and fed to the protocol,
//!   which completes the operations it ends. A read's data is copied into
//!   the operation's private memory, never into the caller's (unless the
//!   caller lent its memory with `DM_IO_ZERO_COPY`, which lasts until the
//!   op completes).
//! - An operation keeps its private memory until its reply has been read
//!   off the wire, or until the connection is gone: a timed-out or
//!   cancelled region's reply is still read (the stream stays in sync) and
//!   dropped by the request, which is already final.
//!
//! Failures, each ending the operations in flight on the connection with
//! an errno and starting a reconnect in the background (with backoff):
//! the connection breaks (`ECONNRESET`, or the socket's errno); the server
//! breaks the protocol (`EPROTO`); the server is silent for `silence=MS`
//! while requests are outstanding (`ETIMEDOUT`; on a ring, a timer on that
//! ring). While the connection is down, an operation ends at once with
//! `ENOTCONN`. Reconnecting needs the same export size.

use crate::engine::socket::{self, Outgoing, RingSocket, SocketHome};
use crate::engine::{IoOp, OpKind, Timer};
use crate::error::{Error, Result};
use crate::nbd::conn::{Conn, Job, JobBuf, JobKind};
use crate::nbd::handshake::{ExportInfo, Handshake};
use crate::nbd::uri::{self, NbdUri, Transport};
use crate::nbd::wire::TF_CAN_MULTI_CONN;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Longest wait between two reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The IO thread's receive buffer.
const RECV_BUF: usize = 256 << 10;

/// An operation as a job's token: its memory is the op's private memory
/// (or the memory the caller lent for a zero-copy op).
struct OpTok(IoOp);

impl JobBuf for OpTok {
    fn write_data(&self) -> &[u8] {
        let p = self.0.buf();
        if p.is_null() || self.0.len == 0 {
            return &[];
        }
        // SAFETY: the op owns `len` bytes at `buf()` (its private slot, or
        // lent caller memory) until it completes, which is after this
        // token is given back.
        unsafe { std::slice::from_raw_parts(p, self.0.len as usize) }
    }

    fn read_data(&mut self, at: u64, bytes: &[u8]) {
        let p = self.0.buf();
        let end = at.saturating_add(bytes.len() as u64);
        if p.is_null() || end > self.0.len as u64 || self.0.sink.detached() {
            return;
        }
        // SAFETY: `[at, end)` lies within the op's `len` bytes (checked),
        // which the op owns until it completes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.add(at as usize), bytes.len()) };
    }

    fn read_zeroes(&mut self, at: u64, len: u32) {
        let p = self.0.buf();
        let end = at.saturating_add(len as u64);
        if p.is_null() || end > self.0.len as u64 || self.0.sink.detached() {
            return;
        }
        // SAFETY: as in `read_data`.
        unsafe { std::ptr::write_bytes(p.add(at as usize), 0, len as usize) };
    }
}

/// An open connection.
struct Live {
    conn: Conn<OpTok>,
    /// Shared with the ring that drives the connection (if one does),
    /// which keeps it open until its last entry on it is reaped.
    sock: Arc<OwnedFd>,
    /// When bytes last came in, or when the first outstanding request was
    /// queued: the silence limit counts from the later of the two.
    last_rx: Instant,
    /// IO thread driver: set by a thread that found the socket broken while
    /// sending; the IO thread (the only one that ends connections there)
    /// ends the connection.
    broken: Option<i32>,
    /// Ring driver: the connection as attached to the ring.
    ring: Option<Arc<RingConn>>,
}

/// Who moves a link's bytes; settled by its first operation.
enum Driver {
    Unset,
    /// The link's IO thread ([`Link::run`]), which also reconnects.
    Thread,
    /// A completion thread's ring ([`RingConn`]); a short-lived thread
    /// reconnects.
    Ring(SocketHome),
}

struct State {
    live: Option<Live>,
    closed: bool,
    /// Why the connection is down (for messages), 0 while up.
    down: i32,
    driver: Driver,
    /// Ring driver: a reconnecting thread runs.
    reconnecting: bool,
}

/// One NBD export, as the device behind a `struct block_device`: one
/// connection, or `connections=N` of them when the server advertises
/// multi-conn (ops are spread over them in turn).
pub struct Remote {
    links: Vec<Arc<Link>>,
    next: AtomicUsize,
}

/// One connection to the export.
struct Link {
    uri: NbdUri,
    /// The URI as given, for messages.
    name: String,
    info: ExportInfo,
    state: Mutex<State>,
    /// Wakes the IO thread, or a reconnecting thread's backoff (an eventfd).
    wake: OwnedFd,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("uri", &self.links[0].name)
            .field("connections", &self.links.len())
            .finish()
    }
}

/// What [`Remote::open`] learnt: the device's size and block size.
pub struct Opened {
    pub remote: Arc<Remote>,
    pub bytes: u64,
    pub block: u32,
}

impl Remote {
    /// Connects and does the handshake, within the URI's connect timeout
    /// (per connection). The connections get their driver when their first
    /// operation starts.
    pub fn open(text: &str) -> Result<Opened> {
        let uri = uri::parse(text).map_err(|e| Error::new(e.errno, e.message))?;
        let (sock, info, leftover) = connect(&uri, text)?;
        let block = info.min_block.max(512);
        if !block.is_power_of_two() || block as usize > crate::memory::PAGE_SIZE {
            return Err(Error::new(
                libc::EOPNOTSUPP,
                format!("{text}: the server's minimum block size {block} is above 4096"),
            ));
        }
        let mut links = vec![Link::new(&uri, text, info, sock, &leftover)?];
        if info.flags & TF_CAN_MULTI_CONN != 0 {
            for _ in 1..uri.connections {
                let (sock, more, leftover) = connect(&uri, text)?;
                if more.size != info.size {
                    return Err(Error::new(
                        libc::EPROTO,
                        format!("{text}: a second connection saw another export size"),
                    ));
                }
                links.push(Link::new(&uri, text, more, sock, &leftover)?);
            }
        }
        Ok(Opened {
            bytes: info.size / 512 * 512,
            block,
            remote: Arc::new(Remote {
                links,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// How many connections IO is spread over.
    pub fn connections(&self) -> usize {
        self.links.len()
    }

    /// Starts `op` on one of the connections; it ends through
    /// `op.complete`, here at once when that connection is down or the
    /// export refuses the op.
    pub fn start(&self, op: IoOp) {
        let i = if self.links.len() == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % self.links.len()
        };
        self.links[i].start(op);
    }

    /// Ends the connections: IO threads stop, ring-driven sockets are shut
    /// down (the ring lets them go once their entries are reaped), a
    /// reconnecting thread gives up. Waits for none of it. (The device is
    /// closed: no op can be in flight, each holds the device.)
    pub fn close(&self) {
        for l in &self.links {
            l.close();
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.close();
    }
}

impl Link {
    /// A live connection, not driven yet.
    fn new(
        uri: &NbdUri,
        name: &str,
        info: ExportInfo,
        sock: OwnedFd,
        leftover: &[u8],
    ) -> Result<Arc<Link>> {
        // SAFETY: plain eventfd creation; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(Error::last_os("eventfd"));
        }
        // SAFETY: `efd` was just created and is owned by no one else.
        let wake = unsafe { OwnedFd::from_raw_fd(efd) };
        let link = Arc::new(Link {
            uri: uri.clone(),
            name: name.to_string(),
            info,
            state: Mutex::new(State {
                live: None,
                closed: false,
                down: 0,
                driver: Driver::Unset,
                reconnecting: false,
            }),
            wake,
        });
        let mut done = Vec::new();
        match link.go_live(sock, info, leftover, &mut done) {
            GoLive::Thread => {}
            _ => {
                return Err(Error::new(
                    libc::EPROTO,
                    format!("{name}: the server sent garbage after the handshake"),
                ))
            }
        }
        debug_assert!(done.is_empty());
        Ok(link)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn poke(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local to our own eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), &one as *const u64 as *const _, 8) };
    }

    fn close(&self) {
        let mut done = Vec::new();
        {
            let mut st = self.lock();
            st.closed = true;
            // The IO thread ends its own connection; otherwise here.
            if !matches!(st.driver, Driver::Thread) {
                Self::drop_live(&mut st, libc::ESHUTDOWN, &mut done);
            }
        }
        complete(done);
        self.poke();
    }

    fn start(self: &Arc<Self>, op: IoOp) {
        let job = Job {
            kind: match op.kind {
                OpKind::Read => JobKind::Read,
                OpKind::Write => JobKind::Write,
                OpKind::Flush => JobKind::Flush,
            },
            offset: op.offset,
            len: op.len,
            fua: op.fua,
            pre_flush: op.pre_flush && op.kind == OpKind::Write,
        };
        let mut attach = None;
        let mut spawn = false;
        let mut kick = None;
        let mut arm = None;
        let mut poke = false;
        let refused = {
            let mut st = self.lock();
            let closed = st.closed;
            if matches!(st.driver, Driver::Unset) && st.live.is_some() && !closed {
                // The first operation: the ring of this thread (or of the
                // reactor this is) drives the connection from now on, or
                // else an IO thread.
                match socket::home() {
                    Some(h) => {
                        let l = st.live.as_mut().expect("checked");
                        let rc = RingConn::new(self, &l.sock);
                        l.ring = Some(Arc::clone(&rc));
                        attach = Some((h.clone(), rc));
                        st.driver = Driver::Ring(h);
                    }
                    None => {
                        st.driver = Driver::Thread;
                        spawn = true;
                    }
                }
            }
            let home = match &st.driver {
                Driver::Ring(h) => Some(h.clone()),
                _ => None,
            };
            match st.live.as_mut() {
                Some(l) if l.broken.is_none() && !closed => {
                    // The first outstanding request starts the silence
                    // clock, which the driver must arm.
                    let first = l.conn.jobs() == 0;
                    if first {
                        l.last_rx = Instant::now();
                    }
                    // Ring driver: output that was not empty is already
                    // known to the ring (a kick is queued, or a SEND is in
                    // flight and the ring takes the rest when it ends).
                    let idle_out = l.conn.output().is_empty();
                    match l.conn.submit(job, OpTok(op)) {
                        Ok(()) => {
                            let silence = self.uri.silence_ms > 0;
                            match (home, &l.ring) {
                                (Some(h), Some(rc)) => {
                                    if first && silence && !rc.armed.swap(true, Ordering::SeqCst) {
                                        arm = Some((h.clone(), Arc::clone(rc), l.last_rx));
                                    }
                                    if attach.is_none() && idle_out {
                                        kick = Some((h, Arc::clone(rc)));
                                    }
                                }
                                _ => {
                                    let waiting = send_some(l);
                                    poke = waiting || (first && silence);
                                }
                            }
                            None
                        }
                        Err((e, t)) => Some((t.0, -e)),
                    }
                }
                _ => Some((
                    op,
                    if closed {
                        -libc::ESHUTDOWN
                    } else {
                        -libc::ENOTCONN
                    },
                )),
            }
        };
        if let Some((h, rc)) = attach {
            if !h.attach(rc) {
                self.ring_refused();
            }
        }
        if let Some((h, rc)) = kick {
            h.kick(rc);
        }
        if let Some((h, rc, from)) = arm {
            let at = from + rc.silence;
            let weak: Weak<RingConn> = Arc::downgrade(&rc);
            if !h.arm(at, weak) {
                rc.armed.store(false, Ordering::SeqCst);
            }
        }
        if spawn {
            self.spawn_thread();
        }
        if poke {
            self.poke();
        }
        if let Some((op, res)) = refused {
            op.complete(res);
        }
    }

    /// Starts the IO thread; without one the connection ends (its ops
    /// fail, later ones end `ENOTCONN`).
    fn spawn_thread(self: &Arc<Self>) {
        let l = Arc::clone(self);
        if let Err(e) = std::thread::Builder::new()
            .name("dmio-nbd".into())
            .spawn(move || l.run())
        {
            eprintln!("libdmio: {}: no NBD IO thread: {e}", self.name);
            let mut done = Vec::new();
            Self::drop_live(&mut self.lock(), libc::EAGAIN, &mut done);
            complete(done);
        }
    }

    /// The home ring is closed (its client is gone): an IO thread drives
    /// the connection from now on.
    fn ring_refused(self: &Arc<Self>) {
        {
            let mut st = self.lock();
            st.driver = Driver::Thread;
            st.reconnecting = false;
            if let Some(l) = st.live.as_mut() {
                l.ring = None;
            }
        }
        self.spawn_thread();
    }

    /// Installs a new connection (after a handshake).
    fn go_live(
        self: &Arc<Self>,
        sock: OwnedFd,
        info: ExportInfo,
        leftover: &[u8],
        done: &mut Vec<(IoOp, i32)>,
    ) -> GoLive {
        let mut conn = Conn::new(info);
        let ok = leftover.is_empty()
            || conn
                .feed(leftover, &mut |t: OpTok, r| done.push((t.0, r)))
                .is_ok();
        let sock = Arc::new(sock);
        let mut st = self.lock();
        st.reconnecting = false;
        if st.closed {
            return GoLive::Closed;
        }
        let ring = match &st.driver {
            Driver::Ring(h) if ok => Some((h.clone(), RingConn::new(self, &sock))),
            Driver::Ring(_) | Driver::Unset if !ok => return GoLive::Garbage,
            _ => None,
        };
        st.down = 0;
        st.live = Some(Live {
            conn,
            sock,
            last_rx: Instant::now(),
            broken: (!ok).then_some(libc::EPROTO),
            ring: ring.as_ref().map(|r| Arc::clone(&r.1)),
        });
        match ring {
            Some((h, rc)) => GoLive::Ring(h, rc),
            None => GoLive::Thread,
        }
    }

    /// Ends the connection: every op on it ends with `-errno`.
    fn drop_live(st: &mut State, errno: i32, done: &mut Vec<(IoOp, i32)>) {
        if let Some(mut l) = st.live.take() {
            l.conn
                .fail_all(errno, &mut |t: OpTok, r| done.push((t.0, r)));
            // SAFETY: shutdown on our own socket (open: `l` holds it); close
            // follows when the last holder (this, or a ring) drops it.
            unsafe { libc::shutdown(l.sock.as_raw_fd(), libc::SHUT_RDWR) };
        }
        st.down = errno;
    }

    /// Ring driver: the connection was lost. `true` when a reconnecting
    /// thread must start (the caller starts it, outside the lock).
    fn lost(&self, st: &mut State) -> bool {
        if st.closed || st.reconnecting || !matches!(st.driver, Driver::Ring(_)) {
            return false;
        }
        st.reconnecting = true;
        true
    }

    /// Ring driver: a thread that reconnects with backoff, attaches the new
    /// connection to the ring, and ends (or ends when the device is closed).
    fn spawn_reconnect(self: &Arc<Self>) {
        let l = Arc::clone(self);
        let r = std::thread::Builder::new()
            .name("dmio-nbd-reconnect".into())
            .spawn(move || {
                let mut backoff = BACKOFF_MIN;
                loop {
                    if l.lock().closed {
                        l.lock().reconnecting = false;
                        return;
                    }
                    if l.reconnect() {
                        return;
                    }
                    l.wait_wake(Some(backoff));
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            });
        if let Err(e) = r {
            eprintln!("libdmio: {}: cannot start reconnecting: {e}", self.name);
            self.lock().reconnecting = false;
        }
    }

    /// The connection's IO thread.
    fn run(self: Arc<Self>) {
        let mut buf = vec![0u8; RECV_BUF];
        let mut backoff = BACKOFF_MIN;
        let silence = Duration::from_millis(self.uri.silence_ms as u64);
        loop {
            let mut done: Vec<(IoOp, i32)> = Vec::new();
            let step = {
                let mut st = self.lock();
                if st.closed {
                    Self::drop_live(&mut st, libc::ESHUTDOWN, &mut done);
                    None
                } else if let Some(e) = st.live.as_ref().and_then(|l| l.broken) {
                    Self::drop_live(&mut st, e, &mut done);
                    Some(None)
                } else {
                    Some(st.live.as_ref().map(|l| {
                        let timeout = if l.conn.jobs() > 0 && !silence.is_zero() {
                            Some(silence.saturating_sub(l.last_rx.elapsed()))
                        } else {
                            None
                        };
                        (l.sock.as_raw_fd(), !l.conn.output().is_empty(), timeout)
                    }))
                }
            };
            complete(done);
            let Some(step) = step else { return };
            match step {
                None => {
                    // Down: reconnect, then wait before the next attempt.
                    if self.reconnect() {
                        backoff = BACKOFF_MIN;
                    } else {
                        self.wait_wake(Some(backoff));
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                Some((fd, want_out, timeout)) => self.turn(fd, want_out, timeout, &mut buf),
            }
        }
    }

    /// One wait on the live socket, then what it allows.
    fn turn(&self, fd: RawFd, want_out: bool, timeout: Option<Duration>, buf: &mut [u8]) {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN | if want_out { libc::POLLOUT } else { 0 },
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32 + 1);
        // SAFETY: `fds` is a valid array of two pollfds. Only this thread
        // closes the socket, so `fd` is open.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            return;
        }
        if fds[1].revents != 0 {
            let mut v: u64 = 0;
            // SAFETY: reads 8 bytes into a local from our own eventfd.
            unsafe { libc::read(self.wake.as_raw_fd(), &mut v as *mut u64 as *mut _, 8) };
        }
        let mut done = Vec::new();
        if fds[0].revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
            // SAFETY: `buf` is writable for its length; `fd` is open (above).
            let got = unsafe {
                libc::recv(
                    fd,
                    buf.as_mut_ptr() as *mut _,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let err = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            let mut st = self.lock();
            if let Some(l) = st.live.as_mut() {
                match got {
                    0 => Self::drop_live(&mut st, libc::ECONNRESET, &mut done),
                    n if n < 0 => {
                        if err != libc::EAGAIN && err != libc::EINTR {
                            Self::drop_live(&mut st, err, &mut done)
                        }
                    }
                    n => {
                        l.last_rx = Instant::now();
                        let r = l
                            .conn
                            .feed(&buf[..n as usize], &mut |t: OpTok, r| done.push((t.0, r)));
                        if r.is_err() {
                            Self::drop_live(&mut st, libc::EPROTO, &mut done);
                        }
                    }
                }
            }
        }
        {
            let mut st = self.lock();
            let mut silent = false;
            if let Some(l) = st.live.as_mut() {
                if !l.conn.output().is_empty() {
                    send_some(l);
                }
                silent = timeout.is_some()
                    && l.conn.jobs() > 0
                    && l.last_rx.elapsed() >= Duration::from_millis(self.uri.silence_ms as u64);
            }
            if silent {
                Self::drop_live(&mut st, libc::ETIMEDOUT, &mut done);
            }
        }
        complete(done);
    }

    /// Sleeps until poked or `max`.
    fn wait_wake(&self, max: Option<Duration>) {
        let mut fd = libc::pollfd {
            fd: self.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = max.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut fd, 1, ms) } > 0 {
            let mut v: u64 = 0;
            // SAFETY: reads 8 bytes into a local from our own eventfd.
            unsafe { libc::read(self.wake.as_raw_fd(), &mut v as *mut u64 as *mut _, 8) };
        }
    }

    /// One reconnect attempt; `true` when the connection is back.
    fn reconnect(self: &Arc<Self>) -> bool {
        match connect(&self.uri, &self.name) {
            Ok((sock, info, leftover)) if info.size == self.info.size => {
                let mut done = Vec::new();
                let r = self.go_live(sock, info, &leftover, &mut done);
                complete(done);
                match r {
                    GoLive::Ring(h, rc) => {
                        if !h.attach(rc) {
                            self.ring_refused();
                        }
                        true
                    }
                    GoLive::Thread | GoLive::Closed => true,
                    GoLive::Garbage => false,
                }
            }
            _ => false,
        }
    }
}

/// What [`Link::go_live`] did.
enum GoLive {
    /// Live; the IO thread drives it (or no driver yet).
    Thread,
    /// Live; to be attached to this ring.
    Ring(SocketHome, Arc<RingConn>),
    /// The device is closed: the connection was dropped.
    Closed,
    /// The server sent bytes after the handshake that make no sense.
    Garbage,
}

/// A connection as a completion thread's ring drives it: the ring keeps a
/// RECV outstanding into `recv` and SENDs what `take_send` gives
/// ([`RingSocket`]); its silence timer runs on that ring too. The ring
/// holds it (and so its buffers and its socket) until its last entry is
/// reaped, also after the link dropped the connection.
struct RingConn {
    link: Weak<Link>,
    sock: Arc<OwnedFd>,
    /// The receive buffer: `RECV_BUF` bytes from `Box::into_raw`, freed at drop.
    recv: *mut u8,
    /// The bytes of the SEND in flight (taken from the protocol's output),
    /// and how many of them went already.
    send: Mutex<(Vec<u8>, usize)>,
    /// The silence timer is armed (changed under the link's lock).
    armed: AtomicBool,
    silence: Duration,
}

// SAFETY: `recv` is memory this struct owns; it is written only by the
// kernel while a RECV is in flight, and read only by `on_recv` on the
// ring's thread after that RECV's completion (the ring never has two
// RECVs of one socket in flight). Everything else is Send + Sync.
unsafe impl Send for RingConn {}
// SAFETY: as for Send.
unsafe impl Sync for RingConn {}

impl RingConn {
    fn new(link: &Arc<Link>, sock: &Arc<OwnedFd>) -> Arc<RingConn> {
        let buf = vec![0u8; RECV_BUF].into_boxed_slice();
        Arc::new(RingConn {
            link: Arc::downgrade(link),
            sock: Arc::clone(sock),
            recv: Box::into_raw(buf) as *mut u8,
            send: Mutex::new((Vec::new(), 0)),
            armed: AtomicBool::new(false),
            silence: Duration::from_millis(link.uri.silence_ms as u64),
        })
    }

    /// This is the link's live connection.
    fn mine(&self, st: &State) -> bool {
        st.live
            .as_ref()
            .and_then(|l| l.ring.as_ref())
            .is_some_and(|r| std::ptr::eq(Arc::as_ptr(r), self))
    }

    /// Ends the connection (if still the live one) with `errno`, and
    /// starts reconnecting.
    fn fail(&self, link: &Arc<Link>, errno: i32) {
        let mut done = Vec::new();
        let spawn = {
            let mut st = link.lock();
            if !self.mine(&st) {
                return;
            }
            Link::drop_live(&mut st, errno, &mut done);
            link.lost(&mut st)
        };
        complete(done);
        if spawn {
            link.spawn_reconnect();
        }
    }
}

impl Drop for RingConn {
    fn drop(&mut self) {
        // SAFETY: `recv` came from `Box::into_raw` of a boxed slice of
        // `RECV_BUF` bytes, freed only here; no RECV is in flight (the ring
        // held an `Arc` of this until the last one's completion).
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.recv, RECV_BUF,
            )))
        };
    }
}

impl RingSocket for RingConn {
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn recv_buf(&self) -> (*mut u8, usize) {
        (self.recv, RECV_BUF)
    }

    fn on_recv(&self, res: i32) -> bool {
        let Some(link) = self.link.upgrade() else {
            return false;
        };
        let mut done = Vec::new();
        let (keep, spawn) = {
            let mut st = link.lock();
            if !self.mine(&st) {
                return false;
            }
            if res == -libc::EINTR || res == -libc::EAGAIN || res == -libc::ENOBUFS {
                return true;
            }
            let l = st.live.as_mut().expect("mine");
            let errno = if res > 0 {
                l.last_rx = Instant::now();
                // SAFETY: the kernel filled the first `res` bytes of the
                // buffer (`RECV_BUF` long, `res` is at most that) and is
                // done with it: this is that RECV's completion.
                let bytes = unsafe { std::slice::from_raw_parts(self.recv, res as usize) };
                match l.conn.feed(bytes, &mut |t: OpTok, r| done.push((t.0, r))) {
                    Ok(()) => 0,
                    Err(_) => libc::EPROTO,
                }
            } else if res == 0 {
                libc::ECONNRESET
            } else {
                -res
            };
            if errno == 0 {
                (true, false)
            } else {
                Link::drop_live(&mut st, errno, &mut done);
                (false, link.lost(&mut st))
            }
        };
        complete(done);
        if spawn {
            link.spawn_reconnect();
        }
        keep
    }

    fn take_send(&self) -> Option<Outgoing> {
        let mut s = self.send.lock().unwrap_or_else(|p| p.into_inner());
        if s.1 < s.0.len() {
            let rest = &s.0[s.1..];
            return Some(Outgoing {
                ptr: rest.as_ptr(),
                len: rest.len(),
                lone: false,
            });
        }
        let link = self.link.upgrade()?;
        let mut st = link.lock();
        if !self.mine(&st) {
            return None;
        }
        let l = st.live.as_mut().expect("mine");
        if l.conn.output().is_empty() {
            return None;
        }
        l.conn.take_output(&mut s.0);
        s.1 = 0;
        Some(Outgoing {
            ptr: s.0.as_ptr(),
            len: s.0.len(),
            // One request outstanding (QD1): its bytes are all there is.
            lone: l.conn.jobs() == 1,
        })
    }

    fn on_sent(&self, res: i32) {
        if res == -libc::EINTR || res == -libc::EAGAIN {
            // The same bytes go again.
            return;
        }
        {
            let mut s = self.send.lock().unwrap_or_else(|p| p.into_inner());
            if res >= 0 {
                s.1 += res as usize;
            }
            if res < 0 || s.1 >= s.0.len() {
                s.0.clear();
                s.1 = 0;
            }
        }
        if res < 0 {
            if let Some(link) = self.link.upgrade() {
                self.fail(&link, -res);
            }
        }
    }

    fn detach(&self) {
        if let Some(link) = self.link.upgrade() {
            self.fail(&link, libc::ECONNRESET);
        }
    }
}

impl Timer for RingConn {
    /// The silence limit: the server has not sent a byte for `silence`
    /// while requests were outstanding.
    fn on_timer(self: Arc<Self>, now: Instant) {
        let Some(link) = self.link.upgrade() else {
            return;
        };
        let mut done = Vec::new();
        let (spawn, rearm) = {
            let mut st = link.lock();
            let busy = self.mine(&st) && st.live.as_ref().is_some_and(|l| l.conn.jobs() > 0);
            if !busy {
                self.armed.store(false, Ordering::SeqCst);
                return;
            }
            let due = st.live.as_ref().expect("mine").last_rx + self.silence;
            if now < due {
                let home = match &st.driver {
                    Driver::Ring(h) => Some((h.clone(), due)),
                    _ => None,
                };
                (false, home)
            } else {
                Link::drop_live(&mut st, libc::ETIMEDOUT, &mut done);
                self.armed.store(false, Ordering::SeqCst);
                (link.lost(&mut st), None)
            }
        };
        complete(done);
        if let Some((h, at)) = rearm {
            let weak: Weak<RingConn> = Arc::downgrade(&self);
            if !h.arm(at, weak) {
                self.armed.store(false, Ordering::SeqCst);
            }
        }
        if spawn {
            link.spawn_reconnect();
        }
    }
}

fn complete(done: Vec<(IoOp, i32)>) {
    for (op, res) in done {
        op.complete(res);
    }
}

/// Sends what the socket takes now, without blocking. `true` when bytes
/// remain (the IO thread must wait for the socket); a broken socket is
/// marked for the IO thread.
fn send_some(l: &mut Live) -> bool {
    while !l.conn.output().is_empty() {
        let out = l.conn.output();
        // SAFETY: `out` is readable for its length; the socket is open
        // while `l` lives (only the IO thread closes it, under the lock we hold).
        let n = unsafe {
            libc::send(
                l.sock.as_raw_fd(),
                out.as_ptr() as *const _,
                out.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            match e {
                libc::EINTR => continue,
                libc::EAGAIN => return true,
                e => {
                    l.broken = Some(e);
                    return true;
                }
            }
        }
        l.conn.sent(n as usize);
    }
    false
}

/// A stream socket, either kind.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(b),
            Stream::Unix(s) => s.write_all(b),
        }
    }

    fn into_fd(self) -> OwnedFd {
        let raw = match self {
            Stream::Tcp(s) => s.into_raw_fd(),
            Stream::Unix(s) => s.into_raw_fd(),
        };
        // SAFETY: `raw` was just given up by its stream; we own it now.
        unsafe { OwnedFd::from_raw_fd(raw) }
    }
}

fn io_err(what: &str, e: &std::io::Error, timeout_ms: u32) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::new(
            libc::ETIMEDOUT,
            format!("{what}: no answer within connect-timeout={timeout_ms} ms"),
        ),
        _ => Error::from_io(what, e),
    }
}

/// Connects to the server and does the handshake, all within the URI's
/// connect timeout. Returns the socket, the export's description, and the
/// bytes the server sent after the handshake.
fn connect(uri: &NbdUri, name: &str) -> Result<(OwnedFd, ExportInfo, Vec<u8>)> {
    let limit = Duration::from_millis(uri.connect_timeout_ms as u64);
    let deadline = Instant::now() + limit;
    let left = || deadline.saturating_duration_since(Instant::now());
    let tmo = uri.connect_timeout_ms;
    let mut s = match &uri.transport {
        Transport::Tcp { host, port } => {
            let addrs: Vec<_> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| {
                    Error::new(libc::EHOSTUNREACH, format!("{name}: resolve {host}: {e}"))
                })?
                .collect();
            let mut last = None;
            let mut got = None;
            for a in addrs {
                if left().is_zero() {
                    break;
                }
                match TcpStream::connect_timeout(&a, left()) {
                    Ok(s) => {
                        got = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let s = match (got, last) {
                (Some(s), _) => s,
                (None, Some(e)) => return Err(io_err(&format!("{name}: connect"), &e, tmo)),
                (None, None) => {
                    return Err(Error::new(
                        libc::EHOSTUNREACH,
                        format!("{name}: {host} has no address"),
                    ))
                }
            };
            let _ = s.set_nodelay(true);
            Stream::Tcp(s)
        }
        Transport::Unix { path } => Stream::Unix(
            UnixStream::connect(path).map_err(|e| io_err(&format!("{name}: connect"), &e, tmo))?,
        ),
    };
    let mut hs =
        Handshake::new(&uri.export).map_err(|e| Error::new(e.errno(), format!("{name}: {e}")))?;
    let mut buf = vec![0u8; 64 << 10];
    let info = loop {
        let out = hs.take_output();
        if !out.is_empty() {
            s.set_timeouts(left().max(Duration::from_millis(1)))
                .map_err(|e| Error::from_io("setsockopt", &e))?;
            s.write_all(&out)
                .map_err(|e| io_err(&format!("{name}: handshake"), &e, tmo))?;
        }
        if left().is_zero() {
            return Err(Error::new(
                libc::ETIMEDOUT,
                format!("{name}: no handshake within connect-timeout={tmo} ms"),
            ));
        }
        s.set_timeouts(left().max(Duration::from_millis(1)))
            .map_err(|e| Error::from_io("setsockopt", &e))?;
        let n = s
            .read(&mut buf)
            .map_err(|e| io_err(&format!("{name}: handshake"), &e, tmo))?;
        if n == 0 {
            return Err(Error::new(
                libc::ECONNRESET,
                format!("{name}: the server closed the connection during the handshake"),
            ));
        }
        match hs.feed(&buf[..n]) {
            Ok(Some(info)) => {
                let out = hs.take_output();
                if !out.is_empty() {
                    s.write_all(&out)
                        .map_err(|e| io_err(&format!("{name}: handshake"), &e, tmo))?;
                }
                break info;
            }
            Ok(None) => {}
            Err(e) => return Err(Error::new(e.errno(), format!("{name}: {e}"))),
        }
    };
    let leftover = hs.leftover();
    let fd = s.into_fd();
    // SAFETY: F_GETFL/F_SETFL on our own socket.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    Ok((fd, info, leftover))
}
