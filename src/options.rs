//! The model's hyper-parameters, read from allennlp/bilm-tf `options.json`.
//!
//! Only the keys the forward pass needs are read; everything else in the file
//! (training settings such as `n_epochs`, `dropout`, `all_clip_norm_val`) is
//! ignored, as bilm-tf's inference graph ignores it.

use crate::error::{Error, Result};
use serde_json::Value;

/// Largest value accepted for any single dimension: it keeps every product of
/// two sizes far from overflow and refuses absurd files early instead of
/// trying to allocate terabytes.
pub const MAX_DIM: usize = 1 << 20;

/// The number of character ids bilm-tf's prediction graph embeds: 261 from the
/// `Batcher` (bytes 0..255, `<S>`, `</S>`, begin/end of word, padding) plus the
/// zero row it prepends for "no token".
pub const N_CHARACTERS: usize = 262;

/// Non-linearity applied after the max-pool of every character convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `tanh(x)`.
    Tanh,
}

impl Activation {
    /// The name used in `options.json`.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
        }
    }
}

/// Character CNN options (`char_cnn` in `options.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct CharCnnOptions {
    /// Character embedding size E.
    pub embedding_dim: usize,
    /// `(width, number of filters)` for each convolution, in file order.
    pub filters: Vec<(usize, usize)>,
    /// Number of highway layers (0 when absent).
    pub n_highway: usize,
    /// Always [`N_CHARACTERS`]; kept to write it back.
    pub n_characters: usize,
    /// C: characters per token including begin/end-of-word marks.
    pub max_characters_per_token: usize,
    /// Activation after each convolution's max-pool.
    pub activation: Activation,
}

/// LSTM options (`lstm` in `options.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct LstmOptions {
    /// Cell size U.
    pub dim: usize,
    /// Projection size P (also the token embedding size).
    pub projection_dim: usize,
    /// Number of stacked layers L per direction.
    pub n_layers: usize,
    /// Cell clip; `None`: no clipping.
    pub cell_clip: Option<f32>,
    /// Projection clip; `None`: no clipping.
    pub proj_clip: Option<f32>,
    /// Residual connection around every layer after the first.
    pub use_skip_connections: bool,
}

/// Which project a model comes from: it fixes how tokens become ids (see
/// [`crate::lexicon`]) and whether the token embedding is always projected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// allennlp / bilm-tf: UTF-8 bytes as character ids.
    BilmTf,
    /// HIT-SCIR's ELMoForManyLangs: unicode characters (and optionally
    /// words) looked up in the lexicons stored in the model file.
    ElmoForManyLangs,
}

impl Family {
    /// The name used in the model file's options (`family`).
    pub fn name(self) -> &'static str {
        match self {
            Family::BilmTf => "bilm-tf",
            Family::ElmoForManyLangs => "elmoformanylangs",
        }
    }
}

/// A word embedding beside the character CNN (ELMoForManyLangs' `word_dim`),
/// concatenated before the character features and projected with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordEmbeddingOptions {
    /// Embedding size.
    pub dim: usize,
    /// Rows of `word_embed`, the zero row for "no token" included.
    pub n_words: usize,
}

/// The options of one ELMo biLM.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Character CNN part.
    pub char_cnn: CharCnnOptions,
    /// LSTM part.
    pub lstm: LstmOptions,
    /// Where the model comes from (`bilm-tf` unless the file says otherwise).
    pub family: Family,
    /// The word embedding, for ELMoForManyLangs models that have one.
    pub word_embedding: Option<WordEmbeddingOptions>,
}

fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for key in path.split('.') {
        cur = cur.get(key)?;
    }
    if cur.is_null() { None } else { Some(cur) }
}

fn dim(v: &Value, path: &str) -> Result<usize> {
    let x = field(v, path).ok_or_else(|| Error::Options(format!("missing '{path}'")))?;
    let n = x
        .as_u64()
        .ok_or_else(|| Error::Options(format!("'{path}' must be a positive integer, got {x}")))?;
    check_dim(n, path)
}

fn check_dim(n: u64, what: &str) -> Result<usize> {
    if n == 0 {
        return Err(Error::Options(format!("'{what}' must be positive, got 0")));
    }
    if n > MAX_DIM as u64 {
        return Err(Error::Options(format!(
            "'{what}' = {n} is larger than the supported maximum {MAX_DIM}"
        )));
    }
    Ok(n as usize)
}

fn clip(v: &Value, path: &str) -> Result<Option<f32>> {
    match field(v, path) {
        None => Ok(None),
        Some(x) => {
            let c = x
                .as_f64()
                .ok_or_else(|| Error::Options(format!("'{path}' must be a number or null, got {x}")))?;
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::Options(format!("'{path}' must be a positive number, got {c}")));
            }
            Ok(Some(c as f32))
        }
    }
}

/// The keys of `options.json`'s `lstm` section.
const LSTM_KEYS: [&str; 6] = [
    "dim",
    "projection_dim",
    "n_layers",
    "cell_clip",
    "proj_clip",
    "use_skip_connections",
];

/// The keys of `options.json`'s `char_cnn` section.
const CHAR_CNN_KEYS: [&str; 6] = [
    "embedding",
    "filters",
    "n_highway",
    "n_characters",
    "max_characters_per_token",
    "activation",
];

impl Options {
    /// Parses `options.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        Ok(Self::from_json_noting(text)?.0)
    }

    /// [`from_json`](Self::from_json), with one-line notices about what was
    /// read other than as written: bilm-tf's training writes
    /// `n_characters: 261` (its README tells users to set 262 before
    /// prediction); such a file is read as 262, with a notice.
    pub fn from_json_noting(text: &str) -> Result<(Self, Vec<String>)> {
        let mut v: Value = serde_json::from_str(text).map_err(|e| Error::Options(format!("not valid JSON: {e}")))?;
        let mut notices = Vec::new();
        let training =
            field(&v, "char_cnn.n_characters").and_then(Value::as_u64) == Some(261) && field(&v, "family").is_none();
        if training {
            v["char_cnn"]["n_characters"] = N_CHARACTERS.into();
            notices.push(
                "options: n_characters is 261 (as bilm-tf's training writes it); read as 262, the prediction \
                 layout with the zero padding row"
                    .to_string(),
            );
        }
        // Keys of the model's sections this reader does not know: a typo
        // there (`n_layer`) would silently take the default.
        for (section, known) in [
            ("lstm", &LSTM_KEYS[..]),
            ("char_cnn", &CHAR_CNN_KEYS[..]),
            ("char_cnn.embedding", &["dim"][..]),
        ] {
            if let Some(obj) = field(&v, section).and_then(Value::as_object) {
                for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
                    notices.push(format!(
                        "options: {section}.{key} is not a setting of the model and is ignored (known: {})",
                        known.join(", ")
                    ));
                }
            }
        }
        Ok((Self::from_value(&v)?, notices))
    }

    /// Reads and parses an `options.json` file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Options(m) => Error::Options(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// [`from_file`](Self::from_file) with [`from_json_noting`](Self::from_json_noting)'s notices.
    pub fn from_file_noting(path: &std::path::Path) -> Result<(Self, Vec<String>)> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_noting(&text).map_err(|e| match e {
            Error::Options(m) => Error::Options(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Builds options from parsed JSON, checking every value.
    pub fn from_value(v: &Value) -> Result<Self> {
        if !v.is_object() {
            return Err(Error::Options("expected a JSON object".into()));
        }
        let filters_v =
            field(v, "char_cnn.filters").ok_or_else(|| Error::Options("missing 'char_cnn.filters'".into()))?;
        let arr = filters_v
            .as_array()
            .ok_or_else(|| Error::Options("'char_cnn.filters' must be a list of [width, count] pairs".into()))?;
        if arr.is_empty() {
            return Err(Error::Options(
                "'char_cnn.filters' is empty: the model needs at least one filter".into(),
            ));
        }
        let mut filters = Vec::with_capacity(arr.len());
        for (i, f) in arr.iter().enumerate() {
            let pair = f
                .as_array()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| Error::Options(format!("'char_cnn.filters[{i}]' must be [width, count], got {f}")))?;
            let get = |j: usize, what: &str| -> Result<usize> {
                let n = pair[j].as_u64().ok_or_else(|| {
                    Error::Options(format!(
                        "'char_cnn.filters[{i}]' {what} must be a positive integer, got {}",
                        pair[j]
                    ))
                })?;
                check_dim(n, &format!("char_cnn.filters[{i}] {what}"))
            };
            filters.push((get(0, "width")?, get(1, "count")?));
        }
        let n_highway = match field(v, "char_cnn.n_highway") {
            None => 0,
            Some(x) => x
                .as_u64()
                .filter(|&n| n <= 64)
                .ok_or_else(|| Error::Options(format!("'char_cnn.n_highway' must be an integer 0..=64, got {x}")))?
                as usize,
        };
        let family = match field(v, "family").map(|x| x.as_str()) {
            None | Some(Some("bilm-tf")) => Family::BilmTf,
            Some(Some("elmoformanylangs")) => Family::ElmoForManyLangs,
            Some(other) => {
                return Err(Error::Options(format!(
                    "'family' must be \"bilm-tf\" or \"elmoformanylangs\", got {}",
                    other
                        .map(|s| format!("\"{s}\""))
                        .unwrap_or_else(|| "a non-string".into())
                )));
            }
        };
        let n_characters = dim(v, "char_cnn.n_characters")?;
        // ELMoForManyLangs' character lexicons have any size; ids are u16.
        if family == Family::ElmoForManyLangs && !(2..=1 << 16).contains(&n_characters) {
            return Err(Error::Options(format!(
                "'char_cnn.n_characters' is {n_characters}: an ELMoForManyLangs model needs 2..=65536 rows"
            )));
        }
        if family == Family::BilmTf && n_characters != N_CHARACTERS {
            return Err(Error::Options(format!(
                "'char_cnn.n_characters' is {n_characters}, but only {N_CHARACTERS} is supported: the weight file \
                 holds 261 character rows and prediction adds the zero padding row (bilm-tf sets 262 for inference)"
            )));
        }
        let max_chars = dim(v, "char_cnn.max_characters_per_token")?;
        if max_chars < 3 {
            return Err(Error::Options(format!(
                "'char_cnn.max_characters_per_token' is {max_chars}: it must be at least 3 (begin, one byte, end)"
            )));
        }
        for (i, &(w, _)) in filters.iter().enumerate() {
            if w > max_chars {
                return Err(Error::Options(format!(
                    "filter {i} has width {w}, wider than max_characters_per_token = {max_chars}"
                )));
            }
        }
        let activation = match field(v, "char_cnn.activation").and_then(Value::as_str) {
            Some("relu") => Activation::Relu,
            Some("tanh") => Activation::Tanh,
            other => {
                return Err(Error::Options(format!(
                    "'char_cnn.activation' must be \"relu\" or \"tanh\", got {}",
                    other.map(|s| format!("\"{s}\"")).unwrap_or_else(|| "nothing".into())
                )));
            }
        };
        let char_cnn = CharCnnOptions {
            embedding_dim: dim(v, "char_cnn.embedding.dim")?,
            filters,
            n_highway,
            n_characters,
            max_characters_per_token: max_chars,
            activation,
        };
        let n_layers = match field(v, "lstm.n_layers") {
            None => 1,
            Some(_) => dim(v, "lstm.n_layers")?,
        };
        if n_layers > 64 {
            return Err(Error::Options(format!(
                "'lstm.n_layers' = {n_layers} is too large (at most 64)"
            )));
        }
        let use_skip_connections = match field(v, "lstm.use_skip_connections") {
            None => false,
            Some(x) => x
                .as_bool()
                .ok_or_else(|| Error::Options(format!("'lstm.use_skip_connections' must be true or false, got {x}")))?,
        };
        let lstm = LstmOptions {
            dim: dim(v, "lstm.dim")?,
            projection_dim: dim(v, "lstm.projection_dim")?,
            n_layers,
            cell_clip: clip(v, "lstm.cell_clip")?,
            proj_clip: clip(v, "lstm.proj_clip")?,
            use_skip_connections,
        };
        let word_embedding = match field(v, "word_embedding") {
            None => None,
            Some(_) if family == Family::BilmTf => {
                return Err(Error::Options(
                    "'word_embedding' is only read for ELMoForManyLangs models ('family': \"elmoformanylangs\")".into(),
                ));
            }
            Some(_) => Some(WordEmbeddingOptions {
                dim: dim(v, "word_embedding.dim")?,
                n_words: dim(v, "word_embedding.n_words")?,
            }),
        };
        let o = Options {
            char_cnn,
            lstm,
            family,
            word_embedding,
        };
        if o.n_filters() > MAX_DIM {
            return Err(Error::Options(format!(
                "the filters add up to {} channels, too many",
                o.n_filters()
            )));
        }
        Ok(o)
    }

    /// F: total number of convolution filters (width of the char-CNN output).
    pub fn n_filters(&self) -> usize {
        self.char_cnn.filters.iter().map(|f| f.1).sum()
    }

    /// Whether a projection `(D + F) -> P` follows the highway layers
    /// (bilm-tf projects only when F != P; ELMoForManyLangs always does).
    pub fn has_projection(&self) -> bool {
        self.family == Family::ElmoForManyLangs || self.projection_input() != self.lstm.projection_dim
    }

    /// D: the word embedding's size (0 without one).
    pub fn word_dim(&self) -> usize {
        self.word_embedding.map_or(0, |w| w.dim)
    }

    /// D + F: the width of what the projection reads (the word embedding,
    /// then the highway output).
    pub fn projection_input(&self) -> usize {
        self.word_dim() + self.n_filters()
    }

    /// Ids per token in [`crate::CharIds`]: C character ids, then for a model
    /// with a word embedding the word id + 1 in two u16 (low half first).
    pub fn ids_per_token(&self) -> usize {
        self.char_cnn.max_characters_per_token + if self.word_embedding.is_some() { 2 } else { 0 }
    }

    /// P: size of the token embedding and of each direction's LSTM output.
    pub fn projection_dim(&self) -> usize {
        self.lstm.projection_dim
    }

    /// Number of layers the biLM outputs: the token layer plus one per LSTM layer.
    pub fn n_output_layers(&self) -> usize {
        self.lstm.n_layers + 1
    }

    /// Serialises back to bilm-tf's `options.json` layout.
    pub fn to_json(&self) -> String {
        let c = &self.char_cnn;
        let l = &self.lstm;
        let mut v = serde_json::json!({
            "lstm": {
                "dim": l.dim,
                "projection_dim": l.projection_dim,
                "n_layers": l.n_layers,
                "cell_clip": l.cell_clip,
                "proj_clip": l.proj_clip,
                "use_skip_connections": l.use_skip_connections,
            },
            "char_cnn": {
                "embedding": {"dim": c.embedding_dim},
                "filters": c.filters.iter().map(|&(w, n)| vec![w, n]).collect::<Vec<_>>(),
                "n_highway": c.n_highway,
                "n_characters": c.n_characters,
                "max_characters_per_token": c.max_characters_per_token,
                "activation": c.activation.name(),
            }
        });
        if self.family != Family::BilmTf {
            v["family"] = self.family.name().into();
        }
        if let Some(w) = self.word_embedding {
            v["word_embedding"] = serde_json::json!({"dim": w.dim, "n_words": w.n_words});
        }
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"lstm": {"cell_clip": 3, "use_skip_connections": false, "n_layers": 2, "proj_clip": 3,
        "projection_dim": 16, "dim": 64}, "char_cnn": {"embedding": {"dim": 4}, "filters": [[1, 4], [2, 8], [3, 16],
        [4, 32], [5, 64]], "n_highway": 2, "n_characters": 262, "max_characters_per_token": 50, "activation": "relu"}}"#;

    #[test]
    fn parses_tiny_and_round_trips() {
        let o = Options::from_json(TINY).unwrap();
        assert_eq!(o.n_filters(), 124);
        assert_eq!(o.lstm.cell_clip, Some(3.0));
        assert!(o.has_projection());
        assert_eq!(Options::from_json(&o.to_json()).unwrap(), o);
    }

    fn edit(f: impl FnOnce(&mut Value)) -> Result<Options> {
        let mut v: Value = serde_json::from_str(TINY).unwrap();
        f(&mut v);
        Options::from_value(&v)
    }

    #[test]
    fn training_options_read_as_prediction_options_with_a_notice() {
        let text = TINY.replace("\"n_characters\": 262", "\"n_characters\": 261");
        let (o, notices) = Options::from_json_noting(&text).unwrap();
        assert_eq!(o.char_cnn.n_characters, N_CHARACTERS);
        assert_eq!(notices.len(), 1);
        assert!(notices[0].contains("261") && notices[0].contains("262"), "{notices:?}");
        assert!(Options::from_json_noting(TINY).unwrap().1.is_empty());
    }

    #[test]
    fn elmoformanylangs_options_round_trip() {
        let o = edit(|v| {
            v["family"] = "elmoformanylangs".into();
            v["char_cnn"]["n_characters"] = 1000.into();
            v["word_embedding"] = serde_json::json!({"dim": 12, "n_words": 77});
        })
        .unwrap();
        assert_eq!(o.family, Family::ElmoForManyLangs);
        assert_eq!(o.word_dim(), 12);
        assert_eq!(o.projection_input(), 12 + 124);
        assert_eq!(o.ids_per_token(), 52);
        assert!(o.has_projection());
        assert_eq!(Options::from_json(&o.to_json()).unwrap(), o);
        let e = edit(|v| {
            v["family"] = "elmoformanylangs".into();
            v["char_cnn"]["n_characters"] = 70000.into();
        });
        assert!(e.unwrap_err().to_string().contains("65536"));
    }

    #[test]
    fn optional_keys() {
        let o = edit(|v| {
            v["lstm"]["cell_clip"] = Value::Null;
            v["lstm"].as_object_mut().unwrap().remove("proj_clip");
            v["char_cnn"].as_object_mut().unwrap().remove("n_highway");
            v["lstm"].as_object_mut().unwrap().remove("use_skip_connections");
        })
        .unwrap();
        assert_eq!(
            (o.lstm.cell_clip, o.lstm.proj_clip, o.char_cnn.n_highway),
            (None, None, 0)
        );
        assert!(!o.lstm.use_skip_connections);
    }

    #[test]
    fn bad_values_are_errors_that_say_why() {
        let msg = |r: Result<Options>| r.unwrap_err().to_string();
        assert!(msg(edit(|v| v["char_cnn"]["n_characters"] = 261.into())).contains("261 character rows"));
        assert!(msg(edit(|v| v["char_cnn"]["n_characters"] = 300.into())).contains("only 262"));
        assert!(msg(edit(|v| v["family"] = "gpt".into())).contains("'family'"));
        assert!(
            msg(edit(
                |v| v["word_embedding"] = serde_json::json!({"dim": 4, "n_words": 9})
            ))
            .contains("only read")
        );
        assert!(msg(edit(|v| v["char_cnn"]["filters"] = serde_json::json!([]))).contains("empty"));
        assert!(msg(edit(|v| v["char_cnn"]["activation"] = "gelu".into())).contains("relu"));
        assert!(msg(edit(|v| v["lstm"]["dim"] = 0.into())).contains("positive"));
        assert!(msg(edit(|v| v["lstm"]["dim"] = (-3).into())).contains("positive integer"));
        assert!(msg(edit(|v| v["lstm"]["dim"] = (1u64 << 40).into())).contains("maximum"));
        assert!(msg(edit(|v| v["char_cnn"]["filters"] = serde_json::json!([[60, 3]]))).contains("wider"));
        assert!(msg(edit(|v| v["lstm"]["cell_clip"] = (-1.0).into())).contains("positive"));
        assert!(Options::from_json("[1, 2").is_err());
    }
}
