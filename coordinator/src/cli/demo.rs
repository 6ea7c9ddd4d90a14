//! `coordinator demo`: the main job, end to end on embedded defaults.
//!
//! Starts a coordinator in-process (embedded rumqttd broker, SQLite in a data folder), starts
//! local `edge-agent` processes with different device profiles, registers two real models
//! (paraphrase-MiniLM-L3-v2 and Yahoo open_nsfw ResNet-50-thin, from the asset cache), runs a
//! campaign over models × devices through the HTTP API, prints the per-device table (or one
//! JSON object with `--json`), and stops the agents.
//!
//! The agents share this host, so the campaign runs one job at a time (`max_parallel = 1`):
//! concurrent benchmarks on the same cores would measure each other. Each agent emulates its
//! device profile (CPU quota from the host calibration, cpuset, memory cap) when the host grants
//! cgroup rights; otherwise its results say `unthrottled`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hone_common::bench::BenchSpec;
use serde::Serialize;

use super::Client;
use crate::api::CampaignView;
use crate::campaign::CampaignRequest;
use crate::server::{MqttMode, ServeConfig};

/// Options of `coordinator demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Data folder (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The edge-agent executable (default: `edge-agent` next to this executable).
    #[arg(long, env = "HONE_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// Device profiles of the local agents, one agent each.
    #[arg(long, value_delimiter = ',', default_value = "rpi4,rpi5,x86-vm-2core")]
    profiles: Vec<String>,
    /// Warm-up iterations per benchmark.
    #[arg(long, default_value_t = 5)]
    warmup: u32,
    /// Maximum measured iterations per benchmark.
    #[arg(long, default_value_t = 30)]
    iterations: u32,
    /// Maximum measured time per benchmark, ms.
    #[arg(long, default_value_t = 5_000)]
    max_time_ms: u64,
}

/// One (model, device) result line of the demo's JSON.
#[derive(Debug, Serialize)]
struct DemoResult {
    model: String,
    device: String,
    profile: Option<String>,
    state: String,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    mean_ms: Option<f64>,
    load_ms: Option<f64>,
    peak_rss_bytes: Option<i64>,
    iterations: Option<i64>,
    synthetic_inputs: Option<bool>,
    emulation: Option<String>,
    error: Option<String>,
}

struct Agents(Vec<tokio::process::Child>);

impl Agents {
    async fn stop(&mut self) {
        for child in &mut self.0 {
            if let Some(pid) = child.id() {
                let _ =
                    std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
        }
        for child in &mut self.0 {
            if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                let _ = child.start_kill();
            }
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn agent_bin(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let candidate = exe.with_file_name(format!("edge-agent{}", std::env::consts::EXE_SUFFIX));
    if candidate.is_file() {
        return Ok(candidate);
    }
    bail!(
        "no edge-agent next to {}: build it (`cargo build -p edge-agent`) or pass --agent-bin",
        exe.display()
    )
}

/// Runs the demo; returns the exit code.
pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    for p in &args.profiles {
        if hone_firmware_profiles::find(p).is_none() {
            bail!("unknown profile `{p}` (see `edge-agent profiles`)");
        }
    }
    let models = [
        ("paraphrase-MiniLM-L3-v2", "minilm-l3-onnx"),
        ("open-nsfw-resnet50-thin", "open-nsfw-onnx"),
    ];
    let mut model_paths = Vec::new();
    for (name, asset) in models {
        model_paths.push((name, hone_assets::path(asset)?));
    }
    let agent = agent_bin(args.agent_bin.clone())?;
    let temp;
    let data_dir = match args.data_dir.clone() {
        Some(d) => d,
        None => {
            temp = tempdir()?;
            temp.0.clone()
        }
    };
    let say = |msg: String| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    say(format!("demo: data folder {}", data_dir.display()));

    let mqtt_port = free_port()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut config =
        ServeConfig::new(data_dir.clone(), MqttMode::Embedded(([127, 0, 0, 1], mqtt_port).into()));
    config.mqtt_client_id = "hone-coordinator-demo".into();
    // The models are registered by path from the asset cache, the demo's import folder.
    config.import_dir = Some(hone_assets::cache_dir());
    let running = crate::server::start(config, listener).await?;
    let api = running.api_url();
    let token_file = data_dir.join(crate::api::auth::OPERATOR_TOKEN_FILE);
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading the operator token {}", token_file.display()))?;
    let client = Client::new(&api).with_token(Some(token.trim().to_string()));
    say(format!("demo: coordinator at {api}, embedded MQTT broker at {}", running.mqtt_url));

    let mut agents = Agents(Vec::new());
    let mut device_ids = Vec::new();
    for profile in &args.profiles {
        let id = format!("demo-{profile}");
        let state = data_dir.join("agents").join(&id);
        std::fs::create_dir_all(&state)?;
        let log = std::fs::File::create(data_dir.join("agents").join(format!("{id}.log")))?;
        let child = tokio::process::Command::new(&agent)
            .arg("run")
            .args([
                "--broker",
                &running.mqtt_url,
                "--coordinator",
                &api,
                "--device-id",
                &id,
                "--profile",
                profile,
            ])
            .arg("--state-dir")
            .arg(&state)
            .args(["--trust-key", &running.state.signer.public_hex(), "--keepalive-secs", "5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", agent.display()))?;
        agents.0.push(child);
        device_ids.push(id);
    }
    let result = drive(&client, &args, &model_paths, &device_ids, &say).await;
    agents.stop().await;
    running.shutdown().await;
    let view = result?;

    let results: Vec<DemoResult> = view
        .lines
        .iter()
        .map(|l| DemoResult {
            model: l.model.clone(),
            device: l.device.clone(),
            profile: l.profile.clone(),
            state: l.state.clone(),
            p50_ms: l.p50_ms,
            p90_ms: l.p90_ms,
            p99_ms: l.p99_ms,
            mean_ms: l.mean_ms,
            load_ms: l.load_ms,
            peak_rss_bytes: l.peak_rss_bytes,
            iterations: l.iterations,
            synthetic_inputs: l.synthetic_inputs,
            emulation: l.emulation.clone(),
            error: l.error.clone(),
        })
        .collect();
    let wall_s = started.elapsed().as_secs_f64();
    if args.json {
        let out = serde_json::json!({
            "campaign": view.id,
            "wall_seconds": wall_s,
            "broker": "embedded rumqttd",
            "database": "sqlite",
            "runtime": "tract 0.23.9",
            "note": "agents share one host and run one job at a time; each agent emulates its device profile (cgroup CPU quota scaled by the host calibration, cpuset, memory cap) where the host allows it, see `emulation`",
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        super::print_campaign(&view);
        eprintln!("demo finished in {wall_s:.1} s");
    }
    Ok(if view.progress.failed > 0 { 2 } else { 0 })
}

async fn drive(
    client: &Client,
    args: &DemoArgs,
    models: &[(&str, PathBuf)],
    devices: &[String],
    say: &dyn Fn(String),
) -> anyhow::Result<CampaignView> {
    let mut model_ids = Vec::new();
    for (name, path) in models {
        let m: serde_json::Value = client
            .post("/api/v1/models/register", &serde_json::json!({ "path": path, "name": name }))
            .await
            .with_context(|| format!("registering {name}"))?;
        say(format!("demo: registered {name} as {}", m["id"].as_str().unwrap_or("?")));
        model_ids.push(m["id"].as_str().unwrap_or_default().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list: Vec<serde_json::Value> = client.get("/api/v1/devices").await?;
        let online = devices
            .iter()
            .filter(|id| list.iter().any(|d| d["id"] == id.as_str() && d["online"] == true))
            .count();
        if online == devices.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {online} of {} agents came online within 60 s (see the agent logs in the data folder)",
                devices.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say(format!("demo: {} agents online: {}", devices.len(), devices.join(", ")));
    let req = CampaignRequest {
        id: None,
        models: model_ids,
        devices: devices.join(","),
        bench: BenchSpec {
            warmup: args.warmup,
            max_iterations: args.iterations,
            max_time_ms: args.max_time_ms,
            symbols: vec![],
            mode: Default::default(),
            inputs: Default::default(),
        },
        job_timeout_ms: 300_000,
        max_attempts: 3,
        max_parallel: Some(1),
    };
    let view: CampaignView = client.post("/api/v1/campaigns", &req).await?;
    say(format!("demo: campaign {} with {} jobs", view.id, view.progress.total));
    client.wait_campaign(&view.id, !args.json).await
}

/// A temporary directory removed on drop (no extra dependency for one use).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> anyhow::Result<TempDir> {
    let dir = std::env::temp_dir()
        .join(format!("hone-demo-{}", ulid::Ulid::new().to_string().to_lowercase()));
    std::fs::create_dir_all(&dir)?;
    Ok(TempDir(dir))
}
