//! Tests of the verified model store against a tiny in-test HTTP/1.1 server whose misbehaviour
//! (tampering, truncation, endless data, ignoring `Range`, 404) is chosen per test.

use std::sync::{Arc, Mutex};

use ed25519_dalek::{Signer as _, SigningKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// 200 KiB: several HTTP chunks, several hasher buffers.
const SIZE: usize = 200 * 1024;
/// Seed of the coordinator key the agent trusts.
const TRUSTED_SEED: u8 = 7;
/// "Now" for every test, Unix ms.
const NOW_MS: u64 = 1_700_000_000_000;
/// Size of each write the server makes, so the client sees many chunks.
const WRITE_CHUNK: usize = 16 * 1024;
/// Hard stop for [`Mode::Endless`], so a client that never aborts fails instead of hanging.
const ENDLESS_CAP: u64 = 64 * 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift64*).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn model_bytes() -> Vec<u8> {
    pseudo_random(SIZE, 0x05ee_d0f4_0de1)
}

fn sha256_of(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn trusted_key() -> VerifyingKey {
    SigningKey::from_bytes(&[TRUSTED_SEED; 32]).verifying_key()
}

/// A job for `body` served at `url`, signed by the key with `seed`.
fn signed_job(body: &[u8], url: &str, seed: u8) -> JobCommand {
    let mut job = JobCommand {
        command_id: "cmd-1".to_owned(),
        job_id: "job-1".to_owned(),
        attempt: 1,
        artifact: hone_common::wire::ArtifactRef {
            artifact_id: "resnet-tiny".to_owned(),
            sha256: sha256_of(body),
            size: body.len() as u64,
            url: url.to_owned(),
            expires_at_ms: NOW_MS + 60_000,
        },
        spec: hone_common::bench::BenchSpec::default(),
        timeout_ms: 60_000,
        seq: 100,
        signature: Vec::new(),
    };
    sign(&mut job, seed);
    job
}

/// (Re)signs `job` as it stands with the key with `seed`.
fn sign(job: &mut JobCommand, seed: u8) {
    let msg = signing_bytes(job);
    job.signature = SigningKey::from_bytes(&[seed; 32]).sign(&msg).to_bytes().to_vec();
}

/// Verifies `job` against the trusted key at `now_ms`, then fetches its artifact.
async fn fetch(
    store: &ModelStore,
    job: &JobCommand,
    now_ms: u64,
) -> Result<Fetched, ArtifactError> {
    let verified =
        verify_job(job.clone(), &trusted_key(), now_ms, None).map_err(|refused| refused.1)?;
    store.fetch_verified(&verified).await
}

/// How the test server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The declared bytes, honouring `Range: bytes=N-`.
    Good,
    /// The declared bytes with one bit flipped (honours `Range`).
    Tampered,
    /// Advertises the full Content-Length, then closes after this many body bytes.
    Truncate(usize),
    /// No Content-Length (close-delimited), and only this many body bytes: a clean, early EOF.
    EndEarly(usize),
    /// The declared bytes and then more, with no Content-Length, until the client hangs up.
    Endless,
    /// The declared bytes plus this many more, all announced in Content-Length.
    Extra(usize),
    /// Always 200 with the whole body, whatever `Range` says.
    IgnoreRange,
    /// 404 Not Found.
    NotFound,
}

/// One request the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// Request line, e.g. `GET /model.onnx HTTP/1.1`.
    request_line: String,
    /// Raw `Range` header value, if any.
    range: Option<String>,
    /// Status answered.
    status: u16,
    /// Body bytes handed to the socket (counted before each write).
    body_sent: u64,
}

struct ServerState {
    body: Vec<u8>,
    mode: Mutex<Mode>,
    log: Mutex<Vec<Seen>>,
}

/// A one-file HTTP/1.1 server on 127.0.0.1, stopped on drop.
struct TestServer {
    url: String,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start(body: Vec<u8>, mode: Mode) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state =
            Arc::new(ServerState { body, mode: Mutex::new(mode), log: Mutex::new(Vec::new()) });
        let accept_state = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let _ = serve_connection(sock, state).await;
                });
            }
        });
        TestServer { url: format!("http://{addr}/model.onnx"), state, task }
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn requests(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().clone()
    }

    fn total_body_sent(&self) -> u64 {
        self.requests().iter().map(|r| r.body_sent).sum()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses `bytes=N-` (the only form the store sends).
fn range_start(value: &str) -> Option<u64> {
    value.trim().strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

async fn serve_connection(mut sock: TcpStream, state: Arc<ServerState>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    let head_end = loop {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 16 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut range = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    let mode = *state.mode.lock().unwrap();
    let len = state.body.len();
    let start = match mode {
        Mode::IgnoreRange | Mode::NotFound => None,
        _ => range.as_deref().and_then(range_start),
    };

    let mut full = state.body.clone();
    if mode == Mode::Tampered {
        full[len / 2] ^= 0x10;
    }
    let (status, reason, payload, content_length, content_range): (u16, &str, &[u8], _, _) =
        match (mode, start) {
            (Mode::NotFound, _) => (404, "Not Found", b"no such model\n", Some(14usize), None),
            (_, Some(s)) if s as usize >= len => (416, "Range Not Satisfiable", b"", Some(0), None),
            (_, Some(s)) => {
                let s = s as usize;
                let cr = format!("bytes {s}-{}/{len}", len - 1);
                (206, "Partial Content", &full[s..], Some(len - s), Some(cr))
            }
            (_, None) => (200, "OK", &full[..], Some(len), None),
        };
    let (content_length, to_send, extra) = match mode {
        Mode::Truncate(k) => (content_length, payload.len().min(k), 0u64),
        Mode::EndEarly(k) => (None, payload.len().min(k), 0),
        Mode::Endless => (None, payload.len(), ENDLESS_CAP),
        Mode::Extra(n) => (content_length.map(|c| c + n), payload.len(), n as u64),
        _ => (content_length, payload.len(), 0),
    };

    let idx = {
        let mut log = state.log.lock().unwrap();
        log.push(Seen { request_line, range, status, body_sent: 0 });
        log.len() - 1
    };
    let count = |n: usize| state.log.lock().unwrap()[idx].body_sent += n as u64;

    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n"
    );
    if let Some(cl) = content_length {
        response.push_str(&format!("Content-Length: {cl}\r\n"));
    }
    if let Some(cr) = content_range {
        response.push_str(&format!("Content-Range: {cr}\r\n"));
    }
    response.push_str("\r\n");
    sock.write_all(response.as_bytes()).await?;

    for chunk in payload[..to_send].chunks(WRITE_CHUNK) {
        count(chunk.len());
        sock.write_all(chunk).await?;
        sock.flush().await?;
    }
    let junk = pseudo_random(WRITE_CHUNK, 0xbad);
    let mut sent_extra = 0u64;
    while sent_extra < extra {
        let n = (extra - sent_extra).min(WRITE_CHUNK as u64) as usize;
        count(n);
        sock.write_all(&junk[..n]).await?;
        sent_extra += n as u64;
    }
    sock.shutdown().await
}

fn open_store() -> (tempfile::TempDir, ModelStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ModelStore::open(dir.path()).expect("open store");
    (dir, store)
}

fn dir_entries(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn part_file(dir: &Path, sha: &[u8; 32]) -> PathBuf {
    dir.join("tmp").join(format!("{}.part", hex::encode(sha)))
}

#[tokio::test]
async fn good_artifact_is_stored_by_digest_and_a_second_fetch_downloads_nothing() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Good).await;
    let (dir, store) = open_store();
    let job = signed_job(&body, &server.url, TRUSTED_SEED);

    let first = fetch(&store, &job, NOW_MS).await.expect("fetch");
    let expected_path =
        dir.path().join("models").join(format!("{}.onnx", hex::encode(job.artifact.sha256)));
    assert_eq!(first.path, expected_path);
    assert_eq!(store.model_path(&job.artifact.sha256), expected_path);
    assert_eq!(first.bytes_downloaded, SIZE as u64);
    assert!(!first.resumed);
    assert_eq!(std::fs::read(&first.path).expect("read model"), body);
    assert!(dir_entries(&dir.path().join("tmp")).is_empty(), "no .part left behind");
    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].request_line, "GET /model.onnx HTTP/1.1");
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[0].status, 200);

    let second = fetch(&store, &job, NOW_MS).await.expect("refetch");
    assert_eq!(second, Fetched { path: expected_path, bytes_downloaded: 0, resumed: false });
    assert_eq!(server.requests().len(), 1, "a stored model is not downloaded again");
}

/// Fetches `artifact` from a good server and asserts it is refused with `kind` before any
/// request is made and before anything is written.
async fn assert_refused_before_download(
    server: &TestServer,
    job: &JobCommand,
    now_ms: u64,
    kind: FailureKind,
) -> ArtifactError {
    let (dir, store) = open_store();
    let err = fetch(&store, job, now_ms).await.expect_err("job must be refused");
    assert_eq!(err.kind(), kind, "{err}");
    assert!(server.requests().is_empty(), "server saw {:?}", server.requests());
    assert!(dir_entries(&dir.path().join("models")).is_empty());
    assert!(dir_entries(&dir.path().join("tmp")).is_empty());
    err
}

#[tokio::test]
async fn unsigned_manifest_is_refused_before_any_request() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Good).await;
    let mut job = signed_job(&body, &server.url, TRUSTED_SEED);
    job.signature.clear();
    let err = assert_refused_before_download(&server, &job, NOW_MS, FailureKind::Unsigned).await;
    assert!(matches!(err, ArtifactError::Unsigned(ref id) if id == "job-1"), "{err:?}");
}

#[tokio::test]
async fn signature_by_an_untrusted_key_is_refused_before_any_request() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Good).await;
    let job = signed_job(&body, &server.url, TRUSTED_SEED + 1);
    let err =
        assert_refused_before_download(&server, &job, NOW_MS, FailureKind::BadSignature).await;
    assert!(matches!(err, ArtifactError::BadSignature(ref id) if id == "job-1"), "{err:?}");
}

#[tokio::test]
async fn signature_over_a_different_size_is_refused_before_any_request() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Good).await;
    let mut job = signed_job(&body, &server.url, TRUSTED_SEED);
    job.artifact.size += 1;
    sign(&mut job, TRUSTED_SEED);
    job.artifact.size -= 1;
    let err =
        assert_refused_before_download(&server, &job, NOW_MS, FailureKind::BadSignature).await;
    assert!(matches!(err, ArtifactError::BadSignature(_)), "{err:?}");
}

#[tokio::test]
async fn malformed_signature_is_refused_before_any_request() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Good).await;
    let mut job = signed_job(&body, &server.url, TRUSTED_SEED);
    job.signature.truncate(63);
    let err =
        assert_refused_before_download(&server, &job, NOW_MS, FailureKind::BadSignature).await;
    assert!(matches!(err, ArtifactError::BadSignature(_)), "{err:?}");
}

/// Changes one field of a job.
type Tamper = fn(&mut JobCommand);

/// Every field the agent acts on is signed: changing any one of them after signing (the
/// download URL, the benchmark spec, the timeout, the ids) is refused before any request.
#[tokio::test]
async fn a_tampered_field_of_the_job_is_refused_before_any_request() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Good).await;
    let tampers: Vec<(&str, Tamper)> = vec![
        ("url", |j| j.artifact.url = "http://evil.example/model.onnx".into()),
        ("spec.max_iterations", |j| j.spec.max_iterations = 1_000_000),
        ("spec.symbols", |j| j.spec.symbols.push(("batch".into(), 1 << 40))),
        ("spec.mode", |j| {
            j.spec.mode = hone_common::bench::BenchMode::Sustained { seconds: 86_400 }
        }),
        ("timeout_ms", |j| j.timeout_ms = u64::MAX),
        ("command_id", |j| j.command_id = "cmd-forged".into()),
        ("job_id", |j| j.job_id = "job-forged".into()),
        ("attempt", |j| j.attempt += 1),
        ("expires_at_ms", |j| j.artifact.expires_at_ms += 1),
        ("sha256", |j| j.artifact.sha256[0] ^= 1),
    ];
    for (field, tamper) in tampers {
        let mut job = signed_job(&body, &server.url, TRUSTED_SEED);
        tamper(&mut job);
        let err =
            assert_refused_before_download(&server, &job, NOW_MS, FailureKind::BadSignature).await;
        assert!(matches!(err, ArtifactError::BadSignature(_)), "{field}: {err:?}");
    }
    // The untampered document verifies.
    let job = signed_job(&body, &server.url, TRUSTED_SEED);
    assert!(verify_job(job, &trusted_key(), NOW_MS, None).is_ok());
}

#[tokio::test]
async fn expired_manifest_is_refused_before_download() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Good).await;
    let job = signed_job(&body, &server.url, TRUSTED_SEED);
    let late = job.artifact.expires_at_ms + 1;
    let err = assert_refused_before_download(&server, &job, late, FailureKind::Expired).await;
    match err {
        ArtifactError::Expired { expires_at_ms, now_ms } => {
            assert_eq!(expires_at_ms, job.artifact.expires_at_ms);
            assert_eq!(now_ms, late);
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    // Expiry is checked before the signature: an expired unsigned manifest is still Expired.
    let mut unsigned = job.clone();
    unsigned.signature.clear();
    assert_refused_before_download(&server, &unsigned, late, FailureKind::Expired).await;
}

#[tokio::test]
async fn tampered_bytes_are_a_hash_mismatch_and_nothing_is_kept() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Tampered).await;
    let (dir, store) = open_store();
    let job = signed_job(&body, &server.url, TRUSTED_SEED);

    let err = fetch(&store, &job, NOW_MS).await.expect_err("tampered");
    assert_eq!(err.kind(), FailureKind::HashMismatch);
    let mut tampered = body.clone();
    tampered[SIZE / 2] ^= 0x10;
    match &err {
        ArtifactError::HashMismatch { expected, actual } => {
            assert_eq!(expected, &hex::encode(job.artifact.sha256));
            assert_eq!(actual, &hex::encode(sha256_of(&tampered)));
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    assert!(dir_entries(&dir.path().join("models")).is_empty());
    assert!(!part_file(dir.path(), &job.artifact.sha256).exists(), ".part removed");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn truncated_download_is_kept_and_resumed_with_a_range_request() {
    let body = model_bytes();
    let cut = 120 * 1024 + 17;
    let server = TestServer::start(body.clone(), Mode::Truncate(cut)).await;
    let (dir, store) = open_store();
    let job = signed_job(&body, &server.url, TRUSTED_SEED);

    let err = fetch(&store, &job, NOW_MS).await.expect_err("truncated");
    assert_eq!(err.kind(), FailureKind::Download, "{err}");
    assert!(matches!(err, ArtifactError::Download(_)), "{err:?}");
    assert!(dir_entries(&dir.path().join("models")).is_empty());
    let part = part_file(dir.path(), &job.artifact.sha256);
    let kept = std::fs::read(&part).expect("partial file kept for resume");
    assert_eq!(kept.len(), cut, "every byte received is kept");
    assert_eq!(kept[..], body[..cut]);

    server.set_mode(Mode::Good);
    let fetched = fetch(&store, &job, NOW_MS).await.expect("resume");
    assert!(fetched.resumed);
    assert_eq!(fetched.bytes_downloaded, (SIZE - cut) as u64);
    assert_eq!(std::fs::read(&fetched.path).expect("read model"), body);
    assert!(!part.exists());

    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].range.as_deref(), Some(format!("bytes={cut}-").as_str()));
    assert_eq!(seen[1].status, 206);
    assert_eq!(seen[1].body_sent, (SIZE - cut) as u64, "only the missing bytes are sent");
    let total = server.total_body_sent();
    assert!(total as f64 <= 1.05 * SIZE as f64, "sent {total} bytes for a {SIZE}-byte model");
}

#[tokio::test]
async fn body_ending_cleanly_before_the_declared_size_is_a_download_error_kept_for_resume() {
    let body = model_bytes();
    let cut = 100 * 1024;
    let server = TestServer::start(body.clone(), Mode::EndEarly(cut)).await;
    let (dir, store) = open_store();
    let job = signed_job(&body, &server.url, TRUSTED_SEED);

    let err = fetch(&store, &job, NOW_MS).await.expect_err("short");
    assert!(matches!(err, ArtifactError::Download(_)), "{err:?}");
    assert_eq!(err.kind(), FailureKind::Download);
    assert!(dir_entries(&dir.path().join("models")).is_empty());
    let kept = std::fs::read(part_file(dir.path(), &job.artifact.sha256)).expect("part kept");
    assert_eq!(kept[..], body[..cut]);

    server.set_mode(Mode::Good);
    let fetched = fetch(&store, &job, NOW_MS).await.expect("resume");
    assert!(fetched.resumed);
    assert_eq!(fetched.bytes_downloaded, (SIZE - cut) as u64);
    assert_eq!(std::fs::read(&fetched.path).expect("read model"), body);
}

#[tokio::test]
async fn server_ignoring_range_restarts_from_zero_and_still_verifies() {
    let body = model_bytes();
    let cut = 64 * 1024 + 3;
    let server = TestServer::start(body.clone(), Mode::Truncate(cut)).await;
    let (dir, store) = open_store();
    let job = signed_job(&body, &server.url, TRUSTED_SEED);
    fetch(&store, &job, NOW_MS).await.expect_err("truncated");
    assert_eq!(
        std::fs::metadata(part_file(dir.path(), &job.artifact.sha256)).expect("part").len(),
        cut as u64
    );

    server.set_mode(Mode::IgnoreRange);
    let fetched = fetch(&store, &job, NOW_MS).await.expect("restart");
    assert!(!fetched.resumed, "a 200 answer is not a resume");
    assert_eq!(fetched.bytes_downloaded, SIZE as u64);
    let stored = std::fs::read(&fetched.path).expect("read model");
    assert_eq!(stored.len(), SIZE, "the partial prefix was not kept in front of the full body");
    assert_eq!(sha256_of(&stored), job.artifact.sha256);
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].range.as_deref(), Some(format!("bytes={cut}-").as_str()));
    assert_eq!(seen[1].status, 200);
}

#[tokio::test]
async fn corrupt_partial_file_fails_the_hash_once_and_is_then_replaced() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Good).await;
    let (dir, store) = open_store();
    let job = signed_job(&body, &server.url, TRUSTED_SEED);
    let part = part_file(dir.path(), &job.artifact.sha256);
    std::fs::write(&part, vec![0u8; 1000]).expect("write bogus part");

    let err = fetch(&store, &job, NOW_MS).await.expect_err("bad part");
    assert_eq!(err.kind(), FailureKind::HashMismatch, "{err}");
    assert!(!part.exists(), "the poisoned partial file is dropped");
    assert!(dir_entries(&dir.path().join("models")).is_empty());

    let fetched = fetch(&store, &job, NOW_MS).await.expect("fresh");
    assert!(!fetched.resumed);
    assert_eq!(std::fs::read(&fetched.path).expect("read model"), body);
}

#[tokio::test]
async fn oversized_partial_file_is_discarded_and_the_download_starts_over() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Good).await;
    let (dir, store) = open_store();
    let job = signed_job(&body, &server.url, TRUSTED_SEED);
    let part = part_file(dir.path(), &job.artifact.sha256);
    std::fs::write(&part, vec![1u8; SIZE + 1]).expect("write oversized part");

    let fetched = fetch(&store, &job, NOW_MS).await.expect("fetch");
    assert!(!fetched.resumed);
    assert_eq!(fetched.bytes_downloaded, SIZE as u64);
    assert_eq!(std::fs::read(&fetched.path).expect("read model"), body);
    assert_eq!(server.requests()[0].range, None);
}

#[tokio::test]
async fn endless_body_is_aborted_as_size_exceeded_and_nothing_is_kept() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Endless).await;
    let (dir, store) = open_store();
    let job = signed_job(&body, &server.url, TRUSTED_SEED);

    let err = fetch(&store, &job, NOW_MS).await.expect_err("endless");
    assert_eq!(err.kind(), FailureKind::SizeExceeded, "{err}");
    assert!(matches!(err, ArtifactError::SizeExceeded { declared } if declared == SIZE as u64));
    assert!(dir_entries(&dir.path().join("models")).is_empty());
    assert!(!part_file(dir.path(), &job.artifact.sha256).exists(), ".part removed");
    // The client hung up long before the server's safety cap.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(server.total_body_sent() < SIZE as u64 + ENDLESS_CAP);
}

#[tokio::test]
async fn a_single_byte_beyond_the_declared_size_is_size_exceeded() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Extra(1)).await;
    let (dir, store) = open_store();
    let job = signed_job(&body, &server.url, TRUSTED_SEED);

    let err = fetch(&store, &job, NOW_MS).await.expect_err("extra");
    assert!(
        matches!(err, ArtifactError::SizeExceeded { declared } if declared == SIZE as u64),
        "{err:?}"
    );
    assert!(dir_entries(&dir.path().join("models")).is_empty());
    assert!(!part_file(dir.path(), &job.artifact.sha256).exists(), ".part removed");
}

#[tokio::test]
async fn http_404_is_a_download_error_naming_the_status() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::NotFound).await;
    let (dir, store) = open_store();
    let job = signed_job(&body, &server.url, TRUSTED_SEED);

    let err = fetch(&store, &job, NOW_MS).await.expect_err("404");
    assert_eq!(err.kind(), FailureKind::Download);
    match &err {
        ArtifactError::Download(msg) => assert!(msg.contains("404"), "{msg}"),
        other => panic!("expected Download, got {other:?}"),
    }
    assert!(err.to_string().contains("404"));
    assert!(dir_entries(&dir.path().join("models")).is_empty());
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn every_artifact_error_maps_to_its_failure_kind() {
    let cases = [
        (ArtifactError::Expired { expires_at_ms: 1, now_ms: 2 }, FailureKind::Expired),
        (ArtifactError::Unsigned("m".into()), FailureKind::Unsigned),
        (ArtifactError::BadSignature("m".into()), FailureKind::BadSignature),
        (ArtifactError::SizeExceeded { declared: 3 }, FailureKind::SizeExceeded),
        (
            ArtifactError::HashMismatch { expected: "a".into(), actual: "b".into() },
            FailureKind::HashMismatch,
        ),
        (ArtifactError::Download("x".into()), FailureKind::Download),
        (ArtifactError::Io(std::io::Error::other("disk")), FailureKind::Internal),
    ];
    for (err, kind) in cases {
        assert_eq!(err.kind(), kind, "{err:?}");
    }
    assert!(FailureKind::Download.is_retryable());
    assert!(!FailureKind::BadSignature.is_retryable());
    assert!(!FailureKind::HashMismatch.is_retryable());
}

/// An activation of `job`'s artifact, signed by the key with `seed`.
fn signed_activation(job: &JobCommand, seed: u8) -> ActivateCommand {
    let mut cmd = ActivateCommand {
        command_id: "act-1".into(),
        deployment_id: "dep-1".into(),
        model_name: "m".into(),
        artifact: Some(job.artifact.clone()),
        probe_rps: 0,
        probe_s: 0,
        runtime: "tract".into(),
        warmup: 1,
        symbols: vec![],
        inputs: Default::default(),
        unknown_token_id: None,
        timeout_ms: 60_000,
        seq: 100,
        signature: Vec::new(),
    };
    let msg = activation_signing_bytes(&cmd);
    cmd.signature = SigningKey::from_bytes(&[seed; 32]).sign(&msg).to_bytes().to_vec();
    cmd
}

#[tokio::test]
async fn activations_are_verified_like_jobs_before_any_request() {
    let body = model_bytes();
    let server = TestServer::start(body.clone(), Mode::Good).await;
    let job = signed_job(&body, &server.url, TRUSTED_SEED);
    let refused = |cmd: ActivateCommand, now: u64| {
        verify_activation(cmd, &trusted_key(), now, None).map(drop).unwrap_err().1.kind()
    };
    let mut unsigned = signed_activation(&job, TRUSTED_SEED);
    unsigned.signature.clear();
    assert_eq!(refused(unsigned, NOW_MS), FailureKind::Unsigned);
    assert_eq!(refused(signed_activation(&job, 9), NOW_MS), FailureKind::BadSignature);
    let mut tampered = signed_activation(&job, TRUSTED_SEED);
    tampered.model_name = "other".into();
    assert_eq!(refused(tampered, NOW_MS), FailureKind::BadSignature);
    // A job's signature is never an activation's: the domain tags differ.
    let mut replayed = signed_activation(&job, TRUSTED_SEED);
    replayed.signature = job.signature.clone();
    assert_eq!(refused(replayed, NOW_MS), FailureKind::BadSignature);
    assert_eq!(
        refused(signed_activation(&job, TRUSTED_SEED), NOW_MS + 120_000),
        FailureKind::Expired
    );
    assert!(server.requests().is_empty(), "nothing fetched for a refused activation");

    // A good one fetches and verifies exactly like a job; stopping fetches nothing.
    let (_dir, store) = open_store();
    let ok = verify_activation(signed_activation(&job, TRUSTED_SEED), &trusted_key(), NOW_MS, None)
        .expect("verified");
    let fetched = store.fetch_activation(&ok).await.expect("fetched").expect("a model");
    assert_eq!(std::fs::read(&fetched.path).unwrap(), body);
    let mut stop = signed_activation(&job, TRUSTED_SEED);
    stop.artifact = None;
    let msg = activation_signing_bytes(&stop);
    stop.signature = SigningKey::from_bytes(&[TRUSTED_SEED; 32]).sign(&msg).to_bytes().to_vec();
    let stop = verify_activation(stop, &trusted_key(), NOW_MS, None).expect("verified");
    assert!(store.fetch_activation(&stop).await.unwrap().is_none());
    assert_eq!(server.requests().len(), 1);
}

/// `job` renumbered to `seq` with a new command id, signed by the trusted key.
fn renumbered(job: &JobCommand, seq: u64, command_id: &str) -> JobCommand {
    let mut j = job.clone();
    j.seq = seq;
    j.command_id = command_id.into();
    sign(&mut j, TRUSTED_SEED);
    j
}

#[test]
fn a_signed_job_whose_sequence_is_not_above_the_last_accepted_is_refused_as_replayed() {
    let job = signed_job(b"m", "http://x/a", TRUSTED_SEED);
    let last = Accepted { seq: 100, command_id: "cmd-1".into() };
    let verdict = |j: JobCommand| verify_job(j, &trusted_key(), NOW_MS, Some(&last)).map(drop);
    // The last accepted command delivered again (MQTT redelivery) passes: the seen-command
    // log answers it as today.
    assert!(verdict(job.clone()).is_ok());
    // An older document (a frozen stream released late: still signed, not expired) or another
    // command with the same number is refused, with both numbers.
    for (seq, id) in [(99, "cmd-0"), (100, "cmd-2"), (1, "cmd-old")] {
        let e = verdict(renumbered(&job, seq, id)).unwrap_err().1;
        assert!(matches!(e, ArtifactError::Replayed { seq: s, last: 100 } if s == seq), "{e:?}");
        assert_eq!(e.kind(), FailureKind::Replayed);
        assert!(e.to_string().contains("replayed"), "{e}");
    }
    // A newer one (a deliberate rollback is a new document, so a higher number) passes.
    assert!(verdict(renumbered(&job, 101, "cmd-3")).is_ok());
    // The signature is checked first: a forged low number is a bad signature, not a replay.
    let mut forged = renumbered(&job, 5, "cmd-9");
    forged.signature[0] ^= 1;
    assert_eq!(verdict(forged).unwrap_err().1.kind(), FailureKind::BadSignature);
    // The number is signed: raising it breaks the signature.
    let mut raised = job.clone();
    raised.seq = 1_000;
    assert_eq!(verdict(raised).unwrap_err().1.kind(), FailureKind::BadSignature);
}

#[test]
fn activations_are_numbered_like_jobs_and_a_rollback_with_a_higher_number_is_accepted() {
    let job = signed_job(b"m", "http://x/a", TRUSTED_SEED);
    let first = signed_activation(&job, TRUSTED_SEED);
    let last = Accepted { seq: first.seq, command_id: first.command_id.clone() };
    let check = |c: ActivateCommand| verify_activation(c, &trusted_key(), NOW_MS, Some(&last));
    assert!(check(first.clone()).is_ok(), "a redelivery of the last one");
    let resign = |mut c: ActivateCommand, seq: u64, id: &str| {
        c.seq = seq;
        c.command_id = id.into();
        let msg = activation_signing_bytes(&c);
        c.signature = SigningKey::from_bytes(&[TRUSTED_SEED; 32]).sign(&msg).to_bytes().to_vec();
        c
    };
    let old = resign(first.clone(), first.seq - 1, "act-0");
    assert!(matches!(check(old).unwrap_err().1, ArtifactError::Replayed { .. }));
    let mut rollback = resign(first.clone(), first.seq + 1, "act-rollback");
    rollback.artifact = None;
    let rollback = resign(rollback, first.seq + 1, "act-rollback");
    assert!(check(rollback).is_ok(), "a rollback is a new document with a higher number");
}
