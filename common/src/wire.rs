//! The MQTT wire protocol: postcard-encoded messages inside a versioned envelope.
//!
//! Every MQTT payload Hone sends is `postcard(Envelope { wire_version, body })`. Postcard is not
//! self-describing (no field tags), so compatibility is kept by these rules:
//!
//! - [`WIRE_VERSION`] is the first field of every payload; a reader rejects any other version
//!   *before* decoding the body ([`DecodeError::UnsupportedVersion`]).
//! - Variants of [`Message`] and of every enum inside it are only ever appended, never
//!   reordered or removed; a field's type never changes. Adding a field to a struct is a new
//!   wire version.
//! - [`MAX_MESSAGE_BYTES`] bounds every payload, checked before any decoding
//!   ([`DecodeError::TooLarge`]); the encoder refuses to produce larger payloads. The embedded
//!   broker and the MQTT clients are configured with the same limit.
//! - Golden-bytes tests (`common/tests/wire_golden.rs`) pin the encoding of every message.
//!
//! Models never travel over MQTT: a job carries an [`ArtifactRef`] and the agent fetches the
//! bytes over HTTP (see `docs/wire-protocol.md`). The whole [`JobCommand`] is signed
//! ([`crate::artifact::signing_bytes`]): every field the agent acts on.

use serde::{Deserialize, Serialize};

use crate::bench::{BenchReport, BenchSpec};

/// Version of the envelope and of every message in it.
///
/// - 2: benchmark modes, emulation, calibration, timelines and readings in reports.
/// - 3: the signature covers the whole job document; it moved from [`ArtifactRef`] to the end
///   of [`JobCommand`].
/// - 4: deployments: [`ActivateCommand`], [`ActivationReport`], [`Telemetry`]; a benchmark
///   report says how many requests the device served while it was measured.
/// - 5: runtimes: the birth message lists them, a job names one, [`FailureKind::Unsupported`].
/// - 6: [`JobCommand::seq`] and [`ActivateCommand::seq`], signed: agents refuse a document
///   whose sequence number is not above the last one they accepted
///   ([`FailureKind::Replayed`]).
pub const WIRE_VERSION: u16 = 6;

/// Largest payload Hone writes or accepts, in bytes (64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Largest MQTT packet: a payload of [`MAX_MESSAGE_BYTES`] plus room for the fixed header,
/// topic and packet id.
pub const MAX_PACKET_BYTES: usize = MAX_MESSAGE_BYTES + 1024;

/// What every payload is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Always [`WIRE_VERSION`] when written by this build.
    pub wire_version: u16,
    /// The message.
    pub body: Message,
}

/// Every message of the current wire version. Append only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // decoded once and moved; boxing would change nothing on the wire
pub enum Message {
    /// Agent birth (`online = true`) or Last Will (`online = false`), retained on the status topic.
    Status(DeviceStatus),
    /// Coordinator → agent: run a benchmark.
    RunJob(JobCommand),
    /// Coordinator → agent: a result is stored, drop it from the outbox.
    ResultAck(ResultAck),
    /// Agent → coordinator: a job was accepted and started.
    JobAccepted(JobAccepted),
    /// Agent → coordinator: a job finished.
    JobResult(JobResult),
    /// Coordinator liveness, retained (and the coordinator's Last Will).
    CoordinatorStatus(CoordinatorStatus),
    /// Coordinator → agent: serve this model (fetch, verify, load, warm up, switch).
    Activate(ActivateCommand),
    /// Agent → coordinator: how an activation ended.
    ActivationReport(ActivationReport),
    /// Agent → coordinator: one window of serving.
    Telemetry(Telemetry),
}

/// A device's state, as announced by its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Device id (also the MQTT client id).
    pub device_id: String,
    /// `true` in the birth message, `false` in the Last Will.
    pub online: bool,
    /// Incremented at every agent start; a Will with an older session than the last birth is
    /// stale and ignored (Sparkplug's `bdSeq`).
    pub session: u64,
    /// Hone version of the agent.
    pub agent_version: String,
    /// CPU architecture, e.g. `aarch64`.
    pub arch: String,
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Logical CPU cores.
    pub cores: u32,
    /// Total physical memory, bytes.
    pub memory_bytes: u64,
    /// Device profile the agent benchmarks under, if any.
    pub profile: Option<String>,
    /// Unix milliseconds when the agent wrote this status.
    pub sent_at_ms: u64,
    /// A fault the agent is working around (e.g. its state disk refuses writes): it keeps
    /// serving and retries; `None` when healthy.
    pub fault: Option<String>,
    /// The runtimes this agent can measure in, each with its version or why it cannot.
    pub runtimes: Vec<crate::bench::RuntimeAvailability>,
}

/// Where a model's bytes are and what they must be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// Registered model id.
    pub artifact_id: String,
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// Exact size in bytes; a download that exceeds it is aborted.
    pub size: u64,
    /// HTTP URL that serves the bytes (with Range support). It carries an expiring capability
    /// for this one artifact (`?exp=…&cap=…`), so the agent needs no API token.
    pub url: String,
    /// Unix milliseconds after which the agent must refuse the job.
    pub expires_at_ms: u64,
}

/// A benchmark job for one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCommand {
    /// Unique per dispatch; agents ignore a command id they have already seen.
    pub command_id: String,
    /// Job id; one job has at most one stored result.
    pub job_id: String,
    /// 1 for the first dispatch, incremented at each retry.
    pub attempt: u32,
    /// The model to benchmark.
    pub artifact: ArtifactRef,
    /// How to benchmark it.
    pub spec: BenchSpec,
    /// Upper bound on the whole job on the agent (download + benchmark), milliseconds.
    pub timeout_ms: u64,
    /// The coordinator's sequence number: strictly increasing over every document it signs (so
    /// per device too), across restarts. An agent refuses a job whose `seq` is not above the
    /// last job it accepted, unless it is that same command again (a redelivery).
    pub seq: u64,
    /// Ed25519 signature by the coordinator over [`crate::artifact::signing_bytes`] of every
    /// field above; empty means unsigned (always rejected by agents). Always the last field.
    pub signature: Vec<u8>,
}

/// A result was stored by the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultAck {
    /// The acknowledged result.
    pub result_id: String,
}

/// A job was accepted and started by an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAccepted {
    /// Command being executed.
    pub command_id: String,
    /// Its job.
    pub job_id: String,
    /// Its attempt.
    pub attempt: u32,
}

/// The end of a job on an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Idempotency key of this result: `{job_id}/{attempt}`. Re-sent unchanged until acked.
    pub result_id: String,
    /// Command that produced it.
    pub command_id: String,
    /// Its job.
    pub job_id: String,
    /// Its attempt.
    pub attempt: u32,
    /// What happened.
    pub outcome: Outcome,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // decoded once and moved; boxing would change nothing on the wire
pub enum Outcome {
    /// The benchmark ran.
    Ok(BenchReport),
    /// It did not; `reason` is for humans.
    Failed {
        /// Machine-readable category.
        kind: FailureKind,
        /// Human-readable explanation.
        reason: String,
    },
}

/// Why a job failed. Append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The agent was running another job.
    Busy,
    /// The job document had expired.
    Expired,
    /// The job document carried no signature.
    Unsigned,
    /// The signature did not verify against the trusted key.
    BadSignature,
    /// The downloaded bytes did not hash to the declared SHA-256.
    HashMismatch,
    /// The server sent more bytes than declared.
    SizeExceeded,
    /// The download failed (network, HTTP status, truncated body).
    Download,
    /// tract could not load or run the model.
    ModelInvalid,
    /// The benchmark process died (signal, abort).
    Crashed,
    /// The benchmark exceeded its time limit and was killed.
    Timeout,
    /// An error inside the agent (disk, spawn).
    Internal,
    /// The model exceeded the profile's memory cap and was stopped.
    Oom,
    /// The agent cannot run what the job asks for (a runtime it does not have), with the reason.
    Unsupported,
    /// The document's sequence number is not above the last one the agent accepted: a replay
    /// of an old document (or a frozen stream), refused without acting on it.
    Replayed,
}

impl FailureKind {
    /// Whether trying the same job again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureKind::Busy
                | FailureKind::Download
                | FailureKind::Crashed
                | FailureKind::Internal
        )
    }

    /// Stable lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Busy => "busy",
            FailureKind::Expired => "expired",
            FailureKind::Unsigned => "unsigned",
            FailureKind::BadSignature => "bad_signature",
            FailureKind::HashMismatch => "hash_mismatch",
            FailureKind::SizeExceeded => "size_exceeded",
            FailureKind::Download => "download",
            FailureKind::ModelInvalid => "model_invalid",
            FailureKind::Crashed => "crashed",
            FailureKind::Timeout => "timeout",
            FailureKind::Internal => "internal",
            FailureKind::Oom => "oom",
            FailureKind::Unsupported => "unsupported",
            FailureKind::Replayed => "replayed",
        }
    }
}

/// Serve a model: the agent fetches and verifies it exactly like a benchmark artifact, loads
/// and warms it in its serving process, then switches to it atomically; the model it replaces
/// stays on disk. A rollback is an activation of the previous artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivateCommand {
    /// Unique per dispatch; agents ignore a command id they have already seen.
    pub command_id: String,
    /// The deployment this activation belongs to.
    pub deployment_id: String,
    /// Name the model is served under (`/v2/models/{name}`).
    pub model_name: String,
    /// The model's bytes; `None` stops serving (the rollback of a first deployment).
    pub artifact: Option<ArtifactRef>,
    /// Probe requests per second the agent sends to its own endpoint while this model is
    /// active (synthetic inputs), so a quiet device still gives its health gate traffic; 0: none.
    pub probe_rps: u32,
    /// Seconds the probe traffic lasts after the switch (the canary gate's longest window).
    pub probe_s: u32,
    /// Runtime the model was chosen for (`tract`); an agent without it refuses.
    pub runtime: String,
    /// Warm-up inferences before the switch.
    pub warmup: u32,
    /// Concrete sizes for symbolic input dimensions (as in a benchmark spec).
    pub symbols: Vec<(String, u64)>,
    /// Concrete shapes of inputs with unnamed dynamic dims (as in a benchmark spec): what the
    /// model was measured with.
    pub inputs: crate::shapes::InputShapes,
    /// Id of the unknown token for token inputs' telemetry, if the model has one.
    pub unknown_token_id: Option<i64>,
    /// Upper bound on fetch + load + warm-up, milliseconds.
    pub timeout_ms: u64,
    /// The coordinator's sequence number, as [`JobCommand::seq`] (activations are counted
    /// apart from jobs on the agent). A rollback is a new activation with a new, higher one.
    pub seq: u64,
    /// Ed25519 signature over [`crate::artifact::activation_signing_bytes`] of every field
    /// above; empty means unsigned (always rejected). Always the last field.
    pub signature: Vec<u8>,
}

/// How an activation ended on an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationReport {
    /// The command.
    pub command_id: String,
    /// Its deployment.
    pub deployment_id: String,
    /// The artifact it asked for (`None`: stop serving).
    pub artifact_id: Option<String>,
    /// What happened.
    pub outcome: ActivationOutcome,
    /// Unix ms when the agent wrote this report.
    pub sent_at_ms: u64,
}

/// The end of an activation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ActivationOutcome {
    /// The model is being served.
    Active {
        /// Load and optimisation time, ms.
        load_ms: f64,
        /// Mean warm-up inference time, ms.
        warmup_ms: f64,
        /// The artifact it replaced, if any (kept on disk).
        previous: Option<String>,
    },
    /// It is not; the model served before (if any) still is.
    Failed {
        /// Category.
        kind: FailureKind,
        /// Explanation.
        reason: String,
        /// The artifact still served, if any.
        serving: Option<String>,
    },
}

/// One window of an agent's serving, published every window whether or not requests came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// The device.
    pub device_id: String,
    /// Increments per window within an agent session.
    pub seq: u64,
    /// The agent session (as in [`DeviceStatus::session`]).
    pub session: u64,
    /// Artifact served during the window, if any.
    pub artifact_id: Option<String>,
    /// Deployment that activated it, if any.
    pub deployment_id: Option<String>,
    /// The measurements.
    pub window: crate::serving::ServingWindow,
    /// Temperature, °C, and where it came from.
    pub temperature_c: Option<f64>,
    /// CPU clock, MHz.
    pub clock_mhz: Option<u32>,
    /// Whether the device was throttled (emulated quota below the profile's, or a clock cap).
    pub throttled: bool,
    /// Origin of the temperature and clock; `None` when there are neither.
    pub reading_source: Option<crate::bench::ReadingSource>,
    /// Windows this agent could not deliver before this one (broker unreachable, buffer full).
    pub dropped_windows: u64,
}

/// The coordinator's liveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorStatus {
    /// `false` in the coordinator's Last Will.
    pub online: bool,
    /// Coordinator version.
    pub version: String,
    /// Unix milliseconds of the coordinator's start.
    pub started_at_ms: u64,
}

/// Why a payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_MESSAGE_BYTES`]; not decoded at all.
    #[error("payload of {size} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Empty payload (e.g. a cleared retained message).
    #[error("empty payload")]
    Empty,
    /// Written by another wire version.
    #[error("unsupported wire version {found} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion {
        /// Version found.
        found: u16,
    },
    /// Not a valid postcard message of this version.
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message would exceed [`MAX_MESSAGE_BYTES`].
    #[error("encoded message of {size} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Serialisation failed.
    #[error("cannot encode message: {0}")]
    Serialize(String),
}

/// Encodes a message in the current wire version.
pub fn encode(body: &Message) -> Result<Vec<u8>, EncodeError> {
    let env = EnvelopeRef { wire_version: WIRE_VERSION, body };
    let bytes = postcard::to_stdvec(&env).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(EncodeError::TooLarge { size: bytes.len(), max: MAX_MESSAGE_BYTES });
    }
    Ok(bytes)
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    wire_version: u16,
    body: &'a Message,
}

/// Decodes a payload: size check, then version check, then the body. Trailing bytes are an error.
pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge { size: payload.len(), max: MAX_MESSAGE_BYTES });
    }
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    let (version, rest): (u16, &[u8]) =
        postcard::take_from_bytes(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let (body, rest): (Message, &[u8]) =
        postcard::take_from_bytes(rest).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Message {
        Message::Status(DeviceStatus {
            runtimes: Default::default(),
            device_id: "d1".into(),
            online: true,
            session: 3,
            agent_version: "0.1.0".into(),
            arch: "x86_64".into(),
            os: "linux".into(),
            cores: 2,
            memory_bytes: 1 << 30,
            profile: Some("rpi4".into()),
            sent_at_ms: 1,
            fault: None,
        })
    }

    #[test]
    fn round_trips() {
        let m = status();
        assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
    }

    #[test]
    fn rejects_other_wire_versions_before_decoding_the_body() {
        let mut bytes = encode(&status()).unwrap();
        let older = (WIRE_VERSION - 1) as u8;
        bytes[0] = older;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnsupportedVersion { found: u16::from(older) })
        );
        bytes[0] = (WIRE_VERSION + 1) as u8;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnsupportedVersion { found: WIRE_VERSION + 1 })
        );
    }

    #[test]
    fn rejects_oversized_payloads_without_decoding() {
        let big = vec![1u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(decode(&big), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn rejects_truncated_and_trailing_bytes() {
        let bytes = encode(&status()).unwrap();
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(DecodeError::Malformed(_))));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(DecodeError::Malformed(_))));
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn encoder_refuses_messages_over_the_limit() {
        let m = Message::ResultAck(ResultAck { result_id: "x".repeat(MAX_MESSAGE_BYTES) });
        assert!(matches!(encode(&m), Err(EncodeError::TooLarge { .. })));
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(FailureKind::Busy.is_retryable());
        assert!(FailureKind::Download.is_retryable());
        assert!(!FailureKind::HashMismatch.is_retryable());
        assert!(!FailureKind::ModelInvalid.is_retryable());
        assert!(!FailureKind::BadSignature.is_retryable());
    }
}
