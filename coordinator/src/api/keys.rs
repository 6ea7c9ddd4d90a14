//! The signing key's rotation chain: `GET /api/v1/keys` (open, like `/api/v1/trust`: agents
//! fetch it to follow a rotation) and `POST /api/v1/keys/rotate` (operator).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiResult, AppState};

/// The current key and every rotation statement, oldest first.
pub(super) async fn chain(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "public_key": s.signer.public_hex(),
        "algorithm": "ed25519",
        "rotations": s.signer.chain(),
    }))
}

/// Replaces the signing key; answers the new statement and key. Documents signed from now on
/// use the new key; agents that pinned an older key of the chain follow it.
pub(super) async fn rotate(
    State(s): State<AppState>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let signer = s.signer.clone();
    let statement = tokio::task::spawn_blocking(move || signer.rotate()).await??;
    tracing::warn!(old = %statement.old_key, new = %statement.new_key, sequence = statement.sequence, "signing key rotated: back up the keys folder");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "public_key": s.signer.public_hex(),
            "rotation": statement,
            "rotations": s.signer.chain().len(),
        })),
    ))
}
