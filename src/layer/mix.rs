//! The trainable scalar mix of the biLM layers (bilm-tf's `weight_layers`):
//! `gamma * sum_k softmax(w + 1/K)_k * layer_k`, optionally on layer-normalised
//! layers, or `gamma * top layer`.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::train::autograd::{Param, Var};

/// How a mix combines the layers (bilm-tf's `weight_layers` arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixConfig {
    /// Normalise each layer with one mean and variance over all real
    /// positions of the batch and all dims (eps 1e-12) before mixing.
    pub do_layer_norm: bool,
    /// Use only the top layer: `gamma * layer_top` (`w` unused, no layer norm).
    pub use_top_only: bool,
    /// Coefficient of the L2 penalty `l2_coef * sum(w^2)` ([`ScalarMix::l2_loss`]).
    pub l2_coef: f32,
}

impl Default for MixConfig {
    fn default() -> Self {
        MixConfig {
            do_layer_norm: false,
            use_top_only: false,
            l2_coef: 0.0,
        }
    }
}

/// One scalar mix: its parameters `w` (K,) and `gamma` (1,) and its config.
#[derive(Debug, Clone)]
pub struct ScalarMix {
    /// Unnormalised layer weights, shape (K,).
    pub weights: Param,
    /// Scale, shape (1,).
    pub gamma: Param,
    /// How the layers are combined.
    pub config: MixConfig,
}

impl ScalarMix {
    /// A mix of `n_layers` layers starting at `w`, `gamma` (bilm-tf starts at
    /// zeros and 1). Values must be finite.
    pub fn new(n_layers: usize, w: &[f32], gamma: f32, config: MixConfig, trainable: bool) -> Result<Self> {
        if n_layers == 0 {
            return Err(Error::Input("a mix needs at least one layer".into()));
        }
        if w.len() != n_layers {
            return Err(Error::Input(format!(
                "mix weights have {} values, the model has {n_layers} layers",
                w.len()
            )));
        }
        if !w.iter().all(|x| x.is_finite()) || !gamma.is_finite() || !config.l2_coef.is_finite() {
            return Err(Error::Input(format!(
                "mix parameters must be finite (weights {w:?}, gamma {gamma}, l2 {})",
                config.l2_coef
            )));
        }
        Ok(ScalarMix {
            weights: Param::new("mix/weights", Tensor::from_vec(&[n_layers], w.to_vec())?, trainable),
            gamma: Param::new("mix/gamma", Tensor::from_vec(&[1], vec![gamma])?, trainable),
            config,
        })
    }

    /// Number of layers mixed.
    pub fn n_layers(&self) -> usize {
        self.weights.value().len()
    }

    /// `softmax(w + 1/K)`, the normalised layer weights.
    pub fn normalized_weights(&self) -> Result<Vec<f32>> {
        Ok(self.softmax_var(&self.weights.var())?.value().data().to_vec())
    }

    fn softmax_var(&self, w: &Var) -> Result<Var> {
        let k = self.n_layers();
        // bilm-tf adds 1/K before the softmax; it cancels, but keeps rounding identical.
        w.add(&Var::constant(Tensor::from_vec(&[1], vec![1.0 / k as f32])?))?
            .softmax()
    }

    /// Mixes `layers` (B, K, T, D) into (B, T, D). `mask` (B, T) marks real
    /// positions (layer-norm statistics use only those). With `mask_output`
    /// padded positions are zero in the result; without, the result is
    /// bilm-tf's (layer norm and mixing applied to every position).
    pub fn forward(&self, layers: &Tensor, mask: &[f32], mask_output: bool) -> Result<Var> {
        let &[b, k, t, d] = layers.shape() else {
            return Err(Error::Shape(format!(
                "mix input must be (B, K, T, D), got {:?}",
                layers.shape()
            )));
        };
        if k != self.n_layers() {
            return Err(Error::Shape(format!("mix of {} layers given {k}", self.n_layers())));
        }
        if mask.len() != b * t {
            return Err(Error::Shape(format!("mask has {} values for ({b}, {t})", mask.len())));
        }
        // Weights of a mean and of the layer-norm statistics: anything but
        // 0 and 1 (NaN, -1) would be garbage returned as Ok.
        if let Some(i) = mask.iter().position(|&m| m != 0.0 && m != 1.0) {
            return Err(Error::Input(format!(
                "mask values must be 0 or 1, got {} at {i}",
                mask[i]
            )));
        }
        let src = layers.data();
        let layer = |kk: usize| -> Vec<f32> {
            let mut v = Vec::with_capacity(b * t * d);
            for bi in 0..b {
                let o = (bi * k + kk) * t * d;
                v.extend_from_slice(&src[o..o + t * d]);
            }
            v
        };
        let mixed = if self.config.use_top_only {
            Var::constant(Tensor::from_vec(&[b, t, d], layer(k - 1))?)
        } else {
            // (K, B*T*D): each row one layer, normalised if asked.
            let mut x = Vec::with_capacity(k * b * t * d);
            for kk in 0..k {
                let mut l = layer(kk);
                if self.config.do_layer_norm {
                    layer_norm(&mut l, mask, d);
                }
                x.extend_from_slice(&l);
            }
            let x = Var::constant(Tensor::from_vec(&[k, b * t * d], x)?);
            // (1, K) x (K, B*T*D)
            self.softmax_var(&self.weights.var())?
                .reshape(&[1, k])?
                .matmul(&x)?
                .reshape(&[b, t, d])?
        };
        let out = mixed.mul(&self.gamma.var())?;
        // A large gamma can overflow float32: an error for every caller
        // (CLI, server, Python), not infinities returned as Ok.
        if !out.value().data().iter().all(|v| v.is_finite()) {
            return Err(Error::Input(
                "the mix overflows float32 (inf or NaN): gamma or the layer weights are too large".into(),
            ));
        }
        if mask_output {
            out.mul(&Var::constant(Tensor::from_vec(&[b, t, 1], mask.to_vec())?))
        } else {
            Ok(out)
        }
    }

    /// bilm-tf's regularisation term `l2_coef * sum(w^2)` (0-d).
    pub fn l2_loss(&self) -> Result<Var> {
        let w = self.weights.var();
        w.mul(&w)?
            .sum()?
            .mul(&Var::constant(Tensor::from_vec(&[], vec![self.config.l2_coef])?))
    }
}

/// bilm-tf's `_do_ln` on one layer `x` (B*T*D) in place: one mean and
/// variance over the real positions (`mask`, B*T) and all D dims, applied to
/// every position. Sums are taken in f64. Without real positions, nothing.
pub fn layer_norm(x: &mut [f32], mask: &[f32], d: usize) {
    let n: f64 = mask.iter().map(|&m| m as f64).sum::<f64>() * d as f64;
    if n == 0.0 {
        return;
    }
    let mut sum = 0f64;
    for (row, &m) in x.chunks_exact(d).zip(mask) {
        sum += row.iter().map(|&v| (v * m) as f64).sum::<f64>();
    }
    let mean = (sum / n) as f32;
    let mut ss = 0f64;
    for (row, &m) in x.chunks_exact(d).zip(mask) {
        ss += row
            .iter()
            .map(|&v| (((v * m) - mean) * m) as f64)
            .map(|v| v * v)
            .sum::<f64>();
    }
    let var = (ss / n) as f32;
    let inv = 1.0 / (var + 1e-12).sqrt();
    for v in x.iter_mut() {
        *v = (*v - mean) * inv;
    }
}
