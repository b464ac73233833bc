//! The host backend: the GPU pass's kernels computed on the CPU as the CPU
//! path computes them, so its orchestration is tested without a GPU.

use super::*;

/// The forward pass's buffers and kernels on host memory, each kernel
/// computed as the CPU path computes it (the same fma chains, the same
/// vectorised sigmoid and tanh): running [`forward`] with it gives bitwise
/// the CPU path's results, which is how the GPU pass's orchestration
/// (length-sorted prefixes, step rows, reversal, blocks of input products,
/// state order) is tested on machines without a GPU. Each CUDA kernel in
/// `kernels/elmo.cu` names the CPU function it computes.
///
/// With `scalar`, the cell and the highway blend use the scalar references
/// (`cpu::lstm_cell_ref`, libm's `expf`/`tanhf`) instead: each kernel is
/// then, operation for operation, the formula of its CUDA C, which the
/// kernel emulator's tests (`emu.rs`, tests only) compare bitwise.
#[derive(Debug, Default, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct HostBackend {
    pub scalar: bool,
}

/// `impl Upload` for a backend whose buffers are host `Vec`s.
macro_rules! host_upload {
    ($t:ty) => {
        impl $crate::backend::cuda::Upload for $t {
            type F = Vec<f32>;
            fn up_f32(&self, v: &[f32]) -> Result<Vec<f32>> {
                Ok(v.to_vec())
            }
        }
    };
}
#[cfg(test)]
pub(crate) use host_upload;

/// The buffer operations of [`Backend`] for host `Vec`s, inside its impl:
/// uploads and downloads are copies, and `zeros` allocates at least one
/// element, as the CUDA backend does.
macro_rules! host_buffers {
    () => {
        type I = Vec<i32>;
        type C = Vec<u16>;
        fn up_i32(&self, v: &[i32]) -> Result<Vec<i32>> {
            Ok(v.to_vec())
        }
        fn up_u16(&self, v: &[u16]) -> Result<Vec<u16>> {
            Ok(v.to_vec())
        }
        fn zeros(&self, n: usize) -> Result<Vec<f32>> {
            Ok(vec![0.0; n.max(1)])
        }
        fn down(&self, x: &Vec<f32>) -> Result<Vec<f32>> {
            Ok(x.clone())
        }
        fn copy_into(&self, x: &Vec<f32>, y: &mut Vec<f32>, at: usize, len: usize) -> Result<()> {
            y[at..at + len].copy_from_slice(&x[..len]);
            Ok(())
        }
    };
}
#[cfg(test)]
pub(crate) use host_buffers;

host_upload!(HostBackend);

impl Backend for HostBackend {
    host_buffers!();
    fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        a: (&Vec<f32>, usize),
        lda: usize,
        b: (&Vec<f32>, usize),
        ldb: usize,
        c: &mut Vec<f32>,
        ldc: usize,
    ) -> Result<()> {
        // The fma chains of the CPU's strip kernels (B dense: ldb = n).
        assert_eq!(ldb, n, "HostBackend::gemm: B rows must be dense");
        crate::backend::cpu::gemm_fma_ref(m, k, n, &a.0[a.1..], lda, &b.0[b.1..b.1 + k * n], c, ldc);
        Ok(())
    }
    fn char_cnn(
        &self,
        chars: &Vec<u16>,
        table: &Vec<f32>,
        w: &Vec<f32>,
        bias: &Vec<f32>,
        convs: &ConvTable,
        out: &mut Vec<f32>,
        d: CnnDims,
    ) -> Result<()> {
        let f = convs.filters();
        for t in 0..d.n {
            // The block's shared memory: the token's (C, E) embeddings.
            let emb: Vec<f32> = (0..d.c * d.e)
                .map(|q| {
                    let id = chars[t * d.c + q / d.e] as usize;
                    if id < d.n_chars { table[id * d.e + q % d.e] } else { 0.0 }
                })
                .collect();
            for i in 0..convs.n as usize {
                let (width, f0, nf, woff) = convs.conv(i);
                let (k, wi) = (width * d.e, &w[woff..]);
                for j in 0..nf {
                    let mut best = f32::NEG_INFINITY;
                    for pos in 0..=d.c.saturating_sub(width) {
                        let x = &emb[pos * d.e..];
                        let mut s = 0.0f32;
                        for p in 0..k {
                            s = x[p].mul_add(wi[p * nf + j], s);
                        }
                        best = best.max(s);
                    }
                    let v = best + bias[f0 + j];
                    out[t * f + f0 + j] = if d.relu { v.max(0.0) } else { v.tanh() };
                }
            }
        }
        Ok(())
    }
    fn add_bias(&self, x: &mut Vec<f32>, bias: &Vec<f32>, n: usize, w: usize) -> Result<()> {
        for i in 0..n * w {
            x[i] += bias[i % w];
        }
        Ok(())
    }
    fn highway(
        &self,
        x: &mut Vec<f32>,
        carry: &Vec<f32>,
        trans: &Vec<f32>,
        bc: &Vec<f32>,
        bt: &Vec<f32>,
        n: usize,
        f: usize,
    ) -> Result<()> {
        let (mut carry, mut trans) = (carry[..n * f].to_vec(), trans[..n * f].to_vec());
        crate::backend::cpu::add_bias(&mut carry, bc);
        crate::backend::cpu::add_bias(&mut trans, bt);
        if self.scalar {
            for i in 0..n * f {
                let g = crate::backend::cpu::sigmoid(carry[i]);
                x[i] = g * trans[i].max(0.0) + (1.0 - g) * x[i];
            }
        } else {
            crate::backend::cpu::highway_blend(&mut x[..n * f], &carry, &trans);
        }
        Ok(())
    }
    fn gather_rows(
        &self,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        (idx, o): (&Vec<i32>, usize),
        rows: usize,
        w: usize,
    ) -> Result<()> {
        for i in 0..rows * w {
            y[i] = x[idx[o + i / w] as usize * w + i % w];
        }
        Ok(())
    }
    fn lstm_cell(
        &self,
        zx: &Vec<f32>,
        zx_base: usize,
        zh: &Vec<f32>,
        bias: &Vec<f32>,
        c: &mut Vec<f32>,
        m: &mut Vec<f32>,
        na: usize,
        u: usize,
        clip_c: Option<f32>,
    ) -> Result<()> {
        let g = 4 * u;
        let cell = if self.scalar {
            crate::backend::cpu::lstm_cell_ref
        } else {
            crate::backend::cpu::lstm_cell
        };
        for r in 0..na {
            cell(
                &zx[(zx_base + r) * g..(zx_base + r + 1) * g],
                &zh[r * g..(r + 1) * g],
                bias,
                &mut c[r * u..(r + 1) * u],
                &mut m[r * u..(r + 1) * u],
                clip_c,
            );
        }
        Ok(())
    }
    fn lstm_project_out(
        &self,
        hp: &Vec<f32>,
        h: &mut Vec<f32>,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        (rows, o): (&Vec<i32>, usize),
        na: usize,
        p: usize,
        clip_p: Option<f32>,
        residual: bool,
    ) -> Result<()> {
        for i in 0..na * p {
            let (r, k) = (i / p, i % p);
            let v = crate::backend::cpu::clip(hp[i], clip_p);
            h[i] = v;
            let at = rows[o + r] as usize * p + k;
            out[at] = if residual { v + x[at] } else { v };
        }
        Ok(())
    }
}
