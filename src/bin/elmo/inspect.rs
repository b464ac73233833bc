//! `elmo inspect`: what a model file, HDF5 weight file or TF checkpoint holds.

use elmo::model_file::{FORMAT_NAME, FORMAT_VERSION, ModelFile, expected_tensors, packed_matrix};
use elmo::{Error, Result};
use std::fmt::Write;
use std::path::Path;

const HDF5_MAGIC: &[u8] = b"\x89HDF\r\n\x1a\n";

fn dims(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// A listing of `path`, whichever kind of file it is.
pub fn describe(path: &Path) -> Result<String> {
    let mut out = String::new();
    if let Err(e) = std::fs::metadata(path) {
        // Not even a checkpoint prefix (whose PATH.index exists instead).
        let mut index = path.as_os_str().to_owned();
        index.push(".index");
        if !Path::new(&index).exists() {
            return Err(Error::io(path, e));
        }
    }
    if path.is_dir() && path.join("char.dic").is_file() {
        return describe_efml(path);
    }
    if path.is_file() {
        let mut head = [0u8; 8];
        let n = std::io::Read::read(
            &mut std::fs::File::open(path).map_err(|e| Error::io(path, e))?,
            &mut head,
        )
        .map_err(|e| Error::io(path, e))?;
        if head[..n] == HDF5_MAGIC[..n.min(8)] && n == 8 {
            return describe_hdf5(path);
        }
        let is_ckpt = path.extension().is_some_and(|e| e == "index")
            || path.file_name().is_some_and(|f| f.to_string_lossy().contains(".data-"));
        if !is_ckpt {
            let m = ModelFile::open(path)?;
            let _ = writeln!(
                out,
                "{}: model file, format {FORMAT_NAME} version {} (this build writes {FORMAT_VERSION})",
                path.display(),
                m.version
            );
            let _ = writeln!(out, "options: {}", m.options.to_json());
            if let Some(l) = &m.lexicon {
                let _ = writeln!(
                    out,
                    "lexicon: {} characters, {} words (ELMoForManyLangs tokenisation)",
                    l.char_rows(),
                    l.word_rows()
                );
            }
            let logical: std::collections::BTreeMap<_, _> = expected_tensors(&m.options).into_iter().collect();
            let mut rows: Vec<(String, String)> = Vec::new();
            for (name, t) in &m.tensors {
                let mapped = if t.is_shared() { "mapped" } else { "copied" };
                rows.push((name.clone(), format!("{}\tF32\t{mapped}", dims(t.shape()))));
            }
            for (name, t) in &m.bf16 {
                rows.push((name.clone(), format!("{}\tBF16", dims(t.shape()))));
            }
            rows.sort();
            for (name, desc) in rows {
                let packed = logical
                    .get(&name)
                    .and_then(|s| packed_matrix(&name, s))
                    .map(|(k, n)| format!("\tstrips of the {k} x {n} matrix"))
                    .unwrap_or_default();
                let _ = writeln!(out, "  {name}\t{desc}{packed}");
            }
            return Ok(out);
        }
    }
    let ckpt = elmo::tfckpt::open_checkpoint(path)?;
    let _ = writeln!(
        out,
        "{}: TensorFlow V2 checkpoint, {} shard(s)",
        ckpt.prefix().display(),
        ckpt.num_shards()
    );
    for v in ckpt.variables() {
        let part = if v.is_partitioned() { "\tpartitioned" } else { "" };
        let _ = writeln!(out, "  {}\t{}\t{}{part}", v.name, dims(&v.shape), v.dtype);
    }
    Ok(out)
}

/// An ELMoForManyLangs model folder: its config, lexicons and the tensors
/// of both state dicts, as our options and layout would read them.
fn describe_efml(dir: &Path) -> Result<String> {
    let mut out = String::new();
    let folder = elmo::io::efml::read_folder(dir)?;
    let _ = writeln!(out, "{}: ELMoForManyLangs model folder", dir.display());
    let _ = writeln!(out, "model config: {}", folder.config_source);
    let _ = writeln!(out, "options: {}", folder.options.to_json());
    let _ = writeln!(
        out,
        "lexicon: {} characters, {} words",
        folder.lexicon.char_rows(),
        folder.lexicon.word_rows()
    );
    for file in ["token_embedder.pkl", "encoder.pkl"] {
        let p = dir.join(file);
        let tensors = elmo::io::torch::read_state_dict(&p)?;
        let _ = writeln!(out, "{file}: {} tensors", tensors.len());
        for t in tensors {
            let _ = writeln!(out, "  {}\t{}\tF32", t.name, dims(&t.shape));
        }
    }
    Ok(out)
}

fn describe_hdf5(path: &Path) -> Result<String> {
    let f = hdf5_reader::Hdf5File::open(path).map_err(|e| Error::weights(path, format!("cannot read as HDF5: {e}")))?;
    let mut out = format!("{}: HDF5 weight file\n", path.display());
    let mut stack = vec![(
        String::new(),
        f.root_group().map_err(|e| Error::weights(path, e.to_string()))?,
    )];
    let mut lines = Vec::new();
    while let Some((prefix, g)) = stack.pop() {
        let (groups, datasets) = g.members().map_err(|e| Error::weights(path, e.to_string()))?;
        for d in datasets {
            let shape: Vec<usize> = d.shape().iter().map(|&x| x as usize).collect();
            let dtype = match d.dtype() {
                hdf5_reader::Datatype::FloatingPoint { size, .. } => format!("float{}", 8 * *size as usize),
                hdf5_reader::Datatype::FixedPoint { size, signed, .. } => {
                    format!("{}int{}", if *signed { "" } else { "u" }, 8 * *size as usize)
                }
                other => format!("{other:?}"),
            };
            lines.push(format!("  {prefix}{}\t{}\t{dtype}", d.name(), dims(&shape)));
        }
        for sub in groups {
            stack.push((format!("{prefix}{}/", sub.name()), sub));
        }
    }
    lines.sort();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    Ok(out)
}
