//! Kernel microbenchmarks at the real model's shapes (2x4096_512_2048cnn_2xhighway):
//! char CNN, a highway layer, the projection, one LSTM step at batch 1 and
//! 32, and the whole forward pass for the anchors' workloads W1, W2, W3.
//!
//! `cargo bench --bench kernels`. Throughput is printed as items/s where an
//! item is one floating-point operation (so "Gitem/s" reads as GFLOP/s) or,
//! for the batch-1 LSTM step, as bytes of weights read per second. This
//! machine class measures ~100 GFLOP/s fp32 FMA peak per core (~200 on 2),
//! 20-25 GB/s DRAM read for one core, ~30 GB/s for two.
//!
//! The forward benchmarks use `ELMO_BENCH_MODEL` (a converted full-size
//! model) when set, else a random full-size model written to a temporary
//! file once (about a second).

use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use elmo::cpu::{Strips, highway_blend, lstm_cell, pack_strips, strips_gemm};
use elmo::{ElmoModel, Options};
use std::sync::OnceLock;

const E: usize = 16; // char embedding
const C: usize = 50; // chars per token
const F: usize = 2048; // filters
const P: usize = 512; // projection
const U: usize = 4096; // LSTM cell
const FILTERS: [(usize, usize); 7] = [(1, 32), (2, 32), (3, 64), (4, 128), (5, 256), (6, 512), (7, 1024)];

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 9) as f32 / (1u32 << 23) as f32 - 0.5) * 0.1
        })
        .collect()
}

/// The convolutions of 32 tokens, one token at a time as the model runs
/// them (the GEMMs into an L2-sized buffer; max-pool and activation are a
/// few percent on top): every window, as TensorFlow computes them.
#[divan::bench]
fn char_cnn_32_tokens(b: Bencher) {
    char_cnn(b, C);
}

/// The same for 32 words of 5 letters, as the model runs them: BOW, 5
/// letters and EOW, then one window of the padding (the rest are the same
/// window, `ElmoModel::conv_token`). Compare the times with
/// `char_cnn_32_tokens`.
#[divan::bench]
fn char_cnn_32_words_of_5_letters(b: Bencher) {
    char_cnn(b, 7);
}

/// 32 tokens' convolutions, each width's windows those starting before
/// `run` and one more.
fn char_cnn(b: Bencher, run: usize) {
    let n = 32;
    let emb = values(n * C * E, 1);
    let kernels: Vec<Vec<f32>> = FILTERS
        .iter()
        .map(|&(w, nf)| pack_strips(&values(w * E * nf, 2), w * E, nf))
        .collect();
    let rows = |w: usize| (C - w + 1).min(run + 1);
    let flops: usize = FILTERS.iter().map(|&(w, nf)| 2 * n * rows(w) * w * E * nf).sum();
    let mut out = vec![0f32; C * 1024];
    b.counter(ItemsCount::new(flops)).bench_local(|| {
        for t in 0..n {
            for (&(w, nf), k) in FILTERS.iter().zip(&kernels) {
                let k = Strips::new(k, w * E, nf);
                strips_gemm(rows(w), &emb[t * C * E..], E, k, 0, nf / 16, &mut out, nf, false);
            }
        }
        black_box(&out);
    });
}

/// One highway layer (carry and transform products, the blend) on N tokens.
#[divan::bench(args = [12, 704])]
fn highway_layer(b: Bencher, n: usize) {
    let x0 = values(n * F, 3);
    let (wc, wt) = (
        pack_strips(&values(F * F, 4), F, F),
        pack_strips(&values(F * F, 5), F, F),
    );
    let (wc, wt) = (Strips::new(&wc, F, F), Strips::new(&wt, F, F));
    let (mut carry, mut trans) = (vec![0f32; n * F], vec![0f32; n * F]);
    b.counter(ItemsCount::new(2 * 2 * n * F * F)).bench_local(|| {
        let mut x = x0.clone();
        strips_gemm(n, &x, F, wc, 0, F / 16, &mut carry, F, false);
        strips_gemm(n, &x, F, wt, 0, F / 16, &mut trans, F, false);
        highway_blend(&mut x, &carry, &trans);
        black_box(x);
    });
}

/// The token projection 2048 -> 512 on N tokens.
#[divan::bench(args = [12, 704])]
fn projection(b: Bencher, n: usize) {
    let (x, w) = (values(n * F, 6), pack_strips(&values(F * P, 7), F, P));
    let w = Strips::new(&w, F, P);
    let mut out = vec![0f32; n * P];
    b.counter(ItemsCount::new(2 * n * F * P)).bench_local(|| {
        strips_gemm(n, &x, F, w, 0, P / 16, &mut out, P, false);
        black_box(&out);
    });
}

/// One LSTM step at batch 1 on one thread: recurrent product (512 x 16384),
/// cell, projection (4096 x 512), f32 and bf16 weights. Memory-bound
/// (40 MiB / 20 MiB of weights, more than this machine's L3 holds): counted
/// in bytes of weights read.
#[divan::bench(args = ["f32", "bf16"])]
fn lstm_step_batch1(b: Bencher, dtype: &str) {
    fn run<T: elmo::cpu::WeightElem + Default>(b: Bencher, wh: &[T], wp: &[T]) {
        let (h, zx, bias) = (values(P, 8), values(4 * U, 11), values(4 * U, 12));
        let (wh, wp) = (Strips::new(wh, P, 4 * U), Strips::new(wp, U, P));
        let (mut z, mut c, mut m, mut out) = (vec![0f32; 4 * U], vec![0f32; U], vec![0f32; U], vec![0f32; P]);
        let bytes = std::mem::size_of::<T>() * (P * 4 * U + U * P);
        b.counter(BytesCount::new(bytes)).bench_local(|| {
            strips_gemm(1, &h, P, wh, 0, 4 * U / 16, &mut z, 4 * U, false);
            lstm_cell(&zx, &z, &bias, &mut c, &mut m, Some(3.0));
            strips_gemm(1, &m, U, wp, 0, P / 16, &mut out, P, false);
            black_box(&out);
        });
    }
    let (wh, wp) = (
        pack_strips(&values(P * 4 * U, 9), P, 4 * U),
        pack_strips(&values(U * P, 10), U, P),
    );
    if dtype == "f32" {
        run(b, &wh, &wp);
    } else {
        let bf = |v: &[f32]| v.iter().map(|&x| elmo::tensor::f32_to_bf16(x)).collect::<Vec<u16>>();
        run(b, &bf(&wh), &bf(&wp));
    }
}

/// One LSTM step at batch 32 on one thread. Counted in FLOPs.
#[divan::bench]
fn lstm_step_batch32(b: Bencher) {
    let n = 32;
    let (h, zx, bias) = (values(n * P, 13), values(n * 4 * U, 14), values(4 * U, 15));
    let (wh, wp) = (
        pack_strips(&values(P * 4 * U, 16), P, 4 * U),
        pack_strips(&values(U * P, 17), U, P),
    );
    let (wh, wp) = (Strips::new(&wh, P, 4 * U), Strips::new(&wp, U, P));
    let (mut z, mut c, mut m, mut out) = (
        vec![0f32; n * 4 * U],
        vec![0f32; n * U],
        vec![0f32; n * U],
        vec![0f32; n * P],
    );
    b.counter(ItemsCount::new(2 * n * (P * 4 * U + U * P))).bench_local(|| {
        strips_gemm(n, &h, P, wh, 0, 4 * U / 16, &mut z, 4 * U, false);
        for r in 0..n {
            let (cr, mr) = (&mut c[r * U..(r + 1) * U], &mut m[r * U..(r + 1) * U]);
            lstm_cell(
                &zx[r * 4 * U..(r + 1) * 4 * U],
                &z[r * 4 * U..(r + 1) * 4 * U],
                &bias,
                cr,
                mr,
                Some(3.0),
            );
        }
        strips_gemm(n, &m, U, wp, 0, P / 16, &mut out, P, false);
        black_box(&out);
    });
}

/// The full-size model, and the same computing every position
/// ([`ElmoModel::with_word_sharing`] off).
fn full_model() -> &'static (ElmoModel, ElmoModel) {
    static MODEL: OnceLock<(ElmoModel, ElmoModel)> = OnceLock::new();
    let both = |p: &std::path::Path| {
        let m = ElmoModel::load(p).expect("load the full-size model");
        (m, ElmoModel::load(p).unwrap().with_word_sharing(false))
    };
    MODEL.get_or_init(|| {
        if let Ok(p) = std::env::var("ELMO_BENCH_MODEL") {
            return both(p.as_ref());
        }
        let json = r#"{"lstm": {"cell_clip": 3, "use_skip_connections": true, "n_layers": 2, "proj_clip": 3,
            "projection_dim": 512, "dim": 4096}, "char_cnn": {"embedding": {"dim": 16}, "filters": [[1, 32], [2, 32],
            [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]], "n_highway": 2, "n_characters": 262,
            "max_characters_per_token": 50, "activation": "relu"}}"#;
        let o = Options::from_json(json).unwrap();
        let tensors: Vec<_> = elmo::model_file::expected_tensors(&o)
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let n: usize = shape.iter().product();
                let v = values(n, 100 + i as u32);
                (name, shape, v)
            })
            .collect();
        let path = std::env::temp_dir().join(format!("elmo-bench-full-{}.safetensors", std::process::id()));
        elmo::model_file::write_model(&path, &o, &tensors).unwrap();
        let m = both(&path);
        let _ = std::fs::remove_file(&path); // the mappings stay valid
        m
    })
}

/// Word `i` of a synthetic vocabulary: 3 to 9 letters from a hash of `i`
/// (distinct words for distinct `i`, in practice).
fn word(i: usize) -> String {
    let mut s = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D;
    let mut next = || {
        s ^= s >> 29;
        s = s.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        s ^= s >> 32;
        s
    };
    let len = 3 + (next() % 7) as usize;
    (0..len).map(|_| (b'a' + (next() % 26) as u8) as char).collect()
}

/// `sentences` sentences of `len` tokens; with `vocab`, drawn from that many
/// words (repetition as in running text), else every token a new word.
fn batch(sentences: usize, len: usize, first: usize, vocab: Option<usize>) -> Vec<Vec<String>> {
    let mut r = first as u64 + 1;
    (0..sentences)
        .map(|s| {
            (0..len)
                .map(|t| match vocab {
                    Some(v) => {
                        r = r
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        word((r >> 33) as usize % v)
                    }
                    None => word(first + s * len + t),
                })
                .collect()
        })
        .collect()
}

/// The anchors' workloads: W1 one 10-token sentence, W2 one of 30, W3 two
/// batches of 32 x 20 tokens, every token a different word; W3v the same
/// drawn from 180 words, as the anchors' W3 (179 distinct words in 1280
/// tokens). Each distinct word of a call is computed once (char CNN to
/// layer 0's input products); `-all` computes every position, as
/// TensorFlow does. Counted in tokens.
#[divan::bench(args = ["W1", "W2", "W3", "W3v", "W3v-all"], sample_count = 5, sample_size = 1)]
fn forward(b: Bencher, workload: &str) {
    let (shared, all) = full_model();
    let m = if workload.ends_with("-all") { all } else { shared };
    let batches: Vec<Vec<Vec<String>>> = match workload {
        "W1" => vec![batch(1, 10, 0, None)],
        "W2" => vec![batch(1, 30, 100, None)],
        "W3" => (0..2).map(|k| batch(32, 20, 1000 + k * 640, None)).collect(),
        // W3v, W3v-all
        _ => (0..2).map(|k| batch(32, 20, k, Some(180))).collect(),
    };
    let tokens: usize = batches.iter().flatten().map(Vec::len).sum();
    b.counter(ItemsCount::new(tokens)).bench_local(|| {
        for batch in &batches {
            black_box(m.embed(batch).unwrap());
        }
    });
}

fn main() {
    // Two threads, as the peers use.
    rayon::ThreadPoolBuilder::new().num_threads(2).build_global().ok();
    divan::main();
}

/// The strip product at each SIMD level this CPU has, in this process (the
/// baseline beside it): the projection and recurrent products of the LSTM
/// at batch 1 and 32, and the highway product at 704 tokens. Levels a CPU
/// lacks are skipped (listed by `elmo devices`).
#[divan::bench(args = ["scalar", "avx2", "avx512", "avx512bf16"], consts = [1, 32, 640, 704])]
fn strips_gemm_level<const M: usize>(b: Bencher, level: &str) {
    let level: elmo::cpu::SimdLevel = level.parse().unwrap();
    if !level.available() || (level == elmo::cpu::SimdLevel::Scalar && M > 1) {
        return;
    }
    // (k, n): batch 1 and 32 run the LSTM's recurrent product (P x 4U);
    // 704 tokens the highway carry product (F x F).
    let (k, n) = if M == 704 { (F, F) } else { (P, 4 * U) };
    let a = values(M * k, 11);
    let w = pack_strips(&values(k * n, 12), k, n);
    let w = Strips::new(&w, k, n);
    let mut c = vec![0f32; M * n];
    b.counter(ItemsCount::new(2 * M * k * n)).bench_local(|| {
        elmo::cpu::strips_gemm_at(level, M, &a, k, w, 0, w.n_strips(), &mut c, n, false).unwrap();
        black_box(&c);
    });
}

/// bf16 weights at `avx512` (widened exactly to f32, f32 fma, f32
/// activations), at `avx512bf16` (`vdpbf16ps` on activations rounded to
/// bf16) and at `amx` (AMX-BF16 tiles on the same activations), in this
/// process: the shapes of [`strips_gemm_level`]. Counted in
/// FLOPs, and at batch 1 (memory-bound: 16 MiB of weights) also in bytes of
/// weights read. Levels a CPU lacks are skipped.
#[divan::bench(
    args = ["avx512", "avx512bf16", "avx512bf16-paired", "avx512bf16-paired-view", "amx-paired", "amx-paired-view"],
    consts = [1, 32, 640, 704]
)]
fn strips_gemm_bf16<const M: usize>(b: Bencher, level: &str) {
    let view = level.ends_with("-view");
    let level = level.trim_end_matches("-view");
    let paired = level.ends_with("-paired");
    let level: elmo::cpu::SimdLevel = level.trim_end_matches("-paired").parse().unwrap();
    if !level.available() {
        return;
    }
    let (k, n) = if M == 704 { (F, F) } else { (P, 4 * U) };
    // `-view`: the first k rows of a 2k-deep matrix, as the LSTM reads the
    // input half of its kernel `W_0`.
    let depth = if view { 2 * k } else { k };
    let a = values(M * k, 11);
    let w: Vec<u16> = pack_strips(&values(depth * n, 12), depth, n)
        .iter()
        .map(|&x| elmo::tensor::f32_to_bf16(x))
        .collect();
    let w = if paired {
        elmo::layout::pair_strip_rows(&w, depth, n)
    } else {
        w
    };
    let w = if paired {
        Strips::new_paired(&w, depth, n)
    } else {
        Strips::new(&w, depth, n)
    }
    .rows(0, k);
    let mut c = vec![0f32; M * n];
    let b = b.counter(ItemsCount::new(2 * M * k * n));
    let b = if M == 1 {
        b.counter(BytesCount::new(2 * k * n))
    } else {
        b
    };
    b.bench_local(|| {
        elmo::cpu::strips_gemm_at(level, M, &a, k, w, 0, w.n_strips(), &mut c, n, false).unwrap();
        black_box(&c);
    });
}

/// The machine's peak beside the kernels: one core's fp32 FMA rate with 12
/// independent accumulators (register-only, no memory), on 256-bit (`avx2`)
/// and 512-bit (`avx512`) registers, and `vdpbf16ps` (`avx512bf16`: 32
/// multiply-adds of bf16 pairs per instruction), and AMX (`amx`: 4
/// independent `tdpbf16ps` of 16 x 16 x 32 on zeroed tiles). Counted in
/// FLOPs.
#[divan::bench(args = ["avx2", "avx512", "avx512bf16", "amx"])]
fn peak_fma(b: Bencher, level: &str) {
    let level: elmo::cpu::SimdLevel = level.parse().unwrap();
    if !level.available() {
        return;
    }
    const ITERS: usize = 1 << 16;
    // Multiply-adds per iteration.
    let macs = match level {
        elmo::cpu::SimdLevel::Avx2 => 12 * 8,
        elmo::cpu::SimdLevel::Avx512 => 12 * 16,
        elmo::cpu::SimdLevel::Amx => 4 * 16 * 16 * 32,
        _ => 12 * 32,
    };
    b.counter(ItemsCount::new(2 * macs * ITERS))
        .bench_local(|| black_box(peak::run(level, ITERS)));
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    pub fn run(level: elmo::cpu::SimdLevel, iters: usize) -> f32 {
        // SAFETY: `peak_fma` runs a level only where `available()` says the
        // CPU has its features.
        unsafe {
            match level {
                elmo::cpu::SimdLevel::Avx2 => fma256(iters),
                elmo::cpu::SimdLevel::Avx512 => fma512(iters),
                elmo::cpu::SimdLevel::Amx => tiles(iters),
                _ => dpbf16(iters),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn fma256(iters: usize) -> f32 {
        // Opaque inputs: constants would let the compiler fold the chains.
        let (x, y) = (_mm256_set1_ps(black_box(0.999)), _mm256_set1_ps(black_box(1e-3)));
        let mut acc = [_mm256_set1_ps(black_box(1.5)); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        let s = acc.iter().fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
        _mm256_cvtss_f32(s)
    }

    #[target_feature(enable = "avx512f")]
    fn fma512(iters: usize) -> f32 {
        let (x, y) = (_mm512_set1_ps(black_box(0.999)), _mm512_set1_ps(black_box(1e-3)));
        let mut acc = [_mm512_set1_ps(black_box(1.5)); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a)))
    }

    /// `iters` x 4 tile products: C tiles 0-3 (16 x 16 f32), A tiles 4-5
    /// and W tiles 6-7 (16 x 64 bytes), all zero.
    ///
    /// # Safety
    /// `SimdLevel::Amx.available()` (the process holds the tile permission).
    unsafe fn tiles(iters: usize) -> f32 {
        use std::arch::asm;
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut cfg = Config([0; 64]);
        cfg.0[0] = 1; // palette 1
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64; // bytes per row
            cfg.0[48 + t] = 16; // rows
        }
        // SAFETY: a valid palette-1 configuration in a process that
        // `amx_usable` approved; the tiles used are the ones it defines,
        // and the instructions touch no memory but the configuration.
        unsafe {
            asm!("ldtilecfg [{p}]", p = in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7",
                options(nostack, nomem)
            );
            for _ in 0..black_box(iters) {
                asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    options(nostack, nomem)
                );
            }
            asm!("tilerelease", options(nostack, nomem));
        }
        0.0
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    fn dpbf16(iters: usize) -> f32 {
        let x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(black_box(0.5)), _mm512_set1_ps(black_box(0.25)));
        let mut acc = [_mm512_set1_ps(black_box(1.5)); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, x, x);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a)))
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod peak {
    pub fn run(_: elmo::cpu::SimdLevel, _: usize) -> f32 {
        0.0
    }
}

/// The LSTM cell of one sentence (U = 4096 units: 16384 gate values in, in
/// L2) at each SIMD level this CPU has, in this process (`scalar` the
/// reference beside them; `avx512bf16` runs the `avx512` cell). Counted in
/// units.
#[divan::bench(args = ["scalar", "avx2", "avx512"])]
fn lstm_cell_row(b: Bencher, level: &str) {
    let level: elmo::cpu::SimdLevel = level.parse().unwrap();
    if !level.available() {
        return;
    }
    let (zx, zh, bias) = (values(4 * U, 21), values(4 * U, 22), values(4 * U, 23));
    let (mut c, mut m) = (values(U, 24), vec![0f32; U]);
    b.counter(ItemsCount::new(U)).bench_local(|| {
        elmo::cpu::lstm_cell_at(level, &zx, &zh, &bias, &mut c, &mut m, Some(3.0)).unwrap();
        black_box(&m);
    });
}
