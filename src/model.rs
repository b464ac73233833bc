//! The biLM forward pass, as bilm-tf computes it.
//!
//! Positions are handled *packed*: only real positions (the `<S>`, tokens and
//! `</S>` of each sentence) are computed, sentence after sentence, so padding
//! costs nothing and no sentence's result depends on the rest of its batch.
//! Shapes in comments use B = sentences, T2 = positions incl. boundaries,
//! N = real positions of the batch, C = characters per token, E = char
//! embedding, F = filters, P = projection, U = LSTM cell size, L = layers.

use crate::chars::{CharIds, encode_batch};
use crate::cpu::{STRIP, Strips, WeightElem, add_bias, clip, highway_blend, lstm_cell, strips_gemm_par};
use crate::cuda::Device;
use crate::error::{Error, Result};
use crate::model_file::{ModelFile, lstm_name};
use crate::options::{Activation, Options};
use crate::tensor::{Bf16Tensor, Tensor};
use rayon::prelude::*;
use std::path::Path;

/// Default working-memory budget of a forward pass
/// ([`ElmoModel::with_memory_budget`]).
pub const DEFAULT_MEMORY_BUDGET: usize = 512 << 20;

/// Most tokens per parallel work item of the token (char CNN) pipeline:
/// small enough that a batch spreads over the threads (and within the
/// memory budget, see [`Limits`]).
const TOKEN_CHUNK: usize = 128;

/// How a forward pass splits its work to stay within the memory budget.
/// Every split gives the same bits: rows of a product do not depend on each
/// other, and sentences do not depend on each other.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Rows of input-side gate products held at once per layer and
    /// direction (longer inputs: blocks of steps).
    zx_rows: usize,
    /// Sentences run through an LSTM layer at once (more: one group after
    /// the other).
    group: usize,
    /// Tokens per work item of the token pipeline.
    token_chunk: usize,
}

impl Limits {
    /// Splits `budget` bytes: half to the two directions' LSTM work (for
    /// each, half to gate products of the input, half to per-sentence step
    /// buffers), half to the token pipeline's work items (one per thread).
    fn new(o: &Options, budget: usize) -> Self {
        let (u, p) = (o.lstm.dim, o.lstm.projection_dim);
        let per_dir = budget / 4;
        let zx_rows = (per_dir / 2 / (16 * u).max(1)).max(1);
        // Per sentence and step: zh (4U), m twice, c (U each), h, out, x (P each).
        let group = (per_dir / 2 / (4 * (7 * u + 3 * p)).max(1)).max(1);
        let c = o.char_cnn.max_characters_per_token;
        let widest = o.char_cnn.filters.iter().map(|f| f.1).max().unwrap_or(1);
        // Per token: the convolution's output rows (C x widest filter; one
        // token's at a time now, so an upper bound), the character
        // embeddings, the highway buffers (3 F).
        let per_token = 4 * (c * widest + c * o.char_cnn.embedding_dim + 3 * o.n_filters());
        let threads = rayon::current_num_threads().max(1);
        let token_chunk = (budget / 2 / threads / per_token.max(1)).clamp(1, TOKEN_CHUNK);
        Limits {
            zx_rows,
            group,
            token_chunk,
        }
    }
}

// Matrices are strip-packed ([`crate::cpu::pack_strips`]) as the file stores them.
struct Conv {
    width: usize,
    count: usize,
    kernel: Tensor, // (1, w, E, n) as (w*E, n), packed
    bias: Tensor,   // (n,)
}

struct Highway {
    w_carry: Tensor,
    b_carry: Tensor,
    w_transform: Tensor,
    b_transform: Tensor,
}

/// A weight matrix in f32 or bfloat16 (`elmo convert --dtype bf16`).
enum Mat {
    F32(Tensor),
    Bf16(Bf16Tensor),
}

/// One LSTM layer's weights; the matrices are strip-packed
/// ([`crate::cpu::pack_strips`]), as the model file stores them.
struct LstmLayer {
    kernel: Mat,     // (P + P, 4U) packed: rows for the input, then for m_{t-1}
    bias: Tensor,    // (4U,), gates i, j, f, o
    projection: Mat, // (U, P) packed
}

/// Largest batch for which an LSTM layer's steps are shared between the
/// threads (each thread a share of every gate's units and of the
/// projection's columns, one direction after the other) rather than the two
/// directions running side by side. Small batches are bound by reading the
/// weights: sharing one direction's weights between the cores keeps more of
/// them in the shared cache from step to step.
const SHARED_STEPS_MAX_BATCH: usize = 8;

/// Fewest recurrent + projection weights (`5 U P`) for which sharing steps
/// pays: below (4 MiB of f32), a step is too short for the hand-off.
const SHARED_STEPS_MIN_WEIGHTS: usize = 1 << 20;

/// One thread's share of an LSTM layer (see [`ElmoModel::lstm_layer`]):
/// units `u0..u1` of every gate and some strips of the projection, with the
/// buffers for them.
struct Part {
    gates: Vec<(usize, usize, usize)>, // (first strip, end strip, column in zx/zh rows)
    units: (usize, usize),             // u0..u1
    proj: (usize, usize),              // projection strips
    bias: Vec<f32>,                    // (4w,) this part's gate biases
    zx: Vec<f32>,                      // (rows of the block, 4w)
    zh: Vec<f32>,                      // (active, 4w)
    c: Vec<f32>,                       // (B, w) cell states of these units
    m: Vec<f32>,                       // (active, w)
    h: Vec<f32>,                       // (active, projection columns)
}

impl Part {
    /// `n` shares of a layer with `u` units and `p` outputs; one share
    /// unless the units split into whole strips.
    fn split(n: usize, u: usize, p: usize, bias: &[f32]) -> Vec<Part> {
        let (us, ps) = (u / STRIP, p.div_ceil(STRIP));
        let n = if u.is_multiple_of(STRIP) {
            n.min(us).min(ps).max(1)
        } else {
            1
        };
        (0..n)
            .map(|t| {
                let (a, b) = if n == 1 {
                    (0, u)
                } else {
                    (us * t / n * STRIP, us * (t + 1) / n * STRIP)
                };
                let w = b - a;
                // One share: the packed gate columns are the rows' own layout.
                let gates = if n == 1 {
                    vec![(0, (4 * u).div_ceil(STRIP), 0)]
                } else {
                    (0..4)
                        .map(|g| ((g * u + a) / STRIP, (g * u + b) / STRIP, g * w))
                        .collect()
                };
                let bias = (0..4)
                    .flat_map(|g| bias[g * u + a..g * u + b].iter().copied())
                    .collect();
                Part {
                    gates,
                    units: (a, b),
                    proj: (ps * t / n, ps * (t + 1) / n),
                    bias,
                    zx: Vec::new(),
                    zh: Vec::new(),
                    c: Vec::new(),
                    m: Vec::new(),
                    h: Vec::new(),
                }
            })
            .collect()
    }

    /// Columns of the projection this part computes: `j0..j1`.
    fn proj_cols(&self, p: usize) -> (usize, usize) {
        (self.proj.0 * STRIP, (self.proj.1 * STRIP).min(p))
    }
}

/// A layer input's distinct rows `(W, P)` and the row of every position,
/// when rows repeat (layer 0: the same word at several positions).
type Words<'a> = (&'a [f32], &'a [usize]);

/// Runs `f` on every part, in parallel when there are several.
fn each_part(parts: &mut [Part], f: impl Fn(&mut Part) + Send + Sync) {
    if parts.len() > 1 {
        parts.par_iter_mut().for_each(f);
    } else {
        parts.iter_mut().for_each(f);
    }
}

/// A loaded ELMo biLM. Immutable and `Send + Sync`: share it with `Arc` and
/// run forward passes from any number of threads.
pub struct ElmoModel {
    file: ModelFile,
    char_embed: Tensor, // (262, E), row 0 = zeros
    convs: Vec<Conv>,
    highways: Vec<Highway>,
    projection: Option<(Tensor, Tensor)>, // (F, P), (P,)
    lstm: [Vec<LstmLayer>; 2],            // [direction][layer]
    cache: Option<TokenCache>,
    budget: usize,
    accel: Option<Accel>,
    share_words: bool,
}

/// A backend other than the CPU path running the forward pass.
enum Accel {
    /// A CUDA device.
    Cuda(std::sync::Arc<crate::cuda::GpuModel>),
    /// The GPU pass's orchestration on another backend (tests only): the
    /// host backend or the kernel emulator.
    #[cfg(test)]
    Test(std::sync::Arc<TestRun>),
}

/// [`crate::cuda::forward`] on a test backend, its weights uploaded.
#[cfg(test)]
type TestRun = dyn Fn(&[u16], &[(usize, usize)], [crate::cuda::Init<'_>; 2], (bool, bool)) -> Result<crate::cuda::GpuOut>
    + Send
    + Sync;

/// Token embeddings (char CNN + highway + projection) by character ids: a
/// word's embedding does not depend on its context, so a vocabulary word is
/// computed once. Bounded: once `capacity` words are held, new words are
/// computed but not kept. Results are bitwise those of computing afresh
/// (every product has the same fma order whatever its row count).
struct TokenCache {
    capacity: usize,
    map: std::sync::RwLock<std::collections::HashMap<Vec<u16>, Vec<f32>>>,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

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
    /// The `2P` values of sentence `b`, layer `k`, token `t`.
    pub fn vector(&self, b: usize, k: usize, t: usize) -> &[f32] {
        let o = ((b * self.n_layers + k) * self.max_len + t) * self.dim;
        &self.data[o..o + self.dim]
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

/// The LSTM state bilm-tf carries between batches in stateful mode: one row
/// per batch slot for each direction and layer.
///
/// Row b of a batch starts from row b and writes its final state back; rows
/// beyond the batch are kept. The caller owns it, so independent streams can
/// each have their own.
#[derive(Debug, Clone, PartialEq)]
pub struct LstmState {
    capacity: usize,
    n_layers: usize,
    dim: usize,
    proj: usize,
    c: Vec<f32>, // (2, L, capacity, U)
    h: Vec<f32>, // (2, L, capacity, P)
}

impl LstmState {
    /// A zero state with room for batches of up to `capacity` sentences.
    pub fn new(model: &ElmoModel, capacity: usize) -> Result<Self> {
        let o = &model.options().lstm;
        let cells = 2usize
            .checked_mul(o.n_layers)
            .and_then(|x| x.checked_mul(capacity))
            .and_then(|x| x.checked_mul(o.dim.max(o.projection_dim)))
            .filter(|&n| n <= 1 << 32)
            .ok_or_else(|| Error::State(format!("capacity {capacity} is too large")))?;
        let _ = cells;
        Ok(LstmState {
            capacity,
            n_layers: o.n_layers,
            dim: o.dim,
            proj: o.projection_dim,
            c: vec![0.0; 2 * o.n_layers * capacity * o.dim],
            h: vec![0.0; 2 * o.n_layers * capacity * o.projection_dim],
        })
    }

    /// The largest batch this state can serve.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sets every row back to zero.
    pub fn reset(&mut self) {
        self.c.fill(0.0);
        self.h.fill(0.0);
    }

    /// Cell states, `(2, L, capacity, U)` row-major.
    pub fn c(&self) -> &[f32] {
        &self.c
    }

    /// Output states m, `(2, L, capacity, P)` row-major.
    pub fn h(&self) -> &[f32] {
        &self.h
    }

    fn rows(&self, d: usize, l: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let blk = (d * self.n_layers + l) * self.capacity;
        (
            blk * self.dim..(blk + self.capacity) * self.dim,
            blk * self.proj..(blk + self.capacity) * self.proj,
        )
    }
}

/// Token-pipeline results for a run of tokens.
#[derive(Default)]
struct TokenOut {
    tok: Vec<f32>,          // (n, P)
    cnn: Vec<f32>,          // (n, F), only when kept
    highway: Vec<Vec<f32>>, // (n, F) per layer, only when kept
    /// (W, P): the distinct words' embeddings when some words repeat, with
    /// `index` (n,) the word of every token; both empty when all differ.
    words: Vec<f32>,
    index: Vec<usize>,
}

/// One direction's results: per layer, the outputs (N, P) in processing
/// order and the final (c, h) of each sentence (B*U, B*P).
struct DirectionOut {
    outputs: Vec<Vec<f32>>,
    finals: Vec<(Vec<f32>, Vec<f32>)>,
}

impl std::fmt::Debug for ElmoModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElmoModel")
            .field("path", &self.file.path)
            .field("options", &self.file.options)
            .finish_non_exhaustive()
    }
}

impl ElmoModel {
    /// Loads a converted model file (memory-mapped), checking that every
    /// weight is finite (an error names the tensor).
    pub fn load(path: &Path) -> Result<Self> {
        let file = ModelFile::open(path)?;
        file.check_finite()?;
        Self::from_file(file)
    }

    /// [`load`](Self::load) without the finiteness scan: loading costs only
    /// the mapping and the header checks (about a millisecond).
    pub fn load_unchecked(path: &Path) -> Result<Self> {
        Self::from_file(ModelFile::open(path)?)
    }

    /// Builds the model from a validated [`ModelFile`].
    pub fn from_file(file: ModelFile) -> Result<Self> {
        let t = |n: &str| file.tensor(n).cloned();
        let mat = |n: &str| match file.bf16.get(n) {
            Some(b) => Ok(Mat::Bf16(b.clone())),
            None => t(n).map(Mat::F32),
        };
        let o = file.options.clone();
        let convs = o
            .char_cnn
            .filters
            .iter()
            .enumerate()
            .map(|(i, &(width, count))| {
                Ok(Conv {
                    width,
                    count,
                    kernel: t(&format!("CNN/W_cnn_{i}"))?,
                    bias: t(&format!("CNN/b_cnn_{i}"))?,
                })
            })
            .collect::<Result<_>>()?;
        let highways = (0..o.char_cnn.n_highway)
            .map(|h| {
                Ok(Highway {
                    w_carry: t(&format!("CNN_high_{h}/W_carry"))?,
                    b_carry: t(&format!("CNN_high_{h}/b_carry"))?,
                    w_transform: t(&format!("CNN_high_{h}/W_transform"))?,
                    b_transform: t(&format!("CNN_high_{h}/b_transform"))?,
                })
            })
            .collect::<Result<_>>()?;
        let projection = if o.has_projection() {
            Some((t("CNN_proj/W_proj")?, t("CNN_proj/b_proj")?))
        } else {
            None
        };
        let layers = |d: usize| -> Result<Vec<LstmLayer>> {
            (0..o.lstm.n_layers)
                .map(|l| {
                    Ok(LstmLayer {
                        kernel: mat(&lstm_name(d, l, "W_0"))?,
                        bias: t(&lstm_name(d, l, "B"))?,
                        projection: mat(&lstm_name(d, l, "W_P_0"))?,
                    })
                })
                .collect()
        };
        Ok(ElmoModel {
            char_embed: t("char_embed")?,
            convs,
            highways,
            projection,
            lstm: [layers(0)?, layers(1)?],
            cache: None,
            budget: DEFAULT_MEMORY_BUDGET,
            accel: None,
            share_words: true,
            file,
        })
    }

    /// Keeps the token embeddings of up to `capacity` distinct words (0: no
    /// cache). Outputs are bitwise the same; repeated words skip the char CNN,
    /// highway and projection. Memory: `capacity * (P + C/2) * 4` bytes.
    pub fn with_token_cache(mut self, capacity: usize) -> Self {
        self.cache = (capacity > 0).then(|| TokenCache {
            capacity,
            map: Default::default(),
            hits: Default::default(),
            misses: Default::default(),
        });
        self
    }

    /// Whether a call computes each distinct word once (default `true`):
    /// the char CNN, highway layers, projection and the first LSTM layer's
    /// input-side products depend on the word alone, so a word that occurs
    /// several times in a call (and every sentence's `<S>` and `</S>`) is
    /// computed once and copied. On the CPU the outputs are bitwise the same
    /// either way (each row is its own fma chain); on a GPU, where cuBLAS may
    /// pick another algorithm for another row count, within float32
    /// rounding. `false` computes every position, as TensorFlow does (for
    /// like-for-like timing).
    pub fn with_word_sharing(mut self, on: bool) -> Self {
        self.share_words = on;
        self
    }

    /// Bounds the working memory of a forward pass to about `bytes`
    /// (default [`DEFAULT_MEMORY_BUDGET`], 512 MiB): long sentences are run
    /// in blocks of steps, many sentences in groups, the token pipeline in
    /// smaller pieces. Results are bitwise the same for any budget. Not
    /// counted: the weights (mapped), the activations that grow with the
    /// input (each layer's outputs, `N x P` floats per layer and direction)
    /// and the returned output itself; memory for those grows with the input.
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes;
        self
    }

    /// Runs the model on `device`: [`Device::Cuda`] uploads the weights to
    /// that GPU and loads its kernels now (see [`crate::cuda`]); outputs
    /// agree with the CPU's to float32 rounding. [`Device::Cpu`] drops a GPU
    /// copy. The token cache and memory budget apply to the CPU path only.
    ///
    /// Errors: [`Error::CudaNotCompiled`] in a build without the `cuda`
    /// feature; [`Error::CudaUnavailable`] when the device cannot be used
    /// (no driver, no such device, too old, too small), naming the device.
    pub fn with_device(mut self, device: Device) -> Result<Self> {
        self.accel = match device {
            Device::Cpu => None,
            Device::Cuda(n) => Some(Accel::Cuda(std::sync::Arc::new(crate::cuda::GpuModel::new(
                &self.file, n,
            )?))),
        };
        Ok(self)
    }

    /// The GPU forward pass run by [`crate::cuda::HostBackend`] (tests),
    /// input-side LSTM products in blocks of about `zx_bytes`.
    #[cfg(test)]
    pub(crate) fn with_host_backend(self, zx_bytes: usize) -> Result<Self> {
        self.with_test_backend(crate::cuda::HostBackend::default(), zx_bytes)
    }

    /// The GPU forward pass run by backend `be` (tests): the host backend,
    /// or the kernel emulator; input-side LSTM products in blocks of about
    /// `zx_bytes`.
    #[cfg(test)]
    pub(crate) fn with_test_backend<B>(mut self, be: B, zx_bytes: usize) -> Result<Self>
    where
        B: crate::cuda::Backend + Send + Sync + 'static,
        B::F: Send + Sync + 'static,
    {
        let w = crate::cuda::Weights::upload(&be, &self.file)?;
        let o = self.options().clone();
        let run: std::sync::Arc<TestRun> = std::sync::Arc::new(
            move |chars: &[u16], segs: &[(usize, usize)], init: [crate::cuda::Init<'_>; 2], flags: (bool, bool)| {
                crate::cuda::forward(&be, &w, &o, chars, segs, init, flags, zx_bytes)
            },
        );
        self.accel = Some(Accel::Test(run));
        Ok(self)
    }

    /// Where the forward pass runs.
    pub fn device(&self) -> Device {
        match &self.accel {
            Some(Accel::Cuda(g)) => Device::Cuda(g.ordinal()),
            _ => Device::Cpu,
        }
    }

    /// The working-memory budget (see [`with_memory_budget`](Self::with_memory_budget)).
    pub fn memory_budget(&self) -> usize {
        self.budget
    }

    /// `(hits, misses)` of the token cache so far (zeros without one),
    /// counted per distinct word of each call (per token with word sharing
    /// off).
    pub fn token_cache_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.cache
            .as_ref()
            .map_or((0, 0), |c| (c.hits.load(Relaxed), c.misses.load(Relaxed)))
    }

    /// Token embeddings of `ids` (n tokens of C ids). Each distinct word is
    /// computed once per call (the `<S>` and `</S>` of every sentence, and
    /// repeated words, are one row each), through the cache when there is
    /// one and intermediates are not wanted, then copied to its positions.
    /// Every row is the same fma chain whatever the rows around it, so the
    /// results are bitwise those of computing every position.
    fn tokens(&self, ids: &[u16], keep: bool) -> TokenOut {
        let (c, p) = (
            self.options().char_cnn.max_characters_per_token,
            self.options().lstm.projection_dim,
        );
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

    /// The model's options.
    pub fn options(&self) -> &Options {
        &self.file.options
    }

    /// The underlying model file (tensors by name, path).
    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    /// Embeds tokenized sentences, each independently (zero initial state).
    pub fn embed<S: AsRef<[T]>, T: AsRef<str>>(&self, sentences: &[S]) -> Result<BiLmOutput> {
        let ids = encode_batch(sentences, self.options().char_cnn.max_characters_per_token)?;
        Ok(self.run(&ids, None, false)?.0)
    }

    /// Embeds tokenized sentences starting from, and updating, `state`
    /// (bilm-tf's default stateful behaviour).
    pub fn embed_stateful<S: AsRef<[T]>, T: AsRef<str>>(
        &self,
        sentences: &[S],
        state: &mut LstmState,
    ) -> Result<BiLmOutput> {
        let ids = encode_batch(sentences, self.options().char_cnn.max_characters_per_token)?;
        Ok(self.run(&ids, Some(state), false)?.0)
    }

    /// Runs the biLM on character ids; stateless when `state` is `None`.
    pub fn forward(&self, ids: &CharIds, state: Option<&mut LstmState>) -> Result<BiLmOutput> {
        Ok(self.run(ids, state, false)?.0)
    }

    /// Like [`forward`](Self::forward), also returning bilm-tf's internal arrays.
    pub fn forward_with_intermediates(
        &self,
        ids: &CharIds,
        state: Option<&mut LstmState>,
    ) -> Result<(BiLmOutput, Intermediates)> {
        let (out, inter) = self.run(ids, state, true)?;
        Ok((out, inter.expect("intermediates requested")))
    }

    fn run(
        &self,
        ids: &CharIds,
        state: Option<&mut LstmState>,
        keep: bool,
    ) -> Result<(BiLmOutput, Option<Intermediates>)> {
        let o = self.options();
        let (p, u, nl) = (o.lstm.projection_dim, o.lstm.dim, o.lstm.n_layers);
        let c = o.char_cnn.max_characters_per_token;
        if ids.chars() != c {
            return Err(Error::Input(format!(
                "char ids have {} characters per token, the model expects {c}",
                ids.chars()
            )));
        }
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
            // share of each step. Larger ones: the directions side by side.
            let big = 5 * u * p >= SHARED_STEPS_MIN_WEIGHTS;
            let (fwd, mut bwd) = if b <= SHARED_STEPS_MAX_BATCH && big && rayon::current_num_threads() > 1 {
                let n = rayon::current_num_threads();
                (
                    self.lstm_direction(0, tokens.tok.clone(), words(0), &segs, &init0, n),
                    self.lstm_direction(1, reversed, words(1), &segs, &init1, n),
                )
            } else {
                rayon::join(
                    || self.lstm_direction(0, tokens.tok.clone(), words(0), &segs, &init0, 1),
                    || self.lstm_direction(1, reversed, words(1), &segs, &init1, 1),
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
        let data = gpu_data.unwrap_or_else(|| self.assemble(&segs, &tokens.tok, &fwd, &bwd, t_max));
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

    /// The output `(B, L + 1, T, 2P)` from the packed token embeddings and
    /// layer outputs (natural order): token j of a sentence is its packed
    /// row j + 1 (the boundaries removed); padding stays zero.
    fn assemble(
        &self,
        segs: &[(usize, usize)],
        tok: &[f32],
        fwd: &DirectionOut,
        bwd: &DirectionOut,
        t_max: usize,
    ) -> Vec<f32> {
        let o = self.options();
        let (p, nk) = (o.lstm.projection_dim, o.lstm.n_layers + 1);
        let dim = 2 * p;
        let mut data = vec![0f32; segs.len() * nk * t_max * dim];
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
        data
    }

    /// Scatters packed results into bilm-tf's padded `(B, T2, ...)` layout;
    /// padded positions get the all-padding token's values (CNN, highway,
    /// token embedding) or zeros (LSTM), as in bilm-tf.
    #[allow(clippy::too_many_arguments)]
    fn intermediates(
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
        let pad = self.token_pipeline(&vec![0u16; o.char_cnn.max_characters_per_token], true);
        let scatter = |packed: &[f32], pad_row: &[f32], w: usize| -> Vec<f32> {
            let mut v = Vec::with_capacity(b * t2 * w);
            for &(off, len) in segs {
                v.extend_from_slice(&packed[off * w..(off + len) * w]);
                for _ in len..t2 {
                    v.extend_from_slice(pad_row);
                }
            }
            v
        };
        let zeros_p = vec![0f32; p];
        let lstm =
            |dir: &DirectionOut| -> Vec<f32> { dir.outputs.iter().flat_map(|x| scatter(x, &zeros_p, p)).collect() };
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
            char_cnn: Tensor::from_vec(&[b, t2, f], scatter(&tokens.cnn, &pad.cnn, f))?,
            highway: tokens
                .highway
                .iter()
                .zip(&pad.highway)
                .map(|(h, ph)| Tensor::from_vec(&[b, t2, f], scatter(h, ph, f)))
                .collect::<Result<_>>()?,
            token_embeddings: Tensor::from_vec(&[b, t2, p], scatter(&tokens.tok, &pad.tok, p))?,
            lstm_fwd: Tensor::from_vec(&[nl, b, t2, p], lstm(fwd))?,
            lstm_bwd: Tensor::from_vec(&[nl, b, t2, p], lstm(bwd))?,
            final_c: Tensor::from_vec(&[2, nl, b, u], final_c)?,
            final_h: Tensor::from_vec(&[2, nl, b, p], final_h)?,
        })
    }

    /// Char CNN, highway and projection for `ids.len() / C` tokens, in
    /// parallel chunks. `keep`: also return the CNN and highway outputs.
    fn token_pipeline(&self, ids: &[u16], keep: bool) -> TokenOut {
        let c = self.options().char_cnn.max_characters_per_token;
        let chunk = Limits::new(self.options(), self.budget).token_chunk * c;
        let chunks = ids.len().div_ceil(chunk).max(1);
        // Fewer chunks than threads (a short request): the threads share
        // each product's columns instead.
        let parts = rayon::current_num_threads() / chunks;
        let parts: Vec<TokenOut> = ids
            .par_chunks(chunk)
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

    fn token_chunk(&self, ids: &[u16], keep: bool, parts: usize) -> TokenOut {
        let o = self.options();
        let (c, e, f) = (
            o.char_cnn.max_characters_per_token,
            o.char_cnn.embedding_dim,
            o.n_filters(),
        );
        let n = ids.len() / c;
        // (n*C, E): character embeddings, token after token.
        let table = self.char_embed.data();
        let mut emb = Vec::with_capacity(ids.len() * e);
        for &id in ids {
            let r = id as usize * e;
            emb.extend_from_slice(&table[r..r + e]);
        }
        // (n, F): one token at a time (spread over the threads when they
        // share this chunk), each filter's windows in one product, then the
        // max over them, the bias and the activation, while the product's
        // (C - w + 1, count) rows are still in L2. (All of a chunk's windows
        // in one product wrote a (n C, count) buffer to memory first: at 64
        // tokens on one core the convolutions took 1.9x as long.)
        let mut x = vec![0f32; n * f];
        let conv_token = |buf: &mut Vec<f32>, (xt, et): (&mut [f32], &[f32])| {
            let mut col = 0;
            for conv in &self.convs {
                let (w, nf) = (conv.width, conv.count);
                let rows = c - w + 1;
                buf.resize(rows * nf, 0.0);
                let kernel = Strips::new(conv.kernel.data(), w * e, nf);
                crate::cpu::strips_gemm(rows, et, e, kernel, 0, kernel.n_strips(), buf, nf, false);
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
        };
        if parts > 1 {
            x.par_chunks_mut(f.max(1))
                .zip(emb.par_chunks(c * e))
                .for_each_init(Vec::new, conv_token);
        } else {
            let mut buf = Vec::new();
            x.chunks_mut(f.max(1))
                .zip(emb.chunks(c * e))
                .for_each(|t| conv_token(&mut buf, t));
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

    /// All layers of one direction. `x`: (N, P) layer-0 input in processing
    /// order; `words`: when words repeat, the distinct rows of `x` (W, P)
    /// and the row of every position; `init[l]`: the starting (c, h) rows of
    /// layer l, or zeros; `parts`: threads sharing each step.
    #[allow(clippy::too_many_arguments)]
    fn lstm_direction(
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
            macro_rules! layer {
                ($k:expr, $pj:expr) => {{
                    let (k, pj) = (
                        Strips::new($k.data(), 2 * p, 4 * u),
                        Strips::new($pj.data(), u, p),
                    );
                    let words = if l == 0 { words } else { None };
                    self.lstm_layer(l, k, pj, layer, (x, words), segs, init, parts)
                }};
            }
            let (out, fin) = match (&layer.kernel, &layer.projection) {
                (Mat::F32(k), Mat::F32(pj)) => layer!(k, pj),
                (Mat::Bf16(k), Mat::Bf16(pj)) => layer!(k, pj),
                (Mat::F32(k), Mat::Bf16(pj)) => layer!(k, pj),
                (Mat::Bf16(k), Mat::F32(pj)) => layer!(k, pj),
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
    fn lstm_layer<T: WeightElem, Q: WeightElem>(
        &self,
        l: usize,
        w0: Strips<'_, T>,
        wp: Strips<'_, Q>,
        layer: &LstmLayer,
        (x, words): (&[f32], Option<Words<'_>>),
        segs: &[(usize, usize)],
        init: Option<&(Vec<f32>, Vec<f32>)>,
        n_parts: usize,
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
    fn lstm_group<T: WeightElem, Q: WeightElem>(
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
                        crate::cpu::strips_gemm(rows, &xb, p, w_in, s0, s1, &mut part.zx[col..], w4, false);
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
                    crate::cpu::strips_gemm(na, &hbuf, p, w_h, s0, s1, &mut part.zh[col..], 4 * w, rev);
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
                crate::cpu::strips_gemm(na, &mbuf, u, wp, s0, s1, &mut part.h, j1 - j0, rev);
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
        for part in &parts {
            let (u0, u1) = part.units;
            let w = u1 - u0;
            for i in 0..b {
                cs[i * u + u0..i * u + u1].copy_from_slice(&part.c[i * w..(i + 1) * w]);
            }
        }
    }
}

/// The distinct words of `ids` (tokens of `c` ids each) in order of first
/// appearance, and for every token the index of its word.
pub(crate) fn distinct_words(ids: &[u16], c: usize) -> (Vec<u16>, Vec<usize>) {
    let c = c.max(1);
    let n = ids.len() / c;
    let mut seen: std::collections::HashMap<&[u16], usize> = std::collections::HashMap::with_capacity(n);
    let mut words = Vec::with_capacity(ids.len());
    let index = ids
        .chunks_exact(c)
        .map(|w| {
            *seen.entry(w).or_insert_with(|| {
                words.extend_from_slice(w);
                words.len() / c - 1
            })
        })
        .collect();
    (words, index)
}

/// Rows `index[i]` of `x` (rows of `w` values), one after the other; empty
/// for an empty `x`.
pub(crate) fn gather_rows(x: &[f32], index: &[usize], w: usize) -> Vec<f32> {
    if x.is_empty() {
        return Vec::new();
    }
    let mut y = Vec::with_capacity(index.len() * w);
    for &i in index {
        y.extend_from_slice(&x[i * w..(i + 1) * w]);
    }
    y
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
