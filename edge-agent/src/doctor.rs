//! `edge-agent doctor`: checks what the agent needs from this device, in the order an operator
//! would fix them, each with a status and the reason: cgroup version and rights, thermal
//! sensors, clock control, the broker (a real MQTT CONNECT), the coordinator (its health, its
//! key against the pinned one, the clock skew that would expire job documents), transport
//! security, the state folder's free disk, ONNX Runtime, and the host. Nothing is changed on the
//! device: cgroup rights are probed by creating and removing an empty group, cpufreq by opening
//! for writing without writing.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Ok,
    /// The agent works, with less (e.g. no throttling, no temperatures).
    Warn,
    /// The agent cannot work until this is fixed.
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found, and what to do about it.
    pub detail: String,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check { name, status, detail: detail.into() }
}

/// What `doctor` checks against.
#[derive(Debug, Clone)]
pub struct DoctorInput {
    /// The broker, `mqtt://host:port`.
    pub broker: Option<String>,
    /// The coordinator's API, `http://host:port`.
    pub coordinator: Option<String>,
    /// The agent's state folder.
    pub state_dir: PathBuf,
    /// The ONNX Runtime library, if the agent is given one.
    pub ort_lib: Option<PathBuf>,
    /// The sysfs root (`/sys`; tests give a folder of their own).
    pub sysfs: PathBuf,
}

/// Runs every check.
pub async fn run(input: &DoctorInput) -> Vec<Check> {
    let mut out = vec![cgroups(&crate::throttle::cgroup::Cgroups::detect())];
    out.push(thermal(&input.sysfs));
    out.push(clocks(&input.sysfs));
    let identity = crate::enroll::Identity::exists(&input.state_dir)
        .then(|| crate::enroll::Identity::load(&input.state_dir));
    let tls_wanted = [&input.broker, &input.coordinator]
        .into_iter()
        .flatten()
        .any(|u| u.starts_with("mqtts://") || u.starts_with("https://"));
    out.push(certificate(identity.as_ref(), tls_wanted, hone_common::clock::now_ms() as i64));
    let identity = identity.and_then(Result::ok);
    out.push(match &input.broker {
        Some(url) => {
            let url = url.clone();
            let tls = identity.as_ref().map(|i| i.config());
            tokio::task::spawn_blocking(move || broker(&url, tls, Duration::from_secs(5)))
                .await
                .unwrap_or_else(|e| check("broker", Status::Fail, e.to_string()))
        }
        None => check("broker", Status::Warn, "not checked: give --broker (or HONE_BROKER)"),
    });
    match &input.coordinator {
        Some(url) => out.extend(
            coordinator(url, &input.state_dir, identity.as_ref().map(|i| i.config())).await,
        ),
        None => out.push(check(
            "coordinator",
            Status::Warn,
            "not checked: give --coordinator (or HONE_COORDINATOR)",
        )),
    }
    out.push(transport(input.broker.as_deref(), input.coordinator.as_deref()));
    out.push(disk(&input.state_dir));
    out.push(ort(input.ort_lib.as_deref()).await);
    out.push(host());
    out
}

/// The cgroup controllers the agent can use to emulate profiles.
pub fn cgroups(c: &crate::throttle::cgroup::Cgroups) -> Check {
    let have: Vec<&str> =
        [("cpu", c.cpu.is_some()), ("cpuset", c.cpuset.is_some()), ("memory", c.memory.is_some())]
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(n, _)| *n)
            .collect();
    let version = c.version.label();
    if have.len() == 3 {
        check(
            "cgroups",
            Status::Ok,
            format!("{version}: cpu, cpuset and memory groups can be created"),
        )
    } else {
        let problems = c.problems.join("; ");
        check(
            "cgroups",
            Status::Warn,
            format!(
                "{version}: usable {}; {problems}. Profiles run with the limits that \
                 remain (rlimit and CPU affinity) and say so in every result; run the agent as \
                 root or delegate the controllers to its user to emulate profiles fully",
                if have.is_empty() { "none".to_string() } else { have.join(", ") }
            ),
        )
    }
}

fn read_num(p: &Path) -> Option<f64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Thermal zones with a readable temperature.
pub fn thermal(sysfs: &Path) -> Check {
    let zones: Vec<(String, f64)> = entries(&sysfs.join("class/thermal"), "thermal_zone")
        .iter()
        .filter_map(|z| {
            let t = read_num(&z.join("temp"))? / 1000.0;
            let kind = std::fs::read_to_string(z.join("type")).unwrap_or_default();
            Some((kind.trim().to_string(), t))
        })
        .collect();
    match zones.iter().map(|(_, t)| *t).reduce(f64::max) {
        Some(hottest) => check(
            "thermal sensors",
            Status::Ok,
            format!(
                "{} zone(s) ({}), hottest {hottest:.1} °C: native runs report temperatures",
                zones.len(),
                zones.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ),
        None => check(
            "thermal sensors",
            Status::Warn,
            format!(
                "no readable thermal zone under {}: native runs report no temperature \
                 (emulated profiles use their thermal model and are unaffected)",
                sysfs.join("class/thermal").display()
            ),
        ),
    }
}

/// Whether core clocks can be read and capped (cpufreq).
pub fn clocks(sysfs: &Path) -> Check {
    let cpus: Vec<PathBuf> = entries(&sysfs.join("devices/system/cpu"), "cpu")
        .into_iter()
        .filter(|p| p.join("cpufreq").is_dir())
        .collect();
    let Some(first) = cpus.first() else {
        return check(
            "clock control",
            Status::Warn,
            "no cpufreq: clocks are neither read nor capped (a VM, or a kernel without \
             cpufreq); throttling shows only in latency",
        );
    };
    let f = first.join("cpufreq");
    let cur = read_num(&f.join("scaling_cur_freq")).map(|k| k / 1000.0);
    let max = read_num(&f.join("cpuinfo_max_freq")).map(|k| k / 1000.0);
    let writable = std::fs::OpenOptions::new().write(true).open(f.join("scaling_max_freq")).is_ok();
    let clock = match (cur, max) {
        (Some(c), Some(m)) => format!("{c:.0} of {m:.0} MHz"),
        _ => "clock unreadable".into(),
    };
    if writable {
        check(
            "clock control",
            Status::Ok,
            format!("{} core(s) with cpufreq, {clock}; scaling_max_freq is writable", cpus.len()),
        )
    } else {
        check(
            "clock control",
            Status::Warn,
            format!(
                "{} core(s) with cpufreq, {clock}; scaling_max_freq is read-only for this user: \
                 clocks are read, not capped",
                cpus.len()
            ),
        )
    }
}

/// An MQTT 3.1.1 CONNECT (clean session) for `client_id`.
pub fn connect_packet(client_id: &str, keepalive_s: u16) -> Vec<u8> {
    let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    var.extend_from_slice(&keepalive_s.to_be_bytes());
    var.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    var.extend_from_slice(client_id.as_bytes());
    let mut out = vec![0x10];
    let mut len = var.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend(var);
    out
}

/// What a CONNACK says: `Ok(())` accepted, else the broker's reason.
pub fn connack(bytes: &[u8]) -> Result<(), String> {
    match bytes {
        [0x20, 0x02, _, 0] => Ok(()),
        [0x20, 0x02, _, code] => Err(match code {
            1 => "refused: unacceptable protocol version (the agent speaks MQTT 3.1.1)".into(),
            2 => "refused: client identifier rejected".into(),
            3 => "refused: server unavailable".into(),
            4 => "refused: bad user name or password".into(),
            5 => "refused: not authorised (the broker's ACL or authentication)".into(),
            c => format!("refused with return code {c}"),
        }),
        other => Err(format!("answered {other:02x?}, not an MQTT CONNACK: is this an MQTT port?")),
    }
}

/// The enrolled identity: its certificate's validity and renewal.
pub fn certificate(
    identity: Option<&anyhow::Result<crate::enroll::Identity>>,
    tls_wanted: bool,
    now_ms: i64,
) -> Check {
    let id = match identity {
        None if tls_wanted => {
            return check(
                "certificate",
                Status::Fail,
                "not enrolled (no tls/identity.json): run `edge-agent enroll` with a token",
            );
        }
        None => return check("certificate", Status::Warn, "not enrolled: plain transport only"),
        Some(Err(e)) => return check("certificate", Status::Fail, format!("{e:#}")),
        Some(Ok(id)) => id,
    };
    let f = &id.file;
    let left_h = (f.not_after_ms - now_ms) as f64 / 3_600_000.0;
    if id.expired(now_ms) {
        return check(
            "certificate",
            Status::Fail,
            format!(
                "{}: expired {:.1} h ago; the agent asks to re-enrol at start and waits for \
                 `coordinator devices approve {}`",
                f.device_id, -left_h, f.device_id
            ),
        );
    }
    let overdue = now_ms > id.renew_at_ms() + 3_600_000;
    check(
        "certificate",
        if overdue { Status::Warn } else { Status::Ok },
        format!(
            "{} from {}: valid for {:.1} h more{}",
            f.device_id,
            f.coordinator,
            left_h,
            if overdue {
                " (renewal overdue: is the coordinator reachable, or the device revoked?)"
            } else {
                ", renewed automatically at two thirds of its life"
            }
        ),
    )
}

/// Connects to the broker and completes an MQTT handshake (then disconnects); over TLS, the
/// handshake with the device certificate (no MQTT session: the agent's would be taken over).
pub fn broker(
    url: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Check {
    let parsed = match hone_common::parse_broker_url(url) {
        Ok(x) => x,
        Err(e) => return check("broker", Status::Fail, e),
    };
    let (host, port) = (parsed.host.clone(), parsed.port);
    let addr = match (host.as_str(), port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) | Err(_) => {
            return check("broker", Status::Fail, format!("{url}: cannot resolve `{host}`"));
        }
    };
    let started = std::time::Instant::now();
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            return check("broker", Status::Fail, format!("{url}: cannot connect to {addr}: {e}"));
        }
    };
    let _ = s.set_read_timeout(Some(timeout));
    if parsed.tls {
        let Some(tls) = tls else {
            return check(
                "broker",
                Status::Fail,
                format!("{url} is TLS and this agent is not enrolled"),
            );
        };
        let name = match rustls::pki_types::ServerName::try_from(host.clone()) {
            Ok(n) => n,
            Err(e) => return check("broker", Status::Fail, format!("{url}: {e}")),
        };
        let conn = match rustls::ClientConnection::new(tls, name) {
            Ok(c) => c,
            Err(e) => return check("broker", Status::Fail, format!("{url}: {e}")),
        };
        let mut tls = rustls::StreamOwned::new(conn, s);
        // TLS 1.3 sends the client's certificate after the server's Finished: a refusal comes
        // as an alert on the first read, so read until the server has spoken or closed.
        let mut probe = [0u8; 1];
        let mut handshake_ms = 0;
        let done = tls.conn.complete_io(&mut tls.sock).and_then(|_| {
            handshake_ms = started.elapsed().as_millis();
            let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(500)));
            match std::io::Read::read(&mut tls, &mut probe) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    Ok(0)
                }
                other => other,
            }
        });
        return match done {
            Ok(_) => check(
                "broker",
                Status::Ok,
                format!(
                    "{url}: TLS with this device's certificate accepted (handshake {} ms; no \
                     MQTT session opened: the agent's own would be taken over)",
                    handshake_ms
                ),
            ),
            Err(e) => check("broker", Status::Fail, format!("{url}: TLS refused: {e}")),
        };
    }
    let id = format!("hone-doctor-{}", std::process::id());
    let mut reply = [0u8; 4];
    let answer = s
        .write_all(&connect_packet(&id, 10))
        .and_then(|()| s.read_exact(&mut reply))
        .map_err(|e| format!("{url}: no MQTT answer: {e}"))
        .and_then(|()| connack(&reply).map_err(|e| format!("{url}: {e}")));
    let _ = s.write_all(&[0xE0, 0x00]);
    match answer {
        Ok(()) => check(
            "broker",
            Status::Ok,
            format!("{url}: MQTT 3.1.1 session accepted in {} ms", started.elapsed().as_millis()),
        ),
        Err(e) => check("broker", Status::Fail, e),
    }
}

/// The coordinator's health, its key against the one pinned in the state folder, and the
/// clock skew (job documents expire, so a clock far off makes every job look expired or
/// from the future).
pub async fn coordinator(
    url: &str,
    state_dir: &Path,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Vec<Check> {
    let base = url.trim_end_matches('/');
    let mut http = reqwest::Client::builder();
    if let Some(tls) = tls {
        http = http.use_preconfigured_tls((*tls).clone());
    }
    let http = match http.timeout(Duration::from_secs(5)).build() {
        Ok(h) => h,
        Err(e) => return vec![check("coordinator", Status::Fail, e.to_string())],
    };
    let health = match http.get(format!("{base}/api/v1/health")).send().await {
        Ok(r) => r,
        Err(e) => {
            return vec![check("coordinator", Status::Fail, format!("{base}: unreachable: {e}"))];
        }
    };
    let date = health
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(parse_http_date);
    let status = health.status();
    let body: serde_json::Value = health.json().await.unwrap_or_default();
    let mut out = Vec::new();
    if !status.is_success() {
        out.push(check(
            "coordinator",
            Status::Fail,
            format!("{base}/api/v1/health answered {status}"),
        ));
        return out;
    }
    out.push(check(
        "coordinator",
        Status::Ok,
        format!(
            "{base}: Hone {} ({} database), its broker connection {}",
            body["version"].as_str().unwrap_or("?"),
            body["database"].as_str().unwrap_or("?"),
            if body["mqtt_connected"] == true { "up" } else { "DOWN" }
        ),
    ));
    let key: Option<String> = match http.get(format!("{base}/api/v1/trust")).send().await {
        Ok(r) => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["public_key"].as_str().map(str::to_string)),
        Err(_) => None,
    };
    let pinned_path = state_dir.join("trusted-coordinator.pub");
    let pinned = std::fs::read_to_string(&pinned_path).ok().map(|s| s.trim().to_string());
    out.push(match (key, pinned) {
        (Some(k), Some(p)) if k == p => check(
            "coordinator key",
            Status::Ok,
            format!("matches the key pinned in {}", pinned_path.display()),
        ),
        (Some(k), Some(p)) => check(
            "coordinator key",
            Status::Fail,
            format!(
                "the coordinator serves {}…, but {} pins {}…: this agent refuses its jobs \
                 (a different coordinator, or a rotated key: pin the new key with --trust-key)",
                &k[..k.len().min(16)],
                pinned_path.display(),
                &p[..p.len().min(16)]
            ),
        ),
        (Some(k), None) => check(
            "coordinator key",
            Status::Warn,
            format!(
                "no key pinned in {} yet: start the agent with --trust-key {}… (checked out of \
                 band) rather than --trust-on-first-use",
                pinned_path.display(),
                &k[..k.len().min(16)]
            ),
        ),
        (None, _) => {
            check("coordinator key", Status::Fail, format!("{base}/api/v1/trust gave no key"))
        }
    });
    out.push(match date {
        Some(remote) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let skew = now - remote;
            let text = format!("this clock is {skew:+} s from the coordinator's (HTTP Date, ±1 s)");
            if skew.abs() <= 30 {
                check("clock", Status::Ok, text)
            } else {
                check(
                    "clock",
                    Status::Fail,
                    format!("{text}: job documents expire, so jobs would be refused; sync the clock (NTP)"),
                )
            }
        }
        None => check("clock", Status::Warn, "the coordinator sent no Date header: skew not checked"),
    });
    out
}

/// Seconds since the epoch of an HTTP date (`Fri, 04 Dec 2026 22:06:07 GMT`).
pub fn parse_http_date(s: &str) -> Option<i64> {
    let f: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = f.as_slice() else { return None };
    let months =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let m = months.iter().position(|x| x == month)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let [h, mi, se] = hms.as_slice() else { return None };
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// Whether the transport is encrypted, and whether that matters here.
pub fn transport(broker: Option<&str>, coordinator: Option<&str>) -> Check {
    let loopback = |u: &str| {
        let host = u.split("://").nth(1).unwrap_or(u).split(['/', ':']).next().unwrap_or("");
        matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1") || host.starts_with("127.")
    };
    let tls = |u: &str| u.starts_with("mqtts://") || u.starts_with("https://");
    let urls: Vec<&str> = [broker, coordinator].into_iter().flatten().collect();
    let plain_remote: Vec<&str> =
        urls.iter().copied().filter(|u| !tls(u) && !loopback(u)).collect();
    if !plain_remote.is_empty() {
        return check(
            "transport",
            Status::Fail,
            format!(
                "plain MQTT or HTTP to {}: refused beyond loopback; use mqtts:// and https:// \
                 with an enrolled identity (`edge-agent enroll`)",
                plain_remote.join(" and ")
            ),
        );
    }
    if !urls.is_empty() && urls.iter().all(|u| tls(u)) {
        check(
            "transport",
            Status::Ok,
            "TLS with this device's client certificate to the broker and the coordinator; job \
             documents are also signed (ed25519) and artifacts checked by sha256",
        )
    } else {
        check(
            "transport",
            Status::Ok,
            "plain MQTT and HTTP on loopback; job documents are signed (ed25519) and artifacts \
             checked by sha256 whatever the transport",
        )
    }
}

/// Free disk in the state folder (models are stored there).
pub fn disk(state_dir: &Path) -> Check {
    let probe = std::iter::successors(Some(state_dir), |p| p.parent()).find(|p| p.exists());
    let Some(at) = probe else {
        return check(
            "disk",
            Status::Fail,
            format!("{}: no existing folder on its path", state_dir.display()),
        );
    };
    match rustix::fs::statvfs(at) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            disk_verdict(state_dir, free)
        }
        Err(e) => {
            check("disk", Status::Warn, format!("{}: cannot read free space: {e}", at.display()))
        }
    }
}

/// The verdict on `free` bytes in the state folder: under 100 MiB fails (a model and its
/// download do not fit), under 1 GiB warns.
pub fn disk_verdict(state_dir: &Path, free: u64) -> Check {
    let mib = free as f64 / 1048576.0;
    let text = format!("{:.0} MiB free for {}", mib, state_dir.display());
    if free < 100 << 20 {
        check("disk", Status::Fail, format!("{text}: models and downloads need more"))
    } else if free < 1 << 30 {
        check("disk", Status::Warn, format!("{text}: large models may not fit"))
    } else {
        check("disk", Status::Ok, text)
    }
}

/// ONNX Runtime, probed in a child process like the agent does at start.
pub async fn ort(lib: Option<&Path>) -> Check {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return check(
                "onnx runtime",
                Status::Warn,
                format!("cannot find this program to probe with: {e}"),
            );
        }
    };
    let r = crate::bench::available_runtimes(&exe, lib).await;
    let ort = r.iter().find(|x| x.runtime == hone_common::bench::Runtime::Ort);
    match ort {
        Some(x) if x.problem.is_none() => check(
            "onnx runtime",
            Status::Ok,
            format!(
                "ONNX Runtime {} loads: jobs in `ort` are accepted",
                x.version.as_deref().unwrap_or("?")
            ),
        ),
        Some(x) => check(
            "onnx runtime",
            Status::Warn,
            format!("tract only: {}", x.problem.as_deref().unwrap_or("unavailable")),
        ),
        None => check("onnx runtime", Status::Warn, "tract only: this build has no ONNX Runtime"),
    }
}

/// The host: what the birth message will announce.
pub fn host() -> Check {
    let f = crate::host::HostFacts::read();
    check(
        "host",
        Status::Ok,
        format!(
            "{} {}, {} core(s), {:.1} GiB memory",
            f.os,
            f.arch,
            f.cores,
            f.memory_bytes as f64 / (1u64 << 30) as f64
        ),
    )
}

/// The table `doctor` prints.
pub fn table(checks: &[Check]) -> String {
    let w = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in checks {
        s.push_str(&format!("{:<w$}  {:<4}  {}\n", c.name, c.status.word(), c.detail));
    }
    let fails = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warns = checks.iter().filter(|c| c.status == Status::Warn).count();
    s.push_str(&format!("{fails} failed, {warns} warning(s)\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mqtt_handshake_is_3_1_1_and_every_refusal_is_named() {
        let p = connect_packet("hone-doctor-1", 10);
        assert_eq!(p[0], 0x10);
        assert_eq!(p[1] as usize, p.len() - 2, "remaining length");
        assert_eq!(&p[2..10], &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02]);
        assert_eq!(&p[10..12], &[0, 10], "keep-alive");
        assert_eq!(&p[14..], b"hone-doctor-1");
        let long = connect_packet(&"x".repeat(200), 10);
        assert_eq!(&long[1..3], &[(212 % 128) as u8 | 0x80, 1], "two-byte remaining length");
        assert_eq!(connack(&[0x20, 2, 0, 0]), Ok(()));
        assert!(connack(&[0x20, 2, 0, 5]).unwrap_err().contains("not authorised"));
        assert!(connack(&[0x20, 2, 0, 4]).unwrap_err().contains("user name or password"));
        assert!(connack(b"HTTP").unwrap_err().contains("not an MQTT CONNACK"));
    }

    #[test]
    fn sensors_and_clocks_are_read_from_sysfs_and_their_absence_is_a_warning() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(thermal(d.path()).status, Status::Warn);
        assert_eq!(clocks(d.path()).status, Status::Warn);
        let z = d.path().join("class/thermal/thermal_zone0");
        std::fs::create_dir_all(&z).unwrap();
        std::fs::write(z.join("temp"), "61500\n").unwrap();
        std::fs::write(z.join("type"), "cpu-thermal\n").unwrap();
        let t = thermal(d.path());
        assert_eq!(t.status, Status::Ok);
        assert!(t.detail.contains("61.5 °C") && t.detail.contains("cpu-thermal"), "{}", t.detail);
        let f = d.path().join("devices/system/cpu/cpu0/cpufreq");
        std::fs::create_dir_all(&f).unwrap();
        std::fs::write(f.join("scaling_cur_freq"), "1500000").unwrap();
        std::fs::write(f.join("cpuinfo_max_freq"), "1800000").unwrap();
        let c = clocks(d.path());
        assert_eq!(c.status, Status::Warn, "no scaling_max_freq to write: {}", c.detail);
        assert!(c.detail.contains("1500 of 1800 MHz"), "{}", c.detail);
        std::fs::write(f.join("scaling_max_freq"), "1800000").unwrap();
        assert_eq!(clocks(d.path()).status, Status::Ok);
    }

    #[test]
    fn http_dates_transport_and_disk_verdicts() {
        assert_eq!(parse_http_date("Fri, 04 Dec 2026 22:06:07 GMT"), Some(1_796_421_967));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("yesterday"), None);
        let local = transport(Some("mqtt://127.0.0.1:1883"), Some("http://localhost:7878"));
        assert_eq!(local.status, Status::Ok);
        let lan = transport(Some("mqtt://10.0.0.5:1883"), Some("http://127.0.0.1:7878"));
        assert_eq!(lan.status, Status::Fail, "the agent refuses plain transport off loopback");
        assert!(lan.detail.contains("10.0.0.5"), "{}", lan.detail);
        let tls = transport(Some("mqtts://10.0.0.5:8883"), Some("https://10.0.0.5:7878"));
        assert_eq!(tls.status, Status::Ok);
        assert!(tls.detail.contains("client certificate"), "{}", tls.detail);
        let p = Path::new("/var/lib/hone-agent");
        assert_eq!(disk_verdict(p, 50 << 20).status, Status::Fail);
        assert_eq!(disk_verdict(p, 500 << 20).status, Status::Warn);
        assert_eq!(disk_verdict(p, 5 << 30).status, Status::Ok);
        assert_eq!(disk(Path::new("/")).name, "disk");
    }

    #[test]
    fn a_dead_broker_port_fails_with_the_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = broker(&format!("mqtt://127.0.0.1:{port}"), None, Duration::from_secs(2));
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains(&format!("127.0.0.1:{port}")), "{}", c.detail);
        assert_eq!(broker("http://x", None, Duration::from_secs(1)).status, Status::Fail);
        let c = broker("mqtts://127.0.0.1:1", None, Duration::from_secs(1));
        assert_eq!(c.status, Status::Fail);
    }

    #[test]
    fn the_certificate_check_reads_the_identity_and_its_validity() {
        assert_eq!(certificate(None, true, 0).status, Status::Fail, "TLS wanted, not enrolled");
        assert_eq!(certificate(None, false, 0).status, Status::Warn);
        let broken: anyhow::Result<crate::enroll::Identity> = Err(anyhow::anyhow!("bad key"));
        assert_eq!(certificate(Some(&broken), true, 0).status, Status::Fail);
    }
}
