//! Device-profile emulation on this host: the kernel really throttles a model at the planned
//! (closed-loop corrected) quota, the memory cap ends a model as `oom` while the agent lives on,
//! a host without cgroup rights or a profile faster than the host says `unthrottled` instead of
//! pretending, and on a cgroup v2 tree the limit files hold the planned values.
//!
//! No test here asserts a latency ratio against a bound: on a shared host that is noise. The
//! tests assert what the kernel and the agent record (quota files, `nr_throttled`, the
//! direction of the slowdown); the achieved slowdown is a figure in `scripts/figures.sh`.
//! A separate test binary (cargo runs test binaries one after another), and within it every
//! test takes one lock, so no two benchmarks run beside each other.

use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hone_e2e::*;
use serde_json::{Value, json};

static SERIAL: Mutex<()> = Mutex::new(());

/// One calibration folder for the tests of this binary (the host's own is left alone).
fn calibration_dir() -> &'static str {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path().to_str().unwrap()
}

fn agent_json(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Value) {
    let mut cmd = Command::new(bin("edge-agent"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// A copy of the `x86-vm-2core` profile whose per-core speed is `fraction` of this host's.
fn profile_at(
    fraction: f64,
    memory_mib: u64,
    dir: &std::path::Path,
    state: &str,
) -> std::path::PathBuf {
    let (_, cal) = agent_json(&["calibrate", "--json", "--calibration-dir", state], &[]);
    let host = cal["gflops_per_core"].as_f64().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../firmware-profiles/profiles/x86-vm-2core.toml");
    let text = std::fs::read_to_string(src).unwrap();
    // The profile must stay physically plausible for this host: one faster than an AVX2 core can
    // be (hosts with AVX-512, where tract's kernels use it) declares AVX-512 and a clock that
    // covers its speed (16 lanes x 2 FLOP per FMA x 2 FMA pipes per cycle).
    let per_core = fraction * host;
    let avx512 = per_core > 3.0 * 8.0 * 2.0 * 2.0;
    let mhz = ((per_core / 64.0 * 1000.0 * 1.05 / 100.0).ceil() * 100.0).max(3000.0);
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("fp32_peak_gflops") {
                format!("fp32_peak_gflops = {:.3}", per_core * 2.0)
            } else if avx512 && l.starts_with("isa_features") {
                r#"isa_features = ["sse4.2", "avx2", "fma", "avx512f"]"#.to_string()
            } else if avx512 && l.starts_with("simd_width_f32") {
                "simd_width_f32 = 16".to_string()
            } else if avx512 && l.starts_with("nominal_mhz") {
                format!("nominal_mhz = {mhz}")
            } else if l.starts_with("memory_available_mib") {
                format!("memory_available_mib = {memory_mib}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("x86-vm-2core.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_profile_at_half_the_host_speed_is_throttled_by_the_kernel_at_the_corrected_quota() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let state = calibration_dir();
    let profile = profile_at(0.5, 2048, dir.path(), state);
    let model = asset("open-nsfw-onnx");
    let model = model.to_str().unwrap();
    let base = [
        "bench",
        "--json",
        "--model",
        model,
        "--warmup",
        "2",
        "--iterations",
        "8",
        "--calibration-dir",
        state,
    ];
    let mut throttled_args = base.to_vec();
    throttled_args.extend(["--profile-file", profile.to_str().unwrap()]);
    let mut ratios = Vec::new();
    for _ in 0..3 {
        let (_, host) = agent_json(&base, &[]);
        let (code, slow) = agent_json(&throttled_args, &[]);
        assert_eq!(code, Some(0), "{slow}");
        assert_eq!(slow["emulated"], true, "{slow}");
        let t = &slow["throttle"];
        assert!((t["performance_ratio"].as_f64().unwrap() - 0.5).abs() < 0.01, "{t}");
        assert_eq!(t["not_enforced"], json!([]), "{t}");
        // The quota is the open-loop one times the correction measured on this host.
        let correction = t["quota_correction"].as_f64().expect("a closed-loop correction");
        let (quota, period) =
            (t["cpu_quota_us"].as_f64().unwrap(), t["cpu_period_us"].as_f64().unwrap());
        assert!((quota - (0.5 * correction * period).round()).abs() <= 1.0, "{t}");
        assert!(t["slowdown_residual"].as_f64().unwrap().is_finite(), "{t}");
        assert!(t["calibration_age_s"].as_u64().is_some(), "{t}");
        // The kernel held the benchmark back: the quota acted, whatever the timing.
        assert!(t["throttled_periods"].as_u64().unwrap() > 0, "{t}");
        ratios.push(slow["mean_ms"].as_f64().unwrap() / host["mean_ms"].as_f64().unwrap());
    }
    ratios.sort_by(f64::total_cmp);
    // Direction only: the achieved slowdown is a figure (scripts/figures.sh), not a gate.
    assert!(ratios[1] > 1.0, "throttled/unthrottled mean latency: {ratios:?}");
    eprintln!("figure (not asserted): throttled/unthrottled mean latency {ratios:?}");
}

#[test]
fn on_a_cgroup_v2_tree_the_limit_files_hold_the_planned_values() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // A delegated v2 group as the kernel shows it; plain files enforce nothing, which the
    // closed loop must notice.
    let root = dir.path().join("cgroup");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
    std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
    std::fs::write(root.join("cpuset.cpus.effective"), "0-1\n").unwrap();
    let env = [("HONE_CGROUP_ROOT", root.to_str().unwrap())];
    // Its own calibration folder: this tree's corrections must not reach the other tests.
    let state = dir.path().join("calibration");
    let state = state.to_str().unwrap();
    let profile = profile_at(0.5, 512, dir.path(), state);
    let tiny = dir.path().join("mlp.onnx");
    std::fs::write(&tiny, models::mlp(64)).unwrap();
    let (code, v) = agent_json(
        &[
            "bench",
            "--json",
            "--model",
            tiny.to_str().unwrap(),
            "--profile-file",
            profile.to_str().unwrap(),
            "--iterations",
            "3",
            "--calibration-dir",
            state,
        ],
        &env,
    );
    assert_eq!(code, Some(0), "{v}");
    let t = &v["throttle"];
    assert_eq!(t["memory_method"], "cgroup-v2", "{t}");
    assert_eq!(
        std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
        "+cpu +cpuset +memory"
    );
    let group = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("hone-bench-"))
        .expect("the benchmark's group");
    let read = |f: &str| std::fs::read_to_string(group.join(f)).unwrap();
    assert_eq!(read("cpu.max"), format!("{} {}", t["cpu_quota_us"], t["cpu_period_us"]), "{t}");
    assert_eq!(read("memory.max"), (512u64 << 20).to_string());
    assert_eq!(read("cpuset.cpus"), "0,1");
    assert!(!read("cgroup.procs").is_empty());
    // Files that no kernel enforces slow nothing: the measured correction says the quota
    // missed its target by far, instead of pretending.
    let residual = t["slowdown_residual"].as_f64().unwrap();
    assert!(residual < -0.3, "{t}");
}

#[test]
fn a_model_over_the_memory_cap_ends_as_oom_and_the_agent_serves_the_next_job() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let state = calibration_dir();
    // 96 MiB: enough for a tiny model, far too little for MiniLM (about 230 MiB).
    let profile = profile_at(0.9, 96, dir.path(), state);
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("e2e-oom");
    let mut agent = AgentProc::start_with(
        &coord,
        &dir.path().join("agents"),
        &id,
        &["--profile-file", profile.to_str().unwrap(), "--calibration-dir", state],
        5,
    )
    .unwrap();
    if let Err(e) = api.wait_device(&id, true, Duration::from_secs(60)) {
        panic!("{e}\nagent log:\n{}", agent.log());
    }
    let big = api.register(&asset("minilm-l3-onnx"), "minilm").unwrap();
    let c = api.start_campaign(json!({"models": [big], "devices": id})).unwrap();
    let view = api.wait_campaign(&c, Duration::from_secs(60)).unwrap();
    let line = &view["lines"][0];
    assert_eq!(line["state"], "failed", "{view}");
    let error = line["error"].as_str().unwrap();
    assert!(error.starts_with("oom") && error.contains("96 MiB"), "{error}");
    assert!(agent.is_alive());

    let tiny_path = dir.path().join("mlp.onnx");
    std::fs::write(&tiny_path, models::mlp(32)).unwrap();
    let tiny = api.register(&tiny_path, "mlp32").unwrap();
    let c = api.start_campaign(json!({"models": [tiny], "devices": id})).unwrap();
    let view = api.wait_campaign(&c, Duration::from_secs(60)).unwrap();
    assert_eq!(view["lines"][0]["state"], "done", "{view}");
}

#[test]
fn without_cgroup_rights_results_say_unthrottled_and_the_memory_cap_falls_back_to_rlimit() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let state = std::path::Path::new(calibration_dir());
    let no_cgroups = [("HONE_CGROUP_ROOT", "/nonexistent/hone-test")];
    let tiny = dir.path().join("mlp.onnx");
    std::fs::write(&tiny, models::mlp(64)).unwrap();
    let (code, v) = agent_json(
        &[
            "bench",
            "--json",
            "--model",
            tiny.to_str().unwrap(),
            "--profile",
            "rpi4",
            "--iterations",
            "5",
            "--calibration-dir",
            state.to_str().unwrap(),
        ],
        &no_cgroups,
    );
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["emulated"], false);
    assert!(
        v["emulation_status"]["unthrottled"]["reason"].as_str().unwrap().contains("cgroup"),
        "{v}"
    );
    assert_eq!(
        v["runs"][0]["emulation"]["status"]["unthrottled"],
        v["emulation_status"]["unthrottled"]
    );

    let minilm = asset("minilm-l3-onnx");
    let (code, v) = agent_json(
        &[
            "bench",
            "--json",
            "--model",
            minilm.to_str().unwrap(),
            "--profile",
            "rpi4",
            "--memory-limit-mib",
            "96",
            "--calibration-dir",
            state.to_str().unwrap(),
        ],
        &no_cgroups,
    );
    assert_eq!(code, Some(2), "{v}");
    assert_eq!(v["outcome"], "oom", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("RLIMIT_AS"), "{v}");
}

#[test]
fn a_profile_faster_than_the_host_is_not_enforced_and_says_by_how_much() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let state = calibration_dir();
    let profile = profile_at(2.0, 2048, dir.path(), state);
    let tiny = dir.path().join("mlp.onnx");
    std::fs::write(&tiny, models::mlp(64)).unwrap();
    let (code, v) = agent_json(
        &[
            "bench",
            "--json",
            "--model",
            tiny.to_str().unwrap(),
            "--profile-file",
            profile.to_str().unwrap(),
            "--iterations",
            "3",
            "--calibration-dir",
            state,
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["emulated"], false, "{v}");
    let reason = v["emulation_status"]["unthrottled"]["reason"].as_str().unwrap();
    assert!(reason.contains("not enforced") && reason.contains("2.00x"), "{reason}");
    assert!((v["throttle"]["performance_ratio"].as_f64().unwrap() - 2.0).abs() < 0.02, "{v}");
    assert_eq!(v["throttle"]["cpu_quota_us"], Value::Null);
}

#[test]
fn cold_throughput_and_sustained_modes_report_their_own_figures() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let state = calibration_dir();
    let tiny = dir.path().join("mlp.onnx");
    std::fs::write(&tiny, models::mlp(256)).unwrap();
    let tiny = tiny.to_str().unwrap();

    // On the real board nothing is emulated; readings are whatever the host exposes, never zeros.
    let (code, native) = agent_json(
        &[
            "bench",
            "--json",
            "--model",
            tiny,
            "--profile",
            "rpi4",
            "--native",
            "--iterations",
            "3",
            "--calibration-dir",
            state,
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{native}");
    assert_eq!(native["emulated"], false);
    assert_eq!(native["emulation_status"], "native");
    assert_eq!(native["throttle"]["cpu_quota_us"], Value::Null);
    let readings = &native["runs"][0]["readings"];
    assert!(
        readings["cpu_mhz_min"].is_null() || readings["cpu_mhz_min"].as_u64().unwrap() > 0,
        "{readings}"
    );

    let (_, cold) = agent_json(
        &["bench", "--json", "--model", tiny, "--mode", "cold", "--calibration-dir", state],
        &[],
    );
    let cold_ms = cold["cold_start_ms"].as_f64().unwrap();
    assert!(cold_ms >= cold["load_ms"].as_f64().unwrap(), "{cold}");
    assert_eq!(cold["iterations"], 1);

    let (_, tp) = agent_json(
        &[
            "bench",
            "--json",
            "--model",
            tiny,
            "--mode",
            "throughput",
            "--batch-sizes",
            "1,8",
            "--max-time-ms",
            "600",
            "--calibration-dir",
            state,
        ],
        &[],
    );
    let points = tp["throughput"].as_array().unwrap();
    assert_eq!(
        points.iter().map(|p| p["batch"].as_u64().unwrap()).collect::<Vec<_>>(),
        [1, 8],
        "{tp}"
    );
    assert!(points.iter().all(|p| p["items_per_s"].as_f64().unwrap() > 0.0));

    // rpi4 throttles from 80 °C; at 200x the model's time, that happens within a few seconds.
    let (_, sus) = agent_json(
        &[
            "bench",
            "--json",
            "--model",
            tiny,
            "--mode",
            "sustained",
            "--seconds",
            "6",
            "--profile",
            "rpi4",
            "--thermal-time-scale",
            "200",
            "--calibration-dir",
            state,
        ],
        &[],
    );
    let timeline = sus["timeline"].as_array().unwrap();
    assert!(timeline.len() >= 4, "{sus}");
    let first = &timeline[0];
    let last = timeline.last().unwrap();
    assert!(last["temperature_c"].as_f64().unwrap() > first["temperature_c"].as_f64().unwrap());
    assert!(
        last["quota"].as_f64().unwrap() < first["quota"].as_f64().unwrap(),
        "the quota follows the clock down"
    );
    assert_eq!(last["clock_mhz"], 1000);
    assert!(
        timeline.iter().all(|p| p["source"] == "modelled"),
        "emulated points say they are modelled, not read: {sus}"
    );
    assert!(sus["throttle_onset_s"].as_f64().is_some());
}

#[test]
fn the_agent_lists_every_built_in_profile_with_its_sources() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(bin("edge-agent")).args(["profiles", "--json"]).output().unwrap();
    assert!(out.status.success());
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> =
        list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for expected in ["rpi4", "rpi5", "jetson-orin-nano-cpu", "intel-n100", "imx8mp", "x86-vm-2core"]
    {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    for p in list.as_array().unwrap() {
        assert!(!p["sources"].as_array().unwrap().is_empty(), "{} cites nothing", p["name"]);
        assert!(p["summary"].as_str().unwrap().starts_with(p["name"].as_str().unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("mlp.onnx");
    std::fs::write(&tiny, models::mlp(8)).unwrap();
    let bad = Command::new(bin("edge-agent"))
        .args(["bench", "--model", tiny.to_str().unwrap(), "--profile", "no-such-board"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("unknown profile `no-such-board`") && err.contains("rpi4"), "{err}");
}
