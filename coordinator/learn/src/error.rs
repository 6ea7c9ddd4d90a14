//! The error of training, evaluation and model building.

use crate::data::DataError;
use crate::train::exec::ExecError;
use hone_graph::GraphError;

/// Why training, evaluation or a model build failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The executor failed (forward, backward, write-back).
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A tensor operation outside the executor failed (loss, optimizer step).
    #[error("tensor operation: {0}")]
    Candle(#[source] Box<candle_core::Error>),
    /// A data set could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The graph could not be built, edited or saved.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// tract refused or failed to run the model.
    #[error("tract: {0}")]
    Tract(String),
    /// Invalid settings or arguments (for example a target out of range or a zero batch size).
    #[error("{0}")]
    Config(String),
    /// The trained model and the executor disagree beyond the tolerance.
    #[error(
        "tract and the executor disagree on output `{output}`: max abs diff {max_abs_diff:e} > \
         {tolerance:e} × scale {scale:e}"
    )]
    Parity {
        /// The output compared.
        output: String,
        /// Largest absolute difference.
        max_abs_diff: f32,
        /// Largest magnitude of tract's output.
        scale: f32,
        /// Relative tolerance.
        tolerance: f32,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Candle(Box::new(e))
    }
}

impl TrainError {
    /// A configuration or data error with its message.
    pub fn config(msg: impl Into<String>) -> Self {
        TrainError::Config(msg.into())
    }

    /// A tract error, with its whole chain.
    pub fn tract(e: impl std::fmt::Display) -> Self {
        TrainError::Tract(format!("{e:#}"))
    }
}
