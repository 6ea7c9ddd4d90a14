//! The `coordinator` command line: `serve`, `demo`, and API clients for models, devices and
//! campaigns. Every listing takes `--json` for scripts; errors go to stderr with a non-zero exit.

pub mod graph;
pub mod learn;
pub mod prune;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hone_common::bench::BenchSpec;

use crate::api::CampaignView;
use crate::campaign::CampaignRequest;
use crate::server::{MqttMode, ServeConfig};

/// Hone coordinator: model registry, device fleet and benchmark campaigns.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator: HTTP API, MQTT (embedded broker by default) and the campaign engine.
    Serve(ServeArgs),
    /// The main job: a campaign over two real models on local agents, end to end.
    Demo(crate::demo::DemoArgs),
    /// Benchmark campaigns.
    Campaign {
        #[command(subcommand)]
        command: CampaignCmd,
    },
    /// Registered models.
    Models {
        #[command(subcommand)]
        command: ModelsCmd,
    },
    /// The device registry.
    Devices {
        #[command(subcommand)]
        command: DevicesCmd,
    },
    /// Build and train a baseline model (writes model.onnx and summary.json).
    Baseline {
        #[command(subcommand)]
        command: crate::cli::learn::BaselineCmd,
    },
    /// Accuracy of a model on a data set, or its fidelity against a reference, run by tract.
    Eval(crate::cli::learn::EvalArgs),
    /// Forward-only speed of the candle executor against tract on one model and real inputs.
    ExecBench(crate::cli::learn::ExecBenchArgs),
    /// Train an ONNX model on a data set with a loss (cross-entropy, mse or cosine).
    Train(crate::cli::learn::TrainArgs),
    /// Structured pruning: remove whole neurons, channels and heads; measure the speedup in tract.
    Prune(crate::cli::prune::PruneArgs),
    /// Fold constant and static-shape subgraphs into initializers (no data, no retraining).
    Fold(crate::cli::graph::FoldArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Data folder (SQLite database, artifacts, signing key).
    #[arg(long, env = "HONE_DATA_DIR", default_value = "hone-data")]
    data_dir: PathBuf,
    /// Database URL (default: SQLite in the data folder), e.g. postgres://user@127.0.0.1/hone.
    #[arg(long, env = "HONE_DATABASE_URL")]
    database_url: Option<String>,
    /// Use this MQTT broker instead of the embedded one, e.g. mqtt://127.0.0.1:1883.
    #[arg(long, env = "HONE_MQTT_URL")]
    mqtt_url: Option<String>,
    /// Address of the embedded broker.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: SocketAddr,
    /// MQTT client id of the coordinator (stable: the broker keeps its session).
    #[arg(long, default_value = "hone-coordinator")]
    mqtt_client_id: String,
    /// Base URL agents download artifacts from (default: the API address).
    #[arg(long)]
    public_url: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// Coordinator API base URL.
    #[arg(long, env = "HONE_API", default_value = "http://127.0.0.1:7878")]
    api: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum CampaignCmd {
    /// Start a campaign over models × devices.
    Start {
        #[command(flatten)]
        api: ApiArgs,
        /// Models: ids, names or digest prefixes, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<String>,
        /// `all`, `profile:NAME` or comma-separated device ids.
        #[arg(long, default_value = "all")]
        devices: String,
        /// Client-chosen campaign id (makes the call idempotent).
        #[arg(long)]
        id: Option<String>,
        /// Warm-up iterations.
        #[arg(long, default_value_t = 5)]
        warmup: u32,
        /// Maximum measured iterations.
        #[arg(long, default_value_t = 100)]
        iterations: u32,
        /// Maximum measured time per benchmark, ms.
        #[arg(long, default_value_t = 10_000)]
        max_time_ms: u64,
        /// Time allowed for one attempt, ms.
        #[arg(long, default_value_t = 300_000)]
        job_timeout_ms: u64,
        /// Dispatches per job before it fails.
        #[arg(long, default_value_t = 3)]
        max_attempts: u32,
        /// Fleet-wide limit on concurrent jobs (1 = one at a time, for agents sharing a host).
        #[arg(long)]
        max_parallel: Option<u32>,
        /// Measurement mode: single, sustained, cold or throughput.
        #[arg(long, default_value = "single")]
        mode: String,
        /// Length of a sustained run, seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Batch sizes of a throughput run.
        #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
        batch_sizes: Vec<u32>,
        /// Wait for the campaign to finish, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Show a campaign: one line per (model, device).
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// Campaign id.
        id: String,
    },
    /// List campaigns.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCmd {
    /// Register an ONNX model (uploaded to the coordinator; refused if tract cannot load it).
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// ONNX file.
        path: PathBuf,
        /// Name (default: the file stem).
        #[arg(long)]
        name: Option<String>,
    },
    /// List models.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCmd {
    /// List devices.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("coordinator=info,rumqttd=off,warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

async fn dispatch(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Campaign { command } => campaign(command).await,
        Command::Models { command } => models(command).await,
        Command::Baseline { command } => crate::cli::learn::baseline(command).await,
        Command::Prune(args) => crate::cli::prune::run(args).await,
        Command::Eval(args) => crate::cli::learn::eval(args).await,
        Command::ExecBench(args) => crate::cli::learn::run_exec_bench(args).await,
        Command::Train(args) => crate::cli::learn::train(args).await,
        Command::Fold(args) => crate::cli::graph::run(args).await,
        Command::Devices { command: DevicesCmd::List { api } } => {
            let devices: serde_json::Value = Client::new(&api.api).get("/api/v1/devices").await?;
            if api.json {
                print_json(&devices);
            } else {
                println!(
                    "{:<24} {:<8} {:<8} {:>5} {:>9} {:<20} {:<8}",
                    "device", "status", "arch", "cores", "mem GiB", "profile", "version"
                );
                for d in devices.as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:<8} {:<8} {:>5} {:>9.1} {:<20} {:<8}",
                        d["id"].as_str().unwrap_or(""),
                        if d["online"].as_bool() == Some(true) { "online" } else { "offline" },
                        d["arch"].as_str().unwrap_or(""),
                        d["cores"],
                        d["memory_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
                        d["profile"].as_str().unwrap_or("-"),
                        d["agent_version"].as_str().unwrap_or(""),
                    );
                }
            }
            Ok(0)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let mqtt = match args.mqtt_url {
        Some(url) => MqttMode::External(url),
        None => MqttMode::Embedded(args.mqtt_listen),
    };
    let mut config = ServeConfig::new(args.data_dir, mqtt);
    config.database_url = args.database_url;
    config.public_url = args.public_url;
    config.mqtt_client_id = args.mqtt_client_id;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let running = crate::server::start(config, listener).await?;
    eprintln!("coordinator listening on {} (MQTT {})", running.api_url(), running.mqtt_url);
    eprintln!("trust key for agents: {}", running.state.signer.public_hex());
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; }
        _ = terminate() => {}
    }
    eprintln!("shutting down");
    running.shutdown().await;
    Ok(0)
}

async fn terminate() {
    #[cfg(unix)]
    {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}

/// A small JSON client of the coordinator API.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:7878`).
    pub fn new(base: &str) -> Client {
        Client { base: base.trim_end_matches('/').to_string(), http: reqwest::Client::new() }
    }

    async fn check(&self, resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        bail!("{}: {}", status, body["error"].as_str().unwrap_or("request failed"))
    }

    /// GET a JSON document.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {url}"))?;
        Ok(self.check(resp).await?.json().await?)
    }

    /// POST JSON, read JSON.
    pub async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .post(&url)
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {url}"))?;
        Ok(self.check(resp).await?.json().await?)
    }

    /// Uploads a model file.
    pub async fn upload_model(
        &self,
        path: &std::path::Path,
        name: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let url = format!("{}/api/v1/models", self.base);
        let body = reqwest::Body::wrap_stream(tokio_util_stream(file));
        let resp = self
            .http
            .post(&url)
            .query(&[("name", name)])
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {url}"))?;
        Ok(self.check(resp).await?.json().await?)
    }

    /// Waits for a campaign to finish, drawing progress on stderr; returns the final view.
    pub async fn wait_campaign(&self, id: &str, progress: bool) -> anyhow::Result<CampaignView> {
        let tty = progress && std::io::stderr().is_terminal();
        let mut bars = ProgressView::new(tty);
        loop {
            let view: CampaignView = self.get(&format!("/api/v1/campaigns/{id}")).await?;
            if progress {
                bars.update(&view);
            }
            if view.state == "done" {
                bars.finish();
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 16];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

/// Progress: one bar per device on a terminal, plain lines otherwise.
struct ProgressView {
    tty: bool,
    multi: Option<indicatif::MultiProgress>,
    bars: std::collections::BTreeMap<String, indicatif::ProgressBar>,
    last_plain: String,
}

impl ProgressView {
    fn new(tty: bool) -> ProgressView {
        ProgressView {
            tty,
            multi: tty.then(indicatif::MultiProgress::new),
            bars: Default::default(),
            last_plain: String::new(),
        }
    }

    fn update(&mut self, view: &CampaignView) {
        if let Some(multi) = &self.multi {
            let mut per_device: std::collections::BTreeMap<&str, (u64, u64, String)> =
                Default::default();
            for l in &view.lines {
                let e = per_device.entry(l.device.as_str()).or_default();
                e.1 += 1;
                if l.state == "done" || l.state == "failed" {
                    e.0 += 1;
                } else if l.state != "queued" && e.2.is_empty() {
                    e.2 = format!("{} {}", l.state, l.model);
                }
            }
            for (device, (done, total, current)) in per_device {
                let bar = self.bars.entry(device.to_string()).or_insert_with(|| {
                    let b = multi.add(indicatif::ProgressBar::new(total));
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix:>20} [{bar:30}] {pos}/{len} {msg}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    b.set_prefix(device.to_string());
                    b
                });
                bar.set_position(done);
                bar.set_message(current);
            }
        } else {
            let p = &view.progress;
            let line = format!(
                "campaign {}: {}/{} done, {} failed, {} running, {} queued",
                view.id,
                p.done,
                p.total,
                p.failed,
                p.running + p.dispatched,
                p.queued
            );
            if line != self.last_plain {
                eprintln!("{line}");
                self.last_plain = line;
            }
        }
    }

    fn finish(&mut self) {
        if self.tty {
            for bar in self.bars.values() {
                bar.finish();
            }
        }
    }
}

async fn campaign(cmd: CampaignCmd) -> anyhow::Result<i32> {
    match cmd {
        CampaignCmd::Start {
            api,
            models,
            devices,
            id,
            warmup,
            iterations,
            max_time_ms,
            job_timeout_ms,
            max_attempts,
            max_parallel,
            mode,
            seconds,
            batch_sizes,
            wait,
        } => {
            let mode = match mode.as_str() {
                "single" => hone_common::bench::BenchMode::Single,
                "sustained" => hone_common::bench::BenchMode::Sustained { seconds },
                "cold" => hone_common::bench::BenchMode::Cold,
                "throughput" => hone_common::bench::BenchMode::Throughput { batch_sizes },
                other => bail!("unknown mode `{other}`: single, sustained, cold or throughput"),
            };
            let client = Client::new(&api.api);
            let req = CampaignRequest {
                id,
                models,
                devices,
                bench: BenchSpec {
                    warmup,
                    max_iterations: iterations,
                    max_time_ms,
                    symbols: vec![],
                    mode,
                    inputs: Default::default(),
                },
                job_timeout_ms,
                max_attempts,
                max_parallel,
            };
            let view: CampaignView = client.post("/api/v1/campaigns", &req).await?;
            if !api.json {
                eprintln!("campaign {} started: {} jobs", view.id, view.progress.total);
            }
            let view = if wait { client.wait_campaign(&view.id, !api.json).await? } else { view };
            if api.json {
                print_json(&serde_json::to_value(&view)?);
            } else if wait {
                print_campaign(&view);
            } else {
                println!("{}", view.id);
            }
            Ok(if wait && view.progress.failed > 0 { 2 } else { 0 })
        }
        CampaignCmd::Show { api, id } => {
            let view: CampaignView =
                Client::new(&api.api).get(&format!("/api/v1/campaigns/{id}")).await?;
            if api.json {
                print_json(&serde_json::to_value(&view)?);
            } else {
                print_campaign(&view);
            }
            Ok(0)
        }
        CampaignCmd::List { api } => {
            let list: Vec<CampaignView> = Client::new(&api.api).get("/api/v1/campaigns").await?;
            if api.json {
                print_json(&serde_json::to_value(&list)?);
            } else {
                println!(
                    "{:<32} {:<8} {:>6} {:>6} {:>6}",
                    "campaign", "state", "jobs", "done", "failed"
                );
                for c in list {
                    println!(
                        "{:<32} {:<8} {:>6} {:>6} {:>6}",
                        c.id, c.state, c.progress.total, c.progress.done, c.progress.failed
                    );
                }
            }
            Ok(0)
        }
    }
}

/// Prints the per-(model, device) table of a campaign.
pub fn print_campaign(view: &CampaignView) {
    println!(
        "campaign {} ({}): {}/{} done, {} failed",
        view.id, view.state, view.progress.done, view.progress.total, view.progress.failed
    );
    println!(
        "{:<28} {:<20} {:<22} {:<7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "model",
        "device",
        "profile",
        "state",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean ms",
        "load ms",
        "RSS MiB",
        "iters"
    );
    let f = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    for l in &view.lines {
        println!(
            "{:<28} {:<20} {:<22} {:<7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
            truncate(&l.model, 28),
            truncate(&l.device, 20),
            truncate(l.profile.as_deref().unwrap_or("-"), 22),
            l.state,
            f(l.p50_ms),
            f(l.p90_ms),
            f(l.p99_ms),
            f(l.mean_ms),
            f(l.load_ms),
            f(l.peak_rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0))),
            l.iterations.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        );
        if let Some(e) = &l.error {
            println!("    error: {e}");
        }
        if let Some(em) = l.emulation.as_deref().filter(|e| e.starts_with("unthrottled")) {
            println!("    {em}");
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

async fn models(cmd: ModelsCmd) -> anyhow::Result<i32> {
    match cmd {
        ModelsCmd::Add { api, path, name } => {
            let name = name.unwrap_or_else(|| {
                path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
            });
            let model = Client::new(&api.api).upload_model(&path, &name).await?;
            if api.json {
                print_json(&model);
            } else {
                println!(
                    "{} {} ({} bytes, sha256 {})",
                    model["id"].as_str().unwrap_or(""),
                    model["name"].as_str().unwrap_or(""),
                    model["size_bytes"],
                    model["sha256"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        ModelsCmd::List { api } => {
            let list: serde_json::Value = Client::new(&api.api).get("/api/v1/models").await?;
            if api.json {
                print_json(&list);
            } else {
                println!(
                    "{:<20} {:<32} {:>12} {:>10} {:>6}",
                    "id", "name", "bytes", "params", "opset"
                );
                for m in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:<32} {:>12} {:>10} {:>6}",
                        m["id"].as_str().unwrap_or(""),
                        m["name"].as_str().unwrap_or(""),
                        m["size_bytes"],
                        m["summary"]["params"],
                        m["summary"]["opset"]
                    );
                }
            }
            Ok(0)
        }
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
