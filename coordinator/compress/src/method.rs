//! The one trait every compression method implements, so that a pipeline drives pruning today
//! and distillation or post-training passes later without a new code path.
//!
//! A method is a search space and a way to realise one point of it:
//! - [`CompressionMethod::grid`] proposes settings for a device class ([`Target`]: its name and
//!   f32 SIMD width, so that pruned widths suit its kernels);
//! - [`CompressionMethod::compress`] turns the parent into a [`Candidate`] with those settings:
//!   the model written (gated by tract) where the pipeline asked, the method's name, its
//!   settings, the runtime and precision it targets, and the method's own report.
//!
//! Validating candidates (accuracy or fidelity) and measuring them on devices is the
//! pipeline's business, the same for every method. New runtimes (ONNX Runtime) and precisions
//! (int8) arrive as new values of [`Runtime`] and [`Precision`], not as new code paths.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, bail};
use hone_common::shapes::InputShapes;
use hone_learn::eval::EvalData;
use serde::{Deserialize, Serialize};

use crate::prune::alloc::Allocation;
use crate::prune::importance::Criterion;
use crate::prune::run::{PruneConfig, PruneSession};

/// The runtime a candidate is meant to run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Runtime {
    /// tract, the runtime of the edge agents.
    Tract,
}

crate::named_enum!(Runtime, "runtime" { Tract => "tract" });

/// The numeric precision of a candidate's weights and arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Precision {
    /// 32-bit floats.
    F32,
}

crate::named_enum!(Precision, "precision" { F32 => "f32" });

/// The device class a candidate is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The class (a device profile's name).
    pub class: String,
    /// f32 lanes of its widest SIMD register (4 for NEON, 8 for AVX2, 16 for AVX-512).
    pub simd_width: usize,
}

impl Target {
    /// The target of a device profile.
    pub fn of_profile(name: &str) -> anyhow::Result<Target> {
        let p = hone_firmware_profiles::find(name)
            .with_context(|| format!("no device profile `{name}` (see `edge-agent profiles`)"))?;
        Ok(Target { class: name.to_owned(), simd_width: p.simd_width_f32.max(1) as usize })
    }
}

/// What a method is given for one candidate.
#[derive(Debug, Clone)]
pub struct MethodContext<'a> {
    /// The parent model.
    pub parent: &'a Path,
    /// The data (calibration, fine-tuning).
    pub data: &'a EvalData,
    /// Shapes of the parent's inputs whose declared dims are not fixed.
    pub inputs: &'a InputShapes,
    /// The device class.
    pub target: &'a Target,
    /// Where the candidate must be written.
    pub out: &'a Path,
}

/// A compressed model and what it is.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// The written model (gated by tract).
    pub model: PathBuf,
    /// The method's name ([`CompressionMethod::name`]).
    pub method: &'static str,
    /// The settings that produced it (one of [`CompressionMethod::grid`]).
    pub settings: serde_json::Value,
    /// The runtime it targets.
    pub runtime: Runtime,
    /// Its precision.
    pub precision: Precision,
    /// The method's own report (sizes, widths, timings on the coordinator).
    pub report: serde_json::Value,
}

/// A compression method.
pub trait CompressionMethod: Send + Sync {
    /// A stable name: `prune` (later `distill`, `ptq`).
    fn name(&self) -> &'static str;
    /// The settings this method proposes for `target`, in a stable order (the pipeline's grid).
    fn grid(&self, target: &Target) -> Vec<serde_json::Value>;
    /// Compresses `ctx.parent` with `settings` into a candidate written at `ctx.out`.
    fn compress(
        &self,
        ctx: &MethodContext<'_>,
        settings: &serde_json::Value,
    ) -> anyhow::Result<Candidate>;
}

/// The methods a pipeline can run, by name.
pub const METHOD_NAMES: &[&str] = &["prune", "distill"];

/// The method called `name`, with its default search space.
pub fn method(name: &str) -> anyhow::Result<Box<dyn CompressionMethod>> {
    match name {
        "prune" => Ok(Box::new(PruneMethod::new(PruneGrid::default()))),
        "distill" => Ok(Box::new(DistillMethod::default())),
        other => bail!("unknown compression method `{other}`: one of {}", METHOD_NAMES.join(", ")),
    }
}

/// The search space of structured pruning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneGrid {
    /// Importance criteria.
    pub criteria: Vec<Criterion>,
    /// Allocations across groups.
    pub allocations: Vec<Allocation>,
    /// Fractions of each group's units removed.
    pub sparsities: Vec<f64>,
}

impl Default for PruneGrid {
    /// 2 criteria × 2 allocations × 4 sparsities = 16 settings per class.
    fn default() -> Self {
        PruneGrid {
            criteria: vec![Criterion::Magnitude, Criterion::Activation],
            allocations: vec![Allocation::Uniform, Allocation::Global],
            sparsities: vec![0.15, 0.3, 0.45, 0.6],
        }
    }
}

/// The settings of one pruned candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneSettings {
    /// Importance criterion.
    pub criterion: Criterion,
    /// Allocation across groups.
    pub allocation: Allocation,
    /// Fraction of each group's units removed.
    pub sparsity: f64,
    /// Kept widths are multiples of this (the class's f32 SIMD width).
    pub round_to: usize,
}

/// Structured pruning ([`crate::prune`]) over a [`PruneGrid`]. One parent is analysed and
/// scored once, then every candidate is cut from that session.
#[derive(Debug)]
pub struct PruneMethod {
    /// The search space.
    pub grid: PruneGrid,
    /// Calibration examples (activation and gradient criteria).
    pub calibration: usize,
    /// Seed of the calibration draw.
    pub seed: u64,
    /// Sequence length of text models (analysis).
    pub seq_len: usize,
    session: Mutex<Option<(PathBuf, String, PruneSession)>>,
}

impl PruneMethod {
    /// Pruning over `grid`, with the default calibration.
    pub fn new(grid: PruneGrid) -> PruneMethod {
        PruneMethod { grid, calibration: 256, seed: 0, seq_len: 16, session: Mutex::new(None) }
    }
}

impl CompressionMethod for PruneMethod {
    fn name(&self) -> &'static str {
        "prune"
    }

    fn grid(&self, target: &Target) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for &criterion in &self.grid.criteria {
            for &allocation in &self.grid.allocations {
                for &sparsity in &self.grid.sparsities {
                    let s = PruneSettings {
                        criterion,
                        allocation,
                        sparsity,
                        round_to: target.simd_width,
                    };
                    out.push(serde_json::to_value(s).expect("settings serialise"));
                }
            }
        }
        out
    }

    fn compress(
        &self,
        ctx: &MethodContext<'_>,
        settings: &serde_json::Value,
    ) -> anyhow::Result<Candidate> {
        let s: PruneSettings = serde_json::from_value(settings.clone())
            .context("pruning settings: criterion, allocation, sparsity, round_to")?;
        let started = std::time::Instant::now();
        let mut guard = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = !matches!(&*guard, Some((p, d, _)) if p == ctx.parent && d == ctx.data.name());
        if fresh {
            let config = PruneConfig {
                model: ctx.parent.to_path_buf(),
                data: ctx.data.name().to_owned(),
                calibration: self.calibration,
                seed: self.seed,
                seq_len: self.seq_len,
                inputs: ctx.inputs.clone(),
                round_to: Some(s.round_to.max(1)),
                ..PruneConfig::defaults()
            };
            let session = PruneSession::open(config, ctx.data.clone())?;
            *guard = Some((ctx.parent.to_path_buf(), ctx.data.name().to_owned(), session));
        }
        let (_, _, session) = guard.as_mut().expect("session just opened");
        let child = session.child(s.criterion, s.sparsity, s.allocation, s.round_to)?;
        let params_before = crate::prune::param_count(session.parent());
        drop(guard);
        let params_after = crate::prune::param_count(&child.graph);
        child.graph.save_gated(ctx.out, ctx.inputs).context("writing the pruned model")?;
        Ok(Candidate {
            model: ctx.out.to_path_buf(),
            method: self.name(),
            settings: settings.clone(),
            runtime: Runtime::Tract,
            precision: Precision::F32,
            report: serde_json::json!({
                "params_before": params_before,
                "params_after": params_after,
                "channels_removed": child.channels_removed,
                "widths": child.widths,
                "seconds": started.elapsed().as_secs_f64(),
            }),
        })
    }
}

/// The settings of one distilled candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillSettings {
    /// Share of the teacher's layers the student keeps (at least one; 1: all).
    pub layers: f64,
    /// Share of the prunable width it keeps (1: all).
    pub width: f64,
    /// The output divergence.
    pub loss: hone_learn::train::kd::Divergence,
    /// Optimizer steps.
    pub steps: usize,
    /// Kept widths are multiples of this (the class's f32 SIMD width).
    pub round_to: usize,
}

/// Knowledge distillation ([`crate::distill`]) as a pipeline method: students made from the
/// parent (fewer layers and/or narrower), each trained against the parent.
#[derive(Debug, Clone)]
pub struct DistillMethod {
    /// `(layers, width)` shares of the students.
    pub students: Vec<(f64, f64)>,
    /// The output divergence.
    pub loss: hone_learn::train::kd::Divergence,
    /// Optimizer steps per student.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
}

impl Default for DistillMethod {
    /// Four students: half the layers; a third of the layers; a third at half width; all
    /// layers at half width (the one a model without named layers can make). 200 steps of 32
    /// examples each, forward KL at temperature 2 mixed half and half with the labels.
    fn default() -> Self {
        DistillMethod {
            students: vec![(0.5, 1.0), (1.0 / 3.0, 1.0), (1.0 / 3.0, 0.5), (1.0, 0.5)],
            loss: hone_learn::train::kd::Divergence::Fkl,
            steps: 200,
            batch_size: 32,
        }
    }
}

impl CompressionMethod for DistillMethod {
    fn name(&self) -> &'static str {
        "distill"
    }

    fn grid(&self, target: &Target) -> Vec<serde_json::Value> {
        self.students
            .iter()
            .map(|&(layers, width)| {
                let s = DistillSettings {
                    layers,
                    width,
                    loss: self.loss,
                    steps: self.steps,
                    round_to: target.simd_width,
                };
                serde_json::to_value(s).expect("settings serialise")
            })
            .collect()
    }

    fn compress(
        &self,
        ctx: &MethodContext<'_>,
        settings: &serde_json::Value,
    ) -> anyhow::Result<Candidate> {
        use crate::distill::{DistillConfig, Layers, StudentSpec, blocks::Blocks, distill_on};
        let s: DistillSettings = serde_json::from_value(settings.clone())
            .context("distillation settings: layers, width, loss, steps, round_to")?;
        let started = std::time::Instant::now();
        let parent = hone_graph::Graph::load(ctx.parent)?;
        let layers = if s.layers < 1.0 {
            let total = Blocks::find(&parent)?.len();
            Some(Layers::Count(((s.layers * total as f64).round() as usize).clamp(1, total)))
        } else {
            None
        };
        let mut cfg = DistillConfig::new(
            ctx.parent.to_path_buf(),
            ctx.data.name().to_owned(),
            ctx.out.to_path_buf(),
        );
        cfg.student = StudentSpec::Derived { layers, width: (s.width < 1.0).then_some(s.width) };
        cfg.loss.divergence = s.loss;
        cfg.steps = s.steps;
        cfg.batch_size = self.batch_size;
        cfg.round_to = s.round_to.max(1);
        cfg.inputs = ctx.inputs.clone();
        cfg.latency_seconds = 1.0;
        cfg.test_limit = Some(256);
        cfg.work_dir = ctx.out.with_extension("distill");
        let report = distill_on(&cfg, ctx.data, &tracing_free_progress)?;
        Ok(Candidate {
            model: ctx.out.to_path_buf(),
            method: self.name(),
            settings: settings.clone(),
            runtime: Runtime::Tract,
            precision: Precision::F32,
            report: serde_json::json!({
                "params_before": report.teacher.params,
                "params_after": report.student.params,
                "layers": report.student.layers,
                "accuracy_retained": report.accuracy_retained,
                "agreement": report.agreement,
                "coordinator_speedup": report.speedup,
                "steps": report.stages.iter().map(|s| s.summary.steps).sum::<usize>(),
                "seconds": started.elapsed().as_secs_f64(),
            }),
        })
    }
}

/// Progress of a method inside the pipeline goes to stderr (the engine crates do not log).
fn tracing_free_progress(m: &str) {
    eprintln!("distill: {m}");
}
