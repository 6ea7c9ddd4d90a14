//! The agent loop: one task owns the MQTT event loop, the durable state and the busy flag;
//! jobs run in their own task and report back through a channel.
//!
//! Events handled (a closed set): bus events (connected, message, disconnected), a finished
//! job, and shutdown. One job runs at a time; a job that arrives while busy is answered with a
//! `busy` failure, which the coordinator retries later.

use std::time::Duration;

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use hone_common::topic::{self, CmdKind, EvtKind, Topic};
use hone_common::wire::{self, FailureKind, JobAccepted, JobCommand, JobResult, Message, Outcome};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::host::{HostFacts, now_ms};
use crate::mqtt::{self, BusEvent, BusHandle};
use crate::outbox::Durable;
use crate::store::{ModelStore, VerifiedJob};
use crate::throttle::cgroup::Cgroups;
use crate::throttle::{Plan, PlanInput};
use hone_common::bench::EmulationStatus;

/// Counters the agent keeps about what it rejected.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rejections {
    /// Payloads that failed to decode (malformed, oversized, wrong version).
    pub undecodable: u64,
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
    let trusted = trusted_key(&config).await?;
    let store = ModelStore::open(&config.state_dir.join("store")).context("opening model store")?;
    let host = HostFacts::read();
    let profile = config.profile.as_ref().map(|p| p.name.as_str());
    let emulation = std::sync::Arc::new(prepare_emulation(&config, &host).await);

    let will =
        wire::encode(&Message::Status(host.status(&config.device_id, false, session, profile)))?;
    let (bus, mut bus_loop) = mqtt::connect(&mqtt::BusConfig {
        host: config.broker_host.clone(),
        port: config.broker_port,
        client_id: config.device_id.clone(),
        keepalive: config.keepalive,
        will: (topic::status(&config.device_id), will),
    });
    info!(device = %config.device_id, session, broker = %format!("{}:{}", config.broker_host, config.broker_port), "agent starting");

    let (done_tx, mut done_rx) = mpsc::channel::<JobResult>(4);
    let mut busy: Option<String> = None;
    let mut backoff = Duration::from_millis(200);
    let mut rejections = Rejections::default();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            event = bus_loop.next() => match event {
                BusEvent::Connected { session_present } => {
                    backoff = Duration::from_millis(200);
                    info!(session_present, "connected to broker");
                    let birth = wire::encode(&Message::Status(host.status(&config.device_id, true, session, profile)))?;
                    publish(&bus, &topic::status(&config.device_id), birth, true);
                    if let Err(e) = bus.subscribe(&topic::agent_subscription(&config.device_id)) {
                        warn!(error = %e, "subscribe failed");
                    }
                    for payload in durable.pending().context("reading outbox")? {
                        publish(&bus, &topic::evt(&config.device_id, EvtKind::Result), payload, false);
                    }
                }
                BusEvent::Message { topic, payload } => {
                    handle_message(&config, &mut durable, &bus, &store, &trusted, &emulation, &done_tx, &mut busy, &mut rejections, &topic, &payload)?;
                }
                BusEvent::Disconnected(reason) => {
                    warn!(%reason, retry_in_ms = backoff.as_millis() as u64, "broker connection lost");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            },
            Some(result) = done_rx.recv() => {
                busy = None;
                let payload = wire::encode(&Message::JobResult(result.clone()))?;
                durable.put(&result.result_id, &payload).context("writing result to outbox")?;
                info!(job = %result.job_id, attempt = result.attempt, ok = matches!(result.outcome, Outcome::Ok(_)), "job finished");
                publish(&bus, &topic::evt(&config.device_id, EvtKind::Result), payload, false);
            }
            () = &mut shutdown => {
                info!("shutting down");
                let offline = wire::encode(&Message::Status(host.status(&config.device_id, false, session, profile)))?;
                publish(&bus, &topic::status(&config.device_id), offline, true);
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
    bus: &BusHandle,
    store: &ModelStore,
    trusted: &VerifyingKey,
    emulation: &std::sync::Arc<(Plan, Cgroups)>,
    done_tx: &mpsc::Sender<JobResult>,
    busy: &mut Option<String>,
    rejections: &mut Rejections,
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
            if durable.ack(&ack.result_id).context("updating outbox")? {
                debug!(result = %ack.result_id, "result acknowledged");
            }
        }
        (CmdKind::Job, Message::RunJob(job)) => {
            // Nothing in the document is acted on (not even its command id recorded) before its
            // signature holds. A refusal is reported once, and nothing of it is stored.
            let job = match crate::store::verify_job(job, trusted, now_ms()) {
                Ok(job) => job,
                Err(refused) => {
                    let (job, e) = *refused;
                    warn!(job = %job.job_id, error = %e, "job document refused");
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
            if !durable.mark_seen(&job.command_id).context("recording command id")? {
                // A redelivery: re-send the result if it is still pending, otherwise ignore.
                if let Some(pending) = durable.get(&result_id) {
                    publish(bus, &topic::evt(&config.device_id, EvtKind::Result), pending, false);
                }
                debug!(command = %job.command_id, "duplicate command ignored");
                return Ok(());
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
                durable.put(&result_id_of(&job), &payload)?;
                publish(bus, &topic::evt(&config.device_id, EvtKind::Result), payload, false);
                return Ok(());
            }
            *busy = Some(job.job_id.clone());
            let accepted = wire::encode(&Message::JobAccepted(JobAccepted {
                command_id: job.command_id.clone(),
                job_id: job.job_id.clone(),
                attempt: job.attempt,
            }))?;
            publish(bus, &topic::evt(&config.device_id, EvtKind::Accepted), accepted, false);
            info!(job = %job.job_id, attempt = job.attempt, artifact = %job.artifact.artifact_id, "job accepted");
            let (store, exe, tx) = (store.clone(), config.bench_exe.clone(), done_tx.clone());
            let emulation = emulation.clone();
            tokio::spawn(async move {
                let result = execute(&store, &exe, job, &emulation.0, &emulation.1).await;
                let _ = tx.send(result).await;
            });
        }
        (kind, other) => {
            rejections.undecodable += 1;
            warn!(?kind, message = ?std::mem::discriminant(&other), "message does not belong on this topic");
        }
    }
    Ok(())
}

/// The idempotency key of a job attempt's result.
pub fn result_id(job_id: &str, attempt: u32) -> String {
    format!("{job_id}/{attempt}")
}

fn result_id_of(job: &JobCommand) -> String {
    result_id(&job.job_id, job.attempt)
}

/// Detects cgroups, calibrates the host (once, cached) and plans the profile's emulation.
/// Warns once when a profile cannot be enforced.
pub async fn prepare_emulation(config: &AgentConfig, host: &HostFacts) -> (Plan, Cgroups) {
    let cgroups = Cgroups::detect();
    let calibration = match &config.profile {
        Some(_) if !config.native => {
            match crate::calibrate::load_or_measure(
                &config.state_dir.join("calibration.json"),
                &config.bench_exe,
            )
            .await
            {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "host calibration failed");
                    None
                }
            }
        }
        _ => None,
    };
    let plan = crate::throttle::plan(&PlanInput {
        profile: config.profile.as_ref(),
        calibration: calibration.as_ref(),
        cgroups: &cgroups,
        native: config.native,
        host_cores: host.cores,
        memory_override: None,
        thermal_time_scale: config.thermal_time_scale,
    });
    match &plan.status {
        EmulationStatus::Unthrottled { reason } => {
            warn!(%reason, "the device profile cannot be enforced on this host: results will be marked unthrottled")
        }
        EmulationStatus::Emulated => info!(
            ratio = plan.ratio.unwrap_or(1.0),
            quota_us = plan.quota_us.unwrap_or(0),
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
            match crate::bench::run_in_child(exe, &fetched.path, &job.spec, budget, plan, cgroups)
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

/// The coordinator key: from the configuration, else pinned in the state directory, else
/// fetched once from the coordinator and pinned (trust on first use, logged loudly).
async fn trusted_key(config: &AgentConfig) -> anyhow::Result<VerifyingKey> {
    let pinned = config.state_dir.join("trusted-coordinator.pub");
    if let Some(key) = config.trust_key {
        crate::outbox::write_atomic(&pinned, hex::encode(key.as_bytes()).as_bytes())?;
        return Ok(key);
    }
    if pinned.exists() {
        return crate::config::parse_trust_key(&format!("@{}", pinned.display()));
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
    warn!(key = %hex_key, path = %pinned.display(), "no --trust-key given: trusting the coordinator's key on first use and pinning it");
    crate::outbox::write_atomic(&pinned, hex_key.as_bytes())?;
    Ok(key)
}
