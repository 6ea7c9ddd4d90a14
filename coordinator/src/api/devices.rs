//! `/api/v1/devices`: the device registry, fed by agents' retained birth and Last Will messages.

use axum::Json;
use axum::extract::State;

use super::{ApiError, ApiResult, AppState, P};
use crate::db::DeviceRow;

pub(super) async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<DeviceRow>>> {
    Ok(Json(s.db.devices().await?))
}

pub(super) async fn get(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
) -> ApiResult<Json<DeviceRow>> {
    s.db.device(&id).await?.map(Json).ok_or_else(|| ApiError::NotFound(format!("no device `{id}`")))
}
