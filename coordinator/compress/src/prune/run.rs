//! One pruning run, from settings to report: analyse, score (choosing the criterion when
//! `auto`), allocate, cut, fine-tune, validate, measure side by side, gate and write. The
//! command line (`coordinator prune`) and the pipeline's pruning method both call [`prune`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hone_common::shapes::InputShapes;
use hone_graph::Graph;
use hone_learn::data::Part;
use hone_learn::eval::{EvalBatch, EvalData};

use super::alloc::{self, Allocation};
use super::apply::{Selection, apply};
use super::finetune::{FinetuneConfig, FinetuneSummary, finetune};
use super::importance::{self, ActivationMetric, Criterion, Scores};
use super::latency::{Timing, side_by_side, timing_inputs};
use super::search::{Budget, SearchOutcome, SearchPlan, search_sparsity};
use super::{Analysis, Prepared, analysis_dims, macs, param_count, params_no_embeddings, prepare};

/// Settings of one pruning run (`coordinator prune`, and the pipeline's pruning method).
#[derive(Debug, Clone)]
pub struct PruneConfig {
    /// The ONNX model to prune.
    pub model: PathBuf,
    /// Data for calibration, fine-tuning and validation: fashion-mnist, mnist, vader, photos, or
    /// your own (a path with options, or `dvc://REPO/PATH@REV`; docs/data.md).
    pub data: String,
    /// Importance family.
    pub criterion: Criterion,
    /// Fraction of each prunable group's units to remove (0 ≤ S < 1).
    pub sparsity: Option<f64>,
    /// Search the smallest sparsity whose child is at least X times faster in tract.
    pub target_speedup: Option<f64>,
    /// Kept widths are multiples of this many channels (default: the device profile's f32 SIMD
    /// width, else 8 for AVX2).
    pub round_to: Option<usize>,
    /// Device profile to take the SIMD width from (e.g. rpi4: NEON, 4 lanes).
    pub profile: Option<String>,
    /// Per-layer allocation.
    pub allocation: Allocation,
    /// Statistic of the activation family.
    pub activation_metric: ActivationMetric,
    /// Weights of magnitude, gradient and activation in `combined` (non-negative).
    pub weights: [f64; 3],
    /// Recovery fine-tuning steps after pruning (0: none).
    pub finetune_steps: usize,
    /// Refit the layers that read pruned units by least squares on calibration examples
    /// ([`super::reconstruct`]), before any fine-tuning.
    pub reconstruct: bool,
    /// Peak learning rate of the fine-tune.
    pub finetune_lr: f64,
    /// Batch size of the fine-tune.
    pub finetune_batch: usize,
    /// Weight of distillation from the parent's outputs during the fine-tune (0: none).
    pub distill: f64,
    /// Calibration examples (gradient and activation statistics), from the training part.
    pub calibration: usize,
    /// Validation examples used to choose the criterion and to measure sensitivity.
    pub validation: usize,
    /// Test examples for the reported accuracy (default: the whole test part).
    pub test_limit: Option<usize>,
    /// Sequence length for text models (latency and analysis).
    pub seq_len: usize,
    /// Seconds of side-by-side latency measurement for the final result.
    pub latency_seconds: f64,
    /// Seed of the calibration and fine-tuning draws.
    pub seed: u64,
    /// Also time the unpruned model in ONNX Runtime (CPU, one thread) in the same run, with this
    /// Python (which must have `onnxruntime` and `numpy`; see [`super::ort`]).
    pub compare_ort: Option<PathBuf>,
    /// Shapes for inputs whose declared shapes are not fixed (`--input NAME=1x3x48x320`): the
    /// analysis, the latency measurement and the gate use them.
    pub inputs: InputShapes,
    /// Where to write the pruned model (`None`: measure only).
    pub out: Option<PathBuf>,
}

impl PruneConfig {
    /// The command line's defaults, with no model, data, sparsity or output.
    pub fn defaults() -> PruneConfig {
        PruneConfig {
            model: PathBuf::new(),
            data: String::new(),
            criterion: Criterion::Auto,
            sparsity: None,
            target_speedup: None,
            round_to: None,
            profile: None,
            allocation: Allocation::Uniform,
            activation_metric: ActivationMetric::Wanda,
            weights: [1.0, 1.0, 1.0],
            finetune_steps: 0,
            reconstruct: false,
            finetune_lr: 1e-3,
            finetune_batch: 64,
            distill: 0.0,
            calibration: 256,
            validation: 1000,
            test_limit: None,
            seq_len: 128,
            latency_seconds: 6.0,
            seed: 0,
            compare_ort: None,
            inputs: InputShapes::default(),
            out: None,
        }
    }
}

/// One row of the criterion comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CriterionRow {
    /// The criterion.
    pub criterion: Criterion,
    /// Validation accuracy (or top-1 agreement with the parent) of the child before fine-tuning.
    pub validation_score: f64,
    /// Mean output cosine with the parent on the same examples (unlabelled data; breaks ties).
    pub validation_cosine: Option<f64>,
    /// Parameters of the child.
    pub params: usize,
}

/// The result (`--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PruneReport {
    /// Input model.
    pub model: PathBuf,
    /// Written model.
    pub out: Option<PathBuf>,
    /// Data set.
    pub data: String,
    /// Criterion used (the one `auto` chose, when auto).
    pub criterion: Criterion,
    /// Whether the criterion was chosen automatically.
    pub auto: bool,
    /// The table auto chose from.
    pub criteria: Vec<CriterionRow>,
    /// Allocation.
    pub allocation: Allocation,
    /// Fraction of units removed per group (the found one under `--target-speedup`).
    pub sparsity: f64,
    /// Rounding of kept widths.
    pub round_to: usize,
    /// Float parameters before.
    pub params_before: usize,
    /// Float parameters after.
    pub params_after: usize,
    /// MACs of one inference (batch 1) before.
    pub macs_before: u64,
    /// MACs after.
    pub macs_after: u64,
    /// Test accuracy of the parent (labelled data).
    pub accuracy_before: Option<f64>,
    /// Test accuracy of the child, after any fine-tune.
    pub accuracy_after: Option<f64>,
    /// Test accuracy of the child before fine-tuning.
    pub accuracy_after_prune: Option<f64>,
    /// After reconstruction (before any fine-tuning), when asked.
    pub accuracy_after_reconstruct: Option<f64>,
    /// Fidelity to the parent after plain pruning (unlabelled data).
    pub fidelity_after_prune: Option<f64>,
    /// Fidelity after reconstruction (unlabelled data).
    pub fidelity_after_reconstruct: Option<f64>,
    /// What reconstruction did.
    pub reconstruct: Option<super::reconstruct::ReconstructReport>,
    /// Top-1 agreement of child and parent on the test part.
    pub fidelity: Option<f64>,
    /// Mean cosine similarity of child and parent outputs on the test part (unlabelled data).
    pub fidelity_cosine: Option<f64>,
    /// Test examples.
    pub test_examples: usize,
    /// tract latency of the parent, median (side by side with the child).
    pub latency_ms_before: f64,
    /// tract latency of the child, median.
    pub latency_ms_after: f64,
    /// Parent median / child median.
    pub speedup: f64,
    /// The child is not faster than the parent.
    pub not_faster: bool,
    /// The speedup asked for with `--target-speedup`.
    pub target_speedup: Option<f64>,
    /// The search for it: every sparsity measured, and whether its confirmation met the target.
    pub search: Option<SearchOutcome>,
    /// Whether the final, longer measurement confirms the target (the search measures briefly).
    pub target_met: Option<bool>,
    /// MACs before / MACs after.
    pub mac_reduction: f64,
    /// speedup / mac_reduction (how much of the arithmetic saved shows up as time).
    pub speedup_per_mac_reduction: f64,
    /// Timing details.
    pub timing: (Timing, Timing),
    /// The unpruned model in ONNX Runtime (one thread), median ms, when `--compare-ort`.
    pub ort_ms_before: Option<f64>,
    /// ONNX Runtime on the parent / tract on the child (> 1: the pruned model in tract is faster
    /// than the original in ONNX Runtime).
    pub speedup_vs_ort: Option<f64>,
    /// onnxruntime's version.
    pub ort_version: Option<String>,
    /// Float parameters outside embedding tables (initializers read by `Gather`), before.
    pub params_no_embeddings_before: usize,
    /// The same, after.
    pub params_no_embeddings_after: usize,
    /// Fraction of the prunable groups' channels removed.
    pub channels_removed: f64,
    /// Groups: prunable, blocked.
    pub groups_prunable: usize,
    /// Blocked groups with their reasons.
    pub groups_blocked: Vec<String>,
    /// Units kept per group (`id kind kept/units`).
    pub widths: Vec<String>,
    /// The fine-tune, when there was one.
    pub finetune: Option<FinetuneSummary>,
    /// Seconds spent pruning (analysis, scoring, search, cutting), fine-tune and evaluation apart.
    pub prune_seconds: f64,
    /// Seconds in all.
    pub total_seconds: f64,
}

struct Ctx {
    args: PruneConfig,
    parent: Graph,
    prep: Prepared,
    data: EvalData,
    round_to: usize,
    calib: Vec<EvalBatch>,
    scores: BTreeMap<Criterion, Scores>,
    /// Measured sensitivities by criterion, sparsity (bits) and rounding, each measured once.
    sensitivity: BTreeMap<(Criterion, u64, usize), BTreeMap<usize, alloc::Sensitivity>>,
    timing: Vec<(candle_core::DType, Vec<usize>)>,
}

/// Progress goes to stderr, so that stdout stays the result (a table, or JSON).
fn log(msg: impl std::fmt::Display) {
    eprintln!("{msg}");
}

/// Checks the settings that need no model: the sparsity range, the target, the weights and
/// the rounding (a device profile gives its f32 SIMD width).
pub fn round_to(args: &PruneConfig) -> anyhow::Result<usize> {
    if let Some(s) = args.sparsity
        && !(0.0..1.0).contains(&s)
    {
        bail!("--sparsity must be in [0, 1), got {s}");
    }
    if let Some(x) = args.target_speedup
        && x <= 1.0
    {
        bail!("--target-speedup must be above 1, got {x}");
    }
    if args.weights.iter().any(|w| !(*w >= 0.0 && w.is_finite())) {
        bail!("--weights takes three non-negative numbers: magnitude,gradient,activation");
    }
    Ok(match (args.round_to, &args.profile) {
        (Some(n), _) if n > 0 => n,
        (Some(_), _) => bail!("--round-to must be at least 1"),
        (None, Some(p)) => hone_firmware_profiles::find(p)
            .with_context(|| format!("no device profile `{p}` (see `edge-agent profiles`)"))?
            .simd_width_f32
            .max(1) as usize,
        (None, None) => 8,
    })
}

/// The dependency groups of a model, as `coordinator prune --explain` shows them, analysed on
/// its own declared shapes, or `inputs` where given.
pub fn explain(model: &std::path::Path, inputs: &InputShapes) -> anyhow::Result<Analysis> {
    let parent = Graph::load(model)?;
    let prep = prepare(&parent, &analysis_dims(&parent, 16, inputs))
        .with_context(|| format!("analysing {}", model.display()))?;
    Ok(prep.analysis)
}

/// Prunes, validates, measures and (when `out` is set) writes the child, gated by tract
/// before it appears at `out`.
pub fn prune(args: PruneConfig) -> anyhow::Result<PruneReport> {
    let started = Instant::now();
    // Settings first: a bad one is refused before the data or the model is read.
    round_to(&args)?;
    if args.sparsity.is_none() && args.target_speedup.is_none() {
        bail!("give --sparsity S or --target-speedup X");
    }
    let data = EvalData::open(&hone_learn::eval::DataSpec::parse(&args.data)?)?;
    log(format_args!("analysing {}", args.model.display()));
    let mut ctx = PruneSession::open(args, data)?.ctx;
    let needs_calib = matches!(
        ctx.args.criterion,
        Criterion::Gradient | Criterion::Activation | Criterion::Combined | Criterion::Auto
    ) || ctx.args.allocation == Allocation::Sensitivity;
    if needs_calib {
        calibrate(&mut ctx)?;
    }

    // The sparsity: given, or searched for the target speedup (with a cheap criterion first).
    let search_criterion = match ctx.args.criterion {
        Criterion::Auto | Criterion::Combined => Criterion::Magnitude,
        c => c,
    };
    let (sparsity, search) = match (ctx.args.sparsity, ctx.args.target_speedup) {
        (Some(s), _) => (s, None),
        (None, Some(x)) => {
            let o = search_sparsity(x, &SearchPlan::default(), |s, budget| {
                let sel = selection(&mut ctx, search_criterion, s)?;
                let child = apply(&ctx.prep.graph, &ctx.prep.analysis, &sel)?;
                let time = match budget {
                    Budget::Brief => Duration::from_millis(1500),
                    Budget::Long => Duration::from_secs(4),
                };
                let (p, ch) = side_by_side(&ctx.parent, &child, &ctx.timing, 2, time)?;
                let speedup = p.p50_ms / ch.p50_ms;
                log(format_args!("  sparsity {s:.3} ({budget:?}): {speedup:.2}x"));
                Ok(speedup)
            })?;
            (o.sparsity, Some(o))
        }
        (None, None) => unreachable!("checked above"),
    };

    // The criterion: given, or the best on validation data at this sparsity.
    let mut rows = Vec::new();
    let (criterion, sel, mut child) = if ctx.args.criterion == Criterion::Auto {
        let mut best: Option<(f64, Criterion, Selection, Graph)> = None;
        for c in
            [Criterion::Magnitude, Criterion::Gradient, Criterion::Activation, Criterion::Combined]
        {
            let sel = selection(&mut ctx, c, sparsity)?;
            let child = apply(&ctx.prep.graph, &ctx.prep.analysis, &sel)?;
            let q = quality(&ctx, &child, Part::Validation, Some(ctx.args.validation))?;
            let score = q.score();
            let shown = q.accuracy.or(q.agreement).unwrap_or(0.0);
            log(format_args!("  {c:<10} validation {:.2} %", shown * 100.0));
            rows.push(CriterionRow {
                criterion: c,
                validation_score: shown,
                validation_cosine: q.cosine,
                params: param_count(&child),
            });
            if best.as_ref().is_none_or(|b| score > b.0) {
                best = Some((score, c, sel, child));
            }
        }
        let (_, c, sel, child) = best.context("no criterion was tried")?;
        (c, sel, child)
    } else {
        let c = ctx.args.criterion;
        let sel = selection(&mut ctx, c, sparsity)?;
        let child = apply(&ctx.prep.graph, &ctx.prep.analysis, &sel)?;
        (c, sel, child)
    };
    let prune_seconds = started.elapsed().as_secs_f64();
    let widths = widths(&ctx.prep, &sel);

    // Validation.
    let part = Part::Test;
    let limit = ctx.args.test_limit;
    let before = quality(&ctx, &ctx.parent, part, limit)?;
    let after_prune = quality(&ctx, &child, part, limit)?;
    let mut reconstructed = None;
    if ctx.args.reconstruct {
        log("reconstructing: least squares on calibration examples");
        if ctx.calib.is_empty() {
            calibrate(&mut ctx)?;
        }
        let r = super::reconstruct::reconstruct(&ctx.prep.graph, &mut child, &ctx.calib, 1e-3)?;
        let q = quality(&ctx, &child, part, limit)?;
        reconstructed = Some((r, q));
    }
    let mut ft = None;
    if ctx.args.finetune_steps > 0 {
        log(format_args!("fine-tuning {} steps", ctx.args.finetune_steps));
        let batches = ctx.data.batches(
            &child,
            Part::Train,
            ctx.args.finetune_batch,
            Some(ctx.args.finetune_steps * ctx.args.finetune_batch),
            Some(ctx.args.seed.wrapping_add(1)),
        )?;
        let cfg = FinetuneConfig {
            steps: ctx.args.finetune_steps,
            lr: ctx.args.finetune_lr,
            distill: ctx.args.distill,
        };
        ft = Some(finetune(&mut child, &ctx.prep.graph, &batches, &cfg, true)?);
    }
    let after = if ft.is_some() || reconstructed.is_some() {
        quality(&ctx, &child, part, limit)?
    } else {
        after_prune.clone()
    };

    if let Some(out) = &ctx.args.out {
        // Written to a temporary file, gated by tract, then renamed: a rejected child never
        // appears at `out`.
        child.save_gated(out, &ctx.args.inputs).context("writing the pruned model")?;
    }
    log("measuring tract latency, parent and child side by side");
    let sp = speed(&ctx.parent, &child, &ctx.timing, ctx.args.latency_seconds)?;
    let (tp, tc) = (sp.parent, sp.child);
    let dims1 = batch1_dims(&ctx);
    let macs_before = macs(&ctx.parent, &dims1)?;
    let macs_after = macs(&child, &dims1)?;
    let speedup = sp.speedup;
    let ort = match &ctx.args.compare_ort {
        Some(py) => {
            log("timing the parent in ONNX Runtime");
            Some(super::ort::ort_time(
                py,
                &ctx.args.model,
                &ctx.parent,
                &ctx.timing,
                ctx.args.latency_seconds,
            )?)
        }
        None => None,
    };
    let (mut removed, mut total) = (0usize, 0usize);
    for g in ctx.prep.analysis.prunable() {
        total += g.channels();
        removed += (g.units() - sel.get(&g.id).map_or(g.units(), Vec::len)) * g.unit();
    }
    let mac_reduction = macs_before as f64 / macs_after.max(1) as f64;
    Ok(PruneReport {
        model: ctx.args.model.clone(),
        out: ctx.args.out.clone(),
        data: ctx.data.name().to_owned(),
        criterion,
        auto: ctx.args.criterion == Criterion::Auto,
        criteria: rows,
        allocation: ctx.args.allocation,
        sparsity,
        round_to: ctx.round_to,
        // Counted on the normalised graph: `Constant` weights are initializers there, as in
        // the child (a Paddle export keeps every weight in a `Constant`).
        params_before: param_count(&ctx.prep.graph),
        params_after: param_count(&child),
        macs_before,
        macs_after,
        accuracy_before: before.accuracy,
        accuracy_after: after.accuracy,
        accuracy_after_prune: after_prune.accuracy,
        accuracy_after_reconstruct: reconstructed.as_ref().and_then(|(_, q)| q.accuracy),
        fidelity_after_prune: if ctx.data.labelled() { None } else { after_prune.agreement },
        fidelity_after_reconstruct: if ctx.data.labelled() {
            None
        } else {
            reconstructed.as_ref().and_then(|(_, q)| q.agreement)
        },
        reconstruct: reconstructed.map(|(r, _)| r),
        fidelity: if ctx.data.labelled() { None } else { after.agreement },
        fidelity_cosine: after.cosine,
        test_examples: after.examples,
        latency_ms_before: tp.p50_ms,
        latency_ms_after: tc.p50_ms,
        speedup,
        not_faster: sp.not_faster,
        target_speedup: ctx.args.target_speedup,
        search,
        target_met: ctx.args.target_speedup.map(|x| speedup >= x),
        mac_reduction,
        speedup_per_mac_reduction: speedup / mac_reduction,
        ort_ms_before: ort.as_ref().map(|o| o.0),
        speedup_vs_ort: ort.as_ref().map(|o| o.0 / tc.p50_ms),
        ort_version: ort.map(|o| o.1),
        params_no_embeddings_before: params_no_embeddings(&ctx.prep.graph),
        params_no_embeddings_after: params_no_embeddings(&child),
        channels_removed: removed as f64 / total.max(1) as f64,
        timing: (tp, tc),
        groups_prunable: ctx.prep.analysis.prunable().count(),
        groups_blocked: ctx
            .prep
            .analysis
            .groups
            .iter()
            .filter_map(|g| {
                g.blocked
                    .as_ref()
                    .map(|b| format!("{} ({}): {b}", g.producers().join(", "), g.kind))
            })
            .collect(),
        widths,
        finetune: ft,
        prune_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    })
}

/// One parent prepared once (normalised, analysed, scored on demand), from which many children
/// are cut: what a pipeline uses to generate a grid of candidates without repeating the
/// analysis and the scoring for each one.
pub struct PruneSession {
    ctx: Ctx,
}

impl std::fmt::Debug for PruneSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PruneSession")
            .field("model", &self.ctx.args.model)
            .field("data", &self.ctx.data.name())
            .finish_non_exhaustive()
    }
}

/// A child cut by a [`PruneSession`].
#[derive(Debug, Clone)]
pub struct Child {
    /// The pruned graph.
    pub graph: Graph,
    /// Units kept per group (`producers kind kept/units`).
    pub widths: Vec<String>,
    /// Fraction of the prunable groups' channels removed.
    pub channels_removed: f64,
}

impl PruneSession {
    /// Loads and analyses `config.model` (with `config.inputs` for dynamic dims); `data`
    /// serves calibration (gradient and activation criteria) and sensitivity measurement.
    pub fn open(config: PruneConfig, data: EvalData) -> anyhow::Result<PruneSession> {
        let round_to = round_to(&config)?;
        let parent = Graph::load(&config.model)?;
        data.check(&parent)?;
        let prep = prepare(&parent, &analysis_dims(&parent, 16, &config.inputs))
            .with_context(|| format!("analysing {}", config.model.display()))?;
        if prep.analysis.prunable().count() == 0 {
            let reasons: Vec<String> =
                prep.analysis.groups.iter().filter_map(|g| g.blocked.clone()).collect();
            bail!(
                "nothing in {} can be pruned safely: {}",
                config.model.display(),
                if reasons.is_empty() {
                    "no weight-bearing layer".into()
                } else {
                    reasons.join("; ")
                }
            );
        }
        let timing = timing_inputs(&parent, config.seq_len, &config.inputs);
        Ok(PruneSession {
            ctx: Ctx {
                calib: Vec::new(),
                scores: BTreeMap::new(),
                sensitivity: BTreeMap::new(),
                timing,
                round_to,
                data,
                prep,
                parent,
                args: config,
            },
        })
    }

    /// The parent, normalised (`Constant` nodes as initializers, as in every child), for
    /// comparing sizes.
    pub fn parent(&self) -> &Graph {
        &self.ctx.prep.graph
    }

    /// Cuts a child: `criterion` (not `auto`: the pipeline compares criteria on devices),
    /// `sparsity` of each prunable group, `allocation` across groups, kept widths rounded to
    /// multiples of `round_to`.
    pub fn child(
        &mut self,
        criterion: Criterion,
        sparsity: f64,
        allocation: Allocation,
        round_to: usize,
    ) -> anyhow::Result<Child> {
        if criterion == Criterion::Auto {
            bail!("a session cuts with one criterion; `auto` chooses among children");
        }
        if !(0.0..1.0).contains(&sparsity) {
            bail!("sparsity must be in [0, 1), got {sparsity}");
        }
        let sel = selection_with(&mut self.ctx, criterion, sparsity, allocation, round_to.max(1))?;
        let graph = apply(&self.ctx.prep.graph, &self.ctx.prep.analysis, &sel)?;
        let (mut removed, mut total) = (0usize, 0usize);
        for g in self.ctx.prep.analysis.prunable() {
            total += g.channels();
            removed += (g.units() - sel.get(&g.id).map_or(g.units(), Vec::len)) * g.unit();
        }
        Ok(Child {
            widths: widths(&self.ctx.prep, &sel),
            channels_removed: removed as f64 / total.max(1) as f64,
            graph,
        })
    }
}

impl PruneSession {
    /// Refits the layers of `child` that read pruned units by least squares on the session's
    /// calibration examples ([`super::reconstruct`]).
    pub fn reconstruct(
        &mut self,
        child: &mut Child,
    ) -> anyhow::Result<super::reconstruct::ReconstructReport> {
        if self.ctx.calib.is_empty() {
            calibrate(&mut self.ctx)?;
        }
        super::reconstruct::reconstruct(
            &self.ctx.prep.graph,
            &mut child.graph,
            &self.ctx.calib,
            1e-3,
        )
    }
}

/// Parent and child latency in tract, side by side.
#[derive(Debug, Clone)]
pub struct Speed {
    /// The parent's timings.
    pub parent: Timing,
    /// The child's timings.
    pub child: Timing,
    /// Parent median / child median.
    pub speedup: f64,
    /// The child is not faster than the parent (speedup ≤ 1): said, never hidden.
    pub not_faster: bool,
}

/// Times `parent` and `child` alternately for `seconds` (3 warm-up runs each) on inputs of
/// the given types and dims.
pub fn speed(
    parent: &Graph,
    child: &Graph,
    timing: &[(candle_core::DType, Vec<usize>)],
    seconds: f64,
) -> anyhow::Result<Speed> {
    let (p, c) = side_by_side(parent, child, timing, 3, Duration::from_secs_f64(seconds))?;
    let speedup = p.p50_ms / c.p50_ms;
    Ok(Speed { parent: p, child: c, speedup, not_faster: speedup.is_nan() || speedup <= 1.0 })
}

fn widths(prep: &Prepared, sel: &Selection) -> Vec<String> {
    prep.analysis
        .prunable()
        .map(|g| {
            let kept = sel.get(&g.id).map_or(g.units(), Vec::len);
            format!("{} {} {kept}/{}", g.producers().join("+"), g.kind, g.units())
        })
        .collect()
}

/// Draws the calibration batches (gradient and activation statistics) from the training part.
fn calibrate(ctx: &mut Ctx) -> anyhow::Result<()> {
    let bs = if ctx.data.name() == "photos" { 4 } else { 32 };
    ctx.calib = ctx.data.batches(
        &ctx.prep.graph,
        Part::Train,
        bs,
        Some(ctx.args.calibration),
        Some(ctx.args.seed),
    )?;
    Ok(())
}

/// Scores of `c`, computed once.
fn scores(ctx: &mut Ctx, c: Criterion) -> anyhow::Result<Scores> {
    if let Some(s) = ctx.scores.get(&c) {
        return Ok(s.clone());
    }
    if c != Criterion::Magnitude && ctx.calib.is_empty() {
        calibrate(ctx)?;
    }
    let t = Instant::now();
    let s = match c {
        Criterion::Magnitude => importance::magnitude(&ctx.prep)?,
        Criterion::Gradient => importance::gradient(&ctx.prep, &ctx.calib)?,
        Criterion::Activation => {
            importance::activation(&ctx.prep, &ctx.calib, ctx.args.activation_metric)?
        }
        Criterion::Combined | Criterion::Auto => {
            let m = scores(ctx, Criterion::Magnitude)?;
            let g = scores(ctx, Criterion::Gradient)?;
            let a = scores(ctx, Criterion::Activation)?;
            let w = ctx.args.weights;
            importance::combine(&[(w[0], &m), (w[1], &g), (w[2], &a)])
        }
    };
    log(format_args!("  scored units by {c} in {:.1} s", t.elapsed().as_secs_f64()));
    ctx.scores.insert(c, s.clone());
    Ok(s)
}

fn selection(ctx: &mut Ctx, c: Criterion, sparsity: f64) -> anyhow::Result<Selection> {
    let (allocation, round_to) = (ctx.args.allocation, ctx.round_to);
    selection_with(ctx, c, sparsity, allocation, round_to)
}

fn selection_with(
    ctx: &mut Ctx,
    c: Criterion,
    sparsity: f64,
    allocation: Allocation,
    round_to: usize,
) -> anyhow::Result<Selection> {
    let s = scores(ctx, c)?;
    let keep = match allocation {
        Allocation::Uniform => alloc::uniform(&ctx.prep.analysis, sparsity, round_to),
        Allocation::Global => alloc::global(&ctx.prep.analysis, &s, sparsity, round_to),
        Allocation::Sensitivity => {
            let key = (c, sparsity.to_bits(), round_to);
            if !ctx.sensitivity.contains_key(&key) {
                let measured = sensitivities(ctx, &s, sparsity, round_to)?;
                ctx.sensitivity.insert(key, measured);
            }
            alloc::sensitivity(&ctx.prep.analysis, &ctx.sensitivity[&key], sparsity, round_to)
        }
    };
    Ok(alloc::select(&s, &keep))
}

/// Validation score lost, and MACs saved, when each group alone is pruned at `sparsity`.
fn sensitivities(
    ctx: &mut Ctx,
    s: &Scores,
    sparsity: f64,
    round_to: usize,
) -> anyhow::Result<BTreeMap<usize, alloc::Sensitivity>> {
    let limit = Some(ctx.args.validation.min(256));
    let base = quality(ctx, &ctx.prep.graph, Part::Validation, limit)?.score();
    let dims = batch1_dims(ctx);
    let macs0 = macs(&ctx.prep.graph, &dims)?.max(1) as f64;
    let all = alloc::uniform(&ctx.prep.analysis, sparsity, round_to);
    let mut out = BTreeMap::new();
    for (gid, keep) in all {
        let one = BTreeMap::from([(gid, keep)]);
        let sel = alloc::select(s, &one);
        let child = apply(&ctx.prep.graph, &ctx.prep.analysis, &sel)?;
        let q = quality(ctx, &child, Part::Validation, limit)?.score();
        let saved = 1.0 - macs(&child, &dims)? as f64 / macs0;
        out.insert(gid, alloc::Sensitivity { loss: (base - q).max(0.0), macs_saved: saved });
    }
    log(format_args!("  measured the sensitivity of {} groups", out.len()));
    Ok(out)
}

/// The true inputs with their batch-1 timing dims.
fn batch1_dims(ctx: &Ctx) -> Vec<(String, Vec<usize>)> {
    hone_learn::eval::tract::true_inputs(&ctx.parent)
        .into_iter()
        .zip(ctx.timing.iter().map(|(_, d)| d.clone()))
        .collect()
}

/// Accuracy (labelled data) and agreement with the parent, on a part.
#[derive(Debug, Clone)]
struct Quality {
    accuracy: Option<f64>,
    agreement: Option<f64>,
    cosine: Option<f64>,
    examples: usize,
}

impl Quality {
    /// Accuracy, or agreement with ties broken by the output cosine.
    fn score(&self) -> f64 {
        self.accuracy
            .or(self.agreement.map(|a| a + 1e-3 * self.cosine.unwrap_or(0.0)))
            .unwrap_or(0.0)
    }
}

fn quality(ctx: &Ctx, model: &Graph, part: Part, limit: Option<usize>) -> anyhow::Result<Quality> {
    let bs = if ctx.data.name() == "photos" { 8 } else { 100 };
    if ctx.data.labelled() {
        let acc = hone_learn::eval::accuracy(model, &ctx.data, part, bs, limit)?;
        Ok(Quality {
            accuracy: Some(acc.value()),
            agreement: None,
            cosine: None,
            examples: acc.total,
        })
    } else {
        let f = hone_learn::eval::fidelity(model, &ctx.parent, &ctx.data, part, bs, limit, None)?;
        Ok(Quality {
            accuracy: None,
            agreement: Some(f.top1_agreement),
            cosine: Some(f.mean_cosine),
            examples: f.examples,
        })
    }
}
