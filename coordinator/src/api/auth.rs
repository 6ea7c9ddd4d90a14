//! Bearer tokens with roles.
//!
//! Every route but `/api/v1/health`, `/api/v1/trust`, `/api/v1/keys` and `/artifacts/{sha}` (which takes a
//! capability instead, see [`crate::artifacts`]) needs `Authorization: Bearer TOKEN`:
//! - a `viewer` token reads (`GET`, `HEAD`), `/metrics` included;
//! - an `operator` token also writes (registers models, starts campaigns).
//!
//! Tokens are `hone_` followed by 64 hex digits (256 random bits). The database keeps only their
//! SHA-256, so a stolen database grants nothing; a revoked token stops working on the next
//! request. On first start the coordinator creates an operator token and writes it to
//! `{data}/operator.token` (mode 0600), the file the CLI reads by default.

use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::db::Db;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Read and write.
    Operator,
}

impl Role {
    /// Stable lowercase name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => Err(format!("unknown role `{other}`: viewer or operator")),
        }
    }
}

/// Name of the operator token file in the data folder.
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// The SHA-256 (hex) under which a token is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A token just created: its id (public) and its secret (shown once).
#[derive(Debug)]
pub struct NewToken {
    /// Id, for listing and revoking.
    pub id: String,
    /// The bearer token itself.
    pub token: String,
}

/// Creates and stores a token with `role`.
pub async fn create_token(
    db: &Db,
    role: Role,
    name: &str,
    now_ms: i64,
) -> anyhow::Result<NewToken> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        anyhow::bail!("a token name must be 1-64 printable characters");
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    let token = format!("hone_{}", hex::encode(secret));
    let id = format!("t-{}", &ulid::Ulid::new().to_string().to_lowercase()[16..]);
    db.insert_token(&id, name, role.as_str(), &token_hash(&token), now_ms).await?;
    Ok(NewToken { id, token })
}

/// Makes sure an operator can reach a new coordinator: when no active operator token exists,
/// creates one and writes it to `{data_dir}/operator.token` (mode 0600, replacing any stale
/// file). Returns the path when it wrote one.
pub async fn ensure_operator_token(
    db: &Db,
    data_dir: &Path,
    now_ms: i64,
) -> anyhow::Result<Option<PathBuf>> {
    let tokens = db.tokens().await?;
    if tokens.iter().any(|t| t.role == Role::Operator.as_str() && t.revoked_at_ms.is_none()) {
        return Ok(None);
    }
    let new = create_token(db, Role::Operator, "initial operator", now_ms).await?;
    let path = data_dir.join(OPERATOR_TOKEN_FILE);
    write_secret(&path, &new.token)?;
    Ok(Some(path))
}

/// Writes `text` to `path` with mode 0600, through a temporary file and a rename.
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::io::Write::write_all(&mut file, format!("{text}\n").as_bytes())?;
    file.sync_all()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // `mode` applies only when the file is created; a leftover tmp file keeps its own.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The role a request needs: reads are for viewers, everything else for operators.
fn needed(method: &Method) -> Role {
    if matches!(*method, Method::GET | Method::HEAD) { Role::Viewer } else { Role::Operator }
}

/// Middleware: checks the bearer token of a request against the role it needs.
pub(super) async fn require_token(
    State(s): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let needed = needed(request.method());
    let header = request.headers().get(axum::http::header::AUTHORIZATION);
    let Some(token) = header.and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    else {
        return ApiError::Unauthorized(
            "missing bearer token: send `Authorization: Bearer TOKEN` (the CLI reads HONE_TOKEN or --token-file)"
                .into(),
        )
        .into_response();
    };
    let row = match s.db.token_by_hash(&token_hash(token.trim())).await {
        Ok(row) => row,
        Err(e) => return ApiError::Internal(e.into()).into_response(),
    };
    let Some(row) = row.filter(|t| t.revoked_at_ms.is_none()) else {
        return ApiError::Unauthorized("unknown or revoked token".into()).into_response();
    };
    let Ok(role) = row.role.parse::<Role>() else {
        return ApiError::Internal(anyhow::anyhow!("token {} has role `{}`", row.id, row.role))
            .into_response();
    };
    if role < needed {
        return ApiError::Forbidden(format!(
            "token `{}` has the {} role; {} {} needs {}",
            row.name,
            role.as_str(),
            request.method(),
            request.uri().path(),
            needed.as_str()
        ))
        .into_response();
    }
    next.run(request).await
}
