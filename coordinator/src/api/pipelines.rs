//! `/api/v1/pipelines`: create (idempotent with a client id; the request is checked before any
//! work starts), list, show (progress and result), cancel.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use hone_learn::data::dvc::DvcRef;
use hone_learn::eval::{DataSource, DataSpec};

use super::{ApiError, ApiResult, AppState, P};
use crate::db::PipelineRow;
use crate::pipeline::request::PipelineRequest;
use crate::pipeline::result::PipelineResult;

/// A pipeline as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineView {
    /// Id.
    pub id: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Stage reached.
    pub stage: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Creation, Unix ms.
    pub created_at_ms: i64,
    /// End, Unix ms.
    pub finished_at_ms: Option<i64>,
    /// The request.
    pub request: serde_json::Value,
    /// The result so far (final once `state` is `done`).
    pub result: Option<PipelineResult>,
}

fn view(p: PipelineRow) -> PipelineView {
    let mut result: Option<PipelineResult> = p.result.and_then(|r| serde_json::from_value(r).ok());
    if let Some(r) = result.as_mut() {
        r.state = p.state.clone();
        r.stage = p.stage.clone();
        r.error = p.error.clone();
    }
    PipelineView {
        id: p.id,
        state: p.state,
        stage: p.stage,
        error: p.error,
        created_at_ms: p.created_at_ms,
        finished_at_ms: p.finished_at_ms,
        request: p.request,
        result,
    }
}

/// `POST /api/v1/pipelines`.
pub(super) async fn create(
    State(s): State<AppState>,
    Json(req): Json<PipelineRequest>,
) -> ApiResult<(StatusCode, Json<PipelineView>)> {
    req.check().map_err(ApiError::BadRequest)?;
    let id = req
        .id
        .clone()
        .unwrap_or_else(|| format!("p-{}", ulid::Ulid::new().to_string().to_lowercase()));
    if let Some(existing) = s.db.pipeline(&id).await? {
        return Ok((StatusCode::OK, Json(view(existing))));
    }
    let parent =
        s.db.find_model(&req.model)
            .await?
            .ok_or_else(|| ApiError::BadRequest(format!("no model `{}`", req.model)))?;
    // The parent is measured in tract on every class.
    if let Some(why) = crate::models::runtime_refusal(&parent, hone_common::bench::Runtime::Tract) {
        return Err(ApiError::BadRequest(format!(
            "{why}; a pipeline measures its parent in tract, so compress a model tract runs"
        )));
    }
    // Every class needs an online agent before any work starts.
    let devices = s.db.devices().await?;
    for class in req.classes() {
        if !devices.iter().any(|d| d.dispatchable() && d.profile.as_deref() == Some(&class)) {
            let known: Vec<String> = devices
                .iter()
                .filter(|d| d.dispatchable())
                .filter_map(|d| d.profile.clone())
                .collect();
            return Err(ApiError::BadRequest(format!(
                "no online agent of device class `{class}` (online classes: {})",
                if known.is_empty() { "none".into() } else { known.join(", ") }
            )));
        }
    }
    // Paths name files on the coordinator: only under its import folder.
    let mut spec = req.data.clone();
    // A DVC data set given by its identity (a stored request sent back, e.g. by a suggestion)
    // is read again from its repository: an identity sent by a client is never trusted.
    if let Some(identity) = spec.dataset.take() {
        spec.source = DataSource::Dvc(identity.reference().to_string());
    }
    match &spec.source {
        DataSource::Path(path) => {
            spec.source = DataSource::Path(under_import(&s, path, "data").await?);
        }
        DataSource::Dvc(reference) => spec = resolve_dvc(&s, reference, spec.clone()).await?,
        DataSource::Builtin(_) => {}
    }
    if let Some(t) = &spec.tokenizer {
        spec.tokenizer = Some(under_import(&s, t, "tokenizer").await?);
    }
    if let Some(m) = &spec.model_dir {
        spec.model_dir = Some(under_import(&s, m, "model folder").await?);
    }
    // The data must fit the model as the devices run it, and have labels for an accuracy budget.
    let model_path = s.artifacts.path(&parent.sha256);
    let shapes = if req.inputs.is_empty() {
        parent
            .summary
            .get("input_shapes")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    } else {
        req.inputs.clone()
    };
    let (check_spec, needs_labels) = (spec.clone(), req.max_accuracy_drop.is_some());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let graph = hone_graph::Graph::load(&model_path)?;
        let data = hone_learn::eval::EvalData::open(&check_spec)?;
        crate::pipeline::request::check_data(
            &graph,
            &data,
            &shapes,
            needs_labels,
            &check_spec.describe(),
        )
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(|e| ApiError::BadRequest(format!("{e:#}")))?;
    let mut stored = req.clone();
    stored.id = Some(id.clone());
    stored.model = parent.id.clone();
    stored.data = spec;
    let now = hone_common::clock::now_ms() as i64;
    let created = s.db.create_pipeline(&id, &serde_json::to_value(&stored)?, now).await?;
    if created && let Some(suggestion) = &stored.from_suggestion {
        s.db.set_suggestion_pipeline(suggestion, &id).await?;
    }
    s.pipelines.notify_one();
    let row =
        s.db.pipeline(&id)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("pipeline vanished")))?;
    tracing::info!(pipeline = %id, model = %parent.id, "pipeline created");
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view(row))))
}

/// A DVC data set (`dvc://PATH[@REV]`, the path relative to the import folder or absolute) whose
/// repository is under the import folder, resolved once into a verified copy under
/// [`AppState::dvc_dir`]: the spec stored with the pipeline names that copy and the data set's
/// identity, so the runner reads (and checks again) exactly what was verified here.
async fn resolve_dvc(s: &AppState, reference: &str, spec: DataSpec) -> ApiResult<DataSpec> {
    let Some(import) = s.import_dir.clone() else {
        return Err(ApiError::Forbidden(
            "a DVC data set is read on the coordinator: start it with --import-dir and put the \
             repository there, or use a built-in data set"
                .into(),
        ));
    };
    let r = DvcRef::parse(reference).map_err(|e| ApiError::BadRequest(format!("{e:#}")))?;
    let refused = || {
        ApiError::BadRequest(format!(
            "cannot read the data `{reference}`: its repository is not under the coordinator's \
             import folder"
        ))
    };
    let r = r.relative_to(&import);
    let loc = r.locate().map_err(|_| refused())?;
    let root = tokio::fs::canonicalize(&loc.root).await.map_err(|_| refused())?;
    if !root.starts_with(&import) {
        return Err(refused());
    }
    let inside = r.path.strip_prefix(&loc.root).map_err(|_| refused())?;
    let pinned = DvcRef { path: root.join(inside), rev: r.rev.clone() };
    let dir = s.dvc_dir.clone();
    let mut spec = spec;
    spec.source = DataSource::Dvc(pinned.to_string());
    tokio::task::spawn_blocking(move || spec.resolve_dvc(&dir))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::BadRequest(format!("{e:#}")))
}

/// `path` (relative to the import folder, or absolute) resolved inside the import folder; the
/// same refusal whatever the cause, so the route reveals nothing about the coordinator's disk.
async fn under_import(
    s: &AppState,
    path: &std::path::Path,
    what: &str,
) -> ApiResult<std::path::PathBuf> {
    let Some(import) = s.import_dir.clone() else {
        return Err(ApiError::Forbidden(format!(
            "the {what} path is read on the coordinator: start it with --import-dir and put the \
             files there, or use a built-in data set"
        )));
    };
    let refused = || {
        ApiError::BadRequest(format!(
            "cannot read the {what} `{}`: not under the coordinator's import folder",
            path.display()
        ))
    };
    let full = tokio::fs::canonicalize(import.join(path)).await.map_err(|_| refused())?;
    if !full.starts_with(&import) {
        return Err(refused());
    }
    Ok(full)
}

/// `GET /api/v1/pipelines`.
pub(super) async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<PipelineView>>> {
    Ok(Json(s.db.pipelines(false).await?.into_iter().map(view).collect()))
}

/// `GET /api/v1/pipelines/{id}`.
pub(super) async fn get(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
) -> ApiResult<Json<PipelineView>> {
    s.db.pipeline(&id)
        .await?
        .map(|p| Json(view(p)))
        .ok_or_else(|| ApiError::NotFound(format!("no pipeline `{id}`")))
}

/// `GET /api/v1/pipelines/{id}/report`: the HTML report of the result so far, rendered on the
/// fly (the same file `coordinator report` writes), with a CSP that forbids every fetch.
pub(super) async fn report(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    let p =
        s.db.pipeline(&id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no pipeline `{id}`")))?;
    let view = view(p);
    let Some(result) = view.result else {
        return Err(ApiError::Conflict(format!(
            "pipeline `{id}` has no result yet ({}, {})",
            view.state, view.stage
        )));
    };
    let html = crate::pipeline::report::render(&result);
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        html,
    )
        .into_response())
}

/// `POST /api/v1/pipelines/{id}/cancel`: the pipeline stops at its next step; its queued
/// measurements are cancelled.
pub(super) async fn cancel(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
) -> ApiResult<Json<PipelineView>> {
    let p =
        s.db.pipeline(&id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no pipeline `{id}`")))?;
    let now = hone_common::clock::now_ms() as i64;
    if !s
        .db
        .update_pipeline(&id, "cancelled", &p.stage, Some("cancelled by a user"), None, now)
        .await?
    {
        return Err(ApiError::Conflict(format!("pipeline `{id}` already ended ({})", p.state)));
    }
    let prefix = format!("{id}-");
    for c in s.db.campaigns(Some("running")).await? {
        if c.id.starts_with(&prefix) {
            crate::campaign::engine::cancel(&s.db, &s.metrics, &c.id, "the pipeline was cancelled")
                .await
                .map_err(ApiError::Internal)?;
        }
    }
    s.pipelines.notify_one();
    s.poke.notify_one();
    let row = s.db.pipeline(&id).await?.ok_or_else(|| ApiError::NotFound(id.clone()))?;
    Ok(Json(view(row)))
}
