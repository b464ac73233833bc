//! Keras-style layers behind one trait: `Dense`, `Dropout`, `Conv1D`,
//! `GlobalMaxPooling1D`, `Embedding` (and `ElmoEmbedding`, in
//! [`crate::layer`]). Swapping `Embedding` for `ElmoEmbedding` is a one-line
//! change in a [`crate::train::Sequential`] model.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::autograd::{Param, Var};

/// What a forward pass needs besides its input.
pub struct Ctx<'a> {
    /// Training (dropout active) or inference.
    pub training: bool,
    /// Randomness for dropout.
    pub rng: &'a mut Rng,
}

/// A layer. Shapes exclude the batch dimension.
pub trait Layer: Send + Sync {
    /// Keras' class name, e.g. `"Dense"`.
    fn kind(&self) -> &'static str;
    /// Default name stem, e.g. `"dense"` (the model adds `_1`, `_2`, ...).
    fn stem(&self) -> &'static str;
    /// Creates the weights for `input` and returns the output shape, or an
    /// error that says which input shape was expected.
    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>>;
    /// Runs the layer on a batch.
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var>;
    /// Its parameters (trainable or not).
    fn params(&self) -> Vec<Param> {
        Vec::new()
    }
    /// Weights that are not [`Param`]s and never train (the biLM's).
    fn frozen_weight_count(&self) -> usize {
        0
    }
    /// For a layer ending in a sigmoid: the output before it, so a
    /// cross-entropy loss can be computed stably from logits.
    fn forward_logits(&self, _x: &Var, _ctx: &mut Ctx) -> Option<Result<Var>> {
        None
    }
}

/// Activation of `Dense` and `Conv1D`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// None (linear).
    Linear,
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
}

impl Act {
    fn apply(self, x: Var) -> Result<Var> {
        match self {
            Act::Linear => Ok(x),
            Act::Relu => x.relu(),
            Act::Sigmoid => x.sigmoid(),
            Act::Tanh => x.tanh(),
        }
    }
}

fn glorot(shape: &[usize], fan_in: usize, fan_out: usize, rng: &mut Rng) -> Result<Tensor> {
    let limit = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| rng.uniform_in(-limit, limit)).collect())
}

fn unbuilt(kind: &str) -> Error {
    Error::Shape(format!("{kind} used before the model was built"))
}

/// A fully connected layer: `act(x W + b)`, Glorot-uniform `W`, zero `b`.
pub struct Dense {
    units: usize,
    act: Act,
    w: Option<Param>,
    b: Option<Param>,
}

impl Dense {
    /// `Dense(units, activation)`.
    pub fn new(units: usize, act: Act) -> Self {
        Dense {
            units,
            act,
            w: None,
            b: None,
        }
    }

    fn linear(&self, x: &Var) -> Result<Var> {
        let (w, b) = (
            self.w.as_ref().ok_or_else(|| unbuilt("Dense"))?,
            self.b.as_ref().ok_or_else(|| unbuilt("Dense"))?,
        );
        x.matmul(&w.var())?.add(&b.var())
    }
}

impl Layer for Dense {
    fn kind(&self) -> &'static str {
        "Dense"
    }
    fn stem(&self) -> &'static str {
        "dense"
    }
    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        let &[f] = input else {
            return Err(Error::Shape(format!(
                "expects (batch, features), got (batch, {})",
                dims(input)
            )));
        };
        if self.units == 0 {
            return Err(Error::Shape("Dense needs at least one unit".into()));
        }
        self.w = Some(Param::new(
            "kernel",
            glorot(&[f, self.units], f, self.units, rng)?,
            true,
        ));
        self.b = Some(Param::new("bias", Tensor::zeros(&[self.units])?, true));
        Ok(vec![self.units])
    }
    fn forward(&self, x: &Var, _ctx: &mut Ctx) -> Result<Var> {
        self.act.apply(self.linear(x)?)
    }
    fn params(&self) -> Vec<Param> {
        self.w.iter().chain(&self.b).cloned().collect()
    }
    fn forward_logits(&self, x: &Var, _ctx: &mut Ctx) -> Option<Result<Var>> {
        (self.act == Act::Sigmoid).then(|| self.linear(x))
    }
}

/// Shape dims as Keras prints them.
pub fn dims(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

/// Inverted dropout: in training each value is kept with probability
/// `1 - rate` and scaled by `1 / (1 - rate)`; identity at inference.
pub struct Dropout {
    rate: f32,
}

impl Dropout {
    /// `Dropout(rate)`, `0 <= rate < 1`.
    pub fn new(rate: f32) -> Self {
        Dropout { rate }
    }
}

impl Layer for Dropout {
    fn kind(&self) -> &'static str {
        "Dropout"
    }
    fn stem(&self) -> &'static str {
        "dropout"
    }
    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        if !(0.0..1.0).contains(&self.rate) {
            return Err(Error::Shape(format!(
                "Dropout rate must be in [0, 1), got {}",
                self.rate
            )));
        }
        Ok(input.to_vec())
    }
    fn forward(&self, x: &Var, ctx: &mut Ctx) -> Result<Var> {
        if !ctx.training || self.rate == 0.0 {
            return Ok(x.clone());
        }
        let scale = 1.0 / (1.0 - self.rate);
        let mask: Vec<f32> = (0..x.value().len())
            .map(|_| if ctx.rng.uniform() >= self.rate { scale } else { 0.0 })
            .collect();
        // d(x * m) = m dx: the mask is a constant of the graph.
        x.mul(&Var::constant(Tensor::from_vec(x.shape(), mask)?))
    }
}

/// Padding of `Conv1D`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Output as long as the input (Keras pads `(k-1)/2` before, the rest after).
    Same,
    /// No padding: `T - k + 1` outputs.
    Valid,
}

/// 1-D convolution over time, stride 1: (T, C) -> (T', filters).
pub struct Conv1D {
    filters: usize,
    kernel: usize,
    padding: Padding,
    act: Act,
    w: Option<Param>,
    b: Option<Param>,
}

impl Conv1D {
    /// `Conv1D(filters, kernel_size, padding, activation)`.
    pub fn new(filters: usize, kernel: usize, padding: Padding, act: Act) -> Self {
        Conv1D {
            filters,
            kernel,
            padding,
            act,
            w: None,
            b: None,
        }
    }

    fn pads(&self) -> (usize, usize) {
        match self.padding {
            Padding::Same => ((self.kernel - 1) / 2, self.kernel - 1 - (self.kernel - 1) / 2),
            Padding::Valid => (0, 0),
        }
    }
}

impl Layer for Conv1D {
    fn kind(&self) -> &'static str {
        "Conv1D"
    }
    fn stem(&self) -> &'static str {
        "conv1d"
    }
    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        let &[t, c] = input else {
            return Err(Error::Shape(format!(
                "expects (batch, steps, channels), got (batch, {})",
                dims(input)
            )));
        };
        if self.filters == 0 || self.kernel == 0 {
            return Err(Error::Shape("Conv1D needs filters and kernel_size >= 1".into()));
        }
        let (l, r) = self.pads();
        if t + l + r < self.kernel {
            return Err(Error::Shape(format!(
                "kernel_size {} is longer than the {t} input steps",
                self.kernel
            )));
        }
        let (k, f) = (self.kernel, self.filters);
        self.w = Some(Param::new("kernel", glorot(&[k, c, f], k * c, k * f, rng)?, true));
        self.b = Some(Param::new("bias", Tensor::zeros(&[f])?, true));
        Ok(vec![t + l + r - k + 1, f])
    }
    fn forward(&self, x: &Var, _ctx: &mut Ctx) -> Result<Var> {
        let (w, b) = (
            self.w.as_ref().ok_or_else(|| unbuilt("Conv1D"))?,
            self.b.as_ref().ok_or_else(|| unbuilt("Conv1D"))?,
        );
        let (l, r) = self.pads();
        self.act.apply(x.conv1d(&w.var(), l, r)?.add(&b.var())?)
    }
    fn params(&self) -> Vec<Param> {
        self.w.iter().chain(&self.b).cloned().collect()
    }
}

/// Max over time: (T, C) -> (C).
pub struct GlobalMaxPooling1D;

impl Layer for GlobalMaxPooling1D {
    fn kind(&self) -> &'static str {
        "GlobalMaxPooling1D"
    }
    fn stem(&self) -> &'static str {
        "global_max_pooling1d"
    }
    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        match input {
            &[t, c] if t > 0 => Ok(vec![c]),
            _ => Err(Error::Shape(format!(
                "expects (batch, steps >= 1, channels), got (batch, {})",
                dims(input)
            ))),
        }
    }
    fn forward(&self, x: &Var, _ctx: &mut Ctx) -> Result<Var> {
        x.max_over_time()
    }
}

/// A trainable lookup table: ids (T) -> (T, dim), initialised uniform in
/// [-0.05, 0.05] as Keras does. Id 0 is an ordinary row (no masking).
pub struct Embedding {
    input_dim: usize,
    output_dim: usize,
    table: Option<Param>,
}

impl Embedding {
    /// `Embedding(input_dim, output_dim)`.
    pub fn new(input_dim: usize, output_dim: usize) -> Self {
        Embedding {
            input_dim,
            output_dim,
            table: None,
        }
    }
}

impl Layer for Embedding {
    fn kind(&self) -> &'static str {
        "Embedding"
    }
    fn stem(&self) -> &'static str {
        "embedding"
    }
    fn build(&mut self, input: &[usize], rng: &mut Rng) -> Result<Vec<usize>> {
        let &[t] = input else {
            return Err(Error::Shape(format!(
                "expects (batch, max_len) token ids, got (batch, {})",
                dims(input)
            )));
        };
        let (v, d) = (self.input_dim, self.output_dim);
        let init = (0..v * d).map(|_| rng.uniform_in(-0.05, 0.05)).collect();
        self.table = Some(Param::new("embeddings", Tensor::from_vec(&[v, d], init)?, true));
        Ok(vec![t, d])
    }
    fn forward(&self, x: &Var, _ctx: &mut Ctx) -> Result<Var> {
        let table = self.table.as_ref().ok_or_else(|| unbuilt("Embedding"))?;
        let ids = x
            .value()
            .data()
            .iter()
            .map(|&v| {
                if v.is_finite() && v.fract() == 0.0 && v >= 0.0 {
                    Ok(v as usize)
                } else {
                    Err(Error::Input(format!("token id {v} is not a non-negative whole number")))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        table.var().gather(&ids, x.shape())
    }
    fn params(&self) -> Vec<Param> {
        self.table.iter().cloned().collect()
    }
}
