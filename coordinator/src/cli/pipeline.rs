//! `coordinator compress`, `pipeline show|list|cancel` and `report`: the compression pipeline
//! through the API.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::Client;
use super::args::ApiArgs;
use super::print::print_json;
use crate::api::PipelineView;
use crate::pipeline::request::{PipelineRequest, Statistic, default_bench};
use crate::pipeline::result::PipelineResult;

/// Options of `coordinator compress`.
#[derive(Debug, clap::Args)]
pub(super) struct CompressArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The parent: a registered model (id, name or digest prefix), or an ONNX file to upload.
    #[arg(long, required_unless_present = "from_suggestion")]
    model: Option<String>,
    /// The MLflow experiment to write the pipeline to, when the coordinator writes to MLflow
    /// (default: the parent model's name).
    #[arg(long)]
    experiment: Option<String>,
    /// Data: fashion-mnist, mnist, vader, photos, sotu (a text corpus, for a language model), or
    /// a path on the coordinator (an image folder, a JSONL/CSV of texts,
    /// .npz/.npy/.safetensors tensors), or a DVC data set in a repository on the coordinator
    /// (`dvc://REPO/PATH@REV`); see docs/data.md.
    #[arg(long, required_unless_present = "from_suggestion")]
    data: Option<String>,
    /// Image size HxW for image folders (default: the model's declared size).
    #[arg(long)]
    image_size: Option<String>,
    /// Per-channel mean for image folders, e.g. 0.485,0.456,0.406 (after scaling to 0..1).
    #[arg(long, value_delimiter = ',')]
    mean: Option<Vec<f32>>,
    /// Per-channel std for image folders, e.g. 0.229,0.224,0.225.
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// tokenizer.json for text data (default: the one beside the model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Device classes: profile:NAME (or NAME), comma-separated.
    #[arg(long, value_delimiter = ',', required_unless_present = "from_suggestion")]
    devices: Vec<String>,
    /// Largest accepted accuracy loss, in percentage points (labelled data).
    #[arg(long)]
    max_accuracy_drop: Option<f64>,
    /// Smallest accepted top-1 agreement with the parent, 0..1 (data without labels).
    #[arg(long)]
    min_fidelity: Option<f64>,
    /// Latency budget, ms: the winner is the most accurate model within it.
    #[arg(long)]
    latency_budget_ms: Option<f64>,
    /// Peak RSS budget, MiB (each class's memory applies too).
    #[arg(long)]
    memory_budget_mib: Option<f64>,
    /// Latency statistic of the objective.
    #[arg(long, default_value = "p50")]
    objective: Statistic,
    /// Device measurements of candidates per class (default: a fifth of the valid ones).
    #[arg(long)]
    max_measurements: Option<usize>,
    /// Methods, comma-separated: prune, distill, ptq (post-training: the parent and its int8
    /// forms in ONNX Runtime).
    #[arg(long, value_delimiter = ',', default_value = "prune")]
    methods: Vec<String>,
    /// Pruning sparsities of the grid, comma-separated (default 0.15,0.3,0.45,0.6).
    #[arg(long, value_delimiter = ',')]
    sparsities: Option<Vec<f64>>,
    /// Pruning: also make each candidate with its layers refitted by least squares on
    /// calibration examples (no training).
    #[arg(long)]
    reconstruct: bool,
    /// Distillation: optimizer steps per student (default 200).
    #[arg(long)]
    distill_steps: Option<usize>,
    /// Distillation: the students' (layers, width) shares, as L:W pairs comma-separated
    /// (default 0.5:1,0.33:1,0.33:0.5,1:0.5).
    #[arg(long, value_delimiter = ',')]
    students: Option<Vec<String>>,
    /// Distillation: the output divergence (default fkl for a classifier, rkl for a language
    /// model).
    #[arg(long)]
    distill_loss: Option<hone_learn::train::kd::Divergence>,
    /// Measure every valid candidate (the reference for the guided search).
    #[arg(long)]
    exhaustive: bool,
    /// Input shapes NAME=1x3x224x224 for inputs whose declared dims are not fixed.
    #[arg(long = "input")]
    inputs: Vec<String>,
    /// Validation examples per candidate (default: the whole validation part; for a language
    /// model, positions of the validation addresses, default 1024).
    #[arg(long)]
    validation_limit: Option<usize>,
    /// At most this many measurements at once (1 when the agents share one host).
    #[arg(long)]
    max_parallel: Option<u32>,
    /// Pipeline id (makes creation idempotent).
    #[arg(long)]
    id: Option<String>,
    /// Return once the pipeline is created instead of waiting for its result.
    #[arg(long)]
    no_wait: bool,
    /// Deploy each class's winner to the class's devices when the pipeline ends (with the
    /// rollout settings below).
    #[arg(long)]
    deploy: bool,
    #[command(flatten)]
    rollout: super::deploy::RolloutArgs,
    /// Run the pipeline request of a re-compression suggestion (`coordinator suggestions
    /// list`); --data, --model and --devices replace the suggestion's when given.
    #[arg(long)]
    from_suggestion: Option<String>,
}

/// `pipeline` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(super) enum PipelineCmd {
    /// One pipeline: progress, per-class winners and the candidate table.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// Pipeline id.
        id: String,
    },
    /// Every pipeline.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a pipeline (its queued measurements are cancelled).
    Cancel {
        #[command(flatten)]
        api: ApiArgs,
        /// Pipeline id.
        id: String,
    },
}

/// Options of `coordinator report`.
#[derive(Debug, clap::Args)]
pub(super) struct ReportArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The pipeline.
    #[arg(long)]
    pipeline: String,
    /// The HTML file to write.
    #[arg(long)]
    out: PathBuf,
}

/// The request `compress` sends.
pub(super) fn request(args: &CompressArgs, model: String) -> anyhow::Result<PipelineRequest> {
    let data_text = args.data.as_deref().context("--data is required")?;
    let mut data = hone_learn::eval::DataSpec::parse(data_text)?;
    // A path that exists here is sent whole, for a coordinator on this machine.
    if let hone_learn::eval::DataSource::Path(p) = &data.source
        && let Ok(full) = std::fs::canonicalize(p)
    {
        data.source = hone_learn::eval::DataSource::Path(full);
    }
    // So is a DVC repository found here (the coordinator reads it and checks its objects).
    if let hone_learn::eval::DataSource::Dvc(r) = &data.source
        && let Ok(r) = hone_learn::data::dvc::DvcRef::parse(r)
        && let Ok(loc) = r.locate()
        && let Ok(root) = std::fs::canonicalize(&loc.root)
        && let Ok(inside) = r.path.strip_prefix(&loc.root)
    {
        let full = hone_learn::data::dvc::DvcRef { path: root.join(inside), rev: r.rev.clone() };
        data.source = hone_learn::eval::DataSource::Dvc(full.to_string());
    }
    if let Some(size) = &args.image_size {
        let (h, w) = size
            .split_once(['x', 'X'])
            .and_then(|(h, w)| Some((h.parse().ok()?, w.parse().ok()?)))
            .with_context(|| format!("--image-size is HxW, e.g. 224x224: `{size}`"))?;
        data.image_size = Some([h, w]);
    }
    for (name, v, slot) in
        [("--mean", &args.mean, &mut data.mean), ("--std", &args.std, &mut data.std)]
    {
        if let Some(v) = v {
            let arr: [f32; 3] = v
                .as_slice()
                .try_into()
                .map_err(|_| anyhow::anyhow!("{name} takes three numbers, one per channel"))?;
            *slot = Some(arr);
        }
    }
    data.tokenizer.clone_from(&args.tokenizer);
    let prune_grid = (args.sparsities.is_some() || args.reconstruct).then(|| {
        let mut grid = hone_compress::PruneGrid::default();
        if let Some(s) = &args.sparsities {
            grid.sparsities.clone_from(s);
        }
        if args.reconstruct {
            grid.reconstruct = vec![false, true];
        }
        grid
    });
    let req = PipelineRequest {
        id: args.id.clone(),
        model,
        data,
        devices: args.devices.clone(),
        max_accuracy_drop: args.max_accuracy_drop,
        min_fidelity: args.min_fidelity,
        latency_budget_ms: args.latency_budget_ms,
        memory_budget_mib: args.memory_budget_mib,
        objective: args.objective,
        max_measurements: args.max_measurements,
        methods: args.methods.clone(),
        prune_grid,
        distill: distill_grid(args)?,
        ptq: None,
        exhaustive: args.exhaustive,
        inputs: hone_common::shapes::InputShapes::parse_all(&args.inputs)?,
        bench: default_bench(),
        job_timeout_ms: 180_000,
        max_parallel: args.max_parallel,
        validation_limit: args.validation_limit,
        deploy: args.deploy.then(|| args.rollout.request("", "")),
        from_suggestion: None,
        experiment: args.experiment.clone(),
    };
    req.check().map_err(anyhow::Error::msg)?;
    Ok(req)
}

/// The distillation settings of `compress`, when any is given.
fn distill_grid(args: &CompressArgs) -> anyhow::Result<Option<hone_compress::DistillMethod>> {
    if args.distill_steps.is_none() && args.students.is_none() && args.distill_loss.is_none() {
        return Ok(None);
    }
    let mut m = hone_compress::DistillMethod::default();
    if let Some(steps) = args.distill_steps {
        anyhow::ensure!(steps > 0, "--distill-steps must be at least 1");
        m.steps = steps;
    }
    if let Some(list) = &args.students {
        m.students = list
            .iter()
            .map(|pair| {
                let (l, w) = pair
                    .split_once(':')
                    .and_then(|(l, w)| Some((l.parse::<f64>().ok()?, w.parse::<f64>().ok()?)))
                    .filter(|(l, w)| *l > 0.0 && *l <= 1.0 && *w > 0.0 && *w <= 1.0)
                    .with_context(|| {
                        format!(
                            "--students takes LAYERS:WIDTH shares in (0, 1], e.g. 0.5:1: `{pair}`"
                        )
                    })?;
                Ok((l, w))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    m.loss = args.distill_loss;
    Ok(Some(m))
}

/// `coordinator compress`.
pub(super) async fn compress(args: CompressArgs) -> anyhow::Result<i32> {
    let client = args.api.client()?;
    if let Some(id) = &args.from_suggestion {
        return from_suggestion(&client, &args, id).await;
    }
    let model_arg = args.model.clone().context("--model is required")?;
    // A local ONNX file is uploaded first; anything else names a registered model.
    let model = if model_arg.ends_with(".onnx") && std::path::Path::new(&model_arg).is_file() {
        let path = PathBuf::from(&model_arg);
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let inputs = hone_common::shapes::InputShapes::parse_all(&args.inputs)?;
        let m = client.upload_model(&path, &name, &inputs).await?;
        m["id"].as_str().unwrap_or_default().to_owned()
    } else {
        model_arg
    };
    let req = request(&args, model)?;
    run_request(&client, &args, &req).await
}

/// `compress --from-suggestion ID`: the suggestion's ready request, with --model, --data and
/// --devices replacing its own when given, and --deploy adding the rollout.
async fn from_suggestion(client: &Client, args: &CompressArgs, id: &str) -> anyhow::Result<i32> {
    let s: crate::db::SuggestionRow = client.get(&format!("/api/v1/suggestions/{id}")).await?;
    let mut value = s.request.clone();
    if let Some(m) = &args.model {
        value["model"] = serde_json::json!(m);
    }
    if let Some(d) = &args.data {
        value["data"] = serde_json::json!(d);
    }
    if !args.devices.is_empty() {
        value["devices"] = serde_json::json!(args.devices);
    }
    if value.get("data").is_none_or(|d| d.is_null()) {
        bail!(
            "suggestion {id} has no data to validate on (the model was deployed by hand without              --reference-data): give --data"
        );
    }
    if args.id.is_some() {
        value["id"] = serde_json::json!(args.id);
    }
    let mut req: PipelineRequest = serde_json::from_value(value)
        .with_context(|| format!("suggestion {id}'s request is not a pipeline request"))?;
    if args.deploy {
        req.deploy = Some(args.rollout.request("", ""));
    }
    req.from_suggestion = Some(id.to_string());
    req.check().map_err(anyhow::Error::msg)?;
    if !args.api.json {
        eprintln!("suggestion {id}: {}", s.reason);
    }
    run_request(client, args, &req).await
}

async fn run_request(
    client: &Client,
    args: &CompressArgs,
    req: &PipelineRequest,
) -> anyhow::Result<i32> {
    let view: PipelineView = client.post("/api/v1/pipelines", req).await?;
    if !args.api.json {
        eprintln!("pipeline {} created", view.id);
    }
    if args.no_wait {
        if args.api.json {
            print_json(&serde_json::to_value(&view)?);
        } else {
            println!("{}", view.id);
        }
        return Ok(0);
    }
    let view = wait(client, &view.id, !args.api.json).await?;
    finish(&view, args.api.json)
}

/// Prints a pipeline and returns the exit code: 0 done, 2 failed or cancelled.
pub(super) fn finish(view: &PipelineView, json: bool) -> anyhow::Result<i32> {
    match (&view.result, json) {
        (Some(r), true) => print_json(&serde_json::to_value(r)?),
        (Some(r), false) => print_result(r),
        (None, true) => print_json(&serde_json::to_value(view)?),
        (None, false) => println!("pipeline {}: {} ({})", view.id, view.state, view.stage),
    }
    if let Some(e) = &view.error {
        eprintln!("pipeline {} {}: {e}", view.id, view.state);
    }
    Ok(if view.state == "done" { 0 } else { 2 })
}

/// Polls until the pipeline ends, showing its stage and measurements on a terminal.
pub(super) async fn wait(client: &Client, id: &str, show: bool) -> anyhow::Result<PipelineView> {
    let tty = show && std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let view: PipelineView = client.get(&format!("/api/v1/pipelines/{id}")).await?;
        if matches!(view.state.as_str(), "done" | "failed" | "cancelled") {
            if tty {
                eprintln!();
            }
            return Ok(view);
        }
        if show {
            let (made, measured) = view.result.as_ref().map_or((0, 0), |r| {
                (r.classes.iter().map(|c| c.candidates.len()).sum(), r.device_measurements)
            });
            let line = format!(
                "pipeline {id}: {} ({}), {made} candidates, {measured} device measurements, {:.0} s",
                view.state,
                view.stage,
                started.elapsed().as_secs_f64()
            );
            if tty {
                eprint!("\r{line}   ");
            } else if line.split(", ").take(3).collect::<Vec<_>>()
                != last.split(", ").take(3).collect::<Vec<_>>()
            {
                eprintln!("{line}");
            }
            last = line;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2} %", v * 100.0))
}

/// Settings in one short line: `criterion=magnitude allocation=global sparsity=0.6 round_to=4`.
fn settings_text(v: &serde_json::Value) -> String {
    match v.as_object() {
        Some(map) => map
            .iter()
            .map(|(k, v)| {
                format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => v.to_string(),
    }
}

/// The per-class table of a result.
pub(super) fn print_result(r: &PipelineResult) {
    println!(
        "pipeline {} ({}): {} on {}, {} budget, objective {}, {} device measurements{}",
        r.pipeline,
        r.state,
        r.model_name,
        r.data,
        r.quality_metric,
        r.objective,
        r.device_measurements,
        if r.exhaustive { " (exhaustive)" } else { " (guided by the latency predictor)" }
    );
    for c in &r.classes {
        println!();
        println!(
            "class {} ({}), {} device measurements",
            c.class, c.measurement, c.device_measurements
        );
        let q = |f: &super::super::pipeline::result::Figures| {
            let q = if r.quality_metric == "accuracy" { pct(f.accuracy) } else { pct(f.fidelity) };
            match f.perplexity {
                Some(p) => format!("{q}  perplexity {p:.1}"),
                None => q,
            }
        };
        if let Some(p) = &c.parent {
            println!(
                "  parent  {:<40} p50 {:>9} ms  p90 {:>9} ms  {}",
                p.name,
                ms(p.p50_ms),
                ms(p.p90_ms),
                q(p)
            );
        }
        match &c.winner {
            Some(w) => println!(
                "  winner  {:<40} p50 {:>9} ms  p90 {:>9} ms  {}",
                w.name,
                ms(w.p50_ms),
                ms(w.p90_ms),
                q(w)
            ),
            None => println!("  winner  none"),
        }
        println!("  reason  {}", c.reason);
        if let Some(p) = &c.predictor {
            println!(
                "  predictor  {}; held-out {}: {} within ±10 %, mean error {}",
                p.start,
                p.held_out,
                pct(p.within_10pct),
                p.mean_abs_error_pct.map_or("-".into(), |e| format!("{e:.1} %"))
            );
        }
        println!(
            "  {:<28} {:<10} {:<64} {:>9} {:>10} {:>10} {:>10}  status",
            "candidate", "method", "settings", r.quality_metric, "predicted", "p50 ms", "p90 ms"
        );
        for row in &c.candidates {
            let quality = if r.quality_metric == "accuracy" { row.accuracy } else { row.fidelity };
            println!(
                "  {:<28} {:<10} {:<64} {:>9} {:>10} {:>10} {:>10}  {}{}{}",
                row.id.strip_prefix(&format!("{}-", r.pipeline)).unwrap_or(&row.id),
                row.method,
                settings_text(&row.settings),
                pct(quality),
                ms(row.predicted_ms),
                ms(row.p50_ms),
                ms(row.p90_ms),
                row.status,
                if row.pareto { " pareto" } else { "" },
                if row.winner { " WINNER" } else { "" },
            );
            if let Some(p) = row.perplexity {
                println!("  {:<28} perplexity {p:.1}", "");
            }
            if let (Some(note), "failed" | "unmeasured") = (&row.note, row.status.as_str()) {
                println!("  {:<28} why: {note}", "");
            }
        }
    }
}

/// `pipeline show|list|cancel`.
pub(super) async fn pipeline(cmd: PipelineCmd) -> anyhow::Result<i32> {
    match cmd {
        PipelineCmd::Show { api, id } => {
            let view: PipelineView = api.client()?.get(&format!("/api/v1/pipelines/{id}")).await?;
            finish(&view, api.json).map(|code| {
                if view.state == "running" || view.state == "queued" { 0 } else { code }
            })
        }
        PipelineCmd::List { api } => {
            let list: Vec<PipelineView> = api.client()?.get("/api/v1/pipelines").await?;
            if api.json {
                print_json(&serde_json::to_value(&list)?);
            } else {
                println!(
                    "{:<32} {:<10} {:<11} {:>8}  model",
                    "pipeline", "state", "stage", "measured"
                );
                for p in &list {
                    let (model, measured) = p.result.as_ref().map_or((String::new(), 0), |r| {
                        (r.model_name.clone(), r.device_measurements)
                    });
                    println!(
                        "{:<32} {:<10} {:<11} {:>8}  {model}",
                        p.id, p.state, p.stage, measured
                    );
                }
            }
            Ok(0)
        }
        PipelineCmd::Cancel { api, id } => {
            let view: PipelineView = api
                .client()?
                .post(&format!("/api/v1/pipelines/{id}/cancel"), &serde_json::json!({}))
                .await?;
            if api.json {
                print_json(&serde_json::to_value(&view)?);
            } else {
                println!("pipeline {} {}", view.id, view.state);
            }
            Ok(0)
        }
    }
}

/// `coordinator report`.
pub(super) async fn report(args: ReportArgs) -> anyhow::Result<i32> {
    let view: PipelineView =
        args.api.client()?.get(&format!("/api/v1/pipelines/{}", args.pipeline)).await?;
    let Some(mut result) = view.result else {
        bail!("pipeline {} has no result yet ({}, {})", view.id, view.state, view.stage);
    };
    result.report = Some(args.out.display().to_string());
    crate::pipeline::report::write(&result, &args.out)?;
    if args.api.json {
        print_json(&serde_json::json!({"pipeline": view.id, "report": args.out}));
    } else {
        println!("{}", args.out.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: super::CompressArgs,
    }

    fn request(extra: &[&str]) -> anyhow::Result<super::PipelineRequest> {
        let base = ["compress", "--model", "m", "--data", "sotu", "--devices", "rpi4"];
        let cli =
            Cli::try_parse_from(base.iter().chain(["--min-fidelity", "0.5"].iter()).chain(extra))?;
        super::request(&cli.args, "m".into())
    }

    #[test]
    fn distillation_settings_reach_the_request_and_bad_ones_say_why() {
        assert_eq!(request(&[]).unwrap().distill, None, "no settings: the method's defaults");
        let r = request(&["--students", "0.34:0.34,1:0.5", "--distill-steps", "7"]).unwrap();
        let d = r.distill.unwrap();
        assert_eq!((d.students, d.steps, d.loss), (vec![(0.34, 0.34), (1.0, 0.5)], 7, None));
        let r = request(&["--distill-loss", "skl"]).unwrap();
        assert_eq!(r.distill.unwrap().loss, Some(hone_learn::train::kd::Divergence::Skl));
        for (bad, why) in [
            (&["--students", "0.5"][..], "LAYERS:WIDTH"),
            (&["--students", "0:1"][..], "(0, 1]"),
            (&["--students", "0.5:1.5"][..], "(0, 1]"),
            (&["--distill-steps", "0"][..], "at least 1"),
        ] {
            let err = format!("{:#}", request(bad).unwrap_err());
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
