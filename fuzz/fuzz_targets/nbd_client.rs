//! Feeds anything to the NBD client's protocol code (src/nbd), as a hostile
//! server would send it, in any split: the handshake, then the transmission
//! phase with requests of every kind in flight, or (control bit 0x20) a
//! device's jobs split into requests (`Conn`), whose tokens must each come
//! back exactly once. Nothing may panic or hang; a bad stream ends in an
//! error.
#![no_main]

use dmio::nbd::conn::{Conn, Job, JobBuf, JobKind};
use dmio::nbd::handshake::{ExportInfo, Handshake};
use dmio::nbd::reply::{ReplyEvent, Transmission};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let split = 1 + (ctl as usize & 0x1f);
    if ctl & 0x80 == 0 {
        let mut h = Handshake::new("export").expect("a short name");
        for piece in rest.chunks(split) {
            if h.feed(piece).is_err() {
                return;
            }
            let _ = h.take_output();
        }
        return;
    }
    // Transmission: reads, writes and a flush in flight; the server's
    // replies are the rest of the input.
    let info = ExportInfo {
        size: 1 << 20,
        flags: 1 | 4 | 8, // HAS_FLAGS, SEND_FLUSH, SEND_FUA
        min_block: 1,
        pref_block: 4096,
        max_block: 1 << 16,
        structured: ctl & 0x40 != 0,
    };
    if ctl & 0x20 != 0 {
        return jobs(info, rest, split);
    }
    let mut t = Transmission::new(info);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut lens = Vec::new();
    for (i, kind) in [0u16, 1, 0, 3, 0].into_iter().enumerate() {
        let (off, len) = if kind == 3 {
            (0, 0)
        } else {
            (i as u64 * 4096, 4096 << (i % 3))
        };
        if let Ok(c) = t.request(kind, 0, off, len, &mut out) {
            lens.push((c, len));
        }
    }
    for piece in rest.chunks(split) {
        let ok = t.feed(piece, &mut |ev| match ev {
            ReplyEvent::Data { at, bytes, .. } => {
                // The parser bounds every chunk to its request: this slice
                // must fit the request's buffer.
                let end = at as usize + bytes.len();
                assert!(end <= buf.len());
                buf[at as usize..end].copy_from_slice(bytes);
            }
            ReplyEvent::Hole { at, len, .. } => {
                let end = at as usize + len as usize;
                assert!(end <= buf.len());
                buf[at as usize..end].fill(0);
            }
            ReplyEvent::Done { .. } => {}
        });
        if ok.is_err() {
            return;
        }
    }
    assert!(t.in_flight() <= lens.len());
});

struct Tok {
    id: usize,
    data: Vec<u8>,
}

impl JobBuf for Tok {
    fn write_data(&self) -> &[u8] {
        &self.data
    }
    fn read_data(&mut self, at: u64, bytes: &[u8]) {
        let end = at as usize + bytes.len();
        assert!(end <= self.data.len(), "read data outside its job");
        self.data[at as usize..end].copy_from_slice(bytes);
    }
    fn read_zeroes(&mut self, at: u64, len: u32) {
        let end = at as usize + len as usize;
        assert!(end <= self.data.len(), "a hole outside its job");
        self.data[at as usize..end].fill(0);
    }
}

/// A device's jobs over one connection: every token comes back once,
/// through a result or through `fail_all` after a violation.
fn jobs(mut info: ExportInfo, input: &[u8], split: usize) {
    info.max_block = 4096;
    let mut c = Conn::new(info);
    let kinds = [
        (JobKind::Read, 8192, false),
        (JobKind::Write, 4096, true),
        (JobKind::Read, 12288, false),
        (JobKind::Flush, 0, false),
        (JobKind::Write, 8192, false),
    ];
    let mut back = vec![0u32; kinds.len()];
    for (id, &(kind, len, pre_flush)) in kinds.iter().enumerate() {
        let job = Job {
            kind,
            offset: id as u64 * 16384,
            len,
            fua: false,
            pre_flush,
        };
        let tok = Tok {
            id,
            data: vec![id as u8; len as usize],
        };
        if let Err((_, t)) = c.submit(job, tok) {
            back[t.id] += 1;
        }
    }
    for piece in input.chunks(split) {
        let r = c.feed(piece, &mut |t: Tok, _| back[t.id] += 1);
        let out = c.output().len();
        c.sent(out);
        if r.is_err() {
            c.fail_all(libc::EPROTO, &mut |t: Tok, _| back[t.id] += 1);
            break;
        }
    }
    c.fail_all(libc::EPROTO, &mut |t: Tok, _| back[t.id] += 1);
    assert!(
        back.iter().all(|&n| n == 1),
        "tokens given back {back:?} times"
    );
    assert_eq!(c.jobs(), 0);
}
