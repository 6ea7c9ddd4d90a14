//! Starting a coordinator: database, artifact store, key, broker (embedded or external), MQTT
//! client, engine and HTTP API, wired together. Used by `coordinator serve`, by `demo`, and by
//! tests (with an injected listener on `127.0.0.1:0`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Notify, mpsc};

use crate::api::{self, AppState};
use crate::artifacts::{ArtifactStore, Signer};
use hone_common::clock::now_ms;

use crate::campaign::engine::Engine;
use crate::db::Db;
use crate::metrics::Metrics;

/// Where the MQTT broker is.
#[derive(Debug, Clone)]
pub enum MqttMode {
    /// Start rumqttd in-process on this address.
    Embedded(SocketAddr),
    /// Use an existing broker (`mqtt://host:port`).
    External(String),
}

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data folder: SQLite database, artifacts, signing key, operator token.
    pub data_dir: PathBuf,
    /// Database URL; default `sqlite://{data_dir}/hone.db`.
    pub database_url: Option<String>,
    /// Broker.
    pub mqtt: MqttMode,
    /// MQTT client id (stable, so the broker keeps the session).
    pub mqtt_client_id: String,
    /// Base URL agents use for artifacts; default `http://{bound address}`.
    pub public_url: Option<String>,
    /// Largest model upload, bytes.
    pub upload_limit: u64,
    /// The only folder `POST /api/v1/models/register` reads from; `None`: registration by path
    /// is off.
    pub import_dir: Option<PathBuf>,
    /// Where alerts are POSTed (JSON), if anywhere.
    pub alert_webhook: Option<String>,
    /// The MLflow tracking server records are written to, if any.
    pub mlflow: Option<crate::mlflow::MlflowConfig>,
    /// TLS for the API and the broker, with enrolled device certificates; `None` is plain
    /// transport, which [`start`] accepts on loopback addresses only.
    pub tls: Option<crate::pki::TlsSettings>,
}

impl ServeConfig {
    /// Defaults for a data folder and broker.
    pub fn new(data_dir: PathBuf, mqtt: MqttMode) -> ServeConfig {
        ServeConfig {
            data_dir,
            database_url: None,
            mqtt,
            mqtt_client_id: "hone-coordinator".into(),
            public_url: None,
            upload_limit: 4 * 1024 * 1024 * 1024,
            import_dir: None,
            alert_webhook: None,
            mlflow: None,
            tls: None,
        }
    }
}

/// A running coordinator.
pub struct Running {
    /// HTTP address.
    pub http_addr: SocketAddr,
    /// Broker address as agents should use it (`mqtt://host:port`, or `mqtts://` to the gate).
    pub mqtt_url: String,
    /// Whether the API and the broker speak TLS.
    pub tls: bool,
    /// State shared with the API.
    pub state: AppState,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    engine: tokio::task::JoinHandle<()>,
    runner: tokio::task::JoinHandle<()>,
    rollout: tokio::task::JoinHandle<()>,
    compactor: tokio::task::JoinHandle<()>,
    mirror: Option<tokio::task::JoinHandle<()>>,
    gate: Option<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Base URL of the API.
    pub fn api_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr)
    }

    /// Stops the HTTP server (the broker thread, if embedded, ends with the process).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.engine).await;
        // A compression step in progress finishes on its blocking thread; the runner stops
        // after it, and a later start resumes the pipeline.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.runner).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.rollout).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.compactor).await;
        if let Some(m) = self.mirror {
            let _ = tokio::time::timeout(Duration::from_secs(5), m).await;
        }
        if let Some(g) = self.gate {
            let _ = tokio::time::timeout(Duration::from_secs(5), g).await;
        }
        self.state.db.close().await;
    }

    /// Waits until the HTTP server stops.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.server.await.context("HTTP server task")?.context("HTTP server")?;
        Ok(())
    }
}

/// How far above the last sequence number the floor in the database is kept (60 s of µs): a
/// restart starts above it, so it continues above every number issued before even after a
/// crash, as long as the floor was written in the last minute or the clock did not step back
/// by more than that.
const SIGNING_FLOOR_AHEAD_US: u64 = 60_000_000;

/// Starts a coordinator whose API listens on `listener`.
pub async fn start(
    config: ServeConfig,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data folder {}", config.data_dir.display()))?;
    let http_addr = listener.local_addr()?;
    let db_url = config.database_url.clone().unwrap_or_else(|| {
        format!("sqlite://{}?mode=rwc", config.data_dir.join("hone.db").display())
    });
    let db = Db::open(&db_url).await?;
    if let Some(path) =
        crate::api::auth::ensure_operator_token(&db, &config.data_dir, now_ms() as i64).await?
    {
        tracing::info!(path = %path.display(), "created an operator API token (no active one existed)");
    }
    let import_dir = match &config.import_dir {
        Some(dir) => Some(
            std::fs::canonicalize(dir)
                .with_context(|| format!("import folder {}", dir.display()))?,
        ),
        None => None,
    };
    let artifacts = ArtifactStore::open(&config.data_dir.join("artifacts"))
        .context("opening artifact store")?;
    let signer = Signer::load_or_create(&config.data_dir.join("keys/coordinator.ed25519"))?;
    // The sequence clock starts above every number issued before this start (see
    // `SIGNING_FLOOR_AHEAD_US`), and the floor is raised before anything is signed.
    signer.clock().seed(db.signing_floor().await?);
    let mut floor = signer.clock().last().max(crate::artifacts::now_us()) + SIGNING_FLOOR_AHEAD_US;
    db.raise_signing_floor(floor).await?;
    let pki = match &config.tls {
        Some(tls) => {
            let revoked = db.revoked_certs(now_ms() as i64).await?;
            let revoked: Vec<_> = revoked
                .into_iter()
                .map(|c| {
                    let at_ms = c.revoked_at_ms.unwrap_or(0);
                    (crate::pki::Revoked { serial: c.serial, at_ms }, c.fingerprint)
                })
                .collect();
            let pki = crate::pki::Pki::start(
                &config.data_dir.join("pki"),
                &tls.names,
                tls.cert_lifetime,
                &revoked,
            )
            .context("starting the certificate authority")?;
            let stopped = db.identities().await?.into_iter().filter_map(|i| {
                crate::pki::Stopped::from_state(&i.state).map(|st| (i.device_id, st))
            });
            pki.set_stopped(stopped);
            Some(Arc::new(pki))
        }
        None => {
            check_plain(http_addr, &config.mqtt)?;
            None
        }
    };
    let mut gate_listener = None;
    let agent_mqtt_url = match &config.mqtt {
        MqttMode::Embedded(addr) => {
            if pki.is_some() && !addr.ip().is_loopback() {
                anyhow::bail!(
                    "with TLS the embedded broker listens on loopback only, behind the MQTT gate \
                     (devices connect to the gate: --mqtt-tls-listen); got --mqtt-listen {addr}"
                );
            }
            crate::broker::start(*addr).await?;
            tracing::info!(%addr, "embedded MQTT broker listening");
            match config.tls.as_ref().and_then(|t| t.gate_listen) {
                Some(gate) if pki.is_some() => {
                    let l = tokio::net::TcpListener::bind(gate)
                        .await
                        .with_context(|| format!("the MQTT gate cannot listen on {gate}"))?;
                    let bound = l.local_addr()?;
                    gate_listener = Some(l);
                    let host = if bound.ip().is_unspecified() {
                        "127.0.0.1".to_string()
                    } else {
                        bound.ip().to_string()
                    };
                    format!("mqtts://{host}:{}", bound.port())
                }
                _ => format!("mqtt://{addr}"),
            }
        }
        MqttMode::External(url) => url.clone(),
    };
    let mqtt_url = match &config.mqtt {
        MqttMode::Embedded(addr) => format!("mqtt://{addr}"),
        MqttMode::External(url) => url.clone(),
    };
    let broker = hone_common::parse_broker_url(&mqtt_url).map_err(anyhow::Error::msg)?;
    let broker_tls = match (&pki, broker.tls) {
        (Some(pki), true) => Some(pki.broker_client_config()?),
        (None, true) => anyhow::bail!(
            "--mqtt-url {mqtt_url} is a TLS broker: the coordinator's client certificate comes \
             from its CA, which runs without --plain"
        ),
        (_, false) if !hone_common::is_loopback_host(&broker.host) => anyhow::bail!(
            "plain MQTT to {} is refused: plain transport is for loopback only; use mqtts://",
            broker.host
        ),
        (_, false) => None,
    };
    let (host, port) = (broker.host, broker.port);
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = mpsc::channel(1024);
    let started_at_ms = now_ms();
    // 30 s, not 10: at 10,000 agents the broker's answer to a ping waits behind thousands of
    // incoming messages, and every dropped connection lost the job documents in flight (10 s:
    // three reconnections and 2.4 % of a campaign's documents; 30 s: one, and 1 of 10,000).
    let bus_config = crate::mqtt::config(
        host,
        port,
        config.mqtt_client_id.clone(),
        Duration::from_secs(30),
        started_at_ms,
    );
    let bus =
        crate::mqtt::start(bus_config, broker_tls, pki.clone(), started_at_ms, metrics.clone(), tx);
    let scheme = if pki.is_some() { "https" } else { "http" };
    let public_url = config.public_url.clone().unwrap_or_else(|| {
        if http_addr.ip().is_unspecified() {
            tracing::warn!("listening on all interfaces without --public-url: agents will be told to download from 127.0.0.1");
            format!("{scheme}://127.0.0.1:{}", http_addr.port())
        } else {
            format!("{scheme}://{http_addr}")
        }
    });
    let poke = Arc::new(Notify::new());
    let rollout_wake = Arc::new(Notify::new());
    let monitor = crate::deploy::monitor::Monitor { webhook: config.alert_webhook.clone() };
    let engine = Engine {
        db: db.clone(),
        bus: bus.clone(),
        signer: signer.clone(),
        public_url: public_url.clone(),
        metrics: metrics.clone(),
        monitor,
        rollout_wake: rollout_wake.clone(),
        specs: Default::default(),
    };
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let engine = tokio::spawn(engine.run(rx, poke.clone(), stop_rx.clone()));
    let rollout = crate::deploy::rollout::Rollout {
        db: db.clone(),
        bus: bus.clone(),
        signer: signer.clone(),
        public_url,
        wake: rollout_wake.clone(),
    };
    let rollout = tokio::spawn(rollout.run(stop_rx.clone()));
    let compactor_db = db.clone();
    let mut compactor_stop = stop_rx.clone();
    let clock_signer = signer.clone();
    let compactor = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        let mut floor_every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = floor_every.tick() => {
                    let want = clock_signer.clock().last().max(crate::artifacts::now_us()) + SIGNING_FLOOR_AHEAD_US;
                    if want >= floor + 1_000_000 {
                        match compactor_db.raise_signing_floor(want).await {
                            Ok(()) => floor = want,
                            Err(e) => tracing::warn!(error = %format!("{e:#}"), "raising the signing floor failed"),
                        }
                    }
                }
                _ = every.tick() => {
                    if let Err(e) = crate::deploy::monitor::compact(&compactor_db, now_ms() as i64).await {
                        tracing::warn!(error = %format!("{e:#}"), "telemetry downsampling failed");
                    }
                }
                _ = compactor_stop.changed() => return,
            }
        }
    });
    let pipelines = Arc::new(Notify::new());
    let runner = crate::pipeline::runner::Runner {
        db: db.clone(),
        artifacts: artifacts.clone(),
        data_dir: config.data_dir.clone(),
        engine_poke: poke.clone(),
        wake: pipelines.clone(),
    };
    let runner = tokio::spawn(runner.run(stop_rx.clone()));
    let mlflow = match &config.mlflow {
        Some(m) => Some(crate::mlflow::Mlflow::new(m.clone(), db.clone(), artifacts.clone())?),
        None => None,
    };
    let mirror = mlflow.clone().map(|m| {
        tracing::info!(mlflow = %m.url(), "writing to MLflow");
        tokio::spawn(m.run(stop_rx.clone()))
    });
    let state = AppState {
        db,
        artifacts,
        signer,
        metrics,
        poke,
        pipelines,
        rollout: rollout_wake,
        upload_limit: config.upload_limit,
        dvc_dir: config.data_dir.join("dvc"),
        import_dir,
        mlflow,
        pki: pki.clone(),
        bus: Some(bus),
    };
    let gate = match (gate_listener, &pki, &config.mqtt) {
        (Some(l), Some(pki), MqttMode::Embedded(upstream)) => {
            tracing::info!(gate = %l.local_addr()?, "MQTT gate (TLS, client certificates, per-device topics) listening");
            Some(tokio::spawn(crate::pki::gate::run(
                l,
                *upstream,
                pki.clone(),
                state.metrics.clone(),
                stop_rx.clone(),
            )))
        }
        _ => None,
    };
    let app = api::app(state.clone()).layer(tower_http::trace::TraceLayer::new_for_http());
    let mut stop_http = stop_rx;
    let shutdown = async move {
        let _ = stop_http.changed().await;
    };
    let peer = app.into_make_service_with_connect_info::<crate::pki::listener::Peer>();
    let server = match &pki {
        Some(pki) => {
            let tls = crate::pki::listener::TlsListener::new(
                listener,
                pki.clone(),
                state.metrics.clone(),
            )?;
            tokio::spawn(
                async move { axum::serve(tls, peer).with_graceful_shutdown(shutdown).await },
            )
        }
        None => tokio::spawn(async move {
            axum::serve(listener, peer).with_graceful_shutdown(shutdown).await
        }),
    };
    if let Some(pki) = &pki {
        tracing::info!(ca_sha256 = %pki.ca().fingerprint(), "TLS on: devices enrol with a token and this CA fingerprint");
    }
    tracing::info!(http = %http_addr, mqtt = %agent_mqtt_url, key = %state.signer.public_hex(), "coordinator ready");
    Ok(Running {
        http_addr,
        mqtt_url: agent_mqtt_url,
        tls: pki.is_some(),
        state,
        server,
        engine,
        runner,
        rollout,
        compactor,
        mirror,
        gate,
        stop,
    })
}

/// Plain transport is for loopback only: the API and the embedded broker must listen there.
fn check_plain(http_addr: SocketAddr, mqtt: &MqttMode) -> anyhow::Result<()> {
    if !http_addr.ip().is_loopback() {
        anyhow::bail!(
            "plain transport (--plain) on {http_addr} is refused: it is for loopback only \
             (127.0.0.1, ::1); drop --plain to serve TLS with enrolled devices"
        );
    }
    if let MqttMode::Embedded(addr) = mqtt
        && !addr.ip().is_loopback()
    {
        anyhow::bail!(
            "plain transport (--plain) with the embedded broker on {addr} is refused: it is for \
             loopback only; drop --plain to serve TLS with enrolled devices"
        );
    }
    Ok(())
}
