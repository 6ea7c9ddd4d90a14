//! Tests of the differentiable executor.

mod api;
mod errors;
mod ops;
mod real_models;
mod testing;
