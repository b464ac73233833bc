//! Cross-request batching: many threads (or tasks) submit requests, worker
//! threads run them together as one forward pass each.
//!
//! At batch 1 a forward pass reads every LSTM weight once per step, so it is
//! memory-bound; a batch of 32 reads them once for all 32. Stateless results
//! do not depend on the batch a sentence is in (bitwise), so batching across
//! requests costs nothing in accuracy: every caller gets exactly the bits
//! `ElmoModel::embed` would give its request alone.
//!
//! Rules:
//! * A request is never split: all its sentences go into one batch. A
//!   request larger than `max_batch_tokens`/`max_batch_sentences` runs as a
//!   batch of its own (the HTTP server bounds request sizes before this).
//! * Requests join a batch in arrival order (FIFO, no reordering by length:
//!   the first request waits at most `max_wait`, and none can be starved).
//! * The queue holds at most `queue_capacity` requests; `submit` beyond that
//!   returns [`Error::Overloaded`] instead of growing.
//! * No lock is held while the model computes; the queue's lock is held only
//!   to push, to pop a batch and to read the statistics.
//! * A [`Ticket`] dropped before its batch forms (a client gone away) is
//!   skipped: its sentences are never computed.

use crate::error::{Error, Result};
use crate::model::{BiLmOutput, ElmoModel};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the batcher forms batches and how much it queues.
#[derive(Debug, Clone, PartialEq)]
pub struct BatcherConfig {
    /// Padded positions per batch, at most: sentences x the longest
    /// sentence's tokens (what the forward pass computes).
    pub max_batch_tokens: usize,
    /// Sentences per batch, at most (1 turns batching off: one request at a
    /// time, the baseline of the load benchmark).
    pub max_batch_sentences: usize,
    /// How long the oldest queued request waits for others before its batch
    /// runs anyway. Zero (the default): a batch is whatever is queued when a
    /// worker is free. Under load requests pile up while a batch computes,
    /// so they batch anyway; an idle server adds no wait to a lone request.
    pub max_wait: Duration,
    /// Requests waiting, at most; beyond, `submit` says [`Error::Overloaded`].
    pub queue_capacity: usize,
    /// Worker threads, each running one batch at a time. One is usually
    /// best: each forward pass already uses every core (rayon).
    pub workers: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            max_batch_tokens: 4096,
            max_batch_sentences: 64,
            max_wait: Duration::ZERO,
            queue_capacity: 256,
            workers: 1,
        }
    }
}

/// A request's answer and what it cost.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// Exactly what `ElmoModel::embed` returns for the request alone:
    /// (n, L + 1, T, 2P) with T the request's own longest sentence.
    pub output: BiLmOutput,
    /// From `submit` until its batch started computing.
    pub queue_time: Duration,
    /// The forward pass of its batch.
    pub compute_time: Duration,
    /// Sentences in its batch (its own included).
    pub batch_sentences: usize,
}

/// Histogram bucket bounds of batch sizes, in sentences.
pub const BATCH_SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Histogram bucket bounds of queue and compute times, in seconds.
pub const TIME_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A cumulative histogram over fixed bucket bounds, as Prometheus keeps one.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds of the buckets (the `+Inf` bucket is `count`).
    pub bounds: Vec<f64>,
    /// Observations at or below each bound (cumulative).
    pub cumulative: Vec<u64>,
    /// Observations in all.
    pub count: u64,
    /// Sum of the observed values.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (increasing).
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            cumulative: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    /// Counts one observation of `v`.
    pub fn observe(&mut self, v: f64) {
        for (c, &b) in self.cumulative.iter_mut().zip(&self.bounds) {
            if v <= b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

/// What the batcher has done so far (a snapshot).
#[derive(Debug, Clone, PartialEq)]
pub struct BatcherStats {
    /// Requests waiting now.
    pub queued: usize,
    /// Requests taken by `submit`.
    pub submitted: u64,
    /// Requests refused because the queue was full.
    pub overloaded: u64,
    /// Requests whose ticket was dropped before their batch formed; never computed.
    pub cancelled: u64,
    /// Requests answered (with their output or their error).
    pub completed: u64,
    /// Batches run.
    pub batches: u64,
    /// Sentences computed.
    pub sentences: u64,
    /// Real tokens computed (padding not counted).
    pub tokens: u64,
    /// Sentences per batch.
    pub batch_sentences: Histogram,
    /// Seconds each request waited in the queue.
    pub queue_seconds: Histogram,
    /// Seconds each batch's forward pass took.
    pub compute_seconds: Histogram,
}

/// The one-shot slot a worker fills and a [`Ticket`] reads.
struct Slot {
    result: Option<Result<Embedded>>,
    waker: Option<Waker>,
}

struct Shared {
    slot: Mutex<Slot>,
    ready: Condvar,
    cancelled: AtomicBool,
}

impl Shared {
    fn fulfil(&self, r: Result<Embedded>) {
        let mut s = lock(&self.slot);
        s.result = Some(r);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        self.ready.notify_all();
    }
}

/// A queued request: wait for it (blocking) or `.await` it (any async
/// runtime: it is a plain `Future`, woken by the worker, so an async server
/// never blocks a runtime thread on it). Dropping it cancels the request if
/// its batch has not formed yet.
pub struct Ticket {
    shared: Arc<Shared>,
    done: bool,
}

impl Ticket {
    /// Blocks until the request's batch has run.
    pub fn wait(mut self) -> Result<Embedded> {
        let mut s = lock(&self.shared.slot);
        loop {
            if let Some(r) = s.result.take() {
                self.done = true;
                return r;
            }
            s = self.shared.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Future for Ticket {
    type Output = Result<Embedded>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = lock(&self.shared.slot);
        if let Some(r) = s.result.take() {
            drop(s);
            self.done = true;
            return Poll::Ready(r);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.shared.cancelled.store(true, Ordering::Release);
        }
    }
}

struct Request {
    sentences: Vec<Vec<String>>,
    /// The longest sentence, in tokens.
    longest: usize,
    enqueued: Instant,
    shared: Arc<Shared>,
}

struct Queue {
    requests: VecDeque<Request>,
    open: bool,
    stats: BatcherStats,
}

struct Inner {
    model: Arc<ElmoModel>,
    config: BatcherConfig,
    queue: Mutex<Queue>,
    /// Signalled on every push and on shutdown.
    work: Condvar,
}

/// Runs concurrent requests as batches on a shared model. `Send + Sync`:
/// share it with `Arc` or by reference between threads. Dropping it shuts
/// it down (see [`Batcher::shutdown`]).
pub struct Batcher {
    inner: Arc<Inner>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// Locks, ignoring poisoning: nothing in this module panics while holding a
/// lock, and a poisoned queue must not take the server down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Batcher {
    /// Starts `config.workers` worker threads on `model`. Every limit must
    /// be at least 1 ([`Error::Input`] otherwise).
    pub fn new(model: Arc<ElmoModel>, config: BatcherConfig) -> Result<Batcher> {
        for (v, name) in [
            (config.max_batch_tokens, "max_batch_tokens"),
            (config.max_batch_sentences, "max_batch_sentences"),
            (config.queue_capacity, "queue_capacity"),
            (config.workers, "workers"),
        ] {
            if v == 0 {
                return Err(Error::Input(format!("batcher: {name} must be at least 1")));
            }
        }
        let inner = Arc::new(Inner {
            model,
            queue: Mutex::new(Queue {
                // Grown as needed: `queue_capacity` is a bound, which may be
                // `usize::MAX`, not an allocation.
                requests: VecDeque::with_capacity(config.queue_capacity.min(1024)),
                open: true,
                stats: BatcherStats {
                    queued: 0,
                    submitted: 0,
                    overloaded: 0,
                    cancelled: 0,
                    completed: 0,
                    batches: 0,
                    sentences: 0,
                    tokens: 0,
                    batch_sentences: Histogram::new(&BATCH_SIZE_BUCKETS),
                    queue_seconds: Histogram::new(&TIME_BUCKETS),
                    compute_seconds: Histogram::new(&TIME_BUCKETS),
                },
            }),
            work: Condvar::new(),
            config,
        });
        let mut workers = Vec::with_capacity(inner.config.workers);
        for i in 0..inner.config.workers {
            let inner = Arc::clone(&inner);
            let h = std::thread::Builder::new()
                .name(format!("elmo-batcher-{i}"))
                .spawn(move || worker(&inner))
                .map_err(|e| Error::Serve(format!("cannot start a batcher thread: {e}")))?;
            workers.push(h);
        }
        Ok(Batcher {
            inner,
            workers: Mutex::new(workers),
        })
    }

    /// The model requests run on.
    pub fn model(&self) -> &Arc<ElmoModel> {
        &self.inner.model
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &BatcherConfig {
        &self.inner.config
    }

    /// Queues `sentences` (each a list of tokens) as one request. Returns at
    /// once: [`Error::Overloaded`] when `queue_capacity` requests are
    /// waiting, [`Error::ShutDown`] after [`Batcher::shutdown`].
    pub fn submit(&self, sentences: Vec<Vec<String>>) -> Result<Ticket> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                result: None,
                waker: None,
            }),
            ready: Condvar::new(),
            cancelled: AtomicBool::new(false),
        });
        let longest = sentences.iter().map(Vec::len).max().unwrap_or(0);
        {
            let mut q = lock(&self.inner.queue);
            if !q.open {
                return Err(Error::ShutDown);
            }
            // Requests whose callers went away hold no place: a client that
            // timed out and retries must not be refused for its own
            // abandoned request.
            if q.requests.len() >= self.inner.config.queue_capacity {
                drop_cancelled(&mut q);
            }
            if q.requests.len() >= self.inner.config.queue_capacity {
                q.stats.overloaded += 1;
                return Err(Error::Overloaded {
                    queued: q.requests.len(),
                    capacity: self.inner.config.queue_capacity,
                });
            }
            q.stats.submitted += 1;
            q.requests.push_back(Request {
                sentences,
                longest,
                enqueued: Instant::now(),
                shared: Arc::clone(&shared),
            });
        }
        self.inner.work.notify_one();
        Ok(Ticket { shared, done: false })
    }

    /// Submits and waits: the request's output, bitwise what
    /// `model.embed(&sentences)` gives.
    pub fn embed(&self, sentences: Vec<Vec<String>>) -> Result<BiLmOutput> {
        Ok(self.submit(sentences)?.wait()?.output)
    }

    /// A snapshot of the counters and histograms.
    pub fn stats(&self) -> BatcherStats {
        let mut q = lock(&self.inner.queue);
        // The queue length counts live requests only, as `submit` does.
        drop_cancelled(&mut q);
        let mut s = q.stats.clone();
        s.queued = q.requests.len();
        s
    }

    /// Stops taking requests, answers every request already queued, then
    /// joins the workers. Idempotent; also run on drop.
    pub fn shutdown(&self) {
        lock(&self.inner.queue).open = false;
        self.inner.work.notify_all();
        let handles: Vec<_> = lock(&self.workers).drain(..).collect();
        for h in handles {
            // A worker cannot panic on input (every model error becomes its
            // request's answer); if one did, the others still drain.
            let _ = h.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Takes the next batch off the queue (FIFO, cancelled requests dropped),
/// waiting for the first request and then up to `max_wait` for the batch to
/// fill. `None` when the batcher is shut down and the queue is empty.
fn next_batch(inner: &Inner) -> Option<Vec<Request>> {
    let cfg = &inner.config;
    let mut q = lock(&inner.queue);
    loop {
        drop_cancelled(&mut q);
        if q.requests.is_empty() {
            if !q.open {
                return None;
            }
            q = inner.work.wait(q).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        // Wait for more only while the queue does not already fill a batch,
        // the oldest request's deadline has not passed, and the batcher is
        // open (on shutdown everything queued runs at once).
        // A `max_wait` past what an `Instant` holds (`Duration::MAX`): no
        // deadline (an overflowing sum panicked the worker, and every
        // ticket then waited forever).
        let now = Instant::now();
        let left = q.requests[0]
            .enqueued
            .checked_add(cfg.max_wait)
            .map(|deadline| deadline.saturating_duration_since(now));
        if q.open && left != Some(Duration::ZERO) && !fills_batch(&q.requests, cfg) {
            q = match left {
                Some(t) => inner.work.wait_timeout(q, t).unwrap_or_else(|e| e.into_inner()).0,
                None => inner.work.wait(q).unwrap_or_else(|e| e.into_inner()),
            };
            continue;
        }
        let mut batch = Vec::new();
        let (mut n, mut longest) = (0usize, 0usize);
        while let Some(r) = q.requests.front() {
            let (n2, l2) = (n + r.sentences.len(), longest.max(r.longest));
            // The first request always goes, whatever its size.
            if !batch.is_empty() && (n2 > cfg.max_batch_sentences || n2 * l2 > cfg.max_batch_tokens) {
                break;
            }
            let r = q.requests.pop_front()?;
            if r.shared.cancelled.load(Ordering::Acquire) {
                q.stats.cancelled += 1;
                continue;
            }
            (n, longest) = (n2, l2);
            batch.push(r);
        }
        if batch.is_empty() {
            continue;
        }
        return Some(batch);
    }
}

/// Whether the queued requests already fill a batch (so waiting is useless).
fn fills_batch(requests: &VecDeque<Request>, cfg: &BatcherConfig) -> bool {
    let (mut n, mut longest) = (0usize, 0usize);
    for r in requests {
        n += r.sentences.len();
        longest = longest.max(r.longest);
        if n >= cfg.max_batch_sentences || n * longest >= cfg.max_batch_tokens {
            return true;
        }
    }
    false
}

fn drop_cancelled(q: &mut Queue) {
    let before = q.requests.len();
    q.requests.retain(|r| !r.shared.cancelled.load(Ordering::Acquire));
    q.stats.cancelled += (before - q.requests.len()) as u64;
}

fn worker(inner: &Inner) {
    while let Some(batch) = next_batch(inner) {
        run_batch(inner, batch);
    }
}

/// Runs one batch without any lock held and answers each request with its
/// own rows.
fn run_batch(inner: &Inner, batch: Vec<Request>) {
    let started = Instant::now();
    let all: Vec<&[String]> = batch
        .iter()
        .flat_map(|r| r.sentences.iter().map(Vec::as_slice))
        .collect();
    let n_sentences = all.len();
    let tokens: usize = all.iter().map(|s| s.len()).sum();
    let result = inner.model.embed(&all);
    let compute = started.elapsed();
    {
        let mut q = lock(&inner.queue);
        let s = &mut q.stats;
        s.batches += 1;
        s.sentences += n_sentences as u64;
        s.tokens += tokens as u64;
        s.batch_sentences.observe(n_sentences as f64);
        s.compute_seconds.observe(compute.as_secs_f64());
        for r in &batch {
            s.queue_seconds.observe((started - r.enqueued).as_secs_f64());
        }
        s.completed += batch.len() as u64;
    }
    match result {
        Ok(out) => {
            let mut row = 0;
            for r in batch {
                let n = r.sentences.len();
                let answer = rows(&out, row, n).map(|output| Embedded {
                    output,
                    queue_time: started - r.enqueued,
                    compute_time: compute,
                    batch_sentences: n_sentences,
                });
                row += n;
                r.shared.fulfil(answer);
            }
        }
        Err(_) if batch.len() > 1 => {
            // Which request failed is unknown: run each alone, so each gets
            // exactly the answer (output or error) it would get alone.
            for r in batch {
                let t0 = Instant::now();
                let answer = inner.model.embed(&r.sentences).map(|output| Embedded {
                    output,
                    queue_time: started - r.enqueued,
                    compute_time: compute + t0.elapsed(),
                    batch_sentences: r.sentences.len(),
                });
                r.shared.fulfil(answer);
            }
        }
        Err(e) => {
            if let Some(r) = batch.into_iter().next() {
                r.shared.fulfil(Err(e));
            }
        }
    }
}

/// Sentences `from .. from + n` of a batch's output, padded only to their
/// own longest sentence: (n, K, T', 2P), what the model gives them alone
/// (positions past a sentence's length are zero in both).
fn rows(out: &BiLmOutput, from: usize, n: usize) -> Result<BiLmOutput> {
    if from + n > out.lengths.len() {
        return Err(Error::Shape(format!(
            "batch output has {} sentences, asked for {from}..{}",
            out.lengths.len(),
            from + n
        )));
    }
    let lengths = out.lengths[from..from + n].to_vec();
    let t = lengths.iter().copied().max().unwrap_or(0);
    let (k, d) = (out.n_layers, out.dim);
    let mut data = vec![0f32; n * k * t * d];
    for (b, &len) in lengths.iter().enumerate() {
        for kk in 0..k {
            for j in 0..len {
                let dst = ((b * k + kk) * t + j) * d;
                data[dst..dst + d].copy_from_slice(out.vector(from + b, kk, j));
            }
        }
    }
    Ok(BiLmOutput {
        lengths,
        n_layers: k,
        max_len: t,
        dim: d,
        data,
    })
}
