//! The model-core commands: `coordinator baseline …`, `coordinator eval` and
//! `coordinator train`. Training and evaluation run on a blocking thread; progress goes to
//! stderr and results to stdout (a table, or JSON with `--json`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::{DType, Device, Tensor};

use crate::data::{ImageDataset, Part, fashion_mnist, mnist};
use crate::graph::Graph;
use crate::train::TrainError;
use crate::train::exec::Executor;
use crate::train::fit::{StepOutput, TrainConfig, fit, fit_classifier, peak_rss_bytes};
use crate::train::loss::{LossKind, correct, cosine, mse};
use crate::train::optim::OptimizerConfig;
use crate::train::tract_run::{TractPlan, check_parity, tract_accuracy, true_inputs};

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
    /// ONNX model; its first input is the image batch [N,1,28,28], its first output the scores.
    #[arg(long)]
    model: PathBuf,
    /// Data set: fashion-mnist or mnist.
    #[arg(long)]
    data: String,
    /// Which part: test, validation or train.
    #[arg(long, default_value = "test")]
    part: String,
    /// Images per tract run.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `coordinator train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// ONNX model to train (first input: the image batch; first output: logits or features).
    #[arg(long)]
    model: PathBuf,
    /// Data set: fashion-mnist or mnist.
    #[arg(long)]
    data: String,
    /// Loss: cross-entropy (against the labels), mse or cosine (against --reference outputs).
    #[arg(long, default_value = "cross-entropy")]
    loss: LossKind,
    /// Reference (teacher) model for mse and cosine: its first output is the target.
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

fn labelled(name: &str) -> anyhow::Result<ImageDataset> {
    Ok(match name {
        "fashion-mnist" => fashion_mnist()?,
        "mnist" => mnist()?,
        other => bail!("unknown data set `{other}`: fashion-mnist or mnist"),
    })
}

fn part(name: &str) -> anyhow::Result<Part> {
    Ok(match name {
        "test" => Part::Test,
        "validation" => Part::Validation,
        "train" => Part::Train,
        other => bail!("unknown part `{other}`: test, validation or train"),
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.context("the worker thread panicked")?
}

/// Runs `coordinator baseline …`.
pub async fn baseline(cmd: BaselineCmd) -> anyhow::Result<i32> {
    match cmd {
        BaselineCmd::FashionCnn(a) => {
            let mut o = super::FashionCnnOptions::new(a.out);
            o.epochs = a.epochs.unwrap_or(o.epochs);
            o.batch_size = a.batch_size.unwrap_or(o.batch_size);
            o.lr = a.lr.unwrap_or(o.lr);
            o.seed = a.seed.unwrap_or(o.seed);
            o.max_steps = a.max_steps;
            let json = a.json;
            let s = blocking(move || Ok(super::fashion_cnn(&o)?)).await?;
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
            let mut o = super::MinilmOptions::new(a.out);
            o.epochs = a.epochs.unwrap_or(o.epochs);
            o.limit = a.limit;
            o.finetune_epochs = a.finetune_epochs.unwrap_or(o.finetune_epochs);
            let json = a.json;
            let s = blocking(move || Ok(super::minilm_sentiment(&o)?)).await?;
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

/// Runs `coordinator eval`.
pub async fn eval(a: EvalArgs) -> anyhow::Result<i32> {
    let json = a.json;
    let (acc, secs, name, which) = blocking(move || {
        let data = labelled(&a.data)?;
        let which = part(&a.part)?;
        let graph = Graph::load(&a.model)?;
        let start = Instant::now();
        let acc = tract_accuracy(graph.proto(), &data, data.split.part(which), a.batch_size)?;
        Ok((acc, start.elapsed().as_secs_f64(), a.data, a.part))
    })
    .await?;
    if json {
        let v = serde_json::json!({
            "data": name, "part": which, "accuracy": acc.value(),
            "correct": acc.correct, "total": acc.total, "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "accuracy {:.4} ({}/{} {name} {which} images, {secs:.1} s)",
            acc.value(),
            acc.correct,
            acc.total
        );
    }
    Ok(0)
}

/// Runs `coordinator train`.
pub async fn train(a: TrainArgs) -> anyhow::Result<i32> {
    let json = a.json;
    let summary = blocking(move || train_blocking(a)).await?;
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

fn train_blocking(a: TrainArgs) -> anyhow::Result<serde_json::Value> {
    let data = labelled(&a.data)?;
    let mut graph = Graph::load(&a.model)?;
    let input = true_inputs(&graph).into_iter().next().context("the model has no input")?;
    let output =
        graph.outputs().first().map(|v| v.name.clone()).context("the model has no output")?;
    let exec = Executor::new(&graph)?;
    let optimizer = match a.optimizer.as_str() {
        "adamw" => OptimizerConfig::adamw(a.weight_decay),
        "sgd" => OptimizerConfig::sgd(a.weight_decay),
        other => bail!("unknown optimizer `{other}`: adamw or sgd"),
    };
    let cfg = TrainConfig {
        seed: a.seed,
        optimizer,
        max_steps: a.max_steps,
        progress: true,
        ..TrainConfig::new(a.epochs, a.batch_size, a.lr)
    };
    let train_idx = data.split.part(Part::Train);
    let summary = match a.loss {
        LossKind::CrossEntropy => {
            if a.reference.is_some() {
                bail!("--reference is for the mse and cosine losses");
            }
            fit_classifier(&exec, &input, &output, &data, train_idx, &cfg)?
        }
        kind => {
            let reference = a.reference.as_ref().context("mse and cosine need --reference")?;
            let teacher = Graph::load(reference)?;
            let [c, h, w] = data.shape;
            let plan =
                TractPlan::new(teacher.proto(), &[(DType::F32, vec![a.batch_size, c, h, w])])?;
            fit(&exec, train_idx, &cfg, |batch| {
                let b = data.batch(batch);
                let x = Tensor::from_vec(b.pixels, b.shape.to_vec(), &Device::Cpu)?;
                let (shape, target) = plan
                    .run(std::slice::from_ref(&x))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| TrainError::config("the reference has no output"))?;
                let target = Tensor::from_vec(target, shape, &Device::Cpu)?;
                let mut out = exec.run([(input.as_str(), x)], &[output.as_str()])?;
                let y = out.remove(&output).ok_or_else(|| TrainError::config("no output"))?;
                let loss =
                    if kind == LossKind::Mse { mse(&y, &target)? } else { cosine(&y, &target)? };
                let hits = if y.rank() == 2 && y.dim(1)? == data.num_classes() {
                    Some(correct(&y, &b.labels)?)
                } else {
                    None
                };
                Ok(StepOutput { loss, correct: hits })
            })?
        }
    };
    exec.write_back(&mut graph)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let model = a.out.join("model.onnx");
    graph.save(&model)?;
    let saved = Graph::load(&model)?;
    let probe = &data.split.test[..64.min(data.split.test.len())];
    let b = data.batch(probe);
    let x = Tensor::from_vec(b.pixels, b.shape.to_vec(), &Device::Cpu)?;
    let parity = check_parity(&saved, &exec, &[(input.as_str(), x)], 1e-4)?;
    let out_dims = graph.outputs()[0].dims.clone().unwrap_or_default();
    let test_accuracy = if out_dims.len() == 2 {
        Some(tract_accuracy(saved.proto(), &data, data.split.part(Part::Test), 500)?.value())
    } else {
        None
    };

    let v = serde_json::json!({
        "model": model,
        "data": a.data,
        "loss": a.loss,
        "test_accuracy": test_accuracy,
        "parity": parity,
        "peak_rss_bytes": peak_rss_bytes(),
        "train": summary,
        "config": cfg,
    });
    super::write_json(&a.out.join("summary.json"), &v)?;
    Ok(v)
}
