//! Property tests of the wire codec: round trips, robustness of `decode` against hostile or
//! corrupted payloads, and the size limit of `encode`.

use hone_common::bench::{
    BenchMode, BenchReport, BenchSpec, DeviceReadings, Emulation, EmulationStatus, Execution,
    HostCalibration, LatencyStats, QuotaCorrection, ReadingSource, Runtime, RuntimeAvailability,
    ThroughputPoint, TimelinePoint,
};
use hone_common::serving::{ServingWindow, TensorStats, TokenStats, WindowLatency};
use hone_common::shapes::InputShapes;
use hone_common::wire::{
    ActivateCommand, ActivationOutcome, ActivationReport, ArtifactRef, CoordinatorStatus,
    DecodeError, DeviceStatus, EncodeError, FailureKind, JobAccepted, JobCommand, JobResult,
    MAX_MESSAGE_BYTES, Message, Outcome, ResultAck, Telemetry, WIRE_VERSION, decode, encode,
};
use proptest::prelude::*;
use proptest::sample::Index;

/// Short strings, ASCII and beyond (multi-byte UTF-8 exercises the length prefixes).
///
/// Boxed, as are [`maybe`] and the larger strategies: the value trees of unboxed nested tuples
/// live on the stack and a whole message's would overflow a test thread's.
fn text() -> BoxedStrategy<String> {
    prop_oneof![3 => "[a-z0-9/._-]{0,12}", 1 => "\\PC{0,6}"].boxed()
}

/// `None` or a value of `strategy`.
fn maybe<S: Strategy + 'static>(strategy: S) -> BoxedStrategy<Option<S::Value>> {
    proptest::option::of(strategy).boxed()
}

/// Any f64 but NaN, so that decoded messages compare equal to the originals.
fn float() -> impl Strategy<Value = f64> {
    use proptest::num::f64::*;
    NORMAL | SUBNORMAL | ZERO | POSITIVE | NEGATIVE | INFINITE
}

fn failure_kind() -> impl Strategy<Value = FailureKind> {
    prop::sample::select(vec![
        FailureKind::Busy,
        FailureKind::Expired,
        FailureKind::Unsigned,
        FailureKind::BadSignature,
        FailureKind::HashMismatch,
        FailureKind::SizeExceeded,
        FailureKind::Download,
        FailureKind::ModelInvalid,
        FailureKind::Crashed,
        FailureKind::Timeout,
        FailureKind::Internal,
        FailureKind::Oom,
        FailureKind::Unsupported,
        FailureKind::Replayed,
    ])
}

fn bench_mode() -> impl Strategy<Value = BenchMode> {
    prop_oneof![
        Just(BenchMode::Single),
        any::<u32>().prop_map(|seconds| BenchMode::Sustained { seconds }),
        Just(BenchMode::Cold),
        prop::collection::vec(any::<u32>(), 0..5)
            .prop_map(|batch_sizes| BenchMode::Throughput { batch_sizes }),
    ]
}

fn emulation_status() -> impl Strategy<Value = EmulationStatus> {
    prop_oneof![
        Just(EmulationStatus::None),
        Just(EmulationStatus::Emulated),
        text().prop_map(|reason| EmulationStatus::Unthrottled { reason }),
        Just(EmulationStatus::Native),
    ]
}

fn runtime() -> impl Strategy<Value = Runtime> {
    prop_oneof![Just(Runtime::Tract), Just(Runtime::Ort)]
}

prop_compose! {
    fn device_status()(
        device_id in text(),
        online in any::<bool>(),
        session in any::<u64>(),
        agent_version in text(),
        arch in text(),
        os in text(),
        cores in any::<u32>(),
        memory_bytes in any::<u64>(),
        profile in maybe(text()),
        sent_at_ms in any::<u64>(),
        fault in maybe(text()),
        runtimes in prop::collection::vec(
            (runtime(), maybe(text()), maybe(text())).prop_map(|(runtime, version, problem)| {
                RuntimeAvailability { runtime, version, problem }
            }),
            0..3,
        ),
    ) -> DeviceStatus {
        DeviceStatus {
            runtimes,
            device_id, online, session, agent_version, arch, os, cores, memory_bytes, profile,
            sent_at_ms, fault,
        }
    }
}

prop_compose! {
    fn artifact_ref()(
        artifact_id in text(),
        sha256 in any::<[u8; 32]>(),
        size in any::<u64>(),
        url in text(),
        expires_at_ms in any::<u64>(),
    ) -> ArtifactRef {
        ArtifactRef { artifact_id, sha256, size, url, expires_at_ms }
    }
}

prop_compose! {
    fn bench_spec()(
        warmup in any::<u32>(),
        max_iterations in any::<u32>(),
        max_time_ms in any::<u64>(),
        symbols in prop::collection::vec((text(), any::<u64>()), 0..4),
        mode in bench_mode(),
        inputs in prop::collection::btree_map(text(), prop::collection::vec(1u64..1_000, 1..5), 0..3),
        runtime in runtime(),
        threads in maybe(any::<u32>()),
    ) -> BenchSpec {
        let inputs = InputShapes::new(inputs.into_iter().filter(|(n, _)| !n.trim().is_empty()))
            .expect("valid shapes");
        BenchSpec { warmup, max_iterations, max_time_ms, symbols, mode, inputs, runtime, threads }
    }
}

prop_compose! {
    fn job_command()(
        command_id in text(),
        job_id in text(),
        attempt in any::<u32>(),
        artifact in artifact_ref(),
        spec in bench_spec(),
        timeout_ms in any::<u64>(),
        seq in any::<u64>(),
        signature in prop::collection::vec(any::<u8>(), 0..80),
    ) -> JobCommand {
        JobCommand { command_id, job_id, attempt, artifact, spec, timeout_ms, seq, signature }
    }
}

prop_compose! {
    fn latency_stats()(
        p in [float(), float(), float(), float(), float(), float(), float()],
    ) -> LatencyStats {
        LatencyStats {
            p50_ms: p[0], p90_ms: p[1], p99_ms: p[2], mean_ms: p[3], std_ms: p[4], min_ms: p[5],
            max_ms: p[6],
        }
    }
}

prop_compose! {
    fn emulation()(
        profile in maybe(text()),
        status in emulation_status(),
        performance_ratio in maybe(float()),
        cpu_quota_us in maybe(any::<u64>()),
        cpu_period_us in maybe(any::<u64>()),
        cpus in maybe(any::<u32>()),
        memory_limit_bytes in maybe(any::<u64>()),
        memory_method in maybe(text()),
        thermal_time_scale in maybe(float()),
    ) -> Emulation {
        Emulation {
            profile, status, performance_ratio, cpu_quota_us, cpu_period_us, cpus,
            memory_limit_bytes, memory_method, thermal_time_scale, ..Emulation::default()
        }
    }
}

prop_compose! {
    fn emulation_full()(
        base in emulation(),
        not_enforced in prop::collection::vec(text(), 0..3),
        calibration_age_s in maybe(any::<u64>()),
        calibration_spread in maybe(float()),
        calibration_load_per_core in maybe(float()),
        quota_correction in maybe(float()),
        slowdown_residual in maybe(float()),
        throttled_periods in maybe(any::<u64>()),
    ) -> Emulation {
        Emulation {
            not_enforced, calibration_age_s, calibration_spread, calibration_load_per_core,
            quota_correction, slowdown_residual, throttled_periods, ..base
        }
    }
}

prop_compose! {
    fn quota_correction()(
        ratio in float(), factor in float(), residual in float(), iterations in any::<u32>(),
    ) -> QuotaCorrection {
        QuotaCorrection { ratio, factor, residual, iterations }
    }
}

prop_compose! {
    fn host_calibration()(
        host_id in text(),
        gflops_per_core in float(),
        memory_bandwidth_gbs in float(),
        measured_at_ms in any::<u64>(),
        spread in float(),
        load_per_core in float(),
        steal_fraction in maybe(float()),
        attempts in any::<u32>(),
        contended in any::<bool>(),
        quota_corrections in prop::collection::vec(quota_correction(), 0..3),
    ) -> HostCalibration {
        HostCalibration {
            host_id, gflops_per_core, memory_bandwidth_gbs, measured_at_ms, spread,
            load_per_core, steal_fraction, attempts, contended, quota_corrections,
        }
    }
}

prop_compose! {
    fn timeline_point()(
        t_s in float(),
        p50_ms in float(),
        iterations in any::<u32>(),
        quota in maybe(float()),
        clock_mhz in maybe(any::<u32>()),
        temperature_c in maybe(float()),
        source in maybe(prop_oneof![Just(ReadingSource::Modelled), Just(ReadingSource::Sensor)]),
    ) -> TimelinePoint {
        TimelinePoint { t_s, p50_ms, iterations, quota, clock_mhz, temperature_c, source }
    }
}

prop_compose! {
    fn throughput_point()(
        batch in any::<u32>(),
        items_per_s in float(),
        p50_ms in float(),
    ) -> ThroughputPoint {
        ThroughputPoint { batch, items_per_s, p50_ms }
    }
}

prop_compose! {
    fn device_readings()(
        temperature_start_c in maybe(float()),
        temperature_end_c in maybe(float()),
        cpu_mhz_min in maybe(any::<u32>()),
        cpu_mhz_max in maybe(any::<u32>()),
        throttle_events in any::<u32>(),
    ) -> DeviceReadings {
        DeviceReadings {
            temperature_start_c, temperature_end_c, cpu_mhz_min, cpu_mhz_max, throttle_events,
        }
    }
}

prop_compose! {
    /// A report's version-1 fields and its version-2 fields are drawn apart (a strategy tuple
    /// holds at most 12 values).
    fn bench_report()(
        (latency, iterations, warmup, load_ms, peak_rss_bytes, synthetic_inputs, inputs, runtime) in (
            latency_stats(),
            any::<u32>(),
            any::<u32>(),
            float(),
            any::<u64>(),
            any::<bool>(),
            prop::collection::vec(text(), 0..4),
            text(),
        ),
        mode in bench_mode(),
        emulation in emulation_full().boxed(),
        calibration in maybe(host_calibration()),
        agent_version in text(),
        timeline in prop::collection::vec(timeline_point(), 0..4),
        throughput in prop::collection::vec(throughput_point(), 0..4),
        cold_start_ms in maybe(float()),
        readings in device_readings(),
        served_requests in maybe(any::<u64>()),
        execution in (runtime(), any::<u32>(), any::<bool>())
            .prop_map(|(runtime, threads, spinning)| Execution { runtime, threads, spinning }),
    ) -> BenchReport {
        BenchReport {
            execution,
            latency, iterations, warmup, load_ms, peak_rss_bytes, synthetic_inputs, inputs,
            runtime, mode, emulation, calibration, agent_version, timeline, throughput,
            cold_start_ms, readings, served_requests,
        }
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        bench_report().boxed().prop_map(Outcome::Ok),
        (failure_kind(), text()).prop_map(|(kind, reason)| Outcome::Failed { kind, reason }),
    ]
}

prop_compose! {
    fn job_result()(
        result_id in text(),
        command_id in text(),
        job_id in text(),
        attempt in any::<u32>(),
        outcome in outcome(),
    ) -> JobResult {
        JobResult { result_id, command_id, job_id, attempt, outcome }
    }
}

prop_compose! {
    fn activate_command()(
        command_id in text(),
        deployment_id in text(),
        model_name in text(),
        artifact in maybe(artifact_ref()),
        probe_rps in any::<u32>(),
        probe_s in any::<u32>(),
        runtime in text(),
        warmup in any::<u32>(),
        symbols in prop::collection::vec((text(), any::<u64>()), 0..3),
        inputs in prop::collection::btree_map(text(), prop::collection::vec(1u64..1_000, 1..5), 0..3),
        unknown_token_id in maybe(any::<i64>()),
        timeout_ms in any::<u64>(),
        seq in any::<u64>(),
        signature in prop::collection::vec(any::<u8>(), 0..80),
    ) -> ActivateCommand {
        let inputs = InputShapes::new(inputs.into_iter().filter(|(n, _)| !n.trim().is_empty()))
            .expect("valid shapes");
        ActivateCommand {
            command_id, deployment_id, model_name, artifact, probe_rps, probe_s, runtime, warmup, symbols,
            inputs, unknown_token_id, timeout_ms, seq, signature,
        }
    }
}

fn activation_outcome() -> BoxedStrategy<ActivationOutcome> {
    prop_oneof![
        (float(), float(), maybe(text())).prop_map(|(load_ms, warmup_ms, previous)| {
            ActivationOutcome::Active { load_ms, warmup_ms, previous }
        }),
        (failure_kind(), text(), maybe(text())).prop_map(|(kind, reason, serving)| {
            ActivationOutcome::Failed { kind, reason, serving }
        }),
    ]
    .boxed()
}

prop_compose! {
    fn activation_report()(
        command_id in text(),
        deployment_id in text(),
        artifact_id in maybe(text()),
        outcome in activation_outcome(),
        sent_at_ms in any::<u64>(),
    ) -> ActivationReport {
        ActivationReport { command_id, deployment_id, artifact_id, outcome, sent_at_ms }
    }
}

prop_compose! {
    fn tensor_stats()(
        name in text(),
        count in any::<u64>(),
        figures in (float(), float(), float(), float()),
        quantiles in prop::collection::vec(float().prop_map(|f| f as f32), 0..20),
        tokens in maybe((float(), float()).prop_map(|(mean_length, unknown_rate)| TokenStats { mean_length, unknown_rate })),
    ) -> TensorStats {
        let (mean, std, min, max) = figures;
        TensorStats { name, count, mean, std, min, max, quantiles, tokens }
    }
}

prop_compose! {
    fn telemetry()(
        ids in (text(), any::<u64>(), any::<u64>(), maybe(text()), maybe(text())),
        counts in (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        latency in maybe((float(), float(), float(), float()).prop_map(|(p50_ms, p90_ms, p99_ms, max_ms)| WindowLatency { p50_ms, p90_ms, p99_ms, max_ms })),
        inputs in prop::collection::vec(tensor_stats(), 0..3),
        outputs in prop::collection::vec(tensor_stats(), 0..2),
        readings in (maybe(float()), maybe(any::<u32>()), any::<bool>(), maybe(prop_oneof![Just(ReadingSource::Modelled), Just(ReadingSource::Sensor)])),
        dropped_windows in any::<u64>(),
    ) -> Telemetry {
        let (device_id, seq, session, artifact_id, deployment_id) = ids;
        let (window_start_ms, window_ms, requests, errors, rejected, rss_bytes) = counts;
        let (temperature_c, clock_mhz, throttled, reading_source) = readings;
        Telemetry {
            device_id, seq, session, artifact_id, deployment_id,
            window: ServingWindow { window_start_ms, window_ms, requests, errors, rejected, latency, rss_bytes, inputs, outputs },
            temperature_c, clock_mhz, throttled, reading_source, dropped_windows,
        }
    }
}

fn message() -> BoxedStrategy<Message> {
    prop_oneof![
        device_status().prop_map(Message::Status),
        job_command().boxed().prop_map(Message::RunJob),
        text().prop_map(|result_id| Message::ResultAck(ResultAck { result_id })),
        (text(), text(), any::<u32>()).prop_map(|(command_id, job_id, attempt)| {
            Message::JobAccepted(JobAccepted { command_id, job_id, attempt })
        }),
        job_result().prop_map(Message::JobResult),
        (any::<bool>(), text(), any::<u64>()).prop_map(|(online, version, started_at_ms)| {
            Message::CoordinatorStatus(CoordinatorStatus { online, version, started_at_ms })
        }),
        activate_command().boxed().prop_map(Message::Activate),
        activation_report().boxed().prop_map(Message::ActivationReport),
        telemetry().boxed().prop_map(Message::Telemetry),
    ]
    .boxed()
}

/// A change to an encoded payload.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        if let Mutation::Insert(_, b) = mutation {
            bytes.push(*b);
        }
        return;
    }
    let len = bytes.len();
    match *mutation {
        Mutation::Flip(i, bit) => bytes[i.index(len)] ^= 1 << bit,
        Mutation::Set(i, b) => bytes[i.index(len)] = b,
        Mutation::Insert(i, b) => bytes.insert(i.index(len + 1), b),
        Mutation::Delete(i) => {
            bytes.remove(i.index(len));
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(len)),
    }
}

/// Decodes `payload` (a panic fails the property) and checks that the outcome is consistent:
/// the documented pre-checks, and a decoded message re-encodes to a payload that decodes to the
/// same message and is no longer than the input.
fn check_decode(payload: &[u8]) -> Result<(), TestCaseError> {
    match decode(payload) {
        Ok(msg) => {
            let again = encode(&msg).map_err(|e| TestCaseError::fail(format!("re-encode: {e}")))?;
            prop_assert!(again.len() <= payload.len(), "re-encoding grew: {msg:?}");
            let back = decode(&again).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            // Compare encodings, not values: a decoded f64 may be NaN.
            prop_assert_eq!(encode(&back).unwrap(), again);
        }
        Err(DecodeError::Empty) => prop_assert!(payload.is_empty()),
        Err(DecodeError::TooLarge { size, max }) => {
            prop_assert_eq!((size, max), (payload.len(), MAX_MESSAGE_BYTES));
            prop_assert!(size > max);
        }
        Err(DecodeError::UnsupportedVersion { found }) => prop_assert_ne!(found, WIRE_VERSION),
        Err(DecodeError::Malformed(reason)) => prop_assert!(!reason.is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn messages_round_trip(msg in message()) {
        let bytes = encode(&msg).unwrap();
        prop_assert!(bytes.len() <= MAX_MESSAGE_BYTES);
        prop_assert_eq!(u16::from(bytes[0]), WIRE_VERSION);
        prop_assert_eq!(decode(&bytes).unwrap(), msg);
    }

    #[test]
    fn nan_figures_round_trip_bit_for_bit(
        msg in job_result(),
        bits in any::<u64>(),
    ) {
        let mut msg = msg;
        if let Outcome::Ok(report) = &mut msg.outcome {
            // Any NaN payload, quiet or signalling, in a plain and in an optional figure.
            let nan = f64::from_bits(bits | 0x7ff0_0000_0000_0001);
            report.latency.p99_ms = nan;
            report.cold_start_ms = Some(nan);
            for point in &mut report.timeline {
                point.p50_ms = nan;
            }
        }
        let bytes = encode(&Message::JobResult(msg)).unwrap();
        let back = decode(&bytes).unwrap();
        prop_assert_eq!(encode(&back).unwrap(), bytes);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(
        payload in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        check_decode(&payload)?;
    }

    #[test]
    fn decode_never_panics_past_the_envelope_header(
        tag in 0u8..8,
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        // Valid version and (mostly) valid message tag, so the body decoder sees the noise.
        let mut payload = vec![WIRE_VERSION as u8, tag];
        payload.extend(body);
        check_decode(&payload)?;
    }

    #[test]
    fn decode_never_panics_on_mutated_messages(
        msg in message(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let mut payload = encode(&msg).unwrap();
        for m in &mutations {
            apply(&mut payload, m);
        }
        check_decode(&payload)?;
    }

    #[test]
    fn encode_respects_the_size_limit(
        msg in message(),
        // Around the limit most of the time, well below or above it sometimes.
        filler in prop_oneof![
            3 => (MAX_MESSAGE_BYTES - 300)..(MAX_MESSAGE_BYTES + 50),
            1 => 0usize..(2 * MAX_MESSAGE_BYTES),
        ],
    ) {
        let msg = grow(msg, filler);
        match encode(&msg) {
            Ok(bytes) => {
                prop_assert!(bytes.len() <= MAX_MESSAGE_BYTES);
                prop_assert_eq!(decode(&bytes).unwrap(), msg);
            }
            Err(EncodeError::TooLarge { size, max }) => {
                prop_assert_eq!(max, MAX_MESSAGE_BYTES);
                prop_assert!(size > max);
            }
            Err(e) => prop_assert!(false, "unexpected encode error: {e}"),
        }
    }
}

/// Adds `n` bytes of payload to a variable-size field of `msg`.
fn grow(mut msg: Message, n: usize) -> Message {
    let filler = "x".repeat(n);
    match &mut msg {
        Message::Status(s) => s.device_id.push_str(&filler),
        Message::RunJob(j) => j.signature.extend(filler.as_bytes()),
        Message::ResultAck(a) => a.result_id.push_str(&filler),
        Message::JobAccepted(a) => a.job_id.push_str(&filler),
        Message::JobResult(r) => match &mut r.outcome {
            Outcome::Ok(report) => report.inputs.push(filler),
            Outcome::Failed { reason, .. } => reason.push_str(&filler),
        },
        Message::CoordinatorStatus(c) => c.version.push_str(&filler),
        Message::Activate(a) => a.signature.extend(filler.as_bytes()),
        Message::ActivationReport(r) => r.deployment_id.push_str(&filler),
        Message::Telemetry(t) => t.device_id.push_str(&filler),
    }
    msg
}

#[test]
fn encode_limit_is_inclusive() {
    // version (1) + tag (1) + length varint (3 bytes for 64 KiB) + the string.
    let at_limit = Message::ResultAck(ResultAck { result_id: "x".repeat(MAX_MESSAGE_BYTES - 5) });
    let bytes = encode(&at_limit).unwrap();
    assert_eq!(bytes.len(), MAX_MESSAGE_BYTES);
    assert_eq!(decode(&bytes).unwrap(), at_limit);

    let over = Message::ResultAck(ResultAck { result_id: "x".repeat(MAX_MESSAGE_BYTES - 4) });
    assert_eq!(
        encode(&over),
        Err(EncodeError::TooLarge { size: MAX_MESSAGE_BYTES + 1, max: MAX_MESSAGE_BYTES })
    );
    let mut raw = bytes;
    raw.push(b'x');
    raw[2..5].copy_from_slice(&[0xfc, 0xff, 0x03]); // length MAX - 4
    assert_eq!(
        decode(&raw),
        Err(DecodeError::TooLarge { size: MAX_MESSAGE_BYTES + 1, max: MAX_MESSAGE_BYTES })
    );
}
