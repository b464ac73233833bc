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

/// Rewrites a strip-packed matrix ([`pack_strips`], `depth` rows per strip,
/// `depth` even) so that each strip's rows `2j` and `2j + 1` are
/// interleaved column by column: element `(p, j)` lands at
/// `((j / 16) * depth + p - p % 2) * 16 + 2 (j % 16) + p % 2`.
///
/// The layout AVX512-BF16's `vdpbf16ps` reads: one 512-bit load is the 16
/// column pairs of a pair of rows, where the strip layout needs a shuffle
/// (`vpermw`) per load. The CPU backend makes it when a bf16 model is
/// loaded at the `avx512bf16` level; model files keep the strip layout.
///
/// # Panics
/// When `depth` is odd or `s` is not `ceil(n / 16) * depth * 16` values
/// long (a caller bug).
pub fn pair_strip_rows<T: Copy + Default>(s: &[T], depth: usize, n: usize) -> Vec<T> {
    assert!(depth.is_multiple_of(2), "pair_strip_rows: odd depth");
    assert_eq!(
        s.len(),
        n.div_ceil(STRIP) * depth * STRIP,
        "pair_strip_rows: wrong length"
    );
    let mut out = vec![T::default(); s.len()];
    // Each pair of rows is 32 contiguous values in both layouts.
    for (dst, src) in out.chunks_exact_mut(2 * STRIP).zip(s.chunks_exact(2 * STRIP)) {
        for c in 0..STRIP {
            dst[2 * c] = src[c];
            dst[2 * c + 1] = src[STRIP + c];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairing_puts_each_element_where_the_formula_says() {
        let (k, n) = (6, 37);
        let w: Vec<u32> = (0..(k * n) as u32).collect();
        let packed = pack_strips(&w, k, n);
        let paired = pair_strip_rows(&packed, k, n);
        for p in 0..k {
            for j in 0..n {
                let at = ((j / STRIP) * k + p - p % 2) * STRIP + 2 * (j % STRIP) + p % 2;
                assert_eq!(paired[at], w[p * n + j], "({p}, {j})");
            }
        }
        // The padding columns of the last strip stay zero.
        assert_eq!(
            paired.iter().filter(|&&x| x == 0).count(),
            packed.iter().filter(|&&x| x == 0).count()
        );
    }
}
