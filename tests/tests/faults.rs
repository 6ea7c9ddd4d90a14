//! Faults: killed agents, a killed coordinator, liveness through Last Will.

use std::time::Duration;

use hone_e2e::*;
use serde_json::json;

#[test]
fn a_killed_agent_is_marked_offline_by_its_last_will_and_returns() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("e2e-live");
    let keepalive = 2;
    let mut agent =
        AgentProc::start(&coord, &dir.path().join("agents"), &id, "rpi4", keepalive).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    let session_before =
        api.get(&format!("/api/v1/devices/{id}")).unwrap()["session"].as_i64().unwrap();

    agent.kill9();
    // The agent said no goodbye: only the broker's Last Will can mark it offline. MQTT sends it
    // after 1.5 keepalives; the wait allows ten times that, so a loaded host cannot fail it,
    // and the time taken is a figure, not a gate.
    let took = api.wait_device(&id, false, Duration::from_secs(15 * keepalive)).unwrap();
    eprintln!("figure (not asserted): offline {took:?} after kill -9, keepalive {keepalive} s");

    agent.restart().unwrap();
    api.wait_device(&id, true, Duration::from_secs(10)).unwrap();
    let session_after =
        api.get(&format!("/api/v1/devices/{id}")).unwrap()["session"].as_i64().unwrap();
    assert_eq!(session_after, session_before + 1, "each agent start is a new session");
}

#[test]
fn an_agent_whose_state_disk_fails_keeps_serving_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("e2e-disk");
    let mut agent = AgentProc::start_with(&coord, &dir.path().join("agents"), &id, &[], 2).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    // The outbox folder becomes a file: every result write fails (as on a full or read-only
    // disk, which root would not notice through permissions).
    let outbox = agent.state_dir.join("outbox");
    std::fs::remove_dir_all(&outbox).unwrap();
    std::fs::write(&outbox, b"not a folder").unwrap();
    let tiny_path = dir.path().join("mlp.onnx");
    std::fs::write(&tiny_path, models::mlp(16)).unwrap();
    let m = api.register(&tiny_path, "mlp16").unwrap();
    let c = api.start_campaign(json!({"models": [m], "devices": id})).unwrap();
    let view = api.wait_campaign(&c, Duration::from_secs(60)).unwrap();
    assert_eq!(view["lines"][0]["state"], "done", "the result still arrives: {view}");
    assert!(agent.is_alive(), "the agent serves on:\n{}", agent.log());
    assert!(agent.log().contains("agent state fault"), "{}", agent.log());

    std::fs::remove_file(&outbox).unwrap();
    std::fs::create_dir(&outbox).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !agent.log().contains("fault cleared") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(agent.log().contains("fault cleared"), "{}", agent.log());
    let c = api.start_campaign(json!({"models": [m], "devices": id})).unwrap();
    let view = api.wait_campaign(&c, Duration::from_secs(60)).unwrap();
    assert_eq!(view["lines"][0]["state"], "done", "{view}");
    assert!(agent.is_alive());
}

#[test]
fn an_agent_killed_mid_job_gets_the_job_again_and_the_result_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("e2e-killjob");
    let mut agent = AgentProc::start(&coord, &dir.path().join("agents"), &id, "rpi4", 2).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    let m = api.register(&asset("minilm-l3-onnx"), "minilm").unwrap();
    let campaign = api
        .start_campaign(json!({
            "models": [m], "devices": id,
            "bench": {"warmup": 1, "max_iterations": 100000, "max_time_ms": 3000, "symbols": []},
            "job_timeout_ms": 60000, "max_attempts": 3,
        }))
        .unwrap();
    api.wait_campaign_until(&campaign, Duration::from_secs(30), |v| {
        v["lines"][0]["state"] == "running"
    })
    .unwrap();
    agent.kill9();
    let v = api
        .wait_campaign_until(&campaign, Duration::from_secs(10), |v| {
            v["lines"][0]["state"] == "queued"
        })
        .unwrap();
    assert!(v["lines"][0]["error"].as_str().unwrap().contains("went offline"), "{v}");
    agent.restart().unwrap();
    let view = api.wait_campaign(&campaign, Duration::from_secs(60)).unwrap();
    let line = &view["lines"][0];
    assert_eq!(line["state"], "done", "{view}");
    assert_eq!(line["attempts"], 2);
    assert_eq!(api.metric("results_stored"), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while agent.outbox_len() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(agent.outbox_len(), 0, "the acknowledged result left the outbox");
}

#[test]
fn a_job_on_an_agent_that_never_returns_fails_with_a_reason_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("e2e-gone");
    let mut agent = AgentProc::start(&coord, &dir.path().join("agents"), &id, "rpi4", 2).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    let tiny_path = dir.path().join("mlp.onnx");
    std::fs::write(&tiny_path, models::mlp(16)).unwrap();
    let m = api.register(&tiny_path, "mlp16").unwrap();
    agent.kill9();
    api.wait_device(&id, false, Duration::from_secs(5)).unwrap();
    let campaign = api
        .start_campaign(
            json!({"models": [m], "devices": id, "job_timeout_ms": 2000, "max_attempts": 2}),
        )
        .unwrap();
    let view = api.wait_campaign(&campaign, Duration::from_secs(20)).unwrap();
    let line = &view["lines"][0];
    assert_eq!(line["state"], "failed");
    assert!(line["error"].as_str().unwrap().contains("offline"), "{line}");
}

#[test]
fn a_coordinator_killed_mid_campaign_resumes_and_stores_each_result_once() {
    coordinator_restart_scenario(Broker::Embedded(free_port()), None);
}

#[test]
fn a_coordinator_on_mosquitto_and_postgres_killed_mid_campaign_resumes() {
    let db = fresh_postgres_db().expect("PostgreSQL must be reachable (HONE_TEST_POSTGRES_URL)");
    coordinator_restart_scenario(Broker::External(external_mqtt_url()), Some(db));
}

fn coordinator_restart_scenario(broker: Broker, database_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut coord =
        CoordinatorProc::start(&dir.path().join("coord"), broker, database_url).unwrap();
    let api = coord.api();
    let ids = [unique("e2e-cr-a"), unique("e2e-cr-b")];
    let agents: Vec<AgentProc> = ids
        .iter()
        .map(|id| AgentProc::start(&coord, &dir.path().join("agents"), id, "rpi5", 2).unwrap())
        .collect();
    for id in &ids {
        api.wait_device(id, true, Duration::from_secs(20)).unwrap();
    }
    let tiny_path = dir.path().join("mlp.onnx");
    std::fs::write(&tiny_path, models::mlp(256)).unwrap();
    let m1 = api.register(&tiny_path, "mlp256").unwrap();
    std::fs::write(&tiny_path, models::mlp(128)).unwrap();
    let m2 = api.register(&tiny_path, "mlp128").unwrap();
    let campaign = api
        .start_campaign(json!({
            "models": [m1, m2], "devices": ids.join(","), "max_parallel": 1,
            "bench": {"warmup": 1, "max_iterations": 100000, "max_time_ms": 700, "symbols": []},
        }))
        .unwrap();
    api.wait_campaign_until(&campaign, Duration::from_secs(30), |v| {
        v["progress"]["done"].as_u64() >= Some(1)
    })
    .unwrap();
    coord.kill9();
    std::thread::sleep(Duration::from_millis(500));
    coord.restart().unwrap();
    let api = coord.api();
    let view = api.wait_campaign(&campaign, Duration::from_secs(90)).unwrap();
    assert_eq!(view["progress"]["done"], 4, "{view}");
    let stored: std::collections::HashSet<&str> =
        view["lines"].as_array().unwrap().iter().map(|l| l["job"].as_str().unwrap()).collect();
    assert_eq!(stored.len(), 4);
    for a in &agents {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while a.outbox_len() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(a.outbox_len(), 0, "every result was acknowledged");
    }
    if let Broker::External(url) = &coord.broker {
        clear_retained(url, &[&ids[0], &ids[1]]);
    }
}
