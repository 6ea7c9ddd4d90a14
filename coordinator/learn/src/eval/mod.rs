//! Evaluation of ONNX models on real data, run by tract: accuracy on labelled data and fidelity
//! against a reference model. [`tract`] is the one place this crate runs tract.
//!
//! - [`EvalData`]: the data sets, by name (`fashion-mnist`, `mnist`, `vader`, `photos`), turned
//!   into [`EvalBatch`]es named after a model's true inputs, with clear errors when the model's
//!   inputs do not fit the data. Limits take a fixed pseudo-random subset of a part, the same
//!   for every call and every model ([`EvalData::examples`]).
//! - [`user`]: the user's own data ([`DataSpec`], [`EvalData::open`]): a folder of images, a
//!   JSONL or CSV file of texts, or tensors keyed by input name (`.npz`, `.npy`, `.safetensors`),
//!   with the preprocessing stated in the spec (`docs/data.md`).
//! - [`photos`]: the scikit-learn wheel's two photographs, decoded in Rust (`zune-jpeg`) and cut
//!   into 96 fixed crops (32 test, 32 validation, 32 train) for open_nsfw-style models.
//! - [`accuracy`]: argmax of the first output against the labels.
//! - [`stats`]: examples as a model's inputs, one at a time, and their statistics (the
//!   reference for serving drift).
//! - [`fidelity`]: top-1 agreement and cosine similarity of a model's output rows against a
//!   reference's, on the same examples (pruned against original, student against teacher).
//!
//! tract runs every figure here by default: the runtime every edge agent has. [`ort`] runs
//! them in ONNX Runtime instead ([`EvalRuntime`]), for models meant for it. Text is padded to the
//! longest sentence of the evaluated examples, so that tract plans once per batch size.

mod data;
mod metrics;
pub mod ort;
pub mod photos;
pub mod stats;
pub mod tract;
pub mod user;

#[cfg(test)]
pub(crate) mod tests;

use std::path::Path;

use anyhow::Context as _;

pub use data::{DATA_NAMES, EvalBatch, EvalData, MAX_TOKENS, TextData};
pub use metrics::TractRunner;
pub use metrics::{
    EvalRuntime, Fidelity, accuracy, accuracy_in, accuracy_of, fidelity, fidelity_in,
};
pub use photos::{PhotoSet, photos};

use hone_graph::Graph;
pub use tract::Accuracy;
pub use user::{Channels, DataFormat, DataSource, DataSpec, Layout};

/// Loads a model for evaluation. A file that is not ONNX, or whose graph is broken (a truncated
/// file, a node reading a value nothing produces), is an error that names the file.
pub fn load_model(path: &Path) -> anyhow::Result<Graph> {
    let graph = Graph::load(path).with_context(|| format!("loading model {}", path.display()))?;
    graph.validate().with_context(|| format!("model {} is not a valid graph", path.display()))?;
    Ok(graph)
}
