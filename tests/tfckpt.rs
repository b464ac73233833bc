//! TensorFlow V2 checkpoints: reading the TF Hub-named checkpoint of the
//! `small` model, converting it (bitwise equal to the HDF5 conversion,
//! TensorFlow's goldens reproduced through it), the path forms accepted, and
//! corrupted or foreign checkpoints (errors that name the file and the
//! variable, never a panic). Bundles with other layouts (several blocks,
//! Snappy, other dtypes, partitioned variables) are written by a small writer
//! below.

mod common;
use common::*;
use elmo::layer::{ElmoEmbedding, OutputMode};
use elmo::model_file::{ModelFile, NamedTensor};
use elmo::tfckpt::{Checkpoint, DType, convert_tf_checkpoint, crc32c, elmo_from_checkpoint, mask_crc, open_checkpoint};
use elmo::{ElmoModel, Error, Options};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SHARD: &str = "variables.data-00000-of-00001";

fn hub() -> PathBuf {
    fixture("small/hub_checkpoint")
}

fn small_options() -> Options {
    Options::from_file(&fixture("small/options.json")).unwrap()
}

fn hdf5_tensors() -> Vec<NamedTensor> {
    elmo::convert::read_hdf5_weights(&small_options(), &fixture("small/lm_weights.hdf5"), &mut |_, _, _| {}).unwrap()
}

/// Copies the hub checkpoint's two files into `dir/variables/` (writable).
fn copy_hub(dir: &Path) -> PathBuf {
    let vars = dir.join("variables");
    std::fs::create_dir_all(&vars).unwrap();
    for f in ["variables.index", SHARD] {
        let bytes = std::fs::read(hub().join("variables").join(f)).unwrap();
        std::fs::write(vars.join(f), bytes).unwrap();
    }
    vars.join("variables")
}

fn err_text(r: elmo::Result<impl std::fmt::Debug>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Tensors must be equal bit for bit.
fn assert_same_tensors(got: &[NamedTensor], want: &[NamedTensor]) {
    assert_eq!(got.len(), want.len());
    for ((gn, gs, gd), (wn, ws, wd)) in got.iter().zip(want) {
        assert_eq!((gn, gs), (wn, ws));
        let gb: Vec<u32> = gd.iter().map(|x| x.to_bits()).collect();
        let wb: Vec<u32> = wd.iter().map(|x| x.to_bits()).collect();
        assert!(gb == wb, "{gn}: values differ");
    }
}

// ---------------------------------------------------------------------------
// A minimal V2 bundle writer (LevelDB table + one data shard).

struct Var {
    name: String,
    dtype: i64,
    shape: Vec<usize>,
    bytes: Vec<u8>,
    slices: usize,
    /// Written as the entry's value instead of a proper BundleEntryProto.
    raw_entry: Option<Vec<u8>>,
    /// Written as the entry's size instead of the length of `bytes`.
    size: Option<u64>,
}

fn var(name: &str, dtype: i64, shape: &[usize], bytes: Vec<u8>) -> Var {
    Var {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        bytes,
        slices: 0,
        raw_entry: None,
        size: None,
    }
}

fn f32_var(name: &str, shape: &[usize], data: &[f32]) -> Var {
    var(name, 1, shape, data.iter().flat_map(|x| x.to_le_bytes()).collect())
}

#[derive(Clone, Copy)]
struct Layout {
    entries_per_block: usize,
    restart_interval: usize,
    snappy: bool,
}

const PLAIN: Layout = Layout {
    entries_per_block: 1 << 20,
    restart_interval: 16,
    snappy: false,
};

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, num: u64, v: u64) {
    put_varint(out, num << 3);
    put_varint(out, v);
}

fn field_bytes(out: &mut Vec<u8>, num: u64, b: &[u8]) {
    put_varint(out, (num << 3) | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn entry_proto(v: &Var, offset: u64) -> Vec<u8> {
    let mut e = Vec::new();
    field_varint(&mut e, 1, v.dtype as u64);
    let mut shape = Vec::new();
    for &d in &v.shape {
        let mut dim = Vec::new();
        field_varint(&mut dim, 1, d as u64);
        field_bytes(&mut shape, 2, &dim);
    }
    field_bytes(&mut e, 2, &shape);
    if offset > 0 {
        field_varint(&mut e, 4, offset);
    }
    field_varint(&mut e, 5, v.size.unwrap_or(v.bytes.len() as u64));
    put_varint(&mut e, (6 << 3) | 5);
    e.extend_from_slice(&mask_crc(crc32c(&v.bytes)).to_le_bytes());
    for _ in 0..v.slices {
        field_bytes(&mut e, 7, &[]);
    }
    e
}

/// A block of prefix-compressed entries with restart points.
fn block(entries: &[(Vec<u8>, Vec<u8>)], restart_interval: usize) -> Vec<u8> {
    let mut b = Vec::new();
    let mut restarts = vec![0u32];
    let mut prev: &[u8] = &[];
    for (i, (k, v)) in entries.iter().enumerate() {
        let shared = if i % restart_interval == 0 {
            if i > 0 {
                restarts.push(b.len() as u32);
            }
            0
        } else {
            prev.iter().zip(k).take_while(|(a, b)| a == b).count()
        };
        put_varint(&mut b, shared as u64);
        put_varint(&mut b, (k.len() - shared) as u64);
        put_varint(&mut b, v.len() as u64);
        b.extend_from_slice(&k[shared..]);
        b.extend_from_slice(v);
        prev = k;
    }
    for r in &restarts {
        b.extend_from_slice(&r.to_le_bytes());
    }
    b.extend_from_slice(&(restarts.len() as u32).to_le_bytes());
    b
}

/// Snappy with literals only (valid, if not small).
fn snappy_literals(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, data.len() as u64);
    for chunk in data.chunks(1000) {
        if chunk.len() <= 60 {
            out.push(((chunk.len() - 1) as u8) << 2);
        } else {
            out.push(61 << 2);
            out.extend_from_slice(&((chunk.len() - 1) as u16).to_le_bytes());
        }
        out.extend_from_slice(chunk);
    }
    out
}

/// Appends a block with its trailer; returns its handle, encoded.
fn put_block(file: &mut Vec<u8>, contents: &[u8], snappy: bool) -> Vec<u8> {
    let (body, kind) = if snappy {
        (snappy_literals(contents), 1u8)
    } else {
        (contents.to_vec(), 0u8)
    };
    let mut h = Vec::new();
    put_varint(&mut h, file.len() as u64);
    put_varint(&mut h, body.len() as u64);
    file.extend_from_slice(&body);
    file.push(kind);
    let mut crc_input = body.clone();
    crc_input.push(kind);
    file.extend_from_slice(&mask_crc(crc32c(&crc_input)).to_le_bytes());
    h
}

/// Writes `prefix.index` and `prefix.data-00000-of-00001`.
fn write_bundle(prefix: &Path, vars: &[Var], layout: Layout) {
    let mut data = Vec::new();
    let mut header = Vec::new();
    field_varint(&mut header, 1, 1); // num_shards
    let mut version = Vec::new();
    field_varint(&mut version, 1, 1);
    field_bytes(&mut header, 3, &version);
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = vec![(Vec::new(), header)];
    for v in vars {
        let offset = data.len() as u64;
        data.extend_from_slice(&v.bytes);
        let value = v.raw_entry.clone().unwrap_or_else(|| entry_proto(v, offset));
        entries.push((v.name.as_bytes().to_vec(), value));
    }
    entries.sort();
    let mut file = Vec::new();
    let mut index = Vec::new();
    for chunk in entries.chunks(layout.entries_per_block) {
        let h = put_block(&mut file, &block(chunk, layout.restart_interval), layout.snappy);
        let last = chunk.last().map(|e| e.0.clone()).unwrap_or_default();
        index.push((last, h));
    }
    let mut footer = put_block(&mut file, &block(&[], 1), false);
    footer.extend(put_block(&mut file, &block(&index, 1), false));
    footer.resize(40, 0);
    footer.extend_from_slice(&0xdb47_7524_8b80_fb57u64.to_le_bytes());
    file.extend_from_slice(&footer);
    let with = |s: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(s);
        PathBuf::from(p)
    };
    std::fs::write(with(".index"), file).unwrap();
    std::fs::write(with(".data-00000-of-00001"), data).unwrap();
}

/// Every variable of `ckpt` as float32, passed through `edit` (which may
/// rename, reshape or drop it).
fn rewrite(ckpt: &Checkpoint, edit: impl Fn(&str, &[usize]) -> Option<(String, Vec<usize>)>) -> Vec<Var> {
    ckpt.variables()
        .iter()
        .filter_map(|v| {
            let (name, shape) = edit(&v.name, &v.shape)?;
            let mut data = ckpt.read_f32(&v.name).unwrap();
            data.truncate(shape.iter().product());
            Some(f32_var(&name, &shape, &data))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The hub checkpoint.

#[test]
fn lists_the_hub_checkpoint_like_variables_txt() {
    let ckpt = open_checkpoint(&hub()).unwrap();
    assert_eq!(ckpt.num_shards(), 1);
    assert_eq!(ckpt.shard_path(0), hub().join("variables").join(SHARD));
    let text = std::fs::read_to_string(hub().join("variables.txt")).unwrap();
    let want: Vec<(String, String, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect();
    let got: Vec<(String, String, String)> = ckpt
        .variables()
        .iter()
        .map(|v| {
            let dims: Vec<String> = v.shape.iter().map(|d| d.to_string()).collect();
            (v.name.clone(), format!("[{}]", dims.join(", ")), v.dtype.to_string())
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(ckpt.variables().len(), 39);
    let v = ckpt.variable("bilm/char_embed").unwrap();
    assert_eq!(
        (v.dtype, v.shape.clone(), v.is_partitioned()),
        (DType::Float32, vec![262, 16], false)
    );
    assert!(ckpt.variable("bilm/nope").is_none());
    assert_eq!(ckpt.read_f32("aggregation/weights").unwrap(), vec![0.3, -0.7, 1.1]);
    assert_eq!(ckpt.read_f32("aggregation/scaling").unwrap(), vec![0.8]);
    let e = err_text(ckpt.read_f32("bilm/nope"));
    assert!(e.contains("variables.index") && e.contains("bilm/nope"), "{e}");
}

#[test]
fn converts_bitwise_like_the_hdf5_file() {
    let ckpt = open_checkpoint(&hub()).unwrap();
    let want = hdf5_tensors();
    for (options, preset) in [(None, Some("tfhub-elmo-2")), (Some(small_options()), None)] {
        let (o, tensors) = elmo_from_checkpoint(&ckpt, options, preset).unwrap();
        assert_eq!(
            o,
            small_options(),
            "options inferred with the preset are the small model's"
        );
        assert_eq!(tensors.len(), want.len() + 2);
        assert_same_tensors(&tensors[..want.len()], &want);
        assert_eq!(
            tensors[want.len()..].to_vec(),
            vec![
                ("aggregation/weights".to_string(), vec![3], vec![0.3, -0.7, 1.1]),
                ("aggregation/scaling".to_string(), vec![1], vec![0.8]),
            ]
        );
    }
    // Through the file: the converted model holds the same tensors.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    convert_tf_checkpoint(&hub(), Some(&fixture("small/options.json")), None, &out).unwrap();
    let file = ModelFile::open(&out).unwrap();
    assert_eq!(file.options, small_options());
    for (name, shape, data) in &want {
        let t = file.tensor(name).unwrap();
        assert_eq!(
            t.shape(),
            elmo::model_file::stored_shape(name, shape).as_slice(),
            "{name}"
        );
        let values = file.values(name).unwrap();
        assert_eq!(values.len(), data.len(), "{name}");
        assert!(
            values.iter().zip(data).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}"
        );
    }
    assert_eq!(file.tensor("aggregation/scaling").unwrap().shape(), &[1]);
}

#[test]
fn converted_checkpoint_reproduces_the_goldens() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hub.safetensors");
    convert_tf_checkpoint(&hub(), None, Some("tfhub-elmo-2"), &out).unwrap();
    let model = Arc::new(ElmoModel::load(&out).unwrap());
    let (mut worst_lm, mut worst_elmo) = (0f32, 0f32);
    for f in golden_files(&fixture("small"), "stateless_batch_") {
        let g = Golden::load(&f);
        let lengths: Vec<usize> = g.get("lengths").to_i64().unwrap().iter().map(|&x| x as usize).collect();
        // lm_embeddings at real positions.
        let out = model.forward(&g.char_ids(), None).unwrap();
        let (_, want) = g.f32("lm_embeddings");
        let (mut got_real, mut want_real) = (Vec::new(), Vec::new());
        for (b, &len) in lengths.iter().enumerate() {
            for k in 0..out.n_layers {
                for t in 0..len {
                    let o = ((b * out.n_layers + k) * out.max_len + t) * out.dim;
                    got_real.extend_from_slice(out.vector(b, k, t));
                    want_real.extend_from_slice(&want[o..o + out.dim]);
                }
            }
        }
        worst_lm = worst_lm.max(assert_close(
            &format!("{} lm_embeddings", g.name),
            &got_real,
            &want_real,
            ATOL,
            RTOL,
        ));
        // elmo_custom from the checkpoint's aggregation values (the layer
        // takes them from the model file).
        let (idx2word, ids) = vocab_and_ids(&g.tokens());
        let layer = ElmoEmbedding::builder(model.clone(), idx2word, OutputMode::Elmo, false)
            .build()
            .unwrap();
        assert_eq!(layer.mixes()[0].weights.value().data(), &[0.3, -0.7, 1.1]);
        assert_eq!(layer.mixes()[0].gamma.value().data(), &[0.8]);
        let elmo = layer.call(&ids).unwrap();
        let [b, t] = ids.shape();
        let d = elmo.shape()[2];
        assert_eq!(elmo.shape(), &[b, t, d]);
        let (_, want) = g.f32("elmo_custom");
        for (bi, &len) in lengths.iter().enumerate() {
            for ti in 0..len {
                let o = (bi * t + ti) * d;
                worst_elmo = worst_elmo.max(assert_close(
                    &format!("{} elmo_custom", g.name),
                    &elmo.value().data()[o..o + d],
                    &want[o..o + d],
                    ATOL,
                    RTOL,
                ));
            }
        }
    }
    eprintln!("small via TF checkpoint: lm_embeddings max abs error {worst_lm:e}, elmo_custom {worst_elmo:e}");
}

#[test]
fn accepts_prefixes_files_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = copy_hub(dir.path());
    let vars = dir.path().join("variables");
    let n = |p: &Path| open_checkpoint(p).map(|c| (c.prefix().to_path_buf(), c.variables().len()));
    let want = Ok::<_, ()>((prefix.clone(), 39));
    for p in [
        dir.path().to_path_buf(),
        vars.clone(),
        prefix.clone(),
        vars.join("variables.index"),
        vars.join(SHARD),
    ] {
        assert_eq!(n(&p).map_err(|_| ()), want, "{}", p.display());
    }
    // A `checkpoint` state file, relative, absolute, or absolute from
    // another machine (found beside the state file).
    let state = vars.join("checkpoint");
    for line in [
        "model_checkpoint_path: \"variables\"".to_string(),
        format!("model_checkpoint_path: \"{}\"", prefix.display()),
        "model_checkpoint_path: \"/elsewhere/run7/variables\"\nall_model_checkpoint_paths: \"x\"".to_string(),
    ] {
        std::fs::write(&state, line).unwrap();
        assert_eq!(n(&vars).map_err(|_| ()), want);
    }
    std::fs::write(&state, "model_checkpoint_path: \"model.ckpt-99\"").unwrap();
    let e = err_text(open_checkpoint(&vars));
    assert!(e.contains("model.ckpt-99") && e.contains("checkpoint"), "{e}");
    std::fs::write(&state, "nothing useful").unwrap();
    assert!(err_text(open_checkpoint(&vars)).contains("model_checkpoint_path"));
    // Nothing there.
    let empty = tempfile::tempdir().unwrap();
    assert!(err_text(open_checkpoint(empty.path())).contains("no TensorFlow checkpoint"));
    assert!(err_text(open_checkpoint(&empty.path().join("model.ckpt"))).contains("no TensorFlow checkpoint"));
}

// ---------------------------------------------------------------------------
// Settings and options.

#[test]
fn settings_come_from_options_or_a_preset() {
    let ckpt = open_checkpoint(&hub()).unwrap();
    let e = err_text(elmo_from_checkpoint(&ckpt, None, None));
    for w in [
        "cell_clip",
        "proj_clip",
        "use_skip_connections",
        "max_characters_per_token",
        "activation",
        "--options",
        "--preset tfhub-elmo-2",
    ] {
        assert!(e.contains(w), "{w} in: {e}");
    }
    assert!(err_text(elmo_from_checkpoint(&ckpt, None, Some("elmo-3"))).contains("unknown preset 'elmo-3'"));
    // Options win over the preset: different clips are used as given.
    let mut o = small_options();
    o.lstm.cell_clip = Some(5.0);
    o.lstm.use_skip_connections = false;
    let (got, _) = elmo_from_checkpoint(&ckpt, Some(o.clone()), Some("tfhub-elmo-2")).unwrap();
    assert_eq!(got, o);
}

#[test]
fn options_that_disagree_with_the_shapes_name_the_variable() {
    let ckpt = open_checkpoint(&hub()).unwrap();
    let edit = |f: &dyn Fn(&mut Options)| {
        let mut o = small_options();
        f(&mut o);
        err_text(elmo_from_checkpoint(&ckpt, Some(o), None))
    };
    let e = edit(&|o| o.lstm.projection_dim = 16);
    assert!(
        e.contains("variables.index") && e.contains("'bilm/CNN_proj/W_proj'") && e.contains("[176, 16]"),
        "{e}"
    );
    let e = edit(&|o| o.lstm.dim = 64);
    assert!(
        e.contains("'bilm/RNN_0/RNN/MultiRNNCell/Cell0/rnn/lstm_cell/kernel'"),
        "{e}"
    );
    let e = edit(&|o| o.char_cnn.n_highway = 3);
    assert!(e.contains("'bilm/CNN_high_2/W_carry'") && e.contains("missing"), "{e}");
    let e = edit(&|o| o.char_cnn.n_highway = 1);
    assert!(e.contains("'bilm/CNN_high_1/") && e.contains("not used"), "{e}");
    let e = edit(&|o| o.lstm.n_layers = 1);
    assert!(e.contains("Cell1") && e.contains("not used"), "{e}");
    let e = edit(&|o| o.char_cnn.filters[2].1 = 17);
    assert!(e.contains("'bilm/CNN/W_cnn_2'"), "{e}");
    // The convert entry point reports the same through an options file.
    let dir = tempfile::tempdir().unwrap();
    let mut o = small_options();
    o.lstm.projection_dim = 16;
    let opath = dir.path().join("options.json");
    std::fs::write(&opath, o.to_json()).unwrap();
    let out = dir.path().join("m.safetensors");
    let e = err_text(convert_tf_checkpoint(&hub(), Some(&opath), None, &out));
    assert!(e.contains("bilm/CNN_proj/W_proj"), "{e}");
    assert!(!out.exists());
}

#[test]
fn module_prefix_scaling_1_blocks_and_snappy() {
    // The same weights under `module/`, `aggregation/scaling` of shape (1,),
    // a non-ELMo extra and bilm-tf's LSTM state variable, written as many
    // small Snappy-compressed blocks with short restart intervals.
    let src = open_checkpoint(&hub()).unwrap();
    let mut vars = rewrite(&src, |n, s| {
        let shape = if n == "aggregation/scaling" {
            vec![1]
        } else {
            s.to_vec()
        };
        Some((format!("module/{n}"), shape))
    });
    vars.push(f32_var("bilm/Variable", &[4, 128], &[0.0; 512]));
    vars.push(f32_var("global_step_like", &[], &[7.0]));
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("model.ckpt-1");
    let layout = Layout {
        entries_per_block: 3,
        restart_interval: 2,
        snappy: true,
    };
    write_bundle(&prefix, &vars, layout);
    std::fs::write(
        dir.path().join("checkpoint"),
        "model_checkpoint_path: \"model.ckpt-1\"\n",
    )
    .unwrap();
    let ckpt = open_checkpoint(dir.path()).unwrap();
    assert_eq!(ckpt.variables().len(), 41);
    let (o, tensors) = elmo_from_checkpoint(&ckpt, None, Some("tfhub-elmo-2")).unwrap();
    assert_eq!(o, small_options());
    let (_, want) = elmo_from_checkpoint(&src, None, Some("tfhub-elmo-2")).unwrap();
    assert_same_tensors(&tensors, &want);
    // A shape the options cannot explain names the variable (with its prefix).
    let vars = rewrite(&src, |n, s| {
        let shape = if n == "bilm/CNN_high_1/b_carry" {
            vec![175]
        } else {
            s.to_vec()
        };
        Some((format!("module/{n}"), shape))
    });
    write_bundle(&prefix, &vars, PLAIN);
    let e = err_text(elmo_from_checkpoint(
        &open_checkpoint(&prefix).unwrap(),
        None,
        Some("tfhub-elmo-2"),
    ));
    assert!(
        e.contains("'module/bilm/CNN_high_1/b_carry'") && e.contains("[175]"),
        "{e}"
    );
    // Aggregation weights of the wrong length.
    let vars = rewrite(&src, |n, s| {
        let shape = if n == "aggregation/weights" {
            vec![2]
        } else {
            s.to_vec()
        };
        Some((n.to_string(), shape))
    });
    write_bundle(&prefix, &vars, PLAIN);
    let e = err_text(elmo_from_checkpoint(
        &open_checkpoint(&prefix).unwrap(),
        None,
        Some("tfhub-elmo-2"),
    ));
    assert!(e.contains("'aggregation/weights'"), "{e}");
    // A missing weight is named.
    let vars = rewrite(&src, |n, s| {
        (n != "bilm/CNN/b_cnn_3").then(|| (n.to_string(), s.to_vec()))
    });
    write_bundle(&prefix, &vars, PLAIN);
    let e = err_text(elmo_from_checkpoint(
        &open_checkpoint(&prefix).unwrap(),
        None,
        Some("tfhub-elmo-2"),
    ));
    assert!(e.contains("'bilm/CNN/b_cnn_3'") && e.contains("missing"), "{e}");
    // Without aggregation variables: just the model's tensors.
    let vars = rewrite(&src, |n, s| {
        (!n.starts_with("aggregation/")).then(|| (n.to_string(), s.to_vec()))
    });
    write_bundle(&prefix, &vars, PLAIN);
    let (_, t) = elmo_from_checkpoint(&open_checkpoint(&prefix).unwrap(), None, Some("tfhub-elmo-2")).unwrap();
    assert_same_tensors(&t, &hdf5_tensors());
}

// ---------------------------------------------------------------------------
// Dtypes and unsupported variables.

#[test]
fn reads_half_bfloat16_double_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("ck");
    let half: Vec<u8> = [0x3c00u16, 0xc000, 0x3555, 0x0001]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let bf16: Vec<u8> = [0x3f80u16, 0xc040].iter().flat_map(|h| h.to_le_bytes()).collect();
    let f64s: Vec<u8> = [0.1f64, -2.5].iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut sliced = f32_var("part", &[4], &[1.0; 4]);
    sliced.slices = 2;
    let mut huge = var("huge", 1, &[1 << 38], Vec::new());
    huge.size = Some(1 << 40);
    let lying = f32_var("lying", &[3], &[1.0; 4]);
    let mut garbage = f32_var("garbage", &[1], &[0.0]);
    garbage.raw_entry = Some(vec![0x12, 0x7f, 0x00]);
    let vars = vec![
        var("h", 19, &[2, 2], half),
        var("bf", 14, &[2], bf16),
        var("d", 2, &[2], f64s),
        var("i", 3, &[1], 5i32.to_le_bytes().to_vec()),
        sliced,
        huge,
        lying,
        // Not after `garbage`: its entry is unreadable and fails the open.
    ];
    write_bundle(&prefix, &vars, PLAIN);
    let ckpt = Checkpoint::open(&prefix).unwrap();
    assert_eq!(
        ckpt.read_f32("h").unwrap(),
        vec![1.0, -2.0, 0.333_251_95, 5.960_464_5e-8]
    );
    assert_eq!(ckpt.variable("h").unwrap().dtype.to_string(), "float16");
    assert_eq!(ckpt.read_f32("bf").unwrap(), vec![1.0, -3.0]);
    assert_eq!(ckpt.read_f32("d").unwrap(), vec![0.1, -2.5]);
    let e = err_text(ckpt.read_f32("i"));
    assert!(e.contains("'i'") && e.contains("int32"), "{e}");
    assert!(ckpt.variable("part").unwrap().is_partitioned());
    let e = err_text(ckpt.read_f32("part"));
    assert!(e.contains("'part'") && e.contains("partitioned"), "{e}");
    // A size far beyond the shard is refused before anything is allocated.
    let e = err_text(ckpt.read_f32("huge"));
    assert!(
        e.contains(SHARD.replace("variables", "ck").as_str()) && e.contains("'huge'"),
        "{e}"
    );
    let e = err_text(ckpt.read_f32("lying"));
    assert!(e.contains("'lying'") && e.contains("needs 12"), "{e}");
    // Not ELMo.
    let e = err_text(elmo_from_checkpoint(&ckpt, None, Some("tfhub-elmo-2")));
    assert!(
        e.contains("ck.index") && e.contains("not an ELMo checkpoint") && e.contains("bf, d, h"),
        "{e}"
    );
    // An entry that is not a BundleEntryProto, under a valid block checksum.
    write_bundle(&prefix, &[garbage], PLAIN);
    let e = err_text(Checkpoint::open(&prefix));
    assert!(
        e.contains("ck.index") && e.contains("'garbage'") && e.contains("corrupt entry"),
        "{e}"
    );
}

#[test]
fn a_dense_layer_checkpoint_is_not_elmo() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("model.ckpt");
    write_bundle(
        &prefix,
        &[
            f32_var("dense/kernel", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            f32_var("dense/bias", &[3], &[0.5, 0.25, 0.125]),
        ],
        PLAIN,
    );
    let ckpt = open_checkpoint(&prefix).unwrap();
    assert_eq!(ckpt.read_f32("dense/bias").unwrap(), vec![0.5, 0.25, 0.125]);
    let e = err_text(elmo_from_checkpoint(&ckpt, Some(small_options()), None));
    assert!(
        e.contains("model.ckpt.index") && e.contains("not an ELMo checkpoint"),
        "{e}"
    );
    let e = err_text(convert_tf_checkpoint(
        &prefix,
        None,
        Some("tfhub-elmo-2"),
        &dir.path().join("o"),
    ));
    assert!(
        e.contains("not an ELMo checkpoint") && e.contains("dense/bias, dense/kernel"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Corruption.

#[test]
fn flipped_data_byte_names_the_variable_and_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = copy_hub(dir.path());
    let ckpt = open_checkpoint(dir.path()).unwrap();
    let v = ckpt.variable("bilm/CNN_high_0/W_carry").unwrap().clone();
    let shard = ckpt.shard_path(0);
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[(v.offset + v.size / 2) as usize] ^= 0x10;
    std::fs::write(&shard, bytes).unwrap();
    for e in [
        err_text(ckpt.read_f32(&v.name)),
        err_text(elmo_from_checkpoint(&ckpt, None, Some("tfhub-elmo-2"))),
        err_text(convert_tf_checkpoint(
            &prefix,
            None,
            Some("tfhub-elmo-2"),
            &dir.path().join("o"),
        )),
    ] {
        assert!(
            e.contains(SHARD) && e.contains("'bilm/CNN_high_0/W_carry'") && e.contains("checksum mismatch"),
            "{e}"
        );
    }
    // The others still read.
    assert_eq!(ckpt.read_f32("bilm/CNN_high_0/b_carry").unwrap().len(), 176);
}

#[test]
fn flipped_index_byte_is_a_block_checksum_error() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = copy_hub(dir.path());
    let index = dir.path().join("variables/variables.index");
    let good = std::fs::read(&index).unwrap();
    let mut bytes = good.clone();
    bytes[0x50] ^= 0x01; // inside the key `bilm/CNN/W_cnn_0` of the data block
    std::fs::write(&index, &bytes).unwrap();
    let e = err_text(open_checkpoint(&prefix));
    assert!(e.contains("variables.index") && e.contains("checksum mismatch"), "{e}");
    // Every single flipped bit and every truncation: an error or a checkpoint
    // that still reads correctly, never a panic.
    let want = hdf5_tensors();
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut bytes = good.clone();
            bytes[i] ^= bit;
            std::fs::write(&index, &bytes).unwrap();
            if let Ok(c) = open_checkpoint(&prefix) {
                // Only bytes nothing reads (footer padding, the unused
                // metaindex handle) can change without an error.
                let (_, t) = elmo_from_checkpoint(&c, None, Some("tfhub-elmo-2")).unwrap();
                assert_same_tensors(&t[..want.len()], &want);
            }
        }
    }
    for len in 0..good.len() {
        std::fs::write(&index, &good[..len]).unwrap();
        let e = err_text(open_checkpoint(&prefix));
        assert!(e.contains("variables.index"), "truncated to {len}: {e}");
    }
}

#[test]
fn truncated_index_missing_shard_and_missing_index() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = copy_hub(dir.path());
    let vars = dir.path().join("variables");
    let index = vars.join("variables.index");
    let good = std::fs::read(&index).unwrap();
    std::fs::write(&index, &good[..1000]).unwrap();
    let e = err_text(open_checkpoint(&prefix));
    assert!(e.contains("variables.index") && e.contains("truncated"), "{e}");
    std::fs::write(&index, &good[..20]).unwrap();
    let e = err_text(open_checkpoint(&prefix));
    assert!(e.contains("variables.index") && e.contains("truncated"), "{e}");
    std::fs::write(&index, &good).unwrap();

    // A truncated shard: the variables past its end name it.
    let shard = vars.join(SHARD);
    let data = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &data[..data.len() - 100]).unwrap();
    let ckpt = open_checkpoint(&prefix).unwrap();
    let e = err_text(ckpt.read_f32("bilm/char_embed"));
    assert!(
        e.contains(SHARD) && e.contains("'bilm/char_embed'") && e.contains("truncated"),
        "{e}"
    );

    // No shard at all: listing works, reading names the shard.
    std::fs::remove_file(&shard).unwrap();
    let ckpt = open_checkpoint(&prefix).unwrap();
    assert_eq!(ckpt.variables().len(), 39);
    let e = err_text(elmo_from_checkpoint(&ckpt, None, Some("tfhub-elmo-2")));
    assert!(e.contains(SHARD) && e.contains("'bilm/char_embed'"), "{e}");
    match ckpt.read_f32("aggregation/weights") {
        Err(Error::Weights { path, tensor, .. }) => {
            assert_eq!(path, shard);
            assert_eq!(tensor.as_deref(), Some("aggregation/weights"));
        }
        other => panic!("expected a weights error, got {other:?}"),
    }

    // No index: a folder with nothing in it, or a prefix whose index is gone.
    std::fs::remove_file(&index).unwrap();
    let e = err_text(Checkpoint::open(&prefix));
    assert!(e.contains("variables.index"), "{e}");
    assert!(err_text(open_checkpoint(dir.path())).contains("no TensorFlow checkpoint"));
}
