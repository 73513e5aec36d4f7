//! The engine every client of the process shares: a few shards, each an
//! engine (an io_uring reactor, or a thread-pool dispatcher and its
//! workers) and one completion thread, created when the first client needs
//! them and kept for the life of the process. A client is attached to the
//! shard with the fewest clients; everything else stays per client
//! (private memory and its bound, counters, handles, cancel, destroy).
//!
//! How many shards: `DMIO_THREADS=N` (1 to 64), by default one per two
//! CPUs (rounded up), at most [`MAX_SHARDS`]. Under load both threads of a
//! shard are busy, so one shard per CPU ran twice as many busy threads as
//! CPUs, beside the kernel's own IO workers: on 2 CPUs, with 64 clients
//! reading, a hung client's TIMEOUTs then came 4 ms late at p99, against
//! 0.15 ms with one shard, at the same or higher throughput. A client that wants threads of its own
//! (`DMIO_ISOLATE=1` at create) does not come here.
//!
//! Shards are never torn down: an idle shard's threads sleep, holding no
//! client's memory (a destroyed client's memory leaves their rings'
//! tables at its destroy) and nothing a destroy waits for. After `fork`
//! the child has none of the parent's threads: the first create there
//! starts shards of its own (the parent's are forgotten, not dropped).

use crate::completion::CompletionThread;
use crate::engine::Engine;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Default cap on the number of shards (one per two CPUs up to this).
pub(crate) const MAX_SHARDS: usize = 8;
/// Ring size of a shared reactor (and of its completion thread's ring).
const SHARED_ENTRIES: u32 = 4096;
/// Process-wide bound on the thread-pool workers, split among shards.
const SHARED_WORKERS: usize = 4096;

/// One engine and one completion thread, shared by the clients attached.
pub struct Shard {
    pub engine: Arc<dyn Engine>,
    pub completion: Arc<CompletionThread>,
    clients: AtomicUsize,
}

impl Shard {
    fn start(shards: usize) -> Result<Arc<Shard>> {
        let engine = crate::engine::choose(SHARED_ENTRIES, SHARED_WORKERS / shards.max(1))?;
        let completion = CompletionThread::start("dmio-notify", Arc::clone(&engine))
            .map_err(|e| Error::from_io("spawn completion thread", &e))?;
        Ok(Arc::new(Shard {
            engine,
            completion: Arc::new(completion),
            clients: AtomicUsize::new(0),
        }))
    }

    /// A client leaves (at its destroy).
    pub fn detach(&self) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shards of one engine choice (`DMIO_ENGINE`), in one process.
struct Set {
    want: String,
    pid: u32,
    shards: Vec<Arc<Shard>>,
}

static SETS: Mutex<Vec<Set>> = Mutex::new(Vec::new());

/// How many shards: `DMIO_THREADS`, else one per two CPUs (rounded up), up
/// to [`MAX_SHARDS`].
pub fn shards_wanted() -> usize {
    if let Some(n) = std::env::var("DMIO_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| (1..=64).contains(n))
    {
        return n;
    }
    cpu_count().div_ceil(2).min(MAX_SHARDS)
}

/// The CPUs the process may use.
pub fn cpu_count() -> usize {
    // Asked once: it reads the cgroup's CPU quota from /proc and /sys.
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Whether `DMIO_ISOLATE` asks for threads of the client's own.
pub fn isolate_wanted() -> bool {
    matches!(
        std::env::var("DMIO_ISOLATE").as_deref(),
        Ok("1") | Ok("yes") | Ok("true")
    )
}

/// Attaches a new client: to a new shard while there are fewer than
/// wanted, else to the one with the fewest clients. (With `DMIO_ENGINE`
/// unset, each new shard tries io_uring and falls back to the thread pool
/// on its own: a set may hold both.)
pub fn attach() -> Result<Arc<Shard>> {
    let want = std::env::var("DMIO_ENGINE").unwrap_or_default();
    let pid = std::process::id();
    let mut sets = SETS.lock().unwrap_or_else(|p| p.into_inner());
    if sets.iter().any(|s| s.pid != pid) {
        // A forked child: those threads are not here; dropping the shards
        // would join or detach threads that do not exist. Kept, never
        // dropped (a static), out of the way.
        static PARENTS: Mutex<Vec<Set>> = Mutex::new(Vec::new());
        let old = std::mem::take(&mut *sets);
        PARENTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(old);
    }
    let at = match sets.iter().position(|s| s.want == want) {
        Some(i) => i,
        None => {
            sets.push(Set {
                want,
                pid,
                shards: Vec::new(),
            });
            sets.len() - 1
        }
    };
    let set = &mut sets[at];
    let n = shards_wanted();
    let least = set
        .shards
        .iter()
        .min_by_key(|s| s.clients.load(Ordering::Relaxed))
        .cloned();
    let shard = match least {
        Some(s) if set.shards.len() >= n => s,
        _ => {
            let s = Shard::start(n)?;
            set.shards.push(Arc::clone(&s));
            s
        }
    };
    shard.clients.fetch_add(1, Ordering::Relaxed);
    Ok(shard)
}
