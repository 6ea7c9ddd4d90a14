//! Content-addressed artifact storage and the coordinator's signing key.
//!
//! Artifacts live at `{data}/artifacts/{sha256}.onnx`, written once through a temporary file
//! and an atomic rename. The ed25519 key lives at `{data}/keys/coordinator.ed25519` (hex, mode
//! 0600), created on first start; only its public half ever leaves the coordinator.
//!
//! The key signs whole job documents ([`Signer::sign_job`]), each with the next number of the
//! sequence clock ([`SeqClock`]). `coordinator keys rotate` replaces it ([`Signer::rotate`]):
//! the old key signs a statement handing over to the new one, kept in
//! `{data}/keys/rotations.json` and served at `GET /api/v1/keys`, so agents that pinned the old
//! key move to the new one by themselves. A key derived from the signing key signs
//! artifact capabilities: `GET /artifacts/{sha}?exp=E&cap=C` serves the bytes only when `C` is
//! the HMAC-SHA256 of that digest and expiry and `E` is in the future
//! ([`Signer::artifact_url`], [`Signer::check_capability`]). Agents need no API token.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use hone_common::artifact::{
    KeyRotation, activation_signing_bytes, rotation_signing_bytes, signing_bytes,
};
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

/// The coordinator's artifact-signing key, its rotation chain and its sequence clock.
///
/// Clones share one state: a rotation ([`Signer::rotate`]) is seen at once by the engine, the
/// rollout and the API.
#[derive(Clone)]
pub struct Signer {
    keys: Arc<RwLock<Keys>>,
    clock: Arc<SeqClock>,
    /// The key file (`None` for a signer made from a seed in tests: it cannot rotate).
    path: Option<PathBuf>,
}

struct Keys {
    key: SigningKey,
    /// Every rotation so far, oldest first (`keys/rotations.json`).
    chain: Vec<KeyRotation>,
    /// Keys rotated away by this process: capabilities they made stay valid until expiry.
    retired: Vec<SigningKey>,
}

/// The sequence numbers of signed documents: `max(now in µs, last + 1)`, so strictly
/// increasing, and seeded at start from a floor kept in the database
/// ([`crate::db::Db::signing_floor`]) so that a restart continues above every number issued
/// before.
#[derive(Debug, Default)]
pub struct SeqClock {
    last: AtomicU64,
}

impl SeqClock {
    /// The next number.
    pub fn next(&self) -> u64 {
        let now = now_us();
        let prev = self
            .last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| Some(now.max(l + 1)))
            .expect("the update always returns Some");
        now.max(prev + 1)
    }

    /// The last number issued (or the floor it was seeded with).
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::SeqCst)
    }

    /// Makes every later number larger than `floor`.
    pub fn seed(&self, floor: u64) {
        self.last.fetch_max(floor, Ordering::SeqCst);
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public_hex())
    }
}

/// The file of the rotation chain, beside the key.
fn chain_path(key: &Path) -> PathBuf {
    key.with_file_name("rotations.json")
}

/// The new key while a rotation is being written.
fn next_key_path(key: &Path) -> PathBuf {
    key.with_extension("next")
}

fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = hex::decode(text.trim()).context("signing key is not hex")?;
    let arr: [u8; 32] = bytes.as_slice().try_into().context("signing key must be 32 bytes")?;
    Ok(SigningKey::from_bytes(&arr))
}

/// Writes a secret key file (mode 0600) through a temporary file and a rename.
fn write_key(path: &Path, seed: &[u8; 32]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, hex::encode(seed))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path);
    Ok(())
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

fn random_seed() -> anyhow::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| anyhow::anyhow!("no randomness for the signing key: {e}"))?;
    Ok(seed)
}

impl Signer {
    /// Loads the key at `path` and its rotation chain beside it, creating the key (mode 0600)
    /// if absent. A rotation interrupted after its statement was written is finished here (the
    /// new key file is moved into place); one interrupted before is forgotten.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Signer> {
        use anyhow::Context;
        let chain: Vec<KeyRotation> = match std::fs::read(chain_path(path)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", chain_path(path).display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let next = next_key_path(path);
        if next.exists() {
            let pending = read_key(&next)?;
            let stated = chain.last().map(|r| r.new_key.as_str());
            if stated == Some(hex::encode(pending.verifying_key().as_bytes()).as_str()) {
                std::fs::rename(&next, path)?;
                sync_dir(path);
                tracing::warn!("finished a key rotation that was interrupted");
            } else {
                std::fs::remove_file(&next)?;
                tracing::warn!(
                    "discarded the new key of a rotation that was interrupted before its statement was written"
                );
            }
        }
        let key = if path.exists() {
            read_key(path)?
        } else {
            anyhow::ensure!(
                chain.is_empty(),
                "{} is missing but {} records rotations: restore the key from its backup",
                path.display(),
                chain_path(path).display()
            );
            let seed = random_seed()?;
            write_key(path, &seed)?;
            SigningKey::from_bytes(&seed)
        };
        if let Some(last) = chain.last() {
            let public = hex::encode(key.verifying_key().as_bytes());
            anyhow::ensure!(
                last.new_key == public,
                "the signing key {} ({public}) is not the last key of {} ({}): restore both from \
                 the same backup",
                path.display(),
                chain_path(path).display(),
                last.new_key
            );
        }
        Ok(Signer {
            keys: Arc::new(RwLock::new(Keys { key, chain, retired: Vec::new() })),
            clock: Arc::new(SeqClock::default()),
            path: Some(path.to_path_buf()),
        })
    }

    /// A signer from raw seed bytes (tests); it cannot rotate.
    pub fn from_seed(seed: [u8; 32]) -> Signer {
        Signer {
            keys: Arc::new(RwLock::new(Keys {
                key: SigningKey::from_bytes(&seed),
                chain: Vec::new(),
                retired: Vec::new(),
            })),
            clock: Arc::new(SeqClock::default()),
            path: None,
        }
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The sequence clock every signed document takes its number from.
    pub fn clock(&self) -> &SeqClock {
        &self.clock
    }

    /// Public key.
    pub fn public(&self) -> VerifyingKey {
        self.keys().key.verifying_key()
    }

    /// Public key, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.public().as_bytes())
    }

    /// Every rotation so far, oldest first.
    pub fn chain(&self) -> Vec<KeyRotation> {
        self.keys().chain.clone()
    }

    /// The job with the next sequence number and its signature over every other field.
    pub fn sign_job(&self, mut job: JobCommand) -> JobCommand {
        job.seq = self.clock.next();
        job.signature = self.keys().key.sign(&signing_bytes(&job)).to_bytes().to_vec();
        job
    }

    /// The activation command with the next sequence number and its signature over every other
    /// field.
    pub fn sign_activation(&self, mut cmd: ActivateCommand) -> ActivateCommand {
        cmd.seq = self.clock.next();
        cmd.signature = self.keys().key.sign(&activation_signing_bytes(&cmd)).to_bytes().to_vec();
        cmd
    }

    /// Replaces the signing key with a new one: a statement signed by the old key hands over to
    /// it and is appended to the chain (`keys/rotations.json`), then the new key replaces the
    /// old one in its file and in every clone of this signer. Crash-safe: the new key is
    /// written to `coordinator.next` first, the chain second, the rename last, and
    /// [`Signer::load_or_create`] finishes or forgets an interrupted rotation. The old secret
    /// is deleted from disk (it stays in memory only to accept the artifact capabilities it
    /// made until they expire).
    pub fn rotate(&self) -> anyhow::Result<KeyRotation> {
        let path =
            self.path.clone().ok_or_else(|| anyhow::anyhow!("this signer has no key file"))?;
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let seed = random_seed()?;
        let new = SigningKey::from_bytes(&seed);
        let mut statement = KeyRotation {
            sequence: keys.chain.len() as u64 + 1,
            old_key: hex::encode(keys.key.verifying_key().as_bytes()),
            new_key: hex::encode(new.verifying_key().as_bytes()),
            issued_at_ms: hone_common::clock::now_ms(),
            signature: String::new(),
        };
        statement.signature =
            hex::encode(keys.key.sign(&rotation_signing_bytes(&statement)).to_bytes());
        write_key(&next_key_path(&path), &seed)?;
        let mut chain = keys.chain.clone();
        chain.push(statement.clone());
        let chain_file = chain_path(&path);
        let tmp = chain_file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&chain)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &chain_file)?;
        std::fs::rename(next_key_path(&path), &path)?;
        sync_dir(&path);
        let old = std::mem::replace(&mut keys.key, new);
        keys.retired.push(old);
        keys.chain = chain;
        Ok(statement)
    }

    /// The HMAC of an artifact capability, keyed by a key derived from the signing key (so one
    /// secret file holds both).
    fn capability_mac(key: &SigningKey, sha256_hex: &str, expires_at_ms: u64) -> Hmac<Sha256> {
        let mut derive = Sha256::new();
        derive.update(CAPABILITY_KEY_DOMAIN);
        derive.update(key.to_bytes());
        let mut mac = Hmac::<Sha256>::new_from_slice(&derive.finalize())
            .expect("HMAC takes keys of any length");
        mac.update(CAPABILITY_DOMAIN);
        mac.update(sha256_hex.as_bytes());
        mac.update(&expires_at_ms.to_be_bytes());
        mac
    }

    /// The URL of an artifact under `base`, with a capability valid until `expires_at_ms`.
    pub fn artifact_url(&self, base: &str, sha256_hex: &str, expires_at_ms: u64) -> String {
        let cap = hex::encode(
            Signer::capability_mac(&self.keys().key, sha256_hex, expires_at_ms)
                .finalize()
                .into_bytes(),
        );
        format!(
            "{}/artifacts/{sha256_hex}?exp={expires_at_ms}&cap={cap}",
            base.trim_end_matches('/')
        )
    }

    /// Whether `cap` grants `sha256_hex` until `expires_at_ms`, and that is not past `now_ms`.
    /// The comparison is constant-time. Capabilities made by a key this process rotated away
    /// stay valid until they expire.
    pub fn check_capability(
        &self,
        sha256_hex: &str,
        expires_at_ms: u64,
        cap_hex: &str,
        now_ms: u64,
    ) -> bool {
        let Ok(cap) = hex::decode(cap_hex) else { return false };
        let keys = self.keys();
        now_ms <= expires_at_ms
            && std::iter::once(&keys.key).chain(&keys.retired).any(|key| {
                Signer::capability_mac(key, sha256_hex, expires_at_ms).verify_slice(&cap).is_ok()
            })
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
            seq: 0,
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

    #[test]
    fn the_sequence_clock_only_goes_up_and_starts_above_its_floor() {
        let c = SeqClock::default();
        let a = c.next();
        let b = c.next();
        assert!(b > a && a >= now_us() - 60_000_000);
        c.seed(u64::MAX / 2);
        assert_eq!(c.next(), u64::MAX / 2 + 1, "a floor ahead of the clock wins");
        c.seed(5);
        assert_eq!(c.next(), u64::MAX / 2 + 2, "a lower floor changes nothing");
        let s = Signer::from_seed([3; 32]);
        let (j1, j2) = (s.sign_job(job()), s.sign_job(job()));
        assert!(j2.seq > j1.seq && j1.seq > 0);
    }

    #[test]
    fn a_rotation_is_signed_by_the_old_key_kept_on_disk_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/coordinator.ed25519");
        let s = Signer::load_or_create(&path).unwrap();
        let clone = s.clone();
        let k0 = s.public();
        let url = s.artifact_url("", &"ab".repeat(32), 1000);
        let cap = url.split_once("cap=").unwrap().1.to_string();
        let r1 = s.rotate().unwrap();
        let r2 = s.rotate().unwrap();
        assert_eq!((r1.sequence, r2.sequence), (1, 2));
        assert_eq!(r1.old_key, hex::encode(k0.as_bytes()));
        assert_eq!(r2.old_key, r1.new_key);
        assert_eq!(clone.public_hex(), r2.new_key, "every clone signs with the new key");
        let sig =
            ed25519_dalek::Signature::from_slice(&hex::decode(&r1.signature).unwrap()).unwrap();
        assert!(k0.verify_strict(&rotation_signing_bytes(&r1), &sig).is_ok());
        assert!(s.check_capability(&"ab".repeat(32), 1000, &cap, 10), "old capabilities live on");
        let signed = s.sign_job(job());
        let sig = ed25519_dalek::Signature::from_slice(&signed.signature).unwrap();
        assert!(k0.verify_strict(&signing_bytes(&signed), &sig).is_err(), "not the old key");
        let again = Signer::load_or_create(&path).unwrap();
        assert_eq!(again.public_hex(), r2.new_key);
        assert_eq!(again.chain(), vec![r1, r2]);
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(files.len(), 2, "the key and the chain, nothing else (the old secret is gone)");
    }

    #[test]
    fn an_interrupted_rotation_is_finished_or_forgotten_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/coordinator.ed25519");
        let s = Signer::load_or_create(&path).unwrap();
        let before = s.public_hex();
        // Crashed before the statement: the stray new key is dropped.
        write_key(&next_key_path(&path), &[9; 32]).unwrap();
        assert_eq!(Signer::load_or_create(&path).unwrap().public_hex(), before);
        assert!(!next_key_path(&path).exists());
        // Crashed after the statement, before the rename: the rotation is finished.
        let r = s.rotate().unwrap();
        std::fs::copy(&path, next_key_path(&path)).unwrap();
        write_key(&path, &[1; 32]).unwrap();
        assert_eq!(Signer::load_or_create(&path).unwrap().public_hex(), r.new_key);
        // A key that is not the chain's last is refused.
        write_key(&path, &[2; 32]).unwrap();
        let e = Signer::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("not the last key"), "{e}");
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
