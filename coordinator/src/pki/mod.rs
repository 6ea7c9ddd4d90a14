//! The fleet's identities and transport security (issue 15): the coordinator's certificate
//! authority, device certificates issued from enrolment requests, the revocation list, and the
//! rustls configurations of the HTTPS API and the MQTT gate.
//!
//! - The CA is an ECDSA P-256 key and a self-signed certificate in `{data}/pki/` (`ca.key` is
//!   written 0600). Back both up with the signing key (docs/install.md).
//! - A device certificate's subject common name is the device id: the broker (Mosquitto's
//!   `use_identity_as_username`), the gate ([`gate`]) and the API read the identity from it.
//!   The coordinator decides the name (from the enrolment token or the enrolled identity),
//!   never the request. Certificates are short-lived ([`DEFAULT_CERT_LIFETIME`]: 7 days) and
//!   renewed by the agent at two thirds of their life.
//! - Revocation rebuilds both server configurations with a new CRL, so a revoked certificate
//!   fails the TLS handshake, and kicks the device's live MQTT session ([`Pki::kicks`]).
//! - The coordinator's own certificate for an external broker has the common name
//!   [`COORDINATOR_IDENTITY`], which no device id can take (device ids have no dots).
//!
//! [`listener`] serves the API over TLS and tells handlers which certificate a request came
//! with.

pub mod gate;
pub mod listener;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

/// Default life of a device certificate: 7 days. Agents renew at two thirds of it, so a device
/// may be offline about 2 days past a renewal before it must re-enrol with approval.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Common name of the coordinator's client certificate (for an external broker's ACL).
pub const COORDINATOR_IDENTITY: &str = "hone.coordinator";

/// Life of the certificates the coordinator issues itself (server, broker client): a restart
/// issues new ones.
const SERVICE_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Clock skew tolerated on a new certificate's start.
const BACKDATE: Duration = Duration::from_secs(300);

/// The one crypto provider of the build (ring). Its post-quantum key exchange is not offered
/// (rustls marks the ring provider deprecated for that); Mosquitto's OpenSSL does not need it.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a request for a certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The signing request does not parse or its signature does not hold.
    #[error("the certificate signing request is invalid: {0}")]
    BadRequest(String),
    /// A key type Hone does not issue for.
    #[error("key algorithm not accepted: use ECDSA P-256 or Ed25519")]
    KeyAlgorithm,
    /// Anything else (a bug or a broken CA file).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM of the certificate.
    pub pem: String,
    /// Serial number, hex.
    pub serial: String,
    /// SHA-256 of the certificate's DER, hex.
    pub fingerprint: String,
    /// SHA-256 of the subject's public key, hex: the identity a re-enrolment must prove.
    pub key_id: String,
    /// End of validity, Unix ms.
    pub not_after_ms: i64,
}

/// A certificate that is no longer valid before its expiry.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// Serial number, hex.
    pub serial: String,
    /// When, Unix ms.
    pub at_ms: i64,
}

/// The certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("sha256", &self.fingerprint()).finish_non_exhaustive()
    }
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and 16 bytes long
    SerialNumber::from_slice(&bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of a certificate's DER, hex (how certificates are named in the database).
pub fn fingerprint(der: &[u8]) -> String {
    sha256_hex(der)
}

/// The subject common name of a certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// The PEM blocks of `pem` as certificates.
pub fn certs_from_pem(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading PEM certificates")
}

impl Ca {
    /// Loads the CA from `dir` (`ca.key`, `ca.pem`), or creates one there.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Ca> {
        if dir.join("ca.key").exists() || dir.join("ca.pem").exists() {
            return Ca::load(dir, "ca");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca, key_pem) = Ca::generate()?;
        crate::api::auth::write_secret(&dir.join("ca.key"), &key_pem)?;
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem)
            .with_context(|| format!("writing {}", dir.join("ca.pem").display()))?;
        Ok(ca)
    }

    /// Loads `{stem}.key` and `{stem}.pem` from `dir`.
    fn load(dir: &Path, stem: &str) -> anyhow::Result<Ca> {
        let (key_path, cert_path) =
            (dir.join(format!("{stem}.key")), dir.join(format!("{stem}.pem")));
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading the CA key {}", key_path.display()))?;
        let cert_pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading the CA certificate {}", cert_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("the CA key {} does not parse", key_path.display()))?;
        let cert_der = certs_from_pem(&cert_pem)?
            .into_iter()
            .next()
            .with_context(|| format!("no certificate in {}", cert_path.display()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).with_context(|| {
            format!("the CA certificate {} does not match its key", cert_path.display())
        })?;
        Ok(Ca { issuer, cert_der, cert_pem })
    }

    fn params() -> CertificateParams {
        let mut params = CertificateParams::default();
        let now = SystemTime::now();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Hone");
        // The ULID's random part, not its time: two CAs made in the same millisecond (a
        // rotation right after a creation) must not share a name, or a verifier could take
        // one for the other's issuer.
        dn.push(
            DnType::CommonName,
            format!("Hone fleet CA {}", &ulid::Ulid::new().to_string()[14..]),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + Duration::from_secs(10 * 365 * 24 * 3600));
        params.serial_number = Some(random_serial());
        params
    }

    /// A new CA in memory, and its key's PEM.
    fn generate() -> anyhow::Result<(Ca, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating the CA key")?;
        let key_pem = key.serialize_pem();
        let params = Ca::params();
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        let cert_der = cert.der().clone();
        Ok((Ca { issuer: Issuer::new(params, key), cert_pem: cert.pem(), cert_der }, key_pem))
    }

    /// Rotates the CA in `dir` (on a stopped coordinator): a new CA becomes current, the old
    /// one becomes `previous-ca.*` (still trusted for the certificates it issued, which devices
    /// replace at their next renewal; an older previous CA is dropped), and the old CA signs
    /// `cross.pem`, the new CA's certificate, which the coordinator sends with its server
    /// certificate so devices that trust only the old CA accept it. Returns (old, new)
    /// fingerprints.
    pub fn rotate(dir: &Path) -> anyhow::Result<(String, String)> {
        let old = Ca::load(dir, "ca").context("no CA to rotate")?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = Ca::params();
        let cert = params.self_signed(&key).context("self-signing the new CA")?;
        let cross = params.signed_by(&key, &old.issuer).context("cross-signing the new CA")?;
        let new_fp = sha256_hex(cert.der());
        // New files beside the old, then renames: a crash leaves either CA whole.
        crate::api::auth::write_secret(&dir.join("ca.key.new"), &key.serialize_pem())?;
        std::fs::write(dir.join("ca.pem.new"), cert.pem())?;
        std::fs::write(dir.join("cross.pem.new"), cross.pem())?;
        std::fs::rename(dir.join("ca.key"), dir.join("previous-ca.key"))?;
        std::fs::rename(dir.join("ca.pem"), dir.join("previous-ca.pem"))?;
        std::fs::rename(dir.join("ca.key.new"), dir.join("ca.key"))?;
        std::fs::rename(dir.join("ca.pem.new"), dir.join("ca.pem"))?;
        std::fs::rename(dir.join("cross.pem.new"), dir.join("cross.pem"))?;
        Ok((old.fingerprint(), new_fp))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate's DER, hex: what an enrolling device pins.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// Issues a client certificate for `device` from a PEM signing request. The request's
    /// subject and extensions are ignored: the coordinator names the device.
    pub fn issue_device(
        &self,
        device: &str,
        csr_pem: &str,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadRequest(e.to_string()))?;
        let alg = csr.public_key.algorithm();
        if alg != &rcgen::PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ED25519 {
            return Err(PkiError::KeyAlgorithm);
        }
        let params = client_params(device, lifetime);
        let cert = params.signed_by(&csr.public_key, &self.issuer).context("signing")?;
        Ok(issued(&params, cert.der(), cert.pem(), csr.public_key.der_bytes()))
    }

    /// A key and certificate for a service of the coordinator: a server (`names` as subject
    /// alternative names) or, with no names, the broker client [`COORDINATOR_IDENTITY`].
    pub fn issue_service(&self, names: &[String]) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = if names.is_empty() {
            leaf_params(
                COORDINATOR_IDENTITY,
                SERVICE_CERT_LIFETIME,
                ExtendedKeyUsagePurpose::ClientAuth,
            )
        } else {
            let mut p =
                leaf_params(&names[0], SERVICE_CERT_LIFETIME, ExtendedKeyUsagePurpose::ServerAuth);
            p.subject_alt_names =
                CertificateParams::new(names.to_vec()).context("server names")?.subject_alt_names;
            p
        };
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The revocation list of `revoked`, as DER and as PEM.
    pub fn crl(
        &self,
        revoked: &[Revoked],
    ) -> anyhow::Result<(CertificateRevocationListDer<'static>, String)> {
        let now = SystemTime::now();
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&hex::decode(&r.serial)?),
                    revocation_time: offset(
                        SystemTime::UNIX_EPOCH + Duration::from_millis(r.at_ms.max(0) as u64),
                    ),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let params = CertificateRevocationListParams {
            this_update: offset(now - BACKDATE),
            next_update: offset(now + Duration::from_secs(30 * 24 * 3600)),
            crl_number: SerialNumber::from(hone_common::clock::now_ms()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).context("signing the CRL")?;
        Ok((crl.der().clone(), crl.pem().context("encoding the CRL")?))
    }
}

fn client_params(name: &str, lifetime: Duration) -> CertificateParams {
    leaf_params(name, lifetime, ExtendedKeyUsagePurpose::ClientAuth)
}

/// An end-entity certificate for `name` (common name), valid from a little before now for
/// `lifetime`, for one use (client or server authentication).
fn leaf_params(
    name: &str,
    lifetime: Duration,
    usage: ExtendedKeyUsagePurpose,
) -> CertificateParams {
    let now = SystemTime::now();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.not_before = offset(now - BACKDATE);
    p.not_after = offset(now + lifetime);
    p.serial_number = Some(random_serial());
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    p.use_authority_key_identifier_extension = true;
    p
}

fn issued(params: &CertificateParams, der: &[u8], pem: String, public_key: &[u8]) -> Issued {
    let not_after = params.not_after.unix_timestamp() * 1000;
    Issued {
        pem,
        serial: hex::encode(params.serial_number.as_ref().expect("serial set").to_bytes()),
        fingerprint: sha256_hex(der),
        key_id: sha256_hex(public_key),
        not_after_ms: not_after,
    }
}

/// The key id ([`Issued::key_id`]) of a signing request's public key, after checking the
/// request's signature.
pub fn request_key_id(csr_pem: &str) -> Result<String, PkiError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::BadRequest(e.to_string()))?;
    Ok(sha256_hex(csr.public_key.der_bytes()))
}

/// Settings of the TLS side of a coordinator.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Names and addresses agents reach the coordinator by (subject alternative names of its
    /// server certificate, beside `localhost`, `127.0.0.1` and `::1`).
    pub names: Vec<String>,
    /// Life of a device certificate.
    pub cert_lifetime: Duration,
    /// Where the MQTT gate listens (TLS with client certificates, in front of the embedded
    /// broker); `None` with an external broker.
    pub gate_listen: Option<std::net::SocketAddr>,
}

impl TlsSettings {
    /// The defaults: this host's names, 7-day certificates, the gate on `0.0.0.0:8883`.
    pub fn new(names: Vec<String>) -> TlsSettings {
        TlsSettings {
            names,
            cert_lifetime: DEFAULT_CERT_LIFETIME,
            gate_listen: Some(([0, 0, 0, 0], 8883).into()),
        }
    }
}

/// A device the coordinator no longer hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Its certificates are revoked; its going offline is still recorded.
    Revoked,
    /// Removed from the fleet: nothing it sends is recorded.
    Decommissioned,
}

impl Stopped {
    /// The identity state this stands for, if it is one.
    pub fn from_state(state: &str) -> Option<Stopped> {
        match state {
            "revoked" => Some(Stopped::Revoked),
            "decommissioned" => Some(Stopped::Decommissioned),
            _ => None,
        }
    }
}

/// The CA and the live server configurations (rebuilt on revocation).
pub struct Pki {
    ca: Ca,
    /// The CA before the last rotation: still trusted for the certificates it issued.
    previous: Option<Ca>,
    dir: PathBuf,
    server_chain: Vec<CertificateDer<'static>>,
    server_key_pem: String,
    /// Certificates of the broker client identity (PEM cert, PEM key).
    coordinator_client: (String, String),
    cert_lifetime: Duration,
    http: RwLock<Arc<rustls::ServerConfig>>,
    mqtt: RwLock<Arc<rustls::ServerConfig>>,
    revoked: RwLock<HashSet<String>>,
    stopped: RwLock<std::collections::HashMap<String, Stopped>>,
    kicks: broadcast::Sender<String>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("ca", &self.ca).finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads or creates the CA in `dir`, issues this run's server certificate for `names`
    /// (plus the loopback names) and builds the server configurations with `revoked` in the
    /// CRL.
    pub fn start(
        dir: &Path,
        names: &[String],
        cert_lifetime: Duration,
        revoked: &[(Revoked, String)],
    ) -> anyhow::Result<Pki> {
        let ca = Ca::load_or_create(dir)?;
        let previous = dir
            .join("previous-ca.key")
            .exists()
            .then(|| Ca::load(dir, "previous-ca"))
            .transpose()?;
        let cross = match std::fs::read_to_string(dir.join("cross.pem")) {
            Ok(pem) if previous.is_some() => certs_from_pem(&pem)?,
            _ => Vec::new(),
        };
        let mut all = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        for n in names {
            if !all.contains(n) {
                all.insert(0, n.clone());
            }
        }
        let (server_pem, server_key_pem) = ca.issue_service(&all)?;
        let mut server_chain = certs_from_pem(&server_pem)?;
        // After a rotation the old CA's signature on the new one lets devices that trust only
        // the old CA accept this certificate.
        server_chain.extend(cross);
        server_chain.push(ca.cert_der().clone());
        let coordinator_client = ca.issue_service(&[])?;
        let (kicks, _) = broadcast::channel(64);
        let placeholder = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(server_chain.clone(), parse_key(&server_key_pem)?)?,
        );
        let pki = Pki {
            ca,
            previous,
            dir: dir.to_path_buf(),
            server_chain,
            server_key_pem,
            coordinator_client,
            cert_lifetime,
            http: RwLock::new(placeholder.clone()),
            mqtt: RwLock::new(placeholder),
            revoked: RwLock::new(HashSet::new()),
            stopped: RwLock::new(Default::default()),
            kicks,
        };
        pki.set_revoked(revoked)?;
        Ok(pki)
    }

    /// The CA.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The CA certificates devices must trust, PEM: the current one first, then the one before
    /// the last rotation.
    pub fn trust_bundle_pem(&self) -> String {
        let mut pem = self.ca.cert_pem().to_string();
        if let Some(p) = &self.previous {
            pem.push_str(p.cert_pem());
        }
        pem
    }

    fn roots(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.cert_der().clone())?;
        if let Some(p) = &self.previous {
            roots.add(p.cert_der().clone())?;
        }
        Ok(roots)
    }

    /// Life of a device certificate.
    pub fn cert_lifetime(&self) -> Duration {
        self.cert_lifetime
    }

    /// The HTTPS configuration: client certificates are checked when sent, not required
    /// (operators use tokens; enrolling devices have none yet).
    pub fn http_config(&self) -> Arc<rustls::ServerConfig> {
        self.http.read().expect("not poisoned").clone()
    }

    /// The MQTT gate's configuration: a client certificate of this CA is required.
    pub fn mqtt_config(&self) -> Arc<rustls::ServerConfig> {
        self.mqtt.read().expect("not poisoned").clone()
    }

    /// Whether the certificate with this fingerprint is revoked.
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        self.revoked.read().expect("not poisoned").contains(fingerprint)
    }

    /// Device ids whose sessions must end now (a revocation).
    pub fn kicks(&self) -> broadcast::Receiver<String> {
        self.kicks.subscribe()
    }

    /// Replaces the revoked set (serial and fingerprint of each), rebuilds both server
    /// configurations with the new CRL and writes it to `{pki}/crl.pem` (for Mosquitto's
    /// `crlfile`).
    pub fn set_revoked(&self, revoked: &[(Revoked, String)]) -> anyhow::Result<()> {
        let list: Vec<Revoked> = revoked.iter().map(|(r, _)| r.clone()).collect();
        // One CRL per CA (a certificate's revocation is looked up in its issuer's list); every
        // revoked serial is in both, which is harmless.
        let mut signed = vec![self.ca.crl(&list)?];
        if let Some(p) = &self.previous {
            signed.push(p.crl(&list)?);
        }
        let pem: String = signed.iter().map(|(_, pem)| pem.as_str()).collect();
        let crls: Vec<_> = signed.into_iter().map(|(der, _)| der).collect();
        let tmp = self.dir.join("crl.pem.tmp");
        std::fs::write(&tmp, &pem).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join("crl.pem")).context("replacing crl.pem")?;
        let build = |require: bool| -> anyhow::Result<Arc<rustls::ServerConfig>> {
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
                    .with_crls(crls.clone());
            let verifier =
                if require { builder.build()? } else { builder.allow_unauthenticated().build()? };
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(self.server_chain.clone(), parse_key(&self.server_key_pem)?)?;
            config.alpn_protocols = if require { vec![] } else { vec![b"http/1.1".to_vec()] };
            Ok(Arc::new(config))
        };
        *self.http.write().expect("not poisoned") = build(false)?;
        *self.mqtt.write().expect("not poisoned") = build(true)?;
        *self.revoked.write().expect("not poisoned") =
            revoked.iter().map(|(_, fp)| fp.clone()).collect();
        Ok(())
    }

    /// Replaces the set of revoked and decommissioned devices, whose messages the coordinator
    /// drops whatever the broker (an external broker keeps a session open until it ends).
    pub fn set_stopped(&self, devices: impl IntoIterator<Item = (String, Stopped)>) {
        *self.stopped.write().expect("not poisoned") = devices.into_iter().collect();
    }

    /// Whether `device` is revoked or decommissioned.
    pub fn stopped(&self, device: &str) -> Option<Stopped> {
        self.stopped.read().expect("not poisoned").get(device).copied()
    }

    /// Ends the live sessions of `device` (after its certificates were revoked).
    pub fn kick(&self, device: &str) {
        let _ = self.kicks.send(device.to_string());
    }

    /// The rustls client configuration of the coordinator towards an external TLS broker:
    /// trusts this CA, presents [`COORDINATOR_IDENTITY`].
    pub fn broker_client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let chain = certs_from_pem(&self.coordinator_client.0)?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, parse_key(&self.coordinator_client.1)?)?;
        Ok(Arc::new(config))
    }

    /// Writes what an external Mosquitto needs to check Hone's devices into `out`: its server
    /// certificate and key (for `names`), the CA, the CRL and an ACL file, and a configuration
    /// snippet naming them. Returns the paths written.
    pub fn write_mosquitto_config(
        &self,
        out: &Path,
        names: &[String],
        listen_port: u16,
    ) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let mut all = names.to_vec();
        for n in ["localhost", "127.0.0.1"] {
            if !all.iter().any(|x| x == n) {
                all.push(n.to_string());
            }
        }
        let (mut cert, key) = self.ca.issue_service(&all)?;
        if let Ok(cross) = std::fs::read_to_string(self.dir.join("cross.pem"))
            && self.previous.is_some()
        {
            cert.push_str(&cross);
        }
        let mut written = Vec::new();
        let mut put = |name: &str, text: &str, secret: bool| -> anyhow::Result<()> {
            let path = out.join(name);
            if secret {
                crate::api::auth::write_secret(&path, text)?;
            } else {
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            written.push(path);
            Ok(())
        };
        put("ca.pem", &self.trust_bundle_pem(), false)?;
        put("server.pem", &cert, false)?;
        put("server.key", &key, true)?;
        let crl = std::fs::read_to_string(self.dir.join("crl.pem")).context("reading crl.pem")?;
        put("crl.pem", &crl, false)?;
        put("acl", &mosquitto_acl(), false)?;
        let dir = std::fs::canonicalize(out)?;
        let d = dir.display();
        let conf = format!(
            "# Written by `coordinator pki mosquitto`: TLS with client certificates from the Hone\n\
             # CA, the device id (certificate common name) as the user name, and the ACL below.\n\
             # Re-run it after `coordinator devices revoke` to refresh crl.pem, then send\n\
             # Mosquitto SIGHUP (it reloads the CRL for new connections). server.key is\n\
             # private (0600): let the broker's user read it (chown mosquitto).\n\
             # A fleet's messages wait here while the coordinator is busy: Mosquitto drops those\n\
             # past this (its default is 1,000; a 10,000-agent campaign once passed 10,000).\n\
             max_queued_messages 100000\n\
             per_listener_settings true\n\
             listener {listen_port}\n\
             cafile {d}/ca.pem\n\
             certfile {d}/server.pem\n\
             keyfile {d}/server.key\n\
             crlfile {d}/crl.pem\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             use_username_as_clientid true\n\
             acl_file {d}/acl\n"
        );
        put("mosquitto.conf", &conf, false)?;
        Ok(written)
    }
}

/// The Mosquitto ACL of a Hone fleet: the coordinator may use every Hone topic; a device may
/// publish only its status and events and read only its own commands.
pub fn mosquitto_acl() -> String {
    format!(
        "# Hone fleet ACL (`%u` is the device id from the client certificate).\n\
         user {COORDINATOR_IDENTITY}\n\
         topic readwrite hone/v1/#\n\
         \n\
         pattern write hone/v1/dev/%u/status\n\
         pattern write hone/v1/dev/%u/evt/+\n\
         pattern read hone/v1/dev/%u/cmd/+\n"
    )
}

fn parse_key(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).context("reading a PEM private key")
}

/// Parses a duration such as `90s`, `15m`, `12h` or `7d`.
pub fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("`{text}`: expected a number and s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (s, m, h or d)")),
    };
    if secs < 10 {
        return Err(format!("`{text}`: a certificate must live at least 10 s"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests;
