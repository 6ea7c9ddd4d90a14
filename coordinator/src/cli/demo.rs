//! `coordinator demo`: the main job, end to end on embedded defaults.
//!
//! Starts a coordinator in-process (embedded rumqttd broker, SQLite in a data folder) and local
//! `edge-agent` processes, one per device class, then runs the compression loop: a real model
//! (Yahoo open_nsfw ResNet-50-thin, from the asset cache) is measured on every class, pruned
//! into a grid of candidates per class (widths rounded to each class's SIMD width), validated
//! against the parent on real photographs, and the candidates the latency predictor ranks best
//! are measured on the agents; the measurements choose a winner per class, and the HTML report
//! is written. `--exhaustive` measures every candidate; `--compare-exhaustive` runs the guided
//! search and then the exhaustive grid in one run and prints how they compare; `--campaign`
//! runs the earlier campaign-only demo (two models × three profiles, `results[]` JSON).
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
use crate::api::{CampaignView, PipelineView};
use crate::campaign::CampaignRequest;
use crate::pipeline::request::PipelineRequest;
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
    /// The campaign-only demo: two models benchmarked on three profiles, no compression.
    #[arg(long)]
    campaign: bool,
    /// Device classes of the compression demo, one local agent each.
    #[arg(long, value_delimiter = ',', default_value = "rpi4,x86-vm-2core")]
    classes: Vec<String>,
    /// Measure every candidate instead of the ones the latency predictor ranks best.
    #[arg(long)]
    exhaustive: bool,
    /// Run the guided search, then the exhaustive grid, in one run, and compare them.
    #[arg(long, conflicts_with = "exhaustive")]
    compare_exhaustive: bool,
    /// Smallest accepted top-1 agreement with the parent on the validation photos.
    #[arg(long, default_value_t = 0.9)]
    min_fidelity: f64,
    /// Latency budget, ms (the winner is then the most accurate model within it).
    #[arg(long)]
    latency_budget_ms: Option<f64>,
    /// Peak RSS budget, MiB.
    #[arg(long)]
    memory_budget_mib: Option<f64>,
    /// Pruning sparsities of the grid.
    #[arg(long, value_delimiter = ',', default_value = "0.15,0.3,0.45,0.6")]
    sparsities: Vec<f64>,
    /// Where to write the HTML report.
    #[arg(long, default_value = "hone-report.html")]
    report: PathBuf,
    /// Stop after the pipeline: do not deploy the winners.
    #[arg(long)]
    no_deploy: bool,
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

/// A coordinator and its local agents, started for the demo.
struct Fleet {
    running: crate::server::Running,
    agents: Agents,
    client: Client,
    devices: Vec<String>,
    data_dir: PathBuf,
    _temp: Option<TempDir>,
}

impl Fleet {
    async fn stop(mut self) {
        self.agents.stop().await;
        self.running.shutdown().await;
    }
}

/// Starts the coordinator (embedded broker, SQLite) and one agent per profile.
async fn start_fleet(
    args: &DemoArgs,
    profiles: &[String],
    say: &dyn Fn(String),
) -> anyhow::Result<Fleet> {
    for p in profiles {
        if hone_firmware_profiles::find(p).is_none() {
            bail!("unknown profile `{p}` (see `edge-agent profiles`)");
        }
    }
    let agent = agent_bin(args.agent_bin.clone())?;
    let (data_dir, temp) = match args.data_dir.clone() {
        Some(d) => (d, None),
        None => {
            let t = tempdir()?;
            (t.0.clone(), Some(t))
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
    let mut devices = Vec::new();
    for profile in profiles {
        let id = format!("demo-{profile}");
        let state = data_dir.join("agents").join(&id);
        std::fs::create_dir_all(&state)?;
        let log = std::fs::File::create(data_dir.join("agents").join(format!("{id}.log")))?;
        let mut cmd = tokio::process::Command::new(&agent);
        // With the fetched ONNX Runtime library, the agents measure in both runtimes.
        if let Ok(lib) = hone_assets::path("onnxruntime-lib") {
            cmd.arg("run").arg("--ort-lib").arg(lib);
        } else {
            cmd.arg("run");
        }
        let child = cmd
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
            // Agents share this host: each serves on a free port, with short telemetry windows.
            .args(["--serve-addr", "127.0.0.1:0", "--telemetry-window-s", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", agent.display()))?;
        agents.0.push(child);
        devices.push(id);
    }
    let fleet = Fleet { running, agents, client, devices, data_dir, _temp: temp };
    if let Err(e) = wait_online(&fleet.client, &fleet.devices, say).await {
        fleet.stop().await;
        return Err(e);
    }
    Ok(fleet)
}

async fn wait_online(
    client: &Client,
    devices: &[String],
    say: &dyn Fn(String),
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Runs the demo; returns the exit code.
pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    if args.campaign { run_campaign(args).await } else { run_pipeline(args).await }
}

/// The compression loop on local agents.
async fn run_pipeline(args: DemoArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let json = args.json;
    let say = |msg: String| {
        if !json {
            eprintln!("{msg}");
        }
    };
    let model = hone_assets::path("open-nsfw-onnx")?;
    // Check the data before starting anything.
    hone_learn::eval::EvalData::load("photos")?;
    let fleet = start_fleet(&args, &args.classes, &say).await?;
    let outcome = pipeline_loop(&fleet, &args, &model, &say).await;
    // The loop's last step: each class's winner deployed to its device, served and called.
    let deployed = match &outcome {
        Ok((guided, _)) if guided.state == "done" && !args.no_deploy => {
            Some(deploy_winners(&fleet, guided, agent_bin(args.agent_bin.clone()), &say).await)
        }
        _ => None,
    };
    let data_dir = fleet.data_dir.clone();
    fleet.stop().await;
    let (guided, reference) = outcome?;
    let deployed = deployed.transpose()?;
    let wall_s = started.elapsed().as_secs_f64();
    let mut result = guided.result.clone().context("the pipeline has no result")?;
    crate::pipeline::report::write(&result, &args.report)
        .with_context(|| format!("writing the report {}", args.report.display()))?;
    result.report = Some(args.report.display().to_string());
    let comparison =
        reference.as_ref().and_then(|r| r.result.as_ref()).map(|r| compare(&result, r));
    if json {
        let mut out = serde_json::to_value(&result)?;
        out["wall_seconds"] = serde_json::json!(wall_s);
        out["broker"] = "embedded rumqttd".into();
        out["database"] = "sqlite".into();
        out["runtime"] = "tract 0.23.9".into();
        out["data_folder"] = serde_json::json!(args.data_dir.as_ref().map(|_| data_dir));
        out["note"] = "agents share one host and run one job at a time; each agent emulates its device profile (cgroup CPU quota scaled by the host calibration, cpuset, memory cap) where the host allows it, see classes[].measurement; candidates are made while no measurement runs".into();
        if let Some(c) = &comparison {
            out["comparison"] = c.clone();
        }
        if let Some(d) = &deployed {
            out["deployments"] = serde_json::json!(d);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        super::pipeline::print_result(&result);
        if let Some(c) = &comparison {
            println!();
            println!(
                "guided search against the exhaustive grid (same grid, same accuracy budget):"
            );
            let pct =
                |v: &serde_json::Value| v.as_f64().map_or("-".into(), |v| format!("{v:+.1} %"));
            for class in c["classes"].as_array().into_iter().flatten() {
                println!(
                    "  {:<14} {} of {} measurements ({:.0} %); grid best {} ms; best found {} and winner {} (on the grid's measurements), winner as measured {}; predictor on {} unmeasured: {} within ±10 %, mean error {}",
                    class["class"].as_str().unwrap_or(""),
                    class["guided_measurements"],
                    class["grid_measurements"],
                    class["measurement_share"].as_f64().unwrap_or(f64::NAN) * 100.0,
                    fmt_ms(&class["grid_best_ms"]),
                    pct(&class["found_gap_pct"]),
                    pct(&class["winner_gap_pct"]),
                    pct(&class["raw_gap_pct"]),
                    class["predictor_held_out_on_grid"],
                    class["predictor_within_10pct_on_grid"]
                        .as_f64()
                        .map_or("-".into(), |v| format!("{:.0} %", v * 100.0)),
                    class["predictor_mean_abs_error_pct_on_grid"]
                        .as_f64()
                        .map_or("-".into(), |v| format!("{v:.1} %")),
                );
            }
        }
        if let Some(d) = &deployed {
            println!();
            println!("deployed winners (served over HTTP by each class's agent):");
            for x in d {
                println!(
                    "  {:<14} {:<30} {:<12} {} requests, HTTP p50 {} ms{}",
                    x["class"].as_str().unwrap_or(""),
                    x["deployment"].as_str().unwrap_or(""),
                    x["state"].as_str().unwrap_or(""),
                    x["http_requests_ok"],
                    fmt_ms(&x["http_p50_ms"]),
                    x["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()
                );
            }
        }
        eprintln!("report: {}", args.report.display());
        eprintln!("demo finished in {wall_s:.1} s");
    }
    let winners = result.classes.iter().filter(|c| c.winner.is_some()).count();
    let deployed_ok = deployed.as_ref().is_none_or(|d| d.iter().all(|x| x["state"] == "done"));
    Ok(if guided.state == "done" && winners == result.classes.len() && deployed_ok { 0 } else { 2 })
}

/// Follows the deployment the pipeline made for each class's winner (`compress --deploy`: the
/// canary is the whole class, one agent each, with probe traffic for the gate), then calls each
/// endpoint with a short load.
async fn deploy_winners(
    fleet: &Fleet,
    guided: &PipelineView,
    agent: anyhow::Result<PathBuf>,
    say: &dyn Fn(String),
) -> anyhow::Result<Vec<serde_json::Value>> {
    let agent = agent?;
    let result = guided.result.as_ref().context("the pipeline has no result")?;
    let mut out = Vec::new();
    for class in &result.classes {
        let Some(winner) = &class.winner else { continue };
        let id = format!("{}-{}", guided.id, class.class);
        let made = Instant::now();
        while fleet
            .client
            .get::<crate::api::DeploymentView>(&format!("/api/v1/deployments/{id}"))
            .await
            .is_err()
        {
            if made.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the pipeline did not deploy its {} winner (no deployment {id})",
                    class.class
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        say(format!("demo: deploying {} ({}) to class {}", winner.name, winner.model, class.class));
        let view = super::deploy::follow(&fleet.client, &id, false).await?;
        let mut line = serde_json::json!({
            "class": class.class, "deployment": id, "model": view.deployment.model_id,
            "state": view.deployment.state, "reason": view.deployment.reason,
        });
        // An application's calls: a short fixed-rate load against the agent's endpoint, binary
        // tensors (a 224x224x3 image is megabytes of JSON).
        let endpoint = fleet
            .data_dir
            .join("agents")
            .join(format!("demo-{}", class.class))
            .join("serving/endpoint");
        if view.deployment.state == "done"
            && let Ok(url) = std::fs::read_to_string(&endpoint)
        {
            let run = tokio::process::Command::new(&agent)
                .args([
                    "loadgen",
                    "--url",
                    url.trim(),
                    "--binary",
                    "--rate",
                    "2",
                    "--duration",
                    "3",
                    "--json",
                ])
                .output()
                .await;
            if let Ok(o) = run
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout)
            {
                line["endpoint"] = serde_json::json!(url.trim());
                line["http_requests_ok"] = v["rates"][0]["ok"].clone();
                line["http_p50_ms"] = v["rates"][0]["p50_ms"].clone();
            }
        }
        say(format!("demo: deployment {id}: {}", view.deployment.state));
        out.push(line);
    }
    Ok(out)
}

fn fmt_ms(v: &serde_json::Value) -> String {
    v.as_f64().map_or("-".into(), |v| format!("{v:.2}"))
}

/// Registers the parent and runs the pipeline (and the exhaustive reference when asked).
async fn pipeline_loop(
    fleet: &Fleet,
    args: &DemoArgs,
    model: &std::path::Path,
    say: &dyn Fn(String),
) -> anyhow::Result<(PipelineView, Option<PipelineView>)> {
    let client = &fleet.client;
    let m: serde_json::Value = client
        .post(
            "/api/v1/models/register",
            &serde_json::json!({
                "path": model, "name": "open-nsfw-resnet50-thin",
                "inputs": {"input:0": [1, 224, 224, 3]}
            }),
        )
        .await
        .context("registering open_nsfw")?;
    let model_id = m["id"].as_str().unwrap_or_default().to_owned();
    say(format!("demo: registered open-nsfw-resnet50-thin as {model_id}"));
    let make = |exhaustive: bool| -> anyhow::Result<PipelineRequest> {
        let mut req: PipelineRequest = serde_json::from_value(serde_json::json!({
            "model": model_id,
            "data": "photos",
            "devices": args.classes,
            "min_fidelity": args.min_fidelity,
        }))?;
        req.latency_budget_ms = args.latency_budget_ms;
        req.memory_budget_mib = args.memory_budget_mib;
        req.exhaustive = exhaustive;
        req.max_parallel = Some(1);
        req.prune_grid = Some(hone_compress::PruneGrid {
            sparsities: args.sparsities.clone(),
            ..Default::default()
        });
        req.bench.warmup = args.warmup.min(3);
        req.bench.max_iterations = args.iterations;
        req.bench.max_time_ms = args.max_time_ms.min(3_000);
        Ok(req)
    };
    let mut first = make(args.exhaustive)?;
    if !args.no_deploy {
        // `compress --deploy`: the runner deploys each class's winner when the pipeline ends.
        let mut rollout = crate::deploy::DeployRequest::new("", "");
        rollout.gate = "error_rate<=0.05".parse().map_err(anyhow::Error::msg)?;
        rollout.window_s = 5.0;
        rollout.min_requests = 5;
        rollout.probe_rps = 2;
        first.deploy = Some(rollout);
    }
    let view: PipelineView = client.post("/api/v1/pipelines", &first).await?;
    say(format!(
        "demo: pipeline {} ({})",
        view.id,
        if first.exhaustive { "exhaustive" } else { "guided" }
    ));
    let guided = super::pipeline::wait(client, &view.id, !args.json).await?;
    if guided.state != "done" || !args.compare_exhaustive {
        return Ok((guided, None));
    }
    let view: PipelineView = client.post("/api/v1/pipelines", &make(true)?).await?;
    say(format!("demo: reference pipeline {} (exhaustive: every candidate measured)", view.id));
    let reference = super::pipeline::wait(client, &view.id, !args.json).await?;
    Ok((guided, Some(reference)))
}

/// The guided search against the exhaustive grid, per class. Both runs measure the same
/// candidates (same grid, same data, same budget), so the guided choices are judged on the grid
/// run's own measurements, which removes the run-to-run spread of the emulated devices:
/// - `found_gap_pct`: the best candidate the guided search measured, as the grid measured it,
///   against the grid's best (did the search find the fastest region?);
/// - `winner_gap_pct`: the guided winner, as the grid measured it, against the grid's best;
/// - `raw_gap_pct`: the guided winner's own measurement against the grid's best (includes the
///   spread between the two runs);
/// - the guided predictor's final predictions for the candidates it did not measure, against the
///   grid's measurements of them (held out: it never learned from the grid).
fn compare(
    guided: &crate::pipeline::result::PipelineResult,
    grid: &crate::pipeline::result::PipelineResult,
) -> serde_json::Value {
    let mut classes = Vec::new();
    for g in &guided.classes {
        let Some(e) = grid.classes.iter().find(|c| c.class == g.class) else { continue };
        let on_grid: std::collections::HashMap<&str, f64> =
            e.candidates.iter().filter_map(|r| Some((r.model.as_deref()?, r.p50_ms?))).collect();
        let grid_best = e.winner.as_ref().and_then(|w| w.p50_ms);
        let gap = |x: Option<f64>| match (x, grid_best) {
            (Some(a), Some(b)) => Some((a / b - 1.0) * 100.0),
            _ => None,
        };
        let guided_winner = g.winner.as_ref();
        let winner_on_grid = guided_winner.and_then(|w| on_grid.get(w.model.as_str()).copied());
        let found = g
            .candidates
            .iter()
            .filter(|r| r.p50_ms.is_some())
            .filter_map(|r| on_grid.get(r.model.as_deref()?).copied())
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))));
        let mut errors = Vec::new();
        for row in &g.candidates {
            if row.p50_ms.is_some() {
                continue;
            }
            if let (Some(p), Some(m)) =
                (row.predicted_ms, row.model.as_deref().and_then(|m| on_grid.get(m)))
            {
                errors.push(((p - m) / m).abs());
            }
        }
        let n = errors.len();
        classes.push(serde_json::json!({
            "class": g.class,
            "grid_best_ms": grid_best,
            "guided_winner_ms": guided_winner.and_then(|w| w.p50_ms),
            "guided_winner_on_grid_ms": winner_on_grid,
            "found_gap_pct": gap(found),
            "winner_gap_pct": gap(winner_on_grid),
            "raw_gap_pct": gap(guided_winner.and_then(|w| w.p50_ms)),
            "guided_measurements": g.device_measurements,
            "grid_measurements": e.device_measurements,
            "measurement_share": g.device_measurements as f64 / e.device_measurements.max(1) as f64,
            "predictor_held_out_on_grid": n,
            "predictor_within_10pct_on_grid":
                (n > 0).then(|| errors.iter().filter(|&&x| x <= 0.10).count() as f64 / n as f64),
            "predictor_mean_abs_error_pct_on_grid":
                (n > 0).then(|| errors.iter().sum::<f64>() / n as f64 * 100.0),
        }));
    }
    serde_json::json!({ "guided": guided.pipeline, "exhaustive": grid.pipeline, "classes": classes })
}

/// The campaign-only demo: two real models on three profiles.
async fn run_campaign(args: DemoArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let models = [
        ("paraphrase-MiniLM-L3-v2", "minilm-l3-onnx"),
        ("open-nsfw-resnet50-thin", "open-nsfw-onnx"),
    ];
    let mut model_paths = Vec::new();
    for (name, asset) in models {
        model_paths.push((name, hone_assets::path(asset)?));
    }
    let json = args.json;
    let say = |msg: String| {
        if !json {
            eprintln!("{msg}");
        }
    };
    let fleet = start_fleet(&args, &args.profiles, &say).await?;
    let result = drive(&fleet.client, &args, &model_paths, &fleet.devices, &say).await;
    fleet.stop().await;
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
            runtime: Default::default(),
            threads: None,
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
