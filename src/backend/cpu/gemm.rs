//! The plain matrix product (through `matrixmultiply`) with leading
//! dimensions, and its scalar references.

use super::*;

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
