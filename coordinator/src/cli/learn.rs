//! The learning commands: `coordinator baseline …`, `coordinator eval`, `coordinator train` and
//! `coordinator exec-bench`: arguments, a blocking thread for the work (in [`hone_learn`]), and
//! the printing. Progress goes to stderr and results to stdout (a table, or JSON with `--json`).

use std::path::PathBuf;

use anyhow::Context as _;
use hone_learn::exec_bench::{ExecBenchOptions, ExecBenchReport, exec_bench};
use hone_learn::tasks::{self, EvalTask, TrainTask};
use hone_learn::train::loss::LossKind;

/// `coordinator baseline …`.
#[derive(Debug, clap::Subcommand)]
pub enum BaselineCmd {
    /// A CNN defined by Hone, trained on Fashion-MNIST (writes model.onnx and summary.json).
    FashionCnn(FashionCnnArgs),
    /// paraphrase-MiniLM-L3 plus a linear head, trained on the VADER movie reviews.
    MinilmSentiment(MinilmArgs),
}

/// Arguments of `coordinator baseline minilm-sentiment`.
#[derive(Debug, clap::Args)]
pub struct MinilmArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Epochs of head training.
    #[arg(long)]
    epochs: Option<usize>,
    /// Use only this many sentences of each part (a quick, unpublished run).
    #[arg(long)]
    limit: Option<usize>,
    /// Epochs of fine-tuning the whole model after the head (0: frozen encoder).
    #[arg(long)]
    finetune_epochs: Option<usize>,
}

/// Arguments of `coordinator baseline fashion-cnn`.
#[derive(Debug, clap::Args)]
pub struct FashionCnnArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Epochs (default: the published setting).
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many steps (a quick, unpublished run).
    #[arg(long)]
    max_steps: Option<u64>,
}

/// Arguments of `coordinator eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// ONNX model. Its true inputs must fit the data: one image input for images and photos,
    /// `input_ids` and `attention_mask` (int64) for vader.
    #[arg(long)]
    model: PathBuf,
    /// Data: fashion-mnist, mnist, vader (labelled), photos (no labels: needs --reference), or
    /// your own (a path with options, e.g. `shots,size=48x192,mean=0.5,std=0.5`, or a DVC data
    /// set, `dvc://REPO/PATH@REV`; docs/data.md).
    #[arg(long)]
    data: String,
    /// Reference model: report the fidelity of --model against it (top-1 agreement and cosine
    /// similarity of the output rows) on the same examples.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Output to read (default: the first output for accuracy; with --reference, the first
    /// float output of rank 2, e.g. `461`, the sentence embedding of MiniLM). Any value of the
    /// graph may be named.
    #[arg(long)]
    output: Option<String>,
    /// Which part: test, validation or train.
    #[arg(long, default_value = "test")]
    part: String,
    /// Evaluate a fixed subset of this many examples of the part.
    #[arg(long)]
    limit: Option<usize>,
    /// Examples per tract run.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Run the model in tract or in ONNX Runtime (`ort`, one thread; the reference stays in
    /// tract).
    #[arg(long, default_value = "tract")]
    runtime: hone_common::bench::Runtime,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `coordinator train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// ONNX model to train. Images: its first input takes the image batch; vader: its inputs
    /// are `input_ids` and `attention_mask` (int64). Its first output (for vader, its first
    /// float output) is the logits, or the features for mse and cosine.
    #[arg(long)]
    model: PathBuf,
    /// Labelled data: fashion-mnist, mnist, vader, or your own (a path; docs/data.md).
    #[arg(long)]
    data: String,
    /// Loss: cross-entropy (against the labels), mse or cosine (against --reference outputs).
    #[arg(long, default_value = "cross-entropy")]
    loss: LossKind,
    /// Reference (teacher) model for mse and cosine: its first (float) output is the target.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Output folder (model.onnx, summary.json).
    #[arg(long)]
    out: PathBuf,
    /// Epochs.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Optimizer: adamw or sgd (momentum 0.9).
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// Weight decay.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// Seed of the shuffles.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

impl From<EvalArgs> for EvalTask {
    fn from(a: EvalArgs) -> Self {
        EvalTask {
            model: a.model,
            data: a.data,
            reference: a.reference,
            output: a.output,
            part: a.part,
            limit: a.limit,
            batch_size: a.batch_size,
            runtime: match a.runtime {
                hone_common::bench::Runtime::Tract => hone_learn::eval::EvalRuntime::Tract,
                hone_common::bench::Runtime::Ort => {
                    hone_learn::eval::EvalRuntime::Ort { threads: 1 }
                }
            },
        }
    }
}

impl From<TrainArgs> for TrainTask {
    fn from(a: TrainArgs) -> Self {
        TrainTask {
            model: a.model,
            data: a.data,
            loss: a.loss,
            reference: a.reference,
            out: a.out,
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            optimizer: a.optimizer,
            weight_decay: a.weight_decay,
            seed: a.seed,
            max_steps: a.max_steps,
        }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.context("the worker thread panicked")?
}

/// Runs `coordinator baseline …`.
pub async fn baseline(cmd: BaselineCmd) -> anyhow::Result<i32> {
    match cmd {
        BaselineCmd::FashionCnn(a) => {
            let mut o = hone_learn::baseline::FashionCnnOptions::new(a.out);
            o.epochs = a.epochs.unwrap_or(o.epochs);
            o.batch_size = a.batch_size.unwrap_or(o.batch_size);
            o.lr = a.lr.unwrap_or(o.lr);
            o.seed = a.seed.unwrap_or(o.seed);
            o.max_steps = a.max_steps;
            let json = a.json;
            let s = blocking(move || Ok(hone_learn::baseline::fashion_cnn(&o)?)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("fashion-cnn → {}", s.model.display());
                println!("  test accuracy        {:.2} %", s.test_accuracy * 100.0);
                println!("  validation accuracy  {:.2} %", s.validation_accuracy * 100.0);
                println!("  train seconds        {:.0}", s.train_seconds);
                println!("  params               {}", s.params);
                println!("  MACs per image       {}", s.macs_per_image);
                println!("  images/s (training)  {:.0}", s.samples_per_second);
                if let Some(b) = s.peak_rss_bytes {
                    println!("  peak RSS             {:.0} MiB", b as f64 / 1048576.0);
                }
                println!(
                    "  parity (tract)       {:.2e} of scale {:.2}",
                    s.parity_max_abs_diff, s.parity_scale
                );
            }
            Ok(0)
        }
        BaselineCmd::MinilmSentiment(a) => {
            let mut o = hone_learn::baseline::MinilmOptions::new(a.out);
            o.epochs = a.epochs.unwrap_or(o.epochs);
            o.limit = a.limit;
            o.finetune_epochs = a.finetune_epochs.unwrap_or(o.finetune_epochs);
            let json = a.json;
            let s = blocking(move || Ok(hone_learn::baseline::minilm_sentiment(&o)?)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("minilm-sentiment → {}", s.model.display());
                println!(
                    "  test accuracy        {:.2} % ({} sentences)",
                    s.test_accuracy * 100.0,
                    s.test_sentences
                );
                println!("  validation accuracy  {:.2} %", s.validation_accuracy * 100.0);
                println!(
                    "  train seconds        {:.0} (embedding {:.0})",
                    s.train_seconds, s.embed_seconds
                );
                println!("  params               {} ({} trained)", s.params, s.trainable_params);
                println!(
                    "  parity (tract)       {:.2e} of scale {:.2}",
                    s.parity_max_abs_diff, s.parity_scale
                );
            }
            Ok(0)
        }
    }
}

/// Runs `coordinator eval`: accuracy on labelled data, or fidelity against `--reference`.
pub async fn eval(a: EvalArgs) -> anyhow::Result<i32> {
    let json = a.json;
    let (v, text) = blocking(move || tasks::evaluate(a.into())).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{text}");
    }
    Ok(0)
}

/// Runs `coordinator train`.
pub async fn train(a: TrainArgs) -> anyhow::Result<i32> {
    let json = a.json;
    let summary = blocking(move || tasks::train(a.into())).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "trained {} steps in {:.0} s: loss {:.4} → {:.4}; wrote {}",
            summary["train"]["steps"],
            summary["train"]["train_seconds"].as_f64().unwrap_or(0.0),
            summary["train"]["first_loss"].as_f64().unwrap_or(f64::NAN),
            summary["train"]["final_loss"].as_f64().unwrap_or(f64::NAN),
            summary["model"].as_str().unwrap_or("")
        );
        if let Some(acc) = summary["test_accuracy"].as_f64() {
            println!("test accuracy {:.4}", acc);
        }
    }
    Ok(0)
}

/// Arguments of `coordinator exec-bench`.
#[derive(Debug, clap::Args)]
pub struct ExecBenchArgs {
    /// ONNX model.
    #[arg(long)]
    model: std::path::PathBuf,
    /// Data set whose first test batch is fed to both runtimes: fashion-mnist, mnist, vader or
    /// photos.
    #[arg(long)]
    data: String,
    /// Examples per run.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Measured runs of each runtime (interleaved).
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Unmeasured runs of each runtime first (the first one also checks that they agree).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `coordinator exec-bench`.
pub async fn run_exec_bench(a: ExecBenchArgs) -> anyhow::Result<i32> {
    let json = a.json;
    let model = a.model.clone();
    let r = blocking(move || -> anyhow::Result<ExecBenchReport> {
        let graph = hone_learn::eval::load_model(&a.model)?;
        let data = hone_learn::eval::EvalData::open(&hone_learn::eval::DataSpec::parse(&a.data)?)?;
        let options = ExecBenchOptions {
            batch_size: a.batch_size,
            iterations: a.iterations,
            warmup: a.warmup.max(1),
        };
        exec_bench(&graph, &data, options)
    })
    .await?;
    if json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = serde_json::json!(model);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let shapes: Vec<String> = r.inputs.iter().map(|(n, s)| format!("{n} {s:?}")).collect();
    println!("{} on {} ({})", model.display(), r.data, shapes.join(", "));
    println!(
        "{} interleaved runs each after {} warm-up; tract 1 thread, candle {} threads",
        r.options.iterations, r.options.warmup, r.candle_threads
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10}",
        "runtime", "p50 ms", "p90 ms", "mean ms", "min ms"
    );
    for (name, s) in [("tract", &r.tract), ("candle", &r.candle)] {
        println!(
            "{name:<10} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            s.p50_ms, s.p90_ms, s.mean_ms, s.min_ms
        );
    }
    println!("candle / tract (p50)  {:.2}×", r.ratio_p50);
    println!(
        "tract plan + first run {:.0} ms, executor load {:.0} ms, max relative difference {:.1e}",
        r.tract_plan_ms, r.candle_load_ms, r.max_rel_diff
    );
    Ok(0)
}
