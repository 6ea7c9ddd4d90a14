//! The `edge-agent` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hone_common::bench::{
    BenchMode, BenchReport, BenchSpec, EmulationStatus, coefficient_of_variation,
};
use hone_common::shapes::InputShapes;

use crate::throttle::cgroup::Cgroups;

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
    /// Enrol with a TLS coordinator using a one-time token: generate this device's key, get
    /// its certificate (docs/install.md).
    Enroll(EnrollArgs),
    /// Benchmark one ONNX model locally, without a coordinator.
    Bench(BenchArgs),
    /// List the built-in device profiles.
    Profiles {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run one inference on the benchmark's synthetic inputs and print every output as JSON
    /// (to compare runtimes and architectures).
    Infer {
        /// ONNX model.
        #[arg(long)]
        model: PathBuf,
        /// Value of a symbolic input dimension, NAME=VALUE (repeatable).
        #[arg(long = "symbol", value_parser = parse_symbol)]
        symbols: Vec<(String, u64)>,
        /// Shape of an input, NAME=1x3x224x224 (repeatable, or comma-separated).
        #[arg(long = "input", value_parser = parse_input)]
        inputs: Vec<String>,
    },
    /// Multiply-accumulates and parameters of a model (tract's cost model), as JSON.
    Inspect {
        /// ONNX model.
        #[arg(long)]
        model: PathBuf,
        /// Value of a symbolic input dimension, NAME=VALUE (repeatable).
        #[arg(long = "symbol", value_parser = parse_symbol)]
        symbols: Vec<(String, u64)>,
        /// Shape of an input, NAME=1x3x224x224 (repeatable, or comma-separated).
        #[arg(long = "input", value_parser = parse_input)]
        inputs: Vec<String>,
    },
    /// Measure this host's speed (tract matmul GFLOP/s, memory bandwidth) for profile emulation.
    /// Cached once per host; agents on the host share it.
    Calibrate {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Measure in this process, ignoring and leaving the host cache alone.
        #[arg(long)]
        no_cache: bool,
        /// Also measure (or show the cached) CPU-quota correction for this performance ratio,
        /// e.g. 0.5 for a profile at half this host's per-core speed.
        #[arg(long, conflicts_with = "no_cache")]
        ratio: Option<f64>,
        /// Host-wide calibration cache and lock.
        #[arg(long, env = "HONE_CALIBRATION_DIR", default_value_os_t = crate::calibrate::default_dir())]
        calibration_dir: PathBuf,
    },
    /// Check this device for the agent: cgroups, thermal sensors, clock control, the broker
    /// (an MQTT handshake), the coordinator (health, key, clock skew), transport, disk, ONNX
    /// Runtime. Exits 1 when a check fails.
    Doctor(DoctorArgs),
    /// Internal: the fixed matmul workload of the quota correction.
    #[command(hide = true)]
    CalibrateProbe {
        #[arg(long)]
        iterations: u32,
    },
    /// Drive a KServe v2 inference server with open-loop load at fixed rates and report the
    /// latency percentiles per rate.
    Loadgen(LoadgenArgs),
    /// Internal: serve models over HTTP (KServe v2), controlled by JSON lines on stdin.
    #[command(hide = true)]
    ServeChild(ServeChildArgs),
    /// Internal: run one benchmark and print its outcome as JSON (used by the agent itself).
    #[command(hide = true)]
    BenchChild {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        spec: String,
        #[arg(long)]
        wait_go: bool,
        #[arg(long)]
        rlimit_as: Option<u64>,
        #[arg(long)]
        cpus: Option<u32>,
        #[arg(long)]
        ort_lib: Option<PathBuf>,
    },
    /// Internal: load ONNX Runtime from a library and print its version (or why not) as JSON.
    #[command(hide = true)]
    OrtProbe {
        #[arg(long)]
        lib: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct EnrollArgs {
    /// Coordinator base URL, https://host:port.
    #[arg(long, env = "HONE_COORDINATOR")]
    coordinator: String,
    /// The one-time enrolment token (`coordinator devices token`). Prefer the environment
    /// variable: a command line is visible to every user of the host.
    #[arg(long, env = "HONE_ENROL_TOKEN", hide_env_values = true)]
    token: String,
    /// SHA-256 of the coordinator's CA certificate, as `coordinator devices token` prints it:
    /// the agent refuses a coordinator that presents another CA.
    #[arg(long, env = "HONE_CA_SHA256")]
    ca_sha256: String,
    /// Device id to ask for (default: the host name); a token bound to a device decides.
    #[arg(long, env = "HONE_DEVICE_ID")]
    device_id: Option<String>,
    /// The agent's state folder.
    #[arg(long, env = "HONE_AGENT_STATE", default_value = "/var/lib/hone-agent")]
    state_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct DoctorArgs {
    /// MQTT broker URL, as given to `run`.
    #[arg(long, env = "HONE_BROKER")]
    broker: Option<String>,
    /// Coordinator API base URL, as given to `run`.
    #[arg(long, env = "HONE_COORDINATOR")]
    coordinator: Option<String>,
    /// The agent's state folder (its pinned coordinator key, its models).
    #[arg(long, env = "HONE_AGENT_STATE", default_value = "/var/lib/hone-agent")]
    state_dir: PathBuf,
    /// ONNX Runtime shared library, as given to `run`.
    #[arg(long, env = "HONE_ORT_LIB")]
    ort_lib: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Read sensors and clocks under this folder instead of /sys (tests).
    #[arg(long, hide = true, default_value = "/sys")]
    sysfs: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ServeChildArgs {
    /// Address to listen on, IP:PORT (port 0: any free port, reported on stdout).
    #[arg(long)]
    listen: String,
    /// File holding the bearer token clients must send (required off loopback).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Inferences that run at once.
    #[arg(long, default_value_t = 1)]
    max_concurrency: usize,
    /// Requests that may wait for a free slot; more are answered 503.
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Telemetry window, ms.
    #[arg(long, default_value_t = 10_000)]
    window_ms: u64,
    #[arg(long)]
    wait_go: bool,
    #[arg(long)]
    rlimit_as: Option<u64>,
    #[arg(long)]
    cpus: Option<u32>,
}

#[derive(Debug, clap::Args)]
struct LoadgenArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// Model name (requests go to /v2/models/NAME/infer; without it to /v1/infer).
    #[arg(long)]
    model: Option<String>,
    /// Target rate, requests per second.
    #[arg(long, conflicts_with = "rates", required_unless_present = "rates")]
    rate: Option<f64>,
    /// Several target rates, run in turn, e.g. 5,10,20.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Seconds per rate.
    #[arg(long)]
    duration: f64,
    /// Requests in flight at most; more scheduled requests are dropped (and counted).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// File holding the bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// JSON lines, each a full KServe v2 request body, sent round-robin (default: synthetic
    /// inputs from the model's metadata).
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Send tensors with the binary-data extension.
    #[arg(long)]
    binary: bool,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Single,
    Sustained,
    Cold,
    Throughput,
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
    #[arg(long, env = "HONE_PROFILE")]
    profile: Option<String>,
    /// Device profile from a TOML file (see firmware-profiles/profiles/rpi4.toml).
    #[arg(long, env = "HONE_PROFILE_FILE", conflicts_with = "profile")]
    profile_file: Option<PathBuf>,
    /// This is the profiled device itself: read temperatures and clocks, emulate nothing.
    #[arg(long, env = "HONE_NATIVE")]
    native: bool,
    /// Speed-up of the thermal model in sustained runs (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    thermal_time_scale: f64,
    /// Device id (default: the host name).
    #[arg(long, env = "HONE_DEVICE_ID")]
    device_id: Option<String>,
    /// Durable state directory (outbox, model store, pinned key).
    #[arg(long, env = "HONE_AGENT_STATE", default_value = "/var/lib/hone-agent")]
    state_dir: PathBuf,
    /// MQTT keepalive in seconds (at least 1).
    #[arg(long, default_value_t = 30)]
    keepalive_secs: u64,
    /// Coordinator public key (hex, or @file), as `coordinator serve` prints it. Required on
    /// the first start unless --trust-on-first-use is given; it is pinned in the state folder.
    #[arg(long, env = "HONE_TRUST_KEY")]
    trust_key: Option<String>,
    /// Without --trust-key and without a pinned key: fetch the coordinator's key once over
    /// plain HTTP and pin it. Anyone on the path could substitute theirs; use only on a network
    /// you trust.
    #[arg(long, env = "HONE_TRUST_ON_FIRST_USE", conflicts_with = "trust_key")]
    trust_on_first_use: bool,
    /// Host-wide calibration cache and lock, shared by every agent on this host.
    #[arg(long, env = "HONE_CALIBRATION_DIR", default_value_os_t = crate::calibrate::default_dir())]
    calibration_dir: PathBuf,
    /// Where the deployed model is served to local applications (Open Inference Protocol,
    /// KServe v2). Port 0 picks a free port, written to `{state-dir}/serving/endpoint`. Beyond
    /// loopback, --serve-token-file is required.
    #[arg(long, env = "HONE_SERVE_ADDR", default_value = "127.0.0.1:8500")]
    serve_addr: String,
    /// Do not serve: the agent only benchmarks, and refuses deployments.
    #[arg(long, conflicts_with = "serve_addr")]
    no_serve: bool,
    /// File holding the bearer token applications must send to the serving endpoint.
    #[arg(long, env = "HONE_SERVE_TOKEN_FILE")]
    serve_token_file: Option<PathBuf>,
    /// Inferences served at once.
    #[arg(long, default_value_t = 1)]
    serve_concurrency: u32,
    /// Requests that may wait for an inference slot; more are answered 503.
    #[arg(long, default_value_t = 16)]
    serve_queue: u32,
    /// Telemetry window, seconds.
    #[arg(long, default_value_t = 10.0)]
    telemetry_window_s: f64,
    /// Under an emulated profile, serve along the profile's thermal model (as in `sustained`
    /// benchmarks, sped up by --thermal-time-scale).
    #[arg(long)]
    serve_thermal: bool,
    /// ONNX Runtime's shared library (`libonnxruntime.so.1.31.1` from the onnxruntime==1.31.1
    /// wheel): the agent then measures in ONNX Runtime too when a job asks. Without it, or if
    /// it does not load, the agent says why in its status and runs tract jobs only.
    #[arg(long, env = "HONE_ORT_LIB")]
    ort_lib: Option<PathBuf>,
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
    /// Value of a named symbolic input dimension, NAME=VALUE (repeatable).
    #[arg(long = "symbol", value_parser = parse_symbol)]
    symbols: Vec<(String, u64)>,
    /// Shape of an input, NAME=1x3x224x224 (repeatable, or comma-separated); needed for inputs
    /// with unnamed dynamic axes (`-1`, `?`) other than a leading batch.
    #[arg(long = "input", value_parser = parse_input)]
    inputs: Vec<String>,
    /// Run the benchmark N times, each in a fresh process, and report the spread of p50.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Kill a benchmark process after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Device profile to emulate (see `edge-agent profiles`).
    #[arg(long)]
    profile: Option<String>,
    /// Device profile from a TOML file.
    #[arg(long, conflicts_with = "profile")]
    profile_file: Option<PathBuf>,
    /// Measurement mode.
    #[arg(long, value_enum, default_value = "single")]
    mode: ModeArg,
    /// Length of a sustained run, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// Batch sizes of a throughput run.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    batch_sizes: Vec<u32>,
    /// Speed-up of the thermal model in sustained runs (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    thermal_time_scale: f64,
    /// Memory cap in MiB instead of the profile's.
    #[arg(long)]
    memory_limit_mib: Option<u64>,
    /// This is the profiled device itself: emulate nothing.
    #[arg(long)]
    native: bool,
    /// Host-wide calibration cache and lock.
    #[arg(long, env = "HONE_CALIBRATION_DIR", default_value_os_t = crate::calibrate::default_dir())]
    calibration_dir: PathBuf,
    /// Runtimes to measure in, side by side (`tract`, `ort`, or `tract,ort`); with several,
    /// their runs alternate.
    #[arg(long, value_delimiter = ',', default_value = "tract")]
    runtime: Vec<hone_common::bench::Runtime>,
    /// ONNX Runtime's shared library (for `--runtime ort`).
    #[arg(long, env = "HONE_ORT_LIB")]
    ort_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (default: the profile's cores, or this host's).
    #[arg(long)]
    threads: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_symbol(s: &str) -> Result<(String, u64), String> {
    let (name, value) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    if hone_common::shapes::is_unnamed(name) {
        return Err(format!(
            "`{name}` is not a symbol name: unnamed dimensions (`?`, `-1`) are separate per \
             axis; give the input's whole shape with --input NAME=1x3x224x224"
        ));
    }
    let value = value.parse::<u64>().map_err(|_| format!("`{value}` is not a positive integer"))?;
    if value == 0 {
        return Err("a dimension must be at least 1".into());
    }
    Ok((name.to_string(), value))
}

/// Checks one `--input` value (the values are merged by [`input_shapes`]).
fn parse_input(s: &str) -> Result<String, String> {
    InputShapes::parse(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

/// Every `--input` value as one set; an input given twice is an error.
fn input_shapes(values: &[String]) -> anyhow::Result<InputShapes> {
    InputShapes::parse_all(values).map_err(|e| anyhow::anyhow!("--input: {e}"))
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if let Command::BenchChild { model, spec, wait_go, rlimit_as, cpus, ort_lib } = &cli.command {
        let opts =
            crate::bench::ChildOptions { wait_go: *wait_go, rlimit_as: *rlimit_as, cpus: *cpus };
        return crate::bench::child_main(model, spec, ort_lib.as_deref(), &opts);
    }
    if let Command::OrtProbe { lib } = &cli.command {
        return crate::bench::ort_probe_main(lib);
    }
    if let Command::ServeChild(a) = &cli.command {
        return crate::serve::child_main(&crate::serve::ServeArgs {
            listen: a.listen.clone(),
            token_file: a.token_file.clone(),
            max_concurrency: a.max_concurrency,
            max_queue: a.max_queue,
            max_body_bytes: a.max_body_bytes,
            window_ms: a.window_ms,
            process: crate::bench::ChildOptions {
                wait_go: a.wait_go,
                rlimit_as: a.rlimit_as,
                cpus: a.cpus,
            },
        });
    }
    if let Command::CalibrateProbe { iterations } = &cli.command {
        return crate::calibrate::probe_main(*iterations);
    }
    let entry =
        hone_process::Entry { default_filter: "edge_agent=info,warn", worker_threads: Some(2) };
    hone_process::run(entry, dispatch(cli.command))
}

async fn dispatch(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Run(args) => {
            let config = run_config(args)?;
            crate::agent::run(config, shutdown_signal()).await?;
            Ok(0)
        }
        Command::Enroll(a) => {
            let identity = crate::enroll::enroll(&crate::enroll::EnrolRequest {
                coordinator: a.coordinator,
                token: a.token,
                ca_sha256: a.ca_sha256,
                device_id: a.device_id.unwrap_or_else(default_device_id),
                state_dir: a.state_dir.clone(),
            })
            .await?;
            let f = &identity.file;
            #[allow(clippy::print_stdout)]
            if a.json {
                println!("{}", serde_json::to_string_pretty(f)?);
            } else {
                println!(
                    "enrolled as {} with {}; certificate valid until {} (Unix ms), renewed \
                     automatically; state in {}",
                    f.device_id,
                    f.coordinator,
                    f.not_after_ms,
                    a.state_dir.join("tls").display()
                );
            }
            Ok(0)
        }
        Command::Bench(args) => bench(args).await,
        Command::Doctor(a) => {
            let checks = crate::doctor::run(&crate::doctor::DoctorInput {
                broker: a.broker,
                coordinator: a.coordinator,
                state_dir: a.state_dir,
                ort_lib: a.ort_lib,
                sysfs: a.sysfs,
            })
            .await;
            #[allow(clippy::print_stdout)]
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "checks": checks }))?
                );
            } else {
                print!("{}", crate::doctor::table(&checks));
            }
            let failed = checks.iter().any(|c| c.status == crate::doctor::Status::Fail);
            Ok(i32::from(failed))
        }
        Command::Profiles { json } => {
            profiles(json);
            Ok(0)
        }
        Command::Infer { model, symbols, inputs } => {
            let spec =
                BenchSpec { symbols, inputs: input_shapes(&inputs)?, ..BenchSpec::default() };
            let outputs =
                tokio::task::spawn_blocking(move || crate::bench::tract::infer(&model, &spec))
                    .await?
                    .map_err(|f| anyhow::anyhow!("{}: {}", f.kind.as_str(), f.reason))?;
            #[allow(clippy::print_stdout)]
            {
                println!("{}", serde_json::to_string(&outputs)?);
            }
            Ok(0)
        }
        Command::Inspect { model, symbols, inputs } => {
            let spec =
                BenchSpec { symbols, inputs: input_shapes(&inputs)?, ..BenchSpec::default() };
            let c = tokio::task::spawn_blocking(move || crate::bench::tract::cost(&model, &spec))
                .await?
                .map_err(|f| anyhow::anyhow!("{}: {}", f.kind.as_str(), f.reason))?;
            #[allow(clippy::print_stdout)]
            {
                println!("{}", serde_json::to_string_pretty(&c)?);
            }
            Ok(0)
        }
        Command::Calibrate { json, no_cache, ratio, calibration_dir } => {
            let policy = crate::calibrate::Policy::default();
            let mut cal = if no_cache {
                tokio::task::spawn_blocking(crate::calibrate::measure).await??
            } else {
                let exe = std::env::current_exe().context("locating the agent executable")?;
                crate::calibrate::load_or_measure(&calibration_dir, &exe, &policy).await?
            };
            if let Some(ratio) = ratio {
                if !(ratio > 0.0 && ratio < 1.0) {
                    anyhow::bail!(
                        "--ratio must be between 0 and 1 (a profile slower than this host)"
                    );
                }
                let exe = std::env::current_exe().context("locating the agent executable")?;
                let period = crate::throttle::PERIOD_US
                    .max((crate::throttle::MIN_QUOTA_US as f64 / ratio).ceil() as u64);
                crate::calibrate::correction_for(
                    &calibration_dir,
                    &exe,
                    &Cgroups::detect(),
                    ratio,
                    period,
                    &policy,
                )
                .await?;
                cal = crate::calibrate::load_or_measure(&calibration_dir, &exe, &policy).await?;
            }
            #[allow(clippy::print_stdout)]
            if json {
                println!("{}", serde_json::to_string_pretty(&cal)?);
            } else {
                println!("host: {}", cal.host_id);
                println!(
                    "f32 matmul (tract, 1 thread): {:.1} GFLOP/s (spread {:.1} %, load {:.2}/core{}{})",
                    cal.gflops_per_core,
                    cal.spread * 100.0,
                    cal.load_per_core,
                    cal.steal_fraction
                        .map(|s| format!(", steal {:.1} %", s * 100.0))
                        .unwrap_or_default(),
                    if cal.contended { ", CONTENDED" } else { "" }
                );
                println!("memory copy (1 thread): {:.1} GB/s", cal.memory_bandwidth_gbs);
                for c in &cal.quota_corrections {
                    println!(
                        "quota correction at ratio {:.2}: x{:.3} (residual {:+.1} %, {} measurements)",
                        c.ratio,
                        c.factor,
                        c.residual * 100.0,
                        c.iterations
                    );
                }
            }
            Ok(0)
        }
        Command::Loadgen(args) => loadgen(args).await,
        Command::BenchChild { .. }
        | Command::CalibrateProbe { .. }
        | Command::ServeChild(_)
        | Command::OrtProbe { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

async fn loadgen(args: LoadgenArgs) -> anyhow::Result<i32> {
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        anyhow::bail!("--duration must be a positive number of seconds");
    }
    let token = match &args.token_file {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
    };
    let options = crate::loadgen::LoadgenOptions {
        url: args.url,
        model: args.model,
        rates: args.rate.map_or(args.rates, |r| vec![r]),
        duration: Duration::from_secs_f64(args.duration),
        concurrency: args.concurrency,
        token,
        inputs: args.inputs,
        binary: args.binary,
    };
    let reports = crate::loadgen::run(&options).await?;
    #[allow(clippy::print_stdout)]
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "rates": reports }))?);
    } else {
        print!("{}", crate::loadgen::table(&reports));
    }
    Ok(0)
}

fn run_config(args: RunArgs) -> anyhow::Result<AgentConfig> {
    let broker = hone_common::parse_broker_url(&args.broker).map_err(anyhow::Error::msg)?;
    let (broker_host, broker_port) = (broker.host.clone(), broker.port);
    let enrolled = crate::enroll::Identity::exists(&args.state_dir)
        .then(|| crate::enroll::Identity::load(&args.state_dir))
        .transpose()
        .context("reading the enrolled identity")?;
    if broker.tls && enrolled.is_none() {
        anyhow::bail!(
            "{} is a TLS broker and this agent is not enrolled (no {}/tls/identity.json): run \
             `edge-agent enroll --coordinator https://… --token … --ca-sha256 …` first",
            args.broker,
            args.state_dir.display()
        );
    }
    if !broker.tls && !hone_common::is_loopback_host(&broker.host) {
        anyhow::bail!(
            "plain MQTT to {} is refused: plain transport is for loopback only; use mqtts:// \
             with an enrolled identity",
            broker.host
        );
    }
    let device_id = match (&args.device_id, &enrolled) {
        (Some(asked), Some(id)) if asked != &id.file.device_id => anyhow::bail!(
            "--device-id {asked}, but this state folder is enrolled as {}",
            id.file.device_id
        ),
        (_, Some(id)) => id.file.device_id.clone(),
        (Some(asked), None) => asked.clone(),
        (None, None) => default_device_id(),
    };
    hone_common::validate_device_id(&device_id).map_err(anyhow::Error::msg)?;
    let profile =
        crate::config::resolve_profile(args.profile.as_deref(), args.profile_file.as_deref())?;
    if !(args.thermal_time_scale > 0.0 && args.thermal_time_scale.is_finite()) {
        anyhow::bail!("--thermal-time-scale must be a positive number");
    }
    if args.keepalive_secs == 0 {
        anyhow::bail!("--keepalive-secs must be at least 1");
    }
    let trust_key = args.trust_key.as_deref().map(parse_trust_key).transpose()?;
    if args.trust_on_first_use {
        tracing::warn!(
            "--trust-on-first-use: without a pinned key the agent will trust whatever key the \
             coordinator URL returns over plain HTTP"
        );
    }
    if !(args.telemetry_window_s >= 0.1 && args.telemetry_window_s <= 3600.0) {
        anyhow::bail!("--telemetry-window-s must be between 0.1 and 3600");
    }
    if args.serve_concurrency == 0 {
        anyhow::bail!("--serve-concurrency must be at least 1");
    }
    let serving = (!args.no_serve).then(|| crate::deploy::ServingConfig {
        listen: args.serve_addr.clone(),
        token_file: args.serve_token_file.clone(),
        max_concurrency: args.serve_concurrency,
        max_queue: args.serve_queue,
        window_ms: (args.telemetry_window_s * 1000.0) as u64,
        thermal: args.serve_thermal,
    });
    Ok(AgentConfig {
        serving,
        device_id,
        broker_host,
        broker_port,
        identity: if broker.tls || args.coordinator.starts_with("https://") {
            enrolled
        } else {
            None
        },
        coordinator_url: args.coordinator,
        profile,
        native: args.native,
        thermal_time_scale: args.thermal_time_scale,
        state_dir: args.state_dir,
        keepalive: Duration::from_secs(args.keepalive_secs),
        trust_key,
        trust_on_first_use: args.trust_on_first_use,
        calibration_dir: args.calibration_dir,
        bench_exe: std::env::current_exe().context("locating the agent executable")?,
        ort_lib: args.ort_lib,
        runtimes: Vec::new(),
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
    profile: Option<String>,
    mode: &'static str,
    emulated: bool,
    emulation_status: EmulationStatus,
    throttle: serde_json::Value,
    outcome: &'static str,
    reason: Option<String>,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    mean_ms: Option<f64>,
    load_ms: Option<f64>,
    peak_rss_bytes: Option<u64>,
    iterations: Option<u32>,
    cold_start_ms: Option<f64>,
    timeline: Vec<hone_common::bench::TimelinePoint>,
    throughput: Vec<hone_common::bench::ThroughputPoint>,
    /// `sustained`: p99 of the last timeline window over the first (>1 = slower at the end).
    p50_end_over_start: Option<f64>,
    /// `sustained`: seconds into the run when the quota first dropped (throttle onset).
    throttle_onset_s: Option<f64>,
    p50_cv: Option<f64>,
    calibration: Option<hone_common::bench::HostCalibration>,
    /// Per runtime, the median p50 of its runs (runs alternate between runtimes).
    by_runtime: Vec<RuntimeSummary>,
    runs: Vec<BenchReport>,
}

#[derive(serde::Serialize)]
struct RuntimeSummary {
    runtime: hone_common::bench::Runtime,
    version: String,
    threads: u32,
    spinning: bool,
    p50_ms: f64,
    runs: usize,
}

async fn bench(args: BenchArgs) -> anyhow::Result<i32> {
    if !args.model.is_file() {
        anyhow::bail!("model file {} does not exist", args.model.display());
    }
    if !(args.thermal_time_scale > 0.0 && args.thermal_time_scale.is_finite()) {
        anyhow::bail!("--thermal-time-scale must be a positive number");
    }
    let mode = match args.mode {
        ModeArg::Single => BenchMode::Single,
        ModeArg::Sustained => BenchMode::Sustained { seconds: args.seconds.max(1) },
        ModeArg::Cold => BenchMode::Cold,
        ModeArg::Throughput => {
            if args.batch_sizes.is_empty() || args.batch_sizes.contains(&0) {
                anyhow::bail!("--batch-sizes needs positive sizes");
            }
            BenchMode::Throughput { batch_sizes: args.batch_sizes.clone() }
        }
    };
    let spec = BenchSpec {
        warmup: args.warmup,
        max_iterations: args.iterations.max(1),
        max_time_ms: args.max_time_ms,
        symbols: args.symbols.clone(),
        mode: mode.clone(),
        inputs: input_shapes(&args.inputs)?,
        runtime: hone_common::bench::Runtime::Tract,
        threads: args.threads,
    };
    let mut runtimes = args.runtime.clone();
    runtimes.dedup();
    if runtimes.is_empty() {
        anyhow::bail!("--runtime needs at least one runtime (tract, ort)");
    }
    if runtimes.contains(&hone_common::bench::Runtime::Ort) && args.ort_lib.is_none() {
        anyhow::bail!("{}", crate::bench::NO_ORT_LIBRARY);
    }
    let exe = std::env::current_exe().context("locating the agent executable")?;
    let profile =
        crate::config::resolve_profile(args.profile.as_deref(), args.profile_file.as_deref())?;
    let host = crate::host::HostFacts::read();
    let (plan, cgroups) = crate::agent::plan_emulation(
        profile.as_ref(),
        args.native,
        &args.calibration_dir,
        &exe,
        &host,
        args.memory_limit_mib.map(|m| m * 1024 * 1024),
        args.thermal_time_scale,
    )
    .await?;
    if let EmulationStatus::Unthrottled { reason } = &plan.status {
        eprintln!("warning: profile not enforced, results are unthrottled: {reason}");
    }
    let timeout = Duration::from_secs(args.timeout_secs.max(u64::from(args.seconds) + 60));
    let mut runs = Vec::new();
    let mut failure = None;
    'repeat: for _ in 0..args.repeat.max(1) {
        for runtime in &runtimes {
            let spec = BenchSpec { runtime: *runtime, ..spec.clone() };
            let lib = args.ort_lib.as_deref();
            match crate::bench::run_in_child(
                &exe,
                &args.model,
                &spec,
                lib,
                timeout,
                &plan,
                &cgroups,
            )
            .await
            {
                Ok(r) => runs.push(r),
                Err((kind, reason)) => {
                    failure = Some((kind, format!("{runtime}: {reason}")));
                    break 'repeat;
                }
            }
        }
    }
    let by_runtime: Vec<RuntimeSummary> = runtimes
        .iter()
        .filter_map(|rt| {
            let p50s: Vec<f64> = runs
                .iter()
                .filter(|r| r.execution.runtime == *rt)
                .map(|r| r.latency.p50_ms)
                .collect();
            let stats = hone_common::bench::LatencyStats::from_samples(&p50s)?;
            let first = runs.iter().find(|r| r.execution.runtime == *rt)?;
            Some(RuntimeSummary {
                runtime: *rt,
                version: first.runtime.clone(),
                threads: first.execution.threads,
                spinning: first.execution.spinning,
                p50_ms: stats.p50_ms,
                runs: p50s.len(),
            })
        })
        .collect();
    let p50s: Vec<f64> = runs
        .iter()
        .filter(|r| r.execution.runtime == runtimes[0])
        .map(|r| r.latency.p50_ms)
        .collect();
    let first = runs.first();
    let record = first
        .map(|r| r.emulation.clone())
        .unwrap_or_else(|| plan.record(matches!(mode, BenchMode::Sustained { .. })));
    let timeline = first.map(|r| r.timeline.clone()).unwrap_or_default();
    let onset = timeline
        .iter()
        .find(|p| {
            p.quota.zip(timeline.first().and_then(|f| f.quota)).is_some_and(|(q, q0)| q < q0 - 1e-9)
        })
        .map(|p| p.t_s);
    let out = BenchOutput {
        model: args.model.display().to_string(),
        profile: profile.as_ref().map(|p| p.name.clone()),
        mode: mode.name(),
        emulated: record.status == EmulationStatus::Emulated,
        emulation_status: record.status.clone(),
        throttle: serde_json::json!({
            "performance_ratio": record.performance_ratio,
            "cpu_quota_us": record.cpu_quota_us,
            "cpu_period_us": record.cpu_period_us,
            "cpus": record.cpus,
            "memory_limit_bytes": record.memory_limit_bytes,
            "memory_method": record.memory_method,
            "thermal_time_scale": record.thermal_time_scale,
            "not_enforced": record.not_enforced,
            "quota_correction": record.quota_correction,
            "slowdown_residual": record.slowdown_residual,
            "throttled_periods": record.throttled_periods,
            "calibration_age_s": record.calibration_age_s,
            "calibration_spread": record.calibration_spread,
            "calibration_load_per_core": record.calibration_load_per_core,
        }),
        outcome: failure.as_ref().map(|(k, _)| k.as_str()).unwrap_or("ok"),
        reason: failure.as_ref().map(|(_, r)| r.clone()),
        p50_ms: first.map(|r| r.latency.p50_ms),
        p90_ms: first.map(|r| r.latency.p90_ms),
        p99_ms: first.map(|r| r.latency.p99_ms),
        mean_ms: first.map(|r| r.latency.mean_ms),
        load_ms: first.map(|r| r.load_ms),
        peak_rss_bytes: first.map(|r| r.peak_rss_bytes),
        iterations: first.map(|r| r.iterations),
        cold_start_ms: first.and_then(|r| r.cold_start_ms),
        p50_end_over_start: match (timeline.first(), timeline.last()) {
            (Some(a), Some(b)) if timeline.len() > 1 && a.p50_ms > 0.0 => Some(b.p50_ms / a.p50_ms),
            _ => None,
        },
        throttle_onset_s: onset,
        timeline,
        throughput: first.map(|r| r.throughput.clone()).unwrap_or_default(),
        p50_cv: if p50s.len() > 1 { coefficient_of_variation(&p50s) } else { None },
        calibration: plan.calibration.clone(),
        by_runtime,
        runs,
    };
    #[allow(clippy::print_stdout)]
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if let Some((kind, reason)) = &failure {
        println!("{}: {} ({reason})", out.model, kind.as_str());
    } else {
        print_bench(&out);
    }
    Ok(if failure.is_some() { 2 } else { 0 })
}

#[allow(clippy::print_stdout)]
fn print_bench(out: &BenchOutput) {
    println!(
        "model {} | profile {} | mode {} | {}",
        out.model,
        out.profile.as_deref().unwrap_or("none (host)"),
        out.mode,
        match &out.emulation_status {
            EmulationStatus::Emulated => format!("emulated ({})", out.throttle),
            EmulationStatus::Unthrottled { reason } => format!("UNTHROTTLED: {reason}"),
            EmulationStatus::Native => "native device".into(),
            EmulationStatus::None => "host as is".into(),
        }
    );
    println!(
        "{:<5} {:<26} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>6}",
        "run",
        "runtime",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean ms",
        "load ms",
        "peak RSS MiB",
        "iters"
    );
    for (i, r) in out.runs.iter().enumerate() {
        println!(
            "{:<5} {:<26} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.1} {:>12.1} {:>6}",
            i + 1,
            format!("{} ({} thr)", r.runtime, r.execution.threads),
            r.latency.p50_ms,
            r.latency.p90_ms,
            r.latency.p99_ms,
            r.latency.mean_ms,
            r.load_ms,
            r.peak_rss_bytes as f64 / (1024.0 * 1024.0),
            r.iterations
        );
    }
    if out.by_runtime.len() > 1 {
        let base = out.by_runtime[0].p50_ms;
        for r in &out.by_runtime {
            println!(
                "{:<26} median p50 {:>10.3} ms over {} runs, {:.2}x the speed of {}",
                r.version,
                r.p50_ms,
                r.runs,
                base / r.p50_ms,
                out.by_runtime[0].version
            );
        }
    }
    if let Some(cv) = out.p50_cv {
        let n = out.by_runtime.first().map_or(out.runs.len(), |r| r.runs);
        println!("p50 coefficient of variation over {n} runs: {:.2} %", cv * 100.0);
    }
    if let Some(c) = out.cold_start_ms {
        println!("cold start (process start to first inference): {c:.1} ms");
    }
    for t in &out.throughput {
        println!(
            "batch {:>4}: {:>10.1} items/s (p50 {:.2} ms per batch)",
            t.batch, t.items_per_s, t.p50_ms
        );
    }
    if !out.timeline.is_empty() {
        println!(
            "{:>8} {:>10} {:>8} {:>8} {:>8} {:>6}",
            "t s", "p50 ms", "quota", "MHz", "°C", "iters"
        );
        for p in &out.timeline {
            let f = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
            println!(
                "{:>8.1} {:>10.3} {:>8} {:>8} {:>8} {:>6}",
                p.t_s,
                p.p50_ms,
                f(p.quota),
                p.clock_mhz.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                f(p.temperature_c),
                p.iterations
            );
        }
        if let Some(o) = out.throttle_onset_s {
            println!("throttle onset after {o:.1} s");
        }
    }
    if let Some(r) = out.runs.first() {
        println!("inputs (synthetic={}): {}", r.synthetic_inputs, r.inputs.join("; "));
    }
}

fn profiles(json: bool) {
    let all = hone_firmware_profiles::builtin();
    #[allow(clippy::print_stdout)]
    if json {
        let list: Vec<serde_json::Value> = all
            .iter()
            .map(|p| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                v["summary"] = p.summary().into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
    } else {
        for p in all {
            println!("{}", p.summary());
        }
    }
}
