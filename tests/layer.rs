//! The ElmoEmbedding layer: every output mode against TensorFlow's goldens
//! through token ids, gradients of the pooled losses, padding anywhere,
//! id lookup by key, shapes, save/load, statefulness and training the mix.

mod common;
use common::*;
use elmo::autograd::Var;
use elmo::layer::{ElmoEmbedding, OutputMode, TokenIds};
use elmo::optim::{Adam, Optimizer};
use elmo::{ElmoModel, Error, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

struct Variant {
    name: &'static str,
    w: [f32; 3],
    gamma: f32,
    ln: bool,
    top: bool,
}

const VARIANTS: [Variant; 5] = [
    Variant {
        name: "elmo_default",
        w: [0.0; 3],
        gamma: 1.0,
        ln: false,
        top: false,
    },
    Variant {
        name: "elmo_default_ln",
        w: [0.0; 3],
        gamma: 1.0,
        ln: true,
        top: false,
    },
    Variant {
        name: "elmo_custom",
        w: [0.3, -0.7, 1.1],
        gamma: 0.8,
        ln: false,
        top: false,
    },
    Variant {
        name: "elmo_custom_ln",
        w: [0.3, -0.7, 1.1],
        gamma: 0.8,
        ln: true,
        top: false,
    },
    Variant {
        name: "elmo_top_only",
        w: [0.0; 3],
        gamma: 0.8,
        ln: false,
        top: true,
    },
];

fn layer_for(model: &Arc<ElmoModel>, idx2word: HashMap<i64, String>, v: &Variant, mode: OutputMode) -> ElmoEmbedding {
    ElmoEmbedding::builder(model.clone(), idx2word, mode, true)
        .mix_weights(v.w.to_vec())
        .gamma(v.gamma)
        .layer_norm(v.ln)
        .top_only(v.top)
        .build()
        .unwrap()
}

/// Every mode and variant of every stateless batch of a set; returns the
/// max abs errors of outputs and of the pooled-loss gradients.
fn check_set(model: Arc<ElmoModel>, set: &str) -> (f32, f32) {
    let (mut worst, mut worst_grad) = (0f32, 0f32);
    let p = model.options().projection_dim();
    for (sf, gf) in golden_files(&fixture(set), "stateless_batch_")
        .iter()
        .zip(golden_files(&fixture(set), "grad_batch_"))
    {
        let g = Golden::load(sf);
        let gr = Golden::load(&gf);
        let (idx2word, ids) = vocab_and_ids(&g.tokens());
        let [b, t] = ids.shape();
        let lengths = g.get("lengths").to_i64().unwrap();
        let real = |bi: usize, ti: usize| (ti as i64) < lengths[bi];
        // word_emb, lstm_outputs1/2, all: the biLM layers at real positions.
        let (_, lm) = g.f32("lm_embeddings");
        let layer = layer_for(&model, idx2word.clone(), &VARIANTS[0], OutputMode::All);
        let outs = layer.forward_all(&ids).unwrap();
        for (mode, k, width) in [
            (OutputMode::WordEmb, 0, p),
            (OutputMode::LstmOutputs(1), 1, 2 * p),
            (OutputMode::LstmOutputs(2), 2, 2 * p),
        ] {
            let got = outs.get(mode).unwrap();
            assert_eq!(
                got.shape(),
                layer_for(&model, idx2word.clone(), &VARIANTS[0], mode)
                    .output_shape(&[b, t])
                    .unwrap()
            );
            for bi in 0..b {
                for ti in 0..t {
                    let gv = &got.value().data()[(bi * t + ti) * width..][..width];
                    if real(bi, ti) {
                        let o = ((bi * 3 + k) * t + ti) * 2 * p;
                        worst = worst.max(assert_close(
                            &format!("{} {mode}", g.name),
                            gv,
                            &lm[o..o + width],
                            ATOL,
                            RTOL,
                        ));
                    } else {
                        assert!(gv.iter().all(|&x| x == 0.0), "{mode}: padding must be zero");
                    }
                }
            }
        }
        // elmo and default for each mix variant.
        for v in &VARIANTS {
            let layer = layer_for(&model, idx2word.clone(), v, OutputMode::Elmo);
            let outs = layer.forward_all(&ids).unwrap();
            let elmo = outs.get(OutputMode::Elmo).unwrap();
            assert_eq!(elmo.shape(), &[b, t, 2 * p]);
            let (_, want) = g.f32(v.name);
            for bi in 0..b {
                for ti in 0..t {
                    let o = (bi * t + ti) * 2 * p;
                    let gv = &elmo.value().data()[o..o + 2 * p];
                    if real(bi, ti) {
                        worst = worst.max(assert_close(
                            &format!("{} {}", g.name, v.name),
                            gv,
                            &want[o..o + 2 * p],
                            ATOL,
                            RTOL,
                        ));
                    } else {
                        assert!(gv.iter().all(|&x| x == 0.0), "elmo padding must be zero");
                    }
                }
            }
            let default = outs.get(OutputMode::Default).unwrap();
            assert_eq!(default.shape(), &[b, 2 * p]);
            let (_, want) = g.f32(&format!("{}_mean", v.name));
            worst = worst.max(assert_close(
                &format!("{} {}_mean", g.name, v.name),
                default.value().data(),
                &want,
                ATOL,
                RTOL,
            ));
            // Gradients of TF's pooled probe loss, through the whole layer.
            let (rs, r) = gr.f32(&format!("grad_probe_{}_mean", v.name));
            let loss = default
                .mul(&Var::constant(Tensor::from_vec(&rs, r).unwrap()))
                .unwrap()
                .sum()
                .unwrap();
            let grads = loss.backward().unwrap();
            let mix = &layer.mixes()[0];
            let (_, want) = gr.f32(&format!("grad_gamma_{}_mean", v.name));
            worst_grad = worst_grad.max(assert_close(
                "grad gamma",
                grads.param(&mix.gamma).unwrap().data(),
                &want,
                ATOL,
                RTOL,
            ));
            if !v.top {
                let (_, want) = gr.f32(&format!("grad_W_{}_mean", v.name));
                worst_grad = worst_grad.max(assert_close(
                    "grad W",
                    grads.param(&mix.weights).unwrap().data(),
                    &want,
                    ATOL,
                    RTOL,
                ));
            }
        }
    }
    (worst, worst_grad)
}

#[test]
fn tiny_all_modes_match_tensorflow() {
    let dir = tempfile::tempdir().unwrap();
    let (o, g) = check_set(Arc::new(tiny_model(dir.path())), "tiny");
    eprintln!("tiny layer: outputs max abs error {o:e}, pooled-loss gradients {g:e}");
}

#[test]
fn small_all_modes_match_tensorflow() {
    let dir = tempfile::tempdir().unwrap();
    let (o, g) = check_set(Arc::new(small_model(dir.path())), "small");
    eprintln!("small layer: outputs max abs error {o:e}, pooled-loss gradients {g:e}");
}

fn vocab() -> HashMap<i64, String> {
    // Keys with gaps: the original layer indexed the sorted key list, so 10
    // would have been read as the second word.
    [
        (1, "The"),
        (2, "cat"),
        (10, "sat"),
        (11, "."),
        (40, "Dogs"),
        (41, "bark"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect()
}

#[test]
fn padding_anywhere_and_lookup_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(small_model(dir.path()));
    let layer = ElmoEmbedding::new(model.clone(), vocab(), OutputMode::Elmo, false).unwrap();
    let post = TokenIds::from_rows(&[vec![1, 2, 10, 11, 0, 0], vec![40, 41, 0, 0, 0, 0], vec![0; 6]]).unwrap();
    let pre = TokenIds::from_rows(&[vec![0, 0, 1, 2, 10, 11], vec![0, 40, 0, 41, 0, 0], vec![0; 6]]).unwrap();
    let a = layer.call(&post).unwrap();
    let b = layer.call(&pre).unwrap();
    let (d, av, bv) = (a.shape()[2], a.value().data(), b.value().data());
    let at = |v: &[f32], r: usize, t: usize| v[(r * 6 + t) * d..(r * 6 + t + 1) * d].to_vec();
    for (j, (tp, tq)) in [(0, 2), (1, 3), (2, 4), (3, 5)].into_iter().enumerate() {
        assert_eq!(at(av, 0, tp), at(bv, 0, tq), "word {j} of row 0");
    }
    assert_eq!(at(av, 1, 0), at(bv, 1, 1));
    assert_eq!(at(av, 1, 1), at(bv, 1, 3));
    for t in [0, 2, 4, 5] {
        assert!(at(bv, 1, t).iter().all(|&x| x == 0.0), "padding between words is zero");
    }
    assert!(
        av[2 * 6 * d..].iter().all(|&x| x == 0.0),
        "an all-padding row gives zeros"
    );
    // The words by key, and an unknown id as <UNK> (configurable).
    let (words, _) = layer.words(&TokenIds::from_rows(&[vec![10, 99, 41]]).unwrap()).unwrap();
    assert_eq!(words[0], vec!["sat", "<UNK>", "bark"]);
    let l2 = ElmoEmbedding::builder(model.clone(), vocab(), OutputMode::Elmo, false)
        .unk_token("@@UNKNOWN@@")
        .build()
        .unwrap();
    assert_eq!(
        l2.words(&TokenIds::from_rows(&[vec![99]]).unwrap()).unwrap().0[0],
        vec!["@@UNKNOWN@@"]
    );
    // The words embed as the model embeds them.
    let direct = model.embed(&[vec!["The", "cat", "sat", "."]]).unwrap();
    let all = ElmoEmbedding::new(model, vocab(), OutputMode::All, false)
        .unwrap()
        .call(&post)
        .unwrap();
    let d2 = direct.dim;
    for k in 0..direct.n_layers {
        for t in 0..4 {
            let o = (k * 6 + t) * d2; // row 0 of (B, K, T = 6, 2P)
            assert_eq!(
                &all.value().data()[o..o + d2],
                direct.vector(0, k, t),
                "layer {k} token {t}"
            );
        }
    }
    // A batch of one, and the default mode over it.
    let one = TokenIds::from_rows(&[vec![40, 41]]).unwrap();
    let dflt = ElmoEmbedding::new(layer.model().clone(), vocab(), OutputMode::Default, false).unwrap();
    assert_eq!(dflt.call(&one).unwrap().shape(), &[1, 2 * model_p(&dflt)]);
}

fn model_p(l: &ElmoEmbedding) -> usize {
    l.model().options().projection_dim()
}

#[test]
fn output_shapes_without_running() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    let ids = TokenIds::from_rows(&[vec![1, 2, 0], vec![10, 0, 0]]).unwrap();
    for (mode, want) in [
        ("default", vec![2, 32]),
        ("word_emb", vec![2, 3, 16]),
        ("lstm_outputs1", vec![2, 3, 32]),
        ("lstm_outputs2", vec![2, 3, 32]),
        ("elmo", vec![2, 3, 32]),
        ("all", vec![2, 3, 3, 32]),
    ] {
        let layer = ElmoEmbedding::new(model.clone(), vocab(), mode.parse().unwrap(), false).unwrap();
        assert_eq!(layer.output_shape(&[2, 3]).unwrap(), want, "{mode}");
        assert_eq!(layer.call(&ids).unwrap().shape(), want.as_slice(), "{mode}");
    }
    assert!("lstm_outputs3".parse::<OutputMode>().is_ok());
    assert!(ElmoEmbedding::new(model.clone(), vocab(), "lstm_outputs3".parse().unwrap(), false).is_err());
    assert!("bogus".parse::<OutputMode>().is_err());
}

#[test]
fn bad_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    let layer = ElmoEmbedding::new(model.clone(), vocab(), OutputMode::Elmo, true).unwrap();
    let e = layer.call(&TokenIds::from_rows(&[vec![1, -4]]).unwrap()).unwrap_err();
    assert!(
        matches!(e, Error::Input(_)) && e.to_string().contains("negative"),
        "{e}"
    );
    assert!(TokenIds::new(&[2, 2, 1], vec![1; 4]).is_err(), "3-D input");
    assert!(TokenIds::new(&[3], vec![1; 3]).is_err(), "1-D input");
    assert!(TokenIds::from_rows(&[vec![1], vec![1, 2]]).is_err(), "ragged rows");
    assert!(TokenIds::from_tensor(&Tensor::from_vec(&[1, 2], vec![1.0, 2.5]).unwrap()).is_err());
    assert!(
        ElmoEmbedding::new(model.clone(), HashMap::new(), OutputMode::Elmo, true).is_err(),
        "empty idx2word"
    );
    let b = ElmoEmbedding::builder(model.clone(), vocab(), OutputMode::Elmo, true);
    assert!(
        b.clone().mix_weights(vec![0.0; 2]).build().is_err(),
        "mix of the wrong length"
    );
    assert!(b.clone().gamma(f32::NAN).build().is_err(), "NaN gamma");
    assert!(b.num_output_representations(0).build().is_err());
    // Huge ids beyond any key are <UNK>, an empty batch gives empty outputs.
    assert_eq!(
        layer.words(&TokenIds::from_rows(&[vec![i64::MAX]]).unwrap()).unwrap().0[0],
        vec!["<UNK>"]
    );
    assert_eq!(
        layer.call(&TokenIds::new(&[0, 5], vec![]).unwrap()).unwrap().shape(),
        &[0, 5, 32]
    );
}

#[test]
fn several_mixes_from_one_pass_and_save_load() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(small_model(dir.path()));
    let layer = ElmoEmbedding::builder(model.clone(), vocab(), OutputMode::Elmo, true)
        .num_output_representations(2)
        .layer_norm(true)
        .build()
        .unwrap();
    layer.mixes()[1]
        .weights
        .set(Tensor::from_vec(&[3], vec![1.0, 0.0, -1.0]).unwrap())
        .unwrap();
    let ids = TokenIds::from_rows(&[vec![1, 2, 10, 11], vec![40, 41, 0, 0]]).unwrap();
    let outs = layer.forward_all(&ids).unwrap();
    assert_eq!(outs.elmo.len(), 2);
    assert_ne!(outs.elmo[0].value().data(), outs.elmo[1].value().data());
    // Save, load, same outputs; loading onto another model's shape fails.
    let path = dir.path().join("layer.json");
    layer.save(&path).unwrap();
    let back = ElmoEmbedding::load(&path, model.clone()).unwrap();
    let outs2 = back.forward_all(&ids).unwrap();
    for i in 0..2 {
        assert_eq!(outs.elmo[i].value().data(), outs2.elmo[i].value().data());
    }
    assert_eq!(back.mixes()[1].weights.value().data(), &[1.0, 0.0, -1.0]);
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let e = ElmoEmbedding::load(&path, Arc::new(tiny_model(&other))).unwrap_err();
    assert!(e.to_string().contains("this model has"), "{e}");
    std::fs::write(&path, "{\"format\": \"x\"}").unwrap();
    assert!(ElmoEmbedding::load(&path, model).is_err());
}

#[test]
fn stateful_layer_owns_a_resettable_state() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    let layer = ElmoEmbedding::builder(model.clone(), vocab(), OutputMode::Elmo, false)
        .stateful(4)
        .build()
        .unwrap();
    let ids = TokenIds::from_rows(&[vec![1, 2, 10, 11]]).unwrap();
    let first = layer.call(&ids).unwrap().value().data().to_vec();
    let second = layer.call(&ids).unwrap().value().data().to_vec();
    assert_ne!(first, second, "state carried");
    layer.reset_state();
    assert_eq!(layer.call(&ids).unwrap().value().data(), first.as_slice());
    let stateless = ElmoEmbedding::new(model, vocab(), OutputMode::Elmo, false).unwrap();
    assert_eq!(stateless.call(&ids).unwrap().value().data(), first.as_slice());
    assert_eq!(stateless.call(&ids).unwrap().value().data(), first.as_slice());
}

#[test]
fn training_only_the_mix_lowers_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(small_model(dir.path()));
    let layer = ElmoEmbedding::new(model.clone(), vocab(), OutputMode::Default, true).unwrap();
    let ids = TokenIds::from_rows(&[vec![1, 2, 10, 11], vec![40, 41, 0, 0]]).unwrap();
    // Target: what the top layer alone, scaled by 1.5, would pool to.
    let target = ElmoEmbedding::builder(model, vocab(), OutputMode::Default, false)
        .top_only(true)
        .gamma(1.5)
        .build()
        .unwrap();
    let y = target.call(&ids).unwrap();
    let params = layer.trainable_params();
    assert_eq!(params.len(), 2);
    let before: Vec<Vec<f32>> = params.iter().map(|p| p.value().data().to_vec()).collect();
    let mut adam = Adam::new(0.05);
    let mut losses = Vec::new();
    for _ in 0..30 {
        let d = layer.call(&ids).unwrap().sub(&y).unwrap();
        let loss = d.mul(&d).unwrap().mean().unwrap();
        losses.push(loss.value().data()[0]);
        adam.step(&params, &loss.backward().unwrap());
    }
    eprintln!("mix training: loss {} -> {}", losses[0], losses[losses.len() - 1]);
    assert!(losses[29] < 0.5 * losses[0], "loss must fall: {losses:?}");
    for (p, b) in params.iter().zip(&before) {
        assert_ne!(p.value().data(), b.as_slice(), "{} must move", p.name());
    }
    // Frozen layers record nothing.
    let frozen = ElmoEmbedding::new(layer.model().clone(), vocab(), OutputMode::Default, false).unwrap();
    assert!(!frozen.call(&ids).unwrap().has_graph());
    assert!(frozen.trainable_params().is_empty());
}
