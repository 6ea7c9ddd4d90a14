//! Golden-bytes tests: they pin the exact encoding of every wire message.
//!
//! Postcard carries no field tags, so reordering fields, changing a field's type or reordering
//! enum variants silently changes the bytes and breaks every deployed peer. If one of these tests
//! fails, the change is a wire break: either revert it or bump [`WIRE_VERSION`] (and then update
//! the pinned hex, which is printed by the failing assertion).

use hone_common::artifact::signing_bytes;
use hone_common::bench::{BenchReport, BenchSpec, LatencyStats};
use hone_common::wire::{
    ArtifactRef, CoordinatorStatus, DeviceStatus, FailureKind, JobAccepted, JobCommand, JobResult,
    Message, Outcome, ResultAck, WIRE_VERSION, decode, encode,
};

/// Encodes `msg`, compares it with the pinned hex (whitespace is ignored, so a length prefix
/// can sit next to its bytes), and checks that the pinned bytes decode back
/// to `msg`.
#[track_caller]
fn check(msg: Message, expected_hex: &str) {
    let expected: String = expected_hex.split_whitespace().collect();
    let actual = hex::encode(encode(&msg).expect("sample encodes"));
    assert_eq!(actual, expected, "wire encoding changed for {msg:?}");
    let golden = hex::decode(&expected).expect("pinned hex is valid");
    assert_eq!(decode(&golden).expect("golden bytes decode"), msg);
}

fn status() -> Message {
    Message::Status(DeviceStatus {
        device_id: "rpi4-01".into(),
        online: true,
        session: 300,
        agent_version: "0.1.0".into(),
        arch: "aarch64".into(),
        os: "linux".into(),
        cores: 4,
        memory_bytes: 8 << 30,
        profile: Some("rpi4".into()),
        sent_at_ms: 1_700_000_000_000,
    })
}

fn run_job() -> Message {
    Message::RunJob(JobCommand {
        command_id: "cmd-1".into(),
        job_id: "job-7".into(),
        attempt: 2,
        artifact: ArtifactRef {
            artifact_id: "mobilenet".into(),
            sha256: std::array::from_fn(|i| i as u8),
            size: 14_000_000,
            url: "http://c:8080/a/mobilenet".into(),
            expires_at_ms: 1_700_000_600_000,
            signature: vec![0xAA, 0xBB, 0xCC],
        },
        spec: BenchSpec {
            warmup: 5,
            max_iterations: 100,
            max_time_ms: 10_000,
            symbols: vec![("batch".into(), 1), ("seq".into(), 128)],
        },
        timeout_ms: 600_000,
    })
}

fn result_ack() -> Message {
    Message::ResultAck(ResultAck { result_id: "job-7/2".into() })
}

fn job_accepted() -> Message {
    Message::JobAccepted(JobAccepted {
        command_id: "cmd-1".into(),
        job_id: "job-7".into(),
        attempt: 2,
    })
}

fn job_result_ok() -> Message {
    Message::JobResult(JobResult {
        result_id: "job-7/2".into(),
        command_id: "cmd-1".into(),
        job_id: "job-7".into(),
        attempt: 2,
        outcome: Outcome::Ok(BenchReport {
            latency: LatencyStats {
                p50_ms: 1.5,
                p90_ms: 2.25,
                p99_ms: 3.125,
                mean_ms: 1.75,
                std_ms: 0.5,
                min_ms: 1.0,
                max_ms: 4.0,
            },
            iterations: 100,
            warmup: 5,
            load_ms: 12.5,
            peak_rss_bytes: 50_000_000,
            synthetic_inputs: true,
            inputs: vec!["input: f32[1,3,224,224]".into()],
            runtime: "tract 0.23.9".into(),
        }),
    })
}

fn job_result_failed() -> Message {
    Message::JobResult(JobResult {
        result_id: "job-7/3".into(),
        command_id: "cmd-2".into(),
        job_id: "job-7".into(),
        attempt: 3,
        outcome: Outcome::Failed {
            kind: FailureKind::HashMismatch,
            reason: "sha256 differs".into(),
        },
    })
}

fn coordinator_status() -> Message {
    Message::CoordinatorStatus(CoordinatorStatus {
        online: false,
        version: "0.1.0".into(),
        started_at_ms: 1_700_000_000_123,
    })
}

fn all_samples() -> Vec<Message> {
    vec![
        status(),
        run_job(),
        result_ack(),
        job_accepted(),
        job_result_ok(),
        job_result_failed(),
        coordinator_status(),
    ]
}

#[test]
fn golden_status() {
    check(
        status(),
        concat!(
            "01",                // wire version
            "00",                // Message::Status
            "07 727069342d3031", // device_id "rpi4-01"
            "01",                // online
            "ac02",              // session 300
            "05 302e312e30",     // agent_version "0.1.0"
            "07 61617263683634", // arch "aarch64"
            "05 6c696e7578",     // os "linux"
            "04",                // cores
            "8080808020",        // memory_bytes 8 GiB
            "01 04 72706934",    // profile Some("rpi4")
            "80d095ffbc31",      // sent_at_ms
        ),
    );
}

#[test]
fn golden_run_job() {
    check(
        run_job(),
        concat!(
            "01",                                                                // wire version
            "01",                                                                // Message::RunJob
            "05 636d642d31",                                                     // command_id
            "05 6a6f622d37",                                                     // job_id
            "02",                                                                // attempt
            "09 6d6f62696c656e6574", // artifact.artifact_id
            "000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f", // artifact.sha256
            "80bfd606",              // artifact.size
            "19 687474703a2f2f633a383038302f612f6d6f62696c656e6574", // artifact.url
            "c09fbaffbc31",          // artifact.expires_at_ms
            "03 aabbcc",             // artifact.signature
            "05",                    // spec.warmup
            "64",                    // spec.max_iterations
            "904e",                  // spec.max_time_ms
            "02",                    // spec.symbols: 2 entries
            "05 6261746368 01",      //   ("batch", 1)
            "03 736571 8001",        //   ("seq", 128)
            "c0cf24",                // timeout_ms
        ),
    );
}

#[test]
fn golden_result_ack() {
    check(result_ack(), "0102076a6f622d372f32");
}

#[test]
fn golden_job_accepted() {
    check(job_accepted(), "010305636d642d31056a6f622d3702");
}

#[test]
fn golden_job_result_ok() {
    check(
        job_result_ok(),
        concat!(
            "01",                                                   // wire version
            "04",                                                   // Message::JobResult
            "07 6a6f622d372f32",                                    // result_id
            "05 636d642d31",                                        // command_id
            "05 6a6f622d37",                                        // job_id
            "02",                                                   // attempt
            "00",                                                   // Outcome::Ok
            "000000000000f83f",                                     // latency.p50_ms (f64 LE)
            "0000000000000240",                                     // latency.p90_ms
            "0000000000000940",                                     // latency.p99_ms
            "000000000000fc3f",                                     // latency.mean_ms
            "000000000000e03f",                                     // latency.std_ms
            "000000000000f03f",                                     // latency.min_ms
            "0000000000001040",                                     // latency.max_ms
            "64",                                                   // iterations
            "05",                                                   // warmup
            "0000000000002940",                                     // load_ms
            "80e1eb17",                                             // peak_rss_bytes
            "01",                                                   // synthetic_inputs
            "01 17 696e7075743a206633325b312c332c3232342c3232345d", // inputs: 1 string
            "0c 747261637420302e32332e39",                          // runtime
        ),
    );
}

#[test]
fn golden_job_result_failed() {
    check(
        job_result_failed(),
        concat!(
            "01",                              // wire version
            "04",                              // Message::JobResult
            "07 6a6f622d372f33",               // result_id
            "05 636d642d32",                   // command_id
            "05 6a6f622d37",                   // job_id
            "03",                              // attempt
            "01",                              // Outcome::Failed
            "04",                              // FailureKind::HashMismatch
            "0e 7368613235362064696666657273", // reason
        ),
    );
}

#[test]
fn golden_coordinator_status() {
    check(coordinator_status(), "01050005302e312e30fbd095ffbc31");
}

#[test]
fn every_encoding_starts_with_the_wire_version() {
    assert_eq!(WIRE_VERSION, 1, "a new wire version needs new golden tests");
    for msg in all_samples() {
        let bytes = encode(&msg).unwrap();
        assert_eq!(bytes[0], 1, "{msg:?}");
    }
}

#[test]
fn message_variant_indexes_are_pinned() {
    // The byte after the version is the `Message` discriminant (varint, < 128 so one byte).
    let indexes: Vec<u8> = all_samples().iter().map(|m| encode(m).unwrap()[1]).collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4, 4, 5]);
}

#[test]
fn failure_kind_indexes_are_pinned() {
    // Append only: each kind keeps its declaration index forever.
    let kinds = [
        (FailureKind::Busy, 0),
        (FailureKind::Expired, 1),
        (FailureKind::Unsigned, 2),
        (FailureKind::BadSignature, 3),
        (FailureKind::HashMismatch, 4),
        (FailureKind::SizeExceeded, 5),
        (FailureKind::Download, 6),
        (FailureKind::ModelInvalid, 7),
        (FailureKind::Crashed, 8),
        (FailureKind::Timeout, 9),
        (FailureKind::Internal, 10),
    ];
    for (kind, index) in kinds {
        assert_eq!(postcard::to_stdvec(&kind).unwrap(), [index], "{kind:?}");
        // The same byte inside a whole message, right after the `Outcome::Failed` tag.
        let msg = Message::JobResult(JobResult {
            result_id: "r".into(),
            command_id: "c".into(),
            job_id: "j".into(),
            attempt: 1,
            outcome: Outcome::Failed { kind, reason: String::new() },
        });
        let bytes = encode(&msg).unwrap();
        // version, Message tag, 3 one-char strings (len + byte), attempt, Outcome tag, kind, reason.
        assert_eq!(bytes.len(), 12);
        assert_eq!(&bytes[..2], [1, 4]);
        assert_eq!(bytes[9], 1, "Outcome::Failed tag");
        assert_eq!(bytes[10], index, "{kind:?}");
        assert_eq!(decode(&bytes).unwrap(), msg);
    }
}

#[test]
fn golden_signing_bytes() {
    let sha: [u8; 32] = std::array::from_fn(|i| 0xF0 ^ i as u8);
    let bytes = signing_bytes("mobilenet", &sha, 14_000_000, 1_700_000_600_000);
    let expected: String = concat!(
        "686f6e652d61727469666163742d763100", // domain tag
        "00000009 6d6f62696c656e6574",        // id: u32 BE len
        "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff e0e1e2e3e4e5e6e7e8e9eaebecedeeef", // sha256
        "0000000000d59f80",                   // size, u64 BE
        "0000018bcfee8fc0",                   // expiry, u64 BE
    )
    .split_whitespace()
    .collect();
    assert_eq!(hex::encode(bytes), expected);
}
