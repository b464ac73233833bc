//! `elmo._elmo`: the Python extension over the `elmo` crate.
//!
//! Thin on purpose: each function converts its Python arguments, releases
//! the GIL, calls the library and hands the result to numpy without a copy
//! (a `Vec<f32>` becomes the array's buffer). The Keras layer and the PyTorch
//! module (`python/elmo/*.py`) call `Model._layers_for_ids` /
//! `Model._layers_for_char_ids` for the biLM and compute the trainable mix in
//! their own framework, so gradients flow there.

use elmo::layer::{OutputMode, align_to_positions, select_output, starting_mix};
use elmo::mix::{MixConfig, ScalarMix};
use elmo::{Device, ElmoModel};
use numpy::{
    IntoPyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

create_exception!(
    elmo,
    ElmoError,
    PyValueError,
    "Every error of the engine: bad input, a missing or corrupt model file, a model that does not fit. \
     A ValueError subclass carrying the library's message."
);

/// The library's error as `ElmoError`.
fn err(e: elmo::Error) -> PyErr {
    ElmoError::new_err(e.to_string())
}

fn input_err(msg: impl Into<String>) -> PyErr {
    ElmoError::new_err(format!("input: {}", msg.into()))
}

/// The default model, compiled into the extension: bilm-tf's tiny test model.
static BUNDLED: &[u8] = include_bytes!("../../weights/bilm-tf-test.safetensors");
/// How the bundled model is named in messages and `Model.path`.
const BUNDLED_NAME: &str = "<bundled bilm-tf-test.safetensors>";

/// Models already loaded in this process by (file, device): a second
/// `Model(path)` shares the first one's mapping and device memory.
static LOADED: Mutex<Vec<(PathBuf, String, Weak<ElmoModel>)>> = Mutex::new(Vec::new());

fn load_shared(path: Option<&Path>, device: Device) -> elmo::Result<Arc<ElmoModel>> {
    let key = match path {
        Some(p) => std::fs::canonicalize(p).map_err(|e| elmo::Error::io(p, e))?,
        None => PathBuf::from(BUNDLED_NAME),
    };
    let dev = device.to_string();
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    loaded.retain(|(_, _, w)| w.strong_count() > 0);
    if let Some(m) = loaded
        .iter()
        .find(|(p, d, _)| *p == key && *d == dev)
        .and_then(|(_, _, w)| w.upgrade())
    {
        return Ok(m);
    }
    let model = match path {
        Some(p) => ElmoModel::load(p)?,
        None => {
            let bytes = Arc::new(elmo::tensor::Bytes::Owned(BUNDLED.to_vec()));
            ElmoModel::from_file(elmo::model_file::ModelFile::from_bytes(Path::new(BUNDLED_NAME), bytes)?)?
        }
    };
    let model = Arc::new(model.with_device(device)?);
    loaded.push((key, dev, Arc::downgrade(&model)));
    Ok(model)
}

/// `Model(path, device, threads)`'s arguments, as `__reduce__` gives them.
type ModelArgs = (Option<PathBuf>, String, Option<usize>);

/// A loaded ELMo biLM, shared by every thread that uses it.
#[pyclass(frozen, module = "elmo")]
struct Model {
    model: Arc<ElmoModel>,
    pool: Option<Arc<rayon::ThreadPool>>,
    path: Option<PathBuf>,
}

impl Model {
    /// Runs `f` without the GIL, on this model's thread pool if it has one.
    fn run<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&ElmoModel) -> elmo::Result<T> + Send) -> PyResult<T> {
        let model = &self.model;
        let pool = self.pool.as_deref();
        py.detach(|| match pool {
            Some(p) => p.install(|| f(model)),
            None => f(model),
        })
        .map_err(err)
    }

    fn mix(
        &self,
        weights: Option<Vec<f32>>,
        gamma: Option<f32>,
        layer_norm: bool,
        top_only: bool,
    ) -> PyResult<ScalarMix> {
        let config = MixConfig {
            do_layer_norm: layer_norm,
            use_top_only: top_only,
            l2_coef: 0.0,
        };
        starting_mix(&self.model, weights, gamma, config, false).map_err(err)
    }
}

/// `sentences` as owned token lists, refusing what is not a list of lists of str.
fn sentences_of(sentences: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<String>>> {
    if sentences.is_instance_of::<PyString>() {
        return Err(input_err(
            "sentences must be a list of token lists, got a str (split it first: [text.split()])",
        ));
    }
    let mut out = Vec::new();
    for (i, s) in sentences
        .try_iter()
        .map_err(|_| input_err("sentences must be a list of token lists"))?
        .enumerate()
    {
        let s = s?;
        if s.is_instance_of::<PyString>() {
            return Err(input_err(format!(
                "sentence {i} is a str, not a list of tokens (split it first: text.split())"
            )));
        }
        let mut toks = Vec::new();
        for (j, t) in s
            .try_iter()
            .map_err(|_| input_err(format!("sentence {i} is not a list of tokens")))?
            .enumerate()
        {
            let t = t?;
            if !t.is_instance_of::<PyString>() {
                return Err(input_err(format!(
                    "sentence {i}, token {j}: expected a str, got {}",
                    t.get_type().name()?
                )));
            }
            // A str with lone surrogates has no UTF-8: say where it is.
            toks.push(t.extract::<String>().map_err(|_| {
                input_err(format!(
                    "sentence {i}, token {j} is not valid Unicode (a lone surrogate?)"
                ))
            })?);
        }
        out.push(toks);
    }
    Ok(out)
}

/// (B, K, T, 2P) f32 as a numpy array that owns the library's buffer.
fn array<'py>(py: Python<'py>, shape: &[usize], data: Vec<f32>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    data.into_pyarray(py).reshape(shape.to_vec())
}

#[pymethods]
impl Model {
    /// Loads a converted model (`elmo convert`), or the bundled tiny model
    /// when `path` is None. `device` is "cpu" or "cuda[:N]"; `threads` sets
    /// a pool of its own for this model (default: all cores, shared).
    #[new]
    #[pyo3(signature = (path=None, device="cpu", threads=None))]
    fn new(py: Python<'_>, path: Option<PathBuf>, device: &str, threads: Option<i64>) -> PyResult<Self> {
        let device: Device = device.parse().map_err(err)?;
        let pool = match threads {
            None => None,
            Some(n) if !(1..=4096).contains(&n) => {
                return Err(input_err(format!("threads must be between 1 and 4096, got {n}")));
            }
            Some(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n as usize)
                    .thread_name(|i| format!("elmo-{i}"))
                    .build()
                    .map_err(|e| ElmoError::new_err(format!("cannot start {n} threads: {e}")))?,
            )),
        };
        let p = path.clone();
        let model = py.detach(move || load_shared(p.as_deref(), device)).map_err(err)?;
        Ok(Model { model, pool, path })
    }

    /// The model file, or None for the bundled model.
    #[getter]
    fn path(&self) -> Option<PathBuf> {
        self.path.clone()
    }

    /// Pickling (and so `copy.deepcopy`, `torch.save` of a module holding a
    /// model, Ray's actors): the model is recreated from its file (made
    /// absolute, so another working directory finds it), device and
    /// threads; in one process the mapping is shared with this model's.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, pyo3::types::PyType>, ModelArgs)> {
        let m = slf.get();
        let path = match &m.path {
            Some(p) => Some(std::path::absolute(p).map_err(|e| err(elmo::Error::io(p, e)))?),
            None => None,
        };
        Ok((slf.get_type(), (path, m.device(), m.threads())))
    }

    /// Where the forward pass runs ("cpu", "cuda:0", ...).
    #[getter]
    fn device(&self) -> String {
        self.model.device().to_string()
    }

    /// Worker threads of this model's pool (None: the shared pool of all cores).
    #[getter]
    fn threads(&self) -> Option<usize> {
        self.pool.as_ref().map(|p| p.current_num_threads())
    }

    /// P, the projection size: `word_emb` has P values per token, the layers 2P.
    #[getter]
    fn projection_dim(&self) -> usize {
        self.model.options().projection_dim()
    }

    /// K, the output layers (LSTM layers + 1).
    #[getter]
    fn n_layers(&self) -> usize {
        self.model.options().n_output_layers()
    }

    /// Characters per token (C).
    #[getter]
    fn max_characters_per_token(&self) -> usize {
        self.model.options().char_cnn.max_characters_per_token
    }

    /// The mix a `elmo` output starts from: the model file's
    /// `aggregation/{weights,scaling}` when present, else zeros and 1.
    #[getter]
    fn default_mix<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyArray1<f32>>, f32)> {
        let m = self.mix(None, None, false, false)?;
        Ok((
            m.weights.value().data().to_vec().into_pyarray(py),
            m.gamma.value().data()[0],
        ))
    }

    /// The options (bilm-tf's `options.json`) as a dict.
    #[getter]
    fn options<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?
            .call_method1("loads", (self.model.options().to_json(),))
    }

    /// Embeds tokenized sentences.
    ///
    /// Returns `output` as a float32 array, zero at padding: "all"
    /// (N, K, T, 2P), the layout of `elmo embed`'s `lm_embeddings`; "elmo"
    /// (N, T, 2P), the mix of `mix_weights`/`gamma`/`layer_norm`/`top_only`;
    /// "default" (N, 2P), its mean over each sentence's tokens; "word_emb"
    /// (N, T, P); "lstm_outputsK" (N, T, 2P). T is the longest sentence.
    /// With `return_lengths`, returns `(array, lengths)`, lengths (N,) int32.
    #[pyo3(signature = (sentences, output="all", *, mix_weights=None, gamma=None, layer_norm=false, top_only=false, return_lengths=false))]
    #[allow(clippy::too_many_arguments)]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        sentences: &Bound<'py, PyAny>,
        output: &str,
        mix_weights: Option<Vec<f32>>,
        gamma: Option<f32>,
        layer_norm: bool,
        top_only: bool,
        return_lengths: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mode: OutputMode = output.parse().map_err(err)?;
        let sentences = sentences_of(sentences)?;
        let mix = self.mix(mix_weights, gamma, layer_norm, top_only)?;
        let (tensor, lengths) = self.run(py, move |m| {
            let out = m.embed(&sentences)?;
            let lengths: Vec<i32> = out.lengths.iter().map(|&l| l as i32).collect();
            Ok((select_output(out, mode, &mix)?, lengths))
        })?;
        let shape = tensor.shape().to_vec();
        let arr = array(py, &shape, tensor.into_vec())?.into_any();
        if return_lengths {
            Ok((arr, lengths.into_pyarray(py)).into_pyobject(py)?.into_any())
        } else {
            Ok(arr)
        }
    }

    /// Every layer for (B, T) token ids, aligned to the id positions:
    /// (B, K, T, 2P) float32, zero where the id is 0 (padding, wherever it
    /// stands). Ids are looked up in `vocab`; an id missing from it is
    /// `unk` when it is not above the largest key, else an error, unless
    /// `out_of_range_unk`.
    #[pyo3(signature = (ids, vocab))]
    fn _layers_for_ids<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArray2<'py, i64>,
        vocab: &Vocab,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let shape = ids.shape().to_vec();
        let (b, t) = (shape[0], shape[1]);
        // The caller passes C-contiguous int64 (`_common.as_ids`): read in place.
        let ids = ids
            .as_slice()
            .map_err(|_| input_err("token ids must be a C-contiguous int64 array"))?;
        let (words, positions) = vocab.words(ids, b, t)?;
        let (all, _) = self.run(py, move |m| {
            let out = m.embed(&words)?;
            align_to_positions(&out, &positions, t)
        })?;
        let shape = all.shape().to_vec();
        array(py, &shape, all.into_vec())
    }

    /// Every layer for allennlp-style character ids (B, T, C) (`batch_to_ids`:
    /// +1 shifted, no sentence boundaries, padded tokens all zero at the end):
    /// (B, K, T, 2P) float32, zero at padding.
    fn _layers_for_char_ids<'py>(
        &self,
        py: Python<'py>,
        char_ids: PyReadonlyArray3<'py, i64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let s = char_ids.shape().to_vec();
        if self.model.lexicon().is_some() {
            return Err(input_err(
                "character ids in batch_to_ids' layout are bilm-tf's tokenisation; this ELMoForManyLangs model \
                 tokenizes itself: give it tokens",
            ));
        }
        let c = self.model.options().char_cnn.max_characters_per_token;
        if s[2] != c {
            return Err(input_err(format!(
                "character ids have {} characters per token, the model takes {c}",
                s[2]
            )));
        }
        let mut ids = Vec::with_capacity(s.iter().product());
        for &x in char_ids.as_array().iter() {
            if !(0..elmo::options::N_CHARACTERS as i64).contains(&x) {
                return Err(input_err(format!("character id {x} is out of range 0..=261")));
            }
            ids.push(x as u16);
        }
        let out = self.run(py, move |m| {
            let chars = elmo::chars::with_boundaries(s[0], s[1], s[2], &ids)?;
            let mut out = m.forward(&chars, None)?;
            // (B, K, T', 2P) with T' the longest sentence; pad to T.
            if out.max_len < s[1] {
                let positions: Vec<Vec<usize>> = out.lengths.iter().map(|&l| (0..l).collect()).collect();
                return Ok(align_to_positions(&out, &positions, s[1])?.0);
            }
            let shape = [out.lengths.len(), out.n_layers, out.max_len, out.dim];
            elmo::Tensor::from_vec(&shape, std::mem::take(&mut out.data))
        })?;
        let shape = out.shape().to_vec();
        array(py, &shape, out.into_vec())
    }

    /// An id of the loaded weights: equal for two `Model`s that share one
    /// mapping (the same file and device loaded twice in a process).
    #[getter]
    fn _weights_id(&self) -> usize {
        Arc::as_ptr(&self.model) as usize
    }

    fn __repr__(&self) -> String {
        let o = self.model.options();
        format!(
            "elmo.Model(path={}, device='{}', layers={}, projection_dim={})",
            self.path
                .as_ref()
                .map_or("None (bundled tiny model)".to_string(), |p| format!(
                    "'{}'",
                    p.display()
                )),
            self.model.device(),
            o.n_output_layers(),
            o.projection_dim()
        )
    }
}

/// An `idx2word` table for id lookups: built once per layer, not per call.
#[pyclass(frozen, module = "elmo")]
struct Vocab {
    words: HashMap<i64, String>,
    max_id: i64,
    unk: String,
    out_of_range_unk: bool,
}

impl Vocab {
    /// The words of each row's non-zero ids and their positions.
    #[allow(clippy::type_complexity)]
    fn words(&self, ids: &[i64], b: usize, t: usize) -> PyResult<(Vec<Vec<&str>>, Vec<Vec<usize>>)> {
        let (mut words, mut positions) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for bi in 0..b {
            let (mut w, mut p) = (Vec::new(), Vec::new());
            for (ti, &id) in ids[bi * t..(bi + 1) * t].iter().enumerate() {
                if id == 0 {
                    continue;
                }
                if id < 0 {
                    return Err(input_err(format!("token id {id} at ({bi}, {ti}) is negative")));
                }
                let word = match self.words.get(&id) {
                    Some(word) => word.as_str(),
                    None if id <= self.max_id || self.out_of_range_unk => self.unk.as_str(),
                    None => {
                        return Err(input_err(format!(
                            "token id {id} at ({bi}, {ti}) is out of range: the largest id of idx2word is {}",
                            self.max_id
                        )));
                    }
                };
                w.push(word);
                p.push(ti);
            }
            words.push(w);
            positions.push(p);
        }
        Ok((words, positions))
    }
}

#[pymethods]
impl Vocab {
    /// `idx2word`: a dict from int ids (>= 1; 0 is padding) to words.
    #[new]
    #[pyo3(signature = (idx2word, unk_token="<UNK>", out_of_range_unk=false))]
    fn new(idx2word: &Bound<'_, PyDict>, unk_token: &str, out_of_range_unk: bool) -> PyResult<Self> {
        let mut words = HashMap::with_capacity(idx2word.len());
        for (k, v) in idx2word.iter() {
            let Ok(id) = k.extract::<i64>() else {
                return Err(input_err(format!("idx2word keys must be int ids, got {}", k.repr()?)));
            };
            if id < 0 {
                return Err(input_err(format!("idx2word has a negative id {id}")));
            }
            if !v.is_instance_of::<PyString>() {
                return Err(input_err(format!("idx2word[{id}] must be a str, got {}", v.repr()?)));
            }
            words.insert(id, v.extract::<String>()?);
        }
        if words.is_empty() {
            return Err(input_err("idx2word has no entries"));
        }
        let max_id = words.keys().copied().max().unwrap_or(0);
        Ok(Vocab {
            words,
            max_id,
            unk: unk_token.to_string(),
            out_of_range_unk,
        })
    }

    /// Entries of the table.
    fn __len__(&self) -> usize {
        self.words.len()
    }

    /// The largest id.
    #[getter]
    fn max_id(&self) -> i64 {
        self.max_id
    }
}

/// Converts bilm-tf's `options.json` + HDF5 weights, a TensorFlow
/// checkpoint (a prefix, a folder with a `checkpoint` file, or a TF Hub
/// `google/elmo/2` module), or an ELMoForManyLangs model folder, into a
/// model file at `out`, as `elmo convert` does. `dtype` "f32" (default) or
/// "bf16" for the LSTM matrices.
#[pyfunction]
#[pyo3(signature = (out, *, options=None, hdf5=None, tf_checkpoint=None, preset=None, elmoformanylangs=None, dtype="f32"))]
#[allow(clippy::too_many_arguments)]
fn convert(
    py: Python<'_>,
    out: PathBuf,
    options: Option<PathBuf>,
    hdf5: Option<PathBuf>,
    tf_checkpoint: Option<PathBuf>,
    preset: Option<String>,
    elmoformanylangs: Option<PathBuf>,
    dtype: &str,
) -> PyResult<PathBuf> {
    let dtype: elmo::convert::WeightDtype = dtype.parse().map_err(err)?;
    if let Some(dir) = elmoformanylangs {
        if options.is_some() || hdf5.is_some() || tf_checkpoint.is_some() || preset.is_some() {
            return Err(input_err(
                "elmoformanylangs takes no options, hdf5, tf_checkpoint or preset",
            ));
        }
        let o = out.clone();
        py.detach(move || elmo::io::efml::convert_elmoformanylangs(&dir, &o, dtype))
            .map_err(err)?;
        return Ok(out);
    }
    match (tf_checkpoint, options, hdf5) {
        (Some(_), _, Some(_)) => Err(input_err("give hdf5 or tf_checkpoint, not both")),
        (Some(ckpt), options, None) => {
            let o = out.clone();
            py.detach(move || {
                elmo::tfckpt::convert_tf_checkpoint_with(&ckpt, options.as_deref(), preset.as_deref(), &o, dtype)
            })
            .map_err(err)?;
            Ok(out)
        }
        (None, Some(options), Some(hdf5)) => {
            if preset.is_some() {
                return Err(input_err("preset applies to tf_checkpoint only"));
            }
            let o = out.clone();
            py.detach(move || elmo::convert::convert_hdf5_with(&options, &hdf5, &o, &mut |_, _, _| {}, dtype))
                .map_err(err)?;
            Ok(out)
        }
        _ => Err(input_err("convert needs options and hdf5, or tf_checkpoint")),
    }
}

/// The engine's CPU kernels and devices, one line each (as `elmo devices`):
/// the CPU's threads and SIMD level (and which levels it has; a note when
/// the build lacks the AVX2/FMA the CPU has), then the CUDA devices.
/// Raises `ElmoError` when `ELMO_SIMD` names a level this CPU or build
/// cannot run.
#[pyfunction]
fn devices() -> PyResult<Vec<String>> {
    let level = elmo::cpu::simd_level_checked().map_err(err)?;
    let levels: Vec<&str> = elmo::cpu::available_levels().iter().map(|l| l.name()).collect();
    let mut cpu = format!(
        "cpu ({} threads, SIMD {level}; this CPU: {})",
        rayon::current_num_threads(),
        levels.join(", ")
    );
    if let Some(why) = elmo::cpu::simd::missing_baseline() {
        cpu.push_str(&format!("; note: {why}"));
    }
    let mut v = vec![cpu];
    v.extend(elmo::cuda::devices().unwrap_or_default());
    Ok(v)
}

#[pymodule]
fn _elmo(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Vocab>()?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    m.add("ElmoError", m.py().get_type::<ElmoError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
