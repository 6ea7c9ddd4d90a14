//! Host calibration: how fast this host is, measured once per host and shared by every agent
//! on it, and how the CPU quota must be corrected to slow it by a given ratio.
//!
//! Two microbenchmarks, single-threaded like the benchmarks themselves:
//! - f32 matrix multiply in tract (a 256×256×256 MatMul graph built in code): GFLOP/s per core,
//!   the number device profiles are scaled against; three rounds, the median of their best
//!   runs, and the spread between rounds;
//! - memory copy of 64 MiB buffers: GB/s (read + write, STREAM "copy" convention).
//!
//! **Once per host, never concurrently.** The cache (`calibration.json`) and a lock file
//! (`calibration.lock`, `flock`) live in one folder per host ([`default_dir`]: `/var/lib/hone`
//! for root, else `$XDG_CACHE_HOME/hone`; `--calibration-dir` or `HONE_CALIBRATION_DIR`
//! override it). An agent that finds no fresh cache takes the lock, looks again (another agent
//! may just have measured), and only then measures, in a child process
//! (`edge-agent calibrate --json --no-cache`). Agents started together therefore wait for one
//! measurement instead of measuring each other.
//!
//! **Contention.** A measurement is quiet when the spread between its rounds is at most
//! [`Policy::max_spread`], the 1-minute load average per core before it at most
//! [`Policy::max_load_per_core`], and the CPU time stolen by a hypervisor during it
//! (`/proc/stat`) at most [`Policy::max_steal`]. A busy measurement is repeated (up to
//! [`Policy::attempts`] times); if the host stays busy the quietest one is kept, flagged
//! `contended`, and re-measured at the next use after [`Policy::contended_max_age_ms`].
//! A cache older than [`Policy::max_age_ms`], or from another host identity (CPU model, cores,
//! host name), is measured again.
//!
//! **Closed loop.** For each performance ratio an emulation uses, the agent runs a small fixed
//! matmul workload ([`probe_main`]) once free and then inside a cgroup with the quota, measures
//! the slowdown it achieves, and corrects the quota until the slowdown is within
//! [`Policy::tolerance`] of `1 / ratio` ([`correct_quota`], at most [`Policy::iterations`]
//! measurements). The correction is cached with the calibration; results carry it and its
//! residual error.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use hone_common::bench::{HostCalibration, QuotaCorrection};
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::throttle::cgroup::Cgroups;

const N: usize = 256;

/// When a calibration is good enough, and how hard to try.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Age after which a calibration is measured again, ms.
    pub max_age_ms: u64,
    /// Age after which a `contended` calibration is measured again, ms.
    pub contended_max_age_ms: u64,
    /// Measurements before giving up on a quiet one.
    pub attempts: u32,
    /// Largest quiet spread between rounds, relative.
    pub max_spread: f64,
    /// Largest quiet 1-minute load average per core.
    pub max_load_per_core: f64,
    /// Largest quiet share of stolen CPU time.
    pub max_steal: f64,
    /// Pause between attempts.
    pub retry_pause: Duration,
    /// Quota-correction measurements per ratio, at most.
    pub iterations: u32,
    /// Relative slowdown error at which the correction stops.
    pub tolerance: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_age_ms: 24 * 3600 * 1000,
            contended_max_age_ms: 10 * 60 * 1000,
            attempts: 3,
            max_spread: 0.05,
            max_load_per_core: 0.75,
            max_steal: 0.05,
            retry_pause: Duration::from_secs(3),
            iterations: 4,
            tolerance: 0.03,
        }
    }
}

impl Policy {
    /// Why a measurement is not quiet, if it is not.
    pub fn contention(&self, cal: &HostCalibration) -> Option<String> {
        let mut why = Vec::new();
        if cal.spread > self.max_spread {
            why.push(format!(
                "spread between rounds {:.1} % > {:.1} %",
                cal.spread * 100.0,
                self.max_spread * 100.0
            ));
        }
        if cal.load_per_core > self.max_load_per_core {
            why.push(format!(
                "load average {:.2} per core > {:.2}",
                cal.load_per_core, self.max_load_per_core
            ));
        }
        if let Some(steal) = cal.steal_fraction.filter(|s| *s > self.max_steal) {
            why.push(format!(
                "steal time {:.1} % > {:.1} %",
                steal * 100.0,
                self.max_steal * 100.0
            ));
        }
        (!why.is_empty()).then(|| why.join(", "))
    }

    /// Whether a cached calibration can be used as it is, `now_ms` being the time now.
    pub fn is_fresh(&self, cal: &HostCalibration, host_id: &str, now_ms: u64) -> bool {
        let max_age = if cal.contended { self.contended_max_age_ms } else { self.max_age_ms };
        cal.host_id == host_id
            && cal.gflops_per_core > 0.0
            && cal.measured_at_ms <= now_ms
            && now_ms - cal.measured_at_ms <= max_age
    }
}

/// The host-wide calibration folder: `/var/lib/hone` when running as root, else
/// `$XDG_CACHE_HOME/hone` (or `~/.cache/hone`).
pub fn default_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/hone");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("hone")
}

/// CPU model, logical cores and host name.
pub fn host_id() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| {
            l.starts_with("model name") || l.starts_with("Model") || l.starts_with("CPU part")
        })
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("{model} | {cores} cpus | {}", host.trim())
}

fn matmul_model() -> Vec<u8> {
    let square = |name: &str| {
        let d = hone_graph::Dim::Value(N as i64);
        hone_graph::ValueInfo::tensor(name, hone_graph::DataType::F32, vec![d.clone(), d])
            .to_proto()
    };
    let n = N as i64;
    let w: Vec<f32> = (0..N * N).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            name: "calibration".into(),
            node: vec![pb::NodeProto {
                name: "mm".into(),
                op_type: "MatMul".into(),
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            initializer: vec![pb::TensorProto {
                name: "w".into(),
                dims: vec![n, n],
                data_type: 1,
                float_data: w,
                ..Default::default()
            }],
            input: vec![square("x")],
            output: vec![square("y")],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn runnable() -> anyhow::Result<std::sync::Arc<TypedRunnableModel>> {
    let proto = pb::ModelProto::decode(matmul_model().as_slice())?;
    tract_onnx::onnx().model_for_proto_model(&proto)?.into_optimized()?.into_runnable()
}

/// `(steal, total)` jiffies of all CPUs from `/proc/stat`, where readable.
fn cpu_times() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    Some((v.get(7).copied().unwrap_or(0), total))
}

/// 1-minute load average per logical core.
pub fn load_per_core() -> f64 {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .unwrap_or(0.0);
    load / std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0)
}

/// (max − min) / median of a series.
pub fn spread(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) if v[v.len() / 2] > 0.0 => (hi - lo) / v[v.len() / 2],
        _ => 0.0,
    }
}

/// Runs both microbenchmarks in this process (a few seconds).
pub fn measure() -> anyhow::Result<HostCalibration> {
    let load = load_per_core();
    let before = cpu_times();
    let model = runnable()?;
    let x = Tensor::from_shape(&[N, N], &vec![0.5f32; N * N])?.into_tvalue();
    let flops = 2.0 * (N * N * N) as f64;
    for _ in 0..5 {
        model.run(tvec!(x.clone()))?;
    }
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            model.run(tvec!(x.clone()))?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        rounds.push(flops / best / 1e9);
    }
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    let gflops = sorted[sorted.len() / 2];

    let size = 64 << 20;
    let src = vec![1u8; size];
    let mut dst = vec![0u8; size];
    let mut best_copy = f64::MAX;
    for i in 0..6 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        let dt = t.elapsed().as_secs_f64();
        if i > 0 {
            best_copy = best_copy.min(dt);
        }
    }
    std::hint::black_box(&dst);
    let bandwidth = 2.0 * size as f64 / best_copy / 1e9;
    let steal_fraction = before.zip(cpu_times()).and_then(|((s0, t0), (s1, t1))| {
        (t1 > t0).then(|| s1.saturating_sub(s0) as f64 / (t1 - t0) as f64)
    });
    Ok(HostCalibration {
        host_id: host_id(),
        gflops_per_core: gflops,
        memory_bandwidth_gbs: bandwidth,
        measured_at_ms: crate::host::now_ms(),
        spread: spread(&rounds),
        load_per_core: load,
        steal_fraction,
        attempts: 1,
        contended: false,
        quota_corrections: Vec::new(),
    })
}

/// The host-wide lock, held while measuring or updating the cache. Blocks until it is free.
struct HostLock(#[allow(dead_code)] std::fs::File);

async fn lock(dir: &Path) -> anyhow::Result<HostLock> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the calibration folder {}", dir.display()))?;
    let path = dir.join("calibration.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if file.try_lock().is_err() {
        info!(lock = %path.display(), "another process is calibrating this host: waiting for it");
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await?
            .with_context(|| format!("locking {}", path.display()))?;
        return Ok(HostLock(file));
    }
    Ok(HostLock(file))
}

fn read_cache(dir: &Path) -> Option<HostCalibration> {
    let text = std::fs::read_to_string(dir.join("calibration.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_cache(dir: &Path, cal: &HostCalibration) -> anyhow::Result<()> {
    crate::outbox::write_atomic(
        &dir.join("calibration.json"),
        serde_json::to_string_pretty(cal)?.as_bytes(),
    )
    .with_context(|| format!("writing {}", dir.join("calibration.json").display()))
}

async fn measure_in_child(exe: &Path) -> anyhow::Result<HostCalibration> {
    let out = tokio::process::Command::new(exe)
        .args(["calibrate", "--json", "--no-cache"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running the calibration process")?;
    if !out.status.success() {
        anyhow::bail!("calibration failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("calibration output")
}

/// The cached calibration for this host, or a new one measured in a child process of `exe`
/// under the host-wide lock in `dir` (see the module documentation).
pub async fn load_or_measure(
    dir: &Path,
    exe: &Path,
    policy: &Policy,
) -> anyhow::Result<HostCalibration> {
    let id = host_id();
    if let Some(cal) = read_cache(dir).filter(|c| policy.is_fresh(c, &id, crate::host::now_ms())) {
        return Ok(cal);
    }
    let _lock = lock(dir).await?;
    if let Some(cal) = read_cache(dir).filter(|c| policy.is_fresh(c, &id, crate::host::now_ms())) {
        return Ok(cal);
    }
    let mut best: Option<HostCalibration> = None;
    for attempt in 1..=policy.attempts.max(1) {
        let cal = measure_in_child(exe).await?;
        let busy = policy.contention(&cal);
        let quieter = best.as_ref().is_none_or(|b| cal.spread < b.spread);
        if quieter {
            best = Some(HostCalibration { attempts: attempt, ..cal });
        }
        match busy {
            None => {
                best = best.map(|b| HostCalibration { contended: false, ..b });
                break;
            }
            Some(why) => {
                warn!(attempt, of = policy.attempts, %why, "the host is busy: calibrating again");
                if let Some(b) = best.as_mut() {
                    b.contended = true;
                    b.attempts = attempt;
                }
                if attempt < policy.attempts {
                    tokio::time::sleep(policy.retry_pause).await;
                }
            }
        }
    }
    let cal = best.context("no calibration measured")?;
    if cal.contended {
        warn!(
            gflops = cal.gflops_per_core,
            spread = cal.spread,
            load_per_core = cal.load_per_core,
            "the host stayed busy through every calibration: using the quietest, flagged `contended`"
        );
    }
    write_cache(dir, &cal)?;
    Ok(cal)
}

/// The ratio a correction is cached under.
pub fn ratio_key(ratio: f64) -> f64 {
    (ratio * 100.0).round() / 100.0
}

/// Corrects the quota fraction for `ratio` until the measured slowdown is within
/// `policy.tolerance` of `1 / ratio`. `measure(fraction)` returns the slowdown a quota of
/// `fraction` of one core achieves (throttled time over free time). Each step scales the
/// factor by the measured slowdown over the target (the slowdown is about inversely
/// proportional to the quota). Returns the measured factor with the smallest error: never one
/// that was not measured.
pub fn correct_quota(
    ratio: f64,
    policy: &Policy,
    mut measure: impl FnMut(f64) -> anyhow::Result<f64>,
) -> anyhow::Result<QuotaCorrection> {
    anyhow::ensure!(ratio > 0.0 && ratio < 1.0, "a quota correction needs a ratio in (0, 1)");
    let target = 1.0 / ratio;
    let mut factor = 1.0f64;
    let mut best: Option<QuotaCorrection> = None;
    for i in 1..=policy.iterations.max(1) {
        let slowdown = measure((ratio * factor).min(1.0))?;
        anyhow::ensure!(
            slowdown.is_finite() && slowdown > 0.0,
            "the quota probe measured a slowdown of {slowdown}"
        );
        let residual = slowdown / target - 1.0;
        if best.as_ref().is_none_or(|b| residual.abs() < b.residual.abs()) {
            best =
                Some(QuotaCorrection { ratio: ratio_key(ratio), factor, residual, iterations: i });
        }
        if let Some(b) = best.as_mut() {
            b.iterations = i;
        }
        if residual.abs() <= policy.tolerance {
            break;
        }
        factor = (factor * slowdown / target).clamp(0.5, 2.0);
        if ratio * factor >= 1.0 {
            factor = 1.0 / ratio;
        }
    }
    best.context("no quota measurement")
}

/// Entry point of the hidden `calibrate-probe` subcommand: waits for a go line, runs the
/// matmul `iterations` times and prints the seconds it took as JSON.
pub fn probe_main(iterations: u32) -> i32 {
    let run = || -> anyhow::Result<f64> {
        let model = runnable()?;
        let x = Tensor::from_shape(&[N, N], &vec![0.5f32; N * N])?.into_tvalue();
        model.run(tvec!(x.clone()))?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let t = Instant::now();
        for _ in 0..iterations {
            model.run(tvec!(x.clone()))?;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    match run() {
        Ok(s) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{}", serde_json::json!({ "seconds": s }));
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Iterations of the probe workload: about a quarter of a second on this host, free.
fn probe_iterations(cal: &HostCalibration) -> u32 {
    let per_run_s = 2.0 * (N * N * N) as f64 / (cal.gflops_per_core.max(0.1) * 1e9);
    ((0.25 / per_run_s).round() as u32).clamp(20, 5_000)
}

/// Runs the probe once, in a cgroup with `quota` (µs per `period_us`) or free, on one core.
async fn probe_once(
    exe: &Path,
    cgroups: &Cgroups,
    iterations: u32,
    quota: Option<(u64, u64)>,
) -> anyhow::Result<f64> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "hone-calibrate-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let group = cgroups.create(&name, quota, Some(1), None).context("creating the probe cgroup")?;
    let result = async {
        let mut child = tokio::process::Command::new(exe)
            .args(["calibrate-probe", "--iterations", &iterations.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the quota probe")?;
        let pid = child.id().context("the quota probe ended early")?;
        group.add(pid).context("moving the quota probe into its cgroup")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"go\n").await?;
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .context("the quota probe took over 120 s")??;
        anyhow::ensure!(
            out.status.success(),
            "quota probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v["seconds"].as_f64().context("quota probe output lacks `seconds`")
    }
    .await;
    group.remove();
    result
}

/// The quota correction for `ratio` on this host: cached with the calibration in `dir`, or
/// measured under the host lock (a few seconds) and cached.
pub async fn correction_for(
    dir: &Path,
    exe: &Path,
    cgroups: &Cgroups,
    ratio: f64,
    period_us: u64,
    policy: &Policy,
) -> anyhow::Result<QuotaCorrection> {
    let key = ratio_key(ratio);
    let find = |cal: &HostCalibration| {
        cal.quota_corrections.iter().find(|c| (c.ratio - key).abs() < 1e-9).cloned()
    };
    let id = host_id();
    let fresh = |c: &HostCalibration| policy.is_fresh(c, &id, crate::host::now_ms());
    if let Some(c) = read_cache(dir).filter(fresh).as_ref().and_then(find) {
        return Ok(c);
    }
    anyhow::ensure!(cgroups.cpu.is_some(), "no cgroup cpu controller to measure the quota with");
    let _lock = lock(dir).await?;
    let mut cal = read_cache(dir).filter(fresh).context("no host calibration to correct")?;
    if let Some(c) = find(&cal) {
        return Ok(c);
    }
    let iterations = probe_iterations(&cal);
    let mut free = f64::MAX;
    for _ in 0..2 {
        free = free.min(probe_once(exe, cgroups, iterations, None).await?);
    }
    // The measurement function is async; drive it step by step with the pure logic.
    let mut measured: Vec<(f64, f64)> = Vec::new();
    loop {
        let mut next = None;
        let outcome = correct_quota(ratio, policy, |fraction| {
            if let Some((_, s)) = measured.iter().find(|(f, _)| (f - fraction).abs() < 1e-12) {
                return Ok(*s);
            }
            next = Some(fraction);
            anyhow::bail!("measurement pending")
        });
        match (outcome, next) {
            (Ok(c), _) => {
                info!(
                    ratio = key,
                    factor = c.factor,
                    residual = c.residual,
                    iterations = c.iterations,
                    "quota correction measured"
                );
                cal.quota_corrections.retain(|x| (x.ratio - key).abs() >= 1e-9);
                cal.quota_corrections.push(c.clone());
                write_cache(dir, &cal)?;
                return Ok(c);
            }
            (Err(_), Some(fraction)) => {
                let quota = ((fraction * period_us as f64).round() as u64)
                    .clamp(crate::throttle::MIN_QUOTA_US, period_us);
                let t = probe_once(exe, cgroups, iterations, Some((quota, period_us))).await?;
                measured.push((fraction, t / free));
            }
            (Err(e), None) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Policy {
        Policy { retry_pause: Duration::ZERO, ..Policy::default() }
    }

    #[test]
    fn the_correction_converges_on_a_host_where_the_quota_overshoots() {
        // An AVX2 EPYC slowed by 2.42-2.52x at half speed: the slowdown is the quota's,
        // plus 22 % for refilling caches after every throttled period.
        let mut asked = Vec::new();
        let c = correct_quota(0.5, &quiet(), |f| {
            asked.push(f);
            Ok(1.22 / f)
        })
        .unwrap();
        assert!(c.residual.abs() <= 0.03, "{c:?}");
        assert!((c.factor - 1.22).abs() < 0.04, "{c:?}");
        assert!(c.iterations <= 4 && c.iterations as usize == asked.len(), "{c:?} {asked:?}");
        assert!((asked[0] - 0.5).abs() < 1e-12, "the first measurement is open-loop");
        assert_eq!(c.ratio, 0.5);
    }

    #[test]
    fn a_host_that_already_meets_the_target_needs_one_measurement() {
        let c = correct_quota(0.25, &quiet(), |f| Ok(1.0 / f)).unwrap();
        assert_eq!((c.factor, c.iterations), (1.0, 1));
        assert!(c.residual.abs() < 1e-12);
    }

    #[test]
    fn an_unreachable_target_stops_after_the_bound_with_a_measured_factor() {
        let mut asked = Vec::new();
        // Noise: the slowdown ignores the quota altogether.
        let c = correct_quota(0.5, &quiet(), |f| {
            asked.push(f);
            Ok(3.0 + asked.len() as f64 * 0.1)
        })
        .unwrap();
        assert_eq!(asked.len(), 4, "bounded");
        assert_eq!(c.iterations, 4);
        assert!(
            asked.iter().any(|f| (f - 0.5 * c.factor).abs() < 1e-12),
            "the factor returned was measured: {c:?} {asked:?}"
        );
        assert!((c.residual - (3.1 / 2.0 - 1.0)).abs() < 1e-12, "the smallest error seen: {c:?}");
        assert!(correct_quota(1.5, &quiet(), |_| Ok(1.0)).is_err(), "no correction for > 1");
        assert!(correct_quota(0.5, &quiet(), |_| Ok(f64::NAN)).is_err());
    }

    fn cal(spread: f64, load: f64, steal: Option<f64>) -> HostCalibration {
        HostCalibration {
            host_id: host_id(),
            gflops_per_core: 80.0,
            memory_bandwidth_gbs: 10.0,
            measured_at_ms: 1_000_000,
            spread,
            load_per_core: load,
            steal_fraction: steal,
            attempts: 1,
            contended: false,
            quota_corrections: vec![],
        }
    }

    #[test]
    fn contention_is_spread_load_or_steal() {
        let p = Policy::default();
        assert_eq!(p.contention(&cal(0.01, 0.2, Some(0.0))), None);
        assert!(p.contention(&cal(0.2, 0.2, None)).unwrap().contains("spread"));
        assert!(p.contention(&cal(0.01, 1.5, None)).unwrap().contains("load"));
        assert!(p.contention(&cal(0.01, 0.2, Some(0.2))).unwrap().contains("steal"));
        assert!((spread(&[45.2, 65.7, 60.0]) - 20.5 / 60.0).abs() < 1e-12);
    }

    #[test]
    fn a_cache_is_fresh_only_for_this_host_and_its_age() {
        let p = Policy::default();
        let c = cal(0.01, 0.2, None);
        let id = host_id();
        assert!(p.is_fresh(&c, &id, c.measured_at_ms + 1000));
        assert!(!p.is_fresh(&c, "another host", c.measured_at_ms + 1000));
        assert!(!p.is_fresh(&c, &id, c.measured_at_ms + p.max_age_ms + 1));
        let busy = HostCalibration { contended: true, ..c };
        assert!(!p.is_fresh(&busy, &id, busy.measured_at_ms + p.contended_max_age_ms + 1));
    }

    /// A stand-in for `edge-agent calibrate --json --no-cache` that counts its runs and takes a
    /// while, printing a calibration with the given spread.
    fn fake_exe(dir: &Path, spread: f64) -> PathBuf {
        let mut c = cal(spread, 0.0, None);
        c.measured_at_ms = crate::host::now_ms();
        let json = serde_json::to_string(&c).unwrap();
        let path = dir.join("fake-agent.sh");
        let count = dir.join("runs");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho run >> '{}'\nsleep 0.5\ncat <<'JSON'\n{json}\nJSON\n",
                count.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn runs(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("runs")).map(|t| t.lines().count()).unwrap_or(0)
    }

    #[tokio::test]
    async fn agents_starting_together_measure_the_host_once() {
        let dir = tempfile::tempdir().unwrap();
        let exe = fake_exe(dir.path(), 0.01);
        let cache = dir.path().join("cache");
        let p = quiet();
        let all = futures_join((0..3).map(|_| {
            let (cache, exe, p) = (cache.clone(), exe.clone(), p.clone());
            tokio::spawn(async move { load_or_measure(&cache, &exe, &p).await.unwrap() })
        }))
        .await;
        assert_eq!(runs(dir.path()), 1, "one measurement for three agents");
        assert!(all.windows(2).all(|w| w[0] == w[1]), "all three use the same figure");
        assert!(!all[0].contended);
        assert!(cache.join("calibration.json").is_file());
    }

    async fn futures_join(
        tasks: impl Iterator<Item = tokio::task::JoinHandle<HostCalibration>>,
    ) -> Vec<HostCalibration> {
        let mut out = Vec::new();
        for t in tasks.collect::<Vec<_>>() {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_busy_host_is_measured_again_then_flagged_contended() {
        let dir = tempfile::tempdir().unwrap();
        let exe = fake_exe(dir.path(), 0.3);
        let cache = dir.path().join("cache");
        let c = load_or_measure(&cache, &exe, &quiet()).await.unwrap();
        assert_eq!(runs(dir.path()), 3, "every attempt used");
        assert!(c.contended && c.attempts == 3, "{c:?}");
        // Within its shorter life the flagged figure is reused, not measured again.
        load_or_measure(&cache, &exe, &quiet()).await.unwrap();
        assert_eq!(runs(dir.path()), 3);
    }
}
