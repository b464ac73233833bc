//! The strip-packed product with bf16 weights on AVX512-BF16 (the
//! `avx512bf16` level), and its scalar reference.
//!
//! `vdpbf16ps` multiplies pairs of bf16 values and adds both products to an
//! f32 accumulator: 32 multiply-adds per instruction where the widening f32
//! kernel (`strips_avx512.rs`) does 16. The activations are rounded to bf16
//! (to nearest even, `vcvtne2ps2bf16`) once per call into a buffer of pairs
//! `(a[2j], a[2j + 1])`, one 32-bit value each, broadcast per pair; the
//! weights' rows `2j` and `2j + 1` of a strip are 32 contiguous bf16 in the
//! file's strip layout (row `p`'s 16 columns at `16 p`), one 512-bit load,
//! put into column pairs by one `vpermw`. An odd `k` ends with a pair whose
//! second row is zero (a masked load: a view's rows share a buffer with
//! other rows, which are never read).
//!
//! The structure is the AVX-512F kernel's: tiles of 1 row x 8 strips, 2-3
//! rows x 4 strips, and from 4 rows on row blocks of panels (pairs of each
//! tile's rows together) run as tiles of up to 6 rows x 2 strips over depth
//! blocks, the next block fetched ahead. Depth blocks start at even rows,
//! so every tile shape sums the same pairs in the same order (`j = 0..k/2`,
//! a block continuing from the partial sum in `C`): within the level the
//! results do not depend on the batch, the row blocking, the strip range or
//! the thread count. They differ from the other levels' (bf16 activations).
//!
//! [`strips_gemm_bf16dot_ref`] computes the same sums in scalar code, as the
//! Intel SDM describes `vdpbf16ps`.

use super::STRIP;
use super::strips::{Span, Strips};
use crate::tensor::bf16_to_f32 as tensor_bf16_to_f32;

/// An activation rounded to bf16 as `vcvtne2ps2bf16` rounds it: to nearest
/// even; zero and denormals to a zero of the same sign, NaN to a quiet NaN.
pub fn bf16_round_activation(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if bits & 0x7F80_0000 == 0 {
        return ((bits >> 16) & 0x8000) as u16;
    }
    crate::tensor::f32_to_bf16(x)
}

/// A bf16 input of `vdpbf16ps` (and of the AMX tile unit) as f32:
/// denormals read as zero (DAZ).
#[inline]
pub(super) fn daz(b: u16) -> f32 {
    if b & 0x7F80 == 0 {
        f32::from_bits(((b & 0x8000) as u32) << 16)
    } else {
        tensor_bf16_to_f32(b)
    }
}

/// A `vdpbf16ps` result: denormals flushed to zero (FTZ).
#[inline]
fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// The scalar reference of the `avx512bf16` level's product with bf16
/// weights (same arguments as [`strips_gemm_scalar`](super::strips_gemm_scalar)):
/// what `vdpbf16ps` computes. The activations are rounded by
/// [`bf16_round_activation`]; for each pair `j` of rows (an odd `k` padded
/// with a zero activation and a zero weight) the accumulator takes
/// `acc = fma(a[2j+1], w[2j+1], acc)`, then `acc = fma(a[2j], w[2j], acc)`
/// (the odd element first, as the Intel SDM's pseudo-code has it), from
/// zero; denormal inputs read as zero and denormal results are flushed to
/// zero, rounding to nearest even. (A product of two bf16 values is exact
/// in f32, so each step rounds once.)
///
/// # Panics
/// When a slice is too short for the sizes given (a caller bug).
#[allow(clippy::too_many_arguments)]
pub fn strips_gemm_bf16dot_ref(
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
    // (m, k) rounded to bf16, then read as the instruction reads them.
    let ab: Vec<f32> = (0..m)
        .flat_map(|i| a[i * lda..i * lda + k].iter().map(|&x| daz(bf16_round_activation(x))))
        .collect();
    for s in s0..s1 {
        let st = w.strip(s);
        let cols = span.cols(s, 1);
        for i in 0..m {
            let row = &ab[i * k..(i + 1) * k];
            for q in 0..cols {
                let mut acc = 0f32;
                for p in (0..k).step_by(2) {
                    let (a1, w1) = if p + 1 < k {
                        (row[p + 1], daz(w.at(st, p + 1, q)))
                    } else {
                        (0.0, 0.0)
                    };
                    acc = ftz(a1.mul_add(w1, acc));
                    acc = ftz(row[p].mul_add(daz(w.at(st, p, q)), acc));
                }
                c[i * ldc + (s - s0) * STRIP + q] = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use kernel::{round_rows, strips_gemm_bf16dot};

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::super::strips::{
        Ahead, FETCH_AHEAD_BYTES, Span, Strips, fetch_runs, k_block, prefetch, row_block, tile_heights,
    };
    use super::super::strips_avx512::{lanes, load_c, store};
    use super::STRIP;
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    thread_local! {
        /// Per-thread buffer of the activations rounded to bf16, `(m, k / 2)`
        /// pairs (the second of an odd `k`'s last pair zero), reused across
        /// calls.
        static PAIRS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
        /// Per-thread panels of a row block's pairs (see [`pack_pair_panels`]).
        static PAIR_PANEL: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }

    /// The `vpermw` index that puts rows `p` (words 0-15) and `p + 1` (words
    /// 16-31) of a strip into column pairs: word `2c` is row `p`'s column `c`,
    /// word `2c + 1` row `p + 1`'s.
    const PAIR_INDEX: [u16; 32] = {
        let mut x = [0u16; 32];
        let mut c = 0;
        while c < 16 {
            x[2 * c] = c as u16;
            x[2 * c + 1] = 16 + c as u16;
            c += 1;
        }
        x
    };

    /// 32 bf16 lanes from their bits (no instruction).
    #[inline(always)]
    fn as_bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 512-bit plain vector types; every bit pattern is
        // a valid value of either.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// Rows `2j` and `2j + 1` of a strip at `p` (32 bf16), as column pairs:
    /// in the paired layout (`PAIRED`) as they are, else put in pairs by
    /// one `vpermw`.
    ///
    /// # Safety
    /// 32 values readable at `p`; AVX-512F and AVX512BW.
    #[inline(always)]
    unsafe fn load_pair<const PAIRED: bool>(p: *const u16, idx: __m512i) -> __m512bh {
        // SAFETY: as the caller guarantees.
        let v = unsafe { _mm512_loadu_si512(p as *const _) };
        if PAIRED {
            as_bh(v)
        } else {
            // SAFETY: AVX512BW, as the caller guarantees.
            as_bh(unsafe { _mm512_permutexvar_epi16(idx, v) })
        }
    }

    /// Row `k - 1` of an odd `k` at `p` paired with zeros: a masked load of
    /// the row's 16 values, which reads nothing else (in the paired layout
    /// the even words of the 32 at `p`, else the 16 at `p`).
    ///
    /// # Safety
    /// 16 values (32 when `PAIRED`) at `p` inside one allocation; AVX-512F
    /// and AVX512BW.
    #[inline(always)]
    unsafe fn load_last_row<const PAIRED: bool>(p: *const u16, idx: __m512i) -> __m512bh {
        if PAIRED {
            // SAFETY: as the caller guarantees; the odd words are not accessed.
            as_bh(unsafe { _mm512_maskz_loadu_epi16(0x5555_5555, p as *const i16) })
        } else {
            // SAFETY: as the caller guarantees; lanes 16-31 are not accessed.
            let v = unsafe { _mm512_maskz_loadu_epi16(0xFFFF, p as *const i16) };
            // SAFETY: AVX512BW, as the caller guarantees.
            as_bh(unsafe { _mm512_permutexvar_epi16(idx, v) })
        }
    }

    /// One pair of activations in every 32-bit lane.
    #[inline(always)]
    fn splat(pair: u32) -> __m512bh {
        // SAFETY: AVX-512F, which every caller (a `target_feature` function
        // inlining this) has.
        as_bh(unsafe { _mm512_set1_epi32(pair as i32) })
    }

    /// Rows of `a` (`m x k`, rows `lda` apart) rounded to bf16 into `out` as
    /// `(rows, stride)` pairs (`stride >= k.div_ceil(2)`, `rows >= m`), the
    /// low half the even element; the pairs past a row's `k` values and the
    /// rows past `m` are zero (the AMX kernel's padding to whole tiles).
    ///
    /// # Safety
    /// AVX-512F, AVX512BW, AVX512-BF16; `a` holds `(m - 1) lda + k` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(in crate::backend::cpu) unsafe fn round_rows(
        m: usize,
        a: &[f32],
        lda: usize,
        k: usize,
        stride: usize,
        rows: usize,
        out: &mut Vec<u32>,
    ) {
        let kp = k.div_ceil(2);
        assert!(stride >= kp && rows >= m, "round_rows: stride or rows too small");
        out.clear();
        out.resize(rows * stride, 0);
        for i in 0..m {
            let row = &a[i * lda..i * lda + k];
            let dst = &mut out[i * stride..i * stride + kp];
            for p in (0..k).step_by(32) {
                let n = (k - p).min(32);
                // SAFETY: the masked loads read only the row's values p ..
                // p + n (lanes past the row are zero, so a last odd value
                // pairs with +0); the pointer past the row is never
                // dereferenced when its mask is empty.
                let (lo, hi) = unsafe {
                    (
                        _mm512_maskz_loadu_ps(lanes(n.min(16)), row.as_ptr().add(p)),
                        _mm512_maskz_loadu_ps(lanes(n.saturating_sub(16)), row.as_ptr().wrapping_add(p + 16)),
                    )
                };
                // SAFETY: both are 512-bit plain vector types.
                let v: __m512i = unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) };
                // SAFETY: the masked store writes pairs p / 2 .. p / 2 +
                // ceil(n / 2), inside `dst` (kp pairs).
                unsafe { _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(p / 2) as *mut i32, lanes(n.div_ceil(2)), v) };
            }
        }
    }

    /// `R` rows x `S` strips of `C = A W` from the row-major pairs `ap`
    /// (rows `kp = k.div_ceil(2)` apart): the tiles of 1-3 rows.
    ///
    /// # Safety
    /// AVX-512F, AVX512BW, AVX512-BF16 (checked sizes otherwise).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const S: usize, const PAIRED: bool>(
        ap: &[u32],
        k: usize,
        w: &Strips<'_, u16>,
        s: usize,
        c: &mut [f32],
        ldc: usize,
        cols: usize,
    ) {
        let kp = k.div_ceil(2);
        let strips: [&[u16]; S] = std::array::from_fn(|q| w.strip(s + q));
        assert!(ap.len() >= R * kp, "tile: pairs too small");
        let rows = if PAIRED { k.next_multiple_of(2) } else { k };
        assert!(
            strips.iter().all(|st| st.len() >= rows * STRIP),
            "tile: strip too small"
        );
        assert!(
            cols <= S * STRIP && c.len() >= (R - 1) * ldc + cols,
            "tile: C too small"
        );
        // SAFETY: 32 u16 in a static.
        let idx = unsafe { _mm512_loadu_si512(PAIR_INDEX.as_ptr() as *const _) };
        let mut acc = [[_mm512_setzero_ps(); S]; R];
        let app = ap.as_ptr();
        for j in 0..k / 2 {
            for (q, st) in strips.iter().enumerate() {
                // SAFETY: rows 2j + 1 < k lie in the strip (asserted).
                let wv = unsafe { load_pair::<PAIRED>(st.as_ptr().add(2 * j * STRIP), idx) };
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: i < R, j < kp, `ap` holds R kp pairs.
                    let x = splat(unsafe { *app.add(i * kp + j) });
                    acc[q] = _mm512_dpbf16_ps(acc[q], x, wv);
                }
            }
        }
        if k % 2 == 1 {
            let j = k / 2;
            for (q, st) in strips.iter().enumerate() {
                // SAFETY: row 2j = k - 1 lies in the strip, and in a paired
                // view its partner row too (asserted).
                let wv = unsafe { load_last_row::<PAIRED>(st.as_ptr().add(2 * j * STRIP), idx) };
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: as above.
                    let x = splat(unsafe { *app.add(i * kp + j) });
                    acc[q] = _mm512_dpbf16_ps(acc[q], x, wv);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (q, &v) in acc.iter().enumerate() {
                let j = q * STRIP;
                // SAFETY: row i < R and columns j .. min(cols, j + 16) lie
                // in `c` (asserted above).
                unsafe { store(c.as_mut_ptr().add(i * ldc + j), v, cols.saturating_sub(j)) };
            }
        }
    }

    /// `R` rows x `S` strips from a panel of pairs (`ceil(kl / 2) x R`, the
    /// `R` pairs of each `j` together) over one depth block of `kl` rows
    /// (odd only for the last block of an odd `k`): from zero when `first`,
    /// else from the partial sums in `C`; `ahead`: shares of the block
    /// visited next to fetch.
    ///
    /// # Safety
    /// AVX-512F, AVX512BW, AVX512-BF16 (checked sizes otherwise).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn panel_tile<const R: usize, const S: usize, const PAIRED: bool>(
        pa: &[u32],
        kl: usize,
        st: [&[u16]; S],
        c: &mut [f32],
        ldc: usize,
        cols: usize,
        first: bool,
        ahead: [Option<Ahead<u16>>; S],
    ) {
        let klp = kl.div_ceil(2);
        assert!(pa.len() >= klp * R, "panel_tile: panel too small");
        let rows = if PAIRED { kl.next_multiple_of(2) } else { kl };
        assert!(
            st.iter().all(|s| s.len() >= rows * STRIP),
            "panel_tile: strip too small"
        );
        assert!(
            cols <= S * STRIP && c.len() >= (R - 1) * ldc + cols,
            "panel_tile: C too small"
        );
        // SAFETY: 32 u16 in a static.
        let idx = unsafe { _mm512_loadu_si512(PAIR_INDEX.as_ptr() as *const _) };
        let mut acc = [[_mm512_setzero_ps(); S]; R];
        if !first {
            for (i, acc) in acc.iter_mut().enumerate() {
                for (q, v) in acc.iter_mut().enumerate() {
                    let j = q * STRIP;
                    // SAFETY: inside `c` (asserted); lanes past `cols` read as zero.
                    *v = unsafe { load_c(c.as_ptr().add(i * ldc + j), cols.saturating_sub(j)) };
                }
            }
        }
        let ap = pa.as_ptr();
        let line = 64 / std::mem::size_of::<u16>();
        // The strips' shares have the same length (same block, same tile).
        let lines = ahead.iter().flatten().map(|a| a.lines).max().unwrap_or(0);
        for (l, pairs) in fetch_runs(kl / 2, lines) {
            for a in ahead.iter().flatten() {
                prefetch(a.at.wrapping_add(l * line));
            }
            // Pair j's panel values and weights by pointers bumped each
            // pair (LLVM otherwise recomputes both offsets from j).
            let (mut a, mut wo) = (ap.wrapping_add(pairs.start * R), 2 * pairs.start * STRIP);
            for _ in pairs {
                // The S weight vectors first, then row by row one broadcast
                // for S products: S + 1 live registers beside the R S
                // accumulators (broadcasting all R rows first spilled
                // accumulators at 6 x 4).
                let wv: [__m512bh; S] = std::array::from_fn(|q| {
                    // SAFETY: wo = 32j, and rows 2j + 1 < kl lie in the
                    // strip (asserted).
                    unsafe { load_pair::<PAIRED>(st[q].as_ptr().add(wo), idx) }
                });
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: a = pa + jR with j < klp, i < R, and the
                    // panel holds klp R pairs.
                    let x = splat(unsafe { *a.add(i) });
                    for (acc, &w) in acc.iter_mut().zip(&wv) {
                        *acc = _mm512_dpbf16_ps(*acc, x, w);
                    }
                }
                a = a.wrapping_add(R);
                wo += 2 * STRIP;
            }
        }
        if kl % 2 == 1 {
            let j = kl / 2;
            for q in 0..S {
                // SAFETY: row 2j = kl - 1 lies in the strip, and in a paired
                // view its partner row too (asserted).
                let wv = unsafe { load_last_row::<PAIRED>(st[q].as_ptr().add(2 * j * STRIP), idx) };
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: as above.
                    let x = splat(unsafe { *ap.add(j * R + i) });
                    acc[q] = _mm512_dpbf16_ps(acc[q], x, wv);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (q, &v) in acc.iter().enumerate() {
                let j = q * STRIP;
                // SAFETY: inside `c` (asserted above).
                unsafe { store(c.as_mut_ptr().add(i * ldc + j), v, cols.saturating_sub(j)) };
            }
        }
    }

    /// Copies a row block's pairs (`rows x kp`, row-major) into one panel per
    /// tile: the tile at row `off` of height `h` becomes `kp x h` pairs at
    /// `off * kp`, the `h` pairs of each `j` together (as `pack_panels` does
    /// for f32).
    fn pack_pair_panels(pairs: &[u32], kp: usize, tiles: &[(usize, usize)], panel: &mut Vec<u32>) {
        let rows = tiles.last().map_or(0, |&(o, h)| o + h);
        panel.clear();
        panel.resize(rows * kp, 0);
        for &(off, h) in tiles {
            let dst = &mut panel[off * kp..(off + h) * kp];
            for i in 0..h {
                let row = &pairs[(off + i) * kp..(off + i + 1) * kp];
                for (j, &x) in row.iter().enumerate() {
                    dst[j * h + i] = x;
                }
            }
        }
    }

    /// The f32 kernels' row blocks (`row_blocks` in `strips.rs`: the same
    /// sizes, tiles and fetching ahead) over the pairs: `f(first row,
    /// tiles, panel, from_dram)` runs each block.
    fn pair_row_blocks(
        m: usize,
        pairs: &[u32],
        k: usize,
        n: usize,
        mut f: impl FnMut(usize, &[(usize, usize)], &[u32], bool),
    ) {
        let kp = k.div_ceil(2);
        PAIR_PANEL.with(|panel| {
            let mut panel = panel.borrow_mut();
            let nb = m.div_ceil(row_block(k) * 5 / 4);
            let from_dram = k * n * std::mem::size_of::<u16>() >= FETCH_AHEAD_BYTES;
            let rb = m.div_ceil(nb);
            for r0 in (0..m).step_by(rb) {
                let tiles = tile_heights((r0 + rb).min(m) - r0);
                pack_pair_panels(&pairs[r0 * kp..], kp, &tiles, &mut panel);
                f(r0, &tiles, &panel, from_dram);
            }
        });
    }

    /// [`strips_gemm`](super::super::strips_gemm) with bf16 weights on
    /// AVX512-BF16 (same arguments), in the strip layout or the paired one
    /// ([`Strips::new_paired`]): the sums of
    /// [`strips_gemm_bf16dot_ref`](super::strips_gemm_bf16dot_ref), the
    /// same bits for both layouts.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, AVX512BW and AVX512-BF16. The slices are
    /// checked (a caller bug panics).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(in super::super) unsafe fn strips_gemm_bf16dot(
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
        // SAFETY (both): this function's features.
        if w.is_paired() {
            unsafe { layout::<true>(m, a, lda, w, s0, s1, c, ldc, reverse) }
        } else {
            unsafe { layout::<false>(m, a, lda, w, s0, s1, c, ldc, reverse) }
        }
    }

    /// [`strips_gemm_bf16dot`] for one layout of the weights.
    ///
    /// # Safety
    /// As [`strips_gemm_bf16dot`]; `PAIRED` is `w.is_paired()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn layout<const PAIRED: bool>(
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
        let (k, n) = (w.k, w.n);
        PAIRS.with(|pairs| {
            let mut pairs = pairs.borrow_mut();
            // SAFETY: the features are this function's; `a` was checked.
            unsafe { round_rows(m, a, lda, k, k.div_ceil(2), m, &mut pairs) };
            let pairs = &pairs[..];
            let groups = |g: usize| span.groups(g, reverse);
            let (cols, at) = (|s, g| span.cols(s, g), |s| span.at(s));
            if m <= 3 {
                let g = if m == 1 { 8 } else { 4 };
                for (s, gs) in groups(g) {
                    let (cs, j) = (cols(s, gs), at(s));
                    let c = &mut c[j..];
                    // SAFETY (all arms): this function's features; the sizes
                    // were checked above and by each tile.
                    unsafe {
                        match (m, gs) {
                            (1, 8) => tile::<1, 8, PAIRED>(pairs, k, &w, s, c, ldc, cs),
                            (2, 4) => tile::<2, 4, PAIRED>(pairs, k, &w, s, c, ldc, cs),
                            (3, 4) => tile::<3, 4, PAIRED>(pairs, k, &w, s, c, ldc, cs),
                            _ => {
                                // The last, shorter group: one strip at a time.
                                for q in 0..gs {
                                    let (cq, cc) = (cols(s + q, 1), &mut c[q * STRIP..]);
                                    match m {
                                        1 => tile::<1, 1, PAIRED>(pairs, k, &w, s + q, cc, ldc, cq),
                                        2 => tile::<2, 1, PAIRED>(pairs, k, &w, s + q, cc, ldc, cq),
                                        _ => tile::<3, 1, PAIRED>(pairs, k, &w, s + q, cc, ldc, cq),
                                    }
                                }
                            }
                        }
                    }
                }
                return;
            }
            let kp = k.div_ceil(2);
            pair_row_blocks(m, pairs, k, n, |r0, tiles, panel, from_dram| {
                // Depth blocks of an even number of rows, so that every block
                // but an odd k's last holds whole pairs.
                let kc = k_block::<u16>(k).next_multiple_of(2);
                let mut order = groups(PANEL_STRIPS)
                    .flat_map(|(s, gs)| (0..k).step_by(kc).map(move |q0| (s, gs, q0)))
                    .peekable();
                while let Some((s, gs, q0)) = order.next() {
                    let (cs, j) = (cols(s, gs), at(s));
                    let kl = kc.min(k - q0);
                    let next = order.peek().copied().filter(|_| from_dram);
                    for (ti, &(off, h)) in tiles.iter().enumerate() {
                        let fetch = |q: usize| {
                            next.filter(|&(x, xg, _)| q < xg && x + q < w.n_strips())
                                .map(|(x, _, x0)| Ahead::new(&w, x + q, x0, kc.min(k - x0), ti, tiles.len()))
                        };
                        let pa = &panel[off * kp + q0 / 2 * h..];
                        let cr = &mut c[(r0 + off) * ldc + j..];
                        let first = q0 == 0;
                        let st = |q: usize| &w.strip(s + q)[q0 * STRIP..];
                        let t = Block {
                            pa,
                            kl,
                            c: cr,
                            ldc,
                            cols: cs,
                            first,
                        };
                        // SAFETY (all arms): this function's features; sizes
                        // checked by the tile.
                        unsafe {
                            match gs {
                                4 => t.run::<4, PAIRED>(
                                    h,
                                    [st(0), st(1), st(2), st(3)],
                                    [fetch(0), fetch(1), fetch(2), fetch(3)],
                                ),
                                3 => t.run::<3, PAIRED>(h, [st(0), st(1), st(2)], [fetch(0), fetch(1), fetch(2)]),
                                2 => t.run::<2, PAIRED>(h, [st(0), st(1)], [fetch(0), fetch(1)]),
                                _ => t.run::<1, PAIRED>(h, [st(0)], [fetch(0)]),
                            }
                        }
                    }
                }
            });
        });
    }

    /// Strips per tile of the panel path: 6 rows x 4 strips is 24
    /// accumulators, beside the 4 weight vectors, a broadcast and the
    /// `vpermw` index in the 32 registers. (On Zen 4, batch 32 x 512 x
    /// 16384 in the paired layout: 188 GFLOP/s against 150 with 2 strips.)
    const PANEL_STRIPS: usize = 4;

    /// One tile's share of a depth block: its panel `pa`, `kl` rows, its
    /// rows of `C` and their `cols` columns; `first`: start from zero.
    struct Block<'p> {
        pa: &'p [u32],
        kl: usize,
        c: &'p mut [f32],
        ldc: usize,
        cols: usize,
        first: bool,
    }

    impl Block<'_> {
        /// [`panel_tile`] of height `h` (1 to 6) over the strips `st`.
        ///
        /// # Safety
        /// AVX-512F, AVX512BW, AVX512-BF16 (checked sizes otherwise).
        #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
        unsafe fn run<const S: usize, const PAIRED: bool>(
            self,
            h: usize,
            st: [&[u16]; S],
            ah: [Option<Ahead<u16>>; S],
        ) {
            let Block {
                pa,
                kl,
                c,
                ldc,
                cols,
                first,
            } = self;
            // SAFETY (all arms): this function's features.
            unsafe {
                match h {
                    6 => panel_tile::<6, S, PAIRED>(pa, kl, st, c, ldc, cols, first, ah),
                    5 => panel_tile::<5, S, PAIRED>(pa, kl, st, c, ldc, cols, first, ah),
                    4 => panel_tile::<4, S, PAIRED>(pa, kl, st, c, ldc, cols, first, ah),
                    3 => panel_tile::<3, S, PAIRED>(pa, kl, st, c, ldc, cols, first, ah),
                    2 => panel_tile::<2, S, PAIRED>(pa, kl, st, c, ldc, cols, first, ah),
                    _ => panel_tile::<1, S, PAIRED>(pa, kl, st, c, ldc, cols, first, ah),
                }
            }
        }
    }
}
