//! One CPU forward pass: tokens, the LSTM directions of every layer,
//! state in and out, and the output assembled in the caller's layout.

use super::*;

impl ElmoModel {
    pub(super) fn run(
        &self,
        ids: &CharIds,
        state: Option<&mut LstmState>,
        keep: bool,
    ) -> Result<(BiLmOutput, Option<Intermediates>)> {
        let o = self.options();
        let (p, u, nl) = (o.lstm.projection_dim, o.lstm.dim, o.lstm.n_layers);
        let c = o.ids_per_token();
        if ids.chars() != c {
            return Err(Error::Input(format!(
                "char ids have {} ids per token, the model expects {c}",
                ids.chars()
            )));
        }
        self.check_id_range(ids)?;
        let b = ids.batch();
        if let Some(s) = state.as_deref() {
            if s.capacity < b {
                return Err(Error::State(format!(
                    "batch of {b} sentences is larger than the state's capacity {}",
                    s.capacity
                )));
            }
            if (s.n_layers, s.dim, s.proj) != (nl, u, p) {
                return Err(Error::State("the state was made for a model of another size".into()));
            }
        }
        // Packed layout: sentence b occupies rows off[b] .. off[b] + len[b].
        let lens: Vec<usize> = (0..b).map(|i| ids.raw_length(i)).collect();
        let mut offs = Vec::with_capacity(b);
        let mut n = 0usize;
        for &l in &lens {
            offs.push(n);
            n += l;
        }
        let mut packed = Vec::with_capacity(n * c);
        for (i, &l) in lens.iter().enumerate() {
            for t in 0..l {
                packed.extend_from_slice(ids.token(i, t));
            }
        }
        // Both directions at once; each reads its sentences in its own order.
        let segs: Vec<(usize, usize)> = offs.iter().copied().zip(lens.iter().copied()).collect();
        let init = |d: usize, l: usize| -> Option<(Vec<f32>, Vec<f32>)> {
            state.as_deref().map(|s| {
                let (rc, rh) = s.rows(d, l);
                (s.c[rc][..b * u].to_vec(), s.h[rh][..b * p].to_vec())
            })
        };
        let init0: Vec<_> = (0..nl).map(|l| init(0, l)).collect();
        let init1: Vec<_> = (0..nl).map(|l| init(1, l)).collect();
        let accel = match &self.accel {
            Some(Accel::Cuda(g)) => Some(g.run(&packed, &segs, [&init0, &init1], (keep, self.share_words))?),
            #[cfg(test)]
            Some(Accel::Test(run)) => Some(run(&packed, &segs, [&init0, &init1], (keep, self.share_words))?),
            None => None,
        };
        let (tokens, fwd, bwd, gpu_data) = if let Some(r) = accel {
            let ([o0, o1], [f0, f1]) = (r.outputs, r.finals);
            (
                TokenOut {
                    tok: r.tok,
                    cnn: r.cnn,
                    highway: r.highway,
                    ..TokenOut::default()
                },
                DirectionOut {
                    outputs: o0,
                    finals: f0,
                },
                DirectionOut {
                    outputs: o1,
                    finals: f1,
                },
                Some(r.data),
            )
        } else {
            let tokens = self.tokens(&packed, keep);
            let reversed = reverse_segments(&tokens.tok, &segs, p);
            // Repeated words: layer 0's input-side products once per word.
            // `rev`: the word of every position in the backward direction's order.
            let rev: Vec<usize> = segs
                .iter()
                .filter(|_| !tokens.index.is_empty())
                .flat_map(|&(off, len)| tokens.index[off..off + len].iter().rev().copied())
                .collect();
            let words = |d: usize| {
                (!tokens.index.is_empty())
                    .then(|| (&tokens.words[..], if d == 0 { &tokens.index[..] } else { &rev[..] }))
            };
            // Small batches: one direction after the other, every thread on a
            // share of each step. Larger ones: the directions side by side,
            // each with half the threads on shares of its steps (two threads:
            // one each; without the shares a batch of 32 kept 2 of 16 cores
            // busy in the LSTM).
            let big = 5 * u * p >= SHARED_STEPS_MIN_WEIGHTS;
            let threads = rayon::current_num_threads();
            let (fwd, mut bwd) =
                if b <= SHARED_STEPS_MAX_BATCH && big && threads > 1 && !self.step_weights_stay_cached() {
                    (
                        self.lstm_direction(0, tokens.tok.clone(), words(0), &segs, &init0, threads),
                        self.lstm_direction(1, reversed, words(1), &segs, &init1, threads),
                    )
                } else {
                    // An odd thread count: the forward direction gets the extra one.
                    let (n0, n1) = if big {
                        (threads.div_ceil(2).max(1), (threads / 2).max(1))
                    } else {
                        (1, 1)
                    };
                    rayon::join(
                        || self.lstm_direction(0, tokens.tok.clone(), words(0), &segs, &init0, n0),
                        || self.lstm_direction(1, reversed, words(1), &segs, &init1, n1),
                    )
                };
            for out in &mut bwd.outputs {
                *out = reverse_segments(out, &segs, p);
            }
            (tokens, fwd, bwd, None)
        };
        if let Some(s) = state {
            for (d, dir) in [&fwd, &bwd].into_iter().enumerate() {
                for (l, (fc, fh)) in dir.finals.iter().enumerate() {
                    let (rc, rh) = s.rows(d, l);
                    s.c[rc][..b * u].copy_from_slice(fc);
                    s.h[rh][..b * p].copy_from_slice(fh);
                }
            }
        }

        // Remove the boundaries: token j of sentence b is raw position j + 1.
        let t_max = lens.iter().map(|&l| l.saturating_sub(2)).max().unwrap_or(0);
        let (nk, dim) = (nl + 1, 2 * p);
        // The GPU assembles its output on the device.
        let data = match gpu_data {
            Some(d) => d,
            None => self.assemble(&segs, &tokens.tok, &fwd, &bwd, t_max)?,
        };
        let out = BiLmOutput {
            lengths: lens.iter().map(|&l| l.saturating_sub(2)).collect(),
            n_layers: nk,
            max_len: t_max,
            dim,
            data,
        };
        let inter = if keep {
            Some(self.intermediates(ids, &segs, &tokens, &fwd, &bwd, &init0, &init1)?)
        } else {
            None
        };
        Ok((out, inter))
    }

    /// Whether both directions' step weights (per direction, the largest
    /// layer's recurrent half of `W_0` and projection) fit in the
    /// last-level cache [`STEP_WEIGHTS_PER_CACHE`] times over, so that at
    /// small batches the directions run side by side (see
    /// [`SHARED_STEPS_MAX_BATCH`]); or what
    /// [`with_shared_steps`](Self::with_shared_steps) or
    /// `ELMO_SHARED_STEPS=1` (`0`) ask for. Results are the same bits
    /// either way.
    fn step_weights_stay_cached(&self) -> bool {
        if let Some(shared) = self.shared_steps {
            return !shared;
        }
        match std::env::var("ELMO_SHARED_STEPS").as_deref().map(str::trim) {
            Ok("1") => return false,
            Ok("0") => return true,
            _ => {}
        }
        let lo = &self.options().lstm;
        let (p, u) = (lo.projection_dim, lo.dim);
        let bytes: usize = self
            .lstm
            .iter()
            .map(|layers| {
                layers
                    .iter()
                    .map(|l| p * 4 * u * l.kernel.elem_bytes() + u * p * l.projection.elem_bytes())
                    .max()
                    .unwrap_or(0)
            })
            .sum();
        crate::backend::cpu::cache::last_level_cache_bytes()
            .is_some_and(|llc| bytes.saturating_mul(STEP_WEIGHTS_PER_CACHE) <= llc)
    }

    /// The output `(B, L + 1, T, 2P)` from the packed token embeddings and
    /// layer outputs (natural order): token j of a sentence is its packed
    /// row j + 1 (the boundaries removed); padding stays zero.
    pub(super) fn assemble(
        &self,
        segs: &[(usize, usize)],
        tok: &[f32],
        fwd: &DirectionOut,
        bwd: &DirectionOut,
        t_max: usize,
    ) -> Result<Vec<f32>> {
        let o = self.options();
        let (p, nk) = (o.lstm.projection_dim, o.lstm.n_layers + 1);
        let dim = 2 * p;
        let n = [nk, t_max, dim]
            .iter()
            .try_fold(segs.len(), |a, &x| a.checked_mul(x))
            .ok_or_else(|| Error::Input("the padded output is too large to address".into()))?;
        let mut data = crate::tensor::try_zeroed(n, "the padded output (B, L + 1, T, 2P)")?;
        for (i, &(off, len)) in segs.iter().enumerate() {
            for j in 0..len.saturating_sub(2) {
                let src = (off + j + 1) * p;
                for k in 0..nk {
                    let dst = ((i * nk + k) * t_max + j) * dim;
                    let (lo, hi) = if k == 0 {
                        (&tok[src..src + p], &tok[src..src + p])
                    } else {
                        (&fwd.outputs[k - 1][src..src + p], &bwd.outputs[k - 1][src..src + p])
                    };
                    data[dst..dst + p].copy_from_slice(lo);
                    data[dst + p..dst + dim].copy_from_slice(hi);
                }
            }
        }
        Ok(data)
    }

    /// Scatters packed results into bilm-tf's padded `(B, T2, ...)` layout;
    /// padded positions get the all-padding token's values (CNN, highway,
    /// token embedding) or zeros (LSTM), as in bilm-tf.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn intermediates(
        &self,
        ids: &CharIds,
        segs: &[(usize, usize)],
        tokens: &TokenOut,
        fwd: &DirectionOut,
        bwd: &DirectionOut,
        init0: &[Option<(Vec<f32>, Vec<f32>)>],
        init1: &[Option<(Vec<f32>, Vec<f32>)>],
    ) -> Result<Intermediates> {
        let o = self.options();
        let (b, t2, f, p, u, nl) = (
            ids.batch(),
            ids.positions(),
            o.n_filters(),
            o.lstm.projection_dim,
            o.lstm.dim,
            o.lstm.n_layers,
        );
        let pad = self.token_pipeline(&vec![0u16; o.ids_per_token()], true);
        // (B, T2, w) with every padded position written; the memory asked
        // for first, so a padded batch beyond memory is an error, not an
        // abort.
        let reserve = |n: usize| -> Result<Vec<f32>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| {
                Error::Input(format!(
                    "the padded intermediates would need {:.1} GiB, more memory than there is; split the batch",
                    n as f64 * 4.0 / (1u64 << 30) as f64
                ))
            })?;
            Ok(v)
        };
        let scatter_into = |v: &mut Vec<f32>, packed: &[f32], pad_row: &[f32], w: usize| {
            for &(off, len) in segs {
                v.extend_from_slice(&packed[off * w..(off + len) * w]);
                for _ in len..t2 {
                    v.extend_from_slice(pad_row);
                }
            }
        };
        let scatter = |packed: &[f32], pad_row: &[f32], w: usize| -> Result<Vec<f32>> {
            let mut v = reserve(b * t2 * w)?;
            scatter_into(&mut v, packed, pad_row, w);
            Ok(v)
        };
        let zeros_p = vec![0f32; p];
        let lstm = |dir: &DirectionOut| -> Result<Vec<f32>> {
            let mut v = reserve(dir.outputs.len() * b * t2 * p)?;
            for x in &dir.outputs {
                scatter_into(&mut v, x, &zeros_p, p);
            }
            Ok(v)
        };
        let mut final_c = Vec::with_capacity(2 * nl * b * u);
        let mut final_h = Vec::with_capacity(2 * nl * b * p);
        for (dir, init) in [(fwd, init0), (bwd, init1)] {
            for (l, (fc, fh)) in dir.finals.iter().enumerate() {
                let _ = &init[l];
                final_c.extend_from_slice(fc);
                final_h.extend_from_slice(fh);
            }
        }
        Ok(Intermediates {
            char_cnn: Tensor::from_vec(&[b, t2, f], scatter(&tokens.cnn, &pad.cnn, f)?)?,
            highway: tokens
                .highway
                .iter()
                .zip(&pad.highway)
                .map(|(h, ph)| Tensor::from_vec(&[b, t2, f], scatter(h, ph, f)?))
                .collect::<Result<_>>()?,
            token_embeddings: Tensor::from_vec(&[b, t2, p], scatter(&tokens.tok, &pad.tok, p)?)?,
            lstm_fwd: Tensor::from_vec(&[nl, b, t2, p], lstm(fwd)?)?,
            lstm_bwd: Tensor::from_vec(&[nl, b, t2, p], lstm(bwd)?)?,
            final_c: Tensor::from_vec(&[2, nl, b, u], final_c)?,
            final_h: Tensor::from_vec(&[2, nl, b, p], final_h)?,
        })
    }
}

/// Reverses each sentence's rows within its own length (`reverse_sequence`).
fn reverse_segments(x: &[f32], segs: &[(usize, usize)], w: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for &(off, len) in segs {
        for t in 0..len {
            let (s, dst) = ((off + t) * w, (off + len - 1 - t) * w);
            y[dst..dst + w].copy_from_slice(&x[s..s + w]);
        }
    }
    y
}
