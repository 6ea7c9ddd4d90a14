//! Unit tests: each invalid input yields its specific error.

use super::*;
use crate::profile::SOURCED_FIELDS;

/// A valid profile without its `[[sources]]`.
const BODY: &str = r#"
name = "test-board"
display_name = "Test Board"
arch = "aarch64"
isa_features = ["neon"]
cores = 4
fp32_peak_gflops = 48.0
memory_bandwidth_gbs = 12.8
memory_available_mib = 1024
unit_cost_usd = 50.0
simd_width_f32 = 4

[clock]
nominal_mhz = 1500
throttled_mhz = 1000

[thermal]
ambient_c = 25.0
throttle_start_c = 80.0
critical_c = 85.0
time_constant_s = 200.0

[[thermal.steps]]
above_c = 80.0
clock_mhz = 1200

[[thermal.steps]]
above_c = 83.0
clock_mhz = 1000

[power]
idle_w = 2.7
active_w = 6.4
"#;

fn sources_for(fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| format!("\n[[sources]]\nfield = \"{f}\"\ncitation = \"test citation for {f}\"\n"))
        .collect()
}

/// The valid base profile, with a source for every numeric field.
fn base() -> String {
    format!("{BODY}{}", sources_for(&SOURCED_FIELDS))
}

/// The base profile with `from` replaced by `to`; panics if `from` is absent, so a test cannot
/// pass merely because its edit did not apply.
fn edited(from: &str, to: &str) -> String {
    let text = base();
    assert!(text.contains(from), "test setup: `{from}` not in the base profile");
    text.replacen(from, to, 1)
}

fn parse_err(text: &str) -> ProfileError {
    match parse("test-board", text) {
        Ok(p) => panic!("expected an error, got a valid profile: {}", p.summary()),
        Err(e) => e,
    }
}

/// Asserts an `Invalid` error on `field` whose message contains `needle`.
#[track_caller]
fn assert_invalid(text: &str, field: &str, needle: &str) {
    let err = parse_err(text);
    assert_eq!(err.field(), Some(field), "wrong error: {err}");
    let msg = err.to_string();
    assert!(msg.contains(needle), "message `{msg}` should contain `{needle}`");
    assert!(msg.starts_with("profile `test-board`: "), "message should name the profile: {msg}");
}

#[test]
fn accepts_the_base_profile_with_typed_values() {
    let p = parse("test-board", &base()).expect("base profile is valid");
    assert_eq!(p.name, "test-board");
    assert_eq!(p.arch, Arch::Aarch64);
    assert_eq!(p.isa_features, [IsaFeature::Neon]);
    assert_eq!(p.cores, 4);
    assert_eq!(p.clock, Clock { nominal_mhz: 1500, throttled_mhz: 1000 });
    assert_eq!(p.memory_available_bytes, 1024 * 1024 * 1024);
    assert_eq!(p.thermal.steps.len(), 2);
    assert_eq!(p.thermal.steps[1], ThermalStep { above_c: 83.0, clock_mhz: 1000 });
    assert_eq!(p.sources.len(), SOURCED_FIELDS.len());
}

#[test]
fn accepts_integer_literals_for_float_fields() {
    let p = parse("test-board", &edited("fp32_peak_gflops = 48.0", "fp32_peak_gflops = 48"))
        .expect("an integer is a valid float");
    assert_eq!(p.fp32_peak_gflops, 48.0);
}

#[test]
fn rejects_unknown_field() {
    let err = parse_err(&edited("cores = 4", "cores = 4\nturbo_mhz = 1800"));
    assert!(matches!(err, ProfileError::Toml { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("unknown field `turbo_mhz`"), "{msg}");
    assert!(msg.contains("line 7"), "message should give the line: {msg}");
}

#[test]
fn rejects_unknown_field_in_nested_table() {
    let err = parse_err(&edited("nominal_mhz = 1500", "nominal_mhz = 1500\nboost_mhz = 1800"));
    assert!(err.to_string().contains("unknown field `boost_mhz`"), "{err}");
}

#[test]
fn rejects_throttled_clock_above_nominal() {
    let err = parse_err(&edited("throttled_mhz = 1000", "throttled_mhz = 1800"));
    assert_eq!(
        err.to_string(),
        "profile `test-board`: `clock.throttled_mhz` (1800) must not exceed `clock.nominal_mhz` (1500)"
    );
}

#[test]
fn rejects_avx2_on_arm_profile() {
    assert_invalid(
        &edited(r#"isa_features = ["neon"]"#, r#"isa_features = ["neon", "avx2"]"#),
        "isa_features",
        "`avx2`, which is an x86 feature, on an `aarch64` profile",
    );
}

#[test]
fn rejects_neon_on_x86_profile() {
    assert_invalid(
        &edited(r#"arch = "aarch64""#, r#"arch = "x86_64""#),
        "isa_features",
        "`neon`, which is an Arm feature, on an `x86_64` profile",
    );
}

#[test]
fn rejects_dotprod_on_armv7_profile() {
    assert_invalid(
        &edited(r#"arch = "aarch64""#, "arch = \"armv7\"").replacen(
            r#"["neon"]"#,
            r#"["neon", "dotprod"]"#,
            1,
        ),
        "isa_features",
        "Armv8.2-A feature, on an `armv7` profile",
    );
}

#[test]
fn rejects_feature_without_its_prerequisite() {
    assert_invalid(
        &edited(r#"isa_features = ["neon"]"#, r#"isa_features = ["dotprod"]"#),
        "isa_features",
        "lists `dotprod` but not `neon`",
    );
}

#[test]
fn rejects_duplicate_isa_feature() {
    assert_invalid(
        &edited(r#"isa_features = ["neon"]"#, r#"isa_features = ["neon", "neon"]"#),
        "isa_features",
        "lists `neon` twice",
    );
}

#[test]
fn rejects_unknown_isa_feature() {
    assert_invalid(
        &edited(r#"isa_features = ["neon"]"#, r#"isa_features = ["neon", "sve2"]"#),
        "isa_features",
        "(`sve2`) is not a known ISA feature",
    );
}

#[test]
fn rejects_unknown_arch() {
    assert_invalid(
        &edited(r#"arch = "aarch64""#, r#"arch = "arm64""#),
        "arch",
        "(`arm64`) is not a known architecture; expected one of `aarch64`, `x86_64`, `armv7`",
    );
}

#[test]
fn rejects_simd_width_inconsistent_with_isa() {
    assert_invalid(
        &edited("simd_width_f32 = 4", "simd_width_f32 = 8"),
        "simd_width_f32",
        "(8) is inconsistent with `isa_features`: their widest f32 vector is 4 lanes (NEON, 128-bit)",
    );
}

#[test]
fn rejects_simd_width_not_power_of_two() {
    assert_invalid(
        &edited("simd_width_f32 = 4", "simd_width_f32 = 6"),
        "simd_width_f32",
        "(6) must be a power of two",
    );
}

#[test]
fn rejects_missing_source_and_lists_every_unsourced_field() {
    let kept: Vec<&str> =
        SOURCED_FIELDS.iter().copied().filter(|f| *f != "cores" && *f != "power.idle_w").collect();
    let err = parse_err(&format!("{BODY}{}", sources_for(&kept)));
    match &err {
        ProfileError::MissingSources { profile, fields } => {
            assert_eq!(profile, "test-board");
            assert_eq!(fields, &["cores", "power.idle_w"]);
        }
        other => panic!("expected MissingSources, got {other:?}"),
    }
    assert!(
        err.to_string().contains("no `[[sources]]` entry for `cores`, `power.idle_w`"),
        "{err}"
    );
}

#[test]
fn rejects_profile_without_any_sources() {
    let err = parse_err(BODY);
    assert!(
        matches!(&err, ProfileError::MissingSources { fields, .. } if fields.len() == SOURCED_FIELDS.len()),
        "{err:?}"
    );
}

#[test]
fn rejects_source_naming_an_unknown_field() {
    let text = format!("{}\n[[sources]]\nfield = \"clock.turbo\"\ncitation = \"x\"\n", base());
    assert_invalid(
        &text,
        &format!("sources[{}].field", SOURCED_FIELDS.len()),
        "(`clock.turbo`) does not name a field that takes a source",
    );
}

#[test]
fn rejects_empty_citation() {
    assert_invalid(
        &edited("citation = \"test citation for cores\"", "citation = \"  \""),
        "sources[0].citation",
        "must not be empty",
    );
}

#[test]
fn rejects_bad_names() {
    for bad in ["Rpi4", "rpi_4", "-rpi4", "rpi4-", "", "rpi 4", "пи"] {
        let text = edited(r#"name = "test-board""#, &format!("name = {bad:?}"));
        let err = parse_err(&text);
        assert_eq!(err.field(), Some("name"), "name {bad:?} gave: {err}");
        assert!(err.to_string().contains("lowercase letters, digits or dashes"), "{err}");
    }
}

#[test]
fn rejects_zero_cores() {
    assert_invalid(&edited("cores = 4", "cores = 0"), "cores", "(0) must be between 1 and 128");
}

#[test]
fn rejects_too_many_cores() {
    assert_invalid(&edited("cores = 4", "cores = 129"), "cores", "(129) must be between 1 and 128");
}

#[test]
fn rejects_missing_cores() {
    let err = parse_err(&edited("cores = 4\n", ""));
    assert!(matches!(err, ProfileError::Toml { .. }), "{err:?}");
    assert!(err.to_string().contains("missing field `cores`"), "{err}");
}

#[test]
fn rejects_empty_display_name() {
    assert_invalid(
        &edited(r#"display_name = "Test Board""#, r#"display_name = " ""#),
        "display_name",
        "non-empty single line",
    );
}

#[test]
fn rejects_non_positive_and_nan_peak() {
    for bad in ["0.0", "-1.0", "nan", "inf"] {
        assert_invalid(
            &edited("fp32_peak_gflops = 48.0", &format!("fp32_peak_gflops = {bad}")),
            "fp32_peak_gflops",
            "must be a finite number greater than 0",
        );
    }
}

#[test]
fn rejects_physically_impossible_peak() {
    assert_invalid(
        &edited("fp32_peak_gflops = 48.0", "fp32_peak_gflops = 48000.0"),
        "fp32_peak_gflops",
        "exceeds the physical ceiling of 96 GFLOP/s",
    );
}

#[test]
fn rejects_zero_memory() {
    assert_invalid(
        &edited("memory_available_mib = 1024", "memory_available_mib = 0"),
        "memory_available_mib",
        "(0) must be between 1 and",
    );
}

#[test]
fn rejects_idle_power_above_active() {
    assert_invalid(
        &edited("idle_w = 2.7", "idle_w = 7.0"),
        "power.idle_w",
        "(7) must not exceed `power.active_w` (6.4)",
    );
}

#[test]
fn rejects_critical_temperature_below_throttle_start() {
    assert_invalid(
        &edited("critical_c = 85.0", "critical_c = 79.0"),
        "thermal.critical_c",
        "(79) must be above `thermal.throttle_start_c` (80)",
    );
}

#[test]
fn rejects_thermal_steps_out_of_order() {
    let text = edited("above_c = 83.0", "above_c = 79.5").replacen(
        "throttle_start_c = 80.0",
        "throttle_start_c = 79.0",
        1,
    );
    assert_invalid(
        &text,
        "thermal.steps[1].above_c",
        "must be above the previous step's `above_c` (80)",
    );
}

#[test]
fn rejects_hotter_step_with_higher_clock() {
    let text = edited("clock_mhz = 1200", "clock_mhz = 1000").replacen(
        "above_c = 83.0\nclock_mhz = 1000",
        "above_c = 83.0\nclock_mhz = 1100",
        1,
    );
    assert_invalid(
        &text,
        "thermal.steps[1].clock_mhz",
        "must not exceed the previous step's clock",
    );
}

#[test]
fn rejects_step_clock_above_nominal() {
    assert_invalid(
        &edited("clock_mhz = 1200", "clock_mhz = 1600"),
        "thermal.steps[0].clock_mhz",
        "(1600) must be between `clock.throttled_mhz` (1000) and `clock.nominal_mhz` (1500)",
    );
}

#[test]
fn rejects_step_at_or_above_critical_temperature() {
    assert_invalid(
        &edited("above_c = 83.0", "above_c = 85.0"),
        "thermal.steps[1].above_c",
        "below `thermal.critical_c` (85)",
    );
}

#[test]
fn rejects_steps_that_never_reach_the_throttled_clock() {
    assert_invalid(
        &edited("throttled_mhz = 1000", "throttled_mhz = 900"),
        "thermal.steps",
        "end at 1000 MHz but `clock.throttled_mhz` is 900",
    );
}

#[test]
fn rejects_throttled_clock_without_steps() {
    let text = base()
        .replace("[[thermal.steps]]\nabove_c = 80.0\nclock_mhz = 1200\n", "")
        .replace("[[thermal.steps]]\nabove_c = 83.0\nclock_mhz = 1000\n", "");
    assert!(!text.contains("thermal.steps]]"), "test setup: steps not removed");
    assert_invalid(&text, "thermal.steps", "is empty, yet `clock.throttled_mhz` (1000)");
}

#[test]
fn accepts_non_throttling_device_without_steps() {
    let text = base()
        .replace("[[thermal.steps]]\nabove_c = 80.0\nclock_mhz = 1200\n", "")
        .replace("[[thermal.steps]]\nabove_c = 83.0\nclock_mhz = 1000\n", "")
        .replace("throttled_mhz = 1000", "throttled_mhz = 1500");
    let p = parse("test-board", &text).expect("a device that never throttles is valid");
    assert!(p.thermal.steps.is_empty());
    assert_eq!(p.clock_mhz_at(100.0), 1500);
    assert!(!p.summary().contains("throttled"), "{}", p.summary());
}

#[test]
fn toml_syntax_error_names_the_hint_and_line() {
    let err = parse_err(&edited("cores = 4", "cores = = 4"));
    let msg = err.to_string();
    assert!(msg.starts_with("profile `test-board`: invalid profile TOML at line 6"), "{msg}");
    assert!(!msg.contains('\n'), "message should be one line: {msg}");
}

#[test]
fn try_from_raw_labels_errors_with_the_profile_name() {
    let mut raw: RawProfile = toml::from_str(&base()).expect("base parses");
    raw.cores = 0;
    let err = DeviceProfile::try_from(raw).expect_err("zero cores");
    assert!(err.to_string().starts_with("profile `test-board`: `cores`"), "{err}");
}

#[test]
fn deserializing_a_device_profile_validates_it() {
    let err = toml::from_str::<DeviceProfile>(&edited("cores = 4", "cores = 0"))
        .expect_err("serde goes through validation");
    assert!(err.to_string().contains("must be between 1 and 128"), "{err}");
}

#[test]
fn performance_ratio_is_peak_over_host_clamped_to_one() {
    let p = parse("test-board", &base()).expect("valid");
    assert_eq!(p.performance_ratio_to(96.0), 0.5);
    assert_eq!(p.performance_ratio_to(48.0), 1.0);
    assert_eq!(p.performance_ratio_to(10.0), 1.0, "never faster than the host");
    let tiny = p.performance_ratio_to(f64::MAX);
    assert!(tiny > 0.0 && tiny < 1e-300, "{tiny}");
    for bad in [0.0, -5.0, f64::NAN, f64::INFINITY] {
        assert_eq!(p.performance_ratio_to(bad), 1.0, "host {bad}");
    }
}

#[test]
fn clock_follows_thermal_steps() {
    let p = parse("test-board", &base()).expect("valid");
    assert_eq!(p.clock_mhz_at(25.0), 1500);
    assert_eq!(p.clock_mhz_at(79.9), 1500);
    assert_eq!(p.clock_mhz_at(80.0), 1200);
    assert_eq!(p.clock_mhz_at(83.0), 1000);
    assert_eq!(p.clock_mhz_at(120.0), 1000);
}

#[test]
fn summary_is_one_line_with_the_key_numbers() {
    let p = parse("test-board", &base()).expect("valid");
    assert_eq!(
        p.summary(),
        "test-board: Test Board, aarch64 4 cores @1500 MHz (throttled 1000), 1.0 GiB, NEON x4"
    );
    assert_eq!(p.to_string(), p.summary());
}

#[test]
fn citations_are_looked_up_by_field() {
    let p = parse("test-board", &base()).expect("valid");
    assert_eq!(p.citations("cores").collect::<Vec<_>>(), ["test citation for cores"]);
    assert_eq!(p.citations("arch").count(), 0);
}

#[test]
fn empty_hint_labels_errors_with_the_profile_name() {
    let err = parse("", &edited("cores = 4", "cores = 0")).expect_err("zero cores");
    assert!(err.to_string().starts_with("profile `test-board`:"), "{err}");
}

#[test]
fn builtin_registry_names_match_its_file_stems() {
    for (stem, _) in BUILTIN_FILES {
        assert!(find(stem).is_some(), "`{stem}` is registered but not found by name");
    }
    assert_eq!(builtin().len(), BUILTIN_FILES.len());
}
