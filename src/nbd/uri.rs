//! NBD URIs (doc/uri.md of the NBD project), the plain-text transports:
//!
//! ```text
//! nbd://HOST[:PORT]/EXPORT[?PARAMS]          TCP (port 10809 by default)
//! nbd+unix:///EXPORT?socket=PATH[&PARAMS]    a unix socket
//! ```
//!
//! The export name is the path after the first `/`, percent-decoded (empty:
//! the server's default export). libdmio's parameters, all optional:
//! `connect-timeout=MS` (connect and handshake, default 5000),
//! `silence=MS` (default 30000), `connections=N` (default 1, at most 16).
//! TLS (`nbds`, `nbds+unix`) and vsock transports are refused with
//! `EPROTONOSUPPORT`, never served in plain text; anything else that is not
//! understood (an unknown parameter, a missing host or socket) is `EINVAL`.

use std::fmt;

pub(crate) const DEFAULT_PORT: u16 = 10809;
pub(crate) const MAX_CONNECTIONS: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tcp { host: String, port: u16 },
    Unix { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub transport: Transport,
    pub export: String,
    pub connect_timeout_ms: u32,
    pub silence_ms: u32,
    pub connections: u32,
}

/// Why a URI is refused: the errno and a message for dm_io_last_error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriError {
    pub errno: i32,
    pub message: String,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn invalid(message: impl Into<String>) -> UriError {
    UriError {
        errno: libc::EINVAL,
        message: message.into(),
    }
}

/// True when `s` names an NBD URI (any of its schemes), so that a caller
/// can tell it from a path.
pub fn is_nbd_uri(s: &str) -> bool {
    let lower = s
        .get(..s.find("://").unwrap_or(0))
        .unwrap_or("")
        .to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "nbd" | "nbds" | "nbd+unix" | "nbds+unix" | "nbd+vsock" | "nbds+vsock"
    )
}

fn percent_decode(s: &str, what: &str) -> Result<String, UriError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(format!("{what}: bad percent escape")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(format!("{what}: not UTF-8")))
}

fn number(key: &str, v: &str, min: u32, max: u32) -> Result<u32, UriError> {
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return Err(invalid(format!("{key}={v}: not a whole number")));
    }
    match v.parse::<u64>() {
        Ok(n) if n >= min as u64 && n <= max as u64 => Ok(n as u32),
        _ => Err(invalid(format!("{key}={v}: out of range {min}..{max}"))),
    }
}

/// Parses an NBD URI.
pub fn parse(s: &str) -> Result<NbdUri, UriError> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| invalid(format!("{s}: not an NBD URI (nbd://... or nbd+unix://...)")))?;
    let unix = match scheme.to_ascii_lowercase().as_str() {
        "nbd" => false,
        "nbd+unix" => true,
        "nbds" | "nbds+unix" | "nbds+vsock" | "nbd+vsock" => {
            return Err(UriError {
                errno: libc::EPROTONOSUPPORT,
                message: format!("{scheme}://: TLS and vsock transports are not supported yet"),
            })
        }
        _ => return Err(invalid(format!("{scheme}://: not an NBD URI scheme"))),
    };
    if rest.contains('#') {
        return Err(invalid("a fragment (#) has no meaning in an NBD URI"));
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i + 1..]),
        None => (before_query, ""),
    };
    let export = percent_decode(path, "export name")?;
    if export.len() > super::handshake::MAX_EXPORT_NAME {
        return Err(invalid("export name longer than 4096 bytes"));
    }
    let mut uri = NbdUri {
        transport: Transport::Unix {
            path: String::new(),
        },
        export,
        connect_timeout_ms: 5000,
        silence_ms: 30000,
        connections: 1,
    };
    let mut socket = None;
    for kv in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v, k)?;
        match k {
            "socket" if unix => socket = Some(v),
            "socket" => return Err(invalid("socket= belongs to nbd+unix:// URIs")),
            "connect-timeout" => uri.connect_timeout_ms = number(k, &v, 1, 3_600_000)?,
            "silence" => uri.silence_ms = number(k, &v, 1, 86_400_000)?,
            "connections" => uri.connections = number(k, &v, 1, MAX_CONNECTIONS)?,
            _ => return Err(invalid(format!("unknown URI parameter '{k}'"))),
        }
    }
    if unix {
        if !authority.is_empty() {
            return Err(invalid(
                "nbd+unix:// takes no host: nbd+unix:///EXPORT?socket=PATH",
            ));
        }
        let path = socket
            .filter(|p| !p.is_empty())
            .ok_or_else(|| invalid("nbd+unix:// needs socket=PATH"))?;
        uri.transport = Transport::Unix { path };
        return Ok(uri);
    }
    // HOST, HOST:PORT, [V6], [V6]:PORT
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| invalid("unclosed [ in the host"))?;
        match after {
            "" => (h, None),
            p if p.starts_with(':') => (h, Some(&p[1..])),
            _ => return Err(invalid("junk after ]")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("nbd:// needs a host: nbd://HOST[:PORT]/EXPORT"));
    }
    if host.contains('@') {
        return Err(invalid("user information (@) is not part of an NBD URI"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => number("port", p, 1, 65535)? as u16,
    };
    uri.transport = Transport::Tcp {
        host: percent_decode(host, "host")?,
        port,
    };
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_transports() {
        let u = parse("nbd://127.0.0.1/disk").unwrap();
        assert_eq!(
            u.transport,
            Transport::Tcp {
                host: "127.0.0.1".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(u.export, "disk");
        assert_eq!(
            (u.connect_timeout_ms, u.silence_ms, u.connections),
            (5000, 30000, 1)
        );
        let u = parse("nbd://[::1]:10810/a%20b?connect-timeout=250&silence=1000&connections=4")
            .unwrap();
        assert_eq!(
            u.transport,
            Transport::Tcp {
                host: "::1".into(),
                port: 10810
            }
        );
        assert_eq!(u.export, "a b");
        assert_eq!(
            (u.connect_timeout_ms, u.silence_ms, u.connections),
            (250, 1000, 4)
        );
        let u = parse("nbd+unix:///?socket=/run/nbd%2Fx.sock").unwrap();
        assert_eq!(
            u.transport,
            Transport::Unix {
                path: "/run/nbd/x.sock".into()
            }
        );
        assert_eq!(u.export, "");
        assert_eq!(parse("nbd://host").unwrap().export, "");
        assert!(
            is_nbd_uri("NBD+unix:///x?socket=/s") && !is_nbd_uri("/dev/nbd0") && !is_nbd_uri("nbd")
        );
    }

    #[test]
    fn refusals() {
        for (s, errno) in [
            ("nbds://host/x", libc::EPROTONOSUPPORT),
            ("nbds+unix:///x?socket=/s", libc::EPROTONOSUPPORT),
            ("nbd+vsock://1:10809/x", libc::EPROTONOSUPPORT),
            ("nbd://", libc::EINVAL),
            ("nbd:///x", libc::EINVAL),
            ("nbd+unix:///x", libc::EINVAL),
            ("nbd+unix:///x?socket=", libc::EINVAL),
            ("nbd+unix://host/x?socket=/s", libc::EINVAL),
            ("nbd://host/x?socket=/s", libc::EINVAL),
            ("nbd://host/x?colour=blue", libc::EINVAL),
            ("nbd://host/x?connections=0", libc::EINVAL),
            ("nbd://host/x?connections=17", libc::EINVAL),
            ("nbd://host/x?silence=10ms", libc::EINVAL),
            ("nbd://host:99999/x", libc::EINVAL),
            ("nbd://host:/x", libc::EINVAL),
            ("nbd://user@host/x", libc::EINVAL),
            ("nbd://host/%zz", libc::EINVAL),
            ("nbd://host/x#frag", libc::EINVAL),
            ("http://host/x", libc::EINVAL),
            ("/dev/sda", libc::EINVAL),
        ] {
            match parse(s) {
                Err(e) => assert_eq!(e.errno, errno, "{s}: {e}"),
                Ok(u) => panic!("{s} accepted: {u:?}"),
            }
        }
    }
}
