//! The raw, unvalidated shape of a profile file.
//!
//! These types mirror the TOML files in `profiles/` one to one: field names, nesting and units
//! are exactly what a user writes. Nothing here is checked beyond "is it TOML with the right
//! keys and types" (`deny_unknown_fields` catches typos such as `nominal_mhz` spelled
//! `nominal_mhzz`). Integers are `i64` and enumerations are plain strings on purpose, so that
//! out-of-range values and unknown names reach [`DeviceProfile::try_from`] and get an error
//! that names the field, instead of a bare deserializer message.
//!
//! [`DeviceProfile::try_from`]: crate::DeviceProfile

use serde::{Deserialize, Serialize};

use crate::profile::{DeviceProfile, MIB};

/// One device profile exactly as written in its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// Short identifier, equal to the file stem (`rpi4` for `rpi4.toml`).
    pub name: String,
    /// Human-readable name shown in reports.
    pub display_name: String,
    /// `aarch64`, `x86_64` or `armv7`.
    pub arch: String,
    /// Rust `target_feature` style names: `neon`, `dotprod`, `fp16`, `sse4.2`, `avx2`, `fma`,
    /// `avx512f`, `avx512vnni`.
    pub isa_features: Vec<String>,
    /// Number of CPU cores (or vCPUs) usable by the benchmark.
    pub cores: i64,
    /// Theoretical single-precision peak of all cores at `clock.nominal_mhz`, in GFLOP/s.
    pub fp32_peak_gflops: f64,
    /// Theoretical peak DRAM bandwidth, in GB/s (10^9 bytes per second).
    pub memory_bandwidth_gbs: f64,
    /// Memory a workload can actually use, in MiB (after OS, firmware and GPU carve-outs).
    pub memory_available_mib: i64,
    /// Purchase price of one unit, in US dollars; `0` when not applicable (rented).
    pub unit_cost_usd: f64,
    /// Number of `f32` lanes in the widest SIMD register the ISA features provide.
    pub simd_width_f32: i64,
    /// Clock frequencies.
    pub clock: RawClock,
    /// Thermal behaviour.
    pub thermal: RawThermal,
    /// Board power draw.
    pub power: RawPower,
    /// Where each number comes from. Optional in the syntax so that a missing list is reported
    /// as "these fields lack a source" rather than as a parse error.
    #[serde(default)]
    pub sources: Vec<RawSource>,
}

/// `[clock]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClock {
    /// Clock under sustained load with adequate cooling, in MHz.
    pub nominal_mhz: i64,
    /// Lowest clock thermal throttling drives the cores to, in MHz.
    pub throttled_mhz: i64,
}

/// `[thermal]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThermal {
    /// Ambient temperature the other numbers assume, in °C.
    pub ambient_c: f64,
    /// SoC temperature at which the first throttling step applies, in °C.
    pub throttle_start_c: f64,
    /// Temperature at which the firmware throttles hard or shuts down, in °C.
    pub critical_c: f64,
    /// First-order time constant of the SoC temperature under a load step, in seconds.
    pub time_constant_s: f64,
    /// Throttling steps, ordered by temperature. Optional: no steps means no throttling.
    #[serde(default)]
    pub steps: Vec<RawThermalStep>,
}

/// One `[[thermal.steps]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThermalStep {
    /// The step applies when the SoC is at or above this temperature, in °C.
    pub above_c: f64,
    /// Core clock while this step applies, in MHz.
    pub clock_mhz: i64,
}

/// `[power]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPower {
    /// Whole-board power at idle, in watts.
    pub idle_w: f64,
    /// Whole-board power with all cores busy, in watts.
    pub active_w: f64,
}

/// One `[[sources]]` entry: a citation for one field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Dotted TOML path of the field this entry justifies, e.g. `clock.nominal_mhz`.
    pub field: String,
    /// Where the number comes from; estimates start with `estimate:` and give the reasoning.
    pub citation: String,
}

impl From<&DeviceProfile> for RawProfile {
    /// Converts a validated profile back to its file form (used to serialize profiles).
    /// `memory_available_bytes` is written in whole MiB, rounded down.
    fn from(p: &DeviceProfile) -> Self {
        Self {
            name: p.name.clone(),
            display_name: p.display_name.clone(),
            arch: p.arch.as_str().to_owned(),
            isa_features: p.isa_features.iter().map(|f| f.as_str().to_owned()).collect(),
            cores: i64::from(p.cores),
            fp32_peak_gflops: p.fp32_peak_gflops,
            memory_bandwidth_gbs: p.memory_bandwidth_gbs,
            memory_available_mib: i64::try_from(p.memory_available_bytes / MIB).unwrap_or(i64::MAX),
            unit_cost_usd: p.unit_cost_usd,
            simd_width_f32: i64::from(p.simd_width_f32),
            clock: RawClock {
                nominal_mhz: i64::from(p.clock.nominal_mhz),
                throttled_mhz: i64::from(p.clock.throttled_mhz),
            },
            thermal: RawThermal {
                ambient_c: p.thermal.ambient_c,
                throttle_start_c: p.thermal.throttle_start_c,
                critical_c: p.thermal.critical_c,
                time_constant_s: p.thermal.time_constant_s,
                steps: p
                    .thermal
                    .steps
                    .iter()
                    .map(|s| RawThermalStep {
                        above_c: s.above_c,
                        clock_mhz: i64::from(s.clock_mhz),
                    })
                    .collect(),
            },
            power: RawPower { idle_w: p.power.idle_w, active_w: p.power.active_w },
            sources: p
                .sources
                .iter()
                .map(|s| RawSource { field: s.field.clone(), citation: s.citation.clone() })
                .collect(),
        }
    }
}

impl From<DeviceProfile> for RawProfile {
    fn from(p: DeviceProfile) -> Self {
        Self::from(&p)
    }
}
