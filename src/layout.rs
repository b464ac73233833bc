//! The strip-packed layout of the large matrices: how the model file
//! stores them and how the CPU kernels read them.

/// Columns per strip of the strip-packed layout ([`pack_strips`]).
pub const STRIP: usize = 16;

/// Packs a row-major `k x n` matrix into `ceil(n / 16)` strips of `k` rows x
/// 16 columns, each contiguous; columns past `n` in the last strip are zero.
/// Element `(p, j)` lands at `((j / 16) * k + p) * 16 + j % 16`.
///
/// This is how the model file stores the LSTM matrices: a product then
/// streams each strip from memory in order, with no packing per call.
///
/// # Panics
/// When `w` holds fewer than `k * n` values (a caller bug).
pub fn pack_strips<T: Copy + Default>(w: &[T], k: usize, n: usize) -> Vec<T> {
    assert!(w.len() >= k * n, "pack_strips: W too small");
    let ns = n.div_ceil(STRIP);
    let mut out = vec![T::default(); ns * k * STRIP];
    for p in 0..k {
        for (j, &v) in w[p * n..(p + 1) * n].iter().enumerate() {
            out[((j / STRIP) * k + p) * STRIP + j % STRIP] = v;
        }
    }
    out
}

/// The inverse of [`pack_strips`]: the row-major `k x n` matrix.
///
/// # Panics
/// When `s` is not `ceil(n / 16) * k * 16` values long (a caller bug).
pub fn unpack_strips<T: Copy + Default>(s: &[T], k: usize, n: usize) -> Vec<T> {
    assert_eq!(s.len(), n.div_ceil(STRIP) * k * STRIP, "unpack_strips: wrong length");
    let mut w = vec![T::default(); k * n];
    for p in 0..k {
        for (j, v) in w[p * n..(p + 1) * n].iter_mut().enumerate() {
            *v = s[((j / STRIP) * k + p) * STRIP + j % STRIP];
        }
    }
    w
}
