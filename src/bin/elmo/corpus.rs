//! `elmo embed --out X.hdf5`: a corpus streamed into allennlp's HDF5 layout,
//! with a progress bar on a terminal, a plain line now and then otherwise.

use elmo::corpus::{CorpusConfig, Input, Progress, Summary, embed_corpus};
use elmo::{ElmoModel, Error, Result};
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

/// Seconds between plain progress lines when standard error is not a
/// terminal (`ELMO_PROGRESS_SECONDS` overrides it).
const PLAIN_EVERY: Duration = Duration::from_secs(15);

/// Token cache entries that fit in `bytes` for this model (the cache is on
/// for corpus runs: a corpus repeats its words).
pub fn cache_entries(model: &ElmoModel, bytes: usize) -> usize {
    let o = model.options();
    let entry = (o.projection_dim() + o.n_filters() / 2).max(1) * 4;
    bytes / entry
}

/// Runs the corpus and reports; `quiet` prints nothing but errors.
pub fn run(model: &ElmoModel, input: &Path, out: &Path, cfg: &CorpusConfig, quiet: bool) -> Result<()> {
    let input = Input::open(input)?;
    let terminal = std::io::stderr().is_terminal();
    let bar = if quiet || !terminal {
        indicatif::ProgressBar::hidden()
    } else if let Some(total) = input.total_bytes {
        indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template("embedding {bar:30} {percent:>3}% {msg} eta {eta}")
                .expect("a valid template"),
        )
    } else {
        indicatif::ProgressBar::new_spinner()
            .with_style(indicatif::ProgressStyle::with_template("embedding {spinner} {msg}").expect("a valid template"))
    };
    let every = std::env::var("ELMO_PROGRESS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        // A negative, infinite or NaN value is ignored, not a panic.
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(PLAIN_EVERY);
    let t0 = Instant::now();
    let mut last_line = Instant::now();
    let mut report = |p: &Progress| {
        let rate = p.tokens_this_run as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        let msg = format!("{} sentences, {} tokens, {rate:.0} tok/s", p.sentences, p.tokens);
        if terminal && !quiet {
            bar.set_position(p.input_bytes);
            bar.set_message(msg);
        } else if !quiet && last_line.elapsed() >= every {
            let pct = p
                .input_total
                .filter(|&t| t > 0)
                .map(|t| format!(" ({:.1}% of the input)", 100.0 * p.input_bytes as f64 / t as f64))
                .unwrap_or_default();
            eprintln!("embedding: {msg}{pct}");
            last_line = Instant::now();
        }
    };
    let r = embed_corpus(model, input, out, cfg, &mut report);
    bar.finish_and_clear();
    let s: Summary = match r {
        Ok(s) => s,
        Err(e @ Error::Resume(_)) => return Err(e),
        Err(e) => {
            let journal = elmo::corpus::journal::Paths::for_output(out).map(|p| p.journal);
            if matches!(journal, Ok(ref j) if j.exists()) {
                // One line: the cause, and that nothing done is lost.
                eprintln!(
                    "error: {e} (what was done is kept beside {}: rerun with --resume to continue)",
                    out.display()
                );
                std::process::exit(1);
            }
            return Err(e);
        }
    };
    if !quiet {
        let resumed = if s.resumed_sentences > 0 {
            format!(", continuing {} sentences of an interrupted run", s.resumed_sentences)
        } else {
            String::new()
        };
        eprintln!(
            "wrote {}: {} sentences, {} tokens, {:.1} MB in {:.1} s ({:.0} tok/s{resumed}; padding {:.1}%; peak memory {:.0} MiB)",
            out.display(),
            s.sentences,
            s.tokens,
            s.bytes as f64 / 1e6,
            s.seconds,
            s.tokens_this_run as f64 / s.seconds.max(1e-9),
            100.0 * (s.padded_positions.saturating_sub(s.tokens_this_run)) as f64 / s.padded_positions.max(1) as f64,
            crate::bench::peak_rss_mib().unwrap_or(f64::NAN),
        );
    }
    Ok(())
}
