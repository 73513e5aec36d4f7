//! Tests of handshake.rs: fed in every split, and hostile input.
use super::*;

fn greeting(flags: u16) -> Vec<u8> {
    let mut v = NBDMAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v
}

fn reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = REPLY_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    reply(OPT_GO, REP_INFO, &d)
}

fn info_block(min: u32, pref: u32, max: u32) -> Vec<u8> {
    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for x in [min, pref, max] {
        d.extend_from_slice(&x.to_be_bytes());
    }
    reply(OPT_GO, REP_INFO, &d)
}

/// A whole server conversation, in pieces of `chunk` bytes.
fn server_bytes() -> Vec<u8> {
    let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    s.extend(reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
    s.extend(info_export(
        1 << 30,
        TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA,
    ));
    s.extend(info_block(512, 4096, 64 << 20));
    s.extend(reply(OPT_GO, REP_ACK, &[]));
    s
}

#[test]
fn negotiates_go_with_block_sizes_in_any_split() {
    let all = server_bytes();
    for chunk in [1, 3, 7, 20, all.len()] {
        let mut h = Handshake::new("disk").unwrap();
        let mut sent = Vec::new();
        let mut got = None;
        for piece in all.chunks(chunk) {
            if let Some(info) = h.feed(piece).unwrap() {
                got = Some(info);
            }
            sent.extend(h.take_output());
        }
        let info = got.expect("handshake completes");
        assert_eq!(info.size, 1 << 30);
        assert!(info.structured);
        assert_eq!((info.min_block, info.pref_block), (512, 4096));
        assert_eq!(info.max_block, MAX_PAYLOAD, "64 MiB clamped to 32 MiB");
        assert!(!info.read_only());
        // client flags, STRUCTURED_REPLY, GO("disk", 1 info: BLOCK_SIZE)
        assert_eq!(be32(&sent, 0), FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        assert_eq!(be64(&sent, 4), IHAVEOPT);
        assert_eq!(be32(&sent, 12), OPT_STRUCTURED_REPLY);
        assert_eq!(be32(&sent, 20 + 8), OPT_GO);
        assert_eq!(&sent[20 + 20..20 + 24], b"disk");
        assert_eq!(be16(&sent, 20 + 26), INFO_BLOCK_SIZE);
    }
}

#[test]
fn structured_refused_means_simple_replies() {
    let mut s = greeting(FLAG_FIXED_NEWSTYLE);
    s.extend(reply(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, b"no"));
    s.extend(info_export(4096, TF_HAS_FLAGS | TF_READ_ONLY));
    s.extend(reply(OPT_GO, REP_ACK, &[]));
    let mut h = Handshake::new("").unwrap();
    let info = h.feed(&s).unwrap().unwrap();
    assert!(!info.structured);
    assert!(info.read_only());
    assert_eq!(
        (info.min_block, info.pref_block, info.max_block),
        (1, 4096, MAX_PAYLOAD)
    );
}

#[test]
fn unknown_export_is_refused_with_the_message() {
    let mut s = greeting(FLAG_FIXED_NEWSTYLE);
    s.extend(reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
    s.extend(reply(OPT_GO, REP_ERR_UNKNOWN, b"no such export"));
    let mut h = Handshake::new("nope").unwrap();
    let e = h.feed(&s).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
    assert!(e.to_string().contains("no such export"), "{e}");
    assert!(h.feed(&[0]).is_err(), "a failed handshake stays failed");
}

#[test]
fn old_server_gets_export_name() {
    let mut s = greeting(FLAG_FIXED_NEWSTYLE);
    s.extend(reply(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, &[]));
    s.extend(reply(OPT_GO, REP_ERR_UNSUP, &[]));
    s.extend((1u64 << 20).to_be_bytes());
    s.extend((TF_HAS_FLAGS | TF_SEND_FLUSH).to_be_bytes());
    s.extend([0u8; 124]);
    let mut h = Handshake::new("x").unwrap();
    let info = h.feed(&s).unwrap().unwrap();
    assert_eq!(info.size, 1 << 20);
    let out = h.take_output();
    assert!(out.windows(4).any(|w| w == OPT_EXPORT_NAME.to_be_bytes()));
}

#[test]
fn hostile_servers_end_the_handshake() {
    let mut bad: Vec<Vec<u8>> = Vec::new();
    bad.push(b"GET / HTTP/1.1\r\n\r\n".to_vec());
    bad.push(greeting(0)); // not fixed newstyle
    let mut big = greeting(FLAG_FIXED_NEWSTYLE);
    big.extend(&REPLY_MAGIC.to_be_bytes());
    big.extend(OPT_STRUCTURED_REPLY.to_be_bytes());
    big.extend(REP_ACK.to_be_bytes());
    big.extend(u32::MAX.to_be_bytes()); // 4 GiB of option reply
    bad.push(big);
    let mut wrong = greeting(FLAG_FIXED_NEWSTYLE);
    wrong.extend(reply(OPT_GO, REP_ACK, &[])); // answers an option not asked
    bad.push(wrong);
    let mut noexport = greeting(FLAG_FIXED_NEWSTYLE);
    noexport.extend(reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
    noexport.extend(reply(OPT_GO, REP_ACK, &[]));
    bad.push(noexport);
    let mut badblock = greeting(FLAG_FIXED_NEWSTYLE);
    badblock.extend(reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
    badblock.extend(info_export(4096, TF_HAS_FLAGS));
    badblock.extend(info_block(3, 4096, 1 << 20));
    badblock.extend(reply(OPT_GO, REP_ACK, &[]));
    bad.push(badblock);
    for b in bad {
        let mut h = Handshake::new("e").unwrap();
        assert!(h.feed(&b).is_err(), "{b:?}");
    }
    assert!(Handshake::new(&"x".repeat(MAX_EXPORT_NAME + 1)).is_err());
}
