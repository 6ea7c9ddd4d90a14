//! Text to token ids, through the Hugging Face `tokenizers` crate and a model's own
//! `tokenizer.json` (any model type it reads: Tokenizer for BERT and MiniLM, byte-level BPE for
//! generative models).
//!
//! Hone adds only what its callers need around the crate: the file's own truncation and padding
//! settings are switched off and chosen per call instead ([`Tokenizer::encode_batch`]); a
//! `[CLS] … [SEP]` template is applied when the vocabulary has those tokens; batches become
//! int64 rows with an attention mask, as BERT ONNX graphs take them. The tests compare the ids
//! with the ones `tokenizers` 0.23.3 (Python) gives, on tricky sentences and on every VADER
//! movie-review sentence.

use std::path::Path;

use super::{DataError, read_asset};

/// How [`Tokenizer::encode_batch`] pads.
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

/// A tokenizer read from a `tokenizer.json`.
#[derive(Clone)]
pub struct Tokenizer {
    /// Shared: cloning a data set clones no vocabulary.
    inner: std::sync::Arc<tokenizers::Tokenizer>,
    /// `[CLS]` and `[SEP]`, when the vocabulary has both: the BERT template.
    template: Option<(u32, u32)>,
    pad: u32,
    unk: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("template", &self.template)
            .field("pad", &self.pad)
            .finish()
    }
}

impl Tokenizer {
    /// The all-MiniLM-L6-v2 tokenizer (uncased BERT vocabulary of 30,522 tokens, also the one of
    /// paraphrase-MiniLM-L3-v2) from the default asset cache (asset `minilm-l6-tokenizer`).
    pub fn minilm() -> Result<Tokenizer, DataError> {
        Self::minilm_in(&hone_assets::cache_dir())
    }

    /// [`Tokenizer::minilm`] from the asset cache `cache`.
    pub fn minilm_in(cache: &Path) -> Result<Tokenizer, DataError> {
        let (file, bytes) = read_asset(cache, "minilm-l6-tokenizer")?;
        Self::from_json(&bytes, &file)
    }

    /// Reads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Tokenizer, DataError> {
        let file = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|source| DataError::Io { file: file.clone(), source })?;
        Self::from_json(&bytes, &file)
    }

    /// Parses the contents of a `tokenizer.json`; `file` names it in errors.
    pub fn from_json(bytes: &[u8], file: &str) -> Result<Tokenizer, DataError> {
        // JSON errors first, with the parser's position; then what `tokenizers` refuses.
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|source| DataError::Json { file: file.to_owned(), source })?;
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| {
            DataError::corrupt(file, format!("not a tokenizer `tokenizers` reads: {e}"))
        })?;
        inner
            .with_truncation(None)
            .map_err(|e| DataError::corrupt(file, format!("cannot switch truncation off: {e}")))?;
        inner.with_padding(None);
        let id = |t: &str| inner.token_to_id(t);
        let template = id("[CLS]").zip(id("[SEP]"));
        let pad = id("[PAD]").or_else(|| id("<pad>")).unwrap_or(0);
        let unk = id("[UNK]").or_else(|| id("<unk>"));
        Ok(Tokenizer { template, pad, unk, inner: std::sync::Arc::new(inner) })
    }

    /// Number of ids (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a vocabulary token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of an id.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The ids of `[CLS]` and `[SEP]`, when the vocabulary has them.
    pub fn template(&self) -> Option<(u32, u32)> {
        self.template
    }

    /// The padding id (`[PAD]`, `<pad>`, else 0).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The unknown token's id, when there is one.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    /// The normalised text, as the pre-tokenizer sees it (the text itself when the file has no
    /// normalizer).
    pub fn normalize(&self, text: &str) -> String {
        use tokenizers::Normalizer as _;
        let mut s = tokenizers::NormalizedString::from(text);
        match self.inner.get_normalizer().map(|n| n.normalize(&mut s)) {
            Some(Ok(())) => s.get().to_owned(),
            _ => text.to_owned(),
        }
    }

    /// The token ids of `text`, without template tokens and without truncation. Text the
    /// tokenizer cannot encode (it never happens with Tokenizer or byte-level BPE) gives no ids.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }

    /// The tokens of `text` as strings (`##` marks Tokenizer continuations).
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        self.inner.encode(text, false).map(|e| e.get_tokens().to_vec()).unwrap_or_default()
    }

    /// `[CLS] ids [SEP]` of `text` (just the ids without the BERT template), with the ids
    /// truncated so that the whole is at most `max_len` long (`max_len` below 2 counts as 2).
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids = self.token_ids(text);
        match self.template {
            Some((cls, sep)) => {
                ids.truncate(max_len.max(2) - 2);
                ids.insert(0, cls);
                ids.push(sep);
            }
            None => ids.truncate(max_len.max(1)),
        }
        ids
    }

    /// Encodes a batch of texts with [`Tokenizer::encode`] and pads them into `[batch, seq_len]`
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
}

#[cfg(test)]
mod tests;
