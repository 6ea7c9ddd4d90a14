//! `edge-agent doctor` against a live coordinator and brokers (embedded and Mosquitto), a
//! pinned key that matches and one that does not, and nothing listening.

use std::process::Command;

use hone_e2e::*;
use serde_json::Value;

fn doctor(args: &[&str]) -> (i32, Value) {
    let out =
        Command::new(bin("edge-agent")).arg("doctor").args(args).arg("--json").output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn status<'a>(v: &'a Value, name: &str) -> (&'a str, &'a str) {
    let c = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == name);
    let c = c.unwrap_or_else(|| panic!("no `{name}` check: {v}"));
    (c["status"].as_str().unwrap(), c["detail"].as_str().unwrap())
}

#[test]
fn doctor_checks_the_broker_the_coordinator_its_key_and_the_clock_and_fails_when_they_are_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let state = dir.path().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("trusted-coordinator.pub"), coord.trust_key()).unwrap();
    let state_arg = state.display().to_string();
    let ort = asset("onnxruntime-lib").display().to_string();
    let (code, v) = doctor(&[
        "--broker",
        &coord.mqtt_url(),
        "--coordinator",
        &coord.api_url(),
        "--state-dir",
        &state_arg,
        "--ort-lib",
        &ort,
    ]);
    assert_eq!(code, 0, "nothing fails on this machine: {v}");
    for name in ["broker", "coordinator", "coordinator key", "clock", "transport", "onnx runtime"] {
        assert_eq!(status(&v, name).0, "ok", "{name}: {v}");
    }
    assert!(status(&v, "broker").1.contains("MQTT 3.1.1 session accepted"), "{v}");
    assert!(status(&v, "onnx runtime").1.contains("1.31.1"), "{v}");
    for name in ["cgroups", "thermal sensors", "clock control", "disk", "host"] {
        assert!(["ok", "warn"].contains(&status(&v, name).0), "{name}: {v}");
    }
    // Mosquitto, the other broker.
    let (_, v) = doctor(&["--broker", &external_mqtt_url(), "--state-dir", &state_arg]);
    assert_eq!(status(&v, "broker").0, "ok", "{v}");
    assert_eq!(status(&v, "coordinator").0, "warn", "not given, so not checked: {v}");

    // A pinned key of another coordinator: the agent would refuse every job, so it fails.
    std::fs::write(state.join("trusted-coordinator.pub"), "ab".repeat(32)).unwrap();
    let (code, v) = doctor(&["--coordinator", &coord.api_url(), "--state-dir", &state_arg]);
    assert_eq!(code, 1, "{v}");
    let (s, detail) = status(&v, "coordinator key");
    assert_eq!(s, "fail");
    assert!(detail.contains("refuses its jobs"), "{detail}");

    // Nothing listening: both fail with the address.
    let port = free_port();
    let (code, v) = doctor(&[
        "--broker",
        &format!("mqtt://127.0.0.1:{port}"),
        "--coordinator",
        &format!("http://127.0.0.1:{port}"),
        "--state-dir",
        &state_arg,
    ]);
    assert_eq!(code, 1);
    for name in ["broker", "coordinator"] {
        let (s, detail) = status(&v, name);
        assert_eq!(s, "fail", "{v}");
        assert!(detail.contains(&format!("127.0.0.1:{port}")), "{detail}");
    }
    // The table for people.
    let out = Command::new(bin("edge-agent"))
        .args(["doctor", "--broker", &coord.mqtt_url(), "--state-dir", &state_arg])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("broker") && table.contains("failed, ") && table.contains("disk"),
        "{table}"
    );
}
