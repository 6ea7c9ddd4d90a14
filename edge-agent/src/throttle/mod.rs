//! Device-profile emulation: turning a profile and a host calibration into limits on the
//! benchmark process, and the thermal model that moves the CPU quota during sustained runs.
//!
//! - **CPU speed**: `ratio = (profile fp32 peak / profile cores) / host GFLOP/s per core`
//!   (tract's single-thread matmul, measured by [`crate::calibrate`]). The benchmark runs one
//!   tract thread, so its CFS quota is `ratio × period` per period. The period is short
//!   ([`PERIOD_US`]) so that even a single inference is slowed evenly, not in bursts.
//! - **Cores**: a cpuset of `min(profile cores, host cores)`.
//! - **Memory**: the profile's available memory as a cgroup hard limit; without the memory
//!   controller, `RLIMIT_AS` in the child instead. Exceeding it ends the job as `oom`.
//! - **Thermal**: during `sustained` runs the SoC temperature follows a first-order model,
//!   `T(t) = T∞ − (T∞ − ambient)·e^(−t/τ)`, with `T∞ = critical + 5 °C` (an uncooled board
//!   under full load heats past its throttle band and the governor holds it there); the clock is
//!   the profile's step for `T`, and the quota scales with `clock / nominal`.
//!
//! - **Closed loop**: the open-loop quota does not slow a workload by exactly `1 / ratio` on
//!   every host (CFS accounting, cache refills after each throttled period). At calibration the
//!   agent measures the slowdown a quota achieves and corrects it ([`crate::calibrate`]); the
//!   correction and its residual error travel with every result.
//!
//! Without cgroup rights nothing is throttled: the agent warns once and every result says
//! `unthrottled` with the reason. A profile faster than the host cannot be emulated either: it
//! is `unthrottled` too, with the ratio. A limit that fails to apply (a cgroup write, the
//! child's `setrlimit` or `sched_setaffinity`, a thermal quota rewrite) is listed in the
//! record's `not_enforced` and its field is cleared, so a result never claims a limit that was
//! not applied. On the real device (`--native`) nothing is emulated; the
//! agent reads temperatures and clocks instead ([`crate::readings`]).

pub mod cgroup;

use hone_common::bench::{Emulation, EmulationStatus, HostCalibration, QuotaCorrection};
use hone_firmware_profiles::DeviceProfile;

/// Preferred CFS period, µs: short, so quotas act within one inference. It grows only when the
/// quota would otherwise fall under the kernel's 1 ms minimum.
pub const PERIOD_US: u64 = 5_000;

/// Smallest CFS quota the kernel accepts, µs.
pub const MIN_QUOTA_US: u64 = 1_000;

/// Extra degrees above `critical_c` that an uncooled board would reach without throttling.
const LOAD_OVERSHOOT_C: f64 = 5.0;

/// What to apply to each benchmark process.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The profile, if any.
    pub profile: Option<DeviceProfile>,
    /// Emulated, unthrottled (with reason), native or none.
    pub status: EmulationStatus,
    /// Profile speed per core relative to the host.
    pub ratio: Option<f64>,
    /// Base CFS quota, µs per [`Plan::period_us`] (none when the profile is not slower than the
    /// host).
    pub quota_us: Option<u64>,
    /// CFS period, µs.
    pub period_us: u64,
    /// Cores allowed.
    pub cpus: Option<u32>,
    /// Memory cap, bytes.
    pub memory_limit: Option<u64>,
    /// Whether the cap is a cgroup limit (else `RLIMIT_AS` in the child).
    pub memory_by_cgroup: bool,
    /// Thermal model speed-up for sustained runs (1 = real time).
    pub thermal_time_scale: f64,
    /// Calibration used.
    pub calibration: Option<HostCalibration>,
    /// Hierarchy of the cgroup limits.
    pub cgroup_version: cgroup::Version,
    /// Closed-loop correction applied to the quota, if measured.
    pub correction: Option<QuotaCorrection>,
    /// Limits asked for but not applied, with why.
    pub not_enforced: Vec<String>,
}

/// Inputs of [`plan`].
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Profile to emulate.
    pub profile: Option<&'a DeviceProfile>,
    /// Host speed.
    pub calibration: Option<&'a HostCalibration>,
    /// Cgroup controllers available.
    pub cgroups: &'a cgroup::Cgroups,
    /// The agent runs on the profiled device itself.
    pub native: bool,
    /// Host cores.
    pub host_cores: u32,
    /// Memory cap override, bytes (tests, `--memory-limit-mib`).
    pub memory_override: Option<u64>,
    /// Thermal model speed-up.
    pub thermal_time_scale: f64,
}

/// Decides the limits for a profile on this host.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut plan = Plan {
        profile: input.profile.cloned(),
        status: EmulationStatus::None,
        ratio: None,
        quota_us: None,
        period_us: PERIOD_US,
        cpus: None,
        memory_limit: None,
        memory_by_cgroup: false,
        thermal_time_scale: input.thermal_time_scale,
        calibration: input.calibration.cloned(),
        cgroup_version: input.cgroups.version,
        correction: None,
        not_enforced: Vec::new(),
    };
    let Some(profile) = input.profile else {
        plan.memory_limit = input.memory_override;
        plan.memory_by_cgroup = input.memory_override.is_some() && input.cgroups.memory.is_some();
        return plan;
    };
    if input.native {
        plan.status = EmulationStatus::Native;
        return plan;
    }
    let Some(cal) = input.calibration else {
        plan.status = EmulationStatus::Unthrottled { reason: "no host calibration".into() };
        return plan;
    };
    // The memory cap does not need cgroups: RLIMIT_AS in the child is the fallback.
    plan.memory_limit = Some(input.memory_override.unwrap_or(profile.memory_available_bytes));
    plan.memory_by_cgroup = input.cgroups.memory.is_some();
    if input.cgroups.cpu.is_none() {
        let reason = if input.cgroups.problems.is_empty() {
            "no cgroup cpu controller".to_string()
        } else {
            input.cgroups.problems.join("; ")
        };
        plan.status = EmulationStatus::Unthrottled { reason };
        return plan;
    }
    let per_core = profile.fp32_peak_gflops / f64::from(profile.cores.max(1));
    let ratio = per_core / cal.gflops_per_core.max(1e-9);
    plan.ratio = Some(ratio);
    plan.cpus = Some(profile.cores.min(input.host_cores).max(1));
    if ratio >= 1.0 {
        // Nothing slows the host down to the profile: say so instead of `emulated`.
        let reason = format!(
            "not enforced: the profile is {ratio:.2}x this host's per-core speed \
             ({per_core:.1} against {:.1} GFLOP/s); a faster device cannot be emulated",
            cal.gflops_per_core
        );
        plan.not_enforced.push(format!("cpu speed: {reason}"));
        plan.status = EmulationStatus::Unthrottled { reason };
        return plan;
    }
    // The slowest quota the thermal model will ask for must still be >= MIN_QUOTA_US.
    let throttle =
        f64::from(profile.clock.throttled_mhz) / f64::from(profile.clock.nominal_mhz.max(1));
    let slowest = (ratio * throttle).max(1e-3);
    let period = (PERIOD_US as f64).max((MIN_QUOTA_US as f64 / slowest).ceil()) as u64;
    plan.period_us = period;
    plan.quota_us = Some(quota_for(ratio, period));
    plan.status = EmulationStatus::Emulated;
    plan
}

fn quota_for(fraction: f64, period_us: u64) -> u64 {
    ((fraction * period_us as f64).round() as u64).clamp(MIN_QUOTA_US, period_us)
}

impl Plan {
    /// Scales the quota by a measured closed-loop correction (see [`crate::calibrate`]).
    pub fn apply_correction(&mut self, correction: QuotaCorrection) {
        if let (Some(ratio), Some(_)) = (self.ratio, self.quota_us) {
            self.quota_us = Some(quota_for(ratio * correction.factor, self.period_us));
            self.correction = Some(correction);
        }
    }

    /// Records that a limit was not applied and clears what the record would otherwise claim.
    pub fn not_applied(&mut self, limit: Limit, why: String) {
        match limit {
            Limit::Cpu => {
                self.quota_us = None;
                self.correction = None;
                if self.status == EmulationStatus::Emulated {
                    self.status = EmulationStatus::Unthrottled { reason: why.clone() };
                }
            }
            Limit::Cores => self.cpus = None,
            Limit::Memory => self.memory_limit = None,
            Limit::Thermal => self.thermal_time_scale = 0.0,
        }
        self.not_enforced.push(format!("{}: {why}", limit.name()));
    }

    /// The record stored with every result.
    pub fn record(&self, sustained: bool) -> Emulation {
        let emulated = self.status == EmulationStatus::Emulated;
        let cal = self.calibration.as_ref().filter(|_| self.profile.is_some());
        let correction = self.correction.as_ref().filter(|_| self.quota_us.is_some());
        Emulation {
            profile: self.profile.as_ref().map(|p| p.name.clone()),
            status: self.status.clone(),
            performance_ratio: self.ratio,
            cpu_quota_us: self.quota_us,
            cpu_period_us: self.quota_us.map(|_| self.period_us),
            cpus: self.cpus,
            memory_limit_bytes: self.memory_limit,
            memory_method: self.memory_limit.map(|_| {
                if self.memory_by_cgroup {
                    self.cgroup_version.label().to_string()
                } else {
                    "rlimit-as".to_string()
                }
            }),
            thermal_time_scale: (emulated && sustained && self.thermal_time_scale > 0.0)
                .then_some(self.thermal_time_scale),
            not_enforced: self.not_enforced.clone(),
            calibration_age_s: cal
                .map(|c| crate::host::now_ms().saturating_sub(c.measured_at_ms) / 1000),
            calibration_spread: cal.map(|c| c.spread),
            calibration_load_per_core: cal.map(|c| c.load_per_core),
            quota_correction: correction.map(|c| c.factor),
            slowdown_residual: correction.map(|c| c.residual),
            throttled_periods: None,
        }
    }

    /// Temperature, clock and quota of the thermal model `elapsed_s` into a sustained run.
    pub fn thermal_at(&self, elapsed_s: f64) -> Option<ThermalPoint> {
        let profile = self.profile.as_ref()?;
        if self.thermal_time_scale <= 0.0 {
            return None;
        }
        let base = self.quota_us? as f64;
        let t = profile.thermal.clone();
        let model_s = elapsed_s * self.thermal_time_scale;
        let t_inf = t.critical_c + LOAD_OVERSHOOT_C;
        let temperature =
            t_inf - (t_inf - t.ambient_c) * (-model_s / t.time_constant_s.max(1e-6)).exp();
        let clock = profile.clock_mhz_at(temperature);
        let quota = base * f64::from(clock) / f64::from(profile.clock.nominal_mhz.max(1));
        Some(ThermalPoint {
            temperature_c: temperature,
            clock_mhz: clock,
            quota_us: (quota.round() as u64).max(MIN_QUOTA_US),
        })
    }
}

/// A limit of the emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The CPU quota.
    Cpu,
    /// The cores (cpuset or affinity).
    Cores,
    /// The memory cap (cgroup or `RLIMIT_AS`).
    Memory,
    /// The thermal model's quota rewrites.
    Thermal,
}

impl Limit {
    /// Name used in `not_enforced`.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Cpu => "cpu quota",
            Limit::Cores => "cores",
            Limit::Memory => "memory cap",
            Limit::Thermal => "thermal model",
        }
    }
}

/// One state of the thermal model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThermalPoint {
    /// Modelled SoC temperature.
    pub temperature_c: f64,
    /// Clock at that temperature.
    pub clock_mhz: u32,
    /// CFS quota for that clock.
    pub quota_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal(gflops: f64) -> HostCalibration {
        HostCalibration {
            host_id: "h".into(),
            gflops_per_core: gflops,
            memory_bandwidth_gbs: 10.0,
            measured_at_ms: 0,
            spread: 0.01,
            load_per_core: 0.2,
            steal_fraction: None,
            attempts: 1,
            contended: false,
            quota_corrections: vec![],
        }
    }

    fn cgroups(with_cpu: bool) -> cgroup::Cgroups {
        let c = || Some(cgroup::Controller { base: "/nonexistent".into() });
        cgroup::Cgroups {
            cpu: if with_cpu { c() } else { None },
            cpuset: c(),
            memory: c(),
            problems: if with_cpu { vec![] } else { vec!["no rights".into()] },
            version: cgroup::Version::V1,
        }
    }

    fn input<'a>(
        p: &'a DeviceProfile,
        c: &'a HostCalibration,
        g: &'a cgroup::Cgroups,
    ) -> PlanInput<'a> {
        PlanInput {
            profile: Some(p),
            calibration: Some(c),
            cgroups: g,
            native: false,
            host_cores: 2,
            memory_override: None,
            thermal_time_scale: 1.0,
        }
    }

    #[test]
    fn quota_is_the_per_core_speed_ratio() {
        let p = hone_firmware_profiles::find("rpi4").unwrap(); // 48 GFLOP/s over 4 cores
        let c = cal(24.0);
        let g = cgroups(true);
        let plan = plan(&input(p, &c, &g));
        assert_eq!(plan.status, EmulationStatus::Emulated);
        assert!((plan.ratio.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(plan.period_us, PERIOD_US);
        assert_eq!(plan.quota_us, Some(PERIOD_US / 2));
        assert_eq!(plan.cpus, Some(2), "no more cores than the host has");
        assert_eq!(plan.memory_limit, Some(p.memory_available_bytes));
    }

    #[test]
    fn very_slow_profiles_stretch_the_period_instead_of_clamping_the_quota() {
        let p = hone_firmware_profiles::find("rpi4").unwrap(); // 12 GFLOP/s per core
        let c = cal(120.0); // ratio 0.1, throttled to 2/3 of that
        let g = cgroups(true);
        let plan = plan(&input(p, &c, &g));
        let q = plan.quota_us.unwrap() as f64 / plan.period_us as f64;
        assert!((q - 0.1).abs() < 1e-3, "quota fraction {q}");
        let hot = plan.thermal_at(1e6).unwrap();
        assert!(hot.quota_us >= MIN_QUOTA_US);
        let hot_fraction = hot.quota_us as f64 / plan.period_us as f64;
        assert!((hot_fraction - 0.1 * 1000.0 / 1500.0).abs() < 2e-3, "{hot_fraction}");
    }

    #[test]
    fn a_profile_faster_than_the_host_gets_no_cpu_quota() {
        let p = hone_firmware_profiles::find("rpi5").unwrap();
        let c = cal(1.0);
        let g = cgroups(true);
        let plan = plan(&input(p, &c, &g));
        assert!(plan.ratio.unwrap() > 1.0);
        assert_eq!(plan.quota_us, None);
        let record = plan.record(false);
        match &record.status {
            EmulationStatus::Unthrottled { reason } => {
                assert!(
                    reason.contains("not enforced") && reason.contains("x this host"),
                    "{reason}"
                )
            }
            other => panic!("a profile faster than the host is not emulated, got {other:?}"),
        }
        assert!(record.performance_ratio.unwrap() > 1.0, "the record keeps the ratio");
        assert!(record.not_enforced[0].starts_with("cpu speed"), "{:?}", record.not_enforced);
        assert_eq!(record.cpus, Some(2), "the cores still apply");
    }

    #[test]
    fn a_limit_that_failed_is_listed_and_not_claimed() {
        let p = hone_firmware_profiles::find("rpi4").unwrap();
        let c = cal(24.0);
        let g = cgroups(true);
        let mut plan = plan(&input(p, &c, &g));
        plan.memory_by_cgroup = false;
        plan.not_applied(Limit::Memory, "setrlimit(RLIMIT_AS): Operation not permitted".into());
        plan.not_applied(Limit::Thermal, "writing cpu.cfs_quota_us: No such file".into());
        let r = plan.record(true);
        assert_eq!(r.status, EmulationStatus::Emulated, "the CPU quota itself held");
        assert_eq!((r.memory_limit_bytes, r.memory_method), (None, None));
        assert_eq!(r.thermal_time_scale, None);
        assert!(plan.thermal_at(10.0).is_none(), "no modelled points without the thermal model");
        assert_eq!(r.not_enforced.len(), 2);
        assert!(r.not_enforced[0].starts_with("memory cap: setrlimit"), "{:?}", r.not_enforced);
        plan.not_applied(Limit::Cpu, "cannot move the benchmark into its cgroups".into());
        let r = plan.record(false);
        assert!(matches!(r.status, EmulationStatus::Unthrottled { .. }), "{:?}", r.status);
        assert_eq!((r.cpu_quota_us, r.cpu_period_us), (None, None));
    }

    #[test]
    fn a_correction_scales_the_quota_and_is_recorded_with_the_calibration() {
        let p = hone_firmware_profiles::find("rpi4").unwrap();
        let c = HostCalibration { measured_at_ms: crate::host::now_ms() - 90_000, ..cal(24.0) };
        let g = cgroups(true);
        let mut plan = plan(&input(p, &c, &g));
        plan.apply_correction(QuotaCorrection {
            ratio: 0.5,
            factor: 1.2,
            residual: 0.01,
            iterations: 3,
        });
        assert_eq!(plan.quota_us, Some(3_000));
        let r = plan.record(false);
        assert_eq!((r.quota_correction, r.slowdown_residual), (Some(1.2), Some(0.01)));
        assert_eq!((r.calibration_spread, r.calibration_load_per_core), (Some(0.01), Some(0.2)));
        assert!((89..=95).contains(&r.calibration_age_s.unwrap()), "{:?}", r.calibration_age_s);
        assert_eq!(r.memory_method.as_deref(), Some("cgroup-v1"));
    }

    #[test]
    fn without_cgroup_rights_the_plan_says_unthrottled_and_why() {
        let p = hone_firmware_profiles::find("rpi4").unwrap();
        let c = cal(24.0);
        let g = cgroups(false);
        let plan = plan(&input(p, &c, &g));
        match &plan.status {
            EmulationStatus::Unthrottled { reason } => assert!(reason.contains("no rights")),
            other => panic!("expected unthrottled, got {other:?}"),
        }
        assert_eq!(plan.quota_us, None);
        assert_eq!(
            plan.memory_limit,
            Some(p.memory_available_bytes),
            "the memory cap still applies"
        );
        assert_eq!(plan.record(false).status, plan.status);
    }

    #[test]
    fn native_agents_emulate_nothing() {
        let p = hone_firmware_profiles::find("rpi4").unwrap();
        let c = cal(24.0);
        let g = cgroups(true);
        let plan = plan(&PlanInput { native: true, ..input(p, &c, &g) });
        assert_eq!(plan.status, EmulationStatus::Native);
        assert_eq!(plan.quota_us, None);
    }

    #[test]
    fn the_thermal_model_heats_up_and_lowers_the_quota() {
        let p = hone_firmware_profiles::find("rpi4").unwrap();
        let c = cal(12.0); // ratio 1.0 -> quota = period
        let g = cgroups(true);
        let mut plan = plan(&input(p, &c, &g));
        plan.quota_us = Some(4_000);
        let cold = plan.thermal_at(0.0).unwrap();
        assert!((cold.temperature_c - p.thermal.ambient_c).abs() < 1e-9);
        assert_eq!(cold.clock_mhz, p.clock.nominal_mhz);
        assert_eq!(cold.quota_us, 4_000);
        let hot = plan.thermal_at(20.0 * p.thermal.time_constant_s).unwrap();
        assert!(hot.temperature_c > p.thermal.critical_c);
        assert_eq!(hot.clock_mhz, p.clock.throttled_mhz);
        let expected =
            (4_000.0 * f64::from(p.clock.throttled_mhz) / f64::from(p.clock.nominal_mhz)).round();
        assert_eq!(hot.quota_us, expected as u64);
        // Temperature never decreases under constant load.
        let temps: Vec<f64> =
            (0..50).map(|i| plan.thermal_at(f64::from(i) * 20.0).unwrap().temperature_c).collect();
        assert!(temps.windows(2).all(|w| w[1] >= w[0]));
    }

    #[test]
    fn a_faster_time_scale_reaches_throttling_sooner() {
        let p = hone_firmware_profiles::find("rpi4").unwrap();
        let c = cal(12.0);
        let g = cgroups(true);
        let mut slow = plan(&input(p, &c, &g));
        slow.quota_us = Some(5_000);
        let mut fast = slow.clone();
        fast.thermal_time_scale = 10.0;
        assert_eq!(
            fast.thermal_at(30.0).unwrap().temperature_c,
            slow.thermal_at(300.0).unwrap().temperature_c
        );
    }
}
