//! The `edge-agent` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hone_common::bench::{BenchReport, BenchSpec, coefficient_of_variation};

use crate::config::{AgentConfig, default_device_id, parse_trust_key};

/// Hone edge agent: benchmarks models for the Hone coordinator on this device.
#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to the broker and serve benchmark jobs until interrupted.
    Run(RunArgs),
    /// Benchmark one ONNX model locally, without a coordinator.
    Bench(BenchArgs),
    /// List the built-in device profiles.
    Profiles {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Internal: run one benchmark and print its outcome as JSON (used by the agent itself).
    #[command(hide = true)]
    BenchChild {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        spec: String,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// MQTT broker, e.g. mqtt://127.0.0.1:1883.
    #[arg(long, env = "HONE_BROKER")]
    broker: String,
    /// Coordinator base URL, e.g. http://127.0.0.1:7878.
    #[arg(long, env = "HONE_COORDINATOR")]
    coordinator: String,
    /// Device profile name (see `edge-agent profiles`).
    #[arg(long)]
    profile: Option<String>,
    /// Device id (default: the host name).
    #[arg(long)]
    device_id: Option<String>,
    /// Durable state directory (outbox, model store, pinned key).
    #[arg(long, env = "HONE_AGENT_STATE", default_value = "/var/lib/hone-agent")]
    state_dir: PathBuf,
    /// MQTT keepalive in seconds (at least 1).
    #[arg(long, default_value_t = 30)]
    keepalive_secs: u64,
    /// Coordinator public key (hex, or @file). Without it the key is fetched once and pinned.
    #[arg(long, env = "HONE_TRUST_KEY")]
    trust_key: Option<String>,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// ONNX model to benchmark.
    #[arg(long)]
    model: PathBuf,
    /// Warm-up iterations (not measured).
    #[arg(long, default_value_t = 5)]
    warmup: u32,
    /// Maximum measured iterations.
    #[arg(long, default_value_t = 100)]
    iterations: u32,
    /// Maximum measured time in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    max_time_ms: u64,
    /// Value of a symbolic input dimension, NAME=VALUE (repeatable).
    #[arg(long = "symbol", value_parser = parse_symbol)]
    symbols: Vec<(String, u64)>,
    /// Run the benchmark N times, each in a fresh process, and report the spread of p50.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Kill a benchmark process after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_symbol(s: &str) -> Result<(String, u64), String> {
    let (name, value) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    let value = value.parse::<u64>().map_err(|_| format!("`{value}` is not a positive integer"))?;
    if value == 0 {
        return Err("a dimension must be at least 1".into());
    }
    Ok((name.to_string(), value))
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if let Command::BenchChild { model, spec } = &cli.command {
        return crate::bench::child_main(model, spec);
    }
    init_tracing();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return 1;
            }
        };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("edge_agent=info,warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

async fn dispatch(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Run(args) => {
            let config = run_config(args)?;
            crate::agent::run(config, shutdown_signal()).await?;
            Ok(0)
        }
        Command::Bench(args) => bench(args).await,
        Command::Profiles { json } => {
            profiles(json);
            Ok(0)
        }
        Command::BenchChild { .. } => unreachable!("handled before the runtime starts"),
    }
}

fn run_config(args: RunArgs) -> anyhow::Result<AgentConfig> {
    let (broker_host, broker_port) =
        hone_common::parse_mqtt_url(&args.broker).map_err(anyhow::Error::msg)?;
    let device_id = args.device_id.unwrap_or_else(default_device_id);
    hone_common::validate_device_id(&device_id).map_err(anyhow::Error::msg)?;
    if let Some(p) = &args.profile
        && hone_firmware_profiles::find(p).is_none()
    {
        let names: Vec<&str> =
            hone_firmware_profiles::builtin().iter().map(|p| p.name.as_str()).collect();
        anyhow::bail!("unknown profile `{p}`; known profiles: {}", names.join(", "));
    }
    if args.keepalive_secs == 0 {
        anyhow::bail!("--keepalive-secs must be at least 1");
    }
    let trust_key = args.trust_key.as_deref().map(parse_trust_key).transpose()?;
    Ok(AgentConfig {
        device_id,
        broker_host,
        broker_port,
        coordinator_url: args.coordinator,
        profile: args.profile,
        state_dir: args.state_dir,
        keepalive: Duration::from_secs(args.keepalive_secs),
        trust_key,
        bench_exe: std::env::current_exe().context("locating the agent executable")?,
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[derive(serde::Serialize)]
struct BenchOutput {
    model: String,
    outcome: &'static str,
    reason: Option<String>,
    runs: Vec<BenchReport>,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    mean_ms: Option<f64>,
    load_ms: Option<f64>,
    peak_rss_bytes: Option<u64>,
    iterations: Option<u32>,
    p50_cv: Option<f64>,
}

async fn bench(args: BenchArgs) -> anyhow::Result<i32> {
    if !args.model.is_file() {
        anyhow::bail!("model file {} does not exist", args.model.display());
    }
    let spec = BenchSpec {
        warmup: args.warmup,
        max_iterations: args.iterations.max(1),
        max_time_ms: args.max_time_ms,
        symbols: args.symbols.clone(),
    };
    let exe = std::env::current_exe().context("locating the agent executable")?;
    let mut runs = Vec::new();
    let mut failure = None;
    for _ in 0..args.repeat.max(1) {
        match crate::bench::run_in_child(
            &exe,
            &args.model,
            &spec,
            Duration::from_secs(args.timeout_secs),
        )
        .await
        {
            Ok(r) => runs.push(r),
            Err(f) => {
                failure = Some(f);
                break;
            }
        }
    }
    let p50s: Vec<f64> = runs.iter().map(|r| r.latency.p50_ms).collect();
    let first = runs.first();
    let out = BenchOutput {
        model: args.model.display().to_string(),
        outcome: failure.as_ref().map(|(k, _)| k.as_str()).unwrap_or("ok"),
        reason: failure.as_ref().map(|(_, r)| r.clone()),
        p50_ms: first.map(|r| r.latency.p50_ms),
        p90_ms: first.map(|r| r.latency.p90_ms),
        p99_ms: first.map(|r| r.latency.p99_ms),
        mean_ms: first.map(|r| r.latency.mean_ms),
        load_ms: first.map(|r| r.load_ms),
        peak_rss_bytes: first.map(|r| r.peak_rss_bytes),
        iterations: first.map(|r| r.iterations),
        p50_cv: if p50s.len() > 1 { coefficient_of_variation(&p50s) } else { None },
        runs,
    };
    #[allow(clippy::print_stdout)]
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if let Some((kind, reason)) = &failure {
        println!("{}: {} ({reason})", out.model, kind.as_str());
    } else {
        println!(
            "{:<5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>6}",
            "run", "p50 ms", "p90 ms", "p99 ms", "mean ms", "load ms", "peak RSS MiB", "iters"
        );
        for (i, r) in out.runs.iter().enumerate() {
            println!(
                "{:<5} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.1} {:>12.1} {:>6}",
                i + 1,
                r.latency.p50_ms,
                r.latency.p90_ms,
                r.latency.p99_ms,
                r.latency.mean_ms,
                r.load_ms,
                r.peak_rss_bytes as f64 / (1024.0 * 1024.0),
                r.iterations
            );
        }
        if let Some(cv) = out.p50_cv {
            println!(
                "p50 coefficient of variation over {} runs: {:.2} %",
                out.runs.len(),
                cv * 100.0
            );
        }
        if let Some(r) = out.runs.first() {
            println!("inputs (synthetic={}): {}", r.synthetic_inputs, r.inputs.join("; "));
        }
    }
    Ok(if failure.is_some() { 2 } else { 0 })
}

fn profiles(json: bool) {
    let all = hone_firmware_profiles::builtin();
    #[allow(clippy::print_stdout)]
    if json {
        let list: Vec<serde_json::Value> = all
            .iter()
            .map(|p| serde_json::json!({ "name": p.name, "summary": p.summary() }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
    } else {
        for p in all {
            println!("{}", p.summary());
        }
    }
}
