//! The one trait every compression method implements, so that a pipeline can drive pruning
//! today and distillation or post-training passes later without a new code path.
//!
//! A method turns a parent model (a file, with a data set for calibration and validation) into
//! a [`Candidate`]: the compressed model written where the pipeline asked, with the method's
//! name, its settings, the runtime and precision it targets, and the method's own report
//! (accuracy, fidelity, sizes). Measuring candidates on devices is the pipeline's business, not
//! the method's.

use std::path::{Path, PathBuf};

use crate::prune::run::{PruneConfig, prune};

/// The runtime a candidate is meant to run in. New runtimes (ONNX Runtime) arrive as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Runtime {
    /// tract, the runtime of the edge agents.
    Tract,
}

/// The numeric precision of a candidate's weights and arithmetic. int8 arrives as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Precision {
    /// 32-bit floats.
    F32,
}

/// What a method is given.
#[derive(Debug, Clone)]
pub struct MethodContext<'a> {
    /// The parent model.
    pub parent: &'a Path,
    /// The data set (a name `hone_learn::eval::EvalData::load` knows).
    pub data: &'a str,
    /// Where the candidate must be written.
    pub out: &'a Path,
}

/// A compressed model and what it is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Candidate {
    /// The written model (gated by tract).
    pub model: PathBuf,
    /// The method's name ([`CompressionMethod::name`]).
    pub method: &'static str,
    /// The settings that produced it ([`CompressionMethod::settings`]).
    pub settings: serde_json::Value,
    /// The runtime it targets.
    pub runtime: Runtime,
    /// Its precision.
    pub precision: Precision,
    /// The method's own report (sizes, accuracy or fidelity, coordinator-side timings).
    pub report: serde_json::Value,
}

/// A compression method.
pub trait CompressionMethod: Send + Sync {
    /// A stable name: `prune` (later `distill`, `ptq`).
    fn name(&self) -> &'static str;
    /// The settings, as a candidate's lineage records them.
    fn settings(&self) -> serde_json::Value;
    /// Compresses `ctx.parent` into a candidate written at `ctx.out`.
    fn compress(&self, ctx: &MethodContext<'_>) -> anyhow::Result<Candidate>;
}

/// Structured pruning with fixed settings; the model, data and output come from the context.
#[derive(Debug, Clone)]
pub struct PruneMethod {
    /// The settings (`model`, `data` and `out` are replaced by the context's).
    pub config: PruneConfig,
}

impl CompressionMethod for PruneMethod {
    fn name(&self) -> &'static str {
        "prune"
    }

    fn settings(&self) -> serde_json::Value {
        let c = &self.config;
        serde_json::json!({
            "criterion": c.criterion.to_string(),
            "sparsity": c.sparsity,
            "target_speedup": c.target_speedup,
            "allocation": c.allocation.to_string(),
            "activation_metric": c.activation_metric.to_string(),
            "round_to": c.round_to,
            "profile": c.profile,
            "weights": c.weights,
            "finetune_steps": c.finetune_steps,
            "finetune_lr": c.finetune_lr,
            "distill": c.distill,
            "seed": c.seed,
        })
    }

    fn compress(&self, ctx: &MethodContext<'_>) -> anyhow::Result<Candidate> {
        let config = PruneConfig {
            model: ctx.parent.to_path_buf(),
            data: ctx.data.to_owned(),
            out: Some(ctx.out.to_path_buf()),
            ..self.config.clone()
        };
        let report = prune(config)?;
        Ok(Candidate {
            model: ctx.out.to_path_buf(),
            method: self.name(),
            settings: self.settings(),
            runtime: Runtime::Tract,
            precision: Precision::F32,
            report: serde_json::to_value(&report)?,
        })
    }
}
