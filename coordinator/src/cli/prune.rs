//! `coordinator prune`: the arguments, a blocking thread for the run
//! ([`hone_compress::prune::run`]), and the printing.

use std::path::PathBuf;

use anyhow::Context as _;
use hone_common::shapes::InputShapes;
use hone_compress::prune::Analysis;
use hone_compress::prune::alloc::Allocation;
use hone_compress::prune::importance::{ActivationMetric, Criterion};
use hone_compress::prune::run::{PruneConfig, PruneReport, explain, prune};

use super::learn::blocking;

/// Arguments of `coordinator prune`.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// The ONNX model to prune.
    #[arg(long)]
    pub model: PathBuf,
    /// Data for calibration, fine-tuning and validation: fashion-mnist, mnist, vader, photos, or
    /// your own (a path with options; docs/data.md).
    #[arg(long, required_unless_present = "explain")]
    pub data: Option<String>,
    /// Importance family: magnitude, gradient, activation, combined or auto.
    #[arg(long, default_value_t = Criterion::Auto)]
    pub criterion: Criterion,
    /// Fraction of each prunable group's units to remove (0 ≤ S < 1).
    #[arg(long, conflicts_with = "target_speedup")]
    pub sparsity: Option<f64>,
    /// Search the smallest sparsity whose child is at least X times faster in tract.
    #[arg(long)]
    pub target_speedup: Option<f64>,
    /// Kept widths are multiples of this many channels (default: the device profile's f32 SIMD
    /// width, else 8 for AVX2).
    #[arg(long)]
    pub round_to: Option<usize>,
    /// Device profile to take the SIMD width from (e.g. rpi4: NEON, 4 lanes).
    #[arg(long)]
    pub profile: Option<String>,
    /// Per-layer allocation: uniform, global or sensitivity.
    #[arg(long, default_value_t = Allocation::Uniform)]
    pub allocation: Allocation,
    /// Statistic of the activation family: wanda, mean-abs or apoz.
    #[arg(long, default_value_t = ActivationMetric::Wanda)]
    pub activation_metric: ActivationMetric,
    /// Weights of magnitude, gradient and activation in `combined`.
    #[arg(long, default_value = "1,1,1")]
    pub weights: String,
    /// Recovery fine-tuning steps after pruning (0: none).
    #[arg(long, default_value_t = 0)]
    pub finetune_steps: usize,
    /// Peak learning rate of the fine-tune.
    #[arg(long, default_value_t = 1e-3)]
    pub finetune_lr: f64,
    /// Batch size of the fine-tune.
    #[arg(long, default_value_t = 64)]
    pub finetune_batch: usize,
    /// Weight of distillation from the parent's outputs during the fine-tune (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub distill: f64,
    /// Refit the layers that read pruned units by least squares on the calibration examples
    /// (no training), before any fine-tuning.
    #[arg(long)]
    pub reconstruct: bool,
    /// Calibration examples (gradient and activation statistics), from the training part.
    #[arg(long, default_value_t = 256)]
    pub calibration: usize,
    /// Validation examples used to choose the criterion and to measure sensitivity.
    #[arg(long, default_value_t = 1000)]
    pub validation: usize,
    /// Test examples for the reported accuracy (default: the whole test part).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Sequence length for text models (latency and analysis).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Seconds of side-by-side latency measurement for the final result.
    #[arg(long, default_value_t = 6.0)]
    pub latency_seconds: f64,
    /// Seed of the calibration and fine-tuning draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also time the unpruned model in ONNX Runtime (CPU, one thread) in the same run, with this
    /// Python (which must have `onnxruntime` and `numpy`).
    #[arg(long)]
    pub compare_ort: Option<PathBuf>,
    /// Shape of an input whose declared shape is not fixed, NAME=1x3x224x224 (repeatable, or
    /// comma-separated): used by the analysis, the latency measurement and the gate.
    #[arg(long = "input", value_name = "NAME=DIMS")]
    pub inputs: Vec<String>,
    /// Print the dependency groups and exit.
    #[arg(long)]
    pub explain: bool,
    /// Where to write the pruned model.
    #[arg(long, required_unless_present = "explain")]
    pub out: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `coordinator prune`.
pub async fn run(args: PruneArgs) -> anyhow::Result<i32> {
    if args.explain {
        let inputs = InputShapes::parse_all(&args.inputs)?;
        let analysis = blocking(move || explain(&args.model, &inputs)).await?;
        print_explain(&analysis, args.json)?;
        return Ok(0);
    }
    let json = args.json;
    let config = args.config()?;
    let report = blocking(move || prune(config)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(0)
}

impl PruneArgs {
    /// The engine's settings.
    fn config(self) -> anyhow::Result<PruneConfig> {
        let weights: Vec<f64> = self
            .weights
            .split(',')
            .map(|w| w.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .ok()
            .filter(|w: &Vec<f64>| w.len() == 3)
            .context("--weights takes three non-negative numbers: magnitude,gradient,activation")?;
        Ok(PruneConfig {
            model: self.model,
            data: self.data.context("give --data")?,
            criterion: self.criterion,
            sparsity: self.sparsity,
            target_speedup: self.target_speedup,
            round_to: self.round_to,
            profile: self.profile,
            allocation: self.allocation,
            activation_metric: self.activation_metric,
            weights: [weights[0], weights[1], weights[2]],
            finetune_steps: self.finetune_steps,
            reconstruct: self.reconstruct,
            finetune_lr: self.finetune_lr,
            finetune_batch: self.finetune_batch,
            distill: self.distill,
            calibration: self.calibration,
            validation: self.validation,
            test_limit: self.test_limit,
            seq_len: self.seq_len,
            latency_seconds: self.latency_seconds,
            seed: self.seed,
            compare_ort: self.compare_ort,
            inputs: InputShapes::parse_all(&self.inputs)?,
            out: self.out,
        })
    }
}

fn print_report(r: &PruneReport) {
    if !r.criteria.is_empty() {
        println!("criterion      validation   cosine      params");
        for row in &r.criteria {
            let mark = if row.criterion == r.criterion { " ← chosen" } else { "" };
            let cos = row.validation_cosine.map_or("-".to_string(), |c| format!("{c:.6}"));
            println!(
                "{:<14} {:>9.2} %  {cos:>9}  {:>9}{mark}",
                row.criterion.to_string(),
                row.validation_score * 100.0,
                row.params
            );
        }
        println!();
    }
    println!(
        "{} → {}",
        r.model.display(),
        r.out.as_ref().map_or("-".into(), |p| p.display().to_string())
    );
    println!(
        "  criterion {} ({} allocation), sparsity {:.3}, widths rounded to {}",
        r.criterion,
        serde_json::to_value(r.allocation).unwrap_or_default().as_str().unwrap_or(""),
        r.sparsity,
        r.round_to
    );
    println!("  params  {:>12} → {:>12}", r.params_before, r.params_after);
    println!(
        "  MACs    {:>12} → {:>12}  ({:.2}x fewer)",
        r.macs_before, r.macs_after, r.mac_reduction
    );
    if let (Some(b), Some(a)) = (r.accuracy_before, r.accuracy_after) {
        print!("  accuracy {:.2} % → {:.2} %", b * 100.0, a * 100.0);
        if let Some(p) = r.accuracy_after_prune.filter(|_| r.finetune.is_some()) {
            print!(" (before fine-tune {:.2} %)", p * 100.0);
        }
        if let (Some(p), Some(q)) = (r.accuracy_after_prune, r.accuracy_after_reconstruct) {
            print!(" (plain pruning {:.2} %, reconstructed {:.2} %)", p * 100.0, q * 100.0);
        }
        println!(" on {} test examples", r.test_examples);
    }
    if let Some(f) = r.fidelity {
        println!(
            "  top-1 agreement with the parent {:.2} % on {} examples (output cosine {:.5})",
            f * 100.0,
            r.test_examples,
            r.fidelity_cosine.unwrap_or(f64::NAN)
        );
    }
    println!(
        "  tract latency {:.2} ms → {:.2} ms: {:.2}x{}  ({:.2} of the MAC reduction)",
        r.latency_ms_before,
        r.latency_ms_after,
        r.speedup,
        if r.not_faster { "  NOT FASTER" } else { "" },
        r.speedup_per_mac_reduction
    );
    if let (Some(o), Some(x)) = (r.ort_ms_before, r.speedup_vs_ort) {
        println!(
            "  ONNX Runtime {} (1 thread) on the parent {o:.2} ms: pruned-in-tract is {x:.2}x its speed",
            r.ort_version.as_deref().unwrap_or("?")
        );
    }
    println!(
        "  {:.1} % of prunable channels removed; params without embeddings {} → {}",
        r.channels_removed * 100.0,
        r.params_no_embeddings_before,
        r.params_no_embeddings_after
    );
    if let (Some(x), Some(met)) = (r.target_speedup, r.target_met) {
        println!(
            "  target {x:.2}x: {}",
            if met { "met" } else { "NOT met in the final measurement" }
        );
    }
    println!("  groups: {} prunable, {} left alone", r.groups_prunable, r.groups_blocked.len());
    println!("  pruning {:.1} s, all {:.1} s", r.prune_seconds, r.total_seconds);
}

fn print_explain(analysis: &Analysis, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(analysis)?);
        return Ok(());
    }
    for g in &analysis.groups {
        let state = match &g.blocked {
            Some(b) => format!("left alone: {b}"),
            None if g.units() <= 1 => "left alone: one unit".into(),
            None => "prunable".into(),
        };
        println!(
            "group {:>3} {:<8} {:>5} units of {:>3}  {:<40} {state}",
            g.id,
            g.kind,
            g.units(),
            g.unit(),
            g.producers().join(", ")
        );
    }
    Ok(())
}
