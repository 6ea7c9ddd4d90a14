//! `cargo run -p hone-e2e --bin bench-fleet -- [--agents N] [--models K] [--json]`
//!
//! Measures the fleet machinery itself, not a model: a coordinator with the embedded broker and
//! SQLite, N local agents, and a campaign of K tiny models (x·W, W 8x8 to (8+K)x(8+K)) × N
//! devices with one measured iteration each, so nearly all of each job's time is dispatch,
//! download, verification, process start and reporting. Prints a table and a JSON object:
//! campaign wall time, per-job overhead, dispatch latency (sent → accepted by the agent),
//! turnaround (sent → result stored), and the agents' idle RSS.

use std::time::{Duration, Instant};

use hone_common::bench::percentile;
use hone_e2e::*;
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let n_agents = arg("--agents", 2);
    let n_models = arg("--models", 10);
    let as_json = std::env::args().any(|a| a == "--json");
    let dir = tempfile::tempdir()?;
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)?;
    let api = coord.api();
    let ids: Vec<String> = (0..n_agents).map(|i| format!("bench-agent-{i}")).collect();
    let agents: Vec<AgentProc> = ids
        .iter()
        .map(|id| AgentProc::start(&coord, &dir.path().join("agents"), id, "x86-vm-2core", 30))
        .collect::<anyhow::Result<_>>()?;
    for id in &ids {
        api.wait_device(id, true, Duration::from_secs(30))?;
    }
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss: Vec<u64> = agents.iter().filter_map(|a| a.rss_bytes()).collect();
    let mut models = Vec::new();
    for k in 0..n_models {
        let path = dir.path().join(format!("mlp{k}.onnx"));
        std::fs::write(&path, models::mlp(8 + k as i64))?;
        models.push(api.register(&path, &format!("mlp{}", 8 + k))?);
    }
    let start = Instant::now();
    let c = api.start_campaign(json!({
        "models": models, "devices": ids.join(","),
        "bench": {"warmup": 0, "max_iterations": 1, "max_time_ms": 1, "symbols": []},
    }))?;
    let view = api.wait_campaign(&c, Duration::from_secs(600))?;
    let wall = start.elapsed().as_secs_f64();
    let lines = view["lines"].as_array().cloned().unwrap_or_default();
    let mut dispatch: Vec<f64> = lines.iter().filter_map(|l| l["dispatch_ms"].as_f64()).collect();
    let mut turnaround: Vec<f64> =
        lines.iter().filter_map(|l| l["turnaround_ms"].as_f64()).collect();
    dispatch.sort_by(f64::total_cmp);
    turnaround.sort_by(f64::total_cmp);
    let jobs = lines.len();
    let done = lines.iter().filter(|l| l["state"] == "done").count();
    let per_device_jobs = jobs as f64 / n_agents as f64;
    let out = json!({
        "agents": n_agents,
        "jobs": jobs,
        "done": done,
        "campaign_wall_s": wall,
        "per_job_overhead_ms": wall * 1e3 / per_device_jobs,
        "dispatch_ms_p50": percentile(&dispatch, 50.0),
        "dispatch_ms_p90": percentile(&dispatch, 90.0),
        "turnaround_ms_p50": percentile(&turnaround, 50.0),
        "turnaround_ms_p90": percentile(&turnaround, 90.0),
        "agent_idle_rss_bytes": idle_rss,
        "note": "jobs run one at a time per agent; per_job_overhead_ms = wall / jobs per agent; model: 1 iteration of a tiny MatMul+Relu",
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{:<28} {:>12}", "figure", "value");
        for (k, v) in out.as_object().unwrap() {
            if k != "note" {
                println!("{k:<28} {v:>12}");
            }
        }
    }
    Ok(())
}
