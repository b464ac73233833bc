//! Sentences read from a stream as it goes: plain text (one sentence a line)
//! or JSON lines, from a file or standard input, with the line numbers
//! errors name and a running checksum of the bytes consumed (what `--resume`
//! compares to know it continues the same input).

use crate::error::{Error, Result};
use std::io::BufRead;

/// The longest input line read, in bytes (a sentence of millions of
/// tokens; its outputs alone would be gigabytes).
pub const MAX_LINE: usize = 64 << 20;

/// How lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One sentence a line, tokens split on whitespace; the sentence's text
    /// (its key in `sentence_to_index`) is the line without surrounding
    /// whitespace, as allennlp's `elmo` command keys it. A blank line is an
    /// empty sentence.
    Text,
    /// One JSON value a line: an array of token strings (one sentence), an
    /// array of such arrays (several sentences, as `elmo bench` workloads
    /// hold) or a string (split on whitespace). Blank lines are skipped. A
    /// sentence's text is its tokens joined by single spaces.
    Jsonl,
}

impl Format {
    /// `.jsonl`/`.json` by extension, otherwise text.
    pub fn from_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") | Some("json") => Format::Jsonl,
            _ => Format::Text,
        }
    }
}

/// One sentence of the corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Sentence {
    /// Its index in the corpus, from 0: the name of its dataset.
    pub key: u64,
    /// The 1-based input line it came from.
    pub line: u64,
    /// Its text, as `sentence_to_index` records it.
    pub text: String,
    /// Its tokens.
    pub tokens: Vec<String>,
}

/// Reads sentences one line at a time; memory is one line.
pub struct SentenceReader<R> {
    inner: R,
    format: Format,
    label: String,
    /// Lines consumed so far.
    lines: u64,
    /// Bytes consumed so far (always at a line boundary between calls).
    bytes: u64,
    /// CRC-32 of the bytes consumed so far.
    crc: crc32fast::Hasher,
    /// Sentences produced so far: the next key.
    next_key: u64,
    buf: Vec<u8>,
}

/// Where a reader stands: enough to check, on resume, that the same input
/// is being continued, and to skip what was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Lines consumed.
    pub lines: u64,
    /// Bytes consumed.
    pub bytes: u64,
    /// CRC-32 of those bytes.
    pub crc: u32,
    /// Sentences produced.
    pub sentences: u64,
}

impl<R: BufRead> SentenceReader<R> {
    /// Reads `inner` in `format`; `label` (a path, or `<stdin>`) starts
    /// every error message.
    pub fn new(inner: R, format: Format, label: impl Into<String>) -> Self {
        SentenceReader {
            inner,
            format,
            label: label.into(),
            lines: 0,
            bytes: 0,
            crc: crc32fast::Hasher::new(),
            next_key: 0,
            buf: Vec::new(),
        }
    }

    /// Where the reader stands now.
    pub fn position(&self) -> Position {
        Position {
            lines: self.lines,
            bytes: self.bytes,
            crc: self.crc.clone().finalize(),
            sentences: self.next_key,
        }
    }

    /// Skips to `to` without parsing, checking that the skipped bytes are
    /// the ones `to` was taken from (same length, same CRC-32): the input of
    /// a resumed run must begin as the interrupted run's did.
    pub fn skip_to(&mut self, to: Position) -> Result<()> {
        let mut left = to.bytes - self.bytes.min(to.bytes);
        while left > 0 {
            let label = &self.label;
            let chunk = self.inner.fill_buf().map_err(|e| Error::Io {
                path: label.clone().into(),
                source: e,
            })?;
            if chunk.is_empty() {
                return Err(Error::Resume(format!(
                    "{} is shorter ({} bytes) than the input the partial output was made from (at least {} bytes)",
                    self.label, self.bytes, to.bytes
                )));
            }
            let n = chunk.len().min(left as usize);
            self.crc.update(&chunk[..n]);
            self.lines += chunk[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            self.inner.consume(n);
            self.bytes += n as u64;
            left -= n as u64;
        }
        let here = self.crc.clone().finalize();
        if here != to.crc || self.lines != to.lines {
            return Err(Error::Resume(format!(
                "{}: its first {} bytes differ from the input the partial output was made from \
                 (CRC-32 {here:08x}, expected {:08x})",
                self.label, to.bytes, to.crc
            )));
        }
        self.next_key = to.sentences;
        Ok(())
    }

    fn io_error(&self, e: std::io::Error) -> Error {
        Error::Io {
            path: self.label.clone().into(),
            source: e,
        }
    }

    fn input_error(&self, line: u64, msg: impl std::fmt::Display) -> Error {
        Error::Input(format!("{} line {line}: {msg}", self.label))
    }

    /// The sentences of the next line that holds any (a text line always
    /// holds one; a JSON line zero or more), appended to `out`; `false` at
    /// the end of the input. An invalid line is an error naming it, and
    /// nothing of it is consumed from the position's point of view.
    pub fn read_line_into(&mut self, out: &mut Vec<Sentence>) -> Result<bool> {
        loop {
            self.buf.clear();
            // At most MAX_LINE bytes and the newline: an input without
            // newlines (`/dev/zero`) is an error, not all of memory.
            let n = std::io::Read::take(&mut self.inner, MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| self.io_error(e))?;
            if n == 0 {
                return Ok(false);
            }
            let line_no = self.lines + 1;
            if n > MAX_LINE && self.buf.last() != Some(&b'\n') {
                return Err(self.input_error(
                    line_no,
                    format_args!("longer than {} MiB (one sentence a line)", MAX_LINE >> 20),
                ));
            }
            let raw = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let text = std::str::from_utf8(raw).map_err(|e| {
                self.input_error(
                    line_no,
                    format_args!("invalid UTF-8 at byte {} of the line", e.valid_up_to()),
                )
            })?;
            let before = out.len();
            match self.format {
                Format::Text => {
                    let tokens = text.split_whitespace().map(str::to_owned).collect();
                    out.push(Sentence {
                        key: self.next_key,
                        line: line_no,
                        text: text.trim().to_owned(),
                        tokens,
                    });
                }
                Format::Jsonl => {
                    if !text.trim().is_empty() {
                        let parsed = parse_json_line(text).map_err(|m| self.input_error(line_no, m))?;
                        for tokens in parsed {
                            out.push(Sentence {
                                key: self.next_key + (out.len() - before) as u64,
                                line: line_no,
                                text: tokens.join(" "),
                                tokens,
                            });
                        }
                    }
                }
            }
            self.next_key += (out.len() - before) as u64;
            self.crc.update(&self.buf);
            self.bytes += n as u64;
            self.lines += 1;
            if out.len() > before {
                return Ok(true);
            }
        }
    }
}

/// One JSON line's sentences (see [`Format::Jsonl`]).
fn parse_json_line(text: &str) -> std::result::Result<Vec<Vec<String>>, String> {
    use serde_json::Value;
    let v: Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON ({e})"))?;
    let tokens =
        |v: &Value| -> Option<Vec<String>> { v.as_array()?.iter().map(|t| t.as_str().map(str::to_owned)).collect() };
    match &v {
        Value::String(s) => Ok(vec![s.split_whitespace().map(str::to_owned).collect()]),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(vec![tokens(&v).unwrap_or_default()]),
        Value::Array(items) if items.iter().all(Value::is_array) => items
            .iter()
            .map(|s| tokens(s).ok_or_else(|| "a sentence must be an array of token strings".to_string()))
            .collect(),
        _ => Err("expected a sentence (an array of token strings, or a string) or an array of sentences".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], format: Format) -> Result<Vec<Sentence>> {
        let mut r = SentenceReader::new(bytes, format, "in.txt");
        let mut v = Vec::new();
        while r.read_line_into(&mut v)? {}
        Ok(v)
    }

    #[test]
    fn text_lines_keys_and_blank_lines() {
        let v = read_all(b" a  b \n\nc\r\n", Format::Text).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].key, v[0].line, v[0].text.as_str()), (0, 1, "a  b"));
        assert_eq!(v[0].tokens, ["a", "b"]);
        assert!(v[1].tokens.is_empty() && v[1].text.is_empty());
        assert_eq!((v[2].key, v[2].line, v[2].text.as_str()), (2, 3, "c"));
    }

    #[test]
    fn jsonl_forms() {
        let v = read_all(b"[\"a\", \"b\"]\n\n[[\"c\"], []]\n\"d e\"\n[]\n", Format::Jsonl).unwrap();
        let texts: Vec<_> = v.iter().map(|s| (s.key, s.line, s.text.as_str())).collect();
        assert_eq!(
            texts,
            [(0, 1, "a b"), (1, 3, "c"), (2, 3, ""), (3, 4, "d e"), (4, 5, "")]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = read_all(b"ok\nbad \xff\n", Format::Text).unwrap_err().to_string();
        assert!(e.contains("in.txt line 2") && e.contains("UTF-8"), "{e}");
        let e = read_all(b"[\"a\"]\n[1, 2]\n", Format::Jsonl).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = read_all(b"[\"a\"\n", Format::Jsonl).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("malformed JSON"), "{e}");
    }

    #[test]
    fn skip_checks_the_prefix() {
        let text = b"a b\nc d\ne\n";
        let mut r = SentenceReader::new(&text[..], Format::Text, "x");
        let mut v = Vec::new();
        r.read_line_into(&mut v).unwrap();
        r.read_line_into(&mut v).unwrap();
        let at = r.position();
        assert_eq!((at.lines, at.bytes, at.sentences), (2, 8, 2));
        // The same input continues where it stood.
        let mut again = SentenceReader::new(&text[..], Format::Text, "x");
        again.skip_to(at).unwrap();
        let mut rest = Vec::new();
        again.read_line_into(&mut rest).unwrap();
        assert_eq!((rest[0].key, rest[0].line, rest[0].text.as_str()), (2, 3, "e"));
        // Another input is refused, so is a shorter one.
        let e = SentenceReader::new(&b"a b\nc X\ne\n"[..], Format::Text, "x")
            .skip_to(at)
            .unwrap_err()
            .to_string();
        assert!(e.contains("differ"), "{e}");
        let e = SentenceReader::new(&b"a b\n"[..], Format::Text, "x")
            .skip_to(at)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorter"), "{e}");
    }
}
