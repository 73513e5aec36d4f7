//! The bounce copy: bytes between the caller's memory and private memory.
//!
//! On x86_64, copies from 1 KiB up use a plain loop of 32-byte (AVX2, when
//! the CPU has it) or 16-byte (SSE2, always there) unaligned loads and
//! stores, because glibc's `memcpy` switches to `rep movsb` at that size,
//! which some CPUs run slowly on data a device has just written (see
//! `bench/HISTORY.md`); smaller copies and other architectures use
//! `copy_nonoverlapping`.

/// Copies of at least this many bytes use the vector loop (x86_64).
#[cfg(target_arch = "x86_64")]
const LOOP_FROM: usize = 1024;

/// Copies `n` bytes from `src` to `dst`.
///
/// # Safety
/// `src..src+n` must be readable, `dst..dst+n` writable, and the two must
/// not overlap (as for `std::ptr::copy_nonoverlapping`).
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if n >= LOOP_FROM {
        // SAFETY: the caller's contract is passed on unchanged; the AVX2
        // loop runs only on a CPU that has AVX2.
        unsafe {
            if std::arch::is_x86_feature_detected!("avx2") {
                x86::copy_avx2(dst, src, n)
            } else {
                x86::copy_sse2(dst, src, n)
            }
        }
        return;
    }
    // SAFETY: the caller's contract is exactly `copy_nonoverlapping`'s.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, n) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_loadu_si256, _mm256_storeu_si256, _mm_loadu_si128,
        _mm_storeu_si128,
    };

    /// Copies 32 bytes × the number of names given: every load first, then
    /// every store (the values stay in registers; an array here would be
    /// turned back into a `memcpy` call by the compiler).
    macro_rules! block {
        ($dst:expr, $src:expr, $($r:ident $j:literal)+) => {{
            let s = $src as *const __m256i;
            let d = $dst as *mut __m256i;
            $(let $r = _mm256_loadu_si256(s.add($j));)+
            $(_mm256_storeu_si256(d.add($j), $r);)+
        }};
    }

    /// Exactly one page (4 KiB): eight 512-byte blocks straight through.
    /// Other lengths: 1 KiB per turn (twice sixteen 32-byte loads, then
    /// sixteen stores; 128 bytes per turn took about 1.5x the instructions
    /// and 512 bytes about 1.1x), then 512, 256 and 128 bytes once each if
    /// that much is left, then the tail with `copy_nonoverlapping` (not
    /// called when nothing is left).
    ///
    /// # Safety
    /// As for [`super::copy`], and the CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn copy_avx2(dst: *mut u8, src: *const u8, n: usize) {
        if n == 4096 {
            // One page, the usual copy (a 4 KiB read or write): eight
            // 512-byte blocks straight through, no loop and no tail
            // checks (about 260 instructions instead of 295).
            macro_rules! half_kib {
                ($($k:literal)+) => {$(
                    // SAFETY: `n == 4096` and `$k < 8`: the 512 bytes at
                    // `$k * 512` lie in both ranges.
                    unsafe {
                        block!(dst.add($k * 512), src.add($k * 512),
                            r0 0 r1 1 r2 2 r3 3 r4 4 r5 5 r6 6 r7 7
                            r8 8 r9 9 r10 10 r11 11 r12 12 r13 13 r14 14 r15 15)
                    };
                )+};
            }
            half_kib!(0 1 2 3 4 5 6 7);
            return;
        }
        let mut i = 0;
        while i + 1024 <= n {
            // SAFETY: `i + 1024 <= n`: both 1 KiB ranges lie in the
            // caller's ranges.
            unsafe {
                block!(dst.add(i), src.add(i),
                    r0 0 r1 1 r2 2 r3 3 r4 4 r5 5 r6 6 r7 7
                    r8 8 r9 9 r10 10 r11 11 r12 12 r13 13 r14 14 r15 15);
                block!(dst.add(i), src.add(i),
                    r0 16 r1 17 r2 18 r3 19 r4 20 r5 21 r6 22 r7 23
                    r8 24 r9 25 r10 26 r11 27 r12 28 r13 29 r14 30 r15 31)
            };
            i += 1024;
        }
        if i + 512 <= n {
            // SAFETY: `i + 512 <= n`, as above.
            unsafe {
                block!(dst.add(i), src.add(i),
                    r0 0 r1 1 r2 2 r3 3 r4 4 r5 5 r6 6 r7 7
                    r8 8 r9 9 r10 10 r11 11 r12 12 r13 13 r14 14 r15 15)
            };
            i += 512;
        }
        if i + 256 <= n {
            // SAFETY: `i + 256 <= n`, as above.
            unsafe { block!(dst.add(i), src.add(i), r0 0 r1 1 r2 2 r3 3 r4 4 r5 5 r6 6 r7 7) };
            i += 256;
        }
        if i + 128 <= n {
            // SAFETY: `i + 128 <= n`, as above.
            unsafe { block!(dst.add(i), src.add(i), r0 0 r1 1 r2 2 r3 3) };
            i += 128;
        }
        if i < n {
            // SAFETY: `i < n`: the rest lies in both ranges.
            unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), n - i) }
        }
    }

    /// The same with 16-byte SSE2 loads and stores (every x86_64 CPU).
    ///
    /// # Safety
    /// As for [`super::copy`].
    pub(super) unsafe fn copy_sse2(dst: *mut u8, src: *const u8, n: usize) {
        let mut i = 0;
        while i + 64 <= n {
            // SAFETY: as in `copy_avx2`, for four 16-byte loads and stores.
            unsafe {
                let s = src.add(i) as *const __m128i;
                let d = dst.add(i) as *mut __m128i;
                let a = _mm_loadu_si128(s);
                let b = _mm_loadu_si128(s.add(1));
                let c = _mm_loadu_si128(s.add(2));
                let e = _mm_loadu_si128(s.add(3));
                _mm_storeu_si128(d, a);
                _mm_storeu_si128(d.add(1), b);
                _mm_storeu_si128(d.add(2), c);
                _mm_storeu_si128(d.add(3), e);
            }
            i += 64;
        }
        // SAFETY: `i <= n`: the rest lies in both ranges.
        unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), n - i) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the loop's thresholds and strides, at odd
    /// offsets on both sides, copies exactly and touches nothing else.
    #[test]
    fn copies_exactly_at_every_length_and_offset() {
        let src: Vec<u8> = (0..9000u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in (0..300).chain(1000..1200).chain([
            1280, 1408, 1536, 1664, 1792, 1920, 4096, 4097, 4224, 4736, 8191, 8192,
        ]) {
            for (so, doff) in [(0, 0), (1, 3), (5, 0), (0, 17)] {
                let mut dst = vec![0xEEu8; n + 64];
                // SAFETY: `src[so..so+n]` and `dst[doff..doff+n]` are in
                // bounds (n + 17 < 9000 and dst has 64 spare bytes) and
                // are different allocations.
                unsafe { copy(dst.as_mut_ptr().add(doff), src.as_ptr().add(so), n) };
                assert_eq!(
                    &dst[doff..doff + n],
                    &src[so..so + n],
                    "n={n} so={so} doff={doff}"
                );
                assert!(
                    dst[..doff].iter().all(|&b| b == 0xEE),
                    "wrote before, n={n}"
                );
                assert!(
                    dst[doff + n..].iter().all(|&b| b == 0xEE),
                    "wrote after, n={n}"
                );
            }
        }
    }

    /// The SSE2 loop (used on CPUs without AVX2) is tested here too.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_sse2_loop_copies_exactly() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 13 + 1) as u8).collect();
        for n in [0, 1, 63, 64, 65, 1024, 1100, 4096, 4999] {
            let mut dst = vec![0u8; n + 1];
            // SAFETY: both ranges are in bounds of distinct allocations.
            unsafe { x86::copy_sse2(dst.as_mut_ptr().add(1), src.as_ptr(), n) };
            assert_eq!(&dst[1..], &src[..n]);
            assert_eq!(dst[0], 0);
        }
    }
}
