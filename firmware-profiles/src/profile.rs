//! Typed, validated device profiles and the rules that turn a [`RawProfile`] into one.
//!
//! A [`DeviceProfile`] only comes out of [`DeviceProfile::try_from`] (or the crate's `parse`,
//! `load_dir` and `builtin`), which checks every invariant documented on its fields. Code that
//! holds a `DeviceProfile` can rely on them without re-checking.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ProfileError;
use crate::raw::{RawProfile, RawThermal};

/// Bytes in one MiB.
pub(crate) const MIB: u64 = 1024 * 1024;

/// Most cores a profile may declare.
const MAX_CORES: i64 = 128;
/// Highest believable clock, in MHz: rejects values given in kHz or Hz by mistake.
const MAX_CLOCK_MHZ: i64 = 10_000;
/// 16 TiB, in MiB: rejects values given in bytes or KiB by mistake.
const MAX_MEMORY_MIB: i64 = 16 * 1024 * 1024;
/// Temperatures outside this range are typos, not devices.
const TEMPERATURE_RANGE_C: (f64, f64) = (-60.0, 150.0);
/// Widest plausible SIMD register, in f32 lanes (1024-bit SVE).
const MAX_SIMD_WIDTH: i64 = 32;
/// FMA pipes assumed at most when checking that the peak is physically possible.
const MAX_FMA_PIPES: f64 = 2.0;

/// Numeric fields (dotted TOML paths, in file order) that need at least one `[[sources]]` entry.
pub(crate) const SOURCED_FIELDS: [&str; 15] = [
    "cores",
    "fp32_peak_gflops",
    "memory_bandwidth_gbs",
    "memory_available_mib",
    "unit_cost_usd",
    "simd_width_f32",
    "clock.nominal_mhz",
    "clock.throttled_mhz",
    "thermal.ambient_c",
    "thermal.throttle_start_c",
    "thermal.critical_c",
    "thermal.time_constant_s",
    "thermal.steps",
    "power.idle_w",
    "power.active_w",
];

/// Non-numeric fields that may also carry a source (they do not need one).
const OPTIONALLY_SOURCED_FIELDS: [&str; 2] = ["arch", "isa_features"];

/// CPU architecture of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Arch {
    /// 64-bit Arm (Armv8-A and later).
    #[serde(rename = "aarch64")]
    Aarch64,
    /// 64-bit x86.
    #[serde(rename = "x86_64")]
    X86_64,
    /// 32-bit Armv7-A.
    #[serde(rename = "armv7")]
    Armv7,
}

impl Arch {
    /// Every architecture, in declaration order.
    pub const ALL: [Self; 3] = [Self::Aarch64, Self::X86_64, Self::Armv7];

    /// The name used in profile files: `aarch64`, `x86_64` or `armv7`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Aarch64 => "aarch64",
            Self::X86_64 => "x86_64",
            Self::Armv7 => "armv7",
        }
    }

    /// Parses the name used in profile files; `None` if unknown.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether this is an Arm architecture.
    pub const fn is_arm(self) -> bool {
        matches!(self, Self::Aarch64 | Self::Armv7)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An instruction-set extension relevant to neural-network kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IsaFeature {
    /// Arm Advanced SIMD, 128-bit (4 f32 lanes).
    #[serde(rename = "neon")]
    Neon,
    /// Arm int8 dot product (`SDOT`/`UDOT`, Armv8.2-A, aarch64 only here).
    #[serde(rename = "dotprod")]
    DotProd,
    /// Arm half-precision arithmetic (FEAT_FP16, Armv8.2-A, aarch64 only here).
    #[serde(rename = "fp16")]
    Fp16,
    /// x86 SSE4.2, 128-bit (4 f32 lanes).
    #[serde(rename = "sse4.2")]
    Sse42,
    /// x86 AVX2, 256-bit (8 f32 lanes).
    #[serde(rename = "avx2")]
    Avx2,
    /// x86 FMA3.
    #[serde(rename = "fma")]
    Fma,
    /// x86 AVX-512 Foundation, 512-bit (16 f32 lanes).
    #[serde(rename = "avx512f")]
    Avx512f,
    /// x86 AVX-512 VNNI (int8 dot product on 512-bit vectors).
    #[serde(rename = "avx512vnni")]
    Avx512Vnni,
}

impl IsaFeature {
    /// Every feature, in declaration order.
    pub const ALL: [Self; 8] = [
        Self::Neon,
        Self::DotProd,
        Self::Fp16,
        Self::Sse42,
        Self::Avx2,
        Self::Fma,
        Self::Avx512f,
        Self::Avx512Vnni,
    ];

    /// The name used in profile files (Rust `target_feature` spelling).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Neon => "neon",
            Self::DotProd => "dotprod",
            Self::Fp16 => "fp16",
            Self::Sse42 => "sse4.2",
            Self::Avx2 => "avx2",
            Self::Fma => "fma",
            Self::Avx512f => "avx512f",
            Self::Avx512Vnni => "avx512vnni",
        }
    }

    /// Parses the name used in profile files; `None` if unknown.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// Whether the feature exists on Arm (otherwise it is an x86 feature).
    pub const fn is_arm(self) -> bool {
        matches!(self, Self::Neon | Self::DotProd | Self::Fp16)
    }

    /// Features that must also be listed when this one is (every real CPU with this feature
    /// has them).
    pub const fn requires(self) -> &'static [Self] {
        match self {
            Self::DotProd | Self::Fp16 => &[Self::Neon],
            Self::Avx2 => &[Self::Sse42],
            Self::Avx512f => &[Self::Avx2, Self::Fma],
            Self::Avx512Vnni => &[Self::Avx512f],
            Self::Neon | Self::Sse42 | Self::Fma => &[],
        }
    }
}

impl fmt::Display for IsaFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Widest f32 vector the features provide: (lanes, label for summaries, register width).
fn widest_simd(features: &[IsaFeature]) -> (u32, &'static str, &'static str) {
    let has = |f| features.contains(&f);
    if has(IsaFeature::Avx512f) {
        (16, "AVX-512", "512-bit")
    } else if has(IsaFeature::Avx2) {
        (8, "AVX2", "256-bit")
    } else if has(IsaFeature::Sse42) {
        (4, "SSE4.2", "128-bit")
    } else if has(IsaFeature::Neon) {
        (4, "NEON", "128-bit")
    } else {
        (1, "scalar", "no SIMD")
    }
}

/// Core clock frequencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Clock under sustained all-core load with adequate cooling, in MHz (1..=10000).
    pub nominal_mhz: u32,
    /// Lowest clock thermal throttling drives the cores to, in MHz (`<= nominal_mhz`).
    pub throttled_mhz: u32,
}

/// One throttling step: at or above `above_c` the cores run at `clock_mhz`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThermalStep {
    /// Threshold SoC temperature, in °C (`throttle_start_c <= above_c < critical_c`).
    pub above_c: f64,
    /// Core clock while this step applies, in MHz (within `[throttled_mhz, nominal_mhz]`).
    pub clock_mhz: u32,
}

/// Thermal behaviour of the SoC.
///
/// Invariants: `ambient_c < throttle_start_c < critical_c`; `time_constant_s > 0`; steps are
/// strictly increasing in temperature and non-increasing in clock, and the last step's clock
/// is `clock.throttled_mhz`. No steps means the device does not throttle
/// (`throttled_mhz == nominal_mhz`).
#[derive(Debug, Clone, PartialEq)]
pub struct Thermal {
    /// Ambient temperature the other numbers assume, in °C.
    pub ambient_c: f64,
    /// SoC temperature at which throttling may start, in °C.
    pub throttle_start_c: f64,
    /// Hard limit: the firmware throttles hard or shuts down here, in °C.
    pub critical_c: f64,
    /// First-order time constant of the SoC temperature after a load step, in seconds.
    pub time_constant_s: f64,
    /// Throttling steps, coolest first.
    pub steps: Vec<ThermalStep>,
}

/// Whole-board power draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Power {
    /// At idle, in watts (`>= 0`).
    pub idle_w: f64,
    /// With all cores busy, in watts (`>= idle_w`, `> 0`).
    pub active_w: f64,
}

/// A citation for one field of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Dotted TOML path of the field, e.g. `clock.nominal_mhz`.
    pub field: String,
    /// Datasheet, manual or benchmark the number comes from; `estimate: …` when derived.
    pub citation: String,
}

/// A validated description of an edge device's CPU, memory, thermal and power behaviour.
///
/// Obtain one from [`builtin`](crate::builtin), [`find`](crate::find),
/// [`parse`](crate::parse), [`load_dir`](crate::load_dir) or `DeviceProfile::try_from(raw)`.
/// It (de)serializes through [`RawProfile`], so deserializing validates too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawProfile", into = "RawProfile")]
pub struct DeviceProfile {
    /// Identifier: 1 to 63 lowercase ASCII letters, digits and dashes, not starting or ending
    /// with a dash. Equal to the profile file's stem.
    pub name: String,
    /// Human-readable name (one line, non-empty).
    pub display_name: String,
    /// CPU architecture.
    pub arch: Arch,
    /// ISA extensions, each valid for `arch`, no duplicates, with their prerequisites.
    pub isa_features: Vec<IsaFeature>,
    /// CPU cores (vCPUs for a VM) the workload may use, 1..=128.
    pub cores: u32,
    /// Clock frequencies.
    pub clock: Clock,
    /// Theoretical single-precision peak of all cores at the nominal clock, in GFLOP/s (`> 0`).
    pub fp32_peak_gflops: f64,
    /// Theoretical peak DRAM bandwidth, in GB/s (`> 0`).
    pub memory_bandwidth_gbs: f64,
    /// Memory a workload can use, in bytes (a whole number of MiB, `> 0`).
    pub memory_available_bytes: u64,
    /// Thermal behaviour.
    pub thermal: Thermal,
    /// Power draw.
    pub power: Power,
    /// Price of one unit in US dollars (`>= 0`; `0` means not applicable, e.g. a rented VM).
    pub unit_cost_usd: f64,
    /// f32 lanes pruning and tiling should round to: 4 for NEON or SSE (128-bit), 8 for AVX2,
    /// 16 for AVX-512, 1 without SIMD. Always the width the ISA features imply.
    pub simd_width_f32: u32,
    /// Citations; every numeric field has at least one.
    pub sources: Vec<Source>,
}

impl DeviceProfile {
    /// One-line description, e.g. `rpi4: Raspberry Pi 4 Model B (Cortex-A72), aarch64 4 cores
    /// @1500 MHz (throttled 1000), 3.5 GiB, NEON x4`. Same text as `Display`.
    pub fn summary(&self) -> String {
        self.to_string()
    }

    /// How fast this device is relative to a host with `host_gflops` fp32 peak:
    /// `fp32_peak_gflops / host_gflops`, clamped to `(0, 1]` (a device is never emulated as
    /// faster than the host running the emulation). Returns `1.0` when `host_gflops` is not a
    /// positive finite number, i.e. "no slow-down known".
    pub fn performance_ratio_to(&self, host_gflops: f64) -> f64 {
        if !(host_gflops.is_finite() && host_gflops > 0.0) {
            return 1.0;
        }
        let ratio = self.fp32_peak_gflops / host_gflops;
        if ratio.is_nan() { 1.0 } else { ratio.clamp(f64::MIN_POSITIVE, 1.0) }
    }

    /// Core clock at a given SoC temperature according to the thermal steps: the clock of the
    /// hottest step whose `above_c` is at or below `temperature_c`, else the nominal clock.
    pub fn clock_mhz_at(&self, temperature_c: f64) -> u32 {
        self.thermal
            .steps
            .iter()
            .rev()
            .find(|s| temperature_c >= s.above_c)
            .map_or(self.clock.nominal_mhz, |s| s.clock_mhz)
    }

    /// Citations given for a field (dotted TOML path, e.g. `clock.nominal_mhz`).
    pub fn citations<'a>(&'a self, field: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.sources.iter().filter(move |s| s.field == field).map(|s| s.citation.as_str())
    }
}

impl fmt::Display for DeviceProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cores = if self.cores == 1 { "core" } else { "cores" };
        write!(
            f,
            "{}: {}, {} {} {cores} @{} MHz",
            self.name, self.display_name, self.arch, self.cores, self.clock.nominal_mhz
        )?;
        if self.clock.throttled_mhz < self.clock.nominal_mhz {
            write!(f, " (throttled {})", self.clock.throttled_mhz)?;
        }
        // Display only: precision loss above 2^53 bytes is irrelevant here.
        let gib = self.memory_available_bytes as f64 / (1024.0 * MIB as f64);
        let (_, simd, _) = widest_simd(&self.isa_features);
        write!(f, ", {gib:.1} GiB, {simd} x{}", self.simd_width_f32)
    }
}

impl TryFrom<RawProfile> for DeviceProfile {
    type Error = ProfileError;

    /// Validates a raw profile; errors are labelled with the profile's own `name`.
    fn try_from(raw: RawProfile) -> Result<Self, ProfileError> {
        let label = raw.name.clone();
        validate(raw, &label)
    }
}

/// Builds errors labelled with the profile being checked.
struct Checker<'a> {
    profile: &'a str,
}

impl Checker<'_> {
    fn invalid(&self, field: impl Into<String>, problem: impl Into<String>) -> ProfileError {
        ProfileError::Invalid {
            profile: self.profile.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// An integer within `min..=max`, as `u32` (both bounds fit in `u32`).
    fn int_in(&self, field: &str, value: i64, min: i64, max: i64) -> Result<u32, ProfileError> {
        if (min..=max).contains(&value) {
            u32::try_from(value).map_err(|_| self.invalid(field, format!("({value}) is too large")))
        } else {
            Err(self.invalid(field, format!("({value}) must be between {min} and {max}")))
        }
    }

    fn positive(&self, field: &str, value: f64) -> Result<f64, ProfileError> {
        if value.is_finite() && value > 0.0 {
            Ok(value)
        } else {
            Err(self.invalid(field, format!("({value}) must be a finite number greater than 0")))
        }
    }

    fn non_negative(&self, field: &str, value: f64) -> Result<f64, ProfileError> {
        if value.is_finite() && value >= 0.0 {
            Ok(value)
        } else {
            Err(self.invalid(field, format!("({value}) must be a finite number, 0 or more")))
        }
    }

    fn temperature(&self, field: &str, value: f64) -> Result<f64, ProfileError> {
        let (lo, hi) = TEMPERATURE_RANGE_C;
        if value.is_finite() && (lo..=hi).contains(&value) {
            Ok(value)
        } else {
            Err(self.invalid(
                field,
                format!("({value}) must be a temperature between {lo} and {hi} °C"),
            ))
        }
    }
}

/// Whether `name` is a valid profile name (see [`DeviceProfile::name`]).
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Checks every invariant of [`DeviceProfile`]; errors carry `label` as the profile name.
pub(crate) fn validate(raw: RawProfile, label: &str) -> Result<DeviceProfile, ProfileError> {
    let c = Checker { profile: label };

    if !is_valid_name(&raw.name) {
        return Err(c.invalid(
            "name",
            format!(
                "(`{}`) must be 1 to 63 lowercase letters, digits or dashes, not starting or \
                 ending with a dash",
                raw.name.escape_debug()
            ),
        ));
    }
    if raw.display_name.trim().is_empty() || raw.display_name.chars().any(char::is_control) {
        return Err(c.invalid("display_name", "must be a non-empty single line of text"));
    }

    let arch = Arch::from_name(&raw.arch).ok_or_else(|| {
        c.invalid(
            "arch",
            format!(
                "(`{}`) is not a known architecture; expected one of {}",
                raw.arch.escape_debug(),
                quoted_list(Arch::ALL.iter().map(|a| a.as_str()))
            ),
        )
    })?;
    let isa_features = check_isa_features(&c, arch, &raw.isa_features)?;

    let cores = c.int_in("cores", raw.cores, 1, MAX_CORES)?;
    let nominal_mhz = c.int_in("clock.nominal_mhz", raw.clock.nominal_mhz, 1, MAX_CLOCK_MHZ)?;
    if raw.clock.throttled_mhz > raw.clock.nominal_mhz {
        return Err(c.invalid(
            "clock.throttled_mhz",
            format!(
                "({}) must not exceed `clock.nominal_mhz` ({nominal_mhz})",
                raw.clock.throttled_mhz
            ),
        ));
    }
    let throttled_mhz =
        c.int_in("clock.throttled_mhz", raw.clock.throttled_mhz, 1, MAX_CLOCK_MHZ)?;
    let clock = Clock { nominal_mhz, throttled_mhz };

    let fp32_peak_gflops = c.positive("fp32_peak_gflops", raw.fp32_peak_gflops)?;
    let memory_bandwidth_gbs = c.positive("memory_bandwidth_gbs", raw.memory_bandwidth_gbs)?;
    let memory_mib =
        c.int_in("memory_available_mib", raw.memory_available_mib, 1, MAX_MEMORY_MIB)?;
    let unit_cost_usd = c.non_negative("unit_cost_usd", raw.unit_cost_usd)?;

    let simd_width_f32 = c.int_in("simd_width_f32", raw.simd_width_f32, 1, MAX_SIMD_WIDTH)?;
    if !simd_width_f32.is_power_of_two() {
        return Err(
            c.invalid("simd_width_f32", format!("({simd_width_f32}) must be a power of two"))
        );
    }
    let (lanes, simd_name, bits) = widest_simd(&isa_features);
    if simd_width_f32 != lanes {
        return Err(c.invalid(
            "simd_width_f32",
            format!(
                "({simd_width_f32}) is inconsistent with `isa_features`: their widest f32 vector \
                 is {lanes} lanes ({simd_name}, {bits})"
            ),
        ));
    }

    // A peak above cores x GHz x lanes x 2 FLOP per FMA x 2 FMA pipes is not a CPU, it is a
    // unit mistake (MFLOP/s, or a GPU's number).
    let ceiling = f64::from(cores)
        * (f64::from(nominal_mhz) / 1000.0)
        * f64::from(simd_width_f32)
        * 2.0
        * MAX_FMA_PIPES;
    if fp32_peak_gflops > ceiling * (1.0 + 1e-9) {
        return Err(c.invalid(
            "fp32_peak_gflops",
            format!(
                "({fp32_peak_gflops}) exceeds the physical ceiling of {ceiling} GFLOP/s \
                 ({cores} cores x {} GHz x {simd_width_f32} lanes x 2 FLOP per FMA x 2 FMA pipes); \
                 check the units",
                f64::from(nominal_mhz) / 1000.0
            ),
        ));
    }

    let thermal = check_thermal(&c, &raw.thermal, clock)?;

    let idle_w = c.non_negative("power.idle_w", raw.power.idle_w)?;
    let active_w = c.positive("power.active_w", raw.power.active_w)?;
    if idle_w > active_w {
        return Err(c.invalid(
            "power.idle_w",
            format!("({idle_w}) must not exceed `power.active_w` ({active_w})"),
        ));
    }

    let sources = check_sources(&c, raw.sources)?;

    Ok(DeviceProfile {
        name: raw.name,
        display_name: raw.display_name,
        arch,
        isa_features,
        cores,
        clock,
        fp32_peak_gflops,
        memory_bandwidth_gbs,
        memory_available_bytes: u64::from(memory_mib) * MIB,
        thermal,
        power: Power { idle_w, active_w },
        unit_cost_usd,
        simd_width_f32,
        sources,
    })
}

fn check_isa_features(
    c: &Checker<'_>,
    arch: Arch,
    names: &[String],
) -> Result<Vec<IsaFeature>, ProfileError> {
    let mut features = Vec::with_capacity(names.len());
    for name in names {
        let feature = IsaFeature::from_name(name).ok_or_else(|| {
            c.invalid(
                "isa_features",
                format!(
                    "(`{}`) is not a known ISA feature; expected any of {}",
                    name.escape_debug(),
                    quoted_list(IsaFeature::ALL.iter().map(|f| f.as_str()))
                ),
            )
        })?;
        if features.contains(&feature) {
            return Err(c.invalid("isa_features", format!("lists `{feature}` twice")));
        }
        if feature.is_arm() != arch.is_arm() {
            let family = if feature.is_arm() { "an Arm" } else { "an x86" };
            return Err(c.invalid(
                "isa_features",
                format!("lists `{feature}`, which is {family} feature, on an `{arch}` profile"),
            ));
        }
        if arch == Arch::Armv7 && matches!(feature, IsaFeature::DotProd | IsaFeature::Fp16) {
            return Err(c.invalid(
                "isa_features",
                format!("lists `{feature}`, an Armv8.2-A feature, on an `armv7` profile"),
            ));
        }
        features.push(feature);
    }
    for &feature in &features {
        if let Some(missing) = feature.requires().iter().find(|r| !features.contains(r)) {
            return Err(c.invalid(
                "isa_features",
                format!("lists `{feature}` but not `{missing}`, which every CPU with it has"),
            ));
        }
    }
    Ok(features)
}

fn check_thermal(c: &Checker<'_>, raw: &RawThermal, clock: Clock) -> Result<Thermal, ProfileError> {
    let ambient_c = c.temperature("thermal.ambient_c", raw.ambient_c)?;
    let throttle_start_c = c.temperature("thermal.throttle_start_c", raw.throttle_start_c)?;
    let critical_c = c.temperature("thermal.critical_c", raw.critical_c)?;
    if throttle_start_c <= ambient_c {
        return Err(c.invalid(
            "thermal.throttle_start_c",
            format!("({throttle_start_c}) must be above `thermal.ambient_c` ({ambient_c})"),
        ));
    }
    if critical_c <= throttle_start_c {
        return Err(c.invalid(
            "thermal.critical_c",
            format!("({critical_c}) must be above `thermal.throttle_start_c` ({throttle_start_c})"),
        ));
    }
    let time_constant_s = c.positive("thermal.time_constant_s", raw.time_constant_s)?;

    let mut steps: Vec<ThermalStep> = Vec::with_capacity(raw.steps.len());
    for (i, step) in raw.steps.iter().enumerate() {
        let at = |leaf: &str| format!("thermal.steps[{i}].{leaf}");
        let above_c = c.temperature(&at("above_c"), step.above_c)?;
        if above_c < throttle_start_c || above_c >= critical_c {
            return Err(c.invalid(
                at("above_c"),
                format!(
                    "({above_c}) must be at least `thermal.throttle_start_c` ({throttle_start_c}) \
                     and below `thermal.critical_c` ({critical_c})"
                ),
            ));
        }
        let in_range = i64::from(clock.throttled_mhz)..=i64::from(clock.nominal_mhz);
        if !in_range.contains(&step.clock_mhz) {
            return Err(c.invalid(
                at("clock_mhz"),
                format!(
                    "({}) must be between `clock.throttled_mhz` ({}) and `clock.nominal_mhz` ({})",
                    step.clock_mhz, clock.throttled_mhz, clock.nominal_mhz
                ),
            ));
        }
        let clock_mhz = c.int_in(&at("clock_mhz"), step.clock_mhz, 1, MAX_CLOCK_MHZ)?;
        if let Some(prev) = steps.last() {
            if above_c <= prev.above_c {
                return Err(c.invalid(
                    at("above_c"),
                    format!(
                        "({above_c}) must be above the previous step's `above_c` ({}); list steps \
                         from coolest to hottest",
                        prev.above_c
                    ),
                ));
            }
            if clock_mhz > prev.clock_mhz {
                return Err(c.invalid(
                    at("clock_mhz"),
                    format!(
                        "({clock_mhz}) must not exceed the previous step's clock ({}): a hotter \
                         step cannot run faster",
                        prev.clock_mhz
                    ),
                ));
            }
        }
        steps.push(ThermalStep { above_c, clock_mhz });
    }
    match steps.last() {
        None if clock.throttled_mhz < clock.nominal_mhz => {
            return Err(c.invalid(
                "thermal.steps",
                format!(
                    "is empty, yet `clock.throttled_mhz` ({}) is below `clock.nominal_mhz` ({}); \
                     add the steps that lead down to it",
                    clock.throttled_mhz, clock.nominal_mhz
                ),
            ));
        }
        Some(last) if last.clock_mhz != clock.throttled_mhz => {
            return Err(c.invalid(
                "thermal.steps",
                format!(
                    "end at {} MHz but `clock.throttled_mhz` is {}; the hottest step must reach \
                     the throttled clock",
                    last.clock_mhz, clock.throttled_mhz
                ),
            ));
        }
        _ => {}
    }
    Ok(Thermal { ambient_c, throttle_start_c, critical_c, time_constant_s, steps })
}

fn check_sources(
    c: &Checker<'_>,
    raw: Vec<crate::raw::RawSource>,
) -> Result<Vec<Source>, ProfileError> {
    let mut covered = BTreeSet::new();
    let mut sources = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let known = SOURCED_FIELDS.contains(&s.field.as_str())
            || OPTIONALLY_SOURCED_FIELDS.contains(&s.field.as_str());
        if !known {
            return Err(c.invalid(
                format!("sources[{i}].field"),
                format!(
                    "(`{}`) does not name a field that takes a source; expected one of {}",
                    s.field.escape_debug(),
                    quoted_list(SOURCED_FIELDS.iter().chain(&OPTIONALLY_SOURCED_FIELDS).copied())
                ),
            ));
        }
        if s.citation.trim().is_empty() {
            return Err(c.invalid(
                format!("sources[{i}].citation"),
                format!("(for `{}`) must not be empty", s.field),
            ));
        }
        covered.insert(s.field.clone());
        sources.push(Source { field: s.field, citation: s.citation });
    }
    let missing: Vec<&'static str> =
        SOURCED_FIELDS.into_iter().filter(|f| !covered.contains(*f)).collect();
    if missing.is_empty() {
        Ok(sources)
    } else {
        Err(ProfileError::MissingSources { profile: c.profile.to_owned(), fields: missing })
    }
}

fn quoted_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
}
