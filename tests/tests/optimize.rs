//! `coordinator optimize`: post-training passes judged on held-out data and timed side by side
//! in tract and ONNX Runtime; the choice is written; bad requests are refused with reasons.

use std::process::Command;

use hone_e2e::*;
use serde_json::Value;

fn coordinator() -> Command {
    Command::new(bin("coordinator"))
}

#[test]
fn optimize_judges_times_and_writes_the_fastest_pass_list_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cnn.onnx");
    std::fs::write(&model, models::mnist_cnn(8, 1)).unwrap();
    let out = dir.path().join("fast.onnx");
    let run = coordinator()
        .args(["optimize", "--model"])
        .arg(&model)
        .args(["--data", "mnist", "--max-accuracy-drop", "5", "--limit", "200"])
        .args(["--seconds", "1", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: Value = serde_json::from_slice(&run.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    // The original and eight pass lists, each in both runtimes; a list that cannot apply (this
    // model's only matmul is too narrow to factor) is one row with its error.
    let errors = rows.iter().filter(|r| !r["error"].is_null()).count();
    assert_eq!(rows.len(), 18 - errors, "{v}");
    let lowrank =
        rows.iter().find(|r| r["passes"] == serde_json::json!(["fold", "lowrank-90"])).unwrap();
    assert!(lowrank["error"].as_str().unwrap().contains("cuts the multiply-adds"), "{lowrank}");
    for runtime in ["tract", "ort"] {
        let original = rows
            .iter()
            .find(|r| r["runtime"] == runtime && r["passes"].as_array().unwrap().is_empty())
            .unwrap();
        assert_eq!(original["agreement"], 1.0);
        assert_eq!(original["accuracy_drop_points"], 0.0);
        assert!(original["p50_ms"].as_f64().unwrap() > 0.0);
    }
    let int8 = rows
        .iter()
        .find(|r| {
            r["runtime"] == "ort" && r["passes"] == serde_json::json!(["fold", "int8-dynamic"])
        })
        .unwrap();
    assert_eq!(int8["judged_in"], "ort", "an int8 model is judged in ONNX Runtime");
    assert!(int8["agreement"].as_f64().unwrap() > 0.9, "{int8}");
    assert!(
        int8["size_bytes"].as_u64() < rows[0]["size_bytes"].as_u64(),
        "int8 weights are smaller"
    );
    let chosen = &rows[v["chosen"].as_u64().unwrap() as usize];
    assert_eq!(chosen["within_budget"], true);
    assert!(v["cpu"].as_str().is_some_and(|c| !c.is_empty()));
    // The written model is the chosen one, and runs.
    assert_eq!(v["out"], out.display().to_string());
    let graph = hone_graph::Graph::load(&out).unwrap();
    let has_int8 = graph.nodes().unwrap().iter().any(|n| n.op_type == "MatMulInteger");
    let chose_int8 = chosen["passes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p.as_str().unwrap().starts_with("int8"));
    assert_eq!(has_int8, chose_int8, "{chosen}");
}

#[test]
fn optimize_refuses_bad_requests_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cnn.onnx");
    std::fs::write(&model, models::mnist_cnn(4, 2)).unwrap();
    let out = dir.path().join("o.onnx");
    let fail = |args: &[&str], env: Option<(&str, &str)>| -> String {
        let mut c = coordinator();
        c.args(["optimize", "--model"]).arg(&model).arg("--out").arg(&out).args(args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert!(!o.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = fail(&["--data", "mnist", "--passes", "fold,int4"], None);
    assert!(e.contains("unknown pass `int4`") && e.contains("int8-dynamic"), "{e}");
    let e = fail(&["--data", "photos", "--max-accuracy-drop", "1"], None);
    assert!(e.contains("needs labelled data") || e.contains("has no labels"), "{e}");
    let e = fail(
        &["--data", "mnist", "--runtime", "ort", "--limit", "20"],
        Some(("HONE_ORT_LIB", "/nonexistent/libonnxruntime.so")),
    );
    assert!(e.contains("ONNX Runtime is not available") && e.contains("/nonexistent"), "{e}");
    assert!(!out.exists(), "nothing is written on a refusal");
}

/// Pruning with reconstruction from the command line: the layer that reads the pruned channels
/// is refitted, and both accuracies (plain and reconstructed, same sparsity, no training) are
/// reported side by side.
#[test]
fn prune_reconstructs_the_layers_that_read_pruned_channels() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cnn.onnx");
    std::fs::write(&model, models::mnist_cnn(8, 3)).unwrap();
    let out = dir.path().join("pruned.onnx");
    let run = coordinator()
        .args(["prune", "--model"])
        .arg(&model)
        .args(["--data", "mnist", "--criterion", "magnitude", "--sparsity", "0.5"])
        .args(["--reconstruct", "--calibration", "64", "--validation", "50", "--round-to", "1"])
        .args(["--test-limit", "200", "--latency-seconds", "0.5", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: Value = serde_json::from_slice(&run.stdout).unwrap();
    let r = &v["reconstruct"];
    assert_eq!(r["refitted"], serde_json::json!(["fc"]), "{v}");
    let (before, after) = (
        r["error_before_after"][0][0].as_f64().unwrap(),
        r["error_before_after"][0][1].as_f64().unwrap(),
    );
    assert!(after < before, "{r}");
    assert!(
        v["accuracy_after_prune"].as_f64().is_some()
            && v["accuracy_after_reconstruct"].as_f64().is_some(),
        "{v}"
    );
    assert_eq!(
        v["accuracy_after"], v["accuracy_after_reconstruct"],
        "no fine-tuning: the written model is the reconstructed one"
    );
    assert!(out.exists());
}
