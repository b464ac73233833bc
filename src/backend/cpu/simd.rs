//! Which kernels run: the SIMD level, picked once per process at run time.
//!
//! * `amx`: as `avx512bf16`, except that products with bf16 weights run
//!   on AMX-BF16 tiles (`tdpbf16ps`, `strips_amx.rs`, model
//!   [`strips_gemm_amx_ref`](super::strips_gemm_amx_ref)): the activations
//!   rounded to bf16 as at `avx512bf16`, each element summed in blocks of
//!   32 products by the tile unit. At every batch size, batch 1 included,
//!   so a sentence's bits do not depend on its batch. Products with f32
//!   weights run the `avx512` kernels (AMX has no f32 tiles), so f32 files
//!   give the same bits as at `avx512`. Needs Linux's permission for the
//!   tile data ([`amx_usable`](super::amx_usable)); without it `avx512bf16`
//!   is the best level.
//! * `avx512bf16`: as `avx512`, except that products with bf16 weights
//!   (model files converted with `--dtype bf16`) run on AVX512-BF16's
//!   `vdpbf16ps`: the activations are rounded to bf16 (to nearest even)
//!   once per product and each product element sums pairs of bf16
//!   products (`strips_bf16.rs`, reference
//!   [`strips_gemm_bf16dot_ref`](super::strips_gemm_bf16dot_ref)). Products
//!   with f32 weights run the `avx512` kernels, so f32 files give the same
//!   bits as at `avx512`.
//! * `avx512`: the strip-packed products on 512-bit registers (AVX-512F),
//!   one register per 16-column strip; bf16 weights are widened exactly to
//!   f32 and the arithmetic is f32 fma (the activations stay f32); the
//!   element-wise kernels as at `avx2`.
//! * `avx2`: AVX2 + FMA through `wide` (the build's baseline,
//!   x86-64-v3).
//! * `scalar`: the plain references everywhere (the strip products as
//!   `f32::mul_add` loops, the LSTM cell and highway blend by
//!   [`lstm_cell_ref`](super::lstm_cell_ref) and
//!   [`highway_blend_ref`](super::highway_blend_ref)).
//!
//! The best level the CPU has is used unless `ELMO_SIMD` names one
//! (`scalar`, `avx2`, `avx512`, `avx512bf16`, `amx`); a level the CPU lacks, or an
//! unknown name, is refused by [`simd_level_checked`] (which
//! `ElmoModel::load` calls) with a message naming what the CPU has. So
//! `ELMO_SIMD=avx512` keeps a bf16 file on the widening f32 path (f32
//! activations) on a CPU that has AVX512-BF16.
//!
//! Results: `scalar`, `avx2` and `avx512` compute each product element as
//! the same fma chain (`p = 0..k` in order), so `avx512` and `avx2` agree
//! bitwise, for f32 and bf16 weights alike; the `scalar` level's
//! element-wise functions differ from the vectorised ones in the last bits.
//! `avx512bf16` agrees bitwise with `avx512` on f32 files; on bf16 files
//! its results differ from the other levels' (bf16 activations: about 8
//! significant bits per activation instead of 24, see docs/performance.md
//! for the error against the f32 goldens); `amx` agrees bitwise with
//! `avx512` on f32 files, and differs from `avx512bf16` in the last bits on
//! bf16 files (the tile unit sums 32 products before rounding). Within a
//! level results never
//! depend on the batch, thread count or memory budget.

use crate::error::{Error, Result};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A set of kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// The plain references.
    Scalar,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512F for the products.
    Avx512,
    /// AVX-512F, and AVX512-BF16 (with AVX512BW) for the products with
    /// bf16 weights.
    Avx512Bf16,
    /// As `Avx512Bf16`, with the products with bf16 weights on AMX-BF16
    /// tiles.
    Amx,
}

impl SimdLevel {
    /// Every level, slowest first.
    pub const ALL: [SimdLevel; 5] = [
        SimdLevel::Scalar,
        SimdLevel::Avx2,
        SimdLevel::Avx512,
        SimdLevel::Avx512Bf16,
        SimdLevel::Amx,
    ];

    /// `scalar`, `avx2`, `avx512`, `avx512bf16` or `amx`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Avx512Bf16 => "avx512bf16",
            SimdLevel::Amx => "amx",
        }
    }

    /// Whether this CPU (and this build) can run the level.
    pub fn available(self) -> bool {
        match self {
            SimdLevel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => {
                // The build's baseline: without it compiled in, the `wide`
                // kernels are SSE and `avx2` would be a lie.
                cfg!(all(target_feature = "avx2", target_feature = "fma"))
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => SimdLevel::Avx2.available() && std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512Bf16 => {
                // `vpermw` (AVX512BW) pairs the weights' rows for `vdpbf16ps`.
                SimdLevel::Avx512.available()
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Amx => super::amx_usable(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Whether the level's bf16 kernels read the paired layout
    /// ([`pair_strip_rows`](crate::layout::pair_strip_rows)) fastest:
    /// `avx512bf16` and `amx`, which the model copies bf16 matrices into
    /// at load.
    pub fn reads_paired_bf16(self) -> bool {
        matches!(self, SimdLevel::Avx512Bf16 | SimdLevel::Amx)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SimdLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SimdLevel::ALL
            .into_iter()
            .find(|l| l.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::Simd(format!(
                    "unknown SIMD level '{s}': expected one of scalar, avx2, avx512, avx512bf16, amx (this CPU has {})",
                    names(&available_levels())
                ))
            })
    }
}

fn names(levels: &[SimdLevel]) -> String {
    levels.iter().map(|l| l.name()).collect::<Vec<_>>().join(", ")
}

/// The levels this CPU can run, slowest first.
pub fn available_levels() -> Vec<SimdLevel> {
    SimdLevel::ALL.into_iter().filter(|l| l.available()).collect()
}

/// The fastest level this CPU can run.
pub fn best_level() -> SimdLevel {
    available_levels().into_iter().last().unwrap_or(SimdLevel::Scalar)
}

/// Why this build runs no SIMD level on a CPU that has AVX2 and FMA: it
/// was compiled without them (not for x86-64-v3, which the repository's
/// `.cargo/config.toml` sets: a build started outside the repository's
/// folder, e.g. `cargo build --manifest-path`, does not read it), so every
/// level is the scalar one, ~10x slower. `None` when the build has them, or
/// the CPU does not.
pub fn missing_baseline() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if !cfg!(all(target_feature = "avx2", target_feature = "fma"))
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        return Some(
            "this build was compiled without AVX2 and FMA (not for x86-64-v3) although the CPU has them: \
             build from the repository's folder, whose .cargo/config.toml sets it, or with \
             RUSTFLAGS=\"-C target-cpu=x86-64-v3\"",
        );
    }
    None
}

/// The level `ELMO_SIMD` asks for (checked), else the best.
fn choose() -> Result<SimdLevel> {
    match std::env::var("ELMO_SIMD") {
        Ok(v) if !v.trim().is_empty() => {
            let level: SimdLevel = v.parse()?;
            if let (false, Some(why)) = (level.available(), missing_baseline()) {
                return Err(Error::Simd(format!("ELMO_SIMD={v}: {why}")));
            }
            if !level.available() {
                return Err(Error::Simd(format!(
                    "ELMO_SIMD={v}: this CPU cannot run {level} (it has {})",
                    names(&available_levels())
                )));
            }
            Ok(level)
        }
        _ => Ok(best_level()),
    }
}

static CHOSEN: OnceLock<Result<SimdLevel>> = OnceLock::new();

/// The level this process runs, or why `ELMO_SIMD` cannot be honoured.
pub fn simd_level_checked() -> Result<SimdLevel> {
    match CHOSEN.get_or_init(choose) {
        Ok(l) => Ok(*l),
        Err(e) => Err(Error::Simd(e.to_string().trim_start_matches("simd: ").to_string())),
    }
}

/// The level this process runs; where `ELMO_SIMD` cannot be honoured (an
/// error [`simd_level_checked`] reports), the best level.
pub fn simd_level() -> SimdLevel {
    simd_level_checked().unwrap_or_else(|_| best_level())
}

static CALLS: [AtomicU64; SimdLevel::ALL.len()] = [const { AtomicU64::new(0) }; SimdLevel::ALL.len()];

/// Counts a strip product run at `level` (so that a test can tell which
/// kernels a run used).
#[inline]
pub(super) fn count(level: SimdLevel) {
    CALLS[level.index()].fetch_add(1, Ordering::Relaxed);
}

/// Strip products run at `level` in this process so far.
pub fn kernel_calls(level: SimdLevel) -> u64 {
    CALLS[level.index()].load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_the_best_level_is_available() {
        for l in SimdLevel::ALL {
            assert_eq!(l.name().parse::<SimdLevel>().unwrap(), l);
        }
        assert!("AVX2".parse::<SimdLevel>().is_ok());
        let e = "sse9".parse::<SimdLevel>().unwrap_err().to_string();
        assert!(
            e.contains("unknown SIMD level 'sse9'") && e.contains("this CPU has scalar"),
            "{e}"
        );
        assert!(best_level().available());
        assert!(available_levels().contains(&SimdLevel::Scalar));
    }
}
