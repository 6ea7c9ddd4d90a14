//! Imported measurements (`0006_imported_results.sql`) and a model's agent results.

use sqlx::Row as _;

use super::{Db, RESULT_COLS, Result, ResultRow, q, result_from};

/// One imported measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportedRow {
    /// Digest of model, device, framework, runtime, dtype and batch.
    pub id: String,
    /// The registered model it measures.
    pub model_id: String,
    /// Where it comes from (file, device, framework, date), shown with every figure.
    pub source: String,
    /// The row.
    pub measurement: serde_json::Value,
    /// When it was imported, Unix ms.
    pub imported_at_ms: i64,
}

impl Db {
    /// Stores an imported measurement; the same id again replaces it.
    pub async fn put_imported(&self, r: &ImportedRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO imported_results (id, model_id, source, measurement, imported_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET source = excluded.source, \
             measurement = excluded.measurement, imported_at_ms = excluded.imported_at_ms",
        )
        .bind(&r.id)
        .bind(&r.model_id)
        .bind(&r.source)
        .bind(r.measurement.to_string())
        .bind(r.imported_at_ms)
        .execute(&self.pool)
        .await
        .map_err(q("import result"))?;
        Ok(())
    }

    /// The imported measurements of a model, oldest first.
    pub async fn imported_for_model(&self, model_id: &str) -> Result<Vec<ImportedRow>> {
        let rows = sqlx::query(
            "SELECT id, model_id, source, measurement, imported_at_ms FROM imported_results \
             WHERE model_id = $1 ORDER BY imported_at_ms, id",
        )
        .bind(model_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("imported results"))?;
        rows.iter()
            .map(|r| {
                Ok(ImportedRow {
                    id: r.try_get("id")?,
                    model_id: r.try_get("model_id")?,
                    source: r.try_get("source")?,
                    measurement: serde_json::from_str(&r.try_get::<String, _>("measurement")?)
                        .unwrap_or_default(),
                    imported_at_ms: r.try_get("imported_at_ms")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(q("decode imported result"))
    }

    /// Every agent result of a model, newest first.
    pub async fn model_results(&self, model_id: &str) -> Result<Vec<ResultRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {RESULT_COLS} FROM results WHERE model_id = $1 ORDER BY received_at_ms DESC"
        ))
        .bind(model_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("model results"))?;
        rows.iter()
            .map(result_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("decode result"))
    }
}
