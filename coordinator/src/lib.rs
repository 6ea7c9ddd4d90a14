//! Hone's coordinator.
//!
//! It keeps the model registry (content-addressed, tract-checked), the device registry (fed by
//! agents' retained birth and Last Will messages), and campaigns (models × devices → jobs),
//! dispatches signed job documents over MQTT, serves artifacts over HTTP with Range, stores
//! results exactly once, and exposes all of it through an HTTP API and a CLI.
//!
//! Module map:
//! - [`server`]: wiring; [`api`]: HTTP (the only module that knows JSON shapes of the API).
//! - [`campaign`]: planning (pure) and the [`campaign::engine`] (single writer of job state).
//! - [`db`]: the only module that knows sqlx; SQLite by default, PostgreSQL by URL.
//! - [`mqtt`]: the only module that knows rumqttc; [`broker`]: the embedded rumqttd.
//! - [`artifacts`]: content-addressed files and the ed25519 signing key.
//! - [`models`]: the tract gate for registration; [`assets`]: the real models of the manifest.
//! - [`graph`]: the ONNX graph IR (inspect, edit, fold, round-trip, external data).
//! - [`data`]: data set loaders (Fashion-MNIST, MNIST, VADER movie reviews, SOTU) with fixed
//!   splits, seeded mini-batches and a WordPiece tokenizer.
//! - [`train`]: differentiable execution of ONNX graphs in candle (forward and backward, with
//!   initializers as trainable variables), losses, optimizers, the training loop, a model
//!   builder, and the baselines trained here (`coordinator baseline`, `eval`, `train`).
//! - [`eval`]: accuracy and fidelity (top-1 agreement, cosine) of models run by tract on named
//!   data sets (images, VADER text, crops of two photographs), and `coordinator exec-bench`.
//! - [`prune`]: structured pruning of ONNX graphs (dependency groups, importance, allocation,
//!   cutting, side-by-side tract latency, recovery fine-tune): `coordinator prune`.
//! - [`cli`], [`demo`]: the `coordinator` command line.

pub mod api;
pub mod artifacts;
pub mod assets;
pub mod broker;
pub mod campaign;
pub mod cli;
pub mod data;
pub mod db;
pub mod demo;
pub mod eval;
pub mod graph;
pub mod metrics;
pub mod models;
pub mod mqtt;
pub mod prune;
pub mod server;
pub mod train;
