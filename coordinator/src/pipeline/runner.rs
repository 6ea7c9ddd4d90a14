//! The runner: drives pipelines, one at a time, from the database's state.
//!
//! Stages (each one idempotent, so a restarted coordinator resumes where it stopped):
//! 1. **parent**: the parent is measured on one device of every class (campaign
//!    `{id}-parent`); a class whose measurement failed is reported unmeasured.
//! 2. **candidates**: every method's grid for every measured class is compressed, validated
//!    (accuracy or fidelity on the validation part, on the coordinator) and registered with its
//!    lineage; a candidate over the accuracy budget is `rejected` before any device time. A
//!    candidate with the same parent, data, method and settings made by an earlier pipeline is
//!    reused.
//! 3. **measure**: exhaustive (every valid candidate, campaign `{id}-m1`) or guided: in rounds
//!    (campaigns `{id}-m{r}`), each class's latency predictor is refitted on the fleet's
//!    measurements of that class (those before this pipeline, and this pipeline's own) and the
//!    most promising unmeasured candidate is measured, until the class's budget is spent.
//! 4. **decide**: per class, the Pareto front and the winner ([`super::select`]); the result is
//!    stored and the HTML report written.
//!
//! Compression (stage 2) and device measurements (stages 1 and 3) never overlap: on one host,
//! the coordinator's own work would slow the agents it measures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hone_common::bench::Runtime;
use hone_common::clock::now_ms;
use hone_compress::method::{CompressionMethod, MethodContext, PruneMethod, Target};
use hone_compress::predict::{Features, LatencyModel};
use hone_graph::Graph;
use hone_learn::data::Part;
use hone_learn::eval::EvalData;
use sha2::Digest as _;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::request::PipelineRequest;
use super::result::{
    CandidateRow, ClassResult, Constraints, Figures, PipelineResult, PredictorReport,
};
use super::select::{Point, Rules, choose};
use crate::artifacts::ArtifactStore;
use crate::campaign::{CampaignSpec, DeviceSelector};
use crate::db::{CandidateRecord, Db, JobRow, ModelRow, PipelineRow, ResultRow};

/// What the runner needs.
#[derive(Clone)]
pub struct Runner {
    /// Database.
    pub db: Db,
    /// Artifact store (candidates are registered into it).
    pub artifacts: ArtifactStore,
    /// The coordinator's data folder (candidate files, reports).
    pub data_dir: PathBuf,
    /// Wakes the campaign engine after a campaign is created.
    pub engine_poke: Arc<Notify>,
    /// Wakes the runner after a pipeline is created or cancelled.
    pub wake: Arc<Notify>,
}

/// Ends a pipeline's drive early.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("cancelled")]
    Cancelled,
    #[error("coordinator stopping")]
    Shutdown,
}

/// The quality of a model on the validation part.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq)]
struct Quality {
    accuracy: Option<f64>,
    /// Top-1 agreement with the parent (a language model's: of the next token).
    fidelity: Option<f64>,
    cosine: Option<f64>,
    /// A language model's perplexity on the validation part.
    #[serde(default)]
    perplexity: Option<f64>,
    /// Examples (a language model's: positions) judged.
    examples: usize,
}

/// A measurement's key: (class, model id, runtime).
type Key = (String, String, Runtime);

/// Everything a drive knows in memory besides the database.
struct Drive {
    row: PipelineRow,
    req: PipelineRequest,
    parent: ModelRow,
    classes: Vec<String>,
    started: Instant,
    metric: &'static str,
    parent_quality: Option<Quality>,
    /// Fleet measurements per class from before this pipeline (the predictor's start).
    history: BTreeMap<String, Vec<(Features, f64)>>,
    /// A language-model parent: its model folder (unpacked from the ONNX file's metadata).
    llm_parent: Option<PathBuf>,
}

impl Runner {
    /// Drives pipelines until `stop` turns true: the oldest unfinished one first, then the next.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            match self.next().await {
                Ok(Some(row)) => {
                    let id = row.id.clone();
                    let drive = self.drive(row, stop.clone());
                    match drive.await {
                        Ok(()) => {}
                        Err(e) if e.downcast_ref::<Stop>().is_some() => {
                            info!(pipeline = %id, why = %e, "pipeline paused or stopped");
                            if matches!(e.downcast_ref::<Stop>(), Some(Stop::Shutdown)) {
                                return;
                            }
                        }
                        Err(e) => {
                            let why = format!("{e:#}");
                            warn!(pipeline = %id, error = %why, "pipeline failed");
                            let stage = self.db.pipeline(&id).await.ok().flatten();
                            let stage = stage.map(|p| p.stage).unwrap_or_default();
                            if let Err(e) = self
                                .db
                                .update_pipeline(&id, "failed", &stage, Some(&why), None, now_i64())
                                .await
                            {
                                warn!(pipeline = %id, error = %e, "recording the failure failed");
                            }
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "listing pipelines failed"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn next(&self) -> anyhow::Result<Option<PipelineRow>> {
        let mut active = self.db.pipelines(true).await?;
        active.sort_by_key(|p| p.created_at_ms);
        Ok(active.into_iter().next())
    }

    async fn drive(
        &self,
        row: PipelineRow,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let req: PipelineRequest =
            serde_json::from_value(row.request.clone()).context("reading the pipeline request")?;
        let parent =
            self.db.find_model(&req.model).await?.with_context(|| {
                format!("the parent model `{}` is no longer registered", req.model)
            })?;
        let classes = req.classes();
        let metric = if req.max_accuracy_drop.is_some() { "accuracy" } else { "fidelity" };
        let mut d = Drive {
            started: Instant::now(),
            history: BTreeMap::new(),
            llm_parent: None,
            parent_quality: None,
            metric,
            classes,
            parent,
            req,
            row,
        };
        info!(pipeline = %d.row.id, model = %d.parent.name, classes = ?d.classes, "pipeline running");
        self.set_stage(&mut d, "parent").await?;

        // 1. The parent on every class.
        let parent_campaign = format!("{}-parent", d.row.id);
        let mut jobs = Vec::new();
        for class in &d.classes {
            match self.device_of(class, Runtime::Tract).await? {
                Some(dev) => jobs.push((d.parent.id.clone(), dev)),
                None => warn!(pipeline = %d.row.id, class, "no online device of this class"),
            }
        }
        if jobs.is_empty() {
            bail!("no class has an online device: {}", d.classes.join(", "));
        }
        self.ensure_campaign(&d, &parent_campaign, &jobs, Runtime::Tract).await?;
        self.wait_campaign(&d.row.id, &parent_campaign, &stop).await?;
        let measured = self.measurements(&d.row.id).await?;
        let live: Vec<String> = d
            .classes
            .iter()
            .filter(|c| {
                measured.contains_key(&(c.to_string(), d.parent.id.clone(), Runtime::Tract))
            })
            .cloned()
            .collect();
        if live.is_empty() {
            let errors = self.job_errors(&parent_campaign).await?;
            bail!("the parent could not be measured on any class: {errors}");
        }
        for class in &d.classes {
            let points = self.history(class, d.row.created_at_ms).await?;
            d.history.insert(class.clone(), points);
        }

        // 2. Candidates, on the coordinator (no device measurement runs meanwhile).
        self.set_stage(&mut d, "candidates").await?;
        self.make_candidates(&mut d, &live, &stop).await?;

        // 3. Device measurements.
        self.set_stage(&mut d, "measure").await?;
        self.measure(&mut d, &live, &stop).await?;

        // 4. The decision.
        self.set_stage(&mut d, "decide").await?;
        let mut result = self.result(&d, "done", "done").await?;
        let reports = self.data_dir.join("reports");
        std::fs::create_dir_all(&reports)?;
        let path = reports.join(format!("{}.html", d.row.id));
        result.report = Some(path.display().to_string());
        super::report::write(&result, &path)?;
        let value = serde_json::to_value(&result)?;
        self.db.update_pipeline(&d.row.id, "done", "done", None, Some(&value), now_i64()).await?;
        info!(pipeline = %d.row.id, seconds = d.started.elapsed().as_secs_f64(), "pipeline done");
        if let Some(template) = &d.req.deploy {
            self.deploy_winners(&d.row.id, &d.req, template, &result).await;
        }
        Ok(())
    }

    /// `compress --deploy`: each class's winner rolls out to the class's devices, a deployment
    /// per class (`{pipeline}-{class}`, so a resumed pipeline does not deploy twice). A class
    /// whose winner is the parent deploys the parent. Failures are logged; the pipeline stays
    /// done.
    async fn deploy_winners(
        &self,
        pipeline: &str,
        request: &PipelineRequest,
        template: &crate::deploy::DeployRequest,
        result: &super::result::PipelineResult,
    ) {
        for class in &result.classes {
            let Some(winner) = &class.winner else {
                warn!(%pipeline, class = %class.class, "no winner to deploy");
                continue;
            };
            if winner.runtime.as_deref().is_some_and(|r| r != "tract") {
                warn!(%pipeline, class = %class.class, model = %winner.model, "the winner runs in ONNX Runtime, which agents do not serve yet: not deployed");
                continue;
            }
            let mut req = template.clone();
            req.id = Some(format!("{pipeline}-{}", class.class));
            req.model = winner.model.clone();
            req.devices = format!("profile:{}", class.class);
            req.pipeline = Some(pipeline.to_string());
            req.latency_budget_ms = req.latency_budget_ms.or(request.latency_budget_ms);
            match crate::deploy::create(&self.db, &req, now_i64()).await {
                Ok((id, _)) => {
                    info!(%pipeline, class = %class.class, deployment = %id, model = %winner.model, "winner deployed");
                    if let Ok(Some(row)) = self.db.deployment(&id).await {
                        crate::deploy::reference::spawn(&self.db, &self.artifacts, None, &row);
                    }
                }
                Err(e) => {
                    warn!(%pipeline, class = %class.class, error = %e, "the winner could not be deployed")
                }
            }
        }
    }

    /// Records the stage (and the result so far); stops when the pipeline was cancelled.
    async fn set_stage(&self, d: &mut Drive, stage: &str) -> anyhow::Result<()> {
        let result = self.result(d, "running", stage).await?;
        let value = serde_json::to_value(&result)?;
        if !self
            .db
            .update_pipeline(&d.row.id, "running", stage, None, Some(&value), now_i64())
            .await?
        {
            return Err(Stop::Cancelled.into());
        }
        d.row.stage = stage.to_owned();
        Ok(())
    }

    /// An online, compatible device of `class` that runs `runtime`, the least busy first.
    async fn device_of(&self, class: &str, runtime: Runtime) -> anyhow::Result<Option<String>> {
        let busy: Vec<String> = self
            .db
            .jobs_in_states(&["queued", "dispatched", "running"])
            .await?
            .into_iter()
            .map(|j| j.device_id)
            .collect();
        let mut devices: Vec<_> = self
            .db
            .devices()
            .await?
            .into_iter()
            .filter(|d| d.dispatchable_for(runtime) && d.profile.as_deref() == Some(class))
            .collect();
        devices.sort_by_key(|d| (busy.iter().filter(|b| **b == d.id).count(), d.id.clone()));
        Ok(devices.into_iter().next().map(|d| d.id))
    }

    /// Creates the campaign unless it exists (deterministic ids make stages idempotent).
    async fn ensure_campaign(
        &self,
        d: &Drive,
        id: &str,
        jobs: &[(String, String)],
        runtime: Runtime,
    ) -> anyhow::Result<()> {
        if self.db.campaign(id).await?.is_some() {
            return Ok(());
        }
        let mut models: Vec<String> = Vec::new();
        let mut devices: Vec<String> = Vec::new();
        for (m, dev) in jobs {
            if !models.contains(m) {
                models.push(m.clone());
            }
            if !devices.contains(dev) {
                devices.push(dev.clone());
            }
        }
        let mut bench = d.req.bench.clone();
        if bench.inputs.is_empty() {
            bench.inputs = d.req.inputs.clone();
        }
        bench.runtime = runtime;
        let spec = CampaignSpec {
            models,
            devices: devices.clone(),
            selector: DeviceSelector::Ids(devices),
            bench,
            job_timeout_ms: d.req.job_timeout_ms,
            max_attempts: 3,
            max_parallel: d.req.max_parallel,
            reassign_within_class: true,
        };
        let rows: Vec<(String, String, String, i64)> = jobs
            .iter()
            .enumerate()
            .map(|(i, (m, dev))| (format!("{id}-j{i:03}"), m.clone(), dev.clone(), 3))
            .collect();
        self.db.create_campaign(id, &serde_json::to_value(&spec)?, &rows, now_i64()).await?;
        info!(campaign = %id, jobs = rows.len(), "pipeline campaign created");
        self.engine_poke.notify_one();
        Ok(())
    }

    /// Waits until the campaign ends (its jobs end by result, failure or timeout, so this ends).
    async fn wait_campaign(
        &self,
        pipeline: &str,
        id: &str,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        loop {
            if *stop.borrow() {
                return Err(Stop::Shutdown.into());
            }
            let p = self.db.pipeline(pipeline).await?;
            if p.is_none_or(|p| p.state == "cancelled") {
                return Err(Stop::Cancelled.into());
            }
            match self.db.campaign(id).await? {
                Some(c) if c.state != "running" => return Ok(()),
                Some(_) => {}
                None => bail!("campaign {id} vanished"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn job_errors(&self, campaign: &str) -> anyhow::Result<String> {
        let errors: Vec<String> = self
            .db
            .campaign_jobs(campaign)
            .await?
            .into_iter()
            .filter_map(|j| j.last_error.map(|e| format!("{}: {e}", j.device_id)))
            .collect();
        Ok(if errors.is_empty() { "no result".into() } else { errors.join("; ") })
    }

    /// This pipeline's measurements, by (class, model, runtime).
    async fn measurements(&self, pipeline: &str) -> anyhow::Result<HashMap<Key, ResultRow>> {
        let mut out = HashMap::new();
        for c in self.campaign_ids(pipeline).await? {
            for r in self.db.campaign_results(&c).await? {
                if let Some(class) = r.profile.clone() {
                    out.insert((class, r.model_id.clone(), report_runtime(&r.report)), r);
                }
            }
        }
        Ok(out)
    }

    /// The fleet's tract measurements of `class` before `before_ms`, as predictor points.
    async fn history(&self, class: &str, before_ms: i64) -> anyhow::Result<Vec<(Features, f64)>> {
        Ok(self
            .db
            .measured_with_features(class, before_ms)
            .await?
            .into_iter()
            .filter(|(_, _, r)| report_runtime(&r.report) == Runtime::Tract)
            .filter_map(|(_, f, r)| Some((serde_json::from_value(f).ok()?, r.latency.p50_ms)))
            .collect())
    }

    async fn make_candidates(
        &self,
        d: &mut Drive,
        live: &[String],
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let spec = d.req.data.clone();
        let data = blocking(move || EvalData::open(&spec)).await?;
        let data = Arc::new(data);
        if d.req.max_accuracy_drop.is_some() && !data.labelled() {
            bail!(
                "the data `{}` has no labels, so there is no accuracy: use --min-fidelity",
                d.req.data.describe()
            );
        }
        let parent_path = self.artifacts.path(&d.parent.sha256);
        let parent_graph = {
            let p = parent_path.clone();
            Arc::new(blocking(move || Ok(Graph::load(&p)?)).await?)
        };
        let dir = self.data_dir.join("pipelines").join(&d.row.id);
        std::fs::create_dir_all(&dir)?;
        if hone_learn::llm::is_llm(&parent_graph) {
            if !matches!(*data, EvalData::Sotu(_)) {
                bail!(
                    "the parent is a language model: its candidates are judged on a text corpus \
                     (data `sotu`), not `{}`",
                    d.req.data.describe()
                );
            }
            // The folder the distill method's students share (beside the candidates).
            let folder = hone_compress::method::llm_shared_dir(&dir).join("model");
            let p = parent_path.clone();
            let unpacked = blocking(move || {
                Ok(hone_learn::llm::ModelDir::unpack(&p, &folder)
                    .context("unpacking the parent language model")?
                    .dir)
            })
            .await?;
            d.llm_parent = Some(unpacked);
        }
        let inputs = match &d.llm_parent {
            Some(_) if d.req.inputs.is_empty() => hone_learn::llm::decode_shapes(
                &hone_learn::llm::card_of(&parent_graph)?.config,
                hone_learn::llm::DECODE_PAST,
            ),
            _ => inputs_of(&d.req, &d.parent),
        };
        {
            let (g, data, limit) = (parent_graph.clone(), data.clone(), d.req.validation_limit);
            let labelled = d.metric == "accuracy";
            let llm = d.llm_parent.clone();
            let q = blocking(move || match &llm {
                Some(folder) => validate_lm(folder, folder, limit),
                None => validate(&g, &g, &data, labelled, limit, Runtime::Tract),
            })
            .await?;
            d.parent_quality = Some(q);
            let (g, inputs) = (parent_graph.clone(), inputs.clone());
            let f = blocking(move || Ok(hone_compress::predict::features(&g, &dims(&g, &inputs))?))
                .await?;
            self.db.put_features(&d.parent.id, &serde_json::to_value(&f)?).await?;
        }
        let floor = self.floor(d);
        let methods: Vec<Arc<dyn CompressionMethod>> = d
            .req
            .methods
            .iter()
            .map(|m| -> anyhow::Result<Arc<dyn CompressionMethod>> {
                Ok(match (m.as_str(), &d.req.prune_grid, &d.req.distill, &d.req.ptq) {
                    ("prune", Some(grid), _, _) => Arc::new(PruneMethod::new(grid.clone())),
                    ("distill", _, Some(grid), _) => Arc::new(grid.clone()),
                    ("ptq", _, _, Some(grid)) => Arc::new(grid.clone()),
                    _ => Arc::from(hone_compress::method::method(m)?),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let existing: HashMap<String, CandidateRecord> = self
            .db
            .pipeline_candidates(&d.row.id)
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        for class in live {
            let target = Target::of_profile(class)?;
            let mut seq = 0i64;
            for method in &methods {
                for settings in method.grid(&target) {
                    seq += 1;
                    if *stop.borrow() {
                        return Err(Stop::Shutdown.into());
                    }
                    if self.db.pipeline(&d.row.id).await?.is_none_or(|p| p.state == "cancelled") {
                        return Err(Stop::Cancelled.into());
                    }
                    let id = format!("{}-{class}-{seq:02}", d.row.id);
                    if existing.get(&id).is_some_and(|c| c.status != "pending") {
                        continue;
                    }
                    let key = cache_key(&d.parent.sha256, &d.req, method.name(), &settings);
                    let mut rec = CandidateRecord {
                        id: id.clone(),
                        pipeline_id: d.row.id.clone(),
                        class: class.clone(),
                        seq,
                        method: method.name().to_owned(),
                        settings: settings.clone(),
                        runtime: "tract".into(),
                        precision: "f32".into(),
                        cache_key: key.clone(),
                        model_id: None,
                        status: "pending".into(),
                        note: None,
                        validation: None,
                        predicted_ms: None,
                    };
                    self.db.insert_candidate(&rec, now_i64()).await?;
                    let reused = self.db.candidate_by_key(&key).await?.filter(|c| c.id != id);
                    let (model_id, validation) = match reused {
                        Some(prev) => {
                            info!(candidate = %id, from = %prev.id, "reusing a candidate made earlier");
                            rec.runtime = prev.runtime.clone();
                            rec.precision = prev.precision.clone();
                            (prev.model_id, prev.validation)
                        }
                        None => match self
                            .make_one(
                                d,
                                &target,
                                method.clone(),
                                &settings,
                                &id,
                                &dir,
                                &data,
                                &parent_graph,
                                &parent_path,
                            )
                            .await
                        {
                            Ok((model, validation, runtime, precision)) => {
                                rec.runtime = runtime.to_string();
                                rec.precision = precision;
                                (Some(model), Some(validation))
                            }
                            Err(e) => {
                                rec.status = "failed".into();
                                rec.note = Some(format!("{e:#}"));
                                warn!(candidate = %id, error = %format!("{e:#}"), "candidate failed");
                                self.db.update_candidate(&rec, now_i64()).await?;
                                continue;
                            }
                        },
                    };
                    rec.model_id = model_id;
                    let q: Quality = validation
                        .as_ref()
                        .and_then(|v| serde_json::from_value(v["quality"].clone()).ok())
                        .unwrap_or_default();
                    rec.validation = validation;
                    let score = quality_value(&q, d.metric);
                    if score >= floor {
                        rec.status = "valid".into();
                    } else {
                        rec.status = "rejected".into();
                        rec.note = Some(format!(
                            "{} {:.2} % under the floor {:.2} %: no device time spent",
                            d.metric,
                            score * 100.0,
                            floor * 100.0
                        ));
                    }
                    self.db.update_candidate(&rec, now_i64()).await?;
                    info!(candidate = %id, status = %rec.status, quality = score, "candidate");
                }
            }
            self.store_progress(d).await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn make_one(
        &self,
        d: &Drive,
        target: &Target,
        method: Arc<dyn CompressionMethod>,
        settings: &serde_json::Value,
        id: &str,
        dir: &Path,
        data: &Arc<EvalData>,
        parent_graph: &Arc<Graph>,
        parent_path: &Path,
    ) -> anyhow::Result<(String, serde_json::Value, Runtime, String)> {
        let out = dir.join(format!("{id}.onnx"));
        let inputs = inputs_of(&d.req, &d.parent);
        let llm_parent = d.llm_parent.clone();
        let (target2, settings2, data2, parent2, path2, out2, inputs2) = (
            target.clone(),
            settings.clone(),
            data.clone(),
            parent_graph.clone(),
            parent_path.to_path_buf(),
            out.clone(),
            inputs.clone(),
        );
        let labelled = d.metric == "accuracy";
        let limit = d.req.validation_limit;
        let (candidate, quality, features, inputs) = blocking(move || {
            let ctx = MethodContext {
                parent: &path2,
                data: &data2,
                inputs: &inputs2,
                target: &target2,
                out: &out2,
            };
            let candidate = method.compress(&ctx, &settings2)?;
            let child = Graph::load(&candidate.model)?;
            let (quality, inputs) = match &llm_parent {
                Some(parent_dir) => {
                    // A language model is measured one decode step at a time, in its own shapes.
                    let folder = candidate.model.with_extension("llm");
                    let child_dir = hone_learn::llm::ModelDir::unpack(&candidate.model, &folder)
                        .context("a candidate of a language model must be one")?;
                    let q = validate_lm(&child_dir.dir, parent_dir, limit)?;
                    let c = &child_dir.card.config;
                    (q, hone_learn::llm::decode_shapes(c, hone_learn::llm::DECODE_PAST))
                }
                None => {
                    let q = validate(&child, &parent2, &data2, labelled, limit, candidate.runtime)?;
                    (q, inputs2)
                }
            };
            let features = hone_compress::predict::features(&child, &dims(&child, &inputs))?;
            Ok((candidate, quality, features, inputs))
        })
        .await?;
        let params = candidate.report["params_after"].as_u64();
        let validation = serde_json::json!({
            "quality": quality,
            "params": params,
            "macs": features.macs(),
            "report": candidate.report,
        });
        let lineage = serde_json::json!({
            "parent": d.parent.id,
            "parent_name": d.parent.name,
            "method": candidate.method,
            "settings": candidate.settings,
            "runtime": candidate.runtime.to_string(),
            "precision": candidate.precision.to_string(),
            "class": target.class,
            "pipeline": d.row.id,
            "data": d.req.data.describe(),
            "dataset": d.req.data.dataset,
            "validation": quality,
        });
        let name = format!(
            "{}-{}-{}",
            d.parent.name,
            candidate.method,
            id.trim_start_matches(&format!("{}-", d.row.id))
        );
        let (_, model) = crate::models::register_file(
            &self.db,
            &self.artifacts,
            &candidate.model,
            name,
            inputs,
            Some(lineage),
        )
        .await
        .map_err(|e| anyhow::anyhow!("registering the candidate: {e}"))?;
        self.db.put_features(&model.id, &serde_json::to_value(&features)?).await?;
        let _ = std::fs::remove_file(&out);
        Ok((model.id, validation, candidate.runtime, candidate.precision.to_string()))
    }

    /// The lowest accepted quality.
    fn floor(&self, d: &Drive) -> f64 {
        match (d.req.max_accuracy_drop, d.req.min_fidelity) {
            (Some(drop), _) => {
                d.parent_quality.and_then(|q| q.accuracy).unwrap_or(0.0) - drop / 100.0
            }
            (None, Some(f)) => f,
            (None, None) => 0.0,
        }
    }

    async fn measure(
        &self,
        d: &mut Drive,
        live: &[String],
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // One campaign per runtime and round: `{id}-m{r}` (tract), `{id}-m{r}-ort`.
        let campaign_id = |round: usize, runtime: Runtime| match runtime {
            Runtime::Tract => format!("{}-m{round}", d.row.id),
            other => format!("{}-m{round}-{other}", d.row.id),
        };
        if d.req.exhaustive {
            let mut jobs: BTreeMap<Runtime, Vec<(String, String)>> = BTreeMap::new();
            let cands = self.db.pipeline_candidates(&d.row.id).await?;
            let measured = self.measurements(&d.row.id).await?;
            let tried = self.tried(&d.row.id).await?;
            for class in live {
                for runtime in Runtime::ALL {
                    self.predict_class(d, class, runtime, &cands, &measured, &tried).await?;
                    let Some(dev) = self.device_of(class, runtime).await? else { continue };
                    for c in cands.iter().filter(|c| {
                        &c.class == class && c.status == "valid" && runtime_of(c) == runtime
                    }) {
                        if let Some(m) = &c.model_id {
                            jobs.entry(runtime).or_default().push((m.clone(), dev.clone()));
                        }
                    }
                }
            }
            for (runtime, jobs) in &jobs {
                self.ensure_campaign(d, &campaign_id(1, *runtime), jobs, *runtime).await?;
            }
            for runtime in jobs.keys() {
                self.wait_campaign(&d.row.id, &campaign_id(1, *runtime), stop).await?;
            }
        } else {
            for round in 1.. {
                let mut existing = Vec::new();
                for runtime in Runtime::ALL {
                    let id = campaign_id(round, runtime);
                    if self.db.campaign(&id).await?.is_some() {
                        existing.push(id);
                    }
                }
                if !existing.is_empty() {
                    for id in &existing {
                        self.wait_campaign(&d.row.id, id, stop).await?;
                    }
                    continue;
                }
                let measured = self.measurements(&d.row.id).await?;
                let tried = self.tried(&d.row.id).await?;
                let cands = self.db.pipeline_candidates(&d.row.id).await?;
                let mut jobs: BTreeMap<Runtime, Vec<(String, String)>> = BTreeMap::new();
                for class in live {
                    for runtime in Runtime::ALL {
                        let pick = self
                            .predict_class(d, class, runtime, &cands, &measured, &tried)
                            .await?;
                        if let Some(model) = pick
                            && let Some(dev) = self.device_of(class, runtime).await?
                        {
                            jobs.entry(runtime).or_default().push((model, dev));
                        }
                    }
                }
                if jobs.is_empty() {
                    break;
                }
                for (runtime, jobs) in &jobs {
                    self.ensure_campaign(d, &campaign_id(round, *runtime), jobs, *runtime).await?;
                }
                for runtime in jobs.keys() {
                    self.wait_campaign(&d.row.id, &campaign_id(round, *runtime), stop).await?;
                }
                self.store_progress(d).await?;
            }
        }
        // Final statuses.
        let measured = self.measurements(&d.row.id).await?;
        let attempted = self.attempted(&d.row.id).await?;
        for mut c in self.db.pipeline_candidates(&d.row.id).await? {
            if !matches!(c.status.as_str(), "valid" | "measured" | "unmeasured" | "skipped") {
                continue;
            }
            let Some(model) = c.model_id.clone() else { continue };
            let key = (c.class.clone(), model.clone(), runtime_of(&c));
            let (status, note) = if measured.contains_key(&key) {
                ("measured", None)
            } else if let Some(err) = attempted.get(&key) {
                ("unmeasured", Some(format!("device measurement failed: {err}")))
            } else if self.device_of(&c.class, runtime_of(&c)).await?.is_none() {
                let why = format!(
                    "not measured: no online device of {} runs {} (agents without --ort-lib, or \
                     whose library does not load)",
                    c.class,
                    runtime_of(&c)
                );
                ("skipped", Some(why))
            } else {
                let why = match c.predicted_ms {
                    Some(p) => format!(
                        "not measured: the predictor ranked it below the measured ones ({p:.3} ms predicted)"
                    ),
                    None => "not measured".to_owned(),
                };
                ("skipped", Some(why))
            };
            c.status = status.to_owned();
            c.note = note;
            self.db.update_candidate(&c, now_i64()).await?;
        }
        Ok(())
    }

    /// The ids of this pipeline's campaigns (`{pipeline}-parent`, `{pipeline}-m1`, ...).
    async fn campaign_ids(&self, pipeline: &str) -> anyhow::Result<Vec<String>> {
        let prefix = format!("{pipeline}-");
        Ok(self
            .db
            .campaigns(None)
            .await?
            .into_iter()
            .map(|c| c.id)
            .filter(|id| id.starts_with(&prefix))
            .collect())
    }

    /// Every job this pipeline sent to a device, keyed by (class, model, runtime): the class is
    /// the profile of the device the job is on now (a moved job stays in its class), the
    /// runtime its campaign's.
    async fn jobs(&self, pipeline: &str) -> anyhow::Result<Vec<(Key, JobRow)>> {
        let devices: HashMap<String, Option<String>> =
            self.db.devices().await?.into_iter().map(|d| (d.id, d.profile)).collect();
        let mut out = Vec::new();
        for c in self.campaign_ids(pipeline).await? {
            let runtime = match self.db.campaign(&c).await? {
                Some(row) => serde_json::from_value::<CampaignSpec>(row.spec)
                    .map(|spec| spec.bench.runtime)
                    .unwrap_or_default(),
                None => continue,
            };
            for j in self.db.campaign_jobs(&c).await? {
                if let Some(Some(class)) = devices.get(&j.device_id) {
                    out.push(((class.clone(), j.model_id.clone(), runtime), j));
                }
            }
        }
        Ok(out)
    }

    /// Every (class, model, runtime) this pipeline sent to a device, whatever came of it.
    async fn tried(&self, pipeline: &str) -> anyhow::Result<HashSet<Key>> {
        Ok(self.jobs(pipeline).await?.into_iter().map(|(key, _)| key).collect())
    }

    /// Jobs of this pipeline that ended without a result, by (class, model, runtime): their
    /// last error.
    async fn attempted(&self, pipeline: &str) -> anyhow::Result<HashMap<Key, String>> {
        Ok(self
            .jobs(pipeline)
            .await?
            .into_iter()
            .filter(|(_, j)| j.state == "failed")
            .map(|(key, j)| (key, j.last_error.unwrap_or_else(|| "failed".into())))
            .collect())
    }

    /// Refits `class`'s predictor, stores each unmeasured candidate's prediction, and returns
    /// the next model to measure under the objective, or `None` when the class's budget is
    /// spent or nothing promising is left.
    async fn predict_class(
        &self,
        d: &Drive,
        class: &str,
        runtime: Runtime,
        cands: &[CandidateRecord],
        measured: &HashMap<Key, ResultRow>,
        tried: &HashSet<Key>,
    ) -> anyhow::Result<Option<String>> {
        let stat = d.req.objective;
        // The fleet's history is tract's; another runtime learns from this pipeline alone.
        let mut points = match runtime {
            Runtime::Tract => d.history.get(class).cloned().unwrap_or_default(),
            _ => Vec::new(),
        };
        let ids: Vec<String> = cands.iter().filter_map(|c| c.model_id.clone()).collect();
        let feats = self.features_of(ids).await?;
        let parent_feats = self.features_of(vec![d.parent.id.clone()]).await?;
        let mut own: Vec<(Features, f64)> = Vec::new();
        for ((c, m, rt), r) in measured {
            if c != class || *rt != runtime {
                continue;
            }
            let f = feats.get(m).or_else(|| parent_feats.get(m));
            if let Some(f) = f {
                own.push((f.clone(), r.latency.p50_ms));
            }
        }
        points.extend(own.iter().cloned());
        let model = LatencyModel::fit(&points);
        let ratio = self.stat_ratio(d, class, measured, stat);
        let valid: Vec<&CandidateRecord> = cands
            .iter()
            .filter(|c| {
                c.class == class
                    && c.status == "valid"
                    && c.model_id.is_some()
                    && runtime_of(c) == runtime
            })
            .collect();
        let mut open: Vec<(&CandidateRecord, f64)> = Vec::new();
        for c in &valid {
            let m = c.model_id.as_ref().expect("filtered");
            let key = (class.to_owned(), m.clone(), runtime);
            if measured.contains_key(&key) || tried.contains(&key) {
                continue;
            }
            let Some(f) = feats.get(m) else { continue };
            let predicted = model.predict(f) * ratio;
            let mut rec = (*c).clone();
            rec.predicted_ms = Some(predicted);
            self.db.update_candidate(&rec, now_i64()).await?;
            open.push((c, predicted));
        }
        if d.req.exhaustive {
            return Ok(None);
        }
        // Attempts count, successful or not, so a failing candidate is not retried forever.
        let spent = valid
            .iter()
            .filter(|c| tried.contains(&(class.to_owned(), c.model_id.clone().unwrap(), runtime)))
            .count();
        let budget = d.req.max_measurements.unwrap_or_else(|| (valid.len() / 5).max(1));
        if spent >= budget || open.is_empty() {
            return Ok(None);
        }
        // Under a latency budget with fidelity as the measure, a parent within the budget cannot
        // be beaten (nothing is closer to the parent than the parent): no device time is spent.
        if let Some(b) = d.req.latency_budget_ms
            && d.metric == "fidelity"
            && measured
                .get(&(class.to_owned(), d.parent.id.clone(), Runtime::Tract))
                .is_some_and(|r| stat.of(&r.latency) <= b)
        {
            return Ok(None);
        }
        let quality = |c: &CandidateRecord| {
            c.validation
                .as_ref()
                .and_then(|v| serde_json::from_value::<Quality>(v["quality"].clone()).ok())
                .map(|q| quality_value(&q, d.metric))
                .unwrap_or(0.0)
        };
        let pick = match d.req.latency_budget_ms {
            None => open.iter().min_by(|a, b| a.1.total_cmp(&b.1)),
            Some(budget) => {
                let fits: Vec<&(&CandidateRecord, f64)> =
                    open.iter().filter(|(_, p)| *p <= budget * 1.1).collect();
                fits.into_iter()
                    .max_by(|a, b| quality(a.0).total_cmp(&quality(b.0)).then(b.1.total_cmp(&a.1)))
                    .or_else(|| open.iter().min_by(|a, b| a.1.total_cmp(&b.1)))
            }
        };
        Ok(pick.and_then(|(c, _)| c.model_id.clone()))
    }

    /// The ratio of the objective's statistic to the median on `class`, from this pipeline's
    /// measurements (the predictor learns medians).
    fn stat_ratio(
        &self,
        _d: &Drive,
        class: &str,
        measured: &HashMap<Key, ResultRow>,
        stat: super::request::Statistic,
    ) -> f64 {
        let ratios: Vec<f64> = measured
            .iter()
            .filter(|((c, _, _), _)| c == class)
            .map(|(_, r)| stat.of(&r.latency) / r.latency.p50_ms.max(1e-9))
            .filter(|r| r.is_finite())
            .collect();
        if ratios.is_empty() { 1.0 } else { ratios.iter().sum::<f64>() / ratios.len() as f64 }
    }

    async fn features_of(&self, models: Vec<String>) -> anyhow::Result<HashMap<String, Features>> {
        let mut out = HashMap::new();
        for m in models {
            if let Some(f) = self.db.features(&m).await?
                && let Ok(f) = serde_json::from_value(f)
            {
                out.insert(m, f);
            }
        }
        Ok(out)
    }

    async fn store_progress(&self, d: &Drive) -> anyhow::Result<()> {
        let result = self.result(d, "running", &d.row.stage).await?;
        let value = serde_json::to_value(&result)?;
        if !self
            .db
            .update_pipeline(&d.row.id, "running", &d.row.stage, None, Some(&value), now_i64())
            .await?
        {
            return Err(Stop::Cancelled.into());
        }
        Ok(())
    }

    /// The result as the database knows it now.
    async fn result(&self, d: &Drive, state: &str, stage: &str) -> anyhow::Result<PipelineResult> {
        let measured = self.measurements(&d.row.id).await?;
        let cands = self.db.pipeline_candidates(&d.row.id).await?;
        let devices: HashMap<String, crate::db::DeviceRow> =
            self.db.devices().await?.into_iter().map(|x| (x.id.clone(), x)).collect();
        let stat = d.req.objective;
        let floor = self.floor(d);
        let mut classes = Vec::new();
        let mut total = 0;
        for class in &d.classes {
            let profile = hone_firmware_profiles::find(class);
            let memory_mib = profile.map(|p| p.memory_available_bytes as f64 / 1048576.0);
            let mut class_results: Vec<&ResultRow> =
                measured.iter().filter(|((c, _, _), _)| c == class).map(|(_, r)| r).collect();
            class_results.sort_by(|a, b| a.job_id.cmp(&b.job_id));
            total += class_results.len();
            let mut devs: Vec<String> = class_results.iter().map(|r| r.device_id.clone()).collect();
            devs.sort();
            devs.dedup();
            let modes: Vec<String> =
                class_results.iter().filter_map(|r| emulation_word(&r.report)).collect();
            let measurement = match (modes.first(), modes.iter().all(|m| Some(m) == modes.first()))
            {
                (None, _) => "unmeasured".to_owned(),
                (Some(m), true) => m.clone(),
                (Some(_), false) => "mixed".to_owned(),
            };
            let mut runtimes: Vec<String> =
                class_results.iter().map(|r| runtime_words(&r.report)).collect();
            runtimes.sort();
            runtimes.dedup();
            let how = format!(
                "profile {class}, {measurement}, {} on devices {} ({} runs: warm-up {}, up to {} iterations or {} ms)",
                if runtimes.is_empty() { "tract".to_owned() } else { runtimes.join(" and ") },
                if devs.is_empty() { "-".to_owned() } else { devs.join(", ") },
                d.req.bench.mode.name(),
                d.req.bench.warmup,
                d.req.bench.max_iterations,
                d.req.bench.max_time_ms
            );
            let parent_q = d.parent_quality.unwrap_or_default();
            let parent = measured
                .get(&(class.clone(), d.parent.id.clone(), Runtime::Tract))
                .map(|r| figures(&d.parent.id, &d.parent.name, Some(r), &parent_q, d.metric));
            let mut rows = Vec::new();
            for c in cands.iter().filter(|c| &c.class == class) {
                let q: Quality = c
                    .validation
                    .as_ref()
                    .and_then(|v| serde_json::from_value(v["quality"].clone()).ok())
                    .unwrap_or_default();
                let r = c
                    .model_id
                    .as_ref()
                    .and_then(|m| measured.get(&(class.clone(), m.clone(), runtime_of(c))));
                let v = c.validation.clone().unwrap_or_default();
                rows.push(CandidateRow {
                    id: c.id.clone(),
                    model: c.model_id.clone(),
                    method: c.method.clone(),
                    settings: c.settings.clone(),
                    runtime: c.runtime.clone(),
                    precision: c.precision.clone(),
                    params: v["params"].as_u64(),
                    macs: v["macs"].as_u64(),
                    accuracy: q.accuracy,
                    fidelity: q.fidelity,
                    cosine: q.cosine,
                    perplexity: q.perplexity,
                    status: c.status.clone(),
                    note: c.note.clone(),
                    predicted_ms: c.predicted_ms,
                    p50_ms: r.map(|r| r.latency.p50_ms),
                    p90_ms: r.map(|r| r.latency.p90_ms),
                    p99_ms: r.map(|r| r.latency.p99_ms),
                    peak_rss_bytes: r.map(|r| r.peak_rss_bytes),
                    load_ms: r.map(|r| r.load_ms),
                    pareto: false,
                    winner: false,
                });
            }
            // The choice, among the parent and the measured candidates.
            let mut points = Vec::new();
            let mut keys: Vec<Option<usize>> = Vec::new();
            if let Some(r) = measured.get(&(class.clone(), d.parent.id.clone(), Runtime::Tract)) {
                points.push(Point {
                    key: "parent".into(),
                    latency_ms: stat.of(&r.latency),
                    quality: quality_value(&parent_q, d.metric),
                    secondary: super::select::tie_break(parent_q.cosine, parent_q.perplexity)
                        .unwrap_or(1.0),
                    rss_bytes: Some(r.peak_rss_bytes as f64),
                });
                keys.push(None);
            }
            for (i, row) in rows.iter().enumerate() {
                if let (Some(m), Some(model)) = (row_latency(row, stat), &row.model)
                    && matches!(row.status.as_str(), "measured" | "valid")
                {
                    let _ = model;
                    points.push(Point {
                        key: row.id.clone(),
                        latency_ms: m,
                        quality: row_quality(row, d.metric),
                        secondary: super::select::tie_break(row.cosine, row.perplexity)
                            .unwrap_or(f64::NAN),
                        rss_bytes: row.peak_rss_bytes.map(|b| b as f64),
                    });
                    keys.push(Some(i));
                }
            }
            let cap = match (memory_mib, d.req.memory_budget_mib) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let rules = Rules {
                quality_floor: floor,
                latency_budget_ms: d.req.latency_budget_ms,
                memory_cap_bytes: cap.map(|m| m * 1048576.0),
                statistic: stat.name().into(),
                metric: d.metric.into(),
            };
            let choice = choose(&points, &rules);
            for &p in &choice.pareto {
                if let Some(i) = keys[p] {
                    rows[i].pareto = true;
                }
            }
            let mut winner = None;
            if let Some(w) = choice.winner {
                match keys[w] {
                    Some(i) => {
                        rows[i].winner = true;
                        let row = &rows[i];
                        let rt = row.runtime.parse().unwrap_or_default();
                        let r = row
                            .model
                            .as_ref()
                            .and_then(|m| measured.get(&(class.clone(), m.clone(), rt)));
                        let q = Quality {
                            accuracy: row.accuracy,
                            fidelity: row.fidelity,
                            cosine: row.cosine,
                            perplexity: row.perplexity,
                            examples: 0,
                        };
                        let mut w =
                            figures(row.model.as_deref().unwrap_or(""), &row.id, r, &q, d.metric);
                        w.runtime = Some(row.runtime.clone());
                        w.precision = Some(row.precision.clone());
                        winner = Some(w);
                    }
                    None => winner = parent.clone(),
                }
            }
            let closest = choice
                .closest
                .iter()
                .map(|&p| match keys[p] {
                    Some(i) => rows[i].model.clone().unwrap_or_else(|| rows[i].id.clone()),
                    None => d.parent.id.clone(),
                })
                .collect();
            let reason = if points.is_empty() {
                format!("unmeasured: the parent has no measurement on {class}")
            } else if winner.as_ref().is_some_and(|w| w.model == d.parent.id) {
                format!("{}; no candidate beats the parent, which stays", choice.reason)
            } else {
                choice.reason.clone()
            };
            // The predictor, scored on measurements it had not learned from when it predicted.
            let held: Vec<(f64, f64)> = rows
                .iter()
                .filter_map(|r| Some((r.predicted_ms?, row_latency(r, stat)?)))
                .collect();
            let start = match d.history.get(class).map_or(0, Vec::len) {
                0 => "cold: no earlier measurement of this class; the parent's measurement scales a default cost model".to_owned(),
                n => format!("warm: {n} earlier measurements of this class"),
            };
            let within = held.iter().filter(|(p, m)| ((p - m) / m).abs() <= 0.10).count();
            let mape = held.iter().map(|(p, m)| ((p - m) / m).abs()).sum::<f64>()
                / held.len().max(1) as f64;
            let predictor = Some(PredictorReport {
                start,
                trained_on: d.history.get(class).map_or(0, Vec::len) + class_results.len(),
                held_out: held.len(),
                within_10pct: (!held.is_empty()).then(|| within as f64 / held.len() as f64),
                mean_abs_error_pct: (!held.is_empty()).then_some(mape * 100.0),
            });
            let _ = &devices;
            classes.push(ClassResult {
                class: class.clone(),
                measurement,
                how,
                devices: devs,
                memory_mib,
                parent,
                winner,
                reason,
                closest,
                candidates: rows,
                device_measurements: class_results.len(),
                predictor,
            });
        }
        // The winners beside any GPU measurement of the parent imported with provenance.
        let imported = self.db.imported_for_model(&d.parent.id).await?;
        let mut gpu_comparison = Vec::new();
        if !imported.is_empty() {
            let a = crate::compare::default_assumptions();
            for c in &classes {
                if let Some(w) = c.winner.as_ref().filter(|w| w.p50_ms.is_some()) {
                    gpu_comparison.push(crate::compare::cpu_line(
                        &c.class,
                        w.runtime.as_deref().unwrap_or("tract"),
                        w.p50_ms.unwrap_or(f64::NAN),
                        format!("the winner of {} ({}), {}", c.class, w.name, c.measurement),
                        &a,
                    ));
                }
            }
            gpu_comparison.extend(crate::compare::compare(&[], &imported, &a));
        }
        Ok(PipelineResult {
            pipeline: d.row.id.clone(),
            state: state.to_owned(),
            stage: stage.to_owned(),
            error: None,
            model: d.parent.id.clone(),
            model_name: d.parent.name.clone(),
            data: d.req.data.describe(),
            quality_metric: d.metric.to_owned(),
            objective: stat.name().to_owned(),
            constraints: Constraints {
                max_accuracy_drop: d.req.max_accuracy_drop,
                min_fidelity: d.req.min_fidelity,
                latency_budget_ms: d.req.latency_budget_ms,
                memory_budget_mib: d.req.memory_budget_mib,
            },
            exhaustive: d.req.exhaustive,
            classes,
            device_measurements: total,
            wall_seconds: (now_i64() - d.row.created_at_ms) as f64 / 1000.0,
            report: None,
            coordinator_cpu: cpu_name(),
            gpu_comparison,
            dataset: d.req.data.dataset.clone(),
        })
    }
}

/// The runtime a candidate record targets (`tract` for records written before runtimes).
fn runtime_of(c: &CandidateRecord) -> Runtime {
    c.runtime.parse().unwrap_or_default()
}

/// The runtime that measured a stored report (tract for reports older than runtimes).
fn report_runtime(report: &serde_json::Value) -> Runtime {
    serde_json::from_value::<hone_common::bench::Execution>(report["execution"].clone())
        .map(|e| e.runtime)
        .unwrap_or_default()
}

/// `tract 0.23.9` or `onnxruntime 1.31.1 (1 thread, no spinning)`, from a stored report.
fn runtime_words(report: &serde_json::Value) -> String {
    let name = report["runtime"].as_str().unwrap_or("tract").to_owned();
    match serde_json::from_value::<hone_common::bench::Execution>(report["execution"].clone()) {
        Ok(e) if e.runtime != Runtime::Tract => format!(
            "{name} ({} thread{}, {})",
            e.threads,
            if e.threads == 1 { "" } else { "s" },
            if e.spinning { "spinning" } else { "no spinning" }
        ),
        _ => name,
    }
}

fn row_latency(r: &CandidateRow, stat: super::request::Statistic) -> Option<f64> {
    match stat {
        super::request::Statistic::P50 => r.p50_ms,
        super::request::Statistic::P90 => r.p90_ms,
        super::request::Statistic::P99 => r.p99_ms,
    }
}

fn row_quality(r: &CandidateRow, metric: &str) -> f64 {
    if metric == "accuracy" { r.accuracy } else { r.fidelity }.unwrap_or(0.0)
}

fn quality_value(q: &Quality, metric: &str) -> f64 {
    if metric == "accuracy" { q.accuracy } else { q.fidelity }.unwrap_or(0.0)
}

fn figures(model: &str, name: &str, r: Option<&ResultRow>, q: &Quality, _metric: &str) -> Figures {
    Figures {
        model: model.to_owned(),
        name: name.to_owned(),
        p50_ms: r.map(|r| r.latency.p50_ms),
        p90_ms: r.map(|r| r.latency.p90_ms),
        p99_ms: r.map(|r| r.latency.p99_ms),
        peak_rss_bytes: r.map(|r| r.peak_rss_bytes),
        load_ms: r.map(|r| r.load_ms),
        accuracy: q.accuracy,
        fidelity: q.fidelity,
        cosine: q.cosine,
        perplexity: q.perplexity,
        runtime: r.map(|r| report_runtime(&r.report).to_string()),
        precision: None,
    }
}

/// `emulated`, `native`, `unthrottled` or `none`, from a stored report.
fn emulation_word(report: &serde_json::Value) -> Option<String> {
    let status: hone_common::bench::EmulationStatus =
        serde_json::from_value(report["emulation"]["status"].clone()).ok()?;
    Some(
        match status {
            hone_common::bench::EmulationStatus::Emulated => "emulated",
            hone_common::bench::EmulationStatus::Unthrottled { .. } => "unthrottled",
            hone_common::bench::EmulationStatus::Native => "native",
            _ => "none",
        }
        .to_owned(),
    )
}

/// The coordinator's CPU model, for provenance.
pub use hone_compress::cpu_name;

fn now_i64() -> i64 {
    now_ms() as i64
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.context("a compression task panicked")?
}

/// The shapes the model is benchmarked with: the request's, else those stored with it.
fn inputs_of(req: &PipelineRequest, model: &ModelRow) -> hone_common::shapes::InputShapes {
    if !req.inputs.is_empty() {
        return req.inputs.clone();
    }
    model
        .summary
        .get("input_shapes")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// Batch-1 dims of the true inputs, as agents benchmark them (dynamic dims at the default).
fn dims(g: &Graph, given: &hone_common::shapes::InputShapes) -> Vec<(String, Vec<usize>)> {
    let names = hone_learn::eval::tract::true_inputs(g);
    g.inputs()
        .into_iter()
        .filter(|i| names.contains(&i.name))
        .filter_map(|i| {
            let d = hone_compress::prune::input_dims(
                &i,
                1,
                hone_common::shapes::DEFAULT_DIM as usize,
                given,
            )?;
            Some((i.name, d))
        })
        .collect()
}

/// Positions of the validation part a language model is judged on by default.
const LM_VALIDATION_POSITIONS: usize = 1024;

/// A language model against its parent on the validation part: next-token agreement as the
/// fidelity, and its perplexity (`limit`: positions).
fn validate_lm(model: &Path, parent: &Path, limit: Option<usize>) -> anyhow::Result<Quality> {
    let (m, p) =
        (hone_learn::llm::ModelDir::open(model)?, hone_learn::llm::ModelDir::open(parent)?);
    let positions = limit.unwrap_or(LM_VALIDATION_POSITIONS).max(1);
    let q = hone_compress::distill::lm::lm_quality(&m, &p, Part::Validation, positions, 128)?;
    Ok(Quality {
        accuracy: None,
        fidelity: Some(q.agreement),
        cosine: None,
        perplexity: Some(q.perplexity),
        examples: q.positions,
    })
}

/// Accuracy (labelled) or fidelity to `parent` on the validation part, with the model run in
/// `runtime` (the runtime it targets; the parent in tract).
fn validate(
    model: &Graph,
    parent: &Graph,
    data: &EvalData,
    labelled: bool,
    limit: Option<usize>,
    runtime: Runtime,
) -> anyhow::Result<Quality> {
    let bs = 16;
    let rt = match runtime {
        Runtime::Tract => hone_learn::eval::EvalRuntime::Tract,
        Runtime::Ort => hone_learn::eval::EvalRuntime::Ort { threads: 1 },
    };
    let fidelity = |m: &Graph| {
        hone_learn::eval::fidelity_in(m, parent, data, Part::Validation, bs, limit, None, rt)
    };
    if labelled {
        let f = fidelity(model)?;
        let a = match f.model_accuracy {
            Some(a) => a,
            None => {
                hone_learn::eval::accuracy_in(model, data, Part::Validation, bs, limit, None, rt)?
            }
        };
        Ok(Quality {
            accuracy: Some(a.value()),
            fidelity: Some(f.top1_agreement),
            cosine: Some(f.mean_cosine),
            perplexity: None,
            examples: a.total,
        })
    } else {
        let f = fidelity(model)?;
        Ok(Quality {
            accuracy: None,
            fidelity: Some(f.top1_agreement),
            cosine: Some(f.mean_cosine),
            perplexity: None,
            examples: f.examples,
        })
    }
}

/// (parent, data, method, settings, shapes) → a digest: the same key is the same candidate.
fn cache_key(
    parent_sha: &str,
    req: &PipelineRequest,
    method: &str,
    settings: &serde_json::Value,
) -> String {
    let mut h = sha2::Sha256::new();
    for part in [
        parent_sha.to_owned(),
        serde_json::to_string(&req.data).unwrap_or_default(),
        method.to_owned(),
        settings.to_string(),
        serde_json::to_string(&req.inputs).unwrap_or_default(),
        format!("{:?}", req.validation_limit),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}
