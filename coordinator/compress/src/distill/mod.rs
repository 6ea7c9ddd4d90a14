//! Knowledge distillation: a student a fraction of the teacher's size learns from the teacher's
//! outputs (and, optionally, its hidden states, attention maps and attributions), through the
//! candle executor, and is written as ONNX that tract runs.
//!
//! - [`blocks`]: the teacher's layers, found from node names, and students keeping some of them;
//! - [`train`]: one stage (teacher → student), its losses and its checkpoints;
//! - [`attribution`]: integrated-gradients attribution (AD-KD);
//! - [`lm`]: generative models (a Llama from `llm import`) on the SOTU corpus, against the
//!   teacher's cached top-k;
//! - this module: making the student (fewer layers, narrower through Hone's own pruning, or the
//!   user's ONNX), the chain through teacher assistants (TAKD), and the evaluation: sizes,
//!   accuracy and agreement by tract, and tract latency of teacher and student side by side.
//!
//! Teacher assistants ([`Assistants::Auto`]): a student whose transformer weights are more than
//! [`MAX_GAP`] times smaller than the teacher's learns through `n = ⌈log(gap) / log(MAX_GAP)⌉ − 1`
//! assistants, spaced geometrically: assistant `i` of `n` keeps `round(L_t·(L_s/L_t)^(i/(n+1)))`
//! layers and `F_s^(i/(n+1))` of the width the student keeps. The total steps are split evenly
//! over the `n + 1` stages, so a chain costs the same number of steps as direct distillation;
//! the student starts from the same teacher layers either way, and only its teacher differs.

pub mod attribution;
pub mod blocks;
pub mod lm;
pub mod scale;
pub mod train;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hone_common::shapes::InputShapes;
use hone_graph::Graph;
use hone_learn::data::Part;
use hone_learn::eval::{DataSpec, EvalData, fidelity};
use hone_learn::train::kd::KdLoss;
use serde::{Deserialize, Serialize};

use crate::prune::alloc::Allocation;
use crate::prune::importance::Criterion;
use crate::prune::latency::{side_by_side, timing_inputs};
use crate::prune::run::{PruneConfig, PruneSession};
use crate::prune::{param_count, params_no_embeddings};

use attribution::{AttributionGradient, Attributions};
use blocks::{Blocks, keep_blocks, spread};
use train::{StageConfig, StageSummary, train_stage};

/// The largest size ratio one stage bridges before [`Assistants::Auto`] adds an assistant.
pub const MAX_GAP: f64 = 2.5;

/// Which layers a student keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layers {
    /// This many, spread over the teacher's ([`blocks::spread`]).
    Count(usize),
    /// These teacher blocks.
    Indices(Vec<usize>),
}

impl std::str::FromStr for Layers {
    type Err = String;

    /// `K` (a count) or `I,J,…` (teacher block indices; `0,` for just block 0).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains(',') {
            s.split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| p.trim().parse::<usize>().map_err(|e| format!("`{p}`: {e}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Layers::Indices)
        } else {
            s.trim().parse::<usize>().map(Layers::Count).map_err(|e| format!("`{s}`: {e}"))
        }
    }
}

/// The student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StudentSpec {
    /// The user's own ONNX student (its inputs and outputs must match the teacher's).
    Model(PathBuf),
    /// Made from the teacher: some of its layers and/or a fraction of its width.
    Derived {
        /// Layers kept (`None`: all).
        layers: Option<Layers>,
        /// Fraction of the prunable width kept (heads, FFN neurons; `None`: all), through
        /// Hone's structured pruning with the magnitude criterion.
        width: Option<f64>,
    },
}

/// Teacher assistants between teacher and student.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Assistants {
    /// As many as the size gap calls for (see the module documentation).
    Auto,
    /// Exactly this many (0: direct distillation).
    Count(usize),
}

impl std::str::FromStr for Assistants {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Assistants::Auto),
            n => n.parse().map(Assistants::Count).map_err(|_| format!("`{s}`: auto or a number")),
        }
    }
}

/// Attribution settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttributionConfig {
    /// Weight of the attribution loss.
    pub weight: f64,
    /// Teacher integration steps.
    pub steps: usize,
    /// Student integration steps.
    pub student_steps: usize,
    /// Top classes attributed per example.
    pub classes: usize,
    /// How the loss's gradient is taken.
    #[serde(default)]
    pub gradient: AttributionGradient,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            weight: 1.0,
            steps: 16,
            student_steps: 1,
            classes: 1,
            gradient: AttributionGradient::FirstOrder,
        }
    }
}

/// Settings of a distillation (`coordinator distill`, and the pipeline's `distill` method).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillConfig {
    /// The teacher (ONNX).
    pub teacher: PathBuf,
    /// The student.
    pub student: StudentSpec,
    /// Data (a built-in name or a path, as `--data` everywhere).
    pub data: String,
    /// The output divergence.
    pub loss: KdLoss,
    /// Weight of hard-label cross-entropy.
    pub ce_weight: f64,
    /// Weight of the hidden-state loss.
    pub hidden_weight: f64,
    /// Weight of the attention-map loss.
    pub attention_weight: f64,
    /// Attribution (AD-KD), when on.
    pub attribution: Option<AttributionConfig>,
    /// Teacher assistants.
    pub assistants: Assistants,
    /// Optimizer steps in all (split over the stages).
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Seed.
    pub seed: u64,
    /// Training examples drawn from (`None`: all).
    pub train_limit: Option<usize>,
    /// Test examples evaluated (`None`: all).
    pub test_limit: Option<usize>,
    /// Sequence length of text models for the latency figure.
    pub seq_len: usize,
    /// Seconds of side-by-side latency measurement.
    pub latency_seconds: f64,
    /// Shapes of inputs with dynamic dims.
    pub inputs: InputShapes,
    /// Kept widths are multiples of this.
    pub round_to: usize,
    /// Where the student is written.
    pub out: PathBuf,
    /// Checkpoints and caches (resumable).
    pub work_dir: PathBuf,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
}

impl DistillConfig {
    /// The command line's defaults for a teacher, data and output.
    pub fn new(teacher: PathBuf, data: String, out: PathBuf) -> DistillConfig {
        let work_dir = out.with_extension("distill");
        DistillConfig {
            teacher,
            student: StudentSpec::Derived { layers: None, width: Some(0.5) },
            data,
            loss: KdLoss {
                temperature: 2.0,
                ..KdLoss::new(hone_learn::train::kd::Divergence::Fkl)
            },
            ce_weight: 0.5,
            hidden_weight: 0.0,
            attention_weight: 0.0,
            attribution: None,
            assistants: Assistants::Count(0),
            steps: 300,
            batch_size: 32,
            lr: 1e-4,
            seed: 0,
            train_limit: None,
            test_limit: None,
            seq_len: 128,
            latency_seconds: 6.0,
            inputs: InputShapes::default(),
            round_to: 8,
            out,
            work_dir,
            checkpoint_every: 50,
        }
    }
}

/// One model's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelFigures {
    /// Float parameters, embeddings included.
    pub params: usize,
    /// Float parameters outside embedding tables.
    pub params_no_embeddings: usize,
    /// Layers (blocks) found, when the model has named ones.
    pub layers: Option<usize>,
    /// Test accuracy by tract (labelled data).
    pub accuracy: Option<f64>,
    /// tract median latency (batch 1), measured side by side with the other model.
    pub latency_ms: f64,
}

/// One stage of the chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageReport {
    /// `teacher`, `assistant 1`, … → `student`.
    pub from: String,
    /// What is trained.
    pub to: String,
    /// Its size.
    pub params: usize,
    /// The training run.
    pub summary: StageSummary,
    /// Its test accuracy by tract after the stage.
    pub accuracy: Option<f64>,
}

/// What a distillation did (`--json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillReport {
    /// The student written.
    pub out: PathBuf,
    /// The teacher.
    pub teacher: ModelFigures,
    /// The student.
    pub student: ModelFigures,
    /// Teacher params / student params.
    pub size_ratio: f64,
    /// Teacher latency / student latency (side by side, one run).
    pub speedup: f64,
    /// Student accuracy / teacher accuracy.
    pub accuracy_retained: Option<f64>,
    /// Share of test examples where student and teacher choose the same class.
    pub agreement: f64,
    /// Mean cosine similarity of student and teacher output rows.
    pub cosine: f64,
    /// Test examples evaluated.
    pub test_examples: usize,
    /// The student's accuracy before training (as made from the teacher).
    pub accuracy_before: Option<f64>,
    /// Stages (one without assistants).
    pub stages: Vec<StageReport>,
    /// Teacher attribution: seconds spent and examples cached.
    pub attribution: Option<(f64, usize)>,
    /// Seconds in all.
    pub seconds: f64,
    /// Peak resident memory, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Sequence length of the latency figure (text models).
    pub seq_len: usize,
    /// The CPU the latency was measured on.
    pub cpu: String,
    /// The settings.
    pub config: DistillConfig,
}

/// Makes a student from `teacher`: keeps the chosen layers, then cuts the width.
pub fn derive_student(
    teacher: &Graph,
    layers: Option<&Layers>,
    width: Option<f64>,
    data: &EvalData,
    cfg: &DistillConfig,
    scratch: &Path,
) -> anyhow::Result<Graph> {
    let mut g = match layers {
        None => teacher.clone(),
        Some(l) => {
            let total = Blocks::find(teacher)?.len();
            let keep = match l {
                Layers::Count(k) => {
                    if *k == 0 || *k > total {
                        bail!("--student-layers {k}: the teacher has {total} layers");
                    }
                    spread(*k, total)
                }
                Layers::Indices(v) => v.clone(),
            };
            keep_blocks(teacher, &keep)?
        }
    };
    if let Some(w) = width
        && w < 1.0
    {
        if w.is_nan() || w <= 0.0 {
            bail!("--student-width must be in (0, 1], got {w}");
        }
        std::fs::create_dir_all(scratch)?;
        let path = scratch.join("pre-width.onnx");
        g.save(&path)?;
        let config = PruneConfig {
            model: path.clone(),
            data: cfg.data.clone(),
            criterion: Criterion::Magnitude,
            inputs: cfg.inputs.clone(),
            round_to: Some(cfg.round_to.max(1)),
            seed: cfg.seed,
            ..PruneConfig::defaults()
        };
        let mut session = PruneSession::open(config, data.clone())?;
        g = session
            .child(Criterion::Magnitude, 1.0 - w, Allocation::Uniform, cfg.round_to.max(1))?
            .graph;
        let _ = std::fs::remove_file(&path);
    }
    Ok(g)
}

/// The assistants' (layers, width) between teacher and student.
pub fn plan_assistants(
    assistants: Assistants,
    teacher_layers: usize,
    student_layers: usize,
    student_width: f64,
    gap: f64,
) -> Vec<(usize, f64)> {
    let n = match assistants {
        Assistants::Count(n) => n,
        Assistants::Auto => {
            if gap <= MAX_GAP {
                0
            } else {
                ((gap.ln() / MAX_GAP.ln()).ceil() as usize).saturating_sub(1)
            }
        }
    };
    (1..=n)
        .map(|i| {
            let f = i as f64 / (n + 1) as f64;
            let layers = (teacher_layers as f64
                * (student_layers as f64 / teacher_layers as f64).powf(f))
            .round() as usize;
            (layers.clamp(student_layers, teacher_layers), student_width.powf(f))
        })
        .collect()
}

fn accuracy_of(
    model: &Graph,
    data: &EvalData,
    limit: Option<usize>,
) -> anyhow::Result<Option<f64>> {
    if !data.labelled() {
        return Ok(None);
    }
    Ok(Some(hone_learn::eval::accuracy(model, data, Part::Test, 64, limit)?.value()))
}

/// Runs a whole distillation: makes the student, trains it through any assistants, writes it
/// (gated by tract) and measures both models.
pub fn distill(cfg: &DistillConfig, progress: &dyn Fn(&str)) -> anyhow::Result<DistillReport> {
    let data = EvalData::open(&DataSpec::parse(&cfg.data)?)?;
    distill_on(cfg, &data, progress)
}

/// [`distill`] on data already opened (`cfg.data` is then only recorded).
pub fn distill_on(
    cfg: &DistillConfig,
    data: &EvalData,
    progress: &dyn Fn(&str),
) -> anyhow::Result<DistillReport> {
    let started = Instant::now();
    let teacher = Graph::load(&cfg.teacher)
        .with_context(|| format!("loading the teacher {}", cfg.teacher.display()))?;
    data.check(&teacher).context("the data does not fit the teacher")?;
    std::fs::create_dir_all(&cfg.work_dir)
        .with_context(|| format!("creating {}", cfg.work_dir.display()))?;
    let teacher_layers = Blocks::find(&teacher).ok().map(|b| b.len());

    // The student, as made (kept in the work folder, so a resumed run starts from the same one).
    let made = cfg.work_dir.join("student-initial.onnx");
    let (mut student, student_layers, width) = match &cfg.student {
        StudentSpec::Model(p) => {
            let g =
                Graph::load(p).with_context(|| format!("loading the student {}", p.display()))?;
            let layers = Blocks::find(&g).ok().map(|b| b.len());
            (g, layers, 1.0)
        }
        StudentSpec::Derived { layers, width } => {
            let g = if made.exists() {
                Graph::load(&made)?
            } else {
                progress("making the student from the teacher");
                let g =
                    derive_student(&teacher, layers.as_ref(), *width, data, cfg, &cfg.work_dir)?;
                g.save(&made)?;
                g
            };
            let l = Blocks::find(&g).ok().map(|b| b.len());
            (g, l, width.unwrap_or(1.0))
        }
    };
    data.check(&student).context("the data does not fit the student")?;
    let accuracy_before = accuracy_of(&student, data, cfg.test_limit)?;

    // Teacher assistants.
    let gap = params_no_embeddings(&teacher) as f64 / params_no_embeddings(&student).max(1) as f64;
    let plan = match (teacher_layers, student_layers, &cfg.student) {
        (Some(tl), Some(sl), StudentSpec::Derived { .. }) => {
            plan_assistants(cfg.assistants, tl, sl, width, gap)
        }
        _ if cfg.assistants == Assistants::Count(0) || cfg.assistants == Assistants::Auto => {
            Vec::new()
        }
        _ => bail!(
            "teacher assistants are made from the teacher's layers: the student must be made from the teacher too"
        ),
    };
    let stages = plan.len() + 1;
    let per_stage = (cfg.steps / stages).max(1);
    let mut attributions = match &cfg.attribution {
        Some(a) => Some(Attributions::open(
            Some(cfg.work_dir.join("attributions.json")),
            a.steps,
            a.classes,
        )?),
        None => None,
    };
    let stage_cfg = |steps: usize, seed: u64| StageConfig {
        loss: cfg.loss,
        ce_weight: cfg.ce_weight,
        hidden_weight: cfg.hidden_weight,
        attention_weight: cfg.attention_weight,
        attribution_weight: cfg.attribution.map_or(0.0, |a| a.weight),
        attribution_student_steps: cfg.attribution.map_or(1, |a| a.student_steps),
        attribution_gradient: cfg
            .attribution
            .map_or(AttributionGradient::FirstOrder, |a| a.gradient),
        steps,
        batch_size: cfg.batch_size,
        lr: cfg.lr,
        seed,
        train_limit: cfg.train_limit,
        checkpoint_every: cfg.checkpoint_every,
    };
    let mut reports = Vec::new();
    let mut current_teacher = teacher.clone();
    let mut current_name = "teacher".to_owned();
    for (i, &(layers, w)) in plan.iter().enumerate() {
        let name = format!("assistant {}", i + 1);
        let path = cfg.work_dir.join(format!("assistant-{}-initial.onnx", i + 1));
        let mut assistant = if path.exists() {
            Graph::load(&path)?
        } else {
            progress(&format!("making {name}: {layers} layers, width {w:.2}"));
            let g = derive_student(
                &teacher,
                Some(&Layers::Count(layers)),
                Some(w),
                data,
                cfg,
                &cfg.work_dir,
            )?;
            g.save(&path)?;
            g
        };
        progress(&format!("stage {}/{stages}: {current_name} → {name}", i + 1));
        let dir = cfg.work_dir.join(format!("stage-{}", i + 1));
        // Attribution targets belong to the original teacher; assistants learn without them.
        let mut sc = stage_cfg(per_stage, cfg.seed + i as u64);
        sc.attribution_weight = 0.0;
        let summary = train_stage(&current_teacher, &mut assistant, data, &sc, &dir, None, &|m| {
            progress(&format!("  {name}: {m}"))
        })?;
        let accuracy = accuracy_of(&assistant, data, cfg.test_limit)?;
        reports.push(StageReport {
            from: current_name.clone(),
            to: name.clone(),
            params: param_count(&assistant),
            summary,
            accuracy,
        });
        current_teacher = assistant;
        current_name = name;
    }
    progress(&format!("stage {stages}/{stages}: {current_name} → student"));
    let dir = cfg.work_dir.join(format!("stage-{stages}"));
    let steps = cfg.steps.saturating_sub(per_stage * plan.len()).max(1);
    let summary = train_stage(
        &current_teacher,
        &mut student,
        data,
        &stage_cfg(steps, cfg.seed + plan.len() as u64),
        &dir,
        attributions.as_mut(),
        &|m| progress(&format!("  student: {m}")),
    )?;
    if let Some(a) = attributions.as_mut() {
        a.save()?;
    }
    let accuracy = accuracy_of(&student, data, cfg.test_limit)?;
    reports.push(StageReport {
        from: current_name,
        to: "student".into(),
        params: param_count(&student),
        summary,
        accuracy,
    });

    if let Some(parent) = cfg.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    student.save_gated(&cfg.out, &cfg.inputs).context("writing the student")?;
    progress("measuring teacher and student side by side");
    let fid = fidelity(&student, &teacher, data, Part::Test, 64, cfg.test_limit, None)?;
    let timing = timing_inputs(&teacher, cfg.seq_len, &cfg.inputs);
    let (t_time, s_time) =
        side_by_side(&teacher, &student, &timing, 3, Duration::from_secs_f64(cfg.latency_seconds))?;
    let teacher_fig = ModelFigures {
        params: param_count(&teacher),
        params_no_embeddings: params_no_embeddings(&teacher),
        layers: teacher_layers,
        accuracy: fid.reference_accuracy.map(|a| a.value()),
        latency_ms: t_time.p50_ms,
    };
    let student_fig = ModelFigures {
        params: param_count(&student),
        params_no_embeddings: params_no_embeddings(&student),
        layers: Blocks::find(&student).ok().map(|b| b.len()),
        accuracy: fid.model_accuracy.map(|a| a.value()),
        latency_ms: s_time.p50_ms,
    };
    Ok(DistillReport {
        out: cfg.out.clone(),
        size_ratio: teacher_fig.params as f64 / student_fig.params.max(1) as f64,
        speedup: t_time.p50_ms / s_time.p50_ms,
        accuracy_retained: match (student_fig.accuracy, teacher_fig.accuracy) {
            (Some(s), Some(t)) if t > 0.0 => Some(s / t),
            _ => None,
        },
        agreement: fid.top1_agreement,
        cosine: fid.mean_cosine,
        test_examples: fid.examples,
        accuracy_before,
        teacher: teacher_fig,
        student: student_fig,
        stages: reports,
        attribution: attributions.as_ref().map(|a| (a.seconds, a.len())),
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: hone_learn::train::fit::peak_rss_bytes(),
        seq_len: cfg.seq_len,
        cpu: crate::cpu_name(),
        config: cfg.clone(),
    })
}

#[cfg(test)]
mod tests;
