//! The `elmo` command line: convert weights, embed sentences.

use clap::{Parser, Subcommand};
use elmo::layer::OutputMode;
use elmo::mix::{MixConfig, ScalarMix};
use elmo::{ElmoModel, Error, LstmState, Result, Tensor};
use std::io::Write;

mod bench;
mod corpus;
mod inspect;
#[cfg(feature = "server")]
mod serve;
use std::path::{Path, PathBuf};

/// The default model's file name inside `weights/`.
const DEFAULT_MODEL: &str = "bilm-tf-test.safetensors";

#[derive(Parser)]
#[command(
    name = "elmo",
    version,
    about = "ELMo embeddings, computed as TensorFlow's bilm-tf does"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert bilm-tf/allennlp options.json + HDF5 weights, or a TensorFlow
    /// checkpoint / TF Hub module folder, into a model file.
    Convert {
        /// The model's options.json (required with --hdf5; with
        /// --tf-checkpoint it supplies what shapes cannot tell).
        #[arg(long)]
        options: Option<PathBuf>,
        /// The HDF5 weight file.
        #[arg(long, conflicts_with = "tf_checkpoint")]
        hdf5: Option<PathBuf>,
        /// A TF V2 checkpoint: its prefix, a folder with a `checkpoint` file,
        /// or a TF Hub module folder.
        #[arg(long)]
        tf_checkpoint: Option<PathBuf>,
        /// Settings of a known model for a checkpoint (`tfhub-elmo-2`).
        #[arg(long, requires = "tf_checkpoint")]
        preset: Option<String>,
        /// An ELMoForManyLangs model folder (config.json, char.dic, word.dic,
        /// token_embedder.pkl, encoder.pkl).
        #[arg(long, conflicts_with_all = ["hdf5", "tf_checkpoint", "options"])]
        elmoformanylangs: Option<PathBuf>,
        /// Where to write the converted model (.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// `f32` (default), or `bf16` for the LSTM matrices: half the memory
        /// traffic per step, results within bf16 rounding (see README).
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// List the tensors (name, shape, dtype), options and format version of a
    /// converted model, an HDF5 weight file or a TF checkpoint.
    Inspect {
        /// The file or checkpoint to describe.
        path: PathBuf,
    },
    /// Embed sentences: into an .npz file (small outputs, padded arrays), or
    /// stream a corpus of any size into an .hdf5/.h5 file in allennlp's
    /// `elmo` layout (one dataset per sentence; resumable).
    Embed {
        /// Converted model; default: weights/bilm-tf-test.safetensors.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Plain text (one sentence a line) or .jsonl; `-` reads standard
        /// input (text).
        #[arg(long)]
        input: PathBuf,
        /// Output: .npz with `lengths` (N,) and the --outputs arrays, or
        /// .hdf5/.h5 with one dataset per sentence ("0" .. "N-1") and
        /// `sentence_to_index`.
        #[arg(long)]
        out: PathBuf,
        /// Carry the LSTM state from batch to batch, as bilm-tf does (.npz only).
        #[arg(long)]
        stateful: bool,
        /// Sentences per batch (default 32 for .npz, 64 for .hdf5).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Working memory of a forward pass, in MiB (results are the same
        /// for any value; see `ElmoModel::with_memory_budget`).
        #[arg(long, default_value_t = elmo::model::DEFAULT_MEMORY_BUDGET >> 20)]
        memory_budget_mib: usize,
        /// Where to run: cpu, cuda (device 0) or cuda:N (needs a build
        /// with `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// .npz arrays to write, comma-separated: word_emb, lstm_outputs1,
        /// lstm_outputs2, elmo, default, all, lm_embeddings.
        #[arg(long, value_delimiter = ',')]
        outputs: Option<Vec<String>>,
        /// Mix weights (one per layer, before the softmax); default: the
        /// model's aggregation weights, else zeros (.npz only).
        #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
        mix_weights: Option<Vec<f32>>,
        /// Mix scale gamma; default: the model's aggregation scaling, else 1 (.npz only).
        #[arg(long, allow_negative_numbers = true)]
        gamma: Option<f32>,
        /// Layer-normalise each layer before mixing (statistics per batch; .npz only).
        #[arg(long)]
        layer_norm: bool,
        /// Mix only the top layer: gamma * top (.npz only).
        #[arg(long)]
        top_only: bool,
        /// .hdf5: every layer per sentence, (L + 1, n, 2P) (the default).
        #[arg(long, conflicts_with_all = ["top", "average"])]
        all: bool,
        /// .hdf5: the top layer per sentence, (n, 2P).
        #[arg(long, conflicts_with = "average")]
        top: bool,
        /// .hdf5: the mean of the layers per sentence, (n, 2P).
        #[arg(long)]
        average: bool,
        /// .hdf5: continue the run an interruption left beside the output
        /// (refused if the model, input or settings differ).
        #[arg(long)]
        resume: bool,
        /// .hdf5: sentences read ahead and grouped by length (default 4096).
        #[arg(long)]
        window: Option<usize>,
        /// .hdf5: padded positions (sentences x longest) per batch, at most
        /// (default 4096).
        #[arg(long)]
        batch_tokens: Option<usize>,
        /// .hdf5: batch in input order (the baseline of the benchmarks).
        #[arg(long)]
        no_length_grouping: bool,
        /// Keep the token embeddings of up to N distinct words (default: 0
        /// for .npz; for .hdf5 as many as fit in 64 MiB).
        #[arg(long)]
        token_cache: Option<usize>,
        /// No progress and no summary (errors still go to standard error).
        #[arg(long)]
        quiet: bool,
    },
    /// List where models can run: the CPU (the SIMD the kernels were built
    /// for) and each CUDA device, or why there is none.
    Devices {
        /// Also upload a model to each CUDA device and run every kernel
        /// against its CPU reference, printing each maxdiff (fails if one
        /// is outside atol 1e-5 + rtol 1e-4, or there is no device).
        #[arg(long)]
        check: bool,
        /// The model for --check; default: weights/bilm-tf-test.safetensors.
        #[arg(long, requires = "check")]
        model: Option<PathBuf>,
    },
    /// Serve embeddings over HTTP (POST /embed, /embed_all, /v1/embeddings;
    /// GET /health, /info, /metrics), batching concurrent requests; SIGTERM
    /// or Ctrl-C stops accepting, finishes what was accepted, exits 0.
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
    /// Time the forward pass on a workload (.jsonl); one JSON line per output,
    /// as the anchors' command contract asks.
    Bench {
        /// Converted model.
        #[arg(long)]
        model: PathBuf,
        /// Workload: .jsonl, one batch a line.
        #[arg(long)]
        input: PathBuf,
        /// Timed passes over the whole file.
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Untimed passes first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Worker threads (the peers use 2).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// `layers` (all layers) or `elmo` (the scalar mix with initial weights).
        #[arg(long, default_value = "layers")]
        output: String,
        /// Split each line into batches of at most this many sentences.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Keep the token embeddings of up to N distinct words (0: off, the
        /// like-for-like setting against the peers).
        #[arg(long, default_value_t = 0)]
        token_cache: usize,
        /// Compute every position, also repeated words and each sentence's
        /// `<S>` and `</S>`, as TensorFlow does (by default each distinct
        /// word of a batch is computed once; the outputs are the same bits).
        #[arg(long)]
        no_word_sharing: bool,
        /// Where to run: cpu, cuda (device 0) or cuda:N (needs a build
        /// with `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                std::process::exit(if e.kind() == DisplayHelpOnMissingArgumentOrSubcommand {
                    2
                } else {
                    0
                });
            }
            eprintln!("{} (see elmo --help)", one_line(&e.render().to_string()));
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cli.command) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// clap's message on one line: its first line says what was wrong, and
/// the indented lines under it (the missing arguments, say) which ones;
/// the usage and `--help` hint after a blank line are left out.
fn one_line(text: &str) -> String {
    let mut lines = text.lines();
    let mut line = lines.next().unwrap_or("invalid arguments").trim_end().to_string();
    for more in lines.take_while(|l| !l.trim().is_empty()) {
        line.push(' ');
        line.push_str(more.trim());
    }
    line
}

/// Writes to standard output. A reader that went away (`elmo inspect M |
/// head`) ends the program quietly with status 0, as other Unix tools do
/// (Rust ignores SIGPIPE, so the write fails instead); any other failure
/// (a full disk) is an error, one line.
fn out(text: std::fmt::Arguments<'_>) -> Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_fmt(text).and_then(|()| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(Error::io("standard output", e)),
    }
}

/// `println!` through [`out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// Whether `a` and `b` name the same existing file (hard links and
/// different spellings included): an output must not replace an input.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        #[cfg(unix)]
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.dev() == y.dev() && x.ino() == y.ino()
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y),
        _ => false,
    }
}

/// Refuses an `--out` that is one of the inputs (converting or embedding
/// into the file being read would destroy it).
fn check_not_an_input(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    match inputs.iter().find(|(_, p)| same_file(out, p)) {
        Some((flag, _)) => Err(Error::Input(format!(
            "--out {} is the {flag} file: writing it would destroy what is read; choose another output",
            out.display()
        ))),
        None => Ok(()),
    }
}

/// What `embed --out` writes, from the file name's extension (any case).
#[derive(Clone, Copy, PartialEq, Eq)]
enum OutFormat {
    Npz,
    Hdf5,
}

impl OutFormat {
    fn of(out: &Path) -> Result<OutFormat> {
        let ext = out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("npz") => Ok(OutFormat::Npz),
            Some("hdf5" | "h5") => Ok(OutFormat::Hdf5),
            _ => Err(Error::Input(format!(
                "--out {}: the file name says what to write: .npz (padded arrays) or .hdf5/.h5 (allennlp's corpus layout)",
                out.display()
            ))),
        }
    }
}

/// `elmo devices`: the CPU, the CUDA devices (or why none), and with
/// `check` every kernel's maxdiff on each device.
fn devices(check: bool, model: Option<PathBuf>) -> Result<()> {
    let levels = elmo::cpu::available_levels()
        .iter()
        .map(|l| l.name())
        .collect::<Vec<_>>()
        .join(", ");
    let level = elmo::cpu::simd_level_checked()?;
    outln!(
        "cpu      {} threads, SIMD {level} (this CPU: {levels}; ELMO_SIMD picks one)",
        rayon::current_num_threads()
    )?;
    if let Some(why) = elmo::cpu::simd::missing_baseline() {
        outln!("         note: {why}")?;
    }
    let found = elmo::cuda::devices();
    match &found {
        Ok(names) if names.is_empty() => outln!("cuda     none: the driver reports no devices")?,
        Ok(names) => {
            for (i, name) in names.iter().enumerate() {
                outln!("cuda:{i:<3} {name}")?;
            }
        }
        Err(e) => outln!("cuda     unavailable: {e}")?,
    }
    if !check {
        return Ok(());
    }
    let names = found?;
    if names.is_empty() {
        return Err(Error::CudaUnavailable("no CUDA device to check".into()));
    }
    let path = model.unwrap_or_else(default_model);
    let file = elmo::model_file::ModelFile::open(&path)?;
    let mut bad = Vec::new();
    for i in 0..names.len() {
        let gpu = elmo::cuda::GpuModel::new(&file, i)?;
        for (kernel, d, ok) in gpu.kernel_maxdiffs()? {
            outln!(
                "cuda:{i:<3} {kernel:<32} maxdiff {d:.3e} {}",
                if ok { "ok" } else { "FAIL" }
            )?;
            if !ok {
                bad.push(format!("cuda:{i} {kernel} ({d:.3e})"));
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Cuda(format!(
            "kernels outside atol 1e-5 + rtol 1e-4 of their CPU references: {}",
            bad.join(", ")
        )))
    }
}

/// The default model: `./weights/`, else the `weights/` of this source tree.
fn default_model() -> PathBuf {
    let local = Path::new("weights").join(DEFAULT_MODEL);
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights")
        .join(DEFAULT_MODEL)
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Bench {
            model,
            input,
            runs,
            warmup,
            threads,
            output,
            batch_size,
            token_cache,
            no_word_sharing,
            device,
        } => bench::run(
            &model,
            &input,
            runs,
            warmup,
            threads,
            &output,
            batch_size,
            (token_cache, !no_word_sharing),
            device.parse()?,
        ),
        Command::Devices { check, model } => devices(check, model),
        #[cfg(feature = "server")]
        Command::Serve(args) => serve::run(args, default_model),
        Command::Inspect { path } => out(format_args!("{}", inspect::describe(&path)?)),
        Command::Convert {
            options,
            hdf5,
            tf_checkpoint,
            preset,
            elmoformanylangs,
            out,
            dtype,
        } => {
            let dtype: elmo::convert::WeightDtype = dtype.parse()?;
            let inputs: Vec<(&str, &Path)> = [
                ("--options", &options),
                ("--hdf5", &hdf5),
                ("--tf-checkpoint", &tf_checkpoint),
            ]
            .into_iter()
            .filter_map(|(flag, p)| Some((flag, p.as_deref()?)))
            .collect();
            check_not_an_input(&out, &inputs)?;
            if let Some(dir) = elmoformanylangs {
                let t0 = std::time::Instant::now();
                elmo::io::efml::convert_elmoformanylangs(&dir, &out, dtype)?;
                eprintln!("wrote {} in {:.2} s", out.display(), t0.elapsed().as_secs_f64());
                return Ok(());
            }
            if let Some(o) = &options {
                // What bilm-tf's training wrote (n_characters 261) is read as
                // the prediction layout: said once, not silently.
                if let Ok((_, notices)) = elmo::Options::from_file_noting(o) {
                    for n in notices {
                        eprintln!("notice: {n}");
                    }
                }
            }
            if let Some(ckpt) = tf_checkpoint {
                let t0 = std::time::Instant::now();
                elmo::tfckpt::convert_tf_checkpoint_with(&ckpt, options.as_deref(), preset.as_deref(), &out, dtype)?;
                eprintln!("wrote {} in {:.2} s", out.display(), t0.elapsed().as_secs_f64());
                return Ok(());
            }
            let (Some(options), Some(hdf5)) = (options, hdf5) else {
                return Err(Error::Input(
                    "convert needs --options and --hdf5, or --tf-checkpoint (see elmo convert --help)".into(),
                ));
            };
            // A progress bar (indicatif: drawn only on a terminal) for large
            // files; a missing file is reported by the converter, after the
            // options have been checked.
            let show = std::fs::metadata(&hdf5).map(|m| m.len() > 16 << 20).unwrap_or(false);
            let bar = if show {
                indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "converting {bar:40} {percent:>3}% {bytes}/{total_bytes} {msg}",
                    )
                    .expect("a valid template"),
                )
            } else {
                indicatif::ProgressBar::hidden()
            };
            let mut progress = |done: u64, total: u64, name: &str| {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(name.to_string());
            };
            let t0 = std::time::Instant::now();
            let r = elmo::convert::convert_hdf5_with(&options, &hdf5, &out, &mut progress, dtype);
            bar.finish_and_clear();
            r?;
            eprintln!("wrote {} in {:.2} s", out.display(), t0.elapsed().as_secs_f64());
            Ok(())
        }
        Command::Embed {
            model,
            input,
            out,
            stateful,
            batch_size,
            memory_budget_mib,
            device,
            outputs,
            mix_weights,
            gamma,
            layer_norm,
            top_only,
            all,
            top,
            average,
            resume,
            window,
            batch_tokens,
            no_length_grouping,
            token_cache,
            quiet,
        } => {
            let model_path = model.unwrap_or_else(default_model);
            let device: elmo::Device = device.parse()?;
            let hdf5 = OutFormat::of(&out)? == OutFormat::Hdf5;
            check_not_an_input(&out, &[("--input", &input), ("--model", &model_path)])?;
            let model = ElmoModel::load(&model_path)?
                .with_memory_budget(memory_budget_mib.max(1).saturating_mul(1 << 20))
                .with_device(device)?;
            if hdf5 {
                let npz_only = [
                    (stateful, "--stateful"),
                    (outputs.is_some(), "--outputs"),
                    (mix_weights.is_some(), "--mix-weights"),
                    (gamma.is_some(), "--gamma"),
                    (layer_norm, "--layer-norm"),
                    (top_only, "--top-only"),
                ];
                if let Some((_, flag)) = npz_only.iter().find(|(on, _)| *on) {
                    return Err(Error::Input(format!(
                        "{flag} applies to .npz output; an .hdf5 file holds the layers (--all, --top or --average)"
                    )));
                }
                let entries = token_cache.unwrap_or_else(|| corpus::cache_entries(&model, 64 << 20));
                let model = model.with_token_cache(entries);
                let cfg = elmo::corpus::CorpusConfig {
                    layers: if top {
                        elmo::corpus::Layers::Top
                    } else if average {
                        elmo::corpus::Layers::Average
                    } else {
                        elmo::corpus::Layers::All
                    },
                    batch_size: batch_size.unwrap_or(64),
                    batch_tokens: batch_tokens.unwrap_or(elmo::corpus::CorpusConfig::default().batch_tokens),
                    window: window.unwrap_or(elmo::corpus::CorpusConfig::default().window),
                    group_by_length: !no_length_grouping,
                    resume,
                    // A hidden test hook: the crash-and-resume tests abort the
                    // run in the middle of a window.
                    crash_after_windows: std::env::var("ELMO_TEST_CRASH_AFTER_WINDOWS")
                        .ok()
                        .and_then(|v| v.parse().ok()),
                };
                return corpus::run(&model, &input, &out, &cfg, quiet);
            }
            let hdf5_only = [
                (all, "--all"),
                (top, "--top"),
                (average, "--average"),
                (resume, "--resume"),
                (window.is_some(), "--window"),
                (batch_tokens.is_some(), "--batch-tokens"),
                (no_length_grouping, "--no-length-grouping"),
            ];
            if let Some((_, flag)) = hdf5_only.iter().find(|(on, _)| *on) {
                return Err(Error::Input(format!(
                    "{flag} applies to .hdf5/.h5 output (the corpus layout), not {}",
                    out.display()
                )));
            }
            let model = model.with_token_cache(token_cache.unwrap_or(0));
            let outputs = parse_outputs(&outputs.unwrap_or_else(|| vec!["lm_embeddings".into(), "elmo".into()]))?;
            let mix = default_mix(&model, mix_weights, gamma, layer_norm, top_only)?;
            if input.as_os_str() == "-" {
                return Err(Error::Input(
                    "--input - (standard input) streams into .hdf5 output; .npz output reads a file".into(),
                ));
            }
            let batches = elmo::input::read_batches(&input, batch_size.unwrap_or(32))?;
            if batches.iter().all(|b| b.is_empty()) {
                eprintln!("warning: {} holds no sentences; writing empty arrays", input.display());
            }
            let mut state = if stateful {
                let cap = batches.iter().map(Vec::len).max().unwrap_or(0);
                Some(LstmState::new(&model, cap)?)
            } else {
                None
            };
            let mut outs = Vec::with_capacity(batches.len());
            for batch in &batches {
                outs.push(match state.as_mut() {
                    Some(s) => model.embed_stateful(batch, s)?,
                    None => model.embed(batch)?,
                });
            }
            write_embeddings(&out, &model, &outs, &outputs, &mix)?;
            if quiet {
                return Ok(());
            }
            let n: usize = outs.iter().map(|o| o.lengths.len()).sum();
            let t = outs.iter().map(|o| o.max_len).max().unwrap_or(0);
            let o = model.options();
            let (k, d, p) = (o.n_output_layers(), 2 * o.projection_dim(), o.projection_dim());
            let written: Vec<String> = outputs
                .iter()
                .map(|output| match output {
                    Output::Layers(name) => format!("{name} ({n}, {k}, {t}, {d})"),
                    Output::Mode(OutputMode::Default) => format!("default ({n}, {d})"),
                    Output::Mode(OutputMode::WordEmb) => format!("word_emb ({n}, {t}, {p})"),
                    Output::Mode(m) => format!("{m} ({n}, {t}, {d})"),
                })
                .collect();
            eprintln!("wrote {}: lengths ({n}), {}", out.display(), written.join(", "));
            if let Some(first) = outs.iter().find(|o| o.max_len > 0) {
                let v = first.vector(0, o.n_output_layers() - 1, 0);
                eprintln!("first sentence, top layer, first token: {:?} ...", &v[..v.len().min(4)]);
            }
            Ok(())
        }
    }
}

/// An array `embed` can write.
#[derive(Clone, Copy, PartialEq)]
enum Output {
    /// Every layer, (N, K, T, 2P); named `lm_embeddings` or `all`.
    Layers(&'static str),
    /// One of the layer's modes.
    Mode(OutputMode),
}

fn parse_outputs(names: &[String]) -> Result<Vec<Output>> {
    let mut v = Vec::new();
    for n in names {
        let o = match n.trim() {
            "lm_embeddings" => Output::Layers("lm_embeddings"),
            "all" => Output::Layers("all"),
            other => Output::Mode(other.parse()?),
        };
        if !v.contains(&o) {
            v.push(o);
        }
    }
    if v.is_empty() {
        return Err(Error::Input("--outputs is empty".into()));
    }
    Ok(v)
}

/// The mix `elmo` and `default` use: flags first, then the model's
/// aggregation values, then bilm-tf's initial values (zeros, 1).
fn default_mix(model: &ElmoModel, w: Option<Vec<f32>>, gamma: Option<f32>, ln: bool, top: bool) -> Result<ScalarMix> {
    let config = MixConfig {
        do_layer_norm: ln,
        use_top_only: top,
        l2_coef: 0.0,
    };
    elmo::layer::starting_mix(model, w, gamma, config, false).map_err(|e| match e {
        Error::Input(m) | Error::Shape(m) => Error::Input(format!("--mix-weights/--gamma: {m}")),
        e => e,
    })
}

/// Writes `lengths` (N,) and each requested output, T = longest sentence.
fn write_embeddings(
    path: &Path,
    model: &ElmoModel,
    outs: &[elmo::BiLmOutput],
    outputs: &[Output],
    mix: &ScalarMix,
) -> Result<()> {
    let o = model.options();
    let (nk, dim, p) = (o.n_output_layers(), 2 * o.projection_dim(), o.projection_dim());
    let n: usize = outs.iter().map(|o| o.lengths.len()).sum();
    let t = outs.iter().map(|o| o.max_len).max().unwrap_or(0);
    let lengths: Vec<i32> = outs.iter().flat_map(|o| o.lengths.iter().map(|&l| l as i32)).collect();
    // The mix of each batch, (B, Tb, 2P), padding zero.
    let needs_mix = outputs
        .iter()
        .any(|o| matches!(o, Output::Mode(OutputMode::Elmo | OutputMode::Default)));
    // Per batch: the mix (B, Tb, 2P) and its masked mean (B, 2P).
    let mixed: Vec<(Vec<f32>, Vec<f32>)> = if needs_mix {
        outs.iter()
            .map(|b| {
                let all = Tensor::from_vec(&[b.lengths.len(), nk, b.max_len, dim], b.data.clone())?;
                let mask: Vec<f32> = b
                    .lengths
                    .iter()
                    .flat_map(|&l| (0..b.max_len).map(move |j| if j < l { 1.0 } else { 0.0 }))
                    .collect();
                let m = mix.forward(&all, &mask, true)?;
                Ok((m.value().data().to_vec(), m.masked_mean(&mask)?.value().data().to_vec()))
            })
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    // Written beside `path` and renamed over it once whole: a failure (a
    // full disk) leaves any earlier file as it was, and no half archive.
    elmo::model_file::write_path_atomically(path, |tmp| {
        let file = std::fs::File::create(tmp).map_err(|e| Error::io(path, e))?;
        let w = elmo::npz::NpzWriter::with_path(std::io::BufWriter::new(file), path);
        write_arrays(w, outs, outputs, &mixed, (n, t, nk, dim, p), &lengths)
    })
}

/// The arrays of [`write_embeddings`], into `w`.
fn write_arrays(
    mut w: elmo::npz::NpzWriter<std::io::BufWriter<std::fs::File>>,
    outs: &[elmo::BiLmOutput],
    outputs: &[Output],
    mixed: &[(Vec<f32>, Vec<f32>)],
    (n, t, nk, dim, p): (usize, usize, usize, usize, usize),
    lengths: &[i32],
) -> Result<()> {
    w.add_i32("lengths", &[n], lengths)?;
    for &output in outputs {
        // (shape, values per token, where a token's values come from)
        let (name, shape, width) = match output {
            Output::Layers(name) => (name.to_string(), vec![n, nk, t, dim], dim),
            Output::Mode(OutputMode::Default) => ("default".into(), vec![n, dim], dim),
            Output::Mode(OutputMode::WordEmb) => ("word_emb".into(), vec![n, t, p], p),
            Output::Mode(m) => (m.to_string(), vec![n, t, dim], dim),
        };
        if let Output::Mode(OutputMode::LstmOutputs(k)) = output
            && k >= nk
        {
            return Err(Error::Input(format!(
                "--outputs {name}: the model has {} LSTM layers",
                nk - 1
            )));
        }
        let mut data = vec![0f32; shape.iter().product()];
        let mut row = 0;
        for (bi, out) in outs.iter().enumerate() {
            for (b, &len) in out.lengths.iter().enumerate() {
                match output {
                    Output::Layers(_) => {
                        for k in 0..nk {
                            for j in 0..len {
                                let dst = ((row * nk + k) * t + j) * dim;
                                data[dst..dst + dim].copy_from_slice(out.vector(b, k, j));
                            }
                        }
                    }
                    Output::Mode(OutputMode::Default) => {
                        data[row * dim..(row + 1) * dim].copy_from_slice(&mixed[bi].1[b * dim..(b + 1) * dim]);
                    }
                    Output::Mode(mode) => {
                        for j in 0..len {
                            let dst = (row * t + j) * width;
                            let src: &[f32] = match mode {
                                OutputMode::WordEmb => &out.vector(b, 0, j)[..p],
                                OutputMode::LstmOutputs(k) => out.vector(b, k, j),
                                _ => &mixed[bi].0[(b * out.max_len + j) * dim..][..dim],
                            };
                            data[dst..dst + width].copy_from_slice(src);
                        }
                    }
                }
                row += 1;
            }
        }
        w.add_f32(&name, &shape, &data)?;
    }
    // Flushes; the caller syncs and renames.
    w.finish()?;
    Ok(())
}
