//! `fleet-sim --agents N [--database sqlite|postgres] [--mqtt-url URL] [--tls
//! [--enrol-concurrency K]] [--pin-coordinator CPU] [--pin-sim CPU] [--timeout-s S] [--json]`:
//! one coordinator against N simulated agents, to measure what the coordinator holds
//! (`scripts/fleet-scale.sh` runs it with raised file limits and the two processes on different
//! cores).
//!
//! Each simulated agent is light but speaks the real protocol through the agent's own code: its
//! MQTT module (persistent session, Last Will, retained birth message), the signature and expiry
//! check of every job document (`store::verify_job`), the artifact download with its capability
//! and sha256 check (`ModelStore`); only the benchmark is replaced by a recorded result, so the
//! host is not the limit. One campaign sends one job to every agent at once; the figures: time to
//! bring the fleet online, p50/p99 command delivery (dispatched → accepted, from the
//! coordinator's job rows), p99 turnaround (dispatched → result stored), campaign completion,
//! the coordinator's peak RSS and CPU seconds, and the database's size.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edge_agent::mqtt::{BusConfig, BusEvent};
use edge_agent::store::{ModelStore, verify_job};
use hone_common::bench::percentile;
use hone_common::topic::{self, CmdKind, EvtKind};
use hone_common::wire::{self, JobAccepted, JobResult, Message, Outcome};
use hone_e2e::*;
use serde_json::json;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// The recorded result every simulated agent reports.
fn recorded_report() -> hone_common::bench::BenchReport {
    let l = hone_common::bench::LatencyStats::from_samples(&[0.21, 0.22, 0.2, 0.25, 0.23])
        .expect("samples");
    hone_common::bench::BenchReport {
        execution: Default::default(),
        latency: l,
        iterations: 5,
        warmup: 1,
        load_ms: 1.0,
        peak_rss_bytes: 8 << 20,
        synthetic_inputs: true,
        inputs: vec![],
        runtime: "tract".into(),
        mode: Default::default(),
        emulation: Default::default(),
        calibration: None,
        agent_version: format!("{} (fleet-sim: recorded result)", hone_common::HONE_VERSION),
        timeline: vec![],
        throughput: vec![],
        cold_start_ms: None,
        readings: Default::default(),
        served_requests: None,
    }
}

struct Counters {
    online: AtomicUsize,
    jobs: AtomicUsize,
    refused: AtomicUsize,
    /// When each job's verified document reached its agent (job id → Unix ms).
    arrived: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

async fn sim_agent(
    id: String,
    host: String,
    port: u16,
    key: &'static ed25519_dalek::VerifyingKey,
    store: ModelStore,
    tls: Option<Arc<rustls::ClientConfig>>,
    counters: Arc<Counters>,
) {
    let host_facts = edge_agent::host::HostFacts {
        arch: "x86_64".into(),
        os: "linux".into(),
        cores: 2,
        memory_bytes: 2 << 30,
        runtimes: vec![],
    };
    let will = host_facts.status(&id, false, 1, Some("x86-vm-2core"), None);
    let config = BusConfig {
        host,
        port,
        client_id: id.clone(),
        keepalive: Duration::from_secs(60),
        will: (topic::status(&id), wire::encode(&Message::Status(will)).expect("will")),
    };
    let (bus, mut events) = edge_agent::mqtt::connect(&config, tls);
    let mut announced = false;
    // The replay defence as the agent keeps it (in memory here: a simulated agent never restarts).
    let mut last: Option<edge_agent::outbox::Accepted> = None;
    loop {
        match events.next().await {
            BusEvent::Connected { .. } => {
                let _ = bus.subscribe(&topic::agent_subscription(&id));
                let birth = host_facts.status(&id, true, 1, Some("x86-vm-2core"), None);
                let _ = bus.publish(
                    &topic::status(&id),
                    wire::encode(&Message::Status(birth)).expect("birth"),
                    true,
                );
                if !announced {
                    announced = true;
                    counters.online.fetch_add(1, Ordering::Relaxed);
                }
            }
            BusEvent::Message { topic: t, payload } => {
                let Ok(Message::RunJob(cmd)) = wire::decode(&payload) else { continue };
                if t != topic::cmd(&id, CmdKind::Job) {
                    continue;
                }
                let accepted = JobAccepted {
                    command_id: cmd.command_id.clone(),
                    job_id: cmd.job_id.clone(),
                    attempt: cmd.attempt,
                };
                let job = match verify_job(cmd, key, hone_common::clock::now_ms(), last.as_ref()) {
                    Ok(j) => {
                        if last.as_ref().is_none_or(|l| j.seq > l.seq) {
                            last = Some(edge_agent::outbox::Accepted {
                                seq: j.seq,
                                command_id: j.command_id.clone(),
                            });
                        }
                        j
                    }
                    Err(e) => {
                        // Said once per kind of refusal: a refused document is never answered,
                        // and would otherwise look lost.
                        if counters.refused.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("{id}: job document refused: {}", e.1);
                        }
                        continue;
                    }
                };
                counters
                    .arrived
                    .lock()
                    .unwrap()
                    .insert(job.job_id.clone(), hone_common::clock::now_ms());
                let _ = bus.publish(
                    &topic::evt(&id, EvtKind::Accepted),
                    wire::encode(&Message::JobAccepted(accepted)).expect("accepted"),
                    false,
                );
                let outcome = match store.fetch_verified(&job).await {
                    Ok(_) => Outcome::Ok(recorded_report()),
                    Err(e) => Outcome::Failed { kind: e.kind(), reason: e.to_string() },
                };
                let cmd = job.into_inner();
                let result = JobResult {
                    result_id: format!("{}-{}", cmd.job_id, cmd.attempt),
                    command_id: cmd.command_id,
                    job_id: cmd.job_id,
                    attempt: cmd.attempt,
                    outcome,
                };
                let _ = bus.publish(
                    &topic::evt(&id, EvtKind::Result),
                    wire::encode(&Message::JobResult(result)).expect("result"),
                    false,
                );
                counters.jobs.fetch_add(1, Ordering::Relaxed);
            }
            BusEvent::Disconnected(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// (peak RSS bytes, CPU seconds) of a process.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    (hwm, ticks / 100.0)
}

fn main() -> anyhow::Result<()> {
    let n: usize = arg("--agents").and_then(|v| v.parse().ok()).unwrap_or(100);
    let database = arg("--database").unwrap_or_else(|| "sqlite".into());
    let as_json = std::env::args().any(|a| a == "--json");
    let timeout =
        Duration::from_secs(arg("--timeout-s").and_then(|v| v.parse().ok()).unwrap_or(900));
    let dir = tempfile::tempdir()?;
    let db_url = match database.as_str() {
        "sqlite" => None,
        "postgres" => Some(fresh_postgres_db()?),
        other => anyhow::bail!("--database sqlite or postgres, not `{other}`"),
    };
    // `--mqtt-url mqtt://…`: an external broker (a Mosquitto of the run's own: 10,000 retained
    // births would reach every later user of a shared one) instead of the embedded one.
    let broker = match arg("--mqtt-url") {
        Some(url) => Broker::External(url),
        None => Broker::Embedded(free_port()),
    };
    // `--tls`: the coordinator's default transport (HTTPS, the MQTT gate, enrolled devices).
    let tls = std::env::args().any(|a| a == "--tls");
    let coord = if tls {
        CoordinatorProc::start_tls(&dir.path().join("coord"), broker, db_url.clone(), &[])?
    } else {
        CoordinatorProc::start(&dir.path().join("coord"), broker, db_url.clone())?
    };
    let pid = coord.pid().ok_or_else(|| anyhow::anyhow!("no coordinator pid"))?;
    // The coordinator and the simulator on different cores (`--pin-coordinator 0 --pin-sim 1`).
    let pin = |cpu: Option<String>, pid: u32| -> anyhow::Result<()> {
        if let Some(cpu) = cpu {
            let ok = std::process::Command::new("taskset")
                .args(["-apc", &cpu, &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status()?
                .success();
            anyhow::ensure!(ok, "taskset -apc {cpu} {pid} failed");
        }
        Ok(())
    };
    pin(arg("--pin-coordinator"), pid)?;
    pin(arg("--pin-sim"), std::process::id())?;
    let api = coord.api();
    let key_hex = coord.trust_key();
    let key: &'static ed25519_dalek::VerifyingKey =
        Box::leak(Box::new(edge_agent::config::parse_trust_key(&key_hex)?));
    let broker_url =
        hone_common::parse_broker_url(&coord.mqtt_url()).map_err(anyhow::Error::msg)?;
    let (host, port) = (broker_url.host.clone(), broker_url.port);
    let model_path = dir.path().join("mlp.onnx");
    std::fs::write(&model_path, models::mlp(16))?;
    let model_bytes = std::fs::metadata(&model_path)?.len();
    let model = api.register(&model_path, "mlp16")?;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let counters = Arc::new(Counters {
        online: AtomicUsize::new(0),
        jobs: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        arrived: Default::default(),
    });
    let ids: Vec<String> = (0..n).map(|i| format!("sim-{i:05}")).collect();
    // On TLS every agent enrols first (a key, a signing request, a one-time token), as a
    // fleet installed by automation would: `--enrol-concurrency` at a time (default 16).
    let mut identities = Vec::new();
    let enrol_started = Instant::now();
    let enrol_concurrency: usize =
        arg("--enrol-concurrency").and_then(|v| v.parse().ok()).unwrap_or(16).max(1);
    if tls {
        // Tokens as an operator's script would make them, several at a time.
        let tokens: Vec<(String, String)> = std::thread::scope(|scope| {
            let chunks: Vec<_> = ids
                .chunks(ids.len().div_ceil(enrol_concurrency).max(1))
                .map(|chunk| {
                    scope.spawn(|| {
                        chunk.iter().map(|id| coord.enrol_token(Some(id))).collect::<Vec<_>>()
                    })
                })
                .collect();
            chunks.into_iter().flat_map(|c| c.join().expect("token thread")).collect::<Vec<_>>()
        })
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
        let permits = Arc::new(tokio::sync::Semaphore::new(enrol_concurrency));
        let mut enrolling = Vec::new();
        for (id, (token, ca_sha256)) in ids.iter().zip(tokens) {
            let request = edge_agent::enroll::EnrolRequest {
                coordinator: coord.api_url(),
                token,
                ca_sha256,
                device_id: id.clone(),
                state_dir: dir.path().join("agents").join(id),
            };
            let permits = permits.clone();
            enrolling.push(rt.spawn(async move {
                let _permit = permits.acquire().await;
                edge_agent::enroll::enroll(&request).await
            }));
        }
        for (i, enrolment) in enrolling.into_iter().enumerate() {
            identities.push(Some(rt.block_on(enrolment)??.config()));
            if (i + 1) % 1000 == 0 {
                eprintln!("{:.0} s: {} enrolled", enrol_started.elapsed().as_secs_f64(), i + 1);
            }
        }
    } else {
        identities.resize(n, None);
    }
    let enrol_s = enrol_started.elapsed().as_secs_f64();
    let started = Instant::now();
    for (id, tls) in ids.iter().zip(identities) {
        let store =
            ModelStore::open_tls(&dir.path().join("agents").join(id).join("store"), tls.clone())?;
        rt.spawn(sim_agent(id.clone(), host.clone(), port, key, store, tls, counters.clone()));
    }
    // The fleet online, as the coordinator sees it.
    let mut said = Instant::now();
    loop {
        // A coordinator busy with thousands of handshakes may not answer in time: asked again.
        let devices = match api.get("/api/v1/devices") {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{:.0} s: asking again: {e}", started.elapsed().as_secs_f64());
                anyhow::ensure!(started.elapsed() < timeout, "no answer within {timeout:?}");
                continue;
            }
        };
        let online =
            devices.as_array().map_or(0, |d| d.iter().filter(|x| x["status"] == "online").count());
        if online >= n {
            break;
        }
        if said.elapsed() > Duration::from_secs(10) {
            said = Instant::now();
            eprintln!(
                "{:.0} s: {online} of {n} online as the coordinator sees it ({} connected here)",
                started.elapsed().as_secs_f64(),
                counters.online.load(Ordering::Relaxed)
            );
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "only {online} of {n} agents online after {:?}",
            timeout
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let online_s = started.elapsed().as_secs_f64();
    let (rss_idle, cpu_before) = usage(pid);
    // Read before the campaign starts: its first results are stored within a second.
    let stored_before = api.metric("results_stored");
    let t0 = Instant::now();
    let campaign = api.start_campaign(json!({
        "models": [model], "devices": "all", "job_timeout_ms": 600_000,
        "bench": {"warmup": 0, "max_iterations": 1, "max_time_ms": 1, "symbols": []},
    }))?;
    eprintln!(
        "{:.0} s: all {n} online; campaign {campaign} started",
        started.elapsed().as_secs_f64()
    );
    // Wait on a counter: the campaign's view lists every job, and polling it would load the
    // coordinator more than the fleet does.
    let mut said = Instant::now();
    loop {
        let stored = api.metric("results_stored").saturating_sub(stored_before) as usize;
        if stored >= n {
            break;
        }
        if said.elapsed() > Duration::from_secs(10) {
            said = Instant::now();
            eprintln!(
                "{:.0} s: {stored} of {n} results stored ({} job documents refused by agents)",
                started.elapsed().as_secs_f64(),
                counters.refused.load(Ordering::Relaxed)
            );
        }
        if t0.elapsed() > timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let view = api.wait_campaign(&campaign, Duration::from_secs(60))?;
    let campaign_s = t0.elapsed().as_secs_f64();
    let (rss_peak, cpu_after) = usage(pid);
    let lines = view["lines"].as_array().cloned().unwrap_or_default();
    let done = lines.iter().filter(|l| l["state"] == "done").count();
    let mut dispatch: Vec<f64> = lines.iter().filter_map(|l| l["dispatch_ms"].as_f64()).collect();
    let mut turnaround: Vec<f64> =
        lines.iter().filter_map(|l| l["turnaround_ms"].as_f64()).collect();
    // Arrival: dispatch → the verified document at its agent (one host, one clock).
    let mut arrival: Vec<f64> = {
        let arrived = counters.arrived.lock().unwrap();
        lines
            .iter()
            .filter_map(|l| {
                let at = *arrived.get(l["job"].as_str()?)? as f64;
                Some(at - l["dispatched_at_ms"].as_f64()?)
            })
            .collect()
    };
    arrival.sort_by(f64::total_cmp);
    dispatch.sort_by(f64::total_cmp);
    turnaround.sort_by(f64::total_cmp);
    let db_bytes = match &db_url {
        None => {
            std::fs::metadata(coord.data_dir.join("hone.db")).map_or(0, |m| m.len())
                + std::fs::metadata(coord.data_dir.join("hone.db-wal")).map_or(0, |m| m.len())
        }
        Some(url) => {
            let name = url.rsplit('/').next().unwrap_or_default();
            let out = std::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-tAc"])
                .arg(format!("SELECT pg_database_size('{name}')"))
                .output()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
        }
    };
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let p = |v: &[f64], q: f64| (!v.is_empty()).then(|| percentile(v, q));
    let out = json!({
        "agents": n,
        "database": database,
        "broker": match &coord.broker {
            Broker::Embedded(_) if tls => "embedded rumqttd behind the MQTT gate".to_string(),
            Broker::Embedded(_) => "embedded rumqttd".to_string(),
            Broker::External(url) => format!("external ({url})"),
        },
        "transport": if tls {
            "TLS with enrolled device certificates (mqtts to the gate, HTTPS downloads)"
        } else {
            "plain MQTT and HTTP on loopback"
        },
        "enrol_s": tls.then_some(enrol_s),
        "enrol_concurrency": tls.then_some(enrol_concurrency),
        "model_bytes": model_bytes,
        "cpu": cpu_model,
        "pinned": {"coordinator": arg("--pin-coordinator"), "simulator": arg("--pin-sim")},
        "online_s": online_s,
        "jobs_done": done,
        "jobs_refused_by_agents": counters.refused.load(Ordering::Relaxed),
        "arrival_p50_ms": p(&arrival, 50.0),
        "arrival_p99_ms": p(&arrival, 99.0),
        "delivery_p50_ms": p(&dispatch, 50.0),
        "delivery_p99_ms": p(&dispatch, 99.0),
        "turnaround_p50_ms": p(&turnaround, 50.0),
        "turnaround_p99_ms": p(&turnaround, 99.0),
        "campaign_s": campaign_s,
        "coordinator_rss_idle_mib": rss_idle as f64 / 1048576.0,
        "coordinator_rss_peak_mib": rss_peak as f64 / 1048576.0,
        "coordinator_cpu_s_campaign": cpu_after - cpu_before,
        "database_bytes": db_bytes,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{n} agents ({database}): online in {online_s:.1} s; {done}/{n} jobs in {campaign_s:.1} s; \
             arrival p99 {:.0} ms; delivery p50 {:.0} ms p99 {:.0} ms; turnaround p99 {:.0} ms; \
             coordinator RSS peak {:.0} MiB, {:.1} CPU s for the campaign; database {:.1} MiB \
             ({cpu_model})",
            p(&arrival, 99.0).unwrap_or(f64::NAN),
            p(&dispatch, 50.0).unwrap_or(f64::NAN),
            p(&dispatch, 99.0).unwrap_or(f64::NAN),
            p(&turnaround, 99.0).unwrap_or(f64::NAN),
            rss_peak as f64 / 1048576.0,
            cpu_after - cpu_before,
            db_bytes as f64 / 1048576.0
        );
    }
    rt.shutdown_background();
    anyhow::ensure!(done == n, "{done} of {n} jobs done");
    Ok(())
}
