//! Benchmarks run in a child process, under the device profile's limits.
//!
//! The agent never loads a model itself: it spawns its own executable with the hidden
//! `bench-child` subcommand, which runs [`tract::run_benchmark`] (or ONNX Runtime's, `ort`, when
//! the job asks for it and the agent has the library) and prints one JSON line
//! ([`ChildOutcome`]) on stdout. A crash, abort, out-of-memory kill or hang therefore ends the
//! child, never the agent, and memory readings start from a fresh process.
//!
//! Under an emulated profile the child waits for a go line on stdin, so that the agent can put
//! it into its cgroups (CPU quota, cpuset, memory limit) before it does any work. During
//! `sustained` runs the agent moves the quota along the thermal model; during every run it
//! samples the host's temperatures and clocks.

pub(crate) mod measure;
#[cfg(not(target_env = "musl"))]
pub mod ort;
pub mod tract;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hone_common::bench::{
    BenchMode, BenchReport, BenchSpec, EmulationStatus, ReadingSource, Runtime, RuntimeAvailability,
};
use hone_common::wire::FailureKind;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::throttle::cgroup::{Cgroups, Group};
use crate::throttle::{Limit, Plan};

/// What the child prints on stdout: exactly one JSON line.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // built once, serialised once
#[serde(rename_all = "snake_case")]
pub enum ChildOutcome {
    /// The benchmark ran.
    Ok {
        /// The measurement.
        report: BenchReport,
        /// Unix ns when the measured phase began (aligns the timeline with the agent's records).
        measure_start_unix_ns: u128,
        /// Unix ns when the first inference ended (for `cold`).
        first_inference_end_unix_ns: u128,
        /// `setrlimit(RLIMIT_AS)` failed: the memory cap was not applied.
        #[serde(default)]
        rlimit_error: Option<String>,
        /// `sched_setaffinity` failed: the cores were not restricted.
        #[serde(default)]
        affinity_error: Option<String>,
    },
    /// It failed with a category and reason.
    Failed {
        /// Category.
        kind: FailureKind,
        /// Explanation.
        reason: String,
    },
}

/// Process options shared by the agent's child processes (`bench-child`, `serve-child`).
#[derive(Debug, Default, Clone)]
pub struct ChildOptions {
    /// Wait for a line on stdin before starting.
    pub wait_go: bool,
    /// Apply `RLIMIT_AS` to itself (memory cap without the cgroup controller).
    pub rlimit_as: Option<u64>,
    /// Restrict itself to the first N CPUs (without the cpuset controller).
    pub cpus: Option<u32>,
}

/// The limits of [`ChildOptions`] that could not be applied, with the system's reason.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LimitErrors {
    /// `setrlimit(RLIMIT_AS)` failed: the memory cap was not applied.
    pub rlimit_error: Option<String>,
    /// `sched_setaffinity` failed: the cores were not restricted.
    pub affinity_error: Option<String>,
}

impl ChildOptions {
    /// Waits for the go line when asked (so that the parent can move this process into its
    /// cgroups first), then caps its address space and restricts its cores. Call it before any
    /// other thread starts: the affinity applies to the calling thread and is inherited.
    pub fn apply(&self) -> LimitErrors {
        if self.wait_go {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        let rlimit_error = self.rlimit_as.and_then(|limit| {
            let lim = rustix::process::Rlimit { current: Some(limit), maximum: Some(limit) };
            rustix::process::setrlimit(rustix::process::Resource::As, lim)
                .err()
                .map(|e| format!("setrlimit(RLIMIT_AS, {limit}): {e}"))
        });
        let affinity_error = self.cpus.and_then(|n| {
            // The first n CPUs this process may run on, not simply 0..n.
            let allowed = rustix::thread::sched_getaffinity(None).ok();
            let mut set = rustix::thread::CpuSet::new();
            let candidates = (0..rustix::thread::CpuSet::MAX_CPU)
                .filter(|c| allowed.as_ref().is_none_or(|a| a.is_set(*c)))
                .take(n as usize);
            for cpu in candidates {
                set.set(cpu);
            }
            rustix::thread::sched_setaffinity(None, &set)
                .err()
                .map(|e| format!("sched_setaffinity({n} cpus): {e}"))
        });
        LimitErrors { rlimit_error, affinity_error }
    }
}

/// Entry point of the `bench-child` subcommand: runs the benchmark and prints the outcome.
pub fn child_main(
    model: &Path,
    spec_json: &str,
    ort_lib: Option<&Path>,
    opts: &ChildOptions,
) -> i32 {
    let LimitErrors { rlimit_error, affinity_error } = opts.apply();
    let outcome = match serde_json::from_str::<BenchSpec>(spec_json) {
        Err(e) => {
            ChildOutcome::Failed { kind: FailureKind::Internal, reason: format!("bad spec: {e}") }
        }
        Ok(spec) => match run_in_runtime(model, &spec, ort_lib) {
            Ok(r) => ChildOutcome::Ok {
                report: r.report,
                measure_start_unix_ns: r.measure_start_unix_ns,
                first_inference_end_unix_ns: r.first_inference_end_unix_ns,
                rlimit_error,
                affinity_error,
            },
            Err(f) => ChildOutcome::Failed { kind: f.kind, reason: f.reason },
        },
    };
    let line = serde_json::to_string(&outcome).expect("outcome serialises");
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
    0
}

/// Runs the benchmark in the runtime the spec names.
fn run_in_runtime(
    model: &Path,
    spec: &BenchSpec,
    ort_lib: Option<&Path>,
) -> Result<tract::ChildResult, tract::BenchFailure> {
    match spec.runtime {
        Runtime::Tract => tract::run_benchmark(model, spec),
        Runtime::Ort => {
            let Some(lib) = ort_lib else {
                return Err(tract::BenchFailure {
                    kind: FailureKind::Unsupported,
                    reason: NO_ORT_LIBRARY.to_string(),
                });
            };
            run_ort(model, spec, lib)
        }
    }
}

/// Why an agent without `--ort-lib` cannot run ONNX Runtime.
pub const NO_ORT_LIBRARY: &str = "this agent has no ONNX Runtime library (start it with --ort-lib \
     PATH/libonnxruntime.so.1.31.1, from the onnxruntime==1.31.1 wheel)";

#[cfg(not(target_env = "musl"))]
fn run_ort(
    model: &Path,
    spec: &BenchSpec,
    lib: &Path,
) -> Result<tract::ChildResult, tract::BenchFailure> {
    ort::run_benchmark(model, spec, lib)
}

#[cfg(target_env = "musl")]
fn run_ort(
    _model: &Path,
    _spec: &BenchSpec,
    _lib: &Path,
) -> Result<tract::ChildResult, tract::BenchFailure> {
    Err(tract::BenchFailure { kind: FailureKind::Unsupported, reason: MUSL_NO_ORT.to_string() })
}

/// Why a static musl agent is tract-only.
pub const MUSL_NO_ORT: &str = "this agent is a static musl build, which cannot load ONNX Runtime's glibc library: \
     tract only (use the glibc build for ONNX Runtime)";

/// Entry point of the `ort-probe` subcommand: loads the library and prints one JSON line,
/// `{"version": "1.31.1"}` or `{"problem": "..."}`. A library that crashes on load ends this
/// process, not the agent.
pub fn ort_probe_main(lib: &Path) -> i32 {
    #[cfg(not(target_env = "musl"))]
    let answer = match ort::probe(lib) {
        Ok(v) => serde_json::json!({ "version": v }),
        Err(p) => serde_json::json!({ "problem": p }),
    };
    #[cfg(target_env = "musl")]
    let answer = {
        let _ = lib;
        serde_json::json!({ "problem": MUSL_NO_ORT })
    };
    #[allow(clippy::print_stdout)]
    {
        println!("{answer}");
    }
    0
}

/// The runtimes this agent can measure in: tract always; ONNX Runtime when `ort_lib` loads in a
/// probe child process (`exe ort-probe`) within 60 s, otherwise with the reason it does not.
pub async fn available_runtimes(exe: &Path, ort_lib: Option<&Path>) -> Vec<RuntimeAvailability> {
    let tract = RuntimeAvailability {
        runtime: Runtime::Tract,
        version: Some(tract::RUNTIME.trim_start_matches("tract ").to_string()),
        problem: None,
    };
    let ort = match ort_lib {
        None if cfg!(target_env = "musl") => Err(MUSL_NO_ORT.to_string()),
        None => Err(NO_ORT_LIBRARY.to_string()),
        Some(lib) => probe_ort(exe, lib).await,
    };
    let ort = match ort {
        Ok(v) => RuntimeAvailability { runtime: Runtime::Ort, version: Some(v), problem: None },
        Err(p) => RuntimeAvailability { runtime: Runtime::Ort, version: None, problem: Some(p) },
    };
    vec![tract, ort]
}

async fn probe_ort(exe: &Path, lib: &Path) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("ort-probe")
        .arg("--lib")
        .arg(lib)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env("RUST_LOG", "warn");
    let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| format!("loading ONNX Runtime from {} took over 60 s", lib.display()))?
        .map_err(|e| format!("ONNX Runtime probe: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer =
        stdout.lines().rev().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    match answer {
        Some(v) if v["version"].is_string() => Ok(v["version"].as_str().unwrap_or("").to_string()),
        Some(v) => Err(v["problem"].as_str().unwrap_or("unknown problem").to_string()),
        None => Err(format!(
            "loading ONNX Runtime from {} crashed the probe ({})",
            lib.display(),
            describe_exit(&output.status)
        )),
    }
}

static GROUP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A child process started under a plan's limits.
pub struct Limited {
    /// The process (stdin taken; stdout and stderr as the caller set them up).
    pub child: tokio::process::Child,
    /// Its cgroups, if it has any; remove them when the child ends.
    pub group: Option<Group>,
    /// The plan, with every limit that could not be applied marked as such.
    pub plan: Plan,
}

/// Starts `cmd` (one of this executable's child subcommands, which accept `--wait-go`,
/// `--rlimit-as` and `--cpus`) under `plan`: cgroups named `hone-{what}-…` with the CPU quota,
/// cpuset and memory limit, or the process-level fallbacks without the controllers. The child
/// waits on stdin until it is inside its cgroups, so no work escapes the limits. Benchmarks and
/// the serving process are started here alike: what is served runs under what was measured.
pub async fn spawn_limited(
    mut cmd: tokio::process::Command,
    what: &str,
    plan: &Plan,
    cgroups: &Cgroups,
) -> std::io::Result<Limited> {
    let mut plan = plan.clone();
    let mut group: Option<Group> = None;
    if plan.status == EmulationStatus::Emulated || plan.memory_limit.is_some() {
        let name = format!(
            "hone-{what}-{}-{}",
            std::process::id(),
            GROUP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let quota = plan.quota_us.map(|q| (q, plan.period_us));
        let memory = plan.memory_limit.filter(|_| plan.memory_by_cgroup);
        match cgroups.create(&name, quota, plan.cpus, memory) {
            Ok(g) => group = Some(g),
            Err(e) => {
                let why = format!("cannot create cgroups: {e}");
                plan.not_applied(Limit::Cpu, why.clone());
                if cgroups.cpuset.is_some() && plan.cpus.is_some() {
                    plan.not_applied(Limit::Cores, why.clone());
                }
                if memory.is_some() {
                    plan.not_applied(Limit::Memory, why);
                }
            }
        }
    }
    cmd.arg("--wait-go").stdin(Stdio::piped()).kill_on_drop(true);
    if let Some(limit) = plan.memory_limit.filter(|_| !plan.memory_by_cgroup) {
        cmd.arg("--rlimit-as").arg(limit.to_string());
    }
    if let Some(n) = plan.cpus.filter(|_| cgroups.cpuset.is_none()) {
        cmd.arg("--cpus").arg(n.to_string());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            if let Some(g) = &group {
                g.remove();
            }
            return Err(e);
        }
    };
    if let Some(g) = &group {
        let added = match child.id() {
            Some(pid) => g.add(pid).map_err(|e| e.to_string()),
            None => Err(format!("the {what} process ended before it was started")),
        };
        if let Err(e) = added {
            let why = format!("cannot move the {what} process into its cgroups: {e}");
            if g.cpu_dir.is_some() {
                plan.not_applied(Limit::Cpu, why.clone());
            }
            if cgroups.cpuset.is_some() && plan.cpus.is_some() {
                plan.not_applied(Limit::Cores, why.clone());
            }
            if g.memory_dir.is_some() {
                plan.not_applied(Limit::Memory, why);
            }
        }
    }
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"go\n").await;
        // The serving process keeps reading commands: hand its stdin back.
        child.stdin = Some(stdin);
    }
    Ok(Limited { child, group, plan })
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A thermal-controller record: when a quota was applied.
#[derive(Debug, Clone, Copy)]
struct Applied {
    unix_ns: u128,
    point: crate::throttle::ThermalPoint,
}

/// Runs one benchmark of `model` in a child process of `exe` under `plan`, killing it after
/// `timeout`. The report carries the emulation record, the calibration and the readings.
///
/// ONNX Runtime jobs get `ort_lib` and, unless the spec sets them, threads = the profile's cores
/// (the host's without a profile).
pub async fn run_in_child(
    exe: &Path,
    model: &Path,
    spec: &BenchSpec,
    ort_lib: Option<&Path>,
    timeout: Duration,
    plan: &Plan,
    cgroups: &Cgroups,
) -> Result<BenchReport, (FailureKind, String)> {
    let mut spec = spec.clone();
    if spec.runtime == Runtime::Ort && spec.threads.is_none() {
        let host = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        spec.threads = Some(plan.cpus.unwrap_or(host).max(1));
    }
    let spec = &spec;
    let sustained = matches!(spec.mode, BenchMode::Sustained { .. });
    let spec_json = serde_json::to_string(spec).expect("spec serialises");
    let mut cmd = tokio::process::Command::new(exe);
    let spawned_at = unix_ns();
    cmd.arg("bench-child")
        .arg("--model")
        .arg(model)
        .arg("--spec")
        .arg(&spec_json)
        .args(
            ort_lib
                .filter(|_| spec.runtime == Runtime::Ort)
                .map(|l| {
                    [std::ffi::OsStr::new("--ort-lib").to_os_string(), l.as_os_str().to_os_string()]
                })
                .into_iter()
                .flatten(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn");
    let Limited { child, group, mut plan } =
        spawn_limited(cmd, "bench", plan, cgroups).await.map_err(|e| {
            (
                FailureKind::Internal,
                format!("cannot start benchmark process {}: {e}", exe.display()),
            )
        })?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler =
        tokio::spawn(crate::readings::sample_until(Duration::from_millis(500), stop_rx.clone()));
    let thermal = (sustained
        && plan.status == EmulationStatus::Emulated
        && plan.quota_us.is_some())
    .then(|| {
        let plan = plan.clone();
        let group = group.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let mut applied = Vec::new();
            let mut failures: Vec<String> = Vec::new();
            loop {
                if let Some(point) = plan.thermal_at(start.elapsed().as_secs_f64()) {
                    // Only quotas the kernel took are recorded as in force.
                    match group.as_ref().map(|g| g.set_quota(point.quota_us)) {
                        Some(Err(e)) => failures.push(format!(
                            "rewriting the quota to {} µs at {:.1} s: {e}",
                            point.quota_us,
                            start.elapsed().as_secs_f64()
                        )),
                        _ => applied.push(Applied { unix_ns: unix_ns(), point }),
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => break,
                }
            }
            (applied, failures)
        })
    });

    let waited = tokio::time::timeout(timeout, child.wait_with_output()).await;
    let _ = stop_tx.send(true);
    let samples = sampler.await.unwrap_or_default();
    let (applied, thermal_failures) = match thermal {
        Some(h) => h.await.unwrap_or_default(),
        None => (Vec::new(), Vec::new()),
    };
    if let Some(first) = thermal_failures.first() {
        let why = format!(
            "{} of {} quota rewrites failed, first: {first}",
            thermal_failures.len(),
            thermal_failures.len() + applied.len()
        );
        plan.not_applied(Limit::Thermal, why);
    }
    let oom = group.as_ref().is_some_and(Group::oom_killed);
    let throttled_periods = group.as_ref().and_then(Group::throttled_periods);
    if let Some(g) = &group {
        g.remove();
    }
    let output = match waited {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err((FailureKind::Internal, format!("benchmark process: {e}"))),
        Err(_) => {
            return Err((
                FailureKind::Timeout,
                format!(
                    "benchmark exceeded its {:.1} s limit and was killed",
                    timeout.as_secs_f64()
                ),
            ));
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let limit_text = || {
        plan.memory_limit
            .map(|l| format!("{:.0} MiB", l as f64 / 1048576.0))
            .unwrap_or_else(|| "?".into())
    };
    if oom || (plan.memory_limit.is_some() && stderr.contains("memory allocation of")) {
        let method = if plan.memory_by_cgroup { "cgroup memory limit" } else { "RLIMIT_AS" };
        return Err((
            FailureKind::Oom,
            format!("the model exceeded the {} memory cap ({method})", limit_text()),
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parsed = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str::<ChildOutcome>(l).ok());
    match parsed {
        Some(ChildOutcome::Ok {
            mut report,
            measure_start_unix_ns,
            first_inference_end_unix_ns,
            rlimit_error,
            affinity_error,
        }) => {
            if let Some(e) = rlimit_error {
                plan.not_applied(Limit::Memory, e);
            }
            if let Some(e) = affinity_error {
                plan.not_applied(Limit::Cores, e);
            }
            report.emulation = plan.record(sustained);
            report.emulation.throttled_periods = throttled_periods;
            if plan.status == EmulationStatus::Emulated
                && let Some(profile) = &plan.profile
                && let Some(ops) = int8_ops(model)
            {
                report.emulation.not_enforced.push(int8_caveat(profile, &ops));
            }
            report.calibration = plan.calibration.clone();
            report.readings = crate::readings::summarize(&samples);
            if matches!(spec.mode, BenchMode::Cold) {
                report.cold_start_ms =
                    Some(first_inference_end_unix_ns.saturating_sub(spawned_at) as f64 / 1e6);
            }
            for point in &mut report.timeline {
                let at = measure_start_unix_ns + (point.t_s * 1e9) as u128;
                if let Some(a) = applied.iter().rev().find(|a| a.unix_ns <= at).or(applied.first())
                {
                    point.quota = Some(a.point.quota_us as f64 / plan.period_us as f64);
                    point.clock_mhz = Some(a.point.clock_mhz);
                    point.temperature_c = Some(a.point.temperature_c);
                    point.source = Some(ReadingSource::Modelled);
                } else if let Some(s) =
                    samples.iter().rev().find(|s| (spawned_at + (s.t_s * 1e9) as u128) <= at)
                {
                    point.quota = plan.quota_us.map(|q| q as f64 / plan.period_us as f64);
                    point.clock_mhz = s.cpu_mhz;
                    point.temperature_c = s.temperature_c;
                    point.source = (s.cpu_mhz.is_some() || s.temperature_c.is_some())
                        .then_some(ReadingSource::Sensor);
                }
            }
            Ok(report)
        }
        Some(ChildOutcome::Failed { kind: FailureKind::Oom, reason }) => {
            let method = if plan.memory_by_cgroup { "cgroup memory limit" } else { "RLIMIT_AS" };
            Err((
                FailureKind::Oom,
                format!("the model exceeded the {} memory cap ({method}): {reason}", limit_text()),
            ))
        }
        Some(ChildOutcome::Failed { kind, reason }) => Err((kind, reason)),
        None => {
            let tail: String =
                stderr.chars().rev().take(600).collect::<Vec<_>>().into_iter().rev().collect();
            Err((
                FailureKind::Crashed,
                format!("benchmark process {}: {}", describe_exit(&output.status), tail.trim()),
            ))
        }
    }
}

/// The int8 operators of the model at `path` (`None`: none, or it cannot be read).
pub fn int8_ops(path: &Path) -> Option<Vec<String>> {
    const INT8: &[&str] = &[
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeLinear",
        "QuantizeLinear",
        "DequantizeLinear",
    ];
    let graph = hone_graph::Graph::load(path).ok()?;
    let mut ops: Vec<String> = graph
        .node_protos()
        .iter()
        .map(|n| n.op_type.clone())
        .filter(|op| INT8.contains(&op.as_str()))
        .collect();
    ops.sort();
    ops.dedup();
    (!ops.is_empty()).then_some(ops)
}

/// Why an int8 figure under an emulated profile is not the board's: the quota scales this
/// host's speed by the f32 peaks, and int8 speed ratios between CPUs differ (a Cortex-A72 has
/// no int8 dot product, an A76 or a VNNI x86 has).
pub fn int8_caveat(profile: &hone_firmware_profiles::DeviceProfile, ops: &[String]) -> String {
    use hone_firmware_profiles::IsaFeature;
    let dot = profile
        .isa_features
        .iter()
        .any(|f| matches!(f, IsaFeature::DotProd | IsaFeature::Avx512Vnni));
    format!(
        "int8 speed: the quota scales this {} host by f32 peaks, and its int8 kernels are not the \
         profile's ({} {} int8 dot-product instructions); the int8 figure ({}) is not \
         representative of {}",
        std::env::consts::ARCH,
        profile.name,
        if dot { "has" } else { "has no" },
        ops.join(", "),
        profile.name
    )
}

fn describe_exit(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "ended abnormally".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, ops: &[&str]) -> std::path::PathBuf {
        use prost::Message as _;
        let nodes = ops
            .iter()
            .enumerate()
            .map(|(i, op)| tract_onnx::pb::NodeProto {
                name: format!("n{i}"),
                op_type: (*op).into(),
                ..Default::default()
            })
            .collect();
        let proto = tract_onnx::pb::ModelProto {
            ir_version: 8,
            graph: Some(tract_onnx::pb::GraphProto { node: nodes, ..Default::default() }),
            ..Default::default()
        };
        let path = dir.join(format!("{}.onnx", ops.join("-")));
        std::fs::write(&path, proto.encode_to_vec()).unwrap();
        path
    }

    /// An int8 model measured under an emulated profile carries why its figure is not the
    /// board's, naming whether the profile has int8 dot products; an f32 model does not.
    #[test]
    fn int8_models_on_emulated_profiles_are_labelled() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(int8_ops(&write(dir.path(), &["MatMul", "Relu"])), None);
        let ops = int8_ops(&write(dir.path(), &["DynamicQuantizeLinear", "MatMulInteger", "Mul"]))
            .unwrap();
        assert_eq!(ops, ["DynamicQuantizeLinear", "MatMulInteger"]);
        let rpi4 = hone_firmware_profiles::find("rpi4").unwrap();
        let rpi5 = hone_firmware_profiles::find("rpi5").unwrap();
        let a = int8_caveat(rpi4, &ops);
        assert!(a.contains("rpi4 has no int8 dot-product") && a.contains("not representative"));
        assert!(int8_caveat(rpi5, &ops).contains("rpi5 has int8 dot-product"));
        assert_eq!(int8_ops(&dir.path().join("missing.onnx")), None);
    }
}
