//! `cargo run -p hone-e2e --bin bench-serving -- [--agents N] [--profile P] [--duration S]
//! [--rates 10,20,40,80,160] [--json]`
//!
//! The serving figures of issue 11, measured side by side in one run on this host, with a real
//! model (PaddleOCR's direction classifier, `corpus-ppocr-cls`, input `x` 1×3×48×192):
//! - **rollout time**: a deployment (canary 1, then the rest) to N local agents, from the
//!   `POST` to `done`, with probe traffic feeding the gate;
//! - **serving overhead**: the HTTP p50 of `edge-agent loadgen` at a low rate against one
//!   agent's endpoint, over the `edge-agent bench` p50 of the same model under the same
//!   profile (both in the profile's cgroups);
//! - **sustained rate**: the highest rate of the sweep whose p99 stays within 2× its p50;
//! - **RSS while serving**: the agent process, and the serving process as its telemetry
//!   reports it.
//!
//! Prints a table and, with `--json`, one JSON object; every figure names the host's CPU.

use std::process::Command;
use std::time::{Duration, Instant};

use hone_e2e::*;
use serde_json::{Value, json};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn json_of(cmd: &mut Command) -> anyhow::Result<Value> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn main() -> anyhow::Result<()> {
    let n_agents: usize = arg("--agents", 10);
    let profile: String = arg("--profile", "x86-vm-2core".to_string());
    let duration: f64 = arg("--duration", 10.0);
    let rates: String = arg("--rates", "10,20,40,80,160".to_string());
    let as_json = std::env::args().any(|a| a == "--json");
    let model = asset("corpus-ppocr-cls");
    let dir = tempfile::tempdir()?;
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)?;
    let api = coord.api();
    let ids: Vec<String> = (0..n_agents).map(|i| format!("serve-agent-{i}")).collect();
    let mut agents = Vec::new();
    for id in &ids {
        agents.push(AgentProc::start_with(
            &coord,
            &dir.path().join("agents"),
            id,
            &["--profile", &profile, "--telemetry-window-s", "1"],
            30,
        )?);
    }
    for id in &ids {
        api.wait_device(id, true, Duration::from_secs(60))?;
    }
    let idle_rss: Vec<u64> = agents.iter().filter_map(|a| a.rss_bytes()).collect();
    let model_id = api.register_with_inputs(&model, "ppocr-cls", "x=1x3x48x192")?;

    // Rollout to every agent.
    let start = Instant::now();
    let (status, body) = api.post(
        "/api/v1/deployments",
        &json!({
            "model": model_id, "devices": format!("profile:{profile}"), "canary": "1",
            "gate": "error_rate<=0.05", "window_s": 3, "min_requests": 10, "probe_rps": 10,
            "activation_timeout_s": 120,
        }),
    )?;
    anyhow::ensure!(status == 201, "deploy: {status} {body}");
    let id = body["id"].as_str().unwrap_or_default().to_string();
    let view = loop {
        let v = api.get(&format!("/api/v1/deployments/{id}"))?;
        if matches!(v["state"].as_str(), Some("done" | "rolled_back" | "failed")) {
            break v;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "rollout did not end: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let rollout_s = start.elapsed().as_secs_f64();
    anyhow::ensure!(view["state"] == "done", "rollout ended {}: {}", view["state"], view["reason"]);

    // One agent of the rest: the canary probes itself for its gate, the rest get no probes.
    let measured = agents.last().expect("at least one agent");
    let endpoint =
        std::fs::read_to_string(measured.state_dir.join("serving/endpoint"))?.trim().to_string();
    let loadgen = |rates: &str, secs: f64, binary: bool| -> anyhow::Result<Value> {
        let mut cmd = Command::new(bin("edge-agent"));
        cmd.args(["loadgen", "--url", &endpoint, "--rates", rates, "--duration"])
            .arg(secs.to_string())
            .arg("--json");
        if binary {
            cmd.arg("--binary");
        }
        json_of(&mut cmd)
    };
    // The benchmark of the same model under the same profile, and HTTP at a low rate.
    let bench = json_of(
        Command::new(bin("edge-agent"))
            .args(["bench", "--model"])
            .arg(&model)
            .args(["--profile", &profile, "--input", "x=1x3x48x192", "--iterations", "300"])
            .args(["--max-time-ms", "10000", "--json"])
            .env("HONE_CALIBRATION_DIR", std::env::temp_dir().join("hone-e2e-calibration")),
    )?;
    let low = loadgen("5", duration, false)?;
    let low_binary = loadgen("5", duration, true)?;
    let sweep = loadgen(&rates, duration, false)?;
    let sweep_binary = loadgen(&rates, duration, true)?;
    let binary_p50 = low_binary["rates"][0]["p50_ms"].as_f64();
    let bench_p50 = bench["p50_ms"].as_f64();
    let http_p50 = low["rates"][0]["p50_ms"].as_f64();
    let sustained_of = |sweep: &Value| {
        sweep["rates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["p99_within_2x_p50"] == true && r["unavailable"] == 0)
            .filter_map(|r| r["achieved_rps"].as_f64())
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let sustained = sustained_of(&sweep);
    let sustained_binary = sustained_of(&sweep_binary);
    let serving_rss = api
        .get(&format!("/api/v1/devices/{}/telemetry", measured.device_id))?
        .as_array()
        .and_then(|w| w.iter().filter_map(|w| w["rss_bytes"].as_u64()).max());
    let agent_rss: Vec<u64> = agents.iter().filter_map(|a| a.rss_bytes()).collect();
    let out = json!({
        "cpu": coordinator::pipeline::runner::cpu_name(),
        "model": "corpus-ppocr-cls (PaddleOCR direction classifier), x = 1x3x48x192, synthetic inputs",
        "profile": profile,
        "emulation": bench["emulation_status"],
        "agents": n_agents,
        "rollout_s": rollout_s,
        "bench_p50_ms": bench_p50,
        "http_p50_ms_at_5_rps": http_p50,
        "serving_overhead_ratio": http_p50.zip(bench_p50).map(|(h, b)| h / b),
        "http_p50_ms_at_5_rps_binary": binary_p50,
        "serving_overhead_ratio_binary": binary_p50.zip(bench_p50).map(|(h, b)| h / b),
        "sweep": sweep["rates"],
        "sweep_binary": sweep_binary["rates"],
        "sustained_rps_p99_within_2x_p50": sustained,
        "sustained_rps_p99_within_2x_p50_binary": sustained_binary,
        "agent_rss_bytes_idle": idle_rss,
        "agent_rss_bytes_serving": agent_rss,
        "serving_process_rss_bytes_max": serving_rss,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("serving figures on {} ({} profile, {})", out["cpu"], profile, out["model"]);
        for k in [
            "rollout_s",
            "bench_p50_ms",
            "http_p50_ms_at_5_rps",
            "http_p50_ms_at_5_rps_binary",
            "serving_overhead_ratio_binary",
            "sustained_rps_p99_within_2x_p50_binary",
            "serving_overhead_ratio",
            "sustained_rps_p99_within_2x_p50",
            "serving_process_rss_bytes_max",
        ] {
            println!("{k:<36} {}", out[k]);
        }
        println!(
            "{:<10} {:>10} {:>9} {:>9} {:>9} {:>6}",
            "rate", "achieved", "p50 ms", "p99 ms", "2x ok", "503"
        );
        for r in sweep["rates"].as_array().into_iter().flatten() {
            println!(
                "{:<10} {:>10.1} {:>9.2} {:>9.2} {:>9} {:>6}",
                r["target_rps"],
                r["achieved_rps"].as_f64().unwrap_or(0.0),
                r["p50_ms"].as_f64().unwrap_or(f64::NAN),
                r["p99_ms"].as_f64().unwrap_or(f64::NAN),
                r["p99_within_2x_p50"],
                r["unavailable"]
            );
        }
    }
    Ok(())
}
