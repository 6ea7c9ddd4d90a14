//! Compression pipelines: the loop Hone exists for.
//!
//! The coordinator compresses a parent model with every requested method (through the engine's
//! one trait, `hone_compress::CompressionMethod`), validates each candidate on the coordinator
//! (accuracy, or fidelity to the parent), registers the survivors with their lineage, measures
//! the parent and the promising candidates on every target device class through campaigns over
//! MQTT, and lets those measurements choose the winner per class.
//!
//! - [`result`]: what a pipeline decided (the JSON of the CLI and API, the report's input).
//! - [`request`]: what a user asks for, and its checks.
//! - [`runner`]: drives pipelines through their stages, resumably.
//! - [`select`]: the choice (Pareto front, winner, reason), pure.
//! - [`report`]: the self-contained HTML report.

pub mod report;
pub mod request;
pub mod result;
pub mod runner;
pub mod select;
