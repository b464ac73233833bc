//! The biLM forward pass, as bilm-tf computes it.
//!
//! Positions are handled *packed*: only real positions (the `<S>`, tokens and
//! `</S>` of each sentence) are computed, sentence after sentence, so padding
//! costs nothing and no sentence's result depends on the rest of its batch.
//! Shapes in comments use B = sentences, T2 = positions incl. boundaries,
//! N = real positions of the batch, C = characters per token, E = char
//! embedding, F = filters, P = projection, U = LSTM cell size, L = layers.
//!
//! Two orchestrations exist: this CPU pass (`pass.rs`, `tokens.rs`, `lstm.rs`)
//! and the GPU pass ([`crate::backend::cuda`]'s `pass.rs`, over its backend
//! trait; run on the host backend it gives this pass's results bitwise).
//! The CPU pass keeps its own for now, because what makes it fast is not
//! expressible in the trait's per-step operations: one step's recurrent
//! product shared by the threads of a small batch, the token cache across
//! calls, the working-memory blocking of the char CNN. Measured on the
//! full-size model (2 threads, Intel Xeon, 2026-12-01): W1 (1 x 10 tokens)
//! takes 70-76 ms here and 4.8-5.4 s through the GPU pass on the host
//! backend, whose kernels are the plain references, with equal bits. A
//! CPU backend of the trait with these kernels is the way to one pass.

mod lstm;
mod output;
mod pass;
mod scratch;
mod state;
mod tokens;

pub use output::{BiLmOutput, Intermediates};
pub use state::LstmState;

use crate::backend::cpu::gather_rows;
use crate::backend::cpu::{STRIP, Strips, WeightElem, add_bias, clip, highway_blend, lstm_cell, strips_gemm_par};
use crate::backend::cuda::Device;
use crate::chars::distinct_words;
use crate::chars::{CharIds, encode_batch};
use crate::error::{Error, Result};
use crate::io::model_file::{ModelFile, lstm_name};
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

// Matrices are strip-packed ([`crate::layout::pack_strips`]) as the file stores them.
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

/// A strip-packed weight matrix in f32 or bfloat16 (`elmo convert --dtype
/// bf16`), as the file stores it or, for the `avx512bf16` kernels, bf16
/// copied into the paired layout at load
/// ([`pair_strip_rows`](crate::layout::pair_strip_rows)).
enum Mat {
    F32(Tensor),
    Bf16(Bf16Tensor),
    Bf16Paired(Bf16Tensor),
}

/// A [`Mat`] as the kernels read it.
enum MatView<'a> {
    F32(Strips<'a, f32>),
    Bf16(Strips<'a, u16>),
}

impl Mat {
    /// Bytes per weight.
    fn elem_bytes(&self) -> usize {
        match self {
            Mat::F32(_) => 4,
            Mat::Bf16(_) | Mat::Bf16Paired(_) => 2,
        }
    }

    /// The `depth x n` matrix as strips.
    fn view(&self, depth: usize, n: usize) -> MatView<'_> {
        match self {
            Mat::F32(t) => MatView::F32(Strips::new(t.data(), depth, n)),
            Mat::Bf16(t) => MatView::Bf16(Strips::new(t.data(), depth, n)),
            Mat::Bf16Paired(t) => MatView::Bf16(Strips::new_paired(t.data(), depth, n)),
        }
    }

    /// The bf16 matrix `b` (`depth x n`, strip-packed) as the kernels of
    /// this process read it fastest: in the paired layout at the
    /// `avx512bf16` and `amx` levels (a copy: `vdpbf16ps` then needs no shuffle per
    /// load, which at batch 1 halved the product's rate), else mapped as
    /// stored. Views of a paired matrix must start at even rows, so the
    /// layout is used only where `even_rows` (the depth and every view's
    /// first row even).
    fn bf16(b: &Bf16Tensor, depth: usize, n: usize, even_rows: bool) -> Result<Mat> {
        use crate::backend::cpu::simd_level;
        if simd_level().reads_paired_bf16() && even_rows && depth.is_multiple_of(2) {
            let paired = crate::layout::pair_strip_rows(b.data(), depth, n);
            // The mapped original is not read again: its 144 MiB (full
            // model) no longer count as this process's memory.
            b.release_mapped_pages();
            Ok(Mat::Bf16Paired(Bf16Tensor::from_bits(b.shape(), paired)?))
        } else {
            Ok(Mat::Bf16(b.clone()))
        }
    }
}

/// One LSTM layer's weights; the matrices are strip-packed
/// ([`crate::layout::pack_strips`]), as the model file stores them.
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
/// them in the shared cache from step to step. Unless the last-level cache
/// holds both directions' step weights several times over
/// ([`STEP_WEIGHTS_PER_CACHE`]): then each direction runs on its own
/// threads with no hand-off per step.
const SHARED_STEPS_MAX_BATCH: usize = 8;

/// How many times both directions' step weights (the recurrent half of
/// `W_0` and the projection, one layer each) must fit in the last-level
/// cache for small batches to run the directions side by side instead of
/// sharing steps. Measured 2026-12-02 at batch 1 (W1, full-size model, 2
/// threads, medians of 9, in one shell loop): on a Xeon with 480 MiB of
/// L3 side by side ran 27.3-28.2 ms against 30.9-38.3 shared (bf16, 2 x
/// 20 MiB) and 53.0-54.6 against 56.3-60.6 (f32, 2 x 40 MiB); on Zen 4's
/// 32 MiB L3 the two directions' weights do not fit together, and shared
/// steps stay.
const STEP_WEIGHTS_PER_CACHE: usize = 4;

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
    char_embed: Tensor,         // (262, E), row 0 = zeros (ELMoForManyLangs: its lexicon's rows + 1)
    word_embed: Option<Tensor>, // (words + 1, D), row 0 = zeros
    lexicon: Option<crate::lexicon::Lexicon>,
    convs: Vec<Conv>,
    highways: Vec<Highway>,
    projection: Option<(Tensor, Tensor)>, // (F, P), (P,)
    lstm: [Vec<LstmLayer>; 2],            // [direction][layer]
    cache: Option<TokenCache>,
    budget: usize,
    accel: Option<Accel>,
    share_words: bool,
    /// Small batches: `Some(true)` shares each step between the threads,
    /// `Some(false)` runs the directions side by side, `None` by the cache.
    shared_steps: Option<bool>,
    /// The LSTM's input-side product buffers, kept between passes.
    scratch: scratch::Scratch,
}

/// A backend other than the CPU path running the forward pass.
enum Accel {
    /// A CUDA device.
    Cuda(std::sync::Arc<crate::backend::cuda::GpuModel>),
    /// The GPU pass's orchestration on another backend (tests only): the
    /// host backend or the kernel emulator.
    #[cfg(test)]
    Test(std::sync::Arc<TestRun>),
}

/// [`crate::backend::cuda::forward`] on a test backend, its weights uploaded.
#[cfg(test)]
type TestRun = dyn Fn(
        &[u16],
        &[(usize, usize)],
        [crate::backend::cuda::Init<'_>; 2],
        (bool, bool),
    ) -> Result<crate::backend::cuda::GpuOut>
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
        // An `ELMO_SIMD` this CPU cannot honour is refused here, once, with
        // the levels it has, rather than ignored.
        crate::backend::cpu::simd_level_checked()?;
        let t = |n: &str| file.tensor(n).cloned();
        let (p, u) = (file.options.lstm.projection_dim, file.options.lstm.dim);
        // (name, depth, columns, whether every view starts at an even row):
        // the kernel's input and recurrent halves start at rows 0 and P.
        let mat = |n: &str, depth: usize, cols: usize, even: bool| match file.bf16.get(n) {
            Some(b) => Mat::bf16(b, depth, cols, even),
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
                        kernel: mat(&lstm_name(d, l, "W_0"), 2 * p, 4 * u, p.is_multiple_of(2))?,
                        bias: t(&lstm_name(d, l, "B"))?,
                        projection: mat(&lstm_name(d, l, "W_P_0"), u, p, true)?,
                    })
                })
                .collect()
        };
        let word_embed = match o.word_embedding {
            Some(_) => Some(t("word_embed")?),
            None => None,
        };
        Ok(ElmoModel {
            char_embed: t("char_embed")?,
            word_embed,
            lexicon: file.lexicon.clone(),
            convs,
            highways,
            projection,
            lstm: [layers(0)?, layers(1)?],
            cache: None,
            budget: DEFAULT_MEMORY_BUDGET,
            accel: None,
            share_words: true,
            shared_steps: None,
            scratch: scratch::Scratch::default(),
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

    /// How batches of at most 8 sentences use the threads in the LSTM:
    /// `Some(true)` shares each step between all threads, one direction
    /// after the other; `Some(false)` runs the two directions side by side
    /// (no hand-off per step, but both directions' weights in the cache at
    /// once); `None` (default) side by side where the last-level cache
    /// holds both directions' step weights four times over, else shared
    /// (the environment variable `ELMO_SHARED_STEPS=1`/`0` decides for
    /// `None`, for measurements). Outputs are bitwise the same either way.
    pub fn with_shared_steps(mut self, shared: Option<bool>) -> Self {
        self.shared_steps = shared;
        self
    }

    /// Bounds the working memory of a forward pass to about `bytes`
    /// (default [`DEFAULT_MEMORY_BUDGET`], 512 MiB): long sentences are run
    /// in blocks of steps, many sentences in groups, the token pipeline in
    /// smaller pieces. Results are bitwise the same for any budget. Not
    /// counted: the weights (mapped), the activations that grow with the
    /// input (each layer's outputs, `N x P` floats per layer and direction)
    /// and the returned output itself; memory for those grows with the input.
    /// Up to a quarter of the budget (the LSTM's input-side product buffers)
    /// stays allocated between passes, so that the next pass does not
    /// page-fault it in again.
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes;
        self
    }

    /// Runs the model on `device`: [`Device::Cuda`] uploads the weights to
    /// that GPU and loads its kernels now (see [`crate::backend::cuda`]); outputs
    /// agree with the CPU's to float32 rounding. [`Device::Cpu`] drops a GPU
    /// copy. The token cache and memory budget apply to the CPU path only.
    ///
    /// Errors: [`Error::CudaNotCompiled`] in a build without the `cuda`
    /// feature; [`Error::CudaUnavailable`] when the device cannot be used
    /// (no driver, no such device, too old, too small), naming the device.
    pub fn with_device(mut self, device: Device) -> Result<Self> {
        self.accel = match device {
            Device::Cpu => None,
            Device::Cuda(n) => Some(Accel::Cuda(std::sync::Arc::new(crate::backend::cuda::GpuModel::new(
                &self.file, n,
            )?))),
        };
        Ok(self)
    }

    /// The GPU forward pass run by [`crate::backend::cuda::HostBackend`] (tests),
    /// input-side LSTM products in blocks of about `zx_bytes`.
    #[cfg(test)]
    pub(crate) fn with_host_backend(self, zx_bytes: usize) -> Result<Self> {
        self.with_test_backend(crate::backend::cuda::HostBackend::default(), zx_bytes)
    }

    /// The GPU forward pass run by backend `be` (tests): the host backend,
    /// or the kernel emulator; input-side LSTM products in blocks of about
    /// `zx_bytes`.
    #[cfg(test)]
    pub(crate) fn with_test_backend<B>(mut self, be: B, zx_bytes: usize) -> Result<Self>
    where
        B: crate::backend::cuda::Backend + Send + Sync + 'static,
        B::F: Send + Sync + 'static,
    {
        let w = crate::backend::cuda::Weights::upload(&be, &self.file)?;
        let o = self.options().clone();
        let run: std::sync::Arc<TestRun> = std::sync::Arc::new(
            move |chars: &[u16],
                  segs: &[(usize, usize)],
                  init: [crate::backend::cuda::Init<'_>; 2],
                  flags: (bool, bool)| {
                crate::backend::cuda::forward(&be, &w, &o, chars, segs, init, flags, zx_bytes)
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

    /// The model's options.
    pub fn options(&self) -> &Options {
        &self.file.options
    }

    /// The underlying model file (tensors by name, path).
    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    /// The ids the model computes tokenized sentences from: bilm-tf's
    /// character bytes ([`crate::chars`]), or an ELMoForManyLangs model's
    /// lexicon ids ([`crate::lexicon`]). The tokenisation is the model's.
    pub fn encode<S: AsRef<[T]>, T: AsRef<str>>(&self, sentences: &[S]) -> Result<CharIds> {
        let c = self.options().char_cnn.max_characters_per_token;
        match &self.lexicon {
            None => encode_batch(sentences, c),
            Some(l) => l.encode_batch(sentences, c),
        }
    }

    /// The lexicon of an ELMoForManyLangs model (`None` for bilm-tf's).
    pub fn lexicon(&self) -> Option<&crate::lexicon::Lexicon> {
        self.lexicon.as_ref()
    }

    /// Refuses ids outside the embeddings (ids of another model's
    /// tokenisation, say), naming the first.
    fn check_id_range(&self, ids: &CharIds) -> Result<()> {
        let o = self.options();
        let (c, width) = (o.char_cnn.max_characters_per_token, o.ids_per_token());
        let rows = o.char_cnn.n_characters;
        let words = o.word_embedding.map_or(0, |w| w.n_words);
        for row in ids.ids().chunks_exact(width.max(1)) {
            if let Some(&bad) = row[..c].iter().find(|&&x| x as usize >= rows) {
                return Err(Error::Input(format!(
                    "char id {bad} is out of range for this model (0..{rows})"
                )));
            }
            if width > c {
                let w = row[c] as usize | (row[c + 1] as usize) << 16;
                if w >= words {
                    return Err(Error::Input(format!(
                        "word id {w} is out of range for this model (0..{words})"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Embeds tokenized sentences, each independently (zero initial state).
    pub fn embed<S: AsRef<[T]>, T: AsRef<str>>(&self, sentences: &[S]) -> Result<BiLmOutput> {
        let ids = self.encode(sentences)?;
        Ok(self.run(&ids, None, false)?.0)
    }

    /// Embeds tokenized sentences starting from, and updating, `state`
    /// (bilm-tf's default stateful behaviour).
    pub fn embed_stateful<S: AsRef<[T]>, T: AsRef<str>>(
        &self,
        sentences: &[S],
        state: &mut LstmState,
    ) -> Result<BiLmOutput> {
        let ids = self.encode(sentences)?;
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
}
