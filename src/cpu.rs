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

/// Rows per register tile of [`gemm_rows`].
const MR: usize = 4;

/// `C = A W` for the recurrent products of the LSTM: `A` is `m x k` (rows
/// `lda` apart), `W` is `k x n` row-major (rows `n` apart), `C` is `m x n`
/// (rows `ldc` apart), overwritten.
///
/// Every element of `C` is the same sequence of fused multiply-adds,
/// `c = fma(a[p], w[p], c)` for `p = 0..k` in order, whichever path computes
/// it, so a sentence's result does not depend on its batch, bitwise. Two
/// paths, both with `wide::f32x8`:
/// * up to 16 rows (latency): `W` is streamed, row after row, into the rows
///   of `C`, once per group of 4 rows (no packing: at batch 1 a step must
///   read the 32 MiB recurrent matrix once, not copy it; up to 16 rows,
///   re-reading `W` costs less than packing it: W1 ~10 % faster);
/// * more rows (throughput): a panel of `W` (at most 512 KiB) is packed into
///   16-column strips, then register tiles of 4 rows x 16 columns run over it.
///
/// # Panics
/// When a slice is too short for the sizes given (a caller bug).
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows<T: WeightElem>(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    w: &[T],
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // (lda < k is allowed: overlapping rows, as the char convolution uses.)
    assert!(a.len() >= (m - 1) * lda + k, "gemm_rows: A too small");
    assert!(w.len() >= k * n, "gemm_rows: W too small");
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "gemm_rows: C too small");
    if m <= 4 * MR {
        // Few rows: stream W once per group of up to 4 rows; cheaper than
        // packing a panel of W for so few rows.
        let mut r = 0;
        while r < m {
            let (ar, cr) = (&a[r * lda..], &mut c[r * ldc..]);
            match (m - r).min(MR) {
                4 => stream_rows::<4, T>(ar, lda, k, n, w, cr, ldc),
                3 => stream_rows::<3, T>(ar, lda, k, n, w, cr, ldc),
                2 => stream_rows::<2, T>(ar, lda, k, n, w, cr, ldc),
                _ => stream_rows::<1, T>(ar, lda, k, n, w, cr, ldc),
            }
            r += MR;
        }
    } else {
        packed_rows(m, k, n, a, lda, w, c, ldc);
    }
}

/// An element type weight matrices are stored in: f32, or bfloat16 as
/// `u16` (widened exactly to f32 on load; the arithmetic is f32 either way).
pub trait WeightElem: Copy + Send + Sync + 'static {
    /// Eight values from the start of `s`, as f32.
    fn load8(s: &[Self]) -> wide::f32x8;
    /// One value as f32.
    fn to_f32(self) -> f32;
}

impl WeightElem for f32 {
    #[inline(always)]
    fn load8(s: &[f32]) -> wide::f32x8 {
        load8(s)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// bfloat16.
impl WeightElem for u16 {
    #[inline(always)]
    fn load8(s: &[u16]) -> wide::f32x8 {
        let h: [u16; 8] = s[..8].try_into().expect("8 lanes");
        wide::f32x8::from(h.map(crate::tensor::bf16_to_f32))
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        crate::tensor::bf16_to_f32(self)
    }
}

fn load8(s: &[f32]) -> wide::f32x8 {
    wide::f32x8::from(<[f32; 8]>::try_from(&s[..8]).expect("8 lanes"))
}

/// The small-batch path of [`gemm_rows`] for `R` rows: for each row `p` of
/// `W`, `C[i, :] += a[i, p] W[p, :]` over the whole row, so `W` is read as one
/// sequential stream (what hardware prefetchers follow best); `C`'s rows
/// (64 KiB each for the real model) stay in L2 between rows of `W`.
fn stream_rows<const R: usize, T: WeightElem>(
    a: &[f32],
    lda: usize,
    k: usize,
    n: usize,
    w: &[T],
    c: &mut [f32],
    ldc: usize,
) {
    use wide::f32x8;
    let vecs = n / 8;
    for i in 0..R {
        c[i * ldc..i * ldc + n].fill(0.0);
    }
    // Four rows of W per pass over C: four sequential streams, and C is read
    // and written a quarter as often; the fma order per element is still p.
    let mut p = 0;
    while p + 4 <= k {
        let rows: [&[T]; 4] = std::array::from_fn(|q| &w[(p + q) * n..(p + q) * n + vecs * 8]);
        for i in 0..R {
            let x: [f32x8; 4] = std::array::from_fn(|q| f32x8::splat(a[i * lda + p + q]));
            let ci = &mut c[i * ldc..i * ldc + vecs * 8];
            for (v, cv) in ci.chunks_exact_mut(8).enumerate() {
                let o = v * 8;
                let mut r = x[0].mul_add(T::load8(&rows[0][o..]), load8(cv));
                r = x[1].mul_add(T::load8(&rows[1][o..]), r);
                r = x[2].mul_add(T::load8(&rows[2][o..]), r);
                r = x[3].mul_add(T::load8(&rows[3][o..]), r);
                cv.copy_from_slice(&r.to_array());
            }
        }
        p += 4;
    }
    for p in p..k {
        let row = &w[p * n..p * n + vecs * 8];
        for i in 0..R {
            let x = f32x8::splat(a[i * lda + p]);
            let ci = &mut c[i * ldc..i * ldc + vecs * 8];
            for (cv, wv) in ci.chunks_exact_mut(8).zip(row.chunks_exact(8)) {
                let r = x.mul_add(T::load8(wv), load8(cv));
                cv.copy_from_slice(&r.to_array());
            }
        }
    }
    // Columns past the last full vector: the same fma sequence, scalar.
    for j in vecs * 8..n {
        for i in 0..R {
            let mut s = 0f32;
            for p in 0..k {
                s = a[i * lda + p].mul_add(w[p * n + j].to_f32(), s);
            }
            c[i * ldc + j] = s;
        }
    }
}

thread_local! {
    /// Packing buffer of [`packed_rows`], reused across calls on a thread.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The large-batch path of [`gemm_rows`].
#[allow(clippy::too_many_arguments)]
fn packed_rows<T: WeightElem>(m: usize, k: usize, n: usize, a: &[f32], lda: usize, w: &[T], c: &mut [f32], ldc: usize) {
    // Panel width: 16-column strips, at most 512 KiB of W per panel.
    let strips_per_panel = ((128 * 1024) / (16 * k.max(1))).max(1);
    let full = n / 16;
    PANEL.with(|panel| {
        let mut panel = panel.borrow_mut();
        let mut s0 = 0;
        while s0 < full {
            let ns = strips_per_panel.min(full - s0);
            panel.resize(ns * k * 16, 0.0);
            // Row after row of W (contiguous reads), into 16-column strips.
            for p in 0..k {
                let row = &w[p * n + s0 * 16..p * n + (s0 + ns) * 16];
                for (s, src) in row.chunks_exact(16).enumerate() {
                    for (d, &v) in panel[(s * k + p) * 16..(s * k + p + 1) * 16].iter_mut().zip(src) {
                        *d = v.to_f32();
                    }
                }
            }
            strips_product(m, k, a, lda, &panel[..ns * k * 16], s0 * 16, c, ldc);
            s0 += ns;
        }
    });
    let j0 = full * 16;
    if j0 < n {
        let rest = n - j0;
        let mut cols = vec![0f32; k * rest];
        for p in 0..k {
            for (d, &v) in cols[p * rest..(p + 1) * rest]
                .iter_mut()
                .zip(&w[p * n + j0..(p + 1) * n])
            {
                *d = v.to_f32();
            }
        }
        tail_product(m, k, rest, a, lda, &cols, j0, c, ldc);
    }
}

/// Products with consecutive 16-column strips (`k x 16` each, contiguous)
/// whose first column is `j0`: 6 x 16 register tiles (12 accumulators + 2 W
/// vectors + 1 broadcast of the 16 AVX2 registers).
#[allow(clippy::too_many_arguments)]
fn strips_product(m: usize, k: usize, a: &[f32], lda: usize, strips: &[f32], j0: usize, c: &mut [f32], ldc: usize) {
    for (s, strip) in strips.chunks_exact(k * 16).enumerate() {
        let j = j0 + s * 16;
        let mut r = 0;
        while r < m {
            let mr = 6.min(m - r);
            let (ar, cr) = (&a[r * lda..], &mut c[r * ldc + j..]);
            match mr {
                6 => tile16::<6>(ar, lda, k, strip, cr, ldc),
                5 => tile16::<5>(ar, lda, k, strip, cr, ldc),
                4 => tile16::<4>(ar, lda, k, strip, cr, ldc),
                3 => tile16::<3>(ar, lda, k, strip, cr, ldc),
                2 => tile16::<2>(ar, lda, k, strip, cr, ldc),
                _ => tile16::<1>(ar, lda, k, strip, cr, ldc),
            }
            r += mr;
        }
    }
}

/// Columns `j0..j0 + rest` (fewer than 16, given row-major as `cols`,
/// `k x rest`): the streaming kernel, one row at a time.
#[allow(clippy::too_many_arguments)]
fn tail_product(
    m: usize,
    k: usize,
    rest: usize,
    a: &[f32],
    lda: usize,
    cols: &[f32],
    j0: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let mut out = vec![0f32; rest];
    for r in 0..m {
        stream_rows::<1, f32>(&a[r * lda..], lda, k, rest, cols, &mut out, rest);
        c[r * ldc + j0..r * ldc + j0 + rest].copy_from_slice(&out);
    }
}

/// A `k x n` matrix packed once into 16-column strips (and its last `n % 16`
/// columns row-major), for many products with it: an LSTM layer packs its
/// recurrent and projection matrices once per batch instead of once per step.
#[derive(Debug, Clone)]
pub struct PackedW {
    k: usize,
    n: usize,
    strips: Vec<f32>,
    tail: Vec<f32>,
}

impl PackedW {
    /// Packs `w` (`k x n`, row-major; f32 or bf16, widened to f32).
    pub fn new<T: WeightElem>(w: &[T], k: usize, n: usize) -> Self {
        assert!(w.len() >= k * n, "PackedW: W too small");
        let full = n / 16;
        let mut strips = vec![0f32; full * k * 16];
        for p in 0..k {
            for (s, src) in w[p * n..p * n + full * 16].chunks_exact(16).enumerate() {
                for (d, &v) in strips[(s * k + p) * 16..(s * k + p + 1) * 16].iter_mut().zip(src) {
                    *d = v.to_f32();
                }
            }
        }
        let rest = n - full * 16;
        let mut tail = vec![0f32; k * rest];
        for p in 0..k {
            for (d, &v) in tail[p * rest..(p + 1) * rest]
                .iter_mut()
                .zip(&w[p * n + full * 16..(p + 1) * n])
            {
                *d = v.to_f32();
            }
        }
        PackedW { k, n, strips, tail }
    }

    /// `C = A W` for `m` rows, bitwise equal to [`gemm_rows`] with the
    /// unpacked `W`.
    pub fn product(&self, m: usize, a: &[f32], lda: usize, c: &mut [f32], ldc: usize) {
        let (k, n) = (self.k, self.n);
        if m == 0 || n == 0 {
            return;
        }
        assert!(a.len() >= (m - 1) * lda + k, "PackedW: A too small");
        assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "PackedW: C too small");
        strips_product(m, k, a, lda, &self.strips, 0, c, ldc);
        let full = n / 16;
        if full * 16 < n {
            tail_product(m, k, n - full * 16, a, lda, &self.tail, full * 16, c, ldc);
        }
    }
}

/// `R` rows x 16 columns over a packed strip (`k` rows of 16, contiguous).
#[inline(always)]
fn tile16<const R: usize>(a: &[f32], lda: usize, k: usize, strip: &[f32], c: &mut [f32], ldc: usize) {
    use wide::f32x8;
    assert!(
        R >= 1 && a.len() >= (R - 1) * lda + k && strip.len() >= k * 16,
        "tile16: operands too small"
    );
    assert!(c.len() >= (R - 1) * ldc + 16, "tile16: C too small");
    let mut acc = [[f32x8::ZERO; 2]; R];
    let ap = a.as_ptr();
    let wp = strip.as_ptr();
    for p in 0..k {
        // SAFETY: p < k, so the 16 floats at wp + 16p lie in `strip` (length
        // >= 16k, asserted) and a[i * lda + p] for i < R lies in `a` (length
        // >= (R-1) lda + k, asserted). Unaligned reads of plain f32 data.
        let (w0, w1) = unsafe {
            let w = wp.add(p * 16);
            (
                f32x8::from(std::ptr::read_unaligned(w as *const [f32; 8])),
                f32x8::from(std::ptr::read_unaligned(w.add(8) as *const [f32; 8])),
            )
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: see above (i < R, p < k).
            let x = f32x8::splat(unsafe { *ap.add(i * lda + p) });
            acc[0] = x.mul_add(w0, acc[0]);
            acc[1] = x.mul_add(w1, acc[1]);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        c[i * ldc..i * ldc + 8].copy_from_slice(&acc[0].to_array());
        c[i * ldc + 8..i * ldc + 16].copy_from_slice(&acc[1].to_array());
    }
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
        let g = |q: usize| load(zx, q * u + k) + load(zh, q * u + k) + load(bias, q * u + k);
        let (gi, gj, gf, go) = (g(0), g(1), g(2), g(3));
        let cn = sigmoid8(gf + f32x8::ONE) * load(c, k) + sigmoid8(gi) * tanh8(gj);
        let cn = cn.fast_max(lo).fast_min(hi);
        c[k..k + 8].copy_from_slice(&cn.to_array());
        m[k..k + 8].copy_from_slice(&(sigmoid8(go) * tanh8(cn)).to_array());
        k += 8;
    }
    lstm_cell_ref_range(zx, zh, bias, c, m, cell_clip, k);
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
    fn gemm_rows_matches_reference_and_is_row_independent() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 7, 40),
            (3, 16, 24),
            (4, 33, 17),
            (9, 64, 129),
            (32, 40, 64),
            (2, 9, 300),
            (6, 300, 530),
        ] {
            let a = fill(m * k, 5);
            let w = fill(k * n, 6);
            let mut c1 = vec![0f32; m * n];
            let mut c2 = vec![0f32; m * n];
            gemm_rows(m, k, n, &a, k, &w, &mut c1, n);
            gemm_ref(m, k, n, &a, k, &w, n, &mut c2, n, false);
            let maxdiff = c1.iter().zip(&c2).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(maxdiff < 1e-4, "maxdiff {maxdiff} for {m}x{k}x{n}");
            // The packed form gives the same bits.
            let mut c3 = vec![0f32; m * n];
            PackedW::new(&w, k, n).product(m, &a, k, &mut c3, n);
            assert_eq!(c3, c1, "packed {m}x{k}x{n}");
            // bf16 weights: the streaming and packed paths agree bitwise with
            // f32 weights that hold the same (rounded) values.
            let wb: Vec<u16> = w.iter().map(|&x| crate::tensor::f32_to_bf16(x)).collect();
            let wr: Vec<f32> = wb.iter().map(|&b| crate::tensor::bf16_to_f32(b)).collect();
            let (mut cb, mut cr) = (vec![0f32; m * n], vec![0f32; m * n]);
            gemm_rows(m, k, n, &a, k, &wb, &mut cb, n);
            gemm_rows(m, k, n, &a, k, &wr, &mut cr, n);
            assert_eq!(cb, cr, "bf16 {m}x{k}x{n}");
            let mut cp = vec![0f32; m * n];
            PackedW::new(&wb, k, n).product(m, &a, k, &mut cp, n);
            assert_eq!(cp, cr, "bf16 packed {m}x{k}x{n}");
            // Each row alone gives the same bits as inside the batch.
            for r in 0..m {
                let mut one = vec![0f32; n];
                gemm_rows(1, k, n, &a[r * k..], k, &w, &mut one, n);
                assert_eq!(one, c1[r * n..(r + 1) * n], "row {r} of {m}x{k}x{n}");
            }
        }
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
