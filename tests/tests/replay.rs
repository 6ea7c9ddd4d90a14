//! Replayed documents and key rotation, end to end: a real coordinator, a real agent, the
//! documents captured on the broker as the coordinator published them.

use std::time::Duration;

use ed25519_dalek::{Signer as _, SigningKey};
use hone_common::artifact::signing_bytes;
use hone_common::topic::{self, CmdKind, EvtKind};
use hone_common::wire::{FailureKind, JobCommand, Message, Outcome, decode, encode};
use hone_e2e::*;
use serde_json::json;

/// Every job document published to `device` so far, with its bytes as sent.
fn job_documents(capture: &Capture, device: &str) -> Vec<(JobCommand, Vec<u8>)> {
    let cmd = topic::cmd(device, CmdKind::Job);
    capture
        .messages()
        .into_iter()
        .filter(|(t, _)| *t == cmd)
        .filter_map(|(_, p)| match decode(&p) {
            Ok(Message::RunJob(j)) => Some((j, p)),
            _ => None,
        })
        .collect()
}

/// Waits for the agent to report `command_id` failed with `kind`.
fn refused_as(capture: &Capture, device: &str, command_id: &str, kind: FailureKind) -> bool {
    let evt = topic::evt(device, EvtKind::Result);
    capture
        .wait_for(Duration::from_secs(20), |t, p| match decode(p) {
            Ok(Message::JobResult(r)) if t == evt && r.command_id == command_id => {
                match r.outcome {
                    Outcome::Failed { kind: k, .. } if k == kind => Some(()),
                    _ => None,
                }
            }
            _ => None,
        })
        .is_some()
}

fn run_one(api: &Api, model: &str, device: &str) {
    let c = api.start_campaign(json!({"models": [model], "devices": device})).unwrap();
    let view = api.wait_campaign(&c, Duration::from_secs(90)).unwrap();
    assert_eq!(view["progress"]["done"], 1, "{view}");
}

fn replayed_job_scenario(broker: Broker, database_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordinatorProc::start(&dir.path().join("coord"), broker, database_url).unwrap();
    let api = coord.api();
    let id = unique("e2e-replay");
    let capture = Capture::start(
        &coord.mqtt_url(),
        &[topic::agent_subscription(&id), topic::evt(&id, EvtKind::Result)],
    );
    let agent = AgentProc::start(&coord, &dir.path().join("agents"), &id, "rpi4", 5).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    let tiny = dir.path().join("mlp.onnx");
    std::fs::write(&tiny, models::mlp(16)).unwrap();
    let m = api.register(&tiny, "mlp16").unwrap();

    run_one(&api, &m, &id);
    let first = job_documents(&capture, &id);
    let (old, old_bytes) = first.first().cloned().expect("the first job document was captured");
    run_one(&api, &m, &id);
    let all = job_documents(&capture, &id);
    let (last, last_bytes) = all.last().cloned().unwrap();
    assert!(last.seq > old.seq, "sequence numbers go up: {} then {}", old.seq, last.seq);
    assert_eq!(api.metric("results_stored"), 2);

    // The first document, still signed and unexpired, republished byte for byte: refused as
    // replayed, reported, and not run again.
    publish_raw(&coord.mqtt_url(), &[(topic::cmd(&id, CmdKind::Job), old_bytes)]);
    assert!(
        refused_as(&capture, &id, &old.command_id, FailureKind::Replayed),
        "agent log:\n{}",
        agent.log()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while api.metric("documents_replayed") < 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(api.metric("documents_replayed"), 1);
    assert!(agent.log().contains("replayed"), "{}", agent.log());

    // The last document delivered again (a QoS 1 redelivery) is a duplicate, as before: no
    // refusal, no second run.
    publish_raw(&coord.mqtt_url(), &[(topic::cmd(&id, CmdKind::Job), last_bytes)]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(api.metric("documents_replayed"), 1, "a redelivery is not a replay");
    assert_eq!(agent.log().matches("job accepted").count(), 2, "{}", agent.log());
    assert_eq!(api.metric("results_stored"), 2);
    if let Broker::External(url) = &coord.broker {
        clear_retained(url, &[&id]);
    }
}

#[test]
fn a_replayed_job_document_is_refused_and_not_run_again_on_the_embedded_broker() {
    replayed_job_scenario(Broker::Embedded(free_port()), None);
}

#[test]
fn a_replayed_job_document_is_refused_and_not_run_again_on_mosquitto_and_postgres() {
    let db = fresh_postgres_db().expect("PostgreSQL must be reachable (HONE_TEST_POSTGRES_URL)");
    replayed_job_scenario(Broker::External(external_mqtt_url()), Some(db));
}

#[test]
fn after_a_key_rotation_the_agent_follows_the_chain_and_refuses_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("e2e-rotate");
    let capture = Capture::start(
        &coord.mqtt_url(),
        &[topic::agent_subscription(&id), topic::evt(&id, EvtKind::Result)],
    );
    let agent = AgentProc::start(&coord, &dir.path().join("agents"), &id, "rpi4", 5).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    let tiny = dir.path().join("mlp.onnx");
    std::fs::write(&tiny, models::mlp(16)).unwrap();
    let m = api.register(&tiny, "mlp16").unwrap();
    run_one(&api, &m, &id);

    let key_file = coord.data_dir.join("keys/coordinator.ed25519");
    let old_seed: [u8; 32] = hex::decode(std::fs::read_to_string(&key_file).unwrap().trim())
        .unwrap()
        .try_into()
        .unwrap();
    let old_key = SigningKey::from_bytes(&old_seed);
    let old_public = coord.trust_key();
    let out = run_ok(coord.cli().args(["keys", "rotate", "--json"]));
    let rotated: serde_json::Value = serde_json::from_str(&out).unwrap();
    let new_public = rotated["public_key"].as_str().unwrap().to_string();
    assert_ne!(new_public, old_public);
    assert_eq!(rotated["rotation"]["old_key"], old_public.as_str());
    let chain = api.get("/api/v1/keys").unwrap();
    assert_eq!(chain["rotations"].as_array().unwrap().len(), 1, "{chain}");
    assert_eq!(coord.trust_key(), new_public);
    // The chain is served without a token, like the trust key.
    let (status, _) = Api::new(&coord.api_url()).get_status("/api/v1/keys").unwrap();
    assert_eq!(status, 200);

    // A second job, signed by the new key, runs on the same agent without re-installing it.
    run_one(&api, &m, &id);
    let pinned = std::fs::read_to_string(agent.state_dir.join("trusted-coordinator.pub")).unwrap();
    assert_eq!(pinned.trim(), new_public, "agent log:\n{}", agent.log());

    // A new document (higher number, new command) signed by the old key is refused.
    let (mut forged, _) = job_documents(&capture, &id).last().cloned().unwrap();
    forged.command_id = unique("forged");
    forged.seq += 1_000_000;
    forged.signature = old_key.sign(&signing_bytes(&forged)).to_bytes().to_vec();
    let bytes = encode(&Message::RunJob(forged.clone())).unwrap();
    publish_raw(&coord.mqtt_url(), &[(topic::cmd(&id, CmdKind::Job), bytes)]);
    assert!(
        refused_as(&capture, &id, &forged.command_id, FailureKind::BadSignature),
        "agent log:\n{}",
        agent.log()
    );
    assert_eq!(agent.log().matches("job accepted").count(), 2, "{}", agent.log());
}
