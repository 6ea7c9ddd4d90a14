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
use hone_common::shapes::InputShapes;

use crate::db::ModelRow;
use crate::models::RegisterError;

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    name: Option<String>,
    /// Input shapes in text form, `x=1x3x48x320[,y=...]`, for inputs whose declared shapes are
    /// not fixed: the gate checks the model with them, and they are stored with the model.
    inputs: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Capability {
    exp: Option<u64>,
    cap: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RegisterPath {
    path: String,
    name: Option<String>,
    /// Input shapes, `{"x": [1, 3, 48, 320]}` (see [`UploadQuery`]).
    #[serde(default)]
    inputs: InputShapes,
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
    let inputs = match q.inputs.as_deref() {
        None | Some("") => InputShapes::default(),
        Some(text) => {
            InputShapes::parse(text).map_err(|e| ApiError::BadRequest(format!("inputs: {e}")))?
        }
    };
    register(&s, incoming, name, inputs).await
}

/// `POST /api/v1/models/register` with `{"path": "...", "name": "..."}`: a file under the
/// coordinator's import folder (`--import-dir`); a relative path is taken from that folder.
/// Whatever the cause (no such file, outside the folder, a directory, unreadable), the answer
/// is the same, so the route reveals nothing about the coordinator's disk.
pub(super) async fn register_path(
    State(s): State<AppState>,
    Json(req): Json<RegisterPath>,
) -> ApiResult<(StatusCode, Json<ModelRow>)> {
    let Some(import_dir) = s.import_dir.clone() else {
        return Err(ApiError::Forbidden(
            "registration by path is off: start the coordinator with --import-dir, or upload the file".into(),
        ));
    };
    let refused = || {
        ApiError::BadRequest(format!(
            "cannot register `{}`: not a readable file under the import folder",
            req.path
        ))
    };
    let path = tokio::fs::canonicalize(import_dir.join(&req.path)).await.map_err(|_| refused())?;
    if !path.starts_with(&import_dir) {
        return Err(refused());
    }
    let mut file = tokio::fs::File::open(&path).await.map_err(|_| refused())?;
    if !file.metadata().await.is_ok_and(|m| m.is_file()) {
        return Err(refused());
    }
    let mut incoming = s.artifacts.begin(s.upload_limit).await?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        use tokio::io::AsyncReadExt;
        let Ok(n) = file.read(&mut buf).await else {
            incoming.finish().await.map_err(incoming_error)?.discard().await;
            return Err(refused());
        };
        if n == 0 {
            break;
        }
        incoming.write(&buf[..n]).await.map_err(incoming_error)?;
    }
    let name = req.name.unwrap_or_else(|| {
        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
    });
    register(&s, incoming, name, req.inputs).await
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
    inputs: InputShapes,
) -> ApiResult<(StatusCode, Json<ModelRow>)> {
    match crate::models::register(&s.db, &s.artifacts, incoming, name, inputs, None).await {
        Ok((true, row)) => Ok((StatusCode::CREATED, Json(row))),
        Ok((false, row)) => Ok((StatusCode::OK, Json(row))),
        Err(RegisterError::Name(m)) => Err(ApiError::BadRequest(m)),
        Err(RegisterError::Incoming(e)) => Err(incoming_error(e)),
        Err(RegisterError::Refused(m)) => Err(ApiError::Unprocessable(m)),
        Err(RegisterError::Internal(e)) => Err(ApiError::Internal(e)),
    }
}

/// `GET /artifacts/{sha}?exp=E&cap=C`: the bytes, with Range support (tower-http's
/// `ServeFile`), for a URL from a signed job document: 403 without a valid, unexpired
/// capability for this artifact, before anything about the file is looked at.
pub(super) async fn artifact(
    State(s): State<AppState>,
    axum::extract::Path(sha): P,
    Query(q): Query<Capability>,
    request: Request,
) -> Result<Response, ApiError> {
    if s.pki.is_some() {
        // Over TLS only an enrolled, unrevoked device may download, and still only with the
        // capability of its job.
        let peer =
            request.extensions().get::<axum::extract::ConnectInfo<crate::pki::listener::Peer>>();
        super::enroll::device_of(&s, peer.map(|p| &p.0)).await?;
    }
    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
        return Err(ApiError::BadRequest("artifact names are lowercase sha256 hex digests".into()));
    }
    let granted = match (q.exp, q.cap.as_deref()) {
        (Some(exp), Some(cap)) => {
            s.signer.check_capability(&sha, exp, cap, hone_common::clock::now_ms())
        }
        _ => false,
    };
    if !granted {
        return Err(ApiError::Forbidden(
            "artifact URLs need a valid, unexpired capability (`?exp=…&cap=…` from a job document)"
                .into(),
        ));
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
