//! The main job (`coordinator demo --json`) on the embedded defaults and the real models: the
//! compression loop, and the campaign-only demo (`--campaign`).

use hone_e2e::*;

#[test]
fn the_demo_benchmarks_both_real_models_on_every_local_agent() {
    // Fail early, with the asset's package named, if the models were not fetched.
    asset("minilm-l3-onnx");
    asset("open-nsfw-onnx");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("coordinator"))
        .args(["demo", "--campaign", "--json", "--iterations", "5", "--max-time-ms", "1000"])
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

#[test]
fn the_demo_compresses_a_real_model_and_chooses_a_winner_per_class() {
    asset("open-nsfw-onnx");
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    // A small grid (2 criteria x 2 allocations x 1 sparsity per class) keeps the test short.
    let out = std::process::Command::new(bin("coordinator"))
        .args(["demo", "--json", "--sparsities", "0.5", "--iterations", "5"])
        .arg("--agent-bin")
        .arg(bin("edge-agent"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert!(v["pipeline"].as_str().unwrap().starts_with("p-"), "{v}");
    assert_eq!(v["state"], "done");
    let classes = v["classes"].as_array().unwrap();
    let names: Vec<&str> = classes.iter().map(|c| c["class"].as_str().unwrap()).collect();
    assert_eq!(names, ["rpi4", "x86-vm-2core"]);
    for c in classes {
        for who in ["parent", "winner"] {
            let f = &c[who];
            assert!(f["model"].as_str().is_some(), "{who} in {c}");
            assert!(f["p50_ms"].as_f64().unwrap() > 0.0, "{who} in {c}");
            assert!(f["p90_ms"].as_f64().unwrap() >= f["p50_ms"].as_f64().unwrap());
            assert!(f["fidelity"].as_f64().is_some(), "{who} in {c}");
        }
        let cands = c["candidates"].as_array().unwrap();
        assert_eq!(cands.len(), 4, "{c}");
        assert!(cands.iter().any(|r| r["status"] == "measured"), "{c}");
        assert!(c["device_measurements"].as_u64().unwrap() >= 2);
        assert!(!c["measurement"].as_str().unwrap().is_empty());
    }
    // The emulated rpi4 is slower than the emulated x86 VM on the same parent.
    let p50 = |i: usize| classes[i]["parent"]["p50_ms"].as_f64().unwrap();
    assert!(p50(0) > p50(1), "rpi4 {} ms vs x86 {} ms", p50(0), p50(1));
    assert!(v["device_measurements"].as_u64().unwrap() >= 4);
    assert_eq!(v["report"], report.display().to_string());
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.matches("<svg").count() >= 2, "one chart per class");
    // The loop's end: each class's winner deployed to its agent, past its gate, and served.
    let deployed = v["deployments"].as_array().expect("deployments in the demo's JSON");
    assert_eq!(deployed.len(), 2, "{v}");
    for (d, c) in deployed.iter().zip(classes) {
        assert_eq!(d["class"], c["class"]);
        assert_eq!(d["model"], c["winner"]["model"], "the winner is what was deployed");
        assert_eq!(d["state"], "done", "{d}");
        assert!(d["http_requests_ok"].as_u64().unwrap() > 0, "served over HTTP: {d}");
        assert!(d["http_p50_ms"].as_f64().unwrap() > 0.0, "{d}");
    }
}
