//! Database tests on SQLite; those that loop over [`testing::backends`] also run on
//! PostgreSQL when a server answers (PostgreSQL is covered end to end by the e2e suite too).

use super::*;
use hone_common::wire::DeviceStatus;
use testing::report;

async fn db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    (dir, Db::open(&url).await.unwrap())
}

fn status(id: &str, online: bool, session: u64) -> DeviceStatus {
    DeviceStatus {
        runtimes: Default::default(),
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
async fn commits_do_not_wait_for_the_disk() {
    for t in testing::backends().await {
        // Every pooled connection, not only the first: the settings are per connection.
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(t.db.pool.acquire().await.unwrap());
        }
        for conn in &mut conns {
            let setting: String = if t.backend == "sqlite" {
                let v: i64 =
                    sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut **conn).await.unwrap();
                v.to_string()
            } else {
                sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut **conn).await.unwrap()
            };
            let expected = if t.backend == "sqlite" { "1" } else { "off" }; // 1 = NORMAL
            assert_eq!(setting, expected, "{}", t.backend);
        }
        drop(conns);
        t.finish().await;
    }
}

#[tokio::test]
async fn a_devices_last_seen_time_is_written_at_most_once_per_interval() {
    let (_d, db) = db().await;
    assert!(db.apply_status(&status("a", true, 1), 10).await.unwrap());
    let seen = |db: Db| async move { db.device("a").await.unwrap().unwrap().last_seen_ms };
    db.touch_device("a", 1_000).await.unwrap();
    assert_eq!(seen(db.clone()).await, 1_000);
    db.touch_device("a", 1_000 + TOUCH_INTERVAL_MS - 1).await.unwrap();
    assert_eq!(seen(db.clone()).await, 1_000, "within the interval: not written");
    db.touch_device("a", 1_000 + TOUCH_INTERVAL_MS).await.unwrap();
    assert_eq!(seen(db.clone()).await, 1_000 + TOUCH_INTERVAL_MS);
}

#[tokio::test]
async fn a_result_is_stored_once_per_job_and_completes_it() {
    let (_d, db) = db().await;
    let jobs = vec![("j1".to_string(), "m".to_string(), "a".to_string(), 3)];
    let spec = serde_json::json!({});
    assert_eq!(db.create_campaign("c1", &spec, &jobs, 1).await.unwrap(), CreateOutcome::Created);
    assert_eq!(
        db.create_campaign("c1", &spec, &jobs, 1).await.unwrap(),
        CreateOutcome::Exists,
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

#[tokio::test]
async fn a_duplicate_campaign_id_is_a_typed_outcome_and_a_taken_job_id_a_typed_error() {
    for t in testing::backends().await {
        let db = &t.db;
        let backend = t.backend;
        let spec = serde_json::json!({"v": 1});
        let jobs = vec![("c1-j0".to_string(), "m".to_string(), "a".to_string(), 3)];
        assert!(!db.campaign_exists("c1").await.unwrap(), "{backend}");
        assert_eq!(
            db.create_campaign("c1", &spec, &jobs, 1).await.unwrap(),
            CreateOutcome::Created
        );
        assert!(db.campaign_exists("c1").await.unwrap(), "{backend}");
        let other = serde_json::json!({"v": 2});
        assert_eq!(
            db.create_campaign("c1", &other, &[], 2).await.unwrap(),
            CreateOutcome::Exists,
            "{backend}"
        );
        let kept = db.campaign("c1").await.unwrap().unwrap();
        assert_eq!((kept.spec["v"].as_i64(), kept.created_at_ms), (Some(1), 1), "{backend}");
        assert_eq!(db.campaign_jobs("c1").await.unwrap().len(), 1, "{backend}");

        // Another campaign reusing a job id: a typed error, and nothing of it is written.
        let err = db.create_campaign("c2", &spec, &jobs, 3).await.unwrap_err();
        assert!(
            matches!(&err, DbError::DuplicateJob { job } if job == "c1-j0"),
            "{backend}: {err}"
        );
        assert!(!db.campaign_exists("c2").await.unwrap(), "{backend}: rolled back");
        assert_eq!(db.job("c1-j0").await.unwrap().unwrap().campaign_id, "c1", "{backend}");
        t.finish().await;
    }
}

#[tokio::test]
async fn cancelling_fails_open_jobs_and_only_a_running_campaign() {
    for t in testing::backends().await {
        let db = &t.db;
        let backend = t.backend;
        let jobs: Vec<(String, String, String, i64)> = ["j0", "j1", "j2"]
            .iter()
            .map(|j| (j.to_string(), "m".to_string(), "a".to_string(), 3))
            .collect();
        db.create_campaign("c1", &serde_json::json!({}), &jobs, 1).await.unwrap();
        db.mark_dispatched("j0", "cmd0", 2, 100).await.unwrap();
        let j0 = db.job("j0").await.unwrap().unwrap();
        let r = report(5.0);
        let new = NewResult {
            job: &j0,
            result_id: "j0/1",
            attempt: 1,
            profile: None,
            report: &r,
            now_ms: 3,
        };
        assert!(db.store_result(&new).await.unwrap());
        db.mark_dispatched("j1", "cmd1", 4, 100).await.unwrap();

        assert_eq!(
            db.cancel_campaign("c1", "stop", 5).await.unwrap(),
            CancelOutcome::Cancelled { jobs_failed: 2 },
            "{backend}"
        );
        let c = db.campaign("c1").await.unwrap().unwrap();
        assert_eq!((c.state.as_str(), c.finished_at_ms), ("cancelled", Some(5)), "{backend}");
        let states: Vec<(String, Option<String>, Option<i64>)> = db
            .campaign_jobs("c1")
            .await
            .unwrap()
            .into_iter()
            .map(|j| (j.state, j.last_error, j.deadline_ms))
            .collect();
        let cancelled = Some("cancelled: stop".to_string());
        assert_eq!(
            states,
            [
                ("done".into(), None, None),
                ("failed".into(), cancelled.clone(), Some(100)),
                ("failed".into(), cancelled, None),
            ],
            "{backend}: the dispatched job keeps its deadline (its device is held)"
        );
        assert!(!db.mark_dispatched("j2", "cmd2", 6, 100).await.unwrap(), "{backend}");
        assert_eq!(db.held_devices(99).await.unwrap(), ["a"], "{backend}");
        assert!(db.held_devices(100).await.unwrap().is_empty(), "{backend}: deadline passed");
        db.release_held("a", 7).await.unwrap();
        assert!(db.held_devices(0).await.unwrap().is_empty(), "{backend}");

        assert_eq!(
            db.cancel_campaign("c1", "again", 8).await.unwrap(),
            CancelOutcome::NotRunning { state: "cancelled".into() },
            "{backend}"
        );
        assert_eq!(db.cancel_campaign("zz", "x", 8).await.unwrap(), CancelOutcome::NotFound);
        let jobs = vec![("d-j0".to_string(), "m".to_string(), "a".to_string(), 3)];
        db.create_campaign("d", &serde_json::json!({}), &jobs, 1).await.unwrap();
        db.finish_campaign("d", 9).await.unwrap();
        assert_eq!(
            db.cancel_campaign("d", "late", 10).await.unwrap(),
            CancelOutcome::NotRunning { state: "done".into() },
            "{backend}"
        );
        t.finish().await;
    }
}

#[tokio::test]
async fn only_a_queued_job_is_reassigned_and_the_move_is_recorded() {
    for t in testing::backends().await {
        let db = &t.db;
        let backend = t.backend;
        let jobs = vec![
            ("j0".to_string(), "m".to_string(), "a".to_string(), 3),
            ("j1".to_string(), "m".to_string(), "a".to_string(), 3),
        ];
        db.create_campaign("c1", &serde_json::json!({}), &jobs, 1).await.unwrap();
        assert!(db.reassign_job("j0", "b", "device a is offline", 2).await.unwrap(), "{backend}");
        let j0 = db.job("j0").await.unwrap().unwrap();
        assert_eq!(j0.device_id, "b", "{backend}");
        assert_eq!(j0.last_error.as_deref(), Some("moved from a to b: device a is offline"));
        assert_eq!((j0.state.as_str(), j0.attempt), ("queued", 0), "{backend}");
        assert!(!db.reassign_job("j0", "b", "again", 3).await.unwrap(), "{backend}: same device");
        db.mark_dispatched("j1", "cmd1", 4, 100).await.unwrap();
        assert!(!db.reassign_job("j1", "b", "x", 5).await.unwrap(), "{backend}: active job");
        assert_eq!(db.job("j1").await.unwrap().unwrap().device_id, "a", "{backend}");
        assert!(!db.reassign_job("nope", "b", "x", 5).await.unwrap(), "{backend}");
        t.finish().await;
    }
}
