//! Baseline models that the compression work starts from, trained here from real data and
//! reproducible from their seeds.
//!
//! - [`fashion_cnn`]: a CNN defined in code ([`crate::train::builder`]), trained on
//!   Fashion-MNIST with AdamW and a warm-up + cosine schedule.
//! - [`minilm_sentiment`]: paraphrase-MiniLM-L3 with a linear head added as a graph edit,
//!   trained on the VADER movie-review sentences (frozen encoder).
//!
//! Each baseline writes `model.onnx` and `summary.json` (test accuracy, training seconds,
//! parameters, multiply-accumulates, peak memory, the tract parity of the trained graph) into its
//! output folder.

mod fashion_cnn;
mod minilm_sentiment;

pub use fashion_cnn::{FashionCnnOptions, FashionCnnSummary, fashion_cnn, fashion_cnn_spec};
pub use minilm_sentiment::{MinilmOptions, MinilmSummary, minilm_sentiment};

use std::path::Path;

use crate::train::TrainError;

/// Writes `value` as pretty JSON to `path`.
pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).expect("summaries serialise");
    std::fs::write(path, text + "\n")
        .map_err(|source| TrainError::Io { path: path.display().to_string(), source })
}
