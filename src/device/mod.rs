//! Block devices: opening a path or fd, sizes, alignment, fault injection.
//!
//! A [`Device`] is shared (`Arc`) by the C handle and by every operation in
//! flight on it, so closing the C handle never closes an fd the kernel or
//! the engine may still use.

pub mod faults;
pub mod nbd;
pub mod slots;

use crate::error::{Error, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// `dm_io_bdev_open` flag: open read-only.
pub(crate) const OPEN_RDONLY: u32 = 1;
/// `dm_io_bdev_open` flag: do not use O_DIRECT (page-cache IO).
pub(crate) const OPEN_BUFFERED: u32 = 2;
pub(crate) const OPEN_KNOWN: u32 = OPEN_RDONLY | OPEN_BUFFERED;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An open block device or regular file.
#[derive(Debug)]
pub struct Device {
    id: u64,
    /// The open file or block device; `None` for an NBD export.
    fd: Option<OwnedFd>,
    /// The connection of an NBD export ([`nbd`]).
    remote: Option<std::sync::Arc<nbd::Remote>>,
    sectors: u64,
    lbs: u32,
    direct: bool,
    read_only: bool,
    block_dev: bool,
    /// A regular file on a memory file system (tmpfs, ramfs; O_DIRECT or not):
    /// see [`Device::in_memory`].
    mem_fs: bool,
    pub faults: faults::FaultTable,
    /// A block device with O_DIRECT on a blk-mq disk: the slots of its
    /// disk's request queue, shared by every device open on that disk
    /// ([`slots`]).
    slots: Option<std::sync::Arc<slots::KernelSlots>>,
    /// `dm_io_bdev_close` was called: a finished request naming this
    /// device is not kept for reuse (it would keep the file open).
    closed: std::sync::atomic::AtomicBool,
}

/// Whether `fd` is on a memory file system (tmpfs, ramfs).
fn on_memory_fs(fd: RawFd) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: a zeroed statfs is a valid value for the kernel to fill.
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `sf` a valid out-pointer.
    if unsafe { libc::fstatfs(fd, &mut sf) } != 0 {
        return false;
    }
    let t = sf.f_type as i64;
    t == TMPFS_MAGIC || t == RAMFS_MAGIC
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;

fn fstat(fd: RawFd) -> Result<libc::stat> {
    // SAFETY: `st` is a plain C struct that fstat fills in; zeroed is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(Error::last_os("fstat"));
    }
    Ok(st)
}

/// The O_DIRECT offset alignment of a regular file, from statx(STATX_DIOALIGN).
fn file_dio_align(fd: RawFd) -> Option<u32> {
    // SAFETY: zeroed statx is a valid value for the kernel to fill.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, valid out-pointer.
    let rc = unsafe {
        libc::statx(
            fd,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some(stx.stx_dio_offset_align.max(stx.stx_dio_mem_align))
}

impl Device {
    /// Marks the C handle closed (see [`Device::is_closed`]).
    pub fn mark_closed(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether `dm_io_bdev_close` was called on this device.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Opens `path`: O_DIRECT unless `OPEN_BUFFERED`, or when the file
    /// system refuses O_DIRECT (tmpfs), in which case it falls back to
    /// buffered IO and [`Device::direct`] says so.
    pub fn open(path: &str, flags: u32) -> Result<Device> {
        if flags & !OPEN_KNOWN != 0 {
            return Err(crate::einval!(
                "unknown open flags {:#x}",
                flags & !OPEN_KNOWN
            ));
        }
        if crate::nbd::uri::is_nbd_uri(path) {
            return Device::open_nbd(path, flags);
        }
        let c = CString::new(path).map_err(|_| crate::einval!("path contains a NUL byte"))?;
        let acc = if flags & OPEN_RDONLY != 0 {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        let base = acc | libc::O_CLOEXEC;
        let try_open = |extra: i32| {
            // SAFETY: `c` is a valid NUL-terminated path.
            let fd = unsafe { libc::open(c.as_ptr(), base | extra) };
            if fd < 0 {
                Err(Error::last_os(&format!("open {path}")))
            } else {
                // SAFETY: `fd` was just returned by open and is owned by no one else.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        };
        let (fd, direct) = if flags & OPEN_BUFFERED != 0 {
            (try_open(0)?, false)
        } else {
            match try_open(libc::O_DIRECT) {
                Ok(fd) => (fd, true),
                Err(e) if e.errno == libc::EINVAL => (try_open(0)?, false),
                Err(e) => return Err(e),
            }
        };
        Device::from_owned(fd, direct, flags & OPEN_RDONLY != 0)
    }

    /// Wraps a duplicate of `fd`. O_DIRECT is used when the descriptor has
    /// it (or can be given it and `OPEN_BUFFERED` is not set).
    pub fn from_fd(fd: RawFd, flags: u32) -> Result<Device> {
        if flags & !OPEN_KNOWN != 0 {
            return Err(crate::einval!(
                "unknown open flags {:#x}",
                flags & !OPEN_KNOWN
            ));
        }
        // SAFETY: F_DUPFD_CLOEXEC only reads `fd`; a bad fd gives EBADF.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(Error::last_os("dup fd"));
        }
        // SAFETY: `dup` is a fresh descriptor owned by no one else.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        // SAFETY: F_GETFL on a valid fd.
        let fl = unsafe { libc::fcntl(dup, libc::F_GETFL) };
        if fl < 0 {
            return Err(Error::last_os("fcntl F_GETFL"));
        }
        let acc = fl & libc::O_ACCMODE;
        let read_only = acc == libc::O_RDONLY || flags & OPEN_RDONLY != 0;
        if acc == libc::O_WRONLY {
            return Err(crate::einval!("fd is write-only; dm-io needs read access"));
        }
        let mut direct = fl & libc::O_DIRECT != 0;
        if !direct && flags & OPEN_BUFFERED == 0 {
            // The duplicate shares the file description, so setting O_DIRECT
            // here would change the caller's fd too; leave it as given.
            direct = false;
        }
        Device::from_owned(owned, direct, read_only)
    }

    fn from_owned(fd: OwnedFd, direct: bool, read_only: bool) -> Result<Device> {
        let raw = fd.as_raw_fd();
        let st = fstat(raw)?;
        let kind = st.st_mode & libc::S_IFMT;
        let (bytes, lbs, block_dev) = if kind == libc::S_IFBLK {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
            if unsafe { libc::ioctl(raw, BLKGETSIZE64, &mut size) } != 0 {
                return Err(Error::last_os("ioctl BLKGETSIZE64"));
            }
            let mut ssz: libc::c_int = 0;
            // SAFETY: BLKSSZGET writes one int into `ssz`.
            if unsafe { libc::ioctl(raw, BLKSSZGET, &mut ssz) } != 0 {
                return Err(Error::last_os("ioctl BLKSSZGET"));
            }
            (size, ssz.max(512) as u32, true)
        } else if kind == libc::S_IFREG {
            let lbs = if direct {
                file_dio_align(raw).unwrap_or(4096).max(512)
            } else {
                512
            };
            (st.st_size as u64, lbs, false)
        } else {
            return Err(Error::new(
                libc::ENOTBLK,
                "not a block device or regular file",
            ));
        };
        if !lbs.is_power_of_two() || lbs as usize > crate::memory::PAGE_SIZE {
            return Err(Error::new(
                libc::EOPNOTSUPP,
                format!(
                    "logical block size {lbs} is above {}",
                    crate::memory::PAGE_SIZE
                ),
            ));
        }
        Ok(Device {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            fd: Some(fd),
            remote: None,
            sectors: bytes / 512,
            lbs,
            direct,
            read_only,
            block_dev,
            mem_fs: kind == libc::S_IFREG && on_memory_fs(raw),
            faults: faults::FaultTable::default(),
            slots: (block_dev && direct)
                .then(|| slots::for_block_device(st.st_rdev))
                .flatten(),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Opens an NBD export (`nbd://`, `nbd+unix://`; see [`nbd`]).
    /// `OPEN_RDONLY` refuses writes here; an export the server marks
    /// read-only ends writes ERROR `EROFS`. `OPEN_BUFFERED` has no meaning
    /// for a remote export and is accepted.
    fn open_nbd(uri: &str, flags: u32) -> Result<Device> {
        let o = nbd::Remote::open(uri)?;
        Ok(Device {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            fd: None,
            remote: Some(o.remote),
            sectors: o.bytes / 512,
            lbs: o.block,
            direct: true,
            read_only: flags & OPEN_RDONLY != 0,
            block_dev: false,
            mem_fs: false,
            faults: faults::FaultTable::default(),
            slots: None,
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The connection, for an NBD export.
    pub fn remote(&self) -> Option<&nbd::Remote> {
        self.remote.as_deref()
    }

    pub fn id(&self) -> u64 {
        self.id
    }
    /// The descriptor IO goes to; -1 for an NBD export, whose ops go to
    /// its connection instead ([`Device::remote`]).
    pub fn fd(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }
    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }
    /// Logical block size in bytes (IO offsets and lengths must be multiples).
    pub fn logical_block_size(&self) -> u32 {
        self.lbs
    }
    pub fn direct(&self) -> bool {
        self.direct
    }
    pub fn read_only(&self) -> bool {
        self.read_only
    }
    pub fn is_block_device(&self) -> bool {
        self.block_dev
    }
    /// A file on tmpfs or ramfs: its IO is a copy to or from the
    /// page cache and never waits for a device. io_uring cannot start it
    /// without blocking (no `FMODE_NOWAIT`), so it punts every such op to
    /// an io-wq thread; a thread that waits for the op anyway (a SYNC
    /// caller) may as well make the system call itself.
    pub fn in_memory(&self) -> bool {
        self.mem_fs
    }
    /// The slots of the disk's request queue an op must hold while the
    /// kernel has it ([`slots`]); `None`: no cap.
    #[inline]
    pub fn kernel_slots(&self) -> Option<&slots::KernelSlots> {
        self.slots.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_regular_file() {
        let dir = std::env::temp_dir().join(format!("dmio-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let d = Device::open(p.to_str().unwrap(), 0).unwrap();
        assert_eq!(d.sectors(), 2048);
        assert!(d.logical_block_size() >= 512);
        assert_eq!(
            Device::open("/nonexistent/x", 0).unwrap_err().errno,
            libc::ENOENT
        );
        assert_eq!(
            Device::open(p.to_str().unwrap(), 99).unwrap_err().errno,
            libc::EINVAL
        );
        assert_eq!(
            Device::open("/dev/null", 0).unwrap_err().errno,
            libc::ENOTBLK
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
