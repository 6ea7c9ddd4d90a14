//! The model store: verified downloads, kept on disk by digest.
//!
//! Order of checks for a job (nothing is acted on or parsed before all of them pass):
//! 1. expiry of the job document ([`verify_job`]);
//! 2. the ed25519 signature over the whole job document (every field but the signature: ids,
//!    artifact, URL, benchmark spec, timeout, sequence number) against the trusted coordinator
//!    key;
//! 3. the sequence number: above the last job the agent accepted, or that same command again
//!    (a redelivery). Only a [`VerifiedJob`] can be fetched;
//! 4. download to `tmp/{sha}.part`, resuming with HTTP `Range` when a partial file exists, and
//!    aborting as soon as more than the declared size arrives (endless-data defence);
//! 5. SHA-256 of the complete file; only then an atomic rename into `models/{sha}.onnx`.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, VerifyingKey};
use hone_common::artifact::{activation_signing_bytes, signing_bytes};
use hone_common::wire::{ActivateCommand, ArtifactRef, FailureKind, JobCommand};

use crate::outbox::Accepted;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why an artifact was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Past its expiry.
    #[error("job document expired at {expires_at_ms} (now {now_ms})")]
    Expired {
        /// Expiry, Unix ms.
        expires_at_ms: u64,
        /// Now, Unix ms.
        now_ms: u64,
    },
    /// No signature.
    #[error("job `{0}` is unsigned")]
    Unsigned(String),
    /// Signature does not verify over the document as received.
    #[error("job `{0}` has an invalid signature (a field was changed, or another key signed it)")]
    BadSignature(String),
    /// A signed document whose sequence number is not above the last one of its kind the agent
    /// accepted (and not a redelivery of that one): an old document replayed, or a stream held
    /// back and released late. Nothing in it is acted on.
    #[error(
        "document sequence {seq} is not above {last}, the last this agent accepted: a replayed or out-of-date document, refused"
    )]
    Replayed {
        /// Its sequence number.
        seq: u64,
        /// The last accepted one.
        last: u64,
    },
    /// More bytes than declared.
    #[error("server sent more than the declared {declared} bytes")]
    SizeExceeded {
        /// Declared size.
        declared: u64,
    },
    /// Hash mismatch.
    #[error("downloaded bytes hash to {actual}, expected {expected}")]
    HashMismatch {
        /// Expected hex digest.
        expected: String,
        /// Actual hex digest.
        actual: String,
    },
    /// Network or HTTP failure; retrying may help (the partial file is kept for resume).
    #[error("download failed: {0}")]
    Download(String),
    /// Local disk failure.
    #[error("model store: {0}")]
    Io(#[from] std::io::Error),
}

impl ArtifactError {
    /// The wire failure category.
    pub fn kind(&self) -> FailureKind {
        match self {
            ArtifactError::Expired { .. } => FailureKind::Expired,
            ArtifactError::Unsigned(_) => FailureKind::Unsigned,
            ArtifactError::BadSignature(_) => FailureKind::BadSignature,
            ArtifactError::Replayed { .. } => FailureKind::Replayed,
            ArtifactError::SizeExceeded { .. } => FailureKind::SizeExceeded,
            ArtifactError::HashMismatch { .. } => FailureKind::HashMismatch,
            ArtifactError::Download(_) => FailureKind::Download,
            ArtifactError::Io(_) => FailureKind::Internal,
        }
    }
}

/// Models on disk, by digest.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
    http: reqwest::Client,
}

/// What a fetch did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Verified model file.
    pub path: PathBuf,
    /// Bytes received over the network by this call.
    pub bytes_downloaded: u64,
    /// Whether the download resumed a partial file.
    pub resumed: bool,
}

impl ModelStore {
    /// Opens (creating) a store under `root`.
    pub fn open(root: &Path) -> std::io::Result<ModelStore> {
        ModelStore::open_tls(root, None)
    }

    /// Opens (creating) a store under `root` that downloads over TLS with `tls` (the enrolled
    /// identity's configuration: the coordinator's CA, the device certificate).
    pub fn open_tls(
        root: &Path,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> std::io::Result<ModelStore> {
        std::fs::create_dir_all(root.join("models"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        let mut http = reqwest::Client::builder();
        if let Some(tls) = tls {
            http = http.use_preconfigured_tls((*tls).clone());
        }
        // No idle connection is kept: an agent downloads a model now and then, and a fleet's
        // idle connections would each hold a socket on the coordinator (at 10,000 agents they
        // and the MQTT sessions passed the file limit of a simulated fleet).
        let http = http
            .pool_max_idle_per_host(0)
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(ModelStore { root: root.to_path_buf(), http })
    }

    /// Path a verified model with this digest has in the store.
    pub fn model_path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.root.join("models").join(format!("{}.onnx", hex::encode(sha256)))
    }

    fn part_path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.root.join("tmp").join(format!("{}.part", hex::encode(sha256)))
    }

    /// Downloads (resuming) and verifies the bytes of a verified job's artifact, and returns the
    /// stored file. Nothing unverified is ever left under `models/`.
    pub async fn fetch_verified(&self, job: &VerifiedJob) -> Result<Fetched, ArtifactError> {
        self.fetch(&job.artifact).await
    }

    /// [`Self::fetch_verified`] for a verified activation; `None` when it stops serving.
    pub async fn fetch_activation(
        &self,
        cmd: &VerifiedActivation,
    ) -> Result<Option<Fetched>, ArtifactError> {
        match &cmd.artifact {
            Some(artifact) => self.fetch(artifact).await.map(Some),
            None => Ok(None),
        }
    }

    async fn fetch(&self, artifact: &ArtifactRef) -> Result<Fetched, ArtifactError> {
        let final_path = self.model_path(&artifact.sha256);
        if final_path.exists() && file_sha256(&final_path).await? == artifact.sha256 {
            return Ok(Fetched { path: final_path, bytes_downloaded: 0, resumed: false });
        }
        let part = self.part_path(&artifact.sha256);
        let (downloaded, resumed) = self.download(artifact, &part).await?;
        let actual = file_sha256(&part).await?;
        if actual != artifact.sha256 {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(ArtifactError::HashMismatch {
                expected: hex::encode(artifact.sha256),
                actual: hex::encode(actual),
            });
        }
        tokio::fs::rename(&part, &final_path).await?;
        Ok(Fetched { path: final_path, bytes_downloaded: downloaded, resumed })
    }

    async fn download(
        &self,
        artifact: &hone_common::wire::ArtifactRef,
        part: &Path,
    ) -> Result<(u64, bool), ArtifactError> {
        let mut have = tokio::fs::metadata(part).await.map(|m| m.len()).unwrap_or(0);
        if have > artifact.size {
            tokio::fs::remove_file(part).await?;
            have = 0;
        }
        if have == artifact.size && have > 0 {
            return Ok((0, true));
        }
        let mut req = self.http.get(&artifact.url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut resp = req.send().await.map_err(|e| ArtifactError::Download(e.to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            // Our partial file does not fit the server's file: start over next time.
            let _ = tokio::fs::remove_file(part).await;
        }
        if have > 0 && status == reqwest::StatusCode::PARTIAL_CONTENT {
            let starts_at_have = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {have}-")));
            if !starts_at_have {
                let _ = tokio::fs::remove_file(part).await;
                return Err(ArtifactError::Download(format!(
                    "GET {} answered 206 for a range not starting at byte {have}",
                    artifact.url
                )));
            }
        }
        let resumed = have > 0 && status == reqwest::StatusCode::PARTIAL_CONTENT;
        if !status.is_success() {
            return Err(ArtifactError::Download(format!("GET {} answered {status}", artifact.url)));
        }
        if !resumed {
            have = 0;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(part)
            .await?;
        let mut received = 0u64;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    file.flush().await?;
                    return Err(ArtifactError::Download(e.to_string()));
                }
            };
            if have + received + chunk.len() as u64 > artifact.size {
                drop(file);
                let _ = tokio::fs::remove_file(part).await;
                return Err(ArtifactError::SizeExceeded { declared: artifact.size });
            }
            file.write_all(&chunk).await?;
            received += chunk.len() as u64;
        }
        file.flush().await?;
        file.sync_all().await?;
        if have + received < artifact.size {
            return Err(ArtifactError::Download(format!(
                "body ended after {} of {} bytes (kept for resume)",
                have + received,
                artifact.size
            )));
        }
        Ok((received, resumed))
    }
}

/// A job document whose expiry and signature were checked. The only way to fetch an artifact.
#[derive(Debug, Clone)]
pub struct VerifiedJob(JobCommand);

impl std::ops::Deref for VerifiedJob {
    type Target = JobCommand;

    fn deref(&self) -> &JobCommand {
        &self.0
    }
}

impl VerifiedJob {
    /// The verified document.
    pub fn into_inner(self) -> JobCommand {
        self.0
    }
}

/// Checks a job document's expiry, then its signature over every field
/// ([`hone_common::artifact::signing_bytes`]), then its sequence number against `last`, the
/// last job this agent accepted ([`check_seq`]). On failure the document comes back with the
/// reason, so the agent can report it without acting on it. The caller records the sequence
/// number of a verified job ([`crate::outbox::Durable::accept`]) before acting on it.
pub fn verify_job(
    job: JobCommand,
    trusted: &VerifyingKey,
    now_ms: u64,
    last: Option<&Accepted>,
) -> Result<VerifiedJob, Box<(JobCommand, ArtifactError)>> {
    match check_job(&job, trusted, now_ms).and_then(|()| check_seq(job.seq, &job.command_id, last))
    {
        Ok(()) => Ok(VerifiedJob(job)),
        Err(e) => Err(Box::new((job, e))),
    }
}

/// A signed document's sequence number must be above the last accepted one of its kind, unless
/// it carries that document's command id (the same command delivered again, which the seen-
/// command log answers idempotently).
pub fn check_seq(seq: u64, command_id: &str, last: Option<&Accepted>) -> Result<(), ArtifactError> {
    match last {
        Some(l) if seq <= l.seq && command_id != l.command_id => {
            Err(ArtifactError::Replayed { seq, last: l.seq })
        }
        _ => Ok(()),
    }
}

fn check_job(job: &JobCommand, trusted: &VerifyingKey, now_ms: u64) -> Result<(), ArtifactError> {
    let expires_at_ms = job.artifact.expires_at_ms;
    if now_ms > expires_at_ms {
        return Err(ArtifactError::Expired { expires_at_ms, now_ms });
    }
    if job.signature.is_empty() {
        return Err(ArtifactError::Unsigned(job.job_id.clone()));
    }
    let sig = Signature::from_slice(&job.signature)
        .map_err(|_| ArtifactError::BadSignature(job.job_id.clone()))?;
    trusted
        .verify_strict(&signing_bytes(job), &sig)
        .map_err(|_| ArtifactError::BadSignature(job.job_id.clone()))
}

/// An activation document whose expiry and signature were checked: the only way to fetch a
/// model for serving.
#[derive(Debug, Clone)]
pub struct VerifiedActivation(ActivateCommand);

impl std::ops::Deref for VerifiedActivation {
    type Target = ActivateCommand;

    fn deref(&self) -> &ActivateCommand {
        &self.0
    }
}

/// [`verify_job`] for an activation ([`hone_common::artifact::activation_signing_bytes`]);
/// `last` is the last activation this agent accepted.
pub fn verify_activation(
    cmd: ActivateCommand,
    trusted: &VerifyingKey,
    now_ms: u64,
    last: Option<&Accepted>,
) -> Result<VerifiedActivation, Box<(ActivateCommand, ArtifactError)>> {
    let checked = (|| {
        if let Some(a) = &cmd.artifact
            && now_ms > a.expires_at_ms
        {
            return Err(ArtifactError::Expired { expires_at_ms: a.expires_at_ms, now_ms });
        }
        if cmd.signature.is_empty() {
            return Err(ArtifactError::Unsigned(cmd.command_id.clone()));
        }
        let sig = Signature::from_slice(&cmd.signature)
            .map_err(|_| ArtifactError::BadSignature(cmd.command_id.clone()))?;
        trusted
            .verify_strict(&activation_signing_bytes(&cmd), &sig)
            .map_err(|_| ArtifactError::BadSignature(cmd.command_id.clone()))?;
        check_seq(cmd.seq, &cmd.command_id, last)
    })();
    match checked {
        Ok(()) => Ok(VerifiedActivation(cmd)),
        Err(e) => Err(Box::new((cmd, e))),
    }
}

async fn file_sha256(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests;
