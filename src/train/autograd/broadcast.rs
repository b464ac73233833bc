//! NumPy broadcasting for the binary element-wise ops, and the sums that
//! bring a broadcast gradient back to an input's shape.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub(super) fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Result<Tensor> {
    Tensor::from_vec(x.shape(), x.data().iter().map(|&v| f(v)).collect())
}

pub(super) fn zip(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Result<Tensor> {
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

pub(super) fn broadcast_binary(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Result<Tensor> {
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
pub(super) fn reduce_to(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
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
