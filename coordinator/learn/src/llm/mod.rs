//! Generative language models: a Llama imported from a GGUF file into ONNX, its tokenizer, and
//! greedy decoding with tract. See `docs/llm.md`.
//!
//! - [`gguf`]: the GGUF reader (metadata, tensor infos, dequantisation of F32, F16, Q4_1, Q8_0).
//! - [`llama`]: [`LlamaConfig`], [`LlamaWeights`] (from GGUF, fresh, a subset of layers, read
//!   back from a graph) and [`build_graph`] in its two forms ([`GraphForm::KvCache`] for tract,
//!   [`GraphForm::Train`] for the executor).
//! - [`tokenizer`]: the byte-level BPE `tokenizer.json` rebuilt from the GGUF metadata, the
//!   ChatML prompt and the stop ids.
//! - [`generate`]: [`TractLlama`], greedy decoding over the KV cache with timings.
//! - [`import`] writes a model folder: `model.onnx` (KV cache), `model-train.onnx` (no cache),
//!   `tokenizer.json` and `config.json` ([`ModelCard`]); [`ModelDir`] reads one back.
//!
//! Like `baseline` and `tasks`, this module uses both runtimes: tract to generate, and (in its
//! tests) the executor to check parity.

pub mod generate;
pub mod gguf;
pub mod llama;
pub mod stream;
pub mod tokenizer;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest as _, Sha256};

pub use generate::{Generation, KvCache, TractLlama};
pub use gguf::{Gguf, GgufError};
pub use llama::{GraphForm, LayerWeights, LlamaConfig, LlamaWeights, build_graph};
pub use tokenizer::{ChatFormat, IM_END, IM_START};

use hone_common::shapes::InputShapes;
use hone_graph::{Graph, GraphError};

/// The asset holding SmolLM2-135M-Instruct (`scripts/assets.tsv`).
pub const SMOLLM2_ASSET: &str = "smollm2-135m-instruct-gguf";
/// The KV-cache model in a model folder.
pub const MODEL_FILE: &str = "model.onnx";
/// The training (no cache) model in a model folder.
pub const TRAIN_FILE: &str = "model-train.onnx";
/// The tokenizer in a model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The [`ModelCard`] in a model folder.
pub const CARD_FILE: &str = "config.json";

/// Why a language model cannot be imported, built or run.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The GGUF file is unreadable or corrupt.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A graph could not be built, read or written (tract's gate included).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The model's shape or weights are inconsistent or unsupported.
    #[error("{0}")]
    Config(String),
    /// The tokenizer cannot be rebuilt or read.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// tract failed.
    #[error("tract: {0}")]
    Tract(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LlmError + '_ {
    move |source| LlmError::Io { path: path.display().to_string(), source }
}

/// Where an imported model came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Provenance {
    /// The GGUF file's name.
    pub file: String,
    /// Its sha256.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// `general.name`, when present.
    pub name: Option<String>,
    /// How the weights were obtained, e.g. "dequantised to f32: linear weights from Q4_1, ...".
    pub weights: String,
}

/// `config.json` of a model folder: what is needed to run the model besides the graph.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelCard {
    /// The model's shape.
    pub config: LlamaConfig,
    /// Number of parameters (the tied embedding once).
    pub params: usize,
    /// The chat format.
    pub chat: ChatFormat,
    /// Ids that end an answer (`<|im_end|>`, end of sequence).
    pub stop_ids: Vec<u32>,
    /// The source, for imported models.
    pub source: Option<Provenance>,
}

/// A model folder read back: its card, tokenizer and the KV-cache graph's path.
#[derive(Debug)]
pub struct ModelDir {
    /// The folder.
    pub dir: PathBuf,
    /// `config.json`.
    pub card: ModelCard,
    /// `tokenizer.json`.
    pub tokenizer: tokenizers::Tokenizer,
}

impl ModelDir {
    /// Reads `config.json` and `tokenizer.json` of a folder [`import`] wrote.
    pub fn open(dir: &Path) -> Result<ModelDir, LlmError> {
        let card_path = dir.join(CARD_FILE);
        let bytes = std::fs::read(&card_path).map_err(io(&card_path))?;
        let card: ModelCard = serde_json::from_slice(&bytes).map_err(|e| {
            LlmError::Config(format!("{}: not a model card: {e}", card_path.display()))
        })?;
        card.config.validate()?;
        let tok_path = dir.join(TOKENIZER_FILE);
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| LlmError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        Ok(ModelDir { dir: dir.to_path_buf(), card, tokenizer })
    }

    /// Plans the folder's KV-cache model with tract.
    pub fn tract(&self) -> Result<TractLlama, LlmError> {
        TractLlama::load(&self.dir.join(MODEL_FILE), &self.card.config)
    }

    /// The ids of `text` (special tokens such as `<|im_start|>` recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LlmError::Tokenizer(e.to_string()))
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        self.tokenizer.decode(ids, true).map_err(|e| LlmError::Tokenizer(e.to_string()))
    }
}

/// What [`import`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    /// The card written to `config.json`.
    pub card: ModelCard,
    /// The files written.
    pub files: Vec<PathBuf>,
    /// Reading and dequantising the GGUF file, s.
    pub read_s: f64,
    /// Building, gating and writing both graphs, s.
    pub write_s: f64,
}

/// The shapes the gate checks a graph with: 4 new tokens after 1 cached position.
pub fn gate_shapes(c: &LlamaConfig, form: GraphForm) -> InputShapes {
    let mut entries = vec![("input_ids".to_owned(), vec![1, 4])];
    if form == GraphForm::KvCache {
        entries.push(("attention_mask".into(), vec![1, 5]));
        entries.push(("position_ids".into(), vec![1, 4]));
        let kv = vec![1, c.kv_heads as u64, 1, c.head_dim() as u64];
        for i in 0..c.layers {
            entries.push((llama::past_key(i), kv.clone()));
            entries.push((llama::past_value(i), kv.clone()));
        }
    }
    InputShapes::new(entries).expect("the gate's shapes are valid")
}

/// Writes `graph` to `path` through tract's gate ([`Graph::save_gated`]).
pub fn save_model(
    graph: &Graph,
    c: &LlamaConfig,
    form: GraphForm,
    path: &Path,
) -> Result<(), LlmError> {
    graph.save_gated(path, &gate_shapes(c, form))?;
    Ok(())
}

/// Imports a GGUF Llama into `out`: `model.onnx` (KV cache), `model-train.onnx` (no cache),
/// `tokenizer.json` and `config.json`. `progress` hears about each long step.
pub fn import(
    gguf_path: &Path,
    out: &Path,
    mut progress: impl FnMut(&str),
) -> Result<ImportReport, LlmError> {
    let t0 = Instant::now();
    progress(&format!("reading {}", gguf_path.display()));
    let bytes = std::fs::read(gguf_path).map_err(io(gguf_path))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let size = bytes.len() as u64;
    let g = Gguf::parse(bytes)?;
    let config = LlamaConfig::from_gguf(&g)?;
    let tokenizer_json = tokenizer::tokenizer_json(&g)?;
    let tok = tokenizer::tokenizer_from_gguf(&g)?;
    let chat = ChatFormat::from_gguf(&g)?;
    progress("dequantising the weights");
    let weights = LlamaWeights::from_gguf(&g, &config)?;
    let card = ModelCard {
        params: weights.params(),
        config: config.clone(),
        chat,
        stop_ids: tokenizer::stop_ids(&g, &tok),
        source: Some(Provenance {
            file: gguf_path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256,
            bytes: size,
            name: g.get("general.name").and_then(|v| v.as_str()).map(str::to_owned),
            weights: weight_types(&g),
        }),
    };
    drop(g);
    let read_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut files = Vec::new();
    for (form, file) in [(GraphForm::KvCache, MODEL_FILE), (GraphForm::Train, TRAIN_FILE)] {
        progress(&format!("building, checking with tract and writing {file}"));
        let graph = build_graph(&config, &weights, form)?;
        let path = out.join(file);
        save_model(&graph, &config, form, &path)?;
        files.push(path);
    }
    let tok_path = out.join(TOKENIZER_FILE);
    let text =
        serde_json::to_string(&tokenizer_json).map_err(|e| LlmError::Tokenizer(e.to_string()))?;
    std::fs::write(&tok_path, text).map_err(io(&tok_path))?;
    files.push(tok_path);
    let card_path = out.join(CARD_FILE);
    let text = serde_json::to_string_pretty(&card).map_err(|e| LlmError::Config(e.to_string()))?;
    std::fs::write(&card_path, text).map_err(io(&card_path))?;
    files.push(card_path);
    Ok(ImportReport { card, files, read_s, write_s: t1.elapsed().as_secs_f64() })
}

/// "dequantised to f32: token_embd from Q8_0; 210 tensors from Q4_1 (...); ..." from the
/// file's tensor types.
fn weight_types(g: &Gguf) -> String {
    let mut by_type: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for t in g.tensors() {
        by_type.entry(t.ty.name()).or_default().push(&t.name);
    }
    let parts: Vec<String> = by_type
        .iter()
        .map(|(ty, names)| match names.as_slice() {
            [one] => format!("{one} from {ty}"),
            many => {
                let kinds: std::collections::BTreeSet<&str> =
                    many.iter().map(|n| n.rsplit('.').nth(1).unwrap_or(n)).collect();
                format!(
                    "{} tensors from {ty} ({})",
                    many.len(),
                    kinds.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
        })
        .collect();
    format!("dequantised to f32: {}", parts.join("; "))
}
