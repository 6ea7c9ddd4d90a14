//! The engine: the single writer of job state.
//!
//! One task receives every decoded MQTT message ([`crate::mqtt::Inbound`]) and ticks every
//! 250 ms (or when poked after a campaign is created). On each tick it
//! 1. ends attempts whose deadline passed or whose device went offline or incompatible (retry
//!    or fail),
//! 2. moves queued jobs whose device is offline or incompatible to another device of their
//!    class, if their campaign has one (see below), and fails those that cannot move and whose
//!    device stayed offline or incompatible (an agent speaking another wire version) longer than
//!    the job timeout,
//! 3. dispatches queued jobs: one job at a time per device, within each campaign's
//!    `max_parallel`, as a signed job document over MQTT,
//! 4. marks campaigns done when none of their jobs is left active.
//!
//! **Device classes.** A campaign whose selector is `profile:NAME`, or whose spec sets
//! `reassign_within_class` (the class is then the profile of the job's device), lets a job move
//! when its device dies: when an attempt ends because the device went offline or became
//! incompatible, or a queued job's device is not dispatchable, the job moves to another
//! dispatchable device of the profile, an idle one if any, else the least loaded busy one (where
//! it waits its turn). When the agent restarted during the attempt, the device is back, so the
//! job moves only to an idle device and otherwise runs again on the restarted one. The ended
//! attempt still counts against `max_attempts` (so a job cannot bounce between dying devices
//! forever); a job whose attempts are used up fails instead of moving. A move sets `last_error`
//! to `moved from A to B: reason` and counts `jobs_moved`. With no other device of the class, the
//! job waits and fails after the job timeout as it does without a class.
//!
//! **Cancelling** ([`cancel`]) fails a running campaign's queued and active jobs. The one write
//! from outside this task is safe because every write here is conditional on the job's state.
//! There is no cancel message on the wire: an agent running a cancelled attempt finishes it, so
//! its device gets nothing else until that result arrives (acknowledged, not stored), the agent
//! restarts, or the attempt's deadline passes.
//!
//! All state lives in the database, so a restarted coordinator resumes where it stopped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hone_common::clock::now_ms;
use hone_common::topic::{self, CmdKind};
use hone_common::wire::{
    ActivationOutcome, ArtifactRef, FailureKind, JobCommand, Message, Outcome, ResultAck,
    WIRE_VERSION,
};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::artifacts::Signer;
use crate::campaign::{CampaignSpec, pick_class_device};
use crate::db::{CancelOutcome, Db, DeviceRow, JobRow, NewResult};
use crate::metrics::Metrics;
use crate::mqtt::{Bus, Inbound, Payload};

/// Most jobs one tick dispatches; the rest go in the following ticks, with the agents'
/// answers applied in between.
pub const MAX_DISPATCH_PER_TICK: usize = 256;

/// A tick not asked for by a poke waits this many times the last tick's duration after it,
/// when that one dispatched nothing ([`Engine::run`]).
pub const TICK_SPACING: u32 = 4;

/// Everything the engine needs.
#[derive(Clone)]
pub struct Engine {
    /// Database.
    pub db: Db,
    /// MQTT.
    pub bus: Bus,
    /// Artifact signer.
    pub signer: Signer,
    /// Base URL agents download artifacts from.
    pub public_url: String,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Telemetry rules, alerts and suggestions.
    pub monitor: crate::deploy::monitor::Monitor,
    /// Wakes the rollout task when an activation report arrives.
    pub rollout_wake: Arc<Notify>,
    /// Campaign specs by id, read once: a spec never changes after creation, and one of a whole
    /// fleet (its device list) is too large to read and parse again for every accepted job.
    pub specs: Arc<std::sync::Mutex<HashMap<String, Arc<CampaignSpec>>>>,
}

impl Engine {
    /// Runs until the inbound channel closes or `stop` turns true.
    pub async fn run(
        self,
        mut inbound: mpsc::Receiver<Inbound>,
        poke: Arc<Notify>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut interval = tokio::time::interval(Duration::from_millis(250));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A result frees a device and a birth brings one, so each asks for a tick; in a burst
        // the tick runs once the messages waiting have been applied, not once per message (each
        // tick reads every device and open job: one per message made a fleet's campaign, and its
        // coming online, quadratic in its size). And a tick asked for by messages or by the
        // interval waits, after one that dispatched nothing, until TICK_SPACING times its
        // duration has passed (after one that dispatched, as long as it took), so that ticks
        // finding nothing to do take at most a fifth of the engine's time: at 10,000 agents a
        // tick takes a good part of a second, and results trickling in, each followed by a
        // tick, left the engine too little time to read them (the broker then dropped messages
        // queued for the coordinator). A poke (a campaign created, cancelled) ticks at once.
        let mut tick_owed = false;
        let mut last_end = tokio::time::Instant::now();
        let mut last_cost = Duration::ZERO;
        let mut last_sent = 0;
        loop {
            let spacing = if last_sent > 0 { 1 } else { TICK_SPACING };
            let due = last_end + last_cost * spacing;
            let tick_now = tokio::select! {
                msg = inbound.recv() => match msg {
                    Some(m) => {
                        match self.apply(m, false).await {
                            Ok(owed) => tick_owed |= owed,
                            Err(e) => warn!(error = %e, "handling an MQTT message failed"),
                        }
                        tick_owed && inbound.is_empty() && tokio::time::Instant::now() >= due
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(due), if tick_owed => true,
                _ = interval.tick() => {
                    tick_owed = true;
                    tokio::time::Instant::now() >= due
                }
                _ = poke.notified() => true,
                _ = stop.changed() => return,
            };
            if tick_now {
                let started = tokio::time::Instant::now();
                tick_owed = false;
                last_sent = self.tick_logged().await;
                last_end = tokio::time::Instant::now();
                last_cost = last_end - started;
            }
        }
    }

    /// Ticks; returns how many jobs it dispatched.
    async fn tick_logged(&self) -> usize {
        match self.tick_counted().await {
            Ok(sent) => sent,
            Err(e) => {
                warn!(error = %e, "engine tick failed");
                0
            }
        }
    }

    /// Applies one message from a device (and the tick it asks for).
    pub async fn handle(&self, inbound: Inbound) -> anyhow::Result<()> {
        self.apply(inbound, true).await.map(|_| ())
    }

    /// Applies one message; a tick a result asks for runs now when `tick_now`, else the return
    /// value says one is owed.
    async fn apply(&self, inbound: Inbound, tick_now: bool) -> anyhow::Result<bool> {
        let now = now_ms() as i64;
        let device = inbound.device;
        let message = match inbound.payload {
            Payload::Message(message) => message,
            Payload::OtherWireVersion(found) => {
                if self.db.mark_wire_version(&device, found, now).await? {
                    warn!(device = %device, found, needs = WIRE_VERSION, "device speaks another wire version: marked incompatible, nothing is dispatched to it");
                    self.poke_tick().await;
                }
                return Ok(false);
            }
        };
        match message {
            Message::Status(status) => {
                if status.device_id != device {
                    warn!(topic_device = %device, claimed = %status.device_id, "status for another device ignored");
                    self.metrics.rejected_malformed.fetch_add(1, Relaxed);
                    return Ok(false);
                }
                let previous = self.db.device(&device).await?;
                if self.db.apply_status(&status, now).await? {
                    info!(device = %device, online = status.online, session = status.session, "device status");
                    if status.online {
                        self.reconcile_device(
                            &device,
                            previous.map(|p| p.session),
                            status.session as i64,
                            now,
                        )
                        .await?;
                    }
                    // Births come in bursts too (a fleet reconnecting): coalesced like results.
                    if !tick_now {
                        return Ok(true);
                    }
                    self.poke_tick().await;
                } else {
                    self.metrics.stale_wills.fetch_add(1, Relaxed);
                    debug!(device = %device, session = status.session, "stale status ignored");
                }
            }
            Message::JobAccepted(acc) => {
                self.db.touch_device(&device, now).await?;
                let Some(job) = self.db.job(&acc.job_id).await? else { return Ok(false) };
                if job.device_id != device {
                    return Ok(false);
                }
                let timeout = self.job_timeout_ms(&job.campaign_id).await?;
                self.db.mark_accepted(&acc.job_id, &acc.command_id, now, now + timeout).await?;
            }
            Message::JobResult(result) => {
                self.db.touch_device(&device, now).await?;
                if matches!(result.outcome, Outcome::Failed { kind: FailureKind::Replayed, .. }) {
                    self.metrics.documents_replayed.fetch_add(1, Relaxed);
                    warn!(job = %result.job_id, command = %result.command_id, %device, "the agent refused a replayed job document");
                }
                match self.db.job(&result.job_id).await? {
                    Some(job)
                        if job.device_id == device
                            && job.state == "failed"
                            && job.deadline_ms.is_some() =>
                    {
                        // An attempt of a cancelled campaign: its agent is free again.
                        self.db.release_held(&device, now).await?;
                        info!(job = %job.id, device = %device, "result of a cancelled job acknowledged, not stored");
                    }
                    Some(job) if job.device_id == device => match &result.outcome {
                        Outcome::Ok(report) if report.validate().is_err() => {
                            let why = report.validate().unwrap_err();
                            self.metrics.rejected_malformed.fetch_add(1, Relaxed);
                            let reason = format!("invalid report from the agent: {why}");
                            let next = self
                                .db
                                .end_attempt(&job.id, Some(&result.command_id), &reason, true, now)
                                .await?;
                            self.count_end(next);
                            warn!(job = %job.id, device = %device, %reason, "result refused");
                        }
                        Outcome::Ok(report) => {
                            let profile = self.db.device(&device).await?.and_then(|d| d.profile);
                            let stored = self
                                .db
                                .store_result(&NewResult {
                                    job: &job,
                                    result_id: &result.result_id,
                                    attempt: i64::from(result.attempt),
                                    profile: profile.as_deref(),
                                    report,
                                    now_ms: now,
                                })
                                .await?;
                            if stored {
                                self.metrics.results_stored.fetch_add(1, Relaxed);
                                info!(job = %job.id, device = %device, p50_ms = report.latency.p50_ms, "result stored");
                            } else if self
                                .db
                                .campaign(&job.campaign_id)
                                .await?
                                .is_some_and(|c| c.state == "cancelled")
                            {
                                info!(job = %job.id, device = %device, "result for a cancelled campaign acknowledged, not stored");
                            } else {
                                self.metrics.results_duplicate.fetch_add(1, Relaxed);
                                debug!(job = %job.id, "duplicate result acknowledged, not stored");
                            }
                        }
                        Outcome::Failed { kind, reason } => {
                            let reason = format!("{}: {reason}", kind.as_str());
                            let next = self
                                .db
                                .end_attempt(
                                    &job.id,
                                    Some(&result.command_id),
                                    &reason,
                                    kind.is_retryable(),
                                    now,
                                )
                                .await?;
                            self.count_end(next);
                            warn!(job = %job.id, device = %device, %reason, next = ?next, "job attempt failed");
                        }
                    },
                    Some(job) => {
                        info!(job = %job.id, from = %device, now_on = %job.device_id, "result from a device the job was moved away from acknowledged, not stored")
                    }
                    None => debug!(job = %result.job_id, "result for an unknown job acknowledged"),
                }
                let ack = Message::ResultAck(ResultAck { result_id: result.result_id.clone() });
                self.bus.publish(&topic::cmd(&device, CmdKind::Ack), &ack, false).await?;
                if !tick_now {
                    return Ok(true);
                }
                self.poke_tick().await;
            }
            Message::ActivationReport(report) => {
                self.db.touch_device(&device, now).await?;
                if matches!(
                    report.outcome,
                    ActivationOutcome::Failed { kind: FailureKind::Replayed, .. }
                ) {
                    self.metrics.documents_replayed.fetch_add(1, Relaxed);
                    warn!(command = %report.command_id, %device, "the agent refused a replayed activation");
                }
                if crate::deploy::rollout::record_activation(&self.db, &device, &report, now)
                    .await?
                {
                    self.rollout_wake.notify_one();
                }
            }
            Message::Telemetry(t) => {
                self.db.touch_device(&device, now).await?;
                if let Err(e) = self.monitor.ingest(&self.db, &device, &t, now).await {
                    self.metrics.rejected_malformed.fetch_add(1, Relaxed);
                    warn!(device = %device, error = %format!("{e:#}"), "telemetry refused");
                }
            }
            other => {
                debug!(device = %device, message = ?std::mem::discriminant(&other), "ignored message")
            }
        }
        Ok(false)
    }

    async fn poke_tick(&self) {
        if let Err(e) = self.tick().await {
            warn!(error = %e, "engine tick failed");
        }
    }

    fn count_end(&self, next: Option<&str>) {
        match next {
            Some("queued") => self.metrics.jobs_retried.fetch_add(1, Relaxed),
            Some("failed") => self.metrics.jobs_failed.fetch_add(1, Relaxed),
            _ => 0,
        };
    }

    async fn job_timeout_ms(&self, campaign_id: &str) -> anyhow::Result<i64> {
        Ok(self.spec(campaign_id).await?.map(|s| s.job_timeout_ms as i64).unwrap_or(300_000))
    }

    async fn spec(&self, campaign_id: &str) -> anyhow::Result<Option<Arc<CampaignSpec>>> {
        if let Some(s) = self.specs.lock().expect("spec cache").get(campaign_id) {
            return Ok(Some(s.clone()));
        }
        Ok(match self.db.campaign(campaign_id).await? {
            Some(c) => {
                let spec: Arc<CampaignSpec> = Arc::new(serde_json::from_value(c.spec)?);
                self.specs
                    .lock()
                    .expect("spec cache")
                    .insert(campaign_id.to_string(), spec.clone());
                Some(spec)
            }
            None => None,
        })
    }

    /// One pass of timeouts, moves, dispatch and completion.
    pub async fn tick(&self) -> anyhow::Result<()> {
        self.tick_counted().await.map(|_| ())
    }

    /// [`Engine::tick`], returning how many jobs it dispatched.
    async fn tick_counted(&self) -> anyhow::Result<usize> {
        let now = now_ms() as i64;
        let devices: HashMap<String, DeviceRow> =
            self.db.devices().await?.into_iter().map(|d| (d.id.clone(), d)).collect();

        // 1. Active attempts that timed out or lost their device.
        let mut ended: HashMap<String, String> = HashMap::new();
        let mut active = self.db.jobs_in_states(&["dispatched", "running"]).await?;
        for job in &active {
            let device = devices.get(&job.device_id);
            let online = device.is_some_and(|d| d.online);
            let reason = if job.deadline_ms.is_some_and(|d| d < now) {
                Some(format!("attempt {} timed out", job.attempt))
            } else if let Some(problem) = device.and_then(|d| d.problem.clone()) {
                Some(format!("{problem} (during attempt {})", job.attempt))
            } else if !online {
                Some(format!(
                    "device {} went offline during attempt {}",
                    job.device_id, job.attempt
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                let next = self.db.end_attempt(&job.id, None, &reason, true, now).await?;
                self.count_end(next);
                warn!(job = %job.id, %reason, next = ?next, "job attempt ended");
                ended.insert(job.id.clone(), reason);
            }
        }

        // 2 and 3. Queued jobs.
        let campaigns = self.db.campaigns(Some("running")).await?;
        let mut specs: HashMap<String, Arc<CampaignSpec>> = HashMap::new();
        for c in &campaigns {
            match self.spec(&c.id).await {
                Ok(Some(s)) => {
                    specs.insert(c.id.clone(), s);
                }
                Ok(None) => {}
                Err(e) => warn!(campaign = %c.id, error = %e, "unreadable campaign spec"),
            }
        }
        if !ended.is_empty() {
            active = self.db.jobs_in_states(&["dispatched", "running"]).await?;
        }
        let mut busy: HashSet<String> = active.iter().map(|j| j.device_id.clone()).collect();
        busy.extend(self.db.held_devices(now).await?);
        let mut running_per_campaign: HashMap<String, u32> = HashMap::new();
        for j in &active {
            *running_per_campaign.entry(j.campaign_id.clone()).or_default() += 1;
        }
        let queued = self.db.jobs_in_states(&["queued"]).await?;
        let mut load: HashMap<String, usize> = HashMap::new();
        for j in active.iter().chain(&queued) {
            *load.entry(j.device_id.clone()).or_default() += 1;
        }
        let mut ordered: Vec<JobRow> = queued;
        let order: HashMap<&str, usize> =
            campaigns.iter().enumerate().map(|(i, c)| (c.id.as_str(), i)).collect();
        ordered.sort_by_key(|j| {
            (order.get(j.campaign_id.as_str()).copied().unwrap_or(usize::MAX), j.seq)
        });
        let mut sent = 0usize;
        let mut models = HashMap::new();
        for mut job in ordered {
            let Some(spec) = specs.get(&job.campaign_id) else { continue };
            let device = devices.get(&job.device_id);
            let runtime = spec.bench.runtime;
            if !device.is_some_and(|d| d.dispatchable_for(runtime)) {
                let class = spec.device_class(device.and_then(|d| d.profile.as_deref()));
                let target = class.and_then(|p| {
                    let all = devices.values();
                    pick_class_device(p, runtime, &job.device_id, all, &busy, &load, false)
                });
                let moved = match target {
                    Some(target) => {
                        let reason = ended.remove(&job.id).unwrap_or_else(|| {
                            device
                                .and_then(|d| {
                                    d.problem.clone().or_else(|| d.runtime_problem(runtime))
                                })
                                .unwrap_or_else(|| format!("device {} is offline", job.device_id))
                        });
                        self.move_job(&job, &target, &reason, now, &mut load).await?
                    }
                    None => None,
                };
                match moved {
                    Some(target) => job.device_id = target,
                    None => {
                        self.fail_if_waited_too_long(&job, spec, device, now).await?;
                        continue;
                    }
                }
            }
            if busy.contains(&job.device_id) {
                continue;
            }
            let running = running_per_campaign.entry(job.campaign_id.clone()).or_default();
            if spec.max_parallel.is_some_and(|m| *running >= m) {
                continue;
            }
            if self.dispatch(&job, spec, &mut models).await? {
                busy.insert(job.device_id.clone());
                *running += 1;
                sent += 1;
                if sent >= MAX_DISPATCH_PER_TICK {
                    // The rest waits for the next tick: the agents' answers to these are
                    // applied first (a whole fleet's queue sent in one tick filled the inbound
                    // channel, and the MQTT client blocked on it could no longer send).
                    break;
                }
            }
        }

        // 4. Completion (counted in the database: reading every job of a fleet-wide campaign at
        // every tick was a large part of a campaign's cost).
        for c in &campaigns {
            let count = self.db.campaign_job_counts(&c.id).await?;
            if count.open == 0 {
                self.db.finish_campaign(&c.id, now).await?;
                info!(campaign = %c.id, jobs = count.total, failed = count.failed, "campaign finished");
            }
        }
        Ok(sent)
    }

    /// A queued job whose device is not dispatchable and that cannot move: it fails once the
    /// device has been so for longer than the job timeout.
    async fn fail_if_waited_too_long(
        &self,
        job: &JobRow,
        spec: &CampaignSpec,
        device: Option<&DeviceRow>,
        now: i64,
    ) -> anyhow::Result<()> {
        let since = device.map(|d| d.status_changed_ms).unwrap_or(0);
        if now - since <= spec.job_timeout_ms as i64 {
            return Ok(());
        }
        let problem = device.and_then(|d| {
            d.problem.clone().or_else(|| {
                let p = d.runtime_problem(spec.bench.runtime)?;
                Some(format!("device {} cannot run {}: {p}", d.id, spec.bench.runtime))
            })
        });
        let reason = match problem {
            Some(problem) => {
                format!(
                    "{problem}, for more than the job timeout ({} s)",
                    spec.job_timeout_ms / 1000
                )
            }
            None => format!(
                "device {} offline for more than the job timeout ({} s)",
                job.device_id,
                spec.job_timeout_ms / 1000
            ),
        };
        self.db.fail_queued(&job.id, &reason, now).await?;
        self.metrics.jobs_failed.fetch_add(1, Relaxed);
        warn!(job = %job.id, %reason, "job failed");
        Ok(())
    }

    /// Moves a queued job to `target` (see the module docs); returns `target` if it moved.
    async fn move_job(
        &self,
        job: &JobRow,
        target: &str,
        reason: &str,
        now: i64,
        load: &mut HashMap<String, usize>,
    ) -> anyhow::Result<Option<String>> {
        if !self.db.reassign_job(&job.id, target, reason, now).await? {
            return Ok(None);
        }
        self.metrics.jobs_moved.fetch_add(1, Relaxed);
        if let Some(n) = load.get_mut(&job.device_id) {
            *n = n.saturating_sub(1);
        }
        *load.entry(target.to_string()).or_default() += 1;
        warn!(job = %job.id, from = %job.device_id, to = %target, %reason, "job moved to another device of its class");
        Ok(Some(target.to_string()))
    }

    /// After the agent on `device` restarted during a job's attempt (which ended and was queued
    /// again): moves the job to an idle device of its class, if the campaign has a class and
    /// such a device exists; otherwise it stays on the restarted device.
    async fn move_after_restart(&self, job: &JobRow, reason: &str, now: i64) -> anyhow::Result<()> {
        let Some(spec) = self.spec(&job.campaign_id).await? else { return Ok(()) };
        let devices = self.db.devices().await?;
        let profile =
            devices.iter().find(|d| d.id == job.device_id).and_then(|d| d.profile.clone());
        let Some(class) = spec.device_class(profile.as_deref()) else { return Ok(()) };
        let active = self.db.jobs_in_states(&["dispatched", "running"]).await?;
        let mut busy: HashSet<String> = active.iter().map(|j| j.device_id.clone()).collect();
        busy.extend(self.db.held_devices(now).await?);
        let mut load: HashMap<String, usize> = HashMap::new();
        for j in active.iter().chain(&self.db.jobs_in_states(&["queued"]).await?) {
            *load.entry(j.device_id.clone()).or_default() += 1;
        }
        let runtime = spec.bench.runtime;
        if let Some(target) =
            pick_class_device(class, runtime, &job.device_id, &devices, &busy, &load, true)
        {
            self.move_job(job, &target, reason, now, &mut load).await?;
        }
        Ok(())
    }

    /// Cancels a running campaign: see [`cancel`].
    pub async fn cancel(&self, id: &str, reason: &str) -> anyhow::Result<CancelOutcome> {
        cancel(&self.db, &self.metrics, id, reason).await
    }

    /// A device announced itself online. If its agent process is new (a higher session), the
    /// attempts it held cannot be running any more: they end and are retried. If it is the same
    /// process reconnecting (e.g. after a broker or coordinator restart, which can lose an
    /// in-flight command), jobs sent but not yet accepted are sent again with the same command
    /// id, which the agent executes at most once.
    async fn reconcile_device(
        &self,
        device: &str,
        previous_session: Option<i64>,
        session: i64,
        now: i64,
    ) -> anyhow::Result<()> {
        if previous_session.is_some_and(|p| session > p) {
            // A new agent process runs nothing of a cancelled campaign's attempts.
            self.db.release_held(device, now).await?;
        }
        let jobs: Vec<JobRow> = self
            .db
            .jobs_in_states(&["dispatched", "running"])
            .await?
            .into_iter()
            .filter(|j| j.device_id == device)
            .collect();
        for job in jobs {
            if previous_session.is_some_and(|p| session > p) {
                let reason = format!(
                    "agent on {device} restarted (session {session}) during attempt {}",
                    job.attempt
                );
                let next = self.db.end_attempt(&job.id, None, &reason, true, now).await?;
                self.count_end(next);
                warn!(job = %job.id, %reason, next = ?next, "job attempt ended");
                if next == Some("queued") {
                    self.move_after_restart(&job, &reason, now).await?;
                }
            } else if job.state == "dispatched" {
                let Some(spec) = self.spec(&job.campaign_id).await? else { continue };
                let Some(command_id) = job.command_id.clone() else { continue };
                if let Some(cmd) =
                    self.command(&job, &spec, command_id, job.attempt as u32, now).await?
                {
                    info!(job = %job.id, device, "re-sending a dispatched job after the agent reconnected");
                    if let Err(e) =
                        self.bus.publish(&topic::cmd(device, CmdKind::Job), &cmd, false).await
                    {
                        warn!(job = %job.id, error = %e, "re-sending the job failed");
                    }
                }
            }
        }
        Ok(())
    }

    /// The signed job document for an attempt; `None` if the model no longer exists.
    async fn command(
        &self,
        job: &JobRow,
        spec: &CampaignSpec,
        command_id: String,
        attempt: u32,
        now: i64,
    ) -> anyhow::Result<Option<Message>> {
        let Some(model) = self.db.find_model(&job.model_id).await? else { return Ok(None) };
        self.command_for(&model, job, spec, command_id, attempt, now).map(Some)
    }

    /// The signed job document of one attempt of `job`, which runs `model`.
    fn command_for(
        &self,
        model: &crate::db::ModelRow,
        job: &JobRow,
        spec: &CampaignSpec,
        command_id: String,
        attempt: u32,
        now: i64,
    ) -> anyhow::Result<Message> {
        let sha256: [u8; 32] =
            hex::decode(&model.sha256)?.try_into().map_err(|_| anyhow::anyhow!("bad digest"))?;
        let ttl = (spec.job_timeout_ms as i64).max(3_600_000);
        let expires_at_ms = (now + ttl) as u64;
        let artifact = ArtifactRef {
            artifact_id: model.id.clone(),
            sha256,
            size: model.size_bytes as u64,
            url: self.signer.artifact_url(&self.public_url, &model.sha256, expires_at_ms),
            expires_at_ms,
        };
        // Shapes the campaign gives win; otherwise the ones stored with the model at
        // registration (for inputs whose declared shapes are not fixed).
        let mut bench = spec.bench.clone();
        if bench.inputs.is_empty()
            && let Some(stored) = model.summary.get("input_shapes")
        {
            bench.inputs = serde_json::from_value(stored.clone()).unwrap_or_default();
        }
        Ok(Message::RunJob(self.signer.sign_job(JobCommand {
            command_id,
            job_id: job.id.clone(),
            attempt,
            artifact,
            spec: bench,
            timeout_ms: spec.job_timeout_ms,
            seq: 0, // the signer numbers it
            signature: Vec::new(),
        })))
    }

    /// Sends a queued job to its device; returns whether it was sent (not if the job stopped
    /// being queued meanwhile, e.g. its campaign was cancelled, or its model is gone).
    /// `models` keeps the models this tick has read (a campaign's jobs mostly share a few).
    /// The dispatch time is read here, not at the tick's start: a tick sending hundreds of jobs
    /// takes a while, and the delivery time counts from each job's own dispatch.
    async fn dispatch(
        &self,
        job: &JobRow,
        spec: &CampaignSpec,
        models: &mut HashMap<String, Option<crate::db::ModelRow>>,
    ) -> anyhow::Result<bool> {
        let now = now_ms() as i64;
        let command_id = ulid::Ulid::new().to_string();
        let attempt = (job.attempt + 1) as u32;
        if !models.contains_key(&job.model_id) {
            let model = self.db.find_model(&job.model_id).await?;
            models.insert(job.model_id.clone(), model);
        }
        let Some(model) = &models[&job.model_id] else {
            self.db
                .fail_queued(&job.id, &format!("model {} no longer exists", job.model_id), now)
                .await?;
            return Ok(false);
        };
        let cmd = self.command_for(model, job, spec, command_id.clone(), attempt, now)?;
        let deadline = now + spec.job_timeout_ms as i64;
        if !self.db.mark_dispatched(&job.id, &command_id, now, deadline).await? {
            return Ok(false);
        }
        self.metrics.jobs_dispatched.fetch_add(1, Relaxed);
        info!(job = %job.id, device = %job.device_id, model = %job.model_id, attempt, "dispatching job");
        if let Err(e) =
            self.bus.publish(&topic::cmd(&job.device_id, CmdKind::Job), &cmd, false).await
        {
            warn!(job = %job.id, error = %e, "publishing the job failed; it will time out and be retried");
        }
        Ok(true)
    }
}

/// Cancels a running campaign ([`Db::cancel_campaign`]): the campaign becomes `cancelled` and
/// its queued, dispatched and running jobs fail with `cancelled: {reason}`; counts
/// `jobs_cancelled`. A campaign that already ended, or an unknown id, changes nothing (see
/// [`CancelOutcome`]). Callable from outside the engine task (e.g. the HTTP API); poke the
/// engine afterwards so that the freed devices get work at once.
pub async fn cancel(
    db: &Db,
    metrics: &Metrics,
    id: &str,
    reason: &str,
) -> anyhow::Result<CancelOutcome> {
    let outcome = db.cancel_campaign(id, reason, now_ms() as i64).await?;
    match &outcome {
        CancelOutcome::Cancelled { jobs_failed } => {
            metrics.jobs_cancelled.fetch_add(*jobs_failed, Relaxed);
            warn!(campaign = %id, jobs_failed, %reason, "campaign cancelled");
        }
        CancelOutcome::NotRunning { state } => {
            info!(campaign = %id, %state, "campaign not cancelled: it already ended")
        }
        CancelOutcome::NotFound => info!(campaign = %id, "no campaign to cancel"),
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_common::wire::DeviceStatus;

    /// An engine over SQLite whose bus points at no broker (publishes queue up unsent).
    async fn engine() -> (tempfile::TempDir, Engine, mpsc::Receiver<Inbound>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()))
            .await
            .unwrap();
        let (engine, rx) = engine_on(db);
        (dir, engine, rx)
    }

    /// An engine over `db` whose bus points at no broker.
    fn engine_on(db: Db) -> (Engine, mpsc::Receiver<Inbound>) {
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::channel(16);
        let config =
            crate::mqtt::config("127.0.0.1".into(), 1, "t".into(), Duration::from_secs(5), 0);
        let bus = crate::mqtt::start(config, None, None, 0, metrics.clone(), tx);
        let signer = Signer::from_seed([2; 32]);
        let engine = Engine {
            db,
            bus,
            signer,
            public_url: "http://c".into(),
            metrics,
            monitor: Default::default(),
            rollout_wake: Arc::new(Notify::new()),
            specs: Default::default(),
        };
        (engine, rx)
    }

    /// Runs `scenario` on SQLite, then on PostgreSQL when a server answers.
    async fn on_every_backend<F, Fut>(scenario: F)
    where
        F: Fn(Engine) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        for t in crate::db::testing::backends().await {
            eprintln!("backend: {}", t.backend);
            let (engine, _rx) = engine_on(t.db.clone());
            scenario(engine).await;
            t.finish().await;
        }
    }

    fn status_as(id: &str, online: bool, session: u64, profile: &str) -> DeviceStatus {
        DeviceStatus {
            runtimes: Default::default(),
            device_id: id.into(),
            online,
            session,
            agent_version: "0.1.0".into(),
            arch: "x86_64".into(),
            os: "linux".into(),
            cores: 2,
            memory_bytes: 1 << 30,
            profile: Some(profile.into()),
            sent_at_ms: 0,
            fault: None,
        }
    }

    fn msg(device: &str, message: Message) -> Inbound {
        Inbound { device: device.into(), payload: Payload::Message(message) }
    }

    /// Devices online (session 1) with their profiles.
    async fn online(engine: &Engine, devices: &[(&str, &str)]) {
        for (id, profile) in devices {
            let status = status_as(id, true, 1, profile);
            engine.handle(msg(id, Message::Status(status))).await.unwrap();
        }
    }

    /// The device's Last Will (of its current session), as if it went offline `ago_ms` ago,
    /// then a tick.
    async fn offline(engine: &Engine, id: &str, profile: &str, ago_ms: i64) {
        let session = engine.db.device(id).await.unwrap().map_or(1, |d| d.session as u64);
        let status = status_as(id, false, session, profile);
        engine.db.apply_status(&status, now_ms() as i64 - ago_ms).await.unwrap();
        engine.tick().await.unwrap();
    }

    async fn add_model(engine: &Engine) {
        engine
            .db
            .insert_model(&crate::db::ModelRow {
                id: "m1".into(),
                name: "m".into(),
                sha256: "ab".repeat(32),
                size_bytes: 1,
                summary: serde_json::json!({}),
                created_at_ms: 0,
                lineage: None,
            })
            .await
            .unwrap();
    }

    /// A campaign of model m1 with one job per `(job id, device)`.
    async fn campaign(
        engine: &Engine,
        id: &str,
        selector: crate::campaign::DeviceSelector,
        jobs: &[(&str, &str)],
        job_timeout_ms: u64,
        max_attempts: u32,
        reassign_within_class: bool,
    ) {
        let spec = CampaignSpec {
            models: vec!["m1".into()],
            devices: jobs.iter().map(|(_, d)| d.to_string()).collect(),
            selector,
            bench: Default::default(),
            job_timeout_ms,
            max_attempts,
            max_parallel: None,
            reassign_within_class,
        };
        let jobs: Vec<(String, String, String, i64)> = jobs
            .iter()
            .map(|(j, d)| (j.to_string(), "m1".into(), d.to_string(), i64::from(max_attempts)))
            .collect();
        let spec = serde_json::to_value(&spec).unwrap();
        let created = engine.db.create_campaign(id, &spec, &jobs, now_ms() as i64).await.unwrap();
        assert_eq!(created, crate::db::CreateOutcome::Created);
        engine.tick().await.unwrap();
    }

    fn profile(p: &str) -> crate::campaign::DeviceSelector {
        crate::campaign::DeviceSelector::Profile(p.into())
    }

    async fn job(engine: &Engine, id: &str) -> JobRow {
        engine.db.job(id).await.unwrap().expect("job exists")
    }

    /// The agent on the job's device accepts its current command.
    async fn accept(engine: &Engine, id: &str) {
        let j = job(engine, id).await;
        let acc = hone_common::wire::JobAccepted {
            command_id: j.command_id.clone().unwrap(),
            job_id: j.id.clone(),
            attempt: j.attempt as u32,
        };
        engine.handle(msg(&j.device_id, Message::JobAccepted(acc))).await.unwrap();
        assert_eq!(job(engine, id).await.state, "running");
    }

    /// `device` sends a successful result for the job's attempt `attempt` (command `command`).
    async fn result(engine: &Engine, device: &str, id: &str, command: &str, attempt: u32) {
        let result = hone_common::wire::JobResult {
            result_id: format!("{id}/{attempt}"),
            command_id: command.into(),
            job_id: id.into(),
            attempt,
            outcome: Outcome::Ok(crate::db::testing::report(5.0)),
        };
        engine.handle(msg(device, Message::JobResult(result))).await.unwrap();
    }

    #[tokio::test]
    async fn a_running_job_of_a_device_gone_offline_moves_to_an_idle_device_of_its_profile() {
        on_every_backend(|engine| async move {
            add_model(&engine).await;
            online(&engine, &[("a1", "rpi4"), ("a2", "rpi4"), ("b1", "rpi5")]).await;
            campaign(&engine, "c1", profile("rpi4"), &[("c1-j0", "a1")], 600_000, 3, false).await;
            assert_eq!(job(&engine, "c1-j0").await.state, "dispatched");
            accept(&engine, "c1-j0").await;

            offline(&engine, "a1", "rpi4", 0).await;
            let j = job(&engine, "c1-j0").await;
            assert_eq!(
                (j.device_id.as_str(), j.state.as_str(), j.attempt),
                ("a2", "dispatched", 2),
                "moved and sent again at once; the dead device's attempt counts: {j:?}"
            );
            assert_eq!(
                j.last_error.as_deref(),
                Some("moved from a1 to a2: device a1 went offline during attempt 1")
            );
            assert_eq!(engine.metrics.jobs_moved.load(Relaxed), 1);
            assert!(engine.metrics.prometheus().contains("hone_jobs_moved 1\n"));

            // The old device's late result is acknowledged, not stored; a2's completes the job.
            let old_command = "not-the-current-one";
            result(&engine, "a1", "c1-j0", old_command, 1).await;
            assert_eq!(job(&engine, "c1-j0").await.state, "dispatched");
            let command = job(&engine, "c1-j0").await.command_id.unwrap();
            result(&engine, "a2", "c1-j0", &command, 2).await;
            let stored = engine.db.campaign_results("c1").await.unwrap();
            assert_eq!(stored.len(), 1);
            assert_eq!((stored[0].device_id.as_str(), stored[0].attempt), ("a2", 2));
            assert_eq!(engine.db.campaign("c1").await.unwrap().unwrap().state, "done");
        })
        .await;
    }

    #[tokio::test]
    async fn a_queued_job_on_an_offline_device_moves_to_an_idle_one_else_to_a_busy_one() {
        on_every_backend(|engine| async move {
            add_model(&engine).await;
            online(&engine, &[("a1", "rpi4"), ("a2", "rpi4"), ("a3", "rpi4"), ("b1", "rpi5")])
                .await;
            // a2 is busy with another campaign's job.
            campaign(&engine, "busy", profile("rpi4"), &[("busy-j0", "a2")], 600_000, 3, false)
                .await;
            assert_eq!(job(&engine, "busy-j0").await.state, "dispatched");
            offline(&engine, "a1", "rpi4", 0).await;

            // Two jobs wait for a1 (the selector matched it when the campaign was planned).
            campaign(
                &engine,
                "c1",
                profile("rpi4"),
                &[("c1-j0", "a1"), ("c1-j1", "a1")],
                600_000,
                3,
                false,
            )
            .await;
            // The first goes to the idle a3 and runs; the second finds a2 and a3 both busy and
            // waits on the less loaded one (a2: one job; a3: one job; by id, a2).
            let j0 = job(&engine, "c1-j0").await;
            assert_eq!((j0.device_id.as_str(), j0.state.as_str()), ("a3", "dispatched"));
            assert_eq!(j0.last_error.as_deref(), Some("moved from a1 to a3: device a1 is offline"));
            let j1 = job(&engine, "c1-j1").await;
            assert_eq!((j1.device_id.as_str(), j1.state.as_str(), j1.attempt), ("a2", "queued", 0));
            assert_eq!(engine.metrics.jobs_moved.load(Relaxed), 2);
            let devices: Vec<String> = engine
                .db
                .jobs_in_states(&["queued", "dispatched", "running"])
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.device_id)
                .collect();
            assert!(!devices.contains(&"b1".to_string()), "another profile: {devices:?}");
        })
        .await;
    }

    #[tokio::test]
    async fn without_another_device_of_the_class_a_job_waits_then_fails_after_the_timeout() {
        on_every_backend(|engine| async move {
            add_model(&engine).await;
            online(&engine, &[("a1", "rpi4"), ("a2", "rpi4"), ("b1", "rpi5")]).await;
            offline(&engine, "a2", "rpi4", 0).await;
            // Same device, two campaigns: one with a long timeout, one whose timeout passed.
            campaign(&engine, "long", profile("rpi4"), &[("long-j0", "a1")], 600_000, 3, false)
                .await;
            campaign(&engine, "short", profile("rpi4"), &[("short-j0", "a1")], 1_000, 3, false)
                .await;
            offline(&engine, "a1", "rpi4", 5_000).await;

            let long = job(&engine, "long-j0").await;
            assert_eq!((long.device_id.as_str(), long.state.as_str()), ("a1", "queued"), "waits");
            let short = job(&engine, "short-j0").await;
            assert_eq!((short.device_id.as_str(), short.state.as_str()), ("a1", "failed"));
            assert_eq!(
                short.last_error.as_deref(),
                Some("device a1 offline for more than the job timeout (1 s)")
            );
            assert_eq!(engine.metrics.jobs_moved.load(Relaxed), 0, "b1 is another profile");
            assert_eq!(engine.metrics.jobs_dispatched.load(Relaxed), 1, "long-j0's first");
        })
        .await;
    }

    #[tokio::test]
    async fn id_selected_jobs_move_only_when_the_spec_asks_and_only_within_the_device_profile() {
        on_every_backend(|engine| async move {
            add_model(&engine).await;
            online(&engine, &[("a1", "rpi4"), ("a2", "rpi4"), ("b1", "rpi5")]).await;
            offline(&engine, "a1", "rpi4", 0).await;
            let ids = crate::campaign::DeviceSelector::Ids(vec!["a1".into()]);
            campaign(&engine, "stay", ids.clone(), &[("stay-j0", "a1")], 600_000, 3, false).await;
            assert_eq!(job(&engine, "stay-j0").await.device_id, "a1", "no flag: stays");
            campaign(&engine, "move", ids, &[("move-j0", "a1")], 600_000, 3, true).await;
            let moved = job(&engine, "move-j0").await;
            assert_eq!((moved.device_id.as_str(), moved.state.as_str()), ("a2", "dispatched"));
        })
        .await;
    }

    #[tokio::test]
    async fn a_restarted_agent_loses_its_job_to_an_idle_device_and_used_up_attempts_fail() {
        on_every_backend(|engine| async move {
            add_model(&engine).await;
            online(&engine, &[("a1", "rpi4"), ("a2", "rpi4")]).await;
            campaign(&engine, "c1", profile("rpi4"), &[("c1-j0", "a1")], 600_000, 3, false).await;
            accept(&engine, "c1-j0").await;
            let reborn = status_as("a1", true, 2, "rpi4");
            engine.handle(msg("a1", Message::Status(reborn))).await.unwrap();
            let j = job(&engine, "c1-j0").await;
            assert_eq!(
                (j.device_id.as_str(), j.state.as_str(), j.attempt),
                ("a2", "dispatched", 2)
            );
            assert_eq!(
                j.last_error.as_deref(),
                Some("moved from a1 to a2: agent on a1 restarted (session 2) during attempt 1")
            );

            // A job on its last attempt whose device dies fails instead of moving.
            campaign(&engine, "c2", profile("rpi4"), &[("c2-j0", "a1")], 600_000, 1, false).await;
            assert_eq!(job(&engine, "c2-j0").await.state, "dispatched");
            let moves = engine.metrics.jobs_moved.load(Relaxed);
            offline(&engine, "a1", "rpi4", 0).await;
            let j = job(&engine, "c2-j0").await;
            assert_eq!((j.device_id.as_str(), j.state.as_str()), ("a1", "failed"));
            assert_eq!(engine.metrics.jobs_moved.load(Relaxed), moves);
        })
        .await;
    }

    #[tokio::test]
    async fn cancelling_fails_the_open_jobs_holds_the_busy_device_and_ignores_its_late_result() {
        on_every_backend(|engine| async move {
            add_model(&engine).await;
            online(&engine, &[("a1", "rpi4"), ("a2", "rpi4")]).await;
            let ids = crate::campaign::DeviceSelector::Ids(vec!["a1".into(), "a2".into()]);
            campaign(
                &engine,
                "c1",
                ids.clone(),
                &[("c1-j0", "a1"), ("c1-j1", "a2"), ("c1-j2", "a1")],
                600_000,
                3,
                false,
            )
            .await;
            // j0 done on a1, j1 running on a2, j2 dispatched to a1.
            let j0 = job(&engine, "c1-j0").await;
            result(&engine, "a1", "c1-j0", &j0.command_id.unwrap(), 1).await;
            accept(&engine, "c1-j1").await;
            assert_eq!(job(&engine, "c1-j2").await.state, "dispatched");

            let outcome = engine.cancel("c1", "superseded").await.unwrap();
            assert_eq!(outcome, CancelOutcome::Cancelled { jobs_failed: 2 });
            let c = engine.db.campaign("c1").await.unwrap().unwrap();
            assert_eq!(c.state, "cancelled");
            assert!(c.finished_at_ms.is_some());
            assert_eq!(job(&engine, "c1-j0").await.state, "done", "results are kept");
            for id in ["c1-j1", "c1-j2"] {
                let j = job(&engine, id).await;
                assert_eq!(j.state, "failed", "{id}");
                assert_eq!(j.last_error.as_deref(), Some("cancelled: superseded"), "{id}");
            }
            assert_eq!(engine.metrics.jobs_cancelled.load(Relaxed), 2);
            assert_eq!(
                engine.cancel("c1", "again").await.unwrap(),
                CancelOutcome::NotRunning { state: "cancelled".into() }
            );
            assert_eq!(engine.cancel("nope", "x").await.unwrap(), CancelOutcome::NotFound);

            // a2's agent is still running c1-j1: a new job for a2 waits until its result.
            campaign(&engine, "c2", ids, &[("c2-j0", "a2")], 600_000, 3, false).await;
            assert_eq!(job(&engine, "c2-j0").await.state, "queued", "a2 still runs c1-j1");
            let j1 = job(&engine, "c1-j1").await;
            result(&engine, "a2", "c1-j1", &j1.command_id.unwrap(), 1).await;
            let j1 = job(&engine, "c1-j1").await;
            assert_eq!(j1.state, "failed", "a late result does not revive a cancelled job");
            assert_eq!(engine.db.campaign_results("c1").await.unwrap().len(), 1);
            assert_eq!(engine.db.campaign("c1").await.unwrap().unwrap().state, "cancelled");
            assert_eq!(job(&engine, "c2-j0").await.state, "dispatched", "a2 is free again");

            // The store refuses the result even if the engine's check is raced past.
            let j2 = job(&engine, "c1-j2").await;
            let report = crate::db::testing::report(1.0);
            let late = NewResult {
                job: &j2,
                result_id: "c1-j2/1",
                attempt: 1,
                profile: None,
                report: &report,
                now_ms: now_ms() as i64,
            };
            assert!(!engine.db.store_result(&late).await.unwrap());
            assert_eq!(job(&engine, "c1-j2").await.state, "failed");
        })
        .await;
    }

    fn birth(id: &str, session: u64) -> Inbound {
        Inbound {
            device: id.into(),
            payload: Payload::Message(Message::Status(DeviceStatus {
                runtimes: Default::default(),
                device_id: id.into(),
                online: true,
                session,
                agent_version: "0.1.0".into(),
                arch: "x86_64".into(),
                os: "linux".into(),
                cores: 2,
                memory_bytes: 1 << 30,
                profile: None,
                sent_at_ms: 0,
                fault: None,
            })),
        }
    }

    #[tokio::test]
    async fn a_device_on_an_older_wire_version_is_incompatible_and_gets_no_job_until_it_upgrades() {
        let (_dir, engine, _rx) = engine().await;
        let old = WIRE_VERSION - 1;
        engine
            .handle(Inbound { device: "d1".into(), payload: Payload::OtherWireVersion(old) })
            .await
            .unwrap();
        let device = engine.db.device("d1").await.unwrap().expect("device listed");
        assert_eq!(device.status, "incompatible");
        let problem = device.problem.clone().unwrap();
        assert!(problem.contains(&format!("needs wire version {WIRE_VERSION}")), "{problem}");
        assert!(problem.contains(&format!("speaks version {old}")), "{problem}");

        // A campaign naming the device queues its job and sends nothing.
        add_model(&engine).await;
        let spec = CampaignSpec {
            models: vec!["m1".into()],
            devices: vec!["d1".into()],
            selector: crate::campaign::DeviceSelector::Ids(vec!["d1".into()]),
            bench: Default::default(),
            job_timeout_ms: 600_000,
            max_attempts: 1,
            max_parallel: None,
            reassign_within_class: false,
        };
        let jobs = [("c1-j0".to_string(), "m1".to_string(), "d1".to_string(), 1)];
        let now = now_ms() as i64;
        engine
            .db
            .create_campaign("c1", &serde_json::to_value(&spec).unwrap(), &jobs, now)
            .await
            .unwrap();
        engine.tick().await.unwrap();
        assert_eq!(engine.db.job("c1-j0").await.unwrap().unwrap().state, "queued");
        assert_eq!(engine.metrics.jobs_dispatched.load(Relaxed), 0);

        // The upgraded agent's birth (current wire version) makes it compatible: the job goes.
        engine.handle(birth("d1", 1)).await.unwrap();
        let device = engine.db.device("d1").await.unwrap().unwrap();
        assert_eq!((device.status, device.problem), ("online", None));
        assert_eq!(engine.db.job("c1-j0").await.unwrap().unwrap().state, "dispatched");
        assert_eq!(engine.metrics.jobs_dispatched.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_queued_job_on_an_incompatible_device_fails_after_the_timeout_naming_the_version() {
        let (_dir, engine, _rx) = engine().await;
        engine.handle(birth("d2", 1)).await.unwrap();
        engine
            .handle(Inbound {
                device: "d2".into(),
                payload: Payload::OtherWireVersion(WIRE_VERSION - 1),
            })
            .await
            .unwrap();
        let spec = CampaignSpec {
            models: vec!["m1".into()],
            devices: vec!["d2".into()],
            selector: crate::campaign::DeviceSelector::Ids(vec!["d2".into()]),
            bench: Default::default(),
            job_timeout_ms: 0,
            max_attempts: 1,
            max_parallel: None,
            reassign_within_class: false,
        };
        let jobs = [("c2-j0".to_string(), "m1".to_string(), "d2".to_string(), 1)];
        engine
            .db
            .create_campaign("c2", &serde_json::to_value(&spec).unwrap(), &jobs, 0)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        engine.tick().await.unwrap();
        let job = engine.db.job("c2-j0").await.unwrap().unwrap();
        assert_eq!(job.state, "failed");
        let reason = job.last_error.unwrap();
        assert!(reason.contains(&format!("needs wire version {WIRE_VERSION}")), "{reason}");
        assert_eq!(engine.metrics.jobs_dispatched.load(Relaxed), 0);
    }
}
