//! Bad input: malformed and oversized MQTT payloads, corrupt and unloadable models, tampered
//! artifacts.

use std::time::Duration;

use hone_common::topic::{self, EvtKind};
use hone_e2e::*;
use serde_json::json;

fn payload_probes(device: &str) -> Vec<(String, Vec<u8>)> {
    let evt = topic::evt(device, EvtKind::Result);
    let mut wrong_version = hone_common::wire::encode(&hone_common::wire::Message::ResultAck(
        hone_common::wire::ResultAck { result_id: "x".into() },
    ))
    .unwrap();
    wrong_version[0] = 9;
    vec![
        (evt.clone(), b"\xff\xff\xff garbage".to_vec()),
        (evt.clone(), wrong_version),
        (topic::status(device), vec![hone_common::wire::WIRE_VERSION as u8, 0x00, 0x05]),
    ]
}

fn campaign_still_works(coord: &CoordinatorProc, dir: &std::path::Path) {
    let api = coord.api();
    let id = unique("e2e-after");
    let _agent = AgentProc::start(coord, &dir.join("agents"), &id, "rpi4", 5).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    let tiny_path = dir.join("mlp.onnx");
    std::fs::write(&tiny_path, models::mlp(32)).unwrap();
    let m = api.register(&tiny_path, "mlp32").unwrap();
    let c = api.start_campaign(json!({"models": [m], "devices": id})).unwrap();
    let view = api.wait_campaign(&c, Duration::from_secs(60)).unwrap();
    assert_eq!(view["progress"]["done"], 1, "{view}");
    if let Broker::External(url) = &coord.broker {
        clear_retained(url, &[&id]);
    }
}

#[test]
fn malformed_payloads_are_counted_and_the_coordinator_keeps_its_connection_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    publish_raw(&coord.mqtt_url(), &payload_probes("e2e-probe"));
    // Over the broker's limit: rumqttd drops that publisher's connection, never the coordinator's.
    publish_raw(
        &coord.mqtt_url(),
        &[(topic::evt("e2e-probe", EvtKind::Result), vec![0u8; 200 * 1024])],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while api.metric("rejected_malformed") + api.metric("rejected_version") < 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(api.metric("rejected_malformed") >= 2, "{}", api.get("/api/v1/metrics").unwrap());
    assert_eq!(api.metric("rejected_version"), 1);
    assert_eq!(api.metric("bus_connected"), 1);
    campaign_still_works(&coord, dir.path());
}

#[test]
fn oversized_and_malformed_payloads_via_mosquitto_are_rejected_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordinatorProc::start(
        &dir.path().join("coord"),
        Broker::External(external_mqtt_url()),
        None,
    )
    .unwrap();
    let api = coord.api();
    // A shared broker may hold retained messages from elsewhere; count from a settled baseline.
    std::thread::sleep(Duration::from_millis(500));
    let before = |name: &str| api.metric(name);
    let (malformed0, version0, oversized0) =
        (before("rejected_malformed"), before("rejected_version"), before("rejected_oversized"));
    let device = unique("e2e-probe");
    let mut probes = payload_probes(&device);
    // Mosquitto's default has no size limit, so this reaches the coordinator's decoder.
    probes.push((topic::evt(&device, EvtKind::Result), vec![7u8; 100 * 1024]));
    publish_raw(&coord.mqtt_url(), &probes);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while api.metric("rejected_oversized") < oversized0 + 1 && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(api.metric("rejected_oversized") - oversized0, 1);
    assert!(api.metric("rejected_malformed") - malformed0 >= 2);
    assert_eq!(api.metric("rejected_version") - version0, 1);
    assert_eq!(api.metric("bus_connected"), 1);
    campaign_still_works(&coord, dir.path());
}

#[test]
fn corrupt_and_unloadable_models_are_refused_at_registration_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let (status, body) =
        api.post_bytes("/api/v1/models?name=junk", b"\x00\x01garbage bytes".to_vec()).unwrap();
    assert_eq!(status, 422, "{body}");
    let good = models::mlp(32);
    let (status, body) =
        api.post_bytes("/api/v1/models?name=cut", good[..good.len() / 2].to_vec()).unwrap();
    assert_eq!(status, 422, "{body}");
    let (status, body) =
        api.post_bytes("/api/v1/models?name=mystery", models::unknown_op()).unwrap();
    assert_eq!(status, 422);
    let reason = body["error"].as_str().unwrap();
    assert!(reason.contains("HoneMysteryOp") || reason.contains("mystery_node"), "{reason}");
    assert_eq!(
        api.get("/api/v1/models").unwrap().as_array().unwrap().len(),
        0,
        "nothing registered"
    );

    // The CLI says why and exits non-zero.
    let path = dir.path().join("mystery.onnx");
    std::fs::write(&path, models::unknown_op()).unwrap();
    let out = coord.cli().args(["models", "add", path.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("422"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_tampered_artifact_fails_its_job_with_a_reason_and_the_agent_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("e2e-tamper");
    let mut agent = AgentProc::start(&coord, &dir.path().join("agents"), &id, "rpi4", 5).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    let tiny_path = dir.path().join("mlp.onnx");
    std::fs::write(&tiny_path, models::mlp(32)).unwrap();
    let m = api.register(&tiny_path, "mlp32").unwrap();
    let sha =
        api.get(&format!("/api/v1/models/{m}")).unwrap()["sha256"].as_str().unwrap().to_string();
    // Flip one byte of the stored artifact behind the coordinator's back.
    let stored = coord.data_dir.join("artifacts").join(format!("{sha}.onnx"));
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&stored, &bytes).unwrap();

    let c = api.start_campaign(json!({"models": [m], "devices": id})).unwrap();
    let view = api.wait_campaign(&c, Duration::from_secs(30)).unwrap();
    let line = &view["lines"][0];
    assert_eq!(line["state"], "failed", "{view}");
    assert!(line["error"].as_str().unwrap().starts_with("hash_mismatch"), "{line}");
    assert_eq!(line["attempts"], 1, "a hash mismatch is not retried");
    assert!(agent.is_alive());
    assert!(
        !agent.state_dir.join("store/models").join(format!("{sha}.onnx")).exists(),
        "nothing stored"
    );

    // Restore the bytes: the same agent serves the next campaign.
    bytes[mid] ^= 0x40;
    std::fs::write(&stored, &bytes).unwrap();
    let c = api.start_campaign(json!({"models": [m], "devices": id})).unwrap();
    assert_eq!(api.wait_campaign(&c, Duration::from_secs(30)).unwrap()["progress"]["done"], 1);
}

#[test]
fn a_model_the_agent_cannot_run_fails_its_job_and_the_agent_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("e2e-invalid");
    let mut agent = AgentProc::start(&coord, &dir.path().join("agents"), &id, "rpi4", 5).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    let tiny_path = dir.path().join("mlp.onnx");
    std::fs::write(&tiny_path, models::mlp(32)).unwrap();
    let m = api.register(&tiny_path, "mlp32").unwrap();
    // A batch of 2^40 rows cannot be synthesised: the benchmark process refuses the model.
    let c = api
        .start_campaign(json!({"models": [m], "devices": id,
            "bench": {"warmup": 1, "max_iterations": 5, "max_time_ms": 1000, "symbols": [["batch", 1099511627776u64]]}}))
        .unwrap();
    let view = api.wait_campaign(&c, Duration::from_secs(30)).unwrap();
    let line = &view["lines"][0];
    assert_eq!(line["state"], "failed", "{view}");
    assert!(line["error"].as_str().unwrap().starts_with("model_invalid"), "{line}");
    assert!(agent.is_alive());
    let c = api.start_campaign(json!({"models": [m], "devices": id})).unwrap();
    assert_eq!(api.wait_campaign(&c, Duration::from_secs(30)).unwrap()["progress"]["done"], 1);
}

#[test]
fn the_local_bench_command_reports_garbage_and_truncated_models_as_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("garbage.onnx", b"\x08\x07garbage that is not protobuf".to_vec()),
        ("cut.onnx", {
            let m = models::mlp(32);
            m[..m.len() / 3].to_vec()
        }),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = std::process::Command::new(bin("edge-agent"))
            .args(["bench", "--json", "--model", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["outcome"], "model_invalid", "{name}: {v}");
        assert!(!v["reason"].as_str().unwrap().is_empty());
    }
}

#[test]
fn a_reader_that_stops_early_ends_a_command_quietly() {
    // `(sleep; cmd) | true`: the reader has gone before the command writes, so every write to
    // stdout fails with a broken pipe.
    for bin_name in ["edge-agent", "coordinator"] {
        let args = if bin_name == "edge-agent" { "profiles --json" } else { "--help" };
        let dir = tempfile::tempdir().unwrap();
        let err = dir.path().join("stderr");
        let script = format!(
            "(sleep 0.3; exec '{}' {args} 2>'{}') | true; exit ${{PIPESTATUS[0]}}",
            bin(bin_name).display(),
            err.display()
        );
        let status = std::process::Command::new("bash").args(["-c", &script]).status().unwrap();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        assert!(!stderr.contains("panicked"), "{bin_name}: {stderr}");
        if bin_name == "edge-agent" {
            assert!(status.success(), "{bin_name} {status}: {stderr}");
        }
    }
}
