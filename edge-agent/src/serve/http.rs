//! The serving process's HTTP API: the Open Inference Protocol (KServe v2) health, metadata
//! and inference endpoints, plus `POST /v1/infer` for whatever model is active.
//!
//! Every error is a JSON body `{"error": "..."}`. Inference is bounded: a request is admitted
//! only while fewer than `max_concurrency + max_queue` are (503 with `Retry-After: 1`
//! otherwise), its body is read only after admission and never beyond `max_body_bytes` (413),
//! and at most `max_concurrency` inferences run at once, each on a blocking thread; a panic
//! there answers 500 for that request only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::kserve::{self, HEADER_LENGTH};
use super::{Served, Shared};

/// How long a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The router of the serving process.
pub(crate) fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { axum::Json(json!({ "live": true })) }))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models", get(models))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer_named))
        .route("/v1/infer", post(infer_active))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), authorize))
        .with_state(shared)
}

fn is_infer(path: &str) -> bool {
    path == "/v1/infer" || (path.starts_with("/v2/models/") && path.ends_with("/infer"))
}

/// With a token configured, every request but the health checks must carry
/// `Authorization: Bearer <token>`.
async fn authorize(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(token) = &shared.token else { return next.run(request).await };
    let path = request.uri().path();
    if path.starts_with("/v2/health/") {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return next.run(request).await;
    }
    if is_infer(path) {
        shared.with_window(|w| w.error());
    }
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares without an early exit on the first differing byte (the length is not secret).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    match shared.current() {
        Some(s) => axum::Json(json!({ "ready": true, "model": s.name })).into_response(),
        None => {
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "ready": false }))).into_response()
        }
    }
}

async fn server_metadata() -> axum::Json<serde_json::Value> {
    axum::Json(json!({
        "name": "hone-edge-agent",
        "version": hone_common::HONE_VERSION,
        "extensions": ["binary_tensor_data"],
    }))
}

async fn models(State(shared): State<Arc<Shared>>) -> axum::Json<serde_json::Value> {
    let names: Vec<String> = shared.current().map(|s| s.name.clone()).into_iter().collect();
    axum::Json(json!({ "models": names }))
}

fn named(shared: &Shared, name: &str) -> Result<Arc<Served>, ApiError> {
    shared
        .current()
        .filter(|s| s.name == name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no model `{name}`")))
}

async fn model_metadata(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let s = named(&shared, &name)?;
    Ok(axum::Json(json!({
        "name": s.name,
        "versions": [s.artifact_id],
        "platform": "onnx_tract",
        "inputs": s.inputs,
        "outputs": s.outputs,
    })))
}

async fn model_ready(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let s = named(&shared, &name)?;
    Ok(axum::Json(json!({ "name": s.name, "ready": true })))
}

async fn infer_named(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    counted(&shared, infer(&shared, Some(&name), &headers, body).await)
}

async fn infer_active(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    counted(&shared, infer(&shared, None, &headers, body).await)
}

/// Counts an error answer in the window (rejections are counted where they happen).
fn counted(shared: &Shared, result: Result<Response, Rejection>) -> Response {
    match result {
        Ok(r) => r,
        Err(Rejection::Full) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is at capacity, try again later",
        )
        .into_response(),
        Err(Rejection::Error(e)) => {
            shared.with_window(|w| w.error());
            e.into_response()
        }
    }
}

enum Rejection {
    Full,
    Error(ApiError),
}

impl From<ApiError> for Rejection {
    fn from(e: ApiError) -> Self {
        Rejection::Error(e)
    }
}

async fn infer(
    shared: &Arc<Shared>,
    name: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Rejection> {
    let served = shared.current().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no model is being served")
    })?;
    if let Some(name) = name
        && served.name != name
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no model `{name}`")).into());
    }
    let Ok(admitted) = shared.admission.clone().try_acquire_owned() else {
        shared.with_window(|w| w.rejected());
        return Err(Rejection::Full);
    };
    let header_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request(format!("{HEADER_LENGTH} is not text")))?
                .to_string(),
        ),
    };
    let probe = headers.contains_key(super::kserve::PROBE_HEADER);
    let bytes = read_body(body, headers, shared.max_body_bytes).await?;
    let received = Instant::now();
    let running = shared
        .running
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let task_shared = shared.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _slots = (admitted, running);
        let answer = answer(&served, &bytes, header_length.as_deref())?;
        let latency_ms = received.elapsed().as_secs_f64() * 1e3;
        task_shared.with_window(|w| {
            if probe {
                w.success(latency_ms, &[], &[], None)
            } else {
                w.success(latency_ms, &answer.inputs, &answer.outputs, served.unknown_token_id)
            }
        });
        Ok::<_, ApiError>(answer.body)
    });
    let body = match job.await {
        Ok(answer) => answer?,
        Err(e) => {
            let why =
                if e.is_panic() { "the model panicked" } else { "the inference was cancelled" };
            tracing::warn!("inference failed: {e}");
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, why).into());
        }
    };
    let mut response = Response::new(Body::from(body.bytes));
    let content_type = match body.header_length {
        Some(n) => {
            response.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(n));
            "application/octet-stream"
        }
        None => "application/json",
    };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// Reads a body of at most `limit` bytes, refusing more as soon as it is announced or sent.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body exceeds {limit} bytes"));
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(announced.map_or(0, |n| n as usize));
    let mut body = std::pin::pin!(body);
    let read = async {
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame =
                frame.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    tokio::time::timeout(BODY_TIMEOUT, read).await.map_err(|_| {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "the body took too long to arrive")
    })??;
    Ok(buf)
}

struct Answer {
    body: kserve::ResponseBody,
    inputs: Vec<kserve::Tensor>,
    outputs: Vec<kserve::Tensor>,
}

/// Parses, checks and runs one request (blocking).
fn answer(served: &Served, body: &[u8], header_length: Option<&str>) -> Result<Answer, ApiError> {
    let request = kserve::parse_request(body, header_length).map_err(ApiError::bad_request)?;
    let selected =
        kserve::select_outputs(&request, &served.outputs).map_err(ApiError::bad_request)?;
    let inputs =
        kserve::match_inputs(request.inputs, &served.inputs).map_err(ApiError::bad_request)?;
    let outputs = served.engine.run(&inputs).map_err(|e| {
        tracing::debug!(artifact = %served.artifact_id, "inference failed: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)
    })?;
    let mut chosen = Vec::with_capacity(selected.len());
    for (ix, binary) in selected {
        let tensor = outputs.get(ix).ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the model gave no output {ix}"),
            )
        })?;
        chosen.push((tensor, binary));
    }
    let body =
        kserve::encode_response(&served.name, &served.artifact_id, request.id.as_deref(), &chosen);
    Ok(Answer { body, inputs, outputs })
}
