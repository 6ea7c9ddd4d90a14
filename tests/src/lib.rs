//! End-to-end harness: real `coordinator` and `edge-agent` processes on loopback, a real broker
//! (embedded rumqttd, or Mosquitto at `HONE_TEST_MQTT_URL`), SQLite or PostgreSQL
//! (`HONE_TEST_POSTGRES_URL`), real models from the asset cache and tiny generated ones.
//!
//! The binaries are the ones cargo built next to the test executable (`target/debug/`);
//! `scripts/test.sh` builds them first.

pub mod models;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// Directory holding the built binaries: `$HONE_BIN_DIR` if set (a copy of this checkout's
/// binaries, when several checkouts share one `CARGO_TARGET_DIR` and overwrite each other's
/// `target/debug/` binaries), else the folder cargo built them in.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HONE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/debug/deps/e2e-HASH, harness binaries from target/debug/.
    let dir = exe.parent().expect("executable folder");
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary, which must have been built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A short random suffix for names shared with external services.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &ulid::Ulid::new().to_string().to_lowercase()[16..])
}

/// The external broker for tests (Mosquitto on this machine by default).
pub fn external_mqtt_url() -> String {
    std::env::var("HONE_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

/// Server URL of the PostgreSQL used by tests (a fresh database is created per test).
pub fn postgres_server_url() -> String {
    std::env::var("HONE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Creates a fresh PostgreSQL database with `psql`; returns its URL.
pub fn fresh_postgres_db() -> anyhow::Result<String> {
    let server = postgres_server_url();
    let name = unique("hone_e2e").replace('-', "_");
    let out = Command::new("psql")
        .arg(format!("{server}/postgres"))
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .context("running psql (is the postgresql client installed?)")?;
    if !out.status.success() {
        bail!("creating database {name} on {server}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(format!("{server}/{name}"))
}

/// A child process of the harness, killed (`kill -9`) when dropped.
#[derive(Default)]
pub struct Process(Option<Child>);

impl Process {
    /// `kill -9` and reap; nothing if it is not running.
    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its exit status if it has ended.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A process the harness can kill and start again with the same state.
pub trait Restartable {
    /// Starts the process (again).
    fn spawn(&mut self) -> anyhow::Result<()>;

    /// The running process.
    fn process(&mut self) -> &mut Process;

    /// `kill -9`.
    fn kill9(&mut self) {
        self.process().kill9();
    }

    /// `kill -9`, then starts it again with the same ports, data and database.
    fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }
}

/// How the coordinator reaches its broker.
#[derive(Debug, Clone)]
pub enum Broker {
    /// Embedded rumqttd on this port.
    Embedded(u16),
    /// An external broker URL.
    External(String),
}

/// A coordinator process.
pub struct CoordinatorProc {
    /// Data folder.
    pub data_dir: PathBuf,
    /// HTTP port.
    pub http_port: u16,
    /// Broker.
    pub broker: Broker,
    /// Database URL (None: SQLite in the data folder).
    pub database_url: Option<String>,
    /// MQTT client id.
    pub client_id: String,
    /// The coordinator's import folder (`--import-dir`): `register_path` reads only from here.
    pub import_dir: PathBuf,
    /// The operator token the coordinator wrote at its first start.
    pub token: Option<String>,
    /// More `serve` arguments (e.g. `--mlflow-url URL`), kept across restarts.
    pub extra_args: Vec<String>,
    /// TLS with enrolled devices (else `--plain`): the MQTT gate's port with the embedded
    /// broker, 0 with an external one.
    pub tls_gate_port: Option<u16>,
    child: Process,
}

impl CoordinatorProc {
    /// Starts a coordinator and waits for its API.
    pub fn start(
        data_dir: &Path,
        broker: Broker,
        database_url: Option<String>,
    ) -> anyhow::Result<CoordinatorProc> {
        CoordinatorProc::start_with(data_dir, broker, database_url, &[])
    }

    /// Starts a coordinator with more `serve` arguments and waits for its API.
    pub fn start_with(
        data_dir: &Path,
        broker: Broker,
        database_url: Option<String>,
        extra_args: &[&str],
    ) -> anyhow::Result<CoordinatorProc> {
        CoordinatorProc::start_full(data_dir, broker, database_url, extra_args, false)
    }

    /// Starts a coordinator on TLS (no `--plain`): HTTPS, the MQTT gate in front of an embedded
    /// broker (or `mqtts://` to an external one), devices enrolled by [`enroll`].
    pub fn start_tls(
        data_dir: &Path,
        broker: Broker,
        database_url: Option<String>,
        extra_args: &[&str],
    ) -> anyhow::Result<CoordinatorProc> {
        CoordinatorProc::start_full(data_dir, broker, database_url, extra_args, true)
    }

    fn start_full(
        data_dir: &Path,
        broker: Broker,
        database_url: Option<String>,
        extra_args: &[&str],
        tls: bool,
    ) -> anyhow::Result<CoordinatorProc> {
        let tls_gate_port = tls.then(|| match broker {
            Broker::Embedded(_) => free_port(),
            Broker::External(_) => 0,
        });
        let mut c = CoordinatorProc {
            data_dir: data_dir.to_path_buf(),
            http_port: free_port(),
            broker,
            database_url,
            client_id: unique("hone-coord"),
            import_dir: data_dir.join("import"),
            token: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            tls_gate_port,
            child: Process::default(),
        };
        c.spawn()?;
        Ok(c)
    }
}

impl Restartable for CoordinatorProc {
    fn process(&mut self) -> &mut Process {
        &mut self.child
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin("coordinator"));
        cmd.arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.http_port)])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--import-dir")
            .arg(&self.import_dir)
            .args(["--mqtt-client-id", &self.client_id]);
        match &self.broker {
            Broker::Embedded(port) => cmd.args(["--mqtt-listen", &format!("127.0.0.1:{port}")]),
            Broker::External(url) => cmd.args(["--mqtt-url", url]),
        };
        if let Some(db) = &self.database_url {
            cmd.args(["--database-url", db]);
        }
        match self.tls_gate_port {
            None => cmd.arg("--plain"),
            Some(port) => cmd.args(["--mqtt-tls-listen", &format!("127.0.0.1:{port}")]),
        };
        cmd.args(&self.extra_args);
        std::fs::create_dir_all(&self.data_dir)?;
        std::fs::create_dir_all(&self.import_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("coordinator.log"))?;
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn()?;
        self.child = Process(Some(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Built each time: a TLS coordinator writes its CA when it starts.
            let api = self.api();
            if let Ok(v) = api.get("/api/v1/health")
                && v["mqtt_connected"] == true
            {
                let token_file = self.data_dir.join("operator.token");
                let token = std::fs::read_to_string(&token_file)
                    .with_context(|| format!("reading {}", token_file.display()))?;
                self.token = Some(token.trim().to_string());
                return Ok(());
            }
            if let Some(status) = self.child.exited() {
                bail!("coordinator exited with {status}; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("coordinator did not become healthy in 30 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl CoordinatorProc {
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("coordinator.log")).unwrap_or_default()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// API client with the operator token (trusting the coordinator's CA on TLS).
    pub fn api(&self) -> Api {
        let api = Api::new(&self.api_url()).with_token(self.token.clone());
        match self.tls_gate_port {
            Some(_) => api.with_ca(&self.ca_pem()),
            None => api,
        }
    }

    /// The coordinator's CA certificate (TLS).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("pki/ca.pem")).unwrap_or_default()
    }

    /// The `coordinator` command line, pointed at this coordinator with the operator token
    /// (`HONE_API`, `HONE_TOKEN`).
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(bin("coordinator"));
        cmd.env("HONE_API", self.api_url()).env_remove("HONE_TOKEN_FILE");
        cmd.env("HONE_CA_FILE", self.data_dir.join("pki/ca.pem"));
        match &self.token {
            Some(token) => cmd.env("HONE_TOKEN", token),
            None => cmd.env_remove("HONE_TOKEN"),
        };
        cmd
    }

    /// API base URL.
    pub fn api_url(&self) -> String {
        let scheme = if self.tls_gate_port.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.http_port)
    }

    /// Broker URL agents use (the gate, on TLS with the embedded broker).
    pub fn mqtt_url(&self) -> String {
        match (&self.broker, self.tls_gate_port) {
            (Broker::Embedded(_), Some(gate)) => format!("mqtts://127.0.0.1:{gate}"),
            (Broker::Embedded(port), None) => format!("mqtt://127.0.0.1:{port}"),
            (Broker::External(url), _) => url.clone(),
        }
    }

    /// Creates a one-time enrolment token (bound to `device` if given); returns the token and
    /// the CA fingerprint.
    pub fn enrol_token(&self, device: Option<&str>) -> anyhow::Result<(String, String)> {
        let (status, v) = self
            .api()
            .post("/api/v1/enroll/tokens", &serde_json::json!({ "device_id": device }))?;
        if status != 200 {
            bail!("creating an enrolment token: {status} {v}");
        }
        Ok((v["token"].as_str().unwrap().to_string(), v["ca_sha256"].as_str().unwrap().to_string()))
    }

    /// The signing key agents trust.
    pub fn trust_key(&self) -> String {
        self.api().get("/api/v1/trust").unwrap()["public_key"].as_str().unwrap().to_string()
    }
}

/// An agent process.
pub struct AgentProc {
    /// Device id.
    pub device_id: String,
    /// State folder.
    pub state_dir: PathBuf,
    args: Vec<String>,
    child: Process,
    log: PathBuf,
}

impl AgentProc {
    /// Starts an agent for `coord` with a built-in profile and a keepalive in seconds.
    pub fn start(
        coord: &CoordinatorProc,
        root: &Path,
        device_id: &str,
        profile: &str,
        keepalive: u64,
    ) -> anyhow::Result<AgentProc> {
        Self::start_with(coord, root, device_id, &["--profile", profile], keepalive)
    }

    /// Starts an agent with extra arguments (e.g. `--profile-file`).
    pub fn start_with(
        coord: &CoordinatorProc,
        root: &Path,
        device_id: &str,
        extra: &[&str],
        keepalive: u64,
    ) -> anyhow::Result<AgentProc> {
        let state_dir = root.join(device_id);
        std::fs::create_dir_all(&state_dir)?;
        if coord.tls_gate_port.is_some() && !state_dir.join("tls/identity.json").exists() {
            enroll(coord, &state_dir, device_id)?;
        }
        let args = vec![
            "run".to_string(),
            "--broker".into(),
            coord.mqtt_url(),
            "--coordinator".into(),
            coord.api_url(),
            "--device-id".into(),
            device_id.into(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--keepalive-secs".into(),
            keepalive.to_string(),
            "--trust-key".into(),
            coord.trust_key(),
            // Many agents share this host: each serves on a port of its own.
            "--serve-addr".into(),
            "127.0.0.1:0".into(),
        ];
        let mut args = args;
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut a = AgentProc {
            device_id: device_id.into(),
            log: root.join(format!("{device_id}.log")),
            state_dir,
            args,
            child: Process::default(),
        };
        a.spawn()?;
        Ok(a)
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child.0.is_some() && self.child.exited().is_none()
    }

    /// Results still waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        std::fs::read_dir(self.state_dir.join("outbox")).map(|d| d.count()).unwrap_or(0)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Resident set size of the agent process, bytes (Linux).
    pub fn rss_bytes(&self) -> Option<u64> {
        let pid = self.child.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line[6..].trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
    }
}

impl Restartable for AgentProc {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(bin("edge-agent"));
        if std::env::var_os("HONE_CALIBRATION_DIR").is_none() {
            // One host calibration for every test agent, outside the host's own folder.
            cmd.env("HONE_CALIBRATION_DIR", std::env::temp_dir().join("hone-e2e-calibration"));
        }
        let child = cmd
            .args(&self.args)
            .env("RUST_LOG", "edge_agent=debug,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Process(Some(child));
        Ok(())
    }

    fn process(&mut self) -> &mut Process {
        &mut self.child
    }
}

/// Enrols `device` into `state_dir` with a token bound to it (`edge-agent enroll`).
pub fn enroll(coord: &CoordinatorProc, state_dir: &Path, device: &str) -> anyhow::Result<()> {
    let (token, ca) = coord.enrol_token(Some(device))?;
    let out = Command::new(bin("edge-agent"))
        .args(["enroll", "--coordinator", &coord.api_url(), "--ca-sha256", &ca])
        .args(["--device-id", device, "--state-dir"])
        .arg(state_dir)
        .env("HONE_ENROL_TOKEN", token)
        .output()?;
    if !out.status.success() {
        bail!("edge-agent enroll failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A blocking JSON client of the coordinator API.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::blocking::Client,
    token: Option<String>,
}

impl Api {
    /// Client for `base`, without a token.
    pub fn new(base: &str) -> Api {
        Api {
            base: base.into(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            token: None,
        }
    }

    /// The same client trusting only the CA in `ca_pem` (a TLS coordinator).
    pub fn with_ca(mut self, ca_pem: &str) -> Api {
        let Ok(cert) = reqwest::Certificate::from_pem(ca_pem.as_bytes()) else { return self };
        self.http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert)
            .build()
            .unwrap();
        self
    }

    /// The same client with `token` as its bearer token (none if `None`).
    pub fn with_token(mut self, token: Option<String>) -> Api {
        self.token = token;
        self
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// GET; returns (status, JSON body or null).
    pub fn get_status(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let r = self.request(reqwest::Method::GET, path).send()?;
        let status = r.status().as_u16();
        Ok((status, r.json().unwrap_or(Value::Null)))
    }

    /// GET JSON (error on non-2xx).
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, v) = self.get_status(path)?;
        if !(200..300).contains(&status) {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }

    /// POST JSON; returns (status, body).
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r = self.request(reqwest::Method::POST, path).json(body).send()?;
        let status = r.status().as_u16();
        Ok((status, r.json().unwrap_or(Value::Null)))
    }

    /// POST raw bytes; returns (status, body).
    pub fn post_bytes(&self, path: &str, bytes: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let r = self.request(reqwest::Method::POST, path).body(bytes).send()?;
        let status = r.status().as_u16();
        Ok((status, r.json().unwrap_or(Value::Null)))
    }

    /// Registers a model file by uploading it; returns its id.
    pub fn register(&self, path: &Path, name: &str) -> anyhow::Result<String> {
        self.register_with_inputs(path, name, "")
    }

    /// [`Api::register`] with input shapes (`x=1x3x48x320`), stored with the model.
    pub fn register_with_inputs(
        &self,
        path: &Path,
        name: &str,
        inputs: &str,
    ) -> anyhow::Result<String> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let r = self
            .request(reqwest::Method::POST, "/api/v1/models")
            .query(&[("name", name), ("inputs", inputs)])
            .body(bytes)
            .send()?;
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            bail!("registering {name}: {status} {body}");
        }
        Ok(body["id"].as_str().unwrap().to_string())
    }

    /// Registers a file on the coordinator's disk by path (`POST /api/v1/models/register`);
    /// returns (status, body).
    pub fn register_path(&self, path: &Path, name: &str) -> anyhow::Result<(u16, Value)> {
        self.post("/api/v1/models/register", &serde_json::json!({"path": path, "name": name}))
    }

    /// Waits until a device's online state is `online`; returns the elapsed time.
    pub fn wait_device(
        &self,
        id: &str,
        online: bool,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if let Ok(d) = self.get(&format!("/api/v1/devices/{id}"))
                && d["online"] == online
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "device {id} not {} within {timeout:?}",
                    if online { "online" } else { "offline" }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a campaign; returns its id.
    pub fn start_campaign(&self, body: Value) -> anyhow::Result<String> {
        let (status, v) = self.post("/api/v1/campaigns", &body)?;
        if !(200..300).contains(&status) {
            bail!("starting campaign: {status} {v}");
        }
        Ok(v["id"].as_str().unwrap().to_string())
    }

    /// Waits for a campaign to finish; returns its view.
    pub fn wait_campaign(&self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            if let Ok(v) = self.get(&format!("/api/v1/campaigns/{id}"))
                && (v["state"] == "done" || v["state"] == "cancelled")
            {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                bail!(
                    "campaign {id} not done within {timeout:?}: {}",
                    self.get(&format!("/api/v1/campaigns/{id}"))?
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `pred` holds for the campaign view.
    pub fn wait_campaign_until(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let v = self.get(&format!("/api/v1/campaigns/{id}"))?;
            if pred(&v) {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                bail!("campaign {id}: condition not reached within {timeout:?}: {v}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Counter value from `/api/v1/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        self.get("/api/v1/metrics").unwrap()[name].as_u64().unwrap_or(0)
    }
}

/// Path of a real model from the asset cache (fetched by `scripts/fetch-assets.sh`).
pub fn asset(name: &str) -> PathBuf {
    hone_assets::path(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Clears a device's retained status on an external broker (test hygiene).
pub fn clear_retained(mqtt_url: &str, device_ids: &[&str]) {
    let (host, port) = hone_common::parse_mqtt_url(mqtt_url).unwrap();
    let mut opts = rumqttc::MqttOptions::new(unique("hone-cleaner"), host, port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 16);
    for id in device_ids {
        let _ = client.publish(
            hone_common::topic::status(id),
            rumqttc::QoS::AtLeastOnce,
            true,
            Vec::<u8>::new(),
        );
    }
    let _ = client.disconnect();
    for ev in conn.iter().take(50) {
        if ev.is_err() {
            break;
        }
    }
}

/// (topic, payload) of every captured message, shared with the capturing thread.
type Captured = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// Every message published on some topic filters, as a broker subscriber sees them (the bytes
/// as sent), collected by a thread until dropped.
pub struct Capture {
    seen: Captured,
    client: rumqttc::Client,
}

impl Capture {
    /// Subscribes to `filters` on the broker at `mqtt_url` and waits for the subscription.
    pub fn start(mqtt_url: &str, filters: &[String]) -> Capture {
        let (host, port) = hone_common::parse_mqtt_url(mqtt_url).unwrap();
        let mut opts = rumqttc::MqttOptions::new(unique("hone-capture"), host, port);
        opts.set_keep_alive(Duration::from_secs(5)).set_max_packet_size(1 << 22, 1 << 22);
        let (client, mut conn) = rumqttc::Client::new(opts, 64);
        for f in filters {
            client.subscribe(f, rumqttc::QoS::AtLeastOnce).unwrap();
        }
        let seen: Captured = Default::default();
        let (subscribed, ready) = std::sync::mpsc::channel();
        let sink = seen.clone();
        let expected = filters.len();
        std::thread::spawn(move || {
            let mut acks = 0;
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        acks += 1;
                        if acks == expected {
                            let _ = subscribed.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        sink.lock().unwrap().push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        ready.recv_timeout(Duration::from_secs(10)).expect("the capture subscribed");
        Capture { seen, client }
    }

    /// Everything captured so far.
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until some captured message satisfies `pick`, and returns what it returns.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut pick: impl FnMut(&str, &[u8]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            for (t, p) in self.messages() {
                if let Some(found) = pick(&t, &p) {
                    return Some(found);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// Publishes raw payloads to topics, then disconnects.
pub fn publish_raw(mqtt_url: &str, messages: &[(String, Vec<u8>)]) {
    let (host, port) = hone_common::parse_mqtt_url(mqtt_url).unwrap();
    let mut opts = rumqttc::MqttOptions::new(unique("hone-prober"), host, port);
    opts.set_keep_alive(Duration::from_secs(5)).set_max_packet_size(1 << 22, 1 << 22);
    let (client, mut conn) = rumqttc::Client::new(opts, 64);
    for (topic, payload) in messages {
        client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.clone()).unwrap();
    }
    let _ = client.disconnect();
    let deadline = Instant::now() + Duration::from_secs(5);
    for ev in conn.iter() {
        if ev.is_err() || Instant::now() > deadline {
            break;
        }
    }
}

/// The `bin/` folder of one of the pinned Python tools (`mlflow`, `dvc`, `airflow`), installed
/// (or found warm) by `scripts/python-tools.sh`, which `scripts/test.sh` runs before the tests.
/// Panics with the command to run when the environment cannot be set up.
pub fn python_tool(name: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-tools.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(name)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "the pinned {name} environment is not available: run `scripts/python-tools.sh {name}` \
         (needs PyPI once)"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let bin = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("scripts/python-tools.sh printed no `{name}=` line: {text}"));
    PathBuf::from(bin.trim())
}

/// Runs `cmd` and returns its stdout; panics with the command and its output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plain Mosquitto of a test's own on a free loopback port (anonymous, no persistence), for
/// tests that must not touch the shared broker's retained topics; killed when dropped.
pub struct OwnMosquitto {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl OwnMosquitto {
    /// Writes its configuration in `dir` and starts it.
    pub fn start_plain(dir: &Path) -> anyhow::Result<OwnMosquitto> {
        let port = free_port();
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 10000\n"
            ),
        )?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log"))?)
            .spawn()
            .context("mosquitto is installed (Debian package mosquitto)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(OwnMosquitto { child, port })
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
