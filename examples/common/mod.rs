//! What both sentiment examples share: arguments, data, model loading.

use elmo::data::{SentimentData, Vocab, load_aclimdb, load_reviews_tsv};
use elmo::{ElmoModel, Result, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Args {
    pub model: PathBuf,
    pub aclimdb: Option<PathBuf>,
    pub imdb_npz: Option<(PathBuf, PathBuf)>,
    pub limit: Option<usize>,
    pub epochs: usize,
    pub maxlen: usize,
}

const USAGE: &str = "options: [--model MODEL.safetensors] [--aclimdb DIR | --imdb-npz imdb.npz --word-index imdb_word_index.json] \
[--limit N per class] [--epochs N (5)] [--maxlen N (100)]";

pub fn args() -> Args {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        model: root.join("weights/bilm-tf-test.safetensors"),
        aclimdb: None,
        imdb_npz: None,
        limit: None,
        epochs: 5,
        maxlen: 100,
    };
    let mut it = std::env::args().skip(1);
    let mut word_index = None;
    let mut npz = None;
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next().unwrap_or_else(|| {
                eprintln!("{flag} needs a value; {USAGE}");
                std::process::exit(2)
            })
        };
        let num = |s: String| -> usize {
            s.parse().unwrap_or_else(|_| {
                eprintln!("not a number: {s}");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--model" => a.model = value().into(),
            "--aclimdb" => a.aclimdb = Some(value().into()),
            "--imdb-npz" => npz = Some(PathBuf::from(value())),
            "--word-index" => word_index = Some(PathBuf::from(value())),
            "--limit" => a.limit = Some(num(value())),
            "--epochs" => a.epochs = num(value()),
            "--maxlen" => a.maxlen = num(value()),
            _ => {
                eprintln!("unknown argument {flag}; {USAGE}");
                std::process::exit(2)
            }
        }
    }
    match (npz, word_index) {
        (Some(n), Some(w)) => a.imdb_npz = Some((n, w)),
        (None, None) => {}
        _ => {
            eprintln!("--imdb-npz and --word-index go together; {USAGE}");
            std::process::exit(2)
        }
    }
    a
}

/// Prints `error: ...` and exits 1 on an error.
pub fn exit_on_error(r: Result<()>) {
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The last epoch's metrics and the mean time per epoch.
pub fn report(h: &elmo::train::History) {
    let per_epoch: f64 = h.epoch_seconds.iter().sum::<f64>() / h.epoch_seconds.len().max(1) as f64;
    println!(
        "final: accuracy {:.4}, val_accuracy {:.4}, {per_epoch:.1} s per epoch",
        h.accuracy.last().unwrap_or(&0.0),
        h.val_accuracy.last().unwrap_or(&0.0)
    );
}

/// The data as Keras would feed it: (vocab, x_train, y_train, x_val, y_val);
/// prints where it came from.
pub fn data(a: &Args) -> Result<(Vocab, Tensor, Tensor, Tensor, Tensor)> {
    let (vocab, xt, yt, xv, yv, source) = load(a)?;
    println!(
        "data: {source}: {} training, {} validation reviews",
        xt.shape()[0],
        xv.shape()[0]
    );
    Ok((vocab, xt, yt, xv, yv))
}

fn load(a: &Args) -> Result<(Vocab, Tensor, Tensor, Tensor, Tensor, String)> {
    if let Some((npz, index)) = &a.imdb_npz {
        let imdb = elmo::data::load_imdb_npz(npz, index, a.limit)?;
        let (xt, yt) = imdb.tensors(true, a.maxlen)?;
        let (xv, yv) = imdb.tensors(false, a.maxlen)?;
        return Ok((
            imdb.vocab,
            xt,
            yt,
            xv,
            yv,
            format!("{} (Keras imdb.npz)", npz.display()),
        ));
    }
    let d: SentimentData = match &a.aclimdb {
        Some(dir) => load_aclimdb(dir, a.limit)?,
        None => load_reviews_tsv(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/reviews.tsv"))?,
    };
    let vocab = Vocab::build(&d.train);
    let (xt, yt) = vocab.tensors(&d.train, a.maxlen)?;
    let (xv, yv) = vocab.tensors(&d.val, a.maxlen)?;
    Ok((vocab, xt, yt, xv, yv, d.source))
}

pub fn model(a: &Args) -> Result<Arc<ElmoModel>> {
    Ok(Arc::new(ElmoModel::load(&a.model)?))
}
