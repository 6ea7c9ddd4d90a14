//! Training: running ONNX graphs forward and backward in candle, on the CPU, and updating their
//! weights.
//!
//! - [`exec`]: the differentiable executor. It evaluates a [`hone_graph::Graph`] with its
//!   float initializers as trainable `candle_core::Var`s and maps the gradients of a loss back
//!   to initializer names.
//! - [`loss`]: cross-entropy (logits, class indices), MSE and cosine distance.
//! - [`kd`]: distillation losses (forward, reverse, skew and skew reverse KL; full logits or
//!   cached top-k with a tail bucket).
//! - [`optim`]: SGD with momentum and AdamW, on the executor's variables.
//! - [`schedule`]: warm-up then cosine decay of the learning rate.
//! - [`fit`]: the seeded mini-batch loop with progress on stderr and a JSON-ready summary.
//! - [`builder`]: image classifiers defined in code and written as ONNX.

pub mod builder;
pub mod exec;
pub mod fit;
pub mod kd;
pub mod loss;
pub mod optim;
pub mod schedule;

pub use crate::TrainError;

#[cfg(test)]
mod tests;
