//! Kernel slots: how many ops of this process a block device's request
//! queue may hold at once.
//!
//! A blk-mq disk has `queue/nr_requests` requests (tags) per hardware
//! queue. io_uring starts block IO with `IOCB_NOWAIT`; when the tags are
//! all taken the kernel does not fail the op, it hands it to an io-wq
//! worker thread that sleeps in `blk_mq_get_tag` until a tag frees up.
//! On a hung device, or with more ops queued than the device has tags
//! (64 clients at QD4 on a loop device with 128 tags), that is one kernel
//! thread per excess op: hundreds of `iou-wrk` threads, each woken and
//! put back to sleep, taking CPU from everything else.
//!
//! So every engine ring of the process takes a slot before it gives an op
//! on such a device to the kernel, and gives it back when the op
//! completes; an op that finds none waits in its ring (in the library, no
//! thread), and the ring is woken when a slot comes back. Every device
//! opened on the same disk (a partition counts as its disk) shares one
//! [`KernelSlots`]. The cap covers only this process: tags taken by other
//! processes still make the kernel punt, as before.

use crate::engine::Wake;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The slots of one disk's request queue.
pub struct KernelSlots {
    cap: usize,
    used: AtomicUsize,
    /// Some ring waits for a slot (so [`KernelSlots::give_back`] looks at
    /// `wakers`).
    waiting: AtomicBool,
    /// The rings waiting for a slot, each once.
    wakers: Mutex<Vec<Arc<dyn Wake>>>,
    /// How many times `wakers` was emptied (its rings woken): a ring
    /// registered under the current number is still on the list.
    round: AtomicU64,
}

/// Where a ring stands on a disk's list of rings to wake: the
/// [`KernelSlots`] round it registered in (`NOT_LISTED`: none).
pub(crate) type Listed = u64;
/// A ring not on the list.
pub(crate) const NOT_LISTED: Listed = u64::MAX;

impl std::fmt::Debug for KernelSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelSlots")
            .field("cap", &self.cap)
            .field("used", &self.used.load(Ordering::Relaxed))
            .finish()
    }
}

impl KernelSlots {
    pub fn new(cap: usize) -> KernelSlots {
        KernelSlots {
            cap: cap.max(1),
            used: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            wakers: Mutex::new(Vec::new()),
            round: AtomicU64::new(0),
        }
    }

    /// How many ops the disk's queue may hold.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Takes a slot if one is free.
    #[inline]
    pub fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |u| {
                (u < self.cap).then_some(u + 1)
            })
            .is_ok()
    }

    /// Whether a slot is free now (a sleeping ring's last look, after it
    /// announced its sleep: a slot given back after this look wakes it).
    pub fn free(&self) -> bool {
        fence(Ordering::SeqCst);
        self.used.load(Ordering::SeqCst) < self.cap
    }

    /// Whether a ring registered in round `listed` is still on the list
    /// (no give-back has emptied it since).
    fn still_listed(&self, listed: Listed) -> bool {
        listed == self.round.load(Ordering::SeqCst)
    }

    /// Whether a slot is free now; when none is, registers `waker` to be
    /// woken when one comes back. A ring's last look before it sleeps
    /// (after announcing the sleep): a slot given back after the look
    /// finds the ring registered, and one given back before it is seen.
    pub fn free_or_wait(&self, waker: &Arc<dyn Wake>, listed: &mut Listed) -> bool {
        if self.free() {
            return true;
        }
        if !self.still_listed(*listed) {
            *listed = self.register(waker);
        }
        self.free()
    }

    /// Puts `waker` on the list of rings to wake (once), then raises
    /// `waiting`, both before the caller's last look at `used`; the round
    /// it is listed in.
    fn register(&self, waker: &Arc<dyn Wake>) -> Listed {
        let mut w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if !w
            .iter()
            .any(|x| std::ptr::addr_eq(Arc::as_ptr(x), Arc::as_ptr(waker)))
        {
            w.push(Arc::clone(waker));
        }
        self.waiting.store(true, Ordering::SeqCst);
        self.round.load(Ordering::SeqCst)
    }

    /// Gives back a slot taken by [`KernelSlots::take`] (its op completed,
    /// or ended without reaching the kernel) and wakes the waiting rings.
    #[inline]
    pub fn give_back(&self) {
        let before = self.used.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(before > 0, "slot given back twice");
        if self.waiting.load(Ordering::SeqCst) {
            let wakers = {
                let mut w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
                self.waiting.store(false, Ordering::SeqCst);
                self.round.fetch_add(1, Ordering::SeqCst);
                std::mem::take(&mut *w)
            };
            for w in wakers {
                w.wake();
            }
        }
    }
}

/// The slots of the disk that holds block device `rdev`, shared by every
/// device open on it; `None` when the device is not a blk-mq disk or a
/// partition of one (bio-based devices such as most device-mapper targets
/// have no tags to run out of) or sysfs does not say.
pub fn for_block_device(rdev: libc::dev_t) -> Option<Arc<KernelSlots>> {
    let (dir, cap) = disk_queue(rdev)?;
    static DISKS: Mutex<Option<HashMap<PathBuf, Weak<KernelSlots>>>> = Mutex::new(None);
    let mut g = DISKS.lock().unwrap_or_else(|p| p.into_inner());
    let map = g.get_or_insert_with(HashMap::new);
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(s) = map.get(&dir).and_then(Weak::upgrade) {
        return Some(s);
    }
    let s = Arc::new(KernelSlots::new(cap));
    map.insert(dir, Arc::downgrade(&s));
    Some(s)
}

/// The sysfs directory of the disk holding `rdev` and its `nr_requests`.
fn disk_queue(rdev: libc::dev_t) -> Option<(PathBuf, usize)> {
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let dev = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).ok()?;
    let disk = if dev.join("partition").exists() {
        dev.parent()?.to_path_buf()
    } else {
        dev
    };
    queue_depth(&disk).map(|n| (disk, n))
}

/// `nr_requests` of a blk-mq disk's sysfs directory.
fn queue_depth(disk: &Path) -> Option<usize> {
    if !disk.join("mq").is_dir() {
        return None;
    }
    let s = std::fs::read_to_string(disk.join("queue/nr_requests")).ok()?;
    s.trim().parse::<usize>().ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn take_up_to_cap_then_wait_and_wake() {
        let s = KernelSlots::new(2);
        let c = Arc::new(Count(AtomicUsize::new(0)));
        let w: Arc<dyn Wake> = c.clone();
        let mut listed = NOT_LISTED;
        assert!(s.take());
        assert!(s.take());
        assert!(!s.take());
        assert!(!s.free_or_wait(&w, &mut listed));
        assert!(
            !s.free_or_wait(&w, &mut listed),
            "a second wait registers once"
        );
        assert_eq!(s.wakers.lock().unwrap().len(), 1);
        s.give_back();
        assert_eq!(c.0.load(Ordering::SeqCst), 1, "woken once");
        assert!(!s.still_listed(listed), "off the list once woken");
        assert!(s.free());
        assert!(s.take());
        s.give_back();
        assert_eq!(c.0.load(Ordering::SeqCst), 1, "no waiter left");
        s.give_back();
        assert_eq!(s.used.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn zero_cap_is_one() {
        let s = KernelSlots::new(0);
        assert_eq!(s.cap(), 1);
        assert!(s.take());
        assert!(!s.take());
    }

    #[test]
    fn loop_device_and_regular_files() {
        // A regular file's st_dev is its file system's device, not an
        // rdev; only look up a loop device if the machine has one.
        if let Ok(m) = std::fs::metadata("/dev/loop0") {
            use std::os::unix::fs::MetadataExt;
            if let Some(s) = for_block_device(m.rdev()) {
                assert!(s.cap() >= 1);
                let again = for_block_device(m.rdev()).expect("same disk");
                assert!(Arc::ptr_eq(&s, &again), "one per disk");
            }
        }
        assert!(
            for_block_device(libc::makedev(0, 0)).is_none(),
            "no such disk"
        );
    }
}
