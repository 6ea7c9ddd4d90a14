//! The main job (`coordinator demo --json`) on the embedded defaults and the real models.

use hone_e2e::*;

#[test]
fn the_demo_benchmarks_both_real_models_on_every_local_agent() {
    // Fail early, with the asset's package named, if the models were not fetched.
    asset("minilm-l3-onnx");
    asset("open-nsfw-onnx");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("coordinator"))
        .args(["demo", "--json", "--iterations", "5", "--max-time-ms", "1000"])
        .arg("--agent-bin")
        .arg(bin("edge-agent"))
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 6, "2 models x 3 agents: {v}");
    let mut seen = std::collections::HashSet::new();
    for r in results {
        for key in ["p50_ms", "p90_ms", "p99_ms", "mean_ms", "load_ms"] {
            assert!(r[key].as_f64().unwrap() > 0.0, "{key} in {r}");
        }
        assert!(r["peak_rss_bytes"].as_i64().unwrap() > 1 << 20);
        assert!(r["iterations"].as_i64().unwrap() >= 1);
        assert!(r["profile"].is_string());
        assert!(r["emulation"].is_string(), "every result says how its profile was applied: {r}");
        seen.insert((
            r["model"].as_str().unwrap().to_string(),
            r["device"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(seen.len(), 6, "one line per (model, device)");
    assert!(v["wall_seconds"].as_f64().unwrap() > 0.0);
}
