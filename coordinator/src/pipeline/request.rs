//! What a user asks for (`coordinator compress`, `POST /api/v1/pipelines`), and its checks.

use hone_common::bench::BenchSpec;
use hone_common::shapes::InputShapes;
use serde::{Deserialize, Serialize};

/// The latency statistic the objective and the latency budget use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Statistic {
    /// Median.
    #[default]
    P50,
    /// 90th percentile.
    P90,
    /// 99th percentile.
    P99,
}

impl Statistic {
    /// `p50`, `p90`, `p99`.
    pub fn name(self) -> &'static str {
        match self {
            Statistic::P50 => "p50",
            Statistic::P90 => "p90",
            Statistic::P99 => "p99",
        }
    }

    /// The statistic of a measurement.
    pub fn of(self, l: &hone_common::bench::LatencyStats) -> f64 {
        match self {
            Statistic::P50 => l.p50_ms,
            Statistic::P90 => l.p90_ms,
            Statistic::P99 => l.p99_ms,
        }
    }
}

impl std::str::FromStr for Statistic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "p50" => Ok(Statistic::P50),
            "p90" => Ok(Statistic::P90),
            "p99" => Ok(Statistic::P99),
            other => Err(format!("unknown objective `{other}`: p50, p90 or p99")),
        }
    }
}

/// A pipeline as requested.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PipelineRequest {
    /// Client-chosen id: creating twice with it returns the first pipeline.
    #[serde(default)]
    pub id: Option<String>,
    /// The parent: a registered model (id, name or digest prefix).
    pub model: String,
    /// The data: a built-in name or a path on the coordinator (see docs/data.md), as a spec
    /// object or in its compact text form (`photos`, `strips,size=48x192,mean=0.5,std=0.5`).
    #[serde(deserialize_with = "data_spec")]
    pub data: hone_learn::eval::DataSpec,
    /// Device classes: profile names (`rpi4`) or `profile:rpi4`.
    pub devices: Vec<String>,
    /// Largest accepted accuracy loss, percentage points (labelled data).
    #[serde(default)]
    pub max_accuracy_drop: Option<f64>,
    /// Smallest accepted top-1 agreement with the parent (0..1).
    #[serde(default)]
    pub min_fidelity: Option<f64>,
    /// Latency budget, ms, of the objective's statistic: the winner is then the most accurate
    /// model within it. One budget for every class (a slower class needs a smaller model).
    #[serde(default)]
    pub latency_budget_ms: Option<f64>,
    /// Peak RSS budget, MiB, for every class (each class's own memory applies too).
    #[serde(default)]
    pub memory_budget_mib: Option<f64>,
    /// The latency statistic of the objective.
    #[serde(default)]
    pub objective: Statistic,
    /// Device measurements per class for candidates (the parent's not counted). Default: a fifth
    /// of the valid candidates, at least one. Ignored with `exhaustive`.
    #[serde(default)]
    pub max_measurements: Option<usize>,
    /// Methods, by name (`prune`).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// The pruning grid (default: 2 criteria × 2 allocations × 4 sparsities).
    #[serde(default)]
    pub prune_grid: Option<hone_compress::PruneGrid>,
    /// The distillation students and budget (default: [`hone_compress::DistillMethod`]'s).
    #[serde(default)]
    pub distill: Option<hone_compress::DistillMethod>,
    /// The post-training settings (pass lists and runtimes; default:
    /// [`hone_compress::ptq::PtqMethod`]'s).
    #[serde(default)]
    pub ptq: Option<hone_compress::ptq::PtqMethod>,
    /// Measure every valid candidate (the reference the guided search is compared with).
    #[serde(default)]
    pub exhaustive: bool,
    /// Shapes for inputs whose declared dims are not fixed (default: those stored with the model).
    #[serde(default)]
    pub inputs: InputShapes,
    /// Benchmark settings of every device measurement.
    #[serde(default = "default_bench")]
    pub bench: BenchSpec,
    /// Time allowed for one device measurement (download + benchmark), ms.
    #[serde(default = "default_job_timeout_ms")]
    pub job_timeout_ms: u64,
    /// At most this many measurements at once, fleet-wide (1 when agents share one host).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Validation examples per candidate (default: the whole validation part; for a language
    /// model, positions of the validation addresses, default 1024).
    #[serde(default)]
    pub validation_limit: Option<usize>,
    /// Deploy each class's winner to the class's devices when the pipeline ends (`compress
    /// --deploy`): the rollout settings (`model`, `devices`, `pipeline` and the latency budget
    /// are filled in per class).
    #[serde(default)]
    pub deploy: Option<crate::deploy::DeployRequest>,
    /// The re-compression suggestion this pipeline runs, if any (linked back to it).
    #[serde(default)]
    pub from_suggestion: Option<String>,
    /// The MLflow experiment the pipeline is written to, when the coordinator writes to MLflow
    /// (default: the parent model's name).
    #[serde(default)]
    pub experiment: Option<String>,
}

/// A data spec given as an object or in its compact text form.
fn data_spec<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<hone_learn::eval::DataSpec, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Spec(Box<hone_learn::eval::DataSpec>),
    }
    match Either::deserialize(d)? {
        Either::Text(s) => hone_learn::eval::DataSpec::parse(&s).map_err(serde::de::Error::custom),
        Either::Spec(s) => Ok(*s),
    }
}

fn default_methods() -> Vec<String> {
    vec!["prune".into()]
}

/// The benchmark of a pipeline's device measurements: 3 warm-up runs, up to 30 measured, 3 s.
pub fn default_bench() -> BenchSpec {
    BenchSpec { warmup: 3, max_iterations: 30, max_time_ms: 3_000, ..BenchSpec::default() }
}

fn default_job_timeout_ms() -> u64 {
    180_000
}

impl PipelineRequest {
    /// The classes, `profile:` prefixes removed, duplicates dropped, in order.
    pub fn classes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for d in &self.devices {
            for part in d.split(',') {
                let c = part.trim();
                let c = c.strip_prefix("profile:").unwrap_or(c).to_owned();
                if !c.is_empty() && !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// Checks that need neither the database nor the data.
    pub fn check(&self) -> Result<(), String> {
        if let Some(id) = &self.id
            && (id.is_empty()
                || id.len() > 48
                || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err("pipeline id: 1-48 letters, digits, `-` or `_`".into());
        }
        if let Some(e) = &self.experiment
            && (e.trim().is_empty() || e.len() > 200 || e.chars().any(char::is_control))
        {
            return Err("MLflow experiment: 1-200 printable characters".into());
        }
        let classes = self.classes();
        if classes.is_empty() {
            return Err("give at least one device class (--devices profile:NAME,...)".into());
        }
        for c in &classes {
            if hone_firmware_profiles::find(c).is_none() {
                let known: Vec<String> =
                    hone_firmware_profiles::builtin().iter().map(|p| p.name.clone()).collect();
                return Err(format!(
                    "unknown device class `{c}`: a class is a device profile ({})",
                    known.join(", ")
                ));
            }
        }
        match (self.max_accuracy_drop, self.min_fidelity) {
            (None, None) => {
                return Err(
                    "give --max-accuracy-drop POINTS (labelled data) or --min-fidelity F".into()
                );
            }
            (Some(_), Some(_)) => {
                return Err("give one of --max-accuracy-drop and --min-fidelity, not both".into());
            }
            (Some(d), None) if !(0.0..=100.0).contains(&d) => {
                return Err(format!("--max-accuracy-drop is in percentage points, 0..100: {d}"));
            }
            (None, Some(f)) if !(0.0..=1.0).contains(&f) => {
                return Err(format!("--min-fidelity is a share, 0..1: {f}"));
            }
            _ => {}
        }
        if self.latency_budget_ms.is_some_and(|b| !(b > 0.0 && b.is_finite())) {
            return Err("--latency-budget-ms must be a positive number".into());
        }
        if self.memory_budget_mib.is_some_and(|b| !(b > 0.0 && b.is_finite())) {
            return Err("--memory-budget-mib must be a positive number".into());
        }
        if self.max_measurements == Some(0) {
            return Err("--max-measurements must be at least 1".into());
        }
        if self.methods.is_empty() {
            return Err("give at least one method (--methods prune)".into());
        }
        for m in &self.methods {
            if !hone_compress::method::METHOD_NAMES.contains(&m.as_str()) {
                return Err(format!(
                    "unknown compression method `{m}`: one of {}",
                    hone_compress::method::METHOD_NAMES.join(", ")
                ));
            }
        }
        if self.job_timeout_ms < 1_000 {
            return Err("job_timeout_ms must be at least 1000".into());
        }
        if self.bench.max_iterations == 0 {
            return Err("bench.max_iterations must be at least 1".into());
        }
        if self.max_parallel == Some(0) {
            return Err("max_parallel must be at least 1".into());
        }
        Ok(())
    }
}

/// Checks that `data` feeds `model` as the devices will run it: the model accepts the data
/// (names, types, ranks, fixed sizes), labels exist when an accuracy budget needs them, and float
/// inputs have the shapes the devices benchmark (`shapes`, beyond the batch axis), so validation
/// figures and device figures are about the same inputs.
pub fn check_data(
    model: &hone_graph::Graph,
    data: &hone_learn::eval::EvalData,
    shapes: &InputShapes,
    needs_labels: bool,
    describe: &str,
) -> anyhow::Result<()> {
    if hone_learn::llm::is_llm(model) {
        // A language model reads a corpus as tokens: scored by perplexity and next-token
        // agreement, measured on devices one decode step at a time.
        hone_learn::llm::card_of(model)?;
        if !matches!(data, hone_learn::eval::EvalData::Sotu(_)) {
            anyhow::bail!(
                "the model is a language model: its candidates are trained and judged on a text \
                 corpus (data `sotu`), not `{describe}`"
            );
        }
        if needs_labels {
            anyhow::bail!(
                "a language model has no accuracy: judge its candidates by next-token agreement \
                 (--min-fidelity)"
            );
        }
        return Ok(());
    }
    data.check(model)?;
    if needs_labels && !data.labelled() {
        anyhow::bail!(
            "the data `{describe}` has no labels, so there is no accuracy: use --min-fidelity"
        );
    }
    if data.part_len(hone_learn::data::Part::Validation) == 0 {
        anyhow::bail!("the data `{describe}` has no validation examples to judge candidates on");
    }
    data.check_measured_shapes(model, shapes)
        .map_err(|e| anyhow::anyhow!("{e} (data `{describe}`)"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> PipelineRequest {
        serde_json::from_value(serde_json::json!({
            "model": "m", "data": "fashion-mnist",
            "devices": ["profile:rpi4,x86-vm-2core", "rpi4"], "max_accuracy_drop": 1.0
        }))
        .unwrap()
    }

    #[test]
    fn classes_are_profiles_deduplicated_in_order() {
        let r = req();
        assert_eq!(r.classes(), ["rpi4", "x86-vm-2core"]);
        assert_eq!(r.check(), Ok(()));
        assert_eq!(r.methods, ["prune"]);
        assert_eq!(r.objective, Statistic::P50);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        type Change = fn(&mut PipelineRequest);
        let cases: [(Change, &str); 7] = [
            (|r| r.devices = vec!["profile:toaster".into()], "unknown device class `toaster`"),
            (|r| r.devices = vec![], "at least one device class"),
            (|r| r.max_accuracy_drop = None, "--max-accuracy-drop POINTS"),
            (|r| r.min_fidelity = Some(0.9), "not both"),
            (|r| r.methods = vec!["quantum".into()], "unknown compression method `quantum`"),
            (|r| r.id = Some("a/b".into()), "pipeline id"),
            (|r| r.max_measurements = Some(0), "at least 1"),
        ];
        for (change, want) in cases {
            let mut r = req();
            change(&mut r);
            let err = r.check().unwrap_err();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
    }
}
