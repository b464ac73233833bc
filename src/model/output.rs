//! What a forward pass returns.

use crate::tensor::Tensor;

/// The biLM's output for a batch: for every sentence, every layer, every
/// token position (boundaries removed), `2P` values.
///
/// Layer 0 is the token embedding twice, `[tok, tok]`; layer k >= 1 is
/// `[forward, backward]` of LSTM layer k. Positions at or beyond a sentence's
/// length are zero in every layer (bilm-tf leaves the embedding of the
/// all-padding token in layer 0 there; we zero it, so padding never leaks).
#[derive(Debug, Clone, PartialEq)]
pub struct BiLmOutput {
    /// Tokens per sentence.
    pub lengths: Vec<usize>,
    /// Layers per position (`n_layers + 1`).
    pub n_layers: usize,
    /// T: the longest sentence of the batch.
    pub max_len: usize,
    /// 2P: values per layer and position.
    pub dim: usize,
    /// `(B, n_layers, T, 2P)` row-major.
    pub data: Vec<f32>,
}

impl BiLmOutput {
    /// The `2P` values of sentence `b`, layer `k`, token `t` (positions
    /// from the sentence's length to `max_len` are padding, zero).
    ///
    /// # Panics
    /// When an index is out of range: `b` past the batch, `k >= n_layers`
    /// or `t >= max_len` (without the check, a token past `max_len` would
    /// read the next layer's values). [`get`](Self::get) returns `None`
    /// instead.
    pub fn vector(&self, b: usize, k: usize, t: usize) -> &[f32] {
        self.get(b, k, t).unwrap_or_else(|| {
            panic!(
                "BiLmOutput::vector({b}, {k}, {t}) out of range: {} sentences, {} layers, {} positions",
                self.lengths.len(),
                self.n_layers,
                self.max_len
            )
        })
    }

    /// [`vector`](Self::vector), `None` when an index is out of range.
    pub fn get(&self, b: usize, k: usize, t: usize) -> Option<&[f32]> {
        if b >= self.lengths.len() || k >= self.n_layers || t >= self.max_len {
            return None;
        }
        let o = ((b * self.n_layers + k) * self.max_len + t) * self.dim;
        self.data.get(o..o + self.dim)
    }
}

/// bilm-tf's internal arrays, with the sentence boundaries (T2 = T + 2
/// positions), for checking against TensorFlow.
#[derive(Debug, Clone)]
pub struct Intermediates {
    /// `(B, T2, F)` char-CNN output before the highway layers.
    pub char_cnn: Tensor,
    /// `(B, T2, F)` output of each highway layer.
    pub highway: Vec<Tensor>,
    /// `(B, T2, P)` token embeddings after the projection.
    pub token_embeddings: Tensor,
    /// `(L, B, T2, P)` forward LSTM outputs (zero past each sentence).
    pub lstm_fwd: Tensor,
    /// `(L, B, T2, P)` backward LSTM outputs in natural order.
    pub lstm_bwd: Tensor,
    /// `(2, L, B, U)` cell state after each sentence's last step.
    pub final_c: Tensor,
    /// `(2, L, B, P)` projected output state after the last step (no skip).
    pub final_h: Tensor,
}
