//! Input files of the CLI: plain text or JSON lines.
//!
//! * Plain text: one sentence per line, tokens separated by whitespace; a
//!   blank line is an empty sentence. Lines are grouped into batches of
//!   `batch_size`.
//! * `.jsonl`: each non-blank line is one batch, a JSON array of sentences,
//!   each a JSON array of token strings (`[]` is an empty sentence).

use crate::error::{Error, Result};
use std::path::Path;

/// Sentences of one batch, each a list of tokens.
pub type Batch = Vec<Vec<String>>;

/// Reads an input file; `.jsonl` / `.json` by extension, otherwise text.
pub fn read_batches(path: &Path, batch_size: usize) -> Result<Vec<Batch>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let is_json = matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl") | Some("json"));
    let r = if is_json {
        parse_jsonl(&bytes)
    } else {
        parse_text(&bytes, batch_size)
    };
    r.map_err(|e| match e {
        Error::Input(m) => Error::Input(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Parses plain text (see the module docs).
pub fn parse_text(bytes: &[u8], batch_size: usize) -> Result<Vec<Batch>> {
    if batch_size == 0 {
        return Err(Error::Input("batch size must be at least 1".into()));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&c| c == b'\n').count() + 1;
        Error::Input(format!("line {line}: invalid UTF-8 at byte {}", e.valid_up_to()))
    })?;
    let sentences: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    Ok(sentences.chunks(batch_size).map(<[_]>::to_vec).collect())
}

/// Parses JSON lines (see the module docs).
pub fn parse_jsonl(bytes: &[u8]) -> Result<Vec<Batch>> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| Error::Input(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    let mut batches = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let batch: Batch = serde_json::from_str(line).map_err(|e| {
            Error::Input(format!(
                "line {}: expected a JSON array of sentences, each an array of token strings ({e})",
                i + 1
            ))
        })?;
        batches.push(batch);
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_batches_and_empty_lines() {
        let b = parse_text(b"a b\n\n c  d e \n", 2).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0], vec![vec!["a", "b"], vec![]]);
        assert_eq!(b[1], vec![vec!["c", "d", "e"]]);
        assert!(parse_text(b"", 4).unwrap().is_empty());
        assert!(parse_text(b"x", 0).is_err());
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let e = parse_text(b"ok\nbad \xff\n", 8).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn jsonl() {
        let b = parse_jsonl("[[\"a\", \"b\"], []]\n\n[[\"é\"]]\n".as_bytes()).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0][1].len(), 0);
        assert_eq!(b[1][0][0], "é");
        let e = parse_jsonl(b"[[\"a\"]]\n[1, 2]\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
