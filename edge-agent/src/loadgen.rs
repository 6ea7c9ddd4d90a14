//! `edge-agent loadgen`: an open-loop load generator for a KServe v2 server (the agent's own
//! `serve-child`, or any other).
//!
//! Requests are scheduled at fixed times, `1/rate` apart, whatever the server does; latency is
//! measured from the scheduled send time, so a server that stalls is charged for the requests
//! it delayed (no coordinated omission). When `concurrency` requests are already in flight, a
//! scheduled request is not sent and counts as `dropped_by_client`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hone_common::bench::percentile;
use serde::Serialize;
use serde_json::json;

use crate::serve::kserve::{self, DataType, HEADER_LENGTH, Tensor, TensorMeta, Values};

/// How long one request may take before it counts as an error (`timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What to send, where and how fast.
#[derive(Debug, Clone)]
pub struct LoadgenOptions {
    /// Server base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Model name: requests go to `/v2/models/{name}/infer`; without it, to `/v1/infer`.
    pub model: Option<String>,
    /// Target rates, requests per second, run one after the other.
    pub rates: Vec<f64>,
    /// Length of each rate's run.
    pub duration: Duration,
    /// Requests in flight at most; beyond, scheduled requests are dropped.
    pub concurrency: usize,
    /// Bearer token.
    pub token: Option<String>,
    /// JSON lines, each a full KServe v2 request body, used round-robin; without it, inputs are
    /// synthesised from the model's metadata.
    pub inputs: Option<PathBuf>,
    /// Send tensors with the binary-data extension (and ask for binary outputs).
    pub binary: bool,
}

/// The result of one rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateReport {
    /// Rate asked for, requests/s.
    pub target_rps: f64,
    /// Successful requests per second of the run.
    pub achieved_rps: f64,
    /// Requests sent.
    pub requests: u64,
    /// Answered with 2xx.
    pub ok: u64,
    /// Failures by HTTP status, or `timeout` / `transport`.
    pub errors: BTreeMap<String, u64>,
    /// Answered 503 (over capacity); also counted in `errors`.
    pub unavailable: u64,
    /// Scheduled but not sent: `concurrency` requests were already in flight.
    pub dropped_by_client: u64,
    /// Latency percentiles of the successful requests, ms from the scheduled send time.
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Slowest.
    pub max_ms: Option<f64>,
    /// Whether p99 <= 2 × p50 (a tail within twice the median).
    pub p99_within_2x_p50: Option<bool>,
}

/// The end of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx, after this many ms from its scheduled time.
    Ok(f64),
    /// An HTTP error status.
    Status(u16),
    /// No answer in time.
    Timeout,
    /// Connection or protocol failure.
    Transport,
}

/// Send offsets of a run: `rate × duration` requests, `1/rate` apart, from 0.
pub fn schedule(rate: f64, duration: Duration) -> Vec<Duration> {
    if !(rate > 0.0 && rate.is_finite()) {
        return Vec::new();
    }
    let n = (rate * duration.as_secs_f64()).floor() as u64;
    (0..n).map(|i| Duration::from_secs_f64(i as f64 / rate)).collect()
}

/// Summarises one rate's outcomes.
pub fn summarise(
    target_rps: f64,
    duration: Duration,
    outcomes: &[Outcome],
    dropped_by_client: u64,
) -> RateReport {
    let mut latencies: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Ok(ms) => Some(*ms),
            _ => None,
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let mut errors = BTreeMap::new();
    for o in outcomes {
        let key = match o {
            Outcome::Ok(_) => continue,
            Outcome::Status(s) => s.to_string(),
            Outcome::Timeout => "timeout".to_string(),
            Outcome::Transport => "transport".to_string(),
        };
        *errors.entry(key).or_insert(0) += 1;
    }
    let pct = |p: f64| (!latencies.is_empty()).then(|| percentile(&latencies, p));
    let (p50, p99) = (pct(50.0), pct(99.0));
    RateReport {
        target_rps,
        achieved_rps: latencies.len() as f64 / duration.as_secs_f64().max(1e-9),
        requests: outcomes.len() as u64,
        ok: latencies.len() as u64,
        unavailable: outcomes.iter().filter(|o| **o == Outcome::Status(503)).count() as u64,
        errors,
        dropped_by_client,
        p50_ms: p50,
        p90_ms: pct(90.0),
        p99_ms: p99,
        max_ms: latencies.last().copied(),
        p99_within_2x_p50: p50.zip(p99).map(|(a, b)| b <= 2.0 * a),
    }
}

/// One request body, ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    body: Arc<[u8]>,
    header_length: Option<usize>,
}

/// Encodes tensors as a request: JSON `data`, or the binary-data extension (binary outputs
/// asked for too).
pub fn encode_request(tensors: &[Tensor], binary: bool) -> Prepared {
    let mut payload = Vec::new();
    let inputs: Vec<serde_json::Value> = tensors
        .iter()
        .map(|t| {
            if binary {
                let before = payload.len();
                t.values.write_le(&mut payload);
                json!({"name": t.name, "shape": t.shape, "datatype": t.values.datatype(),
                       "parameters": {"binary_data_size": payload.len() - before}})
            } else {
                json!({"name": t.name, "shape": t.shape, "datatype": t.values.datatype(),
                       "data": t.values})
            }
        })
        .collect();
    let header = if binary {
        json!({"inputs": inputs, "parameters": {"binary_data_output": true}})
    } else {
        json!({"inputs": inputs})
    };
    let mut body = serde_json::to_vec(&header).expect("request serialises");
    let header_length = binary.then_some(body.len());
    body.extend_from_slice(&payload);
    Prepared { body: body.into(), header_length }
}

/// Deterministic inputs for a model's tensors: FP32 roughly standard normal (a sum of
/// uniforms), integers small ids in 1..=100, booleans true; `-1` axes are 1.
pub fn synthesise(model: &[TensorMeta], seed: u64) -> Vec<Tensor> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    model
        .iter()
        .map(|m| {
            let shape: Vec<usize> = m.shape.iter().map(|d| (*d).max(1) as usize).collect();
            let n: usize = shape.iter().product();
            // Four uniforms: mean 2, variance 1/3; scaled to mean 0, variance 1.
            let normal = |next: &mut dyn FnMut() -> f64| {
                ((0..4).map(|_| next()).sum::<f64>() - 2.0) * 3f64.sqrt()
            };
            let values = match m.datatype {
                DataType::F32 => Values::F32((0..n).map(|_| normal(&mut next) as f32).collect()),
                DataType::F64 => Values::F64((0..n).map(|_| normal(&mut next)).collect()),
                DataType::Bool => Values::Bool(vec![true; n]),
                DataType::U8 => Values::U8((0..n).map(|_| 1 + (next() * 100.0) as u8).collect()),
                DataType::I8 => Values::I8((0..n).map(|_| 1 + (next() * 100.0) as i8).collect()),
                DataType::I32 => Values::I32((0..n).map(|_| 1 + (next() * 100.0) as i32).collect()),
                DataType::I64 => Values::I64((0..n).map(|_| 1 + (next() * 100.0) as i64).collect()),
            };
            Tensor { name: m.name.clone(), shape, values }
        })
        .collect()
}

/// Runs every rate in turn and reports each.
pub async fn run(options: &LoadgenOptions) -> anyhow::Result<Vec<RateReport>> {
    if options.rates.is_empty() || options.rates.iter().any(|r| !(*r > 0.0 && r.is_finite())) {
        anyhow::bail!("rates must be positive numbers");
    }
    if options.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(options.concurrency)
        .build()
        .context("building the HTTP client")?;
    let base = options.url.trim_end_matches('/').to_string();
    let bodies = Arc::new(prepare(&client, &base, options).await?);
    let target = match &options.model {
        Some(name) => format!("{base}/v2/models/{name}/infer"),
        None => format!("{base}/v1/infer"),
    };
    let mut reports = Vec::new();
    for &rate in &options.rates {
        tracing::info!(rate, seconds = options.duration.as_secs_f64(), "load");
        let (outcomes, dropped) = run_rate(&client, &target, options, bodies.clone(), rate).await;
        reports.push(summarise(rate, options.duration, &outcomes, dropped));
    }
    Ok(reports)
}

/// A POST of `prepared` to `target`, with the bearer token if any.
pub(crate) fn build_request(
    client: &reqwest::Client,
    target: &str,
    prepared: &Prepared,
    token: &Option<String>,
) -> reqwest::RequestBuilder {
    let mut request = client
        .post(target)
        .header(
            reqwest::header::CONTENT_TYPE,
            if prepared.header_length.is_some() {
                "application/octet-stream"
            } else {
                "application/json"
            },
        )
        .body(prepared.body.to_vec());
    if let Some(n) = prepared.header_length {
        request = request.header(HEADER_LENGTH, n);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
}

async fn run_rate(
    client: &reqwest::Client,
    target: &str,
    options: &LoadgenOptions,
    bodies: Arc<Vec<Prepared>>,
    rate: f64,
) -> (Vec<Outcome>, u64) {
    let slots = Arc::new(tokio::sync::Semaphore::new(options.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut dropped = 0;
    let start = tokio::time::Instant::now();
    for (i, offset) in schedule(rate, options.duration).into_iter().enumerate() {
        let at = start + offset;
        tokio::time::sleep_until(at).await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let request = build_request(client, target, &bodies[i % bodies.len()], &options.token);
        tasks.spawn(async move {
            let _slot = slot;
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let read = response.bytes().await;
                    match read {
                        Ok(_) if status.is_success() => {
                            Outcome::Ok(at.elapsed().as_secs_f64() * 1e3)
                        }
                        Ok(_) => Outcome::Status(status.as_u16()),
                        Err(e) if e.is_timeout() => Outcome::Timeout,
                        Err(_) => Outcome::Transport,
                    }
                }
                Err(e) if e.is_timeout() => Outcome::Timeout,
                Err(_) => Outcome::Transport,
            }
        });
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.unwrap_or(Outcome::Transport));
    }
    (outcomes, dropped)
}

/// The request bodies: the `--inputs` lines, or synthetic inputs from the model's metadata.
pub(crate) async fn prepare(
    client: &reqwest::Client,
    base: &str,
    options: &LoadgenOptions,
) -> anyhow::Result<Vec<Prepared>> {
    if let Some(path) = &options.inputs {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut bodies = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let parsed = kserve::parse_request(line.as_bytes(), None)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))?;
            bodies.push(if options.binary {
                encode_request(&parsed.inputs, true)
            } else {
                Prepared { body: line.as_bytes().into(), header_length: None }
            });
        }
        if bodies.is_empty() {
            anyhow::bail!("{} has no requests", path.display());
        }
        return Ok(bodies);
    }
    let name = match &options.model {
        Some(n) => n.clone(),
        None => {
            let listed: serde_json::Value =
                get_json(client, &format!("{base}/v2/models"), options).await?;
            listed["models"]
                .get(0)
                .and_then(|n| n.as_str())
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("the server serves no model yet"))?
        }
    };
    #[derive(serde::Deserialize)]
    struct Metadata {
        inputs: Vec<TensorMeta>,
    }
    let meta: Metadata = serde_json::from_value(
        get_json(client, &format!("{base}/v2/models/{name}"), options).await?,
    )
    .with_context(|| format!("reading the metadata of model `{name}`"))?;
    Ok((0..8).map(|seed| encode_request(&synthesise(&meta.inputs, seed), options.binary)).collect())
}

async fn get_json(
    client: &reqwest::Client,
    url: &str,
    options: &LoadgenOptions,
) -> anyhow::Result<serde_json::Value> {
    let mut request = client.get(url);
    if let Some(token) = &options.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.text().await.with_context(|| format!("GET {url}"))?;
    if !status.is_success() {
        anyhow::bail!("GET {url}: {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON"))
}

/// The reports as a table.
pub fn table(reports: &[RateReport]) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |x| format!("{x:.2}"));
    let mut out = format!(
        "{:>9} {:>10} {:>8} {:>8} {:>7} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>11}\n",
        "target/s",
        "achieved/s",
        "requests",
        "ok",
        "errors",
        "503",
        "dropped",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "p99<=2xp50"
    );
    for r in reports {
        let errors: u64 = r.errors.values().sum();
        out.push_str(&format!(
            "{:>9.1} {:>10.1} {:>8} {:>8} {:>7} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>11}\n",
            r.target_rps,
            r.achieved_rps,
            r.requests,
            r.ok,
            errors,
            r.unavailable,
            r.dropped_by_client,
            ms(r.p50_ms),
            ms(r.p90_ms),
            ms(r.p99_ms),
            ms(r.max_ms),
            r.p99_within_2x_p50.map_or("-", |b| if b { "yes" } else { "NO" })
        ));
        if !r.errors.is_empty() {
            let parts: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            out.push_str(&format!("{:>9} errors by status: {}\n", "", parts.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_evenly_spaced_and_sized_by_rate() {
        let s = schedule(20.0, Duration::from_secs(3));
        assert_eq!(s.len(), 60);
        assert_eq!(s[0], Duration::ZERO);
        assert_eq!(s[1], Duration::from_millis(50));
        assert_eq!(s[59], Duration::from_millis(2950));
        assert_eq!(schedule(0.5, Duration::from_secs(3)).len(), 1);
        assert!(schedule(0.0, Duration::from_secs(3)).is_empty());
        assert!(schedule(f64::NAN, Duration::from_secs(3)).is_empty());
    }

    #[test]
    fn summaries_count_errors_by_status_and_take_percentiles_of_successes() {
        let mut outcomes: Vec<Outcome> = (1..=100).map(|i| Outcome::Ok(f64::from(i))).collect();
        outcomes.extend([Outcome::Status(503), Outcome::Status(503), Outcome::Status(400)]);
        outcomes.push(Outcome::Timeout);
        let r = summarise(50.0, Duration::from_secs(4), &outcomes, 7);
        assert_eq!(r.requests, 104);
        assert_eq!(r.ok, 100);
        assert_eq!(r.unavailable, 2);
        assert_eq!(r.errors.get("503"), Some(&2));
        assert_eq!(r.errors.get("400"), Some(&1));
        assert_eq!(r.errors.get("timeout"), Some(&1));
        assert_eq!(r.dropped_by_client, 7);
        assert_eq!(r.achieved_rps, 25.0);
        assert_eq!(
            (r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms),
            (Some(50.0), Some(90.0), Some(99.0), Some(100.0))
        );
        assert_eq!(r.p99_within_2x_p50, Some(true));
        let tail = summarise(1.0, Duration::from_secs(1), &[Outcome::Ok(1.0), Outcome::Ok(3.0)], 0);
        assert_eq!(tail.p99_within_2x_p50, Some(false));
        let none = summarise(1.0, Duration::from_secs(1), &[Outcome::Transport], 0);
        assert_eq!((none.p50_ms, none.p99_within_2x_p50), (None, None));
    }

    #[test]
    fn synthetic_requests_parse_back_as_the_same_tensors() {
        let model = [
            TensorMeta { name: "x".into(), datatype: DataType::F32, shape: vec![-1, 3] },
            TensorMeta { name: "ids".into(), datatype: DataType::I64, shape: vec![1, 4] },
        ];
        let tensors = synthesise(&model, 1);
        assert_eq!(tensors[0].shape, vec![1, 3]);
        let Values::I64(ids) = &tensors[1].values else { panic!("INT64 ids") };
        assert!(ids.iter().all(|i| (1..=100).contains(i)), "{ids:?}");
        for binary in [false, true] {
            let p = encode_request(&tensors, binary);
            let len = p.header_length.map(|n| n.to_string());
            let parsed = kserve::parse_request(&p.body, len.as_deref()).unwrap();
            assert_eq!(parsed.inputs, tensors, "binary: {binary}");
            assert_eq!(parsed.binary_by_default, binary);
        }
    }
}
