//! CPU devices against a GPU for one model: the agents' measurements of open_nsfw on two
//! emulated boards beside the imported H100 reference (`tests/data/h100-open-nsfw.json`, with
//! its provenance), through `coordinator results import` and `coordinator compare`.

use std::path::PathBuf;
use std::time::Duration;

use hone_e2e::*;
use serde_json::{Value, json};

fn reference() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/h100-open-nsfw.json")
}

#[test]
fn cpu_classes_and_an_imported_gpu_are_compared_with_their_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let agents = dir.path().join("agents");
    let ids = [unique("cmp-rpi4"), unique("cmp-rpi5")];
    let _a = AgentProc::start(&coord, &agents, &ids[0], "rpi4", 5).unwrap();
    let _b = AgentProc::start(&coord, &agents, &ids[1], "rpi5", 5).unwrap();
    for id in &ids {
        api.wait_device(id, true, Duration::from_secs(60)).unwrap();
    }
    let model = api.register(&asset("open-nsfw-onnx"), "open-nsfw").unwrap();
    let campaign = api
        .start_campaign(json!({"models": [model], "devices": ids.join(","), "max_parallel": 1,
            "bench": {"warmup": 1, "max_iterations": 5, "max_time_ms": 3000, "symbols": []}}))
        .unwrap();
    let view = api.wait_campaign(&campaign, Duration::from_secs(240)).unwrap();
    assert_eq!(view["progress"]["done"], 2, "{view}");

    let import = |file: &PathBuf| {
        coord
            .cli()
            .args(["results", "import"])
            .arg(file)
            .args(["--model", "open-nsfw", "--json"])
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        let out = import(&reference());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["imported"], 4);
        assert!(v["source"].as_str().unwrap().starts_with("imported from h100-open-nsfw.json"));
    }
    // A file with a figure that is not a number is refused with the row, and stores nothing.
    let mut bad: Value =
        serde_json::from_str(&std::fs::read_to_string(reference()).unwrap()).unwrap();
    bad["rows"][2]["p50_ms"] = json!(-1.0);
    bad["device"] = json!("Fake GPU");
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, bad.to_string()).unwrap();
    let out = import(&bad_file);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("row 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = coord.cli().args(["compare", "--model", "open-nsfw", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines = v["lines"].as_array().unwrap();
    let gpu: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "gpu").collect();
    assert_eq!(gpu.len(), 4, "imported twice, stored once; the bad file not at all: {v}");
    assert!(gpu.iter().all(|g| g["device"] == "NVIDIA H100 80GB HBM3"));
    for class in ["rpi4", "rpi5"] {
        let c = lines.iter().find(|l| l["kind"] == "cpu" && l["device"] == class).unwrap();
        let p50 = c["p50_ms"].as_f64().unwrap();
        let watts = if class == "rpi4" { 6.4 } else { 8.0 };
        let joules = c["joules_per_inference"].as_f64().unwrap();
        assert!((joules - watts * p50 / 1000.0).abs() < 1e-6 * joules.max(1.0), "{c}");
        assert!(c["usd_per_million"].as_f64().unwrap() > 0.0);
        assert!(c["provenance"].as_str().unwrap().contains(&format!("emulating {class}")), "{c}");
    }
    // The same in words: every figure's provenance, and the stated prices.
    let out = coord.cli().args(["compare", "--model", "open-nsfw"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("provenance:") && text.contains("imported from h100-open-nsfw.json"),
        "{text}"
    );
    assert!(text.contains("pricegpu.pages.dev"), "the default GPU price is cited: {text}");
}
