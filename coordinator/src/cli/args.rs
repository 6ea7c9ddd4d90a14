//! The clap definitions of every `coordinator` command.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::Client;

/// Hone coordinator: model registry, device fleet and benchmark campaigns.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Run the coordinator: HTTP API, MQTT (embedded broker by default) and the campaign engine.
    Serve(ServeArgs),
    /// The main job: a campaign over two real models on local agents, end to end.
    Demo(super::demo::DemoArgs),
    /// API tokens: create (shown once), list, revoke. Works on the database directly.
    Tokens {
        #[command(subcommand)]
        command: TokensCmd,
    },
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
    /// The device registry, enrolment tokens, approval, revocation, decommissioning.
    Devices {
        #[command(subcommand)]
        command: DevicesCmd,
    },
    /// The coordinator's certificate authority: its fingerprint, and the configuration of an
    /// external Mosquitto that checks Hone's devices. Works on the data folder directly.
    Pki {
        #[command(subcommand)]
        command: PkiCmd,
    },
    /// The artifact-signing key: show it and its rotation chain, or rotate it (through the
    /// API of the running coordinator, operator token).
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
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
    /// Knowledge distillation: a smaller student learns from the teacher (forward, reverse or
    /// skew KL; hidden states, attention maps, attributions; teacher assistants).
    Distill(Box<crate::cli::distill::DistillArgs>),
    /// What distilling a 3B model into a 0.5B one costs here: a Llama-3.2-3B-shaped teacher
    /// (random bf16, streamed from disk) and a 0.5B student, measured and extrapolated.
    DistillScale(crate::cli::distill::ScaleArgs),
    /// Fold constant and static-shape subgraphs into initializers (no data, no retraining).
    Fold(crate::cli::graph::FoldArgs),
    /// Make a model faster without retraining: post-training passes (folding, int8) judged on
    /// held-out data and timed side by side in tract and ONNX Runtime; the fastest within the
    /// quality budget is written, with the table it was chosen from.
    Optimize(Box<crate::cli::optimize::OptimizeArgs>),
    /// Measurements made elsewhere: `results import FILE --model M` (a GPU server's).
    Results {
        #[command(subcommand)]
        command: crate::cli::compare::ResultsCmd,
    },
    /// Internal: load a model in ONNX Runtime and print `{"ok": true}` or the error as JSON
    /// (the registration gate of models tract cannot load, in a child process).
    #[command(hide = true)]
    OrtCheck {
        #[arg(long)]
        model: std::path::PathBuf,
    },
    /// CPU device classes and imported GPU measurements side by side for one model: latency,
    /// throughput, joules and cost per million inferences, with each figure's provenance.
    Compare(Box<crate::cli::compare::CompareArgs>),
    /// Generative language models: import a GGUF Llama into ONNX, generate with tract.
    Llm {
        #[command(subcommand)]
        command: crate::cli::llm::LlmCmd,
    },
    /// The compression pipeline: candidates measured on the fleet choose the winner per class.
    Compress(Box<crate::cli::pipeline::CompressArgs>),
    /// Compression pipelines: show, list, cancel.
    Pipeline {
        #[command(subcommand)]
        command: crate::cli::pipeline::PipelineCmd,
    },
    /// Write a pipeline's self-contained HTML report.
    Report(crate::cli::pipeline::ReportArgs),
    /// Deploy a model to devices: a canary under a health gate, then the rest; rolled back
    /// automatically when the gate fails or a device cannot activate the model.
    Deploy(crate::cli::deploy::DeployArgs),
    /// Deployments: list, show, rollback.
    Deployments {
        #[command(subcommand)]
        command: crate::cli::deploy::DeploymentsCmd,
    },
    /// Monitoring alerts (latency budget, errors, throttling, memory, drift).
    Alerts {
        #[command(subcommand)]
        command: crate::cli::deploy::AlertsCmd,
    },
    /// Re-compression suggestions written when an alert fires.
    Suggestions {
        #[command(subcommand)]
        command: crate::cli::deploy::SuggestionsCmd,
    },
    /// A device's serving telemetry (requests, errors, latency, RSS, temperature).
    Telemetry(crate::cli::deploy::TelemetryArgs),
    /// The coordinator's MLflow mirror: sync what is missing, status.
    Mlflow {
        #[command(subcommand)]
        command: crate::cli::mlflow::MlflowCmd,
    },
    /// Experiments in MLflow: compare runs across pipelines, days and machines.
    Experiments {
        #[command(subcommand)]
        command: crate::cli::mlflow::ExperimentsCmd,
    },
}

#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub(super) listen: SocketAddr,
    /// POST every new monitoring alert (with its suggestion) as JSON to this URL.
    #[arg(long, env = "HONE_ALERT_WEBHOOK")]
    pub(super) alert_webhook: Option<String>,
    /// Data folder (SQLite database, artifacts, signing key, operator token).
    #[arg(long, env = "HONE_DATA_DIR", default_value = "hone-data")]
    pub(super) data_dir: PathBuf,
    /// Database URL (default: SQLite in the data folder), e.g. postgres://user@127.0.0.1/hone.
    #[arg(long, env = "HONE_DATABASE_URL")]
    pub(super) database_url: Option<String>,
    /// Use this MQTT broker instead of the embedded one, e.g. mqtt://127.0.0.1:1883.
    #[arg(long, env = "HONE_MQTT_URL")]
    pub(super) mqtt_url: Option<String>,
    /// Address of the embedded broker.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub(super) mqtt_listen: SocketAddr,
    /// MQTT client id of the coordinator (stable: the broker keeps its session).
    #[arg(long, default_value = "hone-coordinator")]
    pub(super) mqtt_client_id: String,
    /// Base URL agents download artifacts from (default: the API address).
    #[arg(long)]
    pub(super) public_url: Option<String>,
    /// The only folder `POST /api/v1/models/register` may read models from (default: none,
    /// registration by path is off; uploads always work).
    #[arg(long, env = "HONE_IMPORT_DIR")]
    pub(super) import_dir: Option<PathBuf>,
    /// Write pipelines, candidates, campaigns and deployments to this MLflow tracking server
    /// (`http://host:port`; credentials from MLFLOW_TRACKING_USERNAME/PASSWORD or
    /// MLFLOW_TRACKING_TOKEN). Hone's database stays the source of truth; writes are retried.
    #[arg(long, env = "HONE_MLFLOW_URL")]
    pub(super) mlflow_url: Option<String>,
    /// The MLflow experiment of campaigns (pipelines use one named after their model).
    #[arg(long, default_value = "hone-campaigns")]
    pub(super) mlflow_campaign_experiment: String,
    /// Plain HTTP and MQTT, without TLS or device certificates: for loopback only (the demo,
    /// local tests); refused on any other address. Without it the API is HTTPS and devices
    /// enrol (`coordinator devices token`).
    #[arg(long, env = "HONE_PLAIN")]
    pub(super) plain: bool,
    /// A host name or address agents reach this coordinator by (repeatable, or
    /// comma-separated): its server certificate is valid for these and for localhost,
    /// 127.0.0.1 and ::1.
    #[arg(long = "tls-name", env = "HONE_TLS_NAMES", value_delimiter = ',')]
    pub(super) tls_names: Vec<String>,
    /// Where the MQTT gate listens for devices (TLS with device certificates, each device
    /// limited to its own topics), in front of the embedded broker.
    #[arg(long, default_value = "0.0.0.0:8883")]
    pub(super) mqtt_tls_listen: SocketAddr,
    /// Life of a device certificate (90s, 15m, 12h, 7d); agents renew at two thirds of it.
    #[arg(long, default_value = "7d", value_parser = crate::pki::parse_lifetime)]
    pub(super) cert_lifetime: std::time::Duration,
}

#[derive(Debug, clap::Args)]
pub(super) struct ApiArgs {
    /// Coordinator API base URL.
    #[arg(long, env = "HONE_API", default_value = "http://127.0.0.1:7878")]
    pub(super) api: String,
    /// File holding the API token. Without it the token is `$HONE_TOKEN`, else, for a
    /// coordinator on this machine, `{data dir}/operator.token`.
    #[arg(long, env = "HONE_TOKEN_FILE")]
    pub(super) token_file: Option<PathBuf>,
    /// Data folder of a coordinator on this machine (where its operator token is).
    #[arg(long, env = "HONE_DATA_DIR", default_value = "hone-data")]
    pub(super) data_dir: PathBuf,
    /// The CA certificate of an https:// coordinator (default: `{data dir}/pki/ca.pem`).
    #[arg(long, env = "HONE_CA_FILE")]
    pub(super) ca_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub(super) json: bool,
}

impl ApiArgs {
    /// A client of the API with the token these arguments name.
    pub(super) fn client(&self) -> anyhow::Result<Client> {
        let token = super::client::resolve_token(
            &self.api,
            self.token_file.as_deref(),
            std::env::var("HONE_TOKEN").ok(),
            &self.data_dir,
        )?;
        let client = Client::new(&self.api).with_token(token);
        if !self.api.starts_with("https://") {
            return Ok(client);
        }
        let ca = self.ca_file.clone().unwrap_or_else(|| self.data_dir.join("pki/ca.pem"));
        let pem = std::fs::read_to_string(&ca).map_err(|e| {
            anyhow::anyhow!(
                "{} is https: its CA certificate is needed (--ca-file, HONE_CA_FILE; {}: {e})",
                self.api,
                ca.display()
            )
        })?;
        client.with_ca(&pem)
    }
}

/// Where the database is, for commands that work on it directly.
#[derive(Debug, clap::Args)]
pub(super) struct DbArgs {
    /// Data folder of the coordinator.
    #[arg(long, env = "HONE_DATA_DIR", default_value = "hone-data")]
    pub(super) data_dir: PathBuf,
    /// Database URL (default: SQLite in the data folder).
    #[arg(long, env = "HONE_DATABASE_URL")]
    pub(super) database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum TokensCmd {
    /// Create a token and print it (once: only its hash is stored).
    Create {
        #[command(flatten)]
        db: DbArgs,
        /// `viewer` (read) or `operator` (read and write).
        #[arg(long)]
        role: String,
        /// A label, e.g. who uses it.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (ids, names, roles; never the secrets).
    List {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        /// Token id (`t-…`, from `tokens list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum CampaignCmd {
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
        /// Shape of an input, NAME=1x3x224x224 (repeatable, or comma-separated); overrides the
        /// shapes stored with the models.
        #[arg(long = "input", value_name = "NAME=DIMS")]
        inputs: Vec<String>,
        /// Runtime the agents measure in: `tract` (every agent) or `ort` (ONNX Runtime, on
        /// agents started with --ort-lib; devices without it are refused with their reason).
        #[arg(long, default_value = "tract")]
        runtime: hone_common::bench::Runtime,
        /// ONNX Runtime intra-op threads (default: each device profile's cores).
        #[arg(long)]
        threads: Option<u32>,
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
pub(super) enum ModelsCmd {
    /// Register an ONNX model (uploaded to the coordinator; refused if tract cannot load it).
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// ONNX file.
        path: PathBuf,
        /// Name (default: the file stem).
        #[arg(long)]
        name: Option<String>,
        /// Shape of an input whose declared shape is not fixed, NAME=1x3x48x320 (repeatable, or
        /// comma-separated); checked by the gate and stored with the model for its campaigns.
        #[arg(long = "input", value_name = "NAME=DIMS")]
        inputs: Vec<String>,
    },
    /// List models.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum PkiCmd {
    /// The CA certificate's SHA-256 (what `edge-agent enroll --ca-sha256` pins).
    Show {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the CA (stop the coordinator first, start it after): a new CA signs from now on,
    /// the old one stays trusted for the certificates it issued (devices move to the new CA at
    /// their next renewal) and signs the new one, so enrolled devices accept the coordinator
    /// without re-enrolling. Re-run `pki mosquitto` for an external broker.
    RotateCa {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a Mosquitto configuration for a Hone fleet: TLS listener with client certificates
    /// of the Hone CA, the device id as user name, the CRL, and an ACL limiting each device to
    /// its own topics. Re-run after a revocation (it refreshes crl.pem).
    Mosquitto {
        #[command(flatten)]
        db: DbArgs,
        /// Folder to write into.
        #[arg(long)]
        out: PathBuf,
        /// Host names and addresses of the broker (its server certificate).
        #[arg(long = "name", value_delimiter = ',')]
        names: Vec<String>,
        /// The TLS listener's port.
        #[arg(long, default_value_t = 8883)]
        port: u16,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum KeysCmd {
    /// The current signing key and every rotation statement.
    Show {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Replace the signing key: the old key signs a statement handing over to a new one, the
    /// running coordinator signs with the new key from now on, and agents that pinned the old
    /// key follow the chain (`GET /api/v1/keys`). Back up `{data dir}/keys/` afterwards.
    Rotate {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum DevicesCmd {
    /// List devices.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create a one-time enrolment token (TLS coordinators) and print the enrolment command.
    Token {
        /// Bind the token to this device id (it may then replace the device's identity).
        #[arg(long)]
        device: Option<String>,
        /// How long the token is valid, seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_s: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Enrolled identities and their state (with one device: its certificates).
    Identities {
        /// Only this device, with its certificates.
        device: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Approve a device's re-enrolment after its certificate expired.
    Approve {
        /// Device id.
        device: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke every certificate of a device: its TLS connections end now and it cannot
    /// reconnect (a token bound to it enrols it again).
    Revoke {
        /// Device id.
        device: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a device and remove it from the fleet (its registry row and retained status;
    /// its results stay).
    Decommission {
        /// Device id.
        device: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}
