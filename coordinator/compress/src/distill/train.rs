//! One distillation stage: a frozen teacher, a student trained through the candle executor.
//!
//! The loss of a step is
//! `ce·CE(labels) + (1 − ce)·KD(teacher ‖ student) + h·Σ hidden + a·Σ attention + r·attribution`:
//! - `KD` is one of [`hone_learn::train::kd`]'s divergences on the output logits;
//! - `hidden`: each student block's output, through a learned linear projection (identity at
//!   start when the widths agree), against its mapped teacher block's output (mean squared error
//!   over real tokens);
//! - `attention`: each mapped block's attention maps, averaged over heads (so head counts may
//!   differ), compared row by row with KL over the real tokens;
//! - `attribution`: see [`super::attribution`].
//!
//! The layer map sends student block `j` of `S` to teacher block `round((j + 1)·T / S) − 1`, so
//! the last student block learns from the last teacher block.
//!
//! A stage writes a checkpoint every `checkpoint_every` steps into its folder: the student's
//! weights (`student.onnx`), the optimizer's moments and the projections
//! (`state.safetensors`), and where it stands (`state.json`). A stage started again over a
//! checkpoint resumes from it; batches are a function of the seed and the step, so a resumed
//! stage sees the same batches as an uninterrupted one.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::{D, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use hone_graph::Graph;
use hone_learn::data::{Part, SplitMix64};
use hone_learn::eval::{EvalBatch, EvalData};
use hone_learn::train::exec::Executor;
use hone_learn::train::kd::{KdLoss, Teacher, kd_loss};
use hone_learn::train::loss::cross_entropy;
use hone_learn::train::optim::{AdamW, Optimizer};
use hone_learn::train::schedule::linear_warmup_decay;

use super::attribution::{AttributionGradient, Attributions, attribution_loss};
use super::blocks::Blocks;
use crate::prune::finetune::trainable;
use crate::prune::importance::logits_value;

/// Settings of one stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageConfig {
    /// The output divergence.
    pub loss: KdLoss,
    /// Weight of hard-label cross-entropy (the divergence gets `1 − ce_weight`).
    pub ce_weight: f64,
    /// Weight of the hidden-state loss (0: none).
    pub hidden_weight: f64,
    /// Weight of the attention-map loss (0: none).
    pub attention_weight: f64,
    /// Weight of the attribution loss (0: none).
    pub attribution_weight: f64,
    /// Integration steps of the student's attribution.
    pub attribution_student_steps: usize,
    /// How the attribution loss's gradient is taken.
    pub attribution_gradient: AttributionGradient,
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate (10 % linear warm-up, then linear decay).
    pub lr: f64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Training examples drawn from (`None`: the whole training part).
    pub train_limit: Option<usize>,
    /// Steps between checkpoints (0: none).
    pub checkpoint_every: usize,
}

/// What a stage did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageSummary {
    /// Steps run in all (over resumptions).
    pub steps: usize,
    /// Steps this run resumed from (0: a fresh start).
    pub resumed_from: usize,
    /// Mean total loss over the first and last tenth of the steps.
    pub first_loss: f64,
    /// See `first_loss`.
    pub final_loss: f64,
    /// Mean of each loss term over the last tenth of the steps.
    pub final_terms: Vec<(String, f64)>,
    /// Seconds of training (this run).
    pub seconds: f64,
    /// Examples per second (this run).
    pub examples_per_second: f64,
    /// Parameters trained.
    pub trainable_params: usize,
}

/// Where a stage stands (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    step: usize,
    losses: Vec<f64>,
    terms: Vec<Vec<(String, f64)>>,
    seconds: f64,
}

/// The map from student blocks to teacher blocks.
pub fn layer_map(student: usize, teacher: usize) -> Vec<usize> {
    (0..student)
        .map(|j| {
            let t = (((j + 1) * teacher) as f64 / student as f64).round() as usize;
            t.clamp(1, teacher) - 1
        })
        .collect()
}

/// The values one side of the loss reads: logits, block outputs, attention maps.
struct Taps {
    logits: String,
    hidden: Vec<String>,
    attention: Vec<Vec<String>>,
}

impl Taps {
    fn of(graph: &Graph, blocks: Option<&Blocks>) -> anyhow::Result<Taps> {
        let logits = logits_value(graph).context("the model has no output")?;
        let (hidden, attention) = match blocks {
            Some(b) => (
                b.blocks.iter().map(|b| b.exit.clone()).collect(),
                b.blocks.iter().map(|b| b.attention.clone()).collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        Ok(Taps { logits, hidden, attention })
    }

    fn names(&self, hidden: bool, attention: bool) -> Vec<&str> {
        let mut v = vec![self.logits.as_str()];
        if hidden {
            v.extend(self.hidden.iter().map(String::as_str));
        }
        if attention {
            v.extend(self.attention.iter().flatten().map(String::as_str));
        }
        v
    }
}

/// `[B, S]` f32 weights of real tokens, from the batch's `attention_mask` input (all ones when
/// the model has none).
fn token_weights(batch: &EvalBatch, b: usize, s: usize) -> anyhow::Result<Tensor> {
    match batch.inputs.iter().find(|(n, _)| n.contains("mask")) {
        Some((_, m)) if m.dims() == [b, s] => Ok(m.to_dtype(DType::F32)?),
        _ => Ok(Tensor::ones((b, s), DType::F32, &Device::Cpu)?),
    }
}

/// Masked mean squared error of `[B, S, D]` tensors over real tokens.
fn masked_mse(a: &Tensor, b: &Tensor, w: &Tensor) -> anyhow::Result<Tensor> {
    let d = a.dim(D::Minus1)? as f64;
    let per_token = (a - b)?.sqr()?.sum(D::Minus1)?; // [B, S]
    let total = w.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((per_token * w)?.sum_all()?.affine(1.0 / (total.max(1.0) * d), 0.0)?)
}

/// Head-averaged attention maps `[B, H, S, S]` compared row by row: `KL(teacher ‖ student)`
/// over real query rows.
fn attention_kl(student: &Tensor, teacher: &Tensor, w: &Tensor) -> anyhow::Result<Tensor> {
    if student.rank() != 4 || teacher.rank() != 4 {
        bail!(
            "attention maps must be [B, H, S, S], got {:?} and {:?}",
            student.dims(),
            teacher.dims()
        );
    }
    let s = student.mean(1)?.clamp(1e-9, 1.0)?;
    let t = teacher.mean(1)?.detach().clamp(1e-9, 1.0)?;
    let rows = (&t * (t.log()? - s.log()?)?)?.sum(D::Minus1)?; // [B, S]
    let total = w.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((rows * w)?.sum_all()?.affine(1.0 / total.max(1.0), 0.0)?)
}

/// `[N, C]` logits of a model output (classifier `[N, C]`, or `[N, S, V]` flattened to rows).
fn rows(t: &Tensor) -> anyhow::Result<Tensor> {
    Ok(match t.rank() {
        2 => t.clone(),
        r if r > 2 => t.flatten_to(r - 2)?,
        _ => bail!("logits of rank {} are not [N, C]", t.rank()),
    })
}

/// The batch order: examples shuffled once by the seed, cycled.
fn batch_at(order: &[usize], step: usize, size: usize) -> Vec<usize> {
    (0..size).map(|i| order[(step * size + i) % order.len()]).collect()
}

/// Runs one stage: trains `student` against `teacher` on `data`'s training part, resuming from
/// `dir`'s checkpoint when there is one. `attributions` holds the teacher's cached attributions
/// when the attribution loss is on.
#[allow(clippy::too_many_arguments)]
pub fn train_stage(
    teacher: &Graph,
    student: &mut Graph,
    data: &EvalData,
    cfg: &StageConfig,
    dir: &Path,
    mut attributions: Option<&mut Attributions>,
    progress: &dyn Fn(&str),
) -> anyhow::Result<StageSummary> {
    if cfg.steps == 0 || cfg.batch_size == 0 {
        bail!("a distillation stage needs at least one step and one example per batch");
    }
    cfg.loss.check()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let state_path = dir.join("state.json");
    let mut state = State { step: 0, losses: Vec::new(), terms: Vec::new(), seconds: 0.0 };
    let mut saved: HashMap<String, Tensor> = HashMap::new();
    if state_path.exists() {
        state = serde_json::from_slice(&std::fs::read(&state_path)?)
            .with_context(|| format!("reading {}", state_path.display()))?;
        let weights = Graph::load(dir.join("student.onnx")).context("the checkpoint's student")?;
        for name in trainable(student) {
            if let Ok(t) = weights.initializer(&name) {
                student.replace_initializer(&name, &t)?;
            }
        }
        saved = candle_core::safetensors::load(dir.join("state.safetensors"), &Device::Cpu)
            .context("the checkpoint's optimizer state")?;
        progress(&format!("resuming at step {}/{}", state.step, cfg.steps));
    }
    let resumed_from = state.step;

    let want_blocks = cfg.hidden_weight > 0.0 || cfg.attention_weight > 0.0;
    let (tb, sb) = if want_blocks {
        (
            Some(Blocks::find(teacher).context("the teacher's layers")?),
            Some(Blocks::find(student).context("the student's layers")?),
        )
    } else {
        (None, None)
    };
    let t_taps = Taps::of(teacher, tb.as_ref())?;
    let s_taps = Taps::of(student, sb.as_ref())?;
    let map = match (&tb, &sb) {
        (Some(t), Some(s)) => layer_map(s.len(), t.len()),
        _ => Vec::new(),
    };

    let names = trainable(student);
    let exec = Executor::with_trainable(student, |n| names.contains(n))?;
    let t_exec = Executor::with_trainable(teacher, |_| false)?;

    // Projections of hidden states, created lazily at the first batch (their sizes come from it).
    let mut projections: Vec<Var> = Vec::new();
    let mut opt: Option<AdamW> = None;

    let mut order = data.examples(Part::Train, cfg.train_limit, None);
    if order.is_empty() {
        bail!("the data set `{}` has no training examples", data.name());
    }
    SplitMix64::new(cfg.seed).shuffle(&mut order);
    let warm = (cfg.steps / 10).max(1);
    let started = Instant::now();
    let base_seconds = state.seconds;
    let mut examples = 0usize;
    let labelled = data.labelled();
    while state.step < cfg.steps {
        let step = state.step;
        let idx = batch_at(&order, step, cfg.batch_size);
        let sbatch = data.batch(student, &idx)?;
        let tbatch = data.batch(teacher, &idx)?;
        let t_out = t_exec.run(
            tbatch.inputs.iter().cloned(),
            &t_taps.names(cfg.hidden_weight > 0.0, cfg.attention_weight > 0.0),
        )?;
        let s_out = exec.run(
            sbatch.inputs.iter().cloned(),
            &s_taps.names(cfg.hidden_weight > 0.0, cfg.attention_weight > 0.0),
        )?;
        let y = rows(&s_out[&s_taps.logits])?;
        let t_logits = rows(&t_out[&t_taps.logits])?.detach();
        let mut terms: Vec<(String, Tensor)> = Vec::new();
        let kd_w = if labelled { 1.0 - cfg.ce_weight } else { 1.0 };
        if kd_w > 0.0 {
            let kd = kd_loss(&y, &Teacher::Logits(t_logits.clone()), &cfg.loss, None)?;
            terms.push((cfg.loss.divergence.name().to_owned(), kd.affine(kd_w, 0.0)?));
        }
        if labelled && cfg.ce_weight > 0.0 {
            let labels = sbatch.labels.clone().context("labelled data without labels")?;
            terms.push(("ce".into(), cross_entropy(&y, &labels)?.affine(cfg.ce_weight, 0.0)?));
        }
        if cfg.hidden_weight > 0.0 || cfg.attention_weight > 0.0 {
            let h0 = &s_out[&s_taps.hidden[0]];
            let (b, s) = (h0.dim(0)?, h0.dim(1)?);
            let w = token_weights(&sbatch, b, s)?;
            if cfg.hidden_weight > 0.0 {
                let mut sum: Option<Tensor> = None;
                for (j, &t) in map.iter().enumerate() {
                    let hs = &s_out[&s_taps.hidden[j]];
                    let ht = t_out[&t_taps.hidden[t]].detach();
                    if projections.len() <= j {
                        let (ds, dt) = (hs.dim(D::Minus1)?, ht.dim(D::Minus1)?);
                        let init = match saved.get(&format!("proj/{j}")) {
                            Some(p) => p.clone(),
                            None if ds == dt => Tensor::eye(ds, DType::F32, &Device::Cpu)?,
                            None => Tensor::randn(
                                0f32,
                                (1.0 / ds as f32).sqrt(),
                                (ds, dt),
                                &Device::Cpu,
                            )?,
                        };
                        projections.push(Var::from_tensor(&init)?);
                    }
                    let p = projections[j].as_tensor();
                    let projected = hs.broadcast_matmul(p)?;
                    let term = masked_mse(&projected, &ht, &w)?;
                    sum = Some(match sum {
                        None => term,
                        Some(acc) => (acc + term)?,
                    });
                }
                if let Some(h) = sum {
                    terms.push((
                        "hidden".into(),
                        h.affine(cfg.hidden_weight / map.len() as f64, 0.0)?,
                    ));
                }
            }
            if cfg.attention_weight > 0.0 {
                let mut sum: Option<Tensor> = None;
                for (j, &t) in map.iter().enumerate() {
                    let (Some(sa), Some(ta)) =
                        (s_taps.attention[j].first(), t_taps.attention[t].first())
                    else {
                        continue;
                    };
                    let term = attention_kl(&s_out[sa], &t_out[ta], &w)?;
                    sum = Some(match sum {
                        None => term,
                        Some(acc) => (acc + term)?,
                    });
                }
                if let Some(a) = sum {
                    terms.push((
                        "attention".into(),
                        a.affine(cfg.attention_weight / map.len() as f64, 0.0)?,
                    ));
                }
            }
        }
        if cfg.attribution_weight > 0.0 {
            let cache =
                attributions.as_deref_mut().context("attribution loss without a teacher cache")?;
            let targets = cache.get_or_compute(&t_exec, teacher, data, &idx)?;
            let term = attribution_loss(
                &exec,
                student,
                &sbatch,
                &targets,
                cfg.attribution_student_steps,
                cfg.attribution_gradient,
            )?;
            terms.push(("attribution".into(), term.affine(cfg.attribution_weight, 0.0)?));
        }
        if terms.is_empty() {
            bail!("no loss term is on: give a divergence weight (--ce-weight below 1) or labels");
        }
        let mut total = terms[0].1.clone();
        for (_, t) in &terms[1..] {
            total = (total + t)?;
        }
        let value = f64::from(total.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        if !value.is_finite() {
            bail!("the distillation loss is {value} at step {step}: lower the learning rate");
        }
        let grads = exec.backward(&total)?;
        let opt = opt.get_or_insert_with(|| {
            let mut params: Vec<(String, Var)> =
                exec.parameters().map(|(n, v)| (n.to_owned(), v.clone())).collect();
            params.extend(
                projections.iter().enumerate().map(|(j, v)| (format!("proj/{j}"), v.clone())),
            );
            let mut o = AdamW::new(params, 0.9, 0.999, 1e-8, 1e-4);
            o.load_state(&saved, resumed_from as u64);
            o
        });
        let store_grad = |name: &str| -> Option<Tensor> {
            match name.strip_prefix("proj/") {
                Some(j) => j
                    .parse::<usize>()
                    .ok()
                    .and_then(|j| grads.of(projections[j].as_tensor()).cloned()),
                None => grads.get(name).cloned(),
            }
        };
        let lr = linear_warmup_decay(cfg.lr, step, cfg.steps, warm);
        opt.step_with(&store_grad, lr)?;
        let mut row = Vec::with_capacity(terms.len());
        for (n, t) in &terms {
            row.push((n.clone(), f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)));
        }
        state.losses.push(value);
        state.terms.push(row);
        state.step += 1;
        examples += idx.len();
        let every = (cfg.steps / 20).max(1);
        if state.step.is_multiple_of(every) || state.step == cfg.steps {
            let rate = examples as f64 / started.elapsed().as_secs_f64().max(1e-9);
            progress(&format!(
                "step {}/{}: loss {value:.4} ({rate:.1} examples/s)",
                state.step, cfg.steps
            ));
        }
        let checkpoint = cfg.checkpoint_every > 0
            && (state.step.is_multiple_of(cfg.checkpoint_every) || state.step == cfg.steps);
        if checkpoint {
            state.seconds = base_seconds + started.elapsed().as_secs_f64();
            exec.write_back(student)?;
            write_checkpoint(dir, student, opt, &state)?;
        }
    }
    exec.write_back(student)?;
    let seconds = started.elapsed().as_secs_f64();
    let tenth = (state.losses.len() / 10).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mut final_terms: Vec<(String, f64)> = Vec::new();
    if let Some(last) = state.terms.last() {
        for (k, (name, _)) in last.iter().enumerate() {
            let tail = &state.terms[state.terms.len() - tenth.min(state.terms.len())..];
            let v: Vec<f64> = tail.iter().filter_map(|r| r.get(k).map(|x| x.1)).collect();
            final_terms.push((name.clone(), mean(&v)));
        }
    }
    Ok(StageSummary {
        steps: state.step,
        resumed_from,
        first_loss: mean(&state.losses[..tenth.min(state.losses.len())]),
        final_loss: mean(&state.losses[state.losses.len().saturating_sub(tenth)..]),
        final_terms,
        seconds,
        examples_per_second: examples as f64 / seconds.max(1e-9),
        trainable_params: exec.parameters().map(|(_, v)| v.as_tensor().elem_count()).sum(),
    })
}

/// Writes a checkpoint atomically enough to resume from: weights and optimizer state first,
/// `state.json` (what says the checkpoint exists) last, each through a rename.
fn write_checkpoint(dir: &Path, student: &Graph, opt: &AdamW, state: &State) -> anyhow::Result<()> {
    let tmp = dir.join("student.onnx.tmp");
    student.save(&tmp)?;
    std::fs::rename(&tmp, dir.join("student.onnx"))?;
    let tmp = dir.join("state.safetensors.tmp");
    candle_core::safetensors::save(&opt.state(), &tmp)?;
    std::fs::rename(&tmp, dir.join("state.safetensors"))?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(state)?)?;
    std::fs::rename(&tmp, dir.join("state.json"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_map_ends_on_the_last_teacher_block() {
        assert_eq!(layer_map(1, 3), vec![2]);
        assert_eq!(layer_map(2, 6), vec![2, 5]);
        assert_eq!(layer_map(3, 3), vec![0, 1, 2]);
        assert_eq!(layer_map(4, 30), vec![7, 14, 22, 29]);
    }

    #[test]
    fn batches_cycle_through_the_order() {
        let order = [5, 6, 7];
        assert_eq!(batch_at(&order, 0, 2), vec![5, 6]);
        assert_eq!(batch_at(&order, 1, 2), vec![7, 5]);
    }
}
