//! `coordinator deploy`, `deployments list|show|rollback`, `alerts list`,
//! `suggestions list|show` and `telemetry`: deployments and monitoring through the API.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use super::Client;
use super::args::ApiArgs;
use super::print::print_json;
use crate::api::DeploymentView;
use crate::db::{AlertRow, DeploymentRow, SuggestionRow, TelemetryRow};
use crate::deploy::{Canary, DeployRequest, gate::Gate};

/// Rollout settings, shared by `deploy` and `compress --deploy`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct RolloutArgs {
    /// Canary size: N devices or N% of them (at least one, and a rest remains).
    #[arg(long, default_value = "1")]
    canary: Canary,
    /// Health gate on the canary's live telemetry, e.g. "p99_ms<=50,error_rate<=0.01"
    /// (p50_ms too; "none" for none).
    #[arg(long, default_value = "error_rate<=0.05")]
    gate: Gate,
    /// Gate window: 60s, 2m, or seconds.
    #[arg(long, default_value = "60s", value_parser = parse_duration_s)]
    window: f64,
    /// Requests the canary must serve before the gate judges; a quieter canary's window is
    /// extended up to --max-window, then the deployment rolls back.
    #[arg(long, default_value_t = 20)]
    min_requests: u64,
    /// Longest gate window (default: 3 × --window).
    #[arg(long, value_parser = parse_duration_s)]
    max_window: Option<f64>,
    /// Probe requests per second each agent sends itself while the new model is served, so a
    /// quiet device still gives the gate traffic.
    #[arg(long, default_value_t = 0)]
    probe_rps: u32,
    /// Time each agent has to fetch, load and warm the model.
    #[arg(long, default_value = "120s", value_parser = parse_duration_s)]
    activation_timeout: f64,
}

fn parse_duration_s(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("`{s}` is not a duration (60s, 2m)"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("`{s}`: a duration must be positive"));
    }
    Ok(v * scale)
}

impl RolloutArgs {
    /// The request for `model` on `devices` with these settings.
    pub(super) fn request(&self, model: &str, devices: &str) -> DeployRequest {
        let mut r = DeployRequest::new(model, devices);
        r.canary = self.canary;
        r.gate = self.gate;
        r.window_s = self.window;
        r.min_requests = self.min_requests;
        r.max_window_s = self.max_window;
        r.probe_rps = self.probe_rps;
        r.activation_timeout_s = self.activation_timeout;
        r
    }
}

/// Options of `coordinator deploy`.
#[derive(Debug, clap::Args)]
pub(super) struct DeployArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The model: registry id, name or digest prefix.
    #[arg(long)]
    model: String,
    /// Devices: all, profile:NAME, or device ids (comma-separated).
    #[arg(long)]
    devices: String,
    #[command(flatten)]
    rollout: RolloutArgs,
    /// Latency budget of the monitoring rule (median, ms): breached for 3 windows → an alert
    /// and a re-compression suggestion.
    #[arg(long)]
    latency_budget_ms: Option<f64>,
    /// Reference data for the drift rule (a data spec, as `compress --data`).
    #[arg(long)]
    reference_data: Option<String>,
    /// Name applications use (`/v2/models/{name}`; default: the registry name).
    #[arg(long)]
    model_name: Option<String>,
    /// Deployment id (makes creation idempotent).
    #[arg(long)]
    id: Option<String>,
    /// Return once the deployment is created instead of following the rollout.
    #[arg(long)]
    no_wait: bool,
}

/// `deployments` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(super) enum DeploymentsCmd {
    /// Every deployment.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One deployment: its gate and every device.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// Deployment id.
        id: String,
    },
    /// Roll a deployment back: every device returns to the model it served before.
    Rollback {
        #[command(flatten)]
        api: ApiArgs,
        /// Deployment id.
        id: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        /// Return at once instead of following the rollback.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `alerts` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(super) enum AlertsCmd {
    /// Alerts, newest first.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Open alerts only.
        #[arg(long)]
        open: bool,
    },
}

/// `suggestions` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(super) enum SuggestionsCmd {
    /// Suggestions, newest first.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One suggestion with its ready pipeline request (`compress --from-suggestion ID` runs it).
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// Suggestion id.
        id: String,
    },
}

/// Options of `coordinator telemetry`.
#[derive(Debug, clap::Args)]
pub(super) struct TelemetryArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Device id.
    device: String,
    /// Windows of the last N seconds.
    #[arg(long, default_value_t = 600)]
    last_s: u64,
}

/// `coordinator deploy`.
pub(super) async fn deploy(args: DeployArgs) -> anyhow::Result<i32> {
    let client = args.api.client()?;
    let mut req = args.rollout.request(&args.model, &args.devices);
    req.id = args.id.clone();
    req.latency_budget_ms = args.latency_budget_ms;
    req.reference_data = args.reference_data.clone();
    req.model_name = args.model_name.clone();
    req.check().map_err(anyhow::Error::msg)?;
    let view: DeploymentView = client.post("/api/v1/deployments", &req).await?;
    if !args.api.json {
        eprintln!(
            "deployment {} created: {} to {} device(s), canary {}",
            view.deployment.id,
            view.deployment.model_id,
            view.devices.len(),
            view.devices.iter().filter(|d| d.wave == 0).count()
        );
    }
    if args.no_wait {
        if args.api.json {
            print_json(&serde_json::to_value(&view)?);
        } else {
            println!("{}", view.deployment.id);
        }
        return Ok(0);
    }
    let view = follow(&client, &view.deployment.id, !args.api.json).await?;
    finish(&view, args.api.json)
}

/// Polls a deployment until it ends, printing each change of state or gate on stderr.
pub(super) async fn follow(
    client: &Client,
    id: &str,
    show: bool,
) -> anyhow::Result<DeploymentView> {
    let started = Instant::now();
    let tty = show && std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let view: DeploymentView = client.get(&format!("/api/v1/deployments/{id}")).await?;
        if matches!(view.deployment.state.as_str(), "done" | "rolled_back" | "failed") {
            if tty {
                eprintln!();
            }
            return Ok(view);
        }
        if show {
            let active = view.devices.iter().filter(|d| d.state == "active").count();
            let line = format!(
                "deployment {id}: {}, {active}/{} active{}",
                view.deployment.state,
                view.devices.len(),
                view.deployment.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            );
            if line != last {
                if tty {
                    eprint!("\r{line} [{:.0} s]   ", started.elapsed().as_secs_f64());
                } else {
                    eprintln!("{line}");
                }
                last = line;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints a deployment; exit code 0 when done, 2 when rolled back or failed.
fn finish(view: &DeploymentView, json: bool) -> anyhow::Result<i32> {
    if json {
        print_json(&serde_json::to_value(view)?);
    } else {
        print_deployment(view);
    }
    Ok(if view.deployment.state == "done" { 0 } else { 2 })
}

fn print_deployment(v: &DeploymentView) {
    let d = &v.deployment;
    println!("deployment {} ({}): model {}", d.id, d.state, d.model_id);
    if let Some(r) = &d.reason {
        println!("  reason: {r}");
    }
    if let Some(g) = &d.gate {
        let f = &g["figures"];
        println!(
            "  gate: {} after {:.0} s: {} requests, {} errors, p50 {} ms, p99 {} ms",
            g["verdict"].as_str().unwrap_or("?"),
            f["elapsed_s"].as_f64().unwrap_or(0.0),
            f["requests"],
            f["errors"],
            f["p50_ms"].as_f64().map_or("-".into(), |v| format!("{v:.2}")),
            f["p99_ms"].as_f64().map_or("-".into(), |v| format!("{v:.2}")),
        );
    }
    println!(
        "  {:<24} {:<7} {:<13} {:>9} {:<30} reason",
        "device", "wave", "state", "load ms", "previous model"
    );
    for x in &v.devices {
        println!(
            "  {:<24} {:<7} {:<13} {:>9} {:<30} {}",
            x.device_id,
            if x.wave == 0 { "canary" } else { "rest" },
            x.state,
            x.load_ms.map_or("-".into(), |v| format!("{v:.1}")),
            x.previous_model_id.as_deref().unwrap_or("-"),
            x.reason.as_deref().unwrap_or("")
        );
    }
}

/// `coordinator deployments …`.
pub(super) async fn deployments(cmd: DeploymentsCmd) -> anyhow::Result<i32> {
    match cmd {
        DeploymentsCmd::List { api } => {
            let list: Vec<DeploymentRow> = api.client()?.get("/api/v1/deployments").await?;
            if api.json {
                print_json(&serde_json::to_value(&list)?);
                return Ok(0);
            }
            println!("{:<32} {:<13} {:<28} reason", "deployment", "state", "model");
            for d in &list {
                println!(
                    "{:<32} {:<13} {:<28} {}",
                    d.id,
                    d.state,
                    d.model_id,
                    d.reason.as_deref().unwrap_or("")
                );
            }
            Ok(0)
        }
        DeploymentsCmd::Show { api, id } => {
            let view: DeploymentView =
                api.client()?.get(&format!("/api/v1/deployments/{id}")).await?;
            if api.json {
                print_json(&serde_json::to_value(&view)?);
            } else {
                print_deployment(&view);
            }
            Ok(0)
        }
        DeploymentsCmd::Rollback { api, id, reason, no_wait } => {
            let client = api.client()?;
            let body = serde_json::json!({ "reason": reason });
            let view: DeploymentView =
                client.post(&format!("/api/v1/deployments/{id}/rollback"), &body).await?;
            if no_wait {
                if api.json {
                    print_json(&serde_json::to_value(&view)?);
                } else {
                    print_deployment(&view);
                }
                return Ok(0);
            }
            let view = follow(&client, &id, !api.json).await?;
            if api.json {
                print_json(&serde_json::to_value(&view)?);
            } else {
                print_deployment(&view);
            }
            Ok(if view.deployment.state == "rolled_back" { 0 } else { 2 })
        }
    }
}

/// `coordinator alerts list`.
pub(super) async fn alerts(cmd: AlertsCmd) -> anyhow::Result<i32> {
    let AlertsCmd::List { api, open } = cmd;
    let path = if open { "/api/v1/alerts?open=true" } else { "/api/v1/alerts" };
    let list: Vec<AlertRow> = api.client()?.get(path).await?;
    if api.json {
        print_json(&serde_json::to_value(&list)?);
        return Ok(0);
    }
    if list.is_empty() {
        println!("no alerts");
    }
    for a in &list {
        println!(
            "{} {:<8} {:<15} {} ({}): {}",
            a.id,
            a.state,
            a.rule,
            a.device_id,
            a.class.as_deref().unwrap_or("-"),
            a.message
        );
        if let Some(s) = &a.suggestion_id {
            println!("    suggestion {s}: coordinator suggestions show {s}");
        }
    }
    Ok(0)
}

/// `coordinator suggestions …`.
pub(super) async fn suggestions(cmd: SuggestionsCmd) -> anyhow::Result<i32> {
    match cmd {
        SuggestionsCmd::List { api } => {
            let list: Vec<SuggestionRow> = api.client()?.get("/api/v1/suggestions").await?;
            if api.json {
                print_json(&serde_json::to_value(&list)?);
                return Ok(0);
            }
            if list.is_empty() {
                println!("no suggestions");
            }
            for s in &list {
                println!("{} ({}): {}", s.id, s.class.as_deref().unwrap_or("-"), s.reason);
            }
            Ok(0)
        }
        SuggestionsCmd::Show { api, id } => {
            let s: SuggestionRow = api.client()?.get(&format!("/api/v1/suggestions/{id}")).await?;
            if api.json {
                print_json(&serde_json::to_value(&s)?);
                return Ok(0);
            }
            println!("suggestion {} for class {}", s.id, s.class.as_deref().unwrap_or("-"));
            println!("  {}", s.reason);
            if let Some(p) = &s.pipeline_id {
                println!("  pipeline started from it: {p}");
            }
            println!("  request (coordinator compress --from-suggestion {}):", s.id);
            println!("{}", serde_json::to_string_pretty(&s.request)?);
            Ok(0)
        }
    }
}

/// `coordinator telemetry DEVICE`.
pub(super) async fn telemetry(args: TelemetryArgs) -> anyhow::Result<i32> {
    let since = hone_common::clock::now_ms() as i64 - (args.last_s as i64) * 1000;
    let rows: Vec<TelemetryRow> = args
        .api
        .client()?
        .get(&format!("/api/v1/devices/{}/telemetry?since_ms={since}", args.device))
        .await?;
    if args.api.json {
        print_json(&serde_json::to_value(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<14} {:>7} {:>8} {:>6} {:>6} {:>9} {:>9} {:>8} {:>7} {:>8} model",
        "window start",
        "length",
        "requests",
        "errors",
        "503",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
        "°C",
        "dropped"
    );
    for w in &rows {
        println!(
            "{:<14} {:>6.0}s {:>8} {:>6} {:>6} {:>9} {:>9} {:>8.1} {:>7} {:>8} {}",
            w.window_start_ms,
            w.window_ms as f64 / 1000.0,
            w.requests,
            w.errors,
            w.rejected,
            w.p50_ms.map_or("-".into(), |v| format!("{v:.2}")),
            w.p99_ms.map_or("-".into(), |v| format!("{v:.2}")),
            w.rss_bytes as f64 / 1048576.0,
            w.temperature_c.map_or("-".into(), |v| format!("{v:.0}")),
            w.dropped_windows,
            w.model_id.as_deref().unwrap_or("-")
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_duration_s;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration_s("60s"), Ok(60.0));
        assert_eq!(parse_duration_s("2m"), Ok(120.0));
        assert_eq!(parse_duration_s("500ms"), Ok(0.5));
        assert_eq!(parse_duration_s("90"), Ok(90.0));
        assert!(parse_duration_s("-1s").is_err());
        assert!(parse_duration_s("soon").is_err());
    }
}
