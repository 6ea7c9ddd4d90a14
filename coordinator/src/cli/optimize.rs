//! `coordinator optimize`: post-training optimisation without a gradient step
//! ([`hone_compress::ptq::optimize`]): pass lists judged on held-out data and timed side by
//! side with the original in tract and ONNX Runtime; the fastest within the quality budget is
//! written (gated by tract, and loaded by ONNX Runtime when it targets it).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use hone_compress::ptq::Pass;
use hone_compress::ptq::optimize::{OptimizeConfig, OptimizeReport, PassChoice, names};
use hone_compress::ptq::timing::TimedRuntime;

/// Arguments of `coordinator optimize`.
#[derive(Debug, clap::Args)]
pub(super) struct OptimizeArgs {
    /// The ONNX model.
    #[arg(long)]
    pub(super) model: PathBuf,
    /// Data whose validation part judges every candidate (a built-in name or a path; see
    /// docs/data.md).
    #[arg(long)]
    pub(super) data: String,
    /// `auto` (every pass list, chosen by measurement) or a comma-separated list applied in
    /// order: fold, int8-dynamic, int8-dynamic-7bit.
    #[arg(long, default_value = "auto")]
    pub(super) passes: String,
    /// Largest accuracy drop allowed, in points (labelled data).
    #[arg(long, conflicts_with = "min_fidelity")]
    pub(super) max_accuracy_drop: Option<f64>,
    /// Smallest top-1 agreement with the original (0..1), for unlabelled data.
    #[arg(long)]
    pub(super) min_fidelity: Option<f64>,
    /// The runtime the result will run in: tract, ort, or auto (whichever is faster).
    #[arg(long, default_value = "auto")]
    pub(super) runtime: String,
    /// Where to write the chosen model.
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Shape of an input, NAME=1x3x224x224 (repeatable, or comma-separated).
    #[arg(long = "input", value_name = "NAME=DIMS")]
    pub(super) inputs: Vec<String>,
    /// Sequence length of token inputs for timing (batch is 1).
    #[arg(long, default_value_t = 128)]
    pub(super) seq: usize,
    /// ONNX Runtime intra-op threads (tract runs on one).
    #[arg(long, default_value_t = 1)]
    pub(super) threads: usize,
    /// Validation examples that judge (default: the whole validation part).
    #[arg(long)]
    pub(super) limit: Option<usize>,
    /// Timing budget, seconds (every pair runs at least 5 times).
    #[arg(long, default_value_t = 10.0)]
    pub(super) seconds: f64,
    /// Print JSON.
    #[arg(long)]
    pub(super) json: bool,
}

/// Runs `coordinator optimize`.
pub(super) async fn run(a: OptimizeArgs) -> anyhow::Result<i32> {
    let passes = if a.passes == "auto" {
        PassChoice::Auto
    } else {
        let list: Vec<Pass> = a
            .passes
            .split(',')
            .map(|p| p.trim().parse::<Pass>().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?;
        if list.is_empty() {
            bail!("--passes needs at least one pass ({})", Pass::NAMES.join(", "));
        }
        PassChoice::List(list)
    };
    let runtimes = match a.runtime.as_str() {
        "auto" => vec![TimedRuntime::Tract, TimedRuntime::Ort],
        other => vec![other.parse::<TimedRuntime>().map_err(anyhow::Error::msg)?],
    };
    if a.max_accuracy_drop.is_some_and(|d| !(0.0..=100.0).contains(&d)) {
        bail!("--max-accuracy-drop is in points, between 0 and 100");
    }
    if a.min_fidelity.is_some_and(|f| !(0.0..=1.0).contains(&f)) {
        bail!("--min-fidelity is a share, between 0 and 1");
    }
    if !a.model.is_file() {
        bail!("model {} does not exist", a.model.display());
    }
    let spec = hone_learn::eval::DataSpec::parse(&a.data)?;
    let inputs = hone_common::shapes::InputShapes::parse_all(&a.inputs)
        .map_err(|e| anyhow::anyhow!("--input: {e}"))?;
    let json = a.json;
    let out = a.out.clone();
    let (report, chosen) = super::learn::blocking(move || {
        let data = hone_learn::eval::EvalData::open(&spec)?;
        let max_accuracy_drop = a
            .max_accuracy_drop
            .or_else(|| (a.min_fidelity.is_none() && data.labelled()).then_some(1.0));
        let cfg = OptimizeConfig {
            model: a.model.clone(),
            data,
            passes,
            runtimes,
            max_accuracy_drop,
            min_fidelity: a.min_fidelity.or_else(|| max_accuracy_drop.is_none().then_some(0.99)),
            inputs,
            seq: a.seq,
            threads: a.threads,
            limit: a.limit,
            seconds: a.seconds,
        };
        let say = |m: String| {
            if !json {
                eprintln!("optimize: {m}");
            }
        };
        hone_compress::ptq::optimize::run(&cfg, &say)
    })
    .await?;
    if let (Some(graph), Some(i)) = (&chosen, report.chosen) {
        graph
            .save_gated(&out, &Default::default())
            .with_context(|| format!("writing {}", out.display()))?;
        if report.rows[i].runtime == TimedRuntime::Ort {
            hone_learn::eval::ort::OrtModel::new(graph, 1)
                .context("ONNX Runtime refuses the written model")?;
        }
    }
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["out"] = serde_json::json!(chosen.is_some().then(|| out.display().to_string()));
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_report(&report, chosen.is_some().then_some(&out));
    }
    Ok(if report.chosen.is_some() { 0 } else { 2 })
}

fn print_report(r: &OptimizeReport, out: Option<&PathBuf>) {
    println!(
        "{} on {} ({} validation examples); latency: batch 1, {}, ONNX Runtime on {} thread(s), \
         tract on 1, side by side on {}",
        r.model,
        r.data,
        r.examples,
        r.inputs.join(", "),
        r.threads,
        r.cpu
    );
    if let Some(why) = &r.ort_unavailable {
        println!("ONNX Runtime left out: {why}");
    }
    println!(
        "{:<34} {:<6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7}  ",
        "passes",
        "rt",
        "p50 ms",
        "x ort32",
        "x tract",
        "acc %",
        "drop pt",
        "agree %",
        "size MB",
        "pass s"
    );
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |x| format!("{x:.d$}"));
    for (i, row) in r.rows.iter().enumerate() {
        let mark = if Some(i) == r.chosen {
            "  <- chosen"
        } else if row.within_budget {
            ""
        } else {
            "  (over budget)"
        };
        if let Some(e) = &row.error {
            println!("{:<34} error: {e}", names(&row.passes));
            continue;
        }
        println!(
            "{:<34} {:<6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8.2} {:>9.2} {:>7.2}{mark}",
            names(&row.passes),
            row.runtime.to_string(),
            f(row.p50_ms, 3),
            f(row.speedup_vs_ort_fp32, 2),
            f(row.speedup_vs_tract_fp32, 2),
            f(row.accuracy.map(|a| a * 100.0), 2),
            f(row.accuracy_drop_points, 2),
            row.agreement * 100.0,
            row.size_bytes as f64 / 1e6,
            row.pass_seconds
        );
    }
    println!("{}", r.reason);
    if let Some(out) = out {
        println!("wrote {}", out.display());
    }
}
