//! The LSTM cell on 512-bit registers (the `avx512` and `avx512bf16`
//! levels): the operations of the 8-lane kernel ([`lstm_cell`](super::lstm_cell),
//! `wide`'s `exp` through [`sigmoid8`](super::sigmoid8) and
//! [`tanh8`](super::tanh8)) one for one on 16 lanes, so every element gets
//! the same bits as at `avx2` (tested); half the instructions per unit.

use std::arch::x86_64::*;

/// 16 lanes of `v`.
#[inline(always)]
fn splat(v: f32) -> __m512 {
    // SAFETY: AVX-512F, which every caller (a `target_feature` function
    // inlining this) has.
    unsafe { _mm512_set1_ps(v) }
}

/// `exp(x)` for `|x| <= 80` as `wide::f32x8::exp` computes it: `r =
/// round(x log2 e)`, `x - r ln 2` in two fused steps, the degree-5
/// polynomial in the same Estrin order, `(z + 1) 2^r`. (wide's range check
/// is always true for the clamped arguments of the callers, so it is left
/// out.)
#[inline(always)]
fn exp16(x: __m512) -> __m512 {
    // SAFETY (all): AVX-512F, as above.
    unsafe {
        let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            splat(std::f32::consts::LOG2_E),
        ));
        // ln 2 = 0.693359375 (exactly 355 / 512, wide's LN2D_HI) - 2.12194440e-4.
        let x = _mm512_fnmadd_ps(r, splat(355.0 / 512.0), x);
        let x = _mm512_fnmadd_ps(r, splat(-2.121_944_4e-4), x);
        let x2 = _mm512_mul_ps(x, x);
        let x4 = _mm512_mul_ps(x2, x2);
        let (p0, p1, p2, p3, p4, p5) = (1.0 / 2.0, 1.0 / 6.0, 1. / 24., 1. / 120., 1. / 720., 1. / 5040.);
        let lo = _mm512_fmadd_ps(splat(p1), x, splat(p0));
        let hi = _mm512_fmadd_ps(_mm512_fmadd_ps(splat(p5), x, splat(p4)), x4, lo);
        let z = _mm512_fmadd_ps(_mm512_fmadd_ps(splat(p3), x, splat(p2)), x2, hi);
        let z = _mm512_fmadd_ps(z, _mm512_mul_ps(x, x), x);
        // 2^r: r + 127 + 2^23 puts r + 127 in the low mantissa bits.
        let n2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_castps_si512(_mm512_add_ps(
            r,
            splat(127.0 + 8_388_608.0),
        ))));
        _mm512_mul_ps(_mm512_add_ps(z, splat(1.0)), n2)
    }
}

/// [`sigmoid8`](super::sigmoid8) on 16 lanes: clamp to [-80, 80], `1 / (1 +
/// exp(0 - x))`.
#[inline(always)]
fn sigmoid16(x: __m512) -> __m512 {
    // SAFETY (all): AVX-512F, as above.
    unsafe {
        let x = _mm512_min_ps(_mm512_max_ps(x, splat(-80.0)), splat(80.0));
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
        _mm512_div_ps(splat(1.0), _mm512_add_ps(splat(1.0), e))
    }
}

/// [`tanh8`](super::tanh8) on 16 lanes: clamp to [-40, 40], `1 - 2 /
/// (exp(x + x) + 1)`.
#[inline(always)]
fn tanh16(x: __m512) -> __m512 {
    // SAFETY (all): AVX-512F, as above.
    unsafe {
        let x = _mm512_min_ps(_mm512_max_ps(x, splat(-40.0)), splat(40.0));
        let e = exp16(_mm512_add_ps(x, x));
        _mm512_sub_ps(splat(1.0), _mm512_div_ps(splat(2.0), _mm512_add_ps(e, splat(1.0))))
    }
}

/// [`lstm_cell`](super::lstm_cell) for units `0 .. u / 16 * 16` (the rest is
/// the caller's), in the same two passes; returns the units done.
///
/// # Safety
/// The CPU must have AVX-512F. (The slices are checked: a caller bug
/// panics.)
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn lstm_cell16(
    zx: &[f32],
    zh: &[f32],
    bias: &[f32],
    c: &mut [f32],
    m: &mut [f32],
    cell_clip: Option<f32>,
) -> usize {
    let u = c.len();
    assert!(
        zx.len() >= 4 * u && zh.len() >= 4 * u && bias.len() >= 4 * u && m.len() >= u,
        "lstm_cell16: buffers shorter than 4 x {u} gates"
    );
    let (lo, hi) = match cell_clip {
        Some(cc) => (splat(-cc), splat(cc)),
        None => (splat(f32::NEG_INFINITY), splat(f32::INFINITY)),
    };
    let whole = u / 16 * 16;
    // SAFETY (every load and store below): `o + 16 <= 4u` for the gates
    // (`k + 16 <= u`, gate offsets below 4u) and `k + 16 <= u` for c and m,
    // inside the lengths asserted above; AVX-512F is this function's.
    let load = |s: &[f32], o: usize| unsafe { _mm512_loadu_ps(s.as_ptr().add(o)) };
    // zx + zh + bias, in that order (as `gate8`).
    let gate = |o: usize| _mm512_add_ps(_mm512_add_ps(load(zx, o), load(zh, o)), load(bias, o));
    for k in (0..whole).step_by(16) {
        let (gi, gj, gf) = (gate(k), gate(u + k), gate(2 * u + k));
        // sigmoid(f + 1) c + sigmoid(i) tanh(j): two products, then the sum.
        let keep = _mm512_mul_ps(sigmoid16(_mm512_add_ps(gf, splat(1.0))), load(c, k));
        let cn = _mm512_add_ps(keep, _mm512_mul_ps(sigmoid16(gi), tanh16(gj)));
        let cn = _mm512_min_ps(_mm512_max_ps(cn, lo), hi);
        unsafe { _mm512_storeu_ps(c.as_mut_ptr().add(k), cn) };
    }
    for k in (0..whole).step_by(16) {
        let go = gate(3 * u + k);
        let mk = _mm512_mul_ps(sigmoid16(go), tanh16(load(c, k)));
        unsafe { _mm512_storeu_ps(m.as_mut_ptr().add(k), mk) };
    }
    whole
}
