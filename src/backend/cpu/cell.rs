//! The element-wise kernels: sigmoid and tanh (scalar and 8 lanes), the
//! LSTM cell, the highway blend, bias and clipping, each with its reference.

use super::*;

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
/// 8 lanes at a time with `wide` (16 at the AVX-512 levels, the same
/// operations: the same bits); [`lstm_cell_ref`] is the scalar reference.
pub fn lstm_cell(zx: &[f32], zh: &[f32], bias: &[f32], c: &mut [f32], m: &mut [f32], cell_clip: Option<f32>) {
    run_lstm_cell(simd_level(), zx, zh, bias, c, m, cell_clip);
}

/// [`lstm_cell`] with the kernels of `level` (for benchmarks and tests
/// that compare levels in one process); an error when this CPU cannot run
/// `level`.
pub fn lstm_cell_at(
    level: SimdLevel,
    zx: &[f32],
    zh: &[f32],
    bias: &[f32],
    c: &mut [f32],
    m: &mut [f32],
    cell_clip: Option<f32>,
) -> crate::error::Result<()> {
    if !level.available() {
        return Err(crate::error::Error::Simd(format!("this CPU cannot run {level}")));
    }
    run_lstm_cell(level, zx, zh, bias, c, m, cell_clip);
    Ok(())
}

fn run_lstm_cell(
    level: SimdLevel,
    zx: &[f32],
    zh: &[f32],
    bias: &[f32],
    c: &mut [f32],
    m: &mut [f32],
    cell_clip: Option<f32>,
) {
    if level == SimdLevel::Scalar {
        return lstm_cell_ref(zx, zh, bias, c, m, cell_clip);
    }
    #[cfg(target_arch = "x86_64")]
    let done = if level >= SimdLevel::Avx512 {
        // SAFETY: the level is available (checked by `simd_level` or
        // `lstm_cell_at`), so the CPU has AVX-512F.
        unsafe { super::cell_avx512::lstm_cell16(zx, zh, bias, c, m, cell_clip) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    let done = lstm_cell8(zx, zh, bias, c, m, cell_clip, done);
    lstm_cell_ref_range(zx, zh, bias, c, m, cell_clip, done);
}

/// [`lstm_cell`]'s units `from ..` in whole vectors of 8; returns the end of
/// the last one.
fn lstm_cell8(
    zx: &[f32],
    zh: &[f32],
    bias: &[f32],
    c: &mut [f32],
    m: &mut [f32],
    cell_clip: Option<f32>,
    from: usize,
) -> usize {
    use wide::f32x8;
    let u = c.len();
    let load = |s: &[f32], o: usize| load8(&s[o..]);
    let (lo, hi) = match cell_clip {
        Some(cc) => (f32x8::splat(-cc), f32x8::splat(cc)),
        None => (f32x8::splat(f32::NEG_INFINITY), f32x8::splat(f32::INFINITY)),
    };
    // Two passes over the units: the new c, then m from it. In one pass an
    // element's chain (exp and divide, then exp and divide again on the new
    // c) outran the out-of-order window, and the loop ran at its latency;
    // each pass's chain is half as long (the same operations, so the same
    // bits). A row's c (16 KiB) stays in L1 between the passes.
    let end = from + (u - from) / 8 * 8;
    for k in (from..end).step_by(8) {
        // Not a closure: LLVM left one out of line (a call per gate).
        let (gi, gj, gf) = (
            gate8(zx, zh, bias, k),
            gate8(zx, zh, bias, u + k),
            gate8(zx, zh, bias, 2 * u + k),
        );
        let cn = sigmoid8(gf + f32x8::ONE) * load(c, k) + sigmoid8(gi) * tanh8(gj);
        let cn = cn.fast_max(lo).fast_min(hi);
        c[k..k + 8].copy_from_slice(&cn.to_array());
    }
    for k in (from..end).step_by(8) {
        let go = gate8(zx, zh, bias, 3 * u + k);
        m[k..k + 8].copy_from_slice(&(sigmoid8(go) * tanh8(load(c, k))).to_array());
    }
    end
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
/// `t = relu(transform)`, 8 lanes at a time. The tail goes through the same
/// 8-lane formula (padded), not a scalar one: `x` is a whole `(n, F)`
/// matrix, so which elements fall in the tail depends on `n`, and an element
/// must get the same bits whichever batch its token is in (the vectorised
/// sigmoid and `exp` differ from the scalar ones in the last bits).
pub fn highway_blend(x: &mut [f32], carry: &[f32], transform: &[f32]) {
    use wide::f32x8;
    if simd_level() == SimdLevel::Scalar {
        return highway_blend_ref(x, carry, transform);
    }
    let blend = |x: f32x8, carry: f32x8, transform: f32x8| {
        let g = sigmoid8(carry);
        g * transform.fast_max(f32x8::ZERO) + (f32x8::ONE - g) * x
    };
    let n = x.len();
    let mut i = 0;
    while i + 8 <= n {
        let v = blend(load8(&x[i..]), load8(&carry[i..]), load8(&transform[i..]));
        x[i..i + 8].copy_from_slice(&v.to_array());
        i += 8;
    }
    if i < n {
        let pad = |s: &[f32]| {
            let mut a = [0f32; 8];
            a[..n - i].copy_from_slice(&s[i..n]);
            f32x8::from(a)
        };
        let v = blend(pad(x), pad(carry), pad(transform)).to_array();
        x[i..n].copy_from_slice(&v[..n - i]);
    }
}

/// Scalar reference of [`highway_blend`].
pub fn highway_blend_ref(x: &mut [f32], carry: &[f32], transform: &[f32]) {
    for i in 0..x.len() {
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
