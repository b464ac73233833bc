//! The strip-packed product with bf16 weights on AMX tiles (the `amx`
//! level), its detection, and its scalar model.
//!
//! `tdpbf16ps` multiplies a 16 x 32 tile of bf16 activations by a 32 x 16
//! tile of bf16 weights into a 16 x 16 tile of f32 sums: 8192 multiply-adds
//! per instruction, where `vdpbf16ps` (`strips_bf16.rs`) does 32. The
//! weights' tile wants rows `2j` and `2j + 1` of 16 columns interleaved,
//! 64 bytes per pair of rows: that is the paired strip layout
//! ([`pair_strip_rows`](crate::layout::pair_strip_rows)), so a weight tile
//! is 1 KiB read in place from the model's matrix (rows past an odd or
//! short `k`, and views in the plain strip layout, are copied into a zeroed
//! tile first). The activations are rounded to bf16 as at `avx512bf16`
//! (`round_rows`, to nearest even) into rows of whole 32-value tiles, zero
//! past `k`; past 16 rows, to whole 16-row tiles, zero past `m`.
//!
//! Register use: C in `tmm0-3` (2 row tiles x 2 strips), A in `tmm4-5`,
//! W in `tmm6-7`; each C tile runs over all of `k` (32 values per
//! instruction, in order from zero) and is stored once. The tile rows are
//! `min(m, 16)`, so batch 1 multiplies one row, not 16.
//!
//! Results: each element is `c = 0`, then for each block of 32 values of
//! `k` in order, `c = c + (the block's 32 products)` as the AMX unit sums
//! them. The unit's sum is not a chain of f32 additions: on the Sapphire
//! Rapids Xeon measured (2026-12-02), a block sum added to `c` matched
//! [`strips_gemm_amx_ref`] (the 32 exact products and `c` summed exactly,
//! rounded once to nearest even) in 94% of the elements and was within 2
//! ulps of it otherwise; a single pair matched that rounding always. So
//! the reference is a model, not the bits: tests compare with it within a
//! bound, and compare the level with itself bitwise. Within the level the
//! results do not depend on the batch (each row's sums are its own), the
//! tile rows, the strip range or the thread count (the blocks of `k` are
//! fixed), which is what the serving work needs.
//!
//! AMX is not in Rust's stable `core::arch`: the instructions are inline
//! `asm!`, each behind a wrapper whose safety is the tile configuration
//! the kernel loads. [`amx_usable`] checks CPUID (AMX-TILE, AMX-BF16,
//! palette 1 with 8 tiles of 16 x 64 bytes), XCR0 (the OS saves the tile
//! state) and asks Linux for the tile data permission
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); where any of it
//! is missing the level is not available and `avx512bf16` is the best.

use super::strips::{Span, Strips};
use super::strips_bf16::{bf16_round_activation, daz};

/// Values of `k` per tile product (16 pairs of bf16).
pub const AMX_K_BLOCK: usize = 32;

/// Whether this process can run AMX-BF16 tiles (checked once): the CPU has
/// AMX-TILE and AMX-BF16 with 8 tiles of 16 rows x 64 bytes, the OS saves
/// the tile state (XCR0 bits 17 and 18), and Linux granted this process
/// the tile data (the first call asks). `false` elsewhere.
pub fn amx_usable() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // SAFETY (every `__cpuid_count` here): CPUID exists on every x86-64 CPU;
    // the leaves are read only up to the highest one the CPU reports.
    #[allow(unused_unsafe)]
    let max_leaf = unsafe { __cpuid_count(0, 0) }.eax;
    if max_leaf < 0x1d {
        return false;
    }
    #[allow(unused_unsafe)]
    let (l1, l7) = unsafe { (__cpuid_count(1, 0), __cpuid_count(7, 0)) };
    let (osxsave, tile, bf16) = (
        (l1.ecx >> 27) & 1 == 1,
        (l7.edx >> 24) & 1 == 1,
        (l7.edx >> 22) & 1 == 1,
    );
    if !(osxsave && tile && bf16 && super::SimdLevel::Avx512Bf16.available()) {
        return false;
    }
    // SAFETY: OSXSAVE is set, so XGETBV is enabled.
    let xcr0 = unsafe { xgetbv0() };
    if (xcr0 >> 17) & 3 != 3 {
        return false;
    }
    // Palette 1: total bytes and bytes per tile (eax), tiles (ebx high),
    // rows (ecx low).
    #[allow(unused_unsafe)]
    let p = unsafe { __cpuid_count(0x1d, 1) };
    if (p.eax >> 16) < 1024 || (p.ebx >> 16) < 8 || (p.ecx & 0xffff) < 16 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this code takes an integer and touches no
    // memory of ours; a kernel without it returns an error.
    let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    rc == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// XCR0.
///
/// # Safety
/// CPUID.1:ECX.OSXSAVE must be set.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: as the caller guarantees.
    unsafe { std::arch::x86_64::_xgetbv(0) }
}

/// The scalar model of the `amx` level's product with bf16 weights (same
/// arguments as [`strips_gemm_scalar`](super::strips_gemm_scalar)): the
/// activations rounded by [`bf16_round_activation`], denormal inputs read
/// as zero; each element from zero, then for each block of
/// [`AMX_K_BLOCK`] values of `k` in order, `c = round(c + sum of the
/// block's products)` with the sum exact (in f64, which holds 32 products
/// of bf16 values exactly unless their exponents are ~30 apart) and one
/// rounding to nearest even, a denormal result flushed to zero. The unit
/// agrees with it to a couple of ulps, not bitwise (see the module notes).
///
/// # Panics
/// When a slice is too short for the sizes given (a caller bug).
#[allow(clippy::too_many_arguments)]
pub fn strips_gemm_amx_ref(
    m: usize,
    a: &[f32],
    lda: usize,
    w: Strips<'_, u16>,
    s0: usize,
    s1: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let Some(span) = Span::check(m, a, lda, &w, s0, s1, c, ldc) else {
        return;
    };
    let k = w.k;
    let ab: Vec<f32> = (0..m)
        .flat_map(|i| a[i * lda..i * lda + k].iter().map(|&x| daz(bf16_round_activation(x))))
        .collect();
    for s in s0..s1 {
        let st = w.strip(s);
        for i in 0..m {
            let row = &ab[i * k..(i + 1) * k];
            for q in 0..span.cols(s, 1) {
                let mut acc = 0f32;
                for p0 in (0..k).step_by(AMX_K_BLOCK) {
                    let block: f64 = (p0..(p0 + AMX_K_BLOCK).min(k))
                        .map(|p| row[p] as f64 * daz(w.at(st, p, q)) as f64)
                        .sum();
                    acc = (acc as f64 + block) as f32;
                    if acc.is_subnormal() {
                        acc = f32::from_bits(acc.to_bits() & 0x8000_0000);
                    }
                }
                c[i * ldc + span.at(s) + q] = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use kernel::strips_gemm_amx;

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::super::STRIP;
    use super::super::strips::{Span, Strips};
    use super::super::strips_bf16::round_rows;
    use super::AMX_K_BLOCK;
    use std::arch::asm;
    use std::cell::RefCell;

    /// Rows of `A` per block (a multiple of 32: whole pairs of row tiles).
    const ROW_BLOCK: usize = 256;

    thread_local! {
        /// Per-thread buffer of the activations rounded to bf16, `(rows,
        /// k_tiles * 16)` pairs, reused across calls.
        static PAIRS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }

    /// The tile configuration `ldtilecfg` reads (palette 1): 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    impl TileConfig {
        /// Tiles 0-5 (C, A) of `r` rows, tiles 6-7 (W) of 16; 64 bytes a row.
        fn new(r: usize) -> Self {
            let mut t = TileConfig {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                colsb: [0; 16],
                rows: [0; 16],
            };
            for i in 0..8 {
                t.colsb[i] = 64;
                t.rows[i] = if i < 6 { r as u8 } else { 16 };
            }
            t
        }
    }

    /// A 1 KiB tile in memory: a weight tile of the padded tail or of a
    /// plain-layout view, or a C tile on its way to a partial store.
    #[repr(C, align(64))]
    struct TileBuf([u32; 256]);

    // The instructions, one wrapper each. SAFETY (all of them): the caller
    // has loaded a tile configuration (`ldtilecfg`) that defines the tiles
    // named, in a process that `amx_usable` approved, and for loads and
    // stores `p` addresses the tile's rows (`rows` x 64 bytes, `stride`
    // apart) inside live memory. The tile registers are invisible to the
    // compiler; every block is volatile, so they stay in program order.

    #[inline(always)]
    unsafe fn load_config(cfg: &TileConfig) {
        // SAFETY: a 64-byte, aligned configuration of palette 1.
        unsafe {
            asm!("ldtilecfg [{p}]", p = in(reg) cfg as *const TileConfig, options(nostack, preserves_flags, readonly))
        };
    }

    #[inline(always)]
    unsafe fn release() {
        // SAFETY: see above.
        unsafe { asm!("tilerelease", options(nostack, preserves_flags, nomem)) };
    }

    #[inline(always)]
    unsafe fn zero<const T: u8>() {
        // SAFETY: see above.
        unsafe { asm!("tilezero tmm{t}", t = const T, options(nostack, preserves_flags, nomem)) };
    }

    #[inline(always)]
    unsafe fn load<const T: u8>(p: *const u8, stride: usize) {
        // SAFETY: see above.
        unsafe {
            asm!("tileloadd tmm{t}, [{p} + {s} * 1]", t = const T, p = in(reg) p, s = in(reg) stride,
                 options(nostack, preserves_flags, readonly))
        };
    }

    #[inline(always)]
    unsafe fn store<const T: u8>(p: *mut u8, stride: usize) {
        // SAFETY: see above.
        unsafe {
            asm!("tilestored [{p} + {s} * 1], tmm{t}", t = const T, p = in(reg) p, s = in(reg) stride,
                 options(nostack, preserves_flags))
        };
    }

    #[inline(always)]
    unsafe fn dot<const C: u8, const A: u8, const B: u8>() {
        // SAFETY: see above.
        unsafe {
            asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, preserves_flags, nomem))
        };
    }

    /// What the tiles of one call share.
    struct Job<'a> {
        /// The rounded activations, rows `stride` pairs apart.
        pairs: &'a [u32],
        stride: usize,
        /// Rows per tile, and rows of `A`.
        r: usize,
        m: usize,
        /// Tile products over `k`.
        kt: usize,
        w: Strips<'a, u16>,
    }

    impl Job<'_> {
        /// Where weight tile `kb` of strip `s` is read: in place (paired
        /// layout, all 32 rows inside the view), else copied into `buf`
        /// (zero past `k`).
        fn weights(&self, s: usize, kb: usize, buf: &mut TileBuf) -> *const u8 {
            let (w, k) = (&self.w, self.w.k);
            let st = w.strip(s);
            let p0 = kb * AMX_K_BLOCK;
            if w.is_paired() && p0 + AMX_K_BLOCK <= k {
                return st[p0 * STRIP..(p0 + AMX_K_BLOCK) * STRIP].as_ptr() as *const u8;
            }
            for j in 0..AMX_K_BLOCK / 2 {
                let p = p0 + 2 * j;
                for q in 0..STRIP {
                    let lo = if p < k { w.at(st, p, q) } else { 0 };
                    let hi = if p + 1 < k { w.at(st, p + 1, q) } else { 0 };
                    buf.0[j * STRIP + q] = lo as u32 | (hi as u32) << 16;
                }
            }
            buf.0.as_ptr() as *const u8
        }
    }

    /// Stores C tile `T` (rows `i0 ..`, `cols` columns at `c`): in place
    /// when it is whole, else through `buf`.
    ///
    /// # Safety
    /// The tiles are configured; `c` holds rows `i0 .. min(m, i0 + r)` of
    /// `cols` values at `c[(i - i0) * ldc ..]`.
    #[inline(always)]
    unsafe fn put<const T: u8>(job: &Job<'_>, i0: usize, c: &mut [f32], ldc: usize, cols: usize, buf: &mut TileBuf) {
        let rows = job.r.min(job.m - i0);
        if rows == job.r && cols == STRIP {
            assert!(c.len() >= (rows - 1) * ldc + STRIP, "amx: C too small");
            // SAFETY: the tile's r rows of 64 bytes lie in `c` (asserted).
            unsafe { store::<T>(c.as_mut_ptr() as *mut u8, ldc * 4) };
        } else {
            // SAFETY: `buf` holds 16 rows of 64 bytes.
            unsafe { store::<T>(buf.0.as_mut_ptr() as *mut u8, 64) };
            for i in 0..rows {
                for q in 0..cols {
                    c[i * ldc + q] = f32::from_bits(buf.0[i * STRIP + q]);
                }
            }
        }
    }

    /// `RT` row tiles (from row `i0`) x `CT` strips (from strip `s`, `cols`
    /// columns at `c[..]`) of `C = A W`.
    ///
    /// # Safety
    /// The tiles are configured for `job.r` rows; rows `i0 .. i0 + RT r`
    /// exist in `job.pairs`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn block<const RT: usize, const CT: usize>(
        job: &Job<'_>,
        i0: usize,
        s: usize,
        c: &mut [f32],
        ldc: usize,
        cols: usize,
        bufs: &mut [TileBuf; 2],
    ) {
        let (r, stride) = (job.r, job.stride);
        assert!((i0 + RT * r) * stride <= job.pairs.len(), "amx: pairs too small");
        let a0 = job.pairs[i0 * stride..].as_ptr() as *const u8;
        let a1 = job.pairs[(i0 + (RT - 1) * r) * stride..].as_ptr() as *const u8;
        // SAFETY (every tile instruction below): the tiles are configured;
        // A tiles read `r` rows of 64 bytes at `a0`/`a1` + 64 kb, inside the
        // pairs (asserted: rows of `stride = 16 kt` pairs); W tiles read
        // 16 x 64 bytes inside the strip or a buffer (`Job::weights`).
        unsafe {
            zero::<0>();
            if CT == 2 {
                zero::<1>();
            }
            if RT == 2 {
                zero::<2>();
                if CT == 2 {
                    zero::<3>();
                }
            }
            let [b0, b1] = bufs;
            for kb in 0..job.kt {
                load::<4>(a0.add(64 * kb), stride * 4);
                load::<6>(job.weights(s, kb, b0), 64);
                dot::<0, 4, 6>();
                if RT == 2 {
                    load::<5>(a1.add(64 * kb), stride * 4);
                    dot::<2, 5, 6>();
                }
                if CT == 2 {
                    load::<7>(job.weights(s + 1, kb, b1), 64);
                    dot::<1, 4, 7>();
                    if RT == 2 {
                        dot::<3, 5, 7>();
                    }
                }
            }
            let c1 = cols.saturating_sub(STRIP);
            put::<0>(job, i0, c, ldc, cols.min(STRIP), b0);
            if CT == 2 {
                put::<1>(job, i0, &mut c[STRIP..], ldc, c1, b0);
            }
            if RT == 2 && i0 + r < job.m {
                put::<2>(job, i0 + r, &mut c[r * ldc..], ldc, cols.min(STRIP), b0);
                if CT == 2 {
                    put::<3>(job, i0 + r, &mut c[r * ldc + STRIP..], ldc, c1, b0);
                }
            }
        }
    }

    /// [`strips_gemm`](super::super::strips_gemm) with bf16 weights on AMX
    /// tiles (same arguments), in the strip layout or the paired one: the
    /// sums described in the module notes, the same bits for both layouts.
    ///
    /// # Safety
    /// [`amx_usable`](super::amx_usable) must be true (it implies AVX-512F,
    /// AVX512BW and AVX512-BF16, which the rounding uses). The slices are
    /// checked (a caller bug panics).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(in super::super) unsafe fn strips_gemm_amx(
        m: usize,
        a: &[f32],
        lda: usize,
        w: Strips<'_, u16>,
        s0: usize,
        s1: usize,
        c: &mut [f32],
        ldc: usize,
        reverse: bool,
    ) {
        let Some(span) = Span::check(m, a, lda, &w, s0, s1, c, ldc) else {
            return;
        };
        let k = w.k;
        let kt = k.div_ceil(AMX_K_BLOCK);
        let stride = kt * AMX_K_BLOCK / 2;
        let r = m.min(16);
        let rows = if m <= 16 { m } else { m.next_multiple_of(16) };
        PAIRS.with(|pairs| {
            let mut pairs = pairs.borrow_mut();
            // SAFETY: the features are this function's; `a` was checked.
            unsafe { round_rows(m, a, lda, k, stride, rows, &mut pairs) };
            let job = Job {
                pairs: &pairs[..],
                stride,
                r,
                m,
                kt,
                w,
            };
            let mut bufs = [TileBuf([0; 256]), TileBuf([0; 256])];
            let cfg = TileConfig::new(r);
            // SAFETY: a valid palette-1 configuration, in an approved process.
            unsafe { load_config(&cfg) };
            // Blocks of rows, each run over every strip: a block's
            // activations (256 KiB at k = 512) stay in L2 while the
            // weights stream past (2026-12-02, Xeon: 20-25% faster than
            // all rows at once at 640-704 rows).
            for rb0 in (0..rows).step_by(ROW_BLOCK) {
                let rb1 = (rb0 + ROW_BLOCK).min(rows);
                for (s, gs) in span.groups(2, reverse) {
                    let (cols, j) = (span.cols(s, gs), span.at(s));
                    let mut i0 = rb0;
                    while i0 < rb1 {
                        let cc = &mut c[i0 * ldc + j..];
                        // SAFETY: the tiles are configured for r rows; rows i0
                        // .. i0 + 2r (or + r) exist in the pairs.
                        unsafe {
                            match (rb1 - i0 >= 2 * r, gs == 2) {
                                (true, true) => block::<2, 2>(&job, i0, s, cc, ldc, cols, &mut bufs),
                                (true, false) => block::<2, 1>(&job, i0, s, cc, ldc, cols, &mut bufs),
                                (false, true) => block::<1, 2>(&job, i0, s, cc, ldc, cols, &mut bufs),
                                (false, false) => block::<1, 1>(&job, i0, s, cc, ldc, cols, &mut bufs),
                            }
                        }
                        i0 += if rb1 - i0 >= 2 * r { 2 * r } else { r };
                    }
                }
            }
            // SAFETY: the tile state this call configured.
            unsafe { release() };
        });
    }
}
