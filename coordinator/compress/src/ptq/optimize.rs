//! `coordinator optimize`: a model made faster as it is, without a gradient step. Every pass
//! list is applied, judged on held-out data (accuracy on labelled data, else fidelity to the
//! original), and timed side by side with the original in tract and in ONNX Runtime; the
//! choice is the fastest (pass list, runtime) within the quality budget, in the runtimes the
//! user targets. The table it chose from is the report.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hone_common::shapes::InputShapes;
use hone_graph::Graph;
use hone_learn::data::Part;
use hone_learn::eval::{EvalData, EvalRuntime};
use serde::Serialize;

use super::timing::{TimedRuntime, side_by_side};
use super::{Pass, PassRecord};

/// How much faster than the original a pass list must measure to be chosen over it: side by
/// side runs on a shared host differ by a few percent.
pub const NOISE_MARGIN: f64 = 0.03;

/// Which pass lists to try.
#[derive(Debug, Clone, PartialEq)]
pub enum PassChoice {
    /// Every list of [`auto_lists`].
    Auto,
    /// This one list.
    List(Vec<Pass>),
}

/// The pass lists `auto` tries, besides the original.
pub fn auto_lists() -> Vec<Vec<Pass>> {
    vec![
        vec![Pass::Fold],
        vec![Pass::Fold, Pass::Int8Dynamic],
        vec![Pass::Fold, Pass::Int8Dynamic7],
        vec![Pass::Fold, Pass::Int8Static],
        vec![Pass::Fold, Pass::Int8StaticPercentile],
        vec![Pass::Fold, Pass::Int8StaticEntropy],
        vec![Pass::Fold, Pass::LowRank90],
        vec![Pass::Fold, Pass::LowRank97],
    ]
}

/// What `coordinator optimize` is asked.
#[derive(Debug, Clone)]
pub struct OptimizeConfig {
    /// The model.
    pub model: PathBuf,
    /// The data: held-out examples judge every candidate.
    pub data: EvalData,
    /// Pass lists.
    pub passes: PassChoice,
    /// Runtimes the result may run in (both: choose).
    pub runtimes: Vec<TimedRuntime>,
    /// Largest accuracy drop allowed, in points (labelled data).
    pub max_accuracy_drop: Option<f64>,
    /// Smallest top-1 agreement with the original allowed (0..1), for unlabelled data.
    pub min_fidelity: Option<f64>,
    /// Shapes of inputs with free dims; other symbolic dims are 1 (batch) and `seq`.
    pub inputs: InputShapes,
    /// Sequence length of token inputs for timing.
    pub seq: usize,
    /// ONNX Runtime intra-op threads (tract runs on one).
    pub threads: usize,
    /// Validation examples (`None`: the whole validation part).
    pub limit: Option<usize>,
    /// Timing budget, seconds (at least 5 rounds).
    pub seconds: f64,
}

/// One (pass list, runtime) of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Passes applied, in order (empty: the original).
    pub passes: Vec<Pass>,
    /// The runtime it was timed in.
    pub runtime: TimedRuntime,
    /// Median latency, ms (batch 1).
    pub p50_ms: Option<f64>,
    /// Timed runs.
    pub runs: usize,
    /// The original in ONNX Runtime (FP32) over this, when both were timed.
    pub speedup_vs_ort_fp32: Option<f64>,
    /// The original in tract over this.
    pub speedup_vs_tract_fp32: Option<f64>,
    /// Accuracy on the validation examples (labelled data).
    pub accuracy: Option<f64>,
    /// The original's accuracy minus this one's, in points.
    pub accuracy_drop_points: Option<f64>,
    /// Top-1 agreement with the original.
    pub agreement: f64,
    /// Mean cosine similarity of the outputs with the original's.
    pub cosine: f64,
    /// The runtime that computed the quality figures (int8 models: ONNX Runtime when present).
    pub judged_in: TimedRuntime,
    /// Encoded model size, bytes.
    pub size_bytes: u64,
    /// Time the passes took, seconds.
    pub pass_seconds: f64,
    /// Within the quality budget.
    pub within_budget: bool,
    /// Why the row could not be made or measured.
    pub error: Option<String>,
}

/// What `coordinator optimize` found.
#[derive(Debug, Clone, Serialize)]
pub struct OptimizeReport {
    /// The model.
    pub model: String,
    /// The data and the examples that judged.
    pub data: String,
    /// Validation examples.
    pub examples: usize,
    /// The CPU the figures were measured on.
    pub cpu: String,
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
    /// Timing inputs.
    pub inputs: Vec<String>,
    /// The table.
    pub rows: Vec<Row>,
    /// Index of the chosen row, if any is within budget and faster than the original.
    pub chosen: Option<usize>,
    /// Why that row (or none).
    pub reason: String,
    /// Every pass's record for the chosen list.
    pub chosen_passes: Vec<PassRecord>,
    /// Why ONNX Runtime was left out, when it was.
    pub ort_unavailable: Option<String>,
}

/// A made candidate: its passes, graph and records.
struct Made {
    passes: Vec<Pass>,
    graph: Graph,
    records: Vec<PassRecord>,
    seconds: f64,
}

/// Runs the optimisation; returns the report and the chosen graph.
pub fn run(
    cfg: &OptimizeConfig,
    progress: &dyn Fn(String),
) -> anyhow::Result<(OptimizeReport, Option<Graph>)> {
    if cfg.runtimes.is_empty() {
        bail!("no runtime to optimise for (tract, ort)");
    }
    let parent = hone_learn::eval::load_model(&cfg.model)?;
    let labelled = cfg.data.labelled();
    if cfg.max_accuracy_drop.is_some() && !labelled {
        bail!(
            "--max-accuracy-drop needs labelled data; `{}` has no labels: use --min-fidelity",
            cfg.data.name()
        );
    }
    let ort_unavailable = hone_learn::eval::ort::available().err().map(|e| format!("{e:#}"));
    let mut runtimes = cfg.runtimes.clone();
    if let Some(why) = &ort_unavailable {
        if runtimes == [TimedRuntime::Ort] {
            bail!("ONNX Runtime is not available: {why}");
        }
        runtimes.retain(|r| *r != TimedRuntime::Ort);
    }
    let timed_runtimes: Vec<TimedRuntime> = if ort_unavailable.is_none() {
        vec![TimedRuntime::Tract, TimedRuntime::Ort]
    } else {
        vec![TimedRuntime::Tract]
    };
    let lists = match &cfg.passes {
        PassChoice::Auto => auto_lists(),
        PassChoice::List(l) => vec![l.clone()],
    };
    let mut made =
        vec![Made { passes: vec![], graph: parent.clone(), records: vec![], seconds: 0.0 }];
    let mut errors: Vec<(Vec<Pass>, String)> = Vec::new();
    for list in lists {
        let started = Instant::now();
        progress(format!("applying {}", names(&list)));
        match super::apply(&parent, &list, Some(&cfg.data)) {
            Ok((graph, records)) => made.push(Made {
                passes: list,
                graph,
                records,
                seconds: started.elapsed().as_secs_f64(),
            }),
            Err(e) => errors.push((list, format!("{e:#}"))),
        }
    }

    // Quality, once per graph, in the runtime that will run it.
    let examples = cfg.data.examples(Part::Validation, cfg.limit, None).len();
    let mut quality = Vec::new();
    for m in &made {
        let int8 = m.passes.iter().any(|p| p.is_int8());
        let judged_in =
            if int8 && ort_unavailable.is_none() { TimedRuntime::Ort } else { TimedRuntime::Tract };
        let runtime = match judged_in {
            TimedRuntime::Tract => EvalRuntime::Tract,
            TimedRuntime::Ort => EvalRuntime::Ort { threads: cfg.threads.max(1) },
        };
        progress(format!("judging {} in {judged_in} on {examples} examples", names(&m.passes)));
        let f = hone_learn::eval::fidelity_in(
            &m.graph,
            &parent,
            &cfg.data,
            Part::Validation,
            16,
            cfg.limit,
            None,
            runtime,
        )
        .with_context(|| format!("judging {}", names(&m.passes)))?;
        quality.push((f, judged_in));
    }

    // Latency, side by side: every graph in every runtime, the original included.
    let dims = crate::prune::latency::timing_inputs(&parent, cfg.seq, &cfg.inputs);
    let entries: Vec<(usize, TimedRuntime)> =
        (0..made.len()).flat_map(|i| timed_runtimes.iter().map(move |&r| (i, r))).collect();
    progress(format!("timing {} (model, runtime) pairs side by side", entries.len()));
    let pairs: Vec<(&Graph, TimedRuntime)> =
        entries.iter().map(|(i, r)| (&made[*i].graph, *r)).collect();
    let timings = side_by_side(
        &pairs,
        &dims,
        cfg.threads.max(1),
        2,
        Duration::from_secs_f64(cfg.seconds.max(0.5)),
    )?;
    let p50 = |i: usize, r: TimedRuntime| {
        entries.iter().zip(&timings).find(|((j, q), _)| *j == i && *q == r).map(|(_, t)| t)
    };
    let base_ort = p50(0, TimedRuntime::Ort).map(|t| t.p50_ms);
    let base_tract = p50(0, TimedRuntime::Tract).map(|t| t.p50_ms);
    let parent_acc = quality[0].0.reference_accuracy.map(|a| a.value());

    let mut rows = Vec::new();
    for (i, m) in made.iter().enumerate() {
        let (f, judged_in) = &quality[i];
        let size_bytes = m.graph.to_bytes().len() as u64;
        let accuracy = f.model_accuracy.map(|a| a.value());
        let drop = accuracy.zip(parent_acc).map(|(a, p)| (p - a) * 100.0);
        let within = match (cfg.max_accuracy_drop, cfg.min_fidelity) {
            (Some(max), _) => drop.is_some_and(|d| d <= max + 1e-9),
            (None, Some(min)) => f.top1_agreement >= min,
            (None, None) => true,
        };
        for &r in &timed_runtimes {
            let t = p50(i, r);
            rows.push(Row {
                passes: m.passes.clone(),
                runtime: r,
                p50_ms: t.map(|t| t.p50_ms),
                runs: t.map_or(0, |t| t.runs),
                speedup_vs_ort_fp32: t.and_then(|t| base_ort.map(|b| b / t.p50_ms)),
                speedup_vs_tract_fp32: t.and_then(|t| base_tract.map(|b| b / t.p50_ms)),
                accuracy,
                accuracy_drop_points: drop,
                agreement: f.top1_agreement,
                cosine: f.mean_cosine,
                judged_in: *judged_in,
                size_bytes,
                pass_seconds: m.seconds,
                within_budget: within,
                error: None,
            });
        }
    }
    for (passes, e) in errors {
        rows.push(Row {
            passes,
            runtime: TimedRuntime::Tract,
            p50_ms: None,
            runs: 0,
            speedup_vs_ort_fp32: None,
            speedup_vs_tract_fp32: None,
            accuracy: None,
            accuracy_drop_points: None,
            agreement: 0.0,
            cosine: 0.0,
            judged_in: TimedRuntime::Tract,
            size_bytes: 0,
            pass_seconds: 0.0,
            within_budget: false,
            error: Some(e),
        });
    }

    let chosen = choose(&rows, &runtimes);
    let reason = match chosen {
        None => "no pass list is within the quality budget in the target runtimes".to_owned(),
        Some(i) if rows[i].passes.is_empty() => format!(
            "the original in {} is the fastest within the quality budget: no pass list was more \
             than {:.0} % faster",
            rows[i].runtime,
            NOISE_MARGIN * 100.0
        ),
        Some(i) => format!(
            "{} in {}: the fastest within the quality budget{}",
            names(&rows[i].passes),
            rows[i].runtime,
            rows[i]
                .speedup_vs_ort_fp32
                .map(|s| format!(", {s:.2}x the original in ONNX Runtime FP32"))
                .unwrap_or_default()
        ),
    };
    let chosen_graph = chosen
        .and_then(|i| made.iter().find(|m| m.passes == rows[i].passes))
        .map(|m| (m.graph.clone(), m.records.clone()));
    let inputs = hone_learn::eval::tract::true_inputs(&parent)
        .into_iter()
        .zip(&dims)
        .map(|(n, (dt, d))| format!("{n}: {dt:?}{d:?}"))
        .collect();
    let report = OptimizeReport {
        model: cfg.model.display().to_string(),
        data: cfg.data.name().to_owned(),
        examples,
        cpu: crate::cpu_name(),
        threads: cfg.threads.max(1),
        inputs,
        rows,
        chosen,
        reason,
        chosen_passes: chosen_graph.as_ref().map(|(_, r)| r.clone()).unwrap_or_default(),
        ort_unavailable,
    };
    Ok((report, chosen_graph.map(|(g, _)| g)))
}

/// The fastest row within budget in a target runtime. A pass list must beat the original's
/// fastest eligible row by more than [`NOISE_MARGIN`], else the original stays.
pub fn choose(rows: &[Row], runtimes: &[TimedRuntime]) -> Option<usize> {
    let eligible = |r: &Row| r.within_budget && runtimes.contains(&r.runtime) && r.p50_ms.is_some();
    let ms = |i: usize| rows[i].p50_ms.unwrap_or(f64::MAX);
    let fastest = |original: bool| {
        (0..rows.len())
            .filter(|&i| eligible(&rows[i]) && rows[i].passes.is_empty() == original)
            .min_by(|&a, &b| ms(a).total_cmp(&ms(b)))
    };
    match (fastest(true), fastest(false)) {
        (Some(o), Some(p)) if ms(p) < ms(o) * (1.0 - NOISE_MARGIN) => Some(p),
        (Some(o), _) => Some(o),
        (None, p) => p,
    }
}

/// `fold, int8-dynamic` (or `original`).
pub fn names(passes: &[Pass]) -> String {
    if passes.is_empty() {
        "original".to_owned()
    } else {
        passes.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(passes: &[Pass], runtime: TimedRuntime, ms: f64, within: bool) -> Row {
        Row {
            passes: passes.to_vec(),
            runtime,
            p50_ms: Some(ms),
            runs: 5,
            speedup_vs_ort_fp32: None,
            speedup_vs_tract_fp32: None,
            accuracy: None,
            accuracy_drop_points: None,
            agreement: 1.0,
            cosine: 1.0,
            judged_in: runtime,
            size_bytes: 1,
            pass_seconds: 0.0,
            within_budget: within,
            error: None,
        }
    }

    #[test]
    fn the_fastest_row_within_budget_in_a_target_runtime_is_chosen() {
        use TimedRuntime::{Ort, Tract};
        let rows = vec![
            row(&[], Tract, 10.0, true),
            row(&[], Ort, 8.0, true),
            row(&[Pass::Int8Dynamic], Tract, 20.0, true),
            row(&[Pass::Int8Dynamic], Ort, 3.5, true),
            row(&[Pass::Int8Dynamic7], Ort, 3.0, false), // faster, but over the budget
        ];
        assert_eq!(choose(&rows, &[Tract, Ort]), Some(3));
        // Only tract: int8 is slower there, the original stays.
        assert_eq!(choose(&rows, &[Tract]), Some(0));
        // A pass list within the noise margin of the original does not replace it.
        let rows = vec![row(&[], Ort, 8.0, true), row(&[Pass::Fold], Ort, 7.9, true)];
        assert_eq!(choose(&rows, &[Ort]), Some(0));
        let rows = vec![row(&[], Ort, 8.0, true), row(&[Pass::Fold], Ort, 7.0, true)];
        assert_eq!(choose(&rows, &[Ort]), Some(1));
        // Nothing within budget: no choice.
        let rows = vec![row(&[Pass::Int8Dynamic], Ort, 3.0, false)];
        assert_eq!(choose(&rows, &[Ort]), None);
    }
}
