//! `ElmoEmbedding`: the Keras `ELMoEmbedding(idx2word, output_mode,
//! trainable)` layer, with its known bugs fixed.
//!
//! Input is a `(batch, max_len)` tensor of token ids, 0 = padding wherever it
//! stands. Every output row lines up with its input positions; padded
//! positions are zero in every mode.

pub mod mix;

use crate::error::{Error, Result};
use crate::layer::mix::{MixConfig, ScalarMix};
use crate::model::{BiLmOutput, ElmoModel, LstmState};
use crate::tensor::Tensor;
use crate::train::autograd::{Param, Var};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// What the layer returns (P = projection dim, K = LSTM layers + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// (batch, 2P): mean of the `elmo` vectors over each row's real tokens.
    Default,
    /// (batch, max_len, P): the character-based token representation.
    WordEmb,
    /// (batch, max_len, 2P): `[forward, backward]` of LSTM layer k (1-based;
    /// `lstm_outputs1`, `lstm_outputs2` for the released models).
    LstmOutputs(usize),
    /// (batch, max_len, 2P): the trainable scalar mix of all layers.
    Elmo,
    /// (batch, K, max_len, 2P): every layer.
    All,
}

impl FromStr for OutputMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "default" => OutputMode::Default,
            "word_emb" => OutputMode::WordEmb,
            "elmo" => OutputMode::Elmo,
            "all" => OutputMode::All,
            _ => match s.strip_prefix("lstm_outputs").and_then(|k| k.parse::<usize>().ok()) {
                Some(k) if k >= 1 => OutputMode::LstmOutputs(k),
                _ => {
                    return Err(Error::Input(format!(
                        "unknown output mode '{s}': expected default, word_emb, lstm_outputs1, lstm_outputs2, elmo or all"
                    )));
                }
            },
        })
    }
}

impl std::fmt::Display for OutputMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputMode::Default => write!(f, "default"),
            OutputMode::WordEmb => write!(f, "word_emb"),
            OutputMode::LstmOutputs(k) => write!(f, "lstm_outputs{k}"),
            OutputMode::Elmo => write!(f, "elmo"),
            OutputMode::All => write!(f, "all"),
        }
    }
}

/// A `(batch, max_len)` tensor of token ids; 0 is padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds {
    batch: usize,
    len: usize,
    ids: Vec<i64>,
}

impl TokenIds {
    /// Ids with a shape, which must be 2-D and match the data.
    pub fn new(shape: &[usize], ids: Vec<i64>) -> Result<Self> {
        let &[batch, len] = shape else {
            return Err(Error::Input(format!(
                "token ids must be 2-D (batch, max_len), got shape {shape:?}"
            )));
        };
        if batch.checked_mul(len) != Some(ids.len()) {
            return Err(Error::Input(format!(
                "shape {shape:?} does not match {} ids",
                ids.len()
            )));
        }
        Ok(TokenIds { batch, len, ids })
    }

    /// Equal-length rows.
    pub fn from_rows(rows: &[Vec<i64>]) -> Result<Self> {
        let len = rows.first().map_or(0, Vec::len);
        if let Some(r) = rows.iter().position(|r| r.len() != len) {
            return Err(Error::Input(format!(
                "row {r} has {} ids, row 0 has {len}",
                rows[r].len()
            )));
        }
        Self::new(&[rows.len(), len], rows.concat())
    }

    /// Ids from a float tensor (Keras feeds ids as floats): each value must be
    /// a whole number.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let ids = t
            .data()
            .iter()
            .map(|&v| {
                if v.is_finite() && v.fract() == 0.0 {
                    Ok(v as i64)
                } else {
                    Err(Error::Input(format!("token id {v} is not a whole number")))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(t.shape(), ids)
    }

    /// `(batch, max_len)`.
    pub fn shape(&self) -> [usize; 2] {
        [self.batch, self.len]
    }

    /// Row `b`.
    ///
    /// # Panics
    /// When `b` is not a row of the batch.
    pub fn row(&self, b: usize) -> &[i64] {
        &self.ids[b * self.len..(b + 1) * self.len]
    }
}

/// Everything one biLM pass gives, aligned to the input positions.
#[derive(Debug, Clone)]
pub struct LayerOutputs {
    /// (B, K, T, 2P): every layer; zero at padded positions.
    pub all: Tensor,
    /// (B, T): 1 at real tokens.
    pub mask: Vec<f32>,
    /// Real tokens per row.
    pub lengths: Vec<usize>,
    /// One (B, T, 2P) mix per output representation.
    pub elmo: Vec<Var>,
}

impl LayerOutputs {
    fn dims(&self) -> (usize, usize, usize, usize) {
        let s = self.all.shape();
        (s[0], s[1], s[2], s[3])
    }

    /// (B, T, P): layer 0's first half.
    pub fn word_emb(&self) -> Result<Tensor> {
        let (b, k, t, d) = self.dims();
        let p = d / 2;
        let src = self.all.data();
        let mut v = Vec::with_capacity(b * t * p);
        for bi in 0..b {
            for ti in 0..t {
                let o = ((bi * k) * t + ti) * d;
                v.extend_from_slice(&src[o..o + p]);
            }
        }
        Tensor::from_vec(&[b, t, p], v)
    }

    /// (B, T, 2P): LSTM layer `layer` (1-based).
    pub fn lstm_outputs(&self, layer: usize) -> Result<Tensor> {
        let (b, k, t, d) = self.dims();
        if layer == 0 || layer >= k {
            return Err(Error::Input(format!(
                "lstm_outputs{layer}: the model has {} LSTM layers",
                k - 1
            )));
        }
        let src = self.all.data();
        let mut v = Vec::with_capacity(b * t * d);
        for bi in 0..b {
            let o = (bi * k + layer) * t * d;
            v.extend_from_slice(&src[o..o + t * d]);
        }
        Tensor::from_vec(&[b, t, d], v)
    }

    /// (B, 2P): masked mean over time of mix `i`.
    pub fn default(&self, i: usize) -> Result<Var> {
        self.mix(i)?.masked_mean(&self.mask)
    }

    fn mix(&self, i: usize) -> Result<&Var> {
        self.elmo
            .get(i)
            .ok_or_else(|| Error::Input(format!("mix {i} does not exist ({} mixes)", self.elmo.len())))
    }

    /// The output of `mode` (mix 0 for `elmo` and `default`).
    pub fn get(&self, mode: OutputMode) -> Result<Var> {
        Ok(match mode {
            OutputMode::Default => self.default(0)?,
            OutputMode::Elmo => self.mix(0)?.clone(),
            OutputMode::WordEmb => Var::constant(self.word_emb()?),
            OutputMode::LstmOutputs(k) => Var::constant(self.lstm_outputs(k)?),
            OutputMode::All => Var::constant(self.all.clone()),
        })
    }
}

/// A mix of `model`'s layers starting at `weights`/`gamma` when given, else
/// at the model file's `aggregation/{weights,scaling}` (TF Hub's trained
/// mix) when it carries them, else at bilm-tf's initial zeros and 1.
pub fn starting_mix(
    model: &ElmoModel,
    weights: Option<Vec<f32>>,
    gamma: Option<f32>,
    config: MixConfig,
    trainable: bool,
) -> Result<ScalarMix> {
    let k = model.options().n_output_layers();
    let t = &model.file().tensors;
    let agg_w = t
        .get("aggregation/weights")
        .filter(|x| x.len() == k)
        .map(|x| x.data().to_vec());
    let agg_g = t
        .get("aggregation/scaling")
        .filter(|x| x.len() == 1)
        .map(|x| x.data()[0]);
    let w = weights.or(agg_w).unwrap_or_else(|| vec![0.0; k]);
    ScalarMix::new(k, &w, gamma.or(agg_g).unwrap_or(1.0), config, trainable)
}

/// Places each sentence's vectors at its input positions: `positions[b][j]`
/// is where token `j` of sentence `b` stands in a row of `t` positions.
/// Returns every layer, (B, K, t, 2P), zero elsewhere, and the (B, t) mask.
pub fn align_to_positions(out: &BiLmOutput, positions: &[Vec<usize>], t: usize) -> Result<(Tensor, Vec<f32>)> {
    let (b, k, d) = (out.lengths.len(), out.n_layers, out.dim);
    if positions.len() != b || positions.iter().zip(&out.lengths).any(|(p, &n)| p.len() != n) {
        return Err(Error::Shape("positions do not match the sentences".into()));
    }
    if positions.iter().flatten().any(|&p| p >= t) {
        return Err(Error::Shape(format!("a position lies beyond the row length {t}")));
    }
    let mut all = vec![0f32; b * k * t * d];
    let mut mask = vec![0f32; b * t];
    for (bi, pos) in positions.iter().enumerate() {
        for (j, &ti) in pos.iter().enumerate() {
            mask[bi * t + ti] = 1.0;
            for kk in 0..k {
                let dst = ((bi * k + kk) * t + ti) * d;
                all[dst..dst + d].copy_from_slice(out.vector(bi, kk, j));
            }
        }
    }
    Ok((Tensor::from_vec(&[b, k, t, d], all)?, mask))
}

/// One output mode of a biLM pass without recording a graph: (B, K, T, 2P)
/// for `all`, (B, T, P) `word_emb`, (B, T, 2P) `lstm_outputsK` and `elmo`
/// (through `mix`), (B, 2P) `default` (the masked mean of `elmo`). Padded
/// positions are zero. `all` takes the output's buffer without a copy.
pub fn select_output(out: BiLmOutput, mode: OutputMode, mix: &ScalarMix) -> Result<Tensor> {
    let (b, k, t, d) = (out.lengths.len(), out.n_layers, out.max_len, out.dim);
    if let OutputMode::LstmOutputs(l) = mode
        && (l == 0 || l >= k)
    {
        return Err(Error::Input(format!(
            "lstm_outputs{l}: the model has {} LSTM layers",
            k - 1
        )));
    }
    let mask: Vec<f32> = out
        .lengths
        .iter()
        .flat_map(|&l| (0..t).map(move |j| if j < l { 1.0 } else { 0.0 }))
        .collect();
    let lengths = out.lengths.clone();
    let all = Tensor::from_vec(&[b, k, t, d], out.data)?;
    if mode == OutputMode::All {
        return Ok(all);
    }
    let outs = LayerOutputs {
        elmo: match mode {
            OutputMode::Elmo | OutputMode::Default => vec![mix.forward(&all, &mask, true)?],
            _ => Vec::new(),
        },
        all,
        mask,
        lengths,
    };
    Ok(outs.get(mode)?.value().clone())
}

/// Options of [`ElmoEmbedding`] beyond the Keras arguments.
#[derive(Debug, Clone)]
pub struct ElmoEmbeddingBuilder {
    model: Arc<ElmoModel>,
    idx2word: HashMap<i64, String>,
    mode: OutputMode,
    trainable: bool,
    unk: String,
    config: MixConfig,
    n_mixes: usize,
    weights: Option<Vec<f32>>,
    gamma: Option<f32>,
    stateful: Option<usize>,
}

impl ElmoEmbeddingBuilder {
    /// The word for ids missing from `idx2word` (default `<UNK>`).
    pub fn unk_token(mut self, w: impl Into<String>) -> Self {
        self.unk = w.into();
        self
    }
    /// Layer-normalise each layer before mixing (bilm-tf `do_layer_norm`).
    pub fn layer_norm(mut self, on: bool) -> Self {
        self.config.do_layer_norm = on;
        self
    }
    /// Mix only the top layer (bilm-tf `use_top_only`).
    pub fn top_only(mut self, on: bool) -> Self {
        self.config.use_top_only = on;
        self
    }
    /// L2 penalty coefficient on the mix weights.
    pub fn l2_coef(mut self, c: f32) -> Self {
        self.config.l2_coef = c;
        self
    }
    /// Several independent mixes from one biLM pass (allennlp's
    /// `num_output_representations`).
    pub fn num_output_representations(mut self, n: usize) -> Self {
        self.n_mixes = n;
        self
    }
    /// Initial (unnormalised) mix weights, one per layer.
    pub fn mix_weights(mut self, w: Vec<f32>) -> Self {
        self.weights = Some(w);
        self
    }
    /// Initial gamma.
    pub fn gamma(mut self, g: f32) -> Self {
        self.gamma = Some(g);
        self
    }
    /// bilm-tf's stateful behaviour, for batches of up to `capacity` rows.
    pub fn stateful(mut self, capacity: usize) -> Self {
        self.stateful = Some(capacity);
        self
    }

    /// Checks everything and builds the layer.
    pub fn build(self) -> Result<ElmoEmbedding> {
        if self.idx2word.is_empty() {
            return Err(Error::Input("idx2word has no entries".into()));
        }
        if self.n_mixes == 0 {
            return Err(Error::Input("num_output_representations must be at least 1".into()));
        }
        let k = self.model.options().n_output_layers();
        if let OutputMode::LstmOutputs(l) = self.mode
            && l >= k
        {
            return Err(Error::Input(format!(
                "lstm_outputs{l}: the model has {} LSTM layers",
                k - 1
            )));
        }
        let mixes = (0..self.n_mixes)
            .map(|_| {
                starting_mix(
                    &self.model,
                    self.weights.clone(),
                    self.gamma,
                    self.config,
                    self.trainable,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let state = match self.stateful {
            Some(cap) => Some(Mutex::new(LstmState::new(&self.model, cap)?)),
            None => None,
        };
        Ok(ElmoEmbedding {
            model: self.model,
            idx2word: self.idx2word,
            mode: self.mode,
            trainable: self.trainable,
            unk: self.unk,
            mixes,
            state,
        })
    }
}

/// Each row's words and their input positions (see [`ElmoEmbedding::words`]).
pub type RowWords<'a> = (Vec<Vec<&'a str>>, Vec<Vec<usize>>);

/// The ELMo embedding layer.
#[derive(Debug)]
pub struct ElmoEmbedding {
    model: Arc<ElmoModel>,
    idx2word: HashMap<i64, String>,
    mode: OutputMode,
    trainable: bool,
    unk: String,
    mixes: Vec<ScalarMix>,
    state: Option<Mutex<LstmState>>,
}

/// Format name of saved layers.
pub const LAYER_FORMAT: &str = "elmo-rs-layer";
/// Version of the saved-layer format.
pub const LAYER_FORMAT_VERSION: u64 = 1;

impl ElmoEmbedding {
    /// `ElmoEmbedding(idx2word, output_mode, trainable)` with defaults.
    ///
    /// Each distinct word of a call is computed once by the model anyway
    /// ([`ElmoModel::with_word_sharing`]); to reuse words across calls, give
    /// the layer a model with a token cache the size of its vocabulary,
    /// `ElmoModel::load(path)?.with_token_cache(idx2word.len() + 3)` (the
    /// `+ 3`: `<S>`, `</S>` and the unknown token), and each vocabulary
    /// word's char CNN, highway and projection run once for the life of the
    /// model.
    pub fn new(
        model: Arc<ElmoModel>,
        idx2word: HashMap<i64, String>,
        mode: OutputMode,
        trainable: bool,
    ) -> Result<Self> {
        Self::builder(model, idx2word, mode, trainable).build()
    }

    /// A builder for the options beyond the Keras arguments.
    pub fn builder(
        model: Arc<ElmoModel>,
        idx2word: HashMap<i64, String>,
        mode: OutputMode,
        trainable: bool,
    ) -> ElmoEmbeddingBuilder {
        ElmoEmbeddingBuilder {
            model,
            idx2word,
            mode,
            trainable,
            unk: "<UNK>".into(),
            config: MixConfig::default(),
            n_mixes: 1,
            weights: None,
            gamma: None,
            stateful: None,
        }
    }

    /// The shared model.
    pub fn model(&self) -> &Arc<ElmoModel> {
        &self.model
    }

    /// The configured output mode.
    pub fn output_mode(&self) -> OutputMode {
        self.mode
    }

    /// The mixes (one per output representation).
    pub fn mixes(&self) -> &[ScalarMix] {
        &self.mixes
    }

    /// The parameters an optimizer may update (empty when not trainable).
    pub fn trainable_params(&self) -> Vec<Param> {
        if !self.trainable {
            return Vec::new();
        }
        self.mixes
            .iter()
            .flat_map(|m| [m.weights.clone(), m.gamma.clone()])
            .collect()
    }

    /// Every parameter, trainable or not.
    pub fn params(&self) -> Vec<Param> {
        self.mixes
            .iter()
            .flat_map(|m| [m.weights.clone(), m.gamma.clone()])
            .collect()
    }

    /// The sum of the mixes' L2 penalties (add it to the loss to train).
    pub fn regularization_loss(&self) -> Result<Var> {
        let mut total = self.mixes[0].l2_loss()?;
        for m in &self.mixes[1..] {
            total = total.add(&m.l2_loss()?)?;
        }
        Ok(total)
    }

    /// The output shape for an input shape, without running the model
    /// (Keras' `compute_output_shape`).
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let &[b, t] = input else {
            return Err(Error::Input(format!(
                "input must be 2-D (batch, max_len), got {input:?}"
            )));
        };
        let o = self.model.options();
        let (p, k) = (o.projection_dim(), o.n_output_layers());
        Ok(match self.mode {
            OutputMode::Default => vec![b, 2 * p],
            OutputMode::WordEmb => vec![b, t, p],
            OutputMode::LstmOutputs(_) | OutputMode::Elmo => vec![b, t, 2 * p],
            OutputMode::All => vec![b, k, t, 2 * p],
        })
    }

    /// Sets the stateful rows back to zero (nothing for a stateless layer).
    pub fn reset_state(&self) {
        if let Some(s) = &self.state {
            s.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
    }

    /// The words of each row's real tokens and their input positions.
    pub fn words(&self, ids: &TokenIds) -> Result<RowWords<'_>> {
        let [b, _] = ids.shape();
        let mut words = Vec::with_capacity(b);
        let mut positions = Vec::with_capacity(b);
        for bi in 0..b {
            let (mut w, mut p) = (Vec::new(), Vec::new());
            for (t, &id) in ids.row(bi).iter().enumerate() {
                if id < 0 {
                    return Err(Error::Input(format!("token id {id} at ({bi}, {t}) is negative")));
                }
                if id != 0 {
                    // By key, not by position in a sorted key list.
                    w.push(self.idx2word.get(&id).map_or(self.unk.as_str(), String::as_str));
                    p.push(t);
                }
            }
            words.push(w);
            positions.push(p);
        }
        Ok((words, positions))
    }

    /// One biLM pass and every output, aligned to the input positions.
    pub fn forward_all(&self, ids: &TokenIds) -> Result<LayerOutputs> {
        let [b, t] = ids.shape();
        let (words, positions) = self.words(ids)?;
        let out = match &self.state {
            Some(s) => self
                .model
                .embed_stateful(&words, &mut s.lock().unwrap_or_else(|e| e.into_inner()))?,
            None => self.model.embed(&words)?,
        };
        let (all, mask) = align_to_positions(&out, &positions, t)?;
        debug_assert_eq!(all.shape()[0], b);
        let elmo = self
            .mixes
            .iter()
            .map(|m| m.forward(&all, &mask, true))
            .collect::<Result<Vec<_>>>()?;
        Ok(LayerOutputs {
            all,
            mask,
            lengths: out.lengths,
            elmo,
        })
    }

    /// The configured output for `ids` (mix 0 for `elmo` and `default`).
    pub fn call(&self, ids: &TokenIds) -> Result<Var> {
        self.forward_all(ids)?.get(self.mode)
    }

    /// Saves the configuration and the mix parameters (not the biLM weights,
    /// which stay in their model file) as JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut idx: Vec<_> = self.idx2word.iter().collect();
        idx.sort();
        let o = self.model.options();
        let v = json!({
            "format": LAYER_FORMAT,
            "format_version": LAYER_FORMAT_VERSION,
            "output_mode": self.mode.to_string(),
            "trainable": self.trainable,
            "unk_token": self.unk,
            "stateful_capacity": self.state.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).capacity()),
            "model": {"n_output_layers": o.n_output_layers(), "projection_dim": o.projection_dim()},
            "mixes": self.mixes.iter().map(|m| json!({
                "weights": m.weights.value().data(),
                "gamma": m.gamma.value().data()[0],
                "do_layer_norm": m.config.do_layer_norm,
                "use_top_only": m.config.use_top_only,
                "l2_coef": m.config.l2_coef,
            })).collect::<Vec<_>>(),
            "idx2word": idx.iter().map(|(k, w)| json!([k, w])).collect::<Vec<_>>(),
        });
        crate::io::model_file::write_atomically(path, |w| w.write_all(v.to_string().as_bytes()))
    }

    /// Loads a layer saved with [`save`](Self::save) onto `model`, which must
    /// have the same layer count and projection size.
    pub fn load(path: &Path, model: Arc<ElmoModel>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |m: &str| Error::weights(path, m.to_string());
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(&format!("not a saved layer (JSON: {e})")))?;
        if v["format"] != LAYER_FORMAT {
            return Err(bad("not a saved ElmoEmbedding layer"));
        }
        if v["format_version"].as_u64() != Some(LAYER_FORMAT_VERSION) {
            return Err(bad(&format!(
                "layer format version {} is not supported",
                v["format_version"]
            )));
        }
        let o = model.options();
        let (k, p) = (
            v["model"]["n_output_layers"].as_u64(),
            v["model"]["projection_dim"].as_u64(),
        );
        if k != Some(o.n_output_layers() as u64) || p != Some(o.projection_dim() as u64) {
            return Err(bad(&format!(
                "saved for a model with {} layers of size {}, but this model has {} layers of size {}",
                v["model"]["n_output_layers"],
                v["model"]["projection_dim"],
                o.n_output_layers(),
                o.projection_dim()
            )));
        }
        let mode: OutputMode = v["output_mode"]
            .as_str()
            .ok_or_else(|| bad("no output_mode"))?
            .parse()?;
        let trainable = v["trainable"].as_bool().ok_or_else(|| bad("no trainable flag"))?;
        let mut idx2word = HashMap::new();
        for e in v["idx2word"].as_array().ok_or_else(|| bad("no idx2word"))? {
            let (Some(id), Some(w)) = (e[0].as_i64(), e[1].as_str()) else {
                return Err(bad("idx2word entries must be [id, word]"));
            };
            idx2word.insert(id, w.to_string());
        }
        let mixes_v = v["mixes"]
            .as_array()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| bad("no mixes"))?;
        let mut builder = Self::builder(model, idx2word, mode, trainable)
            .unk_token(v["unk_token"].as_str().unwrap_or("<UNK>"))
            .num_output_representations(mixes_v.len());
        if let Some(cap) = v["stateful_capacity"].as_u64() {
            builder = builder.stateful(cap as usize);
        }
        let mut layer = builder.build()?;
        for (mix, mv) in layer.mixes.iter_mut().zip(mixes_v) {
            let w: Vec<f32> = mv["weights"]
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
                .ok_or_else(|| bad("mix weights must be numbers"))?;
            let g = mv["gamma"].as_f64().ok_or_else(|| bad("mix gamma must be a number"))? as f32;
            let config = MixConfig {
                do_layer_norm: mv["do_layer_norm"].as_bool().unwrap_or(false),
                use_top_only: mv["use_top_only"].as_bool().unwrap_or(false),
                l2_coef: mv["l2_coef"].as_f64().unwrap_or(0.0) as f32,
            };
            *mix = ScalarMix::new(w.len(), &w, g, config, trainable).map_err(|e| bad(&e.to_string()))?;
            if mix.n_layers() != layer.model.options().n_output_layers() {
                return Err(bad("mix weights do not match the model's layer count"));
            }
        }
        Ok(layer)
    }
}

impl crate::train::nn::Layer for ElmoEmbedding {
    fn kind(&self) -> &'static str {
        "ELMoEmbedding"
    }
    fn stem(&self) -> &'static str {
        "elmo_embedding"
    }
    fn build(&mut self, input: &[usize], _rng: &mut crate::rng::Rng) -> Result<Vec<usize>> {
        let &[t] = input else {
            return Err(Error::Shape(format!(
                "expects (batch, max_len) token ids, got (batch, {})",
                crate::train::nn::dims(input)
            )));
        };
        Ok(self.output_shape(&[1, t])?[1..].to_vec())
    }
    fn forward(&self, x: &Var, _ctx: &mut crate::train::nn::Ctx) -> Result<Var> {
        self.call(&TokenIds::from_tensor(x.value())?)
    }
    fn params(&self) -> Vec<Param> {
        ElmoEmbedding::params(self)
    }
    fn frozen_weight_count(&self) -> usize {
        self.model
            .file()
            .tensors
            .iter()
            .filter(|(name, _)| !name.starts_with("aggregation/"))
            .map(|(_, t)| t.len())
            .sum()
    }
}
