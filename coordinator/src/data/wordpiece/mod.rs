//! A BERT WordPiece tokenizer read from a Hugging Face `tokenizer.json`, in plain Rust.
//!
//! It follows the `tokenizers` library's pipeline for BERT models:
//! 1. **Added tokens** (`[CLS]`, `[SEP]`, `[PAD]`, `[UNK]`, `[MASK]`, ...) written in the text are
//!    matched literally first and keep their ids.
//! 2. **BertNormalizer**: remove NUL, U+FFFD and control/format/private-use characters and turn
//!    every whitespace into a space (`clean_text`); put spaces around CJK ideographs
//!    (`handle_chinese_chars`); strip accents (canonical decomposition, then drop nonspacing
//!    marks; on by default when lowercasing); lowercase, character by character.
//! 3. **BertPreTokenizer**: split on whitespace, and make every punctuation character (ASCII
//!    punctuation or Unicode category P*) a word of its own.
//! 4. **WordPiece**: greedy longest-match-first over each word, continuation pieces prefixed with
//!    `##`; a word with no full match, or longer than `max_input_chars_per_word`, is `[UNK]`.
//! 5. **BERT template**: `[CLS] tokens [SEP]`, truncated to a maximum length (specials included),
//!    padded with `[PAD]` and an attention mask.
//!
//! The Unicode tables it needs (`unicode.rs`) are generated from Unicode 14; unassigned code
//! points are kept rather than removed. The settings of `truncation` and `padding` in the file
//! are ignored: callers choose them per call ([`WordPiece::encode_batch`]).
//! The tests check the ids against the `tokenizers` library (0.23.3) on tricky sentences and on
//! every VADER movie-review sentence.

mod unicode;

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{DataError, read_asset};

/// How [`WordPiece::encode_batch`] pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// To the longest sequence of the batch (at most the maximum length).
    Longest,
    /// Always to the maximum length.
    Fixed,
}

/// A batch of encoded texts, row-major `[batch, seq_len]`, as int64 (what BERT ONNX graphs take).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Number of texts.
    pub batch: usize,
    /// Tokens per text, padding included.
    pub seq_len: usize,
    /// Token ids: `[CLS] ... [SEP]` then `[PAD]`s.
    pub input_ids: Vec<i64>,
    /// 1 for real tokens (specials included), 0 for padding.
    pub attention_mask: Vec<i64>,
    /// All 0 (single sentences).
    pub token_type_ids: Vec<i64>,
}

impl Encoding {
    /// The ids of row `i` without padding.
    pub fn ids(&self, i: usize) -> Vec<i64> {
        let row = i * self.seq_len..(i + 1) * self.seq_len;
        let len = self.attention_mask[row.clone()].iter().filter(|&&m| m == 1).count();
        self.input_ids[row.start..row.start + len].to_vec()
    }
}

#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<AddedTokenJson>,
    normalizer: Option<NormalizerJson>,
    pre_tokenizer: Option<TypeOnly>,
    model: ModelJson,
}

#[derive(Deserialize)]
struct AddedTokenJson {
    id: u32,
    content: String,
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: String,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct NormalizerJson {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    clean_text: bool,
    #[serde(default = "yes")]
    handle_chinese_chars: bool,
    #[serde(default)]
    strip_accents: Option<bool>,
    #[serde(default = "yes")]
    lowercase: bool,
}

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "type")]
    kind: String,
    unk_token: String,
    #[serde(default = "default_prefix")]
    continuing_subword_prefix: String,
    #[serde(default = "default_max_chars")]
    max_input_chars_per_word: usize,
    vocab: HashMap<String, u32>,
}

fn default_prefix() -> String {
    "##".into()
}

fn default_max_chars() -> usize {
    100
}

/// A BERT WordPiece tokenizer (see the module documentation for the exact pipeline).
#[derive(Debug, Clone)]
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    tokens: Vec<String>,
    added: Vec<(String, u32)>,
    prefix: String,
    max_chars: usize,
    clean_text: bool,
    chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
    unk: u32,
    cls: u32,
    sep: u32,
    pad: u32,
}

impl WordPiece {
    /// The all-MiniLM-L6-v2 tokenizer (uncased BERT vocabulary of 30,522 tokens, also the one of
    /// paraphrase-MiniLM-L3-v2) from the default asset cache (asset `minilm-l6-tokenizer`).
    pub fn minilm() -> Result<WordPiece, DataError> {
        Self::minilm_in(&crate::assets::cache_dir())
    }

    /// [`WordPiece::minilm`] from the asset cache `cache`.
    pub fn minilm_in(cache: &Path) -> Result<WordPiece, DataError> {
        let (file, bytes) = read_asset(cache, "minilm-l6-tokenizer")?;
        Self::from_json(&bytes, &file)
    }

    /// Reads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<WordPiece, DataError> {
        let file = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|source| DataError::Io { file: file.clone(), source })?;
        Self::from_json(&bytes, &file)
    }

    /// Parses the contents of a `tokenizer.json` with a WordPiece model, a BertNormalizer (or
    /// none) and a BertPreTokenizer; `file` names it in errors. `[CLS]`, `[SEP]`, `[PAD]` and the
    /// model's unknown token must be in the vocabulary.
    pub fn from_json(bytes: &[u8], file: &str) -> Result<WordPiece, DataError> {
        let json: TokenizerJson = serde_json::from_slice(bytes)
            .map_err(|source| DataError::Json { file: file.to_owned(), source })?;
        let model = json.model;
        if model.kind != "WordPiece" {
            return Err(DataError::corrupt(
                file,
                format!("model type `{}` is not WordPiece", model.kind),
            ));
        }
        if let Some(p) = &json.pre_tokenizer
            && p.kind != "BertPreTokenizer"
        {
            return Err(DataError::corrupt(
                file,
                format!("pre-tokenizer `{}` is not supported (only BertPreTokenizer)", p.kind),
            ));
        }
        let (clean_text, chinese_chars, strip_accents, lowercase) = match &json.normalizer {
            None => (false, false, false, false),
            Some(n) if n.kind == "BertNormalizer" => (
                n.clean_text,
                n.handle_chinese_chars,
                n.strip_accents.unwrap_or(n.lowercase),
                n.lowercase,
            ),
            Some(n) => {
                return Err(DataError::corrupt(
                    file,
                    format!("normalizer `{}` is not supported (only BertNormalizer)", n.kind),
                ));
            }
        };
        let size = model.vocab.values().max().map_or(0, |&m| m as usize + 1);
        if size > 10 * model.vocab.len() + 1000 {
            return Err(DataError::corrupt(
                file,
                format!("vocabulary ids reach {size} for {} tokens", model.vocab.len()),
            ));
        }
        let mut tokens = vec![String::new(); size];
        for (token, &id) in &model.vocab {
            tokens[id as usize].clone_from(token);
        }
        let id = |token: &str| {
            model.vocab.get(token).copied().ok_or_else(|| {
                DataError::corrupt(
                    file,
                    format!("special token `{token}` is not in the vocabulary"),
                )
            })
        };
        let (unk, cls, sep, pad) =
            (id(&model.unk_token)?, id("[CLS]")?, id("[SEP]")?, id("[PAD]")?);
        let mut added: Vec<(String, u32)> = json
            .added_tokens
            .into_iter()
            .filter(|t| !t.content.is_empty())
            .map(|t| (t.content, t.id))
            .collect();
        // Longest first, so that a token that extends another wins at the same position.
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(WordPiece {
            vocab: model.vocab,
            tokens,
            added,
            prefix: model.continuing_subword_prefix,
            max_chars: model.max_input_chars_per_word,
            clean_text,
            chinese_chars,
            strip_accents,
            lowercase,
            unk,
            cls,
            sep,
            pad,
        })
    }

    /// Number of ids (the largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a vocabulary token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// The token of an id.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str).filter(|t| !t.is_empty())
    }

    /// The id of `[CLS]`.
    pub fn cls_id(&self) -> u32 {
        self.cls
    }

    /// The id of `[SEP]`.
    pub fn sep_id(&self) -> u32 {
        self.sep
    }

    /// The id of `[PAD]`.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The id of the unknown token.
    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// The normalised text (step 2), as the pre-tokenizer sees it.
    pub fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_other(c) {
                    continue;
                }
                if c.is_whitespace() {
                    out.push(' ');
                    continue;
                }
            }
            if self.chinese_chars && is_cjk(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
                continue;
            }
            out.push(c);
        }
        if self.strip_accents {
            out = strip_accents(&out);
        }
        if self.lowercase {
            // Character by character, as `tokenizers` does (no final-sigma rule).
            out = out.chars().flat_map(char::to_lowercase).collect();
        }
        out
    }

    /// The token ids of `text`, without `[CLS]`/`[SEP]` and without truncation.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match self.next_added(rest) {
                Some((at, len, id)) => {
                    self.plain_ids(&rest[..at], &mut ids);
                    ids.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.plain_ids(rest, &mut ids);
                    break;
                }
            }
        }
        ids
    }

    /// The tokens of `text` as strings (`##` marks continuations), without `[CLS]`/`[SEP]`.
    pub fn tokenize(&self, text: &str) -> Vec<&str> {
        self.token_ids(text).into_iter().map(|id| self.token(id).unwrap_or("")).collect()
    }

    /// `[CLS] ids [SEP]` of `text`, with the ids truncated so that the whole is at most
    /// `max_len` long (`max_len` below 2 counts as 2).
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids = self.token_ids(text);
        ids.truncate(max_len.max(2) - 2);
        ids.insert(0, self.cls);
        ids.push(self.sep);
        ids
    }

    /// Encodes a batch of texts with [`WordPiece::encode`] and pads them into `[batch, seq_len]`
    /// rows with an attention mask.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        max_len: usize,
        padding: Padding,
    ) -> Encoding {
        let rows: Vec<Vec<u32>> = texts.iter().map(|t| self.encode(t.as_ref(), max_len)).collect();
        let seq_len = match padding {
            Padding::Fixed => max_len.max(2),
            Padding::Longest => rows.iter().map(Vec::len).max().unwrap_or(2),
        };
        let mut input_ids = Vec::with_capacity(rows.len() * seq_len);
        let mut attention_mask = Vec::with_capacity(rows.len() * seq_len);
        for row in &rows {
            input_ids.extend(row.iter().map(|&id| i64::from(id)));
            input_ids.extend(std::iter::repeat_n(i64::from(self.pad), seq_len - row.len()));
            attention_mask.extend(std::iter::repeat_n(1, row.len()));
            attention_mask.extend(std::iter::repeat_n(0, seq_len - row.len()));
        }
        Encoding {
            batch: rows.len(),
            seq_len,
            input_ids,
            attention_mask,
            token_type_ids: vec![0; rows.len() * seq_len],
        }
    }

    /// The first added token in `text`: (byte offset, byte length, id).
    fn next_added(&self, text: &str) -> Option<(usize, usize, u32)> {
        if self.added.is_empty() {
            return None;
        }
        let mut best: Option<(usize, usize, u32)> = None;
        for (content, id) in &self.added {
            if let Some(at) = text.find(content.as_str())
                && best.is_none_or(|(b, len, _)| at < b || (at == b && content.len() > len))
            {
                best = Some((at, content.len(), *id));
            }
        }
        best
    }

    /// Steps 2-4 for text with no added token in it.
    fn plain_ids(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let normalized = self.normalize(text);
        for word in normalized.split(char::is_whitespace).filter(|w| !w.is_empty()) {
            let mut start = 0;
            for (i, c) in word.char_indices() {
                if is_punctuation(c) {
                    self.word_ids(&word[start..i], ids);
                    self.word_ids(&word[i..i + c.len_utf8()], ids);
                    start = i + c.len_utf8();
                }
            }
            self.word_ids(&word[start..], ids);
        }
    }

    /// Step 4 for one word: greedy longest-match-first.
    fn word_ids(&self, word: &str, ids: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if word.chars().count() > self.max_chars {
            ids.push(self.unk);
            return;
        }
        let first = ids.len();
        let mut piece = String::with_capacity(word.len() + self.prefix.len());
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                piece.clear();
                if start > 0 {
                    piece.push_str(&self.prefix);
                }
                piece.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(piece.as_str()) {
                    found = Some(id);
                    break;
                }
                end -= word[start..end].chars().next_back().map_or(1, char::len_utf8);
            }
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(first);
                    ids.push(self.unk);
                    return;
                }
            }
        }
    }
}

fn in_ranges(c: char, ranges: &[(u32, u32)]) -> bool {
    let c = u32::from(c);
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Control, format or private-use, except tab, newline and carriage return (which are spaces).
fn is_other(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && in_ranges(c, unicode::OTHER)
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || in_ranges(c, unicode::PUNCTUATION)
}

fn is_cjk(c: char) -> bool {
    matches!(
        u32::from(c),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// Canonical decomposition without the nonspacing marks.
fn strip_accents(text: &str) -> String {
    const S_BASE: u32 = 0xAC00;
    const S_COUNT: u32 = 11_172;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let cp = u32::from(c);
        if in_ranges(c, unicode::NONSPACING_MARKS) {
            continue;
        }
        if (S_BASE..S_BASE + S_COUNT).contains(&cp) {
            // Hangul syllable → leading consonant, vowel and optional trailing consonant.
            let s = cp - S_BASE;
            let jamo = [0x1100 + s / 588, 0x1161 + (s % 588) / 28, 0x11A7 + s % 28];
            let n = if s.is_multiple_of(28) { 2 } else { 3 };
            out.extend(jamo[..n].iter().filter_map(|&j| char::from_u32(j)));
            continue;
        }
        match unicode::STRIPPED.binary_search_by_key(&cp, |&(k, _)| k) {
            Ok(i) => out.push_str(unicode::STRIPPED[i].1),
            Err(_) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
