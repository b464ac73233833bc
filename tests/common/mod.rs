//! Shared helpers of the integration tests: fixtures, conversion, comparison.
#![allow(dead_code)]

pub mod reference;

use elmo::npz::{NpyArray, read_npz};
use elmo::{CharIds, ElmoModel};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// Converts options + HDF5 into a model file in `dir` and loads it.
pub fn convert_and_load(options: &Path, hdf5: &Path, dir: &Path) -> ElmoModel {
    let out = dir.join("model.safetensors");
    elmo::convert::convert_hdf5(options, hdf5, &out, &mut |_, _, _| {}).expect("convert");
    ElmoModel::load(&out).expect("load")
}

/// bilm-tf's tiny test model, converted.
pub fn tiny_model(dir: &Path) -> ElmoModel {
    let f = fixture("bilm-tf-fixture");
    convert_and_load(&f.join("options.json"), &f.join("lm_weights.hdf5"), dir)
}

/// The random `small` model (skip connections, clipping that fires), converted.
pub fn small_model(dir: &Path) -> ElmoModel {
    let f = fixture("small");
    convert_and_load(&f.join("options.json"), &f.join("lm_weights.hdf5"), dir)
}

/// All `<prefix>_NN.npz` files of a folder, in order.
pub fn golden_files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("fixture dir")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(".npz")
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {prefix}*.npz in {}", dir.display());
    v
}

/// A golden file's arrays.
pub struct Golden {
    pub name: String,
    pub arrays: BTreeMap<String, NpyArray>,
}

impl Golden {
    pub fn load(path: &Path) -> Self {
        Golden {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            arrays: read_npz(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }
    pub fn get(&self, k: &str) -> &NpyArray {
        self.arrays
            .get(k)
            .unwrap_or_else(|| panic!("{}: no array {k}", self.name))
    }
    pub fn f32(&self, k: &str) -> (Vec<usize>, Vec<f32>) {
        let a = self.get(k);
        (a.shape.clone(), a.to_f32().unwrap())
    }
    pub fn tokens(&self) -> Vec<Vec<String>> {
        let bytes: Vec<u8> = self
            .get("tokens_json")
            .to_i64()
            .unwrap()
            .iter()
            .map(|&b| b as u8)
            .collect();
        serde_json::from_slice(&bytes).expect("tokens_json")
    }
    pub fn char_ids(&self) -> CharIds {
        let a = self.get("char_ids");
        let ids: Vec<u16> = a.to_i64().unwrap().iter().map(|&x| x as u16).collect();
        CharIds::from_ids(a.shape[0], a.shape[1], a.shape[2], ids).expect("golden char ids")
    }
}

/// Max abs error of `got` vs `want` after checking `|got - want| <=
/// atol + rtol |want|` everywhere; panics with the worst element otherwise.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} values vs {} expected",
        got.len(),
        want.len()
    );
    let mut max_abs = 0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(
            d <= atol + rtol * w.abs(),
            "{what}: element {i}: got {g}, expected {w} (diff {d:e})"
        );
        max_abs = max_abs.max(d);
    }
    max_abs
}

/// The standard tolerance of the project.
pub const ATOL: f32 = 1e-5;
/// The standard relative tolerance.
pub const RTOL: f32 = 1e-4;

/// Deterministic pseudo-random values in `[-scale, scale)`.
pub fn random_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Writes a model with random weights for `options_json` into `dir` and loads it.
pub fn random_model(options_json: &str, dir: &Path, seed: u64) -> ElmoModel {
    let options = elmo::Options::from_json(options_json).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = elmo::model_file::expected_tensors(&options)
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            // Scale by fan-in so activations stay in a range where the
            // non-linearities and clips all matter.
            let fan_in = if shape.len() >= 2 {
                shape[..shape.len() - 1].iter().product::<usize>()
            } else {
                4
            };
            let mut v = random_values(n, seed * 1000 + i as u64, 2.0 / (fan_in as f32).sqrt());
            if name == "char_embed" {
                v[..shape[1]].fill(0.0);
            }
            (name, shape, v)
        })
        .collect();
    let path = dir.join(format!("random-{seed}.safetensors"));
    elmo::model_file::write_model(&path, &options, &tensors).unwrap();
    ElmoModel::load(&path).unwrap()
}

/// idx2word over the batch's words with gaps in the ids (id = 3 * rank + 5),
/// and the post-padded id rows of the batch.
pub fn vocab_and_ids(batch: &[Vec<String>]) -> (std::collections::HashMap<i64, String>, elmo::layer::TokenIds) {
    let mut words: Vec<&String> = batch.iter().flatten().collect();
    words.sort();
    words.dedup();
    let idx2word: std::collections::HashMap<i64, String> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (3 * i as i64 + 5, (*w).clone()))
        .collect();
    let word2idx: std::collections::HashMap<&String, i64> = idx2word.iter().map(|(k, v)| (v, *k)).collect();
    let t = batch.iter().map(Vec::len).max().unwrap_or(0);
    let rows: Vec<Vec<i64>> = batch
        .iter()
        .map(|s| {
            let mut r: Vec<i64> = s.iter().map(|w| word2idx[w]).collect();
            r.resize(t, 0);
            r
        })
        .collect();
    (idx2word, elmo::layer::TokenIds::from_rows(&rows).unwrap())
}

/// A CLI run's standard error.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run: non-zero exit and exactly one line on stderr, holding
/// `needle`, and no panic.
pub fn assert_one_line_error(o: &std::process::Output, needle: &str) {
    assert!(!o.status.success(), "expected failure, stderr: {}", stderr(o));
    let e = stderr(o);
    assert_eq!(e.trim_end().lines().count(), 1, "one line expected: {e}");
    assert!(e.contains(needle), "{needle:?} not in {e}");
    assert!(!e.contains("panicked"), "{e}");
}
