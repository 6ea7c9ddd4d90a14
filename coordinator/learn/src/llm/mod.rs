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
//!   `model.onnx` also carries the card and the tokenizer in its metadata ([`CARD_KEY`],
//!   [`TOKENIZER_KEY`]), so that the one file is the whole model wherever it travels (the
//!   model registry, a pipeline's candidates): [`ModelDir::unpack`] makes a folder from it.
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
/// Metadata entry of `model.onnx` holding its [`ModelCard`] as JSON.
pub const CARD_KEY: &str = "hone.llm.card";
/// Metadata entry of `model.onnx` holding its `tokenizer.json`.
pub const TOKENIZER_KEY: &str = "hone.llm.tokenizer";

/// Whether `graph` is a language model Hone wrote (its card is in its metadata).
pub fn is_llm(graph: &Graph) -> bool {
    graph.metadata(CARD_KEY).is_some()
}

/// Puts `card` and the tokenizer's JSON into `graph`'s metadata (see [`ModelDir::unpack`]).
pub fn embed(graph: &mut Graph, card: &ModelCard, tokenizer_json: &str) -> Result<(), LlmError> {
    let text = serde_json::to_string(card).map_err(|e| LlmError::Config(e.to_string()))?;
    graph.set_metadata(CARD_KEY, text);
    graph.set_metadata(TOKENIZER_KEY, tokenizer_json);
    Ok(())
}

/// The card in a graph's metadata, checked.
pub fn card_of(graph: &Graph) -> Result<ModelCard, LlmError> {
    let text = graph.metadata(CARD_KEY).ok_or_else(|| {
        LlmError::Config(format!(
            "not a language model Hone wrote: no `{CARD_KEY}` metadata (import it with \
             `coordinator llm import`)"
        ))
    })?;
    let card: ModelCard = serde_json::from_str(text)
        .map_err(|e| LlmError::Config(format!("the `{CARD_KEY}` metadata is not a card: {e}")))?;
    card.config.validate()?;
    // The card must describe this graph: its sizes shape what is allocated from it.
    let past = graph.inputs().iter().filter(|i| i.name.starts_with("past_key_values.")).count();
    if past != 2 * card.config.layers {
        return Err(LlmError::Config(format!(
            "the `{CARD_KEY}` metadata says {} blocks, but the graph has {past} key/value cache \
             inputs",
            card.config.layers
        )));
    }
    Ok(card)
}

/// Cached positions of the decode step devices measure: one new token after these.
pub const DECODE_PAST: u64 = 127;

/// The shapes of one decode step after `past` cached positions: what devices measure.
pub fn decode_shapes(c: &LlamaConfig, past: u64) -> InputShapes {
    step_shapes(c, 1, past)
}

/// The KV-cache graph's shapes for `new` tokens after `past` cached positions, batch 1.
fn step_shapes(c: &LlamaConfig, new: u64, past: u64) -> InputShapes {
    let mut entries = vec![
        ("input_ids".to_owned(), vec![1, new]),
        ("attention_mask".into(), vec![1, past + new]),
        ("position_ids".into(), vec![1, new]),
    ];
    let kv = vec![1, c.kv_heads as u64, past, c.head_dim() as u64];
    for i in 0..c.layers {
        entries.push((llama::past_key(i), kv.clone()));
        entries.push((llama::past_value(i), kv.clone()));
    }
    InputShapes::new(entries).expect("step shapes are valid")
}

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

    /// Makes the model folder of one `model.onnx` that carries its card and tokenizer
    /// ([`embed`]) in `dir`: the file itself, `tokenizer.json` and `config.json` (the training
    /// form is built from its weights when asked, [`ModelDir::train_graph`]). A folder already
    /// unpacked from the same file is reused.
    pub fn unpack(model: &Path, dir: &Path) -> Result<ModelDir, LlmError> {
        let bytes = std::fs::read(model).map_err(io(model))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let stamp = dir.join("unpacked-from.sha256");
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == digest) {
            return ModelDir::open(dir);
        }
        let graph = Graph::from_bytes(&bytes)?;
        let card = card_of(&graph)?;
        let tokenizer = graph.metadata(TOKENIZER_KEY).ok_or_else(|| {
            LlmError::Tokenizer(format!("{}: no `{TOKENIZER_KEY}` metadata", model.display()))
        })?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let _ = std::fs::remove_file(&stamp);
        // A training form left by an earlier unpack would be another model's.
        let _ = std::fs::remove_file(dir.join(TRAIN_FILE));
        let tok_path = dir.join(TOKENIZER_FILE);
        std::fs::write(&tok_path, tokenizer).map_err(io(&tok_path))?;
        drop(graph);
        let card_path = dir.join(CARD_FILE);
        let text =
            serde_json::to_string_pretty(&card).map_err(|e| LlmError::Config(e.to_string()))?;
        std::fs::write(&card_path, text).map_err(io(&card_path))?;
        let model_path = dir.join(MODEL_FILE);
        std::fs::write(&model_path, &bytes).map_err(io(&model_path))?;
        std::fs::write(&stamp, &digest).map_err(io(&stamp))?;
        ModelDir::open(dir)
    }

    /// The training (no cache) graph: the folder's `model-train.onnx`, or built from the
    /// weights of its `model.onnx` when the folder has none (one [`ModelDir::unpack`] made).
    pub fn train_graph(&self) -> Result<Graph, LlmError> {
        let path = self.dir.join(TRAIN_FILE);
        if path.exists() {
            return Ok(Graph::load(&path)?);
        }
        let kv = Graph::load(self.dir.join(MODEL_FILE))?;
        let weights = LlamaWeights::from_graph(&kv, &self.card.config)?;
        build_graph(&self.card.config, &weights, GraphForm::Train)
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
    match form {
        GraphForm::KvCache => step_shapes(c, 4, 1),
        GraphForm::Train => InputShapes::new(vec![("input_ids".to_owned(), vec![1, 4])])
            .expect("the gate's shapes are valid"),
    }
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
    let tokenizer_text =
        serde_json::to_string(&tokenizer_json).map_err(|e| LlmError::Tokenizer(e.to_string()))?;
    for (form, file) in [(GraphForm::KvCache, MODEL_FILE), (GraphForm::Train, TRAIN_FILE)] {
        progress(&format!("building, checking with tract and writing {file}"));
        let mut graph = build_graph(&config, &weights, form)?;
        if form == GraphForm::KvCache {
            embed(&mut graph, &card, &tokenizer_text)?;
        }
        let path = out.join(file);
        save_model(&graph, &config, form, &path)?;
        files.push(path);
    }
    let tok_path = out.join(TOKENIZER_FILE);
    std::fs::write(&tok_path, tokenizer_text).map_err(io(&tok_path))?;
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
