//! Campaigns end to end, on the embedded defaults and on Mosquitto + PostgreSQL.

use std::time::Duration;

use hone_e2e::*;
use serde_json::json;

fn run_campaign_scenario(broker: Broker, database_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordinatorProc::start(&dir.path().join("coord"), broker, database_url).unwrap();
    let api = coord.api();
    let ids = [unique("e2e-rpi4"), unique("e2e-n100")];
    let _a = AgentProc::start(&coord, &dir.path().join("agents"), &ids[0], "rpi4", 5).unwrap();
    let _b =
        AgentProc::start(&coord, &dir.path().join("agents"), &ids[1], "intel-n100", 5).unwrap();
    for id in &ids {
        api.wait_device(id, true, Duration::from_secs(20)).unwrap();
    }
    let device = api.get(&format!("/api/v1/devices/{}", ids[0])).unwrap();
    assert_eq!(device["profile"], "rpi4");
    assert_eq!(device["arch"], std::env::consts::ARCH);
    assert!(device["cores"].as_i64().unwrap() >= 1);

    let minilm = api.register(&asset("minilm-l3-onnx"), "minilm-l3").unwrap();
    let tiny_path = dir.path().join("mlp.onnx");
    std::fs::write(&tiny_path, models::mlp(64)).unwrap();
    let tiny = api.register(&tiny_path, "mlp64").unwrap();
    let campaign = api
        .start_campaign(json!({
            "models": [minilm, tiny],
            "devices": ids.join(","),
            "bench": {"warmup": 2, "max_iterations": 10, "max_time_ms": 2000, "symbols": []},
            "max_parallel": 1,
        }))
        .unwrap();
    let view = api.wait_campaign(&campaign, Duration::from_secs(120)).unwrap();
    let lines = view["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 4, "{view}");
    for l in lines {
        assert_eq!(l["state"], "done", "{l}");
        assert!(l["p50_ms"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["p99_ms"].as_f64().unwrap() >= l["p50_ms"].as_f64().unwrap());
        assert!(l["iterations"].as_i64().unwrap() >= 1);
        assert!(l["peak_rss_bytes"].as_i64().unwrap() > 1 << 20);
        assert_eq!(l["synthetic_inputs"], true);
        assert_eq!(l["attempts"], 1);
    }
    let minilm_p50 =
        lines.iter().find(|l| l["model"] == "minilm-l3").unwrap()["p50_ms"].as_f64().unwrap();
    let tiny_p50 =
        lines.iter().find(|l| l["model"] == "mlp64").unwrap()["p50_ms"].as_f64().unwrap();
    assert!(
        minilm_p50 > 10.0 * tiny_p50,
        "a 17M-parameter encoder must be slower than a 64x64 matmul"
    );

    // The CLI shows the same campaign.
    let out = coord.cli().args(["campaign", "show", &campaign, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["progress"]["done"], 4);
    assert_eq!(api.metric("results_stored"), 4);
    if let Broker::External(url) = &coord.broker {
        clear_retained(url, &[&ids[0], &ids[1]]);
    }
}

#[test]
fn campaign_runs_end_to_end_on_embedded_broker_and_sqlite() {
    run_campaign_scenario(Broker::Embedded(free_port()), None);
}

#[test]
fn campaign_runs_end_to_end_on_mosquitto_and_postgres() {
    let db = fresh_postgres_db().expect("PostgreSQL must be reachable (HONE_TEST_POSTGRES_URL)");
    run_campaign_scenario(Broker::External(external_mqtt_url()), Some(db));
}

#[test]
fn creating_a_campaign_twice_with_the_same_id_creates_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("e2e-idem");
    let _a = AgentProc::start(&coord, &dir.path().join("agents"), &id, "rpi5", 5).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    let tiny_path = dir.path().join("mlp.onnx");
    std::fs::write(&tiny_path, models::mlp(16)).unwrap();
    let m = api.register(&tiny_path, "mlp16").unwrap();
    let body = json!({"id": "nightly-42", "models": [m], "devices": "all"});
    let (s1, v1) = api.post("/api/v1/campaigns", &body).unwrap();
    let (s2, v2) = api.post("/api/v1/campaigns", &body).unwrap();
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(v1["id"], v2["id"]);
    let view = api.wait_campaign("nightly-42", Duration::from_secs(60)).unwrap();
    assert_eq!(view["progress"]["total"], 1);
    assert_eq!(api.get("/api/v1/campaigns").unwrap().as_array().unwrap().len(), 1);
}
