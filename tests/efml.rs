//! ELMoForManyLangs models: converted from the package's folder format and
//! computed as the package computes them, against its own outputs
//! (`tests/fixtures/efml/*/golden_NN.npz`, stateless), through the library
//! and the CLI; and bad folders refused with errors naming file and tensor.

mod common;

use common::{ATOL, Golden, RTOL, assert_close, assert_one_line_error, fixture, golden_files, stderr};
use elmo::ElmoModel;
use std::path::{Path, PathBuf};
use std::process::Command;

const MODELS: [&str; 2] = ["chars", "words"];

fn convert(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{name}.safetensors"));
    elmo::io::efml::convert_elmoformanylangs(&fixture(&format!("efml/{name}")), &out, elmo::convert::WeightDtype::F32)
        .expect("convert");
    out
}

/// Sentence `i` of a golden file: `(L + 1, n, 2P)`.
fn golden_sentence(g: &Golden, i: usize) -> (Vec<usize>, Vec<f32>) {
    g.f32(&format!("emb_{i}"))
}

/// Our `(L + 1, n, 2P)` for sentence `b` of an output.
fn ours(out: &elmo::BiLmOutput, b: usize) -> Vec<f32> {
    let mut v = Vec::new();
    for k in 0..out.n_layers {
        for t in 0..out.lengths[b] {
            v.extend_from_slice(out.vector(b, k, t));
        }
    }
    v
}

#[test]
fn both_models_reproduce_the_package() {
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let model = ElmoModel::load(&convert(name, dir.path())).unwrap();
        let mut worst = 0f32;
        for path in golden_files(&fixture(&format!("efml/{name}")), "golden_") {
            let g = Golden::load(&path);
            let batch = g.tokens();
            let out = model.embed(&batch).unwrap();
            for (b, s) in batch.iter().enumerate() {
                let (shape, want) = golden_sentence(&g, b);
                assert_eq!(shape, vec![out.n_layers, s.len(), out.dim], "{name} {}", g.name);
                let e = assert_close(
                    &format!("{name} {} sentence {b}", g.name),
                    &ours(&out, b),
                    &want,
                    ATOL,
                    RTOL,
                );
                worst = worst.max(e);
            }
        }
        eprintln!("efml {name}: max abs error {worst:e} against the package");
    }
}

#[test]
fn each_sentence_alone_gives_its_batch_vectors_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let model = ElmoModel::load(&convert("words", dir.path())).unwrap();
    let g = Golden::load(&fixture("efml/words/golden_02.npz"));
    let batch = g.tokens();
    let all = model.embed(&batch).unwrap();
    for (b, s) in batch.iter().enumerate() {
        let alone = model.embed(&[s]).unwrap();
        assert_eq!(ours(&alone, 0), ours(&all, b), "sentence {b}");
    }
    // And again: no state is carried from call to call.
    assert_eq!(model.embed(&batch).unwrap(), all);
}

#[test]
fn the_tokenisation_travels_in_the_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = convert("words", dir.path());
    let model = ElmoModel::load(&path).unwrap();
    let lex = model.lexicon().expect("an ELMoForManyLangs model has its lexicon");
    assert!(lex.words().is_some());
    // <bos>, "Kurz", <eos>: C = 24 character ids then the word id in two.
    let ids = model.encode(&[vec!["Kurz"]]).unwrap();
    assert_eq!((ids.positions(), ids.chars()), (3, 26));
    // The stored file alone is enough: the fixture folder is not read again.
    let copy = dir.path().join("moved.safetensors");
    std::fs::copy(&path, &copy).unwrap();
    let again = ElmoModel::load(&copy).unwrap();
    assert_eq!(
        again.embed(&[vec!["Kurz"]]).unwrap(),
        model.embed(&[vec!["Kurz"]]).unwrap()
    );
    // bilm-tf char ids are another model's tokenisation.
    let bilm = elmo::encode_batch(&[vec!["Kurz"]], 24).unwrap();
    let e = model.forward(&bilm, None).unwrap_err().to_string();
    assert!(e.contains("ids per token"), "{e}");
}

fn elmo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_elmo")).args(args).output().unwrap()
}

#[test]
fn the_cli_converts_inspects_and_embeds_as_the_package() {
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let src = fixture(&format!("efml/{name}"));
        let model = dir.path().join(format!("{name}.safetensors"));
        let o = elmo(&[
            "convert",
            "--elmoformanylangs",
            src.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = elmo(&["inspect", src.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("ELMoForManyLangs model folder"), "{text}");
        assert!(text.contains("forward_layer_1.state_linearity.bias"), "{text}");
        let o = elmo(&["inspect", model.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("\"family\":\"elmoformanylangs\"") && text.contains("lexicon:"),
            "{text}"
        );
        // The batches file is the CLI's JSON-lines input: one batch a line.
        let out = dir.path().join(format!("{name}.npz"));
        let o = elmo(&[
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--input",
            src.join("batches.jsonl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let got = elmo::npz::read_npz(&out).unwrap();
        let lm = &got["lm_embeddings"];
        let (n, layers, t, d) = (lm.shape[0], lm.shape[1], lm.shape[2], lm.shape[3]);
        let lm = lm.to_f32().unwrap();
        let mut row = 0;
        let mut worst = 0f32;
        for path in golden_files(&src, "golden_") {
            let g = Golden::load(&path);
            for b in 0..g.tokens().len() {
                let (shape, want) = golden_sentence(&g, b);
                let len = shape[1];
                let mut mine = Vec::new();
                for k in 0..layers {
                    let at = ((row * layers + k) * t) * d;
                    mine.extend_from_slice(&lm[at..at + len * d]);
                }
                worst = worst.max(assert_close(
                    &format!("cli {name} {} {b}", g.name),
                    &mine,
                    &want,
                    ATOL,
                    RTOL,
                ));
                row += 1;
            }
        }
        assert_eq!(row, n);
        eprintln!("efml {name} through the CLI: max abs error {worst:e}");
    }
}

/// A copy of a fixture folder to break.
fn copy_folder(name: &str, to: &Path) -> PathBuf {
    let dst = to.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(&format!("efml/{name}"))).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

fn convert_err(dir: &Path) -> String {
    let out = dir.join("out.safetensors");
    let e = elmo::io::efml::convert_elmoformanylangs(dir, &out, elmo::convert::WeightDtype::F32).unwrap_err();
    assert!(!out.exists(), "nothing is written on an error");
    e.to_string()
}

fn edit_config(dir: &Path, file: &str, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join(file);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn bad_folders_are_refused_naming_the_file_and_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let case = |n: &str| copy_folder("words", &tmp.path().join(n));

    let d = case("no_char_dic");
    std::fs::remove_file(d.join("char.dic")).unwrap();
    let e = convert_err(&d);
    assert!(e.contains("char.dic"), "{e}");

    let d = case("no_encoder");
    std::fs::remove_file(d.join("encoder.pkl")).unwrap();
    let e = convert_err(&d);
    assert!(e.contains("encoder.pkl"), "{e}");

    let d = case("truncated");
    let p = d.join("encoder.pkl");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = convert_err(&d);
    assert!(e.contains("encoder.pkl"), "{e}");

    // A config whose sizes disagree with the tensors.
    let d = case("wrong_dim");
    edit_config(&d, "efml_words.json", |v| v["encoder"]["dim"] = 24.into());
    let e = convert_err(&d);
    assert!(
        e.contains("encoder.pkl") && e.contains("forward_layer_0.input_linearity.weight") && e.contains("shape"),
        "{e}"
    );

    // One highway more than the weights have: a tensor is missing.
    let d = case("missing_tensor");
    edit_config(&d, "efml_words.json", |v| v["token_embedder"]["n_highway"] = 3.into());
    let e = convert_err(&d);
    assert!(
        e.contains("token_embedder.pkl") && e.contains("highways._layers.2.weight") && e.contains("missing"),
        "{e}"
    );

    // One fewer: a tensor is left over.
    let d = case("leftover");
    edit_config(&d, "efml_words.json", |v| v["token_embedder"]["n_highway"] = 1.into());
    let e = convert_err(&d);
    assert!(e.contains("highways._layers.1") && e.contains("disagree"), "{e}");

    // A model config that is not there and not a stock one.
    let d = case("no_config");
    std::fs::remove_file(d.join("efml_words.json")).unwrap();
    let e = convert_err(&d);
    assert!(e.contains("efml_words.json") && e.contains("stock configs"), "{e}");

    // The CLI: one line, non-zero.
    let d = case("cli");
    std::fs::remove_file(d.join("token_embedder.pkl")).unwrap();
    let out = tmp.path().join("x.safetensors");
    let o = elmo(&[
        "convert",
        "--elmoformanylangs",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "token_embedder.pkl");
}

#[test]
fn bilm_tf_training_options_convert_with_a_notice() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture("small");
    let text = std::fs::read_to_string(f.join("options.json")).unwrap();
    assert!(text.contains("262"));
    let opts = tmp.path().join("options.json");
    std::fs::write(&opts, text.replace("262", "261")).unwrap();
    let out = tmp.path().join("m.safetensors");
    let o = elmo(&[
        "convert",
        "--options",
        opts.to_str().unwrap(),
        "--hdf5",
        f.join("lm_weights.hdf5").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let notices: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.starts_with("notice:"))
        .map(String::from)
        .collect();
    assert_eq!(notices.len(), 1, "{}", stderr(&o));
    assert!(notices[0].contains("261") && notices[0].contains("262"));
    // The model is the one the 262 file gives.
    let a = ElmoModel::load(&out).unwrap();
    let b = common::small_model(tmp.path());
    assert_eq!(a.embed(&[vec!["a", "b"]]).unwrap(), b.embed(&[vec!["a", "b"]]).unwrap());
}

/// Every golden sentence of a model, in file order: tokens and `(L + 1, n, 2P)`.
fn all_goldens(name: &str) -> Vec<(Vec<String>, Vec<f32>)> {
    let mut v = Vec::new();
    for path in golden_files(&fixture(&format!("efml/{name}")), "golden_") {
        let g = Golden::load(&path);
        for (b, s) in g.tokens().into_iter().enumerate() {
            v.push((s, golden_sentence(&g, b).1));
        }
    }
    v
}

#[test]
fn the_keras_style_layer_corpus_and_batcher_paths_give_the_package_values() {
    use elmo::corpus::{CorpusConfig, Input, Layers, embed_corpus};
    use elmo::layer::{ElmoEmbedding, OutputMode};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let model = Arc::new(ElmoModel::load(&convert(name, dir.path())).unwrap());
        let src = fixture(&format!("efml/{name}"));
        // The layer (`ElmoEmbedding(idx2word, "lstm_outputs2")`): (B, T, 2P).
        for path in golden_files(&src, "golden_") {
            let g = Golden::load(&path);
            let tokens = g.tokens();
            let (idx2word, ids) = common::vocab_and_ids(&tokens);
            let layer = ElmoEmbedding::new(model.clone(), idx2word, OutputMode::LstmOutputs(2), false).unwrap();
            let out = layer.call(&ids).unwrap();
            let v = out.value();
            let (t, d) = (v.shape()[1], v.shape()[2]);
            for (b, s) in tokens.iter().enumerate() {
                let want = golden_sentence(&g, b).1;
                let top = &want[2 * s.len() * d..];
                assert_close(
                    &format!("layer {name} {b}"),
                    &v.data()[b * t * d..][..s.len() * d],
                    top,
                    ATOL,
                    RTOL,
                );
            }
        }
        // Corpus embedding into HDF5, every layer.
        let out = dir.path().join(format!("{name}.hdf5"));
        let cfg = CorpusConfig {
            layers: Layers::All,
            batch_size: 2,
            window: 3,
            ..Default::default()
        };
        let s = embed_corpus(
            &model,
            Input::open(&src.join("batches.jsonl")).unwrap(),
            &out,
            &cfg,
            &mut |_| {},
        )
        .unwrap();
        let want = all_goldens(name);
        assert_eq!(s.sentences as usize, want.len());
        let file = hdf5_reader::Hdf5File::open(&out).unwrap();
        let mut worst = 0f32;
        for (key, (_, w)) in want.iter().enumerate() {
            let ds = file.dataset(&key.to_string()).unwrap();
            let mut got = vec![0f32; w.len()];
            ds.read_into(&mut got).unwrap();
            worst = worst.max(assert_close(&format!("corpus {name} {key}"), &got, w, ATOL, RTOL));
        }
        eprintln!("efml {name} through the corpus HDF5 file: max abs error {worst:e}");
        // The cross-request batcher: each answer bitwise the request alone.
        let batcher = elmo::serve::Batcher::new(model.clone(), Default::default()).unwrap();
        for (tokens, w) in &want {
            let got = batcher.embed(vec![tokens.clone()]).unwrap();
            assert_eq!(got, model.embed(&[tokens]).unwrap());
            assert_close(&format!("batcher {name}"), &ours(&got, 0), w, ATOL, RTOL);
        }
    }
}

/// `--dtype bf16`: the LSTM matrices in bfloat16, within the documented bf16
/// tolerance of the f32 goldens (atol 1e-1, as for bilm-tf models).
#[test]
fn bf16_conversion_stays_within_the_bf16_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let out = dir.path().join(format!("{name}-bf16.safetensors"));
        elmo::io::efml::convert_elmoformanylangs(
            &fixture(&format!("efml/{name}")),
            &out,
            elmo::convert::WeightDtype::Bf16,
        )
        .unwrap();
        let model = ElmoModel::load(&out).unwrap();
        assert!(!model.file().bf16.is_empty());
        let mut worst = 0f32;
        for (tokens, want) in all_goldens(name) {
            let got = model.embed(&[&tokens]).unwrap();
            worst = worst.max(assert_close(&format!("bf16 {name}"), &ours(&got, 0), &want, 1e-1, 0.0));
        }
        eprintln!("efml {name} bf16: max abs error {worst:e}");
    }
}
