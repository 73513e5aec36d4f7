//! The Network Block Device protocol, client side, with no IO in it
//! ("sans-IO", as quinn-proto and rustls do it): the handshake and the
//! transmission phase are state machines that take the bytes a server sent
//! and give back what to send, what was negotiated, and which request each
//! reply answers. Sockets, threads and clocks belong to whoever drives them
//! (an engine), so the same code runs under every engine, in unit tests fed
//! byte by byte, and under a fuzzer fed anything.
//!
//! The rules are those of the NBD protocol specification (`doc/proto.md`
//! of the NBD project) and its URI form (`doc/uri.md`):
//! - [`uri`]: `nbd://HOST[:PORT]/EXPORT` and `nbd+unix:///EXPORT?socket=PATH`.
//! - [`handshake`]: fixed newstyle, `NBD_OPT_STRUCTURED_REPLY`, then
//!   `NBD_OPT_GO` with `NBD_INFO_BLOCK_SIZE`.
//! - [`reply`]: simple and structured replies, matched to requests through
//!   a table of cookies (slot and generation) the client owns.
//! - [`wire`]: the constants and the request encoding.
//! - [`conn`]: a connection's transmission phase in jobs (a device's
//!   operations): split to the server's block sizes, a flush before a
//!   write, every job's token given back once.
//!
//! Bytes from the peer are hostile: every length is bounded before it is
//! used, a cookie is only ever looked up in the table, and anything
//! unexpected is a [`ProtoError`] that ends the connection, never a panic.
//!
//! [`crate::device::nbd`] drives it for `nbd://` devices.

pub mod conn;
pub mod handshake;
pub mod reply;
pub mod uri;
pub mod wire;

use std::fmt;

/// Why a connection cannot go on. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The peer sent something the protocol does not allow here.
    Violation(String),
    /// The server refused an option the client needs (`NBD_REP_ERR_*`).
    Refused {
        option: u32,
        reply: u32,
        message: String,
    },
    /// A length from the peer is larger than this client accepts.
    TooLarge { what: &'static str, len: u64 },
}

impl ProtoError {
    pub(crate) fn violation(msg: impl Into<String>) -> Self {
        ProtoError::Violation(msg.into())
    }

    /// The errno a caller sees for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            ProtoError::Violation(_) | ProtoError::TooLarge { .. } => libc::EPROTO,
            ProtoError::Refused { reply, .. } => match *reply {
                wire::REP_ERR_UNKNOWN => libc::ENOENT,
                wire::REP_ERR_POLICY => libc::EACCES,
                wire::REP_ERR_TLS_REQD => libc::EPROTONOSUPPORT,
                wire::REP_ERR_SHUTDOWN => libc::ESHUTDOWN,
                wire::REP_ERR_UNSUP => libc::EOPNOTSUPP,
                _ => libc::EPROTO,
            },
        }
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Violation(m) => write!(f, "protocol violation: {m}"),
            ProtoError::Refused {
                option,
                reply,
                message,
            } => write!(
                f,
                "server refused option {} ({}){}{}",
                wire::option_name(*option),
                wire::reply_name(*reply),
                if message.is_empty() { "" } else { ": " },
                message
            ),
            ProtoError::TooLarge { what, len } => write!(f, "{what} of {len} bytes is too large"),
        }
    }
}

/// Reads a big-endian u16/u32/u64 at `at` (the caller checked the length).
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}
