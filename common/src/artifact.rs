//! What a job signature covers.
//!
//! The coordinator signs, with its ed25519 key, the canonical bytes returned by
//! [`signing_bytes`]: a domain tag, then the postcard encoding of every field of the
//! [`JobCommand`] but the signature, length-prefixed. The agent rebuilds the same bytes from the
//! decoded document and verifies them *before* it acts on any field: no id is recorded, no
//! request is made and nothing is parsed before the signature holds.
//!
//! The bytes are re-encoded from decoded values, so they are canonical even though postcard
//! accepts over-long varints: a signature covers values, never payload bytes.

use serde::Serialize;

use crate::bench::BenchSpec;
use crate::wire::{ActivateCommand, ArtifactRef, JobCommand};

/// Domain-separation tag, so a Hone job signature can never be replayed as another message. The
/// version in the tag is the wire version that introduced this layout.
pub const SIGNING_DOMAIN: &[u8] = b"hone-job-v6\0";

/// The fields of a [`JobCommand`] that a signature covers, in wire order.
#[derive(Serialize)]
struct SignedFields<'a> {
    command_id: &'a str,
    job_id: &'a str,
    attempt: u32,
    artifact: &'a ArtifactRef,
    spec: &'a BenchSpec,
    timeout_ms: u64,
    seq: u64,
}

/// The bytes signed for a job: the domain tag, then `u32be(len(body)) || body`, where `body` is
/// the postcard encoding of every field of `job` except `signature` (the same bytes as the
/// message on the wire, up to the signature).
pub fn signing_bytes(job: &JobCommand) -> Vec<u8> {
    // Destructured without `..`: a new field must be added to the signed fields (or this
    // function will not compile).
    let JobCommand { command_id, job_id, attempt, artifact, spec, timeout_ms, seq, signature: _ } =
        job;
    let body = postcard::to_stdvec(&SignedFields {
        command_id,
        job_id,
        attempt: *attempt,
        artifact,
        spec,
        timeout_ms: *timeout_ms,
        seq: *seq,
    })
    .expect("postcard encodes these types into memory");
    let mut out = Vec::with_capacity(SIGNING_DOMAIN.len() + 4 + body.len());
    out.extend_from_slice(SIGNING_DOMAIN);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Domain-separation tag of activation signatures (never valid as a job signature).
pub const ACTIVATION_SIGNING_DOMAIN: &[u8] = b"hone-activate-v6\0";

/// The fields of an [`ActivateCommand`] that a signature covers, in wire order.
#[derive(Serialize)]
struct SignedActivation<'a> {
    command_id: &'a str,
    deployment_id: &'a str,
    model_name: &'a str,
    artifact: &'a Option<ArtifactRef>,
    probe_rps: u32,
    probe_s: u32,
    runtime: &'a str,
    warmup: u32,
    symbols: &'a [(String, u64)],
    inputs: &'a crate::shapes::InputShapes,
    unknown_token_id: Option<i64>,
    timeout_ms: u64,
    seq: u64,
}

/// The bytes signed for an activation, laid out as [`signing_bytes`] with its own domain tag.
pub fn activation_signing_bytes(cmd: &ActivateCommand) -> Vec<u8> {
    let ActivateCommand {
        command_id,
        deployment_id,
        model_name,
        artifact,
        probe_rps,
        probe_s,
        runtime,
        warmup,
        symbols,
        inputs,
        unknown_token_id,
        timeout_ms,
        seq,
        signature: _,
    } = cmd;
    let body = postcard::to_stdvec(&SignedActivation {
        command_id,
        deployment_id,
        model_name,
        artifact,
        probe_rps: *probe_rps,
        probe_s: *probe_s,
        runtime,
        warmup: *warmup,
        symbols,
        inputs,
        unknown_token_id: *unknown_token_id,
        timeout_ms: *timeout_ms,
        seq: *seq,
    })
    .expect("postcard encodes these types into memory");
    let mut out = Vec::with_capacity(ACTIVATION_SIGNING_DOMAIN.len() + 4 + body.len());
    out.extend_from_slice(ACTIVATION_SIGNING_DOMAIN);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Domain-separation tag of key-rotation statements (never valid as a job or an activation).
pub const ROTATION_SIGNING_DOMAIN: &[u8] = b"hone-key-rotation-v6\0";

/// A key-rotation statement: the coordinator's signing key `old_key` hands over to `new_key`,
/// signed by `old_key`. The coordinator keeps the chain of them (`sequence` 1, 2, ... each
/// `old_key` the previous `new_key`) and serves it at `GET /api/v1/keys`; an agent that pinned
/// any key of the chain walks it forward, checking each statement with the key before it.
/// Keys and signature are lowercase hex (JSON over HTTP, never MQTT).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRotation {
    /// Position in the chain, from 1.
    pub sequence: u64,
    /// The key handing over (ed25519 public key, hex).
    pub old_key: String,
    /// The key taking over (ed25519 public key, hex).
    pub new_key: String,
    /// Unix ms when the coordinator made it.
    pub issued_at_ms: u64,
    /// Ed25519 signature by `old_key` over [`rotation_signing_bytes`], hex.
    pub signature: String,
}

#[derive(Serialize)]
struct SignedRotation<'a> {
    sequence: u64,
    old_key: &'a str,
    new_key: &'a str,
    issued_at_ms: u64,
}

/// The bytes signed for a key rotation, laid out as [`signing_bytes`] with its own domain tag.
pub fn rotation_signing_bytes(r: &KeyRotation) -> Vec<u8> {
    let KeyRotation { sequence, old_key, new_key, issued_at_ms, signature: _ } = r;
    let body = postcard::to_stdvec(&SignedRotation {
        sequence: *sequence,
        old_key,
        new_key,
        issued_at_ms: *issued_at_ms,
    })
    .expect("postcard encodes these types into memory");
    let mut out = Vec::with_capacity(ROTATION_SIGNING_DOMAIN.len() + 4 + body.len());
    out.extend_from_slice(ROTATION_SIGNING_DOMAIN);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::BenchMode;

    fn job() -> JobCommand {
        JobCommand {
            command_id: "c".into(),
            job_id: "j".into(),
            attempt: 1,
            artifact: ArtifactRef {
                artifact_id: "m".into(),
                sha256: [7; 32],
                size: 10,
                url: "http://x/artifacts/a?exp=1&cap=2".into(),
                expires_at_ms: 20,
            },
            spec: BenchSpec::default(),
            timeout_ms: 1000,
            seq: 41,
            signature: vec![],
        }
    }

    /// Changes one field of a job.
    type Tamper = fn(&mut JobCommand);

    #[test]
    fn every_field_but_the_signature_changes_the_signed_bytes() {
        let base = signing_bytes(&job());
        let tampered: Vec<(&str, Tamper)> = vec![
            ("command_id", |j| j.command_id.push('x')),
            ("job_id", |j| j.job_id.push('x')),
            ("attempt", |j| j.attempt += 1),
            ("artifact_id", |j| j.artifact.artifact_id.push('x')),
            ("sha256", |j| j.artifact.sha256[31] ^= 1),
            ("size", |j| j.artifact.size += 1),
            ("url", |j| j.artifact.url.push('x')),
            ("expires_at_ms", |j| j.artifact.expires_at_ms += 1),
            ("spec.warmup", |j| j.spec.warmup += 1),
            ("spec.symbols", |j| j.spec.symbols.push(("n".into(), 1))),
            ("spec.mode", |j| j.spec.mode = BenchMode::Cold),
            ("timeout_ms", |j| j.timeout_ms += 1),
            ("seq", |j| j.seq += 1),
        ];
        for (field, tamper) in tampered {
            let mut j = job();
            tamper(&mut j);
            assert_ne!(signing_bytes(&j), base, "{field} is not covered");
        }
        let mut j = job();
        j.signature = vec![1, 2, 3];
        assert_eq!(signing_bytes(&j), base, "the signature does not sign itself");
    }

    #[test]
    fn strings_are_length_prefixed_so_fields_cannot_shift() {
        let mut a = job();
        a.command_id = "ab".into();
        a.job_id = "c".into();
        let mut b = job();
        b.command_id = "a".into();
        b.job_id = "bc".into();
        assert_ne!(signing_bytes(&a), signing_bytes(&b));
    }

    #[test]
    fn every_activation_field_but_the_signature_is_signed() {
        let base_cmd = || ActivateCommand {
            command_id: "c".into(),
            deployment_id: "d".into(),
            model_name: "m".into(),
            artifact: Some(job().artifact),
            probe_rps: 0,
            probe_s: 0,
            runtime: "tract".into(),
            warmup: 3,
            symbols: vec![],
            inputs: Default::default(),
            unknown_token_id: None,
            timeout_ms: 1000,
            seq: 7,
            signature: vec![],
        };
        let base = activation_signing_bytes(&base_cmd());
        type T = fn(&mut ActivateCommand);
        let tampered: Vec<(&str, T)> = vec![
            ("command_id", |c| c.command_id.push('x')),
            ("deployment_id", |c| c.deployment_id.push('x')),
            ("model_name", |c| c.model_name.push('x')),
            ("sha256", |c| c.artifact.as_mut().unwrap().sha256[0] ^= 1),
            ("url", |c| c.artifact.as_mut().unwrap().url.push('x')),
            ("artifact", |c| c.artifact = None),
            ("probe_rps", |c| c.probe_rps = 5),
            ("probe_s", |c| c.probe_s = 60),
            ("runtime", |c| c.runtime.push('x')),
            ("warmup", |c| c.warmup += 1),
            ("symbols", |c| c.symbols.push(("n".into(), 1))),
            ("inputs", |c| c.inputs = "x=1x3".parse().unwrap()),
            ("unknown_token_id", |c| c.unknown_token_id = Some(100)),
            ("timeout_ms", |c| c.timeout_ms += 1),
            ("seq", |c| c.seq += 1),
        ];
        for (field, tamper) in tampered {
            let mut c = base_cmd();
            tamper(&mut c);
            assert_ne!(activation_signing_bytes(&c), base, "{field} is not covered");
        }
        let mut c = base_cmd();
        c.signature = vec![9];
        assert_eq!(activation_signing_bytes(&c), base);
        assert!(!base.starts_with(SIGNING_DOMAIN), "an activation is never a job");
    }

    #[test]
    fn every_rotation_field_but_the_signature_is_signed() {
        let base_r = || KeyRotation {
            sequence: 1,
            old_key: "aa".into(),
            new_key: "bb".into(),
            issued_at_ms: 5,
            signature: String::new(),
        };
        let base = rotation_signing_bytes(&base_r());
        type T = fn(&mut KeyRotation);
        let tampered: Vec<(&str, T)> = vec![
            ("sequence", |r| r.sequence += 1),
            ("old_key", |r| r.old_key.push('0')),
            ("new_key", |r| r.new_key.push('0')),
            ("issued_at_ms", |r| r.issued_at_ms += 1),
        ];
        for (field, tamper) in tampered {
            let mut r = base_r();
            tamper(&mut r);
            assert_ne!(rotation_signing_bytes(&r), base, "{field} is not covered");
        }
        let mut r = base_r();
        r.signature = "cc".into();
        assert_eq!(rotation_signing_bytes(&r), base);
        assert!(base.starts_with(ROTATION_SIGNING_DOMAIN));
        assert!(!base.starts_with(SIGNING_DOMAIN) && !base.starts_with(ACTIVATION_SIGNING_DOMAIN));
    }
}
