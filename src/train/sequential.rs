//! A Keras-style `Sequential` model: `add`, `build`, `compile`, `fit` with a
//! progress bar and per-epoch metrics, `evaluate`, `predict`, `summary`.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::autograd::{Param, Var};
use crate::train::nn::{Ctx, Layer, dims};
use crate::train::optim::Optimizer;
use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Losses `compile` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Mean binary cross-entropy; computed from logits when the last layer
    /// ends in a sigmoid (as Keras does), else from clipped probabilities.
    BinaryCrossentropy,
}

/// Metrics `compile` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Binary accuracy: prediction > 0.5 equals the label.
    Accuracy,
}

/// Arguments of [`Sequential::fit`].
pub struct FitOptions<'a> {
    /// Examples per gradient step.
    pub batch_size: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// `(x, y)` evaluated after each epoch.
    pub validation_data: Option<(&'a Tensor, &'a Tensor)>,
    /// Shuffle the training examples every epoch (Keras' default).
    pub shuffle: bool,
    /// Print the progress bar and per-epoch metrics.
    pub verbose: bool,
}

impl Default for FitOptions<'_> {
    fn default() -> Self {
        FitOptions {
            batch_size: 32,
            epochs: 1,
            validation_data: None,
            shuffle: true,
            verbose: true,
        }
    }
}

/// Per-epoch metrics of [`Sequential::fit`].
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Mean training loss.
    pub loss: Vec<f32>,
    /// Training accuracy (when compiled with it).
    pub accuracy: Vec<f32>,
    /// Validation loss.
    pub val_loss: Vec<f32>,
    /// Validation accuracy.
    pub val_accuracy: Vec<f32>,
    /// Wall time of each epoch in seconds.
    pub epoch_seconds: Vec<f64>,
}

struct Compiled {
    loss: Loss,
    optimizer: Box<dyn Optimizer + Send>,
    metrics: Vec<Metric>,
}

/// Layers applied one after the other.
pub struct Sequential {
    layers: Vec<(String, Box<dyn Layer>)>,
    shapes: Vec<Vec<usize>>, // output shape of each layer (no batch)
    input: Option<Vec<usize>>,
    rng: Rng,
    compiled: Option<Compiled>,
}

impl Sequential {
    /// An empty model; `seed` fixes initialisation, dropout and shuffling.
    pub fn new(seed: u64) -> Self {
        Sequential {
            layers: Vec::new(),
            shapes: Vec::new(),
            input: None,
            rng: Rng::new(seed),
            compiled: None,
        }
    }

    /// Appends a layer, named like Keras does (`dense`, `dense_1`, ...).
    pub fn add(&mut self, layer: impl Layer + 'static) -> &mut Self {
        let stem = layer.stem();
        let n = self.layers.iter().filter(|(_, l)| l.stem() == stem).count();
        let name = if n == 0 {
            stem.to_string()
        } else {
            format!("{stem}_{n}")
        };
        self.layers.push((name, Box::new(layer)));
        self.input = None;
        self
    }

    /// Creates every layer's weights for inputs of shape `input` (without the
    /// batch); a layer that cannot take its predecessor's output is an error
    /// naming both layers and shapes.
    pub fn build(&mut self, input: &[usize]) -> Result<()> {
        if self.layers.is_empty() {
            return Err(Error::Shape("the model has no layers".into()));
        }
        let mut shape = input.to_vec();
        let mut shapes = Vec::new();
        for i in 0..self.layers.len() {
            let (prev, prev_shape) = match i {
                0 => ("the input".to_string(), input),
                _ => (
                    format!("'{}'", self.layers[i - 1].0),
                    shapes.last().map(Vec::as_slice).unwrap_or(input),
                ),
            };
            let (name, layer) = &mut self.layers[i];
            shape = layer.build(&shape, &mut self.rng).map_err(|e| {
                Error::Shape(format!(
                    "layer '{name}' ({}) cannot take {prev} of shape (batch, {}): {}",
                    layer.kind(),
                    dims(prev_shape),
                    e.to_string().trim_start_matches("shape mismatch: ")
                ))
            })?;
            shapes.push(shape.clone());
        }
        self.shapes = shapes;
        self.input = Some(input.to_vec());
        Ok(())
    }

    /// Sets the loss, optimizer and metrics.
    pub fn compile(&mut self, loss: Loss, optimizer: impl Optimizer + Send + 'static, metrics: &[Metric]) {
        self.compiled = Some(Compiled {
            loss,
            optimizer: Box::new(optimizer),
            metrics: metrics.to_vec(),
        });
    }

    /// Every parameter of every layer.
    pub fn params(&self) -> Vec<Param> {
        self.layers.iter().flat_map(|(_, l)| l.params()).collect()
    }

    /// The layers' names, output shapes and parameter counts, as Keras prints them.
    pub fn summary(&self) -> Result<String> {
        if self.input.is_none() {
            return Err(Error::Shape("build the model before asking for its summary".into()));
        }
        let mut s = String::from("Model: \"sequential\"\n");
        let rule = "_".repeat(72);
        s += &format!(
            "{rule}\n {:<34}{:<24}{:>10}\n{}\n",
            "Layer (type)",
            "Output Shape",
            "Param #",
            "=".repeat(72)
        );
        let (mut trainable, mut frozen) = (0usize, 0usize);
        for ((name, layer), shape) in self.layers.iter().zip(&self.shapes) {
            let (mut t, mut f) = (0usize, layer.frozen_weight_count());
            for p in layer.params() {
                if p.trainable() {
                    t += p.value().len();
                } else {
                    f += p.value().len();
                }
            }
            trainable += t;
            frozen += f;
            let label = format!("{name} ({})", layer.kind());
            s += &format!(" {label:<34}{:<24}{:>10}\n", format!("(None, {})", dims(shape)), t + f);
        }
        s += &format!("{}\n", "=".repeat(72));
        s += &format!(
            "Total params: {}\nTrainable params: {}\nNon-trainable params: {}\n{rule}\n",
            group(trainable + frozen),
            group(trainable),
            group(frozen)
        );
        Ok(s)
    }

    fn check_data(&self, x: &Tensor, y: Option<&Tensor>) -> Result<usize> {
        let input = self
            .input
            .as_ref()
            .ok_or_else(|| Error::Shape("build the model first".into()))?;
        let n = *x
            .shape()
            .first()
            .ok_or_else(|| Error::Input("x must have a batch dimension".into()))?;
        if x.shape()[1..] != input[..] {
            return Err(Error::Input(format!(
                "x has shape {:?}, the model was built for (batch, {})",
                x.shape(),
                dims(input)
            )));
        }
        if n == 0 {
            return Err(Error::Input("the dataset is empty".into()));
        }
        if let Some(i) = x.data().iter().position(|v| !v.is_finite()) {
            let row: usize = input.iter().product();
            return Err(Error::Input(format!(
                "x holds a non-finite value in example {}",
                i / row.max(1)
            )));
        }
        if let Some(y) = y {
            if y.len() != n {
                return Err(Error::Input(format!("{n} examples but {} labels", y.len())));
            }
            if let Some(bad) = y.data().iter().find(|&&l| l != 0.0 && l != 1.0) {
                return Err(Error::Input(format!(
                    "binary cross-entropy needs labels 0 or 1, got {bad}"
                )));
            }
        }
        Ok(n)
    }

    /// Forward on a batch: (predictions, loss) with the loss only when
    /// labels are given.
    fn step(&mut self, x: Tensor, labels: Option<&[f32]>, training: bool) -> Result<(Var, Option<Var>)> {
        let loss_kind = self.compiled.as_ref().map(|c| c.loss);
        let mut ctx = Ctx {
            training,
            rng: &mut self.rng,
        };
        let mut h = Var::constant(x);
        let last = self.layers.len() - 1;
        for (i, (_, layer)) in self.layers.iter().enumerate() {
            if i == last
                && let Some(z) = layer.forward_logits(&h, &mut ctx)
            {
                let z = z?;
                let loss = match (labels, loss_kind) {
                    (Some(y), Some(Loss::BinaryCrossentropy)) => Some(z.bce_with_logits(y)?),
                    _ => None,
                };
                return Ok((z.sigmoid()?, loss));
            }
            h = layer.forward(&h, &mut ctx)?;
        }
        let loss = match (labels, loss_kind) {
            (Some(y), Some(Loss::BinaryCrossentropy)) => Some(h.bce(y)?),
            _ => None,
        };
        Ok((h, loss))
    }

    /// Trains on `(x, y)`; prints Keras-style progress when `verbose`.
    pub fn fit(&mut self, x: &Tensor, y: &Tensor, opts: &FitOptions) -> Result<History> {
        let n = self.check_data(x, Some(y))?;
        if self.compiled.is_none() {
            return Err(Error::Input("compile the model before fit".into()));
        }
        if opts.batch_size == 0 {
            return Err(Error::Input("batch_size must be at least 1".into()));
        }
        if let Some((vx, vy)) = opts.validation_data {
            self.check_data(vx, Some(vy))?;
        }
        let params: Vec<Param> = self.params().into_iter().filter(Param::trainable).collect();
        let with_acc = self
            .compiled
            .as_ref()
            .is_some_and(|c| c.metrics.contains(&Metric::Accuracy));
        let steps = n.div_ceil(opts.batch_size);
        let tty = std::io::stdout().is_terminal();
        let mut history = History::default();
        for epoch in 0..opts.epochs {
            if opts.verbose {
                println!("Epoch {}/{}", epoch + 1, opts.epochs);
            }
            let t0 = Instant::now();
            let mut order: Vec<usize> = (0..n).collect();
            if opts.shuffle {
                self.rng.shuffle(&mut order);
            }
            let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
            for (s, idx) in order.chunks(opts.batch_size).enumerate() {
                let (bx, by) = (take_rows(x, idx)?, take_rows(y, idx)?);
                let (pred, loss) = self.step(bx, Some(by.data()), true)?;
                let loss = loss.expect("labels given");
                let lv = loss.value().data()[0];
                if !lv.is_finite() {
                    return Err(Error::Input(format!(
                        "the loss became {lv} at epoch {}, step {}",
                        epoch + 1,
                        s + 1
                    )));
                }
                let grads = loss.backward()?;
                let c = self.compiled.as_mut().expect("compiled");
                c.optimizer.step(&params, &grads);
                loss_sum += lv as f64 * idx.len() as f64;
                correct += count_correct(pred.value(), by.data());
                seen += idx.len();
                if opts.verbose && (tty || s + 1 == steps) {
                    let line = progress(
                        s + 1,
                        steps,
                        t0.elapsed().as_secs_f64(),
                        loss_sum / seen as f64,
                        with_acc.then(|| correct as f64 / seen as f64),
                    );
                    print!("\r{line}");
                    let _ = std::io::stdout().flush();
                }
            }
            history.loss.push((loss_sum / n as f64) as f32);
            history.accuracy.push(correct as f32 / n as f32);
            let mut tail = String::new();
            if let Some((vx, vy)) = opts.validation_data {
                let (vl, va) = self.evaluate_quiet(vx, vy, opts.batch_size)?;
                history.val_loss.push(vl);
                history.val_accuracy.push(va);
                tail = format!(" - val_loss: {vl:.4}");
                if with_acc {
                    tail += &format!(" - val_accuracy: {va:.4}");
                }
            }
            history.epoch_seconds.push(t0.elapsed().as_secs_f64());
            if opts.verbose {
                println!("{tail}");
            }
        }
        Ok(history)
    }

    fn evaluate_quiet(&mut self, x: &Tensor, y: &Tensor, batch_size: usize) -> Result<(f32, f32)> {
        let n = self.check_data(x, Some(y))?;
        let (mut loss_sum, mut correct) = (0f64, 0usize);
        let idx: Vec<usize> = (0..n).collect();
        for chunk in idx.chunks(batch_size.max(1)) {
            let (bx, by) = (take_rows(x, chunk)?, take_rows(y, chunk)?);
            let (pred, loss) = self.step(bx, Some(by.data()), false)?;
            loss_sum += loss.expect("labels given").value().data()[0] as f64 * chunk.len() as f64;
            correct += count_correct(pred.value(), by.data());
        }
        Ok(((loss_sum / n as f64) as f32, correct as f32 / n as f32))
    }

    /// Loss and accuracy on `(x, y)`, without training.
    pub fn evaluate(&mut self, x: &Tensor, y: &Tensor, batch_size: usize) -> Result<(f32, f32)> {
        if self.compiled.is_none() {
            return Err(Error::Input("compile the model before evaluate".into()));
        }
        self.evaluate_quiet(x, y, batch_size)
    }

    /// The model's outputs for `x`, in batches.
    pub fn predict(&mut self, x: &Tensor, batch_size: usize) -> Result<Tensor> {
        let n = self.check_data(x, None)?;
        let idx: Vec<usize> = (0..n).collect();
        let mut out = Vec::new();
        let mut shape = Vec::new();
        for chunk in idx.chunks(batch_size.max(1)) {
            let (pred, _) = self.step(take_rows(x, chunk)?, None, false)?;
            shape = pred.shape().to_vec();
            out.extend_from_slice(pred.value().data());
        }
        shape[0] = n;
        Tensor::from_vec(&shape, out)
    }
}

/// Rows `idx` of a tensor whose first axis is the batch.
fn take_rows(x: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let row: usize = x.shape()[1..].iter().product();
    let d = x.data();
    let mut v = Vec::with_capacity(idx.len() * row);
    for &i in idx {
        v.extend_from_slice(&d[i * row..(i + 1) * row]);
    }
    let mut shape = x.shape().to_vec();
    shape[0] = idx.len();
    Tensor::from_vec(&shape, v)
}

fn count_correct(pred: &Tensor, labels: &[f32]) -> usize {
    pred.data()
        .iter()
        .zip(labels)
        .filter(|(p, l)| (**p > 0.5) == (**l > 0.5))
        .count()
}

fn progress(step: usize, steps: usize, secs: f64, loss: f64, acc: Option<f64>) -> String {
    let width = 30;
    let done = width * step / steps;
    let bar = if step == steps {
        "=".repeat(width)
    } else {
        format!("{}>{}", "=".repeat(done), ".".repeat(width - done - 1))
    };
    let per_step = secs * 1000.0 / step as f64;
    let mut s = format!(
        "{step}/{steps} [{bar}] - {:.0}s {per_step:.0}ms/step - loss: {loss:.4}",
        secs
    );
    if let Some(a) = acc {
        s += &format!(" - accuracy: {a:.4}");
    }
    s
}

/// 1234567 -> "1,234,567".
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
