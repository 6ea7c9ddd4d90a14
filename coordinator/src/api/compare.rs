//! `/api/v1/imported-results` (measurements made elsewhere, e.g. a GPU server's) and
//! `/api/v1/compare` (CPU devices and the GPU side by side for one model; [`crate::compare`]).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use sha2::Digest as _;

use super::{ApiError, ApiResult, AppState};
use crate::compare::{Assumptions, DEFAULT_GPU_HOURLY_USD, DEFAULT_GPU_PRICE_SOURCE, GpuFile};
use crate::db::imported::ImportedRow;

#[derive(Deserialize)]
pub(super) struct ImportQuery {
    /// The registered model the file measures (id, name or digest prefix).
    model: String,
    /// The file's name, for the provenance line.
    file: Option<String>,
}

/// `POST /api/v1/imported-results?model=M&file=F` with a GPU measurement file as the body.
pub(super) async fn import(
    State(s): State<AppState>,
    Query(q): Query<ImportQuery>,
    Json(file): Json<GpuFile>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let model =
        s.db.find_model(&q.model)
            .await?
            .ok_or_else(|| ApiError::BadRequest(format!("no model `{}`", q.model)))?;
    file.validate().map_err(ApiError::BadRequest)?;
    let name = q.file.unwrap_or_else(|| "an uploaded file".into());
    if name.len() > 200 {
        return Err(ApiError::BadRequest("the file name is over 200 characters".into()));
    }
    let source = file.source(&name);
    let now = hone_common::clock::now_ms() as i64;
    let mut ids = Vec::new();
    for row in &file.rows {
        let runtime = row.runtime.clone().unwrap_or_default();
        let mut h = sha2::Sha256::new();
        for part in [&model.id, &file.device, &file.framework, &runtime, &row.dtype] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(row.batch.to_le_bytes());
        let id = format!("imp-{}", &hex::encode(h.finalize())[..24]);
        let measurement = serde_json::json!({
            "model": file.model, "device": file.device, "framework": file.framework,
            "measured": file.measured, "power": file.power, "row": row,
        });
        s.db.put_imported(&ImportedRow {
            id: id.clone(),
            model_id: model.id.clone(),
            source: source.clone(),
            measurement,
            imported_at_ms: now,
        })
        .await?;
        ids.push(id);
    }
    Ok((
        StatusCode::CREATED,
        Json(
            serde_json::json!({"model": model.id, "imported": ids.len(), "ids": ids, "source": source}),
        ),
    ))
}

#[derive(Deserialize)]
pub(super) struct CompareQuery {
    model: String,
    gpu_hourly_usd: Option<f64>,
    lifetime_years: Option<f64>,
}

/// `GET /api/v1/compare?model=M[&gpu_hourly_usd=X][&lifetime_years=Y]`.
pub(super) async fn compare(
    State(s): State<AppState>,
    Query(q): Query<CompareQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let model =
        s.db.find_model(&q.model)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no model `{}`", q.model)))?;
    let positive = |v: Option<f64>, name: &str| match v {
        Some(x) if !(x.is_finite() && x > 0.0) => {
            Err(ApiError::BadRequest(format!("{name} must be a positive number")))
        }
        _ => Ok(()),
    };
    positive(q.gpu_hourly_usd, "gpu_hourly_usd")?;
    positive(q.lifetime_years, "lifetime_years")?;
    let assumptions = Assumptions {
        gpu_hourly_usd: q.gpu_hourly_usd.unwrap_or(DEFAULT_GPU_HOURLY_USD),
        gpu_price_source: if q.gpu_hourly_usd.is_some() {
            "given".into()
        } else {
            DEFAULT_GPU_PRICE_SOURCE.into()
        },
        cpu_lifetime_years: q.lifetime_years.unwrap_or(3.0),
    };
    let cpu = s.db.model_results(&model.id).await?;
    let gpu = s.db.imported_for_model(&model.id).await?;
    let lines = crate::compare::compare(&cpu, &gpu, &assumptions);
    Ok(Json(serde_json::json!({
        "model": model.id,
        "model_name": model.name,
        "assumptions": assumptions,
        "cost_model": "CPU: the board's price (its profile's unit_cost_usd) spread over the lifetime at full use, energy excluded; GPU: the hourly price over the measured throughput. Joules: CPU from the profile's active board power times the measured latency; GPU as measured.",
        "lines": lines,
    })))
}
