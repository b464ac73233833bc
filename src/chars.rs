//! Character ids exactly as bilm-tf's `Batcher.batch_sentences` makes them.
//!
//! Each token becomes `C` ids: begin-of-word (258), the token's UTF-8 bytes cut
//! to `C - 2` **bytes** (a cut may split a multi-byte character: the partial
//! bytes stay), end-of-word (259), then padding (260). Each sentence gets a
//! `<S>` row before and a `</S>` row after. Finally every id is shifted by +1
//! so that 0 can mean "no token": padded rows are all zeros.

use crate::error::{Error, Result};

/// Raw id of the begin-of-sentence character (before the +1 shift).
pub const BOS_CHAR: u16 = 256;
/// Raw id of the end-of-sentence character.
pub const EOS_CHAR: u16 = 257;
/// Raw id of the begin-of-word mark.
pub const BOW_CHAR: u16 = 258;
/// Raw id of the end-of-word mark.
pub const EOW_CHAR: u16 = 259;
/// Raw id of the padding character inside a token.
pub const PAD_CHAR: u16 = 260;

/// A batch of character ids, `(batch, positions, chars)` in row-major order,
/// with `positions = longest sentence + 2` (the `<S>`/`</S>` boundaries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharIds {
    batch: usize,
    positions: usize,
    chars: usize,
    ids: Vec<u16>,
}

impl CharIds {
    /// Wraps ids that come from elsewhere (for example a golden file).
    ///
    /// Checks the length, that every id is below 262 and that each row's real
    /// positions (those with any non-zero id) form a prefix: the LSTM reads a
    /// sentence as positions `0..len`, so a gap would be silently misread.
    pub fn from_ids(batch: usize, positions: usize, chars: usize, ids: Vec<u16>) -> Result<Self> {
        let n = batch
            .checked_mul(positions)
            .and_then(|x| x.checked_mul(chars))
            .ok_or_else(|| Error::Input("char id tensor is too large".into()))?;
        if ids.len() != n {
            return Err(Error::Input(format!(
                "char ids hold {} values, expected {batch} x {positions} x {chars} = {n}",
                ids.len()
            )));
        }
        if chars == 0 {
            return Err(Error::Input("char ids need at least one character per token".into()));
        }
        if let Some(bad) = ids.iter().find(|&&x| x as usize >= crate::options::N_CHARACTERS) {
            return Err(Error::Input(format!("char id {bad} is out of range 0..=261")));
        }
        let c = CharIds {
            batch,
            positions,
            chars,
            ids,
        };
        for b in 0..batch {
            let len = c.raw_length(b);
            if (len..positions).any(|t| c.is_real(b, t)) {
                return Err(Error::Input(format!(
                    "row {b} of the char ids has an all-zero (padding) position followed by a real one"
                )));
            }
        }
        Ok(c)
    }

    /// Ids a tokenizer made (checked only for the sizes): ELMoForManyLangs'
    /// lexicon ids have no fixed range.
    pub(crate) fn from_raw(batch: usize, positions: usize, chars: usize, ids: Vec<u16>) -> Result<Self> {
        if batch.checked_mul(positions).and_then(|x| x.checked_mul(chars)) != Some(ids.len()) {
            return Err(Error::Input("char ids do not match their sizes".into()));
        }
        Ok(CharIds {
            batch,
            positions,
            chars,
            ids,
        })
    }

    /// Number of sentences.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Positions per sentence, boundaries included (`T + 2`).
    pub fn positions(&self) -> usize {
        self.positions
    }
    /// Ids per token: C characters (then, for a model with a word
    /// embedding, the word id in two; see [`crate::Options::ids_per_token`]).
    pub fn chars(&self) -> usize {
        self.chars
    }
    /// All ids, `(batch, positions, chars)` row-major.
    pub fn ids(&self) -> &[u16] {
        &self.ids
    }
    /// The `chars` ids of one position.
    pub fn token(&self, b: usize, t: usize) -> &[u16] {
        let o = (b * self.positions + t) * self.chars;
        &self.ids[o..o + self.chars]
    }
    fn is_real(&self, b: usize, t: usize) -> bool {
        self.token(b, t).iter().any(|&x| x > 0)
    }
    /// Real positions of sentence `b` including `<S>` and `</S>` (bilm-tf's
    /// `raw_lengths`): the count of positions with any non-zero id.
    pub fn raw_length(&self, b: usize) -> usize {
        (0..self.positions).take_while(|&t| self.is_real(b, t)).count()
    }
    /// The ids as `i32`, the dtype the golden files use.
    pub fn to_i32(&self) -> Vec<i32> {
        self.ids.iter().map(|&x| x as i32).collect()
    }
}

/// Writes one token's row (already +1 shifted) into `out` (length `C`).
fn encode_token(token: &str, out: &mut [u16]) {
    let c = out.len();
    out.fill(PAD_CHAR + 1);
    // A literal <S> / </S> gets the sentence-boundary pattern, as bilm-tf does
    // with any vocabulary that lists them (every released ELMo vocabulary).
    let (body, special) = match token {
        "<S>" => (&[][..], Some(BOS_CHAR)),
        "</S>" => (&[][..], Some(EOS_CHAR)),
        _ => (token.as_bytes(), None),
    };
    out[0] = BOW_CHAR + 1;
    let mut k = 1;
    if let Some(s) = special {
        out[k] = s + 1;
        k += 1;
    } else {
        for &byte in body.iter().take(c - 2) {
            out[k] = byte as u16 + 1;
            k += 1;
        }
    }
    out[k] = EOW_CHAR + 1;
}

/// Encodes a batch of tokenized sentences (tokens without `<S>`/`</S>`).
///
/// `chars` is `max_characters_per_token` from the options (at least 3).
/// Empty sentences are allowed: they get just the two boundary rows.
pub fn encode_batch<S, T>(sentences: &[S], chars: usize) -> Result<CharIds>
where
    S: AsRef<[T]>,
    T: AsRef<str>,
{
    if chars < 3 {
        return Err(Error::Input(format!(
            "max_characters_per_token is {chars}, at least 3 is needed"
        )));
    }
    let batch = sentences.len();
    let longest = sentences.iter().map(|s| s.as_ref().len()).max().unwrap_or(0);
    let positions = longest + 2;
    let total = batch
        .checked_mul(positions)
        .and_then(|x| x.checked_mul(chars))
        .ok_or_else(|| Error::Input("batch is too large to encode".into()))?;
    let mut ids: Vec<u16> = crate::tensor::try_zeroed(total, "the batch's character ids")?;
    for (b, s) in sentences.iter().enumerate() {
        let s = s.as_ref();
        let row = |t: usize| (b * positions + t) * chars;
        encode_token("<S>", &mut ids[row(0)..row(0) + chars]);
        for (t, tok) in s.iter().enumerate() {
            encode_token(tok.as_ref(), &mut ids[row(t + 1)..row(t + 1) + chars]);
        }
        let e = row(s.len() + 1);
        encode_token("</S>", &mut ids[e..e + chars]);
    }
    Ok(CharIds {
        batch,
        positions,
        chars,
        ids,
    })
}

/// Adds the `<S>`/`</S>` rows to character ids laid out as allennlp's
/// `batch_to_ids` makes them: `(batch, tokens, chars)`, already +1 shifted,
/// no sentence boundaries, padded tokens all zero after each sentence's real
/// tokens. The result is what [`encode_batch`] gives for the same tokens.
pub fn with_boundaries(batch: usize, tokens: usize, chars: usize, ids: &[u16]) -> Result<CharIds> {
    if chars < 3 {
        return Err(Error::Input(format!(
            "char ids have {chars} characters per token, at least 3 are needed"
        )));
    }
    let n = batch
        .checked_mul(tokens)
        .and_then(|x| x.checked_mul(chars))
        .ok_or_else(|| Error::Input("char id tensor is too large".into()))?;
    if ids.len() != n {
        return Err(Error::Input(format!(
            "char ids hold {} values, expected {batch} x {tokens} x {chars} = {n}",
            ids.len()
        )));
    }
    let positions = tokens + 2;
    let mut out = vec![0u16; batch * positions * chars];
    for b in 0..batch {
        let src = &ids[b * tokens * chars..(b + 1) * tokens * chars];
        let len = src.chunks_exact(chars).take_while(|t| t.iter().any(|&x| x > 0)).count();
        let dst = &mut out[b * positions * chars..(b + 1) * positions * chars];
        encode_token("<S>", &mut dst[..chars]);
        dst[chars..(len + 1) * chars].copy_from_slice(&src[..len * chars]);
        encode_token("</S>", &mut dst[(len + 1) * chars..(len + 2) * chars]);
        // A real token after a padded one is refused by `from_ids` below.
        dst[(len + 2) * chars..].copy_from_slice(&src[len * chars..]);
    }
    CharIds::from_ids(batch, positions, chars, out)
}

/// The distinct words of `ids` (tokens of `c` ids each) in order of first
/// appearance, and for every token the index of its word.
pub(crate) fn distinct_words(ids: &[u16], c: usize) -> (Vec<u16>, Vec<usize>) {
    let c = c.max(1);
    let n = ids.len() / c;
    let mut seen: std::collections::HashMap<&[u16], usize> = std::collections::HashMap::with_capacity(n);
    let mut words = Vec::with_capacity(ids.len());
    let index = ids
        .chunks_exact(c)
        .map(|w| {
            *seen.entry(w).or_insert_with(|| {
                words.extend_from_slice(w);
                words.len() / c - 1
            })
        })
        .collect();
    (words, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_bilm_tf() {
        let c = encode_batch(&[vec!["ab"], vec![]], 6).unwrap();
        assert_eq!((c.batch(), c.positions(), c.chars()), (2, 3, 6));
        assert_eq!(c.token(0, 0), &[259, 257, 260, 261, 261, 261]);
        assert_eq!(c.token(0, 1), &[259, 98, 99, 260, 261, 261]);
        assert_eq!(c.token(0, 2), &[259, 258, 260, 261, 261, 261]);
        assert_eq!(c.token(1, 1), &[259, 258, 260, 261, 261, 261]);
        assert_eq!(c.token(1, 2), &[0; 6]);
        assert_eq!((c.raw_length(0), c.raw_length(1)), (3, 2));
    }

    #[test]
    fn cuts_bytes_not_characters() {
        // 'é' is C3 A9: with C = 5 only 3 bytes fit, the cut keeps the lead byte.
        let c = encode_batch(&[vec!["xxé"]], 5).unwrap();
        assert_eq!(c.token(0, 1), &[259, 121, 121, 0xC3 + 1, 260]);
        let long = "a".repeat(5000);
        let c = encode_batch(&[vec![long.as_str()]], 50).unwrap();
        assert_eq!(c.token(0, 1)[49], 260);
        assert_eq!(c.token(0, 1)[48], 98);
    }

    #[test]
    fn from_ids_rejects_gaps_and_range() {
        let c = encode_batch(&[vec!["a", "b"]], 4).unwrap();
        assert!(CharIds::from_ids(1, 4, 4, c.ids().to_vec()).is_ok());
        let mut gap = c.ids().to_vec();
        gap[4..8].fill(0);
        assert!(CharIds::from_ids(1, 4, 4, gap).is_err());
        let mut big = c.ids().to_vec();
        big[0] = 262;
        assert!(CharIds::from_ids(1, 4, 4, big).is_err());
        assert!(CharIds::from_ids(1, 4, 3, c.ids().to_vec()).is_err());
    }

    #[test]
    fn boundaries_added_as_encode_batch_does() {
        let want = encode_batch(&[vec!["ab", "c"], vec!["d"], vec![]], 6).unwrap();
        // allennlp's layout: the token rows only, (3, 2, 6).
        let mut bare = vec![0u16; 3 * 2 * 6];
        for (b, len) in [2usize, 1, 0].into_iter().enumerate() {
            for t in 0..len {
                bare[(b * 2 + t) * 6..][..6].copy_from_slice(want.token(b, t + 1));
            }
        }
        assert_eq!(with_boundaries(3, 2, 6, &bare).unwrap(), want);
        // A real token after padding, a wrong length, too few characters.
        let mut gap = bare.clone();
        gap[..6].fill(0);
        assert!(with_boundaries(3, 2, 6, &gap).is_err());
        assert!(with_boundaries(3, 2, 6, &bare[1..]).is_err());
        assert!(with_boundaries(3, 2, 2, &bare[..12]).is_err());
    }
}
