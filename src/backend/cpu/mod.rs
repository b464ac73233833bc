//! CPU kernels: the matrix product (through `matrixmultiply`), the
//! strip-packed weight product and the element-wise non-linearities, each
//! with a plain reference that tests compare against.
//!
//! Files: `cache.rs` the last-level cache size; `gemm.rs` the plain product; `strips.rs` the strip-packed product
//! (f32 and bf16 weights) on AVX2 and its scalar reference,
//! `strips_avx512.rs` on AVX-512F, `strips_bf16.rs` bf16 weights on
//! AVX512-BF16 (`vdpbf16ps`) and that kernel's scalar reference,
//! `strips_amx.rs` bf16 weights on AMX tiles, its detection and its scalar
//! model; `cell.rs` the element-wise kernels (`cell_avx512.rs` the LSTM
//! cell on AVX-512F); `simd.rs` which level runs (picked at run time,
//! `ELMO_SIMD` forces one).

pub mod cache;
mod cell;
#[cfg(target_arch = "x86_64")]
mod cell_avx512;
mod gemm;
pub mod simd;
mod strips;
mod strips_amx;
#[cfg(target_arch = "x86_64")]
mod strips_avx512;
mod strips_bf16;
#[cfg(test)]
mod tests;

pub use cell::*;
pub use gemm::*;
pub use simd::{SimdLevel, available_levels, kernel_calls, simd_level, simd_level_checked};
pub use strips::*;
pub use strips_amx::{AMX_K_BLOCK, amx_usable, strips_gemm_amx_ref};
pub use strips_bf16::{bf16_round_activation, strips_gemm_bf16dot_ref};

/// Rows `index[i]` of `x` (rows of `w` values), one after the other; empty
/// for an empty `x`.
pub(crate) fn gather_rows(x: &[f32], index: &[usize], w: usize) -> Vec<f32> {
    if x.is_empty() {
        return Vec::new();
    }
    let mut y = Vec::with_capacity(index.len() * w);
    for &i in index {
        y.extend_from_slice(&x[i * w..(i + 1) * w]);
    }
    y
}

// The product of two tensors lives with the kernels it calls, so that the
// tensor type depends on no backend.
mod tensor_product {
    use super::gemm;
    use crate::error::{Error, Result};
    use crate::tensor::Tensor;

    impl Tensor {
        /// Row-major matrix product of two 2-D tensors, `(m, k) x (k, n)`.
        pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
            let (&[m, k], &[k2, n]) = (self.shape(), rhs.shape()) else {
                return Err(Error::Shape(format!(
                    "matmul needs 2-D tensors, got {:?} and {:?}",
                    self.shape(),
                    rhs.shape()
                )));
            };
            if k != k2 {
                return Err(Error::Shape(format!(
                    "matmul {:?} x {:?}: inner sizes differ",
                    self.shape(),
                    rhs.shape()
                )));
            }
            let mut out = vec![0.0; m * n];
            gemm(m, k, n, self.data(), k, rhs.data(), n, &mut out, n, false);
            Tensor::from_vec(&[m, n], out)
        }
    }
}
