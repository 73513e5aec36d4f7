//! Attached sockets ([`crate::engine::socket`]) in the ring core: a RECV
//! always in flight per open socket, at most one SEND, both tagged
//! [`SOCK_BIT`] in their `user_data` with the socket's index (and
//! [`SEND_BIT`] for a SEND).

use super::Core;
use crate::engine::socket::RingSocket;
use io_uring::{opcode, squeue, types};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Tags a socket's entries (beside `FLUSH_BIT` and `WAKE`; op indices never
/// come near it).
pub(super) const SOCK_BIT: u64 = 1 << 62;
const SEND_BIT: u64 = 1;

pub(in crate::engine) struct SockSlot {
    sock: Arc<dyn RingSocket>,
    /// A RECV is in flight.
    recv: bool,
    /// A SEND is in flight.
    send: bool,
    /// Still receiving (its last RECV did not end it).
    open: bool,
}

impl Core {
    pub(in crate::engine) fn kicks(&self) -> Arc<crate::engine::socket::Kicks> {
        Arc::clone(&self.kicks)
    }

    /// Sockets attached or kicked from anywhere (cheap when none).
    #[inline]
    pub(super) fn take_kicks(&mut self) {
        if self.kicks.pending.load(Ordering::Relaxed) {
            self.take_kicks_now();
        }
    }

    #[cold]
    #[inline(never)]
    fn take_kicks_now(&mut self) {
        let mut list = std::mem::take(&mut self.kicked);
        let closed = self.kicks.take(&mut list);
        for (s, attach) in list.drain(..) {
            if attach {
                if closed {
                    // Attached just before the ring closed: the connection
                    // ends without ever being received on here.
                    s.detach();
                    continue;
                }
                let idx = match self.socks.iter().position(Option::is_none) {
                    Some(i) => i,
                    None => {
                        self.socks.push(None);
                        self.socks.len() - 1
                    }
                };
                self.socks[idx] = Some(SockSlot {
                    sock: s,
                    recv: false,
                    send: false,
                    open: true,
                });
                self.post_recv(idx);
                self.try_send(idx);
            } else if let Some(idx) = self
                .socks
                .iter()
                .position(|x| x.as_ref().is_some_and(|x| Arc::ptr_eq(&x.sock, &s)))
            {
                self.try_send(idx);
            }
        }
        self.kicked = list;
    }

    /// Work waits in the kick queue.
    pub(super) fn kicked(&self) -> bool {
        self.kicks.pending.load(Ordering::SeqCst)
    }

    /// No socket attached.
    pub(super) fn no_sockets(&self) -> bool {
        self.socks.iter().all(Option::is_none)
    }

    fn push_entry(&mut self, e: &squeue::Entry) {
        loop {
            // SAFETY: (the callers' entries) a RECV's buffer is the
            // socket's receive buffer and a SEND's the bytes `take_send`
            // gave, both kept valid and unchanged by the socket, which the
            // slot's `Arc` keeps alive until the entry's CQE is reaped (the
            // slot leaves only with no entry in flight); the same `Arc`
            // keeps the descriptor open.
            let pushed = unsafe { self.ring.submission().push(e) }.is_ok();
            if pushed {
                return;
            }
            if self.ring.submit().is_err() {
                std::thread::yield_now();
            }
        }
    }

    fn post_recv(&mut self, idx: usize) {
        let Some(slot) = self.socks[idx].as_mut() else {
            return;
        };
        let (buf, len) = slot.sock.recv_buf();
        let e = opcode::Recv::new(types::Fd(slot.sock.fd()), buf, len as u32)
            .build()
            .user_data(SOCK_BIT | (idx as u64) << 1);
        slot.recv = true;
        self.push_entry(&e);
    }

    fn try_send(&mut self, idx: usize) {
        let Some(slot) = self.socks[idx].as_mut() else {
            return;
        };
        if slot.send || !slot.open {
            return;
        }
        let Some(out) = slot.sock.take_send() else {
            return;
        };
        let e = opcode::Send::new(types::Fd(slot.sock.fd()), out.ptr, out.len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(SOCK_BIT | (idx as u64) << 1 | SEND_BIT);
        slot.send = true;
        if out.lone {
            self.lone_sends += 1;
        }
        self.push_entry(&e);
    }

    /// A socket's CQE.
    pub(super) fn sock_cqe(&mut self, ud: u64, res: i32) {
        let idx = ((ud & !SOCK_BIT) >> 1) as usize;
        let Some(slot) = self.socks.get_mut(idx).and_then(|s| s.as_mut()) else {
            return;
        };
        let sock = Arc::clone(&slot.sock);
        if ud & SEND_BIT != 0 {
            slot.send = false;
            sock.on_sent(res);
        } else {
            slot.recv = false;
            if slot.open && sock.on_recv(res) {
                self.post_recv(idx);
            } else if let Some(s) = self.socks[idx].as_mut() {
                s.open = false;
            }
        }
        let s = self.socks[idx].as_ref().expect("present");
        if !s.open && !s.recv && !s.send {
            self.socks[idx] = None;
            return;
        }
        self.try_send(idx);
    }

    /// The ring closes: every attached socket ends its connection (their
    /// RECVs end, then they leave).
    pub(in crate::engine) fn detach_sockets(&mut self) {
        self.kicks.close();
        let socks: Vec<_> = self
            .socks
            .iter()
            .flatten()
            .map(|s| Arc::clone(&s.sock))
            .collect();
        for s in socks {
            s.detach();
        }
    }
}
