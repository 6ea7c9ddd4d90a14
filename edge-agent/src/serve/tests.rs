//! The serving process in-process: control lines in, events out, HTTP on a loopback port.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::kserve::{DataType, HEADER_LENGTH, Tensor, TensorMeta, Values};
use super::*;

struct Harness {
    base: String,
    lines: mpsc::Sender<String>,
    events: mpsc::UnboundedReceiver<Event>,
    windows: Vec<(Option<String>, hone_common::serving::ServingWindow)>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
    client: reqwest::Client,
}

impl Harness {
    async fn start(config: ServeConfig, served: Option<Served>) -> Harness {
        let shared = Arc::new(Shared::new(&config));
        if let Some(s) = served {
            shared.swap(s);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (line_tx, line_rx) = mpsc::channel(16);
        let (event_tx, mut event_rx) = mpsc::channel(64);
        let (fwd_tx, fwd_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(e) = event_rx.recv().await {
                let _ = fwd_tx.send(e);
            }
        });
        let done = tokio::spawn(run_with(shared, listener, config, line_rx, event_tx));
        let mut h = Harness {
            base: String::new(),
            lines: line_tx,
            events: fwd_rx,
            windows: Vec::new(),
            done,
            client: reqwest::Client::new(),
        };
        match h.next_event().await {
            Event::Listening { addr, .. } => h.base = format!("http://{addr}"),
            other => panic!("expected listening first, got {other:?}"),
        }
        h
    }

    /// The next event that is not a window (windows are kept for [`Harness::stop`]).
    async fn next_event(&mut self) -> Event {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(60), self.events.recv())
                .await
                .expect("an event within 60 s")
                .expect("the event channel is open");
            match e {
                Event::Window { artifact_id, window } => self.windows.push((artifact_id, window)),
                other => return other,
            }
        }
    }

    async fn send(&self, command: &Command) {
        self.lines.send(serde_json::to_string(command).unwrap()).await.unwrap();
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.client.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Shuts down and returns every window reported.
    async fn stop(mut self) -> Vec<(Option<String>, hone_common::serving::ServingWindow)> {
        self.send(&Command::Shutdown {}).await;
        self.done.await.unwrap().unwrap();
        let mut windows = std::mem::take(&mut self.windows);
        // Every sender is gone once `run` returns: read to the end.
        while let Some(e) = self.events.recv().await {
            if let Event::Window { artifact_id, window } = e {
                windows.push((artifact_id, window));
            }
        }
        windows
    }
}

fn meta(name: &str, shape: &[i64]) -> TensorMeta {
    TensorMeta { name: name.into(), datatype: DataType::F32, shape: shape.to_vec() }
}

fn fake(engine: impl Engine + 'static) -> Served {
    Served {
        name: "fake".into(),
        artifact_id: "fake-1".into(),
        unknown_token_id: None,
        inputs: vec![meta("x", &[1, 2])],
        outputs: vec![meta("y", &[1, 2])],
        engine: Box::new(engine),
    }
}

fn x(values: [f32; 2]) -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": values}]})
}

fn echo(inputs: &[Tensor]) -> Vec<Tensor> {
    vec![Tensor { name: "y".into(), ..inputs[0].clone() }]
}

/// Echoes, after signalling that it started and waiting to be released.
struct Gate {
    started: Mutex<std::sync::mpsc::Sender<()>>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Engine for Gate {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        let _ = self.started.lock().unwrap().send(());
        self.release.lock().unwrap().recv().unwrap();
        Ok(echo(inputs))
    }
}

/// Panics on a negative first value, echoes otherwise.
struct Panicky;

impl Engine for Panicky {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        if let Values::F32(v) = &inputs[0].values
            && v[0] < 0.0
        {
            panic!("a negative input");
        }
        Ok(echo(inputs))
    }
}

fn window_config() -> ServeConfig {
    ServeConfig { window: Duration::from_secs(3600), ..ServeConfig::default() }
}

fn totals(windows: &[(Option<String>, hone_common::serving::ServingWindow)]) -> (u64, u64, u64) {
    windows
        .iter()
        .fold((0, 0, 0), |(r, e, j), (_, w)| (r + w.requests, e + w.errors, j + w.rejected))
}

#[tokio::test]
async fn requests_beyond_the_queue_are_refused_with_503() {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let gate = Gate { started: Mutex::new(started_tx), release: Mutex::new(release_rx) };
    let config = ServeConfig { max_concurrency: 1, max_queue: 0, ..window_config() };
    let h = Harness::start(config, Some(fake(gate))).await;
    let url = format!("{}/v1/infer", h.base);
    let first = tokio::spawn(h.client.post(&url).json(&x([1.0, 2.0])).send());
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap()).await.unwrap();
    let second = h.client.post(&url).json(&x([3.0, 4.0])).send().await.unwrap();
    assert_eq!(second.status().as_u16(), 503);
    assert_eq!(second.headers()["retry-after"], "1");
    let body: Value = second.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("capacity"), "{body}");
    release_tx.send(()).unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["outputs"][0]["data"], json!([1.0, 2.0]));
    // Free again: the next request runs.
    release_tx.send(()).unwrap();
    let (status, _) = h.post("/v1/infer", x([5.0, 6.0])).await;
    assert_eq!(status, 200);
    assert_eq!(totals(&h.stop().await), (2, 0, 1));
}

#[tokio::test]
async fn a_panicking_inference_answers_500_and_the_server_goes_on() {
    let h = Harness::start(window_config(), Some(fake(Panicky))).await;
    let (status, body) = h.post("/v2/models/fake/infer", x([-1.0, 0.0])).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "the model panicked");
    let (status, body) = h.post("/v2/models/fake/infer", x([1.0, 0.0])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "fake-1");
    assert_eq!(totals(&h.stop().await), (2, 1, 0));
}

#[tokio::test]
async fn tokens_are_required_except_for_health_checks() {
    let config = ServeConfig { token: Some("s3cret-token".into()), ..window_config() };
    let h = Harness::start(config, Some(fake(Panicky))).await;
    assert_eq!(h.get("/v2/health/live").await.0, 200);
    assert_eq!(h.get("/v2/health/ready").await.0, 200);
    let (status, body) = h.get("/v2").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "missing or wrong bearer token");
    let url = format!("{}/v1/infer", h.base);
    for auth in ["Bearer s3cret-tokem", "Bearer ", "s3cret-token", "Bearer s3cret-token2"] {
        let r = h.client.post(&url).header("authorization", auth).json(&x([1.0, 2.0]));
        assert_eq!(r.send().await.unwrap().status().as_u16(), 401, "{auth}");
    }
    let r = h.client.post(&url).bearer_auth("s3cret-token").json(&x([1.0, 2.0]));
    assert_eq!(r.send().await.unwrap().status().as_u16(), 200);
    let r = h.client.get(format!("{}/v2", h.base)).bearer_auth("s3cret-token");
    let meta: Value = r.send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["name"], "hone-edge-agent");
    assert_eq!(meta["extensions"], json!(["binary_tensor_data"]));
    // Four refused inferences and one answered; the metadata refusal is not an inference.
    assert_eq!(totals(&h.stop().await), (5, 4, 0));
    assert!(http::constant_time_eq(b"abc", b"abc"));
    assert!(!http::constant_time_eq(b"abc", b"abd"));
    assert!(!http::constant_time_eq(b"abc", b"abcd"));
}

#[test]
fn listening_off_loopback_needs_a_token() {
    let e = listen_config("0.0.0.0:8080", None).unwrap_err().to_string();
    assert!(e.contains("reachable from other hosts") && e.contains("--token-file"), "{e}");
    assert!(listen_config("127.0.0.1:0", None).unwrap().1.is_none());
    assert!(listen_config("[::1]:0", None).is_ok());
    let e = listen_config("localhost:80", None).unwrap_err().to_string();
    assert!(e.contains("not an IP:PORT address"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "  abc123\n").unwrap();
    let (addr, token) = listen_config("0.0.0.0:0", Some(&file)).unwrap();
    assert!(addr.ip().is_unspecified());
    assert_eq!(token.as_deref(), Some("abc123"));
    std::fs::write(&file, "\n").unwrap();
    let e = listen_config("0.0.0.0:0", Some(&file)).unwrap_err().to_string();
    assert!(e.contains("is empty"), "{e}");
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_are_counted() {
    let config = ServeConfig { max_body_bytes: 4096, ..window_config() };
    let h = Harness::start(config, None).await;
    let (status, body) = h.post("/v1/infer", x([1.0, 2.0])).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("no model is being served")));
    assert_eq!(h.get("/v2/health/ready").await.0, 503);
    assert_eq!(h.get("/v2/models").await.1, json!({"models": []}));
    h.stop().await;

    let config = ServeConfig { max_body_bytes: 4096, ..window_config() };
    let h = Harness::start(config, Some(fake(Panicky))).await;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/v2/models/other/infer", x([1.0, 2.0]), 404, "no model `other`"),
        ("/v1/infer", json!({"inputs": 5}), 400, "malformed request JSON"),
        (
            "/v1/infer",
            json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}),
            400,
            "is INT64, but the model takes FP32",
        ),
        (
            "/v1/infer",
            json!({"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1, 2]}]}),
            400,
            "has shape [2, 1], but the model takes [1, 2]",
        ),
        (
            "/v1/infer",
            json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1]}]}),
            400,
            "has 2 elements but 1 were given",
        ),
        ("/v1/infer", json!({"inputs": []}), 400, "input `x` is missing"),
        (
            "/v1/infer",
            json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
                   "outputs": [{"name": "z"}]}),
            400,
            "no output `z`",
        ),
        (
            "/v1/infer",
            json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
            "data": vec![0.5; 2000]}]}),
            413,
            "exceeds 4096 bytes",
        ),
    ];
    let n = cases.len() as u64;
    for (path, body, status, message) in cases {
        let (got, answer) = h.post(path, body).await;
        assert_eq!(got, status, "{path}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{path}: {error}");
    }
    // Not JSON at all, and a header length that is not a number.
    let url = format!("{}/v1/infer", h.base);
    let r = h.client.post(&url).body("{{{").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = h.client.post(&url).header(HEADER_LENGTH, "-3").json(&x([1.0, 2.0]));
    let r = r.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("is not a byte count"));
    // Endpoints and methods that do not exist answer JSON too (and are not inferences).
    let (status, body) = h.get("/v3/nothing").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("no such endpoint")));
    let (status, body) = h.get("/v1/infer").await;
    assert_eq!(status, 405, "{body}");
    assert!(body["error"].is_string());
    assert_eq!(h.get("/v2/models/other").await.0, 404);
    assert_eq!(totals(&h.stop().await), (n + 2, n + 2, 0));
}

#[tokio::test]
async fn models_are_activated_served_and_swapped_without_dropping_requests() {
    let dir = tempfile::tempdir().unwrap();
    let relu = dir.path().join("relu.onnx");
    let neg = dir.path().join("neg.onnx");
    model::write_unary_model(&relu, "Relu");
    model::write_unary_model(&neg, "Neg");
    let config = ServeConfig { window: Duration::from_millis(200), ..ServeConfig::default() };
    let mut h = Harness::start(config, None).await;

    // A malformed line is reported, and the process goes on.
    h.lines.send("{\"activate\": 3}".into()).await.unwrap();
    match h.next_event().await {
        Event::Error { message } => assert!(message.contains("malformed command"), "{message}"),
        other => panic!("expected an error event, got {other:?}"),
    }
    let activate = |id: &str, path: &std::path::Path, name: &str, artifact: &str| {
        Command::Activate(Activate {
            id: id.into(),
            model_path: path.to_path_buf(),
            name: name.into(),
            artifact_id: artifact.into(),
            symbols: vec![("batch".into(), 1)],
            inputs: Default::default(),
            warmup: 2,
            unknown_token_id: None,
        })
    };
    h.send(&activate("a1", &relu, "relu", "art-1")).await;
    match h.next_event().await {
        Event::Activated { id, artifact_id, previous, .. } => {
            assert_eq!((id.as_str(), artifact_id.as_str(), previous), ("a1", "art-1", None));
        }
        other => panic!("expected activated, got {other:?}"),
    }
    let (status, meta) = h.get("/v2/models/relu").await;
    assert_eq!(status, 200);
    assert_eq!(meta["versions"], json!(["art-1"]));
    assert_eq!(meta["platform"], "onnx_tract");
    assert_eq!(meta["inputs"], json!([{"name": "x", "datatype": "FP32", "shape": [1, 4]}]));
    assert_eq!(meta["outputs"][0]["name"], "y");
    assert_eq!(h.get("/v2/models/relu/ready").await.0, 200);
    assert_eq!(h.get("/v2/models").await.1, json!({"models": ["relu"]}));

    // JSON, nested data.
    let request = json!({"id": "q1", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
        "data": [[-1.0, 2.0, -3.0, 4.0]]}]});
    let (status, body) = h.post("/v2/models/relu/infer", request.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "q1");
    assert_eq!(body["model_name"], "relu");
    assert_eq!(body["outputs"][0]["shape"], json!([1, 4]));
    assert_eq!(body["outputs"][0]["data"], json!([0.0, 2.0, 0.0, 4.0]));

    // Binary in, binary out.
    let values: Vec<u8> = [-1f32, 0.5, -0.25, 8.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": [1, 4],
        "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": true}}]}))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&values);
    let r = h
        .client
        .post(format!("{}/v1/infer", h.base))
        .header(HEADER_LENGTH, header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let n: usize = r.headers()[HEADER_LENGTH].to_str().unwrap().parse().unwrap();
    let bytes = r.bytes().await.unwrap();
    let json: Value = serde_json::from_slice(&bytes[..n]).unwrap();
    assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 16);
    assert_eq!(
        Values::read_le(DataType::F32, &bytes[n..]).unwrap(),
        Values::F32(vec![0.0, 0.5, 0.0, 8.0])
    );

    // A failed activation leaves the model serving.
    h.send(&activate("a2", &dir.path().join("missing.onnx"), "gone", "art-x")).await;
    match h.next_event().await {
        Event::ActivationFailed { id, kind, serving, reason, .. } => {
            assert_eq!(id, "a2");
            assert_eq!(kind, FailureKind::Internal, "{reason}");
            assert_eq!(serving.as_deref(), Some("art-1"));
        }
        other => panic!("expected activation_failed, got {other:?}"),
    }
    std::fs::write(dir.path().join("junk.onnx"), b"not a model").unwrap();
    h.send(&activate("a3", &dir.path().join("junk.onnx"), "junk", "art-j")).await;
    match h.next_event().await {
        Event::ActivationFailed { kind, serving, .. } => {
            assert_eq!(kind, FailureKind::ModelInvalid);
            assert_eq!(serving.as_deref(), Some("art-1"));
        }
        other => panic!("expected activation_failed, got {other:?}"),
    }
    assert_eq!(h.post("/v2/models/relu/infer", request.clone()).await.0, 200);

    // Requests keep being answered across a swap.
    let sent = Arc::new(AtomicU64::new(3));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (client, url, sent, stop) =
            (h.client.clone(), format!("{}/v1/infer", h.base), sent.clone(), stop.clone());
        let request = request.clone();
        tokio::spawn(async move {
            let mut versions = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client.post(&url).json(&request).send().await.unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
                assert_eq!(r.status().as_u16(), 200);
                let body: Value = r.json().await.unwrap();
                versions.push(body["model_version"].as_str().unwrap().to_string());
            }
            versions
        })
    };
    h.send(&activate("a4", &neg, "neg", "art-2")).await;
    match h.next_event().await {
        Event::Activated { id, previous, .. } => {
            assert_eq!((id.as_str(), previous.as_deref()), ("a4", Some("art-1")));
        }
        other => panic!("expected activated, got {other:?}"),
    }
    let (status, body) = h.post("/v1/infer", request.clone()).await;
    sent.fetch_add(1, Ordering::Relaxed);
    assert_eq!(status, 200);
    assert_eq!(body["model_version"], "art-2");
    assert_eq!(body["outputs"][0]["data"], json!([1.0, -2.0, 3.0, -4.0]));
    stop.store(true, Ordering::Relaxed);
    let versions = hammer.await.unwrap();
    assert!(versions.iter().all(|v| v == "art-1" || v == "art-2"), "{versions:?}");
    // The old name is gone.
    assert_eq!(h.post("/v2/models/relu/infer", request).await.0, 404);
    sent.fetch_add(1, Ordering::Relaxed);

    let windows = h.stop().await;
    let (requests, errors, rejected) = totals(&windows);
    assert_eq!((requests, errors, rejected), (sent.load(Ordering::Relaxed), 1, 0));
    assert!(windows.iter().any(|(a, _)| a.as_deref() == Some("art-1")));
    assert!(windows.iter().any(|(a, _)| a.as_deref() == Some("art-2")));
    let x_count: u64 = windows
        .iter()
        .filter_map(|(_, w)| w.inputs.iter().find(|t| t.name == "x"))
        .map(|t| t.count)
        .sum();
    assert_eq!(x_count, 4 * (requests - errors));
    assert!(windows.iter().any(|(_, w)| w.latency.is_some() && w.rss_bytes > 0));
}

struct Echo;

impl Engine for Echo {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        Ok(echo(inputs))
    }
}

#[tokio::test]
async fn loadgen_sends_every_scheduled_request_and_the_windows_count_them() {
    let config = ServeConfig { max_concurrency: 2, ..window_config() };
    let h = Harness::start(config, Some(fake(Echo))).await;
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("requests.jsonl");
    let lines = [x([1.0, 2.0]).to_string(), String::new(), x([3.0, -4.0]).to_string()];
    std::fs::write(&inputs, lines.join("\n")).unwrap();
    let mut sent = 0;
    for (model, binary, file) in
        [(None, false, None), (Some("fake"), true, None), (None, true, Some(inputs.clone()))]
    {
        let options = crate::loadgen::LoadgenOptions {
            url: h.base.clone(),
            model: model.map(str::to_string),
            rates: vec![40.0],
            duration: Duration::from_millis(500),
            concurrency: 64,
            token: None,
            inputs: file,
            binary,
        };
        let reports = crate::loadgen::run(&options).await.unwrap();
        let r = &reports[0];
        assert_eq!(r.requests + r.dropped_by_client, 20, "{r:?}");
        assert_eq!(r.ok, r.requests, "{r:?}");
        assert!(r.p50_ms.is_some() && r.errors.is_empty(), "{r:?}");
        sent += r.requests;
    }
    // A model the server does not have.
    let options = crate::loadgen::LoadgenOptions {
        url: h.base.clone(),
        model: Some("other".into()),
        rates: vec![10.0],
        duration: Duration::from_millis(200),
        concurrency: 4,
        token: None,
        inputs: Some(inputs),
        binary: false,
    };
    let r = &crate::loadgen::run(&options).await.unwrap()[0];
    assert_eq!((r.ok, r.errors.get("404")), (0, Some(&2)), "{r:?}");
    let (requests, errors, _) = totals(&h.stop().await);
    assert_eq!((requests, errors), (sent + 2, 2));
}

#[tokio::test]
async fn a_chunked_body_is_cut_off_at_the_limit() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = ServeConfig { max_body_bytes: 4096, ..window_config() };
    let h = Harness::start(config, Some(fake(Echo))).await;
    let mut stream =
        tokio::net::TcpStream::connect(h.base.trim_start_matches("http://")).await.unwrap();
    let head = "POST /v1/infer HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\
                Content-Type: application/json\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("3e8\r\n{}\r\n", " ".repeat(1000));
    // Five chunks go over the limit; the server answers without waiting for the end.
    for _ in 0..5 {
        stream.write_all(chunk.as_bytes()).await.unwrap();
    }
    let mut response = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut response))
        .await
        .expect("an answer before the body ends")
        .unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert_eq!(totals(&h.stop().await), (1, 1, 0));
}

#[tokio::test]
async fn probe_requests_count_but_stay_out_of_the_input_statistics() {
    struct Echo;
    impl Engine for Echo {
        fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
            Ok(echo(inputs))
        }
    }
    let h = Harness::start(window_config(), Some(fake(Echo))).await;
    for _ in 0..3 {
        let r = h
            .client
            .post(format!("{}/v1/infer", h.base))
            .header(crate::serve::kserve::PROBE_HEADER, "1")
            .json(&x([100.0, 100.0]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    assert_eq!(h.post("/v1/infer", x([1.0, 2.0])).await.0, 200);
    let windows = h.stop().await;
    assert_eq!(totals(&windows).0, 4, "probes are requests");
    let seen: u64 = windows.iter().flat_map(|(_, w)| &w.inputs).map(|s| s.count).sum();
    assert_eq!(seen, 2, "only the application's two values are in the statistics");
    let max = windows.iter().flat_map(|(_, w)| &w.inputs).map(|s| s.max).fold(0.0, f64::max);
    assert_eq!(max, 2.0, "the probes' values are not");
}
