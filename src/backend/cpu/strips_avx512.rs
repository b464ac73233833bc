//! The strip-packed product on AVX-512F: one 512-bit register per 16-column
//! strip (AVX2 needs two), so the 32 registers hold tiles of 1 row x 8
//! strips, 2-3 rows x 4 strips, and from 4 rows on up to 6 rows x 2 strips
//! (12 accumulators, the same as AVX2's 6 x 1, over twice the columns per
//! broadcast).
//!
//! The order of every element's fma chain is [`strips_gemm`]'s (`p = 0..k`
//! from zero, depth blocks continued from the partial sum in `C`), so the
//! results are bitwise those of the AVX2 kernels; the row blocks, panels,
//! depth blocks and fetching ahead are the same.
//!
//! [`strips_gemm`]: super::strips_gemm

use super::strips::{Ahead, Span, fetch_runs, k_block, prefetch, row_blocks};
use super::{STRIP, Strips, WeightElem};
use std::arch::x86_64::*;

/// 16 weights at `p` as f32 (bf16 widened exactly: its bits are the high
/// half of an f32).
///
/// # Safety
/// 16 values of `T` must be readable at `p`, and the CPU must have
/// AVX-512F (the caller is a `target_feature` function).
#[inline(always)]
unsafe fn load16<T: WeightElem>(p: *const T) -> __m512 {
    // SAFETY: the caller guarantees 16 readable values and AVX-512F; the
    // size test picks the branch matching T (f32 or u16 bfloat16).
    unsafe {
        if std::mem::size_of::<T>() == 4 {
            _mm512_loadu_ps(p as *const f32)
        } else {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
}

/// The mask of the first `cols` (< 16) lanes.
#[inline(always)]
pub(super) fn lanes(cols: usize) -> __mmask16 {
    ((1u32 << cols.min(16)) - 1) as __mmask16
}

/// Stores accumulator `v` at `c`, its first `cols` lanes.
///
/// # Safety
/// `c .. c + min(cols, 16)` must be writable; AVX-512F.
#[inline(always)]
pub(super) unsafe fn store(c: *mut f32, v: __m512, cols: usize) {
    // SAFETY: as the caller guarantees; the masked store writes only the
    // first `cols` lanes.
    unsafe {
        if cols >= 16 {
            _mm512_storeu_ps(c, v);
        } else if cols > 0 {
            _mm512_mask_storeu_ps(c, lanes(cols), v);
        }
    }
}

/// The partial sums at `c` (first `cols` lanes, the rest zero).
///
/// # Safety
/// `c .. c + min(cols, 16)` must be readable; AVX-512F.
#[inline(always)]
pub(super) unsafe fn load_c(c: *const f32, cols: usize) -> __m512 {
    // SAFETY: as the caller guarantees; the masked load reads only the
    // first `cols` lanes.
    unsafe {
        if cols >= 16 {
            _mm512_loadu_ps(c)
        } else {
            _mm512_maskz_loadu_ps(lanes(cols), c)
        }
    }
}

/// `R` rows x `S` strips of `C = A W` straight from `A` (rows `lda`
/// apart): the tiles of 1-3 rows.
///
/// # Safety
/// AVX-512F; `a` holds `(R - 1) lda + k` values, strips `s .. s + S` of `w`
/// exist, `c` holds `(R - 1) ldc + cols` values, `cols <= 16 S`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const S: usize, T: WeightElem>(
    a: &[f32],
    lda: usize,
    k: usize,
    w: &Strips<'_, T>,
    s: usize,
    c: &mut [f32],
    ldc: usize,
    cols: usize,
) {
    let strips: [&[T]; S] = std::array::from_fn(|q| w.strip(s + q));
    assert!(a.len() >= (R - 1) * lda + k, "tile: A too small");
    assert!(strips.iter().all(|st| st.len() >= k * STRIP), "tile: strip too small");
    assert!(
        cols <= S * STRIP && c.len() >= (R - 1) * ldc + cols,
        "tile: C too small"
    );
    let mut acc = [[_mm512_setzero_ps(); S]; R];
    let ap = a.as_ptr();
    for p in 0..k {
        for (q, st) in strips.iter().enumerate() {
            // SAFETY: p < k and each strip holds 16k values (asserted).
            let wv = unsafe { load16(st.as_ptr().add(p * STRIP)) };
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i < R, p < k and `a` holds lda + k values.
                let x = _mm512_set1_ps(unsafe { *ap.add(i * lda + p) });
                acc[q] = _mm512_fmadd_ps(x, wv, acc[q]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (q, &v) in acc.iter().enumerate() {
            let j = q * STRIP;
            // SAFETY: row i < R and columns j .. min(cols, j + 16) lie in
            // `c` (asserted above).
            unsafe { store(c.as_mut_ptr().add(i * ldc + j), v, cols.saturating_sub(j)) };
        }
    }
}

/// `R` rows x `S` strips from a packed panel (`k x R`, see `pack_panels`)
/// over one depth block: from zero when `first`, else from the partial
/// sums in `C`; `ahead`: shares of the block visited next to fetch.
///
/// # Safety
/// AVX-512F; `pa` holds `k R` values, each strip in `st` at least `16 k`,
/// `c` holds `(R - 1) ldc + cols` values, `cols <= 16 S`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_tile<const R: usize, const S: usize, T: WeightElem>(
    pa: &[f32],
    k: usize,
    st: [&[T]; S],
    c: &mut [f32],
    ldc: usize,
    cols: usize,
    first: bool,
    ahead: [Option<Ahead<T>>; S],
) {
    assert!(pa.len() >= k * R, "panel_tile: panel too small");
    assert!(st.iter().all(|s| s.len() >= k * STRIP), "panel_tile: strip too small");
    assert!(
        cols <= S * STRIP && c.len() >= (R - 1) * ldc + cols,
        "panel_tile: C too small"
    );
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
    // The strips' shares have the same length (same block, same tile).
    let lines = ahead.iter().flatten().map(|a| a.lines).max().unwrap_or(0);
    for (line, steps) in fetch_runs(k, lines) {
        for a in ahead.iter().flatten() {
            prefetch(a.at.wrapping_add(line * T::LINE));
        }
        // Step p's panel values and weights by pointers bumped each step
        // (LLVM otherwise recomputes both offsets from p at every step).
        let (mut a, mut wo) = (ap.wrapping_add(steps.start * R), steps.start * STRIP);
        for _ in steps {
            for q in 0..S {
                // SAFETY: wo = 16p with p < k, and each strip holds 16k
                // values (asserted).
                let wv = unsafe { load16(st[q].as_ptr().add(wo)) };
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: a = pa + pR with p < k, i < R, and the panel
                    // holds k R values.
                    let x = _mm512_set1_ps(unsafe { *a.add(i) });
                    acc[q] = _mm512_fmadd_ps(x, wv, acc[q]);
                }
            }
            a = a.wrapping_add(R);
            wo += STRIP;
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

/// [`strips_gemm`](super::strips_gemm) on AVX-512F (same arguments, same
/// bits).
///
/// # Safety
/// The CPU must have AVX-512F. The slices are checked (a caller bug panics).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn strips_gemm_avx512<T: WeightElem>(
    m: usize,
    a: &[f32],
    lda: usize,
    w: Strips<'_, T>,
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
    let groups = |g: usize| span.groups(g, reverse);
    let (cols, at) = (|s, g| span.cols(s, g), |s| span.at(s));
    if m <= 3 {
        let g = if m == 1 { 8 } else { 4 };
        for (s, gs) in groups(g) {
            let (cs, j) = (cols(s, gs), at(s));
            let c = &mut c[j..];
            // SAFETY (all arms): AVX-512F (this function's feature); the
            // sizes were checked above and by each tile.
            unsafe {
                match (m, gs) {
                    (1, 8) => tile::<1, 8, T>(a, lda, k, &w, s, c, ldc, cs),
                    (2, 4) => tile::<2, 4, T>(a, lda, k, &w, s, c, ldc, cs),
                    (3, 4) => tile::<3, 4, T>(a, lda, k, &w, s, c, ldc, cs),
                    _ => {
                        // The last, shorter group: one strip at a time.
                        for q in 0..gs {
                            let (cq, cc) = (cols(s + q, 1), &mut c[q * STRIP..]);
                            match m {
                                1 => tile::<1, 1, T>(a, lda, k, &w, s + q, cc, ldc, cq),
                                2 => tile::<2, 1, T>(a, lda, k, &w, s + q, cc, ldc, cq),
                                _ => tile::<3, 1, T>(a, lda, k, &w, s + q, cc, ldc, cq),
                            }
                        }
                    }
                }
            }
        }
        return;
    }
    row_blocks::<T>(m, a, lda, k, n, |r0, tiles, panel, from_dram| {
        let kc = k_block::<T>(k);
        // Pairs of strips, each pair's depth blocks in order.
        let mut order = groups(2)
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
                let pa = &panel[off * k + q0 * h..];
                let cr = &mut c[(r0 + off) * ldc + j..];
                let first = q0 == 0;
                let st = |q: usize| &w.strip(s + q)[q0 * STRIP..];
                // SAFETY (all arms): AVX-512F; sizes checked by the tile.
                unsafe {
                    if gs == 2 {
                        let (st, ah) = ([st(0), st(1)], [fetch(0), fetch(1)]);
                        match h {
                            6 => panel_tile::<6, 2, T>(pa, kl, st, cr, ldc, cs, first, ah),
                            5 => panel_tile::<5, 2, T>(pa, kl, st, cr, ldc, cs, first, ah),
                            4 => panel_tile::<4, 2, T>(pa, kl, st, cr, ldc, cs, first, ah),
                            3 => panel_tile::<3, 2, T>(pa, kl, st, cr, ldc, cs, first, ah),
                            2 => panel_tile::<2, 2, T>(pa, kl, st, cr, ldc, cs, first, ah),
                            _ => panel_tile::<1, 2, T>(pa, kl, st, cr, ldc, cs, first, ah),
                        }
                    } else {
                        let (st, ah) = ([st(0)], [fetch(0)]);
                        match h {
                            6 => panel_tile::<6, 1, T>(pa, kl, st, cr, ldc, cs, first, ah),
                            5 => panel_tile::<5, 1, T>(pa, kl, st, cr, ldc, cs, first, ah),
                            4 => panel_tile::<4, 1, T>(pa, kl, st, cr, ldc, cs, first, ah),
                            3 => panel_tile::<3, 1, T>(pa, kl, st, cr, ldc, cs, first, ah),
                            2 => panel_tile::<2, 1, T>(pa, kl, st, cr, ldc, cs, first, ah),
                            _ => panel_tile::<1, 1, T>(pa, kl, st, cr, ldc, cs, first, ah),
                        }
                    }
                }
            }
        }
    });
}
