//! Every derivative, in one `match` with its formula beside each arm.

use super::broadcast::{map, reduce_to, zip};
use super::*;

pub(super) fn op_inputs(op: &Op) -> Vec<&Var> {
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
pub(super) fn input_grads<'a>(op: &'a Op, g: &Tensor, y: &Tensor) -> Result<Vec<(&'a Var, Tensor)>> {
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
