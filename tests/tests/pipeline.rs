//! The compression pipeline end to end: a real model (PaddleOCR's direction classifier,
//! `corpus-ppocr-cls`) pruned for two device classes, candidates validated against the parent on
//! strips of real photographs, measured on local agents over MQTT, and a winner per class; and
//! its failure paths (bad requests, no candidate meeting the budget, a killed agent, a killed
//! coordinator, cancellation).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hone_e2e::*;
use serde_json::{Value, json};

/// `dir/x.npy`: 96 strips `[3, 48, 192]` cut from the real photographs' crops (the photos
/// asset), scaled to about -1..1: tensors keyed by the model's input name.
pub(crate) fn photo_strips(dir: &Path, n: usize, h: usize, w: usize) -> PathBuf {
    let photos = hone_learn::eval::photos().expect("the photos asset (scripts/fetch-assets.sh)");
    let side = hone_learn::eval::photos::PHOTO_SIDE;
    let mut data: Vec<f32> = Vec::with_capacity(n * 3 * h * w);
    for i in 0..n {
        let mut crop = Vec::new();
        photos.push_crop(i % photos.len(), &mut crop);
        let (top, left) = ((side - h.min(side)) / 2, (side - w.min(side)) / 2);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let (yy, xx) = ((top + y).min(side - 1), (left + x).min(side - 1));
                    data.push(crop[(yy * side + xx) * 3 + c] / 128.0);
                }
            }
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("x.npy");
    std::fs::write(&path, npy_f32(&[n, 3, h, w], &data)).unwrap();
    dir.to_path_buf()
}

/// A version-1.0 `.npy` file of little-endian f32.
fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy("<f4", shape, &bytes)
}

/// A version-1.0 `.npy` file of `descr` elements (raw little-endian bytes).
fn npy(descr: &str, shape: &[usize], bytes: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(bytes);
    out
}

struct Setup {
    _dir: tempfile::TempDir,
    coord: CoordinatorProc,
    agents: Vec<AgentProc>,
    model: String,
    data: PathBuf,
}

fn setup(broker: Broker, database_url: Option<String>, agents: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordinatorProc::start(&dir.path().join("coord"), broker, database_url).unwrap();
    let api = coord.api();
    let agents: Vec<AgentProc> = agents
        .iter()
        .map(|(id, profile)| {
            AgentProc::start(&coord, &dir.path().join("agents"), &unique(id), profile, 3).unwrap()
        })
        .collect();
    for a in &agents {
        api.wait_device(&a.device_id, true, Duration::from_secs(20)).unwrap();
    }
    let model =
        api.register_with_inputs(&asset("corpus-ppocr-cls"), "ppocr-cls", "x=1x3x48x192").unwrap();
    let data = photo_strips(&coord.import_dir.join("strips"), 96, 48, 192);
    Setup { _dir: dir, coord, agents, model, data }
}

fn request(s: &Setup, classes: &[&str]) -> Value {
    json!({
        "model": s.model,
        "data": s.data,
        "devices": classes,
        "min_fidelity": 0.5,
        "prune_grid": {"criteria": ["magnitude"], "allocations": ["uniform", "global"],
                       "sparsities": [0.25, 0.5]},
        "max_measurements": 2,
        "max_parallel": 1,
        "bench": {"warmup": 2, "max_iterations": 20, "max_time_ms": 1000, "symbols": []},
        "job_timeout_ms": 60000,
    })
}

pub(crate) fn wait_pipeline(
    api: &Api,
    id: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let v = api.get(&format!("/api/v1/pipelines/{id}")).unwrap();
        if done(&v) {
            return v;
        }
        assert!(start.elapsed() < timeout, "pipeline {id} stuck: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Inline SVG elements in a report.
fn html_charts(html: &str) -> usize {
    html.matches("<svg").count()
}

/// Runs a command of the coordinator's CLI with `--json` and returns its result; fails with its
/// output and the coordinator's log when it fails.
fn run_json(coord: &CoordinatorProc, cmd: &mut std::process::Command) -> Value {
    let out = cmd.arg("--json").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr),
        coord.log()
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

pub(crate) fn ended(v: &Value) -> bool {
    matches!(v["state"].as_str(), Some("done" | "failed" | "cancelled"))
}

fn pipeline_scenario(broker: Broker, database_url: Option<String>) {
    let s = setup(broker, database_url, &[("e2e-pl-rpi4", "rpi4"), ("e2e-pl-x86", "x86-vm-2core")]);
    // Through the command line, as a user would.
    let r = run_json(
        &s.coord,
        s.coord
            .cli()
            .args(["compress", "--model", &s.model, "--data"])
            .arg(&s.data)
            .args(["--devices", "profile:rpi4,profile:x86-vm-2core", "--min-fidelity", "0.5"])
            .args(["--sparsities", "0.25,0.5", "--max-measurements", "2", "--max-parallel", "1"]),
    );
    assert_eq!(r["state"], "done", "{r}");
    assert_eq!(r["quality_metric"], "fidelity");
    let classes = r["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 2);
    let mut total = 0;
    for c in classes {
        let class = c["class"].as_str().unwrap();
        let parent = &c["parent"];
        assert!(parent["p50_ms"].as_f64().unwrap() > 0.0, "{c}");
        assert_eq!(parent["fidelity"], 1.0, "the parent agrees with itself");
        let winner = &c["winner"];
        assert!(winner["p50_ms"].as_f64().unwrap() > 0.0, "{c}");
        assert!(winner["fidelity"].as_f64().unwrap() >= 0.5, "{c}");
        let cands = c["candidates"].as_array().unwrap();
        assert_eq!(cands.len(), 8, "2 criteria x 2 allocations x 2 sparsities: {c}");
        let round_to = if class == "rpi4" { 4 } else { 8 };
        for cand in cands {
            assert_eq!(cand["settings"]["round_to"], round_to, "{cand}");
            let status = cand["status"].as_str().unwrap();
            assert!(
                ["measured", "skipped", "rejected", "failed", "unmeasured"].contains(&status),
                "{cand}"
            );
            if status == "measured" {
                assert!(cand["p50_ms"].as_f64().unwrap() > 0.0);
                assert!(cand["predicted_ms"].as_f64().is_some(), "predicted before measured");
            }
        }
        let measured = cands.iter().filter(|c| c["status"] == "measured").count();
        assert!((1..=2).contains(&measured), "the budget is 2 per class: {measured}");
        assert_eq!(c["device_measurements"], measured + 1, "candidates + the parent");
        assert!(c["reason"].as_str().unwrap().contains("fidelity"), "{c}");
        assert!(c["predictor"]["start"].as_str().unwrap().starts_with("cold"), "{c}");
        total += measured + 1;
    }
    assert_eq!(r["device_measurements"], total);
    // Lineage: every candidate is a registered model with its parent, method and settings.
    let models = s.coord.api().get("/api/v1/models").unwrap();
    let children: Vec<&Value> = models
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["lineage"]["parent"] == s.model.as_str())
        .collect();
    assert!(children.len() >= 8, "{models}");
    for m in &children {
        assert_eq!(m["lineage"]["method"], "prune");
        assert!(m["lineage"]["settings"]["sparsity"].as_f64().is_some());
        assert!(m["lineage"]["validation"]["fidelity"].as_f64().is_some(), "{m}");
    }
    // Compression and measurement never overlapped: every candidate was registered after the
    // parent's measurements ended and before the first candidate measurement was created.
    let id = r["pipeline"].as_str().unwrap();
    let campaign = |suffix: &str| {
        s.coord
            .api()
            .get(&format!("/api/v1/campaigns/{id}-{suffix}"))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let parent_end = campaign("parent")["finished_at_ms"].as_i64().unwrap();
    let first_measure = campaign("m1")["created_at_ms"].as_i64().unwrap();
    for m in &children {
        let t = m["created_at_ms"].as_i64().unwrap();
        assert!(parent_end <= t && t <= first_measure, "{parent_end} <= {t} <= {first_measure}");
    }
    // The report was written, and `pipeline show` gives the same result.
    let report = r["report"].as_str().unwrap();
    let html = std::fs::read_to_string(report).unwrap();
    assert!(html.contains("<svg"));
    let out = s.coord.cli().args(["pipeline", "show", id, "--json"]).output().unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["classes"], r["classes"]);
    // The table, and the report written from the API by the command line.
    let out = s.coord.cli().args(["pipeline", "show", id]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("class rpi4") && table.contains("winner "), "{table}");
    // A candidate row is marked WINNER exactly when a candidate (not the parent) won its class.
    let candidate_won = classes.iter().any(|c| c["winner"]["model"] != c["parent"]["model"]);
    assert_eq!(table.contains(" WINNER"), candidate_won, "{table}\n{r}");
    // Every candidate that failed says why, in the JSON and in the table.
    for c in classes {
        for cand in c["candidates"].as_array().unwrap() {
            if cand["status"] == "failed" {
                let note = cand["note"].as_str().unwrap_or_else(|| panic!("{cand}"));
                assert!(table.contains(note), "{note}\n{table}");
            }
        }
    }
    let html = s.coord.data_dir.join("cli-report.html");
    let out =
        s.coord.cli().args(["report", "--pipeline", id, "--out"]).arg(&html).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&html).unwrap();
    assert_eq!(
        text.matches("<svg").count(),
        html_charts(&std::fs::read_to_string(report).unwrap())
    );
    let out = s.coord.cli().args(["models", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains(&format!("prune of {}", s.model)), "lineage in the listing: {list}");
    if let Broker::External(url) = &s.coord.broker {
        let ids: Vec<&str> = s.agents.iter().map(|a| a.device_id.as_str()).collect();
        clear_retained(url, &ids);
    }
}

#[test]
fn a_pipeline_chooses_a_winner_per_class_on_embedded_broker_and_sqlite() {
    pipeline_scenario(Broker::Embedded(free_port()), None);
}

#[test]
fn a_pipeline_chooses_a_winner_per_class_on_mosquitto_and_postgres() {
    let db = fresh_postgres_db().expect("PostgreSQL must be reachable (HONE_TEST_POSTGRES_URL)");
    pipeline_scenario(Broker::External(external_mqtt_url()), Some(db));
}

#[test]
fn bad_pipeline_requests_are_refused_before_any_work_naming_what_is_wrong() {
    let s = setup(Broker::Embedded(free_port()), None, &[("e2e-plbad-rpi4", "rpi4")]);
    let api = s.coord.api();
    let refused = |body: Value, want: &str| {
        let (status, v) = api.post("/api/v1/pipelines", &body).unwrap();
        assert_eq!(status, 400, "{v}");
        let err = v["error"].as_str().unwrap();
        assert!(err.contains(want), "{err} (wanted {want})");
    };
    refused(request(&s, &["toaster"]), "unknown device class `toaster`");
    refused(request(&s, &["rpi4", "intel-n100"]), "no online agent of device class `intel-n100`");
    let mut body = request(&s, &["rpi4"]);
    body["max_accuracy_drop"] = json!(1.0);
    body.as_object_mut().unwrap().remove("min_fidelity");
    refused(body, "no labels");
    // Tensors of the wrong size for the model's input `x`.
    let wrong = photo_strips(&s.coord.import_dir.join("small"), 4, 32, 32);
    let mut body = request(&s, &["rpi4"]);
    body["data"] = json!(wrong);
    refused(body, "`x`");
    let mut body = request(&s, &["rpi4"]);
    body["data"] = json!("/etc");
    refused(body, "import folder");
    assert_eq!(api.get("/api/v1/pipelines").unwrap(), json!([]), "nothing was created");

    // A budget no candidate meets: a clear result with the closest ones.
    let mut body = request(&s, &["rpi4"]);
    body["latency_budget_ms"] = json!(0.0001);
    body["id"] = json!("no-winner");
    let (status, v) = api.post("/api/v1/pipelines", &body).unwrap();
    assert_eq!(status, 201, "{v}");
    let (again, v2) = api.post("/api/v1/pipelines", &body).unwrap();
    assert_eq!(
        (again, &v2["id"]),
        (200, &json!("no-winner")),
        "a client id makes creation idempotent"
    );
    let v = wait_pipeline(&api, "no-winner", Duration::from_secs(300), ended);
    assert_eq!(v["state"], "done", "{v}");
    let class = &v["result"]["classes"][0];
    assert!(class["winner"].is_null(), "{class}");
    assert!(class["reason"].as_str().unwrap().starts_with("no candidate meets"), "{class}");
    assert!(!class["closest"].as_array().unwrap().is_empty(), "{class}");
    let (status, v) = api.post("/api/v1/pipelines/no-winner/cancel", &json!({})).unwrap();
    assert_eq!(status, 409, "an ended pipeline cannot be cancelled: {v}");
}

#[test]
fn a_killed_agent_s_measurement_moves_to_another_device_of_its_class() {
    let s =
        setup(Broker::Embedded(free_port()), None, &[("e2e-plk-a", "rpi4"), ("e2e-plk-b", "rpi4")]);
    let api = s.coord.api();
    let mut s = s;
    let mut body = request(&s, &["rpi4"]);
    body["id"] = json!("agent-killed");
    let (status, v) = api.post("/api/v1/pipelines", &body).unwrap();
    assert_eq!(status, 201, "{v}");
    // Kill whichever agent got the parent's measurement, as soon as it has it.
    let start = Instant::now();
    let victim = loop {
        let c = api.get("/api/v1/campaigns/agent-killed-parent");
        if let Ok(c) = c
            && let Some(dev) = c["lines"][0]["device"].as_str()
        {
            break dev.to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no parent campaign");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ix = s.agents.iter().position(|a| a.device_id == victim).unwrap();
    s.agents[ix].kill9();
    let v = wait_pipeline(&api, "agent-killed", Duration::from_secs(300), ended);
    assert_eq!(v["state"], "done", "{v}\n{}", s.coord.log());
    let class = &v["result"]["classes"][0];
    assert!(class["parent"]["p50_ms"].as_f64().is_some(), "{class}");
    let survivor = &s.agents[1 - ix].device_id;
    assert_eq!(class["devices"], json!([survivor]), "{class}");
    assert!(api.metric("jobs_moved") >= 1);
}

#[test]
fn a_coordinator_killed_mid_pipeline_resumes_it_without_duplicates() {
    let mut s = setup(Broker::Embedded(free_port()), None, &[("e2e-plr-x86", "x86-vm-2core")]);
    let api = s.coord.api();
    let mut body = request(&s, &["x86-vm-2core"]);
    body["id"] = json!("restarted");
    let (status, v) = api.post("/api/v1/pipelines", &body).unwrap();
    assert_eq!(status, 201, "{v}");
    let at_kill = wait_pipeline(&api, "restarted", Duration::from_secs(120), |v| {
        v["stage"] == "candidates" || ended(v)
    });
    s.coord.kill9();
    assert!(!ended(&at_kill), "killed mid-pipeline: {at_kill}");
    std::thread::sleep(Duration::from_millis(300));
    s.coord.restart().unwrap();
    let api = s.coord.api();
    let v = wait_pipeline(&api, "restarted", Duration::from_secs(300), ended);
    assert_eq!(v["state"], "done", "{v}\n{}", s.coord.log());
    let class = &v["result"]["classes"][0];
    let ids: std::collections::HashSet<&str> =
        class["candidates"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "each candidate once: {class}");
    assert!(class["winner"]["p50_ms"].as_f64().is_some(), "{class}");
}

#[test]
fn a_cancelled_pipeline_stops_and_says_so() {
    let s = setup(Broker::Embedded(free_port()), None, &[("e2e-plc-x86", "x86-vm-2core")]);
    let api = s.coord.api();
    let mut body = request(&s, &["x86-vm-2core"]);
    body["id"] = json!("cancelled");
    api.post("/api/v1/pipelines", &body).unwrap();
    let out = s.coord.cli().args(["pipeline", "cancel", "cancelled"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = wait_pipeline(&api, "cancelled", Duration::from_secs(30), ended);
    assert_eq!(v["state"], "cancelled");
    assert_eq!(v["error"], "cancelled by a user");
    // It stays cancelled: the runner does not pick it up again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(api.get("/api/v1/pipelines/cancelled").unwrap()["state"], "cancelled");
}

#[test]
fn an_accuracy_budget_on_labelled_data_rejects_candidates_before_any_device_time() {
    let s = setup(Broker::Embedded(free_port()), None, &[("e2e-pla-x86", "x86-vm-2core")]);
    let api = s.coord.api();
    // Labels: which photograph each strip was cut from (crops are ordered photo by photo).
    let n = 96;
    let labels: Vec<u8> = (0..n).flat_map(|i| i64::from(i >= n / 2).to_le_bytes()).collect();
    std::fs::write(s.data.join("labels.npy"), npy("<i8", &[n], &labels)).unwrap();
    let mut body = request(&s, &["x86-vm-2core"]);
    body.as_object_mut().unwrap().remove("min_fidelity");
    body["max_accuracy_drop"] = json!(2.0);
    body["prune_grid"]["sparsities"] = json!([0.25, 0.75]);
    body["id"] = json!("labelled");
    let (status, v) = api.post("/api/v1/pipelines", &body).unwrap();
    assert_eq!(status, 201, "{v}");
    let v = wait_pipeline(&api, "labelled", Duration::from_secs(300), ended);
    assert_eq!(v["state"], "done", "{v}\n{}", s.coord.log());
    let r = &v["result"];
    assert_eq!(r["quality_metric"], "accuracy");
    let class = &r["classes"][0];
    let parent = class["parent"]["accuracy"].as_f64().expect("the parent's accuracy");
    let floor = parent - 0.02;
    for c in class["candidates"].as_array().unwrap() {
        let acc = c["accuracy"].as_f64().unwrap_or_else(|| panic!("no accuracy: {c}"));
        let rejected = c["status"] == "rejected";
        assert_eq!(rejected, acc < floor, "floor {floor}: {c}");
        if rejected {
            assert!(c["p50_ms"].is_null() && c["predicted_ms"].is_null(), "no device time: {c}");
            assert!(c["note"].as_str().unwrap().contains("no device time spent"), "{c}");
        }
    }
    let statuses: Vec<&str> = class["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert!(statuses.contains(&"rejected"), "sparsity 0.75 loses accuracy: {statuses:?}");
    assert!(statuses.contains(&"measured"), "sparsity 0.25 keeps it: {statuses:?}");
    if let Some(w) = class["winner"].as_object() {
        assert!(w["accuracy"].as_f64().unwrap() >= floor, "{class}");
    }
}

#[test]
fn a_class_whose_only_agent_dies_is_reported_unmeasured_and_the_rest_goes_on() {
    let mut s = setup(
        Broker::Embedded(free_port()),
        None,
        &[("e2e-plu-rpi4", "rpi4"), ("e2e-plu-x86", "x86-vm-2core")],
    );
    let api = s.coord.api();
    let mut body = request(&s, &["rpi4", "x86-vm-2core"]);
    body["id"] = json!("one-class-dies");
    body["job_timeout_ms"] = json!(5000);
    let (status, v) = api.post("/api/v1/pipelines", &body).unwrap();
    assert_eq!(status, 201, "{v}");
    s.agents[1].kill9();
    let v = wait_pipeline(&api, "one-class-dies", Duration::from_secs(300), ended);
    assert_eq!(v["state"], "done", "{v}\n{}", s.coord.log());
    let classes = v["result"]["classes"].as_array().unwrap();
    assert_eq!(classes[0]["class"], "rpi4");
    assert!(classes[0]["winner"]["p50_ms"].as_f64().is_some(), "{}", classes[0]);
    assert_eq!(classes[1]["class"], "x86-vm-2core");
    assert_eq!(classes[1]["measurement"], "unmeasured", "{}", classes[1]);
    assert!(classes[1]["winner"].is_null());
    assert!(classes[1]["reason"].as_str().unwrap().starts_with("unmeasured"), "{}", classes[1]);
}

#[test]
fn the_engine_commands_take_the_user_s_own_data_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = photo_strips(&dir.path().join("strips"), 24, 48, 192);
    let model = asset("corpus-ppocr-cls");
    let out = std::process::Command::new(bin("coordinator"))
        .args(["eval", "--json", "--model"])
        .arg(&model)
        .arg("--reference")
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fidelity"]["top1_agreement"], 1.0, "{v}");
    assert!(v["fidelity"]["examples"].as_u64().unwrap() >= 1, "{v}");
    let pruned = dir.path().join("pruned.onnx");
    let out = std::process::Command::new(bin("coordinator"))
        .args(["prune", "--json", "--criterion", "magnitude", "--sparsity", "0.3"])
        .args(["--input", "x=1x3x48x192", "--latency-seconds", "0.2", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&pruned)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["params_after"].as_u64() < v["params_before"].as_u64(), "{v}");
    assert!(v["fidelity"].as_f64().is_some(), "unlabelled tensors: fidelity to the parent: {v}");
    assert!(pruned.is_file());
}

#[test]
fn pipelines_run_one_at_a_time_and_reuse_each_other_s_candidates() {
    let s = setup(Broker::Embedded(free_port()), None, &[("e2e-pl2-x86", "x86-vm-2core")]);
    let api = s.coord.api();
    for id in ["first", "second"] {
        let mut body = request(&s, &["x86-vm-2core"]);
        body["id"] = json!(id);
        body["prune_grid"]["allocations"] = json!(["uniform"]);
        let (status, v) = api.post("/api/v1/pipelines", &body).unwrap();
        assert_eq!(status, 201, "{v}");
    }
    let first = wait_pipeline(&api, "first", Duration::from_secs(300), ended);
    let second = wait_pipeline(&api, "second", Duration::from_secs(300), ended);
    assert_eq!((&first["state"], &second["state"]), (&json!("done"), &json!("done")));
    let first_end = first["finished_at_ms"].as_i64().unwrap();
    let second_start =
        api.get("/api/v1/campaigns/second-parent").unwrap()["created_at_ms"].as_i64().unwrap();
    assert!(first_end <= second_start, "the second waited: {first_end} <= {second_start}");
    // Same parent, data, method and settings: the second pipeline reused the first's candidates.
    let models = |v: &Value| -> Vec<String> {
        v["result"]["classes"][0]["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["model"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(models(&first), models(&second));
    assert_eq!(s.coord.log().matches("reusing a candidate made earlier").count(), 2);
}

/// The loop with a generative model: SmolLM2-135M-Instruct imported from its GGUF into one ONNX
/// file (its card and tokenizer in the metadata), registered, distilled by the pipeline's
/// `distill` method into a Minitron-style pruned student on the SOTU corpus, judged against the
/// parent by next-token agreement and perplexity, measured on an agent one decode step at a
/// time (in each model's own shapes), and the winner chosen from those measurements.
#[test]
fn a_language_model_is_distilled_measured_one_decode_step_at_a_time_and_a_winner_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let agent =
        AgentProc::start(&coord, &dir.path().join("agents"), &unique("e2e-llm"), "x86-vm-2core", 3)
            .unwrap();
    api.wait_device(&agent.device_id, true, Duration::from_secs(20)).unwrap();
    let folder = dir.path().join("smollm2");
    let out = coord.cli().args(["llm", "import", "--out"]).arg(&folder).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Registered without shapes: a language model gets those of one decode step.
    let model = api.register(&folder.join("model.onnx"), "smollm2").unwrap();
    let row = api.get(&format!("/api/v1/models/{model}")).unwrap();
    assert_eq!(row["summary"]["input_shapes"]["attention_mask"], json!([1, 128]), "{row}");
    assert_eq!(row["summary"]["input_shapes"]["past_key_values.0.key"], json!([1, 3, 127, 64]));
    // Other data than a corpus, or an accuracy budget, is refused before any work.
    for (data, budget, why) in [
        ("vader", json!({"min_fidelity": 0.0}), "sotu"),
        ("sotu", json!({"max_accuracy_drop": 1.0}), "no accuracy"),
    ] {
        let mut body = json!({"model": model, "data": data, "devices": ["x86-vm-2core"],
                              "methods": ["distill"]});
        body.as_object_mut().unwrap().extend(budget.as_object().unwrap().clone());
        let refused = api.post("/api/v1/pipelines", &body).unwrap();
        assert_eq!(refused.0, 400, "{}", refused.1);
        assert!(refused.1.to_string().contains(why), "{}", refused.1);
    }
    let r = run_json(
        &coord,
        coord
            .cli()
            .args(["compress", "--model", &model, "--data", "sotu", "--devices", "x86-vm-2core"])
            .args(["--methods", "distill", "--students", "0.34:0.34", "--distill-steps", "2"])
            .args(["--min-fidelity", "0", "--validation-limit", "128", "--max-parallel", "1"]),
    );
    assert_eq!(r["state"], "done", "{r}");
    let class = &r["classes"][0];
    assert_eq!(class["parent"]["fidelity"], 1.0, "{class}");
    let cands = class["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 1, "{class}");
    let cand = &cands[0];
    assert_eq!(cand["status"], "measured", "{cand}\n{}", coord.log());
    let (parent_ms, student_ms) =
        (class["parent"]["p50_ms"].as_f64().unwrap(), cand["p50_ms"].as_f64().unwrap());
    // Any agreement is accepted here, so the faster of the two, as the agent measured them,
    // wins (10 of 30 blocks at a third of the width: the student, on any host seen so far).
    let faster = if student_ms < parent_ms { &cand["model"] } else { &class["parent"]["model"] };
    assert_eq!(&class["winner"]["model"], faster, "{class}");
    assert!(cand["perplexity"].as_f64().unwrap() > class["parent"]["perplexity"].as_f64().unwrap());
    // Lineage: a distilled language model, judged by agreement and perplexity, measured in its
    // own decode shapes (3 KV heads of 64, 10 blocks).
    let child = api.get(&format!("/api/v1/models/{}", cand["model"].as_str().unwrap())).unwrap();
    assert_eq!(child["lineage"]["method"], "distill", "{child}");
    let v = &child["lineage"]["validation"];
    assert!(v["perplexity"].as_f64().unwrap() > 1.0, "{child}");
    assert!((0.0..=1.0).contains(&v["fidelity"].as_f64().unwrap()), "{child}");
    assert_eq!(v["examples"], 128, "{child}");
    let shapes = &child["summary"]["input_shapes"];
    assert_eq!(shapes["past_key_values.9.key"], json!([1, 3, 127, 64]), "{child}");
    assert!(shapes.get("past_key_values.10.key").is_none(), "{child}");
}
