//! Tokenizers for training from raw text: character-level (vocabulary built
//! from the corpus, saved with the checkpoint) and byte-level.

use std::collections::BTreeSet;
use std::collections::HashMap;

use crate::{Error, Result};

/// Turns text into token ids and back.
pub trait Tokenizer {
    /// Number of distinct ids.
    fn vocab_size(&self) -> usize;
    /// Text to ids; an error for text the vocabulary cannot express.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Ids to text; an error for an id outside the vocabulary.
    fn decode(&self, ids: &[u32]) -> Result<String>;
}

/// One token per character, the vocabulary being the sorted set of
/// characters in the training corpus (nanoGPT's `shakespeare_char`).
///
/// ```
/// use zerfoo::tokenizer::{CharTokenizer, Tokenizer};
/// let tok = CharTokenizer::from_corpus("hello world");
/// assert_eq!(tok.vocab_size(), 8);
/// let ids = tok.encode("hold").unwrap();
/// assert_eq!(tok.decode(&ids).unwrap(), "hold");
/// assert!(tok.encode("z").is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CharTokenizer {
    chars: Vec<char>,
    index: HashMap<char, u32>,
}

impl CharTokenizer {
    /// The vocabulary of `corpus`: its distinct characters, sorted.
    pub fn from_corpus(corpus: &str) -> Self {
        let set: BTreeSet<char> = corpus.chars().collect();
        Self::from_chars(set.into_iter().collect())
    }

    /// A tokenizer over exactly these characters (id = position).
    pub fn from_chars(chars: Vec<char>) -> Self {
        let index = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32))
            .collect();
        CharTokenizer { chars, index }
    }

    /// The vocabulary, in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The vocabulary as JSON: `{"type": "char", "chars": "..."}`.
    pub fn to_json(&self) -> String {
        let chars: String = self.chars.iter().collect();
        serde_json::json!({ "type": "char", "chars": chars }).to_string()
    }

    /// Reads [`to_json`](Self::to_json)'s output.
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |reason: String| Error::Format {
            what: "char tokenizer JSON".into(),
            reason,
        };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if v.get("type").and_then(|t| t.as_str()) != Some("char") {
            return Err(bad("`type` must be \"char\"".into()));
        }
        let chars = v
            .get("chars")
            .and_then(|c| c.as_str())
            .ok_or_else(|| bad("missing string field `chars`".into()))?;
        let list: Vec<char> = chars.chars().collect();
        let distinct: BTreeSet<char> = list.iter().copied().collect();
        if distinct.len() != list.len() {
            return Err(bad("`chars` repeats a character".into()));
        }
        Ok(Self::from_chars(list))
    }
}

impl Tokenizer for CharTokenizer {
    fn vocab_size(&self) -> usize {
        self.chars.len()
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                self.index
                    .get(&c)
                    .copied()
                    .ok_or_else(|| Error::InvalidArgument {
                        op: "CharTokenizer::encode",
                        reason: format!("character {c:?} is not in the vocabulary"),
                    })
            })
            .collect()
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        ids.iter()
            .map(|&i| {
                self.chars
                    .get(i as usize)
                    .copied()
                    .ok_or(Error::IndexOutOfRange {
                        op: "CharTokenizer::decode",
                        index: i as i64,
                        size: self.chars.len(),
                    })
            })
            .collect()
    }
}

/// One token per UTF-8 byte (256 ids). Decoding replaces invalid UTF-8
/// sequences with U+FFFD, as a sampled byte stream may split a character.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ByteTokenizer;

impl Tokenizer for ByteTokenizer {
    fn vocab_size(&self) -> usize {
        256
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = ids
            .iter()
            .map(|&i| {
                u8::try_from(i).map_err(|_| Error::IndexOutOfRange {
                    op: "ByteTokenizer::decode",
                    index: i as i64,
                    size: 256,
                })
            })
            .collect::<Result<Vec<u8>>>()?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_vocab_is_sorted_and_round_trips_through_json() {
        let t = CharTokenizer::from_corpus("ba\nab!");
        assert_eq!(t.chars(), ['\n', '!', 'a', 'b']);
        let back = CharTokenizer::from_json(&t.to_json()).unwrap();
        assert_eq!(back, t);
        assert!(CharTokenizer::from_json("{\"type\":\"char\"}").is_err());
        assert!(CharTokenizer::from_json("not json").is_err());
        assert!(t.decode(&[9]).is_err());
    }

    #[test]
    fn bytes_round_trip_utf8() {
        let s = "héllo ✓";
        let ids = ByteTokenizer.encode(s).unwrap();
        assert_eq!(ids.len(), s.len());
        assert_eq!(ByteTokenizer.decode(&ids).unwrap(), s);
        assert!(ByteTokenizer.decode(&[300]).is_err());
    }
}
