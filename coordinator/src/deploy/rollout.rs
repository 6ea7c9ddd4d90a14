//! The rollout task: moves every unfinished deployment one step per tick.
//!
//! Per deployment (state in the database, so a restart resumes here):
//! - `canary`: wave 0 gets signed activation commands; once every canary device reported the
//!   model active, the gate opens and [`super::gate::judge`] decides: pass → `rolling`, fail →
//!   `rolling_back`. A canary device that cannot activate the model fails the deployment at
//!   once (`rolling_back`, with the agent's reason).
//! - `rolling`: the rest get their commands; all active → `done`; any failure → `rolling_back`.
//! - `rolling_back`: every device that activated (or may have) is sent its previous model (or
//!   told to stop serving when it had none); devices never sent anything are `skipped`. When
//!   all are back → `rolled_back` (or `failed` if a device could not go back).
//!
//! A command with no report is re-sent (same command id: agents answer a duplicate with the
//! report they already sent) every [`RESEND_MS`], and a device that reports nothing within the
//! activation timeout fails. An offline device is not sent anything; it fails at the timeout.

use std::sync::Arc;
use std::time::Duration;

use hone_common::clock::now_ms;
use hone_common::topic::{self, CmdKind};
use hone_common::wire::{
    ActivateCommand, ActivationOutcome, ActivationReport, ArtifactRef, FailureKind, Message,
};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::DeployRequest;
use super::gate::{self, Verdict};
use crate::artifacts::Signer;
use crate::db::{Db, DeploymentDeviceRow, DeploymentRow};
use crate::mqtt::Bus;

/// A command without a report is re-sent this often, ms.
pub const RESEND_MS: i64 = 10_000;

/// Everything the rollout needs.
#[derive(Clone)]
pub struct Rollout {
    /// Database.
    pub db: Db,
    /// MQTT.
    pub bus: Bus,
    /// Signs activation commands.
    pub signer: Signer,
    /// Base URL agents download artifacts from.
    pub public_url: String,
    /// Wakes the task (a deployment was created or rolled back, a report arrived).
    pub wake: Arc<Notify>,
}

impl Rollout {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(Duration::from_millis(500));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.tick().await {
                warn!(error = %format!("{e:#}"), "rollout tick failed");
            }
        }
    }

    /// One step of every unfinished deployment.
    pub async fn tick(&self) -> anyhow::Result<()> {
        for d in self.db.deployments(true).await? {
            if let Err(e) = self.step(&d).await {
                warn!(deployment = %d.id, error = %format!("{e:#}"), "deployment step failed");
            }
        }
        Ok(())
    }

    async fn step(&self, d: &DeploymentRow) -> anyhow::Result<()> {
        let now = now_ms() as i64;
        let req: DeployRequest = serde_json::from_value(d.request.clone())?;
        let devices = self.db.deployment_devices(&d.id).await?;
        match d.state.as_str() {
            "canary" | "rolling" => {
                let wave = i64::from(d.state == "rolling");
                if let Some(bad) = devices.iter().find(|x| x.wave <= wave && x.state == "failed") {
                    let reason = format!(
                        "{} could not activate the model: {}",
                        bad.device_id,
                        bad.reason.as_deref().unwrap_or("no reason given")
                    );
                    return self.begin_rollback(d, &reason, now).await;
                }
                let mut all_active = true;
                for x in devices.iter().filter(|x| x.wave == wave) {
                    all_active &= x.state == "active";
                    self.drive(d, &req, x, now).await?;
                }
                if !all_active {
                    return Ok(());
                }
                if wave == 1 {
                    self.db.set_deployment_state(&d.id, "done", None, now).await?;
                    info!(deployment = %d.id, devices = devices.len(), "deployment done");
                    return Ok(());
                }
                self.judge_canary(d, &req, &devices, now).await
            }
            "rolling_back" => self.drive_rollback(d, &req, &devices, now).await,
            _ => Ok(()),
        }
    }

    /// Sends, re-sends or times out one device's activation.
    async fn drive(
        &self,
        d: &DeploymentRow,
        req: &DeployRequest,
        x: &DeploymentDeviceRow,
        now: i64,
    ) -> anyhow::Result<()> {
        let timeout_ms = (req.activation_timeout_s * 1000.0) as i64;
        match x.state.as_str() {
            "pending" => {
                let command_id = ulid::Ulid::new().to_string();
                self.db.mark_sent(&d.id, &x.device_id, "activating", &command_id, now).await?;
                self.send(
                    d,
                    req,
                    &x.device_id,
                    &command_id,
                    Some(&d.model_id),
                    x.wave == 0,
                    timeout_ms,
                    now,
                )
                .await?;
                info!(deployment = %d.id, device = %x.device_id, wave = x.wave, "activation sent");
            }
            "activating" => {
                let why = format!(
                    "no activation report within {:.0} s (device offline or stuck)",
                    req.activation_timeout_s
                );
                self.awaiting(d, req, x, Some(&d.model_id), x.wave == 0, &why, now).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// When the current command was first sent: `sent_at_ms` moves with re-sends, so the
    /// command id (a ULID) carries the first send time.
    fn first_sent(&self, x: &DeploymentDeviceRow) -> i64 {
        x.command_id
            .as_deref()
            .and_then(|c| ulid::Ulid::from_string(c).ok())
            .map(|u| u.timestamp_ms() as i64)
            .or(x.sent_at_ms)
            .unwrap_or(0)
    }

    /// A device whose command has no report yet: it fails with `why` once the activation
    /// timeout passed since the first send, else the same command is re-sent every
    /// [`RESEND_MS`].
    #[allow(clippy::too_many_arguments)]
    async fn awaiting(
        &self,
        d: &DeploymentRow,
        req: &DeployRequest,
        x: &DeploymentDeviceRow,
        model: Option<&str>,
        canary: bool,
        why: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        let timeout_ms = (req.activation_timeout_s * 1000.0) as i64;
        if now - self.first_sent(x) > timeout_ms + RESEND_MS {
            self.db.set_device_state(&d.id, &x.device_id, "failed", Some(why), None, now).await?;
            self.wake.notify_one();
        } else if now - x.sent_at_ms.unwrap_or(now) > RESEND_MS
            && let Some(cmd) = &x.command_id
        {
            self.db.touch_sent(&d.id, &x.device_id, now).await?;
            self.send(d, req, &x.device_id, cmd, model, canary, timeout_ms, now).await?;
        }
        Ok(())
    }

    async fn judge_canary(
        &self,
        d: &DeploymentRow,
        req: &DeployRequest,
        devices: &[DeploymentDeviceRow],
        now: i64,
    ) -> anyhow::Result<()> {
        let canary: Vec<&DeploymentDeviceRow> = devices.iter().filter(|x| x.wave == 0).collect();
        let opened = d.gate_started_ms.unwrap_or_else(|| {
            canary.iter().filter_map(|x| x.activated_at_ms).max().unwrap_or(now)
        });
        let mut windows = Vec::new();
        for x in &canary {
            windows.extend(
                self.db
                    .telemetry(&x.device_id, opened, 100_000)
                    .await?
                    .into_iter()
                    .filter(|w| w.deployment_id.as_deref() == Some(&d.id)),
            );
        }
        let elapsed_s = (now - opened).max(0) as f64 / 1000.0;
        let verdict = gate::judge(
            &req.gate,
            &windows,
            elapsed_s,
            req.window_s,
            req.max_window(),
            req.min_requests,
        );
        let value = serde_json::to_value(&verdict)?;
        match verdict {
            Verdict::Wait { reason, .. } => {
                self.db.set_gate(&d.id, Some(opened), &value, Some(&reason), now).await?;
            }
            Verdict::Pass { figures } => {
                self.db.set_gate(&d.id, Some(opened), &value, None, now).await?;
                let rest = devices.iter().filter(|x| x.wave == 1).count();
                info!(deployment = %d.id, requests = figures.requests, p99 = ?figures.p99_ms, rest, "canary passed its gate: promoting");
                if rest == 0 {
                    self.db.set_deployment_state(&d.id, "done", None, now).await?;
                } else {
                    self.db.set_deployment_state(&d.id, "rolling", None, now).await?;
                }
                self.wake.notify_one();
            }
            Verdict::Fail { reason, .. } => {
                self.db.set_gate(&d.id, Some(opened), &value, Some(&reason), now).await?;
                self.begin_rollback(d, &format!("canary gate failed: {reason}"), now).await?;
            }
        }
        Ok(())
    }

    async fn begin_rollback(
        &self,
        d: &DeploymentRow,
        reason: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        warn!(deployment = %d.id, %reason, "rolling back");
        super::rollback(&self.db, &d.id, reason, now).await?;
        self.wake.notify_one();
        Ok(())
    }

    async fn drive_rollback(
        &self,
        d: &DeploymentRow,
        req: &DeployRequest,
        devices: &[DeploymentDeviceRow],
        now: i64,
    ) -> anyhow::Result<()> {
        let timeout_ms = (req.activation_timeout_s * 1000.0) as i64;
        let mut done = true;
        let mut failed: Vec<String> = Vec::new();
        for x in devices {
            match x.state.as_str() {
                // Never sent: nothing to undo.
                "pending" => {
                    self.db
                        .set_device_state(
                            &d.id,
                            &x.device_id,
                            "skipped",
                            Some("rolled back before its turn"),
                            None,
                            now,
                        )
                        .await?;
                }
                // It may have switched: send it back.
                "active" | "activating" => {
                    done = false;
                    let command_id = ulid::Ulid::new().to_string();
                    self.db
                        .mark_sent(&d.id, &x.device_id, "rolling_back", &command_id, now)
                        .await?;
                    self.send(
                        d,
                        req,
                        &x.device_id,
                        &command_id,
                        x.previous_model_id.as_deref(),
                        false,
                        timeout_ms,
                        now,
                    )
                    .await?;
                    info!(deployment = %d.id, device = %x.device_id, to = ?x.previous_model_id, "rollback sent");
                }
                "rolling_back" => {
                    done = false;
                    let why = "no report of the rollback within the activation timeout";
                    self.awaiting(d, req, x, x.previous_model_id.as_deref(), false, why, now)
                        .await?;
                }
                "failed" if x.reason.as_deref().is_some_and(|r| r.starts_with("rollback")) => {
                    failed.push(x.device_id.clone());
                }
                // `failed` activations left the previous model in place; `rolled_back` and
                // `skipped` are done.
                _ => {}
            }
        }
        if !done {
            return Ok(());
        }
        let reason = d.reason.clone().unwrap_or_default();
        if failed.is_empty() {
            self.db.set_deployment_state(&d.id, "rolled_back", Some(&reason), now).await?;
            info!(deployment = %d.id, "rolled back");
        } else {
            let why = format!("{reason}; the rollback failed on {}", failed.join(", "));
            self.db.set_deployment_state(&d.id, "failed", Some(&why), now).await?;
            warn!(deployment = %d.id, %why, "rollback incomplete");
        }
        Ok(())
    }

    /// Signs and publishes an activation of `model` (`None`: stop serving).
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        d: &DeploymentRow,
        req: &DeployRequest,
        device: &str,
        command_id: &str,
        model: Option<&str>,
        canary: bool,
        timeout_ms: i64,
        now: i64,
    ) -> anyhow::Result<()> {
        let (artifact, symbols, inputs, name) = match model {
            Some(id) => {
                let Some(m) = self.db.find_model(id).await? else {
                    anyhow::bail!("model {id} is no longer registered");
                };
                let sha256: [u8; 32] = hex::decode(&m.sha256)?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("bad digest"))?;
                let expires_at_ms = (now + timeout_ms.max(3_600_000)) as u64;
                let symbols = symbols_of(&m.summary);
                let inputs = m
                    .summary
                    .get("input_shapes")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default();
                let artifact = ArtifactRef {
                    artifact_id: m.id.clone(),
                    sha256,
                    size: m.size_bytes as u64,
                    url: self.signer.artifact_url(&self.public_url, &m.sha256, expires_at_ms),
                    expires_at_ms,
                };
                let name = if id == d.model_id {
                    req.model_name.clone().unwrap_or_else(|| super::served_name(&m.name))
                } else {
                    super::served_name(&m.name)
                };
                (Some(artifact), symbols, inputs, name)
            }
            None => (None, Vec::new(), Default::default(), String::new()),
        };
        let cmd = self.signer.sign_activation(ActivateCommand {
            command_id: command_id.to_string(),
            deployment_id: d.id.clone(),
            model_name: name,
            artifact,
            // Only the canary's gate needs traffic: it probes for the gate's longest window and a
            // little more; the rest and rollbacks get none.
            probe_rps: if canary && model == Some(d.model_id.as_str()) { req.probe_rps } else { 0 },
            probe_s: (req.max_window() + req.activation_timeout_s.min(60.0)).ceil() as u32,
            runtime: "tract".into(),
            warmup: 3,
            symbols,
            inputs,
            unknown_token_id: None,
            timeout_ms: timeout_ms as u64,
            seq: 0, // the signer numbers it
            signature: Vec::new(),
        });
        if let Err(e) = self
            .bus
            .publish(&topic::cmd(device, CmdKind::Deploy), &Message::Activate(cmd), false)
            .await
        {
            warn!(%device, error = %e, "publishing an activation failed; it is re-sent");
        }
        Ok(())
    }
}

/// Concrete sizes stored with a model at registration (`input_shapes`), as symbol bindings the
/// serving process applies to symbolic dims: `batch` and friends default to 1 there anyway.
fn symbols_of(summary: &serde_json::Value) -> Vec<(String, u64)> {
    summary
        .get("symbols")
        .and_then(|s| serde_json::from_value::<Vec<(String, u64)>>(s.clone()).ok())
        .unwrap_or_default()
}

/// Applies an agent's activation report (called by the engine for every report).
pub async fn record_activation(
    db: &Db,
    device: &str,
    report: &ActivationReport,
    now: i64,
) -> anyhow::Result<bool> {
    let Some(x) = db.deployment_device_by_command(&report.command_id).await? else {
        return Ok(false);
    };
    if x.device_id != device {
        warn!(%device, command = %report.command_id, "activation report from another device ignored");
        return Ok(false);
    }
    let rolling_back = x.state == "rolling_back";
    if x.state != "activating" && !rolling_back {
        return Ok(false); // a duplicate report
    }
    match &report.outcome {
        ActivationOutcome::Active { load_ms, .. } => {
            let (state, active) = if rolling_back {
                ("rolled_back", x.previous_model_id.clone())
            } else {
                let d = db.deployment(&x.deployment_id).await?;
                ("active", d.map(|d| d.model_id))
            };
            db.set_device_state(&x.deployment_id, device, state, None, Some((now, *load_ms)), now)
                .await?;
            db.set_device_model(device, None, Some(active.as_deref()), &x.deployment_id, now)
                .await?;
            info!(deployment = %x.deployment_id, %device, state, load_ms, "activation reported");
        }
        ActivationOutcome::Failed { kind: FailureKind::Busy, reason, .. } => {
            // The agent was still activating an earlier command (a rollback sent during an
            // activation): the command stays sent and is re-sent, until the timeout.
            info!(deployment = %x.deployment_id, %device, %reason, "agent busy: the activation is re-sent");
            return Ok(false);
        }
        ActivationOutcome::Failed { kind, reason, serving } => {
            let text = if rolling_back {
                format!("rollback: {}: {reason}", kind.as_str())
            } else {
                format!("{}: {reason}", kind.as_str())
            };
            db.set_device_state(&x.deployment_id, device, "failed", Some(&text), None, now).await?;
            // Only a report that names what is served says it; a refusal before the agent
            // looked (signature, download) leaves the record as it was.
            if serving.is_some() {
                db.set_device_model(device, None, Some(serving.as_deref()), &x.deployment_id, now)
                    .await?;
            }
            warn!(deployment = %x.deployment_id, %device, reason = %text, "activation failed");
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        (dir, Db::open(&url).await.unwrap())
    }

    fn report(command: &str, outcome: ActivationOutcome) -> ActivationReport {
        ActivationReport {
            command_id: command.into(),
            deployment_id: "d".into(),
            artifact_id: Some("m-new".into()),
            outcome,
            sent_at_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_busy_refusal_leaves_the_command_sent_and_a_real_failure_fails_the_device() {
        let (_dir, db) = db().await;
        let plan = vec![("dev".to_string(), 0, Some("m-old".to_string()))];
        assert!(
            db.create_deployment("d", &serde_json::json!({}), "m-new", &plan, 1).await.unwrap()
        );
        db.mark_sent("d", "dev", "rolling_back", "c1", 2).await.unwrap();
        let busy = ActivationOutcome::Failed {
            kind: FailureKind::Busy,
            reason: "activation c0 is in progress".into(),
            serving: Some("m-new".into()),
        };
        assert!(!record_activation(&db, "dev", &report("c1", busy), 3).await.unwrap());
        let row = db.deployment_device_by_command("c1").await.unwrap().unwrap();
        assert_eq!(row.state, "rolling_back", "still sent: the rollout re-sends it");
        let active = ActivationOutcome::Active { load_ms: 1.0, warmup_ms: 1.0, previous: None };
        assert!(record_activation(&db, "dev", &report("c1", active), 4).await.unwrap());
        let row = db.deployment_device_by_command("c1").await.unwrap().unwrap();
        assert_eq!(row.state, "rolled_back");

        db.mark_sent("d", "dev", "activating", "c2", 5).await.unwrap();
        let invalid = ActivationOutcome::Failed {
            kind: FailureKind::ModelInvalid,
            reason: "no".into(),
            serving: Some("m-old".into()),
        };
        assert!(record_activation(&db, "dev", &report("c2", invalid), 6).await.unwrap());
        let row = db.deployment_device_by_command("c2").await.unwrap().unwrap();
        assert_eq!(row.state, "failed");
        assert!(row.reason.unwrap().starts_with("model_invalid"));
    }
}
