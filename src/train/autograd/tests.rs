//! Gradient checks against finite differences and hand-derived values.

use super::*;

fn t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_vec(shape, v.to_vec()).unwrap()
}

/// Central finite differences of `f` at `x` vs the recorded gradient.
fn check_grad(x0: &Tensor, f: impl Fn(&Var) -> Var) {
    let p = Param::new("x", x0.clone(), true);
    let loss = f(&p.var());
    let g = loss.backward().unwrap();
    let g = g.param(&p).expect("gradient").data().to_vec();
    let eps = 1e-2f32;
    for (i, &gi) in g.iter().enumerate() {
        let mut up = x0.clone();
        up.data_mut()[i] += eps;
        let mut dn = x0.clone();
        dn.data_mut()[i] -= eps;
        let fu = f(&Var::constant(up)).value().data()[0];
        let fd = f(&Var::constant(dn)).value().data()[0];
        let num = (fu - fd) / (2.0 * eps);
        assert!(
            (num - gi).abs() < 2e-2 * (1.0 + num.abs()),
            "element {i}: numeric {num}, recorded {gi}"
        );
    }
}

#[test]
fn derivatives_match_finite_differences() {
    let x = t(&[2, 3], &[0.3, -0.8, 1.2, 0.5, -0.1, 0.9]);
    let c = Var::constant(t(&[3], &[0.5, -1.5, 2.0]));
    let m = Var::constant(t(&[3, 2], &[0.1, 0.2, -0.3, 0.4, 0.5, -0.6]));
    check_grad(&x, |v| v.add(&c).unwrap().mul(v).unwrap().sum().unwrap());
    check_grad(&x, |v| v.sub(&c).unwrap().div(&c).unwrap().mean().unwrap());
    check_grad(&x, |v| c.div(&v.exp().unwrap()).unwrap().sum().unwrap());
    check_grad(&x, |v| v.matmul(&m).unwrap().tanh().unwrap().sum().unwrap());
    check_grad(&x, |v| v.sigmoid().unwrap().mul(&c).unwrap().sum().unwrap());
    check_grad(&x, |v| v.relu().unwrap().mul(&c).unwrap().sum().unwrap());
    check_grad(&x, |v| v.softmax().unwrap().mul(&c).unwrap().sum().unwrap());
    check_grad(&x, |v| v.exp().unwrap().ln().unwrap().mul(v).unwrap().sum().unwrap());
    check_grad(&x, |v| {
        m.matmul(v)
            .unwrap()
            .reshape(&[9])
            .unwrap()
            .mul(&Var::constant(t(
                &[9],
                &[1.0, -1.0, 2.0, 0.5, 0.3, -0.2, 1.5, 0.1, 0.7],
            )))
            .unwrap()
            .sum()
            .unwrap()
    });
    let x3 = t(
        &[2, 3, 2],
        &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2],
    );
    let w = Var::constant(t(&[2, 2], &[1.0, -2.0, 0.5, 3.0]));
    check_grad(&x3, |v| {
        v.masked_mean(&[1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum()
            .unwrap()
    });
    // A scalar broadcast against a matrix: its gradient is the sum.
    let s = t(&[1], &[0.7]);
    check_grad(&s, |v| v.mul(&Var::constant(x.clone())).unwrap().sum().unwrap());
}

#[test]
fn structural_ops_and_losses_match_finite_differences() {
    let x = t(
        &[2, 3, 2],
        &[0.3, -0.8, 1.2, 0.5, -0.1, 0.9, 0.7, -0.4, 0.2, 1.1, -0.6, 0.4],
    );
    let probe = Var::constant(t(
        &[2, 5, 2],
        &(0..20).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
    ));
    let other = Var::constant(t(&[2, 2, 2], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]));
    // concat along time (with a constant), then a weighted sum
    check_grad(&x, |v| {
        Var::concat(&[v.clone(), other.clone()], 1)
            .unwrap()
            .mul(&probe)
            .unwrap()
            .sum()
            .unwrap()
    });
    check_grad(&x, |v| v.slice(1, 1, 2).unwrap().tanh().unwrap().sum().unwrap());
    check_grad(&x, |v| v.slice(2, 1, 1).unwrap().exp().unwrap().sum().unwrap());
    // gather rows of a table, a row read twice
    let table = t(&[3, 2], &[0.5, -0.2, 0.1, 0.9, -0.7, 0.3]);
    let w = Var::constant(t(&[2, 2, 2], &[1.0, 2.0, -1.0, 0.5, 0.3, -0.8, 1.5, 0.2]));
    check_grad(&table, |v| {
        v.gather(&[2, 0, 2, 1], &[2, 2])
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum()
            .unwrap()
    });
    // conv1d, 'same' (k = 3: pad 1 + 1) and 'valid', gradients in x and w
    let k = t(
        &[3, 2, 2],
        &[0.2, -0.1, 0.4, 0.3, -0.5, 0.6, 0.1, 0.2, -0.3, 0.7, 0.5, -0.4],
    );
    let kv = Var::constant(k.clone());
    let xv = Var::constant(x.clone());
    let p3 = Var::constant(t(
        &[2, 3, 2],
        &[0.5, -1.0, 2.0, 0.3, -0.2, 1.0, 0.7, 0.1, -0.9, 0.4, 0.8, -0.6],
    ));
    check_grad(&x, |v| v.conv1d(&kv, 1, 1).unwrap().mul(&p3).unwrap().sum().unwrap());
    check_grad(&k, |w| xv.conv1d(w, 1, 1).unwrap().mul(&p3).unwrap().sum().unwrap());
    check_grad(&k, |w| xv.conv1d(w, 0, 0).unwrap().sigmoid().unwrap().sum().unwrap());
    // even kernel, Keras 'same' pads 0 left, 1 right
    let k2 = Var::constant(t(&[2, 2, 1], &[0.3, -0.2, 0.5, 0.1]));
    check_grad(&x, |v| v.conv1d(&k2, 0, 1).unwrap().tanh().unwrap().sum().unwrap());
    // global max pooling, with ties (two equal maxima share the gradient)
    let tied = t(&[1, 4, 2], &[1.0, 0.2, 3.0, -0.5, 3.0, 0.4, 2.0, 0.4]);
    let pw = Var::constant(t(&[1, 2], &[1.5, -2.0]));
    check_grad(&tied, |v| v.max_over_time().unwrap().mul(&pw).unwrap().sum().unwrap());
    check_grad(&x, |v| {
        v.conv1d(&kv, 1, 1)
            .unwrap()
            .relu()
            .unwrap()
            .max_over_time()
            .unwrap()
            .sum()
            .unwrap()
    });
    // binary cross-entropy from logits and from probabilities
    let z = t(&[4, 1], &[2.0, -1.0, 0.3, -3.0]);
    check_grad(&z, |v| v.bce_with_logits(&[1.0, 0.0, 1.0, 1.0]).unwrap());
    check_grad(&z, |v| v.sigmoid().unwrap().bce(&[1.0, 0.0, 1.0, 1.0]).unwrap());
    // broadcasting: (2, 3, 2) with (3, 1) and (2, 1, 2)
    let b1 = t(&[3, 1], &[0.5, -1.0, 2.0]);
    check_grad(&b1, |v| {
        Var::constant(x.clone())
            .mul(v)
            .unwrap()
            .div(&Var::constant(t(&[1], &[1.5])))
            .unwrap()
            .sum()
            .unwrap()
    });
    let b2 = t(&[2, 1, 2], &[0.5, -1.0, 2.0, 0.3]);
    check_grad(&b2, |v| {
        v.sub(&Var::constant(x.clone())).unwrap().tanh().unwrap().sum().unwrap()
    });
}

#[test]
fn losses_are_stable_and_check_labels() {
    let z = Var::constant(t(&[2], &[100.0, -100.0]));
    let l = z.bce_with_logits(&[1.0, 0.0]).unwrap().value().data()[0];
    assert!(l.is_finite() && l < 1e-6, "{l}");
    let p = Var::constant(t(&[2], &[1.0, 0.0]));
    assert!(
        p.bce(&[0.0, 1.0]).unwrap().value().data()[0].is_finite(),
        "clipped, not infinite"
    );
    assert!(z.bce_with_logits(&[1.0, 2.0]).is_err());
    assert!(z.bce_with_logits(&[1.0]).is_err());
    let x = Var::constant(t(&[1, 2, 1], &[1.0, 2.0]));
    assert!(x.slice(1, 1, 2).is_err());
    assert!(Var::constant(t(&[2, 2], &[0.0; 4])).gather(&[2], &[1]).is_err());
    assert!(
        x.conv1d(&Var::constant(t(&[3, 1, 1], &[1.0; 3])), 0, 0).is_err(),
        "kernel longer than input"
    );
}

#[test]
fn inference_records_nothing() {
    let a = Var::constant(t(&[2], &[1.0, 2.0]));
    let b = a.mul(&a).unwrap().exp().unwrap();
    assert!(!b.has_graph() && !b.requires_grad());
    let p = Param::new("w", t(&[2], &[1.0, 2.0]), false);
    assert!(
        !p.var().mul(&a).unwrap().has_graph(),
        "frozen parameters record nothing"
    );
    let q = Param::new("w", t(&[2], &[1.0, 2.0]), true);
    assert!(q.var().mul(&a).unwrap().has_graph());
}

#[test]
fn masked_mean_of_empty_row_is_zero_and_shapes_checked() {
    let x = Var::constant(t(&[2, 2, 1], &[1.0, 3.0, 5.0, 7.0]));
    assert_eq!(
        x.masked_mean(&[1.0, 1.0, 0.0, 0.0]).unwrap().value().data(),
        &[2.0, 0.0]
    );
    assert!(x.masked_mean(&[1.0]).is_err());
    assert!(x.add(&Var::constant(t(&[3, 1, 1], &[0.0; 3]))).is_err());
    assert!(x.backward().is_err(), "non-scalar loss");
    assert_eq!(broadcast_shape(&[2, 1, 3], &[4, 1]).unwrap(), vec![2, 4, 3]);
}

#[test]
fn a_parameter_used_twice_gets_the_sum() {
    let p = Param::new("p", t(&[1], &[3.0]), true);
    let loss = p.var().mul(&p.var()).unwrap().sum().unwrap(); // p^2
    assert_eq!(loss.backward().unwrap().param(&p).unwrap().data(), &[6.0]);
}
