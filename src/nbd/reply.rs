//! The transmission phase: requests out, replies in, matched by cookie.
//!
//! A request's cookie is a slot of a table this client owns plus the slot's
//! generation, so a reply is only ever looked up, never trusted: an unknown
//! or stale cookie is a protocol violation. The entry of a request stays in
//! the table until its last reply chunk has been read off the wire, also
//! when its caller gave up on it (a timeout, a cancel): the stream never
//! desynchronises, and a late reply finds its slot.
//!
//! Replies are parsed as they arrive, in any split: read data is handed to
//! the caller as slices ([`ReplyEvent::Data`]), without buffering a whole
//! reply.
//!
//! (Over 400 lines on purpose: the receive states and the cookie table are
//! one state machine whose invariants, such as "an entry leaves the table
//! only at its DONE chunk", are easier to check in one place.)

use super::handshake::{ExportInfo, MAX_PAYLOAD};
use super::wire::*;
use super::{be16, be32, be64, ProtoError};

/// Largest structured reply chunk that is not read data (an error message,
/// a hole): the specification bounds error messages to 4096 bytes.
const MAX_SMALL_CHUNK: u32 = 4096 + 14;
/// Most data chunks one read may be answered in (their coverage is checked).
const MAX_CHUNKS_PER_READ: usize = 4096;

/// What happened to a request, as its reply is read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyEvent<'a> {
    /// `bytes` of a read's data, at byte `at` of the request.
    Data {
        cookie: u64,
        at: u64,
        bytes: &'a [u8],
    },
    /// A hole: `len` bytes at byte `at` of the request read as zeroes.
    Hole { cookie: u64, at: u64, len: u32 },
    /// The reply is complete: `Ok`, or the errno the server reported.
    Done {
        cookie: u64,
        result: Result<(), i32>,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    kind: u16,
    offset: u64,
    len: u32,
    error: Option<i32>,
    /// Covered byte ranges of a structured read reply, checked at DONE.
    covered: Vec<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Slot {
    gen: u32,
    req: Option<Pending>,
}

/// Where the parser is within the byte stream.
#[derive(Debug, Clone, Copy)]
enum Rx {
    /// Collecting a reply header (its magic says which).
    Header,
    /// The 8-byte offset that starts an OFFSET_DATA chunk.
    DataOffset { cookie: u64, len: u32, done: bool },
    /// Read data: an OFFSET_DATA payload, or a simple reply's data (which
    /// ends its reply: `done`). `left` bytes, next at `at`.
    ChunkData {
        cookie: u64,
        at: u64,
        left: u64,
        done: bool,
    },
    /// A small chunk (hole, error) collected whole: `len` bytes.
    Small {
        cookie: u64,
        kind: u16,
        len: u32,
        done: bool,
    },
}

/// One connection's transmission state.
#[derive(Debug)]
pub struct Transmission {
    info: ExportInfo,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    rx: Rx,
    buf: Vec<u8>,
}

impl Transmission {
    pub fn new(info: ExportInfo) -> Self {
        Transmission {
            info,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            rx: Rx::Header,
            buf: Vec::with_capacity(32),
        }
    }

    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// Requests sent whose reply has not been read to its end.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Appends a request's header to `out` (a write's data must follow it)
    /// and returns its cookie. Refuses what the server did not allow:
    /// `EROFS` (write to a read-only export), `EOPNOTSUPP` (flush, FUA,
    /// trim or zeroes not offered), `EINVAL` (past the end, or longer than
    /// the maximum block size).
    pub fn request(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        out: &mut Vec<u8>,
    ) -> Result<u64, i32> {
        let tf = self.info.flags;
        let writes = matches!(kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if writes && tf & TF_READ_ONLY != 0 {
            return Err(libc::EROFS);
        }
        let allowed = match kind {
            CMD_READ | CMD_WRITE => true,
            CMD_FLUSH => tf & TF_SEND_FLUSH != 0,
            CMD_TRIM => tf & TF_SEND_TRIM != 0,
            CMD_WRITE_ZEROES => tf & TF_SEND_WRITE_ZEROES != 0,
            _ => false,
        };
        if !allowed
            || (flags & CMD_FLAG_FUA != 0 && tf & TF_SEND_FUA == 0)
            || flags & !CMD_FLAG_FUA != 0
        {
            return Err(libc::EOPNOTSUPP);
        }
        if kind != CMD_FLUSH {
            let end = offset.checked_add(len as u64).ok_or(libc::EINVAL)?;
            let max = self.info.max_block.min(MAX_PAYLOAD);
            if end > self.info.size || (matches!(kind, CMD_READ | CMD_WRITE) && len > max) {
                return Err(libc::EINVAL);
            }
        } else if offset != 0 || len != 0 {
            return Err(libc::EINVAL);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.gen = s.gen.wrapping_add(1);
        s.req = Some(Pending {
            kind,
            offset,
            len,
            error: None,
            covered: Vec::new(),
        });
        self.in_flight += 1;
        let cookie = (s.gen as u64) << 32 | slot as u64;
        encode_request(out, flags, kind, cookie, offset, len);
        Ok(cookie)
    }

    /// The pending request of a cookie from the peer, or a violation.
    fn lookup(&mut self, cookie: u64) -> Result<&mut Pending, ProtoError> {
        let (slot, gen) = ((cookie & 0xffff_ffff) as usize, (cookie >> 32) as u32);
        match self.slots.get_mut(slot) {
            Some(s) if s.gen == gen && s.req.is_some() => Ok(s.req.as_mut().expect("checked")),
            _ => Err(ProtoError::violation(format!(
                "reply to unknown cookie {cookie:#x}"
            ))),
        }
    }

    fn finish(&mut self, cookie: u64) -> Result<Result<(), i32>, ProtoError> {
        let info_structured = self.info.structured;
        let p = self.lookup(cookie)?;
        let result = match p.error {
            Some(e) => Err(e),
            None if p.kind == CMD_READ && info_structured => {
                // Every byte of a successful read was sent, once.
                let mut c = std::mem::take(&mut p.covered);
                c.sort_unstable();
                let mut at = 0;
                for (a, b) in c {
                    if a != at {
                        return Err(ProtoError::violation("read reply with a gap or an overlap"));
                    }
                    at = b;
                }
                if at != p.len as u64 {
                    return Err(ProtoError::violation(
                        "read reply that does not cover the request",
                    ));
                }
                Ok(())
            }
            None => Ok(()),
        };
        let slot = (cookie & 0xffff_ffff) as u32;
        self.slots[slot as usize].req = None;
        self.free.push(slot);
        self.in_flight -= 1;
        Ok(result)
    }

    /// Takes bytes from the server, in any split, and reports what they
    /// complete through `on`. A violation ends the connection: the
    /// requests still in flight are then to be failed by the caller.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        on: &mut dyn FnMut(ReplyEvent<'_>),
    ) -> Result<(), ProtoError> {
        while !input.is_empty() {
            match self.rx {
                Rx::Header => {
                    // The magic first, then the header it announces.
                    let want = if self.buf.len() < 4 {
                        4
                    } else {
                        match be32(&self.buf, 0) {
                            SIMPLE_REPLY_MAGIC => SIMPLE_REPLY_LEN,
                            STRUCTURED_REPLY_MAGIC if self.info.structured => STRUCTURED_REPLY_LEN,
                            STRUCTURED_REPLY_MAGIC => {
                                return Err(ProtoError::violation(
                                    "structured reply not negotiated",
                                ))
                            }
                            m => return Err(ProtoError::violation(format!("reply magic {m:#x}"))),
                        }
                    };
                    let n = (want - self.buf.len()).min(input.len());
                    self.buf.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.buf.len() == want && want > 4 {
                        let h = std::mem::take(&mut self.buf);
                        self.header(&h, on)?;
                        self.buf = h;
                        self.buf.clear();
                    }
                }
                Rx::DataOffset { cookie, len, done } => {
                    let n = (8 - self.buf.len()).min(input.len());
                    self.buf.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.buf.len() == 8 {
                        let off = be64(&self.buf, 0);
                        self.buf.clear();
                        let at = self.chunk_range(cookie, off, (len - 8) as u64)?;
                        self.rx = Rx::ChunkData {
                            cookie,
                            at,
                            left: (len - 8) as u64,
                            done,
                        };
                    }
                }
                Rx::ChunkData {
                    cookie,
                    at,
                    left,
                    done,
                } => {
                    let n = (left as usize).min(input.len());
                    on(ReplyEvent::Data {
                        cookie,
                        at,
                        bytes: &input[..n],
                    });
                    input = &input[n..];
                    let left = left - n as u64;
                    if left > 0 {
                        self.rx = Rx::ChunkData {
                            cookie,
                            at: at + n as u64,
                            left,
                            done,
                        };
                    } else {
                        self.rx = Rx::Header;
                        if done {
                            let result = self.finish(cookie)?;
                            on(ReplyEvent::Done { cookie, result });
                        }
                    }
                }
                Rx::Small {
                    cookie,
                    kind,
                    len,
                    done,
                } => {
                    let n = (len as usize - self.buf.len()).min(input.len());
                    self.buf.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.buf.len() == len as usize {
                        let b = std::mem::take(&mut self.buf);
                        self.rx = Rx::Header;
                        self.small_chunk(cookie, kind, &b, on)?;
                        if done {
                            let result = self.finish(cookie)?;
                            on(ReplyEvent::Done { cookie, result });
                        }
                        self.buf = b;
                        self.buf.clear();
                    }
                }
            }
        }
        Ok(())
    }

    /// A complete reply header.
    fn header(&mut self, h: &[u8], on: &mut dyn FnMut(ReplyEvent<'_>)) -> Result<(), ProtoError> {
        let structured = self.info.structured;
        if be32(h, 0) == SIMPLE_REPLY_MAGIC {
            let error = be32(h, 4);
            let cookie = be64(h, 8);
            let p = self.lookup(cookie)?;
            if p.kind == CMD_READ && structured && error == 0 {
                return Err(ProtoError::violation(
                    "simple reply to a read with structured replies",
                ));
            }
            if error == 0 && p.kind == CMD_READ && p.len > 0 {
                self.rx = Rx::ChunkData {
                    cookie,
                    at: 0,
                    left: p.len as u64,
                    done: true,
                };
                return Ok(());
            }
            if error != 0 {
                p.error = Some(errno_of(error));
            }
            let result = self.finish(cookie)?;
            on(ReplyEvent::Done { cookie, result });
            return Ok(());
        }
        let flags = be16(h, 4);
        let kind = be16(h, 6);
        let cookie = be64(h, 8);
        let len = be32(h, 16);
        let done = flags & REPLY_FLAG_DONE != 0;
        let p = self.lookup(cookie)?;
        let is_read = p.kind == CMD_READ;
        match kind {
            REPLY_TYPE_NONE => {
                if len != 0 || !done {
                    return Err(ProtoError::violation(
                        "NONE chunk with data or without DONE",
                    ));
                }
                let result = self.finish(cookie)?;
                on(ReplyEvent::Done { cookie, result });
            }
            REPLY_TYPE_OFFSET_DATA if is_read => {
                if len <= 8 {
                    return Err(ProtoError::violation("OFFSET_DATA chunk without data"));
                }
                if len - 8 > p.len {
                    return Err(ProtoError::TooLarge {
                        what: "OFFSET_DATA chunk",
                        len: len as u64,
                    });
                }
                self.rx = Rx::DataOffset { cookie, len, done };
            }
            REPLY_TYPE_OFFSET_HOLE | REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                if kind == REPLY_TYPE_OFFSET_HOLE && !is_read {
                    return Err(ProtoError::violation(
                        "hole in the reply to a request that is not a read",
                    ));
                }
                if len > MAX_SMALL_CHUNK {
                    return Err(ProtoError::TooLarge {
                        what: "reply chunk",
                        len: len as u64,
                    });
                }
                if len == 0 {
                    return Err(ProtoError::violation("empty hole or error chunk"));
                }
                self.rx = Rx::Small {
                    cookie,
                    kind,
                    len,
                    done,
                };
            }
            k => {
                return Err(ProtoError::violation(format!(
                    "reply chunk type {k} to a {} request",
                    if is_read { "read" } else { "non-read" }
                )))
            }
        }
        Ok(())
    }

    /// Checks that [off, off + n) lies within the read of `cookie` and
    /// records it; returns the position within the request.
    fn chunk_range(&mut self, cookie: u64, off: u64, n: u64) -> Result<u64, ProtoError> {
        let p = self.lookup(cookie)?;
        let end = off
            .checked_add(n)
            .ok_or_else(|| ProtoError::violation("chunk offset overflows"))?;
        if off < p.offset || end > p.offset + p.len as u64 {
            return Err(ProtoError::violation("reply chunk outside its read"));
        }
        if p.covered.len() == MAX_CHUNKS_PER_READ {
            return Err(ProtoError::TooLarge {
                what: "chunk count of a read reply",
                len: MAX_CHUNKS_PER_READ as u64,
            });
        }
        let at = off - p.offset;
        p.covered.push((at, at + n));
        Ok(at)
    }

    fn small_chunk(
        &mut self,
        cookie: u64,
        kind: u16,
        b: &[u8],
        on: &mut dyn FnMut(ReplyEvent<'_>),
    ) -> Result<(), ProtoError> {
        match kind {
            REPLY_TYPE_OFFSET_HOLE => {
                if b.len() != 12 {
                    return Err(ProtoError::violation("hole chunk of the wrong length"));
                }
                let (off, n) = (be64(b, 0), be32(b, 8));
                if n == 0 {
                    return Err(ProtoError::violation("empty hole"));
                }
                let at = self.chunk_range(cookie, off, n as u64)?;
                on(ReplyEvent::Hole { cookie, at, len: n });
            }
            _ => {
                // ERROR: error, message length, message; ERROR_OFFSET: the
                // same and an offset.
                let extra = if kind == REPLY_TYPE_ERROR_OFFSET {
                    8
                } else {
                    0
                };
                if b.len() < 6 + extra || be16(b, 4) as usize != b.len() - 6 - extra {
                    return Err(ProtoError::violation("error chunk of the wrong length"));
                }
                let error = be32(b, 0);
                if error == 0 {
                    return Err(ProtoError::violation("error chunk with error 0"));
                }
                let p = self.lookup(cookie)?;
                p.error.get_or_insert(errno_of(error));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "reply_tests.rs"]
mod tests;
