//! The NBD client's protocol code (src/nbd) against servers no one here
//! wrote: nbdkit (with and without structured replies, read-only, with its
//! error filter), qemu-nbd and nbd-server. A small blocking driver moves the
//! bytes over a unix socket in the test's own directory; the protocol code
//! does the rest. The servers are Debian packages (scripts/deps.sh installs
//! them); a missing one fails the test with its name, never skips it.

use dmio::nbd::handshake::{ExportInfo, Handshake};
use dmio::nbd::reply::{ReplyEvent, Transmission};
use dmio::nbd::uri;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READ: u16 = 0;
const WRITE: u16 = 1;
const FLUSH: u16 = 3;
const FUA: u16 = 1;

/// A server process on a unix socket, killed on drop.
struct Server {
    child: Child,
    sock: PathBuf,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("dmio-nbd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn need(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: apt-get install {package} (make deps does it)"
    );
}

/// Starts `cmd` (which listens on `sock`) and waits up to 10 s for the socket.
fn start(tag: &str, build: impl FnOnce(&Path, &Path) -> Command) -> Server {
    let dir = TempDir::new(tag);
    let sock = dir.0.join("nbd.sock");
    let mut cmd = build(&dir.0, &sock);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{tag}: cannot start: {e}"));
    let t0 = Instant::now();
    // nbd-server -d serves one connection: a probe would use it up, so its
    // socket file is waited for instead.
    let probe = |s: &Path| {
        if tag == "nbd-server" {
            s.exists()
        } else {
            UnixStream::connect(s).is_ok()
        }
    };
    while !probe(&sock) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{tag}: no socket after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        sock,
        _dir: dir,
    }
}

fn nbdkit(tag: &str, args: &[&str]) -> Server {
    need("nbdkit", "nbdkit");
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    start(tag, move |_, sock| {
        let mut c = Command::new("nbdkit");
        c.arg("-f").arg("-U").arg(sock).args(&args);
        c
    })
}

/// One connection: a blocking socket and the protocol state.
struct Conn {
    s: UnixStream,
    t: Transmission,
    pending: Vec<u8>,
}

fn connect(sock: &Path, export: &str) -> Result<Conn, dmio::nbd::ProtoError> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut h = Handshake::new(export)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = s.read(&mut buf).expect("read during the handshake");
        assert!(
            n > 0,
            "the server closed the connection during the handshake"
        );
        let done = h.feed(&buf[..n])?;
        s.write_all(&h.take_output()).unwrap();
        if let Some(info) = done {
            let pending = h.leftover();
            return Ok(Conn {
                s,
                t: Transmission::new(info),
                pending,
            });
        }
    }
}

impl Conn {
    fn info(&self) -> ExportInfo {
        *self.t.info()
    }

    /// One request, waited for: the data of a read, or the errno.
    fn io(
        &mut self,
        kind: u16,
        flags: u16,
        off: u64,
        data: &[u8],
        len: u32,
    ) -> Result<Vec<u8>, i32> {
        let mut out = Vec::new();
        let cookie = self.t.request(kind, flags, off, len, &mut out)?;
        if kind == WRITE {
            out.extend_from_slice(data);
        }
        self.s.write_all(&out).unwrap();
        let mut result = None;
        let mut got = vec![0xa5u8; len as usize];
        let mut buf = vec![0u8; 65536];
        let mut input = std::mem::take(&mut self.pending);
        loop {
            self.t
                .feed(&input, &mut |ev| match ev {
                    ReplyEvent::Data {
                        cookie: c,
                        at,
                        bytes,
                    } if c == cookie => {
                        got[at as usize..at as usize + bytes.len()].copy_from_slice(bytes)
                    }
                    ReplyEvent::Hole { cookie: c, at, len } if c == cookie => {
                        got[at as usize..(at + len as u64) as usize].fill(0)
                    }
                    ReplyEvent::Done {
                        cookie: c,
                        result: r,
                    } if c == cookie => result = Some(r),
                    _ => {}
                })
                .expect("a well-formed reply");
            if let Some(r) = result {
                return r.map(|_| got);
            }
            let n = self.s.read(&mut buf).expect("read a reply");
            assert!(n > 0, "the server closed the connection");
            input = buf[..n].to_vec();
        }
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes, reads back, flushes and FUA-writes on one export.
fn exercise(c: &mut Conn, what: &str) {
    let info = c.info();
    assert!(info.size >= 1 << 20, "{what}: size {}", info.size);
    let a = pattern(1, 65536);
    c.io(WRITE, 0, 4096, &a, a.len() as u32)
        .unwrap_or_else(|e| panic!("{what}: write: errno {e}"));
    let back = c.io(READ, 0, 4096, &[], a.len() as u32).unwrap();
    assert!(back == a, "{what}: read back differs");
    c.io(FLUSH, 0, 0, &[], 0)
        .unwrap_or_else(|e| panic!("{what}: flush: errno {e}"));
    let b = pattern(9, 512);
    let flags = if info.flags & 8 != 0 { FUA } else { 0 };
    c.io(WRITE, flags, 512, &b, 512).unwrap();
    assert_eq!(
        c.io(READ, 0, 512, &[], 512).unwrap(),
        b,
        "{what}: 512-byte write"
    );
    // Never written: zeroes (a structured server may send a hole).
    let z = c.io(READ, 0, 512 << 10, &[], 65536).unwrap();
    assert!(
        z.iter().all(|x| *x == 0),
        "{what}: unwritten range not zero"
    );
    // Many requests in flight at once, answered in any order.
    let mut out = Vec::new();
    let mut cookies = Vec::new();
    for i in 0..16u64 {
        cookies.push(c.t.request(READ, 0, i * 4096, 4096, &mut out).unwrap());
    }
    c.s.write_all(&out).unwrap();
    let mut done = 0;
    let mut buf = vec![0u8; 65536];
    let mut input = std::mem::take(&mut c.pending);
    while done < 16 {
        c.t.feed(&input, &mut |ev| {
            if let ReplyEvent::Done { cookie, result } = ev {
                assert!(cookies.contains(&cookie) && result.is_ok());
                done += 1;
            }
        })
        .unwrap();
        if done < 16 {
            let n = c.s.read(&mut buf).unwrap();
            assert!(n > 0);
            input = buf[..n].to_vec();
        }
    }
    assert_eq!(c.t.in_flight(), 0);
}

#[test]
fn nbdkit_structured_and_simple_replies() {
    let srv = nbdkit("memory", &["memory", "16M"]);
    let mut c = connect(&srv.sock, "").unwrap();
    assert!(c.info().structured, "nbdkit offers structured replies");
    exercise(&mut c, "nbdkit memory");

    let srv = nbdkit("nosr", &["--no-sr", "memory", "16M"]);
    let mut c = connect(&srv.sock, "").unwrap();
    assert!(!c.info().structured, "--no-sr: simple replies");
    exercise(&mut c, "nbdkit memory --no-sr");
}

#[test]
fn nbdkit_read_only_errors_and_block_sizes() {
    let srv = nbdkit("ro", &["-r", "memory", "16M"]);
    let mut c = connect(&srv.sock, "").unwrap();
    assert!(c.info().read_only());
    assert_eq!(
        c.io(WRITE, 0, 0, &[0; 512], 512),
        Err(libc::EROFS),
        "refused before sending"
    );
    assert!(c.io(READ, 0, 0, &[], 512).is_ok());

    let srv = nbdkit(
        "err",
        &[
            "--filter=error",
            "memory",
            "16M",
            "error=EIO",
            "error-pread-rate=1",
        ],
    );
    let mut c = connect(&srv.sock, "").unwrap();
    assert_eq!(
        c.io(READ, 0, 0, &[], 4096),
        Err(libc::EIO),
        "the error filter's EIO"
    );
    assert!(
        c.io(WRITE, 0, 0, &[1; 4096], 4096).is_ok(),
        "writes unaffected"
    );

    let srv = nbdkit(
        "bs",
        &[
            "--filter=blocksize-policy",
            "memory",
            "16M",
            "blocksize-minimum=4096",
            "blocksize-preferred=65536",
            "blocksize-maximum=1M",
        ],
    );
    let c = connect(&srv.sock, "").unwrap();
    let i = c.info();
    assert_eq!(
        (i.min_block, i.pref_block, i.max_block),
        (4096, 65536, 1 << 20)
    );
}

#[test]
fn qemu_nbd_and_an_unknown_export() {
    need("qemu-nbd", "qemu-utils");
    let srv = start("qemu", |dir, sock| {
        let img = dir.join("disk.img");
        std::fs::write(&img, vec![0u8; 16 << 20]).unwrap();
        let mut c = Command::new("qemu-nbd");
        c.arg("-k")
            .arg(sock)
            .args(["-f", "raw", "-x", "disk", "--persistent", "--shared=4"])
            .arg(&img);
        c
    });
    let mut c = connect(&srv.sock, "disk").unwrap();
    exercise(&mut c, "qemu-nbd");
    let e = connect(&srv.sock, "no-such-export").err().expect("refused");
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
}

#[test]
fn nbd_server() {
    need("nbd-server", "nbd-server");
    let srv = start("nbd-server", |dir, sock| {
        let img = dir.join("disk.img");
        std::fs::write(&img, vec![0u8; 16 << 20]).unwrap();
        let conf = dir.join("config");
        std::fs::write(
            &conf,
            format!(
                "[generic]\nunixsock = {}\nlistenaddr = 127.0.0.1\nport = {}\n[disk]\nexportname = {}\nflush = true\nfua = true\n",
                sock.display(),
                20000 + std::process::id() % 20000, // it also listens on loopback TCP
                img.display()
            ),
        )
        .unwrap();
        let mut c = Command::new("nbd-server");
        c.arg("-d").arg("-C").arg(&conf);
        c
    });
    let mut c = connect(&srv.sock, "disk").unwrap();
    exercise(&mut c, "nbd-server");
}

#[test]
fn uris_name_the_same_servers() {
    let u = uri::parse("nbd+unix:///disk?socket=/run/x.sock&connect-timeout=100").unwrap();
    assert_eq!(
        u.transport,
        uri::Transport::Unix {
            path: "/run/x.sock".into()
        }
    );
    assert_eq!((u.export.as_str(), u.connect_timeout_ms), ("disk", 100));
}
