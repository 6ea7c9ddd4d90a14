//! `/api/v1/mlflow`: the MLflow mirror's state, and `POST /api/v1/mlflow/sync` (what
//! `coordinator mlflow sync` calls): write every due record now, backoffs ignored.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::{ApiError, ApiResult, AppState};

fn mirror(s: &AppState) -> ApiResult<std::sync::Arc<crate::mlflow::Mlflow>> {
    s.mlflow.clone().ok_or_else(|| {
        ApiError::Conflict(
            "this coordinator does not write to MLflow: start it with --mlflow-url (or \
             HONE_MLFLOW_URL)"
                .into(),
        )
    })
}

/// `GET /api/v1/mlflow`: the server, and per record what was written and what failed.
pub(super) async fn status(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let m = mirror(&s)?;
    let rows = s.db.mlflow_rows().await?;
    let failing = rows.iter().filter(|r| r.last_error.is_some()).count();
    Ok(Json(serde_json::json!({ "mlflow": m.url(), "failing": failing, "records": rows })))
}

#[derive(Deserialize, Default)]
pub(super) struct SyncRequest {
    /// Write every record again, not only those due (idempotent: nothing is duplicated).
    #[serde(default)]
    all: bool,
}

/// `POST /api/v1/mlflow/sync`: writes what is due now and returns each record's outcome.
pub(super) async fn sync(
    State(s): State<AppState>,
    body: Option<Json<SyncRequest>>,
) -> ApiResult<Json<serde_json::Value>> {
    let m = mirror(&s)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let out = m.sync(req.all, true).await.map_err(ApiError::Internal)?;
    let failed = out.iter().filter(|x| x.outcome == "failed").count();
    Ok(Json(serde_json::json!({ "mlflow": m.url(), "failed": failed, "records": out })))
}
