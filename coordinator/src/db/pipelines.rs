//! Pipelines, their candidates and model features (see `migrations/0003_pipelines.sql`).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, Result, json_col, q};

/// A stored pipeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineRow {
    /// Pipeline id.
    pub id: String,
    /// The request as given.
    pub request: serde_json::Value,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Stage reached.
    pub stage: String,
    /// Why it failed.
    pub error: Option<String>,
    /// The result (`PipelineResult`), once there is one.
    pub result: Option<serde_json::Value>,
    /// Creation, Unix ms.
    pub created_at_ms: i64,
    /// Last change, Unix ms.
    pub updated_at_ms: i64,
    /// End, Unix ms.
    pub finished_at_ms: Option<i64>,
}

/// One candidate of one class, as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CandidateRecord {
    /// `{pipeline}-{class}-{seq}`.
    pub id: String,
    /// Pipeline.
    pub pipeline_id: String,
    /// Device class.
    pub class: String,
    /// Position in the class's grid.
    pub seq: i64,
    /// Method name.
    pub method: String,
    /// Settings (JSON).
    pub settings: serde_json::Value,
    /// Runtime (`tract`).
    pub runtime: String,
    /// Precision (`f32`).
    pub precision: String,
    /// (parent, data, method, settings) digest, for reuse across pipelines.
    pub cache_key: String,
    /// Registered model, once made.
    pub model_id: Option<String>,
    /// `pending`, `valid`, `rejected`, `failed`, `measured`, `unmeasured`, `skipped`.
    pub status: String,
    /// Why (rejected, failed, skipped).
    pub note: Option<String>,
    /// Validation figures and sizes (JSON).
    pub validation: Option<serde_json::Value>,
    /// Predicted latency before measurement, ms.
    pub predicted_ms: Option<f64>,
}

const PIPELINE_COLS: &str =
    "id, request, state, stage, error, result, created_at_ms, updated_at_ms, finished_at_ms";
const CANDIDATE_COLS: &str = "id, pipeline_id, class, seq, method, settings, runtime, precision_name, \
    cache_key, model_id, status, note, validation, predicted_ms";

fn pipeline_from(row: &AnyRow) -> std::result::Result<PipelineRow, sqlx::Error> {
    Ok(PipelineRow {
        id: row.try_get("id")?,
        request: json_col(row, "request"),
        state: row.try_get("state")?,
        stage: row.try_get("stage")?,
        error: row.try_get("error")?,
        result: row
            .try_get::<Option<String>, _>("result")?
            .and_then(|s| serde_json::from_str(&s).ok()),
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
    })
}

fn candidate_from(row: &AnyRow) -> std::result::Result<CandidateRecord, sqlx::Error> {
    Ok(CandidateRecord {
        id: row.try_get("id")?,
        pipeline_id: row.try_get("pipeline_id")?,
        class: row.try_get("class")?,
        seq: row.try_get("seq")?,
        method: row.try_get("method")?,
        settings: json_col(row, "settings"),
        runtime: row.try_get("runtime")?,
        precision: row.try_get("precision_name")?,
        cache_key: row.try_get("cache_key")?,
        model_id: row.try_get("model_id")?,
        status: row.try_get("status")?,
        note: row.try_get("note")?,
        validation: row
            .try_get::<Option<String>, _>("validation")?
            .and_then(|s| serde_json::from_str(&s).ok()),
        predicted_ms: row.try_get("predicted_ms")?,
    })
}

impl Db {
    /// Creates a pipeline; `false` if the id existed (client ids make creation idempotent).
    pub async fn create_pipeline(
        &self,
        id: &str,
        request: &serde_json::Value,
        now_ms: i64,
    ) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO pipelines (id, request, state, stage, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, 'queued', 'parent', $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(request.to_string())
        .bind(now_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("insert pipeline"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// One pipeline.
    pub async fn pipeline(&self, id: &str) -> Result<Option<PipelineRow>> {
        let row = sqlx::query(&format!("SELECT {PIPELINE_COLS} FROM pipelines WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get pipeline"))?;
        row.map(|r| pipeline_from(&r)).transpose().map_err(q("decode pipeline"))
    }

    /// Pipelines, newest first; only unfinished ones (`queued`, `running`) with `active`.
    pub async fn pipelines(&self, active: bool) -> Result<Vec<PipelineRow>> {
        let filter = if active { "WHERE state IN ('queued', 'running')" } else { "" };
        let rows = sqlx::query(&format!(
            "SELECT {PIPELINE_COLS} FROM pipelines {filter} ORDER BY created_at_ms DESC, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("list pipelines"))?;
        rows.iter()
            .map(pipeline_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("decode pipeline"))
    }

    /// Moves an unfinished pipeline to `state`/`stage` (with its result and error so far).
    /// Returns `false` when it had already ended (e.g. cancelled meanwhile).
    pub async fn update_pipeline(
        &self,
        id: &str,
        state: &str,
        stage: &str,
        error: Option<&str>,
        result: Option<&serde_json::Value>,
        now_ms: i64,
    ) -> Result<bool> {
        let finished = matches!(state, "done" | "failed" | "cancelled").then_some(now_ms);
        let n = sqlx::query(
            "UPDATE pipelines SET state = $1, stage = $2, error = $3, result = COALESCE($4, result), \
             updated_at_ms = $5, finished_at_ms = $6 WHERE id = $7 AND state IN ('queued', 'running')",
        )
        .bind(state)
        .bind(stage)
        .bind(error)
        .bind(result.map(|r| r.to_string()))
        .bind(now_ms)
        .bind(finished)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("update pipeline"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// Inserts a candidate unless its id exists.
    pub async fn insert_candidate(&self, c: &CandidateRecord, now_ms: i64) -> Result<()> {
        // A NULL double is written as a literal: sqlx's Any driver sends an untyped NULL that
        // PostgreSQL refuses for a DOUBLE PRECISION parameter.
        let predicted = if c.predicted_ms.is_some() { "$14" } else { "NULL" };
        let now = if c.predicted_ms.is_some() { "$15" } else { "$14" };
        let query = format!(
            "INSERT INTO pipeline_candidates ({CANDIDATE_COLS}, updated_at_ms) VALUES ($1, $2, $3, $4, \
             $5, $6, $7, $8, $9, $10, $11, $12, $13, {predicted}, {now}) ON CONFLICT (id) DO NOTHING"
        );
        let mut q_ = sqlx::query(&query)
            .bind(&c.id)
            .bind(&c.pipeline_id)
            .bind(&c.class)
            .bind(c.seq)
            .bind(&c.method)
            .bind(c.settings.to_string())
            .bind(&c.runtime)
            .bind(&c.precision)
            .bind(&c.cache_key)
            .bind(&c.model_id)
            .bind(&c.status)
            .bind(&c.note)
            .bind(c.validation.as_ref().map(|v| v.to_string()));
        if let Some(p) = c.predicted_ms {
            q_ = q_.bind(p);
        }
        q_.bind(now_ms).execute(&self.pool).await.map_err(q("insert candidate"))?;
        Ok(())
    }

    /// Updates a candidate's outcome.
    pub async fn update_candidate(&self, c: &CandidateRecord, now_ms: i64) -> Result<()> {
        // See `insert_candidate` for the literal NULL.
        let query = if c.predicted_ms.is_some() {
            "UPDATE pipeline_candidates SET runtime = $1, precision_name = $2, model_id = $3, status = $4, \
             note = $5, validation = $6, updated_at_ms = $7, predicted_ms = $8 WHERE id = $9"
        } else {
            "UPDATE pipeline_candidates SET runtime = $1, precision_name = $2, model_id = $3, status = $4, \
             note = $5, validation = $6, updated_at_ms = $7, predicted_ms = NULL WHERE id = $8"
        };
        let mut q_ = sqlx::query(query)
            .bind(&c.runtime)
            .bind(&c.precision)
            .bind(&c.model_id)
            .bind(&c.status)
            .bind(&c.note)
            .bind(c.validation.as_ref().map(|v| v.to_string()))
            .bind(now_ms);
        if let Some(p) = c.predicted_ms {
            q_ = q_.bind(p);
        }
        q_.bind(&c.id).execute(&self.pool).await.map_err(q("update candidate"))?;
        Ok(())
    }

    /// Candidates of a pipeline, by class and sequence.
    pub async fn pipeline_candidates(&self, pipeline_id: &str) -> Result<Vec<CandidateRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {CANDIDATE_COLS} FROM pipeline_candidates WHERE pipeline_id = $1 ORDER BY class, seq"
        ))
        .bind(pipeline_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("pipeline candidates"))?;
        rows.iter()
            .map(candidate_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("decode candidate"))
    }

    /// A candidate made earlier (by any pipeline) with the same cache key and a model.
    pub async fn candidate_by_key(&self, cache_key: &str) -> Result<Option<CandidateRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {CANDIDATE_COLS} FROM pipeline_candidates WHERE cache_key = $1 \
             AND model_id IS NOT NULL AND validation IS NOT NULL ORDER BY updated_at_ms LIMIT 1"
        ))
        .bind(cache_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("candidate by key"))?;
        row.map(|r| candidate_from(&r)).transpose().map_err(q("decode candidate"))
    }

    /// Stores a model's graph features (first write wins).
    pub async fn put_features(&self, model_id: &str, features: &serde_json::Value) -> Result<()> {
        sqlx::query(
            "INSERT INTO model_features (model_id, features) VALUES ($1, $2) \
             ON CONFLICT (model_id) DO NOTHING",
        )
        .bind(model_id)
        .bind(features.to_string())
        .execute(&self.pool)
        .await
        .map_err(q("put features"))?;
        Ok(())
    }

    /// Every stored result of a device profile whose model has features, oldest first, with
    /// those features: the fleet's history the latency predictor learns from. Results that
    /// arrived at or after `before_ms` are left out.
    pub async fn measured_with_features(
        &self,
        profile: &str,
        before_ms: i64,
    ) -> Result<Vec<(String, serde_json::Value, super::ResultRow)>> {
        let cols =
            super::RESULT_COLS.split(", ").map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", ");
        let rows = sqlx::query(&format!(
            "SELECT {cols}, f.features AS features FROM results r \
             JOIN model_features f ON f.model_id = r.model_id \
             WHERE r.profile = $1 AND r.received_at_ms < $2 ORDER BY r.received_at_ms"
        ))
        .bind(profile)
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(q("measured with features"))?;
        rows.iter()
            .map(|r| {
                let result = super::result_from(r)?;
                Ok((result.model_id.clone(), json_col(r, "features"), result))
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(q("decode measurement"))
    }
}

impl Db {
    /// A model's stored graph features.
    pub async fn features(&self, model_id: &str) -> Result<Option<serde_json::Value>> {
        let row = sqlx::query("SELECT features FROM model_features WHERE model_id = $1")
            .bind(model_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get features"))?;
        Ok(row.map(|r| json_col(&r, "features")))
    }
}
