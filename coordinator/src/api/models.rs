//! `/api/v1/models` and `/artifacts/{sha}`: registration (upload or path) behind the tract gate,
//! and artifact bytes with HTTP Range support.

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use tower::ServiceExt;

use super::{ApiError, ApiResult, AppState, P};
use crate::artifacts::IncomingError;
use crate::db::ModelRow;
use crate::models::ModelError;

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    name: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RegisterPath {
    path: String,
    name: Option<String>,
}

pub(super) async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<ModelRow>>> {
    Ok(Json(s.db.models().await?))
}

pub(super) async fn get(
    State(s): State<AppState>,
    axum::extract::Path(key): P,
) -> ApiResult<Json<ModelRow>> {
    s.db.find_model(&key)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no model `{key}`")))
}

/// `POST /api/v1/models?name=N` with the ONNX bytes as the body.
pub(super) async fn upload(
    State(s): State<AppState>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<ModelRow>)> {
    let mut incoming = s.artifacts.begin(s.upload_limit).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the upload: {e}")))?;
        incoming.write(&chunk).await.map_err(incoming_error)?;
    }
    let name = q.name.unwrap_or_else(|| "model".to_string());
    register(&s, incoming, name).await
}

/// `POST /api/v1/models/register` with `{"path": "...", "name": "..."}`: a file on the
/// coordinator's disk.
pub(super) async fn register_path(
    State(s): State<AppState>,
    Json(req): Json<RegisterPath>,
) -> ApiResult<(StatusCode, Json<ModelRow>)> {
    let path = std::path::PathBuf::from(&req.path);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::BadRequest(format!("cannot open {}: {e}", path.display())))?;
    let mut incoming = s.artifacts.begin(s.upload_limit).await?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        use tokio::io::AsyncReadExt;
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| ApiError::BadRequest(format!("reading {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        incoming.write(&buf[..n]).await.map_err(incoming_error)?;
    }
    let name = req.name.unwrap_or_else(|| {
        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
    });
    register(&s, incoming, name).await
}

fn incoming_error(e: IncomingError) -> ApiError {
    match e {
        IncomingError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
        IncomingError::Io(io) => ApiError::Internal(io.into()),
    }
}

async fn register(
    s: &AppState,
    incoming: crate::artifacts::Incoming,
    name: String,
) -> ApiResult<(StatusCode, Json<ModelRow>)> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest("model name must be 1-128 printable characters".into()));
    }
    let received = incoming.finish().await.map_err(incoming_error)?;
    let sha = hex::encode(received.sha256);
    if let Some(existing) = s.db.model_by_sha(&sha).await? {
        received.discard().await;
        return Ok((StatusCode::OK, Json(existing)));
    }
    let summary = match crate::models::check_file(&received.tmp, &Default::default()).await {
        Ok(summary) => summary,
        Err(e) => {
            received.discard().await;
            return Err(match e {
                ModelError::Io(io) => ApiError::Internal(io.into()),
                other => ApiError::Unprocessable(other.to_string()),
            });
        }
    };
    let size = received.size as i64;
    received.commit(&s.artifacts).await?;
    let row = ModelRow {
        id: format!("m-{}", &sha[..16]),
        name,
        sha256: sha,
        size_bytes: size,
        summary,
        created_at_ms: crate::campaign::engine::now_ms(),
    };
    let stored = s.db.insert_model(&row).await?;
    tracing::info!(model = %stored.id, name = %stored.name, size, "model registered");
    Ok((StatusCode::CREATED, Json(stored)))
}

/// `GET /artifacts/{sha}`: the bytes, with Range support (tower-http's `ServeFile`).
pub(super) async fn artifact(
    State(s): State<AppState>,
    axum::extract::Path(sha): P,
    request: Request,
) -> Result<Response, ApiError> {
    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
        return Err(ApiError::BadRequest("artifact names are lowercase sha256 hex digests".into()));
    }
    let path = s.artifacts.path(&sha);
    if !path.exists() {
        return Err(ApiError::NotFound(format!("no artifact {sha}")));
    }
    let resp = tower_http::services::ServeFile::new(path)
        .oneshot(request)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(resp.into_response())
}
