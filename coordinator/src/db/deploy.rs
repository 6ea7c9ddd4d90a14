//! Deployments, what each device serves, telemetry, reference statistics, alerts and
//! suggestions (see `migrations/0004_deployments.sql`).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, Result, json_col, q};

/// A stored deployment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeploymentRow {
    /// Id.
    pub id: String,
    /// The request as given.
    pub request: serde_json::Value,
    /// Model deployed.
    pub model_id: String,
    /// `canary`, `rolling`, `done`, `rolling_back`, `rolled_back` or `failed`.
    pub state: String,
    /// Why it rolled back or failed, or what the gate is waiting for.
    pub reason: Option<String>,
    /// The gate's last evaluation (JSON), if any.
    pub gate: Option<serde_json::Value>,
    /// When the canary's gate window opened, Unix ms.
    pub gate_started_ms: Option<i64>,
    /// Creation, Unix ms.
    pub created_at_ms: i64,
    /// Last change, Unix ms.
    pub updated_at_ms: i64,
    /// End, Unix ms.
    pub finished_at_ms: Option<i64>,
}

/// One device of a deployment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeploymentDeviceRow {
    /// Deployment.
    pub deployment_id: String,
    /// Device.
    pub device_id: String,
    /// 0: canary; 1: the rest.
    pub wave: i64,
    /// What it served before (the rollback target).
    pub previous_model_id: Option<String>,
    /// `pending`, `activating`, `active`, `failed`, `rolling_back`, `rolled_back`, `skipped`.
    pub state: String,
    /// Last command sent.
    pub command_id: Option<String>,
    /// Why it failed or was rolled back.
    pub reason: Option<String>,
    /// When the last command was sent, Unix ms.
    pub sent_at_ms: Option<i64>,
    /// When the model became active, Unix ms.
    pub activated_at_ms: Option<i64>,
    /// Load time the agent reported, ms.
    pub load_ms: Option<f64>,
}

/// Desired and active model of a device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceModelRow {
    /// Device.
    pub device_id: String,
    /// What the coordinator wants it to serve.
    pub desired_model_id: Option<String>,
    /// What it reported serving.
    pub active_model_id: Option<String>,
    /// Deployment of the last change.
    pub deployment_id: Option<String>,
    /// Last change, Unix ms.
    pub updated_at_ms: i64,
}

/// One stored telemetry window (raw or downsampled).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TelemetryRow {
    /// Device.
    pub device_id: String,
    /// Bucket width: the agent's window for raw rows, else the downsampling resolution.
    pub resolution_ms: i64,
    /// Start, Unix ms.
    pub window_start_ms: i64,
    /// Length covered, ms.
    pub window_ms: i64,
    /// Model served.
    pub model_id: Option<String>,
    /// Its deployment.
    pub deployment_id: Option<String>,
    /// Requests answered.
    pub requests: i64,
    /// Errors.
    pub errors: i64,
    /// Rejected (503).
    pub rejected: i64,
    /// Median latency, ms (downsampled: request-weighted mean of the medians).
    pub p50_ms: Option<f64>,
    /// 90th percentile (downsampled: the largest).
    pub p90_ms: Option<f64>,
    /// 99th percentile (downsampled: the largest).
    pub p99_ms: Option<f64>,
    /// Serving process RSS, bytes (downsampled: the largest).
    pub rss_bytes: i64,
    /// Temperature, °C.
    pub temperature_c: Option<f64>,
    /// Clock, MHz.
    pub clock_mhz: Option<i64>,
    /// Throttled windows (raw: 0/1; downsampled: how many).
    pub throttled: i64,
    /// `sensor` or `modelled`.
    pub reading_source: Option<String>,
    /// Windows the agent could not deliver before this one.
    pub dropped_windows: i64,
    /// Input and output statistics (`{"inputs": [...], "outputs": [...]}`); raw rows only.
    pub stats: Option<serde_json::Value>,
}

/// An alert.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AlertRow {
    /// Id.
    pub id: String,
    /// Device.
    pub device_id: String,
    /// Its device class (profile).
    pub class: Option<String>,
    /// Model served.
    pub model_id: Option<String>,
    /// Deployment.
    pub deployment_id: Option<String>,
    /// Rule: `latency_budget`, `error_rate`, `throttling`, `memory`, `drift`.
    pub rule: String,
    /// What happened, with the figures.
    pub message: String,
    /// The figures (JSON).
    pub figures: serde_json::Value,
    /// `open` or `resolved`.
    pub state: String,
    /// The suggestion written for it.
    pub suggestion_id: Option<String>,
    /// Opened, Unix ms.
    pub opened_at_ms: i64,
    /// Last evaluation that kept it open, Unix ms.
    pub updated_at_ms: i64,
    /// Resolved, Unix ms.
    pub resolved_at_ms: Option<i64>,
}

/// A re-compression suggestion.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SuggestionRow {
    /// Id.
    pub id: String,
    /// The alert that caused it.
    pub alert_id: String,
    /// Device class.
    pub class: Option<String>,
    /// Model it would replace.
    pub model_id: Option<String>,
    /// What went wrong, with the figures.
    pub reason: String,
    /// A ready pipeline request (`POST /api/v1/pipelines` body).
    pub request: serde_json::Value,
    /// The pipeline started from it, if any.
    pub pipeline_id: Option<String>,
    /// Creation, Unix ms.
    pub created_at_ms: i64,
}

const DEPLOYMENT_COLS: &str = "id, request, model_id, state, reason, gate, gate_started_ms, \
    created_at_ms, updated_at_ms, finished_at_ms";
const DD_COLS: &str = "deployment_id, device_id, wave, previous_model_id, state, command_id, reason, \
    sent_at_ms, activated_at_ms, load_ms";
const TELEMETRY_COLS: &str = "device_id, resolution_ms, window_start_ms, window_ms, model_id, \
    deployment_id, requests, errors, rejected, p50_ms, p90_ms, p99_ms, rss_bytes, temperature_c, \
    clock_mhz, throttled, reading_source, dropped_windows, stats";
const ALERT_COLS: &str = "id, device_id, class, model_id, deployment_id, rule_name, message, figures, \
    state, suggestion_id, opened_at_ms, updated_at_ms, resolved_at_ms";
const SUGGESTION_COLS: &str =
    "id, alert_id, class, model_id, reason, request, pipeline_id, created_at_ms";

/// A double as an SQL literal: sqlx's Any driver sends an untyped NULL parameter, which
/// PostgreSQL refuses for DOUBLE PRECISION, so optional doubles are written inline. Only
/// finite numbers formatted by Rust reach the query text.
fn f64_literal(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:?}"),
        _ => "NULL".into(),
    }
}

fn opt_json(row: &AnyRow, col: &str) -> Option<serde_json::Value> {
    row.try_get::<Option<String>, _>(col).ok().flatten().and_then(|s| serde_json::from_str(&s).ok())
}

fn deployment_from(row: &AnyRow) -> std::result::Result<DeploymentRow, sqlx::Error> {
    Ok(DeploymentRow {
        id: row.try_get("id")?,
        request: json_col(row, "request"),
        model_id: row.try_get("model_id")?,
        state: row.try_get("state")?,
        reason: row.try_get("reason")?,
        gate: opt_json(row, "gate"),
        gate_started_ms: row.try_get("gate_started_ms")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
    })
}

fn dd_from(row: &AnyRow) -> std::result::Result<DeploymentDeviceRow, sqlx::Error> {
    Ok(DeploymentDeviceRow {
        deployment_id: row.try_get("deployment_id")?,
        device_id: row.try_get("device_id")?,
        wave: row.try_get("wave")?,
        previous_model_id: row.try_get("previous_model_id")?,
        state: row.try_get("state")?,
        command_id: row.try_get("command_id")?,
        reason: row.try_get("reason")?,
        sent_at_ms: row.try_get("sent_at_ms")?,
        activated_at_ms: row.try_get("activated_at_ms")?,
        load_ms: row.try_get("load_ms")?,
    })
}

fn telemetry_from(row: &AnyRow) -> std::result::Result<TelemetryRow, sqlx::Error> {
    Ok(TelemetryRow {
        device_id: row.try_get("device_id")?,
        resolution_ms: row.try_get("resolution_ms")?,
        window_start_ms: row.try_get("window_start_ms")?,
        window_ms: row.try_get("window_ms")?,
        model_id: row.try_get("model_id")?,
        deployment_id: row.try_get("deployment_id")?,
        requests: row.try_get("requests")?,
        errors: row.try_get("errors")?,
        rejected: row.try_get("rejected")?,
        p50_ms: row.try_get("p50_ms")?,
        p90_ms: row.try_get("p90_ms")?,
        p99_ms: row.try_get("p99_ms")?,
        rss_bytes: row.try_get("rss_bytes")?,
        temperature_c: row.try_get("temperature_c")?,
        clock_mhz: row.try_get("clock_mhz")?,
        throttled: row.try_get("throttled")?,
        reading_source: row.try_get("reading_source")?,
        dropped_windows: row.try_get("dropped_windows")?,
        stats: opt_json(row, "stats"),
    })
}

fn alert_from(row: &AnyRow) -> std::result::Result<AlertRow, sqlx::Error> {
    Ok(AlertRow {
        id: row.try_get("id")?,
        device_id: row.try_get("device_id")?,
        class: row.try_get("class")?,
        model_id: row.try_get("model_id")?,
        deployment_id: row.try_get("deployment_id")?,
        rule: row.try_get("rule_name")?,
        message: row.try_get("message")?,
        figures: json_col(row, "figures"),
        state: row.try_get("state")?,
        suggestion_id: row.try_get("suggestion_id")?,
        opened_at_ms: row.try_get("opened_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        resolved_at_ms: row.try_get("resolved_at_ms")?,
    })
}

fn suggestion_from(row: &AnyRow) -> std::result::Result<SuggestionRow, sqlx::Error> {
    Ok(SuggestionRow {
        id: row.try_get("id")?,
        alert_id: row.try_get("alert_id")?,
        class: row.try_get("class")?,
        model_id: row.try_get("model_id")?,
        reason: row.try_get("reason")?,
        request: json_col(row, "request"),
        pipeline_id: row.try_get("pipeline_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

macro_rules! decode_all {
    ($rows:expr, $f:expr, $op:literal) => {
        $rows.iter().map($f).collect::<std::result::Result<Vec<_>, _>>().map_err(q($op))
    };
}

impl Db {
    /// Creates a deployment and its devices (wave, previous model) in one transaction;
    /// `false` if the id existed (client ids make creation idempotent).
    pub async fn create_deployment(
        &self,
        id: &str,
        request: &serde_json::Value,
        model_id: &str,
        devices: &[(String, i64, Option<String>)],
        now_ms: i64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(q("begin deployment"))?;
        let n = sqlx::query(
            "INSERT INTO deployments (id, request, model_id, state, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, 'canary', $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(request.to_string())
        .bind(model_id)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("insert deployment"))?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        for (device, wave, previous) in devices {
            sqlx::query(
                "INSERT INTO deployment_devices (deployment_id, device_id, wave, previous_model_id, \
                 state, updated_at_ms) VALUES ($1, $2, $3, $4, 'pending', $5)",
            )
            .bind(id)
            .bind(device)
            .bind(*wave)
            .bind(previous.as_deref())
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("insert deployment device"))?;
        }
        tx.commit().await.map_err(q("commit deployment"))?;
        Ok(true)
    }

    /// One deployment.
    pub async fn deployment(&self, id: &str) -> Result<Option<DeploymentRow>> {
        let row = sqlx::query(&format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get deployment"))?;
        row.map(|r| deployment_from(&r)).transpose().map_err(q("decode deployment"))
    }

    /// Deployments, newest first; with `active`, only those still moving.
    pub async fn deployments(&self, active: bool) -> Result<Vec<DeploymentRow>> {
        let filter =
            if active { "WHERE state IN ('canary', 'rolling', 'rolling_back')" } else { "" };
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLS} FROM deployments {filter} ORDER BY created_at_ms DESC, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("list deployments"))?;
        decode_all!(rows, deployment_from, "decode deployment")
    }

    /// Moves an unfinished deployment to `state` with a reason; `false` if it had ended.
    pub async fn set_deployment_state(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<bool> {
        let finished = matches!(state, "done" | "rolled_back" | "failed").then_some(now_ms);
        let n = sqlx::query(
            "UPDATE deployments SET state = $1, reason = $2, updated_at_ms = $3, finished_at_ms = $4 \
             WHERE id = $5 AND state IN ('canary', 'rolling', 'rolling_back')",
        )
        .bind(state)
        .bind(reason)
        .bind(now_ms)
        .bind(finished)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("update deployment"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// Starts a rollback of a deployment that is moving or done; `false` otherwise.
    pub async fn begin_rollback(&self, id: &str, reason: &str, now_ms: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE deployments SET state = 'rolling_back', reason = $1, updated_at_ms = $2, \
             finished_at_ms = NULL WHERE id = $3 AND state IN ('canary', 'rolling', 'done')",
        )
        .bind(reason)
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("begin rollback"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// Records the gate's evaluation (and when its window opened).
    pub async fn set_gate(
        &self,
        id: &str,
        started_ms: Option<i64>,
        gate: &serde_json::Value,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deployments SET gate_started_ms = $1, gate = $2, reason = $3, updated_at_ms = $4 \
             WHERE id = $5",
        )
        .bind(started_ms)
        .bind(gate.to_string())
        .bind(reason)
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("update gate"))?;
        Ok(())
    }

    /// The devices of a deployment, canary first.
    pub async fn deployment_devices(&self, id: &str) -> Result<Vec<DeploymentDeviceRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {DD_COLS} FROM deployment_devices WHERE deployment_id = $1 ORDER BY wave, device_id"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("list deployment devices"))?;
        decode_all!(rows, dd_from, "decode deployment device")
    }

    /// The deployment device a command was sent for.
    pub async fn deployment_device_by_command(
        &self,
        command_id: &str,
    ) -> Result<Option<DeploymentDeviceRow>> {
        let row =
            sqlx::query(&format!("SELECT {DD_COLS} FROM deployment_devices WHERE command_id = $1"))
                .bind(command_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(q("deployment device by command"))?;
        row.map(|r| dd_from(&r)).transpose().map_err(q("decode deployment device"))
    }

    /// Records a command sent to a deployment's device (`activating` or `rolling_back`).
    pub async fn mark_sent(
        &self,
        deployment: &str,
        device: &str,
        state: &str,
        command_id: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deployment_devices SET state = $1, command_id = $2, sent_at_ms = $3, \
             updated_at_ms = $4 WHERE deployment_id = $5 AND device_id = $6",
        )
        .bind(state)
        .bind(command_id)
        .bind(now_ms)
        .bind(now_ms)
        .bind(deployment)
        .bind(device)
        .execute(&self.pool)
        .await
        .map_err(q("mark activation sent"))?;
        Ok(())
    }

    /// Re-stamps a command's send time (a re-send of the same command).
    pub async fn touch_sent(&self, deployment: &str, device: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE deployment_devices SET sent_at_ms = $1 WHERE deployment_id = $2 AND device_id = $3",
        )
        .bind(now_ms)
        .bind(deployment)
        .bind(device)
        .execute(&self.pool)
        .await
        .map_err(q("touch activation"))?;
        Ok(())
    }

    /// Moves a deployment's device to `state`, with a reason and, when it became active, the
    /// time and load time.
    pub async fn set_device_state(
        &self,
        deployment: &str,
        device: &str,
        state: &str,
        reason: Option<&str>,
        activated: Option<(i64, f64)>,
        now_ms: i64,
    ) -> Result<()> {
        let load = f64_literal(activated.map(|a| a.1));
        sqlx::query(&format!(
            "UPDATE deployment_devices SET state = $1, reason = COALESCE($2, reason), \
             activated_at_ms = COALESCE($3, activated_at_ms), load_ms = COALESCE({load}, load_ms), \
             updated_at_ms = $4 WHERE deployment_id = $5 AND device_id = $6"
        ))
        .bind(state)
        .bind(reason)
        .bind(activated.map(|a| a.0))
        .bind(now_ms)
        .bind(deployment)
        .bind(device)
        .execute(&self.pool)
        .await
        .map_err(q("update deployment device"))?;
        Ok(())
    }

    /// Desired and active model of every device that ever had one.
    pub async fn device_models(&self) -> Result<Vec<DeviceModelRow>> {
        let rows = sqlx::query(
            "SELECT device_id, desired_model_id, active_model_id, deployment_id, updated_at_ms \
             FROM device_models ORDER BY device_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("list device models"))?;
        decode_all!(
            rows,
            |r: &AnyRow| -> std::result::Result<DeviceModelRow, sqlx::Error> {
                Ok(DeviceModelRow {
                    device_id: r.try_get("device_id")?,
                    desired_model_id: r.try_get("desired_model_id")?,
                    active_model_id: r.try_get("active_model_id")?,
                    deployment_id: r.try_get("deployment_id")?,
                    updated_at_ms: r.try_get("updated_at_ms")?,
                })
            },
            "decode device model"
        )
    }

    /// Sets a device's desired model (`desired`) or the one it reported active (`active`).
    pub async fn set_device_model(
        &self,
        device: &str,
        desired: Option<Option<&str>>,
        active: Option<Option<&str>>,
        deployment: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO device_models (device_id, desired_model_id, active_model_id, deployment_id, \
             updated_at_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id) DO NOTHING",
        )
        .bind(device)
        .bind(desired.flatten())
        .bind(active.flatten())
        .bind(deployment)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("insert device model"))?;
        if let Some(d) = desired {
            sqlx::query(
                "UPDATE device_models SET desired_model_id = $1, deployment_id = $2, \
                 updated_at_ms = $3 WHERE device_id = $4",
            )
            .bind(d)
            .bind(deployment)
            .bind(now_ms)
            .bind(device)
            .execute(&self.pool)
            .await
            .map_err(q("set desired model"))?;
        }
        if let Some(a) = active {
            sqlx::query(
                "UPDATE device_models SET active_model_id = $1, updated_at_ms = $2 WHERE device_id = $3",
            )
            .bind(a)
            .bind(now_ms)
            .bind(device)
            .execute(&self.pool)
            .await
            .map_err(q("set active model"))?;
        }
        Ok(())
    }

    /// Stores a telemetry row unless one exists for the same device, resolution and start.
    pub async fn insert_telemetry(&self, t: &TelemetryRow) -> Result<bool> {
        let query = format!(
            "INSERT INTO telemetry ({TELEMETRY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             {}, {}, {}, $10, {}, $11, $12, $13, $14, $15) \
             ON CONFLICT (device_id, resolution_ms, window_start_ms) DO NOTHING",
            f64_literal(t.p50_ms),
            f64_literal(t.p90_ms),
            f64_literal(t.p99_ms),
            f64_literal(t.temperature_c),
        );
        let n = sqlx::query(&query)
            .bind(&t.device_id)
            .bind(t.resolution_ms)
            .bind(t.window_start_ms)
            .bind(t.window_ms)
            .bind(t.model_id.as_deref())
            .bind(t.deployment_id.as_deref())
            .bind(t.requests)
            .bind(t.errors)
            .bind(t.rejected)
            .bind(t.rss_bytes)
            .bind(t.clock_mhz)
            .bind(t.throttled)
            .bind(t.reading_source.as_deref())
            .bind(t.dropped_windows)
            .bind(t.stats.as_ref().map(|s| s.to_string()))
            .execute(&self.pool)
            .await
            .map_err(q("insert telemetry"))?
            .rows_affected();
        Ok(n > 0)
    }

    /// A device's telemetry since `since_ms`, oldest first, every resolution (raw and
    /// downsampled), at most `limit` rows (the newest).
    pub async fn telemetry(
        &self,
        device: &str,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<TelemetryRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TELEMETRY_COLS} FROM telemetry WHERE device_id = $1 AND window_start_ms >= $2 \
             ORDER BY window_start_ms DESC, resolution_ms LIMIT $3"
        ))
        .bind(device)
        .bind(since_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("get telemetry"))?;
        let mut out = decode_all!(rows, telemetry_from, "decode telemetry")?;
        out.reverse();
        Ok(out)
    }

    /// Raw windows (`resolution_ms` below `under_ms`) that started before `before_ms`.
    pub async fn raw_telemetry_before(
        &self,
        under_ms: i64,
        before_ms: i64,
    ) -> Result<Vec<TelemetryRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TELEMETRY_COLS} FROM telemetry WHERE resolution_ms < $1 AND window_start_ms < $2 \
             ORDER BY device_id, window_start_ms"
        ))
        .bind(under_ms)
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(q("raw telemetry"))?;
        decode_all!(rows, telemetry_from, "decode telemetry")
    }

    /// Deletes rows of resolution below `under_ms` that started before `before_ms`.
    pub async fn delete_raw_telemetry(&self, under_ms: i64, before_ms: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM telemetry WHERE resolution_ms < $1 AND window_start_ms < $2")
            .bind(under_ms)
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(q("delete raw telemetry"))?
            .rows_affected())
    }

    /// Stores (replacing) a model's reference input statistics.
    pub async fn put_reference(
        &self,
        model_id: &str,
        source: &str,
        stats: &serde_json::Value,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query("DELETE FROM reference_stats WHERE model_id = $1")
            .bind(model_id)
            .execute(&self.pool)
            .await
            .map_err(q("replace reference"))?;
        sqlx::query(
            "INSERT INTO reference_stats (model_id, source, stats, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(model_id)
        .bind(source)
        .bind(stats.to_string())
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("insert reference"))?;
        Ok(())
    }

    /// A model's reference statistics and where they came from.
    pub async fn reference(&self, model_id: &str) -> Result<Option<(String, serde_json::Value)>> {
        let row = sqlx::query("SELECT source, stats FROM reference_stats WHERE model_id = $1")
            .bind(model_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get reference"))?;
        row.map(|r| Ok((r.try_get("source")?, json_col(&r, "stats"))))
            .transpose()
            .map_err(q("decode reference"))
    }

    /// The open alert of a device for a rule, if any.
    pub async fn open_alert(&self, device: &str, rule: &str) -> Result<Option<AlertRow>> {
        let row = sqlx::query(&format!(
            "SELECT {ALERT_COLS} FROM alerts WHERE device_id = $1 AND rule_name = $2 AND state = 'open'"
        ))
        .bind(device)
        .bind(rule)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("get open alert"))?;
        row.map(|r| alert_from(&r)).transpose().map_err(q("decode alert"))
    }

    /// Inserts an alert.
    pub async fn insert_alert(&self, a: &AlertRow) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO alerts ({ALERT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(&a.id)
        .bind(&a.device_id)
        .bind(a.class.as_deref())
        .bind(a.model_id.as_deref())
        .bind(a.deployment_id.as_deref())
        .bind(&a.rule)
        .bind(&a.message)
        .bind(a.figures.to_string())
        .bind(&a.state)
        .bind(a.suggestion_id.as_deref())
        .bind(a.opened_at_ms)
        .bind(a.updated_at_ms)
        .bind(a.resolved_at_ms)
        .execute(&self.pool)
        .await
        .map_err(q("insert alert"))?;
        Ok(())
    }

    /// Refreshes an open alert's message and figures.
    pub async fn refresh_alert(
        &self,
        id: &str,
        message: &str,
        figures: &serde_json::Value,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE alerts SET message = $1, figures = $2, updated_at_ms = $3 WHERE id = $4",
        )
        .bind(message)
        .bind(figures.to_string())
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("refresh alert"))?;
        Ok(())
    }

    /// Resolves the open alert of a device for a rule; `true` if there was one.
    pub async fn resolve_alert(&self, device: &str, rule: &str, now_ms: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE alerts SET state = 'resolved', resolved_at_ms = $1, updated_at_ms = $2 \
             WHERE device_id = $3 AND rule_name = $4 AND state = 'open'",
        )
        .bind(now_ms)
        .bind(now_ms)
        .bind(device)
        .bind(rule)
        .execute(&self.pool)
        .await
        .map_err(q("resolve alert"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// Alerts, newest first; with `open`, only open ones.
    pub async fn alerts(&self, open: bool) -> Result<Vec<AlertRow>> {
        let filter = if open { "WHERE state = 'open'" } else { "" };
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLS} FROM alerts {filter} ORDER BY opened_at_ms DESC, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("list alerts"))?;
        decode_all!(rows, alert_from, "decode alert")
    }

    /// Inserts a suggestion and links it from its alert.
    pub async fn insert_suggestion(&self, s: &SuggestionRow) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO suggestions ({SUGGESTION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&s.id)
        .bind(&s.alert_id)
        .bind(s.class.as_deref())
        .bind(s.model_id.as_deref())
        .bind(&s.reason)
        .bind(s.request.to_string())
        .bind(s.pipeline_id.as_deref())
        .bind(s.created_at_ms)
        .execute(&self.pool)
        .await
        .map_err(q("insert suggestion"))?;
        sqlx::query("UPDATE alerts SET suggestion_id = $1 WHERE id = $2")
            .bind(&s.id)
            .bind(&s.alert_id)
            .execute(&self.pool)
            .await
            .map_err(q("link suggestion"))?;
        Ok(())
    }

    /// Suggestions, newest first.
    pub async fn suggestions(&self) -> Result<Vec<SuggestionRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUGGESTION_COLS} FROM suggestions ORDER BY created_at_ms DESC, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("list suggestions"))?;
        decode_all!(rows, suggestion_from, "decode suggestion")
    }

    /// One suggestion.
    pub async fn suggestion(&self, id: &str) -> Result<Option<SuggestionRow>> {
        let row = sqlx::query(&format!("SELECT {SUGGESTION_COLS} FROM suggestions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get suggestion"))?;
        row.map(|r| suggestion_from(&r)).transpose().map_err(q("decode suggestion"))
    }

    /// Records the pipeline started from a suggestion.
    pub async fn set_suggestion_pipeline(&self, id: &str, pipeline: &str) -> Result<()> {
        sqlx::query("UPDATE suggestions SET pipeline_id = $1 WHERE id = $2")
            .bind(pipeline)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("link suggestion pipeline"))?;
        Ok(())
    }
}
