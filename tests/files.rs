//! Converter and loader on bad files: each gives an error that names the file
//! and, where there is one, the tensor; none panics.

mod common;
use common::*;
use elmo::{ElmoModel, Error};
use std::path::Path;

fn convert(options: &Path, hdf5: &Path, dir: &Path) -> Result<ElmoModel, Error> {
    let out = dir.join("m.safetensors");
    elmo::convert::convert_hdf5(options, hdf5, &out, &mut |_, _, _| {})?;
    ElmoModel::load(&out)
}

#[test]
fn converter_names_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = fixture("bilm-tf-fixture");
    // Options of another model: the first dataset with the wrong shape is named.
    let e = convert(
        &fixture("small/options.json"),
        &tiny.join("lm_weights.hdf5"),
        dir.path(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("lm_weights.hdf5") && msg.contains("char_embed") && msg.contains("shape"),
        "{msg}"
    );
    // A dataset the options need but the file lacks: three layers on a two-layer file.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("options.json")).unwrap()).unwrap();
    v["lstm"]["n_layers"] = 3.into();
    let opts = dir.path().join("o3.json");
    std::fs::write(&opts, v.to_string()).unwrap();
    let msg = convert(&opts, &tiny.join("lm_weights.hdf5"), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("RNN_0/RNN/MultiRNNCell/Cell2/LSTMCell/W_0") && msg.contains("missing"),
        "{msg}"
    );
    // Not HDF5 at all, and a truncated HDF5 file.
    let msg = convert(&tiny.join("options.json"), &tiny.join("options.json"), dir.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("HDF5"), "{msg}");
    let bytes = std::fs::read(tiny.join("lm_weights.hdf5")).unwrap();
    for cut in [100, bytes.len() / 3, bytes.len() - 1000] {
        let t = dir.path().join("cut.hdf5");
        std::fs::write(&t, &bytes[..cut]).unwrap();
        assert!(
            convert(&tiny.join("options.json"), &t, dir.path()).is_err(),
            "cut at {cut}"
        );
    }
    // Missing files.
    let msg = convert(&dir.path().join("nope.json"), &tiny.join("lm_weights.hdf5"), dir.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nope.json"), "{msg}");
}

#[test]
fn converted_file_holds_options_version_and_padding_row() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let f = model.file();
    let embed = f.tensor("char_embed").unwrap();
    assert_eq!(embed.shape(), &[262, 4]);
    assert!(embed.data()[..4].iter().all(|&x| x == 0.0));
    assert!(embed.is_shared(), "aligned weights are used in place from the mapping");
    let header_len = u64::from_le_bytes(std::fs::read(&f.path).unwrap()[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&f.path).unwrap()[8..8 + header_len]).unwrap();
    assert_eq!(header["__metadata__"]["format_version"], "2");
    // Matrices are stored strip-packed: (ceil(n / 16), k, 16).
    let w0 = &header["RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0"]["shape"];
    let (p, u) = (model.options().lstm.projection_dim, model.options().lstm.dim);
    assert_eq!(w0, &serde_json::json!([(4 * u).div_ceil(16), 2 * p, 16]));
    assert_eq!(header["__metadata__"]["format"], elmo::model_file::FORMAT_NAME);
    let opts = elmo::Options::from_json(header["__metadata__"]["options"].as_str().unwrap()).unwrap();
    assert_eq!(&opts, model.options());
}

/// A file written by format version 1 (row-major matrices; the bilm-tf test
/// model as the first release converted it) still loads: its matrices are
/// packed at load, and it gives the same values and outputs, bitwise, as
/// the same weights converted now.
#[test]
fn format_version_1_files_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let old = elmo::ElmoModel::load(&fixture("format_v1/bilm-tf-test.safetensors")).unwrap();
    assert_eq!(old.file().version, 1);
    let out = dir.path().join("v2.safetensors");
    let src = fixture("bilm-tf-fixture");
    elmo::convert::convert_hdf5(
        &src.join("options.json"),
        &src.join("lm_weights.hdf5"),
        &out,
        &mut |_, _, _| {},
    )
    .unwrap();
    let new = elmo::ElmoModel::load(&out).unwrap();
    assert_eq!(new.file().version, elmo::model_file::FORMAT_VERSION);
    for (name, _) in elmo::model_file::expected_tensors(new.options()) {
        assert_eq!(
            old.file().values(&name).unwrap(),
            new.file().values(&name).unwrap(),
            "{name}"
        );
        let stored = |m: &elmo::ElmoModel| m.file().tensor(&name).unwrap().shape().to_vec();
        assert_eq!(stored(&old), stored(&new), "{name}");
    }
    let sentences = [vec!["The", "cat", "sat"], vec!["Hello", "world", "!", "again"]];
    assert_eq!(old.embed(&sentences).unwrap(), new.embed(&sentences).unwrap());
}

/// Rewrites the JSON header of a model file.
fn with_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut h);
    let mut hb = h.to_string().into_bytes();
    while !hb.len().is_multiple_of(8) {
        hb.push(b' ');
    }
    let mut out = (hb.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&hb);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn loader_refuses_bad_model_files() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let good = std::fs::read(&model.file().path).unwrap();
    let load = |bytes: &[u8]| {
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, bytes).unwrap();
        ElmoModel::load(&p).map(|_| ()).unwrap_err().to_string()
    };
    // Truncated anywhere: header, data.
    for cut in [0, 5, 100, good.len() / 2, good.len() - 4] {
        let msg = load(&good[..cut]);
        assert!(msg.contains("bad.safetensors"), "cut {cut}: {msg}");
    }
    let msg = load(&good[..good.len() - 4]);
    assert!(msg.contains("tensor '") && msg.contains("truncated"), "{msg}");
    // Not safetensors: an HDF5 file, text.
    let msg = load(&std::fs::read(fixture("bilm-tf-fixture/lm_weights.hdf5")).unwrap());
    assert!(msg.contains("not a safetensors"), "{msg}");
    assert!(load(b"{\"hello\": 1}").contains("bad.safetensors"));
    // Wrong format version, wrong format name, missing options.
    let msg = load(&with_header(&good, |h| {
        h["__metadata__"]["format_version"] = "99".into()
    }));
    assert!(msg.contains("format version 99"), "{msg}");
    let msg = load(&with_header(&good, |h| h["__metadata__"]["format"] = "other".into()));
    assert!(msg.contains("not a model converted"), "{msg}");
    // One digit of the options changed (a clip value: still valid options,
    // another model): the checksum written beside them says so.
    let msg = load(&with_header(&good, |h| {
        let o = h["__metadata__"]["options"].as_str().unwrap().to_string();
        let changed = o.replacen("\"cell_clip\":3", "\"cell_clip\":7", 1);
        assert_ne!(o, changed, "{o}");
        h["__metadata__"]["options"] = changed.into();
    }));
    assert!(msg.contains("the options in the metadata are damaged"), "{msg}");
    // A file without the checksum (written before it existed) still loads.
    let old = with_header(&good, |h| {
        h["__metadata__"].as_object_mut().unwrap().remove("metadata_crc32");
    });
    let p = dir.path().join("old.safetensors");
    std::fs::write(&p, old).unwrap();
    ElmoModel::load(&p).unwrap();
    // A missing tensor, a wrong shape, a wrong dtype.
    let name = "RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_P_0";
    let msg = load(&with_header(&good, |h| {
        h.as_object_mut().unwrap().remove(name);
    }));
    assert!(msg.contains(name) && msg.contains("missing"), "{msg}");
    let msg = load(&with_header(&good, |h| {
        h["CNN_proj/b_proj"]["shape"] = serde_json::json!([4, 4])
    }));
    assert!(
        msg.contains("CNN_proj/b_proj") && msg.contains("does not match the options"),
        "{msg}"
    );
    let msg = load(&with_header(&good, |h| h["CNN_proj/b_proj"]["dtype"] = "F16".into()));
    assert!(msg.contains("CNN_proj/b_proj") && msg.contains("F16"), "{msg}");
    let msg = load(&with_header(&good, |h| {
        h["CNN_proj/b_proj"]["data_offsets"] = serde_json::json!([0, 99999999])
    }));
    assert!(msg.contains("CNN_proj/b_proj"), "{msg}");
    // A folder where the file should be.
    let msg = ElmoModel::load(dir.path()).map(|_| ()).unwrap_err().to_string();
    assert!(msg.contains("is a folder, not a model file"), "{msg}");
    // Bit flips in the header never panic.
    for i in (8..200).step_by(7) {
        let mut b = good.clone();
        b[i] ^= 0x5a;
        let p = dir.path().join("flip.safetensors");
        std::fs::write(&p, &b).unwrap();
        let _ = ElmoModel::load(&p);
    }
}

#[test]
fn non_finite_weights_are_named_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let mut bytes = std::fs::read(&model.file().path).unwrap();
    // Overwrite the first value of CNN/b_cnn_2 with NaN, through the header's offsets.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let off = 8 + n + h["CNN/b_cnn_2"]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[off..off + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let p = dir.path().join("nan.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    let msg = ElmoModel::load(&p).unwrap_err().to_string();
    assert!(msg.contains("CNN/b_cnn_2") && msg.contains("NaN"), "{msg}");
    assert!(
        ElmoModel::load_unchecked(&p).is_ok(),
        "the unchecked fast path skips the scan"
    );
    // HDF5 with an infinity: the converter names the dataset.
    let e = elmo::convert::read_hdf5_weights_from_bytes(
        &elmo::Options::from_file(&fixture("bilm-tf-fixture/options.json")).unwrap(),
        b"not hdf5",
        std::path::Path::new("mem.hdf5"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("mem.hdf5"), "{e}");
}
