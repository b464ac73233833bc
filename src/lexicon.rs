//! Token ids exactly as HIT-SCIR's ELMoForManyLangs makes them (its
//! `read_list` and `create_one_batch`), from the lexicons `char.dic` and
//! `word.dic` that travel in the converted model file.
//!
//! Each sentence becomes `<bos>`, its tokens, `<eos>`. A token longer than
//! `C - 2` unicode characters (not bytes) is cut to its first `C - 2`. Its
//! row of `C` character ids: first the id the lexicon gives `<eow>`, then
//! one id per character (`<oov>`'s for a character the lexicon lacks), then
//! the id of `<bow>`, then `<pad>`'s. (The package looks the two word marks
//! up swapped, `bow_id, eow_id = ... ('<eow>', '<bow>')`; its models were
//! trained so, and this reproduces it.) A `<bos>` or `<eos>` token, added or
//! written by the user, gets `[<eow>, <bos> or <eos>, <bow>, <pad>...]`.
//! With a word lexicon, the (cut) token's word id follows (`<oov>`'s when
//! the lexicon lacks it). Every id is shifted by +1 so that 0 means "no
//! token", as in [`crate::chars`].

use crate::chars::CharIds;
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;

/// The special entries every character lexicon must have.
pub const CHAR_SPECIALS: [&str; 6] = ["<bow>", "<eow>", "<oov>", "<pad>", "<bos>", "<eos>"];
/// The special entries every word lexicon must have.
pub const WORD_SPECIALS: [&str; 2] = ["<oov>", "<pad>"];

/// A token -> id table read from a `.dic` file, entries in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dic {
    /// `(token, id)` in file order; a later line for the same token wins, as
    /// in the package's dict.
    pub entries: Vec<(String, u32)>,
}

impl Dic {
    /// Parses a `.dic` file's text as the package does: each line stripped of
    /// surrounding whitespace (Python's `str.strip`, which also eats a token
    /// that is itself whitespace), split at tabs; a line left with one field
    /// is the id of U+3000 (the ideographic space the strip ate). Blank lines
    /// are skipped; other malformed lines are errors naming the line.
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line = raw.trim_matches(is_python_space);
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let (token, id) = match fields[..] {
                [id] => ("\u{3000}", id),
                [token, id] => (token, id),
                _ => {
                    return Err(Error::Input(format!(
                        "{what} line {}: expected 'token<TAB>id', got {} tab-separated fields",
                        i + 1,
                        fields.len()
                    )));
                }
            };
            let id: u32 = id.trim_matches(is_python_space).parse().map_err(|_| {
                Error::Input(format!(
                    "{what} line {}: id {id:?} is not a non-negative integer",
                    i + 1
                ))
            })?;
            entries.push((token.to_string(), id));
        }
        Ok(Dic { entries })
    }

    /// The table as the package's dict holds it.
    pub fn map(&self) -> HashMap<&str, u32> {
        self.entries.iter().map(|(t, i)| (t.as_str(), *i)).collect()
    }

    /// Rows the package's embedding has: `len(word2id)`, the distinct tokens.
    pub fn rows(&self) -> usize {
        self.map().len()
    }

    fn to_value(&self) -> Value {
        Value::Array(
            self.entries
                .iter()
                .map(|(t, i)| Value::Array(vec![t.as_str().into(), (*i).into()]))
                .collect(),
        )
    }

    fn from_value(v: &Value, what: &str) -> Result<Self> {
        let bad = || Error::Input(format!("lexicon: '{what}' must be a list of [token, id] pairs"));
        let entries = v
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|e| match e.as_array().map(|p| &p[..]) {
                Some([Value::String(t), id]) => {
                    let id = id.as_u64().filter(|&i| i <= u32::MAX as u64).ok_or_else(bad)?;
                    Ok((t.clone(), id as u32))
                }
                _ => Err(bad()),
            })
            .collect::<Result<_>>()?;
        Ok(Dic { entries })
    }
}

/// Python's `str.isspace`: Unicode White_Space plus the four information
/// separators U+001C..U+001F (bidirectional class B/S), which `strip` eats.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// An ELMoForManyLangs model's tokenisation: its lexicons and the ids of
/// their special entries, checked against the embedding sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lexicon {
    chars: Dic,
    words: Option<Dic>,
    char_ids: HashMap<char, u32>,
    word_ids: HashMap<String, u32>,
    // Raw ids (before the +1 shift) of the specials.
    bow: u32,
    eow: u32,
    char_oov: u32,
    char_pad: u32,
    bos: u32,
    eos: u32,
    word_oov: u32,
}

impl Lexicon {
    /// Builds the tokenisation from the two lexicons, checking that the
    /// specials are present and that every id is a row of the embedding
    /// (the package's embeddings have `len(dict)` rows).
    pub fn new(chars: Dic, words: Option<Dic>) -> Result<Self> {
        let cm = chars.map();
        let get = |m: &HashMap<&str, u32>, k: &str, what: &str| {
            m.get(k)
                .copied()
                .ok_or_else(|| Error::Input(format!("{what} has no '{k}' entry (the package needs it)")))
        };
        for k in CHAR_SPECIALS {
            get(&cm, k, "char.dic")?;
        }
        let rows = cm.len() as u64;
        if let Some((t, i)) = chars.entries.iter().find(|(_, i)| *i as u64 >= rows) {
            return Err(Error::Input(format!(
                "char.dic: '{t}' has id {i}, but the lexicon has {rows} entries (the embedding's rows)"
            )));
        }
        if rows >= u16::MAX as u64 {
            return Err(Error::Input(format!(
                "char.dic has {rows} entries: at most 65534 are supported"
            )));
        }
        let mut char_ids = HashMap::new();
        for (t, i) in &chars.entries {
            let mut it = t.chars();
            if let (Some(c), None) = (it.next(), it.next()) {
                char_ids.insert(c, *i);
            }
        }
        let (mut word_ids, mut word_oov) = (HashMap::new(), 0);
        if let Some(w) = &words {
            let wm = w.map();
            for k in WORD_SPECIALS {
                get(&wm, k, "word.dic")?;
            }
            let rows = wm.len() as u64;
            if let Some((t, i)) = w.entries.iter().find(|(_, i)| *i as u64 >= rows) {
                return Err(Error::Input(format!(
                    "word.dic: '{t}' has id {i}, but the lexicon has {rows} entries (the embedding's rows)"
                )));
            }
            word_oov = get(&wm, "<oov>", "word.dic")?;
            word_ids = w.entries.iter().map(|(t, i)| (t.clone(), *i)).collect();
        }
        Ok(Lexicon {
            bow: get(&cm, "<bow>", "char.dic")?,
            eow: get(&cm, "<eow>", "char.dic")?,
            char_oov: get(&cm, "<oov>", "char.dic")?,
            char_pad: get(&cm, "<pad>", "char.dic")?,
            bos: get(&cm, "<bos>", "char.dic")?,
            eos: get(&cm, "<eos>", "char.dic")?,
            word_oov,
            chars,
            words,
            char_ids,
            word_ids,
        })
    }

    /// The character lexicon.
    pub fn chars(&self) -> &Dic {
        &self.chars
    }

    /// The word lexicon, for a model with a word embedding.
    pub fn words(&self) -> Option<&Dic> {
        self.words.as_ref()
    }

    /// Rows of the character embedding (the package's), without our zero row.
    pub fn char_rows(&self) -> usize {
        self.chars.rows()
    }

    /// Rows of the word embedding, without our zero row (0 without words).
    pub fn word_rows(&self) -> usize {
        self.words.as_ref().map_or(0, Dic::rows)
    }

    /// The JSON the model file's metadata stores (`lexicon`).
    pub fn to_json(&self) -> String {
        let mut v = serde_json::json!({ "chars": self.chars.to_value() });
        if let Some(w) = &self.words {
            v["words"] = w.to_value();
        }
        v.to_string()
    }

    /// Reads [`to_json`](Self::to_json)'s output back (checked as [`Lexicon::new`] does).
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Input(format!("lexicon: not valid JSON: {e}")))?;
        let chars = Dic::from_value(
            v.get("chars")
                .ok_or_else(|| Error::Input("lexicon: no 'chars'".into()))?,
            "chars",
        )?;
        let words = v.get("words").map(|w| Dic::from_value(w, "words")).transpose()?;
        Lexicon::new(chars, words)
    }

    /// One token's row: `c` character ids, then (with words) the word id in
    /// two u16, all +1 shifted.
    fn encode_token(&self, token: &str, c: usize, out: &mut [u16]) {
        let sh = |id: u32| (id + 1) as u16; // ids < 65534: checked in `new`
        out[..c].fill(sh(self.char_pad));
        out[0] = sh(self.eow);
        let end = match token {
            "<bos>" | "<eos>" => {
                out[1] = sh(if token == "<bos>" { self.bos } else { self.eos });
                2
            }
            _ => {
                let mut k = 1;
                for ch in token.chars() {
                    out[k] = sh(self.char_ids.get(&ch).copied().unwrap_or(self.char_oov));
                    k += 1;
                }
                k
            }
        };
        out[end] = sh(self.bow);
        if self.words.is_some() {
            let id = self.word_ids.get(token).copied().unwrap_or(self.word_oov) + 1;
            out[c] = id as u16;
            out[c + 1] = (id >> 16) as u16;
        }
    }

    /// Encodes tokenized sentences (without `<bos>`/`<eos>`) for a model
    /// with `c` characters per token (`max_characters_per_token`, at
    /// least 3).
    pub fn encode_batch<S, T>(&self, sentences: &[S], c: usize) -> Result<CharIds>
    where
        S: AsRef<[T]>,
        T: AsRef<str>,
    {
        if c < 3 {
            return Err(Error::Input(format!(
                "max_characters_per_token is {c}, at least 3 is needed"
            )));
        }
        let width = c + if self.words.is_some() { 2 } else { 0 };
        let batch = sentences.len();
        let positions = sentences.iter().map(|s| s.as_ref().len()).max().unwrap_or(0) + 2;
        let total = batch
            .checked_mul(positions)
            .and_then(|x| x.checked_mul(width))
            .ok_or_else(|| Error::Input("batch is too large to encode".into()))?;
        let mut ids = vec![0u16; total];
        for (b, s) in sentences.iter().enumerate() {
            let s = s.as_ref();
            let mut put = |t: usize, token: &str| {
                let at = (b * positions + t) * width;
                self.encode_token(token, c, &mut ids[at..at + width]);
            };
            put(0, "<bos>");
            for (t, tok) in s.iter().enumerate() {
                let tok = tok.as_ref();
                // `token[:max_chars - 2]`: unicode characters, not bytes.
                let cut = match tok.char_indices().nth(c - 2) {
                    Some((at, _)) => &tok[..at],
                    None => tok,
                };
                put(t + 1, cut);
            }
            put(s.len() + 1, "<eos>");
        }
        CharIds::from_raw(batch, positions, width, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lexicon(words: bool) -> Lexicon {
        let chars = Dic::parse(
            "<bow>\t0\n<eow>\t1\n<oov>\t2\n<pad>\t3\n<bos>\t4\n<eos>\t5\na\t6\nb\t7\n我\t8\n\u{3000}\t9\n",
            "char.dic",
        )
        .unwrap();
        let words = words.then(|| Dic::parse("<oov>\t0\n<pad>\t1\n<bos>\t2\n<eos>\t3\nab\t4\n", "word.dic").unwrap());
        Lexicon::new(chars, words).unwrap()
    }

    #[test]
    fn the_ideographic_space_line_is_read_as_the_package_reads_it() {
        let d = Dic::parse("x\t0\n\u{3000}\t7\n \t8\n\n", "char.dic").unwrap();
        assert_eq!(
            d.entries,
            vec![("x".into(), 0), ("\u{3000}".into(), 7), ("\u{3000}".into(), 8)]
        );
        assert_eq!(d.rows(), 2);
        assert!(
            Dic::parse("a\tb\tc\n", "char.dic")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        assert!(
            Dic::parse("a\tx\n", "char.dic")
                .unwrap_err()
                .to_string()
                .contains("not a non-negative")
        );
    }

    #[test]
    fn rows_as_the_package_makes_them() {
        let lx = lexicon(false);
        // 'a', 'z' (oov), '我', cut at C - 2 = 3 characters.
        let ids = lx.encode_batch(&[vec!["az我b"]], 5).unwrap();
        assert_eq!((ids.batch(), ids.positions(), ids.chars()), (1, 3, 5));
        // <bos>: [<eow>, <bos>, <bow>, <pad>, <pad>] + 1
        assert_eq!(ids.token(0, 0), &[2, 5, 1, 4, 4]);
        assert_eq!(ids.token(0, 1), &[2, 7, 3, 9, 1]);
        assert_eq!(ids.token(0, 2), &[2, 6, 1, 4, 4]);
    }

    #[test]
    fn word_ids_follow_the_characters() {
        let lx = lexicon(true);
        let ids = lx.encode_batch(&[vec!["ab", "b"], vec![]], 4).unwrap();
        assert_eq!((ids.positions(), ids.chars()), (4, 6));
        assert_eq!(&ids.token(0, 0)[4..], &[3, 0]); // <bos>: word id 2
        assert_eq!(&ids.token(0, 1)[4..], &[5, 0]); // "ab": 4
        assert_eq!(&ids.token(0, 2)[4..], &[1, 0]); // "b": <oov> 0
        assert_eq!(ids.raw_length(1), 2);
    }

    #[test]
    fn missing_specials_and_ids_beyond_the_rows_are_refused() {
        let e = Lexicon::new(Dic::parse("<bow>\t0\n", "char.dic").unwrap(), None).unwrap_err();
        assert!(e.to_string().contains("'<eow>'"), "{e}");
        let mut chars = lexicon(false).chars().clone();
        chars.entries.push(("c".into(), 99));
        let e = Lexicon::new(chars, None).unwrap_err().to_string();
        assert!(e.contains("'c' has id 99"), "{e}");
    }

    #[test]
    fn round_trips_through_json() {
        let lx = lexicon(true);
        assert_eq!(Lexicon::from_json(&lx.to_json()).unwrap(), lx);
    }
}
