//! Reverse-mode automatic differentiation on [`Tensor`]s.
//!
//! A [`Var`] is a value plus, only when one of its inputs needs a gradient,
//! the operation that made it (an `Op`, which holds its inputs). Inference on
//! constants therefore records nothing: each op's result drops its inputs at
//! once. [`Var::backward`] sorts the recorded graph topologically and applies
//! each op's derivative (all of them in one `match`, formula beside each),
//! accumulating gradients per node; a [`Param`] used several times gets the
//! sum of its uses.
//!
//! Binary element-wise ops broadcast like NumPy (shapes aligned at the right,
//! size-1 or missing dimensions repeat); their gradients are summed back over
//! the broadcast dimensions.
//!
//! Files: this one holds the graph and the forward ops; `backward.rs` every
//! derivative; `broadcast.rs` NumPy broadcasting; `param.rs` parameters and
//! gradients.

use crate::backend::cpu::{gemm_strided, sigmoid};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

mod backward;
mod broadcast;
mod param;
#[cfg(test)]
mod tests;

use backward::{input_grads, op_inputs};
pub use broadcast::broadcast_shape;
use broadcast::{broadcast_binary, map};
pub use param::{Grads, Param};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn fresh_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A node of the computation: a value and, when it needs a gradient, how it
/// was made.
#[derive(Clone)]
pub struct Var(Arc<Node>);

struct Node {
    id: u64,
    value: Tensor,
    requires_grad: bool,
    op: Option<Op>,
}

/// The recorded operations. Inputs are held only while a gradient may flow.
enum Op {
    Add(Var, Var),
    Sub(Var, Var),
    Mul(Var, Var),
    Div(Var, Var),
    MatMul(Var, Var),
    Relu(Var),
    Sigmoid(Var),
    Tanh(Var),
    Exp(Var),
    Log(Var),
    Softmax(Var),
    Sum(Var),
    Mean(Var),
    /// (B, T, D) -> (B, D); `weights[b, t]` = mask / max(count, 1).
    MaskedMean(Var, Vec<f32>),
    Reshape(Var),
    /// Parts joined along an axis.
    Concat(Vec<Var>, usize),
    /// `(x, axis, start)`: a run of entries along an axis (length from the output).
    Slice(Var, usize, usize),
    /// `(table, ids)`: rows of a (V, D) table.
    Gather(Var, Vec<usize>),
    /// `(x, w, pad_left)`: 1-D convolution of (B, T, C) by (k, C, F).
    Conv1d(Var, Var, usize),
    /// Max over axis 1 of (B, T, C).
    MaxOverTime(Var),
    /// Mean binary cross-entropy of logits against labels.
    BceLogits(Var, Vec<f32>),
    /// Mean binary cross-entropy of probabilities (clipped to [eps, 1 - eps]).
    BceProbs(Var, Vec<f32>),
}

/// Keras' epsilon: probabilities are clipped to `[EPS, 1 - EPS]` in the loss.
pub const EPS: f32 = 1e-7;

/// `(outer, n, inner)`: sizes before, at and after `axis`.
fn split_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// im2col of (B, T, C) for kernel width k: (B * T_out, k * C), zero outside.
fn im2col(x: &[f32], b: usize, t: usize, c: usize, k: usize, pad_left: usize, t_out: usize) -> Vec<f32> {
    let mut cols = vec![0f32; b * t_out * k * c];
    for bi in 0..b {
        for to in 0..t_out {
            for j in 0..k {
                let ti = (to + j) as isize - pad_left as isize;
                if ti >= 0 && (ti as usize) < t {
                    let src = (bi * t + ti as usize) * c;
                    let dst = ((bi * t_out + to) * k + j) * c;
                    cols[dst..dst + c].copy_from_slice(&x[src..src + c]);
                }
            }
        }
    }
    cols
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Var")
            .field("shape", &self.shape())
            .field("requires_grad", &self.0.requires_grad)
            .finish_non_exhaustive()
    }
}

impl Var {
    /// A constant: no gradient flows into it.
    pub fn constant(value: Tensor) -> Var {
        Self::leaf(value, false)
    }

    /// A leaf, recording gradients when `requires_grad`.
    pub fn leaf(value: Tensor, requires_grad: bool) -> Var {
        Var(Arc::new(Node {
            id: fresh_id(),
            value,
            requires_grad,
            op: None,
        }))
    }

    fn record(value: Tensor, op: Op, inputs: &[&Var]) -> Var {
        let requires_grad = inputs.iter().any(|v| v.0.requires_grad);
        Var(Arc::new(Node {
            id: fresh_id(),
            value,
            requires_grad,
            // Inference: the op (and with it every input) is dropped here.
            op: if requires_grad { Some(op) } else { None },
        }))
    }

    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.0.value
    }

    /// The value's shape.
    pub fn shape(&self) -> &[usize] {
        self.0.value.shape()
    }

    /// Whether a gradient flows into this node.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// Whether an operation was recorded for this node (false for leaves and
    /// for every result computed from constants only).
    pub fn has_graph(&self) -> bool {
        self.0.op.is_some()
    }

    /// Element-wise `self + rhs` with broadcasting.
    pub fn add(&self, rhs: &Var) -> Result<Var> {
        let v = broadcast_binary(self.value(), rhs.value(), |a, b| a + b)?;
        Ok(Self::record(v, Op::Add(self.clone(), rhs.clone()), &[self, rhs]))
    }

    /// Element-wise `self - rhs` with broadcasting.
    pub fn sub(&self, rhs: &Var) -> Result<Var> {
        let v = broadcast_binary(self.value(), rhs.value(), |a, b| a - b)?;
        Ok(Self::record(v, Op::Sub(self.clone(), rhs.clone()), &[self, rhs]))
    }

    /// Element-wise `self * rhs` with broadcasting.
    pub fn mul(&self, rhs: &Var) -> Result<Var> {
        let v = broadcast_binary(self.value(), rhs.value(), |a, b| a * b)?;
        Ok(Self::record(v, Op::Mul(self.clone(), rhs.clone()), &[self, rhs]))
    }

    /// Element-wise `self / rhs` with broadcasting.
    pub fn div(&self, rhs: &Var) -> Result<Var> {
        let v = broadcast_binary(self.value(), rhs.value(), |a, b| a / b)?;
        Ok(Self::record(v, Op::Div(self.clone(), rhs.clone()), &[self, rhs]))
    }

    /// Matrix product of 2-D values, `(m, k) x (k, n)`.
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        let v = self.value().matmul(rhs.value())?;
        Ok(Self::record(v, Op::MatMul(self.clone(), rhs.clone()), &[self, rhs]))
    }

    fn unary(&self, f: impl Fn(f32) -> f32, op: fn(Var) -> Op) -> Result<Var> {
        let v = map(self.value(), f)?;
        Ok(Self::record(v, op(self.clone()), &[self]))
    }

    /// `max(x, 0)`.
    pub fn relu(&self) -> Result<Var> {
        self.unary(|x| x.max(0.0), Op::Relu)
    }

    /// `1 / (1 + exp(-x))`.
    pub fn sigmoid(&self) -> Result<Var> {
        self.unary(sigmoid, Op::Sigmoid)
    }

    /// `tanh(x)`.
    pub fn tanh(&self) -> Result<Var> {
        self.unary(f32::tanh, Op::Tanh)
    }

    /// `exp(x)`.
    pub fn exp(&self) -> Result<Var> {
        self.unary(f32::exp, Op::Exp)
    }

    /// Natural logarithm.
    pub fn ln(&self) -> Result<Var> {
        self.unary(f32::ln, Op::Log)
    }

    /// Softmax over the last axis (max-shifted, so large inputs are safe).
    pub fn softmax(&self) -> Result<Var> {
        let x = self.value();
        let d = *x
            .shape()
            .last()
            .ok_or_else(|| Error::Shape("softmax of a 0-d value".into()))?;
        let mut out = x.data().to_vec();
        if d > 0 {
            for row in out.chunks_exact_mut(d) {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0.0;
                for v in row.iter_mut() {
                    *v = (*v - m).exp();
                    s += *v;
                }
                for v in row.iter_mut() {
                    *v /= s;
                }
            }
        }
        let v = Tensor::from_vec(x.shape(), out)?;
        Ok(Self::record(v, Op::Softmax(self.clone()), &[self]))
    }

    /// Sum of all elements, a 0-d value.
    pub fn sum(&self) -> Result<Var> {
        let s: f32 = self.value().data().iter().sum();
        Ok(Self::record(
            Tensor::from_vec(&[], vec![s])?,
            Op::Sum(self.clone()),
            &[self],
        ))
    }

    /// Mean of all elements, a 0-d value.
    pub fn mean(&self) -> Result<Var> {
        let n = self.value().len().max(1) as f32;
        let s: f32 = self.value().data().iter().sum();
        Ok(Self::record(
            Tensor::from_vec(&[], vec![s / n])?,
            Op::Mean(self.clone()),
            &[self],
        ))
    }

    /// Mean over the time axis of a `(B, T, D)` value, counting only
    /// positions where `mask` (B, T) is non-zero: `sum_t mask x / max(n, 1)`,
    /// so a row without any real position gives zeros.
    pub fn masked_mean(&self, mask: &[f32]) -> Result<Var> {
        let &[b, t, d] = self.shape() else {
            return Err(Error::Shape(format!(
                "masked_mean needs (B, T, D), got {:?}",
                self.shape()
            )));
        };
        if mask.len() != b * t {
            return Err(Error::Shape(format!("mask has {} values for ({b}, {t})", mask.len())));
        }
        let mut weights = mask.to_vec();
        for row in weights.chunks_exact_mut(t.max(1)) {
            let n: f32 = row.iter().filter(|&&m| m != 0.0).count() as f32;
            for w in row.iter_mut() {
                *w = if *w != 0.0 { 1.0 / n.max(1.0) } else { 0.0 };
            }
        }
        let x = self.value().data();
        let mut out = vec![0f32; b * d];
        for bi in 0..b {
            let o = &mut out[bi * d..(bi + 1) * d];
            for ti in 0..t {
                let w = weights[bi * t + ti];
                if w != 0.0 {
                    for (acc, &v) in o.iter_mut().zip(&x[(bi * t + ti) * d..(bi * t + ti + 1) * d]) {
                        *acc += v;
                    }
                }
            }
            let n = (0..t).filter(|&ti| weights[bi * t + ti] != 0.0).count().max(1) as f32;
            for acc in o.iter_mut() {
                *acc /= n;
            }
        }
        let v = Tensor::from_vec(&[b, d], out)?;
        Ok(Self::record(v, Op::MaskedMean(self.clone(), weights), &[self]))
    }

    /// The same values under another shape.
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let v = self.value().clone().reshape(shape)?;
        Ok(Self::record(v, Op::Reshape(self.clone()), &[self]))
    }

    /// Joins values along `axis`; all other dimensions must agree.
    pub fn concat(parts: &[Var], axis: usize) -> Result<Var> {
        let first = parts.first().ok_or_else(|| Error::Shape("concat of nothing".into()))?;
        let mut shape = first.shape().to_vec();
        if axis >= shape.len() {
            return Err(Error::Shape(format!("concat axis {axis} of shape {shape:?}")));
        }
        shape[axis] = 0;
        for p in parts {
            let s = p.shape();
            let same = s.len() == shape.len() && s.iter().enumerate().all(|(i, &d)| i == axis || d == shape[i]);
            if !same {
                return Err(Error::Shape(format!(
                    "concat along {axis}: {:?} vs {s:?}",
                    first.shape()
                )));
            }
            shape[axis] += s[axis];
        }
        let (outer, _, inner) = split_axis(&shape, axis);
        let mut v = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for p in parts {
                let np = p.shape()[axis];
                v.extend_from_slice(&p.value().data()[o * np * inner..(o + 1) * np * inner]);
            }
        }
        let refs: Vec<&Var> = parts.iter().collect();
        Ok(Self::record(
            Tensor::from_vec(&shape, v)?,
            Op::Concat(parts.to_vec(), axis),
            &refs,
        ))
    }

    /// Entries `start .. start + len` along `axis`.
    pub fn slice(&self, axis: usize, start: usize, len: usize) -> Result<Var> {
        let shape = self.shape();
        if axis >= shape.len() || start.checked_add(len).is_none_or(|e| e > shape[axis]) {
            return Err(Error::Shape(format!(
                "slice {start}..+{len} of axis {axis} of {shape:?}"
            )));
        }
        let (outer, n, inner) = split_axis(shape, axis);
        let mut v = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            v.extend_from_slice(&self.value().data()[(o * n + start) * inner..(o * n + start + len) * inner]);
        }
        let mut out = shape.to_vec();
        out[axis] = len;
        Ok(Self::record(
            Tensor::from_vec(&out, v)?,
            Op::Slice(self.clone(), axis, start),
            &[self],
        ))
    }

    /// Rows of this (V, D) table for `ids` (shape `id_shape`): id_shape + (D,).
    pub fn gather(&self, ids: &[usize], id_shape: &[usize]) -> Result<Var> {
        let &[vocab, d] = self.shape() else {
            return Err(Error::Shape(format!(
                "gather needs a (V, D) table, got {:?}",
                self.shape()
            )));
        };
        if id_shape.iter().product::<usize>() != ids.len() {
            return Err(Error::Shape(format!("{} ids for shape {id_shape:?}", ids.len())));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i >= vocab) {
            return Err(Error::Input(format!("id {bad} is outside the table of {vocab} rows")));
        }
        let t = self.value().data();
        let mut v = Vec::with_capacity(ids.len() * d);
        for &i in ids {
            v.extend_from_slice(&t[i * d..(i + 1) * d]);
        }
        let mut shape = id_shape.to_vec();
        shape.push(d);
        Ok(Self::record(
            Tensor::from_vec(&shape, v)?,
            Op::Gather(self.clone(), ids.to_vec()),
            &[self],
        ))
    }

    /// 1-D convolution (cross-correlation) of (B, T, C) by `w` (k, C, F),
    /// stride 1, with `pad_left` / `pad_right` zeros around time: (B, T_out, F).
    pub fn conv1d(&self, w: &Var, pad_left: usize, pad_right: usize) -> Result<Var> {
        let (&[b, t, c], &[k, c2, f]) = (self.shape(), w.shape()) else {
            return Err(Error::Shape(format!(
                "conv1d needs (B, T, C) and (k, C, F), got {:?} and {:?}",
                self.shape(),
                w.shape()
            )));
        };
        if c != c2 || k == 0 || t + pad_left + pad_right < k {
            return Err(Error::Shape(format!(
                "conv1d of {:?} by kernel {:?}",
                self.shape(),
                w.shape()
            )));
        }
        let t_out = t + pad_left + pad_right - k + 1;
        let cols = im2col(self.value().data(), b, t, c, k, pad_left, t_out);
        let mut out = vec![0f32; b * t_out * f];
        gemm_strided(
            b * t_out,
            k * c,
            f,
            &cols,
            [k * c, 1],
            w.value().data(),
            [f, 1],
            &mut out,
            [f, 1],
            false,
        );
        let v = Tensor::from_vec(&[b, t_out, f], out)?;
        Ok(Self::record(
            v,
            Op::Conv1d(self.clone(), w.clone(), pad_left),
            &[self, w],
        ))
    }

    /// Max over time of (B, T, C): (B, C). Needs T >= 1.
    pub fn max_over_time(&self) -> Result<Var> {
        let &[b, t, c] = self.shape() else {
            return Err(Error::Shape(format!(
                "global max pooling needs (B, T, C), got {:?}",
                self.shape()
            )));
        };
        if t == 0 {
            return Err(Error::Shape("global max pooling over 0 steps".into()));
        }
        let x = self.value().data();
        let mut out = vec![f32::NEG_INFINITY; b * c];
        for bi in 0..b {
            for ti in 0..t {
                for (o, &v) in out[bi * c..(bi + 1) * c]
                    .iter_mut()
                    .zip(&x[(bi * t + ti) * c..(bi * t + ti + 1) * c])
                {
                    *o = o.max(v);
                }
            }
        }
        Ok(Self::record(
            Tensor::from_vec(&[b, c], out)?,
            Op::MaxOverTime(self.clone()),
            &[self],
        ))
    }

    fn check_labels(&self, labels: &[f32]) -> Result<()> {
        if labels.len() != self.value().len() {
            return Err(Error::Shape(format!(
                "{} labels for {} predictions",
                labels.len(),
                self.value().len()
            )));
        }
        if let Some(bad) = labels.iter().find(|&&l| !(0.0..=1.0).contains(&l)) {
            return Err(Error::Input(format!(
                "binary cross-entropy needs labels in [0, 1], got {bad}"
            )));
        }
        Ok(())
    }

    /// Mean binary cross-entropy of these logits against `labels`, computed
    /// stably: `max(z, 0) - z y + ln(1 + exp(-|z|))`.
    pub fn bce_with_logits(&self, labels: &[f32]) -> Result<Var> {
        self.check_labels(labels)?;
        let n = labels.len().max(1) as f32;
        let s: f32 = self
            .value()
            .data()
            .iter()
            .zip(labels)
            .map(|(&z, &y)| z.max(0.0) - z * y + (-z.abs()).exp().ln_1p())
            .sum();
        let v = Tensor::from_vec(&[], vec![s / n])?;
        Ok(Self::record(v, Op::BceLogits(self.clone(), labels.to_vec()), &[self]))
    }

    /// Mean binary cross-entropy of these probabilities against `labels`,
    /// probabilities clipped to `[EPS, 1 - EPS]` as Keras does.
    pub fn bce(&self, labels: &[f32]) -> Result<Var> {
        self.check_labels(labels)?;
        let n = labels.len().max(1) as f32;
        let s: f32 = self
            .value()
            .data()
            .iter()
            .zip(labels)
            .map(|(&p, &y)| {
                let p = p.clamp(EPS, 1.0 - EPS);
                -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
            })
            .sum();
        let v = Tensor::from_vec(&[], vec![s / n])?;
        Ok(Self::record(v, Op::BceProbs(self.clone(), labels.to_vec()), &[self]))
    }

    /// Gradients of this scalar with respect to every node that needs one.
    pub fn backward(&self) -> Result<Grads> {
        if self.value().len() != 1 {
            return Err(Error::Shape(format!(
                "backward needs a scalar loss, got shape {:?}",
                self.shape()
            )));
        }
        let mut grads = Grads::default();
        if !self.requires_grad() {
            return Ok(grads);
        }
        let order = self.topological_order();
        grads.0.insert(self.0.id, Tensor::from_vec(self.shape(), vec![1.0])?);
        for node in order.iter().rev() {
            let Some(op) = &node.0.op else { continue };
            let Some(g) = grads.0.get(&node.0.id).cloned() else {
                continue;
            };
            for (input, gi) in input_grads(op, &g, node.value())? {
                if input.requires_grad() {
                    grads.accumulate(input.0.id, gi)?;
                }
            }
        }
        Ok(grads)
    }

    /// Nodes reachable through recorded ops, inputs before users (iterative,
    /// so deep graphs such as long recurrences do not overflow the stack).
    fn topological_order(&self) -> Vec<Var> {
        let mut order = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![(self.clone(), false)];
        while let Some((v, expanded)) = stack.pop() {
            if expanded {
                order.push(v);
                continue;
            }
            if !seen.insert(Arc::as_ptr(&v.0)) {
                continue;
            }
            stack.push((v.clone(), true));
            if let Some(op) = &v.0.op {
                for input in op_inputs(op) {
                    if input.requires_grad() && !seen.contains(&Arc::as_ptr(&input.0)) {
                        stack.push((input.clone(), false));
                    }
                }
            }
        }
        order
    }
}
