//! The token pipeline: character CNN, highway layers and projection, each
//! distinct word once per call (and through the token cache across calls).

use super::*;

impl ElmoModel {
    /// Token embeddings of `ids` (n tokens of C ids). Each distinct word is
    /// computed once per call (the `<S>` and `</S>` of every sentence, and
    /// repeated words, are one row each), through the cache when there is
    /// one and intermediates are not wanted, then copied to its positions.
    /// Every row is the same fma chain whatever the rows around it, so the
    /// results are bitwise those of computing every position.
    pub(super) fn tokens(&self, ids: &[u16], keep: bool) -> TokenOut {
        let (c, p) = (self.options().ids_per_token(), self.options().lstm.projection_dim);
        let (words, index) = if self.share_words {
            distinct_words(ids, c)
        } else {
            (ids.to_vec(), (0..ids.len() / c.max(1)).collect())
        };
        let nw = words.len() / c;
        let mut fresh = match self.cache.as_ref().filter(|_| !keep) {
            None => self.token_pipeline(&words, keep),
            Some(cache) => {
                use std::sync::atomic::Ordering::Relaxed;
                let mut tok = vec![0f32; nw * p];
                let mut missing: Vec<usize> = Vec::new();
                {
                    let map = cache.map.read().unwrap_or_else(|e| e.into_inner());
                    for (t, word) in words.chunks_exact(c).enumerate() {
                        match map.get(word) {
                            Some(v) => tok[t * p..(t + 1) * p].copy_from_slice(v),
                            None => missing.push(t),
                        }
                    }
                }
                cache.hits.fetch_add((nw - missing.len()) as u64, Relaxed);
                cache.misses.fetch_add(missing.len() as u64, Relaxed);
                if !missing.is_empty() {
                    let todo: Vec<u16> = missing
                        .iter()
                        .flat_map(|&t| words[t * c..(t + 1) * c].iter().copied())
                        .collect();
                    let computed = self.token_pipeline(&todo, false);
                    let mut map = cache.map.write().unwrap_or_else(|e| e.into_inner());
                    for (j, &t) in missing.iter().enumerate() {
                        let v = &computed.tok[j * p..(j + 1) * p];
                        tok[t * p..(t + 1) * p].copy_from_slice(v);
                        if map.len() < cache.capacity {
                            map.insert(words[t * c..(t + 1) * c].to_vec(), v.to_vec());
                        }
                    }
                }
                TokenOut {
                    tok,
                    ..TokenOut::default()
                }
            }
        };
        let n = index.len();
        if nw == n {
            // Every word distinct: `words` is `ids` itself.
            return fresh;
        }
        let f = self.options().n_filters();
        TokenOut {
            tok: gather_rows(&fresh.tok, &index, p),
            cnn: gather_rows(&fresh.cnn, &index, f),
            highway: fresh.highway.iter().map(|h| gather_rows(h, &index, f)).collect(),
            words: std::mem::take(&mut fresh.tok),
            index,
        }
    }

    /// Char CNN, highway and projection for `ids.len() / C` tokens, in
    /// parallel chunks. `keep`: also return the CNN and highway outputs.
    pub(super) fn token_pipeline(&self, ids: &[u16], keep: bool) -> TokenOut {
        let c = self.options().ids_per_token().max(1);
        let limit = Limits::new(self.options(), self.budget).token_chunk;
        let (chunk, parts) = token_work_items(ids.len() / c, limit, rayon::current_num_threads());
        let parts: Vec<TokenOut> = ids
            .par_chunks(chunk * c)
            .map(|ch| self.token_chunk(ch, keep, parts))
            .collect();
        let mut all = TokenOut {
            highway: vec![Vec::new(); if keep { self.highways.len() } else { 0 }],
            ..TokenOut::default()
        };
        for part in parts {
            all.tok.extend_from_slice(&part.tok);
            all.cnn.extend_from_slice(&part.cnn);
            for (a, h) in all.highway.iter_mut().zip(&part.highway) {
                a.extend_from_slice(h);
            }
        }
        all
    }

    pub(super) fn token_chunk(&self, ids: &[u16], keep: bool, parts: usize) -> TokenOut {
        let o = self.options();
        let (c, e, f, width) = (
            o.char_cnn.max_characters_per_token,
            o.char_cnn.embedding_dim,
            o.n_filters(),
            o.ids_per_token(),
        );
        let n = ids.len() / width;
        // (n*C, E): character embeddings, token after token (a row's ids
        // after the C characters are its word id).
        let table = self.char_embed.data();
        let mut emb = Vec::with_capacity(n * c * e);
        for row in ids.chunks_exact(width) {
            for &id in &row[..c] {
                let r = id as usize * e;
                emb.extend_from_slice(&table[r..r + e]);
            }
        }
        // (n, F): one token at a time (spread over the threads when they
        // share this chunk), each filter's windows in one product, then the
        // max over them, the bias and the activation, while the product's
        // (windows, count) rows are still in L2. (All of a chunk's windows
        // in one product wrote a (n C, count) buffer to memory first: at 64
        // tokens on one core the convolutions took 1.9x as long.)
        let mut x = vec![0f32; n * f];
        let conv = |buf: &mut Vec<f32>, ((xt, et), row): ((&mut [f32], &[f32]), &[u16])| {
            self.conv_token(buf, xt, et, trailing_run_start(&row[..c]));
        };
        if parts > 1 {
            x.par_chunks_mut(f.max(1))
                .zip(emb.par_chunks(c * e))
                .zip(ids.par_chunks(width))
                .for_each_init(Vec::new, conv);
        } else {
            let mut buf = Vec::new();
            x.chunks_mut(f.max(1))
                .zip(emb.chunks(c * e))
                .zip(ids.chunks(width))
                .for_each(|t| conv(&mut buf, t));
        }
        let cnn = if keep { x.clone() } else { Vec::new() };
        let mut highway = Vec::new();
        let mut carry = vec![0f32; n * f];
        let mut trans = vec![0f32; n * f];
        for hw in &self.highways {
            // g = sigmoid(x Wc + bc), t = relu(x Wt + bt), x' = g t + (1 - g) x
            strips_gemm_par(n, &x, f, Strips::new(hw.w_carry.data(), f, f), &mut carry, f, parts);
            add_bias(&mut carry, hw.b_carry.data());
            strips_gemm_par(n, &x, f, Strips::new(hw.w_transform.data(), f, f), &mut trans, f, parts);
            add_bias(&mut trans, hw.b_transform.data());
            highway_blend(&mut x, &carry, &trans);
            if keep {
                highway.push(x.clone());
            }
        }
        // ELMoForManyLangs' word embedding goes before the character
        // features: (n, D + F).
        let (x, f) = match &self.word_embed {
            None => (x, f),
            Some(table) => {
                let d = o.word_dim();
                let mut xw = Vec::with_capacity(n * (d + f));
                for (row, xt) in ids.chunks_exact(width).zip(x.chunks_exact(f.max(1))) {
                    let w = row[c] as usize | (row[c + 1] as usize) << 16;
                    xw.extend_from_slice(&table.data()[w * d..(w + 1) * d]);
                    xw.extend_from_slice(xt);
                }
                (xw, d + f)
            }
        };
        let tok = match &self.projection {
            Some((w, bias)) => {
                let p = o.lstm.projection_dim;
                let mut out = vec![0f32; n * p];
                strips_gemm_par(n, &x, f, Strips::new(w.data(), f, p), &mut out, p, parts);
                add_bias(&mut out, bias.data());
                out
            }
            None => x,
        };
        TokenOut {
            tok,
            cnn,
            highway,
            ..TokenOut::default()
        }
    }

    /// The char CNN of one token: `xt` (F) from its character embeddings
    /// `et` (C, E), whose characters from `run` on are all the same id (a
    /// word's padding). Every window starting at or after `run` is then the
    /// same window, so each width computes the windows starting before
    /// `run` and one of the rest: about 8 instead of 44 to 50 for a
    /// 5-letter word, with the same bits (the max of the same values; each
    /// window's row is the same fma chain whatever the rows beside it).
    /// `buf`: scratch, (windows, count) of the widest filter.
    fn conv_token(&self, buf: &mut Vec<f32>, xt: &mut [f32], et: &[f32], run: usize) {
        let o = self.options();
        let (c, e) = (o.char_cnn.max_characters_per_token, o.char_cnn.embedding_dim);
        let mut col = 0;
        for conv in &self.convs {
            let (w, nf) = (conv.width, conv.count);
            let rows = (c - w + 1).min(run + 1);
            buf.resize(rows * nf, 0.0);
            let kernel = Strips::new(conv.kernel.data(), w * e, nf);
            crate::backend::cpu::strips_gemm(rows, et, e, kernel, 0, kernel.n_strips(), buf, nf, false);
            let dst = &mut xt[col..col + nf];
            dst.copy_from_slice(&buf[..nf]);
            for row in buf[nf..rows * nf].chunks_exact(nf) {
                for (d, &v) in dst.iter_mut().zip(row) {
                    *d = d.max(v);
                }
            }
            // max(conv + b) == max(conv) + b exactly: adding a constant is monotone.
            for (d, &bj) in dst.iter_mut().zip(conv.bias.data()) {
                let v = *d + bj;
                *d = match o.char_cnn.activation {
                    Activation::Relu => v.max(0.0),
                    Activation::Tanh => v.tanh(),
                };
            }
            col += nf;
        }
    }
}

/// Where the trailing run of equal ids of `chars` starts (0 when all are
/// equal; `chars.len() - 1` when the last two differ).
fn trailing_run_start(chars: &[u16]) -> usize {
    let last = chars.last();
    chars.iter().rposition(|x| Some(x) != last).map_or(0, |i| i + 1)
}

/// How the token pipeline splits `n` tokens with at most `limit` per work
/// item over `threads` threads: `(tokens per item, threads per item)`.
/// More tokens than one item holds: a multiple of the thread count of
/// equal items, none above the limit (175 tokens as 128 + 47 kept one of
/// two threads idle for 40% of the pipeline; as 88 + 87, W3's pipeline took
/// 15% less time). Fewer items than threads (a short request): the
/// threads of an item share each product's columns.
fn token_work_items(n: usize, limit: usize, threads: usize) -> (usize, usize) {
    let threads = threads.max(1);
    let items = match n.div_ceil(limit.max(1)) {
        0 | 1 => 1,
        k => k.next_multiple_of(threads),
    };
    let chunk = n.div_ceil(items).max(1);
    (chunk, (threads / n.div_ceil(chunk).max(1)).max(1))
}

#[cfg(test)]
mod tests {
    use super::{token_work_items, trailing_run_start};
    use crate::ElmoModel;

    /// The char CNN computes one window of a word's padding, not all of
    /// them, with the bits of every window: words of 0 to 60 letters (the
    /// longest cut to 50 ids, no padding left), control characters, the
    /// padded positions of a shorter sentence, a token of one id
    /// throughout, one of 50 different ids, `<S>` and `</S>`.
    #[test]
    fn the_char_cnn_skips_repeated_padding_windows_bitwise() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let model = ElmoModel::load(&root.join("weights/bilm-tf-test.safetensors")).unwrap();
        let o = model.options();
        let (c, e, f) = (
            o.char_cnn.max_characters_per_token,
            o.char_cnn.embedding_dim,
            o.n_filters(),
        );
        let words: Vec<String> = (0..=60).map(|n| "abcz".repeat(16)[..n].to_string()).collect();
        let mut sentences = vec![words.clone()];
        sentences.push(vec!["é".into(), "\u{1}".into(), "\u{1}\u{1}".into()]);
        let ids = crate::encode_batch(&sentences, c).unwrap();
        let mut rows: Vec<Vec<u16>> = ids.ids().chunks_exact(c).map(<[u16]>::to_vec).collect();
        rows.push(vec![7; c]);
        rows.push((0..c as u16).collect());
        let table = model.char_embed.data();
        let (mut trimmed, mut full, mut buf) = (vec![0f32; f], vec![0f32; f], Vec::new());
        let mut skipped = 0;
        for row in &rows {
            let et: Vec<f32> = row
                .iter()
                .flat_map(|&id| table[id as usize * e..][..e].iter().copied())
                .collect();
            let run = trailing_run_start(row);
            assert!(run < c && row[run..].iter().all(|&x| x == row[c - 1]), "{row:?}");
            assert!(run == 0 || row[run - 1] != row[c - 1], "{row:?}");
            model.conv_token(&mut buf, &mut trimmed, &et, run);
            model.conv_token(&mut buf, &mut full, &et, c);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&trimmed), bits(&full), "{row:?}");
            assert!(full.iter().any(|&x| x != 0.0));
            skipped += (c - run).saturating_sub(8);
        }
        // Row 0 is `<S>`; "" (row 1) is BOW, EOW and padding: its run starts
        // at 2; a 3-letter word's at 5.
        assert_eq!(trailing_run_start(&rows[1]), 2);
        assert_eq!(trailing_run_start(&rows[4]), 5);
        assert_eq!(trailing_run_start(&vec![7; c]), 0);
        assert!(skipped > 1000, "the padding windows were not skipped: {skipped}");
    }

    /// Every token in exactly one item, none over the limit, and the items
    /// a multiple of the threads when there are several.
    #[test]
    fn token_work_items_are_equal_and_within_the_limit() {
        assert_eq!(token_work_items(175, 128, 2), (88, 1));
        assert_eq!(token_work_items(300, 128, 2), (75, 1));
        assert_eq!(token_work_items(100, 128, 2), (100, 2));
        assert_eq!(token_work_items(0, 128, 2), (1, 2));
        for n in [1, 2, 7, 128, 129, 255, 256, 257, 1000, 4097] {
            for threads in [1, 2, 3, 8] {
                for limit in [1, 5, 128] {
                    let (chunk, parts) = token_work_items(n, limit, threads);
                    let items = n.div_ceil(chunk);
                    let last = n - (items - 1) * chunk;
                    let case = format!("{n} tokens, limit {limit}, {threads} threads: {items} x {chunk}");
                    assert!(chunk <= limit || items == 1 && n <= limit, "{case}");
                    assert!(chunk - last < items, "unequal items: {case}, last {last}");
                    assert_eq!(parts, (threads / items).max(1), "{case}");
                    if n > limit {
                        assert!(items >= threads.min(n), "{case}");
                    } else {
                        assert_eq!(items, 1, "{case}");
                    }
                }
            }
        }
    }
}
