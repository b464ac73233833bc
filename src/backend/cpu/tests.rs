//! The kernels against their scalar references.

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

/// Asserts that within `level` a product's bits do not depend on what is
/// computed around them: `full` (all `m` rows, all strips of `w`) against
/// the strips visited in reverse, a partial strip range (reversed), each
/// row alone, and the row ranges `(first, count)` of `ranges`.
#[allow(clippy::too_many_arguments)]
fn assert_batch_independent<T: WeightElem>(
    level: SimdLevel,
    m: usize,
    a: &[f32],
    k: usize,
    w: Strips<'_, T>,
    full: &[f32],
    ranges: &[(usize, usize)],
    what: &str,
) {
    let (n, ns) = (w.n, w.n_strips());
    let mut c = vec![0f32; m * n];
    strips_gemm_at(level, m, a, k, w, 0, ns, &mut c, n, true).unwrap();
    assert_eq!(c, full, "{level} {what}: strips reversed");
    let (s0, s1) = (ns / 3, ns - ns / 4);
    let (j0, j1) = (s0 * STRIP, (s1 * STRIP).min(n));
    let mut part = vec![0f32; m * (j1 - j0)];
    strips_gemm_at(level, m, a, k, w, s0, s1, &mut part, j1 - j0, true).unwrap();
    for r in 0..m {
        assert_eq!(
            part[r * (j1 - j0)..(r + 1) * (j1 - j0)],
            full[r * n + j0..r * n + j1],
            "{level} {what}: strips {s0}..{s1}, row {r}"
        );
    }
    for r in 0..m {
        let mut one = vec![0f32; n];
        strips_gemm_at(level, 1, &a[r * k..], k, w, 0, ns, &mut one, n, false).unwrap();
        assert_eq!(one, full[r * n..(r + 1) * n], "{level} {what}: row {r} alone");
    }
    for &(r0, rows) in ranges {
        let mut sub = vec![0f32; rows * n];
        strips_gemm_at(level, rows, &a[r0 * k..], k, w, 0, ns, &mut sub, n, false).unwrap();
        assert_eq!(sub, full[r0 * n..(r0 + rows) * n], "{level} {what}: rows {r0}..+{rows}");
    }
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
    // Every level this CPU has: the same bits as the reference (and so
    // as each other).
    let levels = available_levels();
    eprintln!("levels: {levels:?}");
    for (level, &(m, k, n)) in levels.iter().flat_map(|&l| {
        if cfg!(miri) { &miri_shapes[..] } else { shapes }
            .iter()
            .map(move |s| (l, s))
    }) {
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
        let mut c = vec![0f32; m * n];
        strips_gemm_at(level, m, &a, k, view, 0, ns, &mut c, n, false).unwrap();
        assert_eq!(c, want, "{level} strips {m}x{k}x{n}");
        let ranges = [(m / 3, m - m / 3), (0, m.min(7))];
        assert_batch_independent(level, m, &a, k, view, &want, &ranges, &format!("{m}x{k}x{n}"));
        let mut c = vec![0f32; m * n];
        strips_gemm_par(m, &a, k, view, &mut c, n, 3);
        assert_eq!(c, want, "shared {m}x{k}x{n}");
        // Rows further apart than k, and overlapping rows (the char
        // CNN's windows): the same chains as the reference over that A.
        for lda in [k + 5, k.div_ceil(2)] {
            let a2 = fill((m - 1) * lda + k, 8);
            let mut want2 = vec![0f32; m * n];
            gemm_fma_ref(m, k, n, &a2, lda, &w, &mut want2, n);
            let mut c = vec![0f32; m * n];
            strips_gemm_at(level, m, &a2, lda, view, 0, ns, &mut c, n, false).unwrap();
            assert_eq!(c, want2, "strips {m}x{k}x{n} lda {lda}");
        }
        // bf16 weights: widened exactly, the same fma chains; at
        // avx512bf16 the vdpbf16ps sums (tested further below).
        let wb: Vec<u16> = w.iter().map(|&x| crate::tensor::f32_to_bf16(x)).collect();
        let mut want_b = vec![0f32; m * n];
        let pb = pack_strips(&wb, k, n);
        if level == SimdLevel::Amx {
            // Not a bitwise model: tested below.
            continue;
        } else if level == SimdLevel::Avx512Bf16 {
            strips_gemm_bf16dot_ref(m, &a, k, Strips::new(&pb, k, n), 0, ns, &mut want_b, n);
        } else {
            gemm_fma_ref(m, k, n, &a, k, &wb, &mut want_b, n);
        }
        let mut cb = vec![0f32; m * n];
        strips_gemm_at(level, m, &a, k, Strips::new(&pb, k, n), 0, ns, &mut cb, n, false).unwrap();
        assert_eq!(cb, want_b, "{level} bf16 strips {m}x{k}x{n}");
    }
    // Overlapping rows of A (lda < k), as the char convolution reads them.
    let (m, k, n, lda) = (20, 12, 9, 4);
    let a = fill((m - 1) * lda + k, 8);
    let w = fill(k * n, 9);
    let (mut want, mut c) = (vec![0f32; m * n], vec![0f32; m * n]);
    gemm_fma_ref(m, k, n, &a, lda, &w, &mut want, n);
    let pw = pack_strips(&w, k, n);
    for &level in &levels {
        let before = kernel_calls(level);
        strips_gemm_at(level, m, &a, lda, Strips::new(&pw, k, n), 0, 1, &mut c, n, false).unwrap();
        assert_eq!(c, want, "{level}");
        assert!(kernel_calls(level) > before, "{level}'s kernels did not run");
    }
}

#[test]
fn fetch_runs_cover_every_step_once_in_order() {
    for k in 0..70 {
        for lines in [0, 1, 2, 3, 5, 7, 16, 69, 70, 200] {
            let runs: Vec<_> = strips::fetch_runs(k, lines).collect();
            let want = lines.clamp(1, k.max(1));
            assert_eq!(runs.len(), want, "k {k} lines {lines}");
            let mut next = 0;
            for (j, (line, steps)) in runs.iter().enumerate() {
                assert_eq!(*line, j, "k {k} lines {lines}");
                assert_eq!(steps.start, next, "k {k} lines {lines}: a gap or an overlap");
                // Near-equal runs: the fetched lines spread over the loop.
                assert!(steps.len() >= k / want && steps.len() <= k.div_ceil(want));
                next = steps.end;
            }
            assert_eq!(next, k, "k {k} lines {lines}: steps left out");
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
    highway_blend_ref(&mut x2, &carry, &tr);
    assert!(x1.iter().zip(&x2).all(|(a, b)| (a - b).abs() < 1e-6));
}

/// An element's blend does not depend on where it falls in the matrix (in
/// the 8-lane body or the tail): a token's vectors are the same bits in any
/// batch.
#[test]
fn highway_blend_is_position_independent() {
    // Gates over [-8, 8): enough values for the 8-lane and scalar sigmoid
    // to differ in the last bit somewhere.
    let n = 4099;
    let (x, tr) = (fill(n, 1), fill(n, 3));
    let carry: Vec<f32> = fill(n, 2).iter().map(|v| v * 8.0).collect();
    let mut whole = x.clone();
    highway_blend(&mut whole, &carry, &tr);
    // Every element once in a tail (pieces of 1..7 elements) and once in a
    // body (pieces shifted by 3).
    for (step, shift) in [(5, 0), (7, 0), (16, 3)] {
        let mut start = shift;
        while start < n {
            let r = start..(start + step).min(n);
            let mut part = x[r.clone()].to_vec();
            highway_blend(&mut part, &carry[r.clone()], &tr[r.clone()]);
            assert!(part == whole[r.clone()], "{r:?}");
            start += step;
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

/// Max distance in units in the last place between `got` and `want`
/// (0 for equal bits), and where.
fn max_ulps(got: &[f32], want: &[f32]) -> (u32, usize) {
    let key = |x: f32| {
        let b = x.to_bits() as i64;
        if b & 0x8000_0000 != 0 { -(b & 0x7FFF_FFFF) } else { b }
    };
    got.iter()
        .zip(want)
        .enumerate()
        .map(|(i, (&g, &w))| ((key(g) - key(w)).unsigned_abs() as u32, i))
        .max()
        .unwrap_or((0, 0))
}

#[test]
fn bf16dot_reference_rounds_and_flushes_as_documented() {
    // Rounding to nearest even, halfway cases both ways; denormals to zero.
    assert_eq!(bf16_round_activation(f32::from_bits(0x3F80_8000)), 0x3F80);
    assert_eq!(bf16_round_activation(f32::from_bits(0x3F81_8000)), 0x3F82);
    assert_eq!(bf16_round_activation(f32::from_bits(0x3F80_8001)), 0x3F81);
    assert_eq!(bf16_round_activation(f32::from_bits(0x0000_0001)), 0x0000);
    assert_eq!(bf16_round_activation(f32::from_bits(0x807F_FFFF)), 0x8000);
    assert_eq!(bf16_round_activation(f32::MAX), 0x7F80);
    assert!(crate::tensor::bf16_to_f32(bf16_round_activation(f32::NAN)).is_nan());
    // 1 x 3 times 3 x 1: (a1 w1 + a0 w0) + a2 w2 with a zero pair, and a
    // denormal weight read as zero.
    let w: Vec<u16> = [1.0f32, 2.0, 4.0]
        .iter()
        .map(|&x| crate::tensor::f32_to_bf16(x))
        .collect();
    let mut w = pack_strips(&w, 3, 1);
    let a = [1.0f32, 0.5, 0.25];
    let mut c = [0f32];
    strips_gemm_bf16dot_ref(1, &a, 3, Strips::new(&w, 3, 1), 0, 1, &mut c, 1);
    assert_eq!(c[0], 3.0);
    w[STRIP] = 0x0001; // row 1: a denormal
    strips_gemm_bf16dot_ref(1, &a, 3, Strips::new(&w, 3, 1), 0, 1, &mut c, 1);
    assert_eq!(c[0], 2.0);
}

#[test]
fn bf16dot_kernel_matches_its_reference_and_ignores_batch_composition() {
    if !SimdLevel::Avx512Bf16.available() {
        eprintln!("no AVX512-BF16 on this CPU: the kernel is not tested");
        return;
    }
    let level = SimdLevel::Avx512Bf16;
    let shapes: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 2, 16),
        (1, 7, 40),
        (2, 9, 300),
        (3, 16, 24),
        (4, 33, 17),
        (9, 64, 129),
        (32, 41, 64),
        (6, 301, 530),
        (14, 50, 48),
        (200, 3, 20),
        (17, 256, 1030),
        (100, 2001, 20),  // two row blocks of 50, odd k
        (13, 1100, 1030), // 2.2 MiB of bf16: fetched ahead
        (5, 2100, 40),    // depth blocks of 1050 rows
        (5, 2101, 40),    // depth blocks of 1052 and 1049: an odd last one
        (1, 2101, 40),
    ];
    let mut worst = 0u32;
    for &(m, k, n) in shapes {
        let a = fill(m * k, 5);
        let w = fill((k + 3) * n, 6);
        // Rows 3 .. 3 + k of a deeper matrix: the view starts at an odd
        // row, and the rows past it (none here, the next strip's first
        // rows) are never read.
        let wb: Vec<u16> = w.iter().map(|&x| crate::tensor::f32_to_bf16(x)).collect();
        let packed = pack_strips(&wb, k + 3, n);
        let view = Strips::new(&packed, k + 3, n).rows(3, k);
        let ns = n.div_ceil(STRIP);
        let mut want = vec![0f32; m * n];
        strips_gemm_bf16dot_ref(m, &a, k, view, 0, ns, &mut want, n);
        let mut got = vec![0f32; m * n];
        strips_gemm_at(level, m, &a, k, view, 0, ns, &mut got, n, false).unwrap();
        let (ulps, at) = max_ulps(&got, &want);
        eprintln!(
            "{m}x{k}x{n}: max {ulps} ulps vs the reference (at {at}: {} vs {})",
            got[at], want[at]
        );
        worst = worst.max(ulps);
        // Within the level: the same bits whatever the strip order, strip
        // range, rows around a row, or thread count.
        let ranges = [
            (0, m.min(2)),
            (m / 3, m - m / 3),
            (0, m.min(7)),
            (m - m.min(4), m.min(4)),
        ];
        assert_batch_independent(level, m, &a, k, view, &got, &ranges, &format!("{m}x{k}x{n}"));
        if simd_level() == level {
            for (threads, parts) in [(1, 1), (2, 2), (3, 3)] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut c = vec![0f32; m * n];
                pool.install(|| strips_gemm_par(m, &a, k, view, &mut c, n, parts));
                assert_eq!(c, got, "{threads} threads {m}x{k}x{n}");
            }
        }
    }
    // Near the bottom of the range: activations and weights whose products
    // and sums are denormal (flushed), weights that are denormal bf16
    // (read as zero), activations that round to a denormal (zero).
    for (sa, sw) in [
        (-60, -62),
        (-58, -64),
        (-62, -62),
        (-60, -66),
        (-70, -60),
        (-126, 0),
        (0, -130),
    ] {
        let (m, k, n) = (5, 77, 50);
        let a: Vec<f32> = fill(m * k, 9).iter().map(|&x| x * 2f32.powi(sa)).collect();
        let wb: Vec<u16> = fill(k * n, 10)
            .iter()
            .map(|&x| crate::tensor::f32_to_bf16(x * 2f32.powi(sw)))
            .collect();
        let packed = pack_strips(&wb, k, n);
        let view = Strips::new(&packed, k, n);
        let ns = n.div_ceil(STRIP);
        let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
        strips_gemm_bf16dot_ref(m, &a, k, view, 0, ns, &mut want, n);
        strips_gemm_at(level, m, &a, k, view, 0, ns, &mut got, n, false).unwrap();
        let (ulps, at) = max_ulps(&got, &want);
        let zeros = want.iter().filter(|&&x| x == 0.0).count();
        eprintln!(
            "scales 2^{sa} 2^{sw}: max {ulps} ulps (at {at}: {:e} vs {:e}), {zeros} zeros",
            got[at], want[at]
        );
        worst = worst.max(ulps);
    }
    eprintln!("avx512bf16 vs strips_gemm_bf16dot_ref: max {worst} ulps");
    assert_eq!(worst, 0, "the kernel's sums differ from the reference's");
}

/// The AMX kernel against its model ([`strips_gemm_amx_ref`]): within
/// `AMX_BOUND` ulps of the element's absolute sum (`sum |a w|`) per block
/// of 32; and bitwise against itself whatever the batch, the rows around a
/// row, the tile rows (1-16, 16 with padding), the strip range and order,
/// the layout and the thread count.
#[test]
fn amx_kernel_is_within_its_model_and_ignores_batch_composition() {
    if !SimdLevel::Amx.available() {
        eprintln!("no usable AMX on this CPU: the kernel is not tested");
        return;
    }
    let level = SimdLevel::Amx;
    let shapes: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 2, 16),
        (1, 7, 40),
        (2, 9, 300),
        (3, 32, 24),
        (4, 33, 17),
        (9, 64, 129),
        (16, 96, 32),
        (17, 41, 64),
        (32, 512, 100),
        (33, 512, 48),
        (6, 301, 530),
        (40, 1000, 33),
        (200, 3, 20),
        (64, 2048, 64),
        (1, 4096, 64),
    ];
    let mut worst = 0f64;
    let mut ulps = [0usize; 4]; // elements equal to the model, 1, 2, more ulps away
    for &(m, k, n) in shapes {
        let depth = (k + 3).next_multiple_of(2);
        let a = fill(m * k, 41);
        let wb: Vec<u16> = fill(depth * n, 42)
            .iter()
            .map(|&x| crate::tensor::f32_to_bf16(x))
            .collect();
        let packed = pack_strips(&wb, depth, n);
        let paired = crate::layout::pair_strip_rows(&packed, depth, n);
        let plain = Strips::new(&packed, depth, n).rows(2, k);
        let view = Strips::new_paired(&paired, depth, n).rows(2, k);
        let ns = n.div_ceil(STRIP);
        let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
        strips_gemm_amx_ref(m, &a, k, view, 0, ns, &mut want, n);
        strips_gemm_at(level, m, &a, k, view, 0, ns, &mut got, n, false).unwrap();
        // sum |a w| per element: the model on absolute values.
        let abs_a: Vec<f32> = a.iter().map(|x| x.abs()).collect();
        let abs_w: Vec<u16> = packed.iter().map(|&b| b & 0x7FFF).collect();
        let mut mag = vec![0f32; m * n];
        strips_gemm_amx_ref(
            m,
            &abs_a,
            k,
            Strips::new(&abs_w, depth, n).rows(2, k),
            0,
            ns,
            &mut mag,
            n,
        );
        let blocks = k.div_ceil(AMX_K_BLOCK) as f64;
        for i in 0..m * n {
            let ulp = (mag[i] as f64) * f64::powi(2.0, -23);
            let d = (got[i] as f64 - want[i] as f64).abs();
            let rel = if d == 0.0 { 0.0 } else { d / ulp / blocks };
            worst = worst.max(rel);
            let u = (got[i].to_bits() as i64 - want[i].to_bits() as i64).unsigned_abs() as usize;
            ulps[u.min(3)] += 1;
        }
        // Within the level: the same bits for the plain layout, reversed or
        // partial strip ranges, each row alone and rows around it.
        let mut c = vec![0f32; m * n];
        strips_gemm_at(level, m, &a, k, plain, 0, ns, &mut c, n, true).unwrap();
        assert_eq!(c, got, "plain layout, reversed, {m}x{k}x{n}");
        let ranges = [(m / 3, m - m / 3), (0, m.min(7)), (m - m.min(17), m.min(17))];
        assert_batch_independent(level, m, &a, k, view, &got, &ranges, &format!("{m}x{k}x{n}"));
        // Rows further apart than k, C rows further apart than n.
        let lda = k + 7;
        let mut a2 = vec![0f32; (m - 1) * lda + k];
        for r in 0..m {
            a2[r * lda..r * lda + k].copy_from_slice(&a[r * k..(r + 1) * k]);
        }
        let ldc = n + 5;
        let mut c2 = vec![-1f32; (m - 1) * ldc + n];
        strips_gemm_at(level, m, &a2, lda, view, 0, ns, &mut c2, ldc, false).unwrap();
        for r in 0..m {
            assert_eq!(c2[r * ldc..r * ldc + n], got[r * n..(r + 1) * n], "strides, row {r}");
        }
        if simd_level() == level {
            for (threads, parts) in [(1, 1), (2, 2), (3, 3)] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut c = vec![0f32; m * n];
                pool.install(|| strips_gemm_par(m, &a, k, view, &mut c, n, parts));
                assert_eq!(c, got, "{threads} threads {m}x{k}x{n}");
            }
        }
    }
    let total: usize = ulps.iter().sum();
    eprintln!(
        "amx vs strips_gemm_amx_ref over {total} elements: {} equal, {} 1 ulp, {} 2 ulps, {} more; \
         max {worst:.2} ulps of sum |a w| per block",
        ulps[0], ulps[1], ulps[2], ulps[3]
    );
    assert!(
        worst <= AMX_BOUND,
        "amx is {worst} ulps of sum |a w| per block from its model"
    );
    assert!(
        ulps[0] * 2 > total,
        "amx agrees with its model in under half of the elements"
    );
}

/// How far (in ulps of the element's `sum |a w|`, per block of 32) the AMX
/// unit may be from [`strips_gemm_amx_ref`].
const AMX_BOUND: f64 = 1.0;

#[test]
fn paired_bf16_layout_gives_the_bits_of_the_strip_layout_at_every_level() {
    let shapes: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 7, 40),
        (2, 9, 300),
        (3, 16, 24),
        (6, 301, 530),
        (32, 64, 129),
        (17, 256, 1030),
        (13, 1100, 1030),
        (5, 2101, 40),
        (1, 2101, 40),
    ];
    for &(m, k, n) in shapes {
        // Rows 2 .. 2 + k of an even-depth matrix; an odd k's last row is
        // paired with a row past the view, which must not be read.
        let depth = (k + 3).next_multiple_of(2);
        let a = fill(m * k, 21);
        let wb: Vec<u16> = fill(depth * n, 22)
            .iter()
            .map(|&x| crate::tensor::f32_to_bf16(x))
            .collect();
        let packed = pack_strips(&wb, depth, n);
        let paired = crate::layout::pair_strip_rows(&packed, depth, n);
        let plain = Strips::new(&packed, depth, n).rows(2, k);
        let view = Strips::new_paired(&paired, depth, n).rows(2, k);
        assert!(view.is_paired() && !plain.is_paired());
        let ns = n.div_ceil(STRIP);
        let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
        strips_gemm_bf16dot_ref(m, &a, k, plain, 0, ns, &mut want, n);
        strips_gemm_bf16dot_ref(m, &a, k, view, 0, ns, &mut got, n);
        assert_eq!(got, want, "reference, paired vs strips, {m}x{k}x{n}");
        for level in available_levels() {
            strips_gemm_at(level, m, &a, k, plain, 0, ns, &mut want, n, false).unwrap();
            strips_gemm_at(level, m, &a, k, view, 0, ns, &mut got, n, false).unwrap();
            assert_eq!(got, want, "{level}, paired vs strips, {m}x{k}x{n}");
            let (s0, s1) = (ns / 3, ns - ns / 4);
            let width = (s1 * STRIP).min(n) - s0 * STRIP;
            let mut part = vec![0f32; m * width];
            strips_gemm_at(level, m, &a, k, view, s0, s1, &mut part, width, true).unwrap();
            for r in 0..m {
                assert_eq!(
                    part[r * width..(r + 1) * width],
                    want[r * n + s0 * STRIP..r * n + s0 * STRIP + width],
                    "{level} strips {s0}..{s1} row {r} of {m}x{k}x{n}"
                );
            }
        }
    }
}

/// The LSTM cell gives the same bits at every vector level (8 lanes at
/// `avx2`, 16 at the AVX-512 levels): sizes whose units end in the 16-lane
/// loop, the 8-lane one and the scalar tail, gates far past the clamps
/// (and infinite), with and without the cell clip.
#[test]
fn lstm_cell_is_bitwise_the_same_at_every_vector_level() {
    let levels: Vec<SimdLevel> = available_levels()
        .into_iter()
        .filter(|&l| l != SimdLevel::Scalar)
        .collect();
    for u in [1, 8, 16, 21, 37, 100, 4096] {
        let scale = |v: Vec<f32>, s: f32| -> Vec<f32> { v.into_iter().map(|x| x * s).collect() };
        let mut zx = scale(fill(4 * u, 31), 400.0);
        zx[0] = f32::INFINITY;
        zx[(4 * u - 1).min(3 * u)] = f32::NEG_INFINITY;
        let (zh, bias) = (scale(fill(4 * u, 32), 8.0), fill(4 * u, 33));
        for clip in [None, Some(3.0)] {
            let c0 = scale(fill(u, 34), 10.0);
            let run = |level: SimdLevel| {
                let (mut c, mut m) = (c0.clone(), vec![0f32; u]);
                lstm_cell_at(level, &zx, &zh, &bias, &mut c, &mut m, clip).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
                (bits(&c), bits(&m))
            };
            let first = run(levels[0]);
            for &level in &levels[1..] {
                assert!(
                    run(level) == first,
                    "u {u}, clip {clip:?}: {level} differs from {}",
                    levels[0]
                );
            }
        }
    }
    assert!(
        lstm_cell_at(SimdLevel::Avx512, &[], &[], &[], &mut [], &mut [], None).is_ok()
            || !SimdLevel::Avx512.available()
    );
}
