//! Compression pipelines: what a pipeline decided ([`result`]) and its HTML report ([`report`]).

pub mod report;
pub mod result;
