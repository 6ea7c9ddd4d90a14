//! The only module that knows the database: pool, migrations and every query.
//!
//! One code path serves SQLite (default) and PostgreSQL through sqlx's `Any` driver: the schema
//! (`coordinator/migrations/`) uses only portable types, queries use `$N` placeholders (which
//! both backends accept) in order of appearance, and booleans are stored as 0/1.

use hone_common::bench::LatencyStats;
use hone_common::wire::WIRE_VERSION;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// Database errors, with the failing operation named.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connecting or migrating failed.
    #[error("database {url}: {source}")]
    Open {
        /// URL with any password removed.
        url: String,
        /// Cause.
        source: sqlx::Error,
    },
    /// Migration failed.
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A new campaign names a job id that another campaign already has.
    #[error("job id `{job}` already exists (in another campaign): job ids must be unique")]
    DuplicateJob {
        /// The job id.
        job: String,
    },
    /// A query failed.
    #[error("database query `{op}`: {source}")]
    Query {
        /// What was being done.
        op: &'static str,
        /// Cause.
        source: sqlx::Error,
    },
}

/// A database result.
pub type Result<T> = std::result::Result<T, DbError>;

fn q(op: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Query { op, source }
}

/// Connection pool.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    /// Whether the backend is PostgreSQL.
    pub is_postgres: bool,
    /// When this process last wrote each device's last-seen time ([`Db::touch_device`]).
    touched: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
}

/// A device's last-seen time is written at most this often (ms): every message a device sends
/// refreshes it, and a write for each was a sizeable share of a campaign's database work.
pub const TOUCH_INTERVAL_MS: i64 = 1_000;

/// A registered model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelRow {
    /// Model id (derived from the digest).
    pub id: String,
    /// Human name.
    pub name: String,
    /// SHA-256, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: i64,
    /// JSON summary (opset, ops, inputs, parameters).
    pub summary: serde_json::Value,
    /// Registration time, Unix ms.
    pub created_at_ms: i64,
    /// Where it came from (parent, method, settings, validation), for models a pipeline made;
    /// `None` for models registered by hand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineage: Option<serde_json::Value>,
}

/// A device in the registry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceRow {
    /// Device id.
    pub id: String,
    /// Online according to its last birth or Last Will.
    pub online: bool,
    /// Agent session counter.
    pub session: i64,
    /// CPU architecture.
    pub arch: String,
    /// OS.
    pub os: String,
    /// Logical cores.
    pub cores: i64,
    /// Total memory, bytes.
    pub memory_bytes: i64,
    /// Agent version.
    pub agent_version: String,
    /// Device profile.
    pub profile: Option<String>,
    /// First birth, Unix ms.
    pub first_seen_ms: i64,
    /// Last message, Unix ms.
    pub last_seen_ms: i64,
    /// Last change of online state or wire version, Unix ms.
    pub status_changed_ms: i64,
    /// Wire version of the device's last message.
    pub wire_version: i64,
    /// `online`, `offline` or `incompatible` (its agent speaks another wire version).
    pub status: &'static str,
    /// Why the device gets no jobs although it may be online, e.g. `needs wire version 3`.
    pub problem: Option<String>,
    /// The runtimes its agent announced, each with its version or why it cannot run it.
    pub runtimes: Vec<hone_common::bench::RuntimeAvailability>,
}

impl DeviceRow {
    /// Whether jobs may be sent to it: online, and speaking this coordinator's wire version.
    pub fn dispatchable(&self) -> bool {
        self.online && self.problem.is_none()
    }

    /// Why the device cannot run `runtime` (`None`: it can). Every agent runs tract.
    pub fn runtime_problem(&self, runtime: hone_common::bench::Runtime) -> Option<String> {
        if runtime == hone_common::bench::Runtime::Tract {
            return None;
        }
        match self.runtimes.iter().find(|r| r.runtime == runtime) {
            Some(r) if r.problem.is_none() => None,
            Some(r) => r.problem.clone(),
            None => Some(format!("its agent does not announce {runtime}")),
        }
    }

    /// Whether jobs in `runtime` may be sent to it.
    pub fn dispatchable_for(&self, runtime: hone_common::bench::Runtime) -> bool {
        self.dispatchable() && self.runtime_problem(runtime).is_none()
    }
}

/// What is wrong with a device speaking `found` (`None` if it speaks [`WIRE_VERSION`]).
pub fn wire_problem(id: &str, found: i64) -> Option<String> {
    let needed = i64::from(WIRE_VERSION);
    match found.cmp(&needed) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Less => Some(format!(
            "device {id} is incompatible: needs wire version {needed}, its agent speaks version {found} (upgrade the agent)"
        )),
        std::cmp::Ordering::Greater => Some(format!(
            "device {id} is incompatible: its agent speaks wire version {found}, this coordinator speaks {needed} (upgrade the coordinator)"
        )),
    }
}

/// An API token (its secret is never stored, only its SHA-256).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenRow {
    /// Token id (not secret; used to revoke it).
    pub id: String,
    /// Human label.
    pub name: String,
    /// `viewer` or `operator`.
    pub role: String,
    /// Creation, Unix ms.
    pub created_at_ms: i64,
    /// Revocation, Unix ms.
    pub revoked_at_ms: Option<i64>,
}

/// A campaign.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CampaignRow {
    /// Campaign id.
    pub id: String,
    /// JSON spec as created.
    pub spec: serde_json::Value,
    /// `running`, `done` or `cancelled`.
    pub state: String,
    /// Creation, Unix ms.
    pub created_at_ms: i64,
    /// Completion or cancellation, Unix ms.
    pub finished_at_ms: Option<i64>,
}

/// What [`Db::create_campaign`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The campaign and its jobs were inserted.
    Created,
    /// A campaign with this id existed; nothing was written (client-chosen ids make creation
    /// idempotent, e.g. a pipeline re-creating its campaigns after a restart).
    Exists,
}

/// What [`Db::cancel_campaign`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The campaign was running and is now `cancelled`; this many of its jobs (queued,
    /// dispatched or running) failed with the reason.
    Cancelled {
        /// Jobs that were still active or queued.
        jobs_failed: u64,
    },
    /// The campaign had already ended (`done` or `cancelled`); nothing changed.
    NotRunning {
        /// Its state.
        state: String,
    },
    /// No campaign has this id.
    NotFound,
}

/// A job: one model on one device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRow {
    /// Job id.
    pub id: String,
    /// Campaign.
    pub campaign_id: String,
    /// Order within the campaign.
    pub seq: i64,
    /// Model.
    pub model_id: String,
    /// Device.
    pub device_id: String,
    /// `queued`, `dispatched`, `running`, `done` or `failed`.
    pub state: String,
    /// Dispatches so far.
    pub attempt: i64,
    /// Limit on dispatches.
    pub max_attempts: i64,
    /// Command id of the current dispatch.
    pub command_id: Option<String>,
    /// Last dispatch, Unix ms.
    pub dispatched_at_ms: Option<i64>,
    /// Last acceptance by the agent, Unix ms.
    pub accepted_at_ms: Option<i64>,
    /// When the current dispatch times out, Unix ms.
    pub deadline_ms: Option<i64>,
    /// Terminal time, Unix ms.
    pub finished_at_ms: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// A stored benchmark result (exactly one per job at most).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResultRow {
    /// Job.
    pub job_id: String,
    /// Idempotency key sent by the agent.
    pub result_id: String,
    /// Campaign.
    pub campaign_id: String,
    /// Model.
    pub model_id: String,
    /// Device.
    pub device_id: String,
    /// Device profile at the time.
    pub profile: Option<String>,
    /// Attempt that produced it.
    pub attempt: i64,
    /// Latency statistics (one column per field; flattened in JSON).
    #[serde(flatten)]
    pub latency: LatencyStats,
    /// Load + optimise time, ms.
    pub load_ms: f64,
    /// Peak RSS of the benchmark process, bytes.
    pub peak_rss_bytes: i64,
    /// Measured iterations.
    pub iterations: i64,
    /// Inputs were synthetic.
    pub synthetic_inputs: bool,
    /// Full report JSON.
    pub report: serde_json::Value,
    /// Arrival, Unix ms.
    pub received_at_ms: i64,
}

const JOB_COLS: &str = "id, campaign_id, seq, model_id, device_id, state, attempt, max_attempts, command_id, \
    dispatched_at_ms, accepted_at_ms, deadline_ms, finished_at_ms, last_error";
const DEVICE_COLS: &str = "id, online, session, arch, os, cores, memory_bytes, agent_version, profile, \
    first_seen_ms, last_seen_ms, status_changed_ms, wire_version, runtimes";
const TOKEN_COLS: &str = "id, name, role, created_at_ms, revoked_at_ms";
const RESULT_COLS: &str = "job_id, result_id, campaign_id, model_id, device_id, profile, attempt, p50_ms, p90_ms, \
    p99_ms, mean_ms, std_ms, min_ms, max_ms, load_ms, peak_rss_bytes, iterations, synthetic_inputs, report, received_at_ms";

fn json_col(row: &AnyRow, col: &str) -> serde_json::Value {
    row.try_get::<String, _>(col)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn job_from(row: &AnyRow) -> std::result::Result<JobRow, sqlx::Error> {
    Ok(JobRow {
        id: row.try_get("id")?,
        campaign_id: row.try_get("campaign_id")?,
        seq: row.try_get("seq")?,
        model_id: row.try_get("model_id")?,
        device_id: row.try_get("device_id")?,
        state: row.try_get("state")?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        command_id: row.try_get("command_id")?,
        dispatched_at_ms: row.try_get("dispatched_at_ms")?,
        accepted_at_ms: row.try_get("accepted_at_ms")?,
        deadline_ms: row.try_get("deadline_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
        last_error: row.try_get("last_error")?,
    })
}

fn device_from(row: &AnyRow) -> std::result::Result<DeviceRow, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let online = row.try_get::<i64, _>("online")? != 0;
    let wire_version: i64 = row.try_get("wire_version")?;
    let problem = wire_problem(&id, wire_version);
    let status = match (&problem, online) {
        (Some(_), _) => "incompatible",
        (None, true) => "online",
        (None, false) => "offline",
    };
    Ok(DeviceRow {
        id,
        online,
        wire_version,
        status,
        problem,
        runtimes: serde_json::from_value(json_col(row, "runtimes")).unwrap_or_default(),
        session: row.try_get("session")?,
        arch: row.try_get("arch")?,
        os: row.try_get("os")?,
        cores: row.try_get("cores")?,
        memory_bytes: row.try_get("memory_bytes")?,
        agent_version: row.try_get("agent_version")?,
        profile: row.try_get("profile")?,
        first_seen_ms: row.try_get("first_seen_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        status_changed_ms: row.try_get("status_changed_ms")?,
    })
}

fn token_from(row: &AnyRow) -> std::result::Result<TokenRow, sqlx::Error> {
    Ok(TokenRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        created_at_ms: row.try_get("created_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
    })
}

fn result_from(row: &AnyRow) -> std::result::Result<ResultRow, sqlx::Error> {
    Ok(ResultRow {
        job_id: row.try_get("job_id")?,
        result_id: row.try_get("result_id")?,
        campaign_id: row.try_get("campaign_id")?,
        model_id: row.try_get("model_id")?,
        device_id: row.try_get("device_id")?,
        profile: row.try_get("profile")?,
        attempt: row.try_get("attempt")?,
        latency: LatencyStats {
            p50_ms: row.try_get("p50_ms")?,
            p90_ms: row.try_get("p90_ms")?,
            p99_ms: row.try_get("p99_ms")?,
            mean_ms: row.try_get("mean_ms")?,
            std_ms: row.try_get("std_ms")?,
            min_ms: row.try_get("min_ms")?,
            max_ms: row.try_get("max_ms")?,
        },
        load_ms: row.try_get("load_ms")?,
        peak_rss_bytes: row.try_get("peak_rss_bytes")?,
        iterations: row.try_get("iterations")?,
        synthetic_inputs: row.try_get::<i64, _>("synthetic_inputs")? != 0,
        report: json_col(row, "report"),
        received_at_ms: row.try_get("received_at_ms")?,
    })
}

fn model_from(row: &AnyRow) -> std::result::Result<ModelRow, sqlx::Error> {
    Ok(ModelRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        sha256: row.try_get("sha256")?,
        size_bytes: row.try_get("size_bytes")?,
        summary: json_col(row, "summary"),
        created_at_ms: row.try_get("created_at_ms")?,
        lineage: row
            .try_get::<Option<String>, _>("lineage")?
            .and_then(|s| serde_json::from_str(&s).ok()),
    })
}

/// A new result to store.
#[derive(Debug, Clone)]
pub struct NewResult<'a> {
    /// The job it belongs to.
    pub job: &'a JobRow,
    /// Agent's idempotency key.
    pub result_id: &'a str,
    /// Attempt that produced it.
    pub attempt: i64,
    /// Device profile at the time.
    pub profile: Option<&'a str>,
    /// The report.
    pub report: &'a hone_common::bench::BenchReport,
    /// Arrival, Unix ms.
    pub now_ms: i64,
}

/// Job counts of one campaign ([`Db::campaign_job_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCounts {
    /// All its jobs.
    pub total: i64,
    /// Jobs neither done nor failed.
    pub open: i64,
    /// Failed jobs.
    pub failed: i64,
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

impl Db {
    /// Connects and applies migrations. `sqlite://path?mode=rwc` creates the file.
    pub async fn open(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let is_postgres = url.starts_with("postgres");
        let is_sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 4 } else { 8 })
            .acquire_timeout(std::time::Duration::from_secs(15))
            // A test query before every use doubled the round trips of a busy coordinator. A
            // SQLite connection is a file in this process and needs none; a PostgreSQL one is
            // tested when it has been idle for a second or more (after a server restart, say),
            // and replaced if the test fails.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if !is_sqlite && meta.idle_for >= std::time::Duration::from_secs(1) {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // Commits do not wait for the disk: every message a device sends is a
                    // commit or two, and waiting for a flush at each made the disk the pace of
                    // a fleet. SQLite in WAL mode with NORMAL syncs at checkpoints: a power loss
                    // may forget the last commits but never corrupts the file, and a crash of
                    // the coordinator loses nothing. PostgreSQL without synchronous commit: a
                    // crash of the server may forget the last commits (well under a second),
                    // never corrupts. What may be forgotten, the engine recovers: a dispatch is
                    // sent again (the agent answers a duplicate as one), a result is measured
                    // again.
                    if is_sqlite {
                        sqlx::query("PRAGMA synchronous=NORMAL").execute(conn).await?;
                    } else {
                        sqlx::query("SET synchronous_commit = off").execute(conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|source| DbError::Open { url: redact(url), source })?;
        if is_sqlite {
            sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await.map_err(q("enable WAL"))?;
        }
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Db { pool, is_postgres, touched: Default::default() })
    }

    // ---- models ----

    /// Inserts a model unless one with the same digest exists; returns the stored row.
    pub async fn insert_model(&self, m: &ModelRow) -> Result<ModelRow> {
        sqlx::query(
            "INSERT INTO models (id, name, sha256, size_bytes, summary, created_at_ms, lineage) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&m.id)
        .bind(&m.name)
        .bind(&m.sha256)
        .bind(m.size_bytes)
        .bind(m.summary.to_string())
        .bind(m.created_at_ms)
        .bind(m.lineage.as_ref().map(|l| l.to_string()))
        .execute(&self.pool)
        .await
        .map_err(q("insert model"))?;
        Ok(self.model_by_sha(&m.sha256).await?.expect("model row just inserted"))
    }

    /// Model by digest.
    pub async fn model_by_sha(&self, sha: &str) -> Result<Option<ModelRow>> {
        let row = sqlx::query("SELECT * FROM models WHERE sha256 = $1")
            .bind(sha)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("model by digest"))?;
        row.map(|r| model_from(&r)).transpose().map_err(q("decode model"))
    }

    /// Resolves a model by id, name (most recent) or digest prefix (at least 8 hex digits).
    pub async fn find_model(&self, key: &str) -> Result<Option<ModelRow>> {
        let pattern = format!("{key}%");
        let rows = sqlx::query(
            "SELECT * FROM models WHERE id = $1 OR name = $2 OR (LENGTH($3) >= 8 AND sha256 LIKE $4) \
             ORDER BY created_at_ms DESC",
        )
        .bind(key)
        .bind(key)
        .bind(key)
        .bind(&pattern)
        .fetch_all(&self.pool)
        .await
        .map_err(q("find model"))?;
        let rows: Vec<ModelRow> = rows
            .iter()
            .map(model_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("decode model"))?;
        Ok(rows.iter().find(|m| m.id == key).or_else(|| rows.first()).cloned())
    }

    /// All models, newest first.
    pub async fn models(&self) -> Result<Vec<ModelRow>> {
        let rows = sqlx::query("SELECT * FROM models ORDER BY created_at_ms DESC")
            .fetch_all(&self.pool)
            .await
            .map_err(q("list models"))?;
        rows.iter()
            .map(model_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("decode model"))
    }

    // ---- devices ----

    /// Applies a status message, unless it is a Last Will older than the device's current
    /// session. Returns `false` when the status was stale and ignored.
    pub async fn apply_status(
        &self,
        s: &hone_common::wire::DeviceStatus,
        now_ms: i64,
    ) -> Result<bool> {
        let current = self.device(&s.device_id).await?;
        if let Some(cur) = &current
            && (s.session as i64) < cur.session
        {
            return Ok(false);
        }
        let version = i64::from(WIRE_VERSION);
        let changed =
            current.as_ref().is_none_or(|c| c.online != s.online || c.wire_version != version);
        let status_changed_ms = if changed {
            now_ms
        } else {
            current.as_ref().map(|c| c.status_changed_ms).unwrap_or(now_ms)
        };
        sqlx::query(
            "INSERT INTO devices (id, online, session, arch, os, cores, memory_bytes, agent_version, profile, \
               first_seen_ms, last_seen_ms, status_changed_ms, wire_version, runtimes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (id) DO UPDATE SET online = excluded.online, session = excluded.session, \
               arch = excluded.arch, os = excluded.os, cores = excluded.cores, memory_bytes = excluded.memory_bytes, \
               agent_version = excluded.agent_version, profile = excluded.profile, \
               last_seen_ms = excluded.last_seen_ms, status_changed_ms = excluded.status_changed_ms, \
               wire_version = excluded.wire_version, runtimes = excluded.runtimes",
        )
        .bind(&s.device_id)
        .bind(i64::from(s.online))
        .bind(s.session as i64)
        .bind(&s.arch)
        .bind(&s.os)
        .bind(i64::from(s.cores))
        .bind(s.memory_bytes as i64)
        .bind(&s.agent_version)
        .bind(s.profile.as_deref())
        .bind(now_ms)
        .bind(now_ms)
        .bind(status_changed_ms)
        .bind(version)
        .bind(serde_json::to_string(&s.runtimes).unwrap_or_else(|_| "[]".into()))
        .execute(&self.pool)
        .await
        .map_err(q("upsert device"))?;
        Ok(true)
    }

    /// Records that a device sent a payload of wire version `found` (not this build's): it is
    /// incompatible until it speaks [`WIRE_VERSION`]. A device never seen before is added
    /// (offline, its facts unknown). Returns whether the device's wire version changed.
    pub async fn mark_wire_version(&self, id: &str, found: u16, now_ms: i64) -> Result<bool> {
        let found = i64::from(found);
        let current = self.device(id).await?;
        if current.as_ref().is_some_and(|c| c.wire_version == found) {
            self.touch_device(id, now_ms).await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO devices (id, online, session, arch, os, cores, memory_bytes, agent_version, profile, \
               first_seen_ms, last_seen_ms, status_changed_ms, wire_version) \
             VALUES ($1, 0, 0, '', '', 0, 0, '', NULL, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, \
               status_changed_ms = excluded.status_changed_ms, wire_version = excluded.wire_version",
        )
        .bind(id)
        .bind(now_ms)
        .bind(now_ms)
        .bind(now_ms)
        .bind(found)
        .execute(&self.pool)
        .await
        .map_err(q("mark device wire version"))?;
        Ok(true)
    }

    // ---- API tokens ----

    /// Stores a new token by the SHA-256 (hex) of its secret.
    pub async fn insert_token(
        &self,
        id: &str,
        name: &str,
        role: &str,
        token_sha256: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, token_sha256, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(name)
        .bind(role)
        .bind(token_sha256)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q("insert token"))?;
        Ok(())
    }

    /// The token whose secret hashes to `token_sha256`, revoked or not.
    pub async fn token_by_hash(&self, token_sha256: &str) -> Result<Option<TokenRow>> {
        let row =
            sqlx::query(&format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE token_sha256 = $1"))
                .bind(token_sha256)
                .fetch_optional(&self.pool)
                .await
                .map_err(q("token by hash"))?;
        row.map(|r| token_from(&r)).transpose().map_err(q("decode token"))
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>> {
        let rows =
            sqlx::query(&format!("SELECT {TOKEN_COLS} FROM api_tokens ORDER BY created_at_ms, id"))
                .fetch_all(&self.pool)
                .await
                .map_err(q("list tokens"))?;
        rows.iter()
            .map(token_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("decode token"))
    }

    /// Revokes a token; returns `false` if no active token has this id.
    pub async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE api_tokens SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("revoke token"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// Refreshes a device's last-seen time, unless this process wrote it less than
    /// [`TOUCH_INTERVAL_MS`] before `now_ms`.
    pub async fn touch_device(&self, id: &str, now_ms: i64) -> Result<()> {
        {
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            match touched.get_mut(id) {
                Some(at) if now_ms.saturating_sub(*at) < TOUCH_INTERVAL_MS => return Ok(()),
                Some(at) => *at = now_ms,
                None => {
                    touched.insert(id.to_string(), now_ms);
                }
            }
        }
        sqlx::query("UPDATE devices SET last_seen_ms = $1 WHERE id = $2")
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("touch device"))?;
        Ok(())
    }

    /// The floor of the signing sequence clock (µs; 0 before the first start).
    pub async fn signing_floor(&self) -> Result<u64> {
        let row = sqlx::query("SELECT floor_us FROM signing_clock WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read the signing floor"))?;
        let floor: i64 = match row {
            Some(r) => r.try_get(0).map_err(q("decode the signing floor"))?,
            None => 0,
        };
        Ok(floor.max(0) as u64)
    }

    /// Raises the floor of the signing sequence clock to `floor_us` (never lowers it).
    pub async fn raise_signing_floor(&self, floor_us: u64) -> Result<()> {
        sqlx::query("UPDATE signing_clock SET floor_us = $1 WHERE id = 1 AND floor_us < $1")
            .bind(floor_us.min(i64::MAX as u64) as i64)
            .execute(&self.pool)
            .await
            .map_err(q("raise the signing floor"))?;
        Ok(())
    }

    /// One device.
    pub async fn device(&self, id: &str) -> Result<Option<DeviceRow>> {
        let row = sqlx::query(&format!("SELECT {DEVICE_COLS} FROM devices WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get device"))?;
        row.map(|r| device_from(&r)).transpose().map_err(q("decode device"))
    }

    /// All devices by id.
    pub async fn devices(&self) -> Result<Vec<DeviceRow>> {
        let rows = sqlx::query(&format!("SELECT {DEVICE_COLS} FROM devices ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(q("list devices"))?;
        rows.iter()
            .map(device_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("decode device"))
    }

    // ---- campaigns and jobs ----

    /// Creates a campaign and its jobs in one transaction. A campaign id that exists already is
    /// [`CreateOutcome::Exists`] and writes nothing (client-supplied ids make creation
    /// idempotent); a job id that another campaign has is [`DbError::DuplicateJob`] and writes
    /// nothing either. `jobs` are `(job id, model id, device id, max attempts)` in order.
    pub async fn create_campaign(
        &self,
        id: &str,
        spec: &serde_json::Value,
        jobs: &[(String, String, String, i64)],
        now_ms: i64,
    ) -> Result<CreateOutcome> {
        let mut tx = self.pool.begin().await.map_err(q("begin campaign"))?;
        let inserted = sqlx::query(
            "INSERT INTO campaigns (id, spec, state, created_at_ms) VALUES ($1, $2, 'running', $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(spec.to_string())
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("insert campaign"))?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await.map_err(q("rollback campaign"))?;
            return Ok(CreateOutcome::Exists);
        }
        for (seq, (job_id, model_id, device_id, max_attempts)) in jobs.iter().enumerate() {
            let inserted = sqlx::query(
                "INSERT INTO jobs (id, campaign_id, seq, model_id, device_id, state, attempt, max_attempts, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(job_id)
            .bind(id)
            .bind(seq as i64)
            .bind(model_id)
            .bind(device_id)
            .bind(*max_attempts)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(q("insert job"))?
            .rows_affected();
            if inserted == 0 {
                tx.rollback().await.map_err(q("rollback campaign"))?;
                return Err(DbError::DuplicateJob { job: job_id.clone() });
            }
        }
        tx.commit().await.map_err(q("commit campaign"))?;
        Ok(CreateOutcome::Created)
    }

    /// Whether a campaign with this id exists (in any state).
    pub async fn campaign_exists(&self, id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT id FROM campaigns WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("campaign exists"))?;
        Ok(row.is_some())
    }

    /// Cancels a running campaign in one transaction: the campaign becomes `cancelled` (with
    /// `finished_at_ms`), and each of its queued, dispatched or running jobs becomes `failed`
    /// with `last_error` = `cancelled: {reason}`. An attempt that was dispatched or running
    /// keeps its `deadline_ms`: its agent may still be running it (there is no cancel message on
    /// the wire), so the device counts as busy until that attempt's result arrives, the agent
    /// restarts, or the deadline passes ([`Db::held_devices`]). A result that arrives later for
    /// a job of a cancelled campaign is not stored ([`Db::store_result`]).
    pub async fn cancel_campaign(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<CancelOutcome> {
        let mut tx = self.pool.begin().await.map_err(q("begin cancel"))?;
        let cancelled = sqlx::query(
            "UPDATE campaigns SET state = 'cancelled', finished_at_ms = $1 WHERE id = $2 AND state = 'running'",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(q("cancel campaign"))?
        .rows_affected();
        if cancelled == 0 {
            tx.rollback().await.map_err(q("rollback cancel"))?;
            return Ok(match self.campaign(id).await? {
                Some(c) => CancelOutcome::NotRunning { state: c.state },
                None => CancelOutcome::NotFound,
            });
        }
        let jobs_failed = sqlx::query(
            "UPDATE jobs SET state = 'failed', last_error = $1, finished_at_ms = $2, updated_at_ms = $3 \
             WHERE campaign_id = $4 AND state IN ('queued', 'dispatched', 'running')",
        )
        .bind(format!("cancelled: {reason}"))
        .bind(now_ms)
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(q("fail cancelled jobs"))?
        .rows_affected();
        tx.commit().await.map_err(q("commit cancel"))?;
        Ok(CancelOutcome::Cancelled { jobs_failed })
    }

    /// Devices still held by an attempt of a cancelled campaign (failed, deadline not yet
    /// passed, no result yet): their agents may still be running it, so nothing else is sent
    /// to them until [`Db::release_held`] or the deadline.
    pub async fn held_devices(&self, now_ms: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT device_id FROM jobs WHERE state = 'failed' AND deadline_ms IS NOT NULL \
             AND deadline_ms > $1",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(q("held devices"))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("device_id"))
            .collect::<std::result::Result<_, _>>()
            .map_err(q("decode held device"))
    }

    /// Releases a device held by cancelled attempts (its agent answered or restarted).
    pub async fn release_held(&self, device_id: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET deadline_ms = NULL, updated_at_ms = $1 \
             WHERE device_id = $2 AND state = 'failed' AND deadline_ms IS NOT NULL",
        )
        .bind(now_ms)
        .bind(device_id)
        .execute(&self.pool)
        .await
        .map_err(q("release held device"))?;
        Ok(())
    }

    /// Moves a queued job to another device: `device_id` becomes `new_device` and `last_error`
    /// says `moved from {old} to {new_device}: {reason}`. The attempt counter is unchanged (an
    /// attempt that ended because its device died was counted when it was dispatched). Returns
    /// `false` (and changes nothing) if the job is not queued, or already on `new_device`.
    pub async fn reassign_job(
        &self,
        job_id: &str,
        new_device: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let Some(job) = self.job(job_id).await? else { return Ok(false) };
        if job.state != "queued" || job.device_id == new_device {
            return Ok(false);
        }
        let n = sqlx::query(
            "UPDATE jobs SET device_id = $1, last_error = $2, updated_at_ms = $3 \
             WHERE id = $4 AND device_id = $5 AND state = 'queued'",
        )
        .bind(new_device)
        .bind(format!("moved from {} to {new_device}: {reason}", job.device_id))
        .bind(now_ms)
        .bind(job_id)
        .bind(&job.device_id)
        .execute(&self.pool)
        .await
        .map_err(q("reassign job"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// One campaign.
    pub async fn campaign(&self, id: &str) -> Result<Option<CampaignRow>> {
        let row = sqlx::query(
            "SELECT id, spec, state, created_at_ms, finished_at_ms FROM campaigns WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("get campaign"))?;
        row.map(|r| campaign_from(&r)).transpose().map_err(q("decode campaign"))
    }

    /// Campaigns, newest first, optionally only those in `state`.
    pub async fn campaigns(&self, state: Option<&str>) -> Result<Vec<CampaignRow>> {
        let rows = match state {
            Some(s) => sqlx::query(
                "SELECT id, spec, state, created_at_ms, finished_at_ms FROM campaigns WHERE state = $1 ORDER BY created_at_ms",
            )
            .bind(s)
            .fetch_all(&self.pool)
            .await,
            None => sqlx::query(
                "SELECT id, spec, state, created_at_ms, finished_at_ms FROM campaigns ORDER BY created_at_ms DESC",
            )
            .fetch_all(&self.pool)
            .await,
        }
        .map_err(q("list campaigns"))?;
        rows.iter()
            .map(campaign_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("decode campaign"))
    }

    /// Marks a campaign done.
    pub async fn finish_campaign(&self, id: &str, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE campaigns SET state = 'done', finished_at_ms = $1 WHERE id = $2 AND state = 'running'")
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("finish campaign"))?;
        Ok(())
    }

    /// How many jobs a campaign has: in all, still open (neither done nor failed), failed.
    pub async fn campaign_job_counts(&self, campaign_id: &str) -> Result<JobCounts> {
        let row = sqlx::query(
            "SELECT COUNT(*), \
             COALESCE(SUM(CASE WHEN state IN ('done', 'failed') THEN 0 ELSE 1 END), 0), \
             COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0) \
             FROM jobs WHERE campaign_id = $1",
        )
        .bind(campaign_id)
        .fetch_one(&self.pool)
        .await
        .map_err(q("count campaign jobs"))?;
        let get = |i: usize| row.try_get::<i64, _>(i).map_err(q("decode job counts"));
        Ok(JobCounts { total: get(0)?, open: get(1)?, failed: get(2)? })
    }

    /// Jobs of a campaign in order.
    pub async fn campaign_jobs(&self, campaign_id: &str) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE campaign_id = $1 ORDER BY seq"
        ))
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("campaign jobs"))?;
        rows.iter().map(job_from).collect::<std::result::Result<_, _>>().map_err(q("decode job"))
    }

    /// Jobs in any of the given states, oldest campaign and lowest sequence first.
    pub async fn jobs_in_states(&self, states: &[&str]) -> Result<Vec<JobRow>> {
        let list = states.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
        debug_assert!(states.iter().all(|s| s.chars().all(|c| c.is_ascii_lowercase())));
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE state IN ({list}) ORDER BY campaign_id, seq"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("jobs by state"))?;
        rows.iter().map(job_from).collect::<std::result::Result<_, _>>().map_err(q("decode job"))
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("get job"))?;
        row.map(|r| job_from(&r)).transpose().map_err(q("decode job"))
    }

    /// Records a dispatch: new command id, attempt + 1, deadline. Returns `false` (and changes
    /// nothing) if the job is no longer queued, e.g. its campaign was just cancelled.
    pub async fn mark_dispatched(
        &self,
        job_id: &str,
        command_id: &str,
        now_ms: i64,
        deadline_ms: i64,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE jobs SET state = 'dispatched', attempt = attempt + 1, command_id = $1, dispatched_at_ms = $2, \
             accepted_at_ms = NULL, deadline_ms = $3, updated_at_ms = $4 WHERE id = $5 AND state = 'queued'",
        )
        .bind(command_id)
        .bind(now_ms)
        .bind(deadline_ms)
        .bind(now_ms)
        .bind(job_id)
        .execute(&self.pool)
        .await
        .map_err(q("mark dispatched"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// Records acceptance of the current dispatch; moves the deadline.
    pub async fn mark_accepted(
        &self,
        job_id: &str,
        command_id: &str,
        now_ms: i64,
        deadline_ms: i64,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE jobs SET state = 'running', accepted_at_ms = $1, deadline_ms = $2, updated_at_ms = $3 \
             WHERE id = $4 AND command_id = $5 AND state = 'dispatched'",
        )
        .bind(now_ms)
        .bind(deadline_ms)
        .bind(now_ms)
        .bind(job_id)
        .bind(command_id)
        .execute(&self.pool)
        .await
        .map_err(q("mark accepted"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// Ends the current attempt of an active job: back to `queued` if attempts remain and
    /// `retry` is set, otherwise `failed`. Only applies while the job is still on `command_id`
    /// (or any active command when `None`). Returns the new state if something changed.
    pub async fn end_attempt(
        &self,
        job_id: &str,
        command_id: Option<&str>,
        reason: &str,
        retry: bool,
        now_ms: i64,
    ) -> Result<Option<&'static str>> {
        let Some(job) = self.job(job_id).await? else { return Ok(None) };
        if !matches!(job.state.as_str(), "dispatched" | "running") {
            return Ok(None);
        }
        if command_id.is_some_and(|c| job.command_id.as_deref() != Some(c)) {
            return Ok(None);
        }
        let next = if retry && job.attempt < job.max_attempts { "queued" } else { "failed" };
        let finished = (next == "failed").then_some(now_ms);
        sqlx::query(
            "UPDATE jobs SET state = $1, last_error = $2, finished_at_ms = $3, deadline_ms = NULL, updated_at_ms = $4 \
             WHERE id = $5 AND attempt = $6 AND state IN ('dispatched', 'running')",
        )
        .bind(next)
        .bind(reason)
        .bind(finished)
        .bind(now_ms)
        .bind(job_id)
        .bind(job.attempt)
        .execute(&self.pool)
        .await
        .map_err(q("end attempt"))?;
        Ok(Some(next))
    }

    /// Fails a queued job (e.g. its device stayed offline).
    pub async fn fail_queued(&self, job_id: &str, reason: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'failed', last_error = $1, finished_at_ms = $2, updated_at_ms = $3 \
             WHERE id = $4 AND state = 'queued'",
        )
        .bind(reason)
        .bind(now_ms)
        .bind(now_ms)
        .bind(job_id)
        .execute(&self.pool)
        .await
        .map_err(q("fail queued job"))?;
        Ok(())
    }

    /// Stores a result once per job (later duplicates are ignored) and marks the job done, even
    /// one that had failed (a late result of an attempt that timed out is still a measurement),
    /// unless the job's campaign was cancelled: then nothing is stored and the job stays
    /// failed. Returns `true` if this call stored it.
    pub async fn store_result(&self, r: &NewResult<'_>) -> Result<bool> {
        let l = &r.report.latency;
        let report = serde_json::to_string(r.report).unwrap_or_default();
        let mut tx = self.pool.begin().await.map_err(q("begin result"))?;
        // Locks the campaign row (PostgreSQL) or the database (SQLite) against a concurrent
        // cancel, and finds out whether the campaign was cancelled.
        let open = sqlx::query(
            "UPDATE campaigns SET state = state WHERE id = $1 AND state <> 'cancelled'",
        )
        .bind(&r.job.campaign_id)
        .execute(&mut *tx)
        .await
        .map_err(q("check campaign of result"))?
        .rows_affected();
        if open == 0 {
            tx.rollback().await.map_err(q("rollback result"))?;
            return Ok(false);
        }
        let stored = sqlx::query(&format!(
            "INSERT INTO results ({RESULT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             $15, $16, $17, $18, $19, $20) ON CONFLICT (job_id) DO NOTHING"
        ))
        .bind(&r.job.id)
        .bind(r.result_id)
        .bind(&r.job.campaign_id)
        .bind(&r.job.model_id)
        .bind(&r.job.device_id)
        .bind(r.profile)
        .bind(r.attempt)
        .bind(l.p50_ms)
        .bind(l.p90_ms)
        .bind(l.p99_ms)
        .bind(l.mean_ms)
        .bind(l.std_ms)
        .bind(l.min_ms)
        .bind(l.max_ms)
        .bind(r.report.load_ms)
        .bind(r.report.peak_rss_bytes as i64)
        .bind(i64::from(r.report.iterations))
        .bind(i64::from(r.report.synthetic_inputs))
        .bind(report)
        .bind(r.now_ms)
        .execute(&mut *tx)
        .await
        .map_err(q("insert result"))?
        .rows_affected()
            > 0;
        sqlx::query(
            "UPDATE jobs SET state = 'done', finished_at_ms = $1, deadline_ms = NULL, updated_at_ms = $2 \
             WHERE id = $3 AND state <> 'done'",
        )
        .bind(r.now_ms)
        .bind(r.now_ms)
        .bind(&r.job.id)
        .execute(&mut *tx)
        .await
        .map_err(q("mark job done"))?;
        tx.commit().await.map_err(q("commit result"))?;
        Ok(stored)
    }

    /// Results of a campaign, by job order.
    pub async fn campaign_results(&self, campaign_id: &str) -> Result<Vec<ResultRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM results r JOIN jobs j ON j.id = r.job_id WHERE r.campaign_id = $1 ORDER BY j.seq",
            RESULT_COLS.split(", ").map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", ")
        ))
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("campaign results"))?;
        rows.iter()
            .map(result_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(q("decode result"))
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn campaign_from(row: &AnyRow) -> std::result::Result<CampaignRow, sqlx::Error> {
    Ok(CampaignRow {
        id: row.try_get("id")?,
        spec: json_col(row, "spec"),
        state: row.try_get("state")?,
        created_at_ms: row.try_get("created_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
    })
}

mod deploy;
pub mod imported;
pub mod mlflow;
mod pipelines;
pub mod pki;
#[cfg(test)]
mod tests;

pub use deploy::{
    AlertRow, DeploymentDeviceRow, DeploymentRow, DeviceModelRow, SuggestionRow, TelemetryRow,
};
pub use pipelines::{CandidateRecord, PipelineRow};

/// Databases for unit tests: SQLite in a temporary folder always, and a fresh PostgreSQL
/// database when a server answers at `HONE_TEST_POSTGRES_URL` (default
/// `postgres://postgres@127.0.0.1:5432`). When that variable is set, the server must answer.
#[cfg(test)]
pub(crate) mod testing {
    use super::Db;

    /// One test database.
    pub(crate) struct TestDb {
        /// The database.
        pub(crate) db: Db,
        /// `sqlite` or `postgres`.
        pub(crate) backend: &'static str,
        _dir: Option<tempfile::TempDir>,
        postgres: Option<(String, String)>,
    }

    impl TestDb {
        /// Closes the pool; drops the PostgreSQL database.
        pub(crate) async fn finish(self) {
            self.db.close().await;
            if let Some((server, name)) = self.postgres {
                let admin = Db::open(&format!("{server}/postgres")).await.unwrap();
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&admin.pool)
                    .await
                    .unwrap();
                admin.close().await;
            }
        }
    }

    /// A SQLite database in a temporary folder.
    pub(crate) async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        TestDb {
            db: Db::open(&url).await.unwrap(),
            backend: "sqlite",
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// SQLite, then PostgreSQL if reachable.
    pub(crate) async fn backends() -> Vec<TestDb> {
        let mut out = vec![sqlite().await];
        let required = std::env::var("HONE_TEST_POSTGRES_URL").ok();
        let server =
            required.clone().unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".into());
        // `postgres` is the maintenance database every server has; the test's own is created.
        sqlx::any::install_default_drivers();
        let admin = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&format!("{server}/postgres"))
            .await;
        let admin = match (admin, &required) {
            (Ok(pool), _) => pool,
            (Err(e), Some(_)) => panic!("HONE_TEST_POSTGRES_URL={server} does not answer: {e}"),
            (Err(e), None) => {
                eprintln!("PostgreSQL not reachable at {server} ({e}): SQLite only");
                return out;
            }
        };
        let name = format!("hone_unit_{}", ulid::Ulid::new().to_string().to_lowercase());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
        admin.close().await;
        let db = Db::open(&format!("{server}/{name}")).await.unwrap();
        out.push(TestDb { db, backend: "postgres", _dir: None, postgres: Some((server, name)) });
        out
    }

    /// A valid benchmark report with this median.
    pub(crate) fn report(p50: f64) -> hone_common::bench::BenchReport {
        hone_common::bench::BenchReport {
            execution: Default::default(),
            latency: hone_common::bench::LatencyStats {
                p50_ms: p50,
                p90_ms: p50,
                p99_ms: p50,
                mean_ms: p50,
                std_ms: 0.0,
                min_ms: p50,
                max_ms: p50,
            },
            iterations: 10,
            warmup: 1,
            load_ms: 1.0,
            peak_rss_bytes: 1000,
            synthetic_inputs: true,
            inputs: vec![],
            runtime: "tract".into(),
            mode: Default::default(),
            emulation: Default::default(),
            calibration: None,
            agent_version: "0".into(),
            timeline: vec![],
            throughput: vec![],
            cold_start_ms: None,
            readings: Default::default(),
            served_requests: None,
        }
    }
}
