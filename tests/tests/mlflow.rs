//! MLflow, the real server (`mlflow==3.17.2`, installed by `scripts/python-tools.sh`) on
//! loopback: a pipeline written to it by the coordinator's mirror, read back by MLflow's official
//! Python client (nested candidate runs, per-class metrics, the ONNX artifacts equal by sha256,
//! registered versions with aliases and tags, loadable as `models:/NAME@ALIAS`); MLflow killed
//! mid-pipeline and `coordinator mlflow sync` after its restart, with no duplicate; a
//! deployment recording the version it rolled out; `experiments compare` across pipelines.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hone_e2e::*;

use super::pipeline::{ended, wait_pipeline};
use serde_json::{Value, json};

/// A tracking server with its own SQLite store and artifact folder, serving artifacts.
struct MlflowServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<std::process::Child>,
}

impl MlflowServer {
    fn start(dir: &Path) -> MlflowServer {
        MlflowServer::start_with(dir, &[], &[])
    }

    /// With more `mlflow server` arguments and environment variables.
    fn start_with(dir: &Path, args: &[&str], env: &[(&str, String)]) -> MlflowServer {
        let mut s = MlflowServer {
            bin: python_tool("mlflow"),
            dir: dir.to_path_buf(),
            port: free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            child: None,
        };
        s.spawn();
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mlflow.log"))
            .unwrap();
        use std::os::unix::process::CommandExt as _;
        let child = Command::new(self.bin.join("mlflow"))
            .process_group(0)
            .args(["server", "--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--workers", "1"])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", self.dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(self.dir.join("artifacts"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        let http = reqwest::blocking::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.url())).send()
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("MLflow exited with {status}:\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "MLflow did not start in 90 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The server runs its workers as child processes: kill its whole process group, as
            // a crash or an OOM kill of the host would, and wait for the port to close.
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(start.elapsed() < Duration::from_secs(20), "MLflow did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mlflow.log")).unwrap_or_default()
    }

    /// What the official client reads back for a pipeline (tests/python/mlflow_check.py).
    fn check(&self, experiment: &str, pipeline: &str, aliases: &[(&str, &str)]) -> Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/mlflow_check.py");
        let mut cmd = Command::new(self.bin.join("python"));
        cmd.arg(script).args([self.url().as_str(), experiment, pipeline]);
        for (name, alias) in aliases {
            cmd.args([name, alias]);
        }
        let out = cmd.env("MLFLOW_TRACKING_URI", self.url()).output().unwrap();
        assert!(
            out.status.success(),
            "mlflow_check.py failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The mirror's record of one item.
fn record(api: &Api, kind: &str, id: &str) -> Option<Value> {
    let v = api.get("/api/v1/mlflow").unwrap();
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["ref_id"] == id)
        .cloned()
}

fn wait_record(api: &Api, kind: &str, id: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(r) = record(api, kind, id)
            && ok(&r)
        {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{kind} {id} never reached the state wanted in MLflow: {:?}",
            record(api, kind, id)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn request(id: &str, model: &str, data: &Path, experiment: &str) -> Value {
    json!({
        "id": id,
        "model": model,
        "data": data,
        "devices": ["rpi4", "x86-vm-2core"],
        "min_fidelity": 0.5,
        "prune_grid": {"criteria": ["magnitude"], "allocations": ["uniform"],
                       "sparsities": [0.25, 0.5]},
        "exhaustive": true,
        "max_parallel": 1,
        "bench": {"warmup": 2, "max_iterations": 20, "max_time_ms": 1000, "symbols": []},
        "job_timeout_ms": 60000,
        "experiment": experiment,
    })
}

fn runs_of<'a>(c: &'a Value, kind: &str) -> Vec<&'a Value> {
    c["runs"].as_array().unwrap().iter().filter(|r| r["kind"] == kind).collect()
}

fn sync(coord: &CoordinatorProc, all: bool) -> (bool, Value) {
    let mut cmd = coord.cli();
    cmd.args(["mlflow", "sync", "--json"]);
    if all {
        cmd.arg("--all");
    }
    let out = cmd.output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

#[test]
fn pipelines_reach_mlflow_complete_even_when_it_dies_midway_and_the_registry_serves_the_winners() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = MlflowServer::start(&dir.path().join("mlflow"));
    let coord = CoordinatorProc::start_with(
        &dir.path().join("coord"),
        Broker::Embedded(free_port()),
        None,
        &["--mlflow-url", &server.url()],
    )
    .unwrap();
    let api = coord.api();
    let agents: Vec<AgentProc> = [("e2e-mlf-rpi4", "rpi4"), ("e2e-mlf-x86", "x86-vm-2core")]
        .iter()
        .map(|(id, p)| {
            AgentProc::start(&coord, &dir.path().join("agents"), &unique(id), p, 3).unwrap()
        })
        .collect();
    for a in &agents {
        api.wait_device(&a.device_id, true, Duration::from_secs(20)).unwrap();
    }
    let model =
        api.register_with_inputs(&asset("corpus-ppocr-cls"), "ppocr-cls", "x=1x3x48x192").unwrap();
    let data = super::pipeline::photo_strips(&coord.import_dir.join("strips"), 96, 48, 192);
    let experiment = unique("hone-e2e");

    // 1. A pipeline starts; its run appears in MLflow while it is still running; MLflow dies.
    let p1 = unique("mlf1");
    let (status, v) =
        api.post("/api/v1/pipelines", &request(&p1, &model, &data, &experiment)).unwrap();
    assert_eq!(status, 201, "{v}");
    let r = wait_record(&api, "pipeline", &p1, |r| r["remote"]["run_id"].is_string());
    let first_run = r["remote"]["run_id"].as_str().unwrap().to_string();
    let now = api.get(&format!("/api/v1/pipelines/{p1}")).unwrap();
    assert!(!ended(&now), "MLflow must die mid-pipeline, not after: {now}");
    server.kill();
    let v = wait_pipeline(&api, &p1, Duration::from_secs(300), ended);
    assert_eq!(v["state"], "done", "the pipeline finishes without MLflow: {v}\n{}", coord.log());
    let r = wait_record(&api, "pipeline", &p1, |r| r["last_error"].is_string());
    assert!(
        r["last_error"].as_str().unwrap().contains("unavailable"),
        "the failure is kept, with its reason: {r}"
    );
    let (ok, out) = sync(&coord, false);
    assert!(
        !ok,
        "sync fails while MLflow is down: {out}\n{}\n{}",
        api.get("/api/v1/mlflow").unwrap(),
        coord.log()
    );
    assert!(out["failed"].as_u64().unwrap() >= 1, "{out}");

    // 2. MLflow back (same store): `mlflow sync` fills it in; nothing twice.
    server.spawn();
    let (ok, out) = sync(&coord, false);
    assert!(ok, "{out}\n{}", coord.log());
    // Written by this sync or by the mirror task, whichever came first after the restart.
    let status = api.get("/api/v1/mlflow").unwrap();
    let records = status["records"].as_array().unwrap();
    let written = |r: &&Value| r["last_error"].is_null() && r["synced_version"].as_i64() > Some(0);
    let p1_record = records.iter().find(|r| r["kind"] == "pipeline" && r["ref_id"] == p1.as_str());
    assert!(p1_record.is_some_and(|r| written(&r)), "{status}");
    let campaigns: Vec<&Value> = records.iter().filter(|r| r["kind"] == "campaign").collect();
    assert!(!campaigns.is_empty(), "campaigns are written too: {status}");
    assert!(campaigns.iter().all(written), "every campaign written: {status}");
    let result = &v["result"];
    let classes = result["classes"].as_array().unwrap();
    let mut aliases = Vec::new();
    let registered = experiment.clone();
    for c in classes {
        if !c["winner"].is_null() {
            aliases
                .push((registered.as_str(), format!("{}-champion", c["class"].as_str().unwrap())));
        }
    }
    assert!(!aliases.is_empty(), "at least one class has a winner: {v}");
    let alias_refs: Vec<(&str, &str)> = aliases.iter().map(|(n, a)| (*n, a.as_str())).collect();
    let check = server.check(&experiment, &p1, &alias_refs);
    let pipelines = runs_of(&check, "pipeline");
    assert_eq!(pipelines.len(), 1, "one pipeline run, the one made before the crash: {check}");
    let prun = pipelines[0];
    assert_eq!(prun["id"], first_run.as_str());
    assert_eq!(prun["status"], "FINISHED");
    assert_eq!(prun["params"]["model"], model.as_str());
    assert_eq!(prun["tags"]["hone.device_classes"], "rpi4,x86-vm-2core");
    assert!(prun["artifacts"].as_array().unwrap().iter().any(|a| a == "report.html"), "{prun}");
    assert!(prun["artifacts"].as_array().unwrap().iter().any(|a| a == "result.json"), "{prun}");
    assert_eq!(prun["inputs"].as_array().unwrap().len(), 1, "the data set, once: {prun}");
    for class in ["rpi4", "x86-vm-2core"] {
        assert!(
            prun["metrics"][format!("{class}/parent_p50_ms")].as_f64().unwrap() > 0.0,
            "{prun}"
        );
    }
    let cands = runs_of(&check, "candidate");
    let rows: usize = classes.iter().map(|c| c["candidates"].as_array().unwrap().len()).sum();
    assert_eq!(cands.len(), rows, "one nested run per candidate: {check}");
    let mut ids: Vec<&str> = cands.iter().map(|c| c["candidate"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), rows, "no candidate twice");
    let models = api.get("/api/v1/models").unwrap();
    let sha_of = |id: &str| -> String {
        models.as_array().unwrap().iter().find(|m| m["id"] == id).unwrap()["sha256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for c in classes {
        let class = c["class"].as_str().unwrap();
        for row in c["candidates"].as_array().unwrap() {
            let run = cands.iter().find(|r| r["candidate"] == row["id"]).unwrap();
            assert_eq!(run["parent_run"], first_run.as_str(), "nested under the pipeline");
            assert_eq!(run["params"]["method"], "prune");
            assert_eq!(run["params"]["criterion"], "magnitude");
            assert_eq!(run["params"]["parent_sha256"], sha_of(&model).as_str());
            assert!(run["params"]["sparsity"].is_string(), "{run}");
            assert_eq!(run["tags"]["hone.device_classes"], class);
            assert!(run["tags"]["hone.emulation"].as_str().unwrap().starts_with(class));
            if row["status"] == "measured" {
                let p50 = run["metrics"][format!("{class}/p50_ms")].as_f64().unwrap();
                assert_eq!(Some(p50), row["p50_ms"].as_f64(), "{run}");
                assert!(run["metrics"][format!("{class}/p99_ms")].as_f64().is_some());
                assert!(run["metrics"][format!("{class}/peak_rss_mib")].as_f64().unwrap() > 0.0);
                assert_eq!(run["metrics"]["fidelity"].as_f64(), row["fidelity"].as_f64());
                assert!(run["metrics"]["macs"].as_f64().unwrap() > 0.0);
                assert!(run["metrics"]["size_bytes"].as_f64().unwrap() > 0.0);
                let m = row["model"].as_str().unwrap();
                assert_eq!(
                    run["model_sha256"],
                    sha_of(m).as_str(),
                    "the ONNX artifact is the model"
                );
                assert!(run["tags"]["hone.lineage"].as_str().unwrap().contains(&model));
            }
            for (key, n) in run["metric_history"].as_object().unwrap() {
                assert_eq!(n, 1, "{key} logged once: {run}");
            }
        }
    }
    // The registry: each class winner a version with its alias, tags and loadable model.
    for (ver, c) in check["versions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(classes.iter().filter(|c| !c["winner"].is_null()))
    {
        let class = c["class"].as_str().unwrap();
        let winner = c["winner"]["model"].as_str().unwrap();
        let won = ver["tags"]["hone.device_class"].as_str().unwrap();
        assert!(won.split(',').any(|c| c == class), "{ver}");
        assert!(ver["tags"][format!("hone.speedup.{class}")].is_string(), "{ver}");
        assert!(ver["tags"][format!("hone.emulation.{class}")].is_string(), "{ver}");
        assert_eq!(ver["tags"]["hone.parent"], model.as_str());
        assert!(ver["tags"]["hone.method"].is_string());
        assert_eq!(ver["tags"]["hone.model"], winner);
        assert!(
            ver["aliases"].as_array().unwrap().iter().any(|a| *a == format!("{class}-champion"))
        );
        assert_eq!(
            ver["model_sha256"],
            sha_of(winner).as_str(),
            "models:/ gives the winner's bytes"
        );
        assert!(ver["onnx_nodes"].as_u64().unwrap() > 10);
        assert_eq!(ver["pyfunc_flavors"], json!(["onnx", "python_function"]));
        let speedup = ver["tags"][format!("hone.speedup.{class}")].as_str().unwrap();
        if winner == model {
            assert_eq!(speedup, "1.000", "the parent against itself: {ver}");
        } else {
            assert!(speedup.parse::<f64>().unwrap() > 0.0, "{ver}");
        }
    }

    // 3. Replaying everything writes nothing twice.
    let (ok, out) = sync(&coord, true);
    assert!(ok, "{out}");
    let again = server.check(&experiment, &p1, &alias_refs);
    assert_eq!(runs_of(&again, "pipeline").len(), 1);
    assert_eq!(runs_of(&again, "candidate").len(), rows);
    for run in again["runs"].as_array().unwrap() {
        for (key, n) in run["metric_history"].as_object().unwrap() {
            assert_eq!(n, 1, "{key} logged once after a full replay: {run}");
        }
    }
    let versions: Vec<&Value> = again["versions"].as_array().unwrap().iter().collect();
    assert_eq!(
        versions.iter().map(|v| v["version"].clone()).collect::<Vec<_>>(),
        check["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].clone())
            .collect::<Vec<_>>(),
        "no new version"
    );

    // 4. A deployment of a class winner records the version it rolled out.
    // (The parent always meets a fidelity floor, so every class has a winner.)
    let rpi4 = classes.iter().find(|c| c["class"] == "rpi4" && !c["winner"].is_null());
    {
        let c = rpi4.expect("rpi4 has a winner");
        let winner = c["winner"]["model"].as_str().unwrap();
        let dep = unique("dep");
        let (status, d) = api
            .post(
                "/api/v1/deployments",
                &json!({
                    "id": dep, "model": winner, "devices": "profile:rpi4", "canary": "100%",
                    "gate": "error_rate<=0.05", "window_s": 2, "min_requests": 5,
                    "probe_rps": 20, "activation_timeout_s": 60, "pipeline": p1,
                }),
            )
            .unwrap();
        assert_eq!(status, 201, "{d}");
        let r = wait_record(&api, "deployment", &dep, |r| r["remote"]["version"].is_string());
        let ver = check["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["tags"]["hone.model"] == winner)
            .unwrap();
        assert_eq!(r["remote"]["version"], ver["version"], "{r}");
        assert_eq!(r["remote"]["registered_model"], registered.as_str());
    }

    // 5. A second pipeline, MLflow up, on the same strips tracked by DVC: written without any
    // command, with the data set's DVC identity as its input; compared with the first.
    let repo = super::dvc::Repo::init(&coord.import_dir.join("dvc-repo"));
    let tracked = coord.import_dir.join("dvc-repo/data/strips");
    std::fs::create_dir_all(&tracked).unwrap();
    std::fs::copy(data.join("x.npy"), tracked.join("x.npy")).unwrap();
    repo.version(&["data/strips"], "v1");
    let md5 = repo.recorded_md5("v1", "data/strips");
    let p2 = unique("mlf2");
    let dvc_data = format!("dvc://{}@v1", tracked.display());
    let mut req = request(&p2, &model, Path::new(&dvc_data), &experiment);
    req["prune_grid"]["sparsities"] = json!([0.25]);
    let (status, v) = api.post("/api/v1/pipelines", &req).unwrap();
    assert_eq!(status, 201, "{v}");
    let v2 = wait_pipeline(&api, &p2, Duration::from_secs(300), ended);
    assert_eq!(v2["state"], "done", "{v2}");
    wait_record(&api, "pipeline", &p2, |r| {
        r["remote"]["versions"].is_array() && r["last_error"].is_null()
    });
    let check2 = server.check(&experiment, &p2, &[]);
    let prun2 = runs_of(&check2, "pipeline")[0];
    let input = &prun2["inputs"][0];
    assert_eq!(input["source_type"], "dvc", "{prun2}");
    assert_eq!(input["digest"], md5.trim_end_matches(".dir"), "{prun2}");
    let identity: Value = serde_json::from_str(input["source"].as_str().unwrap()).unwrap();
    assert_eq!(identity["md5"], md5.as_str());
    assert_eq!(identity["rev"], repo.commit("v1").as_str());
    assert_eq!(identity["path"], "data/strips", "{identity}");
    assert_eq!(prun2["tags"]["hone.dataset"], identity.to_string());
    for run in runs_of(&check2, "candidate") {
        assert_eq!(run["tags"]["hone.dataset"], identity.to_string(), "{run}");
    }
    let out = coord
        .cli()
        .args(["experiments", "compare", "--experiment", &experiment, "--json"])
        .args(["--mlflow-url", &server.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cmp: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows_cmp = cmp["rows"].as_array().unwrap();
    for p in [&p1, &p2] {
        assert!(
            rows_cmp.iter().any(|r| r["pipeline"] == p.as_str() && r["candidate"] == "parent"),
            "{cmp}"
        );
        assert!(
            rows_cmp.iter().any(|r| r["pipeline"] == p.as_str() && r["method"] == "prune"),
            "{cmp}"
        );
    }
    assert_eq!(cmp["classes"], json!(["rpi4", "x86-vm-2core"]), "{cmp}");
    let measured = rows_cmp.iter().find(|r| r["status"] == "measured").unwrap();
    assert!(!measured["classes"].as_object().unwrap().is_empty(), "{measured}");
    let out = coord
        .cli()
        .args(["experiments", "compare", &first_run, "--mlflow-url", &server.url()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("rpi4 p50 ms") && table.contains(&p1),
        "{table}"
    );
    assert!(!table.contains(&p2), "a run id brings only its own pipeline: {table}");
    drop(agents);
}

#[test]
fn a_server_with_basic_auth_is_written_to_with_the_credentials_and_refuses_without() {
    use coordinator::mlflow::client::{Auth, MlflowClient};
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("basic_auth.ini");
    let password = "hone-e2e-admin-pass-0123456789";
    std::fs::write(
        &ini,
        format!(
            "[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{}\n\
             admin_username = hone-admin\nadmin_password = {password}\n\
             authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
            dir.path().join("auth.db").display()
        ),
    )
    .unwrap();
    let server = MlflowServer::start_with(
        &dir.path().join("mlflow"),
        &["--app-name", "basic-auth"],
        &[
            ("MLFLOW_AUTH_CONFIG_PATH", ini.display().to_string()),
            ("MLFLOW_FLASK_SERVER_SECRET_KEY", "hone-e2e-csrf-key".to_string()),
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let anonymous = MlflowClient::with_auth(&server.url(), Auth::None).unwrap();
        let e = anonymous.ensure_experiment("guarded").await.unwrap_err();
        assert!(
            matches!(e, coordinator::mlflow::MlflowError::Refused { status: 401, .. }),
            "no credentials: 401, kept as a refusal (not retried as an outage): {e}"
        );
        assert!(!e.retryable());
        let wrong =
            MlflowClient::with_auth(&server.url(), Auth::Basic("hone-admin".into(), "nope".into()))
                .unwrap();
        assert!(wrong.ensure_experiment("guarded").await.is_err());
        let admin = MlflowClient::with_auth(
            &server.url(),
            Auth::Basic("hone-admin".into(), password.into()),
        )
        .unwrap();
        let id = admin.ensure_experiment("guarded").await.unwrap();
        assert_eq!(admin.experiment_id("guarded").await.unwrap(), Some(id.clone()));
        let run = admin.create_run(&id, "r", 1, &[("hone.kind".into(), "campaign".into())]).await;
        let run = run.unwrap();
        admin.upload_bytes(&run.artifact_uri, "results.json", b"{}".to_vec()).await.unwrap();
    });
}
