//! The LSTM of one direction on the CPU: layers, step groups, the
//! threads that share a step, and skip connections.

use super::*;

/// What [`ElmoModel::lstm_layer`] runs on beside its matrices: the layer,
/// its input rows (and the distinct words), the sentences, the initial
/// state and the threads per step.
type LayerArgs<'a> = (
    &'a LstmLayer,
    (&'a [f32], Option<Words<'a>>),
    &'a [(usize, usize)],
    Option<&'a (Vec<f32>, Vec<f32>)>,
    usize,
);

impl ElmoModel {
    /// All layers of one direction. `x`: (N, P) layer-0 input in processing
    /// order; `words`: when words repeat, the distinct rows of `x` (W, P)
    /// and the row of every position; `init[l]`: the starting (c, h) rows of
    /// layer l, or zeros; `parts`: threads sharing each step.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lstm_direction(
        &self,
        d: usize,
        x0: Vec<f32>,
        words: Option<Words<'_>>,
        segs: &[(usize, usize)],
        init: &[Option<(Vec<f32>, Vec<f32>)>],
        parts: usize,
    ) -> DirectionOut {
        let lo = &self.options().lstm;
        let (p, u) = (lo.projection_dim, lo.dim);
        let mut outputs: Vec<Vec<f32>> = Vec::with_capacity(lo.n_layers);
        let mut finals = Vec::with_capacity(lo.n_layers);
        for (l, layer) in self.lstm[d].iter().enumerate() {
            let init = init[l].as_ref();
            // Layer l reads layer l - 1's outputs (layer 0 the token embeddings).
            let x: &[f32] = if l == 0 { &x0 } else { &outputs[l - 1] };
            // The same call for each pairing of f32 / bf16 matrices.
            let words = if l == 0 { words } else { None };
            let args = (layer, (x, words), segs, init, parts);
            let (out, fin) = match (layer.kernel.view(2 * p, 4 * u), layer.projection.view(u, p)) {
                (MatView::F32(k), MatView::F32(pj)) => self.lstm_layer(l, k, pj, args),
                (MatView::Bf16(k), MatView::Bf16(pj)) => self.lstm_layer(l, k, pj, args),
                (MatView::F32(k), MatView::Bf16(pj)) => self.lstm_layer(l, k, pj, args),
                (MatView::Bf16(k), MatView::F32(pj)) => self.lstm_layer(l, k, pj, args),
            };
            finals.push(fin);
            outputs.push(out);
        }
        DirectionOut { outputs, finals }
    }

    /// One LSTM layer of one direction over all steps; weights f32 or bf16
    /// (`T` for the kernel, `Q` for the projection), strip-packed. Returns
    /// the outputs (N, P) in processing order and the final (c, h) of every
    /// sentence.
    ///
    /// Each step's work is split into `n_parts` shares run in parallel: a
    /// share owns a range of units (its columns of all four gates, its cell
    /// states) and a range of the projection's columns. Every output element
    /// is the same fma chain whatever the split, so results are bitwise the
    /// same for any thread count and batch.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lstm_layer<T: WeightElem, Q: WeightElem>(
        &self,
        l: usize,
        w0: Strips<'_, T>,
        wp: Strips<'_, Q>,
        (layer, (x, words), segs, init, n_parts): LayerArgs<'_>,
    ) -> (Vec<f32>, (Vec<f32>, Vec<f32>)) {
        let lo = &self.options().lstm;
        let (p, u, b) = (lo.projection_dim, lo.dim, segs.len());
        let n = x.len() / p;
        let (mut cs, mut hs) = match init {
            Some((c0, h0)) => (c0.clone(), h0.clone()),
            None => (vec![0f32; b * u], vec![0f32; b * p]),
        };
        let mut out = vec![0f32; n * p];
        // Many sentences: one group after the other (memory budget).
        let limits = Limits::new(self.options(), self.budget);
        for g0 in (0..b).step_by(limits.group.max(1)) {
            let g1 = (g0 + limits.group).min(b);
            self.lstm_group(
                l,
                (w0, wp),
                layer,
                (x, words),
                &segs[g0..g1],
                (&mut cs[g0 * u..g1 * u], &mut hs[g0 * p..g1 * p]),
                &mut out,
                n_parts,
                limits.zx_rows,
            );
        }
        (out, (cs, hs))
    }

    /// [`lstm_layer`](Self::lstm_layer) for a group of sentences `segs`
    /// (rows of `x` and `out` by their offsets), whose (c, h) are `state`;
    /// at most `zx_rows` rows of input-side products at once. `words`: the
    /// distinct rows of `x` and each position's, when rows repeat.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lstm_group<T: WeightElem, Q: WeightElem>(
        &self,
        l: usize,
        (w0, wp): (Strips<'_, T>, Strips<'_, Q>),
        layer: &LstmLayer,
        (x, words): (&[f32], Option<Words<'_>>),
        segs: &[(usize, usize)],
        (cs, hs): (&mut [f32], &mut [f32]),
        out: &mut [f32],
        n_parts: usize,
        zx_rows: usize,
    ) {
        let lo = &self.options().lstm;
        let (p, u, b) = (lo.projection_dim, lo.dim, segs.len());
        let max_len = segs.iter().map(|s| s.1).max().unwrap_or(0);
        let (w_in, w_h) = (w0.rows(0, p), w0.rows(p, p));
        let mut parts = Part::split(n_parts, u, p, layer.bias.data());
        for part in &mut parts {
            part.zx = self.scratch.take();
            let (u0, u1) = part.units;
            part.c = (0..b)
                .flat_map(|i| cs[i * u + u0..i * u + u1].iter().copied())
                .collect();
        }
        // The input half of every gate product, one matrix product for a
        // block of steps: all steps at once unless that would exceed
        // `zx_rows` rows (a 100,000-token sentence), which bounds memory.
        // Rows give the same bits whichever block computes them.
        let mut block_steps = (zx_rows / b.max(1)).max(1);
        let mut xb = Vec::new();
        // Repeated rows (layer 0: the same word at several positions): the
        // products of the group's distinct rows, once, for every step.
        // `row_at[off + s - base]`: the row of sentence (off, len)'s step s.
        let base = segs.first().map_or(0, |s| s.0);
        let mut row_at = Vec::new();
        let mut once = None;
        if let Some((wx, index)) = words {
            let mut local = vec![usize::MAX; wx.len() / p.max(1)];
            let mut rows = 0;
            for &(off, len) in segs {
                for &g in &index[off..off + len] {
                    if local[g] == usize::MAX {
                        local[g] = rows;
                        rows += 1;
                    }
                    row_at.push(local[g]);
                }
            }
            if rows <= zx_rows && rows < row_at.len() {
                let mut word_of = vec![0; rows];
                for (g, &r) in local.iter().enumerate().filter(|(_, r)| **r != usize::MAX) {
                    word_of[r] = g;
                }
                for g in word_of {
                    xb.extend_from_slice(&wx[g * p..(g + 1) * p]);
                }
                block_steps = max_len.max(1);
                once = Some(rows);
            } else {
                row_at = Vec::new();
            }
        }
        let mut zx_row = vec![
            usize::MAX;
            if once.is_some() {
                0
            } else {
                block_steps.min(max_len.max(1)) * b
            }
        ]; // (step in block, sentence) -> row
        let mut step_rows = vec![usize::MAX; b];
        let mut hbuf = vec![0f32; b * p];
        let mut mbuf = vec![0f32; b * u];
        let mut active = Vec::with_capacity(b);
        let residual = lo.use_skip_connections && l > 0;
        for t in 0..max_len {
            if t % block_steps == 0 {
                let rows = if let Some(rows) = once.take() {
                    rows
                } else {
                    let t1 = (t + block_steps).min(max_len);
                    xb.clear();
                    zx_row.fill(usize::MAX);
                    let mut rows = 0;
                    for s in t..t1 {
                        for (i, &(off, len)) in segs.iter().enumerate() {
                            if len > s {
                                zx_row[(s - t) * b + i] = rows;
                                xb.extend_from_slice(&x[(off + s) * p..(off + s + 1) * p]);
                                rows += 1;
                            }
                        }
                    }
                    rows
                };
                // (rows, 4w) per part = x (rows, P) x its gate columns of W_x.
                each_part(&mut parts, |part| {
                    let w4 = 4 * (part.units.1 - part.units.0);
                    part.zx.resize(rows * w4, 0.0);
                    for &(s0, s1, col) in &part.gates {
                        crate::backend::cpu::strips_gemm(rows, &xb, p, w_in, s0, s1, &mut part.zx[col..], w4, false);
                    }
                });
            }
            // Sentences still running at step t; the others keep their state.
            active.clear();
            active.extend((0..b).filter(|&i| segs[i].1 > t));
            let na = active.len();
            for (r, &i) in active.iter().enumerate() {
                hbuf[r * p..(r + 1) * p].copy_from_slice(&hs[i * p..(i + 1) * p]);
            }
            // Alternate the order weights are read in from step to step: the
            // ones read last are the likeliest to still be in cache.
            let rev = t % 2 == 1;
            for (i, &(off, len)) in segs.iter().enumerate() {
                step_rows[i] = if len <= t {
                    usize::MAX
                } else if row_at.is_empty() {
                    zx_row[(t % block_steps) * b + i]
                } else {
                    row_at[off + t - base]
                };
            }
            each_part(&mut parts, |part| {
                let w = part.units.1 - part.units.0;
                // (na, 4w) = m_{t-1} (na, P) x this part's gate columns of W_h.
                part.zh.resize(na * 4 * w, 0.0);
                part.m.resize(na * w, 0.0);
                let ng = part.gates.len();
                for i in 0..ng {
                    let (s0, s1, col) = part.gates[if rev { ng - 1 - i } else { i }];
                    crate::backend::cpu::strips_gemm(na, &hbuf, p, w_h, s0, s1, &mut part.zh[col..], 4 * w, rev);
                }
                for (r, &i) in active.iter().enumerate() {
                    // z = [x, m] W + b, gates i, j, f, o; forget bias 1.0 at run time.
                    let row = step_rows[i];
                    lstm_cell(
                        &part.zx[row * 4 * w..(row + 1) * 4 * w],
                        &part.zh[r * 4 * w..(r + 1) * 4 * w],
                        &part.bias,
                        &mut part.c[i * w..(i + 1) * w],
                        &mut part.m[r * w..(r + 1) * w],
                        lo.cell_clip,
                    );
                }
            });
            for part in &parts {
                let (u0, u1) = part.units;
                let w = u1 - u0;
                for r in 0..na {
                    mbuf[r * u + u0..r * u + u1].copy_from_slice(&part.m[r * w..(r + 1) * w]);
                }
            }
            // (na, P) = (sigmoid(o) tanh(c)) (na, U) x W_P (U, P), by columns.
            each_part(&mut parts, |part| {
                let (j0, j1) = part.proj_cols(p);
                part.h.resize(na * (j1 - j0), 0.0);
                let (s0, s1) = part.proj;
                crate::backend::cpu::strips_gemm(na, &mbuf, u, wp, s0, s1, &mut part.h, j1 - j0, rev);
            });
            for part in &parts {
                let (j0, j1) = part.proj_cols(p);
                let pw = j1 - j0;
                for (r, &i) in active.iter().enumerate() {
                    let row = segs[i].0 + t;
                    for (k, &v) in (j0..j1).zip(&part.h[r * pw..(r + 1) * pw]) {
                        let m = clip(v, lo.proj_clip);
                        hs[i * p + k] = m;
                        // The skip connection is added to the output, not the state.
                        out[row * p + k] = if residual { m + x[row * p + k] } else { m };
                    }
                }
            }
        }
        for part in &mut parts {
            let (u0, u1) = part.units;
            let w = u1 - u0;
            for i in 0..b {
                cs[i * u + u0..i * u + u1].copy_from_slice(&part.c[i * w..(i + 1) * w]);
            }
            // Kept for the next layer or pass, up to what the budget gives
            // both directions' input-side products at once.
            self.scratch.give(std::mem::take(&mut part.zx), self.budget / 4);
        }
    }
}
