//! MLflow: Hone's pipelines, candidates, campaigns and deployments written to a tracking
//! server and its model registry, and read back to compare experiments
//! ([docs/mlflow.md](../../../docs/mlflow.md)).
//!
//! - [`client`]: the REST calls (the only module that speaks MLflow's HTTP);
//! - [`plan`]: what is written, as values (pure);
//! - [`sync`]: the mirror (idempotent writes, the retry queue, `mlflow sync`);
//! - [`compare`]: `coordinator experiments compare`, read back from MLflow.

pub mod client;
pub mod compare;
pub mod plan;
pub mod sync;

pub use client::{MlflowClient, MlflowError};
pub use sync::{Mlflow, MlflowConfig, Synced};
