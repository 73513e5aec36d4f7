//! Tests of conn.rs: jobs split into requests, a flush before a write,
//! errors, and every token given back exactly once.
use super::*;
use crate::nbd::wire::*;
use crate::nbd::{be16, be32, be64};

fn info(max_block: u32, flags: u16) -> ExportInfo {
    ExportInfo {
        size: 1 << 20,
        flags: TF_HAS_FLAGS | flags,
        min_block: 512,
        pref_block: 4096,
        max_block,
        structured: false,
    }
}

#[derive(Debug, Default)]
struct Tok {
    id: u32,
    data: Vec<u8>,
}

impl JobBuf for Tok {
    fn write_data(&self) -> &[u8] {
        &self.data
    }
    fn read_data(&mut self, at: u64, bytes: &[u8]) {
        self.data[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    }
    fn read_zeroes(&mut self, at: u64, len: u32) {
        self.data[at as usize..(at + len as u64) as usize].fill(0);
    }
}

/// A server in memory: it parses what the connection sends and answers
/// each request with a simple reply, in the order `order` picks.
struct Server {
    disk: Vec<u8>,
    /// Requests seen: (command, flags, offset, len, cookie).
    seen: Vec<(u16, u16, u64, u32, u64)>,
    fail_cmd: Option<u16>,
}

impl Server {
    fn new() -> Server {
        Server {
            disk: (0..1u32 << 20).map(|i| (i % 251) as u8).collect(),
            seen: Vec::new(),
            fail_cmd: None,
        }
    }

    /// Takes everything the connection wants to send; returns the replies.
    fn serve(&mut self, c: &mut Conn<Tok>) -> Vec<Vec<u8>> {
        let bytes = c.output().to_vec();
        c.sent(bytes.len());
        let mut at = 0;
        let mut replies = Vec::new();
        while at < bytes.len() {
            let h = &bytes[at..at + REQUEST_LEN];
            assert_eq!(be32(h, 0), REQUEST_MAGIC);
            let (flags, cmd, cookie) = (be16(h, 4), be16(h, 6), be64(h, 8));
            let (off, len) = (be64(h, 16), be32(h, 24));
            at += REQUEST_LEN;
            self.seen.push((cmd, flags, off, len, cookie));
            let err = if self.fail_cmd == Some(cmd) { 5 } else { 0 };
            let mut r = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
            r.extend((err as u32).to_be_bytes());
            r.extend(cookie.to_be_bytes());
            match cmd {
                CMD_WRITE => {
                    let d = &bytes[at..at + len as usize];
                    self.disk[off as usize..off as usize + len as usize].copy_from_slice(d);
                    at += len as usize;
                }
                CMD_READ if err == 0 => {
                    r.extend_from_slice(&self.disk[off as usize..off as usize + len as usize])
                }
                _ => {}
            }
            replies.push(r);
        }
        replies
    }
}

fn feed_all(c: &mut Conn<Tok>, replies: Vec<Vec<u8>>, split: usize) -> Vec<(u32, i32, Tok)> {
    let all: Vec<u8> = replies.concat();
    let mut done = Vec::new();
    for piece in all.chunks(split) {
        c.feed(piece, &mut |t: Tok, r| done.push((t.id, r, t)))
            .unwrap();
    }
    done
}

#[test]
fn long_jobs_are_split_and_reassembled_in_any_split() {
    for split in [1, 7, 4096, 1 << 20] {
        let mut c = Conn::new(info(8192, TF_SEND_FLUSH | TF_SEND_FUA));
        let mut s = Server::new();
        let w = Tok {
            id: 1,
            data: vec![0xab; 20480],
        };
        let job = |kind, fua| Job {
            kind,
            offset: 4096,
            len: 20480,
            fua,
            pre_flush: false,
        };
        c.submit(job(JobKind::Write, true), w).unwrap();
        let r = {
            let rep = s.serve(&mut c);
            feed_all(&mut c, rep, split)
        };
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].0, r[0].1), (1, 20480));
        // 8192 + 8192 + 4096, each with FUA.
        let lens: Vec<_> = s.seen.iter().map(|x| (x.0, x.1, x.2, x.3)).collect();
        assert_eq!(
            lens,
            vec![
                (CMD_WRITE, CMD_FLAG_FUA, 4096, 8192),
                (CMD_WRITE, CMD_FLAG_FUA, 12288, 8192),
                (CMD_WRITE, CMD_FLAG_FUA, 20480, 4096)
            ]
        );
        let rd = Tok {
            id: 2,
            data: vec![0; 20480],
        };
        c.submit(job(JobKind::Read, false), rd).unwrap();
        let r = {
            let rep = s.serve(&mut c);
            feed_all(&mut c, rep, split)
        };
        assert_eq!((r[0].0, r[0].1), (2, 20480));
        assert!(r[0].2.data.iter().all(|&b| b == 0xab));
        assert_eq!(c.jobs(), 0);
    }
}

#[test]
fn a_flush_before_a_write_is_answered_before_the_data_is_sent() {
    let mut c = Conn::new(info(1 << 20, TF_SEND_FLUSH));
    let mut s = Server::new();
    let t = Tok {
        id: 7,
        data: vec![1; 4096],
    };
    let job = Job {
        kind: JobKind::Write,
        offset: 0,
        len: 4096,
        fua: false,
        pre_flush: true,
    };
    c.submit(job, t).unwrap();
    let first = s.serve(&mut c);
    assert_eq!(s.seen.len(), 1);
    assert_eq!(s.seen[0].0, CMD_FLUSH);
    // Nothing more is sent before the flush's reply.
    assert!(c.output().is_empty());
    assert!(feed_all(&mut c, first, 3).is_empty());
    let second = s.serve(&mut c);
    assert_eq!(s.seen[1].0, CMD_WRITE);
    let r = feed_all(&mut c, second, 3);
    assert_eq!((r[0].0, r[0].1), (7, 4096));
}

#[test]
fn a_failed_pre_flush_fails_the_write_without_sending_it() {
    let mut c = Conn::new(info(1 << 20, TF_SEND_FLUSH));
    let mut s = Server::new();
    s.fail_cmd = Some(CMD_FLUSH);
    let job = Job {
        kind: JobKind::Write,
        offset: 0,
        len: 512,
        fua: false,
        pre_flush: true,
    };
    c.submit(
        job,
        Tok {
            id: 3,
            data: vec![9; 512],
        },
    )
    .unwrap();
    let r = {
        let rep = s.serve(&mut c);
        feed_all(&mut c, rep, 64)
    };
    assert_eq!((r[0].0, r[0].1), (3, -libc::EIO));
    assert!(c.output().is_empty());
    assert_eq!(s.seen.len(), 1);
}

#[test]
fn refused_jobs_give_their_token_back() {
    let mut c: Conn<Tok> = Conn::new(info(1 << 20, TF_READ_ONLY));
    let w = |offset, len, kind, fua| Job {
        kind,
        offset,
        len,
        fua,
        pre_flush: false,
    };
    let t = |id| Tok {
        id,
        data: vec![0; 4096],
    };
    let e = |r: Result<(), (i32, Tok)>| r.unwrap_err().0;
    assert_eq!(
        e(c.submit(w(0, 512, JobKind::Write, false), t(1))),
        libc::EROFS
    );
    assert_eq!(
        e(c.submit(w(0, 0, JobKind::Flush, false), t(2))),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        e(c.submit(w(100, 512, JobKind::Read, false), t(3))),
        libc::EINVAL
    );
    assert_eq!(
        e(c.submit(w(1 << 20, 512, JobKind::Read, false), t(4))),
        libc::EINVAL
    );
    assert_eq!(
        e(c.submit(w(0, 0, JobKind::Read, false), t(5))),
        libc::EINVAL
    );
    let mut c: Conn<Tok> = Conn::new(info(1 << 20, 0));
    assert_eq!(
        e(c.submit(w(0, 512, JobKind::Write, true), t(6))),
        libc::EOPNOTSUPP
    );
    assert_eq!(c.jobs(), 0);
    assert!(c.output().is_empty());
}

#[test]
fn errors_and_fail_all_give_every_token_back_once() {
    let mut c = Conn::new(info(4096, TF_SEND_FLUSH));
    let mut s = Server::new();
    s.fail_cmd = Some(CMD_READ);
    let job = Job {
        kind: JobKind::Read,
        offset: 0,
        len: 8192,
        fua: false,
        pre_flush: false,
    };
    c.submit(
        job,
        Tok {
            id: 1,
            data: vec![0; 8192],
        },
    )
    .unwrap();
    let r = {
        let rep = s.serve(&mut c);
        feed_all(&mut c, rep, 5)
    };
    assert_eq!((r.len(), r[0].1), (1, -libc::EIO));
    for id in 0..3 {
        c.submit(
            job,
            Tok {
                id,
                data: vec![0; 8192],
            },
        )
        .unwrap();
    }
    assert_eq!(c.jobs(), 3);
    // A reply to a cookie never sent ends the connection.
    let mut bad = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    bad.extend(0u32.to_be_bytes());
    bad.extend(0xdead_beef_u64.to_be_bytes());
    assert!(c.feed(&bad, &mut |_, _| panic!("no job ends")).is_err());
    let mut ids = Vec::new();
    c.fail_all(libc::ECONNRESET, &mut |t, r| ids.push((t.id, r)));
    ids.sort();
    assert_eq!(
        ids,
        vec![
            (0, -libc::ECONNRESET),
            (1, -libc::ECONNRESET),
            (2, -libc::ECONNRESET)
        ]
    );
    assert_eq!(c.jobs(), 0);
}

#[test]
fn flush_replies_in_one_feed_resume_their_writes_without_mixing_slots() {
    let mut c = Conn::new(info(1 << 20, TF_SEND_FLUSH));
    let mut s = Server::new();
    let job = |offset| Job {
        kind: JobKind::Write,
        offset,
        len: 4096,
        fua: false,
        pre_flush: true,
    };
    for id in 0..4u32 {
        let t = Tok {
            id,
            data: vec![id as u8 + 1; 4096],
        };
        c.submit(job(id as u64 * 4096), t).unwrap();
    }
    let flushes = s.serve(&mut c);
    assert!(feed_all(&mut c, flushes, 1 << 20).is_empty());
    let writes = s.serve(&mut c);
    assert_eq!(writes.len(), 4);
    let mut r: Vec<_> = feed_all(&mut c, writes, 1 << 20)
        .into_iter()
        .map(|x| (x.0, x.1))
        .collect();
    r.sort();
    assert_eq!(r, vec![(0, 4096), (1, 4096), (2, 4096), (3, 4096)]);
    for id in 0..4usize {
        assert!(s.disk[id * 4096..(id + 1) * 4096]
            .iter()
            .all(|&b| b == id as u8 + 1));
    }
}
