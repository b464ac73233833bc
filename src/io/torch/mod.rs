//! PyTorch state dicts (`torch.save(model.state_dict(), f)`), read without
//! torch and without running any of the file's code: ELMoForManyLangs ships
//! its weights this way.
//!
//! Both of torch's serialisations are read:
//!
//! * the zip one (torch's default since 1.6): an archive of
//!   `<prefix>/data.pkl` and the storages' bytes, `<prefix>/data/<key>`;
//! * the legacy one (`_use_new_zipfile_serialization=False`, what the
//!   released ELMoForManyLangs models of 2018 use): a run of pickles
//!   followed by the storages' raw bytes.
//!
//! The pickles go through a restricted unpickler that knows only the opcodes
//! and globals a state dict uses and refuses every other global (such as
//! `os.system`) before doing anything with it. Only float32 tensors are
//! read; any other dtype is an error naming the tensor. Errors are
//! [`Error::Torch`], naming the file, the tensor when there is one, and the
//! byte offset for pickle errors.

mod legacy;
mod pickle;
mod tensor;
mod zip;

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use crate::error::{Error, Result};
use tensor::TensorRef;

/// One tensor of a state dict, materialised as float32.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchTensor {
    /// The state dict's key (`forward_layer_0.input_linearity.weight`).
    pub name: String,
    /// The tensor's size (torch's `tensor.shape`); empty for a scalar.
    pub shape: Vec<usize>,
    /// The elements in row-major order (`tensor.contiguous()`), gathered
    /// from the storage whatever the saved strides; `shape`'s product long.
    pub data: Vec<f32>,
}

/// Reads the state dict saved in `path` by `torch.save`: its tensors, in
/// the file's order (the state dict's). The serialisation (zip or legacy)
/// is detected from the first bytes.
pub fn read_state_dict(path: &Path) -> Result<Vec<TorchTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_state_dict_bytes(path, &bytes)
}

/// [`read_state_dict`] on the file's bytes; `name_for_errors` is the path
/// the errors name.
pub fn read_state_dict_bytes(name_for_errors: &Path, bytes: &[u8]) -> Result<Vec<TorchTensor>> {
    let fail = |msg: String| Error::Torch {
        path: name_for_errors.to_path_buf(),
        msg,
    };
    let parsed = if bytes.starts_with(b"PK\x03\x04") {
        zip::parse(bytes)
    } else {
        legacy::parse(bytes)
    }
    .map_err(fail)?;
    materialise(parsed).map_err(fail)
}

/// What a format's reader hands over: the state dict's tensors, and the
/// elements of the float32 storages by key.
pub(crate) struct Parsed {
    items: Vec<(String, Rc<TensorRef>)>,
    data: HashMap<Rc<str>, Vec<f32>>,
}

/// Little-endian float32 elements of a storage's bytes.
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn materialise(parsed: Parsed) -> std::result::Result<Vec<TorchTensor>, String> {
    // Views may name more elements than the storages hold (tied weights,
    // expanded tensors): generous for those, bounded for hostile files.
    let stored: usize = parsed.data.values().map(Vec::len).sum();
    let mut budget = stored.saturating_mul(4).saturating_add(1 << 16);
    parsed
        .items
        .into_iter()
        .map(|(name, t)| {
            let dtype = t.storage.dtype;
            if dtype != tensor::Dtype::F32 {
                return Err(format!(
                    "tensor '{name}' is {} ({}), only float32 is read",
                    dtype.name(),
                    dtype.storage_name()
                ));
            }
            let fail = |msg: String| format!("tensor '{name}': {msg}");
            let storage = parsed
                .data
                .get(&t.storage.key)
                .ok_or_else(|| fail(format!("storage '{}' has no data", t.storage.key)))?;
            let data = tensor::gather(&t, storage, &mut budget).map_err(fail)?;
            Ok(TorchTensor {
                name: name.clone(),
                shape: t.size.clone(),
                data,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
