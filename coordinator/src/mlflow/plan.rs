//! What Hone writes to MLflow, as values: the runs of a pipeline (the pipeline run and one
//! nested run per candidate), of a campaign, the `MLmodel` file of a registered version, and
//! the batches that keep each `runs/log-batch` call within MLflow's limits. Pure, so the
//! mapping is tested without a server; [`super::sync`] sends it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::db::{CampaignRow, ModelRow, PipelineRow, ResultRow};
use crate::pipeline::request::PipelineRequest;
use crate::pipeline::result::{CandidateRow, ClassResult, PipelineResult};

/// Most metrics in one `runs/log-batch` call.
pub const MAX_METRICS: usize = 1000;
/// Most parameters and tags together in one call.
pub const MAX_PARAMS_AND_TAGS: usize = 100;
/// Largest request body Hone sends in one call (MLflow's limit is 1 MB).
pub const MAX_BATCH_BYTES: usize = 900_000;
/// Longest parameter value MLflow keeps.
pub const MAX_PARAM_CHARS: usize = 6000;
/// Longest tag value MLflow keeps.
pub const MAX_TAG_CHARS: usize = 8000;

/// One metric point.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Name (`rpi4/p50_ms`).
    pub key: String,
    /// Value.
    pub value: f64,
    /// Unix ms: the time of the record in Hone's database, never "now", so a replay logs the
    /// same point again and MLflow keeps it once.
    pub timestamp: i64,
    /// Step (0).
    pub step: i64,
}

impl Metric {
    /// The JSON of `runs/log-batch`.
    pub fn to_json(&self) -> Value {
        json!({"key": self.key, "value": self.value, "timestamp": self.timestamp, "step": self.step})
    }
}

/// One `runs/log-batch` call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Parameters.
    pub params: Vec<(String, String)>,
    /// Metrics.
    pub metrics: Vec<Metric>,
    /// Tags.
    pub tags: Vec<(String, String)>,
}

/// A run to create (or find) and fill.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunPlan {
    /// Run name.
    pub name: String,
    /// Start, Unix ms.
    pub start_ms: i64,
    /// End, Unix ms, once over.
    pub end_ms: Option<i64>,
    /// `RUNNING`, `FINISHED`, `FAILED` or `KILLED`.
    pub status: &'static str,
    /// Tags (set at creation, and again on every sync).
    pub tags: Vec<(String, String)>,
    /// Parameters.
    pub params: Vec<(String, String)>,
    /// Metrics.
    pub metrics: Vec<Metric>,
}

impl RunPlan {
    fn tag(&mut self, k: &str, v: impl Into<String>) {
        self.tags.push((k.to_string(), clip(v.into(), MAX_TAG_CHARS)));
    }
    fn param(&mut self, k: &str, v: impl Into<String>) {
        let k = metric_key(k);
        if !self.params.iter().any(|(x, _)| *x == k) {
            self.params.push((k, clip(v.into(), MAX_PARAM_CHARS)));
        }
    }
    fn metric(&mut self, k: &str, v: Option<f64>, at: i64) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.metrics.push(Metric { key: metric_key(k), value: v, timestamp: at, step: 0 });
        }
    }

    /// The calls that log it, each within MLflow's limits.
    pub fn batches(&self) -> Vec<Batch> {
        batches(&self.params, &self.metrics, &self.tags)
    }
}

/// Splits parameters, metrics and tags into calls of at most [`MAX_METRICS`] metrics,
/// [`MAX_PARAMS_AND_TAGS`] parameters and tags, and about [`MAX_BATCH_BYTES`] of JSON.
pub fn batches(
    params: &[(String, String)],
    metrics: &[Metric],
    tags: &[(String, String)],
) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut cur = Batch::default();
    let mut bytes = 0usize;
    let pair_bytes = |k: &str, v: &str| k.len() + v.len() + 32;
    let full = |b: &Batch, bytes: usize, add: usize, metric: bool| {
        bytes + add > MAX_BATCH_BYTES
            || (metric && b.metrics.len() >= MAX_METRICS)
            || (!metric && b.params.len() + b.tags.len() >= MAX_PARAMS_AND_TAGS)
    };
    for (k, v) in params {
        let add = pair_bytes(k, v);
        if full(&cur, bytes, add, false) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        cur.params.push((k.clone(), v.clone()));
        bytes += add;
    }
    for (k, v) in tags {
        let add = pair_bytes(k, v);
        if full(&cur, bytes, add, false) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        cur.tags.push((k.clone(), v.clone()));
        bytes += add;
    }
    for m in metrics {
        let add = m.key.len() + 96;
        if full(&cur, bytes, add, true) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        cur.metrics.push(m.clone());
        bytes += add;
    }
    if !cur.params.is_empty() || !cur.metrics.is_empty() || !cur.tags.is_empty() {
        out.push(cur);
    }
    out
}

/// A metric or parameter name MLflow accepts: letters, digits, `_ - . /` and spaces; anything
/// else becomes `_`.
pub fn metric_key(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || "_-./ ".contains(c) { c } else { '_' })
        .collect()
}

/// A name usable as a registered model name and alias part: letters, digits, `_ - .`.
pub fn registry_name(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || "_-.".contains(c) { c } else { '-' })
        .collect()
}

fn clip(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut t: String = s.chars().take(max - 1).collect();
    t.push('…');
    t
}

fn opt(x: Option<f64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The end time of a pipeline's records: its end, else its last change.
fn stamp(row: &PipelineRow) -> i64 {
    row.finished_at_ms.unwrap_or(row.updated_at_ms)
}

/// MLflow's status for a Hone state.
pub fn status_of(state: &str) -> &'static str {
    match state {
        "done" => "FINISHED",
        "failed" => "FAILED",
        "cancelled" => "KILLED",
        _ => "RUNNING",
    }
}

/// Whether a state is final.
pub fn finished(state: &str) -> bool {
    matches!(state, "done" | "failed" | "cancelled")
}

/// The experiment of a pipeline: the one its request names, else the parent's name.
pub fn experiment_of(row: &PipelineRow, parent_name: &str) -> String {
    row.request["experiment"]
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| parent_name.to_string())
}

/// The data set identity recorded for a pipeline: a DVC record's `{repo, path, rev, md5}` when
/// the data came from DVC, else Hone's description of the data.
pub fn dataset_identity(row: &PipelineRow) -> Value {
    let data = &row.request["data"];
    match data.get("dataset") {
        Some(id) if id.is_object() => id.clone(),
        _ => json!({ "data": row.request.get("data").cloned().unwrap_or(Value::Null) }),
    }
}

/// The `runs/log-inputs` entry of a pipeline's data.
pub fn dataset_input(row: &PipelineRow, describe: &str) -> Value {
    let identity = dataset_identity(row);
    let (name, digest, source_type) = match identity.get("md5").and_then(Value::as_str) {
        Some(md5) => (
            identity["path"].as_str().unwrap_or(describe).to_string(),
            md5.trim_end_matches(".dir").chars().take(36).collect::<String>(),
            "dvc",
        ),
        None => {
            use sha2::Digest as _;
            let d = hex::encode(sha2::Sha256::digest(identity.to_string().as_bytes()));
            (describe.to_string(), d[..16].to_string(), "hone")
        }
    };
    json!({
        "tags": [{"key": "mlflow.data.context", "value": "validation"}],
        "dataset": {
            "name": clip(name, 500),
            "digest": digest,
            "source_type": source_type,
            "source": identity.to_string(),
        }
    })
}

/// The pipeline's own run: what was asked, per class the parent and the winner. Parameters
/// come from the request alone (MLflow refuses a parameter whose value changes), metrics from
/// the result once the pipeline is over.
pub fn pipeline_plan(
    row: &PipelineRow,
    req: &PipelineRequest,
    result: &PipelineResult,
    parent: &ModelRow,
) -> RunPlan {
    let at = stamp(row);
    let mut p = RunPlan {
        name: row.id.clone(),
        start_ms: row.created_at_ms,
        end_ms: finished(&row.state).then_some(at),
        status: status_of(&row.state),
        ..RunPlan::default()
    };
    p.tag("hone.kind", "pipeline");
    p.tag("hone.pipeline", &row.id);
    p.tag("hone.model", &parent.id);
    p.tag("hone.model_sha256", &parent.sha256);
    p.tag("hone.state", &row.state);
    p.tag("hone.stage", &row.stage);
    if let Some(e) = &row.error {
        p.tag("hone.error", e);
    }
    let classes = req.classes();
    p.tag("hone.device_classes", classes.join(","));
    p.tag("hone.emulation", emulation(&result.classes));
    p.tag("hone.dataset", dataset_identity(row).to_string());
    if !result.coordinator_cpu.is_empty() {
        p.tag("hone.coordinator_cpu", &result.coordinator_cpu);
    }
    p.tag("mlflow.note.content", summary(result));
    p.param("model", &parent.id);
    p.param("model_name", &parent.name);
    p.param("parent_sha256", &parent.sha256);
    p.param("data", req.data.describe());
    p.param("quality_metric", quality_metric(req));
    p.param("objective", req.objective.name());
    p.param("devices", classes.join(","));
    p.param("methods", req.methods.join(","));
    p.param("max_accuracy_drop", opt(req.max_accuracy_drop));
    p.param("min_fidelity", opt(req.min_fidelity));
    p.param("latency_budget_ms", opt(req.latency_budget_ms));
    p.param("memory_budget_mib", opt(req.memory_budget_mib));
    p.param("exhaustive", req.exhaustive.to_string());
    if finished(&row.state) {
        p.metric("device_measurements", Some(result.device_measurements as f64), at);
        p.metric("wall_seconds", Some(result.wall_seconds), at);
        for class in &result.classes {
            let k = metric_key(&class.class);
            if let Some(par) = &class.parent {
                p.metric(&format!("{k}/parent_p50_ms"), par.p50_ms, at);
                p.metric(&format!("{k}/parent_{}", result.quality_metric), quality(par), at);
            }
            if let Some(w) = &class.winner {
                p.metric(&format!("{k}/winner_p50_ms"), w.p50_ms, at);
                p.metric(&format!("{k}/winner_p99_ms"), w.p99_ms, at);
                p.metric(&format!("{k}/winner_{}", result.quality_metric), quality(w), at);
                if let (Some(a), Some(b)) = (class.parent.as_ref().and_then(|x| x.p50_ms), w.p50_ms)
                    && b > 0.0
                {
                    p.metric(&format!("{k}/speedup"), Some(a / b), at);
                }
            }
        }
    }
    p
}

/// `accuracy` with an accuracy budget, else `fidelity`.
pub fn quality_metric(req: &PipelineRequest) -> &'static str {
    if req.max_accuracy_drop.is_some() { "accuracy" } else { "fidelity" }
}

fn quality(f: &crate::pipeline::result::Figures) -> Option<f64> {
    f.accuracy.or(f.fidelity)
}

fn emulation(classes: &[ClassResult]) -> String {
    classes.iter().map(|c| format!("{}={}", c.class, c.measurement)).collect::<Vec<_>>().join(",")
}

/// The pipeline run's description: one line per class.
fn summary(result: &PipelineResult) -> String {
    let mut s = format!(
        "Hone pipeline `{}` on `{}` ({}), {}.\n\n",
        result.pipeline, result.model_name, result.data, result.state
    );
    for c in &result.classes {
        let w = c.winner.as_ref().map(|w| w.name.as_str()).unwrap_or("no winner");
        s.push_str(&format!("- **{}** ({}): {} — {}\n", c.class, c.measurement, w, c.reason));
    }
    s
}

/// Flattens a settings object into `a.b = value` parameters (arrays of scalars joined by `,`).
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, x, out);
            }
        }
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            let parts: Vec<String> = a.iter().map(scalar).collect();
            out.insert(prefix.to_string(), parts.join(","));
        }
        Value::Null => {}
        other if !prefix.is_empty() => {
            out.insert(prefix.to_string(), scalar(other));
        }
        _ => {}
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One nested run per candidate row (a candidate belongs to one class), with the class in its
/// metric names. `models` holds the registered models the candidates point at.
pub fn candidate_plans(
    row: &PipelineRow,
    result: &PipelineResult,
    parent: &ModelRow,
    models: &BTreeMap<String, ModelRow>,
) -> Vec<(CandidateRow, String, RunPlan)> {
    let at = stamp(row);
    let dataset = dataset_identity(row).to_string();
    let mut out = Vec::new();
    for class in &result.classes {
        for c in &class.candidates {
            let mut p = RunPlan {
                name: c.id.clone(),
                start_ms: row.created_at_ms,
                end_ms: Some(at),
                status: if c.status == "failed" { "FAILED" } else { "FINISHED" },
                ..RunPlan::default()
            };
            let model = c.model.as_ref().and_then(|m| models.get(m));
            p.tag("hone.kind", "candidate");
            p.tag("hone.pipeline", &row.id);
            p.tag("hone.candidate", &c.id);
            p.tag("hone.device_classes", &class.class);
            p.tag("hone.emulation", format!("{}={}", class.class, class.measurement));
            p.tag("hone.status", &c.status);
            p.tag("hone.winner", c.winner.to_string());
            p.tag("hone.pareto", c.pareto.to_string());
            // The data it was judged on in this pipeline (its lineage names the pipeline that
            // first made the model, which may have used other data).
            p.tag("hone.dataset", dataset.clone());
            if let Some(n) = &c.note {
                p.tag("hone.note", n);
            }
            if let Some(m) = model {
                p.tag("hone.model", &m.id);
                p.tag("hone.model_sha256", &m.sha256);
                if let Some(l) = &m.lineage {
                    p.tag("hone.lineage", l.to_string());
                }
            }
            p.param("method", &c.method);
            p.param("runtime", &c.runtime);
            p.param("precision", &c.precision);
            p.param("parent", &parent.id);
            p.param("parent_sha256", &parent.sha256);
            p.param("device_class", &class.class);
            let mut flat = BTreeMap::new();
            flatten("", &c.settings, &mut flat);
            for (k, v) in flat {
                p.param(&k, v);
            }
            p.metric(&result.quality_metric, quality_of(c, &result.quality_metric), at);
            p.metric("accuracy", c.accuracy, at);
            p.metric("fidelity", c.fidelity, at);
            p.metric("cosine", c.cosine, at);
            p.metric("perplexity", c.perplexity, at);
            p.metric("params", c.params.map(|x| x as f64), at);
            p.metric("macs", c.macs.map(|x| x as f64), at);
            p.metric("size_bytes", model.map(|m| m.size_bytes as f64), at);
            let k = metric_key(&class.class);
            p.metric(&format!("{k}/p50_ms"), c.p50_ms, at);
            p.metric(&format!("{k}/p90_ms"), c.p90_ms, at);
            p.metric(&format!("{k}/p99_ms"), c.p99_ms, at);
            p.metric(
                &format!("{k}/peak_rss_mib"),
                c.peak_rss_bytes.map(|b| b as f64 / 1048576.0),
                at,
            );
            p.metric(&format!("{k}/load_ms"), c.load_ms, at);
            p.metric(&format!("{k}/predicted_ms"), c.predicted_ms, at);
            out.push((c.clone(), class.class.clone(), p));
        }
    }
    out
}

fn quality_of(c: &CandidateRow, metric: &str) -> Option<f64> {
    if metric == "accuracy" { c.accuracy } else { c.fidelity }
}

/// The compression metadata of a registered version that won `classes` (one model may win
/// several): `hone.device_class` lists them, and the figures that depend on the class are
/// tagged per class (`hone.speedup.rpi4`, `hone.accuracy_drop.rpi4`, `hone.emulation.rpi4`).
pub fn winner_tags(
    result: &PipelineResult,
    classes: &[&ClassResult],
    parent: &ModelRow,
    method: &str,
) -> Vec<(String, String)> {
    let names: Vec<&str> = classes.iter().map(|c| c.class.as_str()).collect();
    let mut t = vec![
        ("hone.device_class".to_string(), names.join(",")),
        ("hone.method".to_string(), method.to_string()),
        ("hone.parent".to_string(), parent.id.clone()),
        ("hone.parent_sha256".to_string(), parent.sha256.clone()),
        ("hone.pipeline".to_string(), result.pipeline.clone()),
    ];
    for class in classes {
        let Some(w) = class.winner.as_ref() else { continue };
        let k = registry_name(&class.class);
        if !t.iter().any(|(key, _)| key == "hone.model") {
            t.push(("hone.model".into(), w.model.clone()));
            t.push(("hone.runtime".into(), w.runtime.clone().unwrap_or_else(|| "tract".into())));
        }
        t.push((format!("hone.emulation.{k}"), class.measurement.clone()));
        if let (Some(a), Some(b)) = (class.parent.as_ref().and_then(|p| p.p50_ms), w.p50_ms)
            && b > 0.0
        {
            t.push((format!("hone.speedup.{k}"), format!("{:.3}", a / b)));
        }
        if let (Some(pa), Some(wa)) = (class.parent.as_ref().and_then(|p| p.accuracy), w.accuracy) {
            t.push((format!("hone.accuracy_drop.{k}"), format!("{:.4}", (pa - wa) * 100.0)));
        }
        if let Some(f) = w.fidelity {
            t.push((format!("hone.fidelity.{k}"), format!("{f:.4}")));
        }
    }
    t
}

/// The `MLmodel` file of a model logged by Hone: MLflow's `onnx` flavour and the
/// `python_function` flavour it loads through, so `mlflow.onnx.load_model` and
/// `mlflow.pyfunc.load_model` both read `models:/NAME@ALIAS`.
pub fn mlmodel(run_id: &str, model: &ModelRow, artifact_path: &str, created_ms: i64) -> String {
    let when = chrono_like(created_ms);
    format!(
        "artifact_path: {artifact_path}\n\
         flavors:\n  onnx:\n    code: null\n    data: model.onnx\n    providers:\n    - CPUExecutionProvider\n\
         \x20 python_function:\n    data: model.onnx\n    env:\n      virtualenv: python_env.yaml\n\
         \x20   loader_module: mlflow.onnx\n    python_version: 3.11.7\n\
         metadata:\n  hone_model: {id}\n  hone_sha256: {sha}\n\
         model_size_bytes: {size}\n\
         model_uuid: {uuid}\n\
         run_id: {run_id}\n\
         utc_time_created: '{when}'\n",
        id = model.id,
        sha = model.sha256,
        size = model.size_bytes,
        uuid = &model.sha256[..32],
    )
}

/// `python_env.yaml` and `requirements.txt` beside `MLmodel`.
pub const PYTHON_ENV: &str =
    "python: 3.11.7\nbuild_dependencies:\n- pip\ndependencies:\n- -r requirements.txt\n";
/// The Python packages a client needs to load the model.
pub const REQUIREMENTS: &str = "mlflow\nonnx\nonnxruntime\n";

/// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) of a Unix ms time, the form MLflow writes.
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000) * 1000
    )
}

/// A campaign's run: what was measured, one metric per (model, device) pair and statistic.
pub fn campaign_plan(
    c: &CampaignRow,
    results: &[ResultRow],
    models: &BTreeMap<String, ModelRow>,
) -> RunPlan {
    let at = c.finished_at_ms.unwrap_or(c.created_at_ms);
    let mut p = RunPlan {
        name: c.id.clone(),
        start_ms: c.created_at_ms,
        end_ms: c.finished_at_ms,
        status: match c.state.as_str() {
            "done" => "FINISHED",
            "cancelled" => "KILLED",
            "failed" => "FAILED",
            _ => "RUNNING",
        },
        ..RunPlan::default()
    };
    p.tag("hone.kind", "campaign");
    p.tag("hone.campaign", &c.id);
    p.tag("hone.state", &c.state);
    if let Some(pipeline) = c.spec["pipeline"].as_str() {
        p.tag("hone.pipeline", pipeline);
    }
    let mut profiles: Vec<String> = results.iter().filter_map(|r| r.profile.clone()).collect();
    profiles.sort();
    profiles.dedup();
    p.tag("hone.device_classes", profiles.join(","));
    for key in ["selector", "runtime"] {
        if let Some(v) = c.spec.get(key).filter(|v| !v.is_null()) {
            p.param(key, scalar(v));
        }
    }
    if let Some(ms) = c.spec["models"].as_array() {
        p.param("models", ms.iter().map(scalar).collect::<Vec<_>>().join(","));
    }
    if let Some(b) = c.spec.get("bench") {
        let mut flat = BTreeMap::new();
        flatten("bench", b, &mut flat);
        for (k, v) in flat {
            p.param(&k, v);
        }
    }
    p.metric("results", Some(results.len() as f64), at);
    for r in results {
        let name = models.get(&r.model_id).map(|m| m.name.as_str()).unwrap_or(&r.model_id);
        let k = format!("{}/{}", metric_key(name), metric_key(&r.device_id));
        p.metric(&format!("{k}/p50_ms"), Some(r.latency.p50_ms), r.received_at_ms);
        p.metric(&format!("{k}/p90_ms"), Some(r.latency.p90_ms), r.received_at_ms);
        p.metric(&format!("{k}/p99_ms"), Some(r.latency.p99_ms), r.received_at_ms);
        p.metric(
            &format!("{k}/peak_rss_mib"),
            Some(r.peak_rss_bytes as f64 / 1048576.0),
            r.received_at_ms,
        );
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(i: usize) -> Metric {
        Metric { key: format!("m{i}"), value: i as f64, timestamp: 1, step: 0 }
    }

    #[test]
    fn batches_keep_within_mlflows_limits_and_lose_nothing() {
        let params: Vec<(String, String)> =
            (0..130).map(|i| (format!("p{i}"), "x".repeat(10))).collect();
        let tags: Vec<(String, String)> =
            (0..90).map(|i| (format!("t{i}"), "y".repeat(7000))).collect();
        let metrics: Vec<Metric> = (0..2500).map(metric).collect();
        let b = batches(&params, &metrics, &tags);
        for x in &b {
            assert!(x.metrics.len() <= MAX_METRICS);
            assert!(x.params.len() + x.tags.len() <= MAX_PARAMS_AND_TAGS);
            let body = serde_json::json!({
                "params": x.params, "tags": x.tags,
                "metrics": x.metrics.iter().map(Metric::to_json).collect::<Vec<_>>(),
            });
            assert!(body.to_string().len() < 1_000_000, "a call over 1 MB");
        }
        let n = |f: fn(&Batch) -> usize| b.iter().map(f).sum::<usize>();
        assert_eq!(n(|x| x.params.len()), 130);
        assert_eq!(n(|x| x.tags.len()), 90);
        assert_eq!(n(|x| x.metrics.len()), 2500);
        assert!(b.len() >= 3, "2,500 metrics need three calls");
        // Within the counts, but over 1 MB together: 99 tags of 8,000 characters and 1,000
        // metrics with 250-character names.
        let big: Vec<(String, String)> =
            (0..99).map(|i| (format!("t{i}"), "y".repeat(MAX_TAG_CHARS))).collect();
        let long: Vec<Metric> =
            (0..1000).map(|i| Metric { key: format!("{i:0>250}"), ..metric(i) }).collect();
        let b = batches(&[], &long, &big);
        assert!(b.len() >= 2, "over 1 MB in one call");
        for x in &b {
            let body = serde_json::json!({
                "tags": x.tags,
                "metrics": x.metrics.iter().map(Metric::to_json).collect::<Vec<_>>(),
            });
            assert!(body.to_string().len() < 1_000_000, "a call over 1 MB");
        }
        assert!(batches(&[], &[], &[]).is_empty());
    }

    #[test]
    fn names_mlflow_refuses_are_rewritten_and_long_values_clipped() {
        assert_eq!(metric_key("rpi4/p50_ms"), "rpi4/p50_ms");
        assert_eq!(metric_key("a:b@c"), "a_b_c");
        assert_eq!(registry_name("open nsfw/v1"), "open-nsfw-v1");
        let long = clip("z".repeat(7000), MAX_PARAM_CHARS);
        assert_eq!(long.chars().count(), MAX_PARAM_CHARS);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn settings_flatten_into_parameters() {
        let mut out = BTreeMap::new();
        flatten(
            "",
            &serde_json::json!({"passes": ["fold", "int8-dynamic"], "prune": {"criterion": "taylor", "sparsity": 0.3}, "x": null}),
            &mut out,
        );
        assert_eq!(out["passes"], "fold,int8-dynamic");
        assert_eq!(out["prune.criterion"], "taylor");
        assert_eq!(out["prune.sparsity"], "0.3");
        assert!(!out.contains_key("x"));
    }

    #[test]
    fn times_are_written_as_mlflow_writes_them() {
        assert_eq!(chrono_like(0), "1970-01-01 00:00:00.000000");
        // 2026-12-04 22:06:07.250 UTC
        assert_eq!(chrono_like(1_796_421_967_250), "2026-12-04 22:06:07.250000");
    }
}
