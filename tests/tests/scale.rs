//! The fleet simulator's smoke run in CI (`scripts/fleet-scale.sh` makes the figures at 1,000 and
//! 10,000 agents): 100 simulated agents, each a real MQTT session checking every job's signature
//! and downloading its artifact, all online and every job done, on SQLite and PostgreSQL, and
//! on TLS (each agent enrolled, through the MQTT gate, HTTPS downloads). No timing is asserted:
//! the figures are printed.

use std::process::Command;

use hone_e2e::*;
use serde_json::Value;

fn sim(db: &str, extra: &[&str]) -> Value {
    let out = Command::new(bin("fleet-sim"))
        .args(["--agents", "100", "--database", db, "--timeout-s", "300", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("fleet-sim 100 agents on {db} {extra:?}: {v}");
    v
}

#[test]
fn a_hundred_simulated_agents_each_verify_download_and_report_their_job() {
    for (db, extra) in [("sqlite", &[][..]), ("postgres", &[]), ("sqlite", &["--tls"])] {
        let v = sim(db, extra);
        assert_eq!(v["agents"], 100);
        assert_eq!(v["jobs_done"], 100, "{v}");
        assert_eq!(v["jobs_refused_by_agents"], 0, "every job document verified: {v}");
        assert!(
            v["delivery_p99_ms"].as_f64().is_some() && v["turnaround_p99_ms"].as_f64().is_some()
        );
        assert!(v["coordinator_rss_peak_mib"].as_f64().unwrap() > 0.0);
        assert!(v["database_bytes"].as_u64().unwrap() > 0, "{v}");
        if !extra.is_empty() {
            assert!(v["transport"].as_str().unwrap().starts_with("TLS"), "{v}");
            assert!(v["enrol_s"].as_f64().unwrap() > 0.0, "{v}");
        }
    }
}
