use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::pki_types::ServerName;

use super::*;

/// A device key and its signing request, naming itself `claimed`.
fn request(claimed: &str) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, claimed);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

fn client_config(ca: &Ca, chain: Option<(String, &KeyPair)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match chain {
        Some((pem, key)) => b
            .with_client_auth_cert(
                certs_from_pem(&pem).unwrap(),
                parse_key(&key.serialize_pem()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// Runs a TLS handshake in memory; the peer's common name as the server saw it, or the error.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<Option<String>, String> {
    let (a, b) = tokio::io::duplex(1 << 16);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from("localhost").unwrap();
    let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
    let s = s.map_err(|e| e.to_string())?;
    // The client may finish before it hears the server's refusal (TLS 1.3 client auth).
    c.map_err(|e| e.to_string())?;
    let cn = s.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|d| common_name(d));
    Ok(cn)
}

#[test]
fn the_ca_is_created_once_and_reloaded_with_the_same_identity() {
    let dir = tempfile::tempdir().unwrap();
    let a = Ca::load_or_create(dir.path()).unwrap();
    let b = Ca::load_or_create(dir.path()).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is private");
    }
    std::fs::write(dir.path().join("ca.key"), "not a key").unwrap();
    let err = Ca::load_or_create(dir.path()).unwrap_err();
    assert!(format!("{err:#}").contains("does not parse"), "{err:#}");
}

#[test]
fn a_certificate_is_named_by_the_coordinator_not_by_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let (key, csr) = request("someone-else");
    let issued = ca.issue_device("rpi-a", &csr, Duration::from_secs(3600)).unwrap();
    let der = certs_from_pem(&issued.pem).unwrap().remove(0);
    assert_eq!(common_name(&der).as_deref(), Some("rpi-a"));
    assert_eq!(issued.fingerprint, fingerprint(&der));
    assert_eq!(issued.key_id, request_key_id(&csr).unwrap());
    let (_, other) = request("rpi-a");
    assert_ne!(issued.key_id, request_key_id(&other).unwrap(), "key ids tell keys apart");
    let life = issued.not_after_ms - hone_common::clock::now_ms() as i64;
    assert!((3_500_000..=3_600_000).contains(&life), "{life}");
    drop(key);
    let bad = ca.issue_device(
        "rpi-a",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        Duration::from_secs(60),
    );
    assert!(matches!(bad, Err(PkiError::BadRequest(_))), "{bad:?}");
}

#[tokio::test]
async fn the_mqtt_side_requires_a_certificate_of_this_ca_that_is_not_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::start(dir.path(), &[], Duration::from_secs(3600), &[]).unwrap();
    let (key, csr) = request("x");
    let issued = pki.ca().issue_device("rpi-a", &csr, Duration::from_secs(3600)).unwrap();
    let good = client_config(pki.ca(), Some((issued.pem.clone(), &key)));
    assert_eq!(handshake(pki.mqtt_config(), good.clone()).await, Ok(Some("rpi-a".into())));

    // No certificate: refused for MQTT, allowed for HTTPS (operators, enrolling devices).
    let anonymous = client_config(pki.ca(), None);
    assert!(handshake(pki.mqtt_config(), anonymous.clone()).await.is_err());
    assert_eq!(handshake(pki.http_config(), anonymous).await, Ok(None));

    // A certificate from another CA, even naming the same device.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Ca::load_or_create(other_dir.path()).unwrap();
    let (okey, ocsr) = request("x");
    let forged = other.issue_device("rpi-a", &ocsr, Duration::from_secs(3600)).unwrap();
    let forged = client_config(pki.ca(), Some((forged.pem, &okey)));
    let err = handshake(pki.mqtt_config(), forged.clone()).await.unwrap_err();
    assert!(err.to_lowercase().contains("unknown") || err.contains("issuer"), "{err}");
    assert!(handshake(pki.http_config(), forged).await.is_err());

    // Revoked: the next handshake fails on both sides, and the CRL file is written.
    let mut kicks = pki.kicks();
    pki.set_revoked(&[(
        Revoked { serial: issued.serial.clone(), at_ms: hone_common::clock::now_ms() as i64 },
        issued.fingerprint.clone(),
    )])
    .unwrap();
    pki.kick("rpi-a");
    assert_eq!(kicks.recv().await.unwrap(), "rpi-a");
    assert!(pki.is_revoked(&issued.fingerprint));
    let err = handshake(pki.mqtt_config(), good.clone()).await.unwrap_err();
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    assert!(handshake(pki.http_config(), good).await.is_err());
    let crl = std::fs::read_to_string(dir.path().join("crl.pem")).unwrap();
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");
}

#[test]
fn an_expired_certificate_is_refused() {
    // rustls checks validity against the clock; a certificate issued with a life of 10 s and
    // back-dated by the issuer's skew allowance is still valid now, so build one that ended.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::start(dir.path(), &[], Duration::from_secs(3600), &[]).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = client_params("rpi-a", Duration::from_secs(10));
    params.not_before = offset(SystemTime::now() - Duration::from_secs(7200));
    params.not_after = offset(SystemTime::now() - Duration::from_secs(3600));
    let cert = params.signed_by(&key, &pki.ca.issuer).unwrap();
    let client = client_config(pki.ca(), Some((cert.pem(), &key)));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let err = rt.block_on(handshake(pki.mqtt_config(), client)).unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
}

#[test]
fn lifetimes_parse_with_units_and_refuse_nonsense() {
    assert_eq!(parse_lifetime("7d"), Ok(Duration::from_secs(7 * 86_400)));
    assert_eq!(parse_lifetime("12h"), Ok(Duration::from_secs(12 * 3600)));
    assert_eq!(parse_lifetime("90s"), Ok(Duration::from_secs(90)));
    assert!(parse_lifetime("5s").unwrap_err().contains("at least"));
    assert!(parse_lifetime("7").is_err());
    assert!(parse_lifetime("7w").unwrap_err().contains("unit"));
    assert!(parse_lifetime("d").is_err());
}

#[tokio::test]
async fn after_a_ca_rotation_devices_of_either_ca_connect_and_trust_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let old = Ca::load_or_create(dir.path()).unwrap();
    let (key_a, csr_a) = request("x");
    let cert_a = old.issue_device("rpi-a", &csr_a, Duration::from_secs(3600)).unwrap();
    let (old_fp, new_fp) = Ca::rotate(dir.path()).unwrap();
    assert_eq!(old_fp, old.fingerprint());
    let names: Vec<_> = [
        old.cert_der().to_vec(),
        certs_from_pem(&std::fs::read_to_string(dir.path().join("ca.pem")).unwrap()).unwrap()[0]
            .to_vec(),
    ]
    .iter()
    .map(|d| common_name(d).unwrap())
    .collect();
    assert_ne!(names[0], names[1], "the new CA has a name of its own, even made at once");
    assert_ne!(old_fp, new_fp);
    let pki = Pki::start(dir.path(), &[], Duration::from_secs(3600), &[]).unwrap();
    assert_eq!(pki.ca().fingerprint(), new_fp);
    assert!(pki.trust_bundle_pem().ends_with(old.cert_pem()), "the old CA follows the new");
    // A device that trusts only the old CA, with the old CA's certificate.
    let before = client_config(&old, Some((cert_a.pem.clone(), &key_a)));
    assert_eq!(handshake(pki.mqtt_config(), before.clone()).await, Ok(Some("rpi-a".into())));
    // A device renewed by the new CA.
    let (key_b, csr_b) = request("x");
    let cert_b = pki.ca().issue_device("rpi-b", &csr_b, Duration::from_secs(3600)).unwrap();
    let after = client_config(pki.ca(), Some((cert_b.pem.clone(), &key_b)));
    assert_eq!(handshake(pki.mqtt_config(), after).await, Ok(Some("rpi-b".into())));
    // Revocation still works for the old CA's certificates.
    pki.set_revoked(&[(
        Revoked { serial: cert_a.serial.clone(), at_ms: hone_common::clock::now_ms() as i64 },
        cert_a.fingerprint.clone(),
    )])
    .unwrap();
    assert!(handshake(pki.mqtt_config(), before).await.is_err());
    // A second rotation drops the oldest CA.
    Ca::rotate(dir.path()).unwrap();
    let pki = Pki::start(dir.path(), &[], Duration::from_secs(3600), &[]).unwrap();
    assert!(!pki.trust_bundle_pem().contains(old.cert_pem().trim()));
}
