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
//! - [`deploy`]: deployments (canary, gate, rollback: [`deploy::rollout`]), serving telemetry,
//!   monitoring rules, alerts and suggestions ([`deploy::monitor`]).
//! - [`db`]: the only module that knows sqlx; SQLite by default, PostgreSQL by URL.
//! - [`mqtt`]: the only module that knows rumqttc; [`broker`]: the embedded rumqttd.
//! - [`artifacts`]: content-addressed files and the ed25519 signing key.
//! - [`models`]: the tract gate for registration, on a blocking thread.
//! - [`cli`]: the `coordinator` command line, the main job (`cli::demo`) included, and the
//!   engine's commands (`prune`, `baseline`, `eval`, `train`, `exec-bench`, `fold`).
//!
//! The compression engine lives in library crates beside this one: `hone-graph` (the ONNX IR
//! and the tract gate), `hone-learn` (data, training, evaluation), `hone-compress` (methods) and
//! `hone-assets` (the asset manifest). This crate is the fleet service and the CLI.

pub mod api;
pub mod artifacts;
pub mod broker;
pub mod campaign;
pub mod cli;
pub mod compare;
pub mod db;
pub mod deploy;
pub mod metrics;
pub mod mlflow;
pub mod models;
pub mod mqtt;
pub mod pipeline;
pub mod pki;
pub mod server;
