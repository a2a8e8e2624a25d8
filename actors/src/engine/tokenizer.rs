//! Whisper's byte-level BPE tokenizer, read from a `tokenizer.json` (Hugging Face format, as
//! shipped with every CTranslate2 Whisper model).
//!
//! Decoding maps ids back to bytes; encoding (only needed for initial prompts) pre-tokenizes
//! with GPT-2's rules and applies the BPE merges by rank. Timestamp tokens are not in the file:
//! every id from `timestamp_begin` on means `<|(id - timestamp_begin) * 0.02|>`.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::EngineError;

#[derive(Deserialize)]
struct TokenizerFile {
    model: BpeModel,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
}

#[derive(Deserialize)]
struct BpeModel {
    vocab: HashMap<String, u32>,
    #[serde(default)]
    merges: Vec<Merge>,
}

/// Older files write a merge as `"a b"`, newer ones as `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Merge {
    Joined(String),
    Pair(String, String),
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
}

/// A loaded tokenizer.
pub struct Tokenizer {
    /// Bytes of every ordinary token, indexed by id (special tokens hold their text).
    id_to_bytes: Vec<Vec<u8>>,
    /// Token text (in GPT-2's byte-to-unicode alphabet) to id.
    vocab: HashMap<String, u32>,
    merge_ranks: HashMap<(String, String), usize>,
    byte_to_char: [char; 256],
    specials: HashMap<String, u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("tokens", &self.id_to_bytes.len())
            .finish()
    }
}

/// GPT-2's reversible map from bytes to printable unicode characters.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut next_extra = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            next_extra += 1;
            next_extra - 1
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

impl Tokenizer {
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::ModelFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|reason| EngineError::ModelFile {
            path: path.to_path_buf(),
            reason,
        })
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let file: TokenizerFile =
            serde_json::from_str(text).map_err(|e| format!("not a tokenizer.json: {e}"))?;
        let byte_to_char = byte_to_char_table();
        let char_to_byte: HashMap<char, u8> = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, c)| (*c, b as u8))
            .collect();
        let max_id = file
            .model
            .vocab
            .values()
            .chain(file.added_tokens.iter().map(|t| &t.id))
            .copied()
            .max()
            .ok_or("tokenizer.json has an empty vocabulary")?;
        let mut id_to_bytes = vec![Vec::new(); max_id as usize + 1];
        for (token, id) in &file.model.vocab {
            id_to_bytes[*id as usize] = token
                .chars()
                .map(|c| char_to_byte.get(&c).copied().unwrap_or(b'?'))
                .collect();
        }
        let mut specials = HashMap::new();
        for token in &file.added_tokens {
            id_to_bytes[token.id as usize] = token.content.as_bytes().to_vec();
            specials.insert(token.content.clone(), token.id);
        }
        let merge_ranks = file
            .model
            .merges
            .into_iter()
            .enumerate()
            .filter_map(|(rank, merge)| {
                let pair = match merge {
                    Merge::Pair(a, b) => (a, b),
                    Merge::Joined(joined) => {
                        let (a, b) = joined.split_once(' ')?;
                        (a.to_owned(), b.to_owned())
                    }
                };
                Some((pair, rank))
            })
            .collect();
        Ok(Tokenizer {
            id_to_bytes,
            vocab: file.model.vocab,
            merge_ranks,
            byte_to_char,
            specials,
        })
    }

    /// The id of a special token such as `<|en|>`, if the vocabulary has it.
    pub fn special(&self, content: &str) -> Option<u32> {
        self.specials.get(content).copied()
    }

    /// The raw bytes of a sequence of tokens; ids outside the vocabulary contribute nothing.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for id in ids {
            if let Some(piece) = self.id_to_bytes.get(*id as usize) {
                bytes.extend_from_slice(piece);
            }
        }
        bytes
    }

    /// Text of the tokens (invalid UTF-8 at a cut is replaced, never an error).
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }

    /// Splits tokens into the smallest groups that decode to whole UTF-8 characters, with the
    /// text of each group (openai-whisper's `split_tokens_on_unicode`).
    pub fn split_on_unicode(&self, ids: &[u32]) -> Vec<(String, Vec<u32>)> {
        let mut groups = Vec::new();
        let mut current = Vec::new();
        for id in ids {
            current.push(*id);
            if let Ok(text) = std::str::from_utf8(&self.decode_bytes(&current)) {
                groups.push((text.to_owned(), std::mem::take(&mut current)));
            }
        }
        if !current.is_empty() {
            groups.push((self.decode(&current), current));
        }
        groups
    }

    /// Encodes ordinary text (no special tokens) into token ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for piece in pre_tokenize(text) {
            let symbols: Vec<String> = piece
                .bytes()
                .map(|b| self.byte_to_char[b as usize].to_string())
                .collect();
            for symbol in self.apply_merges(symbols) {
                if let Some(id) = self.vocab.get(&symbol) {
                    ids.push(*id);
                } else {
                    // Every single byte is in the vocabulary, so fall back to bytes.
                    ids.extend(
                        symbol
                            .chars()
                            .filter_map(|c| self.vocab.get(&c.to_string())),
                    );
                }
            }
        }
        ids
    }

    fn apply_merges(&self, mut symbols: Vec<String>) -> Vec<String> {
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, pair)| {
                    self.merge_ranks
                        .get(&(pair[0].clone(), pair[1].clone()))
                        .map(|rank| (*rank, i))
                })
                .min();
            let Some((_, i)) = best else {
                return symbols;
            };
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
    }
}

#[derive(PartialEq, Clone, Copy)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Number
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// GPT-2's pre-tokenizer: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn pre_tokenize(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |(b, _)| *b);
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let rest = &text[byte_at(i)..];
        if let Some(suffix) = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
            .iter()
            .find(|s| rest.starts_with(**s))
        {
            let end = i + suffix.chars().count();
            pieces.push(&text[byte_at(i)..byte_at(end)]);
            i = end;
            continue;
        }
        let start = i;
        let mut j = i;
        if chars[j].1 == ' ' && j + 1 < chars.len() && class(chars[j + 1].1) != Class::Space {
            j += 1;
        }
        let kind = class(chars[j].1);
        if kind != Class::Space {
            while j < chars.len() && class(chars[j].1) == kind {
                j += 1;
            }
        } else {
            let mut end = j;
            while end < chars.len() && class(chars[end].1) == Class::Space {
                end += 1;
            }
            // `\s+(?!\S)` leaves the last space to the word that follows it.
            j = if end == chars.len() || end - j == 1 {
                end
            } else {
                end - 1
            };
        }
        pieces.push(&text[byte_at(start)..byte_at(j)]);
        i = j;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_tokenizer_follows_gpt2_rules() {
        assert_eq!(
            pre_tokenize("Hello world's  end 42!?\n x"),
            vec!["Hello", " world", "'s", " ", " end", " 42", "!?", "\n", " x"]
        );
        assert_eq!(pre_tokenize("a   "), vec!["a", "   "]);
    }

    fn tiny() -> Tokenizer {
        // Vocabulary in GPT-2's alphabet: "Ġ" is the space byte.
        let json = r#"{
            "model": {"vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "he": 5, "ll": 6,
                                "hell": 7, "hello": 8, "Ġhello": 9, "w": 10},
                      "merges": ["h e", "l l", "he ll", "hell o", ["Ġ", "hello"]]},
            "added_tokens": [{"id": 11, "content": "<|endoftext|>"}]
        }"#;
        Tokenizer::from_json(json).unwrap()
    }

    #[test]
    fn encode_applies_merges_by_rank_and_decode_inverts_it() {
        let tokenizer = tiny();
        let ids = tokenizer.encode("hello hello w");
        assert_eq!(ids, vec![8, 9, 4, 10]);
        assert_eq!(tokenizer.decode(&ids), "hello hello w");
        assert_eq!(tokenizer.special("<|endoftext|>"), Some(11));
        assert_eq!(tokenizer.decode(&[11, 999]), "<|endoftext|>");
    }

    #[test]
    fn split_on_unicode_keeps_multibyte_characters_whole() {
        let json = r#"{"model": {"vocab": {"Ã": 0, "©": 1, "a": 2}}}"#;
        let tokenizer = Tokenizer::from_json(json).unwrap();
        // 0 and 1 are the two bytes of "é" (0xC3 0xA9).
        let groups = tokenizer.split_on_unicode(&[2, 0, 1, 2]);
        let texts: Vec<&str> = groups.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(texts, vec!["a", "é", "a"]);
        assert_eq!(groups[1].1, vec![0, 1]);
    }

    #[test]
    fn garbage_json_is_an_error_not_a_panic() {
        assert!(Tokenizer::from_json("{").is_err());
        assert!(Tokenizer::from_json(r#"{"model": {"vocab": {}}}"#).is_err());
    }
}
