//! Keras-style training on the autodiff core: a separable set learned to
//! 100%, the ELMo mix frozen or trained, build-time shape errors, bad data.

mod common;
use common::*;
use elmo::layer::{ElmoEmbedding, OutputMode};
use elmo::nn::{Act, Conv1D, Dense, Dropout, Embedding, GlobalMaxPooling1D, Padding};
use elmo::optim::{Adam, Sgd};
use elmo::rng::Rng;
use elmo::train::{FitOptions, Loss, Metric, Sequential};
use elmo::{Error, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// Two Gaussian blobs in 4-D, linearly separable with a margin.
fn blobs(n: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..n {
        let label = (i % 2) as f32;
        let centre = if label == 1.0 { 1.5 } else { -1.5 };
        for _ in 0..4 {
            x.push(centre + rng.uniform_in(-1.0, 1.0));
        }
        y.push(label);
    }
    (
        Tensor::from_vec(&[n, 4], x).unwrap(),
        Tensor::from_vec(&[n, 1], y).unwrap(),
    )
}

fn mlp(seed: u64) -> Sequential {
    let mut m = Sequential::new(seed);
    m.add(Dense::new(8, Act::Relu))
        .add(Dropout::new(0.2))
        .add(Dense::new(1, Act::Sigmoid));
    m.build(&[4]).unwrap();
    m.compile(Loss::BinaryCrossentropy, Adam::new(0.05), &[Metric::Accuracy]);
    m
}

#[test]
fn separable_set_reaches_full_accuracy_deterministically() {
    let (x, y) = blobs(64, 1);
    let (vx, vy) = blobs(32, 2);
    let opts = FitOptions {
        batch_size: 8,
        epochs: 20,
        validation_data: Some((&vx, &vy)),
        verbose: false,
        ..FitOptions::default()
    };
    let mut m = mlp(42);
    let h = m.fit(&x, &y, &opts).unwrap();
    assert_eq!(*h.accuracy.last().unwrap(), 1.0, "{:?}", h.accuracy);
    assert_eq!(*h.val_accuracy.last().unwrap(), 1.0, "{:?}", h.val_accuracy);
    assert!(h.loss.last().unwrap() < &h.loss[0]);
    let (loss, acc) = m.evaluate(&vx, &vy, 16).unwrap();
    assert_eq!(acc, 1.0);
    assert!((loss - h.val_loss.last().unwrap()).abs() < 1e-6);
    let p = m.predict(&vx, 5).unwrap();
    assert_eq!(p.shape(), &[32, 1]);
    assert!(p.data().iter().all(|&v| (0.0..=1.0).contains(&v)));
    // Same seed, same run.
    let h2 = mlp(42).fit(&x, &y, &opts).unwrap();
    assert_eq!(h.loss, h2.loss);
    // SGD works too.
    let mut s = Sequential::new(3);
    s.add(Dense::new(1, Act::Sigmoid));
    s.build(&[4]).unwrap();
    s.compile(Loss::BinaryCrossentropy, Sgd::new(0.5), &[Metric::Accuracy]);
    let hs = s
        .fit(
            &x,
            &y,
            &FitOptions {
                batch_size: 8,
                epochs: 10,
                verbose: false,
                ..FitOptions::default()
            },
        )
        .unwrap();
    assert_eq!(*hs.accuracy.last().unwrap(), 1.0);
}

fn vocab() -> HashMap<i64, String> {
    ["good", "great", "fine", "bad", "awful", "poor", "movie", "the"]
        .iter()
        .enumerate()
        .map(|(i, w)| (i as i64 + 1, w.to_string()))
        .collect()
}

/// Ids (n, 6): positive rows use ids 1..3, negative rows 4..6, plus fillers.
fn sentiment_ids(n: usize) -> (Tensor, Tensor) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..n {
        let pos = i % 2 == 0;
        let w = if pos { 1 + (i / 2) % 3 } else { 4 + (i / 2) % 3 };
        x.extend_from_slice(&[8.0, 7.0, w as f32, 0.0, 0.0, 0.0]);
        y.push(if pos { 1.0 } else { 0.0 });
    }
    (
        Tensor::from_vec(&[n, 6], x).unwrap(),
        Tensor::from_vec(&[n, 1], y).unwrap(),
    )
}

#[test]
fn elmo_mix_moves_only_when_trainable() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    let (x, y) = sentiment_ids(8);
    for trainable in [false, true] {
        let elmo = ElmoEmbedding::new(model.clone(), vocab(), OutputMode::Default, trainable).unwrap();
        let mix = elmo.mixes()[0].clone();
        let before = (mix.weights.value().data().to_vec(), mix.gamma.value().data().to_vec());
        let mut m = Sequential::new(1);
        m.add(elmo)
            .add(Dropout::new(0.5))
            .add(Dense::new(50, Act::Relu))
            .add(Dense::new(1, Act::Sigmoid));
        m.build(&[6]).unwrap();
        m.compile(Loss::BinaryCrossentropy, Adam::default(), &[Metric::Accuracy]);
        let summary = m.summary().unwrap();
        assert!(
            summary.contains("elmo_embedding (ELMoEmbedding)") && summary.contains("(None, 32)"),
            "{summary}"
        );
        m.fit(
            &x,
            &y,
            &FitOptions {
                batch_size: 2,
                epochs: 2,
                verbose: false,
                ..FitOptions::default()
            },
        )
        .unwrap();
        let after = (mix.weights.value().data().to_vec(), mix.gamma.value().data().to_vec());
        if trainable {
            assert_ne!(before.0, after.0, "trainable: w moves");
            assert_ne!(before.1, after.1, "trainable: gamma moves");
            assert!(summary.contains("Trainable params: 1,705"), "{summary}");
        } else {
            assert_eq!(before, after, "frozen: the mix is untouched");
            assert!(summary.contains("Trainable params: 1,701"), "{summary}");
        }
    }
}

#[test]
fn embedding_and_elmo_are_interchangeable() {
    // The word-level model of the Keras example, with either first layer.
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    let (x, y) = sentiment_ids(16);
    for use_elmo in [false, true] {
        let mut m = Sequential::new(5);
        if use_elmo {
            m.add(ElmoEmbedding::new(model.clone(), vocab(), OutputMode::Elmo, false).unwrap());
        } else {
            m.add(Embedding::new(9, 32));
        }
        m.add(Conv1D::new(8, 3, Padding::Same, Act::Relu))
            .add(GlobalMaxPooling1D)
            .add(Dense::new(8, Act::Relu))
            .add(Dense::new(1, Act::Sigmoid));
        m.build(&[6]).unwrap();
        m.compile(Loss::BinaryCrossentropy, Adam::new(0.01), &[Metric::Accuracy]);
        let h = m
            .fit(
                &x,
                &y,
                &FitOptions {
                    batch_size: 4,
                    epochs: 15,
                    verbose: false,
                    ..FitOptions::default()
                },
            )
            .unwrap();
        assert!(h.loss.last().unwrap() < &h.loss[0], "elmo={use_elmo}: {:?}", h.loss);
    }
}

#[test]
fn shape_mismatches_are_reported_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let model = Arc::new(tiny_model(dir.path()));
    let mut m = Sequential::new(0);
    m.add(ElmoEmbedding::new(model, vocab(), OutputMode::Default, true).unwrap())
        .add(Conv1D::new(4, 3, Padding::Same, Act::Relu));
    let e = m.build(&[10]).unwrap_err().to_string();
    assert!(
        e.contains("'conv1d'") && e.contains("'elmo_embedding'") && e.contains("(batch, 32)") && e.contains("steps"),
        "{e}"
    );
    let mut m = Sequential::new(0);
    m.add(Embedding::new(5, 4)).add(Dense::new(3, Act::Relu));
    let e = m.build(&[7]).unwrap_err().to_string();
    assert!(
        e.contains("'dense'") && e.contains("'embedding'") && e.contains("(batch, 7, 4)"),
        "{e}"
    );
    let mut m = Sequential::new(0);
    m.add(Conv1D::new(2, 5, Padding::Valid, Act::Linear));
    assert!(m.build(&[3, 1]).unwrap_err().to_string().contains("longer"));
}

#[test]
fn bad_data_gives_clear_errors() {
    let mut m = mlp(1);
    let (x, y) = blobs(4, 1);
    let opts = FitOptions {
        verbose: false,
        ..FitOptions::default()
    };
    let bad_y = Tensor::from_vec(&[4, 1], vec![0.0, 1.0, 2.0, 1.0]).unwrap();
    let e = m.fit(&x, &bad_y, &opts).unwrap_err().to_string();
    assert!(e.contains("labels 0 or 1"), "{e}");
    let e = m
        .fit(
            &Tensor::zeros(&[0, 4]).unwrap(),
            &Tensor::zeros(&[0, 1]).unwrap(),
            &opts,
        )
        .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = m.fit(&Tensor::zeros(&[4, 3]).unwrap(), &y, &opts).unwrap_err();
    assert!(matches!(e, Error::Input(_)), "{e}");
    let mut nan = x.clone();
    nan.data_mut()[0] = f32::NAN;
    let e = m.fit(&nan, &y, &opts).unwrap_err().to_string();
    assert!(e.contains("non-finite") && e.contains("example 0"), "{e}");
    let mut fresh = Sequential::new(0);
    fresh.add(Dense::new(1, Act::Sigmoid));
    fresh.build(&[4]).unwrap();
    assert!(fresh.fit(&x, &y, &opts).is_err(), "not compiled");
}
