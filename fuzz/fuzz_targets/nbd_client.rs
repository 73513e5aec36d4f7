//! Feeds anything to the NBD client's protocol code (src/nbd), as a hostile
//! server would send it, in any split: the handshake, then the transmission
//! phase with requests of every kind in flight. Nothing may panic or hang;
//! a bad stream ends in an error.
#![no_main]

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
