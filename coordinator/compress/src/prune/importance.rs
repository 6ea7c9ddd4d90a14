//! Importance of each unit of each group, by family:
//! - **magnitude**: the L2 norm of every weight slice the unit owns (producers, consumers,
//!   biases, normalisation parameters), as in DepGraph's group norm;
//! - **gradient**: first-order Taylor, `Σ |w · ∂L/∂w|` over the same slices, the gradient summed
//!   over a calibration set through the candle executor (task loss with labels; pseudo-labels,
//!   the model's own top-1, without);
//! - **activation**: from the activations that reach the unit's consumers on real calibration
//!   data: Wanda's `Σ |W| · ‖X‖` (default), mean `|a|`, or `1 − APoZ`;
//! - **combined**: each family normalised within its group (divided by its mean), then weighted.

use std::collections::{BTreeMap, HashMap, HashSet};

use candle_core::{DType, Tensor as CTensor};

use hone_graph::Graph;
use hone_learn::eval::EvalBatch;
use hone_learn::train::TrainError;
use hone_learn::train::exec::Executor;
use hone_learn::train::loss::cross_entropy;

use super::apply::axis_sums;
use super::groups::{Group, Track};
use super::{Analysis, Prepared};

/// Scores per group id, one per unit (higher: more important).
pub type Scores = BTreeMap<usize, Vec<f64>>;

/// The importance families.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// Weight norms.
    Magnitude,
    /// First-order Taylor on a calibration set.
    Gradient,
    /// Activation statistics on a calibration set.
    Activation,
    /// The three, normalised and weighted.
    Combined,
    /// Try each and keep the best on validation data.
    Auto,
}

crate::named_enum!(Criterion, "criterion" {
    Magnitude => "magnitude",
    Gradient => "gradient",
    Activation => "activation",
    Combined => "combined",
    Auto => "auto",
});

/// Which activation statistic the activation family uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationMetric {
    /// `Σ |W| · ‖X‖` over the consumers (Wanda).
    #[default]
    Wanda,
    /// Mean absolute activation.
    MeanAbs,
    /// One minus the average percentage of zeros (after ReLU).
    Apoz,
}

crate::named_enum!(ActivationMetric, "activation metric" {
    Wanda => "wanda",
    MeanAbs => "mean-abs",
    Apoz => "apoz",
});

/// Per-unit sums of `per_pos` (indexed by position on `track.axis`).
fn unit_sums(group: &Group, track: &Track, per_pos: &[f64]) -> Vec<f64> {
    (0..group.units())
        .map(|u| {
            group
                .member_channels(track.member, u)
                .filter(|c| c % track.div == 0)
                .flat_map(|c| track.positions(c))
                .filter_map(|p| per_pos.get(p))
                .sum()
        })
        .collect()
}

fn add(into: &mut [f64], from: &[f64]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

/// Magnitude scores: the L2 norm of each unit's weights.
pub fn magnitude(prep: &Prepared) -> Result<Scores, TrainError> {
    let mut cache: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    let mut out = Scores::new();
    for g in prep.analysis.prunable() {
        let mut s = vec![0.0; g.units()];
        for p in &g.params {
            let (dims, data) = weights(&prep.graph, &mut cache, &p.init)?;
            let per = axis_sums(data, dims, p.axis, |x| f64::from(x) * f64::from(x));
            add(&mut s, &unit_sums(g, &p.track, &per));
        }
        out.insert(g.id, s.into_iter().map(f64::sqrt).collect());
    }
    Ok(out)
}

fn weights<'a>(
    graph: &Graph,
    cache: &'a mut HashMap<String, (Vec<usize>, Vec<f32>)>,
    name: &str,
) -> Result<&'a (Vec<usize>, Vec<f32>), TrainError> {
    if !cache.contains_key(name) {
        let t = graph.initializer(name).map_err(|e| TrainError::config(e.to_string()))?;
        let data = t
            .as_f32()
            .ok_or_else(|| TrainError::config(format!("initializer `{name}` is not f32")))?
            .to_vec();
        cache.insert(name.to_owned(), (t.dims.clone(), data));
    }
    Ok(&cache[name])
}

/// The value to read class scores from: the first output, or the input of the `Softmax` that
/// produces it (logits give useful gradients; probabilities saturate).
pub fn logits_value(graph: &Graph) -> Option<String> {
    let out = graph.outputs().first()?.name.clone();
    let p = graph.producer(&out)?;
    let n = &graph.node_protos()[p];
    Some(if n.op_type == "Softmax" { n.input[0].clone() } else { out })
}

/// The names of the float initializers the groups slice.
fn group_params(analysis: &Analysis) -> HashSet<String> {
    analysis.prunable().flat_map(|g| g.params.iter().map(|p| p.init.clone())).collect()
}

/// The loss on one batch: cross-entropy against the labels, or against the model's own top-1
/// when the data has none.
pub fn task_loss(exec: &Executor, logits: &str, batch: &EvalBatch) -> Result<CTensor, TrainError> {
    let out = exec.run(batch.inputs.iter().cloned(), &[logits])?;
    let y = out.get(logits).ok_or_else(|| TrainError::config("no logits"))?;
    let y = if y.rank() > 2 { y.flatten_from(1)? } else { y.clone() };
    let labels: Vec<u32> = match &batch.labels {
        Some(l) => l.clone(),
        None => y.argmax(candle_core::D::Minus1)?.to_dtype(DType::U32)?.to_vec1()?,
    };
    cross_entropy(&y, &labels)
}

/// First-order Taylor scores over `batches`.
pub fn gradient(prep: &Prepared, batches: &[EvalBatch]) -> Result<Scores, TrainError> {
    let wanted = group_params(&prep.analysis);
    let exec = Executor::with_trainable(&prep.graph, |n| wanted.contains(n))?;
    let logits = logits_value(&prep.graph).ok_or_else(|| TrainError::config("no output"))?;
    let mut sums: HashMap<String, Vec<f32>> = HashMap::new();
    for b in batches {
        let loss = task_loss(&exec, &logits, b)?;
        let grads = exec.backward(&loss)?;
        for name in &wanted {
            if let Some(g) = grads.get(name) {
                let v: Vec<f32> = g.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                let e = sums.entry(name.clone()).or_insert_with(|| vec![0.0; v.len()]);
                for (a, b) in e.iter_mut().zip(&v) {
                    *a += b;
                }
            }
        }
    }
    let mut cache = HashMap::new();
    let mut out = Scores::new();
    for g in prep.analysis.prunable() {
        let mut s = vec![0.0; g.units()];
        for p in &g.params {
            let Some(grad) = sums.get(&p.init) else { continue };
            let (dims, w) = weights(&prep.graph, &mut cache, &p.init)?;
            let prod: Vec<f32> = w.iter().zip(grad).map(|(w, g)| w * g).collect();
            let per = axis_sums(&prod, dims, p.axis, f64::from);
            add(&mut s, &unit_sums(g, &p.track, &per).iter().map(|x| x.abs()).collect::<Vec<_>>());
        }
        out.insert(g.id, s);
    }
    Ok(out)
}

/// An activation read by a consumer: value, track, and the consumer's weight and axis.
type ActivationSource = (String, Track, Option<(String, usize)>);

#[derive(Default, Clone)]
struct Stats {
    sq: Vec<f64>,
    abs: Vec<f64>,
    zeros: Vec<f64>,
    count: f64,
}

/// Activation scores over `batches`.
pub fn activation(
    prep: &Prepared,
    batches: &[EvalBatch],
    metric: ActivationMetric,
) -> Result<Scores, TrainError> {
    let exec = Executor::with_trainable(&prep.graph, |_| false)?;
    // The activations each group's consumers read (or, without consumers, its own values).
    let mut wanted: Vec<(String, usize)> = Vec::new();
    for g in prep.analysis.prunable() {
        for s in &g.sinks {
            wanted.push((s.value.clone(), s.value_track.axis));
        }
        if g.sinks.is_empty()
            && let Some((v, t)) = g.values.first()
        {
            wanted.push((v.clone(), t.axis));
        }
    }
    wanted.sort();
    wanted.dedup();
    let names: Vec<&str> = wanted.iter().map(|(v, _)| v.as_str()).collect();
    let mut stats: HashMap<(String, usize), Stats> = HashMap::new();
    for b in batches {
        let out = exec.run(b.inputs.iter().cloned(), &names)?;
        for (v, axis) in &wanted {
            let t = out.get(v).ok_or_else(|| TrainError::config(format!("no value `{v}`")))?;
            let dims = t.dims().to_vec();
            let data: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            let st = stats.entry((v.clone(), *axis)).or_default();
            let sq = axis_sums(&data, &dims, *axis, |x| f64::from(x) * f64::from(x));
            let ab = axis_sums(&data, &dims, *axis, |x| f64::from(x.abs()));
            let ze = axis_sums(&data, &dims, *axis, |x| if x == 0.0 { 1.0 } else { 0.0 });
            if st.sq.is_empty() {
                st.sq = vec![0.0; sq.len()];
                st.abs = vec![0.0; sq.len()];
                st.zeros = vec![0.0; sq.len()];
            }
            add(&mut st.sq, &sq);
            add(&mut st.abs, &ab);
            add(&mut st.zeros, &ze);
            st.count += (data.len() / dims[*axis].max(1)) as f64;
        }
    }
    let mut cache = HashMap::new();
    let mut out = Scores::new();
    for g in prep.analysis.prunable() {
        let mut s = vec![0.0; g.units()];
        let sources: Vec<ActivationSource> = if g.sinks.is_empty() {
            g.values.first().map(|(v, t)| (v.clone(), *t, None)).into_iter().collect()
        } else {
            g.sinks
                .iter()
                .map(|k| (k.value.clone(), k.value_track, Some((k.weight.clone(), k.weight_axis))))
                .collect()
        };
        for (v, track, weight) in sources {
            let Some(st) = stats.get(&(v.clone(), track.axis)) else { continue };
            let per: Vec<f64> = match (metric, weight) {
                (ActivationMetric::Wanda, Some((w, axis))) => {
                    let (dims, data) = weights(&prep.graph, &mut cache, &w)?;
                    let wabs = axis_sums(data, dims, axis, |x| f64::from(x.abs()));
                    st.sq.iter().zip(&wabs).map(|(sq, w)| sq.sqrt() * w).collect()
                }
                (ActivationMetric::Apoz, _) => {
                    st.zeros.iter().map(|z| 1.0 - z / st.count.max(1.0)).collect()
                }
                _ => st.abs.iter().map(|a| a / st.count.max(1.0)).collect(),
            };
            add(&mut s, &unit_sums(g, &track, &per));
        }
        out.insert(g.id, s);
    }
    Ok(out)
}

/// Each family's scores divided by their mean within the group, then weighted and summed.
pub fn combine(parts: &[(f64, &Scores)]) -> Scores {
    let mut out = Scores::new();
    for (w, scores) in parts {
        for (gid, s) in scores.iter() {
            let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
            let e = out.entry(*gid).or_insert_with(|| vec![0.0; s.len()]);
            for (a, x) in e.iter_mut().zip(s) {
                *a += w * if mean > 0.0 { x / mean } else { 0.0 };
            }
        }
    }
    out
}
