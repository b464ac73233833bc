//! `elmo bench`: the anchors' command contract (one JSON line per output).

use elmo::mix::{MixConfig, ScalarMix};
use elmo::{ElmoModel, Error, Result, Tensor};
use std::path::Path;
use std::time::Instant;

/// Peak resident memory of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// One forward pass over a batch, producing the requested output in memory.
fn forward(model: &ElmoModel, batch: &[Vec<String>], mix: Option<&ScalarMix>) -> Result<usize> {
    let out = model.embed(batch)?;
    let Some(mix) = mix else { return Ok(out.data.len()) };
    let (b, t) = (out.lengths.len(), out.max_len);
    let mask: Vec<f32> = out
        .lengths
        .iter()
        .flat_map(|&l| (0..t).map(move |j| if j < l { 1.0 } else { 0.0 }))
        .collect();
    let all = Tensor::from_vec(&[b, out.n_layers, t, out.dim], out.data)?;
    Ok(mix.forward(&all, &mask, true)?.value().len())
}

/// The most `--threads` taken (as the Python package's `threads`): more
/// than any machine's cores, far fewer than a typo's `100000`.
const MAX_THREADS: usize = 4096;

#[allow(clippy::too_many_arguments)]
pub fn run(
    model_path: &Path,
    input: &Path,
    runs: usize,
    warmup: usize,
    threads: usize,
    output: &str,
    batch_size: Option<usize>,
    (token_cache, word_sharing): (usize, bool),
    device: elmo::Device,
) -> Result<()> {
    if runs == 0 {
        return Err(Error::Input("--runs must be at least 1".into()));
    }
    if !matches!(output, "layers" | "elmo") {
        return Err(Error::Input(format!("--output must be layers or elmo, got {output:?}")));
    }
    if !(1..=MAX_THREADS).contains(&threads) {
        return Err(Error::Input(format!(
            "--threads must be 1 to {MAX_THREADS}, got {threads}"
        )));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Input(format!("cannot start {threads} threads: {e}")))?;
    let mut batches =
        elmo::input::parse_jsonl(&std::fs::read(input).map_err(|e| Error::io(input, e))?).map_err(|e| match e {
            Error::Input(m) => Error::Input(format!("{}: {m}", input.display())),
            e => e,
        })?;
    if let Some(n) = batch_size {
        if n == 0 {
            return Err(Error::Input("--batch-size must be at least 1".into()));
        }
        batches = batches.iter().flat_map(|b| b.chunks(n).map(<[_]>::to_vec)).collect();
    }
    let n_tokens: usize = batches.iter().flatten().map(Vec::len).sum();
    let largest = batches.iter().map(Vec::len).max().unwrap_or(0);
    if n_tokens == 0 {
        return Err(Error::Input(format!("{}: no tokens", input.display())));
    }
    pool.install(|| {
        let t0 = Instant::now();
        let model = ElmoModel::load(model_path)?
            .with_token_cache(token_cache)
            .with_word_sharing(word_sharing)
            .with_device(device)?;
        let k = model.options().n_output_layers();
        let mix = (output == "elmo")
            .then(|| ScalarMix::new(k, &vec![0.0; k], 1.0, MixConfig::default(), false))
            .transpose()?;
        forward(&model, &batches[0], mix.as_ref())?;
        let load_s = t0.elapsed().as_secs_f64();
        let pass = || -> Result<f64> {
            let t = Instant::now();
            for b in &batches {
                std::hint::black_box(forward(&model, b, mix.as_ref())?);
            }
            Ok(t.elapsed().as_secs_f64())
        };
        for _ in 0..warmup {
            pass()?;
        }
        let mut times = (0..runs).map(|_| pass()).collect::<Result<Vec<f64>>>()?;
        times.sort_by(f64::total_cmp);
        let median = if runs % 2 == 1 {
            times[runs / 2]
        } else {
            (times[runs / 2 - 1] + times[runs / 2]) / 2.0
        };
        let workload = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let line = serde_json::json!({
            "runner": "rust",
            "output": output,
            "workload": workload,
            "runs": runs,
            "median_s": median,
            "min_s": times[0],
            "max_s": times[runs - 1],
            "tokens_per_s_median": n_tokens as f64 / median,
            "n_tokens": n_tokens,
            "batch_size": largest,
            "load_s": load_s,
            "peak_rss_mib": peak_rss_mib(),
            "threads": threads,
            "token_cache": token_cache,
            "word_sharing": word_sharing,
            "device": device.to_string(),
            "model": model_path.display().to_string(),
        });
        crate::outln!("{line}")
    })
}
