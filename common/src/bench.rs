//! Benchmark specifications and latency statistics (pure functions, no clocks).

use serde::{Deserialize, Serialize};

use crate::shapes::{DeclaredInput, InputShapes, ResolveError, ResolvedShapes};

/// How one benchmark is run: warm-up iterations are excluded from the statistics, then the model
/// runs until `max_iterations` or `max_time_ms` is reached, whichever comes first (at least one
/// measured iteration always runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchSpec {
    /// Runs before measuring (not reported).
    pub warmup: u32,
    /// Upper bound on measured iterations.
    pub max_iterations: u32,
    /// Upper bound on the measured phase, in milliseconds.
    pub max_time_ms: u64,
    /// Values for named symbolic input dimensions, by symbol name (e.g.
    /// `("sequence_length", 128)`). See [`crate::shapes::resolve`] for the defaults.
    pub symbols: Vec<(String, u64)>,
    /// What kind of measurement to take.
    #[serde(default)]
    pub mode: BenchMode,
    /// Concrete shapes for named inputs (`--input NAME=1x3x48x320`), which take precedence over
    /// `symbols` and the defaults.
    #[serde(default)]
    pub inputs: InputShapes,
    /// The runtime to measure the model in.
    #[serde(default)]
    pub runtime: Runtime,
    /// Intra-op threads for runtimes that have a pool (ONNX Runtime); `None`: the device
    /// profile's cores, or the host's without a profile. tract always runs on one thread.
    #[serde(default)]
    pub threads: Option<u32>,
}

/// An inference runtime an agent can measure in. Append only.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// tract, pure Rust, in every agent.
    #[default]
    Tract,
    /// ONNX Runtime (CPU execution provider), loaded from its shared library where the agent
    /// has one.
    Ort,
}

impl Runtime {
    /// Every runtime, in order.
    pub const ALL: [Runtime; 2] = [Runtime::Tract, Runtime::Ort];

    /// Stable lowercase name (`tract`, `ort`), as the CLI and the API spell it.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Tract => "tract",
            Runtime::Ort => "ort",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Runtime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tract" => Ok(Runtime::Tract),
            "ort" | "onnxruntime" => Ok(Runtime::Ort),
            other => Err(format!("unknown runtime `{other}` (tract or ort)")),
        }
    }
}

/// Whether an agent can run a runtime, as its birth message announces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeAvailability {
    /// The runtime.
    pub runtime: Runtime,
    /// Its version when available (`0.23.9`, `1.31.1`).
    pub version: Option<String>,
    /// Why it is not available (`None` when it is).
    pub problem: Option<String>,
}

/// How a runtime ran a benchmark: its threads and whether idle threads spun.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// The runtime.
    pub runtime: Runtime,
    /// Threads computing one inference.
    pub threads: u32,
    /// Whether idle pool threads spin (busy-wait) between work items. Off under a CPU quota,
    /// where spinning burns the quota.
    pub spinning: bool,
}

/// Benchmark modes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchMode {
    /// Latency percentiles of single inferences, warm-up excluded.
    #[default]
    Single,
    /// Continuous load for `seconds`: latency over time, throttle onset, end against start.
    Sustained {
        /// Length of the run.
        seconds: u32,
    },
    /// Process start to the end of the first inference (includes loading the model).
    Cold,
    /// Items per second at each batch size (the first input axis).
    Throughput {
        /// Batch sizes to measure.
        batch_sizes: Vec<u32>,
    },
}

impl BenchMode {
    /// Stable lowercase name.
    pub fn name(&self) -> &'static str {
        match self {
            BenchMode::Single => "single",
            BenchMode::Sustained { .. } => "sustained",
            BenchMode::Cold => "cold",
            BenchMode::Throughput { .. } => "throughput",
        }
    }
}

impl BenchSpec {
    /// Size of a named symbolic non-batch dimension when nothing gives its value.
    pub const DEFAULT_DIM: u64 = crate::shapes::DEFAULT_DIM;

    /// Concrete shapes for a model's declared inputs under this spec (its `inputs` and
    /// `symbols`); `batch` overrides the first axis (throughput runs).
    pub fn resolve_inputs(
        &self,
        declared: &[DeclaredInput],
        batch: Option<u64>,
    ) -> Result<ResolvedShapes, ResolveError> {
        crate::shapes::resolve(declared, &self.inputs, &self.symbols, batch)
    }
}

impl Default for BenchSpec {
    fn default() -> Self {
        BenchSpec {
            warmup: 5,
            max_iterations: 100,
            max_time_ms: 10_000,
            symbols: Vec::new(),
            mode: BenchMode::Single,
            inputs: InputShapes::default(),
            runtime: Runtime::Tract,
            threads: None,
        }
    }
}

/// Latency statistics of the measured iterations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Median (nearest-rank).
    pub p50_ms: f64,
    /// 90th percentile (nearest-rank).
    pub p90_ms: f64,
    /// 99th percentile (nearest-rank).
    pub p99_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Population standard deviation.
    pub std_ms: f64,
    /// Fastest iteration.
    pub min_ms: f64,
    /// Slowest iteration.
    pub max_ms: f64,
}

impl LatencyStats {
    /// Summarises samples; `None` when there are none or any is not finite.
    pub fn from_samples(samples_ms: &[f64]) -> Option<LatencyStats> {
        if samples_ms.is_empty() || samples_ms.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mean = sorted.iter().sum::<f64>() / n;
        let var = sorted.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / n;
        Some(LatencyStats {
            p50_ms: percentile(&sorted, 50.0),
            p90_ms: percentile(&sorted, 90.0),
            p99_ms: percentile(&sorted, 99.0),
            mean_ms: mean,
            std_ms: var.sqrt(),
            min_ms: sorted[0],
            max_ms: sorted[sorted.len() - 1],
        })
    }
}

/// Nearest-rank percentile of already sorted samples (`p` in 0..=100).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Coefficient of variation (std / mean) of a series, e.g. the p50 of repeated runs.
pub fn coefficient_of_variation(values: &[f64]) -> Option<f64> {
    let stats = LatencyStats::from_samples(values)?;
    (stats.mean_ms > 0.0).then(|| stats.std_ms / stats.mean_ms)
}

/// What one successful benchmark measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Latency of the measured iterations.
    pub latency: LatencyStats,
    /// Requests the device served to applications while this was measured (`None`: it was
    /// not serving). Serving never waits for a benchmark; the benchmark shares the CPU.
    #[serde(default)]
    pub served_requests: Option<u64>,
    /// Measured iterations.
    pub iterations: u32,
    /// Warm-up iterations run before measuring.
    pub warmup: u32,
    /// Load + optimise + plan time of the model, in milliseconds.
    pub load_ms: f64,
    /// Peak resident set size of the benchmark process, in bytes.
    pub peak_rss_bytes: u64,
    /// Whether inputs were synthesised from the declared shapes (no real data given).
    pub synthetic_inputs: bool,
    /// Concrete input shapes used, e.g. `input_ids: i64[1,128]`.
    pub inputs: Vec<String>,
    /// Runtime that ran the model, e.g. `tract 0.23.9`.
    pub runtime: String,
    /// Which runtime ran it, on how many threads, spinning or not.
    #[serde(default)]
    pub execution: Execution,
    /// Mode of the measurement.
    pub mode: BenchMode,
    /// How the device profile was applied (or why it was not).
    pub emulation: Emulation,
    /// The host calibration the emulation was computed from, if any.
    pub calibration: Option<HostCalibration>,
    /// Version of the agent that measured.
    pub agent_version: String,
    /// `sustained`: latency over time.
    pub timeline: Vec<TimelinePoint>,
    /// `throughput`: items per second by batch size.
    pub throughput: Vec<ThroughputPoint>,
    /// `cold`: process start to the end of the first inference, ms.
    pub cold_start_ms: Option<f64>,
    /// Temperatures and clocks read on the host during the run.
    pub readings: DeviceReadings,
}

/// Whether and how a device profile was enforced on the benchmark process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Emulation {
    /// Profile name, if the agent runs under one.
    pub profile: Option<String>,
    /// What was applied.
    pub status: EmulationStatus,
    /// Profile speed relative to this host (per core), when emulated.
    pub performance_ratio: Option<f64>,
    /// CFS quota per period, µs (cgroup `cpu.cfs_quota_us`).
    pub cpu_quota_us: Option<u64>,
    /// CFS period, µs.
    pub cpu_period_us: Option<u64>,
    /// CPUs the process may run on.
    pub cpus: Option<u32>,
    /// Memory cap, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// How the memory cap was applied: `cgroup-v1`, `cgroup-v2` or `rlimit-as`.
    pub memory_method: Option<String>,
    /// Thermal model speed-up (1 = real time) when the quota followed the thermal model.
    pub thermal_time_scale: Option<f64>,
    /// Limits the profile asks for that were not applied, each with the reason (the fields
    /// above then say `None` for them). Empty when everything asked for was applied.
    #[serde(default)]
    pub not_enforced: Vec<String>,
    /// Age of the host calibration when the benchmark ran, seconds.
    #[serde(default)]
    pub calibration_age_s: Option<u64>,
    /// Relative spread, (max − min) / median, of the calibration's repeated measurements.
    #[serde(default)]
    pub calibration_spread: Option<f64>,
    /// 1-minute load average per core that the calibration saw.
    #[serde(default)]
    pub calibration_load_per_core: Option<f64>,
    /// Factor applied to the open-loop quota (`ratio × period`) so that the slowdown measured on
    /// this host at calibration meets the target `1 / ratio`.
    #[serde(default)]
    pub quota_correction: Option<f64>,
    /// Slowdown measured with that correction over the target, minus 1 (0.03 = 3 % slower than
    /// the profile asks for), on the calibration workload.
    #[serde(default)]
    pub slowdown_residual: Option<f64>,
    /// CFS periods in which the kernel throttled the benchmark (`nr_throttled` of the group's
    /// `cpu.stat`): evidence that the quota acted.
    #[serde(default)]
    pub throttled_periods: Option<u64>,
}

/// What the agent did about a profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmulationStatus {
    /// No profile: the host as it is.
    #[default]
    None,
    /// The profile was enforced with cgroups (and the memory cap with cgroups or RLIMIT_AS).
    Emulated,
    /// A profile was asked for but could not be enforced; the figures are the host's own.
    Unthrottled {
        /// Why.
        reason: String,
    },
    /// The agent runs on the profiled device itself; nothing is emulated.
    Native,
}

/// Host speed, measured once and cached with the host's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostCalibration {
    /// CPU model, core count and host name.
    pub host_id: String,
    /// Single-thread f32 matrix-multiply throughput with tract, GFLOP/s.
    pub gflops_per_core: f64,
    /// Single-thread memory copy bandwidth, GB/s.
    pub memory_bandwidth_gbs: f64,
    /// When it was measured, Unix ms.
    pub measured_at_ms: u64,
    /// Relative spread, (max − min) / median, of the repeated GFLOP/s measurements.
    #[serde(default)]
    pub spread: f64,
    /// 1-minute load average per core when measured.
    #[serde(default)]
    pub load_per_core: f64,
    /// Share of CPU time the hypervisor stole during the measurement (`/proc/stat`), where known.
    #[serde(default)]
    pub steal_fraction: Option<f64>,
    /// Measurements taken before one was quiet enough (or the attempts ran out).
    #[serde(default)]
    pub attempts: u32,
    /// The host stayed busy through every attempt: the figure is the quietest seen, not a quiet
    /// one, and it is re-measured at the next use.
    #[serde(default)]
    pub contended: bool,
    /// CPU-quota corrections measured on this host, one per performance ratio.
    #[serde(default)]
    pub quota_corrections: Vec<QuotaCorrection>,
}

/// How the CFS quota must be scaled on this host to slow a single-thread workload by a ratio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaCorrection {
    /// Target performance ratio (profile per-core speed over host's), rounded to 0.01.
    pub ratio: f64,
    /// Factor on the open-loop quota `ratio × period`.
    pub factor: f64,
    /// Measured slowdown at that factor over the target `1 / ratio`, minus 1.
    pub residual: f64,
    /// Measurements taken.
    pub iterations: u32,
}

/// One window of a sustained run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Window end, seconds since the measured phase started.
    pub t_s: f64,
    /// Median latency in the window, ms.
    pub p50_ms: f64,
    /// Iterations in the window.
    pub iterations: u32,
    /// CPU quota in force (fraction of one core), if emulated.
    pub quota: Option<f64>,
    /// Emulated clock (thermal model) or measured clock, MHz; see `source`.
    pub clock_mhz: Option<u32>,
    /// Emulated or measured temperature, °C; see `source`.
    pub temperature_c: Option<f64>,
    /// Where this point's clock and temperature come from; `None` when it has neither.
    #[serde(default)]
    pub source: Option<ReadingSource>,
}

/// Origin of a timeline point's clock and temperature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingSource {
    /// The agent's thermal model (emulation): nothing was read from a sensor.
    Modelled,
    /// Read from the host's sysfs (thermal zones, cpufreq).
    Sensor,
}

/// Throughput at one batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputPoint {
    /// Batch size.
    pub batch: u32,
    /// Items per second.
    pub items_per_s: f64,
    /// Median latency of one batch, ms.
    pub p50_ms: f64,
}

/// Temperatures and clocks read during a run, where the host exposes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceReadings {
    /// Hottest thermal zone at the start, °C.
    pub temperature_start_c: Option<f64>,
    /// Hottest thermal zone at the end, °C.
    pub temperature_end_c: Option<f64>,
    /// Lowest current CPU clock seen, MHz.
    pub cpu_mhz_min: Option<u32>,
    /// Highest current CPU clock seen, MHz.
    pub cpu_mhz_max: Option<u32>,
    /// Samples where a core ran below 95 % of its maximum clock.
    pub throttle_events: u32,
}

impl BenchReport {
    /// Checks that a report received from elsewhere is physically meaningful: finite,
    /// non-negative figures, ordered percentiles and at least one iteration.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.latency;
        let figures = [
            ("p50_ms", l.p50_ms),
            ("p90_ms", l.p90_ms),
            ("p99_ms", l.p99_ms),
            ("mean_ms", l.mean_ms),
            ("std_ms", l.std_ms),
            ("min_ms", l.min_ms),
            ("max_ms", l.max_ms),
            ("load_ms", self.load_ms),
        ];
        if let Some((name, v)) = figures.iter().find(|(_, v)| !v.is_finite() || *v < 0.0) {
            return Err(format!("{name} is {v}"));
        }
        if !(l.min_ms <= l.p50_ms
            && l.p50_ms <= l.p90_ms
            && l.p90_ms <= l.p99_ms
            && l.p99_ms <= l.max_ms)
        {
            return Err("percentiles are not ordered min <= p50 <= p90 <= p99 <= max".into());
        }
        if self.iterations == 0 {
            return Err("no measured iterations".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(samples: &[f64]) -> BenchReport {
        BenchReport {
            execution: Default::default(),
            latency: LatencyStats::from_samples(samples).unwrap(),
            served_requests: None,
            iterations: samples.len() as u32,
            warmup: 0,
            load_ms: 1.0,
            peak_rss_bytes: 1,
            synthetic_inputs: true,
            inputs: vec![],
            runtime: "t".into(),
            mode: BenchMode::Single,
            emulation: Emulation::default(),
            calibration: None,
            agent_version: "0".into(),
            timeline: vec![],
            throughput: vec![],
            cold_start_ms: None,
            readings: DeviceReadings::default(),
        }
    }

    #[test]
    fn reports_from_real_samples_validate() {
        assert_eq!(report(&[1.0, 2.0, 3.0]).validate(), Ok(()));
    }

    #[test]
    fn non_finite_negative_or_disordered_reports_are_refused() {
        let mut r = report(&[1.0, 2.0]);
        r.latency.p50_ms = f64::NAN;
        assert!(r.validate().unwrap_err().contains("p50_ms"));
        let mut r = report(&[1.0, 2.0]);
        r.load_ms = f64::INFINITY;
        assert!(r.validate().unwrap_err().contains("load_ms"));
        let mut r = report(&[1.0, 2.0]);
        r.latency.min_ms = -1.0;
        assert!(r.validate().is_err());
        let mut r = report(&[1.0, 2.0]);
        r.latency.p99_ms = 0.5;
        assert!(r.validate().unwrap_err().contains("ordered"));
        let mut r = report(&[1.0]);
        r.iterations = 0;
        assert!(r.validate().is_err());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = LatencyStats::from_samples(&samples).unwrap();
        assert_eq!((s.p50_ms, s.p90_ms, s.p99_ms), (50.0, 90.0, 99.0));
        assert_eq!((s.min_ms, s.max_ms), (1.0, 100.0));
        assert!((s.mean_ms - 50.5).abs() < 1e-12);
    }

    #[test]
    fn stats_ignore_sample_order() {
        let a = LatencyStats::from_samples(&[3.0, 1.0, 2.0]).unwrap();
        let b = LatencyStats::from_samples(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.p50_ms, 2.0);
    }

    #[test]
    fn stats_refuse_empty_or_non_finite_samples() {
        assert!(LatencyStats::from_samples(&[]).is_none());
        assert!(LatencyStats::from_samples(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn coefficient_of_variation_of_constant_series_is_zero() {
        assert_eq!(coefficient_of_variation(&[4.0, 4.0, 4.0]), Some(0.0));
        let cv = coefficient_of_variation(&[9.0, 11.0]).unwrap();
        assert!((cv - 0.1).abs() < 1e-12);
    }

    #[test]
    fn specs_resolve_with_their_inputs_and_symbols() {
        use crate::shapes::{DeclaredDim, InputShapes};
        let spec = BenchSpec {
            symbols: vec![("seq".into(), 16)],
            inputs: InputShapes::parse("image=1x3x48x320").unwrap(),
            ..BenchSpec::default()
        };
        let declared = [
            DeclaredInput {
                name: "ids".into(),
                dims: Some(vec![
                    DeclaredDim::Named("batch".into()),
                    DeclaredDim::Named("seq".into()),
                ]),
            },
            DeclaredInput {
                name: "image".into(),
                dims: Some(vec![
                    DeclaredDim::Unnamed,
                    DeclaredDim::Fixed(3),
                    DeclaredDim::Unnamed,
                    DeclaredDim::Unnamed,
                ]),
            },
        ];
        let r = spec.resolve_inputs(&declared, None).unwrap();
        assert_eq!(r.inputs[0].1, vec![1, 16]);
        assert_eq!(r.inputs[1].1, vec![1, 3, 48, 320]);
    }
}
