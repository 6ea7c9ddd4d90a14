//! The engine: the single writer of job state.
//!
//! One task receives every decoded MQTT message ([`crate::mqtt::Inbound`]) and ticks every
//! 250 ms (or when poked after a campaign is created). On each tick it
//! 1. ends attempts whose deadline passed or whose device went offline or incompatible (retry
//!    or fail),
//! 2. fails queued jobs whose device stayed offline or incompatible (an agent speaking another
//!    wire version) longer than the job timeout,
//! 3. dispatches queued jobs: one job at a time per device, within each campaign's
//!    `max_parallel`, as a signed job document over MQTT,
//! 4. marks campaigns done when none of their jobs is left active.
//!
//! All state lives in the database, so a restarted coordinator resumes where it stopped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hone_common::clock::now_ms;
use hone_common::topic::{self, CmdKind};
use hone_common::wire::{ArtifactRef, JobCommand, Message, Outcome, ResultAck, WIRE_VERSION};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::artifacts::Signer;
use crate::campaign::CampaignSpec;
use crate::db::{Db, DeviceRow, JobRow, NewResult};
use crate::metrics::Metrics;
use crate::mqtt::{Bus, Inbound, Payload};

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
        loop {
            tokio::select! {
                msg = inbound.recv() => match msg {
                    Some(m) => {
                        if let Err(e) = self.handle(m).await {
                            warn!(error = %e, "handling an MQTT message failed");
                        }
                    }
                    None => return,
                },
                _ = interval.tick() => self.tick_logged().await,
                _ = poke.notified() => self.tick_logged().await,
                _ = stop.changed() => return,
            }
        }
    }

    async fn tick_logged(&self) {
        if let Err(e) = self.tick().await {
            warn!(error = %e, "engine tick failed");
        }
    }

    /// Applies one message from a device.
    pub async fn handle(&self, inbound: Inbound) -> anyhow::Result<()> {
        let now = now_ms() as i64;
        let device = inbound.device;
        let message = match inbound.payload {
            Payload::Message(message) => message,
            Payload::OtherWireVersion(found) => {
                if self.db.mark_wire_version(&device, found, now).await? {
                    warn!(device = %device, found, needs = WIRE_VERSION, "device speaks another wire version: marked incompatible, nothing is dispatched to it");
                    self.poke_tick().await;
                }
                return Ok(());
            }
        };
        match message {
            Message::Status(status) => {
                if status.device_id != device {
                    warn!(topic_device = %device, claimed = %status.device_id, "status for another device ignored");
                    self.metrics.rejected_malformed.fetch_add(1, Relaxed);
                    return Ok(());
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
                    self.poke_tick().await;
                } else {
                    self.metrics.stale_wills.fetch_add(1, Relaxed);
                    debug!(device = %device, session = status.session, "stale status ignored");
                }
            }
            Message::JobAccepted(acc) => {
                self.db.touch_device(&device, now).await?;
                let Some(job) = self.db.job(&acc.job_id).await? else { return Ok(()) };
                if job.device_id != device {
                    return Ok(());
                }
                let timeout = self.job_timeout_ms(&job.campaign_id).await?;
                self.db.mark_accepted(&acc.job_id, &acc.command_id, now, now + timeout).await?;
            }
            Message::JobResult(result) => {
                self.db.touch_device(&device, now).await?;
                match self.db.job(&result.job_id).await? {
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
                    _ => debug!(job = %result.job_id, "result for an unknown job acknowledged"),
                }
                let ack = Message::ResultAck(ResultAck { result_id: result.result_id.clone() });
                self.bus.publish(&topic::cmd(&device, CmdKind::Ack), &ack, false).await?;
                self.poke_tick().await;
            }
            other => {
                debug!(device = %device, message = ?std::mem::discriminant(&other), "ignored message")
            }
        }
        Ok(())
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

    async fn spec(&self, campaign_id: &str) -> anyhow::Result<Option<CampaignSpec>> {
        Ok(match self.db.campaign(campaign_id).await? {
            Some(c) => Some(serde_json::from_value(c.spec)?),
            None => None,
        })
    }

    /// One pass of timeouts, dispatch and completion.
    pub async fn tick(&self) -> anyhow::Result<()> {
        let now = now_ms() as i64;
        let devices: HashMap<String, DeviceRow> =
            self.db.devices().await?.into_iter().map(|d| (d.id.clone(), d)).collect();

        // 1. Active attempts that timed out or lost their device.
        for job in self.db.jobs_in_states(&["dispatched", "running"]).await? {
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
            }
        }

        // 2 and 3. Queued jobs.
        let campaigns = self.db.campaigns(Some("running")).await?;
        let mut specs: HashMap<String, CampaignSpec> = HashMap::new();
        for c in &campaigns {
            match serde_json::from_value::<CampaignSpec>(c.spec.clone()) {
                Ok(s) => {
                    specs.insert(c.id.clone(), s);
                }
                Err(e) => warn!(campaign = %c.id, error = %e, "unreadable campaign spec"),
            }
        }
        let active = self.db.jobs_in_states(&["dispatched", "running"]).await?;
        let mut busy: HashSet<String> = active.iter().map(|j| j.device_id.clone()).collect();
        let mut running_per_campaign: HashMap<String, u32> = HashMap::new();
        for j in &active {
            *running_per_campaign.entry(j.campaign_id.clone()).or_default() += 1;
        }
        let queued = self.db.jobs_in_states(&["queued"]).await?;
        let mut ordered: Vec<&JobRow> = queued.iter().collect();
        let order: HashMap<&str, usize> =
            campaigns.iter().enumerate().map(|(i, c)| (c.id.as_str(), i)).collect();
        ordered.sort_by_key(|j| {
            (order.get(j.campaign_id.as_str()).copied().unwrap_or(usize::MAX), j.seq)
        });
        for job in ordered {
            let Some(spec) = specs.get(&job.campaign_id) else { continue };
            let device = devices.get(&job.device_id);
            if !device.is_some_and(DeviceRow::dispatchable) {
                let since = device.map(|d| d.status_changed_ms).unwrap_or(0);
                if now - since > spec.job_timeout_ms as i64 {
                    let reason = match device.and_then(|d| d.problem.as_deref()) {
                        Some(problem) => format!(
                            "{problem}, for more than the job timeout ({} s)",
                            spec.job_timeout_ms / 1000
                        ),
                        None => format!(
                            "device {} offline for more than the job timeout ({} s)",
                            job.device_id,
                            spec.job_timeout_ms / 1000
                        ),
                    };
                    self.db.fail_queued(&job.id, &reason, now).await?;
                    self.metrics.jobs_failed.fetch_add(1, Relaxed);
                    warn!(job = %job.id, %reason, "job failed");
                }
                continue;
            }
            if busy.contains(&job.device_id) {
                continue;
            }
            let running = running_per_campaign.entry(job.campaign_id.clone()).or_default();
            if spec.max_parallel.is_some_and(|m| *running >= m) {
                continue;
            }
            self.dispatch(job, spec, now).await?;
            busy.insert(job.device_id.clone());
            *running += 1;
        }

        // 4. Completion.
        for c in &campaigns {
            let jobs = self.db.campaign_jobs(&c.id).await?;
            if jobs.iter().all(|j| j.state == "done" || j.state == "failed") {
                self.db.finish_campaign(&c.id, now).await?;
                let failed = jobs.iter().filter(|j| j.state == "failed").count();
                info!(campaign = %c.id, jobs = jobs.len(), failed, "campaign finished");
            }
        }
        Ok(())
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
        Ok(Some(Message::RunJob(self.signer.sign_job(JobCommand {
            command_id,
            job_id: job.id.clone(),
            attempt,
            artifact,
            spec: bench,
            timeout_ms: spec.job_timeout_ms,
            signature: Vec::new(),
        }))))
    }

    async fn dispatch(&self, job: &JobRow, spec: &CampaignSpec, now: i64) -> anyhow::Result<()> {
        let command_id = ulid::Ulid::new().to_string();
        let attempt = (job.attempt + 1) as u32;
        let Some(cmd) = self.command(job, spec, command_id.clone(), attempt, now).await? else {
            self.db
                .fail_queued(&job.id, &format!("model {} no longer exists", job.model_id), now)
                .await?;
            return Ok(());
        };
        let deadline = now + spec.job_timeout_ms as i64;
        self.db.mark_dispatched(&job.id, &command_id, now, deadline).await?;
        self.metrics.jobs_dispatched.fetch_add(1, Relaxed);
        info!(job = %job.id, device = %job.device_id, model = %job.model_id, attempt, "dispatching job");
        if let Err(e) =
            self.bus.publish(&topic::cmd(&job.device_id, CmdKind::Job), &cmd, false).await
        {
            warn!(job = %job.id, error = %e, "publishing the job failed; it will time out and be retried");
        }
        Ok(())
    }
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
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::channel(16);
        let config =
            crate::mqtt::config("127.0.0.1".into(), 1, "t".into(), Duration::from_secs(5), 0);
        let bus = crate::mqtt::start(config, 0, metrics.clone(), tx);
        let signer = Signer::from_seed([2; 32]);
        let engine = Engine { db, bus, signer, public_url: "http://c".into(), metrics };
        (dir, engine, rx)
    }

    fn birth(id: &str, session: u64) -> Inbound {
        Inbound {
            device: id.into(),
            payload: Payload::Message(Message::Status(DeviceStatus {
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
        let spec = CampaignSpec {
            models: vec!["m1".into()],
            devices: vec!["d1".into()],
            selector: crate::campaign::DeviceSelector::Ids(vec!["d1".into()]),
            bench: Default::default(),
            job_timeout_ms: 600_000,
            max_attempts: 1,
            max_parallel: None,
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
