//! Enrolment and device identities (issue 15; see [`crate::pki`]).
//!
//! Open routes (a device has no certificate yet, or an expired one):
//! - `GET /api/v1/pki/ca`: the CA certificate (a device pins its SHA-256, given by the operator);
//! - `POST /api/v1/enroll` `{token, device_id, csr}`: a one-time token buys one certificate;
//! - `POST /api/v1/enroll/reenroll` `{device_id, csr}`: a device whose certificate expired asks
//!   again with the same key (the request's signature proves it); the operator approves
//!   (`POST /api/v1/devices/{id}/approve`), then the same call returns the certificate.
//!
//! With the device's certificate (mutual TLS): `POST /api/v1/enroll/renew` `{csr}`.
//!
//! Operator routes: enrolment tokens, approval, revocation and decommissioning.

use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, ApiResult, AppState, P};
use crate::db::pki::{CertRow, TokenRefusal};
use crate::pki::listener::Peer;
use crate::pki::{Pki, PkiError, Revoked};

/// Default life of an enrolment token: one day.
pub const DEFAULT_TOKEN_TTL_S: u64 = 24 * 3600;

fn pki(s: &AppState) -> ApiResult<&std::sync::Arc<Pki>> {
    s.pki.as_ref().ok_or_else(|| {
        ApiError::Conflict(
            "this coordinator runs plain transport (--plain): enrolment needs TLS".into(),
        )
    })
}

fn now() -> i64 {
    hone_common::clock::now_ms() as i64
}

fn refused(e: PkiError) -> ApiError {
    match e {
        PkiError::BadRequest(m) => ApiError::BadRequest(m),
        PkiError::KeyAlgorithm => ApiError::BadRequest(e.to_string()),
        PkiError::Internal(e) => ApiError::Internal(e),
    }
}

pub(super) async fn ca(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let pki = pki(&s)?;
    Ok(Json(serde_json::json!({
        "ca_pem": pki.trust_bundle_pem(),
        "sha256": pki.ca().fingerprint(),
    })))
}

#[derive(Deserialize)]
pub(super) struct EnrolRequest {
    token: String,
    device_id: String,
    csr: String,
}

/// Issues, records and answers a certificate for `device`.
async fn issue(s: &AppState, pki: &Pki, device: &str, csr: &str) -> ApiResult<serde_json::Value> {
    let issued = pki.ca().issue_device(device, csr, pki.cert_lifetime()).map_err(refused)?;
    let now = now();
    s.db.insert_cert(&CertRow {
        serial: issued.serial.clone(),
        device_id: device.to_string(),
        fingerprint: issued.fingerprint.clone(),
        key_id: issued.key_id.clone(),
        issued_at_ms: now,
        not_after_ms: issued.not_after_ms,
        revoked_at_ms: None,
    })
    .await?;
    s.db.activate_identity(device, &issued.key_id, now).await?;
    Ok(serde_json::json!({
        "device_id": device,
        "cert_pem": issued.pem,
        "ca_pem": pki.trust_bundle_pem(),
        "serial": issued.serial,
        "not_after_ms": issued.not_after_ms,
        "trust_key": s.signer.public_hex(),
    }))
}

/// Rebuilds the CRL from the database and ends `device`'s live sessions.
pub async fn refresh_revocations(s: &AppState, device: Option<&str>) -> ApiResult<()> {
    let Some(pki) = &s.pki else { return Ok(()) };
    let revoked = s.db.revoked_certs(now()).await?;
    let list: Vec<(Revoked, String)> = revoked
        .into_iter()
        .map(|c| (Revoked { serial: c.serial, at_ms: c.revoked_at_ms.unwrap_or(0) }, c.fingerprint))
        .collect();
    pki.set_revoked(&list)?;
    let stopped =
        s.db.identities()
            .await?
            .into_iter()
            .filter_map(|i| crate::pki::Stopped::from_state(&i.state).map(|st| (i.device_id, st)));
    pki.set_stopped(stopped);
    if let Some(d) = device {
        pki.kick(d);
    }
    Ok(())
}

pub(super) async fn enroll(
    State(s): State<AppState>,
    Json(req): Json<EnrolRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let pki = pki(&s)?.clone();
    hone_common::validate_device_id(&req.device_id).map_err(ApiError::BadRequest)?;
    // The request must be sound before the token is spent.
    crate::pki::request_key_id(&req.csr).map_err(refused)?;
    let hash = super::auth::token_hash(&req.token);
    let peeked = s.db.enrol_tokens_by_hash(&hash).await?;
    let bound = match peeked {
        None => return Err(ApiError::Unauthorized("unknown enrolment token".into())),
        Some(b) => b,
    };
    let device = bound.clone().unwrap_or(req.device_id.clone());
    let existing = s.db.identity(&device).await?;
    if let Some(id) = &existing
        && bound.is_none()
        && id.state != "decommissioned"
    {
        return Err(ApiError::Conflict(format!(
            "device `{device}` is already enrolled ({}): a token bound to it \
             (`coordinator devices token --device {device}`) replaces its identity",
            id.state
        )));
    }
    match s.db.use_enrol_token(&hash, &device, now()).await? {
        Ok(_) => {}
        Err(TokenRefusal::Unknown) => {
            return Err(ApiError::Unauthorized("unknown enrolment token".into()));
        }
        Err(TokenRefusal::Used(_)) => {
            tracing::warn!(%device, "an enrolment token was presented a second time");
            return Err(ApiError::Unauthorized("this enrolment token was already used".into()));
        }
        Err(TokenRefusal::Expired) => {
            return Err(ApiError::Unauthorized("this enrolment token has expired".into()));
        }
    }
    if existing.is_some() && s.db.revoke_device_certs(&device, now()).await? > 0 {
        refresh_revocations(&s, Some(&device)).await?;
    }
    let answer = issue(&s, &pki, &device, &req.csr).await?;
    if pki.stopped(&device).is_some() {
        refresh_revocations(&s, None).await?;
    }
    s.metrics.enrolments.fetch_add(1, Relaxed);
    tracing::info!(%device, "device enrolled");
    Ok(Json(answer))
}

#[derive(Deserialize)]
pub(super) struct RenewRequest {
    csr: String,
}

/// The active device behind a request's client certificate.
pub(super) async fn device_of(s: &AppState, peer: Option<&Peer>) -> ApiResult<String> {
    let Some(cert) = peer.and_then(|p| p.cert.as_ref()) else {
        return Err(ApiError::Unauthorized("a device client certificate is required".into()));
    };
    let pki = pki(s)?;
    let row = s.db.cert_by_fingerprint(&cert.fingerprint).await?;
    let Some(row) = row else {
        return Err(ApiError::Forbidden("this certificate was not issued to a device".into()));
    };
    if row.revoked_at_ms.is_some() || pki.is_revoked(&cert.fingerprint) {
        return Err(ApiError::Forbidden("this certificate is revoked".into()));
    }
    match s.db.identity(&row.device_id).await? {
        Some(id) if id.state == "active" => Ok(row.device_id),
        Some(id) => Err(ApiError::Forbidden(format!("device `{}` is {}", id.device_id, id.state))),
        None => Err(ApiError::Forbidden("no such device identity".into())),
    }
}

pub(super) async fn renew(
    State(s): State<AppState>,
    peer: Option<axum::Extension<ConnectInfo<Peer>>>,
    Json(req): Json<RenewRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let pki = pki(&s)?.clone();
    let device = device_of(&s, peer.as_ref().map(|p| &(p.0).0)).await?;
    let answer = issue(&s, &pki, &device, &req.csr).await?;
    s.metrics.renewals.fetch_add(1, Relaxed);
    tracing::info!(%device, "device certificate renewed");
    Ok(Json(answer))
}

#[derive(Deserialize)]
pub(super) struct ReenrolRequest {
    device_id: String,
    csr: String,
}

pub(super) async fn reenroll(
    State(s): State<AppState>,
    Json(req): Json<ReenrolRequest>,
) -> ApiResult<Response> {
    let pki = pki(&s)?.clone();
    let key_id = crate::pki::request_key_id(&req.csr).map_err(refused)?;
    let Some(id) = s.db.identity(&req.device_id).await? else {
        return Err(ApiError::NotFound(format!(
            "device `{}` is not enrolled: enrol it with a token",
            req.device_id
        )));
    };
    if id.key_id != key_id {
        return Err(ApiError::Forbidden(
            "the request is not signed by this device's enrolled key: enrol with a new token"
                .into(),
        ));
    }
    match id.state.as_str() {
        "approved" => {
            let answer = issue(&s, &pki, &id.device_id, &req.csr).await?;
            s.metrics.enrolments.fetch_add(1, Relaxed);
            tracing::info!(device = %id.device_id, "device re-enrolled after approval");
            Ok(Json(answer).into_response())
        }
        "active" | "pending" => {
            if id.state == "active" {
                s.db.set_identity_state(&id.device_id, "pending", Some(&key_id), now()).await?;
                tracing::warn!(device = %id.device_id, "re-enrolment requested: waiting for `coordinator devices approve`");
            }
            Ok((
                StatusCode::ACCEPTED,
                Json(serde_json::json!({
                    "state": "pending",
                    "device_id": id.device_id,
                    "message": format!("waiting for an operator: coordinator devices approve {}", id.device_id),
                })),
            )
                .into_response())
        }
        other => Err(ApiError::Forbidden(format!(
            "device `{}` is {other}: enrol it again with a new token",
            id.device_id
        ))),
    }
}

#[derive(Deserialize, Default)]
pub(super) struct TokenRequest {
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

pub(super) async fn create_token(
    State(s): State<AppState>,
    Json(req): Json<TokenRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let pki = pki(&s)?;
    if let Some(d) = &req.device_id {
        hone_common::validate_device_id(d).map_err(ApiError::BadRequest)?;
    }
    let ttl = req.ttl_s.unwrap_or(DEFAULT_TOKEN_TTL_S);
    if !(60..=30 * 86_400).contains(&ttl) {
        return Err(ApiError::BadRequest("ttl_s must be between 60 s and 30 days".into()));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = format!("honeenrol_{}", hex::encode(secret));
    let id = format!("e-{}", &ulid::Ulid::new().to_string().to_lowercase()[16..]);
    let now = now();
    let expires = now + ttl as i64 * 1000;
    s.db.insert_enrol_token(
        &super::auth::token_hash(&token),
        &id,
        req.device_id.as_deref(),
        now,
        expires,
    )
    .await?;
    Ok(Json(serde_json::json!({
        "id": id,
        "token": token,
        "device_id": req.device_id,
        "expires_at_ms": expires,
        "ca_sha256": pki.ca().fingerprint(),
    })))
}

pub(super) async fn list_tokens(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(serde_json::to_value(s.db.enrol_tokens().await?)?))
}

pub(super) async fn identity(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
) -> ApiResult<Json<serde_json::Value>> {
    let Some(identity) = s.db.identity(&id).await? else {
        return Err(ApiError::NotFound(format!("device `{id}` is not enrolled")));
    };
    let certs = s.db.device_certs(&id).await?;
    Ok(Json(serde_json::json!({ "identity": identity, "certificates": certs })))
}

pub(super) async fn identities(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(serde_json::to_value(s.db.identities().await?)?))
}

pub(super) async fn approve(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
) -> ApiResult<Json<serde_json::Value>> {
    pki(&s)?;
    let Some(identity) = s.db.identity(&id).await? else {
        return Err(ApiError::NotFound(format!("device `{id}` is not enrolled")));
    };
    if identity.state != "pending" {
        return Err(ApiError::Conflict(format!(
            "device `{id}` has no re-enrolment waiting (it is {})",
            identity.state
        )));
    }
    s.db.set_identity_state(&id, "approved", identity.pending_key_id.as_deref(), now()).await?;
    tracing::info!(device = %id, "re-enrolment approved");
    Ok(Json(serde_json::json!({ "device_id": id, "state": "approved" })))
}

async fn stop_device(s: &AppState, id: &str, state: &str) -> ApiResult<serde_json::Value> {
    pki(s)?;
    let Some(identity) = s.db.identity(id).await? else {
        return Err(ApiError::NotFound(format!("device `{id}` is not enrolled")));
    };
    let revoked = s.db.revoke_device_certs(id, now()).await?;
    s.db.set_identity_state(id, state, None, now()).await?;
    refresh_revocations(s, Some(id)).await?;
    // Offline at once, whatever the broker: an external one keeps the open session until it
    // drops, and the engine must neither send it a job nor wait for one it holds (its attempts
    // end and move on the next tick).
    let was_online = s.db.mark_offline(id, now()).await?;
    s.poke.notify_one();
    tracing::warn!(device = %id, certificates = revoked, from = %identity.state, to = %state, was_online, "device certificates revoked");
    Ok(serde_json::json!({ "device_id": id, "state": state, "certificates_revoked": revoked }))
}

pub(super) async fn revoke(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(stop_device(&s, &id, "revoked").await?))
}

/// Revokes the device and removes it from the fleet: its retained status is cleared on the
/// broker and its registry row deleted (its results stay in their campaigns).
pub(super) async fn decommission(
    State(s): State<AppState>,
    axum::extract::Path(id): P,
) -> ApiResult<Json<serde_json::Value>> {
    let mut answer = stop_device(&s, &id, "decommissioned").await?;
    let cleared = match &s.bus {
        Some(bus) => bus.publish_raw(&hone_common::topic::status(&id), vec![], true).await.is_ok(),
        None => false,
    };
    let removed = s.db.delete_device(&id).await?;
    answer["status_cleared"] = cleared.into();
    answer["registry_row_removed"] = removed.into();
    Ok(Json(answer))
}
