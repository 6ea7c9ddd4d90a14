//! A deployment's whole life against a real database (SQLite, and PostgreSQL when a server
//! answers): the rollout task and the engine's handlers, driven by hand-made agent reports and
//! telemetry.

use std::sync::Arc;
use std::time::Duration;

use hone_common::serving::{ServingWindow, WindowLatency};
use hone_common::wire::{
    ActivationOutcome, ActivationReport, DeviceStatus, FailureKind, Telemetry,
};
use tokio::sync::Notify;

use super::monitor::Monitor;
use super::rollout::{Rollout, record_activation};
use super::*;
use crate::artifacts::Signer;
use crate::db::{ModelRow, testing};

fn status(id: &str) -> DeviceStatus {
    DeviceStatus {
        runtimes: Default::default(),
        device_id: id.into(),
        online: true,
        session: 1,
        agent_version: "0.1.0".into(),
        arch: "x86_64".into(),
        os: "linux".into(),
        cores: 2,
        memory_bytes: 1 << 30,
        profile: Some("rpi4".into()),
        sent_at_ms: 0,
        fault: None,
    }
}

async fn model(db: &Db, name: &str) -> String {
    let sha = format!("{:0>64}", hex::encode(name));
    db.insert_model(&ModelRow {
        id: format!("m-{name}"),
        name: name.into(),
        sha256: sha,
        size_bytes: 100,
        summary: serde_json::json!({}),
        created_at_ms: 0,
        lineage: None,
    })
    .await
    .unwrap()
    .id
}

fn rollout(db: &Db) -> Rollout {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    // A bus to no broker: publishing fails quietly, as during a broker outage.
    let config = crate::mqtt::config("127.0.0.1".into(), 1, "t".into(), Duration::from_secs(5), 0);
    let bus = crate::mqtt::start(config, None, None, 0, metrics, tx);
    Rollout {
        db: db.clone(),
        bus,
        signer: Signer::from_seed([3; 32]),
        public_url: "http://c".into(),
        wake: Arc::new(Notify::new()),
    }
}

fn now() -> i64 {
    hone_common::clock::now_ms() as i64
}

async fn device(db: &Db, dep: &str, id: &str) -> crate::db::DeploymentDeviceRow {
    db.deployment_devices(dep).await.unwrap().into_iter().find(|d| d.device_id == id).unwrap()
}

async fn report(db: &Db, dep: &str, id: &str, outcome: ActivationOutcome) -> bool {
    let x = device(db, dep, id).await;
    let r = ActivationReport {
        command_id: x.command_id.clone().expect("a command was sent"),
        deployment_id: dep.into(),
        artifact_id: None,
        outcome,
        sent_at_ms: 0,
    };
    record_activation(db, id, &r, now()).await.unwrap()
}

fn active() -> ActivationOutcome {
    ActivationOutcome::Active { load_ms: 12.0, warmup_ms: 1.0, previous: None }
}

fn window(device: &str, model: &str, dep: &str, requests: u64, p99: f64) -> Telemetry {
    let start = hone_common::clock::now_ms();
    Telemetry {
        device_id: device.into(),
        seq: 1,
        session: 1,
        artifact_id: Some(model.into()),
        deployment_id: Some(dep.into()),
        window: ServingWindow {
            window_start_ms: start,
            window_ms: 1000,
            requests,
            errors: 0,
            rejected: 0,
            latency: Some(WindowLatency {
                p50_ms: p99 / 2.0,
                p90_ms: p99,
                p99_ms: p99,
                max_ms: p99,
            }),
            rss_bytes: 50 << 20,
            inputs: vec![],
            outputs: vec![],
        },
        temperature_c: None,
        clock_mhz: None,
        throttled: false,
        reading_source: None,
        dropped_windows: 2,
    }
}

async fn state(db: &Db, id: &str) -> String {
    db.deployment(id).await.unwrap().unwrap().state
}

#[tokio::test]
async fn a_canary_passes_its_gate_then_the_rest_activate() {
    for t in testing::backends().await {
        let db = &t.db;
        let b = t.backend;
        for id in ["a", "b", "c"] {
            db.apply_status(&status(id), 1).await.unwrap();
        }
        let m = model(db, "good").await;
        let mut req = DeployRequest::new(&m, "profile:rpi4");
        req.id = Some("dep1".into());
        req.gate = "p99_ms<=50,error_rate<=0.05".parse().unwrap();
        req.window_s = 0.05;
        req.min_requests = 10;
        let (id, new) = create(db, &req, now()).await.unwrap();
        assert!(new, "{b}");
        assert_eq!(create(db, &req, now()).await.unwrap(), (id.clone(), false), "idempotent");
        let r = rollout(db);
        r.tick().await.unwrap();
        let devices = db.deployment_devices(&id).await.unwrap();
        let waves: Vec<(&str, i64, &str)> =
            devices.iter().map(|d| (d.device_id.as_str(), d.wave, d.state.as_str())).collect();
        assert_eq!(
            waves,
            [("a", 0, "activating"), ("b", 1, "pending"), ("c", 1, "pending")],
            "{b}"
        );
        assert!(report(db, &id, "a", active()).await, "{b}");
        // Active but quiet: the gate waits.
        r.tick().await.unwrap();
        assert_eq!(state(db, &id).await, "canary", "{b}");
        let monitor = Monitor::default();
        monitor.ingest(db, "a", &window("a", &m, &id, 30, 20.0), now()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        r.tick().await.unwrap();
        assert_eq!(state(db, &id).await, "rolling", "{b}");
        let gate = db.deployment(&id).await.unwrap().unwrap().gate.unwrap();
        assert_eq!(gate["verdict"], "pass", "{b} {gate}");
        assert_eq!(gate["figures"]["requests"], 30, "{b}");
        r.tick().await.unwrap();
        for x in ["b", "c"] {
            assert_eq!(device(db, &id, x).await.state, "activating", "{b}");
            assert!(report(db, &id, x, active()).await, "{b}");
        }
        r.tick().await.unwrap();
        assert_eq!(state(db, &id).await, "done", "{b}");
        let models = db.device_models().await.unwrap();
        assert!(models.iter().all(|d| d.active_model_id.as_deref() == Some(m.as_str())), "{b}");
        let x = device(db, &id, "a").await;
        assert_eq!(x.load_ms, Some(12.0), "{b}");
        // The telemetry is stored with what the agent could not deliver.
        let series = db.telemetry("a", 0, 10).await.unwrap();
        assert_eq!(series.len(), 1, "{b}");
        assert_eq!((series[0].requests, series[0].dropped_windows), (30, 2), "{b}");
        assert_eq!(series[0].p99_ms, Some(20.0), "{b}");

        // A second model: the canary cannot activate it, so it rolls back at once, the rest
        // is never touched, and every device should serve the first model again.
        let m2 = model(db, "broken").await;
        let mut req2 = DeployRequest::new(&m2, "profile:rpi4");
        req2.id = Some("dep2".into());
        let (id2, _) = create(db, &req2, now()).await.unwrap();
        assert_eq!(
            device(db, &id2, "a").await.previous_model_id.as_deref(),
            Some(m.as_str()),
            "{b}"
        );
        r.tick().await.unwrap();
        let failed = ActivationOutcome::Failed {
            kind: FailureKind::ModelInvalid,
            reason: "tract cannot load the model: no Foo op".into(),
            serving: Some(m.clone()),
        };
        assert!(report(db, &id2, "a", failed).await, "{b}");
        r.tick().await.unwrap();
        r.tick().await.unwrap();
        let d2 = db.deployment(&id2).await.unwrap().unwrap();
        assert_eq!(d2.state, "rolled_back", "{b}");
        let reason = d2.reason.unwrap();
        assert!(
            reason.contains("a could not activate") && reason.contains("no Foo op"),
            "{b} {reason}"
        );
        assert_eq!(device(db, &id2, "b").await.state, "skipped", "{b}");
        let models = db.device_models().await.unwrap();
        for d in &models {
            assert_eq!(d.desired_model_id.as_deref(), Some(m.as_str()), "{b} {d:?}");
            assert_eq!(d.active_model_id.as_deref(), Some(m.as_str()), "{b} {d:?}");
        }
        t.finish().await;
    }
}

#[tokio::test]
async fn a_slow_canary_is_rolled_back_to_the_previous_model() {
    for t in testing::backends().await {
        let db = &t.db;
        let b = t.backend;
        for id in ["a", "b"] {
            db.apply_status(&status(id), 1).await.unwrap();
        }
        let m = model(db, "slow").await;
        let mut req = DeployRequest::new(&m, "a,b");
        req.gate = "p99_ms<=5".parse().unwrap();
        req.window_s = 0.05;
        req.min_requests = 10;
        let (id, _) = create(db, &req, now()).await.unwrap();
        let r = rollout(db);
        r.tick().await.unwrap();
        assert!(report(db, &id, "a", active()).await);
        Monitor::default().ingest(db, "a", &window("a", &m, &id, 40, 80.0), now()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        r.tick().await.unwrap();
        let d = db.deployment(&id).await.unwrap().unwrap();
        assert_eq!(d.state, "rolling_back", "{b}");
        assert!(d.reason.as_deref().unwrap().contains("p99 80.0 ms"), "{b} {d:?}");
        // The canary had no model before: it is told to stop serving.
        r.tick().await.unwrap();
        assert_eq!(device(db, &id, "a").await.state, "rolling_back", "{b}");
        assert!(report(db, &id, "a", active()).await, "{b}");
        r.tick().await.unwrap();
        assert_eq!(state(db, &id).await, "rolled_back", "{b}");
        let a = db.device_models().await.unwrap().into_iter().find(|d| d.device_id == "a").unwrap();
        assert_eq!((a.desired_model_id, a.active_model_id), (None, None), "{b}");
        // Rolled back already: a second rollback is refused.
        assert!(!rollback(db, &id, "again", now()).await.unwrap(), "{b}");
        t.finish().await;
    }
}

#[tokio::test]
async fn offline_devices_and_bad_requests_are_refused_before_anything_is_stored() {
    let t = testing::sqlite().await;
    let db = &t.db;
    db.apply_status(&status("a"), 1).await.unwrap();
    let m = model(db, "x").await;
    let err = |r: Result<(String, bool), CreateError>| match r {
        Err(CreateError::Invalid(m)) => m,
        other => panic!("{other:?}"),
    };
    let e = err(create(db, &DeployRequest::new(&m, "a,zz"), now()).await);
    assert!(e.contains("zz"), "{e}");
    let e = err(create(db, &DeployRequest::new("nope", "a"), now()).await);
    assert!(e.contains("no model"), "{e}");
    let e = err(create(db, &DeployRequest::new(&m, "profile:rpi5"), now()).await);
    assert!(e.contains("rpi5"), "{e}");
    assert!(db.deployments(false).await.unwrap().is_empty());
    t.finish().await;
}

#[tokio::test]
async fn a_new_alert_is_posted_to_the_webhook_with_its_suggestion() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = testing::sqlite().await;
    let db = &t.db;
    db.apply_status(&status("a"), 1).await.unwrap();
    let m = model(db, "hooked").await;
    let mut req = DeployRequest::new(&m, "a");
    req.latency_budget_ms = Some(4.0);
    let (id, _) = create(db, &req, now()).await.unwrap();
    // A webhook receiver: one HTTP request, its body sent on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = sock.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                    let _ = tx.send(text[end + 4..].to_string()).await;
                    return;
                }
            }
            if n == 0 {
                return;
            }
        }
    });
    let monitor = Monitor { webhook: Some(url) };
    for i in 0..3u64 {
        // Medians of 10 ms against a 4 ms budget, three windows in a row.
        let mut w = window("a", &m, &id, 30, 20.0);
        w.window.window_start_ms += i * 1000;
        let opened = monitor.ingest(db, "a", &w, now()).await.unwrap();
        assert_eq!(opened.len(), usize::from(i == 2), "the third window opens the alert");
    }
    let body = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["alert"]["rule"], "latency_budget", "{v}");
    assert_eq!(v["alert"]["device_id"], "a");
    let target = v["suggestion"]["request"]["latency_budget_ms"].as_f64().unwrap();
    assert!((target - 1.6).abs() < 1e-9, "4 × 4 / 10 ms: {v}");
    assert_eq!(v["suggestion"]["class"], "rpi4");
    t.finish().await;
}

#[tokio::test]
async fn after_a_rollback_the_restored_model_is_judged_by_its_own_deployment() {
    let t = testing::sqlite().await;
    let db = &t.db;
    db.apply_status(&status("a"), 1).await.unwrap();
    let r = rollout(db);
    // m1 with a generous budget, done on `a`.
    let m1 = model(db, "first").await;
    let mut req = DeployRequest::new(&m1, "a");
    req.id = Some("dep1".into());
    req.latency_budget_ms = Some(100.0);
    req.gate = "none".parse().unwrap();
    req.window_s = 0.01;
    req.min_requests = 1;
    create(db, &req, now()).await.unwrap();
    r.tick().await.unwrap();
    assert!(report(db, "dep1", "a", active()).await);
    let monitor = Monitor::default();
    monitor.ingest(db, "a", &window("a", &m1, "dep1", 5, 20.0), now()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    r.tick().await.unwrap();
    assert_eq!(state(db, "dep1").await, "done");
    // m2 with a tight budget, rolled back by the operator: the agent serves m1 again, and
    // tags its windows with dep2 (the deployment whose rollback activated it).
    let m2 = model(db, "second").await;
    let mut req2 = DeployRequest::new(&m2, "a");
    req2.id = Some("dep2".into());
    req2.latency_budget_ms = Some(1.0);
    create(db, &req2, now()).await.unwrap();
    r.tick().await.unwrap();
    assert!(report(db, "dep2", "a", active()).await);
    assert!(rollback(db, "dep2", "by hand", now()).await.unwrap());
    r.tick().await.unwrap();
    assert!(report(db, "dep2", "a", active()).await);
    r.tick().await.unwrap();
    assert_eq!(state(db, "dep2").await, "rolled_back");
    for i in 1..=3u64 {
        // Medians of 10 ms: over dep2's 1 ms budget, well within dep1's 100 ms.
        let mut w = window("a", &m1, "dep2", 30, 20.0);
        w.window.window_start_ms += i * 1000;
        let opened = monitor.ingest(db, "a", &w, now()).await.unwrap();
        assert!(opened.is_empty(), "m1 is judged by dep1's budget: {opened:?}");
    }
    // The same windows of m2 under dep2 would breach.
    for i in 4..=6u64 {
        let mut w = window("a", &m2, "dep2", 30, 20.0);
        w.window.window_start_ms += i * 1000;
        monitor.ingest(db, "a", &w, now()).await.unwrap();
    }
    let alerts = db.alerts(true).await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].deployment_id.as_deref(), Some("dep2"));
    t.finish().await;
}
