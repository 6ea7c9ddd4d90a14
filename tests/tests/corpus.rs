//! Models from the wild: public ONNX files that other exporters wrote (PyTorch, Paddle2ONNX,
//! tf2onnx), taken out of registry packages (`scripts/assets.tsv`, rows `corpus-*` and the two
//! demo models) and run as a new user would: `edge-agent bench --json` with the `--input` shapes
//! of docs/model-corpus.md, then `edge-agent infer` for the output shapes.
//!
//! Each case records the exporter the file names (`producer_name`); the two Paddle2ONNX files
//! that leave it empty are recognised by their `p2o.DynamicDimension.N` symbols.

use std::process::Command;

use hone_e2e::*;
use prost::Message as _;
use serde_json::Value;
use tract_onnx::pb;

struct Case {
    /// Asset name in `scripts/assets.tsv`.
    asset: &'static str,
    /// `producer_name` written in the file.
    producer: &'static str,
    /// `--input` values used.
    input: &'static [&'static str],
    /// Whether the model runs without `--input` (its dynamic axes are named or a batch).
    runs_without_input: bool,
    /// The inputs the benchmark reports.
    inputs: &'static [&'static str],
    /// Output names and shapes.
    outputs: &'static [(&'static str, &'static [u64])],
}

fn producer(path: &std::path::Path) -> (String, Vec<String>) {
    let model = pb::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let graph = model.graph.unwrap();
    let params = graph
        .input
        .iter()
        .filter_map(|i| match i.r#type.as_ref()?.value.as_ref()? {
            pb::type_proto::Value::TensorType(t) => t.shape.clone(),
        })
        .flat_map(|s| s.dim)
        .filter_map(|d| match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => Some(p),
            _ => None,
        })
        .collect();
    (model.producer_name, params)
}

fn agent(command: &str, model: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("edge-agent"))
        .arg(command)
        .arg("--model")
        .arg(model)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bench(model: &std::path::Path, input: &[&str]) -> Value {
    let mut args = vec!["--json", "--warmup", "1", "--iterations", "2", "--max-time-ms", "1000"];
    for i in input {
        args.extend(["--input", i]);
    }
    let (_, stdout, stderr) = agent("bench", model, &args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

fn check(case: &Case) {
    let model = asset(case.asset);
    let (producer, params) = producer(&model);
    assert_eq!(producer, case.producer, "{}", case.asset);
    if producer.is_empty() {
        assert!(params.iter().any(|p| p.starts_with("p2o.DynamicDimension.")), "{params:?}");
    }
    let r = bench(&model, case.input);
    assert_eq!(r["outcome"], "ok", "{}: {r}", case.asset);
    assert_eq!(r["runs"][0]["inputs"], serde_json::json!(case.inputs), "{}", case.asset);
    let mut args = Vec::new();
    for i in case.input {
        args.extend(["--input", i]);
    }
    let (ok, stdout, stderr) = agent("infer", &model, &args);
    assert!(ok, "{}: {stderr}", case.asset);
    let outputs: Value = serde_json::from_str(&stdout).unwrap();
    let shapes: Vec<(String, Vec<u64>)> = outputs
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let shape = o["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap());
            (o["name"].as_str().unwrap().to_string(), shape.collect())
        })
        .collect();
    let expected: Vec<(String, Vec<u64>)> =
        case.outputs.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect();
    assert_eq!(shapes, expected, "{}", case.asset);
    explain(case, &model);
    if !case.runs_without_input {
        // An unnamed dynamic axis that is not a batch: a clear error that asks for --input.
        let r = bench(&model, &[]);
        assert_eq!(r["outcome"], "model_invalid", "{}: {r}", case.asset);
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.contains("--input x=1x3x?x"), "{reason}");
    }
}

/// `coordinator prune --explain` on the model's own shapes (with the case's `--input`): every
/// group is prunable or left alone with a reason, and the reasons are printed for the docs.
fn explain(case: &Case, model: &std::path::Path) {
    let mut cmd = Command::new(bin("coordinator"));
    cmd.args(["prune", "--explain", "--json", "--model"]).arg(model);
    for i in case.input {
        cmd.args(["--input", i]);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: prune --explain failed: {stderr}", case.asset);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = v["groups"].as_array().unwrap_or_else(|| panic!("{}: {v}", case.asset));
    assert!(!groups.is_empty(), "{}: no weight-bearing group", case.asset);
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for g in groups {
        match &g["blocked"] {
            Value::Null => {}
            Value::String(r) if !r.is_empty() => *reasons.entry(r.clone()).or_default() += 1,
            other => panic!("{}: a group left alone without a reason: {other}", case.asset),
        }
    }
    let blocked: usize = reasons.values().sum();
    eprintln!("{}: {} groups, {} left alone", case.asset, groups.len(), blocked);
    for (r, n) in &reasons {
        eprintln!("  {n} x {r}");
    }
}

#[test]
fn pytorch_yolov8_nudenet() {
    check(&Case {
        asset: "corpus-nudenet-320n",
        producer: "pytorch",
        input: &["images=1x3x320x320"],
        runs_without_input: true,
        inputs: &["images: F32[1,3,320,320]"],
        outputs: &[("output0", &[1, 22, 2100])],
    });
}

#[test]
fn pytorch_minilm() {
    check(&Case {
        asset: "minilm-l3-onnx",
        producer: "pytorch",
        input: &["input_ids=1x16", "attention_mask=1x16"],
        runs_without_input: true,
        inputs: &["input_ids: I64[1,16]", "attention_mask: I64[1,16]"],
        outputs: &[
            ("output", &[1, 16]),
            ("463", &[1, 16]),
            ("onnx::Shape_422", &[1, 16, 384]),
            ("461", &[1, 384]),
        ],
    });
}

#[test]
fn paddle2onnx_ppocr_v4_detection() {
    check(&Case {
        asset: "corpus-ppocrv4-det",
        producer: "",
        input: &["x=1x3x320x320"],
        runs_without_input: true,
        inputs: &["x: F32[1,3,320,320]"],
        outputs: &[("sigmoid_0.tmp_0", &[1, 1, 320, 320])],
    });
}

#[test]
fn paddle2onnx_ppocr_v4_recognition() {
    check(&Case {
        asset: "corpus-ppocrv4-rec",
        producer: "",
        input: &["x=1x3x48x320"],
        runs_without_input: false,
        inputs: &["x: F32[1,3,48,320]"],
        outputs: &[("softmax_11.tmp_0", &[1, 40, 6625])],
    });
}

#[test]
fn paddle2onnx_ppocr_direction_classifier() {
    check(&Case {
        asset: "corpus-ppocr-cls",
        producer: "PaddlePaddle",
        input: &["x=1x3x48x192"],
        runs_without_input: false,
        inputs: &["x: F32[1,3,48,192]"],
        outputs: &[("save_infer_model/scale_0.tmp_1", &[1, 2])],
    });
}

#[test]
fn tf2onnx_magika() {
    check(&Case {
        asset: "corpus-magika-v3",
        producer: "tf2onnx",
        input: &[],
        runs_without_input: true,
        inputs: &["bytes: I32[1,2048]"],
        outputs: &[("target_label", &[1, 214])],
    });
}

#[test]
fn tf2onnx_open_nsfw() {
    check(&Case {
        asset: "open-nsfw-onnx",
        producer: "tf2onnx",
        input: &["input:0=1x224x224x3"],
        runs_without_input: true,
        inputs: &["input:0: F32[1,224,224,3]"],
        outputs: &[("outputs", &[1, 2])],
    });
}

/// Input shapes at registration and in campaigns: a model whose `?` axes only a shape can fill
/// is refused without one, naming the input; registered with shapes, its campaigns use them; a
/// campaign's own `bench.inputs` wins, and reaches the agent over the wire (wrong shapes fail
/// there, with tract's reason).
#[test]
fn a_campaign_carries_input_shapes_to_the_agent() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("e2e-shapes");
    let _agent = AgentProc::start_with(&coord, &dir.path().join("agents"), &id, &[], 5).unwrap();
    api.wait_device(&id, true, Duration::from_secs(20)).unwrap();
    let path = dir.path().join("dynamic.onnx");
    std::fs::write(&path, models::dynamic_image()).unwrap();
    let e = api.register(&path, "dynamic-image").unwrap_err().to_string();
    assert!(e.contains("422") && e.contains("--input x=1x3x?x?"), "{e}");
    let e = api.register_with_inputs(&path, "dynamic-image", "x=1x3").unwrap_err().to_string();
    assert!(e.contains("422") && e.contains("has 4 axes, but 2 were given"), "{e}");
    let m = api.register_with_inputs(&path, "dynamic-image", "x=1x3x8x16").unwrap();
    assert_eq!(
        api.get(&format!("/api/v1/models/{m}")).unwrap()["summary"]["input_shapes"]["x"],
        serde_json::json!([1, 3, 8, 16])
    );
    let bench = |inputs: Value| {
        let c = api
            .start_campaign(serde_json::json!({
                "models": [m],
                "devices": id,
                "max_attempts": 1,
                "bench": {"warmup": 1, "max_iterations": 3, "max_time_ms": 500, "symbols": [],
                          "inputs": inputs},
            }))
            .unwrap();
        api.wait_campaign(&c, Duration::from_secs(60)).unwrap()["lines"][0].clone()
    };
    let line = bench(serde_json::json!({}));
    assert_eq!(line["state"], "done", "the stored shapes: {line}");
    let line = bench(serde_json::json!({"x": [1, 3, 16, 32]}));
    assert_eq!(line["state"], "done", "{line}");
    let line = bench(serde_json::json!({"x": [1, 4, 8, 16]}));
    assert_eq!(line["state"], "failed", "the campaign's shapes reach the agent: {line}");
}
