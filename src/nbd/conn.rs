//! One connection's transmission phase as a block device sees it: jobs
//! (a read, a write or a flush of any length) in, completions out, with no
//! IO in it.
//!
//! [`Conn`] turns a job into NBD requests: a job longer than the server's
//! maximum block is sent as several requests, a write that asks for a flush
//! before it (`DM_IO_FLUSH`) sends `NBD_CMD_FLUSH` first and its data only
//! once the flush was answered (NBD does not order requests). It keeps
//! each job's token (for a device: the engine's operation and its private
//! memory) until the last reply of the job has been read off the wire, and
//! then gives the token back with the job's result. The bytes to send wait
//! in [`Conn::output`]; whoever moves bytes sends them and says how many
//! went ([`Conn::sent`]), and feeds what the server sends to [`Conn::feed`].
//!
//! A protocol violation ends the connection: [`Conn::fail_all`] then gives
//! every token back with the errno the caller chooses.

use super::handshake::ExportInfo;
use super::reply::{ReplyEvent, Transmission};
use super::wire::{CMD_FLAG_FUA, CMD_FLUSH, CMD_READ, CMD_WRITE};
use super::ProtoError;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Read,
    Write,
    Flush,
}

/// One job: `len` bytes at byte `offset` of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub kind: JobKind,
    pub offset: u64,
    pub len: u32,
    /// Write through to stable storage (`NBD_CMD_FLAG_FUA`).
    pub fua: bool,
    /// Flush before this write: the write is sent once the flush succeeded.
    pub pre_flush: bool,
}

/// The memory of a job, owned by its token.
pub trait JobBuf {
    /// A write's data (`len` bytes).
    fn write_data(&self) -> &[u8];
    /// Read data for bytes `[at, at + bytes.len())` of the job.
    fn read_data(&mut self, at: u64, bytes: &[u8]);
    /// Bytes `[at, at + len)` of the job read as zeroes (a hole).
    fn read_zeroes(&mut self, at: u64, len: u32);
}

struct Entry<T> {
    job: Job,
    token: T,
    /// Requests sent for this job whose reply has not ended.
    parts: u32,
    /// The first failure of a part.
    error: Option<i32>,
    /// The pre-flush was sent; the data follows when it is answered.
    flushing: bool,
}

/// A sent request: its job and where its bytes lie in the job.
#[derive(Clone, Copy)]
struct Part {
    cookie: u64,
    job: usize,
    at: u64,
}

/// The transmission phase of one connection, in jobs.
pub struct Conn<T: JobBuf> {
    tx: Transmission,
    out: Vec<u8>,
    /// Start of the unsent bytes in `out`.
    out_at: usize,
    jobs: Vec<Option<Entry<T>>>,
    free_jobs: Vec<usize>,
    /// Indexed by the cookie's slot.
    parts: Vec<Option<Part>>,
    live: usize,
}

impl<T: JobBuf> Conn<T> {
    pub fn new(info: ExportInfo) -> Self {
        Conn {
            tx: Transmission::new(info),
            out: Vec::with_capacity(64 << 10),
            out_at: 0,
            jobs: Vec::new(),
            free_jobs: Vec::new(),
            parts: Vec::new(),
            live: 0,
        }
    }

    pub fn info(&self) -> &ExportInfo {
        self.tx.info()
    }

    /// Jobs whose token has not been given back.
    pub fn jobs(&self) -> usize {
        self.live
    }

    /// Bytes waiting to be sent.
    pub fn output(&self) -> &[u8] {
        &self.out[self.out_at..]
    }

    /// `n` bytes of [`Conn::output`] were sent.
    pub fn sent(&mut self, n: usize) {
        self.out_at = (self.out_at + n).min(self.out.len());
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        }
    }

    /// Moves all of [`Conn::output`] into `into` (emptied first; without
    /// copying when nothing of the output was sent yet), as if sent.
    pub fn take_output(&mut self, into: &mut Vec<u8>) {
        into.clear();
        if self.out_at == 0 {
            std::mem::swap(&mut self.out, into);
        } else {
            into.extend_from_slice(&self.out[self.out_at..]);
            self.out.clear();
            self.out_at = 0;
        }
    }

    /// Queues a job. Refused at once (the token comes back with an errno)
    /// when the export does not allow it: `EROFS`, `EOPNOTSUPP` (flush or
    /// FUA not offered), `EINVAL` (past the end, or not a multiple of the
    /// server's minimum block).
    pub fn submit(&mut self, job: Job, token: T) -> Result<(), (i32, T)> {
        let info = *self.tx.info();
        let check = || -> Result<(), i32> {
            if job.kind == JobKind::Flush {
                return Ok(());
            }
            if job.kind == JobKind::Write && info.read_only() {
                return Err(libc::EROFS);
            }
            let end = job.offset.checked_add(job.len as u64).ok_or(libc::EINVAL)?;
            let min = info.min_block.max(1) as u64;
            if end > info.size || job.offset % min != 0 || job.len as u64 % min != 0 {
                return Err(libc::EINVAL);
            }
            Ok(())
        };
        if let Err(e) = check() {
            return Err((e, token));
        }
        let idx = match self.free_jobs.pop() {
            Some(i) => i,
            None => {
                self.jobs.push(None);
                self.jobs.len() - 1
            }
        };
        self.jobs[idx] = Some(Entry {
            job,
            token,
            parts: 0,
            error: None,
            flushing: false,
        });
        self.live += 1;
        let first = if job.kind == JobKind::Flush || job.pre_flush {
            self.send_part(idx, CMD_FLUSH, 0, 0, 0)
                .map(|_| self.entry(idx).flushing = job.kind != JobKind::Flush)
        } else {
            self.send_data(idx)
        };
        match first {
            Ok(()) => Ok(()),
            Err(e) => {
                let ent = self.take_job(idx);
                Err((e, ent.token))
            }
        }
    }

    fn entry(&mut self, idx: usize) -> &mut Entry<T> {
        self.jobs[idx].as_mut().expect("live job")
    }

    fn take_job(&mut self, idx: usize) -> Entry<T> {
        let ent = self.jobs[idx].take().expect("live job");
        self.free_jobs.push(idx);
        self.live -= 1;
        ent
    }

    /// Sends one request of job `idx`: bytes `[at, at + len)` of it.
    fn send_part(
        &mut self,
        idx: usize,
        cmd: u16,
        flags: u16,
        at: u64,
        len: u32,
    ) -> Result<(), i32> {
        let offset = if cmd == CMD_FLUSH {
            0
        } else {
            self.entry(idx).job.offset + at
        };
        let cookie = self.tx.request(cmd, flags, offset, len, &mut self.out)?;
        if cmd == CMD_WRITE {
            let ent = self.jobs[idx].as_ref().expect("live job");
            let data = ent.token.write_data();
            let (a, b) = (at as usize, at as usize + len as usize);
            match data.get(a..b) {
                Some(d) => self.out.extend_from_slice(d),
                None => {
                    // A token shorter than its job: a bug above, not the
                    // peer's doing. Never send a header without its data.
                    debug_assert!(false, "write data shorter than the job");
                    self.out.resize(self.out.len() + len as usize, 0);
                    self.entry(idx).error.get_or_insert(libc::EIO);
                }
            }
        }
        let slot = (cookie & 0xffff_ffff) as usize;
        if self.parts.len() <= slot {
            self.parts.resize(slot + 1, None);
        }
        self.parts[slot] = Some(Part {
            cookie,
            job: idx,
            at,
        });
        self.entry(idx).parts += 1;
        Ok(())
    }

    /// Sends the data requests of a read or write job, each at most the
    /// server's maximum block.
    fn send_data(&mut self, idx: usize) -> Result<(), i32> {
        let info = *self.tx.info();
        let job = self.entry(idx).job;
        let (cmd, flags) = match job.kind {
            JobKind::Read => (CMD_READ, 0),
            JobKind::Write => (CMD_WRITE, if job.fua { CMD_FLAG_FUA } else { 0 }),
            JobKind::Flush => unreachable!("a flush has no data"),
        };
        let min = info.min_block.max(1);
        let max = (info.max_block.max(min) / min * min).max(min);
        if job.len == 0 {
            return Err(libc::EINVAL);
        }
        let mut at = 0u32;
        while at < job.len {
            let len = (job.len - at).min(max);
            if let Err(e) = self.send_part(idx, cmd, flags, at as u64, len) {
                if at == 0 {
                    return Err(e);
                }
                // Parts already sent stay: the job fails when they end.
                self.entry(idx).error.get_or_insert(e);
                return Ok(());
            }
            at += len;
        }
        Ok(())
    }

    /// The part of a cookie the transmission just accepted a reply for.
    fn part(&self, cookie: u64) -> Part {
        let p = self.parts[(cookie & 0xffff_ffff) as usize].expect("cookie of a sent part");
        assert_eq!(
            p.cookie, cookie,
            "a reused slot looked up for an old cookie"
        );
        p
    }

    /// Takes bytes from the server, in any split. `done` gets each job's
    /// token with its result: the job's length, or a negative errno. A
    /// violation ends the connection: call [`Conn::fail_all`] next.
    pub fn feed(&mut self, input: &[u8], done: &mut dyn FnMut(T, i32)) -> Result<(), ProtoError> {
        let mut ended: Vec<(u64, Result<(), i32>)> = Vec::new();
        {
            let parts = &self.parts;
            let jobs = &mut self.jobs;
            self.tx.feed(input, &mut |ev| match ev {
                ReplyEvent::Data { cookie, at, bytes } => {
                    if let Some(p) = parts[(cookie & 0xffff_ffff) as usize] {
                        if let Some(e) = jobs[p.job].as_mut() {
                            e.token.read_data(p.at + at, bytes);
                        }
                    }
                }
                ReplyEvent::Hole { cookie, at, len } => {
                    if let Some(p) = parts[(cookie & 0xffff_ffff) as usize] {
                        if let Some(e) = jobs[p.job].as_mut() {
                            e.token.read_zeroes(p.at + at, len);
                        }
                    }
                }
                ReplyEvent::Done { cookie, result } => ended.push((cookie, result)),
            })?;
        }
        // Slots of `ended` may be reused by new requests: send none until
        // every ended reply has been looked up.
        let mut resume = Vec::new();
        for (cookie, result) in ended {
            let p = self.part(cookie);
            self.parts[(cookie & 0xffff_ffff) as usize] = None;
            let ent = self.entry(p.job);
            ent.parts -= 1;
            if let Err(e) = result {
                ent.error.get_or_insert(e);
            }
            if ent.parts > 0 {
                continue;
            }
            if ent.flushing && ent.error.is_none() {
                ent.flushing = false;
                resume.push(p.job);
                continue;
            }
            self.end_job(p.job, done);
        }
        for idx in resume {
            if let Err(e) = self.send_data(idx) {
                self.entry(idx).error = Some(e);
            }
            if self.entry(idx).parts == 0 {
                self.end_job(idx, done);
            }
        }
        Ok(())
    }

    fn end_job(&mut self, idx: usize, done: &mut dyn FnMut(T, i32)) {
        let ent = self.take_job(idx);
        let res = match ent.error {
            Some(e) => -e.abs(),
            None => ent.job.len as i32,
        };
        done(ent.token, res);
    }

    /// Ends every job with `-errno` (the connection is gone).
    pub fn fail_all(&mut self, errno: i32, done: &mut dyn FnMut(T, i32)) {
        self.parts.clear();
        for i in 0..self.jobs.len() {
            if self.jobs[i].is_some() {
                let ent = self.take_job(i);
                done(ent.token, -errno.abs());
            }
        }
        self.out.clear();
        self.out_at = 0;
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
