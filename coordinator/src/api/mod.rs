//! The HTTP API (axum). `app(state)` builds the router, so tests drive it with `oneshot`
//! without a socket. Every error is a JSON body `{"error": "..."}`; internal errors are logged
//! in full and answered generically. Every route but health, trust, keys and artifacts needs a bearer
//! token ([`auth`]); artifacts need the capability in their URL.

pub mod auth;
mod campaigns;
mod compare;
mod deployments;
mod devices;
pub mod enroll;
mod keys;
mod mlflow;
mod models;
mod pipelines;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::Notify;

use crate::artifacts::{ArtifactStore, Signer};
use crate::db::Db;
use crate::metrics::Metrics;

pub use campaigns::{CampaignView, campaign_view};
pub use deployments::DeploymentView;
pub use pipelines::PipelineView;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// Database.
    pub db: Db,
    /// Artifact files.
    pub artifacts: ArtifactStore,
    /// Signing key (public half served at `/api/v1/trust`).
    pub signer: Signer,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Wakes the engine after a campaign is created.
    pub poke: Arc<Notify>,
    /// Wakes the pipeline runner after a pipeline is created or cancelled.
    pub pipelines: Arc<Notify>,
    /// Wakes the rollout task after a deployment is created or rolled back.
    pub rollout: Arc<Notify>,
    /// Largest accepted model upload, bytes.
    pub upload_limit: u64,
    /// Where DVC data sets named by pipelines are copied once verified (`DATA_DIR/dvc`).
    pub dvc_dir: std::path::PathBuf,
    /// `POST /api/v1/models/register` accepts only files under this folder (canonical path);
    /// `None` disables registration by path.
    pub import_dir: Option<std::path::PathBuf>,
    /// The MLflow mirror, when the coordinator writes to MLflow.
    pub mlflow: Option<Arc<crate::mlflow::Mlflow>>,
    /// The CA and TLS state; `None` on plain transport (`--plain`, loopback only).
    pub pki: Option<Arc<crate::pki::Pki>>,
    /// The MQTT client (decommissioning clears a device's retained status); `None` in tests.
    pub bus: Option<crate::mqtt::Bus>,
}

/// An API error.
#[derive(Debug)]
pub enum ApiError {
    /// 400 with a message for the client.
    BadRequest(String),
    /// 401: no token, or an unknown or revoked one.
    Unauthorized(String),
    /// 403: the token's role, or the capability, does not allow this.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409: the resource's state does not allow this (e.g. cancelling an ended pipeline).
    Conflict(String),
    /// 413.
    TooLarge(String),
    /// 422: understood but refused (e.g. tract cannot load the model).
    Unprocessable(String),
    /// 500; the cause is logged, not sent.
    Internal(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized(m) => {
                let body = Json(serde_json::json!({ "error": m }));
                let challenge = [(axum::http::header::WWW_AUTHENTICATE, "Bearer")];
                return (StatusCode::UNAUTHORIZED, challenge, body).into_response();
            }
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error (see coordinator log)".to_string(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

/// The router.
pub fn app(state: AppState) -> Router {
    let upload_limit = state.upload_limit as usize + 1;
    let open = Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/trust", get(trust))
        .route("/api/v1/keys", get(keys::chain))
        .route("/artifacts/{sha}", get(models::artifact))
        .route("/api/v1/pki/ca", get(enroll::ca))
        .route("/api/v1/enroll", post(enroll::enroll))
        .route("/api/v1/enroll/renew", post(enroll::renew))
        .route("/api/v1/enroll/reenroll", post(enroll::reenroll));
    Router::new()
        .route("/api/v1/metrics", get(metrics_json))
        .route("/metrics", get(metrics_prometheus))
        .route(
            "/api/v1/models",
            get(models::list).post(models::upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/api/v1/models/register", post(models::register_path))
        .route("/api/v1/models/{key}", get(models::get))
        .route("/api/v1/keys/rotate", post(keys::rotate))
        .route("/api/v1/devices", get(devices::list))
        .route("/api/v1/devices/{id}", get(devices::get))
        .route("/api/v1/enroll/tokens", get(enroll::list_tokens).post(enroll::create_token))
        .route("/api/v1/identities", get(enroll::identities))
        .route("/api/v1/devices/{id}/identity", get(enroll::identity))
        .route("/api/v1/devices/{id}/approve", post(enroll::approve))
        .route("/api/v1/devices/{id}/revoke", post(enroll::revoke))
        .route("/api/v1/devices/{id}/decommission", post(enroll::decommission))
        .route("/api/v1/campaigns", get(campaigns::list).post(campaigns::create))
        .route("/api/v1/campaigns/{id}", get(campaigns::get))
        .route("/api/v1/imported-results", post(compare::import))
        .route("/api/v1/compare", get(compare::compare))
        .route("/api/v1/mlflow", get(mlflow::status))
        .route("/api/v1/mlflow/sync", post(mlflow::sync))
        .route("/api/v1/pipelines", get(pipelines::list).post(pipelines::create))
        .route("/api/v1/pipelines/{id}", get(pipelines::get))
        .route("/api/v1/pipelines/{id}/cancel", post(pipelines::cancel))
        .route("/api/v1/pipelines/{id}/report", get(pipelines::report))
        .route("/api/v1/deployments", get(deployments::list).post(deployments::create))
        .route("/api/v1/deployments/{id}", get(deployments::get))
        .route("/api/v1/deployments/{id}/rollback", post(deployments::rollback))
        .route("/api/v1/device-models", get(deployments::device_models))
        .route("/api/v1/devices/{id}/telemetry", get(deployments::telemetry))
        .route("/api/v1/alerts", get(deployments::alerts))
        .route("/api/v1/suggestions", get(deployments::suggestions))
        .route("/api/v1/suggestions/{id}", get(deployments::suggestion))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token))
        .merge(open)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

async fn health(State(s): State<AppState>) -> Json<serde_json::Value> {
    let connected = s.metrics.bus_connected.load(std::sync::atomic::Ordering::Relaxed) == 1;
    Json(serde_json::json!({
        "status": "ok",
        "version": hone_common::HONE_VERSION,
        "mqtt_connected": connected,
        "database": if s.db.is_postgres { "postgres" } else { "sqlite" },
    }))
}

async fn trust(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "public_key": s.signer.public_hex(), "algorithm": "ed25519" }))
}

async fn metrics_json(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(s.metrics.json())
}

async fn metrics_prometheus(State(s): State<AppState>) -> ApiResult<Response> {
    let mut text = s.metrics.prometheus();
    text.push_str(&deployments::prometheus(&s).await?);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// Extracts a path parameter.
type P = Path<String>;

#[cfg(test)]
mod tests;
