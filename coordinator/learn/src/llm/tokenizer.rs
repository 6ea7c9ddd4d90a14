//! The tokenizer of a GGUF model, rebuilt from its metadata as a Hugging Face
//! `tokenizer.json`, and the chat prompt.
//!
//! A GGUF `gpt2` tokenizer is a byte-level BPE: `tokenizer.ggml.tokens` (the vocabulary, ids in
//! order), `tokenizer.ggml.merges` (`"a b"`, by priority) and `tokenizer.ggml.token_type` (1
//! normal, 3 control, 4 user-defined). The rebuilt tokenizer has no normalizer; its
//! pre-tokenizer splits digits one by one, then applies the byte-level split (GPT-2's regex,
//! no prefix space), as SmolLM2's own `tokenizer.json` does; the decoder is byte-level. Control
//! tokens become special added tokens (`<|im_start|>` is one id), user-defined tokens plain
//! added tokens.

use super::LlmError;
use super::gguf::Gguf;

/// ChatML's turn opener.
pub const IM_START: &str = "<|im_start|>";
/// ChatML's turn closer, which ends a generated answer.
pub const IM_END: &str = "<|im_end|>";

/// The `tokenizer.json` of a GGUF model, as JSON.
pub fn tokenizer_json(g: &Gguf) -> Result<serde_json::Value, LlmError> {
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(LlmError::Tokenizer(format!(
            "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
        )));
    }
    let tokens = g.get_strings("tokenizer.ggml.tokens")?;
    let merges = g.get_strings("tokenizer.ggml.merges")?;
    let types = match g.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
        Some(a) => a.as_i64s().ok_or_else(|| {
            LlmError::Tokenizer("tokenizer.ggml.token_type is not an integer array".into())
        })?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(LlmError::Tokenizer(format!(
            "{} token types for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(t.clone(), id.into()).is_some() {
            return Err(LlmError::Tokenizer(format!("token {t:?} appears twice")));
        }
        if ty == 3 || ty == 4 {
            added.push(serde_json::json!({
                "id": id, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": ty == 4, "special": ty == 3,
            }));
        }
    }
    for m in merges {
        if m.split(' ').count() != 2 {
            return Err(LlmError::Tokenizer(format!("merge {m:?} is not two tokens")));
        }
    }
    let unk = g
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.as_u64())
        .and_then(|i| tokens.get(i as usize));
    let byte_level = |prefix: bool, trim: bool| {
        serde_json::json!({
            "type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": trim, "use_regex": true
        })
    };
    Ok(serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                { "type": "Digits", "individual_digits": true },
                byte_level(false, true),
            ],
        },
        "post_processor": byte_level(true, false),
        "decoder": byte_level(true, true),
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    }))
}

/// The tokenizer of a GGUF model (see [`tokenizer_json`]).
pub fn tokenizer_from_gguf(g: &Gguf) -> Result<tokenizers::Tokenizer, LlmError> {
    let json = tokenizer_json(g)?;
    tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
        .map_err(|e| LlmError::Tokenizer(format!("the rebuilt tokenizer does not load: {e}")))
}

/// The ids that end a generated answer: `<|im_end|>` when the vocabulary has it, and the end
/// of sequence (`tokenizer.ggml.eos_token_id`).
pub fn stop_ids(g: &Gguf, tokenizer: &tokenizers::Tokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = tokenizer.token_to_id(IM_END).into_iter().collect();
    if let Some(eos) = g.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_u64())
        && !ids.contains(&(eos as u32))
    {
        ids.push(eos as u32);
    }
    ids
}

/// A model's chat format: ChatML (`<|im_start|>role\ncontent<|im_end|>\n` per turn, then
/// `<|im_start|>assistant\n`), with the default system prompt its template inserts when the
/// conversation has none.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatFormat {
    /// The system prompt used when none is given.
    pub default_system: Option<String>,
}

impl ChatFormat {
    /// Reads `tokenizer.chat_template` and checks that it is ChatML; extracts its default
    /// system prompt (SmolLM2's: "You are a helpful AI assistant named SmolLM, trained by
    /// Hugging Face").
    pub fn from_gguf(g: &Gguf) -> Result<ChatFormat, LlmError> {
        let t = g.get_str("tokenizer.chat_template")?;
        ChatFormat::from_template(t)
    }

    /// See [`ChatFormat::from_gguf`].
    pub fn from_template(t: &str) -> Result<ChatFormat, LlmError> {
        if !t.contains("'<|im_start|>' + message['role'] + '\\n'")
            && !t.contains("'<|im_start|>' + message['role'] + '\n'")
        {
            return Err(LlmError::Tokenizer(
                "the chat template is not ChatML (`<|im_start|>role\\n...<|im_end|>`)".into(),
            ));
        }
        let marker = "<|im_start|>system\n";
        let default_system = t.find(marker).and_then(|at| {
            let rest = &t[at + marker.len()..];
            rest.find(IM_END).map(|end| rest[..end].to_owned())
        });
        Ok(ChatFormat { default_system })
    }

    /// The prompt for one user message, ready for generation.
    pub fn prompt(&self, system: Option<&str>, user: &str) -> String {
        let mut s = String::new();
        if let Some(sys) = system.or(self.default_system.as_deref()) {
            s.push_str(&format!("{IM_START}system\n{sys}{IM_END}\n"));
        }
        s.push_str(&format!("{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"));
        s
    }
}
