//! The evaluation and training tasks behind `coordinator eval` and `coordinator train`: plain
//! settings in, a JSON summary (and, for evaluation, a human summary) out. They run on the
//! calling thread; the CLI runs them on a blocking thread and prints the result.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::Tensor;
use hone_graph::Graph;

use crate::data::Part;
use crate::eval::{self, EvalData};
use crate::parity::check_parity;
use crate::train::TrainError;
use crate::train::exec::Executor;
use crate::train::fit::{StepOutput, TrainConfig, fit, peak_rss_bytes};
use crate::train::loss::{LossKind, correct, cosine, cross_entropy, mse};
use crate::train::optim::OptimizerConfig;

/// What `coordinator eval` measures: accuracy on labelled data, or fidelity against
/// `reference`.
#[derive(Debug, Clone)]
pub struct EvalTask {
    /// ONNX model.
    pub model: PathBuf,
    /// Data set name.
    pub data: String,
    /// Reference model (fidelity instead of accuracy).
    pub reference: Option<PathBuf>,
    /// Output to read.
    pub output: Option<String>,
    /// test, validation or train.
    pub part: String,
    /// A fixed subset of this many examples.
    pub limit: Option<usize>,
    /// Examples per tract run.
    pub batch_size: usize,
    /// The runtime that runs the model (the reference always runs in tract).
    pub runtime: crate::eval::EvalRuntime,
}

/// What `coordinator train` trains.
#[derive(Debug, Clone)]
pub struct TrainTask {
    /// ONNX model to train.
    pub model: PathBuf,
    /// Data set name.
    pub data: String,
    /// Loss.
    pub loss: LossKind,
    /// Reference (teacher) model for mse and cosine.
    pub reference: Option<PathBuf>,
    /// Output folder (model.onnx, summary.json).
    pub out: PathBuf,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// adamw or sgd.
    pub optimizer: String,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seed of the shuffles.
    pub seed: u64,
    /// Stop after this many steps.
    pub max_steps: Option<u64>,
}

/// A part by name.
pub fn part(name: &str) -> anyhow::Result<Part> {
    Ok(match name {
        "test" => Part::Test,
        "validation" => Part::Validation,
        "train" => Part::Train,
        other => bail!("unknown part `{other}`: test, validation or train"),
    })
}

/// The JSON result and the human summary of `coordinator eval`.
pub fn evaluate(a: EvalTask) -> anyhow::Result<(serde_json::Value, String)> {
    let which = part(&a.part)?;
    // A DVC data set is resolved here, so its identity can be reported.
    let spec =
        crate::eval::DataSpec::parse(&a.data)?.resolve_dvc(&crate::data::dvc::default_dir())?;
    let data = EvalData::open(&spec)?;
    let graph = eval::load_model(&a.model)?;
    data.check(&graph).with_context(|| format!("model {}", a.model.display()))?;
    let start = Instant::now();
    let output = a.output.as_deref();
    let Some(reference) = &a.reference else {
        if !data.labelled() {
            bail!(
                "data set `{}` has no labels: give --reference R to measure the model's fidelity \
                 (top-1 agreement and cosine similarity) against R",
                data.name()
            );
        }
        let acc = eval::accuracy_in(&graph, &data, which, a.batch_size, a.limit, output, a.runtime)
            .with_context(|| format!("evaluating {}", a.model.display()))?;
        let secs = start.elapsed().as_secs_f64();
        let v = serde_json::json!({
            "model": a.model, "data": a.data, "part": a.part, "accuracy": acc.value(),
            "correct": acc.correct, "total": acc.total, "seconds": secs, "runtime": a.runtime,
            "dataset": spec.dataset,
        });
        let text = format!(
            "accuracy {:.4} ({}/{} {} {} examples, {secs:.1} s)",
            acc.value(),
            acc.correct,
            acc.total,
            a.data,
            a.part
        );
        return Ok((v, text));
    };
    let reference_graph = eval::load_model(reference)?;
    data.check(&reference_graph).with_context(|| format!("reference {}", reference.display()))?;
    let (g, r) = (&graph, &reference_graph);
    let f = eval::fidelity_in(g, r, &data, which, a.batch_size, a.limit, output, a.runtime)
        .with_context(|| format!("comparing {} with {}", a.model.display(), reference.display()))?;
    let secs = start.elapsed().as_secs_f64();
    let v = serde_json::json!({
        "model": a.model, "reference": reference, "data": a.data, "part": a.part,
        "examples": f.examples,
        "accuracy": f.model_accuracy.map(|x| x.value()),
        "reference_accuracy": f.reference_accuracy.map(|x| x.value()),
        "fidelity": f, "seconds": secs, "runtime": a.runtime, "dataset": spec.dataset,
    });
    let mut text = format!(
        "fidelity against {} on {} {} ({} examples, output `{}` vs `{}`, {secs:.1} s)\n  \
         top-1 agreement {:.4} ({}/{})\n  cosine similarity mean {:.6}, min {:.6}",
        reference.display(),
        a.data,
        a.part,
        f.examples,
        f.output,
        f.reference_output,
        f.top1_agreement,
        f.agreements,
        f.examples,
        f.mean_cosine,
        f.min_cosine
    );
    if let (Some(m), Some(r)) = (f.model_accuracy, f.reference_accuracy) {
        text += &format!("\n  accuracy {:.4} (reference {:.4})", m.value(), r.value());
    }
    Ok((v, text))
}

fn optimizer(a: &TrainTask) -> anyhow::Result<OptimizerConfig> {
    Ok(match a.optimizer.as_str() {
        "adamw" => OptimizerConfig::adamw(a.weight_decay),
        "sgd" => OptimizerConfig::sgd(a.weight_decay),
        other => bail!("unknown optimizer `{other}`: adamw or sgd"),
    })
}

/// A data error inside a training step (whose closure returns [`TrainError`]).
fn step_error(e: anyhow::Error) -> TrainError {
    TrainError::config(format!("{e:#}"))
}

/// The first graph output declared float (or untyped): the logits or the features, past the
/// int64 pass-through outputs some exports have (MiniLM's first output is its `input_ids`).
fn first_float_output(graph: &Graph) -> Option<String> {
    use hone_graph::DataType;
    graph
        .outputs()
        .into_iter()
        .find(|v| matches!(v.data_type, None | Some(DataType::F32 | DataType::F64 | DataType::F16)))
        .map(|v| v.name)
}

/// Trains `a.model` (`coordinator train`): batches from [`EvalData`] (images, or tokens padded
/// per batch), the reference (for mse and cosine) run by a frozen executor, which takes any
/// input shape.
pub fn train(a: TrainTask) -> anyhow::Result<serde_json::Value> {
    let data = EvalData::open(&crate::eval::DataSpec::parse(&a.data)?)?;
    if !data.labelled() {
        bail!("data set `{}` has no labels: train on fashion-mnist, mnist or vader", data.name());
    }
    let mut graph = eval::load_model(&a.model)?;
    let feeder = data.feeder(&graph).with_context(|| format!("model {}", a.model.display()))?;
    let output = first_float_output(&graph).context("the model has no float output")?;
    let exec = Executor::new(&graph)?;
    let cfg = TrainConfig {
        seed: a.seed,
        optimizer: optimizer(&a)?,
        max_steps: a.max_steps,
        progress: true,
        ..TrainConfig::new(a.epochs, a.batch_size, a.lr)
    };
    let train_idx = data.examples(Part::Train, None, None);
    let summary = match a.loss {
        LossKind::CrossEntropy => {
            if a.reference.is_some() {
                bail!("--reference is for the mse and cosine losses");
            }
            fit(&exec, &train_idx, &cfg, |batch| {
                let b = feeder.batch(batch, None).map_err(step_error)?;
                let labels = b.labels.unwrap_or_default();
                let mut out = exec.run(b.inputs, &[output.as_str()])?;
                let logits = out.remove(&output).ok_or_else(|| TrainError::config("no output"))?;
                Ok(StepOutput {
                    loss: cross_entropy(&logits, &labels)?,
                    correct: Some(correct(&logits, &labels)?),
                })
            })?
        }
        kind => {
            let reference = a.reference.as_ref().context("mse and cosine need --reference")?;
            let teacher = eval::load_model(reference)?;
            let teach = data.feeder(&teacher).context("the reference model")?;
            let teacher_out =
                first_float_output(&teacher).context("the reference has no float output")?;
            let frozen = Executor::with_trainable(&teacher, |_| false)?;
            fit(&exec, &train_idx, &cfg, |batch| {
                let b = feeder.batch(batch, None).map_err(step_error)?;
                let tb = teach.batch(batch, None).map_err(step_error)?;
                let target = frozen
                    .run(tb.inputs, &[teacher_out.as_str()])?
                    .remove(&teacher_out)
                    .ok_or_else(|| TrainError::config("the reference has no output"))?
                    .detach();
                let mut out = exec.run(b.inputs, &[output.as_str()])?;
                let y = out.remove(&output).ok_or_else(|| TrainError::config("no output"))?;
                let loss =
                    if kind == LossKind::Mse { mse(&y, &target)? } else { cosine(&y, &target)? };
                let hits = match (&b.labels, data.num_classes()) {
                    (Some(l), Some(k)) if y.rank() == 2 && y.dim(1)? == k => Some(correct(&y, l)?),
                    _ => None,
                };
                Ok(StepOutput { loss, correct: hits })
            })?
        }
    };
    exec.write_back(&mut graph)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let model = a.out.join("model.onnx");
    graph.save_gated(&model, &Default::default())?;
    let saved = Graph::load(&model)?;
    let probe = data.examples(Part::Test, Some(32), None);
    let b = feeder.batch(&probe, None)?;
    let named: Vec<(&str, Tensor)> =
        b.inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let parity = check_parity(&saved, &exec, &named, 1e-4)?;
    // Accuracy only when the output is the two class scores.
    let test_accuracy = match eval::accuracy(&saved, &data, Part::Test, 64, None) {
        Ok(acc) => Some(acc.value()),
        Err(e) if a.loss != LossKind::CrossEntropy => {
            eprintln!("no test accuracy: {e:#}");
            None
        }
        Err(e) => return Err(e.context("test accuracy of the trained model")),
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
    crate::baseline::write_json(&a.out.join("summary.json"), &v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear classifier of 28×28 images (builder model, seeded).
    fn linear_image_model(classes: usize, seed: u64) -> Graph {
        use crate::train::builder::{Layer, ModelSpec};
        let layers = vec![Layer::Flatten, Layer::Dense { out: classes }];
        ModelSpec { name: "linear".into(), input: [1, 28, 28], layers, seed }.build().unwrap().graph
    }

    fn args(model: PathBuf, out: PathBuf) -> TrainTask {
        TrainTask {
            model,
            data: "vader".into(),
            loss: LossKind::CrossEntropy,
            reference: None,
            out,
            epochs: 1,
            batch_size: 32,
            lr: 3e-2,
            optimizer: "adamw".into(),
            weight_decay: 0.0,
            seed: 1,
            max_steps: Some(40),
        }
    }

    #[test]
    fn train_on_vader_lowers_the_loss_and_writes_a_model_tract_runs() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("text.onnx");
        crate::eval::tests::tiny_text_model().save(&model).unwrap();
        let v = train(args(model, dir.path().join("out"))).unwrap();
        let (first, last) = (
            v["train"]["first_loss"].as_f64().unwrap(),
            v["train"]["final_loss"].as_f64().unwrap(),
        );
        assert!(last < first, "loss {first} → {last}");
        assert_eq!(v["train"]["steps"], 40);
        assert!(v["test_accuracy"].as_f64().is_some_and(|a| a > 0.5), "{v}");
        assert!(dir.path().join("out/model.onnx").exists());
        assert!(dir.path().join("out/summary.json").exists());
    }

    #[test]
    fn train_on_images_lowers_the_loss_and_distills_from_a_reference() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("cnn.onnx");
        linear_image_model(10, 3).save(&model).unwrap();
        let mut a = args(model.clone(), dir.path().join("ce"));
        a.data = "fashion-mnist".into();
        a.lr = 1e-2;
        let v = train(a).unwrap();
        let (first, last) = (
            v["train"]["first_loss"].as_f64().unwrap(),
            v["train"]["final_loss"].as_f64().unwrap(),
        );
        assert!(last < first, "loss {first} → {last}");
        assert!(v["test_accuracy"].as_f64().is_some_and(|acc| acc > 0.3), "{v}");
        // Distill a fresh model towards the trained one: the MSE falls.
        let mut a = args(model, dir.path().join("mse"));
        a.data = "fashion-mnist".into();
        a.loss = LossKind::Mse;
        a.reference = Some(dir.path().join("ce/model.onnx"));
        a.lr = 1e-2;
        let v = train(a).unwrap();
        assert!(v["train"]["final_loss"].as_f64() < v["train"]["first_loss"].as_f64(), "{v}");
        assert!(v["test_accuracy"].as_f64().is_some(), "the output is the class scores: {v}");
    }

    #[test]
    fn train_refuses_photos_and_models_that_do_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("text.onnx");
        crate::eval::tests::tiny_text_model().save(&model).unwrap();
        let mut a = args(model.clone(), dir.path().join("out"));
        a.data = "photos".into();
        let err = train(a).unwrap_err().to_string();
        assert!(err.contains("no labels"), "{err}");
        let image_model = dir.path().join("cnn.onnx");
        linear_image_model(2, 0).save(&image_model).unwrap();
        let err = format!("{:#}", train(args(image_model, dir.path().join("o"))).unwrap_err());
        assert!(err.contains("`image` f32") && err.contains("`vader` gives"), "{err}");
    }
}
