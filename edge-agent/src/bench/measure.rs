//! The measurement loop every runtime shares: warm-up, then the spec's mode, then the report.
//! A runtime supplies only "load for this batch size" and "run once" ([`Loaded`]), so tract
//! and ONNX Runtime are timed by the same code and their figures compare.

use std::time::Instant;

use hone_common::bench::{
    BenchMode, BenchReport, BenchSpec, Execution, LatencyStats, ThroughputPoint, TimelinePoint,
};

use super::tract::{BenchFailure, ChildResult};

/// A model loaded and planned by one runtime, with its inputs.
pub(crate) trait Loaded {
    /// Runs one inference on the loaded inputs, discarding the outputs.
    fn run_once(&mut self) -> Result<(), BenchFailure>;
}

/// What a runtime tells the shared loop about itself.
pub(crate) struct RuntimeInfo {
    /// Version string, e.g. `tract 0.23.9`.
    pub(crate) name: String,
    /// How it runs (runtime, threads, spinning).
    pub(crate) execution: Execution,
}

/// The batch size a model is first loaded with: a throughput run's first, else the spec's.
pub(crate) fn first_batch(spec: &BenchSpec) -> Option<u64> {
    match &spec.mode {
        BenchMode::Throughput { batch_sizes } => batch_sizes.first().map(|b| u64::from(*b)),
        _ => None,
    }
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Measures `first` (loaded for the spec's first batch, in `load_ms`, with `inputs` describing
/// its input shapes) as `spec.mode` says; `load_batch` loads the model again for another batch
/// size (throughput runs). `load_start` is when loading began (for `cold`).
pub(crate) fn measure<L: Loaded>(
    spec: &BenchSpec,
    load_start: Instant,
    load_ms: f64,
    mut first: L,
    inputs: Vec<String>,
    mut load_batch: impl FnMut(u64) -> Result<L, BenchFailure>,
    runtime: RuntimeInfo,
) -> Result<ChildResult, BenchFailure> {
    first.run_once()?;
    let first_inference_end_unix_ns = unix_ns();
    let first_ms = load_start.elapsed().as_secs_f64() * 1e3 - load_ms;
    for _ in 1..spec.warmup {
        first.run_once()?;
    }
    let measure_start_unix_ns = unix_ns();
    let measure_start = Instant::now();
    let mut samples = Vec::with_capacity(spec.max_iterations.min(100_000) as usize);
    let mut times = Vec::new();
    let mut throughput = Vec::new();
    let mut timeline = Vec::new();
    match &spec.mode {
        BenchMode::Cold => samples.push(first_ms),
        BenchMode::Single => {
            while samples.is_empty()
                || (samples.len() < spec.max_iterations as usize
                    && measure_start.elapsed().as_millis() < u128::from(spec.max_time_ms))
            {
                let t = Instant::now();
                first.run_once()?;
                samples.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        BenchMode::Sustained { seconds } => {
            let limit = f64::from((*seconds).max(1));
            while samples.is_empty() || measure_start.elapsed().as_secs_f64() < limit {
                let t = Instant::now();
                first.run_once()?;
                samples.push(t.elapsed().as_secs_f64() * 1e3);
                times.push(measure_start.elapsed().as_secs_f64());
            }
            let window = (limit / 60.0).max(1.0);
            let mut start = 0;
            let mut edge = window;
            while start < samples.len() {
                let end = times[start..]
                    .iter()
                    .position(|t| *t > edge)
                    .map_or(samples.len(), |p| start + p);
                if end > start {
                    let stats =
                        LatencyStats::from_samples(&samples[start..end]).expect("finite samples");
                    timeline.push(TimelinePoint {
                        t_s: times[end - 1],
                        p50_ms: stats.p50_ms,
                        iterations: (end - start) as u32,
                        quota: None,
                        clock_mhz: None,
                        temperature_c: None,
                        source: None,
                    });
                }
                start = end;
                edge += window;
            }
        }
        BenchMode::Throughput { batch_sizes } => {
            let per_batch_ms = (spec.max_time_ms / batch_sizes.len().max(1) as u64).max(100);
            for (i, b) in batch_sizes.iter().enumerate() {
                let mut other = if i == 0 { None } else { Some(load_batch(u64::from(*b))?) };
                let r: &mut L = other.as_mut().unwrap_or(&mut first);
                for _ in 0..spec.warmup.min(3) {
                    r.run_once()?;
                }
                let mut lat = Vec::new();
                let start = Instant::now();
                while lat.is_empty()
                    || (start.elapsed().as_millis() < u128::from(per_batch_ms)
                        && lat.len() < spec.max_iterations as usize)
                {
                    let t = Instant::now();
                    r.run_once()?;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                let total_s = lat.iter().sum::<f64>() / 1e3;
                let stats = LatencyStats::from_samples(&lat).expect("finite samples");
                throughput.push(ThroughputPoint {
                    batch: *b,
                    items_per_s: f64::from(*b) * lat.len() as f64 / total_s,
                    p50_ms: stats.p50_ms,
                });
                if i == 0 {
                    samples = lat;
                }
            }
        }
    }
    let latency = LatencyStats::from_samples(&samples)
        .ok_or_else(|| BenchFailure::invalid("no finite latency samples"))?;
    let report = BenchReport {
        latency,
        served_requests: None,
        iterations: samples.len() as u32,
        warmup: spec.warmup,
        load_ms,
        peak_rss_bytes: crate::host::peak_rss_bytes().unwrap_or(0),
        synthetic_inputs: true,
        inputs,
        runtime: runtime.name,
        execution: runtime.execution,
        mode: spec.mode.clone(),
        emulation: Default::default(),
        calibration: None,
        agent_version: hone_common::HONE_VERSION.to_string(),
        timeline,
        throughput,
        cold_start_ms: None,
        readings: Default::default(),
    };
    Ok(ChildResult { report, measure_start_unix_ns, first_inference_end_unix_ns })
}
