//! The agent's identity on a TLS fleet (issue 15): enrolment with a one-time token, the client
//! certificate it presents to the broker and the coordinator, renewal, and re-enrolment after
//! an expiry.
//!
//! State, in `{state}/tls/`: `device.key` (ECDSA P-256, generated here, mode 0600, never sent),
//! `device.pem` (the certificate, common name = device id), `ca.pem` (the coordinator's CA,
//! pinned by its SHA-256 at enrolment) and `identity.json` (device id, coordinator URL,
//! validity). The coordinator's signing key from the enrolment answer is pinned beside the
//! other state (`trusted-coordinator.pub`), so an enrolled agent needs no `--trust-key`.
//!
//! - **Enrolment** fetches the CA once without verification, accepts it only if its SHA-256 is
//!   the one the operator gave, then sends the signing request over TLS verified by that CA.
//! - **Renewal** happens at two thirds of the certificate's life, over mutual TLS, with the
//!   same key; the new certificate is used from the next handshake on ([`Identity::config`]
//!   resolves the client certificate at each handshake).
//! - **Re-enrolment**: a device whose certificate expired while it was offline asks again with
//!   the same key and waits until an operator approves (`coordinator devices approve ID`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

/// The ring provider (the build's only one).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What `identity.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct IdentityFile {
    /// The device id the certificate names.
    pub device_id: String,
    /// The coordinator it enrolled with (`https://host:port`).
    pub coordinator: String,
    /// When the current certificate was received, Unix ms.
    pub issued_at_ms: i64,
    /// When it ends, Unix ms.
    pub not_after_ms: i64,
    /// Its serial, hex.
    pub serial: String,
}

/// The client certificate presented at each handshake: swapped on renewal.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesClientCert for Current {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("not poisoned").clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// An enrolled agent's TLS identity.
#[derive(Debug, Clone)]
pub struct Identity {
    dir: PathBuf,
    key_pem: String,
    /// What `identity.json` says.
    pub file: IdentityFile,
    current: Arc<Current>,
    config: Arc<rustls::ClientConfig>,
}

fn tls_dir(state: &Path) -> PathBuf {
    state.join("tls")
}

fn now_ms() -> i64 {
    hone_common::clock::now_ms() as i64
}

fn certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading PEM certificates")?;
    if certs.is_empty() {
        bail!("no certificate in the PEM text");
    }
    Ok(certs)
}

fn certified(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<CertifiedKey>> {
    use rustls::pki_types::pem::PemObject;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading device.key")?;
    let signing = provider().key_provider.load_private_key(key).context("loading device.key")?;
    Ok(Arc::new(CertifiedKey::new(certs(cert_pem)?, signing)))
}

fn roots(ca_pem: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem)? {
        roots.add(c).context("the CA certificate is not usable")?;
    }
    Ok(roots)
}

/// A request for a certificate for the key in `key_pem`.
fn signing_request(key_pem: &str, device: &str) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::from_pem(key_pem).context("reading device.key")?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, device);
    Ok(params.serialize_request(&key)?.pem()?)
}

/// An HTTPS client that verifies the coordinator with the CA (and presents `client`'s
/// certificate when given).
fn http(config: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTPS client")
}

/// The error text of an API answer.
async fn api_error(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    format!("{status}: {}", body["error"].as_str().unwrap_or("(no message)"))
}

impl Identity {
    /// Whether `state` holds an enrolled identity.
    pub fn exists(state: &Path) -> bool {
        tls_dir(state).join("identity.json").is_file()
    }

    /// Loads the identity from `state`.
    pub fn load(state: &Path) -> anyhow::Result<Identity> {
        let dir = tls_dir(state);
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let file: IdentityFile =
            serde_json::from_str(&read("identity.json")?).context("identity.json is not valid")?;
        let key_pem = read("device.key")?;
        let current = Arc::new(Current(RwLock::new(certified(&read("device.pem")?, &key_pem)?)));
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(&read("ca.pem")?)?)
            .with_client_cert_resolver(current.clone());
        Ok(Identity { dir, key_pem, file, current, config: Arc::new(config) })
    }

    /// The TLS client configuration for the broker and the coordinator: trusts only the CA,
    /// presents the current certificate.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// Whether the certificate has ended (at `now_ms`).
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.file.not_after_ms
    }

    /// When to renew: two thirds into the certificate's life.
    pub fn renew_at_ms(&self) -> i64 {
        let f = &self.file;
        f.issued_at_ms + (f.not_after_ms - f.issued_at_ms) * 2 / 3
    }

    fn store(&mut self, answer: &serde_json::Value) -> anyhow::Result<()> {
        let cert = answer["cert_pem"].as_str().context("the answer has no certificate")?;
        let not_after_ms = answer["not_after_ms"].as_i64().context("the answer has no expiry")?;
        let serial = answer["serial"].as_str().unwrap_or_default().to_string();
        let key = certified(cert, &self.key_pem)?;
        crate::outbox::write_atomic(&self.dir.join("device.pem"), cert.as_bytes())?;
        // After a CA rotation the answer carries the new CA with the old: trusted from the next
        // start (until then the coordinator's cross-signed chain is accepted by the old CA).
        if let Some(ca) = answer["ca_pem"].as_str()
            && roots(ca).is_ok()
        {
            crate::outbox::write_atomic(&self.dir.join("ca.pem"), ca.as_bytes())?;
        }
        self.file.issued_at_ms = now_ms();
        self.file.not_after_ms = not_after_ms;
        self.file.serial = serial;
        crate::outbox::write_atomic(
            &self.dir.join("identity.json"),
            serde_json::to_string_pretty(&self.file)?.as_bytes(),
        )?;
        *self.current.0.write().expect("not poisoned") = key;
        Ok(())
    }

    /// Renews the certificate over mutual TLS (same key).
    pub async fn renew(&mut self) -> anyhow::Result<()> {
        let csr = signing_request(&self.key_pem, &self.file.device_id)?;
        let url = format!("{}/api/v1/enroll/renew", self.file.coordinator.trim_end_matches('/'));
        let resp = http((*self.config).clone())?
            .post(&url)
            .json(&serde_json::json!({ "csr": csr }))
            .send()
            .await
            .with_context(|| format!("renewing at {url}"))?;
        if !resp.status().is_success() {
            bail!("renewal refused: {}", api_error(resp).await);
        }
        let answer: serde_json::Value = resp.json().await.context("renewal answer")?;
        self.store(&answer)?;
        info!(device = %self.file.device_id, not_after_ms = self.file.not_after_ms, "certificate renewed");
        Ok(())
    }

    /// Asks to be certified again after an expiry and waits for the operator's approval,
    /// asking every `every`.
    pub async fn reenroll(&mut self, every: Duration) -> anyhow::Result<()> {
        let csr = signing_request(&self.key_pem, &self.file.device_id)?;
        let url = format!("{}/api/v1/enroll/reenroll", self.file.coordinator.trim_end_matches('/'));
        // No client certificate: the expired one would fail the handshake.
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(&std::fs::read_to_string(self.dir.join("ca.pem"))?)?)
            .with_no_client_auth();
        let client = http(config)?;
        loop {
            let body = serde_json::json!({ "device_id": self.file.device_id, "csr": csr });
            match client.post(&url).json(&body).send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
                    let answer: serde_json::Value = resp.json().await?;
                    self.store(&answer)?;
                    info!(device = %self.file.device_id, "re-enrolled");
                    return Ok(());
                }
                Ok(resp) if resp.status() == reqwest::StatusCode::ACCEPTED => {
                    warn!(device = %self.file.device_id, "certificate expired: waiting for an operator to run `coordinator devices approve {}`", self.file.device_id);
                }
                Ok(resp) => bail!("re-enrolment refused: {}", api_error(resp).await),
                Err(e) => warn!(error = %e, "re-enrolment: coordinator unreachable; retrying"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Renews at [`Identity::renew_at_ms`], retrying every `retry` on failure, forever.
    pub async fn keep_renewed(mut self, retry: Duration) {
        loop {
            let wait = (self.renew_at_ms() - now_ms()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if let Err(e) = self.renew().await {
                warn!(error = %format!("{e:#}"), retry_s = retry.as_secs(), "certificate renewal failed");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// Accepts any server certificate: used for exactly one request, fetching the CA whose
/// SHA-256 is then checked against the operator's.
#[derive(Debug)]
struct FetchCaOnce(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for FetchCaOnce {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What `edge-agent enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrolRequest {
    /// `https://host:port` of the coordinator.
    pub coordinator: String,
    /// The one-time token.
    pub token: String,
    /// SHA-256 (hex) of the coordinator's CA certificate.
    pub ca_sha256: String,
    /// The device id asked for (a token bound to a device overrides it).
    pub device_id: String,
    /// The agent's state folder.
    pub state_dir: PathBuf,
}

/// Fetches the coordinator's CA and checks it against the pinned SHA-256.
pub async fn fetch_ca(coordinator: &str, ca_sha256: &str) -> anyhow::Result<String> {
    let want = ca_sha256.trim().trim_start_matches("sha256:").to_ascii_lowercase();
    if want.len() != 64 || !want.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("--ca-sha256 must be the 64 hex digits `coordinator serve` prints");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(FetchCaOnce(provider())))
        .with_no_client_auth();
    let url = format!("{}/api/v1/pki/ca", coordinator.trim_end_matches('/'));
    let resp = http(config)?.get(&url).send().await.with_context(|| format!("fetching {url}"))?;
    if !resp.status().is_success() {
        bail!("fetching the CA: {}", api_error(resp).await);
    }
    let body: serde_json::Value = resp.json().await.context("CA answer")?;
    let pem = body["ca_pem"].as_str().context("the CA answer has no `ca_pem`")?.to_string();
    let der = certs(&pem)?.remove(0);
    let got = hex::encode(Sha256::digest(&der));
    if got != want {
        bail!(
            "the coordinator at {coordinator} presented a CA with SHA-256 {got}, not the {want} \
             you gave: refusing to enrol (wrong coordinator, or someone in between)"
        );
    }
    Ok(pem)
}

/// Enrols: a new key, a signing request with the token, the certificate stored.
pub async fn enroll(req: &EnrolRequest) -> anyhow::Result<Identity> {
    if !req.coordinator.starts_with("https://") {
        bail!("enrolment needs the coordinator's https:// address, got `{}`", req.coordinator);
    }
    hone_common::validate_device_id(&req.device_id).map_err(anyhow::Error::msg)?;
    let ca_pem = fetch_ca(&req.coordinator, &req.ca_sha256).await?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let key_pem = key.serialize_pem();
    let csr = signing_request(&key_pem, &req.device_id)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&ca_pem)?)
        .with_no_client_auth();
    let url = format!("{}/api/v1/enroll", req.coordinator.trim_end_matches('/'));
    let body = serde_json::json!({ "token": req.token, "device_id": req.device_id, "csr": csr });
    let resp = http(config)?
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("enrolling at {url}"))?;
    if !resp.status().is_success() {
        bail!("enrolment refused: {}", api_error(resp).await);
    }
    let answer: serde_json::Value = resp.json().await.context("enrolment answer")?;
    let device = answer["device_id"].as_str().context("no device id in the answer")?.to_string();
    let trust_key = answer["trust_key"].as_str().context("no signing key in the answer")?;
    crate::config::parse_trust_key(trust_key).context("the coordinator's signing key")?;
    let dir = tls_dir(&req.state_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(&dir.join("device.key"), &key_pem)?;
    crate::outbox::write_atomic(&dir.join("ca.pem"), ca_pem.as_bytes())?;
    crate::outbox::write_atomic(
        &dir.join("device.pem"),
        answer["cert_pem"].as_str().context("no certificate in the answer")?.as_bytes(),
    )?;
    let file = IdentityFile {
        device_id: device,
        coordinator: req.coordinator.trim_end_matches('/').to_string(),
        issued_at_ms: now_ms(),
        not_after_ms: answer["not_after_ms"].as_i64().context("no expiry in the answer")?,
        serial: answer["serial"].as_str().unwrap_or_default().to_string(),
    };
    crate::outbox::write_atomic(
        &dir.join("identity.json"),
        serde_json::to_string_pretty(&file)?.as_bytes(),
    )?;
    crate::outbox::write_atomic(
        &req.state_dir.join("trusted-coordinator.pub"),
        trust_key.as_bytes(),
    )?;
    Identity::load(&req.state_dir)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
