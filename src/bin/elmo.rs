//! The `elmo` command line: convert weights, embed sentences.

use clap::{Parser, Subcommand};
use elmo::{ElmoModel, Error, LstmState, Result};
use std::io::Write;
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
    /// Convert bilm-tf/allennlp options.json + HDF5 weights into a model file.
    Convert {
        /// The model's options.json.
        #[arg(long)]
        options: PathBuf,
        /// The HDF5 weight file.
        #[arg(long)]
        hdf5: PathBuf,
        /// Where to write the converted model (.safetensors).
        #[arg(long)]
        out: PathBuf,
    },
    /// Embed sentences and write every biLM layer to an .npz file.
    Embed {
        /// Converted model; default: weights/bilm-tf-test.safetensors.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Plain text (one sentence a line) or .jsonl (one batch a line).
        #[arg(long)]
        input: PathBuf,
        /// Output .npz with `lengths` (N,) and `lm_embeddings` (N, L+1, T, 2P).
        #[arg(long)]
        out: PathBuf,
        /// Carry the LSTM state from batch to batch, as bilm-tf does.
        #[arg(long)]
        stateful: bool,
        /// Sentences per batch for plain-text input.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
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
            // One line: clap's first line says what was wrong.
            let text = e.render().to_string();
            eprintln!(
                "{} (see elmo --help)",
                text.lines().next().unwrap_or("invalid arguments")
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cli.command) {
        eprintln!("error: {e}");
        std::process::exit(1);
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
        Command::Convert { options, hdf5, out } => {
            // Progress only for large files; a missing file is reported by
            // the converter, after the options have been checked.
            let show = std::fs::metadata(&hdf5).map(|m| m.len() > 16 << 20).unwrap_or(false);
            let mut progress = |done: u64, total: u64, name: &str| {
                if show {
                    eprint!("\rconverting: {:3}% {:<60}", done * 100 / total.max(1), name);
                    let _ = std::io::stderr().flush();
                }
            };
            let t0 = std::time::Instant::now();
            let r = elmo::convert::convert_hdf5(&options, &hdf5, &out, &mut progress);
            if show {
                eprintln!();
            }
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
        } => {
            let model_path = model.unwrap_or_else(default_model);
            let model = ElmoModel::load(&model_path)?;
            let batches = elmo::input::read_batches(&input, batch_size)?;
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
            write_embeddings(&out, &model, &outs)?;
            let n: usize = outs.iter().map(|o| o.lengths.len()).sum();
            let t = outs.iter().map(|o| o.max_len).max().unwrap_or(0);
            let o = model.options();
            eprintln!(
                "wrote {}: lm_embeddings ({n}, {}, {t}, {})",
                out.display(),
                o.n_output_layers(),
                2 * o.projection_dim()
            );
            if let Some(first) = outs.iter().find(|o| o.max_len > 0) {
                let v = first.vector(0, o.n_output_layers() - 1, 0);
                eprintln!("first sentence, top layer, first token: {:?} ...", &v[..v.len().min(4)]);
            }
            Ok(())
        }
    }
}

/// Writes `lengths` (N,) and `lm_embeddings` (N, L+1, T, 2P), T = longest.
fn write_embeddings(path: &Path, model: &ElmoModel, outs: &[elmo::BiLmOutput]) -> Result<()> {
    let o = model.options();
    let (nk, dim) = (o.n_output_layers(), 2 * o.projection_dim());
    let n: usize = outs.iter().map(|o| o.lengths.len()).sum();
    let t = outs.iter().map(|o| o.max_len).max().unwrap_or(0);
    let mut data = vec![0f32; n * nk * t * dim];
    let mut lengths = Vec::with_capacity(n);
    let mut row = 0;
    for out in outs {
        for (b, &len) in out.lengths.iter().enumerate() {
            lengths.push(len as i32);
            for k in 0..nk {
                for j in 0..len {
                    let dst = ((row * nk + k) * t + j) * dim;
                    data[dst..dst + dim].copy_from_slice(out.vector(b, k, j));
                }
            }
            row += 1;
        }
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = elmo::npz::NpzWriter::new(std::io::BufWriter::new(file));
    w.add_i32("lengths", &[n], &lengths)?;
    w.add_f32("lm_embeddings", &[n, nk, t, dim], &data)?;
    w.finish()?.flush().map_err(|e| Error::io(path, e))?;
    Ok(())
}
