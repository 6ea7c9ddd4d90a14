//! Content-addressed artifact storage and the coordinator's signing key.
//!
//! Artifacts live at `{data}/artifacts/{sha256}.onnx`, written once through a temporary file
//! and an atomic rename. The ed25519 key lives at `{data}/keys/coordinator.ed25519` (hex, mode
//! 0600), created on first start; only its public half ever leaves the coordinator.
//!
//! The key signs whole job documents ([`Signer::sign_job`]), and a key derived from it signs
//! artifact capabilities: `GET /artifacts/{sha}?exp=E&cap=C` serves the bytes only when `C` is
//! the HMAC-SHA256 of that digest and expiry and `E` is in the future
//! ([`Signer::artifact_url`], [`Signer::check_capability`]). Agents need no API token.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use hone_common::artifact::{activation_signing_bytes, signing_bytes};
use hone_common::wire::{ActivateCommand, JobCommand};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The artifact directory.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
}

/// A file being written into the store; hashed while written.
pub struct Incoming {
    tmp: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

/// Errors while receiving an artifact.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    /// Over the size limit.
    #[error("model exceeds the {limit}-byte upload limit")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Disk error.
    #[error("artifact store: {0}")]
    Io(#[from] std::io::Error),
}

impl ArtifactStore {
    /// Opens (creating) the store.
    pub fn open(dir: &Path) -> std::io::Result<ArtifactStore> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(ArtifactStore { dir: dir.to_path_buf() })
    }

    /// Path of a stored artifact (it may not exist).
    pub fn path(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join(format!("{sha256_hex}.onnx"))
    }

    /// Starts receiving a new artifact of at most `limit` bytes.
    pub async fn begin(&self, limit: u64) -> std::io::Result<Incoming> {
        let tmp = self.dir.join("tmp").join(ulid::Ulid::new().to_string());
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(Incoming { tmp, file, hasher: Sha256::new(), size: 0, limit })
    }
}

impl Incoming {
    /// Appends bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), IncomingError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(IncomingError::TooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await?;
        Ok(())
    }

    /// Finishes writing; returns the temporary path, digest and size. The caller validates the
    /// file, then calls [`Incoming::commit`] or [`Incoming::discard`].
    pub async fn finish(mut self) -> Result<Received, IncomingError> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        Ok(Received { tmp: self.tmp, sha256: self.hasher.finalize().into(), size: self.size })
    }
}

/// A fully received, not yet committed artifact.
#[derive(Debug)]
pub struct Received {
    /// Temporary file.
    pub tmp: PathBuf,
    /// Digest.
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
}

impl Received {
    /// Moves the file to its content address.
    pub async fn commit(self, store: &ArtifactStore) -> std::io::Result<PathBuf> {
        let dest = store.path(&hex::encode(self.sha256));
        tokio::fs::rename(&self.tmp, &dest).await?;
        Ok(dest)
    }

    /// Deletes the temporary file.
    pub async fn discard(self) {
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

/// The coordinator's artifact-signing key.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public_hex())
    }
}

impl Signer {
    /// Loads the key at `path`, creating it (mode 0600) if absent.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Signer> {
        use anyhow::Context;
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let bytes = hex::decode(text.trim()).context("signing key is not hex")?;
            let arr: [u8; 32] =
                bytes.as_slice().try_into().context("signing key must be 32 bytes")?;
            return Ok(Signer { key: SigningKey::from_bytes(&arr) });
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| anyhow::anyhow!("no randomness for the signing key: {e}"))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, hex::encode(seed))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(Signer { key: SigningKey::from_bytes(&seed) })
    }

    /// A signer from raw seed bytes (tests).
    pub fn from_seed(seed: [u8; 32]) -> Signer {
        Signer { key: SigningKey::from_bytes(&seed) }
    }

    /// Public key.
    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Public key, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.public().as_bytes())
    }

    /// The job with its signature over every other field.
    pub fn sign_job(&self, mut job: JobCommand) -> JobCommand {
        job.signature = self.key.sign(&signing_bytes(&job)).to_bytes().to_vec();
        job
    }

    /// The activation command with its signature over every other field.
    pub fn sign_activation(&self, mut cmd: ActivateCommand) -> ActivateCommand {
        cmd.signature = self.key.sign(&activation_signing_bytes(&cmd)).to_bytes().to_vec();
        cmd
    }

    /// The HMAC of an artifact capability, keyed by a key derived from the signing key (so one
    /// secret file holds both).
    fn capability_mac(&self, sha256_hex: &str, expires_at_ms: u64) -> Hmac<Sha256> {
        let mut derive = Sha256::new();
        derive.update(CAPABILITY_KEY_DOMAIN);
        derive.update(self.key.to_bytes());
        let mut mac = Hmac::<Sha256>::new_from_slice(&derive.finalize())
            .expect("HMAC takes keys of any length");
        mac.update(CAPABILITY_DOMAIN);
        mac.update(sha256_hex.as_bytes());
        mac.update(&expires_at_ms.to_be_bytes());
        mac
    }

    /// The URL of an artifact under `base`, with a capability valid until `expires_at_ms`.
    pub fn artifact_url(&self, base: &str, sha256_hex: &str, expires_at_ms: u64) -> String {
        let cap =
            hex::encode(self.capability_mac(sha256_hex, expires_at_ms).finalize().into_bytes());
        format!(
            "{}/artifacts/{sha256_hex}?exp={expires_at_ms}&cap={cap}",
            base.trim_end_matches('/')
        )
    }

    /// Whether `cap` grants `sha256_hex` until `expires_at_ms`, and that is not past `now_ms`.
    /// The comparison is constant-time.
    pub fn check_capability(
        &self,
        sha256_hex: &str,
        expires_at_ms: u64,
        cap_hex: &str,
        now_ms: u64,
    ) -> bool {
        let Ok(cap) = hex::decode(cap_hex) else { return false };
        now_ms <= expires_at_ms
            && self.capability_mac(sha256_hex, expires_at_ms).verify_slice(&cap).is_ok()
    }
}

/// Domain of the key derivation for artifact capabilities.
const CAPABILITY_KEY_DOMAIN: &[u8] = b"hone-artifact-capability-key-v1\0";
/// Domain of the capability MAC.
const CAPABILITY_DOMAIN: &[u8] = b"hone-artifact-capability-v1\0";

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobCommand {
        JobCommand {
            command_id: "c".into(),
            job_id: "j".into(),
            attempt: 1,
            artifact: hone_common::wire::ArtifactRef {
                artifact_id: "m".into(),
                sha256: [1; 32],
                size: 10,
                url: "http://x".into(),
                expires_at_ms: 99,
            },
            spec: Default::default(),
            timeout_ms: 5,
            signature: vec![],
        }
    }

    #[test]
    fn job_signatures_verify_against_the_public_key_only_for_the_signed_document() {
        let s = Signer::from_seed([3; 32]);
        let signed = s.sign_job(job());
        let sig = ed25519_dalek::Signature::from_slice(&signed.signature).unwrap();
        let pk = s.public();
        assert!(pk.verify_strict(&signing_bytes(&signed), &sig).is_ok());
        let mut other = signed.clone();
        other.timeout_ms += 1;
        assert!(pk.verify_strict(&signing_bytes(&other), &sig).is_err());
    }

    #[test]
    fn capabilities_grant_one_artifact_until_their_expiry() {
        let s = Signer::from_seed([3; 32]);
        let sha = "ab".repeat(32);
        let url = s.artifact_url("http://c:1/", &sha, 1000);
        let query = url.split_once('?').unwrap().1;
        assert!(url.starts_with(&format!("http://c:1/artifacts/{sha}?exp=1000&cap=")), "{url}");
        let cap = query.split_once("cap=").unwrap().1;
        assert!(s.check_capability(&sha, 1000, cap, 1000));
        assert!(!s.check_capability(&sha, 1000, cap, 1001), "expired");
        assert!(!s.check_capability(&sha, 2000, cap, 1000), "another expiry");
        assert!(!s.check_capability(&"cd".repeat(32), 1000, cap, 1000), "another artifact");
        assert!(!s.check_capability(&sha, 1000, "zz", 1000), "not hex");
        assert!(!Signer::from_seed([4; 32]).check_capability(&sha, 1000, cap, 1000), "another key");
    }

    #[test]
    fn key_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/k");
        let a = Signer::load_or_create(&path).unwrap();
        let b = Signer::load_or_create(&path).unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn uploads_over_the_limit_are_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let mut inc = store.begin(4).await.unwrap();
        inc.write(b"abc").await.unwrap();
        assert!(matches!(inc.write(b"de").await, Err(IncomingError::TooLarge { limit: 4 })));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
