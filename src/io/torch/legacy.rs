//! torch's legacy serialisation (`_use_new_zipfile_serialization=False`):
//! five pickles back to back (the magic number, the protocol version 1001,
//! a dict describing the writer's machine, the object itself, the list of
//! storage keys), then each storage in that list's order as a little-endian
//! u64 element count and the raw little-endian elements.

use super::pickle::{Key, Value, unpickle};
use super::tensor::{Dtype, Storages, state_dict_items};
use super::{Parsed, f32s};
use std::collections::{HashMap, HashSet};

/// The first pickle of a legacy file: the integer 0x1950a86a20f9469cfc6c.
const MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The second: the format's version.
const PROTOCOL_VERSION: i128 = 1001;

/// Parses a legacy file's bytes.
pub(super) fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let mut no_pid = |_: &Value| -> Result<Value, String> { Err("persistent id outside the state dict".into()) };
    let (magic, at) = unpickle(bytes, 0, &mut no_pid).map_err(|e| format!("not a torch file ({e})"))?;
    if !matches!(magic, Value::Int(MAGIC)) {
        return Err("not a torch file: its first pickle is not torch's magic number".into());
    }
    let (version, at) = unpickle(bytes, at, &mut no_pid).map_err(|e| e.to_string())?;
    if !matches!(version, Value::Int(PROTOCOL_VERSION)) {
        return Err(format!(
            "torch legacy protocol version {version:?} (only {PROTOCOL_VERSION} is read)"
        ));
    }
    let (sys_info, at) = unpickle(bytes, at, &mut no_pid).map_err(|e| e.to_string())?;
    if let Value::Dict(info) = &sys_info {
        // Big-endian writers wrote big-endian storages.
        let little = info
            .items
            .iter()
            .find(|(k, _)| matches!(k, Key::Str(s) if &**s == "little_endian"));
        if let Some((_, value)) = little
            && !matches!(value, Value::Bool(true))
        {
            return Err("written on a big-endian machine (only little-endian files are read)".into());
        }
    } else {
        return Err(format!("system info is a {} (expected a dict)", sys_info.kind()));
    }

    let mut storages = Storages::default();
    let (state_dict, at) =
        unpickle(bytes, at, &mut |pid: &Value| storages.load(pid, true)).map_err(|e| e.to_string())?;
    let items = state_dict_items(&state_dict)?;

    let (keys, mut at) = unpickle(bytes, at, &mut no_pid).map_err(|e| e.to_string())?;
    let Value::List(keys) = keys else {
        return Err(format!("storage keys are a {} (expected a list)", keys.kind()));
    };
    let mut data = HashMap::new();
    let mut seen = HashSet::new();
    for key in &keys.items {
        let Value::Str(key) = key else {
            return Err(format!("storage key is a {} (expected a str)", key.kind()));
        };
        let &(dtype, numel) = storages
            .by_key
            .get(key)
            .ok_or_else(|| format!("storage '{key}' is listed but no tensor names it"))?;
        if !seen.insert(key.clone()) {
            return Err(format!("storage '{key}' is listed twice"));
        }
        let header = bytes
            .get(at..)
            .and_then(|rest| rest.get(..8))
            .ok_or_else(|| format!("truncated: storage '{key}' (at byte {at}) has no element count"))?;
        let mut le = [0u8; 8];
        le.copy_from_slice(header);
        let count = u64::from_le_bytes(le);
        if count != numel {
            return Err(format!(
                "storage '{key}' (at byte {at}) holds {count} elements, its tensors name {numel}"
            ));
        }
        let len = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| format!("storage '{key}' of {count} elements is too large"))?;
        let start = at + 8;
        let raw = start
            .checked_add(len)
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| {
                format!(
                    "truncated: storage '{key}' (at byte {at}) needs {len} bytes, {} left",
                    bytes.len() - start
                )
            })?;
        at = start + len;
        // Other dtypes are stepped over; a tensor on them is refused by name.
        if dtype == Dtype::F32 {
            data.insert(key.clone(), f32s(raw));
        }
    }
    if let Some(missing) = storages.order.iter().find(|k| !seen.contains(*k)) {
        return Err(format!(
            "storage '{missing}' is not in the list of storages: its data is missing"
        ));
    }
    // Bytes after the last storage are not torch's to read (a file may hold
    // more than one saved object); torch.load ignores them too.
    Ok(Parsed { items, data })
}
