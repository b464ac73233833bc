//! Optimizers: Adam with Keras' defaults and plain SGD.

use crate::train::autograd::{Grads, Param};
use std::collections::HashMap;

/// Updates parameters from their gradients.
pub trait Optimizer {
    /// One step over `params`; parameters without a gradient or not
    /// trainable are left alone.
    fn step(&mut self, params: &[Param], grads: &Grads);
}

/// Stochastic gradient descent: `p -= lr * g`.
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
}

impl Sgd {
    /// SGD with learning rate `lr` (Keras' default is 0.01).
    pub fn new(lr: f32) -> Self {
        Sgd { lr }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &[Param], grads: &Grads) {
        for p in params.iter().filter(|p| p.trainable()) {
            if let Some(g) = grads.param(p) {
                p.update(|v| v.iter_mut().zip(g.data()).for_each(|(x, g)| *x -= self.lr * g));
            }
        }
    }
}

/// Adam as Keras computes it: `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
/// `p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`.
#[derive(Debug, Clone)]
pub struct Adam {
    /// Learning rate (Keras: 0.001).
    pub lr: f32,
    /// First-moment decay (0.9).
    pub beta1: f32,
    /// Second-moment decay (0.999).
    pub beta2: f32,
    /// Added to the denominator (Keras: 1e-7).
    pub epsilon: f32,
    t: i32,
    moments: HashMap<String, (Vec<f32>, Vec<f32>)>,
}

impl Default for Adam {
    fn default() -> Self {
        Adam::new(0.001)
    }
}

impl Adam {
    /// Adam with Keras' defaults and learning rate `lr`.
    pub fn new(lr: f32) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            t: 0,
            moments: HashMap::new(),
        }
    }

    /// Steps taken so far.
    pub fn iterations(&self) -> i32 {
        self.t
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &[Param], grads: &Grads) {
        self.t += 1;
        let alpha = self.lr * (1.0 - self.beta2.powi(self.t)).sqrt() / (1.0 - self.beta1.powi(self.t));
        for (i, p) in params.iter().enumerate().filter(|(_, p)| p.trainable()) {
            let Some(g) = grads.param(p) else { continue };
            // Keyed by position and name: a model's parameter list is stable.
            let (m, v) = self
                .moments
                .entry(format!("{i}:{}", p.name()))
                .or_insert_with(|| (vec![0.0; g.len()], vec![0.0; g.len()]));
            let (b1, b2, eps) = (self.beta1, self.beta2, self.epsilon);
            p.update(|x| {
                for (((x, &g), m), v) in x.iter_mut().zip(g.data()).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *x -= alpha * *m / (v.sqrt() + eps);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;
    use crate::train::autograd::Var;

    fn quadratic_steps(opt: &mut dyn Optimizer, steps: usize) -> f32 {
        // loss = sum((p - 3)^2), minimum at p = 3.
        let p = Param::new("p", Tensor::from_vec(&[2], vec![0.0, 10.0]).unwrap(), true);
        let three = Var::constant(Tensor::from_vec(&[1], vec![3.0]).unwrap());
        let mut last = f32::INFINITY;
        for _ in 0..steps {
            let d = p.var().sub(&three).unwrap();
            let loss = d.mul(&d).unwrap().sum().unwrap();
            last = loss.value().data()[0];
            opt.step(std::slice::from_ref(&p), &loss.backward().unwrap());
        }
        last
    }

    #[test]
    fn both_optimizers_minimise_a_quadratic() {
        assert!(quadratic_steps(&mut Sgd::new(0.1), 100) < 1e-6);
        assert!(quadratic_steps(&mut Adam::new(0.1), 500) < 1e-3);
    }

    #[test]
    fn adam_first_step_is_lr_times_sign() {
        // With bias correction the first step is lr * g / (|g| + eps') = lr * sign(g).
        let p = Param::new("p", Tensor::from_vec(&[1], vec![1.0]).unwrap(), true);
        let loss = p
            .var()
            .mul(&Var::constant(Tensor::from_vec(&[1], vec![5.0]).unwrap()))
            .unwrap()
            .sum()
            .unwrap();
        let mut adam = Adam::default();
        adam.step(std::slice::from_ref(&p), &loss.backward().unwrap());
        assert!((p.value().data()[0] - (1.0 - 0.001)).abs() < 1e-6);
        // Frozen parameters are not touched.
        let q = Param::new("q", Tensor::from_vec(&[1], vec![1.0]).unwrap(), false);
        adam.step(std::slice::from_ref(&q), &loss.backward().unwrap());
        assert_eq!(q.value().data(), &[1.0]);
    }
}
