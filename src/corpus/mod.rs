//! Embedding a whole corpus into one HDF5 file in allennlp's `elmo` layout,
//! with memory bounded by the window and the batch, not by the corpus, and
//! resumable after a crash.
//!
//! ```no_run
//! use elmo::corpus::{CorpusConfig, Input, embed_corpus};
//! let model = elmo::ElmoModel::load("weights/bilm-tf-test.safetensors".as_ref())?.with_token_cache(50_000);
//! let input = Input::open("corpus.txt".as_ref())?;
//! let summary = embed_corpus(&model, input, "corpus.hdf5".as_ref(), &CorpusConfig::default(), &mut |_| {})?;
//! println!("{} sentences, {} tokens", summary.sentences, summary.tokens);
//! # Ok::<(), elmo::Error>(())
//! ```
//!
//! The file: one float32 dataset per sentence, named by its index (`"0"` ..
//! `"N-1"`), of shape `(L + 1, n, 2P)` ([`Layers::All`]) or `(n, 2P)`
//! ([`Layers::Top`], [`Layers::Average`]), and `sentence_to_index`, a
//! one-element variable-length string holding the JSON object from each
//! sentence to its key, so that scripts written for allennlp's files read
//! it with h5py unchanged.
//!
//! How: sentences are read a window at a time ([`source`]), each window is
//! cut into batches of similar lengths ([`batching`]) whose vectors are
//! appended to the partial file as soon as they are computed, and the
//! window is committed to the journal ([`journal`]); the HDF5 metadata is
//! written at the end ([`crate::io::hdf5_out`]). Files: `source.rs` the
//! reader, `batching.rs` the plan, `journal.rs` the partial files and
//! resume, `index.rs` the text of `sentence_to_index`.

pub mod batching;
pub mod index;
pub mod journal;
pub mod source;

use crate::error::{Error, Result};
use crate::io::hdf5_out;
use crate::model::{BiLmOutput, ElmoModel};
use batching::BatchLimits;
use journal::{Commit, Header, Journal, Paths};
use source::{Format, Sentence, SentenceReader};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

/// Which vectors each sentence's dataset holds (allennlp's `--all`,
/// `--top`, `--average`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layers {
    /// Every layer, `(L + 1, n, 2P)`; layer 0 is `[token, token]`.
    #[default]
    All,
    /// The top LSTM layer, `(n, 2P)`.
    Top,
    /// The mean of the layers, `(n, 2P)`, summed in layer order in float32
    /// and divided by `L + 1`, as numpy's `mean(axis=0)` computes it.
    Average,
}

impl Layers {
    /// `all`, `top` or `average`.
    pub fn name(self) -> &'static str {
        match self {
            Layers::All => "all",
            Layers::Top => "top",
            Layers::Average => "average",
        }
    }
}

/// How a corpus is batched and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusConfig {
    /// The vectors written per sentence.
    pub layers: Layers,
    /// Sentences per batch, at most.
    pub batch_size: usize,
    /// Padded positions (sentences x longest) per batch, at most.
    pub batch_tokens: usize,
    /// Sentences read ahead and grouped by length (the order of the output
    /// datasets' names is the input's whatever the grouping).
    pub window: usize,
    /// Group by length within a window (`false`: input order).
    pub group_by_length: bool,
    /// Continue the partial output an interrupted run left (see
    /// [`journal`]); without one, start afresh.
    pub resume: bool,
    /// Test hook: abort the process (as a crash would) in the middle of the
    /// window after this many were committed in this run.
    #[doc(hidden)]
    pub crash_after_windows: Option<u64>,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        CorpusConfig {
            layers: Layers::All,
            batch_size: 64,
            batch_tokens: 4096,
            window: 4096,
            group_by_length: true,
            resume: false,
            crash_after_windows: None,
        }
    }
}

/// A corpus to read: a stream, its format and a label for messages.
pub struct Input {
    reader: Box<dyn BufRead>,
    format: Format,
    label: String,
    /// Its size in bytes when known (a file), for progress.
    pub total_bytes: Option<u64>,
}

impl Input {
    /// A file (`.jsonl`/`.json`: JSON lines, otherwise text), or standard
    /// input for `-` (text).
    pub fn open(path: &Path) -> Result<Input> {
        if path.as_os_str() == "-" {
            return Ok(Input::from_reader(
                Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())),
                Format::Text,
                "<stdin>",
            ));
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().ok();
        if meta.as_ref().is_some_and(|m| m.is_dir()) {
            return Err(Error::Input(format!(
                "{}: is a folder, not an input file",
                path.display()
            )));
        }
        let total = meta.map(|m| m.len());
        let mut input = Input::from_reader(
            Box::new(BufReader::with_capacity(1 << 20, file)),
            Format::from_path(path),
            path.display().to_string(),
        );
        input.total_bytes = total;
        Ok(input)
    }

    /// Any stream.
    pub fn from_reader(reader: Box<dyn BufRead>, format: Format, label: impl Into<String>) -> Input {
        Input {
            reader,
            format,
            label: label.into(),
            total_bytes: None,
        }
    }
}

/// Where a run stands, for progress reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Sentences written (including those of an interrupted run resumed).
    pub sentences: u64,
    /// Tokens written.
    pub tokens: u64,
    /// Tokens written by this process (for a rate).
    pub tokens_this_run: u64,
    /// Input bytes read.
    pub input_bytes: u64,
    /// The input's size, when known.
    pub input_total: Option<u64>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Sentences in the file.
    pub sentences: u64,
    /// Tokens in the file.
    pub tokens: u64,
    /// Sentences an interrupted run had done (0 when not resumed).
    pub resumed_sentences: u64,
    /// Padded positions computed by this run (tokens of this run plus the
    /// padding of its batches).
    pub padded_positions: u64,
    /// Tokens computed by this run.
    pub tokens_this_run: u64,
    /// Seconds this run took.
    pub seconds: f64,
    /// The finished file's size.
    pub bytes: u64,
}

/// A model's fingerprint as journals record it.
pub fn model_fingerprint(model: &ElmoModel) -> String {
    format!("{:08x}", model.file().fingerprint())
}

/// The appended vectors of the partial file.
struct DataFile {
    w: BufWriter<File>,
    end: u64,
    path: std::path::PathBuf,
}

impl DataFile {
    /// Appends `values` as little-endian float32 (the file's byte order).
    fn append(&mut self, values: &[f32]) -> Result<()> {
        let path = &self.path;
        if cfg!(target_endian = "little") {
            // The values' own bytes: no copy.
            self.w.write_all(bytemuck::cast_slice(values))
        } else {
            values.iter().try_for_each(|v| self.w.write_all(&v.to_le_bytes()))
        }
        .map_err(|e| Error::io(path, e))?;
        self.end += 4 * values.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.w.flush().map_err(|e| Error::io(&self.path, e))?;
        self.w.get_ref().sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

/// Sentence `b`'s vectors in the layout `layers` asks for, appended to
/// `out`: `(L + 1, n, 2P)` or `(n, 2P)`.
fn sentence_values(o: &BiLmOutput, b: usize, layers: Layers, out: &mut Vec<f32>) {
    let (n, nk, dim) = (o.lengths[b], o.n_layers, o.dim);
    match layers {
        Layers::All => {
            for k in 0..nk {
                for t in 0..n {
                    out.extend_from_slice(o.vector(b, k, t));
                }
            }
        }
        Layers::Top => {
            for t in 0..n {
                out.extend_from_slice(o.vector(b, nk - 1, t));
            }
        }
        Layers::Average => {
            for t in 0..n {
                let start = out.len();
                out.extend_from_slice(o.vector(b, 0, t));
                for k in 1..nk {
                    for (a, &v) in out[start..start + dim].iter_mut().zip(o.vector(b, k, t)) {
                        *a += v;
                    }
                }
                for a in &mut out[start..] {
                    *a /= nk as f32;
                }
            }
        }
    }
}

/// Embeds every sentence of `input` into the HDF5 file `out` (see the
/// module docs), calling `progress` after each batch.
///
/// Errors: an input error names the line (the windows before it are kept
/// for `resume`); I/O errors name the file; a resume that does not match
/// the partial output names the difference.
pub fn embed_corpus(
    model: &ElmoModel,
    input: Input,
    out: &Path,
    cfg: &CorpusConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Summary> {
    let t0 = Instant::now();
    let paths = Paths::for_output(out)?;
    if out.is_dir() {
        // Found now, not when the finished file is renamed onto it.
        return Err(Error::Input(format!(
            "{}: is a folder; --out names the file to write",
            out.display()
        )));
    }
    let o = model.options();
    let (nk, dim) = (o.n_output_layers(), 2 * o.projection_dim());
    let header = Header {
        format: journal::FORMAT.into(),
        model: model_fingerprint(model),
        model_path: model.file().path.display().to_string(),
        input_format: match input.format {
            Format::Text => "text".into(),
            Format::Jsonl => "jsonl".into(),
        },
        input: input.label.clone(),
        layers: cfg.layers.name().into(),
        batch_size: cfg.batch_size.max(1),
        batch_tokens: cfg.batch_tokens,
        window: cfg.window.max(1),
        group_by_length: cfg.group_by_length,
    };
    let limits = BatchLimits {
        max_sentences: header.batch_size,
        max_tokens: header.batch_tokens,
        group_by_length: header.group_by_length,
    };
    let total = input.total_bytes;
    let mut reader = SentenceReader::new(input.reader, input.format, input.label);

    // Start, or continue what an interrupted run committed.
    let mut scratch = Scratch {
        paths: &paths,
        fresh: false,
    };
    // Before any advice to resume or delete: those files are a live run's.
    if paths.has_partial() && journal::in_use(&paths.journal) {
        return Err(Error::Resume(format!(
            "{}: another run is writing this output now",
            paths.journal.display()
        )));
    }
    let (mut journal, mut done) = if cfg.resume && paths.has_partial() {
        for p in [&paths.partial, &paths.index] {
            if !p.exists() {
                let finished = if paths.out.exists() {
                    format!(
                        " ({} exists: if that run finished, only this clean-up was left)",
                        paths.out.display()
                    )
                } else {
                    String::new()
                };
                return Err(Error::Resume(format!(
                    "{} is missing, so the interrupted run cannot continue{finished}; {}",
                    p.display(),
                    paths.start_over()
                )));
            }
        }
        let (journal, started, last) = Journal::resume(&paths.journal).map_err(|e| paths.with_start_over(e))?;
        if let Some(d) = header.differences(&started) {
            return Err(Error::Resume(format!(
                "{} was started with different settings: {d}; rerun with them, or {}",
                paths.partial.display(),
                paths.start_over()
            )));
        }
        let done = last.unwrap_or_else(|| Commit {
            data_end: hdf5_out::DATA_START,
            index_len: 1,
            ..Default::default()
        });
        reader.skip_to(done.position()).map_err(|e| paths.with_start_over(e))?;
        (journal, done)
    } else {
        if cfg.resume && paths.out.exists() {
            return Err(Error::Resume(format!(
                "{} is complete: there is nothing to resume",
                paths.out.display()
            )));
        }
        if paths.has_partial() {
            return Err(Error::Resume(format!(
                "{} holds an interrupted run: continue it with --resume, or {}",
                paths.journal.display(),
                paths.start_over()
            )));
        }
        // From here until the first window is committed, a failure (an
        // invalid first line, an input that cannot be read) leaves no
        // files behind: there is nothing to resume.
        let journal = Journal::create(&paths.journal, &header)?;
        scratch.fresh = true;
        create_sized(&paths.partial, hdf5_out::DATA_START)?;
        std::fs::write(&paths.index, b"{").map_err(|e| Error::io(&paths.index, e))?;
        let done = Commit {
            data_end: hdf5_out::DATA_START,
            index_len: 1,
            ..Default::default()
        };
        (journal, done)
    };
    let resumed_sentences = done.sentences;
    let mut data = open_truncated(&paths.partial, done.data_end).map_err(|e| paths.with_start_over(e))?;
    let mut index = open_truncated(&paths.index, done.index_len).map_err(|e| paths.with_start_over(e))?;

    let mut summary = Summary {
        resumed_sentences,
        ..Default::default()
    };
    let mut window: Vec<Sentence> = Vec::new();
    let mut values = Vec::new();
    let mut index_text = Vec::new();
    let mut windows_this_run = 0u64;
    loop {
        // Read a window (whole lines). An input error ends the run; the
        // windows before it stay committed, this one is not computed: a
        // window is always the same run of sentences (what makes a resumed
        // file bitwise an uninterrupted one's), so after the input is fixed
        // it is read again whole.
        window.clear();
        while window.len() < header.window && reader.read_line_into(&mut window)? {}
        if window.is_empty() {
            break;
        }
        let lengths: Vec<usize> = window.iter().map(|s| s.tokens.len()).collect();
        let batches = batching::plan(&lengths, limits);
        summary.padded_positions += batching::padded_positions(&lengths, &batches) as u64;
        let mut commit = Commit {
            entries: Vec::with_capacity(window.len()),
            ..done.clone()
        };
        for (bi, batch) in batches.iter().enumerate() {
            let tokens: Vec<&Vec<String>> = batch.iter().map(|&i| &window[i].tokens).collect();
            let result = model.embed(&tokens)?;
            for (b, &i) in batch.iter().enumerate() {
                values.clear();
                sentence_values(&result, b, cfg.layers, &mut values);
                commit.entries.push((window[i].key, data.end, lengths[i] as u64));
                data.append(&values)?;
                commit.tokens += lengths[i] as u64;
                summary.tokens_this_run += lengths[i] as u64;
            }
            if bi == 0 && cfg.crash_after_windows == Some(windows_this_run) {
                data.sync()?;
                std::process::abort();
            }
            progress(&Progress {
                sentences: commit.sentences + commit.entries.len() as u64,
                tokens: commit.tokens,
                tokens_this_run: summary.tokens_this_run,
                input_bytes: reader.position().bytes,
                input_total: total,
            });
        }
        // The index in key order (the window is a run of consecutive keys).
        index_text.clear();
        for s in &window {
            index::push_entry(&mut index_text, s.key == 0, &s.text, s.key);
        }
        if index.end + index_text.len() as u64 + 1 > hdf5_out::MAX_JSON_LEN {
            // Found now rather than after the last window: the format's
            // 32-bit length of a variable-length string.
            return Err(Error::Input(format!(
                "{}: the text of sentence_to_index would exceed {} bytes, the most an HDF5 \
                 variable-length string holds; split the corpus",
                paths.out.display(),
                hdf5_out::MAX_JSON_LEN
            )));
        }
        index.w.write_all(&index_text).map_err(|e| Error::io(&paths.index, e))?;
        index.end += index_text.len() as u64;
        data.sync()?;
        index.sync()?;
        let at = reader.position();
        commit.lines = at.lines;
        commit.bytes = at.bytes;
        commit.input_crc = at.crc;
        commit.sentences = at.sentences;
        commit.data_end = data.end;
        commit.index_len = index.end;
        journal.commit(&commit)?;
        scratch.fresh = false;
        windows_this_run += 1;
        done = Commit {
            entries: Vec::new(),
            ..commit
        };
    }

    // Complete: the metadata after the data, then the file under its name.
    scratch.fresh = false;
    index.w.write_all(b"}").map_err(|e| Error::io(&paths.index, e))?;
    index.end += 1;
    index.sync()?;
    let index_len = index.end;
    drop(index);
    data.sync()?;
    let mut file = data
        .w
        .into_inner()
        .map_err(|e| Error::io(&paths.partial, e.into_error()))?;
    let manifest = hdf5_out::Manifest {
        layout: match cfg.layers {
            Layers::All => hdf5_out::Layout::rank3(nk as u64, dim as u64),
            _ => hdf5_out::Layout::rank2(dim as u64),
        },
        end_of_data: done.data_end,
        count: done.sentences,
        json_len: index_len,
    };
    let entries =
        Journal::entries(&paths.journal)?.map(|e| e.map(|(key, offset, n)| hdf5_out::DatasetEntry { key, offset, n }));
    let mut index_file = File::open(&paths.index).map_err(|e| Error::io(&paths.index, e))?;
    let bytes = hdf5_out::finish_file(&mut file, &paths.partial, &manifest, entries, &mut index_file)?;
    drop(file);
    std::fs::rename(&paths.partial, &paths.out).map_err(|e| Error::io(&paths.out, e))?;
    journal::sync_dir(&paths.out)?;
    drop(journal);
    paths.remove_scratch()?;
    summary.sentences = done.sentences;
    summary.tokens = done.tokens;
    summary.seconds = t0.elapsed().as_secs_f64();
    summary.bytes = bytes;
    Ok(summary)
}

/// The files of a fresh run that has committed nothing yet: removed if the
/// run ends in an error (not on `abort`, which the crash tests use).
struct Scratch<'a> {
    paths: &'a Paths,
    fresh: bool,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if self.fresh {
            for p in [&self.paths.partial, &self.paths.index, &self.paths.journal] {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Creates (or truncates) `path` with `len` zero bytes.
fn create_sized(path: &Path, len: u64) -> Result<()> {
    let f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.set_len(len).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Opens `path` for appending at `len`, cutting off anything after it.
fn open_truncated(path: &Path, len: u64) -> Result<DataFile> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let have = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if have < len {
        return Err(Error::Resume(format!(
            "{} is shorter ({have} bytes) than its journal says ({len})",
            path.display()
        )));
    }
    f.set_len(len).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(len)).map_err(|e| Error::io(path, e))?;
    Ok(DataFile {
        w: BufWriter::with_capacity(1 << 20, f),
        end: len,
        path: path.to_path_buf(),
    })
}
