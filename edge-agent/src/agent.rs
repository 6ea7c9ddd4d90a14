//! The agent loop: one task owns the MQTT event loop, the durable state and the busy flag;
//! jobs run in their own task and report back through a channel.
//!
//! Events handled (a closed set): bus events (connected, message, disconnected), a finished
//! job, a fetched or refused activation, a report of the serving supervisor (see
//! [`crate::deploy`]), and shutdown. One job runs at a time; a job that arrives while busy is
//! answered with a `busy` failure, which the coordinator retries later. Serving never waits for
//! a job: both share the device, and a job's report says how many requests were served while
//! it was measured.
//!
//! Telemetry windows are published while the broker is reachable; while it is not, the last
//! [`TELEMETRY_BUFFER`] windows wait and older ones are dropped and counted in the next window
//! that goes out (`dropped_windows`).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use hone_common::topic::{self, CmdKind, EvtKind, Topic};
use hone_common::wire::{
    self, ActivateCommand, ActivationOutcome, FailureKind, JobAccepted, JobCommand, JobResult,
    Message, Outcome, Telemetry,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::host::{HostFacts, now_ms};
use crate::mqtt::{self, BusEvent, BusHandle};
use crate::outbox::{DocKind, Durable};
use crate::store::{ArtifactError, ModelStore, VerifiedJob};
use crate::throttle::cgroup::Cgroups;
use crate::throttle::{Plan, PlanInput};
use crate::trust::Trust;
use hone_common::bench::EmulationStatus;

/// Counters the agent keeps about what it rejected.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rejections {
    /// Payloads that failed to decode (malformed, oversized, wrong version).
    pub undecodable: u64,
}

/// A disk fault the agent works around: results it could not write to the outbox are kept in
/// memory (and published anyway), the fault is announced in the status message, and every
/// [`RETRY_EVERY`] the agent tries again.
#[derive(Debug, Default)]
pub struct Faults {
    /// Results not yet in the outbox: (result id, payload).
    unsaved: Vec<(String, Vec<u8>)>,
    /// The outbox could not be read when the agent (re)connected.
    pending_unread: bool,
    /// The last error, as announced.
    last: Option<String>,
}

/// How often a faulty agent retries its disk writes.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// Telemetry windows kept while the broker is unreachable; older ones are dropped (counted).
pub const TELEMETRY_BUFFER: usize = 60;

/// Activation reports kept to answer a redelivered command.
const REPORTS_KEPT: usize = 32;

/// How often a device whose certificate expired asks whether its re-enrolment was approved.
const REENROL_EVERY: Duration = Duration::from_secs(5);

/// Serving state kept by the agent loop.
struct ServingState {
    requests: Option<mpsc::Sender<crate::deploy::Request>>,
    /// Reports by command id, to answer redeliveries (newest last).
    reports: VecDeque<(String, Vec<u8>)>,
    /// Telemetry waiting for the broker (encoded when it goes out, so that only the first
    /// one out carries the count of dropped windows).
    unsent: VecDeque<Telemetry>,
    /// Windows dropped and not yet reported in a window that went out.
    dropped: u64,
    seq: u64,
    /// Recent windows: (start ms, end ms, requests), to count what a benchmark shared the CPU
    /// with.
    recent: VecDeque<(u64, u64, u64)>,
    /// Job id → Unix ms when it started.
    job_started: HashMap<String, u64>,
    /// Activations accepted by this process and not yet reported.
    in_flight: std::collections::HashSet<String>,
    /// Activations accepted so far (their order, for the supervisor).
    accepted: u64,
}

impl ServingState {
    fn remember(&mut self, command_id: &str, payload: &[u8]) {
        if self.reports.len() >= REPORTS_KEPT {
            self.reports.pop_front();
        }
        self.reports.push_back((command_id.to_string(), payload.to_vec()));
    }

    /// Publishes a window. Each drop is counted once, by the first window out after it.
    fn send(&mut self, bus: &BusHandle, device: &str, mut telemetry: Telemetry) {
        telemetry.dropped_windows = self.dropped;
        match wire::encode(&Message::Telemetry(telemetry)) {
            Ok(payload) => {
                self.dropped = 0;
                publish(bus, &topic::evt(device, EvtKind::Telemetry), payload, false);
            }
            Err(e) => {
                self.dropped += 1;
                warn!(error = %e, "a telemetry window could not be encoded");
            }
        }
    }

    /// Requests served in windows overlapping `[from, to]`; `None` if nothing was served.
    fn served_between(&self, from: u64, to: u64, serving: bool) -> Option<u64> {
        serving.then(|| {
            self.recent.iter().filter(|(s, e, _)| *e >= from && *s <= to).map(|(_, _, n)| n).sum()
        })
    }
}

impl Faults {
    fn record(&mut self, what: &str, e: &dyn std::fmt::Display) {
        let text = format!("{what}: {e}");
        warn!(fault = %text, retry_in_s = RETRY_EVERY.as_secs(), "agent state fault: serving on and retrying");
        self.last = Some(text);
    }

    fn is_faulty(&self) -> bool {
        self.last.is_some()
    }

    /// Retries what failed; returns `true` when the fault cleared.
    fn retry(&mut self, durable: &Durable, publish_pending: impl Fn(Vec<u8>)) -> bool {
        let mut still = Vec::new();
        let mut error = durable.probe().err().map(|e| format!("state folder: {e}"));
        for (id, payload) in std::mem::take(&mut self.unsaved) {
            if let Err(e) = durable.put(&id, &payload) {
                error = Some(format!("writing result {id} to the outbox: {e}"));
                still.push((id, payload));
            }
        }
        self.unsaved = still;
        if self.pending_unread {
            match durable.pending() {
                Ok(list) => {
                    self.pending_unread = false;
                    list.into_iter().for_each(&publish_pending);
                }
                Err(e) => error = Some(format!("reading the outbox: {e}")),
            }
        }
        match error {
            Some(text) => {
                self.last = Some(text);
                false
            }
            None => {
                let was = self.last.take();
                if let Some(w) = was {
                    info!(cleared = %w, "agent state fault cleared");
                    return true;
                }
                false
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    hone_common::validate_device_id(&config.device_id).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
    let mut durable = Durable::open(&config.state_dir).context("opening agent state")?;
    let session = durable.next_session().context("updating the session counter")?;
    let (chain_tx, mut chain_rx) = mpsc::channel::<crate::trust::Fetched>(2);
    let mut trust = Trust::new(
        trusted_key(&config).await?,
        &config.state_dir,
        &config.coordinator_url,
        chain_tx,
    );
    let mut config = config;
    if let Some(identity) = &mut config.identity {
        if identity.expired(hone_common::clock::now_ms() as i64) {
            warn!(device = %config.device_id, "the device certificate has expired: asking to re-enrol");
            identity.reenroll(REENROL_EVERY).await?;
        }
        tokio::spawn(identity.clone().keep_renewed(Duration::from_secs(60)));
    }
    let tls = config.identity.as_ref().map(|i| i.config());
    trust.set_tls(tls.clone());
    let store = ModelStore::open_tls(&config.state_dir.join("store"), tls.clone())
        .context("opening model store")?;
    config.runtimes =
        crate::bench::available_runtimes(&config.bench_exe, config.ort_lib.as_deref()).await;
    for r in &config.runtimes {
        match (&r.version, &r.problem) {
            (Some(v), _) => info!(runtime = %r.runtime, version = %v, "runtime available"),
            (None, Some(p)) if config.ort_lib.is_some() => {
                warn!(runtime = %r.runtime, problem = %p, "runtime unavailable: its jobs are refused, tract jobs run")
            }
            (None, p) => {
                info!(runtime = %r.runtime, problem = p.as_deref().unwrap_or(""), "runtime unavailable")
            }
        }
    }
    let config = config;
    let mut host = HostFacts::read();
    host.runtimes = config.runtimes.clone();
    let host = host;
    let profile = config.profile.as_ref().map(|p| p.name.as_str());
    let emulation = std::sync::Arc::new(prepare_emulation(&config, &host).await);

    let will = wire::encode(&Message::Status(host.status(
        &config.device_id,
        false,
        session,
        profile,
        None,
    )))?;
    let (bus, mut bus_loop) = mqtt::connect(
        &mqtt::BusConfig {
            host: config.broker_host.clone(),
            port: config.broker_port,
            client_id: config.device_id.clone(),
            keepalive: config.keepalive,
            will: (topic::status(&config.device_id), will),
        },
        tls,
    );
    info!(device = %config.device_id, session, broker = %format!("{}:{}", config.broker_host, config.broker_port), "agent starting");

    let (done_tx, mut done_rx) = mpsc::channel::<JobResult>(4);
    let (report_tx, mut report_rx) = mpsc::channel::<crate::deploy::Report>(64);
    let pointers =
        crate::deploy::Pointers::open(&config.state_dir).context("opening the serving state")?;
    let mut serving = ServingState {
        requests: None,
        reports: VecDeque::new(),
        unsent: VecDeque::new(),
        dropped: 0,
        seq: 0,
        recent: VecDeque::new(),
        job_started: HashMap::new(),
        in_flight: Default::default(),
        accepted: 0,
    };
    if let Some(serve) = &config.serving {
        let (tx, rx) = mpsc::channel(8);
        serving.requests = Some(tx);
        let supervisor = crate::deploy::Supervisor {
            exe: config.bench_exe.clone(),
            config: serve.clone(),
            plan: emulation.0.clone(),
            cgroups: emulation.1.clone(),
            pointers: pointers.clone(),
        };
        tokio::spawn(supervisor.run(rx, report_tx.clone()));
    }
    let mut connected = false;
    let mut busy: Option<String> = None;
    let mut backoff = Duration::from_millis(200);
    let mut rejections = Rejections::default();
    let mut faults = Faults::default();
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let status = |online: bool, faults: &Faults| -> anyhow::Result<Vec<u8>> {
        Ok(wire::encode(&Message::Status(host.status(
            &config.device_id,
            online,
            session,
            profile,
            faults.last.as_deref(),
        )))?)
    };
    let result_topic = topic::evt(&config.device_id, EvtKind::Result);

    loop {
        tokio::select! {
            event = bus_loop.next() => match event {
                BusEvent::Connected { session_present } => {
                    backoff = Duration::from_millis(200);
                    connected = true;
                    for telemetry in std::mem::take(&mut serving.unsent) {
                        serving.send(&bus, &config.device_id, telemetry);
                    }
                    info!(session_present, "connected to broker");
                    match durable.pending() {
                        Ok(list) => {
                            for payload in list {
                                publish(&bus, &result_topic, payload, false);
                            }
                        }
                        Err(e) => {
                            faults.pending_unread = true;
                            faults.record("reading the outbox", &e);
                        }
                    }
                    for (_, payload) in &faults.unsaved {
                        publish(&bus, &result_topic, payload.clone(), false);
                    }
                    publish(&bus, &topic::status(&config.device_id), status(true, &faults)?, true);
                    if let Err(e) = bus.subscribe(&topic::agent_subscription(&config.device_id)) {
                        warn!(error = %e, "subscribe failed");
                    }
                }
                BusEvent::Message { topic, payload } => {
                    let was_faulty = faults.is_faulty();
                    handle_message(&config, &mut durable, &mut faults, &bus, &store, &mut trust, &emulation, &done_tx, &mut busy, &mut rejections, &mut serving, &report_tx, &topic, &payload)?;
                    if faults.is_faulty() && !was_faulty {
                        publish(&bus, &topic::status(&config.device_id), status(true, &faults)?, true);
                    }
                }
                BusEvent::Disconnected(reason) => {
                    connected = false;
                    warn!(%reason, retry_in_ms = backoff.as_millis() as u64, "broker connection lost");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            },
            Some(fetched) = chain_rx.recv() => {
                // The key chain came back: the documents that waited for it are verified once
                // more (under the new key if the chain led to one), and not parked again.
                let parked = trust.on_fetched(fetched);
                trust.retrying = true;
                for (topic, payload) in parked {
                    handle_message(&config, &mut durable, &mut faults, &bus, &store, &mut trust, &emulation, &done_tx, &mut busy, &mut rejections, &mut serving, &report_tx, &topic, &payload)?;
                }
                trust.retrying = false;
            }
            Some(mut result) = done_rx.recv() => {
                busy = None;
                if let Outcome::Ok(report) = &mut result.outcome {
                    let from = serving.job_started.remove(&result.job_id).unwrap_or(0);
                    report.served_requests = serving.served_between(from, now_ms(), pointers.active().is_some());
                }
                let payload = wire::encode(&Message::JobResult(result.clone()))?;
                if let Err(e) = durable.put(&result.result_id, &payload) {
                    faults.unsaved.push((result.result_id.clone(), payload.clone()));
                    faults.record("writing a result to the outbox", &e);
                    publish(&bus, &topic::status(&config.device_id), status(true, &faults)?, true);
                }
                info!(job = %result.job_id, attempt = result.attempt, ok = matches!(result.outcome, Outcome::Ok(_)), "job finished");
                publish(&bus, &result_topic, payload, false);
            }
            Some(report) = report_rx.recv() => match report {
                crate::deploy::Report::Activation(r) => {
                    info!(command = %r.command_id, deployment = %r.deployment_id, ok = matches!(r.outcome, ActivationOutcome::Active { .. }), "activation finished");
                    let payload = wire::encode(&Message::ActivationReport(r.clone()))?;
                    // A busy refusal is not the command's answer: its redelivery is tried again.
                    if !matches!(r.outcome, ActivationOutcome::Failed { kind: FailureKind::Busy, .. }) {
                        serving.remember(&r.command_id, &payload);
                    }
                    serving.in_flight.remove(&r.command_id);
                    publish(&bus, &topic::evt(&config.device_id, EvtKind::Activation), payload, false);
                }
                crate::deploy::Report::Window { active, window, thermal } => {
                    let window = *window;
                    let end = window.window_start_ms + window.window_ms;
                    if serving.recent.len() >= 64 { serving.recent.pop_front(); }
                    serving.recent.push_back((window.window_start_ms, end, window.requests));
                    serving.seq += 1;
                    let sensor = crate::readings::sample(0.0);
                    let (temperature_c, clock_mhz, throttled, reading_source) = match thermal {
                        Some(p) => (Some(p.temperature_c), Some(p.clock_mhz), emulation.0.quota_us.is_some_and(|q| p.quota_us < q), Some(hone_common::bench::ReadingSource::Modelled)),
                        None => (sensor.temperature_c, sensor.cpu_mhz, sensor.throttled, (sensor.temperature_c.is_some() || sensor.cpu_mhz.is_some()).then_some(hone_common::bench::ReadingSource::Sensor)),
                    };
                    let telemetry = Telemetry {
                        device_id: config.device_id.clone(),
                        seq: serving.seq,
                        session,
                        artifact_id: active.as_ref().map(|a| a.artifact_id.clone()),
                        deployment_id: active.as_ref().map(|a| a.deployment_id.clone()),
                        window,
                        temperature_c,
                        clock_mhz,
                        throttled,
                        reading_source,
                        dropped_windows: serving.dropped,
                    };
                    if connected {
                        serving.send(&bus, &config.device_id, telemetry);
                    } else {
                        if serving.unsent.len() >= TELEMETRY_BUFFER {
                            serving.unsent.pop_front();
                            serving.dropped += 1;
                        }
                        serving.unsent.push_back(telemetry);
                    }
                }
            },
            _ = retry.tick(), if faults.is_faulty() => {
                if faults.retry(&durable, |p| publish(&bus, &result_topic, p, false)) {
                    publish(&bus, &topic::status(&config.device_id), status(true, &faults)?, true);
                }
            }
            () = &mut shutdown => {
                info!("shutting down");
                if !faults.unsaved.is_empty() {
                    warn!(results = faults.unsaved.len(), "results not in the outbox are lost at shutdown unless the coordinator acknowledged them");
                }
                publish(&bus, &topic::status(&config.device_id), status(false, &faults)?, true);
                let _ = bus.disconnect();
                bus_loop.drain(Duration::from_secs(2)).await;
                return Ok(());
            }
        }
    }
}

fn publish(bus: &BusHandle, topic: &str, payload: Vec<u8>, retain: bool) {
    if let Err(e) = bus.publish(topic, payload, retain) {
        warn!(%topic, error = %e, "publish failed");
    }
}

#[allow(clippy::too_many_arguments)]
fn handle_message(
    config: &AgentConfig,
    durable: &mut Durable,
    faults: &mut Faults,
    bus: &BusHandle,
    store: &ModelStore,
    trust: &mut Trust,
    emulation: &std::sync::Arc<(Plan, Cgroups)>,
    done_tx: &mpsc::Sender<JobResult>,
    busy: &mut Option<String>,
    rejections: &mut Rejections,
    serving: &mut ServingState,
    activations: &mpsc::Sender<crate::deploy::Report>,
    topic_name: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let Some(Topic::Cmd { device, kind }) = topic::parse(topic_name) else {
        debug!(topic = %topic_name, "ignoring message on foreign topic");
        return Ok(());
    };
    if device != config.device_id {
        return Ok(());
    }
    let message = match wire::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            rejections.undecodable += 1;
            warn!(topic = %topic_name, error = %e, rejected = rejections.undecodable, "rejected payload");
            return Ok(());
        }
    };
    match (kind, message) {
        (CmdKind::Ack, Message::ResultAck(ack)) => {
            faults.unsaved.retain(|(id, _)| id != &ack.result_id);
            match durable.ack(&ack.result_id) {
                Ok(true) => debug!(result = %ack.result_id, "result acknowledged"),
                Ok(false) => {}
                // The result stays pending and is re-sent; the coordinator acknowledges again.
                Err(e) => faults.record("removing an acknowledged result", &e),
            }
        }
        (CmdKind::Job, Message::RunJob(job)) => {
            // Nothing in the document is acted on (not even its command id recorded) before its
            // signature and sequence number hold. A refusal is reported once, and nothing of it
            // is stored.
            let last = durable.last_accepted(DocKind::Job).cloned();
            let job = match crate::store::verify_job(job, trust.key(), now_ms(), last.as_ref()) {
                Ok(job) => job,
                Err(refused) => {
                    let (job, e) = *refused;
                    if matches!(e, ArtifactError::BadSignature(_))
                        && trust.park(topic_name, payload)
                    {
                        // Verified again once the coordinator's key chain is fetched.
                        return Ok(());
                    }
                    warn!(job = %job.job_id, command = %job.command_id, seq = job.seq, error = %e, "job document refused");
                    if matches!(e, ArtifactError::Replayed { .. }) {
                        // This agent may hold the answer to that command already: it is sent
                        // again rather than a refusal the coordinator could take for it.
                        let id = result_id_of(&job);
                        if busy.as_deref() == Some(job.job_id.as_str()) {
                            return Ok(());
                        }
                        let unsaved = faults.unsaved.iter().find(|(u, _)| *u == id);
                        if let Some(pending) =
                            durable.get(&id).or_else(|| unsaved.map(|(_, p)| p.clone()))
                        {
                            publish(
                                bus,
                                &topic::evt(&config.device_id, EvtKind::Result),
                                pending,
                                false,
                            );
                            return Ok(());
                        }
                    }
                    let result = JobResult {
                        result_id: result_id_of(&job),
                        command_id: job.command_id,
                        job_id: job.job_id,
                        attempt: job.attempt,
                        outcome: Outcome::Failed { kind: e.kind(), reason: e.to_string() },
                    };
                    let payload = wire::encode(&Message::JobResult(result))?;
                    publish(bus, &topic::evt(&config.device_id, EvtKind::Result), payload, false);
                    return Ok(());
                }
            };
            let result_id = result_id(&job.job_id, job.attempt);
            let refuse = |kind: FailureKind, reason: String| -> anyhow::Result<()> {
                let result = JobResult {
                    result_id: result_id.clone(),
                    command_id: job.command_id.clone(),
                    job_id: job.job_id.clone(),
                    attempt: job.attempt,
                    outcome: Outcome::Failed { kind, reason },
                };
                let payload = wire::encode(&Message::JobResult(result))?;
                publish(bus, &topic::evt(&config.device_id, EvtKind::Result), payload, false);
                Ok(())
            };
            let recorded = durable.accept(DocKind::Job, job.seq, &job.command_id);
            let fresh = match recorded.and_then(|()| durable.mark_seen(&job.command_id)) {
                Ok(fresh) => fresh,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    warn!(job = %job.job_id, error = %e, "command refused");
                    return refuse(
                        FailureKind::Internal,
                        format!("agent refused the command: {e}"),
                    );
                }
                Err(e) => {
                    // Without a durable record a redelivery could not be recognised: refuse
                    // with a retryable failure until the disk takes writes again.
                    faults.record("recording a command id", &e);
                    return refuse(
                        FailureKind::Busy,
                        format!(
                            "agent cannot record the command (state disk fault: {e}); retry later"
                        ),
                    );
                }
            };
            if !fresh {
                // A redelivery: re-send the result if it is still pending, otherwise ignore.
                let unsaved = faults.unsaved.iter().find(|(id, _)| id == &result_id);
                if let Some(pending) =
                    durable.get(&result_id).or_else(|| unsaved.map(|(_, p)| p.clone()))
                {
                    publish(bus, &topic::evt(&config.device_id, EvtKind::Result), pending, false);
                }
                debug!(command = %job.command_id, "duplicate command ignored");
                return Ok(());
            }
            if let Some(problem) = config.runtime_problem(job.spec.runtime) {
                warn!(job = %job.job_id, runtime = %job.spec.runtime, %problem, "job refused: runtime unavailable");
                return refuse(FailureKind::Unsupported, problem);
            }
            if let Some(current) = busy.as_ref() {
                let result = JobResult {
                    result_id,
                    command_id: job.command_id.clone(),
                    job_id: job.job_id.clone(),
                    attempt: job.attempt,
                    outcome: Outcome::Failed {
                        kind: FailureKind::Busy,
                        reason: format!("agent is running job {current}"),
                    },
                };
                let payload = wire::encode(&Message::JobResult(result))?;
                if let Err(e) = durable.put(&result_id_of(&job), &payload) {
                    faults.unsaved.push((result_id_of(&job), payload.clone()));
                    faults.record("writing a result to the outbox", &e);
                }
                publish(bus, &topic::evt(&config.device_id, EvtKind::Result), payload, false);
                return Ok(());
            }
            *busy = Some(job.job_id.clone());
            serving.job_started.insert(job.job_id.clone(), now_ms());
            let accepted = wire::encode(&Message::JobAccepted(JobAccepted {
                command_id: job.command_id.clone(),
                job_id: job.job_id.clone(),
                attempt: job.attempt,
            }))?;
            publish(bus, &topic::evt(&config.device_id, EvtKind::Accepted), accepted, false);
            info!(job = %job.job_id, attempt = job.attempt, artifact = %job.artifact.artifact_id, "job accepted");
            let (store, exe, tx) = (store.clone(), config.bench_exe.clone(), done_tx.clone());
            let emulation = emulation.clone();
            let ort_lib = config.ort_lib.clone();
            tokio::spawn(async move {
                let result =
                    execute(&store, &exe, ort_lib.as_deref(), job, &emulation.0, &emulation.1)
                        .await;
                let _ = tx.send(result).await;
            });
        }
        (CmdKind::Deploy, Message::Activate(cmd)) => {
            handle_activate(
                config,
                durable,
                faults,
                bus,
                store,
                trust,
                serving,
                activations,
                topic_name,
                payload,
                cmd,
            )?;
        }
        (kind, other) => {
            rejections.undecodable += 1;
            warn!(?kind, message = ?std::mem::discriminant(&other), "message does not belong on this topic");
        }
    }
    Ok(())
}

/// An activation command: verified before anything else, deduplicated by command id (a
/// redelivery gets the report again), then fetched in its own task and handed to the serving
/// supervisor.
#[allow(clippy::too_many_arguments)]
fn handle_activate(
    config: &AgentConfig,
    durable: &mut Durable,
    faults: &mut Faults,
    bus: &BusHandle,
    store: &ModelStore,
    trust: &mut Trust,
    serving: &mut ServingState,
    activations: &mpsc::Sender<crate::deploy::Report>,
    topic_name: &str,
    payload: &[u8],
    cmd: ActivateCommand,
) -> anyhow::Result<()> {
    let evt = topic::evt(&config.device_id, EvtKind::Activation);
    let refuse = |cmd: &ActivateCommand, kind: FailureKind, reason: String| -> anyhow::Result<()> {
        let report = crate::deploy::report_of(
            cmd,
            ActivationOutcome::Failed { kind, reason, serving: None },
        );
        publish(bus, &evt, wire::encode(&Message::ActivationReport(report))?, false);
        Ok(())
    };
    let last = durable.last_accepted(DocKind::Deploy).cloned();
    let cmd = match crate::store::verify_activation(cmd, trust.key(), now_ms(), last.as_ref()) {
        Ok(cmd) => cmd,
        Err(refused) => {
            let (cmd, e) = *refused;
            if matches!(e, ArtifactError::BadSignature(_)) && trust.park(topic_name, payload) {
                return Ok(());
            }
            warn!(command = %cmd.command_id, seq = cmd.seq, error = %e, "activation refused");
            if matches!(e, ArtifactError::Replayed { .. }) {
                // Answered or being answered already: its report, not a competing refusal.
                if let Some((_, p)) = serving.reports.iter().find(|(id, _)| *id == cmd.command_id) {
                    publish(bus, &evt, p.clone(), false);
                    return Ok(());
                }
                if serving.in_flight.contains(&cmd.command_id) {
                    return Ok(());
                }
            }
            return refuse(&cmd, e.kind(), e.to_string());
        }
    };
    let recorded = durable.accept(DocKind::Deploy, cmd.seq, &cmd.command_id);
    match recorded.and_then(|()| durable.mark_seen(&cmd.command_id)) {
        Ok(true) => {}
        Ok(false) => {
            if let Some((_, payload)) = serving.reports.iter().find(|(id, _)| *id == cmd.command_id)
            {
                publish(bus, &evt, payload.clone(), false);
                debug!(command = %cmd.command_id, "duplicate activation: report sent again");
                return Ok(());
            }
            if serving.in_flight.contains(&cmd.command_id) {
                debug!(command = %cmd.command_id, "duplicate activation ignored: in progress");
                return Ok(());
            }
            // Seen by an earlier run of this agent that ended before it reported (killed
            // mid-activation): activating again is idempotent and gives the coordinator its
            // report.
            info!(command = %cmd.command_id, "activation seen before a restart and never reported: doing it again");
        }
        Err(e) => {
            faults.record("recording a command id", &e);
            return refuse(
                &cmd,
                FailureKind::Busy,
                format!("agent cannot record the command: {e}"),
            );
        }
    }
    let Some(requests) = serving.requests.clone() else {
        return refuse(
            &cmd,
            FailureKind::Internal,
            "serving is off on this agent (started with --no-serve)".into(),
        );
    };
    if cmd.runtime != "tract" {
        return refuse(
            &cmd,
            FailureKind::ModelInvalid,
            format!("this agent serves with tract, not `{}`", cmd.runtime),
        );
    }
    info!(command = %cmd.command_id, deployment = %cmd.deployment_id, artifact = ?cmd.artifact.as_ref().map(|a| &a.artifact_id), "activation accepted");
    serving.in_flight.insert(cmd.command_id.clone());
    serving.accepted += 1;
    let seq = serving.accepted;
    let (store, reports) = (store.clone(), activations.clone());
    tokio::spawn(async move {
        match store.fetch_activation(&cmd).await {
            Ok(fetched) => {
                let path = fetched.map(|f| f.path);
                let _ = requests
                    .send(crate::deploy::Request::Activate { cmd: Box::new(cmd), path, seq })
                    .await;
            }
            Err(e) => {
                warn!(command = %cmd.command_id, error = %e, "activation artifact rejected");
                let report = crate::deploy::report_of(
                    &cmd,
                    ActivationOutcome::Failed {
                        kind: e.kind(),
                        reason: e.to_string(),
                        serving: None,
                    },
                );
                let _ = reports.send(crate::deploy::Report::Activation(report)).await;
            }
        }
    });
    Ok(())
}

/// The idempotency key of a job attempt's result.
pub fn result_id(job_id: &str, attempt: u32) -> String {
    format!("{job_id}/{attempt}")
}

fn result_id_of(job: &JobCommand) -> String {
    result_id(&job.job_id, job.attempt)
}

/// Detects cgroups, calibrates the host (once per host, shared) and plans the profile's
/// emulation, with the closed-loop quota correction where the quota can be measured. A failed
/// calibration is an error; a failed correction leaves the quota open-loop (and the record says
/// so by carrying no correction).
pub async fn plan_emulation(
    profile: Option<&hone_firmware_profiles::DeviceProfile>,
    native: bool,
    calibration_dir: &std::path::Path,
    exe: &std::path::Path,
    host: &HostFacts,
    memory_override: Option<u64>,
    thermal_time_scale: f64,
) -> anyhow::Result<(Plan, Cgroups)> {
    let cgroups = Cgroups::detect();
    let policy = crate::calibrate::Policy::default();
    let calibration = match profile {
        Some(_) if !native => {
            Some(crate::calibrate::load_or_measure(calibration_dir, exe, &policy).await?)
        }
        _ => None,
    };
    let mut plan = crate::throttle::plan(&PlanInput {
        profile,
        calibration: calibration.as_ref(),
        cgroups: &cgroups,
        native,
        host_cores: host.cores,
        memory_override,
        thermal_time_scale,
    });
    if let (Some(ratio), Some(_)) = (plan.ratio, plan.quota_us) {
        match crate::calibrate::correction_for(
            calibration_dir,
            exe,
            &cgroups,
            ratio,
            plan.period_us,
            &policy,
        )
        .await
        {
            Ok(c) => plan.apply_correction(c),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "no closed-loop quota correction: the quota stays open-loop")
            }
        }
    }
    Ok((plan, cgroups))
}

/// [`plan_emulation`] for the agent: a failed calibration leaves the profile unthrottled
/// (with the reason) instead of stopping the agent. Warns once when a profile cannot be
/// enforced.
pub async fn prepare_emulation(config: &AgentConfig, host: &HostFacts) -> (Plan, Cgroups) {
    let planned = plan_emulation(
        config.profile.as_ref(),
        config.native,
        &config.calibration_dir,
        &config.bench_exe,
        host,
        None,
        config.thermal_time_scale,
    )
    .await;
    let (plan, cgroups) = match planned {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "host calibration failed");
            let cgroups = Cgroups::detect();
            let mut plan = crate::throttle::plan(&PlanInput {
                profile: config.profile.as_ref(),
                calibration: None,
                cgroups: &cgroups,
                native: config.native,
                host_cores: host.cores,
                memory_override: None,
                thermal_time_scale: config.thermal_time_scale,
            });
            if let EmulationStatus::Unthrottled { reason } = &mut plan.status {
                *reason = format!("{reason}: {e:#}");
            }
            (plan, cgroups)
        }
    };
    match &plan.status {
        EmulationStatus::Unthrottled { reason } => {
            warn!(%reason, "the device profile cannot be enforced on this host: results will be marked unthrottled")
        }
        EmulationStatus::Emulated => info!(
            ratio = plan.ratio.unwrap_or(1.0),
            quota_us = plan.quota_us.unwrap_or(0),
            period_us = plan.period_us,
            correction = plan.correction.as_ref().map_or(1.0, |c| c.factor),
            residual = plan.correction.as_ref().map_or(f64::NAN, |c| c.residual),
            cpus = plan.cpus.unwrap_or(0),
            memory_limit = plan.memory_limit.unwrap_or(0),
            "emulating the device profile"
        ),
        _ => {}
    }
    (plan, cgroups)
}

/// Runs one verified job: fetch, then the benchmark in a child process under `plan`.
pub async fn execute(
    store: &ModelStore,
    exe: &std::path::Path,
    ort_lib: Option<&std::path::Path>,
    job: VerifiedJob,
    plan: &Plan,
    cgroups: &Cgroups,
) -> JobResult {
    let started = std::time::Instant::now();
    let outcome = match store.fetch_verified(&job).await {
        Err(e) => {
            warn!(job = %job.job_id, error = %e, "artifact rejected");
            Outcome::Failed { kind: e.kind(), reason: e.to_string() }
        }
        Ok(fetched) => {
            let budget = Duration::from_millis(job.timeout_ms).saturating_sub(started.elapsed());
            let budget = budget.max(Duration::from_secs(1));
            let spec = &job.spec;
            match crate::bench::run_in_child(
                exe,
                &fetched.path,
                spec,
                ort_lib,
                budget,
                plan,
                cgroups,
            )
            .await
            {
                Ok(report) => Outcome::Ok(report),
                Err((kind, reason)) => {
                    warn!(job = %job.job_id, kind = kind.as_str(), %reason, "benchmark failed");
                    Outcome::Failed { kind, reason }
                }
            }
        }
    };
    let job = job.into_inner();
    JobResult {
        result_id: result_id_of(&job),
        command_id: job.command_id,
        job_id: job.job_id,
        attempt: job.attempt,
        outcome,
    }
}

/// The coordinator key: from the configuration, else pinned in the state directory, else, only
/// with `--trust-on-first-use`, fetched once over plain HTTP and pinned (logged loudly). Without
/// any of these the agent refuses to start: pinning whatever the network returns would let
/// anyone on the path sign jobs.
async fn trusted_key(config: &AgentConfig) -> anyhow::Result<VerifyingKey> {
    let pinned = crate::trust::pinned_path(&config.state_dir);
    if let Some(key) = config.trust_key {
        // The configured key may be one the agent already followed a rotation from: the key it
        // pinned then stays (re-pinning the configured one would trust the old key again).
        if pinned.exists() {
            let current = crate::config::parse_trust_key(&format!("@{}", pinned.display()))?;
            let chain = crate::trust::stored_chain(&config.state_dir);
            if current != key && crate::trust::walk(&key, &chain) == Ok(Some(current)) {
                info!(configured = %hex::encode(key.as_bytes()), pinned = %hex::encode(current.as_bytes()), "the configured coordinator key was rotated: keeping the key its signed chain leads to");
                return Ok(current);
            }
        }
        crate::outbox::write_atomic(&pinned, hex::encode(key.as_bytes()).as_bytes())?;
        return Ok(key);
    }
    if pinned.exists() {
        return crate::config::parse_trust_key(&format!("@{}", pinned.display()));
    }
    if !config.trust_on_first_use {
        anyhow::bail!(
            "no coordinator key: pass --trust-key <hex or @file> (the key `coordinator serve` \
             prints, also at {}/api/v1/trust), or --trust-on-first-use to fetch it once over \
             plain HTTP and pin it in {} (only on a network you trust)",
            config.coordinator_url.trim_end_matches('/'),
            pinned.display()
        );
    }
    let url = format!("{}/api/v1/trust", config.coordinator_url.trim_end_matches('/'));
    let body: serde_json::Value = reqwest::get(&url)
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("fetching the coordinator key from {url}"))?
        .json()
        .await
        .context("coordinator key response is not JSON")?;
    let hex_key =
        body["public_key"].as_str().context("coordinator key response lacks `public_key`")?;
    let key = crate::config::parse_trust_key(hex_key)?;
    warn!(key = %hex_key, url = %url, path = %pinned.display(), "TRUST ON FIRST USE: pinning the coordinator key fetched over plain HTTP; check it against the key `coordinator serve` printed");
    crate::outbox::write_atomic(&pinned, hex_key.as_bytes())?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, tofu: bool) -> AgentConfig {
        AgentConfig {
            device_id: "d".into(),
            broker_host: "127.0.0.1".into(),
            broker_port: 1,
            // Nothing listens here: a fetch would fail with a connection error.
            coordinator_url: "http://127.0.0.1:1".into(),
            profile: None,
            native: false,
            thermal_time_scale: 1.0,
            state_dir: dir.to_path_buf(),
            keepalive: Duration::from_secs(5),
            trust_key: None,
            trust_on_first_use: tofu,
            bench_exe: "edge-agent".into(),
            calibration_dir: dir.join("calibration"),
            serving: None,
            ort_lib: None,
            runtimes: Vec::new(),
            identity: None,
        }
    }

    #[tokio::test]
    async fn without_a_key_or_the_opt_in_the_agent_refuses_to_fetch_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = trusted_key(&config(dir.path(), false)).await.unwrap_err().to_string();
        assert!(e.contains("--trust-key") && e.contains("--trust-on-first-use"), "{e}");
        assert!(!e.contains("fetching"), "no request was made: {e}");
        let e = trusted_key(&config(dir.path(), true)).await.unwrap_err();
        assert!(format!("{e:#}").contains("fetching the coordinator key"), "{e:#}");
    }

    #[test]
    fn a_benchmark_counts_the_requests_of_the_windows_it_overlapped() {
        let mut s = ServingState {
            requests: None,
            reports: VecDeque::new(),
            unsent: VecDeque::new(),
            dropped: 0,
            seq: 0,
            recent: VecDeque::from([(0, 1000, 5), (1000, 2000, 7), (2000, 3000, 11)]),
            job_started: HashMap::new(),
            in_flight: Default::default(),
            accepted: 0,
        };
        assert_eq!(s.served_between(1500, 2500, true), Some(18), "windows 2 and 3");
        assert_eq!(s.served_between(3500, 4000, true), Some(0), "serving, but idle");
        assert_eq!(s.served_between(0, 4000, false), None, "not serving");
        for i in 0..40 {
            s.remember(&format!("c{i}"), b"x");
        }
        assert_eq!(s.reports.len(), REPORTS_KEPT, "bounded");
        assert_eq!(s.reports.back().unwrap().0, "c39", "the newest kept");
    }

    #[tokio::test]
    async fn a_pinned_key_is_used_without_the_opt_in() {
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        std::fs::write(dir.path().join("trusted-coordinator.pub"), hex::encode(key.as_bytes()))
            .unwrap();
        assert_eq!(trusted_key(&config(dir.path(), false)).await.unwrap(), key);
    }
}
