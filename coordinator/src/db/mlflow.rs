//! The MLflow mirror's cursor and retry queue (`0007_mlflow.sql`).

use sqlx::Row as _;

use super::{Db, Result, q};

/// How far one record has been written to MLflow.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlflowSyncRow {
    /// `pipeline`, `campaign` or `deployment`.
    pub kind: String,
    /// The record's id.
    pub ref_id: String,
    /// The record's version written completely (0: never).
    pub synced_version: i64,
    /// Failed attempts since the last success.
    pub attempts: i64,
    /// No automatic attempt before this time, Unix ms.
    pub next_attempt_ms: i64,
    /// The last failure.
    pub last_error: Option<String>,
    /// What MLflow calls it: run ids, registered versions (JSON).
    pub remote: Option<serde_json::Value>,
    /// Last change of this row, Unix ms.
    pub updated_at_ms: i64,
}

impl Db {
    /// Every pipeline's id, creation time and last change (the mirror's cheap scan: no request
    /// or result is read), oldest first.
    pub async fn pipeline_versions(&self) -> Result<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT id, created_at_ms, updated_at_ms FROM pipelines ORDER BY created_at_ms, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("pipeline versions"))?;
        rows.iter()
            .map(|r| {
                Ok((r.try_get("id")?, r.try_get("created_at_ms")?, r.try_get("updated_at_ms")?))
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(q("decode pipeline version"))
    }

    /// Every mirror row.
    pub async fn mlflow_rows(&self) -> Result<Vec<MlflowSyncRow>> {
        let rows = sqlx::query(
            "SELECT kind, ref_id, synced_version, attempts, next_attempt_ms, last_error, remote, \
             updated_at_ms FROM mlflow_sync ORDER BY kind, ref_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("mlflow rows"))?;
        rows.iter()
            .map(|r| {
                Ok(MlflowSyncRow {
                    kind: r.try_get("kind")?,
                    ref_id: r.try_get("ref_id")?,
                    synced_version: r.try_get("synced_version")?,
                    attempts: r.try_get("attempts")?,
                    next_attempt_ms: r.try_get("next_attempt_ms")?,
                    last_error: r.try_get("last_error")?,
                    remote: r
                        .try_get::<Option<String>, _>("remote")?
                        .and_then(|s| serde_json::from_str(&s).ok()),
                    updated_at_ms: r.try_get("updated_at_ms")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(q("decode mlflow row"))
    }

    /// Records a complete write of `version` (and what MLflow calls the record).
    pub async fn mlflow_synced(
        &self,
        kind: &str,
        ref_id: &str,
        version: i64,
        remote: &serde_json::Value,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO mlflow_sync (kind, ref_id, synced_version, attempts, next_attempt_ms, \
             last_error, remote, updated_at_ms) VALUES ($1, $2, $3, 0, 0, NULL, $4, $5) \
             ON CONFLICT (kind, ref_id) DO UPDATE SET synced_version = excluded.synced_version, \
             attempts = 0, next_attempt_ms = 0, last_error = NULL, remote = excluded.remote, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(kind)
        .bind(ref_id)
        .bind(version)
        .bind(remote.to_string())
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("mlflow synced"))?;
        Ok(())
    }

    /// Records a failed attempt: the error and when to try again (the synced version and
    /// remote ids stay as they were).
    pub async fn mlflow_failed(
        &self,
        kind: &str,
        ref_id: &str,
        error: &str,
        next_attempt_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO mlflow_sync (kind, ref_id, synced_version, attempts, next_attempt_ms, \
             last_error, remote, updated_at_ms) VALUES ($1, $2, 0, 1, $3, $4, NULL, $5) \
             ON CONFLICT (kind, ref_id) DO UPDATE SET attempts = mlflow_sync.attempts + 1, \
             next_attempt_ms = excluded.next_attempt_ms, last_error = excluded.last_error, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(kind)
        .bind(ref_id)
        .bind(next_attempt_ms)
        .bind(error)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("mlflow failed"))?;
        Ok(())
    }
}
