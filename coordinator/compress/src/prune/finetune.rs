//! Recovery fine-tuning of a pruned model through the model core: `steps` AdamW updates on
//! training batches, the task loss (cross-entropy against labels, or the parent's top-1 without
//! labels), optionally plus distillation from the parent's outputs (KL divergence of softened
//! distributions, temperature 2). Embedding tables and scalar constants stay frozen.

use std::collections::HashSet;
use std::time::Instant;

use candle_core::{D, DType, Tensor as CTensor};

use hone_graph::Graph;
use hone_learn::eval::EvalBatch;
use hone_learn::train::TrainError;
use hone_learn::train::exec::Executor;
use hone_learn::train::loss::{cross_entropy, log_softmax};
use hone_learn::train::optim::OptimizerConfig;
use hone_learn::train::schedule::linear_warmup_decay;

use super::importance::logits_value;

/// Settings of a fine-tune.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FinetuneConfig {
    /// Optimizer steps (one batch each, cycling through the batches given).
    pub steps: usize,
    /// Peak learning rate (linear warm-up over 10 % of the steps, then linear decay).
    pub lr: f64,
    /// Weight of the distillation term (0: none).
    pub distill: f64,
}

/// What the fine-tune did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FinetuneSummary {
    /// Steps run.
    pub steps: usize,
    /// Mean loss of the first and last tenth of the steps.
    pub first_loss: f64,
    /// See `first_loss`.
    pub final_loss: f64,
    /// Seconds.
    pub seconds: f64,
    /// Examples per second.
    pub samples_per_second: f64,
    /// Parameters trained.
    pub trainable_params: usize,
}

/// Trainable initializers: floats with more than one element, not read as an embedding table
/// (the recovery fine-tune and distillation students train these).
pub(crate) fn trainable(graph: &Graph) -> HashSet<String> {
    let tables = super::embedding_tables(graph);
    graph
        .graph_proto()
        .initializer
        .iter()
        .filter(|t| t.data_type == 1 && t.dims.iter().product::<i64>() > 1)
        .filter(|t| !tables.contains(t.name.as_str()))
        .map(|t| t.name.clone())
        .collect()
}

/// Fine-tunes `child` in place; `parent` gives distillation targets when `cfg.distill > 0`.
pub fn finetune(
    child: &mut Graph,
    parent: &Graph,
    batches: &[EvalBatch],
    cfg: &FinetuneConfig,
    progress: bool,
) -> Result<FinetuneSummary, TrainError> {
    if batches.is_empty() || cfg.steps == 0 {
        return Err(TrainError::config("fine-tuning needs at least one batch and one step"));
    }
    let names = trainable(child);
    let exec = Executor::with_trainable(child, |n| names.contains(n))?;
    let teacher =
        if cfg.distill > 0.0 { Some(Executor::with_trainable(parent, |_| false)?) } else { None };
    let logits = logits_value(child).ok_or_else(|| TrainError::config("no output"))?;
    let parent_logits = logits_value(parent).ok_or_else(|| TrainError::config("no output"))?;
    let mut opt = OptimizerConfig::adamw(1e-4).build(&exec);
    let warm = (cfg.steps / 10).max(1);
    let start = Instant::now();
    let mut losses = Vec::with_capacity(cfg.steps);
    let mut samples = 0usize;
    for step in 0..cfg.steps {
        let b = &batches[step % batches.len()];
        let out = exec.run(b.inputs.iter().cloned(), &[logits.as_str()])?;
        let y = flat(out.get(&logits).ok_or_else(|| TrainError::config("no logits"))?)?;
        let target = match &teacher {
            Some(t) => {
                let o = t.run(b.inputs.iter().cloned(), &[parent_logits.as_str()])?;
                Some(
                    flat(o.get(&parent_logits).ok_or_else(|| TrainError::config("no logits"))?)?
                        .detach(),
                )
            }
            None => None,
        };
        let labels: Vec<u32> = match (&b.labels, &target) {
            (Some(l), _) => l.clone(),
            (None, Some(t)) => t.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1()?,
            (None, None) => y.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1()?,
        };
        let mut loss = cross_entropy(&y, &labels)?;
        if let Some(t) = &target {
            loss = (loss + kd(&y, t, 2.0)?.affine(cfg.distill, 0.0)?)?;
        }
        let value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(TrainError::config(format!("the loss is {value} at step {step}")));
        }
        let grads = exec.backward(&loss)?;
        let lr = linear_warmup_decay(cfg.lr, step, cfg.steps, warm);
        opt.step(&grads, lr)?;
        losses.push(value);
        samples += labels.len();
        if progress && ((step + 1) % (cfg.steps / 10).max(1) == 0 || step + 1 == cfg.steps) {
            eprintln!("  fine-tune step {}/{}: loss {value:.4}", step + 1, cfg.steps);
        }
    }
    exec.write_back(child)?;
    let tenth = (losses.len() / 10).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let seconds = start.elapsed().as_secs_f64();
    let trainable_params = exec.parameters().map(|(_, v)| v.as_tensor().elem_count()).sum();
    Ok(FinetuneSummary {
        steps: losses.len(),
        first_loss: mean(&losses[..tenth]),
        final_loss: mean(&losses[losses.len() - tenth..]),
        seconds,
        samples_per_second: samples as f64 / seconds.max(1e-9),
        trainable_params,
    })
}

fn flat(t: &CTensor) -> Result<CTensor, TrainError> {
    Ok(if t.rank() > 2 { t.flatten_from(1)? } else { t.clone() })
}

/// `T² · KL(softmax(t/T) ‖ softmax(s/T))`, mean over rows.
fn kd(student: &CTensor, teacher: &CTensor, temp: f64) -> Result<CTensor, TrainError> {
    let ls = log_softmax(&student.affine(1.0 / temp, 0.0)?)?;
    let lt = log_softmax(&teacher.affine(1.0 / temp, 0.0)?)?;
    let pt = lt.exp()?;
    let n = student.dim(0)? as f64;
    Ok((pt * (lt - ls)?)?.sum_all()?.affine(temp * temp / n, 0.0)?)
}
