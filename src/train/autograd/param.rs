//! Parameters (named, shared, trainable tensors) and the gradients
//! [`Var::backward`] returns.

use super::{Node, Var, fresh_id};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Gradients by node, from [`Var::backward`].
#[derive(Debug, Default)]
pub struct Grads(pub(super) HashMap<u64, Tensor>);

impl Grads {
    pub(super) fn accumulate(&mut self, id: u64, g: Tensor) -> Result<()> {
        match self.0.get_mut(&id) {
            Some(acc) => {
                for (a, b) in acc.data_mut().iter_mut().zip(g.data()) {
                    *a += b;
                }
            }
            None => {
                self.0.insert(id, g);
            }
        }
        Ok(())
    }

    /// The gradient of a node (`None` if no gradient reached it).
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.0.get(&v.0.id)
    }

    /// The gradient of a parameter, summed over all its uses.
    pub fn param(&self, p: &Param) -> Option<&Tensor> {
        self.0.get(&p.id)
    }
}

/// A named, shared, mutable tensor that training updates: model weights and
/// the mix parameters. Clones share the value.
#[derive(Debug, Clone)]
pub struct Param {
    id: u64,
    name: String,
    trainable: bool,
    value: Arc<RwLock<Tensor>>,
}

impl Param {
    /// A new parameter.
    pub fn new(name: impl Into<String>, value: Tensor, trainable: bool) -> Param {
        Param {
            id: fresh_id(),
            name: name.into(),
            trainable,
            value: Arc::new(RwLock::new(value)),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether optimizers update it and gradients are recorded for it.
    pub fn trainable(&self) -> bool {
        self.trainable
    }

    /// A copy of the current value.
    pub fn value(&self) -> Tensor {
        self.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the value; the shape must stay the same.
    pub fn set(&self, value: Tensor) -> Result<()> {
        let mut v = self.value.write().unwrap_or_else(|e| e.into_inner());
        if v.shape() != value.shape() {
            return Err(Error::Shape(format!(
                "parameter '{}' has shape {:?}, cannot set {:?}",
                self.name,
                v.shape(),
                value.shape()
            )));
        }
        *v = value;
        Ok(())
    }

    /// Applies `f` to the value in place (used by optimizers).
    pub fn update(&self, f: impl FnOnce(&mut [f32])) {
        let mut v = self.value.write().unwrap_or_else(|e| e.into_inner());
        f(v.data_mut());
    }

    /// The parameter as a graph leaf: gradients are recorded for it only when
    /// it is trainable. Its gradient is found with [`Grads::param`].
    pub fn var(&self) -> Var {
        Var(Arc::new(Node {
            id: self.id,
            value: self.value(),
            requires_grad: self.trainable,
            op: None,
        }))
    }
}
