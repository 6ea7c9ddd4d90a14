//! API tests through `app()` with `oneshot` (no socket, no broker).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;

async fn state() -> (tempfile::TempDir, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()))
        .await
        .unwrap();
    let state = AppState {
        db,
        artifacts: ArtifactStore::open(&dir.path().join("artifacts")).unwrap(),
        signer: Signer::from_seed([1; 32]),
        metrics: Arc::new(Metrics::default()),
        poke: Arc::new(Notify::new()),
        upload_limit: 1 << 20,
    };
    (dir, state)
}

async fn call(state: &AppState, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn trust_endpoint_serves_the_public_key() {
    let (_d, s) = state().await;
    let (status, body) = call(&s, Request::get("/api/v1/trust").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["public_key"], s.signer.public_hex());
}

#[tokio::test]
async fn garbage_uploads_are_refused_with_a_json_reason_and_nothing_is_kept() {
    let (dir, s) = state().await;
    let (status, body) = call(
        &s,
        Request::post("/api/v1/models?name=junk").body(Body::from("not a model")).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("not an ONNX model"), "{body}");
    let stored = std::fs::read_dir(dir.path().join("artifacts"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "onnx"));
    assert_eq!(stored.count(), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("artifacts/tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn uploads_over_the_limit_get_413() {
    let (_d, s) = state().await;
    let big = vec![0u8; (1 << 20) + 10];
    let (status, body) =
        call(&s, Request::post("/api/v1/models").body(Body::from(big)).unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}

#[tokio::test]
async fn campaigns_need_known_models_and_devices() {
    let (_d, s) = state().await;
    let req = |body: serde_json::Value| {
        Request::post("/api/v1/campaigns")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (status, body) =
        call(&s, req(serde_json::json!({"models": ["nope"], "devices": "all"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("no model `nope`"));
    let (status, body) =
        call(&s, req(serde_json::json!({"models": [], "devices": "all", "max_attempts": 0}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn artifact_names_must_be_digests() {
    let (_d, s) = state().await;
    let (status, _) =
        call(&s, Request::get("/artifacts/..%2Fetc%2Fpasswd").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &s,
        Request::get(format!("/artifacts/{}", "a".repeat(64))).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_routes_answer_json_404() {
    let (_d, s) = state().await;
    let (status, body) = call(&s, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}
