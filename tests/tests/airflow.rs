//! The Airflow DAG shipped with Hone (`scripts/airflow/hone_compress.py`, docs/airflow.md), run by
//! the real Airflow (`airflow dags test`, in the pinned environment `scripts/python-tools.sh
//! airflow` installs) against a live coordinator with local agents: it compresses PaddleOCR's
//! direction classifier for two classes, waits, passes the gate and deploys each class's winner;
//! a retried `submit` gets the same pipeline. Every way a run fails says why, in Hone's words: a
//! conf without a model, a request Hone refuses, a pipeline that finds no candidate, one cancelled
//! in Hone, one longer than the DAG waits, a rollout Hone rolls back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hone_e2e::*;
use serde_json::{Value, json};

/// A coordinator with one agent per class (one-second telemetry windows, so a deployment's
/// gate sees traffic quickly), PaddleOCR's classifier registered, and strips of photographs in
/// its import folder as `strips`.
struct Setup {
    _dir: tempfile::TempDir,
    coord: CoordinatorProc,
    agents: Vec<AgentProc>,
    model: String,
}

fn setup(classes: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let coord =
        CoordinatorProc::start(&dir.path().join("coord"), Broker::Embedded(free_port()), None)
            .unwrap();
    let api = coord.api();
    let agents: Vec<AgentProc> = classes
        .iter()
        .map(|class| {
            let args = ["--profile", class, "--telemetry-window-s", "1"];
            let id = unique(&format!("e2e-af-{class}"));
            AgentProc::start_with(&coord, &dir.path().join("agents"), &id, &args, 3).unwrap()
        })
        .collect();
    for a in &agents {
        api.wait_device(&a.device_id, true, Duration::from_secs(30)).unwrap();
    }
    let model =
        api.register_with_inputs(&asset("corpus-ppocr-cls"), "ppocr-cls", "x=1x3x48x192").unwrap();
    super::pipeline::photo_strips(&coord.import_dir.join("strips"), 96, 48, 192);
    Setup { _dir: dir, coord, agents, model }
}

/// The DAG run's conf: the quick pipeline of `pipeline.rs` (4 candidates a class, 2 measured,
/// short benchmarks) and a deployment gated on the agents' own probe traffic.
fn conf(s: &Setup, classes: &[&str]) -> Value {
    json!({
        "model": s.model,
        "data": "strips",
        "devices": classes,
        "min_fidelity": 0.5,
        "prune_grid": {"criteria": ["magnitude"], "allocations": ["uniform", "global"],
                       "sparsities": [0.25, 0.5]},
        "request": {
            "max_measurements": 2,
            "max_parallel": 1,
            "bench": {"warmup": 2, "max_iterations": 20, "max_time_ms": 1000, "symbols": []},
            "job_timeout_ms": 60000,
        },
        "deploy": {
            "canary": "100%", "gate": "error_rate<=0.05", "window_s": 2, "min_requests": 5,
            "probe_rps": 20, "activation_timeout_s": 60,
        },
        "poll_s": 1,
        "pipeline_timeout_s": 600,
        "deploy_timeout_s": 180,
    })
}

/// A connection in Airflow's JSON form: host, port, schema, and the operator token as its
/// password.
fn json_connection(coord: &CoordinatorProc) -> String {
    json!({
        "conn_type": "http", "host": "127.0.0.1", "port": coord.http_port, "schema": "http",
        "password": coord.token.clone().unwrap(),
    })
    .to_string()
}

/// A connection in Airflow's URI form, the token in the extra `token`.
fn uri_connection(coord: &CoordinatorProc) -> String {
    format!("http://127.0.0.1:{}?token={}", coord.http_port, coord.token.clone().unwrap())
}

/// Airflow from the pinned environment, with a fresh SQLite metadata database in a temporary
/// `AIRFLOW_HOME`, the DAG folder `scripts/airflow` and one connection to the coordinator
/// (`AIRFLOW_CONN_{ID}`).
struct Airflow {
    home: tempfile::TempDir,
    bin: PathBuf,
    conn_id: String,
    conn: String,
}

/// What an Airflow command did.
struct Run {
    ok: bool,
    /// stdout and stderr.
    text: String,
    seconds: f64,
}

impl Airflow {
    fn new(conn_id: &str, conn: String) -> Airflow {
        let bin = python_tool("airflow");
        let home = tempfile::tempdir().unwrap();
        let a = Airflow { home, bin, conn_id: conn_id.to_string(), conn };
        let r = a.run(&["db", "migrate"]);
        assert!(r.ok, "airflow db migrate failed:\n{}", r.text);
        eprintln!("figure: airflow db migrate {:.1} s", r.seconds);
        a
    }

    fn command(&self) -> Command {
        let dags = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/airflow");
        let mut cmd = Command::new(self.bin.join("airflow"));
        cmd.env("AIRFLOW_HOME", self.home.path())
            .env("AIRFLOW__CORE__DAGS_FOLDER", dags.canonicalize().unwrap())
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env(format!("AIRFLOW_CONN_{}", self.conn_id.to_uppercase()), &self.conn)
            // No `__pycache__` in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        let start = Instant::now();
        let out = self.command().args(args).output().unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // `HONE_E2E_LOGS=1`: every Airflow command's output, also when the test passes.
        if std::env::var_os("HONE_E2E_LOGS").is_some() {
            eprintln!("--- airflow {}\n{text}", args.join(" "));
        }
        Run { ok: out.status.success(), text, seconds: start.elapsed().as_secs_f64() }
    }

    /// `airflow dags test hone_compress -c CONF`.
    fn dag_test(&self, conf: &Value) -> Run {
        let r = self.run(&["dags", "test", "hone_compress", "-c", &conf.to_string()]);
        eprintln!("figure: airflow dags test {:.1} s (ok: {})", r.seconds, r.ok);
        r
    }

    /// The id of the DAG's latest run.
    fn last_run_id(&self) -> String {
        let r = self.run(&["dags", "list-runs", "hone_compress", "-o", "json"]);
        assert!(r.ok, "{}", r.text);
        let line =
            r.text.lines().find(|l| l.starts_with('[')).unwrap_or_else(|| panic!("{}", r.text));
        let runs: Value = serde_json::from_str(line).unwrap();
        runs[0]["run_id"].as_str().unwrap().to_string()
    }
}

fn pipelines(api: &Api) -> Vec<Value> {
    api.get("/api/v1/pipelines").unwrap().as_array().unwrap().clone()
}

#[test]
fn the_airflow_dag_compresses_deploys_each_winner_and_a_retried_submit_reuses_its_pipeline() {
    let classes = ["x86-vm-2core", "rpi4"];
    let s = setup(&classes);
    let api = s.coord.api();
    let airflow = Airflow::new("hone_coordinator", json_connection(&s.coord));
    let started = Instant::now();
    // A budget every model meets: it becomes the deployments' monitoring budget.
    let mut first = conf(&s, &classes);
    first["latency_budget_ms"] = json!(10000.0);
    let r = airflow.dag_test(&first);
    assert!(r.ok, "the DAG run failed:\n{}\n{}", r.text, s.coord.log());

    // One pipeline, with the DAG's id, done with a winner per class.
    let all = pipelines(&api);
    assert_eq!(all.len(), 1, "{all:?}");
    let pid = all[0]["id"].as_str().unwrap().to_string();
    assert!(pid.starts_with("af-"), "an id derived from the DAG run: {pid}");
    assert!(r.text.contains(&format!("created pipeline {pid}")), "{}", r.text);
    let p = api.get(&format!("/api/v1/pipelines/{pid}")).unwrap();
    assert_eq!(p["state"], "done", "{p}");
    assert_eq!(p["request"]["devices"], json!(classes), "{p}");
    assert_eq!(p["request"]["prune_grid"]["sparsities"], json!([0.25, 0.5]), "{p}");
    assert_eq!(p["request"]["max_measurements"], 2, "the `request` param is passed on: {p}");

    // Each class's winner deployed to its agent under the id `{pipeline}-{class}`, done.
    for (class, agent) in classes.iter().zip(&s.agents) {
        let c = p["result"]["classes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["class"] == *class)
            .unwrap_or_else(|| panic!("{p}"));
        let winner = c["winner"]["model"].as_str().unwrap_or_else(|| panic!("{c}"));
        let d = api.get(&format!("/api/v1/deployments/{pid}-{class}")).unwrap();
        assert_eq!(d["state"], "done", "{d}");
        assert_eq!(d["model_id"], winner, "the winner is what was deployed: {d}");
        assert_eq!(d["request"]["pipeline"], pid.as_str(), "{d}");
        assert_eq!(d["request"]["devices"], format!("profile:{class}"), "{d}");
        assert_eq!(d["request"]["latency_budget_ms"], 10000.0, "the pipeline's budget: {d}");
        assert_eq!(d["devices"][0]["device_id"], agent.device_id.as_str(), "{d}");
        let models = api.get("/api/v1/device-models").unwrap();
        let row = models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["device_id"] == agent.device_id.as_str())
            .unwrap_or_else(|| panic!("{models}"));
        assert_eq!(row["active_model_id"], winner, "{models}");
    }
    let deployments = api.get("/api/v1/deployments").unwrap().as_array().unwrap().len();
    assert_eq!(deployments, classes.len());

    // The submit task retried in the same DAG run re-issues the same id: Hone answers with the
    // pipeline it has, and nothing new is created.
    let run_id = airflow.last_run_id();
    let retry = airflow.run(&["tasks", "test", "hone_compress", "submit", &run_id]);
    assert!(retry.ok, "{}", retry.text);
    assert!(
        retry.text.contains(&format!("pipeline {pid} exists already (done, done)")),
        "{}",
        retry.text
    );
    assert_eq!(pipelines(&api).len(), 1);

    // A run naming the pipeline reuses it too; `deploy: null` skips the deployment, and the
    // run still succeeds.
    let mut again = first.clone();
    again["pipeline_id"] = json!(pid);
    again["deploy"] = Value::Null;
    let r = airflow.dag_test(&again);
    assert!(r.ok, "{}", r.text);
    assert!(r.text.contains(&format!("pipeline {pid} exists already")), "{}", r.text);
    assert!(r.text.contains("deploy is off"), "{}", r.text);
    assert_eq!(pipelines(&api).len(), 1);
    assert_eq!(api.get("/api/v1/deployments").unwrap().as_array().unwrap().len(), deployments);
    eprintln!("figure: airflow test after set-up {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn the_airflow_dag_fails_with_hone_s_reason_when_any_step_fails() {
    let s = setup(&["x86-vm-2core"]);
    let api = s.coord.api();
    // The connection in URI form, the token in its extra, under another id (the `conn_id`
    // param).
    let airflow = Airflow::new("hone_uri", uri_connection(&s.coord));
    let conf = |s: &Setup, classes: &[&str]| {
        let mut c = conf(s, classes);
        c["conn_id"] = json!("hone_uri");
        c
    };

    // A conf without the request: the run fails in `submit`, naming what is missing.
    let r = airflow.dag_test(&json!({"devices": ["x86-vm-2core"]}));
    assert!(!r.ok, "{}", r.text);
    assert!(r.text.contains("the DAG run's conf needs `model`, `data`"), "{}", r.text);

    // Hone refuses the request (400): the run fails at once with Hone's error, no retry.
    let r = airflow.dag_test(&conf(&s, &["toaster"]));
    assert!(!r.ok, "{}", r.text);
    assert!(
        r.text.contains("HTTP 400 from Hone: unknown device class `toaster`"),
        "Hone's error in the output:\n{}",
        r.text
    );
    assert!(r.seconds < 30.0, "a 4xx is not retried (30 s apart): {:.1} s", r.seconds);
    assert!(pipelines(&api).is_empty());

    // A latency budget no model meets: the pipeline ends with no winner, and the run fails in
    // `check_gate` with the class's reason; nothing is deployed.
    let mut impossible = conf(&s, &["x86-vm-2core"]);
    impossible["latency_budget_ms"] = json!(0.0001);
    let r = airflow.dag_test(&impossible);
    assert!(!r.ok, "the run must fail:\n{}", r.text);
    let all = pipelines(&api);
    assert_eq!(all.len(), 1, "{all:?}");
    let pid = all[0]["id"].as_str().unwrap();
    let p = api.get(&format!("/api/v1/pipelines/{pid}")).unwrap();
    assert_eq!(p["state"], "done", "{p}");
    let class = &p["result"]["classes"][0];
    assert!(class["winner"].is_null(), "{class}");
    let reason = class["reason"].as_str().unwrap();
    assert!(reason.starts_with("no candidate meets"), "{class}");
    assert!(
        r.text.contains(&format!(
            "pipeline {pid} chose no model for any class: x86-vm-2core: {reason}"
        )),
        "Hone's reason in the output:\n{}",
        r.text
    );
    assert!(r.text.contains("DagRun failed"), "{}", r.text);
    assert_eq!(api.get("/api/v1/deployments").unwrap(), json!([]));

    // A winner whose canary gets no traffic (no probe): its gate fails, Hone rolls the
    // deployment back, and the run fails in `deploy` with Hone's reason.
    let mut quiet = conf(&s, &["x86-vm-2core"]);
    quiet["deploy"] = json!({
        "canary": "100%", "gate": "error_rate<=0.05", "window_s": 1, "max_window_s": 2,
        "min_requests": 5, "probe_rps": 0, "activation_timeout_s": 60,
    });
    let r = airflow.dag_test(&quiet);
    assert!(!r.ok, "the run must fail:\n{}", r.text);
    let deployments = api.get("/api/v1/deployments").unwrap();
    let d = &deployments[0];
    assert_eq!(d["state"], "rolled_back", "{deployments}");
    let did = d["id"].as_str().unwrap();
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("canary gate failed"), "{d}");
    assert!(
        r.text.contains(&format!("deployment {did} of class x86-vm-2core rolled_back: {reason}")),
        "Hone's reason in the output:\n{}",
        r.text
    );

    // A pipeline cancelled in Hone while the DAG waits: `wait` fails with Hone's error.
    let before: Vec<Value> = pipelines(&api);
    let child = airflow
        .command()
        .args(["dags", "test", "hone_compress", "-c", &conf(&s, &["x86-vm-2core"]).to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let id = loop {
        let now = pipelines(&api);
        if let Some(p) = now.iter().find(|p| !before.iter().any(|b| b["id"] == p["id"])) {
            break p["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the DAG created no pipeline");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (status, v) = api.post(&format!("/api/v1/pipelines/{id}/cancel"), &json!({})).unwrap();
    assert_eq!(status, 200, "cancelled while it runs: {v}");
    let out = child.wait_with_output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    let stage = v["stage"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "Hone pipeline {id} cancelled at stage {stage}: cancelled by a user"
        )),
        "Hone's error in the output:\n{text}"
    );

    // A pipeline longer than `pipeline_timeout_s`: `wait` fails, and the pipeline goes on in
    // Hone to its end.
    let mut hurried = conf(&s, &["x86-vm-2core"]);
    hurried["pipeline_timeout_s"] = json!(1);
    let r = airflow.dag_test(&hurried);
    assert!(!r.ok, "the run must fail:\n{}", r.text);
    let said = r
        .text
        .lines()
        .find(|l| l.contains("after 1 s; it goes on in Hone"))
        .unwrap_or_else(|| panic!("{}", r.text));
    let id = said.split("pipeline ").nth(1).unwrap().split(' ').next().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let p = api.get(&format!("/api/v1/pipelines/{id}")).unwrap();
        if p["state"] == "done" {
            break;
        }
        let going = p["state"] == "running" || p["state"] == "queued";
        assert!(Instant::now() < deadline && going, "{p}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
