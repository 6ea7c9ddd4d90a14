//! `/api/v1/campaigns`: create (idempotent with a client id), list, and the per-campaign view.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, AppState, P};
use crate::campaign::{self, CampaignRequest, CampaignSpec, DeviceSelector};
use crate::db::{CampaignRow, CreateOutcome, Db, JobRow};

/// Counts of jobs by state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    /// All jobs.
    pub total: usize,
    /// Waiting.
    pub queued: usize,
    /// Sent, not yet accepted.
    pub dispatched: usize,
    /// Accepted by the agent.
    pub running: usize,
    /// Result stored.
    pub done: usize,
    /// Failed for good.
    pub failed: usize,
}

/// One (model, device) line of a campaign.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    /// Job id.
    pub job: String,
    /// Model name.
    pub model: String,
    /// Model id.
    pub model_id: String,
    /// Device id.
    pub device: String,
    /// Device profile.
    pub profile: Option<String>,
    /// Job state.
    pub state: String,
    /// Dispatches so far.
    pub attempts: i64,
    /// Last error, if any.
    pub error: Option<String>,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// p90, ms.
    pub p90_ms: Option<f64>,
    /// p99, ms.
    pub p99_ms: Option<f64>,
    /// Mean, ms.
    pub mean_ms: Option<f64>,
    /// Load time, ms.
    pub load_ms: Option<f64>,
    /// Peak RSS of the benchmark process, bytes.
    pub peak_rss_bytes: Option<i64>,
    /// Measured iterations.
    pub iterations: Option<i64>,
    /// Inputs were synthetic.
    pub synthetic_inputs: Option<bool>,
    /// Measurement mode.
    pub mode: Option<String>,
    /// `emulated`, `unthrottled: reason`, `native` or `none` (host as is).
    pub emulation: Option<String>,
    /// The runtime that measured, with its version and threads (`onnxruntime 1.31.1, 2
    /// threads, no spinning`).
    #[serde(default)]
    pub runtime: Option<String>,
    /// What the figure does not stand for: limits of the profile that were not applied, and
    /// why an int8 figure under emulation is not the board's.
    #[serde(default)]
    pub caveats: Vec<String>,
    /// `cold`: process start to first inference, ms.
    pub cold_start_ms: Option<f64>,
    /// Requests the device served to applications while this was measured (`None`: it was
    /// not serving).
    #[serde(default)]
    pub served_requests: Option<u64>,
    /// Last dispatch, Unix ms.
    #[serde(default)]
    pub dispatched_at_ms: Option<i64>,
    /// Time from dispatch to the coordinator's receipt of the agent's acceptance, ms.
    pub dispatch_ms: Option<i64>,
    /// Time from dispatch to the result, ms (includes download and benchmark).
    pub turnaround_ms: Option<i64>,
}

/// Everything about a campaign.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CampaignView {
    /// Id.
    pub id: String,
    /// `running`, `done` or `cancelled`.
    pub state: String,
    /// Creation, Unix ms.
    pub created_at_ms: i64,
    /// Completion, Unix ms.
    pub finished_at_ms: Option<i64>,
    /// Stored spec.
    pub spec: serde_json::Value,
    /// Job counts.
    pub progress: Progress,
    /// One line per job.
    pub lines: Vec<Line>,
}

/// Builds the view of one campaign.
pub async fn campaign_view(db: &Db, campaign: CampaignRow) -> anyhow::Result<CampaignView> {
    let jobs = db.campaign_jobs(&campaign.id).await?;
    let results: HashMap<String, crate::db::ResultRow> = db
        .campaign_results(&campaign.id)
        .await?
        .into_iter()
        .map(|r| (r.job_id.clone(), r))
        .collect();
    let names: HashMap<String, String> =
        db.models().await?.into_iter().map(|m| (m.id, m.name)).collect();
    let devices: HashMap<String, Option<String>> =
        db.devices().await?.into_iter().map(|d| (d.id, d.profile)).collect();
    let mut progress = Progress { total: jobs.len(), ..Default::default() };
    for j in &jobs {
        match j.state.as_str() {
            "queued" => progress.queued += 1,
            "dispatched" => progress.dispatched += 1,
            "running" => progress.running += 1,
            "done" => progress.done += 1,
            _ => progress.failed += 1,
        }
    }
    let lines = jobs.iter().map(|j| line(j, results.get(&j.id), &names, &devices)).collect();
    Ok(CampaignView {
        id: campaign.id,
        state: campaign.state,
        created_at_ms: campaign.created_at_ms,
        finished_at_ms: campaign.finished_at_ms,
        spec: campaign.spec,
        progress,
        lines,
    })
}

fn line(
    j: &JobRow,
    r: Option<&crate::db::ResultRow>,
    names: &HashMap<String, String>,
    devices: &HashMap<String, Option<String>>,
) -> Line {
    Line {
        job: j.id.clone(),
        model: names.get(&j.model_id).cloned().unwrap_or_else(|| j.model_id.clone()),
        model_id: j.model_id.clone(),
        device: j.device_id.clone(),
        profile: r
            .and_then(|r| r.profile.clone())
            .or_else(|| devices.get(&j.device_id).cloned().flatten()),
        state: j.state.clone(),
        attempts: j.attempt,
        error: if j.state == "done" { None } else { j.last_error.clone() },
        p50_ms: r.map(|r| r.latency.p50_ms),
        p90_ms: r.map(|r| r.latency.p90_ms),
        p99_ms: r.map(|r| r.latency.p99_ms),
        mean_ms: r.map(|r| r.latency.mean_ms),
        load_ms: r.map(|r| r.load_ms),
        peak_rss_bytes: r.map(|r| r.peak_rss_bytes),
        iterations: r.map(|r| r.iterations),
        synthetic_inputs: r.map(|r| r.synthetic_inputs),
        mode: r
            .and_then(|r| {
                serde_json::from_value::<hone_common::bench::BenchMode>(r.report["mode"].clone())
                    .ok()
            })
            .map(|m| m.name().to_string()),
        emulation: r
            .and_then(|r| {
                serde_json::from_value::<hone_common::bench::EmulationStatus>(
                    r.report["emulation"]["status"].clone(),
                )
                .ok()
            })
            .map(|s| match s {
                hone_common::bench::EmulationStatus::Emulated => "emulated".to_string(),
                hone_common::bench::EmulationStatus::Unthrottled { reason } => {
                    format!("unthrottled: {reason}")
                }
                hone_common::bench::EmulationStatus::Native => "native".to_string(),
                hone_common::bench::EmulationStatus::None => "none".to_string(),
            }),
        runtime: r.and_then(|r| {
            let name = r.report["runtime"].as_str()?;
            let execution = serde_json::from_value::<hone_common::bench::Execution>(
                r.report["execution"].clone(),
            )
            .ok()?;
            Some(format!(
                "{name}, {} thread{}{}",
                execution.threads,
                if execution.threads == 1 { "" } else { "s" },
                if execution.spinning { ", spinning" } else { ", no spinning" }
            ))
        }),
        caveats: r
            .and_then(|r| {
                serde_json::from_value::<Vec<String>>(r.report["emulation"]["not_enforced"].clone())
                    .ok()
            })
            .unwrap_or_default(),
        cold_start_ms: r.and_then(|r| r.report["cold_start_ms"].as_f64()),
        served_requests: r.and_then(|r| r.report["served_requests"].as_u64()),
        dispatched_at_ms: j.dispatched_at_ms,
        dispatch_ms: j.dispatched_at_ms.zip(j.accepted_at_ms).map(|(d, a)| a - d),
        turnaround_ms: r.zip(j.dispatched_at_ms).map(|(r, d)| r.received_at_ms - d),
    }
}

pub(super) async fn create(
    State(s): State<AppState>,
    Json(req): Json<CampaignRequest>,
) -> ApiResult<(StatusCode, Json<CampaignView>)> {
    campaign::validate(&req).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let id = req
        .id
        .clone()
        .unwrap_or_else(|| format!("c-{}", ulid::Ulid::new().to_string().to_lowercase()));
    if let Some(existing) = s.db.campaign(&id).await? {
        return Ok((StatusCode::OK, Json(campaign_view(&s.db, existing).await?)));
    }
    let selector: DeviceSelector = req.devices.parse().map_err(ApiError::BadRequest)?;
    let mut models = Vec::new();
    for key in &req.models {
        let m =
            s.db.find_model(key)
                .await?
                .ok_or_else(|| ApiError::BadRequest(format!("no model `{key}`")))?;
        if let Some(why) = crate::models::runtime_refusal(&m, req.bench.runtime) {
            return Err(ApiError::BadRequest(why));
        }
        if !models.contains(&m.id) {
            models.push(m.id);
        }
    }
    let devices = s.db.devices().await?;
    let device_ids = campaign::select_devices(&selector, &devices, req.bench.runtime)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let plan = campaign::plan_jobs(&models, &device_ids)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let spec = CampaignSpec {
        models,
        devices: device_ids,
        selector,
        bench: req.bench,
        job_timeout_ms: req.job_timeout_ms,
        max_attempts: req.max_attempts,
        max_parallel: req.max_parallel,
        reassign_within_class: false,
    };
    let jobs: Vec<(String, String, String, i64)> = plan
        .into_iter()
        .enumerate()
        .map(|(i, (m, d))| (format!("{id}-j{i:03}"), m, d, i64::from(spec.max_attempts)))
        .collect();
    let now = hone_common::clock::now_ms() as i64;
    let created = s.db.create_campaign(&id, &serde_json::to_value(&spec)?, &jobs, now).await?;
    let row =
        s.db.campaign(&id)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("campaign vanished")))?;
    s.poke.notify_one();
    tracing::info!(campaign = %id, jobs = jobs.len(), "campaign created");
    Ok((
        if created == CreateOutcome::Created { StatusCode::CREATED } else { StatusCode::OK },
        Json(campaign_view(&s.db, row).await?),
    ))
}

pub(super) async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<CampaignView>>> {
    let mut out = Vec::new();
    for c in s.db.campaigns(None).await? {
        out.push(campaign_view(&s.db, c).await?);
    }
    Ok(Json(out))
}

pub(super) async fn get(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
) -> ApiResult<Json<CampaignView>> {
    let c =
        s.db.campaign(&id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no campaign `{id}`")))?;
    Ok(Json(campaign_view(&s.db, c).await?))
}
