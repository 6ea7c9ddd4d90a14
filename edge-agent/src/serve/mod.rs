//! The serving process: `edge-agent serve-child`, an HTTP inference server (the Open Inference
//! Protocol, KServe v2; see `http.rs` and [`kserve`]) for at most one active model, controlled by
//! its parent through JSON lines.
//!
//! Like the benchmark child (see [`crate::bench`]), the agent spawns its own executable, puts
//! the process into its cgroups and releases it with a go line (`--wait-go`); a model that
//! crashes or exhausts memory ends this process, never the agent.
//!
//! Control protocol, one JSON object per line (serde's externally tagged, snake_case form):
//! - stdin, [`Command`]: `{"activate": {...}}` loads, optimises and warms up a model in a
//!   blocking thread, then swaps it in atomically; the previous model serves until then, and
//!   keeps serving when the activation fails. `{"shutdown": {}}` or the end of stdin stops the
//!   process. A malformed line is answered with an `error` event and otherwise ignored.
//! - stdout, [`Event`]: `listening` once the socket is bound, `activated` or
//!   `activation_failed` per activation (in order), `window` every window (also when idle, once
//!   more when the served model changes, and a last time at shutdown), `error`. Lines are
//!   written by one task, so they never interleave.

mod http;
pub mod kserve;
mod model;
mod stats;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hone_common::serving::ServingWindow;
use hone_common::wire::FailureKind;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

use crate::bench::{ChildOptions, LimitErrors};
use kserve::{Tensor, TensorMeta};

/// A command on the serving process's stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Load a model and serve it instead of the current one.
    Activate(Activate),
    /// Stop serving and exit (the end of stdin does the same).
    Shutdown {},
}

/// What to serve next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activate {
    /// Chosen by the parent; echoed in the answer.
    pub id: String,
    /// Absolute path of the ONNX file.
    pub model_path: PathBuf,
    /// The model's name in URLs (`/v2/models/{name}`): letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// The artifact served; reported as the model's version and with every window.
    pub artifact_id: String,
    /// Values of named symbolic input axes; other symbolic axes take their defaults (1).
    #[serde(default)]
    pub symbols: Vec<(String, u64)>,
    /// Concrete shapes of named inputs, `{"x": [1, 3, 48, 192]}`; needed for inputs with
    /// unnamed dynamic axes other than a leading batch, and they take precedence over `symbols`.
    #[serde(default)]
    pub inputs: hone_common::shapes::InputShapes,
    /// Inferences on synthetic inputs before the model is swapped in.
    #[serde(default)]
    pub warmup: u32,
    /// The unknown-token id of a text model, for the token statistics of its inputs.
    #[serde(default)]
    pub unknown_token_id: Option<i64>,
}

/// An event on the serving process's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The HTTP socket is bound (first line).
    Listening {
        /// The bound address (the real port when `:0` was asked).
        addr: SocketAddr,
        /// `setrlimit(RLIMIT_AS)` failed: the memory cap is not applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rlimit_error: Option<String>,
        /// `sched_setaffinity` failed: the cores are not restricted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        affinity_error: Option<String>,
    },
    /// A model is now served.
    Activated {
        /// The command's id.
        id: String,
        /// The artifact now served.
        artifact_id: String,
        /// Reading, loading and optimising, ms.
        load_ms: f64,
        /// The warm-up inferences, ms.
        warmup_ms: f64,
        /// The artifact served before, if any.
        previous: Option<String>,
    },
    /// An activation failed; whatever was served before is still served.
    ActivationFailed {
        /// The command's id.
        id: String,
        /// The artifact that was not activated.
        artifact_id: String,
        /// Category (`model_invalid` for load and run errors, `crashed` for a panic,
        /// `internal` for IO and bad commands).
        kind: FailureKind,
        /// Explanation.
        reason: String,
        /// The artifact still served, if any.
        serving: Option<String>,
    },
    /// Telemetry of one window.
    Window {
        /// The artifact served at the end of the window.
        artifact_id: Option<String>,
        /// The window.
        window: ServingWindow,
    },
    /// A problem that is not an activation's (a malformed command line).
    Error {
        /// Explanation.
        message: String,
    },
}

/// Limits and settings of a serving process.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Inferences that run at once (each on a blocking thread), at least 1.
    pub max_concurrency: usize,
    /// Requests that may wait for a free slot; more are refused with 503.
    pub max_queue: usize,
    /// Largest request body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Length of a telemetry window.
    pub window: Duration,
    /// Bearer token every request but the health checks must carry, if set.
    pub token: Option<String>,
    /// Process limits that could not be applied (reported with `listening`).
    pub limit_errors: LimitErrors,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_concurrency: 1,
            max_queue: 16,
            max_body_bytes: 32 << 20,
            window: Duration::from_millis(10_000),
            token: None,
            limit_errors: LimitErrors::default(),
        }
    }
}

/// Options of the `serve-child` subcommand.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on, `IP:PORT` (port 0: any free port).
    pub listen: String,
    /// File holding the bearer token (required unless `listen` is a loopback address).
    pub token_file: Option<PathBuf>,
    /// See [`ServeConfig::max_concurrency`].
    pub max_concurrency: usize,
    /// See [`ServeConfig::max_queue`].
    pub max_queue: usize,
    /// See [`ServeConfig::max_body_bytes`].
    pub max_body_bytes: usize,
    /// Window length, ms.
    pub window_ms: u64,
    /// Go line, memory cap and cores, as for the benchmark child.
    pub process: ChildOptions,
}

/// Checks the listen address and reads the token: a server reachable from other hosts must
/// have one.
pub fn listen_config(
    listen: &str,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<(SocketAddr, Option<String>)> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| anyhow::anyhow!("--listen `{listen}` is not an IP:PORT address"))?;
    let token = match token_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?;
            let token = text.trim().to_string();
            if token.is_empty() {
                anyhow::bail!("the token file {} is empty", path.display());
            }
            Some(token)
        }
    };
    if token.is_none() && !addr.ip().is_loopback() {
        anyhow::bail!(
            "--listen {addr} is reachable from other hosts: give a bearer token with \
             --token-file, or listen on a loopback address"
        );
    }
    Ok((addr, token))
}

/// Entry point of the `serve-child` subcommand: applies the process limits, binds, and serves
/// until shutdown. Returns the exit code (2 for bad options).
pub fn child_main(args: &ServeArgs) -> i32 {
    let limit_errors = args.process.apply();
    let checked = listen_config(&args.listen, args.token_file.as_deref()).and_then(|(a, t)| {
        if args.max_concurrency == 0 {
            anyhow::bail!("--max-concurrency must be at least 1");
        }
        if args.window_ms < 10 {
            anyhow::bail!("--window-ms must be at least 10");
        }
        Ok((a, t))
    });
    let (addr, token) = match checked {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let config = ServeConfig {
        max_concurrency: args.max_concurrency,
        max_queue: args.max_queue,
        max_body_bytes: args.max_body_bytes,
        window: Duration::from_millis(args.window_ms),
        token,
        limit_errors,
    };
    let entry =
        hone_process::Entry { default_filter: "edge_agent=info,warn", worker_threads: None };
    hone_process::run(entry, async move {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let (line_tx, line_rx) = mpsc::channel(16);
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let (event_tx, event_rx) = mpsc::channel(64);
        let writer = std::thread::spawn(move || write_events(event_rx, std::io::stdout()));
        let served = run(listener, config, line_rx, event_tx).await;
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .context("the stdout writer")?
            .map_err(|_| anyhow::anyhow!("the stdout writer panicked"))?;
        served?;
        Ok(0)
    })
}

/// Writes each event as one JSON line until every sender is gone (blocking: run it on its own
/// thread; it is the only writer of stdout). A closed stdout is ignored: the events are drained
/// so that senders never block.
pub fn write_events(mut events: mpsc::Receiver<Event>, mut out: impl std::io::Write) {
    while let Some(event) = events.blocking_recv() {
        let mut line = serde_json::to_vec(&event).expect("event serialises");
        line.push(b'\n');
        let _ = out.write_all(&line).and_then(|()| out.flush());
    }
}

/// Inference on a loaded model (tract's in [`model`]; tests use fakes).
pub(crate) trait Engine: Send + Sync {
    /// Runs one inference; inputs are in the model's order and match its [`TensorMeta`]s.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String>;
}

/// The model being served.
pub(crate) struct Served {
    pub(crate) name: String,
    pub(crate) artifact_id: String,
    pub(crate) unknown_token_id: Option<i64>,
    pub(crate) inputs: Vec<TensorMeta>,
    pub(crate) outputs: Vec<TensorMeta>,
    pub(crate) engine: Box<dyn Engine>,
}

/// What the HTTP handlers and the control loop share.
pub(crate) struct Shared {
    served: RwLock<Option<Arc<Served>>>,
    /// Requests admitted (running or waiting): `max_concurrency + max_queue` permits.
    pub(crate) admission: Arc<Semaphore>,
    /// Inferences running: `max_concurrency` permits.
    pub(crate) running: Arc<Semaphore>,
    pub(crate) window: Mutex<stats::Window>,
    pub(crate) token: Option<String>,
    pub(crate) max_body_bytes: usize,
}

impl Shared {
    pub(crate) fn new(config: &ServeConfig) -> Shared {
        let concurrency = config.max_concurrency.max(1);
        Shared {
            served: RwLock::new(None),
            admission: Arc::new(Semaphore::new(concurrency + config.max_queue)),
            running: Arc::new(Semaphore::new(concurrency)),
            window: Mutex::new(stats::Window::new(crate::host::now_ms())),
            token: config.token.clone(),
            max_body_bytes: config.max_body_bytes,
        }
    }

    /// The model served now.
    pub(crate) fn current(&self) -> Option<Arc<Served>> {
        self.served.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves `next` from now on; returns the model served before.
    pub(crate) fn swap(&self, next: Served) -> Option<Arc<Served>> {
        let mut slot = self.served.write().unwrap_or_else(|e| e.into_inner());
        slot.replace(Arc::new(next))
    }

    pub(crate) fn with_window<T>(&self, f: impl FnOnce(&mut stats::Window) -> T) -> T {
        f(&mut self.window.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn take_window(&self) -> Event {
        let rss = crate::host::current_rss_bytes().unwrap_or(0);
        let window = self.with_window(|w| w.take(crate::host::now_ms(), rss));
        Event::Window { artifact_id: self.current().map(|s| s.artifact_id.clone()), window }
    }
}

/// Activations waiting behind the one in progress; more are refused.
const MAX_PENDING_ACTIVATIONS: usize = 8;

/// Serves on `listener` under the commands read from `lines` (one JSON command per item; the
/// end of the channel is a shutdown), reporting on `events`. Returns after the shutdown, once
/// the last window is sent and the requests in flight are answered (at most 5 s).
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    lines: mpsc::Receiver<String>,
    events: mpsc::Sender<Event>,
) -> anyhow::Result<()> {
    run_with(Arc::new(Shared::new(&config)), listener, config, lines, events).await
}

type Loaded = Result<(Served, f64, f64), (FailureKind, String)>;

pub(crate) async fn run_with(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    mut lines: mpsc::Receiver<String>,
    events: mpsc::Sender<Event>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the bound address")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = http::app(shared.clone());
    let server = tokio::spawn(async move {
        let mut stop = stop_rx;
        // TCP_NODELAY on every connection: without it a response written in two segments waits
        // for the client's delayed ACK (40 ms on Linux), which measured 58 ms against a 5 ms
        // inference at 5 requests/s (bench-serving, before this line).
        use axum::serve::ListenerExt as _;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    let send = |e: Event| {
        let events = events.clone();
        async move {
            let _ = events.send(e).await;
        }
    };
    send(Event::Listening {
        addr,
        rlimit_error: config.limit_errors.rlimit_error.clone(),
        affinity_error: config.limit_errors.affinity_error.clone(),
    })
    .await;
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + config.window, config.window);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: VecDeque<Activate> = VecDeque::new();
    let mut current: Option<(Activate, tokio::task::JoinHandle<Loaded>)> = None;
    loop {
        if current.is_none()
            && let Some(a) = pending.pop_front()
        {
            let job = a.clone();
            current = Some((a, tokio::task::spawn_blocking(move || load_model(&job))));
        }
        tokio::select! {
            line = lines.recv() => match line.as_deref().map(parse_command) {
                None | Some(Ok(Command::Shutdown {})) => break,
                Some(Ok(Command::Activate(a))) => {
                    if pending.len() >= MAX_PENDING_ACTIVATIONS {
                        let serving = shared.current().map(|s| s.artifact_id.clone());
                        send(Event::ActivationFailed {
                            id: a.id,
                            artifact_id: a.artifact_id,
                            kind: FailureKind::Internal,
                            reason: format!(
                                "{MAX_PENDING_ACTIVATIONS} activations are already waiting"
                            ),
                            serving,
                        })
                        .await;
                    } else {
                        pending.push_back(a);
                    }
                }
                Some(Err(message)) => send(Event::Error { message }).await,
            },
            joined = async { (&mut current.as_mut().expect("guarded").1).await },
                if current.is_some() =>
            {
                let (a, _) = current.take().expect("guarded");
                let loaded = joined.unwrap_or_else(|e| {
                    Err((FailureKind::Crashed, format!("loading the model panicked: {e}")))
                });
                match loaded {
                    Ok((served, load_ms, warmup_ms)) => {
                        // The last window of the previous model, so that no window mixes two.
                        if shared.current().is_some() {
                            send(shared.take_window()).await;
                        }
                        let previous = shared.swap(served).map(|p| p.artifact_id.clone());
                        tracing::info!(artifact = %a.artifact_id, load_ms, "serving");
                        send(Event::Activated {
                            id: a.id,
                            artifact_id: a.artifact_id,
                            load_ms,
                            warmup_ms,
                            previous,
                        })
                        .await;
                    }
                    Err((kind, reason)) => {
                        let serving = shared.current().map(|s| s.artifact_id.clone());
                        send(Event::ActivationFailed {
                            id: a.id,
                            artifact_id: a.artifact_id,
                            kind,
                            reason,
                            serving,
                        })
                        .await;
                    }
                }
            }
            _ = ticker.tick() => send(shared.take_window()).await,
        }
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) | Err(_) => {}
        Ok(Ok(Err(e))) => tracing::warn!("the HTTP server ended with an error: {e}"),
        Ok(Err(e)) => tracing::warn!("the HTTP server task failed: {e}"),
    }
    send(shared.take_window()).await;
    Ok(())
}

fn parse_command(line: &str) -> Result<Command, String> {
    serde_json::from_str(line).map_err(|e| {
        let shown: String = line.chars().take(200).collect();
        format!("malformed command `{shown}`: {e}")
    })
}

/// Whether `name` can be a path segment of the model's URLs.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Loads, optimises and warms up a model (blocking): the model, load ms and warm-up ms.
fn load_model(a: &Activate) -> Loaded {
    if !valid_name(&a.name) {
        return Err((
            FailureKind::Internal,
            format!("model name `{}` is not letters, digits, `.`, `_` and `-`", a.name),
        ));
    }
    let start = Instant::now();
    let model =
        model::load(&a.model_path, &a.symbols, &a.inputs).map_err(|f| (f.kind, f.reason))?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    model.warm_up(a.warmup).map_err(|f| (f.kind, f.reason))?;
    let warmup_ms = start.elapsed().as_secs_f64() * 1e3;
    let served = Served {
        name: a.name.clone(),
        artifact_id: a.artifact_id.clone(),
        unknown_token_id: a.unknown_token_id,
        inputs: model.inputs().to_vec(),
        outputs: model.outputs().to_vec(),
        engine: Box::new(model),
    };
    Ok((served, load_ms, warmup_ms))
}

#[cfg(test)]
mod tests;
