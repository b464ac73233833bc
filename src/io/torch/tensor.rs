//! Storages and tensors as a torch pickle describes them, and the gathering
//! of a tensor's elements out of its storage (offset, size, stride).

use std::collections::HashMap;
use std::rc::Rc;

use super::pickle::Value;

/// The element type of a storage. Only `F32` is read; the others are known
/// so that a file holding them gets a clear error (and, in the legacy
/// format, so that their bytes can be stepped over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    C64,
    C128,
}

/// Storage type names (`torch.<name>`), dtypes and element sizes.
const STORAGES: [(&str, Dtype, &str, usize); 12] = [
    ("FloatStorage", Dtype::F32, "float32", 4),
    ("DoubleStorage", Dtype::F64, "float64", 8),
    ("HalfStorage", Dtype::F16, "float16", 2),
    ("BFloat16Storage", Dtype::BF16, "bfloat16", 2),
    ("LongStorage", Dtype::I64, "int64", 8),
    ("IntStorage", Dtype::I32, "int32", 4),
    ("ShortStorage", Dtype::I16, "int16", 2),
    ("CharStorage", Dtype::I8, "int8", 1),
    ("ByteStorage", Dtype::U8, "uint8", 1),
    ("BoolStorage", Dtype::Bool, "bool", 1),
    ("ComplexFloatStorage", Dtype::C64, "complex64", 8),
    ("ComplexDoubleStorage", Dtype::C128, "complex128", 16),
];

impl Dtype {
    /// The dtype of storage type `torch.<name>`.
    pub fn from_storage_name(name: &str) -> Option<Dtype> {
        STORAGES.iter().find(|s| s.0 == name).map(|s| s.1)
    }

    fn entry(self) -> &'static (&'static str, Dtype, &'static str, usize) {
        // Every variant has its row; the fallback is never taken.
        STORAGES.iter().find(|s| s.1 == self).unwrap_or(&STORAGES[0])
    }

    /// `torch.FloatStorage`, ...
    pub fn storage_name(self) -> String {
        format!("torch.{}", self.entry().0)
    }

    /// `float32`, ...
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        self.entry().3
    }
}

/// A storage named by a persistent id: `('storage', storage_type, key,
/// location, numel)`, and in the legacy format a sixth item, the view
/// metadata: `None`, or `(view_key, offset, view_numel)` for a view into the
/// storage `key` (old torch saved such views).
#[derive(Debug)]
pub(crate) struct StorageRef {
    /// The key of the storage holding the data (the root, for a view).
    pub key: Rc<str>,
    pub dtype: Dtype,
    /// The view's first element and length within the root (`0, numel`
    /// without a view).
    pub view_offset: u64,
    pub view_numel: u64,
}

/// A tensor: `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
#[derive(Debug)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The storages a pickle named, by key: dtype and element count. A key
/// named twice must be named alike.
#[derive(Default)]
pub(crate) struct Storages {
    /// Key → (dtype, elements), in the order first named.
    pub by_key: HashMap<Rc<str>, (Dtype, u64)>,
    pub order: Vec<Rc<str>>,
}

impl Storages {
    /// Parses a persistent id (`legacy`: 6 items, else 5), records its
    /// storage, and returns it as a value.
    pub fn load(&mut self, pid: &Value, legacy: bool) -> Result<Value, String> {
        let Value::Tuple(t) = pid else {
            return Err(format!("persistent id is a {} (expected a tuple)", pid.kind()));
        };
        let items = &t.items;
        let want = if legacy { 6 } else { 5 };
        if items.len() != want {
            return Err(format!(
                "persistent id of {} items (expected {want}: 'storage', type, key, location, numel{})",
                items.len(),
                if legacy { ", view" } else { "" }
            ));
        }
        match &items[0] {
            Value::Str(s) if &**s == "storage" => {}
            other => return Err(format!("persistent id of a {} (expected 'storage')", other.kind())),
        }
        let Value::Global(super::pickle::Global::Storage(dtype)) = items[1] else {
            return Err(format!(
                "storage type is a {} (expected a torch storage type)",
                items[1].kind()
            ));
        };
        let Value::Str(key) = &items[2] else {
            return Err(format!("storage key is a {} (expected a str)", items[2].kind()));
        };
        let numel = count(&items[4], "storage size")?;
        let (view_offset, view_numel) = match items.get(5) {
            None | Some(Value::None) => (0, numel),
            Some(Value::Tuple(view)) if view.items.len() == 3 => {
                let offset = count(&view.items[1], "view offset")?;
                let len = count(&view.items[2], "view size")?;
                if offset.checked_add(len).is_none_or(|end| end > numel) {
                    return Err(format!(
                        "storage '{key}': view of {len} elements at {offset} past its {numel} elements"
                    ));
                }
                (offset, len)
            }
            Some(other) => {
                return Err(format!(
                    "storage view is a {} (expected None or a 3-tuple)",
                    other.kind()
                ));
            }
        };
        match self.by_key.get(key) {
            Some(&(d, n)) if (d, n) != (dtype, numel) => {
                return Err(format!(
                    "storage '{key}' named as {} of {numel} elements, before as {} of {n}",
                    dtype.name(),
                    d.name()
                ));
            }
            Some(_) => {}
            None => {
                self.by_key.insert(key.clone(), (dtype, numel));
                self.order.push(key.clone());
            }
        }
        Ok(Value::Storage(Rc::new(StorageRef {
            key: key.clone(),
            dtype,
            view_offset,
            view_numel,
        })))
    }
}

fn count(value: &Value, what: &str) -> Result<u64, String> {
    match value {
        Value::Int(i) => u64::try_from(*i).map_err(|_| format!("{what} {i} is negative or too large")),
        other => Err(format!("{what} is a {} (expected an int)", other.kind())),
    }
}

/// The state dict's items: `(name, tensor)` in file order.
pub(crate) fn state_dict_items(value: &Value) -> Result<Vec<(String, Rc<TensorRef>)>, String> {
    let Value::Dict(dict) = value else {
        return Err(format!("the pickle holds a {} (expected a state dict)", value.kind()));
    };
    dict.items
        .iter()
        .map(|(key, value)| {
            let super::pickle::Key::Str(name) = key else {
                return Err(format!("state dict key {key:?} is not a str"));
            };
            match value {
                Value::Tensor(t) => Ok((name.to_string(), t.clone())),
                other => Err(format!("tensor '{name}': a {} (expected a tensor)", other.kind())),
            }
        })
        .collect()
}

/// Gathers the elements of `t` (row-major, as `tensor.contiguous()` lays
/// them out) from `storage`, the root storage's elements. Every index is
/// checked against the view; `budget` (elements) bounds the total gathered,
/// since views that overlap or have stride 0 can name more elements than
/// the file holds.
pub(crate) fn gather(t: &TensorRef, storage: &[f32], budget: &mut usize) -> Result<Vec<f32>, String> {
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("its size overflows")?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    // The last element's index within the view.
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
        })
        .ok_or("its strides overflow")?;
    let view_numel = usize::try_from(t.storage.view_numel).map_err(|_| "its storage is too large")?;
    if last >= view_numel {
        return Err(format!(
            "size {:?}, stride {:?} and offset {} reach element {last} of a storage of {view_numel}",
            t.size, t.stride, t.offset
        ));
    }
    let start = usize::try_from(t.storage.view_offset).map_err(|_| "its storage is too large")?;
    let view = start
        .checked_add(view_numel)
        .and_then(|end| storage.get(start..end))
        .ok_or("its storage holds fewer elements than named")?;
    *budget = budget.checked_sub(numel).ok_or(
        "the tensors' views name far more elements than the file's storages hold (overlapping or stride-0 views)",
    )?;
    // Row-major strides: one slice.
    let mut expect = 1usize;
    let contiguous = t.size.iter().zip(&t.stride).rev().all(|(&d, &s)| {
        let ok = d == 1 || s == expect;
        expect = expect.saturating_mul(d);
        ok
    });
    if contiguous {
        return Ok(view[t.offset..t.offset + numel].to_vec());
    }
    // An odometer over the indices; every element's index is at most `last`.
    let rank = t.size.len();
    // A dimension of size 1 never moves: its stride (which may be anything,
    // since it never multiplies a non-zero index) is taken as 0, so that
    // the odometer below cannot overflow.
    let stride: Vec<usize> = t
        .size
        .iter()
        .zip(&t.stride)
        .map(|(&d, &s)| if d == 1 { 0 } else { s })
        .collect();
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; rank];
    let mut at = t.offset;
    for _ in 0..numel {
        out.push(view[at]);
        for dim in (0..rank).rev() {
            idx[dim] += 1;
            at += stride[dim];
            if idx[dim] < t.size[dim] {
                break;
            }
            at -= stride[dim] * t.size[dim];
            idx[dim] = 0;
        }
    }
    Ok(out)
}
