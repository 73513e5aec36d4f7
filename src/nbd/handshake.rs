//! The client side of the fixed newstyle handshake, fed bytes.
//!
//! 1. The server greets: `NBDMAGIC`, `IHAVEOPT`, handshake flags (it must
//!    offer fixed newstyle). The client answers with its flags.
//! 2. `NBD_OPT_STRUCTURED_REPLY`: an ACK means structured replies; a
//!    refusal means simple replies only (not an error).
//! 3. `NBD_OPT_GO` for the export, asking for `NBD_INFO_BLOCK_SIZE`: INFO
//!    replies (export size and flags, block sizes), then ACK. A server that
//!    does not know `NBD_OPT_GO` (`NBD_REP_ERR_UNSUP`) gets
//!    `NBD_OPT_EXPORT_NAME` instead, whose answer is the size and flags.
//!
//! Any refusal of the export (unknown, policy, TLS required) is a
//! [`ProtoError::Refused`]; anything off the protocol a
//! [`ProtoError::Violation`].

use super::wire::*;
use super::{be16, be32, be64, ProtoError};

/// Longest export name sent (the specification's limit).
pub(crate) const MAX_EXPORT_NAME: usize = 4096;
/// Longest option reply accepted (an INFO or error message is far smaller).
pub(crate) const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// Largest request this client sends, whatever the server allows.
pub(crate) const MAX_PAYLOAD: u32 = 32 << 20;

/// What the handshake negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// Bytes.
    pub size: u64,
    /// Transmission flags (`TF_*`).
    pub flags: u16,
    /// Block size constraints, from `NBD_INFO_BLOCK_SIZE` or the
    /// specification's defaults (1, 4096, 32 MiB); `max_block` is clamped
    /// to [`MAX_PAYLOAD`].
    pub min_block: u32,
    pub pref_block: u32,
    pub max_block: u32,
    /// Structured replies were negotiated.
    pub structured: bool,
}

impl ExportInfo {
    pub fn read_only(&self) -> bool {
        self.flags & TF_READ_ONLY != 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Structured,
    Go,
    ExportName,
    Done,
    Failed,
}

/// The handshake of one connection. Feed it what the server sends; send
/// what [`Handshake::take_output`] gives, after each feed (and once at the
/// start: nothing, the server speaks first).
#[derive(Debug)]
pub struct Handshake {
    export: Vec<u8>,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    no_zeroes: bool,
    structured: bool,
    export_info: Option<(u64, u16)>,
    block: Option<(u32, u32, u32)>,
}

impl Handshake {
    /// A handshake for export `name` (at most [`MAX_EXPORT_NAME`] bytes).
    pub fn new(name: &str) -> Result<Self, ProtoError> {
        if name.len() > MAX_EXPORT_NAME {
            return Err(ProtoError::TooLarge {
                what: "export name",
                len: name.len() as u64,
            });
        }
        Ok(Handshake {
            export: name.as_bytes().to_vec(),
            state: State::Greeting,
            input: Vec::new(),
            output: Vec::new(),
            no_zeroes: false,
            structured: false,
            export_info: None,
            block: None,
        })
    }

    /// Bytes to send to the server now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// True once the handshake is over (transmission may start).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes bytes from the server. Returns the export's description once
    /// the handshake is complete (then the connection is in transmission:
    /// bytes after the handshake's last reply are left in
    /// [`Handshake::leftover`]).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<ExportInfo>, ProtoError> {
        if self.state == State::Failed {
            return Err(ProtoError::violation("the handshake already failed"));
        }
        if self.state == State::Done {
            self.input.extend_from_slice(bytes);
            return Ok(None);
        }
        self.input.extend_from_slice(bytes);
        match self.run() {
            Ok(done) => Ok(done),
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    /// Bytes received after the handshake ended (a server may not send
    /// any before a request; a client treats them as the first reply bytes).
    pub fn leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.input)
    }

    fn run(&mut self) -> Result<Option<ExportInfo>, ProtoError> {
        loop {
            match self.state {
                State::Greeting => {
                    if self.input.len() < 18 {
                        return Ok(None);
                    }
                    let b: Vec<u8> = self.input.drain(..18).collect();
                    if be64(&b, 0) != NBDMAGIC {
                        return Err(ProtoError::violation("not an NBD server (no NBDMAGIC)"));
                    }
                    if be64(&b, 8) != IHAVEOPT {
                        return Err(ProtoError::violation(
                            "oldstyle server (no IHAVEOPT): only newstyle is supported",
                        ));
                    }
                    let flags = be16(&b, 16);
                    if flags & FLAG_FIXED_NEWSTYLE == 0 {
                        return Err(ProtoError::violation(
                            "the server does not offer fixed newstyle negotiation",
                        ));
                    }
                    self.no_zeroes = flags & FLAG_NO_ZEROES != 0;
                    let mut cflags = FLAG_C_FIXED_NEWSTYLE;
                    if self.no_zeroes {
                        cflags |= FLAG_C_NO_ZEROES;
                    }
                    self.output.extend_from_slice(&cflags.to_be_bytes());
                    encode_option(&mut self.output, OPT_STRUCTURED_REPLY, &[]);
                    self.state = State::Structured;
                }
                State::Structured => {
                    let Some((kind, data)) = self.option_reply(OPT_STRUCTURED_REPLY)? else {
                        return Ok(None);
                    };
                    match kind {
                        REP_ACK if data.is_empty() => self.structured = true,
                        REP_ACK => {
                            return Err(ProtoError::violation(
                                "ACK of NBD_OPT_STRUCTURED_REPLY with data",
                            ))
                        }
                        k if k & REP_FLAG_ERROR != 0 => self.structured = false,
                        k => {
                            return Err(ProtoError::violation(format!(
                                "{} in answer to NBD_OPT_STRUCTURED_REPLY",
                                reply_name(k)
                            )))
                        }
                    }
                    let mut go = Vec::with_capacity(8 + self.export.len());
                    go.extend_from_slice(&(self.export.len() as u32).to_be_bytes());
                    go.extend_from_slice(&self.export);
                    go.extend_from_slice(&1u16.to_be_bytes());
                    go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                    encode_option(&mut self.output, OPT_GO, &go);
                    self.state = State::Go;
                }
                State::Go => {
                    let Some((kind, data)) = self.option_reply(OPT_GO)? else {
                        return Ok(None);
                    };
                    match kind {
                        REP_INFO => self.info(&data)?,
                        REP_ACK => {
                            let Some((size, flags)) = self.export_info else {
                                return Err(ProtoError::violation(
                                    "NBD_OPT_GO acknowledged without NBD_INFO_EXPORT",
                                ));
                            };
                            self.state = State::Done;
                            return Ok(Some(self.finish(size, flags)?));
                        }
                        REP_ERR_UNSUP => {
                            // An older server: NBD_OPT_EXPORT_NAME ends the
                            // negotiation with the size and flags.
                            encode_option(&mut self.output, OPT_EXPORT_NAME, &self.export.clone());
                            self.state = State::ExportName;
                        }
                        k if k & REP_FLAG_ERROR != 0 => {
                            let message = String::from_utf8_lossy(&data).into_owned();
                            return Err(ProtoError::Refused {
                                option: OPT_GO,
                                reply: k,
                                message,
                            });
                        }
                        k => {
                            return Err(ProtoError::violation(format!(
                                "{} in answer to NBD_OPT_GO",
                                reply_name(k)
                            )))
                        }
                    }
                }
                State::ExportName => {
                    let need = if self.no_zeroes { 10 } else { 10 + 124 };
                    if self.input.len() < need {
                        return Ok(None);
                    }
                    let b: Vec<u8> = self.input.drain(..need).collect();
                    self.state = State::Done;
                    self.structured = false; // not negotiated through NBD_OPT_GO's path
                    return Ok(Some(self.finish(be64(&b, 0), be16(&b, 8))?));
                }
                State::Done | State::Failed => return Ok(None),
            }
        }
    }

    /// One complete option reply to `option`: (reply type, data), or None
    /// when more bytes are needed.
    fn option_reply(&mut self, option: u32) -> Result<Option<(u32, Vec<u8>)>, ProtoError> {
        if self.input.len() < 20 {
            return Ok(None);
        }
        if be64(&self.input, 0) != REPLY_MAGIC {
            return Err(ProtoError::violation("option reply without its magic"));
        }
        let opt = be32(&self.input, 8);
        if opt != option {
            return Err(ProtoError::violation(format!(
                "reply to {} while {} was asked",
                option_name(opt),
                option_name(option)
            )));
        }
        let kind = be32(&self.input, 12);
        let len = be32(&self.input, 16);
        if len > MAX_OPTION_REPLY {
            return Err(ProtoError::TooLarge {
                what: "option reply",
                len: len as u64,
            });
        }
        let total = 20 + len as usize;
        if self.input.len() < total {
            return Ok(None);
        }
        let data = self.input[20..total].to_vec();
        self.input.drain(..total);
        Ok(Some((kind, data)))
    }

    fn info(&mut self, data: &[u8]) -> Result<(), ProtoError> {
        if data.len() < 2 {
            return Err(ProtoError::violation("NBD_REP_INFO shorter than its type"));
        }
        match be16(data, 0) {
            INFO_EXPORT => {
                if data.len() != 12 {
                    return Err(ProtoError::violation("NBD_INFO_EXPORT of the wrong length"));
                }
                self.export_info = Some((be64(data, 2), be16(data, 10)));
            }
            INFO_BLOCK_SIZE => {
                if data.len() != 14 {
                    return Err(ProtoError::violation(
                        "NBD_INFO_BLOCK_SIZE of the wrong length",
                    ));
                }
                self.block = Some((be32(data, 2), be32(data, 6), be32(data, 10)));
            }
            _ => {} // the specification: ignore information not asked for
        }
        Ok(())
    }

    fn finish(&self, size: u64, flags: u16) -> Result<ExportInfo, ProtoError> {
        if flags & TF_HAS_FLAGS == 0 {
            return Err(ProtoError::violation(
                "transmission flags without NBD_FLAG_HAS_FLAGS",
            ));
        }
        if size > i64::MAX as u64 {
            return Err(ProtoError::TooLarge {
                what: "export",
                len: size,
            });
        }
        let (min, pref, max) = match self.block {
            None => (1, 4096, MAX_PAYLOAD),
            Some((min, pref, max)) => {
                if !min.is_power_of_two() || min > 64 * 1024 {
                    return Err(ProtoError::violation(format!(
                        "minimum block size {min} is not a power of two up to 64 KiB"
                    )));
                }
                if !pref.is_power_of_two() || pref < min.max(512) || pref > 32 << 20 {
                    return Err(ProtoError::violation(format!(
                        "preferred block size {pref} is not a power of two from 512 (and the minimum) to 32 MiB"
                    )));
                }
                if max < pref || (max != u32::MAX && max % min != 0) {
                    return Err(ProtoError::violation(format!(
                        "maximum block size {max} is below the preferred {pref} or not a multiple of the minimum {min}"
                    )));
                }
                // An absurd maximum is clamped to what this client sends.
                (min, pref, max.min(MAX_PAYLOAD) / min * min)
            }
        };
        Ok(ExportInfo {
            size,
            flags,
            min_block: min,
            pref_block: pref,
            max_block: max,
            structured: self.structured,
        })
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
