//! The GPU forward pass, written once over [`Backend`]: the CUDA backend,
//! the host backend, the kernel emulator and the lane checker all run it.

use super::*;

/// Largest block of input-side LSTM products held at once on a GPU, in bytes.
pub(crate) const ZX_BYTES: usize = 256 << 20;

/// The forward pass on a backend: `chars` (N, C) character ids of the packed
/// tokens, `segs` each sentence's (first row, length), `init` each
/// direction's initial states; `keep`: also return the token pipeline's
/// intermediates; `share`: run the token pipeline and layer 0's input-side
/// products once per distinct word (as the CPU path,
/// [`crate::ElmoModel::with_word_sharing`]); input-side LSTM products in
/// blocks of about `zx_bytes`. Returns the output assembled on the device
/// (one download), the final states in the caller's sentence order and,
/// with `keep`, the intermediates (per direction and layer the outputs in
/// natural order).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<B: Backend>(
    be: &B,
    w: &Weights<B::F>,
    o: &crate::options::Options,
    chars: &[u16],
    segs: &[(usize, usize)],
    init: [Init<'_>; 2],
    (keep, share): (bool, bool),
    zx_bytes: usize,
) -> Result<GpuOut> {
    let (e, c) = (o.char_cnn.embedding_dim, o.char_cnn.max_characters_per_token);
    let (f, p, u, nl) = (o.n_filters(), o.lstm.projection_dim, o.lstm.dim, o.lstm.n_layers);
    let n = chars.len() / c.max(1);
    let b = segs.len();
    // The output (B, L + 1, T, 2P): token j of sentence i is packed row
    // off_i + j + 1 (the boundaries removed).
    let (nk, t_max) = (nl + 1, segs.iter().map(|s| s.1.saturating_sub(2)).max().unwrap_or(0));
    let data_len = b.saturating_mul(nk * t_max * 2 * p);
    let mut out = GpuOut {
        data: Vec::new(),
        tok: Vec::new(),
        cnn: Vec::new(),
        // One (empty until filled) per highway layer when kept, as the CPU path.
        highway: if keep {
            vec![Vec::new(); w.highways.len()]
        } else {
            Vec::new()
        },
        outputs: [vec![Vec::new(); nl], vec![Vec::new(); nl]],
        finals: std::array::from_fn(|d| {
            (0..nl)
                .map(|l| match init[d].get(l).and_then(|x| x.as_ref()) {
                    Some((c0, h0)) => (c0.clone(), h0.clone()),
                    None => (vec![0f32; b * u], vec![0f32; b * p]),
                })
                .collect()
        }),
    };
    if n == 0 {
        out.data = vec![0.0; data_len];
        return Ok(out);
    }
    let mut trace = Trace::new();
    // `all` (1 + 2L, N, P) + a zero row: the token embeddings, then each
    // layer's outputs, forward and backward (the backward in its reversed
    // order), from which one gather makes the output.
    let zero_row = (1 + 2 * nl) * n;
    let too_big = |x: Option<usize>| x.is_none_or(|x| x > i32::MAX as usize);
    if too_big(n.checked_mul(f.max(4 * u)))
        || too_big((zero_row + 1).checked_mul(p))
        || too_big(b.checked_mul(nk * t_max * 2 * p))
    {
        return Err(Error::Input(format!(
            "a batch of {n} tokens is too large for the CUDA kernels: split it"
        )));
    }

    // Token pipeline: char CNN (W, F), highway layers, projection (W, P)
    // for the W distinct words (W = N without sharing), then copied to the
    // N positions.
    let (words, index) = if share {
        crate::chars::distinct_words(chars, c)
    } else {
        (Vec::new(), Vec::new())
    };
    let (chars_w, nw) = if share && words.len() < chars.len() {
        (&words[..], words.len() / c)
    } else {
        (chars, n)
    };
    let d_chars = be.up_u16(chars_w)?;
    let mut x = be.zeros(nw * f)?;
    let dims = CnnDims {
        n: nw,
        c,
        e,
        n_chars: w.n_chars,
        relu: o.char_cnn.activation == crate::options::Activation::Relu,
    };
    be.char_cnn(&d_chars, &w.char_embed, &w.cnn_w, &w.cnn_b, &w.convs, &mut x, dims)?;
    trace.mark(be, || format!("char_cnn ({nw} words)"))?;
    // Rows of the distinct words to the positions (host side, intermediates).
    let spread = |v: Vec<f32>, width: usize| {
        if nw < n {
            crate::backend::cpu::gather_rows(&v, &index, width)
        } else {
            v
        }
    };
    if keep {
        out.cnn = spread(be.down(&x)?, f);
    }
    if !w.highways.is_empty() {
        let mut carry = be.zeros(nw * f)?;
        let mut trans = be.zeros(nw * f)?;
        for (h, [wc, bc, wt, bt]) in w.highways.iter().enumerate() {
            be.gemm((nw, f, f), (&x, 0), f, (wc, 0), f, &mut carry, f)?;
            be.gemm((nw, f, f), (&x, 0), f, (wt, 0), f, &mut trans, f)?;
            be.highway(&mut x, &carry, &trans, bc, bt, nw, f)?;
            if keep {
                out.highway[h] = spread(be.down(&x)?, f);
            }
        }
    }
    let tok = match &w.projection {
        Some((wp, bias)) => {
            let mut t = be.zeros(nw * p)?;
            be.gemm((nw, p, f), (&x, 0), f, (wp, 0), p, &mut t, p)?;
            be.add_bias(&mut t, bias, nw, p)?;
            t
        }
        None => x,
    };
    // (N, P): each position's word's row; `tok_w` (W, P) kept for layer 0.
    let (tok, tok_w) = if nw < n {
        let idx: Vec<i32> = index.iter().map(|&i| i as i32).collect();
        let mut t = be.zeros(n * p)?;
        be.gather_rows(&tok, &mut t, (&be.up_i32(&idx)?, 0), n, p)?;
        (t, Some(tok))
    } else {
        (tok, None)
    };
    trace.mark(be, || "highway+projection".into())?;
    if keep {
        out.tok = be.down(&tok)?;
    }
    let mut all = be.zeros((zero_row + 1) * p)?;
    be.copy_into(&tok, &mut all, 0, n * p)?;

    // Sentences longest first: those running at step t are a prefix.
    let mut perm: Vec<usize> = (0..b).collect();
    perm.sort_by_key(|&i| std::cmp::Reverse(segs[i].1));
    let max_len = segs.iter().map(|s| s.1).max().unwrap_or(0);
    let running: Vec<usize> = (0..max_len)
        .map(|t| perm.iter().take_while(|&&i| segs[i].1 > t).count())
        .collect();
    // Row (of the packed N rows) of sorted sentence r at step t; the steps
    // one after the other, step t's from base[t] on.
    let mut base = Vec::with_capacity(max_len + 1);
    let mut step_rows = Vec::with_capacity(n);
    for (t, &na) in running.iter().enumerate() {
        base.push(step_rows.len());
        step_rows.extend(perm[..na].iter().map(|&i| (segs[i].0 + t) as i32));
    }
    base.push(step_rows.len());
    // Reversal within each sentence (an involution).
    let mut rev = vec![0i32; n];
    for &(off, len) in segs {
        for t in 0..len {
            rev[off + t] = (off + len - 1 - t) as i32;
        }
    }
    let d_rows = be.up_i32(&step_rows)?;
    let d_rev = be.up_i32(&rev)?;
    let zx_rows = (zx_bytes / (16 * u.max(1))).max(b);
    // Repeated words (as the CPU path): layer 0's input-side products of
    // the W distinct words once per direction, within the same memory
    // bound as a block, and for every step row the row of its word.
    let tok_w = tok_w.filter(|_| nw <= zx_rows);
    let word_rows = |d: usize| -> Vec<i32> {
        step_rows
            .iter()
            .map(|&q| index[if d == 0 { q as usize } else { rev[q as usize] as usize }] as i32)
            .collect()
    };
    // The two directions on two lanes (CUDA streams), each from the token
    // pipeline's results, their work queued step by step in turn: the
    // per-step kernels, small at small batches, run side by side. A lane
    // writes only buffers it made; what lane 0 made before the fork, and
    // every layer's output, lives to the end (`lane_check.rs` checks
    // the ordering).
    be.fork()?;
    // Per direction: layer 0's products of the distinct words (W, 4U) =
    // tok_w (W, P) W_0[..P] and each step row's word; the backward
    // direction's input, the token embeddings reversed within sentences.
    let mut zx_words = Vec::with_capacity(2);
    let mut tok_rev = None;
    for d in 0..2 {
        be.lane(d);
        zx_words.push(match &tok_w {
            Some(tw) if nl > 0 => {
                let mut z = be.zeros(nw * 4 * u)?;
                be.gemm((nw, 4 * u, p), (tw, 0), p, (&w.lstm[d][0][0], 0), 4 * u, &mut z, 4 * u)?;
                Some((z, be.up_i32(&word_rows(d))?))
            }
            _ => None,
        });
        if d == 1 {
            let mut y = be.zeros(n * p)?;
            be.gather_rows(&tok, &mut y, (&d_rev, 0), n, p)?;
            tok_rev = Some(y);
        }
    }
    // Each direction's layer outputs (N, P), in its own order.
    let mut outs: [Vec<B::F>; 2] = [Vec::with_capacity(nl), Vec::with_capacity(nl)];
    /// Layer `l`'s input in direction `d`: the token embeddings (reversed
    /// within sentences backward), then the layer below's output.
    fn layer_input<'a, F>(d: usize, l: usize, tok: &'a F, tok_rev: &'a Option<F>, outs: &'a [Vec<F>; 2]) -> &'a F {
        match (l, tok_rev) {
            (0, Some(r)) if d == 1 => r,
            (0, _) => tok,
            _ => &outs[d][l - 1],
        }
    }
    /// One direction's buffers for a layer: states (sorted order), output,
    /// a step's gates, cell output and projection.
    struct Layer<F> {
        dc: F,
        dh: F,
        y: F,
        zh: F,
        m: F,
        hp: F,
    }
    // Final states are wanted by stateful calls (`init` given) and with the
    // intermediates; downloaded once both lanes are queued (a download
    // waits, and would hold the other lane back).
    let want_states = keep || init.iter().any(|i| i.iter().any(Option::is_some));
    let mut states = Vec::with_capacity(2 * nl);
    for l in 0..nl {
        let mut ls = Vec::with_capacity(2);
        for (d, finals) in out.finals.iter().enumerate() {
            be.lane(d);
            let (c0, h0) = &finals[l];
            let cs: Vec<f32> = perm
                .iter()
                .flat_map(|&i| c0[i * u..(i + 1) * u].iter().copied())
                .collect();
            let hs: Vec<f32> = perm
                .iter()
                .flat_map(|&i| h0[i * p..(i + 1) * p].iter().copied())
                .collect();
            ls.push(Layer {
                dc: be.up_f32(&cs)?,
                dh: be.up_f32(&hs)?,
                y: be.zeros(n * p)?,
                zh: be.zeros(b * 4 * u)?,
                m: be.zeros(b * u)?,
                hp: be.zeros(b * p)?,
            });
        }
        let mut t0 = 0;
        while t0 < max_len {
            // A block of steps whose input rows fit ZX_BYTES.
            let mut t1 = t0 + 1;
            while t1 < max_len && base[t1 + 1] - base[t0] <= zx_rows {
                t1 += 1;
            }
            let (r0, r1) = (base[t0], base[t1]);
            let mut zx = Vec::with_capacity(2);
            for (d, words) in zx_words.iter().enumerate() {
                be.lane(d);
                let x = layer_input(d, l, &tok, &tok_rev, &outs);
                let mut z = be.zeros((r1 - r0) * 4 * u)?;
                match words.as_ref().filter(|_| l == 0) {
                    // Layer 0, repeated words: each row's word's products.
                    Some((zw, d_wr)) => be.gather_rows(zw, &mut z, (d_wr, r0), r1 - r0, 4 * u)?,
                    None => {
                        let mut xb = be.zeros((r1 - r0) * p)?;
                        be.gather_rows(x, &mut xb, (&d_rows, r0), r1 - r0, p)?;
                        // (rows, 4U) = x (rows, P) W_0[..P]
                        let kernel = &w.lstm[d][l][0];
                        be.gemm((r1 - r0, 4 * u, p), (&xb, 0), p, (kernel, 0), 4 * u, &mut z, 4 * u)?;
                    }
                }
                zx.push(z);
            }
            for t in t0..t1 {
                let na = running[t];
                for (d, s) in ls.iter_mut().enumerate() {
                    be.lane(d);
                    let x = layer_input(d, l, &tok, &tok_rev, &outs);
                    let [kernel, bias, proj] = &w.lstm[d][l];
                    // (na, 4U) = m_{t-1} (na, P) W_0[P..]
                    be.gemm(
                        (na, 4 * u, p),
                        (&s.dh, 0),
                        p,
                        (kernel, p * 4 * u),
                        4 * u,
                        &mut s.zh,
                        4 * u,
                    )?;
                    let cell = o.lstm.cell_clip;
                    be.lstm_cell(&zx[d], base[t] - r0, &s.zh, bias, &mut s.dc, &mut s.m, na, u, cell)?;
                    // (na, P) = m (na, U) W_P
                    be.gemm((na, p, u), (&s.m, 0), u, (proj, 0), p, &mut s.hp, p)?;
                    be.lstm_project_out(
                        &s.hp,
                        &mut s.dh,
                        &mut s.y,
                        x,
                        (&d_rows, base[t]),
                        na,
                        p,
                        o.lstm.proj_clip,
                        o.lstm.use_skip_connections && l > 0,
                    )?;
                }
            }
            t0 = t1;
        }
        for (d, s) in ls.into_iter().enumerate() {
            be.lane(d);
            if want_states {
                states.push((d, l, s.dc, s.dh));
            }
            if keep {
                out.outputs[d][l] = if d == 0 {
                    be.down(&s.y)?
                } else {
                    let mut nat = be.zeros(n * p)?;
                    be.gather_rows(&s.y, &mut nat, (&d_rev, 0), n, p)?;
                    be.down(&nat)?
                };
            }
            outs[d].push(s.y);
        }
        trace.mark(be, || format!("lstm layer {l} (both directions)"))?;
    }
    be.lane(0);
    be.join()?;
    for (d, layers) in outs.iter().enumerate() {
        for (l, y) in layers.iter().enumerate() {
            be.copy_into(y, &mut all, (1 + 2 * l + d) * n * p, n * p)?;
        }
    }
    for (d, l, dc, dh) in states {
        // Final states back in the caller's sentence order.
        let (cs, hs) = (be.down(&dc)?, be.down(&dh)?);
        let (fc, fh) = &mut out.finals[d][l];
        for (r, &i) in perm.iter().enumerate() {
            fc[i * u..(i + 1) * u].copy_from_slice(&cs[r * u..(r + 1) * u]);
            fh[i * p..(i + 1) * p].copy_from_slice(&hs[r * p..(r + 1) * p]);
        }
    }
    // Each P-wide half row of the output: the token embedding twice, or
    // layer l's forward and backward rows (backward row of position q:
    // rev[q]), or the zero row past a sentence's end.
    let mut idx = Vec::with_capacity(data_len / p.max(1));
    for &(off, len) in segs {
        for k in 0..nk {
            for j in 0..t_max {
                let q = off + j + 1;
                let pair = match k {
                    _ if j + 2 >= len => [zero_row; 2],
                    0 => [q; 2],
                    _ => [(2 * k - 1) * n + q, 2 * k * n + rev[q] as usize],
                };
                idx.extend(pair.map(|r| r as i32));
            }
        }
    }
    if data_len > 0 {
        let mut data = be.zeros(data_len)?;
        be.gather_rows(&all, &mut data, (&be.up_i32(&idx)?, 0), data_len / p, p)?;
        trace.mark(be, || "assemble".into())?;
        out.data = be.down(&data)?;
        out.data.truncate(data_len);
        trace.mark(be, || format!("download {} MiB", (4 * data_len) >> 20))?;
    }
    trace.print(&format!("B={b} N={n}"));
    Ok(out)
}

/// Every kernel once, on fixed pseudo-random inputs of awkward sizes (not
/// multiples of the block sizes, offsets into buffers, clips that fire):
/// each kernel's output by name. Run on the host backend and on a device,
/// the two lists give each kernel's maxdiff ([`GpuModel::kernel_maxdiffs`]).
pub(crate) fn kernel_outputs<B: Backend>(be: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
    let mut rng = crate::rng::Rng::new(7);
    let mut vals = |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.uniform_in(-scale, scale)).collect() };
    let mut out = Vec::new();
    // char CNN: 7 tokens of 12 characters, E = 4, a table of 20 rows (the
    // last id past it), widths 1, 3 and 2 with 5, 37 and 20 filters.
    let (n, c, e, nc) = (7, 12, 4, 20);
    let filters = [(1, 5), (3, 37), (2, 20)];
    let convs = ConvTable::new(&filters, e, c)?;
    let f: usize = filters.iter().map(|x| x.1).sum();
    let nw: usize = filters.iter().map(|x| x.0 * e * x.1).sum();
    let chars: Vec<u16> = (0..n * c).map(|i| ((i * 7 + 3) % (nc + 1)) as u16).collect();
    let (table, w, bias) = (vals(nc * e, 1.0), vals(nw, 0.5), vals(f, 0.1));
    for relu in [true, false] {
        let mut y = be.zeros(n * f)?;
        let dims = CnnDims {
            n,
            c,
            e,
            n_chars: nc,
            relu,
        };
        let (dc, dt, dw, db) = (
            be.up_u16(&chars)?,
            be.up_f32(&table)?,
            be.up_f32(&w)?,
            be.up_f32(&bias)?,
        );
        be.char_cnn(&dc, &dt, &dw, &db, &convs, &mut y, dims)?;
        out.push((if relu { "char_cnn relu" } else { "char_cnn tanh" }, be.down(&y)?));
    }
    // A product with rows apart (lda > k) from an offset into B.
    let (m, nn, k, lda) = (9, 70, 33, 40);
    let (a, b) = (be.up_f32(&vals(m * lda, 1.0))?, be.up_f32(&vals(3 + k * nn, 1.0))?);
    let mut cc = be.zeros(m * nn)?;
    be.gemm((m, nn, k), (&a, 0), lda, (&b, 3), nn, &mut cc, nn)?;
    out.push(("gemm", be.down(&cc)?));
    let mut x = be.up_f32(&vals(m * nn, 2.0))?;
    be.add_bias(&mut x, &be.up_f32(&vals(nn, 1.0))?, m, nn)?;
    out.push(("add_bias", be.down(&x)?));
    let (carry, trans) = (be.up_f32(&vals(m * nn, 4.0))?, be.up_f32(&vals(m * nn, 4.0))?);
    let (bc, bt) = (be.up_f32(&vals(nn, 1.0))?, be.up_f32(&vals(nn, 1.0))?);
    be.highway(&mut x, &carry, &trans, &bc, &bt, m, nn)?;
    out.push(("highway", be.down(&x)?));
    let idx = be.up_i32(&[9, 4, 1, 0, 7, 7, 2])?;
    let mut y = be.zeros(5 * nn)?;
    be.gather_rows(&cc, &mut y, (&idx, 2), 5, nn)?;
    out.push(("gather_rows", be.down(&y)?));
    // The cell for 3 of 5 sentences, from row 2 of a block of products.
    let (na, u, bsz) = (3, 21, 5);
    let zx = be.up_f32(&vals(6 * 4 * u, 3.0))?;
    let (zh, lb) = (be.up_f32(&vals(bsz * 4 * u, 3.0))?, be.up_f32(&vals(4 * u, 1.0))?);
    let (mut cst, mut mm) = (be.up_f32(&vals(bsz * u, 1.0))?, be.zeros(bsz * u)?);
    be.lstm_cell(&zx, 2, &zh, &lb, &mut cst, &mut mm, na, u, Some(0.5))?;
    out.push(("lstm_cell c", be.down(&cst)?));
    out.push(("lstm_cell m", be.down(&mm)?));
    be.lstm_cell(&zx, 1, &zh, &lb, &mut cst, &mut mm, na, u, None)?;
    out.push(("lstm_cell m (no clip)", be.down(&mm)?));
    let p = 13;
    let (hp, xin) = (be.up_f32(&vals(bsz * p, 1.0))?, be.up_f32(&vals(10 * p, 1.0))?);
    let (mut h, mut yo) = (be.up_f32(&vals(bsz * p, 1.0))?, be.zeros(10 * p)?);
    let rows = be.up_i32(&[0, 8, 3, 5, 1])?;
    be.lstm_project_out(&hp, &mut h, &mut yo, &xin, (&rows, 1), na, p, Some(0.3), true)?;
    out.push(("lstm_project_out h", be.down(&h)?));
    out.push(("lstm_project_out out", be.down(&yo)?));
    be.lstm_project_out(&hp, &mut h, &mut yo, &xin, (&rows, 0), na, p, None, false)?;
    out.push(("lstm_project_out out (no clip)", be.down(&yo)?));
    Ok(out)
}
