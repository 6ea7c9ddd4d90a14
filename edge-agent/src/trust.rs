//! The coordinator key the agent trusts, and how it follows a rotation.
//!
//! The agent pins one key (`trusted-coordinator.pub` in its state folder). When a document's
//! signature fails under it, the agent fetches the coordinator's rotation chain
//! (`GET /api/v1/keys`, at most once per [`FETCH_INTERVAL`]), walks it forward from its pinned
//! key checking every statement with the key before it ([`walk`]), and if that reaches a newer
//! key, pins it (atomic writes of the chain, then the key) and verifies the document once more.
//! A chain that does not contain the pinned key, a statement with a bad signature or a fork is
//! refused and the pinned key is kept. Once a newer key is pinned, documents signed by an older
//! one fail like any bad signature.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, VerifyingKey};
use hone_common::artifact::{KeyRotation, rotation_signing_bytes};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Least time between two fetches of the chain.
pub const FETCH_INTERVAL: Duration = Duration::from_secs(60);

/// Messages kept while the chain is fetched (more are refused at once).
const PARKED_MAX: usize = 32;

/// Why a rotation chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The pinned key is in none of the statements.
    #[error("the coordinator's key chain does not contain the pinned key {0}")]
    NotFromPinned(String),
    /// A statement is not signed by the key it hands over from.
    #[error("rotation {sequence} of the coordinator's key chain has a bad signature")]
    BadSignature {
        /// Its position.
        sequence: u64,
    },
    /// The statements do not form one line: numbered out of order, a statement whose old key
    /// is not the previous new key, or a key that appears twice.
    #[error("the coordinator's key chain forks or is out of order at rotation {sequence}")]
    Fork {
        /// The first statement that does not fit.
        sequence: u64,
    },
    /// A key or signature that is not what it should be (hex, length, curve point).
    #[error("rotation {sequence} of the coordinator's key chain is malformed: {what}")]
    Malformed {
        /// Its position.
        sequence: u64,
        /// What is wrong.
        what: String,
    },
}

fn key_of(hex_key: &str, sequence: u64) -> Result<VerifyingKey, ChainError> {
    let bad = |what: &str| ChainError::Malformed { sequence, what: what.into() };
    let bytes = hex::decode(hex_key).map_err(|_| bad("a key is not hex"))?;
    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad("a key is not 32 bytes"))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| bad("a key is not an ed25519 point"))
}

/// Walks `chain` forward from `pinned`: `Ok(Some(key))` is the newest key, reached through
/// statements each signed by the key before it; `Ok(None)`: `pinned` already is the newest.
pub fn walk(
    pinned: &VerifyingKey,
    chain: &[KeyRotation],
) -> Result<Option<VerifyingKey>, ChainError> {
    let mut seen = std::collections::HashSet::new();
    let mut keys = Vec::with_capacity(chain.len());
    for (i, r) in chain.iter().enumerate() {
        let fork = ChainError::Fork { sequence: r.sequence };
        if r.sequence != i as u64 + 1 || (i > 0 && r.old_key != chain[i - 1].new_key) {
            return Err(fork);
        }
        let (old, new) = (key_of(&r.old_key, r.sequence)?, key_of(&r.new_key, r.sequence)?);
        if (i == 0 && !seen.insert(old.to_bytes())) || !seen.insert(new.to_bytes()) {
            return Err(fork);
        }
        keys.push((old, new));
    }
    if keys.last().is_none_or(|(_, new)| new == pinned) {
        return Ok(None);
    }
    let start = keys
        .iter()
        .position(|(old, _)| old == pinned)
        .ok_or_else(|| ChainError::NotFromPinned(hex::encode(pinned.as_bytes())))?;
    for (r, (old, _)) in chain[start..].iter().zip(&keys[start..]) {
        let bad = ChainError::BadSignature { sequence: r.sequence };
        let sig = hex::decode(&r.signature).map_err(|_| bad.clone())?;
        let sig = Signature::from_slice(&sig).map_err(|_| bad.clone())?;
        old.verify_strict(&rotation_signing_bytes(r), &sig).map_err(|_| bad)?;
    }
    Ok(keys.last().map(|(_, new)| *new))
}

/// The chain as fetched, or why it could not be.
pub type Fetched = Result<Vec<KeyRotation>, String>;

/// The trusted key and the state of following a rotation.
#[derive(Debug)]
pub struct Trust {
    key: VerifyingKey,
    state_dir: PathBuf,
    coordinator_url: String,
    last_fetch: Option<Instant>,
    fetching: bool,
    /// Messages (topic, payload) waiting for the fetch, handled again once it ends.
    parked: Vec<(String, Vec<u8>)>,
    /// Set while parked messages are handled again: they are not parked twice.
    pub retrying: bool,
    fetched: mpsc::Sender<Fetched>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// The pinned key's file in the state folder.
pub fn pinned_path(state_dir: &Path) -> PathBuf {
    state_dir.join("trusted-coordinator.pub")
}

/// The last chain the agent followed, kept beside the pinned key.
pub fn chain_path(state_dir: &Path) -> PathBuf {
    state_dir.join("key-chain.json")
}

/// The chain kept in the state folder (empty when none).
pub fn stored_chain(state_dir: &Path) -> Vec<KeyRotation> {
    std::fs::read(chain_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl Trust {
    /// Trusts `key`; fetched chains come back on `fetched`.
    pub fn new(
        key: VerifyingKey,
        state_dir: &Path,
        coordinator_url: &str,
        fetched: mpsc::Sender<Fetched>,
    ) -> Trust {
        Trust {
            key,
            state_dir: state_dir.to_path_buf(),
            coordinator_url: coordinator_url.trim_end_matches('/').to_string(),
            last_fetch: None,
            fetching: false,
            parked: Vec::new(),
            retrying: false,
            fetched,
            tls: None,
        }
    }

    /// Fetches the chain over TLS with the enrolled identity's configuration.
    pub fn set_tls(&mut self, tls: Option<std::sync::Arc<rustls::ClientConfig>>) {
        self.tls = tls;
    }

    /// The key documents are verified with.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// After a bad signature: keeps the message and fetches the chain, unless a fetch is
    /// running (the message waits for it), the last one was less than [`FETCH_INTERVAL`] ago
    /// or the message is being handled again. `true`: the message waits, answer nothing yet.
    pub fn park(&mut self, topic: &str, payload: &[u8]) -> bool {
        if self.retrying || self.parked.len() >= PARKED_MAX {
            return false;
        }
        if !self.fetching {
            if self.last_fetch.is_some_and(|t| t.elapsed() < FETCH_INTERVAL) {
                return false;
            }
            self.fetching = true;
            self.last_fetch = Some(Instant::now());
            let url = format!("{}/api/v1/keys", self.coordinator_url);
            let tx = self.fetched.clone();
            let tls = self.tls.clone();
            info!(%url, "a signature failed under the pinned key: fetching the coordinator's key chain");
            tokio::spawn(async move {
                let _ = tx.send(fetch(&url, tls).await).await;
            });
        }
        self.parked.push((topic.to_string(), payload.to_vec()));
        true
    }

    /// A fetch ended: follows the chain if it leads from the pinned key to a newer one, and
    /// returns the parked messages to handle again.
    pub fn on_fetched(&mut self, fetched: Fetched) -> Vec<(String, Vec<u8>)> {
        self.fetching = false;
        match fetched.map_err(|e| e.to_string()).and_then(|chain| {
            walk(&self.key, &chain).map(|k| (k, chain)).map_err(|e| e.to_string())
        }) {
            Ok((Some(new), chain)) => match self.pin(&new, &chain) {
                Ok(()) => {
                    warn!(old = %hex::encode(self.key.as_bytes()), new = %hex::encode(new.as_bytes()), rotations = chain.len(), "the coordinator rotated its signing key: following its signed chain, pinned the new key");
                    self.key = new;
                }
                Err(e) => {
                    warn!(error = %e, "cannot pin the coordinator's new key: keeping the old one")
                }
            },
            Ok((None, _)) => {
                info!("the coordinator's key chain has no key newer than the pinned one")
            }
            Err(e) => warn!(error = %e, "coordinator key chain refused: keeping the pinned key"),
        }
        std::mem::take(&mut self.parked)
    }

    fn pin(&self, key: &VerifyingKey, chain: &[KeyRotation]) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(chain).map_err(std::io::Error::other)?;
        crate::outbox::write_atomic(&chain_path(&self.state_dir), &bytes)?;
        crate::outbox::write_atomic(
            &pinned_path(&self.state_dir),
            hex::encode(key.as_bytes()).as_bytes(),
        )
    }
}

async fn fetch(url: &str, tls: Option<std::sync::Arc<rustls::ClientConfig>>) -> Fetched {
    let mut client = reqwest::Client::builder();
    if let Some(tls) = tls {
        client = client.use_preconfigured_tls((*tls).clone());
    }
    let client = client.timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let body: serde_json::Value = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("fetching {url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("{url}: not JSON: {e}"))?;
    serde_json::from_value(body["rotations"].clone()).map_err(|e| format!("{url}: rotations: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn hexk(k: &SigningKey) -> String {
        hex::encode(k.verifying_key().as_bytes())
    }

    /// A statement `sequence` from `old` to `new`, signed by `signer`.
    fn statement(
        sequence: u64,
        old: &SigningKey,
        new: &SigningKey,
        signer: &SigningKey,
    ) -> KeyRotation {
        let mut r = KeyRotation {
            sequence,
            old_key: hexk(old),
            new_key: hexk(new),
            issued_at_ms: 1000 + sequence,
            signature: String::new(),
        };
        r.signature = hex::encode(signer.sign(&rotation_signing_bytes(&r)).to_bytes());
        r
    }

    /// k1 -> k2 -> k3, each signed by the key it hands over from.
    fn good_chain() -> Vec<KeyRotation> {
        vec![statement(1, &key(1), &key(2), &key(1)), statement(2, &key(2), &key(3), &key(2))]
    }

    #[test]
    fn a_good_chain_of_two_rotations_leads_from_any_of_its_keys_to_the_newest() {
        let newest = key(3).verifying_key();
        assert_eq!(walk(&key(1).verifying_key(), &good_chain()), Ok(Some(newest)));
        assert_eq!(walk(&key(2).verifying_key(), &good_chain()), Ok(Some(newest)));
        assert_eq!(walk(&newest, &good_chain()), Ok(None), "already the newest");
        assert_eq!(walk(&newest, &[]), Ok(None), "no rotation yet");
    }

    #[test]
    fn a_statement_with_a_bad_signature_is_refused() {
        let mut chain = good_chain();
        chain[1] = statement(2, &key(2), &key(3), &key(9)); // signed by a stranger
        assert_eq!(
            walk(&key(1).verifying_key(), &chain),
            Err(ChainError::BadSignature { sequence: 2 })
        );
        let mut chain = good_chain();
        chain[0].issued_at_ms += 1; // changed after signing
        assert_eq!(
            walk(&key(1).verifying_key(), &chain),
            Err(ChainError::BadSignature { sequence: 1 })
        );
    }

    #[test]
    fn a_chain_that_does_not_reach_the_pinned_key_is_refused() {
        let stranger = key(8).verifying_key();
        assert!(matches!(walk(&stranger, &good_chain()), Err(ChainError::NotFromPinned(_))));
    }

    #[test]
    fn forks_and_disorder_are_refused() {
        let mut fork = good_chain();
        // A second statement from k2: k2 -> k4, signed by k2 (only a holder of k2 can).
        fork.push(statement(3, &key(2), &key(4), &key(2)));
        assert_eq!(walk(&key(1).verifying_key(), &fork), Err(ChainError::Fork { sequence: 3 }));
        let mut back = good_chain();
        back.push(statement(3, &key(3), &key(1), &key(3)));
        assert_eq!(walk(&key(1).verifying_key(), &back), Err(ChainError::Fork { sequence: 3 }));
        let mut shuffled = good_chain();
        shuffled.swap(0, 1);
        assert!(matches!(walk(&key(1).verifying_key(), &shuffled), Err(ChainError::Fork { .. })));
    }

    #[tokio::test]
    async fn a_followed_rotation_is_pinned_and_the_old_key_no_longer_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let mut trust = Trust::new(key(1).verifying_key(), dir.path(), "http://127.0.0.1:1", tx);
        trust.parked.push(("t".into(), b"p".to_vec()));
        let parked = trust.on_fetched(Ok(good_chain()));
        assert_eq!(parked, vec![("t".to_string(), b"p".to_vec())]);
        assert_eq!(trust.key(), &key(3).verifying_key());
        let pinned = std::fs::read_to_string(pinned_path(dir.path())).unwrap();
        assert_eq!(pinned, hexk(&key(3)));
        assert_eq!(stored_chain(dir.path()), good_chain());
        // A document signed by the old key does not verify under the pinned one.
        let msg = b"document";
        let old_sig = key(1).sign(msg);
        assert!(trust.key().verify_strict(msg, &old_sig).is_err());
        // A refused chain keeps the key.
        let mut bad = good_chain();
        bad[1] = statement(2, &key(2), &key(3), &key(9));
        let mut trust =
            Trust::new(key(1).verifying_key(), dir.path(), "http://x", trust.fetched.clone());
        trust.on_fetched(Ok(bad));
        assert_eq!(trust.key(), &key(1).verifying_key());
        trust.on_fetched(Err("unreachable".into()));
        assert_eq!(trust.key(), &key(1).verifying_key());
    }

    #[tokio::test]
    async fn the_chain_is_fetched_at_most_once_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let mut trust = Trust::new(key(1).verifying_key(), dir.path(), "http://127.0.0.1:1", tx);
        assert!(trust.park("t", b"1"), "the first failure fetches");
        assert!(trust.park("t", b"2"), "waits for the fetch in progress");
        let fetched = rx.recv().await.unwrap();
        assert!(fetched.is_err(), "nothing listens there");
        assert_eq!(trust.on_fetched(fetched).len(), 2);
        assert!(!trust.park("t", b"3"), "no second fetch within a minute");
        trust.last_fetch = Some(Instant::now() - FETCH_INTERVAL);
        trust.retrying = true;
        assert!(!trust.park("t", b"4"), "a message handled again is not parked again");
        trust.retrying = false;
        assert!(trust.park("t", b"5"), "a minute later it fetches again");
    }
}
