//! Training: running ONNX graphs forward and backward in candle, on the CPU.
//!
//! - [`exec`]: the differentiable executor. It evaluates a [`crate::graph::Graph`] with its
//!   float initializers as trainable `candle_core::Var`s and maps the gradients of a loss back
//!   to initializer names.

pub mod exec;
