//! The checks of `dm_io_client_create`'s and `dm_io`'s arguments against
//! the client and its devices, and the choice of the library-page path.

use super::{Client, Submit, MAX_DEVICES, MAX_SIZE_LIMIT};
use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::memory::{lib_pages, pieces, PAGE_SIZE};
use std::sync::atomic::Ordering;

fn total_ram() -> u64 {
    // SAFETY: sysinfo fills the zeroed struct; result checked.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return u64::MAX;
    }
    (si.totalram as u64).saturating_mul(si.mem_unit as u64)
}

/// Checks the proposal's arguments; returns (slots, slot size).
pub fn geometry(devices: u32, min_ios: u32, max_size: u32) -> Result<(u32, usize)> {
    if devices == 0 || devices > MAX_DEVICES {
        return Err(crate::einval!(
            "devices must be 1..={MAX_DEVICES}, got {devices}"
        ));
    }
    if min_ios == 0 {
        return Err(crate::einval!("min_ios must be at least 1"));
    }
    if max_size == 0 || max_size > MAX_SIZE_LIMIT {
        return Err(crate::einval!(
            "max_size must be 1..={MAX_SIZE_LIMIT} bytes, got {max_size}"
        ));
    }
    let slots = devices
        .checked_mul(min_ios)
        .ok_or_else(|| Error::new(libc::ENOMEM, "devices x min_ios overflows"))?;
    let slot_size = (max_size as usize).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let bytes = (slots as u64).saturating_mul(slot_size as u64);
    if bytes > total_ram() {
        return Err(Error::new(
            libc::ENOMEM,
            format!("private memory of {bytes} bytes exceeds this machine's RAM"),
        ));
    }
    Ok((slots, slot_size))
}

impl Client {
    pub(super) fn check(&self, s: &Submit) -> Result<()> {
        // The regions' slice once (each look through `Small` is a branch).
        let regions: &[crate::request::RegionSpec] = &s.regions;
        let n = regions.len();
        if n == 0 {
            return Err(crate::einval!("num_regions is 0"));
        }
        if n > self.devices as usize {
            return Err(crate::einval!(
                "{n} regions, but the client was created for {} devices",
                self.devices
            ));
        }
        if s.mode.read_any && s.mode.write {
            return Err(crate::einval!("DM_IO_READ_ANY applies to reads only"));
        }
        if s.mode.read_any {
            let c0 = regions[0].count;
            if regions.iter().any(|r| r.count != c0) {
                return Err(crate::einval!(
                    "DM_IO_READ_ANY regions must all have the same count"
                ));
            }
            if c0 * 512 > self.pool.slot_size() as u64 {
                return Err(crate::einval!(
                    "DM_IO_READ_ANY regions must fit in max_size ({} bytes)",
                    self.pool.slot_size()
                ));
            }
        }
        if !s.mode.write {
            if n != 1 && !s.mode.read_any {
                return Err(crate::einval!(
                    "a read names exactly one region (or uses DM_IO_READ_ANY), got {n}"
                ));
            }
            if s.flush || s.fua {
                return Err(crate::einval!(
                    "DM_IO_FLUSH and DM_IO_FUA apply to writes only"
                ));
            }
        }
        if s.mode.return_on_timeout && (!s.mode.sync || !s.mode.write || s.mode.zero_copy) {
            return Err(crate::einval!(
                "DM_IO_RETURN_ON_TIMEOUT applies to SYNC writes without DM_IO_ZERO_COPY"
            ));
        }
        if !s.mode.sync && s.notify.is_none() {
            return Err(crate::einval!(
                "an asynchronous request needs a notify function"
            ));
        }
        let mut need = 0u64;
        for (i, r) in regions.iter().enumerate() {
            if s.mode.write && r.dev.read_only() {
                return Err(Error::new(
                    libc::EBADF,
                    format!("region {i}: device opened read-only"),
                ));
            }
            if r.count == 0 {
                if s.mode.write && s.flush {
                    continue;
                }
                return Err(crate::einval!(
                    "region {i}: count is 0 (allowed only for a DM_IO_FLUSH write)"
                ));
            }
            let end = r.sector.checked_add(r.count);
            if end.is_none_or(|e| e > r.dev.sectors()) {
                return Err(crate::einval!(
                    "region {i}: sectors {}+{} beyond the device end ({} sectors)",
                    r.sector,
                    r.count,
                    r.dev.sectors()
                ));
            }
            let lbs_sectors = (r.dev.logical_block_size() / 512) as u64;
            // Block sizes are powers of two: a mask, not two divisions.
            let misaligned = if lbs_sectors.is_power_of_two() {
                (r.sector | r.count) & (lbs_sectors - 1) != 0
            } else {
                r.sector % lbs_sectors != 0 || r.count % lbs_sectors != 0
            };
            if misaligned {
                return Err(crate::einval!(
                    "region {i}: sector {} / count {} not aligned to the device's {}-byte blocks",
                    r.sector,
                    r.count,
                    r.dev.logical_block_size()
                ));
            }
            need = need.max(r.count * 512);
        }
        if (s.mem.len() as u64) < need {
            return Err(crate::einval!(
                "memory covers {} bytes, regions need {need}",
                s.mem.len()
            ));
        }
        if s.mode.zero_copy {
            self.check_zero_copy(s)?;
        }
        Ok(())
    }

    /// `DM_IO_ZERO_COPY`: every op (a `max_size` piece of a region) must
    /// find its bytes in one segment of the caller's memory, aligned as
    /// O_DIRECT needs on its device.
    fn check_zero_copy(&self, s: &Submit) -> Result<()> {
        if s.mode.read_any {
            return Err(crate::einval!(
                "DM_IO_ZERO_COPY cannot be combined with DM_IO_READ_ANY"
            ));
        }
        let slot = self.pool.slot_size() as u64;
        for (i, r) in s.regions.iter().enumerate() {
            let align = if r.dev.direct() {
                r.dev.logical_block_size() as usize
            } else {
                1
            };
            for (off, len) in pieces(r.count * 512, slot) {
                match s.mem.span_addr(off as usize, len as usize) {
                    Some(a) if a.addr() % align == 0 => {}
                    Some(a) => {
                        let a = a.addr();
                        return Err(crate::einval!(
                            "DM_IO_ZERO_COPY: region {i}: memory at {a:#x} is not aligned \
                             to the device's {align} bytes (O_DIRECT)"
                        ));
                    }
                    None => {
                        return Err(crate::einval!(
                            "DM_IO_ZERO_COPY: region {i}: bytes {off}..{} of the memory \
                             are not contiguous (each max_size piece must be)",
                            off + len
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `s` is a read whose every op (a `max_size` piece) lands in
    /// whole library pages of one arena chunk, on an engine that reads in
    /// place ([`in_place_engine`]): it then runs in those pages, with no
    /// private memory and no copy, and a cancel detaches the pages instead
    /// of waiting ([`Mode::lib_pages`], [`lib_pages`]).
    pub(super) fn in_library_pages(&self, s: &Submit) -> bool {
        // Cheap looks first: most reads are not into library pages.
        let [r] = &*s.regions else {
            return false;
        };
        if s.mode.write
            || s.mode.read_any
            || s.mode.zero_copy
            || r.dev.remote().is_some()
            || !lib_pages::starts_in_arena(&s.mem)
            || !in_place_engine(self.engine.kind(), r)
        {
            return false;
        }
        lib_pages::eligible(
            &s.mem,
            r.count * 512,
            self.pool.slot_size() as u64,
            self.detached.load(Ordering::Relaxed),
            self.pool.bound(),
        )
    }
}

/// Whether a read of region `r` into library pages runs in them on an
/// engine of `kind`: io_uring reads them as a fixed buffer; AIO hands
/// their address to `io_submit`, which pins them, on a device opened with
/// O_DIRECT (others go to its thread pool, which reads through private
/// memory). The thread-pool engine never does.
fn in_place_engine(kind: EngineKind, r: &crate::request::RegionSpec) -> bool {
    match kind {
        EngineKind::Uring => true,
        EngineKind::Aio => r.dev.direct(),
        _ => false,
    }
}
