//! The fleet simulator's smoke run in CI (`scripts/fleet-scale.sh` makes the figures at 1,000 and
//! 10,000 agents): 100 simulated agents, each a real MQTT session checking every job's signature
//! and downloading its artifact, all online and every job done, on SQLite and PostgreSQL. No
//! timing is asserted: the figures are printed.

use std::process::Command;

use hone_e2e::*;
use serde_json::Value;

fn sim(db: &str) -> Value {
    let out = Command::new(bin("fleet-sim"))
        .args(["--agents", "100", "--database", db, "--timeout-s", "300", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("fleet-sim 100 agents on {db}: {v}");
    v
}

#[test]
fn a_hundred_simulated_agents_each_verify_download_and_report_their_job() {
    for db in ["sqlite", "postgres"] {
        let v = sim(db);
        assert_eq!(v["agents"], 100);
        assert_eq!(v["jobs_done"], 100, "{v}");
        assert_eq!(v["jobs_refused_by_agents"], 0, "every job document verified: {v}");
        assert!(
            v["delivery_p99_ms"].as_f64().is_some() && v["turnaround_p99_ms"].as_f64().is_some()
        );
        assert!(v["coordinator_rss_peak_mib"].as_f64().unwrap() > 0.0);
        assert!(v["database_bytes"].as_u64().unwrap() > 0, "{v}");
    }
}
