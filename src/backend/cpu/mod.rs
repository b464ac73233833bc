//! CPU kernels: the matrix product (through `matrixmultiply`) and the scalar
//! non-linearities, each with a plain reference that tests compare against.

/// `C = A B` (or `C += A B` when `accumulate`), row-major with leading
/// dimensions: `A` is `m x k` with rows `lda` apart, `B` is `k x n` with rows
/// `ldb` apart, `C` is `m x n` with rows `ldc` apart.
///
/// `lda` may be smaller than `k`: the rows of `A` then overlap, which the
/// character convolution uses to read every window of a token without
/// copying (window `p` of a `(C, E)` embedding is `E * w` contiguous floats
/// starting at `p * E`).
///
/// # Panics
/// When a slice is too short for the sizes given: that is a bug in the
/// caller, never a property of input data.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(ldc >= n, "gemm: rows of C overlap");
    gemm_strided(m, k, n, a, [lda, 1], b, [ldb, 1], c, [ldc, 1], accumulate);
}

/// The general form of [`gemm`]: every matrix has a (row, column) stride, so
/// transposed operands need no copy (`A^T` of a row-major `k x m` matrix is
/// `strides = [1, m]`). `C`'s elements must not overlap one another.
///
/// # Panics
/// When a slice is too short for its sizes and strides (a caller bug).
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    sa: [usize; 2],
    b: &[f32],
    sb: [usize; 2],
    c: &mut [f32],
    sc: [usize; 2],
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, s: [usize; 2]| (rows - 1) * s[0] + (cols - 1) * s[1];
    assert!(c.len() > last(m, n, sc), "gemm: C too small");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * sc[0] + j * sc[1]] = 0.0;
                }
            }
        }
        return;
    }
    assert!(a.len() > last(m, k, sa), "gemm: A too small");
    assert!(b.len() > last(k, n, sb), "gemm: B too small");
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: the asserts above guarantee every element matrixmultiply reads
    // (A[i*sa0 + p*sa1], B[p*sb0 + j*sb1]) or writes (C[i*sc0 + j*sc1]) for
    // i < m, p < k, j < n lies inside its slice. C is a unique borrow, so it
    // aliases neither A nor B; callers give C strides whose elements are
    // distinct (documented above). Strides index within allocated slices, so
    // they fit in isize.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            sa[0] as isize,
            sa[1] as isize,
            b.as_ptr(),
            sb[0] as isize,
            sb[1] as isize,
            beta,
            c.as_mut_ptr(),
            sc[0] as isize,
            sc[1] as isize,
        );
    }
}

/// Scalar reference of [`gemm`]: the textbook triple loop.
#[allow(clippy::too_many_arguments)]
pub fn gemm_ref(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a[i * lda + p] * b[p * ldb + j];
            }
            let dst = &mut c[i * ldc + j];
            *dst = if accumulate { *dst + s } else { s };
        }
    }
}

/// Scalar reference of [`strips_gemm`] on a row-major `W` (`k x n`, rows `n`
/// apart): each element the same fma chain, `c = fma(a[p], w[p], c)` for
/// `p = 0..k` in order from zero, so the fast kernel must match it bitwise.
#[allow(clippy::too_many_arguments)]
pub fn gemm_fma_ref<T: WeightElem>(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    w: &[T],
    c: &mut [f32],
    ldc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for p in 0..k {
                s = a[i * lda + p].mul_add(w[p * n + j].to_f32(), s);
            }
            c[i * ldc + j] = s;
        }
    }
}

/// An element type weight matrices are stored in: f32, or bfloat16 as
/// `u16` (widened exactly to f32 on load; the arithmetic is f32 either way).
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
}

#[inline(always)]
fn load8(s: &[f32]) -> wide::f32x8 {
    wide::f32x8::from(<[f32; 8]>::try_from(&s[..8]).expect("8 lanes"))
}

pub use crate::layout::{STRIP, pack_strips, unpack_strips};

/// A view of rows `r0 .. r0 + k` of a strip-packed matrix (see
/// [`pack_strips`]) with `depth` rows per strip and `n` columns: the LSTM
/// kernel `W_0` is packed over its `2P` rows, and the input and recurrent
/// products each use one half.
#[derive(Debug, Clone, Copy)]
pub struct Strips<'a, T> {
    data: &'a [T],
    depth: usize,
    r0: usize,
    k: usize,
    n: usize,
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
        }
    }

    /// Rows `r0 .. r0 + k` of this view.
    ///
    /// # Panics
    /// When the rows are not inside the view.
    pub fn rows(self, r0: usize, k: usize) -> Self {
        assert!(r0 + k <= self.k, "Strips::rows out of range");
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

    /// Strip `s`: `k * 16` values.
    fn strip(&self, s: usize) -> &'a [T] {
        let at = (s * self.depth + self.r0) * STRIP;
        &self.data[at..at + self.k * STRIP]
    }
}

/// Rows of `A` per block of [`strips_gemm`]: each strip of `W` is read from
/// memory once per block, and a block of `A` (up to 512 KiB) stays in L2
/// while the strips pass over it. (The LSTM projection at batch 32 is one
/// block: its 8 MiB matrix is read once per step.)
fn row_block(k: usize) -> usize {
    ((128 * 1024) / k.max(1)).max(6) / 6 * 6
}

/// `C = A W` over strips `s0 .. s1` of `W`: `A` is `m x k` (rows `lda`
/// apart), `C` receives columns `16 s0 .. min(16 s1, n)` of the product as
/// its columns `0 ..` (rows `ldc` apart). `reverse` visits the strips last
/// to first (the results are the same: it only changes which weights are
/// still in cache for the next call).
///
/// Every element of `C` is the fma chain of [`gemm_fma_ref`] (`p = 0..k` in
/// order from zero), so all tiles, row counts and strip ranges agree
/// bitwise. Register tiles: 1 row x 4 strips (8 accumulators) for a single
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
    let (k, n) = (w.k, w.n);
    if m == 0 || s0 >= s1 {
        return;
    }
    assert!(s1 <= w.n_strips(), "strips_gemm: strip range");
    assert!(a.len() >= (m - 1) * lda + k, "strips_gemm: A too small");
    let width = (s1 * STRIP).min(n) - s0 * STRIP;
    assert!(
        ldc >= width && c.len() >= (m - 1) * ldc + width,
        "strips_gemm: C too small"
    );
    // Groups of `g` consecutive strips, in the order asked for.
    let groups = |g: usize| {
        let ng = (s1 - s0).div_ceil(g);
        (0..ng).map(move |i| {
            let s = s0 + g * if reverse { ng - 1 - i } else { i };
            (s, g.min(s1 - s))
        })
    };
    // Columns of the group starting at strip `s` that exist (the last strip
    // may be padding past n) and where they go in C.
    let cols = |s: usize, g: usize| ((s + g) * STRIP).min(n) - s * STRIP;
    let at = |s: usize| (s - s0) * STRIP;
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
        _ => PANEL.with(|panel| {
            let mut panel = panel.borrow_mut();
            // Blocks of about `row_block(k)` rows, balanced so that no
            // block is a small tail (32 rows at k = 4096 stay one block
            // instead of 30 + 2, which would read W twice).
            let nb = m.div_ceil(row_block(k) * 5 / 4);
            // Small matrices stay in cache between calls, where fetching
            // ahead only evicts the strip in use (a 1 MiB one ran ~20%
            // slower with it).
            let from_dram = k * n * std::mem::size_of::<T>() >= FETCH_AHEAD_BYTES;
            let rb = m.div_ceil(nb);
            for r0 in (0..m).step_by(rb) {
                let r1 = (r0 + rb).min(m);
                let tiles = tile_heights(r1 - r0);
                pack_panels(&a[r0 * lda..], lda, k, &tiles, &mut panel);
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
            }
        }),
    }
}

thread_local! {
    /// Per-thread buffer for [`pack_panels`], reused across calls.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Row tiles `(first row, height)` covering `rows` rows: height 6 (12
/// accumulators, the most that fit the 16 AVX2 registers beside the two
/// weight vectors and a broadcast), with the remainder spread so no tile is
/// shorter than 3 rows when there are more than 6 (a 1- or 2-row tile has
/// too few independent fma chains to hide the fma latency).
fn tile_heights(rows: usize) -> Vec<(usize, usize)> {
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
fn pack_panels(a: &[f32], lda: usize, k: usize, tiles: &[(usize, usize)], panel: &mut Vec<f32>) {
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
fn k_block<T>(k: usize) -> usize {
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
    // Step p fetches line (p * rate) >> 16 of the share: about one new line
    // every k / lines steps, with no branch in the loop (a repeated line
    // is an L1 hit). Without a next strip, the same line over and over.
    let (next, rate) = ahead.map_or((wp, 0), |a| (a.at, (a.lines << 16) / k.max(1)));
    for p in 0..k {
        // SAFETY: p < k and the strip holds at least 16k values (asserted),
        // so the 16 values at 16p lie inside it.
        let (w0, w1) = unsafe {
            let wp = wp.add(p * STRIP);
            (T::load8_ptr(wp), T::load8_ptr(wp.add(8)))
        };
        prefetch(next.wrapping_add(((p * rate) >> 16) * T::LINE));
        for (i, [acc]) in acc.iter_mut().enumerate() {
            // SAFETY: i < R and p < k, and the panel holds k R values.
            let x = f32x8::splat(unsafe { *ap.add(p * R + i) });
            acc[0] = x.mul_add(w0, acc[0]);
            acc[1] = x.mul_add(w1, acc[1]);
        }
    }
    store_tile(&acc, c, ldc, cols);
}

/// Smallest matrix whose strips [`strips_gemm`] fetches ahead (see
/// [`Ahead`]): twice the L2 of one core.
const FETCH_AHEAD_BYTES: usize = 2 << 20;

/// A share of the cache lines of the block visited next (the next depth
/// block of this strip, or the first of the next strip), fetched evenly
/// over a tile's loop: while the tiles of one block run (from cache), the
/// next streams in from memory instead of the first tile waiting on it (the LSTM matrices come from DRAM; the hardware prefetcher alone left
/// the batch-32 recurrent product at ~52 GFLOP/s on one core, this ~67 in
/// the same process, and W3 ~15% faster end to end). Tile `i` of `n` takes
/// lines `i L / n ..` of the `L`.
struct Ahead<T> {
    at: *const T,
    lines: usize,
}

impl<T: WeightElem> Ahead<T> {
    /// Tile `i` of `n`'s share of rows `q0 .. q0 + kl` of strip `strip`.
    fn new(w: &Strips<'_, T>, strip: usize, q0: usize, kl: usize, i: usize, n: usize) -> Self {
        let lines = (kl * STRIP).div_ceil(T::LINE);
        let share = lines.div_ceil(n).max(1);
        Ahead {
            at: w.strip(strip)[q0 * STRIP..].as_ptr().wrapping_add(i * share * T::LINE),
            lines: share,
        }
    }
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
fn prefetch<T>(p: *const T) {
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

/// The logistic function `1 / (1 + exp(-x))`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Vectorised sigmoid of 8 lanes (the input is clamped to [-80, 80], where
/// f32 sigmoid is already 0 or 1 to the last bit, so `exp` stays finite).
#[inline(always)]
pub fn sigmoid8(x: wide::f32x8) -> wide::f32x8 {
    use wide::f32x8;
    let x = x.fast_max(f32x8::splat(-80.0)).fast_min(f32x8::splat(80.0));
    f32x8::ONE / (f32x8::ONE + (-x).exp())
}

/// Vectorised tanh of 8 lanes: `1 - 2 / (exp(2x) + 1)`, input clamped to
/// [-40, 40] (tanh is +-1 in f32 well before).
#[inline(always)]
pub fn tanh8(x: wide::f32x8) -> wide::f32x8 {
    use wide::f32x8;
    let x = x.fast_max(f32x8::splat(-40.0)).fast_min(f32x8::splat(40.0));
    f32x8::ONE - f32x8::splat(2.0) / ((x + x).exp() + f32x8::ONE)
}

/// One LSTM cell update for one sentence, in place: gates `z = zx + zh +
/// bias` (each `4U`, order i, j, f, o), `c = clip(sigmoid(f + 1) c +
/// sigmoid(i) tanh(j))`, `m = sigmoid(o) tanh(c)` (before the projection).
/// 8 lanes at a time with `wide`; [`lstm_cell_ref`] is the scalar reference.
pub fn lstm_cell(zx: &[f32], zh: &[f32], bias: &[f32], c: &mut [f32], m: &mut [f32], cell_clip: Option<f32>) {
    use wide::f32x8;
    let u = c.len();
    let load = |s: &[f32], o: usize| load8(&s[o..]);
    let (lo, hi) = match cell_clip {
        Some(cc) => (f32x8::splat(-cc), f32x8::splat(cc)),
        None => (f32x8::splat(f32::NEG_INFINITY), f32x8::splat(f32::INFINITY)),
    };
    let mut k = 0;
    while k + 8 <= u {
        // Not a closure: LLVM left one out of line (a call per gate).
        let (gi, gj, gf, go) = (
            gate8(zx, zh, bias, k),
            gate8(zx, zh, bias, u + k),
            gate8(zx, zh, bias, 2 * u + k),
            gate8(zx, zh, bias, 3 * u + k),
        );
        let cn = sigmoid8(gf + f32x8::ONE) * load(c, k) + sigmoid8(gi) * tanh8(gj);
        let cn = cn.fast_max(lo).fast_min(hi);
        c[k..k + 8].copy_from_slice(&cn.to_array());
        m[k..k + 8].copy_from_slice(&(sigmoid8(go) * tanh8(cn)).to_array());
        k += 8;
    }
    lstm_cell_ref_range(zx, zh, bias, c, m, cell_clip, k);
}

/// `zx + zh + bias` at 8 lanes from `o`.
#[inline(always)]
fn gate8(zx: &[f32], zh: &[f32], bias: &[f32], o: usize) -> wide::f32x8 {
    load8(&zx[o..]) + load8(&zh[o..]) + load8(&bias[o..])
}

/// Scalar reference of [`lstm_cell`].
pub fn lstm_cell_ref(zx: &[f32], zh: &[f32], bias: &[f32], c: &mut [f32], m: &mut [f32], cell_clip: Option<f32>) {
    lstm_cell_ref_range(zx, zh, bias, c, m, cell_clip, 0);
}

fn lstm_cell_ref_range(
    zx: &[f32],
    zh: &[f32],
    bias: &[f32],
    c: &mut [f32],
    m: &mut [f32],
    cc: Option<f32>,
    from: usize,
) {
    let u = c.len();
    for k in from..u {
        let g = |q: usize| zx[q * u + k] + zh[q * u + k] + bias[q * u + k];
        let cn = clip(sigmoid(g(2) + 1.0) * c[k] + sigmoid(g(0)) * g(1).tanh(), cc);
        c[k] = cn;
        m[k] = sigmoid(g(3)) * cn.tanh();
    }
}

/// Highway blend in place: `x = g t + (1 - g) x` with `g = sigmoid(carry)`,
/// `t = relu(transform)`; vectorised, scalar tail.
pub fn highway_blend(x: &mut [f32], carry: &[f32], transform: &[f32]) {
    use wide::f32x8;
    let load = |s: &[f32], o: usize| load8(&s[o..]);
    let n = x.len();
    let mut i = 0;
    while i + 8 <= n {
        let g = sigmoid8(load(carry, i));
        let t = load(transform, i).fast_max(f32x8::ZERO);
        let v = g * t + (f32x8::ONE - g) * load(x, i);
        x[i..i + 8].copy_from_slice(&v.to_array());
        i += 8;
    }
    for i in i..n {
        let g = sigmoid(carry[i]);
        x[i] = g * transform[i].max(0.0) + (1.0 - g) * x[i];
    }
}

/// Adds `bias` to every row of the `rows x bias.len()` matrix `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Clamps to `[-c, c]` when a clip is set (bilm-tf's `clip_by_value`).
#[inline]
pub fn clip(x: f32, c: Option<f32>) -> f32 {
    match c {
        Some(c) => x.clamp(-c, c),
        None => x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(n: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic values in [-1, 1).
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn gemm_matches_reference_including_strides_and_overlap() {
        for &(m, k, n, lda, ldb, ldc) in &[
            (1, 1, 1, 1, 1, 1),
            (7, 13, 5, 13, 5, 5),
            (33, 64, 70, 80, 71, 75),
            (20, 12, 9, 4, 9, 9),
        ] {
            let a = fill((m - 1) * lda + k, 1);
            let b = fill((k - 1) * ldb + n, 2);
            for acc in [false, true] {
                let mut c1 = fill((m - 1) * ldc + n, 3);
                let mut c2 = c1.clone();
                gemm(m, k, n, &a, lda, &b, ldb, &mut c1, ldc, acc);
                gemm_ref(m, k, n, &a, lda, &b, ldb, &mut c2, ldc, acc);
                let maxdiff = c1.iter().zip(&c2).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                assert!(maxdiff < 1e-4, "maxdiff {maxdiff} for {m}x{k}x{n}");
            }
        }
    }

    #[test]
    fn strips_gemm_matches_the_fma_reference_bitwise() {
        // Under Miri (an interpreter, ~1000x slower) a few small shapes still
        // take every tile kind and the padded last strip.
        let miri_shapes = [(1, 7, 40), (2, 9, 20), (3, 16, 24), (5, 20, 70), (7, 3, 17)];
        let shapes: &[(usize, usize, usize)] = &[
            (1, 1, 1),
            (1, 7, 40),
            (3, 16, 24),
            (4, 33, 17),
            (9, 64, 129),
            (32, 40, 64),
            (2, 9, 300),
            (6, 300, 530),
            (5, 20, 100),
            (14, 50, 48),
            (200, 3, 20),
            (17, 256, 1030),  // large enough for strips_gemm_par to share it
            (100, 2000, 20),  // two balanced row blocks of 50
            (13, 1100, 1030), // 4.3 MiB (bf16 2.2): strips fetched ahead
            (5, 2100, 40),    // depth blocks: 3 in f32, 2 in bf16
        ];
        for &(m, k, n) in if cfg!(miri) { &miri_shapes[..] } else { shapes } {
            let a = fill(m * k, 5);
            let w = fill(k * n, 6);
            let mut want = vec![0f32; m * n];
            gemm_fma_ref(m, k, n, &a, k, &w, &mut want, n);
            let mut textbook = vec![0f32; m * n];
            gemm_ref(m, k, n, &a, k, &w, n, &mut textbook, n, false);
            let maxdiff = want
                .iter()
                .zip(&textbook)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(maxdiff < 1e-4, "maxdiff {maxdiff} for {m}x{k}x{n}");
            // Any strip order, any strip range, rows of a deeper matrix, and
            // the column-shared variant: the same bits.
            let ns = n.div_ceil(STRIP);
            let mut deep_w = fill((k + 3) * n, 7);
            deep_w[3 * n..].copy_from_slice(&w);
            let packed = pack_strips(&deep_w, k + 3, n);
            assert_eq!(unpack_strips(&packed, k + 3, n), deep_w);
            let view = Strips::new(&packed, k + 3, n).rows(3, k);
            for reverse in [false, true] {
                let mut c = vec![0f32; m * n];
                strips_gemm(m, &a, k, view, 0, ns, &mut c, n, reverse);
                assert_eq!(c, want, "strips {m}x{k}x{n} reverse {reverse}");
            }
            let mut c = vec![0f32; m * n];
            strips_gemm_par(m, &a, k, view, &mut c, n, 3);
            assert_eq!(c, want, "shared {m}x{k}x{n}");
            let (s0, s1) = (ns / 3, ns - ns / 4);
            let (j0, j1) = (s0 * STRIP, (s1 * STRIP).min(n));
            let mut part = vec![0f32; m * (j1 - j0)];
            strips_gemm(m, &a, k, view, s0, s1, &mut part, j1 - j0, true);
            for r in 0..m {
                assert_eq!(part[r * (j1 - j0)..(r + 1) * (j1 - j0)], want[r * n + j0..r * n + j1]);
            }
            // Rows further apart than k, and overlapping rows (the char
            // CNN's windows): the same chains as the reference over that A.
            for lda in [k + 5, k.div_ceil(2)] {
                let a2 = fill((m - 1) * lda + k, 8);
                let mut want2 = vec![0f32; m * n];
                gemm_fma_ref(m, k, n, &a2, lda, &w, &mut want2, n);
                let mut c = vec![0f32; m * n];
                strips_gemm(m, &a2, lda, view, 0, ns, &mut c, n, false);
                assert_eq!(c, want2, "strips {m}x{k}x{n} lda {lda}");
            }
            // Each row alone gives the same bits as inside the batch.
            for r in 0..m {
                let mut one = vec![0f32; n];
                strips_gemm(1, &a[r * k..], k, view, 0, ns, &mut one, n, false);
                assert_eq!(one, want[r * n..(r + 1) * n], "row {r} of {m}x{k}x{n}");
            }
            // bf16 weights: widened exactly, the same fma chains.
            let wb: Vec<u16> = w.iter().map(|&x| crate::tensor::f32_to_bf16(x)).collect();
            let mut want_b = vec![0f32; m * n];
            gemm_fma_ref(m, k, n, &a, k, &wb, &mut want_b, n);
            let pb = pack_strips(&wb, k, n);
            let mut cb = vec![0f32; m * n];
            strips_gemm(m, &a, k, Strips::new(&pb, k, n), 0, ns, &mut cb, n, false);
            assert_eq!(cb, want_b, "bf16 strips {m}x{k}x{n}");
        }
        // Overlapping rows of A (lda < k), as the char convolution reads them.
        let (m, k, n, lda) = (20, 12, 9, 4);
        let a = fill((m - 1) * lda + k, 8);
        let w = fill(k * n, 9);
        let (mut want, mut c) = (vec![0f32; m * n], vec![0f32; m * n]);
        gemm_fma_ref(m, k, n, &a, lda, &w, &mut want, n);
        let pw = pack_strips(&w, k, n);
        strips_gemm(m, &a, lda, Strips::new(&pw, k, n), 0, 1, &mut c, n, false);
        assert_eq!(c, want);
    }

    #[test]
    fn vector_kernels_match_scalar_references() {
        let u = 21; // two vectors and a scalar tail
        let (zx, zh, bias) = (fill(4 * u, 1), fill(4 * u, 2), fill(4 * u, 3));
        let zx: Vec<f32> = zx.iter().map(|v| v * 6.0).collect();
        for clip in [None, Some(0.5)] {
            let (mut c1, mut m1) = (fill(u, 4), vec![0f32; u]);
            let (mut c2, mut m2) = (c1.clone(), vec![0f32; u]);
            lstm_cell(&zx, &zh, &bias, &mut c1, &mut m1, clip);
            lstm_cell_ref(&zx, &zh, &bias, &mut c2, &mut m2, clip);
            for (a, b) in c1.iter().zip(&c2).chain(m1.iter().zip(&m2)) {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
        let xs: Vec<f32> = (-800..800).map(|i| i as f32 * 0.125).collect();
        for ch in xs.chunks_exact(8) {
            let v = wide::f32x8::from(<[f32; 8]>::try_from(ch).unwrap());
            for ((s, t), &x) in sigmoid8(v).to_array().iter().zip(tanh8(v).to_array()).zip(ch) {
                assert!((s - sigmoid(x)).abs() < 2e-7, "sigmoid({x})");
                assert!((t - x.tanh()).abs() < 5e-7, "tanh({x})");
            }
        }
        let (mut x1, carry, tr) = (fill(19, 7), fill(19, 8), fill(19, 9));
        let mut x2 = x1.clone();
        highway_blend(&mut x1, &carry, &tr);
        for i in 0..19 {
            let g = sigmoid(carry[i]);
            x2[i] = g * tr[i].max(0.0) + (1.0 - g) * x2[i];
        }
        assert!(x1.iter().zip(&x2).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn sigmoid_is_accurate_and_saturates() {
        for x in [-100.0f32, -10.0, -1.0, 0.0, 0.5, 3.0, 100.0] {
            let exact = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((sigmoid(x) as f64 - exact).abs() < 1e-7);
        }
        assert_eq!(clip(5.0, Some(3.0)), 3.0);
        assert_eq!(clip(-5.0, None), -5.0);
    }
}

/// Rows `index[i]` of `x` (rows of `w` values), one after the other; empty
/// for an empty `x`.
pub(crate) fn gather_rows(x: &[f32], index: &[usize], w: usize) -> Vec<f32> {
    if x.is_empty() {
        return Vec::new();
    }
    let mut y = Vec::with_capacity(index.len() * w);
    for &i in index {
        y.extend_from_slice(&x[i * w..(i + 1) * w]);
    }
    y
}

// The product of two tensors lives with the kernels it calls, so that the
// tensor type depends on no backend.
mod tensor_product {
    use super::gemm;
    use crate::error::{Error, Result};
    use crate::tensor::Tensor;

    impl Tensor {
        /// Row-major matrix product of two 2-D tensors, `(m, k) x (k, n)`.
        pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
            let (&[m, k], &[k2, n]) = (self.shape(), rhs.shape()) else {
                return Err(Error::Shape(format!(
                    "matmul needs 2-D tensors, got {:?} and {:?}",
                    self.shape(),
                    rhs.shape()
                )));
            };
            if k != k2 {
                return Err(Error::Shape(format!(
                    "matmul {:?} x {:?}: inner sizes differ",
                    self.shape(),
                    rhs.shape()
                )));
            }
            let mut out = vec![0.0; m * n];
            gemm(m, k, n, self.data(), k, rhs.data(), n, &mut out, n, false);
            Tensor::from_vec(&[m, n], out)
        }
    }
}
