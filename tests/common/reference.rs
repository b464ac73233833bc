//! A plain float64 re-implementation of the biLM, written from the semantics
//! in the golden README (as `numpy_reference.py`): sentence by sentence, no
//! packing, no matrix library. It checks the fast path on configurations
//! TensorFlow goldens do not cover (other filters, layer counts, activations,
//! no projection, no clipping, other token lengths).

use elmo::model_file::lstm_name;
use elmo::options::Activation;
use elmo::{CharIds, ElmoModel};

fn w(model: &ElmoModel, name: &str) -> Vec<f64> {
    model.file().values(name).unwrap().iter().map(|&x| x as f64).collect()
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `x (n) @ m (n, k)`.
fn vecmat(x: &[f64], m: &[f64], k: usize) -> Vec<f64> {
    let mut out = vec![0.0; k];
    for (i, &xi) in x.iter().enumerate() {
        for j in 0..k {
            out[j] += xi * m[i * k + j];
        }
    }
    out
}

/// Token embedding of one position's character ids.
pub fn token_embedding(model: &ElmoModel, ids: &[u16]) -> Vec<f64> {
    let o = model.options();
    let e = o.char_cnn.embedding_dim;
    let table = w(model, "char_embed");
    let c = ids.len();
    let mut h = Vec::new();
    for (i, &(width, num)) in o.char_cnn.filters.iter().enumerate() {
        let k = w(model, &format!("CNN/W_cnn_{i}")); // (1, w, E, n)
        let b = w(model, &format!("CNN/b_cnn_{i}"));
        for f in 0..num {
            let mut best = f64::NEG_INFINITY;
            for p in 0..=c - width {
                let mut s = b[f];
                for q in 0..width {
                    for d in 0..e {
                        s += table[ids[p + q] as usize * e + d] * k[(q * e + d) * num + f];
                    }
                }
                best = best.max(s);
            }
            h.push(match o.char_cnn.activation {
                Activation::Relu => best.max(0.0),
                Activation::Tanh => best.tanh(),
            });
        }
    }
    let nf = h.len();
    for l in 0..o.char_cnn.n_highway {
        let pre = format!("CNN_high_{l}/");
        let carry = vecmat(&h, &w(model, &(pre.clone() + "W_carry")), nf);
        let trans = vecmat(&h, &w(model, &(pre.clone() + "W_transform")), nf);
        let (bc, bt) = (w(model, &(pre.clone() + "b_carry")), w(model, &(pre + "b_transform")));
        h = (0..nf)
            .map(|j| {
                let g = sig(carry[j] + bc[j]);
                g * (trans[j] + bt[j]).max(0.0) + (1.0 - g) * h[j]
            })
            .collect();
    }
    if o.has_projection() {
        let p = o.lstm.projection_dim;
        let b = w(model, "CNN_proj/b_proj");
        h = vecmat(&h, &w(model, "CNN_proj/W_proj"), p)
            .iter()
            .zip(&b)
            .map(|(x, y)| x + y)
            .collect();
    }
    h
}

fn clip(x: f64, c: Option<f32>) -> f64 {
    match c {
        Some(c) => x.clamp(-(c as f64), c as f64),
        None => x,
    }
}

/// `(B, L + 1, T, 2P)` with zero padding, as [`elmo::BiLmOutput::data`].
pub fn forward(model: &ElmoModel, ids: &CharIds) -> Vec<f64> {
    let o = model.options();
    let (p, u, nl) = (o.lstm.projection_dim, o.lstm.dim, o.lstm.n_layers);
    let lens: Vec<usize> = (0..ids.batch()).map(|b| ids.raw_length(b)).collect();
    let t_max = lens.iter().map(|&l| l.saturating_sub(2)).max().unwrap_or(0);
    let mut out = vec![0.0; ids.batch() * (nl + 1) * t_max * 2 * p];
    for (b, &len) in lens.iter().enumerate() {
        let tok: Vec<Vec<f64>> = (0..len).map(|t| token_embedding(model, ids.token(b, t))).collect();
        // layers[k][dir][t] in natural order
        let mut dirs = [Vec::new(), Vec::new()];
        for (d, dir_out) in dirs.iter_mut().enumerate() {
            let mut x: Vec<Vec<f64>> = if d == 0 {
                tok.clone()
            } else {
                tok.iter().rev().cloned().collect()
            };
            for l in 0..nl {
                let kern = w(model, &lstm_name(d, l, "W_0"));
                let bias = w(model, &lstm_name(d, l, "B"));
                let wp = w(model, &lstm_name(d, l, "W_P_0"));
                let (mut c, mut m) = (vec![0.0; u], vec![0.0; p]);
                let mut y = Vec::new();
                for xt in &x {
                    let inp: Vec<f64> = xt.iter().chain(&m).copied().collect();
                    let z = vecmat(&inp, &kern, 4 * u);
                    let mut mm = vec![0.0; u];
                    for k in 0..u {
                        let (i, j, f, og) = (
                            z[k] + bias[k],
                            z[u + k] + bias[u + k],
                            z[2 * u + k] + bias[2 * u + k],
                            z[3 * u + k] + bias[3 * u + k],
                        );
                        c[k] = clip(sig(f + 1.0) * c[k] + sig(i) * j.tanh(), o.lstm.cell_clip);
                        mm[k] = sig(og) * c[k].tanh();
                    }
                    m = vecmat(&mm, &wp, p)
                        .into_iter()
                        .map(|v| clip(v, o.lstm.proj_clip))
                        .collect();
                    let skip = o.lstm.use_skip_connections && l > 0;
                    y.push(
                        m.iter()
                            .zip(xt)
                            .map(|(a, b)| if skip { a + b } else { *a })
                            .collect::<Vec<f64>>(),
                    );
                }
                x = y;
                dir_out.push(if d == 0 {
                    x.clone()
                } else {
                    x.iter().rev().cloned().collect()
                });
            }
        }
        for j in 0..len.saturating_sub(2) {
            for k in 0..=nl {
                let dst = ((b * (nl + 1) + k) * t_max + j) * 2 * p;
                let (lo, hi) = if k == 0 {
                    (&tok[j + 1], &tok[j + 1])
                } else {
                    (&dirs[0][k - 1][j + 1], &dirs[1][k - 1][j + 1])
                };
                out[dst..dst + p].copy_from_slice(lo);
                out[dst + p..dst + 2 * p].copy_from_slice(hi);
            }
        }
    }
    out
}
