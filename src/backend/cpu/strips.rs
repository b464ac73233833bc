//! The strip-packed weight product: weights (f32 or bf16) packed in column
//! strips at conversion, register tiles over rows of `A`, and its threaded
//! form.

/// An element type weight matrices are stored in: f32, or bfloat16 as
/// `u16` (widened exactly to f32 on load, the arithmetic f32, at every level
/// but `avx512bf16`, which multiplies bf16 weights by activations rounded to
/// bf16: see [`strips_gemm_bf16dot_ref`](super::strips_gemm_bf16dot_ref)).
pub trait WeightElem: Copy + Send + Sync + 'static {
    /// Values per 64-byte cache line.
    const LINE: usize = 64 / std::mem::size_of::<Self>();
    /// One value as f32.
    fn to_f32(self) -> f32;
    /// Eight values at `p`, as f32.
    ///
    /// # Safety
    /// `p .. p + 8` must be readable values of `Self`.
    unsafe fn load8_ptr(p: *const Self) -> wide::f32x8;
    /// This view as bfloat16 weights: `Some` for `u16` only. How the
    /// dispatcher picks the bf16 dot-product kernel for a generic `T` (once
    /// per call, nothing per element).
    fn as_bf16(w: Strips<'_, Self>) -> Option<Strips<'_, u16>> {
        let _ = w;
        None
    }
}

impl WeightElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    unsafe fn load8_ptr(p: *const f32) -> wide::f32x8 {
        // SAFETY: the caller guarantees 8 readable floats at p.
        wide::f32x8::from(unsafe { std::ptr::read_unaligned(p as *const [f32; 8]) })
    }
}

/// bfloat16.
impl WeightElem for u16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        crate::tensor::bf16_to_f32(self)
    }
    #[inline(always)]
    unsafe fn load8_ptr(p: *const u16) -> wide::f32x8 {
        // SAFETY: the caller guarantees 8 readable u16 at p.
        let h = unsafe { std::ptr::read_unaligned(p as *const [u16; 8]) };
        wide::f32x8::from(h.map(crate::tensor::bf16_to_f32))
    }
    #[inline(always)]
    fn as_bf16(w: Strips<'_, u16>) -> Option<Strips<'_, u16>> {
        Some(w)
    }
}

#[inline(always)]
pub(super) fn load8(s: &[f32]) -> wide::f32x8 {
    wide::f32x8::from(<[f32; 8]>::try_from(&s[..8]).expect("8 lanes"))
}

pub use crate::layout::{STRIP, pack_strips, unpack_strips};

use super::simd::{SimdLevel, simd_level};

/// A view of rows `r0 .. r0 + k` of a strip-packed matrix (see
/// [`pack_strips`]) with `depth` rows per strip and `n` columns: the LSTM
/// kernel `W_0` is packed over its `2P` rows, and the input and recurrent
/// products each use one half.
///
/// bf16 weights may instead be in the paired layout
/// ([`pair_strip_rows`](crate::layout::pair_strip_rows), made by
/// [`Strips::new_paired`]), which the `avx512bf16` kernel reads without a
/// shuffle; every other kernel reads such a view through the scalar
/// reference (the same bits as its own kernel, slowly).
#[derive(Debug, Clone, Copy)]
pub struct Strips<'a, T> {
    data: &'a [T],
    depth: usize,
    r0: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    paired: bool,
}

impl<'a, T: WeightElem> Strips<'a, T> {
    /// All `depth` rows of a packed `depth x n` matrix.
    ///
    /// # Panics
    /// When `data` is not `ceil(n / 16) * depth * 16` values long.
    pub fn new(data: &'a [T], depth: usize, n: usize) -> Self {
        assert_eq!(data.len(), n.div_ceil(STRIP) * depth * STRIP, "Strips: wrong length");
        Strips {
            data,
            depth,
            r0: 0,
            k: depth,
            n,
            paired: false,
        }
    }

    /// Rows `r0 .. r0 + k` of this view.
    ///
    /// # Panics
    /// When the rows are not inside the view, or `r0` is odd in a paired
    /// view (a pair of rows is one unit there).
    pub fn rows(self, r0: usize, k: usize) -> Self {
        assert!(r0 + k <= self.k, "Strips::rows out of range");
        assert!(
            !self.paired || r0.is_multiple_of(2),
            "Strips::rows: odd first row of a paired view"
        );
        Strips {
            r0: self.r0 + r0,
            k,
            ..self
        }
    }

    /// Number of strips (`ceil(n / 16)`).
    pub fn n_strips(&self) -> usize {
        self.n.div_ceil(STRIP)
    }

    /// Rows (`k`) and columns (`n`).
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Whether the view is in the paired layout ([`Strips::new_paired`]).
    pub fn is_paired(&self) -> bool {
        self.paired
    }

    /// Strip `s`: `k * 16` values. In a paired view rows `2j` and `2j + 1`
    /// are interleaved, and an odd `k`'s last row comes with the row after
    /// the view it is paired with (which the kernels never read): `(k + 1) *
    /// 16` values. (That row exists: the depth and the first row are even.)
    pub(super) fn strip(&self, s: usize) -> &'a [T] {
        let at = (s * self.depth + self.r0) * STRIP;
        let rows = if self.paired {
            self.k.next_multiple_of(2)
        } else {
            self.k
        };
        &self.data[at..at + rows * STRIP]
    }

    /// Element `(p, q)` of a strip (`strip(s)`), row `p < k`, column `q <
    /// 16`, whichever the layout.
    #[inline(always)]
    pub(super) fn at(&self, strip: &[T], p: usize, q: usize) -> T {
        if self.paired {
            strip[(p - p % 2) * STRIP + 2 * q + p % 2]
        } else {
            strip[p * STRIP + q]
        }
    }
}

impl<'a> Strips<'a, u16> {
    /// All `depth` rows of a packed `depth x n` bf16 matrix in the paired
    /// layout ([`pair_strip_rows`](crate::layout::pair_strip_rows)).
    ///
    /// # Panics
    /// When `depth` is odd or `data` is not `ceil(n / 16) * depth * 16`
    /// values long.
    pub fn new_paired(data: &'a [u16], depth: usize, n: usize) -> Self {
        assert!(depth.is_multiple_of(2), "Strips::new_paired: odd depth");
        Strips {
            paired: true,
            ..Strips::new(data, depth, n)
        }
    }
}

/// Strips `s0 .. s1` of a product, with the slices checked against them:
/// what every level's kernel starts from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    s0: usize,
    s1: usize,
    n: usize,
}

impl Span {
    /// `None` when there is nothing to compute.
    ///
    /// # Panics
    /// When a slice is too short for the sizes given (a caller bug).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check<T: WeightElem>(
        m: usize,
        a: &[f32],
        lda: usize,
        w: &Strips<'_, T>,
        s0: usize,
        s1: usize,
        c: &[f32],
        ldc: usize,
    ) -> Option<Span> {
        if m == 0 || s0 >= s1 {
            return None;
        }
        assert!(s1 <= w.n_strips(), "strips_gemm: strip range");
        assert!(a.len() >= (m - 1) * lda + w.k, "strips_gemm: A too small");
        let width = (s1 * STRIP).min(w.n) - s0 * STRIP;
        assert!(
            ldc >= width && c.len() >= (m - 1) * ldc + width,
            "strips_gemm: C too small"
        );
        Some(Span { s0, s1, n: w.n })
    }

    /// Groups `(first strip, strips)` of `g` consecutive strips (the last
    /// may be shorter), in the order asked for.
    pub(super) fn groups(self, g: usize, reverse: bool) -> impl Iterator<Item = (usize, usize)> {
        let Span { s0, s1, .. } = self;
        let ng = (s1 - s0).div_ceil(g);
        (0..ng).map(move |i| {
            let s = s0 + g * if reverse { ng - 1 - i } else { i };
            (s, g.min(s1 - s))
        })
    }

    /// Columns of the `g` strips from `s` that exist (the last strip may be
    /// padding past n).
    pub(super) fn cols(self, s: usize, g: usize) -> usize {
        ((s + g) * STRIP).min(self.n) - s * STRIP
    }

    /// Where strip `s`'s columns go in C.
    pub(super) fn at(self, s: usize) -> usize {
        (s - self.s0) * STRIP
    }
}

/// Rows of `A` per block of [`strips_gemm`]: each strip of `W` is read from
/// memory once per block, and a block of `A` (up to 512 KiB) stays in L2
/// while the strips pass over it. (The LSTM projection at batch 32 is one
/// block: its 8 MiB matrix is read once per step.)
pub(super) fn row_block(k: usize) -> usize {
    ((128 * 1024) / k.max(1)).max(6) / 6 * 6
}

/// `C = A W` over strips `s0 .. s1` of `W`: `A` is `m x k` (rows `lda`
/// apart), `C` receives columns `16 s0 .. min(16 s1, n)` of the product as
/// its columns `0 ..` (rows `ldc` apart). `reverse` visits the strips last
/// to first (the results are the same: it only changes which weights are
/// still in cache for the next call).
///
/// Every element of `C` is the fma chain of [`gemm_fma_ref`](super::gemm_fma_ref) (`p = 0..k` in
/// order from zero), so all tiles, row counts and strip ranges agree
/// bitwise. (At the `avx512bf16` level bf16 weights take the sums of
/// [`strips_gemm_bf16dot_ref`](super::strips_gemm_bf16dot_ref) instead, and
/// at `amx` the tile unit's (model
/// [`strips_gemm_amx_ref`](super::strips_gemm_amx_ref)), with the same
/// independence.) Register tiles: 1 row x 4 strips (8 accumulators) for a single
/// row, 2 or 3 rows x 2 strips; from 4 rows on, blocks of rows are copied
/// into per-tile panels (`pack_panels`) and run as tiles of up to 6 rows
/// x 1 strip (12 accumulators) over depth blocks of a strip (at most 64
/// KiB; a chain goes on from the partial sum left in `C`, the same bits),
/// the next block fetched in software while the tiles of one block run.
///
/// # Panics
/// When a slice is too short for the sizes given (a caller bug).
#[allow(clippy::too_many_arguments)]
pub fn strips_gemm<T: WeightElem>(
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
    run_strips_gemm(simd_level(), m, a, lda, w, s0, s1, c, ldc, reverse);
}

/// [`strips_gemm`] with the kernels of `level` (for benchmarks and tests
/// that compare levels in one process); an error when this CPU cannot run
/// `level`.
#[allow(clippy::too_many_arguments)]
pub fn strips_gemm_at<T: WeightElem>(
    level: SimdLevel,
    m: usize,
    a: &[f32],
    lda: usize,
    w: Strips<'_, T>,
    s0: usize,
    s1: usize,
    c: &mut [f32],
    ldc: usize,
    reverse: bool,
) -> crate::error::Result<()> {
    if !level.available() {
        return Err(crate::error::Error::Simd(format!("this CPU cannot run {level}")));
    }
    run_strips_gemm(level, m, a, lda, w, s0, s1, c, ldc, reverse);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn run_strips_gemm<T: WeightElem>(
    level: SimdLevel,
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
    super::simd::count(level);
    if w.paired && !(level.reads_paired_bf16() && T::as_bf16(w).is_some()) {
        // Only the bf16 dot-product and AMX kernels read the paired layout;
        // the model makes it only for those levels.
        return strips_gemm_scalar(m, a, lda, w, s0, s1, c, ldc);
    }
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is only chosen (or accepted by
        // `strips_gemm_at`) where the CPU has AVX-512F.
        SimdLevel::Avx512 => unsafe { super::strips_avx512::strips_gemm_avx512(m, a, lda, w, s0, s1, c, ldc, reverse) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512Bf16 => match T::as_bf16(w) {
            // SAFETY: the level is only chosen (or accepted) where the CPU
            // has AVX-512F, AVX512BW and AVX512-BF16.
            Some(wb) => unsafe { super::strips_bf16::strips_gemm_bf16dot(m, a, lda, wb, s0, s1, c, ldc, reverse) },
            // f32 weights: the avx512 kernels, the same bits as there.
            // SAFETY: AVX-512F, as above.
            None => unsafe { super::strips_avx512::strips_gemm_avx512(m, a, lda, w, s0, s1, c, ldc, reverse) },
        },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Amx => match T::as_bf16(w) {
            // SAFETY: the level is only chosen (or accepted) where
            // `amx_usable` approved this process (AVX-512F, AVX512BW and
            // AVX512-BF16 included).
            Some(wb) => unsafe { super::strips_amx::strips_gemm_amx(m, a, lda, wb, s0, s1, c, ldc, reverse) },
            // SAFETY: AVX-512F, as above.
            None => unsafe { super::strips_avx512::strips_gemm_avx512(m, a, lda, w, s0, s1, c, ldc, reverse) },
        },
        SimdLevel::Scalar => strips_gemm_scalar(m, a, lda, w, s0, s1, c, ldc),
        _ => strips_gemm_avx2(m, a, lda, w, s0, s1, c, ldc, reverse),
    }
}

/// The scalar reference of [`strips_gemm`]: each element the fma chain
/// `p = 0..k` (`f32::mul_add`), so its bits are the vector kernels'.
#[allow(clippy::too_many_arguments)]
pub fn strips_gemm_scalar<T: WeightElem>(
    m: usize,
    a: &[f32],
    lda: usize,
    w: Strips<'_, T>,
    s0: usize,
    s1: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let Some(span) = Span::check(m, a, lda, &w, s0, s1, c, ldc) else {
        return;
    };
    let k = w.k;
    for s in s0..s1 {
        let st = w.strip(s);
        let cols = span.cols(s, 1);
        for i in 0..m {
            let row = &a[i * lda..i * lda + k];
            for q in 0..cols {
                let mut acc = 0f32;
                for (p, &x) in row.iter().enumerate() {
                    acc = x.mul_add(w.at(st, p, q).to_f32(), acc);
                }
                c[i * ldc + (s - s0) * STRIP + q] = acc;
            }
        }
    }
}

/// [`strips_gemm`] on AVX2 + FMA (`wide`).
#[allow(clippy::too_many_arguments)]
fn strips_gemm_avx2<T: WeightElem>(
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
    match m {
        1..=3 => {
            let g = if m == 1 { 4 } else { 2 };
            for (s, gs) in groups(g) {
                let (cs, j) = (cols(s, gs), at(s));
                let c = &mut c[j..];
                match (m, gs) {
                    (1, 4) => tile::<1, 4, T>(a, lda, k, &w, s, c, ldc, cs),
                    (2, 2) => tile::<2, 2, T>(a, lda, k, &w, s, c, ldc, cs),
                    (3, 2) => tile::<3, 2, T>(a, lda, k, &w, s, c, ldc, cs),
                    (1, _) => {
                        for q in 0..gs {
                            let cq = cols(s + q, 1);
                            tile::<1, 1, T>(a, lda, k, &w, s + q, &mut c[q * STRIP..], ldc, cq);
                        }
                    }
                    (2, _) => tile::<2, 1, T>(a, lda, k, &w, s, c, ldc, cs),
                    _ => tile::<3, 1, T>(a, lda, k, &w, s, c, ldc, cs),
                }
            }
        }
        _ => row_blocks::<T>(m, a, lda, k, n, |r0, tiles, panel, from_dram| {
            // Depth blocks of `kc` rows: a strip's block stays in cache
            // while every tile of the row block uses it; visited strip
            // by strip, each strip's blocks in order.
            let kc = k_block::<T>(k);
            let mut order = groups(1)
                .flat_map(|(s, _)| (0..k).step_by(kc).map(move |q0| (s, q0)))
                .peekable();
            while let Some((s, q0)) = order.next() {
                let (cs, j) = (cols(s, 1), at(s));
                let kl = kc.min(k - q0);
                // The block visited next, fetched while this one's
                // tiles run (each tile a share of its cache lines).
                let next = order.peek().copied().filter(|_| from_dram);
                for (ti, &(off, h)) in tiles.iter().enumerate() {
                    let ahead = next.map(|(x, x0)| Ahead::new(&w, x, x0, kc.min(k - x0), ti, tiles.len()));
                    let pa = &panel[off * k + q0 * h..];
                    let cr = &mut c[(r0 + off) * ldc + j..];
                    let wq = &w.strip(s)[q0 * STRIP..];
                    let first = q0 == 0;
                    match h {
                        6 => panel_tile::<6, T>(pa, kl, wq, cr, ldc, cs, first, ahead),
                        5 => panel_tile::<5, T>(pa, kl, wq, cr, ldc, cs, first, ahead),
                        4 => panel_tile::<4, T>(pa, kl, wq, cr, ldc, cs, first, ahead),
                        3 => panel_tile::<3, T>(pa, kl, wq, cr, ldc, cs, first, ahead),
                        2 => panel_tile::<2, T>(pa, kl, wq, cr, ldc, cs, first, ahead),
                        _ => panel_tile::<1, T>(pa, kl, wq, cr, ldc, cs, first, ahead),
                    }
                }
            }
        }),
    }
}

/// The panel path of every level: blocks of about `row_block(k)` rows,
/// balanced so that no block is a small tail (32 rows at k = 4096 stay one
/// block instead of 30 + 2, which would read W twice), each packed into
/// this thread's panels; `f(first row, tiles, panel, from_dram)` runs the
/// block. `from_dram`: the matrix is too large to stay in cache between
/// calls, so fetching ahead pays (a 1 MiB one ran ~20% slower with it).
pub(super) fn row_blocks<T>(
    m: usize,
    a: &[f32],
    lda: usize,
    k: usize,
    n: usize,
    mut f: impl FnMut(usize, &[(usize, usize)], &[f32], bool),
) {
    PANEL.with(|panel| {
        let mut panel = panel.borrow_mut();
        let nb = m.div_ceil(row_block(k) * 5 / 4);
        let from_dram = k * n * std::mem::size_of::<T>() >= FETCH_AHEAD_BYTES;
        let rb = m.div_ceil(nb);
        for r0 in (0..m).step_by(rb) {
            let tiles = tile_heights((r0 + rb).min(m) - r0);
            pack_panels(&a[r0 * lda..], lda, k, &tiles, &mut panel);
            f(r0, &tiles, &panel, from_dram);
        }
    });
}

thread_local! {
    /// Per-thread buffer for [`pack_panels`], reused across calls.
    pub(super) static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Row tiles `(first row, height)` covering `rows` rows: height 6 (12
/// accumulators, the most that fit the 16 AVX2 registers beside the two
/// weight vectors and a broadcast), with the remainder spread so no tile is
/// shorter than 3 rows when there are more than 6 (a 1- or 2-row tile has
/// too few independent fma chains to hide the fma latency).
pub(super) fn tile_heights(rows: usize) -> Vec<(usize, usize)> {
    let (q, rem) = (rows / 6, rows % 6);
    let mut hs = vec![6; q];
    match rem {
        1 | 2 if q > 0 => {
            hs.pop();
            hs.extend([4, 2 + rem]);
        }
        0 => {}
        _ => hs.push(rem),
    }
    let mut off = 0;
    hs.into_iter()
        .map(|h| {
            off += h;
            (off - h, h)
        })
        .collect()
}

/// Copies the rows of `a` (rows `lda` apart) into `panel`, one panel per
/// tile: the tile at row `off` of height `h` becomes `k x h` values at
/// `off * k`, the `h` values of each `p` together, so the tile's broadcasts
/// read one contiguous stream instead of `h` rows far apart.
pub(super) fn pack_panels(a: &[f32], lda: usize, k: usize, tiles: &[(usize, usize)], panel: &mut Vec<f32>) {
    let rows = tiles.last().map_or(0, |&(o, h)| o + h);
    panel.clear();
    panel.resize(rows * k, 0.0);
    for &(off, h) in tiles {
        let dst = &mut panel[off * k..(off + h) * k];
        for i in 0..h {
            let row = &a[(off + i) * lda..(off + i) * lda + k];
            for (p, &x) in row.iter().enumerate() {
                dst[p * h + i] = x;
            }
        }
    }
}

/// [`strips_gemm`] over all strips of `w`, the strips shared between up to
/// `parts` rayon tasks (each computes its columns into its own buffer, then
/// they are copied into `C`): for products with few rows, where splitting
/// the rows would leave threads idle. Small products (under ~4 M
/// multiply-adds or a 1 MiB matrix) stay on the calling thread: handing
/// work to another thread costs more than it saves there. Results are the
/// same bits either way.
#[allow(clippy::too_many_arguments)]
pub fn strips_gemm_par<T: WeightElem>(
    m: usize,
    a: &[f32],
    lda: usize,
    w: Strips<'_, T>,
    c: &mut [f32],
    ldc: usize,
    parts: usize,
) {
    use rayon::prelude::*;
    let ns = w.n_strips();
    let small = w.k * w.n < (1 << 18) || m * w.k * w.n < (1 << 22);
    if parts <= 1 || ns < 2 * parts || m == 0 || small {
        strips_gemm(m, a, lda, w, 0, ns, c, ldc, false);
        return;
    }
    let n = w.n;
    let bufs: Vec<(usize, usize, Vec<f32>)> = (0..parts)
        .into_par_iter()
        .map(|t| {
            let (s0, s1) = (ns * t / parts, ns * (t + 1) / parts);
            let (j0, j1) = (s0 * STRIP, (s1 * STRIP).min(n));
            let mut buf = vec![0f32; m * (j1 - j0)];
            strips_gemm(m, a, lda, w, s0, s1, &mut buf, j1 - j0, false);
            (j0, j1, buf)
        })
        .collect();
    for (j0, j1, buf) in bufs {
        for (r, row) in buf.chunks_exact(j1 - j0).enumerate() {
            c[r * ldc + j0..r * ldc + j1].copy_from_slice(row);
        }
    }
}

/// `R` rows x `S` strips (16 S columns) of `C = A W`, the first `cols` of
/// them stored: `2 R S` accumulators, one fma chain per element.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<const R: usize, const S: usize, T: WeightElem>(
    a: &[f32],
    lda: usize,
    k: usize,
    w: &Strips<'_, T>,
    s: usize,
    c: &mut [f32],
    ldc: usize,
    cols: usize,
) {
    use wide::f32x8;
    let strips: [&[T]; S] = std::array::from_fn(|q| w.strip(s + q));
    assert!(a.len() >= (R - 1) * lda + k, "tile: A too small");
    assert!(strips.iter().all(|st| st.len() >= k * STRIP), "tile: strip too small");
    assert!(
        cols <= S * STRIP && c.len() >= (R - 1) * ldc + cols,
        "tile: C too small"
    );
    let mut acc = [[[f32x8::ZERO; 2]; S]; R];
    let ap = a.as_ptr();
    for p in 0..k {
        for (q, st) in strips.iter().enumerate() {
            // SAFETY: p < k and every strip holds at least 16k values
            // (asserted), so the 16 values at 16p lie inside it.
            let (w0, w1) = unsafe {
                let wp = st.as_ptr().add(p * STRIP);
                (T::load8_ptr(wp), T::load8_ptr(wp.add(8)))
            };
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i < R and p < k, and `a` holds lda + k values.
                let x = f32x8::splat(unsafe { *ap.add(i * lda + p) });
                acc[q][0] = x.mul_add(w0, acc[q][0]);
                acc[q][1] = x.mul_add(w1, acc[q][1]);
            }
        }
    }
    store_tile(&acc, c, ldc, cols);
}

/// Stores an `R x S`-strip tile of accumulators into `C` (rows `ldc`
/// apart), its first `cols` columns.
#[inline(always)]
fn store_tile<const R: usize, const S: usize>(
    acc: &[[[wide::f32x8; 2]; S]; R],
    c: &mut [f32],
    ldc: usize,
    cols: usize,
) {
    for (i, acc) in acc.iter().enumerate() {
        for (q, halves) in acc.iter().enumerate() {
            for (h, v) in halves.iter().enumerate() {
                let j = q * STRIP + h * 8;
                if j + 8 <= cols {
                    // Whole vector: a fixed-size store (no memcpy call).
                    let dst: &mut [f32; 8] = (&mut c[i * ldc + j..i * ldc + j + 8]).try_into().expect("8 lanes");
                    *dst = v.to_array();
                } else if j < cols {
                    let len = cols - j;
                    c[i * ldc + j..i * ldc + j + len].copy_from_slice(&v.to_array()[..len]);
                }
            }
        }
    }
}

/// The inverse of [`store_tile`]: accumulators from `C`'s first `cols`
/// columns (the rest zero), to continue their fma chains.
#[inline(always)]
fn load_tile<const R: usize, const S: usize>(acc: &mut [[[wide::f32x8; 2]; S]; R], c: &[f32], ldc: usize, cols: usize) {
    for (i, acc) in acc.iter_mut().enumerate() {
        for (q, halves) in acc.iter_mut().enumerate() {
            for (h, v) in halves.iter_mut().enumerate() {
                let j = q * STRIP + h * 8;
                let mut lanes = [0f32; 8];
                let len = cols.saturating_sub(j).min(8);
                if len > 0 {
                    lanes[..len].copy_from_slice(&c[i * ldc + j..i * ldc + j + len]);
                }
                *v = wide::f32x8::from(lanes);
            }
        }
    }
}

/// Depth rows per block of [`strips_gemm`]'s panel tiles: a strip's block
/// is at most 64 KiB, so it, the row block's panels for those rows and the
/// next block being fetched fit in L2 together; blocks of equal size. The
/// LSTM projection at batch 32 (4096 deep, 256 KiB per f32 strip) ran
/// 10-17% faster in 4 blocks than in one; 512-deep matrices are one block,
/// and smaller blocks were slower (the next block, fetched ahead, arrives
/// late).
pub(super) fn k_block<T>(k: usize) -> usize {
    let most = ((64 << 10) / (STRIP * std::mem::size_of::<T>())).max(1);
    k.div_ceil(k.div_ceil(most).max(1)).max(1)
}

/// `R` rows x 1 strip of `C = A W` from a packed panel (see
/// [`pack_panels`]: `k x R`, the `R` values of each `p` together), the first
/// `cols` columns stored. The same fma chains as [`tile`]. `first`: start
/// from zero, else from the partial sums in `C`; `ahead`: a share of the
/// block visited next to fetch meanwhile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn panel_tile<const R: usize, T: WeightElem>(
    pa: &[f32],
    k: usize,
    st: &[T],
    c: &mut [f32],
    ldc: usize,
    cols: usize,
    first: bool,
    ahead: Option<Ahead<T>>,
) {
    use wide::f32x8;
    assert!(pa.len() >= k * R, "panel_tile: panel too small");
    assert!(st.len() >= k * STRIP, "panel_tile: strip too small");
    assert!(
        cols <= STRIP && c.len() >= (R - 1) * ldc + cols,
        "panel_tile: C too small"
    );
    let mut acc = [[[f32x8::ZERO; 2]; 1]; R];
    if !first {
        load_tile(&mut acc, c, ldc, cols);
    }
    let (ap, wp) = (pa.as_ptr(), st.as_ptr());
    // One line of the share fetched per run of steps: about one new line
    // every k / lines steps.
    for (line, steps) in fetch_runs(k, ahead.as_ref().map_or(0, |a| a.lines)) {
        if let Some(a) = &ahead {
            prefetch(a.at.wrapping_add(line * T::LINE));
        }
        // Step p's panel values and weights by pointers bumped each step
        // (LLVM otherwise recomputes both offsets from p at every step).
        let (mut a, mut w) = (ap.wrapping_add(steps.start * R), wp.wrapping_add(steps.start * STRIP));
        for _ in steps {
            // SAFETY: w = st + 16p with p < k and the strip holds at least
            // 16k values (asserted), so the 16 values at w lie inside it.
            let (w0, w1) = unsafe { (T::load8_ptr(w), T::load8_ptr(w.add(8))) };
            for (i, [acc]) in acc.iter_mut().enumerate() {
                // SAFETY: a = pa + pR with p < k, i < R, and the panel
                // holds k R values.
                let x = f32x8::splat(unsafe { *a.add(i) });
                acc[0] = x.mul_add(w0, acc[0]);
                acc[1] = x.mul_add(w1, acc[1]);
            }
            a = a.wrapping_add(R);
            w = w.wrapping_add(STRIP);
        }
    }
    store_tile(&acc, c, ldc, cols);
}

/// Smallest matrix whose strips [`strips_gemm`] fetches ahead (see
/// [`Ahead`]): twice the L2 of one core.
pub(super) const FETCH_AHEAD_BYTES: usize = 2 << 20;

/// A share of the cache lines of the block visited next (the next depth
/// block of this strip, or the first of the next strip), fetched evenly
/// over a tile's loop: while the tiles of one block run (from cache), the
/// next streams in from memory instead of the first tile waiting on it (the LSTM matrices come from DRAM; the hardware prefetcher alone left
/// the batch-32 recurrent product at ~52 GFLOP/s on one core, this ~67 in
/// the same process, and W3 ~15% faster end to end). Tile `i` of `n` takes
/// lines `i L / n ..` of the `L`.
pub(super) struct Ahead<T> {
    pub(super) at: *const T,
    pub(super) lines: usize,
}

impl<T: WeightElem> Ahead<T> {
    /// Tile `i` of `n`'s share of rows `q0 .. q0 + kl` of strip `strip`.
    pub(super) fn new(w: &Strips<'_, T>, strip: usize, q0: usize, kl: usize, i: usize, n: usize) -> Self {
        let lines = (kl * STRIP).div_ceil(T::LINE);
        let share = lines.div_ceil(n).max(1);
        Ahead {
            at: w.strip(strip)[q0 * STRIP..].as_ptr().wrapping_add(i * share * T::LINE),
            lines: share,
        }
    }
}

/// The steps `0 .. k` of a tile's loop in `lines` runs of near-equal
/// length (at least one; at most `k`): run `j` starts by fetching line `j`
/// of the tile's share of the next block ([`Ahead`]), so the fetching
/// costs a few instructions per run instead of an address computed at
/// every step. On Intel's cores the integer work shares ports 0, 1, 5 and
/// 6 with the vector units (AVX-512 fmas on 0 and 5): the per-step address
/// took 10 of the 36 instructions of the `avx512` 6 x 2 tile's step, and
/// `llvm-mca -mcpu=icelake-server` gives that loop 8.5 cycles per 12 fmas
/// against 6.7 without it (6 at peak). Zen's integer pipes are its own,
/// hence no difference there. The fma chains are untouched.
#[inline(always)]
pub(super) fn fetch_runs(k: usize, lines: usize) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
    let n = lines.clamp(1, k.max(1));
    let (q, r) = (k / n, k % n);
    (0..n).map(move |j| (j, j * q + j.min(r)..(j + 1) * q + (j + 1).min(r)))
}

/// Hints the cache line at `p` into L1. Never dereferences `p`: any
/// address, even past the end of an allocation, is fine.
///
/// Inline assembly marked `nomem` rather than `_mm_prefetch`: LLVM treats
/// the intrinsic as touching memory, and in a loop that kept a register
/// tile's accumulators in memory (a store after every fma: the 6-row tile
/// ran at ~40% of its speed).
#[inline(always)]
#[allow(clippy::pointers_in_nomem_asm_block)] // a prefetch reads nothing observable
pub(super) fn prefetch<T>(p: *const T) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: prefetch is a hint: it never faults and reads nothing the
    // program can observe, whatever the address; so `nomem` holds, and it
    // touches no stack or flags.
    unsafe {
        std::arch::asm!("prefetcht0 [{p}]", p = in(reg) p, options(nomem, nostack, preserves_flags));
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}
