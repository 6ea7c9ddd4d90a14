//! Hone's learning engine: everything that trains or evaluates a model.
//!
//! Module map (dependencies point down; no cycles):
//! - [`baseline`]: the baseline models trained here (`coordinator baseline`), built on `train`
//!   and checked with `eval`.
//! - [`exec_bench`]: the candle executor against tract, forward only, interleaved on the same
//!   real inputs (`coordinator exec-bench`).
//! - [`train`]: differentiable execution of ONNX graphs in candle (`train::exec::Executor`),
//!   losses, optimisers, schedules, the fit loop and a model builder. The only module that
//!   imports candle for training.
//! - [`eval`]: accuracy and fidelity of models run by tract, the runtime the agents use, on
//!   named data sets; `eval::tract` holds every tract execution of this crate.
//! - [`tasks`]: the evaluation and training tasks behind `coordinator eval` and `train`.
//! - [`llm`]: generative language models: a Llama imported from GGUF into ONNX (KV-cache and
//!   training forms), its byte-level BPE tokenizer, greedy decoding with tract.
//! - [`data`]: data set loaders with fixed seeded splits and mini-batches, and tokenizers.
//!
//! `train` never calls `eval` (tract) outside its tests, and `eval` never calls `train`
//! (candle): tract and candle meet only in `parity`, `baseline`, `tasks`, `exec_bench` and `llm`.
//! [`TrainError`] is the crate's error type.

pub mod baseline;
pub mod data;
mod error;
pub mod eval;
pub mod exec_bench;
pub mod llm;
pub mod parity;
pub mod tasks;
pub mod train;

pub use error::TrainError;
