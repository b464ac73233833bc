//! `elmo convert --elmoformanylangs DIR`: HIT-SCIR's ELMoForManyLangs model
//! folders (`config.json`, the model config, `char.dic`, `word.dic`,
//! `token_embedder.pkl`, `encoder.pkl`) -> a model file.
//!
//! The torch state dicts are read by [`crate::io::torch`] (no code runs).
//! The weights are rewritten into bilm-tf's layout, which our passes
//! compute, so that the package's forward pass is reproduced:
//!
//! * convolutions `(n, E, w)` -> `(1, w, E, n)`; linear layers `(out, in)`
//!   -> `(in, out)`;
//! * allennlp's highway `y = g x + (1 - g) relu(A x)`, `g = sigmoid(B x)`
//!   becomes bilm-tf's `y = t relu(A x) + (1 - t) x` with
//!   `t = sigmoid(-B x) = 1 - g`: the gate's weights and bias negated;
//! * allennlp's LSTM cell (gates i, f, g, o from `input_linearity`, no bias,
//!   plus `state_linearity` with the bias) becomes one kernel `(2P, 4U)`
//!   with bilm-tf's gate order i, j(=g), f, o; bilm-tf adds a forget bias of
//!   1 that the package does not, so it is taken off the stored bias;
//! * the character embedding gets the zero row for "no token" in front
//!   (ids are shifted by one, see [`crate::lexicon`]), the word embedding
//!   likewise.
//!
//! These rewrites change the arithmetic only in rounding (measured against
//! the package's outputs in `tests/efml.rs`).

mod config;

pub use config::read_model_config;

use crate::error::{Error, Result};
use crate::io::convert::WeightDtype;
use crate::io::model_file::NamedTensor;
use crate::io::torch::{TorchTensor, read_state_dict};
use crate::lexicon::{Dic, Lexicon};
use crate::options::Options;
use std::collections::HashMap;
use std::path::Path;

/// What [`read_folder`] found: the options, the lexicon and our tensors.
#[derive(Debug)]
pub struct Folder {
    /// Our options for the model.
    pub options: Options,
    /// Its tokenisation.
    pub lexicon: Lexicon,
    /// Its weights in the converted layout.
    pub tensors: Vec<NamedTensor>,
    /// Where the model config came from.
    pub config_source: String,
}

fn read_dic(dir: &Path, name: &str) -> Result<Dic> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::Input(format!(
            "{}: not UTF-8 (at byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    Dic::parse(&text, &path.display().to_string())
}

/// The state dict of `file` in `dir` by tensor name.
fn state_dict(dir: &Path, file: &str) -> Result<(std::path::PathBuf, HashMap<String, TorchTensor>)> {
    let path = dir.join(file);
    let tensors = read_state_dict(&path)?;
    Ok((path, tensors.into_iter().map(|t| (t.name.clone(), t)).collect()))
}

/// Takes tensor `name` of shape `shape` from a state dict.
fn take(sd: &mut (std::path::PathBuf, HashMap<String, TorchTensor>), name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let (path, map) = (&sd.0, &mut sd.1);
    let t = map
        .remove(name)
        .ok_or_else(|| Error::tensor(path, name, "missing from the state dict"))?;
    if t.shape != shape {
        return Err(Error::tensor(
            path,
            name,
            format!(
                "shape {:?} does not match the model config, which needs {shape:?}",
                t.shape
            ),
        ));
    }
    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
        return Err(Error::tensor(
            path,
            name,
            format!("holds a non-finite value ({}) at flat index {i}", t.data[i]),
        ));
    }
    Ok(t.data)
}

/// `(rows, cols)` row-major -> `(cols, rows)` row-major.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            y[c * rows + r] = x[r * cols + c];
        }
    }
    y
}

/// A zero row, then `table` (`rows` of `d`).
fn with_zero_row(table: Vec<f32>, d: usize) -> Vec<f32> {
    let mut v = vec![0f32; d];
    v.extend(table);
    v
}

/// Reads a model folder: config, lexicons and both state dicts, into our
/// options and tensors. Every tensor is checked for its name, shape and
/// finiteness; an error names the file and the tensor.
pub fn read_folder(dir: &Path) -> Result<Folder> {
    if !dir.is_dir() {
        return Err(Error::Input(format!(
            "{}: not a folder (an ELMoForManyLangs model is a folder with config.json, char.dic and the .pkl files)",
            dir.display()
        )));
    }
    let (cfg, config_source) = read_model_config(dir)?;
    let word_dim = cfg
        .get("token_embedder")
        .and_then(|t| t.get("word_dim"))
        .and_then(|w| w.as_u64())
        .unwrap_or(0);
    let chars = read_dic(dir, "char.dic")?;
    let words = if word_dim > 0 {
        Some(read_dic(dir, "word.dic")?)
    } else {
        None
    };
    let lexicon = Lexicon::new(chars, words).map_err(|e| match e {
        Error::Input(m) => Error::Input(format!("{}: {m}", dir.display())),
        other => other,
    })?;
    let value = config::options_value(&cfg, &config_source, lexicon.char_rows(), lexicon.word_rows())?;
    let options = Options::from_value(&value).map_err(|e| match e {
        Error::Options(m) => Error::Options(format!("{config_source}: {m}")),
        other => other,
    })?;
    let (e, f, p, u) = (
        options.char_cnn.embedding_dim,
        options.n_filters(),
        options.lstm.projection_dim,
        options.lstm.dim,
    );
    let mut te = state_dict(dir, "token_embedder.pkl")?;
    let mut out: Vec<NamedTensor> = Vec::new();
    let n_chars = lexicon.char_rows();
    let table = take(&mut te, "char_emb_layer.embedding.weight", &[n_chars, e])?;
    out.push(("char_embed".into(), vec![n_chars + 1, e], with_zero_row(table, e)));
    if let Some(w) = options.word_embedding {
        let n = lexicon.word_rows();
        let table = take(&mut te, "word_emb_layer.embedding.weight", &[n, w.dim])?;
        out.push(("word_embed".into(), vec![n + 1, w.dim], with_zero_row(table, w.dim)));
    }
    for (i, &(width, n)) in options.char_cnn.filters.iter().enumerate() {
        // (n, E, w) -> (1, w, E, n)
        let k = take(&mut te, &format!("convolutions.{i}.weight"), &[n, e, width])?;
        let mut ours = vec![0f32; k.len()];
        for o in 0..n {
            for c in 0..e {
                for x in 0..width {
                    ours[(x * e + c) * n + o] = k[(o * e + c) * width + x];
                }
            }
        }
        out.push((format!("CNN/W_cnn_{i}"), vec![1, width, e, n], ours));
        let b = take(&mut te, &format!("convolutions.{i}.bias"), &[n])?;
        out.push((format!("CNN/b_cnn_{i}"), vec![n], b));
    }
    for h in 0..options.char_cnn.n_highway {
        // Linear(F, 2F): rows 0..F the non-linear part A, F..2F the gate B.
        let w = take(&mut te, &format!("highways._layers.{h}.weight"), &[2 * f, f])?;
        let b = take(&mut te, &format!("highways._layers.{h}.bias"), &[2 * f])?;
        let wt = transpose(&w, 2 * f, f); // (F, 2F)
        let (mut transform, mut carry) = (Vec::with_capacity(f * f), Vec::with_capacity(f * f));
        for row in wt.chunks_exact(2 * f) {
            transform.extend_from_slice(&row[..f]);
            carry.extend(row[f..].iter().map(|v| -v));
        }
        out.push((format!("CNN_high_{h}/W_carry"), vec![f, f], carry));
        out.push((
            format!("CNN_high_{h}/b_carry"),
            vec![f],
            b[f..].iter().map(|v| -v).collect(),
        ));
        out.push((format!("CNN_high_{h}/W_transform"), vec![f, f], transform));
        out.push((format!("CNN_high_{h}/b_transform"), vec![f], b[..f].to_vec()));
    }
    let d = options.projection_input();
    let w = take(&mut te, "projection.weight", &[p, d])?;
    out.push(("CNN_proj/W_proj".into(), vec![d, p], transpose(&w, p, d)));
    out.push((
        "CNN_proj/b_proj".into(),
        vec![p],
        take(&mut te, "projection.bias", &[p])?,
    ));
    refuse_leftovers(&te)?;

    let mut enc = state_dict(dir, "encoder.pkl")?;
    // bilm-tf's gate blocks i, j, f, o from allennlp's i, f, g, o.
    const FROM: [usize; 4] = [0, 2, 1, 3];
    for (di, dir_name) in ["forward", "backward"].iter().enumerate() {
        for l in 0..options.lstm.n_layers {
            let pre = format!("{dir_name}_layer_{l}");
            let wi = take(&mut enc, &format!("{pre}.input_linearity.weight"), &[4 * u, p])?;
            let ws = take(&mut enc, &format!("{pre}.state_linearity.weight"), &[4 * u, p])?;
            let bs = take(&mut enc, &format!("{pre}.state_linearity.bias"), &[4 * u])?;
            let wp = take(&mut enc, &format!("{pre}.state_projection.weight"), &[p, u])?;
            // (2P, 4U): rows 0..P the input's, P..2P the previous output's.
            let mut k = vec![0f32; 2 * p * 4 * u];
            for (half, w) in [&wi, &ws].into_iter().enumerate() {
                for (g, &src) in FROM.iter().enumerate() {
                    for j in 0..u {
                        let row = &w[(src * u + j) * p..(src * u + j + 1) * p];
                        for (r, &v) in row.iter().enumerate() {
                            k[(half * p + r) * 4 * u + g * u + j] = v;
                        }
                    }
                }
            }
            let mut bias = vec![0f32; 4 * u];
            for (g, &src) in FROM.iter().enumerate() {
                for j in 0..u {
                    // bilm-tf's cell adds 1 to the forget gate; the package's does not.
                    bias[g * u + j] = bs[src * u + j] - if g == 2 { 1.0 } else { 0.0 };
                }
            }
            out.push((crate::io::model_file::lstm_name(di, l, "W_0"), vec![2 * p, 4 * u], k));
            out.push((crate::io::model_file::lstm_name(di, l, "B"), vec![4 * u], bias));
            out.push((
                crate::io::model_file::lstm_name(di, l, "W_P_0"),
                vec![u, p],
                transpose(&wp, p, u),
            ));
        }
    }
    refuse_leftovers(&enc)?;
    Ok(Folder {
        options,
        lexicon,
        tensors: out,
        config_source,
    })
}

/// A tensor the model config does not account for means the config and the
/// weights disagree (another number of layers or filters, say).
fn refuse_leftovers(sd: &(std::path::PathBuf, HashMap<String, TorchTensor>)) -> Result<()> {
    let mut left: Vec<&String> = sd.1.keys().collect();
    left.sort();
    match left.first() {
        None => Ok(()),
        Some(&name) => Err(Error::tensor(
            &sd.0,
            name,
            format!(
                "not used by the model config ({} such tensors): the config and the weights disagree",
                left.len()
            ),
        )),
    }
}

/// Converts an ELMoForManyLangs folder into a model file at `out`, with the
/// LSTM matrices in `dtype`.
pub fn convert_elmoformanylangs(dir: &Path, out: &Path, dtype: WeightDtype) -> Result<()> {
    let folder = read_folder(dir)?;
    let half = dtype == WeightDtype::Bf16;
    crate::io::model_file::write_model_full(out, &folder.options, Some(&folder.lexicon), &folder.tensors, &|name| {
        half && crate::io::model_file::bf16_eligible(name)
    })
}
