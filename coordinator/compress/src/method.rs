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

/// The runtime a candidate is meant to run in: the agents' own values (`tract`, `ort`).
pub use hone_common::bench::Runtime;

/// The numeric precision of a candidate's weights and arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Precision {
    /// 32-bit floats.
    F32,
    /// int8 weights (and int8 arithmetic where the runtime has it).
    Int8,
}

crate::named_enum!(Precision, "precision" { F32 => "f32", Int8 => "int8" });

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

impl Candidate {
    /// A candidate for tract in f32, written at `ctx.out` by `method` with `settings`.
    fn tract_f32(
        ctx: &MethodContext<'_>,
        method: &'static str,
        settings: &serde_json::Value,
        report: serde_json::Value,
    ) -> Candidate {
        Candidate {
            model: ctx.out.to_path_buf(),
            method,
            settings: settings.clone(),
            runtime: Runtime::Tract,
            precision: Precision::F32,
            report,
        }
    }
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
pub const METHOD_NAMES: &[&str] = &["prune", "distill", "ptq"];

/// The method called `name`, with its default search space.
pub fn method(name: &str) -> anyhow::Result<Box<dyn CompressionMethod>> {
    match name {
        "prune" => Ok(Box::new(PruneMethod::new(PruneGrid::default()))),
        "distill" => Ok(Box::new(DistillMethod::default())),
        "ptq" => Ok(Box::new(crate::ptq::PtqMethod::default())),
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
    /// With and/or without least-squares reconstruction of the layers that read pruned units
    /// (default: without).
    #[serde(default = "no_reconstruction")]
    pub reconstruct: Vec<bool>,
}

fn no_reconstruction() -> Vec<bool> {
    vec![false]
}

impl Default for PruneGrid {
    /// 2 criteria × 2 allocations × 4 sparsities = 16 settings per class.
    fn default() -> Self {
        PruneGrid {
            criteria: vec![Criterion::Magnitude, Criterion::Activation],
            allocations: vec![Allocation::Uniform, Allocation::Global],
            sparsities: vec![0.15, 0.3, 0.45, 0.6],
            reconstruct: no_reconstruction(),
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
    /// Refit the layers that read pruned units by least squares (no training).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reconstruct: bool,
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
                    for &reconstruct in &self.grid.reconstruct {
                        let s = PruneSettings {
                            criterion,
                            allocation,
                            sparsity,
                            round_to: target.simd_width,
                            reconstruct,
                        };
                        out.push(serde_json::to_value(s).expect("settings serialise"));
                    }
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
        let mut child = session.child(s.criterion, s.sparsity, s.allocation, s.round_to)?;
        let rebuilt = if s.reconstruct { Some(session.reconstruct(&mut child)?) } else { None };
        let params_before = crate::prune::param_count(session.parent());
        drop(guard);
        let params_after = crate::prune::param_count(&child.graph);
        child.graph.save_gated(ctx.out, ctx.inputs).context("writing the pruned model")?;
        Ok(Candidate::tract_f32(
            ctx,
            self.name(),
            settings,
            serde_json::json!({
                "params_before": params_before,
                "params_after": params_after,
                "channels_removed": child.channels_removed,
                "widths": child.widths,
                "reconstruct": rebuilt,
                "seconds": started.elapsed().as_secs_f64(),
            }),
        ))
    }
}

/// The settings of one distilled candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillSettings {
    /// Share of the teacher's layers the student keeps (at least one; 1: all).
    pub layers: f64,
    /// Share of the prunable width it keeps (1: all).
    pub width: f64,
    /// The output divergence (none: forward KL for a classifier, reverse KL for a language
    /// model).
    pub loss: Option<hone_learn::train::kd::Divergence>,
    /// Optimizer steps.
    pub steps: usize,
    /// Kept widths are multiples of this (the class's f32 SIMD width).
    pub round_to: usize,
}

/// Knowledge distillation ([`crate::distill`]) as a pipeline method: students made from the
/// parent (fewer layers and/or narrower), each trained against the parent.
///
/// A classifier's students are trained on the pipeline's labelled or unlabelled examples
/// ([`crate::distill::distill_on`]). A language model Hone wrote (its card in the ONNX
/// metadata, [`hone_learn::llm::is_llm`]) is distilled on the SOTU corpus
/// ([`crate::distill::lm`]): each student is the parent pruned Minitron-style to the shares
/// (blocks evenly spread; query heads per key/value group, hidden stream and MLP neurons by
/// activations), trained on the parent's top-k next-token distribution, cached once for every
/// student of the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillMethod {
    /// `(layers, width)` shares of the students.
    pub students: Vec<(f64, f64)>,
    /// The output divergence (none: forward KL at temperature 2 for a classifier, reverse KL
    /// for a language model).
    pub loss: Option<hone_learn::train::kd::Divergence>,
    /// Optimizer steps per student.
    pub steps: usize,
    /// Examples (classifier, default 32) or sequences (language model, default 4) per step.
    pub batch_size: Option<usize>,
    /// Language models: tokens per training sequence.
    pub seq_len: usize,
    /// Language models: the parent's most likely next tokens cached per position.
    pub top_k: usize,
    /// Language models: weight of next-token cross-entropy beside the divergence.
    pub ce_weight: f64,
}

impl Default for DistillMethod {
    /// Four students: half the layers; a third of the layers; a third at half width; all
    /// layers at half width (the one a model without named layers can make). 200 steps of 32
    /// examples each, forward KL at temperature 2 mixed half and half with the labels; for a
    /// language model, 4 sequences of 128 tokens a step, the top 32 tokens, reverse KL mixed
    /// half and half with cross-entropy (10 % on-policy steps).
    fn default() -> Self {
        DistillMethod {
            students: vec![(0.5, 1.0), (1.0 / 3.0, 1.0), (1.0 / 3.0, 0.5), (1.0, 0.5)],
            loss: None,
            steps: 200,
            batch_size: None,
            seq_len: 128,
            top_k: 32,
            ce_weight: 0.5,
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
        if hone_learn::llm::is_llm(&parent) {
            drop(parent);
            let report = self.compress_lm(ctx, &s)?;
            return Ok(Candidate::tract_f32(
                ctx,
                self.name(),
                settings,
                serde_json::json!({
                    "params_before": report.teacher_params,
                    "params_after": report.student_params,
                    "size_ratio": report.size_ratio,
                    "student": report.student_config,
                    "test_perplexity": report.student_perplexity,
                    "teacher_test_perplexity": report.teacher_perplexity,
                    "test_agreement": report.agreement,
                    "teacher_cache_s": report.teacher_cache_s,
                    "on_policy_steps": report.on_policy_steps,
                    "train_s": report.train_s,
                    "steps": report.steps,
                    "seconds": started.elapsed().as_secs_f64(),
                }),
            ));
        }
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
        cfg.loss.divergence = s.loss.unwrap_or(hone_learn::train::kd::Divergence::Fkl);
        cfg.steps = s.steps;
        cfg.batch_size = self.batch_size.unwrap_or(32);
        cfg.round_to = s.round_to.max(1);
        cfg.inputs = ctx.inputs.clone();
        cfg.latency_seconds = 1.0;
        cfg.test_limit = Some(256);
        cfg.work_dir = ctx.out.with_extension("distill");
        let report = distill_on(&cfg, ctx.data, &tracing_free_progress)?;
        Ok(Candidate::tract_f32(
            ctx,
            self.name(),
            settings,
            serde_json::json!({
                "params_before": report.teacher.params,
                "params_after": report.student.params,
                "layers": report.student.layers,
                "accuracy_retained": report.accuracy_retained,
                "agreement": report.agreement,
                "coordinator_speedup": report.speedup,
                "steps": report.stages.iter().map(|s| s.summary.steps).sum::<usize>(),
                "seconds": started.elapsed().as_secs_f64(),
            }),
        ))
    }
}

impl DistillMethod {
    /// One language-model student: the parent unpacked into a model folder shared by the
    /// pipeline's candidates (beside `ctx.out`), its top-k cache shared the same way, the
    /// student pruned to the settings' shares and distilled; `ctx.out` is the student's
    /// `model.onnx` (its card and tokenizer in the metadata).
    fn compress_lm(
        &self,
        ctx: &MethodContext<'_>,
        s: &DistillSettings,
    ) -> anyhow::Result<crate::distill::lm::LmReport> {
        use crate::distill::lm::{LmConfig, LmStudent, distill_lm};
        use hone_learn::train::kd::{Divergence, KdLoss};
        if !matches!(ctx.data, EvalData::Sotu(_)) {
            bail!(
                "a language model is distilled on a text corpus: give the data `sotu`, not `{}`",
                ctx.data.name()
            );
        }
        let shared = llm_shared_dir(ctx.out.parent().unwrap_or(Path::new(".")));
        let teacher = hone_learn::llm::ModelDir::unpack(ctx.parent, &shared.join("model"))
            .context("unpacking the parent language model")?;
        let tc = teacher.card.config.clone();
        let layers = ((s.layers * tc.layers as f64).round() as usize).clamp(1, tc.layers);
        let group = tc.heads / tc.kv_heads.max(1);
        let per_group = ((s.width * group as f64).round() as usize).clamp(1, group);
        let heads = per_group * tc.kv_heads;
        let round = s.round_to.max(1);
        let ffn = (((s.width * tc.ffn as f64) / round as f64).round() as usize * round)
            .clamp(round.min(tc.ffn), tc.ffn);
        let student = LmStudent::Pruned { layers, hidden: heads * tc.head_dim(), heads, ffn };
        let divergence = s.loss.unwrap_or(Divergence::Rkl);
        let batch_size = self.batch_size.unwrap_or(4);
        let work_dir = ctx.out.with_extension("distill");
        let cache = "teacher-topk.bin";
        std::fs::create_dir_all(&work_dir)?;
        if shared.join(cache).exists() && !work_dir.join(cache).exists() {
            std::fs::copy(shared.join(cache), work_dir.join(cache))?;
        }
        let cfg = LmConfig {
            teacher: teacher.dir.clone(),
            student,
            loss: KdLoss::new(divergence),
            ce_weight: self.ce_weight,
            tokens: s.steps * batch_size * (self.seq_len + 1),
            eval_tokens: 4 * (self.seq_len + 1),
            seq_len: self.seq_len,
            top_k: self.top_k,
            steps: s.steps,
            on_policy: if self.ce_weight < 1.0 && divergence != Divergence::Fkl {
                0.1
            } else {
                0.0
            },
            batch_size,
            lr: 1e-3,
            seed: 0,
            checkpoint_every: 20,
            out: ctx.out.with_extension("llm"),
            work_dir: work_dir.clone(),
            prompts: Vec::new(),
            sample_tokens: 0,
        };
        let report = distill_lm(&cfg, &tracing_free_progress)?;
        if work_dir.join(cache).exists() && !shared.join(cache).exists() {
            let tmp = shared.join("teacher-topk.bin.tmp");
            std::fs::copy(work_dir.join(cache), &tmp)?;
            std::fs::rename(tmp, shared.join(cache))?;
        }
        std::fs::copy(cfg.out.join(hone_learn::llm::MODEL_FILE), ctx.out)?;
        Ok(report)
    }
}

/// Where the students of a language model written in `candidates` share their parent: its
/// model folder (`model/`, unpacked once) and its top-k cache.
pub fn llm_shared_dir(candidates: &Path) -> PathBuf {
    candidates.join("llm-parent")
}

/// Progress of a method inside the pipeline goes to stderr (the engine crates do not log).
fn tracing_free_progress(m: &str) {
    eprintln!("distill: {m}");
}
