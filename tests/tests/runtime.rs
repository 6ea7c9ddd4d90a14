//! ONNX Runtime on the agents: side by side with tract in `edge-agent bench`, in a campaign on
//! local agents, and a missing or broken library (a clear reason; tract jobs go on).

use std::process::Command;
use std::time::Duration;

use hone_e2e::*;
use serde_json::{Value, json};

fn ort_lib() -> String {
    asset("onnxruntime-lib").display().to_string()
}

/// `edge-agent bench --runtime tract,ort` measures both on the same inputs, alternating, and
/// records ONNX Runtime's threads and that its threads do not spin.
#[test]
fn the_agent_benchmarks_tract_and_onnx_runtime_side_by_side() {
    let model = asset("minilm-l3-onnx");
    let out = Command::new(bin("edge-agent"))
        .args(["bench", "--model"])
        .arg(&model)
        .args(["--runtime", "tract,ort", "--ort-lib", &ort_lib(), "--threads", "1"])
        .args(["--repeat", "2", "--iterations", "5", "--warmup", "1", "--json"])
        .args(["--input", "input_ids=1x32,attention_mask=1x32"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    let order: Vec<&str> =
        runs.iter().map(|r| r["execution"]["runtime"].as_str().unwrap()).collect();
    assert_eq!(order, ["tract", "ort", "tract", "ort"], "runs alternate");
    for r in runs {
        assert_eq!(r["inputs"][0], "input_ids: I64[1,32]", "same shapes in both: {r}");
        assert!(r["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    }
    let ort = &runs[1];
    assert!(ort["runtime"].as_str().unwrap().starts_with("onnxruntime 1.31.1"), "{ort}");
    assert_eq!(ort["execution"]["threads"], 1);
    assert_eq!(ort["execution"]["spinning"], false);
    assert_eq!(runs[0]["runtime"], "tract 0.23.9");
    let by = v["by_runtime"].as_array().unwrap();
    assert_eq!(by.len(), 2);
    assert_eq!(by[1]["runs"], 2);

    // A missing library: a clear error, nothing measured in ONNX Runtime.
    let out = Command::new(bin("edge-agent"))
        .args(["bench", "--model"])
        .arg(&model)
        .args(["--runtime", "ort", "--ort-lib", "/nonexistent/libonnxruntime.so", "--json"])
        .args(["--input", "input_ids=1x8,attention_mask=1x8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "unsupported", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("no ONNX Runtime library at /nonexistent"),
        "{v}"
    );
}

/// The probe names what is wrong with a library: missing, not a shared library, or a shared
/// library that is not ONNX Runtime; and gives the version of the real one.
#[test]
fn the_runtime_probe_explains_a_missing_or_wrong_library() {
    let dir = tempfile::tempdir().unwrap();
    let probe = |lib: &std::path::Path| -> Value {
        let out = Command::new(bin("edge-agent")).arg("ort-probe").arg("--lib").arg(lib).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(probe(&asset("onnxruntime-lib"))["version"], "1.31.1");
    let missing = probe(&dir.path().join("libonnxruntime.so"));
    assert!(missing["problem"].as_str().unwrap().starts_with("no ONNX Runtime library at"));
    let junk = dir.path().join("libjunk.so");
    std::fs::write(&junk, b"not an ELF file at all").unwrap();
    let junk = probe(&junk);
    assert!(junk["problem"].as_str().unwrap().contains("cannot load ONNX Runtime"), "{junk}");
    // A real shared library that is not ONNX Runtime (the C library itself).
    let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists());
    if let Some(libc) = libc {
        let other = probe(&libc);
        let p = other["problem"].as_str().unwrap();
        assert!(p.contains("does not export `OrtGetApiBase`"), "{other}");
    }
}

/// An agent with ONNX Runtime measures a campaign in it; an agent whose library is broken says
/// why in its status, is never sent an ONNX Runtime job (creation names it and its reason), and
/// runs tract jobs on.
#[test]
fn a_campaign_runs_in_onnx_runtime_on_the_agents_that_have_it() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let agents = dir.path().join("agents");
    let (good, broken) = (unique("ort-good"), unique("ort-broken"));
    let lib = ort_lib();
    let _g =
        AgentProc::start_with(&coord, &agents, &good, &["--profile", "rpi5", "--ort-lib", &lib], 5)
            .unwrap();
    let junk = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&junk, vec![0u8; 4096]).unwrap();
    let junk = junk.display().to_string();
    let _b = AgentProc::start_with(
        &coord,
        &agents,
        &broken,
        &["--profile", "rpi5", "--ort-lib", &junk],
        5,
    )
    .unwrap();
    for id in [&good, &broken] {
        api.wait_device(id, true, Duration::from_secs(60)).unwrap();
    }
    let runtimes =
        |id: &str| api.get(&format!("/api/v1/devices/{id}")).unwrap()["runtimes"].clone();
    let g = runtimes(&good);
    let ort = g.as_array().unwrap().iter().find(|r| r["runtime"] == "ort").unwrap();
    assert_eq!(ort["version"], "1.31.1", "{g}");
    assert!(ort["problem"].is_null(), "{g}");
    let b = runtimes(&broken);
    let ort = b.as_array().unwrap().iter().find(|r| r["runtime"] == "ort").unwrap();
    let problem = ort["problem"].as_str().unwrap();
    assert!(problem.contains("cannot load ONNX Runtime from") && problem.contains(&junk), "{b}");
    let tract = b.as_array().unwrap().iter().find(|r| r["runtime"] == "tract").unwrap();
    assert_eq!(tract["version"], "0.23.9");

    let minilm = api
        .register_with_inputs(
            &asset("minilm-l3-onnx"),
            "minilm-l3",
            "input_ids=1x64,attention_mask=1x64",
        )
        .unwrap();
    let bench = |runtime: &str| {
        json!({"warmup": 2, "max_iterations": 8, "max_time_ms": 3000, "symbols": [],
               "runtime": runtime})
    };
    // Named: the broken device is refused with its reason, before any job exists.
    let (code, body) = api
        .post(
            "/api/v1/campaigns",
            &json!({"models": [minilm], "devices": format!("{good},{broken}"),
                    "bench": bench("ort")}),
        )
        .unwrap();
    assert_eq!(code, 400, "{body}");
    let text = body.to_string();
    assert!(text.contains(&broken) && text.contains("cannot load ONNX Runtime"), "{text}");
    assert!(!text.contains(&format!("{good}:")), "the good device is not blamed: {text}");

    // By profile: only the device that runs ONNX Runtime gets the job.
    let ort_campaign = api
        .start_campaign(json!({"models": [minilm], "devices": "profile:rpi5",
                               "bench": bench("ort"), "max_parallel": 1}))
        .unwrap();
    let view = api.wait_campaign(&ort_campaign, Duration::from_secs(180)).unwrap();
    let lines = view["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{view}");
    let l = &lines[0];
    assert_eq!(l["device"], good.as_str());
    assert_eq!(l["state"], "done", "{l}");
    let rt = l["runtime"].as_str().unwrap();
    assert!(rt.starts_with("onnxruntime 1.31.1") && rt.ends_with("no spinning"), "{rt}");
    assert_eq!(l["emulation"], "emulated", "{l}");

    // The broken device runs tract jobs on.
    let tract_campaign = api
        .start_campaign(json!({"models": [minilm], "devices": broken, "bench": bench("tract")}))
        .unwrap();
    let view = api.wait_campaign(&tract_campaign, Duration::from_secs(180)).unwrap();
    let l = &view["lines"][0];
    assert_eq!(l["state"], "done", "{l}");
    assert!(l["runtime"].as_str().unwrap().starts_with("tract 0.23.9, 1 thread"), "{l}");

    // The CLI lists what each device runs and why not.
    let out = coord.cli().args(["devices", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ort 1.31.1"), "{text}");
    assert!(text.contains("no ort: cannot load ONNX Runtime"), "{text}");
}

/// The pipeline treats the runtime as a dimension: post-training candidates (the parent and
/// its int8 forms, for ONNX Runtime) are judged in ONNX Runtime and measured by the agents that
/// run it, beside the parent in tract; each class's winner comes from its own measurements.
/// A class whose agents have no ONNX Runtime keeps to tract and says why.
#[test]
fn a_pipeline_measures_onnx_runtime_candidates_on_the_classes_that_run_it() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let agents = dir.path().join("agents");
    let (with_ort, without) = (unique("pl-ort"), unique("pl-tract"));
    let lib = ort_lib();
    let _a = AgentProc::start_with(
        &coord,
        &agents,
        &with_ort,
        &["--profile", "rpi5", "--ort-lib", &lib],
        5,
    )
    .unwrap();
    let _b = AgentProc::start(&coord, &agents, &without, "rpi4", 5).unwrap();
    for id in [&with_ort, &without] {
        api.wait_device(id, true, Duration::from_secs(60)).unwrap();
    }
    let model = api
        .register_with_inputs(
            &asset("minilm-l3-onnx"),
            "minilm-l3",
            "input_ids=1x32,attention_mask=1x32",
        )
        .unwrap();
    let (code, body) = api
        .post(
            "/api/v1/pipelines",
            &json!({
                "model": model, "data": "vader", "devices": ["rpi5", "rpi4"],
                "methods": ["ptq"], "min_fidelity": 0.2, "exhaustive": true,
                "ptq": {"settings": [
                    {"passes": [], "runtime": "ort"},
                    {"passes": ["int8-dynamic"], "runtime": "ort"},
                    {"passes": ["fold", "int8-dynamic-7bit"], "runtime": "ort"},
                    {"prune": {"criterion": "magnitude", "allocation": "uniform",
                               "sparsity": 0.25, "round_to": 1},
                     "passes": ["int8-dynamic"], "runtime": "ort"}]},
                "validation_limit": 48, "max_parallel": 1,
                "bench": {"warmup": 2, "max_iterations": 15, "max_time_ms": 1500, "symbols": []},
                "job_timeout_ms": 120000,
            }),
        )
        .unwrap();
    assert!(code == 200 || code == 201, "{code} {body}");
    let id = body["id"].as_str().or(body["pipeline"].as_str()).unwrap().to_string();
    let start = std::time::Instant::now();
    let r = loop {
        let v = api.get(&format!("/api/v1/pipelines/{id}")).unwrap();
        let state = v["state"].as_str().unwrap_or("").to_string();
        if ["done", "failed", "cancelled"].contains(&state.as_str()) {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "stuck: {v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let r = if r.get("result").is_some() { r["result"].clone() } else { r };
    assert_eq!(r["state"], "done", "{r}\n{}", coord.log());
    let class = |name: &str| {
        r["classes"].as_array().unwrap().iter().find(|c| c["class"] == name).unwrap().clone()
    };
    let ort_class = class("rpi5");
    let cands = ort_class["candidates"].as_array().unwrap();
    assert_eq!(
        cands.len(),
        4,
        "the parent in ONNX Runtime, int8 8-bit, 7-bit, pruned int8: {ort_class}"
    );
    for c in cands {
        assert_eq!(c["runtime"], "ort", "{c}");
        assert_eq!(c["status"], "measured", "{c}");
        assert!(c["p50_ms"].as_f64().unwrap() > 0.0);
    }
    let int8 = cands.iter().filter(|c| c["precision"] == "int8").count();
    assert_eq!(int8, 3, "{ort_class}");
    // "Pruned, int8, ONNX Runtime": fewer parameters, pruned to the class's SIMD width.
    let composed = cands.iter().find(|c| !c["settings"]["prune"].is_null()).unwrap();
    assert_eq!(composed["settings"]["prune"]["round_to"], 4, "rpi5 is NEON: {composed}");
    assert!(
        composed["params"].as_u64().unwrap() < cands[0]["params"].as_u64().unwrap(),
        "{composed}"
    );
    assert!(ort_class["how"].as_str().unwrap().contains("onnxruntime 1.31.1"), "{ort_class}");
    // The winner is whichever of the parent (tract) and the candidates measured fastest.
    let mut best = ("parent".to_string(), ort_class["parent"]["p50_ms"].as_f64().unwrap());
    for c in cands {
        let ms = c["p50_ms"].as_f64().unwrap();
        if c["fidelity"].as_f64().unwrap() >= 0.2 && ms < best.1 {
            best = (c["id"].as_str().unwrap().to_string(), ms);
        }
    }
    let winner = &ort_class["winner"];
    assert_eq!(winner["p50_ms"].as_f64().unwrap(), best.1, "{ort_class}");
    if best.0 != "parent" {
        assert_eq!(winner["runtime"], "ort", "{winner}");
    }
    // The ONNX Runtime measurements have their own campaign, in ONNX Runtime.
    let campaign = api.get(&format!("/api/v1/campaigns/{id}-m1-ort")).unwrap();
    assert_eq!(campaign["spec"]["bench"]["runtime"], "ort", "{campaign}");
    // An int8 figure under an emulated profile says it is not the board's; an f32 one does not.
    let lines = campaign["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 4, "{campaign}");
    let labelled = lines
        .iter()
        .filter(|l| {
            l["caveats"].as_array().unwrap().iter().any(|c| {
                let c = c.as_str().unwrap();
                c.contains("rpi5 has int8 dot-product") && c.contains("not representative")
            })
        })
        .count();
    assert_eq!(labelled, 3, "the three int8 candidates: {campaign}");
    // The class without ONNX Runtime: its candidates are skipped with the reason, the parent
    // (tract) wins.
    let tract_class = class("rpi4");
    for c in tract_class["candidates"].as_array().unwrap() {
        assert_eq!(c["status"], "skipped", "{c}");
        assert!(c["note"].as_str().unwrap().contains("no online device of rpi4 runs ort"), "{c}");
    }
    assert_eq!(tract_class["winner"]["model"], tract_class["parent"]["model"]);
}

/// A model only ONNX Runtime can run (`com.microsoft::Inverse`, a contrib op tract lacks): registration
/// gates it with an ONNX Runtime session load (in a child process), records it as ONNX Runtime
/// only with tract's reason, and campaigns in tract, pipelines and deployments refuse it with
/// that reason; a campaign in ONNX Runtime measures it. A model neither runtime loads is refused
/// with both reasons.
#[test]
fn a_model_only_onnx_runtime_runs_is_gated_by_it_and_never_sent_to_tract() {
    use hone_graph::pb;
    let model = |op: &str, domain: &str| -> Vec<u8> {
        let info = |n: &str| {
            hone_graph::ValueInfo::tensor(
                n,
                hone_graph::DataType::F32,
                vec![hone_graph::Dim::Value(8), hone_graph::Dim::Value(8)],
            )
            .to_proto()
        };
        let p = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![
                pb::OperatorSetIdProto { domain: String::new(), version: 17 },
                pb::OperatorSetIdProto { domain: domain.into(), version: 1 },
            ],
            graph: Some(pb::GraphProto {
                name: "g".into(),
                node: vec![pb::NodeProto {
                    name: "n".into(),
                    op_type: op.into(),
                    domain: domain.into(),
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                input: vec![info("x")],
                output: vec![info("y")],
                ..Default::default()
            }),
            ..Default::default()
        };
        prost::Message::encode_to_vec(&p)
    };
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let id = unique("ortonly");
    let lib = ort_lib();
    let _a = AgentProc::start_with(
        &coord,
        &dir.path().join("agents"),
        &id,
        &["--profile", "rpi5", "--ort-lib", &lib],
        5,
    )
    .unwrap();
    api.wait_device(&id, true, Duration::from_secs(60)).unwrap();
    let path = dir.path().join("inverse.onnx");
    std::fs::write(&path, model("Inverse", "com.microsoft")).unwrap();
    let m = api.register(&path, "inverse-contrib").unwrap();
    let row = api.get(&format!("/api/v1/models/{m}")).unwrap();
    assert_eq!(row["summary"]["runtimes"], json!(["ort"]), "{row}");
    assert_eq!(row["summary"]["gate"], "onnxruntime");
    assert!(row["summary"]["tract_refusal"].as_str().unwrap().contains("Inverse"), "{row}");
    // Never sent to tract: a tract campaign, a pipeline and a deployment are refused with why.
    let bench = |rt: &str| json!({"warmup": 1, "max_iterations": 3, "max_time_ms": 1000, "symbols": [], "runtime": rt});
    let (code, body) = api
        .post("/api/v1/campaigns", &json!({"models": [m], "devices": id, "bench": bench("tract")}))
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("runs only in ort"), "{body}");
    let (code, body) = api
        .post(
            "/api/v1/pipelines",
            &json!({"model": m, "data": "mnist", "devices": ["rpi5"], "min_fidelity": 0.5}),
        )
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("measures its parent in tract"), "{body}");
    let (code, body) =
        api.post("/api/v1/deployments", &json!({"model": m, "devices": id})).unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("serve in tract only"), "{body}");
    // In ONNX Runtime it is measured.
    let c =
        api.start_campaign(json!({"models": [m], "devices": id, "bench": bench("ort")})).unwrap();
    let view = api.wait_campaign(&c, Duration::from_secs(120)).unwrap();
    assert_eq!(view["lines"][0]["state"], "done", "{view}");
    // Neither runtime loads it: refused with both reasons, nothing stored.
    let bad = dir.path().join("bogus.onnx");
    std::fs::write(&bad, model("NoSuchOp", "com.example")).unwrap();
    let text = api.register(&bad, "bogus").unwrap_err().to_string();
    assert!(text.contains("ONNX Runtime cannot load it either"), "{text}");
    let models = api.get("/api/v1/models").unwrap();
    assert!(!models.to_string().contains("bogus"), "nothing stored: {models}");
}
