//! `elmo serve`: the flags, mapped onto `elmo::serve::http::ServerConfig`.

use elmo::serve::BatcherConfig;
use elmo::serve::http::{Limits, ServerConfig, run_server};
use elmo::{ElmoModel, Error, Result};
use std::path::PathBuf;
use std::time::Duration;

/// The flags of `elmo serve`; each default is the library's.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Converted model; default: weights/bilm-tf-test.safetensors.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to listen on (loopback by default: put a proxy in front to
    /// expose it).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Padded positions (sentences x longest) per batch, at most.
    #[arg(long, default_value_t = BatcherConfig::default().max_batch_tokens)]
    max_batch_tokens: usize,
    /// Sentences per batch, at most.
    #[arg(long, default_value_t = BatcherConfig::default().max_batch_sentences)]
    max_batch_sentences: usize,
    /// Milliseconds the oldest queued request waits for others to join its batch.
    #[arg(long, default_value_t = BatcherConfig::default().max_wait.as_secs_f64() * 1e3)]
    max_wait_ms: f64,
    /// One request at a time, no batching (the load benchmark's baseline).
    #[arg(long)]
    no_batching: bool,
    /// Requests queued for a batch, at most (429 beyond).
    #[arg(long, default_value_t = BatcherConfig::default().queue_capacity)]
    queue_capacity: usize,
    /// Requests handled at once, at most (429 beyond).
    #[arg(long, default_value_t = Limits::default().max_concurrent)]
    max_concurrent: usize,
    /// Request body bytes, at most (413 beyond).
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Inputs per request, at most (413 beyond).
    #[arg(long, default_value_t = Limits::default().max_inputs)]
    max_inputs: usize,
    /// Tokens per request, at most (413 beyond).
    #[arg(long, default_value_t = Limits::default().max_tokens_per_request)]
    max_tokens_per_request: usize,
    /// Tokens per input, at most (422 beyond).
    #[arg(long, default_value_t = Limits::default().max_tokens_per_sentence)]
    max_tokens_per_sentence: usize,
    /// Seconds accepted requests may take to finish after SIGTERM.
    #[arg(long, default_value_t = ServerConfig::default().drain_timeout.as_secs_f64())]
    drain_timeout_s: f64,
    /// Seconds a client may take to send a request's headers, then its body
    /// (the connection closed, or 408); idle keep-alive connections close
    /// after it too.
    #[arg(long, default_value_t = ServerConfig::default().read_timeout.as_secs_f64())]
    read_timeout_s: f64,
    /// Keep the token embeddings of up to N distinct words (served text
    /// repeats words; the outputs are the same bits).
    #[arg(long, default_value_t = 0)]
    token_cache: usize,
    /// Where to run: cpu, cuda (device 0) or cuda:N (needs a build with
    /// `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Log level of the per-request lines on standard error: error, warn,
    /// info (one line per request) or debug.
    #[arg(long, default_value = "info")]
    log: String,
}

fn seconds(v: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| Error::Input(format!("{flag} {v}: not a duration")))
}

/// Loads the model and serves until SIGTERM/Ctrl-C.
pub fn run(a: ServeArgs, default_model: fn() -> PathBuf) -> Result<()> {
    let level: tracing::Level = a
        .log
        .parse()
        .map_err(|_| Error::Input(format!("--log {}: expected error, warn, info or debug", a.log)))?;
    // Without ANSI colours: the lines go to log files and to the tests.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level)
        .init();
    let path = a.model.unwrap_or_else(default_model);
    let batcher = BatcherConfig {
        max_batch_tokens: a.max_batch_tokens,
        max_batch_sentences: if a.no_batching { 1 } else { a.max_batch_sentences },
        max_wait: if a.no_batching {
            Duration::ZERO
        } else {
            seconds(a.max_wait_ms / 1e3, "--max-wait-ms")?
        },
        queue_capacity: a.queue_capacity,
        workers: 1,
    };
    let config = ServerConfig {
        model_name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "elmo".into()),
        limits: Limits {
            max_body_bytes: a.max_body_bytes,
            max_inputs: a.max_inputs,
            max_tokens_per_request: a.max_tokens_per_request,
            max_tokens_per_sentence: a.max_tokens_per_sentence,
            max_concurrent: a.max_concurrent,
        },
        batcher,
        drain_timeout: seconds(a.drain_timeout_s, "--drain-timeout-s")?,
        read_timeout: seconds(a.read_timeout_s, "--read-timeout-s")?,
    };
    // Before loading the model: a zero limit is a typo, said at once.
    config.check()?;
    let model = ElmoModel::load(&path)?
        .with_token_cache(a.token_cache)
        .with_device(a.device.parse()?)?;
    run_server(model, &format!("{}:{}", a.host, a.port), config)
}
