//! Tables and JSON on stdout.

use crate::api::CampaignView;

/// Prints the per-(model, device) table of a campaign.
pub fn print_campaign(view: &CampaignView) {
    println!(
        "campaign {} ({}): {}/{} done, {} failed",
        view.id, view.state, view.progress.done, view.progress.total, view.progress.failed
    );
    println!(
        "{:<28} {:<20} {:<22} {:<7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "model",
        "device",
        "profile",
        "state",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean ms",
        "load ms",
        "RSS MiB",
        "iters"
    );
    let f = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    for l in &view.lines {
        println!(
            "{:<28} {:<20} {:<22} {:<7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
            truncate(&l.model, 28),
            truncate(&l.device, 20),
            truncate(l.profile.as_deref().unwrap_or("-"), 22),
            l.state,
            f(l.p50_ms),
            f(l.p90_ms),
            f(l.p99_ms),
            f(l.mean_ms),
            f(l.load_ms),
            f(l.peak_rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0))),
            l.iterations.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        );
        if let Some(e) = &l.error {
            println!("    error: {e}");
        }
        if let Some(em) = l.emulation.as_deref().filter(|e| e.starts_with("unthrottled")) {
            println!("    {em}");
        }
        if let Some(rt) = l.runtime.as_deref().filter(|r| !r.starts_with("tract")) {
            println!("    runtime: {rt}");
        }
        for c in &l.caveats {
            println!("    note: {c}");
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// Prints the device registry; an incompatible device gets a line saying why.
pub(super) fn print_devices(devices: &serde_json::Value) {
    println!(
        "{:<24} {:<12} {:<8} {:>5} {:>9} {:<20} {:<8} {:<18}",
        "device", "status", "arch", "cores", "mem GiB", "profile", "version", "runtimes"
    );
    for d in devices.as_array().into_iter().flatten() {
        let runtimes: Vec<String> = d["runtimes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["problem"].is_null())
            .map(|r| {
                let v = r["version"].as_str().unwrap_or("?");
                format!("{} {v}", r["runtime"].as_str().unwrap_or("?"))
            })
            .collect();
        println!(
            "{:<24} {:<12} {:<8} {:>5} {:>9.1} {:<20} {:<8} {:<18}",
            d["id"].as_str().unwrap_or(""),
            d["status"].as_str().unwrap_or(""),
            d["arch"].as_str().unwrap_or(""),
            d["cores"],
            d["memory_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
            d["profile"].as_str().unwrap_or("-"),
            d["agent_version"].as_str().unwrap_or(""),
            if runtimes.is_empty() { "tract".to_string() } else { runtimes.join(", ") },
        );
        if let Some(problem) = d["problem"].as_str() {
            println!("    {problem}");
        }
        for r in d["runtimes"].as_array().into_iter().flatten() {
            if let Some(p) = r["problem"].as_str() {
                println!("    no {}: {p}", r["runtime"].as_str().unwrap_or("?"));
            }
        }
    }
}

/// Prints the model registry.
pub(super) fn print_models(list: &serde_json::Value) {
    println!(
        "{:<20} {:<32} {:>12} {:>10} {:>6}  lineage",
        "id", "name", "bytes", "params", "opset"
    );
    for m in list.as_array().into_iter().flatten() {
        // A pipeline's candidate: its parent, method and settings, and its validation figure.
        let l = &m["lineage"];
        let lineage = if l.is_object() {
            let v = &l["validation"];
            let quality = match (v["accuracy"].as_f64(), v["fidelity"].as_f64()) {
                (Some(a), _) => format!("accuracy {:.2} %", a * 100.0),
                (None, Some(f)) => format!("fidelity {:.2} %", f * 100.0),
                _ => String::new(),
            };
            format!(
                "{} of {} ({}), {}, {quality}",
                l["method"].as_str().unwrap_or("?"),
                l["parent"].as_str().unwrap_or("?"),
                l["class"].as_str().unwrap_or("?"),
                l["settings"]
            )
        } else {
            "-".to_owned()
        };
        println!(
            "{:<20} {:<32} {:>12} {:>10} {:>6}  {lineage}",
            m["id"].as_str().unwrap_or(""),
            m["name"].as_str().unwrap_or(""),
            m["size_bytes"],
            m["summary"]["params"],
            m["summary"]["opset"]
        );
    }
}

/// Prints campaigns, one line each.
pub(super) fn print_campaigns(list: &[CampaignView]) {
    println!("{:<32} {:<8} {:>6} {:>6} {:>6}", "campaign", "state", "jobs", "done", "failed");
    for c in list {
        println!(
            "{:<32} {:<8} {:>6} {:>6} {:>6}",
            c.id, c.state, c.progress.total, c.progress.done, c.progress.failed
        );
    }
}

/// Prints API tokens (never their secrets).
pub(super) fn print_tokens(tokens: &[crate::db::TokenRow]) {
    println!("{:<14} {:<9} {:<10} name", "id", "role", "state");
    for t in tokens {
        let state = if t.revoked_at_ms.is_some() { "revoked" } else { "active" };
        println!("{:<14} {:<9} {:<10} {}", t.id, t.role, state, t.name);
    }
}

pub(super) fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
