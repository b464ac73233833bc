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

use crate::backend::cpu::{gemm_strided, sigmoid};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

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
        let mut grads = Grads(HashMap::new());
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

fn op_inputs(op: &Op) -> Vec<&Var> {
    match op {
        Op::Add(a, b) | Op::Sub(a, b) | Op::Mul(a, b) | Op::Div(a, b) | Op::MatMul(a, b) => vec![a, b],
        Op::Relu(x)
        | Op::Sigmoid(x)
        | Op::Tanh(x)
        | Op::Exp(x)
        | Op::Log(x)
        | Op::Softmax(x)
        | Op::Sum(x)
        | Op::Mean(x)
        | Op::MaskedMean(x, _)
        | Op::Reshape(x)
        | Op::Slice(x, _, _)
        | Op::MaxOverTime(x)
        | Op::BceLogits(x, _)
        | Op::BceProbs(x, _)
        | Op::Gather(x, _) => vec![x],
        Op::Conv1d(x, w, _) => vec![x, w],
        Op::Concat(parts, _) => parts.iter().collect(),
    }
}

/// Every derivative: given the output's gradient `g` and value `y`, the
/// gradient of each input (already reduced to the input's shape).
fn input_grads<'a>(op: &'a Op, g: &Tensor, y: &Tensor) -> Result<Vec<(&'a Var, Tensor)>> {
    let gd = g.data();
    Ok(match op {
        // d(a + b) = da + db
        Op::Add(a, b) => vec![(a, reduce_to(g, a.shape())?), (b, reduce_to(g, b.shape())?)],
        // d(a - b) = da - db
        Op::Sub(a, b) => vec![
            (a, reduce_to(g, a.shape())?),
            (b, reduce_to(&map(g, |x| -x)?, b.shape())?),
        ],
        // d(a b) = b da + a db
        Op::Mul(a, b) => vec![
            (a, reduce_to(&broadcast_binary(g, b.value(), |g, b| g * b)?, a.shape())?),
            (b, reduce_to(&broadcast_binary(g, a.value(), |g, a| g * a)?, b.shape())?),
        ],
        // d(a / b) = da / b - a db / b^2
        Op::Div(a, b) => {
            let ga = broadcast_binary(g, b.value(), |g, b| g / b)?;
            let gb = broadcast_binary(&broadcast_binary(g, y, |g, y| -g * y)?, b.value(), |t, b| t / b)?;
            vec![(a, reduce_to(&ga, a.shape())?), (b, reduce_to(&gb, b.shape())?)]
        }
        // C = A B: dA = dC B^T, dB = A^T dC
        Op::MatMul(a, b) => {
            let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
            let mut ga = vec![0f32; m * k];
            gemm_strided(m, n, k, gd, [n, 1], b.value().data(), [1, n], &mut ga, [k, 1], false);
            let mut gb = vec![0f32; k * n];
            gemm_strided(k, m, n, a.value().data(), [1, k], gd, [n, 1], &mut gb, [n, 1], false);
            vec![(a, Tensor::from_vec(&[m, k], ga)?), (b, Tensor::from_vec(&[k, n], gb)?)]
        }
        // relu'(x) = 1 where x > 0
        Op::Relu(x) => vec![(x, zip(g, x.value(), |g, x| if x > 0.0 { g } else { 0.0 })?)],
        // sigmoid' = y (1 - y)
        Op::Sigmoid(x) => vec![(x, zip(g, y, |g, y| g * y * (1.0 - y))?)],
        // tanh' = 1 - y^2
        Op::Tanh(x) => vec![(x, zip(g, y, |g, y| g * (1.0 - y * y))?)],
        // exp' = y
        Op::Exp(x) => vec![(x, zip(g, y, |g, y| g * y)?)],
        // ln'(x) = 1 / x
        Op::Log(x) => vec![(x, zip(g, x.value(), |g, x| g / x)?)],
        // softmax: dx_i = y_i (g_i - sum_j g_j y_j), per row of the last axis
        Op::Softmax(x) => {
            let d = *y.shape().last().unwrap_or(&1);
            let mut out = vec![0f32; y.len()];
            for ((o, gr), yr) in out
                .chunks_exact_mut(d)
                .zip(gd.chunks_exact(d))
                .zip(y.data().chunks_exact(d))
            {
                let dot: f32 = gr.iter().zip(yr).map(|(g, y)| g * y).sum();
                for ((o, &g), &y) in o.iter_mut().zip(gr).zip(yr) {
                    *o = y * (g - dot);
                }
            }
            vec![(x, Tensor::from_vec(y.shape(), out)?)]
        }
        // d sum(x) / dx_i = 1
        Op::Sum(x) => vec![(x, Tensor::from_vec(x.shape(), vec![gd[0]; x.value().len()])?)],
        // d mean(x) / dx_i = 1 / n
        Op::Mean(x) => {
            let n = x.value().len().max(1) as f32;
            vec![(x, Tensor::from_vec(x.shape(), vec![gd[0] / n; x.value().len()])?)]
        }
        // out[b, d] = sum_t w[b, t] x[b, t, d]  =>  dx[b, t, d] = w[b, t] g[b, d]
        Op::MaskedMean(x, w) => {
            let (b, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
            let mut out = vec![0f32; b * t * d];
            for bi in 0..b {
                for ti in 0..t {
                    let wv = w[bi * t + ti];
                    if wv != 0.0 {
                        let o = &mut out[(bi * t + ti) * d..(bi * t + ti + 1) * d];
                        for (o, &gv) in o.iter_mut().zip(&gd[bi * d..(bi + 1) * d]) {
                            *o = wv * gv;
                        }
                    }
                }
            }
            vec![(x, Tensor::from_vec(x.shape(), out)?)]
        }
        // reshape: the gradient takes the input's shape back
        Op::Reshape(x) => vec![(x, g.clone().reshape(x.shape())?)],
        // concat: each part takes its own run of the gradient
        Op::Concat(parts, axis) => {
            let (outer, n, inner) = split_axis(g.shape(), *axis);
            let mut at = 0;
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                let np = part.shape()[*axis];
                let mut v = Vec::with_capacity(outer * np * inner);
                for o in 0..outer {
                    v.extend_from_slice(&gd[(o * n + at) * inner..(o * n + at + np) * inner]);
                }
                at += np;
                out.push((part, Tensor::from_vec(part.shape(), v)?));
            }
            out
        }
        // slice: the gradient in place, zeros elsewhere
        Op::Slice(x, axis, start) => {
            let (outer, n, inner) = split_axis(x.shape(), *axis);
            let len = g.shape()[*axis];
            let mut v = vec![0f32; x.value().len()];
            for o in 0..outer {
                v[(o * n + start) * inner..(o * n + start + len) * inner]
                    .copy_from_slice(&gd[o * len * inner..(o + 1) * len * inner]);
            }
            vec![(x, Tensor::from_vec(x.shape(), v)?)]
        }
        // gather: d table[r] = sum of the gradients of the rows that read r
        Op::Gather(table, ids) => {
            let d = table.shape()[1];
            let mut v = vec![0f32; table.value().len()];
            for (i, &r) in ids.iter().enumerate() {
                for (a, &gv) in v[r * d..(r + 1) * d].iter_mut().zip(&gd[i * d..(i + 1) * d]) {
                    *a += gv;
                }
            }
            vec![(table, Tensor::from_vec(table.shape(), v)?)]
        }
        // y = im2col(x) W: dW = cols^T dY, d cols = dY W^T, scattered back to x
        Op::Conv1d(x, w, pad_left) => {
            let (b, t, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
            let (k, f) = (w.shape()[0], w.shape()[2]);
            let t_out = g.shape()[1];
            let cols = im2col(x.value().data(), b, t, c, k, *pad_left, t_out);
            let (rows, kc) = (b * t_out, k * c);
            let mut gw = vec![0f32; kc * f];
            gemm_strided(kc, rows, f, &cols, [1, kc], gd, [f, 1], &mut gw, [f, 1], false);
            let mut gcols = vec![0f32; rows * kc];
            gemm_strided(
                rows,
                f,
                kc,
                gd,
                [f, 1],
                w.value().data(),
                [1, f],
                &mut gcols,
                [kc, 1],
                false,
            );
            let mut gx = vec![0f32; b * t * c];
            for bi in 0..b {
                for to in 0..t_out {
                    for j in 0..k {
                        let ti = (to + j) as isize - *pad_left as isize;
                        if ti >= 0 && (ti as usize) < t {
                            let src = ((bi * t_out + to) * k + j) * c;
                            let dst = (bi * t + ti as usize) * c;
                            for (a, &gv) in gx[dst..dst + c].iter_mut().zip(&gcols[src..src + c]) {
                                *a += gv;
                            }
                        }
                    }
                }
            }
            vec![
                (x, Tensor::from_vec(x.shape(), gx)?),
                (w, Tensor::from_vec(w.shape(), gw)?),
            ]
        }
        // y = max_t x: the gradient goes to the maxima, split equally among
        // ties (TensorFlow's rule, and what central differences measure)
        Op::MaxOverTime(x) => {
            let (b, t, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
            let (xd, yd) = (x.value().data(), y.data());
            let mut v = vec![0f32; b * t * c];
            for bi in 0..b {
                for ci in 0..c {
                    let m = yd[bi * c + ci];
                    let ties = (0..t).filter(|&ti| xd[(bi * t + ti) * c + ci] == m).count().max(1) as f32;
                    for ti in 0..t {
                        if xd[(bi * t + ti) * c + ci] == m {
                            v[(bi * t + ti) * c + ci] = gd[bi * c + ci] / ties;
                        }
                    }
                }
            }
            vec![(x, Tensor::from_vec(x.shape(), v)?)]
        }
        // mean(max(z, 0) - z y + ln(1 + e^-|z|)): d/dz = (sigmoid(z) - y) / n
        Op::BceLogits(z, labels) => {
            let n = labels.len().max(1) as f32;
            let v = z
                .value()
                .data()
                .iter()
                .zip(labels)
                .map(|(&z, &l)| gd[0] * (sigmoid(z) - l) / n)
                .collect();
            vec![(z, Tensor::from_vec(z.shape(), v)?)]
        }
        // mean(-(y ln p + (1 - y) ln(1 - p))), p clipped: d/dp = (p - y) / (p (1 - p)) / n
        // inside the clip range, 0 outside (the clip's derivative)
        Op::BceProbs(p, labels) => {
            let n = labels.len().max(1) as f32;
            let v = p
                .value()
                .data()
                .iter()
                .zip(labels)
                .map(|(&p, &l)| {
                    if p > EPS && p < 1.0 - EPS {
                        gd[0] * (p - l) / (p * (1.0 - p)) / n
                    } else {
                        0.0
                    }
                })
                .collect();
            vec![(p, Tensor::from_vec(p.shape(), v)?)]
        }
    })
}

/// Gradients by node, from [`Var::backward`].
#[derive(Debug, Default)]
pub struct Grads(HashMap<u64, Tensor>);

impl Grads {
    fn accumulate(&mut self, id: u64, g: Tensor) -> Result<()> {
        match self.0.get_mut(&id) {
            Some(acc) => {
                for (a, b) in acc.data_mut().iter_mut().zip(g.data()) {
                    *a += b;
                }
            }
            None => {
                self.0.insert(id, g);
            }
        }
        Ok(())
    }

    /// The gradient of a node (`None` if no gradient reached it).
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.0.get(&v.0.id)
    }

    /// The gradient of a parameter, summed over all its uses.
    pub fn param(&self, p: &Param) -> Option<&Tensor> {
        self.0.get(&p.id)
    }
}

/// A named, shared, mutable tensor that training updates: model weights and
/// the mix parameters. Clones share the value.
#[derive(Debug, Clone)]
pub struct Param {
    id: u64,
    name: String,
    trainable: bool,
    value: Arc<RwLock<Tensor>>,
}

impl Param {
    /// A new parameter.
    pub fn new(name: impl Into<String>, value: Tensor, trainable: bool) -> Param {
        Param {
            id: fresh_id(),
            name: name.into(),
            trainable,
            value: Arc::new(RwLock::new(value)),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether optimizers update it and gradients are recorded for it.
    pub fn trainable(&self) -> bool {
        self.trainable
    }

    /// A copy of the current value.
    pub fn value(&self) -> Tensor {
        self.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the value; the shape must stay the same.
    pub fn set(&self, value: Tensor) -> Result<()> {
        let mut v = self.value.write().unwrap_or_else(|e| e.into_inner());
        if v.shape() != value.shape() {
            return Err(Error::Shape(format!(
                "parameter '{}' has shape {:?}, cannot set {:?}",
                self.name,
                v.shape(),
                value.shape()
            )));
        }
        *v = value;
        Ok(())
    }

    /// Applies `f` to the value in place (used by optimizers).
    pub fn update(&self, f: impl FnOnce(&mut [f32])) {
        let mut v = self.value.write().unwrap_or_else(|e| e.into_inner());
        f(v.data_mut());
    }

    /// The parameter as a graph leaf: gradients are recorded for it only when
    /// it is trainable. Its gradient is found with [`Grads::param`].
    pub fn var(&self) -> Var {
        Var(Arc::new(Node {
            id: self.id,
            value: self.value(),
            requires_grad: self.trainable,
            op: None,
        }))
    }
}

fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor> {
    Tensor::from_vec(x.shape(), x.data().iter().map(|&v| f(v)).collect())
}

fn zip(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Result<Tensor> {
    Tensor::from_vec(
        a.shape(),
        a.data().iter().zip(b.data()).map(|(&x, &y)| f(x, y)).collect(),
    )
}

/// NumPy broadcasting of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { 1 };
    (0..n)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(Error::Shape(format!("shapes {a:?} and {b:?} do not broadcast"))),
        })
        .collect()
}

/// Strides of `shape` seen from a broadcast `out` shape (0 on repeated dims).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; out.len()];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        let o = i + out.len() - shape.len();
        strides[o] = if shape[i] == 1 { 0 } else { s };
        s *= shape[i];
    }
    strides
}

/// Calls `f(out_index, a_index, b_index)` for every element of the broadcast.
fn for_each_broadcast(out: &[usize], sa: &[usize], sb: &[usize], mut f: impl FnMut(usize, usize, usize)) {
    let n: usize = out.iter().product();
    let mut idx = vec![0usize; out.len()];
    let (mut ia, mut ib) = (0usize, 0usize);
    for o in 0..n {
        f(o, ia, ib);
        for d in (0..out.len()).rev() {
            idx[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if idx[d] < out[d] {
                break;
            }
            ia -= sa[d] * out[d];
            ib -= sb[d] * out[d];
            idx[d] = 0;
        }
    }
}

fn broadcast_binary(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Result<Tensor> {
    if a.shape() == b.shape() {
        return zip(a, b, f);
    }
    let out = broadcast_shape(a.shape(), b.shape())?;
    let (ad, bd) = (a.data(), b.data());
    if b.len() == 1 {
        let s = bd[0];
        let v = ad.iter().map(|&x| f(x, s)).collect();
        return Tensor::from_vec(&out, v);
    }
    let (sa, sb) = (broadcast_strides(a.shape(), &out), broadcast_strides(b.shape(), &out));
    let mut v = vec![0f32; out.iter().product()];
    for_each_broadcast(&out, &sa, &sb, |o, i, j| v[o] = f(ad[i], bd[j]));
    Tensor::from_vec(&out, v)
}

/// Sums `g` (of a broadcast shape) back to `shape`.
fn reduce_to(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let out = g.shape();
    let s = broadcast_strides(shape, out);
    let mut v = vec![0f32; shape.iter().product()];
    let gd = g.data();
    let zeros = vec![0; out.len()];
    for_each_broadcast(out, &s, &zeros, |o, i, _| v[i] += gd[o]);
    Tensor::from_vec(shape, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(shape, v.to_vec()).unwrap()
    }

    /// Central finite differences of `f` at `x` vs the recorded gradient.
    fn check_grad(x0: &Tensor, f: impl Fn(&Var) -> Var) {
        let p = Param::new("x", x0.clone(), true);
        let loss = f(&p.var());
        let g = loss.backward().unwrap();
        let g = g.param(&p).expect("gradient").data().to_vec();
        let eps = 1e-2f32;
        for (i, &gi) in g.iter().enumerate() {
            let mut up = x0.clone();
            up.data_mut()[i] += eps;
            let mut dn = x0.clone();
            dn.data_mut()[i] -= eps;
            let fu = f(&Var::constant(up)).value().data()[0];
            let fd = f(&Var::constant(dn)).value().data()[0];
            let num = (fu - fd) / (2.0 * eps);
            assert!(
                (num - gi).abs() < 2e-2 * (1.0 + num.abs()),
                "element {i}: numeric {num}, recorded {gi}"
            );
        }
    }

    #[test]
    fn derivatives_match_finite_differences() {
        let x = t(&[2, 3], &[0.3, -0.8, 1.2, 0.5, -0.1, 0.9]);
        let c = Var::constant(t(&[3], &[0.5, -1.5, 2.0]));
        let m = Var::constant(t(&[3, 2], &[0.1, 0.2, -0.3, 0.4, 0.5, -0.6]));
        check_grad(&x, |v| v.add(&c).unwrap().mul(v).unwrap().sum().unwrap());
        check_grad(&x, |v| v.sub(&c).unwrap().div(&c).unwrap().mean().unwrap());
        check_grad(&x, |v| c.div(&v.exp().unwrap()).unwrap().sum().unwrap());
        check_grad(&x, |v| v.matmul(&m).unwrap().tanh().unwrap().sum().unwrap());
        check_grad(&x, |v| v.sigmoid().unwrap().mul(&c).unwrap().sum().unwrap());
        check_grad(&x, |v| v.relu().unwrap().mul(&c).unwrap().sum().unwrap());
        check_grad(&x, |v| v.softmax().unwrap().mul(&c).unwrap().sum().unwrap());
        check_grad(&x, |v| v.exp().unwrap().ln().unwrap().mul(v).unwrap().sum().unwrap());
        check_grad(&x, |v| {
            m.matmul(v)
                .unwrap()
                .reshape(&[9])
                .unwrap()
                .mul(&Var::constant(t(
                    &[9],
                    &[1.0, -1.0, 2.0, 0.5, 0.3, -0.2, 1.5, 0.1, 0.7],
                )))
                .unwrap()
                .sum()
                .unwrap()
        });
        let x3 = t(
            &[2, 3, 2],
            &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2],
        );
        let w = Var::constant(t(&[2, 2], &[1.0, -2.0, 0.5, 3.0]));
        check_grad(&x3, |v| {
            v.masked_mean(&[1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
                .unwrap()
                .mul(&w)
                .unwrap()
                .sum()
                .unwrap()
        });
        // A scalar broadcast against a matrix: its gradient is the sum.
        let s = t(&[1], &[0.7]);
        check_grad(&s, |v| v.mul(&Var::constant(x.clone())).unwrap().sum().unwrap());
    }

    #[test]
    fn structural_ops_and_losses_match_finite_differences() {
        let x = t(
            &[2, 3, 2],
            &[0.3, -0.8, 1.2, 0.5, -0.1, 0.9, 0.7, -0.4, 0.2, 1.1, -0.6, 0.4],
        );
        let probe = Var::constant(t(
            &[2, 5, 2],
            &(0..20).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
        ));
        let other = Var::constant(t(&[2, 2, 2], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]));
        // concat along time (with a constant), then a weighted sum
        check_grad(&x, |v| {
            Var::concat(&[v.clone(), other.clone()], 1)
                .unwrap()
                .mul(&probe)
                .unwrap()
                .sum()
                .unwrap()
        });
        check_grad(&x, |v| v.slice(1, 1, 2).unwrap().tanh().unwrap().sum().unwrap());
        check_grad(&x, |v| v.slice(2, 1, 1).unwrap().exp().unwrap().sum().unwrap());
        // gather rows of a table, a row read twice
        let table = t(&[3, 2], &[0.5, -0.2, 0.1, 0.9, -0.7, 0.3]);
        let w = Var::constant(t(&[2, 2, 2], &[1.0, 2.0, -1.0, 0.5, 0.3, -0.8, 1.5, 0.2]));
        check_grad(&table, |v| {
            v.gather(&[2, 0, 2, 1], &[2, 2])
                .unwrap()
                .mul(&w)
                .unwrap()
                .sum()
                .unwrap()
        });
        // conv1d, 'same' (k = 3: pad 1 + 1) and 'valid', gradients in x and w
        let k = t(
            &[3, 2, 2],
            &[0.2, -0.1, 0.4, 0.3, -0.5, 0.6, 0.1, 0.2, -0.3, 0.7, 0.5, -0.4],
        );
        let kv = Var::constant(k.clone());
        let xv = Var::constant(x.clone());
        let p3 = Var::constant(t(
            &[2, 3, 2],
            &[0.5, -1.0, 2.0, 0.3, -0.2, 1.0, 0.7, 0.1, -0.9, 0.4, 0.8, -0.6],
        ));
        check_grad(&x, |v| v.conv1d(&kv, 1, 1).unwrap().mul(&p3).unwrap().sum().unwrap());
        check_grad(&k, |w| xv.conv1d(w, 1, 1).unwrap().mul(&p3).unwrap().sum().unwrap());
        check_grad(&k, |w| xv.conv1d(w, 0, 0).unwrap().sigmoid().unwrap().sum().unwrap());
        // even kernel, Keras 'same' pads 0 left, 1 right
        let k2 = Var::constant(t(&[2, 2, 1], &[0.3, -0.2, 0.5, 0.1]));
        check_grad(&x, |v| v.conv1d(&k2, 0, 1).unwrap().tanh().unwrap().sum().unwrap());
        // global max pooling, with ties (two equal maxima share the gradient)
        let tied = t(&[1, 4, 2], &[1.0, 0.2, 3.0, -0.5, 3.0, 0.4, 2.0, 0.4]);
        let pw = Var::constant(t(&[1, 2], &[1.5, -2.0]));
        check_grad(&tied, |v| v.max_over_time().unwrap().mul(&pw).unwrap().sum().unwrap());
        check_grad(&x, |v| {
            v.conv1d(&kv, 1, 1)
                .unwrap()
                .relu()
                .unwrap()
                .max_over_time()
                .unwrap()
                .sum()
                .unwrap()
        });
        // binary cross-entropy from logits and from probabilities
        let z = t(&[4, 1], &[2.0, -1.0, 0.3, -3.0]);
        check_grad(&z, |v| v.bce_with_logits(&[1.0, 0.0, 1.0, 1.0]).unwrap());
        check_grad(&z, |v| v.sigmoid().unwrap().bce(&[1.0, 0.0, 1.0, 1.0]).unwrap());
        // broadcasting: (2, 3, 2) with (3, 1) and (2, 1, 2)
        let b1 = t(&[3, 1], &[0.5, -1.0, 2.0]);
        check_grad(&b1, |v| {
            Var::constant(x.clone())
                .mul(v)
                .unwrap()
                .div(&Var::constant(t(&[1], &[1.5])))
                .unwrap()
                .sum()
                .unwrap()
        });
        let b2 = t(&[2, 1, 2], &[0.5, -1.0, 2.0, 0.3]);
        check_grad(&b2, |v| {
            v.sub(&Var::constant(x.clone())).unwrap().tanh().unwrap().sum().unwrap()
        });
    }

    #[test]
    fn losses_are_stable_and_check_labels() {
        let z = Var::constant(t(&[2], &[100.0, -100.0]));
        let l = z.bce_with_logits(&[1.0, 0.0]).unwrap().value().data()[0];
        assert!(l.is_finite() && l < 1e-6, "{l}");
        let p = Var::constant(t(&[2], &[1.0, 0.0]));
        assert!(
            p.bce(&[0.0, 1.0]).unwrap().value().data()[0].is_finite(),
            "clipped, not infinite"
        );
        assert!(z.bce_with_logits(&[1.0, 2.0]).is_err());
        assert!(z.bce_with_logits(&[1.0]).is_err());
        let x = Var::constant(t(&[1, 2, 1], &[1.0, 2.0]));
        assert!(x.slice(1, 1, 2).is_err());
        assert!(Var::constant(t(&[2, 2], &[0.0; 4])).gather(&[2], &[1]).is_err());
        assert!(
            x.conv1d(&Var::constant(t(&[3, 1, 1], &[1.0; 3])), 0, 0).is_err(),
            "kernel longer than input"
        );
    }

    #[test]
    fn inference_records_nothing() {
        let a = Var::constant(t(&[2], &[1.0, 2.0]));
        let b = a.mul(&a).unwrap().exp().unwrap();
        assert!(!b.has_graph() && !b.requires_grad());
        let p = Param::new("w", t(&[2], &[1.0, 2.0]), false);
        assert!(
            !p.var().mul(&a).unwrap().has_graph(),
            "frozen parameters record nothing"
        );
        let q = Param::new("w", t(&[2], &[1.0, 2.0]), true);
        assert!(q.var().mul(&a).unwrap().has_graph());
    }

    #[test]
    fn masked_mean_of_empty_row_is_zero_and_shapes_checked() {
        let x = Var::constant(t(&[2, 2, 1], &[1.0, 3.0, 5.0, 7.0]));
        assert_eq!(
            x.masked_mean(&[1.0, 1.0, 0.0, 0.0]).unwrap().value().data(),
            &[2.0, 0.0]
        );
        assert!(x.masked_mean(&[1.0]).is_err());
        assert!(x.add(&Var::constant(t(&[3, 1, 1], &[0.0; 3]))).is_err());
        assert!(x.backward().is_err(), "non-scalar loss");
        assert_eq!(broadcast_shape(&[2, 1, 3], &[4, 1]).unwrap(), vec![2, 4, 3]);
    }

    #[test]
    fn a_parameter_used_twice_gets_the_sum() {
        let p = Param::new("p", t(&[1], &[3.0]), true);
        let loss = p.var().mul(&p.var()).unwrap().sum().unwrap(); // p^2
        assert_eq!(loss.backward().unwrap().param(&p).unwrap().data(), &[6.0]);
    }
}
