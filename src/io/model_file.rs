//! The converted weight file: safetensors with our metadata, memory-mapped.
//!
//! Layout (the safetensors format): an 8-byte little-endian header length N,
//! N bytes of JSON header, then the raw little-endian f32 data. The header maps
//! every tensor name to `{dtype, shape, data_offsets}` and holds
//! `__metadata__` with `format` = [`FORMAT_NAME`], `format_version` =
//! [`FORMAT_VERSION`], `options` = the model's `options.json` (and, for
//! ELMoForManyLangs models, `lexicon`) and `metadata_crc32`, their CRC-32,
//! checked when loaded (files written before it have none). Tensor names
//! are bilm-tf's HDF5 dataset names (see [`expected_tensors`]), except that
//! `char_embed` already carries the zero padding row (262 rows).
//!
//! Every weight matrix (the convolution kernels as `(w E, n)`, the highway and
//! projection matrices, the LSTM's `W_0` and `W_P_0`; logically `k x n`) is
//! stored *strip-packed* ([`crate::layout::pack_strips`]), shape
//! `(ceil(n / 16), k, 16)`: products stream them from the mapping as they lie,
//! with no packing per call. Version 1 files (row-major matrices) are still
//! read; they are packed when loaded.
//!
//! Read and written through the `safetensors` crate (header parsing, the
//! check that the tensors tile the data, the tensor order and header
//! padding); our checks and messages, naming the file and the tensor, sit on
//! top. Written to a temporary file that is renamed when complete.

use crate::error::{Error, Result};
use crate::lexicon::Lexicon;
use crate::options::{Family, Options};
use crate::tensor::{Bf16Tensor, Bytes, Tensor, f32_to_bf16};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Value of `__metadata__.format`.
pub const FORMAT_NAME: &str = "elmo-rs-bilm";
/// Value of `__metadata__.format_version`; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 2;

/// Name of the LSTM dataset `leaf` (`W_0`, `B`, `W_P_0`) of `direction`
/// (0 forward, 1 backward) and `layer`, as in bilm-tf's HDF5 files.
pub fn lstm_name(direction: usize, layer: usize, leaf: &str) -> String {
    format!("RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell/{leaf}")
}

/// Every tensor the options require, with its shape, in a fixed order.
///
/// `char_embed` is listed with `n_characters` rows ([`N_CHARACTERS`](crate::options::N_CHARACTERS) for
/// bilm-tf: the converted layout; the HDF5 file holds one row fewer), and
/// for an ELMoForManyLangs model with words `word_embed` after it.
pub fn expected_tensors(o: &Options) -> Vec<(String, Vec<usize>)> {
    let c = &o.char_cnn;
    let (e, f, p, u) = (c.embedding_dim, o.n_filters(), o.lstm.projection_dim, o.lstm.dim);
    let mut v = vec![("char_embed".to_string(), vec![c.n_characters, e])];
    if let Some(w) = o.word_embedding {
        v.push(("word_embed".to_string(), vec![w.n_words, w.dim]));
    }
    for (i, &(w, n)) in c.filters.iter().enumerate() {
        v.push((format!("CNN/W_cnn_{i}"), vec![1, w, e, n]));
        v.push((format!("CNN/b_cnn_{i}"), vec![n]));
    }
    for h in 0..c.n_highway {
        for g in ["carry", "transform"] {
            v.push((format!("CNN_high_{h}/W_{g}"), vec![f, f]));
            v.push((format!("CNN_high_{h}/b_{g}"), vec![f]));
        }
    }
    if o.has_projection() {
        v.push(("CNN_proj/W_proj".into(), vec![o.projection_input(), p]));
        v.push(("CNN_proj/b_proj".into(), vec![p]));
    }
    for d in 0..2 {
        for l in 0..o.lstm.n_layers {
            v.push((lstm_name(d, l, "W_0"), vec![2 * p, 4 * u]));
            v.push((lstm_name(d, l, "B"), vec![4 * u]));
            v.push((lstm_name(d, l, "W_P_0"), vec![u, p]));
        }
    }
    v
}

/// `(k, n)` when tensor `name` of logical shape `shape` is a weight matrix,
/// stored strip-packed: the convolution kernels `(1, w, E, n)` as `(w E, n)`,
/// the highway, projection and LSTM matrices as they are.
pub fn packed_matrix(name: &str, shape: &[usize]) -> Option<(usize, usize)> {
    let matrix = name.starts_with("CNN/W_cnn_")
        || (name.starts_with("CNN_high_") && name.contains("/W_"))
        || name == "CNN_proj/W_proj"
        || bf16_eligible(name);
    match shape {
        [.., n] if matrix && shape.len() >= 2 => Some((shape[..shape.len() - 1].iter().product(), *n)),
        _ => None,
    }
}

/// The shape a tensor of logical shape `shape` is stored with: matrices
/// `k x n` as strips `(ceil(n / 16), k, 16)`, the rest as they are.
pub fn stored_shape(name: &str, shape: &[usize]) -> Vec<usize> {
    match packed_matrix(name, shape) {
        Some((k, n)) => vec![n.div_ceil(crate::layout::STRIP), k, crate::layout::STRIP],
        None => shape.to_vec(),
    }
}

/// A tensor to write: name, shape, row-major values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Writes `tensors` (name, shape, values) as a model file at `path`.
///
/// The file is written to a temporary name in the same folder and renamed into
/// place, so a crash never leaves a half-written file under `path`.
pub fn write_model(path: &Path, options: &Options, tensors: &[NamedTensor]) -> Result<()> {
    write_model_with(path, options, tensors, &|_| false)
}

/// Whether a tensor may be stored in bfloat16 (`elmo convert --dtype
/// bf16`): the LSTM matrices, which each step reads whole.
pub fn bf16_eligible(name: &str) -> bool {
    name.starts_with("RNN_") && (name.ends_with("/W_0") || name.ends_with("/W_P_0"))
}

/// [`write_model`], storing the tensors for which `bf16` is true as BF16
/// (rounded to nearest even); the rest stay F32.
pub fn write_model_with(
    path: &Path,
    options: &Options,
    tensors: &[NamedTensor],
    bf16: &dyn Fn(&str) -> bool,
) -> Result<()> {
    write_model_full(path, options, None, tensors, bf16)
}

/// [`write_model_with`], with the lexicon an ELMoForManyLangs model
/// tokenizes with (stored in the metadata as `lexicon`).
pub fn write_model_full(
    path: &Path,
    options: &Options,
    lexicon: Option<&Lexicon>,
    tensors: &[NamedTensor],
    bf16: &dyn Fn(&str) -> bool,
) -> Result<()> {
    if (options.family == Family::ElmoForManyLangs) != lexicon.is_some() {
        return Err(Error::weights(
            path,
            "an ELMoForManyLangs model needs its lexicon, and only such a model has one",
        ));
    }
    // The LSTM matrices are written strip-packed (see the module docs).
    type Stored<'a> = (&'a str, Vec<usize>, std::borrow::Cow<'a, [f32]>);
    let stored: Vec<Stored<'_>> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let n: usize = shape.iter().product();
            if n != data.len() {
                return Err(Error::tensor(
                    path,
                    name,
                    format!("shape {shape:?} does not match {} values", data.len()),
                ));
            }
            Ok(match packed_matrix(name, shape) {
                Some((k, n)) => (
                    name.as_str(),
                    stored_shape(name, shape),
                    std::borrow::Cow::Owned(crate::layout::pack_strips(data, k, n)),
                ),
                None => (
                    name.as_str(),
                    shape.clone(),
                    std::borrow::Cow::Borrowed(data.as_slice()),
                ),
            })
        })
        .collect::<Result<_>>()?;
    // Through the safetensors crate (it orders the tensors, pads the header to
    // 8 bytes and writes them in turn), into a temporary file renamed when
    // complete. F32 data is written from our buffers as they are.
    let views: Vec<(String, StoredView<'_>)> = stored
        .into_iter()
        .map(|(name, shape, data)| {
            let data = if bf16(name) {
                StoredData::Bf16(data.iter().flat_map(|v| f32_to_bf16(*v).to_le_bytes()).collect())
            } else {
                StoredData::F32(data)
            };
            (name.to_string(), StoredView { shape, data })
        })
        .collect();
    let mut metadata: std::collections::HashMap<String, String> = [
        ("format".to_string(), FORMAT_NAME.to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("options".to_string(), options.to_json()),
    ]
    .into();
    if let Some(l) = lexicon {
        metadata.insert("lexicon".to_string(), l.to_json());
    }
    let crc = metadata_crc(&metadata["options"], metadata.get("lexicon").map(String::as_str));
    metadata.insert(METADATA_CRC.to_string(), crc);
    replace_atomically(path, |tmp| {
        safetensors::serialize_to_file(views.iter().map(|(n, v)| (n.as_str(), v)), Some(metadata), tmp)
            .map_err(std::io::Error::other)
    })
}

/// One tensor as the model file stores it, for `safetensors::serialize_to_file`.
struct StoredView<'a> {
    shape: Vec<usize>,
    data: StoredData<'a>,
}

/// A tensor's values: f32 as they are (written from their buffer), or
/// already narrowed to little-endian bf16 bytes.
enum StoredData<'a> {
    F32(std::borrow::Cow<'a, [f32]>),
    Bf16(Vec<u8>),
}

impl safetensors::View for &StoredView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.data {
            StoredData::F32(_) => safetensors::Dtype::F32,
            StoredData::Bf16(_) => safetensors::Dtype::BF16,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.data {
            // Little-endian machines write the f32 buffer itself.
            StoredData::F32(d) if cfg!(target_endian = "little") => std::borrow::Cow::Borrowed(bytemuck::cast_slice(d)),
            StoredData::F32(d) => std::borrow::Cow::Owned(d.iter().flat_map(|v| v.to_le_bytes()).collect()),
            StoredData::Bf16(b) => std::borrow::Cow::Borrowed(b),
        }
    }
    fn data_len(&self) -> usize {
        match &self.data {
            StoredData::F32(d) => 4 * d.len(),
            StoredData::Bf16(b) => b.len(),
        }
    }
}

/// The `__metadata__` key of the checksum of the options and lexicon.
const METADATA_CRC: &str = "metadata_crc32";

/// CRC-32 (hex) of the options text, then a NUL and the lexicon's text if
/// there is one.
fn metadata_crc(options: &str, lexicon: Option<&str>) -> String {
    let mut h = crc32fast::Hasher::new();
    h.update(options.as_bytes());
    if let Some(l) = lexicon {
        h.update(b"\0");
        h.update(l.as_bytes());
    }
    format!("{:08x}", h.finalize())
}

/// Writes a file through `body` into a temporary file in `path`'s folder,
/// syncs it and renames it to `path`: readers see the old file or the whole
/// new one, never a half-written one.
pub fn write_atomically(path: &Path, body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    replace_atomically(path, |tmp| {
        let file = std::fs::File::create(tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        body(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    })
}

/// Runs `write` on a temporary path in `path`'s folder, syncs what it wrote
/// and renames it to `path`; on failure the temporary file is removed.
fn replace_atomically(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    write_path_atomically(path, |tmp| write(tmp).map_err(|e| Error::io(path, e)))
}

/// Runs `write` on a temporary path in `path`'s folder (`write` creates
/// the file there), syncs it and renames it to `path`: readers see the old
/// file or the whole new one, and a failure leaves the old one as it was.
/// On failure the temporary file is removed and `write`'s error returned
/// as it is.
pub fn write_path_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
        std::process::id()
    ));
    let io = |e| Error::io(path, e);
    let result = (|| -> Result<()> {
        // The permissions a new file gets here (umask applied), kept whatever
        // `write` does (the safetensors crate persists a private temp file).
        let perms = std::fs::File::create(&tmp)
            .and_then(|f| f.metadata())
            .map_err(io)?
            .permissions();
        write(&tmp)?;
        std::fs::set_permissions(&tmp, perms).map_err(io)?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A loaded model file: its options and its tensors, used in place from the
/// mapping whenever they are aligned.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// Where it was loaded from (for messages).
    pub path: PathBuf,
    /// The file's format version (1 or [`FORMAT_VERSION`]).
    pub version: u32,
    /// The model's options from the metadata.
    pub options: Options,
    /// Every F32 tensor in the file by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// Tensors stored in bfloat16 (only the LSTM matrices may be).
    pub bf16: BTreeMap<String, Bf16Tensor>,
    /// The lexicon of an ELMoForManyLangs model (its tokenisation).
    pub lexicon: Option<Lexicon>,
}

impl ModelFile {
    /// CRC-32 of the options and of every tensor (name, shape, values) in
    /// name order: what a corpus journal records to know a resumed run uses
    /// the same model (the file's path or layout may differ).
    pub fn fingerprint(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(self.options.to_json().as_bytes());
        if let Some(l) = &self.lexicon {
            h.update(l.to_json().as_bytes());
        }
        for (name, t) in &self.tensors {
            h.update(name.as_bytes());
            for d in t.shape() {
                h.update(&(*d as u64).to_le_bytes());
            }
            h.update(bytemuck::cast_slice(t.data()));
        }
        for (name, t) in &self.bf16 {
            h.update(name.as_bytes());
            for d in t.shape() {
                h.update(&(*d as u64).to_le_bytes());
            }
            h.update(bytemuck::cast_slice(t.data()));
        }
        h.finalize()
    }

    /// Memory-maps and validates a model file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // A folder opens on Linux, and mapping it says "No such device".
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(Error::weights(
                path,
                "is a folder, not a model file (convert a model folder with `elmo convert`)",
            ));
        }
        // Nor can a device or a pipe be mapped (`/dev/null`: "No such device").
        if file.metadata().is_ok_and(|m| !m.is_file()) {
            return Err(Error::weights(path, "is not a regular file: a model file is mapped"));
        }
        // SAFETY: the mapping is read-only and private to this process. The
        // usual caveat applies: if another process truncates or rewrites the
        // file while it is mapped, reads may fault or see new bytes. Our own
        // writers never modify a model file in place (they write a temporary
        // file and rename it), which is the documented contract.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::from_bytes(path, Arc::new(Bytes::Mapped(map)))
    }

    /// Validates a model held in `bytes`; `path` is only used in messages.
    ///
    /// The `safetensors` crate parses the header and checks that the tensors
    /// tile the data exactly; when it refuses a file, a diagnosis names the
    /// tensor at fault. Our checks follow: the metadata, the dtypes, every
    /// tensor the options need with its shape, alignment in the mapping.
    pub fn from_bytes(path: &Path, bytes: Arc<Bytes>) -> Result<Self> {
        let err = |m: String| Error::weights(path, m);
        let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| explain(path, &bytes, e))?;
        let data_start = 8 + n;
        let meta_map = meta
            .metadata()
            .as_ref()
            .ok_or_else(|| err("no __metadata__: not a model converted by `elmo convert`".into()))?;
        let meta_str = |k: &str| meta_map.get(k).map(String::as_str);
        if meta_str("format") != Some(FORMAT_NAME) {
            return Err(err(format!(
                "metadata format is {:?}, expected \"{FORMAT_NAME}\": not a model converted by `elmo convert`",
                meta_str("format")
            )));
        }
        let version = meta_str("format_version").unwrap_or("missing");
        // Version 1 differs only in storing the LSTM matrices row-major.
        let packed = match version {
            "1" => false,
            v if v == FORMAT_VERSION.to_string() => true,
            _ => {
                return Err(err(format!(
                    "format version {version} is not supported (this build reads versions 1 to {FORMAT_VERSION}); convert the model again"
                )));
            }
        };
        let options_text = meta_str("options").ok_or_else(|| err("metadata has no options".into()))?;
        // Files from before the checksum have none; one that is there must
        // match (a damaged digit in the options would be read as another
        // model without it).
        if let Some(want) = meta_str(METADATA_CRC) {
            let got = metadata_crc(options_text, meta_str("lexicon"));
            if got != want {
                return Err(err(format!(
                    "the options in the metadata are damaged (CRC-32 {got}, the file says {want}); convert the model again"
                )));
            }
        }
        let options = Options::from_json(options_text).map_err(|e| err(format!("options in metadata: {e}")))?;
        let lexicon = match (options.family, meta_str("lexicon")) {
            (Family::BilmTf, None) => None,
            (Family::BilmTf, Some(_)) => return Err(err("metadata has a lexicon, but the model is bilm-tf's".into())),
            (Family::ElmoForManyLangs, None) => {
                return Err(err(
                    "an ELMoForManyLangs model without its lexicon in the metadata".into()
                ));
            }
            (Family::ElmoForManyLangs, Some(text)) => {
                let l = Lexicon::from_json(text).map_err(|e| err(e.to_string()))?;
                let w = options.word_embedding.map_or(0, |w| w.n_words);
                let words_ok = if w > 0 {
                    l.word_rows() + 1 == w
                } else {
                    l.words().is_none()
                };
                if l.char_rows() + 1 != options.char_cnn.n_characters || !words_ok {
                    return Err(err(format!(
                        "the lexicon ({} characters, {} words) does not match the options ({} and {} rows with the zero row)",
                        l.char_rows(),
                        l.word_rows(),
                        options.char_cnn.n_characters,
                        w
                    )));
                }
                Some(l)
            }
        };
        let mut tensors = BTreeMap::new();
        let mut bf16 = BTreeMap::new();
        let infos: BTreeMap<String, &safetensors::tensor::TensorInfo> = meta.tensors().into_iter().collect();
        for (name, info) in &infos {
            let terr = |m: &str| Error::tensor(path, name, m);
            let at = data_start + info.data_offsets.0;
            match info.dtype {
                safetensors::Dtype::F32 => {
                    let t = Tensor::from_bytes(&info.shape, &bytes, at).map_err(|e| terr(&e.to_string()))?;
                    tensors.insert(name.clone(), t);
                }
                safetensors::Dtype::BF16 if bf16_eligible(name) => {
                    let t = Bf16Tensor::from_bytes(&info.shape, &bytes, at).map_err(|e| terr(&e.to_string()))?;
                    bf16.insert(name.clone(), t);
                }
                safetensors::Dtype::BF16 => return Err(terr("only the LSTM matrices may be stored as BF16")),
                other => {
                    return Err(terr(&format!(
                        "dtype {:?} is not supported, only F32 (and BF16)",
                        format!("{other:?}")
                    )));
                }
            }
        }
        for (name, shape) in expected_tensors(&options) {
            let shape = if packed { stored_shape(&name, &shape) } else { shape };
            let found = tensors
                .get(&name)
                .map(Tensor::shape)
                .or_else(|| bf16.get(&name).map(Bf16Tensor::shape));
            match found {
                None => return Err(Error::tensor(path, &name, "missing from the model file")),
                Some(s) if s != shape.as_slice() => {
                    return Err(Error::tensor(
                        path,
                        &name,
                        format!("shape {s:?} does not match the options, which need {shape:?}"),
                    ));
                }
                _ => {}
            }
        }
        if !packed {
            // Version 1: pack the matrices now (owned copies).
            for (name, shape) in expected_tensors(&options) {
                let Some((k, n)) = packed_matrix(&name, &shape) else {
                    continue;
                };
                let to = stored_shape(&name, &shape);
                let terr = |e: Error| Error::tensor(path, &name, e.to_string());
                if let Some(t) = tensors.get_mut(&name) {
                    *t = Tensor::from_vec(&to, crate::layout::pack_strips(t.data(), k, n)).map_err(terr)?;
                } else if let Some(t) = bf16.get_mut(&name) {
                    *t = Bf16Tensor::from_bits(&to, crate::layout::pack_strips(t.data(), k, n)).map_err(terr)?;
                }
            }
        }
        Ok(ModelFile {
            version: if packed { FORMAT_VERSION } else { 1 },
            path: path.to_path_buf(),
            options,
            tensors,
            bf16,
            lexicon,
        })
    }

    /// Fails on a tensor holding NaN or an infinity, naming it and the
    /// position of the first bad value in it. Each tensor is scanned in
    /// blocks spread over the rayon threads, each block with a branch-free
    /// (vectorised) test of the exponent bits: ~50 ms for the full model,
    /// most of it the first touch of the mapped pages, which the first
    /// forward pass would otherwise pay.
    pub fn check_finite(&self) -> Result<()> {
        for (name, t) in &self.tensors {
            let data = t.data();
            if let Some(i) = first_bad(data, |x: f32| x.to_bits() & 0x7f80_0000 == 0x7f80_0000) {
                return Err(Error::tensor(
                    &self.path,
                    name,
                    format!("holds {} at flat index {i}", data[i]),
                ));
            }
        }
        for (name, t) in &self.bf16 {
            let data = t.data();
            if let Some(i) = first_bad(data, |x: u16| x & 0x7f80 == 0x7f80) {
                let v = crate::tensor::bf16_to_f32(data[i]);
                return Err(Error::tensor(&self.path, name, format!("holds {v} at flat index {i}")));
            }
        }
        Ok(())
    }

    /// The values of tensor `name` in its logical (bilm-tf) layout, as f32:
    /// the LSTM matrices unpacked from strips and widened from bf16.
    pub fn values(&self, name: &str) -> Result<Vec<f32>> {
        let logical = expected_tensors(&self.options)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s);
        let raw = match (self.tensors.get(name), self.bf16.get(name)) {
            (Some(t), _) => t.data().to_vec(),
            (None, Some(t)) => t.to_f32(),
            (None, None) => return Err(Error::tensor(&self.path, name, "missing from the model file")),
        };
        Ok(match logical.and_then(|s| packed_matrix(name, &s)) {
            Some((k, n)) => crate::layout::unpack_strips(&raw, k, n),
            None => raw,
        })
    }

    /// A tensor by name (present: checked at load for every required name).
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::tensor(&self.path, name, "missing from the model file"))
    }
}

/// The index of the first value of `v` for which `bad` holds (for floats:
/// exponent bits all ones, NaN or an infinity). Blocks are spread over the
/// rayon threads and each is tested with a fold without early exit, which
/// vectorises; only a block that has a bad value is searched for it.
fn first_bad<T: Copy + Sync>(v: &[T], bad: impl Fn(T) -> bool + Sync) -> Option<usize> {
    use rayon::prelude::*;
    const BLOCK: usize = 1 << 16;
    v.par_chunks(BLOCK).enumerate().find_map_first(|(b, ch)| {
        if ch.iter().fold(false, |acc, &x| acc | bad(x)) {
            ch.iter().position(|&x| bad(x)).map(|i| b * BLOCK + i)
        } else {
            None
        }
    })
}

/// Says why the `safetensors` crate refused `bytes`, naming the tensor at
/// fault where there is one: the header is read again as plain JSON and each
/// entry checked (dtype, then offsets against its shape and the data held).
fn explain(path: &Path, bytes: &[u8], e: safetensors::SafeTensorError) -> Error {
    use safetensors::SafeTensorError as E;
    let err = |m: String| Error::weights(path, m);
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match (&e, n) {
        (_, None) => {
            return err(format!(
                "{} bytes: too short to be a model file (safetensors)",
                bytes.len()
            ));
        }
        (E::HeaderTooLarge | E::InvalidHeaderLength | E::HeaderTooSmall, Some(n)) => {
            return err(format!(
                "not a safetensors model file or truncated: header length {n} does not fit in {} bytes",
                bytes.len()
            ));
        }
        (E::InvalidHeader(_) | E::InvalidHeaderDeserialization(_), _) => {
            return err(format!("not a safetensors model file: the header is not valid: {e}"));
        }
        _ => {}
    }
    let n = n.unwrap_or(0) as usize;
    let data_len = bytes.len().saturating_sub(8 + n);
    let header: Option<Map<String, Value>> = bytes
        .get(8..8 + n)
        .and_then(|h| serde_json::from_slice::<Value>(h).ok())
        .and_then(|v| v.as_object().cloned());
    let mut entries: Vec<(&String, &Value)> = header.iter().flatten().filter(|(k, _)| *k != "__metadata__").collect();
    entries.sort_by_key(|(k, _)| k.as_str());
    for (name, info) in entries {
        let terr = |m: String| Error::tensor(path, name, m);
        let dtype = info.get("dtype").and_then(Value::as_str);
        let size = match dtype {
            Some("F32") => 4,
            Some("BF16") if bf16_eligible(name) => 2,
            Some("BF16") => return terr("only the LSTM matrices may be stored as BF16".into()),
            _ => return terr(format!("dtype {dtype:?} is not supported, only F32 (and BF16)")),
        };
        let sizes = |k: &str| -> Option<Vec<usize>> {
            info.get(k)?
                .as_array()?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect()
        };
        let (Some(shape), Some(offs)) = (sizes("shape"), sizes("data_offsets").filter(|o| o.len() == 2)) else {
            return terr("shape or data_offsets is not a list of sizes".into());
        };
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(size));
        if offs[0] > offs[1] || offs[1] > data_len || numel != Some(offs[1] - offs[0]) {
            return terr(format!(
                "data_offsets {offs:?} do not match shape {shape:?} inside {data_len} data bytes (file truncated or corrupt)"
            ));
        }
    }
    // Every entry is sound on its own: a tensor the options need may have
    // been dropped from the header, leaving its bytes uncovered.
    let options = header
        .as_ref()
        .and_then(|h| h.get("__metadata__")?.get("options")?.as_str().map(Options::from_json));
    if let (Some(Ok(o)), Some(h)) = (options, &header)
        && let Some((name, _)) = expected_tensors(&o).into_iter().find(|(name, _)| !h.contains_key(name))
    {
        return Error::tensor(path, &name, "missing from the model file");
    }
    err(format!("not a valid safetensors model file (corrupt): {e}"))
}

#[cfg(test)]
mod tests {
    use super::first_bad;

    #[test]
    fn the_first_non_finite_value_is_found_in_any_block() {
        let f32_bad = |x: f32| x.to_bits() & 0x7f80_0000 == 0x7f80_0000;
        let mut v = vec![1.5f32; 300_000];
        v[3] = f32::MAX;
        v[4] = -0.0;
        v[5] = f32::MIN_POSITIVE / 2.0; // subnormal: finite
        assert_eq!(first_bad(&v, f32_bad), None);
        v[250_001] = f32::NEG_INFINITY;
        v[131_073] = f32::NAN;
        assert_eq!(first_bad(&v, f32_bad), Some(131_073));
        v[0] = f32::INFINITY;
        assert_eq!(first_bad(&v, f32_bad), Some(0));
        let bf16_bad = |x: u16| x & 0x7f80 == 0x7f80;
        let mut w = vec![0x3f80u16; 70_000]; // 1.0
        w[9] = 0x7f7f; // the largest finite bf16
        assert_eq!(first_bad(&w, bf16_bad), None);
        w[69_999] = 0xff80; // -inf
        assert_eq!(first_bad(&w, bf16_bad), Some(69_999));
        assert_eq!(first_bad::<f32>(&[], f32_bad), None);
    }
}
