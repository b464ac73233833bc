//! The LSTM state a stateful caller owns (bilm-tf's carried state).

use super::ElmoModel;
use crate::error::{Error, Result};

/// The LSTM state bilm-tf carries between batches in stateful mode: one row
/// per batch slot for each direction and layer.
///
/// Row b of a batch starts from row b and writes its final state back; rows
/// beyond the batch are kept. The caller owns it, so independent streams can
/// each have their own.
#[derive(Debug, Clone, PartialEq)]
pub struct LstmState {
    pub(super) capacity: usize,
    pub(super) n_layers: usize,
    pub(super) dim: usize,
    pub(super) proj: usize,
    pub(super) c: Vec<f32>, // (2, L, capacity, U)
    pub(super) h: Vec<f32>, // (2, L, capacity, P)
}

impl LstmState {
    /// A zero state with room for batches of up to `capacity` sentences.
    pub fn new(model: &ElmoModel, capacity: usize) -> Result<Self> {
        let o = &model.options().lstm;
        let cells = 2usize
            .checked_mul(o.n_layers)
            .and_then(|x| x.checked_mul(capacity))
            .and_then(|x| x.checked_mul(o.dim.max(o.projection_dim)))
            .filter(|&n| n <= 1 << 32)
            .ok_or_else(|| Error::State(format!("capacity {capacity} is too large")))?;
        let _ = cells;
        Ok(LstmState {
            capacity,
            n_layers: o.n_layers,
            dim: o.dim,
            proj: o.projection_dim,
            c: crate::tensor::try_zeroed(2 * o.n_layers * capacity * o.dim, "the LSTM state's cells")?,
            h: crate::tensor::try_zeroed(2 * o.n_layers * capacity * o.projection_dim, "the LSTM state's outputs")?,
        })
    }

    /// The largest batch this state can serve.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sets every row back to zero.
    pub fn reset(&mut self) {
        self.c.fill(0.0);
        self.h.fill(0.0);
    }

    /// Cell states, `(2, L, capacity, U)` row-major.
    pub fn c(&self) -> &[f32] {
        &self.c
    }

    /// Output states m, `(2, L, capacity, P)` row-major.
    pub fn h(&self) -> &[f32] {
        &self.h
    }

    pub(super) fn rows(&self, d: usize, l: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let blk = (d * self.n_layers + l) * self.capacity;
        (
            blk * self.dim..(blk + self.capacity) * self.dim,
            blk * self.proj..(blk + self.capacity) * self.proj,
        )
    }
}
