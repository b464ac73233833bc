//! The partial output of a corpus run and its journal: what lets a run
//! killed at any moment continue where it stopped, and a finished file
//! appear only when it is complete.
//!
//! Beside `OUT` (say `corpus.hdf5`) a run keeps, until it completes:
//! * `corpus.hdf5.partial`: the HDF5 file being built; the vectors are
//!   appended as they are computed (the metadata comes at the end);
//! * `corpus.hdf5.partial.index`: the text of `sentence_to_index` so far;
//! * `corpus.hdf5.partial.journal`: one header line (model, input format,
//!   settings) and then one line per committed window: where the input, the
//!   data and the index stood after it and where each of its sentences'
//!   vectors are. Each line carries its CRC-32, so a line torn by a crash is
//!   recognised and ignored.
//!
//! A window is committed only after the data and the index are on disk
//! (`fdatasync`), so whatever the journal says is there. Resuming truncates
//! the data and the index to the last commit, skips the input to where it
//! stood (checking that the skipped bytes are the same), and goes on; the
//! finished file is bitwise the one an uninterrupted run writes, because
//! every byte of it is a function of the input and the settings alone.

use crate::corpus::source::Position;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The files of a run writing `out`.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The finished file.
    pub out: PathBuf,
    /// The file being built.
    pub partial: PathBuf,
    /// The journal.
    pub journal: PathBuf,
    /// The text of `sentence_to_index` so far.
    pub index: PathBuf,
}

impl Paths {
    /// The files beside `out`; its folder must exist.
    pub fn for_output(out: &Path) -> Result<Paths> {
        let name = out
            .file_name()
            .ok_or_else(|| Error::Input(format!("{}: not a file name", out.display())))?
            .to_string_lossy()
            .into_owned();
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "{}: the output folder {} does not exist",
                out.display(),
                dir.display()
            )));
        }
        let beside = |suffix: &str| dir.join(format!("{name}{suffix}"));
        Ok(Paths {
            out: out.to_path_buf(),
            partial: beside(".partial"),
            journal: beside(".partial.journal"),
            index: beside(".partial.index"),
        })
    }

    /// How to start over instead of resuming: the files to delete.
    pub fn start_over(&self) -> String {
        format!(
            "to start over, delete {}, {} and {}",
            self.partial.display(),
            self.index.display(),
            self.journal.display()
        )
    }

    /// `e` with [`start_over`](Paths::start_over) appended, for a resume
    /// that cannot go on.
    pub fn with_start_over(&self, e: Error) -> Error {
        match e {
            Error::Resume(m) => Error::Resume(format!("{m}; {}", self.start_over())),
            e => e,
        }
    }

    /// Whether an interrupted run left its journal here.
    pub fn has_partial(&self) -> bool {
        self.journal.exists()
    }

    /// Removes the journal and the index (after the finished file is in place).
    pub fn remove_scratch(&self) -> Result<()> {
        for p in [&self.journal, &self.index] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(p, e)),
            }
        }
        sync_dir(&self.out)
    }
}

/// What a partial output was started with; a resumed run must match it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The journal's format.
    pub format: String,
    /// The model's fingerprint (CRC-32 of its options and tensors, hex).
    pub model: String,
    /// The model file, for messages.
    pub model_path: String,
    /// `text` or `jsonl`.
    pub input_format: String,
    /// The input, for messages.
    pub input: String,
    /// `all`, `top` or `average`.
    pub layers: String,
    /// Sentences per batch.
    pub batch_size: usize,
    /// Padded positions per batch.
    pub batch_tokens: usize,
    /// Sentences per window.
    pub window: usize,
    /// Whether windows are sorted by length.
    pub group_by_length: bool,
}

/// The journal format this build writes.
pub const FORMAT: &str = "elmo-corpus-journal/1";

impl Header {
    /// Why `self` (this run) cannot continue `started` (the partial
    /// output's), naming each difference; `None` when it can.
    pub fn differences(&self, started: &Header) -> Option<String> {
        let mut d = Vec::new();
        if self.format != started.format {
            d.push(format!(
                "journal format {} (this build writes {})",
                started.format, self.format
            ));
        }
        if self.model != started.model {
            d.push(format!(
                "the model ({} with fingerprint {}; now {} with fingerprint {})",
                started.model_path, started.model, self.model_path, self.model
            ));
        }
        let mut field = |name: &str, was: String, now: String| {
            if was != now {
                d.push(format!("{name} (was {was}, now {now})"));
            }
        };
        field(
            "the input format",
            started.input_format.clone(),
            self.input_format.clone(),
        );
        field("the layers written", started.layers.clone(), self.layers.clone());
        field(
            "--batch-size",
            started.batch_size.to_string(),
            self.batch_size.to_string(),
        );
        field(
            "--batch-tokens",
            started.batch_tokens.to_string(),
            self.batch_tokens.to_string(),
        );
        field("--window", started.window.to_string(), self.window.to_string());
        field(
            "length grouping",
            started.group_by_length.to_string(),
            self.group_by_length.to_string(),
        );
        (!d.is_empty()).then(|| d.join("; "))
    }
}

/// Where everything stood after a committed window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Input lines consumed.
    pub lines: u64,
    /// Input bytes consumed.
    pub bytes: u64,
    /// CRC-32 of those bytes.
    pub input_crc: u32,
    /// Sentences done (keys `0..sentences`).
    pub sentences: u64,
    /// Tokens done.
    pub tokens: u64,
    /// End of the data in the partial file.
    pub data_end: u64,
    /// Length of the index text.
    pub index_len: u64,
    /// This window's sentences: `(key, data offset, tokens)`, in the order
    /// they were written.
    pub entries: Vec<(u64, u64, u64)>,
}

impl Commit {
    /// The input position this commit stood at.
    pub fn position(&self) -> Position {
        Position {
            lines: self.lines,
            bytes: self.bytes,
            crc: self.input_crc,
            sentences: self.sentences,
        }
    }
}

fn line_of<T: Serialize>(v: &T) -> Vec<u8> {
    let json = serde_json::to_vec(v).expect("journal records serialize");
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

/// The record of a journal line, or `None` when it is torn or damaged.
fn parse_line<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Option<T> {
    let line = line.strip_suffix(b"\n")?;
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    (crc == crc32fast::hash(json)).then(|| serde_json::from_slice(json).ok())?
}

/// Takes the journal's lock for this run (released when the file is
/// closed, by the OS also when the process dies). A file system without
/// locks runs unlocked.
fn lock(file: &File, path: &Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Resume(format!(
            "{}: another run is writing this output now",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => Ok(()),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// Whether a running process holds the journal at `path` (a run locks its
/// journal while it goes on: [`Journal::create`]).
pub fn in_use(path: &Path) -> bool {
    File::open(path).is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
}

/// An open journal, appended to at each commit.
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Starts a new journal with `header`.
    ///
    /// The journal is created new (never over another run's) and locked
    /// while the run goes on: two runs cannot write one output.
    pub fn create(path: &Path, header: &Header) -> Result<Journal> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::Resume(format!(
                    "{}: another run started writing this output just now",
                    path.display()
                )),
                _ => Error::io(path, e),
            })?;
        let written = lock(&file, path).and_then(|()| {
            file.write_all(&line_of(header)).map_err(|e| Error::io(path, e))?;
            file.sync_data().map_err(|e| Error::io(path, e))?;
            sync_dir(path)
        });
        if let Err(e) = written {
            // Ours (created new above): a journal without its header would
            // only refuse the next run.
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(Journal {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing journal: its header, its last intact commit (none
    /// if no window was committed), with anything after that commit (a torn
    /// line) cut off.
    pub fn resume(path: &Path) -> Result<(Journal, Header, Option<Commit>)> {
        let damaged = |m: &str| Error::Resume(format!("{}: {m}", path.display()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        lock(&file, path)?;
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).map_err(|e| Error::io(path, e))?;
        let header: Header = parse_line(&line).ok_or_else(|| damaged("the journal's header is damaged"))?;
        let mut good_end = line.len() as u64;
        let mut last = None;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(|e| Error::io(path, e))?;
            let Some(commit) = (n > 0).then(|| parse_line::<Commit>(&line)).flatten() else {
                break;
            };
            good_end += n as u64;
            last = Some(commit);
        }
        drop(reader);
        file.set_len(good_end).map_err(|e| Error::io(path, e))?;
        let mut journal = Journal {
            file,
            path: path.to_path_buf(),
        };
        journal.file.seek(SeekFrom::End(0)).map_err(|e| Error::io(path, e))?;
        Ok((journal, header, last))
    }

    /// Appends a commit and makes it durable.
    pub fn commit(&mut self, c: &Commit) -> Result<()> {
        let path = &self.path;
        self.file.write_all(&line_of(c)).map_err(|e| Error::io(path, e))?;
        self.file.sync_data().map_err(|e| Error::io(path, e))
    }

    /// Every committed sentence, `(key, data offset, tokens)` by increasing
    /// key, read back from the journal one commit at a time (memory: one
    /// window).
    pub fn entries(path: &Path) -> Result<impl Iterator<Item = Result<(u64, u64, u64)>>> {
        let mut reader = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
        let mut header = Vec::new();
        reader.read_until(b'\n', &mut header).map_err(|e| Error::io(path, e))?;
        let path = path.to_path_buf();
        let mut window = Vec::new().into_iter();
        let mut line = Vec::new();
        Ok(std::iter::from_fn(move || {
            loop {
                if let Some(e) = window.next() {
                    return Some(Ok(e));
                }
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Err(e) => return Some(Err(Error::io(&path, e))),
                    Ok(0) => return None,
                    Ok(_) => {}
                }
                let Some(mut c) = parse_line::<Commit>(&line) else {
                    return Some(Err(Error::Resume(format!("{}: a damaged commit", path.display()))));
                };
                c.entries.sort_unstable_by_key(|e| e.0);
                window = c.entries.into_iter();
            }
        }))
    }
}

/// Makes a rename or a new file in `path`'s folder durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Opening a folder to fsync it works on Unix; elsewhere it is skipped.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT.into(),
            model: "0000abcd".into(),
            model_path: "m.safetensors".into(),
            input_format: "text".into(),
            input: "in.txt".into(),
            layers: "all".into(),
            batch_size: 32,
            batch_tokens: 4096,
            window: 1024,
            group_by_length: true,
        }
    }

    #[test]
    fn commits_survive_a_torn_line_and_entries_come_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::create(&path, &header()).unwrap();
        let c1 = Commit {
            sentences: 3,
            entries: vec![(2, 100, 1), (0, 104, 0), (1, 104, 2)],
            ..Default::default()
        };
        let c2 = Commit {
            sentences: 5,
            data_end: 999,
            entries: vec![(4, 200, 1), (3, 204, 1)],
            ..Default::default()
        };
        j.commit(&c1).unwrap();
        j.commit(&c2).unwrap();
        drop(j);
        // A crash in the middle of a third commit.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&line_of(&c2)[..20]).unwrap();
        drop(f);
        let (_, h, last) = Journal::resume(&path).unwrap();
        assert_eq!(h, header());
        assert_eq!(last, Some(c2));
        let keys: Vec<u64> = Journal::entries(&path).unwrap().map(|e| e.unwrap().0).collect();
        assert_eq!(keys, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn differences_are_named() {
        let mut now = header();
        assert_eq!(now.differences(&header()), None);
        now.layers = "top".into();
        now.model = "ffff0000".into();
        let d = now.differences(&header()).unwrap();
        assert!(d.contains("the layers written (was all, now top)"), "{d}");
        assert!(d.contains("fingerprint 0000abcd"), "{d}");
    }

    #[test]
    fn a_damaged_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(&path, b"garbage\n").unwrap();
        let e = Journal::resume(&path).err().unwrap().to_string();
        assert!(e.contains("header is damaged"), "{e}");
        let out = dir.path().join("missing").join("x.hdf5");
        let e = Paths::for_output(&out).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
