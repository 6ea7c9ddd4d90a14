//! `/api/v1/deployments`, serving telemetry, alerts and suggestions.
//!
//! - `POST /api/v1/deployments` (operator): a [`DeployRequest`]; idempotent with a client id
//!   (201 when created, 200 with the stored deployment when the id exists).
//! - `GET /api/v1/deployments`, `GET /api/v1/deployments/{id}` (with its devices),
//!   `POST /api/v1/deployments/{id}/rollback` (operator).
//! - `GET /api/v1/device-models`: desired and active model per device.
//! - `GET /api/v1/devices/{id}/telemetry?since_ms=&limit=`: the device's time series.
//! - `GET /api/v1/alerts?open=true`, `GET /api/v1/suggestions`, `GET /api/v1/suggestions/{id}`.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, AppState, P};
use crate::db::{
    AlertRow, DeploymentDeviceRow, DeploymentRow, DeviceModelRow, SuggestionRow, TelemetryRow,
};
use crate::deploy::{CreateError, DeployRequest};

/// A deployment with its devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    /// The deployment.
    #[serde(flatten)]
    pub deployment: DeploymentRow,
    /// Its devices, canary first.
    pub devices: Vec<DeploymentDeviceRow>,
}

async fn view(s: &AppState, d: DeploymentRow) -> ApiResult<DeploymentView> {
    let devices = s.db.deployment_devices(&d.id).await?;
    Ok(DeploymentView { deployment: d, devices })
}

/// `POST /api/v1/deployments`.
pub(super) async fn create(
    State(s): State<AppState>,
    Json(req): Json<DeployRequest>,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    let now = hone_common::clock::now_ms() as i64;
    if let Some(data) = &req.reference_data {
        let spec = hone_learn::eval::DataSpec::parse(data)
            .map_err(|e| ApiError::BadRequest(format!("reference data: {e:#}")))?;
        if !matches!(spec.source, hone_learn::eval::DataSource::Builtin(_))
            && s.import_dir.is_none()
        {
            return Err(ApiError::Forbidden(
                "reference data paths are read on the coordinator: start it with --import-dir, or use a built-in data set".into(),
            ));
        }
    }
    let (id, created) = crate::deploy::create(&s.db, &req, now).await.map_err(|e| match e {
        CreateError::Invalid(m) => ApiError::BadRequest(m),
        CreateError::Busy(m) => ApiError::Conflict(m),
        CreateError::Db(e) => ApiError::Internal(e.into()),
    })?;
    let d = s.db.deployment(&id).await?.ok_or_else(|| ApiError::NotFound(id.clone()))?;
    if created {
        tracing::info!(deployment = %id, model = %d.model_id, "deployment created");
        spawn_reference(&s, &d);
        s.rollout.notify_one();
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view(&s, d).await?)))
}

/// Reference statistics for the deployment's model, in the background.
pub(crate) fn spawn_reference(s: &AppState, d: &DeploymentRow) {
    crate::deploy::reference::spawn(&s.db, &s.artifacts, s.import_dir.clone(), d);
}

/// `GET /api/v1/deployments`.
pub(super) async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<DeploymentRow>>> {
    Ok(Json(s.db.deployments(false).await?))
}

/// `GET /api/v1/deployments/{id}`.
pub(super) async fn get(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
) -> ApiResult<Json<DeploymentView>> {
    let d =
        s.db.deployment(&id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no deployment `{id}`")))?;
    Ok(Json(view(&s, d).await?))
}

/// Body of a rollback.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RollbackBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/deployments/{id}/rollback`.
pub(super) async fn rollback(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
    body: Option<Json<RollbackBody>>,
) -> ApiResult<Json<DeploymentView>> {
    let d =
        s.db.deployment(&id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no deployment `{id}`")))?;
    let reason =
        body.and_then(|Json(b)| b.reason).unwrap_or_else(|| "rolled back by an operator".into());
    let now = hone_common::clock::now_ms() as i64;
    if !crate::deploy::rollback(&s.db, &id, &reason, now).await? {
        return Err(ApiError::Conflict(format!(
            "deployment `{id}` cannot be rolled back ({})",
            d.state
        )));
    }
    s.rollout.notify_one();
    let d = s.db.deployment(&id).await?.ok_or_else(|| ApiError::NotFound(id.clone()))?;
    Ok(Json(view(&s, d).await?))
}

/// `GET /api/v1/device-models`.
pub(super) async fn device_models(
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<DeviceModelRow>>> {
    Ok(Json(s.db.device_models().await?))
}

/// Query of the telemetry route.
#[derive(Debug, Deserialize)]
pub(super) struct TelemetryQuery {
    #[serde(default)]
    since_ms: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /api/v1/devices/{id}/telemetry`.
pub(super) async fn telemetry(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
    Query(q): Query<TelemetryQuery>,
) -> ApiResult<Json<Vec<TelemetryRow>>> {
    if s.db.device(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no device `{id}`")));
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(Json(s.db.telemetry(&id, q.since_ms.unwrap_or(0), limit).await?))
}

/// Query of the alerts route.
#[derive(Debug, Deserialize)]
pub(super) struct AlertQuery {
    #[serde(default)]
    open: Option<bool>,
}

/// `GET /api/v1/alerts`.
pub(super) async fn alerts(
    State(s): State<AppState>,
    Query(q): Query<AlertQuery>,
) -> ApiResult<Json<Vec<AlertRow>>> {
    Ok(Json(s.db.alerts(q.open.unwrap_or(false)).await?))
}

/// `GET /api/v1/suggestions`.
pub(super) async fn suggestions(State(s): State<AppState>) -> ApiResult<Json<Vec<SuggestionRow>>> {
    Ok(Json(s.db.suggestions().await?))
}

/// `GET /api/v1/suggestions/{id}`.
pub(super) async fn suggestion(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
) -> ApiResult<Json<SuggestionRow>> {
    s.db.suggestion(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no suggestion `{id}`")))
}

/// Prometheus lines for serving: the newest raw window of every device, and open alerts.
pub(super) async fn prometheus(s: &AppState) -> anyhow::Result<String> {
    let mut out = String::new();
    let gauges: [(&str, &str); 7] = [
        ("serving_requests", "Requests answered in the device's latest telemetry window"),
        ("serving_errors", "Errors in the latest window"),
        ("serving_rejected", "Requests refused (503) in the latest window"),
        ("serving_p50_ms", "Median latency of the latest window, ms"),
        ("serving_p99_ms", "99th percentile latency of the latest window, ms"),
        ("serving_rss_bytes", "RSS of the serving process at the latest window"),
        (
            "serving_dropped_windows",
            "Telemetry windows the agent could not deliver before the latest",
        ),
    ];
    let mut latest: Vec<TelemetryRow> = Vec::new();
    for d in s.db.devices().await? {
        if let Some(w) = s.db.telemetry(&d.id, 0, 1).await?.pop() {
            latest.push(w);
        }
    }
    for (name, help) in gauges {
        out.push_str(&format!("# HELP hone_{name} {help}\n# TYPE hone_{name} gauge\n"));
        for w in &latest {
            let value = match name {
                "serving_requests" => Some(w.requests as f64),
                "serving_errors" => Some(w.errors as f64),
                "serving_rejected" => Some(w.rejected as f64),
                "serving_p50_ms" => w.p50_ms,
                "serving_p99_ms" => w.p99_ms,
                "serving_rss_bytes" => Some(w.rss_bytes as f64),
                _ => Some(w.dropped_windows as f64),
            };
            if let Some(v) = value {
                out.push_str(&format!(
                    "hone_{name}{{device=\"{}\",model=\"{}\"}} {v}\n",
                    w.device_id,
                    w.model_id.as_deref().unwrap_or("")
                ));
            }
        }
    }
    let open = s.db.alerts(true).await?;
    out.push_str("# HELP hone_alerts_open Open monitoring alerts\n# TYPE hone_alerts_open gauge\n");
    out.push_str(&format!("hone_alerts_open {}\n", open.len()));
    Ok(out)
}
