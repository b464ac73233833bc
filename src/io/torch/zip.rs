//! torch's zip serialisation (the default since torch 1.6): an archive whose
//! top folder (`<prefix>`, any name: torch uses the file's stem) holds
//! `data.pkl` (the pickled object, storages as persistent ids `('storage',
//! type, key, location, numel)`), `data/<key>` (each storage's raw
//! little-endian bytes), `byteorder` (`little`, absent before torch 1.12)
//! and `version`.

use std::collections::HashMap;
use std::io::{Cursor, Read};

// `::zip` is the crate; this module is `torch::zip`.
use ::zip::{ZipArchive, ZipReadOptions};

use super::pickle::{Value, unpickle};
use super::tensor::{Dtype, Storages, state_dict_items};
use super::{Parsed, f32s};

/// Parses a zip file's bytes.
pub(super) fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a readable zip archive ({e})"))?;
    // The pickle is `<prefix>/data.pkl`, `<prefix>` a single folder.
    let prefixes: Vec<String> = archive
        .file_names()
        .filter_map(|name| {
            let name = name.ok()?;
            let prefix = name.strip_suffix("/data.pkl")?;
            (!prefix.is_empty() && !prefix.contains('/')).then(|| prefix.to_string())
        })
        .collect();
    let prefix = match &prefixes[..] {
        [prefix] => prefix,
        [] => return Err("a zip archive without <folder>/data.pkl (not a torch file)".into()),
        _ => return Err("a zip archive with more than one <folder>/data.pkl".into()),
    };
    let len = bytes.len() as u64;
    let byteorder = format!("{prefix}/byteorder");
    if archive.index_for_name(&byteorder).is_some() {
        let order = read_entry(&mut archive, &byteorder, None, len)?;
        if order != b"little" {
            return Err(format!(
                "{byteorder} is '{}' (only little-endian files are read)",
                String::from_utf8_lossy(&order)
            ));
        }
    }
    let pickle = read_entry(&mut archive, &format!("{prefix}/data.pkl"), None, len)?;
    let mut storages = Storages::default();
    let (state_dict, end) = unpickle(&pickle, 0, &mut |pid: &Value| storages.load(pid, false))
        .map_err(|e| format!("{prefix}/data.pkl: {e}"))?;
    if end != pickle.len() {
        return Err(format!(
            "{prefix}/data.pkl: {} bytes after its STOP",
            pickle.len() - end
        ));
    }
    let items = state_dict_items(&state_dict)?;

    let mut data = HashMap::new();
    for key in &storages.order {
        let &(dtype, numel) = storages
            .by_key
            .get(key)
            .ok_or_else(|| format!("storage '{key}' was not recorded"))?;
        // Other dtypes are not read at all; a tensor on them is refused by name.
        if dtype != Dtype::F32 {
            continue;
        }
        let name = format!("{prefix}/data/{key}");
        let size = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| format!("storage '{key}' of {numel} elements is too large"))?;
        let raw = read_entry(&mut archive, &name, Some(size), len)?;
        data.insert(key.clone(), f32s(&raw));
    }
    Ok(Parsed { items, data })
}

/// The bytes of entry `name`, checked: its size against `expect` (when
/// given) and against what its compressed bytes can hold, its extent against
/// the archive's `len`, its CRC-32 (which the zip crate checks at the end).
fn read_entry(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    name: &str,
    expect: Option<usize>,
    len: u64,
) -> Result<Vec<u8>, String> {
    let fail = |msg: String| format!("entry '{name}': {msg}");
    // Without it the zip crate keeps one of two entries of the same name and
    // does not compare the local header with the central directory.
    let options = ZipReadOptions::new().enforce_header_consistency(true);
    let mut entry = archive
        .by_name_with_options(name, options)
        .map_err(|e| fail(e.to_string()))?;
    let size = crate::io::zip_entry::checked_size(&entry, len).map_err(fail)?;
    if let Some(expect) = expect
        && size != expect as u64
    {
        return Err(fail(format!("holds {size} bytes, its tensors name {expect}")));
    }
    let size = usize::try_from(size).map_err(|_| fail("too large".into()))?;
    let mut out = Vec::with_capacity(size);
    (&mut entry)
        .take(size as u64)
        .read_to_end(&mut out)
        .map_err(|e| fail(format!("corrupt ({e})")))?;
    if out.len() != size {
        return Err(fail(format!("holds {} bytes, declares {size}", out.len())));
    }
    // Reading past the end makes the zip crate check the CRC-32.
    match entry.read(&mut [0u8; 1]) {
        Ok(0) => Ok(out),
        Ok(_) => Err(fail(format!("holds more than its declared {size} bytes"))),
        Err(e) => Err(fail(format!("corrupt ({e})"))),
    }
}
