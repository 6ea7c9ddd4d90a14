//! Fleet security over TLS (issue 15): enrolment with one-time tokens, renewal, re-enrolment
//! after an expiry with approval, revocation, and the attacks that must fail, on the embedded
//! broker behind the MQTT gate and on a Mosquitto instance these tests start with the
//! configuration `coordinator pki mosquitto` writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hone_common::topic;
use hone_common::wire::{DeviceStatus, Message, encode};
use hone_e2e::*;
use serde_json::json;

/// A Mosquitto of this test's own (never the shared one: its configuration is the fleet's).
struct OwnMosquitto {
    child: Child,
    port: u16,
    conf_dir: PathBuf,
    data_dir: PathBuf,
}

impl Drop for OwnMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnMosquitto {
    /// Writes the fleet's Mosquitto configuration from the coordinator's data folder (creating
    /// its CA) and starts Mosquitto on it.
    fn start(coord_data: &Path, dir: &Path) -> OwnMosquitto {
        let port = free_port();
        let conf_dir = dir.join("mosquitto");
        write_config(coord_data, &conf_dir, port);
        let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(conf_dir.join("test.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto is installed (Debian package mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnMosquitto { child, port, conf_dir, data_dir: coord_data.to_path_buf() }
    }

    fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// Rewrites the configuration (a fresh CRL) and sends SIGHUP, as docs/install.md says.
    fn reload(&self) {
        write_config(&self.data_dir, &self.conf_dir, self.port);
        run_ok(Command::new("kill").args(["-HUP", &self.child.id().to_string()]));
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn write_config(coord_data: &Path, conf_dir: &Path, port: u16) {
    run_ok(
        Command::new(bin("coordinator"))
            .args(["pki", "mosquitto", "--data-dir"])
            .arg(coord_data)
            .arg("--out")
            .arg(conf_dir)
            .args(["--port", &port.to_string()]),
    );
    // The generated file is what an operator includes; the test adds only the user to run as
    // (the key is 0600 and owned by whoever runs the tests).
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let conf = std::fs::read_to_string(conf_dir.join("mosquitto.conf")).unwrap();
    std::fs::write(conf_dir.join("test.conf"), format!("{conf}user {}\n", user.trim())).unwrap();
}

/// An MQTT client with an enrolled identity's certificate, as an attacker holding one device's
/// key would connect.
struct Attacker {
    client: rumqttc::Client,
    conn: rumqttc::Connection,
}

impl Attacker {
    fn connect(mqtt_url: &str, state_dir: &Path, client_id: &str) -> Attacker {
        let b = hone_common::parse_broker_url(mqtt_url).unwrap();
        let identity = edge_agent::enroll::Identity::load(state_dir).unwrap();
        let mut opts = rumqttc::MqttOptions::new(client_id, b.host, b.port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
            identity.config(),
        )));
        let (client, conn) = rumqttc::Client::new(opts, 16);
        Attacker { client, conn }
    }

    /// Drives the connection for `window`: whether it was closed (an error), and the publishes
    /// received.
    fn drive(&mut self, window: Duration) -> (bool, Vec<String>) {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        while Instant::now() < deadline {
            match self.conn.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => got.push(p.topic),
                Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
                Ok(Err(_)) | Err(rumqttc::RecvTimeoutError::Disconnected) => return (true, got),
            }
        }
        (false, got)
    }

    /// Whether the broker accepts this identity's connection at all (a CONNACK).
    fn accepted(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.conn.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => return true,
                Ok(Err(_)) => return false,
                _ => {}
            }
        }
        false
    }
}

/// Runs one small benchmark job of `model` on `device`; the finished campaign's view.
fn one_job(api: &Api, model: &str, device: &str) -> serde_json::Value {
    let campaign = api
        .start_campaign(json!({
            "models": [model],
            "devices": device,
            "bench": {"warmup": 1, "max_iterations": 3, "max_time_ms": 1000, "symbols": []},
        }))
        .unwrap();
    api.wait_campaign(&campaign, Duration::from_secs(90)).unwrap()
}

/// A device status that the coordinator would apply if it got through (a session newer than
/// any real one).
fn status_bytes(device: &str, online: bool) -> Vec<u8> {
    encode(&Message::Status(DeviceStatus {
        device_id: device.into(),
        online,
        session: u64::MAX / 2,
        agent_version: hone_common::HONE_VERSION.into(),
        arch: "aarch64".into(),
        os: "linux".into(),
        cores: 4,
        memory_bytes: 1 << 30,
        profile: None,
        sent_at_ms: 0,
        fault: None,
        runtimes: vec![],
    }))
    .unwrap()
}

/// The attacks of issue 15 item 3 against one broker (the gate or Mosquitto): a device
/// publishing for another, subscribing to another's commands, taking another's client id, a
/// revoked device reconnecting; and the secrets that must not reach the logs.
fn attacks_fail(
    coord: &CoordinatorProc,
    root: &Path,
    gate: bool,
    mosquitto: Option<&OwnMosquitto>,
) {
    let api = coord.api();
    let victim = unique("tls-victim");
    let mallory = unique("tls-mallory");
    let _agent = AgentProc::start_with(coord, root, &victim, &[], 5).unwrap();
    api.wait_device(&victim, true, Duration::from_secs(20)).unwrap();
    let mallory_dir = root.join(&mallory);
    enroll(coord, &mallory_dir, &mallory).unwrap();
    let url = coord.mqtt_url();
    let denied0 = api.metric("mqtt_denied");
    let malformed0 = api.metric("rejected_malformed");

    // 1. Mallory (its own valid certificate) says the victim went offline, and sends garbage as
    //    the victim's result.
    let mut m = Attacker::connect(&url, &mallory_dir, &mallory);
    assert!(m.accepted(), "Mallory's own identity connects");
    m.client
        .publish(
            topic::status(&victim),
            rumqttc::QoS::AtLeastOnce,
            true,
            status_bytes(&victim, false),
        )
        .unwrap();
    m.client
        .publish(
            topic::evt(&victim, topic::EvtKind::Result),
            rumqttc::QoS::AtLeastOnce,
            false,
            b"not a result".to_vec(),
        )
        .unwrap();
    let (closed, _) = m.drive(Duration::from_secs(3));
    assert_eq!(closed, gate, "the gate ends the connection; Mosquitto drops the publish");
    std::thread::sleep(Duration::from_secs(1));
    let v = api.get(&format!("/api/v1/devices/{victim}")).unwrap();
    assert_eq!(v["online"], true, "a spoofed status did not reach the coordinator: {v}");
    assert_eq!(api.metric("rejected_malformed"), malformed0, "nor did the forged result");
    if gate {
        assert!(api.metric("mqtt_denied") > denied0, "the gate counts the refusal");
    }

    // 2. Mallory listens to every device's status and the victim's commands.
    let mut m = Attacker::connect(&url, &mallory_dir, &mallory);
    assert!(m.accepted());
    m.client.subscribe("hone/v1/dev/+/status", rumqttc::QoS::AtLeastOnce).unwrap();
    m.client.subscribe(topic::agent_subscription(&victim), rumqttc::QoS::AtLeastOnce).unwrap();
    let (closed, got) = m.drive(Duration::from_secs(3));
    assert!(got.is_empty(), "Mallory received {got:?}");
    assert_eq!(closed, gate);

    // 3. Mallory takes the victim's client id (which would end the victim's session).
    let mut m = Attacker::connect(&url, &mallory_dir, &victim);
    let _ = m.drive(Duration::from_secs(2));
    drop(m);
    std::thread::sleep(Duration::from_secs(2));
    let v = api.get(&format!("/api/v1/devices/{victim}")).unwrap();
    assert_eq!(v["online"], true, "the victim kept its session: {v}");

    // 4. Mallory is revoked; it cannot come back.
    let out = coord.cli().args(["devices", "revoke", &mallory, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    if let Some(mq) = mosquitto {
        mq.reload();
    }
    let mut m = Attacker::connect(&url, &mallory_dir, &mallory);
    assert!(!m.accepted(), "a revoked certificate is refused at the handshake");
    // Its messages are dropped by the coordinator even through a session that was open.
    let id = api.get(&format!("/api/v1/devices/{mallory}/identity")).unwrap();
    assert_eq!(id["identity"]["state"], "revoked");
    assert!(id["certificates"][0]["revoked_at_ms"].as_i64().is_some(), "{id}");

    // 5. No secret in any log: the enrolment tokens, the operator token, private keys.
    let mut logs = coord.log();
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            logs.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    assert!(!logs.contains("honeenrol_"), "an enrolment token is in a log");
    assert!(!logs.contains(coord.token.as_deref().unwrap()), "the operator token is in a log");
    assert!(!logs.contains("PRIVATE KEY"), "a private key is in a log");
    let key = std::fs::read_to_string(mallory_dir.join("tls/device.key")).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!logs.contains(&body[..40]), "a device key is in a log");

    // 6. The victim, a real agent with an open session, is revoked: offline to the coordinator
    //    at once on either broker (Mosquitto keeps the session until it drops), and no job is
    //    sent to it.
    let out = coord.cli().args(["devices", "revoke", &victim]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = api.get(&format!("/api/v1/devices/{victim}")).unwrap();
    assert_eq!(
        v["online"],
        false,
        "revoked: offline at once: {v}\n{}",
        coord.log().lines().rev().take(15).collect::<Vec<_>>().join("\n")
    );
    let model = api.register(&asset("minilm-l3-onnx"), "minilm-l3").unwrap();
    let campaign = api
        .start_campaign(serde_json::json!({"models": [model], "devices": victim.clone()}))
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let c = api.get(&format!("/api/v1/campaigns/{campaign}")).unwrap();
    assert_eq!(c["lines"][0]["attempts"], 0, "nothing was dispatched to a revoked device: {c}");
    let v = api.get(&format!("/api/v1/devices/{victim}")).unwrap();
    assert_eq!(v["online"], false, "and it stays offline: {v}");
}

#[test]
fn attacks_on_the_fleet_fail_on_the_embedded_broker_behind_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordinatorProc::start_tls(
        &dir.path().join("coord"),
        Broker::Embedded(free_port()),
        None,
        &[],
    )
    .unwrap();
    attacks_fail(&coord, &dir.path().join("agents"), true, None);
}

#[test]
fn attacks_on_the_fleet_fail_on_mosquitto_with_the_generated_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coord");
    let mq = OwnMosquitto::start(&data, dir.path());
    let coord = CoordinatorProc::start_tls(&data, Broker::External(mq.url()), None, &[]).unwrap();
    attacks_fail(&coord, &dir.path().join("agents"), false, Some(&mq));
}

#[test]
fn devices_enrol_renew_run_jobs_re_enrol_with_approval_and_are_revoked_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("agents");
    // 12 s certificates: renewed every 8 s, and one left idle expires within the test.
    let coord = CoordinatorProc::start_tls(
        &dir.path().join("coord"),
        Broker::Embedded(free_port()),
        None,
        &["--cert-lifetime", "12s"],
    )
    .unwrap();
    let api = coord.api();

    // Plain HTTP is not served.
    let plain = Api::new(&coord.api_url().replacen("https://", "http://", 1));
    assert!(plain.get_status("/api/v1/health").is_err(), "no plain HTTP on a TLS coordinator");

    // A one-time token: the second use is refused, whoever asks.
    let (token, ca) = coord.enrol_token(None).unwrap();
    let enrol = |device: &str, token: &str, ca: &str| {
        Command::new(bin("edge-agent"))
            .args(["enroll", "--coordinator", &coord.api_url(), "--ca-sha256", ca])
            .args(["--device-id", device, "--state-dir"])
            .arg(root.join(device))
            .env("HONE_ENROL_TOKEN", token)
            .output()
            .unwrap()
    };
    let first = unique("tls-first");
    let out = enrol(&first, &token, &ca);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = enrol(&unique("tls-second"), &token, &ca);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already used"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong CA fingerprint (another coordinator, or someone in between) is refused.
    let (token2, _) = coord.enrol_token(None).unwrap();
    let out = enrol(&unique("tls-third"), &token2, &"ab".repeat(32));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to enrol"));

    // The enrolled agent runs a campaign job: the job document over the gate, the model over
    // HTTPS with its certificate.
    let a = AgentProc::start_with(&coord, &root, &first, &[], 5).unwrap();
    api.wait_device(&first, true, Duration::from_secs(20)).unwrap();
    let model = dir.path().join("mlp.onnx");
    std::fs::write(&model, models::mlp(32)).unwrap();
    let id = api.register(&model, "mlp32").unwrap();
    let view = one_job(&api, &id, &first);
    assert_eq!(view["lines"][0]["state"], "done", "{view}");

    // Renewal: the agent renews at two thirds of 12 s and keeps working.
    let serial0 = api.get(&format!("/api/v1/devices/{first}/identity")).unwrap()["certificates"]
        .as_array()
        .unwrap()
        .len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.metric("renewals") == 0 {
        assert!(Instant::now() < deadline, "no renewal within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let certs = api.get(&format!("/api/v1/devices/{first}/identity")).unwrap();
    assert!(certs["certificates"].as_array().unwrap().len() > serial0, "{certs}");
    // Past the first certificate's end, the agent reconnects with the renewed one.
    std::thread::sleep(Duration::from_secs(13));
    let _ = coord.cli().args(["devices", "list"]).output();
    api.wait_device(&first, true, Duration::from_secs(10)).unwrap();
    let view = one_job(&api, &id, &first);
    assert_eq!(view["lines"][0]["state"], "done", "a job after renewal: {view}");

    // A device whose certificate expired while it was off asks again and waits for approval.
    let idle = unique("tls-idle");
    enroll(&coord, &root.join(&idle), &idle).unwrap();
    std::thread::sleep(Duration::from_secs(13));
    let _b = AgentProc::start_with(&coord, &root, &idle, &[], 5).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = api.get(&format!("/api/v1/devices/{idle}/identity")).unwrap();
        if v["identity"]["state"] == "pending" {
            break;
        }
        assert!(Instant::now() < deadline, "no re-enrolment request: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        api.get_status(&format!("/api/v1/devices/{idle}")).unwrap().0 == 404,
        "not online before approval"
    );
    let out = coord.cli().args(["devices", "approve", &idle]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    api.wait_device(&idle, true, Duration::from_secs(20)).unwrap();

    // The doctor checks the certificate and both TLS connections with it.
    let doctor = || {
        Command::new(bin("edge-agent"))
            .args(["doctor", "--json", "--broker", &coord.mqtt_url()])
            .args(["--coordinator", &coord.api_url(), "--state-dir"])
            .arg(root.join(&first))
            .output()
            .unwrap()
    };
    let status = |out: &std::process::Output, name: &str| -> String {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let c = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
        format!("{} {}", c["status"].as_str().unwrap(), c["detail"].as_str().unwrap())
    };
    let out = doctor();
    for name in ["certificate", "broker", "coordinator", "transport"] {
        assert!(status(&out, name).starts_with("ok"), "{name}: {}", status(&out, name));
    }

    // Revocation ends the session at once, and the device cannot come back.
    let kicks = api.metric("revocation_kicks");
    let out = coord.cli().args(["devices", "revoke", &first]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    if let Err(e) = api.wait_device(&first, false, Duration::from_secs(20)) {
        panic!("{e}\ncoordinator:\n{}\nagent:\n{}", coord.log(), a.log());
    }
    assert!(api.metric("revocation_kicks") > kicks);
    std::thread::sleep(Duration::from_secs(3));
    let v = api.get(&format!("/api/v1/devices/{first}")).unwrap();
    assert_eq!(v["online"], false, "a revoked device stays out: {v}");
    assert!(api.metric("tls_refused") > 0, "its reconnections fail the handshake");
    let out = doctor();
    assert_eq!(out.status.code(), Some(1), "the doctor fails a revoked device");
    assert!(status(&out, "broker").contains("CertificateRevoked"), "{}", status(&out, "broker"));

    // Decommissioning removes the device from the fleet.
    let out = coord.cli().args(["devices", "decommission", &idle, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["state"], "decommissioned");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(api.get_status(&format!("/api/v1/devices/{idle}")).unwrap().0, 404);
}

#[test]
fn plain_transport_is_refused_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("coordinator"))
        .args(["serve", "--plain", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback only"), "{err}");
    let out = Command::new(bin("edge-agent"))
        .args(["run", "--broker", "mqtt://192.0.2.1:1883", "--coordinator", "http://192.0.2.1"])
        .arg("--state-dir")
        .arg(dir.path().join("agent"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback only"));
    let out = Command::new(bin("edge-agent"))
        .args(["run", "--broker", "mqtts://127.0.0.1:8883", "--coordinator", "https://127.0.0.1"])
        .arg("--state-dir")
        .arg(dir.path().join("agent"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not enrolled"));
}

#[test]
fn the_ca_is_rotated_without_re_enrolling_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("agents");
    let data = dir.path().join("coord");
    let mut coord = CoordinatorProc::start_tls(
        &data,
        Broker::Embedded(free_port()),
        None,
        &["--cert-lifetime", "12s"],
    )
    .unwrap();
    let device = unique("tls-rot");
    let agent = AgentProc::start_with(&coord, &root, &device, &[], 5).unwrap();
    coord.api().wait_device(&device, true, Duration::from_secs(20)).unwrap();
    let model = dir.path().join("mlp.onnx");
    std::fs::write(&model, models::mlp(16)).unwrap();
    let id = coord.api().register(&model, "mlp16").unwrap();
    let job = |coord: &CoordinatorProc| {
        let view = one_job(&coord.api(), &id, &device);
        assert_eq!(view["lines"][0]["state"], "done", "{view}\n{}", agent.log());
    };
    job(&coord);
    let old_ca = coord.ca_pem();

    // Refused under a running coordinator; done on a stopped one.
    let rotate = || {
        Command::new(bin("coordinator"))
            .args(["pki", "rotate-ca", "--json", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = rotate();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it"));
    coord.kill9();
    let out = rotate();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(fps["sha256"], fps["previous_sha256"]);
    coord.spawn().unwrap();
    assert_ne!(coord.ca_pem(), old_ca, "a new CA signs");

    // The agent, which trusts only the old CA, reconnects (the new CA is cross-signed), runs a
    // job, and moves to the new CA at its next renewal.
    let api = coord.api();
    api.wait_device(&device, true, Duration::from_secs(30)).unwrap();
    job(&coord);
    let deadline = Instant::now() + Duration::from_secs(30);
    let bundle = root.join(&device).join("tls/ca.pem");
    while std::fs::read_to_string(&bundle).unwrap().matches("BEGIN CERTIFICATE").count() < 2 {
        assert!(Instant::now() < deadline, "no renewal from the new CA within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let trusted = std::fs::read_to_string(&bundle).unwrap();
    assert!(trusted.starts_with(coord.ca_pem().trim()), "the new CA first, then the old");
    job(&coord);

    // A new device enrols against the new CA's fingerprint.
    let (_, ca) = coord.enrol_token(None).unwrap();
    assert_eq!(ca, fps["sha256"].as_str().unwrap());
    let other = unique("tls-new");
    enroll(&coord, &root.join(&other), &other).unwrap();
}
