//! Fault injection, modelled on dm-delay / dm-error / dm-flakey tables.
//!
//! A spec is a list of rules separated by `;` or newlines; each rule is a
//! keyword followed by `key=value` options and words:
//!
//! ```text
//! delay 50ms                      every IO waits 50 ms before it is started
//! delay read=50ms write=200ms     per direction
//! error reads sectors=0-2047 errno=EIO
//! hang writes                     held until the spec changes
//! flakey up=5s down=1s drop_writes
//! ```
//!
//! Words `reads`/`writes` restrict a rule to one direction; `sectors=A-B`
//! (inclusive, 512-byte sectors) to IO that overlaps that range. `errno=`
//! takes a name (EIO, ENOSPC, ETIMEDOUT, ENXIO, EROFS) or a number.
//! `flakey` alternates `up` (no faults) and `down` periods from the moment
//! the spec is set; while down, IO fails with EIO, or with `drop_writes`
//! writes report success without being written and reads still work.
//! An empty spec (or `none`) clears all faults.
//!
//! The engine asks [`FaultTable::decide`] before starting each operation.
//! A held or delayed operation keeps its private memory exactly like IO
//! stuck in the kernel.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What to do with one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Pass,
    Delay(Duration),
    Hold,
    Fail(i32),
    /// Report success without doing the IO (`flakey drop_writes`).
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Both,
    Reads,
    Writes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Delay {
        read: Duration,
        write: Duration,
    },
    Error(i32),
    Hang,
    Flakey {
        up: Duration,
        down: Duration,
        drop_writes: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    action: Action,
    dir: Dir,
    sectors: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Spec {
    rules: Vec<Rule>,
    set_at: Instant,
}

/// A device's current faults; changeable while IO runs.
#[derive(Debug)]
pub struct FaultTable {
    active: AtomicBool,
    gen: AtomicU64,
    spec: RwLock<Arc<Spec>>,
}

impl Default for FaultTable {
    fn default() -> Self {
        FaultTable {
            active: AtomicBool::new(false),
            gen: AtomicU64::new(0),
            spec: RwLock::new(Arc::new(Spec {
                rules: Vec::new(),
                set_at: Instant::now(),
            })),
        }
    }
}

fn parse_duration(v: &str) -> Result<Duration> {
    let (num, unit) = v
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| v.split_at(i))
        .unwrap_or((v, "ms"));
    let n: u64 = num
        .parse()
        .map_err(|_| crate::einval!("bad duration '{v}' (use e.g. 50ms, 2s, 100us)"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "us" => Duration::from_micros(n),
        _ => return Err(crate::einval!("bad duration unit in '{v}' (us, ms or s)")),
    })
}

fn parse_errno(v: &str) -> Result<i32> {
    let e = match v {
        "EIO" => libc::EIO,
        "ENOSPC" => libc::ENOSPC,
        "ETIMEDOUT" => libc::ETIMEDOUT,
        "ENXIO" => libc::ENXIO,
        "EROFS" => libc::EROFS,
        "ENOMEM" => libc::ENOMEM,
        "EAGAIN" => libc::EAGAIN,
        _ => v
            .parse::<i32>()
            .map_err(|_| crate::einval!("unknown errno '{v}'"))?,
    };
    if e <= 0 || e > 4095 {
        return Err(crate::einval!("errno {e} out of range 1..4095"));
    }
    Ok(e)
}

fn parse_sectors(v: &str) -> Result<(u64, u64)> {
    let bad = || crate::einval!("bad sector range '{v}' (use A-B, inclusive)");
    let (a, b) = v.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.parse().map_err(|_| bad())?;
    let b: u64 = b.parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

fn parse_rule(text: &str) -> Result<Option<Rule>> {
    let mut words = text.split_whitespace();
    let Some(kw) = words.next() else {
        return Ok(None);
    };
    if kw == "none" {
        return Ok(None);
    }
    let mut dir = Dir::Both;
    let mut sectors = None;
    let mut errno = libc::EIO;
    let (mut read, mut write, mut both) = (None, None, None);
    let (mut up, mut down, mut drop_writes) = (None, None, false);
    for w in words {
        match w.split_once('=') {
            None => match w {
                "reads" | "read" => dir = Dir::Reads,
                "writes" | "write" => dir = Dir::Writes,
                "drop_writes" if kw == "flakey" => drop_writes = true,
                _ if kw == "delay" && both.is_none() => both = Some(parse_duration(w)?),
                _ => return Err(crate::einval!("unknown word '{w}' in '{text}'")),
            },
            Some((k, v)) => match k {
                "sectors" => sectors = Some(parse_sectors(v)?),
                "errno" if kw == "error" => errno = parse_errno(v)?,
                "read" if kw == "delay" => read = Some(parse_duration(v)?),
                "write" if kw == "delay" => write = Some(parse_duration(v)?),
                "up" if kw == "flakey" => up = Some(parse_duration(v)?),
                "down" if kw == "flakey" => down = Some(parse_duration(v)?),
                _ => return Err(crate::einval!("unknown option '{k}' in '{text}'")),
            },
        }
    }
    let action = match kw {
        "delay" => {
            let d = both.unwrap_or_default();
            let (r, w) = (read.unwrap_or(d), write.unwrap_or(d));
            if r.is_zero() && w.is_zero() {
                return Err(crate::einval!("delay needs a duration in '{text}'"));
            }
            Action::Delay { read: r, write: w }
        }
        "error" => Action::Error(errno),
        "hang" => Action::Hang,
        "flakey" => {
            let (Some(up), Some(down)) = (up, down) else {
                return Err(crate::einval!("flakey needs up= and down= in '{text}'"));
            };
            if up.is_zero() && down.is_zero() {
                return Err(crate::einval!("flakey needs a non-zero period in '{text}'"));
            }
            Action::Flakey {
                up,
                down,
                drop_writes,
            }
        }
        _ => {
            return Err(crate::einval!(
                "unknown fault '{kw}' (delay, error, hang, flakey, none)"
            ))
        }
    };
    Ok(Some(Rule {
        action,
        dir,
        sectors,
    }))
}

/// Parses a whole spec; exposed for validation and tests.
pub fn parse(spec: &str) -> Result<usize> {
    parse_rules(spec).map(|r| r.len())
}

fn parse_rules(spec: &str) -> Result<Vec<Rule>> {
    let mut rules = Vec::new();
    for part in spec.split([';', '\n']) {
        if let Some(r) = parse_rule(part.trim())? {
            rules.push(r);
        }
    }
    Ok(rules)
}

impl FaultTable {
    /// Replaces the faults; held IO is re-examined by the engine soon after.
    pub fn set(&self, spec: &str) -> Result<()> {
        let rules = parse_rules(spec)?;
        let active = !rules.is_empty();
        let new = Arc::new(Spec {
            rules,
            set_at: Instant::now(),
        });
        *self.spec.write().unwrap_or_else(|p| p.into_inner()) = new;
        self.gen.fetch_add(1, Ordering::Release);
        self.active.store(active, Ordering::Release);
        Ok(())
    }

    /// Bumps on every `set`, so holders of IO know to look again.
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Decides the fate of one operation. `count == 0` is a flush.
    pub fn decide(&self, write: bool, sector: u64, count: u64) -> Decision {
        if !self.is_active() {
            return Decision::Pass;
        }
        let spec = Arc::clone(&self.spec.read().unwrap_or_else(|p| p.into_inner()));
        let mut delay = Duration::ZERO;
        let mut fail = None;
        let mut dropped = false;
        for r in &spec.rules {
            let dir_ok = match r.dir {
                Dir::Both => true,
                Dir::Reads => !write,
                Dir::Writes => write,
            };
            let range_ok = r.sectors.is_none_or(|(a, b)| {
                let end = sector + count.max(1) - 1;
                sector <= b && end >= a
            });
            if !dir_ok || !range_ok {
                continue;
            }
            match r.action {
                Action::Hang => return Decision::Hold,
                Action::Error(e) => {
                    fail.get_or_insert(e);
                }
                Action::Delay { read, write: w } => delay = delay.max(if write { w } else { read }),
                Action::Flakey {
                    up,
                    down,
                    drop_writes,
                } => {
                    let period = (up + down).as_nanos().max(1);
                    let pos = spec.set_at.elapsed().as_nanos() % period;
                    if pos >= up.as_nanos() {
                        if !drop_writes {
                            fail.get_or_insert(libc::EIO);
                        } else if write {
                            dropped = true;
                        }
                    }
                }
            }
        }
        if let Some(e) = fail {
            Decision::Fail(e)
        } else if dropped {
            Decision::Drop
        } else if !delay.is_zero() {
            Decision::Delay(delay)
        } else {
            Decision::Pass
        }
    }
}

/// Reports a bad spec the same way everywhere.
pub fn check(spec: &str) -> std::result::Result<(), Error> {
    parse_rules(spec).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_decides() {
        let t = FaultTable::default();
        assert_eq!(t.decide(false, 0, 8), Decision::Pass);
        t.set("delay read=50ms write=200ms").unwrap();
        assert_eq!(
            t.decide(false, 0, 8),
            Decision::Delay(Duration::from_millis(50))
        );
        assert_eq!(
            t.decide(true, 0, 8),
            Decision::Delay(Duration::from_millis(200))
        );
        t.set("error reads sectors=0-2047 errno=ENOSPC; delay 5ms")
            .unwrap();
        assert_eq!(t.decide(false, 2040, 16), Decision::Fail(libc::ENOSPC));
        assert_eq!(
            t.decide(false, 2048, 16),
            Decision::Delay(Duration::from_millis(5))
        );
        assert_eq!(
            t.decide(true, 0, 8),
            Decision::Delay(Duration::from_millis(5))
        );
        t.set("hang writes").unwrap();
        assert_eq!(t.decide(true, 0, 8), Decision::Hold);
        assert_eq!(t.decide(false, 0, 8), Decision::Pass);
        let g = t.generation();
        t.set("").unwrap();
        assert!(t.generation() > g);
        assert_eq!(t.decide(true, 0, 8), Decision::Pass);
        t.set("flakey up=0s down=10s drop_writes").unwrap();
        assert_eq!(t.decide(true, 0, 8), Decision::Drop);
        assert_eq!(t.decide(false, 0, 8), Decision::Pass);
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "delay",
            "delay read=5parsecs",
            "error errno=EWHAT",
            "error sectors=9-3",
            "hang sometimes",
            "explode",
            "flakey up=1s",
            "error errno=0",
        ] {
            assert!(check(bad).is_err(), "{bad} should be refused");
        }
        assert!(check("none").is_ok());
        assert!(check("  ").is_ok());
    }
}
