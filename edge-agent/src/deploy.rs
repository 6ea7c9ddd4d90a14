//! Serving on the agent: the supervisor of the serving process.
//!
//! The agent never loads a model itself. It keeps one long-lived child, its own executable
//! with the hidden `serve-child` subcommand (see [`crate::serve`]), started through
//! [`crate::bench::spawn_limited`] under the same plan as benchmarks (CPU quota, cpuset, memory
//! cap), so what is served runs under the limits it was measured with. The child holds the
//! HTTP endpoint and the model, and swaps models in-process only after a new one loaded and
//! warmed up: requests never see a missing model.
//!
//! **Durability.** `serving/active.json` names the model being served; it is written
//! atomically only after the child reported the switch, and the model it replaced moves to
//! `serving/previous.json`. Both files' models stay in the store. An agent killed at any point
//! of an activation therefore comes back serving the old model (the pointer was not yet
//! rewritten) or the new one (it was), never none: at start the supervisor re-activates what
//! `active.json` names. A serving process that dies is restarted the same way.
//!
//! **Serving and benchmarks.** Serving never waits: benchmark jobs run beside it and share the
//! CPU, and their reports carry `served_requests`, the requests served in the telemetry windows
//! that overlapped the measurement.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hone_common::serving::ServingWindow;
use hone_common::wire::{ActivateCommand, ActivationOutcome, ActivationReport, FailureKind};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::host::now_ms;
use crate::serve::{Activate, Command as ChildCommand, Event as ChildEvent};
use crate::store::VerifiedActivation;
use crate::throttle::Plan;
use crate::throttle::cgroup::{Cgroups, Group};

/// How the agent serves.
#[derive(Debug, Clone)]
pub struct ServingConfig {
    /// Listen address (`127.0.0.1:8500`; port 0 picks one). Beyond loopback a token is required.
    pub listen: String,
    /// File holding the bearer token applications must send.
    pub token_file: Option<PathBuf>,
    /// Inferences run at once.
    pub max_concurrency: u32,
    /// Requests that may wait for a slot; more are answered 503.
    pub max_queue: u32,
    /// Telemetry window, ms.
    pub window_ms: u64,
    /// Under an emulated profile, serve along the thermal model (as a `sustained` benchmark).
    pub thermal: bool,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            listen: "127.0.0.1:8500".into(),
            token_file: None,
            max_concurrency: 1,
            max_queue: 16,
            window_ms: 10_000,
            thermal: false,
        }
    }
}

/// The model being served, as recorded on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveModel {
    /// Artifact id.
    pub artifact_id: String,
    /// Model file in the store.
    pub path: PathBuf,
    /// Name it is served under.
    pub model_name: String,
    /// Deployment that activated it.
    pub deployment_id: String,
    /// Symbol sizes.
    pub symbols: Vec<(String, u64)>,
    /// Shapes of inputs with unnamed dynamic dims.
    #[serde(default)]
    pub inputs: hone_common::shapes::InputShapes,
    /// Unknown-token id for telemetry.
    pub unknown_token_id: Option<i64>,
    /// Probe requests per second.
    pub probe_rps: u32,
    /// Seconds of probe traffic after the switch.
    #[serde(default)]
    pub probe_s: u32,
    /// When it became active, Unix ms.
    pub activated_at_ms: u64,
}

/// The pointers in `{state}/serving/`.
#[derive(Debug, Clone)]
pub struct Pointers {
    dir: PathBuf,
}

impl Pointers {
    /// Opens (creating) the serving folder.
    pub fn open(state_dir: &Path) -> std::io::Result<Pointers> {
        let dir = state_dir.join("serving");
        std::fs::create_dir_all(&dir)?;
        Ok(Pointers { dir })
    }

    fn read(&self, name: &str) -> Option<ActiveModel> {
        let bytes = std::fs::read(self.dir.join(name)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!(file = name, error = %e, "unreadable serving pointer ignored");
                None
            }
        }
    }

    /// The model being served, if any (and if its file is still there).
    pub fn active(&self) -> Option<ActiveModel> {
        self.read("active.json").filter(|m| m.path.exists())
    }

    /// The model served before it.
    pub fn previous(&self) -> Option<ActiveModel> {
        self.read("previous.json")
    }

    /// Records a switch: `previous.json` first, then `active.json` (each atomic). A crash
    /// between the two leaves the old model active, which is what the child still serves
    /// after a restart.
    pub fn switch(&self, new: Option<&ActiveModel>) -> std::io::Result<()> {
        if let Some(old) = self.read("active.json") {
            crate::outbox::write_atomic(
                &self.dir.join("previous.json"),
                &serde_json::to_vec(&old).expect("serialises"),
            )?;
        }
        match new {
            Some(m) => crate::outbox::write_atomic(
                &self.dir.join("active.json"),
                &serde_json::to_vec(m).expect("serialises"),
            ),
            None => match std::fs::remove_file(self.dir.join("active.json")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Where the endpoint's address is published for local tools (`endpoint`).
    pub fn endpoint_file(&self) -> PathBuf {
        self.dir.join("endpoint")
    }
}

/// A request to the supervisor.
#[derive(Debug)]
pub enum Request {
    /// Serve this verified model (`path` is `None` when the activation stops serving).
    Activate {
        /// The verified command.
        cmd: Box<VerifiedActivation>,
        /// The verified model file.
        path: Option<PathBuf>,
        /// Order in which the agent accepted the command: downloads finish in any order, and a
        /// command accepted before one already applied is stale (a rollback overtaking the
        /// download it undoes).
        seq: u64,
    },
}

/// What the supervisor reports to the agent loop.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per window, moved once
pub enum Report {
    /// An activation ended.
    Activation(ActivationReport),
    /// A window of serving ended.
    Window {
        /// What was served.
        active: Option<ActiveModel>,
        /// The window.
        window: Box<ServingWindow>,
        /// Whether the emulated device was throttled (thermal model) at the window's end.
        thermal: Option<crate::throttle::ThermalPoint>,
    },
}

/// Everything the supervisor needs.
pub struct Supervisor {
    /// Executable with the `serve-child` subcommand (the agent itself).
    pub exe: PathBuf,
    /// Serving settings.
    pub config: ServingConfig,
    /// The profile's plan.
    pub plan: Plan,
    /// Cgroup controllers.
    pub cgroups: Cgroups,
    /// Pointers on disk.
    pub pointers: Pointers,
}

struct Child {
    process: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    events: mpsc::Receiver<ChildEvent>,
    group: Option<Group>,
    started: Instant,
    base_quota: Option<u64>,
}

impl Child {
    async fn send(&mut self, cmd: &ChildCommand) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(cmd).expect("serialises");
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await
    }

    async fn stop(mut self) {
        let _ = self.send(&ChildCommand::Shutdown {}).await;
        if tokio::time::timeout(Duration::from_secs(5), self.process.wait()).await.is_err() {
            let _ = self.process.kill().await;
        }
        if let Some(g) = &self.group {
            g.remove();
        }
    }
}

/// An activation the child is working on.
struct Pending {
    cmd: Box<VerifiedActivation>,
    model: ActiveModel,
    deadline: Instant,
    /// `false` for the re-activation after a restart (nobody waits for a report).
    report: bool,
}

impl Supervisor {
    /// Runs until `requests` closes. Re-activates the recorded model first.
    pub async fn run(self, mut requests: mpsc::Receiver<Request>, reports: mpsc::Sender<Report>) {
        let mut child: Option<Child> = None;
        let mut pending: Option<Pending> = None;
        let mut restart_at: Option<Instant> = Some(Instant::now());
        let mut thermal_tick = tokio::time::interval(Duration::from_millis(250));
        // The serving process's address, and the probe traffic sent to it.
        let mut endpoint: Option<std::net::SocketAddr> = None;
        let mut probe: Option<tokio::task::JoinHandle<()>> = None;
        let mut latest_seq = 0;
        loop {
            // (Re)start the serving process when a model should be served.
            if child.is_none()
                && restart_at.is_some_and(|t| t <= Instant::now())
                && let Some(active) = self.pointers.active()
            {
                restart_at = None;
                match self.spawn().await {
                    Ok(mut c) => {
                        info!(artifact = %active.artifact_id, "serving process started: re-activating the recorded model");
                        if let Err(e) = c.send(&activate_line("recover", &active)).await {
                            warn!(error = %e, "cannot talk to the serving process");
                        }
                        child = Some(c);
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot start the serving process; retrying in 5 s");
                        restart_at = Some(Instant::now() + Duration::from_secs(5));
                    }
                }
            }
            let deadline = pending.as_ref().map(|p| p.deadline);
            tokio::select! {
                request = requests.recv() => {
                    let Some(Request::Activate { cmd, path, seq }) = request else {
                        stop_probe(&mut probe);
                        if let Some(c) = child.take() { c.stop().await; }
                        return;
                    };
                    if seq < latest_seq {
                        warn!(command = %cmd.command_id, "activation superseded by a later command: not applied");
                        let report = failed(&cmd, FailureKind::Internal, "superseded by a later activation command".into(), self.pointers.active());
                        let _ = reports.send(Report::Activation(report)).await;
                        continue;
                    }
                    latest_seq = seq;
                    if let Some(p) = &pending {
                        let report = failed(&cmd, FailureKind::Busy, format!("activation {} is in progress", p.cmd.command_id), self.pointers.active());
                        let _ = reports.send(Report::Activation(report)).await;
                        continue;
                    }
                    let previous = self.pointers.active();
                    let Some(path) = path else {
                        // Stop serving: the rollback of a first deployment.
                        stop_probe(&mut probe);
                        if let Some(c) = child.take() { c.stop().await; }
                        let outcome = match self.pointers.switch(None) {
                            Ok(()) => ActivationOutcome::Active { load_ms: 0.0, warmup_ms: 0.0, previous: previous.map(|p| p.artifact_id) },
                            Err(e) => ActivationOutcome::Failed { kind: FailureKind::Internal, reason: format!("recording the switch: {e}"), serving: previous.map(|p| p.artifact_id) },
                        };
                        let _ = reports.send(Report::Activation(report_of(&cmd, outcome))).await;
                        continue;
                    };
                    let model = ActiveModel {
                        artifact_id: cmd.artifact.as_ref().map(|a| a.artifact_id.clone()).unwrap_or_default(),
                        path,
                        model_name: cmd.model_name.clone(),
                        deployment_id: cmd.deployment_id.clone(),
                        symbols: cmd.symbols.clone(),
                        inputs: cmd.inputs.clone(),
                        unknown_token_id: cmd.unknown_token_id,
                        probe_rps: cmd.probe_rps,
                        probe_s: cmd.probe_s,
                        activated_at_ms: 0,
                    };
                    if child.is_none() {
                        match self.spawn().await {
                            Ok(mut c) => {
                                // A fresh process (the old one died and its restart was not
                                // due yet): it serves the recorded model first, so that a new
                                // model that fails to load leaves it serving, as reported.
                                if let Some(active) = &previous
                                    && let Err(e) = c.send(&activate_line("recover", active)).await
                                {
                                    warn!(error = %e, "cannot talk to the serving process");
                                }
                                restart_at = None;
                                child = Some(c);
                            }
                            Err(e) => {
                                let report = failed(&cmd, FailureKind::Internal, format!("cannot start the serving process: {e}"), previous);
                                let _ = reports.send(Report::Activation(report)).await;
                                continue;
                            }
                        }
                    }
                    let c = child.as_mut().expect("started above");
                    if let Err(e) = c.send(&activate_line(&cmd.command_id, &model)).await {
                        let report = failed(&cmd, FailureKind::Crashed, format!("the serving process does not take commands: {e}"), previous);
                        let _ = reports.send(Report::Activation(report)).await;
                        continue;
                    }
                    let timeout = Duration::from_millis(cmd.timeout_ms.max(1000));
                    pending = Some(Pending { cmd, model, deadline: Instant::now() + timeout, report: true });
                }
                event = next_event(&mut child) => match event {
                    Some(ChildEvent::Listening { addr, .. }) => {
                        info!(%addr, "serving endpoint listening");
                        endpoint = Some(addr);
                        let _ = crate::outbox::write_atomic(&self.pointers.endpoint_file(), format!("http://{addr}\n").as_bytes());
                    }
                    Some(ChildEvent::Activated { id, load_ms, warmup_ms, .. }) => {
                        if let Some(p) = pending.take_if(|p| p.cmd.command_id == id) {
                            let previous = self.pointers.active().map(|m| m.artifact_id);
                            let mut model = p.model;
                            model.activated_at_ms = now_ms();
                            let outcome = match self.pointers.switch(Some(&model)) {
                                Ok(()) => {
                                    info!(artifact = %model.artifact_id, deployment = %model.deployment_id, load_ms, "model active");
                                    ActivationOutcome::Active { load_ms, warmup_ms, previous }
                                }
                                Err(e) => ActivationOutcome::Failed { kind: FailureKind::Internal, reason: format!("the model is served but the switch could not be recorded: {e}"), serving: Some(model.artifact_id.clone()) },
                            };
                            if p.report {
                                let _ = reports.send(Report::Activation(report_of(&p.cmd, outcome))).await;
                            }
                        }
                        // A switch (or the recovery of the recorded model): probe what is served now.
                        stop_probe(&mut probe);
                        if let (Some(addr), Some(active)) = (endpoint, self.pointers.active())
                            && active.probe_rps > 0
                        {
                            let token = self.config.token_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).map(|t| t.trim().to_string());
                            probe = Some(tokio::spawn(send_probes(format!("http://{addr}"), active.model_name, active.probe_rps, Duration::from_secs(u64::from(active.probe_s)), token)));
                        }
                    }
                    Some(ChildEvent::ActivationFailed { id, kind, reason, .. }) => {
                        if let Some(p) = pending.take_if(|p| p.cmd.command_id == id) {
                            warn!(artifact = %p.model.artifact_id, %reason, "activation failed: the previous model stays active");
                            let report = failed(&p.cmd, kind, reason, self.pointers.active());
                            let _ = reports.send(Report::Activation(report)).await;
                        } else if id == "recover" {
                            warn!(%reason, "the recorded model does not load any more");
                        }
                    }
                    Some(ChildEvent::Window { window, .. }) => {
                        let thermal = child.as_ref().and_then(|c| self.thermal_point(c));
                        let _ = reports.send(Report::Window { active: self.pointers.active(), window: Box::new(window), thermal }).await;
                    }
                    Some(ChildEvent::Error { message }) => warn!(%message, "serving process error"),
                    None => {
                        // The serving process ended.
                        stop_probe(&mut probe);
                        endpoint = None;
                        if let Some(mut c) = child.take() {
                            let status = c.process.wait().await.map(|s| describe(&s)).unwrap_or_else(|e| e.to_string());
                            let oom = c.group.as_ref().is_some_and(Group::oom_killed);
                            if let Some(g) = &c.group { g.remove(); }
                            let why = if oom { "it exceeded the profile's memory cap".to_string() } else { status };
                            warn!(%why, "the serving process ended; restarting it with the active model");
                            if let Some(p) = pending.take() {
                                let kind = if oom { FailureKind::Oom } else { FailureKind::Crashed };
                                let report = failed(&p.cmd, kind, format!("the serving process died while activating the model: {why}"), self.pointers.active());
                                let _ = reports.send(Report::Activation(report)).await;
                            }
                        }
                        restart_at = Some(Instant::now() + Duration::from_secs(1));
                    }
                },
                _ = sleep_until(deadline) => {
                    if let Some(p) = pending.take() {
                        warn!(artifact = %p.model.artifact_id, "activation timed out: restarting the serving process with the previous model");
                        stop_probe(&mut probe);
                        endpoint = None;
                        if let Some(c) = child.take() { c.stop().await; }
                        restart_at = Some(Instant::now());
                        let report = failed(&p.cmd, FailureKind::Timeout, format!("loading and warming up took longer than {} ms", p.cmd.timeout_ms), self.pointers.active());
                        let _ = reports.send(Report::Activation(report)).await;
                    }
                }
                _ = thermal_tick.tick(), if self.config.thermal => {
                    if let Some(c) = &child
                        && let (Some(point), Some(g)) = (self.thermal_point(c), &c.group)
                        && let Err(e) = g.set_quota(point.quota_us)
                    {
                        warn!(error = %e, "cannot apply the thermal model's quota to the serving process");
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(500)), if child.is_none() => {}
            }
        }
    }

    fn thermal_point(&self, c: &Child) -> Option<crate::throttle::ThermalPoint> {
        c.base_quota?;
        self.config.thermal.then(|| self.plan.thermal_at(c.started.elapsed().as_secs_f64()))?
    }

    async fn spawn(&self) -> std::io::Result<Child> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("serve-child")
            .arg("--listen")
            .arg(&self.config.listen)
            .arg("--max-concurrency")
            .arg(self.config.max_concurrency.to_string())
            .arg("--max-queue")
            .arg(self.config.max_queue.to_string())
            .arg("--window-ms")
            .arg(self.config.window_ms.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .env("RUST_LOG", "warn");
        if let Some(t) = &self.config.token_file {
            cmd.arg("--token-file").arg(t);
        }
        let limited = crate::bench::spawn_limited(cmd, "serve", &self.plan, &self.cgroups).await?;
        for e in &limited.plan.not_enforced {
            warn!(limit = %e, "serving process: a limit of the profile is not enforced");
        }
        let mut process = limited.child;
        let stdin = process.stdin.take().ok_or_else(|| std::io::Error::other("no stdin"))?;
        let stdout = process.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
        let (tx, events) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<ChildEvent>(&line) {
                    Ok(e) => {
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, line = %line.chars().take(200).collect::<String>(), "unreadable line from the serving process")
                    }
                }
            }
        });
        Ok(Child {
            process,
            stdin,
            events,
            group: limited.group,
            started: Instant::now(),
            base_quota: limited.plan.quota_us,
        })
    }
}

/// Probe traffic never lasts longer than this after a switch, whatever the command asks: it
/// is for a canary gate, not a load the device carries for ever.
pub const PROBE_FOR: Duration = Duration::from_secs(3600);

fn stop_probe(probe: &mut Option<tokio::task::JoinHandle<()>>) {
    if let Some(p) = probe.take() {
        p.abort();
    }
}

/// Probe traffic: about `rps` synthetic requests per second (loadgen's inputs from the model's
/// metadata) to the serving process's own endpoint, so that a quiet device still gives the
/// canary gate requests to judge. One at a time: a model slower than the rate gets fewer
/// probes, never a queue. Runs for `lasting` (the command's `probe_s`, at most [`PROBE_FOR`]), or
/// until aborted (a switch, the end of the serving process). Probes carry
/// [`crate::serve::kserve::PROBE_HEADER`]: their synthetic inputs stay out of the drift
/// statistics.
async fn send_probes(
    base: String,
    model: String,
    rps: u32,
    lasting: Duration,
    token: Option<String>,
) {
    let started = Instant::now();
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => return warn!(error = %e, "probe traffic: no HTTP client"),
    };
    let options = crate::loadgen::LoadgenOptions {
        url: base.clone(),
        model: Some(model.clone()),
        rates: vec![f64::from(rps)],
        duration: Duration::ZERO,
        concurrency: 1,
        token: token.clone(),
        inputs: None,
        // Binary tensors: the probe costs what the model costs, not JSON parsing.
        binary: true,
    };
    let bodies = match crate::loadgen::prepare(&client, &base, &options).await {
        Ok(b) if !b.is_empty() => b,
        Ok(_) => return,
        Err(e) => return warn!(error = %format!("{e:#}"), "probe traffic: cannot build requests"),
    };
    info!(%model, rps, "probe traffic started");
    let target = format!("{base}/v2/models/{model}/infer");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for i in 0usize.. {
        tick.tick().await;
        if started.elapsed() > lasting.min(PROBE_FOR) {
            info!(%model, "probe traffic ended");
            return;
        }
        let request =
            crate::loadgen::build_request(&client, &target, &bodies[i % bodies.len()], &token)
                .header(crate::serve::kserve::PROBE_HEADER, "1");
        if let Ok(response) = request.send().await {
            let _ = response.bytes().await;
        }
    }
}

fn activate_line(id: &str, m: &ActiveModel) -> ChildCommand {
    ChildCommand::Activate(Activate {
        id: id.to_string(),
        model_path: m.path.clone(),
        name: m.model_name.clone(),
        artifact_id: m.artifact_id.clone(),
        symbols: m.symbols.clone(),
        inputs: m.inputs.clone(),
        warmup: 3,
        unknown_token_id: m.unknown_token_id,
    })
}

async fn next_event(child: &mut Option<Child>) -> Option<ChildEvent> {
    match child {
        Some(c) => c.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The report of an activation command (verified or not: a refusal answers too).
pub fn report_of(cmd: &ActivateCommand, outcome: ActivationOutcome) -> ActivationReport {
    ActivationReport {
        command_id: cmd.command_id.clone(),
        deployment_id: cmd.deployment_id.clone(),
        artifact_id: cmd.artifact.as_ref().map(|a| a.artifact_id.clone()),
        outcome,
        sent_at_ms: now_ms(),
    }
}

fn failed(
    cmd: &VerifiedActivation,
    kind: FailureKind,
    reason: String,
    serving: Option<ActiveModel>,
) -> ActivationReport {
    report_of(
        cmd,
        ActivationOutcome::Failed { kind, reason, serving: serving.map(|m| m.artifact_id) },
    )
}

fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(sig)) => format!("killed by signal {sig}"),
        (Some(code), _) => format!("exited with code {code}"),
        _ => "ended".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, dir: &Path) -> ActiveModel {
        let path = dir.join(format!("{id}.onnx"));
        std::fs::write(&path, b"x").unwrap();
        ActiveModel {
            artifact_id: id.into(),
            path,
            model_name: "m".into(),
            deployment_id: "d".into(),
            symbols: vec![],
            inputs: Default::default(),
            unknown_token_id: None,
            probe_rps: 0,
            probe_s: 0,
            activated_at_ms: 1,
        }
    }

    #[test]
    fn a_switch_keeps_the_replaced_model_as_previous() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pointers::open(dir.path()).unwrap();
        assert_eq!(p.active(), None);
        p.switch(Some(&model("a", dir.path()))).unwrap();
        p.switch(Some(&model("b", dir.path()))).unwrap();
        assert_eq!(p.active().unwrap().artifact_id, "b");
        assert_eq!(p.previous().unwrap().artifact_id, "a");
        p.switch(None).unwrap();
        assert_eq!(p.active(), None);
        assert_eq!(p.previous().unwrap().artifact_id, "b");
    }

    #[test]
    fn a_pointer_to_a_missing_file_or_garbage_is_no_model() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pointers::open(dir.path()).unwrap();
        let m = model("a", dir.path());
        p.switch(Some(&m)).unwrap();
        std::fs::remove_file(&m.path).unwrap();
        assert_eq!(p.active(), None, "the model file is gone");
        std::fs::write(dir.path().join("serving/active.json"), b"{not json").unwrap();
        assert_eq!(p.active(), None);
    }
}
