//! `coordinator prune` as users run it: the real binary on the real models, stdout holding the
//! result (JSON or a table), progress and errors on stderr, exit codes.

use std::process::Command;

use hone_e2e::*;
use serde_json::Value;

fn prune(args: &[&str]) -> std::process::Output {
    Command::new(bin("coordinator")).arg("prune").args(args).output().unwrap()
}

#[test]
fn explain_lists_heads_neurons_and_what_is_left_alone() {
    let model = asset("minilm-l3-onnx");
    let m = model.to_str().unwrap();
    let out = prune(&["--model", m, "--data", "vader", "--explain", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = v["groups"].as_array().unwrap();
    let prunable: Vec<&str> = groups
        .iter()
        .filter(|g| g["blocked"].is_null())
        .map(|g| g["kind"].as_str().unwrap())
        .collect();
    assert_eq!(prunable, ["heads", "neurons", "heads", "neurons", "heads", "neurons"]);
    assert!(
        groups.iter().filter_map(|g| g["blocked"].as_str()).all(|b| b.contains("runtime tensor"))
    );
    let table = prune(&["--model", m, "--data", "vader", "--explain"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains("prunable")).count(), 6, "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("left alone")).count(), 6, "{text}");
}

#[test]
fn resnet_channels_are_pruned_and_measured_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let model = asset("open-nsfw-onnx");
    let out_path = dir.path().join("nsfw-small.onnx");
    let out = prune(&[
        "--model",
        model.to_str().unwrap(),
        "--data",
        "photos",
        "--criterion",
        "magnitude",
        "--sparsity",
        "0.5",
        "--test-limit",
        "4",
        "--latency-seconds",
        "0.5",
        "--out",
        out_path.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["params_after"].as_u64() < r["params_before"].as_u64());
    assert!(r["macs_after"].as_u64() < r["macs_before"].as_u64());
    assert_eq!(r["groups_prunable"], 37, "{}", r["groups_blocked"]);
    assert_eq!(r["test_examples"], 4);
    let agreement = r["fidelity"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement));
    assert!(r["accuracy_before"].is_null(), "photos have no labels");
    assert!(r["speedup"].as_f64().is_some_and(|x| x > 0.0) && r["not_faster"].is_boolean());
    assert!(out_path.is_file());
    assert!(String::from_utf8_lossy(&out.stderr).contains("side by side"), "progress on stderr");
}

#[test]
fn bad_arguments_exit_non_zero_with_the_reason() {
    let model = asset("open-nsfw-onnx");
    let out = prune(&[
        "--model",
        model.to_str().unwrap(),
        "--data",
        "photos",
        "--sparsity",
        "2",
        "--out",
        "x.onnx",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--sparsity must be in [0, 1)"), "{err}");
    assert!(out.stdout.is_empty());
    let out = prune(&[
        "--model",
        "/nonexistent.onnx",
        "--data",
        "photos",
        "--sparsity",
        "0.2",
        "--out",
        "x.onnx",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.onnx"));
}
