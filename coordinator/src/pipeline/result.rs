//! What a pipeline decided: per device class, the parent's figures, the candidate table the
//! choice was made from, the Pareto front, the winner and the reason. This is the JSON of
//! `coordinator pipeline show --json`, of `GET /api/v1/pipelines/{id}` (`result`), and the input
//! of the HTML report ([`super::report`]).

use serde::{Deserialize, Serialize};

/// The pipeline's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PipelineResult {
    /// Pipeline id.
    pub pipeline: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Stage reached: `parent`, `candidates`, `measure`, `decide`, `done`.
    pub stage: String,
    /// Why the pipeline failed, when it did.
    pub error: Option<String>,
    /// The parent model (registry id) and its name.
    pub model: String,
    /// The parent's name.
    pub model_name: String,
    /// The data the candidates were validated on (a built-in name or a path).
    pub data: String,
    /// `accuracy` (labelled data: `--max-accuracy-drop`) or `fidelity` (top-1 agreement with the
    /// parent: `--min-fidelity`).
    pub quality_metric: String,
    /// The objective's latency statistic: `p50`, `p90` or `p99`.
    pub objective: String,
    /// The constraints as given (accuracy drop or fidelity floor, latency and memory budgets).
    pub constraints: Constraints,
    /// Guided by the latency predictor, or every candidate measured (`--exhaustive`).
    pub exhaustive: bool,
    /// Per device class.
    pub classes: Vec<ClassResult>,
    /// Device measurements (benchmark jobs with a stored result) spent, all classes.
    pub device_measurements: usize,
    /// Seconds from creation to the end (or now).
    pub wall_seconds: f64,
    /// The HTML report, when one was written.
    pub report: Option<String>,
    /// The host the coordinator ran on (CPU model), for the figures' provenance.
    pub coordinator_cpu: String,
    /// Each class's winner beside GPU measurements of the parent imported with
    /// `coordinator results import` (empty when there are none): latency, joules and cost per
    /// million inferences, each line with its provenance.
    #[serde(default)]
    pub gpu_comparison: Vec<crate::compare::Line>,
    /// The DVC data set the candidates were validated on, `{repo, path, rev, md5}` (`None` for
    /// other data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<hone_learn::data::dvc::DatasetIdentity>,
}

/// The constraints of a pipeline.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Constraints {
    /// Largest accepted accuracy loss, percentage points (labelled data).
    pub max_accuracy_drop: Option<f64>,
    /// Smallest accepted top-1 agreement with the parent, 0..1.
    pub min_fidelity: Option<f64>,
    /// Latency budget (of the objective's statistic), ms.
    pub latency_budget_ms: Option<f64>,
    /// Peak RSS budget, MiB (besides each class's own memory).
    pub memory_budget_mib: Option<f64>,
}

/// One device class's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClassResult {
    /// The class: the profile its agents run under.
    pub class: String,
    /// `emulated` (a profile emulated on another host), `native` (measured on the board),
    /// `unthrottled` (profile asked for, host could not enforce it) or `mixed`.
    pub measurement: String,
    /// How the figures were measured, in words (profile, emulation, mode, devices).
    pub how: String,
    /// The devices that measured this class.
    pub devices: Vec<String>,
    /// The class's memory (the profile's `memory_available_mib`).
    pub memory_mib: Option<f64>,
    /// The parent on this class.
    pub parent: Option<Figures>,
    /// The chosen candidate, if any met the constraints.
    pub winner: Option<Figures>,
    /// Why the winner was chosen, or why none was ("no candidate meets ...").
    pub reason: String,
    /// When no candidate meets the constraints: the closest ones (model ids), best first.
    pub closest: Vec<String>,
    /// Every candidate of this class, the table the choice was made from.
    pub candidates: Vec<CandidateRow>,
    /// Device measurements spent on this class (parent included).
    pub device_measurements: usize,
    /// The latency predictor of this class.
    pub predictor: Option<PredictorReport>,
}

/// A model's figures on a class: what the winner and parent lines show.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Registry id.
    pub model: String,
    /// Registry name.
    pub name: String,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// p90, ms.
    pub p90_ms: Option<f64>,
    /// p99, ms.
    pub p99_ms: Option<f64>,
    /// Peak RSS, bytes.
    pub peak_rss_bytes: Option<i64>,
    /// Load time, ms.
    pub load_ms: Option<f64>,
    /// Accuracy on the validation part, 0..1 (labelled data).
    pub accuracy: Option<f64>,
    /// Top-1 agreement with the parent, 0..1 (the parent's is 1).
    pub fidelity: Option<f64>,
    /// Mean output cosine with the parent.
    pub cosine: Option<f64>,
    /// A language model's perplexity on the validation part.
    #[serde(default)]
    pub perplexity: Option<f64>,
    /// The runtime that measured it (`tract`, `ort`).
    #[serde(default)]
    pub runtime: Option<String>,
    /// Its precision (`f32`, `int8`).
    #[serde(default)]
    pub precision: Option<String>,
}

/// One candidate of a class.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CandidateRow {
    /// Candidate id (pipeline-scoped).
    pub id: String,
    /// Registry id of its model (absent when it was never registered).
    pub model: Option<String>,
    /// Method name (`prune`, ...).
    pub method: String,
    /// The method's settings.
    pub settings: serde_json::Value,
    /// Runtime it targets and was measured in (`tract`, `ort`).
    pub runtime: String,
    /// Precision (`f32`, `int8`).
    pub precision: String,
    /// Float parameters.
    pub params: Option<u64>,
    /// Multiply-accumulates of one inference.
    pub macs: Option<u64>,
    /// Validation figures.
    pub accuracy: Option<f64>,
    /// Top-1 agreement with the parent.
    pub fidelity: Option<f64>,
    /// Mean output cosine with the parent.
    pub cosine: Option<f64>,
    /// A language model's perplexity on the validation part.
    #[serde(default)]
    pub perplexity: Option<f64>,
    /// `rejected` (over the accuracy budget: no device time spent), `failed` (the method or the
    /// gate failed), `skipped` (the search did not spend device time on it), `measured`,
    /// `unmeasured` (its jobs failed).
    pub status: String,
    /// Why it was rejected, skipped or failed.
    pub note: Option<String>,
    /// The predictor's latency (objective statistic) before it was measured, ms.
    pub predicted_ms: Option<f64>,
    /// Measured figures.
    pub p50_ms: Option<f64>,
    /// p90, ms.
    pub p90_ms: Option<f64>,
    /// p99, ms.
    pub p99_ms: Option<f64>,
    /// Peak RSS, bytes.
    pub peak_rss_bytes: Option<i64>,
    /// Load time, ms.
    pub load_ms: Option<f64>,
    /// On this class's Pareto front (latency against quality).
    pub pareto: bool,
    /// The winner.
    pub winner: bool,
}

/// How well a class's latency predictor did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PredictorReport {
    /// How it started: `cold` (no earlier measurement of this class) or `warm (N points)`.
    pub start: String,
    /// Measurements it was fitted on at the end.
    pub trained_on: usize,
    /// Held-out measurements it was scored on (measured, never learned from when predicted).
    pub held_out: usize,
    /// Share of held-out predictions within ±10 % of the measurement.
    pub within_10pct: Option<f64>,
    /// Mean absolute error, percent of the measurement.
    pub mean_abs_error_pct: Option<f64>,
}
