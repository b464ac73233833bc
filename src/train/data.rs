//! Sentiment data for the examples: the reviews that ship in the repository,
//! IMDB's `aclImdb/` folders, or Keras' `imdb.npz` + `imdb_word_index.json`;
//! and the vocabulary / padding conventions of Keras' IMDB utilities.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::path::Path;

/// Padding id.
pub const PAD: i64 = 0;
/// Id put before every sequence (Keras' `start_char`).
pub const START: i64 = 1;
/// Id of words outside the vocabulary (Keras' `oov_char`).
pub const UNK: i64 = 2;
/// Word ids start after the reserved ones (Keras' `index_from`).
pub const INDEX_FROM: i64 = 3;

/// A review and its label (1 positive, 0 negative).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Tokens of the review.
    pub tokens: Vec<String>,
    /// 1.0 positive, 0.0 negative.
    pub label: f32,
}

/// Training and validation examples and where they came from.
#[derive(Debug, Clone)]
pub struct SentimentData {
    /// Training examples.
    pub train: Vec<Example>,
    /// Validation examples.
    pub val: Vec<Example>,
    /// A description of the source, for printing.
    pub source: String,
}

/// Splits text into tokens: whitespace, with punctuation as separate tokens
/// and IMDB's `<br />` removed.
pub fn tokenize(text: &str) -> Vec<String> {
    let text = text.replace("<br />", " ");
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let mut cur = String::new();
        for c in word.chars() {
            if c.is_alphanumeric() || c == '\'' || c == '-' {
                cur.push(c);
            } else {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

/// Reads `reviews.tsv` (split, label, text per line).
pub fn load_reviews_tsv(path: &Path) -> Result<SentimentData> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut cols = line.splitn(3, '\t');
        let (Some(split), Some(label), Some(body)) = (cols.next(), cols.next(), cols.next()) else {
            return Err(Error::Input(format!(
                "{}: line {}: expected split, label, text",
                path.display(),
                i + 1
            )));
        };
        let label = match label {
            "0" => 0.0,
            "1" => 1.0,
            other => {
                return Err(Error::Input(format!(
                    "{}: line {}: label {other:?} is not 0 or 1",
                    path.display(),
                    i + 1
                )));
            }
        };
        let ex = Example {
            tokens: tokenize(body),
            label,
        };
        match split {
            "train" => train.push(ex),
            "val" => val.push(ex),
            other => {
                return Err(Error::Input(format!(
                    "{}: line {}: unknown split {other:?}",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    check_nonempty(&train, &val, path)?;
    Ok(SentimentData {
        train,
        val,
        source: format!("{} (shipped sample reviews)", path.display()),
    })
}

fn check_nonempty(train: &[Example], val: &[Example], path: &Path) -> Result<()> {
    if train.is_empty() || val.is_empty() {
        return Err(Error::Input(format!(
            "{}: no training or no validation examples",
            path.display()
        )));
    }
    Ok(())
}

/// Reads IMDB's `aclImdb/{train,test}/{pos,neg}/*.txt` (test = validation).
/// `limit` keeps at most that many reviews per split and class.
pub fn load_aclimdb(dir: &Path, limit: Option<usize>) -> Result<SentimentData> {
    let read = |split: &str| -> Result<Vec<Example>> {
        let mut v = Vec::new();
        for (class, label) in [("pos", 1.0), ("neg", 0.0)] {
            let d = dir.join(split).join(class);
            let mut files: Vec<_> = std::fs::read_dir(&d)
                .map_err(|e| Error::io(&d, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "txt"))
                .collect();
            files.sort();
            files.truncate(limit.unwrap_or(usize::MAX));
            for f in files {
                let bytes = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
                v.push(Example {
                    tokens: tokenize(&String::from_utf8_lossy(&bytes)),
                    label,
                });
            }
        }
        Ok(v)
    };
    let (train, val) = (read("train")?, read("test")?);
    check_nonempty(&train, &val, dir)?;
    Ok(SentimentData {
        train,
        val,
        source: format!("{} (aclImdb)", dir.display()),
    })
}

/// Keras' IMDB data: reviews as word ranks (1 = most frequent), labels, and
/// the vocabulary from `imdb_word_index.json`.
#[derive(Debug, Clone)]
pub struct ImdbData {
    /// Ids in Keras' convention (rank + 3; `<PAD>`, `<START>`, `<UNK>`).
    pub vocab: Vocab,
    /// Training reviews (word ranks) and labels.
    pub train: Vec<(Vec<i64>, f32)>,
    /// Test reviews, used for validation as in the original example.
    pub test: Vec<(Vec<i64>, f32)>,
}

impl ImdbData {
    /// `(x (N, maxlen), y (N, 1))` as `imdb.load_data` + `pad_sequences`
    /// give them: `<START>`, ranks + 3, truncated and padded at the front.
    pub fn tensors(&self, train: bool, maxlen: usize) -> Result<(Tensor, Tensor)> {
        let set = if train { &self.train } else { &self.test };
        let mut x = Vec::with_capacity(set.len() * maxlen);
        for (ranks, _) in set {
            let mut ids: Vec<i64> = std::iter::once(START)
                .chain(ranks.iter().map(|r| r + INDEX_FROM))
                .collect();
            if ids.len() > maxlen {
                ids.drain(..ids.len() - maxlen);
            }
            x.extend(std::iter::repeat_n(PAD as f32, maxlen - ids.len()));
            x.extend(ids.iter().map(|&i| i as f32));
        }
        let y = set.iter().map(|(_, l)| *l).collect();
        Ok((
            Tensor::from_vec(&[set.len(), maxlen], x)?,
            Tensor::from_vec(&[set.len(), 1], y)?,
        ))
    }
}

/// Reads Keras' `imdb.npz` (object arrays of word-rank lists, pickled by
/// NumPy; stored or compressed) and `imdb_word_index.json`. `limit` keeps
/// the first reviews of each class in each split.
pub fn load_imdb_npz(npz: &Path, word_index: &Path, limit: Option<usize>) -> Result<ImdbData> {
    let bytes = std::fs::read(npz).map_err(|e| Error::io(npz, e))?;
    let ctx = |e: Error| Error::Input(format!("{}: {e}", npz.display()));
    let entries: HashMap<String, Vec<u8>> = crate::io::npz::read_npz_raw(&bytes).map_err(ctx)?.into_iter().collect();
    let get = |name: &str| {
        entries
            .get(name)
            .ok_or_else(|| Error::Input(format!("{}: no array '{name}' (not Keras' imdb.npz?)", npz.display())))
    };
    let reviews = |name: &str| -> Result<Vec<Vec<i64>>> {
        let (descr, _, data) = crate::io::npz::split_npy(get(name)?).map_err(ctx)?;
        if descr != "|O" {
            return Err(Error::Input(format!(
                "{}: '{name}' has dtype {descr}, expected objects",
                npz.display()
            )));
        }
        let v = crate::train::pickle::load(data).map_err(ctx)?;
        crate::train::pickle::numpy_object_array(&v)
            .map_err(ctx)?
            .iter()
            .map(|x| crate::train::pickle::int_list(x).map_err(ctx))
            .collect()
    };
    let labels = |name: &str| -> Result<Vec<f32>> {
        let a = crate::io::npz::parse_npy(get(name)?).map_err(ctx)?;
        a.to_i64()?
            .into_iter()
            .map(|l| match l {
                0 => Ok(0.0),
                1 => Ok(1.0),
                _ => Err(Error::Input(format!(
                    "{}: label {l} in '{name}' is not 0 or 1",
                    npz.display()
                ))),
            })
            .collect()
    };
    let split = |x: &str, y: &str| -> Result<Vec<(Vec<i64>, f32)>> {
        let (xs, ys) = (reviews(x)?, labels(y)?);
        if xs.len() != ys.len() {
            return Err(Error::Input(format!(
                "{}: {} reviews but {} labels",
                npz.display(),
                xs.len(),
                ys.len()
            )));
        }
        let mut kept = [0usize; 2];
        Ok(xs
            .into_iter()
            .zip(ys)
            .filter(|(_, l)| {
                let c = &mut kept[*l as usize];
                *c += 1;
                *c <= limit.unwrap_or(usize::MAX)
            })
            .collect())
    };
    let text = std::fs::read_to_string(word_index).map_err(|e| Error::io(word_index, e))?;
    let index: HashMap<String, i64> = serde_json::from_str(&text)
        .map_err(|e| Error::Input(format!("{}: not a word index ({e})", word_index.display())))?;
    Ok(ImdbData {
        vocab: Vocab::from_word_index(index),
        train: split("x_train", "y_train")?,
        test: split("x_test", "y_test")?,
    })
}

/// Word ids in Keras' IMDB convention: 0 padding, 1 start, 2 unknown, then
/// words from 3 + rank (rank 1 = most frequent).
#[derive(Debug, Clone)]
pub struct Vocab {
    word2idx: HashMap<String, i64>,
    /// Id -> word, including `<PAD>`, `<START>`, `<UNK>` as the original
    /// example's `utils.py` builds it.
    pub idx2word: HashMap<i64, String>,
}

impl Vocab {
    /// From a word index (word -> rank from 1), like `imdb_word_index.json`.
    pub fn from_word_index(index: HashMap<String, i64>) -> Self {
        let mut word2idx: HashMap<String, i64> = index.into_iter().map(|(w, r)| (w, r + INDEX_FROM)).collect();
        word2idx.insert("<PAD>".into(), PAD);
        word2idx.insert("<START>".into(), START);
        word2idx.insert("<UNK>".into(), UNK);
        let idx2word = word2idx.iter().map(|(w, &i)| (i, w.clone())).collect();
        Vocab { word2idx, idx2word }
    }

    /// Ranks the words of `examples` by frequency (ties by first appearance).
    pub fn build(examples: &[Example]) -> Self {
        let mut count: HashMap<&str, (usize, usize)> = HashMap::new();
        for (pos, w) in examples.iter().flat_map(|e| &e.tokens).enumerate() {
            count.entry(w).or_insert((0, pos)).0 += 1;
        }
        let mut words: Vec<(&str, (usize, usize))> = count.into_iter().collect();
        words.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.1.1.cmp(&b.1.1)));
        Self::from_word_index(
            words
                .iter()
                .enumerate()
                .map(|(r, (w, _))| (w.to_string(), r as i64 + 1))
                .collect(),
        )
    }

    /// `<START>` + ids (unknown words -> `<UNK>`), then Keras'
    /// `pad_sequences` defaults: truncated and padded at the front to `maxlen`.
    pub fn encode(&self, tokens: &[String], maxlen: usize) -> Vec<f32> {
        let mut ids: Vec<i64> = std::iter::once(START)
            .chain(tokens.iter().map(|t| self.word2idx.get(t).copied().unwrap_or(UNK)))
            .collect();
        if ids.len() > maxlen {
            ids.drain(..ids.len() - maxlen);
        }
        let mut out = vec![PAD as f32; maxlen - ids.len()];
        out.extend(ids.iter().map(|&i| i as f32));
        out
    }

    /// `(x (N, maxlen), y (N, 1))` for a model.
    pub fn tensors(&self, examples: &[Example], maxlen: usize) -> Result<(Tensor, Tensor)> {
        let x = examples.iter().flat_map(|e| self.encode(&e.tokens, maxlen)).collect();
        let y = examples.iter().map(|e| e.label).collect();
        Ok((
            Tensor::from_vec(&[examples.len(), maxlen], x)?,
            Tensor::from_vec(&[examples.len(), 1], y)?,
        ))
    }

    /// Number of ids (the largest id + 1).
    pub fn len(&self) -> usize {
        self.idx2word.keys().max().map_or(0, |&m| m as usize + 1)
    }

    /// Whether only the reserved ids exist.
    pub fn is_empty(&self) -> bool {
        self.word2idx.len() <= 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_and_keras_padding() {
        assert_eq!(
            tokenize("Great film!<br />It's 10/10."),
            ["Great", "film", "!", "It's", "10", "/", "10", "."]
        );
        let ex = vec![Example {
            tokens: tokenize("a b a c a b"),
            label: 1.0,
        }];
        let v = Vocab::build(&ex);
        assert_eq!(v.idx2word[&4], "a");
        assert_eq!(v.idx2word[&5], "b");
        assert_eq!(v.idx2word[&1], "<START>");
        let toks: Vec<String> = ["a", "zzz", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(v.encode(&toks, 6), [0.0, 0.0, 1.0, 4.0, 2.0, 6.0]);
        assert_eq!(v.encode(&toks, 2), [2.0, 6.0], "truncated at the front");
    }

    #[test]
    fn keras_imdb_npz_all_encodings() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imdb_mini");
        for f in ["imdb_mini.npz", "imdb_mini_compressed.npz", "imdb_mini_protocol2.npz"] {
            let d = load_imdb_npz(&dir.join(f), &dir.join("imdb_word_index.json"), None).unwrap();
            assert_eq!(d.train.len(), 4, "{f}");
            assert_eq!(d.train[0], (vec![1, 2, 3, 4], 1.0), "{f}");
            assert_eq!(d.test[1], (vec![5, 7, 2], 0.0), "{f}");
            let (x, y) = d.tensors(true, 6).unwrap();
            // <START> + ranks + 3, pre-padded
            assert_eq!(&x.data()[..6], &[0.0, 1.0, 4.0, 5.0, 6.0, 7.0], "{f}");
            assert_eq!(y.data(), &[1.0, 0.0, 1.0, 0.0]);
            assert_eq!(d.vocab.idx2word[&7], "great");
            assert_eq!(d.vocab.idx2word[&1], "<START>");
        }
        let d = load_imdb_npz(&dir.join("imdb_mini.npz"), &dir.join("imdb_word_index.json"), Some(1)).unwrap();
        assert_eq!(d.train.len(), 2, "one per class");
        assert!(
            load_imdb_npz(
                &dir.join("imdb_word_index.json"),
                &dir.join("imdb_word_index.json"),
                None
            )
            .is_err()
        );
    }
}
