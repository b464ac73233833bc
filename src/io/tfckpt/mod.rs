//! TensorFlow V2 checkpoints (tensor bundles), and ELMo weights from them.
//!
//! A V2 checkpoint with prefix `P` is `P.index` plus the data shards
//! `P.data-SSSSS-of-NNNNN`. The index is a LevelDB-style table (an SSTable):
//! a 48-byte footer with the handles of the metaindex and index blocks and a
//! magic number; an index block whose values are the handles of the data
//! blocks; data blocks of prefix-compressed key/value entries with restart
//! points. Every block is followed by a one-byte compression type (0 raw,
//! 1 Snappy) and the masked CRC-32C of the block and that byte. The value under
//! the empty key is a `BundleHeaderProto`; every other key is a variable name
//! and its value a `BundleEntryProto` saying where the variable's bytes lie
//! (shard, offset, size) and their masked CRC-32C.
//!
//! Everything is decoded by hand: no TensorFlow, no protobuf code generation,
//! no C library. Every checksum is verified, every length is checked against
//! the bytes that are really there before anything is allocated, and every
//! problem is an [`Error`] that names the file and, where there is one, the
//! variable.
//!
//! [`open_checkpoint`] finds and opens a checkpoint; [`Checkpoint`] lists its
//! variables and reads them as `f32` (float32, float64, float16 and bfloat16
//! are read). [`elmo_from_checkpoint`] maps the variables of a bilm-tf graph or
//! a TF Hub ELMo module (`bilm/...`, `aggregation/...`) to the converted model
//! layout, and [`convert_tf_checkpoint`] writes them as a model file.

use crate::error::{Error, Result};
use crate::io::model_file::{NamedTensor, expected_tensors};
use crate::options::{Activation, N_CHARACTERS, Options};
use serde_json::json;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Internal results: a message that the caller wraps into an [`Error`]
/// naming the file and the variable.
type Msg<T> = std::result::Result<T, String>;

mod bundle;
mod wire;

pub use bundle::*;
pub use wire::*;

// ---------------------------------------------------------------------------
// ELMo from a checkpoint.

/// Presets accepted by [`elmo_from_checkpoint`]: the settings a checkpoint
/// does not record. `tfhub-elmo-2` is the original ELMo (TF Hub
/// `google/elmo/2`): cell_clip 3, proj_clip 3, skip connections,
/// 50 characters per token, relu.
pub const PRESETS: &[&str] = &["tfhub-elmo-2"];

/// The options a checkpoint's shapes cannot tell.
#[derive(Debug, Clone, Copy)]
struct Unrecorded {
    cell_clip: Option<f32>,
    proj_clip: Option<f32>,
    use_skip_connections: bool,
    max_characters_per_token: usize,
    activation: Activation,
}

fn preset_settings(name: &str) -> Result<Unrecorded> {
    match name {
        "tfhub-elmo-2" => Ok(Unrecorded {
            cell_clip: Some(3.0),
            proj_clip: Some(3.0),
            use_skip_connections: true,
            max_characters_per_token: 50,
            activation: Activation::Relu,
        }),
        other => Err(Error::Options(format!(
            "unknown preset '{other}': known presets are {}",
            PRESETS.join(", ")
        ))),
    }
}

/// The checkpoint name (without any `module/` prefix) of our tensor `name`.
fn checkpoint_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("RNN_")
        && let Some((head, leaf)) = rest.rsplit_once("/LSTMCell/")
    {
        let leaf = match leaf {
            "W_0" => "kernel",
            "B" => "bias",
            "W_P_0" => "projection/kernel",
            other => other,
        };
        return format!("bilm/RNN_{head}/rnn/lstm_cell/{leaf}");
    }
    format!("bilm/{name}")
}

fn is_index(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `name` (without `module/`) is an ELMo weight of some structure:
/// such a variable left unused means the options describe another model.
fn is_elmo_weight(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("bilm/") else {
        return false;
    };
    if rest == "char_embed" || rest == "CNN_proj/W_proj" || rest == "CNN_proj/b_proj" {
        return true;
    }
    if let Some(i) = rest
        .strip_prefix("CNN/W_cnn_")
        .or_else(|| rest.strip_prefix("CNN/b_cnn_"))
    {
        return is_index(i);
    }
    if let Some((h, leaf)) = rest.strip_prefix("CNN_high_").and_then(|r| r.split_once('/')) {
        return is_index(h) && ["W_carry", "b_carry", "W_transform", "b_transform"].contains(&leaf);
    }
    if let Some((d, r)) = rest.strip_prefix("RNN_").and_then(|r| r.split_once('/'))
        && let Some((l, leaf)) = r
            .strip_prefix("RNN/MultiRNNCell/Cell")
            .and_then(|r| r.split_once("/rnn/lstm_cell/"))
    {
        return is_index(d) && is_index(l) && ["kernel", "bias", "projection/kernel"].contains(&leaf);
    }
    false
}

/// The ELMo variables of a checkpoint by name without `module/`.
struct ElmoVars<'a> {
    ckpt: &'a Checkpoint,
    /// `module/` when the checkpoint's names carry it, else empty.
    prefix: &'static str,
    by_name: BTreeMap<&'a str, &'a Variable>,
}

impl<'a> ElmoVars<'a> {
    fn get(&self, name: &str) -> Option<&'a Variable> {
        self.by_name.get(name).copied()
    }

    /// The variable `name`, which must be there.
    fn need(&self, name: &str) -> Result<&'a Variable> {
        self.get(name).ok_or_else(|| {
            Error::tensor(
                self.ckpt.index_path(),
                format!("{}{name}", self.prefix),
                "missing from the checkpoint",
            )
        })
    }

    /// The shape of `name`, which must have `rank` positive dimensions.
    fn dims(&self, name: &str, rank: usize) -> Result<&'a [usize]> {
        let v = self.need(name)?;
        if v.shape.len() != rank || v.shape.contains(&0) {
            return Err(Error::tensor(
                self.ckpt.index_path(),
                &v.name,
                format!("shape {:?}: expected {rank} positive dimensions", v.shape),
            ));
        }
        Ok(&v.shape)
    }

    /// Options from the shapes, plus the settings they cannot tell.
    fn infer(&self, s: Unrecorded) -> Result<Options> {
        let e = self.dims("bilm/char_embed", 2)?[1];
        let mut filters = Vec::new();
        while self.get(&format!("bilm/CNN/W_cnn_{}", filters.len())).is_some() {
            let name = format!("bilm/CNN/W_cnn_{}", filters.len());
            let d = self.dims(&name, 4)?;
            if d[0] != 1 {
                return Err(Error::tensor(
                    self.ckpt.index_path(),
                    &self.need(&name)?.name,
                    format!("shape {d:?}: expected (1, width, embedding dim, count)"),
                ));
            }
            filters.push([d[1], d[3]]);
        }
        if filters.is_empty() {
            self.need("bilm/CNN/W_cnn_0")?;
        }
        let mut n_highway = 0;
        while self.get(&format!("bilm/CNN_high_{n_highway}/W_carry")).is_some() {
            n_highway += 1;
        }
        let cell = |l: usize, leaf: &str| format!("bilm/RNN_0/RNN/MultiRNNCell/Cell{l}/rnn/lstm_cell/{leaf}");
        let proj = self.dims(&cell(0, "projection/kernel"), 2)?;
        let (dim, projection_dim) = (proj[0], proj[1]);
        let mut n_layers = 0;
        while self.get(&cell(n_layers, "kernel")).is_some() {
            n_layers += 1;
        }
        let v = json!({
            "lstm": {
                "dim": dim,
                "projection_dim": projection_dim,
                "n_layers": n_layers.max(1),
                "cell_clip": s.cell_clip,
                "proj_clip": s.proj_clip,
                "use_skip_connections": s.use_skip_connections,
            },
            "char_cnn": {
                "embedding": {"dim": e},
                "filters": filters,
                "n_highway": n_highway,
                "n_characters": N_CHARACTERS,
                "max_characters_per_token": s.max_characters_per_token,
                "activation": s.activation.name(),
            }
        });
        Options::from_value(&v).map_err(|err| {
            Error::weights(
                self.ckpt.index_path(),
                format!("the options its shapes give are not valid: {err}"),
            )
        })
    }

    /// Reads `v`, checking that every value is finite.
    fn read(&self, v: &Variable) -> Result<Vec<f32>> {
        let data = self.ckpt.read_variable_f32(v)?;
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::tensor(
                self.ckpt.shard_path(v.shard_id),
                &v.name,
                format!("holds a non-finite value ({}) at flat index {i}", data[i]),
            ));
        }
        Ok(data)
    }
}

/// Maps the ELMo variables of a checkpoint to the converted model layout.
///
/// Accepted names are those of bilm-tf's graph, which the TF Hub ELMo
/// module's checkpoint uses, optionally under `module/`:
///
/// | checkpoint | model file |
/// | --- | --- |
/// | `bilm/char_embed` (262 rows, row 0 the padding row) | `char_embed` (kept as is) |
/// | `bilm/CNN/W_cnn_i`, `bilm/CNN/b_cnn_i` | `CNN/W_cnn_i`, `CNN/b_cnn_i` |
/// | `bilm/CNN_high_i/{W,b}_{carry,transform}` | `CNN_high_i/...` |
/// | `bilm/CNN_proj/{W,b}_proj` | `CNN_proj/...` |
/// | `bilm/RNN_d/RNN/MultiRNNCell/Celll/rnn/lstm_cell/kernel`, `bias`, `projection/kernel` | `RNN_d/RNN/MultiRNNCell/Celll/LSTMCell/W_0`, `B`, `W_P_0` |
/// | `aggregation/weights` (n_layers + 1), `aggregation/scaling` (scalar or (1,)) | same names, scaling with shape (1,) |
///
/// The options: when `options` is given, they are used as they are and every
/// variable must have the shape they require. Otherwise the structure
/// (embedding dim, filters, highway layers, projection and cell dims, number
/// of layers) is inferred from the shapes and the settings no shape records
/// (cell_clip, proj_clip, use_skip_connections, max_characters_per_token,
/// activation) come from `preset` (one of [`PRESETS`]); with neither, the
/// error says what is missing. A given `preset` is checked but not used when
/// `options` is given.
///
/// Returns the options and the tensors in [`expected_tensors`] order, then
/// `aggregation/weights` and `aggregation/scaling` when the checkpoint has
/// them. Other variables (bilm-tf's LSTM state variables `bilm/Variable*`,
/// anything not under `bilm/`) are ignored, but an ELMo weight the options do
/// not use is an error. Errors name the file and the variable.
pub fn elmo_from_checkpoint(
    ckpt: &Checkpoint,
    options: Option<Options>,
    preset: Option<&str>,
) -> Result<(Options, Vec<NamedTensor>)> {
    let index = ckpt.index_path();
    let mut by_name: BTreeMap<&str, &Variable> = BTreeMap::new();
    let mut prefix = "";
    for v in ckpt.variables() {
        let short = match v.name.strip_prefix("module/") {
            Some(s) => {
                if s.starts_with("bilm/") {
                    prefix = "module/";
                }
                s
            }
            None => &v.name,
        };
        if by_name.insert(short, v).is_some() {
            return Err(Error::tensor(
                index,
                &v.name,
                format!("the checkpoint has both '{short}' and 'module/{short}'"),
            ));
        }
    }
    if !by_name.keys().any(|k| k.starts_with("bilm/")) {
        let names: Vec<&str> = ckpt.variables().iter().take(5).map(|v| v.name.as_str()).collect();
        return Err(Error::weights(
            index,
            format!(
                "not an ELMo checkpoint: no bilm/ variables (it has {} variables{}{})",
                ckpt.variables().len(),
                if names.is_empty() { "" } else { ": " },
                names.join(", ")
                    + if ckpt.variables().len() > names.len() {
                        ", ..."
                    } else {
                        ""
                    }
            ),
        ));
    }
    let vars = ElmoVars { ckpt, prefix, by_name };
    let preset = preset.map(preset_settings).transpose()?;
    let options = match (options, preset) {
        (Some(o), _) => o,
        (None, Some(s)) => vars.infer(s)?,
        (None, None) => {
            return Err(Error::Options(format!(
                "{}: a checkpoint does not record cell_clip, proj_clip, use_skip_connections, \
                 max_characters_per_token and activation: give them with --options options.json, or \
                 --preset tfhub-elmo-2 for the original ELMo's settings",
                index.display()
            )));
        }
    };

    let expected = expected_tensors(&options);
    let mut used: HashSet<&str> = HashSet::new();
    let mut out: Vec<NamedTensor> = Vec::with_capacity(expected.len() + 2);
    for (name, shape) in expected {
        let ck = checkpoint_name(&name);
        let v = vars.get(&ck).ok_or_else(|| {
            Error::tensor(
                index,
                format!("{prefix}{ck}"),
                format!("missing from the checkpoint (the options need it with shape {shape:?})"),
            )
        })?;
        if v.shape != shape {
            return Err(Error::tensor(
                index,
                &v.name,
                format!("shape {:?} does not match the options, which need {shape:?}", v.shape),
            ));
        }
        used.insert(v.name.as_str());
        let data = vars.read(v)?;
        out.push((name, shape, data));
    }
    for (short, v) in &vars.by_name {
        if is_elmo_weight(short) && !used.contains(v.name.as_str()) {
            return Err(Error::tensor(
                index,
                &v.name,
                "not used by the options: the checkpoint holds a model of another structure \
                 (filters, highway layers or LSTM layers differ)",
            ));
        }
    }
    let k = options.n_output_layers();
    if let Some(v) = vars.get("aggregation/weights") {
        if v.shape != [k] {
            return Err(Error::tensor(
                index,
                &v.name,
                format!("shape {:?}: expected [{k}], one weight per biLM layer", v.shape),
            ));
        }
        out.push(("aggregation/weights".into(), vec![k], vars.read(v)?));
    }
    if let Some(v) = vars.get("aggregation/scaling") {
        if !(v.shape.is_empty() || v.shape == [1]) {
            return Err(Error::tensor(
                index,
                &v.name,
                format!("shape {:?}: expected a scalar or [1]", v.shape),
            ));
        }
        out.push(("aggregation/scaling".into(), vec![1], vars.read(v)?));
    }
    Ok((options, out))
}

/// `elmo convert` for TensorFlow checkpoints: opens the checkpoint at `path`
/// (see [`open_checkpoint`]), maps it with [`elmo_from_checkpoint`] (options
/// from the `options.json` file `options` if given, else inferred with
/// `preset`) and writes the model file `out`.
pub fn convert_tf_checkpoint(path: &Path, options: Option<&Path>, preset: Option<&str>, out: &Path) -> Result<()> {
    convert_tf_checkpoint_with(path, options, preset, out, crate::io::convert::WeightDtype::F32)
}

/// [`convert_tf_checkpoint`] with a choice of weight dtype for the LSTM matrices.
pub fn convert_tf_checkpoint_with(
    path: &Path,
    options: Option<&Path>,
    preset: Option<&str>,
    out: &Path,
    dtype: crate::io::convert::WeightDtype,
) -> Result<()> {
    let options = options.map(Options::from_file).transpose()?;
    let ckpt = open_checkpoint(path)?;
    let (options, tensors) = elmo_from_checkpoint(&ckpt, options, preset)?;
    crate::io::convert::write_converted(out, &options, &tensors, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut p = 0;
        assert_eq!(varint(&[0x00], &mut p), Some(0));
        p = 0;
        assert_eq!(varint(&[0x96, 0x01], &mut p), Some(150));
        assert_eq!(p, 2);
        p = 0;
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(varint(&max, &mut p), Some(u64::MAX));
        // Overflowing the 64 bits, too long, truncated.
        p = 0;
        assert_eq!(
            varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], &mut p),
            None
        );
        p = 0;
        assert_eq!(varint(&[0x80; 11], &mut p), None);
        p = 0;
        assert_eq!(varint(&[0x80, 0x80], &mut p), None);
        p = 0;
        assert_eq!(varint(&[], &mut p), None);
        // 32-bit varints: at most 5 bytes and 32 bits.
        p = 0;
        assert_eq!(varint32(&[0xff, 0xff, 0xff, 0xff, 0x0f], &mut p), Some(u32::MAX));
        p = 0;
        assert_eq!(varint32(&[0xff, 0xff, 0xff, 0xff, 0x1f], &mut p), None);
        p = 0;
        assert_eq!(varint32(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], &mut p), None);
    }

    #[test]
    fn crc32c_known_values() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa); // RFC 3720 B.4
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for split in [0, 1, 7, 8, 9, 500, 1000] {
            assert_eq!(crc32c_extend(crc32c(&data[..split]), &data[split..]), crc32c(&data));
        }
        // Byte at a time equals slice-by-8.
        let slow = data.iter().fold(0, |c, &b| crc32c_extend(c, &[b]));
        assert_eq!(slow, crc32c(&data));
    }

    #[test]
    fn crc_masking() {
        let c = crc32c(b"foo");
        assert_ne!(mask_crc(c), c);
        assert_ne!(mask_crc(mask_crc(c)), c);
        assert_eq!(unmask_crc(mask_crc(c)), c);
        assert_eq!(unmask_crc(unmask_crc(mask_crc(mask_crc(c)))), c);
        assert_eq!(mask_crc(0), 0xa282_ead8);
        assert_eq!(mask_crc(0x8000), 0xa282_ead9);
        assert_eq!(mask_crc(1), 0xa284_ead8);
    }

    #[test]
    fn snappy() {
        // Literal "abc", then a 1-byte-offset copy of 4 bytes at offset 3
        // (overlapping): "abcabca".
        let s = [7, 0b0000_1000, b'a', b'b', b'c', 0b0000_0001, 3];
        assert_eq!(snappy_decompress(&s).unwrap(), b"abcabca");
        // 2-byte offset copy of 10 bytes at offset 1 (a run).
        let s = [11, 0, b'x', (9 << 2) | 2, 1, 0];
        assert_eq!(snappy_decompress(&s).unwrap(), b"xxxxxxxxxxx");
        // 4-byte offset copy.
        let s = [4, (1 << 2), b'h', b'i', (1 << 2) | 3, 2, 0, 0, 0];
        assert_eq!(snappy_decompress(&s).unwrap(), b"hihi");
        // A long literal with a one-byte length (60 + 1 bytes of length).
        let mut s = vec![100, 60 << 2, 99];
        s.extend(std::iter::repeat_n(b'z', 100));
        assert_eq!(snappy_decompress(&s).unwrap(), vec![b'z'; 100]);
        // Empty.
        assert_eq!(snappy_decompress(&[0]).unwrap(), b"");
        // Errors: offset 0, offset before the start, too long, too short,
        // truncated literal, absurd declared length.
        assert!(snappy_decompress(&[4, 0, b'a', 0b0000_0001, 0]).is_err());
        assert!(snappy_decompress(&[5, 0, b'a', 0b0000_0001, 2]).is_err());
        assert!(snappy_decompress(&[1, 4, b'a', b'b']).is_err());
        assert!(snappy_decompress(&[3, 4, b'a', b'b']).is_err());
        assert!(snappy_decompress(&[3, 8, b'a', b'b']).is_err());
        assert!(snappy_decompress(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0]).is_err());
        assert!(snappy_decompress(&[]).is_err());
    }

    #[test]
    fn half_and_bfloat16() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3800, 0.5),
            (0x7bff, 65504.0),
            (0x0400, 6.103_515_6e-5),
            (0x0001, 5.960_464_5e-8),
            (0x03ff, 6.097_555e-5),
            (0x8001, -5.960_464_5e-8),
            (0x3555, 0.333_251_95),
        ] {
            assert_eq!(f16_to_f32(h), f, "{h:#06x}");
        }
        assert_eq!(f16_to_f32(0x0000).to_bits(), 0);
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert!(f16_to_f32(0x7c01).is_nan());
        // Strictly increasing over all positive finite halves.
        let mut prev = -1.0f32;
        for h in 0..0x7c00u16 {
            let v = f16_to_f32(h);
            assert!(v > prev, "{h:#06x}");
            prev = v;
        }
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
        assert_eq!(bf16_to_f32(0x3eaa), f32::from_bits(0x3eaa_0000));
        assert_eq!(bf16_to_f32(0x7f80), f32::INFINITY);
    }

    #[test]
    fn blocks_with_shared_prefixes() {
        // "apple" -> "1", "apply" (shares 4) -> "22", "b" -> "" ; restarts [0].
        let mut b = vec![0, 5, 1];
        b.extend_from_slice(b"apple1");
        b.extend_from_slice(&[4, 1, 2]);
        b.extend_from_slice(b"y22");
        b.extend_from_slice(&[0, 1, 0]);
        b.extend_from_slice(b"b");
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        let e = block_entries(&b).unwrap();
        let got: Vec<(&[u8], &[u8])> = e.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
        assert_eq!(got, vec![(&b"apple"[..], &b"1"[..]), (b"apply", b"22"), (b"b", b"")]);
        // Shared prefix longer than the previous key.
        let mut bad = vec![3, 1, 0, b'x'];
        bad.extend_from_slice(&0u32.to_le_bytes());
        bad.extend_from_slice(&1u32.to_le_bytes());
        assert!(block_entries(&bad).unwrap_err().contains("shares"));
        // A huge value length is refused, not allocated.
        let mut bad = vec![0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, b'x'];
        bad.extend_from_slice(&0u32.to_le_bytes());
        bad.extend_from_slice(&1u32.to_le_bytes());
        assert!(block_entries(&bad).unwrap_err().contains("past the end"));
        // Too many restart points.
        assert!(block_entries(&[0, 0, 0, 0, 9, 0, 0, 0]).is_err());
        assert!(block_entries(&[0, 0]).is_err());
    }

    #[test]
    fn bundle_entry_proto() {
        // dtype 1, shape [2, 3], shard 0, offset 300, size 24, crc 0xdeadbeef, 2 slices.
        let mut e = vec![0x08, 1, 0x12, 8, 0x12, 2, 0x08, 2, 0x12, 2, 0x08, 3];
        e.extend_from_slice(&[0x20, 0xac, 0x02, 0x28, 24, 0x35]);
        e.extend_from_slice(&0xdead_beefu32.to_le_bytes());
        e.extend_from_slice(&[0x3a, 0, 0x3a, 0]);
        let v = parse_entry("x", &e).unwrap();
        assert_eq!(v.dtype, DType::Float32);
        assert_eq!(v.shape, vec![2, 3]);
        assert_eq!((v.offset, v.size, v.crc32c, v.slices), (300, 24, 0xdead_beef, 2));
        assert!(v.is_partitioned());
        // Unknown fields are skipped; a length past the end is an error.
        assert!(parse_entry("x", &[0x50, 7, 0x08, 19]).is_ok_and(|v| v.dtype == DType::Float16));
        assert!(parse_entry("x", &[0x12, 0x7f, 0]).is_err());
        assert!(parse_entry("x", &[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        // Negative dimension, wrong wire type.
        let neg = [
            0x12, 13, 0x12, 11, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(parse_entry("x", &neg).unwrap_err().contains("not a size"));
        assert!(parse_entry("x", &[0x0a, 0]).is_err());
        assert_eq!(DType::from_tf(14).to_string(), "bfloat16");
        assert_eq!(DType::from_tf(7).to_string(), "string");
        assert_eq!(DType::from_tf(999).to_string(), "dtype 999");
    }

    #[test]
    fn names() {
        assert_eq!(checkpoint_name("char_embed"), "bilm/char_embed");
        assert_eq!(checkpoint_name("CNN_high_1/W_carry"), "bilm/CNN_high_1/W_carry");
        assert_eq!(
            checkpoint_name(&crate::io::model_file::lstm_name(1, 0, "W_P_0")),
            "bilm/RNN_1/RNN/MultiRNNCell/Cell0/rnn/lstm_cell/projection/kernel"
        );
        assert_eq!(
            checkpoint_name(&crate::io::model_file::lstm_name(0, 1, "B")),
            "bilm/RNN_0/RNN/MultiRNNCell/Cell1/rnn/lstm_cell/bias"
        );
        assert!(is_elmo_weight("bilm/CNN/W_cnn_12"));
        assert!(is_elmo_weight("bilm/CNN_high_3/b_transform"));
        assert!(is_elmo_weight(
            "bilm/RNN_1/RNN/MultiRNNCell/Cell2/rnn/lstm_cell/projection/kernel"
        ));
        assert!(!is_elmo_weight("bilm/Variable_3"));
        assert!(!is_elmo_weight("bilm/CNN/W_cnn_0/Adagrad"));
        assert!(!is_elmo_weight("aggregation/weights"));
        assert_eq!(unquote(r#""a\"b\\c\101""#).as_deref(), Some("a\"b\\cA"));
        assert_eq!(unquote("'x/y'").as_deref(), Some("x/y"));
        assert_eq!(unquote("\"open"), None);
    }
}
