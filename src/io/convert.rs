//! `elmo convert`: allennlp/bilm-tf HDF5 weights + `options.json` -> model file.
//!
//! The HDF5 file is read with the pure-Rust `hdf5-reader` crate (no C
//! libhdf5). Every dataset the options require must be present, float32 and of
//! the right shape; anything else is an error naming the dataset.

use crate::error::{Error, Result};
use crate::io::model_file::{NamedTensor, expected_tensors, lstm_name};
use crate::options::Options;
use hdf5_reader::{Datatype, Hdf5File};
use std::path::Path;

/// Progress of a conversion: bytes of weights read so far, total bytes, and
/// the dataset just read.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64, &str);

/// Reads every tensor the options need from a bilm-tf HDF5 weight file, in the
/// converted layout (the zero padding row prepended to `char_embed`).
pub fn read_hdf5_weights(options: &Options, hdf5: &Path, progress: Progress) -> Result<Vec<NamedTensor>> {
    let file = Hdf5File::open(hdf5).map_err(|e| Error::weights(hdf5, format!("cannot read as HDF5: {e}")))?;
    read_from(options, file, hdf5, progress)
}

/// [`read_hdf5_weights`] from an HDF5 file held in memory (`name` is only
/// used in messages); used by the fuzz target.
pub fn read_hdf5_weights_from_bytes(options: &Options, bytes: &[u8], name: &Path) -> Result<Vec<NamedTensor>> {
    let file = Hdf5File::from_bytes(bytes).map_err(|e| Error::weights(name, format!("cannot read as HDF5: {e}")))?;
    read_from(options, file, name, &mut |_, _, _| {})
}

fn read_from(options: &Options, file: Hdf5File, hdf5: &Path, progress: Progress) -> Result<Vec<NamedTensor>> {
    let expected = expected_tensors(options);
    let total: u64 = expected
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64 * 4)
        .sum();
    let mut done = 0u64;
    let mut out = Vec::with_capacity(expected.len());
    for (name, shape) in expected {
        let is_embed = name == "char_embed";
        let mut file_shape = shape.clone();
        if is_embed {
            file_shape[0] -= 1; // the file has no row for "no token"
        }
        let ds = file
            .dataset(&name)
            .map_err(|e| Error::tensor(hdf5, &name, format!("dataset missing or unreadable: {e}")))?;
        match ds.dtype() {
            Datatype::FloatingPoint { size: 4, .. } => {}
            other => {
                return Err(Error::tensor(
                    hdf5,
                    &name,
                    format!("dtype {other:?} is not supported: expected float32"),
                ));
            }
        }
        let got: Vec<usize> = ds.shape().iter().map(|&d| d as usize).collect();
        if got != file_shape {
            return Err(Error::tensor(
                hdf5,
                &name,
                format!("shape {got:?} does not match the options, which need {file_shape:?}"),
            ));
        }
        let n: usize = file_shape.iter().product();
        let mut data = vec![0f32; if is_embed { n + shape[1] } else { n }];
        let dst = if is_embed { &mut data[shape[1]..] } else { &mut data[..] };
        ds.read_into(dst)
            .map_err(|e| Error::tensor(hdf5, &name, format!("cannot read values: {e}")))?;
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::tensor(
                hdf5,
                &name,
                format!("holds a non-finite value ({}) at flat index {i}", data[i]),
            ));
        }
        done += data.len() as u64 * 4;
        progress(done, total, &name);
        out.push((name, shape, data));
    }
    // Weights the options leave out mean the options are not this file's
    // (a typo'd `n_layers` reads as 1 layer, bilm-tf's default): an error,
    // not a smaller model converted without a word.
    let (layers, highway) = (options.lstm.n_layers, options.char_cnn.n_highway);
    let extra = [
        (lstm_name(0, layers, "W_0"), "LSTM", "lstm.n_layers", layers),
        (
            format!("CNN_high_{highway}/W_carry"),
            "highway",
            "char_cnn.n_highway",
            highway,
        ),
    ];
    for (name, what, key, n) in extra {
        if file.dataset(&name).is_ok() {
            return Err(Error::tensor(
                hdf5,
                &name,
                format!(
                    "the file holds more {what} layers than the options' {key} = {n}: are they this file's options?"
                ),
            ));
        }
    }
    Ok(out)
}

/// Converts `options.json` + bilm-tf HDF5 weights into a model file at `out`.
pub fn convert_hdf5(options_path: &Path, hdf5: &Path, out: &Path, progress: Progress) -> Result<()> {
    convert_hdf5_with(options_path, hdf5, out, progress, WeightDtype::F32)
}

/// How `elmo convert` stores the LSTM matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    /// Everything in f32 (the default; matches TensorFlow to f32 rounding).
    F32,
    /// The LSTM kernels and projections in bfloat16: half the bytes each step
    /// reads; arithmetic stays f32.
    Bf16,
}

impl std::str::FromStr for WeightDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(WeightDtype::F32),
            "bf16" => Ok(WeightDtype::Bf16),
            _ => Err(Error::Input(format!("--dtype must be f32 or bf16, got {s:?}"))),
        }
    }
}

/// Writes a model, with the LSTM matrices in `dtype`.
pub fn write_converted(out: &Path, options: &Options, tensors: &[NamedTensor], dtype: WeightDtype) -> Result<()> {
    let half = dtype == WeightDtype::Bf16;
    crate::io::model_file::write_model_with(out, options, tensors, &|name| {
        half && crate::io::model_file::bf16_eligible(name)
    })
}

/// [`convert_hdf5`] with a choice of weight dtype.
pub fn convert_hdf5_with(
    options_path: &Path,
    hdf5: &Path,
    out: &Path,
    progress: Progress,
    dtype: WeightDtype,
) -> Result<()> {
    let options = Options::from_file(options_path)?;
    let tensors = read_hdf5_weights(&options, hdf5, progress)?;
    write_converted(out, &options, &tensors, dtype)
}
