//! The mirror: writes pipelines, campaigns and deployments from Hone's database to MLflow.
//!
//! Hone's database is the source of truth; MLflow is a copy that can lag. Every write is
//! idempotent: runs are found by their `hone.*` tags before one is created, metrics carry the
//! time of the record (so a replayed point is the same point, which MLflow stores once),
//! parameters never change value, model versions are found by their run before one is made.
//! The worker ([`Mlflow::run`]) looks every few seconds for records whose version (last change)
//! is newer than what `mlflow_sync` says was written, and writes them one at a time; a failure
//! is recorded with a backoff (2 s doubling to 5 min, the error kept), so MLflow down or slow
//! never blocks a pipeline and never loses a result. `coordinator mlflow sync` replays
//! everything due at once (or everything, `--all`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::client::{MlflowClient, Run};
use super::plan::{self, RunPlan};
use crate::artifacts::ArtifactStore;
use crate::db::{Db, ModelRow, PipelineRow};
use crate::pipeline::result::PipelineResult;
use hone_common::clock::now_ms;

/// Settings of the mirror.
#[derive(Debug, Clone)]
pub struct MlflowConfig {
    /// The tracking server, `http://host:port`.
    pub url: String,
    /// The experiment of campaigns (pipelines go to one named after their model).
    pub campaign_experiment: String,
}

impl MlflowConfig {
    /// Defaults for a server URL.
    pub fn new(url: impl Into<String>) -> MlflowConfig {
        MlflowConfig { url: url.into(), campaign_experiment: "hone-campaigns".into() }
    }
}

/// One record's outcome in a sync.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Synced {
    /// `pipeline`, `campaign` or `deployment`.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// `synced` or `failed`.
    pub outcome: String,
    /// The error, when it failed.
    pub error: Option<String>,
    /// What MLflow calls it.
    pub remote: Option<Value>,
}

/// The mirror: the client, Hone's database and artifacts.
pub struct Mlflow {
    client: MlflowClient,
    config: MlflowConfig,
    db: Db,
    artifacts: ArtifactStore,
    /// One sync at a time (the worker and `mlflow sync`), so no run is created twice.
    lock: tokio::sync::Mutex<()>,
    /// Wakes the worker early.
    pub wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Mlflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mlflow").field("url", &self.config.url).finish_non_exhaustive()
    }
}

/// A record due for writing.
#[derive(Debug, Clone)]
struct Due {
    kind: &'static str,
    id: String,
    version: i64,
}

fn backoff_ms(attempts: i64) -> i64 {
    (2_000i64 << attempts.clamp(0, 8)).min(300_000)
}

impl Mlflow {
    /// The mirror of `db` to the server of `config`.
    pub fn new(
        config: MlflowConfig,
        db: Db,
        artifacts: ArtifactStore,
    ) -> anyhow::Result<Arc<Mlflow>> {
        let client = MlflowClient::new(&config.url)?;
        Ok(Arc::new(Mlflow {
            client,
            config,
            db,
            artifacts,
            lock: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// Writes due records every few seconds until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.sync(false, false).await {
                warn!(error = %format!("{e:#}"), "MLflow mirror: listing due records failed");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// What is due: records whose version is newer than the one written (`all`: every record),
    /// skipping those still backing off unless `now_too`.
    async fn due(&self, all: bool, now_too: bool) -> anyhow::Result<Vec<Due>> {
        let rows: BTreeMap<(String, String), crate::db::mlflow::MlflowSyncRow> = self
            .db
            .mlflow_rows()
            .await?
            .into_iter()
            .map(|r| ((r.kind.clone(), r.ref_id.clone()), r))
            .collect();
        let now = now_ms() as i64;
        let mut due = Vec::new();
        let mut consider = |kind: &'static str, id: String, version: i64| {
            let row = rows.get(&(kind.to_string(), id.clone()));
            let newer = all || row.is_none_or(|r| version > r.synced_version);
            let waiting = !now_too && row.is_some_and(|r| r.next_attempt_ms > now);
            if newer && !waiting {
                due.push(Due { kind, id, version });
            }
        };
        for (id, _, version) in self.db.pipeline_versions().await? {
            consider("pipeline", id, version);
        }
        let mut campaigns = self.db.campaigns(None).await?;
        campaigns.sort_by_key(|c| c.created_at_ms);
        for c in campaigns {
            if let Some(end) = c.finished_at_ms.filter(|_| plan::finished(&c.state)) {
                consider("campaign", c.id, end);
            }
        }
        for d in self.db.deployments(false).await? {
            if d.finished_at_ms.is_some() {
                consider("deployment", d.id, d.updated_at_ms);
            }
        }
        Ok(due)
    }

    /// Writes what is due (`all`: everything again; `now_too`: ignoring backoffs) and returns
    /// each record's outcome.
    pub async fn sync(&self, all: bool, now_too: bool) -> anyhow::Result<Vec<Synced>> {
        let _one = self.lock.lock().await;
        let due = self.due(all, now_too).await?;
        let mut out = Vec::new();
        for d in due {
            let done = match d.kind {
                "pipeline" => self.pipeline(&d.id).await,
                "campaign" => self.campaign(&d.id).await,
                _ => self.deployment(&d.id).await,
            };
            let now = now_ms() as i64;
            match done {
                Ok(remote) => {
                    self.db.mlflow_synced(d.kind, &d.id, d.version, &remote, now).await?;
                    info!(kind = d.kind, id = %d.id, "written to MLflow");
                    out.push(Synced {
                        kind: d.kind.into(),
                        id: d.id,
                        outcome: "synced".into(),
                        error: None,
                        remote: Some(remote),
                    });
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    let attempts = self
                        .db
                        .mlflow_rows()
                        .await?
                        .into_iter()
                        .find(|r| r.kind == d.kind && r.ref_id == d.id)
                        .map(|r| r.attempts)
                        .unwrap_or(0);
                    self.db
                        .mlflow_failed(d.kind, &d.id, &why, now + backoff_ms(attempts), now)
                        .await?;
                    warn!(kind = d.kind, id = %d.id, error = %why, "writing to MLflow failed; will retry");
                    out.push(Synced {
                        kind: d.kind.into(),
                        id: d.id,
                        outcome: "failed".into(),
                        error: Some(why),
                        remote: None,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The run of this kind tagged `key = value` in an experiment, created from `plan` when
    /// there is none; then its parameters, metrics and tags logged.
    async fn ensure_run(
        &self,
        experiment: &str,
        kind: &str,
        key: &str,
        value: &str,
        plan: &RunPlan,
    ) -> anyhow::Result<Run> {
        let filter = format!(
            "tags.`hone.kind` = '{kind}' and tags.`{key}` = '{}'",
            super::client::quote(value)
        );
        let found = self.client.search_runs(&[experiment.to_string()], &filter).await?;
        let run = match found.into_iter().min_by_key(|r| r.id.clone()) {
            Some(r) => r,
            None => {
                self.client.create_run(experiment, &plan.name, plan.start_ms, &plan.tags).await?
            }
        };
        self.client.log(&run.id, &plan.batches()).await?;
        Ok(run)
    }

    async fn finish_run(&self, run: &Run, plan: &RunPlan) -> anyhow::Result<()> {
        if let Some(end) = plan.end_ms {
            self.client.end_run(&run.id, plan.status, end).await?;
        }
        Ok(())
    }

    /// Uploads a model as an MLflow model folder (`{dir}/model.onnx`, `MLmodel`, environment).
    async fn upload_model(&self, run: &Run, dir: &str, model: &ModelRow) -> anyhow::Result<()> {
        let file = self.artifacts.path(&model.sha256);
        anyhow::ensure!(file.is_file(), "the model file of {} is missing", model.id);
        self.client.upload_file(&run.artifact_uri, &format!("{dir}/model.onnx"), &file).await?;
        let mlmodel = plan::mlmodel(&run.id, model, dir, model.created_at_ms);
        self.client
            .upload_bytes(&run.artifact_uri, &format!("{dir}/MLmodel"), mlmodel.into_bytes())
            .await?;
        self.client
            .upload_bytes(
                &run.artifact_uri,
                &format!("{dir}/python_env.yaml"),
                plan::PYTHON_ENV.into(),
            )
            .await?;
        self.client
            .upload_bytes(
                &run.artifact_uri,
                &format!("{dir}/requirements.txt"),
                plan::REQUIREMENTS.into(),
            )
            .await?;
        Ok(())
    }

    async fn model(&self, id: &str) -> anyhow::Result<ModelRow> {
        self.db.find_model(id).await?.with_context(|| format!("model `{id}` is not registered"))
    }

    /// A pipeline: its run, and once it is over, a nested run per candidate, the models, the
    /// report, the result, and a registered version per class winner.
    async fn pipeline(&self, id: &str) -> anyhow::Result<Value> {
        let row: PipelineRow =
            self.db.pipeline(id).await?.with_context(|| format!("pipeline `{id}` vanished"))?;
        let req: crate::pipeline::request::PipelineRequest =
            serde_json::from_value(row.request.clone()).context("reading the pipeline request")?;
        let parent = self.model(&req.model).await?;
        let result: PipelineResult = match &row.result {
            Some(v) => serde_json::from_value(v.clone()).context("reading the pipeline result")?,
            None => PipelineResult {
                pipeline: row.id.clone(),
                state: row.state.clone(),
                stage: row.stage.clone(),
                model: parent.id.clone(),
                model_name: parent.name.clone(),
                data: req.data.describe(),
                quality_metric: plan::quality_metric(&req).into(),
                ..PipelineResult::default()
            },
        };
        let experiment_name = plan::experiment_of(&row, &parent.name);
        let experiment = self.client.ensure_experiment(&experiment_name).await?;
        let mut pplan = plan::pipeline_plan(&row, &req, &result, &parent);
        if !plan::finished(&row.state) {
            // Metrics and candidates are written once, when the pipeline is over.
            pplan.end_ms = None;
        }
        let run = self.ensure_run(&experiment, "pipeline", "hone.pipeline", id, &pplan).await?;
        self.client
            .log_inputs(&run.id, vec![plan::dataset_input(&row, &req.data.describe())])
            .await?;
        let mut remote = json!({
            "experiment": experiment_name,
            "experiment_id": experiment,
            "run_id": run.id,
        });
        if !plan::finished(&row.state) {
            return Ok(remote);
        }
        // Candidates.
        let mut models = BTreeMap::new();
        for class in &result.classes {
            for c in &class.candidates {
                if let Some(m) = &c.model
                    && !models.contains_key(m)
                    && let Some(row) = self.db.find_model(m).await?
                {
                    models.insert(m.clone(), row);
                }
            }
        }
        let mut runs = BTreeMap::new();
        for (c, _class, mut cplan) in plan::candidate_plans(&row, &result, &parent, &models) {
            cplan.tags.push(("mlflow.parentRunId".into(), run.id.clone()));
            let crun =
                self.ensure_run(&experiment, "candidate", "hone.candidate", &c.id, &cplan).await?;
            let upload = c.winner || c.status == "measured";
            if let (true, Some(m)) = (upload, c.model.as_ref().and_then(|m| models.get(m))) {
                self.upload_model(&crun, "model", m).await?;
            }
            self.finish_run(&crun, &cplan).await?;
            runs.insert(c.id.clone(), crun);
        }
        remote["candidates"] =
            json!(runs.iter().map(|(k, r)| (k.clone(), json!(r.id))).collect::<BTreeMap<_, _>>());
        // The report and the result.
        let html = crate::pipeline::report::render(&result);
        self.client.upload_bytes(&run.artifact_uri, "report.html", html.into_bytes()).await?;
        let json_text = serde_json::to_vec_pretty(&result)?;
        self.client.upload_bytes(&run.artifact_uri, "result.json", json_text).await?;
        // The registry: one version per winning model (a model may win several classes), an
        // alias per class.
        let name = plan::registry_name(&experiment_name);
        let mut winners: Vec<(
            Run,
            &'static str,
            String,
            Vec<&crate::pipeline::result::ClassResult>,
        )> = Vec::new();
        for class in &result.classes {
            let Some(w) = &class.winner else { continue };
            let row_of_winner = class.candidates.iter().find(|c| c.winner);
            let (source_run, dir, method) =
                match row_of_winner.and_then(|c| runs.get(&c.id).map(|r| (r, c))) {
                    Some((r, c)) => (r.clone(), "model", c.method.clone()),
                    None if w.model == parent.id => {
                        (run.clone(), "parent-model", "none (the parent)".to_string())
                    }
                    None => anyhow::bail!("the winner of {} has no run", class.class),
                };
            match winners.iter_mut().find(|(r, ..)| r.id == source_run.id) {
                Some((.., classes)) => classes.push(class),
                None => winners.push((source_run, dir, method, vec![class])),
            }
        }
        let mut versions = Vec::new();
        for (source_run, dir, method, classes) in winners {
            if dir == "parent-model" {
                self.upload_model(&run, dir, &parent).await?;
            }
            self.client.ensure_registered_model(&name).await?;
            let tags = plan::winner_tags(&result, &classes, &parent, &method);
            let existing = self.client.versions_of_run(&name, &source_run.id).await?;
            let version = match existing.into_iter().next() {
                Some(v) => {
                    for (k, val) in &tags {
                        self.client.set_version_tag(&name, &v.version, k, val).await?;
                    }
                    v
                }
                None => {
                    let source = format!("{}/{dir}", source_run.artifact_uri.trim_end_matches('/'));
                    let names: Vec<&str> = classes.iter().map(|c| c.class.as_str()).collect();
                    let description = format!(
                        "The winner of {} in Hone pipeline {} ({}).",
                        names.join(", "),
                        result.pipeline,
                        classes[0].reason
                    );
                    self.client
                        .create_version(&name, &source, &source_run.id, &tags, &description)
                        .await?
                }
            };
            for class in classes {
                let alias = format!("{}-champion", plan::registry_name(&class.class));
                self.client.set_alias(&name, &alias, &version.version).await?;
                versions.push(json!({
                    "class": class.class,
                    "registered_model": name,
                    "version": version.version,
                    "alias": alias,
                    "model": class.winner.as_ref().map(|w| w.model.clone()),
                }));
            }
        }
        remote["versions"] = json!(versions);
        self.finish_run(&run, &pplan).await?;
        Ok(remote)
    }

    /// A finished campaign: one run in the campaign experiment.
    async fn campaign(&self, id: &str) -> anyhow::Result<Value> {
        let c = self.db.campaign(id).await?.with_context(|| format!("campaign `{id}` vanished"))?;
        let results = self.db.campaign_results(id).await?;
        let mut models = BTreeMap::new();
        for r in &results {
            if !models.contains_key(&r.model_id)
                && let Some(m) = self.db.find_model(&r.model_id).await?
            {
                models.insert(r.model_id.clone(), m);
            }
        }
        let cplan = plan::campaign_plan(&c, &results, &models);
        let experiment = self.client.ensure_experiment(&self.config.campaign_experiment).await?;
        let run = self.ensure_run(&experiment, "campaign", "hone.campaign", id, &cplan).await?;
        let json_text = serde_json::to_vec_pretty(&json!({"campaign": c, "results": results}))?;
        self.client.upload_bytes(&run.artifact_uri, "results.json", json_text).await?;
        self.finish_run(&run, &cplan).await?;
        Ok(json!({"experiment": self.config.campaign_experiment, "run_id": run.id}))
    }

    /// A finished deployment: the registered version it rolled out, tagged with it. A
    /// deployment of a model no pipeline registered records that there is none.
    async fn deployment(&self, id: &str) -> anyhow::Result<Value> {
        let d =
            self.db.deployment(id).await?.with_context(|| format!("deployment `{id}` vanished"))?;
        let rows = self.db.mlflow_rows().await?;
        // A pipeline that made this model but is not written yet: wait for it.
        if let Some(p) = d.request["pipeline"].as_str() {
            let written = rows.iter().any(|r| {
                r.kind == "pipeline"
                    && r.ref_id == p
                    && r.remote.as_ref().is_some_and(|x| x.get("versions").is_some())
            });
            let exists = self.db.pipeline(p).await?.is_some_and(|p| plan::finished(&p.state));
            anyhow::ensure!(!exists || written, "pipeline `{p}` is not in MLflow yet");
        }
        let version = rows
            .iter()
            .filter(|r| r.kind == "pipeline")
            .filter_map(|r| r.remote.as_ref()?.get("versions")?.as_array().cloned())
            .flatten()
            .find(|v| v["model"].as_str() == Some(d.model_id.as_str()));
        let Some(v) = version else {
            return Ok(json!({"version": null, "note": "the model is not a registered version"}));
        };
        let (name, number) = (
            v["registered_model"].as_str().unwrap_or_default(),
            v["version"].as_str().unwrap_or_default(),
        );
        let devices: Vec<String> =
            self.db.deployment_devices(id).await?.into_iter().map(|x| x.device_id).collect();
        self.client
            .set_version_tag(
                name,
                number,
                &format!("hone.deployment.{id}"),
                &format!("{} on {}", d.state, devices.join(",")),
            )
            .await?;
        Ok(
            json!({"registered_model": name, "version": number, "state": d.state, "devices": devices}),
        )
    }
}
