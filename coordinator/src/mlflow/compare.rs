//! `coordinator experiments compare`: candidates (and the parents) of pipelines read back from
//! MLflow, one row each, so results from different days and machines line up in one table.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::client::{MlflowClient, Run};

/// One compared model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    /// The MLflow run.
    pub run_id: String,
    /// Its experiment's name.
    pub experiment: String,
    /// The Hone pipeline.
    pub pipeline: String,
    /// The candidate id, or `parent`.
    pub candidate: String,
    /// Method (`prune`, `distill`, `ptq`; `-` for the parent).
    pub method: String,
    /// Main settings in words (criterion, sparsity, passes, students).
    pub settings: String,
    /// Runtime.
    pub runtime: String,
    /// Precision.
    pub precision: String,
    /// Model size, bytes.
    pub size_bytes: Option<f64>,
    /// Float parameters.
    pub params: Option<f64>,
    /// `accuracy` or `fidelity`.
    pub quality_metric: String,
    /// Its value.
    pub quality: Option<f64>,
    /// Per device class: p50, p99 (ms) and peak RSS (MiB) measured on it.
    pub classes: BTreeMap<String, ClassFigures>,
    /// Whether it won its class.
    pub winner: bool,
    /// Hone's status of the candidate.
    pub status: String,
}

/// A model's figures on one class.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ClassFigures {
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// p99, ms.
    pub p99_ms: Option<f64>,
    /// Peak RSS, MiB.
    pub peak_rss_mib: Option<f64>,
}

/// What `experiments compare` prints with `--json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    /// The tracking server.
    pub mlflow: String,
    /// The device classes found, in column order.
    pub classes: Vec<String>,
    /// The rows, by pipeline then candidate.
    pub rows: Vec<Row>,
}

fn candidate_row(run: &Run, experiment: &str) -> Row {
    let mut classes = BTreeMap::new();
    for (k, v) in &run.metrics {
        if let Some((class, stat)) = k.split_once('/') {
            let f: &mut ClassFigures = classes.entry(class.to_string()).or_default();
            match stat {
                "p50_ms" => f.p50_ms = Some(*v),
                "p99_ms" => f.p99_ms = Some(*v),
                "peak_rss_mib" => f.peak_rss_mib = Some(*v),
                _ => {}
            }
        }
    }
    classes.retain(|_, f: &mut ClassFigures| f.p50_ms.is_some());
    let mut settings = Vec::new();
    for (k, v) in &run.params {
        let known = ["method", "runtime", "precision", "parent", "parent_sha256", "device_class"];
        if !known.contains(&k.as_str()) {
            settings.push(format!("{k}={v}"));
        }
    }
    let quality_metric = if run.metric("accuracy").is_some() { "accuracy" } else { "fidelity" };
    Row {
        run_id: run.id.clone(),
        experiment: experiment.to_string(),
        pipeline: run.tag("hone.pipeline").unwrap_or_default().to_string(),
        candidate: run.tag("hone.candidate").unwrap_or(&run.name).to_string(),
        method: run.param("method").unwrap_or("-").to_string(),
        settings: settings.join(" "),
        runtime: run.param("runtime").unwrap_or("tract").to_string(),
        precision: run.param("precision").unwrap_or("f32").to_string(),
        size_bytes: run.metric("size_bytes"),
        params: run.metric("params"),
        quality_metric: quality_metric.to_string(),
        quality: run.metric(quality_metric),
        classes,
        winner: run.tag("hone.winner") == Some("true"),
        status: run.tag("hone.status").unwrap_or_default().to_string(),
    }
}

/// The parent's row of a pipeline run (its per-class figures are the pipeline's
/// `CLASS/parent_p50_ms`).
fn parent_row(run: &Run, experiment: &str) -> Row {
    let mut classes = BTreeMap::new();
    let mut quality = None;
    let mut metric = "fidelity".to_string();
    for (k, v) in &run.metrics {
        if let Some((class, stat)) = k.split_once('/') {
            if stat == "parent_p50_ms" {
                classes.insert(
                    class.to_string(),
                    ClassFigures { p50_ms: Some(*v), ..Default::default() },
                );
            } else if let Some(m) = stat.strip_prefix("parent_") {
                quality = Some(*v);
                metric = m.to_string();
            }
        }
    }
    Row {
        run_id: run.id.clone(),
        experiment: experiment.to_string(),
        pipeline: run.tag("hone.pipeline").unwrap_or_default().to_string(),
        candidate: "parent".into(),
        method: "-".into(),
        settings: run.param("model_name").unwrap_or_default().to_string(),
        runtime: "tract".into(),
        precision: "f32".into(),
        size_bytes: None,
        params: None,
        quality_metric: metric,
        quality,
        classes,
        winner: false,
        status: "parent".into(),
    }
}

/// Reads the runs to compare: given run ids (a pipeline run brings its candidates), or every
/// pipeline of an experiment.
pub async fn compare(
    client: &MlflowClient,
    runs: &[String],
    experiment: Option<&str>,
) -> anyhow::Result<Comparison> {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut pipeline_runs: Vec<Run> = Vec::new();
    let mut candidates: Vec<Run> = Vec::new();
    if let Some(e) = experiment {
        let id = client
            .experiment_id(e)
            .await?
            .ok_or_else(|| anyhow::anyhow!("MLflow at {} has no experiment `{e}`", client.url()))?;
        names.insert(id.clone(), e.to_string());
        for r in client.search_runs(&[id], "tags.`hone.kind` != ''").await? {
            match r.tag("hone.kind") {
                Some("pipeline") => pipeline_runs.push(r),
                Some("candidate") => candidates.push(r),
                _ => {}
            }
        }
    }
    for id in runs {
        let r = client.get_run(id).await.map_err(|e| anyhow::anyhow!("run `{id}`: {e}"))?;
        match r.tag("hone.kind") {
            Some("pipeline") => {
                let p = r.tag("hone.pipeline").unwrap_or_default().to_string();
                let filter = format!(
                    "tags.`hone.pipeline` = '{}' and tags.`hone.kind` = 'candidate'",
                    super::client::quote(&p)
                );
                candidates.extend(
                    client.search_runs(std::slice::from_ref(&r.experiment_id), &filter).await?,
                );
                pipeline_runs.push(r);
            }
            Some("candidate") => candidates.push(r),
            other => anyhow::bail!(
                "run `{id}` is not a Hone pipeline or candidate run (hone.kind = {})",
                other.unwrap_or("none")
            ),
        }
    }
    let mut seen = BTreeSet::new();
    let mut rows = Vec::new();
    for r in pipeline_runs.iter().chain(&candidates) {
        if !seen.insert(r.id.clone()) {
            continue;
        }
        if !names.contains_key(&r.experiment_id) {
            names.insert(r.experiment_id.clone(), r.experiment_id.clone());
        }
        let e = names[&r.experiment_id].clone();
        rows.push(if r.tag("hone.kind") == Some("pipeline") {
            parent_row(r, &e)
        } else {
            candidate_row(r, &e)
        });
    }
    rows.sort_by(|a, b| {
        (a.pipeline.as_str(), a.candidate != "parent", a.candidate.as_str()).cmp(&(
            b.pipeline.as_str(),
            b.candidate != "parent",
            b.candidate.as_str(),
        ))
    });
    let classes: BTreeSet<String> = rows.iter().flat_map(|r| r.classes.keys().cloned()).collect();
    Ok(Comparison {
        mlflow: client.url().to_string(),
        classes: classes.into_iter().collect(),
        rows,
    })
}

/// The table `experiments compare` prints.
pub fn table(c: &Comparison) -> String {
    let mut head = vec![
        "pipeline".to_string(),
        "candidate".into(),
        "method".into(),
        "settings".into(),
        "runtime".into(),
        "size MB".into(),
        "quality".into(),
    ];
    for class in &c.classes {
        head.push(format!("{class} p50 ms"));
    }
    head.push("winner".into());
    let mut lines = vec![head];
    for r in &c.rows {
        let mut l = vec![
            r.pipeline.clone(),
            r.candidate.clone(),
            r.method.clone(),
            r.settings.chars().take(48).collect(),
            format!("{}/{}", r.runtime, r.precision),
            r.size_bytes.map(|b| format!("{:.2}", b / 1e6)).unwrap_or_else(|| "-".into()),
            r.quality
                .map(|q| format!("{} {:.2} %", r.quality_metric, q * 100.0))
                .unwrap_or_else(|| "-".into()),
        ];
        for class in &c.classes {
            l.push(
                r.classes
                    .get(class)
                    .and_then(|f| f.p50_ms)
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        l.push(if r.winner { "yes".into() } else { String::new() });
        lines.push(l);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tags: &[(&str, &str)], params: &[(&str, &str)], metrics: &[(&str, f64)]) -> Run {
        let s =
            |xs: &[(&str, &str)]| xs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        Run {
            id: "r1".into(),
            artifact_uri: String::new(),
            name: "n".into(),
            experiment_id: "1".into(),
            status: "FINISHED".into(),
            params: s(params),
            metrics: metrics.iter().map(|(a, b)| (a.to_string(), *b)).collect(),
            tags: s(tags),
        }
    }

    #[test]
    fn a_candidate_run_reads_back_into_a_row_with_its_class_figures() {
        let r = run(
            &[
                ("hone.kind", "candidate"),
                ("hone.pipeline", "p1"),
                ("hone.candidate", "p1-rpi4-3"),
                ("hone.winner", "true"),
            ],
            &[
                ("method", "prune"),
                ("runtime", "tract"),
                ("criterion", "taylor"),
                ("sparsity", "0.3"),
            ],
            &[
                ("accuracy", 0.81),
                ("rpi4/p50_ms", 12.5),
                ("rpi4/p99_ms", 14.0),
                ("rpi4/predicted_ms", 11.0),
                ("size_bytes", 2e6),
            ],
        );
        let row = candidate_row(&r, "exp");
        assert_eq!(row.candidate, "p1-rpi4-3");
        assert_eq!(row.quality_metric, "accuracy");
        assert_eq!(row.quality, Some(0.81));
        assert_eq!(row.classes["rpi4"].p50_ms, Some(12.5));
        assert_eq!(row.classes["rpi4"].p99_ms, Some(14.0));
        assert!(row.winner);
        assert!(row.settings.contains("criterion=taylor") && row.settings.contains("sparsity=0.3"));
        assert!(!row.settings.contains("method="), "{}", row.settings);
        let c = Comparison {
            mlflow: "x".into(),
            classes: vec!["rpi4".into(), "rpi5".into()],
            rows: vec![row],
        };
        let t = table(&c);
        assert!(
            t.contains("rpi4 p50 ms") && t.contains("12.50") && t.contains("accuracy 81.00 %"),
            "{t}"
        );
    }

    #[test]
    fn a_pipeline_run_gives_the_parent_row() {
        let r = run(
            &[("hone.kind", "pipeline"), ("hone.pipeline", "p1")],
            &[("model_name", "minilm")],
            &[
                ("rpi4/parent_p50_ms", 20.0),
                ("rpi4/parent_accuracy", 0.8),
                ("rpi4/winner_p50_ms", 10.0),
            ],
        );
        let row = parent_row(&r, "exp");
        assert_eq!(row.candidate, "parent");
        assert_eq!(row.classes["rpi4"].p50_ms, Some(20.0));
        assert_eq!(row.quality, Some(0.8));
        assert_eq!(row.quality_metric, "accuracy");
    }
}
