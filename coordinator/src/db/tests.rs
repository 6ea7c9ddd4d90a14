//! Database tests on SQLite (PostgreSQL is covered end to end by the e2e suite).

use super::*;
use hone_common::bench::{BenchReport, LatencyStats};
use hone_common::wire::DeviceStatus;

async fn db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    (dir, Db::open(&url).await.unwrap())
}

fn status(id: &str, online: bool, session: u64) -> DeviceStatus {
    DeviceStatus {
        device_id: id.into(),
        online,
        session,
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

fn report(p50: f64) -> BenchReport {
    BenchReport {
        latency: LatencyStats {
            p50_ms: p50,
            p90_ms: p50,
            p99_ms: p50,
            mean_ms: p50,
            std_ms: 0.0,
            min_ms: p50,
            max_ms: p50,
        },
        iterations: 10,
        warmup: 1,
        load_ms: 1.0,
        peak_rss_bytes: 1000,
        synthetic_inputs: true,
        inputs: vec![],
        runtime: "tract".into(),
        mode: Default::default(),
        emulation: Default::default(),
        calibration: None,
        agent_version: "0".into(),
        timeline: vec![],
        throughput: vec![],
        cold_start_ms: None,
        readings: Default::default(),
    }
}

#[tokio::test]
async fn a_stale_will_does_not_override_a_newer_birth() {
    let (_d, db) = db().await;
    assert!(db.apply_status(&status("a", true, 2), 10).await.unwrap());
    assert!(
        !db.apply_status(&status("a", false, 1), 20).await.unwrap(),
        "old session's will is stale"
    );
    assert!(db.device("a").await.unwrap().unwrap().online);
    assert!(db.apply_status(&status("a", false, 2), 30).await.unwrap());
    let d = db.device("a").await.unwrap().unwrap();
    assert!(!d.online);
    assert_eq!(d.status_changed_ms, 30);
}

#[tokio::test]
async fn a_result_is_stored_once_per_job_and_completes_it() {
    let (_d, db) = db().await;
    let jobs = vec![("j1".to_string(), "m".to_string(), "a".to_string(), 3)];
    assert!(db.create_campaign("c1", &serde_json::json!({}), &jobs, 1).await.unwrap());
    assert!(
        !db.create_campaign("c1", &serde_json::json!({}), &jobs, 1).await.unwrap(),
        "idempotent"
    );
    db.mark_dispatched("j1", "cmd1", 2, 100).await.unwrap();
    let job = db.job("j1").await.unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("dispatched", 1));
    let r1 = report(5.0);
    let new = NewResult {
        job: &job,
        result_id: "j1/1",
        attempt: 1,
        profile: Some("rpi4"),
        report: &r1,
        now_ms: 3,
    };
    assert!(db.store_result(&new).await.unwrap());
    let r2 = report(9.0);
    let again = NewResult { report: &r2, ..new };
    assert!(!db.store_result(&again).await.unwrap(), "second delivery is not stored");
    let results = db.campaign_results("c1").await.unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].latency.p50_ms, 5.0);
    assert_eq!(db.job("j1").await.unwrap().unwrap().state, "done");
}

#[tokio::test]
async fn attempts_retry_until_the_limit_then_fail() {
    let (_d, db) = db().await;
    let jobs = vec![("j1".to_string(), "m".to_string(), "a".to_string(), 2)];
    db.create_campaign("c1", &serde_json::json!({}), &jobs, 1).await.unwrap();
    db.mark_dispatched("j1", "cmd1", 2, 100).await.unwrap();
    assert_eq!(
        db.end_attempt("j1", Some("other"), "x", true, 3).await.unwrap(),
        None,
        "stale command ignored"
    );
    assert_eq!(
        db.end_attempt("j1", Some("cmd1"), "timeout", true, 3).await.unwrap(),
        Some("queued")
    );
    db.mark_dispatched("j1", "cmd2", 4, 100).await.unwrap();
    assert_eq!(db.end_attempt("j1", None, "timeout", true, 5).await.unwrap(), Some("failed"));
    let job = db.job("j1").await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempt, job.last_error.as_deref()),
        ("failed", 2, Some("timeout"))
    );
}

#[tokio::test]
async fn models_are_found_by_id_name_or_digest_prefix() {
    let (_d, db) = db().await;
    let sha = "ab".repeat(32);
    let row = ModelRow {
        id: "m-abababababababab".into(),
        name: "net".into(),
        sha256: sha.clone(),
        size_bytes: 3,
        summary: serde_json::json!({"nodes": 1}),
        created_at_ms: 1,
        lineage: None,
    };
    let stored = db.insert_model(&row).await.unwrap();
    assert_eq!(db.insert_model(&row).await.unwrap().id, stored.id, "same digest, same model");
    for key in ["m-abababababababab", "net", "abababab"] {
        assert_eq!(db.find_model(key).await.unwrap().unwrap().sha256, sha, "{key}");
    }
    assert!(db.find_model("abab").await.unwrap().is_none(), "short prefixes are not digests");
    assert_eq!(stored.summary["nodes"], 1);
}
