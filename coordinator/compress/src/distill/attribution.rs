//! Attribution-based distillation (after AD-KD, Wu et al. 2023): the student learns not only
//! what the teacher predicts but which input tokens the prediction rests on.
//!
//! The attribution of class `c` to token `t` is integrated gradients over the token's
//! embedding `e_t` (the output of the `Gather` that reads the token ids), from a zero baseline:
//! `a_t = Σ_d e_t,d · mean_i ∂z_c(α_i·e)/∂e_t,d`, with `α_i = (i + ½)/m` (the midpoint rule over
//! `m` steps). All `m` interpolations of a batch run as one batch of `m·B` through the
//! executor, with the embedding given in place of the `Gather`'s output
//! ([`Executor::run_overriding`]).
//!
//! The teacher's attributions (`m` = 16 by default, for its top-K classes) are computed once
//! per example and cached ([`Attributions`], on disk as JSON beside the checkpoints). The
//! student's are computed at every step with fewer steps (1 by default, the midpoint `α = ½`).
//! The loss is a function of a gradient, so its own gradient is a second-order one, taken one
//! of two ways ([`AttributionGradient`]): exactly, by candle's second-order gradients
//! (`CANDLE_GRAD_DO_NOT_DETACH=1`, read once per thread at its first backward pass, which
//! `coordinator distill --attribution-gradient exact` sets by restarting itself), or, by
//! default, through a first-order surrogate with the same gradient up to O(ε²): a directional
//! finite difference of the logits, two more forward passes instead of a second-order graph.
//!
//! The loss is `mean over examples and classes of ‖â_s − â_t‖²`, each attribution normalised to
//! unit length over the real tokens.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use candle_core::{D, DType, Device, Tensor, Var};

use hone_graph::Graph;
use hone_learn::eval::{EvalBatch, EvalData};
use hone_learn::train::exec::Executor;
use serde::{Deserialize, Serialize};

use crate::prune::importance::logits_value;

/// One example's teacher attributions: for each of its top classes, the class and one value per
/// real token.
pub type ExampleAttribution = Vec<(u32, Vec<f32>)>;

/// The value integrated gradients are taken over: the output of the `Gather` that reads token
/// ids (a graph input) from a float table.
pub fn embedding_value(graph: &Graph) -> Option<String> {
    let inputs: Vec<String> = hone_learn::eval::tract::true_inputs(graph);
    let inits: std::collections::HashSet<&str> = graph.initializer_names().into_iter().collect();
    let gathers: Vec<&tract_onnx::pb::NodeProto> = graph
        .node_protos()
        .iter()
        .filter(|n| n.op_type == "Gather" && n.input.len() == 2)
        .filter(|n| inits.contains(n.input[0].as_str()) && inputs.contains(&n.input[1]))
        .collect();
    gathers
        .iter()
        .find(|n| n.input[1].contains("input_ids"))
        .or_else(|| gathers.first())
        .map(|n| n.output[0].clone())
}

/// The teacher's attributions, computed once per example and kept (in memory and on disk).
#[derive(Debug)]
pub struct Attributions {
    /// Integration steps.
    pub steps: usize,
    /// Top classes attributed per example.
    pub classes: usize,
    cache: HashMap<usize, ExampleAttribution>,
    path: Option<PathBuf>,
    saved_at: Instant,
    /// Seconds spent computing attributions (this process).
    pub seconds: f64,
}

impl Attributions {
    /// A cache of `classes` top-class attributions with `steps` integration steps, loaded from
    /// `path` when it holds one made with the same settings.
    pub fn open(
        path: Option<PathBuf>,
        steps: usize,
        classes: usize,
    ) -> anyhow::Result<Attributions> {
        if steps == 0 || classes == 0 {
            bail!("attribution needs at least one integration step and one class");
        }
        let mut cache = HashMap::new();
        if let Some(p) = &path
            && p.exists()
        {
            let (s, c, entries): (usize, usize, Vec<(usize, ExampleAttribution)>) =
                serde_json::from_slice(&std::fs::read(p)?)
                    .with_context(|| format!("reading the attribution cache {}", p.display()))?;
            if s == steps && c == classes {
                cache = entries.into_iter().collect();
            }
        }
        Ok(Attributions { steps, classes, cache, path, saved_at: Instant::now(), seconds: 0.0 })
    }

    /// Examples cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Writes the cache (temporary file, then rename).
    pub fn save(&mut self) -> anyhow::Result<()> {
        if let Some(p) = &self.path {
            let mut entries: Vec<(&usize, &ExampleAttribution)> = self.cache.iter().collect();
            entries.sort_by_key(|e| *e.0);
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&(self.steps, self.classes, entries))?)?;
            std::fs::rename(&tmp, p)?;
        }
        self.saved_at = Instant::now();
        Ok(())
    }

    /// The attributions of examples `idx` (in that order), computing the missing ones with the
    /// teacher.
    pub fn get_or_compute(
        &mut self,
        exec: &Executor,
        teacher: &Graph,
        data: &EvalData,
        idx: &[usize],
    ) -> anyhow::Result<Vec<ExampleAttribution>> {
        let missing: Vec<usize> = {
            let mut m: Vec<usize> =
                idx.iter().copied().filter(|i| !self.cache.contains_key(i)).collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let started = Instant::now();
            for chunk in missing.chunks(8) {
                let batch = data.batch(teacher, chunk)?;
                let got = integrated_gradients(exec, teacher, &batch, self.steps, self.classes)?;
                for (i, a) in chunk.iter().zip(got) {
                    self.cache.insert(*i, a);
                }
            }
            self.seconds += started.elapsed().as_secs_f64();
            if self.saved_at.elapsed().as_secs() >= 30 {
                self.save()?;
            }
        }
        Ok(idx.iter().map(|i| self.cache[i].clone()).collect())
    }
}

/// Each input repeated `m` times along the batch axis.
fn repeat_inputs(batch: &EvalBatch, m: usize) -> anyhow::Result<Vec<(String, Tensor)>> {
    batch
        .inputs
        .iter()
        .map(|(n, t)| {
            let copies: Vec<&Tensor> = std::iter::repeat_n(t, m).collect();
            Ok((n.clone(), Tensor::cat(&copies, 0)?))
        })
        .collect()
}

/// Real token count of each example (from the attention mask; all tokens without one).
fn lengths(batch: &EvalBatch, b: usize, s: usize) -> anyhow::Result<Vec<usize>> {
    match batch.inputs.iter().find(|(n, _)| n.contains("mask")) {
        Some((_, m)) if m.dims() == [b, s] => {
            let rows: Vec<Vec<i64>> = m.to_dtype(DType::I64)?.to_vec2()?;
            Ok(rows.iter().map(|r| r.iter().filter(|&&v| v != 0).count()).collect())
        }
        _ => Ok(vec![s; b]),
    }
}

/// Per-step gradients of the chosen class logits with respect to the interpolated embeddings,
/// averaged over the steps: returns `(e, mean gradient)`, both `[B, S, D]`, and the logits at
/// `α = 1` (`[B, C]`). `classes_of(logits)` picks one class per example for each pass.
struct Ig {
    embedding: Tensor,
    /// One `[B, S, D]` mean gradient per class rank.
    gradients: Vec<Tensor>,
}

fn ig_pass(
    exec: &Executor,
    graph: &Graph,
    batch: &EvalBatch,
    steps: usize,
    classes: &[Vec<u32>],
) -> anyhow::Result<Ig> {
    let emb = embedding_value(graph)
        .context("attribution needs a token-embedding lookup (a `Gather` reading the token ids)")?;
    let logits = logits_value(graph).context("the model has no output")?;
    let e = exec
        .run(batch.inputs.iter().cloned(), &[emb.as_str()])?
        .remove(&emb)
        .context("embedding")?
        .detach();
    if e.rank() != 3 {
        bail!("the token embeddings `{emb}` are {:?}, not [batch, tokens, width]", e.dims());
    }
    let b = e.dim(0)?;
    let scaled: Vec<Tensor> = (0..steps)
        .map(|i| e.affine((i as f64 + 0.5) / steps as f64, 0.0))
        .collect::<Result<_, _>>()?;
    let x = Var::from_tensor(&Tensor::cat(&scaled, 0)?)?;
    let out = exec.run_overriding(
        repeat_inputs(batch, steps)?,
        vec![(emb.clone(), x.as_tensor().clone())],
        &[logits.as_str()],
    )?;
    let z = out.get(&logits).context("logits")?;
    let z = if z.rank() > 2 { z.flatten_from(1)? } else { z.clone() };
    let c = z.dim(1)?;
    let mut gradients = Vec::with_capacity(classes.len());
    for picks in classes {
        let mut onehot = vec![0f32; steps * b * c];
        for s in 0..steps {
            for (row, &k) in picks.iter().enumerate() {
                onehot[(s * b + row) * c + k as usize] = 1.0;
            }
        }
        let sel = Tensor::from_vec(onehot, (steps * b, c), &Device::Cpu)?.to_dtype(z.dtype())?;
        let target = (&z * sel)?.sum_all()?;
        let grads = exec.backward(&target)?;
        let g = grads.of(x.as_tensor()).context("no gradient reached the embeddings")?.clone();
        let (_, s, d) = e.dims3()?;
        gradients.push(g.reshape((steps, b, s, d))?.mean(0)?);
    }
    Ok(Ig { embedding: e, gradients })
}

/// The teacher's attributions for one batch: its top `classes` classes per example, `steps`
/// integration steps.
pub fn integrated_gradients(
    exec: &Executor,
    graph: &Graph,
    batch: &EvalBatch,
    steps: usize,
    classes: usize,
) -> anyhow::Result<Vec<ExampleAttribution>> {
    let logits = logits_value(graph).context("the model has no output")?;
    let z = exec
        .run(batch.inputs.iter().cloned(), &[logits.as_str()])?
        .remove(&logits)
        .context("logits")?;
    let z = if z.rank() > 2 { z.flatten_from(1)? } else { z };
    let z: Vec<Vec<f32>> = z.to_dtype(DType::F32)?.to_vec2()?;
    let k = classes.min(z[0].len());
    // picks[r][row]: the r-th most likely class of each example.
    let mut picks = vec![Vec::with_capacity(z.len()); k];
    for row in &z {
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        for (r, p) in picks.iter_mut().enumerate() {
            p.push(order[r]);
        }
    }
    let ig = ig_pass(exec, graph, batch, steps, &picks)?;
    let (b, s, _) = ig.embedding.dims3()?;
    let lens = lengths(batch, b, s)?;
    let mut out = vec![Vec::with_capacity(k); b];
    for (r, g) in ig.gradients.iter().enumerate() {
        let a: Vec<Vec<f32>> =
            (&ig.embedding * g)?.sum(D::Minus1)?.to_dtype(DType::F32)?.to_vec2()?;
        for (row, ex) in out.iter_mut().enumerate() {
            ex.push((picks[r][row], a[row][..lens[row]].to_vec()));
        }
    }
    Ok(out)
}

/// Whether candle keeps the graph of gradients (second-order gradients), which the student's
/// side of the attribution loss needs.
pub fn second_order_enabled() -> bool {
    std::env::var("CANDLE_GRAD_DO_NOT_DETACH").is_ok_and(|v| v == "1" || v == "true")
}

/// How the attribution loss's gradient with respect to the student's weights is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttributionGradient {
    /// Exactly, by differentiating the student's attribution (a gradient) again: candle's
    /// second-order gradients (`CANDLE_GRAD_DO_NOT_DETACH=1`), which keep every backward
    /// pass's graph and made a step about 100× slower than plain KD here.
    Exact,
    /// By a first-order surrogate with the same gradient up to O(ε²) (the default): with `w =
    /// ∂L/∂a` at the current attribution `a`, the gradient of `L` is that of `Σ w·a`, and `Σ_t
    /// w_t·a_t = Σ_t w_t e_t·∇_t z(x)` is the derivative of `z` at `x` along `u_t = w_t·e_t`,
    /// taken as `(z(x + εu) − z(x − εu)) / 2ε`. Two more forward passes of the interpolated
    /// batch, no second-order graph.
    #[default]
    FirstOrder,
}

impl std::str::FromStr for AttributionGradient {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exact" => Ok(AttributionGradient::Exact),
            "first-order" => Ok(AttributionGradient::FirstOrder),
            _ => Err(format!("`{s}`: exact or first-order")),
        }
    }
}

/// The attribution loss of the student on `batch` against the teacher's `targets` (one entry
/// per example, in batch order), with `steps` integration steps for the student, and its
/// gradient taken as `gradient` says.
pub fn attribution_loss(
    exec: &Executor,
    student: &Graph,
    batch: &EvalBatch,
    targets: &[ExampleAttribution],
    steps: usize,
    gradient: AttributionGradient,
) -> anyhow::Result<Tensor> {
    let exact = gradient == AttributionGradient::Exact;
    if exact && !second_order_enabled() {
        bail!(
            "the exact attribution gradient needs second-order gradients: run with \
             CANDLE_GRAD_DO_NOT_DETACH=1 (`coordinator distill --attribution-gradient exact` \
             sets it itself)"
        );
    }
    let k = targets.first().map_or(0, Vec::len);
    if k == 0 || targets.iter().any(|t| t.len() != k) {
        bail!("every example needs the same number of attributed classes");
    }
    let steps = steps.max(1);
    let picks: Vec<Vec<u32>> = (0..k).map(|r| targets.iter().map(|t| t[r].0).collect()).collect();
    let ig = ig_pass(exec, student, batch, steps, &picks)?;
    let (b, s, _) = ig.embedding.dims3()?;
    if b != targets.len() {
        bail!("{} attribution targets for a batch of {b}", targets.len());
    }
    let lens = lengths(batch, b, s)?;
    let mut mask = vec![0f32; b * s];
    for (row, &l) in lens.iter().enumerate() {
        for t in 0..l.min(s) {
            mask[row * s + t] = 1.0;
        }
    }
    let mask = Tensor::from_vec(mask, (b, s), &Device::Cpu)?;
    let mut exact_total: Option<Tensor> = None;
    let (mut value, mut surrogate) = (0f64, None::<Tensor>);
    for (r, g) in ig.gradients.iter().enumerate() {
        if exact && !g.track_op() {
            bail!("the student's attribution carries no gradient (second-order gradients are off)");
        }
        let g = if exact { g.clone() } else { g.detach() };
        let a_s = ((&ig.embedding * &g)?.sum(D::Minus1)?.to_dtype(DType::F32)? * &mask)?;
        let mut t = vec![0f32; b * s];
        for (row, ex) in targets.iter().enumerate() {
            let v = &ex[r].1;
            if v.len() != lens[row] {
                bail!(
                    "example {} has {} tokens for the student and {} in the teacher's attribution",
                    batch.indices.get(row).copied().unwrap_or(row),
                    lens[row],
                    v.len()
                );
            }
            t[row * s..row * s + v.len()].copy_from_slice(v);
        }
        let a_t = Tensor::from_vec(t, (b, s), &Device::Cpu)?;
        if exact {
            let term = unit_mse(&a_s, &a_t)?;
            exact_total = Some(match exact_total {
                None => term,
                Some(acc) => (acc + term)?,
            });
            continue;
        }
        // w = ∂L/∂a at the student's attribution, by a backward pass over the small graph.
        let a_var = Var::from_tensor(&a_s)?;
        let term = unit_mse(a_var.as_tensor(), &a_t)?;
        value += f64::from(term.to_scalar::<f32>()?);
        let w = term.backward()?.get(a_var.as_tensor()).context("no gradient for w")?.clone();
        let e = &ig.embedding;
        let u = e.broadcast_mul(&w.to_dtype(e.dtype())?.unsqueeze(D::Minus1)?)?;
        let norm = |x: &Tensor| -> anyhow::Result<f64> {
            Ok(f64::from(x.to_dtype(DType::F32)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?))
        };
        let (un, en) = (norm(&u)?, norm(e)?);
        if un == 0.0 || en == 0.0 {
            continue;
        }
        // A step of 1e-3 of the embeddings' size along u.
        let eps = 1e-3 * en / un;
        let mut points = Vec::with_capacity(2 * steps);
        for sign in [1.0, -1.0] {
            for i in 0..steps {
                points.push(
                    (e.affine((i as f64 + 0.5) / steps as f64, 0.0)?
                        + u.affine(sign * eps, 0.0)?)?,
                );
            }
        }
        let sur =
            class_sum(exec, student, batch, Tensor::cat(&points, 0)?, &picks[r], 2 * steps, |j| {
                (if j < steps { 1.0 } else { -1.0 }) / (2.0 * eps * steps as f64)
            })?;
        surrogate = Some(match surrogate {
            None => sur,
            Some(acc) => (acc + sur)?,
        });
    }
    if exact {
        return Ok(exact_total.expect("k > 0").affine(1.0 / k as f64, 0.0)?);
    }
    let value = Tensor::new(value as f32 / k as f32, &Device::Cpu)?;
    Ok(match surrogate {
        // The loss's value, with the surrogate's gradient.
        Some(sur) => {
            let sur = sur.affine(1.0 / k as f64, 0.0)?;
            ((sur.detach() * -1.0)? + &sur)?.add(&value)?
        }
        None => value,
    })
}

/// `mean over examples of ‖â_s − â_t‖²`, each attribution normalised to unit length.
fn unit_mse(a_s: &Tensor, a_t: &Tensor) -> anyhow::Result<Tensor> {
    let unit = |a: &Tensor| -> anyhow::Result<Tensor> {
        let n = a.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-8, f64::MAX)?;
        Ok(a.broadcast_div(&n)?)
    };
    Ok((unit(a_s)? - unit(a_t)?)?.sqr()?.sum(D::Minus1)?.mean_all()?)
}

/// `Σ_j weight(j) · Σ_rows z_{row, class(row)}` over `m` copies of the batch run with the
/// token embeddings `x` (`[m·B, S, D]`) in place of the lookup; copy `j` has weight `weight(j)`.
fn class_sum(
    exec: &Executor,
    graph: &Graph,
    batch: &EvalBatch,
    x: Tensor,
    classes: &[u32],
    m: usize,
    weight: impl Fn(usize) -> f64,
) -> anyhow::Result<Tensor> {
    let emb = embedding_value(graph).context("no token-embedding lookup")?;
    let logits = logits_value(graph).context("the model has no output")?;
    let out = exec.run_overriding(repeat_inputs(batch, m)?, vec![(emb, x)], &[logits.as_str()])?;
    let z = out.get(&logits).context("logits")?;
    let z = if z.rank() > 2 { z.flatten_from(1)? } else { z.clone() };
    let (b, c) = (classes.len(), z.dim(1)?);
    let mut sel = vec![0f32; m * b * c];
    for j in 0..m {
        for (row, &k) in classes.iter().enumerate() {
            sel[(j * b + row) * c + k as usize] = weight(j) as f32;
        }
    }
    let sel = Tensor::from_vec(sel, (m * b, c), &Device::Cpu)?.to_dtype(z.dtype())?;
    Ok((&z * sel)?.sum_all()?.to_dtype(DType::F32)?)
}
