//! Serving telemetry: stored per device, judged by the monitoring rules, turned into alerts and
//! re-compression suggestions; downsampled as it ages.
//!
//! Rules, evaluated on every window a device sends (pure: [`evaluate`]):
//! - `latency_budget`: the window median above the budget for [`BREACH_WINDOWS`] windows with
//!   traffic in a row (the budget: the deployment's, else its pipeline's);
//! - `error_rate`: more than [`MAX_ERROR_RATE`] of at least [`MIN_REQUESTS`] requests failed in
//!   two windows in a row;
//! - `throttling`: throttled (sensor, or the emulated thermal model) for [`BREACH_WINDOWS`]
//!   windows in a row;
//! - `memory`: the serving process above [`MEMORY_PRESSURE`] of the device's memory (the
//!   profile's memory for an emulated device);
//! - `drift`: for some input, the population stability index of the window's values against
//!   the model's reference statistics above [`hone_common::serving::PSI_DRIFT`] in two windows
//!   in a row (each with at least [`MIN_VALUES`] values), or for token inputs the unknown-token
//!   rate [`UNKNOWN_RATE_RISE`] above the reference's.
//!
//! A rule that fires opens one alert per (device, rule) and writes a suggestion: the device
//! class, what went wrong with the figures, and a ready pipeline request. The alert resolves
//! when the rule holds again. Alerts are also POSTed to the webhook, if one is configured.

use hone_common::serving::{PSI_DRIFT, TensorStats, psi};
use hone_common::wire::Telemetry;
use serde_json::json;
use tracing::{info, warn};

use super::DeployRequest;
use crate::db::{AlertRow, Db, SuggestionRow, TelemetryRow};

/// Windows in a row for the latency and throttling rules.
pub const BREACH_WINDOWS: usize = 3;
/// Largest healthy error rate.
pub const MAX_ERROR_RATE: f64 = 0.05;
/// Requests a window needs before its error rate counts.
pub const MIN_REQUESTS: i64 = 10;
/// Fraction of the device's memory above which serving is under memory pressure.
pub const MEMORY_PRESSURE: f64 = 0.9;
/// Values an input needs in a window before its drift counts.
pub const MIN_VALUES: u64 = 1000;
/// Rise of the unknown-token rate that counts as drift.
pub const UNKNOWN_RATE_RISE: f64 = 0.05;
/// Raw windows older than this are downsampled to [`BUCKET_5M`] buckets, ms.
pub const RAW_KEEP_MS: i64 = 3_600_000;
/// First downsampling resolution.
pub const BUCKET_5M: i64 = 300_000;
/// 5-minute buckets older than this become [`BUCKET_1H`] buckets, ms.
pub const BUCKET_5M_KEEP_MS: i64 = 86_400_000;
/// Second downsampling resolution.
pub const BUCKET_1H: i64 = 3_600_000;

/// The telemetry row of a window.
pub fn row_of(device: &str, t: &Telemetry) -> TelemetryRow {
    let w = &t.window;
    TelemetryRow {
        device_id: device.to_string(),
        resolution_ms: w.window_ms as i64,
        window_start_ms: w.window_start_ms as i64,
        window_ms: w.window_ms as i64,
        model_id: t.artifact_id.clone(),
        deployment_id: t.deployment_id.clone(),
        requests: w.requests as i64,
        errors: w.errors as i64,
        rejected: w.rejected as i64,
        p50_ms: w.latency.map(|l| l.p50_ms),
        p90_ms: w.latency.map(|l| l.p90_ms),
        p99_ms: w.latency.map(|l| l.p99_ms),
        rss_bytes: w.rss_bytes as i64,
        temperature_c: t.temperature_c,
        clock_mhz: t.clock_mhz.map(i64::from),
        throttled: i64::from(t.throttled),
        reading_source: t.reading_source.map(|s| {
            match s {
                hone_common::bench::ReadingSource::Modelled => "modelled",
                hone_common::bench::ReadingSource::Sensor => "sensor",
            }
            .to_string()
        }),
        dropped_windows: t.dropped_windows as i64,
        stats: Some(json!({ "inputs": w.inputs, "outputs": w.outputs })),
    }
}

/// What the rules need besides the windows.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Latency budget of the median, ms.
    pub latency_budget_ms: Option<f64>,
    /// Memory the device has for serving, bytes.
    pub memory_bytes: Option<u64>,
    /// Reference input statistics.
    pub reference: Vec<TensorStats>,
}

/// A rule that fires, with its message and figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Rule name.
    pub rule: &'static str,
    /// What happened.
    pub message: String,
    /// The figures.
    pub figures: serde_json::Value,
}

/// Rule names, in evaluation order.
pub const RULES: [&str; 5] = ["latency_budget", "error_rate", "throttling", "memory", "drift"];

/// The rules that fire on a device's recent raw windows (oldest first; the last is the newest),
/// each rule at most once. A rule absent from the result holds.
pub fn evaluate(windows: &[TelemetryRow], ctx: &Context) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(last) = windows.last() else { return out };
    // Latency: the last BREACH_WINDOWS windows with successful requests.
    if let Some(budget) = ctx.latency_budget_ms {
        let served: Vec<&TelemetryRow> =
            windows.iter().filter(|w| w.requests > w.errors && w.p50_ms.is_some()).collect();
        let tail = &served[served.len().saturating_sub(BREACH_WINDOWS)..];
        if tail.len() == BREACH_WINDOWS && tail.iter().all(|w| w.p50_ms.unwrap_or(0.0) > budget) {
            let p50s: Vec<f64> = tail.iter().filter_map(|w| w.p50_ms).collect();
            let worst = p50s.iter().copied().fold(0.0, f64::max);
            out.push(Finding {
                rule: "latency_budget",
                message: format!(
                    "median latency above the {budget} ms budget for {BREACH_WINDOWS} windows in a row (up to {worst:.1} ms)"
                ),
                figures: json!({ "budget_ms": budget, "p50_ms": p50s, "p99_ms": tail.iter().filter_map(|w| w.p99_ms).collect::<Vec<_>>(), "throttled_windows": tail.iter().filter(|w| w.throttled > 0).count() }),
            });
        }
    }
    // Errors: two windows in a row with enough requests and too many errors.
    let busy: Vec<&TelemetryRow> = windows.iter().filter(|w| w.requests >= MIN_REQUESTS).collect();
    let tail = &busy[busy.len().saturating_sub(2)..];
    let rate = |w: &TelemetryRow| w.errors as f64 / w.requests.max(1) as f64;
    if tail.len() == 2 && tail.iter().all(|w| rate(w) > MAX_ERROR_RATE) {
        let rates: Vec<f64> = tail.iter().map(|w| rate(w)).collect();
        out.push(Finding {
            rule: "error_rate",
            message: format!(
                "{:.1}% and {:.1}% of requests failed in the last two windows (limit {:.0}%)",
                rates[0] * 100.0,
                rates[1] * 100.0,
                MAX_ERROR_RATE * 100.0
            ),
            figures: json!({ "error_rates": rates, "requests": tail.iter().map(|w| w.requests).collect::<Vec<_>>() }),
        });
    }
    // Throttling.
    let tail = &windows[windows.len().saturating_sub(BREACH_WINDOWS)..];
    if tail.len() == BREACH_WINDOWS && tail.iter().all(|w| w.throttled > 0) {
        out.push(Finding {
            rule: "throttling",
            message: format!(
                "throttled for {BREACH_WINDOWS} windows in a row ({}), clock down to {} MHz",
                last.reading_source.as_deref().unwrap_or("no readings"),
                tail.iter().filter_map(|w| w.clock_mhz).min().map_or("?".into(), |c| c.to_string())
            ),
            figures: json!({ "clock_mhz": tail.iter().map(|w| w.clock_mhz).collect::<Vec<_>>(), "temperature_c": tail.iter().map(|w| w.temperature_c).collect::<Vec<_>>(), "source": last.reading_source }),
        });
    }
    // Memory.
    if let Some(limit) = ctx.memory_bytes
        && last.rss_bytes as f64 > MEMORY_PRESSURE * limit as f64
    {
        out.push(Finding {
            rule: "memory",
            message: format!(
                "serving uses {:.0} MiB of the device's {:.0} MiB (over {:.0}%)",
                last.rss_bytes as f64 / 1048576.0,
                limit as f64 / 1048576.0,
                MEMORY_PRESSURE * 100.0
            ),
            figures: json!({ "rss_bytes": last.rss_bytes, "memory_bytes": limit }),
        });
    }
    // Drift: the last two windows with enough values.
    if !ctx.reference.is_empty() {
        let drift_of = |w: &TelemetryRow| -> Option<(String, f64, Option<f64>)> {
            let inputs: Vec<TensorStats> = w
                .stats
                .as_ref()
                .and_then(|s| serde_json::from_value(s["inputs"].clone()).ok())
                .unwrap_or_default();
            let mut worst: Option<(String, f64, Option<f64>)> = None;
            for seen in inputs.iter().filter(|s| s.count >= MIN_VALUES) {
                let Some(reference) = ctx.reference.iter().find(|r| r.name == seen.name) else {
                    continue;
                };
                let unknown_rise = match (seen.tokens, reference.tokens) {
                    (Some(a), Some(b)) => Some(a.unknown_rate - b.unknown_rate),
                    _ => None,
                };
                let score = match unknown_rise {
                    Some(rise) if rise > UNKNOWN_RATE_RISE => f64::INFINITY,
                    Some(_) => 0.0,
                    None => psi(reference, seen).unwrap_or(0.0),
                };
                if worst.as_ref().is_none_or(|(_, s, _)| score > *s) {
                    worst = Some((seen.name.clone(), score, unknown_rise));
                }
            }
            worst
        };
        let judged: Vec<(String, f64, Option<f64>)> = windows.iter().filter_map(drift_of).collect();
        let tail = &judged[judged.len().saturating_sub(2)..];
        if tail.len() == 2 && tail.iter().all(|(_, s, _)| *s > PSI_DRIFT) {
            let (name, score, rise) = tail[1].clone();
            let message = match rise {
                Some(r) => format!(
                    "input `{name}`: unknown-token rate {:.1} points above the reference",
                    r * 100.0
                ),
                None => format!(
                    "input `{name}` drifted from the reference: PSI {score:.2} (over {PSI_DRIFT}) in two windows in a row"
                ),
            };
            out.push(Finding {
                rule: "drift",
                message,
                figures: json!({ "input": name, "psi": tail.iter().map(|t| if t.1.is_finite() { json!(t.1) } else { json!(null) }).collect::<Vec<_>>(), "unknown_rate_rise": rise, "threshold": PSI_DRIFT }),
            });
        }
    }
    out
}

/// Stores a window and runs the rules for its device (called by the engine for each window).
#[derive(Clone, Default)]
pub struct Monitor {
    /// Where alerts are POSTed (JSON), if anywhere.
    pub webhook: Option<String>,
}

impl Monitor {
    /// Stores `t` and applies the rules; returns the alerts it opened.
    pub async fn ingest(
        &self,
        db: &Db,
        device: &str,
        t: &Telemetry,
        now: i64,
    ) -> anyhow::Result<Vec<AlertRow>> {
        if t.device_id != device {
            anyhow::bail!("telemetry of `{}` on the topic of `{device}`", t.device_id);
        }
        let row = row_of(device, t);
        if !db.insert_telemetry(&row).await? {
            return Ok(Vec::new()); // a duplicate window
        }
        if t.dropped_windows > 0 {
            warn!(%device, dropped = t.dropped_windows, "the agent dropped telemetry windows (broker unreachable)");
        }
        let since = row.window_start_ms - row.window_ms * 12;
        let windows: Vec<TelemetryRow> = db
            .telemetry(device, since, 64)
            .await?
            .into_iter()
            .filter(|w| w.resolution_ms == row.resolution_ms && w.model_id == row.model_id)
            .collect();
        let deployment = deployment_of(db, device, t).await?;
        let ctx = self.context(db, device, t, deployment.as_ref()).await?;
        let findings = evaluate(&windows, &ctx);
        let mut opened = Vec::new();
        let class = db.device(device).await?.and_then(|d| d.profile);
        for rule in RULES {
            match findings.iter().find(|f| f.rule == rule) {
                Some(f) => {
                    if let Some(open) = db.open_alert(device, rule).await? {
                        db.refresh_alert(&open.id, &f.message, &f.figures, now).await?;
                        continue;
                    }
                    let alert = AlertRow {
                        id: format!("a-{}", ulid::Ulid::new().to_string().to_lowercase()),
                        device_id: device.to_string(),
                        class: class.clone(),
                        model_id: t.artifact_id.clone(),
                        deployment_id: deployment.as_ref().map(|d| d.id.clone()),
                        rule: rule.to_string(),
                        message: f.message.clone(),
                        figures: f.figures.clone(),
                        state: "open".into(),
                        suggestion_id: None,
                        opened_at_ms: now,
                        updated_at_ms: now,
                        resolved_at_ms: None,
                    };
                    db.insert_alert(&alert).await?;
                    let suggestion = suggest(db, &alert, f, now).await?;
                    db.insert_suggestion(&suggestion).await?;
                    warn!(%device, rule, message = %f.message, suggestion = %suggestion.id, "alert");
                    let mut alert = alert;
                    alert.suggestion_id = Some(suggestion.id.clone());
                    self.notify(&alert, &suggestion);
                    opened.push(alert);
                }
                None => {
                    if db.resolve_alert(device, rule, now).await? {
                        info!(%device, rule, "alert resolved");
                    }
                }
            }
        }
        Ok(opened)
    }

    async fn context(
        &self,
        db: &Db,
        device: &str,
        t: &Telemetry,
        deployment: Option<&crate::db::DeploymentRow>,
    ) -> anyhow::Result<Context> {
        let mut ctx = Context::default();
        let req: Option<DeployRequest> =
            deployment.as_ref().and_then(|d| serde_json::from_value(d.request.clone()).ok());
        ctx.latency_budget_ms = req.as_ref().and_then(|r| r.latency_budget_ms);
        if ctx.latency_budget_ms.is_none()
            && let Some(p) = req.as_ref().and_then(|r| r.pipeline.clone())
            && let Some(p) = db.pipeline(&p).await?
        {
            ctx.latency_budget_ms = p.request["latency_budget_ms"].as_f64();
        }
        if let Some(d) = db.device(device).await? {
            let profile_memory = d
                .profile
                .as_deref()
                .and_then(hone_firmware_profiles::find)
                .map(|p| p.memory_available_bytes);
            ctx.memory_bytes = profile_memory.or(Some(d.memory_bytes as u64));
        }
        if let Some(model) = &t.artifact_id
            && let Some((_, stats)) = db.reference(model).await?
        {
            ctx.reference = serde_json::from_value(stats).unwrap_or_default();
        }
        Ok(ctx)
    }

    fn notify(&self, alert: &AlertRow, suggestion: &SuggestionRow) {
        let Some(url) = self.webhook.clone() else { return };
        let body = json!({ "alert": alert, "suggestion": suggestion });
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("client");
            match client.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => warn!(%url, status = %r.status(), "alert webhook refused the alert"),
                Err(e) => warn!(%url, error = %e, "alert webhook unreachable"),
            }
        });
    }
}

/// The deployment whose rules apply to a window: the one the agent names, unless that one's
/// model is not what was served (a rollback re-activates the previous model under the
/// rolled-back deployment's id); then the newest deployment of the served model that finished on
/// this device.
async fn deployment_of(
    db: &Db,
    device: &str,
    t: &Telemetry,
) -> anyhow::Result<Option<crate::db::DeploymentRow>> {
    let named = match &t.deployment_id {
        Some(id) => db.deployment(id).await?,
        None => None,
    };
    let Some(served) = &t.artifact_id else { return Ok(named) };
    if named.as_ref().is_some_and(|d| &d.model_id == served) {
        return Ok(named);
    }
    for d in db.deployments(false).await? {
        if &d.model_id == served
            && d.state == "done"
            && db.deployment_devices(&d.id).await?.iter().any(|x| x.device_id == device)
        {
            return Ok(Some(d));
        }
    }
    Ok(None)
}

/// The suggestion for an alert: a pipeline request for the device's class, built from the
/// deployment's pipeline (its request, data and budgets) when there is one, and changed for
/// what went wrong.
async fn suggest(
    db: &Db,
    alert: &AlertRow,
    f: &Finding,
    now: i64,
) -> anyhow::Result<SuggestionRow> {
    let deployment = match &alert.deployment_id {
        Some(id) => db.deployment(id).await?,
        None => None,
    };
    let req: Option<DeployRequest> =
        deployment.as_ref().and_then(|d| serde_json::from_value(d.request.clone()).ok());
    let pipeline = match req.as_ref().and_then(|r| r.pipeline.clone()) {
        Some(p) => db.pipeline(&p).await?,
        None => None,
    };
    // The parent: the pipeline's, else the deployed model's lineage parent, else itself.
    let model = match &alert.model_id {
        Some(m) => db.find_model(m).await?,
        None => None,
    };
    let parent = pipeline
        .as_ref()
        .and_then(|p| p.request["model"].as_str().map(String::from))
        .or_else(|| {
            model.as_ref().and_then(|m| m.lineage.as_ref()?["parent"].as_str().map(String::from))
        })
        .or_else(|| alert.model_id.clone());
    let mut request = pipeline.as_ref().map(|p| p.request.clone()).unwrap_or_else(|| json!({}));
    request["model"] = json!(parent);
    request["devices"] = json!([alert.class.clone().unwrap_or_default()]);
    if request.get("data").is_none() {
        request["data"] = json!(req.as_ref().and_then(|r| r.reference_data.clone()));
    }
    if request.get("max_accuracy_drop").is_none() && request.get("min_fidelity").is_none() {
        request["min_fidelity"] = json!(0.97);
    }
    if let Some(obj) = request.as_object_mut() {
        obj.remove("id");
    }
    let class = alert.class.clone().unwrap_or_else(|| "its class".into());
    let reason = match f.rule {
        "latency_budget" => {
            let budget = f.figures["budget_ms"].as_f64().unwrap_or(0.0);
            let worst = f.figures["p50_ms"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_f64()).fold(0.0, f64::max))
                .unwrap_or(budget);
            // The device runs slower than it was measured by worst/budget: aim that much lower.
            let target = three_digits(budget * budget / worst.max(1e-9));
            request["latency_budget_ms"] = json!(target);
            let throttled = f.figures["throttled_windows"].as_u64().unwrap_or(0) > 0;
            if throttled {
                request["bench"] = json!({ "warmup": 3, "max_iterations": 1000, "max_time_ms": 60000, "mode": { "sustained": { "seconds": 60 } } });
            }
            format!(
                "{} on {class}: median {worst:.1} ms against a {budget} ms budget. Re-compress for {class} with a latency target of {target} ms{}.",
                alert.device_id,
                if throttled { ", measured in sustained mode (the device throttles)" } else { "" }
            )
        }
        "throttling" => {
            request["bench"] = json!({ "warmup": 3, "max_iterations": 1000, "max_time_ms": 60000, "mode": { "sustained": { "seconds": 60 } } });
            format!(
                "{} on {class} throttles under sustained load: re-compress with candidates measured in sustained mode so the winner holds its latency when hot.",
                alert.device_id
            )
        }
        "memory" => {
            let limit = f.figures["memory_bytes"].as_f64().unwrap_or(0.0) / 1048576.0;
            let budget = (limit * 0.7).floor();
            request["memory_budget_mib"] = json!(budget);
            format!(
                "{} on {class}: {}. Re-compress with a memory budget of {budget} MiB.",
                alert.device_id, f.message
            )
        }
        "drift" => format!(
            "{} on {class}: {}. The model was validated on other data: re-validate the candidates on a calibration set drawn from the new inputs (replace `data` in the request with a sample of them) before the next deployment.",
            alert.device_id, f.message
        ),
        _ => format!(
            "{} on {class}: {}. Re-run the pipeline to find a model that runs cleanly here.",
            alert.device_id, f.message
        ),
    };
    Ok(SuggestionRow {
        id: format!("s-{}", ulid::Ulid::new().to_string().to_lowercase()),
        alert_id: alert.id.clone(),
        class: alert.class.clone(),
        model_id: alert.model_id.clone(),
        reason,
        request,
        pipeline_id: None,
        created_at_ms: now,
    })
}

/// `x` rounded to three significant digits (a budget stays positive however small).
fn three_digits(x: f64) -> f64 {
    if !(x > 0.0 && x.is_finite()) {
        return x;
    }
    let scale = 10f64.powi(2 - x.log10().floor() as i32);
    (x * scale).round() / scale
}

/// Merges raw rows into buckets of `bucket_ms` (per device and model): counts add up, the
/// median is the request-weighted mean of the medians, the tails and RSS take the largest.
pub fn downsample(rows: &[TelemetryRow], bucket_ms: i64) -> Vec<TelemetryRow> {
    let mut out: Vec<TelemetryRow> = Vec::new();
    let mut weights: Vec<f64> = Vec::new();
    for r in rows {
        let start = r.window_start_ms - r.window_start_ms.rem_euclid(bucket_ms);
        let i = match out.iter().position(|b| {
            b.device_id == r.device_id && b.window_start_ms == start && b.model_id == r.model_id
        }) {
            Some(i) => i,
            None => {
                out.push(TelemetryRow {
                    resolution_ms: bucket_ms,
                    window_start_ms: start,
                    window_ms: 0,
                    requests: 0,
                    errors: 0,
                    rejected: 0,
                    p50_ms: None,
                    p90_ms: None,
                    p99_ms: None,
                    rss_bytes: 0,
                    throttled: 0,
                    dropped_windows: 0,
                    stats: None,
                    ..r.clone()
                });
                weights.push(0.0);
                out.len() - 1
            }
        };
        let b = &mut out[i];
        let ok = (r.requests - r.errors).max(0) as f64;
        if let Some(p50) = r.p50_ms.filter(|_| ok > 0.0) {
            let w = weights[i];
            b.p50_ms = Some((b.p50_ms.unwrap_or(0.0) * w + p50 * ok) / (w + ok));
            weights[i] += ok;
        }
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        b.p90_ms = max(b.p90_ms, r.p90_ms);
        b.p99_ms = max(b.p99_ms, r.p99_ms);
        b.window_ms += r.window_ms;
        b.requests += r.requests;
        b.errors += r.errors;
        b.rejected += r.rejected;
        b.rss_bytes = b.rss_bytes.max(r.rss_bytes);
        b.throttled += r.throttled.min(1);
        b.dropped_windows += r.dropped_windows;
        b.temperature_c = max(b.temperature_c, r.temperature_c);
        b.clock_mhz = match (b.clock_mhz, r.clock_mhz) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
    }
    out
}

/// Downsamples what aged: raw windows older than [`RAW_KEEP_MS`] into 5-minute buckets, and
/// those older than [`BUCKET_5M_KEEP_MS`] into hourly ones. Returns the rows merged.
pub async fn compact(db: &Db, now: i64) -> anyhow::Result<u64> {
    let mut merged = 0;
    for (under, bucket, keep) in
        [(BUCKET_5M, BUCKET_5M, RAW_KEEP_MS), (BUCKET_1H, BUCKET_1H, BUCKET_5M_KEEP_MS)]
    {
        // Whole buckets only: the cut is aligned to the bucket.
        let cut = (now - keep) - (now - keep).rem_euclid(bucket);
        let rows = db.raw_telemetry_before(under, cut).await?;
        if rows.is_empty() {
            continue;
        }
        for b in downsample(&rows, bucket) {
            db.insert_telemetry(&b).await?;
        }
        merged += db.delete_raw_telemetry(under, cut).await?;
    }
    Ok(merged)
}

#[cfg(test)]
mod tests;
