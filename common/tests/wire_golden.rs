//! Golden-bytes tests: they pin the exact encoding of every wire message.
//!
//! Postcard carries no field tags, so reordering fields, changing a field's type or reordering
//! enum variants silently changes the bytes and breaks every deployed peer. If one of these tests
//! fails, the change is a wire break: either revert it or bump [`WIRE_VERSION`] (and then update
//! the pinned hex, which is printed by the failing assertion, and the fuzz seeds: see
//! [`fuzz_seeds_are_the_golden_samples`]).
//!
//! Every field of every message has a non-default value in at least one sample, and every
//! variant of [`BenchMode`] and [`EmulationStatus`] appears (see
//! [`samples_cover_every_mode_and_emulation_status`]).

use std::path::Path;

use hone_common::artifact::{SIGNING_DOMAIN, signing_bytes};
use hone_common::bench::{
    BenchMode, BenchReport, BenchSpec, DeviceReadings, Emulation, EmulationStatus, Execution,
    HostCalibration, LatencyStats, QuotaCorrection, ReadingSource, Runtime, RuntimeAvailability,
    ThroughputPoint, TimelinePoint,
};
use hone_common::serving::{ServingWindow, TensorStats, TokenStats, WindowLatency};
use hone_common::shapes::InputShapes;
use hone_common::wire::{
    ActivateCommand, ActivationOutcome, ActivationReport, ArtifactRef, CoordinatorStatus,
    DecodeError, DeviceStatus, FailureKind, JobAccepted, JobCommand, JobResult, Message, Outcome,
    ResultAck, Telemetry, WIRE_VERSION, decode, encode,
};

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
        fault: Some("disk".into()),
        runtimes: vec![
            RuntimeAvailability {
                runtime: Runtime::Tract,
                version: Some("0.23.9".into()),
                problem: None,
            },
            RuntimeAvailability {
                runtime: Runtime::Ort,
                version: None,
                problem: Some("no lib".into()),
            },
        ],
    })
}

/// A job in `mode`; [`run_job`] pins every byte, the other modes only change the mode.
fn job_command(mode: BenchMode) -> Message {
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
        },
        spec: BenchSpec {
            warmup: 5,
            max_iterations: 100,
            max_time_ms: 10_000,
            symbols: vec![("batch".into(), 1), ("seq".into(), 128)],
            mode,
            inputs: InputShapes::parse("x=1x3x48x320").unwrap(),
            runtime: Runtime::Ort,
            threads: Some(4),
        },
        timeout_ms: 600_000,
        seq: 1_700_000_000_000_001,
        signature: vec![0xAA, 0xBB, 0xCC],
    })
}

fn run_job() -> Message {
    job_command(BenchMode::Throughput { batch_sizes: vec![1, 8, 300] })
}

fn run_job_single() -> Message {
    job_command(BenchMode::Single)
}

fn run_job_sustained() -> Message {
    job_command(BenchMode::Sustained { seconds: 600 })
}

fn run_job_cold() -> Message {
    job_command(BenchMode::Cold)
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

/// A report with the version-1 fields set and every version-2 field at its default; each
/// `job_result_*` sample fills the version-2 fields its way.
fn base_report() -> BenchReport {
    BenchReport {
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
        mode: BenchMode::Single,
        emulation: Emulation::default(),
        calibration: None,
        agent_version: "0.2.0".into(),
        timeline: vec![],
        throughput: vec![],
        cold_start_ms: None,
        readings: DeviceReadings::default(),
        served_requests: None,
        execution: Execution::default(),
    }
}

fn job_result(report: BenchReport) -> Message {
    Message::JobResult(JobResult {
        result_id: "job-7/2".into(),
        command_id: "cmd-1".into(),
        job_id: "job-7".into(),
        attempt: 2,
        outcome: Outcome::Ok(report),
    })
}

fn calibration() -> HostCalibration {
    HostCalibration {
        host_id: "EPYC 7B13/16/h1".into(),
        gflops_per_core: 48.5,
        memory_bandwidth_gbs: 12.25,
        measured_at_ms: 1_699_999_000_000,
        spread: 0.03125,
        load_per_core: 0.5,
        steal_fraction: Some(0.0),
        attempts: 2,
        contended: true,
        quota_corrections: vec![QuotaCorrection {
            ratio: 0.25,
            factor: 1.25,
            residual: -0.015625,
            iterations: 3,
        }],
    }
}

/// Every field set, every `Option` `Some` and every `Vec` non-empty (more than a real sustained
/// run reports), so that no field of the report escapes the golden bytes.
fn job_result_ok() -> Message {
    job_result(BenchReport {
        served_requests: Some(42),
        execution: Execution { runtime: Runtime::Ort, threads: 4, spinning: false },
        mode: BenchMode::Sustained { seconds: 120 },
        emulation: Emulation {
            profile: Some("rpi4".into()),
            status: EmulationStatus::Emulated,
            performance_ratio: Some(0.25),
            cpu_quota_us: Some(25_000),
            cpu_period_us: Some(100_000),
            cpus: Some(4),
            memory_limit_bytes: Some(4 << 30),
            memory_method: Some("cgroup-v1".into()),
            thermal_time_scale: Some(10.0),
            not_enforced: vec!["cores: x".into()],
            calibration_age_s: Some(60),
            calibration_spread: Some(0.03125),
            calibration_load_per_core: Some(0.5),
            quota_correction: Some(1.25),
            slowdown_residual: Some(-0.015625),
            throttled_periods: Some(100),
        },
        calibration: Some(calibration()),
        timeline: vec![
            TimelinePoint {
                t_s: 5.0,
                p50_ms: 1.5,
                iterations: 3000,
                quota: Some(0.25),
                clock_mhz: Some(1500),
                temperature_c: Some(62.5),
                source: Some(ReadingSource::Modelled),
            },
            TimelinePoint {
                t_s: 10.0,
                p50_ms: 2.0,
                iterations: 2500,
                quota: None,
                clock_mhz: None,
                temperature_c: None,
                source: None,
            },
        ],
        throughput: vec![ThroughputPoint { batch: 8, items_per_s: 640.0, p50_ms: 12.5 }],
        cold_start_ms: Some(250.0),
        readings: DeviceReadings {
            temperature_start_c: Some(45.0),
            temperature_end_c: Some(71.5),
            cpu_mhz_min: Some(600),
            cpu_mhz_max: Some(1800),
            throttle_events: 7,
        },
        ..base_report()
    })
}

/// `single` on the bare host: every version-2 field at its default.
fn job_result_single_none() -> Message {
    job_result(base_report())
}

/// `cold` under a profile that could not be enforced.
fn job_result_cold_unthrottled() -> Message {
    job_result(BenchReport {
        mode: BenchMode::Cold,
        emulation: Emulation {
            profile: Some("jetson-nano".into()),
            status: EmulationStatus::Unthrottled { reason: "no cpu controller".into() },
            memory_limit_bytes: Some(4 << 30),
            memory_method: Some("rlimit-as".into()),
            ..Emulation::default()
        },
        calibration: Some(calibration()),
        cold_start_ms: Some(812.25),
        readings: DeviceReadings { cpu_mhz_max: Some(3500), ..DeviceReadings::default() },
        ..base_report()
    })
}

/// `throughput` on the profiled device itself.
fn job_result_throughput_native() -> Message {
    job_result(BenchReport {
        mode: BenchMode::Throughput { batch_sizes: vec![1, 4] },
        emulation: Emulation {
            profile: Some("rpi4".into()),
            status: EmulationStatus::Native,
            ..Emulation::default()
        },
        throughput: vec![
            ThroughputPoint { batch: 1, items_per_s: 400.0, p50_ms: 2.5 },
            ThroughputPoint { batch: 4, items_per_s: 1000.0, p50_ms: 4.0 },
        ],
        readings: DeviceReadings {
            temperature_start_c: Some(40.0),
            temperature_end_c: Some(48.5),
            throttle_events: 0,
            ..DeviceReadings::default()
        },
        ..base_report()
    })
}

fn job_result_failed() -> Message {
    Message::JobResult(JobResult {
        result_id: "job-7/3".into(),
        command_id: "cmd-2".into(),
        job_id: "job-7".into(),
        attempt: 3,
        outcome: Outcome::Failed { kind: FailureKind::Oom, reason: "rss over 4 GiB".into() },
    })
}

fn coordinator_status() -> Message {
    Message::CoordinatorStatus(CoordinatorStatus {
        online: false,
        version: "0.1.0".into(),
        started_at_ms: 1_700_000_000_123,
    })
}

/// Every sample, by the name of its fuzz seed (`fuzz/seeds/decode_envelope/{name}.bin`).
fn activate() -> Message {
    Message::Activate(ActivateCommand {
        command_id: "c2".into(),
        deployment_id: "d1".into(),
        model_name: "mnist".into(),
        artifact: Some(ArtifactRef {
            artifact_id: "m1".into(),
            sha256: [9; 32],
            size: 300,
            url: "http://c/a".into(),
            expires_at_ms: 1000,
        }),
        probe_rps: 5,
        probe_s: 60,
        runtime: "tract".into(),
        warmup: 3,
        symbols: vec![("n".into(), 1)],
        inputs: "x=1x3".parse().unwrap(),
        unknown_token_id: Some(100),
        timeout_ms: 60_000,
        seq: 300,
        signature: vec![0xaa],
    })
}

fn activate_stop() -> Message {
    Message::Activate(ActivateCommand {
        command_id: "c3".into(),
        deployment_id: "d1".into(),
        model_name: String::new(),
        artifact: None,
        probe_rps: 0,
        probe_s: 0,
        runtime: "tract".into(),
        warmup: 0,
        symbols: vec![],
        inputs: Default::default(),
        unknown_token_id: None,
        timeout_ms: 1,
        seq: 0,
        signature: vec![],
    })
}

fn activation_active() -> Message {
    Message::ActivationReport(ActivationReport {
        command_id: "c2".into(),
        deployment_id: "d1".into(),
        artifact_id: Some("m1".into()),
        outcome: ActivationOutcome::Active {
            load_ms: 2.5,
            warmup_ms: 0.5,
            previous: Some("m0".into()),
        },
        sent_at_ms: 7,
    })
}

fn activation_failed() -> Message {
    Message::ActivationReport(ActivationReport {
        command_id: "c2".into(),
        deployment_id: "d1".into(),
        artifact_id: None,
        outcome: ActivationOutcome::Failed {
            kind: FailureKind::HashMismatch,
            reason: "x".into(),
            serving: None,
        },
        sent_at_ms: 8,
    })
}

fn telemetry() -> Message {
    Message::Telemetry(Telemetry {
        device_id: "d".into(),
        seq: 2,
        session: 3,
        artifact_id: Some("m1".into()),
        deployment_id: Some("d1".into()),
        window: ServingWindow {
            window_start_ms: 1000,
            window_ms: 500,
            requests: 10,
            errors: 1,
            rejected: 2,
            latency: Some(WindowLatency { p50_ms: 1.0, p90_ms: 2.0, p99_ms: 4.0, max_ms: 8.0 }),
            rss_bytes: 4096,
            inputs: vec![TensorStats {
                name: "x".into(),
                count: 3,
                mean: 0.5,
                std: 0.25,
                min: 0.0,
                max: 1.0,
                quantiles: vec![0.5],
                tokens: Some(TokenStats { mean_length: 2.0, unknown_rate: 0.125 }),
            }],
            outputs: vec![],
        },
        temperature_c: Some(50.0),
        clock_mhz: Some(1500),
        throttled: true,
        reading_source: Some(ReadingSource::Modelled),
        dropped_windows: 4,
    })
}

fn all_samples() -> Vec<(&'static str, Message)> {
    vec![
        ("status", status()),
        ("run_job", run_job()),
        ("run_job_single", run_job_single()),
        ("run_job_sustained", run_job_sustained()),
        ("run_job_cold", run_job_cold()),
        ("result_ack", result_ack()),
        ("job_accepted", job_accepted()),
        ("job_result_ok", job_result_ok()),
        ("job_result_single_none", job_result_single_none()),
        ("job_result_cold_unthrottled", job_result_cold_unthrottled()),
        ("job_result_throughput_native", job_result_throughput_native()),
        ("job_result_failed", job_result_failed()),
        ("coordinator_status", coordinator_status()),
        ("activate", activate()),
        ("activate_stop", activate_stop()),
        ("activation_active", activation_active()),
        ("activation_failed", activation_failed()),
        ("telemetry", telemetry()),
    ]
}

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

#[test]
fn golden_status() {
    check(
        status(),
        concat!(
            "06",                       // wire version
            "00",                       // Message::Status
            "07 727069342d3031",        // device_id "rpi4-01"
            "01",                       // online
            "ac02",                     // session 300
            "05 302e312e30",            // agent_version "0.1.0"
            "07 61617263683634",        // arch "aarch64"
            "05 6c696e7578",            // os "linux"
            "04",                       // cores
            "8080808020",               // memory_bytes 8 GiB
            "01 04 72706934",           // profile Some("rpi4")
            "80d095ffbc31",             // sent_at_ms
            "01 04 6469736b",           // fault Some("disk")
            "02",                       // runtimes: 2 entries
            "00 01 06 302e32332e39 00", //   Tract, Some("0.23.9"), no problem
            "01 00 01 06 6e6f206c6962", //   Ort, no version, Some("no lib")
        ),
    );
}

/// The signed fields of [`job_command`] up to its `spec.mode`, the same for every mode.
macro_rules! run_job_fields {
    () => {
        concat!(
            "05 636d642d31",                                                     // command_id
            "05 6a6f622d37",                                                     // job_id
            "02",                                                                // attempt
            "09 6d6f62696c656e6574", // artifact.artifact_id
            "000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f", // artifact.sha256
            "80bfd606",              // artifact.size
            "19 687474703a2f2f633a383038302f612f6d6f62696c656e6574", // artifact.url
            "c09fbaffbc31",          // artifact.expires_at_ms
            "05",                    // spec.warmup
            "64",                    // spec.max_iterations
            "904e",                  // spec.max_time_ms
            "02",                    // spec.symbols: 2 entries
            "05 6261746368 01",      //   ("batch", 1)
            "03 736571 8001",        //   ("seq", 128)
        )
    };
}

/// The bytes of [`job_command`] up to its `spec.mode`, the same for every mode.
macro_rules! run_job_head {
    () => {
        concat!(
            "06", // wire version
            "01", // Message::RunJob
            run_job_fields!(),
        )
    };
}

#[test]
fn golden_run_job() {
    check(
        run_job(),
        concat!(
            run_job_head!(),
            "03",                        // spec.mode: BenchMode::Throughput
            "03 01 08 ac02",             //   batch_sizes [1, 8, 300]
            "01 01 78 04 01 03 30 c002", // spec.inputs {"x": [1, 3, 48, 320]}
            "01 01 04",                  // spec.runtime Ort, spec.threads Some(4)
            "c0cf24",                    // timeout_ms
            "8180f9c0c1c48203",          // seq 1_700_000_000_000_001
            "03 aabbcc",                 // signature (last)
        ),
    );
}

#[test]
fn golden_run_job_single() {
    check(
        run_job_single(),
        concat!(
            run_job_head!(),
            "00",                        // spec.mode: BenchMode::Single
            "01 01 78 04 01 03 30 c002", // spec.inputs {"x": [1, 3, 48, 320]}
            "01 01 04",                  // spec.runtime Ort, spec.threads Some(4)
            "c0cf24",                    // timeout_ms
            "8180f9c0c1c48203",          // seq 1_700_000_000_000_001
            "03 aabbcc",                 // signature (last)
        ),
    );
}

#[test]
fn golden_run_job_sustained() {
    check(
        run_job_sustained(),
        concat!(
            run_job_head!(),
            "01",                        // spec.mode: BenchMode::Sustained
            "d804",                      //   seconds 600
            "01 01 78 04 01 03 30 c002", // spec.inputs {"x": [1, 3, 48, 320]}
            "01 01 04",                  // spec.runtime Ort, spec.threads Some(4)
            "c0cf24",                    // timeout_ms
            "8180f9c0c1c48203",          // seq 1_700_000_000_000_001
            "03 aabbcc",                 // signature (last)
        ),
    );
}

#[test]
fn golden_run_job_cold() {
    check(
        run_job_cold(),
        concat!(
            run_job_head!(),
            "02",                        // spec.mode: BenchMode::Cold
            "01 01 78 04 01 03 30 c002", // spec.inputs {"x": [1, 3, 48, 320]}
            "01 01 04",                  // spec.runtime Ort, spec.threads Some(4)
            "c0cf24",                    // timeout_ms
            "8180f9c0c1c48203",          // seq 1_700_000_000_000_001
            "03 aabbcc",                 // signature (last)
        ),
    );
}

#[test]
fn golden_result_ack() {
    check(result_ack(), "0602076a6f622d372f32");
}

#[test]
fn golden_job_accepted() {
    check(job_accepted(), "060305636d642d31056a6f622d3702");
}

/// The bytes of [`job_result`] of [`base_report`] up to the report's `mode`, the same for every
/// `job_result_*` sample but the failed one.
macro_rules! job_result_head {
    ($served:literal) => {
        job_result_head!($served, "00 00 00") // execution: tract, 0 threads, no spinning
    };
    ($served:literal, $execution:literal) => {
        concat!(
            "06",                                                   // wire version
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
            $served,                                                // served_requests
            "64",                                                   // iterations
            "05",                                                   // warmup
            "0000000000002940",                                     // load_ms
            "80e1eb17",                                             // peak_rss_bytes
            "01",                                                   // synthetic_inputs
            "01 17 696e7075743a206633325b312c332c3232342c3232345d", // inputs: 1 string
            "0c 747261637420302e32332e39",                          // runtime
            $execution,                                             // execution
        )
    };
}

/// The bytes of [`calibration`], after its `Some` tag.
macro_rules! calibration_bytes {
    () => {
        concat!(
            "0f 4550594320374231332f31362f6831", // calibration.host_id
            "0000000000404840",                  // calibration.gflops_per_core 48.5
            "0000000000802840",                  // calibration.memory_bandwidth_gbs 12.25
            "c0cbd8febc31",                      // calibration.measured_at_ms
            "000000000000a03f",                  // calibration.spread 0.03125
            "000000000000e03f",                  // calibration.load_per_core 0.5
            "01 0000000000000000",               // calibration.steal_fraction Some(0.0)
            "02",                                // calibration.attempts
            "01",                                // calibration.contended
            "01",                                // calibration.quota_corrections: 1 entry
            "000000000000d03f",                  //   ratio 0.25
            "000000000000f43f",                  //   factor 1.25
            "00000000000090bf",                  //   residual -0.015625
            "03",                                //   iterations
        )
    };
}

#[test]
fn golden_job_result_ok() {
    check(
        job_result_ok(),
        concat!(
            job_result_head!("01 2a", "01 04 00"), // execution: Ort, 4 threads, no spinning
            "01 78",                               // mode: BenchMode::Sustained { seconds: 120 }
            "01 04 72706934",                      // emulation.profile Some("rpi4")
            "01",                                  // emulation.status: EmulationStatus::Emulated
            "01 000000000000d03f",                 // emulation.performance_ratio Some(0.25)
            "01 a8c301",                           // emulation.cpu_quota_us Some(25000)
            "01 a08d06",                           // emulation.cpu_period_us Some(100000)
            "01 04",                               // emulation.cpus Some(4)
            "01 8080808010",                       // emulation.memory_limit_bytes Some(4 GiB)
            "01 09 6367726f75702d7631",            // emulation.memory_method Some("cgroup-v1")
            "01 0000000000002440",                 // emulation.thermal_time_scale Some(10.0)
            "01 08 636f7265733a2078",              // emulation.not_enforced ["cores: x"]
            "01 3c",                               // emulation.calibration_age_s Some(60)
            "01 000000000000a03f",                 // emulation.calibration_spread Some(0.03125)
            "01 000000000000e03f",                 // emulation.calibration_load_per_core Some(0.5)
            "01 000000000000f43f",                 // emulation.quota_correction Some(1.25)
            "01 00000000000090bf",                 // emulation.slowdown_residual Some(-0.015625)
            "01 64",                               // emulation.throttled_periods Some(100)
            "01",                                  // calibration Some
            calibration_bytes!(),
            "05 302e322e30",       // agent_version "0.2.0"
            "02",                  // timeline: 2 points
            "0000000000001440",    //   t_s 5.0
            "000000000000f83f",    //   p50_ms 1.5
            "b817",                //   iterations 3000
            "01 000000000000d03f", //   quota Some(0.25)
            "01 dc0b",             //   clock_mhz Some(1500)
            "01 0000000000404f40", //   temperature_c Some(62.5)
            "01 00",               //   source Some(Modelled)
            "0000000000002440",    //   t_s 10.0
            "0000000000000040",    //   p50_ms 2.0
            "c413",                //   iterations 2500
            "00 00 00 00",         //   quota, clock_mhz, temperature_c, source: None
            "01",                  // throughput: 1 point
            "08",                  //   batch 8
            "0000000000008440",    //   items_per_s 640.0
            "0000000000002940",    //   p50_ms 12.5
            "01 0000000000406f40", // cold_start_ms Some(250.0)
            "01 0000000000804640", // readings.temperature_start_c Some(45.0)
            "01 0000000000e05140", // readings.temperature_end_c Some(71.5)
            "01 d804",             // readings.cpu_mhz_min Some(600)
            "01 880e",             // readings.cpu_mhz_max Some(1800)
            "07",                  // readings.throttle_events
        ),
    );
}

#[test]
fn golden_job_result_single_none() {
    check(
        job_result_single_none(),
        concat!(
            job_result_head!("00"),
            "00",                   // mode: BenchMode::Single
            "00",                   // emulation.profile None
            "00",                   // emulation.status: EmulationStatus::None
            "00 00 00 00 00 00 00", // emulation's other fields: None
            "00",                   // emulation.not_enforced: empty
            "00 00 00 00 00 00", // calibration age, spread, load, correction, residual, throttled
            "00",                // calibration None
            "05 302e322e30",     // agent_version "0.2.0"
            "00",                // timeline: empty
            "00",                // throughput: empty
            "00",                // cold_start_ms None
            "00 00 00 00",       // readings' options: None
            "00",                // readings.throttle_events
        ),
    );
}

#[test]
fn golden_job_result_cold_unthrottled() {
    check(
        job_result_cold_unthrottled(),
        concat!(
            job_result_head!("00"),
            "02",                                       // mode: BenchMode::Cold
            "01 0b 6a6574736f6e2d6e616e6f",             // emulation.profile Some("jetson-nano")
            "02 11 6e6f2063707520636f6e74726f6c6c6572", // emulation.status: Unthrottled { reason }
            "00 00 00 00",                              // performance_ratio, cpu quota/period, cpus
            "01 8080808010",                            // emulation.memory_limit_bytes Some(4 GiB)
            "01 09 726c696d69742d6173",                 // emulation.memory_method Some("rlimit-as")
            "00",                                       // emulation.thermal_time_scale None
            "00",                                       // emulation.not_enforced: empty
            "00 00 00 00 00 00", // calibration age, spread, load, correction, residual, throttled
            "01",                // calibration Some
            calibration_bytes!(),
            "05 302e322e30",       // agent_version "0.2.0"
            "00",                  // timeline: empty
            "00",                  // throughput: empty
            "01 0000000000628940", // cold_start_ms Some(812.25)
            "00 00 00",            // temperatures, cpu_mhz_min: None
            "01 ac1b",             // readings.cpu_mhz_max Some(3500)
            "00",                  // readings.throttle_events
        ),
    );
}

#[test]
fn golden_job_result_throughput_native() {
    check(
        job_result_throughput_native(),
        concat!(
            job_result_head!("00"),
            "03 02 01 04",    // mode: BenchMode::Throughput { batch_sizes: [1, 4] }
            "01 04 72706934", // emulation.profile Some("rpi4")
            "03",             // emulation.status: EmulationStatus::Native
            "00 00 00 00 00 00 00", // emulation's other fields: None
            "00",             // emulation.not_enforced: empty
            "00 00 00 00 00 00", // calibration age, spread, load, correction, residual, throttled
            "00",             // calibration None
            "05 302e322e30",  // agent_version "0.2.0"
            "00",             // timeline: empty
            "02",             // throughput: 2 points
            "01",             //   batch 1
            "0000000000007940", //   items_per_s 400.0
            "0000000000000440", //   p50_ms 2.5
            "04",             //   batch 4
            "0000000000408f40", //   items_per_s 1000.0
            "0000000000001040", //   p50_ms 4.0
            "00",             // cold_start_ms None
            "01 0000000000004440", // readings.temperature_start_c Some(40.0)
            "01 0000000000404840", // readings.temperature_end_c Some(48.5)
            "00 00",          // readings.cpu_mhz_min, cpu_mhz_max: None
            "00",             // readings.throttle_events
        ),
    );
}

#[test]
fn golden_job_result_failed() {
    check(
        job_result_failed(),
        concat!(
            "06",                              // wire version
            "04",                              // Message::JobResult
            "07 6a6f622d372f33",               // result_id
            "05 636d642d32",                   // command_id
            "05 6a6f622d37",                   // job_id
            "03",                              // attempt
            "01",                              // Outcome::Failed
            "0b",                              // FailureKind::Oom
            "0e 727373206f766572203420476942", // reason
        ),
    );
}

#[test]
fn golden_coordinator_status() {
    check(coordinator_status(), "06050005302e312e30fbd095ffbc31");
}

#[test]
fn golden_activate() {
    check(
        activate(),
        concat!(
            "06",                                                               // wire version
            "06",                                                               // Message::Activate
            "02 6332",                                                          // command_id "c2"
            "02 6431",       // deployment_id "d1"
            "05 6d6e697374", // model_name "mnist"
            "01 02 6d31",    // artifact Some: artifact_id "m1"
            "0909090909090909090909090909090909090909090909090909090909090909", // sha256
            "ac02",          //   size 300
            "0a 687474703a2f2f632f61", //   url
            "e807",          //   expires_at_ms 1000
            "05",            // probe_rps
            "3c",            // probe_s 60
            "05 7472616374", // runtime "tract"
            "03",            // warmup
            "01 01 6e 01",   // symbols [("n", 1)]
            "01 01 78 02 01 03", // inputs {"x": [1, 3]}
            "01 c801",       // unknown_token_id Some(100) (zigzag)
            "e0d403",        // timeout_ms 60000
            "ac02",          // seq 300
            "01 aa",         // signature (last)
        ),
    );
}

#[test]
fn golden_activate_stop() {
    check(
        activate_stop(),
        concat!(
            "06 06",         // wire version, Message::Activate
            "02 6333",       // command_id "c3"
            "02 6431",       // deployment_id "d1"
            "00",            // model_name ""
            "00",            // artifact None: stop serving
            "00 00",         // probe_rps, probe_s
            "05 7472616374", // runtime
            "00 00 00 00",   // warmup, symbols [], inputs {}, unknown_token_id None
            "01",            // timeout_ms
            "00",            // seq 0
            "00",            // signature: empty
        ),
    );
}

#[test]
fn golden_activation_reports() {
    check(
        activation_active(),
        concat!(
            "06 07",            // wire version, Message::ActivationReport
            "02 6332",          // command_id
            "02 6431",          // deployment_id
            "01 02 6d31",       // artifact_id Some("m1")
            "00",               // ActivationOutcome::Active
            "0000000000000440", //   load_ms 2.5
            "000000000000e03f", //   warmup_ms 0.5
            "01 02 6d30",       //   previous Some("m0")
            "07",               // sent_at_ms
        ),
    );
    check(
        activation_failed(),
        concat!(
            "06 07 02 6332 02 6431",
            "00",    // artifact_id None
            "01",    // ActivationOutcome::Failed
            "04",    //   kind: HashMismatch
            "01 78", //   reason "x"
            "00",    //   serving None
            "08",    // sent_at_ms
        ),
    );
}

#[test]
fn golden_telemetry() {
    check(
        telemetry(),
        concat!(
            "06 08",               // wire version, Message::Telemetry
            "01 64",               // device_id "d"
            "02 03",               // seq, session
            "01 02 6d31",          // artifact_id Some("m1")
            "01 02 6431",          // deployment_id Some("d1")
            "e807 f403",           // window: start 1000, length 500
            "0a 01 02",            //   requests 10, errors 1, rejected 2
            "01",                  //   latency Some
            "000000000000f03f",    //     p50 1.0
            "0000000000000040",    //     p90 2.0
            "0000000000001040",    //     p99 4.0
            "0000000000002040",    //     max 8.0
            "8020",                //   rss_bytes 4096
            "01 01 78 03",         //   inputs: 1, name "x", count 3
            "000000000000e03f",    //     mean 0.5
            "000000000000d03f",    //     std 0.25
            "0000000000000000",    //     min 0.0
            "000000000000f03f",    //     max 1.0
            "01 0000003f",         //     quantiles [0.5f32]
            "01",                  //     tokens Some
            "0000000000000040",    //       mean_length 2.0
            "000000000000c03f",    //       unknown_rate 0.125
            "00",                  //   outputs: none
            "01 0000000000004940", // temperature_c Some(50.0)
            "01 dc0b",             // clock_mhz Some(1500)
            "01",                  // throttled
            "01 00",               // reading_source Some(Modelled)
            "04",                  // dropped_windows
        ),
    );
}

#[test]
fn every_encoding_starts_with_the_wire_version() {
    assert_eq!(WIRE_VERSION, 6, "a new wire version needs new golden tests");
    for (name, msg) in all_samples() {
        let bytes = encode(&msg).unwrap();
        assert_eq!(bytes[0], 6, "{name}");
    }
}

#[test]
fn older_versions_are_refused_by_number() {
    // The version-1, -2, -3 and -5 golden `ResultAck`s: their bodies are still valid, their
    // versions are not, and the error names the version (the coordinator shows it).
    for (hex_payload, found) in [
        ("0102076a6f622d372f32", 1),
        ("0202076a6f622d372f32", 2),
        ("0302076a6f622d372f32", 3),
        ("0502076a6f622d372f32", 5),
    ] {
        let old = hex::decode(hex_payload).unwrap();
        assert_eq!(decode(&old), Err(DecodeError::UnsupportedVersion { found }));
    }
}

#[test]
fn message_variant_indexes_are_pinned() {
    // The byte after the version is the `Message` discriminant (varint, < 128 so one byte).
    let indexes: Vec<u8> = all_samples().iter().map(|(_, m)| encode(m).unwrap()[1]).collect();
    assert_eq!(indexes, [0, 1, 1, 1, 1, 2, 3, 4, 4, 4, 4, 4, 5, 6, 6, 7, 7, 8]);
}

/// Index of a mode, by declaration order. Exhaustive on purpose: a new variant must be added
/// here, to the samples and to the golden tests.
fn mode_index(mode: &BenchMode) -> u8 {
    match mode {
        BenchMode::Single => 0,
        BenchMode::Sustained { .. } => 1,
        BenchMode::Cold => 2,
        BenchMode::Throughput { .. } => 3,
    }
}

/// Index of an emulation status, by declaration order (exhaustive, as [`mode_index`]).
fn emulation_index(status: &EmulationStatus) -> u8 {
    match status {
        EmulationStatus::None => 0,
        EmulationStatus::Emulated => 1,
        EmulationStatus::Unthrottled { .. } => 2,
        EmulationStatus::Native => 3,
    }
}

#[test]
fn bench_mode_indexes_are_pinned() {
    let modes = [
        (BenchMode::Single, "00"),
        (BenchMode::Sustained { seconds: 1 }, "01 01"),
        (BenchMode::Cold, "02"),
        (BenchMode::Throughput { batch_sizes: vec![2] }, "03 01 02"),
    ];
    for (mode, expected) in modes {
        let expected: String = expected.split_whitespace().collect();
        assert_eq!(hex::encode(postcard::to_stdvec(&mode).unwrap()), expected, "{mode:?}");
        assert_eq!(postcard::to_stdvec(&mode).unwrap()[0], mode_index(&mode));
    }
}

#[test]
fn emulation_status_indexes_are_pinned() {
    let statuses = [
        (EmulationStatus::None, "00"),
        (EmulationStatus::Emulated, "01"),
        (EmulationStatus::Unthrottled { reason: "r".into() }, "02 01 72"),
        (EmulationStatus::Native, "03"),
    ];
    for (status, expected) in statuses {
        let expected: String = expected.split_whitespace().collect();
        assert_eq!(hex::encode(postcard::to_stdvec(&status).unwrap()), expected, "{status:?}");
        assert_eq!(postcard::to_stdvec(&status).unwrap()[0], emulation_index(&status));
    }
}

#[test]
fn samples_cover_every_mode_and_emulation_status() {
    let mut job_modes = Vec::new();
    let mut report_modes = Vec::new();
    let mut statuses = Vec::new();
    for (_, msg) in all_samples() {
        match msg {
            Message::RunJob(job) => job_modes.push(mode_index(&job.spec.mode)),
            Message::JobResult(JobResult { outcome: Outcome::Ok(report), .. }) => {
                report_modes.push(mode_index(&report.mode));
                statuses.push(emulation_index(&report.emulation.status));
            }
            _ => {}
        }
    }
    for indexes in [&mut job_modes, &mut report_modes, &mut statuses] {
        indexes.sort_unstable();
        assert_eq!(*indexes, [0, 1, 2, 3]);
    }
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
        (FailureKind::Oom, 11),
        (FailureKind::Unsupported, 12),
        (FailureKind::Replayed, 13),
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
        assert_eq!(&bytes[..2], [6, 4]);
        assert_eq!(bytes[9], 1, "Outcome::Failed tag");
        assert_eq!(bytes[10], index, "{kind:?}");
        assert_eq!(decode(&bytes).unwrap(), msg);
    }
}

/// The fuzz seeds (`fuzz/seeds/decode_envelope/*.bin`) are exactly the encodings of the golden
/// samples, one file per sample. After a wire change, rewrite them with
/// `HONE_BLESS_SEEDS=1 cargo test -p hone-common --test wire_golden fuzz_seeds`.
#[test]
fn fuzz_seeds_are_the_golden_samples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/decode_envelope");
    let samples = all_samples();
    if std::env::var_os("HONE_BLESS_SEEDS").is_some() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "bin") {
                std::fs::remove_file(path).unwrap();
            }
        }
        for (name, msg) in &samples {
            std::fs::write(dir.join(format!("{name}.bin")), encode(msg).unwrap()).unwrap();
        }
    }
    let mut seeds: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".bin"))
        .collect();
    seeds.sort();
    let mut expected: Vec<String> = samples.iter().map(|(name, _)| format!("{name}.bin")).collect();
    expected.sort();
    assert_eq!(seeds, expected, "one seed per golden sample (HONE_BLESS_SEEDS=1 rewrites them)");
    for (name, msg) in &samples {
        let seed = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        assert_eq!(
            hex::encode(&seed),
            hex::encode(encode(msg).unwrap()),
            "stale seed {name}.bin (HONE_BLESS_SEEDS=1 rewrites the seeds)"
        );
    }
}

#[test]
fn golden_signing_bytes() {
    let Message::RunJob(job) = run_job() else { unreachable!() };
    let expected: String = concat!(
        "686f6e652d6a6f622d763600", // domain tag "hone-job-v6\0"
        "0000008a",                 // body length, u32 BE (138)
        run_job_fields!(),
        "03 03 01 08 ac02",          // spec.mode: Throughput [1, 8, 300]
        "01 01 78 04 01 03 30 c002", // spec.inputs {"x": [1, 3, 48, 320]}
        "01 01 04",                  // spec.runtime Ort, spec.threads Some(4)
        "c0cf24",                    // timeout_ms
        "8180f9c0c1c48203",          // seq
    )
    .split_whitespace()
    .collect();
    assert_eq!(hex::encode(signing_bytes(&job)), expected);
}

/// The signed body is exactly the message on the wire between the `Message` tag and the
/// signature, for every job sample: no field the agent reads travels unsigned.
#[test]
fn the_signature_covers_every_byte_of_the_job_but_itself() {
    for (name, msg) in all_samples() {
        let Message::RunJob(job) = &msg else { continue };
        let wire = encode(&msg).unwrap();
        let signed = signing_bytes(job);
        let body = &signed[SIGNING_DOMAIN.len() + 4..];
        let sig_len = 1 + job.signature.len(); // varint length (< 128) + bytes
        assert_eq!(body, &wire[2..wire.len() - sig_len], "{name}");
        let declared = u32::from_be_bytes(signed[SIGNING_DOMAIN.len()..][..4].try_into().unwrap());
        assert_eq!(declared as usize, body.len(), "{name}");
    }
}
