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

/// The logistic function `1 / (1 + exp(-x))`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
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
    fn sigmoid_is_accurate_and_saturates() {
        for x in [-100.0f32, -10.0, -1.0, 0.0, 0.5, 3.0, 100.0] {
            let exact = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((sigmoid(x) as f64 - exact).abs() < 1e-7);
        }
        assert_eq!(clip(5.0, Some(3.0)), 3.0);
        assert_eq!(clip(-5.0, None), -5.0);
    }
}
