//! Tests of reply.rs: fed in every split, and hostile input.
use super::*;

fn info(structured: bool) -> ExportInfo {
    ExportInfo {
        size: 1 << 20,
        flags: TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA,
        min_block: 1,
        pref_block: 4096,
        max_block: 1 << 20,
        structured,
    }
}

fn simple(error: u32, cookie: u64) -> Vec<u8> {
    let mut v = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    v.extend(error.to_be_bytes());
    v.extend(cookie.to_be_bytes());
    v
}

fn chunk(flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
    v.extend(flags.to_be_bytes());
    v.extend(kind.to_be_bytes());
    v.extend(cookie.to_be_bytes());
    v.extend((payload.len() as u32).to_be_bytes());
    v.extend(payload);
    v
}

/// The data a test assembled, and the Done results in order.
type Outcome = (Vec<u8>, Vec<(u64, Result<(), i32>)>);

/// Feeds `bytes` in pieces of `split`.
fn run(t: &mut Transmission, bytes: &[u8], split: usize) -> Result<Outcome, ProtoError> {
    let mut data = vec![0xeeu8; 8192];
    let mut done = Vec::new();
    for piece in bytes.chunks(split.max(1)) {
        t.feed(piece, &mut |ev| match ev {
            ReplyEvent::Data { at, bytes, .. } => {
                data[at as usize..at as usize + bytes.len()].copy_from_slice(bytes)
            }
            ReplyEvent::Hole { at, len, .. } => {
                data[at as usize..(at + len as u64) as usize].fill(0)
            }
            ReplyEvent::Done { cookie, result } => done.push((cookie, result)),
        })?;
    }
    Ok((data, done))
}

#[test]
fn simple_replies_in_any_split() {
    for split in [1, 2, 5, 16, 4096] {
        let mut t = Transmission::new(info(false));
        let mut out = Vec::new();
        let r = t.request(CMD_READ, 0, 4096, 4096, &mut out).unwrap();
        let w = t
            .request(CMD_WRITE, CMD_FLAG_FUA, 0, 512, &mut out)
            .unwrap();
        assert_eq!(out.len(), 2 * REQUEST_LEN);
        let mut s = simple(0, w);
        s.extend(simple(0, r));
        s.extend((0..4096).map(|i| i as u8));
        let (data, done) = run(&mut t, &s, split).unwrap();
        assert_eq!(done, vec![(w, Ok(())), (r, Ok(()))]);
        assert!(data[..4096].iter().enumerate().all(|(i, b)| *b == i as u8));
        assert_eq!(t.in_flight(), 0);
    }
}

#[test]
fn structured_read_in_chunks_holes_and_errors() {
    let mut t = Transmission::new(info(true));
    let mut out = Vec::new();
    let r = t.request(CMD_READ, 0, 8192, 4096, &mut out).unwrap();
    // Second half first, then a hole for the first half, then NONE+DONE.
    let mut payload = (8192u64 + 2048).to_be_bytes().to_vec();
    payload.extend(vec![7u8; 2048]);
    let mut s = chunk(0, REPLY_TYPE_OFFSET_DATA, r, &payload);
    let mut hole = 8192u64.to_be_bytes().to_vec();
    hole.extend(2048u32.to_be_bytes());
    s.extend(chunk(0, REPLY_TYPE_OFFSET_HOLE, r, &hole));
    s.extend(chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r, &[]));
    let (data, done) = run(&mut t, &s, 3).unwrap();
    assert_eq!(done, vec![(r, Ok(()))]);
    assert!(data[..2048].iter().all(|b| *b == 0) && data[2048..4096].iter().all(|b| *b == 7));

    let e = t.request(CMD_READ, 0, 0, 512, &mut out).unwrap();
    let mut err = 5u32.to_be_bytes().to_vec(); // EIO
    err.extend(3u16.to_be_bytes());
    err.extend(b"bad");
    let s = chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, e, &err);
    let (_, done) = run(&mut t, &s, 1).unwrap();
    assert_eq!(done, vec![(e, Err(libc::EIO))]);
}

#[test]
fn requests_the_server_did_not_allow_are_refused() {
    let mut ro = info(false);
    ro.flags |= TF_READ_ONLY;
    let mut t = Transmission::new(ro);
    let mut out = Vec::new();
    assert_eq!(t.request(CMD_WRITE, 0, 0, 512, &mut out), Err(libc::EROFS));
    assert_eq!(t.request(CMD_TRIM, 0, 0, 512, &mut out), Err(libc::EROFS));
    let mut t = Transmission::new(info(false));
    assert_eq!(
        t.request(CMD_TRIM, 0, 0, 512, &mut out),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(
        t.request(CMD_READ, 0, (1 << 20) - 511, 512, &mut out),
        Err(libc::EINVAL)
    );
    assert_eq!(
        t.request(CMD_READ, 0, u64::MAX, 512, &mut out),
        Err(libc::EINVAL)
    );
    assert_eq!(
        t.request(CMD_READ, 0, 0, (1 << 20) + 1, &mut out),
        Err(libc::EINVAL)
    );
    assert_eq!(t.request(CMD_FLUSH, 0, 0, 0, &mut out).map(|_| ()), Ok(()));
    assert!(out.len() == REQUEST_LEN && t.in_flight() == 1);
}

#[test]
fn stale_and_unknown_cookies_are_violations() {
    let mut t = Transmission::new(info(false));
    let mut out = Vec::new();
    let w = t.request(CMD_WRITE, 0, 0, 512, &mut out).unwrap();
    let mut s = simple(0, w);
    assert!(run(&mut t, &s, 16).is_ok());
    // The same cookie again (its slot is free now), then a made-up one.
    assert!(run(&mut t, &s, 16).is_err());
    let mut t = Transmission::new(info(false));
    let w = t.request(CMD_WRITE, 0, 0, 512, &mut out).unwrap();
    s = simple(0, w ^ (1 << 40));
    assert!(run(&mut t, &s, 16).is_err());
}

#[test]
fn hostile_replies_end_the_connection() {
    let mut out = Vec::new();
    let cases: Vec<Box<dyn Fn(u64) -> Vec<u8>>> = vec![
        Box::new(|_| b"HTTP/1.1 200 OK\r\n".to_vec()),
        // data past the read
        Box::new(|r| {
            let mut p = (8192u64 + 4000).to_be_bytes().to_vec();
            p.extend(vec![1u8; 200]);
            chunk(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, r, &p)
        }),
        // DONE without covering the read
        Box::new(|r| chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r, &[])),
        // overlap hidden by a gap
        Box::new(|r| {
            let mut s = Vec::new();
            for off in [8192u64, 8192] {
                let mut p = off.to_be_bytes().to_vec();
                p.extend(vec![1u8; 2048]);
                s.extend(chunk(0, REPLY_TYPE_OFFSET_DATA, r, &p));
            }
            s.extend(chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r, &[]));
            s
        }),
        // a 4 GiB error message
        Box::new(|r| {
            let mut v = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
            v.extend(REPLY_FLAG_DONE.to_be_bytes());
            v.extend(REPLY_TYPE_ERROR.to_be_bytes());
            v.extend(r.to_be_bytes());
            v.extend(u32::MAX.to_be_bytes());
            v
        }),
        // block status never asked for
        Box::new(|r| chunk(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, r, &[0; 8])),
        // a simple reply to a read while structured replies are on
        Box::new(|r| simple(0, r)),
        // error chunk whose message length lies
        Box::new(|r| {
            let mut e = 5u32.to_be_bytes().to_vec();
            e.extend(100u16.to_be_bytes());
            e.extend(b"x");
            chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, r, &e)
        }),
    ];
    for (i, c) in cases.iter().enumerate() {
        let mut t = Transmission::new(info(true));
        let r = t.request(CMD_READ, 0, 8192, 4096, &mut out).unwrap();
        assert!(run(&mut t, &c(r), 7).is_err(), "case {i} accepted");
    }
}
