//! Enrolment tokens, device identities and certificates (`0009_pki.sql`).

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Db, Result, q};

/// An enrolment token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EnrolTokenRow {
    /// Short id.
    pub id: String,
    /// The device it is bound to, if any.
    pub device_id: Option<String>,
    /// Created, Unix ms.
    pub created_at_ms: i64,
    /// Not valid after, Unix ms.
    pub expires_at_ms: i64,
    /// When it was used.
    pub used_at_ms: Option<i64>,
    /// The device that used it.
    pub used_by: Option<String>,
}

/// Why a token cannot enrol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No such token.
    Unknown,
    /// Used before (by this device).
    Used(String),
    /// Past its expiry.
    Expired,
}

/// A device's enrolled identity.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IdentityRow {
    /// Device id.
    pub device_id: String,
    /// `active`, `pending`, `approved`, `revoked` or `decommissioned`.
    pub state: String,
    /// SHA-256 of the enrolled public key, hex.
    pub key_id: String,
    /// First enrolment, Unix ms.
    pub enrolled_at_ms: i64,
    /// Last change, Unix ms.
    pub updated_at_ms: i64,
    /// The key a pending re-enrolment asks to certify.
    pub pending_key_id: Option<String>,
}

/// A certificate issued to a device.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CertRow {
    /// Serial, hex.
    pub serial: String,
    /// Device id (its common name).
    pub device_id: String,
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
    /// SHA-256 of the public key, hex.
    pub key_id: String,
    /// Issued, Unix ms.
    pub issued_at_ms: i64,
    /// Not valid after, Unix ms.
    pub not_after_ms: i64,
    /// Revoked, Unix ms.
    pub revoked_at_ms: Option<i64>,
}

fn identity_from(r: &AnyRow) -> std::result::Result<IdentityRow, sqlx::Error> {
    Ok(IdentityRow {
        device_id: r.try_get("device_id")?,
        state: r.try_get("state")?,
        key_id: r.try_get("key_id")?,
        enrolled_at_ms: r.try_get("enrolled_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
        pending_key_id: r.try_get("pending_key_id")?,
    })
}

fn cert_from(r: &AnyRow) -> std::result::Result<CertRow, sqlx::Error> {
    Ok(CertRow {
        serial: r.try_get("serial")?,
        device_id: r.try_get("device_id")?,
        fingerprint: r.try_get("fingerprint")?,
        key_id: r.try_get("key_id")?,
        issued_at_ms: r.try_get("issued_at_ms")?,
        not_after_ms: r.try_get("not_after_ms")?,
        revoked_at_ms: r.try_get("revoked_at_ms")?,
    })
}

impl Db {
    /// Stores a new enrolment token (by its hash).
    pub async fn insert_enrol_token(
        &self,
        token_hash: &str,
        id: &str,
        device_id: Option<&str>,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrol_tokens (token_hash, id, device_id, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(id)
        .bind(device_id)
        .bind(now_ms)
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await
        .map_err(q("insert enrolment token"))?;
        Ok(())
    }

    /// The device a token is bound to (`Some(None)`: unbound), if the token exists (used or
    /// not: [`Db::use_enrol_token`] decides).
    pub async fn enrol_tokens_by_hash(&self, token_hash: &str) -> Result<Option<Option<String>>> {
        let row = sqlx::query("SELECT device_id FROM enrol_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read enrolment token"))?;
        row.map(|r| r.try_get::<Option<String>, _>("device_id"))
            .transpose()
            .map_err(q("decode enrolment token"))
    }

    /// Marks a device offline now (a revocation: an external broker may keep its session, and
    /// what it sends is dropped, so no birth or Will would say so); returns whether it was
    /// online.
    pub async fn mark_offline(&self, device: &str, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE devices SET online = 0, status_changed_ms = $1 WHERE id = $2 AND online = 1",
        )
        .bind(now_ms)
        .bind(device)
        .execute(&self.pool)
        .await
        .map_err(q("mark device offline"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a device from the registry (decommissioning); its results stay.
    pub async fn delete_device(&self, device: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(device)
            .execute(&self.pool)
            .await
            .map_err(q("delete device"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Uses a token once: on success, the device it is bound to (if any). Two concurrent uses
    /// cannot both succeed (the update is conditional on `used_at_ms IS NULL`).
    pub async fn use_enrol_token(
        &self,
        token_hash: &str,
        device: &str,
        now_ms: i64,
    ) -> Result<std::result::Result<Option<String>, TokenRefusal>> {
        let row = sqlx::query(
            "SELECT device_id, expires_at_ms, used_by FROM enrol_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("read enrolment token"))?;
        let Some(row) = row else { return Ok(Err(TokenRefusal::Unknown)) };
        let bound: Option<String> = row.try_get("device_id").map_err(q("decode token"))?;
        let expires: i64 = row.try_get("expires_at_ms").map_err(q("decode token"))?;
        let used_by: Option<String> = row.try_get("used_by").map_err(q("decode token"))?;
        if let Some(by) = used_by {
            return Ok(Err(TokenRefusal::Used(by)));
        }
        if expires <= now_ms {
            return Ok(Err(TokenRefusal::Expired));
        }
        let done = sqlx::query(
            "UPDATE enrol_tokens SET used_at_ms = $1, used_by = $2 \
             WHERE token_hash = $3 AND used_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(device)
        .bind(token_hash)
        .execute(&self.pool)
        .await
        .map_err(q("use enrolment token"))?;
        if done.rows_affected() != 1 {
            return Ok(Err(TokenRefusal::Used(device.to_string())));
        }
        Ok(Ok(bound))
    }

    /// Every enrolment token, newest first.
    pub async fn enrol_tokens(&self) -> Result<Vec<EnrolTokenRow>> {
        let rows = sqlx::query(
            "SELECT id, device_id, created_at_ms, expires_at_ms, used_at_ms, used_by \
             FROM enrol_tokens ORDER BY created_at_ms DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("enrolment tokens"))?;
        rows.iter()
            .map(|r| {
                Ok(EnrolTokenRow {
                    id: r.try_get("id")?,
                    device_id: r.try_get("device_id")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    expires_at_ms: r.try_get("expires_at_ms")?,
                    used_at_ms: r.try_get("used_at_ms")?,
                    used_by: r.try_get("used_by")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(q("decode enrolment token"))
    }

    /// A device's identity.
    pub async fn identity(&self, device: &str) -> Result<Option<IdentityRow>> {
        let row = sqlx::query("SELECT * FROM device_identities WHERE device_id = $1")
            .bind(device)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read identity"))?;
        row.as_ref().map(identity_from).transpose().map_err(q("decode identity"))
    }

    /// Every identity, by device id.
    pub async fn identities(&self) -> Result<Vec<IdentityRow>> {
        let rows = sqlx::query("SELECT * FROM device_identities ORDER BY device_id")
            .fetch_all(&self.pool)
            .await
            .map_err(q("identities"))?;
        rows.iter()
            .map(identity_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("decode identity"))
    }

    /// Makes `key_id` the active identity of `device` (a new enrolment or an approved one).
    pub async fn activate_identity(&self, device: &str, key_id: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO device_identities (device_id, state, key_id, enrolled_at_ms, \
             updated_at_ms, pending_key_id) VALUES ($1, 'active', $2, $3, $3, NULL) \
             ON CONFLICT (device_id) DO UPDATE SET state = 'active', key_id = $2, \
             updated_at_ms = $3, pending_key_id = NULL",
        )
        .bind(device)
        .bind(key_id)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("activate identity"))?;
        Ok(())
    }

    /// Sets an identity's state (and the key a pending re-enrolment asks for).
    pub async fn set_identity_state(
        &self,
        device: &str,
        state: &str,
        pending_key_id: Option<&str>,
        now_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE device_identities SET state = $1, pending_key_id = $2, updated_at_ms = $3 \
             WHERE device_id = $4",
        )
        .bind(state)
        .bind(pending_key_id)
        .bind(now_ms)
        .bind(device)
        .execute(&self.pool)
        .await
        .map_err(q("set identity state"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Records an issued certificate.
    pub async fn insert_cert(&self, c: &CertRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO device_certs (serial, device_id, fingerprint, key_id, issued_at_ms, \
             not_after_ms, revoked_at_ms) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&c.serial)
        .bind(&c.device_id)
        .bind(&c.fingerprint)
        .bind(&c.key_id)
        .bind(c.issued_at_ms)
        .bind(c.not_after_ms)
        .execute(&self.pool)
        .await
        .map_err(q("insert certificate"))?;
        Ok(())
    }

    /// The certificate with this fingerprint.
    pub async fn cert_by_fingerprint(&self, fingerprint: &str) -> Result<Option<CertRow>> {
        let row = sqlx::query("SELECT * FROM device_certs WHERE fingerprint = $1")
            .bind(fingerprint)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read certificate"))?;
        row.as_ref().map(cert_from).transpose().map_err(q("decode certificate"))
    }

    /// A device's certificates, newest first.
    pub async fn device_certs(&self, device: &str) -> Result<Vec<CertRow>> {
        let rows = sqlx::query(
            "SELECT * FROM device_certs WHERE device_id = $1 ORDER BY issued_at_ms DESC, serial",
        )
        .bind(device)
        .fetch_all(&self.pool)
        .await
        .map_err(q("device certificates"))?;
        rows.iter().map(cert_from).collect::<std::result::Result<_, _>>().map_err(q("decode"))
    }

    /// Revokes every unrevoked certificate of `device`; returns how many.
    pub async fn revoke_device_certs(&self, device: &str, now_ms: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE device_certs SET revoked_at_ms = $1 \
             WHERE device_id = $2 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(device)
        .execute(&self.pool)
        .await
        .map_err(q("revoke certificates"))?;
        Ok(done.rows_affected())
    }

    /// Revoked certificates not yet expired at `now_ms` (what the CRL must list).
    pub async fn revoked_certs(&self, now_ms: i64) -> Result<Vec<CertRow>> {
        let rows = sqlx::query(
            "SELECT * FROM device_certs WHERE revoked_at_ms IS NOT NULL AND not_after_ms > $1 \
             ORDER BY serial",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(q("revoked certificates"))?;
        rows.iter().map(cert_from).collect::<std::result::Result<_, _>>().map_err(q("decode"))
    }
}
