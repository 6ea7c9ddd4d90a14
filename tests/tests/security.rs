//! Who may do what: API tokens and roles, the import folder, artifact capabilities, and agents
//! on an older wire version.

use std::time::Duration;

use hone_common::topic;
use hone_common::wire::{DeviceStatus, Message, WIRE_VERSION, encode};
use hone_e2e::*;
use serde_json::json;

fn tokens(coord: &CoordinatorProc, args: &[&str]) -> std::process::Output {
    coord.cli().arg("tokens").args(args).arg("--data-dir").arg(&coord.data_dir).output().unwrap()
}

#[test]
fn tokens_have_roles_and_a_revoked_token_stops_working() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let anonymous = Api::new(&coord.api_url());
    assert_eq!(anonymous.get_status("/api/v1/models").unwrap().0, 401);
    assert_eq!(anonymous.get_status("/metrics").unwrap().0, 401);
    assert_eq!(anonymous.get_status("/api/v1/health").unwrap().0, 200);

    let out = tokens(&coord, &["create", "--role", "viewer", "--name", "dashboard", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let viewer = anonymous.clone().with_token(Some(created["token"].as_str().unwrap().into()));
    assert_eq!(viewer.get_status("/api/v1/devices").unwrap().0, 200);
    assert_eq!(viewer.get_status("/metrics").unwrap().0, 200);
    let (status, body) =
        viewer.post("/api/v1/campaigns", &json!({"models": ["x"], "devices": "all"})).unwrap();
    assert_eq!(status, 403, "{body}");
    let (status, _) =
        coord.api().post("/api/v1/campaigns", &json!({"models": ["x"], "devices": "all"})).unwrap();
    assert_eq!(status, 400, "the operator passes authorisation (and names the missing model)");

    let out = tokens(&coord, &["list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hone_"), "secrets are never listed");
    assert_eq!(list.as_array().unwrap().len(), 2, "the first operator token and the viewer");
    let out = tokens(&coord, &["revoke", created["id"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(viewer.get_status("/api/v1/devices").unwrap().0, 401);

    // The CLI without any token says why.
    let out = coord
        .cli()
        .env_remove("HONE_TOKEN")
        .env("HONE_DATA_DIR", dir.path().join("elsewhere"))
        .args(["models", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn registration_by_path_reads_only_the_import_folder_and_agents_fetch_with_a_capability() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let inside = coord.import_dir.join("mlp.onnx");
    std::fs::write(&inside, models::mlp(32)).unwrap();
    let outside = dir.path().join("outside.onnx");
    std::fs::write(&outside, models::mlp(32)).unwrap();

    let (status, refused) = api.register_path(&outside, "outside").unwrap();
    assert_eq!(status, 400, "{refused}");
    let (status, missing) = api.register_path(&dir.path().join("nope.onnx"), "nope").unwrap();
    assert_eq!(status, 400, "{missing}");
    let reason = |v: &serde_json::Value| {
        let e = v["error"].as_str().unwrap().to_string();
        e[e.find("`:").unwrap()..].to_string()
    };
    assert_eq!(reason(&refused), reason(&missing), "an existing file and a missing one look alike");
    let (status, model) = api.register_path(&inside, "mlp32").unwrap();
    assert_eq!(status, 201, "{model}");

    // Artifacts need the capability of a job document; agents have no API token.
    let sha = model["sha256"].as_str().unwrap();
    assert_eq!(api.get_status(&format!("/artifacts/{sha}")).unwrap().0, 403);
    let id = unique("e2e-cap");
    let _agent = AgentProc::start(&coord, &dir.path().join("agents"), &id, "rpi4", 5).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    let c = api.start_campaign(json!({"models": [model["id"]], "devices": id})).unwrap();
    let view = api.wait_campaign(&c, Duration::from_secs(60)).unwrap();
    assert_eq!(view["progress"]["done"], 1, "{view}");
}

#[test]
fn an_agent_on_an_older_wire_version_is_shown_incompatible_and_gets_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("e2e-old");
    let mut old_birth = encode(&Message::Status(DeviceStatus {
        device_id: id.clone(),
        online: true,
        session: 1,
        agent_version: "0.0.9".into(),
        arch: "aarch64".into(),
        os: "linux".into(),
        cores: 4,
        memory_bytes: 1 << 30,
        profile: None,
        sent_at_ms: 0,
        fault: None,
        runtimes: vec![],
    }))
    .unwrap();
    old_birth[0] = (WIRE_VERSION - 1) as u8;
    publish_raw(&coord.mqtt_url(), &[(topic::status(&id), old_birth)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let device = loop {
        if let Ok(d) = api.get(&format!("/api/v1/devices/{id}")) {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "the old agent never showed up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(device["status"], "incompatible", "{device}");
    let problem = device["problem"].as_str().unwrap();
    assert!(problem.contains(&format!("needs wire version {WIRE_VERSION}")), "{problem}");

    // `all` does not pick it; naming it queues the job and nothing is dispatched.
    let tiny = dir.path().join("mlp.onnx");
    std::fs::write(&tiny, models::mlp(16)).unwrap();
    let m = api.register(&tiny, "mlp16").unwrap();
    let (status, body) =
        api.post("/api/v1/campaigns", &json!({"models": [m], "devices": "all"})).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no device matches"), "{body}");
    let c = api.start_campaign(json!({"models": [m], "devices": id})).unwrap();
    let view = api.get(&format!("/api/v1/campaigns/{c}")).unwrap();
    assert_eq!(view["progress"]["queued"], 1, "{view}");
    assert_eq!(api.metric("jobs_dispatched"), 0);

    let out = coord.cli().args(["devices", "list"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("incompatible") && table.contains("needs wire version"), "{table}");
}
