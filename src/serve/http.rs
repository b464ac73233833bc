//! The HTTP embedding server of `elmo serve` (feature `server`): axum on
//! tokio, in front of a [`Batcher`].
//!
//! Endpoints (request and response bodies JSON):
//! * `POST /embed` `{"inputs": str | [str] | [[token]], "mix_weights"?, "gamma"?, "normalize"?}`
//!   -> `[[f32; 2P]]`, one pooled (`default`) vector per input, as
//!   text-embeddings-inference's `/embed` (strings split on whitespace,
//!   token lists taken as they are; `normalize` defaults to false: ELMo's
//!   vectors are not unit vectors).
//! * `POST /embed_all` with `"output": "all" | "elmo" | "top" | "word_emb" | "lstm_outputsK" | "default"`
//!   (default `all`) -> per input `(L + 1, n, 2P)` for `all`, `(2P,)` for
//!   `default`, else `(n, dim)`.
//! * `POST /v1/embeddings` in OpenAI's shape (`input`, `model`;
//!   `data[i].embedding`, `index`, `usage`), pooled vectors (`mix_weights`
//!   and `gamma` accepted too).
//! * `GET /health`, `GET /info` (model, options, limits), `GET /metrics`
//!   (Prometheus text).
//!
//! Errors are `{"error": ..., "error_type": ...}` (text-embeddings-inference's
//! shape): 400 malformed JSON, 413 body or request too large, 422 wrong
//! types or values, 429 overloaded (with `Retry-After`), 503 shutting down.

use super::batcher::{Batcher, BatcherConfig, Embedded, Histogram};
use crate::error::{Error, Result};
use crate::layer::mix::{MixConfig, ScalarMix};
use crate::layer::{OutputMode, select_output, starting_mix};
use crate::model::{BiLmOutput, ElmoModel};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one request may ask for, and how many may be in the server at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Request body bytes, at most (413 beyond).
    pub max_body_bytes: usize,
    /// Inputs (sentences) per request, at most (413 beyond).
    pub max_inputs: usize,
    /// Tokens per request, all inputs together, at most (413 beyond).
    pub max_tokens_per_request: usize,
    /// Tokens per input, at most (422 beyond).
    pub max_tokens_per_sentence: usize,
    /// Requests being handled at once, at most (429 beyond).
    pub max_concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 2 << 20,
            max_inputs: 256,
            max_tokens_per_request: 2048,
            max_tokens_per_sentence: 512,
            max_concurrent: 512,
        }
    }
}

/// Everything `elmo serve` is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The name `/info` and `/v1/embeddings` report (the model file's name).
    pub model_name: String,
    /// Request limits.
    pub limits: Limits,
    /// How requests are batched.
    pub batcher: BatcherConfig,
    /// After SIGTERM/Ctrl-C, how long accepted requests may take to finish
    /// before the server exits anyway (with an error).
    pub drain_timeout: Duration,
    /// How long a client may take to send a request's headers, and then its
    /// body (each): a connection whose headers have not arrived is closed,
    /// a body that has not is answered 408. Bounds how long a stalled or
    /// malicious client holds one of the `max_concurrent` places; idle
    /// keep-alive connections are closed after it too.
    pub read_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_name: "elmo".into(),
            limits: Limits::default(),
            batcher: BatcherConfig::default(),
            drain_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerConfig {
    /// Every limit and timeout must be at least 1 (a server that refuses
    /// every request is a typo, not a configuration): [`Error::Input`]
    /// naming the first that is not. The batcher's limits are checked by
    /// [`Batcher::new`].
    pub fn check(&self) -> Result<()> {
        let l = &self.limits;
        for (v, name) in [
            (l.max_body_bytes, "max_body_bytes"),
            (l.max_inputs, "max_inputs"),
            (l.max_tokens_per_request, "max_tokens_per_request"),
            (l.max_tokens_per_sentence, "max_tokens_per_sentence"),
            (l.max_concurrent, "max_concurrent"),
        ] {
            if v == 0 {
                return Err(Error::Input(format!("server: {name} must be at least 1")));
            }
        }
        if self.read_timeout.is_zero() {
            return Err(Error::Input("server: read_timeout must be above 0".into()));
        }
        Ok(())
    }
}

/// What the handlers share.
struct AppState {
    batcher: Arc<Batcher>,
    config: ServerConfig,
    /// Free places under `max_concurrent`.
    permits: Arc<tokio::sync::Semaphore>,
    metrics: Metrics,
}

/// The HTTP side's counters (the batcher keeps its own).
struct Metrics {
    /// Requests answered, by (path, status). Paths are the known routes or
    /// "other", so a scan of random URLs cannot grow this map.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    in_flight: AtomicU64,
    /// Seconds from the request's arrival to its response, every request.
    duration: Mutex<Histogram>,
}

/// What a handler tells the log line and the metrics about its request.
#[derive(Debug, Clone, Copy, Default)]
struct RequestLog {
    tokens: usize,
    queue_ms: f64,
    compute_ms: f64,
}

const ROUTES: [&str; 6] = ["/embed", "/embed_all", "/v1/embeddings", "/health", "/info", "/metrics"];

fn route_label(path: &str) -> &'static str {
    ROUTES.iter().find(|&&r| r == path).copied().unwrap_or("other")
}

/// A request refused or failed: its status and `{"error", "error_type"}`.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    msg: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            msg: msg.into(),
        }
    }
    fn validation(status: StatusCode, msg: impl Into<String>) -> Self {
        Self::new(status, "Validation", msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.msg, "error_type": self.kind}).to_string();
        let mut r = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS || self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Overloaded { .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Overloaded", e.to_string()),
            Error::ShutDown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unhealthy", e.to_string()),
            Error::Input(_) => ApiError::validation(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Backend", e.to_string()),
        }
    }
}

fn json_response(body: &impl serde::Serialize, log: RequestLog) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
            r.extensions_mut().insert(log);
            r
        }
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Backend", e.to_string()).into_response(),
    }
}

/// `inputs`/`input` as clients send it.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "the input must be a string, a list of strings or a list of token lists (lists of strings)"
)]
enum Inputs {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<Vec<String>>),
}

impl Inputs {
    /// Sentences as token lists: strings split on whitespace.
    fn sentences(self) -> Vec<Vec<String>> {
        let split = |s: String| s.split_whitespace().map(str::to_string).collect();
        match self {
            Inputs::One(s) => vec![split(s)],
            Inputs::Many(v) => v.into_iter().map(split).collect(),
            Inputs::Tokens(v) => v,
        }
    }
}

#[derive(Deserialize)]
struct EmbedRequest {
    inputs: Inputs,
    #[serde(default)]
    mix_weights: Option<Vec<f32>>,
    #[serde(default)]
    gamma: Option<f32>,
    #[serde(default)]
    normalize: bool,
}

#[derive(Deserialize)]
struct EmbedAllRequest {
    inputs: Inputs,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    mix_weights: Option<Vec<f32>>,
    #[serde(default)]
    gamma: Option<f32>,
}

#[derive(Deserialize)]
struct OpenAiRequest {
    input: Inputs,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
    /// Not OpenAI's: the mix, as in `/embed`.
    #[serde(default)]
    mix_weights: Option<Vec<f32>>,
    #[serde(default)]
    gamma: Option<f32>,
}

/// Reads the body (at most `max_body_bytes`) and parses it: 413 when too
/// large, 400 when not JSON, 422 when JSON of the wrong shape.
async fn read_json<T: serde::de::DeserializeOwned>(state: &AppState, req: Request) -> std::result::Result<T, ApiError> {
    let limit = state.config.limits.max_body_bytes;
    let too_large = || {
        ApiError::validation(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )
    };
    // A declared length over the limit is refused before reading anything.
    if let Some(n) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && n > limit as u64
    {
        return Err(too_large());
    }
    // A body that stalls holds a `max_concurrent` place: bounded in time.
    let timeout = state.config.read_timeout;
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(req.into_body(), limit));
    let bytes = match read.await {
        Err(_) => {
            return Err(ApiError::validation(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {:.0} s", timeout.as_secs_f64()),
            ));
        }
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.into_inner().is::<http_body_util::LengthLimitError>();
            return Err(if over {
                too_large()
            } else {
                ApiError::validation(StatusCode::BAD_REQUEST, "cannot read the request body")
            });
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::validation(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid request: {e}")),
            _ => ApiError::validation(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
        }
    })
}

/// Checks the sentences against the limits: 422 for no input or an input
/// too long, 413 for too many inputs or tokens. Returns the token count.
fn check_limits(limits: &Limits, sentences: &[Vec<String>]) -> std::result::Result<usize, ApiError> {
    if sentences.is_empty() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Empty", "no inputs"));
    }
    if sentences.len() > limits.max_inputs {
        return Err(ApiError::validation(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} inputs, at most {} per request", sentences.len(), limits.max_inputs),
        ));
    }
    if let Some((i, s)) = sentences
        .iter()
        .enumerate()
        .find(|(_, s)| s.len() > limits.max_tokens_per_sentence)
    {
        return Err(ApiError::validation(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "input {i} has {} tokens, at most {} per input",
                s.len(),
                limits.max_tokens_per_sentence
            ),
        ));
    }
    let tokens: usize = sentences.iter().map(Vec::len).sum();
    if tokens > limits.max_tokens_per_request {
        return Err(ApiError::validation(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{tokens} tokens, at most {} per request", limits.max_tokens_per_request),
        ));
    }
    Ok(tokens)
}

fn mix_for(model: &ElmoModel, w: Option<Vec<f32>>, gamma: Option<f32>) -> std::result::Result<ScalarMix, ApiError> {
    starting_mix(model, w, gamma, MixConfig::default(), false)
        .map_err(|e| ApiError::validation(StatusCode::UNPROCESSABLE_ENTITY, format!("mix_weights/gamma: {e}")))
}

/// Queues the sentences and waits for them (without blocking a runtime
/// thread). Dropping this future (the client went away) cancels the request
/// if its batch has not formed.
async fn run(
    state: &AppState,
    sentences: Vec<Vec<String>>,
    tokens: usize,
) -> std::result::Result<(Embedded, RequestLog), ApiError> {
    let e = state.batcher.submit(sentences)?.await?;
    let log = RequestLog {
        tokens,
        queue_ms: e.queue_time.as_secs_f64() * 1e3,
        compute_ms: e.compute_time.as_secs_f64() * 1e3,
    };
    Ok((e, log))
}

/// JSON has no Inf or NaN (serde_json would write `null`): an output that
/// overflowed float32 (a finite but huge `gamma` or mix weight) is refused.
fn finite(data: &[f32]) -> Result<()> {
    if data.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(Error::Input(
            "the output overflows float32 (are mix_weights or gamma too large?)".into(),
        ))
    }
}

/// The pooled (`default`) vector of each sentence, (n, 2P).
fn pooled(out: BiLmOutput, mix: &ScalarMix, normalize: bool) -> Result<Vec<Vec<f32>>> {
    let d = out.dim;
    let t = select_output(out, OutputMode::Default, mix)?; // (n, 2P)
    finite(t.data())?;
    Ok(t.data()
        .chunks_exact(d.max(1))
        .map(|v| {
            let mut v = v.to_vec();
            if normalize {
                // In f64: the squares of finite f32 values can overflow f32.
                let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
                }
            }
            v
        })
        .collect())
}

async fn embed(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let go = async {
        let r: EmbedRequest = read_json(&state, req).await?;
        let sentences = r.inputs.sentences();
        let tokens = check_limits(&state.config.limits, &sentences)?;
        let mix = mix_for(state.batcher.model(), r.mix_weights, r.gamma)?;
        let (e, log) = run(&state, sentences, tokens).await?;
        let v = pooled(e.output, &mix, r.normalize)?;
        Ok::<_, ApiError>(json_response(&v, log))
    };
    go.await.unwrap_or_else(IntoResponse::into_response)
}

/// Per input: `(L + 1, n, 2P)` for `all`, `(2P,)` for `default`, else `(n, dim)`.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum PerInput {
    Layers(Vec<Vec<Vec<f32>>>),
    Rows(Vec<Vec<f32>>),
    Vector(Vec<f32>),
}

fn per_input(out: BiLmOutput, mode: OutputMode, mix: &ScalarMix) -> Result<Vec<PerInput>> {
    let lengths = out.lengths.clone();
    let (k, t) = (out.n_layers, out.max_len);
    let tensor = select_output(out, mode, mix)?;
    let data = tensor.data();
    finite(data)?;
    Ok(match mode {
        OutputMode::All => {
            // (n, K, T, 2P): each sentence's layers cut to its length.
            let d = tensor.shape()[3];
            lengths
                .iter()
                .enumerate()
                .map(|(b, &len)| {
                    PerInput::Layers(
                        (0..k)
                            .map(|kk| {
                                (0..len)
                                    .map(|j| data[((b * k + kk) * t + j) * d..][..d].to_vec())
                                    .collect()
                            })
                            .collect(),
                    )
                })
                .collect()
        }
        OutputMode::Default => {
            let d = tensor.shape()[1];
            data.chunks_exact(d.max(1))
                .map(|v| PerInput::Vector(v.to_vec()))
                .collect()
        }
        _ => {
            // (n, T, dim)
            let d = tensor.shape()[2];
            lengths
                .iter()
                .enumerate()
                .map(|(b, &len)| PerInput::Rows((0..len).map(|j| data[(b * t + j) * d..][..d].to_vec()).collect()))
                .collect()
        }
    })
}

async fn embed_all(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let go = async {
        let r: EmbedAllRequest = read_json(&state, req).await?;
        let model = state.batcher.model();
        let n_lstm = model.options().n_output_layers() - 1;
        let mode = match r.output.as_deref().unwrap_or("all") {
            "top" => OutputMode::LstmOutputs(n_lstm),
            other => other.parse::<OutputMode>().map_err(|_| {
                ApiError::validation(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("output '{other}': expected all, default, elmo, top, word_emb or lstm_outputsK"),
                )
            })?,
        };
        if let OutputMode::LstmOutputs(k) = mode
            && k > n_lstm
        {
            return Err(ApiError::validation(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("output lstm_outputs{k}: the model has {n_lstm} LSTM layers"),
            ));
        }
        let sentences = r.inputs.sentences();
        let tokens = check_limits(&state.config.limits, &sentences)?;
        let mix = mix_for(model, r.mix_weights, r.gamma)?;
        let (e, log) = run(&state, sentences, tokens).await?;
        let v = per_input(e.output, mode, &mix)?;
        Ok::<_, ApiError>(json_response(&v, log))
    };
    go.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(serde::Serialize)]
struct OpenAiResponse {
    object: &'static str,
    data: Vec<OpenAiEmbedding>,
    model: String,
    usage: OpenAiUsage,
}

#[derive(serde::Serialize)]
struct OpenAiEmbedding {
    object: &'static str,
    embedding: Vec<f32>,
    index: usize,
}

#[derive(serde::Serialize)]
struct OpenAiUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

async fn openai(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let go = async {
        let r: OpenAiRequest = read_json(&state, req).await?;
        if let Some(f) = r.encoding_format.as_deref()
            && f != "float"
        {
            return Err(ApiError::validation(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("encoding_format '{f}': only \"float\" is served"),
            ));
        }
        let model = state.batcher.model();
        let dim = 2 * model.options().projection_dim();
        if let Some(d) = r.dimensions
            && d != dim as u64
        {
            return Err(ApiError::validation(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("dimensions {d}: this model's vectors have {dim}"),
            ));
        }
        let sentences = r.input.sentences();
        let tokens = check_limits(&state.config.limits, &sentences)?;
        let mix = mix_for(model, r.mix_weights, r.gamma)?;
        let (e, log) = run(&state, sentences, tokens).await?;
        let vectors = pooled(e.output, &mix, false)?;
        // Typed, not `json!`: a `Value` would print each f32 as the longer f64.
        let body = OpenAiResponse {
            object: "list",
            data: vectors
                .into_iter()
                .enumerate()
                .map(|(index, embedding)| OpenAiEmbedding {
                    object: "embedding",
                    embedding,
                    index,
                })
                .collect(),
            model: r.model.unwrap_or_else(|| state.config.model_name.clone()),
            usage: OpenAiUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        };
        Ok::<_, ApiError>(json_response(&body, log))
    };
    go.await.unwrap_or_else(IntoResponse::into_response)
}

async fn health() -> Response {
    json_response(&json!({"status": "ok"}), RequestLog::default())
}

async fn info(State(state): State<Arc<AppState>>) -> Response {
    let model = state.batcher.model();
    let o = model.options();
    let (l, b) = (&state.config.limits, state.batcher.config());
    let options: Value = serde_json::from_str(&o.to_json()).unwrap_or(Value::Null);
    let body = json!({
        "model": state.config.model_name,
        "version": env!("CARGO_PKG_VERSION"),
        "dim": 2 * o.projection_dim(),
        "n_layers": o.n_output_layers(),
        "outputs": ["default", "all", "elmo", "top", "word_emb", "lstm_outputsK"],
        "options": options,
        "limits": {
            "max_body_bytes": l.max_body_bytes,
            "max_inputs": l.max_inputs,
            "max_tokens_per_request": l.max_tokens_per_request,
            "max_tokens_per_sentence": l.max_tokens_per_sentence,
            "max_concurrent": l.max_concurrent,
            "queue_capacity": b.queue_capacity,
        },
        "batching": {
            "max_batch_tokens": b.max_batch_tokens,
            "max_batch_sentences": b.max_batch_sentences,
            "max_wait_ms": b.max_wait.as_secs_f64() * 1e3,
            "workers": b.workers,
        },
    });
    json_response(&body, RequestLog::default())
}

/// Prometheus' text format, written here: a dozen series do not justify a
/// metrics crate and its registry.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut s = String::new();
    let m = &state.metrics;
    let _ = writeln!(
        s,
        "# HELP elmo_http_requests_total HTTP requests answered, by path and status (499: the client went away)."
    );
    let _ = writeln!(s, "# TYPE elmo_http_requests_total counter");
    for ((path, status), n) in m.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(s, "elmo_http_requests_total{{path=\"{path}\",status=\"{status}\"}} {n}");
    }
    let _ = writeln!(s, "# HELP elmo_http_requests_in_flight Requests being handled now.");
    let _ = writeln!(s, "# TYPE elmo_http_requests_in_flight gauge");
    let _ = writeln!(
        s,
        "elmo_http_requests_in_flight {}",
        m.in_flight.load(Ordering::Relaxed)
    );
    let dur = m.duration.lock().unwrap_or_else(|e| e.into_inner()).clone();
    histogram(
        &mut s,
        "elmo_http_request_duration_seconds",
        "Seconds from a request's arrival to its response.",
        &dur,
    );
    let b = state.batcher.stats();
    let _ = writeln!(s, "# HELP elmo_queue_length Requests waiting for a batch now.");
    let _ = writeln!(s, "# TYPE elmo_queue_length gauge");
    let _ = writeln!(s, "elmo_queue_length {}", b.queued);
    for (name, help, v) in [
        ("elmo_batcher_requests_total", "Requests queued.", b.submitted),
        (
            "elmo_batcher_overloaded_total",
            "Requests refused: the queue was full.",
            b.overloaded,
        ),
        (
            "elmo_batcher_cancelled_total",
            "Requests dropped before computing: the caller went away.",
            b.cancelled,
        ),
        (
            "elmo_batcher_completed_total",
            "Requests answered by the batcher.",
            b.completed,
        ),
        ("elmo_batches_total", "Forward passes (batches) run.", b.batches),
        ("elmo_sentences_total", "Sentences computed.", b.sentences),
        ("elmo_tokens_total", "Tokens computed (padding not counted).", b.tokens),
    ] {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} counter");
        let _ = writeln!(s, "{name} {v}");
    }
    histogram(
        &mut s,
        "elmo_batch_sentences",
        "Sentences per batch.",
        &b.batch_sentences,
    );
    histogram(
        &mut s,
        "elmo_queue_seconds",
        "Seconds a request waited for its batch.",
        &b.queue_seconds,
    );
    histogram(
        &mut s,
        "elmo_compute_seconds",
        "Seconds of each batch's forward pass.",
        &b.compute_seconds,
    );
    let mut r = s.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn histogram(s: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} histogram");
    for (b, c) in h.bounds.iter().zip(&h.cumulative) {
        let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {c}");
    }
    let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(s, "{name}_sum {}", h.sum);
    let _ = writeln!(s, "{name}_count {}", h.count);
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such endpoint").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Validation",
        "method not allowed on this endpoint",
    )
    .into_response()
}

/// Counts and logs a request even when its future is dropped (the client
/// went away): then it counts as status 499, as nginx logs it.
struct Tracker {
    state: Arc<AppState>,
    method: String,
    /// The route label of the metrics.
    path: &'static str,
    /// The path as requested, for the log line.
    uri: String,
    start: Instant,
    done: bool,
}

impl Tracker {
    fn finish(&mut self, status: u16, log: RequestLog) {
        self.done = true;
        let m = &self.state.metrics;
        m.in_flight.fetch_sub(1, Ordering::Relaxed);
        *m.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((self.path, status))
            .or_insert(0) += 1;
        m.duration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(self.start.elapsed().as_secs_f64());
        tracing::info!(
            method = %self.method,
            path = %self.uri,
            status,
            tokens = log.tokens,
            queue_ms = format_args!("{:.2}", log.queue_ms),
            compute_ms = format_args!("{:.2}", log.compute_ms),
            total_ms = format_args!("{:.2}", self.start.elapsed().as_secs_f64() * 1e3),
            "request"
        );
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.done {
            self.finish(499, RequestLog::default());
        }
    }
}

/// Admission (the concurrency limit), counting and the log line.
async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    state.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let mut t = Tracker {
        state: Arc::clone(&state),
        method: req.method().to_string(),
        path: route_label(req.uri().path()),
        uri: req.uri().path().chars().take(200).collect(),
        start: Instant::now(),
        done: false,
    };
    // Health and metrics stay answerable under any load.
    let needs_permit = matches!(t.path, "/embed" | "/embed_all" | "/v1/embeddings");
    let permit = if needs_permit {
        match Arc::clone(&state.permits).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let r = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Overloaded",
                    format!(
                        "the server is handling its limit of {} requests at once",
                        state.config.limits.max_concurrent
                    ),
                )
                .into_response();
                t.finish(429, RequestLog::default());
                return r;
            }
        }
    } else {
        None
    };
    let resp = next.run(req).await;
    drop(permit);
    let log = resp.extensions().get::<RequestLog>().copied().unwrap_or_default();
    t.finish(resp.status().as_u16(), log);
    resp
}

/// The router with every endpoint, over `batcher`.
pub fn router(batcher: Arc<Batcher>, config: ServerConfig) -> Router {
    app(batcher, config).0
}

/// [`router`] and the state it shares with [`serve`] (the requests in flight).
fn app(batcher: Arc<Batcher>, config: ServerConfig) -> (Router, Arc<AppState>) {
    let state = Arc::new(AppState {
        permits: Arc::new(tokio::sync::Semaphore::new(config.limits.max_concurrent)),
        batcher,
        config,
        metrics: Metrics {
            requests: Mutex::new(BTreeMap::new()),
            in_flight: AtomicU64::new(0),
            duration: Mutex::new(Histogram::new(&super::batcher::TIME_BUCKETS)),
        },
    });
    let router = Router::new()
        .route("/embed", post(embed))
        .route("/embed_all", post(embed_all))
        .route("/v1/embeddings", post(openai))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), track))
        .with_state(Arc::clone(&state));
    (router, state)
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting,
/// finishes every accepted request (at most `config.drain_timeout`) and
/// drains the batcher.
///
/// The connections are hyper's HTTP/1 server under axum's router, set up
/// here rather than by `axum::serve`, which sets no header read timeout
/// (`config.read_timeout`; without one, stalled connections held their
/// places forever).
pub async fn serve(
    listener: tokio::net::TcpListener,
    batcher: Arc<Batcher>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    config.check()?;
    let (drain, read_timeout) = (config.drain_timeout, config.read_timeout);
    let (app, state) = app(Arc::clone(&batcher), config);
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's `half_close(false)` stays: an end of the client's stream before
    // the response is the client going away, which cancels its request
    // (TCP cannot tell a closed socket from a half-closed one until the
    // server writes), as nginx does; `nc -N`-style clients get no answer.
    http.timer(TokioTimer::new()).header_read_timeout(read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: the connections
                    // already open go on; try again shortly.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // No Nagle delay: a response's last small segment must not wait for
        // the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            // A client's reset or timeout ends its connection, nothing else.
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; finishing the requests accepted");
    // Idle connections close now, the others after their response; a
    // connection whose request never arrived whole closes at its read
    // timeout, or here at the deadline, which is an error only when an
    // accepted request is still running.
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
            let running = state.metrics.in_flight.load(Ordering::Acquire);
            if running > 0 {
                return Err(Error::Serve(format!(
                    "{running} requests still running {:.0} s after the shutdown signal; exiting anyway",
                    drain.as_secs_f64()
                )));
            }
            tracing::info!("closing the connections that have not sent a whole request");
        }
    }
    // Every accepted request has its answer; the queue is empty but let the
    // workers finish on their own thread, not a runtime one.
    tokio::task::spawn_blocking(move || batcher.shutdown())
        .await
        .map_err(|e| Error::Serve(format!("batcher shutdown: {e}")))?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// `elmo serve`: binds `addr` (`host:port`; port 0 picks a free one),
/// prints `listening on http://ADDR` to standard error, serves until
/// SIGTERM or Ctrl-C, drains, returns.
pub fn run_server(model: ElmoModel, addr: &str, config: ServerConfig) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("elmo-http")
        .build()
        .map_err(|e| Error::Serve(format!("cannot start the runtime: {e}")))?;
    let batcher = Arc::new(Batcher::new(Arc::new(model), config.batcher.clone())?);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Serve(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Serve(format!("cannot listen on {addr}: {e}")))?;
        eprintln!("listening on http://{local}");
        tracing::info!(addr = %local, model = %config.model_name, "serving");
        serve(listener, batcher, config, shutdown_signal()).await
    })
}
