//! API tests through `app()` with `oneshot` (no socket, no broker).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;

use crate::api::auth::{OPERATOR_TOKEN_FILE, Role, create_token, ensure_operator_token};

/// A fresh API over SQLite in a temporary folder, whose `import/` subfolder is the import
/// folder, with the operator token of its first start.
async fn state() -> (tempfile::TempDir, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()))
        .await
        .unwrap();
    ensure_operator_token(&db, dir.path(), 0).await.unwrap();
    std::fs::create_dir_all(dir.path().join("import")).unwrap();
    let state = AppState {
        db,
        artifacts: ArtifactStore::open(&dir.path().join("artifacts")).unwrap(),
        signer: Signer::from_seed([1; 32]),
        metrics: Arc::new(Metrics::default()),
        poke: Arc::new(Notify::new()),
        pipelines: Arc::new(Notify::new()),
        rollout: Arc::new(Notify::new()),
        upload_limit: 1 << 20,
        dvc_dir: dir.path().join("dvc"),
        import_dir: Some(dir.path().join("import").canonicalize().unwrap()),
        mlflow: None,
        pki: None,
        bus: None,
    };
    (dir, state)
}

/// The operator token written at first start.
fn operator(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join(OPERATOR_TOKEN_FILE)).unwrap().trim().to_string()
}

/// Sends `req` with `token` as its bearer token (none if `None`).
async fn call_with(
    state: &AppState,
    token: Option<&str>,
    mut req: Request<Body>,
) -> (StatusCode, serde_json::Value) {
    if let Some(token) = token {
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// Sends `req` as the operator of the state in `dir`.
async fn call(
    dir: &tempfile::TempDir,
    state: &AppState,
    req: Request<Body>,
) -> (StatusCode, serde_json::Value) {
    call_with(state, Some(&operator(dir)), req).await
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post_json(path: &str, body: serde_json::Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn trust_endpoint_serves_the_public_key() {
    let (_d, s) = state().await;
    let (status, body) = call_with(&s, None, get("/api/v1/trust")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["public_key"], s.signer.public_hex());
}

#[tokio::test]
async fn garbage_uploads_are_refused_with_a_json_reason_and_nothing_is_kept() {
    let (dir, s) = state().await;
    let (status, body) = call(
        &dir,
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
    let (d, s) = state().await;
    let big = vec![0u8; (1 << 20) + 10];
    let (status, body) =
        call(&d, &s, Request::post("/api/v1/models").body(Body::from(big)).unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}

#[tokio::test]
async fn campaigns_need_known_models_and_devices() {
    let (d, s) = state().await;
    let req = |body: serde_json::Value| post_json("/api/v1/campaigns", body);
    let (status, body) =
        call(&d, &s, req(serde_json::json!({"models": ["nope"], "devices": "all"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("no model `nope`"));
    let (status, body) =
        call(&d, &s, req(serde_json::json!({"models": [], "devices": "all", "max_attempts": 0})))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn artifact_names_must_be_digests() {
    let (_d, s) = state().await;
    let (status, _) = call_with(&s, None, get("/artifacts/..%2Fetc%2Fpasswd")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // With a valid capability, an artifact that is not stored is 404.
    let sha = "a".repeat(64);
    let url = s.signer.artifact_url("", &sha, u64::MAX);
    let (status, _) = call_with(&s, None, get(&url)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_routes_answer_json_404() {
    let (d, s) = state().await;
    let (status, body) = call(&d, &s, get("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn reads_need_a_token_and_writes_need_the_operator_role() {
    let (d, s) = state().await;
    let viewer = create_token(&s.db, Role::Viewer, "dashboard", 1).await.unwrap().token;
    let campaign = || {
        post_json("/api/v1/campaigns", serde_json::json!({"models": ["nope"], "devices": "all"}))
    };

    // No token, or a made-up one: 401 with a Bearer challenge.
    for token in [None, Some("hone_0000")] {
        let (status, body) = call_with(&s, token, get("/api/v1/models")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        let (status, _) = call_with(&s, token, campaign()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let resp = app(s.clone()).oneshot(get("/metrics")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");

    // A viewer reads, /metrics included, and cannot write.
    for path in ["/api/v1/models", "/api/v1/devices", "/api/v1/campaigns", "/api/v1/metrics"] {
        assert_eq!(call_with(&s, Some(&viewer), get(path)).await.0, StatusCode::OK, "{path}");
    }
    let resp = app(s.clone())
        .oneshot(
            Request::get("/metrics")
                .header("authorization", format!("Bearer {viewer}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, body) = call_with(&s, Some(&viewer), campaign()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("needs operator"), "{body}");
    let upload = Request::post("/api/v1/models?name=x").body(Body::from("junk")).unwrap();
    assert_eq!(call_with(&s, Some(&viewer), upload).await.0, StatusCode::FORBIDDEN);

    // The operator gets past authorisation to the handler (here: an unknown model, 400).
    let (status, body) = call(&d, &s, campaign()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Health and trust stay open.
    assert_eq!(call_with(&s, None, get("/api/v1/health")).await.0, StatusCode::OK);
    assert_eq!(call_with(&s, None, get("/api/v1/trust")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once() {
    let (_d, s) = state().await;
    let new = create_token(&s.db, Role::Operator, "ci", 1).await.unwrap();
    assert_eq!(call_with(&s, Some(&new.token), get("/api/v1/models")).await.0, StatusCode::OK);
    assert!(s.db.revoke_token(&new.id, 2).await.unwrap());
    let (status, body) = call_with(&s, Some(&new.token), get("/api/v1/models")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!s.db.revoke_token(&new.id, 3).await.unwrap(), "already revoked");
}

#[tokio::test]
async fn tokens_are_stored_hashed_and_the_first_operator_token_is_private() {
    let (d, s) = state().await;
    let token = operator(&d);
    assert!(token.starts_with("hone_") && token.len() == 5 + 64, "{token}");
    let rows = s.db.tokens().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].role, "operator");
    assert!(s.db.token_by_hash(&token).await.unwrap().is_none(), "the secret is not a key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join(OPERATOR_TOKEN_FILE)).unwrap().permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
    }
    // A second start creates nothing while an operator token is active.
    assert!(ensure_operator_token(&s.db, d.path(), 5).await.unwrap().is_none());
    assert_eq!(operator(&d), token);
}

#[tokio::test]
async fn register_by_path_reads_only_the_import_folder_and_says_nothing_about_other_paths() {
    let (d, s) = state().await;
    // A real file outside the import folder, and a path that does not exist: the same answer.
    let outside = d.path().join("secret.onnx");
    std::fs::write(&outside, "not a model").unwrap();
    let register = |path: &std::path::Path| {
        post_json("/api/v1/models/register", serde_json::json!({ "path": path }))
    };
    let (status_out, out) = call(&d, &s, register(&outside)).await;
    let missing = d.path().join("missing.onnx");
    let (status_missing, gone) = call(&d, &s, register(&missing)).await;
    let escape = std::path::Path::new("../secret.onnx");
    let (status_escape, esc) = call(&d, &s, register(escape)).await;
    assert_eq!(status_out, StatusCode::BAD_REQUEST);
    assert_eq!((status_out, status_missing, status_escape), (status_out, status_out, status_out));
    let generic = |v: &serde_json::Value, path: &std::path::Path| {
        v["error"].as_str().unwrap().replace(&path.display().to_string(), "PATH")
    };
    assert_eq!(generic(&out, &outside), generic(&gone, &missing));
    assert_eq!(generic(&out, &outside), generic(&esc, escape));
    assert!(!out["error"].as_str().unwrap().contains("os error"), "{out}");

    // Inside the folder the file reaches the tract gate (and is refused there, with its reason).
    std::fs::write(d.path().join("import/inside.onnx"), "not a model").unwrap();
    let (status, body) = call(&d, &s, register(std::path::Path::new("inside.onnx"))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Without an import folder, registration by path is off.
    let off = AppState { import_dir: None, ..s.clone() };
    let (status, _) = call(&d, &off, register(&missing)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn artifacts_need_a_valid_unexpired_capability_for_that_artifact() {
    let (d, s) = state().await;
    let sha = hex::encode([9u8; 32]);
    std::fs::write(s.artifacts.path(&sha), b"bytes").unwrap();
    let now = hone_common::clock::now_ms();
    let good = s.signer.artifact_url("", &sha, now + 60_000);
    assert_eq!(call_with(&s, None, get(&good)).await.0, StatusCode::OK);

    let other = hex::encode([8u8; 32]);
    let for_other = s.signer.artifact_url("", &other, now + 60_000);
    let stolen_cap = for_other.split_once('?').unwrap().1;
    let expired = s.signer.artifact_url("", &sha, now - 1);
    let bad = [
        format!("/artifacts/{sha}"),                             // no capability
        format!("/artifacts/{sha}?exp={}&cap=00", now + 60_000), // wrong
        format!("/artifacts/{sha}?{stolen_cap}"),                // another artifact's
        expired,                                                 // expired
        good.replace(&format!("exp={}", now + 60_000), &format!("exp={}", now + 120_000)), // extended
    ];
    for url in bad {
        let (status, body) = call_with(&s, None, get(&url)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{url}: {body}");
        // An API token does not replace the capability.
        assert_eq!(call(&d, &s, get(&url)).await.0, StatusCode::FORBIDDEN, "{url}");
    }
}

#[tokio::test]
async fn pipelines_need_the_operator_role_to_start_or_cancel_and_bad_requests_create_nothing() {
    let (d, s) = state().await;
    let viewer = create_token(&s.db, Role::Viewer, "dashboard", 1).await.unwrap().token;
    let body = serde_json::json!({
        "model": "nope", "data": "photos", "devices": ["rpi4"], "min_fidelity": 0.9
    });
    let create = || post_json("/api/v1/pipelines", body.clone());
    assert_eq!(call_with(&s, None, create()).await.0, StatusCode::UNAUTHORIZED);
    let (status, v) = call_with(&s, Some(&viewer), create()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let cancel = || post_json("/api/v1/pipelines/p1/cancel", serde_json::json!({}));
    assert_eq!(call_with(&s, Some(&viewer), cancel()).await.0, StatusCode::FORBIDDEN);
    // Viewers read.
    let (status, v) = call_with(&s, Some(&viewer), get("/api/v1/pipelines")).await;
    assert_eq!((status, v), (StatusCode::OK, serde_json::json!([])));
    let (status, _) = call_with(&s, Some(&viewer), get("/api/v1/pipelines/p1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The operator reaches the checks: each refusal names what is wrong, and nothing is created.
    let (status, v) = call(&d, &s, create()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("no model `nope`"), "{v}");
    let mut bad = body.clone();
    bad["devices"] = serde_json::json!(["toaster"]);
    let (status, v) = call(&d, &s, post_json("/api/v1/pipelines", bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("unknown device class `toaster`"), "{v}");
    let mut bad = body.clone();
    bad["data"] = serde_json::json!("photos,size=banana");
    let (status, v) = call(&d, &s, post_json("/api/v1/pipelines", bad)).await;
    assert!(status.is_client_error(), "{status} {v}");
    let (status, v) = call(&d, &s, cancel()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(s.db.pipelines(false).await.unwrap().len(), 0);
}

#[tokio::test]
async fn a_pipeline_report_is_served_as_html_that_fetches_nothing() {
    let (_d, s) = state().await;
    let viewer = create_token(&s.db, Role::Viewer, "dashboard", 1).await.unwrap().token;
    let request = serde_json::json!({"model": "m", "data": "photos", "devices": ["rpi4"]});
    s.db.create_pipeline("p1", &request, 1).await.unwrap();
    let (status, v) = call_with(&s, Some(&viewer), get("/api/v1/pipelines/p1/report")).await;
    assert_eq!(status, StatusCode::CONFLICT, "no result yet: {v}");
    let result = crate::pipeline::result::PipelineResult {
        pipeline: "p1".into(),
        model_name: "<b>net</b>".into(),
        classes: vec![crate::pipeline::result::ClassResult {
            class: "rpi4".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let value = serde_json::to_value(&result).unwrap();
    s.db.update_pipeline("p1", "running", "measure", None, Some(&value), 2).await.unwrap();
    let req = Request::get("/api/v1/pipelines/p1/report")
        .header("authorization", format!("Bearer {viewer}"))
        .body(Body::empty())
        .unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(
        resp.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'")
    );
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let html = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(html.contains("rpi4") && html.contains("&lt;b&gt;net&lt;/b&gt;"), "{html}");
    assert_eq!(
        call_with(&s, None, get("/api/v1/pipelines/p1/report")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call_with(&s, Some(&viewer), get("/api/v1/pipelines/nope/report")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_mlflow_routes_say_how_to_turn_the_mirror_on_and_report_a_dead_server_s_failures() {
    let (d, s) = state().await;
    let (status, body) = call(&d, &s, get("/api/v1/mlflow")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--mlflow-url"), "{body}");

    // A finished campaign is due; MLflow on a closed port fails it with the reason, keeps it
    // due, and a viewer may read the state but not trigger a sync.
    let dead = format!("http://127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let m = crate::mlflow::Mlflow::new(
        crate::mlflow::MlflowConfig::new(dead),
        s.db.clone(),
        s.artifacts.clone(),
    )
    .unwrap();
    let s = AppState { mlflow: Some(m), ..s };
    s.db.create_campaign("c1", &serde_json::json!({"models": []}), &[], 1).await.unwrap();
    s.db.finish_campaign("c1", 2).await.unwrap();
    let (status, body) =
        call(&d, &s, post_json("/api/v1/mlflow/sync", serde_json::json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["failed"], 1, "{body}");
    let rec = &body["records"][0];
    assert_eq!((rec["kind"].as_str(), rec["id"].as_str()), (Some("campaign"), Some("c1")));
    assert!(rec["error"].as_str().unwrap().contains("unavailable"), "{body}");
    let (status, body) = call(&d, &s, get("/api/v1/mlflow")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["failing"], 1, "{body}");
    assert_eq!(body["records"][0]["synced_version"], 0, "nothing counted as written: {body}");
    assert_eq!(body["records"][0]["attempts"], 1);
    // Still due: a second sync tries again (backoffs are ignored on demand).
    let (_, body) = call(&d, &s, post_json("/api/v1/mlflow/sync", serde_json::json!({}))).await;
    assert_eq!(body["failed"], 1, "{body}");
    let (_, body) = call(&d, &s, get("/api/v1/mlflow")).await;
    assert_eq!(body["records"][0]["attempts"], 2, "{body}");
}
