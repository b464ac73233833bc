//! The scalar mix (bilm-tf's `weight_layers`) and its gradients against
//! TensorFlow: fed with TF's own `lm_embeddings` (padding embedding included,
//! outputs unmasked, as bilm-tf computes them), every variant's output, its
//! masked mean, the probe losses, d loss / d W, d loss / d gamma and the L2
//! term are compared with the goldens of the tiny and small sets.

mod common;
use common::*;
use elmo::Tensor;
use elmo::autograd::Var;
use elmo::mix::{MixConfig, ScalarMix};

const VARIANTS: [&str; 5] = [
    "elmo_default",
    "elmo_default_ln",
    "elmo_custom",
    "elmo_custom_ln",
    "elmo_top_only",
];

fn config(v: &str) -> MixConfig {
    MixConfig {
        do_layer_norm: v.ends_with("_ln"),
        use_top_only: v == "elmo_top_only",
        l2_coef: 0.01,
    }
}

fn check_set(set: &str) -> (f32, f32) {
    let (mut worst_out, mut worst_grad) = (0f32, 0f32);
    let stateless = golden_files(&fixture(set), "stateless_batch_");
    let grads = golden_files(&fixture(set), "grad_batch_");
    assert_eq!(stateless.len(), grads.len());
    for (sf, gf) in stateless.iter().zip(&grads) {
        let (s, gr) = (Golden::load(sf), Golden::load(gf));
        let (shape, lm) = s.f32("lm_embeddings");
        let (b, k, t, d) = (shape[0], shape[1], shape[2], shape[3]);
        let mask: Vec<f32> = s.get("mask").to_f32().unwrap();
        let layers = Tensor::from_vec(&shape, lm).unwrap();
        for v in VARIANTS {
            let (_, gamma) = gr.f32(&format!("gamma_{v}"));
            let w = if v == "elmo_top_only" {
                vec![0.0; k]
            } else {
                gr.f32(&format!("W_{v}")).1
            };
            let mix = ScalarMix::new(k, &w, gamma[0], config(v), true).unwrap();
            let tag = |x: &str| format!("{set} {} {v} {x}", s.name);
            // Output at every position (bilm-tf leaves padding unmasked).
            let out = mix.forward(&layers, &mask, false).unwrap();
            let (_, want) = s.f32(v);
            worst_out = worst_out.max(assert_close(&tag("output"), out.value().data(), &want, ATOL, RTOL));
            let mean = out.masked_mean(&mask).unwrap();
            let (_, want) = s.f32(&format!("{v}_mean"));
            worst_out = worst_out.max(assert_close(&tag("mean"), mean.value().data(), &want, ATOL, RTOL));
            // The two probe losses and their gradients.
            for (suffix, y) in [("", &out), ("_mean", &mean)] {
                let (rs, r) = gr.f32(&format!("grad_probe_{v}{suffix}"));
                let loss = y
                    .mul(&Var::constant(Tensor::from_vec(&rs, r).unwrap()))
                    .unwrap()
                    .sum()
                    .unwrap();
                let (_, want) = gr.f32(&format!("loss_{v}{suffix}"));
                worst_grad = worst_grad.max(assert_close(&tag("loss"), loss.value().data(), &want, ATOL, RTOL));
                let g = loss.backward().unwrap();
                let (_, want) = gr.f32(&format!("grad_gamma_{v}{suffix}"));
                let got = g.param(&mix.gamma).unwrap().data().to_vec();
                worst_grad = worst_grad.max(assert_close(
                    &tag(&format!("grad_gamma{suffix}")),
                    &got,
                    &want,
                    ATOL,
                    RTOL,
                ));
                if v != "elmo_top_only" {
                    let (_, want) = gr.f32(&format!("grad_W_{v}{suffix}"));
                    let got = g.param(&mix.weights).unwrap().data().to_vec();
                    worst_grad =
                        worst_grad.max(assert_close(&tag(&format!("grad_W{suffix}")), &got, &want, ATOL, RTOL));
                } else {
                    assert!(g.param(&mix.weights).is_none(), "top-only: no gradient reaches w");
                }
            }
            // The L2 term and its gradient 2 * l2_coef * W (top-only has no W).
            if v != "elmo_top_only" {
                let l2 = mix.l2_loss().unwrap();
                let (_, want) = gr.f32(&format!("l2_{v}"));
                assert_close(&tag("l2"), l2.value().data(), &want, ATOL, RTOL);
                let got = l2.backward().unwrap().param(&mix.weights).unwrap().data().to_vec();
                let (_, want) = gr.f32(&format!("grad_W_l2_{v}"));
                assert_close(&tag("grad_W_l2"), &got, &want, ATOL, RTOL);
            }
        }
        let _ = (b, t, d);
    }
    (worst_out, worst_grad)
}

#[test]
fn tiny_mix_and_gradients_match_tensorflow() {
    let (o, g) = check_set("tiny");
    eprintln!("tiny mix: outputs max abs error {o:e}, losses/gradients {g:e}");
}

#[test]
fn small_mix_and_gradients_match_tensorflow() {
    let (o, g) = check_set("small");
    eprintln!("small mix: outputs max abs error {o:e}, losses/gradients {g:e}");
}

/// The recorded gradients agree with central finite differences (in f64
/// terms of the float32 loss) at a non-trivial point, with layer norm.
#[test]
fn mix_gradients_match_finite_differences() {
    let s = Golden::load(&fixture("small/stateless_batch_05.npz"));
    let (shape, lm) = s.f32("lm_embeddings");
    let mask = s.get("mask").to_f32().unwrap();
    let layers = Tensor::from_vec(&shape, lm).unwrap();
    let probe = Var::constant(
        Tensor::from_vec(
            &[shape[0], shape[2], shape[3]],
            random_values(shape[0] * shape[2] * shape[3], 7, 1.0),
        )
        .unwrap(),
    );
    let w0 = [0.3f32, -0.7, 1.1];
    let loss_at = |w: &[f32], gamma: f32| -> (f64, Vec<f32>, Vec<f32>) {
        let cfg = MixConfig {
            do_layer_norm: true,
            ..MixConfig::default()
        };
        let mix = ScalarMix::new(3, w, gamma, cfg, true).unwrap();
        let loss = mix
            .forward(&layers, &mask, true)
            .unwrap()
            .mul(&probe)
            .unwrap()
            .sum()
            .unwrap();
        let g = loss.backward().unwrap();
        let grads = (
            g.param(&mix.weights).unwrap().data().to_vec(),
            g.param(&mix.gamma).unwrap().data().to_vec(),
        );
        (loss.value().data()[0] as f64, grads.0, grads.1)
    };
    let (_, gw, gg) = loss_at(&w0, 0.8);
    let eps = 1e-2f32;
    for j in 0..3 {
        let (mut up, mut dn) = (w0, w0);
        up[j] += eps;
        dn[j] -= eps;
        let num = (loss_at(&up, 0.8).0 - loss_at(&dn, 0.8).0) / (2.0 * eps as f64);
        assert!(
            (num - gw[j] as f64).abs() < 1e-2 * (1.0 + num.abs()),
            "w{j}: numeric {num}, recorded {}",
            gw[j]
        );
    }
    let num = (loss_at(&w0, 0.8 + eps).0 - loss_at(&w0, 0.8 - eps).0) / (2.0 * eps as f64);
    assert!(
        (num - gg[0] as f64).abs() < 1e-2 * (1.0 + num.abs()),
        "gamma: numeric {num}, recorded {}",
        gg[0]
    );
}

#[test]
fn bad_mix_parameters_are_errors() {
    assert!(ScalarMix::new(3, &[0.0, 0.0], 1.0, MixConfig::default(), true).is_err());
    assert!(ScalarMix::new(3, &[0.0; 3], f32::NAN, MixConfig::default(), true).is_err());
    assert!(ScalarMix::new(2, &[0.0, f32::INFINITY], 1.0, MixConfig::default(), true).is_err());
    let mix = ScalarMix::new(3, &[0.0; 3], 1.0, MixConfig::default(), false).unwrap();
    let x = Tensor::zeros(&[1, 2, 4, 8]).unwrap();
    assert!(mix.forward(&x, &[1.0; 4], true).is_err(), "layer count mismatch");
    let x = Tensor::zeros(&[1, 3, 4, 8]).unwrap();
    assert!(mix.forward(&x, &[1.0; 3], true).is_err(), "mask size mismatch");
    // Mask values other than 0 and 1 (a NaN gave NaNs, a -1 skipped the
    // layer norm, both as Ok).
    for bad in [f32::NAN, -1.0, 2.0, 0.5] {
        let e = mix.forward(&x, &[1.0, bad, 0.0, 1.0], true).unwrap_err();
        assert!(e.to_string().contains("mask values must be 0 or 1"), "{bad}: {e}");
    }
    // A mix of no layers (its top layer was index -1: a panic).
    let top = MixConfig {
        use_top_only: true,
        ..MixConfig::default()
    };
    assert!(ScalarMix::new(0, &[], 1.0, top, true).is_err());
    // A gamma that overflows float32 on values above 1: an error.
    let big = ScalarMix::new(3, &[0.0; 3], 3.4e38, MixConfig::default(), false).unwrap();
    let x = Tensor::from_vec(&[1, 3, 4, 8], vec![2.0; 96]).unwrap();
    let e = big.forward(&x, &[1.0; 4], true).unwrap_err();
    assert!(e.to_string().contains("the mix overflows float32"), "{e}");
    // Frozen: no graph at all.
    assert!(!mix.forward(&x, &[1.0; 4], true).unwrap().has_graph());
}
